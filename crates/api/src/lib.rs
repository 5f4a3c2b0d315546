//! The sans-IO core of nodeless: what a Kubernetes object is and how it may change, with no tokio,
//! no HTTP and no storage. Everything here is a function of plain values, tested with plain values.
//!
//! - `resource`: the registry of served resources, each declared once.
//! - `table`: the columns `kubectl get` prints for each kind (as upstream's printers).
//! - `defaults` / `validation`: upstream defaulting and validation per kind.
//! - `selector`: label and field selectors.
//! - `patch`: JSON patch, JSON merge patch and strategic merge patch.
//! - `apply`: server-side apply (field managers, managedFields, conflicts).
//! - `protobuf`: decoding `application/vnd.kubernetes.protobuf` bodies into JSON.
//! - `names`: DNS-1123 and label/annotation syntax checks.
//! - `sizing`: the serverless pod size table.
//! - `placement`: choosing a host agent, an IP and the per-pod Node for serverless pods.

pub mod apply;
pub mod convert;
pub mod defaults;
pub mod names;
pub mod patch;
pub mod placement;
pub mod profile;
pub mod protobuf;
pub mod resource;
pub mod scheduling;
pub mod selector;
pub mod sizing;
pub mod table;
pub mod validation;
