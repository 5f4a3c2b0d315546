//! The seam between the agent's streaming server (what `kubectl logs/exec/attach/port-forward`
//! reach through the API server) and the runtime that runs the pods: [`PodStreams`]. The server
//! speaks the wire protocols (chunked logs, WebSocket channels, SPDY); the runtime only hands out
//! byte streams.

use std::pin::Pin;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::io::{AsyncRead, AsyncWrite};

/// Why a stream could not be opened. Maps to the HTTP status the server answers.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// 404: no such pod or container on this host.
    #[error("{0}")]
    NotFound(String),
    /// 400: the request cannot be served (no command, container not running, bad options).
    #[error("{0}")]
    BadRequest(String),
    /// 500: the runtime failed.
    #[error("{0}")]
    Internal(String),
}

/// `GET .../pods/NAME/log` options, as the API server passes them on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    /// The previous (terminated) instance of the container.
    pub previous: bool,
    /// Prefix each line with its RFC 3339 nano timestamp and a space.
    pub timestamps: bool,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    /// RFC 3339.
    pub since_time: Option<String>,
    pub limit_bytes: Option<i64>,
}

/// What `exec`/`attach` ask for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The command (exec only; empty for attach).
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A terminal size (`{"Width":..,"Height":..}` on the resize channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TermSize {
    pub width: u16,
    pub height: u16,
}

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;

/// The streams of a running exec/attach session. With a TTY, stderr is None (merged into stdout).
/// Dropping `stdin` closes the process's standard input.
pub struct ExecSession {
    pub stdin: Option<Writer>,
    pub stdout: Option<Reader>,
    pub stderr: Option<Reader>,
    /// Terminal resizes (TTY sessions only).
    pub resize: Option<tokio::sync::mpsc::Sender<TermSize>>,
    /// Resolves with the exit code when the process ends.
    pub exit: BoxFuture<'static, Result<i32, StreamError>>,
}

impl std::fmt::Debug for ExecSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecSession")
            .field("stdin", &self.stdin.is_some())
            .field("stdout", &self.stdout.is_some())
            .field("stderr", &self.stderr.is_some())
            .field("tty", &self.resize.is_some())
            .finish()
    }
}

/// Streams of the pods this host runs. Pods are named by namespace and name; `container` None
/// means the pod's only (or first) container, as kubectl's default.
#[async_trait::async_trait]
pub trait PodStreams: Send + Sync + 'static {
    /// The container's log: CRI log lines turned into plain text (with timestamps when asked),
    /// ending at the current end unless `follow`.
    async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        options: LogOptions,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, StreamError>;

    /// Runs a command in a running container.
    async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError>;

    /// Attaches to the container's main process: its output from now on, and its stdin when
    /// the container has `stdin: true`.
    async fn attach(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError>;

    /// A TCP connection to `port` of the pod (on the pod's IP inside the pod network).
    async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, StreamError>;
}
