//! Upstream validation per kind, on objects in the JSON API shape (`serde_json::Value`),
//! after defaulting ([`crate::defaults`]).
//!
//! Mirrors `pkg/apis/core/validation`, `pkg/apis/apps/validation`, `pkg/apis/batch/validation`,
//! `pkg/apis/coordination/validation` and `pkg/apis/events/validation`: the same field paths
//! (`spec.containers[0].image`), the same reasons (`FieldValueRequired`...) and the same messages,
//! and every failure is returned, not only the first. Upstream's decoder rejects wrongly typed
//! fields before validation; here a wrongly typed field is one more `FieldValueInvalid` cause
//! (`must be a string`...), and nothing panics on any input.
//!
//! Each kind has `pub fn <kind>(obj, old) -> Vec<Cause>`: `old` is `None` on create and the stored
//! object on update (update rules: immutable fields, the pod update rule...).
//!
//! Sans-IO: depends on `names` for name syntax and on nothing that does I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use serde_json::{Map, Value, json};

use crate::names;
use crate::resource::Cause;
use crate::selector::LabelSelector;

type Obj = Map<String, Value>;

/// Upstream's limit on the total size of a ConfigMap's or Secret's data (1 MiB).
pub const MAX_DATA_SIZE: usize = 1024 * 1024;

const FIELD_IMMUTABLE: &str = "field is immutable";
const NEGATIVE: &str = "must be greater than or equal to 0";
const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const IP_MSG: &str = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)";
const PROTOCOLS: &[&str] = &["SCTP", "TCP", "UDP"];

// ---------------------------------------------------------------------------------------------
// Causes beyond the constructors `Cause` has.

fn required(field: impl Into<String>, detail: &str) -> Cause {
    let mut c = Cause::required(field);
    if !detail.is_empty() {
        c.message = format!("Required value: {detail}");
    }
    c
}

fn show(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn duplicate(field: impl Into<String>, value: &Value) -> Cause {
    Cause {
        reason: "FieldValueDuplicate",
        message: format!("Duplicate value: {}", show(value)),
        field: field.into(),
    }
}

fn not_found(field: impl Into<String>, value: &Value) -> Cause {
    Cause {
        reason: "FieldValueNotFound",
        message: format!("Not found: {}", show(value)),
        field: field.into(),
    }
}

fn too_long(field: impl Into<String>, max: usize) -> Cause {
    Cause {
        reason: "FieldValueTooLong",
        message: format!("Too long: may not be more than {max} bytes"),
        field: field.into(),
    }
}

fn invalid_str(field: impl Into<String>, value: &str, detail: &str) -> Cause {
    Cause::invalid(field, &Value::String(value.to_string()), detail)
}

fn immutable(field: impl Into<String>, new: Option<&Value>) -> Cause {
    Cause::invalid(field, new.unwrap_or(&Value::Null), FIELD_IMMUTABLE)
}

/// Go's `%#v` of a `map[string]string`, as upstream prints label maps in messages.
fn go_string_map(labels: Option<&Obj>) -> String {
    let Some(labels) = labels else {
        return "map[string]string(nil)".into();
    };
    let sorted: BTreeMap<&String, String> = labels.iter().map(|(k, v)| (k, show(v))).collect();
    let items: Vec<String> = sorted.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
    format!("map[string]string{{{}}}", items.join(", "))
}

// ---------------------------------------------------------------------------------------------
// Paths.

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

fn key_path(path: &str, key: &str) -> String {
    format!("{path}[{key}]")
}

// ---------------------------------------------------------------------------------------------
// Typed access. A key holding null counts as absent; a wrong type is reported and read as absent.

fn type_error(path: &str, value: &Value, what: &str) -> Cause {
    Cause::invalid(path, value, &format!("must be {what}"))
}

fn present<'a>(m: &'a Obj, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn get_str<'a>(e: &mut Vec<Cause>, m: &'a Obj, p: &str, key: &str) -> Option<&'a str> {
    let v = present(m, key)?;
    match v.as_str() {
        Some(s) => Some(s),
        None => {
            e.push(type_error(&child(p, key), v, "a string"));
            None
        }
    }
}

/// A string field, "" when absent or wrongly typed (reported).
fn str_or_empty<'a>(e: &mut Vec<Cause>, m: &'a Obj, p: &str, key: &str) -> &'a str {
    get_str(e, m, p, key).unwrap_or("")
}

fn as_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
            .map(|f| f as i64)
    })
}

fn get_int(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str) -> Option<i64> {
    let v = present(m, key)?;
    match as_int(v) {
        Some(n) => Some(n),
        None => {
            e.push(type_error(&child(p, key), v, "an integer"));
            None
        }
    }
}

fn get_bool(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str) -> Option<bool> {
    let v = present(m, key)?;
    match v.as_bool() {
        Some(b) => Some(b),
        None => {
            e.push(type_error(&child(p, key), v, "a boolean"));
            None
        }
    }
}

fn get_obj<'a>(e: &mut Vec<Cause>, m: &'a Obj, p: &str, key: &str) -> Option<&'a Obj> {
    let v = present(m, key)?;
    match v.as_object() {
        Some(o) => Some(o),
        None => {
            e.push(type_error(&child(p, key), v, "an object"));
            None
        }
    }
}

fn get_arr<'a>(e: &mut Vec<Cause>, m: &'a Obj, p: &str, key: &str) -> Option<&'a [Value]> {
    let v = present(m, key)?;
    match v.as_array() {
        Some(a) => Some(a.as_slice()),
        None => {
            e.push(type_error(&child(p, key), v, "an array"));
            None
        }
    }
}

/// The object elements of the array under `key`, with their paths; other elements are reported.
fn obj_items<'a>(e: &mut Vec<Cause>, m: &'a Obj, p: &str, key: &str) -> Vec<(String, &'a Obj)> {
    let path = child(p, key);
    let mut out = Vec::new();
    for (i, item) in get_arr(e, m, p, key).unwrap_or(&[]).iter().enumerate() {
        match item.as_object() {
            Some(o) => out.push((index(&path, i), o)),
            None => e.push(type_error(&index(&path, i), item, "an object")),
        }
    }
    out
}

/// The string elements of the array under `key`, with their paths; other elements are reported.
fn str_items<'a>(e: &mut Vec<Cause>, m: &'a Obj, p: &str, key: &str) -> Vec<(String, &'a str)> {
    let path = child(p, key);
    let mut out = Vec::new();
    for (i, item) in get_arr(e, m, p, key).unwrap_or(&[]).iter().enumerate() {
        match item.as_str() {
            Some(s) => out.push((index(&path, i), s)),
            None => e.push(type_error(&index(&path, i), item, "a string")),
        }
    }
    out
}

const TYPE_ERRORS: &[&str] = &[
    ": must be a string",
    ": must be an integer",
    ": must be a boolean",
    ": must be an object",
    ": must be an array",
    ": must be an integer or a string",
    ": must be an integer or a percentage",
];

/// Drops the follow-on causes (Required, Not found...) at a field already reported as wrongly
/// typed, so each mistyped field yields one cause, and repeated causes.
fn finish(causes: Vec<Cause>) -> Vec<Cause> {
    let mistyped: HashSet<String> = causes
        .iter()
        .filter(|c| TYPE_ERRORS.iter().any(|t| c.message.ends_with(t)))
        .map(|c| c.field.clone())
        .collect();
    let mut seen = HashSet::new();
    causes
        .into_iter()
        .filter(|c| {
            !mistyped.contains(&c.field) || TYPE_ERRORS.iter().any(|t| c.message.ends_with(t))
        })
        .filter(|c| seen.insert((c.field.clone(), c.message.clone())))
        .collect()
}

/// The root object, or a cause saying it is not one.
fn root<'a>(e: &mut Vec<Cause>, obj: &'a Value) -> Option<&'a Obj> {
    match obj.as_object() {
        Some(o) => Some(o),
        None => {
            e.push(Cause::invalid("", obj, "must be an object"));
            None
        }
    }
}

fn nonnegative(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str) -> Option<i64> {
    let n = get_int(e, m, p, key)?;
    if n < 0 {
        e.push(Cause::invalid(child(p, key), &json!(n), NEGATIVE));
    }
    Some(n)
}

fn supported(
    e: &mut Vec<Cause>,
    m: &Obj,
    p: &str,
    key: &str,
    values: &[&str],
    required_when_empty: bool,
) {
    let Some(v) = present(m, key) else {
        if required_when_empty {
            e.push(Cause::required(child(p, key)));
        }
        return;
    };
    match v.as_str() {
        Some("") if required_when_empty => e.push(Cause::required(child(p, key))),
        Some(s) if values.contains(&s) => {}
        Some(_) => e.push(Cause::not_supported(child(p, key), v, values)),
        None => e.push(type_error(&child(p, key), v, "a string")),
    }
}

// ---------------------------------------------------------------------------------------------
// Name and value syntax not covered by `names`.

fn invalid_each(e: &mut Vec<Cause>, path: &str, value: &str, msgs: Vec<String>) {
    for msg in msgs {
        e.push(invalid_str(path, value, &msg));
    }
}

/// IsValidPortName.
pub fn port_name_errors(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 15 {
        errs.push("must be no more than 15 characters".to_string());
    }
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        errs.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_string(),
        );
    }
    if !name.bytes().any(|b| b.is_ascii_lowercase()) {
        errs.push("must contain at least one letter (a-z)".to_string());
    }
    if name.contains("--") {
        errs.push("must not contain consecutive hyphens".to_string());
    }
    if name.starts_with('-') || name.ends_with('-') {
        errs.push("must not begin or end with a hyphen".to_string());
    }
    errs
}

/// IsConfigMapKey: the keys of ConfigMap and Secret data.
pub fn config_key_errors(key: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if key.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        errs.push(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  \
             or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
                .to_string(),
        );
    }
    if key == "." {
        errs.push("must not be '.'".to_string());
    } else if key == ".." {
        errs.push("must not be '..'".to_string());
    } else if key.starts_with("..") {
        errs.push("must not start with '..'".to_string());
    }
    errs
}

/// A port given as number or name (`targetPort`, probe ports): ValidatePortNumOrName.
fn port_num_or_name(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str, required_value: bool) {
    let path = child(p, key);
    match present(m, key) {
        None => {
            if required_value {
                e.push(Cause::invalid(path, &json!(0), PORT_RANGE));
            }
        }
        Some(Value::String(s)) => invalid_each(e, &path, s, port_name_errors(s)),
        Some(v) => match as_int(v) {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => e.push(Cause::invalid(path, &json!(n), PORT_RANGE)),
            None => e.push(type_error(&path, v, "an integer or a string")),
        },
    }
}

/// A port number field that must be in 1..=65535 when present (and when `required`, present).
fn port_num(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str, required_field: bool) -> Option<i64> {
    match get_int(e, m, p, key) {
        None => {
            if required_field && present(m, key).is_none() {
                e.push(Cause::required(child(p, key)));
            }
            None
        }
        Some(0) if required_field => {
            e.push(Cause::required(child(p, key)));
            Some(0)
        }
        Some(n) if (1..=65535).contains(&n) => Some(n),
        Some(n) => {
            e.push(Cause::invalid(child(p, key), &json!(n), PORT_RANGE));
            Some(n)
        }
    }
}

fn valid_ip(s: &str) -> bool {
    s.parse::<IpAddr>().is_ok()
}

fn valid_cidr(s: &str) -> bool {
    let Some((ip, bits_text)) = s.split_once('/') else {
        return false;
    };
    let (Ok(ip), Ok(bits)) = (ip.parse::<IpAddr>(), bits_text.parse::<u8>()) else {
        return false;
    };
    bits.to_string() == bits_text && bits <= if ip.is_ipv4() { 32 } else { 128 }
}

fn valid_timestamp(s: &str) -> bool {
    s.parse::<jiff::Timestamp>().is_ok()
}

fn timestamp(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str) -> Option<String> {
    let s = get_str(e, m, p, key)?;
    if !valid_timestamp(s) {
        e.push(invalid_str(
            child(p, key),
            s,
            "must be an RFC 3339 timestamp",
        ));
        return None;
    }
    Some(s.to_string())
}

// ---------------------------------------------------------------------------------------------
// Quantities.

/// Parse a resource quantity (`100m`, `1.5Gi`, `1e3`, a JSON number) to its value.
pub fn parse_quantity(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_quantity_str(s),
        _ => None,
    }
}

fn parse_quantity_str(s: &str) -> Option<f64> {
    let s = s.trim();
    let bytes = s.as_bytes();
    let mut i = 0;
    if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
        i += 1;
    }
    let start_digits = i;
    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
        i += 1;
    }
    let number = &s[..i];
    let digits = &s[start_digits..i];
    if digits.is_empty() || digits == "." || digits.matches('.').count() > 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let suffix = &s[i..];
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        _ => {
            let exp = suffix
                .strip_prefix('e')
                .or_else(|| suffix.strip_prefix('E'))?;
            let unsigned = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let exp: i32 = exp.parse().ok()?;
            10f64.powi(exp)
        }
    };
    Some(value * factor)
}

const QUANTITY_SYNTAX: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

fn is_native_resource(name: &str) -> bool {
    !name.contains('/') || name.contains("kubernetes.io/")
}

/// Requests and limits of a container (ValidateContainerResourceRequirements).
fn resources(e: &mut Vec<Cause>, c: &Obj, p: &str) {
    let Some(r) = get_obj(e, c, p, "resources") else {
        return;
    };
    let rp = child(p, "resources");
    let mut parsed: [HashMap<&str, (f64, &Value)>; 2] = [HashMap::new(), HashMap::new()];
    for (slot, key) in ["limits", "requests"].into_iter().enumerate() {
        let Some(list) = get_obj(e, r, &rp, key) else {
            continue;
        };
        let lp = child(&rp, key);
        for (name, q) in list {
            let path = key_path(&lp, name);
            resource_name(e, name, &path);
            match parse_quantity(q) {
                None => e.push(Cause::invalid(&path, q, QUANTITY_SYNTAX)),
                Some(v) if v < 0.0 => e.push(Cause::invalid(&path, q, NEGATIVE)),
                Some(v) => {
                    if !is_native_resource(name) && v.fract() != 0.0 {
                        e.push(Cause::invalid(&path, q, "must be an integer"));
                    }
                    parsed[slot].insert(name.as_str(), (v, q));
                }
            }
        }
    }
    let [limits, requests] = parsed;
    let req_path = child(&rp, "requests");
    let mut names: Vec<&&str> = requests.keys().collect();
    names.sort();
    for name in names {
        let Some(&(req, req_raw)) = requests.get(*name) else {
            continue;
        };
        let overcommit = is_native_resource(name) && !name.starts_with("hugepages-");
        match limits.get(*name) {
            Some(&(lim, lim_raw)) => {
                if !overcommit && req != lim {
                    let detail = format!(
                        "must be equal to {name} limit of {}",
                        quantity_text(lim_raw)
                    );
                    e.push(Cause::invalid(
                        &req_path,
                        &json!(quantity_text(req_raw)),
                        &detail,
                    ));
                } else if req > lim {
                    let detail = format!(
                        "must be less than or equal to {name} limit of {}",
                        quantity_text(lim_raw)
                    );
                    e.push(Cause::invalid(
                        &req_path,
                        &json!(quantity_text(req_raw)),
                        &detail,
                    ));
                }
            }
            None if !overcommit => {
                e.push(required(
                    child(&rp, "limits"),
                    "Limit must be set for non overcommitable resources",
                ));
            }
            None => {}
        }
    }
}

fn quantity_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// validateContainerResourceName.
fn resource_name(e: &mut Vec<Cause>, name: &str, path: &str) {
    let msgs = names::is_qualified_name(name);
    let ok = msgs.is_empty();
    invalid_each(e, path, name, msgs);
    if !ok {
        return;
    }
    if !name.contains('/') {
        let standard = matches!(name, "cpu" | "memory" | "ephemeral-storage")
            || name.starts_with("hugepages-");
        if !standard {
            e.push(invalid_str(
                path,
                name,
                "must be a standard resource for containers",
            ));
        }
    } else if !is_native_resource(name) && name.starts_with("requests.") {
        e.push(invalid_str(
            path,
            name,
            "doesn't follow extended resource name standard",
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Object metadata.

/// Which name syntax a kind uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NameRule {
    /// DNS-1123 subdomain: most kinds.
    Subdomain,
    /// DNS-1123 label: namespaces.
    Label,
    /// DNS-1035 label: services.
    Dns1035,
}

fn name_errors(rule: NameRule, name: &str, prefix: bool) -> Vec<String> {
    // a generateName prefix may end with '-': upstream masks it before checking
    let masked;
    let name = if prefix && name.ends_with('-') {
        masked = format!("{}a", &name[..name.len() - 1]);
        masked.as_str()
    } else {
        name
    };
    match rule {
        NameRule::Subdomain => names::is_dns1123_subdomain(name),
        NameRule::Label => names::is_dns1123_label(name),
        NameRule::Dns1035 => names::is_dns1035_label(name),
    }
}

const STANDARD_FINALIZERS: &[&str] = &["kubernetes", "orphan", "foregroundDeletion"];

/// validateFinalizerName.
fn finalizer_name(e: &mut Vec<Cause>, path: &str, name: &str) {
    let msgs = names::is_qualified_name(name);
    let ok = msgs.is_empty();
    invalid_each(e, path, name, msgs);
    if ok && !name.contains('/') && !STANDARD_FINALIZERS.contains(&name) {
        e.push(invalid_str(
            path,
            name,
            "name is neither a standard finalizer name nor is it fully qualified",
        ));
    }
}

fn labels_at(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str) {
    if let Some(v) = present(m, key) {
        if v.is_object() {
            e.extend(names::validate_labels(v, &child(p, key)));
        } else {
            e.push(type_error(&child(p, key), v, "an object"));
        }
    }
}

fn annotations_at(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str) {
    if let Some(v) = present(m, key) {
        if v.is_object() {
            e.extend(names::validate_annotations(v, &child(p, key)));
        } else {
            e.push(type_error(&child(p, key), v, "an object"));
        }
    }
}

/// ValidateObjectMeta. `metadata.namespace` is checked when present (the server fills it in from
/// the URL for namespaced kinds) and forbidden for cluster-scoped ones.
fn object_meta(e: &mut Vec<Cause>, obj: &Obj, rule: NameRule, namespaced: bool) {
    let p = "metadata";
    let Some(meta) = get_obj(e, obj, "", p) else {
        e.push(required(
            "metadata.name",
            "name or generateName is required",
        ));
        return;
    };
    let generate_name = str_or_empty(e, meta, p, "generateName");
    if !generate_name.is_empty() {
        invalid_each(
            e,
            "metadata.generateName",
            generate_name,
            name_errors(rule, generate_name, true),
        );
    }
    let name = str_or_empty(e, meta, p, "name");
    if name.is_empty() {
        if generate_name.is_empty() {
            e.push(required(
                "metadata.name",
                "name or generateName is required",
            ));
        }
    } else {
        invalid_each(e, "metadata.name", name, name_errors(rule, name, false));
    }
    let namespace = str_or_empty(e, meta, p, "namespace");
    if namespaced {
        if !namespace.is_empty() {
            invalid_each(
                e,
                "metadata.namespace",
                namespace,
                names::is_dns1123_label(namespace),
            );
        }
    } else if !namespace.is_empty() {
        e.push(Cause::forbidden(
            "metadata.namespace",
            "not allowed on this type",
        ));
    }
    nonnegative(e, meta, p, "generation");
    labels_at(e, meta, p, "labels");
    annotations_at(e, meta, p, "annotations");
    owner_references(e, meta);
    let finalizers = str_items(e, meta, p, "finalizers");
    for (_, f) in &finalizers {
        finalizer_name(e, "metadata.finalizers", f);
    }
    let has = |name: &str| finalizers.iter().any(|(_, f)| *f == name);
    if has("orphan") && has("foregroundDeletion") {
        e.push(Cause::invalid(
            "metadata.finalizers",
            &json!(finalizers.iter().map(|(_, f)| *f).collect::<Vec<_>>()),
            "finalizer orphan and foregroundDeletion cannot be both set",
        ));
    }
}

fn owner_references(e: &mut Vec<Cause>, meta: &Obj) {
    let path = "metadata.ownerReferences";
    let mut controllers = Vec::new();
    for (_, r) in obj_items(e, meta, "metadata", "ownerReferences") {
        let api_version = str_or_empty(e, r, path, "apiVersion");
        let version = api_version.rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            e.push(invalid_str(
                child(path, "apiVersion"),
                api_version,
                "version must not be empty",
            ));
        }
        for (key, what) in [("kind", "kind"), ("name", "name"), ("uid", "uid")] {
            let v = str_or_empty(e, r, path, key);
            if v.is_empty() {
                e.push(invalid_str(
                    child(path, key),
                    v,
                    &format!("{what} must not be empty"),
                ));
            }
        }
        if get_bool(e, r, path, "controller") == Some(true) {
            controllers.push(format!(
                "{}/{}",
                r.get("kind").and_then(Value::as_str).unwrap_or(""),
                r.get("name").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    if controllers.len() > 1 {
        let refs = meta.get("ownerReferences").cloned().unwrap_or(Value::Null);
        e.push(Cause::invalid(
            path,
            &refs,
            &format!(
                "Only one reference can have Controller set to true. Found \"true\" in references for {}",
                controllers.join(" and ")
            ),
        ));
    }
}

/// ValidateObjectMetaUpdate: name and namespace never change, nor a given uid (an update without
/// uid keeps the stored one).
fn object_meta_update(e: &mut Vec<Cause>, obj: &Obj, old: &Value) {
    let new_meta = obj.get("metadata").and_then(Value::as_object);
    let old_meta = old.get("metadata").and_then(Value::as_object);
    let get = |m: Option<&Obj>, key: &str| {
        m.and_then(|m| m.get(key))
            .filter(|v| !v.is_null() && v.as_str() != Some(""))
            .cloned()
    };
    for key in ["name", "namespace", "uid"] {
        let new = get(new_meta, key);
        let old = get(old_meta, key);
        if key == "uid" && new.is_none() {
            continue;
        }
        if new != old {
            e.push(immutable(
                child("metadata", key),
                Some(&new.unwrap_or(json!(""))),
            ));
        }
    }
}

/// Create or update checks of the metadata alone.
fn meta_checks(
    e: &mut Vec<Cause>,
    obj: &Obj,
    old: Option<&Value>,
    rule: NameRule,
    namespaced: bool,
) {
    object_meta(e, obj, rule, namespaced);
    if let Some(old) = old {
        object_meta_update(e, obj, old);
    }
}

/// Metadata-only validation for namespaced kinds without rules of their own.
pub fn none(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    if let Some(o) = root(&mut e, obj) {
        meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    }
    finish(e)
}

/// Metadata-only validation for cluster-scoped kinds without rules of their own.
pub fn none_cluster(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    if let Some(o) = root(&mut e, obj) {
        meta_checks(&mut e, o, old, NameRule::Subdomain, false);
    }
    finish(e)
}

// ---------------------------------------------------------------------------------------------
// Label selectors (metav1.LabelSelector): validated here with upstream's field paths, evaluated
// by `selector::LabelSelector`.

/// How a selector field evaluates, as LabelSelectorAsSelector.
#[derive(Debug)]
enum Selector {
    /// No selector: matches nothing.
    Nothing,
    /// A valid selector (no requirements matches everything).
    Valid(LabelSelector),
    /// A selector that does not convert.
    Invalid,
}

impl Selector {
    fn matches(&self, labels: &Obj) -> bool {
        match self {
            Selector::Valid(selector) => selector.matches(labels),
            Selector::Nothing | Selector::Invalid => false,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Selector::Valid(s) if s.is_empty())
    }
}

/// ValidateLabelSelector on `m[key]`, returning how it evaluates.
fn label_selector(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str) -> Selector {
    let Some(v) = present(m, key) else {
        return Selector::Nothing;
    };
    let path = child(p, key);
    let Some(sel) = v.as_object() else {
        e.push(type_error(&path, v, "an object"));
        return Selector::Invalid;
    };
    let before = e.len();
    labels_at(e, sel, &path, "matchLabels");
    for (ep, expr) in obj_items(e, sel, &path, "matchExpressions") {
        let key = str_or_empty(e, expr, &ep, "key");
        let values = str_items(e, expr, &ep, "values");
        let op = match present(expr, "operator") {
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                e.push(type_error(&child(&ep, "operator"), other, "a string"));
                ""
            }
            None => "",
        };
        match op {
            "In" | "NotIn" if values.is_empty() => e.push(required(
                child(&ep, "values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if !values.is_empty() => e.push(Cause::forbidden(
                child(&ep, "values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => e.push(invalid_str(
                child(&ep, "operator"),
                other,
                "not a valid selector operator",
            )),
        }
        invalid_each(e, &child(&ep, "key"), key, names::is_qualified_name(key));
        for (vp, value) in &values {
            invalid_each(e, vp, value, names::is_valid_label_value(value));
        }
    }
    if e.len() > before {
        return Selector::Invalid;
    }
    match LabelSelector::from_json(v) {
        Ok(selector) => Selector::Valid(selector),
        Err(_) => Selector::Invalid,
    }
}

// ---------------------------------------------------------------------------------------------
// Pod specs.

const RESTART_POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
const DNS_POLICIES: &[&str] = &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"];
const PULL_POLICIES: &[&str] = &["Always", "IfNotPresent", "Never"];
const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Volumes: unique DNS-1123 label names, exactly one source each. Returns the names.
fn volumes(e: &mut Vec<Cause>, spec: &Obj, p: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for (vp, vol) in obj_items(e, spec, p, "volumes") {
        let name = str_or_empty(e, vol, &vp, "name");
        let name_path = child(&vp, "name");
        if name.is_empty() {
            e.push(Cause::required(&name_path));
        } else {
            invalid_each(e, &name_path, name, names::is_dns1123_label(name));
        }
        if !name.is_empty() && !seen.insert(name.to_string()) {
            e.push(duplicate(&name_path, &json!(name)));
        }
        let mut count = 0;
        for source in crate::defaults::VOLUME_SOURCES {
            if present(vol, source).is_none() {
                continue;
            }
            if count > 0 {
                e.push(Cause::forbidden(
                    child(&vp, source),
                    "may not specify more than 1 volume type",
                ));
                continue;
            }
            count += 1;
            volume_source(e, vol, &vp, source);
        }
        if count == 0 {
            e.push(required(&vp, "must specify a volume type"));
        }
    }
    seen
}

/// The essentials of the common volume sources.
fn volume_source(e: &mut Vec<Cause>, vol: &Obj, vp: &str, source: &str) {
    let Some(s) = get_obj(e, vol, vp, source) else {
        return;
    };
    let sp = child(vp, source);
    let require = |e: &mut Vec<Cause>, key: &str| {
        if str_or_empty(e, s, &sp, key).is_empty() {
            e.push(Cause::required(child(&sp, key)));
        }
    };
    match source {
        "configMap" => require(e, "name"),
        "secret" => require(e, "secretName"),
        "persistentVolumeClaim" => require(e, "claimName"),
        "hostPath" => {
            require(e, "path");
            let types = [
                "",
                "DirectoryOrCreate",
                "Directory",
                "FileOrCreate",
                "File",
                "Socket",
                "CharDevice",
                "BlockDevice",
            ];
            if let Some(t) = get_str(e, s, &sp, "type")
                && !types.contains(&t)
            {
                e.push(Cause::not_supported(child(&sp, "type"), &json!(t), &types));
            }
        }
        "nfs" => {
            require(e, "server");
            require(e, "path");
        }
        "emptyDir" => {
            if let Some(size) = present(s, "sizeLimit") {
                match parse_quantity(size) {
                    None => e.push(Cause::invalid(
                        child(&sp, "sizeLimit"),
                        size,
                        QUANTITY_SYNTAX,
                    )),
                    Some(v) if v < 0.0 => {
                        e.push(Cause::invalid(child(&sp, "sizeLimit"), size, NEGATIVE))
                    }
                    Some(_) => {}
                }
            }
            supported(e, s, &sp, "medium", &["", "Memory", "HugePages"], false);
        }
        _ => {}
    }
    if let Some(mode) = get_int(e, s, &sp, "defaultMode")
        && !(0..=0o777).contains(&mode)
    {
        e.push(Cause::invalid(
            child(&sp, "defaultMode"),
            &json!(mode),
            "must be a number between 0 and 0777 (octal), both inclusive",
        ));
    }
}

/// A probe or lifecycle handler: exactly one handler type.
fn handler(e: &mut Vec<Cause>, h: &Obj, p: &str, kinds: &[&str]) {
    let mut count = 0;
    for kind in kinds {
        if present(h, kind).is_none() {
            continue;
        }
        if count > 0 {
            e.push(Cause::forbidden(
                child(p, kind),
                "may not specify more than 1 handler type",
            ));
            continue;
        }
        count += 1;
        let Some(action) = get_obj(e, h, p, kind) else {
            continue;
        };
        let ap = child(p, kind);
        match *kind {
            "exec" if str_items(e, action, &ap, "command").is_empty() => {
                e.push(Cause::required(child(&ap, "command")));
            }
            "httpGet" => {
                if str_or_empty(e, action, &ap, "path").is_empty() {
                    e.push(Cause::required(child(&ap, "path")));
                }
                port_num_or_name(e, action, &ap, "port", true);
                supported(e, action, &ap, "scheme", &["HTTP", "HTTPS"], true);
            }
            "tcpSocket" => port_num_or_name(e, action, &ap, "port", true),
            "grpc" => {
                if let Some(port) = get_int(e, action, &ap, "port")
                    && !(1..=65535).contains(&port)
                {
                    e.push(Cause::invalid(child(&ap, "port"), &json!(port), PORT_RANGE));
                }
            }
            "sleep" => {
                if let Some(secs) = get_int(e, action, &ap, "seconds")
                    && secs < 0
                {
                    e.push(Cause::invalid(
                        child(&ap, "seconds"),
                        &json!(secs),
                        NEGATIVE,
                    ));
                }
            }
            _ => {}
        }
    }
    if count == 0 {
        e.push(required(p, "must specify a handler type"));
    }
}

fn probe(e: &mut Vec<Cause>, c: &Obj, p: &str, key: &str, success_must_be_one: bool) {
    let Some(pr) = get_obj(e, c, p, key) else {
        return;
    };
    let pp = child(p, key);
    handler(e, pr, &pp, &["exec", "httpGet", "tcpSocket", "grpc"]);
    for field in [
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ] {
        nonnegative(e, pr, &pp, field);
    }
    if success_must_be_one
        && let Some(n) = get_int(e, pr, &pp, "successThreshold")
        && n != 1
    {
        e.push(Cause::invalid(
            child(&pp, "successThreshold"),
            &json!(n),
            "must be 1",
        ));
    }
    if let Some(n) = get_int(e, pr, &pp, "terminationGracePeriodSeconds")
        && n <= 0
    {
        e.push(Cause::invalid(
            child(&pp, "terminationGracePeriodSeconds"),
            &json!(n),
            "must be greater than 0",
        ));
    }
}

fn container_ports(e: &mut Vec<Cause>, c: &Obj, p: &str) {
    let mut names_seen = HashSet::new();
    for (pp, port) in obj_items(e, c, p, "ports") {
        if let Some(name) = get_str(e, port, &pp, "name")
            && !name.is_empty()
        {
            let msgs = port_name_errors(name);
            if !msgs.is_empty() {
                invalid_each(e, &child(&pp, "name"), name, msgs);
            } else if !names_seen.insert(name.to_string()) {
                e.push(duplicate(child(&pp, "name"), &json!(name)));
            }
        }
        port_num(e, port, &pp, "containerPort", true);
        if let Some(host) = get_int(e, port, &pp, "hostPort")
            && host != 0
            && !(1..=65535).contains(&host)
        {
            e.push(Cause::invalid(
                child(&pp, "hostPort"),
                &json!(host),
                PORT_RANGE,
            ));
        }
        supported(e, port, &pp, "protocol", PROTOCOLS, true);
        get_str(e, port, &pp, "hostIP");
    }
}

fn env(e: &mut Vec<Cause>, c: &Obj, p: &str) {
    for (ep, var) in obj_items(e, c, p, "env") {
        let name = str_or_empty(e, var, &ep, "name");
        if name.is_empty() {
            e.push(Cause::required(child(&ep, "name")));
        } else if !name.bytes().all(|b| (32..=126).contains(&b) && b != b'=') {
            e.push(invalid_str(
                child(&ep, "name"),
                name,
                "a valid environment variable name must consist only of printable ASCII characters other than '='",
            ));
        }
        let value = str_or_empty(e, var, &ep, "value");
        if let Some(from) = get_obj(e, var, &ep, "valueFrom") {
            let fp = child(&ep, "valueFrom");
            let sources = [
                "fieldRef",
                "resourceFieldRef",
                "configMapKeyRef",
                "secretKeyRef",
                "fileKeyRef",
            ];
            let count = sources
                .iter()
                .filter(|s| present(from, s).is_some())
                .count();
            if count == 0 {
                e.push(Cause::invalid(
                    &fp,
                    &Value::String(String::new()),
                    "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                ));
            } else if !value.is_empty() {
                e.push(invalid_str(
                    &fp,
                    "",
                    "may not be specified when `value` is not empty",
                ));
            } else if count > 1 {
                e.push(Cause::invalid(
                    &fp,
                    &Value::String(String::new()),
                    "may not have more than one field specified at a time",
                ));
            }
            for key_ref in ["configMapKeyRef", "secretKeyRef"] {
                if let Some(r) = get_obj(e, from, &fp, key_ref) {
                    let rp = child(&fp, key_ref);
                    let key = str_or_empty(e, r, &rp, "key");
                    if key.is_empty() {
                        e.push(Cause::required(child(&rp, "key")));
                    } else {
                        invalid_each(e, &child(&rp, "key"), key, config_key_errors(key));
                    }
                }
            }
            if let Some(r) = get_obj(e, from, &fp, "fieldRef") {
                let rp = child(&fp, "fieldRef");
                if str_or_empty(e, r, &rp, "fieldPath").is_empty() {
                    e.push(Cause::required(child(&rp, "fieldPath")));
                }
            }
        }
    }
}

fn volume_mounts(e: &mut Vec<Cause>, c: &Obj, p: &str, vols: &HashSet<String>) {
    let mut mount_points = HashSet::new();
    for (mp, m) in obj_items(e, c, p, "volumeMounts") {
        let name = str_or_empty(e, m, &mp, "name");
        if name.is_empty() {
            e.push(Cause::required(child(&mp, "name")));
        }
        if !vols.contains(name) {
            e.push(not_found(child(&mp, "name"), &json!(name)));
        }
        let path = str_or_empty(e, m, &mp, "mountPath");
        if path.is_empty() {
            e.push(Cause::required(child(&mp, "mountPath")));
        }
        if !mount_points.insert(path.to_string()) {
            e.push(invalid_str(child(&mp, "mountPath"), path, "must be unique"));
        }
        if let Some(sub) = get_str(e, m, &mp, "subPath")
            && !sub.is_empty()
        {
            if sub.starts_with('/') {
                e.push(invalid_str(
                    child(&mp, "subPath"),
                    sub,
                    "must be a relative path",
                ));
            }
            if sub.split('/').any(|part| part == "..") {
                e.push(invalid_str(
                    child(&mp, "subPath"),
                    sub,
                    "must not contain '..'",
                ));
            }
        }
        get_bool(e, m, &mp, "readOnly");
    }
}

/// One container (validateContainerCommon and what is specific to its kind).
fn container(e: &mut Vec<Cause>, c: &Obj, p: &str, vols: &HashSet<String>, init: bool) {
    let name = str_or_empty(e, c, p, "name");
    if name.is_empty() {
        e.push(Cause::required(child(p, "name")));
    } else {
        invalid_each(e, &child(p, "name"), name, names::is_dns1123_label(name));
    }
    if str_or_empty(e, c, p, "image").is_empty() {
        e.push(Cause::required(child(p, "image")));
    }
    str_items(e, c, p, "command");
    str_items(e, c, p, "args");
    get_str(e, c, p, "workingDir");
    supported(e, c, p, "imagePullPolicy", PULL_POLICIES, true);
    supported(
        e,
        c,
        p,
        "terminationMessagePolicy",
        &["File", "FallbackToLogsOnError"],
        true,
    );
    container_ports(e, c, p);
    env(e, c, p);
    volume_mounts(e, c, p, vols);
    resources(e, c, p);
    let restartable = match present(c, "restartPolicy") {
        None => false,
        Some(_) if !init => {
            e.push(Cause::forbidden(
                child(p, "restartPolicy"),
                "may not be set for non-init containers",
            ));
            false
        }
        Some(v) => {
            if v.as_str() != Some("Always") {
                e.push(Cause::not_supported(
                    child(p, "restartPolicy"),
                    v,
                    &["Always"],
                ));
            }
            true
        }
    };
    if init && !restartable {
        for key in ["livenessProbe", "readinessProbe", "startupProbe"] {
            if present(c, key).is_some() {
                e.push(Cause::forbidden(
                    child(p, key),
                    "may not be set for init containers without restartPolicy=Always",
                ));
            }
        }
    } else {
        probe(e, c, p, "livenessProbe", true);
        probe(e, c, p, "readinessProbe", false);
        probe(e, c, p, "startupProbe", true);
    }
    if let Some(lifecycle) = get_obj(e, c, p, "lifecycle") {
        let lp = child(p, "lifecycle");
        for hook in ["postStart", "preStop"] {
            if let Some(h) = get_obj(e, lifecycle, &lp, hook) {
                handler(
                    e,
                    h,
                    &child(&lp, hook),
                    &["exec", "httpGet", "tcpSocket", "sleep"],
                );
            }
        }
    }
}

fn tolerations(e: &mut Vec<Cause>, spec: &Obj, p: &str) {
    for (tp, t) in obj_items(e, spec, p, "tolerations") {
        let key = str_or_empty(e, t, &tp, "key");
        if !key.is_empty() {
            invalid_each(e, &child(&tp, "key"), key, names::is_qualified_name(key));
        }
        let operator = str_or_empty(e, t, &tp, "operator");
        let value = str_or_empty(e, t, &tp, "value");
        if key.is_empty() && operator != "Exists" {
            e.push(invalid_str(
                child(&tp, "operator"),
                operator,
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        match operator {
            "" | "Equal" => invalid_each(
                e,
                &child(&tp, "value"),
                value,
                names::is_valid_label_value(value),
            ),
            "Exists" => {
                if !value.is_empty() {
                    e.push(invalid_str(
                        child(&tp, "operator"),
                        value,
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => e.push(Cause::not_supported(
                child(&tp, "operator"),
                &json!(other),
                &["Equal", "Exists"],
            )),
        }
        let effect = str_or_empty(e, t, &tp, "effect");
        if !effect.is_empty() && !TAINT_EFFECTS.contains(&effect) {
            e.push(Cause::not_supported(
                child(&tp, "effect"),
                &json!(effect),
                TAINT_EFFECTS,
            ));
        }
        if get_int(e, t, &tp, "tolerationSeconds").is_some() && effect != "NoExecute" {
            e.push(invalid_str(
                child(&tp, "effect"),
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
    }
}

/// ValidatePodSpec.
fn pod_spec(e: &mut Vec<Cause>, spec: &Obj, p: &str) {
    let vols = volumes(e, spec, p);
    let containers = obj_items(e, spec, p, "containers");
    let mut all_names = HashSet::new();
    if containers.is_empty() && present(spec, "containers").is_none_or(|v| v.is_array()) {
        e.push(Cause::required(child(p, "containers")));
    }
    for (cp, c) in &containers {
        container(e, c, cp, &vols, false);
        if let Some(name) = c
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            && !all_names.insert(name.to_string())
        {
            e.push(duplicate(child(cp, "name"), &json!(name)));
        }
    }
    for (cp, c) in obj_items(e, spec, p, "initContainers") {
        container(e, c, &cp, &vols, true);
        if let Some(name) = c
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            && !all_names.insert(name.to_string())
        {
            e.push(duplicate(child(&cp, "name"), &json!(name)));
        }
    }
    host_ports(e, spec, p);
    supported(e, spec, p, "restartPolicy", RESTART_POLICIES, true);
    supported(e, spec, p, "dnsPolicy", DNS_POLICIES, true);
    labels_at(e, spec, p, "nodeSelector");
    for key in [
        "serviceAccountName",
        "nodeName",
        "priorityClassName",
        "runtimeClassName",
    ] {
        if let Some(v) = get_str(e, spec, p, key)
            && !v.is_empty()
        {
            invalid_each(e, &child(p, key), v, names::is_dns1123_subdomain(v));
        }
    }
    for key in ["hostname", "subdomain"] {
        if let Some(v) = get_str(e, spec, p, key)
            && !v.is_empty()
        {
            invalid_each(e, &child(p, key), v, names::is_dns1123_label(v));
        }
    }
    if let Some(n) = get_int(e, spec, p, "activeDeadlineSeconds")
        && !(1..=i64::from(i32::MAX)).contains(&n)
    {
        e.push(Cause::invalid(
            child(p, "activeDeadlineSeconds"),
            &json!(n),
            "must be between 1 and 2147483647, inclusive",
        ));
    }
    get_int(e, spec, p, "terminationGracePeriodSeconds");
    for key in [
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "enableServiceLinks",
        "automountServiceAccountToken",
    ] {
        get_bool(e, spec, p, key);
    }
    get_obj(e, spec, p, "securityContext");
    tolerations(e, spec, p);
    if present(spec, "dnsPolicy").and_then(Value::as_str) == Some("None") {
        match present(spec, "dnsConfig") {
            None => e.push(required(
                child(p, "dnsConfig"),
                "must provide `dnsConfig` when `dnsPolicy` is None",
            )),
            Some(config) => {
                let servers = config.get("nameservers").and_then(Value::as_array);
                if servers.is_none_or(Vec::is_empty) {
                    e.push(required(
                        child(&child(p, "dnsConfig"), "nameservers"),
                        "must provide at least one DNS nameserver when `dnsPolicy` is None",
                    ));
                }
            }
        }
    }
    for (ip, alias) in obj_items(e, spec, p, "hostAliases") {
        let addr = str_or_empty(e, alias, &ip, "ip");
        if !valid_ip(addr) {
            e.push(invalid_str(child(&ip, "ip"), addr, IP_MSG));
        }
    }
}

/// Host ports must be unique per protocol across all containers (checkHostPortConflicts), and
/// equal container ports with the host's network.
fn host_ports(e: &mut Vec<Cause>, spec: &Obj, p: &str) {
    let mut seen = HashSet::new();
    let Some(Value::Array(containers)) = present(spec, "containers") else {
        return;
    };
    for (i, c) in containers.iter().enumerate() {
        let Some(Value::Array(ports)) = c.get("ports") else {
            continue;
        };
        for (j, port) in ports.iter().enumerate() {
            let Some(host) = port.get("hostPort").and_then(as_int).filter(|h| *h != 0) else {
                continue;
            };
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            let ip = port.get("hostIP").and_then(Value::as_str).unwrap_or("");
            let key = format!("{protocol}/{ip}/{host}");
            if !seen.insert(key.clone()) {
                let path = format!("{p}.containers[{i}].ports[{j}].hostPort");
                e.push(duplicate(path, &json!(key)));
            }
        }
    }
    // validateHostNetwork: with the host's network, a container port is its host port
    if spec.get("hostNetwork").and_then(Value::as_bool) != Some(true) {
        return;
    }
    for list in ["containers", "initContainers"] {
        let Some(Value::Array(containers)) = present(spec, list) else {
            continue;
        };
        for (i, c) in containers.iter().enumerate() {
            let Some(Value::Array(ports)) = c.get("ports") else {
                continue;
            };
            for (j, port) in ports.iter().enumerate() {
                let container = port.get("containerPort").and_then(as_int);
                let host = port.get("hostPort").and_then(as_int).unwrap_or(0);
                if let Some(container) = container
                    && container != host
                {
                    e.push(Cause::invalid(
                        format!("{p}.{list}[{i}].ports[{j}].containerPort"),
                        &json!(container),
                        "must match `hostPort` when `hostNetwork` is true",
                    ));
                }
            }
        }
    }
}

/// ValidatePodTemplateSpec: the template's labels and annotations and its pod spec.
fn pod_template(e: &mut Vec<Cause>, spec: &Obj, p: &str) -> Option<Obj> {
    let Some(template) = get_obj(e, spec, p, "template") else {
        e.push(Cause::required(child(p, "template")));
        return None;
    };
    let tp = child(p, "template");
    if let Some(meta) = get_obj(e, template, &tp, "metadata") {
        let mp = child(&tp, "metadata");
        labels_at(e, meta, &mp, "labels");
        annotations_at(e, meta, &mp, "annotations");
    }
    match get_obj(e, template, &tp, "spec") {
        Some(s) => pod_spec(e, s, &child(&tp, "spec")),
        None => {
            if present(template, "spec").is_none() {
                pod_spec(e, &Obj::new(), &child(&tp, "spec"));
            }
        }
    }
    Some(template.clone())
}

fn template_labels(template: &Obj) -> Option<&Obj> {
    template
        .get("metadata")
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
}

fn template_restart_policy(template: &Obj) -> Value {
    template
        .get("spec")
        .and_then(|s| s.get("restartPolicy"))
        .cloned()
        .unwrap_or(json!(""))
}

/// Removes nulls and empty arrays, which upstream's semantic equality treats as unset.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null() && !matches!(v, Value::Array(a) if a.is_empty()))
                .map(|(k, v)| (k.clone(), normalized(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// Paths where two values differ, for the pod update message.
fn diff(old: &Value, new: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() >= 20 || old == new {
        return;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let keys = a.keys().chain(b.keys().filter(|k| !a.contains_key(*k)));
            for k in keys {
                diff(
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    &child(path, k),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                diff(x, y, &index(path, i), out);
            }
        }
        _ => out.push(format!("  {path}: {old} -> {new}")),
    }
}

const POD_UPDATE_MSG: &str = "pod updates may not change fields other than `spec.containers[*].image`,\
`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing \
tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)";

/// ValidatePodUpdate's spec rules.
fn pod_spec_update(e: &mut Vec<Cause>, new: &Obj, old: &Obj) {
    let p = "spec";
    let new_ads = present(new, "activeDeadlineSeconds").and_then(as_int);
    let old_ads = present(old, "activeDeadlineSeconds").and_then(as_int);
    match (new_ads, old_ads) {
        (Some(n), Some(o)) if n <= i64::from(i32::MAX) && n >= 0 && o < n => {
            e.push(Cause::invalid(
                child(p, "activeDeadlineSeconds"),
                &json!(n),
                "must be less than or equal to previous value",
            ));
        }
        (None, Some(_)) => {
            e.push(Cause::invalid(
                child(p, "activeDeadlineSeconds"),
                &Value::Null,
                "must not update from a positive integer to nil value",
            ));
        }
        _ => {}
    }
    // tolerations: every old one must remain, except for its tolerationSeconds
    let new_tols: Vec<Value> = new
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let old_tols: Vec<Value> = old
        .get("tolerations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let strip = |t: &Value| {
        let mut t = normalized(t);
        if let Some(m) = t.as_object_mut() {
            m.remove("tolerationSeconds");
        }
        t
    };
    if old_tols
        .iter()
        .any(|o| !new_tols.iter().any(|n| strip(n) == strip(o)))
    {
        e.push(Cause::forbidden(
            child(p, "tolerations"),
            "existing toleration can not be modified except its tolerationSeconds",
        ));
    }

    let mut munged = new.clone();
    for key in ["containers", "initContainers"] {
        let (Some(Value::Array(new_list)), Some(Value::Array(old_list))) =
            (munged.get_mut(key), old.get(key))
        else {
            continue;
        };
        if new_list.len() != old_list.len() {
            continue;
        }
        for (n, o) in new_list.iter_mut().zip(old_list) {
            if let (Some(n), Some(o)) = (n.as_object_mut(), o.as_object()) {
                match o.get("image") {
                    Some(img) => n.insert("image".into(), img.clone()),
                    None => n.remove("image"),
                };
            }
        }
    }
    let mut take_old = |key: &str| match old.get(key) {
        Some(v) => {
            munged.insert(key.into(), v.clone());
        }
        None => {
            munged.remove(key);
        }
    };
    take_old("activeDeadlineSeconds");
    take_old("tolerations");
    let old_grace = present(old, "terminationGracePeriodSeconds").and_then(as_int);
    let new_grace = present(new, "terminationGracePeriodSeconds").and_then(as_int);
    if old_grace.is_some_and(|g| g < 0) && new_grace == Some(1) {
        take_old("terminationGracePeriodSeconds");
    }
    // the node name may be set once (binding); after that it is part of the immutable spec
    if old
        .get("nodeName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        take_old("nodeName");
    }
    let munged = normalized(&Value::Object(munged));
    let old_norm = normalized(&Value::Object(old.clone()));
    if munged != old_norm {
        let mut lines = Vec::new();
        diff(&old_norm, &munged, p, &mut lines);
        e.push(Cause::forbidden(
            p,
            format!("{POD_UPDATE_MSG}\n{}", lines.join("\n")),
        ));
    }
}

/// A Pod: metadata, the pod spec, no ephemeral containers on create; on update, the pod update
/// rule (only images, activeDeadlineSeconds, added tolerations... may change; `spec.nodeName` can
/// be set once).
pub fn pod(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    let empty = Obj::new();
    let spec = match get_obj(&mut e, o, "", "spec") {
        Some(s) => s,
        None => &empty,
    };
    pod_spec(&mut e, spec, "spec");
    for (cp, c) in obj_items(&mut e, spec, "spec", "containers") {
        if let Some(image) = c.get("image").and_then(Value::as_str)
            && image.trim() != image
        {
            e.push(invalid_str(
                child(&cp, "image"),
                image,
                "must not have leading or trailing whitespace",
            ));
        }
    }
    match old {
        None => {
            if present(spec, "ephemeralContainers")
                .is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty()))
            {
                e.push(Cause::forbidden(
                    "spec.ephemeralContainers",
                    "cannot be set on create",
                ));
            }
        }
        Some(old) => {
            // upstream compares with the stored object as decoded, i.e. defaulted: an object
            // stored before a default existed (or before admission mirrored a field) still updates
            let mut old = old.clone();
            crate::defaults::pod(&mut old);
            if let Some(old_spec) = old.get("spec").and_then(Value::as_object) {
                pod_spec_update(&mut e, spec, old_spec);
            }
        }
    }
    finish(e)
}

// ---------------------------------------------------------------------------------------------
// Workloads.

/// ValidatePositiveIntOrPercent, returning the value for the both-zero check (percent as number).
fn int_or_percent(e: &mut Vec<Cause>, m: &Obj, p: &str, key: &str) -> Option<i64> {
    let v = present(m, key)?;
    let path = child(p, key);
    match v {
        Value::String(s) => {
            let digits = s.strip_suffix('%').unwrap_or("");
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                e.push(invalid_str(
                    &path,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  \
                     or '93%', regex used for validation is '[0-9]+%')",
                ));
                return None;
            }
            digits.parse().ok()
        }
        other => match as_int(other) {
            Some(n) => {
                if n < 0 {
                    e.push(Cause::invalid(&path, &json!(n), NEGATIVE));
                }
                Some(n)
            }
            None => {
                e.push(type_error(&path, other, "an integer or a percentage"));
                None
            }
        },
    }
}

/// The parts Deployments and ReplicaSets share: replicas, minReadySeconds, the selector, and the
/// template (matching the selector, restartPolicy Always, no activeDeadlineSeconds).
fn replicated_spec(e: &mut Vec<Cause>, spec: &Obj) {
    let p = "spec";
    nonnegative(e, spec, p, "replicas");
    nonnegative(e, spec, p, "minReadySeconds");
    let selector = label_selector(e, spec, p, "selector");
    match present(spec, "selector") {
        None => e.push(Cause::required("spec.selector")),
        Some(v) => {
            if selector.is_empty() {
                e.push(Cause::invalid(
                    "spec.selector",
                    v,
                    "empty selector is invalid for deployment",
                ));
            }
        }
    }
    if matches!(selector, Selector::Invalid)
        && present(spec, "selector").is_some_and(Value::is_object)
    {
        let v = present(spec, "selector").cloned().unwrap_or(Value::Null);
        e.push(Cause::invalid(
            "spec.selector",
            &v,
            "invalid label selector",
        ));
    }
    let Some(template) = pod_template(e, spec, p) else {
        return;
    };
    if !matches!(selector, Selector::Invalid) && !selector.is_empty() {
        let empty = Obj::new();
        let labels = template_labels(&template);
        if !selector.matches(labels.unwrap_or(&empty)) {
            e.push(selector_mismatch(labels));
        }
    }
    let restart = template_restart_policy(&template);
    if restart.as_str() != Some("Always") {
        e.push(Cause::not_supported(
            "spec.template.spec.restartPolicy",
            &restart,
            &["Always"],
        ));
    }
    if template
        .get("spec")
        .and_then(|s| s.get("activeDeadlineSeconds"))
        .is_some_and(|v| !v.is_null())
    {
        e.push(Cause::forbidden(
            "spec.template.spec.activeDeadlineSeconds",
            "activeDeadlineSeconds in ReplicaSet is not Supported",
        ));
    }
}

fn selector_mismatch(labels: Option<&Obj>) -> Cause {
    Cause {
        reason: "FieldValueInvalid",
        message: format!(
            "Invalid value: {}: `selector` does not match template `labels`",
            go_string_map(labels)
        ),
        field: "spec.template.metadata.labels".into(),
    }
}

fn selector_immutable(e: &mut Vec<Cause>, spec: &Obj, old: Option<&Value>) {
    let Some(old) = old else { return };
    let old_sel = old
        .get("spec")
        .and_then(|s| s.get("selector"))
        .map(normalized);
    let new_sel = present(spec, "selector").map(normalized);
    if old_sel.filter(|v| !v.is_null()) != new_sel {
        e.push(immutable("spec.selector", present(spec, "selector")));
    }
}

/// A Deployment (apps/v1).
pub fn deployment(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    let empty = Obj::new();
    let spec = get_obj(&mut e, o, "", "spec").unwrap_or(&empty);
    replicated_spec(&mut e, spec);
    let p = "spec";
    if let Some(strategy) = get_obj(&mut e, spec, p, "strategy") {
        let sp = "spec.strategy";
        let rolling = present(strategy, "rollingUpdate");
        match present(strategy, "type")
            .and_then(Value::as_str)
            .unwrap_or("")
        {
            "Recreate" => {
                if rolling.is_some() {
                    e.push(Cause::forbidden(
                        child(sp, "rollingUpdate"),
                        "may not be specified when strategy `type` is 'Recreate'",
                    ));
                }
            }
            "RollingUpdate" => match get_obj(&mut e, strategy, sp, "rollingUpdate") {
                None => e.push(required(
                    child(sp, "rollingUpdate"),
                    "this should be defaulted and never be nil",
                )),
                Some(ru) => {
                    let rp = child(sp, "rollingUpdate");
                    let unavailable = int_or_percent(&mut e, ru, &rp, "maxUnavailable");
                    let surge = int_or_percent(&mut e, ru, &rp, "maxSurge");
                    if unavailable == Some(0) && surge == Some(0) {
                        let v = present(ru, "maxUnavailable")
                            .cloned()
                            .unwrap_or(Value::Null);
                        e.push(Cause::invalid(
                            child(&rp, "maxUnavailable"),
                            &v,
                            "may not be 0 when `maxSurge` is 0",
                        ));
                    }
                    if let Some(Value::String(s)) = present(ru, "maxUnavailable")
                        && unavailable.is_some_and(|u| u > 100)
                    {
                        e.push(invalid_str(
                            child(&rp, "maxUnavailable"),
                            s,
                            "must not be greater than 100%",
                        ));
                    }
                }
            },
            _ => {
                let t = present(strategy, "type").cloned().unwrap_or(json!(""));
                e.push(Cause::not_supported(sp, &t, &["Recreate", "RollingUpdate"]));
            }
        }
    }
    nonnegative(&mut e, spec, p, "revisionHistoryLimit");
    if let Some(deadline) = nonnegative(&mut e, spec, p, "progressDeadlineSeconds") {
        let min_ready = present(spec, "minReadySeconds")
            .and_then(as_int)
            .unwrap_or(0);
        if deadline <= min_ready {
            e.push(Cause::invalid(
                "spec.progressDeadlineSeconds",
                &json!(deadline),
                "must be greater than minReadySeconds",
            ));
        }
    }
    get_bool(&mut e, spec, p, "paused");
    selector_immutable(&mut e, spec, old);
    finish(e)
}

/// A ReplicaSet (apps/v1).
pub fn replicaset(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    let empty = Obj::new();
    let spec = get_obj(&mut e, o, "", "spec").unwrap_or(&empty);
    replicated_spec(&mut e, spec);
    selector_immutable(&mut e, spec, old);
    finish(e)
}

/// A Job (batch/v1).
pub fn job(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    let empty = Obj::new();
    let spec = get_obj(&mut e, o, "", "spec").unwrap_or(&empty);
    let p = "spec";
    let parallelism = nonnegative(&mut e, spec, p, "parallelism");
    let completions = nonnegative(&mut e, spec, p, "completions");
    nonnegative(&mut e, spec, p, "activeDeadlineSeconds");
    nonnegative(&mut e, spec, p, "backoffLimit");
    nonnegative(&mut e, spec, p, "ttlSecondsAfterFinished");
    get_bool(&mut e, spec, p, "suspend");
    let manual = get_bool(&mut e, spec, p, "manualSelector") == Some(true);
    let mode = get_str(&mut e, spec, p, "completionMode");
    if let Some(mode) = mode {
        if mode != "NonIndexed" && mode != "Indexed" {
            e.push(Cause::not_supported(
                "spec.completionMode",
                &json!(mode),
                &["NonIndexed", "Indexed"],
            ));
        }
        if mode == "Indexed" {
            if completions.is_none() {
                e.push(required(
                    "spec.completions",
                    "when completion mode is Indexed",
                ));
            }
            if let Some(par) = parallelism
                && par > 100_000
            {
                e.push(Cause::invalid(
                    "spec.parallelism",
                    &json!(par),
                    "must be less than or equal to 100000 when completion mode is Indexed",
                ));
            }
        }
    }
    supported(
        &mut e,
        spec,
        p,
        "podReplacementPolicy",
        &["TerminatingOrFailed", "Failed"],
        false,
    );
    let selector = label_selector(&mut e, spec, p, "selector");
    if present(spec, "selector").is_none() {
        e.push(Cause::required("spec.selector"));
    }
    let template = pod_template(&mut e, spec, p);
    if let Some(template) = &template {
        let labels = template_labels(template);
        if !matches!(selector, Selector::Invalid)
            && !selector.matches(labels.unwrap_or(&Obj::new()))
        {
            e.push(selector_mismatch(labels));
        }
        let restart = template_restart_policy(template);
        if !matches!(restart.as_str(), Some("OnFailure" | "Never")) {
            e.push(Cause::not_supported(
                "spec.template.spec.restartPolicy",
                &restart,
                &["OnFailure", "Never"],
            ));
        }
        if !manual {
            generated_selector(&mut e, o, template, &selector);
        }
    }
    if let Some(old) = old {
        let mut old = old.clone();
        crate::defaults::job(&mut old);
        if let Some(old_spec) = old.get("spec").and_then(Value::as_object) {
            job_update(&mut e, spec, old_spec);
        }
    }
    finish(e)
}

/// validateGeneratedSelector: with a server-generated selector (and a uid assigned), the template
/// carries the Job's uid and name and the selector selects the uid.
fn generated_selector(e: &mut Vec<Cause>, job: &Obj, template: &Obj, selector: &Selector) {
    let uid = job
        .get("metadata")
        .and_then(|m| m.get("uid"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let name = job
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("");
    if uid.is_empty() || matches!(selector, Selector::Nothing) {
        return;
    }
    let empty = Obj::new();
    let labels = template_labels(template).unwrap_or(&empty);
    for (key, expected) in [
        (crate::defaults::JOB_CONTROLLER_UID_LABEL, uid),
        (crate::defaults::JOB_NAME_LABEL, name),
    ] {
        let path = key_path("spec.template.metadata.labels", key);
        match labels.get(key).and_then(Value::as_str) {
            None => e.push(Cause::required(path)),
            Some(v) if v != expected => {
                e.push(Cause::invalid(
                    path,
                    &Value::Object(labels.clone()),
                    &format!("must be '{expected}'"),
                ));
            }
            Some(_) => {}
        }
    }
    let mut expected = Obj::new();
    expected.insert(crate::defaults::JOB_CONTROLLER_UID_LABEL.into(), json!(uid));
    if matches!(selector, Selector::Valid(_)) && !selector.matches(&expected) {
        let v = job
            .get("spec")
            .and_then(|s| s.get("selector"))
            .cloned()
            .unwrap_or(Value::Null);
        e.push(Cause::invalid(
            "spec.selector",
            &v,
            "`selector` not auto-generated",
        ));
    }
}

/// ValidateJobUpdate's spec rules: selector, template, completionMode, podFailurePolicy,
/// backoffLimitPerIndex immutable; completions too, except for elastic Indexed Jobs; the
/// template's scheduling directives may change while a Job is suspended.
fn job_update(e: &mut Vec<Cause>, new: &Obj, old: &Obj) {
    let p = "spec";
    for key in [
        "selector",
        "completionMode",
        "podFailurePolicy",
        "backoffLimitPerIndex",
        "managedBy",
    ] {
        let n = present(new, key).map(normalized);
        let o = present(old, key).map(normalized);
        if n != o {
            e.push(immutable(child(p, key), present(new, key)));
        }
    }
    let completions = (present(new, "completions"), present(old, "completions"));
    if completions.0 != completions.1 {
        let indexed = new.get("completionMode").and_then(Value::as_str) == Some("Indexed");
        let elastic = indexed
            && completions.0.is_some()
            && completions.0 == present(new, "parallelism")
            && completions.1 == present(old, "parallelism");
        if !elastic {
            e.push(immutable(child(p, "completions"), completions.0));
        }
    }
    let (Some(new_t), Some(old_t)) = (present(new, "template"), present(old, "template")) else {
        return;
    };
    let mut old_t = normalized(old_t);
    let new_t = normalized(new_t);
    let suspended = new.get("suspend").and_then(Value::as_bool) == Some(true);
    if suspended {
        // AllowMutableSchedulingDirectives (simplified: the Job is suspended)
        if let (Some(o), Some(n)) = (old_t.as_object_mut(), new_t.as_object()) {
            for (part, keys) in [
                ("metadata", &["labels", "annotations"][..]),
                (
                    "spec",
                    &["nodeSelector", "tolerations", "affinity", "schedulingGates"][..],
                ),
            ] {
                if let (Some(Value::Object(om)), Some(Value::Object(nm))) =
                    (o.get_mut(part), n.get(part))
                {
                    for key in keys {
                        match nm.get(*key) {
                            Some(v) => om.insert((*key).to_string(), v.clone()),
                            None => om.remove(*key),
                        };
                    }
                }
            }
        }
    }
    if old_t != new_t {
        e.push(immutable("spec.template", present(new, "template")));
    }
}

// ---------------------------------------------------------------------------------------------
// Services and endpoints.

fn is_headless(spec: &Obj) -> bool {
    spec.get("clusterIP").and_then(Value::as_str) == Some("None")
}

/// The effective clusterIPs (as the strategy normalizes them from `clusterIP`).
fn cluster_ips(spec: &Obj) -> Vec<String> {
    let ips: Vec<String> = spec
        .get("clusterIPs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if !ips.is_empty() {
        return ips;
    }
    match spec.get("clusterIP").and_then(Value::as_str) {
        Some(ip) if !ip.is_empty() => vec![ip.to_string()],
        _ => Vec::new(),
    }
}

/// A Service.
pub fn service(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Dns1035, true);
    let empty = Obj::new();
    let spec = get_obj(&mut e, o, "", "spec").unwrap_or(&empty);
    let p = "spec";
    let type_ = str_or_empty(&mut e, spec, p, "type");
    const TYPES: &[&str] = &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if type_.is_empty() {
        e.push(Cause::required("spec.type"));
    } else if !TYPES.contains(&type_) {
        e.push(Cause::not_supported("spec.type", &json!(type_), TYPES));
    }
    let headless = is_headless(spec);
    let ports = obj_items(&mut e, spec, p, "ports");
    if ports.is_empty() && !headless && type_ != "ExternalName" {
        e.push(Cause::required("spec.ports"));
    }
    let mut port_names = HashSet::new();
    let mut pairs = HashSet::new();
    let mut node_ports = HashSet::new();
    for (pp, port) in &ports {
        let name = str_or_empty(&mut e, port, pp, "name");
        if ports.len() > 1 && name.is_empty() {
            e.push(Cause::required(child(pp, "name")));
        } else if !name.is_empty() {
            invalid_each(
                &mut e,
                &child(pp, "name"),
                name,
                names::is_dns1123_label(name),
            );
            if !port_names.insert(name.to_string()) {
                e.push(duplicate(child(pp, "name"), &json!(name)));
            }
        }
        let number = get_int(&mut e, port, pp, "port");
        if !number.is_some_and(|n| (1..=65535).contains(&n))
            && present(port, "port").is_none_or(|v| as_int(v).is_some())
        {
            e.push(Cause::invalid(
                child(pp, "port"),
                &json!(number.unwrap_or(0)),
                PORT_RANGE,
            ));
        }
        supported(&mut e, port, pp, "protocol", PROTOCOLS, true);
        port_num_or_name(&mut e, port, pp, "targetPort", false);
        if let Some(app) = get_str(&mut e, port, pp, "appProtocol") {
            invalid_each(
                &mut e,
                &child(pp, "appProtocol"),
                app,
                names::is_qualified_name(app),
            );
        }
        if let Some(node_port) = get_int(&mut e, port, pp, "nodePort").filter(|n| *n != 0) {
            if type_ == "ClusterIP" {
                e.push(Cause::forbidden(
                    child(pp, "nodePort"),
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(1..=65535).contains(&node_port) {
                e.push(Cause::invalid(
                    child(pp, "nodePort"),
                    &json!(node_port),
                    PORT_RANGE,
                ));
            }
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            if !node_ports.insert((node_port, protocol.to_string())) {
                e.push(duplicate(child(pp, "nodePort"), &json!(node_port)));
            }
        }
        if let Some(n) = number {
            let protocol = port.get("protocol").and_then(Value::as_str).unwrap_or("");
            if !pairs.insert((n, protocol.to_string())) {
                e.push(duplicate(pp, &json!({"port": n, "protocol": protocol})));
            }
        }
    }
    labels_at(&mut e, spec, p, "selector");
    supported(
        &mut e,
        spec,
        p,
        "sessionAffinity",
        &["ClientIP", "None"],
        true,
    );
    match spec.get("sessionAffinity").and_then(Value::as_str) {
        Some("None") => {
            if let Some(v) = present(spec, "sessionAffinityConfig") {
                e.push(Cause::invalid(
                    "spec.sessionAffinityConfig",
                    v,
                    "must not be set when session affinity is None",
                ));
            }
        }
        Some("ClientIP") => {
            let timeout = spec
                .get("sessionAffinityConfig")
                .and_then(|c| c.get("clientIP"))
                .and_then(|c| c.get("timeoutSeconds"));
            match timeout.and_then(as_int) {
                None => e.push(Cause::required(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                )),
                Some(t) if !(1..=86400).contains(&t) => e.push(Cause::invalid(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    &json!(t),
                    "must be greater than 0 and less than 86400",
                )),
                Some(_) => {}
            }
        }
        _ => {}
    }
    let ips = cluster_ips(spec);
    get_str(&mut e, spec, p, "clusterIP");
    let listed = str_items(&mut e, spec, p, "clusterIPs");
    if type_ == "ExternalName" {
        if !ips.is_empty() {
            e.push(Cause::forbidden(
                "spec.clusterIPs",
                "may not be set for ExternalName services",
            ));
        }
        if present(spec, "ipFamilies").is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
            e.push(Cause::forbidden(
                "spec.ipFamilies",
                "may not be set for ExternalName services",
            ));
        }
        if present(spec, "ipFamilyPolicy").is_some() {
            e.push(Cause::forbidden(
                "spec.ipFamilyPolicy",
                "may not be set for ExternalName services",
            ));
        }
        let external = str_or_empty(&mut e, spec, p, "externalName");
        let clean = external.strip_suffix('.').unwrap_or(external);
        if clean.is_empty() {
            e.push(Cause::required("spec.externalName"));
        } else {
            invalid_each(
                &mut e,
                "spec.externalName",
                clean,
                names::is_dns1123_subdomain(clean),
            );
        }
    } else {
        if let (Some((_, first)), Some(ip)) = (
            listed.first(),
            spec.get("clusterIP").and_then(Value::as_str),
        ) && !ip.is_empty()
            && *first != ip
        {
            let v = spec.get("clusterIPs").cloned().unwrap_or(Value::Null);
            e.push(Cause::invalid(
                "spec.clusterIPs",
                &v,
                "first value must match `clusterIP`",
            ));
        }
        for (i, ip) in ips.iter().enumerate() {
            if i == 0 && ip == "None" {
                if ips.len() > 1 {
                    e.push(Cause::invalid(
                        "spec.clusterIPs",
                        &json!(ips),
                        "'None' must be the first and only value",
                    ));
                }
                continue;
            }
            if !valid_ip(ip) {
                e.push(invalid_str(index("spec.clusterIPs", i), ip, IP_MSG));
            }
        }
        supported(
            &mut e,
            spec,
            p,
            "ipFamilyPolicy",
            &["SingleStack", "PreferDualStack", "RequireDualStack"],
            false,
        );
        let families = str_items(&mut e, spec, p, "ipFamilies");
        let mut seen = HashSet::new();
        for (fp, family) in &families {
            if !["IPv4", "IPv6"].contains(family) {
                e.push(Cause::not_supported(
                    fp.as_str(),
                    &json!(family),
                    &["IPv4", "IPv6"],
                ));
            } else if !seen.insert(*family) {
                e.push(duplicate(fp.as_str(), &json!(family)));
            }
        }
    }
    for (ip_path, ip) in str_items(&mut e, spec, p, "externalIPs") {
        if !valid_ip(ip) {
            e.push(invalid_str(ip_path, ip, IP_MSG));
        }
    }
    if matches!(type_, "NodePort" | "LoadBalancer") {
        supported(
            &mut e,
            spec,
            p,
            "externalTrafficPolicy",
            &["Cluster", "Local"],
            false,
        );
    }
    supported(
        &mut e,
        spec,
        p,
        "internalTrafficPolicy",
        &["Cluster", "Local"],
        false,
    );
    if let Some(old_spec) = old.and_then(|o| o.get("spec")).and_then(Value::as_object) {
        service_update(&mut e, spec, old_spec);
    }
    finish(e)
}

/// validateUpgradeDowngradeClusterIPs: the primary cluster IP never changes once set.
fn service_update(e: &mut Vec<Cause>, new: &Obj, old: &Obj) {
    let external = |s: &Obj| s.get("type").and_then(Value::as_str) == Some("ExternalName");
    if external(new) || external(old) || (is_headless(new) && is_headless(old)) {
        return;
    }
    let (new_ips, old_ips) = (cluster_ips(new), cluster_ips(old));
    let shown = json!(new_ips);
    if old_ips.len() == new_ips.len() {
        for (i, (o, n)) in old_ips.iter().zip(&new_ips).enumerate() {
            if o != n {
                e.push(Cause::invalid(
                    index("spec.clusterIPs", i),
                    &shown,
                    "may not change once set",
                ));
            }
        }
    } else if new_ips.is_empty() {
        e.push(Cause::invalid(
            "spec.clusterIPs[0]",
            &shown,
            "primary clusterIP can not be unset",
        ));
    } else if !old_ips.is_empty() && old_ips[0] != new_ips[0] {
        e.push(Cause::invalid(
            "spec.clusterIPs[0]",
            &shown,
            "may not change once set",
        ));
    }
}

/// ValidateNonSpecialIP for endpoint addresses.
fn endpoint_ip(e: &mut Vec<Cause>, path: &str, ip: &str) {
    let Ok(addr) = ip.parse::<IpAddr>() else {
        e.push(invalid_str(path, ip, IP_MSG));
        return;
    };
    let (unspecified, loopback, link_local, link_local_multicast) = match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (
                v4.is_unspecified(),
                v4.is_loopback(),
                v4.is_link_local(),
                o[0] == 224 && o[1] == 0 && o[2] == 0,
            )
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            (
                v6.is_unspecified(),
                v6.is_loopback(),
                (s[0] & 0xffc0) == 0xfe80,
                (s[0] & 0xff0f) == 0xff02,
            )
        }
    };
    if unspecified {
        e.push(invalid_str(
            path,
            ip,
            "may not be unspecified (0.0.0.0, ::)",
        ));
    }
    if loopback {
        e.push(invalid_str(
            path,
            ip,
            "may not be in the loopback range (127.0.0.0/8, ::1/128)",
        ));
    }
    if link_local {
        e.push(invalid_str(
            path,
            ip,
            "may not be in the link-local range (169.254.0.0/16, fe80::/10)",
        ));
    }
    if link_local_multicast {
        e.push(invalid_str(
            path,
            ip,
            "may not be in the link-local multicast range (224.0.0.0/24, ff02::/10)",
        ));
    }
}

/// Endpoints.
pub fn endpoints(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    for (sp, subset) in obj_items(&mut e, o, "", "subsets") {
        let addresses = obj_items(&mut e, subset, &sp, "addresses");
        let not_ready = obj_items(&mut e, subset, &sp, "notReadyAddresses");
        if addresses.is_empty() && not_ready.is_empty() {
            e.push(required(
                &sp,
                "must specify `addresses` or `notReadyAddresses`",
            ));
        }
        for (ap, addr) in addresses.iter().chain(&not_ready) {
            match get_str(&mut e, addr, ap, "ip") {
                None | Some("") => e.push(Cause::required(child(ap, "ip"))),
                Some(ip) => endpoint_ip(&mut e, &child(ap, "ip"), ip),
            }
            if let Some(host) = get_str(&mut e, addr, ap, "hostname")
                && !host.is_empty()
            {
                invalid_each(
                    &mut e,
                    &child(ap, "hostname"),
                    host,
                    names::is_dns1123_label(host),
                );
            }
            if let Some(node) = get_str(&mut e, addr, ap, "nodeName")
                && !node.is_empty()
            {
                invalid_each(
                    &mut e,
                    &child(ap, "nodeName"),
                    node,
                    names::is_dns1123_subdomain(node),
                );
            }
        }
        let ports = obj_items(&mut e, subset, &sp, "ports");
        for (pp, port) in &ports {
            let name = str_or_empty(&mut e, port, pp, "name");
            if ports.len() > 1 && name.is_empty() {
                e.push(Cause::required(child(pp, "name")));
            } else if !name.is_empty() {
                invalid_each(
                    &mut e,
                    &child(pp, "name"),
                    name,
                    names::is_dns1123_label(name),
                );
            }
            let number = get_int(&mut e, port, pp, "port");
            if !number.is_some_and(|n| (1..=65535).contains(&n))
                && present(port, "port").is_none_or(|v| as_int(v).is_some())
            {
                e.push(Cause::invalid(
                    child(pp, "port"),
                    &json!(number.unwrap_or(0)),
                    PORT_RANGE,
                ));
            }
            supported(&mut e, port, pp, "protocol", PROTOCOLS, true);
            if let Some(app) = get_str(&mut e, port, pp, "appProtocol") {
                invalid_each(
                    &mut e,
                    &child(pp, "appProtocol"),
                    app,
                    names::is_qualified_name(app),
                );
            }
        }
    }
    finish(e)
}

// ---------------------------------------------------------------------------------------------
// ConfigMaps and Secrets.

/// Decoded length of standard base64, or the offset of the first illegal byte.
fn base64_len(s: &str) -> Result<usize, usize> {
    let bytes = s.as_bytes();
    let pad = bytes.iter().rev().take_while(|b| **b == b'=').count();
    let body = &bytes[..bytes.len() - pad];
    if let Some(i) = body
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/'))
    {
        return Err(i);
    }
    if !bytes.len().is_multiple_of(4) || pad > 2 {
        return Err(bytes.len() / 4 * 4);
    }
    Ok(bytes.len() / 4 * 3 - pad)
}

/// Data keys and total size. `base64` for byte maps (`binaryData`, Secret `data`).
fn data_map(e: &mut Vec<Cause>, o: &Obj, key: &str, base64: bool) -> (usize, Vec<String>) {
    let mut total = 0;
    let mut keys = Vec::new();
    let Some(map) = get_obj(e, o, "", key) else {
        return (0, keys);
    };
    for (k, v) in map {
        let path = key_path(key, k);
        invalid_each(e, &path, k, config_key_errors(k));
        keys.push(k.clone());
        match v.as_str() {
            None if v.is_null() => {}
            None => e.push(type_error(&path, v, "a string")),
            Some(s) if base64 => match base64_len(s) {
                Ok(n) => total += n,
                Err(at) => e.push(Cause::invalid(
                    &path,
                    &json!("<secret contents redacted>"),
                    &format!("illegal base64 data at input byte {at}"),
                )),
            },
            Some(s) => total += s.len(),
        }
    }
    (total, keys)
}

fn immutable_data(e: &mut Vec<Cause>, o: &Obj, old: Option<&Value>, keys: &[&str]) {
    let Some(old) = old.and_then(Value::as_object) else {
        return;
    };
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    const MSG: &str = "field is immutable when `immutable` is set";
    if o.get("immutable").and_then(Value::as_bool) != Some(true) {
        e.push(Cause::forbidden("immutable", MSG));
    }
    for key in keys {
        let n = present(o, key)
            .map(normalized)
            .filter(|v| v.as_object().is_none_or(|m| !m.is_empty()));
        let p = present(old, key)
            .map(normalized)
            .filter(|v| v.as_object().is_none_or(|m| !m.is_empty()));
        if n != p {
            e.push(Cause::forbidden(*key, MSG));
        }
    }
}

/// A ConfigMap.
pub fn configmap(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    get_bool(&mut e, o, "", "immutable");
    let (text, text_keys) = data_map(&mut e, o, "data", false);
    let (binary, binary_keys) = data_map(&mut e, o, "binaryData", true);
    for k in &text_keys {
        if binary_keys.contains(k) {
            e.push(invalid_str(
                key_path("data", k),
                k,
                "duplicate of key present in binaryData",
            ));
        }
    }
    if text + binary > MAX_DATA_SIZE {
        e.push(too_long("", MAX_DATA_SIZE));
    }
    immutable_data(&mut e, o, old, &["data", "binaryData"]);
    finish(e)
}

/// A Secret.
pub fn secret(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    get_bool(&mut e, o, "", "immutable");
    let (size, keys) = data_map(&mut e, o, "data", true);
    if size > MAX_DATA_SIZE {
        e.push(too_long("data", MAX_DATA_SIZE));
    }
    if let Some(string_data) = get_obj(&mut e, o, "", "stringData") {
        for (k, v) in string_data {
            if !v.is_string() {
                e.push(type_error(&key_path("stringData", k), v, "a string"));
            }
        }
    }
    let has = |k: &str| keys.iter().any(|x| x == k);
    let data = o.get("data").and_then(Value::as_object);
    let value_of = |k: &str| {
        data.and_then(|d| d.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    match str_or_empty(&mut e, o, "", "type") {
        "kubernetes.io/service-account-token" => {
            let name = o
                .get("metadata")
                .and_then(|m| m.get("annotations"))
                .and_then(|a| a.get("kubernetes.io/service-account.name"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if name.is_empty() {
                e.push(Cause::required(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                ));
            }
        }
        "kubernetes.io/dockercfg" | "kubernetes.io/dockerconfigjson" => {
            let key = if str_or_empty(&mut e, o, "", "type") == "kubernetes.io/dockercfg" {
                ".dockercfg"
            } else {
                ".dockerconfigjson"
            };
            if !has(key) {
                e.push(Cause::required(key_path("data", key)));
            } else if let Some(bytes) = base64_decode(value_of(key))
                && serde_json::from_slice::<Map<String, Value>>(&bytes).is_err()
            {
                e.push(Cause::invalid(
                    key_path("data", key),
                    &json!("<secret contents redacted>"),
                    "must be a JSON object",
                ));
            }
        }
        "kubernetes.io/basic-auth" if !has("username") && !has("password") => {
            e.push(Cause::required("data[username]"));
            e.push(Cause::required("data[password]"));
        }
        "kubernetes.io/ssh-auth" if value_of("ssh-privatekey").is_empty() => {
            e.push(Cause::required("data[ssh-privatekey]"));
        }
        "kubernetes.io/tls" => {
            for key in ["tls.crt", "tls.key"] {
                if !has(key) {
                    e.push(Cause::required(key_path("data", key)));
                }
            }
        }
        _ => {}
    }
    if let Some(old_o) = old.and_then(Value::as_object) {
        let old_type = old_o.get("type").cloned().unwrap_or(json!(""));
        let new_type = o.get("type").cloned().unwrap_or(json!(""));
        if old_type != new_type {
            e.push(immutable("type", Some(&new_type)));
        }
    }
    immutable_data(&mut e, o, old, &["data"]);
    finish(e)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    base64_len(s).ok()?;
    let value = |b: u8| -> Option<u32> {
        Some(match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|b| **b == b'=').count();
        let mut n = 0u32;
        for b in chunk {
            n = (n << 6) | if *b == b'=' { 0 } else { value(*b)? };
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Cluster-level and small kinds.

/// A Namespace.
pub fn namespace(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Label, false);
    if let Some(spec) = get_obj(&mut e, o, "", "spec") {
        for (_, f) in str_items(&mut e, spec, "spec", "finalizers") {
            finalizer_name(&mut e, "spec.finalizers", f);
        }
    }
    if let Some(status) = get_obj(&mut e, o, "", "status") {
        supported(
            &mut e,
            status,
            "status",
            "phase",
            &["Active", "Terminating"],
            false,
        );
    }
    finish(e)
}

fn taints(e: &mut Vec<Cause>, spec: &Obj, p: &str) {
    let mut seen = HashSet::new();
    for (tp, t) in obj_items(e, spec, p, "taints") {
        let key = str_or_empty(e, t, &tp, "key");
        if key.is_empty() {
            e.push(Cause::required(child(&tp, "key")));
        } else {
            invalid_each(e, &child(&tp, "key"), key, names::is_qualified_name(key));
        }
        let value = str_or_empty(e, t, &tp, "value");
        invalid_each(
            e,
            &child(&tp, "value"),
            value,
            names::is_valid_label_value(value),
        );
        let effect = str_or_empty(e, t, &tp, "effect");
        if effect.is_empty() {
            e.push(Cause::required(child(&tp, "effect")));
        } else if !TAINT_EFFECTS.contains(&effect) {
            e.push(Cause::not_supported(
                child(&tp, "effect"),
                &json!(effect),
                TAINT_EFFECTS,
            ));
        }
        timestamp(e, t, &tp, "timeAdded");
        if !seen.insert((key.to_string(), effect.to_string())) {
            let mut c = duplicate(&tp, &Value::Object(t.clone()));
            c.message
                .push_str(": taints must be unique by key and effect pair");
            e.push(c);
        }
    }
}

/// A Node.
pub fn node(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, false);
    let empty = Obj::new();
    let spec = get_obj(&mut e, o, "", "spec").unwrap_or(&empty);
    let p = "spec";
    taints(&mut e, spec, p);
    get_bool(&mut e, spec, p, "unschedulable");
    if let Some(cidr) = get_str(&mut e, spec, p, "podCIDR")
        && !cidr.is_empty()
        && !valid_cidr(cidr)
    {
        e.push(invalid_str(
            "spec.podCIDR",
            cidr,
            "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
        ));
    }
    let cidrs = str_items(&mut e, spec, p, "podCIDRs");
    for (cp, cidr) in &cidrs {
        if !valid_cidr(cidr) {
            e.push(invalid_str(
                cp.as_str(),
                cidr,
                "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)",
            ));
        }
    }
    if cidrs.len() > 2 {
        e.push(Cause::invalid(
            "spec.podCIDRs",
            &json!(cidrs.iter().map(|(_, c)| *c).collect::<Vec<_>>()),
            "may specify no more than one CIDR for each IP family",
        ));
    }
    get_str(&mut e, spec, p, "providerID");
    if let Some(status) = get_obj(&mut e, o, "", "status") {
        for key in ["capacity", "allocatable"] {
            if let Some(list) = get_obj(&mut e, status, "status", key) {
                for (name, q) in list {
                    let path = key_path(&child("status", key), name);
                    match parse_quantity(q) {
                        None => e.push(Cause::invalid(&path, q, QUANTITY_SYNTAX)),
                        Some(v) if v < 0.0 => e.push(Cause::invalid(&path, q, NEGATIVE)),
                        Some(_) => {}
                    }
                }
            }
        }
    }
    if let Some(old_spec) = old.and_then(|o| o.get("spec")).and_then(Value::as_object) {
        let old_cidrs = old_spec
            .get("podCIDRs")
            .map(normalized)
            .filter(|v| !v.is_null());
        if old_cidrs.is_some() && old_cidrs != present(spec, "podCIDRs").map(normalized) {
            e.push(Cause::forbidden(
                "spec.podCIDRs",
                "node updates may not change podCIDR except from \"\" to valid",
            ));
        }
        let old_provider = old_spec
            .get("providerID")
            .and_then(Value::as_str)
            .unwrap_or("");
        let new_provider = spec.get("providerID").and_then(Value::as_str).unwrap_or("");
        if !old_provider.is_empty() && old_provider != new_provider {
            e.push(Cause::forbidden(
                "spec.providerID",
                "node updates may not change providerID except from \"\" to valid",
            ));
        }
    }
    finish(e)
}

/// A ServiceAccount: its metadata, secret references and image pull secrets by name.
pub fn service_account(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    for key in ["secrets", "imagePullSecrets"] {
        for (rp, r) in obj_items(&mut e, o, "", key) {
            get_str(&mut e, r, &rp, "name");
        }
    }
    get_bool(&mut e, o, "", "automountServiceAccountToken");
    finish(e)
}

/// A Lease (coordination.k8s.io/v1).
pub fn lease(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    let Some(spec) = get_obj(&mut e, o, "", "spec") else {
        return e;
    };
    let p = "spec";
    get_str(&mut e, spec, p, "holderIdentity");
    if let Some(d) = get_int(&mut e, spec, p, "leaseDurationSeconds")
        && d <= 0
    {
        e.push(Cause::invalid(
            "spec.leaseDurationSeconds",
            &json!(d),
            "must be greater than 0",
        ));
    }
    if let Some(t) = get_int(&mut e, spec, p, "leaseTransitions")
        && t < 0
    {
        e.push(Cause::invalid("spec.leaseTransitions", &json!(t), NEGATIVE));
    }
    timestamp(&mut e, spec, p, "acquireTime");
    timestamp(&mut e, spec, p, "renewTime");
    if let Some(strategy) = get_str(&mut e, spec, p, "strategy") {
        if strategy.is_empty() {
            e.push(Cause::required("spec.strategy"));
        } else if strategy != "OldestEmulationVersion" {
            e.push(Cause::not_supported(
                "spec.strategy",
                &json!(strategy),
                &["OldestEmulationVersion"],
            ));
        }
    }
    if let Some(holder) = get_str(&mut e, spec, p, "preferredHolder")
        && !holder.is_empty()
        && present(spec, "strategy").is_none()
    {
        e.push(Cause::forbidden(
            "spec.preferredHolder",
            "may only be specified if `strategy` is defined",
        ));
    }
    finish(e)
}

// ---------------------------------------------------------------------------------------------
// Events.

const REPORTING_INSTANCE_MAX: usize = 128;
const ACTION_MAX: usize = 128;
const REASON_MAX: usize = 128;
const NOTE_MAX: usize = 1024;

/// The checks core/v1 and events.k8s.io/v1 share (legacyValidateEvent), given the field names of
/// the request's version.
struct EventShape {
    regarding: &'static str,
    reporting_controller: &'static str,
    reporting_controller_path: &'static str,
    note: &'static str,
}

fn event_common(e: &mut Vec<Cause>, o: &Obj, shape: &EventShape) {
    let namespace = o
        .get("metadata")
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let empty = Obj::new();
    let regarding = get_obj(e, o, "", shape.regarding).unwrap_or(&empty);
    let involved_ns = str_or_empty(e, regarding, shape.regarding, "namespace");
    let ns_path = child(shape.regarding, "namespace");
    let event_time = present(o, "eventTime")
        .and_then(Value::as_str)
        .unwrap_or("");
    if event_time.is_empty() {
        let mismatch = if involved_ns.is_empty() {
            !namespace.is_empty() && namespace != "default"
        } else {
            involved_ns != namespace
        };
        if mismatch {
            e.push(invalid_str(
                &ns_path,
                involved_ns,
                "does not match event.namespace",
            ));
        }
    } else {
        if involved_ns.is_empty() && namespace != "default" && namespace != "kube-system" {
            e.push(invalid_str(
                &ns_path,
                involved_ns,
                "does not match event.namespace",
            ));
        }
        let controller = str_or_empty(e, o, "", shape.reporting_controller);
        if controller.is_empty() {
            e.push(Cause::required(shape.reporting_controller_path));
        }
        invalid_each(
            e,
            shape.reporting_controller_path,
            controller,
            names::is_qualified_name(controller),
        );
        for (key, max) in [
            ("reportingInstance", REPORTING_INSTANCE_MAX),
            ("action", ACTION_MAX),
            ("reason", REASON_MAX),
        ] {
            let v = str_or_empty(e, o, "", key);
            if v.is_empty() {
                e.push(Cause::required(key));
            }
            if v.len() > max {
                e.push(invalid_str(
                    key,
                    "",
                    &format!("can have at most {max} characters"),
                ));
            }
        }
    }
    if str_or_empty(e, o, "", shape.note).len() > NOTE_MAX {
        e.push(invalid_str(
            shape.note,
            "",
            &format!("can have at most {NOTE_MAX} characters"),
        ));
    }
    if !event_time.is_empty() && !valid_timestamp(event_time) {
        e.push(invalid_str(
            "eventTime",
            event_time,
            "must be an RFC 3339 timestamp",
        ));
    }
}

/// A core/v1 Event.
pub fn event(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    let shape = EventShape {
        regarding: "involvedObject",
        reporting_controller: "reportingComponent",
        reporting_controller_path: "source",
        note: "message",
    };
    event_common(&mut e, o, &shape);
    get_int(&mut e, o, "", "count");
    for key in ["firstTimestamp", "lastTimestamp"] {
        timestamp(&mut e, o, "", key);
    }
    finish(e)
}

/// An events.k8s.io/v1 Event: the legacy checks plus the strict ones of the new API, and on
/// update everything but `series` (and metadata) is immutable.
pub fn event_v1(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut e = Vec::new();
    let Some(o) = root(&mut e, obj) else { return e };
    meta_checks(&mut e, o, old, NameRule::Subdomain, true);
    let shape = EventShape {
        regarding: "regarding",
        reporting_controller: "reportingController",
        reporting_controller_path: "reportingController",
        note: "note",
    };
    event_common(&mut e, o, &shape);
    if let Some(series) = get_obj(&mut e, o, "", "series") {
        if get_int(&mut e, series, "series", "count").unwrap_or(0) < 2 {
            e.push(invalid_str("series.count", "", "should be at least 2"));
        }
        if timestamp(&mut e, series, "series", "lastObservedTime").is_none() {
            e.push(Cause::required("series.lastObservedTime"));
        }
    }
    if present(o, "eventTime")
        .and_then(Value::as_str)
        .unwrap_or("")
        .is_empty()
    {
        e.push(Cause::required("eventTime"));
    }
    let type_ = present(o, "type").and_then(Value::as_str).unwrap_or("");
    if type_ != "Normal" && type_ != "Warning" {
        e.push(invalid_str(
            "type",
            "",
            &format!("has invalid value: {type_}"),
        ));
    }
    for key in ["deprecatedFirstTimestamp", "deprecatedLastTimestamp"] {
        if present(o, key).is_some() {
            e.push(invalid_str(key, "", "needs to be unset"));
        }
    }
    if present(o, "deprecatedCount")
        .and_then(as_int)
        .is_some_and(|c| c != 0)
    {
        e.push(invalid_str("deprecatedCount", "", "needs to be unset"));
    }
    if let Some(source) = present(o, "deprecatedSource").and_then(Value::as_object)
        && ["component", "host"].iter().any(|k| {
            source
                .get(*k)
                .and_then(Value::as_str)
                .is_some_and(|s| !s.is_empty())
        })
    {
        e.push(invalid_str("deprecatedSource", "", "needs to be unset"));
    }
    if let Some(old) = old.and_then(Value::as_object) {
        for key in [
            "regarding",
            "reason",
            "note",
            "deprecatedSource",
            "deprecatedFirstTimestamp",
            "deprecatedLastTimestamp",
            "deprecatedCount",
            "type",
            "eventTime",
            "action",
            "related",
            "reportingController",
            "reportingInstance",
        ] {
            let n = present(o, key).map(normalized);
            let p = present(old, key).map(normalized);
            if n != p {
                e.push(immutable(key, present(o, key)));
            }
        }
    }
    finish(e)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::defaults;

    /// The causes at `field`, as `reason: message`.
    fn at(causes: &[Cause], field: &str) -> Vec<String> {
        causes
            .iter()
            .filter(|c| c.field == field)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .collect()
    }

    fn only(causes: &[Cause], field: &str) -> String {
        let found = at(causes, field);
        assert_eq!(
            found.len(),
            1,
            "expected one cause at {field}, got {causes:#?}"
        );
        found[0].clone()
    }

    fn fields(causes: &[Cause]) -> Vec<&str> {
        causes.iter().map(|c| c.field.as_str()).collect()
    }

    /// What `kubectl create deployment web --image=nginx` sends, defaulted as the server does.
    fn deployment_obj() -> Value {
        let mut d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}},
                "strategy": {}
            },
            "status": {}
        });
        defaults::deployment(&mut d);
        d
    }

    fn pod_obj() -> Value {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "default", "labels": {"run": "web"}},
            "spec": {
                "containers": [{"name": "web", "image": "nginx:1.27", "ports": [{"containerPort": 80, "name": "http"}],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "128Mi"}}}],
                "volumes": [{"name": "data", "emptyDir": {}}]
            }
        });
        defaults::pod(&mut p);
        defaults::pod_default_tolerations(&mut p);
        p
    }

    fn set(v: &mut Value, pointer: &str, value: Value) {
        *v.pointer_mut(pointer).unwrap() = value;
    }

    // ---- metadata -------------------------------------------------------------------------

    #[test]
    fn realistic_objects_are_valid() {
        assert_eq!(deployment(&deployment_obj(), None), vec![]);
        assert_eq!(pod(&pod_obj(), None), vec![]);
        let mut rs = json!({"metadata": {"name": "web-5d8f", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d8f"}},
                "template": {"metadata": {"labels": {"app": "web", "pod-template-hash": "5d8f"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx"}]}}}});
        defaults::replicaset(&mut rs);
        assert_eq!(replicaset(&rs, None), vec![]);
    }

    #[test]
    fn name_required_unless_generate_name() {
        let mut d = deployment_obj();
        d["metadata"].as_object_mut().unwrap().remove("name");
        let causes = deployment(&d, None);
        assert_eq!(
            only(&causes, "metadata.name"),
            "FieldValueRequired: Required value: name or generateName is required"
        );
        d["metadata"]["generateName"] = json!("web-");
        assert_eq!(deployment(&d, None), vec![]);
        d["metadata"]["generateName"] = json!("Web-");
        assert!(
            only(&deployment(&d, None), "metadata.generateName").starts_with(
                "FieldValueInvalid: Invalid value: \"Web-\": a lowercase RFC 1123 subdomain"
            )
        );
    }

    #[test]
    fn name_syntax_per_kind() {
        let mut d = deployment_obj();
        d["metadata"]["name"] = json!("Web_1");
        let c = only(&deployment(&d, None), "metadata.name");
        assert!(c.starts_with("FieldValueInvalid: Invalid value: \"Web_1\": a lowercase RFC 1123 subdomain must consist of"), "{c}");
        // dots are fine in subdomains, not in namespace names (labels) nor service names (DNS-1035)
        d["metadata"]["name"] = json!("web.v2");
        assert_eq!(deployment(&d, None), vec![]);
        let ns = json!({"metadata": {"name": "web.v2"}});
        assert!(
            only(&namespace(&ns, None), "metadata.name")
                .ends_with("Invalid value: \"web.v2\": must not contain dots")
        );
        let svc = json!({"metadata": {"name": "1web", "namespace": "default"},
            "spec": {"type": "ClusterIP", "sessionAffinity": "None", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}});
        assert!(only(&service(&svc, None), "metadata.name").contains("DNS-1035 label"));
    }

    #[test]
    fn metadata_labels_namespace_owner_refs_finalizers() {
        let mut d = deployment_obj();
        d["metadata"]["labels"] = json!({"app": "web", "bad key!": "x"});
        d["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "", "kind": "X", "name": "", "uid": "u"}]);
        d["metadata"]["finalizers"] = json!(["custom", "example.com/cleanup"]);
        d["metadata"]["generation"] = json!(-1);
        let causes = deployment(&d, None);
        assert!(!at(&causes, "metadata.labels").is_empty(), "{causes:#?}");
        assert_eq!(
            only(&causes, "metadata.ownerReferences.apiVersion"),
            "FieldValueInvalid: Invalid value: \"\": version must not be empty"
        );
        assert_eq!(
            only(&causes, "metadata.ownerReferences.name"),
            "FieldValueInvalid: Invalid value: \"\": name must not be empty"
        );
        assert_eq!(
            only(&causes, "metadata.finalizers"),
            "FieldValueInvalid: Invalid value: \"custom\": name is neither a standard finalizer name nor is it fully qualified"
        );
        assert_eq!(
            only(&causes, "metadata.generation"),
            "FieldValueInvalid: Invalid value: -1: must be greater than or equal to 0"
        );
        // cluster-scoped kinds refuse a namespace
        let ns = json!({"metadata": {"name": "dev", "namespace": "default"}});
        assert_eq!(
            only(&namespace(&ns, None), "metadata.namespace"),
            "FieldValueForbidden: Forbidden: not allowed on this type"
        );
    }

    #[test]
    fn metadata_update_name_and_uid_immutable() {
        let mut old = deployment_obj();
        old["metadata"]["uid"] = json!("u1");
        let mut new = old.clone();
        new["metadata"]["name"] = json!("other");
        assert_eq!(
            only(&deployment(&new, Some(&old)), "metadata.name"),
            "FieldValueInvalid: Invalid value: \"other\": field is immutable"
        );
        let mut new = old.clone();
        new["metadata"].as_object_mut().unwrap().remove("uid");
        assert_eq!(deployment(&new, Some(&old)), vec![]);
        new["metadata"]["uid"] = json!("u2");
        assert_eq!(
            only(&deployment(&new, Some(&old)), "metadata.uid"),
            "FieldValueInvalid: Invalid value: \"u2\": field is immutable"
        );
    }

    // ---- deployments and replicasets ------------------------------------------------------

    #[test]
    fn deployment_without_selector_as_upstream() {
        let mut d = deployment_obj();
        d["spec"].as_object_mut().unwrap().remove("selector");
        let causes = deployment(&d, None);
        assert_eq!(
            fields(&causes),
            vec!["spec.selector", "spec.template.metadata.labels"]
        );
        assert_eq!(causes[0].message, "Required value");
        assert_eq!(
            causes[1].message,
            "Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`"
        );
    }

    #[test]
    fn deployment_selector_rules() {
        let mut d = deployment_obj();
        d["spec"]["selector"] = json!({"matchLabels": {"app": "api"}});
        assert_eq!(
            only(&deployment(&d, None), "spec.template.metadata.labels"),
            "FieldValueInvalid: Invalid value: map[string]string{\"app\":\"web\"}: `selector` does not match template `labels`"
        );
        d["spec"]["selector"] = json!({});
        assert_eq!(
            only(&deployment(&d, None), "spec.selector"),
            "FieldValueInvalid: Invalid value: {}: empty selector is invalid for deployment"
        );
        d["spec"]["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]},
            {"key": "tier", "operator": "DoesNotExist"}]});
        assert_eq!(deployment(&d, None), vec![]);
        d["spec"]["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "In"},
            {"key": "x", "operator": "Exists", "values": ["a"]}, {"key": "y", "operator": "Near"}]});
        let causes = deployment(&d, None);
        assert_eq!(
            only(&causes, "spec.selector.matchExpressions[0].values"),
            "FieldValueRequired: Required value: must be specified when `operator` is 'In' or 'NotIn'"
        );
        assert_eq!(
            only(&causes, "spec.selector.matchExpressions[1].values"),
            "FieldValueForbidden: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        );
        assert_eq!(
            only(&causes, "spec.selector.matchExpressions[2].operator"),
            "FieldValueInvalid: Invalid value: \"Near\": not a valid selector operator"
        );
        assert!(only(&causes, "spec.selector").ends_with("invalid label selector"));
    }

    #[test]
    fn deployment_spec_values() {
        let mut d = deployment_obj();
        d["spec"]["replicas"] = json!(-1);
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": "0%"});
        d["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
        d["spec"]["revisionHistoryLimit"] = json!(-2);
        d["spec"]["minReadySeconds"] = json!(900);
        let causes = deployment(&d, None);
        assert_eq!(
            only(&causes, "spec.replicas"),
            "FieldValueInvalid: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            only(&causes, "spec.strategy.rollingUpdate.maxUnavailable"),
            "FieldValueInvalid: Invalid value: \"0%\": may not be 0 when `maxSurge` is 0"
        );
        assert_eq!(
            only(&causes, "spec.template.spec.restartPolicy"),
            "FieldValueNotSupported: Unsupported value: \"Never\": supported values: \"Always\""
        );
        assert_eq!(
            only(&causes, "spec.revisionHistoryLimit"),
            "FieldValueInvalid: Invalid value: -2: must be greater than or equal to 0"
        );
        assert_eq!(
            only(&causes, "spec.progressDeadlineSeconds"),
            "FieldValueInvalid: Invalid value: 600: must be greater than minReadySeconds"
        );

        let mut d = deployment_obj();
        d["spec"]["strategy"] = json!({"type": "Recreate", "rollingUpdate": {}});
        assert_eq!(
            only(&deployment(&d, None), "spec.strategy.rollingUpdate"),
            "FieldValueForbidden: Forbidden: may not be specified when strategy `type` is 'Recreate'"
        );
        d["spec"]["strategy"] = json!({"type": "BlueGreen"});
        assert_eq!(
            only(&deployment(&d, None), "spec.strategy"),
            "FieldValueNotSupported: Unsupported value: \"BlueGreen\": supported values: \"Recreate\", \"RollingUpdate\""
        );
        d["spec"]["strategy"] = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "x%", "maxUnavailable": "150%"}});
        let causes = deployment(&d, None);
        assert!(
            only(&causes, "spec.strategy.rollingUpdate.maxSurge")
                .contains("a valid percent string must be")
        );
        assert_eq!(
            only(&causes, "spec.strategy.rollingUpdate.maxUnavailable"),
            "FieldValueInvalid: Invalid value: \"150%\": must not be greater than 100%"
        );
    }

    #[test]
    fn deployment_template_pod_spec_paths() {
        let mut d = deployment_obj();
        set(&mut d, "/spec/template/spec/containers/0/image", json!(""));
        assert_eq!(
            only(
                &deployment(&d, None),
                "spec.template.spec.containers[0].image"
            ),
            "FieldValueRequired: Required value"
        );
    }

    #[test]
    fn deployment_and_replicaset_selector_immutable() {
        let old = deployment_obj();
        let mut new = old.clone();
        new["spec"]["replicas"] = json!(5);
        set(
            &mut new,
            "/spec/template/spec/containers/0/image",
            json!("nginx:1.27"),
        );
        assert_eq!(deployment(&new, Some(&old)), vec![]);
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "v": "2"}});
        new["spec"]["template"]["metadata"]["labels"]["v"] = json!("2");
        assert_eq!(
            only(&deployment(&new, Some(&old)), "spec.selector"),
            "FieldValueInvalid: Invalid value: {\"matchLabels\":{\"app\":\"web\",\"v\":\"2\"}}: field is immutable"
        );
        let mut rs_old = json!({"metadata": {"name": "rs", "namespace": "d"}, "spec": {"selector": {"matchLabels": {"a": "b"}},
            "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        defaults::replicaset(&mut rs_old);
        let mut rs_new = rs_old.clone();
        rs_new["spec"]["selector"]["matchLabels"] = json!({"a": "b", "c": "d"});
        let causes = replicaset(&rs_new, Some(&rs_old));
        assert_eq!(
            fields(&causes),
            vec!["spec.template.metadata.labels", "spec.selector"]
        );
        assert!(causes[1].message.ends_with("field is immutable"));
    }

    // ---- pods -------------------------------------------------------------------------------

    #[test]
    fn pod_requires_containers_and_images() {
        let mut p = pod_obj();
        p["spec"]["containers"] = json!([]);
        assert_eq!(
            only(&pod(&p, None), "spec.containers"),
            "FieldValueRequired: Required value"
        );
        let mut p = pod_obj();
        p["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("image");
        assert_eq!(
            only(&pod(&p, None), "spec.containers[0].image"),
            "FieldValueRequired: Required value"
        );
        let mut p = json!({"metadata": {"name": "x"}});
        defaults::pod(&mut p);
        assert_eq!(fields(&pod(&p, None)), vec!["spec.containers"]);
    }

    #[test]
    fn pod_container_names() {
        let mut p = pod_obj();
        p["spec"]["initContainers"] =
            json!([{"name": "web", "image": "busybox"}, {"name": "Init_1", "image": "busybox"}]);
        p["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "web", "image": "x"}));
        defaults::pod(&mut p);
        let causes = pod(&p, None);
        assert_eq!(
            only(&causes, "spec.containers[1].name"),
            "FieldValueDuplicate: Duplicate value: \"web\""
        );
        assert_eq!(
            only(&causes, "spec.initContainers[0].name"),
            "FieldValueDuplicate: Duplicate value: \"web\""
        );
        assert!(only(&causes, "spec.initContainers[1].name").starts_with(
            "FieldValueInvalid: Invalid value: \"Init_1\": a lowercase RFC 1123 label"
        ));
        p["spec"]["containers"][1]["name"] = json!("");
        assert!(
            at(&pod(&p, None), "spec.containers[1].name")
                .contains(&"FieldValueRequired: Required value".to_string())
        );
    }

    #[test]
    fn pod_ports() {
        let mut p = pod_obj();
        p["spec"]["containers"][0]["ports"] = json!([
            {"containerPort": 70000, "protocol": "TCP"},
            {"containerPort": 0, "protocol": "TCP"},
            {"containerPort": 81, "name": "a-very-long-port-name", "protocol": "TCP"},
            {"containerPort": 82, "name": "http", "protocol": "TCP"},
            {"containerPort": 83, "name": "http", "protocol": "ICMP"},
            {"containerPort": 84, "name": "8080", "protocol": "TCP", "hostPort": 8080}
        ]);
        let causes = pod(&p, None);
        let pp = "spec.containers[0].ports";
        assert_eq!(
            only(&causes, &format!("{pp}[0].containerPort")),
            "FieldValueInvalid: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        assert_eq!(
            only(&causes, &format!("{pp}[1].containerPort")),
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, &format!("{pp}[2].name")),
            "FieldValueInvalid: Invalid value: \"a-very-long-port-name\": must be no more than 15 characters"
        );
        assert_eq!(
            only(&causes, &format!("{pp}[4].name")),
            "FieldValueDuplicate: Duplicate value: \"http\""
        );
        assert_eq!(
            only(&causes, &format!("{pp}[4].protocol")),
            "FieldValueNotSupported: Unsupported value: \"ICMP\": supported values: \"SCTP\", \"TCP\", \"UDP\""
        );
        assert_eq!(
            only(&causes, &format!("{pp}[5].name")),
            "FieldValueInvalid: Invalid value: \"8080\": must contain at least one letter (a-z)"
        );
        // host ports collide across containers
        p["spec"]["containers"][0]["ports"] =
            json!([{"containerPort": 80, "hostPort": 80, "protocol": "TCP"}]);
        p["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "b", "image": "b",
            "imagePullPolicy": "Always", "terminationMessagePolicy": "File",
            "ports": [{"containerPort": 80, "hostPort": 80, "protocol": "TCP"}]}));
        assert_eq!(
            only(&pod(&p, None), "spec.containers[1].ports[0].hostPort"),
            "FieldValueDuplicate: Duplicate value: \"TCP//80\""
        );
        // with the host's network, container ports are host ports
        let mut host = json!({"metadata": {"name": "h"}, "spec": {"hostNetwork": true,
            "containers": [{"name": "a", "image": "a", "ports": [{"containerPort": 80, "hostPort": 8080}]}]}});
        defaults::pod(&mut host);
        assert_eq!(
            only(
                &pod(&host, None),
                "spec.containers[0].ports[0].containerPort"
            ),
            "FieldValueInvalid: Invalid value: 80: must match `hostPort` when `hostNetwork` is true"
        );
        host["spec"]["containers"][0]["ports"][0]["hostPort"] = json!(80);
        assert_eq!(pod(&host, None), vec![]);
    }

    #[test]
    fn pod_policies() {
        let mut p = pod_obj();
        p["spec"]["restartPolicy"] = json!("Sometimes");
        p["spec"]["dnsPolicy"] = json!("Google");
        p["spec"]["containers"][0]["imagePullPolicy"] = json!("Maybe");
        let causes = pod(&p, None);
        assert_eq!(
            only(&causes, "spec.restartPolicy"),
            "FieldValueNotSupported: Unsupported value: \"Sometimes\": supported values: \"Always\", \"OnFailure\", \"Never\""
        );
        assert_eq!(
            only(&causes, "spec.dnsPolicy"),
            "FieldValueNotSupported: Unsupported value: \"Google\": supported values: \"ClusterFirstWithHostNet\", \"ClusterFirst\", \"Default\", \"None\""
        );
        assert_eq!(
            only(&causes, "spec.containers[0].imagePullPolicy"),
            "FieldValueNotSupported: Unsupported value: \"Maybe\": supported values: \"Always\", \"IfNotPresent\", \"Never\""
        );
        // without defaulting, the policies are required (upstream defaults them first)
        let raw = json!({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "x", "image": "x"}]}});
        let causes = pod(&raw, None);
        for f in [
            "spec.restartPolicy",
            "spec.dnsPolicy",
            "spec.containers[0].imagePullPolicy",
        ] {
            assert_eq!(only(&causes, f), "FieldValueRequired: Required value");
        }
    }

    #[test]
    fn pod_resources() {
        let mut p = pod_obj();
        p["spec"]["containers"][0]["resources"] = json!({
            "requests": {"cpu": "2", "memory": "1Gi", "gpu": "1", "example.com/foo": "1"},
            "limits": {"cpu": "1", "memory": "2Gi", "example.com/foo": "2"}
        });
        let causes = pod(&p, None);
        let requests = at(&causes, "spec.containers[0].resources.requests");
        assert!(requests.contains(&"FieldValueInvalid: Invalid value: \"2\": must be less than or equal to cpu limit of 1".to_string()), "{causes:#?}");
        assert!(requests.contains(&"FieldValueInvalid: Invalid value: \"1\": must be equal to example.com/foo limit of 2".to_string()));
        assert_eq!(requests.len(), 2);
        assert_eq!(
            only(&causes, "spec.containers[0].resources.requests[gpu]"),
            "FieldValueInvalid: Invalid value: \"gpu\": must be a standard resource for containers"
        );
        p["spec"]["containers"][0]["resources"] = json!({"limits": {"cpu": "-1", "memory": "lots"}, "requests": {"cpu": "500m", "memory": 1024}});
        let causes = pod(&p, None);
        assert_eq!(
            only(&causes, "spec.containers[0].resources.limits[cpu]"),
            "FieldValueInvalid: Invalid value: \"-1\": must be greater than or equal to 0"
        );
        assert!(
            only(&causes, "spec.containers[0].resources.limits[memory]")
                .contains("quantities must match the regular expression")
        );
        // quantities compare across units
        assert_eq!(parse_quantity(&json!("1500m")), Some(1.5));
        assert_eq!(
            parse_quantity(&json!("1Gi")),
            parse_quantity(&json!("1024Mi"))
        );
        assert_eq!(parse_quantity(&json!("1e3")), Some(1000.0));
        assert_eq!(parse_quantity(&json!(".5")), Some(0.5));
        assert_eq!(parse_quantity(&json!("1.")), Some(1.0));
        for bad in ["", "Gi", "1.2.3", "1GB", "1e", "e3", "--1"] {
            assert_eq!(parse_quantity(&json!(bad)), None, "{bad}");
        }
    }

    #[test]
    fn pod_volumes_and_mounts() {
        let mut p = pod_obj();
        p["spec"]["volumes"] = json!([
            {"name": "data", "emptyDir": {}},
            {"name": "data", "emptyDir": {}},
            {"name": "two", "emptyDir": {}, "hostPath": {"path": "/x", "type": ""}},
            {"name": "cm", "configMap": {"defaultMode": 4095}},
            {"name": "Bad_Name", "secret": {"secretName": "s"}}
        ]);
        p["spec"]["containers"][0]["volumeMounts"] = json!([
            {"name": "data", "mountPath": "/data"},
            {"name": "missing", "mountPath": "/data"},
            {"name": "cm", "mountPath": "/cm", "subPath": "../etc"}
        ]);
        let causes = pod(&p, None);
        assert_eq!(
            only(&causes, "spec.volumes[1].name"),
            "FieldValueDuplicate: Duplicate value: \"data\""
        );
        assert_eq!(
            only(&causes, "spec.volumes[2].hostPath"),
            "FieldValueForbidden: Forbidden: may not specify more than 1 volume type"
        );
        assert_eq!(
            only(&causes, "spec.volumes[3].configMap.name"),
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, "spec.volumes[3].configMap.defaultMode"),
            "FieldValueInvalid: Invalid value: 4095: must be a number between 0 and 0777 (octal), both inclusive"
        );
        assert!(only(&causes, "spec.volumes[4].name").contains("RFC 1123 label"));
        assert_eq!(
            only(&causes, "spec.containers[0].volumeMounts[1].name"),
            "FieldValueNotFound: Not found: \"missing\""
        );
        assert_eq!(
            only(&causes, "spec.containers[0].volumeMounts[1].mountPath"),
            "FieldValueInvalid: Invalid value: \"/data\": must be unique"
        );
        assert_eq!(
            only(&causes, "spec.containers[0].volumeMounts[2].subPath"),
            "FieldValueInvalid: Invalid value: \"../etc\": must not contain '..'"
        );
        // a volume without any source (validation without defaulting)
        let mut p = pod_obj();
        p["spec"]["volumes"] = json!([{"name": "data"}]);
        assert_eq!(
            only(&pod(&p, None), "spec.volumes[0]"),
            "FieldValueRequired: Required value: must specify a volume type"
        );
    }

    #[test]
    fn pod_probes_env_tolerations() {
        let mut p = pod_obj();
        let c = &mut p["spec"]["containers"][0];
        c["livenessProbe"] =
            json!({"httpGet": {"port": 80}, "tcpSocket": {"port": 80}, "successThreshold": 2});
        c["readinessProbe"] = json!({"periodSeconds": -1});
        c["env"] = json!([{"name": "A=B", "value": "x"}, {"name": "", "value": "y"},
            {"name": "C", "value": "z", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
        p["spec"]["tolerations"] = json!([{"key": "", "operator": "Equal", "value": "x"},
            {"key": "k", "operator": "Exists", "value": "v"}, {"key": "k2", "effect": "NoSchedule", "tolerationSeconds": 5}]);
        defaults::pod(&mut p);
        let causes = pod(&p, None);
        let cp = "spec.containers[0]";
        assert_eq!(
            only(&causes, &format!("{cp}.livenessProbe.tcpSocket")),
            "FieldValueForbidden: Forbidden: may not specify more than 1 handler type"
        );
        assert_eq!(
            only(&causes, &format!("{cp}.livenessProbe.successThreshold")),
            "FieldValueInvalid: Invalid value: 2: must be 1"
        );
        assert_eq!(
            only(&causes, &format!("{cp}.readinessProbe")),
            "FieldValueRequired: Required value: must specify a handler type"
        );
        assert_eq!(
            only(&causes, &format!("{cp}.readinessProbe.periodSeconds")),
            "FieldValueInvalid: Invalid value: -1: must be greater than or equal to 0"
        );
        assert!(
            only(&causes, &format!("{cp}.env[0].name"))
                .contains("printable ASCII characters other than '='")
        );
        assert_eq!(
            only(&causes, &format!("{cp}.env[1].name")),
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, &format!("{cp}.env[2].valueFrom")),
            "FieldValueInvalid: Invalid value: \"\": may not be specified when `value` is not empty"
        );
        assert!(
            only(&causes, "spec.tolerations[0].operator")
                .contains("operator must be Exists when `key` is empty")
        );
        assert!(
            only(&causes, "spec.tolerations[1].operator")
                .ends_with("value must be empty when `operator` is 'Exists'")
        );
        assert!(
            only(&causes, "spec.tolerations[2].effect")
                .ends_with("effect must be 'NoExecute' when `tolerationSeconds` is set")
        );
    }

    #[test]
    fn pod_update_rules() {
        let old = pod_obj();
        // images, activeDeadlineSeconds, added tolerations and labels may change
        let mut new = old.clone();
        set(&mut new, "/spec/containers/0/image", json!("nginx:1.28"));
        new["spec"]["activeDeadlineSeconds"] = json!(100);
        new["spec"]["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "gpu", "operator": "Exists"}));
        new["metadata"]["labels"]["extra"] = json!("yes");
        assert_eq!(pod(&new, Some(&old)), vec![]);

        // other spec changes are forbidden with upstream's message
        let mut changed = old.clone();
        changed["spec"]["restartPolicy"] = json!("Never");
        set(
            &mut changed,
            "/spec/containers/0/ports/0/containerPort",
            json!(8080),
        );
        let c = only(&pod(&changed, Some(&old)), "spec");
        assert!(c.starts_with("FieldValueForbidden: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"), "{c}");
        assert!(
            c.contains("spec.restartPolicy: \"Always\" -> \"Never\""),
            "{c}"
        );
        assert!(
            c.contains("spec.containers[0].ports[0].containerPort: 80 -> 8080"),
            "{c}"
        );

        // tolerations may only be added
        let mut removed = old.clone();
        removed["spec"]["tolerations"] = json!([]);
        assert_eq!(
            only(&pod(&removed, Some(&old)), "spec.tolerations"),
            "FieldValueForbidden: Forbidden: existing toleration can not be modified except its tolerationSeconds"
        );
        let mut shorter = old.clone();
        shorter["spec"]["tolerations"][0]["tolerationSeconds"] = json!(10);
        assert_eq!(pod(&shorter, Some(&old)), vec![]);

        // activeDeadlineSeconds may only shrink and never be removed
        let mut with_deadline = old.clone();
        with_deadline["spec"]["activeDeadlineSeconds"] = json!(100);
        let mut longer = with_deadline.clone();
        longer["spec"]["activeDeadlineSeconds"] = json!(200);
        assert_eq!(
            only(
                &pod(&longer, Some(&with_deadline)),
                "spec.activeDeadlineSeconds"
            ),
            "FieldValueInvalid: Invalid value: 200: must be less than or equal to previous value"
        );
        assert!(
            only(
                &pod(&old, Some(&with_deadline)),
                "spec.activeDeadlineSeconds"
            )
            .ends_with("must not update from a positive integer to nil value")
        );

        // an object stored without a default (here the `serviceAccount` mirror that defaulting
        // adds) still accepts updates
        let mut stored = old.clone();
        stored["spec"]["serviceAccountName"] = json!("default");
        let mut sent = stored.clone();
        defaults::pod(&mut sent);
        assert_eq!(sent["spec"]["serviceAccount"], "default");
        sent["metadata"]["labels"]["v"] = json!("2");
        assert_eq!(pod(&sent, Some(&stored)), vec![]);
        let mut stored_job = job_obj();
        stored_job["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("schedulerName");
        assert_eq!(job(&job_obj(), Some(&stored_job)), vec![]);

        // the node name is set once (binding), then never changes
        let mut bound = old.clone();
        bound["spec"]["nodeName"] = json!("node-1");
        assert_eq!(pod(&bound, Some(&old)), vec![]);
        let mut moved = bound.clone();
        moved["spec"]["nodeName"] = json!("node-2");
        assert!(
            only(&pod(&moved, Some(&bound)), "spec")
                .contains("spec.nodeName: \"node-1\" -> \"node-2\"")
        );
    }

    #[test]
    fn pod_create_forbids_ephemeral_containers_and_padded_images() {
        let mut p = pod_obj();
        p["spec"]["ephemeralContainers"] = json!([{"name": "debug", "image": "busybox"}]);
        p["spec"]["containers"][0]["image"] = json!(" nginx");
        let causes = pod(&p, None);
        assert_eq!(
            only(&causes, "spec.ephemeralContainers"),
            "FieldValueForbidden: Forbidden: cannot be set on create"
        );
        assert_eq!(
            only(&causes, "spec.containers[0].image"),
            "FieldValueInvalid: Invalid value: \" nginx\": must not have leading or trailing whitespace"
        );
    }

    // ---- jobs ---------------------------------------------------------------------------------

    /// `kubectl create job pi --image=perl -- perl -e 'print 1'`, defaulted, with the server's uid.
    fn job_obj() -> Value {
        let mut j = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "default", "uid": "3f2e9b1c"},
            "spec": {"template": {"metadata": {}, "spec": {
                "containers": [{"name": "pi", "image": "perl", "command": ["perl", "-e", "print 1"], "resources": {}}],
                "restartPolicy": "Never"}}},
            "status": {}
        });
        defaults::job(&mut j);
        defaults::job_selector(&mut j, "3f2e9b1c");
        j
    }

    #[test]
    fn job_create() {
        assert_eq!(job(&job_obj(), None), vec![]);
        let mut j = job_obj();
        j["spec"]["template"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("restartPolicy");
        defaults::job(&mut j);
        assert_eq!(
            only(&job(&j, None), "spec.template.spec.restartPolicy"),
            "FieldValueNotSupported: Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        let mut j = job_obj();
        j["spec"]["parallelism"] = json!(-1);
        j["spec"]["completions"] = json!(-2);
        j["spec"]["backoffLimit"] = json!(-3);
        j["spec"]["completionMode"] = json!("Sometimes");
        let causes = job(&j, None);
        for (f, v) in [
            ("spec.parallelism", -1),
            ("spec.completions", -2),
            ("spec.backoffLimit", -3),
        ] {
            assert_eq!(
                only(&causes, f),
                format!(
                    "FieldValueInvalid: Invalid value: {v}: must be greater than or equal to 0"
                )
            );
        }
        assert_eq!(
            only(&causes, "spec.completionMode"),
            "FieldValueNotSupported: Unsupported value: \"Sometimes\": supported values: \"NonIndexed\", \"Indexed\""
        );
    }

    #[test]
    fn job_generated_selector_checks() {
        let mut j = job_obj();
        j["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] =
            json!("other");
        let causes = job(&j, None);
        assert!(
            only(
                &causes,
                "spec.template.metadata.labels[batch.kubernetes.io/controller-uid]"
            )
            .ends_with("must be '3f2e9b1c'"),
            "{causes:#?}"
        );
        assert!(
            only(&causes, "spec.template.metadata.labels")
                .ends_with("`selector` does not match template `labels`")
        );
        // without any selector (job_selector not applied)
        let mut j = job_obj();
        j["spec"].as_object_mut().unwrap().remove("selector");
        let causes = job(&j, None);
        assert_eq!(
            fields(&causes),
            vec!["spec.selector", "spec.template.metadata.labels"]
        );
        // a manual selector is the user's business, but it must match
        let mut j = json!({"metadata": {"name": "m", "namespace": "d", "uid": "u"},
            "spec": {"manualSelector": true, "selector": {"matchLabels": {"app": "m"}},
                "template": {"metadata": {"labels": {"app": "m"}}, "spec": {"restartPolicy": "OnFailure",
                    "containers": [{"name": "m", "image": "m"}]}}}});
        defaults::job(&mut j);
        defaults::job_selector(&mut j, "u");
        assert_eq!(job(&j, None), vec![]);
    }

    #[test]
    fn job_update_rules() {
        let old = job_obj();
        let mut new = old.clone();
        new["spec"]["parallelism"] = json!(3);
        new["spec"]["suspend"] = json!(true);
        new["spec"]["activeDeadlineSeconds"] = json!(60);
        assert_eq!(job(&new, Some(&old)), vec![]);
        let mut new = old.clone();
        set(
            &mut new,
            "/spec/template/spec/containers/0/image",
            json!("perl:5"),
        );
        new["spec"]["completions"] = json!(4);
        let causes = job(&new, Some(&old));
        assert_eq!(fields(&causes), vec!["spec.completions", "spec.template"]);
        assert_eq!(causes[0].message, "Invalid value: 4: field is immutable");
        assert!(causes[1].message.ends_with(": field is immutable"));
        // a suspended Job may change its template's scheduling directives
        let mut suspended_old = old.clone();
        suspended_old["spec"]["suspend"] = json!(true);
        let mut new = suspended_old.clone();
        new["spec"]["template"]["spec"]["nodeSelector"] = json!({"zone": "a"});
        assert_eq!(job(&new, Some(&suspended_old)), vec![]);
        // elastic Indexed Jobs scale completions with parallelism
        let mut indexed = old.clone();
        indexed["spec"]["completionMode"] = json!("Indexed");
        indexed["spec"]["completions"] = json!(2);
        indexed["spec"]["parallelism"] = json!(2);
        let mut scaled = indexed.clone();
        scaled["spec"]["completions"] = json!(5);
        scaled["spec"]["parallelism"] = json!(5);
        assert_eq!(job(&scaled, Some(&indexed)), vec![]);
    }

    // ---- services and endpoints --------------------------------------------------------------

    /// `kubectl create service clusterip web --tcp=80:8080`, defaulted.
    fn service_obj() -> Value {
        let mut s = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {"ports": [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                     "selector": {"app": "web"}, "type": "ClusterIP"},
            "status": {"loadBalancer": {}}
        });
        defaults::service(&mut s);
        s
    }

    #[test]
    fn service_create() {
        assert_eq!(service(&service_obj(), None), vec![]);
        let mut s = service_obj();
        s["spec"]["ports"] = json!([]);
        assert_eq!(
            only(&service(&s, None), "spec.ports"),
            "FieldValueRequired: Required value"
        );
        s["spec"]["clusterIP"] = json!("None");
        assert_eq!(service(&s, None), vec![]);
        let mut s = service_obj();
        s["spec"]["type"] = json!("Magic");
        assert_eq!(
            only(&service(&s, None), "spec.type"),
            "FieldValueNotSupported: Unsupported value: \"Magic\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""
        );
        let mut s = service_obj();
        s["spec"]["ports"] = json!([{"port": 0, "protocol": "TCP", "targetPort": 70000},
            {"port": 80, "protocol": "TCP", "targetPort": "http", "nodePort": 30080}, {"name": "x", "port": 80, "protocol": "TCP", "targetPort": 80}]);
        let causes = service(&s, None);
        assert_eq!(
            only(&causes, "spec.ports[0].name"),
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, "spec.ports[0].port"),
            "FieldValueInvalid: Invalid value: 0: must be between 1 and 65535, inclusive"
        );
        assert_eq!(
            only(&causes, "spec.ports[0].targetPort"),
            "FieldValueInvalid: Invalid value: 70000: must be between 1 and 65535, inclusive"
        );
        assert_eq!(
            only(&causes, "spec.ports[1].nodePort"),
            "FieldValueForbidden: Forbidden: may not be used when `type` is 'ClusterIP'"
        );
        assert_eq!(
            only(&causes, "spec.ports[2]"),
            "FieldValueDuplicate: Duplicate value: {\"port\":80,\"protocol\":\"TCP\"}"
        );
        let mut s = service_obj();
        s["spec"]["clusterIP"] = json!("10.0.0.300");
        assert_eq!(
            only(&service(&s, None), "spec.clusterIPs[0]"),
            "FieldValueInvalid: Invalid value: \"10.0.0.300\": must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
        );
    }

    #[test]
    fn service_external_name() {
        let mut s = json!({"metadata": {"name": "ext", "namespace": "d"}, "spec": {"type": "ExternalName", "externalName": "example.com."}});
        defaults::service(&mut s);
        assert_eq!(service(&s, None), vec![]);
        s["spec"]["externalName"] = json!("");
        s["spec"]["clusterIP"] = json!("10.0.0.1");
        let causes = service(&s, None);
        assert_eq!(
            only(&causes, "spec.externalName"),
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, "spec.clusterIPs"),
            "FieldValueForbidden: Forbidden: may not be set for ExternalName services"
        );
    }

    #[test]
    fn service_cluster_ip_immutable() {
        let mut old = service_obj();
        old["spec"]["clusterIP"] = json!("10.96.0.10");
        old["spec"]["clusterIPs"] = json!(["10.96.0.10"]);
        let mut new = old.clone();
        new["spec"]["ports"][0]["targetPort"] = json!(9090);
        assert_eq!(service(&new, Some(&old)), vec![]);
        new["spec"]["clusterIP"] = json!("10.96.0.11");
        new["spec"]["clusterIPs"] = json!(["10.96.0.11"]);
        assert_eq!(
            only(&service(&new, Some(&old)), "spec.clusterIPs[0]"),
            "FieldValueInvalid: Invalid value: [\"10.96.0.11\"]: may not change once set"
        );
        // a PUT without the allocated IP keeps it when the server applies service_keep_allocated
        let mut put = service_obj();
        defaults::service_keep_allocated(&mut put, &old);
        assert_eq!(service(&put, Some(&old)), vec![]);
    }

    #[test]
    fn endpoints_rules() {
        let mut ep = json!({"metadata": {"name": "web", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "10.244.0.5", "nodeName": "node-1"}], "ports": [{"port": 8080}]}]});
        defaults::endpoints(&mut ep);
        assert_eq!(endpoints(&ep, None), vec![]);
        ep["subsets"] = json!([{"addresses": [{"ip": "127.0.0.1"}, {"ip": "nope"}],
            "ports": [{"port": 80, "protocol": "TCP"}, {"port": 0, "protocol": "TCP", "name": "b"}]}, {"ports": []}]);
        let causes = endpoints(&ep, None);
        assert_eq!(
            only(&causes, "subsets[0].addresses[0].ip"),
            "FieldValueInvalid: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
        );
        assert!(only(&causes, "subsets[0].addresses[1].ip").ends_with(IP_MSG));
        assert_eq!(
            only(&causes, "subsets[0].ports[0].name"),
            "FieldValueRequired: Required value"
        );
        assert!(only(&causes, "subsets[0].ports[1].port").ends_with(PORT_RANGE));
        assert_eq!(
            only(&causes, "subsets[1]"),
            "FieldValueRequired: Required value: must specify `addresses` or `notReadyAddresses`"
        );
    }

    // ---- configmaps and secrets ------------------------------------------------------------------

    #[test]
    fn configmap_rules() {
        let cm = json!({"metadata": {"name": "cfg", "namespace": "default"}, "data": {"app.properties": "a=b", "KEY_1": "v"},
            "binaryData": {"logo.png": "iVBORw0KGgo="}});
        assert_eq!(configmap(&cm, None), vec![]);
        let bad = json!({"metadata": {"name": "cfg", "namespace": "default"}, "data": {"a b": "x", "..x": "y", "dup": "1"},
            "binaryData": {"dup": "eA=="}});
        let causes = configmap(&bad, None);
        assert_eq!(
            only(&causes, "data[a b]"),
            "FieldValueInvalid: Invalid value: \"a b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' \
             (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
        );
        assert_eq!(
            only(&causes, "data[..x]"),
            "FieldValueInvalid: Invalid value: \"..x\": must not start with '..'"
        );
        assert_eq!(
            only(&causes, "data[dup]"),
            "FieldValueInvalid: Invalid value: \"dup\": duplicate of key present in binaryData"
        );
        let big = json!({"metadata": {"name": "big", "namespace": "d"}, "data": {"a": "x".repeat(MAX_DATA_SIZE), "b": "y"}});
        assert_eq!(
            only(&configmap(&big, None), ""),
            "FieldValueTooLong: Too long: may not be more than 1048576 bytes"
        );
    }

    #[test]
    fn configmap_and_secret_immutable() {
        let old = json!({"metadata": {"name": "cfg", "namespace": "d"}, "immutable": true, "data": {"a": "1"}});
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"x": "y"});
        assert_eq!(configmap(&new, Some(&old)), vec![]);
        new["data"]["a"] = json!("2");
        new["immutable"] = json!(false);
        let causes = configmap(&new, Some(&old));
        assert_eq!(
            only(&causes, "data"),
            "FieldValueForbidden: Forbidden: field is immutable when `immutable` is set"
        );
        assert_eq!(
            only(&causes, "immutable"),
            "FieldValueForbidden: Forbidden: field is immutable when `immutable` is set"
        );
        let old = json!({"metadata": {"name": "s", "namespace": "d"}, "type": "Opaque", "immutable": true, "data": {"a": "eA=="}});
        let mut new = old.clone();
        new["data"]["a"] = json!("eQ==");
        new["type"] = json!("kubernetes.io/basic-auth");
        let causes = secret(&new, Some(&old));
        assert_eq!(
            only(&causes, "data"),
            "FieldValueForbidden: Forbidden: field is immutable when `immutable` is set"
        );
        assert_eq!(
            only(&causes, "type"),
            "FieldValueInvalid: Invalid value: \"kubernetes.io/basic-auth\": field is immutable"
        );
    }

    #[test]
    fn secret_rules() {
        // `kubectl create secret generic db --from-literal=password=s3cret`
        let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "default"},
            "data": {"password": "czNjcmV0"}});
        defaults::secret(&mut s);
        assert_eq!(secret(&s, None), vec![]);
        let mut from_string =
            json!({"metadata": {"name": "db", "namespace": "d"}, "stringData": {"user": "admin"}});
        defaults::secret(&mut from_string);
        assert_eq!(secret(&from_string, None), vec![]);
        let s = json!({"metadata": {"name": "db", "namespace": "d"}, "type": "Opaque", "data": {"password": "not base64!"}});
        assert_eq!(
            only(&secret(&s, None), "data[password]"),
            "FieldValueInvalid: Invalid value: \"<secret contents redacted>\": illegal base64 data at input byte 3"
        );
        let tls = json!({"metadata": {"name": "tls", "namespace": "d"}, "type": "kubernetes.io/tls", "data": {"tls.crt": ""}});
        assert_eq!(fields(&secret(&tls, None)), vec!["data[tls.key]"]);
        let docker = json!({"metadata": {"name": "reg", "namespace": "d"}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": defaults::base64_encode(b"[1]")}});
        assert!(
            only(&secret(&docker, None), "data[.dockerconfigjson]")
                .ends_with("must be a JSON object")
        );
        let docker_ok = json!({"metadata": {"name": "reg", "namespace": "d"}, "type": "kubernetes.io/dockerconfigjson",
            "data": {".dockerconfigjson": defaults::base64_encode(br#"{"auths":{}}"#)}});
        assert_eq!(secret(&docker_ok, None), vec![]);
        let sa = json!({"metadata": {"name": "tok", "namespace": "d"}, "type": "kubernetes.io/service-account-token"});
        assert_eq!(
            only(
                &secret(&sa, None),
                "metadata.annotations[kubernetes.io/service-account.name]"
            ),
            "FieldValueRequired: Required value"
        );
        let big = json!({"metadata": {"name": "big", "namespace": "d"}, "type": "Opaque",
            "data": {"a": defaults::base64_encode(&vec![0u8; MAX_DATA_SIZE + 1])}});
        assert_eq!(
            only(&secret(&big, None), "data"),
            "FieldValueTooLong: Too long: may not be more than 1048576 bytes"
        );
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_len("aGk="), Ok(2));
    }

    // ---- cluster kinds, leases, events ---------------------------------------------------------

    #[test]
    fn namespace_and_node_rules() {
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dev"}});
        defaults::namespace(&mut ns);
        assert_eq!(namespace(&ns, None), vec![]);
        ns["spec"]["finalizers"] = json!(["kubernetes", "bogus"]);
        assert!(
            only(&namespace(&ns, None), "spec.finalizers")
                .ends_with("name is neither a standard finalizer name nor is it fully qualified")
        );

        let node_obj = json!({"metadata": {"name": "node-1", "labels": {"kubernetes.io/hostname": "node-1"}},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"], "providerID": "nodeless://node-1",
                "taints": [{"key": "nodeless.io/serverless", "effect": "NoSchedule"}]},
            "status": {"capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"}}});
        assert_eq!(node(&node_obj, None), vec![]);
        let mut bad = node_obj.clone();
        bad["spec"]["taints"] = json!([{"key": "a", "effect": "Sometimes"}, {"key": "b", "effect": "NoSchedule"}, {"key": "b", "effect": "NoSchedule"}, {"effect": ""}]);
        bad["spec"]["podCIDR"] = json!("10.244.1.0");
        let causes = node(&bad, None);
        assert!(
            only(&causes, "spec.taints[0].effect")
                .starts_with("FieldValueNotSupported: Unsupported value: \"Sometimes\"")
        );
        assert!(
            only(&causes, "spec.taints[2]")
                .ends_with("taints must be unique by key and effect pair")
        );
        assert_eq!(
            only(&causes, "spec.taints[3].key"),
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, "spec.taints[3].effect"),
            "FieldValueRequired: Required value"
        );
        assert!(only(&causes, "spec.podCIDR").contains("must be a valid CIDR value"));
        for (cidr, ok) in [
            ("10.0.0.0/8", true),
            ("fd00::/64", true),
            ("10.0.0.0/33", false),
            ("10.0.0.0/08", false),
            ("x/8", false),
        ] {
            assert_eq!(valid_cidr(cidr), ok, "{cidr}");
        }
        let mut moved = node_obj.clone();
        moved["spec"]["providerID"] = json!("other://x");
        moved["spec"]["podCIDRs"] = json!(["10.244.2.0/24"]);
        let causes = node(&moved, Some(&node_obj));
        assert_eq!(fields(&causes), vec!["spec.podCIDRs", "spec.providerID"]);
    }

    #[test]
    fn lease_rules() {
        // what client-go leader election writes
        let l = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "kube-scheduler", "namespace": "kube-system"},
            "spec": {"holderIdentity": "node-1_4b6f", "leaseDurationSeconds": 15, "acquireTime": "2026-11-26T01:00:00.000000Z",
                "renewTime": "2026-11-26T01:00:10.123456Z", "leaseTransitions": 0}});
        assert_eq!(lease(&l, None), vec![]);
        let bad = json!({"metadata": {"name": "x", "namespace": "d"},
            "spec": {"leaseDurationSeconds": 0, "leaseTransitions": -1, "renewTime": "yesterday"}});
        let causes = lease(&bad, None);
        assert_eq!(
            only(&causes, "spec.leaseDurationSeconds"),
            "FieldValueInvalid: Invalid value: 0: must be greater than 0"
        );
        assert_eq!(
            only(&causes, "spec.leaseTransitions"),
            "FieldValueInvalid: Invalid value: -1: must be greater than or equal to 0"
        );
        assert_eq!(
            only(&causes, "spec.renewTime"),
            "FieldValueInvalid: Invalid value: \"yesterday\": must be an RFC 3339 timestamp"
        );
    }

    #[test]
    fn core_event_rules() {
        // what the kubelet / client-go record (core/v1, no eventTime)
        let ev = json!({"metadata": {"name": "web.17f3a", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "namespace": "default", "name": "web", "uid": "u"},
            "reason": "Pulled", "message": "Container image pulled", "source": {"component": "kubelet", "host": "node-1"},
            "firstTimestamp": "2026-11-26T01:00:00Z", "lastTimestamp": "2026-11-26T01:00:00Z", "count": 1, "type": "Normal"});
        assert_eq!(event(&ev, None), vec![]);
        let mut other_ns = ev.clone();
        other_ns["involvedObject"]["namespace"] = json!("prod");
        assert_eq!(
            only(&event(&other_ns, None), "involvedObject.namespace"),
            "FieldValueInvalid: Invalid value: \"prod\": does not match event.namespace"
        );
        // with eventTime, the reporting fields are required
        let mut timed = ev.clone();
        timed["eventTime"] = json!("2026-11-26T01:00:00.000000Z");
        timed["message"] = json!("m".repeat(1025));
        let causes = event(&timed, None);
        // upstream also reports the empty name's syntax
        assert_eq!(
            at(&causes, "source")[0],
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, "reportingInstance"),
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, "action"),
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, "message"),
            "FieldValueInvalid: Invalid value: \"\": can have at most 1024 characters"
        );
    }

    #[test]
    fn events_v1_rules() {
        // what kube-scheduler's events.k8s.io recorder writes
        let ev = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "web.17f3b", "namespace": "default"},
            "eventTime": "2026-11-26T01:00:00.000000Z", "reportingController": "default-scheduler",
            "reportingInstance": "default-scheduler-node-1", "action": "Binding", "reason": "Scheduled",
            "regarding": {"kind": "Pod", "namespace": "default", "name": "web"}, "note": "Successfully assigned", "type": "Normal"});
        assert_eq!(event_v1(&ev, None), vec![]);
        let bad = json!({"metadata": {"name": "x", "namespace": "default"}, "type": "Info", "deprecatedCount": 3,
            "series": {"count": 1}});
        let causes = event_v1(&bad, None);
        assert_eq!(
            only(&causes, "eventTime"),
            "FieldValueRequired: Required value"
        );
        assert_eq!(
            only(&causes, "type"),
            "FieldValueInvalid: Invalid value: \"\": has invalid value: Info"
        );
        assert_eq!(
            only(&causes, "deprecatedCount"),
            "FieldValueInvalid: Invalid value: \"\": needs to be unset"
        );
        assert_eq!(
            only(&causes, "series.count"),
            "FieldValueInvalid: Invalid value: \"\": should be at least 2"
        );
        assert_eq!(
            only(&causes, "series.lastObservedTime"),
            "FieldValueRequired: Required value"
        );
        // updates may only change the series
        let mut new = ev.clone();
        new["series"] = json!({"count": 2, "lastObservedTime": "2026-11-26T01:05:00.000000Z"});
        assert_eq!(event_v1(&new, Some(&ev)), vec![]);
        new["note"] = json!("changed");
        assert_eq!(
            only(&event_v1(&new, Some(&ev)), "note"),
            "FieldValueInvalid: Invalid value: \"changed\": field is immutable"
        );
    }

    #[test]
    fn service_account_and_none() {
        let sa = json!({"metadata": {"name": "builder", "namespace": "ci"}, "imagePullSecrets": [{"name": "reg"}]});
        assert_eq!(service_account(&sa, None), vec![]);
        let bad = json!({"metadata": {"name": "Builder", "namespace": "ci"}, "secrets": "x"});
        assert_eq!(
            fields(&service_account(&bad, None)),
            vec!["metadata.name", "secrets"]
        );
        let obj = json!({"metadata": {"name": "x", "namespace": "d"}, "spec": {"anything": 1}});
        assert_eq!(none(&obj, None), vec![]);
        let mut renamed = obj.clone();
        renamed["metadata"]["name"] = json!("y");
        assert_eq!(fields(&none(&renamed, Some(&obj))), vec!["metadata.name"]);
        assert_eq!(
            fields(&none_cluster(&obj, None)),
            vec!["metadata.namespace"]
        );
    }

    // ---- the registry ------------------------------------------------------------------------

    /// A minimal object of `kind` as a client sends it.
    fn sample(kind: &str) -> Option<Value> {
        let containers = json!([{"name": "app", "image": "registry.local/app:v1"}]);
        Some(match kind {
            "Namespace" => json!({"metadata": {"name": "team-a"}}),
            "Pod" => {
                json!({"metadata": {"name": "app", "namespace": "team-a"}, "spec": {"containers": containers}})
            }
            "Node" => json!({"metadata": {"name": "node-1"}, "status": {"capacity": {"cpu": "2"}}}),
            "Event" => {
                json!({"metadata": {"name": "app.1", "namespace": "team-a"}, "eventTime": "2026-11-26T01:00:00.000000Z",
                "reportingController": "nodeless/agent", "reportingComponent": "nodeless/agent", "reportingInstance": "node-1",
                "action": "Started", "reason": "Started", "type": "Normal",
                "regarding": {"kind": "Pod", "namespace": "team-a", "name": "app"},
                "involvedObject": {"kind": "Pod", "namespace": "team-a", "name": "app"}})
            }
            "ConfigMap" => {
                json!({"metadata": {"name": "cfg", "namespace": "team-a"}, "data": {"k": "v"}})
            }
            "Secret" => {
                json!({"metadata": {"name": "s", "namespace": "team-a"}, "stringData": {"k": "v"}})
            }
            "Service" => json!({"metadata": {"name": "app", "namespace": "team-a"},
                "spec": {"selector": {"app": "app"}, "ports": [{"port": 80}]}}),
            "ServiceAccount" => json!({"metadata": {"name": "default", "namespace": "team-a"}}),
            "Endpoints" => json!({"metadata": {"name": "app", "namespace": "team-a"},
                "subsets": [{"addresses": [{"ip": "10.0.0.5"}], "ports": [{"port": 80}]}]}),
            "Deployment" | "ReplicaSet" => {
                json!({"metadata": {"name": "app", "namespace": "team-a"},
                "spec": {"selector": {"matchLabels": {"app": "app"}},
                    "template": {"metadata": {"labels": {"app": "app"}}, "spec": {"containers": containers}}}})
            }
            "Job" => json!({"metadata": {"name": "once", "namespace": "team-a", "uid": "9c1d"},
                "spec": {"template": {"spec": {"containers": containers, "restartPolicy": "Never"}}}}),
            "Lease" => json!({"metadata": {"name": "leader", "namespace": "team-a"},
                "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}),
            _ => return None,
        })
    }

    #[test]
    fn every_served_kind_defaults_and_validates_a_minimal_object() {
        let mut covered = 0;
        for def in crate::resource::RESOURCES {
            let Some(mut obj) = sample(def.kind) else {
                continue;
            };
            covered += 1;
            (def.defaults)(&mut obj);
            if def.kind == "Job" {
                defaults::job_selector(&mut obj, "9c1d");
            }
            let once = obj.clone();
            (def.defaults)(&mut obj);
            assert_eq!(obj, once, "{} defaults are not idempotent", def.kind);
            assert_eq!(
                (def.validate)(&obj, None),
                vec![],
                "{} {}",
                def.api_version(),
                def.kind
            );
            assert_eq!(
                (def.validate)(&obj, Some(&once)),
                vec![],
                "{} update",
                def.kind
            );
            // the scope rule follows the registry
            let mut scoped = obj.clone();
            scoped["metadata"]["namespace"] = json!("team-a");
            let causes = (def.validate)(&scoped, None);
            if def.namespaced() {
                assert_eq!(causes, vec![], "{}", def.kind);
            } else {
                assert_eq!(fields(&causes), vec!["metadata.namespace"], "{}", def.kind);
            }
        }
        assert!(covered >= 14, "only {covered} kinds covered");
    }

    // ---- odd input ------------------------------------------------------------------------------

    type Validator = fn(&Value, Option<&Value>) -> Vec<Cause>;
    const ALL: &[Validator] = &[
        namespace,
        pod,
        node,
        event,
        event_v1,
        configmap,
        secret,
        service,
        service_account,
        endpoints,
        deployment,
        replicaset,
        job,
        lease,
        none,
        none_cluster,
    ];

    /// Every JSON pointer inside `v`.
    fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    out.push(p.clone());
                    pointers(x, p, out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    pointers(x, p, out);
                }
            }
            _ => {}
        }
    }

    /// Each field of realistic objects replaced, one at a time, by values of every other type:
    /// defaulting and validation (create and update) never panic.
    #[test]
    fn mutated_objects_never_panic() {
        let replacements = [
            json!(null),
            json!(0),
            json!(-1),
            json!(70000),
            json!(1.5),
            json!(""),
            json!("x y"),
            json!(true),
            json!([]),
            json!([null, 1]),
            json!({}),
            json!({"a": [1]}),
        ];
        let mut objects = vec![deployment_obj(), pod_obj(), job_obj(), service_obj()];
        for def in crate::resource::RESOURCES {
            if let Some(mut o) = sample(def.kind) {
                (def.defaults)(&mut o);
                objects.push(o);
            }
        }
        let mut runs = 0;
        for def in crate::resource::RESOURCES {
            for base in &objects {
                let mut paths = Vec::new();
                pointers(base, String::new(), &mut paths);
                for path in &paths {
                    for r in &replacements {
                        let mut obj = base.clone();
                        if let Some(slot) = obj.pointer_mut(path) {
                            *slot = r.clone();
                        }
                        let raw = obj.clone();
                        (def.validate)(&raw, Some(base));
                        (def.defaults)(&mut obj);
                        defaults::job_selector(&mut obj, "u");
                        defaults::pod_default_tolerations(&mut obj);
                        defaults::service_keep_allocated(&mut obj, base);
                        (def.validate)(&obj, None);
                        (def.validate)(&obj, Some(&raw));
                        runs += 1;
                    }
                }
            }
        }
        assert!(runs > 10_000, "{runs}");
    }

    #[test]
    fn wrong_types_are_reported_not_panics() {
        let odd = [
            json!(null),
            json!(42),
            json!("pod"),
            json!([]),
            json!({}),
            json!({"metadata": "x", "spec": 3}),
            json!({"metadata": {"name": 5, "labels": "x", "annotations": [], "finalizers": {}, "ownerReferences": "r",
                "generateName": false, "namespace": 1}}),
            json!({"metadata": {"name": "a"}, "spec": {"containers": "x", "volumes": {}, "initContainers": [1, "a", null],
                "selector": "x", "template": [], "ports": [{"port": "x", "targetPort": [], "nodePort": "x"}], "type": 5,
                "taints": [{"key": 1, "effect": []}], "replicas": "many", "strategy": {"type": 1, "rollingUpdate": "x"},
                "clusterIP": 7, "clusterIPs": "x", "leaseDurationSeconds": 1.5, "renewTime": 5, "finalizers": "x"}}),
            json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": [], "image": {}, "ports": [{"containerPort": "80"}],
                "resources": {"limits": [], "requests": {"cpu": {}}}, "env": [{"name": 1, "valueFrom": []}],
                "volumeMounts": [{"name": 3}], "livenessProbe": {"httpGet": "x"}}],
                "tolerations": [{"key": 1, "tolerationSeconds": "x"}]}}),
            json!({"metadata": {"name": "a"}, "spec": {"selector": {"matchLabels": [], "matchExpressions": [{"key": 1, "operator": [], "values": "x"}]},
                "template": {"metadata": {"labels": {"a": 1}}, "spec": {"containers": [null]}}}}),
            json!({"metadata": {"name": "a"}, "data": [], "binaryData": {"a": 1}, "stringData": {"b": 2}, "type": 3,
                "subsets": [{"addresses": [{"ip": 1}], "ports": "x"}], "series": "x", "regarding": 1,
                "eventTime": 1, "involvedObject": [], "secrets": [1]}),
        ];
        for obj in &odd {
            for validate in ALL {
                let causes = validate(obj, None);
                let again = validate(obj, Some(obj));
                let weird = validate(obj, Some(&json!("old")));
                for c in causes.iter().chain(&again).chain(&weird) {
                    assert!(!c.reason.is_empty() && !c.message.is_empty(), "{c:?}");
                }
            }
        }
        // non-objects and wrong types are named
        assert_eq!(fields(&pod(&json!("pod"), None)), vec![""]);
        let causes = pod(&odd[8], None);
        assert_eq!(
            only(&causes, "spec.containers[0].name"),
            "FieldValueInvalid: Invalid value: []: must be a string"
        );
        assert_eq!(
            only(&causes, "spec.containers[0].ports[0].containerPort"),
            "FieldValueInvalid: Invalid value: \"80\": must be an integer"
        );
        let causes = deployment(&odd[7], None);
        assert_eq!(
            only(&causes, "spec.replicas"),
            "FieldValueInvalid: Invalid value: \"many\": must be an integer"
        );
        assert_eq!(
            only(&causes, "spec.template"),
            "FieldValueInvalid: Invalid value: []: must be an object"
        );
        assert_eq!(
            only(&pod(&odd[7], None), "spec.containers"),
            "FieldValueInvalid: Invalid value: \"x\": must be an array"
        );
        // defaulting then validating odd input does not panic either
        for obj in &odd {
            for default in [
                defaults::pod,
                defaults::deployment,
                defaults::job,
                defaults::service,
                defaults::secret,
                defaults::namespace,
            ] {
                let mut o = obj.clone();
                default(&mut o);
                for validate in ALL {
                    validate(&o, Some(obj));
                }
            }
        }
    }
}
