//! JSON patch (RFC 6902), JSON merge patch (RFC 7386) and strategic merge patch, as
//! k8s.io/apimachinery's `strategicpatch` applies them, driven by a table of the upstream
//! `patchStrategy`/`patchMergeKey` struct tags of the served kinds. Pure functions of JSON values.
//!
//! The strategic merge patch follows apimachinery's `strategicpatch.StrategicMergeMapPatch` (the
//! server side: `MergeParallelList` and `IgnoreUnmatchedNulls` both on), including its ordering
//! rules: items named by the patch keep the patch's order, items only on the server keep theirs,
//! and a new item with no `$setElementOrder` goes *before* the server-only items, as upstream.
//! Values taken whole from the patch lose their `null` fields and directives, which is what
//! upstream's decoding into typed structs does after the merge.
//!
//! Must not depend on anything that does IO.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

/// How a list field is patched by a strategic merge patch (upstream `patchStrategy` tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// `patchStrategy:"merge"` with `patchMergeKey`: items are merged by this key.
    Merge { key: &'static str },
    /// `patchStrategy:"merge"` on a list of scalars: union of the items.
    MergePrimitives,
    /// No strategy (atomic): the patch's list replaces the whole list.
    Replace,
}

/// The list fields with a merge strategy, as path suffixes (object field names, no indices).
/// A path matches an entry when it ends with the entry's suffix. Longer suffixes first where
/// they would otherwise be shadowed.
const LIST_STRATEGIES: &[(&[&str], ListStrategy)] = &[
    // ObjectMeta (only at the object root or in a template's metadata).
    (&["metadata", "finalizers"], ListStrategy::MergePrimitives),
    (
        &["metadata", "ownerReferences"],
        ListStrategy::Merge { key: "uid" },
    ),
    // Container / EphemeralContainer fields.
    (
        &["containers", "ports"],
        ListStrategy::Merge {
            key: "containerPort",
        },
    ),
    (&["containers", "env"], ListStrategy::Merge { key: "name" }),
    (
        &["containers", "volumeMounts"],
        ListStrategy::Merge { key: "mountPath" },
    ),
    (
        &["containers", "volumeDevices"],
        ListStrategy::Merge { key: "devicePath" },
    ),
    (
        &["initContainers", "ports"],
        ListStrategy::Merge {
            key: "containerPort",
        },
    ),
    (
        &["initContainers", "env"],
        ListStrategy::Merge { key: "name" },
    ),
    (
        &["initContainers", "volumeMounts"],
        ListStrategy::Merge { key: "mountPath" },
    ),
    (
        &["initContainers", "volumeDevices"],
        ListStrategy::Merge { key: "devicePath" },
    ),
    (
        &["ephemeralContainers", "ports"],
        ListStrategy::Merge {
            key: "containerPort",
        },
    ),
    (
        &["ephemeralContainers", "env"],
        ListStrategy::Merge { key: "name" },
    ),
    (
        &["ephemeralContainers", "volumeMounts"],
        ListStrategy::Merge { key: "mountPath" },
    ),
    (
        &["ephemeralContainers", "volumeDevices"],
        ListStrategy::Merge { key: "devicePath" },
    ),
    // ContainerStatus fields.
    (
        &["containerStatuses", "allocatedResourcesStatus"],
        ListStrategy::Merge { key: "name" },
    ),
    (
        &["initContainerStatuses", "allocatedResourcesStatus"],
        ListStrategy::Merge { key: "name" },
    ),
    (
        &["ephemeralContainerStatuses", "allocatedResourcesStatus"],
        ListStrategy::Merge { key: "name" },
    ),
    (
        &["containerStatuses", "volumeMounts"],
        ListStrategy::Merge { key: "mountPath" },
    ),
    (
        &["initContainerStatuses", "volumeMounts"],
        ListStrategy::Merge { key: "mountPath" },
    ),
    (
        &["ephemeralContainerStatuses", "volumeMounts"],
        ListStrategy::Merge { key: "mountPath" },
    ),
    // PodSpec.
    (&["spec", "containers"], ListStrategy::Merge { key: "name" }),
    (
        &["spec", "initContainers"],
        ListStrategy::Merge { key: "name" },
    ),
    (
        &["spec", "ephemeralContainers"],
        ListStrategy::Merge { key: "name" },
    ),
    (&["spec", "volumes"], ListStrategy::Merge { key: "name" }),
    (
        &["spec", "imagePullSecrets"],
        ListStrategy::Merge { key: "name" },
    ),
    (&["spec", "hostAliases"], ListStrategy::Merge { key: "ip" }),
    (
        &["spec", "topologySpreadConstraints"],
        ListStrategy::Merge { key: "topologyKey" },
    ),
    (
        &["spec", "resourceClaims"],
        ListStrategy::Merge { key: "name" },
    ),
    (
        &["spec", "schedulingGates"],
        ListStrategy::Merge { key: "name" },
    ),
    // ServiceSpec.
    (&["spec", "ports"], ListStrategy::Merge { key: "port" }),
    // NodeSpec.
    (&["spec", "podCIDRs"], ListStrategy::MergePrimitives),
    // PodStatus, NodeStatus, NamespaceStatus, ServiceStatus, workload statuses.
    (
        &["status", "conditions"],
        ListStrategy::Merge { key: "type" },
    ),
    (&["status", "podIPs"], ListStrategy::Merge { key: "ip" }),
    (&["status", "hostIPs"], ListStrategy::Merge { key: "ip" }),
    (
        &["status", "resourceClaimStatuses"],
        ListStrategy::Merge { key: "name" },
    ),
    (
        &["status", "addresses"],
        ListStrategy::Merge { key: "type" },
    ),
    // ServiceAccount.
    (&["secrets"], ListStrategy::Merge { key: "name" }),
];

/// The strategic-merge-patch strategy of the list at `path` (object field names from the
/// object root, without list indices). Works for bare objects and for pod templates nested in
/// workloads, because entries match on the path's suffix.
pub fn list_strategy(path: &[&str]) -> ListStrategy {
    for (suffix, strategy) in LIST_STRATEGIES {
        if path.ends_with(suffix) && suffix_allowed(path, suffix) {
            return *strategy;
        }
    }
    ListStrategy::Replace
}

/// Extra guards for suffixes that are too short to be unambiguous on their own.
fn suffix_allowed(path: &[&str], suffix: &[&str]) -> bool {
    match suffix {
        // ServiceAccount.secrets is a top-level field only.
        ["secrets"] => path.len() == 1,
        _ => true,
    }
}

/// The strategic-merge-patch merge key of the list at `path` (see [`list_strategy`]), or None
/// when the list is not merged by key.
pub fn merge_key(path: &[&str]) -> Option<&'static str> {
    match list_strategy(path) {
        ListStrategy::Merge { key } => Some(key),
        _ => None,
    }
}

/// Why a patch could not be applied. The message is the one upstream prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// The patch is malformed (HTTP 400, reason BadRequest).
    #[error("{0}")]
    BadRequest(String),
    /// The patch is well formed but cannot be applied to this object (HTTP 422, reason Invalid).
    #[error("{0}")]
    Unprocessable(String),
    /// The patch has too many operations (HTTP 413, reason RequestEntityTooLarge).
    #[error("{0}")]
    TooLarge(String),
}

impl PatchError {
    /// The HTTP status code of the Status to answer with.
    pub fn status_code(&self) -> u16 {
        match self {
            PatchError::BadRequest(_) => 400,
            PatchError::Unprocessable(_) => 422,
            PatchError::TooLarge(_) => 413,
        }
    }

    /// The `reason` of the Status to answer with.
    pub fn reason(&self) -> &'static str {
        match self {
            PatchError::BadRequest(_) => "BadRequest",
            PatchError::Unprocessable(_) => "Invalid",
            PatchError::TooLarge(_) => "RequestEntityTooLarge",
        }
    }

    /// The human message.
    pub fn message(&self) -> &str {
        match self {
            PatchError::BadRequest(m) | PatchError::Unprocessable(m) | PatchError::TooLarge(m) => m,
        }
    }
}

/// Upstream's limit on the operations of one JSON patch (`maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Apply an RFC 6902 JSON patch (`application/json-patch+json`) to `target`.
/// A body that is not a JSON patch is a 400; an operation that fails (including `test`) is a 422.
pub fn json_patch(target: &Value, patch_body: &[u8]) -> Result<Value, PatchError> {
    let ops: json_patch::Patch = serde_json::from_slice(patch_body)
        .map_err(|e| PatchError::BadRequest(format!("error decoding patch: {e}")))?;
    if ops.0.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            ops.0.len()
        )));
    }
    let mut doc = target.clone();
    json_patch::patch_unsafe(&mut doc, &ops)
        .map_err(|e| PatchError::Unprocessable(e.to_string()))?;
    Ok(doc)
}

/// Apply an RFC 7386 JSON merge patch (`application/merge-patch+json`): objects merge
/// recursively, `null` deletes, anything else (lists included) replaces.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut doc = target.clone();
    merge_into(&mut doc, patch);
    doc
}

fn merge_into(doc: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    if let Value::Object(map) = doc {
        for (key, value) in patch {
            if value.is_null() {
                map.shift_remove(key);
            } else {
                merge_into(map.entry(key.as_str()).or_insert(Value::Null), value);
            }
        }
    }
}

const DIRECTIVE_MARKER: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList";
const SET_ELEMENT_ORDER: &str = "$setElementOrder";

const ERR_BAD_JSON_DOC: &str = "invalid JSON document";
const ERR_NO_LIST_OF_LISTS: &str = "lists of lists are not supported";
const ERR_PRIMITIVE_LIST: &str = "invalid patch format of primitive list";
const ERR_RETAIN_KEYS: &str = "invalid patch format of retainKeys";
const ERR_SET_ELEMENT_ORDER: &str = "invalid patch format of setElementOrder list";

fn bad(msg: impl Into<String>) -> PatchError {
    PatchError::BadRequest(msg.into())
}

/// Apply a strategic merge patch (`application/strategic-merge-patch+json`) to `target`, as
/// the API server does for built-in kinds. A `null` patch changes nothing.
pub fn strategic_merge_patch(target: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Value::Object(original) = target else {
        return Err(bad(ERR_BAD_JSON_DOC));
    };
    let patch = match patch {
        Value::Object(p) => p.clone(),
        Value::Null => Map::new(),
        other => {
            return Err(bad(format!(
                "json: cannot unmarshal {} into Go value of type map[string]interface {{}}",
                json_type_word(other)
            )));
        }
    };
    merge_map(original.clone(), patch, &[]).map(Value::Object)
}

fn json_type_word(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `value` formatted as Go's `%v` formats the decoded `interface{}`, for upstream-like messages.
fn go_fmt(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(go_fmt).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => go_fmt_map(m),
    }
}

fn go_fmt_map(m: &Map<String, Value>) -> String {
    let mut entries: Vec<(&String, &Value)> = m.iter().collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let parts: Vec<String> = entries
        .iter()
        .map(|(k, v)| format!("{k}:{}", go_fmt(v)))
        .collect();
    format!("map[{}]", parts.join(" "))
}

/// The Go type name of a decoded JSON value, for `ErrBadArgType` messages.
fn go_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "<nil>",
        Value::Bool(_) => "bool",
        Value::Number(n) if n.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

fn err_bad_arg_type(expected: &str, actual: &Value) -> PatchError {
    bad(format!(
        "expected a {expected}, but received a {}",
        go_type(actual)
    ))
}

fn err_no_merge_key(m: &Map<String, Value>, key: &str) -> PatchError {
    bad(format!(
        "map: {} does not contain declared merge key: {key}",
        go_fmt_map(m)
    ))
}

fn err_bad_patch_type(t: &Value, m: &Map<String, Value>) -> PatchError {
    bad(format!(
        "unknown patch type: {} in map: {}",
        go_fmt(t),
        go_fmt_map(m)
    ))
}

fn is_directive_key(k: &str) -> bool {
    k == DIRECTIVE_MARKER
        || k == RETAIN_KEYS
        || k.starts_with(SET_ELEMENT_ORDER)
        || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
}

/// A value taken whole from the patch: maps lose their `null` fields and directive keys, and
/// maps carrying `$patch` disappear (upstream `discardNullValuesFromPatch` + `removeDirectives`).
fn clean(v: Value) -> Option<Value> {
    match v {
        Value::Object(m) => {
            if m.contains_key(DIRECTIVE_MARKER) {
                return None;
            }
            Some(Value::Object(clean_map(m)))
        }
        Value::Array(a) => Some(Value::Array(a.into_iter().filter_map(clean).collect())),
        other => Some(other),
    }
}

fn clean_map(m: Map<String, Value>) -> Map<String, Value> {
    m.into_iter()
        .filter(|(k, v)| !v.is_null() && !is_directive_key(k))
        .filter_map(|(k, v)| clean(v).map(|v| (k, v)))
        .collect()
}

fn child(path: &[String], key: &str) -> Vec<String> {
    let mut p = path.to_vec();
    p.push(key.to_string());
    p
}

fn strategy_at(path: &[String]) -> ListStrategy {
    let refs: Vec<&str> = path.iter().map(String::as_str).collect();
    list_strategy(&refs)
}

/// `$deleteFromPrimitiveList/x` -> `x` (upstream `extractKey`).
fn extract_key(key: &str, prefix: &str) -> Result<String, PatchError> {
    match key.split_once('/') {
        Some((p, rest)) if p == prefix => Ok(rest.to_string()),
        _ if prefix == DELETE_FROM_PRIMITIVE_LIST => Err(bad(ERR_PRIMITIVE_LIST)),
        _ => Err(bad(ERR_SET_ELEMENT_ORDER)),
    }
}

fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    path: &[String],
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.get(DIRECTIVE_MARKER) {
        return match directive.as_str() {
            Some("replace") => {
                patch.shift_remove(DIRECTIVE_MARKER);
                Ok(clean_map(patch))
            }
            Some("delete") => Ok(Map::new()),
            _ => Err(err_bad_patch_type(directive, &patch)),
        };
    }
    apply_retain_keys(&mut original, &mut patch)?;
    merge_set_element_order(&mut original, &mut patch, path)?;

    for (k, patch_v) in patch {
        let (key, is_delete_list) = if k.starts_with(DELETE_FROM_PRIMITIVE_LIST) {
            (extract_key(&k, DELETE_FROM_PRIMITIVE_LIST)?, true)
        } else {
            (k, false)
        };
        if patch_v.is_null() {
            original.shift_remove(&key);
            continue;
        }
        let Some(orig_v) = original.get_mut(&key) else {
            if !is_delete_list && let Some(v) = clean(patch_v) {
                original.insert(key, v);
            }
            continue;
        };
        match (orig_v, patch_v) {
            (Value::Object(o), Value::Object(p)) => {
                let merged = merge_map(std::mem::take(o), p, &child(path, &key))?;
                *o = merged;
            }
            (Value::Array(o), Value::Array(p)) => {
                let sub = child(path, &key);
                let strategy = strategy_at(&sub);
                let merged =
                    merge_slice_handler(std::mem::take(o), p, &sub, strategy, is_delete_list)?;
                *o = merged;
            }
            // A deletion list against a value that is not a list does nothing.
            _ if is_delete_list => {}
            (orig_v, patch_v) => match clean(patch_v) {
                Some(v) => *orig_v = v,
                None => {
                    original.shift_remove(&key);
                }
            },
        }
    }
    Ok(original)
}

fn merge_slice_handler(
    original: Vec<Value>,
    patch: Vec<Value>,
    path: &[String],
    strategy: ListStrategy,
    is_delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    match strategy {
        ListStrategy::Merge { key } => merge_slice(original, patch, path, key, is_delete_list),
        ListStrategy::MergePrimitives => merge_slice(original, patch, path, "", is_delete_list),
        ListStrategy::Replace if is_delete_list => merge_slice(original, patch, path, "", true),
        ListStrategy::Replace => Ok(patch.into_iter().filter_map(clean).collect()),
    }
}

/// The Go dynamic type of a list element, as upstream's `sliceElementType` compares them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Bool,
    Int,
    Float,
    String,
    Array,
    Map,
}

fn kind_of(v: &Value) -> Kind {
    match v {
        Value::Null => Kind::Null,
        Value::Bool(_) => Kind::Bool,
        Value::Number(n) if n.is_f64() => Kind::Float,
        Value::Number(_) => Kind::Int,
        Value::String(_) => Kind::String,
        Value::Array(_) => Kind::Array,
        Value::Object(_) => Kind::Map,
    }
}

fn slice_element_kind(slices: &[&[Value]]) -> Result<Kind, PatchError> {
    let mut prev: Option<Kind> = None;
    for s in slices {
        for v in s.iter() {
            let k = kind_of(v);
            match prev {
                None if k == Kind::Array => {
                    return Err(PatchError::Unprocessable(ERR_NO_LIST_OF_LISTS.into()));
                }
                None => prev = Some(k),
                Some(p) if p != k => {
                    let all: Vec<String> = slices
                        .iter()
                        .map(|s| go_fmt(&Value::Array(s.to_vec())))
                        .collect();
                    return Err(bad(format!(
                        "list element types are not identical: [{}]",
                        all.join(" ")
                    )));
                }
                Some(_) => {}
            }
        }
    }
    prev.ok_or_else(|| bad("no elements in any of the given slices"))
}

/// How an element is identified in a list: by its merge key's value for lists of maps, by
/// itself for lists of scalars. Values compare as Go's `==` on decoded JSON would.
fn ident(v: &Value, merge_key: &str, kind: Kind) -> Option<String> {
    if kind == Kind::Map {
        v.as_object()?.get(merge_key).map(Value::to_string)
    } else {
        Some(v.to_string())
    }
}

/// First position of each identity in `list`.
fn positions(list: &[Value], merge_key: &str, kind: Kind) -> HashMap<String, usize> {
    let mut out = HashMap::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        if let Some(id) = ident(v, merge_key, kind) {
            out.entry(id).or_insert(i);
        }
    }
    out
}

fn merge_slice(
    original: Vec<Value>,
    patch: Vec<Value>,
    path: &[String],
    merge_key: &str,
    is_delete_list: bool,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    let kind = slice_element_kind(&[&original, &patch])?;
    let (server_order, patch_order, merged) = if kind != Kind::Map {
        if is_delete_list {
            let to_delete: HashSet<String> = patch.iter().map(Value::to_string).collect();
            return Ok(original
                .into_iter()
                .filter(|v| !to_delete.contains(&v.to_string()))
                .collect());
        }
        let mut seen = HashSet::new();
        let merged: Vec<Value> = original
            .iter()
            .chain(patch.iter())
            .filter(|v| seen.insert(v.to_string()))
            .cloned()
            .collect();
        (original, patch, merged)
    } else {
        if merge_key.is_empty() {
            return Err(bad(format!(
                "cannot merge lists without merge key for {}",
                path.join(".")
            )));
        }
        let (original, patch) = merge_slice_with_special_elements(original, patch, merge_key)?;
        let merged =
            merge_slice_without_special_elements(original.clone(), &patch, merge_key, path)?;
        (original, patch, merged)
    };
    let (patch_items, server_only) = partition(merged, &patch_order, merge_key)?;
    normalize_element_order(
        patch_items,
        server_only,
        &patch_order,
        &server_order,
        merge_key,
        kind,
    )
}

/// Split `merged` into the items present in `by` and the others (upstream
/// `partitionPrimitivesByPresentInList` / `partitionMapsByPresentInList`).
fn partition(
    merged: Vec<Value>,
    by: &[Value],
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut in_patch = Vec::new();
    let mut server_only = Vec::new();
    if merge_key.is_empty() {
        let set: HashSet<String> = by.iter().map(Value::to_string).collect();
        for v in merged {
            if set.contains(&v.to_string()) {
                in_patch.push(v);
            } else {
                server_only.push(v);
            }
        }
        return Ok((in_patch, server_only));
    }
    let mut ids = Vec::with_capacity(merged.len());
    for v in &merged {
        ids.push(match v {
            Value::Object(m) => match m.get(merge_key) {
                Some(id) => id.to_string(),
                None => return Err(err_no_merge_key(m, merge_key)),
            },
            other => return Err(err_bad_arg_type("map[string]interface {}", other)),
        });
    }
    let mut set = HashSet::new();
    for (i, v) in by.iter().enumerate() {
        let Value::Object(m) = v else {
            return Err(bad(format!("value for key {i} is not a map")));
        };
        if let Some(id) = m.get(merge_key) {
            set.insert(id.to_string());
        }
    }
    for (v, id) in merged.into_iter().zip(ids) {
        if set.contains(&id) {
            in_patch.push(v);
        } else {
            server_only.push(v);
        }
    }
    Ok((in_patch, server_only))
}

/// Handle the list items carrying `$patch`: `delete` removes the matching server items,
/// `replace` makes the patch's other items the whole list.
fn merge_slice_with_special_elements(
    original: Vec<Value>,
    patch: Vec<Value>,
    merge_key: &str,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut without = Vec::with_capacity(patch.len());
    let mut replace = false;
    let mut deleted: HashSet<String> = HashSet::new();
    for v in patch {
        let (m, directive) = match &v {
            Value::Object(m) => match m.get(DIRECTIVE_MARKER) {
                Some(d) => (m, d),
                None => {
                    without.push(v);
                    continue;
                }
            },
            _ => {
                without.push(v);
                continue;
            }
        };
        match directive.as_str() {
            Some("delete") => match m.get(merge_key) {
                Some(mv) => {
                    deleted.insert(mv.to_string());
                }
                None => return Err(err_no_merge_key(m, merge_key)),
            },
            Some("replace") => replace = true,
            Some("merge") => return Err(bad("merging lists cannot yet be specified in the patch")),
            _ => return Err(err_bad_patch_type(directive, m)),
        }
    }
    if replace {
        return Ok((without.into_iter().filter_map(clean).collect(), Vec::new()));
    }
    let original = if deleted.is_empty() {
        original
    } else {
        original
            .into_iter()
            .filter(|o| match o.as_object().and_then(|m| m.get(merge_key)) {
                Some(id) => !deleted.contains(&id.to_string()),
                None => true,
            })
            .collect()
    };
    Ok((original, without))
}

/// Merge each patch item into the server item with the same merge key, or append it.
fn merge_slice_without_special_elements(
    mut original: Vec<Value>,
    patch: &[Value],
    merge_key: &str,
    path: &[String],
) -> Result<Vec<Value>, PatchError> {
    let mut index = positions(&original, merge_key, Kind::Map);
    for v in patch {
        let Value::Object(m) = v else {
            return Err(err_bad_arg_type("map[string]interface {}", v));
        };
        let Some(mv) = m.get(merge_key) else {
            return Err(err_no_merge_key(m, merge_key));
        };
        let id = mv.to_string();
        match index.get(&id).copied() {
            Some(i) => {
                let Some(Value::Object(o)) = original.get_mut(i) else {
                    return Err(bad(format!("value for key {i} is not a map")));
                };
                let merged = merge_map(std::mem::take(o), m.clone(), path)?;
                *o = merged;
            }
            None => {
                if let Some(c) = clean(v.clone()) {
                    index.insert(id, original.len());
                    original.push(c);
                }
            }
        }
    }
    Ok(original)
}

/// Sort the patch items by `patch_order` and the server-only items by `server_order`, then
/// interleave them (upstream `normalizeElementOrder` + `mergeSortedSlice`): a server-only item
/// goes before a patch item only when both are on the server and it came first there.
fn normalize_element_order(
    patch_items: Vec<Value>,
    server_only: Vec<Value>,
    patch_order: &[Value],
    server_order: &[Value],
    merge_key: &str,
    kind: Kind,
) -> Result<Vec<Value>, PatchError> {
    let patch_items = normalize_slice_order(patch_items, patch_order, merge_key, kind)?;
    let server_only = normalize_slice_order(server_only, server_order, merge_key, kind)?;
    let order = positions(server_order, merge_key, kind);
    let pos = |v: &Value| ident(v, merge_key, kind).and_then(|id| order.get(&id).copied());
    let mut out = Vec::with_capacity(patch_items.len() + server_only.len());
    let mut left = server_only.into_iter().peekable();
    let mut right = patch_items.into_iter().peekable();
    loop {
        let take_left = match (left.peek(), right.peek()) {
            (None, None) => break,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(r)) => matches!((pos(l), pos(r)), (Some(li), Some(ri)) if li < ri),
        };
        let next = if take_left { left.next() } else { right.next() };
        out.extend(next);
    }
    Ok(out)
}

/// Stable-sort `to_sort` by the position of each item in `order` (upstream `normalizeSliceOrder`,
/// whose comparator calls an item missing from `order` smaller than anything).
fn normalize_slice_order(
    to_sort: Vec<Value>,
    order: &[Value],
    merge_key: &str,
    kind: Kind,
) -> Result<Vec<Value>, PatchError> {
    let mut to_sort = to_sort;
    let mut to_delete = Vec::new();
    if kind == Kind::Map {
        for v in to_sort.iter().chain(order.iter()) {
            match v {
                Value::Object(m) if m.contains_key(merge_key) => {}
                Value::Object(m) => return Err(err_no_merge_key(m, merge_key)),
                other => return Err(err_bad_arg_type("map[string]interface {}", other)),
            }
        }
        let (keep, del): (Vec<Value>, Vec<Value>) = to_sort.into_iter().partition(|v| {
            v.as_object()
                .and_then(|m| m.get(DIRECTIVE_MARKER))
                .and_then(Value::as_str)
                != Some("delete")
        });
        to_sort = keep;
        to_delete = del;
    }
    let order = positions(order, merge_key, kind);
    let mut keyed: Vec<(Option<usize>, Value)> = to_sort
        .into_iter()
        .map(|v| {
            (
                ident(&v, merge_key, kind).and_then(|id| order.get(&id).copied()),
                v,
            )
        })
        .collect();
    if keyed.iter().all(|(k, _)| k.is_some()) || keyed.len() > 2000 {
        keyed.sort_by_key(|(k, _)| k.unwrap_or(usize::MAX));
    } else {
        // Go's insertion sort with upstream's comparator, for the rare lists with unknown items.
        for i in 1..keyed.len() {
            let mut j = i;
            while j > 0 {
                let less = match (keyed[j].0, keyed[j - 1].0) {
                    (Some(a), Some(b)) => a < b,
                    _ => true,
                };
                if !less {
                    break;
                }
                keyed.swap(j, j - 1);
                j -= 1;
            }
        }
    }
    let mut out: Vec<Value> = keyed.into_iter().map(|(_, v)| v).collect();
    out.extend(to_delete);
    Ok(out)
}

/// `$retainKeys`: drop the server fields not listed; every field of the patch must be listed.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.shift_remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(list) = retain else {
        return Err(bad(ERR_RETAIN_KEYS));
    };
    let keep: HashSet<&str> = list.iter().filter_map(Value::as_str).collect();
    for (k, v) in patch.iter() {
        if v.is_null()
            || k.starts_with(DELETE_FROM_PRIMITIVE_LIST)
            || k.starts_with(SET_ELEMENT_ORDER)
        {
            continue;
        }
        if !keep.contains(k.as_str()) {
            return Err(bad(ERR_RETAIN_KEYS));
        }
    }
    original.retain(|k, _| keep.contains(k.as_str()));
    Ok(())
}

/// `$setElementOrder/<list>`: merge the list now and order it by the directive (upstream
/// `mergePatchIntoOriginal`). Removes both the directive and the list from `patch`.
fn merge_set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    path: &[String],
) -> Result<(), PatchError> {
    let keys: Vec<String> = patch
        .keys()
        .filter(|k| k.starts_with(SET_ELEMENT_ORDER))
        .cloned()
        .collect();
    for key in keys {
        let Some(directive) = patch.shift_remove(&key) else {
            continue;
        };
        let Value::Array(order) = directive else {
            return Err(err_bad_arg_type("[]interface {}", &directive));
        };
        let list_key = extract_key(&key, SET_ELEMENT_ORDER)?;
        let original_list = match original.get(&list_key) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) => return Err(err_bad_arg_type("[]interface {}", other)),
        };
        let patch_list = match patch.get(&list_key) {
            None => None,
            Some(Value::Array(a)) => Some(a.clone()),
            Some(other) => return Err(err_bad_arg_type("[]interface {}", other)),
        };
        let sub = child(path, &list_key);
        let strategy = strategy_at(&sub);
        let merge_key = match strategy {
            ListStrategy::Merge { key } => key,
            _ => "",
        };
        validate_patch_with_set_order_list(
            patch_list.as_deref().unwrap_or(&[]),
            &order,
            merge_key,
        )?;
        let orig_slice = original_list.clone().unwrap_or_default();
        let patch_slice = patch_list.clone().unwrap_or_default();
        let merged = match (original_list, patch_list) {
            (Some(o), None) => o,
            (None, Some(p)) => p.into_iter().filter_map(clean).collect(),
            (Some(o), Some(p)) => merge_slice_handler(o, p, &sub, strategy, false)?,
            (None, None) => continue,
        };
        let kind = slice_element_kind(&[&orig_slice, &patch_slice])?;
        let (patch_items, server_only) = partition(merged, &order, merge_key)?;
        let both = normalize_element_order(
            patch_items,
            server_only,
            &order,
            &orig_slice,
            merge_key,
            kind,
        )?;
        original.insert(list_key.clone(), Value::Array(both));
        patch.shift_remove(&list_key);
    }
    Ok(())
}

/// The items of the patch list must appear in `$setElementOrder` in the same relative order.
fn validate_patch_with_set_order_list(
    patch_list: &[Value],
    order: &[Value],
    merge_key: &str,
) -> Result<(), PatchError> {
    if order.is_empty() || patch_list.is_empty() {
        return Ok(());
    }
    let non_delete: Vec<&Value> = if merge_key.is_empty() {
        patch_list.iter().collect()
    } else {
        let mut out = Vec::new();
        for v in patch_list {
            let Value::Object(m) = v else {
                return Err(err_bad_arg_type("map[string]interface {}", v));
            };
            if m.get(DIRECTIVE_MARKER).and_then(Value::as_str) != Some("delete") {
                out.push(v);
            }
        }
        out
    };
    let (mut pi, mut si) = (0, 0);
    while pi < non_delete.len() && si < order.len() {
        let item = non_delete[pi];
        if item
            .as_object()
            .is_some_and(|m| m.contains_key(DIRECTIVE_MARKER))
        {
            pi += 1;
            continue;
        }
        let equal = if merge_key.is_empty() {
            item == &order[si]
        } else {
            let l = item
                .as_object()
                .ok_or_else(|| err_bad_arg_type("map[string]interface {}", item))?;
            let r = order[si]
                .as_object()
                .ok_or_else(|| err_bad_arg_type("map[string]interface {}", &order[si]))?;
            let lk = l
                .get(merge_key)
                .ok_or_else(|| err_no_merge_key(l, merge_key))?;
            let rk = r
                .get(merge_key)
                .ok_or_else(|| err_no_merge_key(r, merge_key))?;
            lk == rk
        };
        if equal {
            pi += 1;
        }
        si += 1;
    }
    if pi < non_delete.len() && si >= order.len() {
        return Err(bad(format!(
            "the order in patch list:\n{}\n doesn't match {SET_ELEMENT_ORDER} list:\n{}",
            go_fmt(&Value::Array(patch_list.to_vec())),
            go_fmt(&Value::Array(order.to_vec()))
        )));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn merge_keys_of_pod_lists() {
        assert_eq!(merge_key(&["spec", "containers"]), Some("name"));
        assert_eq!(
            merge_key(&["spec", "template", "spec", "containers"]),
            Some("name")
        );
        assert_eq!(
            merge_key(&[
                "spec",
                "jobTemplate",
                "spec",
                "template",
                "spec",
                "initContainers"
            ]),
            Some("name")
        );
        assert_eq!(
            merge_key(&["spec", "containers", "ports"]),
            Some("containerPort")
        );
        assert_eq!(
            merge_key(&["spec", "template", "spec", "containers", "env"]),
            Some("name")
        );
        assert_eq!(merge_key(&["spec", "volumes"]), Some("name"));
        assert_eq!(
            merge_key(&["spec", "containers", "volumeMounts"]),
            Some("mountPath")
        );
        assert_eq!(
            merge_key(&["spec", "containers", "volumeDevices"]),
            Some("devicePath")
        );
        assert_eq!(merge_key(&["spec", "imagePullSecrets"]), Some("name"));
        assert_eq!(merge_key(&["spec", "ephemeralContainers"]), Some("name"));
        assert_eq!(merge_key(&["spec", "hostAliases"]), Some("ip"));
        assert_eq!(
            merge_key(&["spec", "topologySpreadConstraints"]),
            Some("topologyKey")
        );
        assert_eq!(merge_key(&["spec", "resourceClaims"]), Some("name"));
        assert_eq!(merge_key(&["status", "conditions"]), Some("type"));
        assert_eq!(merge_key(&["status", "podIPs"]), Some("ip"));
    }

    #[test]
    fn merge_keys_of_other_kinds() {
        assert_eq!(merge_key(&["spec", "ports"]), Some("port"));
        assert_eq!(merge_key(&["metadata", "ownerReferences"]), Some("uid"));
        assert_eq!(
            merge_key(&["spec", "template", "metadata", "ownerReferences"]),
            Some("uid")
        );
        assert_eq!(merge_key(&["status", "addresses"]), Some("type"));
        assert_eq!(merge_key(&["secrets"]), Some("name"));
        assert_eq!(merge_key(&["data", "secrets"]), None);
    }

    #[test]
    fn strategies() {
        assert_eq!(
            list_strategy(&["metadata", "finalizers"]),
            ListStrategy::MergePrimitives
        );
        assert_eq!(
            list_strategy(&["spec", "podCIDRs"]),
            ListStrategy::MergePrimitives
        );
        assert_eq!(
            list_strategy(&["spec", "tolerations"]),
            ListStrategy::Replace
        );
        assert_eq!(
            list_strategy(&["spec", "containers", "args"]),
            ListStrategy::Replace
        );
        assert_eq!(
            list_strategy(&["spec", "containers", "command"]),
            ListStrategy::Replace
        );
        assert_eq!(
            list_strategy(&["spec", "containers", "envFrom"]),
            ListStrategy::Replace
        );
        assert_eq!(list_strategy(&["spec", "taints"]), ListStrategy::Replace);
        assert_eq!(list_strategy(&["subsets"]), ListStrategy::Replace);
        assert_eq!(
            list_strategy(&["spec", "finalizers"]),
            ListStrategy::Replace
        );
        assert_eq!(
            list_strategy(&["metadata", "managedFields"]),
            ListStrategy::Replace
        );
        assert_eq!(list_strategy(&[]), ListStrategy::Replace);
        assert_eq!(
            list_strategy(&["spec", "template", "spec", "containers"]),
            ListStrategy::Merge { key: "name" }
        );
    }

    use serde_json::json;

    fn smp(target: Value, patch: Value) -> Value {
        strategic_merge_patch(&target, &patch).unwrap()
    }

    fn smp_err(target: Value, patch: Value) -> PatchError {
        strategic_merge_patch(&target, &patch).unwrap_err()
    }

    fn deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                         "annotations": {"deployment.kubernetes.io/revision": "1"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [
                            {"name": "nginx", "image": "nginx:1.25",
                             "ports": [{"containerPort": 80, "protocol": "TCP"}],
                             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                            {"name": "sidecar", "image": "busybox", "args": ["sleep", "3600"]}
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}]
                    }
                }
            }
        })
    }

    fn containers(v: &Value) -> &Vec<Value> {
        v.pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .unwrap()
    }

    #[test]
    fn kubectl_set_image_merges_container_by_name() {
        let out = smp(
            deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.26"}]}}}}),
        );
        let cs = containers(&out);
        assert_eq!(cs.len(), 2);
        assert_eq!(cs[0]["name"], "nginx");
        assert_eq!(cs[0]["image"], "nginx:1.26");
        // Untouched fields of the merged item survive.
        assert_eq!(cs[0]["ports"][0]["containerPort"], 80);
        assert_eq!(cs[0]["env"].as_array().unwrap().len(), 2);
        assert_eq!(cs[1]["name"], "sidecar");
        assert_eq!(out["spec"]["replicas"], 1);
    }

    #[test]
    fn patching_second_item_keeps_server_order() {
        let out = smp(
            deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:2"}]}}}}),
        );
        let names: Vec<&str> = containers(&out)
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["nginx", "sidecar"]);
        assert_eq!(containers(&out)[1]["image"], "busybox:2");
        assert_eq!(containers(&out)[1]["args"], json!(["sleep", "3600"]));
    }

    #[test]
    fn new_item_without_set_element_order_goes_first_as_upstream() {
        // Upstream mergeSortedSlice puts patch items not on the server before server-only items
        // (the kubectl patch docs show the added container first).
        let out = smp(
            deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"redis","image":"redis"}]}}}}),
        );
        let names: Vec<&str> = containers(&out)
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["redis", "nginx", "sidecar"]);
    }

    #[test]
    fn kubectl_apply_patch_with_set_element_order_appends() {
        // What `kubectl apply` sends after adding a container at the end of the manifest.
        let patch = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"kind\":\"Deployment\"}\n"}},
            "spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "nginx"}, {"name": "sidecar"}, {"name": "redis"}],
                "containers": [{"name": "nginx", "image": "nginx:1.27"}, {"name": "redis", "image": "redis"}]
            }}}
        });
        let out = smp(deployment(), patch);
        let names: Vec<&str> = containers(&out)
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["nginx", "sidecar", "redis"]);
        assert_eq!(containers(&out)[0]["image"], "nginx:1.27");
        assert_eq!(
            out["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"],
            "{\"kind\":\"Deployment\"}\n"
        );
        assert_eq!(
            out["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "1"
        );
        assert!(
            out.pointer("/spec/template/spec/$setElementOrder~1containers")
                .is_none()
        );
    }

    #[test]
    fn set_element_order_reorders_server_items() {
        let patch = json!({"spec":{"template":{"spec":{
            "$setElementOrder/containers":[{"name":"sidecar"},{"name":"nginx"}]}}}});
        let out = smp(deployment(), patch);
        let names: Vec<&str> = containers(&out)
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["sidecar", "nginx"]);
    }

    #[test]
    fn kubectl_apply_removing_a_container_and_env() {
        // kubectl apply/edit delete directives inside a merged item.
        let patch = json!({"spec":{"template":{"spec":{
        "$setElementOrder/containers":[{"name":"nginx"}],
        "containers":[
            {"$setElementOrder/env":[{"name":"A"}], "env":[{"$patch":"delete","name":"B"}], "name":"nginx"},
            {"$patch":"delete","name":"sidecar"}
        ]}}}});
        let out = smp(deployment(), patch);
        let cs = containers(&out);
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0]["env"], json!([{"name": "A", "value": "1"}]));
        assert_eq!(cs[0]["image"], "nginx:1.25");
    }

    #[test]
    fn null_deletes_map_keys() {
        let out = smp(
            deployment(),
            json!({"metadata":{"labels":{"app":null,"tier":"front"}},"spec":{"strategy":{"rollingUpdate":null}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"tier": "front"}));
        assert_eq!(out["spec"]["strategy"], json!({"type": "RollingUpdate"}));
    }

    #[test]
    fn nulls_in_new_values_are_dropped() {
        let out = smp(
            json!({"metadata":{"name":"a"}}),
            json!({"metadata":{"labels":{"x":"1","y":null}},"spec":null}),
        );
        assert_eq!(out, json!({"metadata":{"name":"a","labels":{"x":"1"}}}));
    }

    #[test]
    fn kubectl_rollout_restart_adds_template_annotation() {
        let out = smp(
            deployment(),
            json!({"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2024-01-01T00:00:00Z"}}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["metadata"],
            json!({"labels":{"app":"web"},"annotations":{"kubectl.kubernetes.io/restartedAt":"2024-01-01T00:00:00Z"}})
        );
    }

    #[test]
    fn patch_replace_directive_on_template() {
        let patch = json!({"spec":{"template":{"$patch":"replace",
            "metadata":{"labels":{"app":"web","rev":"1"}},
            "spec":{"containers":[{"name":"nginx","image":"nginx:1.24"}]}}}});
        let out = smp(deployment(), patch);
        assert_eq!(
            out["spec"]["template"],
            json!({"metadata":{"labels":{"app":"web","rev":"1"}},"spec":{"containers":[{"name":"nginx","image":"nginx:1.24"}]}})
        );
    }

    #[test]
    fn patch_delete_directive_on_map() {
        let out = smp(
            deployment(),
            json!({"spec":{"strategy":{"$patch":"delete"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({}));
        // Absent from the server: nothing is added.
        let out = smp(json!({"a":1}), json!({"b":{"$patch":"delete"}}));
        assert_eq!(out, json!({"a":1}));
    }

    #[test]
    fn replace_directive_in_list_cleans_items() {
        let patch = json!({"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},
            {"name":"a","resources":{"limits":null,"requests":{"cpu":"1"}},"x":{"$patch":"delete"}}]}}}});
        let out = smp(deployment(), patch);
        assert_eq!(
            containers(&out),
            &vec![json!({"name":"a","resources":{"requests":{"cpu":"1"}}})]
        );
    }

    #[test]
    fn replace_directive_in_list_replaces_whole_list() {
        let patch = json!({"spec":{"template":{"spec":{"containers":[{"$patch":"replace"},{"name":"only","image":"x"}]}}}});
        let out = smp(deployment(), patch);
        assert_eq!(containers(&out), &vec![json!({"name":"only","image":"x"})]);
    }

    #[test]
    fn unknown_patch_directives_are_rejected() {
        let e = smp_err(deployment(), json!({"spec":{"$patch":"frobnicate"}}));
        assert_eq!(e.status_code(), 400);
        assert!(
            e.message()
                .starts_with("unknown patch type: frobnicate in map: map[$patch:frobnicate]"),
            "{e}"
        );
        let e = smp_err(
            deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"$patch":"bogus","name":"nginx"}]}}}}),
        );
        assert!(e.message().starts_with("unknown patch type: bogus"), "{e}");
        let e = smp_err(
            deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"$patch":"merge","name":"nginx"}]}}}}),
        );
        assert_eq!(
            e.message(),
            "merging lists cannot yet be specified in the patch"
        );
        let e = smp_err(deployment(), json!({"$patch": 5}));
        assert!(e.message().starts_with("unknown patch type: 5"), "{e}");
    }

    #[test]
    fn non_object_patches_are_rejected() {
        let e = smp_err(deployment(), json!([{"op":"add"}]));
        assert_eq!(e.status_code(), 400);
        assert_eq!(
            e.message(),
            "json: cannot unmarshal array into Go value of type map[string]interface {}"
        );
        assert!(strategic_merge_patch(&deployment(), &json!("x")).is_err());
        assert_eq!(smp(deployment(), Value::Null), deployment());
        assert_eq!(
            smp_err(json!([1]), json!({})).message(),
            "invalid JSON document"
        );
    }

    #[test]
    fn missing_merge_key_is_an_error() {
        let e = smp_err(
            deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"image":"x"}]}}}}),
        );
        assert_eq!(
            e.message(),
            "map: map[image:x] does not contain declared merge key: name"
        );
    }

    #[test]
    fn lists_without_strategy_replace() {
        let out = smp(
            deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"sidecar","args":["sleep","1"]}],
                "tolerations":[{"key":"k","operator":"Exists"}]}}}}),
        );
        assert_eq!(containers(&out)[1]["args"], json!(["sleep", "1"]));
        assert_eq!(
            out["spec"]["template"]["spec"]["tolerations"],
            json!([{"key":"k","operator":"Exists"}])
        );
    }

    #[test]
    fn container_ports_merge_by_container_port() {
        let out = smp(
            deployment(),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx","ports":[{"containerPort":80,"name":"http"},{"containerPort":443}]}]}}}}),
        );
        let ports = &containers(&out)[0]["ports"];
        assert_eq!(
            ports,
            &json!([{"containerPort":80,"protocol":"TCP","name":"http"},{"containerPort":443}])
        );
    }

    #[test]
    fn service_ports_merge_by_port() {
        let svc = json!({"kind":"Service","spec":{"ports":[{"port":80,"targetPort":8080,"protocol":"TCP"},{"port":443,"targetPort":8443}],"selector":{"app":"a"}}});
        let out = smp(
            svc,
            json!({"spec":{"ports":[{"port":443,"targetPort":9443}]}}),
        );
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port":80,"targetPort":8080,"protocol":"TCP"},{"port":443,"targetPort":9443}])
        );
    }

    #[test]
    fn finalizers_are_a_union_and_delete_from_primitive_list() {
        let obj = json!({"metadata":{"name":"x","finalizers":["a","b"]}});
        let out = smp(obj.clone(), json!({"metadata":{"finalizers":["b","c"]}}));
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = smp(
            obj.clone(),
            json!({"metadata":{"$deleteFromPrimitiveList/finalizers":["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        // kubectl edit removing a finalizer.
        let out = smp(
            obj.clone(),
            json!({"metadata":{"$setElementOrder/finalizers":["b"],"$deleteFromPrimitiveList/finalizers":["a"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["b"]));
        let out = smp(
            obj.clone(),
            json!({"metadata":{"$setElementOrder/finalizers":["a","c","b"],"finalizers":["c"]}}),
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "c", "b"]));
        let e = smp_err(obj, json!({"metadata":{"$deleteFromPrimitiveList":["a"]}}));
        assert_eq!(e.message(), "invalid patch format of primitive list");
    }

    #[test]
    fn null_finalizers_clear_the_list() {
        let out = smp(
            json!({"metadata":{"finalizers":["a"]}}),
            json!({"metadata":{"finalizers":null}}),
        );
        assert_eq!(out, json!({"metadata":{}}));
    }

    #[test]
    fn owner_references_merge_by_uid() {
        let obj =
            json!({"metadata":{"ownerReferences":[{"uid":"1","name":"a","kind":"ReplicaSet"}]}});
        let out = smp(
            obj,
            json!({"metadata":{"ownerReferences":[{"uid":"1","controller":true},{"uid":"2","name":"b"}]}}),
        );
        assert_eq!(
            out["metadata"]["ownerReferences"],
            json!([{"uid":"1","name":"a","kind":"ReplicaSet","controller":true},{"uid":"2","name":"b"}])
        );
    }

    #[test]
    fn status_conditions_merge_by_type() {
        let pod = json!({"status":{"phase":"Pending","conditions":[{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"False"}]}});
        let out = smp(
            pod,
            json!({"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}),
        );
        assert_eq!(out["status"]["phase"], "Running");
        assert_eq!(
            out["status"]["conditions"],
            json!([{"type":"PodScheduled","status":"True"},{"type":"Ready","status":"True"}])
        );
    }

    #[test]
    fn retain_keys_clears_unlisted_fields() {
        let out = smp(
            deployment(),
            json!({"spec":{"strategy":{"$retainKeys":["type"],"type":"Recreate"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type":"Recreate"}));
        let e = smp_err(
            deployment(),
            json!({"spec":{"strategy":{"$retainKeys":["type"],"rollingUpdate":{}}}}),
        );
        assert_eq!(e.message(), "invalid patch format of retainKeys");
        let e = smp_err(
            deployment(),
            json!({"spec":{"strategy":{"$retainKeys":"type"}}}),
        );
        assert_eq!(e.message(), "invalid patch format of retainKeys");
        // Volumes: switching a volume's source with retainKeys.
        let out = smp(
            deployment(),
            json!({"spec":{"template":{"spec":{"volumes":[{"name":"data","$retainKeys":["name","hostPath"],"hostPath":{"path":"/x"}}]}}}}),
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["volumes"],
            json!([{"name":"data","hostPath":{"path":"/x"}}])
        );
    }

    #[test]
    fn set_element_order_mismatch_is_an_error() {
        let e = smp_err(
            deployment(),
            json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"nginx"}],
                "containers":[{"name":"sidecar","image":"x"}]}}}}),
        );
        assert!(e.message().starts_with("the order in patch list:"), "{e}");
        let e = smp_err(deployment(), json!({"spec":{"$setElementOrder":[]}}));
        assert_eq!(e.message(), "invalid patch format of setElementOrder list");
    }

    #[test]
    fn type_changes_replace() {
        let out = smp(
            json!({"a":{"b":1},"c":[1],"d":"s"}),
            json!({"a":"x","c":{"k":null,"v":1},"d":[1]}),
        );
        assert_eq!(out, json!({"a":"x","c":{"v":1},"d":[1]}));
    }

    #[test]
    fn list_errors() {
        let e = smp_err(
            json!({"metadata":{"finalizers":["a"]}}),
            json!({"metadata":{"finalizers":[1]}}),
        );
        assert!(
            e.message()
                .starts_with("list element types are not identical"),
            "{e}"
        );
        let e = smp_err(
            json!({"metadata":{"finalizers":[["a"]]}}),
            json!({"metadata":{"finalizers":[["b"]]}}),
        );
        assert_eq!(
            e,
            PatchError::Unprocessable("lists of lists are not supported".into())
        );
        assert_eq!(e.status_code(), 422);
        let e = smp_err(
            json!({"metadata":{"finalizers":[{"a":1}]}}),
            json!({"metadata":{"finalizers":[{"a":2}]}}),
        );
        assert!(
            e.message()
                .starts_with("cannot merge lists without merge key"),
            "{e}"
        );
        let e = smp_err(
            json!({"spec":{"containers":["a"]}}),
            json!({"spec":{"containers":["b"]}}),
        );
        assert!(e.message().starts_with("expected a map"), "{e}");
    }

    #[test]
    fn bare_pod_paths_work() {
        let pod = json!({"spec":{"containers":[{"name":"c","image":"a","volumeMounts":[{"mountPath":"/a","name":"v"}]}]}});
        let out = smp(
            pod,
            json!({"spec":{"containers":[{"name":"c","volumeMounts":[{"mountPath":"/b","name":"w"}]}]}}),
        );
        assert_eq!(
            out["spec"]["containers"][0]["volumeMounts"],
            json!([{"mountPath":"/b","name":"w"},{"mountPath":"/a","name":"v"}])
        );
    }

    #[test]
    fn merge_patch_rfc7386() {
        let target = json!({"a":"b","c":{"d":"e","f":"g"},"l":[1,2]});
        assert_eq!(
            merge_patch(
                &target,
                &json!({"a":"z","c":{"f":null},"l":[3],"n":{"x":null,"y":1}})
            ),
            json!({"a":"z","c":{"d":"e"},"l":[3],"n":{"y":1}})
        );
        assert_eq!(merge_patch(&target, &json!(["x"])), json!(["x"]));
        assert_eq!(merge_patch(&json!("s"), &json!({"a":1})), json!({"a":1}));
        // kubectl scale (on /scale) and kubectl label/annotate.
        let scale = json!({"kind":"Scale","spec":{"replicas":1},"status":{"replicas":1}});
        assert_eq!(
            merge_patch(&scale, &json!({"spec":{"replicas":3}}))["spec"]["replicas"],
            3
        );
        let out = merge_patch(
            &deployment(),
            &json!({"metadata":{"labels":{"env":"prod","app":null}}}),
        );
        assert_eq!(out["metadata"]["labels"], json!({"env":"prod"}));
        // Key order is kept when deleting.
        let out = merge_patch(&json!({"a":1,"b":2,"c":3}), &json!({"a":null}));
        assert_eq!(serde_json::to_string(&out).unwrap(), r#"{"b":2,"c":3}"#);
    }

    #[test]
    fn json_patch_ops_and_test() {
        let d = deployment();
        let out = json_patch(
            &d,
            br#"[{"op":"test","path":"/spec/replicas","value":1},
                 {"op":"replace","path":"/spec/replicas","value":5},
                 {"op":"add","path":"/metadata/labels/x","value":"y"},
                 {"op":"remove","path":"/spec/template/spec/containers/1"},
                 {"op":"copy","from":"/metadata/name","path":"/metadata/generateName"},
                 {"op":"move","from":"/metadata/generateName","path":"/metadata/labels/copied"}]"#,
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        assert_eq!(out["metadata"]["labels"]["x"], "y");
        assert_eq!(out["metadata"]["labels"]["copied"], "web");
        assert_eq!(containers(&out).len(), 1);
        let e =
            json_patch(&d, br#"[{"op":"test","path":"/spec/replicas","value":2}]"#).unwrap_err();
        assert_eq!(e.status_code(), 422);
        let e = json_patch(&d, br#"[{"op":"remove","path":"/nope"}]"#).unwrap_err();
        assert_eq!(e.status_code(), 422);
        let e = json_patch(&d, br#"{"op":"remove"}"#).unwrap_err();
        assert_eq!(e.status_code(), 400);
        let e = json_patch(&d, br#"[{"op":"frob","path":"/a"}]"#).unwrap_err();
        assert_eq!(e.status_code(), 400);
        assert_eq!(json_patch(&d, b"[]").unwrap(), d);
    }

    #[test]
    fn json_patch_rollout_undo() {
        // kubectl rollout undo replaces the template and the annotations with a JSON patch.
        let body = serde_json::to_vec(&json!([
            {"op":"replace","path":"/spec/template","value":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"nginx","image":"nginx:1.24"}]}}},
            {"op":"replace","path":"/metadata/annotations","value":{"deployment.kubernetes.io/revision":"3"}}
        ]))
        .unwrap();
        let out = json_patch(&deployment(), &body).unwrap();
        assert_eq!(
            containers(&out),
            &vec![json!({"name":"nginx","image":"nginx:1.24"})]
        );
        assert_eq!(
            out["metadata"]["annotations"],
            json!({"deployment.kubernetes.io/revision":"3"})
        );
    }

    #[test]
    fn json_patch_operation_limit() {
        let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op":"test","path":"","value":{}}))
            .collect();
        let e = json_patch(&json!({}), &serde_json::to_vec(&ops).unwrap()).unwrap_err();
        assert_eq!(e.status_code(), 413);
    }

    #[test]
    fn large_lists_are_fast() {
        let n = 20_000;
        let orig: Vec<Value> = (0..n)
            .map(|i| json!({"name": format!("e{i}"), "value": "x"}))
            .collect();
        let patch: Vec<Value> = (0..n)
            .rev()
            .map(|i| json!({"name": format!("e{i}"), "value": "y"}))
            .collect();
        let out = smp(
            json!({"spec":{"containers":[{"name":"c","env":orig}]}}),
            json!({"spec":{"containers":[{"name":"c","env":patch}]}}),
        );
        let env = out["spec"]["containers"][0]["env"].as_array().unwrap();
        assert_eq!(env.len(), n);
        assert_eq!(env[0]["name"], format!("e{}", n - 1));
        let fins: Vec<Value> = (0..n).map(|i| json!(format!("f{i}"))).collect();
        let out = smp(
            json!({"metadata":{"finalizers":fins.clone()}}),
            json!({"metadata":{"finalizers":fins}}),
        );
        assert_eq!(out["metadata"]["finalizers"].as_array().unwrap().len(), n);
    }

    /// Every function must be total: feed a grab bag of odd patches and check nothing panics.
    #[test]
    fn odd_inputs_do_not_panic() {
        let targets = [
            deployment(),
            json!({}),
            json!({"spec":{"containers":[1,2]}}),
            json!({"spec":{"containers":[{"name":1},{"image":"x"}]},"metadata":{"finalizers":[null,{"a":1}]}}),
        ];
        let patches = [
            json!({"spec":{"containers":[{"name":1,"$patch":"delete"}]}}),
            json!({"spec":{"containers":[{"$patch":"delete"}]}}),
            json!({"spec":{"containers":[null]}}),
            json!({"spec":{"containers":[[1]]}}),
            json!({"spec":{"$setElementOrder/containers":[1,{"name":2}],"containers":[{"name":2}]}}),
            json!({"spec":{"$setElementOrder/containers":[[]],"containers":"x"}}),
            json!({"spec":{"$setElementOrder/containers":"x"}}),
            json!({"spec":{"$setElementOrder/containers":[]}}),
            json!({"spec":{"$setElementOrder/nothing":[{"a":1}]}}),
            json!({"spec":{"$setElementOrder/tolerations":[{"a":1}],"tolerations":[{"a":1},{"b":2}]}}),
            json!({"metadata":{"$setElementOrder/finalizers":[{"x":1}],"finalizers":[null]}}),
            json!({"metadata":{"$deleteFromPrimitiveList/finalizers":"x"}}),
            json!({"metadata":{"$deleteFromPrimitiveList/finalizers":[{"a":1}]}}),
            json!({"metadata":{"$deleteFromPrimitiveList/finalizers":null}}),
            json!({"metadata":{"$retainKeys":[1,null,"name"],"name":"x"}}),
            json!({"$retainKeys":[]}),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"nginx","env":[{"$patch":"delete"}]}]}}}}),
            json!({"spec":{"template":{"spec":{"containers":{"$patch":"replace"}}}}}),
            json!({"spec":{"template":{"spec":{"containers":[{"name":"new","x":{"$patch":"delete"},"y":[{"$patch":"replace"}]}]}}}}),
            json!({"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"zzz"},{"name":"nginx"}]}}}}),
        ];
        for t in &targets {
            for p in &patches {
                let _ = strategic_merge_patch(t, p);
                let _ = merge_patch(t, p);
                let _ = json_patch(t, p.to_string().as_bytes());
            }
        }
    }

    /// A tiny deterministic generator of JSON values biased towards the keys and directives the
    /// strategic merge patch cares about.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }

        fn value(&mut self, depth: u32) -> Value {
            const KEYS: &[&str] = &[
                "spec",
                "template",
                "containers",
                "initContainers",
                "env",
                "ports",
                "name",
                "containerPort",
                "metadata",
                "finalizers",
                "ownerReferences",
                "uid",
                "volumes",
                "status",
                "conditions",
                "type",
                "image",
                "$patch",
                "$retainKeys",
                "$setElementOrder/containers",
                "$setElementOrder/env",
                "$deleteFromPrimitiveList/finalizers",
                "$setElementOrder/finalizers",
                "$setElementOrder",
                "$deleteFromPrimitiveList",
                "tolerations",
                "labels",
            ];
            const STRINGS: &[&str] = &["replace", "delete", "merge", "a", "b", "c", "name", ""];
            let choice = if depth == 0 {
                self.next() % 4
            } else {
                self.next() % 7
            };
            match choice {
                0 => Value::Null,
                1 => json!(self.next() % 3),
                2 => Value::String(self.pick(STRINGS).to_string()),
                3 => Value::Bool(self.next().is_multiple_of(2)),
                4 | 5 => {
                    let n = self.next() % 4;
                    let mut m = Map::new();
                    for _ in 0..n {
                        let k = self.pick(KEYS).to_string();
                        let v = self.value(depth - 1);
                        m.insert(k, v);
                    }
                    Value::Object(m)
                }
                _ => {
                    let n = self.next() % 4;
                    Value::Array((0..n).map(|_| self.value(depth - 1)).collect())
                }
            }
        }
    }

    #[test]
    fn random_patches_do_not_panic() {
        let mut g = Gen(0x9E37_79B9_7F4A_7C15);
        let mut ok = 0;
        for _ in 0..20_000 {
            let target = match g.value(5) {
                Value::Object(m) => Value::Object(m),
                _ => deployment(),
            };
            let patch = g.value(5);
            if let Ok(out) = strategic_merge_patch(&target, &patch) {
                ok += 1;
                // Directives never leak into the result's maps.
                fn no_patch_marker(v: &Value) -> bool {
                    match v {
                        Value::Object(m) => {
                            !m.contains_key("$patch") && m.values().all(no_patch_marker)
                        }
                        Value::Array(a) => a.iter().all(no_patch_marker),
                        _ => true,
                    }
                }
                assert!(
                    no_patch_marker(&out) || !no_patch_marker(&target),
                    "{target} + {patch} = {out}"
                );
            }
            let _ = merge_patch(&target, &patch);
            let _ = json_patch(&target, patch.to_string().as_bytes());
        }
        assert!(ok > 1000, "most random patches apply ({ok})");
    }
}
