//! [`AgentProxy`]: the API server side of `kubectl logs/exec/attach/port-forward`. It finds the
//! pod's Node, reads the node's agent endpoint and certificate fingerprint from its annotations
//! (`nodeless.io/agent-endpoint`, `nodeless.io/agent-cert-sha256`), dials the agent over TLS
//! accepting exactly that certificate, presents the API server's admin token, and then either
//! streams the log body back chunk by chunk or, for exec/attach/port-forward, answers the
//! client's upgrade with the agent's `101` and splices the two upgraded connections byte for byte
//! (it never re-encodes WebSocket or SPDY).
//!
//! The pure parts (container choice, log options, the node's agent endpoint) are plain functions
//! over JSON values, tested beside the code; the network part is tested in `tests/podproxy.rs`
//! against a fake agent. This module knows no agent code: only the kubelet-style paths of the
//! contract (`/containerLogs/{ns}/{pod}/{container}`, `/exec/...`, `/attach/...`,
//! `/portForward/{ns}/{pod}`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderName, Method, StatusCode, header};
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use crate::error::{ApiError, ApiResult};
use crate::http::Query;
use crate::objects::ObjectRef;
use crate::{PodProxy, State};

/// Node annotation: the agent's streaming server, e.g. `https://127.0.0.1:10250`.
pub const ENDPOINT_ANNOTATION: &str = "nodeless.io/agent-endpoint";
/// Node annotation: lowercase hex SHA-256 of the DER of the agent's certificate.
pub const CERT_ANNOTATION: &str = "nodeless.io/agent-cert-sha256";

/// TCP connect plus TLS handshake plus HTTP/1.1 handshake must finish within this.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// The agent must send its response head within this after the request.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Request headers passed to the agent on exec/attach/port-forward (every value of each).
const UPGRADE_REQUEST_HEADERS: [&str; 6] = [
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];
/// Headers of the agent's `101` passed back to the client.
const UPGRADE_RESPONSE_HEADERS: [&str; 5] = [
    "upgrade",
    "connection",
    "sec-websocket-accept",
    "sec-websocket-protocol",
    "x-stream-protocol-version",
];

/// Most distinct agent certificates whose client configs are kept (for TLS session resumption).
const MAX_CACHED_CONFIGS: usize = 256;

/// Forwards `pods/log`, `pods/exec`, `pods/attach` and `pods/portforward` to the agent that runs
/// the pod, authenticating with `token` (the API server's admin token, which agents accept).
pub struct AgentProxy {
    token: String,
    provider: Arc<CryptoProvider>,
    configs: Mutex<HashMap<[u8; 32], Arc<ClientConfig>>>,
}

impl AgentProxy {
    pub fn new(token: String) -> AgentProxy {
        AgentProxy {
            token,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            configs: Mutex::new(HashMap::new()),
        }
    }

    /// The TLS client config that accepts exactly the certificate whose SHA-256 is `sha256`.
    fn client_config(&self, sha256: [u8; 32]) -> Result<Arc<ClientConfig>, rustls::Error> {
        if let Ok(cache) = self.configs.lock()
            && let Some(c) = cache.get(&sha256)
        {
            return Ok(c.clone());
        }
        let verifier = Arc::new(PinnedCertificate {
            sha256,
            algorithms: self.provider.signature_verification_algorithms,
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        // HTTP/1.1 only: the upgrades of exec/attach/port-forward need it.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if let Ok(mut cache) = self.configs.lock() {
            if cache.len() >= MAX_CACHED_CONFIGS {
                cache.clear();
            }
            cache.insert(sha256, config.clone());
        }
        Ok(config)
    }

    /// TCP, TLS with the pinned certificate, then an HTTP/1.1 connection (with upgrades) whose
    /// driver runs on its own task.
    async fn dial(
        &self,
        agent: &AgentEndpoint,
    ) -> Result<http1::SendRequest<Empty<Bytes>>, DialError> {
        let config = self
            .client_config(agent.sha256)
            .map_err(DialError::Config)?;
        let addr = format!("{}:{}", agent.host, agent.port);
        let dial = async {
            let tcp = tokio::net::TcpStream::connect((agent.host.as_str(), agent.port))
                .await
                .map_err(|source| DialError::Connect {
                    addr: addr.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(agent.server_name.clone(), tcp)
                .await
                .map_err(|source| DialError::Tls {
                    addr: addr.clone(),
                    source,
                })?;
            let (send, conn) = http1::handshake(TokioIo::new(tls))
                .await
                .map_err(DialError::Http)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "agent connection ended with an error");
                }
            });
            Ok(send)
        };
        match tokio::time::timeout(DIAL_TIMEOUT, dial).await {
            Ok(r) => r,
            Err(_) => Err(DialError::Timeout { addr }),
        }
    }

    /// Send `req` to the agent and wait for its response head.
    async fn roundtrip(
        &self,
        agent: &AgentEndpoint,
        req: http::Request<Empty<Bytes>>,
    ) -> ApiResult<http::Response<hyper::body::Incoming>> {
        let mut send = self
            .dial(agent)
            .await
            .map_err(|e| ApiError::internal(format!("error dialing backend: {}", chain(&e))))?;
        match tokio::time::timeout(RESPONSE_TIMEOUT, send.send_request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ApiError::internal(format!(
                "error reading from backend: {}",
                chain(&e)
            ))),
            Err(_) => Err(ApiError::timeout(format!(
                "the agent at {} did not answer within {}s",
                agent.endpoint,
                RESPONSE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The request to the agent: `path_and_query`, Host, the admin token.
    fn agent_request(
        &self,
        agent: &AgentEndpoint,
        method: Method,
        path_and_query: &str,
    ) -> http::request::Builder {
        http::Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, agent.authority.as_str())
            .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(header::USER_AGENT, "nodeless-apiserver")
    }

    async fn logs(&self, agent: &AgentEndpoint, path_and_query: String) -> ApiResult<Response> {
        let req = self
            .agent_request(agent, Method::GET, &path_and_query)
            .body(Empty::new())
            .map_err(|e| ApiError::bad_request(format!("invalid log request: {e}")))?;
        let resp = self.roundtrip(agent, req).await?;
        Ok(pass_through(resp))
    }

    async fn upgrade(
        &self,
        agent: &AgentEndpoint,
        path_and_query: String,
        mut req: Request,
    ) -> ApiResult<Response> {
        let Some(client_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>()
        else {
            return Err(ApiError::bad_request("Upgrade request required"));
        };
        let mut b = self.agent_request(agent, req.method().clone(), &path_and_query);
        for name in UPGRADE_REQUEST_HEADERS {
            for v in req.headers().get_all(name) {
                b = b.header(name, v.clone());
            }
        }
        let agent_req = b
            .body(Empty::new())
            .map_err(|e| ApiError::bad_request(format!("invalid upgrade request: {e}")))?;
        let mut resp = self.roundtrip(agent, agent_req).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(pass_through(resp));
        }
        let agent_upgrade = hyper::upgrade::on(&mut resp);
        let mut out = Response::new(Body::empty());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for name in UPGRADE_RESPONSE_HEADERS {
            let name = HeaderName::from_static(name);
            for v in resp.headers().get_all(&name) {
                out.headers_mut().append(name.clone(), v.clone());
            }
        }
        let endpoint = agent.endpoint.clone();
        tokio::spawn(async move {
            let (client, agent) = match tokio::try_join!(client_upgrade, agent_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "upgrade failed");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut agent = TokioIo::new(agent);
            match tokio::io::copy_bidirectional(&mut client, &mut agent).await {
                Ok((up, down)) => {
                    tracing::debug!(%endpoint, up, down, "stream to agent closed")
                }
                Err(e) => tracing::debug!(%endpoint, error = %e, "stream to agent ended"),
            }
        });
        Ok(out)
    }
}

#[async_trait::async_trait]
impl PodProxy for AgentProxy {
    async fn proxy(
        &self,
        st: &State,
        pod: &ObjectRef,
        subresource: &str,
        req: Request,
    ) -> ApiResult<Response> {
        match (subresource, req.method()) {
            ("log", &Method::GET) => {}
            ("exec" | "attach" | "portforward", &Method::GET | &Method::POST) => {}
            ("log" | "exec" | "attach" | "portforward", _) => {
                return Err(ApiError::method_not_allowed(
                    "the server does not allow this method on the requested resource",
                ));
            }
            (other, _) => {
                return Err(ApiError::service_unavailable(format!(
                    "pods/{other} is not served by this server"
                )));
            }
        }
        let raw_query = req.uri().query().unwrap_or("").to_string();
        let query = crate::http::parse_query(Some(&raw_query));
        let obj = st.objects.get(pod).await?;
        let container = if subresource == "portforward" {
            None
        } else {
            Some(choose_container(
                &obj,
                &pod.name,
                query.get("container").map(String::as_str),
            )?)
        };
        let log_query = if subresource == "log" {
            Some(log_query(&query, &pod.name)?)
        } else {
            None
        };
        let node_name = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request(format!("pod {} does not have a host assigned", pod.name))
            })?;
        let nodes = api::resource::find("", "v1", "nodes").expect("nodes are served");
        let node = st
            .objects
            .get(&ObjectRef {
                def: nodes,
                namespace: None,
                name: node_name.to_string(),
            })
            .await?;
        let agent = AgentEndpoint::from_node(&node)?;
        let ns = pod.namespace.as_deref().unwrap_or("default");
        let segs = |kind: &str| {
            let mut p = format!("/{kind}/{}/{}", path_segment(ns), path_segment(&pod.name));
            if let Some(c) = &container {
                p.push('/');
                p.push_str(&path_segment(c));
            }
            p
        };
        match subresource {
            "log" => {
                let mut p = segs("containerLogs");
                if let Some(q) = log_query.filter(|q| !q.is_empty()) {
                    p.push('?');
                    p.push_str(&q);
                }
                self.logs(&agent, p).await
            }
            sub => {
                let kind = match sub {
                    "exec" => "exec",
                    "attach" => "attach",
                    _ => "portForward",
                };
                let query = if sub == "portforward" {
                    portforward_query(&raw_query)?
                } else {
                    raw_query
                };
                let mut p = segs(kind);
                if !query.is_empty() {
                    p.push('?');
                    p.push_str(&query);
                }
                self.upgrade(&agent, p, req).await
            }
        }
    }
}

/// The agent's response as the client's: status, Content-Type, the body streamed frame by frame
/// (hyper flushes each frame, so `logs -f` sees lines as they come).
fn pass_through(resp: http::Response<hyper::body::Incoming>) -> Response {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        out.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    out
}

/// Where a node's agent listens and which certificate it must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentEndpoint {
    /// The annotation as written.
    pub endpoint: String,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// `host:port` as in the URL, for the Host header.
    pub authority: String,
    pub server_name: ServerName<'static>,
    pub sha256: [u8; 32],
}

impl AgentEndpoint {
    /// Read the two annotations of a Node.
    pub fn from_node(node: &Value) -> ApiResult<AgentEndpoint> {
        let name = node
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let annotation = |key: &str| {
            node.pointer("/metadata/annotations")
                .and_then(|a| a.get(key))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let Some(endpoint) = annotation(ENDPOINT_ANNOTATION) else {
            return Err(ApiError::bad_request(format!(
                "node {name} has no agent endpoint (annotation {ENDPOINT_ANNOTATION})"
            )));
        };
        let Some(fingerprint) = annotation(CERT_ANNOTATION) else {
            return Err(ApiError::bad_request(format!(
                "node {name} has no agent endpoint certificate (annotation {CERT_ANNOTATION})"
            )));
        };
        let sha256 = parse_sha256(fingerprint).ok_or_else(|| {
            ApiError::bad_request(format!(
                "node {name} has an invalid {CERT_ANNOTATION} annotation {fingerprint:?}: want 64 hex digits"
            ))
        })?;
        let bad_endpoint = |why: &str| {
            ApiError::bad_request(format!(
                "node {name} has an invalid {ENDPOINT_ANNOTATION} annotation {endpoint:?}: {why}"
            ))
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad_endpoint(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(bad_endpoint("the scheme must be https"));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| bad_endpoint("no host"))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| bad_endpoint("the host is neither a DNS name nor an IP address"))?;
        Ok(AgentEndpoint {
            endpoint: endpoint.to_string(),
            host,
            port,
            authority: authority.as_str().to_string(),
            server_name,
            sha256,
        })
    }
}

/// 64 hex digits (either case; `:` separators allowed) into the 32 bytes of a SHA-256.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The container a request is about, as upstream's `validateContainer`: the `container`
/// parameter, else the only container; names are looked up among init, regular and ephemeral
/// containers.
pub fn choose_container(pod: &Value, pod_name: &str, requested: Option<&str>) -> ApiResult<String> {
    let names_of = |field: &str| -> Vec<String> {
        pod.pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter_map(|c| c.get("name").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let containers = names_of("containers");
    let mut all = names_of("initContainers");
    all.extend(containers.iter().cloned());
    all.extend(names_of("ephemeralContainers"));
    match requested.filter(|c| !c.is_empty()) {
        Some(c) if all.iter().any(|n| n == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {pod_name}"
        ))),
        None => match containers.as_slice() {
            [only] => Ok(only.clone()),
            [] => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}"
            ))),
            _ => Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {pod_name}, choose one of: [{}]",
                all.join(" ")
            ))),
        },
    }
}

/// The agent's `/containerLogs` query from the client's `pods/log` options, validated as
/// upstream's `PodLogOptions`: numbers that do not parse are 400 BadRequest, out-of-range values
/// 422 Invalid. Booleans follow upstream's conversion (anything but `0`/`false` is true).
pub fn log_query(q: &Query, pod_name: &str) -> ApiResult<String> {
    let mut out: Vec<String> = Vec::new();
    for key in ["follow", "previous", "timestamps"] {
        if let Some(v) = q.get(key)
            && !(v == "0" || v.eq_ignore_ascii_case("false"))
        {
            out.push(format!("{key}=true"));
        }
    }
    let number = |key: &str| -> ApiResult<Option<i64>> {
        match q.get(key).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| {
                ApiError::bad_request(format!("invalid value {v:?} for {key}: must be an integer"))
            }),
        }
    };
    let tail_lines = number("tailLines")?;
    let since_seconds = number("sinceSeconds")?;
    let limit_bytes = number("limitBytes")?;
    let since_time = match q.get("sinceTime").filter(|v| !v.is_empty()) {
        None => None,
        Some(v) => Some(v.parse::<jiff::Timestamp>().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid value {v:?} for sinceTime: must be an RFC 3339 time"
            ))
        })?),
    };
    let stream = q.get("stream").filter(|v| !v.is_empty());
    let mut causes = Vec::new();
    if let Some(n) = tail_lines.filter(|n| *n < 0) {
        causes.push(api::resource::Cause::invalid(
            "tailLines",
            &json!(n),
            "must be greater than or equal to 0",
        ));
    }
    if let Some(n) = limit_bytes.filter(|n| *n < 1) {
        causes.push(api::resource::Cause::invalid(
            "limitBytes",
            &json!(n),
            "must be greater than 0",
        ));
    }
    if let Some(n) = since_seconds.filter(|n| *n < 1) {
        causes.push(api::resource::Cause::invalid(
            "sinceSeconds",
            &json!(n),
            "must be greater than 0",
        ));
    }
    if since_seconds.is_some() && since_time.is_some() {
        causes.push(api::resource::Cause {
            reason: "FieldValueForbidden",
            message: "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"
                .into(),
            field: "sinceSeconds".into(),
        });
    }
    if let Some(s) = stream
        && !matches!(s.as_str(), "All" | "Stdout" | "Stderr")
    {
        causes.push(api::resource::Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {s:?}: supported values: \"All\", \"Stderr\", \"Stdout\""
            ),
            field: "stream".into(),
        });
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid("PodLogOptions", "", pod_name, causes));
    }
    if let Some(n) = tail_lines {
        out.push(format!("tailLines={n}"));
    }
    if let Some(n) = since_seconds {
        out.push(format!("sinceSeconds={n}"));
    }
    if let Some(t) = since_time {
        out.push(format!("sinceTime={t}"));
    }
    if let Some(n) = limit_bytes {
        out.push(format!("limitBytes={n}"));
    }
    if let Some(s) = stream {
        out.push(format!("stream={s}"));
    }
    Ok(out.join("&"))
}

/// The agent's `/portForward` query: upstream's `PodPortForwardOptions` `ports=N` parameters
/// become kubelet's `port=N` (each 1-65535); other parameters are dropped, as upstream does.
pub fn portforward_query(raw: &str) -> ApiResult<String> {
    let mut out = Vec::new();
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "ports" {
            continue;
        }
        for port in v.split(',').filter(|p| !p.is_empty()) {
            match port.parse::<u16>() {
                Ok(n) if n > 0 => out.push(format!("port={n}")),
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "invalid port {port:?}: must be between 1 and 65535"
                    )));
                }
            }
        }
    }
    Ok(out.join("&"))
}

/// Percent-encode a path segment (names are DNS labels, but never trust that).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error and its causes, `outer: inner: innermost`.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("tls client configuration")]
    Config(#[source] rustls::Error),
    #[error("dial tcp {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tls handshake with {addr}")]
    Tls {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("http handshake")]
    Http(#[source] hyper::Error),
    #[error("dial tcp {addr}: timeout after {}s", DIAL_TIMEOUT.as_secs())]
    Timeout { addr: String },
}

/// The agent presented a certificate other than the node's annotation names.
#[derive(Debug, thiserror::Error)]
#[error(
    "the agent's certificate has sha256 {got}, the node's {CERT_ANNOTATION} annotation says {want}"
)]
struct FingerprintMismatch {
    got: String,
    want: String,
}

/// Accepts exactly the certificate whose DER has the pinned SHA-256 (no chain, no name, no
/// expiry: the node's annotation is the trust anchor), and still checks that the handshake was
/// signed by that certificate's key.
#[derive(Debug)]
struct PinnedCertificate {
    sha256: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = Sha256::digest(end_entity.as_ref());
        if got.as_slice() == self.sha256.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    FingerprintMismatch {
                        got: hex(got.as_slice()),
                        want: hex(&self.sha256),
                    },
                ))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn pod(init: &[&str], containers: &[&str]) -> Value {
        let list =
            |names: &[&str]| -> Vec<Value> { names.iter().map(|n| json!({"name": n})).collect() };
        json!({"spec": {"initContainers": list(init), "containers": list(containers)}})
    }

    fn query(pairs: &[(&str, &str)]) -> Query {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_only_container_is_chosen() {
        assert_eq!(
            choose_container(&pod(&[], &["web"]), "p", None).unwrap(),
            "web"
        );
        assert_eq!(
            choose_container(&pod(&[], &["web"]), "p", Some("")).unwrap(),
            "web"
        );
    }

    #[test]
    fn several_containers_need_a_name_worded_as_upstream() {
        let e = choose_container(&pod(&["init"], &["a", "b"]), "p", None).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert_eq!(e.reason, "BadRequest");
        assert_eq!(
            e.message,
            "a container name must be specified for pod p, choose one of: [init a b]"
        );
        assert_eq!(
            choose_container(&pod(&["init"], &["a", "b"]), "p", Some("init")).unwrap(),
            "init"
        );
        assert_eq!(
            choose_container(&pod(&[], &["a", "b"]), "p", Some("b")).unwrap(),
            "b"
        );
    }

    #[test]
    fn unknown_container_is_rejected() {
        let e = choose_container(&pod(&[], &["a"]), "p", Some("c")).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert_eq!(e.message, "container c is not valid for pod p");
        let e = choose_container(&json!({"spec": {}}), "p", None).unwrap_err();
        assert_eq!(e.message, "a container name must be specified for pod p");
    }

    #[test]
    fn log_options_pass_through_normalised() {
        let q = query(&[
            ("follow", "true"),
            ("previous", "false"),
            ("timestamps", "1"),
            ("tailLines", "10"),
            ("sinceTime", "2024-01-02T03:04:05+01:00"),
            ("limitBytes", "500"),
            ("container", "c"),
            ("stream", "Stdout"),
        ]);
        assert_eq!(
            log_query(&q, "p").unwrap(),
            "follow=true&timestamps=true&tailLines=10&sinceTime=2024-01-02T02:04:05Z&limitBytes=500&stream=Stdout"
        );
        assert_eq!(log_query(&query(&[]), "p").unwrap(), "");
        assert_eq!(
            log_query(&query(&[("sinceSeconds", "30")]), "p").unwrap(),
            "sinceSeconds=30"
        );
    }

    #[test]
    fn bad_log_numbers_are_bad_requests() {
        for (k, v) in [
            ("tailLines", "x"),
            ("sinceSeconds", "1.5"),
            ("limitBytes", "many"),
            ("sinceTime", "yesterday"),
        ] {
            let e = log_query(&query(&[(k, v)]), "p").unwrap_err();
            assert_eq!(e.code, StatusCode::BAD_REQUEST, "{k}={v}");
            assert!(e.message.contains(k), "{}", e.message);
        }
    }

    #[test]
    fn out_of_range_log_options_are_invalid() {
        let e = log_query(&query(&[("tailLines", "-1")]), "p").unwrap_err();
        assert_eq!(e.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.reason, "Invalid");
        assert_eq!(
            e.message,
            "PodLogOptions \"p\" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
        );
        for (k, v) in [
            ("limitBytes", "0"),
            ("sinceSeconds", "0"),
            ("stream", "Both"),
        ] {
            let e = log_query(&query(&[(k, v)]), "p").unwrap_err();
            assert_eq!(e.reason, "Invalid", "{k}={v}");
            assert!(e.message.contains(k), "{}", e.message);
        }
        let e = log_query(
            &query(&[("sinceSeconds", "5"), ("sinceTime", "2024-01-01T00:00:00Z")]),
            "p",
        )
        .unwrap_err();
        assert!(e.message.contains("at most one of"), "{}", e.message);
    }

    fn node(annotations: Value) -> Value {
        json!({"metadata": {"name": "n1", "annotations": annotations}})
    }

    const SHA: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

    #[test]
    fn the_agent_endpoint_comes_from_the_annotations() {
        let a = AgentEndpoint::from_node(&node(json!({
            ENDPOINT_ANNOTATION: "https://127.0.0.1:10250",
            CERT_ANNOTATION: SHA,
        })))
        .unwrap();
        assert_eq!(a.host, "127.0.0.1");
        assert_eq!(a.port, 10250);
        assert_eq!(a.authority, "127.0.0.1:10250");
        assert_eq!(a.sha256[0], 0x00);
        assert_eq!(a.sha256[31], 0xff);
        assert!(matches!(a.server_name, ServerName::IpAddress(_)));

        let v6 = AgentEndpoint::from_node(&node(json!({
            ENDPOINT_ANNOTATION: "https://[::1]:8443",
            CERT_ANNOTATION: SHA,
        })))
        .unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 8443));
        assert_eq!(v6.authority, "[::1]:8443");

        let dns = AgentEndpoint::from_node(&node(json!({
            ENDPOINT_ANNOTATION: "https://agent.example",
            CERT_ANNOTATION: SHA,
        })))
        .unwrap();
        assert_eq!((dns.host.as_str(), dns.port), ("agent.example", 443));
    }

    #[test]
    fn missing_or_bad_annotations_are_bad_requests() {
        let e = AgentEndpoint::from_node(&json!({"metadata": {"name": "n1"}})).unwrap_err();
        assert_eq!(e.code, StatusCode::BAD_REQUEST);
        assert!(
            e.message.contains("node n1 has no agent endpoint"),
            "{}",
            e.message
        );
        let e = AgentEndpoint::from_node(&node(json!({ENDPOINT_ANNOTATION: "https://1.2.3.4:1"})))
            .unwrap_err();
        assert!(e.message.contains(CERT_ANNOTATION), "{}", e.message);
        for (ep, sha) in [
            ("http://1.2.3.4:1", SHA),
            ("1.2.3.4:1", SHA),
            ("https://1.2.3.4:1", "abc"),
            ("https://1.2.3.4:1", &"zz".repeat(32)),
        ] {
            let e = AgentEndpoint::from_node(&node(
                json!({ENDPOINT_ANNOTATION: ep, CERT_ANNOTATION: sha}),
            ))
            .unwrap_err();
            assert_eq!(e.code, StatusCode::BAD_REQUEST, "{ep} {sha}");
            assert!(e.message.contains("invalid"), "{}", e.message);
        }
    }

    #[test]
    fn fingerprints_parse_in_either_case_and_with_colons() {
        let with_colons: String = SHA
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(parse_sha256(SHA), parse_sha256(&with_colons));
        assert_eq!(parse_sha256(SHA), parse_sha256(&SHA.to_lowercase()));
        assert_eq!(hex(&parse_sha256(SHA).unwrap()), SHA.to_lowercase());
        assert_eq!(parse_sha256(&SHA[..62]), None);
    }

    #[test]
    fn port_forward_ports_become_kubelet_ports() {
        assert_eq!(
            portforward_query("ports=80&ports=8080,9090&x=1").unwrap(),
            "port=80&port=8080&port=9090"
        );
        assert_eq!(portforward_query("").unwrap(), "");
        for bad in ["ports=0", "ports=70000", "ports=http"] {
            let e = portforward_query(bad).unwrap_err();
            assert_eq!(e.code, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn path_segments_are_escaped() {
        assert_eq!(path_segment("web-1.a_b"), "web-1.a_b");
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn the_verifier_accepts_only_the_pinned_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["agent".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let mut sha = [0u8; 32];
        sha.copy_from_slice(Sha256::digest(der.as_ref()).as_slice());
        let provider = rustls::crypto::ring::default_provider();
        let good = PinnedCertificate {
            sha256: sha,
            algorithms: provider.signature_verification_algorithms,
        };
        let name = ServerName::try_from("127.0.0.1").unwrap();
        assert!(
            good.verify_server_cert(&der, &[], &name, &[], UnixTime::now())
                .is_ok()
        );
        let mut other = sha;
        other[0] ^= 1;
        let bad = PinnedCertificate {
            sha256: other,
            algorithms: provider.signature_verification_algorithms,
        };
        let e = bad
            .verify_server_cert(&der, &[], &name, &[], UnixTime::now())
            .unwrap_err();
        assert!(e.to_string().contains(&hex(&sha)), "{e}");
        assert!(!good.supported_verify_schemes().is_empty());
    }

    #[test]
    fn error_chains_are_spelled_out() {
        let e = DialError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ),
        };
        assert_eq!(chain(&e), "dial tcp 127.0.0.1:1: connection refused");
    }
}
