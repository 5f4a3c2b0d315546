//! The columns `kubectl get` prints for each kind, as upstream's server-side printers
//! (`k8s.io/kubernetes/pkg/printers/internalversion/printers.go`) produce them.
//!
//! The API server answers `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` with a
//! `meta.k8s.io/v1` Table whose column definitions and cells come from here. Upstream's server
//! always generates tables with `Wide: true` and kubectl hides the priority-1 columns unless asked
//! for `-o wide`, so every cells function returns one cell per column, wide ones included.
//!
//! Column names, types and descriptions are upstream's (kubectl upper-cases the names itself).
//! Cells are computed from the object as served (v1 JSON), reading the fields the printer reads
//! from the internal type; missing or odd fields give what upstream gives for a zero value (except
//! an absent `spec.replicas`, read as its default 1), and nothing here panics on any JSON value.
//!
//! Pure functions of the object and `now`: no I/O, no clock reads.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::resource::{Column, TableSpec};

// ---------------------------------------------------------------------------------------------
// Column descriptions (upstream's SwaggerDoc strings).

const NAME_DESC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DESC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";
const CONTAINERS_DESC: &str = "Names of each container in the template.";
const IMAGES_DESC: &str = "Images referenced by each container in the template.";

/// The first column of nearly every table.
const NAME_COLUMN: Column = Column {
    name: "Name",
    type_: "string",
    format: "name",
    description: NAME_DESC,
    priority: 0,
};
/// Upstream's Age column of built-in kinds: a `string` (already humanized by the server).
const AGE_COLUMN: Column = Column {
    name: "Age",
    type_: "string",
    format: "",
    description: AGE_DESC,
    priority: 0,
};

const fn col(name: &'static str, type_: &'static str, description: &'static str) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority: 0,
    }
}

const fn wide(name: &'static str, type_: &'static str, description: &'static str) -> Column {
    Column {
        name,
        type_,
        format: "",
        description,
        priority: 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Durations.

/// A succinct duration with ~2-3 significant figures, exactly as apimachinery's
/// `duration.HumanDuration`: `"45s"`, `"119s"`, `"5m30s"`, `"42m"`, `"3h5m"`, `"20h"`, `"3d4h"`,
/// `"45d"`, `"2y30d"`, `"9y"`. Slightly negative durations (clock skew under 2s) give `"0s"`,
/// more negative ones `"<invalid>"`.
pub fn human_duration(d: SignedDuration) -> String {
    let seconds = d.as_secs();
    if seconds < -1 {
        return "<invalid>".to_string();
    }
    if seconds < 0 {
        return "0s".to_string();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        if s == 0 {
            return format!("{minutes}m");
        }
        return format!("{minutes}m{s}s");
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            return format!("{hours}h");
        }
        return format!("{hours}h{m}m");
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            return format!("{}d", hours / 24);
        }
        return format!("{}d{h}h", hours / 24);
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 {
            return format!("{}y", hours / 24 / 365);
        }
        return format!("{}y{dy}d", hours / 24 / 365);
    }
    format!("{}y", hours / 24 / 365)
}

/// A `metav1.Time`/`MicroTime` field: `None` when absent, null, unparsable or Go's zero time
/// (`0001-01-01T00:00:00Z`), i.e. whenever upstream's `IsZero()` would be true.
fn timestamp(v: &Value, ptr: &str) -> Option<Timestamp> {
    let t: Timestamp = v.pointer(ptr)?.as_str()?.parse().ok()?;
    // Go's zero time.Time, which metav1.Time serializes as null but may still be sent.
    if t.as_second() == -62_135_596_800 && t.subsec_nanosecond() == 0 {
        return None;
    }
    Some(t)
}

/// Upstream's `translateTimestampSince`: `"<unknown>"` for a zero time, else the age at `now`.
fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        None => "<unknown>".to_string(),
        Some(t) => human_duration(now.duration_since(t)),
    }
}

fn age(obj: &Value, now: Timestamp) -> Value {
    Value::String(since(timestamp(obj, "/metadata/creationTimestamp"), now))
}

// ---------------------------------------------------------------------------------------------
// Tolerant JSON accessors: a missing or mistyped field reads as Go's zero value.

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn int_at(v: &Value, ptr: &str) -> i64 {
    v.pointer(ptr).and_then(as_int).unwrap_or(0)
}

/// An integer field that may be absent (a Go `*int32`).
fn opt_int_at(v: &Value, ptr: &str) -> Option<i64> {
    v.pointer(ptr).and_then(as_int)
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_u64().map(|u| i64::try_from(u).unwrap_or(i64::MAX)))
}

fn bool_at(v: &Value, ptr: &str) -> bool {
    v.pointer(ptr).and_then(Value::as_bool).unwrap_or(false)
}

fn arr_at<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A present, non-null JSON object (a non-nil Go pointer to a struct).
fn obj_at<'a>(v: &'a Value, ptr: &str) -> Option<&'a Value> {
    v.pointer(ptr).filter(|x| x.is_object())
}

/// The number of entries of a map field (`len(obj.Data)`).
fn map_len(v: &Value, ptr: &str) -> i64 {
    let n = v
        .pointer(ptr)
        .and_then(Value::as_object)
        .map_or(0, serde_json::Map::len);
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn len_i64(items: &[Value]) -> i64 {
    i64::try_from(items.len()).unwrap_or(i64::MAX)
}

fn name(obj: &Value) -> Value {
    Value::String(str_at(obj, "/metadata/name").to_string())
}

fn s(text: impl Into<String>) -> Value {
    Value::String(text.into())
}

fn or_none(text: &str) -> String {
    if text.is_empty() {
        "<none>".to_string()
    } else {
        text.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Labels and selectors, formatted as apimachinery's `labels` package does.

/// `labels.FormatLabels`: `k=v` pairs sorted as strings, comma-joined, `"<none>"` when empty.
fn format_labels(v: &Value, ptr: &str) -> String {
    let mut pairs: Vec<String> = match v.pointer(ptr).and_then(Value::as_object) {
        Some(map) => map
            .iter()
            .map(|(k, val)| format!("{k}={}", val.as_str().unwrap_or("")))
            .collect(),
        None => Vec::new(),
    };
    pairs.sort();
    or_none(&pairs.join(","))
}

/// `metav1.LabelSelectorAsSelector(sel).String()`: `Ok("")` for a nil or empty selector,
/// `Err(())` for one upstream would reject.
fn label_selector_string(sel: Option<&Value>) -> Result<String, ()> {
    let Some(sel) = sel.filter(|s| !s.is_null()) else {
        return Ok(String::new());
    };
    let sel = sel.as_object().ok_or(())?;
    // (key, rendered requirement); sorted by key like `internalSelector.Add`.
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(labels) = sel.get("matchLabels").filter(|m| !m.is_null()) {
        for (k, val) in labels.as_object().ok_or(())? {
            let val = val.as_str().ok_or(())?;
            check_label_key(k)?;
            check_label_value(val)?;
            reqs.push((k.clone(), format!("{k}={val}")));
        }
    }
    if let Some(exprs) = sel.get("matchExpressions").filter(|m| !m.is_null()) {
        for expr in exprs.as_array().ok_or(())? {
            let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
            let op = expr.get("operator").and_then(Value::as_str).unwrap_or("");
            let mut values: Vec<&str> = Vec::new();
            if let Some(vals) = expr.get("values").filter(|m| !m.is_null()) {
                for val in vals.as_array().ok_or(())? {
                    values.push(val.as_str().ok_or(())?);
                }
            }
            check_label_key(key)?;
            for val in &values {
                check_label_value(val)?;
            }
            let rendered = match op {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(());
                    }
                    values.sort_unstable();
                    let word = if op == "In" { "in" } else { "notin" };
                    format!("{key} {word} ({})", values.join(","))
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(());
                    }
                    if op == "Exists" {
                        key.to_string()
                    } else {
                        format!("!{key}")
                    }
                }
                _ => return Err(()),
            };
            reqs.push((key.to_string(), rendered));
        }
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(reqs
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Vec<_>>()
        .join(","))
}

/// `metav1.FormatLabelSelector`: `"<none>"` when it selects nothing or everything, `"<error>"`
/// when invalid.
fn format_label_selector(sel: Option<&Value>) -> String {
    match label_selector_string(sel) {
        Ok(text) => or_none(&text),
        Err(()) => "<error>".to_string(),
    }
}

/// A qualified name (`[prefix/]name`) as label keys must be.
fn check_label_key(key: &str) -> Result<(), ()> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let dns_label = |l: &str| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if prefix.is_empty() || prefix.len() > 253 || !prefix.split('.').all(dns_label) {
            return Err(());
        }
    }
    if name.is_empty() || name.len() > 63 || !is_label_token(name) {
        return Err(());
    }
    Ok(())
}

/// A label value: empty, or at most 63 alphanumerics, `-`, `_`, `.` starting and ending
/// alphanumeric.
fn check_label_value(val: &str) -> Result<(), ()> {
    if val.is_empty() {
        return Ok(());
    }
    if val.len() > 63 || !is_label_token(val) {
        return Err(());
    }
    Ok(())
}

fn is_label_token(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// `layoutContainerCells`: container names and images, each comma-joined.
fn container_cells(obj: &Value, ptr: &str) -> (Value, Value) {
    let containers = arr_at(obj, ptr);
    let names: Vec<&str> = containers.iter().map(|c| str_at(c, "/name")).collect();
    let images: Vec<&str> = containers.iter().map(|c| str_at(c, "/image")).collect();
    (s(names.join(",")), s(images.join(",")))
}

// ---------------------------------------------------------------------------------------------
// Pod.

const POD_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Ready",
        "string",
        "The aggregate readiness state of this pod for accepting traffic.",
    ),
    col(
        "Status",
        "string",
        "The aggregate status of the containers in this pod.",
    ),
    col(
        "Restarts",
        "string",
        "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
    ),
    AGE_COLUMN,
    wide(
        "IP",
        "string",
        "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
    ),
    wide(
        "Node",
        "string",
        "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename",
    ),
    wide(
        "Nominated Node",
        "string",
        "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled.",
    ),
    wide(
        "Readiness Gates",
        "string",
        "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates",
    ),
];

/// `kubectl get pods`: NAME, READY, STATUS, RESTARTS, AGE; wide IP, NODE, NOMINATED NODE,
/// READINESS GATES.
pub const POD: TableSpec = TableSpec {
    columns: POD_COLUMNS,
    cells: pod_cells,
};

/// The later of two Go times where `None` is the zero time (`a.Before(b)` keeps `b`).
fn later(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) if x < y => Some(y),
        (None, Some(y)) => Some(y),
        (a, _) => a,
    }
}

fn condition_status<'a>(conditions: &'a [Value], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| str_at(c, "/type") == type_)
        .map(|c| str_at(c, "/status"))
}

/// The STATUS, READY and RESTARTS of a pod, as upstream's `printPod` computes them.
fn pod_cells(pod: &Value, now: Timestamp) -> Vec<Value> {
    let containers = arr_at(pod, "/spec/containers");
    let init_specs = arr_at(pod, "/spec/initContainers");
    let conditions = arr_at(pod, "/status/conditions");
    let phase = str_at(pod, "/status/phase");
    let status_reason = str_at(pod, "/status/reason");

    let mut restarts: i64 = 0;
    let mut restartable_init_restarts: i64 = 0;
    let mut total = len_i64(containers);
    let mut ready: i64 = 0;
    let mut last_restart: Option<Timestamp> = None;
    let mut last_restartable_init_restart: Option<Timestamp> = None;

    let mut reason = if status_reason.is_empty() {
        phase.to_string()
    } else {
        status_reason.to_string()
    };
    for c in conditions {
        if str_at(c, "/type") == "PodScheduled" && str_at(c, "/reason") == "SchedulingGated" {
            reason = "SchedulingGated".to_string();
        }
    }

    // Upstream keys init containers by name (the last one of a name wins).
    let restartable = |name: &str| -> bool {
        init_specs
            .iter()
            .rev()
            .find(|c| str_at(c, "/name") == name)
            .is_some_and(|c| str_at(c, "/restartPolicy") == "Always")
    };
    for c in init_specs {
        if str_at(c, "/restartPolicy") == "Always" {
            total = total.saturating_add(1);
        }
    }

    let mut initializing = false;
    for (i, status) in arr_at(pod, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        let count = int_at(status, "/restartCount");
        restarts = restarts.saturating_add(count);
        let finished = timestamp(status, "/lastState/terminated/finishedAt");
        last_restart = later(last_restart, finished);
        let is_restartable = restartable(str_at(status, "/name"));
        if is_restartable {
            restartable_init_restarts = restartable_init_restarts.saturating_add(count);
            last_restartable_init_restart = later(last_restartable_init_restart, finished);
        }
        let terminated = obj_at(status, "/state/terminated");
        let waiting_reason = obj_at(status, "/state/waiting")
            .map(|w| str_at(w, "/reason"))
            .unwrap_or("");
        if terminated.is_some_and(|t| int_at(t, "/exitCode") == 0) {
            continue;
        }
        if is_restartable && bool_at(status, "/started") {
            if bool_at(status, "/ready") {
                ready = ready.saturating_add(1);
            }
            continue;
        }
        if let Some(t) = terminated {
            let why = str_at(t, "/reason");
            reason = if !why.is_empty() {
                format!("Init:{why}")
            } else if int_at(t, "/signal") != 0 {
                format!("Init:Signal:{}", int_at(t, "/signal"))
            } else {
                format!("Init:ExitCode:{}", int_at(t, "/exitCode"))
            };
        } else if !waiting_reason.is_empty() && waiting_reason != "PodInitializing" {
            reason = format!("Init:{waiting_reason}");
        } else {
            reason = format!("Init:{i}/{}", init_specs.len());
        }
        initializing = true;
        break;
    }

    if !initializing || condition_status(conditions, "Initialized") == Some("True") {
        restarts = restartable_init_restarts;
        last_restart = last_restartable_init_restart;
        let mut has_running = false;
        for status in arr_at(pod, "/status/containerStatuses").iter().rev() {
            restarts = restarts.saturating_add(int_at(status, "/restartCount"));
            last_restart = later(
                last_restart,
                timestamp(status, "/lastState/terminated/finishedAt"),
            );
            let waiting_reason = obj_at(status, "/state/waiting")
                .map(|w| str_at(w, "/reason"))
                .unwrap_or("");
            let terminated = obj_at(status, "/state/terminated");
            if !waiting_reason.is_empty() {
                reason = waiting_reason.to_string();
            } else if let Some(t) = terminated {
                let why = str_at(t, "/reason");
                reason = if !why.is_empty() {
                    why.to_string()
                } else if int_at(t, "/signal") != 0 {
                    format!("Signal:{}", int_at(t, "/signal"))
                } else {
                    format!("ExitCode:{}", int_at(t, "/exitCode"))
                };
            } else if bool_at(status, "/ready") && obj_at(status, "/state/running").is_some() {
                has_running = true;
                ready = ready.saturating_add(1);
            }
        }
        // Back to "Running" if at least one container still reports running.
        if reason == "Completed" && has_running {
            reason = if condition_status_true(conditions, "Ready") {
                "Running"
            } else {
                "NotReady"
            }
            .to_string();
        }
    }

    let deleting = pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null());
    if deleting && status_reason == "NodeLost" {
        reason = "Unknown".to_string();
    } else if deleting && phase != "Failed" && phase != "Succeeded" {
        reason = "Terminating".to_string();
    }

    let restarts_cell = match last_restart {
        Some(t) if restarts != 0 => format!("{restarts} ({} ago)", since(Some(t), now)),
        _ => restarts.to_string(),
    };

    // v1 `status.podIP` wins over `status.podIPs` when both are set (upstream's conversion).
    let mut ip = str_at(pod, "/status/podIP");
    if ip.is_empty() {
        ip = arr_at(pod, "/status/podIPs")
            .first()
            .map(|p| str_at(p, "/ip"))
            .unwrap_or("");
    }
    let gates = arr_at(pod, "/spec/readinessGates");
    let readiness_gates = if gates.is_empty() {
        "<none>".to_string()
    } else {
        let true_conditions = gates
            .iter()
            .filter(|g| condition_status(conditions, str_at(g, "/conditionType")) == Some("True"))
            .count();
        format!("{true_conditions}/{}", gates.len())
    };

    vec![
        name(pod),
        s(format!("{ready}/{total}")),
        s(reason),
        s(restarts_cell),
        age(pod, now),
        s(or_none(ip)),
        s(or_none(str_at(pod, "/spec/nodeName"))),
        s(or_none(str_at(pod, "/status/nominatedNodeName"))),
        s(readiness_gates),
    ]
}

/// `hasPodReadyCondition`: any condition of the type with status True.
fn condition_status_true(conditions: &[Value], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| str_at(c, "/type") == type_ && str_at(c, "/status") == "True")
}

// ---------------------------------------------------------------------------------------------
// Node.

const NODE_ADDRESSES_DESC: &str = "List of addresses reachable to the node. Queried from cloud provider, if available. More info: https://kubernetes.io/docs/reference/node/node-status/#addresses Note: This field is declared as mergeable, but the merge key is not sufficiently unique, which can cause data corruption when it is merged. Callers should instead use a full-replacement patch. See https://pr.k8s.io/79391 for an example. Consumers should assume that addresses can change during the lifetime of a Node. However, there are some exceptions where this may not be possible, such as Pods that inherit a Node's address in its own status or consumers of the downward API (status.hostIP).";

const NODE_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col("Status", "string", "The status of the node"),
    col("Roles", "string", "The roles of the node"),
    AGE_COLUMN,
    col("Version", "string", "Kubelet Version reported by the node."),
    wide("Internal-IP", "string", NODE_ADDRESSES_DESC),
    wide("External-IP", "string", NODE_ADDRESSES_DESC),
    wide(
        "OS-Image",
        "string",
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
    ),
    wide(
        "Kernel-Version",
        "string",
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
    ),
    wide(
        "Container-Runtime",
        "string",
        "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
    ),
];

/// `kubectl get nodes`: NAME, STATUS, ROLES, AGE, VERSION; wide INTERNAL-IP, EXTERNAL-IP,
/// OS-IMAGE, KERNEL-VERSION, CONTAINER-RUNTIME.
pub const NODE: TableSpec = TableSpec {
    columns: NODE_COLUMNS,
    cells: node_cells,
};

fn node_cells(node: &Value, now: Timestamp) -> Vec<Value> {
    // Upstream builds a map by condition type, so the last Ready condition wins.
    let ready = arr_at(node, "/status/conditions")
        .iter()
        .rev()
        .find(|c| str_at(c, "/type") == "Ready");
    let mut status: Vec<&str> = vec![match ready {
        Some(c) if str_at(c, "/status") == "True" => "Ready",
        Some(_) => "NotReady",
        None => "Unknown",
    }];
    if bool_at(node, "/spec/unschedulable") {
        status.push("SchedulingDisabled");
    }

    let mut roles: BTreeSet<&str> = BTreeSet::new();
    if let Some(labels) = node.pointer("/metadata/labels").and_then(Value::as_object) {
        for (key, value) in labels {
            if let Some(role) = key.strip_prefix("node-role.kubernetes.io/") {
                if !role.is_empty() {
                    roles.insert(role);
                }
            } else if key == "kubernetes.io/role" {
                let value = value.as_str().unwrap_or("");
                if !value.is_empty() {
                    roles.insert(value);
                }
            }
        }
    }
    let roles = roles.into_iter().collect::<Vec<_>>().join(",");

    let address = |type_: &str| -> String {
        arr_at(node, "/status/addresses")
            .iter()
            .find(|a| str_at(a, "/type") == type_)
            .map_or_else(
                || "<none>".to_string(),
                |a| str_at(a, "/address").to_string(),
            )
    };
    let unknown = |ptr: &str| -> Value {
        let text = str_at(node, ptr);
        s(if text.is_empty() { "<unknown>" } else { text })
    };

    vec![
        name(node),
        s(status.join(",")),
        s(or_none(&roles)),
        age(node, now),
        s(str_at(node, "/status/nodeInfo/kubeletVersion")),
        s(address("InternalIP")),
        s(address("ExternalIP")),
        unknown("/status/nodeInfo/osImage"),
        unknown("/status/nodeInfo/kernelVersion"),
        unknown("/status/nodeInfo/containerRuntimeVersion"),
    ]
}

// ---------------------------------------------------------------------------------------------
// Events (core/v1 and events.k8s.io/v1).

const EVENT_COLUMNS: &[Column] = &[
    col(
        "Last Seen",
        "string",
        "The time at which the most recent occurrence of this event was recorded.",
    ),
    col(
        "Type",
        "string",
        "Type of this event (Normal, Warning), new types could be added in the future",
    ),
    col(
        "Reason",
        "string",
        "This should be a short, machine understandable string that gives the reason for the transition into the object's current status.",
    ),
    col("Object", "string", "The object that this event is about."),
    wide(
        "Subobject",
        "string",
        "If referring to a piece of an object instead of an entire object, this string should contain a valid JSON/Go field access statement, such as desiredState.manifest.containers[2]. For example, if the object reference is to a container within a pod, this would take on a value like: \"spec.containers{name}\" (where \"name\" refers to the name of the container that triggered the event) or if no container name is specified \"spec.containers[2]\" (container with index 2 in this pod). This syntax is chosen only to have some well-defined way of referencing a part of an object.",
    ),
    wide(
        "Source",
        "string",
        "The component reporting this event. Should be a short machine understandable string.",
    ),
    col(
        "Message",
        "string",
        "A human-readable description of the status of this operation.",
    ),
    wide(
        "First Seen",
        "string",
        "The time at which the event was first recorded. (Time of server receipt is in TypeMeta.)",
    ),
    wide(
        "Count",
        "string",
        "The number of times this event has occurred.",
    ),
    Column {
        name: "Name",
        type_: "string",
        format: "name",
        description: NAME_DESC,
        priority: 1,
    },
];

/// `kubectl get events` (core/v1): LAST SEEN, TYPE, REASON, OBJECT, MESSAGE; wide SUBOBJECT,
/// SOURCE, FIRST SEEN, COUNT, NAME.
pub const EVENT: TableSpec = TableSpec {
    columns: EVENT_COLUMNS,
    cells: event_cells,
};

/// events.k8s.io/v1 Events print exactly as core ones (upstream converts both to the same
/// internal type); only the field names differ.
pub const EVENT_V1: TableSpec = TableSpec {
    columns: EVENT_COLUMNS,
    cells: event_v1_cells,
};

/// Where each field the printer reads lives in one Event API version.
struct EventFields {
    involved_object: &'static str,
    message: &'static str,
    source: &'static str,
    first_timestamp: &'static str,
    last_timestamp: &'static str,
    count: &'static str,
    reporting_controller: &'static str,
}

const CORE_EVENT: EventFields = EventFields {
    involved_object: "/involvedObject",
    message: "/message",
    source: "/source",
    first_timestamp: "/firstTimestamp",
    last_timestamp: "/lastTimestamp",
    count: "/count",
    reporting_controller: "/reportingComponent",
};

const EVENTS_V1_EVENT: EventFields = EventFields {
    involved_object: "/regarding",
    message: "/note",
    source: "/deprecatedSource",
    first_timestamp: "/deprecatedFirstTimestamp",
    last_timestamp: "/deprecatedLastTimestamp",
    count: "/deprecatedCount",
    reporting_controller: "/reportingController",
};

fn event_cells(event: &Value, now: Timestamp) -> Vec<Value> {
    print_event(event, &CORE_EVENT, now)
}

fn event_v1_cells(event: &Value, now: Timestamp) -> Vec<Value> {
    print_event(event, &EVENTS_V1_EVENT, now)
}

fn print_event(event: &Value, f: &EventFields, now: Timestamp) -> Vec<Value> {
    let first_ts = timestamp(event, f.first_timestamp);
    let first_seen = if first_ts.is_none() {
        since(timestamp(event, "/eventTime"), now)
    } else {
        since(first_ts, now)
    };
    let mut last_seen = match timestamp(event, f.last_timestamp) {
        None => first_seen.clone(),
        Some(t) => since(Some(t), now),
    };
    let mut count = int_at(event, f.count);
    if let Some(series) = obj_at(event, "/series") {
        last_seen = since(timestamp(series, "/lastObservedTime"), now);
        count = int_at(series, "/count");
    } else if count == 0 {
        // Singleton events don't have a count set in the new API.
        count = 1;
    }

    let involved = event.pointer(f.involved_object).unwrap_or(&Value::Null);
    let kind = str_at(involved, "/kind").to_lowercase();
    let involved_name = str_at(involved, "/name");
    let target = if involved_name.is_empty() {
        kind
    } else {
        format!("{kind}/{involved_name}")
    };

    let first_non_empty = |a: &str, b: &str| -> String {
        if a.is_empty() {
            b.to_string()
        } else {
            a.to_string()
        }
    };
    let component = first_non_empty(
        str_at(event, &format!("{}/component", f.source)),
        str_at(event, f.reporting_controller),
    );
    let instance = first_non_empty(
        str_at(event, &format!("{}/host", f.source)),
        str_at(event, "/reportingInstance"),
    );
    let source = if instance.is_empty() {
        component
    } else {
        format!("{component}, {instance}")
    };

    vec![
        s(last_seen),
        s(str_at(event, "/type")),
        s(str_at(event, "/reason")),
        s(target),
        s(str_at(involved, "/fieldPath")),
        s(source),
        s(str_at(event, f.message).trim()),
        s(first_seen),
        Value::from(count),
        name(event),
    ]
}

// ---------------------------------------------------------------------------------------------
// Namespace, Secret, ConfigMap, ServiceAccount, Lease: small tables.

const NAMESPACE_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col("Status", "string", "The status of the namespace"),
    AGE_COLUMN,
];

/// `kubectl get namespaces`: NAME, STATUS, AGE.
pub const NAMESPACE: TableSpec = TableSpec {
    columns: NAMESPACE_COLUMNS,
    cells: namespace_cells,
};

fn namespace_cells(ns: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(ns), s(str_at(ns, "/status/phase")), age(ns, now)]
}

const SECRET_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Type",
        "string",
        "Used to facilitate programmatic handling of secret data. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
    ),
    col(
        "Data",
        "string",
        "Data contains the secret data. Each key must consist of alphanumeric characters, '-', '_' or '.'. The serialized form of the secret data is a base64 encoded string, representing the arbitrary (possibly non-string) data value here. Described in https://tools.ietf.org/html/rfc4648#section-4",
    ),
    AGE_COLUMN,
];

/// `kubectl get secrets`: NAME, TYPE, DATA, AGE.
pub const SECRET: TableSpec = TableSpec {
    columns: SECRET_COLUMNS,
    cells: secret_cells,
};

fn secret_cells(secret: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(secret),
        s(str_at(secret, "/type")),
        Value::from(map_len(secret, "/data")),
        age(secret, now),
    ]
}

const CONFIGMAP_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Data",
        "string",
        "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
    ),
    AGE_COLUMN,
];

/// `kubectl get configmaps`: NAME, DATA (keys of data and binaryData), AGE.
pub const CONFIGMAP: TableSpec = TableSpec {
    columns: CONFIGMAP_COLUMNS,
    cells: configmap_cells,
};

fn configmap_cells(cm: &Value, now: Timestamp) -> Vec<Value> {
    let keys = map_len(cm, "/data").saturating_add(map_len(cm, "/binaryData"));
    vec![name(cm), Value::from(keys), age(cm, now)]
}

const SERVICE_ACCOUNT_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Secrets",
        "string",
        "Secrets is a list of the secrets in the same namespace that pods running using this ServiceAccount are allowed to use. Pods are only limited to this list if this service account has a \"kubernetes.io/enforce-mountable-secrets\" annotation set to \"true\". The \"kubernetes.io/enforce-mountable-secrets\" annotation is deprecated since v1.32. Prefer separate namespaces to isolate access to mounted secrets. This field should not be used to find auto-generated service account token secrets for use outside of pods. Instead, tokens can be requested directly using the TokenRequest API, or service account token secrets can be manually created. More info: https://kubernetes.io/docs/concepts/configuration/secret",
    ),
    AGE_COLUMN,
];

/// `kubectl get serviceaccounts`: NAME, SECRETS, AGE.
pub const SERVICE_ACCOUNT: TableSpec = TableSpec {
    columns: SERVICE_ACCOUNT_COLUMNS,
    cells: service_account_cells,
};

fn service_account_cells(sa: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(sa),
        Value::from(len_i64(arr_at(sa, "/secrets"))),
        age(sa, now),
    ]
}

const LEASE_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Holder",
        "string",
        "holderIdentity contains the identity of the holder of a current lease. If Coordinated Leader Election is used, the holder identity must be equal to the elected LeaseCandidate.metadata.name field.",
    ),
    AGE_COLUMN,
];

/// `kubectl get leases`: NAME, HOLDER, AGE.
pub const LEASE: TableSpec = TableSpec {
    columns: LEASE_COLUMNS,
    cells: lease_cells,
};

fn lease_cells(lease: &Value, now: Timestamp) -> Vec<Value> {
    vec![
        name(lease),
        s(str_at(lease, "/spec/holderIdentity")),
        age(lease, now),
    ]
}

// ---------------------------------------------------------------------------------------------
// Endpoints.

const ENDPOINTS_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Endpoints",
        "string",
        "The set of all endpoints is the union of all subsets. Addresses are placed into subsets according to the IPs they share. A single address with multiple ports, some of which are ready and some of which are not (because they come from different containers) will result in the address being displayed in different subsets for the different ports. No address will appear in both Addresses and NotReadyAddresses in the same subset. Sets of addresses and ports that comprise a service.",
    ),
    AGE_COLUMN,
];

/// `kubectl get endpoints`: NAME, ENDPOINTS (the first three `ip:port`, then `+ N more...`), AGE.
pub const ENDPOINTS: TableSpec = TableSpec {
    columns: ENDPOINTS_COLUMNS,
    cells: endpoints_cells,
};

fn endpoints_cells(ep: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(ep), s(format_endpoints(ep)), age(ep, now)]
}

/// `formatEndpoints(endpoints, nil)`.
fn format_endpoints(ep: &Value) -> String {
    const MAX: usize = 3;
    let subsets = arr_at(ep, "/subsets");
    if subsets.is_empty() {
        return "<none>".to_string();
    }
    let mut list: Vec<String> = Vec::new();
    let mut more = false;
    let mut count: usize = 0;
    for subset in subsets {
        let addresses = arr_at(subset, "/addresses");
        let ports = arr_at(subset, "/ports");
        if ports.is_empty() {
            // Headless services with no ports.
            count = count.saturating_add(addresses.len());
            for address in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(str_at(address, "/ip").to_string());
            }
            continue;
        }
        for port in ports {
            count = count.saturating_add(addresses.len());
            for address in addresses {
                if list.len() == MAX {
                    more = true;
                    break;
                }
                list.push(join_host_port(
                    str_at(address, "/ip"),
                    int_at(port, "/port"),
                ));
            }
        }
    }
    let joined = list.join(",");
    if more {
        format!("{joined} + {} more...", count.saturating_sub(MAX))
    } else {
        joined
    }
}

/// Go's `net.JoinHostPort`: brackets around hosts containing a colon (IPv6).
fn join_host_port(host: &str, port: i64) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

// ---------------------------------------------------------------------------------------------
// Service.

const SERVICE_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Type",
        "string",
        "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer. \"ClusterIP\" allocates a cluster-internal IP address for load-balancing to endpoints. Endpoints are determined by the selector or if that is not specified, by manual construction of an Endpoints object or EndpointSlice objects. If clusterIP is \"None\", no virtual IP is allocated and the endpoints are published as a set of endpoints rather than a virtual IP. \"NodePort\" builds on ClusterIP and allocates a port on every node which routes to the same endpoints as the clusterIP. \"LoadBalancer\" builds on NodePort and creates an external load-balancer (if supported in the current cloud) which routes to the same endpoints as the clusterIP. \"ExternalName\" aliases this service to the specified externalName. Several other fields do not apply to ExternalName services. More info: https://kubernetes.io/docs/concepts/services-networking/service/#publishing-services-service-types",
    ),
    col(
        "Cluster-IP",
        "string",
        "clusterIP is the IP address of the service and is usually assigned randomly. If an address is specified manually, is in-range (as per system configuration), and is not in use, it will be allocated to the service; otherwise creation of the service will fail. This field may not be changed through updates unless the type field is also being changed to ExternalName (which requires this field to be blank) or the type field is being changed from ExternalName (in which case this field may optionally be specified, as describe above).  Valid values are \"None\", empty string (\"\"), or a valid IP address. Setting this to \"None\" makes a \"headless service\" (no virtual IP), which is useful when direct endpoint connections are preferred and proxying is not required.  Only applies to types ClusterIP, NodePort, and LoadBalancer. If this field is specified when creating a Service of type ExternalName, creation will fail. This field will be wiped when updating a Service to type ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
    ),
    col(
        "External-IP",
        "string",
        "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.  These IPs are not managed by Kubernetes.  The user is responsible for ensuring that traffic arrives at a node with this IP.  A common example is external load-balancers that are not part of the Kubernetes system.",
    ),
    col(
        "Port(s)",
        "string",
        "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
    ),
    AGE_COLUMN,
    wide(
        "Selector",
        "string",
        "Route service traffic to pods with label keys and values matching this selector. If empty or not present, the service is assumed to have an external process managing its endpoints, which Kubernetes will not modify. Only applies to types ClusterIP, NodePort, and LoadBalancer. Ignored if type is ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/",
    ),
];

/// `kubectl get services`: NAME, TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S), AGE; wide SELECTOR.
pub const SERVICE: TableSpec = TableSpec {
    columns: SERVICE_COLUMNS,
    cells: service_cells,
};

fn service_cells(svc: &Value, now: Timestamp) -> Vec<Value> {
    // v1 `spec.clusterIP` wins over `spec.clusterIPs` (upstream's conversion).
    let mut cluster_ip = str_at(svc, "/spec/clusterIP");
    if cluster_ip.is_empty() {
        cluster_ip = arr_at(svc, "/spec/clusterIPs")
            .first()
            .and_then(Value::as_str)
            .unwrap_or("");
    }
    let cluster_ip = if cluster_ip.is_empty() && arr_at(svc, "/spec/clusterIPs").is_empty() {
        "<none>"
    } else {
        cluster_ip
    };

    let ports: Vec<String> = arr_at(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let port = int_at(p, "/port");
            let protocol = str_at(p, "/protocol");
            let node_port = int_at(p, "/nodePort");
            if node_port > 0 {
                format!("{port}:{node_port}/{protocol}")
            } else {
                format!("{port}/{protocol}")
            }
        })
        .collect();
    let ports = ports.join(",");

    vec![
        name(svc),
        s(str_at(svc, "/spec/type")),
        s(cluster_ip),
        s(service_external_ip(svc)),
        s(or_none(&ports)),
        age(svc, now),
        s(format_labels(svc, "/spec/selector")),
    ]
}

/// `getServiceExternalIP(svc, wide=true)`.
fn service_external_ip(svc: &Value) -> String {
    let external_ips: Vec<&str> = arr_at(svc, "/spec/externalIPs")
        .iter()
        .map(|v| v.as_str().unwrap_or(""))
        .collect();
    match str_at(svc, "/spec/type") {
        "ClusterIP" | "NodePort" => {
            if external_ips.is_empty() {
                "<none>".to_string()
            } else {
                external_ips.join(",")
            }
        }
        "LoadBalancer" => {
            // A sorted set of ingress IPs (or hostnames when there is no IP).
            let lb: BTreeSet<&str> = arr_at(svc, "/status/loadBalancer/ingress")
                .iter()
                .filter_map(|i| {
                    let ip = str_at(i, "/ip");
                    let host = str_at(i, "/hostname");
                    if !ip.is_empty() {
                        Some(ip)
                    } else if !host.is_empty() {
                        Some(host)
                    } else {
                        None
                    }
                })
                .collect();
            let lb: Vec<&str> = lb.into_iter().collect();
            if !external_ips.is_empty() {
                let mut all = lb;
                all.extend(external_ips);
                all.join(",")
            } else if !lb.is_empty() {
                lb.join(",")
            } else {
                "<pending>".to_string()
            }
        }
        "ExternalName" => str_at(svc, "/spec/externalName").to_string(),
        _ => "<unknown>".to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Deployment, ReplicaSet, Job.

const DEPLOYMENT_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col("Ready", "string", "Number of the pod with ready state"),
    col(
        "Up-to-date",
        "string",
        "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
    ),
    col(
        "Available",
        "string",
        "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
    ),
    AGE_COLUMN,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
    wide(
        "Selector",
        "string",
        "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.",
    ),
];

/// `kubectl get deployments`: NAME, READY (`ready/desired`), UP-TO-DATE, AVAILABLE, AGE; wide
/// CONTAINERS, IMAGES, SELECTOR.
pub const DEPLOYMENT: TableSpec = TableSpec {
    columns: DEPLOYMENT_COLUMNS,
    cells: deployment_cells,
};

/// `spec.replicas`, which defaulting sets to 1 when absent.
fn desired_replicas(obj: &Value) -> i64 {
    opt_int_at(obj, "/spec/replicas").unwrap_or(1)
}

fn deployment_cells(d: &Value, now: Timestamp) -> Vec<Value> {
    let (containers, images) = container_cells(d, "/spec/template/spec/containers");
    // printDeployment uses the selector's String() directly: "" when empty, "<invalid>" on error.
    let selector = label_selector_string(d.pointer("/spec/selector"))
        .unwrap_or_else(|()| "<invalid>".to_string());
    vec![
        name(d),
        s(format!(
            "{}/{}",
            int_at(d, "/status/readyReplicas"),
            desired_replicas(d)
        )),
        Value::from(int_at(d, "/status/updatedReplicas")),
        Value::from(int_at(d, "/status/availableReplicas")),
        age(d, now),
        containers,
        images,
        s(selector),
    ]
}

const REPLICASET_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col(
        "Desired",
        "integer",
        "Replicas is the number of desired replicas. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller",
    ),
    col(
        "Current",
        "integer",
        "Replicas is the most recently observed number of replicas. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicationcontroller/#what-is-a-replicationcontroller",
    ),
    col(
        "Ready",
        "integer",
        "The number of ready replicas for this replica set.",
    ),
    AGE_COLUMN,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
    wide(
        "Selector",
        "string",
        "Selector is a label query over pods that should match the replica count. If the selector is empty, it is defaulted to the labels present on the pod template. Label keys and values that must match in order to be controlled by this replica set. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
    ),
];

/// `kubectl get replicasets`: NAME, DESIRED, CURRENT, READY, AGE; wide CONTAINERS, IMAGES,
/// SELECTOR.
pub const REPLICASET: TableSpec = TableSpec {
    columns: REPLICASET_COLUMNS,
    cells: replicaset_cells,
};

fn replicaset_cells(rs: &Value, now: Timestamp) -> Vec<Value> {
    let (containers, images) = container_cells(rs, "/spec/template/spec/containers");
    vec![
        name(rs),
        Value::from(desired_replicas(rs)),
        Value::from(int_at(rs, "/status/replicas")),
        Value::from(int_at(rs, "/status/readyReplicas")),
        age(rs, now),
        containers,
        images,
        s(format_label_selector(rs.pointer("/spec/selector"))),
    ]
}

const JOB_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    col("Status", "string", "Status of the job."),
    col(
        "Completions",
        "string",
        "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
    ),
    col("Duration", "string", "Time required to complete the job."),
    AGE_COLUMN,
    wide("Containers", "string", CONTAINERS_DESC),
    wide("Images", "string", IMAGES_DESC),
    wide(
        "Selector",
        "string",
        "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
    ),
];

/// `kubectl get jobs`: NAME, STATUS, COMPLETIONS, DURATION, AGE; wide CONTAINERS, IMAGES,
/// SELECTOR.
pub const JOB: TableSpec = TableSpec {
    columns: JOB_COLUMNS,
    cells: job_cells,
};

/// `hasJobCondition`: the status of the first condition of the type is True.
fn has_job_condition(conditions: &[Value], type_: &str) -> bool {
    condition_status(conditions, type_) == Some("True")
}

fn job_cells(job: &Value, now: Timestamp) -> Vec<Value> {
    let succeeded = int_at(job, "/status/succeeded");
    let completions = match opt_int_at(job, "/spec/completions") {
        Some(c) => format!("{succeeded}/{c}"),
        None => {
            let parallelism = int_at(job, "/spec/parallelism");
            if parallelism > 1 {
                format!("{succeeded}/1 of {parallelism}")
            } else {
                format!("{succeeded}/1")
            }
        }
    };
    let duration = match (
        timestamp(job, "/status/startTime"),
        timestamp(job, "/status/completionTime"),
    ) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration(now.duration_since(start)),
        (Some(start), Some(end)) => human_duration(end.duration_since(start)),
    };
    let conditions = arr_at(job, "/status/conditions");
    let deleting = job
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|d| !d.is_null());
    let status = if has_job_condition(conditions, "Complete") {
        "Complete"
    } else if has_job_condition(conditions, "Failed") {
        "Failed"
    } else if deleting {
        "Terminating"
    } else if has_job_condition(conditions, "Suspended") {
        "Suspended"
    } else if has_job_condition(conditions, "FailureTarget") {
        "FailureTarget"
    } else {
        "Running"
    };
    let (containers, images) = container_cells(job, "/spec/template/spec/containers");
    vec![
        name(job),
        s(status),
        s(completions),
        s(duration),
        age(job, now),
        containers,
        images,
        s(format_label_selector(job.pointer("/spec/selector"))),
    ]
}

// ---------------------------------------------------------------------------------------------
// Kinds without a printer, and the lookup.

const DEFAULT_COLUMNS: &[Column] = &[
    NAME_COLUMN,
    Column {
        name: "Age",
        type_: "date",
        format: "",
        description: AGE_DESC,
        priority: 0,
    },
];

/// NAME, AGE for kinds without a printer, as upstream serves custom resources without
/// `additionalPrinterColumns` (an `Age` column of type `date` whose cell the server already
/// renders as an age).
pub const DEFAULT: TableSpec = TableSpec {
    columns: DEFAULT_COLUMNS,
    cells: default_cells,
};

fn default_cells(obj: &Value, now: Timestamp) -> Vec<Value> {
    vec![name(obj), age(obj, now)]
}

/// The table of a kind by API group (`""` for core) and kind; [`DEFAULT`] for any other.
pub fn table_for(group: &str, kind: &str) -> TableSpec {
    match (group, kind) {
        ("", "Namespace") => NAMESPACE,
        ("", "Pod") => POD,
        ("", "Node") => NODE,
        ("", "Event") => EVENT,
        ("events.k8s.io", "Event") => EVENT_V1,
        ("", "ConfigMap") => CONFIGMAP,
        ("", "Secret") => SECRET,
        ("", "Service") => SERVICE,
        ("", "ServiceAccount") => SERVICE_ACCOUNT,
        ("", "Endpoints") => ENDPOINTS,
        ("apps", "Deployment") => DEPLOYMENT,
        ("apps", "ReplicaSet") => REPLICASET,
        ("batch", "Job") => JOB,
        ("coordination.k8s.io", "Lease") => LEASE,
        _ => DEFAULT,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The instant every golden pair is printed at.
    const NOW: &str = "2024-06-01T12:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    /// Print `obj` with `spec` and compare with the expected cells, one per column.
    fn golden(spec: TableSpec, obj: Value, expected: &str) {
        let expected: Value = serde_json::from_str(expected).expect("expected cells are JSON");
        let cells = (spec.cells)(&obj, now());
        assert_eq!(
            cells.len(),
            spec.columns.len(),
            "one cell per column for {obj}"
        );
        assert_eq!(Value::Array(cells), expected, "cells of {obj}");
    }

    fn headers(spec: TableSpec) -> Vec<(&'static str, &'static str, i32)> {
        spec.columns
            .iter()
            .map(|c| (c.name, c.type_, c.priority))
            .collect()
    }

    #[test]
    fn human_duration_matches_apimachinery() {
        let cases: &[(i64, &str)] = &[
            (-3, "<invalid>"),
            (-2, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (45, "45s"),
            (90, "90s"),
            (119, "119s"),
            (120, "2m"),
            (121, "2m1s"),
            (330, "5m30s"),
            (599, "9m59s"),
            (600, "10m"),
            (10_799, "179m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 5 * 60, "3h5m"),
            (8 * 3600 - 60, "7h59m"),
            (8 * 3600, "8h"),
            (47 * 3600 + 3599, "47h"),
            (48 * 3600, "2d"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (7 * 86_400 + 23 * 3600, "7d23h"),
            (8 * 86_400, "8d"),
            (729 * 86_400, "729d"),
            (730 * 86_400, "2y"),
            (760 * 86_400, "2y30d"),
            (8 * 365 * 86_400, "8y"),
            (10 * 365 * 86_400 + 200 * 86_400, "10y"),
        ];
        for &(secs, want) in cases {
            assert_eq!(
                human_duration(SignedDuration::from_secs(secs)),
                want,
                "{secs}s"
            );
        }
        // Sub-second parts truncate toward zero, as Go's int(d.Seconds()).
        assert_eq!(human_duration(SignedDuration::from_millis(-1_500)), "0s");
        assert_eq!(
            human_duration(SignedDuration::from_millis(-2_000)),
            "<invalid>"
        );
        assert_eq!(human_duration(SignedDuration::from_millis(119_999)), "119s");
        assert_eq!(
            human_duration(SignedDuration::from_millis(599_999)),
            "9m59s"
        );
    }

    #[test]
    fn timestamps_zero_and_unknown() {
        let obj = json!({"metadata": {"creationTimestamp": "0001-01-01T00:00:00Z"}});
        assert_eq!(age(&obj, now()), json!("<unknown>"));
        assert_eq!(
            age(&json!({"metadata": {"creationTimestamp": null}}), now()),
            json!("<unknown>")
        );
        assert_eq!(
            age(
                &json!({"metadata": {"creationTimestamp": "yesterday"}}),
                now()
            ),
            json!("<unknown>")
        );
        // A creation time slightly in the future (clock skew) is "0s", further is "<invalid>".
        assert_eq!(
            age(
                &json!({"metadata": {"creationTimestamp": "2024-06-01T12:00:01Z"}}),
                now()
            ),
            json!("0s")
        );
        assert_eq!(
            age(
                &json!({"metadata": {"creationTimestamp": "2024-06-01T12:00:05Z"}}),
                now()
            ),
            json!("<invalid>")
        );
        // MicroTime (fractional seconds) parses too.
        let micro = json!({"metadata": {"creationTimestamp": "2024-06-01T11:59:15.123456Z"}});
        assert_eq!(age(&micro, now()), json!("44s"));
    }

    // -----------------------------------------------------------------------------------------
    // Pods.

    #[test]
    fn pod_columns_are_upstreams() {
        assert_eq!(
            headers(POD),
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Status", "string", 0),
                ("Restarts", "string", 0),
                ("Age", "string", 0),
                ("IP", "string", 1),
                ("Node", "string", 1),
                ("Nominated Node", "string", 1),
                ("Readiness Gates", "string", 1),
            ]
        );
        assert_eq!(POD.columns[0].format, "name");
        assert!(POD.columns[1..].iter().all(|c| c.format.is_empty()));
    }

    fn running_container(name: &str, ready: bool) -> Value {
        json!({
            "name": name, "ready": ready, "restartCount": 0, "started": true,
            "image": "docker.io/library/nginx:1.27", "imageID": "", "containerID": "containerd://abc",
            "state": {"running": {"startedAt": "2024-06-01T10:00:05Z"}},
            "lastState": {}
        })
    }

    fn pod(spec: Value, status: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-7d4b9c6f5-x2x8q", "namespace": "default", "uid": "1",
                          "creationTimestamp": "2024-06-01T10:00:00Z"},
            "spec": spec,
            "status": status,
        })
    }

    #[test]
    fn pod_running_and_ready() {
        let obj = pod(
            json!({"nodeName": "worker-1", "containers": [{"name": "nginx", "image": "nginx"}]}),
            json!({
                "phase": "Running", "podIP": "10.244.1.7", "podIPs": [{"ip": "10.244.1.7"}],
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "containerStatuses": [running_container("nginx", true)]
            }),
        );
        golden(
            POD,
            obj,
            r#"["web-7d4b9c6f5-x2x8q", "1/1", "Running", "0", "120m", "10.244.1.7", "worker-1", "<none>", "<none>"]"#,
        );
    }

    #[test]
    fn pod_two_containers_one_not_ready() {
        let obj = pod(
            json!({"nodeName": "worker-1", "containers": [{"name": "app"}, {"name": "proxy"}]}),
            json!({
                "phase": "Running", "podIP": "10.244.1.8",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [running_container("app", true), running_container("proxy", false)]
            }),
        );
        golden(
            POD,
            obj,
            r#"["web-7d4b9c6f5-x2x8q", "1/2", "Running", "0", "120m", "10.244.1.8", "worker-1", "<none>", "<none>"]"#,
        );
    }

    #[test]
    fn pod_crash_loop_with_last_restart() {
        let obj = pod(
            json!({"nodeName": "worker-2", "containers": [{"name": "app"}]}),
            json!({
                "phase": "Running", "podIP": "10.244.2.3",
                "containerStatuses": [{
                    "name": "app", "ready": false, "restartCount": 5, "started": false,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 2m40s restarting failed container"}},
                    "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                                 "startedAt": "2024-06-01T11:54:58Z", "finishedAt": "2024-06-01T11:55:00Z"}}
                }]
            }),
        );
        golden(
            POD,
            obj,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "CrashLoopBackOff", "5 (5m ago)", "120m", "10.244.2.3", "worker-2", "<none>", "<none>"]"#,
        );
    }

    #[test]
    fn pod_pending_states() {
        // Waiting for the image.
        let creating = pod(
            json!({"nodeName": "worker-1", "containers": [{"name": "app"}]}),
            json!({"phase": "Pending", "containerStatuses": [{
                "name": "app", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}, "lastState": {}}]}),
        );
        golden(
            POD,
            creating,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "ContainerCreating", "0", "120m", "<none>", "worker-1", "<none>", "<none>"]"#,
        );

        // Not scheduled yet: just the phase.
        let pending = pod(
            json!({"containers": [{"name": "app"}]}),
            json!({"phase": "Pending"}),
        );
        golden(
            POD,
            pending,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "Pending", "0", "120m", "<none>", "<none>", "<none>", "<none>"]"#,
        );

        // Scheduling gates.
        let gated = pod(
            json!({"containers": [{"name": "app"}], "schedulingGates": [{"name": "example.com/gate"}]}),
            json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}]}),
        );
        golden(
            POD,
            gated,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "SchedulingGated", "0", "120m", "<none>", "<none>", "<none>", "<none>"]"#,
        );

        // Preempting: nominated node.
        let nominated = pod(
            json!({"containers": [{"name": "app"}]}),
            json!({"phase": "Pending", "nominatedNodeName": "worker-3",
                   "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}]}),
        );
        golden(
            POD,
            nominated,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "Pending", "0", "120m", "<none>", "<none>", "worker-3", "<none>"]"#,
        );
    }

    #[test]
    fn pod_init_containers() {
        let spec = json!({"nodeName": "n1", "initContainers": [{"name": "migrate"}, {"name": "seed"}],
                          "containers": [{"name": "app"}]});
        let app_waiting = json!([{"name": "app", "ready": false, "restartCount": 0,
                                  "state": {"waiting": {"reason": "PodInitializing"}}}]);
        // First init container still running.
        let running = pod(
            spec.clone(),
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "migrate", "ready": false, "restartCount": 0, "state": {"running": {"startedAt": "2024-06-01T11:59:00Z"}}},
                {"name": "seed", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}],
                "containerStatuses": app_waiting.clone()}),
        );
        golden(
            POD,
            running,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "Init:0/2", "0", "120m", "<none>", "n1", "<none>", "<none>"]"#,
        );

        // First done, second running.
        let second = pod(
            spec.clone(),
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "migrate", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "seed", "ready": false, "restartCount": 0, "state": {"running": {}}}],
                "containerStatuses": app_waiting.clone()}),
        );
        golden(
            POD,
            second,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "Init:1/2", "0", "120m", "<none>", "n1", "<none>", "<none>"]"#,
        );

        // Crash looping init container: its restarts count while initializing.
        let crashing = pod(
            spec.clone(),
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "migrate", "ready": false, "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2024-06-01T11:58:30Z"}}},
                {"name": "seed", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}],
                "containerStatuses": app_waiting.clone()}),
        );
        golden(
            POD,
            crashing,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "Init:CrashLoopBackOff", "3 (90s ago)", "120m", "<none>", "n1", "<none>", "<none>"]"#,
        );

        // Failed init container with a reason, without one, and killed by a signal.
        for (terminated, want) in [
            (json!({"exitCode": 1, "reason": "Error"}), "Init:Error"),
            (json!({"exitCode": 2}), "Init:ExitCode:2"),
            (json!({"exitCode": 137, "signal": 9}), "Init:Signal:9"),
        ] {
            let failed = pod(
                spec.clone(),
                json!({"phase": "Pending", "initContainerStatuses": [
                    {"name": "migrate", "ready": false, "restartCount": 0, "state": {"terminated": terminated}}],
                    "containerStatuses": app_waiting.clone()}),
            );
            golden(
                POD,
                failed,
                &format!(
                    r#"["web-7d4b9c6f5-x2x8q", "0/1", "{want}", "0", "120m", "<none>", "n1", "<none>", "<none>"]"#
                ),
            );
        }
    }

    #[test]
    fn pod_sidecar_counts_as_container() {
        let obj = pod(
            json!({"nodeName": "n1", "initContainers": [{"name": "log-shipper", "restartPolicy": "Always"}],
                   "containers": [{"name": "app"}]}),
            json!({"phase": "Running", "podIP": "10.0.0.9",
                "conditions": [{"type": "Initialized", "status": "True"}, {"type": "Ready", "status": "True"}],
                "initContainerStatuses": [{"name": "log-shipper", "ready": true, "started": true, "restartCount": 1,
                    "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 2, "finishedAt": "2024-06-01T11:00:00Z"}}}],
                "containerStatuses": [running_container("app", true)]}),
        );
        golden(
            POD,
            obj,
            r#"["web-7d4b9c6f5-x2x8q", "2/2", "Running", "1 (60m ago)", "120m", "10.0.0.9", "n1", "<none>", "<none>"]"#,
        );
    }

    #[test]
    fn pod_completed_failed_and_mixed() {
        let completed = pod(
            json!({"nodeName": "n1", "restartPolicy": "Never", "containers": [{"name": "job"}]}),
            json!({"phase": "Succeeded", "podIP": "10.0.0.3", "containerStatuses": [{
                "name": "job", "ready": false, "restartCount": 0, "started": false,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": "2024-06-01T10:01:00Z"}}}]}),
        );
        golden(
            POD,
            completed,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "Completed", "0", "120m", "10.0.0.3", "n1", "<none>", "<none>"]"#,
        );

        let oom = pod(
            json!({"containers": [{"name": "job"}]}),
            json!({"phase": "Failed", "containerStatuses": [{
                "name": "job", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}),
        );
        golden(
            POD,
            oom,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "OOMKilled", "0", "120m", "<none>", "<none>", "<none>", "<none>"]"#,
        );

        for (terminated, want) in [
            (json!({"exitCode": 3}), "ExitCode:3"),
            (json!({"exitCode": 143, "signal": 15}), "Signal:15"),
        ] {
            let obj = pod(
                json!({"containers": [{"name": "job"}]}),
                json!({"phase": "Failed", "containerStatuses": [{"name": "job", "state": {"terminated": terminated}}]}),
            );
            golden(
                POD,
                obj,
                &format!(
                    r#"["web-7d4b9c6f5-x2x8q", "0/1", "{want}", "0", "120m", "<none>", "<none>", "<none>", "<none>"]"#
                ),
            );
        }

        // One container completed, one still running: Running if the pod is Ready, else NotReady.
        let statuses = json!([
            {"name": "a", "ready": false, "restartCount": 0, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "b", "ready": true, "restartCount": 0, "state": {"running": {}}}
        ]);
        for (ready, want) in [("True", "Running"), ("False", "NotReady")] {
            let obj = pod(
                json!({"containers": [{"name": "a"}, {"name": "b"}]}),
                json!({"phase": "Running", "conditions": [{"type": "Ready", "status": ready}], "containerStatuses": statuses}),
            );
            golden(
                POD,
                obj,
                &format!(
                    r#"["web-7d4b9c6f5-x2x8q", "1/2", "{want}", "0", "120m", "<none>", "<none>", "<none>", "<none>"]"#
                ),
            );
        }

        let evicted = pod(
            json!({"nodeName": "n1", "containers": [{"name": "app"}]}),
            json!({"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."}),
        );
        golden(
            POD,
            evicted,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "Evicted", "0", "120m", "<none>", "n1", "<none>", "<none>"]"#,
        );
    }

    #[test]
    fn pod_deletion() {
        let mut terminating = pod(
            json!({"nodeName": "n1", "containers": [{"name": "app"}]}),
            json!({"phase": "Running", "containerStatuses": [running_container("app", true)]}),
        );
        terminating["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:59:30Z");
        golden(
            POD,
            terminating,
            r#"["web-7d4b9c6f5-x2x8q", "1/1", "Terminating", "0", "120m", "<none>", "n1", "<none>", "<none>"]"#,
        );

        let mut lost = pod(
            json!({"nodeName": "n1", "containers": [{"name": "app"}]}),
            json!({"phase": "Running", "reason": "NodeLost"}),
        );
        lost["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:59:30Z");
        golden(
            POD,
            lost,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "Unknown", "0", "120m", "<none>", "n1", "<none>", "<none>"]"#,
        );

        // A finished pod being deleted keeps its final status.
        let mut done = pod(
            json!({"containers": [{"name": "app"}]}),
            json!({"phase": "Succeeded"}),
        );
        done["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:59:30Z");
        golden(
            POD,
            done,
            r#"["web-7d4b9c6f5-x2x8q", "0/1", "Succeeded", "0", "120m", "<none>", "<none>", "<none>", "<none>"]"#,
        );
    }

    #[test]
    fn pod_ips_and_readiness_gates() {
        // podIPs only (dual stack, IPv6 first).
        let obj = pod(
            json!({"nodeName": "n1", "containers": [{"name": "app"}],
                   "readinessGates": [{"conditionType": "example.com/lb"}, {"conditionType": "example.com/dns"}]}),
            json!({"phase": "Running", "podIPs": [{"ip": "fd00::7"}, {"ip": "10.0.0.7"}],
                   "conditions": [{"type": "example.com/lb", "status": "True"}, {"type": "example.com/dns", "status": "False"}],
                   "containerStatuses": [running_container("app", true)]}),
        );
        golden(
            POD,
            obj,
            r#"["web-7d4b9c6f5-x2x8q", "1/1", "Running", "0", "120m", "fd00::7", "n1", "<none>", "1/2"]"#,
        );

        // podIP wins over a disagreeing podIPs (upstream's v1 conversion).
        let obj = pod(
            json!({"containers": []}),
            json!({"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.2"}]}),
        );
        golden(
            POD,
            obj,
            r#"["web-7d4b9c6f5-x2x8q", "0/0", "Running", "0", "120m", "10.0.0.1", "<none>", "<none>", "<none>"]"#,
        );
    }

    #[test]
    fn pod_restarts_without_termination_time() {
        // Restarts but no lastState: no "(... ago)".
        let obj = pod(
            json!({"containers": [{"name": "app"}]}),
            json!({"phase": "Running", "containerStatuses": [{"name": "app", "ready": true, "restartCount": 2, "state": {"running": {}}}]}),
        );
        golden(
            POD,
            obj,
            r#"["web-7d4b9c6f5-x2x8q", "1/1", "Running", "2", "120m", "<none>", "<none>", "<none>", "<none>"]"#,
        );
        // Restarts summed over containers, latest termination wins.
        let obj = pod(
            json!({"containers": [{"name": "a"}, {"name": "b"}]}),
            json!({"phase": "Running", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-06-01T09:00:00Z"}}},
                {"name": "b", "ready": true, "restartCount": 1, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2024-06-01T11:57:00Z"}}}]}),
        );
        golden(
            POD,
            obj,
            r#"["web-7d4b9c6f5-x2x8q", "2/2", "Running", "3 (3m ago)", "120m", "<none>", "<none>", "<none>", "<none>"]"#,
        );
    }

    #[test]
    fn pod_empty_object() {
        golden(
            POD,
            json!({}),
            r#"["", "0/0", "", "0", "<unknown>", "<none>", "<none>", "<none>", "<none>"]"#,
        );
    }

    // -----------------------------------------------------------------------------------------
    // Nodes.

    fn node(labels: Value, unschedulable: Option<bool>, conditions: Value) -> Value {
        let mut spec = json!({"podCIDR": "10.244.0.0/24"});
        if let Some(u) = unschedulable {
            spec["unschedulable"] = json!(u);
        }
        json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "cp-1", "labels": labels, "creationTimestamp": "2024-04-01T12:00:00Z"},
            "spec": spec,
            "status": {
                "conditions": conditions,
                "addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "cp-1"}],
                "nodeInfo": {"kubeletVersion": "v1.31.2", "osImage": "Debian GNU/Linux 12 (bookworm)",
                             "kernelVersion": "6.1.0-26-amd64", "containerRuntimeVersion": "containerd://1.7.22"}
            }
        })
    }

    #[test]
    fn node_columns_are_upstreams() {
        assert_eq!(
            headers(NODE),
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Roles", "string", 0),
                ("Age", "string", 0),
                ("Version", "string", 0),
                ("Internal-IP", "string", 1),
                ("External-IP", "string", 1),
                ("OS-Image", "string", 1),
                ("Kernel-Version", "string", 1),
                ("Container-Runtime", "string", 1),
            ]
        );
    }

    #[test]
    fn node_ready_control_plane() {
        let obj = node(
            json!({"kubernetes.io/hostname": "cp-1", "node-role.kubernetes.io/control-plane": "",
                   "node-role.kubernetes.io/etcd": "true", "node-role.kubernetes.io/": "x"}),
            None,
            json!([{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True", "reason": "KubeletReady"}]),
        );
        golden(
            NODE,
            obj,
            r#"["cp-1", "Ready", "control-plane,etcd", "61d", "v1.31.2", "192.168.1.10", "<none>", "Debian GNU/Linux 12 (bookworm)", "6.1.0-26-amd64", "containerd://1.7.22"]"#,
        );
    }

    #[test]
    fn node_statuses_and_roles() {
        // Cordoned and not ready; role from the legacy kubernetes.io/role label.
        let obj = node(
            json!({"kubernetes.io/role": "worker", "node-role.kubernetes.io/worker": ""}),
            Some(true),
            json!([{"type": "Ready", "status": "False"}]),
        );
        let cells = (NODE.cells)(&obj, now());
        assert_eq!(cells[1], json!("NotReady,SchedulingDisabled"));
        assert_eq!(cells[2], json!("worker"));

        // Ready Unknown (kubelet stopped posting) is NotReady too.
        let obj = node(
            json!({}),
            Some(false),
            json!([{"type": "Ready", "status": "Unknown"}]),
        );
        let cells = (NODE.cells)(&obj, now());
        assert_eq!(cells[1], json!("NotReady"));
        assert_eq!(cells[2], json!("<none>"));

        // No Ready condition at all.
        let obj = node(json!(null), Some(true), json!([]));
        assert_eq!(
            (NODE.cells)(&obj, now())[1],
            json!("Unknown,SchedulingDisabled")
        );

        // A bare node: everything unknown.
        golden(
            NODE,
            json!({"metadata": {"name": "bare", "creationTimestamp": "2024-06-01T11:59:00Z"}}),
            r#"["bare", "Unknown", "<none>", "60s", "", "<none>", "<none>", "<unknown>", "<unknown>", "<unknown>"]"#,
        );

        // External IP: the first one.
        let mut obj = node(
            json!({}),
            None,
            json!([{"type": "Ready", "status": "True"}]),
        );
        obj["status"]["addresses"] = json!([
            {"type": "ExternalIP", "address": "203.0.113.5"}, {"type": "ExternalIP", "address": "203.0.113.6"},
            {"type": "InternalIP", "address": "10.0.0.5"}
        ]);
        let cells = (NODE.cells)(&obj, now());
        assert_eq!(
            (cells[5].clone(), cells[6].clone()),
            (json!("10.0.0.5"), json!("203.0.113.5"))
        );
    }

    // -----------------------------------------------------------------------------------------
    // Events.

    #[test]
    fn event_columns_are_upstreams() {
        let want = vec![
            ("Last Seen", "string", 0),
            ("Type", "string", 0),
            ("Reason", "string", 0),
            ("Object", "string", 0),
            ("Subobject", "string", 1),
            ("Source", "string", 1),
            ("Message", "string", 0),
            ("First Seen", "string", 1),
            ("Count", "string", 1),
            ("Name", "string", 1),
        ];
        assert_eq!(headers(EVENT), want);
        assert_eq!(headers(EVENT_V1), want);
        assert_eq!(EVENT.columns[9].format, "name");
        assert!(EVENT.columns[..9].iter().all(|c| c.format.is_empty()));
    }

    #[test]
    fn core_event_from_kubelet() {
        let obj = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.17d8c3a1b2c3d4e5", "namespace": "default", "creationTimestamp": "2024-06-01T11:50:00Z"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web", "uid": "u1",
                               "apiVersion": "v1", "fieldPath": "spec.containers{app}"},
            "reason": "BackOff", "message": "Back-off restarting failed container app in pod web_default(u1)\n",
            "source": {"component": "kubelet", "host": "worker-1"},
            "firstTimestamp": "2024-06-01T11:50:00Z", "lastTimestamp": "2024-06-01T11:58:00Z",
            "count": 7, "type": "Warning", "eventTime": null, "reportingComponent": "kubelet", "reportingInstance": "worker-1"
        });
        golden(
            EVENT,
            obj,
            r#"["2m", "Warning", "BackOff", "pod/web", "spec.containers{app}", "kubelet, worker-1", "Back-off restarting failed container app in pod web_default(u1)", "10m", 7, "web.17d8c3a1b2c3d4e5"]"#,
        );
    }

    #[test]
    fn core_event_new_style() {
        // Written through the new API: eventTime only, no count, reporting fields, a series.
        let obj = json!({
            "metadata": {"name": "sched.1", "namespace": "default", "creationTimestamp": "2024-06-01T11:00:00Z"},
            "involvedObject": {"kind": "Pod", "name": "web"},
            "reason": "Scheduled", "message": "Successfully assigned default/web to worker-1", "type": "Normal",
            "eventTime": "2024-06-01T11:00:00.123456Z", "reportingComponent": "default-scheduler",
            "reportingInstance": "default-scheduler-cp-1", "source": {}
        });
        golden(
            EVENT,
            obj.clone(),
            r#"["59m", "Normal", "Scheduled", "pod/web", "", "default-scheduler, default-scheduler-cp-1", "Successfully assigned default/web to worker-1", "59m", 1, "sched.1"]"#,
        );
        let mut with_series = obj;
        with_series["series"] =
            json!({"count": 4, "lastObservedTime": "2024-06-01T11:59:00.000000Z"});
        let cells = (EVENT.cells)(&with_series, now());
        assert_eq!(
            (cells[0].clone(), cells[7].clone(), cells[8].clone()),
            (json!("60s"), json!("59m"), json!(4))
        );

        // No timestamps at all; an involved object without a name prints just the kind.
        let obj =
            json!({"metadata": {"name": "e"}, "involvedObject": {"kind": "Node"}, "count": 0});
        golden(
            EVENT,
            obj,
            r#"["<unknown>", "", "", "node", "", "", "", "<unknown>", 1, "e"]"#,
        );
    }

    #[test]
    fn events_k8s_io_event() {
        let obj = json!({
            "apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web-abc.17d8", "namespace": "default", "creationTimestamp": "2024-06-01T11:55:00Z"},
            "eventTime": "2024-06-01T11:55:00.000000Z",
            "reportingController": "deployment-controller", "reportingInstance": "",
            "action": "Scale", "reason": "ScalingReplicaSet", "type": "Normal",
            "regarding": {"kind": "Deployment", "namespace": "default", "name": "web", "apiVersion": "apps/v1"},
            "note": "  Scaled up replica set web-abc to 3 from 0 ",
        });
        golden(
            EVENT_V1,
            obj,
            r#"["5m", "Normal", "ScalingReplicaSet", "deployment/web", "", "deployment-controller", "Scaled up replica set web-abc to 3 from 0", "5m", 1, "web-abc.17d8"]"#,
        );
        // The deprecated core fields, when a core client wrote the event.
        let obj = json!({
            "metadata": {"name": "e2"},
            "regarding": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"},
            "deprecatedSource": {"component": "kubelet", "host": "n1"},
            "deprecatedFirstTimestamp": "2024-06-01T10:00:00Z", "deprecatedLastTimestamp": "2024-06-01T11:00:00Z",
            "deprecatedCount": 12, "type": "Warning", "reason": "Unhealthy", "note": "Liveness probe failed"
        });
        golden(
            EVENT_V1,
            obj,
            r#"["60m", "Warning", "Unhealthy", "pod/p", "spec.containers{c}", "kubelet, n1", "Liveness probe failed", "120m", 12, "e2"]"#,
        );
    }

    // -----------------------------------------------------------------------------------------
    // Small kinds.

    #[test]
    fn namespace_secret_configmap_serviceaccount_lease() {
        let meta = |n: &str| json!({"name": n, "namespace": "default", "creationTimestamp": "2024-05-25T12:00:00Z"});
        assert_eq!(
            headers(NAMESPACE),
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Age", "string", 0)
            ]
        );
        golden(
            NAMESPACE,
            json!({"metadata": meta("kube-system"), "status": {"phase": "Active"}}),
            r#"["kube-system", "Active", "7d"]"#,
        );
        let mut terminating = json!({"metadata": meta("old"), "status": {"phase": "Terminating"}});
        terminating["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:00:00Z");
        golden(NAMESPACE, terminating, r#"["old", "Terminating", "7d"]"#);

        assert_eq!(
            headers(SECRET),
            vec![
                ("Name", "string", 0),
                ("Type", "string", 0),
                ("Data", "string", 0),
                ("Age", "string", 0)
            ]
        );
        golden(
            SECRET,
            json!({"metadata": meta("tls"), "type": "kubernetes.io/tls", "data": {"tls.crt": "LS0t", "tls.key": "LS0t"}}),
            r#"["tls", "kubernetes.io/tls", 2, "7d"]"#,
        );
        golden(
            SECRET,
            json!({"metadata": meta("empty"), "type": "Opaque"}),
            r#"["empty", "Opaque", 0, "7d"]"#,
        );

        assert_eq!(
            headers(CONFIGMAP),
            vec![
                ("Name", "string", 0),
                ("Data", "string", 0),
                ("Age", "string", 0)
            ]
        );
        golden(
            CONFIGMAP,
            json!({"metadata": meta("kube-root-ca.crt"), "data": {"ca.crt": "-----BEGIN"}, "binaryData": {"blob": "AAEC", "b2": ""}}),
            r#"["kube-root-ca.crt", 3, "7d"]"#,
        );

        assert_eq!(
            headers(SERVICE_ACCOUNT),
            vec![
                ("Name", "string", 0),
                ("Secrets", "string", 0),
                ("Age", "string", 0)
            ]
        );
        golden(
            SERVICE_ACCOUNT,
            json!({"metadata": meta("default")}),
            r#"["default", 0, "7d"]"#,
        );
        golden(
            SERVICE_ACCOUNT,
            json!({"metadata": meta("builder"), "secrets": [{"name": "builder-token"}, {"name": "dockercfg"}]}),
            r#"["builder", 2, "7d"]"#,
        );

        assert_eq!(
            headers(LEASE),
            vec![
                ("Name", "string", 0),
                ("Holder", "string", 0),
                ("Age", "string", 0)
            ]
        );
        golden(
            LEASE,
            json!({"metadata": meta("kube-scheduler"), "spec": {"holderIdentity": "cp-1_8d1e", "leaseDurationSeconds": 15}}),
            r#"["kube-scheduler", "cp-1_8d1e", "7d"]"#,
        );
        golden(
            LEASE,
            json!({"metadata": meta("free"), "spec": {}}),
            r#"["free", "", "7d"]"#,
        );
    }

    #[test]
    fn endpoints() {
        let ep = |subsets: Value| json!({"metadata": {"name": "web", "creationTimestamp": "2024-06-01T11:00:00Z"}, "subsets": subsets});
        assert_eq!(
            headers(ENDPOINTS),
            vec![
                ("Name", "string", 0),
                ("Endpoints", "string", 0),
                ("Age", "string", 0)
            ]
        );
        golden(
            ENDPOINTS,
            json!({"metadata": {"name": "none"}}),
            r#"["none", "<none>", "<unknown>"]"#,
        );
        golden(
            ENDPOINTS,
            ep(
                json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]),
            ),
            r#"["web", "10.0.0.1:8080,10.0.0.2:8080", "60m"]"#,
        );
        golden(
            ENDPOINTS,
            ep(
                json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, {"ip": "10.0.0.3"}, {"ip": "10.0.0.4"}],
                       "ports": [{"port": 80}]}]),
            ),
            r#"["web", "10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 1 more...", "60m"]"#,
        );
        golden(
            ENDPOINTS,
            ep(
                json!([{"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}, {"port": 443}]},
                      {"addresses": [{"ip": "10.0.1.1"}], "ports": [{"port": 80}]}]),
            ),
            r#"["web", "10.0.0.1:80,10.0.0.2:80,10.0.0.1:443 + 2 more...", "60m"]"#,
        );
        // Headless without ports; IPv6 gets brackets.
        golden(
            ENDPOINTS,
            ep(json!([{"addresses": [{"ip": "10.0.0.9"}]}])),
            r#"["web", "10.0.0.9", "60m"]"#,
        );
        golden(
            ENDPOINTS,
            ep(json!([{"addresses": [{"ip": "fd00::1"}], "ports": [{"port": 53}]}])),
            r#"["web", "[fd00::1]:53", "60m"]"#,
        );
        // Only not-ready addresses: nothing printed.
        golden(
            ENDPOINTS,
            ep(json!([{"notReadyAddresses": [{"ip": "10.0.0.5"}], "ports": [{"port": 80}]}])),
            r#"["web", "", "60m"]"#,
        );
    }

    // -----------------------------------------------------------------------------------------
    // Services.

    fn service(spec: Value, status: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "web", "namespace": "default", "creationTimestamp": "2024-06-01T11:40:00Z"},
               "spec": spec, "status": status})
    }

    #[test]
    fn service_columns_are_upstreams() {
        assert_eq!(
            headers(SERVICE),
            vec![
                ("Name", "string", 0),
                ("Type", "string", 0),
                ("Cluster-IP", "string", 0),
                ("External-IP", "string", 0),
                ("Port(s)", "string", 0),
                ("Age", "string", 0),
                ("Selector", "string", 1),
            ]
        );
    }

    #[test]
    fn services() {
        golden(
            SERVICE,
            service(
                json!({"type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                       "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                                 {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}],
                       "selector": {"k8s-app": "kube-dns"}}),
                json!({"loadBalancer": {}}),
            ),
            r#"["web", "ClusterIP", "10.96.0.10", "<none>", "53/UDP,53/TCP", "20m", "k8s-app=kube-dns"]"#,
        );
        golden(
            SERVICE,
            service(
                json!({"type": "NodePort", "clusterIP": "10.96.3.4", "externalIPs": ["198.51.100.7"],
                       "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}],
                       "selector": {"app": "web", "app.kubernetes.io/part-of": "shop", "tier": "fe"}}),
                json!({}),
            ),
            r#"["web", "NodePort", "10.96.3.4", "198.51.100.7", "80:30080/TCP", "20m", "app.kubernetes.io/part-of=shop,app=web,tier=fe"]"#,
        );
        golden(
            SERVICE,
            service(
                json!({"type": "LoadBalancer", "clusterIP": "10.96.5.5", "ports": [{"port": 443, "nodePort": 31443, "protocol": "TCP"}]}),
                json!({"loadBalancer": {}}),
            ),
            r#"["web", "LoadBalancer", "10.96.5.5", "<pending>", "443:31443/TCP", "20m", "<none>"]"#,
        );
        golden(
            SERVICE,
            service(
                json!({"type": "LoadBalancer", "clusterIP": "10.96.5.5", "externalIPs": ["192.0.2.1"], "ports": [{"port": 443, "protocol": "TCP"}]}),
                json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}, {"hostname": "lb.example.com"}, {"ip": "203.0.113.2"}, {}]}}),
            ),
            r#"["web", "LoadBalancer", "10.96.5.5", "203.0.113.2,203.0.113.9,lb.example.com,192.0.2.1", "443/TCP", "20m", "<none>"]"#,
        );
        golden(
            SERVICE,
            service(
                json!({"type": "LoadBalancer", "clusterIP": "10.96.5.5"}),
                json!({"loadBalancer": {"ingress": [{"hostname": "a.example.com"}]}}),
            ),
            r#"["web", "LoadBalancer", "10.96.5.5", "a.example.com", "<none>", "20m", "<none>"]"#,
        );
        golden(
            SERVICE,
            service(
                json!({"type": "ExternalName", "externalName": "db.example.com"}),
                json!({}),
            ),
            r#"["web", "ExternalName", "<none>", "db.example.com", "<none>", "20m", "<none>"]"#,
        );
        golden(
            SERVICE,
            service(
                json!({"type": "ClusterIP", "clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 5432, "protocol": "TCP"}], "selector": {"app": "pg"}}),
                json!({}),
            ),
            r#"["web", "ClusterIP", "None", "<none>", "5432/TCP", "20m", "app=pg"]"#,
        );
        // Dual stack: clusterIPs only.
        golden(
            SERVICE,
            service(
                json!({"type": "ClusterIP", "clusterIPs": ["fd00:10:96::a", "10.96.0.11"], "ports": [{"port": 80, "protocol": "TCP"}]}),
                json!({}),
            ),
            r#"["web", "ClusterIP", "fd00:10:96::a", "<none>", "80/TCP", "20m", "<none>"]"#,
        );
        golden(
            SERVICE,
            json!({}),
            r#"["", "", "<none>", "<unknown>", "<none>", "<unknown>", "<none>"]"#,
        );
    }

    // -----------------------------------------------------------------------------------------
    // Workloads.

    fn template(containers: Value) -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}})
    }

    #[test]
    fn workload_columns_are_upstreams() {
        assert_eq!(
            headers(DEPLOYMENT),
            vec![
                ("Name", "string", 0),
                ("Ready", "string", 0),
                ("Up-to-date", "string", 0),
                ("Available", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ]
        );
        assert_eq!(
            headers(REPLICASET),
            vec![
                ("Name", "string", 0),
                ("Desired", "integer", 0),
                ("Current", "integer", 0),
                ("Ready", "integer", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ]
        );
        assert_eq!(
            headers(JOB),
            vec![
                ("Name", "string", 0),
                ("Status", "string", 0),
                ("Completions", "string", 0),
                ("Duration", "string", 0),
                ("Age", "string", 0),
                ("Containers", "string", 1),
                ("Images", "string", 1),
                ("Selector", "string", 1),
            ]
        );
    }

    #[test]
    fn deployments() {
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "generation": 3, "creationTimestamp": "2024-05-31T12:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": template(json!([{"name": "nginx", "image": "nginx:1.27"}, {"name": "envoy", "image": "envoyproxy/envoy:v1.31"}]))},
            "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 2, "availableReplicas": 2}
        });
        golden(
            DEPLOYMENT,
            obj,
            r#"["web", "2/3", 3, 2, "24h", "nginx,envoy", "nginx:1.27,envoyproxy/envoy:v1.31", "app=web"]"#,
        );

        // Fresh deployment, no status; replicas defaulted; selector with expressions.
        let obj = json!({
            "metadata": {"name": "api", "creationTimestamp": "2024-06-01T11:59:58Z"},
            "spec": {"selector": {"matchLabels": {"tier": "be", "app": "api"},
                                  "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "canary"]},
                                                       {"key": "legacy", "operator": "DoesNotExist"}]},
                     "template": template(json!([{"name": "api", "image": "ghcr.io/acme/api@sha256:abc"}]))}
        });
        golden(
            DEPLOYMENT,
            obj,
            r#"["api", "0/1", 0, 0, "2s", "api", "ghcr.io/acme/api@sha256:abc", "app=api,env in (canary,prod),!legacy,tier=be"]"#,
        );

        // Scaled to zero; an empty selector prints "" (Deployment uses selector.String()).
        let obj = json!({"metadata": {"name": "idle"}, "spec": {"replicas": 0, "selector": {}}});
        golden(
            DEPLOYMENT,
            obj,
            r#"["idle", "0/0", 0, 0, "<unknown>", "", "", ""]"#,
        );
        // An invalid selector.
        let obj = json!({"metadata": {"name": "bad"}, "spec": {"selector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}}});
        assert_eq!((DEPLOYMENT.cells)(&obj, now())[7], json!("<invalid>"));
    }

    #[test]
    fn replicasets() {
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-7d4b9c6f5", "namespace": "default", "creationTimestamp": "2024-06-01T04:00:00Z"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", "pod-template-hash": "7d4b9c6f5"}},
                     "template": template(json!([{"name": "nginx", "image": "nginx:1.27"}]))},
            "status": {"replicas": 3, "fullyLabeledReplicas": 3, "readyReplicas": 2, "availableReplicas": 2}
        });
        golden(
            REPLICASET,
            obj,
            r#"["web-7d4b9c6f5", 3, 3, 2, "8h", "nginx", "nginx:1.27", "app=web,pod-template-hash=7d4b9c6f5"]"#,
        );
        let old = json!({"metadata": {"name": "web-5f6", "creationTimestamp": "2024-05-30T12:00:00Z"},
                         "spec": {"replicas": 0, "selector": {"matchLabels": {}}, "template": template(json!([]))},
                         "status": {"replicas": 0}});
        golden(
            REPLICASET,
            old,
            r#"["web-5f6", 0, 0, 0, "2d", "", "", "<none>"]"#,
        );
        let bad = json!({"metadata": {"name": "x"}, "spec": {"selector": {"matchLabels": {"bad key": "v"}}}});
        assert_eq!((REPLICASET.cells)(&bad, now())[7], json!("<error>"));
    }

    fn job(spec: Value, status: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "5d6c"}});
        spec["template"] = template(json!([{"name": "pi", "image": "perl:5.34.0"}]));
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "pi", "namespace": "default", "creationTimestamp": "2024-06-01T11:00:00Z"},
               "spec": spec, "status": status})
    }

    #[test]
    fn jobs() {
        let sel = "batch.kubernetes.io/controller-uid=5d6c";
        let complete = job(
            json!({"completions": 1, "parallelism": 1, "backoffLimit": 6}),
            json!({"startTime": "2024-06-01T11:00:00Z", "completionTime": "2024-06-01T11:00:47Z", "succeeded": 1,
                   "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]}),
        );
        golden(
            JOB,
            complete,
            &format!(r#"["pi", "Complete", "1/1", "47s", "60m", "pi", "perl:5.34.0", "{sel}"]"#),
        );

        let running = job(
            json!({"completions": 5, "parallelism": 2}),
            json!({"startTime": "2024-06-01T11:55:30Z", "active": 2, "succeeded": 2}),
        );
        golden(
            JOB,
            running,
            &format!(r#"["pi", "Running", "2/5", "4m30s", "60m", "pi", "perl:5.34.0", "{sel}"]"#),
        );

        // Work queue (no completions) with parallelism.
        let queue = job(
            json!({"parallelism": 3}),
            json!({"startTime": "2024-06-01T09:00:00Z", "active": 3}),
        );
        golden(
            JOB,
            queue,
            &format!(r#"["pi", "Running", "0/1 of 3", "3h", "60m", "pi", "perl:5.34.0", "{sel}"]"#),
        );

        let failed = job(
            json!({"completions": 1}),
            json!({"startTime": "2024-06-01T11:00:00Z", "failed": 7,
                   "conditions": [{"type": "FailureTarget", "status": "True"}, {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}),
        );
        golden(
            JOB,
            failed,
            &format!(r#"["pi", "Failed", "0/1", "60m", "60m", "pi", "perl:5.34.0", "{sel}"]"#),
        );

        let failing = job(
            json!({"completions": 1}),
            json!({"conditions": [{"type": "FailureTarget", "status": "True"}]}),
        );
        assert_eq!(
            (JOB.cells)(&failing, now())[1..4],
            [json!("FailureTarget"), json!("0/1"), json!("")]
        );

        let suspended = job(
            json!({"completions": 1, "suspend": true}),
            json!({"conditions": [{"type": "Suspended", "status": "True"}]}),
        );
        assert_eq!((JOB.cells)(&suspended, now())[1], json!("Suspended"));

        let mut terminating = job(
            json!({"completions": 1}),
            json!({"conditions": [{"type": "Suspended", "status": "True"}]}),
        );
        terminating["metadata"]["deletionTimestamp"] = json!("2024-06-01T11:59:00Z");
        assert_eq!((JOB.cells)(&terminating, now())[1], json!("Terminating"));

        // Only the first condition of a type counts.
        let flapping = job(
            json!({}),
            json!({"conditions": [{"type": "Complete", "status": "False"}, {"type": "Complete", "status": "True"}]}),
        );
        assert_eq!((JOB.cells)(&flapping, now())[1], json!("Running"));

        golden(
            JOB,
            json!({}),
            r#"["", "Running", "0/1", "", "<unknown>", "", "", "<none>"]"#,
        );
    }

    // -----------------------------------------------------------------------------------------
    // Selectors and labels.

    #[test]
    fn label_selector_formatting() {
        let fmt = |sel: Value| format_label_selector(Some(&sel));
        assert_eq!(format_label_selector(None), "<none>");
        assert_eq!(fmt(json!(null)), "<none>");
        assert_eq!(fmt(json!({})), "<none>");
        assert_eq!(fmt(json!({"matchLabels": {"b": "2", "a": "1"}})), "a=1,b=2");
        assert_eq!(
            fmt(json!({"matchExpressions": [
                {"key": "zone", "operator": "NotIn", "values": ["us-east-1b", "us-east-1a"]},
                {"key": "gpu", "operator": "Exists"},
                {"key": "arch", "operator": "In", "values": ["arm64"]}]})),
            "arch in (arm64),gpu,zone notin (us-east-1a,us-east-1b)"
        );
        assert_eq!(fmt(json!({"matchLabels": {"app": ""}})), "app=");
        assert_eq!(
            fmt(json!({"matchLabels": {"example.com/app": "v"}})),
            "example.com/app=v"
        );
        // Rejected as upstream rejects them.
        for bad in [
            json!({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}),
            json!({"matchLabels": {"a": "-bad"}}),
            json!({"matchLabels": {"Example.com/a": "v"}}),
            json!({"matchLabels": {"/a": "v"}}),
            json!({"matchLabels": {"a": 1}}),
            json!({"matchLabels": ["a"]}),
            json!("app=web"),
        ] {
            assert_eq!(fmt(bad.clone()), "<error>", "{bad}");
        }
    }

    #[test]
    fn labels_sort_as_strings() {
        // Sorted as "k=v" strings like labels.Set.String(), so "a.b=1" sorts before "a=1".
        let obj = json!({"l": {"a": "1", "a.b": "1", "B": "x"}});
        assert_eq!(format_labels(&obj, "/l"), "B=x,a.b=1,a=1");
        assert_eq!(format_labels(&obj, "/missing"), "<none>");
        assert_eq!(format_labels(&json!({"l": {}}), "/l"), "<none>");
    }

    // -----------------------------------------------------------------------------------------
    // Defaults and lookup.

    #[test]
    fn default_table_for_custom_resources() {
        assert_eq!(
            headers(DEFAULT),
            vec![("Name", "string", 0), ("Age", "date", 0)]
        );
        assert_eq!(DEFAULT.columns[0].format, "name");
        let cr = json!({"apiVersion": "example.com/v1", "kind": "Widget",
                        "metadata": {"name": "w1", "creationTimestamp": "2024-03-01T12:00:00Z"}, "spec": {"size": 3}});
        golden(DEFAULT, cr, r#"["w1", "92d"]"#);
        golden(DEFAULT, json!([1, 2]), r#"["", "<unknown>"]"#);
    }

    #[test]
    fn table_for_maps_group_and_kind() {
        let cases: &[(&str, &str, TableSpec)] = &[
            ("", "Namespace", NAMESPACE),
            ("", "Pod", POD),
            ("", "Node", NODE),
            ("", "Event", EVENT),
            ("events.k8s.io", "Event", EVENT_V1),
            ("", "ConfigMap", CONFIGMAP),
            ("", "Secret", SECRET),
            ("", "Service", SERVICE),
            ("", "ServiceAccount", SERVICE_ACCOUNT),
            ("", "Endpoints", ENDPOINTS),
            ("apps", "Deployment", DEPLOYMENT),
            ("apps", "ReplicaSet", REPLICASET),
            ("batch", "Job", JOB),
            ("coordination.k8s.io", "Lease", LEASE),
            ("example.com", "Widget", DEFAULT),
            ("", "Deployment", DEFAULT),
            ("apps", "Pod", DEFAULT),
        ];
        for (group, kind, want) in cases {
            let got = table_for(group, kind);
            assert_eq!(got.columns, want.columns, "{group}/{kind}");
            assert!(
                std::ptr::fn_addr_eq(got.cells, want.cells),
                "{group}/{kind}"
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Robustness: no JSON value makes a printer panic or return the wrong number of cells.

    const ALL: &[TableSpec] = &[
        NAMESPACE,
        POD,
        NODE,
        EVENT,
        EVENT_V1,
        CONFIGMAP,
        SECRET,
        SERVICE,
        SERVICE_ACCOUNT,
        ENDPOINTS,
        DEPLOYMENT,
        REPLICASET,
        JOB,
        LEASE,
        DEFAULT,
    ];

    fn odd_values() -> Vec<Value> {
        vec![
            Value::Null,
            json!(true),
            json!(-1),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1.5),
            json!(""),
            json!("0001-01-01T00:00:00Z"),
            json!("9999-12-31T23:59:59Z"),
            json!("-009999-01-02T00:00:00Z"),
            json!([]),
            json!([null, 1, "x", {}]),
            json!({}),
        ]
    }

    /// Every JSON pointer of `v`'s subtrees.
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    out.push(p.clone());
                    pointers(child, p, out);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    pointers(child, p, out);
                }
            }
            _ => {}
        }
    }

    fn samples() -> Vec<Value> {
        let status = json!({
            "phase": "Running", "reason": "NodeLost", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"},
                           {"type": "PodScheduled", "status": "False", "reason": "SchedulingGated"}],
            "initContainerStatuses": [{"name": "i", "restartCount": 9223372036854775807_i64, "started": true, "ready": true,
                "state": {"terminated": {"exitCode": 1, "signal": 9, "finishedAt": "2024-06-01T11:00:00Z"}},
                "lastState": {"terminated": {"finishedAt": "2024-06-01T11:00:00Z"}}}],
            "containerStatuses": [{"name": "c", "restartCount": 9223372036854775807_i64, "ready": true,
                "state": {"waiting": {"reason": "X"}, "running": {}},
                "lastState": {"terminated": {"finishedAt": "2024-06-01T11:00:00Z"}}}],
            "startTime": "2024-06-01T11:00:00Z", "completionTime": "2024-06-01T11:30:00Z",
            "addresses": [{"type": "InternalIP", "address": "1.2.3.4"}],
            "nodeInfo": {"kubeletVersion": "v1"}, "loadBalancer": {"ingress": [{"ip": "1.1.1.1"}]},
            "readyReplicas": 1, "succeeded": 1
        });
        vec![
            json!({
                "metadata": {"name": "n", "creationTimestamp": "2024-06-01T11:00:00Z", "deletionTimestamp": "2024-06-01T11:00:00Z",
                             "labels": {"node-role.kubernetes.io/x": "", "kubernetes.io/role": "y"}},
                "spec": {"containers": [{"name": "c", "image": "i"}], "initContainers": [{"name": "i", "restartPolicy": "Always"}],
                         "readinessGates": [{"conditionType": "Ready"}], "type": "LoadBalancer", "externalIPs": ["2.2.2.2"],
                         "ports": [{"port": 80, "nodePort": 30000, "protocol": "TCP"}], "selector": {"matchLabels": {"a": "b"},
                         "matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]},
                         "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}, "completions": 1, "parallelism": 2,
                         "replicas": 2, "holderIdentity": "h", "unschedulable": true},
                "status": status,
                "subsets": [{"addresses": [{"ip": "1.1.1.1"}], "ports": [{"port": 1}]}],
                "involvedObject": {"kind": "Pod", "name": "p"}, "regarding": {"kind": "Pod", "name": "p"},
                "series": {"count": 2, "lastObservedTime": "2024-06-01T11:00:00Z"}, "source": {"component": "c", "host": "h"},
                "firstTimestamp": "2024-06-01T11:00:00Z", "lastTimestamp": "2024-06-01T11:00:00Z", "eventTime": "2024-06-01T11:00:00Z",
                "data": {"a": "b"}, "binaryData": {"c": ""}, "secrets": [{"name": "s"}], "count": 3
            }),
            json!({}),
            json!(null),
            json!([1]),
            json!("pod"),
        ]
    }

    #[test]
    fn odd_objects_never_panic() {
        let mut checked = 0usize;
        for sample in samples() {
            let mut ptrs = vec![String::new()];
            pointers(&sample, String::new(), &mut ptrs);
            for ptr in &ptrs {
                for odd in odd_values() {
                    let mut obj = sample.clone();
                    if ptr.is_empty() {
                        obj = odd;
                    } else if let Some(slot) = obj.pointer_mut(ptr) {
                        *slot = odd;
                    }
                    for spec in ALL {
                        let cells = (spec.cells)(&obj, now());
                        assert_eq!(cells.len(), spec.columns.len());
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000, "only {checked} combinations checked");
    }

    #[test]
    fn extreme_now_never_panics() {
        let obj = &samples()[0];
        for now in [Timestamp::MIN, Timestamp::MAX, Timestamp::UNIX_EPOCH] {
            for spec in ALL {
                assert_eq!((spec.cells)(obj, now).len(), spec.columns.len());
            }
        }
    }

    #[test]
    fn every_table_is_well_formed() {
        for spec in ALL {
            assert!(!spec.columns.is_empty());
            // Exactly one column carries the "name" format, all others none.
            assert_eq!(
                spec.columns.iter().filter(|c| c.format == "name").count(),
                1
            );
            assert!(
                spec.columns
                    .iter()
                    .all(|c| c.format.is_empty() || c.format == "name")
            );
            assert!(
                spec.columns
                    .iter()
                    .all(|c| matches!(c.type_, "string" | "integer" | "date"))
            );
            assert!(
                spec.columns
                    .iter()
                    .all(|c| c.priority == 0 || c.priority == 1)
            );
            assert!(spec.columns.iter().all(|c| !c.description.is_empty()));
        }
    }
}
