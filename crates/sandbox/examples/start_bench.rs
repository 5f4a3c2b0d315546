//! Pod start benchmark: sandbox create -> first container process running, image cached, per
//! runtime, next to the bare tool (`runsc run` / `crun run`) on an equivalent bundle in the
//! same run.
//!
//! The busybox test image is built once (as `tests/common` does), pulled into a temporary data
//! dir, then for each runtime on this host (gvisor, container) N pods are started whose only
//! container runs `touch /r/ready` as its first act, `/r` being an emptyDir volume. The time is
//! taken from just before [`pod::start`] until the bench sees that file on the host (polled
//! every millisecond), so it covers the whole sandbox (for gVisor the pause container and the
//! container joining it) and the process really running. The container then exits and the pod
//! is removed before the next run. The pods get no pod network (no netns or bridge): gVisor
//! runs with `--network=none`, exactly like the bare runs.
//!
//! The bare runs start the same command on the same root filesystem (the image's layers under
//! one overlay mounted once), with the same spec generator and the same `/r` bind mount, with
//! `runsc --platform=ptrace --network=none run` and `crun run`, timed the same way.
//!
//! Usage: `cargo run --release -p sandbox --example start_bench -- [--runs N | --quick]
//! [--runtime gvisor|container]` (as root; N defaults to 50, `--quick` is 10).
//! Everything lives in a temporary directory removed at the end (mounts, runtime state,
//! cgroups are undone first); nothing leaves the host.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandbox::image::{Image, ImageStore, PullOptions, StoreOptions};
use sandbox::pod::{self, Host, VolumeFiles};
use sandbox::runtime::{self, Runtime, RuntimeKind};
use sandbox::spec::{ContainerConfig, Mount, SandboxContext};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Readiness is polled at this interval.
const POLL: Duration = Duration::from_millis(1);
/// A run that shows no readiness within this is a failure.
const TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    runs: usize,
    only: Option<RuntimeKind>,
    /// The program that runs container shims (what the agent sets), if any.
    shim: Option<PathBuf>,
    /// Density mode: keep up to this many idle pods running, added in steps of 25.
    density: Option<usize>,
}

/// The release `nodeless` binary of this workspace, when it was built.
fn default_shim() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/nodeless");
    p.is_file().then(|| std::fs::canonicalize(&p).unwrap_or(p))
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        runs: 50,
        only: None,
        shim: default_shim(),
        density: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.runs = 10,
            "--runs" => {
                args.runs = it.next().ok_or("--runs needs a number")?.parse()?;
                if args.runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
            }
            "--runtime" => {
                let r = it.next().ok_or("--runtime needs gvisor or container")?;
                args.only = Some(match r.parse()? {
                    runtime::RuntimeChoice::Kind(k) => k,
                    runtime::RuntimeChoice::Auto => return Err("--runtime: name one".into()),
                });
            }
            "--density" => {
                args.density = Some(it.next().ok_or("--density needs a number")?.parse()?);
            }
            "--shim" => {
                let p = it.next().ok_or("--shim needs a path or none")?;
                args.shim = (p != "none").then(|| PathBuf::from(p));
            }
            "-h" | "--help" => {
                println!(
                    "start_bench [--runs N | --quick] [--runtime gvisor|container] [--shim PATH|none]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(args)
}

/// Nearest-rank percentile of sorted `v`. Pure.
fn percentile(v: &[Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Waits until `path` exists; the time from `t0`.
async fn wait_ready(path: &Path, t0: Instant) -> Result<Duration, BoxError> {
    loop {
        if path.exists() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > TIMEOUT {
            return Err(format!("{} never appeared", path.display()).into());
        }
        tokio::time::sleep(POLL).await;
    }
}

struct Samples {
    ready: Vec<Duration>,
    /// When the library's start call returned (pod) or is not known (bare: empty).
    returned: Vec<Duration>,
}

fn pod_json(uid: &str, image: &str) -> Result<k8s_openapi::api::core::v1::Pod, BoxError> {
    pod_json_cmd(uid, image, &["touch", "/r/ready"])
}

fn pod_json_cmd(
    uid: &str,
    image: &str,
    command: &[&str],
) -> Result<k8s_openapi::api::core::v1::Pod, BoxError> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bench", "namespace": "bench", "uid": uid},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": image, "command": command,
                 "volumeMounts": [{"name": "r", "mountPath": "/r"}]}
            ],
            "volumes": [{"name": "r", "emptyDir": {}}]
        }
    }))?)
}

async fn bench_pods(
    host: &Host,
    rt: Arc<dyn Runtime>,
    image: &str,
    runs: usize,
) -> Result<Samples, BoxError> {
    let mut s = Samples {
        ready: Vec::new(),
        returned: Vec::new(),
    };
    for i in 0..runs {
        let plan = sandbox::plan::plan(&pod_json(&format!("run-{}-{i}", rt.kind()), image)?)?;
        let ready = pod::dir(&host.data_dir, &plan.id).join("volumes/r/ready");
        let t0 = Instant::now();
        let task = {
            let (host, rt, plan) = (host.clone(), rt.clone(), plan.clone());
            tokio::spawn(async move { pod::start(&host, rt, &plan, &VolumeFiles::new()).await })
        };
        let waited = wait_ready(&ready, t0).await;
        let started = task.await?;
        let returned = t0.elapsed();
        let outcome = match (started, waited) {
            (Ok(run), Ok(d)) => {
                s.ready.push(d);
                s.returned.push(returned);
                let (exits, _) = run.wait().await?;
                match exits.iter().find(|(_, e)| e.code != 0) {
                    Some((n, e)) => Err(format!("container {n} exited {}", e.code).into()),
                    None => Ok(()),
                }
            }
            (Ok(run), Err(e)) => {
                run.stop(Duration::from_secs(1)).await;
                let _ = run.wait().await;
                Err(e)
            }
            (Err(e), _) => Err(e.into()),
        };
        pod::remove(host, rt.as_ref(), &plan).await?;
        if std::env::var_os("BENCH_DEBUG").is_some() {
            let names: Vec<_> =
                std::fs::read_dir(host.data_dir.join("runtime").join(rt.kind().to_string()))
                    .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
                    .unwrap_or_default();
            eprintln!("after remove: {names:?}");
        }
        outcome?;
    }
    Ok(s)
}

/// Runs `tool` with `global` flags `run --bundle` on `bundle`, `runs` times.
async fn bench_bare(
    tool: &str,
    global: &[String],
    bundle: &Path,
    ready_dir: &Path,
    runs: usize,
) -> Result<Samples, BoxError> {
    let mut s = Samples {
        ready: Vec::new(),
        returned: Vec::new(),
    };
    let ready = ready_dir.join("ready");
    for i in 0..runs {
        let _ = std::fs::remove_file(&ready);
        let id = format!("bare-{tool}-{}-{i}", std::process::id());
        let t0 = Instant::now();
        let child = tokio::process::Command::new(tool)
            .args(global)
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .process_group(0)
            .spawn()?;
        let waited = wait_ready(&ready, t0).await;
        if waited.is_err() {
            let _ = tokio::process::Command::new(tool)
                .args(global)
                .args(["kill", &id, "9"])
                .status()
                .await;
        }
        let out = child.wait_with_output().await?;
        // `run` deletes the container on exit; this is a no-op unless it failed half-way.
        let _ = tokio::process::Command::new(tool)
            .args(global)
            .args(["delete", "--force", &id])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .await;
        let d = waited.map_err(|e| {
            format!(
                "{e}; {tool} run: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
        if !out.status.success() {
            return Err(format!(
                "{tool} run: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        s.ready.push(d);
    }
    Ok(s)
}

/// Writes the bare bundle: the same spec generator, rootfs `rootfs`, `/r` bound to `ready_dir`.
fn bare_bundle(dir: &Path, image: &Image, rootfs: &Path, ready_dir: &Path) -> Result<(), BoxError> {
    let cfg = ContainerConfig {
        name: "main".into(),
        command: Some(vec!["touch".into(), "/r/ready".into()]),
        mounts: vec![Mount {
            host_path: ready_dir.to_owned(),
            container_path: "/r".into(),
            read_only: false,
        }],
        ..Default::default()
    };
    let sb = SandboxContext {
        hostname: "bench".into(),
        ..Default::default()
    };
    let spec = sandbox::spec::runtime_spec(&cfg, &image.config, (0, 0), rootfs, &sb)?;
    std::fs::write(dir.join("config.json"), serde_json::to_vec_pretty(&spec)?)?;
    Ok(())
}

struct Row {
    kind: RuntimeKind,
    /// Containers as children of the bench (no shim).
    pod: Samples,
    /// Containers under the shim, as the agent runs them.
    shim: Option<Samples>,
    bare: Samples,
}

/// Builds and pulls the busybox test image; the host and the image reference.
async fn setup(data: &Path) -> Result<(Host, String), BoxError> {
    let layout = data.join("layout");
    common::busybox_layout(&layout, &["sh"]);
    let image_ref = format!("oci:{}", layout.display());
    let store = Arc::new(ImageStore::open(
        data.join("images"),
        StoreOptions::default(),
    )?);
    store
        .pull(&image_ref.parse()?, &PullOptions::default())
        .await?;
    let host = Host {
        data_dir: data.to_owned(),
        images: store,
        network: None,
        pull: PullOptions::default(),
    };
    Ok((host, image_ref))
}

async fn bench(data: &Path, args: &Args) -> Result<Vec<Row>, BoxError> {
    let layout = data.join("layout");
    common::busybox_layout(&layout, &["sh"]);
    let image_ref = format!("oci:{}", layout.display());
    let store = Arc::new(ImageStore::open(
        data.join("images"),
        StoreOptions::default(),
    )?);
    let image = store
        .pull(&image_ref.parse()?, &PullOptions::default())
        .await?;
    let host = Host {
        data_dir: data.to_owned(),
        images: store.clone(),
        network: None,
        pull: PullOptions::default(),
    };

    // The bare bundle's root filesystem: the same layers, one overlay for all bare runs.
    let bare = data.join("bare");
    let ready_dir = data.join("bare-ready");
    std::fs::create_dir_all(&bare)?;
    std::fs::create_dir_all(&ready_dir)?;
    let rootfs = sandbox::rootfs::mount(&store.lower_dirs(&image), &bare)?;
    bare_bundle(&bare, &image, &rootfs, &ready_dir)?;

    let mut rows = Vec::new();
    for kind in runtime::available() {
        if args.only.is_some_and(|k| k != kind) {
            continue;
        }
        let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, data)?);
        // One warm-up of each, not counted (page cache, first cgroup setup).
        let tool_root = data.join("bare-state").join(kind.to_string());
        std::fs::create_dir_all(&tool_root)?;
        let (tool, mut global) = match kind {
            RuntimeKind::Gvisor => (
                "runsc",
                vec!["--platform=ptrace".to_owned(), "--network=none".to_owned()],
            ),
            _ => ("crun", Vec::new()),
        };
        global.insert(0, format!("--root={}", tool_root.display()));
        eprintln!("{kind}: warm-up");
        bench_pods(&host, rt.clone(), &image_ref, 1).await?;
        bench_bare(tool, &global, &bare, &ready_dir, 1).await?;
        eprintln!("{kind}: {} pod starts", args.runs);
        let pod = bench_pods(&host, rt.clone(), &image_ref, args.runs).await?;
        eprintln!("{kind}: {} bare `{tool} run`s", args.runs);
        let bare_s = bench_bare(tool, &global, &bare, &ready_dir, args.runs).await?;
        rows.push(Row {
            kind,
            pod,
            shim: None,
            bare: bare_s,
        });
    }
    // The shim program is set once per process: the shim runs come after all others.
    if let Some(shim) = &args.shim {
        sandbox::shim::set_binary(shim.clone());
        for row in &mut rows {
            let rt: Arc<dyn Runtime> = Arc::from(runtime::open(row.kind, data)?);
            eprintln!("{}: warm-up under the shim {}", row.kind, shim.display());
            bench_pods(&host, rt.clone(), &image_ref, 1).await?;
            eprintln!("{}: {} pod starts under the shim", row.kind, args.runs);
            row.shim = Some(bench_pods(&host, rt, &image_ref, args.runs).await?);
        }
    }
    Ok(rows)
}

fn print(rows: &mut [Row], runs: usize) {
    println!("pod start (sandbox create -> first container process running), {runs} runs, ms");
    println!(
        "{:<16} {:>8} {:>8} {:>9} {:>9} {:>7} {:>12}",
        "runtime", "p50", "p99", "bare p50", "bare p99", "ratio", "api-ret p50"
    );
    for r in rows.iter_mut() {
        r.bare.ready.sort();
        let (b50, b99) = (percentile(&r.bare.ready, 50), percentile(&r.bare.ready, 99));
        let variants = [("", Some(&mut r.pod)), ("+shim", r.shim.as_mut())];
        for (label, s) in variants {
            let Some(s) = s else { continue };
            s.ready.sort();
            s.returned.sort();
            let (p50, p99) = (percentile(&s.ready, 50), percentile(&s.ready, 99));
            let ratio = p50.as_secs_f64() / b50.as_secs_f64().max(1e-9);
            println!(
                "{:<16} {:>8} {:>8} {:>9} {:>9} {:>6.2}x {:>12}",
                format!("{}{label}", r.kind),
                ms(p50),
                ms(p99),
                ms(b50),
                ms(b99),
                ratio,
                ms(percentile(&s.returned, 50)),
            );
        }
    }
}

/// Proportional set size (KiB) of every process whose command line mentions `data` (the
/// runsc sandbox, gofers and `runsc wait`s use `--root=<data>/runtime/..`, shims
/// `--dir <data>/containers/..`), with their children (gVisor's ptrace stubs); the count.
fn pss_under(data: &Path) -> (u64, usize) {
    let needle = data.display().to_string();
    let mut ours = Vec::new();
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0);
        parent.insert(pid, ppid);
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            ours.push(pid);
        }
    }
    let set: std::collections::HashSet<u32> = ours.iter().copied().collect();
    let mut total = 0;
    let mut n = 0;
    for (pid, ppid) in &parent {
        if set.contains(pid) || set.contains(ppid) {
            let rollup =
                std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
            total += rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0);
            n += 1;
        }
    }
    (total, n)
}

fn mem_available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Density: idle gVisor pods (`sleep` after signalling ready) added 25 at a time up to `max`,
/// printing per step the start p50/p99 of that step, memory available and the PSS of all that
/// runs for the pods; stops early when a start takes over 5 s or memory runs below 2 GiB. All
/// pods are stopped and removed at the end.
async fn density(data: &Path, args: &Args, max: usize) -> Result<(), BoxError> {
    let (host, image_ref) = setup(data).await?;
    if let Some(shim) = &args.shim {
        sandbox::shim::set_binary(shim.clone());
    }
    let kind = args.only.unwrap_or(RuntimeKind::Gvisor);
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, data)?);
    let mut plans = Vec::new();
    let mut runs = Vec::new();
    println!(
        "density {kind} (shim {}): pods, step p50 ms, step p99 ms, MemAvailable MiB, PSS MiB, PSS/pod MiB, procs, load",
        args.shim.is_some()
    );
    let result: Result<(), BoxError> = async {
        while plans.len() < max {
            let mut step = Vec::new();
            for _ in 0..25.min(max - plans.len()) {
                let i = plans.len();
                let plan = sandbox::plan::plan(&pod_json_cmd(
                    &format!("idle-{i}"),
                    &image_ref,
                    &["sh", "-c", "touch /r/ready; exec sleep 86400"],
                )?)?;
                let ready = pod::dir(&host.data_dir, &plan.id).join("volumes/r/ready");
                let t0 = Instant::now();
                let run = pod::start(&host, rt.clone(), &plan, &VolumeFiles::new()).await;
                plans.push(plan);
                let run = run?;
                step.push(wait_ready(&ready, t0).await?);
                runs.push(run);
            }
            step.sort();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let (pss, procs) = pss_under(data);
            let pss_mib = pss as f64 / 1024.0;
            println!(
                "{:>4} {:>8} {:>8} {:>8} {:>9.1} {:>6.2} {:>5} {}",
                plans.len(),
                ms(percentile(&step, 50)),
                ms(percentile(&step, 99)),
                mem_available_mib(),
                pss_mib,
                pss_mib / plans.len() as f64,
                procs,
                load()
            );
            if percentile(&step, 99) > Duration::from_secs(5) || mem_available_mib() < 2048 {
                println!("stopping: start p99 over 5 s or memory low");
                break;
            }
        }
        Ok(())
    }
    .await;
    eprintln!("stopping {} pods", runs.len());
    for run in &runs {
        run.stop(Duration::from_secs(1)).await;
    }
    for run in runs {
        let _ = run.wait().await;
    }
    for plan in &plans {
        if let Err(e) = pod::remove(&host, rt.as_ref(), plan).await {
            eprintln!("removing {}: {e}", plan.id);
        }
    }
    result
}

/// Undoes what the runs may have left: the bare overlay, container mounts, runtime state.
fn cleanup(data: &Path) {
    let _ = sandbox::rootfs::unmount(&data.join("bare"));
    if let Ok(rd) = std::fs::read_dir(data.join("containers")) {
        for e in rd.flatten() {
            let _ = sandbox::container::remove(data, &e.file_name().to_string_lossy());
        }
    }
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    // RUST_LOG=sandbox=debug shows where a start spends its time.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tmp = tempfile::Builder::new().prefix("start-bench").tempdir()?;
    let data: PathBuf = tmp.path().to_owned();
    if let Some(max) = args.density {
        let r = rt.block_on(density(&data, &args, max));
        cleanup(&data);
        if std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .contains(&data.display().to_string())
        {
            let kept = tmp.keep();
            return Err(format!("mounts left under {}; not removed", kept.display()).into());
        }
        return r;
    }
    let result = rt.block_on(bench(&data, &args));
    cleanup(&data);
    // Refuse to delete a tree that still holds a mount.
    if std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(&data.display().to_string())
    {
        let kept = tmp.keep();
        return Err(format!("mounts left under {}; not removed", kept.display()).into());
    }
    drop(tmp);
    let mut rows = result?;
    print(&mut rows, args.runs);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=50).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Duration::from_millis(25));
        assert_eq!(percentile(&v, 99), Duration::from_millis(50));
        assert_eq!(percentile(&v[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }
}
