//! The pod proxy end to end on loopback: a real `TestServer` (HTTPS, `AgentProxy`) in front of a
//! fake agent (HTTPS with a self-signed rcgen certificate, its SHA-256 in the Node's annotation)
//! that streams logs slowly, answers WebSocket exec upgrades by echoing, and SPDY-style
//! port-forward upgrades by echoing raw bytes. Clients: hyper (logs, raw upgrades) and
//! tokio-tungstenite (exec), both over TLS to the API server with its CA.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apiserver::objects::WriteOptions;
use apiserver::testing::TestServer;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// The fake agent.

/// One request the fake agent received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    headers: http::HeaderMap,
}

struct AgentState {
    seen: Mutex<Vec<Seen>>,
    /// Each log request hands the test the sender that writes its body.
    log_streams: mpsc::Sender<mpsc::Sender<Bytes>>,
}

struct FakeAgent {
    endpoint: String,
    sha256: String,
    state: Arc<AgentState>,
    log_streams: mpsc::Receiver<mpsc::Sender<Bytes>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeAgent {
    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A self-signed certificate for 127.0.0.1: (DER, PKCS#8 key, sha256 hex).
fn self_signed() -> (
    rustls::pki_types::CertificateDer<'static>,
    PrivateKeyDer<'static>,
    String,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let sha = hex(Sha256::digest(der.as_ref()).as_slice());
    (der, PrivateKeyDer::Pkcs8(key.serialize_der().into()), sha)
}

async fn start_agent(tls12_only: bool) -> FakeAgent {
    let (der, key, sha256) = self_signed();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let (tx, rx) = mpsc::channel(16);
    let state = Arc::new(AgentState {
        seen: Mutex::new(Vec::new()),
        log_streams: tx,
    });
    let st = state.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let st = st.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |req| agent_handle(req, st.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    FakeAgent {
        endpoint,
        sha256,
        state,
        log_streams: rx,
        task,
    }
}

type AgentBody = BoxBody<Bytes, Infallible>;

fn agent_status(code: StatusCode, message: &str) -> Response<AgentBody> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": "NotFound", "code": code.as_u16()});
    Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, "application/json")
        .body(BoxBody::new(Full::new(Bytes::from(body.to_string()))))
        .unwrap()
}

async fn agent_handle(
    mut req: Request<Incoming>,
    st: Arc<AgentState>,
) -> Result<Response<AgentBody>, Infallible> {
    st.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match segs.as_slice() {
        ["containerLogs", _, _, _] => {
            let (tx, rx) = mpsc::channel::<Bytes>(4);
            st.log_streams.send(tx).await.unwrap();
            let body = StreamBody::new(
                ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))),
            );
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(BoxBody::new(body))
                .unwrap()
        }
        ["exec", _, _, "stopped"] => agent_status(
            StatusCode::NOT_FOUND,
            "container stopped is not running on this host",
        ),
        ["exec" | "attach", _, _, _] => {
            let Some(key) = req.headers().get("sec-websocket-key") else {
                return Ok(agent_status(StatusCode::BAD_REQUEST, "not a websocket"));
            };
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            let offered: Vec<String> = req
                .headers()
                .get_all("sec-websocket-protocol")
                .iter()
                .flat_map(|v| v.to_str().unwrap().split(',').map(|p| p.trim().to_string()))
                .collect();
            let chosen = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
                .into_iter()
                .find(|p| offered.iter().any(|o| o == p))
                .unwrap_or("v4.channel.k8s.io");
            let query = req.uri().query().unwrap_or("").to_string();
            let command: Vec<String> = query
                .split('&')
                .filter_map(|kv| kv.strip_prefix("command="))
                .map(str::to_string)
                .collect();
            let with_stdin = query.split('&').any(|kv| kv == "stdin=true");
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = on_upgrade.await.unwrap();
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    None,
                )
                .await;
                if !with_stdin {
                    // A command without stdin "runs": its words on stdout, then the exit
                    // status on channel 3 (`fail` exits 3), as kubelet ends an exec.
                    let mut out = vec![1u8];
                    out.extend_from_slice(format!("ran: {}\n", command.join(" ")).as_bytes());
                    let _ = ws.send(Message::Binary(out.into())).await;
                    let status = if command.first().map(String::as_str) == Some("fail") {
                        json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                            "message": "command terminated with non-zero exit code",
                            "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}})
                    } else {
                        json!({"metadata": {}, "status": "Success"})
                    };
                    let mut msg = vec![3u8];
                    msg.extend_from_slice(status.to_string().as_bytes());
                    let _ = ws.send(Message::Binary(msg.into())).await;
                    // Normal closure (1000): kubectl reports a close without a code (1005)
                    // as an error.
                    let _ = ws
                        .close(Some(tungstenite::protocol::CloseFrame {
                            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
                            reason: "".into(),
                        }))
                        .await;
                    return;
                }
                // stdin (channel 0) comes back on stdout (channel 1); anything else verbatim.
                while let Some(Ok(msg)) = ws.next().await {
                    let reply = match msg {
                        Message::Binary(b) if b.first() == Some(&0) => {
                            let mut out = b.to_vec();
                            out[0] = 1;
                            Message::Binary(out.into())
                        }
                        Message::Close(_) => break,
                        other => other,
                    };
                    if ws.send(reply).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "websocket")
                .header("Sec-WebSocket-Accept", accept)
                .header("Sec-WebSocket-Protocol", chosen)
                .body(BoxBody::new(Empty::new()))
                .unwrap()
        }
        ["portForward", _, _] => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = on_upgrade.await.unwrap();
                let (mut r, mut w) = tokio::io::split(TokioIo::new(upgraded));
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "SPDY/3.1")
                .header("X-Stream-Protocol-Version", "portforward.k8s.io")
                .body(BoxBody::new(Empty::new()))
                .unwrap()
        }
        _ => agent_status(StatusCode::NOT_FOUND, "no such path"),
    };
    Ok(resp)
}

// ---------------------------------------------------------------------------------------------
// The cluster side: objects and clients of the API server.

fn opts() -> WriteOptions {
    WriteOptions {
        dry_run: false,
        field_manager: "test".into(),
        field_validation: "Ignore".into(),
    }
}

async fn create(ts: &TestServer, plural: &str, ns: Option<&str>, obj: Value) {
    let def = api::resource::find("", "v1", plural).unwrap();
    ts.state
        .objects
        .create(def, ns, obj, &opts())
        .await
        .unwrap();
}

async fn node(ts: &TestServer, name: &str, endpoint: Option<&str>, sha256: Option<&str>) {
    let mut annotations = serde_json::Map::new();
    if let Some(e) = endpoint {
        annotations.insert("nodeless.io/agent-endpoint".into(), e.into());
    }
    if let Some(s) = sha256 {
        annotations.insert("nodeless.io/agent-cert-sha256".into(), s.into());
    }
    create(
        ts,
        "nodes",
        None,
        json!({"metadata": {"name": name, "annotations": annotations}}),
    )
    .await;
}

async fn pod(ts: &TestServer, name: &str, node: &str, containers: &[&str]) {
    let cs: Vec<Value> = containers
        .iter()
        .map(|c| json!({"name": c, "image": "busybox"}))
        .collect();
    let mut spec = json!({"containers": cs});
    if !node.is_empty() {
        spec["nodeName"] = node.into();
    }
    create(
        ts,
        "pods",
        Some("default"),
        json!({"metadata": {"name": name}, "spec": spec}),
    )
    .await;
}

/// A cluster with one agent-backed node `n1` and pod `p` (container `c`) on it.
async fn cluster(tls12_only: bool) -> (TestServer, FakeAgent) {
    let ts = TestServer::start().await;
    let agent = start_agent(tls12_only).await;
    node(&ts, "n1", Some(&agent.endpoint), Some(&agent.sha256)).await;
    pod(&ts, "p", "n1", &["c"]).await;
    (ts, agent)
}

fn port(ts: &TestServer) -> u16 {
    ts.url.rsplit(':').next().unwrap().parse().unwrap()
}

/// TLS to the API server, trusting its CA, HTTP/1.1 only (as kubectl does for upgrades).
async fn api_tls(ts: &TestServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ts.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port(ts))).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// One request to the API server with the admin token (plus `headers`); the response head.
async fn api_request(
    ts: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Response<Incoming> {
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(api_tls(ts).await))
        .await
        .unwrap();
    tokio::spawn(conn.with_upgrades());
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, format!("127.0.0.1:{}", port(ts)))
        .header(header::AUTHORIZATION, format!("Bearer {}", ts.token));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    tokio::time::timeout(
        WAIT,
        send.send_request(b.body(Empty::<Bytes>::new()).unwrap()),
    )
    .await
    .expect("the API server answers in time")
    .unwrap()
}

/// A request whose answer is a JSON Status: (code, Status).
async fn api_status(ts: &TestServer, method: &str, path: &str) -> (StatusCode, Value) {
    let resp = api_request(ts, method, path, &[]).await;
    let code = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)));
    (code, v)
}

fn assert_status(got: &(StatusCode, Value), code: u16, reason: &str, message: &str) {
    let (c, v) = got;
    assert_eq!(c.as_u16(), code, "{v}");
    assert_eq!(v["kind"], "Status", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert_eq!(v["reason"], reason, "{v}");
    let m = v["message"].as_str().unwrap_or_default();
    assert!(m.contains(message), "{m:?} should contain {message:?}");
}

/// The next non-empty body chunk of a streaming response, with a deadline.
async fn next_chunk(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("a chunk in time")?
            .unwrap();
        // (HTTP/2 may end the stream with an empty DATA frame.)
        if let Ok(data) = frame.into_data()
            && !data.is_empty()
        {
            return Some(data);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Logs.

#[tokio::test]
async fn logs_stream_chunk_by_chunk_with_the_admin_token() {
    let (ts, mut agent) = cluster(false).await;
    let resp = api_request(
        &ts,
        "GET",
        "/api/v1/namespaces/default/pods/p/log?follow=true&tailLines=5&timestamps=true",
        &[],
    )
    .await;
    // The agent has the request before it wrote a byte of the body.
    let writer = tokio::time::timeout(WAIT, agent.log_streams.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/plain");
    let mut body = resp.into_body();

    writer.send(Bytes::from_static(b"line 1\n")).await.unwrap();
    // The client sees line 1 while the agent has not written line 2 yet.
    assert_eq!(next_chunk(&mut body).await.unwrap(), "line 1\n");
    writer.send(Bytes::from_static(b"line 2\n")).await.unwrap();
    assert_eq!(next_chunk(&mut body).await.unwrap(), "line 2\n");
    drop(writer);
    assert_eq!(
        next_chunk(&mut body).await,
        None,
        "the stream ends with the agent's"
    );

    let seen = agent.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/containerLogs/default/p/c");
    assert_eq!(seen[0].query, "follow=true&timestamps=true&tailLines=5");
    assert_eq!(
        seen[0].headers[header::AUTHORIZATION],
        format!("Bearer {}", ts.token).as_str(),
        "the agent sees the admin token"
    );
}

#[tokio::test]
async fn logs_stream_over_http2_too() {
    // kubectl's log requests negotiate h2; each agent chunk must still reach it on its own.
    let (ts, mut agent) = cluster(false).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ts.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(("127.0.0.1", port(&ts))).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!(
            "https://127.0.0.1:{}/api/v1/namespaces/default/pods/p/log?follow=true",
            port(&ts)
        ))
        .header(header::AUTHORIZATION, format!("Bearer {}", ts.token))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let writer = tokio::time::timeout(WAIT, agent.log_streams.recv())
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    for line in ["one\n", "two\n", "three\n"] {
        writer.send(Bytes::from(line)).await.unwrap();
        assert_eq!(next_chunk(&mut body).await.unwrap(), line);
    }
    drop(writer);
    assert_eq!(next_chunk(&mut body).await, None);
}

#[tokio::test]
async fn a_client_that_goes_away_ends_the_agent_stream() {
    let (ts, mut agent) = cluster(false).await;
    let resp = api_request(
        &ts,
        "GET",
        "/api/v1/namespaces/default/pods/p/log?follow=true",
        &[],
    )
    .await;
    let writer = tokio::time::timeout(WAIT, agent.log_streams.recv())
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    writer.send(Bytes::from_static(b"hello\n")).await.unwrap();
    assert_eq!(next_chunk(&mut body).await.unwrap(), "hello\n");
    drop(body);
    // The API server drops its side, so the agent's body is no longer read.
    tokio::time::timeout(WAIT, writer.closed())
        .await
        .expect("the agent's log stream is closed when the client leaves");
}

#[tokio::test]
async fn bad_log_options_are_refused_before_the_agent_is_asked() {
    let (ts, agent) = cluster(false).await;
    let base = "/api/v1/namespaces/default/pods/p/log";
    assert_status(
        &api_status(&ts, "GET", &format!("{base}?tailLines=ten")).await,
        400,
        "BadRequest",
        "tailLines",
    );
    assert_status(
        &api_status(&ts, "GET", &format!("{base}?sinceTime=yesterday")).await,
        400,
        "BadRequest",
        "sinceTime",
    );
    assert_status(
        &api_status(&ts, "GET", &format!("{base}?limitBytes=0")).await,
        422,
        "Invalid",
        "limitBytes: Invalid value: 0: must be greater than 0",
    );
    assert_status(
        &api_status(&ts, "GET", &format!("{base}?tailLines=-3")).await,
        422,
        "Invalid",
        "must be greater than or equal to 0",
    );
    assert!(agent.seen().is_empty(), "{:?}", agent.seen());
}

// ---------------------------------------------------------------------------------------------
// Errors before any agent.

#[tokio::test]
async fn container_choice_and_placement_errors_are_worded_as_upstream() {
    let (ts, agent) = cluster(false).await;
    pod(&ts, "two", "n1", &["a", "b"]).await;
    pod(&ts, "pending", "", &["c"]).await;
    pod(&ts, "lost", "ghost-node", &["c"]).await;
    node(&ts, "bare", None, None).await;
    pod(&ts, "bare-pod", "bare", &["c"]).await;

    let pods = "/api/v1/namespaces/default/pods";
    assert_status(
        &api_status(&ts, "GET", &format!("{pods}/two/log")).await,
        400,
        "BadRequest",
        "a container name must be specified for pod two, choose one of: [a b]",
    );
    assert_status(
        &api_status(&ts, "GET", &format!("{pods}/two/exec?command=sh")).await,
        400,
        "BadRequest",
        "a container name must be specified for pod two, choose one of: [a b]",
    );
    assert_status(
        &api_status(&ts, "GET", &format!("{pods}/p/log?container=x")).await,
        400,
        "BadRequest",
        "container x is not valid for pod p",
    );
    assert_status(
        &api_status(&ts, "GET", &format!("{pods}/pending/log")).await,
        400,
        "BadRequest",
        "pod pending does not have a host assigned",
    );
    assert_status(
        &api_status(&ts, "GET", &format!("{pods}/nope/log")).await,
        404,
        "NotFound",
        "pods \"nope\" not found",
    );
    assert_status(
        &api_status(&ts, "GET", &format!("{pods}/lost/log")).await,
        404,
        "NotFound",
        "nodes \"ghost-node\" not found",
    );
    assert_status(
        &api_status(&ts, "GET", &format!("{pods}/bare-pod/log")).await,
        400,
        "BadRequest",
        "node bare has no agent endpoint",
    );
    assert_status(
        &api_status(&ts, "DELETE", &format!("{pods}/p/exec")).await,
        405,
        "MethodNotAllowed",
        "does not allow this method",
    );
    assert!(agent.seen().is_empty(), "{:?}", agent.seen());
}

#[tokio::test]
async fn a_wrong_fingerprint_never_reaches_the_server() {
    let ts = TestServer::start().await;
    let agent = start_agent(false).await;
    let (_, _, other_sha) = self_signed();
    node(&ts, "n1", Some(&agent.endpoint), Some(&other_sha)).await;
    pod(&ts, "p", "n1", &["c"]).await;

    let got = api_status(&ts, "GET", "/api/v1/namespaces/default/pods/p/log").await;
    assert_status(&got, 500, "InternalError", "error dialing backend: ");
    let m = got.1["message"].as_str().unwrap();
    assert!(m.contains(&agent.sha256) && m.contains(&other_sha), "{m}");

    // An upgrade is refused the same way; the agent never got a request (nor the token).
    let resp = api_request(
        &ts,
        "POST",
        "/api/v1/namespaces/default/pods/p/exec?command=sh&stdout=true",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "v4.channel.k8s.io"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(agent.seen().is_empty(), "{:?}", agent.seen());
}

#[tokio::test]
async fn an_unreachable_agent_is_an_internal_error() {
    let ts = TestServer::start().await;
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let (_, _, sha) = self_signed();
    node(
        &ts,
        "n1",
        Some(&format!("https://127.0.0.1:{closed}")),
        Some(&sha),
    )
    .await;
    pod(&ts, "p", "n1", &["c"]).await;
    let got = api_status(&ts, "GET", "/api/v1/namespaces/default/pods/p/log").await;
    assert_status(
        &got,
        500,
        "InternalError",
        &format!("error dialing backend: dial tcp 127.0.0.1:{closed}"),
    );
}

// ---------------------------------------------------------------------------------------------
// Upgrades.

fn exec_request(ts: &TestServer, path_and_query: &str) -> tungstenite::handshake::client::Request {
    let mut req = format!("wss://127.0.0.1:{}{path_and_query}", port(ts))
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert(
        header::AUTHORIZATION,
        format!("Bearer {}", ts.token).parse().unwrap(),
    );
    h.insert(
        "Sec-WebSocket-Protocol",
        "v5.channel.k8s.io,v4.channel.k8s.io".parse().unwrap(),
    );
    req
}

#[tokio::test]
async fn exec_websocket_is_spliced_to_the_agent() {
    let (ts, agent) = cluster(false).await;
    let req = exec_request(
        &ts,
        "/api/v1/namespaces/default/pods/p/exec?command=sh&command=-c&command=echo%20hi&stdin=true&stdout=true&container=c",
    );
    let (mut ws, resp) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(req, api_tls(&ts).await),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "v5.channel.k8s.io"
    );

    // Bytes both ways, several times, including a large message.
    for payload in [b"hello".to_vec(), vec![b'x'; 200_000], b"bye".to_vec()] {
        let mut msg = vec![0u8];
        msg.extend_from_slice(&payload);
        ws.send(Message::Binary(msg.into())).await.unwrap();
        let got = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Message::Binary(b) = got else {
            panic!("want binary, got {got:?}")
        };
        assert_eq!(b[0], 1, "stdin comes back on stdout");
        assert_eq!(&b[1..], payload.as_slice());
    }
    ws.close(None).await.unwrap();

    let seen = agent.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let s = &seen[0];
    assert_eq!(s.method, "GET");
    assert_eq!(s.path, "/exec/default/p/c");
    assert_eq!(
        s.query, "command=sh&command=-c&command=echo%20hi&stdin=true&stdout=true&container=c",
        "the query passes through untouched (repeated commands)"
    );
    assert_eq!(
        s.headers[header::AUTHORIZATION],
        format!("Bearer {}", ts.token).as_str()
    );
    assert_eq!(
        s.headers["sec-websocket-protocol"],
        "v5.channel.k8s.io,v4.channel.k8s.io"
    );
    assert!(s.headers.contains_key("sec-websocket-key"));
    assert_eq!(s.headers["sec-websocket-version"], "13");
}

#[tokio::test]
async fn attach_picks_the_only_container() {
    let (ts, agent) = cluster(false).await;
    let req = exec_request(
        &ts,
        "/api/v1/namespaces/default/pods/p/attach?stdin=true&stdout=true",
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(req, api_tls(&ts).await)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::Binary(vec![0u8, b'a'].into()))
        .await
        .unwrap();
    let got = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::Binary(vec![1u8, b'a'].into()));
    assert_eq!(agent.seen()[0].path, "/attach/default/p/c");
}

#[tokio::test]
async fn agent_errors_before_the_upgrade_pass_through() {
    let ts = TestServer::start().await;
    let agent = start_agent(false).await;
    node(&ts, "n1", Some(&agent.endpoint), Some(&agent.sha256)).await;
    pod(&ts, "p", "n1", &["stopped"]).await;
    let req = exec_request(
        &ts,
        "/api/v1/namespaces/default/pods/p/exec?command=sh&stdout=true",
    );
    let err = tokio_tungstenite::client_async(req, api_tls(&ts).await)
        .await
        .expect_err("no upgrade");
    let tungstenite::Error::Http(resp) = err else {
        panic!("want an HTTP error, got {err:?}")
    };
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
    let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
    assert_eq!(
        body["message"],
        "container stopped is not running on this host"
    );
}

#[tokio::test]
async fn spdy_port_forward_is_spliced_over_tls12() {
    let (ts, agent) = cluster(true).await;
    let resp = api_request(
        &ts,
        "POST",
        "/api/v1/namespaces/default/pods/p/portforward?ports=8080",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "SPDY/3.1"),
            ("X-Stream-Protocol-Version", "portforward.k8s.io"),
        ],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(resp.headers()[header::UPGRADE], "SPDY/3.1");
    assert_eq!(
        resp.headers()["x-stream-protocol-version"],
        "portforward.k8s.io"
    );
    let upgraded = tokio::time::timeout(WAIT, hyper::upgrade::on(resp))
        .await
        .unwrap()
        .unwrap();
    let mut io = TokioIo::new(upgraded);
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    io.write_all(&data).await.unwrap();
    io.flush().await.unwrap();
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(WAIT, io.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, data);

    let seen = agent.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/portForward/default/p");
    assert_eq!(
        seen[0].query, "port=8080",
        "upstream's ports= becomes kubelet's port="
    );
    assert_eq!(seen[0].headers[header::UPGRADE], "SPDY/3.1");
    assert_eq!(
        seen[0].headers["x-stream-protocol-version"],
        "portforward.k8s.io"
    );
}

#[tokio::test]
async fn no_nodes_still_answers_as_before() {
    let ts =
        TestServer::start_with_proxy(Default::default(), |_| Arc::new(apiserver::NoNodes)).await;
    let agent = start_agent(false).await;
    node(&ts, "n1", Some(&agent.endpoint), Some(&agent.sha256)).await;
    pod(&ts, "p", "n1", &["c"]).await;
    pod(&ts, "pending", "", &["c"]).await;
    assert_status(
        &api_status(&ts, "GET", "/api/v1/namespaces/default/pods/p/log").await,
        503,
        "ServiceUnavailable",
        "no agent serves node \"n1\"",
    );
    assert_status(
        &api_status(&ts, "GET", "/api/v1/namespaces/default/pods/pending/log").await,
        400,
        "BadRequest",
        "pod pending does not have a host assigned",
    );
    assert!(agent.seen().is_empty());
}

// ---------------------------------------------------------------------------------------------
// The real kubectl (the machine's dispatcher and its versioned clients).

/// The kubectl binaries to try, or None (said loudly) when the machine has none.
fn kubectls() -> Option<Vec<std::path::PathBuf>> {
    let mut found = Vec::new();
    for p in [
        "/usr/bin/kubectl",
        "/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
    ] {
        let p = std::path::PathBuf::from(p);
        if p.exists() {
            found.push(p);
        }
    }
    if found.is_empty() {
        eprintln!("SKIPPED: no kubectl on this machine; the real-client test did not run");
        return None;
    }
    Some(found)
}

fn kubectl(bin: &std::path::Path, kubeconfig: &std::path::Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bin);
    c.env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn real_kubectl_logs_follow_and_exec() {
    let Some(bins) = kubectls() else { return };
    let (ts, mut agent) = cluster(false).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, &ts.kubeconfig).unwrap();
    for bin in &bins {
        // logs -f: each line shows up before the agent writes the next.
        let mut child = kubectl(bin, &kubeconfig)
            .args(["logs", "-f", "p"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let writer = tokio::time::timeout(WAIT, agent.log_streams.recv())
            .await
            .unwrap_or_else(|_| panic!("{} logs -f never reached the agent", bin.display()))
            .unwrap();
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        for line in ["first line", "second line"] {
            writer.send(Bytes::from(format!("{line}\n"))).await.unwrap();
            let mut got = String::new();
            tokio::time::timeout(
                WAIT,
                tokio::io::AsyncBufReadExt::read_line(&mut out, &mut got),
            )
            .await
            .unwrap_or_else(|_| panic!("{}: {line:?} not seen", bin.display()))
            .unwrap();
            assert_eq!(got, format!("{line}\n"));
        }
        drop(writer);
        let status = tokio::time::timeout(WAIT, child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "{}: logs -f exit {status}", bin.display());

        // exec over WebSocket (v5.channel.k8s.io), output and exit codes through the splice.
        let ok = tokio::time::timeout(
            WAIT,
            kubectl(bin, &kubeconfig)
                .args(["exec", "p", "--", "echo", "hi"])
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            ok.status.success(),
            "{}: {}",
            bin.display(),
            String::from_utf8_lossy(&ok.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "ran: echo hi\n");
        let failed = tokio::time::timeout(
            WAIT,
            kubectl(bin, &kubeconfig)
                .args(["exec", "p", "--", "fail", "now"])
                .output(),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(
            failed.status.code(),
            Some(3),
            "{}: {}",
            bin.display(),
            String::from_utf8_lossy(&failed.stderr)
        );
    }
    let execs: Vec<Seen> = agent
        .seen()
        .into_iter()
        .filter(|s| s.path == "/exec/default/p/c")
        .collect();
    assert_eq!(execs.len(), 2 * bins.len(), "{execs:?}");
    for s in &execs {
        assert_eq!(
            s.headers["sec-websocket-protocol"]
                .to_str()
                .unwrap()
                .split(',')
                .next()
                .map(str::trim),
            Some("v5.channel.k8s.io")
        );
    }
}
