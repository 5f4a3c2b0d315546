//! Node lifecycle: watches node Leases (`kube-node-lease`), marks a node whose lease is not
//! renewed within the grace period `Ready=Unknown` and taints it `node.kubernetes.io/unreachable`
//! (`not-ready` when the agent reports `Ready=False`), marks its pods not ready and, once their
//! NoExecute toleration runs out, deletes them so that their controllers replace them. Because
//! no agent finishes those deletions, the pod-GC step force-deletes terminating pods on nodes
//! that are not ready (and pods bound to nodes that no longer exist). A renewed lease brings the
//! node back to Ready and removes the taints.
//!
//! [`decide_node`] and [`decide_pod`] are pure; [`run`] is a periodic loop over watch caches.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, PodCondition, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

use crate::events::{self, Recorder};

/// Taint key for nodes whose lease stopped.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// Taint key for nodes reporting Ready=False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Configuration of node lifecycle.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often nodes and pods are examined (upstream: 5 s).
    pub monitor_period: Duration,
    /// How long a node may go without renewing its lease (upstream: 40 s).
    pub grace_period: Duration,
    /// Upper bound on a pod's NoExecute toleration seconds (None: the pod's own value; the
    /// default tolerations give 300 s). Lets tests and small clusters evict sooner.
    pub toleration_cap: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            monitor_period: Duration::from_secs(5),
            grace_period: Duration::from_secs(40),
            toleration_cap: None,
        }
    }
}

/// A node's readiness as the controller sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Ready=True.
    Ready,
    /// Ready=False (reported by the agent).
    NotReady,
    /// Ready=Unknown (the lease stopped).
    Unknown,
}

/// What to change on a node.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeDecision {
    /// The health after the change.
    pub health: Health,
    /// New `status.conditions` (None: unchanged).
    pub conditions: Option<Vec<NodeCondition>>,
    /// New `spec.taints` (None: unchanged).
    pub taints: Option<Vec<Taint>>,
}

const PRESSURE: [(&str, &str, &str); 3] = [
    (
        "MemoryPressure",
        "KubeletHasSufficientMemory",
        "kubelet has sufficient memory available",
    ),
    (
        "DiskPressure",
        "KubeletHasNoDiskPressure",
        "kubelet has no disk pressure",
    ),
    (
        "PIDPressure",
        "KubeletHasSufficientPID",
        "kubelet has sufficient PID available",
    ),
];

fn ready_condition(node: &Node) -> Option<&NodeCondition> {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
}

fn elapsed(now: jiff::Timestamp, since: jiff::Timestamp) -> Duration {
    let d = now.duration_since(since);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

/// Decide a node from its lease renew time and the time now.
pub fn decide_node(
    node: &Node,
    lease_renew: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
    grace: Duration,
) -> NodeDecision {
    let ready = ready_condition(node);
    let last = [
        lease_renew,
        ready
            .and_then(|c| c.last_heartbeat_time.as_ref())
            .map(|t| t.0),
        node.metadata.creation_timestamp.as_ref().map(|t| t.0),
    ]
    .into_iter()
    .flatten()
    .max();
    let stale = last.is_none_or(|l| elapsed(now, l) > grace);
    let old_conditions = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let mut conditions = old_conditions.clone();
    let status_of = |cs: &[NodeCondition]| {
        cs.iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "Unknown".into())
    };
    if stale && ready.is_none_or(|c| c.status != "Unknown") {
        let (reason, message) = if ready.is_some() {
            ("NodeStatusUnknown", "Kubelet stopped posting node status.")
        } else {
            (
                "NodeStatusNeverUpdated",
                "Kubelet never posted node status.",
            )
        };
        for t in std::iter::once("Ready").chain(PRESSURE.iter().map(|p| p.0)) {
            let heartbeat = conditions
                .iter()
                .find(|c| c.type_ == t)
                .and_then(|c| c.last_heartbeat_time.clone());
            let c = NodeCondition {
                type_: t.into(),
                status: "Unknown".into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                last_heartbeat_time: heartbeat,
                last_transition_time: Some(Time(now)),
            };
            match conditions.iter_mut().find(|x| x.type_ == t) {
                Some(x) => *x = c,
                None => conditions.push(c),
            }
        }
    } else if !stale
        && ready.is_some_and(|c| {
            c.status == "Unknown" && c.reason.as_deref() == Some("NodeStatusUnknown")
        })
    {
        // The lease is renewed again: undo what we set (the agent reports the rest).
        let heartbeat = last.map(Time);
        for c in conditions.iter_mut() {
            if c.status != "Unknown" || c.reason.as_deref() != Some("NodeStatusUnknown") {
                continue;
            }
            if c.type_ == "Ready" {
                c.status = "True".into();
                c.reason = Some("KubeletReady".into());
                c.message = Some("kubelet is posting ready status".into());
            } else if let Some((_, reason, message)) = PRESSURE.iter().find(|p| p.0 == c.type_) {
                c.status = "False".into();
                c.reason = Some((*reason).into());
                c.message = Some((*message).into());
            } else {
                continue;
            }
            c.last_heartbeat_time = heartbeat.clone();
            c.last_transition_time = Some(Time(now));
        }
    }
    let health = match status_of(&conditions).as_str() {
        "True" => Health::Ready,
        "False" => Health::NotReady,
        _ => Health::Unknown,
    };

    // Taints follow health.
    let old_taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let ours = |t: &Taint| {
        (t.key == TAINT_UNREACHABLE || t.key == TAINT_NOT_READY)
            && (t.effect == "NoExecute" || t.effect == "NoSchedule")
    };
    let want_key = match health {
        Health::Ready => None,
        Health::NotReady => Some(TAINT_NOT_READY),
        Health::Unknown => Some(TAINT_UNREACHABLE),
    };
    let mut taints: Vec<Taint> = old_taints
        .iter()
        .filter(|t| !ours(t) || Some(t.key.as_str()) == want_key)
        .cloned()
        .collect();
    if let Some(key) = want_key {
        for effect in ["NoSchedule", "NoExecute"] {
            if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                taints.push(Taint {
                    key: key.into(),
                    effect: effect.into(),
                    value: None,
                    time_added: (effect == "NoExecute").then_some(Time(now)),
                });
            }
        }
    }
    NodeDecision {
        health,
        conditions: (conditions != old_conditions).then_some(conditions),
        taints: (taints != old_taints).then_some(taints),
    }
}

/// What to do with one pod bound to a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodDecision {
    /// Set the pod's Ready condition to False.
    pub mark_not_ready: bool,
    /// Delete the pod (gracefully): its tolerations ran out.
    pub evict: bool,
    /// Delete the pod with grace 0: terminating on a node that will not finish it.
    pub force_delete: bool,
    /// Look again after this long.
    pub requeue_after: Option<Duration>,
}

fn tolerates(tol: &Toleration, taint: &Taint) -> bool {
    let effect_ok = tol
        .effect
        .as_deref()
        .is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_ok = match tol.key.as_deref() {
        None | Some("") => tol.operator.as_deref() == Some("Exists"),
        Some(k) => {
            k == taint.key
                && match tol.operator.as_deref() {
                    Some("Exists") => true,
                    _ => tol.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
                }
        }
    };
    effect_ok && key_ok
}

/// When the NoExecute taints evict this pod (None: never).
pub fn eviction_time(
    pod: &Pod,
    taints: &[Taint],
    now: jiff::Timestamp,
    cap: Option<Duration>,
) -> Option<jiff::Timestamp> {
    let tols = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut at: Option<jiff::Timestamp> = None;
    for t in taints.iter().filter(|t| t.effect == "NoExecute") {
        let added = t.time_added.as_ref().map(|x| x.0).unwrap_or(now);
        let matching: Vec<&Toleration> = tols.iter().filter(|tol| tolerates(tol, t)).collect();
        let when = if matching.is_empty() {
            Some(added)
        } else if matching.iter().any(|m| m.toleration_seconds.is_none()) {
            cap.map(|c| added + c)
        } else {
            let secs = matching
                .iter()
                .filter_map(|m| m.toleration_seconds)
                .min()
                .unwrap_or(0)
                .max(0);
            let mut d = Duration::from_secs(secs as u64);
            if let Some(c) = cap {
                d = d.min(c);
            }
            Some(added + d)
        };
        if let Some(w) = when {
            at = Some(at.map_or(w, |a: jiff::Timestamp| a.min(w)));
        }
    }
    at
}

fn pod_ready_status(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
}

/// Decide a pod from its node's health and taints (`node` None: the node does not exist).
pub fn decide_pod(
    pod: &Pod,
    node: Option<(Health, &[Taint])>,
    now: jiff::Timestamp,
    cap: Option<Duration>,
) -> PodDecision {
    let mut d = PodDecision::default();
    let terminal = matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    let Some((health, taints)) = node else {
        d.force_delete = true;
        return d;
    };
    if health == Health::Ready {
        return d;
    }
    if let Some(deleted) = &pod.metadata.deletion_timestamp {
        if now >= deleted.0 {
            d.force_delete = true;
        } else {
            d.requeue_after = Some(elapsed(deleted.0, now));
        }
        return d;
    }
    if terminal {
        return d;
    }
    if pod_ready_status(pod).as_deref() != Some("False") {
        d.mark_not_ready = true;
    }
    if let Some(at) = eviction_time(pod, taints, now, cap) {
        if now >= at {
            d.evict = true;
        } else {
            d.requeue_after = Some(elapsed(at, now));
        }
    }
    d
}

fn store<K>(api: Api<K>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .touched_objects();
    tokio::spawn(stream.for_each(|_| futures::future::ready(())));
    reader
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 || s.code == 409)
}

/// Runs node lifecycle until the process ends.
pub async fn run(client: Client, config: Config) {
    let nodes = store::<Node>(Api::all(client.clone()));
    let leases = store::<Lease>(Api::namespaced(client.clone(), LEASE_NAMESPACE));
    let pods = store::<Pod>(Api::all(client.clone()));
    for s in [
        nodes.wait_until_ready().await,
        leases.wait_until_ready().await,
        pods.wait_until_ready().await,
    ] {
        if s.is_err() {
            return;
        }
    }
    let recorder = Recorder::new(client.clone(), "node-controller");
    let nodes_api: Api<Node> = Api::all(client.clone());
    let mut last_health: HashMap<String, Health> = HashMap::new();
    // Pods bound to a node not (yet) in the cache: wait a grace period before treating them as
    // orphans, as upstream's pod GC quarantines them.
    let mut missing_since: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut tick = tokio::time::interval(config.monitor_period);
    loop {
        tick.tick().await;
        let now = jiff::Timestamp::now();
        let renewals: HashMap<String, jiff::Timestamp> = leases
            .state()
            .iter()
            .filter_map(|l| {
                let t = l.spec.as_ref()?.renew_time.as_ref()?.0;
                Some((l.name_any(), t))
            })
            .collect();
        let mut view: HashMap<String, (Health, Vec<Taint>)> = HashMap::new();
        for node in nodes.state() {
            let name = node.name_any();
            let d = decide_node(
                &node,
                renewals.get(&name).copied(),
                now,
                config.grace_period,
            );
            if let Some(cs) = &d.conditions {
                let patch = serde_json::json!({"status": {"conditions": cs}});
                if let Err(e) = nodes_api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(error = %e, node = %name, "updating node conditions failed");
                    continue;
                }
            }
            if let Some(ts) = &d.taints {
                let patch = serde_json::json!({"spec": {"taints": ts}});
                if let Err(e) = nodes_api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(error = %e, node = %name, "updating node taints failed");
                }
            }
            let prev = last_health.insert(name.clone(), d.health);
            if prev.is_some_and(|p| p != d.health) || (prev.is_none() && d.health != Health::Ready)
            {
                let (t, msg) = match d.health {
                    Health::Ready => (events::NORMAL, "NodeReady"),
                    _ => (events::NORMAL, "NodeNotReady"),
                };
                let r = events::object_ref(node.as_ref());
                recorder
                    .publish(&r, t, msg, &format!("Node {name} status is now: {msg}"))
                    .await;
            }
            let taints = d.taints.clone().unwrap_or_else(|| {
                node.spec
                    .as_ref()
                    .and_then(|s| s.taints.clone())
                    .unwrap_or_default()
            });
            view.insert(name, (d.health, taints));
        }
        last_health.retain(|n, _| view.contains_key(n));
        let all_pods = pods.state();
        missing_since.retain(|uid, _| {
            all_pods.iter().any(|p| {
                p.metadata.uid.as_deref() == Some(uid.as_str())
                    && p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.as_ref())
                        .is_some_and(|n| !view.contains_key(n))
            })
        });
        for pod in all_pods {
            let Some(node_name) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            let node = view.get(&node_name).map(|(h, t)| (*h, t.as_slice()));
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if node.is_none() {
                let since = *missing_since
                    .entry(uid.clone())
                    .or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < config.grace_period {
                    continue;
                }
            }
            let d = decide_pod(&pod, node, now, config.toleration_cap);
            let ns = pod.namespace().unwrap_or_default();
            let name = pod.name_any();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let pre = Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            });
            if d.force_delete {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: pre,
                    ..Default::default()
                };
                if let Err(e) = api.delete(&name, &dp).await
                    && !not_found(&e)
                {
                    tracing::warn!(error = %e, pod = %name, "force-deleting pod failed");
                }
                continue;
            }
            if d.mark_not_ready {
                let mut conds = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.clone())
                    .unwrap_or_default();
                let ready = PodCondition {
                    type_: "Ready".into(),
                    status: "False".into(),
                    last_transition_time: Some(Time(now)),
                    ..Default::default()
                };
                match conds.iter_mut().find(|c| c.type_ == "Ready") {
                    Some(c) => *c = ready,
                    None => conds.push(ready),
                }
                let patch = serde_json::json!({"status": {"conditions": conds}});
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    && !not_found(&e)
                {
                    tracing::warn!(error = %e, pod = %name, "marking pod not ready failed");
                }
            }
            if d.evict {
                let dp = DeleteParams {
                    preconditions: pre,
                    ..Default::default()
                };
                match api.delete(&name, &dp).await {
                    Ok(_) => {
                        let r = events::object_ref(pod.as_ref());
                        recorder
                            .publish(
                                &r,
                                events::NORMAL,
                                "TaintManagerEviction",
                                &format!("Marking for deletion Pod {ns}/{name}"),
                            )
                            .await;
                    }
                    Err(e) if not_found(&e) => {}
                    Err(e) => tracing::warn!(error = %e, pod = %name, "evicting pod failed"),
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }
    const GRACE: Duration = Duration::from_secs(40);

    fn ready_node(heartbeat: i64) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                creation_timestamp: Some(Time(t(0))),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: "dedicated".into(),
                    effect: "NoSchedule".into(),
                    value: Some("x".into()),
                    time_added: None,
                }]),
                ..Default::default()
            }),
            status: Some(NodeStatus {
                conditions: Some(vec![
                    NodeCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        reason: Some("KubeletReady".into()),
                        last_heartbeat_time: Some(Time(t(heartbeat))),
                        ..Default::default()
                    },
                    NodeCondition {
                        type_: "MemoryPressure".into(),
                        status: "False".into(),
                        ..Default::default()
                    },
                ]),
                ..Default::default()
            }),
        }
    }

    fn apply(node: &Node, d: &NodeDecision) -> Node {
        let mut n = node.clone();
        if let Some(c) = &d.conditions {
            n.status.as_mut().unwrap().conditions = Some(c.clone());
        }
        if let Some(ts) = &d.taints {
            n.spec.as_mut().unwrap().taints = Some(ts.clone());
        }
        n
    }

    #[test]
    fn fresh_lease_keeps_node_ready() {
        let d = decide_node(&ready_node(0), Some(t(100)), t(110), GRACE);
        assert_eq!(
            d,
            NodeDecision {
                health: Health::Ready,
                conditions: None,
                taints: None
            }
        );
    }

    #[test]
    fn stale_lease_marks_unknown_and_taints() {
        let n = ready_node(0);
        let d = decide_node(&n, Some(t(10)), t(51), GRACE);
        assert_eq!(d.health, Health::Unknown);
        let cs = d.conditions.clone().unwrap();
        let r = cs.iter().find(|c| c.type_ == "Ready").unwrap();
        assert_eq!(r.status, "Unknown");
        assert_eq!(r.reason.as_deref(), Some("NodeStatusUnknown"));
        assert_eq!(
            r.message.as_deref(),
            Some("Kubelet stopped posting node status.")
        );
        assert_eq!(r.last_heartbeat_time, Some(Time(t(0))));
        assert_eq!(
            cs.iter()
                .find(|c| c.type_ == "MemoryPressure")
                .unwrap()
                .status,
            "Unknown"
        );
        let ts = d.taints.clone().unwrap();
        assert!(ts.iter().any(|t| t.key == "dedicated"), "other taints kept");
        let ne = ts
            .iter()
            .find(|x| x.key == TAINT_UNREACHABLE && x.effect == "NoExecute")
            .unwrap();
        assert_eq!(ne.time_added, Some(Time(t(51))));
        assert!(
            ts.iter()
                .any(|x| x.key == TAINT_UNREACHABLE && x.effect == "NoSchedule")
        );
        // Idempotent: applying and deciding again changes nothing.
        let n2 = apply(&n, &d);
        let d2 = decide_node(&n2, Some(t(10)), t(60), GRACE);
        assert_eq!(
            d2,
            NodeDecision {
                health: Health::Unknown,
                conditions: None,
                taints: None
            }
        );
        // The lease comes back: Ready again, taints gone.
        let d3 = decide_node(&n2, Some(t(70)), t(71), GRACE);
        assert_eq!(d3.health, Health::Ready);
        let n3 = apply(&n2, &d3);
        assert_eq!(ready_condition(&n3).unwrap().status, "True");
        assert_eq!(n3.spec.unwrap().taints.unwrap().len(), 1);
    }

    #[test]
    fn agent_reported_not_ready_gets_not_ready_taint() {
        let mut n = ready_node(100);
        n.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        let d = decide_node(&n, Some(t(100)), t(101), GRACE);
        assert_eq!(d.health, Health::NotReady);
        assert!(d.conditions.is_none());
        assert!(
            d.taints
                .unwrap()
                .iter()
                .any(|x| x.key == TAINT_NOT_READY && x.effect == "NoExecute")
        );
    }

    fn pod(tols: Vec<Toleration>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                tolerations: Some(tols),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        }
    }

    fn unreachable(added: i64) -> Vec<Taint> {
        vec![Taint {
            key: TAINT_UNREACHABLE.into(),
            effect: "NoExecute".into(),
            value: None,
            time_added: Some(Time(t(added))),
        }]
    }

    fn tol(secs: Option<i64>) -> Toleration {
        Toleration {
            key: Some(TAINT_UNREACHABLE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoExecute".into()),
            toleration_seconds: secs,
            value: None,
        }
    }

    #[test]
    fn pods_evicted_after_toleration() {
        let taints = unreachable(100);
        let p = pod(vec![tol(Some(300))]);
        let d = decide_pod(&p, Some((Health::Unknown, &taints)), t(200), None);
        assert!(d.mark_not_ready && !d.evict);
        assert_eq!(d.requeue_after, Some(Duration::from_secs(200)));
        assert!(decide_pod(&p, Some((Health::Unknown, &taints)), t(400), None).evict);
        // The cap shortens the wait.
        assert!(
            decide_pod(
                &p,
                Some((Health::Unknown, &taints)),
                t(102),
                Some(Duration::from_secs(2))
            )
            .evict
        );
        // No toleration: at once. Forever toleration: never (unless capped).
        assert!(decide_pod(&pod(vec![]), Some((Health::Unknown, &taints)), t(100), None).evict);
        assert!(
            !decide_pod(
                &pod(vec![tol(None)]),
                Some((Health::Unknown, &taints)),
                t(9999),
                None
            )
            .evict
        );
        // A Ready node: nothing.
        assert_eq!(
            decide_pod(&p, Some((Health::Ready, &[])), t(400), None),
            PodDecision::default()
        );
    }

    #[test]
    fn terminating_pods_on_dead_nodes_are_force_deleted() {
        let taints = unreachable(100);
        let mut p = pod(vec![]);
        p.metadata.deletion_timestamp = Some(Time(t(130)));
        let d = decide_pod(&p, Some((Health::Unknown, &taints)), t(120), None);
        assert!(!d.force_delete && !d.evict);
        assert!(decide_pod(&p, Some((Health::Unknown, &taints)), t(130), None).force_delete);
        // Healthy node: the agent finishes it.
        assert!(!decide_pod(&p, Some((Health::Ready, &[])), t(200), None).force_delete);
        // Node gone: orphan.
        assert!(decide_pod(&pod(vec![]), None, t(0), None).force_delete);
    }

    #[test]
    fn toleration_matching() {
        let taint = &unreachable(0)[0];
        assert!(tolerates(&tol(None), taint));
        let any = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&any, taint));
        let other = Toleration {
            key: Some("x".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(!tolerates(&other, taint));
        let wrong_effect = Toleration {
            effect: Some("NoSchedule".into()),
            ..tol(None)
        };
        assert!(!tolerates(&wrong_effect, taint));
    }
}
