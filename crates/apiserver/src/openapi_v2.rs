//! OpenAPI v2 (Swagger 2.0) at `/openapi/v2`, derived from the v3 documents, as JSON or as the
//! gnostic `openapi.v2.Document` protobuf that kubectl 1.27-1.30 ask for
//! (`application/com.github.proto-openapi.spec.v2@v1.0+protobuf`): their `apply -f`, `explain` and
//! client-side validation read it.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

/// What upstream answers with (the client asks for `...spec.v2@v1.0+protobuf`, which is not a
/// parseable media type).
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// The Swagger 2.0 document (JSON) and its protobuf encoding, built once.
pub struct V2 {
    pub json: Vec<u8>,
    pub protobuf: Vec<u8>,
    pub etag: String,
}

pub fn document() -> &'static V2 {
    static DOC: OnceLock<V2> = OnceLock::new();
    DOC.get_or_init(|| {
        let doc = build();
        let json = serde_json::to_vec(&doc).unwrap_or_default();
        let protobuf = encode_document(&doc);
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        json.hash(&mut h);
        V2 {
            json,
            protobuf,
            etag: format!("\"{:016X}\"", h.finish()),
        }
    })
}

/// v3 schema JSON -> v2 schema JSON (refs move from components/schemas to definitions).
fn to_v2_schema(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            // Swagger 2.0 as upstream writes it: a described reference is `$ref` + `description`,
            // not `allOf: [{$ref}]` (kubectl's v2 models do not follow allOf).
            if let Some([only]) = m.get("allOf").and_then(Value::as_array).map(Vec::as_slice)
                && let Some(r) = only.get("$ref").and_then(Value::as_str)
            {
                out.insert(
                    "$ref".into(),
                    Value::String(r.replace("#/components/schemas/", "#/definitions/")),
                );
                for (k, val) in m {
                    if k != "allOf" {
                        out.insert(k.clone(), to_v2_schema(val));
                    }
                }
                return Value::Object(out);
            }
            for (k, val) in m {
                if k == "$ref" {
                    if let Some(r) = val.as_str() {
                        out.insert(
                            k.clone(),
                            Value::String(r.replace("#/components/schemas/", "#/definitions/")),
                        );
                    }
                } else if k == "nullable" {
                    // not part of Swagger 2.0
                } else {
                    out.insert(k.clone(), to_v2_schema(val));
                }
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(to_v2_schema).collect()),
        other => other.clone(),
    }
}

fn to_v2_operation(op: &Value) -> Value {
    let mut out = op.clone();
    let mut params = Vec::new();
    for p in op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut q = json!({"name": p["name"], "in": p["in"], "description": p.get("description").cloned().unwrap_or(Value::Null)});
        if p.get("required").and_then(Value::as_bool) == Some(true) {
            q["required"] = true.into();
        }
        q["type"] = p
            .pointer("/schema/type")
            .cloned()
            .unwrap_or(json!("string"));
        params.push(q);
    }
    if let Some(body) = op.get("requestBody") {
        let schema = body.pointer("/content/*~1*/schema").or_else(|| {
            body.get("content")
                .and_then(Value::as_object)
                .and_then(|c| c.values().next())
                .and_then(|c| c.get("schema"))
        });
        params.push(json!({"name": "body", "in": "body", "required": true, "schema": to_v2_schema(schema.unwrap_or(&json!({"type": "object"})))}));
        let consumes: Vec<String> = body
            .get("content")
            .and_then(Value::as_object)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        out["consumes"] = json!(consumes);
    }
    let mut responses = Map::new();
    for (code, r) in op
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let mut resp = json!({"description": r.get("description").cloned().unwrap_or(json!("OK"))});
        if let Some(s) = r.pointer("/content/application~1json/schema") {
            resp["schema"] = to_v2_schema(s);
        }
        responses.insert(code.clone(), resp);
    }
    if let Some(o) = out.as_object_mut() {
        o.remove("requestBody");
        o.insert("parameters".into(), Value::Array(params));
        o.insert("responses".into(), Value::Object(responses));
        o.insert(
            "produces".into(),
            json!([
                "application/json",
                "application/yaml",
                "application/vnd.kubernetes.protobuf"
            ]),
        );
        o.insert("schemes".into(), json!(["https"]));
    }
    out
}

fn build() -> Value {
    let mut definitions = Map::new();
    let mut paths = Map::new();
    for doc in crate::openapi::docs().values() {
        let Ok(v3) = serde_json::from_slice::<Value>(&doc.body) else {
            continue;
        };
        for (name, schema) in v3
            .pointer("/components/schemas")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            definitions
                .entry(name.clone())
                .or_insert_with(|| to_v2_schema(schema));
        }
        for (path, item) in v3
            .get("paths")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let mut ops = Map::new();
            for (method, op) in item.as_object().into_iter().flatten() {
                ops.insert(method.clone(), to_v2_operation(op));
            }
            paths.insert(path.clone(), Value::Object(ops));
        }
    }
    json!({
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": crate::discovery::GIT_VERSION},
        "paths": paths,
        "definitions": definitions,
        "securityDefinitions": {"BearerToken": {"type": "apiKey", "name": "authorization", "in": "header"}},
        "security": [{"BearerToken": []}],
    })
}

/// A protobuf writer for the few wire types gnostic's messages use.
#[derive(Default)]
struct Pb(Vec<u8>);

impl Pb {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.key(field, 2);
            self.varint(s.len() as u64);
            self.0.extend_from_slice(s.as_bytes());
        }
    }
    fn boolean(&mut self, field: u32, b: bool) {
        if b {
            self.key(field, 0);
            self.varint(1);
        }
    }
    fn int(&mut self, field: u32, v: i64) {
        if v != 0 {
            self.key(field, 0);
            self.varint(v as u64);
        }
    }
    fn double(&mut self, field: u32, v: f64) {
        if v != 0.0 {
            self.key(field, 1);
            self.0.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn message(&mut self, field: u32, f: impl FnOnce(&mut Pb)) {
        let mut inner = Pb::default();
        f(&mut inner);
        self.key(field, 2);
        self.varint(inner.0.len() as u64);
        self.0.extend_from_slice(&inner.0);
    }
}

fn s(v: &Value, k: &str) -> String {
    v.get(k)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Vendor extensions (`x-...`) as gnostic NamedAny with the value as YAML (JSON is YAML).
fn vendor_extensions(pb: &mut Pb, field: u32, v: &Value) {
    for (k, val) in v.as_object().into_iter().flatten() {
        if k.starts_with("x-") {
            let yaml = serde_json::to_string(val).unwrap_or_default();
            pb.message(field, |n| {
                n.string(1, k);
                n.message(2, |any| any.string(2, &yaml));
            });
        }
    }
}

fn any_yaml(pb: &mut Pb, field: u32, v: &Value) {
    let yaml = serde_json::to_string(v).unwrap_or_default();
    pb.message(field, |any| any.string(2, &yaml));
}

fn encode_schema(pb: &mut Pb, v: &Value) {
    pb.string(1, &s(v, "$ref"));
    pb.string(2, &s(v, "format"));
    pb.string(3, &s(v, "title"));
    pb.string(4, &s(v, "description"));
    if let Some(d) = v.get("default") {
        any_yaml(pb, 5, d);
    }
    if let Some(x) = v.get("maximum").and_then(Value::as_f64) {
        pb.double(7, x);
    }
    if let Some(x) = v.get("minimum").and_then(Value::as_f64) {
        pb.double(9, x);
    }
    pb.int(11, v.get("maxLength").and_then(Value::as_i64).unwrap_or(0));
    pb.int(12, v.get("minLength").and_then(Value::as_i64).unwrap_or(0));
    pb.string(13, &s(v, "pattern"));
    pb.boolean(
        16,
        v.get("uniqueItems")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    );
    for r in v
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(r) = r.as_str() {
            pb.key(19, 2);
            pb.varint(r.len() as u64);
            pb.0.extend_from_slice(r.as_bytes());
        }
    }
    for e in v
        .get("enum")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        any_yaml(pb, 20, e);
    }
    match v.get("additionalProperties") {
        Some(Value::Bool(b)) => pb.message(21, |a| {
            a.key(2, 0);
            a.varint(u64::from(*b));
        }),
        Some(schema @ Value::Object(_)) => {
            pb.message(21, |a| a.message(1, |sch| encode_schema(sch, schema)))
        }
        _ => {}
    }
    match v.get("type") {
        Some(Value::String(t)) => pb.message(22, |ti| ti.string(1, t)),
        Some(Value::Array(ts)) => pb.message(22, |ti| {
            for t in ts.iter().filter_map(Value::as_str) {
                ti.key(1, 2);
                ti.varint(t.len() as u64);
                ti.0.extend_from_slice(t.as_bytes());
            }
        }),
        _ => {}
    }
    if let Some(items) = v.get("items") {
        pb.message(23, |it| it.message(1, |sch| encode_schema(sch, items)));
    }
    for a in v
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pb.message(24, |sch| encode_schema(sch, a));
    }
    if let Some(props) = v.get("properties").and_then(Value::as_object) {
        pb.message(25, |p| {
            for (name, schema) in props {
                p.message(1, |named| {
                    named.string(1, name);
                    named.message(2, |sch| encode_schema(sch, schema));
                });
            }
        });
    }
    pb.boolean(
        27,
        v.get("readOnly").and_then(Value::as_bool).unwrap_or(false),
    );
    vendor_extensions(pb, 31, v);
}

fn encode_parameter(pb: &mut Pb, p: &Value) {
    // ParametersItem.parameter(1) -> Parameter
    pb.message(1, |param| {
        if p.get("in").and_then(Value::as_str) == Some("body") {
            param.message(1, |b| {
                b.string(1, &s(p, "description"));
                b.string(2, &s(p, "name"));
                b.string(3, "body");
                b.boolean(
                    4,
                    p.get("required").and_then(Value::as_bool).unwrap_or(false),
                );
                if let Some(schema) = p.get("schema") {
                    b.message(5, |sch| encode_schema(sch, schema));
                }
            });
        } else {
            param.message(2, |nb| {
                let (field, type_field) = if p.get("in").and_then(Value::as_str) == Some("path") {
                    (4, 5)
                } else {
                    (3, 6)
                };
                nb.message(field, |q| {
                    q.boolean(
                        1,
                        p.get("required").and_then(Value::as_bool).unwrap_or(false),
                    );
                    q.string(2, &s(p, "in"));
                    q.string(3, &s(p, "description"));
                    q.string(4, &s(p, "name"));
                    q.string(type_field, &s(p, "type"));
                });
            });
        }
    });
}

fn encode_operation(pb: &mut Pb, op: &Value) {
    let strings = |pb: &mut Pb, field: u32, key: &str| {
        for t in op
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            pb.key(field, 2);
            pb.varint(t.len() as u64);
            pb.0.extend_from_slice(t.as_bytes());
        }
    };
    strings(pb, 1, "tags");
    pb.string(3, &s(op, "description"));
    pb.string(5, &s(op, "operationId"));
    strings(pb, 6, "produces");
    strings(pb, 7, "consumes");
    for p in op
        .get("parameters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        pb.message(8, |pi| encode_parameter(pi, p));
    }
    if let Some(resps) = op.get("responses").and_then(Value::as_object) {
        pb.message(9, |r| {
            for (code, resp) in resps {
                r.message(1, |named| {
                    named.string(1, code);
                    named.message(2, |rv| {
                        rv.message(1, |response| {
                            response.string(1, &s(resp, "description"));
                            if let Some(schema) = resp.get("schema") {
                                response.message(2, |si| {
                                    si.message(1, |sch| encode_schema(sch, schema))
                                });
                            }
                        });
                    });
                });
            }
        });
    }
    strings(pb, 10, "schemes");
    vendor_extensions(pb, 13, op);
}

fn encode_document(doc: &Value) -> Vec<u8> {
    let mut pb = Pb::default();
    pb.string(1, "2.0");
    pb.message(2, |info| {
        info.string(1, &s(&doc["info"], "title"));
        info.string(2, &s(&doc["info"], "version"));
    });
    pb.message(8, |paths| {
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            paths.message(2, |named| {
                named.string(1, path);
                named.message(2, |pi| {
                    for (method, field) in [
                        ("get", 2),
                        ("put", 3),
                        ("post", 4),
                        ("delete", 5),
                        ("patch", 8),
                    ] {
                        if let Some(op) = item.get(method) {
                            pi.message(field, |o| encode_operation(o, op));
                        }
                    }
                });
            });
        }
    });
    pb.message(9, |defs| {
        for (name, schema) in doc["definitions"].as_object().into_iter().flatten() {
            defs.message(1, |named| {
                named.string(1, name);
                named.message(2, |sch| encode_schema(sch, schema));
            });
        }
    });
    pb.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_has_definitions_with_gvk_and_patch_metadata() {
        let d = document();
        let v: Value = serde_json::from_slice(&d.json).expect("json");
        let dep = &v["definitions"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            dep["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert_eq!(
            v["definitions"]["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"]["x-kubernetes-patch-merge-key"],
            "name"
        );
        let spec_ref =
            v["definitions"]["io.k8s.api.apps.v1.Deployment"]["properties"]["spec"]["$ref"]
                .as_str()
                .expect("ref");
        assert!(spec_ref.starts_with("#/definitions/"), "{spec_ref}");
        assert!(d.protobuf.len() > 10_000);
        assert_eq!(
            &d.protobuf[..5],
            &[0x0a, 0x03, b'2', b'.', b'0'],
            "field 1 swagger = \"2.0\""
        );
    }
}
