//! The node agent: registers Node(s) with the API server, keeps their Lease and status, and runs
//! the pods bound to them through a [`runtime::Runtime`]. Today the runtime is [`runtime::Fake`]
//! (kwok-like: pods go Running and Ready without running anything, Jobs' pods complete after
//! a declared duration), and one process can serve many fake nodes for scale tests.
//!
//! - `connect`: a kube client from a kubeconfig or a server URL and token.
//! - `lifecycle`: a pod's life on a node as a state enum and a transition function (sans-IO).
//! - `status`: the pod status kubelet would write for a state (sans-IO).
//! - `node`: the Node object, the Lease and the pod IP allocator (sans-IO).
//! - `host`: serverless host mode: the host Lease, which Nodes are this host's, their status (sans-IO), and the fake runtime's streams.
//! - `runtime`: the `Runtime` trait and the fake runtime.
//! - `sync`: the shell: watches, API writes, timers.
//!
//! - `streams`: the `PodStreams` trait between the streaming server and the runtime.
//!
//! Talks to the API server only as a client; must not depend on the apiserver crate.

pub mod connect;
pub mod host;
pub mod lifecycle;
pub mod netns;
pub mod node;
pub mod probe;
pub mod runtime;
pub mod sandboxed;
pub mod server;
pub mod spdy;
pub mod status;
pub mod streams;
pub mod sync;

pub use sync::{AgentError, Config, run};
