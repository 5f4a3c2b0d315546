//! Server-side apply and `metadata.managedFields`, after k8s.io/apimachinery's fieldmanager and
//! sigs.k8s.io/structured-merge-diff (SMD). Pure functions of JSON objects: no I/O, no clock (the
//! caller passes `now`), no storage. The apiserver calls [`apply`] for `application/apply-patch+yaml`
//! requests and [`update_managed_fields`] for every other write (create, update, patch). An apply
//! is recorded by [`apply`] alone: the apiserver defaults its result and stores it without calling
//! [`update_managed_fields`], so defaulted fields stay unowned, as upstream.
//!
//! A field set is a tree of path elements spelled as in `FieldsV1`: `f:name` (a field),
//! `k:{"name":"web"}` (an item of an associative list, key fields sorted), `v:"x"` (an item of a set
//! of scalars) and `i:3` (a list item by index). A node is a member of the set (`.` in `FieldsV1`,
//! or `{}` for a leaf) or only a prefix of members.
//!
//! What follows upstream: the Apply and Update algorithms (merge, prune of fields this applier
//! dropped unless someone else owns them, conflicts on `Modified ∪ Added` against the other managers,
//! `Removed` taken from everyone), manager identity (name, operation, subresource, and apiVersion
//! for Update), the fields stripped from every set (apiVersion, kind, metadata name, namespace,
//! uid, ...), the `before-first-apply` manager, the reset of `managedFields: []`, the order of the
//! entries, the conflict message and causes, and the list item order of SMD's merge.
//!
//! Simplifications, because nodeless has no OpenAPI schema walker here:
//! - The shape of a value comes from the value and the path: objects are granular maps except the
//!   atomic ones known by name (`selector`, `nodeSelector`, label selectors); lists follow
//!   [`crate::patch::list_strategy`] (merge by key = associative list, merge primitives = set,
//!   replace = atomic), with SMD's compound keys for container ports and service ports
//!   (`[containerPort|port, protocol]`, protocol defaulting to `TCP`) and topology spread
//!   constraints. Lists of custom resources are therefore atomic (upstream reads the CRD schema).
//! - Map fields whose keys are not in a schema (labels, data) are owned per key like struct
//!   fields: SMD also makes the map key itself a member when its value is a non-empty object.
//! - A `null` in the applied configuration removes the field (upstream stores null, and the typed
//!   round trip drops it); a map emptied by pruning is removed (as Go's `omitempty` would).
//! - A live list item without its key fields is identified by index (`i:N`); the applied
//!   configuration must carry the keys (an error, as upstream), and may not repeat an item.
//! - On create, Update ownership starts from an object holding the structs Go's zero value has,
//!   known by name (`metadata`, `spec`, `status`, `template`, `strategy`, ...), so they get no
//!   `.` mark; a zero-valued list (`containers: null`) is not modelled, so it gets one.
//! - The main resource never tracks `status`, the `status` subresource tracks only `status` (the
//!   upstream reset fields of the built-in kinds that have a status).
//! - No cap on the number of Update managers (upstream merges the oldest into `ancient-changes`),
//!   no version conversion of sets (a set written under another apiVersion is used as is), and no
//!   `kubectl-client-side-apply` migration.

use std::collections::{BTreeMap, HashMap, HashSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::StatusCause;
use serde_json::{Map, Value};

use crate::patch::{self, ListStrategy};

/// Why an apply failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// Fields the configuration changes are owned by other managers (HTTP 409, reason `Conflict`).
    #[error("{}", conflicts_message(.0))]
    Conflicts(Vec<Conflict>),
    /// The applied configuration is not acceptable (HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The live object's `metadata.managedFields` cannot be decoded (HTTP 500, as upstream).
    #[error("failed to decode managed fields: {0}")]
    ManagedFields(String),
}

/// A field the applier would change, owned by another manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The path as upstream prints it: `.spec.replicas`, `.spec.containers[name="web"].image`.
    pub field: String,
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub subresource: Option<String>,
}

impl Conflict {
    /// The manager as upstream's `printManager` shows it: `"kubectl" using apps/v1` for an
    /// updater, `"kubectl"` for an applier, with `with subresource "scale"` when there is one.
    pub fn manager_display(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if let Some(sub) = &self.subresource {
            s.push_str(&format!(" with subresource {sub:?}"));
        }
        if self.operation == "Update" {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

fn conflicts_message(conflicts: &[Conflict]) -> String {
    if let [c] = conflicts {
        return format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            c.manager_display(),
            c.field
        );
    }
    let mut by_manager: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for c in conflicts {
        by_manager
            .entry(c.manager_display())
            .or_default()
            .push(&c.field);
    }
    let mut lines = Vec::new();
    for (manager, fields) in by_manager {
        lines.push(format!("conflicts with {manager}:"));
        lines.extend(fields.iter().map(|f| format!("- {f}")));
    }
    format!(
        "Apply failed with {} conflicts: {}",
        conflicts.len(),
        lines.join("\n")
    )
}

impl ApplyError {
    /// The message of the `Status` the apiserver returns.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The HTTP status code of the `Status`.
    pub fn code(&self) -> u16 {
        match self {
            ApplyError::Conflicts(_) => 409,
            ApplyError::Invalid(_) => 400,
            ApplyError::ManagedFields(_) => 500,
        }
    }

    /// The `reason` of the `Status`.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Conflicts(_) => "Conflict",
            ApplyError::Invalid(_) => "BadRequest",
            ApplyError::ManagedFields(_) => "InternalError",
        }
    }

    /// `details.causes` of the `Status`: one `FieldManagerConflict` per conflicting field.
    pub fn causes(&self) -> Vec<StatusCause> {
        let ApplyError::Conflicts(conflicts) = self else {
            return Vec::new();
        };
        conflicts
            .iter()
            .map(|c| StatusCause {
                reason: Some("FieldManagerConflict".to_owned()),
                message: Some(format!("conflict with {}", c.manager_display())),
                field: Some(c.field.clone()),
            })
            .collect()
    }
}

/// A set of field paths, keyed by path elements in their `FieldsV1` spelling. Invariant: no child
/// is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

impl FieldSet {
    /// Decodes a `fieldsV1` object.
    pub fn from_fields_v1(v: &Value) -> Result<FieldSet, String> {
        let Value::Object(m) = v else {
            return Err(format!("expected an object, got {v}"));
        };
        let mut set = FieldSet {
            member: m.is_empty(),
            ..FieldSet::default()
        };
        for (k, c) in m {
            if k == "." {
                set.member = true;
            } else if ["f:", "k:", "v:", "i:"].iter().any(|p| k.starts_with(p)) {
                set.children.insert(k.clone(), FieldSet::from_fields_v1(c)?);
            } else {
                return Err(format!("unknown path element {k:?}"));
            }
        }
        Ok(set)
    }

    /// Encodes as a `fieldsV1` object (`.` first, then the children in order).
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".to_owned(), Value::Object(Map::new()));
        }
        for (k, c) in &self.children {
            m.insert(k.clone(), c.to_fields_v1());
        }
        Value::Object(m)
    }

    pub fn is_empty(&self) -> bool {
        !self.member && self.children.is_empty()
    }

    fn union(&mut self, other: &FieldSet) {
        self.member |= other.member;
        for (k, c) in &other.children {
            self.children.entry(k.clone()).or_default().union(c);
        }
    }

    fn difference(&self, other: &FieldSet) -> FieldSet {
        self.combine(other, |a, b| a && !b, true)
    }

    fn intersection(&self, other: &FieldSet) -> FieldSet {
        self.combine(other, |a, b| a && b, false)
    }

    /// Walks `self`, combining membership with `other`; children absent from `other` are kept
    /// when `keep_unmatched`.
    fn combine(
        &self,
        other: &FieldSet,
        op: fn(bool, bool) -> bool,
        keep_unmatched: bool,
    ) -> FieldSet {
        let mut out = FieldSet {
            member: op(self.member, other.member),
            children: BTreeMap::new(),
        };
        for (k, c) in &self.children {
            let d = match other.children.get(k) {
                Some(o) => c.combine(o, op, keep_unmatched),
                None if keep_unmatched => c.clone(),
                None => continue,
            };
            if !d.is_empty() {
                out.children.insert(k.clone(), d);
            }
        }
        out
    }

    /// Member paths in SMD's iteration order: members at a level, then the levels below.
    fn paths(&self, prefix: &mut Vec<String>, out: &mut Vec<String>) {
        for (k, c) in &self.children {
            if c.member {
                out.push(print_path(prefix.iter().chain([k])));
            }
        }
        for (k, c) in &self.children {
            prefix.push(k.clone());
            c.paths(prefix, out);
            prefix.pop();
        }
    }

    /// Drops the children for which `keep` is false.
    fn retain_children(&mut self, keep: impl Fn(&str) -> bool) {
        self.children.retain(|k, _| keep(k));
    }
}

/// Prints a path as SMD's `Path.String()`: `.spec.containers[name="web"].image`, `[="x"]`, `[3]`.
fn print_path<'a>(pes: impl Iterator<Item = &'a String>) -> String {
    let go = |v: &Value| match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    let mut out = String::new();
    for pe in pes {
        if let Some(f) = pe.strip_prefix("f:") {
            out.push('.');
            out.push_str(f);
        } else if let Some(k) = pe.strip_prefix("k:") {
            match serde_json::from_str::<Map<String, Value>>(k) {
                Ok(m) => {
                    let parts: Vec<String> =
                        m.iter().map(|(n, v)| format!("{n}={}", go(v))).collect();
                    out.push_str(&format!("[{}]", parts.join(",")));
                }
                Err(_) => out.push_str(&format!("[{k}]")),
            }
        } else if let Some(v) = pe.strip_prefix("v:") {
            let v = serde_json::from_str(v).map_or_else(|_| v.to_owned(), |v| go(&v));
            out.push_str(&format!("[={v}]"));
        } else if let Some(i) = pe.strip_prefix("i:") {
            out.push_str(&format!("[{i}]"));
        }
    }
    out
}

/// The objects SMD treats as atomic (`+structType=atomic` LabelSelector, `+mapType=atomic`
/// selectors), by field name.
const ATOMIC_OBJECTS: &[&str] = &[
    "selector",
    "nodeSelector",
    "podSelector",
    "namespaceSelector",
    "labelSelector",
];

/// How a value is walked.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// A scalar, null, an atomic list or an atomic object: owned as a whole.
    Leaf,
    /// An object whose fields are owned one by one.
    Fields,
    /// An associative list: key fields (sorted) and their defaults.
    Keyed(Vec<(&'static str, Option<&'static str>)>),
    /// A set of scalars.
    Set,
}

fn shape(names: &[String], v: &Value) -> Shape {
    match v {
        Value::Object(_)
            if names
                .last()
                .is_some_and(|n| ATOMIC_OBJECTS.contains(&n.as_str())) =>
        {
            Shape::Leaf
        }
        Value::Object(_) => Shape::Fields,
        Value::Array(_) => {
            let path: Vec<&str> = names.iter().map(String::as_str).collect();
            match patch::list_strategy(&path) {
                ListStrategy::Merge { key } => Shape::Keyed(list_keys(&path, key)),
                ListStrategy::MergePrimitives => Shape::Set,
                ListStrategy::Replace => Shape::Leaf,
            }
        }
        _ => Shape::Leaf,
    }
}

/// SMD's `x-kubernetes-list-map-keys` where they differ from the strategic merge key.
fn list_keys(path: &[&str], key: &'static str) -> Vec<(&'static str, Option<&'static str>)> {
    let name = path.last().copied().unwrap_or_default();
    let mut keys = match (name, key) {
        ("ports", "containerPort") | ("ports", "port") => {
            vec![(key, None), ("protocol", Some("TCP"))]
        }
        ("topologySpreadConstraints", "topologyKey") => {
            vec![(key, None), ("whenUnsatisfiable", None)]
        }
        _ => vec![(key, None)],
    };
    keys.sort_by_key(|k| k.0);
    keys
}

fn path_str(names: &[String]) -> String {
    names.iter().map(|n| format!(".{n}")).collect()
}

/// The path element of each item of a list value (empty for a non-list). In `strict` mode (the
/// applied configuration) an item without its keys or a repeated item is an error; otherwise it
/// is identified by index, and a repeated item after the first is left out.
fn index_list<'a>(
    sh: &Shape,
    list: Option<&'a Value>,
    names: &[String],
    strict: bool,
) -> Result<Vec<(String, &'a Value)>, ApplyError> {
    let Some(Value::Array(items)) = list else {
        return Ok(Vec::new());
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let pe = match item_pe(sh, item) {
            Ok(pe) => pe,
            Err(field) if strict => {
                return Err(ApplyError::Invalid(format!(
                    "{}: element {i}: associative list with keys has an element that omits key field {field:?}",
                    path_str(names)
                )));
            }
            Err(_) => format!("i:{i}"),
        };
        if !seen.insert(pe.clone()) {
            if strict {
                return Err(ApplyError::Invalid(format!(
                    "{}: duplicate entries for key {}",
                    path_str(names),
                    print_path([pe].iter())
                )));
            }
            continue;
        }
        out.push((pe, item));
    }
    Ok(out)
}

/// The path element of a list item, or the key field it lacks.
fn item_pe(sh: &Shape, item: &Value) -> Result<String, &'static str> {
    match sh {
        Shape::Keyed(keys) => {
            let mut key = Map::new();
            for (name, default) in keys {
                let v = match (item.get(name), default) {
                    (Some(v), _) => v.clone(),
                    (None, Some(d)) => Value::String((*d).to_owned()),
                    (None, None) => return Err(name),
                };
                key.insert((*name).to_owned(), v);
            }
            Ok(format!("k:{}", Value::Object(key)))
        }
        _ => Ok(format!("v:{item}")),
    }
}

/// SMD's `ToFieldSet`: leaves, list items, and fields whose value is null or an empty object.
fn field_set(v: &Value, names: &mut Vec<String>, strict: bool) -> Result<FieldSet, ApplyError> {
    let mut out = FieldSet::default();
    match (shape(names, v), v) {
        (Shape::Fields, Value::Object(m)) => {
            for (k, c) in m {
                names.push(k.clone());
                let child = field_set(c, names, strict);
                names.pop();
                let mut child = child?;
                child.member |= c.is_null() || c.as_object().is_some_and(Map::is_empty);
                if !child.is_empty() {
                    out.children.insert(format!("f:{k}"), child);
                }
            }
        }
        (sh @ (Shape::Keyed(_) | Shape::Set), _) => {
            for (pe, item) in index_list(&sh, Some(v), names, strict)? {
                let mut child = match sh {
                    Shape::Keyed(_) => field_set(item, names, strict)?,
                    _ => FieldSet::default(),
                };
                child.member = true;
                out.children.insert(pe, child);
            }
        }
        _ => out.member = true,
    }
    Ok(out)
}

/// SMD's `Compare`: what changed from `l` to `r`.
#[derive(Debug, Default)]
struct Comparison {
    added: FieldSet,
    modified: FieldSet,
    removed: FieldSet,
}

impl Comparison {
    fn attach(&mut self, pe: String, sub: Comparison) {
        for (mine, theirs) in [
            (&mut self.added, sub.added),
            (&mut self.modified, sub.modified),
            (&mut self.removed, sub.removed),
        ] {
            if !theirs.is_empty() {
                mine.children.insert(pe.clone(), theirs);
            }
        }
    }

    /// `Modified ∪ Added`: what the writer now owns and takes from the others.
    fn changed(&self) -> FieldSet {
        let mut s = self.modified.clone();
        s.union(&self.added);
        s
    }

    fn filter(&mut self, f: impl Fn(&mut FieldSet)) {
        f(&mut self.added);
        f(&mut self.modified);
        f(&mut self.removed);
    }
}

fn compare(l: Option<&Value>, r: Option<&Value>, names: &mut Vec<String>) -> Comparison {
    let mut out = Comparison::default();
    let Some(sample) = r.or(l) else {
        return out;
    };
    let sh = shape(names, sample);
    let empty = |v: Option<&Value>| match v {
        None => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    let same_kind = match (l, r) {
        (Some(a), Some(b)) => a.is_object() == b.is_object() && a.is_array() == b.is_array(),
        _ => true,
    };
    if sh == Shape::Leaf || !same_kind || (empty(l) && empty(r)) {
        match (l, r) {
            (None, Some(_)) => out.added.member = true,
            (Some(_), None) => out.removed.member = true,
            (Some(a), Some(b)) if a != b => out.modified.member = true,
            _ => {}
        }
        return out;
    }
    if sh == Shape::Fields {
        let (lm, rm) = (l.and_then(Value::as_object), r.and_then(Value::as_object));
        let keys = lm.into_iter().chain(rm).flat_map(|m| m.keys());
        let mut done = HashSet::new();
        for k in keys {
            if !done.insert(k) {
                continue;
            }
            names.push(k.clone());
            let sub = compare(lm.and_then(|m| m.get(k)), rm.and_then(|m| m.get(k)), names);
            names.pop();
            out.attach(format!("f:{k}"), sub);
        }
    } else {
        // Live values are never rejected: both sides are indexed leniently.
        let li = index_list(&sh, l, names, false).unwrap_or_default();
        let ri = index_list(&sh, r, names, false).unwrap_or_default();
        let lmap: HashMap<&str, &Value> = li.iter().map(|(pe, v)| (pe.as_str(), *v)).collect();
        let rmap: HashMap<&str, &Value> = ri.iter().map(|(pe, v)| (pe.as_str(), *v)).collect();
        for (pe, rv) in &ri {
            let sub = compare(lmap.get(pe.as_str()).copied(), Some(rv), names);
            out.attach(pe.clone(), sub);
        }
        for (pe, lv) in li.iter().filter(|(pe, _)| !rmap.contains_key(pe.as_str())) {
            let sub = compare(Some(lv), None, names);
            out.attach(pe.clone(), sub);
        }
    }
    if l.is_none() {
        out.added.member = true;
    } else if r.is_none() {
        out.removed.member = true;
    }
    out
}

/// SMD's `Merge`: the configuration `r` over the live value `l`.
fn merge(l: Option<&Value>, r: &Value, names: &mut Vec<String>) -> Result<Value, ApplyError> {
    match (shape(names, r), r) {
        (Shape::Fields, Value::Object(rm)) => {
            let mut out = match l {
                Some(Value::Object(lm)) => lm.clone(),
                _ => Map::new(),
            };
            for (k, rv) in rm {
                if rv.is_null() {
                    out.shift_remove(k);
                    continue;
                }
                names.push(k.clone());
                let merged = merge(out.get(k), rv, names);
                names.pop();
                out.insert(k.clone(), merged?);
            }
            Ok(Value::Object(out))
        }
        (sh @ (Shape::Keyed(_) | Shape::Set), _) => merge_list(&sh, l, r, names),
        _ => Ok(r.clone()),
    }
}

/// SMD's list merge: the configuration's order for the items it holds, live-only items kept
/// where they were relative to the shared ones.
fn merge_list(
    sh: &Shape,
    l: Option<&Value>,
    r: &Value,
    names: &mut Vec<String>,
) -> Result<Value, ApplyError> {
    let rhs = index_list(sh, Some(r), names, true)?;
    let lhs = index_list(sh, l, names, false)?;
    let lmap: HashMap<&str, &Value> = lhs.iter().map(|(pe, v)| (pe.as_str(), *v)).collect();
    let rmap: HashMap<&str, &Value> = rhs.iter().map(|(pe, v)| (pe.as_str(), *v)).collect();
    let mut shared = rhs
        .iter()
        .map(|(pe, _)| pe.as_str())
        .filter(|pe| lmap.contains_key(pe));
    let mut next_shared = shared.next();
    let mut merged_rhs = HashSet::new();
    let mut out = Vec::with_capacity(lhs.len().max(rhs.len()));
    let item = |pe: &str, rv: &Value, names: &mut Vec<String>| -> Result<Value, ApplyError> {
        match sh {
            Shape::Keyed(_) => merge(lmap.get(pe).copied(), rv, names),
            _ => Ok(rv.clone()),
        }
    };
    let (mut li, mut ri) = (0, 0);
    while li < lhs.len() || ri < rhs.len() {
        if let (Some((lpe, _)), Some((rpe, rv))) = (lhs.get(li), rhs.get(ri)) {
            if lpe == rpe {
                merged_rhs.insert(lpe.as_str());
                out.push(item(lpe, rv, names)?);
                li += 1;
                ri += 1;
                next_shared = shared.next();
                continue;
            }
            if rmap.contains_key(lpe.as_str()) && next_shared.is_some_and(|n| n != lpe) {
                li += 1;
                continue;
            }
        }
        if let Some((lpe, lv)) = lhs.get(li) {
            if !rmap.contains_key(lpe.as_str()) {
                out.push((*lv).clone());
                li += 1;
                continue;
            }
            if merged_rhs.contains(lpe.as_str()) {
                li += 1;
                continue;
            }
        }
        if let Some((rpe, rv)) = rhs.get(ri) {
            merged_rhs.insert(rpe.as_str());
            out.push(item(rpe, rv, names)?);
            ri += 1;
            if next_shared == Some(rpe.as_str()) {
                next_shared = shared.next();
            }
        }
    }
    Ok(Value::Array(out))
}

/// SMD's prune: removes from `v` what `last` (the applier's previous set) holds and no manager
/// owns any more.
fn prune(v: &mut Value, last: &FieldSet, owned: Option<&FieldSet>, names: &mut Vec<String>) {
    // A field stays while anything under it is owned (SMD's `EnsureNamedFieldsAreMembers`); a
    // list item stays only while someone owns the item itself.
    let gone = |pe: &str, item: bool| {
        last.children.get(pe).is_some_and(|c| c.member)
            && owned
                .and_then(|o| o.children.get(pe))
                .is_none_or(|o| item && !o.member)
    };
    let below = |pe: &str| {
        (
            last.children.get(pe),
            owned.and_then(|o| o.children.get(pe)),
        )
    };
    match (shape(names, v), v) {
        (Shape::Fields, Value::Object(m)) => {
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let pe = format!("f:{k}");
                if gone(&pe, false) {
                    m.shift_remove(&k);
                    continue;
                }
                let (Some(last_c), owned_c) = below(&pe) else {
                    continue;
                };
                let Some(c) = m.get_mut(&k) else {
                    continue;
                };
                let was_empty = c.as_object().is_some_and(Map::is_empty);
                names.push(k.clone());
                prune(c, last_c, owned_c, names);
                names.pop();
                if !was_empty
                    && c.as_object().is_some_and(Map::is_empty)
                    && !owned_c.is_some_and(|o| o.member)
                {
                    m.shift_remove(&k);
                }
            }
        }
        (sh @ (Shape::Keyed(_) | Shape::Set), Value::Array(items)) => {
            let mut kept = Vec::with_capacity(items.len());
            for (i, mut item) in std::mem::take(items).into_iter().enumerate() {
                let pe = item_pe(&sh, &item).unwrap_or_else(|_| format!("i:{i}"));
                if gone(&pe, true) {
                    continue;
                }
                if let (Shape::Keyed(_), (Some(last_c), owned_c)) = (&sh, below(&pe)) {
                    prune(&mut item, last_c, owned_c, names);
                }
                kept.push(item);
            }
            *items = kept;
        }
        _ => {}
    }
}

/// The fields no manager ever owns (upstream `stripMeta`): exact paths, not their children.
fn strip(set: &mut FieldSet) {
    const META: &[&str] = &[
        "name",
        "namespace",
        "creationTimestamp",
        "selfLink",
        "uid",
        "clusterName",
        "generation",
        "managedFields",
        "resourceVersion",
    ];
    for top in ["f:apiVersion", "f:kind"] {
        if let Some(c) = set.children.get_mut(top) {
            c.member = false;
        }
    }
    if let Some(meta) = set.children.get_mut("f:metadata") {
        meta.member = false;
        for f in META {
            if let Some(c) = meta.children.get_mut(&format!("f:{f}")) {
                c.member = false;
            }
        }
        meta.children.retain(|_, c| !c.is_empty());
    }
    set.children.retain(|_, c| !c.is_empty());
}

/// The part of the object a request on `subresource` may own: everything but `status` on the main
/// resource (and other subresources), only `status` on the status subresource.
fn scope(set: &mut FieldSet, subresource: Option<&str>) {
    let status_only = subresource == Some("status");
    set.retain_children(|k| (k == "f:status") == status_only);
}

/// A decoded `metav1.ManagedFieldsEntry`.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<String>,
    subresource: Option<String>,
    set: FieldSet,
}

impl Entry {
    /// Upstream manager identity: the apiVersion counts for updaters only.
    fn is(
        &self,
        manager: &str,
        operation: &str,
        api_version: &str,
        subresource: Option<&str>,
    ) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource.as_deref() == subresource
            && (operation == "Apply" || self.api_version == api_version)
    }

    fn new(manager: &str, operation: &str, api_version: &str, subresource: Option<&str>) -> Entry {
        Entry {
            manager: manager.to_owned(),
            operation: operation.to_owned(),
            api_version: api_version.to_owned(),
            time: None,
            subresource: subresource.map(str::to_owned),
            set: FieldSet::default(),
        }
    }
}

/// Takes `metadata.managedFields` out of an object.
fn take_managed_fields(obj: &mut Value) -> Option<Value> {
    obj.get_mut("metadata")?
        .as_object_mut()?
        .shift_remove("managedFields")
}

fn decode_entries(v: Option<&Value>) -> Result<Vec<Entry>, String> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(format!("expected a list, got {other}")),
    };
    let mut out: Vec<Entry> = Vec::new();
    for item in items {
        let Value::Object(m) = item else {
            return Err(format!("expected an object, got {item}"));
        };
        let s = |k: &str| m.get(k).and_then(Value::as_str).map(str::to_owned);
        let set = match (s("fieldsType").as_deref(), m.get("fieldsV1")) {
            (_, None | Some(Value::Null)) => FieldSet::default(),
            (Some("FieldsV1"), Some(f)) => FieldSet::from_fields_v1(f)?,
            (t, _) => return Err(format!("invalid fieldsType {t:?}")),
        };
        let mut e = Entry::new(
            &s("manager").unwrap_or_default(),
            &s("operation").unwrap_or_default(),
            &s("apiVersion").unwrap_or_default(),
            s("subresource").filter(|s| !s.is_empty()).as_deref(),
        );
        e.time = s("time");
        e.set = set;
        match out.iter_mut().find(|o| {
            o.is(
                &e.manager,
                &e.operation,
                &e.api_version,
                e.subresource.as_deref(),
            )
        }) {
            Some(o) => o.set.union(&e.set),
            None => out.push(e),
        }
    }
    Ok(out)
}

/// Writes the entries (those with fields, in upstream order) into `metadata.managedFields`.
fn encode_entries(obj: &mut Value, mut entries: Vec<Entry>) {
    entries.retain(|e| !e.set.is_empty());
    let seconds = |e: &Entry| {
        e.time
            .as_deref()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_second())
    };
    entries.sort_by(|p, q| {
        (
            p.operation.as_str(),
            seconds(p),
            p.manager.as_str(),
            p.api_version.as_str(),
            p.subresource.as_deref(),
        )
            .cmp(&(
                q.operation.as_str(),
                seconds(q),
                q.manager.as_str(),
                q.api_version.as_str(),
                q.subresource.as_deref(),
            ))
    });
    let list: Vec<Value> = entries
        .into_iter()
        .map(|e| {
            let mut m = Map::new();
            m.insert("manager".into(), e.manager.into());
            m.insert("operation".into(), e.operation.into());
            m.insert("apiVersion".into(), e.api_version.into());
            if let Some(t) = e.time {
                m.insert("time".into(), t.into());
            }
            m.insert("fieldsType".into(), "FieldsV1".into());
            m.insert("fieldsV1".into(), e.set.to_fields_v1());
            if let Some(s) = e.subresource {
                m.insert("subresource".into(), s.into());
            }
            Value::Object(m)
        })
        .collect();
    let Some(obj) = obj.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(meta) = meta.as_object_mut() else {
        return;
    };
    if list.is_empty() {
        meta.shift_remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// Server-side apply of `config` (an `application/apply-patch+yaml` body, as JSON) by `manager`
/// to the main resource. `live` is the stored object (`None` creates it), `now` the RFC 3339 time
/// recorded in the manager's entry. Returns the new object with its `metadata.managedFields`;
/// an apply that changes nothing returns `live` unchanged.
pub fn apply(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    apply_to(live, config, manager, None, force, now)
}

/// [`apply`] on a subresource (`Some("status")` applies only `status`).
pub fn apply_to(
    live: Option<&Value>,
    config: &Value,
    manager: &str,
    subresource: Option<&str>,
    force: bool,
    now: &str,
) -> Result<Value, ApplyError> {
    let Value::Object(cfg) = config else {
        return Err(ApplyError::Invalid(
            "the applied configuration must be an object".into(),
        ));
    };
    if cfg
        .get("metadata")
        .and_then(|m| m.get("managedFields"))
        .is_some_and(|f| !f.is_null())
    {
        return Err(ApplyError::Invalid(
            "metadata.managedFields must be nil".into(),
        ));
    }
    let api_version = cfg
        .get("apiVersion")
        .or_else(|| live.and_then(|l| l.get("apiVersion")))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            ApplyError::Invalid("apiVersion must be set in the applied configuration".into())
        })?;
    let mut live_obj = live.cloned().unwrap_or_else(|| Value::Object(Map::new()));
    if !live_obj.is_object() {
        return Err(ApplyError::Invalid(
            "the live object is not an object".into(),
        ));
    }
    let old_entries = decode_entries(take_managed_fields(&mut live_obj).as_ref())
        .map_err(ApplyError::ManagedFields)?;
    let mut entries = old_entries.clone();
    if live.is_some() && entries.is_empty() {
        // Upstream gives the fields of an object that never had managedFields to this manager.
        let mut before = Entry::new("before-first-apply", "Update", api_version, subresource);
        before.set = field_set(&live_obj, &mut Vec::new(), false)?;
        strip(&mut before.set);
        scope(&mut before.set, subresource);
        entries.push(before);
    }

    // The part of the configuration this request may set.
    let mut cfg = cfg.clone();
    match subresource {
        Some("status") => cfg.retain(|k, _| ["apiVersion", "kind", "status"].contains(&k.as_str())),
        _ => {
            cfg.shift_remove("status");
        }
    }
    let cfg = Value::Object(cfg);
    let mut set = field_set(&cfg, &mut Vec::new(), true)?;
    strip(&mut set);
    scope(&mut set, subresource);
    let mut merged = merge(Some(&live_obj), &cfg, &mut Vec::new())?;

    let me = match entries
        .iter()
        .position(|e| e.is(manager, "Apply", api_version, subresource))
    {
        Some(i) => i,
        None => {
            entries.push(Entry::new(manager, "Apply", api_version, subresource));
            entries.len() - 1
        }
    };
    let Some(mine) = entries.get_mut(me) else {
        return Err(ApplyError::Invalid(
            "internal: missing manager entry".into(),
        ));
    };
    let last = std::mem::replace(&mut mine.set, set);
    mine.api_version = api_version.to_owned();
    if !last.is_empty() {
        let mut owned = FieldSet::default();
        entries.iter().for_each(|e| owned.union(&e.set));
        prune(&mut merged, &last, Some(&owned), &mut Vec::new());
    }

    let mut cmp = compare(Some(&live_obj), Some(&merged), &mut Vec::new());
    cmp.filter(|s| scope(s, subresource));
    let changed = cmp.changed();
    let mut conflicts = Vec::new();
    for (_, e) in entries.iter_mut().enumerate().filter(|(i, _)| *i != me) {
        let taken = e.set.intersection(&changed);
        let mut fields = Vec::new();
        taken.paths(&mut Vec::new(), &mut fields);
        conflicts.extend(fields.into_iter().map(|field| Conflict {
            field,
            manager: e.manager.clone(),
            operation: e.operation.clone(),
            api_version: e.api_version.clone(),
            subresource: e.subresource.clone(),
        }));
        e.set = e.set.difference(&taken).difference(&cmp.removed);
    }
    if !force && !conflicts.is_empty() {
        conflicts.sort_by_key(|c| c.manager_display());
        return Err(ApplyError::Conflicts(conflicts));
    }
    if let Some(mine) = entries.get_mut(me)
        && (merged != live_obj || mine.time.is_none())
    {
        mine.time = Some(now.to_owned());
    }
    entries.retain(|e| !e.set.is_empty());
    if let Some(live) = live
        && entries == old_entries
        && merged == live_obj
    {
        return Ok(live.clone());
    }
    encode_entries(&mut merged, entries);
    Ok(merged)
}

/// The non-pointer structs that Go's zero value of `v`'s kind already holds, so that a create
/// does not mark them with `.` (upstream compares with the zero value).
fn zero_structs(v: &Value) -> Value {
    const STRUCTS: &[&str] = &[
        "metadata",
        "spec",
        "status",
        "template",
        "jobTemplate",
        "strategy",
        "updateStrategy",
    ];
    let Value::Object(m) = v else {
        return Value::Object(Map::new());
    };
    let zero = m
        .iter()
        .filter(|(k, c)| c.is_object() && STRUCTS.contains(&k.as_str()))
        .map(|(k, c)| (k.clone(), zero_structs(c)))
        .collect();
    Value::Object(zero)
}

/// True for the `managedFields` values that reset the tracking: `[]` and `[{}]`.
fn is_reset(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Array(a)) => match a.as_slice() {
            [] => true,
            [Value::Object(m)] => m.is_empty(),
            _ => false,
        },
        _ => false,
    }
}

/// Records an ordinary write (create when `old` is `None`, update, patch) in `new`'s
/// `metadata.managedFields`: the fields that changed from `old` to `new` become `manager`'s
/// (with `operation`, normally `"Update"`), and leave every other manager's set. `managedFields`
/// sent in `new` replace the tracking (on the main resource only); `[]` or `[{}]` clear it.
pub fn update_managed_fields(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    operation: &str,
    subresource: Option<&str>,
    api_version: &str,
    now: &str,
) {
    if !new.is_object() {
        return;
    }
    let new_fields = take_managed_fields(new);
    let mut old_obj = match old {
        Some(o @ Value::Object(_)) => o.clone(),
        _ => zero_structs(new),
    };
    let old_fields = take_managed_fields(&mut old_obj);
    let from_old = || decode_entries(old_fields.as_ref()).unwrap_or_default();
    let mut entries = if subresource.is_some() {
        from_old()
    } else if is_reset(new_fields.as_ref()) {
        Vec::new()
    } else {
        match decode_entries(new_fields.as_ref()) {
            Ok(e) if !e.is_empty() => e,
            _ => from_old(),
        }
    };

    let mut cmp = compare(Some(&old_obj), Some(new), &mut Vec::new());
    cmp.filter(|s| scope(s, subresource));
    let mut changed = cmp.changed();
    strip(&mut changed);
    for e in entries.iter_mut() {
        e.set = e.set.difference(&changed).difference(&cmp.removed);
    }
    let me = match entries
        .iter()
        .position(|e| e.is(manager, operation, api_version, subresource))
    {
        Some(i) => i,
        None => {
            entries.push(Entry::new(manager, operation, api_version, subresource));
            entries.len() - 1
        }
    };
    if let Some(mine) = entries.get_mut(me)
        && !changed.is_empty()
    {
        mine.set.union(&changed);
        mine.time = Some(now.to_owned());
        mine.api_version = api_version.to_owned();
    }
    encode_entries(new, entries);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    const T1: &str = "2026-01-01T00:00:00Z";
    const T2: &str = "2026-01-01T00:01:00Z";
    const T3: &str = "2026-01-01T00:02:00Z";

    fn deployment(image: &str, replicas: i64) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": image, "ports": [{"containerPort": 80}]}]}
                }
            }
        })
    }

    /// What the store adds to a created object.
    fn stored(mut obj: Value) -> Value {
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("uid".into(), json!("u-1"));
        meta.insert("resourceVersion".into(), json!("7"));
        meta.insert("creationTimestamp".into(), json!(T1));
        obj
    }

    fn entry<'a>(obj: &'a Value, manager: &str, operation: &str) -> Option<&'a Value> {
        obj["metadata"]["managedFields"]
            .as_array()?
            .iter()
            .find(|e| e["manager"] == manager && e["operation"] == operation)
    }

    fn managers(obj: &Value) -> Vec<String> {
        obj["metadata"]["managedFields"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        format!(
                            "{}/{}",
                            e["manager"].as_str().unwrap(),
                            e["operation"].as_str().unwrap()
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn server_side_apply_creates_then_reapplies_a_changed_image() {
        let created = apply(None, &deployment("nginx:1", 1), "kubectl", false, T1).unwrap();
        assert_eq!(
            created["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1"
        );
        let e = entry(&created, "kubectl", "Apply").unwrap();
        assert_eq!(
            serde_json::to_string(e).unwrap(),
            serde_json::to_string(&json!({
                "manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1", "time": T1,
                "fieldsType": "FieldsV1",
                "fieldsV1": {
                    "f:metadata": {"f:labels": {"f:app": {}}},
                    "f:spec": {
                        "f:replicas": {},
                        "f:selector": {},
                        "f:template": {
                            "f:metadata": {"f:labels": {"f:app": {}}},
                            "f:spec": {"f:containers": {"k:{\"name\":\"web\"}": {
                                ".": {}, "f:image": {}, "f:name": {},
                                "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}
                            }}}
                        }
                    }
                }
            }))
            .unwrap()
        );
        let live = stored(created);
        let updated = apply(Some(&live), &deployment("nginx:2", 1), "kubectl", false, T2).unwrap();
        assert_eq!(
            updated["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:2"
        );
        assert_eq!(updated["metadata"]["uid"], "u-1");
        assert_eq!(managers(&updated), ["kubectl/Apply"]);
        let e = entry(&updated, "kubectl", "Apply").unwrap();
        assert_eq!(e["time"], T2);
        assert_eq!(
            e["fieldsV1"],
            entry(&live, "kubectl", "Apply").unwrap()["fieldsV1"]
        );
    }

    #[test]
    fn an_apply_that_changes_nothing_returns_the_live_object() {
        let live = stored(apply(None, &deployment("nginx:1", 2), "kubectl", false, T1).unwrap());
        let again = apply(Some(&live), &deployment("nginx:1", 2), "kubectl", false, T2).unwrap();
        assert_eq!(
            serde_json::to_string(&again).unwrap(),
            serde_json::to_string(&live).unwrap()
        );
    }

    fn scaled_by(live: &Value, manager: &str, subresource: Option<&str>, replicas: i64) -> Value {
        let mut new = live.clone();
        new["spec"]["replicas"] = json!(replicas);
        update_managed_fields(
            Some(live),
            &mut new,
            manager,
            "Update",
            subresource,
            "apps/v1",
            T2,
        );
        new
    }

    #[test]
    fn apply_conflicts_with_a_scale_and_force_takes_the_field() {
        let live = stored(apply(None, &deployment("nginx:1", 1), "kubectl", false, T1).unwrap());
        let scaled = scaled_by(&live, "kubectl", Some("scale"), 3);
        assert_eq!(managers(&scaled), ["kubectl/Apply", "kubectl/Update"]);
        let scale = entry(&scaled, "kubectl", "Update").unwrap();
        assert_eq!(scale["subresource"], "scale");
        assert_eq!(scale["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
        let applier = &entry(&scaled, "kubectl", "Apply").unwrap()["fieldsV1"];
        assert!(applier["f:spec"].get("f:replicas").is_none());

        let err = apply(
            Some(&scaled),
            &deployment("nginx:1", 1),
            "kubectl",
            false,
            T3,
        )
        .unwrap_err();
        let ApplyError::Conflicts(conflicts) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].field, ".spec.replicas");
        assert_eq!(conflicts[0].manager, "kubectl");
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
        );
        assert_eq!((err.code(), err.reason()), (409, "Conflict"));
        assert_eq!(
            err.causes(),
            [StatusCause {
                reason: Some("FieldManagerConflict".into()),
                message: Some(
                    "conflict with \"kubectl\" with subresource \"scale\" using apps/v1".into()
                ),
                field: Some(".spec.replicas".into()),
            }]
        );

        // Applying the value the object already has is no conflict: both own it.
        let shared = apply(
            Some(&scaled),
            &deployment("nginx:1", 3),
            "kubectl",
            false,
            T3,
        )
        .unwrap();
        assert_eq!(managers(&shared), ["kubectl/Apply", "kubectl/Update"]);

        let forced = apply(
            Some(&scaled),
            &deployment("nginx:1", 1),
            "kubectl",
            true,
            T3,
        )
        .unwrap();
        assert_eq!(forced["spec"]["replicas"], 1);
        assert_eq!(managers(&forced), ["kubectl/Apply"]);
        assert_eq!(
            entry(&forced, "kubectl", "Apply").unwrap()["fieldsV1"]["f:spec"]["f:replicas"],
            json!({})
        );
    }

    #[test]
    fn conflict_message_of_an_updater_without_subresource() {
        let live = stored(apply(None, &deployment("nginx:1", 1), "kubectl", false, T1).unwrap());
        let scaled = scaled_by(&live, "kubectl-client-side-apply", None, 3);
        let err = apply(
            Some(&scaled),
            &deployment("nginx:1", 1),
            "kubectl",
            false,
            T3,
        )
        .unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using apps/v1: .spec.replicas"
        );
    }

    #[test]
    fn conflicts_with_several_managers_are_grouped() {
        let live = stored(apply(None, &deployment("nginx:1", 1), "kubectl", false, T1).unwrap());
        let scaled = scaled_by(&live, "hpa", None, 3);
        let mut edited = scaled.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("nginx:9");
        edited["metadata"]["labels"]["app"] = json!("other");
        update_managed_fields(
            Some(&scaled),
            &mut edited,
            "editor",
            "Update",
            None,
            "apps/v1",
            T2,
        );
        let err = apply(
            Some(&edited),
            &deployment("nginx:1", 1),
            "kubectl",
            false,
            T3,
        )
        .unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 3 conflicts: conflicts with \"editor\" using apps/v1:\n- .metadata.labels.app\n\
             - .spec.template.spec.containers[name=\"web\"].image\nconflicts with \"hpa\" using apps/v1:\n- .spec.replicas"
        );
        assert_eq!(err.causes().len(), 3);
    }

    #[test]
    fn fields_dropped_from_the_configuration_are_removed() {
        let mut config = deployment("nginx:1", 2);
        config["metadata"]["labels"]["tier"] = json!("front");
        config["metadata"]["annotations"] = json!({"note": "x"});
        let live = stored(apply(None, &config, "kubectl", false, T1).unwrap());
        assert_eq!(live["metadata"]["labels"]["tier"], "front");

        let mut smaller = deployment("nginx:1", 2);
        smaller["spec"]
            .as_object_mut()
            .unwrap()
            .shift_remove("replicas");
        let out = apply(Some(&live), &smaller, "kubectl", false, T2).unwrap();
        assert_eq!(out["metadata"]["labels"], json!({"app": "web"}));
        assert!(out["metadata"].get("annotations").is_none());
        assert!(out["spec"].get("replicas").is_none());
        assert_eq!(out["metadata"]["uid"], "u-1");
        let fields = &entry(&out, "kubectl", "Apply").unwrap()["fieldsV1"];
        assert!(fields["f:spec"].get("f:replicas").is_none());
        assert!(fields["f:metadata"].get("f:annotations").is_none());
    }

    fn labels_config(labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": labels}})
    }

    #[test]
    fn a_field_owned_by_two_appliers_stays_until_both_drop_it() {
        let a = apply(
            None,
            &labels_config(json!({"shared": "yes", "a": "1"})),
            "a",
            false,
            T1,
        )
        .unwrap();
        let ab = apply(
            Some(&a),
            &labels_config(json!({"shared": "yes"})),
            "b",
            false,
            T2,
        )
        .unwrap();
        assert_eq!(managers(&ab), ["a/Apply", "b/Apply"]);
        let b_only = apply(Some(&ab), &labels_config(json!({"a": "1"})), "a", false, T3).unwrap();
        assert_eq!(
            b_only["metadata"]["labels"],
            json!({"shared": "yes", "a": "1"})
        );
        let none = apply(Some(&b_only), &labels_config(json!({})), "b", false, T3).unwrap();
        assert_eq!(none["metadata"]["labels"], json!({"a": "1"}));
        // `labels: {}` is an empty map: b owns the map itself.
        assert_eq!(
            entry(&none, "b", "Apply").unwrap()["fieldsV1"],
            json!({"f:metadata": {"f:labels": {}}})
        );
    }

    #[test]
    fn containers_merge_by_name() {
        let live = stored(apply(None, &deployment("nginx:1", 1), "kubectl", false, T1).unwrap());
        // A mutating controller adds a sidecar with an ordinary update.
        let mut injected = live.clone();
        injected["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "proxy", "image": "envoy"}));
        update_managed_fields(
            Some(&live),
            &mut injected,
            "injector",
            "Update",
            None,
            "apps/v1",
            T2,
        );
        assert_eq!(
            entry(&injected, "injector", "Update").unwrap()["fieldsV1"],
            json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"proxy\"}": {
                ".": {}, "f:image": {}, "f:name": {}
            }}}}}})
        );

        let mut config = deployment("nginx:2", 1);
        config["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "log", "image": "busybox"}));
        let out = apply(Some(&injected), &config, "kubectl", false, T3).unwrap();
        let names: Vec<_> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["image"].as_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [("web", "nginx:2"), ("proxy", "envoy"), ("log", "busybox")]
        );
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80}])
        );

        // Dropping `log` from the configuration removes it; `proxy` is the injector's.
        let out = apply(Some(&out), &deployment("nginx:2", 1), "kubectl", false, T3).unwrap();
        let names: Vec<_> = out["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["web", "proxy"]);
    }

    #[test]
    fn a_dropped_container_goes_even_with_fields_of_another_manager() {
        let mut config = deployment("nginx:1", 1);
        config["spec"]["template"]["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "side", "image": "busybox"}));
        let live = stored(apply(None, &config, "kubectl", false, T1).unwrap());
        let mut edited = live.clone();
        edited["spec"]["template"]["spec"]["containers"][1]["resources"] =
            json!({"limits": {"cpu": "1"}});
        update_managed_fields(
            Some(&live),
            &mut edited,
            "tuner",
            "Update",
            None,
            "apps/v1",
            T2,
        );
        let out = apply(
            Some(&edited),
            &deployment("nginx:1", 1),
            "kubectl",
            false,
            T3,
        )
        .unwrap();
        // Upstream keeps a list item only while someone owns the item itself: `side` goes, and
        // with it the tuner's fields.
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(managers(&out), ["kubectl/Apply"]);
    }

    #[test]
    fn a_dropped_field_stays_while_another_manager_owns_something_under_it() {
        let mut config = deployment("nginx:1", 1);
        config["spec"]["template"]["spec"]["securityContext"] = json!({});
        let live = stored(apply(None, &config, "kubectl", false, T1).unwrap());
        let mut edited = live.clone();
        edited["spec"]["template"]["spec"]["securityContext"]["runAsUser"] = json!(1000);
        update_managed_fields(
            Some(&live),
            &mut edited,
            "admission",
            "Update",
            None,
            "apps/v1",
            T2,
        );
        let out = apply(
            Some(&edited),
            &deployment("nginx:1", 1),
            "kubectl",
            false,
            T3,
        )
        .unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["securityContext"],
            json!({"runAsUser": 1000})
        );
        let fields = &entry(&out, "kubectl", "Apply").unwrap()["fieldsV1"];
        assert!(
            fields["f:spec"]["f:template"]["f:spec"]
                .get("f:securityContext")
                .is_none()
        );
    }

    #[test]
    fn service_ports_are_keyed_by_port_and_protocol() {
        let svc = |ports: Value| {
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                   "spec": {"selector": {"app": "web"}, "ports": ports}})
        };
        let live = apply(
            None,
            &svc(json!([{"port": 80, "targetPort": 8080}])),
            "a",
            false,
            T1,
        )
        .unwrap();
        assert_eq!(
            entry(&live, "a", "Apply").unwrap()["fieldsV1"],
            json!({"f:spec": {"f:ports": {"k:{\"port\":80,\"protocol\":\"TCP\"}": {
                ".": {}, "f:port": {}, "f:targetPort": {}
            }}, "f:selector": {}}})
        );
        let udp = svc(json!([{"port": 80, "protocol": "UDP"}]));
        let both = apply(Some(&live), &udp, "b", false, T2).unwrap();
        assert_eq!(
            both["spec"]["ports"],
            json!([{"port": 80, "targetPort": 8080}, {"port": 80, "protocol": "UDP"}])
        );
        // The selector is atomic: b changing one key of it conflicts on the whole map.
        let mut other = udp.clone();
        other["spec"]["selector"] = json!({"app": "web", "tier": "x"});
        let err = apply(Some(&both), &other, "b", false, T3).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"a\": .spec.selector"
        );
    }

    #[test]
    fn reapplying_any_configuration_is_a_no_op() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "finalizers": ["x/y"], "annotations": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i", "args": ["a", "b"],
                     "env": [{"name": "A", "value": "1"}, {"name": "B"}],
                     "ports": [{"containerPort": 1, "protocol": "UDP"}, {"containerPort": 1}]}],
                     "nodeSelector": {"k": "v"}, "tolerations": [{"key": "k"}]}});
        let configs = [
            deployment("nginx:1", 3),
            labels_config(json!({"a": "b"})),
            pod.clone(),
        ];
        for config in configs {
            let first = stored(apply(None, &config, "m", false, T1).unwrap());
            let again = apply(Some(&first), &config, "m", false, T2).unwrap();
            assert_eq!(
                serde_json::to_string(&again).unwrap(),
                serde_json::to_string(&first).unwrap()
            );
        }
        // And an atomic list is replaced as a whole.
        let live = apply(None, &pod, "m", false, T1).unwrap();
        pod["spec"]["containers"][0]["args"] = json!(["c"]);
        let out = apply(Some(&live), &pod, "m", false, T2).unwrap();
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["c"]));
    }

    #[test]
    fn sets_of_scalars_are_owned_per_value() {
        let cm = |f: Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "finalizers": f}});
        let live = apply(None, &cm(json!(["a", "b"])), "x", false, T1).unwrap();
        assert_eq!(
            entry(&live, "x", "Apply").unwrap()["fieldsV1"],
            json!({"f:metadata": {"f:finalizers": {"v:\"a\"": {}, "v:\"b\"": {}}}})
        );
        let both = apply(Some(&live), &cm(json!(["c"])), "y", false, T2).unwrap();
        assert_eq!(both["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let out = apply(Some(&both), &cm(json!(["b"])), "x", false, T3).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["b", "c"]));
    }

    #[test]
    fn update_on_create_records_the_written_fields() {
        let mut cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default", "uid": "u", "resourceVersion": "1",
                         "creationTimestamp": T1, "labels": {"app": "x"}},
            "data": {"k": "v"}
        });
        update_managed_fields(None, &mut cm, "kubectl-create", "Update", None, "v1", T1);
        assert_eq!(
            serde_json::to_string(&cm["metadata"]["managedFields"]).unwrap(),
            serde_json::to_string(&json!([{
                "manager": "kubectl-create", "operation": "Update", "apiVersion": "v1", "time": T1,
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}, "f:k": {}}, "f:metadata": {"f:labels": {".": {}, "f:app": {}}}}
            }]))
            .unwrap()
        );

        // Another manager changes data.k: the value moves, the map itself (`.`) stays.
        let mut edited = cm.clone();
        edited["data"]["k"] = json!("w");
        update_managed_fields(Some(&cm), &mut edited, "editor", "Update", None, "v1", T2);
        assert_eq!(
            managers(&edited),
            ["kubectl-create/Update", "editor/Update"]
        );
        assert_eq!(
            entry(&edited, "kubectl-create", "Update").unwrap()["fieldsV1"],
            json!({"f:data": {}, "f:metadata": {"f:labels": {".": {}, "f:app": {}}}})
        );
        assert_eq!(
            entry(&edited, "editor", "Update").unwrap()["fieldsV1"],
            json!({"f:data": {"f:k": {}}})
        );
        // Removing fields takes them from everyone, and gives the writer nothing.
        let mut unlabelled = edited.clone();
        let meta = unlabelled["metadata"].as_object_mut().unwrap();
        meta.shift_remove("labels");
        update_managed_fields(
            Some(&edited),
            &mut unlabelled,
            "editor",
            "Update",
            None,
            "v1",
            T3,
        );
        assert_eq!(
            entry(&unlabelled, "kubectl-create", "Update").unwrap()["fieldsV1"],
            json!({"f:data": {}})
        );
        assert_eq!(entry(&unlabelled, "editor", "Update").unwrap()["time"], T2);
        // Entries left without fields are dropped.
        let mut empty = unlabelled.clone();
        empty.as_object_mut().unwrap().shift_remove("data");
        update_managed_fields(
            Some(&unlabelled),
            &mut empty,
            "editor",
            "Update",
            None,
            "v1",
            T3,
        );
        assert!(empty["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn update_on_create_of_a_deployment_marks_only_new_structs() {
        let mut d = deployment("nginx:1", 1);
        d["spec"]["strategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%"}});
        update_managed_fields(
            None,
            &mut d,
            "kubectl-create",
            "Update",
            None,
            "apps/v1",
            T1,
        );
        let f = &entry(&d, "kubectl-create", "Update").unwrap()["fieldsV1"]["f:spec"];
        assert_eq!(
            f["f:strategy"],
            json!({"f:rollingUpdate": {".": {}, "f:maxSurge": {}}, "f:type": {}})
        );
        assert_eq!(
            f["f:template"]["f:metadata"],
            json!({"f:labels": {".": {}, "f:app": {}}})
        );
        assert!(f["f:template"]["f:spec"].get(".").is_none());
        assert_eq!(f["f:selector"], json!({}));
    }

    #[test]
    fn status_is_tracked_only_through_the_status_subresource() {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
                         "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let mut created = pod.clone();
        created["status"] = json!({"phase": "Pending"});
        update_managed_fields(None, &mut created, "kubectl-run", "Update", None, "v1", T1);
        let fields = &entry(&created, "kubectl-run", "Update").unwrap()["fieldsV1"];
        assert!(fields.get("f:status").is_none());

        let mut running = created.clone();
        running["status"]["phase"] = json!("Running");
        running["spec"]["containers"][0]["image"] = json!("ignored-here");
        update_managed_fields(
            Some(&created),
            &mut running,
            "kubelet",
            "Update",
            Some("status"),
            "v1",
            T2,
        );
        let kubelet = entry(&running, "kubelet", "Update").unwrap();
        assert_eq!(kubelet["subresource"], "status");
        assert_eq!(kubelet["fieldsV1"], json!({"f:status": {"f:phase": {}}}));
        assert_eq!(
            entry(&running, "kubectl-run", "Update").unwrap()["fieldsV1"],
            *fields
        );
    }

    #[test]
    fn managed_fields_sent_by_the_client_replace_or_reset_the_tracking() {
        let live = stored(apply(None, &deployment("nginx:1", 1), "kubectl", false, T1).unwrap());
        let mut reset = live.clone();
        reset["metadata"]["managedFields"] = json!([]);
        update_managed_fields(
            Some(&live),
            &mut reset,
            "kubectl-edit",
            "Update",
            None,
            "apps/v1",
            T2,
        );
        assert!(reset["metadata"].get("managedFields").is_none());

        let mut unchanged = live.clone();
        unchanged["metadata"]
            .as_object_mut()
            .unwrap()
            .shift_remove("managedFields");
        update_managed_fields(
            Some(&live),
            &mut unchanged,
            "kubectl-edit",
            "Update",
            None,
            "apps/v1",
            T2,
        );
        assert_eq!(unchanged, live);
    }

    #[test]
    fn first_apply_to_an_untracked_object_conflicts_with_before_first_apply() {
        let mut live = stored(deployment("nginx:1", 1));
        live["status"] = json!({"replicas": 1});
        let err = apply(Some(&live), &deployment("nginx:1", 4), "kubectl", false, T2).unwrap_err();
        assert_eq!(
            err.message(),
            "Apply failed with 1 conflict: conflict with \"before-first-apply\" using apps/v1: .spec.replicas"
        );
        let out = apply(Some(&live), &deployment("nginx:1", 1), "kubectl", false, T2).unwrap();
        assert_eq!(
            managers(&out),
            ["kubectl/Apply", "before-first-apply/Update"]
        );
        assert_eq!(out["status"], json!({"replicas": 1}));
    }

    #[test]
    fn apply_to_status_touches_only_status() {
        let live = stored(apply(None, &deployment("nginx:1", 1), "kubectl", false, T1).unwrap());
        let mut config = deployment("other", 9);
        config["status"] = json!({"readyReplicas": 1});
        let out = apply_to(Some(&live), &config, "ctrl", Some("status"), false, T2).unwrap();
        assert_eq!(out["status"], json!({"readyReplicas": 1}));
        assert_eq!(out["spec"], live["spec"]);
        let e = entry(&out, "ctrl", "Apply").unwrap();
        assert_eq!(
            (&e["subresource"], &e["fieldsV1"]),
            (
                &json!("status"),
                &json!({"f:status": {"f:readyReplicas": {}}})
            )
        );
        // And the main resource ignores a status in the configuration.
        let main = apply(Some(&out), &config, "kubectl", true, T3).unwrap();
        assert_eq!(main["status"], json!({"readyReplicas": 1}));
    }

    #[test]
    fn invalid_configurations_are_rejected() {
        let mut with_fields = deployment("nginx:1", 1);
        with_fields["metadata"]["managedFields"] = json!([]);
        let err = apply(None, &with_fields, "kubectl", false, T1).unwrap_err();
        assert_eq!(
            (err.message().as_str(), err.code()),
            ("metadata.managedFields must be nil", 400)
        );

        let mut keyless = deployment("nginx:1", 1);
        keyless["spec"]["template"]["spec"]["containers"] = json!([{"image": "x"}]);
        assert_eq!(
            apply(None, &keyless, "kubectl", false, T1)
                .unwrap_err()
                .message(),
            ".spec.template.spec.containers: element 0: associative list with keys has an element that omits key field \"name\""
        );
        let mut twice = deployment("nginx:1", 1);
        twice["spec"]["template"]["spec"]["containers"] = json!([{"name": "a"}, {"name": "a"}]);
        assert_eq!(
            apply(None, &twice, "kubectl", false, T1)
                .unwrap_err()
                .message(),
            ".spec.template.spec.containers: duplicate entries for key [name=\"a\"]"
        );
        assert!(matches!(
            apply(None, &json!([1]), "m", false, T1),
            Err(ApplyError::Invalid(_))
        ));
        assert!(matches!(
            apply(None, &json!({"kind": "X"}), "m", false, T1),
            Err(ApplyError::Invalid(_))
        ));

        let mut broken = stored(deployment("nginx:1", 1));
        broken["metadata"]["managedFields"] =
            json!([{"manager": "m", "fieldsType": "FieldsV1", "fieldsV1": {"bad": {}}}]);
        let err = apply(
            Some(&broken),
            &deployment("nginx:1", 1),
            "kubectl",
            false,
            T1,
        )
        .unwrap_err();
        assert_eq!(err.code(), 500);
        // An update resets undecodable tracking instead of failing.
        let mut new = broken.clone();
        new["spec"]["replicas"] = json!(2);
        update_managed_fields(
            Some(&broken),
            &mut new,
            "m2",
            "Update",
            Some("scale"),
            "apps/v1",
            T2,
        );
        assert_eq!(managers(&new), ["m2/Update"]);
    }

    #[test]
    fn field_sets_round_trip_and_print_like_upstream() {
        let v = json!({"f:a": {".": {}, "f:b": {}}, "k:{\"name\":\"x\",\"port\":1}": {"f:c": {}}, "v:\"s\"": {}});
        let set = FieldSet::from_fields_v1(&v).unwrap();
        assert_eq!(set.to_fields_v1(), v);
        let mut paths = Vec::new();
        set.paths(&mut Vec::new(), &mut paths);
        assert_eq!(paths, [".a", "[=\"s\"]", ".a.b", "[name=\"x\",port=1].c"]);
        assert!(FieldSet::from_fields_v1(&json!({"x": {}})).is_err());
        assert!(FieldSet::from_fields_v1(&json!("f:a")).is_err());
    }

    #[test]
    fn odd_inputs_never_panic() {
        let values = [
            json!(null),
            json!(1),
            json!("s"),
            json!([]),
            json!({}),
            json!({"metadata": []}),
            json!({"metadata": {"managedFields": "x"}}),
            json!({"metadata": {"managedFields": [1, {"fieldsV1": []}, {"fieldsType": "FieldsV1", "fieldsV1": {"f:a": 1}}]}}),
            json!({"apiVersion": "v1", "metadata": {"finalizers": [{"a": 1}, [1], null, "x", "x"]}}),
            json!({"apiVersion": "v1", "spec": {"containers": {"name": "x"}}}),
            json!({"apiVersion": "v1", "spec": {"containers": [1, "a", null, [], {"name": null}, {"name": {"x": 1}}]}}),
            json!({"apiVersion": "v1", "spec": {"containers": "x", "selector": [1], "ports": [{"port": 1}, {"port": 1}]}}),
            json!({"apiVersion": 5, "spec": {"template": {"spec": {"containers": [{"name": "a", "ports": [{}]}]}}}}),
            json!({"apiVersion": "v1", "spec": {"template": {"spec": {"containers": [{"name": "a", "env": [[{"name": 1}]]}]}}}}),
        ];
        for live in &values {
            for config in &values {
                let _ = apply(Some(live), config, "m", false, T1);
                let _ = apply(Some(live), config, "m", true, "not a time");
                let _ = apply_to(Some(live), config, "m", Some("status"), false, T1);
                let mut new = config.clone();
                update_managed_fields(Some(live), &mut new, "m", "Update", None, "v1", T1);
                update_managed_fields(None, &mut new, "m", "Update", Some("status"), "v1", T1);
            }
        }
    }
}
