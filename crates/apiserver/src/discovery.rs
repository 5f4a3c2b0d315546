//! API discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/G`, `/apis/G/V`, in the legacy
//! shapes and the aggregated `apidiscovery.k8s.io` v2 / v2beta1 shapes chosen by the Accept header.

use api::resource::{RESOURCES, ResourceDef, Scope, group_versions};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use serde_json::{Value, json};

use crate::error::ApiError;

/// The Kubernetes version this server speaks (kubectl's dispatcher picks `kubectl.1.<minor>`).
pub const MAJOR: &str = "1";
pub const MINOR: &str = "33";
pub const GIT_VERSION: &str = "v1.33.0+nodeless";

pub fn version() -> Value {
    json!({
        "major": MAJOR,
        "minor": MINOR,
        "gitVersion": GIT_VERSION,
        "gitCommit": env!("CARGO_PKG_VERSION"),
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// (name, kind, group, version, verbs) of one subresource.
fn subresource_info(
    def: &ResourceDef,
    sub: &str,
) -> (&'static str, &'static str, &'static str, Vec<&'static str>) {
    match sub {
        "status" => (
            def.kind,
            def.group,
            def.version,
            vec!["get", "patch", "update"],
        ),
        "scale" => ("Scale", "autoscaling", "v1", vec!["get", "patch", "update"]),
        "binding" => ("Binding", "", "v1", vec!["create"]),
        "eviction" => ("Eviction", "policy", "v1", vec!["create"]),
        "log" => ("Pod", "", "v1", vec!["get"]),
        "exec" => ("PodExecOptions", "", "v1", vec!["create", "get"]),
        "attach" => ("PodAttachOptions", "", "v1", vec!["create", "get"]),
        "portforward" => ("PodPortForwardOptions", "", "v1", vec!["create", "get"]),
        "proxy" if def.kind == "Node" => (
            "NodeProxyOptions",
            "",
            "v1",
            vec!["create", "delete", "get", "patch", "update"],
        ),
        "proxy" => (
            "ServiceProxyOptions",
            "",
            "v1",
            vec!["create", "delete", "get", "patch", "update"],
        ),
        "finalize" => ("Namespace", "", "v1", vec!["update"]),
        "token" => (
            "TokenRequest",
            "authentication.k8s.io",
            "v1",
            vec!["create"],
        ),
        "ephemeralcontainers" => ("Pod", "", "v1", vec!["get", "patch", "update"]),
        _ => (def.kind, def.group, def.version, vec!["get"]),
    }
}

fn legacy_resource_list(group: &str, version: &str) -> Value {
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let mut resources = Vec::new();
    for def in RESOURCES
        .iter()
        .filter(|d| d.group == group && d.version == version)
    {
        let mut r = json!({
            "name": def.plural,
            "singularName": def.singular,
            "namespaced": def.scope == Scope::Namespaced,
            "kind": def.kind,
            "verbs": VERBS,
        });
        if !def.short_names.is_empty() {
            r["shortNames"] = json!(def.short_names);
        }
        if !def.categories.is_empty() {
            r["categories"] = json!(def.categories);
        }
        resources.push(r);
        for sub in def.subresources {
            let (kind, g, v, verbs) = subresource_info(def, sub);
            let mut s = json!({"name": format!("{}/{}", def.plural, sub), "singularName": "", "namespaced": def.scope == Scope::Namespaced, "kind": kind, "verbs": verbs});
            if g != def.group || v != def.version {
                s["group"] = g.into();
                s["version"] = v.into();
            }
            resources.push(s);
        }
    }
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

fn aggregated_version(group: &str, version: &str) -> Value {
    let mut resources = Vec::new();
    for def in RESOURCES
        .iter()
        .filter(|d| d.group == group && d.version == version)
    {
        let subs: Vec<Value> = def
            .subresources
            .iter()
            .map(|sub| {
                let (kind, g, v, verbs) = subresource_info(def, sub);
                json!({"subresource": sub, "responseKind": {"group": g, "version": v, "kind": kind}, "verbs": verbs})
            })
            .collect();
        let mut r = json!({
            "resource": def.plural,
            "responseKind": {"group": def.group, "version": def.version, "kind": def.kind},
            "scope": if def.scope == Scope::Namespaced { "Namespaced" } else { "Cluster" },
            "singularResource": def.singular,
            "verbs": VERBS,
        });
        if !def.short_names.is_empty() {
            r["shortNames"] = json!(def.short_names);
        }
        if !def.categories.is_empty() {
            r["categories"] = json!(def.categories);
        }
        if !subs.is_empty() {
            r["subresources"] = Value::Array(subs);
        }
        resources.push(r);
    }
    json!({"version": version, "resources": resources, "freshness": "Current"})
}

fn aggregated_list(core: bool, av: &str) -> Value {
    let mut groups: Vec<(&str, Vec<&str>)> = Vec::new();
    for (g, v) in group_versions() {
        if g.is_empty() != core {
            continue;
        }
        match groups.iter_mut().find(|(name, _)| *name == g) {
            Some((_, vs)) => vs.push(v),
            None => groups.push((g, vec![v])),
        }
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(g, vs)| {
            let mut meta = json!({});
            if !g.is_empty() {
                meta["name"] = g.into();
            }
            json!({"metadata": meta, "versions": vs.iter().map(|v| aggregated_version(g, v)).collect::<Vec<_>>()})
        })
        .collect();
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": format!("apidiscovery.k8s.io/{av}"), "metadata": {}, "items": items})
}

/// Which aggregated discovery version the client accepts first, if any.
fn aggregated_accept(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("g=apidiscovery.k8s.io") && p.contains("as=APIGroupDiscoveryList") {
            if p.contains("v=v2beta1") {
                return Some("v2beta1");
            }
            if p.contains("v=v2") {
                return Some("v2");
            }
        }
        if p.starts_with("application/json") && !p.contains("as=") {
            return None;
        }
    }
    None
}

fn respond(body: &Value, content_type: &str) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type.to_string())],
        bytes,
    )
        .into_response()
}

fn aggregated(core: bool, av: &str) -> Response {
    let ct = format!("application/json;g=apidiscovery.k8s.io;v={av};as=APIGroupDiscoveryList");
    let mut resp = respond(&aggregated_list(core, av), &ct);
    resp.headers_mut()
        .insert(header::VARY, http::HeaderValue::from_static("Accept"));
    resp
}

/// GET /api
pub fn api(headers: &HeaderMap, server_address: &str) -> Response {
    if let Some(av) = aggregated_accept(headers) {
        return aggregated(true, av);
    }
    respond(
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}),
        "application/json",
    )
}

fn group_json(g: &str) -> Value {
    let versions: Vec<Value> = group_versions()
        .into_iter()
        .filter(|(gg, _)| *gg == g)
        .map(|(_, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(json!({}));
    json!({"name": g, "versions": versions, "preferredVersion": preferred})
}

/// GET /apis
pub fn apis(headers: &HeaderMap) -> Response {
    if let Some(av) = aggregated_accept(headers) {
        return aggregated(false, av);
    }
    let mut names: Vec<&str> = Vec::new();
    for (g, _) in group_versions() {
        if !g.is_empty() && !names.contains(&g) {
            names.push(g);
        }
    }
    let groups: Vec<Value> = names.into_iter().map(group_json).collect();
    respond(
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        "application/json",
    )
}

/// GET /apis/G
pub fn group(g: &str) -> Response {
    if !group_versions().iter().any(|(gg, _)| *gg == g) {
        return ApiError::path_not_found().into_response();
    }
    let mut body = group_json(g);
    body["kind"] = "APIGroup".into();
    body["apiVersion"] = "v1".into();
    respond(&body, "application/json")
}

/// GET /api/v1 or /apis/G/V
pub fn resource_list(g: &str, v: &str) -> Response {
    if !group_versions().iter().any(|(gg, vv)| *gg == g && *vv == v) {
        return ApiError::path_not_found().into_response();
    }
    respond(&legacy_resource_list(g, v), "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregated_discovery_lists_every_resource_with_response_kind() {
        let core = aggregated_list(true, "v2");
        let items = core["items"].as_array().expect("items");
        assert_eq!(items.len(), 1);
        let pods = items[0]["versions"][0]["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .find(|r| r["resource"] == "pods")
            .expect("pods")
            .clone();
        assert_eq!(pods["responseKind"]["kind"], "Pod");
        assert_eq!(pods["scope"], "Namespaced");
        assert!(
            pods["subresources"]
                .as_array()
                .expect("subs")
                .iter()
                .any(|s| s["subresource"] == "exec")
        );
        let groups = aggregated_list(false, "v2beta1");
        assert!(
            groups["items"]
                .as_array()
                .expect("items")
                .iter()
                .any(|g| g["metadata"]["name"] == "apps")
        );
    }

    #[test]
    fn accept_header_selects_aggregated_version() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, http::HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert_eq!(aggregated_accept(&h), Some("v2"));
        h.insert(header::ACCEPT, http::HeaderValue::from_static("application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"));
        assert_eq!(aggregated_accept(&h), Some("v2beta1"));
        h.insert(
            header::ACCEPT,
            http::HeaderValue::from_static("application/json, */*"),
        );
        assert_eq!(aggregated_accept(&h), None);
    }

    #[test]
    fn legacy_list_has_scale_subresource_in_autoscaling() {
        let l = legacy_resource_list("apps", "v1");
        let scale = l["resources"]
            .as_array()
            .expect("r")
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .expect("scale")
            .clone();
        assert_eq!(scale["group"], "autoscaling");
        assert_eq!(scale["kind"], "Scale");
    }
}
