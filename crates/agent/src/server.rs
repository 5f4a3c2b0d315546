//! The agent's streaming server: the kubelet-style HTTPS endpoint that the API server proxies
//! `kubectl logs/exec/attach/port-forward` to (see the contract, "The agent's streaming server").
//!
//! - `GET /containerLogs/{ns}/{pod}/{container}`: chunked `text/plain`, one chunk per log chunk.
//! - `/exec/{ns}/{pod}/{container}` and `/attach/...`: WebSocket channel protocols
//!   (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `channel.k8s.io`) or `Upgrade: SPDY/3.1` with
//!   `X-Stream-Protocol-Version` (v5 as v4, v4, v3, v2, `channel.k8s.io`).
//! - `/portForward/{ns}/{pod}`: SPDY (`portforward.k8s.io`), the same SPDY session tunnelled in
//!   binary WebSocket messages (`SPDY/3.1+portforward.k8s.io`), and the `v4.channel.k8s.io`
//!   WebSocket port-forward (`?port=N`).
//!
//! Every request needs `Authorization: Bearer TOKEN`. Errors before an upgrade are `Status`
//! JSON objects. The pods' byte streams come from a [`PodStreams`]; this module only speaks the
//! wire protocols and must not know how pods run.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};

use crate::spdy::{Incoming as SpdyIncoming, SpdyStream};
use crate::streams::{ExecRequest, ExecSession, LogOptions, PodStreams, StreamError, TermSize};

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client has to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a SPDY client has to open the streams it asked for (kubelet's default).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Once the process exited, how long its output may stay silent before we stop waiting for EOF
/// (a background child may hold the pipe open forever).
const OUTPUT_DRAIN_IDLE: Duration = Duration::from_secs(2);
/// How long to wait for the client's answer to our WebSocket close.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
const COPY_BUFFER: usize = 32 * 1024;

/// A running streaming server. Dropping it (or [`StreamServer::shutdown`]) stops accepting and
/// ends every connection and session it serves.
pub struct StreamServer {
    pub addr: SocketAddr,
    /// `https://ADDR`
    pub endpoint: String,
    /// lowercase hex SHA-256 of the certificate DER
    pub cert_sha256: String,
    stop: watch::Sender<bool>,
}

impl std::fmt::Debug for StreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamServer")
            .field("addr", &self.addr)
            .field("endpoint", &self.endpoint)
            .field("cert_sha256", &self.cert_sha256)
            .finish()
    }
}

impl StreamServer {
    /// Stops the server and every session it runs.
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for StreamServer {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Bind `bind` (port 0 = any), make a self-signed certificate (rcgen; SANs 127.0.0.1, ::1,
/// localhost and the bind IP), serve until dropped (or `shutdown()`).
pub async fn serve(
    bind: SocketAddr,
    token: String,
    streams: Arc<dyn PodStreams>,
) -> io::Result<StreamServer> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let (cert_der, key_der) = self_signed(addr.ip())?;
    let cert_sha256 = hex(&Sha256::digest(&cert_der));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(cert_der, key_der)?));
    let (stop, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        token_digest: Sha256::digest(token.as_bytes()).into(),
        streams,
        stop: stop_rx,
    });
    spawn_guarded(
        &shared.stop,
        accept_loop(listener, acceptor, shared.clone()),
    );
    Ok(StreamServer {
        addr,
        endpoint: format!("https://{addr}"),
        cert_sha256,
        stop,
    })
}

struct Shared {
    token_digest: [u8; 32],
    streams: Arc<dyn PodStreams>,
    stop: watch::Receiver<bool>,
}

/// Spawns `fut`, cancelled when the server stops.
fn spawn_guarded<F>(stop: &watch::Receiver<bool>, fut: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    let mut stop = stop.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = fut => {}
            _ = stop.wait_for(|stopped| *stopped) => {}
        }
    });
}

fn self_signed(bind: IpAddr) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut names = vec![
        Ipv4Addr::LOCALHOST.to_string(),
        Ipv6Addr::LOCALHOST.to_string(),
        "localhost".to_owned(),
    ];
    if !bind.is_unspecified() && !names.contains(&bind.to_string()) {
        names.push(bind.to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    Ok((
        certified.cert.der().to_vec(),
        certified.signing_key.serialize_der(),
    ))
}

/// The streaming server's TLS config for a PKCS#8 key and its certificate (both DER).
pub(crate) fn tls_config(cert_der: Vec<u8>, key_der: Vec<u8>) -> io::Result<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert_der)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)),
        )
        .map_err(io::Error::other)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "streaming server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let conn_shared = shared.clone();
        spawn_guarded(&shared.stop, async move {
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "streaming server: TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = service_fn(move |req| {
                let shared = conn_shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            if let Err(error) = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tls), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(%peer, %error, "streaming server: connection ended with an error");
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

type Body = UnsyncBoxBody<Bytes, io::Error>;

fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A `Status` (metav1) failure response.
fn status_response(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn bad_request(message: &str) -> Response<Body> {
    status_response(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn not_found(message: &str) -> Response<Body> {
    status_response(StatusCode::NOT_FOUND, "NotFound", message)
}

fn stream_error_response(error: &StreamError) -> Response<Body> {
    match error {
        StreamError::NotFound(m) => not_found(m),
        StreamError::BadRequest(m) => bad_request(m),
        StreamError::Internal(m) => {
            status_response(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", m)
        }
    }
}

/// Constant-time comparison of the presented bearer token (through their digests, so the
/// length does not leak either).
fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return false;
    };
    let presented: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
    presented
        .iter()
        .zip(shared.token_digest.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// The pod (and container) a request names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    namespace: String,
    pod: String,
    container: Option<String>,
}

/// `ns/pod`, `ns/pod/container` and kubelet's `ns/pod/uid/container`.
fn container_target(rest: &[&str]) -> Option<Target> {
    let (namespace, pod, container) = match rest {
        [ns, pod] => (ns, pod, None),
        [ns, pod, container] => (ns, pod, Some(*container)),
        [ns, pod, _uid, container] => (ns, pod, Some(*container)),
        _ => return None,
    };
    if namespace.is_empty() || pod.is_empty() || container.is_some_and(str::is_empty) {
        return None;
    }
    Some(Target {
        namespace: (*namespace).to_owned(),
        pod: (*pod).to_owned(),
        container: container.map(str::to_owned),
    })
}

/// `ns/pod` and kubelet's `ns/pod/uid`.
fn pod_target(rest: &[&str]) -> Option<Target> {
    let (namespace, pod) = match rest {
        [ns, pod] | [ns, pod, _] => (ns, pod),
        _ => return None,
    };
    if namespace.is_empty() || pod.is_empty() {
        return None;
    }
    Some(Target {
        namespace: (*namespace).to_owned(),
        pod: (*pod).to_owned(),
        container: None,
    })
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    if !authorized(&shared, req.headers()) {
        return status_response(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
    }
    let path = req.uri().path().to_owned();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let Some((&kind, rest)) = segments.split_first() else {
        return not_found("not found");
    };
    let method_ok = match kind {
        "containerLogs" => req.method() == Method::GET,
        _ => req.method() == Method::GET || req.method() == Method::POST,
    };
    let target = match kind {
        "containerLogs" | "exec" | "attach" => container_target(rest),
        "portForward" => pod_target(rest),
        _ => None,
    };
    let Some(target) = target else {
        return not_found(&format!("no handler for {path}"));
    };
    if !method_ok {
        return status_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("method {} is not allowed on {path}", req.method()),
        );
    }
    match kind {
        "containerLogs" => logs(&shared, &target, &query).await,
        "exec" => exec(&shared, req, target, &query, ExecKind::Exec).await,
        "attach" => exec(&shared, req, target, &query, ExecKind::Attach).await,
        _ => port_forward(&shared, req, target, &query).await,
    }
}

/// A decoded query string (`application/x-www-form-urlencoded`), in order.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Self {
        Query(
            raw.split('&')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    (form_decode(k), form_decode(v))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Go's `strconv.ParseBool` truths (`1`, `t`, `true` in any case).
    fn flag(&self, key: &str) -> bool {
        self.get(key).is_some_and(|v| {
            v == "1" || v.eq_ignore_ascii_case("t") || v.eq_ignore_ascii_case("true")
        })
    }

    fn int(&self, key: &str, min: i64) -> Result<Option<i64>, String> {
        let Some(raw) = self.get(key) else {
            return Ok(None);
        };
        match raw.parse::<i64>() {
            Ok(n) if n >= min => Ok(Some(n)),
            Ok(_) => Err(format!("{key} must be at least {min}")),
            Err(_) => Err(format!("{key}: {raw:?} is not an integer")),
        }
    }
}

fn form_decode(s: &str) -> String {
    fn hex_value(b: &u8) -> Option<u8> {
        char::from(*b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                bytes.get(i + 1).and_then(hex_value),
                bytes.get(i + 2).and_then(hex_value),
            ) {
                (Some(high), Some(low)) => {
                    out.push((high << 4) | low);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Logs

fn log_options(query: &Query) -> Result<LogOptions, String> {
    Ok(LogOptions {
        follow: query.flag("follow"),
        previous: query.flag("previous"),
        timestamps: query.flag("timestamps"),
        tail_lines: query.int("tailLines", 0)?,
        since_seconds: query.int("sinceSeconds", 1)?,
        since_time: query.get("sinceTime").map(str::to_owned),
        limit_bytes: query.int("limitBytes", 1)?,
    })
}

async fn logs(shared: &Shared, target: &Target, query: &Query) -> Response<Body> {
    let options = match log_options(query) {
        Ok(options) => options,
        Err(message) => return bad_request(&message),
    };
    let limit = options.limit_bytes.map(|n| u64::try_from(n).unwrap_or(0));
    let stream = match shared
        .streams
        .logs(
            &target.namespace,
            &target.pod,
            target.container.as_deref(),
            options,
        )
        .await
    {
        Ok(stream) => stream,
        Err(error) => return stream_error_response(&error),
    };
    // The runtime is asked to honour limitBytes; enforce it here as well.
    let limited = stream.scan(limit, |remaining, item| {
        let out = match (remaining.as_mut(), item) {
            (_, Err(error)) => Some(Err(error)),
            (None, Ok(chunk)) => Some(Ok(chunk)),
            (Some(0), Ok(_)) => None,
            (Some(left), Ok(chunk)) => {
                let take = usize::try_from(*left)
                    .unwrap_or(usize::MAX)
                    .min(chunk.len());
                *left -= take as u64;
                Some(Ok(chunk.slice(..take)))
            }
        };
        futures::future::ready(out)
    });
    let body = StreamBody::new(limited.map(|item| item.map(Frame::data)));
    let mut response = Response::new(BodyExt::boxed_unsync(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

// ---------------------------------------------------------------------------------------------
// Upgrades

const WS_V5: &str = "v5.channel.k8s.io";
const WS_V4: &str = "v4.channel.k8s.io";
const WS_V1: &str = "channel.k8s.io";
const WS_SPDY_PORT_FORWARD: &str = "SPDY/3.1+portforward.k8s.io";
const SPDY_PORT_FORWARD: &str = "portforward.k8s.io";
const STREAM_PROTOCOL_HEADER: &str = "x-stream-protocol-version";
const ACCEPTED_PROTOCOLS_HEADER: &str = "x-accepted-stream-protocol-versions";

/// Which remote-command protocol a session speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChannelProtocol {
    /// The name negotiated (echoed to the client).
    name: &'static str,
    /// v4+: the error channel carries a `Status` JSON (also on success); else text on failure.
    json_status: bool,
    /// v5 WebSocket: `[255, channel]` closes a channel.
    stream_close: bool,
    /// v3+: a resize stream exists with a TTY.
    resize: bool,
}

impl ChannelProtocol {
    /// The WebSocket subprotocols served for exec/attach.
    fn websocket(name: &str) -> Option<Self> {
        let (name, json_status, stream_close) = match name {
            WS_V5 => (WS_V5, true, true),
            WS_V4 => (WS_V4, true, false),
            WS_V1 => (WS_V1, false, false),
            _ => return None,
        };
        Some(ChannelProtocol {
            name,
            json_status,
            stream_close,
            resize: true,
        })
    }

    /// The SPDY `X-Stream-Protocol-Version`s served for exec/attach (v5 behaves as v4 there).
    fn spdy(name: &str) -> Option<Self> {
        let (name, json_status, resize) = match name {
            WS_V5 => (WS_V5, true, true),
            WS_V4 => (WS_V4, true, true),
            "v3.channel.k8s.io" => ("v3.channel.k8s.io", false, true),
            "v2.channel.k8s.io" => ("v2.channel.k8s.io", false, false),
            WS_V1 => (WS_V1, false, false),
            _ => return None,
        };
        Some(ChannelProtocol {
            name,
            json_status,
            stream_close: false,
            resize,
        })
    }
}

/// Comma-separated values of every `name` header, in order.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    header_list(headers, name.as_str())
        .iter()
        .any(|v| v.eq_ignore_ascii_case(token))
}

fn is_websocket(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "websocket")
        && has_token(headers, header::CONNECTION, "upgrade")
}

fn is_spdy(headers: &HeaderMap) -> bool {
    has_token(headers, header::UPGRADE, "SPDY/3.1")
}

/// The transport an upgrade request asked for, after negotiation.
enum Upgrade {
    WebSocket { protocol: String, accept: String },
    Spdy { protocol: String },
}

impl Upgrade {
    /// The 101 answer.
    fn response(&self) -> Response<Body> {
        let mut response = Response::new(full(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        match self {
            Upgrade::WebSocket { protocol, accept } => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                if let Ok(v) = HeaderValue::from_str(accept) {
                    headers.insert(header::SEC_WEBSOCKET_ACCEPT, v);
                }
                if let Ok(v) = HeaderValue::from_str(protocol) {
                    headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
                }
            }
            Upgrade::Spdy { protocol } => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
                if let Ok(v) = HeaderValue::from_str(protocol) {
                    headers.insert(STREAM_PROTOCOL_HEADER, v);
                }
            }
        }
        response
    }
}

/// Negotiates a WebSocket upgrade: the first subprotocol the client offers that `supported`
/// accepts.
fn negotiate_websocket(
    headers: &HeaderMap,
    supported: &[&str],
) -> Result<Upgrade, Box<Response<Body>>> {
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Box::new(bad_request("Sec-WebSocket-Key is required")));
    };
    let offered = header_list(headers, header::SEC_WEBSOCKET_PROTOCOL.as_str());
    let Some(protocol) = offered.iter().find(|p| supported.contains(&p.as_str())) else {
        return Err(Box::new(bad_request(&format!(
            "unable to upgrade: the requested WebSocket subprotocols {offered:?} are not supported; supported: {supported:?}"
        ))));
    };
    Ok(Upgrade::WebSocket {
        protocol: protocol.clone(),
        accept: derive_accept_key(key.as_bytes()),
    })
}

/// Negotiates a SPDY upgrade as `httpstream.Handshake` does: the first protocol of the client's
/// list that the server supports.
fn negotiate_spdy(headers: &HeaderMap, supported: &[&str]) -> Result<Upgrade, Box<Response<Body>>> {
    let offered = header_list(headers, STREAM_PROTOCOL_HEADER);
    if offered.is_empty() {
        return Err(Box::new(bad_request(
            "unable to upgrade: X-Stream-Protocol-Version is required",
        )));
    }
    let Some(protocol) = offered.iter().find(|p| supported.contains(&p.as_str())) else {
        let mut response = status_response(
            StatusCode::FORBIDDEN,
            "Forbidden",
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"
            ),
        );
        for p in supported {
            if let Ok(v) = HeaderValue::from_str(p) {
                response.headers_mut().append(ACCEPTED_PROTOCOLS_HEADER, v);
            }
        }
        return Err(Box::new(response));
    };
    Ok(Upgrade::Spdy {
        protocol: protocol.clone(),
    })
}

/// Spawns `session` on the upgraded connection once hyper hands it over.
fn on_upgrade<F, Fut>(shared: &Shared, req: &mut Request<Incoming>, session: F)
where
    F: FnOnce(TokioIo<Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let upgrade = hyper::upgrade::on(req);
    spawn_guarded(&shared.stop, async move {
        match upgrade.await {
            Ok(upgraded) => session(TokioIo::new(upgraded)).await,
            Err(error) => tracing::debug!(%error, "streaming server: upgrade failed"),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Exec and attach

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ExecKind {
    Exec,
    Attach,
}

fn exec_request(query: &Query, kind: ExecKind) -> Result<ExecRequest, String> {
    let tty = query.flag("tty");
    let request = ExecRequest {
        command: match kind {
            ExecKind::Exec => query.all("command"),
            ExecKind::Attach => Vec::new(),
        },
        stdin: query.flag("stdin"),
        stdout: query.flag("stdout"),
        // As kubelet: a TTY merges stderr into stdout.
        stderr: query.flag("stderr") && !tty,
        tty,
    };
    if !request.stdin && !request.stdout && !request.stderr {
        return Err("you must specify at least 1 of stdin, stdout, stderr".to_owned());
    }
    if kind == ExecKind::Exec && request.command.is_empty() {
        return Err("you must specify at least one command for the container".to_owned());
    }
    Ok(request)
}

async fn exec(
    shared: &Shared,
    mut req: Request<Incoming>,
    target: Target,
    query: &Query,
    kind: ExecKind,
) -> Response<Body> {
    let request = match exec_request(query, kind) {
        Ok(request) => request,
        Err(message) => return bad_request(&message),
    };
    let upgrade = if is_websocket(req.headers()) {
        negotiate_websocket(req.headers(), &[WS_V5, WS_V4, WS_V1])
    } else if is_spdy(req.headers()) {
        negotiate_spdy(
            req.headers(),
            &[
                WS_V5,
                WS_V4,
                "v3.channel.k8s.io",
                "v2.channel.k8s.io",
                WS_V1,
            ],
        )
    } else {
        Err(Box::new(bad_request(
            "exec and attach need a WebSocket or SPDY/3.1 upgrade",
        )))
    };
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(response) => return *response,
    };
    let container = target.container.as_deref();
    let opened = match kind {
        ExecKind::Exec => {
            shared
                .streams
                .exec(&target.namespace, &target.pod, container, request.clone())
                .await
        }
        ExecKind::Attach => {
            shared
                .streams
                .attach(&target.namespace, &target.pod, container, request.clone())
                .await
        }
    };
    let session = match opened {
        Ok(session) => session,
        Err(error) => return stream_error_response(&error),
    };
    let response = upgrade.response();
    match upgrade {
        Upgrade::WebSocket { protocol, .. } => {
            let Some(protocol) = ChannelProtocol::websocket(&protocol) else {
                return bad_request("unsupported protocol");
            };
            on_upgrade(shared, &mut req, move |io| {
                ws_exec(io, protocol, request, session)
            });
        }
        Upgrade::Spdy { protocol } => {
            let Some(protocol) = ChannelProtocol::spdy(&protocol) else {
                return bad_request("unsupported protocol");
            };
            on_upgrade(shared, &mut req, move |io| {
                spdy_exec(io, protocol, request, session)
            });
        }
    }
    response
}

/// The Status JSON for a finished process (`metav1.Status`, as kubelet writes it).
fn exit_status(exit: &Result<i32, StreamError>) -> serde_json::Value {
    match exit {
        Ok(0) => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Err(error) => {
            let message =
                format!("Internal error occurred: error executing command in container: {error}");
            serde_json::json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
                "details": {"causes": [{"message": message}]},
                "code": 500,
            })
        }
    }
}

/// What goes on the error channel for `protocol`, if anything.
fn status_bytes(protocol: ChannelProtocol, exit: &Result<i32, StreamError>) -> Option<Bytes> {
    let status = exit_status(exit);
    if protocol.json_status {
        return Some(Bytes::from(status.to_string()));
    }
    if matches!(exit, Ok(0)) {
        return None;
    }
    status
        .get("message")
        .and_then(|m| m.as_str())
        .map(|m| Bytes::from(m.to_owned()))
}

/// Decodes `{"Width":W,"Height":H}` objects from a byte stream (several may arrive in one
/// chunk, one may span chunks); keeps the incomplete tail in `buf`.
fn decode_resizes(buf: &mut BytesMut) -> Vec<TermSize> {
    let mut sizes = Vec::new();
    let mut consumed = 0;
    {
        let mut iter = serde_json::Deserializer::from_slice(buf).into_iter::<serde_json::Value>();
        loop {
            match iter.next() {
                Some(Ok(value)) => {
                    consumed = iter.byte_offset();
                    let dim = |key: &str| {
                        value
                            .get(key)
                            .and_then(serde_json::Value::as_u64)
                            .map(|n| u16::try_from(n).unwrap_or(u16::MAX))
                    };
                    if let (Some(width), Some(height)) = (dim("Width"), dim("Height")) {
                        sizes.push(TermSize { width, height });
                    }
                }
                Some(Err(error)) if error.is_eof() => break,
                Some(Err(_)) => {
                    // Garbage: drop everything buffered.
                    consumed = buf.len();
                    break;
                }
                None => {
                    consumed = buf.len();
                    break;
                }
            }
        }
    }
    let _ = buf.split_to(consumed);
    sizes
}

async fn send_resizes(resize: &Option<mpsc::Sender<TermSize>>, sizes: Vec<TermSize>) {
    let Some(tx) = resize else { return };
    for size in sizes {
        let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(size)).await;
    }
}

/// Where a process's output goes.
enum OutputSink {
    /// A channel of a WebSocket channel protocol.
    Channel { tx: mpsc::Sender<Message>, id: u8 },
    /// A stream of its own (SPDY).
    Stream(Pin<Box<dyn AsyncWrite + Send>>),
}

impl OutputSink {
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            OutputSink::Channel { tx, id } => tx
                .send(channel_message(*id, data))
                .await
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe)),
            OutputSink::Stream(w) => {
                w.write_all(data).await?;
                w.flush().await
            }
        }
    }

    async fn finish(&mut self) {
        if let OutputSink::Stream(w) = self {
            let _ = w.shutdown().await;
        }
    }
}

fn channel_message(id: u8, data: &[u8]) -> Message {
    let mut frame = BytesMut::with_capacity(data.len() + 1);
    frame.extend_from_slice(&[id]);
    frame.extend_from_slice(data);
    Message::Binary(frame.freeze())
}

/// Copies `reader` to `sink` until EOF, counting bytes in `progress`.
async fn pump(mut reader: crate::streams::Reader, mut sink: OutputSink, progress: Arc<Progress>) {
    let mut buf = vec![0u8; COPY_BUFFER];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                progress.writing.fetch_add(1, Ordering::Relaxed);
                let written = sink.write(&buf[..n]).await;
                progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
                progress.writing.fetch_sub(1, Ordering::Relaxed);
                if written.is_err() {
                    return;
                }
            }
        }
    }
    sink.finish().await;
}

/// What the output pumps of a session did: bytes delivered, and writes waiting on the client
/// (a slow client is not an idle process).
#[derive(Default)]
struct Progress {
    bytes: AtomicU64,
    writing: AtomicU64,
}

/// Runs the output side of a session: pumps stdout/stderr, waits for the exit, then for the
/// output to drain. `None` when `gone` (the client left) fires first.
async fn drive_output(
    exit: futures::future::BoxFuture<'static, Result<i32, StreamError>>,
    outputs: Vec<(crate::streams::Reader, OutputSink)>,
    gone: impl Future<Output = ()>,
) -> Option<Result<i32, StreamError>> {
    let progress = Arc::new(Progress::default());
    let mut tasks = Tasks::default();
    let pumps: Vec<_> = outputs
        .into_iter()
        .map(|(reader, sink)| tasks.watch(tokio::spawn(pump(reader, sink, progress.clone()))))
        .collect();
    let result = tokio::select! {
        result = exit => result,
        () = gone => return None,
    };
    let mut seen = progress.bytes.load(Ordering::Relaxed);
    let all_done = futures::future::join_all(pumps);
    tokio::pin!(all_done);
    loop {
        tokio::select! {
            _ = &mut all_done => break,
            () = tokio::time::sleep(OUTPUT_DRAIN_IDLE) => {
                let now = progress.bytes.load(Ordering::Relaxed);
                if now == seen && progress.writing.load(Ordering::Relaxed) == 0 {
                    break;
                }
                seen = now;
            }
        }
    }
    Some(result)
}

/// A set-once flag that many can wait for.
#[derive(Clone)]
struct Flag(Arc<watch::Sender<bool>>);

impl Flag {
    fn new() -> Self {
        Flag(Arc::new(watch::channel(false).0))
    }

    fn set(&self) {
        self.0.send_replace(true);
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|set| *set).await;
    }
}

/// Aborts the helper tasks of a session when dropped, so a session cancelled by
/// [`StreamServer::shutdown`] takes them (and the connections they hold) along.
#[derive(Default)]
struct Tasks(Vec<tokio::task::AbortHandle>);

impl Tasks {
    fn watch<T>(&mut self, task: tokio::task::JoinHandle<T>) -> tokio::task::JoinHandle<T> {
        self.0.push(task.abort_handle());
        task
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.0.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

type WsStream = WebSocketStream<TokioIo<Upgraded>>;

/// A WebSocket split into a reader and a writer task fed by a channel.
fn ws_writer(
    mut sink: SplitSink<WsStream, Message>,
    gone: Flag,
) -> (
    mpsc::Sender<Message>,
    tokio::task::JoinHandle<SplitSink<WsStream, Message>>,
) {
    let (tx, mut rx) = mpsc::channel::<Message>(16);
    let task = tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            let closing = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() {
                gone.set();
                return sink;
            }
            if closing {
                return sink;
            }
        }
        let _ = sink.close().await;
        sink
    });
    (tx, task)
}

/// Ends a WebSocket after our close frame went out: waits a while for the client's answer,
/// then shuts the connection down (TLS close_notify included).
async fn finish_websocket<S>(
    sink: SplitSink<WebSocketStream<S>, Message>,
    mut source: SplitStream<WebSocketStream<S>>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = source.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
    if let Ok(mut ws) = source.reunite(sink) {
        let _ = tokio::time::timeout(CLOSE_GRACE, ws.get_mut().shutdown()).await;
    }
}

fn normal_close() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

async fn ws_exec(
    io: TokioIo<Upgraded>,
    protocol: ChannelProtocol,
    request: ExecRequest,
    session: ExecSession,
) {
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (sink, source) = ws.split();
    let gone = Flag::new();
    let mut tasks = Tasks::default();
    let (tx, writer) = ws_writer(sink, gone.clone());
    let writer = tasks.watch(writer);
    let ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = session;

    // Tell the client the session is up: an empty message on the lowest writable channel.
    let first = if request.stdout {
        1
    } else if request.stderr {
        2
    } else {
        3
    };
    let _ = tx.send(channel_message(first, &[])).await;

    let stdin = if request.stdin { stdin } else { None };
    let mut reader = tasks.watch(tokio::spawn(ws_exec_reader(
        source,
        protocol,
        stdin,
        resize,
        gone.clone(),
    )));

    let mut outputs = Vec::new();
    if let Some(out) = stdout.filter(|_| request.stdout) {
        outputs.push((
            out,
            OutputSink::Channel {
                tx: tx.clone(),
                id: 1,
            },
        ));
    }
    if let Some(err) = stderr.filter(|_| request.stderr) {
        outputs.push((
            err,
            OutputSink::Channel {
                tx: tx.clone(),
                id: 2,
            },
        ));
    }
    let Some(result) = drive_output(exit, outputs, gone.wait()).await else {
        return;
    };
    if let Some(status) = status_bytes(protocol, &result) {
        let _ = tx.send(channel_message(3, &status)).await;
    }
    let _ = tx.send(normal_close()).await;
    drop(tx);
    let sink = writer.await.ok();
    // Let the reader see the client's close answer, then shut the connection down.
    let source = match tokio::time::timeout(CLOSE_GRACE, &mut reader).await {
        Ok(Ok(source)) => Some(source),
        _ => None,
    };
    if let (Some(sink), Some(source)) = (sink, source) {
        finish_websocket(sink, source).await;
    }
}

/// Reads client messages: stdin (0), resize (4), v5 close (`[255, channel]`).
async fn ws_exec_reader(
    mut source: SplitStream<WsStream>,
    protocol: ChannelProtocol,
    mut stdin: Option<crate::streams::Writer>,
    mut resize: Option<mpsc::Sender<TermSize>>,
    gone: Flag,
) -> SplitStream<WsStream> {
    let mut resize_buf = BytesMut::new();
    while let Some(message) = source.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let Some((&channel, payload)) = data.split_first() else {
            continue;
        };
        match channel {
            255 if protocol.stream_close => match payload.first() {
                Some(0) => {
                    if let Some(mut w) = stdin.take() {
                        let _ = w.shutdown().await;
                    }
                }
                Some(4) => resize = None,
                _ => {}
            },
            0 => {
                if let Some(w) = stdin.as_mut()
                    && (w.write_all(payload).await.is_err() || w.flush().await.is_err())
                {
                    stdin = None;
                }
            }
            4 => {
                resize_buf.extend_from_slice(payload);
                let sizes = decode_resizes(&mut resize_buf);
                send_resizes(&resize, sizes).await;
            }
            _ => {}
        }
    }
    if let Some(mut w) = stdin.take() {
        let _ = w.shutdown().await;
    }
    gone.set();
    source
}

// ---------------------------------------------------------------------------------------------
// SPDY exec (the session is crate::spdy)

/// The streams a SPDY exec/attach client opens, by `streamType`.
#[derive(Default)]
struct ExecStreams {
    error: Option<SpdyStream>,
    stdin: Option<SpdyStream>,
    stdout: Option<SpdyStream>,
    stderr: Option<SpdyStream>,
    resize: Option<SpdyStream>,
}

impl ExecStreams {
    /// Files `stream` by its type; false (and the stream reset) if unknown or a duplicate.
    fn add(&mut self, stream: SpdyStream) -> bool {
        let kind = stream.header("streamType").unwrap_or_default().to_owned();
        let slot = match kind.as_str() {
            "error" => Some(&mut self.error),
            "stdin" => Some(&mut self.stdin),
            "stdout" => Some(&mut self.stdout),
            "stderr" => Some(&mut self.stderr),
            "resize" => Some(&mut self.resize),
            _ => None,
        };
        let Some(slot) = slot.filter(|slot| slot.is_none()) else {
            tracing::debug!(stream_type = %kind, "streaming server: unexpected SPDY stream");
            stream.split().1.reset();
            return false;
        };
        *slot = Some(stream);
        true
    }
}

/// Keeps taking (and resetting) streams a client opens after the expected ones, sets `gone`
/// when the connection ends, and hands the session back when `stop` fires.
fn drain_incoming(
    mut incoming: SpdyIncoming,
    gone: Flag,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<SpdyIncoming>,
) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => break,
                stream = incoming.next() => match stream {
                    Some(stream) => stream.split().1.reset(),
                    None => {
                        gone.set();
                        break;
                    }
                },
            }
        }
        incoming
    });
    (stop, task)
}

async fn spdy_exec(
    io: TokioIo<Upgraded>,
    protocol: ChannelProtocol,
    request: ExecRequest,
    session: ExecSession,
) {
    let mut incoming = crate::spdy::serve(io);
    let expected = 1
        + usize::from(request.stdin)
        + usize::from(request.stdout)
        + usize::from(request.stderr)
        + usize::from(request.tty && protocol.resize);
    let mut streams = ExecStreams::default();
    let mut received = 0;
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while received < expected {
        tokio::select! {
            stream = incoming.next() => {
                let Some(stream) = stream else { return };
                if streams.add(stream) {
                    received += 1;
                }
            }
            () = &mut deadline => {
                tracing::warn!("streaming server: timed out waiting for the client to create streams");
                incoming.close().await;
                return;
            }
        }
    }
    let gone = Flag::new();
    let mut tasks = Tasks::default();
    let (stop_drain, drain) = drain_incoming(incoming, gone.clone());
    let drain = tasks.watch(drain);
    let ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = session;

    let mut side_tasks = Tasks::default();
    // Our halves of the client's input streams stay open until the end: client-go stops
    // sending stdin as soon as it sees the server close its side of that stream.
    let mut held = Vec::new();
    if let (Some(stream), Some(mut to_process)) = (streams.stdin.take(), stdin) {
        let (mut from_client, ours) = stream.split();
        held.push(ours);
        side_tasks.watch(tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_client, &mut to_process).await;
            let _ = to_process.shutdown().await;
        }));
    }
    if let Some(stream) = streams.resize.take() {
        let (mut from_client, ours) = stream.split();
        held.push(ours);
        side_tasks.watch(tokio::spawn(async move {
            let mut buf = BytesMut::new();
            let mut chunk = vec![0u8; 1024];
            while let Ok(n) = from_client.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let sizes = decode_resizes(&mut buf);
                send_resizes(&resize, sizes).await;
            }
        }));
    }
    let mut outputs = Vec::new();
    if let (Some(stream), Some(out)) = (streams.stdout.take(), stdout) {
        let (_, to_client) = stream.split();
        outputs.push((out, OutputSink::Stream(Box::pin(to_client))));
    }
    if let (Some(stream), Some(err)) = (streams.stderr.take(), stderr) {
        let (_, to_client) = stream.split();
        outputs.push((err, OutputSink::Stream(Box::pin(to_client))));
    }
    let result = drive_output(exit, outputs, gone.wait()).await;
    drop(side_tasks);
    if let (Some(result), Some(stream)) = (result, streams.error.take()) {
        let (_, mut to_client) = stream.split();
        if let Some(status) = status_bytes(protocol, &result) {
            let _ = to_client.write_all(&status).await;
        }
        let _ = to_client.shutdown().await;
    }
    drop(held);
    let _ = stop_drain.send(());
    if let Ok(incoming) = drain.await {
        incoming.close().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Port-forward

/// `?port=80&port=8080` or `?ports=80,8080`.
fn forward_ports(query: &Query) -> Result<Vec<u16>, String> {
    let mut raw = query.all("port");
    raw.extend(query.all("ports"));
    if raw.is_empty() {
        return Err("query parameter \"port\" is required".to_owned());
    }
    let mut ports = Vec::new();
    for value in raw {
        for p in value.split(',') {
            match p.trim().parse::<u16>() {
                Ok(port) if port > 0 => ports.push(port),
                _ => return Err(format!("unable to parse {p:?} as a port")),
            }
        }
    }
    if ports.len() > 127 {
        return Err("too many ports".to_owned());
    }
    Ok(ports)
}

async fn port_forward(
    shared: &Shared,
    mut req: Request<Incoming>,
    target: Target,
    query: &Query,
) -> Response<Body> {
    let streams = shared.streams.clone();
    if is_websocket(req.headers()) {
        let upgrade = match negotiate_websocket(req.headers(), &[WS_SPDY_PORT_FORWARD, WS_V4]) {
            Ok(upgrade) => upgrade,
            Err(response) => return *response,
        };
        let response = upgrade.response();
        let Upgrade::WebSocket { protocol, .. } = upgrade else {
            return bad_request("unsupported protocol");
        };
        if protocol == WS_SPDY_PORT_FORWARD {
            on_upgrade(shared, &mut req, move |io| async move {
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                spdy_port_forward(WsIo::new(ws), streams, target).await;
            });
        } else {
            let ports = match forward_ports(query) {
                Ok(ports) => ports,
                Err(message) => return bad_request(&message),
            };
            on_upgrade(shared, &mut req, move |io| {
                ws_port_forward(io, streams, target, ports)
            });
        }
        return response;
    }
    if is_spdy(req.headers()) {
        let upgrade = match negotiate_spdy(req.headers(), &[SPDY_PORT_FORWARD]) {
            Ok(upgrade) => upgrade,
            Err(response) => return *response,
        };
        let response = upgrade.response();
        on_upgrade(shared, &mut req, move |io| {
            spdy_port_forward(io, streams, target)
        });
        return response;
    }
    bad_request("port-forward needs a WebSocket or SPDY/3.1 upgrade")
}

fn forward_error(port: u16, target: &Target, error: &dyn std::fmt::Display) -> String {
    format!(
        "error forwarding port {port} to pod {}/{}: {error}",
        target.namespace, target.pod
    )
}

/// The `v4.channel.k8s.io` WebSocket port-forward: channel 2i carries port i's data, 2i+1 its
/// errors; each channel starts with the port (u16 little endian).
async fn ws_port_forward(
    io: TokioIo<Upgraded>,
    streams: Arc<dyn PodStreams>,
    target: Target,
    ports: Vec<u16>,
) {
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (sink, mut source) = ws.split();
    let gone = Flag::new();
    let mut tasks = Tasks::default();
    let (tx, writer) = ws_writer(sink, gone.clone());
    let writer = tasks.watch(writer);
    for (i, port) in ports.iter().enumerate() {
        let data = u8::try_from(i * 2).unwrap_or(u8::MAX);
        let _ = tx.send(channel_message(data, &port.to_le_bytes())).await;
        let _ = tx
            .send(channel_message(data.saturating_add(1), &port.to_le_bytes()))
            .await;
    }
    let progress = Arc::new(Progress::default());
    let mut to_pod = Vec::new();
    let mut pumps = Vec::new();
    for (i, &port) in ports.iter().enumerate() {
        let data = u8::try_from(i * 2).unwrap_or(u8::MAX);
        match streams
            .port_forward(&target.namespace, &target.pod, port)
            .await
        {
            Ok(tcp) => {
                let (read, write) = tcp.into_split();
                to_pod.push(Some(write));
                let sink = OutputSink::Channel {
                    tx: tx.clone(),
                    id: data,
                };
                pumps.push(tasks.watch(tokio::spawn(pump(Box::pin(read), sink, progress.clone()))));
            }
            Err(error) => {
                let message = forward_error(port, &target, &error);
                let _ = tx
                    .send(channel_message(data.saturating_add(1), message.as_bytes()))
                    .await;
                to_pod.push(None);
            }
        }
    }
    let reader = async {
        while let Some(message) = source.next().await {
            let data = match message {
                Ok(Message::Binary(data)) => data,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            let Some((&channel, payload)) = data.split_first() else {
                continue;
            };
            if channel % 2 != 0 {
                continue;
            }
            if let Some(slot) = to_pod.get_mut(usize::from(channel / 2))
                && let Some(w) = slot.as_mut()
                && w.write_all(payload).await.is_err()
            {
                *slot = None;
            }
        }
    };
    tokio::select! {
        () = reader => {}
        _ = futures::future::join_all(pumps.iter_mut()) => {}
    }
    pumps.iter().for_each(tokio::task::JoinHandle::abort);
    let _ = tx.send(normal_close()).await;
    drop(tx);
    if let Ok(Ok(sink)) = tokio::time::timeout(CLOSE_GRACE, writer).await {
        finish_websocket(sink, source).await;
    }
}

/// A WebSocket whose binary messages carry a byte stream, as client-go's `TunnelingConnection`
/// (SPDY inside WebSocket for port-forward). Writes go through a task that sends one binary
/// message per write; shutdown sends a normal close.
struct WsIo<S> {
    source: Option<SplitStream<WebSocketStream<S>>>,
    pending: Bytes,
    eof: bool,
    tx: futures::channel::mpsc::Sender<Bytes>,
    /// Hands the read half to the writer task on drop, for the closing handshake.
    give_back: Option<tokio::sync::oneshot::Sender<SplitStream<WebSocketStream<S>>>>,
}

impl<S> WsIo<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    fn new(ws: WebSocketStream<S>) -> Self {
        let (mut sink, source) = ws.split();
        let (tx, mut rx) = futures::channel::mpsc::channel::<Bytes>(16);
        let (give_back, given) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            while let Some(chunk) = rx.next().await {
                if sink.send(Message::Binary(chunk)).await.is_err() {
                    return;
                }
            }
            let _ = sink.send(normal_close()).await;
            if let Ok(source) = given.await {
                finish_websocket(sink, source).await;
            }
        });
        WsIo {
            source: Some(source),
            pending: Bytes::new(),
            eof: false,
            tx,
            give_back: Some(give_back),
        }
    }
}

impl<S> Drop for WsIo<S> {
    fn drop(&mut self) {
        self.tx.close_channel();
        if let (Some(source), Some(give_back)) = (self.source.take(), self.give_back.take()) {
            let _ = give_back.send(source);
        }
    }
}

impl<S> AsyncRead for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.remaining().min(self.pending.len());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            let Some(source) = self.source.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(source.poll_next_unpin(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message in a SPDY tunnel",
                    )));
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Poll::Ready(Err(io::Error::other(error))),
            }
        }
    }
}

impl<S> AsyncWrite for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let broken = |_| io::Error::from(io::ErrorKind::BrokenPipe);
        ready!(self.tx.poll_ready(cx)).map_err(broken)?;
        self.tx
            .start_send(Bytes::copy_from_slice(buf))
            .map_err(broken)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.tx.close_channel();
        Poll::Ready(Ok(()))
    }
}

/// The streams of one port-forward request (`requestID`).
struct PendingPair {
    error: Option<SpdyStream>,
    data: Option<SpdyStream>,
    since: tokio::time::Instant,
}

/// The SPDY port-forward session (`portforward.k8s.io`) on `io`: per request the client opens
/// an `error` and a `data` stream carrying `port` and `requestID`.
async fn spdy_port_forward<T>(io: T, streams: Arc<dyn PodStreams>, target: Target)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut incoming = crate::spdy::serve(io);
    let mut pending: std::collections::HashMap<String, PendingPair> =
        std::collections::HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            stream = incoming.next() => {
                let Some(stream) = stream else { break };
                let port = stream
                    .header("port")
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| *p > 0);
                let kind = stream.header("streamType").unwrap_or_default().to_owned();
                if port.is_none() || (kind != "error" && kind != "data") {
                    tracing::debug!(stream_type = %kind, "streaming server: invalid port-forward stream");
                    stream.split().1.reset();
                    continue;
                }
                let request_id = match stream.header("requestID") {
                    Some(id) if !id.is_empty() => id.to_owned(),
                    // Old clients: the error stream has id N, the data stream N + 2.
                    _ if kind == "error" => stream.id().to_string(),
                    _ => (i64::from(stream.id()) - 2).to_string(),
                };
                let pair = pending.entry(request_id.clone()).or_insert_with(|| PendingPair {
                    error: None,
                    data: None,
                    since: tokio::time::Instant::now(),
                });
                let slot = if kind == "error" { &mut pair.error } else { &mut pair.data };
                if slot.is_some() {
                    tracing::debug!(%request_id, "streaming server: duplicate port-forward stream");
                    stream.split().1.reset();
                    continue;
                }
                *slot = Some(stream);
                if pair.error.is_some()
                    && pair.data.is_some()
                    && let Some(PendingPair { error: Some(error), data: Some(data), .. }) =
                        pending.remove(&request_id)
                {
                    forwards.spawn(forward_pair(streams.clone(), target.clone(), error, data));
                }
            }
            _ = tick.tick() => {
                let expired: Vec<String> = pending
                    .iter()
                    .filter(|(_, p)| p.since.elapsed() >= STREAM_CREATION_TIMEOUT)
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in expired {
                    if let Some(pair) = pending.remove(&id)
                        && let Some(error) = pair.error
                    {
                        let (_, mut w) = error.split();
                        let message = format!("timed out waiting for the streams of request {id}");
                        tokio::spawn(async move {
                            let _ = w.write_all(message.as_bytes()).await;
                            let _ = w.shutdown().await;
                        });
                    }
                }
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => {}
        }
    }
    // The connection is gone: end what still runs (dropping the JoinSet aborts it).
    drop(forwards);
    incoming.close().await;
}

/// Forwards one connection: the data stream to and from the pod's port; a failure to connect
/// is reported as text on the error stream, which is closed at the end.
async fn forward_pair(
    streams: Arc<dyn PodStreams>,
    target: Target,
    error: SpdyStream,
    data: SpdyStream,
) {
    let port = data
        .header("port")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or_default();
    let (_, mut error_w) = error.split();
    let (mut from_client, mut to_client) = data.split();
    match streams
        .port_forward(&target.namespace, &target.pod, port)
        .await
    {
        Ok(tcp) => {
            let (mut from_pod, mut to_pod) = tcp.into_split();
            let up = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from_client, &mut to_pod).await;
                let _ = to_pod.shutdown().await;
            });
            // As the kubelet does: the request ends when the pod has sent everything; the client
            // (which keeps its local connection open until then) learns it from the error
            // stream's end, so that must not wait for the client's own half-close.
            let _ = tokio::io::copy(&mut from_pod, &mut to_client).await;
            let _ = to_client.shutdown().await;
            up.abort();
        }
        Err(e) => {
            let message = forward_error(port, &target, &e);
            tracing::debug!(%message, "streaming server: port-forward failed");
            let _ = error_w.write_all(message.as_bytes()).await;
            let _ = to_client.shutdown().await;
        }
    }
    let _ = error_w.shutdown().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use futures::stream::BoxStream;
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::TcpStream;
    use tokio::process::Command;
    use tokio::sync::Notify;
    use tokio_rustls::client::TlsStream;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    const TOKEN: &str = "s3cret-token";

    // ---- a fake backend ------------------------------------------------------------------

    struct Fake {
        echo: SocketAddr,
        release: Arc<Notify>,
        log_options: std::sync::Mutex<Option<LogOptions>>,
        resizes: Arc<std::sync::Mutex<Vec<TermSize>>>,
    }

    fn check_pod(namespace: &str, pod: &str) -> Result<(), StreamError> {
        if namespace == "default" && pod == "web" {
            Ok(())
        } else {
            Err(StreamError::NotFound(format!(
                "pod {namespace}/{pod} is not on this host"
            )))
        }
    }

    impl Fake {
        fn run(
            &self,
            command: &[String],
            request: &ExecRequest,
        ) -> Result<ExecSession, StreamError> {
            let (program, args) = command
                .split_first()
                .ok_or_else(|| StreamError::BadRequest("no command".into()))?;
            let piped = |on: bool| {
                if on {
                    std::process::Stdio::piped()
                } else {
                    std::process::Stdio::null()
                }
            };
            let mut child = Command::new(program)
                .args(args)
                .stdin(piped(request.stdin))
                .stdout(piped(request.stdout))
                .stderr(piped(request.stderr))
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| StreamError::BadRequest(e.to_string()))?;
            let resize = request.tty.then(|| {
                let (tx, mut rx) = mpsc::channel::<TermSize>(4);
                let seen = self.resizes.clone();
                tokio::spawn(async move {
                    while let Some(size) = rx.recv().await {
                        seen.lock().unwrap().push(size);
                    }
                });
                tx
            });
            Ok(ExecSession {
                stdin: child
                    .stdin
                    .take()
                    .map(|s| Box::pin(s) as crate::streams::Writer),
                stdout: child
                    .stdout
                    .take()
                    .map(|s| Box::pin(s) as crate::streams::Reader),
                stderr: child
                    .stderr
                    .take()
                    .map(|s| Box::pin(s) as crate::streams::Reader),
                resize,
                exit: Box::pin(async move {
                    child
                        .wait()
                        .await
                        .map(|status| status.code().unwrap_or(-1))
                        .map_err(|e| StreamError::Internal(e.to_string()))
                }),
            })
        }
    }

    #[async_trait::async_trait]
    impl PodStreams for Fake {
        async fn logs(
            &self,
            namespace: &str,
            pod: &str,
            _container: Option<&str>,
            options: LogOptions,
        ) -> Result<BoxStream<'static, io::Result<Bytes>>, StreamError> {
            check_pod(namespace, pod)?;
            *self.log_options.lock().unwrap() = Some(options.clone());
            let head = futures::stream::iter(vec![
                Ok(Bytes::from_static(b"line 1\n")),
                Ok(Bytes::from_static(b"line 2\n")),
            ]);
            if !options.follow {
                return Ok(head.boxed());
            }
            let release = self.release.clone();
            let tail = futures::stream::once(async move {
                release.notified().await;
                Ok(Bytes::from_static(b"line 3\n"))
            });
            Ok(head.chain(tail).boxed())
        }

        async fn exec(
            &self,
            namespace: &str,
            pod: &str,
            _container: Option<&str>,
            request: ExecRequest,
        ) -> Result<ExecSession, StreamError> {
            check_pod(namespace, pod)?;
            self.run(&request.command, &request)
        }

        async fn attach(
            &self,
            namespace: &str,
            pod: &str,
            _container: Option<&str>,
            request: ExecRequest,
        ) -> Result<ExecSession, StreamError> {
            check_pod(namespace, pod)?;
            // The "main process" of the fake pod echoes its stdin.
            self.run(&["cat".to_owned()], &request)
        }

        async fn port_forward(
            &self,
            namespace: &str,
            pod: &str,
            port: u16,
        ) -> Result<TcpStream, StreamError> {
            check_pod(namespace, pod)?;
            if port != 7000 {
                return Err(StreamError::Internal(format!(
                    "connection refused on {port}"
                )));
            }
            TcpStream::connect(self.echo)
                .await
                .map_err(|e| StreamError::Internal(e.to_string()))
        }
    }

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    struct Harness {
        server: StreamServer,
        fake: Arc<Fake>,
    }

    async fn start() -> Harness {
        let fake = Arc::new(Fake {
            echo: echo_server().await,
            release: Arc::new(Notify::new()),
            log_options: std::sync::Mutex::new(None),
            resizes: Arc::default(),
        });
        let server = serve(
            "127.0.0.1:0".parse().unwrap(),
            TOKEN.to_owned(),
            fake.clone(),
        )
        .await
        .unwrap();
        Harness { server, fake }
    }

    // ---- a TLS client that accepts exactly the pinned certificate -----------------------

    #[derive(Debug)]
    struct Pinned {
        sha256: String,
        provider: Arc<rustls::crypto::CryptoProvider>,
    }

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp_response: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if hex(&Sha256::digest(end_entity.as_ref())) == self.sha256 {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General(
                    "certificate does not match the pin".into(),
                ))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }

    async fn tls_connect(server: &StreamServer, pin: &str) -> io::Result<TlsStream<TcpStream>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                sha256: pin.to_owned(),
                provider,
            }))
            .with_no_client_auth();
        let tcp = TcpStream::connect(server.addr).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// A raw HTTP/1.1 exchange: the status, the headers and a reader positioned at the body.
    struct RawResponse {
        status: u16,
        headers: Vec<(String, String)>,
        body: BufReader<TlsStream<TcpStream>>,
    }

    impl RawResponse {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// The next chunk of a chunked body (None at the end).
        async fn chunk(&mut self) -> Option<Vec<u8>> {
            let mut line = String::new();
            self.body.read_line(&mut line).await.unwrap();
            let size = usize::from_str_radix(line.trim(), 16).unwrap();
            if size == 0 {
                return None;
            }
            let mut data = vec![0; size + 2];
            self.body.read_exact(&mut data).await.unwrap();
            data.truncate(size);
            Some(data)
        }

        async fn rest(mut self) -> String {
            let mut out = Vec::new();
            if self.header("transfer-encoding") == Some("chunked") {
                while let Some(chunk) = self.chunk().await {
                    out.extend(chunk);
                }
            } else if let Some(len) = self.header("content-length") {
                out.resize(len.parse().unwrap(), 0);
                self.body.read_exact(&mut out).await.unwrap();
            }
            String::from_utf8(out).unwrap()
        }
    }

    async fn raw_request(server: &StreamServer, head: &str) -> RawResponse {
        let mut tls = tls_connect(server, &server.cert_sha256).await.unwrap();
        tls.write_all(head.as_bytes()).await.unwrap();
        let mut body = BufReader::new(tls);
        let mut status_line = String::new();
        body.read_line(&mut status_line).await.unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            body.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        RawResponse {
            status,
            headers,
            body,
        }
    }

    async fn get(server: &StreamServer, path: &str, token: Option<&str>) -> RawResponse {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        raw_request(
            server,
            &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n"),
        )
        .await
    }

    async fn ws_connect(
        server: &StreamServer,
        path: &str,
        protocol: &str,
    ) -> Result<WebSocketStream<TlsStream<TcpStream>>, tokio_tungstenite::tungstenite::Error> {
        let tls = tls_connect(server, &server.cert_sha256).await.unwrap();
        let mut request = format!("wss://localhost{path}")
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap(),
        );
        headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(protocol).unwrap(),
        );
        let (ws, response) = tokio_tungstenite::client_async(request, tls).await?;
        assert_eq!(
            response
                .headers()
                .get(header::SEC_WEBSOCKET_PROTOCOL)
                .and_then(|v| v.to_str().ok()),
            Some(protocol.split(',').next().unwrap().trim())
        );
        Ok(ws)
    }

    /// Reads messages until the server closes: per-channel bytes, and whether the close was
    /// normal.
    async fn ws_collect(
        ws: &mut WebSocketStream<TlsStream<TcpStream>>,
    ) -> (std::collections::BTreeMap<u8, Vec<u8>>, Vec<usize>, bool) {
        let mut channels = std::collections::BTreeMap::<u8, Vec<u8>>::new();
        let mut empties = Vec::new();
        let mut normal = false;
        let collect = async {
            while let Some(message) = ws.next().await {
                match message.unwrap() {
                    Message::Binary(data) => {
                        if data.len() == 1 {
                            empties.push(usize::from(data[0]));
                        }
                        channels.entry(data[0]).or_default().extend(&data[1..]);
                    }
                    Message::Close(frame) => {
                        normal = frame.is_some_and(|f| f.code == CloseCode::Normal);
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(20), collect)
            .await
            .expect("the server ends the session");
        (channels, empties, normal)
    }

    // ---- unit tests ---------------------------------------------------------------------

    #[test]
    fn query_decoding() {
        let q = Query::parse("command=sh&command=-c&command=echo+a%20b%26c%3D&stdin=true&tty=1&x");
        assert_eq!(q.all("command"), ["sh", "-c", "echo a b&c="]);
        assert!(q.flag("stdin") && q.flag("tty") && !q.flag("stdout") && !q.flag("x"));
        assert_eq!(form_decode("%zz%4"), "%zz%4");
        assert_eq!(form_decode("%C3%A9"), "é");
    }

    #[test]
    fn paths() {
        let t = container_target(&["ns", "p", "c"]).unwrap();
        assert_eq!((t.namespace.as_str(), t.pod.as_str()), ("ns", "p"));
        assert_eq!(t.container.as_deref(), Some("c"));
        assert_eq!(
            container_target(&["ns", "p", "uid", "c"])
                .unwrap()
                .container
                .as_deref(),
            Some("c")
        );
        assert_eq!(container_target(&["ns", "p"]).unwrap().container, None);
        assert!(container_target(&["ns"]).is_none());
        assert!(container_target(&["ns", "", "c"]).is_none());
        assert!(pod_target(&["ns", "p"]).is_some());
        assert!(pod_target(&["ns", "p", "uid", "x"]).is_none());
    }

    #[test]
    fn log_options_from_query() {
        let q = Query::parse(
            "follow=true&timestamps=1&tailLines=10&sinceSeconds=5&sinceTime=2024-01-01T00:00:00Z&limitBytes=100",
        );
        assert_eq!(
            log_options(&q).unwrap(),
            LogOptions {
                follow: true,
                previous: false,
                timestamps: true,
                tail_lines: Some(10),
                since_seconds: Some(5),
                since_time: Some("2024-01-01T00:00:00Z".into()),
                limit_bytes: Some(100),
            }
        );
        assert!(log_options(&Query::parse("tailLines=x")).is_err());
        assert!(log_options(&Query::parse("limitBytes=0")).is_err());
    }

    #[test]
    fn exec_requests() {
        let q = Query::parse("command=ls&stdout=true&stderr=true&tty=true");
        let r = exec_request(&q, ExecKind::Exec).unwrap();
        assert!(r.stdout && r.tty && !r.stderr, "a TTY merges stderr");
        assert!(exec_request(&Query::parse("command=ls"), ExecKind::Exec).is_err());
        assert!(exec_request(&Query::parse("stdout=true"), ExecKind::Exec).is_err());
        let attach = exec_request(&Query::parse("command=ls&stdin=1"), ExecKind::Attach);
        assert!(attach.unwrap().command.is_empty());
    }

    #[test]
    fn ports() {
        assert_eq!(
            forward_ports(&Query::parse("port=80&ports=81,82")).unwrap(),
            [80, 81, 82]
        );
        assert!(forward_ports(&Query::parse("")).is_err());
        assert!(forward_ports(&Query::parse("port=0")).is_err());
        assert!(forward_ports(&Query::parse("port=70000")).is_err());
    }

    #[test]
    fn statuses() {
        assert_eq!(
            exit_status(&Ok(0)),
            serde_json::json!({"metadata": {}, "status": "Success"})
        );
        let failed = exit_status(&Ok(7));
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(
            failed["details"]["causes"][0],
            serde_json::json!({"reason": "ExitCode", "message": "7"})
        );
        let v4 = ChannelProtocol::spdy(WS_V4).unwrap();
        let v3 = ChannelProtocol::spdy("v3.channel.k8s.io").unwrap();
        assert!(status_bytes(v4, &Ok(0)).is_some());
        assert!(status_bytes(v3, &Ok(0)).is_none());
        let text = status_bytes(v3, &Ok(2)).unwrap();
        assert!(
            std::str::from_utf8(&text)
                .unwrap()
                .contains("non-zero exit code")
        );
    }

    #[test]
    fn resize_decoding() {
        let mut buf = BytesMut::from(&b"{\"Width\":80,\"Height\":24}{\"Width\":100,"[..]);
        assert_eq!(
            decode_resizes(&mut buf),
            [TermSize {
                width: 80,
                height: 24
            }]
        );
        buf.extend_from_slice(b"\"Height\":50}\n");
        assert_eq!(
            decode_resizes(&mut buf),
            [TermSize {
                width: 100,
                height: 50
            }]
        );
        assert!(buf.iter().all(u8::is_ascii_whitespace));
    }

    #[test]
    fn spdy_negotiation_follows_the_client_order() {
        let mut headers = HeaderMap::new();
        headers.append(
            STREAM_PROTOCOL_HEADER,
            HeaderValue::from_static("v9.channel.k8s.io"),
        );
        headers.append(
            STREAM_PROTOCOL_HEADER,
            HeaderValue::from_static("v3.channel.k8s.io"),
        );
        headers.append(
            STREAM_PROTOCOL_HEADER,
            HeaderValue::from_static("v4.channel.k8s.io"),
        );
        let Ok(Upgrade::Spdy { protocol }) =
            negotiate_spdy(&headers, &[WS_V4, "v3.channel.k8s.io"])
        else {
            panic!("no protocol")
        };
        assert_eq!(protocol, "v3.channel.k8s.io");
        let Err(response) = negotiate_spdy(&headers, &[SPDY_PORT_FORWARD]) else {
            panic!("negotiated")
        };
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }

    // ---- against the running server -----------------------------------------------------

    #[tokio::test]
    async fn certificate_and_token() {
        let h = start().await;
        assert_eq!(h.server.endpoint, format!("https://{}", h.server.addr));
        assert_eq!(h.server.cert_sha256.len(), 64);
        // Another pin is refused.
        assert!(tls_connect(&h.server, &"0".repeat(64)).await.is_err());

        let response = get(&h.server, "/containerLogs/default/web/app", None).await;
        assert_eq!(response.status, 401);
        let body: serde_json::Value = serde_json::from_str(&response.rest().await).unwrap();
        assert_eq!(body["kind"], "Status");
        assert_eq!(body["code"], 401);
        let response = get(&h.server, "/containerLogs/default/web/app", Some("wrong")).await;
        assert_eq!(response.status, 401);

        let response = get(&h.server, "/containerLogs/default/nope/app", Some(TOKEN)).await;
        assert_eq!(response.status, 404);
        let body: serde_json::Value = serde_json::from_str(&response.rest().await).unwrap();
        assert_eq!(body["reason"], "NotFound");
        let response = get(&h.server, "/elsewhere/default/web", Some(TOKEN)).await;
        assert_eq!(response.status, 404);
        let response = get(
            &h.server,
            "/containerLogs/default/web/app?tailLines=x",
            Some(TOKEN),
        )
        .await;
        assert_eq!(response.status, 400);
        // An exec without an upgrade is a bad request.
        let response = get(
            &h.server,
            "/exec/default/web/app?command=ls&stdout=1",
            Some(TOKEN),
        )
        .await;
        assert_eq!(response.status, 400);
    }

    #[tokio::test]
    async fn logs_are_streamed_chunk_by_chunk() {
        let h = start().await;
        let mut response = get(
            &h.server,
            "/containerLogs/default/web/app?follow=true&timestamps=true&tailLines=5",
            Some(TOKEN),
        )
        .await;
        assert_eq!(response.status, 200);
        assert_eq!(response.header("content-type"), Some("text/plain"));
        assert_eq!(response.header("transfer-encoding"), Some("chunked"));
        let mut seen = Vec::new();
        while !seen.ends_with(b"line 2\n") {
            let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
                .await
                .expect("the first lines arrive before the log ends")
                .unwrap();
            seen.extend(chunk);
        }
        assert_eq!(seen, b"line 1\nline 2\n");
        // The stream is still open; the next line comes when the runtime has it.
        h.fake.release.notify_one();
        assert_eq!(response.rest().await, "line 3\n");
        let options = h.fake.log_options.lock().unwrap().clone().unwrap();
        assert!(options.follow && options.timestamps);
        assert_eq!(options.tail_lines, Some(5));

        let response = get(
            &h.server,
            "/containerLogs/default/web/app?limitBytes=9",
            Some(TOKEN),
        )
        .await;
        assert_eq!(response.rest().await, "line 1\nli");
    }

    #[tokio::test]
    async fn websocket_v5_exec() {
        let h = start().await;
        let path = "/exec/default/web/app?command=sh&command=-c&command=read+x%3B+echo+out%3A%24x%3B+echo+err+%3E%262%3B+cat%3B+exit+3&stdin=true&stdout=true&stderr=true";
        let mut ws = ws_connect(&h.server, path, "v5.channel.k8s.io, v4.channel.k8s.io")
            .await
            .unwrap();
        ws.send(Message::Binary(Bytes::from_static(b"\x00hello\n")))
            .await
            .unwrap();
        ws.send(Message::Binary(Bytes::from_static(b"\x00tail")))
            .await
            .unwrap();
        // v5: close stdin, so `cat` ends.
        ws.send(Message::Binary(Bytes::from_static(&[255, 0])))
            .await
            .unwrap();
        let (channels, empties, normal) = ws_collect(&mut ws).await;
        assert_eq!(empties.first(), Some(&1), "an empty stdout message first");
        assert_eq!(String::from_utf8_lossy(&channels[&1]), "out:hello\ntail");
        assert_eq!(String::from_utf8_lossy(&channels[&2]), "err\n");
        let status: serde_json::Value = serde_json::from_slice(&channels[&3]).unwrap();
        assert_eq!(status["status"], "Failure");
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        assert!(normal, "the session ends with a normal close");
    }

    #[tokio::test]
    async fn websocket_v4_exec_success_and_resize() {
        let h = start().await;
        let path = "/exec/default/web/app?command=sh&command=-c&command=sleep+0.3%3B+echo+done&stdout=true&tty=true";
        let mut ws = ws_connect(&h.server, path, "v4.channel.k8s.io")
            .await
            .unwrap();
        ws.send(Message::Binary(Bytes::from_static(
            b"\x04{\"Width\":120,\"Height\":40}",
        )))
        .await
        .unwrap();
        let (channels, _, normal) = ws_collect(&mut ws).await;
        assert_eq!(String::from_utf8_lossy(&channels[&1]), "done\n");
        let status: serde_json::Value = serde_json::from_slice(&channels[&3]).unwrap();
        assert_eq!(
            status,
            serde_json::json!({"metadata": {}, "status": "Success"})
        );
        assert!(normal);
        assert_eq!(
            h.fake.resizes.lock().unwrap().as_slice(),
            [TermSize {
                width: 120,
                height: 40
            }]
        );
    }

    #[tokio::test]
    async fn exec_ends_when_a_background_child_keeps_stdout_open() {
        let h = start().await;
        // `sleep` inherits stdout and outlives the shell: EOF comes only after 20 s.
        let path = "/exec/default/web/app?command=sh&command=-c&command=sleep+20+%26+echo+done&stdout=true";
        let started = std::time::Instant::now();
        let mut ws = ws_connect(&h.server, path, "v5.channel.k8s.io")
            .await
            .unwrap();
        let (channels, _, normal) = ws_collect(&mut ws).await;
        assert_eq!(String::from_utf8_lossy(&channels[&1]), "done\n");
        let status: serde_json::Value = serde_json::from_slice(&channels[&3]).unwrap();
        assert_eq!(status["status"], "Success");
        assert!(normal);
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the session ends once the output is idle after the exit"
        );
    }

    #[tokio::test]
    async fn websocket_attach_and_errors() {
        let h = start().await;
        let mut ws = ws_connect(
            &h.server,
            "/attach/default/web/app?stdin=true&stdout=true",
            "v5.channel.k8s.io",
        )
        .await
        .unwrap();
        ws.send(Message::Binary(Bytes::from_static(b"\x00ping")))
            .await
            .unwrap();
        ws.send(Message::Binary(Bytes::from_static(&[255, 0])))
            .await
            .unwrap();
        let (channels, _, _) = ws_collect(&mut ws).await;
        assert_eq!(String::from_utf8_lossy(&channels[&1]), "ping");

        // No supported subprotocol: 400 before any upgrade.
        let error = ws_connect(
            &h.server,
            "/exec/default/web/app?command=ls&stdout=true",
            "base64.channel.k8s.io",
        )
        .await
        .err()
        .unwrap();
        let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
            panic!("expected an HTTP error, got {error:?}")
        };
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        // A pod that is not here: 404 before any upgrade.
        let error = ws_connect(
            &h.server,
            "/exec/default/nope/app?command=ls&stdout=true",
            "v5.channel.k8s.io",
        )
        .await
        .err()
        .unwrap();
        let tokio_tungstenite::tungstenite::Error::Http(response) = error else {
            panic!("expected an HTTP error, got {error:?}")
        };
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn websocket_v4_port_forward() {
        let h = start().await;
        let mut ws = ws_connect(
            &h.server,
            "/portForward/default/web?port=7000&port=7001",
            "v4.channel.k8s.io",
        )
        .await
        .unwrap();
        ws.send(Message::Binary(Bytes::from_static(b"\x00echo me")))
            .await
            .unwrap();
        let mut got = std::collections::BTreeMap::<u8, Vec<u8>>::new();
        let wanted = |got: &std::collections::BTreeMap<u8, Vec<u8>>| {
            got.get(&0).is_some_and(|d| d.ends_with(b"echo me"))
                && got.get(&3).is_some_and(|d| d.len() > 2)
        };
        while !wanted(&got) {
            let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Message::Binary(data) = message {
                got.entry(data[0]).or_default().extend(&data[1..]);
            }
        }
        // Each channel starts with its port, little endian.
        assert_eq!(&got[&0][..2], &7000u16.to_le_bytes());
        assert_eq!(&got[&0][2..], b"echo me");
        assert_eq!(&got[&1][..], &7000u16.to_le_bytes());
        assert_eq!(&got[&2][..], &7001u16.to_le_bytes());
        assert!(String::from_utf8_lossy(&got[&3][2..]).contains("error forwarding port 7001"));
    }

    // ---- a minimal SPDY/3.1 client (enough to open streams and read frames) -------------

    struct SpdyClient<T> {
        io: T,
        deflate: flate2::Compress,
    }

    #[derive(Debug, Default)]
    struct SpdyStreamSeen {
        data: Vec<u8>,
        fin: bool,
        reset: bool,
        replied: bool,
    }

    impl<T> SpdyClient<T> {
        fn new(io: T) -> Self {
            let mut deflate = flate2::Compress::new(flate2::Compression::default(), true);
            deflate
                .set_dictionary(crate::spdy::SPDY_DICTIONARY)
                .unwrap();
            SpdyClient { io, deflate }
        }

        fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
            let mut frame = vec![0x80, 0x03];
            frame.extend_from_slice(&kind.to_be_bytes());
            frame.push(flags);
            frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes()[1..]);
            frame.extend_from_slice(payload);
            frame
        }
    }

    impl<T: AsyncWrite + Unpin> SpdyClient<T> {
        async fn open(&mut self, id: u32, headers: &[(&str, &str)]) {
            let mut block = u32::try_from(headers.len()).unwrap().to_be_bytes().to_vec();
            for (name, value) in headers {
                for part in [name, value] {
                    block.extend_from_slice(&u32::try_from(part.len()).unwrap().to_be_bytes());
                    block.extend_from_slice(part.as_bytes());
                }
            }
            let mut compressed = Vec::with_capacity(block.len() + 256);
            self.deflate
                .compress_vec(&block, &mut compressed, flate2::FlushCompress::Sync)
                .unwrap();
            let mut payload = id.to_be_bytes().to_vec();
            payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            payload.extend_from_slice(&compressed);
            let frame = Self::control(1, 0, &payload);
            self.io.write_all(&frame).await.unwrap();
            self.io.flush().await.unwrap();
        }

        async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
            let mut frame = id.to_be_bytes().to_vec();
            frame.push(u8::from(fin));
            frame.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes()[1..]);
            frame.extend_from_slice(data);
            self.io.write_all(&frame).await.unwrap();
            self.io.flush().await.unwrap();
        }
    }

    impl<T: AsyncRead + Unpin> SpdyClient<T> {
        /// Reads frames into `streams` until `done` holds or the connection ends (false).
        async fn read_until(
            &mut self,
            streams: &mut std::collections::BTreeMap<u32, SpdyStreamSeen>,
            done: impl Fn(&std::collections::BTreeMap<u32, SpdyStreamSeen>) -> bool,
        ) -> bool {
            let read = async {
                while !done(streams) {
                    let mut head = [0u8; 8];
                    if self.io.read_exact(&mut head).await.is_err() {
                        return false;
                    }
                    let len = usize::try_from(u32::from_be_bytes([0, head[5], head[6], head[7]]))
                        .unwrap();
                    let mut payload = vec![0u8; len];
                    self.io.read_exact(&mut payload).await.unwrap();
                    let word = |i: usize| {
                        u32::from_be_bytes([
                            payload[i],
                            payload[i + 1],
                            payload[i + 2],
                            payload[i + 3],
                        ]) & 0x7fff_ffff
                    };
                    if head[0] & 0x80 == 0 {
                        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
                        let seen = streams.entry(id).or_default();
                        seen.data.extend_from_slice(&payload);
                        seen.fin |= head[4] & 1 != 0;
                        continue;
                    }
                    match u16::from_be_bytes([head[2], head[3]]) {
                        2 => {
                            let seen = streams.entry(word(0)).or_default();
                            seen.replied = true;
                            seen.fin |= head[4] & 1 != 0;
                        }
                        3 => streams.entry(word(0)).or_default().reset = true,
                        _ => {}
                    }
                }
                true
            };
            tokio::time::timeout(Duration::from_secs(20), read)
                .await
                .expect("the SPDY server answers in time")
        }
    }

    /// Sends an HTTP upgrade request and returns the connection after its 101.
    async fn spdy_upgrade(
        server: &StreamServer,
        path: &str,
        protocols: &[&str],
    ) -> (u16, Vec<(String, String)>, BufReader<TlsStream<TcpStream>>) {
        let versions: String = protocols
            .iter()
            .map(|p| format!("X-Stream-Protocol-Version: {p}\r\n"))
            .collect();
        let response = raw_request(
            server,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n{versions}Content-Length: 0\r\n\r\n"
            ),
        )
        .await;
        (response.status, response.headers, response.body)
    }

    #[tokio::test]
    async fn spdy_exec() {
        let h = start().await;
        let path = "/exec/default/web/app?command=sh&command=-c&command=read+x%3B+echo+out%3A%24x%3B+echo+err+%3E%262%3B+exit+5&stdin=true&stdout=true&stderr=true";
        let (status, headers, io) = spdy_upgrade(
            &h.server,
            path,
            &["v5.channel.k8s.io,v4.channel.k8s.io", "v3.channel.k8s.io"],
        )
        .await;
        assert_eq!(status, 101);
        assert!(headers.iter().any(
            |(n, v)| n.eq_ignore_ascii_case(STREAM_PROTOCOL_HEADER) && v == "v5.channel.k8s.io"
        ));
        let mut client = SpdyClient::new(io);
        client.open(1, &[("streamType", "error")]).await;
        client.open(3, &[("streamType", "stdin")]).await;
        client.open(5, &[("streamType", "stdout")]).await;
        client.open(7, &[("streamType", "stderr")]).await;
        client.data(3, b"spdy\n", true).await;
        let mut streams = std::collections::BTreeMap::new();
        assert!(
            client
                .read_until(&mut streams, |s| s.get(&1).is_some_and(|e| e.fin))
                .await
        );
        assert_eq!(String::from_utf8_lossy(&streams[&5].data), "out:spdy\n");
        assert_eq!(String::from_utf8_lossy(&streams[&7].data), "err\n");
        let status: serde_json::Value = serde_json::from_slice(&streams[&1].data).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "5");
        assert!(streams.values().all(|s| s.replied || s.data.is_empty()));

        // v2: no JSON on success, nothing at all on the error stream.
        let (status, _, io) = spdy_upgrade(
            &h.server,
            "/exec/default/web/app?command=true&stdout=true",
            &["v2.channel.k8s.io"],
        )
        .await;
        assert_eq!(status, 101);
        let mut client = SpdyClient::new(io);
        client.open(1, &[("streamType", "error")]).await;
        client.open(3, &[("streamType", "stdout")]).await;
        let mut streams = std::collections::BTreeMap::new();
        assert!(
            client
                .read_until(&mut streams, |s| s.get(&1).is_some_and(|e| e.fin))
                .await
        );
        assert!(streams[&1].data.is_empty());

        // An unknown protocol is refused before the upgrade.
        let (status, _, _) = spdy_upgrade(
            &h.server,
            "/exec/default/web/app?command=true&stdout=true",
            &["v9.channel.k8s.io"],
        )
        .await;
        assert_eq!(status, 403);
    }

    #[tokio::test]
    async fn spdy_exec_moves_a_lot_of_stdin() {
        let h = start().await;
        let (status, _, io) = spdy_upgrade(
            &h.server,
            "/exec/default/web/app?command=cat&stdin=true&stdout=true",
            &["v4.channel.k8s.io"],
        )
        .await;
        assert_eq!(status, 101);
        let mut client = SpdyClient::new(io);
        client.open(1, &[("streamType", "error")]).await;
        client.open(3, &[("streamType", "stdin")]).await;
        client.open(5, &[("streamType", "stdout")]).await;
        let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (io, mut streams) = {
            let chunks: Vec<&[u8]> = data.chunks(32 * 1024).collect();
            let last = chunks.len() - 1;
            // Write and read at once: the output must not wait for the input to end.
            let SpdyClient { io, deflate } = client;
            let (r, mut w) = tokio::io::split(io);
            let writer = async {
                for (i, chunk) in chunks.iter().enumerate() {
                    let mut frame = 3u32.to_be_bytes().to_vec();
                    frame.push(u8::from(i == last));
                    frame
                        .extend_from_slice(&u32::try_from(chunk.len()).unwrap().to_be_bytes()[1..]);
                    frame.extend_from_slice(chunk);
                    w.write_all(&frame).await.unwrap();
                }
                w.flush().await.unwrap();
            };
            let mut reader = SpdyClient { io: r, deflate };
            let mut streams = std::collections::BTreeMap::new();
            let read = reader.read_until(&mut streams, |s| s.get(&1).is_some_and(|e| e.fin));
            let ((), done) = tokio::join!(writer, read);
            assert!(done);
            ((), streams)
        };
        let () = io;
        assert!(
            !streams.get(&3).is_some_and(|s| s.fin),
            "the server keeps its side of stdin open (client-go stops sending stdin on its FIN)"
        );
        let out = streams.remove(&5).unwrap_or_default().data;
        assert_eq!(out.len(), data.len());
        assert!(out == data);
    }

    /// Two port-forward requests on one session: 7000 echoes, 7001 fails.
    async fn port_forward_session<T: AsyncRead + AsyncWrite + Unpin>(io: T) {
        let mut client = SpdyClient::new(io);
        client
            .open(
                1,
                &[
                    ("streamType", "error"),
                    ("port", "7000"),
                    ("requestID", "0"),
                ],
            )
            .await;
        client
            .open(
                3,
                &[("streamType", "data"), ("port", "7000"), ("requestID", "0")],
            )
            .await;
        client.data(3, b"through the tunnel", true).await;
        let mut streams = std::collections::BTreeMap::new();
        assert!(
            client
                .read_until(&mut streams, |s| s.get(&3).is_some_and(|d| d.fin)
                    && s.get(&1).is_some_and(|e| e.fin))
                .await
        );
        assert_eq!(streams[&3].data, b"through the tunnel");
        assert!(streams[&1].data.is_empty(), "no error for a good forward");

        client
            .open(
                5,
                &[
                    ("streamType", "error"),
                    ("port", "7001"),
                    ("requestID", "1"),
                ],
            )
            .await;
        client
            .open(
                7,
                &[("streamType", "data"), ("port", "7001"), ("requestID", "1")],
            )
            .await;
        assert!(
            client
                .read_until(&mut streams, |s| s.get(&5).is_some_and(|e| e.fin))
                .await
        );
        let message = String::from_utf8_lossy(&streams[&5].data).into_owned();
        assert!(message.contains("error forwarding port 7001"), "{message}");

        // Old clients send no requestID: the error stream's id names the pair (data = id + 2).
        client
            .open(11, &[("streamType", "error"), ("port", "7000")])
            .await;
        client
            .open(13, &[("streamType", "data"), ("port", "7000")])
            .await;
        client.data(13, b"old client", true).await;
        assert!(
            client
                .read_until(&mut streams, |s| s.get(&13).is_some_and(|d| d.fin)
                    && s.get(&11).is_some_and(|e| e.fin))
                .await
        );
        assert_eq!(streams[&13].data, b"old client");

        // A stream without a port is refused.
        client.open(15, &[("streamType", "data")]).await;
        assert!(
            client
                .read_until(&mut streams, |s| s.get(&15).is_some_and(|d| d.reset))
                .await
        );
    }

    #[tokio::test]
    async fn spdy_port_forward() {
        let h = start().await;
        let (status, _, io) =
            spdy_upgrade(&h.server, "/portForward/default/web", &[SPDY_PORT_FORWARD]).await;
        assert_eq!(status, 101);
        port_forward_session(io).await;
    }

    #[tokio::test]
    async fn spdy_port_forward_tunnelled_in_websocket() {
        let h = start().await;
        let ws = ws_connect(&h.server, "/portForward/default/web", WS_SPDY_PORT_FORWARD)
            .await
            .unwrap();
        port_forward_session(WsIo::new(ws)).await;
    }

    /// A stand-in API server for kubectl: `/version`, discovery, `GET pod`, and the pod
    /// subresources spliced to the streaming server (as the real API server's proxy does).
    const STAND_IN_API_SERVER: &str = r#"# A stand-in API server for kubectl: answers /version and GET pod, and splices
# exec/attach/portforward/log to the agent's streaming server (TLS, bearer token).
import json, re, socket, ssl, sys, threading, urllib.parse

AGENT_PORT, TOKEN = int(sys.argv[1]), sys.argv[2]

POD = {"kind": "Pod", "apiVersion": "v1",
       "metadata": {"name": "web", "namespace": "default", "uid": "u1"},
       "spec": {"containers": [{"name": "app", "image": "x"}]},
       "status": {"phase": "Running"}}
VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0", "platform": "linux/amd64"}


def reply(c, code, obj):
    body = json.dumps(obj).encode()
    c.sendall(b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (code, len(body)) + body)


def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle(c):
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            return
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    method, target, _ = lines[0].split(" ")
    headers = [l for l in lines[1:] if l.split(":")[0].lower() not in ("authorization", "host")]
    path, _, query = target.partition("?")
    if path == "/version":
        return reply(c, 200, VERSION)
    if path == "/api":
        return reply(c, 200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
    if path == "/apis":
        return reply(c, 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": []})
    if path == "/api/v1":
        res = [{"name": n, "singularName": "", "namespaced": True, "kind": k, "verbs": v} for n, k, v in [
            ("pods", "Pod", ["get", "list"]), ("pods/exec", "PodExecOptions", ["create", "get"]),
            ("pods/attach", "PodAttachOptions", ["create", "get"]), ("pods/log", "Pod", ["get"]),
            ("pods/portforward", "PodPortForwardOptions", ["create", "get"])]]
        return reply(c, 200, {"kind": "APIResourceList", "groupVersion": "v1", "resources": res})
    m = re.match(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)(?:/(exec|attach|portforward|log))?$", path)
    if not m:
        return reply(c, 404, {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404})
    ns, name, sub = m.groups()
    if sub is None:
        return reply(c, 200, POD)
    container = urllib.parse.parse_qs(query).get("container", ["app"])[0]
    new = {"exec": f"/exec/{ns}/{name}/{container}", "attach": f"/attach/{ns}/{name}/{container}",
           "portforward": f"/portForward/{ns}/{name}", "log": f"/containerLogs/{ns}/{name}/{container}"}[sub]
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    up = ctx.wrap_socket(socket.create_connection(("127.0.0.1", AGENT_PORT)))
    req = f"{method} {new}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    up.sendall(req.encode() + rest)
    t = threading.Thread(target=pipe, args=(c, up), daemon=True)
    t.start()
    pipe(up, c)
    t.join(timeout=30)


s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.listen(64)
print("ready", s.getsockname()[1], flush=True)
while True:
    conn, _ = s.accept()
    threading.Thread(target=lambda c=conn: (handle(c), c.close()), daemon=True).start()
"#;

    fn kubectl(version: &str) -> Option<std::path::PathBuf> {
        let name = format!("kubectl.{version}");
        let known = std::path::Path::new("/usr/lib/google-cloud-sdk/bin").join(&name);
        if known.exists() {
            return Some(known);
        }
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(&name))
                .find(|p| p.exists())
        })
    }

    async fn run_kubectl(
        bin: &std::path::Path,
        base: &[String],
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> std::process::Output {
        let mut child = Command::new(bin)
            .args(base)
            .args(args)
            .stdin(if stdin.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
            let data = data.to_vec();
            // Concurrently with reading the output; a failed write shows in the assertions.
            tokio::spawn(async move {
                let _ = pipe.write_all(&data).await;
            });
        }
        tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} timed out"))
            .unwrap()
    }

    /// The real kubectl (1.33: WebSocket v5 exec and SPDY-in-WebSocket port-forward; 1.28:
    /// SPDY only) against this server through a stand-in API server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn real_kubectl_exec_logs_and_port_forward() {
        let versions: Vec<_> = ["1.33", "1.28"]
            .into_iter()
            .filter_map(|v| kubectl(v).map(|bin| (v, bin)))
            .collect();
        let python = std::process::Command::new("python3")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if versions.is_empty() || !python {
            eprintln!(
                "SKIPPED real_kubectl_exec_logs_and_port_forward: needs kubectl.1.33/1.28 and python3"
            );
            return;
        }
        let h = start().await;
        let dir =
            std::env::temp_dir().join(format!("stream-server-kubectl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        struct RemoveOnDrop(std::path::PathBuf);
        impl Drop for RemoveOnDrop {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = RemoveOnDrop(dir.clone());
        let script = dir.join("api.py");
        std::fs::write(&script, STAND_IN_API_SERVER).unwrap();
        let mut api = Command::new("python3")
            .arg(&script)
            .arg(h.server.addr.port().to_string())
            .arg(TOKEN)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut ready = String::new();
        BufReader::new(api.stdout.take().unwrap())
            .read_line(&mut ready)
            .await
            .unwrap();
        let api_port = ready.trim().strip_prefix("ready ").unwrap().to_owned();
        let base = vec![
            format!("--server=http://127.0.0.1:{api_port}"),
            "--token=unused".to_owned(),
            format!("--cache-dir={}", dir.join("cache").display()),
        ];
        for (version, bin) in versions {
            let out = run_kubectl(
                &bin,
                &base,
                &[
                    "exec",
                    "web",
                    "--",
                    "sh",
                    "-c",
                    "echo hi; echo err >&2; exit 3",
                ],
                None,
            )
            .await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(3), "{version}: {stderr}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n", "{version}");
            assert!(stderr.contains("err\n"), "{version}: {stderr}");

            let data: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
            let out = run_kubectl(
                &bin,
                &base,
                &["exec", "-i", "web", "--", "cat"],
                Some(&data),
            )
            .await;
            assert!(
                out.status.success(),
                "{version}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stdout == data,
                "{version}: stdin comes back through cat: {} of {} bytes; {}",
                out.stdout.len(),
                data.len(),
                String::from_utf8_lossy(&out.stderr)
            );

            // A TTY session (stdin must be a terminal for kubectl: `script` gives it one).
            let has_script = std::process::Command::new("script")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success());
            if has_script {
                let line = std::iter::once("stty cols 91 rows 33;".to_owned())
                    .chain(std::iter::once(bin.display().to_string()))
                    .chain(base.iter().cloned())
                    .chain(
                        [
                            "exec",
                            "-it",
                            "web",
                            "--",
                            "sh",
                            "-c",
                            "'sleep 1; echo tty-ok; exit 4'",
                        ]
                        .map(str::to_owned),
                    )
                    .collect::<Vec<_>>()
                    .join(" ");
                let out = tokio::time::timeout(
                    Duration::from_secs(60),
                    Command::new("script")
                        .args(["-qec", &line, "/dev/null"])
                        .stdin(std::process::Stdio::null())
                        .output(),
                )
                .await
                .unwrap()
                .unwrap();
                let stdout = String::from_utf8_lossy(&out.stdout);
                assert_eq!(out.status.code(), Some(4), "{version}: {stdout}");
                assert!(stdout.contains("tty-ok"), "{version}: {stdout}");
                let resizes = std::mem::take(&mut *h.fake.resizes.lock().unwrap());
                assert!(
                    resizes.contains(&TermSize {
                        width: 91,
                        height: 33
                    }),
                    "{version}: the terminal size reaches the runtime: {resizes:?}"
                );
            } else {
                eprintln!("SKIPPED the kubectl -it case: no `script`");
            }

            let out = run_kubectl(&bin, &base, &["logs", "web"], None).await;
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "line 1\nline 2\n",
                "{version}"
            );

            let mut forward = Command::new(&bin)
                .args(&base)
                .args(["port-forward", "pod/web", ":7000"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut lines = BufReader::new(forward.stdout.take().unwrap()).lines();
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            // "Forwarding from 127.0.0.1:PORT -> 7000"
            let local = line
                .split_whitespace()
                .nth(2)
                .and_then(|a| a.rsplit(':').next())
                .unwrap()
                .to_owned();
            for round in 0..2 {
                let mut tcp = TcpStream::connect(format!("127.0.0.1:{local}"))
                    .await
                    .unwrap();
                let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8 + round).collect();
                let (mut r, mut w) = tcp.split();
                let write = async {
                    w.write_all(&sent).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let mut got = Vec::new();
                let read = r.read_to_end(&mut got);
                let (_, read) = tokio::time::timeout(Duration::from_secs(30), async {
                    tokio::join!(write, read)
                })
                .await
                .unwrap();
                read.unwrap();
                assert!(got == sent, "{version}: port-forward round {round} echoes");
            }
            let _ = forward.kill().await;
        }
        let _ = api.kill().await;
    }

    #[tokio::test]
    async fn shutdown_stops_serving() {
        let h = start().await;
        let addr = h.server.addr;
        let mut ws = ws_connect(
            &h.server,
            "/exec/default/web/app?command=sleep&command=60&stdout=true",
            "v5.channel.k8s.io",
        )
        .await
        .unwrap();
        // The session is up (its first, empty stdout message).
        let first = ws.next().await.unwrap().unwrap();
        assert_eq!(first, Message::Binary(Bytes::from_static(&[1])));
        h.server.shutdown();
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        assert!(ended.is_ok(), "running sessions end with the server");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = TcpStream::connect(addr).await.is_err();
        assert!(refused, "the listener is closed after shutdown");
    }
}
