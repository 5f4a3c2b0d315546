//! Runtimes run one OCI bundle each, behind the [`Runtime`] trait, chosen per pod:
//! `gvisor` (Debian's runsc, user-space kernel, `--platform=ptrace`), `container` (crun, plain
//! namespaces and cgroups) and later `microvm`. `auto` picks the micro-VM only where the CPU has
//! hardware virtualization (vmx/svm flags, not the mere presence of /dev/kvm), else gVisor.

mod oci;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

pub use oci::{CONTAINER_TYPE, OciRuntime, SANDBOX_ID};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Gvisor,
    Container,
    Microvm,
}

/// What the user asked for: a runtime, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeChoice {
    #[default]
    Auto,
    Kind(RuntimeKind),
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("unknown runtime {0:?} (expected auto, gvisor, container or microvm)")]
    Unknown(String),
    #[error("runtime {kind} needs {tool}, which is not installed: {hint}")]
    Missing {
        kind: RuntimeKind,
        tool: &'static str,
        hint: &'static str,
    },
    #[error("runtime {0} is not implemented yet")]
    NotImplemented(RuntimeKind),
    #[error("starting {tool}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} {action} {id} failed: {stderr}")]
    Command {
        tool: String,
        action: &'static str,
        id: String,
        stderr: String,
    },
    #[error("preparing cgroups for crun")]
    Cgroup(#[source] std::io::Error),
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Gvisor => "gvisor",
            RuntimeKind::Container => "container",
            RuntimeKind::Microvm => "microvm",
        })
    }
}

impl FromStr for RuntimeChoice {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => RuntimeChoice::Auto,
            "gvisor" | "runsc" => RuntimeChoice::Kind(RuntimeKind::Gvisor),
            "container" | "crun" => RuntimeChoice::Kind(RuntimeKind::Container),
            "microvm" | "vm" => RuntimeChoice::Kind(RuntimeKind::Microvm),
            other => return Err(RuntimeError::Unknown(other.to_owned())),
        })
    }
}

/// Whether `/proc/cpuinfo` text shows hardware virtualization. Pure.
pub fn has_hardware_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The runtime `auto` means on a host with this cpuinfo: the micro-VM with hardware
/// virtualization, else gVisor.
pub fn resolve(choice: RuntimeChoice, cpuinfo: &str) -> RuntimeKind {
    match choice {
        RuntimeChoice::Kind(k) => k,
        RuntimeChoice::Auto if has_hardware_virtualization(cpuinfo) => RuntimeKind::Microvm,
        RuntimeChoice::Auto => RuntimeKind::Gvisor,
    }
}

/// Standard streams for a container process.
#[derive(Debug)]
pub struct Stdio {
    pub stdin: std::process::Stdio,
    pub stdout: std::process::Stdio,
    pub stderr: std::process::Stdio,
    /// Keep the runtime in our process group (an interactive terminal session); otherwise it
    /// gets its own, so signals meant for us (Ctrl-C, an agent's SIGTERM) do not reach it.
    pub foreground: bool,
}

impl Stdio {
    /// stdin closed, stdout and stderr piped to us.
    pub fn piped() -> Self {
        Stdio {
            stdin: std::process::Stdio::null(),
            stdout: std::process::Stdio::piped(),
            stderr: std::process::Stdio::piped(),
            foreground: false,
        }
    }
}

/// A unix socket a runtime sends the master side of a terminal it allocates to (the OCI
/// runtimes' `--console-socket`): the container's (or an exec's) controlling terminal, whose
/// line discipline turns a typed ^C into SIGINT for its foreground process group, as under
/// docker and containerd. Bound in the temporary directory (a socket path must be short), removed
/// on drop.
#[derive(Debug)]
pub struct ConsoleSocket {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    /// Binds a new socket (call within a Tokio runtime).
    pub fn bind() -> std::io::Result<Self> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("nodeless-console-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path)?;
        // Only our own user (the runtime's) may hand us a terminal.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(ConsoleSocket { listener, path })
    }

    /// Where the runtime connects (its `--console-socket`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the next terminal sent here: its master side, non-blocking and close-on-exec.
    pub async fn receive(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        let (conn, _) = self.listener.accept().await?;
        let fd = loop {
            conn.readable().await?;
            match conn.try_io(tokio::io::Interest::READABLE, || {
                use std::os::fd::AsFd as _;
                recv_fd(conn.as_fd())
            }) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                r => break r?,
            }
        };
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | rustix::fs::OFlags::NONBLOCK)?;
        Ok(fd)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Reads one message from the unix socket `sock` and takes the first descriptor it carries
/// (`SCM_RIGHTS`, received close-on-exec; any others are closed). `recvmsg(2)` straight from
/// the C library, which std links anyway: this crate's rustix has no `net` feature.
#[allow(unsafe_code)]
fn recv_fd(sock: std::os::fd::BorrowedFd<'_>) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    #[repr(C)]
    struct IoVec {
        base: *mut u8,
        len: usize,
    }
    #[repr(C)]
    struct MsgHdr {
        name: *mut u8,
        namelen: u32,
        iov: *mut IoVec,
        iovlen: usize,
        control: *mut u8,
        controllen: usize,
        flags: i32,
    }
    #[repr(C)]
    struct CmsgHdr {
        len: usize,
        level: i32,
        kind: i32,
    }
    #[repr(C, align(8))]
    struct Control([u8; 128]);
    unsafe extern "C" {
        fn recvmsg(fd: i32, msg: *mut MsgHdr, flags: i32) -> isize;
    }
    const SOL_SOCKET: i32 = 1;
    const SCM_RIGHTS: i32 = 1;
    const MSG_CTRUNC: i32 = 0x8;
    const MSG_CMSG_CLOEXEC: i32 = 0x4000_0000;

    let mut data = [0u8; 256];
    let mut iov = IoVec {
        base: data.as_mut_ptr(),
        len: data.len(),
    };
    let mut control = Control([0; 128]);
    let mut msg = MsgHdr {
        name: std::ptr::null_mut(),
        namelen: 0,
        iov: &mut iov,
        iovlen: 1,
        control: control.0.as_mut_ptr(),
        controllen: control.0.len(),
        flags: 0,
    };
    // SAFETY: every pointer in `msg` points at a live local buffer of the length given.
    let n = unsafe { recvmsg(sock.as_raw_fd(), &mut msg, MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let header = std::mem::size_of::<CmsgHdr>();
    let used = msg.controllen.min(control.0.len());
    let mut fds = Vec::new();
    let mut at = 0;
    while at + header <= used {
        // SAFETY: `at + header` is within the control buffer; the read copes with any alignment.
        let h: CmsgHdr = unsafe { std::ptr::read_unaligned(control.0.as_ptr().add(at).cast()) };
        if h.len < header || at + h.len > used {
            break;
        }
        if h.level == SOL_SOCKET && h.kind == SCM_RIGHTS {
            for c in control.0[at + header..at + h.len].chunks_exact(4) {
                let raw = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                // SAFETY: the kernel just installed this descriptor for us; nothing else owns it.
                fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
            }
        }
        at += (h.len + 7) & !7;
    }
    let mut fds = fds.into_iter();
    match fds.next() {
        Some(fd) => Ok(fd),
        None if msg.flags & MSG_CTRUNC != 0 => Err(std::io::Error::other(
            "the runtime's terminal message was truncated",
        )),
        None if n == 0 => Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the runtime closed its console socket without sending a terminal",
        )),
        None => Err(std::io::Error::other(
            "the runtime's console socket message carried no terminal",
        )),
    }
}

/// A process started in a container on a terminal of its own (its controlling terminal).
#[derive(Debug)]
pub struct TerminalExec {
    /// The runtime's process, which ends with the exec'd one (exit code and all).
    pub child: tokio::process::Child,
    /// The terminal's master side (non-blocking): what the process reads is written here, what
    /// it writes is read here, and its window size is set here.
    pub master: std::os::fd::OwnedFd,
}

/// One way to run OCI bundles.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + fmt::Debug {
    fn kind(&self) -> RuntimeKind;

    /// Creates and starts the bundle's container; [`Process::wait`] returns its exit code.
    async fn spawn(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<Process, RuntimeError>;

    /// Sends `signal` to the container's main process; SIGKILL (9) to all its processes.
    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;

    /// Removes what the runtime keeps about a stopped (or, forced, running) container.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;

    /// Like [`Runtime::spawn`], for a bundle whose process has `terminal: true`: the runtime
    /// allocates the container's terminal, makes it the container's controlling terminal, and
    /// sends its master side to `console` (take it with [`ConsoleSocket::receive`], racing the
    /// process: a runtime that fails sends nothing). `stdio` carry only the runtime's own
    /// messages.
    async fn spawn_on_terminal(
        &self,
        id: &str,
        bundle: &Path,
        console: &ConsoleSocket,
        stdio: Stdio,
    ) -> Result<Process, RuntimeError> {
        let _ = (id, bundle, console, stdio);
        Err(RuntimeError::NotImplemented(self.kind()))
    }

    /// Starts `process` (an OCI process object: args, env, cwd, user...) inside the running
    /// container on a new terminal, its controlling terminal (a typed ^C interrupts it, resizes
    /// reach it), whose master side comes back with the runtime's process.
    async fn exec_on_terminal(
        &self,
        id: &str,
        process: &serde_json::Value,
    ) -> Result<TerminalExec, RuntimeError> {
        let _ = (id, process);
        Err(RuntimeError::NotImplemented(self.kind()))
    }

    /// Starts `args` inside the running container. With `tty` it runs on a terminal: give
    /// `stdio` a terminal's slave side (it becomes the controlling terminal of the runtime's
    /// process, whose signals reach the exec'd one); [`Runtime::exec_on_terminal`] allocates
    /// one instead.
    fn exec(
        &self,
        id: &str,
        args: &[String],
        tty: bool,
        stdio: Stdio,
    ) -> Result<tokio::process::Child, RuntimeError>;

    /// The runtime's view of a container: `Some("running")`, `Some("stopped")`..., `None` if unknown.
    async fn status(&self, id: &str) -> Result<Option<String>, RuntimeError>;

    /// Waits (at most `timeout`) until container `id`, just started, runs: `false` if it
    /// stopped or the time ran out. Runtimes whose start returns once the container runs
    /// answer at once.
    async fn wait_running(&self, _id: &str, _timeout: std::time::Duration) -> bool {
        true
    }

    /// How another process (a container's shim, see [`crate::shim`]) opens this same runtime;
    /// `None` when it cannot, and containers then run as children of the caller.
    fn config(&self) -> Option<RuntimeConfig> {
        None
    }
}

/// A runtime described well enough to be opened again in another process (the shim).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RuntimeConfig {
    /// runsc or crun through their CLI, with the same binary, global flags and state root.
    Oci(OciRuntime),
}

impl RuntimeConfig {
    /// Opens the runtime this describes (no tool checks: its opener already made them).
    pub fn open(self) -> Arc<dyn Runtime> {
        match self {
            RuntimeConfig::Oci(rt) => Arc::new(rt),
        }
    }
}

/// A started container as its runtime reports it.
#[derive(Debug)]
pub struct Process {
    pub stdout: Option<tokio::process::ChildStdout>,
    pub stderr: Option<tokio::process::ChildStderr>,
    waiter: Waiter,
}

#[derive(Debug)]
enum Waiter {
    /// A foreground `run`: exits with the container.
    Run(tokio::process::Child),
    /// `runsc wait`: prints `{"id":..,"exitStatus":N}` when the container exits.
    RunscWait(tokio::process::Child),
}

/// The exit code in a `runsc wait` answer (a plain code, or a raw wait status). Pure.
pub fn runsc_exit_code(json: &[u8]) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let status = i32::try_from(v.get("exitStatus")?.as_i64()?).ok()?;
    Some(if status > 255 {
        if status & 0x7f == 0 {
            (status >> 8) & 0xff
        } else {
            128 + (status & 0x7f)
        }
    } else {
        status
    })
}

impl Process {
    /// Whether the runtime's process (`run`, or `runsc wait`) has ended, without waiting:
    /// [`Process::wait`] then returns at once.
    pub fn has_ended(&mut self) -> bool {
        let child = match &mut self.waiter {
            Waiter::Run(c) | Waiter::RunscWait(c) => c,
        };
        !matches!(child.try_wait(), Ok(None))
    }

    /// Waits for the container to exit and returns its exit code (128 + signal when killed).
    pub async fn wait(&mut self) -> std::io::Result<i32> {
        match &mut self.waiter {
            Waiter::Run(child) => Ok(crate::container::exit_code(child.wait().await?)),
            Waiter::RunscWait(child) => {
                let mut out = Vec::new();
                if let Some(mut so) = child.stdout.take() {
                    tokio::io::AsyncReadExt::read_to_end(&mut so, &mut out).await?;
                }
                let status = child.wait().await?;
                runsc_exit_code(&out).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "runsc wait ended with {status} and no exit status: {}",
                        String::from_utf8_lossy(&out)
                    ))
                })
            }
        }
    }
}

/// Opens the runtime of `kind` with its state under `data_dir/runtime`, checking its tools.
pub fn open(kind: RuntimeKind, data_dir: &Path) -> Result<Box<dyn Runtime>, RuntimeError> {
    let root: PathBuf = data_dir.join("runtime").join(kind.to_string());
    match kind {
        RuntimeKind::Gvisor => Ok(Box::new(OciRuntime::gvisor(root)?)),
        RuntimeKind::Container => Ok(Box::new(OciRuntime::crun(root)?)),
        RuntimeKind::Microvm => Err(RuntimeError::NotImplemented(kind)),
    }
}

/// Opens the runtime of `kind` for pod sandboxes: like [`open`], but gVisor runs with its
/// network stack on, inside the pod's network namespace.
pub fn open_for_pods(kind: RuntimeKind, data_dir: &Path) -> Result<Box<dyn Runtime>, RuntimeError> {
    let root: PathBuf = data_dir.join("runtime").join(kind.to_string());
    match kind {
        RuntimeKind::Gvisor => Ok(Box::new(OciRuntime::gvisor_networked(root)?)),
        _ => open(kind, data_dir),
    }
}

/// Runtimes usable on this host (for test suites that run against every runtime).
pub fn available() -> Vec<RuntimeKind> {
    [RuntimeKind::Container, RuntimeKind::Gvisor]
        .into_iter()
        .filter(|k| match k {
            RuntimeKind::Gvisor => oci::which("runsc").is_some(),
            RuntimeKind::Container => oci::which("crun").is_some(),
            RuntimeKind::Microvm => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runsc_wait_answers() {
        assert_eq!(runsc_exit_code(br#"{"id":"c","exitStatus":4}"#), Some(4));
        assert_eq!(runsc_exit_code(br#"{"id":"c","exitStatus":768}"#), Some(3));
        assert_eq!(
            runsc_exit_code(br#"{"id":"c","exitStatus":265}"#),
            Some(137)
        );
        assert_eq!(runsc_exit_code(b"garbage"), None);
    }

    #[test]
    fn auto_uses_cpu_flags_not_dev_kvm() {
        let pvm = "processor : 0\nflags : fpu vme de pse hypervisor lahf_lm\n";
        let vmx = "processor : 0\nflags : fpu vme vmx ept\n";
        assert!(!has_hardware_virtualization(pvm));
        assert!(has_hardware_virtualization(vmx));
        assert_eq!(resolve(RuntimeChoice::Auto, pvm), RuntimeKind::Gvisor);
        assert_eq!(
            resolve("container".parse().unwrap(), pvm),
            RuntimeKind::Container
        );
        assert!("docker".parse::<RuntimeChoice>().is_err());
    }
}
