//! The Kubernetes-compatible API server: `fn router(state) -> axum::Router` serving discovery,
//! OpenAPI v3, and every resource declared in `api::resource::RESOURCES` (REST, watch, patch,
//! tables, admission), plus `serve` for HTTPS with the server's own PKI and bearer tokens.
//!
//! Depends on `api` (the sans-IO core) and `store` (the `Backend` trait); it knows no storage
//! engine and no sandbox. Pod logs/exec/attach/port-forward go through the `PodProxy` hook that the
//! data plane fills.

pub mod admission;
pub mod discovery;
pub mod error;
pub mod http;
pub mod informer;
pub mod objects;
pub mod openapi;
pub mod openapi_v2;
pub mod patch;
pub mod pki;
pub mod podproxy;
pub mod serverless;
pub mod subresources;
pub mod testing;
pub mod watchcache;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use ::http::{HeaderMap, StatusCode, header};
use axum::Router;
use axum::extract::{Path, Request, State as AxState};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use serde_json::Value;

use crate::error::{ApiError, ApiResult};
use crate::objects::{ObjectRef, Objects};

/// Where pod logs, exec, attach and port-forward requests go. The default answers as upstream
/// does when no node can serve the pod; [`podproxy::AgentProxy`] forwards to the node's agent.
#[async_trait::async_trait]
pub trait PodProxy: Send + Sync {
    /// Serve `subresource` (`log`, `exec`, `attach`, `portforward`, `proxy`) of `pod`. `req` is the
    /// client's whole request: method, URI with the raw query (repeated `command=` parameters),
    /// headers, body, and in its extensions the `hyper::upgrade::OnUpgrade` of the connection.
    async fn proxy(
        &self,
        st: &State,
        pod: &ObjectRef,
        subresource: &str,
        req: Request,
    ) -> ApiResult<Response>;
}

/// The PodProxy used until a data plane is attached.
pub struct NoNodes;

#[async_trait::async_trait]
impl PodProxy for NoNodes {
    async fn proxy(
        &self,
        st: &State,
        pod: &ObjectRef,
        sub: &str,
        _req: Request,
    ) -> ApiResult<Response> {
        let obj = st.objects.get(pod).await?;
        match obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            None => Err(ApiError::bad_request(format!(
                "pod {} does not have a host assigned",
                pod.name
            ))),
            Some(node) => Err(ApiError::service_unavailable(format!(
                "no agent serves node {node:?} for {sub} of pod {}",
                pod.name
            ))),
        }
    }
}

/// Bearer tokens accepted by the server.
#[derive(Default)]
pub struct Tokens {
    tokens: RwLock<HashSet<String>>,
}

impl Tokens {
    pub fn new(initial: impl IntoIterator<Item = String>) -> Self {
        Self {
            tokens: RwLock::new(initial.into_iter().collect()),
        }
    }
    pub fn add(&self, token: String) {
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token);
        }
    }
    pub fn valid(&self, token: &str) -> bool {
        self.tokens
            .read()
            .map(|t| t.contains(token))
            .unwrap_or(false)
    }
}

/// Everything a request handler needs.
pub struct State {
    pub objects: Objects,
    pub tokens: Tokens,
    pub pod_proxy: Arc<dyn PodProxy>,
    /// host:port clients use to reach this server (for `/api`'s serverAddressByClientCIDRs).
    pub server_address: String,
    /// The shared watch cache (None: every watch reads the backend).
    pub watch_cache: Option<Arc<watchcache::WatchCache>>,
}

/// The whole API as an axum router.
pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/version", get(|| async { crate::http::json_response(StatusCode::OK, &discovery::version()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .route("/api", get(|AxState(st): AxState<Arc<State>>, h: HeaderMap| async move { discovery::api(&h, &st.server_address) }))
        .route("/apis", get(|h: HeaderMap| async move { discovery::apis(&h) }))
        .route("/api/v1", get(|| async { discovery::resource_list("", "v1") }))
        .route("/apis/{group}", get(|Path(g): Path<String>| async move { discovery::group(&g) }))
        .route("/apis/{group}/{version}", get(|Path((g, v)): Path<(String, String)>| async move { discovery::resource_list(&g, &v) }))
        .route("/api/v1/{*rest}", any(core_resource))
        .route("/apis/{group}/{version}/{*rest}", any(group_resource))
        .route("/openapi/v3", get(|| async { crate::http::json_response(StatusCode::OK, &openapi::index()) }))
        .route("/openapi/v3/{*path}", get(openapi_doc))
        .route("/openapi/v2", get(openapi_v2_doc))
        .fallback(|| async { ApiError::path_not_found().into_response() })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
}

async fn core_resource(
    AxState(st): AxState<Arc<State>>,
    Path(rest): Path<String>,
    req: Request,
) -> Response {
    crate::http::serve(st, "", "v1", &rest, req).await
}

async fn group_resource(
    AxState(st): AxState<Arc<State>>,
    Path((g, v, rest)): Path<(String, String, String)>,
    req: Request,
) -> Response {
    crate::http::serve(st, &g, &v, &rest, req).await
}

async fn openapi_doc(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let Some(doc) = openapi::docs().get(path.trim_matches('/')) else {
        return ApiError::path_not_found().into_response();
    };
    let etag = format!("\"{}\"", doc.hash);
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(etag.as_str())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, "public, immutable".to_string()),
        ],
        doc.body.clone(),
    )
        .into_response()
}

async fn openapi_v2_doc(headers: HeaderMap) -> Response {
    let doc = openapi_v2::document();
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        == Some(doc.etag.as_str())
    {
        return StatusCode::NOT_MODIFIED.into_response();
    }
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (ct, body) = if accept.contains("protobuf") {
        (openapi_v2::PROTOBUF_CONTENT_TYPE, doc.protobuf.clone())
    } else {
        ("application/json", doc.json.clone())
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ct.to_string()),
            (header::ETAG, doc.etag.clone()),
        ],
        body,
    )
        .into_response()
}

async fn authenticate(AxState(st): AxState<Arc<State>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/livez" | "/readyz") {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match token {
        Some(t) if st.tokens.valid(t) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// Serve `app` over HTTPS on `listener` until the task is dropped.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer): (tokio::net::TcpStream, SocketAddr) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Objects every cluster starts with: the `default`, `kube-system`, `kube-public` and
/// `kube-node-lease` namespaces and their `default` service accounts.
pub async fn bootstrap(objects: &Objects) -> ApiResult<()> {
    let nsdef = api::resource::find("", "v1", "namespaces").expect("namespaces are served");
    let sadef =
        api::resource::find("", "v1", "serviceaccounts").expect("serviceaccounts are served");
    let opts = objects::WriteOptions {
        field_manager: "nodeless".into(),
        field_validation: "Strict".into(),
        dry_run: false,
    };
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let r = ObjectRef {
            def: nsdef,
            namespace: None,
            name: ns.into(),
        };
        if objects.get(&r).await.is_err() {
            match objects
                .create(
                    nsdef,
                    None,
                    serde_json::json!({"metadata": {"name": ns}}),
                    &opts,
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
        let sa = ObjectRef {
            def: sadef,
            namespace: Some(ns.into()),
            name: "default".into(),
        };
        if objects.get(&sa).await.is_err() {
            match objects
                .create(
                    sadef,
                    Some(ns),
                    serde_json::json!({"metadata": {"name": "default"}}),
                    &opts,
                )
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == "AlreadyExists" => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// The built-in admission chain: pod defaults (service account, default tolerations), then
/// serverless profiles.
pub fn default_admission(backend: Arc<dyn store::Backend>) -> admission::Admission {
    admission::Admission::new(vec![
        Arc::new(admission::builtin::PodDefaults),
        Arc::new(serverless::ServerlessAdmission::new(backend)),
    ])
}

/// Compact the store's history as upstream does: keep about `keep` of history (5 minutes
/// upstream), compacting every `every`. Watches older than the compaction point get 410 Gone.
pub async fn compactor(
    backend: Arc<dyn store::Backend>,
    every: std::time::Duration,
    keep: std::time::Duration,
) {
    let mut marks: std::collections::VecDeque<(std::time::Instant, store::Revision)> =
        Default::default();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        match backend.current_revision().await {
            Ok(rev) => marks.push_back((now, rev)),
            Err(e) => tracing::warn!(error = %e, "compactor cannot read the revision"),
        }
        let mut target = None;
        while let Some(&(t, rev)) = marks.front() {
            if now.duration_since(t) >= keep {
                target = Some(rev);
                marks.pop_front();
            } else {
                break;
            }
        }
        if let Some(rev) = target.filter(|r| *r > 1) {
            match backend.compact(rev).await {
                Ok(()) => tracing::debug!(revision = rev, "compacted"),
                Err(e) => tracing::warn!(error = %e, revision = rev, "compaction failed"),
            }
        }
    }
}
