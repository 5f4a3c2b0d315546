//! The container shim (the containerd-shim / conmon idea, inside our one binary): a small
//! process per container, `nodeless sandbox shim --dir CONTAINER_DIR`, that the node agent starts
//! and that outlives it. The shim leaves the agent's session (`setsid`), writes `shim.pid`, runs
//! the runtime command (`runsc run`, `crun run`, runsc create/start/wait for pod containers) as
//! its own child, pumps its stdout/stderr into the CRI log file, forwards SIGTERM/SIGINT to the
//! container, and when the container exits cleans up (runtime state, rootfs mount, cgroups) and
//! records the end atomically in `exit.json` (and the final `state.json`). A restarted agent
//! finds running containers again with [`crate::container::adopt`].
//!
//! Files in the container directory: `shim.json` (what to run, written by the agent),
//! `shim.pid`, `shim.log` (the shim's own diagnostics), `exit.json`; for a container whose pod
//! spec has `stdin` or `tty` ([`StdinSpec`], from `stdio.json`), `attach.sock`: the shim keeps
//! the container's stdin (a pipe, or for `tty` the master side of the container's terminal) open
//! for the container's whole life and copies what attach sessions send there into it (see
//! [`frame`]); a restarted agent attaches again the same way. The terminal of a `tty` container
//! is allocated by the runtime (`--console-socket`, see [`ConsoleSocket`]) and is the
//! container's controlling terminal, as under docker and containerd: a ^C typed into it
//! interrupts the foreground process group, and resizes reach it as SIGWINCH.
//!
//! The shim reports to the agent over its stdout, one line: `ok` once the container runs, or
//! `error: MESSAGE` when the runtime could not start it; after that line it never writes there.
//! It depends on nothing above this crate.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::container::{self, State, Status};
use crate::logs::{self, Stream};
use crate::runtime::{ConsoleSocket, RuntimeConfig, Stdio};

/// What the agent writes for the shim to run (`shim.json`).
pub const SPEC_FILE: &str = "shim.json";
/// The shim's pid, written before it starts the runtime.
pub const PID_FILE: &str = "shim.pid";
/// How the container ended, written by the shim when it has exited.
pub const EXIT_FILE: &str = "exit.json";
/// The shim's own log (its stderr).
pub const LOG_FILE: &str = "shim.log";
/// The unix socket on which the shim of a container with a kept stdin takes attach sessions
/// (see [`StdinSpec`] and [`frame`]).
pub const ATTACH_SOCKET: &str = "attach.sock";
/// How the container's standard input is wired ([`StdinSpec`]), written by whoever starts the
/// container (the agent, from the pod spec) before [`crate::container::start`] reads it.
pub const STDIO_FILE: &str = "stdio.json";

/// The size (rows, columns) a `tty` container's terminal starts with, when its starter knows it
/// (`sandbox run -t` on a terminal), written before [`crate::container::start`] reads it: the
/// runtime sizes the terminal before the container runs (`process.consoleSize`), and the shim
/// sets it again as soon as it has the terminal (runsc ignores `consoleSize`).
pub const TERMINAL_SIZE_FILE: &str = "terminal-size.json";

/// Writes the size (rows, columns) the terminal of the container in `dir` starts with (see
/// [`TERMINAL_SIZE_FILE`]), creating `dir`.
pub fn write_terminal_size(dir: &Path, rows: u16, cols: u16) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    write_atomic(
        dir,
        TERMINAL_SIZE_FILE,
        &serde_json::to_vec(&[rows, cols]).unwrap_or_default(),
    )
}

/// The size (rows, columns) the terminal of the container in `dir` starts with, if one was
/// written.
pub fn read_terminal_size(dir: &Path) -> Option<(u16, u16)> {
    let b = std::fs::read(dir.join(TERMINAL_SIZE_FILE)).ok()?;
    let [rows, cols]: [u16; 2] = serde_json::from_slice(&b).ok()?;
    Some((rows, cols))
}

/// The pod spec's `stdin`, `stdinOnce` and `tty` of a container. With `stdin` the container
/// gets a standard input that stays open for its whole life, kept by its shim, which copies
/// what attach sessions send on [`ATTACH_SOCKET`] into it; with `stdinOnce` it is closed when
/// the first session ends. With `tty` the container's streams are its controlling terminal,
/// which the runtime allocates and sends the shim (its output is logged as stdout; sessions
/// may resize it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StdinSpec {
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default)]
    pub tty: bool,
}

impl StdinSpec {
    /// Whether the shim keeps something for attach sessions (a stdin or a terminal).
    pub fn kept(&self) -> bool {
        self.stdin || self.tty
    }

    /// Reads `dir/stdio.json` (the default, nothing kept, when absent or unreadable).
    pub fn read(dir: &Path) -> Self {
        std::fs::read(dir.join(STDIO_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes it as `dir/stdio.json` (creating `dir`).
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        write_atomic(
            dir,
            STDIO_FILE,
            &serde_json::to_vec(self).unwrap_or_default(),
        )
    }
}

/// Frame kinds an attach session sends to the shim: `[kind][u32 big-endian length][payload]`.
pub const FRAME_DATA: u8 = 0;
/// Payload: width and height, each a big-endian u16.
pub const FRAME_RESIZE: u8 = 1;
/// The session's stdin ended (no payload). With `stdinOnce` the container's stdin closes.
pub const FRAME_CLOSE: u8 = 2;

/// One frame of the attach protocol. Pure.
pub fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(kind);
    f.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    f.extend_from_slice(payload);
    f
}

/// Splits the complete frames off the front of `buf`. Pure.
pub fn take_frames(buf: &mut Vec<u8>) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        if buf.len() < 5 {
            return out;
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            return out;
        }
        let kind = buf[0];
        let payload = buf[5..5 + len].to_vec();
        buf.drain(..5 + len);
        out.push((kind, payload));
    }
}

/// Runs `f` with a path naming `dir/attach.sock` short enough for a socket address (through
/// `/proc/self/fd` when the directory's own path is too long).
fn with_socket_path<T>(
    dir: &Path,
    f: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    let direct = dir.join(ATTACH_SOCKET);
    if direct.as_os_str().len() < 100 {
        return f(&direct);
    }
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    use std::os::fd::AsRawFd as _;
    let r = f(&PathBuf::from(format!(
        "/proc/self/fd/{}/{ATTACH_SOCKET}",
        fd.as_raw_fd()
    )));
    drop(fd);
    r
}

/// Opens an attach session to the shim of the container in `dir` (which must keep a stdin or
/// terminal): send it [`frame`]s; closing the connection ends the session.
pub async fn connect(dir: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let std_stream = with_socket_path(dir, |p| std::os::unix::net::UnixStream::connect(p))?;
    std_stream.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std_stream)
}

static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Sets, once per process, the program that runs shims (the `nodeless` binary, which has the
/// hidden `sandbox shim` command). While unset, containers run as children of this process.
/// Returns false when it was already set (the first value stays).
pub fn set_binary(path: PathBuf) -> bool {
    BINARY.set(path).is_ok()
}

/// The shim program, if one was set.
pub fn binary() -> Option<&'static Path> {
    BINARY.get().map(PathBuf::as_path)
}

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a shim spec")]
    Spec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("starting container {id}: {message}")]
    Start { id: String, message: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ShimError + 'a {
    move |source| ShimError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What one shim runs: written by the agent as `shim.json` in the container directory (which
/// is also the OCI bundle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub id: String,
    pub runtime: RuntimeConfig,
    /// Names the log file (`logs/<restart_count>.log`).
    pub restart_count: u32,
    /// A memory cgroup of ours that holds the container (for the OOM verdict), removed at exit.
    pub memory_cgroup: Option<PathBuf>,
    /// The container's cgroup path in every hierarchy, removed (when empty) at exit.
    pub cgroups_path: Option<String>,
    /// The container's record, written as `state.json` with its status as it changes.
    pub state: State,
    /// Its stdin and terminal (nothing kept when absent).
    #[serde(default)]
    pub stdio: StdinSpec,
    /// The watchdog of its memory and CPU limits, for a container in a pod's shared gVisor
    /// sandbox (see [`crate::limitwatch`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_watch: Option<crate::limitwatch::Spec>,
}

/// How a container ended, as its shim recorded it (`exit.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub exit_code: i32,
    pub oom_killed: bool,
    /// Kubernetes' reason: Completed, Error, OOMKilled (Unknown when the shim was lost).
    pub reason: String,
    pub started_at: String,
    pub finished_at: String,
    pub restart_count: u32,
}

impl ExitRecord {
    /// The terminated status this record describes.
    pub fn status(&self) -> Status {
        Status::Terminated {
            exit_code: self.exit_code,
            reason: self.reason.clone(),
            started_at: self.started_at.clone(),
            finished_at: self.finished_at.clone(),
        }
    }
}

/// Writes `bytes` to `dir/name` atomically (temporary file, then rename).
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Reads the `exit.json` of the container directory `dir`, if the container has ended.
pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    let b = std::fs::read(dir.join(EXIT_FILE)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Reads the shim pid recorded in the container directory `dir`.
pub fn read_pid(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The container directory of a shim's argument vector (`/proc/PID/cmdline`, NUL separated),
/// `None` when it is no shim. Pure.
pub fn shim_dir(cmdline: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt as _;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    if !args.iter().any(|a| *a == b"shim") {
        return None;
    }
    args.windows(2)
        .find(|w| w[0] == b"--dir")
        .map(|w| PathBuf::from(std::ffi::OsStr::from_bytes(w[1])))
}

/// Whether `pid` is a live (not zombie) shim of the container directory `dir`.
pub fn is_alive(pid: u32, dir: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Some(arg) = std::fs::read(proc.join("cmdline"))
        .ok()
        .and_then(|c| shim_dir(&c))
    else {
        return false;
    };
    // However the data dir was spelled by whoever started it (the shim gets an absolute path).
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    if canon(&arg) != canon(dir) {
        return false;
    }
    // A zombie still has its /proc entry; its state (after the `(comm)` field) is Z.
    let stat = std::fs::read_to_string(proc.join("stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z") | Some("X") | None)
}

/// The error text with its causes.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Tells the agent (our stdout) how the start went. A gone agent is no error.
fn report(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The shim itself: runs the container described by `dir/shim.json` to its end. Meant to be
/// the whole life of a `nodeless sandbox shim --dir DIR` process.
pub async fn main(dir: &Path) -> Result<(), ShimError> {
    // A session of our own: the agent's death, its process group's signals and its terminal
    // never reach us. Fails only if we already lead a group, which then is our own.
    if let Err(e) = rustix::process::setsid() {
        debug!(error = %e, "setsid");
    }
    let spec_path = dir.join(SPEC_FILE);
    let spec: Spec = match std::fs::read(&spec_path)
        .map_err(io("read", &spec_path))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|source| ShimError::Spec {
                path: spec_path.clone(),
                source,
            })
        }) {
        Ok(s) => s,
        Err(e) => {
            report(&format!("error: {}", chain(&e)));
            return Err(e);
        }
    };
    let pid = std::process::id().to_string();
    write_atomic(dir, PID_FILE, pid.as_bytes()).map_err(io("write", &dir.join(PID_FILE)))?;
    let id = spec.id.clone();
    let runtime = spec.runtime.clone().open();
    let log = container::log_path(dir, spec.restart_count);
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    // A kept stdin or terminal, and the socket attach sessions reach it by, exist before the
    // container starts: an attach may come as soon as the agent hears `ok`.
    let (stdio, kept) = match keep_stdio(dir, spec.stdio) {
        Ok(k) => k,
        Err(e) => {
            let message = format!("preparing the container's stdin: {e}");
            report(&format!("error: {message}"));
            return Err(ShimError::Start { id, message });
        }
    };
    let console = kept.as_ref().and_then(|k| k.console.as_ref());
    let spawned = match console {
        Some(console) => runtime.spawn_on_terminal(&id, dir, console, stdio).await,
        None => runtime.spawn(&id, dir, stdio).await,
    };
    let mut process = match spawned {
        Ok(p) => p,
        Err(e) => {
            let message = chain(&e);
            report(&format!("error: {message}"));
            return Err(ShimError::Start { id, message });
        }
    };
    // The container's terminal, which the runtime allocated and sent us.
    let mut kept = kept;
    if let Some(k) = kept.as_mut()
        && let Some(console) = k.console.take()
    {
        let master = match receive_terminal(&console, &mut process).await {
            Ok(m) => m,
            Err(message) => {
                let message = format!(
                    "{message}; the runtime's own output is in {}",
                    log.display()
                );
                if !process.has_ended() {
                    let _ = runtime.kill(&id, 9).await;
                }
                // What the runtime said goes to the log, for whoever looks.
                for (pipe, stream) in runtime_output(&mut process) {
                    let pump = logs::pump(pipe, stream, &log, None);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), pump).await;
                }
                let _ = container::release(
                    &runtime,
                    &id,
                    dir,
                    spec.memory_cgroup.as_deref(),
                    spec.cgroups_path.as_deref(),
                )
                .await;
                report(&format!("error: {message}"));
                return Err(ShimError::Start { id, message });
            }
        };
        if let Some((rows, cols)) = read_terminal_size(dir) {
            let ws = rustix::termios::Winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            if let Err(e) = rustix::termios::tcsetwinsize(&master, ws) {
                debug!(%id, error = %e, "sizing the container's terminal");
            }
        }
        let attach_input = |m: &std::os::fd::OwnedFd| {
            PtyIo::new(m).map(|w| Box::new(w) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>)
        };
        match (
            PtyIo::new(&master),
            spec.stdio.stdin.then(|| attach_input(&master)).transpose(),
        ) {
            (Ok(out), Ok(input)) => {
                k.output = Some(out);
                k.input = input;
                k.master = Some(master);
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(%id, error = %e, "registering the container's terminal")
            }
        }
    }
    let started_at = container::now();
    let mut state = spec.state.clone();
    state.status = Status::Running {
        started_at: started_at.clone(),
    };
    if let Err(e) = container::write_state(dir, &state) {
        warn!(%id, error = %chain(&e), "writing state.json");
    }
    let mut pumps = Vec::new();
    for (pipe, stream) in runtime_output(&mut process) {
        let l = log.clone();
        pumps.push(tokio::spawn(async move {
            logs::pump(pipe, stream, &l, None).await
        }));
    }
    let attach = match kept {
        Some(k) => {
            if let Some(out) = k.output {
                pumps.push(tokio::spawn(pump_terminal(out, log.clone())));
            }
            Some(tokio::spawn(serve_attach(
                k.listener,
                k.input,
                k.master,
                spec.stdio.stdin_once,
                id.clone(),
            )))
        }
        None => None,
    };
    report("ok");
    debug!(%id, "container running under its shim");
    let watch = spec
        .limit_watch
        .clone()
        .and_then(|w| crate::limitwatch::Watch::start(runtime.as_ref(), &id, w));

    // SIGTERM/SIGINT to the shim mean "stop the container"; SIGHUP is ignored.
    let forward = {
        let (runtime, id) = (runtime.clone(), id.clone());
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => continue,
                }
                if let Err(e) = runtime.kill(&id, 15).await {
                    warn!(%id, error = %chain(&e), "forwarding SIGTERM");
                }
            }
        })
    };

    let waited = process.wait().await;
    // A container joined to a gVisor pod sandbox that the kernel killed for the pod's memory
    // has no exit of its own: it ended OOMKilled (ADR 010).
    let pod_oom =
        container::ended_with_oom_killed_sandbox(&runtime, &id, dir, waited.as_ref().ok().copied())
            .await;
    let code = match waited {
        _ if pod_oom => 137,
        Ok(c) => c,
        Err(e) => {
            warn!(%id, error = %e, "waiting for the container; recording it as lost");
            255
        }
    };
    if let Some(a) = attach {
        a.abort();
    }
    let _ = std::fs::remove_file(dir.join(ATTACH_SOCKET));
    container::drain_pumps(&id, pumps).await;
    let oom_killed = pod_oom
        || spec
            .memory_cgroup
            .as_deref()
            .is_some_and(|cg| container::oom_killed(cg, code))
        || watch.as_ref().is_some_and(crate::limitwatch::Watch::fired);
    drop(watch);
    if let Err(e) = container::release(
        &runtime,
        &id,
        dir,
        spec.memory_cgroup.as_deref(),
        spec.cgroups_path.as_deref(),
    )
    .await
    {
        warn!(%id, error = %chain(&e), "releasing the container");
    }
    forward.abort();
    let record = ExitRecord {
        exit_code: code,
        oom_killed,
        reason: container::exit_reason(code, oom_killed).into(),
        started_at,
        finished_at: container::now(),
        restart_count: spec.restart_count,
    };
    state.status = record.status();
    if let Err(e) = container::write_state(dir, &state) {
        warn!(%id, error = %chain(&e), "writing state.json");
    }
    write_atomic(
        dir,
        EXIT_FILE,
        &serde_json::to_vec_pretty(&record).unwrap_or_default(),
    )
    .map_err(io("write", &dir.join(EXIT_FILE)))?;
    debug!(%id, code, oom_killed, "container exited");
    Ok(())
}

/// The output pipes of the runtime's process (the container's output, but for a terminal).
fn runtime_output(
    process: &mut crate::runtime::Process,
) -> Vec<(Box<dyn tokio::io::AsyncRead + Send + Unpin>, Stream)> {
    let mut out: Vec<(Box<dyn tokio::io::AsyncRead + Send + Unpin>, Stream)> = Vec::new();
    if let Some(p) = process.stdout.take() {
        out.push((Box::new(p), Stream::Stdout));
    }
    if let Some(p) = process.stderr.take() {
        out.push((Box::new(p), Stream::Stderr));
    }
    out
}

/// Takes the container's terminal from the runtime on `console`: its master side, or why not
/// (the runtime ended, or sent nothing within a minute).
async fn receive_terminal(
    console: &ConsoleSocket,
    process: &mut crate::runtime::Process,
) -> Result<std::os::fd::OwnedFd, String> {
    let ended = async {
        loop {
            if process.has_ended() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        m = console.receive() => m.map_err(|e| format!("receiving the container's terminal: {e}")),
        () = ended => Err("the runtime ended before it sent the container's terminal".into()),
        () = tokio::time::sleep(std::time::Duration::from_secs(60)) => {
            Err("the runtime sent no terminal for the container within 60 s".into())
        }
    }
}

/// What the shim keeps of a container with a stdin or terminal.
struct Kept {
    listener: tokio::net::UnixListener,
    /// Where the runtime sends the terminal it allocates for the container (`tty`), until it
    /// has.
    console: Option<ConsoleSocket>,
    /// Where session input goes: the stdin pipe, or the terminal's master side.
    input: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    /// The terminal's output (logged as stdout).
    output: Option<PtyIo>,
    /// The terminal's master side, for resizes.
    master: Option<std::os::fd::OwnedFd>,
}

/// The runtime's stdio for `stdio`, and what the shim keeps of it.
fn keep_stdio(dir: &Path, stdio: StdinSpec) -> std::io::Result<(Stdio, Option<Kept>)> {
    use std::process::Stdio as S;
    if !stdio.kept() {
        return Ok((Stdio::piped(), None));
    }
    let sock = dir.join(ATTACH_SOCKET);
    let _ = std::fs::remove_file(&sock);
    let listener = with_socket_path(dir, |p| std::os::unix::net::UnixListener::bind(p))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::UnixListener::from_std(listener)?;
    if stdio.tty {
        // The runtime allocates the terminal (`--console-socket`) and makes it the container's
        // controlling terminal; its own stdout and stderr carry only its messages.
        let kept = Kept {
            listener,
            console: Some(ConsoleSocket::bind()?),
            input: None,
            output: None,
            master: None,
        };
        return Ok((Stdio::piped(), Some(kept)));
    }
    let (read, write) = std::io::pipe()?;
    let writer = tokio::net::unix::pipe::Sender::from_owned_fd(write.into())?;
    Ok((
        Stdio {
            stdin: S::from(read),
            ..Stdio::piped()
        },
        Some(Kept {
            listener,
            console: None,
            input: Some(Box::new(writer)),
            output: None,
            master: None,
        }),
    ))
}

/// What attach sessions ask of the kept stdin.
enum Input {
    Data(Vec<u8>),
    Resize(u16, u16),
    /// A session ended (its stdin closed, or it went away).
    End,
}

/// Takes attach sessions on `listener` and copies their input into `input`, until the
/// container exits (the task is aborted then). With `once`, the first session's end closes the
/// container's stdin (a terminal gets an end-of-file character: its master cannot half-close).
async fn serve_attach(
    listener: tokio::net::UnixListener,
    input: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    master: Option<std::os::fd::OwnedFd>,
    once: bool,
    id: String,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Input>();
    let writer = tokio::spawn(async move {
        let tty = master.is_some();
        let mut input = input;
        while let Some(msg) = rx.recv().await {
            match msg {
                Input::Data(d) => {
                    if let Some(w) = input.as_mut()
                        && (w.write_all(&d).await.is_err() || w.flush().await.is_err())
                    {
                        input = None;
                    }
                }
                Input::Resize(width, height) => {
                    if let Some(m) = &master {
                        let ws = rustix::termios::Winsize {
                            ws_row: height,
                            ws_col: width,
                            ws_xpixel: 0,
                            ws_ypixel: 0,
                        };
                        let _ = rustix::termios::tcsetwinsize(m, ws);
                    }
                }
                Input::End if once => {
                    if let Some(mut w) = input.take() {
                        if tty {
                            let _ = w.write_all(&[4]).await;
                        }
                        let _ = w.shutdown().await;
                    }
                    debug!(%id, "first attach session ended: stdin closed (stdinOnce)");
                }
                Input::End => {}
            }
        }
    });
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            break;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            'conn: loop {
                let n = match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                for (kind, payload) in take_frames(&mut buf) {
                    let msg = match kind {
                        FRAME_DATA => Input::Data(payload),
                        FRAME_RESIZE if payload.len() == 4 => Input::Resize(
                            u16::from_be_bytes([payload[0], payload[1]]),
                            u16::from_be_bytes([payload[2], payload[3]]),
                        ),
                        FRAME_CLOSE => break 'conn,
                        _ => continue,
                    };
                    let _ = tx.send(msg);
                }
            }
            let _ = tx.send(Input::End);
        });
    }
    drop(tx);
    let _ = writer.await;
}

/// Copies the terminal's output into the log as stdout records as soon as it comes: a line
/// not ended yet (a shell's prompt) is written at once as a partial record, so attach sessions
/// (which follow the log) show it.
async fn pump_terminal(mut out: PtyIo, path: PathBuf) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await?;
    let mut chunk = vec![0u8; logs::MAX_LINE];
    loop {
        let n = out.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        let now = jiff::Timestamp::now();
        let mut records = Vec::new();
        for piece in chunk[..n].split_inclusive(|b| *b == b'\n') {
            records.extend(match piece.strip_suffix(b"\n") {
                Some(line) => logs::format_line(now, Stream::Stdout, false, line),
                None => logs::format_line(now, Stream::Stdout, true, piece),
            });
        }
        file.write_all(&records).await?;
    }
}

/// A pseudo-terminal pair (master non-blocking, both close-on-exec): (master, slave).
pub fn open_pty() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave = rustix::fs::open(
        name.as_c_str(),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let flags = rustix::fs::fcntl_getfl(&master)?;
    rustix::fs::fcntl_setfl(&master, flags | rustix::fs::OFlags::NONBLOCK)?;
    Ok((master, slave))
}

/// The terminal's master side, async (reads end when the container's side is closed).
pub struct PtyIo {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl PtyIo {
    /// Registers its own duplicate of `fd`.
    pub fn new(fd: &std::os::fd::OwnedFd) -> std::io::Result<Self> {
        // Deprecated for descriptors it does not own; it owns this duplicate outright.
        #[allow(deprecated)]
        Ok(PtyIo {
            fd: tokio::io::unix::AsyncFd::new(fd.try_clone()?)?,
        })
    }
}

impl tokio::io::AsyncRead for PtyIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::os::fd::AsFd as _;
        use std::task::Poll;
        loop {
            let mut guard = match self.fd.poll_read_ready(cx) {
                Poll::Ready(g) => g?,
                Poll::Pending => return Poll::Pending,
            };
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| {
                rustix::io::read(fd.get_ref().as_fd(), &mut *unfilled).map_err(Into::into)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // EIO: every descriptor of the terminal's other side is closed.
                Ok(Err(e)) if e.raw_os_error() == Some(5) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl tokio::io::AsyncWrite for PtyIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::os::fd::AsFd as _;
        use std::task::Poll;
        loop {
            let mut guard = match self.fd.poll_write_ready(cx) {
                Poll::Ready(g) => g?,
                Poll::Pending => return Poll::Pending,
            };
            match guard
                .try_io(|fd| rustix::io::write(fd.get_ref().as_fd(), data).map_err(Into::into))
            {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeKind;

    #[test]
    fn frames_round_trip() {
        let mut buf = frame(FRAME_DATA, b"hi\n");
        buf.extend(frame(FRAME_RESIZE, &[0, 80, 0, 24]));
        let mut partial = frame(FRAME_CLOSE, &[]);
        buf.extend(partial.drain(..3));
        let got = take_frames(&mut buf);
        assert_eq!(
            got,
            vec![
                (FRAME_DATA, b"hi\n".to_vec()),
                (FRAME_RESIZE, vec![0, 80, 0, 24])
            ]
        );
        buf.extend(partial);
        assert_eq!(take_frames(&mut buf), vec![(FRAME_CLOSE, vec![])]);
        assert!(buf.is_empty());
        let d = tempfile::tempdir().unwrap();
        assert_eq!(StdinSpec::read(d.path()), StdinSpec::default());
        let s = StdinSpec {
            stdin: true,
            stdin_once: false,
            tty: true,
        };
        s.write(d.path()).unwrap();
        assert_eq!(StdinSpec::read(d.path()), s);
        assert_eq!(read_terminal_size(d.path()), None);
        write_terminal_size(d.path(), 33, 101).unwrap();
        assert_eq!(read_terminal_size(d.path()), Some((33, 101)));
    }

    #[test]
    fn cmdline_match() {
        assert_eq!(
            shim_dir(b"/bin/nodeless\0sandbox\0shim\0--dir\0/d/containers/a\0"),
            Some(PathBuf::from("/d/containers/a"))
        );
        assert_eq!(shim_dir(b"sleep\0--dir\0/d/containers/a\0"), None);
        assert_eq!(shim_dir(b"x\0shim\0"), None);
        // Our own process is no shim.
        assert!(!is_alive(std::process::id(), Path::new("/")));
    }

    #[test]
    fn records_round_trip() {
        let r = ExitRecord {
            exit_code: 137,
            oom_killed: true,
            reason: "OOMKilled".into(),
            started_at: "t0".into(),
            finished_at: "t1".into(),
            restart_count: 2,
        };
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["exitCode"], 137);
        assert_eq!(j["oomKilled"], true);
        assert_eq!(serde_json::from_value::<ExitRecord>(j).unwrap(), r);
        assert!(matches!(
            r.status(),
            Status::Terminated { exit_code: 137, .. }
        ));
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), EXIT_FILE, &serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(read_exit(d.path()), Some(r));
        write_atomic(d.path(), PID_FILE, b"42").unwrap();
        assert_eq!(read_pid(d.path()), Some(42));
        assert!(!is_alive(u32::MAX - 1, d.path()));

        let spec = Spec {
            id: "c".into(),
            runtime: RuntimeConfig::Oci(
                serde_json::from_value(serde_json::json!({
                    "kind": "container", "binary": "/usr/bin/crun", "global": ["--root=/r"],
                    "proc_shim": null
                }))
                .unwrap(),
            ),
            restart_count: 0,
            memory_cgroup: None,
            cgroups_path: Some("/x/c".into()),
            state: State {
                id: "c".into(),
                name: "main".into(),
                image: "img".into(),
                runtime: RuntimeKind::Container,
                restart_count: 0,
                status: Status::Waiting {
                    reason: "ContainerCreating".into(),
                },
            },
            stdio: StdinSpec {
                stdin: true,
                stdin_once: true,
                tty: false,
            },
            limit_watch: Some(crate::limitwatch::Spec {
                sandbox_id: "pod-pause".into(),
                memory: Some(64 << 20),
                cpu_millis: Some(250),
                pod_cgroup: None,
            }),
        };
        let j = serde_json::to_value(&spec).unwrap();
        assert_eq!(j["runtime"]["type"], "oci");
        assert_eq!(serde_json::from_value::<Spec>(j).unwrap(), spec);
    }
}
