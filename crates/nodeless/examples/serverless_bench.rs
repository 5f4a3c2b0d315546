//! Serverless pod startup benchmark (issue 6's figures): pod startup latency as Kubernetes
//! measures it (creation -> Running, observed by watch), image cached, gVisor, for pods created
//! one after another and for a burst, next to the bare sandbox start of the same image in the
//! same run.
//!
//! It starts the release `nodeless` the way `nodeless up` does (the API server with controllers
//! and the serverless scheduler without leader election, one host agent with gVisor sandboxes,
//! the default profile `fp-default`), but as two processes so that the host agent can offer
//! `--allocatable-cpu` CPUs (default 16): `up` offers this machine's 2 cores, room for 8 pods of
//! 0.25 vCPU, too few for a burst of 30. Free loopback ports, a temporary data dir, a pod CIDR
//! of its own. A busybox image is built into an OCI layout and pushed with skopeo to the
//! cluster's registry; a first pod pulls it. Then:
//! - `--pods` pods created one after another, each waited Running before the next is created
//!   (they stay, as in Kubernetes' density test; deleted together afterwards);
//! - a burst of `--pods` pods created at once (concurrent creates), all waited Running.
//!
//! Times come from one watch on the bench's pods and one on the serverless Nodes, taken when an
//! event arrives. creationTimestamp has a resolution of one second (and is rounded), so the
//! clock starts when the bench sends the create (the creation lies within that create call,
//! whose duration is printed too). Phases per pod: the Node created (watch), the pod bound
//! (`spec.nodeName` seen), the agent serving the Node, the pod attached to the pod network,
//! the pause container and the pod's container started (the agent's own log
//! timestamps, `NODELESS_LOG=debug`), the Node Ready and the pod Running (watch).
//!
//! The bare sandbox: `nodeless sandbox run --runtime gvisor` of the same image (from the same
//! OCI layout, pulled once, one warm-up), whose command is `echo ready`: the time from spawning
//! the process to that line on its stdout.
//!
//! Run (as root, with runsc and skopeo): `cargo build --release -p nodeless --examples &&
//! target/release/examples/serverless_bench` (`--help` for the options). Everything is deleted
//! at the end: the pods, then their Nodes and sandboxes are waited gone, the processes stopped
//! and the temp dir removed (`--keep` keeps it, with the logs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/image.rs"]
mod image;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, watcher};

const NS: &str = "default";
const LABEL: &str = "bench";
const LABEL_VALUE: &str = "serverless";
const REPO: &str = "team/busybox";
const TAG: &str = "1";

/// Benchmark serverless pod startup.
#[derive(Debug, clap::Parser)]
struct Args {
    /// Pods created one after another, and pods in the burst.
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Bare sandbox starts (`nodeless sandbox run --runtime RUNTIME`).
    #[arg(long, default_value_t = 10)]
    sandbox_runs: usize,
    /// The agent's runtime for the pods, and the bare sandbox's: gvisor or microvm (QEMU; under
    /// software emulation on hosts without VMX/SVM: use few pods).
    #[arg(long, default_value = "gvisor")]
    runtime: String,
    /// CPUs the host agent offers (each pod takes 0.25).
    #[arg(long, default_value = "16")]
    allocatable_cpu: String,
    /// Memory the host agent offers (each pod takes 0.5 GB).
    #[arg(long, default_value = "32Gi")]
    allocatable_memory: String,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// Keep the temp dir (logs, data) instead of removing it.
    #[arg(long)]
    keep: bool,
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
    for tool in ["runsc", "skopeo"] {
        if !on_path(tool) {
            bail!("{tool} is required (scripts/setup.sh installs it)");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let dir = tempfile::Builder::new()
        .prefix("serverless-bench-")
        .tempdir()?;
    let result = runtime.block_on(async {
        let mut cluster = None;
        let r = tokio::select! {
            r = tokio::time::timeout(timeout, run(&bin, &args, dir.path(), &mut cluster)) => match r {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("timed out after {timeout:?}")),
            },
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        if let Some(c) = cluster.take() {
            shutdown(c).await;
        }
        r
    });
    if args.keep {
        let kept = dir.keep();
        eprintln!("serverless_bench: kept {}", kept.display());
    }
    result
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// `target/release/nodeless` when this example is `target/release/examples/serverless_bench`.
fn default_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected path of the example")?;
    Ok(dir.join("nodeless"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The running cluster: its processes (agent first: it is stopped first) and what the
/// clean-up needs.
struct Cluster {
    procs: Vec<Child>,
    client: kube::Client,
    data: PathBuf,
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    Command::new(bin)
        .args(args)
        .env(
            "NODELESS_LOG",
            "info,agent=debug,sandbox=debug,controllers=debug",
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))
}

/// A pod subnet of its own (`10.B.C.0/24`), apart from the end-to-end tests' 10.200-249.
fn pod_cidr() -> String {
    let salt = std::process::id();
    format!("10.{}.{}.0/24", 150 + salt % 40, (salt / 40) % 250 + 1)
}

async fn start_cluster(
    bin: &Path,
    args: &Args,
    dir: &Path,
    slot: &mut Option<Cluster>,
) -> anyhow::Result<(kube::Client, String)> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data)?;
    let (api, reg) = (free_port()?, free_port()?);
    let kubeconfig = data.join("admin.kubeconfig");
    let server_log = dir.join("server.log");
    let server = spawn(
        bin,
        &[
            "server".into(),
            format!("--data-dir={}", data.display()),
            format!("--bind=127.0.0.1:{api}"),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--registry-bind=127.0.0.1:{reg}"),
            "--no-leader-elect".into(),
        ],
        &server_log,
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        if kubeconfig.exists()
            && let Ok(kc) = Kubeconfig::read_from(&kubeconfig)
            && let Ok(cfg) =
                kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await
            && let Ok(client) = kube::Client::try_from(cfg)
            && client.apiserver_version().await.is_ok()
        {
            break client;
        }
        if Instant::now() > deadline {
            bail!("the server did not come up: {}", log_tail(&server_log));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    *slot = Some(Cluster {
        procs: vec![server],
        client: client.clone(),
        data: data.clone(),
    });
    // The default profile, as `nodeless up` makes it.
    let ar = controllers::profiles::api_resource();
    let profiles: Api<kube::core::DynamicObject> = Api::all_with(client.clone(), &ar);
    let sp: kube::core::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "nodeless.io/v1", "kind": "ServerlessProfile",
        "metadata": {"name": "fp-default"},
        "spec": {"selectors": [{"namespace": "default"}, {"namespace": "kube-system"}]}
    }))?;
    match profiles.create(&PostParams::default(), &sp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("creating the profile fp-default"),
    }
    let agent_log = dir.join("agent.log");
    let agent = spawn(
        bin,
        &[
            "agent".into(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--data-dir={}", data.display()),
            "--listen=127.0.0.1:0".into(),
            format!("--pod-cidr={}", pod_cidr()),
            format!("--runtime={}", args.runtime),
            format!("--allocatable-cpu={}", args.allocatable_cpu),
            format!("--allocatable-memory={}", args.allocatable_memory),
        ],
        &agent_log,
    )?;
    if let Some(c) = slot.as_mut() {
        c.procs.insert(0, agent);
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = leases
            .list(&ListParams::default().labels("nodeless.io/host-agent=true"))
            .await?;
        if !l.items.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the host agent did not publish itself: {}",
                log_tail(&agent_log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((client, format!("127.0.0.1:{reg}")))
}

/// Deletes the bench's pods, waits for their Nodes and sandboxes to be gone, then stops the
/// processes (SIGTERM, then SIGKILL).
async fn shutdown(mut c: Cluster) {
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), NS);
    let _ = pods
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default().labels(&format!("{LABEL}={LABEL_VALUE}")),
        )
        .await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let left_nodes = nodes
            .list(&ListParams::default().labels("nodeless.io/compute-type=serverless"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        let left_pods = pods
            .list(&ListParams::default().labels(&format!("{LABEL}={LABEL_VALUE}")))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0);
        let left_mounts = mounts_under(&c.data);
        if left_nodes == 0 && left_pods == 0 && left_mounts == 0 {
            break;
        }
        if Instant::now() > deadline {
            eprintln!(
                "serverless_bench: clean-up incomplete: {left_pods} pods, {left_nodes} nodes, \
                 {left_mounts} mounts left"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for p in &mut c.procs {
        let _ = Command::new("kill")
            .args(["-TERM", &p.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = p.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = p.kill();
        let _ = p.wait();
    }
}

fn mounts_under(data: &Path) -> usize {
    let d = data.display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&d)))
        .count()
}

/// Builds the image and pushes it with skopeo; returns its reference and the OCI layout.
fn push(bin: &Path, data: &Path, registry: &str) -> anyhow::Result<(String, PathBuf)> {
    let regdir = data.join("registry");
    let rd = regdir.display().to_string();
    let _ = Command::new(bin)
        .args(["registry", "create-repository", REPO, "--data-dir", &rd])
        .output();
    let out = Command::new(bin)
        .args(["registry", "get-login-password", "--data-dir", &rd])
        .output()?;
    if !out.status.success() {
        bail!(
            "get-login-password: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let layout = data.join("layout");
    image::busybox_layout(&layout, TAG, &["sleep", "3600"], &[]);
    let dest = format!("{registry}/{REPO}:{TAG}");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:{TAG}", layout.display()))
        .arg(format!("docker://{dest}"))
        .arg("--dest-creds")
        .arg(format!("nodeless:{token}"))
        .arg("--dest-cert-dir")
        .arg(regdir.join("tls"))
        .output()?;
    if !out.status.success() {
        bail!("skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((dest, layout))
}

/// What the watches saw of one pod, as offsets from the bench's start.
#[derive(Debug, Default, Clone)]
struct Seen {
    node: Option<String>,
    bound: Option<Instant>,
    running: Option<Instant>,
    failed: Option<String>,
}

#[derive(Default)]
struct Watched {
    pods: HashMap<String, Seen>,
    /// Node name -> (its uid, created seen, Ready seen).
    nodes: HashMap<String, (String, Option<Instant>, Option<Instant>)>,
}

type Shared = Arc<(Mutex<Watched>, tokio::sync::Notify)>;

fn spawn_watches(client: &kube::Client, shared: &Shared) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let s = shared.clone();
    tokio::spawn(async move {
        let cfg = watcher::Config::default().labels(&format!("{LABEL}={LABEL_VALUE}"));
        let mut w = watcher(pods, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = w.next().await {
            let Ok(p) = ev else { continue };
            let now = Instant::now();
            let name = p.metadata.name.clone().unwrap_or_default();
            let mut g = s.0.lock().unwrap();
            let seen = g.pods.entry(name).or_default();
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.clone())
                && seen.bound.is_none()
            {
                seen.bound = Some(now);
                seen.node = Some(n);
            }
            let phase = p.status.as_ref().and_then(|s| s.phase.clone());
            if phase.as_deref() == Some("Running") && seen.running.is_none() {
                seen.running = Some(now);
            }
            if let Some(ph) = phase.filter(|p| p == "Failed" || p == "Succeeded") {
                seen.failed = Some(ph);
            }
            drop(g);
            s.1.notify_waiters();
        }
    });
    let nodes: Api<Node> = Api::all(client.clone());
    let s = shared.clone();
    tokio::spawn(async move {
        let cfg = watcher::Config::default().labels("nodeless.io/compute-type=serverless");
        let mut w = watcher(nodes, cfg)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(ev) = w.next().await {
            let Ok(n) = ev else { continue };
            let now = Instant::now();
            let name = n.metadata.name.clone().unwrap_or_default();
            let ready = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let uid = n.metadata.uid.clone().unwrap_or_default();
            let mut g = s.0.lock().unwrap();
            // Node names are reused: a new incarnation starts afresh.
            let e = g.nodes.entry(name).or_default();
            if e.0 != uid {
                *e = (uid, Some(now), None);
            }
            if ready && e.2.is_none() {
                e.2 = Some(now);
            }
        }
    });
}

/// One created pod: when the create was sent (monotonic and wall clock) and how long it took.
#[derive(Debug, Clone)]
struct Created {
    name: String,
    sent: Instant,
    sent_wall: jiff::Timestamp,
    call: Duration,
}

fn pod(name: &str, image: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(LABEL.to_string(), LABEL_VALUE.to_string())].into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            termination_grace_period_seconds: Some(0),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create(api: &Api<Pod>, name: &str, image: &str) -> anyhow::Result<Created> {
    let p = pod(name, image);
    let sent_wall = jiff::Timestamp::now();
    let sent = Instant::now();
    api.create(&PostParams::default(), &p)
        .await
        .with_context(|| format!("creating pod {name}"))?;
    Ok(Created {
        name: name.into(),
        sent,
        sent_wall,
        call: sent.elapsed(),
    })
}

async fn wait_running(shared: &Shared, names: &[String], within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let notified = shared.1.notified();
        {
            let g = shared.0.lock().unwrap();
            let mut all = true;
            for n in names {
                let s = g.pods.get(n);
                if let Some(f) = s.and_then(|s| s.failed.as_ref()) {
                    bail!("pod {n} ended ({f}) before it was seen Running");
                }
                all &= s.is_some_and(|s| s.running.is_some());
            }
            if all {
                return Ok(());
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("pods not Running within {within:?}");
        }
        let _ = tokio::time::timeout(left.min(Duration::from_millis(500)), notified).await;
    }
}

/// Deletes the pods and waits until their Nodes are gone and the host has removed their
/// sandboxes (no pod directory, no mount left), so that the next phase starts on a quiet host.
async fn delete_and_wait(
    client: &kube::Client,
    data: &Path,
    names: &[String],
) -> anyhow::Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    for n in names {
        let _ = api
            .delete(n, &DeleteParams::default().grace_period(0))
            .await;
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let pods_left = api
            .list(&ListParams::default().labels(&format!("{LABEL}={LABEL_VALUE}")))
            .await?
            .items
            .len();
        let nodes_left = nodes
            .list(&ListParams::default().labels("nodeless.io/compute-type=serverless"))
            .await?
            .items
            .len();
        let sandboxes_left = std::fs::read_dir(data.join("agent/pods"))
            .map(|d| d.count())
            .unwrap_or(0);
        let mounts_left = mounts_under(data);
        if pods_left == 0 && nodes_left == 0 && sandboxes_left == 0 && mounts_left == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{pods_left} pods, {nodes_left} nodes, {sandboxes_left} sandboxes and \
                 {mounts_left} mounts still there after 120 s"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// One pod's timeline, in ms from the create being sent.
#[derive(Debug, Default, Clone)]
struct Timeline {
    call: f64,
    node_created: Option<f64>,
    bound: Option<f64>,
    agent_node: Option<f64>,
    agent_start: Option<f64>,
    attached: Option<f64>,
    containers: Option<f64>,
    pause: Option<f64>,
    node_ready: Option<f64>,
    running: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A line of the agent's log: its timestamp and text.
struct LogLine {
    at: jiff::Timestamp,
    text: String,
}

fn read_log(path: &Path) -> Vec<LogLine> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (ts, rest) = l.split_once(' ')?;
            Some(LogLine {
                at: ts.parse().ok()?,
                text: rest.to_string(),
            })
        })
        .collect()
}

/// True when `text` names `word` as a whole token (pod names are prefixes of one another).
fn names(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let after = text[i + word.len()..].chars().next();
        let before = text[..i].chars().next_back();
        let sep = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'));
        sep(after) && sep(before)
    })
}

fn timelines(
    created: &[Created],
    shared: &Shared,
    log: &[LogLine],
) -> anyhow::Result<Vec<Timeline>> {
    let g = shared.0.lock().unwrap();
    let mut out = Vec::new();
    for c in created {
        let seen = g
            .pods
            .get(&c.name)
            .with_context(|| format!("pod {} never seen", c.name))?;
        let rel = |t: Option<Instant>| t.map(|t| ms(t.saturating_duration_since(c.sent)));
        let node = seen.node.clone().unwrap_or_default();
        let (node_created, node_ready) = g.nodes.get(&node).map(|n| (n.1, n.2)).unwrap_or_default();
        let from_log = |pred: &dyn Fn(&str) -> bool, last: bool| -> Option<f64> {
            let mut hits = log
                .iter()
                .filter(|l| l.at >= c.sent_wall && pred(&l.text))
                .map(|l| l.at.duration_since(c.sent_wall).as_secs_f64() * 1000.0);
            if last { hits.last() } else { hits.next() }
        };
        let pod_id = format!("{NS}_{}_", c.name);
        out.push(Timeline {
            call: ms(c.call),
            node_created: rel(node_created),
            bound: rel(seen.bound),
            agent_node: from_log(
                &|t| t.contains("serving node") && names(t, &node) && !node.is_empty(),
                false,
            ),
            agent_start: from_log(
                &|t| {
                    t.contains("input=Observed")
                        && t.contains("actions=[Start]")
                        && names(t, &c.name)
                },
                false,
            ),
            attached: from_log(
                &|t| t.contains("pod attached to the network") && t.contains(&pod_id),
                false,
            ),
            containers: from_log(
                &|t| t.contains("container running") && t.contains(&pod_id),
                true,
            ),
            pause: from_log(
                &|t| {
                    t.contains("container started") && t.contains(&pod_id) && t.contains("-pause ")
                },
                false,
            ),
            node_ready: rel(node_ready),
            running: rel(seen.running).context("not Running")?,
        });
    }
    Ok(out)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64, usize) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (
        percentile(&v, 0.5),
        percentile(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN),
        n,
    )
}

/// The time the sandbox layer took: from the agent starting the pod to its last container
/// running (the agent's log; for gVisor, once runsc reports the sandbox booted).
fn sandbox_time(t: &Timeline) -> Option<f64> {
    Some(t.containers? - t.agent_start?)
}

/// One row of the phase table: its name's reader of a timeline.
type Phase = Box<dyn Fn(&Timeline) -> Option<f64>>;

fn print_phases(title: &str, t: &[Timeline]) {
    println!("\n{title}: ms from the create being sent (p50 / p99 / max, n)");
    let rows: [(&str, Phase); 12] = [
        ("create call returned", Box::new(|t| Some(t.call))),
        ("Node created (watch)", Box::new(|t| t.node_created)),
        ("pod bound (watch)", Box::new(|t| t.bound)),
        ("agent serving the Node (log)", Box::new(|t| t.agent_node)),
        ("agent starts the pod (log)", Box::new(|t| t.agent_start)),
        ("pod network attached (log)", Box::new(|t| t.attached)),
        ("pause container started (log)", Box::new(|t| t.pause)),
        ("containers running (log)", Box::new(|t| t.containers)),
        ("Node Ready (watch)", Box::new(|t| t.node_ready)),
        ("pod Running (watch)", Box::new(|t| Some(t.running))),
        ("= in the sandbox (start->running)", Box::new(sandbox_time)),
        (
            "= the rest (API, scheduler, agent)",
            Box::new(|t| Some(t.running - sandbox_time(t)?)),
        ),
    ];
    for (name, f) in rows {
        let v: Vec<f64> = t.iter().filter_map(&f).collect();
        let (p50, p99, max, n) = stats(v);
        println!("  {name:<30} {p50:>8.1} {p99:>8.1} {max:>8.1}  {n}");
    }
}

/// Bare sandbox starts: `nodeless sandbox run --runtime gvisor` of the image from its OCI
/// layout, whose command is `echo ready`; the time from spawning the process to that line
/// arriving on its stdout (the container's first act, through the shim's output pipe).
fn bare_starts(
    bin: &Path,
    dir: &Path,
    layout: &Path,
    runs: usize,
    runtime: &str,
) -> anyhow::Result<Vec<f64>> {
    use std::io::BufRead as _;
    let data = dir.join("bare");
    let image = format!("oci:{}:{TAG}", layout.display());
    let mut out = Vec::new();
    for i in 0..=runs {
        let t0 = Instant::now();
        let mut child = Command::new(bin)
            .args(["sandbox", "--data-dir"])
            .arg(&data)
            .args(["run", "--runtime", runtime, &image, "--", "echo", "ready"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        let stdout = child.stdout.take().context("no stdout")?;
        std::io::BufReader::new(stdout).read_line(&mut line)?;
        let first = t0.elapsed();
        let o = child.wait_with_output()?;
        if !o.status.success() || line.trim() != "ready" {
            bail!(
                "nodeless sandbox run printed {line:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        if i > 0 {
            // The first run pulls the image: a warm-up.
            out.push(ms(first));
        }
    }
    Ok(out)
}

async fn run(
    bin: &Path,
    args: &Args,
    dir: &Path,
    slot: &mut Option<Cluster>,
) -> anyhow::Result<()> {
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let t = Instant::now();
    let (client, registry) = start_cluster(bin, args, dir, slot).await?;
    let data = dir.join("data");
    let (image, layout) = push(bin, &data, &registry)?;
    eprintln!(
        "serverless_bench: cluster up and image pushed in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let shared: Shared = Arc::new((Mutex::new(Watched::default()), tokio::sync::Notify::new()));
    spawn_watches(&client, &shared);
    let api: Api<Pod> = Api::namespaced(client.clone(), NS);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The first pod pulls the image.
    let warm = create(&api, "bench-warm", &image).await?;
    wait_running(
        &shared,
        std::slice::from_ref(&warm.name),
        Duration::from_secs(120),
    )
    .await?;
    let pull = shared.0.lock().unwrap().pods[&warm.name]
        .running
        .map(|r| ms(r - warm.sent));
    delete_and_wait(&client, &data, std::slice::from_ref(&warm.name)).await?;
    eprintln!(
        "serverless_bench: first pod (image pull) Running after {:.0} ms",
        pull.unwrap_or(f64::NAN)
    );

    // One after another.
    let mut seq = Vec::new();
    for i in 0..args.pods {
        let c = create(&api, &format!("bench-s{i:03}"), &image).await?;
        wait_running(
            &shared,
            std::slice::from_ref(&c.name),
            Duration::from_secs(60),
        )
        .await?;
        seq.push(c);
    }
    let seq_names: Vec<String> = seq.iter().map(|c| c.name.clone()).collect();
    let seq_t = timelines(&seq, &shared, &read_log(&dir.join("agent.log")))?;
    delete_and_wait(&client, &data, &seq_names).await?;

    // A burst.
    let t0 = Instant::now();
    let creates = (0..args.pods).map(|i| {
        let api = api.clone();
        let image = image.clone();
        async move { create(&api, &format!("bench-b{i:03}"), &image).await }
    });
    let burst: Vec<Created> = futures::future::try_join_all(creates).await?;
    let burst_names: Vec<String> = burst.iter().map(|c| c.name.clone()).collect();
    wait_running(&shared, &burst_names, Duration::from_secs(300)).await?;
    let all_running = {
        let g = shared.0.lock().unwrap();
        burst_names
            .iter()
            .filter_map(|n| g.pods[n].running)
            .max()
            .map(|t| ms(t - t0))
            .unwrap_or(f64::NAN)
    };
    let burst_t = timelines(&burst, &shared, &read_log(&dir.join("agent.log")))?;
    delete_and_wait(&client, &data, &burst_names).await?;

    // The bare sandbox, same image, same run.
    let bare = bare_starts(bin, dir, &layout, args.sandbox_runs, &args.runtime)?;

    let load = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    print_phases(&format!("{} pods one after another", args.pods), &seq_t);
    print_phases(&format!("burst of {} pods", args.pods), &burst_t);
    let (s50, s99, smax, _) = stats(seq_t.iter().map(|t| t.running).collect());
    let (b50, b99, bmax, _) = stats(burst_t.iter().map(|t| t.running).collect());
    let (r50, r99, rmax, rn) = stats(bare);
    println!(
        "\nPod startup (create sent -> Running seen by watch), image cached, runtime {}; load \
         average {} before, {} after",
        args.runtime,
        load(&load_before),
        load(&load_after)
    );
    println!("| case | n | p50 ms | p99 ms | max ms | goal |");
    println!("|---|---|---|---|---|---|");
    let ok = |b: bool| if b { "✓" } else { "✗" };
    println!(
        "| one after another | {} | {s50:.0} | {s99:.0} | {smax:.0} | p50 ≤ 300 {}, p99 ≤ 1000 {} |",
        seq_t.len(),
        ok(s50 <= 300.0),
        ok(s99 <= 1000.0)
    );
    println!(
        "| burst | {} | {b50:.0} | {b99:.0} | {bmax:.0} | all Running in {:.2} s (≤ 5 s {}) |",
        burst_t.len(),
        all_running / 1000.0,
        ok(all_running <= 5000.0)
    );
    println!(
        "| bare sandbox (`nodeless sandbox run --runtime {}`) | {rn} | {r50:.0} | {r99:.0} | {rmax:.0} | |",
        args.runtime
    );
    let (i50, i99, imax, inn) = stats(seq_t.iter().filter_map(sandbox_time).collect());
    println!(
        "| in the sandbox layer, one after another (agent start -> containers running) | {inn} | {i50:.0} | {i99:.0} | {imax:.0} | |"
    );
    let rest = |t: &[Timeline]| {
        stats(
            t.iter()
                .filter_map(|t| Some(t.running - sandbox_time(t)?))
                .collect(),
        )
    };
    let (o50, o99, omax, on) = rest(&seq_t);
    println!(
        "| the rest: API server, admission, scheduler, agent (one after another) | {on} | {o50:.0} | {o99:.0} | {omax:.0} | p50 ≤ 100 {} |",
        ok(o50 <= 100.0)
    );
    let (q50, q99, qmax, qn) = rest(&burst_t);
    println!("| the rest (burst) | {qn} | {q50:.0} | {q99:.0} | {qmax:.0} | |");
    println!(
        "| one after another p50 - bare p50 | | {:.0} | | | |",
        s50 - r50
    );
    Ok(())
}
