//! OpenAPI v3: `/openapi/v3` (the index of group-versions with `?hash=` URLs) and one document per
//! group-version, generated from the k8s-openapi types of the declared resources. Every operation
//! carries `x-kubernetes-group-version-kind` and `x-kubernetes-action`; PATCH declares the
//! `fieldValidation` parameter and the four patch content types, which is what kubectl checks
//! before `apply -f` and `create -f`.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

use api::resource::{RESOURCES, ResourceDef, Scope, group_versions};
use serde_json::{Map, Value, json};

/// One generated document and its hash.
pub struct Doc {
    pub body: Vec<u8>,
    pub hash: String,
}

/// All documents, keyed by `api/v1` or `apis/G/V`.
pub fn docs() -> &'static BTreeMap<String, Doc> {
    static DOCS: OnceLock<BTreeMap<String, Doc>> = OnceLock::new();
    DOCS.get_or_init(|| {
        let mut out = BTreeMap::new();
        for (g, v) in group_versions() {
            let key = if g.is_empty() {
                format!("api/{v}")
            } else {
                format!("apis/{g}/{v}")
            };
            let doc = document(g, v);
            let body = serde_json::to_vec(&doc).unwrap_or_default();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            body.hash(&mut h);
            let hash = format!("{:016X}{:08X}", h.finish(), body.len());
            out.insert(key, Doc { body, hash });
        }
        out
    })
}

/// The `/openapi/v3` index.
pub fn index() -> Value {
    let mut paths = Map::new();
    for (k, d) in docs() {
        paths.insert(
            k.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{k}?hash={}", d.hash)}),
        );
    }
    json!({"paths": paths})
}

fn gvk(def: &ResourceDef) -> Value {
    json!({"group": def.group, "version": def.version, "kind": def.kind})
}

fn param(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty, "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": format!("{name} of the resource"), "schema": {"type": "string", "uniqueItems": true}})
}

fn write_params() -> Vec<Value> {
    vec![
        param(
            "dryRun",
            "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed",
            "string",
        ),
        param(
            "fieldManager",
            "fieldManager is a name associated with the actor or entity that is making these changes.",
            "string",
        ),
        param(
            "fieldValidation",
            "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict",
            "string",
        ),
    ]
}

fn list_params() -> Vec<Value> {
    vec![
        param(
            "allowWatchBookmarks",
            "allowWatchBookmarks requests watch events with type \"BOOKMARK\".",
            "boolean",
        ),
        param(
            "continue",
            "The continue option should be set when retrieving more results from the server.",
            "string",
        ),
        param(
            "fieldSelector",
            "A selector to restrict the list of returned objects by their fields. Defaults to everything.",
            "string",
        ),
        param(
            "labelSelector",
            "A selector to restrict the list of returned objects by their labels. Defaults to everything.",
            "string",
        ),
        param(
            "limit",
            "limit is a maximum number of responses to return for a list call.",
            "integer",
        ),
        param(
            "resourceVersion",
            "resourceVersion sets a constraint on what resource versions a request may be served from.",
            "string",
        ),
        param(
            "resourceVersionMatch",
            "resourceVersionMatch determines how resourceVersion is applied to list calls.",
            "string",
        ),
        param(
            "sendInitialEvents",
            "`sendInitialEvents=true` may be set together with `watch=true`.",
            "boolean",
        ),
        param(
            "timeoutSeconds",
            "Timeout for the list/watch call.",
            "integer",
        ),
        param(
            "watch",
            "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.",
            "boolean",
        ),
    ]
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn responses(code: &str, schema: &Value) -> Value {
    json!({code: {"description": "OK", "content": {"application/json": {"schema": schema}, "application/yaml": {"schema": schema}, "application/vnd.kubernetes.protobuf": {"schema": schema}}}, "401": {"description": "Unauthorized"}})
}

fn op(
    def: &ResourceDef,
    action: &str,
    id: &str,
    params: Vec<Value>,
    resp: Value,
    body: Option<Value>,
) -> Value {
    let mut o = json!({
        "tags": [if def.group.is_empty() { "core_v1".to_string() } else { format!("{}_{}", def.group.replace('.', "_"), def.version) }],
        "description": format!("{action} {}", def.kind),
        "operationId": id,
        "parameters": params,
        "responses": resp,
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(def),
    });
    if let Some(b) = body {
        o["requestBody"] = b;
    }
    o
}

fn document(group: &str, version: &str) -> Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut kinds: Vec<(&ResourceDef, String)> = Vec::new();
    for def in RESOURCES
        .iter()
        .filter(|d| d.group == group && d.version == version)
    {
        let s = (def.schema)(&mut generator);
        let name = s
            .as_object()
            .and_then(|o| o.get("$ref"))
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
            .unwrap_or(def.kind)
            .to_string();
        kinds.push((def, name));
    }
    let _ = generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta>();
    let _ = generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>();
    let _ =
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::DeleteOptions>();
    let _ = generator.subschema_for::<k8s_openapi::api::autoscaling::v1::Scale>();
    let mut schemas = generator.take_definitions(true);
    schemas.insert("io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(), json!({"type": "object", "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body."}));
    for (_, name) in &kinds {
        annotate_patch_strategies(&mut schemas, name, &mut Vec::new(), 0);
    }
    let mut paths = Map::new();
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    for (def, name) in &kinds {
        if let Some(s) = schemas.get_mut(name).and_then(Value::as_object_mut) {
            s.insert("x-kubernetes-group-version-kind".into(), json!([gvk(def)]));
        }
        let list_name = format!("{name}List");
        schemas.insert(
            list_name.clone(),
            json!({
                "description": format!("{} is a list of {}.", def.list_kind, def.kind),
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "items": {"type": "array", "items": schema_ref(name)},
                    "metadata": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.ListMeta"),
                },
                "x-kubernetes-group-version-kind": [{"group": def.group, "version": def.version, "kind": def.list_kind}],
            }),
        );
        let obj = schema_ref(name);
        let list = schema_ref(&list_name);
        let status = schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Status");
        let body = json!({"content": {"*/*": {"schema": obj}}, "required": true});
        let patch_body = json!({"content": {
            "application/apply-patch+yaml": {"schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch")},
            "application/json-patch+json": {"schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch")},
            "application/merge-patch+json": {"schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch")},
            "application/strategic-merge-patch+json": {"schema": schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch")},
        }, "required": true});
        let mut patch_params = write_params();
        patch_params.push(param(
            "force",
            "Force is going to \"force\" Apply requests.",
            "boolean",
        ));
        let kind_id = def.kind;
        let (coll, item, ns_params) = match def.scope {
            Scope::Namespaced => (
                format!("{base}/namespaces/{{namespace}}/{}", def.plural),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", def.plural),
                vec![path_param("namespace")],
            ),
            Scope::Cluster => (
                format!("{base}/{}", def.plural),
                format!("{base}/{}/{{name}}", def.plural),
                vec![],
            ),
        };
        let with = |mut extra: Vec<Value>, base: &Vec<Value>| {
            let mut v = base.clone();
            v.append(&mut extra);
            v
        };
        paths.insert(
            coll.clone(),
            json!({
                "get": op(def, "list", &format!("list{kind_id}"), with(list_params(), &ns_params), responses("200", &list), None),
                "post": op(def, "post", &format!("create{kind_id}"), with(write_params(), &ns_params), responses("201", &obj), Some(body.clone())),
                "delete": op(def, "deletecollection", &format!("deletecollection{kind_id}"), with(list_params(), &ns_params), responses("200", &status), None),
            }),
        );
        let mut item_params = ns_params.clone();
        item_params.insert(0, path_param("name"));
        paths.insert(
            item.clone(),
            json!({
                "get": op(def, "get", &format!("read{kind_id}"), item_params.clone(), responses("200", &obj), None),
                "put": op(def, "put", &format!("replace{kind_id}"), with(write_params(), &item_params), responses("200", &obj), Some(body.clone())),
                "patch": op(def, "patch", &format!("patch{kind_id}"), with(patch_params.clone(), &item_params), responses("200", &obj), Some(patch_body.clone())),
                "delete": op(def, "delete", &format!("delete{kind_id}"), with(vec![param("gracePeriodSeconds", "The duration in seconds before the object should be deleted.", "integer"), param("propagationPolicy", "Whether and how garbage collection will be performed.", "string")], &item_params), responses("200", &obj), None),
            }),
        );
        if def.scope == Scope::Namespaced {
            paths.insert(format!("{base}/{}", def.plural), json!({"get": op(def, "list", &format!("list{kind_id}ForAllNamespaces"), list_params(), responses("200", &list), None)}));
        }
        for sub in def.subresources {
            let (schema, sub_gvk) = match *sub {
                "status" => (obj.clone(), gvk(def)),
                "scale" => (
                    schema_ref("io.k8s.api.autoscaling.v1.Scale"),
                    json!({"group": "autoscaling", "version": "v1", "kind": "Scale"}),
                ),
                _ => continue,
            };
            let mut get = op(
                def,
                "get",
                &format!("read{kind_id}{sub}"),
                item_params.clone(),
                responses("200", &schema),
                None,
            );
            get["x-kubernetes-group-version-kind"] = sub_gvk.clone();
            let mut put = op(
                def,
                "put",
                &format!("replace{kind_id}{sub}"),
                with(write_params(), &item_params),
                responses("200", &schema),
                Some(json!({"content": {"*/*": {"schema": schema}}, "required": true})),
            );
            put["x-kubernetes-group-version-kind"] = sub_gvk.clone();
            let mut patch = op(
                def,
                "patch",
                &format!("patch{kind_id}{sub}"),
                with(patch_params.clone(), &item_params),
                responses("200", &schema),
                Some(patch_body.clone()),
            );
            patch["x-kubernetes-group-version-kind"] = sub_gvk;
            paths.insert(
                format!("{item}/{sub}"),
                json!({"get": get, "put": put, "patch": patch}),
            );
        }
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::discovery::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {"BearerToken": {"type": "apiKey", "description": "Bearer Token authentication", "name": "authorization", "in": "header"}}},
    })
}

fn ref_name(schema: &Value) -> Option<String> {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .map(str::to_string)
}

/// Mark list properties with `x-kubernetes-patch-strategy` / `x-kubernetes-patch-merge-key` as
/// upstream's OpenAPI does, from `api::patch::list_strategy` (kubectl's client-side apply reads them
/// to compute strategic merge patches). `path` is the field path from the kind's root.
fn annotate_patch_strategies(
    schemas: &mut Map<String, Value>,
    def_name: &str,
    path: &mut Vec<String>,
    depth: usize,
) {
    if depth > 12 {
        return;
    }
    let Some(props) = schemas
        .get(def_name)
        .and_then(|s| s.get("properties"))
        .and_then(Value::as_object)
        .cloned()
    else {
        return;
    };
    for (field, prop) in props {
        path.push(field.clone());
        let items = prop.get("items");
        if prop.get("type").and_then(Value::as_str) == Some("array") {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let ext = match api::patch::list_strategy(&p) {
                api::patch::ListStrategy::Merge { key } => Some(
                    json!({"x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": key}),
                ),
                api::patch::ListStrategy::MergePrimitives => {
                    Some(json!({"x-kubernetes-patch-strategy": "merge"}))
                }
                api::patch::ListStrategy::Replace => None,
            };
            if let (Some(ext), Some(target)) = (
                ext,
                schemas
                    .get_mut(def_name)
                    .and_then(|s| s.get_mut("properties"))
                    .and_then(|p| p.get_mut(&field))
                    .and_then(Value::as_object_mut),
            ) && let Some(e) = ext.as_object()
            {
                for (k, v) in e {
                    target.insert(k.clone(), v.clone());
                }
            }
            if let Some(child) = items.and_then(ref_name) {
                annotate_patch_strategies(schemas, &child, path, depth + 1);
            }
        } else if let Some(child) =
            ref_name(&prop).or_else(|| prop.get("allOf").and_then(|a| a.get(0)).and_then(ref_name))
        {
            annotate_patch_strategies(schemas, &child, path, depth + 1);
        }
        path.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_has_a_document_with_patch_field_validation() {
        let d = docs();
        let apps: Value = serde_json::from_slice(&d["apis/apps/v1"].body).expect("json");
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(
            patch["parameters"]
                .as_array()
                .expect("params")
                .iter()
                .any(|p| p["name"] == "fieldValidation" && p["in"] == "query")
        );
        assert!(
            patch["requestBody"]["content"]
                .get("application/strategic-merge-patch+json")
                .is_some()
        );
        let dep = &apps["components"]["schemas"]["io.k8s.api.apps.v1.Deployment"];
        assert_eq!(
            dep["x-kubernetes-group-version-kind"][0]["kind"],
            "Deployment"
        );
        assert!(
            apps["components"]["schemas"]
                .get("io.k8s.api.core.v1.PodSpec")
                .is_some(),
            "nested schemas are included"
        );
        let containers = &apps["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"]["properties"]
            ["containers"];
        assert_eq!(
            containers["x-kubernetes-patch-merge-key"], "name",
            "{containers}"
        );
        let ports =
            &apps["components"]["schemas"]["io.k8s.api.core.v1.Container"]["properties"]["ports"];
        assert_eq!(ports["x-kubernetes-patch-merge-key"], "containerPort");
        let idx = index();
        assert!(
            idx["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .expect("url")
                .starts_with("/openapi/v3/api/v1?hash=")
        );
    }
}
