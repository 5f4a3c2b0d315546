//! Per-container memory limits inside a shared gVisor sandbox (a pod with several containers
//! joined to its pause container). runsc 20221219 cannot enforce them: a subcontainer's host
//! cgroup stays empty (all of the pod's memory is the sentry's), the sentry's own cgroupfs
//! (`--cgroupfs`) puts every container in its root cgroup, counts `memory.usage_in_bytes`
//! sandbox-wide whatever the cgroup, and does not enforce `memory.limit_in_bytes`; `runsc
//! events --stats` gives every container the sandbox's figures (docs/adr, "per-container
//! memory limits in gVisor pods"). So a watchdog does it, from the container's shim (or its
//! waiter when there is no shim), and SIGKILLs the container when it is over its limit; the
//! end is then reported as OOMKilled (exit 137).
//!
//! Cheap by steps, every [`INTERVAL`]:
//! 1. The pod's host memory cgroup (the whole sandbox: sentry, stubs, gofers) is read: one
//!    file, no process. While it holds no more than the container's limit, the container
//!    cannot be over it (its pages are the sentry's, charged there).
//! 2. Otherwise a monitor inside the sandbox (a busybox `sh` loop `runsc exec`'d once into the
//!    pause container, started at the first need and kept) is asked, over its stdin, for the
//!    resident pages (`/proc/<pid>/statm`) of the container's processes, and answers with
//!    the sandbox's pid list too. Only shell builtins: no process per look.
//! 3. Which pids are the container's comes from `runsc ps` (root PID namespace, exec'd
//!    processes included), asked again only when a pid appears that was not there at the last
//!    ask: at most one runsc command per poll, none while the pod's processes stay the same.
//!
//! What counts is the resident memory of the container's processes, as the sentry tracks it;
//! files the container writes into a memory-backed filesystem are not counted (the pod's
//! size still limits the whole sandbox). Between two looks a container may go past its
//! limit for up to [`INTERVAL`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use crate::runtime::{OciRuntime, Runtime, RuntimeConfig, Stdio};

/// How often a watched container is looked at.
pub const INTERVAL: Duration = Duration::from_millis(300);

/// gVisor's page size (`/proc/<pid>/statm` counts pages).
const PAGE: u64 = 4096;

/// How long the monitor may take to answer one look (a loaded host).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The monitor's loop: for each line of pids on stdin, one line with every pid of the
/// sandbox (`/proc/N ...`), then `PID RESIDENT_PAGES` for each asked pid that still exists,
/// then `.`. Builtins only (`read`, `echo`, globbing); it ends at the end of its stdin or when
/// its stdout is gone.
const SCRIPT: &str = r#"while read -r pids; do set -- /proc/[0-9]*; echo "$*"; for p in $pids; do read -r -n 40 v r x < /proc/$p/statm && echo "$p $r"; done; echo . || exit; done"#;

/// What to watch, for a container that joins a pod's gVisor sandbox and has a memory limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The pod's sandbox (pause) container: the monitor runs there.
    pub sandbox_id: String,
    /// The container's memory limit in bytes.
    pub limit: u64,
    /// The host memory cgroup directory that holds the whole sandbox: while its usage is
    /// within the limit, nothing else is looked at.
    pub pod_cgroup: Option<PathBuf>,
}

/// One answer of the monitor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Every process of the sandbox.
    pub pids: BTreeSet<u32>,
    /// Resident pages of the asked processes that exist.
    pub resident: BTreeMap<u32, u64>,
}

impl Sample {
    /// Resident bytes of the processes in the sample. Pure.
    pub fn bytes(&self) -> u64 {
        self.resident.values().sum::<u64>().saturating_mul(PAGE)
    }
}

/// Parses one answer of the monitor (its lines without the final `.`). Pure.
pub fn parse_sample(lines: &[String]) -> Sample {
    let mut s = Sample::default();
    let Some((first, rest)) = lines.split_first() else {
        return s;
    };
    s.pids = first
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("/proc/")?.parse().ok())
        .collect();
    for l in rest {
        let mut w = l.split_whitespace();
        if let (Some(Ok(pid)), Some(Ok(pages))) =
            (w.next().map(str::parse), w.next().map(str::parse))
        {
            s.resident.insert(pid, pages);
        }
    }
    s
}

/// Whether the container's pids must be asked for again: it was never asked, or a process
/// appeared that was not there at the last ask (a fork, an exec into the container). Pure.
pub fn needs_refresh(sample: &Sample, known: &BTreeSet<u32>, asked: bool) -> bool {
    !asked || !sample.pids.is_subset(known)
}

/// A running watchdog; dropping it stops it.
#[derive(Debug)]
pub struct Watch {
    fired: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Starts watching container `id` of a runtime that another process can open (runsc):
    /// `None` for other runtimes.
    pub fn start(runtime: &dyn Runtime, id: &str, spec: Spec) -> Option<Watch> {
        let RuntimeConfig::Oci(rt) = runtime.config()?;
        let fired = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(watch(rt, id.to_owned(), spec, fired.clone()));
        Some(Watch { fired, task })
    }

    /// Whether the watchdog killed the container for going over its limit.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The monitor in the sandbox: a `runsc exec` child whose stdin and stdout we hold.
struct Monitor {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    out: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // The shell inside ends at its stdin's end or its next answer (broken pipe).
        let _ = self.child.start_kill();
    }
}

impl Monitor {
    fn start(rt: &OciRuntime, sandbox_id: &str) -> std::io::Result<Monitor> {
        // The pause's root filesystem is the host's static busybox alone.
        let args = ["/bin/busybox", "sh", "-c", SCRIPT].map(String::from);
        let stdio = Stdio {
            stdin: std::process::Stdio::piped(),
            stdout: std::process::Stdio::piped(),
            stderr: std::process::Stdio::piped(),
            foreground: false,
        };
        let mut child = rt
            .exec(sandbox_id, &args, false, stdio)
            .map_err(std::io::Error::other)?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.start_kill();
            return Err(std::io::Error::other("monitor without pipes"));
        };
        Ok(Monitor {
            child,
            stdin,
            out: tokio::io::BufReader::new(stdout).lines(),
        })
    }

    /// Asks for the resident pages of `pids`.
    async fn sample(&mut self, pids: &BTreeSet<u32>) -> std::io::Result<Sample> {
        let mut ask = pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" ");
        ask.push('\n');
        let answer = async {
            self.stdin.write_all(ask.as_bytes()).await?;
            self.stdin.flush().await?;
            let mut lines = Vec::new();
            loop {
                match self.out.next_line().await? {
                    Some(l) if l == "." => return Ok(lines),
                    Some(l) => lines.push(l),
                    None => {
                        // What runsc said, for the log.
                        let mut err = Vec::new();
                        if let Some(mut e) = self.child.stderr.take() {
                            let read = tokio::io::AsyncReadExt::read_to_end(&mut e, &mut err);
                            let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
                        }
                        return Err(std::io::Error::other(format!(
                            "the monitor ended: {}",
                            String::from_utf8_lossy(&err).trim()
                        )));
                    }
                }
            }
        };
        let lines = tokio::time::timeout(ANSWER_TIMEOUT, answer)
            .await
            .map_err(|_| std::io::Error::other("the monitor did not answer"))??;
        Ok(parse_sample(&lines))
    }
}

/// The usage of a memory cgroup directory (`memory.usage_in_bytes`, or v2's `memory.current`).
fn cgroup_usage(dir: &Path) -> Option<u64> {
    ["memory.usage_in_bytes", "memory.current"]
        .iter()
        .find_map(|f| std::fs::read_to_string(dir.join(f)).ok())
        .and_then(|s| s.trim().parse().ok())
}

async fn watch(rt: OciRuntime, id: String, spec: Spec, fired: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut monitor: Option<Monitor> = None;
    let (mut failures, mut skip) = (0u32, 0u32);
    // The container's pids at the last `runsc ps`, and every pid of the sandbox then.
    let mut mine = BTreeSet::new();
    let mut known = BTreeSet::new();
    let mut asked = false;
    debug!(%id, limit = spec.limit, "watching the container's memory");
    loop {
        tick.tick().await;
        if let Some(usage) = spec.pod_cgroup.as_deref().and_then(cgroup_usage)
            && usage <= spec.limit
        {
            continue;
        }
        // After failures, look less often (up to every 30 intervals).
        if failures > 0 {
            skip += 1;
            if skip < failures.min(30) {
                continue;
            }
            skip = 0;
        }
        let m = match &mut monitor {
            Some(m) => m,
            None => match Monitor::start(&rt, &spec.sandbox_id) {
                Ok(m) => monitor.insert(m),
                Err(e) => {
                    failures += 1;
                    warn!(%id, error = %e, "starting the memory monitor in the sandbox");
                    continue;
                }
            },
        };
        let mut sample = match m.sample(&mine).await {
            Ok(s) => s,
            Err(e) => {
                failures += 1;
                warn!(%id, error = %e, "memory monitor lost; starting it again");
                monitor = None;
                continue;
            }
        };
        if needs_refresh(&sample, &known, asked) {
            match rt.processes(&id).await {
                Ok(pids) => {
                    mine = pids.into_iter().collect();
                    known = sample.pids.union(&mine).copied().collect();
                    asked = true;
                }
                Err(e) => {
                    failures += 1;
                    debug!(%id, error = %e, "listing the container's processes");
                    continue;
                }
            }
            sample = match m.sample(&mine).await {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    warn!(%id, error = %e, "memory monitor lost; starting it again");
                    monitor = None;
                    continue;
                }
            };
        }
        failures = 0;
        let usage = sample.bytes();
        if usage > spec.limit {
            info!(%id, usage, limit = spec.limit, "container over its memory limit: killed");
            fired.store(true, Ordering::Release);
            if let Err(e) = rt.kill(&id, 9).await {
                warn!(%id, error = %e, "killing the container over its memory limit");
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples() {
        let lines = ["/proc/1 /proc/2 /proc/114", "2 868", "114 51200", "junk"]
            .map(String::from)
            .to_vec();
        let s = parse_sample(&lines);
        assert_eq!(s.pids, BTreeSet::from([1, 2, 114]));
        assert_eq!(s.resident, BTreeMap::from([(2, 868), (114, 51200)]));
        assert_eq!(s.bytes(), (868 + 51200) * 4096);
        assert_eq!(parse_sample(&[]), Sample::default());

        let known = BTreeSet::from([1, 2, 114, 200]);
        assert!(needs_refresh(&s, &known, false), "never asked");
        assert!(!needs_refresh(&s, &known, true), "same processes");
        let mut grown = s.clone();
        grown.pids.insert(300);
        assert!(needs_refresh(&grown, &known, true), "a new process");
    }
}
