//! The registry of served resources. Each resource is declared once, in `RESOURCES`, with
//! everything the API server needs to serve it: names, scope, subresources, table, defaulting
//! and validation.

use serde_json::Value;

/// One column of a `meta.k8s.io/v1` Table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    /// OpenAPI type: "string", "integer", "number", "boolean", "date".
    pub type_: &'static str,
    /// "name" for the first column, "date" for ages, else "".
    pub format: &'static str,
    pub description: &'static str,
    /// 0 = always shown, 1 = only with `-o wide`.
    pub priority: i32,
}

/// How a kind prints as a table: its columns and a function producing one row's cells.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    pub columns: &'static [Column],
    /// Cells for one object, one per column, as JSON values (strings, integers...).
    /// `now` is used for ages and durations.
    pub cells: fn(obj: &Value, now: jiff::Timestamp) -> Vec<Value>,
}

/// One validation failure, as a `StatusCause` of an Invalid Status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Upstream cause type: "FieldValueRequired", "FieldValueInvalid", "FieldValueNotSupported",
    /// "FieldValueDuplicate", "FieldValueForbidden", "FieldValueTooLong", "FieldValueTooMany".
    pub reason: &'static str,
    /// Human message, e.g. `Required value` or `Invalid value: "x": must be ...`.
    pub message: String,
    /// JSON path as upstream prints it, e.g. `spec.containers[0].image`, `metadata.name`.
    pub field: String,
}

impl Cause {
    pub fn required(field: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, value: &Value, detail: &str) -> Self {
        let shown = match value {
            Value::String(s) => format!("{s:?}"),
            other => other.to_string(),
        };
        Self {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {shown}: {detail}"),
            field: field.into(),
        }
    }
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let quoted: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                quoted.join(", ")
            ),
            field: field.into(),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {}", detail.into()),
            field: field.into(),
        }
    }
}

/// Validate a new object (`old` None) or an update (`old` Some). Returns every failure found.
pub type ValidateFn = fn(obj: &Value, old: Option<&Value>) -> Vec<Cause>;
/// Fill in upstream defaults in place (applied on create and update, before validation).
pub type DefaultFn = fn(obj: &mut Value);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Namespaced,
    Cluster,
}

/// Everything the API server knows about one resource.
#[derive(Debug, Clone, Copy)]
pub struct ResourceDef {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub list_kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub scope: Scope,
    /// Subresources served beside the main resource ("status", "scale", "binding", "log", "exec"...).
    pub subresources: &'static [&'static str],
    /// Whether the main resource's writes ignore `.status` and `/status` writes only change it
    /// (the upstream status strategy). Kinds without a spec/status split (ConfigMap...) set false.
    pub status_split: bool,
    /// Whether a change of `.spec` bumps `metadata.generation`.
    pub generation: bool,
    pub table: TableSpec,
    pub defaults: DefaultFn,
    pub validate: ValidateFn,
    /// Decode the JSON into the kind's typed struct and encode it back: type errors come out as
    /// `Err`, and fields the type does not know are dropped (see `unknown_fields`).
    pub roundtrip: fn(&Value) -> Result<Value, String>,
    /// The kind's OpenAPI schema (a `$ref` into the generator's definitions).
    pub schema: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
    /// Set when the resource is stored as another one (events.k8s.io Events as core Events).
    pub conversion: Option<&'static crate::convert::Conversion>,
}

/// Typed round trip of a JSON object through `T`.
pub fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(
    v: &Value,
) -> Result<Value, String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

/// The schema of `T` registered in the generator's definitions.
pub fn schema_of<T: schemars::JsonSchema>(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
    g.subschema_for::<T>()
}

/// Paths (as `.spec.foo`) of fields present in `input` but not in `known` (its typed round trip).
/// Null values are not reported (they mean "unset").
pub fn unknown_fields(input: &Value, known: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk_unknown(input, known, String::new(), &mut out);
    out
}

fn walk_unknown(input: &Value, known: &Value, path: String, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(kv) => walk_unknown(v, kv, p, out),
                    None if v.is_null() => {}
                    None if is_empty_container(v) => {}
                    None => out.push(p),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                walk_unknown(x, y, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty_container(v: &Value) -> bool {
    matches!(v, Value::Object(m) if m.is_empty()) || matches!(v, Value::Array(a) if a.is_empty())
}

impl ResourceDef {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    pub fn namespaced(&self) -> bool {
        self.scope == Scope::Namespaced
    }
}

/// Columns for kinds without a printer: NAME and AGE (as upstream's default table convertor).
pub const DEFAULT_COLUMNS: &[Column] = &[
    Column {
        name: "Name",
        type_: "string",
        format: "name",
        description: "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
        priority: 0,
    },
    Column {
        name: "Created At",
        type_: "date",
        format: "",
        description: "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata",
        priority: 0,
    },
];

const CORE_SUBRESOURCES_POD: &[&str] = &[
    "status",
    "binding",
    "log",
    "exec",
    "attach",
    "portforward",
    "eviction",
    "ephemeralcontainers",
];

macro_rules! resource {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, [$($short:expr),*], [$($cat:expr),*],
     $scope:ident, $subs:expr, status_split: $split:expr, generation: $gen:expr,
     table: $table:expr, defaults: $defaults:expr, validate: $validate:expr, type: $ty:ty $(, stored_as: $conv:expr)?) => {
        ResourceDef {
            group: $group,
            version: $version,
            kind: $kind,
            list_kind: concat!($kind, "List"),
            plural: $plural,
            singular: $singular,
            short_names: &[$($short),*],
            categories: &[$($cat),*],
            scope: Scope::$scope,
            subresources: $subs,
            status_split: $split,
            generation: $gen,
            table: $table,
            defaults: $defaults,
            validate: $validate,
            roundtrip: roundtrip::<$ty>,
            schema: schema_of::<$ty>,
            conversion: { #[allow(unused_mut, unused_assignments)] let mut c = None; $(c = Some($conv);)? c },
        }
    };
}

use crate::{defaults, table, validation};

/// Every resource the API server serves. Add a resource here and it is stored, listed, watched,
/// printed, discovered and described in OpenAPI.
pub static RESOURCES: &[ResourceDef] = &[
    resource!("", "v1", "Namespace", "namespaces", "namespace", ["ns"], [], Cluster, &["status", "finalize"],
        status_split: true, generation: false, table: table::NAMESPACE, defaults: defaults::namespace, validate: validation::namespace, type: k8s_openapi::api::core::v1::Namespace),
    resource!("", "v1", "Pod", "pods", "pod", ["po"], ["all"], Namespaced, CORE_SUBRESOURCES_POD,
        status_split: true, generation: true, table: table::POD, defaults: defaults::pod, validate: validation::pod, type: k8s_openapi::api::core::v1::Pod),
    resource!("", "v1", "Node", "nodes", "node", ["no"], [], Cluster, &["status", "proxy"],
        status_split: true, generation: false, table: table::NODE, defaults: defaults::node, validate: validation::node, type: k8s_openapi::api::core::v1::Node),
    resource!("", "v1", "Event", "events", "event", ["ev"], [], Namespaced, &[],
        status_split: false, generation: false, table: table::EVENT, defaults: defaults::event, validate: validation::event, type: k8s_openapi::api::core::v1::Event),
    resource!("", "v1", "ConfigMap", "configmaps", "configmap", ["cm"], [], Namespaced, &[],
        status_split: false, generation: false, table: table::CONFIGMAP, defaults: defaults::configmap, validate: validation::configmap, type: k8s_openapi::api::core::v1::ConfigMap),
    resource!("", "v1", "Secret", "secrets", "secret", [], [], Namespaced, &[],
        status_split: false, generation: false, table: table::SECRET, defaults: defaults::secret, validate: validation::secret, type: k8s_openapi::api::core::v1::Secret),
    resource!("", "v1", "Service", "services", "service", ["svc"], ["all"], Namespaced, &["status", "proxy"],
        status_split: true, generation: false, table: table::SERVICE, defaults: defaults::service, validate: validation::service, type: k8s_openapi::api::core::v1::Service),
    resource!("", "v1", "ServiceAccount", "serviceaccounts", "serviceaccount", ["sa"], [], Namespaced, &["token"],
        status_split: false, generation: false, table: table::SERVICE_ACCOUNT, defaults: defaults::service_account, validate: validation::service_account, type: k8s_openapi::api::core::v1::ServiceAccount),
    resource!("", "v1", "Endpoints", "endpoints", "endpoints", ["ep"], [], Namespaced, &[],
        status_split: false, generation: false, table: table::ENDPOINTS, defaults: defaults::endpoints, validate: validation::endpoints, type: k8s_openapi::api::core::v1::Endpoints),
    resource!("apps", "v1", "Deployment", "deployments", "deployment", ["deploy"], ["all"], Namespaced, &["status", "scale"],
        status_split: true, generation: true, table: table::DEPLOYMENT, defaults: defaults::deployment, validate: validation::deployment, type: k8s_openapi::api::apps::v1::Deployment),
    resource!("apps", "v1", "ReplicaSet", "replicasets", "replicaset", ["rs"], ["all"], Namespaced, &["status", "scale"],
        status_split: true, generation: true, table: table::REPLICASET, defaults: defaults::replicaset, validate: validation::replicaset, type: k8s_openapi::api::apps::v1::ReplicaSet),
    resource!("batch", "v1", "Job", "jobs", "job", [], ["all"], Namespaced, &["status"],
        status_split: true, generation: true, table: table::JOB, defaults: defaults::job, validate: validation::job, type: k8s_openapi::api::batch::v1::Job),
    resource!("coordination.k8s.io", "v1", "Lease", "leases", "lease", [], [], Namespaced, &[],
        status_split: false, generation: false, table: table::LEASE, defaults: defaults::lease, validate: validation::lease, type: k8s_openapi::api::coordination::v1::Lease),
    resource!("events.k8s.io", "v1", "Event", "events", "event", ["ev"], [], Namespaced, &[],
        status_split: false, generation: false, table: table::EVENT_V1, defaults: defaults::event_v1, validate: validation::event_v1, type: k8s_openapi::api::events::v1::Event, stored_as: &crate::convert::EVENTS_AS_CORE),
    resource!("nodeless.io", "v1", "ServerlessProfile", "serverlessprofiles", "serverlessprofile", ["sp"], [], Cluster, &[],
        status_split: false, generation: true, table: crate::profile::TABLE, defaults: crate::profile::defaults, validate: crate::profile::validate, type: crate::profile::ServerlessProfile),
];

/// Find a resource by group, version and plural (or singular/short name when `loose`).
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

/// Find a resource by group and kind (any served version).
pub fn find_kind(group: &str, kind: &str) -> Option<&'static ResourceDef> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// The group-versions served, in discovery order (core first, then groups by name).
pub fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES {
        if !out.contains(&(r.group, r.version)) {
            out.push((r.group, r.version));
        }
    }
    out
}
