//! Per-container limits inside a shared gVisor sandbox (a pod with several containers joined
//! to its pause container). runsc 20221219 enforces neither a container's memory limit nor its
//! CPU limit there: a subcontainer's host cgroup stays empty (all of the pod's memory and CPU
//! are the sentry's and its stubs'), the sentry's own cgroupfs (`--cgroupfs`) puts every
//! container in its root cgroup, counts `memory.usage_in_bytes` sandbox-wide whatever the
//! cgroup and enforces neither `memory.limit_in_bytes` nor a CPU quota; `runsc events --stats`
//! gives every container the sandbox's figures (docs/adr 010 and 011). So a watchdog does it,
//! from the container's shim (or its waiter when there is no shim):
//! - memory: a container over its limit is SIGKILLed and its end reported OOMKilled (137);
//! - CPU: a container that used more than its limit is stopped (SIGSTOP) until its share has
//!   paid for it, then continued (SIGCONT): a quota, as the kernel's CFS bandwidth control
//!   gives a cgroup, kept over [`INTERVAL`]s rather than 100 ms periods.
//!
//! Cheap by steps, every [`INTERVAL`]:
//! 1. The pod's host cgroup (the whole sandbox: sentry, stubs, gofers) is read: one file per
//!    resource, no process. While it holds no more memory than the container's limit, and
//!    used no more CPU since the last look than the container's share, the container cannot
//!    be over either.
//! 2. Otherwise a monitor inside the sandbox (a busybox `sh` loop `runsc exec`'d once into the
//!    pause container, started at the first need and kept) is asked, over its stdin, for the
//!    resident pages (`/proc/<pid>/statm`) and CPU ticks (`/proc/<pid>/stat`) of the
//!    container's processes, and answers with the sandbox's pid list too. The same monitor
//!    stops and continues them. Only shell builtins: no process per look.
//! 3. Which pids are the container's comes from `runsc ps` (root PID namespace, exec'd
//!    processes included), asked again only when a pid appears that was not there at the last
//!    ask: at most one runsc command per poll, none while the pod's processes stay the same.
//!
//! What counts is the resident memory and the CPU time of the container's processes, as the
//! sentry tracks them; files the container writes into a memory-backed filesystem and the
//! sentry's own work on its behalf are not counted (the pod's size still limits the whole
//! sandbox). Between two looks a container may go past its memory limit for up to
//! [`INTERVAL`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tracing::{debug, info, warn};

use crate::runtime::{OciRuntime, Runtime, RuntimeConfig, Stdio};

/// How often a watched container is looked at.
pub const INTERVAL: Duration = Duration::from_millis(300);

/// gVisor's page size (`/proc/<pid>/statm` counts pages).
const PAGE: u64 = 4096;

/// Clock ticks per second of `/proc/<pid>/stat`'s utime and stime (USER_HZ).
const TICKS_PER_SECOND: f64 = 100.0;

/// The longest single stop of a container over its CPU limit; a larger debt is paid over
/// several stops, so the container still shows some life (probes, logs) meanwhile.
const LONGEST_STOP: Duration = Duration::from_secs(2);

/// Stops shorter than this are not worth two signals.
const SHORTEST_STOP: Duration = Duration::from_millis(10);

/// How long the monitor may take to answer one look (a loaded host), beyond a stop it was
/// asked to hold.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The monitor's loop, one request per line of its stdin, each answered by lines ending with
/// `.`:
/// - `WHAT - PIDS` (`WHAT` holds `m` for memory, `c` for CPU): one line with every pid of the
///   sandbox (`/proc/N ...`), then `PID RESIDENT_PAGES CPU_TICKS` for each asked pid that
///   still exists (`-` for what was not asked);
/// - `t SECONDS PIDS`: stops the pids, waits that long, continues them. The wait is a `read`
///   of stdin with a timeout, so the end of stdin (the shim gone) continues them at once.
///
/// Builtins only (`read`, `echo`, `kill`, globbing); it ends at the end of its stdin or when
/// its stdout is gone.
const SCRIPT: &str = r#"while read -r what arg pids; do case $what in t) kill -STOP $pids 2>/dev/null; read -t $arg x; kill -CONT $pids 2>/dev/null;; *) set -- /proc/[0-9]*; echo "$*"; for p in $pids; do r=-; u=-; case $what in *m*) read -r -n 40 v r x 2>/dev/null < /proc/$p/statm || continue;; esac; case $what in *c*) read -r -n 400 l 2>/dev/null < /proc/$p/stat || continue; set -- ${l##*) }; u=$((${12}+${13}));; esac; echo "$p $r $u"; done;; esac; echo . || exit; done"#;

/// What to watch, for a container that joins a pod's gVisor sandbox and has a memory or CPU
/// limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    /// The pod's sandbox (pause) container: the monitor runs there.
    pub sandbox_id: String,
    /// The container's memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// The container's CPU limit in millicores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    /// The cgroup that holds the whole sandbox (a path relative to each hierarchy's root):
    /// while its usage is within the limits, nothing else is looked at.
    pub pod_cgroup: Option<String>,
}

/// One answer of the monitor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Every process of the sandbox.
    pub pids: BTreeSet<u32>,
    /// Resident pages of the asked processes that exist (when memory was asked).
    pub resident: BTreeMap<u32, u64>,
    /// CPU ticks (user + system) of the asked processes that exist (when CPU was asked).
    pub ticks: BTreeMap<u32, u64>,
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
        let Some(Ok(pid)) = w.next().map(str::parse::<u32>) else {
            continue;
        };
        if let Some(Ok(pages)) = w.next().map(str::parse) {
            s.resident.insert(pid, pages);
        }
        if let Some(Ok(ticks)) = w.next().map(str::parse) {
            s.ticks.insert(pid, ticks);
        }
    }
    s
}

/// Whether the container's pids must be asked for again: it was never asked, or a process
/// appeared that was not there at the last ask (a fork, an exec into the container). Pure.
pub fn needs_refresh(sample: &Sample, known: &BTreeSet<u32>, asked: bool) -> bool {
    !asked || !sample.pids.is_subset(known)
}

/// A container's CPU use against its limit: a bucket filled at the limit's rate (up to one
/// interval's worth, as a CFS quota does not carry over) and drained by what the container's
/// processes used. Sans IO: times are seconds from any fixed origin.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuBudget {
    /// The limit, in cores.
    rate: f64,
    /// Core-seconds the container may still use; negative when it owes.
    balance: f64,
    /// The last look: when, and each process's ticks then.
    last: Option<(f64, BTreeMap<u32, u64>)>,
}

impl CpuBudget {
    /// A budget for a limit of `millis` millicores.
    pub fn new(millis: u64) -> CpuBudget {
        let rate = millis.max(1) as f64 / 1000.0;
        CpuBudget {
            rate,
            balance: rate * INTERVAL.as_secs_f64(),
            last: None,
        }
    }

    /// Takes the look at `at` with each process's `ticks` into account: how long to stop the
    /// container, when it used more than its share since the last look. Looks may be far
    /// apart (skipped while the whole pod stayed within the container's share): the time and
    /// the ticks in between count together. A process seen for the first time counts from
    /// this look on; one gone since the last look counts nothing for its last moments.
    pub fn account(&mut self, at: f64, ticks: &BTreeMap<u32, u64>) -> Option<Duration> {
        let last = self.last.replace((at, ticks.clone()));
        let (then, before) = last?;
        let used: u64 = ticks
            .iter()
            .filter_map(|(pid, now)| Some(now.saturating_sub(*before.get(pid)?)))
            .sum();
        let cap = self.rate * INTERVAL.as_secs_f64();
        self.balance = (self.balance + self.rate * (at - then).max(0.0)
            - used as f64 / TICKS_PER_SECOND)
            .min(cap);
        if self.balance >= 0.0 {
            return None;
        }
        let stop = Duration::from_secs_f64(-self.balance / self.rate).min(LONGEST_STOP);
        (stop >= SHORTEST_STOP).then_some(stop)
    }
}

/// A running watchdog; dropping it stops it (a container it holds stopped is continued).
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

    /// Whether the watchdog killed the container for going over its memory limit.
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
        // The shell inside ends at its stdin's end or its next answer (broken pipe); a stop
        // it holds ends at once.
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

    /// Sends one request and reads its answer (the lines before `.`), allowing `extra` time
    /// beyond [`ANSWER_TIMEOUT`].
    async fn ask(&mut self, request: String, extra: Duration) -> std::io::Result<Vec<String>> {
        let answer = async {
            self.stdin.write_all(request.as_bytes()).await?;
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
        tokio::time::timeout(ANSWER_TIMEOUT + extra, answer)
            .await
            .map_err(|_| std::io::Error::other("the monitor did not answer"))?
    }

    /// Asks for the resident pages (`memory`) and CPU ticks (`cpu`) of `pids`.
    async fn sample(
        &mut self,
        memory: bool,
        cpu: bool,
        pids: &BTreeSet<u32>,
    ) -> std::io::Result<Sample> {
        let what = match (memory, cpu) {
            (true, true) => "mc",
            (true, false) => "m",
            (false, _) => "c",
        };
        let lines = self
            .ask(format!("{what} - {}\n", join(pids)), Duration::ZERO)
            .await?;
        Ok(parse_sample(&lines))
    }

    /// Stops `pids` for `how_long`, then continues them.
    async fn stop(&mut self, pids: &BTreeSet<u32>, how_long: Duration) -> std::io::Result<()> {
        let request = format!("t {:.3} {}\n", how_long.as_secs_f64(), join(pids));
        self.ask(request, how_long).await.map(drop)
    }
}

fn join(pids: &BTreeSet<u32>) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The memory usage of the cgroup at `rel` (v1's `memory.usage_in_bytes`, v2's
/// `memory.current`).
fn cgroup_memory(rel: &str) -> Option<u64> {
    let rel = rel.trim_start_matches('/');
    [
        Path::new("/sys/fs/cgroup/memory")
            .join(rel)
            .join("memory.usage_in_bytes"),
        Path::new("/sys/fs/cgroup").join(rel).join("memory.current"),
    ]
    .iter()
    .find_map(|f| std::fs::read_to_string(f).ok())
    .and_then(|s| s.trim().parse().ok())
}

/// The CPU time in nanoseconds the cgroup at `rel` used (v1's `cpuacct.usage`, v2's
/// `cpu.stat` `usage_usec`).
fn cgroup_cpu_ns(rel: &str) -> Option<u64> {
    let rel = rel.trim_start_matches('/');
    if let Ok(s) = std::fs::read_to_string(
        Path::new("/sys/fs/cgroup/cpuacct")
            .join(rel)
            .join("cpuacct.usage"),
    ) {
        return s.trim().parse().ok();
    }
    let stat =
        std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(rel).join("cpu.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|us| us * 1000)
}

/// Whether the pod, read from its cgroup, may hold a container over its limits: memory when
/// the whole pod uses more than the container may, CPU when the whole pod used more since the
/// last look than the container's share. `last_cpu` keeps the pod's CPU reading between looks.
fn pod_over(spec: &Spec, last_cpu: &mut Option<(Instant, u64)>) -> (bool, bool) {
    let Some(cg) = spec.pod_cgroup.as_deref() else {
        return (spec.memory.is_some(), spec.cpu_millis.is_some());
    };
    let memory = spec
        .memory
        .is_some_and(|limit| cgroup_memory(cg).is_none_or(|used| used > limit));
    let cpu = spec.cpu_millis.is_some_and(|millis| {
        let now = (Instant::now(), cgroup_cpu_ns(cg));
        let before = last_cpu.take();
        *last_cpu = now.1.map(|ns| (now.0, ns));
        match (before, now.1) {
            (Some((then, was)), Some(is)) => {
                let share = millis as f64 / 1000.0 * now.0.duration_since(then).as_secs_f64();
                is.saturating_sub(was) as f64 / 1e9 > share
            }
            _ => true,
        }
    });
    (memory, cpu)
}

/// The container's pids at the last `runsc ps`, and every pid of the sandbox then.
#[derive(Debug, Default)]
struct Pids {
    mine: BTreeSet<u32>,
    known: BTreeSet<u32>,
    asked: bool,
}

/// Why a look failed.
enum Lost {
    /// The monitor did not answer: it is started again.
    Monitor(std::io::Error),
    /// `runsc ps` failed.
    Processes(crate::runtime::RuntimeError),
}

/// One look at the container's processes (`what`: memory, CPU), with its pids asked of runsc
/// again first when a process appeared since the last ask.
async fn look(
    m: &mut Monitor,
    rt: &OciRuntime,
    id: &str,
    (memory, cpu): (bool, bool),
    pids: &mut Pids,
) -> Result<Sample, Lost> {
    let sample = m
        .sample(memory, cpu, &pids.mine)
        .await
        .map_err(Lost::Monitor)?;
    if !needs_refresh(&sample, &pids.known, pids.asked) {
        return Ok(sample);
    }
    pids.mine = rt
        .processes(id)
        .await
        .map_err(Lost::Processes)?
        .into_iter()
        .collect();
    pids.known = sample.pids.union(&pids.mine).copied().collect();
    pids.asked = true;
    m.sample(memory, cpu, &pids.mine)
        .await
        .map_err(Lost::Monitor)
}

async fn watch(rt: OciRuntime, id: String, spec: Spec, fired: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = Instant::now();
    let mut monitor: Option<Monitor> = None;
    let mut budget = spec.cpu_millis.map(CpuBudget::new);
    let mut pod_cpu = None;
    let (mut failures, mut skip) = (0u32, 0u32);
    let mut pids = Pids::default();
    debug!(%id, memory = spec.memory, cpu_millis = spec.cpu_millis, "watching the container's limits");
    loop {
        tick.tick().await;
        let (memory, cpu) = pod_over(&spec, &mut pod_cpu);
        if !memory && !cpu {
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
                    warn!(%id, error = %e, "starting the limits monitor in the sandbox");
                    continue;
                }
            },
        };
        let sample = match look(m, &rt, &id, (memory, cpu), &mut pids).await {
            Ok(s) => s,
            Err(Lost::Monitor(e)) => {
                failures += 1;
                warn!(%id, error = %e, "limits monitor lost; starting it again");
                monitor = None;
                continue;
            }
            Err(Lost::Processes(e)) => {
                failures += 1;
                debug!(%id, error = %e, "listing the container's processes");
                continue;
            }
        };
        failures = 0;
        if let Some(limit) = spec.memory.filter(|_| memory) {
            let usage = sample.bytes();
            if usage > limit {
                info!(%id, usage, limit, "container over its memory limit: killed");
                fired.store(true, Ordering::Release);
                if let Err(e) = rt.kill(&id, 9).await {
                    warn!(%id, error = %e, "killing the container over its memory limit");
                }
                return;
            }
        }
        let stop = budget
            .as_mut()
            .filter(|_| cpu)
            .and_then(|b| b.account(origin.elapsed().as_secs_f64(), &sample.ticks));
        if let Some(stop) = stop {
            debug!(%id, ?stop, "container over its CPU limit: stopped");
            if let Err(e) = m.stop(&pids.mine, stop).await {
                failures += 1;
                warn!(%id, error = %e, "limits monitor lost; starting it again");
                monitor = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples() {
        let lines = [
            "/proc/1 /proc/2 /proc/114",
            "2 868 -",
            "114 51200 37",
            "junk",
        ]
        .map(String::from)
        .to_vec();
        let s = parse_sample(&lines);
        assert_eq!(s.pids, BTreeSet::from([1, 2, 114]));
        assert_eq!(s.resident, BTreeMap::from([(2, 868), (114, 51200)]));
        assert_eq!(s.ticks, BTreeMap::from([(114, 37)]));
        assert_eq!(s.bytes(), (868 + 51200) * 4096);
        assert_eq!(parse_sample(&[]), Sample::default());
        let cpu_only = parse_sample(&["/proc/1".into(), "1 - 12".into()]);
        assert_eq!((cpu_only.bytes(), cpu_only.ticks[&1]), (0, 12));

        let known = BTreeSet::from([1, 2, 114, 200]);
        assert!(needs_refresh(&s, &known, false), "never asked");
        assert!(!needs_refresh(&s, &known, true), "same processes");
        let mut grown = s.clone();
        grown.pids.insert(300);
        assert!(needs_refresh(&grown, &known, true), "a new process");
    }

    /// Ticks of one process that has used `secs` of CPU.
    fn used(pid: u32, secs: f64) -> BTreeMap<u32, u64> {
        BTreeMap::from([(pid, (secs * TICKS_PER_SECOND).round() as u64)])
    }

    #[test]
    fn cpu_budget_stops_a_container_over_its_share() {
        // 250m: a busy process looked at every 0.3 s.
        let mut b = CpuBudget::new(250);
        assert_eq!(
            b.account(0.0, &used(7, 0.0)),
            None,
            "the first look is a baseline"
        );
        // It used a whole core for 0.3 s: 0.225 core-seconds over, plus the 0.075 it had.
        let stop = b.account(0.3, &used(7, 0.3)).unwrap();
        assert!((stop.as_secs_f64() - 0.6).abs() < 0.01, "{stop:?}");
        // Stopped 0.6 s, then 0.3 s busy again: stopped 0.9 s; the duty cycle settles at a
        // quarter.
        let stop = b.account(1.2, &used(7, 0.6)).unwrap();
        assert!((stop.as_secs_f64() - 0.9).abs() < 0.01, "{stop:?}");

        // Within its share: never stopped, and the unused share does not pile up.
        let mut b = CpuBudget::new(500);
        let mut t = 0.0;
        let mut total = 0.0;
        assert_eq!(b.account(t, &used(3, total)), None);
        for _ in 0..10 {
            t += 0.3;
            total += 0.1;
            assert_eq!(b.account(t, &used(3, total)), None);
        }
        assert!(b.balance <= 0.5 * INTERVAL.as_secs_f64() + 1e-9);

        // A tiny limit owes long: one stop is at most LONGEST_STOP.
        let mut b = CpuBudget::new(10);
        b.account(0.0, &used(1, 0.0));
        assert_eq!(b.account(0.3, &used(1, 0.3)), Some(LONGEST_STOP));
    }

    #[test]
    fn cpu_budget_counts_processes_it_saw_before() {
        let mut b = CpuBudget::new(1000);
        b.account(0.0, &BTreeMap::from([(1, 10), (2, 500)]));
        // Pid 2 ended, pid 3 is new (its 400 ticks are from before this look): only pid 1's
        // 20 ticks count.
        let ticks = BTreeMap::from([(1, 30), (3, 400)]);
        assert_eq!(b.account(0.3, &ticks), None);
        // Looks skipped for 10 s: what it used meanwhile counts against the whole time.
        assert_eq!(b.account(10.3, &BTreeMap::from([(1, 530)])), None);
        assert_eq!(b.account(20.3, &BTreeMap::from([(1, 1530)])), None);
        let stop = b.account(20.6, &BTreeMap::from([(1, 1610)])).unwrap();
        assert!((stop.as_secs_f64() - 0.2).abs() < 0.01, "{stop:?}");
    }
}
