//! Running one container from a stored image: its directory under `<data-dir>/containers/<id>`
//! (bundle, overlay root filesystem, writable layer, logs, `state.json`), the runtime process,
//! log pumps, exit code and the OOM verdict, then cleanup. Pods build on this.
//!
//! Two ways to run: when a shim program is set ([`crate::shim::set_binary`], the agent does),
//! a logged container runs under its own shim process that outlives us, and a later process
//! finds it again with [`adopt`]; otherwise (tests of this crate, `sandbox run` with a
//! terminal) the runtime is our child and its output goes through our pipes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::image::{Image, ImageStore};
use crate::logs::{self, Stream, Tee};
use crate::rootfs::{self, RootfsError};
use crate::runtime::{Runtime, RuntimeError, RuntimeKind, Stdio};
use crate::shim::{self, ExitRecord};
use crate::spec::{self, ContainerConfig, SandboxContext, SpecError};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("container {0} has no pipe for its output")]
    NoPipe(String),
    #[error("shim of container {id}: {message}")]
    Shim { id: String, message: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What a container is doing, as Kubernetes reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Status {
    Waiting {
        reason: String,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: String,
        started_at: String,
        finished_at: String,
    },
}

/// The on-disk record of a container (`state.json`), enough to find it again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    pub name: String,
    pub image: String,
    pub runtime: RuntimeKind,
    pub restart_count: u32,
    pub status: Status,
}

/// Reason for a terminated container: Kubernetes' vocabulary. Pure.
pub fn exit_reason(code: i32, oom_killed: bool) -> &'static str {
    if oom_killed {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

/// Shell convention for an exit status: the code, or 128 + signal.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// How the container's standard streams are wired.
#[derive(Debug, Default)]
pub enum Io {
    /// stdin closed; stdout/stderr into the log (and to `tee` when given).
    #[default]
    Logged,
    LoggedTee(Tee),
    /// The caller's own terminal/streams are handed to the container (interactive `run -it`);
    /// nothing is logged.
    Inherit,
    /// stdin from the caller, stdout/stderr logged and teed.
    StdinTee(Tee),
}

/// A container that was started (or found again); [`Started::wait`] reaps it.
pub struct Started {
    pub id: String,
    pub dir: PathBuf,
    runtime: Arc<dyn Runtime>,
    state: State,
    how: Running,
}

type Pump = tokio::task::JoinHandle<std::io::Result<()>>;

/// How a started container is watched.
enum Running {
    /// The runtime is our child and its output goes through our pipes.
    Child {
        process: crate::runtime::Process,
        pumps: Vec<Pump>,
        cgroup: Option<PathBuf>,
        /// The container's cgroup path (relative to each hierarchy), removed after exit.
        cgroups_path: Option<String>,
        /// Its limits' watchdog, in a pod's shared gVisor sandbox.
        watch: Option<crate::limitwatch::Watch>,
    },
    /// A shim runs it; `child` when the shim is our child, else it was adopted.
    Shim {
        pid: u32,
        child: Option<tokio::process::Child>,
    },
    /// It had already ended when it was adopted.
    Exited(ExitRecord),
}

impl std::fmt::Debug for Started {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Started").field("id", &self.id).finish()
    }
}

/// How a container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    pub oom_killed: bool,
    pub state: State,
}

pub(crate) fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// The directory of container `id`.
pub fn dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("containers").join(id)
}

pub(crate) fn write_state(dir: &Path, s: &State) -> Result<(), ContainerError> {
    let p = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s).unwrap_or_default())
        .map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &p).map_err(io("rename", &p))
}

/// Reads a container's `state.json`.
pub fn read_state(data_dir: &Path, id: &str) -> Option<State> {
    read_state_in(&dir(data_dir, id))
}

/// The file in a container's directory that keeps how its previous run ended (its
/// Kubernetes `lastState`), written when a restart begins: `state.json` then describes the
/// new run.
pub const LAST_FILE: &str = "last.json";

/// How container `id`'s previous run ended (a [`Status::Terminated`]), if it was restarted.
pub fn read_last(data_dir: &Path, id: &str) -> Option<Status> {
    let b = std::fs::read(dir(data_dir, id).join(LAST_FILE)).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Before run `restart_count` of the container in `dir` starts: keeps the end of the run
/// before it (still in `state.json`) in [`LAST_FILE`]. A previous attempt that never ran
/// leaves the file as it was (the run before it stays the last one that ended).
/// Best effort: without it only the `lastState` of a later agent process is missing.
fn keep_last(dir: &Path, restart_count: u32) {
    let Some(prev) = read_state_in(dir) else {
        return;
    };
    if prev.restart_count >= restart_count || !matches!(prev.status, Status::Terminated { .. }) {
        return;
    }
    let bytes = serde_json::to_vec_pretty(&prev.status).unwrap_or_default();
    if let Err(e) = shim::write_atomic(dir, LAST_FILE, &bytes) {
        warn!(dir = %dir.display(), error = %e, "keeping the previous run's end");
    }
}

/// The log file of one start of a container.
pub fn log_path(dir: &Path, restart: u32) -> PathBuf {
    dir.join("logs").join(format!("{restart}.log"))
}

/// What to start: a container `id` running `config` from `image` inside `sandbox`.
#[derive(Debug)]
pub struct Launch<'a> {
    pub id: &'a str,
    pub image: &'a Image,
    pub config: &'a ContainerConfig,
    pub sandbox: &'a SandboxContext,
    pub io: Io,
    /// How many times this container ran before: names its log file; a restart gets a fresh
    /// writable layer, as in Kubernetes.
    pub restart_count: u32,
}

/// Builds the bundle for the launch from its image and starts it with `runtime`.
pub async fn start(
    data_dir: &Path,
    store: &ImageStore,
    runtime: Arc<dyn Runtime>,
    launch: Launch<'_>,
) -> Result<Started, ContainerError> {
    let Launch {
        id,
        image,
        config,
        sandbox,
        io: io_mode,
        restart_count,
    } = launch;
    let dir = dir(data_dir, id);
    std::fs::create_dir_all(dir.join("logs")).map_err(io("create", &dir))?;
    if restart_count > 0 {
        keep_last(&dir, restart_count);
        rootfs::unmount(&dir)?;
        for d in ["upper", "work"] {
            let p = dir.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(io("remove", &p))?;
            }
        }
    }
    let rootfs = rootfs::mount(&store.lower_dirs(image), &dir)?;
    debug!(%id, "root filesystem mounted");
    let read = |p: &str| std::fs::read_to_string(rootfs.join(p)).unwrap_or_default();
    let image_user = image
        .config
        .config
        .as_ref()
        .and_then(|c| c.user.clone())
        .unwrap_or_default();
    let user = spec::resolve_user(&image_user, &read("etc/passwd"), &read("etc/group"))?;

    // Memory is limited on a parent cgroup we own, so the OOM verdict outlives the runtime's leaf.
    let mut sb = sandbox.clone();
    let mut cfg = config.clone();
    // Cgroups are host-wide: scope them by data dir so two engines on one host never collide.
    let scope = format!(
        "nodeless-{}",
        &crate::digest::Digest::of(data_dir.as_os_str().as_encoded_bytes()).hex()[..8]
    );
    // A gVisor container that is the root of its own sandbox (not joining a pod's) is limited
    // the same way: the sandbox ends when it goes over, which the parent's figures tell.
    let own_sandbox = match runtime.kind() {
        RuntimeKind::Container => true,
        RuntimeKind::Gvisor => !sandbox.joins_sandbox(),
        _ => false,
    };
    let cgroup = match (config.resources.memory_bytes, memory_cgroup_root()) {
        (Some(limit), Some(root)) if own_sandbox => {
            // Below the cgroup the caller chose (a solo pod's sandbox cgroup), else our own.
            let base = sb
                .cgroups_path
                .clone()
                .unwrap_or_else(|| format!("/{scope}/{id}"));
            let cg = root.join(base.trim_start_matches('/'));
            std::fs::create_dir_all(&cg).map_err(io("create cgroup", &cg))?;
            for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
                let _ = std::fs::write(cg.join(f), limit.to_string());
            }
            // runsc sizes the sentry (its total memory) from the leaf's limit: gVisor keeps it.
            if runtime.kind() == RuntimeKind::Container {
                cfg.resources.memory_bytes = None;
            }
            sb.cgroups_path = Some(format!("{base}/ctr"));
            Some(cg)
        }
        _ => {
            if sb.cgroups_path.is_none() {
                sb.cgroups_path = Some(format!("/{scope}/{id}"));
            }
            None
        }
    };
    // A container joined to a pod's gVisor sandbox: runsc does not hold it to its memory and
    // CPU limits, a watchdog does (see `limitwatch`).
    let limit_watch = limit_watch(runtime.kind(), config, &sb);
    // Under a shim, a container may keep a stdin and a terminal (the pod spec's `stdin`,
    // `stdinOnce`, `tty`, see [`shim::StdinSpec`]). With `tty` the spec's process has
    // `terminal: true` and the runtime allocates the terminal, the container's controlling
    // one, and sends its master side to the shim (`--console-socket`).
    let shimmed =
        matches!(io_mode, Io::Logged) && shim::binary().is_some() && runtime.config().is_some();
    let mut stdio_spec = shim::StdinSpec::read(&dir);
    if shimmed && (cfg.tty || stdio_spec.tty) {
        stdio_spec.tty = true;
        cfg.tty = true;
    }
    let mut oci = spec::runtime_spec(&cfg, &image.config, user, &rootfs, &sb)?;
    // A terminal of a known size is made that size before the container runs.
    if cfg.tty
        && let Some((rows, cols)) = shim::read_terminal_size(&dir)
        && let Ok(size) = oci_spec::runtime::BoxBuilder::default()
            .height(u64::from(rows))
            .width(u64::from(cols))
            .build()
        && let Some(process) = oci.process_mut()
    {
        process.set_console_size(Some(size));
    }
    let cfg_path = dir.join("config.json");
    std::fs::write(
        &cfg_path,
        serde_json::to_vec_pretty(&oci).unwrap_or_default(),
    )
    .map_err(io("write", &cfg_path))?;

    let mut state = State {
        id: id.to_owned(),
        name: config.name.clone(),
        image: image.name.clone(),
        runtime: runtime.kind(),
        restart_count,
        status: Status::Waiting {
            reason: "ContainerCreating".into(),
        },
    };
    // A leftover from an earlier life of this id would make `run` fail.
    runtime.delete(id).await?;
    debug!(%id, "bundle written");
    if runtime.kind() == RuntimeKind::Gvisor {
        keep_sandbox_oom_baseline(&dir, &sb);
    }
    let cgroups_path = sb.cgroups_path.clone();
    if matches!(io_mode, Io::Logged)
        && let (Some(binary), Some(config)) = (shim::binary(), runtime.config())
    {
        let spec = shim::Spec {
            id: id.to_owned(),
            runtime: config,
            restart_count,
            memory_cgroup: cgroup,
            cgroups_path,
            state,
            stdio: stdio_spec,
            limit_watch,
        };
        return start_shim(binary, &dir, runtime, spec).await;
    }
    let stdio = match &io_mode {
        Io::Inherit => Stdio {
            stdin: std::process::Stdio::inherit(),
            stdout: std::process::Stdio::inherit(),
            stderr: std::process::Stdio::inherit(),
            foreground: true,
        },
        Io::StdinTee(_) => Stdio {
            stdin: std::process::Stdio::inherit(),
            ..Stdio::piped()
        },
        _ => Stdio::piped(),
    };
    let mut child = runtime.spawn(id, &dir, stdio).await?;
    let watch = limit_watch.and_then(|w| crate::limitwatch::Watch::start(runtime.as_ref(), id, w));
    state.status = Status::Running { started_at: now() };
    write_state(&dir, &state)?;
    debug!(%id, runtime = %runtime.kind(), "container started");
    let tee = match io_mode {
        Io::LoggedTee(t) | Io::StdinTee(t) => Some(t),
        _ => None,
    };
    let pumps = start_pumps(&mut child, &log_path(&dir, restart_count), tee);
    Ok(Started {
        id: id.to_owned(),
        dir,
        runtime,
        state,
        how: Running::Child {
            process: child,
            pumps,
            cgroup,
            cgroups_path,
            watch,
        },
    })
}

/// The watchdog of a container's memory and CPU limits, for a gVisor container that joins a
/// pod's sandbox (`sandbox`: its context, with the pod's cgroup above its own). Pure.
pub fn limit_watch(
    kind: RuntimeKind,
    config: &ContainerConfig,
    sandbox: &SandboxContext,
) -> Option<crate::limitwatch::Spec> {
    let (memory, cpu_millis) = (config.resources.memory_bytes, config.resources.cpu_millis);
    if kind != RuntimeKind::Gvisor
        || !sandbox.joins_sandbox()
        || (memory.is_none() && cpu_millis.is_none())
    {
        return None;
    }
    let sandbox_id = sandbox
        .annotations
        .iter()
        .find(|(k, _)| k == crate::runtime::SANDBOX_ID)?
        .1
        .clone();
    let pod_cgroup = sandbox
        .cgroups_path
        .as_deref()
        .and_then(|p| Path::new(p.trim_start_matches('/')).parent())
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_string_lossy().into_owned());
    Some(crate::limitwatch::Spec {
        sandbox_id,
        memory,
        cpu_millis,
        pod_cgroup,
    })
}

/// Copies the process's stdout and stderr into the log at `log` (and to `tee`).
fn start_pumps(child: &mut crate::runtime::Process, log: &Path, tee: Option<Tee>) -> Vec<Pump> {
    let mut pumps = Vec::new();
    if let Some(out) = child.stdout.take() {
        let (l, t) = (log.to_owned(), tee.clone());
        pumps.push(tokio::spawn(async move {
            logs::pump(out, Stream::Stdout, &l, t).await
        }));
    }
    if let Some(err) = child.stderr.take() {
        let (l, t) = (log.to_owned(), tee);
        pumps.push(tokio::spawn(async move {
            logs::pump(err, Stream::Stderr, &l, t).await
        }));
    }
    pumps
}

/// How long a shim may take to report that its container runs (a loaded host, a slow runsc).
const SHIM_READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Starts `binary sandbox shim --dir DIR` for the bundle in `dir` and waits for its report.
async fn start_shim(
    binary: &Path,
    dir: &Path,
    runtime: Arc<dyn Runtime>,
    spec: shim::Spec,
) -> Result<Started, ContainerError> {
    let id = spec.id.clone();
    for f in [shim::EXIT_FILE, shim::PID_FILE] {
        let p = dir.join(f);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", &p)(e)),
            _ => {}
        }
    }
    let logs_dir = dir.join("logs");
    std::fs::create_dir_all(&logs_dir).map_err(io("create", &logs_dir))?;
    write_state(dir, &spec.state)?;
    let spec_path = dir.join(shim::SPEC_FILE);
    shim::write_atomic(
        dir,
        shim::SPEC_FILE,
        &serde_json::to_vec_pretty(&spec).unwrap_or_default(),
    )
    .map_err(io("write", &spec_path))?;
    let log_path = dir.join(shim::LOG_FILE);
    let shim_log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io("open", &log_path))?;
    // Not in our process group: the shim makes its own session at once.
    let abs = std::fs::canonicalize(dir).map_err(io("resolve", dir))?;
    let mut child = tokio::process::Command::new(binary)
        .arg("sandbox")
        .arg("shim")
        .arg("--dir")
        .arg(&abs)
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(shim_log)
        .kill_on_drop(false)
        .spawn()
        .map_err(io("start shim", binary))?;
    let pid = child.id().unwrap_or(0);
    let mut line = String::new();
    let read = async {
        if let Some(out) = child.stdout.take() {
            let mut r = tokio::io::BufReader::new(out);
            let _ = tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line).await;
        }
    };
    let timed_out = tokio::time::timeout(SHIM_READY_TIMEOUT, read)
        .await
        .is_err();
    let line = line.trim();
    if line == "ok" {
        let state = read_state_in(dir).unwrap_or(spec.state);
        debug!(%id, pid, runtime = %runtime.kind(), "container started under its shim");
        return Ok(Started {
            id,
            dir: dir.to_owned(),
            runtime,
            state,
            how: Running::Shim {
                pid,
                child: Some(child),
            },
        });
    }
    let message = if timed_out {
        let _ = child.start_kill();
        format!("no report within {SHIM_READY_TIMEOUT:?}")
    } else if let Some(m) = line.strip_prefix("error: ") {
        m.to_owned()
    } else {
        let status = child.wait().await.map_err(io("wait for shim", binary))?;
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(3).collect();
        format!(
            "exited ({status}) before reporting: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    };
    // Reap it (a failed shim exits right after its report).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await;
    Err(ContainerError::Shim { id, message })
}

fn read_state_in(dir: &Path) -> Option<State> {
    let b = std::fs::read(dir.join("state.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Starts the pod's gVisor pause (sandbox) container from the bundle the caller wrote in
/// [`dir`]`(data_dir, id)` (its `config.json`; the root filesystem is the caller's). Under a
/// shim when one is set, so it outlives this process; its output goes to `logs/0.log`. The
/// caller may drop the returned [`Started`]: the pause lives until it is killed, and
/// [`adopt`] finds it again.
pub async fn start_pause(
    data_dir: &Path,
    runtime: Arc<dyn Runtime>,
    id: &str,
) -> Result<Started, ContainerError> {
    let dir = dir(data_dir, id);
    std::fs::create_dir_all(dir.join("logs")).map_err(io("create", &dir))?;
    let mut state = State {
        id: id.to_owned(),
        name: "pause".into(),
        image: String::new(),
        runtime: runtime.kind(),
        restart_count: 0,
        status: Status::Waiting {
            reason: "ContainerCreating".into(),
        },
    };
    runtime.delete(id).await?;
    if let (Some(binary), Some(config)) = (shim::binary(), runtime.config()) {
        let spec = shim::Spec {
            id: id.to_owned(),
            runtime: config,
            restart_count: 0,
            memory_cgroup: None,
            cgroups_path: None,
            state,
            stdio: shim::StdinSpec::default(),
            limit_watch: None,
        };
        return start_shim(binary, &dir, runtime, spec).await;
    }
    let mut child = runtime.spawn(id, &dir, Stdio::piped()).await?;
    state.status = Status::Running { started_at: now() };
    write_state(&dir, &state)?;
    let pumps = start_pumps(&mut child, &log_path(&dir, 0), None);
    Ok(Started {
        id: id.to_owned(),
        dir,
        runtime,
        state,
        how: Running::Child {
            process: child,
            pumps,
            cgroup: None,
            cgroups_path: None,
            watch: None,
        },
    })
}

/// Finds container `id` again after this process (or an earlier one) started it under a shim:
/// running -> a [`Started`] whose [`Started::wait`] resolves when it exits; ended while nobody
/// watched -> one whose `wait` gives the recorded exit at once; never started (or not under a
/// shim) -> `None`. A shim that died without recording the end (killed) yields a `Started`
/// whose `wait` stops what is left of the container and reports exit code 255, reason Unknown.
pub async fn adopt(data_dir: &Path, runtime: Arc<dyn Runtime>, id: &str) -> Option<Started> {
    let dir = dir(data_dir, id);
    let state = read_state_in(&dir)?;
    let found = |how| Started {
        id: id.to_owned(),
        dir: dir.clone(),
        runtime: runtime.clone(),
        state: state.clone(),
        how,
    };
    if let Some(rec) = shim::read_exit(&dir) {
        return Some(found(Running::Exited(rec)));
    }
    let pid = shim::read_pid(&dir)?;
    if shim::is_alive(pid, &dir) {
        return Some(found(Running::Shim { pid, child: None }));
    }
    // It may have finished between the two looks.
    if let Some(rec) = shim::read_exit(&dir) {
        return Some(found(Running::Exited(rec)));
    }
    match state.status {
        Status::Running { .. } => Some(found(Running::Shim { pid, child: None })),
        _ => None,
    }
}

fn memory_cgroup_root() -> Option<PathBuf> {
    let p = PathBuf::from("/sys/fs/cgroup/memory");
    p.join("memory.limit_in_bytes").exists().then_some(p)
}

/// Removes the (empty) cgroup directories of `path` and its empty parents up to the root, in
/// every hierarchy; the runtime removes only its leaf. Best effort: rmdir fails on busy cgroups.
fn remove_cgroups(path: &str) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in rd.flatten() {
        let mut p = Path::new(path.trim_start_matches('/')).to_path_buf();
        loop {
            if p.as_os_str().is_empty()
                || std::fs::remove_dir(h.path().join(&p)).is_err() && h.path().join(&p).exists()
            {
                break;
            }
            if !p.pop() {
                break;
            }
        }
    }
}

/// Whether the memory cgroup at `cg` saw an OOM kill. Its `oom_kill` counter is the direct
/// evidence, but some kernels count it (and `failcnt`) only in the already removed leaf; so a
/// SIGKILL exit with the peak usage at the limit counts as well.
pub(crate) fn oom_killed(cg: &Path, code: i32) -> bool {
    let read = |f: &str| std::fs::read_to_string(cg.join(f)).unwrap_or_default();
    let num = |f: &str| read(f).trim().parse::<u64>().unwrap_or(0);
    let kills: u64 = read("memory.oom_control")
        .lines()
        .find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0);
    let limit = num("memory.limit_in_bytes");
    let peak = num("memory.max_usage_in_bytes");
    kills > 0
        || num("memory.failcnt") > 0
        || (code == 137 && limit > 0 && peak + 256 * 1024 >= limit)
}

/// The file in the directory of a container joined to a pod's gVisor sandbox that keeps, from
/// the start of its current run, the sandbox's id, its memory cgroup (the pod's size) and the
/// OOM kills that cgroup had counted then ([`SandboxOom`]).
pub const SANDBOX_OOM_FILE: &str = "sandbox-oom.json";

/// What a joined container's run needs to tell, at its end, whether the host kernel OOM-killed
/// its pod's sandbox meanwhile (see [`sandbox_oom_killed`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxOom {
    /// The sandbox's root container (the pod's pause container).
    pub sandbox: String,
    /// The sandbox's memory cgroup directory.
    pub cgroup: PathBuf,
    /// Its `oom_kill` counter when the run started.
    pub oom_kills_at_start: u64,
}

/// The `oom_kill` counter in the text of a memory cgroup's `memory.oom_control` (v1) or
/// `memory.events` (v2): both have an `oom_kill N` line. Pure.
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// The `oom_kill` counter of the memory cgroup directory `cg`, v1 or v2.
fn oom_kills(cg: &Path) -> Option<u64> {
    ["memory.oom_control", "memory.events"]
        .iter()
        .find_map(|f| parse_oom_kills(&std::fs::read_to_string(cg.join(f)).ok()?))
}

/// Whether a joined container's run ended because the host kernel OOM-killed its pod's sandbox
/// (the sentry, whose memory is every container's: all of them end with it). Pure. Needed: the
/// sandbox's cgroup counted an OOM kill since the run started (one before, e.g. of an earlier
/// run's sandbox process, does not count), the sandbox no longer runs (a kill that left it
/// running ended no container), and the run did not report an exit of its own: `code` is
/// `None` (runsc could not say: the sentry was gone), 137 (SIGKILL) or 255 (what a shim records
/// when runsc could not say). A container that exited on its own just before a neighbour took
/// the sandbox down keeps its code.
pub fn sandbox_oom_killed(
    kills_at_start: u64,
    kills_at_end: u64,
    sandbox_running: bool,
    code: Option<i32>,
) -> bool {
    kills_at_end > kills_at_start && !sandbox_running && matches!(code, None | Some(137 | 255))
}

/// The memory cgroup directory of the pod sandbox a joined container's cgroup (`cgroups_path`,
/// relative to the cgroup root) lies in: its parent, in the v1 memory hierarchy or the v2 one.
fn sandbox_memory_cgroup(cgroups_path: &str) -> Option<PathBuf> {
    let parent = Path::new(cgroups_path.trim_start_matches('/')).parent()?;
    if parent.as_os_str().is_empty() {
        return None;
    }
    let root = memory_cgroup_root().unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
    Some(root.join(parent))
}

/// Before a run of a container joined to a pod's gVisor sandbox: keeps the sandbox's OOM kill
/// count in [`SANDBOX_OOM_FILE`] (an earlier run's file goes). Best effort, logged: without it
/// a sandbox OOM kill is reported as the exit runsc gives.
fn keep_sandbox_oom_baseline(dir: &Path, sb: &SandboxContext) {
    let _ = std::fs::remove_file(dir.join(SANDBOX_OOM_FILE));
    let sandbox = sb
        .annotations
        .iter()
        .find(|(k, _)| k == crate::runtime::SANDBOX_ID)
        .map(|(_, v)| v.clone());
    let (Some(sandbox), Some(cgroup)) = (
        sandbox,
        sb.cgroups_path.as_deref().and_then(sandbox_memory_cgroup),
    ) else {
        return;
    };
    let Some(oom_kills_at_start) = oom_kills(&cgroup) else {
        debug!(cgroup = %cgroup.display(), "no OOM kill counter for the pod's sandbox");
        return;
    };
    let rec = SandboxOom {
        sandbox,
        cgroup,
        oom_kills_at_start,
    };
    let bytes = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    if let Err(e) = shim::write_atomic(dir, SANDBOX_OOM_FILE, &bytes) {
        warn!(dir = %dir.display(), error = %e, "keeping the sandbox's OOM kill count");
    }
}

/// At the end of a run of the container in `dir` (exit `code`, `None` when the runtime could
/// not tell): whether its pod's gVisor sandbox was OOM-killed meanwhile ([`sandbox_oom_killed`]
/// over what [`keep_sandbox_oom_baseline`] kept). Asks the runtime about the sandbox only after
/// the counter rose.
pub(crate) async fn ended_with_oom_killed_sandbox(
    runtime: &Arc<dyn Runtime>,
    id: &str,
    dir: &Path,
    code: Option<i32>,
) -> bool {
    let Some(rec) = std::fs::read(dir.join(SANDBOX_OOM_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<SandboxOom>(&b).ok())
    else {
        return false;
    };
    // Gone with the pod: the count can no longer have risen.
    let kills_at_end = oom_kills(&rec.cgroup).unwrap_or(rec.oom_kills_at_start);
    if !sandbox_oom_killed(rec.oom_kills_at_start, kills_at_end, false, code) {
        return false;
    }
    let running = matches!(
        runtime.status(&rec.sandbox).await,
        Ok(Some(s)) if s == "running"
    );
    let oom = sandbox_oom_killed(rec.oom_kills_at_start, kills_at_end, running, code);
    if oom {
        warn!(
            %id,
            sandbox = %rec.sandbox,
            kills = kills_at_end - rec.oom_kills_at_start,
            "the pod's sandbox was OOM-killed: the container's end is OOMKilled"
        );
    }
    oom
}

/// Waits for the log pumps to finish after the process exited.
pub(crate) async fn drain_pumps(id: &str, pumps: Vec<Pump>) {
    for mut p in pumps {
        // Output still buffered in the pipe drains quickly; a pipe some other process
        // still holds open must not keep us waiting.
        match tokio::time::timeout(std::time::Duration::from_secs(2), &mut p).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(%id, error = %e, "log pump failed"),
            Ok(Err(e)) => warn!(%id, error = %e, "log pump panicked"),
            Err(_) => {
                p.abort();
                warn!(%id, "log pipe still open after exit; stopped reading it");
            }
        }
    }
}

/// Releases what an exited container held: the runtime's state, the root filesystem mount,
/// our memory cgroup and its cgroup directories. The writable layer and logs stay.
pub(crate) async fn release(
    runtime: &Arc<dyn Runtime>,
    id: &str,
    dir: &Path,
    memory_cgroup: Option<&Path>,
    cgroups_path: Option<&str>,
) -> Result<(), ContainerError> {
    if let Err(e) = runtime.delete(id).await {
        warn!(%id, error = %e, "runtime delete failed");
    }
    let unmounted = rootfs::unmount(dir);
    if let Some(cg) = memory_cgroup {
        let _ = std::fs::remove_dir(cg.join("ctr"));
        let _ = std::fs::remove_dir(cg);
    }
    if let Some(path) = cgroups_path {
        remove_cgroups(path);
    }
    Ok(unmounted?)
}

/// Waits until the shim `pid` of the container in `dir` has exited or recorded the end.
async fn shim_done(pid: u32, child: Option<&mut tokio::process::Child>, dir: &Path) {
    if let Some(c) = child {
        let _ = c.wait().await;
        return;
    }
    // `AsyncFd::new` is deprecated for fds it does not own; it owns this OwnedFd outright.
    #[allow(deprecated)]
    let pidfd = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap_or(0))
        .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
        .and_then(|fd| tokio::io::unix::AsyncFd::new(fd).ok());
    // Opened after the pid was read: make sure it still is that shim.
    if !shim::is_alive(pid, dir) {
        return;
    }
    loop {
        if dir.join(shim::EXIT_FILE).exists() {
            return;
        }
        let tick = std::time::Duration::from_millis(500);
        match &pidfd {
            // A pidfd turns readable when the process exits (zombie or reaped).
            Some(fd) => {
                if tokio::time::timeout(tick, fd.readable()).await.is_ok() {
                    return;
                }
            }
            None => {
                if !shim::is_alive(pid, dir) {
                    return;
                }
                tokio::time::sleep(tick).await;
            }
        }
    }
}

impl Started {
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The container's record as it was when started (or adopted).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The pid of the container's shim, when it runs under one.
    pub fn shim_pid(&self) -> Option<u32> {
        match &self.how {
            Running::Shim { pid, .. } => Some(*pid),
            _ => None,
        }
    }

    /// Waits for the container to exit, records the result, and releases the runtime's state and
    /// the root filesystem mount (the writable layer and logs stay until [`remove`]).
    pub async fn wait(self) -> Result<Exit, ContainerError> {
        let Started {
            id,
            dir,
            runtime,
            mut state,
            how,
        } = self;
        let record = match how {
            Running::Exited(rec) => pod_oom_record(&runtime, &id, &dir, &state, rec).await,
            Running::Shim { pid, mut child } => {
                shim_done(pid, child.as_mut(), &dir).await;
                let rec = match shim::read_exit(&dir) {
                    Some(rec) => rec,
                    None => shim_lost(&runtime, &id, &dir, &state).await?,
                };
                pod_oom_record(&runtime, &id, &dir, &state, rec).await
            }
            Running::Child {
                mut process,
                pumps,
                cgroup,
                cgroups_path,
                watch,
            } => {
                let waited = process.wait().await;
                // runsc cannot tell the exit of a container whose sandbox was killed.
                let pod_oom = ended_with_oom_killed_sandbox(
                    &runtime,
                    &id,
                    &dir,
                    waited.as_ref().ok().copied(),
                )
                .await;
                let code = match waited {
                    _ if pod_oom => 137,
                    w => w.map_err(io("wait", &dir))?,
                };
                drain_pumps(&id, pumps).await;
                let oom_killed = pod_oom
                    || cgroup.as_deref().is_some_and(|cg| oom_killed(cg, code))
                    || watch.as_ref().is_some_and(crate::limitwatch::Watch::fired);
                drop(watch);
                let started_at = match &state.status {
                    Status::Running { started_at } => started_at.clone(),
                    _ => now(),
                };
                let rec = ExitRecord {
                    exit_code: code,
                    oom_killed,
                    reason: exit_reason(code, oom_killed).into(),
                    started_at,
                    finished_at: now(),
                    restart_count: state.restart_count,
                };
                state.status = rec.status();
                write_state(&dir, &state)?;
                release(
                    &runtime,
                    &id,
                    &dir,
                    cgroup.as_deref(),
                    cgroups_path.as_deref(),
                )
                .await?;
                rec
            }
        };
        state.status = record.status();
        state.restart_count = record.restart_count;
        Ok(Exit {
            code: record.exit_code,
            oom_killed: record.oom_killed,
            state,
        })
    }
}

/// The end a shim recorded (`rec`), corrected when the container's pod sandbox was OOM-killed
/// ([`ended_with_oom_killed_sandbox`]; the shim tells only the container's own OOM kill):
/// exit 137, OOMKilled, written back to `exit.json` and `state.json`.
async fn pod_oom_record(
    runtime: &Arc<dyn Runtime>,
    id: &str,
    dir: &Path,
    state: &State,
    mut rec: ExitRecord,
) -> ExitRecord {
    if rec.oom_killed || !ended_with_oom_killed_sandbox(runtime, id, dir, Some(rec.exit_code)).await
    {
        return rec;
    }
    rec.exit_code = 137;
    rec.oom_killed = true;
    rec.reason = exit_reason(137, true).into();
    let bytes = serde_json::to_vec_pretty(&rec).unwrap_or_default();
    if let Err(e) = shim::write_atomic(dir, shim::EXIT_FILE, &bytes) {
        warn!(%id, error = %e, "recording the OOM kill of the pod's sandbox");
    }
    let mut st = state.clone();
    st.status = rec.status();
    st.restart_count = rec.restart_count;
    if let Err(e) = write_state(dir, &st) {
        warn!(%id, error = %e, "recording the OOM kill of the pod's sandbox");
    }
    rec
}

/// The shim of a container died without recording its end (it was killed): nobody pumps the
/// container's output any more, so what is left of it is stopped, and the end recorded as
/// exit code 255, reason Unknown (what the kubelet reports for a lost container).
async fn shim_lost(
    runtime: &Arc<dyn Runtime>,
    id: &str,
    dir: &Path,
    state: &State,
) -> Result<ExitRecord, ContainerError> {
    warn!(%id, "the container's shim is gone without recording an exit; stopping the container");
    let _ = runtime.kill(id, 9).await;
    let spec: Option<shim::Spec> = std::fs::read(dir.join(shim::SPEC_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let (cg, path) = spec
        .map(|s| (s.memory_cgroup, s.cgroups_path))
        .unwrap_or_default();
    if let Err(e) = release(runtime, id, dir, cg.as_deref(), path.as_deref()).await {
        warn!(%id, error = %e, "releasing a lost container");
    }
    let rec = ExitRecord {
        exit_code: 255,
        oom_killed: false,
        reason: "Unknown".into(),
        started_at: match &state.status {
            Status::Running { started_at } => started_at.clone(),
            _ => now(),
        },
        finished_at: now(),
        restart_count: state.restart_count,
    };
    let mut st = state.clone();
    st.status = rec.status();
    write_state(dir, &st)?;
    let p = dir.join(shim::EXIT_FILE);
    shim::write_atomic(
        dir,
        shim::EXIT_FILE,
        &serde_json::to_vec_pretty(&rec).unwrap_or_default(),
    )
    .map_err(io("write", &p))?;
    Ok(rec)
}

/// Removes a stopped container's directory (writable layer, logs, state). A shim still
/// finishing up (the container was just killed) gets a few seconds to record the end first.
pub fn remove(data_dir: &Path, id: &str) -> Result<(), ContainerError> {
    let d = dir(data_dir, id);
    if let Some(pid) = shim::read_pid(&d) {
        for _ in 0..250 {
            if !shim::is_alive(pid, &d) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    rootfs::unmount(&d)?;
    match std::fs::remove_dir_all(&d) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &d)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(exit_reason(0, false), "Completed");
        assert_eq!(exit_reason(3, false), "Error");
        assert_eq!(exit_reason(137, true), "OOMKilled");
    }

    #[test]
    fn oom_kill_counters_of_both_cgroup_versions() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(parse_oom_kills(v1), Some(2));
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(v2), Some(1));
        assert_eq!(parse_oom_kills("oom_kill_disable 0\n"), None);
        assert_eq!(parse_oom_kills(""), None);
    }

    #[test]
    fn sandbox_oom_kill_ends_a_joined_container_as_oom_killed() {
        // The sentry was killed during the run: runsc could not tell the exit, or a shim
        // recorded that it could not (255), or the container was SIGKILLed.
        for code in [None, Some(137), Some(255)] {
            assert!(sandbox_oom_killed(0, 1, false, code), "{code:?}");
            assert!(sandbox_oom_killed(3, 5, false, code), "{code:?}");
        }
    }

    #[test]
    fn no_sandbox_oom_kill_without_a_new_kill_a_dead_sandbox_or_a_lost_exit() {
        // No kill counted during this run (one before it, e.g. of an earlier sandbox
        // process, does not count).
        assert!(!sandbox_oom_killed(0, 0, false, None));
        assert!(!sandbox_oom_killed(2, 2, false, Some(137)));
        // A kill that left the sandbox running ended no container with it.
        assert!(!sandbox_oom_killed(0, 1, true, None));
        assert!(!sandbox_oom_killed(0, 1, true, Some(137)));
        // An exit of the container's own, reported by the sentry (which was alive then),
        // stays what it was even if a neighbour took the sandbox down afterwards.
        for code in [0, 1, 2, 127, 143] {
            assert!(!sandbox_oom_killed(0, 1, false, Some(code)), "{code}");
        }
    }

    #[test]
    fn the_sandbox_cgroup_is_the_parent_of_a_joined_containers() {
        let cg = sandbox_memory_cgroup("/nodeless-1234/pod-p/c").unwrap();
        assert!(cg.ends_with("nodeless-1234/pod-p"), "{}", cg.display());
        assert!(cg.starts_with("/sys/fs/cgroup"));
        assert_eq!(sandbox_memory_cgroup("/top"), None);
    }

    #[test]
    fn limit_watch_only_for_limited_joined_gvisor_containers() {
        let limited = ContainerConfig {
            resources: crate::spec::Resources {
                cpu_millis: None,
                memory_bytes: Some(64 << 20),
            },
            ..Default::default()
        };
        let joined = SandboxContext {
            annotations: vec![
                (crate::runtime::CONTAINER_TYPE.into(), "container".into()),
                (crate::runtime::SANDBOX_ID.into(), "p-pause".into()),
            ],
            cgroups_path: Some("/nodeless-x/pod-p/web".into()),
            ..Default::default()
        };
        let w = limit_watch(RuntimeKind::Gvisor, &limited, &joined).unwrap();
        assert_eq!(
            (w.sandbox_id.as_str(), w.memory, w.cpu_millis),
            ("p-pause", Some(64 << 20), None)
        );
        assert_eq!(w.pod_cgroup.as_deref(), Some("nodeless-x/pod-p"));
        let cpu_only = ContainerConfig {
            resources: crate::spec::Resources {
                cpu_millis: Some(250),
                memory_bytes: None,
            },
            ..Default::default()
        };
        let w = limit_watch(RuntimeKind::Gvisor, &cpu_only, &joined).unwrap();
        assert_eq!((w.memory, w.cpu_millis), (None, Some(250)));
        let own = SandboxContext::default();
        assert_eq!(limit_watch(RuntimeKind::Gvisor, &limited, &own), None);
        assert_eq!(limit_watch(RuntimeKind::Container, &limited, &joined), None);
        let unlimited = ContainerConfig::default();
        assert_eq!(limit_watch(RuntimeKind::Gvisor, &unlimited, &joined), None);
    }

    #[test]
    fn a_restart_keeps_the_previous_runs_end() {
        let data = tempfile::tempdir().unwrap();
        let d = dir(data.path(), "p-c");
        std::fs::create_dir_all(&d).unwrap();
        let ended = Status::Terminated {
            exit_code: 3,
            reason: "Error".into(),
            started_at: "t0".into(),
            finished_at: "t1".into(),
        };
        let mut s = State {
            id: "p-c".into(),
            name: "c".into(),
            image: "img".into(),
            runtime: RuntimeKind::Container,
            restart_count: 0,
            status: ended.clone(),
        };
        write_state(&d, &s).unwrap();
        assert_eq!(read_last(data.path(), "p-c"), None);
        keep_last(&d, 1);
        assert_eq!(read_last(data.path(), "p-c"), Some(ended.clone()));
        // Run 1 never got going: a second attempt at it keeps run 0's end.
        s.restart_count = 1;
        s.status = Status::Waiting {
            reason: "ContainerCreating".into(),
        };
        write_state(&d, &s).unwrap();
        keep_last(&d, 1);
        assert_eq!(read_last(data.path(), "p-c"), Some(ended));
    }

    #[test]
    fn state_json_shape() {
        let s = State {
            id: "a".into(),
            name: "main".into(),
            image: "img".into(),
            runtime: RuntimeKind::Gvisor,
            restart_count: 0,
            status: Status::Terminated {
                exit_code: 1,
                reason: "Error".into(),
                started_at: "t0".into(),
                finished_at: "t1".into(),
            },
        };
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["runtime"], "gvisor");
        assert_eq!(j["status"]["state"], "terminated");
        assert_eq!(j["status"]["exitCode"], 1);
        assert_eq!(serde_json::from_value::<State>(j).unwrap(), s);
    }
}
