//! The default scheduler's shell (`default-scheduler`): watches nodes and pods into an in-memory
//! [`api::scheduling::Snapshot`], asks the pure [`api::scheduling::schedule`] for a node for each
//! pending pod, assumes the placement in the snapshot at once (so the next pod sees it) and binds
//! through `POST pods/NAME/binding` concurrently. When nothing fits it sets `PodScheduled=False`
//! (reason `Unschedulable`) and records a `FailedScheduling` Warning event; such pods are retried
//! when nodes or pods change, and periodically with backoff.
//!
//! The `Scheduled` events are informational and wait behind the bindings: one writer sends them
//! one at a time, only while no binding is queued or in flight (or once an event has waited
//! [`EVENT_MAX_DELAY`]), and drops them beyond [`EVENT_QUEUE`] waiting, as upstream's event
//! broadcaster drops when its queue is full. A burst of pods is thus bound before its events
//! are written, and the API server's queue stays short for everyone else.
//!
//! When the decision is to preempt, the shell nominates the node (`status.nominatedNodeName`,
//! kept in the snapshot at once so that the pod does not preempt twice), marks each victim
//! with the `DisruptionTarget` condition, deletes it gracefully and records a `Preempted` event
//! on it; the pod is bound once the victims are gone. Namespaces are watched for their labels
//! (namespace selectors of pod affinity terms).
//!
//! The decision logic lives in `api::scheduling`; this module only does IO and bookkeeping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use api::scheduling::{self, Snapshot, needs_scheduling};
use k8s_openapi::api::core::v1::{Event, EventSource, Namespace, Node, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::{Semaphore, mpsc};

use crate::watch::{AbortOnDrop, forward_watch};

/// Most `Scheduled` events waiting to be written; more are dropped.
pub const EVENT_QUEUE: usize = 4096;
/// A `Scheduled` event is written at the latest this long after its binding, even while
/// bindings keep coming.
pub const EVENT_MAX_DELAY: Duration = Duration::from_secs(5);

/// Scheduler settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bindings (and unschedulable reports) in flight at once. The API server is CPU-bound long
    /// before this matters for throughput; more in flight only lengthens its queue (the latency
    /// every other client sees).
    pub concurrency: usize,
    /// The first retry delay of an unschedulable pod (doubled per attempt).
    pub initial_backoff: Duration,
    /// The longest retry delay after a cluster change.
    pub max_backoff: Duration,
    /// Retry unschedulable pods at least this often even when nothing changed.
    pub resync: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: 32,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            resync: Duration::from_secs(60),
        }
    }
}

/// Why the scheduler stopped.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// A watch stream ended (the client went away).
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

enum Msg {
    Pod(Box<watcher::Event<Pod>>),
    Node(Box<watcher::Event<Node>>),
    Namespace(Box<watcher::Event<Namespace>>),
    /// A binding finished; `retry` when it failed in a way worth retrying.
    Bound {
        uid: String,
        ok: bool,
        retry: bool,
    },
}

struct Unschedulable {
    attempts: u32,
    last: Instant,
    message: String,
}

struct State {
    config: Config,
    snapshot: Snapshot,
    /// Pods that need a node, by uid.
    pending: HashMap<String, Pod>,
    active: VecDeque<String>,
    queued: HashSet<String>,
    /// Pods bound (or being bound) by us whose binding the watch has not shown yet.
    assumed: HashSet<String>,
    unschedulable: HashMap<String, Unschedulable>,
    /// Backoff after a failed binding.
    bind_retry: HashMap<String, Instant>,
    cluster_changed: bool,
    pod_relist: Option<HashSet<String>>,
    node_relist: Option<HashSet<String>>,
    known_pods: HashMap<String, Pod>,
    known_nodes: HashSet<String>,
    pods_synced: bool,
    nodes_synced: bool,
}

fn uid_of(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

impl State {
    fn enqueue(&mut self, uid: &str) {
        if self.queued.insert(uid.to_string()) {
            self.active.push_back(uid.to_string());
        }
    }

    fn pod_applied(&mut self, pod: Pod) {
        let uid = uid_of(&pod);
        if let Some(seen) = self.pod_relist.as_mut() {
            seen.insert(uid.clone());
        }
        let bound = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty());
        let was_using = self.known_pods.get(&uid).is_some_and(|p| {
            !scheduling::is_terminated(p)
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
        });
        if bound {
            self.assumed.remove(&uid);
            self.snapshot.upsert_pod(&pod);
            if scheduling::is_terminated(&pod) && was_using {
                self.cluster_changed = true;
            }
        } else if !self.assumed.contains(&uid) {
            self.snapshot.upsert_pod(&pod);
        }
        if needs_scheduling(&pod) && !self.assumed.contains(&uid) {
            let new = !self.pending.contains_key(&uid);
            self.pending.insert(uid.clone(), pod.clone());
            if new {
                self.enqueue(&uid);
            }
        } else if !self.assumed.contains(&uid) {
            self.pending.remove(&uid);
            self.unschedulable.remove(&uid);
        }
        self.known_pods.insert(uid, pod);
    }

    fn pod_deleted(&mut self, pod: &Pod) {
        let uid = uid_of(pod);
        self.snapshot.remove_pod(pod);
        self.pending.remove(&uid);
        self.unschedulable.remove(&uid);
        self.assumed.remove(&uid);
        self.bind_retry.remove(&uid);
        if let Some(old) = self.known_pods.remove(&uid)
            && old
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some()
        {
            self.cluster_changed = true;
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Pod(ev) => match *ev {
                watcher::Event::Init => self.pod_relist = Some(HashSet::new()),
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => self.pod_applied(p),
                watcher::Event::Delete(p) => self.pod_deleted(&p),
                watcher::Event::InitDone => {
                    self.pods_synced = true;
                    if let Some(seen) = self.pod_relist.take() {
                        let gone: Vec<Pod> = self
                            .known_pods
                            .iter()
                            .filter(|(uid, _)| !seen.contains(*uid))
                            .map(|(_, p)| p.clone())
                            .collect();
                        for p in gone {
                            self.pod_deleted(&p);
                        }
                    }
                }
            },
            Msg::Node(ev) => {
                self.cluster_changed = true;
                match *ev {
                    watcher::Event::Init => self.node_relist = Some(HashSet::new()),
                    watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                        let name = n.metadata.name.clone().unwrap_or_default();
                        if let Some(seen) = self.node_relist.as_mut() {
                            seen.insert(name.clone());
                        }
                        self.snapshot.upsert_node(&n);
                        self.known_nodes.insert(name);
                    }
                    watcher::Event::Delete(n) => {
                        let name = n.metadata.name.clone().unwrap_or_default();
                        self.snapshot.remove_node(&name);
                        self.known_nodes.remove(&name);
                    }
                    watcher::Event::InitDone => {
                        self.nodes_synced = true;
                        if let Some(seen) = self.node_relist.take() {
                            let gone: Vec<String> =
                                self.known_nodes.difference(&seen).cloned().collect();
                            for name in gone {
                                self.snapshot.remove_node(&name);
                                self.known_nodes.remove(&name);
                            }
                        }
                    }
                }
            }
            Msg::Namespace(ev) => match *ev {
                watcher::Event::Init | watcher::Event::InitDone => {}
                watcher::Event::InitApply(n) | watcher::Event::Apply(n) => {
                    self.snapshot.upsert_namespace(&n);
                    self.cluster_changed = true;
                }
                watcher::Event::Delete(n) => {
                    self.snapshot
                        .remove_namespace(n.metadata.name.as_deref().unwrap_or_default());
                }
            },
            Msg::Bound { uid, ok, retry } => {
                if ok {
                    self.pending.remove(&uid);
                    self.unschedulable.remove(&uid);
                    return;
                }
                self.assumed.remove(&uid);
                if let Some(p) = self.known_pods.get(&uid).cloned() {
                    // Undo the assumption with what the watch last said about the pod.
                    self.snapshot.remove_pod(&p);
                    self.snapshot.upsert_pod(&p);
                }
                if retry && self.pending.contains_key(&uid) {
                    self.bind_retry
                        .insert(uid, Instant::now() + self.config.initial_backoff);
                }
            }
        }
    }

    /// Move pods whose retry time came to the active queue.
    fn requeue(&mut self, now: Instant) {
        let changed = std::mem::take(&mut self.cluster_changed);
        let mut due = Vec::new();
        for (uid, u) in &self.unschedulable {
            let backoff = self
                .config
                .initial_backoff
                .saturating_mul(1u32 << u.attempts.saturating_sub(1).min(16))
                .min(self.config.max_backoff);
            let wait = if changed {
                backoff
            } else {
                self.config.resync.max(backoff)
            };
            if now >= u.last + wait {
                due.push(uid.clone());
            }
        }
        // Pods not retried now still wait for the next change; keep the flag for them.
        if changed && due.len() < self.unschedulable.len() {
            self.cluster_changed = true;
        }
        for (uid, at) in &self.bind_retry {
            if now >= *at {
                due.push(uid.clone());
            }
        }
        for uid in due {
            self.bind_retry.remove(&uid);
            self.enqueue(&uid);
        }
    }
}

/// Run the scheduler until its watches end.
pub async fn run(client: kube::Client, config: Config) -> Result<(), SchedulerError> {
    let (tx, mut rx) = mpsc::channel::<Msg>(4096);
    let pods: Api<Pod> = Api::all(client.clone());
    let nodes: Api<Node> = Api::all(client.clone());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _guard = AbortOnDrop(vec![
        forward_watch(
            pods,
            watcher::Config::default(),
            tx.clone(),
            Msg::Pod,
            "scheduler: pod watch",
        ),
        forward_watch(
            nodes,
            watcher::Config::default(),
            tx.clone(),
            Msg::Node,
            "scheduler: node watch",
        ),
        forward_watch(
            namespaces,
            watcher::Config::default(),
            tx.clone(),
            Msg::Namespace,
            "scheduler: namespace watch",
        ),
    ]);
    let semaphore = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let binding = Arc::new(AtomicUsize::new(0));
    let (event_tx, event_rx) = mpsc::channel::<ScheduledEvent>(EVENT_QUEUE);
    let event_writer = tokio::spawn(write_scheduled_events(
        client.clone(),
        event_rx,
        binding.clone(),
    ));
    let events = Events {
        tx: event_tx,
        binding,
    };
    let _writer = AbortOnDrop(vec![event_writer]);
    let mut st = State {
        config,
        snapshot: Snapshot::default(),
        pending: HashMap::new(),
        active: VecDeque::new(),
        queued: HashSet::new(),
        assumed: HashSet::new(),
        unschedulable: HashMap::new(),
        bind_retry: HashMap::new(),
        cluster_changed: false,
        pod_relist: None,
        node_relist: None,
        known_pods: HashMap::new(),
        known_nodes: HashSet::new(),
        pods_synced: false,
        nodes_synced: false,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return Err(SchedulerError::WatchEnded("pod")) };
                st.handle(msg);
                // Take everything already queued before deciding, so a burst is one pass.
                while let Ok(msg) = rx.try_recv() {
                    st.handle(msg);
                }
            }
            _ = tick.tick() => st.requeue(Instant::now()),
        }
        // Wait for the first full listing of both kinds before deciding anything.
        if !st.pods_synced
            || !st.nodes_synced
            || st.pod_relist.is_some()
            || st.node_relist.is_some()
        {
            continue;
        }
        schedule_active(&mut st, &client, &semaphore, &events, &tx);
    }
}

/// The bindings in flight and the queue of `Scheduled` events.
#[derive(Clone)]
struct Events {
    tx: mpsc::Sender<ScheduledEvent>,
    /// Bindings spawned and not finished (queued for a permit or in flight).
    binding: Arc<AtomicUsize>,
}

struct ScheduledEvent {
    pod: Pod,
    message: String,
    queued: Instant,
}

/// Decrements the count of bindings in flight when the binding ends, however it ends.
struct BindingGuard(Arc<AtomicUsize>);
impl Drop for BindingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Write the `Scheduled` events one at a time, while no binding is waiting (or once the oldest
/// has waited [`EVENT_MAX_DELAY`]).
async fn write_scheduled_events(
    client: kube::Client,
    mut rx: mpsc::Receiver<ScheduledEvent>,
    binding: Arc<AtomicUsize>,
) {
    while let Some(ev) = rx.recv().await {
        while binding.load(Ordering::Relaxed) > 0 && ev.queued.elapsed() < EVENT_MAX_DELAY {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        record_event(&client, &ev.pod, "Normal", "Scheduled", &ev.message).await;
    }
}

fn schedule_active(
    st: &mut State,
    client: &kube::Client,
    semaphore: &Arc<Semaphore>,
    events: &Events,
    tx: &mpsc::Sender<Msg>,
) {
    while let Some(uid) = st.active.pop_front() {
        st.queued.remove(&uid);
        let Some(pod) = st.pending.get(&uid).cloned() else {
            continue;
        };
        if st.assumed.contains(&uid) {
            continue;
        }
        match scheduling::schedule(&pod, &st.snapshot) {
            Ok(node) => {
                st.snapshot.assume(&pod, &node);
                st.assumed.insert(uid.clone());
                st.unschedulable.remove(&uid);
                let (client, semaphore, tx, events) = (
                    client.clone(),
                    semaphore.clone(),
                    tx.clone(),
                    events.clone(),
                );
                events.binding.fetch_add(1, Ordering::Relaxed);
                let guard = BindingGuard(events.binding.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    let _permit = semaphore.acquire().await;
                    let (ok, retry) = bind(&client, &events, &pod, &node).await;
                    let _ = tx.send(Msg::Bound { uid, ok, retry }).await;
                });
            }
            Err(fit) => {
                let message = fit.to_string();
                let now = Instant::now();
                let entry = st
                    .unschedulable
                    .entry(uid.clone())
                    .or_insert(Unschedulable {
                        attempts: 0,
                        last: now,
                        message: String::new(),
                    });
                entry.attempts += 1;
                entry.last = now;
                if let Some(preemption) = fit.preemption {
                    entry.message = message.clone();
                    preempt(st, client, semaphore, &pod, preemption, message);
                    continue;
                }
                let already =
                    entry.message == message && has_unschedulable_condition(&pod, &message);
                if already && entry.attempts > 1 {
                    continue;
                }
                entry.message = message.clone();
                tracing::debug!(pod = ?pod.metadata.name, %message, "unschedulable");
                let (client, semaphore) = (client.clone(), semaphore.clone());
                tokio::spawn(async move {
                    let _permit = semaphore.acquire().await;
                    report_unschedulable(&client, &pod, &message, None).await;
                });
            }
        }
    }
}

/// Carry out a preemption: nominate the node (in the snapshot at once), then report, and evict
/// the victims in the background.
fn preempt(
    st: &mut State,
    client: &kube::Client,
    semaphore: &Arc<Semaphore>,
    pod: &Pod,
    preemption: scheduling::Preemption,
    message: String,
) {
    let uid = uid_of(pod);
    let node = preemption.node.clone();
    tracing::info!(pod = ?pod.metadata.name, %node, victims = preemption.victims.len(), "preempting");
    let mut nominated = pod.clone();
    nominated
        .status
        .get_or_insert_with(Default::default)
        .nominated_node_name = Some(node.clone());
    st.snapshot.nominate(&nominated, &node);
    for v in &preemption.victims {
        st.snapshot.mark_deleting(&v.uid);
    }
    // Until the watch shows the nomination, later attempts must see it too.
    if let Some(p) = st.pending.get_mut(&uid) {
        *p = nominated.clone();
    }
    if let Some(p) = st.known_pods.get_mut(&uid) {
        *p = nominated.clone();
    }
    let (client, semaphore) = (client.clone(), semaphore.clone());
    tokio::spawn(async move {
        let _permit = semaphore.acquire().await;
        report_unschedulable(&client, &nominated, &message, Some(&node)).await;
        for v in &preemption.victims {
            evict(&client, &nominated, &node, v).await;
        }
    });
}

/// Evict one victim as upstream's preemption does: a `DisruptionTarget` condition, a graceful
/// delete (only of that very pod), a `Preempted` event.
async fn evict(client: &kube::Client, preemptor: &Pod, node: &str, v: &scheduling::Victim) {
    let api: Api<Pod> = Api::namespaced(client.clone(), &v.namespace);
    let condition = json!({"status": {"conditions": [{
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "PreemptionByScheduler",
        "message": format!("{}: preempting to accommodate a higher priority pod", scheduling::DEFAULT_SCHEDULER),
        "lastTransitionTime": jiff::Timestamp::now().to_string(),
    }]}});
    if let Err(e) = api
        .patch_status(
            &v.name,
            &PatchParams::default(),
            &Patch::Strategic(condition),
        )
        .await
    {
        tracing::debug!(pod = %format!("{}/{}", v.namespace, v.name), error = %e, "marking a victim");
    }
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(v.uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&v.name, &dp).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
        Err(e) => {
            tracing::warn!(pod = %format!("{}/{}", v.namespace, v.name), error = %e, "preempting a victim");
            return;
        }
    }
    let victim = Pod {
        metadata: ObjectMeta {
            name: Some(v.name.clone()),
            namespace: Some(v.namespace.clone()),
            uid: Some(v.uid.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    let message = format!(
        "Preempted by pod {} on node {node}",
        preemptor.metadata.uid.as_deref().unwrap_or_default()
    );
    record_event(client, &victim, "Normal", "Preempted", &message).await;
}

/// Whether the pod already carries `PodScheduled=False` with this message.
pub(crate) fn has_unschedulable_condition(pod: &Pod, message: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.message.as_deref() == Some(message)
            })
        })
}

/// POST the binding, then queue the Scheduled event. Returns (bound, worth retrying).
async fn bind(client: &kube::Client, events: &Events, pod: &Pod, node: &str) -> (bool, bool) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let binding = json!({
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let res: Result<serde_json::Value, kube::Error> = api
        .create_subresource("binding", &name, &PostParams::default(), &binding)
        .await;
    match res {
        Ok(_) => {}
        // Already bound, being deleted or gone: the watch will tell what happened.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => return (false, false),
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "binding failed");
            return (false, true);
        }
    }
    let message = format!("Successfully assigned {ns}/{name} to {node}");
    // The event waits behind the bindings (see the module docs); a full queue drops it.
    let ev = ScheduledEvent {
        pod: pod.clone(),
        message,
        queued: Instant::now(),
    };
    if events.tx.try_send(ev).is_err() {
        tracing::debug!(pod = %format!("{ns}/{name}"), "event queue full: Scheduled event dropped");
    }
    (true, false)
}

async fn report_unschedulable(
    client: &kube::Client,
    pod: &Pod,
    message: &str,
    nominated: Option<&str>,
) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let now = jiff::Timestamp::now().to_string();
    let mut patch = json!({
        "status": {"conditions": [{
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": message,
            "lastProbeTime": null,
            "lastTransitionTime": now,
        }]}
    });
    if let Some(node) = nominated {
        patch["status"]["nominatedNodeName"] = json!(node);
    }
    // The event first, as upstream's failure handler does: whoever sees the condition finds
    // the event already there.
    record_event(client, pod, "Warning", "FailedScheduling", message).await;
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(patch))
        .await
    {
        tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "setting PodScheduled=False");
    }
}

/// Create a core/v1 Event about the pod, from `default-scheduler`.
async fn record_event(client: &kube::Client, pod: &Pod, type_: &str, reason: &str, message: &str) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = jiff::Timestamp::now();
    let nanos = u64::try_from(now.as_nanosecond()).unwrap_or_default();
    let event = Event {
        metadata: ObjectMeta {
            name: Some(format!("{name}.{nanos:x}")),
            namespace: Some(ns.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some(type_.into()),
        source: Some(EventSource {
            component: Some(scheduling::DEFAULT_SCHEDULER.into()),
            host: None,
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        reporting_component: Some(scheduling::DEFAULT_SCHEDULER.into()),
        reporting_instance: Some(scheduling::DEFAULT_SCHEDULER.into()),
        action: Some(
            match reason {
                "Scheduled" => "Binding",
                "Preempted" => "Preempting",
                _ => "Scheduling",
            }
            .into(),
        ),
        ..Default::default()
    };
    let api: Api<Event> = Api::namespaced(client.clone(), &ns);
    if let Err(e) = api.create(&PostParams::default(), &event).await {
        tracing::debug!(pod = %format!("{ns}/{name}"), error = %e, "recording event");
    }
}
