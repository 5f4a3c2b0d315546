//! Cluster benchmark (issue 5's figure): with N fake nodes, how fast a Deployment of R replicas
//! goes from create to all pods scheduled and to all replicas available, and the latency of a
//! steady mix of API calls made meanwhile.
//!
//! It starts the real `nodeless server` (controllers and scheduler in process, SQLite store) and
//! one `nodeless agent --runtime fake --nodes N` on 127.0.0.1 with a temporary data dir, waits for
//! N Ready nodes, creates the Deployment with kube-rs and follows it by watch (pods' `nodeName`,
//! the Deployment's `status.availableReplicas`). A probe with one kept-alive `kube::Client` sends
//! `--probe-rate` calls per second (in turn: list pods with limit=1, get a configmap, create a
//! configmap), timed from their scheduled send time, until the Deployment is available. It also
//! prints a timeline (when the pod watch first saw 10/50/90/100 % of the pods created, bound and
//! Ready) and the load average, since the machine is usually shared.
//!
//! Run: `cargo build --release -p nodeless && cargo run --release -p nodeless --example cluster_bench`
//! (`--help` for the options). Every process it starts is killed and its temp dir removed when it
//! ends. Goals (printed next to the figures): >= 300 pods/s scheduled and Running, API p99 <= 100 ms.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, Node, Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};

const NS: &str = "default";
const NAME: &str = "cluster-bench";

/// Benchmark a whole nodeless cluster with fake nodes.
#[derive(Debug, clap::Parser)]
struct Args {
    /// Fake nodes (one agent process).
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    /// Replicas of the Deployment.
    #[arg(long, default_value_t = 1000)]
    replicas: i32,
    /// API calls per second made by the latency probe.
    #[arg(long, default_value_t = 50)]
    probe_rate: u32,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// The nodeless binary [default: target/release/nodeless, next to this example's directory].
    #[arg(long)]
    bin: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
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
    let timeout = Duration::from_secs(args.timeout_secs);
    runtime.block_on(async move {
        tokio::select! {
            r = tokio::time::timeout(timeout, run(&bin, &args)) => match r {
                Ok(r) => r,
                Err(_) => bail!("timed out after {timeout:?}"),
            },
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })
}

/// `target/release/nodeless` when this example is `target/release/examples/cluster_bench`.
fn default_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected path of the example")?;
    Ok(dir.join("nodeless"))
}

/// A child process, killed (and waited for) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

async fn run(bin: &Path, args: &Args) -> anyhow::Result<()> {
    // Field order matters for drop: the agent, then the server, then the temp dir.
    let dir = tempfile::Builder::new()
        .prefix("cluster-bench-")
        .tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let kubeconfig = dir.path().join("admin.kubeconfig");
    let server_log = dir.path().join("server.log");
    let mut server = Proc(
        Command::new(bin)
            .arg("server")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--bind")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--registry-bind", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&server_log)?)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.0.try_wait()? {
            bail!("the server exited with {status}: {}", log_tail(&server_log));
        }
        if kubeconfig.exists()
            && tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the server did not become ready: {}", log_tail(&server_log));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let config = {
        let kc = Kubeconfig::read_from(&kubeconfig)?;
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?
    };
    let client = kube::Client::try_from(config.clone())?;

    let agent_log = dir.path().join("agent.log");
    let mut agent = Proc(
        Command::new(bin)
            .args(["agent", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(["--worker", "--runtime", "fake", "--node-name", "bench"])
            .args(["--nodes", &args.nodes.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&agent_log)?)
            .spawn()
            .with_context(|| format!("cannot start the agent {}", bin.display()))?,
    );
    let started = Instant::now();
    let nodes: Api<Node> = Api::all(client.clone());
    loop {
        if let Some(status) = agent.0.try_wait()? {
            bail!("the agent exited with {status}: {}", log_tail(&agent_log));
        }
        let ready = nodes
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|n| node_ready(n))
            .count();
        if ready >= args.nodes as usize {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {ready} of {} nodes Ready after 120 s: {}",
                args.nodes,
                log_tail(&agent_log)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "cluster_bench: {} Ready nodes after {:.1} s; creating a Deployment of {} replicas",
        args.nodes,
        started.elapsed().as_secs_f64(),
        args.replicas
    );

    let result = measure(&config, &client, args).await;
    drop(agent);
    drop(server);
    let r = result?;
    let replicas = f64::from(args.replicas);
    let sched = r.scheduled.as_secs_f64();
    let avail = r.available.as_secs_f64();
    println!(
        "nodes={} replicas={} probe_rate={}/s load average {}",
        args.nodes,
        args.replicas,
        args.probe_rate,
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "scheduled: all {} pods have spec.nodeName after {sched:.2} s = {:.0} pods/s (goal >= 300)",
        args.replicas,
        replicas / sched
    );
    println!(
        "available: availableReplicas={} after {avail:.2} s = {:.0} pods/s (goal >= 300)",
        args.replicas,
        replicas / avail
    );
    println!("{}", r.timeline);
    let mut lat = r.latencies;
    lat.sort();
    println!(
        "API probe: {} calls ({} errors), p50 {:.1} ms, p99 {:.1} ms (goal <= 100), max {:.1} ms",
        lat.len(),
        r.errors,
        ms(percentile(&lat, 0.50)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );
    Ok(())
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// When the pod watch first saw each pod created, bound and Ready.
#[derive(Default)]
struct Timeline {
    created: BTreeMap<String, Instant>,
    bound: BTreeMap<String, Instant>,
    ready: BTreeMap<String, Instant>,
}

impl Timeline {
    /// "10% 50% 90% 100%" of the stage's times since `t0`, in seconds.
    fn marks(times: &BTreeMap<String, Instant>, t0: Instant, total: usize) -> String {
        let mut v: Vec<Duration> = times.values().map(|t| *t - t0).collect();
        v.sort();
        [0.1, 0.5, 0.9, 1.0]
            .iter()
            .map(|p| {
                let i = ((p * total as f64).ceil() as usize).clamp(1, total.max(1)) - 1;
                v.get(i)
                    .map_or("-".to_string(), |d| format!("{:.2}", d.as_secs_f64()))
            })
            .collect::<Vec<_>>()
            .join(" / ")
    }
}

struct Measured {
    timeline: String,
    scheduled: Duration,
    available: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

async fn measure(
    config: &kube::Config,
    client: &kube::Client,
    args: &Args,
) -> anyhow::Result<Measured> {
    let labels = BTreeMap::from([("app".to_string(), NAME.to_string())]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let replicas = args.replicas;

    // The watches start before the create, so that nothing is missed.
    let (sched_tx, sched_rx) = tokio::sync::oneshot::channel::<Instant>();
    let pod_watch = watcher(
        pods,
        watcher::Config::default().labels(&format!("app={NAME}")),
    )
    .default_backoff()
    .applied_objects()
    .boxed();
    // Per pod: when the watch first showed it, showed it bound, showed it Ready.
    let timeline: Arc<Mutex<Timeline>> = Arc::default();
    let pod_task = {
        let timeline = timeline.clone();
        tokio::spawn(async move {
            let mut pod_watch = pod_watch;
            let mut sched_tx = Some(sched_tx);
            while let Some(pod) = pod_watch.next().await {
                let Ok(pod) = pod else { continue };
                let Some(name) = pod.metadata.name.clone() else {
                    continue;
                };
                let now = Instant::now();
                let mut t = timeline.lock().unwrap();
                t.created.entry(name.clone()).or_insert(now);
                if pod.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
                    t.bound.entry(name.clone()).or_insert(now);
                    if t.bound.len() >= replicas as usize
                        && let Some(tx) = sched_tx.take()
                    {
                        let _ = tx.send(now);
                    }
                }
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if ready {
                    t.ready.entry(name).or_insert(now);
                }
            }
        })
    };
    let (avail_tx, avail_rx) = tokio::sync::oneshot::channel::<Instant>();
    let dep_watch = watcher(
        deployments.clone(),
        watcher::Config::default().fields(&format!("metadata.name={NAME}")),
    )
    .default_backoff()
    .applied_objects()
    .boxed();
    let dep_task = tokio::spawn(async move {
        let mut dep_watch = dep_watch;
        while let Some(d) = dep_watch.next().await {
            let Ok(d) = d else { continue };
            if d.metadata.name.as_deref() == Some(NAME)
                && d.status
                    .and_then(|s| s.available_replicas)
                    .is_some_and(|a| a >= replicas)
            {
                let _ = avail_tx.send(Instant::now());
                return;
            }
        }
    });
    // Let the watches reach the server before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The probe: its own client (one kept-alive connection pool), open loop.
    let probe_client = kube::Client::try_from(config.clone())?;
    let probe_cms: Api<ConfigMap> = Api::namespaced(probe_client.clone(), NS);
    probe_cms
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("cluster-bench-probe".into()),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("k".into(), "v".into())])),
                ..Default::default()
            },
        )
        .await?;
    let samples = Arc::new(Mutex::new((Vec::new(), 0usize)));
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let probe = {
        let samples = samples.clone();
        let rate = args.probe_rate.max(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut inflight = Vec::new();
            for i in 0u64.. {
                let at = tokio::select! {
                    at = tick.tick() => at,
                    _ = stop_rx.changed() => break,
                };
                let pods: Api<Pod> = Api::namespaced(probe_client.clone(), NS);
                let cms = probe_cms.clone();
                let samples = samples.clone();
                inflight.push(tokio::spawn(async move {
                    let ok = match i % 3 {
                        0 => pods.list(&ListParams::default().limit(1)).await.is_ok(),
                        1 => cms.get("cluster-bench-probe").await.is_ok(),
                        _ => {
                            let cm = ConfigMap {
                                metadata: ObjectMeta {
                                    name: Some(format!("cluster-bench-probe-{i}")),
                                    ..Default::default()
                                },
                                ..Default::default()
                            };
                            cms.create(&PostParams::default(), &cm).await.is_ok()
                        }
                    };
                    let took = at.elapsed();
                    let mut s = samples.lock().unwrap();
                    if ok {
                        s.0.push(took);
                    } else {
                        s.1 += 1;
                    }
                }));
            }
            for t in inflight {
                let _ = t.await;
            }
        })
    };

    let deployment = Deployment {
        metadata: ObjectMeta {
            name: Some(NAME.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "c".into(),
                        image: Some("nginx:1.27".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let t0 = Instant::now();
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let scheduled = sched_rx
        .await
        .context("the pod watch ended before all pods were scheduled")?;
    eprintln!(
        "cluster_bench: all pods scheduled after {:.2} s",
        (scheduled - t0).as_secs_f64()
    );
    let available = avail_rx
        .await
        .context("the Deployment watch ended before it was available")?;
    let _ = stop_tx.send(true);
    probe.await?;
    pod_task.abort();
    dep_task.abort();
    let (latencies, errors) = std::mem::take(&mut *samples.lock().unwrap());
    let timeline = {
        let t = timeline.lock().unwrap();
        let n = replicas as usize;
        format!(
            "timeline (s after create, 10% / 50% / 90% / 100% of the pods): created {}; bound {}; Ready {}",
            Timeline::marks(&t.created, t0, n),
            Timeline::marks(&t.bound, t0, n),
            Timeline::marks(&t.ready, t0, n)
        )
    };
    Ok(Measured {
        timeline,
        scheduled: scheduled - t0,
        available: available - t0,
        latencies,
        errors,
    })
}
