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
//! `shim.pid`, `shim.log` (the shim's own diagnostics), `exit.json`.
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
use crate::runtime::{RuntimeConfig, Stdio};

/// What the agent writes for the shim to run (`shim.json`).
pub const SPEC_FILE: &str = "shim.json";
/// The shim's pid, written before it starts the runtime.
pub const PID_FILE: &str = "shim.pid";
/// How the container ended, written by the shim when it has exited.
pub const EXIT_FILE: &str = "exit.json";
/// The shim's own log (its stderr).
pub const LOG_FILE: &str = "shim.log";

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
    let mut process = match runtime.spawn(&id, dir, Stdio::piped()).await {
        Ok(p) => p,
        Err(e) => {
            let message = chain(&e);
            report(&format!("error: {message}"));
            return Err(ShimError::Start { id, message });
        }
    };
    let started_at = container::now();
    let mut state = spec.state.clone();
    state.status = Status::Running {
        started_at: started_at.clone(),
    };
    if let Err(e) = container::write_state(dir, &state) {
        warn!(%id, error = %chain(&e), "writing state.json");
    }
    let mut pumps = Vec::new();
    for (pipe, stream) in [
        (
            process
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            Stream::Stdout,
        ),
        (
            process
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            Stream::Stderr,
        ),
    ] {
        if let Some(pipe) = pipe {
            let l = log.clone();
            pumps.push(tokio::spawn(async move {
                logs::pump(pipe, stream, &l, None).await
            }));
        }
    }
    report("ok");
    debug!(%id, "container running under its shim");

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

    let code = match process.wait().await {
        Ok(c) => c,
        Err(e) => {
            warn!(%id, error = %e, "waiting for the container; recording it as lost");
            255
        }
    };
    container::drain_pumps(&id, pumps).await;
    let oom_killed = spec
        .memory_cgroup
        .as_deref()
        .is_some_and(|cg| container::oom_killed(cg, code));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::RuntimeKind;

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
        };
        let j = serde_json::to_value(&spec).unwrap();
        assert_eq!(j["runtime"]["type"], "oci");
        assert_eq!(serde_json::from_value::<Spec>(j).unwrap(), spec);
    }
}
