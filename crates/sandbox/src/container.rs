//! Running one container from a stored image: its directory under `<data-dir>/containers/<id>`
//! (bundle, overlay root filesystem, writable layer, logs, `state.json`), the runtime process,
//! log pumps, exit code and the OOM verdict, then cleanup. Pods build on this.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::image::{Image, ImageStore};
use crate::logs::{self, Stream, Tee};
use crate::rootfs::{self, RootfsError};
use crate::runtime::{Runtime, RuntimeError, RuntimeKind, Stdio};
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

/// A container that was started; [`Started::wait`] reaps it.
pub struct Started {
    pub id: String,
    pub dir: PathBuf,
    process: crate::runtime::Process,
    pumps: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    runtime: Arc<dyn Runtime>,
    state: State,
    cgroup: Option<PathBuf>,
    /// The container's cgroup path (relative to each hierarchy), removed after exit.
    cgroups_path: Option<String>,
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

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// The directory of container `id`.
pub fn dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("containers").join(id)
}

fn write_state(dir: &Path, s: &State) -> Result<(), ContainerError> {
    let p = dir.join("state.json");
    let tmp = dir.join("state.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s).unwrap_or_default())
        .map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &p).map_err(io("rename", &p))
}

/// Reads a container's `state.json`.
pub fn read_state(data_dir: &Path, id: &str) -> Option<State> {
    let b = std::fs::read(dir(data_dir, id).join("state.json")).ok()?;
    serde_json::from_slice(&b).ok()
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
        rootfs::unmount(&dir)?;
        for d in ["upper", "work"] {
            let p = dir.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(io("remove", &p))?;
            }
        }
    }
    let rootfs = rootfs::mount(&store.lower_dirs(image), &dir)?;
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
    let cgroup = match (config.resources.memory_bytes, memory_cgroup_root()) {
        (Some(limit), Some(root)) if runtime.kind() == RuntimeKind::Container => {
            let cg = root.join(&scope).join(id);
            std::fs::create_dir_all(&cg).map_err(io("create cgroup", &cg))?;
            for f in ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"] {
                let _ = std::fs::write(cg.join(f), limit.to_string());
            }
            cfg.resources.memory_bytes = None;
            sb.cgroups_path = Some(format!("/{scope}/{id}/ctr"));
            Some(cg)
        }
        _ => {
            if sb.cgroups_path.is_none() {
                sb.cgroups_path = Some(format!("/{scope}/{id}"));
            }
            None
        }
    };
    let oci = spec::runtime_spec(&cfg, &image.config, user, &rootfs, &sb)?;
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
    state.status = Status::Running { started_at: now() };
    write_state(&dir, &state)?;
    debug!(%id, runtime = %runtime.kind(), "container started");
    let tee = match io_mode {
        Io::LoggedTee(t) | Io::StdinTee(t) => Some(t),
        _ => None,
    };
    let mut pumps = Vec::new();
    let log = log_path(&dir, restart_count);
    if let Some(out) = child.stdout.take() {
        let (l, t) = (log.clone(), tee.clone());
        pumps.push(tokio::spawn(async move {
            logs::pump(out, Stream::Stdout, &l, t).await
        }));
    }
    if let Some(err) = child.stderr.take() {
        let (l, t) = (log.clone(), tee.clone());
        pumps.push(tokio::spawn(async move {
            logs::pump(err, Stream::Stderr, &l, t).await
        }));
    }
    Ok(Started {
        id: id.to_owned(),
        dir,
        process: child,
        pumps,
        runtime,
        state,
        cgroup,
        cgroups_path: sb.cgroups_path.clone(),
    })
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
fn oom_killed(cg: &Path, code: i32) -> bool {
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

impl Started {
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// Waits for the container to exit, records the result, and releases the runtime's state and
    /// the root filesystem mount (the writable layer and logs stay until [`remove`]).
    pub async fn wait(mut self) -> Result<Exit, ContainerError> {
        let code = self.process.wait().await.map_err(io("wait", &self.dir))?;
        for mut p in self.pumps.drain(..) {
            // Output still buffered in the pipe drains quickly; a pipe some other process
            // still holds open must not keep us waiting.
            match tokio::time::timeout(std::time::Duration::from_secs(2), &mut p).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => warn!(id = %self.id, error = %e, "log pump failed"),
                Ok(Err(e)) => warn!(id = %self.id, error = %e, "log pump panicked"),
                Err(_) => {
                    p.abort();
                    warn!(id = %self.id, "log pipe still open after exit; stopped reading it");
                }
            }
        }
        let oom_killed = self
            .cgroup
            .as_deref()
            .is_some_and(|cg| oom_killed(cg, code));
        let started_at = match &self.state.status {
            Status::Running { started_at } => started_at.clone(),
            _ => now(),
        };
        self.state.status = Status::Terminated {
            exit_code: code,
            reason: exit_reason(code, oom_killed).into(),
            started_at,
            finished_at: now(),
        };
        write_state(&self.dir, &self.state)?;
        if let Err(e) = self.runtime.delete(&self.id).await {
            warn!(id = %self.id, error = %e, "runtime delete failed");
        }
        rootfs::unmount(&self.dir)?;
        if let Some(cg) = &self.cgroup {
            let _ = std::fs::remove_dir(cg.join("ctr"));
            let _ = std::fs::remove_dir(cg);
        }
        if let Some(path) = &self.cgroups_path {
            remove_cgroups(path);
        }
        Ok(Exit {
            code,
            oom_killed,
            state: self.state,
        })
    }
}

/// Removes a stopped container's directory (writable layer, logs, state).
pub fn remove(data_dir: &Path, id: &str) -> Result<(), ContainerError> {
    let d = dir(data_dir, id);
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
