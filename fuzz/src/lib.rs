//! The bodies of the fuzz targets, one public function per target, each taking the fuzzer's bytes.
//! They live here rather than in `fuzz_targets/` so that `tests/replay.rs` can run every seed and
//! every saved reproducer through them with plain `cargo test` on the stable toolchain.
//!
//! Each function feeds the bytes to the network-facing code of the `api` and `apiserver` crates the
//! way the API server does, and besides "does not panic" asserts properties that must hold for any
//! input (a typed round trip is a fixed point, defaulting is idempotent, a parsed selector prints
//! to text that parses back to it, a table row has one cell per column, ...).
//!
//! Input layouts (what a seed file holds):
//! - `protobuf`: a protobuf body; `k8s\0` is prepended when missing.
//! - `body`: 1 byte choosing the `Content-Type`, then the body.
//! - `patch`: 1 byte choosing the patch type, the target JSON, a `0xFF` byte, the patch body.
//! - `patch_structured`, `apply`: bytes driving `generate` (not meant to be written by hand).
//! - `selector`: 1 byte choosing label text / field text / label JSON, then the selector.
//! - `quantity`: the quantity text.
//! - `resource`: 1 byte choosing the resource in `RESOURCES`, 1 byte choosing raw JSON or
//!   generated (a mutated fixture), then the JSON or the generator's bytes.
//!
//! This crate may depend on `api` and `apiserver` only as their users do (public functions).

pub mod generate;

use api::resource::{RESOURCES, ResourceDef};
use arbitrary::Unstructured;
use serde_json::Value;

/// The separator between the two documents of a `patch` input (never valid in UTF-8 JSON).
pub const SEPARATOR: u8 = 0xFF;

/// The clock the targets pass where the code asks for `now`.
pub const NOW: &str = "2025-06-01T10:00:00Z";

fn now_ts() -> jiff::Timestamp {
    jiff::Timestamp::from_second(1_748_772_000).expect("a fixed in-range timestamp")
}

/// Split `data` at the first [`SEPARATOR`]: `(before, after)`; no separator gives `(data, [])`.
pub fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == SEPARATOR) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// What the API server does with a decoded body of resource `def` on create and on update:
/// type check, typed round trip (unknown fields), defaulting, validation, table printing, sizing.
pub fn server_pipeline(def: &ResourceDef, body: &Value) {
    let mut obj = body.clone();
    if apiserver::objects::check_type(def, &mut obj).is_err() {
        // Still push the raw value through the pure functions: they must not panic on anything.
        pure_functions(def, body);
        return;
    }
    let mut warnings = Vec::new();
    let known = match apiserver::objects::typed(def, &obj, "Strict", &mut warnings) {
        Ok(k) => k,
        Err(_) => {
            pure_functions(def, &obj);
            return;
        }
    };
    let again = (def.roundtrip)(&known);
    assert_eq!(
        again.as_ref(),
        Ok(&known),
        "{}: the typed round trip of a round-tripped object changed it",
        def.kind
    );
    assert!(
        api::resource::unknown_fields(&known, &known).is_empty(),
        "{}: a round-tripped object reports unknown fields against itself",
        def.kind
    );
    pure_functions(def, &known);
    pure_functions(def, &obj);
}

/// Defaulting (twice: idempotent), validation as create and as update, table cells, pod sizing.
fn pure_functions(def: &ResourceDef, obj: &Value) {
    let mut d = obj.clone();
    (def.defaults)(&mut d);
    let mut dd = d.clone();
    (def.defaults)(&mut dd);
    assert_eq!(
        dd, d,
        "{}: defaulting a defaulted object changed it",
        def.kind
    );
    let _ = (def.validate)(&d, None);
    let _ = (def.validate)(&d, Some(obj));
    let _ = (def.validate)(obj, Some(&d));
    for o in [obj, &d] {
        let cells = (def.table.cells)(o, now_ts());
        assert_eq!(
            cells.len(),
            def.table.columns.len(),
            "{}: a table row must have one cell per column",
            def.kind
        );
    }
    if def.kind == "Pod" {
        let _ = api::sizing::pod_size(&d);
        let spec = d.get("spec").unwrap_or(&Value::Null);
        let _ = api::profile::unsupported(spec, false);
        let _ = api::profile::unsupported(spec, true);
    }
    if def.kind == "ServerlessProfile"
        && let Ok(p) = serde_json::from_value::<api::profile::ServerlessProfile>(d.clone())
    {
        // Globs against the fixture pod and against the profile's own patterns.
        let pod = pod_fixture();
        let labels = |v: &Value| -> std::collections::BTreeMap<String, String> {
            v.as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let pod_labels = labels(pod.pointer("/metadata/labels").unwrap_or(&Value::Null));
        let _ = p.matches("default", &pod_labels);
        for s in &p.spec.selectors {
            let _ = p.matches(&s.namespace, &s.labels);
        }
    }
    let _ = api::sizing::pod_size(obj);
}

/// The resource a decoded body names with `apiVersion` and `kind`, if served.
fn def_of(v: &Value) -> Option<&'static ResourceDef> {
    let av = v.get("apiVersion")?.as_str()?;
    let kind = v.get("kind")?.as_str()?;
    let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.kind == kind)
}

/// Target `protobuf`: `api::protobuf::decode`, then the server pipeline for served kinds.
pub fn protobuf(data: &[u8]) {
    let body;
    let data = if data.starts_with(api::protobuf::MAGIC) {
        data
    } else {
        body = [api::protobuf::MAGIC.as_slice(), data].concat();
        &body
    };
    if let Ok(v) = api::protobuf::decode(data) {
        // What comes out is JSON the rest of the server handles: it must re-encode as it is.
        let text = serde_json::to_vec(&v).expect("a Value always serializes");
        let back: Value = serde_json::from_slice(&text).expect("serialized JSON parses");
        assert_eq!(back, v, "decoded protobuf does not survive JSON encoding");
        if let Some(def) = def_of(&v) {
            server_pipeline(def, &v);
        }
    }
}

/// The `Content-Type`s the `body` target chooses from (`None`: no header).
pub const BODY_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/yaml"),
    Some("application/vnd.kubernetes.protobuf"),
    Some("application/x-yaml"),
    Some("text/yaml"),
    Some("application/json; charset=utf-8"),
    Some("Application/YAML ; x=y"),
    Some(""),
    Some("text/plain"),
    None,
];

/// Target `body`: `apiserver::http::decode_body` (JSON, YAML, protobuf by `Content-Type`) and
/// `yaml_to_json`, then the server pipeline for served kinds.
pub fn body(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let ct = BODY_TYPES[usize::from(sel) % BODY_TYPES.len()];
    let mut headers = http::HeaderMap::new();
    if let Some(ct) = ct {
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ct),
        );
    }
    let decoded = apiserver::http::decode_body(&headers, body);
    if matches!(
        ct,
        None | Some("application/json" | "" | "application/json; charset=utf-8")
    ) {
        assert_eq!(
            decoded.as_ref().ok(),
            serde_json::from_slice::<Value>(body).ok().as_ref(),
            "a JSON body decodes as serde_json decodes it"
        );
    }
    if let Ok(v) = &decoded
        && let Some(def) = def_of(v)
    {
        server_pipeline(def, v);
    }
    if let Ok(v) = apiserver::http::yaml_to_json(body) {
        // The YAML decoder's output is plain JSON: printing and re-reading it changes nothing.
        let text = serde_json::to_string(&v).expect("a Value always serializes");
        let back: Value = serde_json::from_str(&text).expect("serialized JSON parses");
        assert_eq!(
            back, v,
            "YAML decoded to JSON that does not survive re-encoding"
        );
    }
}

/// Target `patch`: the API server's PATCH dispatch (`apiserver::patch::apply_patch`) and the three
/// `api::patch` functions on a target document and a patch body given as bytes.
pub fn patch(data: &[u8]) {
    use apiserver::patch::PatchType;
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (target, body) = split(rest);
    let Ok(target) = serde_json::from_slice::<Value>(target) else {
        return;
    };
    let kind = [PatchType::Json, PatchType::Merge, PatchType::Strategic][usize::from(sel) % 3];
    let served = apiserver::patch::apply_patch(kind, &target, body);
    let patch_value = serde_json::from_slice::<Value>(body).ok();
    match kind {
        PatchType::Json => {
            let direct = api::patch::json_patch(&target, body);
            assert_eq!(
                served.is_ok(),
                direct.is_ok(),
                "apply_patch and json_patch disagree"
            );
        }
        PatchType::Merge => {
            if let Some(p) = &patch_value {
                check_merge_patch(&target, p);
            }
        }
        _ => {
            if let Some(p) = &patch_value {
                check_strategic(&target, p);
            }
        }
    }
    if let Ok(out) = &served
        && let Some(def) = def_of(out)
    {
        server_pipeline(def, out);
    }
}

/// RFC 7386 merge patch properties: applying the same patch twice is applying it once.
fn check_merge_patch(target: &Value, p: &Value) {
    let once = api::patch::merge_patch(target, p);
    let twice = api::patch::merge_patch(&once, p);
    assert_eq!(twice, once, "a JSON merge patch is idempotent");
}

/// Strategic merge patch: no panic; an empty patch changes nothing.
fn check_strategic(target: &Value, p: &Value) {
    let _ = api::patch::strategic_merge_patch(target, p);
    if target.is_object() {
        let empty = serde_json::json!({});
        assert_eq!(
            api::patch::strategic_merge_patch(target, &empty).as_ref(),
            Ok(target),
            "an empty strategic merge patch changes nothing"
        );
    }
}

/// Target `patch_structured`: generated objects and patches shaped like them, through the JSON
/// patch, merge patch and strategic merge patch functions.
pub fn patch_structured(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = patch_structured_inner(&mut u);
}

fn patch_structured_inner(u: &mut Unstructured) -> arbitrary::Result<()> {
    let target = generate::object_like(u, None)?;
    match u.int_in_range(0..=2)? {
        0 => {
            let ops = generate::json_patch(u, &target)?;
            let body = serde_json::to_vec(&ops).expect("a Value always serializes");
            let out = api::patch::json_patch(&target, &body);
            if let Value::Array(list) = &ops
                && list.is_empty()
            {
                assert_eq!(
                    out.as_ref(),
                    Ok(&target),
                    "an empty JSON patch changes nothing"
                );
            }
        }
        1 => {
            let p = if u.ratio(3, 4)? {
                generate::smp_patch(u, &target, 6)?
            } else {
                generate::value(u, 4)?
            };
            check_merge_patch(&target, &p);
        }
        _ => {
            let p = generate::smp_patch(u, &target, 6)?;
            check_strategic(&target, &p);
            if let Ok(out) = api::patch::strategic_merge_patch(&target, &p)
                && let Some(def) = def_of(&out)
            {
                server_pipeline(def, &out);
            }
        }
    }
    Ok(())
}

/// Target `apply`: a few server-side applies and ordinary updates by different managers on one
/// object, as a series of requests would make them.
pub fn apply(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let _ = apply_inner(&mut u);
}

/// Every `fieldsV1` in `metadata.managedFields` decodes and is in canonical form.
fn check_managed_fields(obj: &Value, what: &str) {
    let Some(entries) = obj
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return;
    };
    for e in entries {
        if let Some(f) = e.get("fieldsV1") {
            let set = api::apply::FieldSet::from_fields_v1(f).unwrap_or_else(|err| {
                panic!("{what} wrote fieldsV1 that does not decode: {err}: {f}")
            });
            assert_eq!(
                &set.to_fields_v1(),
                f,
                "{what} wrote fieldsV1 not in canonical form"
            );
        }
    }
}

/// Whether every `fieldsV1` of `obj` decodes (inputs with garbage tracking are not held to the
/// output checks: the code may keep what it was given).
fn managed_fields_valid(obj: Option<&Value>) -> bool {
    let Some(entries) = obj
        .and_then(|o| o.pointer("/metadata/managedFields"))
        .and_then(Value::as_array)
    else {
        return true;
    };
    entries.iter().all(|e| {
        e.as_object().is_some_and(|m| {
            m.get("fieldsV1").is_none_or(|f| {
                api::apply::FieldSet::from_fields_v1(f).is_ok_and(|s| &s.to_fields_v1() == f)
            })
        })
    })
}

fn apply_inner(u: &mut Unstructured) -> arbitrary::Result<()> {
    let mut live: Option<Value> = if u.ratio(1, 3)? {
        None
    } else {
        Some(generate::object_like(u, None)?)
    };
    for _ in 0..u.int_in_range(1..=4)? {
        let manager = *u.choose(generate::MANAGERS)?;
        let sub = *u.choose(&[None, None, Some("status")])?;
        let valid_before = managed_fields_valid(live.as_ref());
        if u.ratio(2, 3)? {
            let config = match &live {
                Some(l) if u.ratio(1, 2)? => {
                    let mut c = generate::smp_patch(u, l, 5)?;
                    if let (Value::Object(c), Some(av), Some(k)) =
                        (&mut c, l.get("apiVersion"), l.get("kind"))
                    {
                        c.insert("apiVersion".into(), av.clone());
                        c.insert("kind".into(), k.clone());
                    }
                    if let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut) {
                        m.shift_remove("managedFields");
                    }
                    c
                }
                Some(l) => {
                    let kind = l.get("kind").and_then(Value::as_str);
                    generate::apply_config(u, kind)?
                }
                None => generate::apply_config(u, None)?,
            };
            let force = u.arbitrary()?;
            match api::apply::apply_to(live.as_ref(), &config, manager, sub, force, NOW) {
                Ok(out) => {
                    if valid_before {
                        check_managed_fields(&out, "apply");
                    }
                    live = Some(out);
                }
                Err(e) => {
                    let _ = (e.message(), e.code(), e.reason(), e.causes());
                }
            }
        } else {
            let mut new = match &live {
                Some(l) => {
                    let mut n = l.clone();
                    for _ in 0..u.int_in_range(0..=3)? {
                        generate::mutate(u, &mut n)?;
                    }
                    n
                }
                None => generate::object_like(u, None)?,
            };
            let new_valid = managed_fields_valid(Some(&new));
            let av = *u.choose(&["v1", "apps/v1"])?;
            api::apply::update_managed_fields(
                live.as_ref(),
                &mut new,
                manager,
                "Update",
                sub,
                av,
                NOW,
            );
            if valid_before && new_valid {
                check_managed_fields(&new, "update_managed_fields");
            }
            live = Some(new);
        }
    }
    Ok(())
}

/// A label selector as comparable data: (key, operator, sorted values) per requirement.
fn label_terms(s: &api::selector::LabelSelector) -> Vec<(String, &'static str, Vec<String>)> {
    s.requirements()
        .iter()
        .map(|r| {
            let mut v = r.values.clone();
            v.sort();
            (r.key.clone(), r.operator.as_str(), v)
        })
        .collect()
}

fn check_label_selector(sel: &api::selector::LabelSelector) {
    use api::selector::LabelSelector;
    if sel.requirements().is_empty() {
        return; // "nothing" and "everything" both print as "".
    }
    let text = sel.to_string();
    let again = LabelSelector::parse(&text)
        .unwrap_or_else(|e| panic!("{text:?}, printed from {sel:?}, does not parse: {e}"));
    assert_eq!(
        label_terms(&again),
        label_terms(sel),
        "printed selector {text:?}"
    );
    // Labels built from the selector's own values: both must agree on them.
    let mut labels = serde_json::Map::new();
    for r in sel.requirements() {
        let v = r.values.first().cloned().unwrap_or_default();
        labels.insert(r.key.clone(), Value::String(v));
    }
    let labels = Value::Object(labels);
    assert_eq!(sel.matches(&labels), again.matches(&labels));
}

/// Target `selector`: label selector text, field selector text, label selector JSON.
pub fn selector(data: &[u8]) {
    use api::selector::{FieldSelector, LabelSelector};
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match sel % 3 {
        0 => {
            if let Ok(s) = LabelSelector::parse(text) {
                check_label_selector(&s);
                let _ = s.matches_object(&pod_fixture());
            }
        }
        1 => {
            if let Ok(s) = FieldSelector::parse(text) {
                let printed = s.to_string();
                let again = FieldSelector::parse(&printed).unwrap_or_else(|e| {
                    panic!("{printed:?}, printed from {s:?}, does not parse: {e}")
                });
                let mut a = again.terms().to_vec();
                let mut b = s.terms().to_vec();
                let key =
                    |t: &api::selector::FieldTerm| (t.field.clone(), t.value.clone(), t.negated);
                a.sort_by_key(key);
                b.sort_by_key(key);
                assert_eq!(a, b, "printed field selector {printed:?}");
                let pod = pod_fixture();
                for (group, kind) in [
                    ("", "Pod"),
                    ("", "Secret"),
                    ("", "Event"),
                    ("apps", "Deployment"),
                ] {
                    let _ = s.check_supported(group, kind);
                    assert_eq!(
                        s.matches_object(group, kind, &pod).ok(),
                        again.matches_object(group, kind, &pod).ok()
                    );
                }
            }
        }
        _ => {
            if let Ok(v) = serde_json::from_str::<Value>(text)
                && let Ok(s) = LabelSelector::from_json(&v)
            {
                check_label_selector(&s);
            }
        }
    }
}

fn pod_fixture() -> Value {
    serde_json::from_str(include_str!("../seeds/objects/pod.json"))
        .expect("the fixtures are valid JSON")
}

/// Target `quantity`: `api::sizing::parse_quantity` and the rounding helpers, and the pod size
/// of a pod whose requests and limits are the text.
pub fn quantity(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(q) = api::sizing::parse_quantity(s) {
        let value = q.value();
        let milli = q.milli_value();
        if q.mantissa == 0 {
            assert_eq!((value, milli), (Some(0), Some(0)), "zero is zero: {s:?}");
        } else if q.negative {
            assert_eq!(
                (value, milli),
                (None, None),
                "negative quantities have no size: {s:?}"
            );
        }
        if let Some(m) = milli {
            let v = value.unwrap_or_else(|| panic!("{s:?}: milli value {m} but no value"));
            // value = ceil(q), milli = ceil(1000 q): so milli <= 1000 value < milli + 1000.
            if let Some(v1000) = v.checked_mul(1000) {
                assert!(
                    m <= v1000 && v1000 < m.saturating_add(1000),
                    "{s:?}: value {v} and milli value {m} disagree"
                );
            }
        }
        let _ = q.scaled_ceil(i32::MAX);
        let _ = q.scaled_ceil(i32::MIN);
    }
    let pod = serde_json::json!({"spec": {
        "containers": [{"name": "a", "resources": {"requests": {"cpu": s, "memory": s}, "limits": {"cpu": s, "memory": s}}}],
        "initContainers": [{"name": "i", "restartPolicy": "Always", "resources": {"requests": {"cpu": s}}}],
        "overhead": {"cpu": s, "memory": s},
    }});
    let _ = api::sizing::pod_size(&pod);
}

/// Target `resource`: the server pipeline (type check, typed round trip, unknown fields,
/// defaulting, validation, table, sizing) of one of `RESOURCES` on raw or generated JSON.
pub fn resource(data: &[u8]) {
    let [r, mode, rest @ ..] = data else {
        return;
    };
    let def = &RESOURCES[usize::from(*r) % RESOURCES.len()];
    if mode % 2 == 0 {
        if let Ok(v) = serde_json::from_slice::<Value>(rest) {
            server_pipeline(def, &v);
        }
    } else {
        let mut u = Unstructured::new(rest);
        if let Ok(v) = generate::object_like(&mut u, Some(def.kind)) {
            server_pipeline(def, &v);
        }
    }
}

/// A target's body: the fuzzer's bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test.
pub const TARGETS: &[(&str, Target)] = &[
    ("protobuf", protobuf),
    ("body", body),
    ("patch", patch),
    ("patch_structured", patch_structured),
    ("apply", apply),
    ("selector", selector),
    ("quantity", quantity),
    ("resource", resource),
];
