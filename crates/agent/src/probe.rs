//! Kubernetes container probes (startup, liveness, readiness) run the way kubelet runs them.
//!
//! - [`Counter`]: the threshold logic of one probe (successThreshold/failureThreshold, what is
//!   reported when), sans-IO.
//! - The handlers: exec (through the runtime, [`ProbeTarget::exec`]), httpGet (a hand-written
//!   HTTP/1.1 GET, HTTPS accepting any certificate as kubelet does), tcpSocket (a connect), all
//!   from the pod network's namespace ([`crate::netns`]) when one is given.
//! - [`spawn`]: the timers: one loop per probe, liveness and readiness only once the startup
//!   probe succeeded.
//!
//! The failure messages are kubelet's (`Liveness probe failed: HTTP probe failed with statuscode:
//! 500`), so they can go into events as they are. Must not depend on the API server or a runtime.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;

/// Runs a command in the container with a timeout; `Ok(exit code)`.
pub type ExecFn =
    dyn Fn(Vec<String>, Duration) -> BoxFuture<'static, std::io::Result<i32>> + Send + Sync;

/// Where a container's probes go.
pub struct ProbeTarget {
    pub pod_ip: Ipv4Addr,
    /// The network namespace to connect from (the pod network's netns); None = the current one.
    pub netns: Option<PathBuf>,
    /// Runs a command in the container with a timeout; Ok(exit code). A timeout is an error of
    /// kind [`std::io::ErrorKind::TimedOut`].
    pub exec: Arc<ExecFn>,
}

/// What the probes of one container tell the runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The startup probe succeeded (sent at once when there is none).
    Started,
    /// Readiness changed (the initial state is not ready; only changes are sent).
    Ready(bool),
    /// One attempt of any probe failed (sent for each, before any threshold event it causes).
    /// Kubelet's `Unhealthy` message, e.g. `Readiness probe failed: HTTP probe failed with
    /// statuscode: 404`.
    Failed(String),
    /// The liveness probe failed failureThreshold times in a row (each already sent as
    /// [`ProbeEvent::Failed`]): kill (and maybe restart) the container. The last failure's
    /// message, e.g. `Liveness probe failed: HTTP probe failed with statuscode: 500`.
    LivenessFailed(String),
    /// The startup probe failed failureThreshold times in a row: kill the container.
    StartupFailed(String),
}

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    /// As kubelet names it in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
            Kind::Readiness => "Readiness",
        }
    }
}

/// A probe's timing and thresholds with kubelet's defaults applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Settings {
    /// Defaults: period 10 s, timeout 1 s, successThreshold 1 (always 1 for liveness and
    /// startup), failureThreshold 3; values below the minimum (1, or 0 for the delay) are raised.
    pub fn new(kind: Kind, probe: &Probe) -> Settings {
        let secs = |v: Option<i32>, default: i32, min: i32| {
            Duration::from_secs(v.unwrap_or(default).max(min) as u64)
        };
        let count = |v: Option<i32>, default: i32| v.unwrap_or(default).max(1) as u32;
        Settings {
            initial_delay: secs(probe.initial_delay_seconds, 0, 0),
            period: secs(probe.period_seconds, 10, 1),
            timeout: secs(probe.timeout_seconds, 1, 1),
            success_threshold: match kind {
                Kind::Readiness => count(probe.success_threshold, 1),
                Kind::Liveness | Kind::Startup => 1,
            },
            failure_threshold: count(probe.failure_threshold, 3),
        }
    }
}

/// The result of one probe attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The probe ran and failed; kubelet's output for it (`HTTP probe failed with statuscode: 500`).
    Failure(String),
    /// The probe could not be run (a named port that does not exist, the runtime failing):
    /// kubelet logs it and does not count it.
    Error(String),
}

/// The threshold logic of one probe, as kubelet's prober worker does it: a result is reported
/// once it has been seen successThreshold (success) or failureThreshold (failure) times in a row.
#[derive(Debug, Clone)]
pub struct Counter {
    kind: Kind,
    success_threshold: u32,
    failure_threshold: u32,
    /// The last result and how many times in a row it was seen.
    last: Option<bool>,
    run: u32,
    /// What has been reported (readiness starts not ready).
    reported: Option<bool>,
}

impl Counter {
    pub fn new(kind: Kind, settings: &Settings) -> Counter {
        Counter {
            kind,
            success_threshold: settings.success_threshold,
            failure_threshold: settings.failure_threshold,
            last: None,
            run: 0,
            reported: match kind {
                Kind::Readiness => Some(false),
                Kind::Liveness => Some(true),
                Kind::Startup => None,
            },
        }
    }

    /// Records one attempt (`Err` carries the failure output); returns the events to send, in
    /// order: a failed attempt's [`ProbeEvent::Failed`], then the threshold event, if any.
    pub fn record(&mut self, result: Result<(), String>) -> Vec<ProbeEvent> {
        let failed = result
            .as_ref()
            .err()
            .map(|output| ProbeEvent::Failed(self.message(output)));
        let threshold = self.threshold(result);
        failed.into_iter().chain(threshold).collect()
    }

    /// Kubelet's message for a failed attempt: `<Kind> probe failed: <output>`.
    fn message(&self, output: &str) -> String {
        format!("{} probe failed: {output}", self.kind.as_str())
    }

    /// The event an attempt causes once its result has been seen often enough in a row, if any.
    fn threshold(&mut self, result: Result<(), String>) -> Option<ProbeEvent> {
        let success = result.is_ok();
        if self.last == Some(success) {
            self.run = self.run.saturating_add(1);
        } else {
            self.last = Some(success);
            self.run = 1;
        }
        let threshold = if success {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.run < threshold {
            return None;
        }
        match (self.kind, result) {
            (Kind::Readiness, _) => {
                if self.reported == Some(success) {
                    return None;
                }
                self.reported = Some(success);
                Some(ProbeEvent::Ready(success))
            }
            (Kind::Liveness, Ok(())) => None,
            (Kind::Startup, Ok(())) => {
                self.reported = Some(true);
                Some(ProbeEvent::Started)
            }
            (Kind::Liveness, Err(output)) => {
                // Reported once per container instance; the counting starts over after it.
                self.last = None;
                self.run = 0;
                Some(ProbeEvent::LivenessFailed(self.message(&output)))
            }
            (Kind::Startup, Err(output)) => {
                self.last = None;
                self.run = 0;
                Some(ProbeEvent::StartupFailed(self.message(&output)))
            }
        }
    }
}

/// What a probe does, resolved against the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    Exec(Vec<String>),
    Http {
        https: bool,
        /// `None` = the pod IP.
        host: Option<String>,
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        host: Option<String>,
        port: u16,
    },
    Grpc {
        port: u16,
    },
}

impl Handler {
    /// The handler of `probe`; `Err` (kubelet's wording) when it cannot run (it is then never
    /// counted, as kubelet does with probe errors).
    pub fn new(probe: &Probe, container: &Container) -> Result<Handler, String> {
        if let Some(exec) = &probe.exec {
            return Ok(Handler::Exec(exec.command.clone().unwrap_or_default()));
        }
        if let Some(http) = &probe.http_get {
            let https = match http.scheme.as_deref() {
                None | Some("") => false,
                Some(s) if s.eq_ignore_ascii_case("http") => false,
                Some(s) if s.eq_ignore_ascii_case("https") => true,
                Some(s) => return Err(format!("unsupported scheme: {s:?}")),
            };
            let path = match http.path.as_deref() {
                None | Some("") => "/".to_owned(),
                Some(p) if p.starts_with('/') => p.to_owned(),
                Some(p) => format!("/{p}"),
            };
            return Ok(Handler::Http {
                https,
                host: http.host.clone().filter(|h| !h.is_empty()),
                port: resolve_port(&http.port, container)?,
                path,
                headers: http
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            });
        }
        if let Some(tcp) = &probe.tcp_socket {
            return Ok(Handler::Tcp {
                host: tcp.host.clone().filter(|h| !h.is_empty()),
                port: resolve_port(&tcp.port, container)?,
            });
        }
        if let Some(grpc) = &probe.grpc {
            let port = u16::try_from(grpc.port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("invalid port number: {}", grpc.port))?;
            return Ok(Handler::Grpc { port });
        }
        Err("missing probe handler".to_owned())
    }
}

/// A probe's port: a number, or the name of one of the container's ports (or a number written
/// as a string), as kubelet resolves it.
pub fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    let number = match port {
        IntOrString::Int(n) => i64::from(*n),
        IntOrString::String(name) => {
            let named = container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()));
            match named {
                Some(p) => i64::from(p.container_port),
                None => name
                    .parse::<i64>()
                    .map_err(|_| format!("port {name} not found"))?,
            }
        }
    };
    match u16::try_from(number) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("invalid port number: {number}")),
    }
}

/// `User-Agent` of kubelet's HTTP probes (the version the API server reports).
const USER_AGENT: &str = "kube-probe/1.33";
/// The most of a response's head that is read.
const MAX_HEAD: usize = 16 * 1024;

/// The request kubelet's HTTP prober sends (GET, `Connection: close`), with the probe's headers;
/// a `Host`, `User-Agent` or `Accept` among them replaces the default.
pub fn http_request(path: &str, authority: &str, headers: &[(String, String)]) -> Vec<u8> {
    let has = |name: &str| headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
    let mut req = format!("GET {path} HTTP/1.1\r\n");
    if !has("host") {
        req.push_str(&format!("Host: {authority}\r\n"));
    }
    if !has("user-agent") {
        req.push_str(&format!("User-Agent: {USER_AGENT}\r\n"));
    }
    if !has("accept") {
        req.push_str("Accept: */*\r\n");
    }
    req.push_str("Connection: close\r\n");
    for (name, value) in headers {
        // Header injection is the pod author's own problem, but keep the request well formed.
        let clean = |s: &str| s.replace(['\r', '\n'], "");
        req.push_str(&format!("{}: {}\r\n", clean(name), clean(value)));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// The status code from a response's status line (`HTTP/1.1 200 OK`).
pub fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// An I/O error as Go prints it in a dial error (`connect: connection refused`, `i/o timeout`).
fn dial_error(err: &std::io::Error) -> String {
    if err.kind() == std::io::ErrorKind::TimedOut {
        return "i/o timeout".to_owned();
    }
    let text = err.to_string();
    // Rust appends " (os error N)" and capitalises; Go lowercases the libc message.
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    let lower = match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect::<String>(),
        None => String::new(),
    };
    if err.raw_os_error().is_some() {
        format!("connect: {lower}")
    } else {
        lower
    }
}

impl ProbeTarget {
    /// Runs one attempt of `handler` within `timeout`.
    pub async fn run(&self, handler: &Handler, timeout: Duration) -> Outcome {
        match handler {
            Handler::Exec(command) => self.run_exec(command, timeout).await,
            Handler::Tcp { host, port } => {
                let ip = match self.resolve(host.as_deref()).await {
                    Ok(ip) => ip,
                    Err(e) => return Outcome::Failure(e),
                };
                let addr = SocketAddr::new(ip, *port);
                match self.dial(addr, timeout).await {
                    Ok(_) => Outcome::Success,
                    Err(e) => Outcome::Failure(format!("dial tcp {addr}: {}", dial_error(&e))),
                }
            }
            Handler::Http {
                https,
                host,
                port,
                path,
                headers,
            } => {
                self.run_http(*https, host.as_deref(), *port, path, headers, timeout)
                    .await
            }
            Handler::Grpc { .. } => Outcome::Failure("grpc probes are not supported".to_owned()),
        }
    }

    async fn run_exec(&self, command: &[String], timeout: Duration) -> Outcome {
        let quoted = format!("{:?}", command.join(" "));
        // The runtime enforces the timeout; this is only a backstop.
        let backstop = timeout + Duration::from_secs(2);
        let run = (self.exec)(command.to_vec(), timeout);
        match tokio::time::timeout(backstop, run).await {
            Ok(Ok(0)) => Outcome::Success,
            Ok(Ok(code)) => Outcome::Failure(format!("command {quoted} exited with {code}")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
                Outcome::Failure(format!("command {quoted} timed out"))
            }
            Ok(Err(e)) => Outcome::Error(format!("command {quoted}: {e}")),
            Err(_) => Outcome::Failure(format!("command {quoted} timed out")),
        }
    }

    async fn run_http(
        &self,
        https: bool,
        host: Option<&str>,
        port: u16,
        path: &str,
        headers: &[(String, String)],
        timeout: Duration,
    ) -> Outcome {
        let scheme = if https { "https" } else { "http" };
        let host_text = match host {
            Some(h) => h.to_owned(),
            None => self.pod_ip.to_string(),
        };
        let authority = match host_text.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
            _ => format!("{host_text}:{port}"),
        };
        let url = format!("{scheme}://{authority}{path}");
        let exchange = async {
            let ip = self.resolve(host).await?;
            let addr = SocketAddr::new(ip, port);
            let tcp = self
                .dial(addr, timeout)
                .await
                .map_err(|e| format!("dial tcp {addr}: {}", dial_error(&e)))?;
            let request = http_request(path, &authority, headers);
            if https {
                let tls = tls_connect(tcp, &host_text).await?;
                exchange(tls, &request).await
            } else {
                exchange(tcp, &request).await
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Outcome::Failure(format!(
                "Get {url:?}: context deadline exceeded (Client.Timeout exceeded while awaiting headers)"
            )),
            Ok(Err(e)) => Outcome::Failure(format!("Get {url:?}: {e}")),
            Ok(Ok(code)) if (200..400).contains(&code) => Outcome::Success,
            Ok(Ok(code)) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
        }
    }

    /// The address to probe: `host` when given (an IP, or a name resolved by the host), else
    /// the pod IP.
    async fn resolve(&self, host: Option<&str>) -> Result<IpAddr, String> {
        let Some(host) = host else {
            return Ok(IpAddr::V4(self.pod_ip));
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip);
        }
        match tokio::net::lookup_host((host, 0)).await {
            Ok(mut addrs) => addrs
                .next()
                .map(|a| a.ip())
                .ok_or_else(|| format!("lookup {host}: no such host")),
            Err(e) => Err(format!("lookup {host}: {e}")),
        }
    }

    /// A TCP connection to `addr`, from the target's network namespace.
    async fn dial(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        match &self.netns {
            Some(netns) => crate::netns::connect(netns, addr, timeout).await,
            None => match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(stream) => stream,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "i/o timeout",
                )),
            },
        }
    }
}

/// Sends `request`, reads the response's status line, returns its code (errors in Go's words,
/// as they follow `Get "URL": `).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Result<u16, String> {
    let io = |e: std::io::Error| dial_error(&e).replace("connect: ", "read: ");
    stream.write_all(request).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            if head.is_empty() {
                return Err("EOF".to_owned());
            }
            break;
        }
        head.extend_from_slice(&buf[..n]);
        // The status line is all that is needed.
        if head.contains(&b'\n') || head.len() >= MAX_HEAD {
            break;
        }
    }
    status_code(&head).ok_or_else(|| {
        let first = head.split(|b| *b == b'\n').next().unwrap_or_default();
        format!(
            "net/http: HTTP/1.x transport connection broken: malformed HTTP response {:?}",
            String::from_utf8_lossy(first).trim_end()
        )
    })
}

/// TLS over `tcp` accepting any server certificate (kubelet's prober uses InsecureSkipVerify).
async fn tls_connect(
    tcp: TcpStream,
    host: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let config = insecure_client_config()?;
    let name = match host.parse::<IpAddr>() {
        Ok(ip) => rustls::pki_types::ServerName::IpAddress(ip.into()),
        Err(_) => {
            rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?
        }
    };
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// The client config of HTTPS probes, built once and shared by every probe.
fn insecure_client_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
                .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// Accepts every certificate, still checking the handshake signatures made with it.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs the container's startup, liveness and readiness probes until the handle is aborted (or
/// until a liveness or startup failure is reported: the container is then killed, and its next
/// instance gets probes of its own). Delays count from this call (the container's start).
pub fn spawn(
    container: &Container,
    target: ProbeTarget,
    events: UnboundedSender<ProbeEvent>,
) -> tokio::task::JoinHandle<()> {
    let container = container.clone();
    tokio::spawn(async move {
        let started_at = tokio::time::Instant::now();
        let target = Arc::new(target);
        if let Some(probe) = &container.startup_probe {
            let end = run_probe(
                Kind::Startup,
                probe,
                &container,
                &target,
                started_at,
                &events,
            )
            .await;
            if end != Some(ProbeEvent::Started) {
                return;
            }
        } else if events.send(ProbeEvent::Started).is_err() {
            return;
        }
        let liveness = async {
            match &container.liveness_probe {
                Some(probe) => {
                    run_probe(
                        Kind::Liveness,
                        probe,
                        &container,
                        &target,
                        started_at,
                        &events,
                    )
                    .await
                }
                None => futures::future::pending().await,
            }
        };
        let readiness = async {
            match &container.readiness_probe {
                Some(probe) => {
                    run_probe(
                        Kind::Readiness,
                        probe,
                        &container,
                        &target,
                        started_at,
                        &events,
                    )
                    .await
                }
                None => {
                    if events.send(ProbeEvent::Ready(true)).is_err() {
                        return None;
                    }
                    futures::future::pending().await
                }
            }
        };
        // Whichever ends first (a liveness failure, or nobody listening) ends the probing.
        tokio::select! {
            _ = liveness => {}
            _ = readiness => {}
        }
    })
}

/// One probe's loop: the first attempt after initialDelaySeconds (from `started_at`), then one
/// every periodSeconds. Returns the event that ends it (`Started`, `StartupFailed`,
/// `LivenessFailed`), or `None` when nobody listens any more.
async fn run_probe(
    kind: Kind,
    probe: &Probe,
    container: &Container,
    target: &ProbeTarget,
    started_at: tokio::time::Instant,
    events: &UnboundedSender<ProbeEvent>,
) -> Option<ProbeEvent> {
    let settings = Settings::new(kind, probe);
    let mut counter = Counter::new(kind, &settings);
    let handler = Handler::new(probe, container);
    let first = (started_at + settings.initial_delay).max(tokio::time::Instant::now());
    let mut ticks = tokio::time::interval_at(first, settings.period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if events.is_closed() {
            return None;
        }
        let outcome = match &handler {
            Ok(handler) => target.run(handler, settings.timeout).await,
            Err(e) => Outcome::Error(e.clone()),
        };
        let result = match outcome {
            Outcome::Success => Ok(()),
            Outcome::Failure(output) => {
                tracing::debug!(container = ?container.name, "{} probe failed: {output}", kind.as_str());
                Err(output)
            }
            Outcome::Error(e) => {
                tracing::warn!(container = ?container.name, "{} probe errored: {e}", kind.as_str());
                continue;
            }
        };
        for event in counter.record(result) {
            let ends = matches!(
                event,
                ProbeEvent::Started | ProbeEvent::LivenessFailed(_) | ProbeEvent::StartupFailed(_)
            );
            if events.send(event.clone()).is_err() {
                return None;
            }
            if ends {
                return Some(event);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use k8s_openapi::api::core::v1::{
        ContainerPort, ExecAction, HTTPGetAction, HTTPHeader, TCPSocketAction,
    };
    use tokio::net::TcpListener;

    use super::*;

    fn settings(success: u32, failure: u32) -> Settings {
        Settings {
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    fn fail(s: &str) -> Result<(), String> {
        Err(s.to_owned())
    }

    #[test]
    fn settings_defaults_and_liveness_success_threshold() {
        let s = Settings::new(Kind::Readiness, &Probe::default());
        assert_eq!(s.initial_delay, Duration::ZERO);
        assert_eq!(s.period, Duration::from_secs(10));
        assert_eq!(s.timeout, Duration::from_secs(1));
        assert_eq!((s.success_threshold, s.failure_threshold), (1, 3));
        let probe = Probe {
            initial_delay_seconds: Some(5),
            period_seconds: Some(0),
            timeout_seconds: Some(7),
            success_threshold: Some(4),
            failure_threshold: Some(-1),
            ..Default::default()
        };
        let r = Settings::new(Kind::Readiness, &probe);
        assert_eq!(r.initial_delay, Duration::from_secs(5));
        assert_eq!(r.period, Duration::from_secs(1));
        assert_eq!(r.timeout, Duration::from_secs(7));
        assert_eq!((r.success_threshold, r.failure_threshold), (4, 1));
        assert_eq!(Settings::new(Kind::Liveness, &probe).success_threshold, 1);
        assert_eq!(Settings::new(Kind::Startup, &probe).success_threshold, 1);
    }

    fn failed(kind: Kind, output: &str) -> ProbeEvent {
        ProbeEvent::Failed(format!("{} probe failed: {output}", kind.as_str()))
    }

    #[test]
    fn readiness_reports_changes_after_thresholds() {
        let mut c = Counter::new(Kind::Readiness, &settings(2, 3));
        let f = || vec![failed(Kind::Readiness, "x")];
        let ready = |r| vec![ProbeEvent::Ready(r)];
        // Starts not ready: failures report only themselves.
        assert_eq!(c.record(fail("x")), f());
        assert_eq!(c.record(Ok(())), vec![]);
        assert_eq!(c.record(Ok(())), ready(true));
        assert_eq!(c.record(Ok(())), vec![]);
        assert_eq!(c.record(fail("x")), f());
        assert_eq!(c.record(fail("x")), f());
        // A success in between starts the failure count over.
        assert_eq!(c.record(Ok(())), vec![]);
        assert_eq!(c.record(fail("x")), f());
        assert_eq!(c.record(fail("x")), f());
        assert_eq!(
            c.record(fail("x")),
            vec![failed(Kind::Readiness, "x"), ProbeEvent::Ready(false)]
        );
        assert_eq!(c.record(fail("x")), f());
        assert_eq!(c.record(Ok(())), vec![]);
        assert_eq!(c.record(Ok(())), ready(true));
    }

    #[test]
    fn liveness_fails_after_failure_threshold_in_a_row() {
        let mut c = Counter::new(Kind::Liveness, &settings(1, 3));
        assert_eq!(c.record(Ok(())), vec![]);
        assert_eq!(c.record(fail("a")), vec![failed(Kind::Liveness, "a")]);
        assert_eq!(c.record(fail("b")), vec![failed(Kind::Liveness, "b")]);
        assert_eq!(c.record(Ok(())), vec![]);
        assert_eq!(c.record(fail("c")), vec![failed(Kind::Liveness, "c")]);
        assert_eq!(c.record(fail("d")), vec![failed(Kind::Liveness, "d")]);
        let output = "HTTP probe failed with statuscode: 500";
        assert_eq!(
            c.record(fail(output)),
            vec![
                failed(Kind::Liveness, output),
                ProbeEvent::LivenessFailed(
                    "Liveness probe failed: HTTP probe failed with statuscode: 500".into()
                )
            ]
        );
        // Counting starts over.
        assert_eq!(c.record(fail("e")), vec![failed(Kind::Liveness, "e")]);
    }

    #[test]
    fn startup_succeeds_once_or_fails_after_threshold() {
        let mut c = Counter::new(Kind::Startup, &settings(1, 2));
        assert_eq!(c.record(fail("x")), vec![failed(Kind::Startup, "x")]);
        assert_eq!(c.record(Ok(())), vec![ProbeEvent::Started]);
        let mut c = Counter::new(Kind::Startup, &settings(1, 2));
        assert_eq!(c.record(fail("x")), vec![failed(Kind::Startup, "x")]);
        let output = "dial tcp 10.244.0.5:8080: connect: connection refused";
        assert_eq!(
            c.record(fail(output)),
            vec![
                ProbeEvent::Failed(
                    "Startup probe failed: dial tcp 10.244.0.5:8080: connect: connection refused"
                        .into()
                ),
                ProbeEvent::StartupFailed(
                    "Startup probe failed: dial tcp 10.244.0.5:8080: connect: connection refused"
                        .into()
                )
            ]
        );
    }

    #[test]
    fn every_failed_attempt_is_reported_then_the_threshold() {
        // Kubelet records `Unhealthy` for each failed attempt of every kind; for liveness and
        // startup the kill follows the failureThreshold-th one in a row.
        for kind in [Kind::Readiness, Kind::Liveness, Kind::Startup] {
            for threshold in 1..=4u32 {
                let mut c = Counter::new(kind, &settings(1, threshold));
                if kind == Kind::Readiness {
                    // From ready, so that not ready is a change.
                    assert_eq!(c.record(Ok(())), vec![ProbeEvent::Ready(true)]);
                }
                let mut stream = Vec::new();
                for attempt in 1..=threshold {
                    stream.extend(c.record(fail(&format!("attempt {attempt}"))));
                }
                let failures: Vec<_> = stream
                    .iter()
                    .filter_map(|e| match e {
                        ProbeEvent::Failed(m) => Some(m.clone()),
                        _ => None,
                    })
                    .collect();
                let want: Vec<_> = (1..=threshold)
                    .map(|a| format!("{} probe failed: attempt {a}", kind.as_str()))
                    .collect();
                assert_eq!(failures, want, "{kind:?}, threshold {threshold}");
                let last = format!("{} probe failed: attempt {threshold}", kind.as_str());
                let end = match kind {
                    Kind::Readiness => ProbeEvent::Ready(false),
                    Kind::Liveness => ProbeEvent::LivenessFailed(last),
                    Kind::Startup => ProbeEvent::StartupFailed(last),
                };
                // Exactly one threshold event, after the last failure, and none before it.
                assert_eq!(stream.len(), threshold as usize + 1, "{kind:?}: {stream:?}");
                assert_eq!(stream.last(), Some(&end), "{kind:?}: {stream:?}");
            }
        }
    }

    fn container_with_ports() -> Container {
        Container {
            name: "c".into(),
            ports: Some(vec![ContainerPort {
                name: Some("http".into()),
                container_port: 8080,
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn ports_resolve_as_kubelet_does() {
        let c = container_with_ports();
        assert_eq!(resolve_port(&IntOrString::Int(81), &c), Ok(81));
        assert_eq!(
            resolve_port(&IntOrString::String("http".into()), &c),
            Ok(8080)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("9090".into()), &c),
            Ok(9090)
        );
        assert_eq!(
            resolve_port(&IntOrString::String("grpc".into()), &c),
            Err("port grpc not found".into())
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(70000), &c),
            Err("invalid port number: 70000".into())
        );
        assert_eq!(
            resolve_port(&IntOrString::Int(0), &c),
            Err("invalid port number: 0".into())
        );
    }

    #[test]
    fn handlers_from_probes() {
        let c = container_with_ports();
        let probe = Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("healthz?full=1".into()),
                scheme: Some("HTTPS".into()),
                http_headers: Some(vec![HTTPHeader {
                    name: "X-A".into(),
                    value: "b".into(),
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Handler::new(&probe, &c),
            Ok(Handler::Http {
                https: true,
                host: None,
                port: 8080,
                path: "/healthz?full=1".into(),
                headers: vec![("X-A".into(), "b".into())],
            })
        );
        let probe = Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(5432),
                host: Some(String::new()),
            }),
            ..Default::default()
        };
        assert_eq!(
            Handler::new(&probe, &c),
            Ok(Handler::Tcp {
                host: None,
                port: 5432
            })
        );
        assert_eq!(
            Handler::new(&Probe::default(), &c),
            Err("missing probe handler".into())
        );
    }

    #[test]
    fn http_request_and_status_line() {
        let req = http_request("/h", "10.0.0.1:80", &[("X-A".into(), "b".into())]);
        assert_eq!(
            String::from_utf8(req).unwrap(),
            "GET /h HTTP/1.1\r\nHost: 10.0.0.1:80\r\nUser-Agent: kube-probe/1.33\r\n\
             Accept: */*\r\nConnection: close\r\nX-A: b\r\n\r\n"
        );
        let req = http_request("/", "h:1", &[("host".into(), "example.com".into())]);
        let text = String::from_utf8(req).unwrap();
        assert!(!text.contains("Host: h:1"), "{text}");
        assert!(text.contains("host: example.com\r\n"), "{text}");
        assert_eq!(status_code(b"HTTP/1.1 204 No Content\r\n"), Some(204));
        assert_eq!(status_code(b"HTTP/1.0 500\r\n"), Some(500));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 20 x\r\n"), None);
    }

    /// An exec that answers from a script (then 0), recording the commands.
    /// The commands an exec was called with.
    type Calls = Arc<Mutex<Vec<Vec<String>>>>;

    fn scripted_exec(codes: Vec<i32>) -> (Arc<ExecFn>, Calls) {
        let codes = Arc::new(Mutex::new(VecDeque::from(codes)));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = calls.clone();
        let exec: Arc<ExecFn> = Arc::new(move |cmd: Vec<String>, _timeout: Duration| {
            seen.lock().unwrap().push(cmd.clone());
            let code = codes.lock().unwrap().pop_front().unwrap_or(0);
            Box::pin(async move {
                match code {
                    -1 => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "timed out",
                    )),
                    -2 => Err(std::io::Error::other("container not running")),
                    code => Ok(code),
                }
            }) as BoxFuture<'static, std::io::Result<i32>>
        });
        (exec, calls)
    }

    fn local_target(exec: Arc<ExecFn>) -> ProbeTarget {
        ProbeTarget {
            pod_ip: Ipv4Addr::LOCALHOST,
            netns: None,
            exec,
        }
    }

    /// An HTTP server on loopback answering the given statuses in turn (then the last one),
    /// recording the requests' heads.
    async fn http_server(statuses: Vec<u16>) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            let mut statuses = VecDeque::from(statuses);
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let status = if statuses.len() > 1 {
                    statuses.pop_front().unwrap()
                } else {
                    statuses[0]
                };
                let head = read_head(&mut conn).await;
                seen.lock().unwrap().push(head);
                let body = "ok";
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(response.as_bytes()).await.unwrap();
            }
        });
        (port, requests)
    }

    async fn read_head<S: AsyncRead + Unpin>(conn: &mut S) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    fn http_handler(port: u16) -> Handler {
        Handler::Http {
            https: false,
            host: None,
            port,
            path: "/healthz".into(),
            headers: vec![("X-Probe".into(), "yes".into())],
        }
    }

    /// A port on loopback with nothing listening.
    async fn closed_port() -> u16 {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        listener.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn http_handler_success_then_status_failure() {
        let (port, requests) = http_server(vec![200, 302, 500]).await;
        let target = local_target(scripted_exec(vec![]).0);
        let h = http_handler(port);
        let t = Duration::from_secs(2);
        assert_eq!(target.run(&h, t).await, Outcome::Success);
        assert_eq!(target.run(&h, t).await, Outcome::Success);
        assert_eq!(
            target.run(&h, t).await,
            Outcome::Failure("HTTP probe failed with statuscode: 500".into())
        );
        let first = requests.lock().unwrap()[0].clone();
        assert!(first.starts_with("GET /healthz HTTP/1.1\r\n"), "{first}");
        assert!(
            first.contains(&format!("Host: 127.0.0.1:{port}\r\n")),
            "{first}"
        );
        assert!(first.contains("User-Agent: kube-probe/1.33\r\n"), "{first}");
        assert!(first.contains("X-Probe: yes\r\n"), "{first}");
    }

    #[tokio::test]
    async fn http_and_tcp_handlers_on_a_closed_port() {
        let port = closed_port().await;
        let target = local_target(scripted_exec(vec![]).0);
        let t = Duration::from_secs(2);
        assert_eq!(
            target.run(&http_handler(port), t).await,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{port}/healthz\": dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
        assert_eq!(
            target.run(&Handler::Tcp { host: None, port }, t).await,
            Outcome::Failure(format!(
                "dial tcp 127.0.0.1:{port}: connect: connection refused"
            ))
        );
    }

    #[tokio::test]
    async fn tcp_handler_connects() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = local_target(scripted_exec(vec![]).0);
        let h = Handler::Tcp {
            host: Some("127.0.0.1".into()),
            port,
        };
        assert_eq!(
            target.run(&h, Duration::from_secs(2)).await,
            Outcome::Success
        );
    }

    #[tokio::test]
    async fn http_handler_times_out_on_a_silent_server() {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and never answers.
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                conns.push(listener.accept().await.unwrap());
            }
        });
        let target = local_target(scripted_exec(vec![]).0);
        let outcome = target
            .run(&http_handler(port), Duration::from_millis(300))
            .await;
        assert_eq!(
            outcome,
            Outcome::Failure(format!(
                "Get \"http://127.0.0.1:{port}/healthz\": context deadline exceeded \
                 (Client.Timeout exceeded while awaiting headers)"
            ))
        );
        held.abort();
    }

    #[tokio::test]
    async fn https_handler_accepts_any_certificate() {
        let certified = rcgen::generate_simple_self_signed(vec!["example.invalid".into()]).unwrap();
        let config = crate::server::tls_config(
            certified.cert.der().to_vec(),
            certified.signing_key.serialize_der(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let head = read_head(&mut tls).await;
            tls.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            tls.shutdown().await.unwrap();
            head
        });
        let target = local_target(scripted_exec(vec![]).0);
        let h = Handler::Http {
            https: true,
            host: None,
            port,
            path: "/ready".into(),
            headers: vec![],
        };
        assert_eq!(
            target.run(&h, Duration::from_secs(5)).await,
            Outcome::Failure("HTTP probe failed with statuscode: 503".into())
        );
        let head = server.await.unwrap();
        assert!(head.starts_with("GET /ready HTTP/1.1\r\n"), "{head}");
    }

    #[tokio::test]
    async fn exec_handler_exit_codes_timeouts_and_errors() {
        let (exec, calls) = scripted_exec(vec![0, 3, -1, -2]);
        let target = local_target(exec);
        let h = Handler::Exec(vec!["cat".into(), "/tmp/healthy".into()]);
        let t = Duration::from_secs(1);
        assert_eq!(target.run(&h, t).await, Outcome::Success);
        assert_eq!(
            target.run(&h, t).await,
            Outcome::Failure("command \"cat /tmp/healthy\" exited with 3".into())
        );
        assert_eq!(
            target.run(&h, t).await,
            Outcome::Failure("command \"cat /tmp/healthy\" timed out".into())
        );
        assert!(matches!(target.run(&h, t).await, Outcome::Error(_)));
        assert_eq!(calls.lock().unwrap()[0], vec!["cat", "/tmp/healthy"]);
    }

    fn exec_probe(period: i32, failure: i32) -> Option<Probe> {
        Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec!["check".into()]),
            }),
            period_seconds: Some(period),
            failure_threshold: Some(failure),
            ..Default::default()
        })
    }

    async fn next_event(rx: &mut tokio::sync::mpsc::UnboundedReceiver<ProbeEvent>) -> ProbeEvent {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event in time")
            .expect("the probes are still running")
    }

    #[tokio::test]
    async fn without_probes_the_container_is_started_and_ready() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handle = spawn(
            &Container::default(),
            local_target(scripted_exec(vec![]).0),
            tx,
        );
        assert_eq!(next_event(&mut rx).await, ProbeEvent::Started);
        assert_eq!(next_event(&mut rx).await, ProbeEvent::Ready(true));
        handle.abort();
    }

    #[tokio::test]
    async fn startup_failure_ends_the_probes() {
        let (exec, calls) = scripted_exec(vec![1, 1]);
        let container = Container {
            startup_probe: exec_probe(1, 2),
            readiness_probe: exec_probe(1, 1),
            ..Default::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handle = spawn(&container, local_target(exec), tx);
        let message = "Startup probe failed: command \"check\" exited with 1";
        assert_eq!(
            next_event(&mut rx).await,
            ProbeEvent::Failed(message.into())
        );
        assert_eq!(
            next_event(&mut rx).await,
            ProbeEvent::Failed(message.into())
        );
        assert_eq!(
            next_event(&mut rx).await,
            ProbeEvent::StartupFailed(message.into())
        );
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
        assert!(rx.recv().await.is_none());
        // Readiness never ran.
        assert_eq!(calls.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn readiness_and_liveness_start_after_startup() {
        // Startup: fail, then succeed. Readiness (exec): 0 -> ready, 1 -> not ready, 0 -> ready.
        let (startup_exec, _) = scripted_exec(vec![1, 0]);
        let (port, _) = http_server(vec![200, 500]).await;
        let container = Container {
            startup_probe: exec_probe(1, 3),
            readiness_probe: Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(closed_port().await.into()),
                    host: None,
                }),
                period_seconds: Some(1),
                failure_threshold: Some(1),
                ..Default::default()
            }),
            liveness_probe: Some(Probe {
                http_get: Some(HTTPGetAction {
                    port: IntOrString::Int(port.into()),
                    path: Some("/healthz".into()),
                    ..Default::default()
                }),
                period_seconds: Some(1),
                failure_threshold: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let began = std::time::Instant::now();
        let handle = spawn(&container, local_target(startup_exec), tx);
        assert_eq!(
            next_event(&mut rx).await,
            ProbeEvent::Failed("Startup probe failed: command \"check\" exited with 1".into())
        );
        assert_eq!(next_event(&mut rx).await, ProbeEvent::Started);
        // The first attempt failed, the second (a period later) succeeded.
        assert!(began.elapsed() >= Duration::from_millis(900));
        // Readiness probes a closed port: starts not ready and stays so (no change, a failure
        // event each period); liveness: 200, then 500 twice -> failed, which ends the probing.
        let mut events = Vec::new();
        loop {
            let event = next_event(&mut rx).await;
            events.push(event.clone());
            if matches!(event, ProbeEvent::LivenessFailed(_)) {
                break;
            }
        }
        assert!(began.elapsed() >= Duration::from_millis(2900));
        let liveness = "Liveness probe failed: HTTP probe failed with statuscode: 500";
        let (readiness, rest): (Vec<_>, Vec<_>) = events.into_iter().partition(|e| {
            matches!(e, ProbeEvent::Failed(m) if m.starts_with("Readiness probe failed: dial tcp"))
        });
        assert!(!readiness.is_empty(), "a readiness failure each period");
        assert_eq!(
            rest,
            vec![
                ProbeEvent::Failed(liveness.into()),
                ProbeEvent::Failed(liveness.into()),
                ProbeEvent::LivenessFailed(liveness.into()),
            ]
        );
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn readiness_changes_are_sent_once_each() {
        let (exec, _) = scripted_exec(vec![0, 0, 1, 0]);
        let container = Container {
            readiness_probe: exec_probe(1, 1),
            ..Default::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let handle = spawn(&container, local_target(exec), tx);
        assert_eq!(next_event(&mut rx).await, ProbeEvent::Started);
        assert_eq!(next_event(&mut rx).await, ProbeEvent::Ready(true));
        assert_eq!(
            next_event(&mut rx).await,
            ProbeEvent::Failed("Readiness probe failed: command \"check\" exited with 1".into())
        );
        assert_eq!(next_event(&mut rx).await, ProbeEvent::Ready(false));
        assert_eq!(next_event(&mut rx).await, ProbeEvent::Ready(true));
        // Then it stays ready: nothing more within two periods.
        assert!(
            tokio::time::timeout(Duration::from_millis(2200), rx.recv())
                .await
                .is_err()
        );
        handle.abort();
    }
}
