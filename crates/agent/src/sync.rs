//! The agent's shell: registers the nodes, renews their leases, keeps their status, and drives
//! each pod bound to them through [`crate::lifecycle`] with a [`Runtime`]. One pod watch serves
//! every node of the process (pods are filtered by the node set); status writes go through one
//! writer task per pod (the latest status wins, the final DELETE comes after it) with a bound on
//! the writes in flight.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::lifecycle::{Action, Exit, Input, PodState, RestartPolicy, transition};
use crate::node::{self, Ipam, NodeSpec};
use crate::runtime::{Runtime, Started};
use crate::status;

/// Agent settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The nodes this process registers and serves.
    pub nodes: Vec<NodeSpec>,
    /// Status writes (and deletes) in flight at once.
    pub concurrency: usize,
    /// How often leases are renewed (kubelet: 10 s).
    pub lease_interval: Duration,
    /// How often node conditions are checked (kubelet: 10 s); they are rewritten when they differ
    /// from what the agent reports, or every `status_report_interval`.
    pub status_interval: Duration,
    pub status_report_interval: Duration,
}

impl Config {
    /// Defaults for these nodes.
    pub fn new(nodes: Vec<NodeSpec>) -> Self {
        Config {
            nodes,
            concurrency: 64,
            lease_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(10),
            status_report_interval: Duration::from_secs(300),
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

/// Register the nodes, then serve them until the pod watch ends.
pub async fn run<R: Runtime>(
    client: kube::Client,
    runtime: Arc<R>,
    config: Config,
) -> Result<(), AgentError> {
    let uids = register(&client, &config.nodes).await?;
    let tasks = vec![
        tokio::spawn(renew_leases(client.clone(), config.clone(), uids)),
        tokio::spawn(keep_node_status(client.clone(), config.clone())),
    ];
    let _guard = AbortOnDrop(tasks);
    sync_pods(client, runtime, config).await
}

struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Create (or update) the Node objects; returns their uids.
pub async fn register(
    client: &kube::Client,
    nodes: &[NodeSpec],
) -> Result<HashMap<String, String>, AgentError> {
    let api: Api<Node> = Api::all(client.clone());
    let results: Vec<Result<(String, String), AgentError>> = stream::iter(nodes.iter().cloned())
        .map(|n| {
            let api = api.clone();
            async move {
                let err = |source| AgentError::Register {
                    node: n.name.clone(),
                    source,
                };
                let now = Timestamp::now();
                let obj: Node = serde_json::from_value(node::node_object(&n, now))
                    .map_err(|e| err(kube::Error::SerdeError(e)))?;
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {
                        let patch = json!({"metadata": {"labels": node::node_labels(&n)}});
                        api.patch(&n.name, &PatchParams::default(), &Patch::Merge(patch))
                            .await
                            .map_err(err)?;
                    }
                    Err(e) => return Err(err(e)),
                }
                let patch = json!({"status": node::node_status(&n, now)});
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

async fn renew_leases(client: kube::Client, config: Config, uids: HashMap<String, String>) {
    let api: Api<Lease> = Api::namespaced(client, node::LEASE_NAMESPACE);
    let mut tick = tokio::time::interval(config.lease_interval);
    loop {
        tick.tick().await;
        stream::iter(config.nodes.iter())
            .for_each_concurrent(32, |n| {
                let api = api.clone();
                let uid = uids.get(&n.name).map(String::as_str);
                async move {
                    let lease = node::lease(&n.name, uid, Timestamp::now());
                    let patch = json!({"spec": lease["spec"].clone()});
                    match api.patch(&n.name, &PatchParams::default(), &Patch::Merge(patch)).await {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {
                            let Ok(obj) = serde_json::from_value::<Lease>(lease) else {
                                return;
                            };
                            if let Err(e) = api.create(&PostParams::default(), &obj).await {
                                tracing::warn!(node = %n.name, error = %e, "creating the node lease");
                            }
                        }
                        Err(e) => tracing::warn!(node = %n.name, error = %e, "renewing the node lease"),
                    }
                }
            })
            .await;
    }
}

async fn keep_node_status(client: kube::Client, config: Config) {
    let api: Api<Node> = Api::all(client);
    let ours: HashMap<&str, &NodeSpec> =
        config.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut last_report: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(config.status_interval);
    loop {
        tick.tick().await;
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing nodes");
                continue;
            }
        };
        for n in list.items {
            let Some(spec) = n.metadata.name.as_deref().and_then(|name| ours.get(name)) else {
                continue;
            };
            let due = last_report
                .get(&spec.name)
                .is_none_or(|t| t.elapsed() >= config.status_report_interval);
            if node::conditions_current(&n) && !due {
                continue;
            }
            let patch = json!({"status": node::node_status(spec, Timestamp::now())});
            match api
                .patch_status(&spec.name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => {
                    last_report.insert(spec.name.clone(), Instant::now());
                }
                Err(e) => tracing::warn!(node = %spec.name, error = %e, "updating node status"),
            }
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
}

enum Msg {
    Watch(Box<watcher::Event<Pod>>),
    Runtime {
        uid: String,
        input: Input,
        started: Option<Started>,
    },
}

struct Shell<R: Runtime> {
    client: kube::Client,
    runtime: Arc<R>,
    nodes: HashMap<String, (NodeSpec, Ipam)>,
    pods: HashMap<String, Record>,
    tx: mpsc::UnboundedSender<Msg>,
    semaphore: Arc<Semaphore>,
    relist: Option<HashSet<String>>,
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn policy_of(pod: &Pod) -> RestartPolicy {
    RestartPolicy::parse(pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()))
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
            })
        }
        _ => None,
    }
}

async fn sync_pods<R: Runtime>(
    client: kube::Client,
    runtime: Arc<R>,
    config: Config,
) -> Result<(), AgentError> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
    let api: Api<Pod> = Api::all(client.clone());
    let watch_tx = tx.clone();
    let watch_task = tokio::spawn(async move {
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
    });
    let _guard = AbortOnDrop(vec![watch_task]);
    let mut shell = Shell {
        client,
        runtime,
        nodes: config
            .nodes
            .iter()
            .map(|n| (n.name.clone(), (n.clone(), Ipam::new(n.index))))
            .collect(),
        pods: HashMap::new(),
        tx,
        semaphore: Arc::new(Semaphore::new(config.concurrency.max(1))),
        relist: None,
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
                }
            }
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => self.observed(pod),
            watcher::Event::Delete(pod) => self.feed(&uid_of(&pod), Input::Removed, None),
        }
    }

    fn observed(&mut self, pod: Pod) {
        let uid = uid_of(&pod);
        if let Some(seen) = self.relist.as_mut() {
            seen.insert(uid.clone());
        }
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if !self.nodes.contains_key(&node) {
            if self.pods.contains_key(&uid) {
                self.feed(&uid, Input::Removed, None);
            }
            return;
        }
        let deleting = pod.metadata.deletion_timestamp.is_some();
        match self.pods.get_mut(&uid) {
            Some(r) => r.pod = pod,
            None => {
                let state = adopted_state(&pod).unwrap_or(PodState::Pending);
                let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone());
                if let (Some(ip), Some((_, ipam))) = (ip.as_deref(), self.nodes.get_mut(&node)) {
                    ipam.claim(ip);
                }
                let (writer, rx) = watch::channel(Desired::default());
                tokio::spawn(write_pod(
                    self.client.clone(),
                    pod.clone(),
                    rx,
                    self.semaphore.clone(),
                ));
                let running = matches!(state, PodState::Running { .. });
                self.pods.insert(
                    uid.clone(),
                    Record {
                        pod: pod.clone(),
                        node,
                        state,
                        ip,
                        started: None,
                        writer,
                        wait: None,
                    },
                );
                if running && !deleting {
                    // Adopted: let the runtime know it again without restarting anything visible.
                    self.start(&uid, true);
                }
            }
        }
        self.feed(&uid, Input::Observed { deleting }, None);
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
                let _ = tx.send(Msg::Runtime {
                    uid: id,
                    input: Input::Exited {
                        code,
                        at: Timestamp::now(),
                    },
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
            && let Some((_, ipam)) = self.nodes.get_mut(&r.node)
        {
            r.ip = ipam.allocate();
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
                    let _ = tx.send(Msg::Runtime {
                        uid: id,
                        input: Input::Exited {
                            code,
                            at: Timestamp::now(),
                        },
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
            Action::WriteStatus => {
                let Some(r) = self.pods.get(uid) else {
                    return;
                };
                let host_ip = self
                    .nodes
                    .get(&r.node)
                    .map(|(n, _)| n.internal_ip.clone())
                    .unwrap_or_default();
                let cx = status::Context {
                    host_ip: &host_ip,
                    pod_ip: r.ip.as_deref(),
                    started: r.started.as_ref(),
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
                let grace = r
                    .pod
                    .metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(30)
                    .max(0);
                let grace = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
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
                if let (Some(ip), Some((_, ipam))) = (r.ip.take(), self.nodes.get_mut(&r.node)) {
                    ipam.release(&ip);
                }
                self.runtime.remove(uid);
            }
        }
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
            let desired = rx.borrow_and_update().clone();
            let Ok(_permit) = semaphore.acquire().await else {
                return;
            };
            if desired.status.is_some() && desired.status != written {
                let mut patch = json!({"status": desired.status});
                // The uid makes the patch fail rather than touch a new pod of the same name.
                patch["metadata"] = json!({"uid": uid});
                match api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => written = desired.status.clone(),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
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
