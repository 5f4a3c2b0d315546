//! The serverless scheduler (`serverless-scheduler`): gives every pod marked for it by admission a
//! Node of its own on a host agent with room, and deletes that Node once the pod is gone.
//!
//! It watches the serverless pods (`spec.schedulerName=serverless-scheduler`), the host agents'
//! Leases (`kube-system`, label `nodeless.io/host-agent=true`) and the serverless Nodes (label
//! `nodeless.io/compute-type=serverless`). For each pod without a node it asks the pure
//! [`api::placement`] for a host and an IP, creates the Node `serverless-ip-A-B-C-D` (a name taken
//! meanwhile means another IP), binds the pod through `pods/NAME/binding` (deleting the Node again
//! when that fails) and records `Scheduled`. When no host fits, the pod gets `PodScheduled=False`
//! (reason `Unschedulable`) and one `FailedScheduling` Warning per change of the message; it is
//! retried when hosts or Nodes change and periodically.
//!
//! A Node whose pod (by `nodeless.io/pod-uid`) no longer exists, or is bound elsewhere, is deleted;
//! at start this sweeps the Nodes left from before. Restart-safe: a bound pod is left alone and a
//! Node already made for an unbound pod is reused. Decisions live in `api::placement`; this module
//! only does IO and bookkeeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::placement::{self, Host, Placement};
use api::profile::SCHEDULER_NAME;
use api::scheduling;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::api_code;
use crate::events::{NORMAL, Recorder, WARNING, object_ref};
use crate::scheduler::has_unschedulable_condition;
use crate::watch::{AbortOnDrop, forward_watch};

/// Serverless scheduler settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// How to choose among the hosts with room.
    pub placement: Placement,
    /// Node creations, bindings and deletions in flight at once.
    pub concurrency: usize,
    /// Retry unschedulable pods at least this often even when no host or Node changed.
    pub resync: Duration,
    /// The first retry delay after a failed placement (doubled per attempt, up to `resync`).
    pub initial_backoff: Duration,
    /// A Node naming a pod uid this scheduler has never seen is deleted once it is this old (a
    /// pod deleted while the scheduler watched is acted on at once).
    pub orphan_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            placement: Placement::Spread,
            concurrency: 32,
            resync: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(500),
            orphan_grace: Duration::from_secs(5),
        }
    }
}

/// Why the serverless scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerlessError {
    /// A watch stream ended (the client went away).
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

/// How one placement attempt ended.
#[derive(Debug)]
enum Outcome {
    /// The pod is bound to the Node.
    Bound,
    /// The Node's name was taken by another Node (read back when possible): choose again.
    NameTaken(Option<Box<Node>>),
    /// The pod is gone or bound elsewhere: nothing more to do for it.
    Dropped,
    /// A transient failure: try again after a backoff.
    Failed,
}

enum Msg {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Lease(Box<watcher::Event<Lease>>),
    Placed {
        uid: String,
        node: String,
        outcome: Outcome,
        /// The attempt deleted the Node again.
        node_deleted: bool,
    },
    NodeDeleted {
        name: String,
    },
}

/// One watched kind: the objects by key, and the relist in progress.
struct Cache<K> {
    items: BTreeMap<String, K>,
    relist: Option<HashSet<String>>,
    synced: bool,
}

impl<K> Default for Cache<K> {
    fn default() -> Self {
        Cache {
            items: BTreeMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<K> Cache<K> {
    fn ready(&self) -> bool {
        self.synced && self.relist.is_none()
    }

    /// Apply a watch event; returns the objects that went away.
    fn apply(&mut self, ev: watcher::Event<K>, key: impl Fn(&K) -> String) -> Vec<K> {
        match ev {
            watcher::Event::Init => {
                self.relist = Some(HashSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                let k = key(&o);
                if let Some(seen) = self.relist.as_mut() {
                    seen.insert(k.clone());
                }
                self.items.insert(k, o);
                Vec::new()
            }
            watcher::Event::Delete(o) => {
                let k = key(&o);
                self.items.remove(&k);
                vec![o]
            }
            watcher::Event::InitDone => {
                self.synced = true;
                let Some(seen) = self.relist.take() else {
                    return Vec::new();
                };
                let gone: Vec<String> = self
                    .items
                    .keys()
                    .filter(|k| !seen.contains(*k))
                    .cloned()
                    .collect();
                gone.iter().filter_map(|k| self.items.remove(k)).collect()
            }
        }
    }
}

struct Backoff {
    attempts: u32,
    next: Instant,
}

struct State {
    config: Config,
    /// Serverless pods by uid.
    pods: Cache<Pod>,
    /// Serverless Nodes by name, plus the ones this scheduler created and the watch has not shown
    /// yet (without a resourceVersion).
    nodes: Cache<Node>,
    /// Host agents' Leases by name.
    leases: Cache<Lease>,
    /// The last error reading each Lease (logged once per change).
    lease_errors: HashMap<String, String>,
    /// Pods whose placement is in flight.
    in_flight: HashSet<String>,
    /// Pods bound by us that the watch still shows unbound.
    assumed_bound: HashSet<String>,
    /// Nodes being deleted.
    deleting: HashSet<String>,
    /// Uids of pods seen deleted whose Nodes may remain.
    gone: HashSet<String>,
    /// Pods no host fits: when they were last tried.
    unschedulable: HashMap<String, Instant>,
    /// The FailedScheduling message last reported per pod.
    reported: HashMap<String, String>,
    /// Pods whose last attempt failed.
    backoff: HashMap<String, Backoff>,
    /// Hosts or Nodes changed since the last pass.
    changed: bool,
}

fn assumed_or_absent(nodes: &BTreeMap<String, Node>, name: &str) -> bool {
    nodes
        .get(name)
        .is_none_or(|n| n.metadata.resource_version.is_none())
}

fn pod_uid(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

fn node_name(n: &Node) -> String {
    n.metadata.name.clone().unwrap_or_default()
}

fn lease_name(l: &Lease) -> String {
    l.metadata.name.clone().unwrap_or_default()
}

fn bound_node(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Whether the serverless scheduler should find a node for this pod.
pub fn needs_placement(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    spec.scheduler_name.as_deref() == Some(SCHEDULER_NAME)
        && bound_node(pod).is_none()
        && pod.metadata.deletion_timestamp.is_none()
        && !scheduling::is_terminated(pod)
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
}

impl State {
    fn new(config: Config) -> Self {
        State {
            config,
            pods: Cache::default(),
            nodes: Cache::default(),
            leases: Cache::default(),
            lease_errors: HashMap::new(),
            in_flight: HashSet::new(),
            assumed_bound: HashSet::new(),
            deleting: HashSet::new(),
            gone: HashSet::new(),
            unschedulable: HashMap::new(),
            reported: HashMap::new(),
            backoff: HashMap::new(),
            changed: true,
        }
    }

    fn forget_pod(&mut self, uid: &str) {
        self.assumed_bound.remove(uid);
        self.unschedulable.remove(uid);
        self.reported.remove(uid);
        self.backoff.remove(uid);
        self.gone.insert(uid.to_string());
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Pod(ev) => {
                if let watcher::Event::InitApply(p) | watcher::Event::Apply(p) = ev.as_ref() {
                    let uid = pod_uid(p);
                    self.gone.remove(&uid);
                    if bound_node(p).is_some() {
                        self.assumed_bound.remove(&uid);
                    }
                    if !needs_placement(p) {
                        self.unschedulable.remove(&uid);
                        self.reported.remove(&uid);
                        self.backoff.remove(&uid);
                    }
                }
                for p in self.pods.apply(*ev, pod_uid) {
                    self.forget_pod(&pod_uid(&p));
                }
            }
            Msg::Node(ev) => {
                self.changed = true;
                for n in self.nodes.apply(*ev, node_name) {
                    self.deleting.remove(&node_name(&n));
                }
            }
            Msg::Lease(ev) => {
                self.changed = true;
                if let watcher::Event::InitApply(l) | watcher::Event::Apply(l) = ev.as_ref() {
                    let name = lease_name(l);
                    match Host::from_lease(l, jiff::Timestamp::now()) {
                        Ok(_) => {
                            self.lease_errors.remove(&name);
                        }
                        Err(e) => {
                            let e = e.to_string();
                            if self.lease_errors.get(&name) != Some(&e) {
                                tracing::warn!(lease = %name, error = %e, "serverless-scheduler: ignoring a host lease");
                                self.lease_errors.insert(name, e);
                            }
                        }
                    }
                }
                self.leases.apply(*ev, lease_name);
            }
            Msg::Placed {
                uid,
                node,
                outcome,
                node_deleted,
            } => {
                self.in_flight.remove(&uid);
                if node_deleted {
                    // Not to be reused while the watch still shows it.
                    if assumed_or_absent(&self.nodes.items, &node) {
                        self.nodes.items.remove(&node);
                    } else {
                        self.deleting.insert(node.clone());
                    }
                }
                // An assumed Node the watch never showed is not there (or no longer).
                let assumed = self
                    .nodes
                    .items
                    .get(&node)
                    .is_some_and(|n| n.metadata.resource_version.is_none());
                match outcome {
                    Outcome::Bound => {
                        self.backoff.remove(&uid);
                        self.unschedulable.remove(&uid);
                        if self
                            .pods
                            .items
                            .get(&uid)
                            .is_some_and(|p| bound_node(p).is_none())
                        {
                            self.assumed_bound.insert(uid);
                        }
                    }
                    Outcome::NameTaken(existing) => {
                        match existing {
                            Some(n) => {
                                self.nodes.items.insert(node, *n);
                            }
                            None if assumed => {
                                self.nodes.items.remove(&node);
                            }
                            None => {}
                        }
                        self.changed = true;
                    }
                    Outcome::Dropped => {
                        if assumed {
                            self.nodes.items.remove(&node);
                        }
                    }
                    Outcome::Failed => {
                        if assumed {
                            self.nodes.items.remove(&node);
                        }
                        let b = self.backoff.entry(uid).or_insert(Backoff {
                            attempts: 0,
                            next: Instant::now(),
                        });
                        b.attempts += 1;
                        let delay = self
                            .config
                            .initial_backoff
                            .saturating_mul(1u32 << b.attempts.saturating_sub(1).min(16))
                            .min(self.config.resync);
                        b.next = Instant::now() + delay;
                    }
                }
            }
            Msg::NodeDeleted { name } => {
                self.deleting.remove(&name);
            }
        }
    }

    fn ready(&self) -> bool {
        self.pods.ready() && self.nodes.ready() && self.leases.ready()
    }
}

/// What one pass decided to do.
enum Action {
    /// Create the Node (unless `existing`) and bind the pod to it.
    Place {
        pod: Box<Pod>,
        node: Box<serde_json::Value>,
        existing: bool,
    },
    /// Report that no host fits.
    Unschedulable { pod: Box<Pod>, message: String },
    /// Delete an orphan Node.
    DeleteNode { name: String, uid: Option<String> },
}

/// Decide what to do now, updating the bookkeeping as if it were done.
fn plan(st: &mut State, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    let wall = jiff::Timestamp::now();
    // Orphan Nodes first, so their IPs and room are not counted longer than needed.
    for (name, node) in &st.nodes.items {
        if st.deleting.contains(name) || node.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(uid) = placement::node_pod_uid(node) else {
            continue;
        };
        if st.in_flight.contains(uid) {
            continue;
        }
        let orphan = match st.pods.items.get(uid) {
            Some(p) => bound_node(p).is_some_and(|n| n != name),
            None => {
                st.gone.contains(uid)
                    || node.metadata.creation_timestamp.as_ref().is_some_and(|t| {
                        wall.duration_since(t.0).as_secs_f64()
                            >= st.config.orphan_grace.as_secs_f64()
                    })
            }
        };
        if orphan {
            actions.push(Action::DeleteNode {
                name: name.clone(),
                uid: node.metadata.uid.clone(),
            });
        }
    }
    for a in &actions {
        if let Action::DeleteNode { name, .. } = a {
            st.deleting.insert(name.clone());
        }
    }
    // Forget deleted pods once no Node names them.
    let named: HashSet<&str> = st
        .nodes
        .items
        .values()
        .filter_map(placement::node_pod_uid)
        .collect();
    st.gone.retain(|uid| named.contains(uid.as_str()));

    let changed = std::mem::take(&mut st.changed);
    let hosts: Vec<Host> = st
        .leases
        .items
        .values()
        .filter_map(|l| Host::from_lease(l, wall).ok())
        .collect();
    let mut used = placement::used(st.nodes.items.values());
    let node_for: HashMap<String, String> = st
        .nodes
        .items
        .iter()
        .filter(|(name, n)| !st.deleting.contains(*name) && n.metadata.deletion_timestamp.is_none())
        .filter_map(|(name, n)| Some((placement::node_pod_uid(n)?.to_string(), name.clone())))
        .collect();
    let mut pending: Vec<&Pod> = st
        .pods
        .items
        .values()
        .filter(|p| needs_placement(p))
        .collect();
    // First come, first served.
    pending.sort_by(|a, b| {
        let t = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        t(a).cmp(&t(b))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    let mut placed: Vec<(String, serde_json::Value)> = Vec::new();
    let mut taken: Vec<String> = Vec::new();
    for pod in pending {
        let uid = pod_uid(pod);
        if st.in_flight.contains(&uid) || st.assumed_bound.contains(&uid) {
            continue;
        }
        if st.backoff.get(&uid).is_some_and(|b| now < b.next) {
            continue;
        }
        if let Some(name) = node_for.get(&uid) {
            // A Node made for this pod before (a restart, or a failed binding): bind to it.
            let node = st
                .nodes
                .items
                .get(name)
                .and_then(|n| serde_json::to_value(n).ok())
                .unwrap_or_else(|| json!({"metadata": {"name": name}}));
            taken.push(uid.clone());
            actions.push(Action::Place {
                pod: Box::new(pod.clone()),
                node: Box::new(node),
                existing: true,
            });
            continue;
        }
        if let Some(last) = st.unschedulable.get(&uid)
            && !changed
            && now < *last + st.config.resync
        {
            continue;
        }
        let Some(size) = placement::pod_size_of(pod) else {
            st.unschedulable.insert(uid.clone(), now);
            let message = "the pod's size cannot be read from its CapacityProvisioned annotation or its resources".to_string();
            if st.reported.get(&uid) != Some(&message) {
                st.reported.insert(uid.clone(), message.clone());
                actions.push(Action::Unschedulable {
                    pod: Box::new(pod.clone()),
                    message,
                });
            }
            continue;
        };
        let chosen = placement::choose_host(&size, &hosts, &used, st.config.placement)
            .map_err(|e| e.to_string())
            .and_then(|h| {
                placement::allocate_ip(&h.pod_cidr, &used.ips)
                    .map(|ip| (h, ip))
                    .ok_or_else(|| "no free pod IP".to_string())
            });
        match chosen {
            Ok((host, ip)) => {
                used.add(&host.name, ip, &size);
                let node = placement::serverless_node(pod, host, ip, &size);
                placed.push((placement::node_name(ip), node.clone()));
                st.unschedulable.remove(&uid);
                taken.push(uid.clone());
                actions.push(Action::Place {
                    pod: Box::new(pod.clone()),
                    node: Box::new(node),
                    existing: false,
                });
            }
            Err(message) => {
                st.unschedulable.insert(uid.clone(), now);
                let already = st.reported.get(&uid) == Some(&message)
                    || (!st.reported.contains_key(&uid)
                        && has_unschedulable_condition(pod, &message));
                st.reported.insert(uid.clone(), message.clone());
                if !already {
                    actions.push(Action::Unschedulable {
                        pod: Box::new(pod.clone()),
                        message,
                    });
                }
            }
        }
    }
    for uid in taken {
        st.in_flight.insert(uid);
    }
    // Assume the new Nodes at once, so the next pass counts them.
    for (name, node) in placed {
        if let Ok(n) = serde_json::from_value::<Node>(node) {
            st.nodes.items.insert(name, n);
        }
    }
    actions
}

/// Run the serverless scheduler until its watches end.
pub async fn run(client: kube::Client, config: Config) -> Result<(), ServerlessError> {
    let (tx, mut rx) = mpsc::channel::<Msg>(4096);
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client.clone(), placement::HOST_LEASE_NAMESPACE);
    let pod_cfg =
        watcher::Config::default().fields(&format!("spec.schedulerName={SCHEDULER_NAME}"));
    let node_cfg = watcher::Config::default().labels(&format!(
        "{}={}",
        placement::COMPUTE_TYPE_LABEL,
        placement::SERVERLESS
    ));
    let lease_cfg =
        watcher::Config::default().labels(&format!("{}=true", placement::HOST_AGENT_LABEL));
    let _guard = AbortOnDrop(vec![
        forward_watch(
            pods,
            pod_cfg,
            tx.clone(),
            Msg::Pod,
            "serverless-scheduler: pod watch",
        ),
        forward_watch(
            nodes,
            node_cfg,
            tx.clone(),
            Msg::Node,
            "serverless-scheduler: node watch",
        ),
        forward_watch(
            leases,
            lease_cfg,
            tx.clone(),
            Msg::Lease,
            "serverless-scheduler: lease watch",
        ),
    ]);
    let semaphore = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let recorder = Recorder::new(client.clone(), SCHEDULER_NAME);
    let mut st = State::new(config);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return Err(ServerlessError::WatchEnded("pod")) };
                st.handle(msg);
                while let Ok(msg) = rx.try_recv() {
                    st.handle(msg);
                }
            }
            _ = tick.tick() => {}
        }
        if !st.ready() {
            continue;
        }
        for action in plan(&mut st, Instant::now()) {
            let (client, semaphore, tx, recorder) = (
                client.clone(),
                semaphore.clone(),
                tx.clone(),
                recorder.clone(),
            );
            tokio::spawn(async move {
                let _permit = semaphore.acquire().await;
                match action {
                    Action::Place {
                        pod,
                        node,
                        existing,
                    } => {
                        let uid = pod_uid(&pod);
                        let name = node
                            .pointer("/metadata/name")
                            .and_then(serde_json::Value::as_str)
                            .unwrap_or_default()
                            .to_string();
                        let (outcome, node_deleted) =
                            place(&client, &recorder, &pod, &node, existing).await;
                        let _ = tx
                            .send(Msg::Placed {
                                uid,
                                node: name,
                                outcome,
                                node_deleted,
                            })
                            .await;
                    }
                    Action::Unschedulable { pod, message } => {
                        report_unschedulable(&client, &recorder, &pod, &message).await;
                    }
                    Action::DeleteNode { name, uid } => {
                        tracing::info!(node = %name, "serverless-scheduler: deleting the node of a pod that is gone");
                        delete_node(&client, &name, uid).await;
                        let _ = tx.send(Msg::NodeDeleted { name }).await;
                    }
                }
            });
        }
    }
}

/// Create the Node (unless it exists), bind the pod to it and record `Scheduled`. On failure the
/// Node is deleted again; the second value says whether it was.
async fn place(
    client: &kube::Client,
    recorder: &Recorder,
    pod: &Pod,
    node: &serde_json::Value,
    existing: bool,
) -> (Outcome, bool) {
    let nodes: Api<Node> = Api::all(client.clone());
    let uid = pod_uid(pod);
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let Some(node_name) = node
        .pointer("/metadata/name")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string)
    else {
        return (Outcome::Failed, false);
    };
    let mut node_uid = node
        .pointer("/metadata/uid")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    if !existing {
        let typed: Node = match serde_json::from_value(node.clone()) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "serverless-scheduler: building the node");
                return (Outcome::Failed, false);
            }
        };
        match nodes.create(&PostParams::default(), &typed).await {
            Ok(created) => node_uid = created.metadata.uid,
            Err(e) if api_code(&e) == Some(409) => {
                // The name is taken: ours from a lost response, or another pod's.
                match nodes.get_opt(&node_name).await {
                    Ok(Some(n)) if placement::node_pod_uid(&n) == Some(uid.as_str()) => {
                        node_uid = n.metadata.uid.clone();
                    }
                    Ok(found) => return (Outcome::NameTaken(found.map(Box::new)), false),
                    Err(_) => return (Outcome::NameTaken(None), false),
                }
            }
            Err(e) => {
                tracing::warn!(node = %node_name, error = %e, "serverless-scheduler: creating the node");
                return (Outcome::Failed, false);
            }
        }
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
    });
    let res: Result<serde_json::Value, kube::Error> = pods
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await;
    let outcome = match res {
        Ok(_) => {
            let message = format!("Successfully assigned {ns}/{name} to {node_name}");
            // The event does not hold up the next placement.
            let (recorder, reference) = (recorder.clone(), object_ref(pod));
            tokio::spawn(async move {
                recorder
                    .publish(&reference, NORMAL, "Scheduled", &message)
                    .await;
            });
            return (Outcome::Bound, false);
        }
        Err(e) if matches!(api_code(&e), Some(404 | 409)) => {
            // Gone, or already bound: perhaps to this very Node by an attempt whose answer was lost.
            match pods.get_opt(&name).await {
                Ok(Some(p)) if pod_uid(&p) == uid && bound_node(&p) == Some(node_name.as_str()) => {
                    return (Outcome::Bound, false);
                }
                Ok(_) => Outcome::Dropped,
                Err(_) => Outcome::Failed,
            }
        }
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "serverless-scheduler: binding failed");
            Outcome::Failed
        }
    };
    let deleted = delete_node(client, &node_name, node_uid).await;
    (outcome, deleted)
}

/// Delete a serverless Node (only the one with this uid when known); gone already is fine.
async fn delete_node(client: &kube::Client, name: &str, uid: Option<String>) -> bool {
    let nodes: Api<Node> = Api::all(client.clone());
    let dp = DeleteParams {
        preconditions: uid.map(|uid| Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match nodes.delete(name, &dp).await {
        Ok(_) => true,
        Err(e) if api_code(&e) == Some(404) => true,
        Err(e) if api_code(&e) == Some(409) => false,
        Err(e) => {
            tracing::warn!(node = %name, error = %e, "serverless-scheduler: deleting the node");
            false
        }
    }
}

/// `PodScheduled=False` (reason `Unschedulable`) and a `FailedScheduling` Warning event.
async fn report_unschedulable(
    client: &kube::Client,
    recorder: &Recorder,
    pod: &Pod,
    message: &str,
) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    tracing::debug!(pod = %format!("{ns}/{name}"), %message, "serverless-scheduler: unschedulable");
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let patch = json!({
        "status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": jiff::Timestamp::now().to_string(),
        }]}
    });
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "setting PodScheduled=False");
    }
    recorder
        .publish(&object_ref(pod), WARNING, "FailedScheduling", message)
        .await;
}
