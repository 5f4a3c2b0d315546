//! The agent's shell: registers the worker nodes, publishes the host Lease and adopts the
//! serverless Nodes the scheduler makes for this host (host mode), renews their leases, keeps
//! their status, and drives each pod bound to them through [`crate::lifecycle`] with a
//! [`Runtime`]. The set of served nodes changes while the agent runs: one pod watch sees every
//! bound pod and filters by the current set; in host mode, pods bound to a node not (yet) in the
//! set are parked and looked at again when their node joins, so a pod bound just after its Node
//! appeared is not missed. Status writes go through one writer task per pod (the latest status
//! wins, the final DELETE comes after it) with a bound on the writes in flight.
//!
//! At start, the pods the runtime recovered (they outlived an earlier agent) are adopted as they
//! run, never started again; the uids the runtime announces (`take_changes`) get their status
//! rewritten from `pod_status`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use api::placement::{HOST_LABEL, HOST_LEASE_NAMESPACE};
use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::host::{self, HostSpec, ServerlessNode};
use crate::lifecycle::{Action, Exit, Input, PodState, RestartPolicy, transition};
use crate::node::{self, Endpoint, Ipam, NodeSpec};
use crate::runtime::{Runtime, Started};
use crate::status;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The worker nodes this process registers and serves.
    pub nodes: Vec<NodeSpec>,
    /// Host mode: publish this host's Lease and serve the Nodes labelled `nodeless.io/host=HOST`.
    pub host: Option<HostSpec>,
    /// The streaming server, published on the nodes and the host Lease.
    pub endpoint: Option<Endpoint>,
    /// Status writes (and deletes) in flight at once. More than a few only lengthens the API
    /// server's queue once it is busy (the latency every other client sees), not the throughput.
    pub concurrency: usize,
    /// How often leases are renewed (kubelet: 10 s).
    pub lease_interval: Duration,
    /// How often node conditions are checked (kubelet: 10 s); they are rewritten when they differ
    /// from what the agent reports, or every `status_report_interval`.
    pub status_interval: Duration,
    pub status_report_interval: Duration,
}

impl Config {
    /// Defaults for these worker nodes.
    pub fn new(nodes: Vec<NodeSpec>) -> Self {
        Config {
            nodes,
            host: None,
            endpoint: None,
            concurrency: 16,
            lease_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(10),
            status_report_interval: Duration::from_secs(300),
        }
    }

    /// Defaults for a serverless host.
    pub fn host(spec: HostSpec) -> Self {
        Config {
            host: Some(spec),
            ..Config::new(Vec::new())
        }
    }
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("registering node {node}")]
    Register {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("the pod watch ended")]
    WatchEnded,
}

/// A node this process serves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Served {
    /// Registered by this agent; pod IPs from its own allocator.
    Worker(NodeSpec),
    /// Made by the serverless scheduler for one pod, with that pod's IP.
    Serverless(ServerlessNode),
}

#[derive(Debug, Clone)]
struct Entry {
    served: Served,
    uid: Option<String>,
}

/// The served nodes, shared by the lease, status and host tasks.
type NodeSet = Arc<RwLock<BTreeMap<String, Entry>>>;

fn snapshot(set: &NodeSet) -> BTreeMap<String, Entry> {
    set.read().map(|s| s.clone()).unwrap_or_default()
}

/// Register the worker nodes (and, in host mode, publish the host), then serve them until the
/// pod watch ends.
pub async fn run<R: Runtime>(
    client: kube::Client,
    runtime: Arc<R>,
    config: Config,
) -> Result<(), AgentError> {
    let uids = register(&client, &config.nodes, config.endpoint.as_ref()).await?;
    let set: NodeSet = Arc::new(RwLock::new(
        config
            .nodes
            .iter()
            .map(|n| {
                let entry = Entry {
                    served: Served::Worker(n.clone()),
                    uid: uids.get(&n.name).cloned(),
                };
                (n.name.clone(), entry)
            })
            .collect(),
    ));
    let version = runtime.version();
    let (tx, rx) = mpsc::unbounded_channel::<Msg>();
    let mut tasks = vec![
        tokio::spawn(renew_leases(
            client.clone(),
            config.lease_interval,
            set.clone(),
        )),
        tokio::spawn(keep_node_status(
            client.clone(),
            config.clone(),
            set.clone(),
            version.clone(),
        )),
    ];
    if let Some(spec) = &config.host {
        tasks.push(tokio::spawn(renew_host_lease(
            client.clone(),
            spec.clone(),
            config.endpoint.clone(),
            config.lease_interval,
        )));
        tasks.push(tokio::spawn(watch_host_nodes(
            client.clone(),
            spec.name.clone(),
            set.clone(),
            tx.clone(),
            version,
            config.endpoint.clone(),
        )));
    }
    let _guard = AbortOnDrop(tasks);
    sync_pods(client, runtime, config, tx, rx).await
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Create (or update) the worker Node objects; returns their uids.
pub async fn register(
    client: &kube::Client,
    nodes: &[NodeSpec],
    endpoint: Option<&Endpoint>,
) -> Result<HashMap<String, String>, AgentError> {
    let api: Api<Node> = Api::all(client.clone());
    let port = node::kubelet_port(endpoint);
    let results: Vec<Result<(String, String), AgentError>> = stream::iter(nodes.iter().cloned())
        .map(|n| {
            let api = api.clone();
            async move {
                let err = |source| AgentError::Register {
                    node: n.name.clone(),
                    source,
                };
                let now = Timestamp::now();
                let obj: Node = serde_json::from_value(node::node_object(&n, endpoint, now))
                    .map_err(|e| err(kube::Error::SerdeError(e)))?;
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let patch = json!({"metadata": {
                            "labels": node::node_labels(&n),
                            "annotations": node::node_annotations(endpoint),
                        }});
                        api.patch(&n.name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .map_err(err)?;
                    }
                    Err(e) => return Err(err(e)),
                }
                let patch = json!({"status": node::node_status(&n, port, now)});
                let node = api
                    .patch_status(&n.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .map_err(err)?;
                Ok((n.name.clone(), node.metadata.uid.unwrap_or_default()))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.into_iter().collect()
}

/// Renew (or create) one node's Lease in `kube-node-lease`; created only while the node is
/// still served (a node that just left must not get its lease back).
async fn renew_lease(api: &Api<Lease>, set: &NodeSet, name: &str, uid: Option<&str>) {
    let lease = node::lease(name, uid, Timestamp::now());
    let patch = json!({"spec": lease["spec"].clone()});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {
            let served = set.read().is_ok_and(|s| s.contains_key(name));
            let Ok(obj) = serde_json::from_value::<Lease>(lease) else {
                return;
            };
            if !served {
                return;
            }
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => tracing::warn!(node = %name, error = %e, "creating the node lease"),
            }
        }
        Err(e) => tracing::warn!(node = %name, error = %e, "renewing the node lease"),
    }
}

async fn renew_leases(client: kube::Client, interval: Duration, set: NodeSet) {
    let api: Api<Lease> = Api::namespaced(client, node::LEASE_NAMESPACE);
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let nodes = snapshot(&set);
        stream::iter(nodes.iter())
            .for_each_concurrent(32, |(name, e)| {
                let (api, set) = (api.clone(), set.clone());
                async move { renew_lease(&api, &set, name, e.uid.as_deref()).await }
            })
            .await;
    }
}

/// The status the agent reports for a served node.
fn served_status(served: &Served, version: &str, port: u16, now: Timestamp) -> Value {
    match served {
        Served::Worker(spec) => node::node_status(spec, port, now),
        Served::Serverless(n) => host::serverless_node_status(n, version, port, now),
    }
}

async fn keep_node_status(client: kube::Client, config: Config, set: NodeSet, version: String) {
    let api: Api<Node> = Api::all(client);
    let port = node::kubelet_port(config.endpoint.as_ref());
    // A host alone lists only its own Nodes.
    let lp = match &config.host {
        Some(h) if config.nodes.is_empty() => {
            ListParams::default().labels(&format!("{HOST_LABEL}={}", h.name))
        }
        _ => ListParams::default(),
    };
    let mut last_report: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(config.status_interval);
    loop {
        tick.tick().await;
        let list = match api.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing nodes");
                continue;
            }
        };
        let ours = snapshot(&set);
        last_report.retain(|name, _| ours.contains_key(name));
        for n in list.items {
            let Some((name, entry)) = n
                .metadata
                .name
                .as_deref()
                .and_then(|name| ours.get_key_value(name))
            else {
                continue;
            };
            let due = last_report
                .get(name)
                .is_none_or(|t| t.elapsed() >= config.status_report_interval);
            if node::conditions_current(&n) && !due {
                continue;
            }
            let patch =
                json!({"status": served_status(&entry.served, &version, port, Timestamp::now())});
            match api
                .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    last_report.insert(name.clone(), Instant::now());
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => tracing::warn!(node = %name, error = %e, "updating node status"),
            }
        }
    }
}

/// Publish and renew the host Lease `kube-system/nodeless-host-HOST`.
async fn renew_host_lease(
    client: kube::Client,
    spec: HostSpec,
    endpoint: Option<Endpoint>,
    interval: Duration,
) {
    let api: Api<Lease> = Api::namespaced(client, HOST_LEASE_NAMESPACE);
    let name = host::lease_name(&spec.name);
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let lease = host::host_lease(&spec, endpoint.as_ref(), Timestamp::now());
        let patch = json!({
            "metadata": {
                "labels": lease["metadata"]["labels"].clone(),
                "annotations": lease["metadata"]["annotations"].clone(),
            },
            "spec": lease["spec"].clone(),
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {
                let Ok(obj) = serde_json::from_value::<Lease>(lease) else {
                    continue;
                };
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => tracing::info!(lease = %name, "published the host"),
                    Err(e) => tracing::warn!(lease = %name, error = %e, "creating the host lease"),
                }
            }
            Err(e) => tracing::warn!(lease = %name, error = %e, "renewing the host lease"),
        }
    }
}

/// Watch the Nodes labelled for this host: each one that appears joins the served set (status
/// and Lease written at once, its streaming endpoint annotations brought up to date: the
/// scheduler copied them from the host Lease, and they change when the agent restarts), each one
/// deleted leaves it.
async fn watch_host_nodes(
    client: kube::Client,
    host: String,
    set: NodeSet,
    tx: mpsc::UnboundedSender<Msg>,
    version: String,
    endpoint: Option<Endpoint>,
) {
    let api: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, node::LEASE_NAMESPACE);
    let port = node::kubelet_port(endpoint.as_ref());
    let cfg = watcher::Config::default().labels(&format!("{HOST_LABEL}={host}"));
    let mut s = watcher(api.clone(), cfg).default_backoff().boxed();
    let mut relist: Option<HashSet<String>> = None;
    // Bring a node up to date: its endpoint annotations (when stale), status and lease.
    let update = |n: ServerlessNode, annotate: bool| {
        let (api, leases, version, set) =
            (api.clone(), leases.clone(), version.clone(), set.clone());
        let annotations = endpoint
            .as_ref()
            .filter(|_| annotate)
            .map(Endpoint::annotations);
        tokio::spawn(async move {
            if let Some(a) = annotations {
                let patch = json!({"metadata": {"annotations": a}});
                match api
                    .patch(&n.name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 => return,
                    Err(e) => {
                        tracing::warn!(node = %n.name, error = %e, "updating the node's endpoint")
                    }
                }
            }
            let patch = json!({"status": host::serverless_node_status(&n, &version, port, Timestamp::now())});
            match api
                .patch_status(&n.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => tracing::warn!(node = %n.name, error = %e, "writing node status"),
            }
            renew_lease(&leases, &set, &n.name, n.uid.as_deref()).await;
        });
    };
    let leave = |name: &str| {
        let removed = set
            .write()
            .ok()
            .and_then(|mut s| match s.get(name) {
                Some(e) if matches!(e.served, Served::Serverless(_)) => s.remove(name),
                _ => None,
            })
            .is_some();
        if removed {
            tracing::info!(node = %name, "node gone: no longer served");
            let _ = tx.send(Msg::NodeRemoved(name.to_string()));
            let (leases, name) = (leases.clone(), name.to_string());
            tokio::spawn(async move {
                // Its ownerReference lets the garbage collector do it too; do not wait for that.
                let _ = leases.delete(&name, &DeleteParams::default()).await;
            });
        }
    };
    while let Some(ev) = s.next().await {
        let node = match ev {
            Err(e) => {
                tracing::warn!(error = %e, "agent: node watch");
                continue;
            }
            Ok(watcher::Event::Init) => {
                relist = Some(HashSet::new());
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(seen) = relist.take() {
                    let gone: Vec<String> = snapshot(&set)
                        .into_iter()
                        .filter(|(name, e)| {
                            matches!(e.served, Served::Serverless(_)) && !seen.contains(name)
                        })
                        .map(|(name, _)| name)
                        .collect();
                    for name in gone {
                        leave(&name);
                    }
                }
                continue;
            }
            Ok(watcher::Event::Delete(n)) => {
                if let Some(name) = n.metadata.name.as_deref() {
                    leave(name);
                }
                continue;
            }
            Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) => n,
        };
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        if let Some(seen) = relist.as_mut() {
            seen.insert(name.clone());
        }
        let Some(sn) = host::serverless_node(&node, &host) else {
            leave(&name);
            continue;
        };
        let joined = set.write().is_ok_and(|mut s| {
            let fresh = !s.contains_key(&name);
            s.insert(
                name.clone(),
                Entry {
                    served: Served::Serverless(sn.clone()),
                    uid: sn.uid.clone(),
                },
            );
            fresh
        });
        let stale = host::endpoint_stale(&node, endpoint.as_ref());
        if joined {
            tracing::info!(node = %name, pod_ip = %sn.pod_ip, "serving node");
            let _ = tx.send(Msg::NodeAdded(name, Served::Serverless(sn.clone())));
            update(sn, stale);
        } else if stale || !node::conditions_current(&node) {
            update(sn, stale);
        }
    }
}

/// What the writer task of a pod should make true.
#[derive(Debug, Clone, Default, PartialEq)]
struct Desired {
    status: Option<Value>,
    delete: bool,
}

struct Record {
    pod: Pod,
    node: String,
    state: PodState,
    ip: Option<String>,
    started: Option<Started>,
    writer: watch::Sender<Desired>,
    wait: Option<tokio::task::AbortHandle>,
    /// Failed starts in a row (the retry back-off grows with it).
    start_failures: u32,
}

enum Msg {
    Watch(Box<watcher::Event<Pod>>),
    Runtime {
        uid: String,
        input: Input,
        started: Option<Started>,
    },
    /// A node joined the served set.
    NodeAdded(String, Served),
    /// A node left the served set.
    NodeRemoved(String),
    /// The runtime's status of this pod changed.
    Changed(String),
}

/// A served node as the pod shell sees it.
struct ShellNode {
    served: Served,
    /// Worker nodes allocate their pods' IPs; a serverless node has its one IP.
    ipam: Option<Ipam>,
}

impl ShellNode {
    fn new(served: Served) -> Self {
        let ipam = match &served {
            Served::Worker(spec) => {
                let ipam = Ipam::parse(&spec.pod_cidr);
                if ipam.is_none() {
                    tracing::warn!(node = %spec.name, cidr = %spec.pod_cidr, "unusable pod CIDR");
                }
                ipam
            }
            Served::Serverless(_) => None,
        };
        ShellNode { served, ipam }
    }

    fn host_ip(&self) -> &str {
        match &self.served {
            Served::Worker(spec) => &spec.internal_ip,
            Served::Serverless(n) => &n.pod_ip,
        }
    }

    fn fixed_ip(&self) -> Option<String> {
        match &self.served {
            Served::Worker(_) => None,
            Served::Serverless(n) => Some(n.pod_ip.clone()),
        }
    }
}

struct Shell<R: Runtime> {
    client: kube::Client,
    runtime: Arc<R>,
    nodes: HashMap<String, ShellNode>,
    pods: HashMap<String, Record>,
    tx: mpsc::UnboundedSender<Msg>,
    semaphore: Arc<Semaphore>,
    relist: Option<HashSet<String>>,
    /// Host mode: pods bound to nodes not (yet) served, by uid.
    park: bool,
    parked: HashMap<String, Pod>,
    /// Pods that outlived an earlier agent, not adopted yet.
    recovered: HashMap<String, Started>,
    listed_once: bool,
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn node_of(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .unwrap_or_default()
}

fn policy_of(pod: &Pod) -> RestartPolicy {
    RestartPolicy::parse(pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()))
}

fn grace_of(pod: &Pod) -> Duration {
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| {
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
        })
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(u64::try_from(grace).unwrap_or(0))
}

/// The state of a pod found already running or finished on this node (agent restart).
fn adopted_state(pod: &Pod) -> Option<PodState> {
    let status = pod.status.as_ref()?;
    let cs = status.container_statuses.as_ref()?;
    let restarts = cs.iter().map(|c| c.restart_count).max().unwrap_or(0);
    let now = Timestamp::now();
    match status.phase.as_deref() {
        Some("Running") => {
            let started_at = cs
                .iter()
                .filter_map(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref())
                .map(|t| t.0)
                .min()?;
            Some(PodState::Running {
                started_at,
                restarts,
                last_exit: None,
            })
        }
        Some("Succeeded" | "Failed") => {
            let t = cs
                .iter()
                .find_map(|c| c.state.as_ref()?.terminated.clone())?;
            Some(PodState::Completed {
                exit: Exit {
                    code: t.exit_code,
                    started_at: t.started_at.map_or(now, |t| t.0),
                    finished_at: t.finished_at.map_or(now, |t| t.0),
                },
                restarts,
                evicted: (status.reason.as_deref() == Some(crate::eviction::REASON))
                    .then(|| status.message.clone().unwrap_or_default()),
            })
        }
        _ => None,
    }
}

async fn sync_pods<R: Runtime>(
    client: kube::Client,
    runtime: Arc<R>,
    config: Config,
    tx: mpsc::UnboundedSender<Msg>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) -> Result<(), AgentError> {
    let recovered = runtime.recover().await;
    if !recovered.is_empty() {
        tracing::info!(
            pods = recovered.len(),
            "found pods still running from an earlier agent"
        );
    }
    let mut tasks = Vec::new();
    if let Some(mut changes) = runtime.take_changes() {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(uid) = changes.recv().await {
                if tx.send(Msg::Changed(uid)).is_err() {
                    return;
                }
            }
        }));
    }
    let api: Api<Pod> = Api::all(client.clone());
    let watch_tx = tx.clone();
    tasks.push(tokio::spawn(async move {
        let cfg = watcher::Config::default().fields("spec.nodeName!=");
        let mut s = watcher(api, cfg).default_backoff().boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(ev) => {
                    if watch_tx.send(Msg::Watch(Box::new(ev))).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "agent: pod watch"),
            }
        }
    }));
    let _guard = AbortOnDrop(tasks);
    let mut shell = Shell {
        client,
        runtime,
        nodes: config
            .nodes
            .iter()
            .map(|n| (n.name.clone(), ShellNode::new(Served::Worker(n.clone()))))
            .collect(),
        pods: HashMap::new(),
        tx,
        semaphore: Arc::new(Semaphore::new(config.concurrency.max(1))),
        relist: None,
        park: config.host.is_some(),
        parked: HashMap::new(),
        recovered,
        listed_once: false,
    };
    while let Some(msg) = rx.recv().await {
        shell.handle(msg);
    }
    Err(AgentError::WatchEnded)
}

impl<R: Runtime> Shell<R> {
    fn handle(&mut self, msg: Msg) {
        let ev = match msg {
            Msg::Runtime {
                uid,
                input,
                started,
            } => return self.feed(&uid, input, started),
            Msg::NodeAdded(name, served) => return self.node_added(name, served),
            Msg::NodeRemoved(name) => return self.node_removed(&name),
            Msg::Changed(uid) => {
                // A change announced before the runtime let the pod go says nothing new once
                // it did (the last status was written from the runtime's own then).
                if self.pods.contains_key(&uid) && self.runtime.pod_status(&uid).is_some() {
                    self.act(&uid, Action::WriteStatus);
                }
                return;
            }
            Msg::Watch(ev) => *ev,
        };
        match ev {
            watcher::Event::Init => self.relist = Some(HashSet::new()),
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist.take() {
                    let gone: Vec<String> = self
                        .pods
                        .keys()
                        .filter(|u| !seen.contains(*u))
                        .cloned()
                        .collect();
                    for uid in gone {
                        self.feed(&uid, Input::Removed, None);
                    }
                    self.parked.retain(|uid, _| seen.contains(uid));
                    if !self.listed_once {
                        self.listed_once = true;
                        // Recovered pods the API no longer has: stop them.
                        let orphans: Vec<String> = self
                            .recovered
                            .keys()
                            .filter(|u| !seen.contains(*u))
                            .cloned()
                            .collect();
                        for uid in orphans {
                            self.discard_recovered(&uid);
                        }
                    }
                }
            }
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.observed(pod),
            watcher::Event::Delete(pod) => {
                let uid = uid_of(&pod);
                self.parked.remove(&uid);
                self.discard_recovered(&uid);
                self.feed(&uid, Input::Removed, None);
            }
        }
    }

    /// A recovered pod that will not be adopted: stop and forget it.
    fn discard_recovered(&mut self, uid: &str) {
        if self.recovered.remove(uid).is_none() {
            return;
        }
        tracing::info!(uid, "stopping a recovered pod the API no longer has");
        let (runtime, id) = (self.runtime.clone(), uid.to_string());
        tokio::spawn(async move {
            let _ = runtime.stop(&id, Duration::from_secs(30)).await;
            runtime.remove(&id);
        });
    }

    fn node_added(&mut self, name: String, served: Served) {
        match self.nodes.get_mut(&name) {
            Some(n) => n.served = served,
            None => {
                self.nodes.insert(name.clone(), ShellNode::new(served));
            }
        }
        let waiting: Vec<String> = self
            .parked
            .iter()
            .filter(|(_, p)| node_of(p) == name)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in waiting {
            if let Some(pod) = self.parked.remove(&uid) {
                self.observed(pod);
            }
        }
    }

    fn node_removed(&mut self, name: &str) {
        if self.nodes.remove(name).is_none() {
            return;
        }
        let on_it: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, r)| r.node == name)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in on_it {
            let pod = self.pods.get(&uid).map(|r| r.pod.clone());
            self.feed(&uid, Input::Removed, None);
            if let Some(pod) = pod.filter(|_| self.park) {
                self.parked.insert(uid, pod);
            }
        }
    }

    fn observed(&mut self, pod: Pod) {
        let uid = uid_of(&pod);
        if let Some(seen) = self.relist.as_mut() {
            seen.insert(uid.clone());
        }
        let node = node_of(&pod).to_string();
        if !self.nodes.contains_key(&node) {
            if self.pods.contains_key(&uid) {
                self.feed(&uid, Input::Removed, None);
            }
            if self.park {
                self.parked.insert(uid, pod);
            }
            return;
        }
        self.parked.remove(&uid);
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match self.pods.get_mut(&uid) {
            Some(r) => r.pod = pod,
            None => self.adopt_or_add(uid.clone(), node, pod, deleting),
        }
        self.feed(&uid, Input::Observed { deleting }, None);
    }

    /// A pod seen for the first time: recovered from the runtime (adopted as it runs), found
    /// Running in the API (the runtime is told again), or new.
    fn adopt_or_add(&mut self, uid: String, node: String, pod: Pod, deleting: bool) {
        let Some(n) = self.nodes.get_mut(&node) else {
            return;
        };
        let ip = match n.fixed_ip() {
            Some(ip) => Some(ip),
            None => {
                let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
                if let (Some(ip), Some(ipam)) = (ip.as_deref(), n.ipam.as_mut()) {
                    ipam.claim(ip);
                }
                ip
            }
        };
        let (writer, rx) = watch::channel(Desired::default());
        tokio::spawn(write_pod(
            self.client.clone(),
            pod.clone(),
            rx,
            self.semaphore.clone(),
        ));
        if let Some(started) = self.recovered.remove(&uid) {
            let state = match adopted_state(&pod) {
                Some(s @ (PodState::Running { .. } | PodState::Completed { .. })) => s,
                _ => PodState::Running {
                    started_at: Timestamp::now(),
                    restarts: 0,
                    last_exit: None,
                },
            };
            let running = matches!(state, PodState::Running { .. });
            tracing::info!(pod = ?pod.metadata.name, running, "adopting a recovered pod");
            self.pods.insert(
                uid.clone(),
                Record {
                    pod,
                    node,
                    state,
                    ip,
                    started: Some(started),
                    writer,
                    wait: None,
                    start_failures: 0,
                },
            );
            if running {
                self.spawn_wait(&uid);
                self.act(&uid, Action::WriteStatus);
            } else {
                // It finished before the earlier agent could let it go.
                self.runtime.remove(&uid);
            }
            return;
        }
        let state = adopted_state(&pod).unwrap_or(PodState::Pending);
        let running = matches!(state, PodState::Running { .. });
        self.pods.insert(
            uid.clone(),
            Record {
                pod,
                node,
                state,
                ip,
                started: None,
                writer,
                wait: None,
                start_failures: 0,
            },
        );
        if running && !deleting {
            // Found running in the API: let the runtime know it again without restarting
            // anything visible.
            self.start(&uid, true);
        }
    }

    fn feed(&mut self, uid: &str, input: Input, started: Option<Started>) {
        let Some(r) = self.pods.get_mut(uid) else {
            return;
        };
        if let Some(s) = started {
            r.started = Some(s);
        }
        let policy = policy_of(&r.pod);
        let (next, actions) = transition(&r.state, &input, policy);
        if next != r.state || !actions.is_empty() {
            tracing::debug!(pod = ?r.pod.metadata.name, ?input, from = ?r.state, to = ?next, ?actions, "pod");
        }
        r.state = next;
        if matches!(input, Input::Started { .. }) && matches!(r.state, PodState::Running { .. }) {
            self.spawn_wait(uid);
        }
        for a in actions {
            self.act(uid, a);
        }
        if matches!(
            self.pods.get(uid).map(|r| &r.state),
            Some(PodState::Removed)
        ) {
            self.pods.remove(uid);
        }
    }

    fn spawn_wait(&mut self, uid: &str) {
        let Some(r) = self.pods.get_mut(uid) else {
            return;
        };
        if let Some(w) = r.wait.take() {
            w.abort();
        }
        let (runtime, tx, id) = (self.runtime.clone(), self.tx.clone(), uid.to_string());
        let h = tokio::spawn(async move {
            if let Ok(code) = runtime.wait(&id).await {
                let input = ended(runtime.as_ref(), &id, code);
                let _ = tx.send(Msg::Runtime {
                    uid: id,
                    input,
                    started: None,
                });
            }
        });
        r.wait = Some(h.abort_handle());
    }

    /// Ask the runtime to start the pod; `adopt` for a pod already running (no input follows
    /// except its exits).
    fn start(&mut self, uid: &str, adopt: bool) {
        let Some(r) = self.pods.get_mut(uid) else {
            return;
        };
        if r.ip.is_none()
            && let Some(n) = self.nodes.get_mut(&r.node)
        {
            r.ip = match n.fixed_ip() {
                Some(ip) => Some(ip),
                None => n.ipam.as_mut().and_then(Ipam::allocate),
            };
        }
        let ip = r.ip.clone().unwrap_or_default();
        let (runtime, tx, pod, id) = (
            self.runtime.clone(),
            self.tx.clone(),
            r.pod.clone(),
            uid.to_string(),
        );
        if adopt {
            let h = tokio::spawn(async move {
                let Ok(started) = runtime.start(&pod, &ip).await else {
                    return;
                };
                let _ = tx.send(Msg::Runtime {
                    uid: id.clone(),
                    input: Input::Observed { deleting: false },
                    started: Some(started),
                });
                if let Ok(code) = runtime.wait(&id).await {
                    let input = ended(runtime.as_ref(), &id, code);
                    let _ = tx.send(Msg::Runtime {
                        uid: id,
                        input,
                        started: None,
                    });
                }
            });
            r.wait = Some(h.abort_handle());
            return;
        }
        tokio::spawn(async move {
            let msg = match runtime.start(&pod, &ip).await {
                Ok(started) => Msg::Runtime {
                    uid: id,
                    input: Input::Started {
                        at: Timestamp::now(),
                    },
                    started: Some(started),
                },
                Err(e) => {
                    tracing::warn!(pod = ?pod.metadata.name, error = %e, "starting the pod");
                    Msg::Runtime {
                        uid: id,
                        input: Input::StartFailed {
                            at: Timestamp::now(),
                        },
                        started: None,
                    }
                }
            };
            let _ = tx.send(msg);
        });
    }

    fn act(&mut self, uid: &str, action: Action) {
        match action {
            Action::Start => self.start(uid, false),
            Action::StartLater => {
                let Some(r) = self.pods.get_mut(uid) else {
                    return;
                };
                r.start_failures += 1;
                // The kubelet's sync back-off: 1 s doubling, at most 60 s here.
                let secs = 1u64 << r.start_failures.min(6).saturating_sub(1);
                let (tx, id) = (self.tx.clone(), uid.to_string());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(secs)).await;
                    let _ = tx.send(Msg::Runtime {
                        uid: id,
                        input: Input::RetryStart,
                        started: None,
                    });
                });
            }
            Action::WriteStatus => {
                let Some(r) = self.pods.get(uid) else {
                    return;
                };
                let host_ip = self
                    .nodes
                    .get(&r.node)
                    .map(|n| n.host_ip().to_string())
                    .unwrap_or_default();
                let runtime_status = self.runtime.pod_status(uid);
                let cx = status::Context {
                    host_ip: &host_ip,
                    pod_ip: r.ip.as_deref(),
                    started: r.started.as_ref(),
                    runtime: runtime_status.as_ref(),
                    now: Timestamp::now(),
                };
                if let Some(s) = status::pod_status(&r.pod, &r.state, &cx) {
                    r.writer.send_modify(|d| d.status = Some(s));
                }
            }
            Action::Stop => {
                let Some(r) = self.pods.get_mut(uid) else {
                    return;
                };
                if let Some(w) = r.wait.take() {
                    w.abort();
                }
                let grace = grace_of(&r.pod);
                let (runtime, tx, id) = (self.runtime.clone(), self.tx.clone(), uid.to_string());
                tokio::spawn(async move {
                    let code = runtime.stop(&id, grace).await.unwrap_or(137);
                    let _ = tx.send(Msg::Runtime {
                        uid: id,
                        input: Input::Stopped {
                            code,
                            at: Timestamp::now(),
                        },
                        started: None,
                    });
                });
            }
            Action::Delete => {
                if let Some(r) = self.pods.get(uid) {
                    r.writer.send_modify(|d| d.delete = true);
                }
            }
            Action::Release => {
                let Some(r) = self.pods.get_mut(uid) else {
                    return;
                };
                if let Some(w) = r.wait.take() {
                    w.abort();
                }
                if let (Some(ip), Some(ipam)) = (
                    r.ip.take(),
                    self.nodes.get_mut(&r.node).and_then(|n| n.ipam.as_mut()),
                ) {
                    ipam.release(&ip);
                }
                self.runtime.remove(uid);
            }
        }
    }
}

/// What the runtime's answer to `wait` means: the containers exited, or were killed for an
/// eviction (the runtime's status says so, with kubelet's message).
fn ended<R: Runtime>(runtime: &R, uid: &str, code: i32) -> Input {
    let at = Timestamp::now();
    match runtime.pod_status(uid).and_then(|s| s.evicted) {
        Some(message) => Input::Evicted { code, at, message },
        None => Input::Exited { code, at },
    }
}

/// The writer of one pod: writes the latest desired status, then the final DELETE when asked.
async fn write_pod(
    client: kube::Client,
    pod: Pod,
    mut rx: watch::Receiver<Desired>,
    semaphore: Arc<Semaphore>,
) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let uid = pod.metadata.uid.clone();
    let api: Api<Pod> = Api::namespaced(client, &ns);
    let mut written: Option<Value> = None;
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        loop {
            // The permit first: a status read before waiting for it could be written over a
            // newer one (the eviction's) long after a newer one of ours was computed.
            let Ok(_permit) = semaphore.acquire().await else {
                return;
            };
            let desired = rx.borrow_and_update().clone();
            if desired.status.is_some() && desired.status != written {
                let mut patch = json!({"status": desired.status});
                // The uid makes the patch fail rather than touch a new pod of the same name.
                patch["metadata"] = json!({"uid": uid});
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => written = desired.status.clone(),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                        tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "pod gone or replaced: writer ends");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "writing pod status");
                        drop(_permit);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            if desired.delete {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: uid.clone(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&name, &dp).await {
                    Ok(_) => return,
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
                    Err(e) => {
                        tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "deleting the pod");
                        drop(_permit);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            break;
        }
    }
}
