//! The two OCI command-line runtimes, runsc (gVisor) and crun, driven through their shared CLI
//! (`run`, `kill`, `delete`, `exec`, `state`).

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::{
    ConsoleSocket, Process, Runtime, RuntimeConfig, RuntimeError, RuntimeKind, Stdio, TerminalExec,
    Waiter,
};

/// Annotation by which runsc (and CRI) tell a pod's sandbox (pause) container from the others.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// Annotation naming the pod sandbox a container joins.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// runsc with networking refuses to start when `/proc/sys/net/core/rmem_default` exists, which
/// on newer kernels it does in every netns. So it runs in a private mount namespace whose
/// `/proc/sys` is a tmpfs holding only `vm`, `kernel` and `fs` from a fresh proc mount (at
/// `scratch`). Made by system calls in the child between fork and exec: the same done by
/// `unshare`, `sh` and six `mount` commands cost ~60 ms per runsc command.
struct ProcSysShim {
    scratch: std::ffi::CString,
    /// (`/proc/sys/<d>`, `<scratch>/sys/<d>`) for the kept subtrees.
    keep: Vec<(std::ffi::CString, std::ffi::CString)>,
}

impl ProcSysShim {
    fn new(scratch: &Path) -> std::io::Result<Self> {
        let c = |p: PathBuf| {
            std::ffi::CString::new(p.into_os_string().into_encoded_bytes())
                .map_err(std::io::Error::other)
        };
        let keep = ["vm", "kernel", "fs"]
            .into_iter()
            .map(|d| {
                Ok((
                    c(Path::new("/proc/sys").join(d))?,
                    c(scratch.join("sys").join(d))?,
                ))
            })
            .collect::<std::io::Result<_>>()?;
        Ok(ProcSysShim {
            scratch: c(scratch.to_owned())?,
            keep,
        })
    }

    /// Runs in the forked child: system calls on prepared strings only (no allocation).
    #[allow(unsafe_code)]
    fn enter(&self) -> std::io::Result<()> {
        use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_bind, mount_change};
        // SAFETY: a new mount namespace for this (single-threaded, about to exec) child.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }?;
        mount_change(
            c"/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )?;
        mount(
            c"proc",
            self.scratch.as_c_str(),
            c"proc",
            MountFlags::empty(),
            None,
        )?;
        mount(c"tmpfs", c"/proc/sys", c"tmpfs", MountFlags::empty(), None)?;
        for (dir, src) in &self.keep {
            rustix::fs::mkdir(dir.as_c_str(), rustix::fs::Mode::from_raw_mode(0o755))?;
            mount_bind(src.as_c_str(), dir.as_c_str())?;
        }
        Ok(())
    }
}

/// Finds `tool` on PATH.
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OciRuntime {
    kind: RuntimeKind,
    binary: PathBuf,
    global: Vec<String>,
    /// Run every command through the /proc/sys shim, with this scratch dir for its proc mount.
    proc_shim: Option<PathBuf>,
}

impl OciRuntime {
    /// gVisor's runsc with the ptrace platform (the kvm platform hangs on PVM hosts).
    pub fn gvisor(root: PathBuf) -> Result<Self, RuntimeError> {
        let binary = which("runsc").ok_or(RuntimeError::Missing {
            kind: RuntimeKind::Gvisor,
            tool: "runsc",
            hint: "apt-get install runsc",
        })?;
        std::fs::create_dir_all(&root).map_err(|source| RuntimeError::Spawn {
            tool: "mkdir".into(),
            source,
        })?;
        Ok(OciRuntime {
            kind: RuntimeKind::Gvisor,
            binary,
            global: vec![
                format!("--root={}", root.display()),
                "--platform=ptrace".into(),
                "--network=none".into(),
            ],
            proc_shim: None,
        })
    }

    /// runsc with its own network stack on, for sandboxes given a pod network namespace.
    pub fn gvisor_networked(root: PathBuf) -> Result<Self, RuntimeError> {
        let mut rt = Self::gvisor(root.clone())?;
        rt.global.retain(|a| a != "--network=none");
        rt.global.push("--gso=false".into());
        rt.global.push("--software-gso=false".into());
        let scratch = root.join("proc-scratch");
        std::fs::create_dir_all(&scratch).map_err(|source| RuntimeError::Spawn {
            tool: "mkdir".into(),
            source,
        })?;
        rt.proc_shim = Some(scratch);
        Ok(rt)
    }

    /// crun, after making the host's hybrid cgroup layout acceptable to it.
    pub fn crun(root: PathBuf) -> Result<Self, RuntimeError> {
        let binary = which("crun").ok_or(RuntimeError::Missing {
            kind: RuntimeKind::Container,
            tool: "crun",
            hint: "apt-get install crun",
        })?;
        std::fs::create_dir_all(&root).map_err(|source| RuntimeError::Spawn {
            tool: "mkdir".into(),
            source,
        })?;
        fix_hybrid_cgroups(Path::new("/sys/fs/cgroup"))?;
        Ok(OciRuntime {
            kind: RuntimeKind::Container,
            binary,
            global: vec![format!("--root={}", root.display())],
            proc_shim: None,
        })
    }

    #[allow(unsafe_code)]
    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        if let Some(scratch) = &self.proc_shim {
            match ProcSysShim::new(scratch) {
                // SAFETY: `enter` runs between fork and exec and only makes system calls on
                // strings built here, before the fork.
                Ok(shim) => unsafe {
                    c.pre_exec(move || shim.enter());
                },
                Err(e) => tracing::warn!(error = %e, "scratch path for runsc's /proc/sys"),
            }
        }
        c.args(&self.global);
        c
    }

    /// The runtime's state directory (`--root`).
    fn root(&self) -> Option<&Path> {
        self.global
            .iter()
            .find_map(|a| a.strip_prefix("--root="))
            .map(Path::new)
    }

    /// Whether the runtime may hold state for container `id`, from a look at its state
    /// directory instead of a runtime command (each costs a process start, ~10-30 ms for
    /// runsc). `false` only when surely not: runsc keeps `<id>_sandbox:<sandbox>.state`, crun
    /// a directory `<id>`; an unreadable state directory counts as "may".
    fn may_have(&self, id: &str) -> bool {
        let Some(root) = self.root() else {
            return true;
        };
        if std::fs::read_dir(root).is_err() {
            return root.exists();
        }
        match self.kind {
            RuntimeKind::Gvisor => runsc_state_file(root, id).is_some(),
            _ => root.join(id).exists(),
        }
    }

    fn spawn_err(&self) -> impl FnOnce(std::io::Error) -> RuntimeError + '_ {
        move |source| RuntimeError::Spawn {
            tool: self.binary.display().to_string(),
            source,
        }
    }

    /// Pod containers (marked with the CRI annotations) are created into the pod's gVisor
    /// sandbox and waited for with `runsc wait`; everything else runs in the foreground.
    /// runsc hands a subcontainer the stdio of the `start` command (the sandbox container gets
    /// those of `create`), so both get the container's streams; a `console` socket is given to
    /// `create` (runsc sends the terminal when the container starts).
    async fn create_start_wait(
        &self,
        id: &str,
        bundle: &Path,
        stdio: Stdio,
        console: Option<&Path>,
    ) -> Result<Process, RuntimeError> {
        let bundle_arg = bundle.display().to_string();
        let is_sandbox = pod_container_type(bundle).as_deref() == Some("sandbox");
        let (stdout, stderr) = if is_sandbox {
            let mut create = self.command();
            create.arg("create").arg("--bundle").arg(bundle);
            if let Some(sock) = console {
                create.arg("--console-socket").arg(sock);
            }
            create.arg(id);
            create
                .stdin(stdio.stdin)
                .stdout(stdio.stdout)
                .stderr(stdio.stderr)
                .process_group(0);
            let mut child = create.spawn().map_err(self.spawn_err())?;
            let (stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
            let status = child.wait().await.map_err(self.spawn_err())?;
            if !status.success() {
                let mut msg = Vec::new();
                if let Some(e) = stderr.as_mut() {
                    let read = tokio::io::AsyncReadExt::read_to_end(e, &mut msg);
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), read).await;
                }
                return Err(RuntimeError::Command {
                    tool: self.kind.to_string(),
                    action: "create",
                    id: id.to_owned(),
                    stderr: format!("{status}: {}", String::from_utf8_lossy(&msg).trim()),
                });
            }
            self.simple("start", id, &[]).await?;
            (stdout, stderr)
        } else {
            self.create_subcontainer(id, &bundle_arg, console).await?;
            let mut start = self.command();
            start.arg("start").arg(id);
            start
                .stdin(stdio.stdin)
                .stdout(stdio.stdout)
                .stderr(stdio.stderr)
                .process_group(0);
            let mut child = start.spawn().map_err(self.spawn_err())?;
            let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
            let status = child.wait().await.map_err(self.spawn_err())?;
            if !status.success() {
                return Err(RuntimeError::Command {
                    tool: self.kind.to_string(),
                    action: "start",
                    id: id.to_owned(),
                    stderr: format!("{status} (its output is in the container's log)"),
                });
            }
            (stdout, stderr)
        };
        tracing::debug!(%id, "started in the pod sandbox");
        let mut wait = self.command();
        wait.arg("wait")
            .arg(id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .process_group(0);
        let waiter = wait.spawn().map_err(self.spawn_err())?;
        Ok(Process {
            stdout,
            stderr,
            waiter: Waiter::RunscWait(waiter),
        })
    }

    /// `runsc create` of a container joining a pod's sandbox. The sentry keeps its own table of
    /// containers, apart from runsc's state files: an entry left there (a `delete` that removed
    /// the state file but failed to destroy the container in the sentry) makes `create` fail
    /// with "already exists", and the failed `create`'s own cleanup removes the entry. So that
    /// error gets one `delete` and one more `create`.
    async fn create_subcontainer(
        &self,
        id: &str,
        bundle: &str,
        console: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        let console = console.map(|p| p.display().to_string());
        let mut args = vec!["--bundle", bundle];
        if let Some(sock) = &console {
            args.extend(["--console-socket", sock.as_str()]);
        }
        match self.simple("create", id, &args).await {
            Err(RuntimeError::Command { stderr, .. }) if stderr.contains("already exists") => {
                tracing::warn!(%id, error = %stderr, "runsc create: container already exists; deleting it and creating again");
                if let Err(e) = self.simple("delete", id, &["--force"]).await {
                    tracing::debug!(%id, error = %e, "runsc delete before creating again");
                }
                self.simple("create", id, &args).await?;
                Ok(())
            }
            r => r.map(|_| ()),
        }
    }

    /// `run` (or, for a pod's gVisor containers, create/start/wait), with `--console-socket`
    /// when `console` is given.
    async fn spawn_with(
        &self,
        id: &str,
        bundle: &Path,
        stdio: Stdio,
        console: Option<&Path>,
    ) -> Result<Process, RuntimeError> {
        if self.kind == RuntimeKind::Gvisor && pod_container_type(bundle).is_some() {
            return self.create_start_wait(id, bundle, stdio, console).await;
        }
        let mut c = self.command();
        c.arg("run").arg("--bundle").arg(bundle);
        if let Some(sock) = console {
            c.arg("--console-socket").arg(sock);
        }
        c.arg(id);
        c.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        if !stdio.foreground {
            c.process_group(0);
        }
        c.kill_on_drop(false);
        let mut child = c.spawn().map_err(self.spawn_err())?;
        Ok(Process {
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            waiter: Waiter::Run(child),
        })
    }

    async fn simple(
        &self,
        action: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<std::process::Output, RuntimeError> {
        let mut argv = args.to_vec();
        argv.push(id);
        self.invoke(action, id, &argv).await
    }

    /// Runs `<runtime> <action> <argv...>`; `id` names the container in errors.
    async fn invoke(
        &self,
        action: &'static str,
        id: &str,
        argv: &[&str],
    ) -> Result<std::process::Output, RuntimeError> {
        // Output goes through files, not pipes: a sandbox that `start` sets up can inherit the
        // command's stdio and would hold a pipe open (and us waiting) for its whole life.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base =
            std::env::temp_dir().join(format!("nodeless-{}-{}-{n}", self.kind, std::process::id()));
        let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
        let spawn_err = |source| RuntimeError::Spawn {
            tool: self.binary.display().to_string(),
            source,
        };
        let stdout = std::fs::File::create(&out_path).map_err(spawn_err)?;
        let stderr = std::fs::File::create(&err_path).map_err(spawn_err)?;
        let status = self
            .command()
            .arg(action)
            .args(argv)
            .stdin(std::process::Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .status()
            .await;
        let out = std::process::Output {
            status: status.map_err(spawn_err)?,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        };
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        if !out.status.success() {
            return Err(RuntimeError::Command {
                tool: self.kind.to_string(),
                action,
                id: id.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out)
    }
}

impl OciRuntime {
    /// The processes of container `id` (runsc: pids in the sandbox's root PID namespace, exec'd
    /// ones included), from one `ps --format=json`.
    pub async fn processes(&self, id: &str) -> Result<Vec<u32>, RuntimeError> {
        let out = self.invoke("ps", id, &["--format=json", id]).await?;
        Ok(parse_pids(&out.stdout))
    }
}

/// The pids in a `runsc ps --format=json` answer (a JSON array, `null` when there are none).
/// Pure.
fn parse_pids(json: &[u8]) -> Vec<u32> {
    serde_json::from_slice::<Option<Vec<u32>>>(json)
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// runsc's state file of container `id` under its `--root`: `<id>_sandbox:<sandbox>.state`.
fn runsc_state_file(root: &Path, id: &str) -> Option<PathBuf> {
    let prefix = format!("{id}_sandbox:");
    std::fs::read_dir(root).ok()?.flatten().find_map(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        (n.starts_with(&prefix) && n.ends_with(".state")).then(|| e.path())
    })
}

/// The CRI container type the bundle's spec declares (`sandbox` or `container`), if any.
fn pod_container_type(bundle: &Path) -> Option<String> {
    let b = std::fs::read(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v.get("annotations")?
        .get(CONTAINER_TYPE)?
        .as_str()
        .map(str::to_owned)
}

/// The process of an exec when the container's own is unknown.
fn default_process() -> serde_json::Value {
    serde_json::json!({
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "cwd": "/",
        "user": {"uid": 0, "gid": 0},
    })
}

/// An OCI process description in an anonymous file (for `exec --process`, see [`pass_fd`]):
/// no file to remove afterwards.
fn process_memfd(process: &serde_json::Value) -> std::io::Result<std::os::fd::OwnedFd> {
    let fd = rustix::fs::memfd_create(c"nodeless-process", rustix::fs::MemfdFlags::CLOEXEC)?;
    let bytes = serde_json::to_vec(process).map_err(std::io::Error::other)?;
    let mut file = std::fs::File::from(fd);
    std::io::Write::write_all(&mut file, &bytes)?;
    Ok(file.into())
}

/// Hands `fd` to the command's process (it stays close-on-exec in ours, so no other child gets
/// it) and returns the path by which that process opens it.
#[allow(unsafe_code)]
fn pass_fd(c: &mut Command, fd: &std::os::fd::OwnedFd) -> String {
    use std::os::fd::AsRawFd as _;
    let raw = fd.as_raw_fd();
    // SAFETY: runs between fork and exec; one fcntl on a descriptor the child inherited.
    unsafe {
        c.pre_exec(move || {
            let fd = std::os::fd::BorrowedFd::borrow_raw(raw);
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
            Ok(())
        });
    }
    format!("/proc/self/fd/{raw}")
}

/// Makes the command's stdin (a terminal's slave side) the controlling terminal of its process,
/// in a new session of its own: the terminal's line discipline then signals it (^C, resizes).
#[allow(unsafe_code)]
fn controlling_terminal(c: &mut Command) {
    // SAFETY: runs between fork and exec; two system calls, no allocation.
    unsafe {
        c.pre_exec(|| {
            rustix::process::setsid()?;
            rustix::process::ioctl_tiocsctty(std::os::fd::BorrowedFd::borrow_raw(0))?;
            Ok(())
        });
    }
}

/// On hosts with cgroup v1 controllers plus a v2 hierarchy at `unified` but no v1 hugetlb
/// mount, crun refuses ("cgroups in hybrid mode not supported"); a v1 hugetlb mount fixes it.
fn fix_hybrid_cgroups(cgroot: &Path) -> Result<(), RuntimeError> {
    let hugetlb = cgroot.join("hugetlb");
    if !cgroot.join("unified").is_dir() || !cgroot.join("memory").is_dir() || hugetlb.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&hugetlb).map_err(RuntimeError::Cgroup)?;
    rustix::mount::mount(
        "cgroup",
        &hugetlb,
        "cgroup",
        rustix::mount::MountFlags::empty(),
        Some(c"hugetlb"),
    )
    .map_err(|e| RuntimeError::Cgroup(e.into()))?;
    tracing::info!(path = %hugetlb.display(), "mounted a v1 hugetlb cgroup hierarchy so crun accepts the hybrid layout");
    Ok(())
}

#[async_trait::async_trait]
impl Runtime for OciRuntime {
    fn kind(&self) -> RuntimeKind {
        self.kind
    }

    async fn spawn(&self, id: &str, bundle: &Path, stdio: Stdio) -> Result<Process, RuntimeError> {
        self.spawn_with(id, bundle, stdio, None).await
    }

    async fn spawn_on_terminal(
        &self,
        id: &str,
        bundle: &Path,
        console: &ConsoleSocket,
        stdio: Stdio,
    ) -> Result<Process, RuntimeError> {
        self.spawn_with(id, bundle, stdio, Some(console.path()))
            .await
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let sig = signal.to_string();
        // SIGKILL ends every process of the container; any other signal (the stop signal)
        // goes to its main process only, as kubelet sends it.
        let args: &[&str] = if signal == 9 {
            &["--all", id, sig.as_str()]
        } else {
            &[id, sig.as_str()]
        };
        self.invoke("kill", id, args).await.map(|_| ())
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.may_have(id) {
            return Ok(());
        }
        match self.simple("delete", id, &["--force"]).await {
            Ok(_) => Ok(()),
            // Already gone is what we wanted.
            Err(RuntimeError::Command { stderr, .. })
                if stderr.contains("does not exist")
                    || stderr.contains("not found")
                    || stderr.contains("No such") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn exec(
        &self,
        id: &str,
        args: &[String],
        tty: bool,
        stdio: Stdio,
    ) -> Result<tokio::process::Child, RuntimeError> {
        let mut c = self.command();
        c.arg("exec");
        let mut process_fd = None;
        if tty {
            match self.kind {
                // runsc has no --tty: a process description with `terminal: true` (the
                // container's own, with these args) makes it use its stdin as the terminal.
                RuntimeKind::Gvisor => {
                    let mut process = self
                        .root()
                        .and_then(|root| runsc_state_file(root, id))
                        .and_then(|p| std::fs::read(p).ok())
                        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                        .and_then(|v| v.get("spec")?.get("process").cloned())
                        .unwrap_or_else(default_process);
                    process["args"] = args.into();
                    process["terminal"] = true.into();
                    let fd = process_memfd(&process).map_err(self.spawn_err())?;
                    let path = pass_fd(&mut c, &fd);
                    c.arg("--process").arg(path);
                    process_fd = Some(fd);
                    // The terminal it is given is its controlling terminal, in a session of
                    // its own: ^C and resizes signal it, and it passes them on.
                    controlling_terminal(&mut c);
                }
                // crun allocates a terminal of its own and relays its stdin (made raw) to it.
                _ => {
                    c.arg("--tty");
                }
            }
        }
        c.arg(id);
        if process_fd.is_none() {
            c.args(args);
        }
        c.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        let child = c.spawn().map_err(self.spawn_err());
        drop(process_fd);
        child
    }

    async fn exec_on_terminal(
        &self,
        id: &str,
        process: &serde_json::Value,
    ) -> Result<TerminalExec, RuntimeError> {
        let mut process = process.clone();
        process["terminal"] = true.into();
        let fd = process_memfd(&process).map_err(self.spawn_err())?;
        let mut c = self.command();
        let path = pass_fd(&mut c, &fd);
        c.arg("exec").arg("--process").arg(path);
        c.kill_on_drop(false);
        match self.kind {
            // runsc's exec takes no console socket (but detached): it uses its stdin, a
            // terminal of ours, which is its controlling terminal; it forwards the signals that
            // terminal sends it (^C, resizes) to the exec'd process.
            RuntimeKind::Gvisor => {
                let (master, slave) = crate::shim::open_pty().map_err(self.spawn_err())?;
                let dup = |fd: &std::os::fd::OwnedFd| {
                    fd.try_clone()
                        .map(std::process::Stdio::from)
                        .map_err(self.spawn_err())
                };
                c.arg(id)
                    .stdin(dup(&slave)?)
                    .stdout(dup(&slave)?)
                    .stderr(std::process::Stdio::from(slave));
                controlling_terminal(&mut c);
                let child = c.spawn().map_err(self.spawn_err())?;
                drop(c);
                Ok(TerminalExec { child, master })
            }
            _ => {
                let console = ConsoleSocket::bind().map_err(self.spawn_err())?;
                c.arg("--console-socket").arg(console.path()).arg(id);
                c.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .process_group(0);
                let mut child = c.spawn().map_err(self.spawn_err())?;
                drop(c);
                drop(fd);
                tokio::select! {
                    master = console.receive() => Ok(TerminalExec {
                        child,
                        master: master.map_err(self.spawn_err())?,
                    }),
                    status = child.wait() => {
                        let mut msg = Vec::new();
                        if let Some(e) = child.stderr.as_mut() {
                            let read = tokio::io::AsyncReadExt::read_to_end(e, &mut msg);
                            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), read).await;
                        }
                        Err(RuntimeError::Command {
                            tool: self.kind.to_string(),
                            action: "exec",
                            id: id.to_owned(),
                            stderr: format!(
                                "{}: {}",
                                status.map_err(self.spawn_err())?,
                                String::from_utf8_lossy(&msg).trim()
                            ),
                        })
                    }
                }
            }
        }
    }

    async fn status(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        if !self.may_have(id) {
            return Ok(None);
        }
        match self.simple("state", id, &[]).await {
            Ok(out) => {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                Ok(v.get("status").and_then(|s| s.as_str()).map(str::to_owned))
            }
            Err(RuntimeError::Command { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn config(&self) -> Option<RuntimeConfig> {
        Some(RuntimeConfig::Oci(self.clone()))
    }

    /// runsc returns from `run`/`start` before the sandbox has booted; its state file
    /// (`<id>_sandbox:<sandbox>.state` under `--root`) says `running` once it has. Read every
    /// 5 ms: no runsc command per look.
    async fn wait_running(&self, id: &str, timeout: std::time::Duration) -> bool {
        let (RuntimeKind::Gvisor, Some(root)) = (self.kind, self.root()) else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = runsc_state_file(root, id)
                .and_then(|p| std::fs::read(p).ok())
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v.get("status")?.as_str().map(str::to_owned));
            match status.as_deref() {
                Some("running") => return true,
                Some("stopped") => return false,
                _ if tokio::time::Instant::now() >= deadline => return false,
                _ => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_answers() {
        assert_eq!(parse_pids(b"[2,114]\n"), vec![2, 114]);
        assert_eq!(parse_pids(b"null"), Vec::<u32>::new());
        assert_eq!(parse_pids(b"garbage"), Vec::<u32>::new());
    }

    #[test]
    fn state_files_tell_which_ids_may_exist() {
        let d = tempfile::tempdir().unwrap();
        let rt = |kind| OciRuntime {
            kind,
            binary: "/bin/false".into(),
            global: vec![format!("--root={}", d.path().display())],
            proc_shim: None,
        };
        let gvisor = rt(RuntimeKind::Gvisor);
        let crun = rt(RuntimeKind::Container);
        assert!(!gvisor.may_have("pod-main"));
        std::fs::write(d.path().join("pod-main_sandbox:pod-pause.state"), b"{}").unwrap();
        std::fs::write(d.path().join("pod-other_sandbox:pod-pause.lock"), b"").unwrap();
        assert!(gvisor.may_have("pod-main"));
        assert!(!gvisor.may_have("pod-pause"));
        assert!(!gvisor.may_have("pod-other"));
        assert!(!crun.may_have("c1"));
        std::fs::create_dir(d.path().join("c1")).unwrap();
        assert!(crun.may_have("c1"));
        // No --root, or a root that cannot be read: ask the runtime.
        let mut blind = rt(RuntimeKind::Gvisor);
        blind.global.clear();
        assert!(blind.may_have("x"));
    }
}
