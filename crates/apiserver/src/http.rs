//! The REST surface: `/api/v1/...` and `/apis/G/V/...` paths parsed into a resource request and
//! dispatched to the generic object store; content negotiation (JSON, YAML, protobuf bodies; Table
//! and PartialObjectMetadata answers); list, watch, patch and delete option parsing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use api::resource::{ResourceDef, Scope};
use api::selector::{FieldSelector, LabelSelector};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Value, json};

use crate::State;
use crate::error::{ApiError, ApiResult};
use crate::objects::{self, DeleteOptions, ListOptions, ObjectRef, WriteOptions, meta_str};
use crate::watchcache::CachedEvent;

/// Largest accepted request body (upstream's limit).
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// A parsed resource URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub def: &'static ResourceDef,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parse the segments after `/api/v1/` or `/apis/G/V/`.
pub fn parse_target(group: &str, version: &str, segs: &[&str]) -> ApiResult<Target> {
    let find = |plural: &str| {
        api::resource::find(group, version, plural).ok_or_else(ApiError::path_not_found)
    };
    let ns_def = group.is_empty() && version == "v1";
    match segs {
        ["namespaces", ns, plural, rest @ ..]
            if !(ns_def && matches!(*plural, "status" | "finalize")) =>
        {
            let def = find(plural)?;
            if def.scope != Scope::Namespaced {
                return Err(ApiError::path_not_found());
            }
            let (name, sub) = match rest {
                [] => (None, None),
                [name] => (Some(name.to_string()), None),
                [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
                _ => return Err(ApiError::path_not_found()),
            };
            Ok(Target {
                def,
                namespace: Some(ns.to_string()),
                name,
                subresource: sub,
            })
        }
        [plural, rest @ ..] => {
            let def = find(plural)?;
            let (name, sub) = match rest {
                [] => (None, None),
                [name] if def.scope == Scope::Cluster => (Some(name.to_string()), None),
                [name, sub] if def.scope == Scope::Cluster => {
                    (Some(name.to_string()), Some(sub.to_string()))
                }
                _ => return Err(ApiError::path_not_found()),
            };
            Ok(Target {
                def,
                namespace: None,
                name,
                subresource: sub,
            })
        }
        [] => Err(ApiError::path_not_found()),
    }
}

/// Query parameters, decoded.
pub type Query = HashMap<String, String>;

pub fn parse_query(raw: Option<&str>) -> Query {
    let mut out = HashMap::new();
    if let Some(q) = raw {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            out.insert(percent_decode(k), percent_decode(v));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn flag(q: &Query, key: &str) -> bool {
    q.get(key)
        .is_some_and(|v| v == "true" || v == "1" || v.is_empty() && q.contains_key(key))
}

/// How the client wants objects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Object,
    Table,
    PartialMetadata,
}

pub fn wanted_shape(headers: &HeaderMap) -> Shape {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    for part in accept.split(',') {
        let p = part.replace(' ', "");
        if p.contains("as=Table") && p.contains("g=meta.k8s.io") {
            return Shape::Table;
        }
        if (p.contains("as=PartialObjectMetadataList")
            || p.contains("as=PartialObjectMetadata;")
            || p.ends_with("as=PartialObjectMetadata"))
            && p.contains("g=meta.k8s.io")
        {
            return Shape::PartialMetadata;
        }
        if p.starts_with("application/json")
            || p.starts_with("*/*")
            || p.starts_with("application/vnd.kubernetes.protobuf")
        {
            return Shape::Object;
        }
    }
    Shape::Object
}

pub fn json_response(code: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (code, [(header::CONTENT_TYPE, "application/json")], bytes).into_response()
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {:?}", w);
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

/// The request's media type (Content-Type without parameters, lower case), or `default`.
pub fn media_type(headers: &HeaderMap, default: &str) -> String {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(default);
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Decode a request body by its Content-Type (JSON, YAML or Kubernetes protobuf).
pub fn decode_body(headers: &HeaderMap, body: &[u8]) -> ApiResult<Value> {
    match media_type(headers, "application/json").as_str() {
        "application/json" | "" => serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding JSON body: {e}"))),
        "application/yaml" | "application/x-yaml" | "text/yaml" => yaml_to_json(body),
        "application/vnd.kubernetes.protobuf" => api::protobuf::decode(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding protobuf body: {e}"))),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

pub fn yaml_to_json(body: &[u8]) -> ApiResult<Value> {
    let text =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("body is not valid UTF-8"))?;
    serde_yaml::from_str::<Value>(text)
        .map_err(|e| ApiError::bad_request(format!("error decoding YAML body: {e}")))
}

fn write_options(q: &Query, headers: &HeaderMap) -> ApiResult<WriteOptions> {
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "Invalid dryRun value {other:?}: supported values: \"All\""
            )));
        }
    };
    let field_validation = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") => "Warn".to_string(),
        Some(v @ ("Strict" | "Warn" | "Ignore")) => v.to_string(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other}; valid values are Ignore, Warn, Strict"
            )));
        }
    };
    let field_manager = match q.get("fieldManager") {
        Some(m) if m.len() > 128 => {
            return Err(ApiError::bad_request(
                "fieldManager: Too long: may not be more than 128 bytes",
            ));
        }
        Some(m) if !m.is_empty() => m.clone(),
        _ => default_manager(headers),
    };
    Ok(WriteOptions {
        dry_run,
        field_manager,
        field_validation,
    })
}

/// Upstream names the manager after the User-Agent's program name when none is given.
fn default_manager(headers: &HeaderMap) -> String {
    let ua = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown");
    ua.split('/').next().unwrap_or("unknown").to_string()
}

fn list_options(def: &ResourceDef, q: &Query) -> ApiResult<ListOptions> {
    let label_selector = match q.get("labelSelector").filter(|s| !s.is_empty()) {
        Some(s) => Some(LabelSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?),
        None => None,
    };
    let field_selector = match q.get("fieldSelector").filter(|s| !s.is_empty()) {
        Some(s) => {
            let fs = FieldSelector::parse(s).map_err(|e| ApiError::bad_request(e.to_string()))?;
            fs.check_supported(def.group, def.kind)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            Some(fs)
        }
        None => None,
    };
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        Some(l) => l
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?
            .max(0) as usize,
        None => 0,
    };
    Ok(ListOptions {
        label_selector,
        field_selector,
        limit,
        continue_token: q.get("continue").filter(|s| !s.is_empty()).cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q
            .get("resourceVersionMatch")
            .filter(|s| !s.is_empty())
            .cloned(),
    })
}

/// Table of objects.
pub fn table(def: &ResourceDef, objs: &[Value], list_meta: Value, columns: bool) -> Value {
    let now = jiff::Timestamp::now();
    let cols: Vec<Value> = if columns {
        def.table
            .columns
            .iter()
            .map(|c| json!({"name": c.name, "type": c.type_, "format": c.format, "description": c.description, "priority": c.priority}))
            .collect()
    } else {
        Vec::new()
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| json!({"cells": (def.table.cells)(o, now), "object": partial(o)}))
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "columnDefinitions": cols, "rows": rows})
}

fn partial(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

fn shaped_object(def: &ResourceDef, obj: Value, shape: Shape) -> Value {
    match shape {
        Shape::Object => obj,
        Shape::PartialMetadata => partial(&obj),
        Shape::Table => {
            let rv = meta_str(&obj, "resourceVersion")
                .unwrap_or_default()
                .to_string();
            table(
                def,
                std::slice::from_ref(&obj),
                json!({"resourceVersion": rv}),
                true,
            )
        }
    }
}

/// Read a request body with the 3 MiB limit.
pub async fn read_body(body: Body) -> ApiResult<Bytes> {
    let limited = http_body_util::Limited::new(body, MAX_BODY);
    match http_body_util::BodyExt::collect(limited).await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(ApiError::too_large())
            } else {
                Err(ApiError::bad_request(format!(
                    "error reading request body: {e}"
                )))
            }
        }
    }
}

/// Serve one resource request (`rest`: the path after `/api/v1/` or `/apis/G/V/`).
pub async fn serve(
    st: Arc<State>,
    group: &str,
    version: &str,
    rest: &str,
    req: axum::extract::Request,
) -> Response {
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let target = match parse_target(group, version, &segs) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let (mut parts, body) = req.into_parts();
    let method = parts.method.clone();
    let query = parse_query(parts.uri.query());
    let headers = std::mem::take(&mut parts.headers);
    match dispatch(st, target, method, query, headers, body, parts).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `parts` is the rest of the request (URI, extensions with the connection's upgrade handle;
/// its headers moved out into `headers`), kept for the pod proxy.
async fn dispatch(
    st: Arc<State>,
    t: Target,
    method: Method,
    q: Query,
    headers: HeaderMap,
    body: Body,
    parts: http::request::Parts,
) -> ApiResult<Response> {
    let def = t.def;
    let shape = wanted_shape(&headers);
    let ns = t.namespace.clone();
    match (&method, &t.name, t.subresource.as_deref()) {
        (&Method::GET, None, None) => {
            if flag(&q, "watch") {
                return watch(st, def, ns, q, shape).await;
            }
            let opts = list_options(def, &q)?;
            let (items, rev, cont, remaining) = st.objects.list(def, ns.as_deref(), &opts).await?;
            let mut list_meta = json!({"resourceVersion": rev.to_string()});
            if let Some(c) = cont {
                list_meta["continue"] = c.into();
                if let Some(r) = remaining {
                    list_meta["remainingItemCount"] = (r - items.len() as i64).max(0).into();
                }
            }
            let body = match shape {
                Shape::Table => table(def, &items, list_meta, true),
                Shape::PartialMetadata => {
                    json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "items": items.iter().map(partial).collect::<Vec<_>>()})
                }
                Shape::Object => {
                    json!({"kind": def.list_kind, "apiVersion": def.api_version(), "metadata": list_meta, "items": items})
                }
            };
            Ok(json_response(StatusCode::OK, &body))
        }
        (&Method::POST, None, None) => {
            let bytes = read_body(body).await?;
            let obj = decode_body(&headers, &bytes)?;
            let opts = write_options(&q, &headers)?;
            let w = st.objects.create(def, ns.as_deref(), obj, &opts).await?;
            Ok(with_warnings(
                json_response(StatusCode::CREATED, &shaped_object(def, w.object, shape)),
                &w.warnings,
            ))
        }
        (&Method::DELETE, None, None) => {
            let opts = list_options(def, &q)?;
            let dopts = delete_options(&q, &headers, body).await?;
            let (items, rev) = st.objects.list_all(def, ns.as_deref(), &opts).await?;
            let mut deleted = Vec::new();
            for item in items {
                let r = ObjectRef {
                    def,
                    namespace: meta_str(&item, "namespace").map(str::to_string),
                    name: meta_str(&item, "name").unwrap_or_default().to_string(),
                };
                match st.objects.delete(&r, &dopts).await {
                    Ok((obj, _)) => deleted.push(obj),
                    Err(e) if e.code == StatusCode::NOT_FOUND => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(json_response(
                StatusCode::OK,
                &json!({"kind": def.list_kind, "apiVersion": def.api_version(), "metadata": {"resourceVersion": rev.to_string()}, "items": deleted}),
            ))
        }
        (_, Some(name), sub) => {
            let r = ObjectRef {
                def,
                namespace: ns.clone(),
                name: name.clone(),
            };
            item(st, r, sub, method, q, headers, body, shape, parts).await
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource".to_string(),
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn item(
    st: Arc<State>,
    r: ObjectRef,
    sub: Option<&str>,
    method: Method,
    q: Query,
    headers: HeaderMap,
    body: Body,
    shape: Shape,
    mut parts: http::request::Parts,
) -> ApiResult<Response> {
    let def = r.def;
    if let Some(s) = sub
        && !def.subresources.contains(&s)
    {
        return Err(ApiError::path_not_found());
    }
    match (method.clone(), sub) {
        (Method::GET, None | Some("status")) => {
            let obj = st.objects.get(&r).await?;
            Ok(json_response(
                StatusCode::OK,
                &shaped_object(def, obj, shape),
            ))
        }
        (Method::GET, Some("scale")) => {
            let obj = st.objects.get(&r).await?;
            Ok(json_response(
                StatusCode::OK,
                &crate::subresources::scale_of(&obj),
            ))
        }
        (Method::PUT, None | Some("status")) => {
            let bytes = read_body(body).await?;
            let obj = decode_body(&headers, &bytes)?;
            let opts = write_options(&q, &headers)?;
            let w = st.objects.update(&r, sub, obj, &opts).await?;
            let code = if w.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(with_warnings(
                json_response(code, &shaped_object(def, w.object, shape)),
                &w.warnings,
            ))
        }
        (Method::PATCH, None | Some("status")) => {
            let bytes = read_body(body).await?;
            let opts = write_options(&q, &headers)?;
            let w = crate::patch::patch(&st, &r, sub, &headers, &q, &bytes, &opts).await?;
            let code = if w.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(with_warnings(
                json_response(code, &shaped_object(def, w.object, shape)),
                &w.warnings,
            ))
        }
        (Method::PUT | Method::PATCH, Some("scale")) => {
            let bytes = read_body(body).await?;
            let opts = write_options(&q, &headers)?;
            let scale =
                crate::subresources::write_scale(&st, &r, &method, &headers, &bytes, &opts).await?;
            Ok(json_response(StatusCode::OK, &scale))
        }
        (Method::PUT, Some("finalize")) => {
            let bytes = read_body(body).await?;
            let obj = decode_body(&headers, &bytes)?;
            let out = crate::subresources::finalize_namespace(&st, &r, obj).await?;
            Ok(json_response(StatusCode::OK, &out))
        }
        (Method::DELETE, None) => {
            let dopts = delete_options(&q, &headers, body).await?;
            let (obj, gone) = st.objects.delete(&r, &dopts).await?;
            let code = if gone {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            if gone && def.kind == "Namespace" {
                return Ok(json_response(code, &obj));
            }
            Ok(json_response(code, &obj))
        }
        (Method::POST, Some("binding")) => {
            let bytes = read_body(body).await?;
            let binding = decode_body(&headers, &bytes)?;
            crate::subresources::bind(&st, &r, &binding).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (Method::POST, Some("eviction")) => {
            let bytes = read_body(body).await?;
            let eviction = decode_body(&headers, &bytes)?;
            crate::subresources::evict(&st, &r, &eviction).await?;
            Ok(json_response(
                StatusCode::CREATED,
                &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        (_, Some("log" | "exec" | "attach" | "portforward" | "proxy")) => {
            let sub = sub.unwrap_or_default();
            parts.method = method;
            parts.headers = headers;
            let req = axum::extract::Request::from_parts(parts, body);
            st.pod_proxy.proxy(&st, &r, sub, req).await
        }
        _ => Err(ApiError::method_not_allowed(
            "the server does not allow this method on the requested resource",
        )),
    }
}

async fn delete_options(q: &Query, headers: &HeaderMap, body: Body) -> ApiResult<DeleteOptions> {
    let bytes = read_body(body).await?;
    let mut o = DeleteOptions::default();
    if !bytes.is_empty() {
        let v = decode_body(headers, &bytes)?;
        if let Some(kind) = v.get("kind").and_then(Value::as_str)
            && kind != "DeleteOptions"
        {
            return Err(ApiError::bad_request(format!(
                "expected DeleteOptions, got {kind}"
            )));
        }
        o.grace_period_seconds = v.get("gracePeriodSeconds").and_then(Value::as_i64);
        o.propagation_policy = v
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string);
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true)
            && o.propagation_policy.is_none()
        {
            o.propagation_policy = Some("Orphan".into());
        }
        o.precondition_uid = v
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        o.precondition_rv = v
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        o.dry_run = v
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|x| x == "All"));
    }
    if let Some(g) = q.get("gracePeriodSeconds").filter(|s| !s.is_empty()) {
        o.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    if let Some(p) = q.get("propagationPolicy").filter(|s| !s.is_empty()) {
        o.propagation_policy = Some(p.clone());
    }
    if q.get("dryRun").is_some_and(|d| d == "All") {
        o.dry_run = true;
    }
    Ok(o)
}

/// Where a watch's events come from: the shared watch cache, or (for revisions older than the
/// cache holds) a watch on the backend.
enum Source {
    Cache(
        std::collections::VecDeque<Arc<CachedEvent>>,
        tokio::sync::broadcast::Receiver<Arc<CachedEvent>>,
    ),
    Backend(store::WatchStream),
}

impl Source {
    async fn next(&mut self) -> Option<ApiResult<Arc<CachedEvent>>> {
        match self {
            Source::Cache(backlog, live) => {
                if let Some(e) = backlog.pop_front() {
                    return Some(Ok(e));
                }
                match live.recv().await {
                    Ok(e) => Some(Ok(e)),
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        Some(Err(ApiError::gone(format!(
                            "watch too slow: {n} events dropped; too old resource version"
                        ))))
                    }
                }
            }
            Source::Backend(stream) => loop {
                match stream.next().await? {
                    Ok(ev) => match CachedEvent::from_store(ev) {
                        Some(c) => return Some(Ok(Arc::new(c))),
                        None => continue,
                    },
                    Err(e) => return Some(Err(e.into())),
                }
            },
        }
    }
}

/// One watch: optional initial state, then events, bookmarks and the timeout, as chunked JSON lines.
async fn watch(
    st: Arc<State>,
    def: &'static ResourceDef,
    ns: Option<String>,
    q: Query,
    shape: Shape,
) -> ApiResult<Response> {
    let opts = list_options(def, &q)?;
    let bookmarks = flag(&q, "allowWatchBookmarks");
    let send_initial = flag(&q, "sendInitialEvents");
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let rv = opts.resource_version.clone().unwrap_or_default();
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let mut initial = Vec::new();
    let after = if rv.is_empty() || rv == "0" || send_initial {
        let (items, rev) = st.objects.list_all(def, ns.as_deref(), &opts).await?;
        initial = items;
        rev
    } else {
        rv.parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version {rv:?}")))?
    };
    let cached = st.watch_cache.as_ref().and_then(|c| c.subscribe(after));
    let source = match cached {
        Some(sub) => Some(Source::Cache(sub.backlog.into(), sub.live)),
        None => match st.objects.watch(def, ns.as_deref(), after).await {
            Ok(s) => Some(Source::Backend(s)),
            Err(e) if e.code == StatusCode::GONE => {
                let line = event_line("ERROR", e.status());
                let _ = tx.send(line).await;
                None
            }
            Err(e) => return Err(e),
        },
    };
    let prefix = objects::prefix(def, ns.as_deref());
    let shareable = shape == Shape::Object && def.conversion.is_none();
    let plain = shareable
        && opts.label_selector.as_ref().is_none_or(|s| s.is_empty())
        && opts.field_selector.is_none();
    let mut columns_sent = false;
    let mut render = move |obj: Value| -> Value {
        match shape {
            Shape::Object => obj,
            Shape::PartialMetadata => partial(&obj),
            Shape::Table => {
                let t = table(
                    def,
                    std::slice::from_ref(&obj),
                    json!({"resourceVersion": meta_str(&obj, "resourceVersion").unwrap_or_default()}),
                    !columns_sent,
                );
                columns_sent = true;
                t
            }
        }
    };
    tokio::spawn(async move {
        for obj in initial {
            if tx.send(event_line("ADDED", render(obj))).await.is_err() {
                return;
            }
        }
        let mut last_rev = after;
        if send_initial {
            let bm = json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": {"resourceVersion": after.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            if tx.send(event_line("BOOKMARK", bm)).await.is_err() {
                return;
            }
        }
        let Some(mut source) = source else { return };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_secs(if bookmarks { 5 } else { 3600 }));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let bm = json!({"kind": def.kind, "apiVersion": def.api_version(), "metadata": {"resourceVersion": last_rev.to_string()}});
                    if tx.send(event_line("BOOKMARK", bm)).await.is_err() { return; }
                }
                ev = source.next() => {
                    let ev = match ev {
                        None => return,
                        Some(Ok(ev)) => ev,
                        Some(Err(e)) => {
                            let _ = tx.send(event_line("ERROR", e.status())).await;
                            return;
                        }
                    };
                    if ev.revision <= last_rev || !ev.key.starts_with(&prefix) {
                        continue;
                    }
                    last_rev = ev.revision;
                    if plain {
                        if tx.send(ev.plain_line()).await.is_err() { return; }
                        continue;
                    }
                    match classify(&st, def, &opts, &ev) {
                        Ok(Some(ty)) => {
                            // The shared pre-rendered line serves whenever this watcher sees the
                            // event as every plain watcher does.
                            let line = if shareable && ty == ev.plain_type() {
                                ev.plain_line()
                            } else {
                                let obj = match def.conversion {
                                    Some(c) => (c.from_storage)(ev.obj.clone()),
                                    None => ev.obj.clone(),
                                };
                                event_line(ty, render(obj))
                            };
                            if tx.send(line).await.is_err() { return; }
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = tx.send(event_line("ERROR", e.status())).await;
                            return;
                        }
                    }
                }
            }
        }
    });
    let body = Body::from_stream(
        tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<Bytes, std::convert::Infallible>),
    );
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .unwrap_or_else(|_| ApiError::internal("response").into_response()))
}

fn event_line(ty: &str, obj: Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// A decoded event as this watch sees it, with selector transitions as upstream: an object that
/// stops matching is DELETED, one that starts matching is ADDED.
fn classify(
    st: &State,
    def: &ResourceDef,
    opts: &ListOptions,
    ev: &CachedEvent,
) -> ApiResult<Option<&'static str>> {
    // Selectors are evaluated on the stored form unless the resource is converted.
    let matches = |v: &Value| -> ApiResult<bool> {
        match def.conversion {
            Some(c) => st.objects.matches(def, &(c.from_storage)(v.clone()), opts),
            None => st.objects.matches(def, v, opts),
        }
    };
    let now = matches(&ev.obj)?;
    if ev.deleted {
        return Ok(now.then_some("DELETED"));
    }
    let before = match &ev.prev {
        Some(p) => Some(matches(p)?),
        None => None,
    };
    Ok(match (before, now) {
        (None, true) | (Some(false), true) => Some("ADDED"),
        (Some(true), true) => Some("MODIFIED"),
        (Some(true), false) => Some("DELETED"),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_upstream_paths() {
        let t = parse_target(
            "",
            "v1",
            &["namespaces", "default", "pods", "web", "status"],
        )
        .expect("pod status");
        assert_eq!(
            (
                t.def.kind,
                t.namespace.as_deref(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("Pod", Some("default"), Some("web"), Some("status"))
        );
        let t = parse_target("", "v1", &["namespaces", "default"]).expect("namespace");
        assert_eq!(
            (t.def.kind, t.name.as_deref()),
            ("Namespace", Some("default"))
        );
        let t = parse_target("", "v1", &["namespaces", "x", "finalize"]).expect("finalize");
        assert_eq!(
            (t.def.kind, t.subresource.as_deref()),
            ("Namespace", Some("finalize"))
        );
        let t = parse_target("", "v1", &["pods"]).expect("all pods");
        assert!(t.namespace.is_none() && t.name.is_none());
        assert!(
            parse_target("", "v1", &["pods", "x"]).is_err(),
            "namespaced item without namespace"
        );
        assert!(parse_target("", "v1", &["nodes", "a", "b", "c"]).is_err());
        assert!(parse_target("", "v1", &["bogus"]).is_err());
        let t = parse_target(
            "apps",
            "v1",
            &["namespaces", "d", "deployments", "web", "scale"],
        )
        .expect("scale");
        assert_eq!(t.subresource.as_deref(), Some("scale"));
    }

    #[test]
    fn query_decoding() {
        let q = parse_query(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&watch=true&limit=5&x=%zz",
        ));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["x"], "%zz");
        assert!(flag(&q, "watch"));
    }

    #[test]
    fn accept_headers_pick_the_shape() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"));
        assert_eq!(wanted_shape(&h), Shape::Table);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf,application/json"),
        );
        assert_eq!(wanted_shape(&h), Shape::Object);
    }
}
