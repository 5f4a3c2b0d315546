//! API server benchmark: starts the real `nodeless server` binary (release build) on loopback, once
//! per store backend, and measures it with kube-rs clients:
//!
//! - create throughput: pods created by N concurrent, separate `kube::Client`s (closed loop);
//! - create latency at a steady rate (open loop: latency counts from the scheduled send time, so a
//!   stalled server cannot hide its queue);
//! - watch fan-out: W watchers from the current resourceVersion while pods are written at a steady
//!   rate; delivery latency from the moment a write was sent to the event's arrival at each watcher,
//!   and how many (watcher, event) pairs never arrived;
//! - memory: the server's RSS (`/proc/PID/status` VmRSS) right after start and with M pods stored.
//!
//! Run: `cargo build --release -p nodeless && cargo run --release -p nodeless --example api_bench`
//! (`--quick` for a short run, `--stores sqlite,etcd,memory` to pick backends, `--help` for the rest).
//! For `etcd` the bench starts its own bare etcd (the `etcd` binary on PATH, or `$ETCD_BIN`).
//! Everything it talks to is on 127.0.0.1, and every process it starts is killed when it ends.
//! Progress goes to stderr; the results table (Markdown) to stdout. Timings decide nothing here:
//! the program prints figures and the goals next to them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::serde;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    Sqlite,
    Etcd,
    Memory,
}

impl StoreKind {
    fn name(self) -> &'static str {
        match self {
            StoreKind::Sqlite => "sqlite",
            StoreKind::Etcd => "etcd",
            StoreKind::Memory => "memory",
        }
    }
}

/// Benchmark the nodeless API server (see docs/benchmarks.md).
#[derive(Debug, clap::Parser)]
struct Args {
    /// Store backends to measure, comma separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,etcd",
        env = "API_BENCH_STORES"
    )]
    stores: Vec<StoreKind>,
    /// A short run (smaller counts and durations) to check that everything works.
    #[arg(long, env = "API_BENCH_QUICK")]
    quick: bool,
    /// The nodeless binary [default: target/release/nodeless, next to this example's directory].
    #[arg(long, env = "API_BENCH_BIN")]
    bin: Option<PathBuf>,
    /// Concurrent clients in the throughput and fill phases.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Pods created in the throughput phase [default: 4000, quick 800].
    #[arg(long)]
    throughput_pods: Option<usize>,
    /// Creates per second in the latency and watch phases.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Seconds of the steady-rate latency phase [default: 10, quick 3].
    #[arg(long)]
    latency_secs: Option<u64>,
    /// Watchers in the fan-out phase [default: 500, quick 100].
    #[arg(long)]
    watchers: Option<usize>,
    /// Seconds of writes in the fan-out phase [default: 10, quick 3].
    #[arg(long)]
    watch_secs: Option<u64>,
    /// Pods stored when the loaded RSS is read [default: 10000, quick 2000].
    #[arg(long)]
    memory_pods: Option<usize>,
    /// Watchers decode whole `Pod`s; by default they decode only the metadata (what the latency
    /// needs), so that the bench's own JSON decoding, on the same cores, weighs less.
    #[arg(long)]
    watch_full_pods: bool,
    /// Watchers select the pods with a label selector (`app=api-bench`, which every bench pod
    /// has); by default they watch the whole namespace without a selector.
    #[arg(long)]
    watch_selector: bool,
}

/// The sizes of one run, after defaults.
#[derive(Debug, Clone, Copy)]
struct Plan {
    clients: usize,
    throughput_pods: usize,
    rate: u32,
    latency_secs: u64,
    watchers: usize,
    watch_secs: u64,
    memory_pods: usize,
    watch_full_pods: bool,
    watch_selector: bool,
}

impl Plan {
    fn from_args(a: &Args) -> Self {
        let q = a.quick;
        Plan {
            clients: a.clients.max(1),
            throughput_pods: a.throughput_pods.unwrap_or(if q { 800 } else { 4000 }),
            rate: a.rate.max(1),
            latency_secs: a.latency_secs.unwrap_or(if q { 3 } else { 10 }),
            watchers: a.watchers.unwrap_or(if q { 100 } else { 500 }),
            watch_secs: a.watch_secs.unwrap_or(if q { 3 } else { 10 }),
            memory_pods: a.memory_pods.unwrap_or(if q { 2000 } else { 10_000 }),
            watch_full_pods: a.watch_full_pods,
            watch_selector: a.watch_selector,
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let plan = Plan::from_args(&args);
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => default_bin()?,
    };
    if !bin.is_file() {
        bail!(
            "{} not found: build it first with `cargo build --release -p nodeless` (or pass --bin)",
            bin.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tokio::select! {
            r = run(&bin, &args.stores, plan) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })
}

/// `target/release/nodeless` when this example is `target/release/examples/api_bench`.
fn default_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected path of the example")?;
    Ok(dir.join("nodeless"))
}

async fn run(bin: &Path, stores: &[StoreKind], plan: Plan) -> anyhow::Result<()> {
    eprintln!("api_bench: {} with {plan:?}", bin.display());
    warn_if_stale(bin);
    let mut results = Vec::new();
    for &store in stores {
        let r = bench_store(bin, store, plan)
            .await
            .with_context(|| format!("benchmark of the {} store", store.name()))?;
        results.push((store, r));
    }
    println!("{}", table(&plan, &results));
    Ok(())
}

/// Says so when a source file of the workspace's crates is newer than the server binary (a stale
/// build measures old code).
fn warn_if_stale(bin: &Path) {
    let Some(built) = std::fs::metadata(bin).and_then(|m| m.modified()).ok() else {
        return;
    };
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&crates)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("src"))
        .collect();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs")
                && let Ok(m) = entry.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(t, _)| m > *t)
            {
                newest = Some((m, path));
            }
        }
    }
    if let Some((t, path)) = newest
        && t > built
    {
        eprintln!(
            "warning: {} is newer than {}: rebuild with `cargo build --release -p nodeless`",
            path.display(),
            bin.display()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Server and etcd processes

/// A `nodeless server` process (and its etcd) with a temporary data dir; killed on drop.
struct Server {
    child: Child,
    kubeconfig: PathBuf,
    etcd: Option<store::etcd::LocalEtcd>,
    etcd_data: Option<PathBuf>,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start(bin: &Path, store: StoreKind) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new().prefix("api-bench-").tempdir()?;
        let (etcd, etcd_data) = if store == StoreKind::Etcd {
            let etcd_dir = dir.path().join("etcd");
            std::fs::create_dir_all(&etcd_dir)?;
            let etcd = store::etcd::LocalEtcd::start(&etcd_dir)
                .await
                .context("cannot start etcd (apt-get install etcd-server)")?;
            (Some(etcd), Some(etcd_dir.join("data")))
        } else {
            (None, None)
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("server")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--store")
            .arg(store.name())
            // The figures are the API server's own: no in-process controllers or scheduler
            // (they would schedule every created pod and write events), no registry.
            .args(["--disable", "all", "--no-registry"]);
        if let Some(etcd) = &etcd {
            cmd.args([
                "--etcd-endpoints",
                etcd.endpoint(),
                "--etcd-prefix",
                "/api-bench",
            ]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut server = Server {
            child,
            kubeconfig,
            etcd,
            etcd_data,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = server.child.try_wait()? {
                bail!("the server exited with {status}: {}", server.log_tail());
            }
            if server.kubeconfig.exists()
                && tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("the server did not become ready: {}", server.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The etcd process, found by its data dir in /proc (LocalEtcd does not expose its pid).
    fn etcd_pid(&self) -> Option<u32> {
        let data = self.etcd_data.as_ref()?;
        let needle = format!("--data-dir={}", data.display());
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == needle.as_bytes())
            {
                return Some(pid);
            }
        }
        None
    }

    async fn client(&self) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.config().await?)?)
    }

    async fn config(&self) -> anyhow::Result<kube::Config> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)?;
        Ok(kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Then `etcd` (killed by its own Drop), then the data dir.
        self.etcd.take();
    }
}

/// VmRSS and VmHWM of a process, in bytes.
fn rss(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/{pid}/status"))?;
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU time (user + system) a process has used so far.
fn cpu_time(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, i.e. 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

// ---------------------------------------------------------------------------------------------
// The phases

#[derive(Debug, Default)]
struct StoreResult {
    rss_idle: u64,
    startup: Duration,
    throughput: f64,
    throughput_errors: usize,
    throughput_p50: Duration,
    throughput_p99: Duration,
    server_cpu_per_create: Duration,
    etcd_cpu_per_create: Option<Duration>,
    bench_cpu_per_create: Duration,
    latency_p50: Duration,
    latency_p99: Duration,
    latency_max: Duration,
    latency_errors: usize,
    watch_p50: Duration,
    watch_p99: Duration,
    watch_max: Duration,
    watch_missing: usize,
    watch_expected: usize,
    watch_errors: usize,
    watch_cpu: (f64, Option<f64>, f64),
    rss_loaded: u64,
    rss_peak: u64,
    pods_stored: usize,
    etcd_rss_loaded: Option<u64>,
    first_error: Option<String>,
}

async fn bench_store(bin: &Path, store: StoreKind, plan: Plan) -> anyhow::Result<StoreResult> {
    let tag = store.name();
    let mut r = StoreResult::default();
    eprintln!(
        "[{tag}] starting the server{}",
        if store == StoreKind::Etcd {
            " and etcd"
        } else {
            ""
        }
    );
    let t0 = Instant::now();
    let server = Server::start(bin, store).await?;
    r.startup = t0.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    r.rss_idle = rss(server.pid())?.0;
    eprintln!(
        "[{tag}] ready in {:.0} ms, idle RSS {}",
        r.startup.as_secs_f64() * 1e3,
        mib(r.rss_idle)
    );
    let mut stored = 0usize;

    // Throughput: separate clients, each creating its share in a loop.
    let mut clients = Vec::new();
    for _ in 0..plan.clients {
        clients.push(server.client().await?);
    }
    warm_up(&clients).await?;
    eprintln!(
        "[{tag}] throughput: {} pods from {} clients",
        plan.throughput_pods, plan.clients
    );
    let (cpu0, etcd_cpu0) = (cpu_time(server.pid()), server.etcd_pid().map(cpu_time));
    let bench_cpu0 = cpu_time(std::process::id());
    let out = phase(create_many(&clients, "tp", plan.throughput_pods)).await?;
    let server_cpu = cpu_time(server.pid()).saturating_sub(cpu0);
    let etcd_cpu = server
        .etcd_pid()
        .map(cpu_time)
        .zip(etcd_cpu0)
        .map(|(b, a)| b.saturating_sub(a));
    stored += out.ok();
    r.throughput = out.ok() as f64 / out.elapsed.as_secs_f64();
    r.throughput_errors = out.errors;
    (r.throughput_p50, r.throughput_p99) = (
        percentile(&out.latencies, 0.50),
        percentile(&out.latencies, 0.99),
    );
    let per = |cpu: Duration| cpu.checked_div(out.ok().max(1) as u32).unwrap_or_default();
    r.server_cpu_per_create = per(server_cpu);
    r.etcd_cpu_per_create = etcd_cpu.map(per);
    r.bench_cpu_per_create = per(cpu_time(std::process::id()).saturating_sub(bench_cpu0));
    r.first_error = r.first_error.take().or(out.first_error);
    eprintln!(
        "[{tag}]   {:.0} creates/s in {:.2} s ({} errors), server CPU {:.0} µs/create",
        r.throughput,
        out.elapsed.as_secs_f64(),
        out.errors,
        r.server_cpu_per_create.as_secs_f64() * 1e6
    );
    drop(clients);

    // Latency at a steady rate (open loop).
    let n = plan.rate as usize * plan.latency_secs as usize;
    eprintln!("[{tag}] latency: {n} creates at {}/s", plan.rate);
    let client = server.client().await?;
    warm_up(std::slice::from_ref(&client)).await?;
    let out = phase(steady_creates(client.clone(), "lat", n, plan.rate, None)).await?;
    stored += out.ok();
    let mut lat = out.latencies.clone();
    lat.sort_unstable();
    (r.latency_p50, r.latency_p99, r.latency_max) = (
        percentile(&lat, 0.50),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or_default(),
    );
    r.latency_errors = out.errors;
    r.first_error = r.first_error.take().or(out.first_error);
    eprintln!(
        "[{tag}]   p50 {} p99 {} max {} ({} errors)",
        ms(r.latency_p50),
        ms(r.latency_p99),
        ms(r.latency_max),
        out.errors
    );

    // Watch fan-out.
    let w = phase(watch_fan_out(&server, plan, tag)).await?;
    stored += w.writes_ok;
    (r.watch_p50, r.watch_p99, r.watch_max) = (w.p50, w.p99, w.max);
    (r.watch_missing, r.watch_expected, r.watch_errors) = (w.missing, w.expected, w.errors);
    r.watch_cpu = (w.cpu_server, w.cpu_etcd, w.cpu_bench);
    r.first_error = r.first_error.take().or(w.first_error);

    // Memory with many pods stored.
    if stored < plan.memory_pods {
        let fill = plan.memory_pods - stored;
        eprintln!(
            "[{tag}] memory: creating {fill} more pods ({} in all)",
            plan.memory_pods
        );
        let mut clients = Vec::new();
        for _ in 0..plan.clients {
            clients.push(server.client().await?);
        }
        let out = phase(create_many(&clients, "fill", fill)).await?;
        stored += out.ok();
        r.first_error = r.first_error.take().or(out.first_error);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.rss_loaded = rss(server.pid())?.0;
    r.etcd_rss_loaded = server
        .etcd_pid()
        .and_then(|p| rss(p).ok())
        .map(|(rss, _)| rss);
    // Count what is stored, as a client sees it (after the RSS reading: a full list is a
    // transient peak of its own, which VmHWM shows).
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let listed = phase(async { Ok(pods.list(&ListParams::default()).await?.items.len()) }).await?;
    if listed != stored {
        eprintln!("[{tag}] warning: {stored} pods created but {listed} listed");
    }
    drop(client);
    r.rss_peak = rss(server.pid())?.1;
    r.pods_stored = listed;
    eprintln!(
        "[{tag}]   {listed} pods: RSS {} (peak {})",
        mib(r.rss_loaded),
        mib(r.rss_peak)
    );
    drop(server);
    Ok(r)
}

/// Every phase ends by itself: none may take more than this.
async fn phase<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::time::timeout(Duration::from_secs(600), f)
        .await
        .context("phase timed out after 600 s")?
}

/// Opens each client's connection (TLS handshake) before timing starts.
async fn warm_up(clients: &[kube::Client]) -> anyhow::Result<()> {
    let lists = clients.iter().map(|c| async move {
        // Several requests at once, so that the connection pool holds more than one connection.
        let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
        let lp = ListParams::default().limit(1);
        futures::future::try_join_all((0..4).map(|_| pods.list(&lp))).await
    });
    futures::future::try_join_all(lists)
        .await
        .context("warm-up list")?;
    Ok(())
}

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some([("app".to_string(), "api-bench".to_string())].into()),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![k8s_openapi::api::core::v1::Container {
                name: "c".into(),
                image: Some("busybox:1.36".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Creates {
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Creates {
    fn ok(&self) -> usize {
        self.latencies.len()
    }
}

/// Closed loop: each client creates pods `prefix-<i>` one after the other; `total` in all.
async fn create_many(
    clients: &[kube::Client],
    prefix: &str,
    total: usize,
) -> anyhow::Result<Creates> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .iter()
        .map(|c| {
            let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
            let (next, prefix) = (next.clone(), prefix.to_string());
            tokio::spawn(async move {
                let (mut lat, mut errors, mut first) = (Vec::new(), 0, None);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let p = pod(&format!("{prefix}-{i}"));
                    let t = Instant::now();
                    match pods.create(&PostParams::default(), &p).await {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(e) => {
                            errors += 1;
                            first.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                (lat, errors, first)
            })
        })
        .collect();
    let mut out = Creates {
        elapsed: Duration::ZERO,
        latencies: Vec::with_capacity(total),
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        let (lat, errors, first) = t.await?;
        out.latencies.extend(lat);
        out.errors += errors;
        out.first_error = out.first_error.or(first);
    }
    out.elapsed = start.elapsed();
    out.latencies.sort_unstable();
    Ok(out)
}

/// Open loop: create `n` pods `prefix-<i>` at `rate` per second, each sent at its scheduled time
/// whatever the earlier ones are doing; latency counts from the scheduled time. When `sent` is
/// given, the send time of pod i (µs since `sent.0`) is stored in `sent.1[i]` just before it goes,
/// and reset to `u64::MAX` if the create fails.
async fn steady_creates(
    client: kube::Client,
    prefix: &str,
    n: usize,
    rate: u32,
    sent: Option<(Instant, Arc<Vec<AtomicU64>>)>,
) -> anyhow::Result<Creates> {
    let pods: Api<Pod> = Api::namespaced(client, "default");
    let period = Duration::from_secs(1) / rate;
    let start = Instant::now() + Duration::from_millis(50);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + period * i as u32;
        tokio::time::sleep_until(at.into()).await;
        let (pods, name, sent) = (pods.clone(), format!("{prefix}-{i}"), sent.clone());
        tasks.push(tokio::spawn(async move {
            let p = pod(&name);
            if let Some((base, slots)) = &sent {
                slots[i].store(base.elapsed().as_micros() as u64, Ordering::Release);
            }
            let r = pods
                .create(&PostParams::default(), &p)
                .await
                .map(|_| at.elapsed());
            if r.is_err()
                && let Some((_, slots)) = &sent
            {
                // Not written: no watcher is to expect it.
                slots[i].store(u64::MAX, Ordering::Release);
            }
            r
        }));
    }
    let mut out = Creates {
        elapsed: start.elapsed(),
        latencies: Vec::with_capacity(n),
        errors: 0,
        first_error: None,
    };
    for t in tasks {
        match t.await? {
            Ok(l) => out.latencies.push(l),
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// A pod as the watchers decode it by default: the metadata only (the rest of the JSON is skipped).
#[derive(Debug, Clone)]
struct PodMeta {
    metadata: ObjectMeta,
}

impl<'de> serde::Deserialize<'de> for PodMeta {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = PodMeta;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a Pod")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<PodMeta, A::Error> {
                let mut metadata = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "metadata" {
                        metadata = Some(map.next_value::<ObjectMeta>()?);
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(PodMeta {
                    metadata: metadata.unwrap_or_default(),
                })
            }
        }
        d.deserialize_map(Visitor)
    }
}

impl kube::Resource for PodMeta {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

struct FanOut {
    p50: Duration,
    p99: Duration,
    max: Duration,
    writes_ok: usize,
    expected: usize,
    missing: usize,
    errors: usize,
    first_error: Option<String>,
    /// CPU used, as a share of one core, from the first write until every watcher was done:
    /// by the server, by etcd (if any), and by this program (the watchers' decoding).
    cpu_server: f64,
    cpu_etcd: Option<f64>,
    cpu_bench: f64,
}

/// What one watcher saw.
#[derive(Default)]
struct Seen {
    /// Delivery latency of each distinct event, in µs.
    latencies: Vec<u32>,
    received: Vec<bool>,
    error: Option<String>,
}

async fn watch_fan_out(server: &Server, plan: Plan, tag: &str) -> anyhow::Result<FanOut> {
    let n = plan.rate as usize * plan.watch_secs as usize;
    eprintln!("[{tag}] watch fan-out: opening {} watches", plan.watchers);
    let config = server.config().await?;
    let writer = kube::Client::try_from(config.clone())?;
    let pods: Api<Pod> = Api::namespaced(writer.clone(), "default");
    let rv = pods
        .list(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .context("a list without resourceVersion")?;

    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(u64::MAX)).collect());
    // Set (µs since `base`) once the writes are done: watchers give up on missing events then.
    let stop_at = Arc::new(AtomicU64::new(u64::MAX));
    let opened = Arc::new(AtomicUsize::new(0));
    let open_limit = Arc::new(tokio::sync::Semaphore::new(32));
    let mut watchers = Vec::with_capacity(plan.watchers);
    for _ in 0..plan.watchers {
        let client = kube::Client::try_from(config.clone())?;
        let (rv, sent, stop_at, opened, open_limit) = (
            rv.clone(),
            sent.clone(),
            stop_at.clone(),
            opened.clone(),
            open_limit.clone(),
        );
        let (full, selector) = (plan.watch_full_pods, plan.watch_selector);
        watchers.push(tokio::spawn(async move {
            let permit = open_limit.acquire_owned().await;
            let wp = if selector {
                WatchParams::default().labels("app=api-bench")
            } else {
                WatchParams::default()
            };
            let mut seen = Seen {
                received: vec![false; n],
                ..Default::default()
            };
            let stream = if full {
                Api::<Pod>::namespaced(client, "default")
                    .watch(&wp, &rv)
                    .await
                    .map(|s| s.map(|e| e.map(|e| event_name(&e))).boxed())
            } else {
                Api::<PodMeta>::namespaced(client, "default")
                    .watch(&wp, &rv)
                    .await
                    .map(|s| s.map(|e| e.map(|e| event_name(&e))).boxed())
            };
            drop(permit);
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    seen.error = Some(format!("watch: {e}"));
                    opened.fetch_add(1, Ordering::Release);
                    return seen;
                }
            };
            opened.fetch_add(1, Ordering::Release);
            let mut got = 0;
            while got < n {
                let next = tokio::time::timeout(Duration::from_millis(250), stream.next()).await;
                let arrived = base.elapsed().as_micros() as u64;
                if arrived > stop_at.load(Ordering::Acquire) {
                    break;
                }
                let Ok(next) = next else { continue };
                match next {
                    Some(Ok(Ok(Some(name)))) => {
                        let Some(i) = name
                            .strip_prefix("w-")
                            .and_then(|s| s.parse::<usize>().ok())
                            .filter(|&i| i < n)
                        else {
                            continue;
                        };
                        if seen.received[i] {
                            continue;
                        }
                        seen.received[i] = true;
                        got += 1;
                        let at = sent[i].load(Ordering::Acquire);
                        seen.latencies
                            .push(arrived.saturating_sub(at).min(u32::MAX as u64) as u32);
                    }
                    Some(Ok(Ok(None))) => {}
                    Some(Ok(Err(status))) => {
                        seen.error = Some(format!("watch error event: {status}"));
                        break;
                    }
                    Some(Err(e)) => {
                        seen.error = Some(format!("watch stream: {e}"));
                        break;
                    }
                    None => {
                        seen.error = Some("the server ended the watch early".into());
                        break;
                    }
                }
            }
            seen
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while opened.load(Ordering::Acquire) < plan.watchers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} watches opened in 120 s",
                opened.load(Ordering::Acquire),
                plan.watchers
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    eprintln!(
        "[{tag}] watch fan-out: {n} creates at {}/s to {} watchers",
        plan.rate, plan.watchers
    );
    warm_up(std::slice::from_ref(&writer)).await?;
    let cpu0 = (
        Instant::now(),
        cpu_time(server.pid()),
        server.etcd_pid().map(cpu_time),
        cpu_time(std::process::id()),
    );
    let writes = steady_creates(writer, "w", n, plan.rate, Some((base, sent.clone()))).await?;
    stop_at.store(
        (base.elapsed() + Duration::from_secs(15)).as_micros() as u64,
        Ordering::Release,
    );

    let mut all = Vec::with_capacity(plan.watchers * n);
    let (mut missing, mut errors, mut first_error) = (0usize, 0usize, writes.first_error.clone());
    // A create that failed is not expected by anyone.
    let written: Vec<bool> = sent
        .iter()
        .map(|s| s.load(Ordering::Acquire) != u64::MAX)
        .collect();
    for w in watchers {
        let seen = w.await?;
        all.extend_from_slice(&seen.latencies);
        missing += written
            .iter()
            .zip(&seen.received)
            .filter(|&(&w, &r)| w && !r)
            .count();
        if let Some(e) = seen.error {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    let wall = cpu0.0.elapsed().as_secs_f64();
    let share = |now: Duration, then: Duration| now.saturating_sub(then).as_secs_f64() / wall;
    let cpu_server = share(cpu_time(server.pid()), cpu0.1);
    let cpu_etcd = server
        .etcd_pid()
        .map(cpu_time)
        .zip(cpu0.2)
        .map(|(now, then)| share(now, then));
    let cpu_bench = share(cpu_time(std::process::id()), cpu0.3);
    all.sort_unstable();
    let us = |v: Option<&u32>| Duration::from_micros(v.copied().unwrap_or(0) as u64);
    let pct = |p: f64| us(all.get(((p * all.len() as f64).ceil() as usize).saturating_sub(1)));
    let out = FanOut {
        p50: pct(0.50),
        p99: pct(0.99),
        max: us(all.last()),
        writes_ok: writes.ok(),
        expected: writes.ok() * plan.watchers,
        missing,
        errors,
        first_error,
        cpu_server,
        cpu_etcd,
        cpu_bench,
    };
    eprintln!(
        "[{tag}]   delivery p50 {} p99 {} max {}; missing {} of {} ({} watcher errors, {} write errors)",
        ms(out.p50),
        ms(out.p99),
        ms(out.max),
        out.missing,
        out.expected,
        out.errors,
        writes.errors
    );
    eprintln!(
        "[{tag}]   CPU (share of one core): server {:.0}%, etcd {}, bench {:.0}%",
        out.cpu_server * 100.0,
        out.cpu_etcd
            .map(|x| format!("{:.0}%", x * 100.0))
            .unwrap_or_else(|| "-".into()),
        out.cpu_bench * 100.0
    );
    Ok(out)
}

/// The name of an added object; `None` for other events; the status for an error event.
fn event_name<K: kube::Resource>(e: &WatchEvent<K>) -> Result<Option<String>, String> {
    match e {
        WatchEvent::Added(o) => Ok(o.meta().name.clone()),
        WatchEvent::Modified(_) | WatchEvent::Deleted(_) | WatchEvent::Bookmark(_) => Ok(None),
        WatchEvent::Error(s) => Err(format!("{} {}", s.code, s.message)),
    }
}

// ---------------------------------------------------------------------------------------------
// Figures

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn mark(ok: bool) -> &'static str {
    if ok { "✓" } else { "✗ (misses goal)" }
}

fn table(plan: &Plan, results: &[(StoreKind, StoreResult)]) -> String {
    let mut rows: Vec<(String, String, Vec<String>)> = Vec::new();
    let mut row = |figure: String, goal: &str, f: &dyn Fn(&StoreResult) -> String| {
        rows.push((
            figure,
            goal.to_string(),
            results.iter().map(|(_, r)| f(r)).collect(),
        ));
    };
    let c = plan.clients;
    row(
        format!(
            "Create throughput, {c} clients, {} pods",
            plan.throughput_pods
        ),
        "≥ 2,000/s",
        &|r| format!("{:.0}/s {}", r.throughput, mark(r.throughput >= 2000.0)),
    );
    row(
        format!("  per-request latency p50 / p99 ({c} in flight)"),
        "",
        &|r| format!("{} / {}", ms(r.throughput_p50), ms(r.throughput_p99)),
    );
    row(
        "  CPU per create: server / etcd / bench clients".into(),
        "",
        &|r| {
            let us = |d: Duration| format!("{:.0} µs", d.as_secs_f64() * 1e6);
            let etcd = r.etcd_cpu_per_create.map(us).unwrap_or_else(|| "-".into());
            format!(
                "{} / {} / {}",
                us(r.server_cpu_per_create),
                etcd,
                us(r.bench_cpu_per_create)
            )
        },
    );
    row(
        format!(
            "Create latency p50 at {}/s for {} s",
            plan.rate, plan.latency_secs
        ),
        "",
        &|r| ms(r.latency_p50),
    );
    row(
        format!("Create latency p99 at {}/s", plan.rate),
        "≤ 20 ms",
        &|r| {
            format!(
                "{} {}",
                ms(r.latency_p99),
                mark(r.latency_p99 <= Duration::from_millis(20))
            )
        },
    );
    row("  max".into(), "", &|r| ms(r.latency_max));
    row(
        format!(
            "Watch delivery p50, {} watchers, {}/s for {} s",
            plan.watchers, plan.rate, plan.watch_secs
        ),
        "",
        &|r| ms(r.watch_p50),
    );
    row("Watch delivery p99".into(), "≤ 50 ms", &|r| {
        format!(
            "{} {}",
            ms(r.watch_p99),
            mark(r.watch_p99 <= Duration::from_millis(50))
        )
    });
    row("  max".into(), "", &|r| ms(r.watch_max));
    row(
        "  CPU during fan-out: server / etcd / bench".into(),
        "",
        &|r| {
            let pct = |x: f64| format!("{:.0}%", x * 100.0);
            let etcd = r.watch_cpu.1.map(pct).unwrap_or_else(|| "-".into());
            format!("{} / {} / {}", pct(r.watch_cpu.0), etcd, pct(r.watch_cpu.2))
        },
    );
    row(
        "Watch events missing (not there 15 s after the last write)".into(),
        "0",
        &|r| {
            format!(
                "{} of {} {}",
                r.watch_missing,
                r.watch_expected,
                mark(r.watch_missing == 0 && r.watch_errors == 0)
            )
        },
    );
    row("Server RSS idle (after start)".into(), "≤ 40 MiB", &|r| {
        format!("{} {}", mib(r.rss_idle), mark(r.rss_idle <= 40 << 20))
    });
    row(
        format!("Server RSS with {} pods", plan.memory_pods),
        "≤ 300 MiB",
        &|r| {
            format!(
                "{} {} ({} listed)",
                mib(r.rss_loaded),
                mark(r.rss_loaded <= 300 << 20),
                r.pods_stored
            )
        },
    );
    row(
        "  peak RSS (VmHWM) over the run, incl. a full list".into(),
        "",
        &|r| mib(r.rss_peak),
    );
    row("  etcd RSS at the end".into(), "", &|r| {
        r.etcd_rss_loaded.map(mib).unwrap_or_else(|| "-".into())
    });
    row("Errors (create / watch)".into(), "0", &|r| {
        format!(
            "{} / {}",
            r.throughput_errors + r.latency_errors,
            r.watch_errors
        )
    });
    row("Startup to kubeconfig".into(), "", &|r| ms(r.startup));

    let mut s = String::from("| Figure | Goal |");
    for (store, _) in results {
        s.push_str(&format!(" {} |", store.name()));
    }
    s.push_str("\n|---|---|");
    for _ in results {
        s.push_str("---|");
    }
    for (figure, goal, cells) in rows {
        s.push_str(&format!("\n| {figure} | {goal} |"));
        for c in cells {
            s.push_str(&format!(" {c} |"));
        }
    }
    for (store, r) in results {
        if let Some(e) = &r.first_error {
            s.push_str(&format!("\n\nfirst error ({}): {e}", store.name()));
        }
    }
    s
}
