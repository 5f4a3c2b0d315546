//! Shared pieces of the workload controllers (ReplicaSet, Deployment): controller references,
//! label selector matching, pod readiness and availability, the order in which pods are deleted on
//! scale-down, the pod-template hash, slow-start batches, creation/deletion expectations and a small
//! core/v1 Event writer.
//!
//! Everything here except [`Recorder`] is a pure function of plain values; nothing here loops on the
//! API server.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector, MicroTime, ObjectMeta, OwnerReference, Time,
};
use kube::api::{Api, PostParams};

/// Label put on a ReplicaSet, its selector and its pods by the Deployment controller.
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// The controller reference (`controller: true`) of an object, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))
}

/// A controller reference to `owner` (controller and blockOwnerDeletion set, as upstream does).
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.to_string(),
        kind: kind.to_string(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Whether `labels` match a label selector. An empty or absent selector matches nothing (a
/// controller with an empty selector would otherwise adopt every pod in its namespace).
pub fn selector_matches(
    selector: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let match_labels = selector.match_labels.as_ref().filter(|m| !m.is_empty());
    let exprs = selector
        .match_expressions
        .as_ref()
        .filter(|e| !e.is_empty());
    if match_labels.is_none() && exprs.is_none() {
        return false;
    }
    if let Some(ml) = match_labels
        && !ml.iter().all(|(k, v)| labels.get(k) == Some(v))
    {
        return false;
    }
    for e in exprs.into_iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default();
        let ok = match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A pod that counts towards a controller's replicas: not finished and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none()
        && phase != Some("Succeeded")
        && phase != Some("Failed")
}

/// When the pod's Ready condition turned True, if it is True.
pub fn ready_since(pod: &Pod) -> Option<Option<jiff::Timestamp>> {
    let cond = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready")?;
    (cond.status == "True").then(|| cond.last_transition_time.as_ref().map(|t| t.0))
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// Availability of a pod: `Ok(())` when it has been ready for `min_ready_seconds`, `Err(Some(d))`
/// when it is ready but becomes available after `d`, `Err(None)` when it is not ready.
pub fn availability(
    pod: &Pod,
    min_ready_seconds: i32,
    now: jiff::Timestamp,
) -> Result<(), Option<Duration>> {
    let Some(since) = ready_since(pod) else {
        return Err(None);
    };
    if min_ready_seconds <= 0 {
        return Ok(());
    }
    let Some(since) = since else {
        // Ready without a transition time: upstream treats it as available.
        return Ok(());
    };
    let at = since.as_second() + i64::from(min_ready_seconds);
    if at <= now.as_second() {
        Ok(())
    } else {
        Err(Some(Duration::from_secs((at - now.as_second()) as u64)))
    }
}

/// Whether the pod is available (ready for at least `min_ready_seconds`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: jiff::Timestamp) -> bool {
    availability(pod, min_ready_seconds, now).is_ok()
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

/// Upstream's `ActivePods` order: pods that should be deleted first sort first.
/// Unassigned < assigned; Pending < Unknown < Running; not ready < ready; ready for less time first;
/// more restarts first; newer first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(
            || match (ready_since(a).flatten(), ready_since(b).flatten()) {
                // Ready for less time (later transition) first.
                (Some(x), Some(y)) => y.cmp(&x),
                _ => Ordering::Equal,
            },
        )
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let ct = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            // Newer first.
            ct(b).cmp(&ct(a))
        })
        .then_with(|| b.metadata.name.cmp(&a.metadata.name))
}

/// The pod-template hash: FNV-1a (32 bits) of the template's JSON and the collision count,
/// encoded with the alphabet of upstream's `rand.SafeEncodeString` (a valid label value).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut bytes = serde_json::to_vec(template).unwrap_or_default();
    if let Some(c) = collision_count {
        bytes.extend_from_slice(&c.to_le_bytes());
    }
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    safe_encode(&h.to_string())
}

/// Upstream `rand.SafeEncodeString`: maps each byte onto an alphabet without vowels or look-alikes.
pub fn safe_encode(s: &str) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    s.bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

/// Sizes of the slow-start batches upstream uses to create `n` objects: 1, 2, 4, 8... so that a
/// failing template costs one request, not `n`.
pub fn slow_start_batches(n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let (mut left, mut size) = (n, 1usize);
    while left > 0 {
        let b = size.min(left);
        out.push(b);
        left -= b;
        size *= 2;
    }
    out
}

/// Object names a controller is waiting to see created or deleted in its cache, per owner key.
/// While expectations are pending the controller does not create or delete more, so a burst of
/// watch events (or a stale cache) cannot make it create extra pods. Expectations expire after
/// a timeout, as upstream's do, so a lost event cannot wedge a controller.
#[derive(Debug, Default)]
pub struct Expectations {
    inner: Mutex<HashMap<String, Pending>>,
}

#[derive(Debug)]
struct Pending {
    adds: HashSet<String>,
    deletes: HashSet<String>,
    since: Instant,
}

/// How long expectations are kept before they are dropped (upstream: 5 minutes).
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(300);

impl Expectations {
    /// Record names created for `key`.
    pub fn expect_adds(&self, key: &str, names: impl IntoIterator<Item = String>) {
        self.with(key, |p| p.adds.extend(names));
    }

    /// Record names deleted for `key`.
    pub fn expect_deletes(&self, key: &str, names: impl IntoIterator<Item = String>) {
        self.with(key, |p| p.deletes.extend(names));
    }

    /// Forget a name that will not appear (its creation failed).
    pub fn creation_failed(&self, key: &str, name: &str) {
        self.with(key, |p| {
            p.adds.remove(name);
        });
    }

    fn with(&self, key: &str, f: impl FnOnce(&mut Pending)) {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let p = m.entry(key.to_string()).or_insert_with(|| Pending {
            adds: HashSet::new(),
            deletes: HashSet::new(),
            since: Instant::now(),
        });
        p.since = Instant::now();
        f(p);
    }

    /// Whether `key`'s expectations are met, given what the cache shows: `present(name)` is true
    /// when the cache holds the object and it is not being deleted, `seen(name)` when the cache holds it at all.
    pub fn satisfied(
        &self,
        key: &str,
        seen: impl Fn(&str) -> bool,
        present: impl Fn(&str) -> bool,
    ) -> bool {
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        // Owners that went away leave entries behind: drop the expired ones.
        m.retain(|_, p| p.since.elapsed() <= EXPECTATIONS_TIMEOUT);
        let Some(p) = m.get_mut(key) else {
            return true;
        };
        p.adds.retain(|n| !seen(n));
        p.deletes.retain(|n| present(n));
        if p.adds.is_empty() && p.deletes.is_empty() {
            m.remove(key);
            return true;
        }
        false
    }

    /// Drop everything about `key` (its owner is gone).
    pub fn forget(&self, key: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

/// Writes core/v1 Events about objects (served also as events.k8s.io/v1 for `kubectl describe`).
/// Writes happen in the background; a failed write is logged and dropped, as upstream's recorder does.
///
/// Like upstream's `EventSourceObjectSpamFilter`, each involved object gets a bucket of
/// [`EVENT_BURST`] events refilled at one per [`EVENT_REFILL`], so a 1,000-pod scale-up writes 25
/// "Created pod" events, not 1,000.
#[derive(Clone)]
pub struct Recorder {
    client: kube::Client,
    component: String,
    buckets: std::sync::Arc<Mutex<HashMap<String, (f64, Instant)>>>,
}

/// Events an object may get at once before the spam filter drops them.
pub const EVENT_BURST: f64 = 25.0;
/// One more event allowed per this long.
pub const EVENT_REFILL: Duration = Duration::from_secs(300);

/// Token bucket step: given `(tokens, last)` and `now`, whether one token can be taken.
fn take_token(bucket: &mut (f64, Instant), now: Instant) -> bool {
    let refill = now.saturating_duration_since(bucket.1).as_secs_f64() / EVENT_REFILL.as_secs_f64();
    bucket.0 = (bucket.0 + refill).min(EVENT_BURST);
    bucket.1 = now;
    if bucket.0 >= 1.0 {
        bucket.0 -= 1.0;
        true
    } else {
        false
    }
}

impl Recorder {
    /// A recorder that signs events with `component` (e.g. `deployment-controller`).
    pub fn new(client: kube::Client, component: &str) -> Self {
        Self {
            client,
            component: component.to_string(),
            buckets: Default::default(),
        }
    }

    /// Record an event about `object` in the background.
    pub fn event(&self, object: ObjectReference, type_: &str, reason: &str, message: String) {
        {
            let key = object
                .uid
                .clone()
                .unwrap_or_else(|| format!("{:?}/{:?}", object.namespace, object.name));
            let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if b.len() > 10_000 {
                b.retain(|_, v| now.saturating_duration_since(v.1) < EVENT_REFILL * 25);
            }
            if !take_token(b.entry(key).or_insert((EVENT_BURST, now)), now) {
                return;
            }
        }
        let ns = object.namespace.clone().unwrap_or_else(|| "default".into());
        let now = jiff::Timestamp::now();
        let name = format!(
            "{}.{:x}",
            object.name.as_deref().unwrap_or("object"),
            now.as_nanosecond() as u64
        );
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(reason.to_string()),
            message: Some(message),
            type_: Some(type_.to_string()),
            source: Some(EventSource {
                component: Some(self.component.clone()),
                host: None,
            }),
            reporting_component: Some(self.component.clone()),
            reporting_instance: Some(self.component.clone()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            action: Some(reason.to_string()),
            count: Some(1),
            ..Default::default()
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        tokio::spawn(async move {
            if let Err(e) = api.create(&PostParams::default(), &ev).await {
                tracing::debug!(error = %e, "writing an event failed");
            }
        });
    }
}

/// An ObjectReference to `meta` of the given kind, for events.
pub fn object_reference(api_version: &str, kind: &str, meta: &ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(api_version.to_string()),
        kind: Some(kind.to_string()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    pub(crate) fn pod(
        name: &str,
        node: Option<&str>,
        phase: &str,
        ready: Option<i64>,
        created: i64,
    ) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: ready.map(|t| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        last_transition_time: Some(Time(jiff::Timestamp::from_second(t).unwrap())),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn selectors() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(selector_matches(&sel, Some(&labels(&[("app", "web")]))));
        assert!(!selector_matches(
            &sel,
            Some(&labels(&[("app", "web"), ("tier", "db")]))
        ));
        assert!(!selector_matches(&sel, Some(&labels(&[("app", "api")]))));
        assert!(!selector_matches(
            &LabelSelector::default(),
            Some(&labels(&[("app", "web")]))
        ));
    }

    #[test]
    fn deletion_order_follows_upstream() {
        let unassigned = pod("unassigned", None, "Pending", None, 10);
        let pending = pod("pending", Some("n"), "Pending", None, 10);
        let running_unready = pod("running-unready", Some("n"), "Running", None, 10);
        let ready_new = pod("ready-recent", Some("n"), "Running", Some(100), 10);
        let ready_old = pod("ready-long", Some("n"), "Running", Some(50), 10);
        let mut pods = [ready_old, running_unready, ready_new, unassigned, pending];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "unassigned",
                "pending",
                "running-unready",
                "ready-recent",
                "ready-long"
            ]
        );
        // Newer first among otherwise equal pods.
        let a = pod("older", Some("n"), "Running", None, 1);
        let b = pod("newer", Some("n"), "Running", None, 2);
        assert_eq!(deletion_order(&b, &a), Ordering::Less);
    }

    #[test]
    fn availability_respects_min_ready_seconds() {
        let now = jiff::Timestamp::from_second(1000).unwrap();
        let p = pod("p", Some("n"), "Running", Some(995), 0);
        assert!(is_available(&p, 0, now));
        assert_eq!(availability(&p, 10, now), Err(Some(Duration::from_secs(5))));
        assert!(is_available(&p, 5, now));
        assert_eq!(
            availability(&pod("q", None, "Pending", None, 0), 0, now),
            Err(None)
        );
    }

    #[test]
    fn hash_is_stable_and_a_label_value() {
        let t = PodTemplateSpec::default();
        let h = template_hash(&t, None);
        assert_eq!(h, template_hash(&t, None));
        assert_ne!(h, template_hash(&t, Some(1)));
        assert!(h.len() <= 63 && h.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn event_spam_filter() {
        let t0 = Instant::now();
        let mut b = (EVENT_BURST, t0);
        let taken = (0..100).filter(|_| take_token(&mut b, t0)).count();
        assert_eq!(taken, 25);
        assert!(!take_token(&mut b, t0 + Duration::from_secs(100)));
        assert!(take_token(&mut b, t0 + Duration::from_secs(301)));
    }

    #[test]
    fn batches() {
        assert_eq!(slow_start_batches(0), Vec::<usize>::new());
        assert_eq!(slow_start_batches(10), vec![1, 2, 4, 3]);
        assert_eq!(slow_start_batches(1000).iter().sum::<usize>(), 1000);
    }

    #[test]
    fn expectations_block_until_seen() {
        let e = Expectations::default();
        e.expect_adds("ns/rs", ["a".to_string(), "b".to_string()]);
        assert!(!e.satisfied("ns/rs", |n| n == "a", |_| true));
        assert!(e.satisfied("ns/rs", |n| n == "b", |_| true));
        e.expect_deletes("ns/rs", ["c".to_string()]);
        assert!(!e.satisfied("ns/rs", |_| true, |n| n == "c"));
        assert!(e.satisfied("ns/rs", |_| true, |_| false));
        assert!(e.satisfied("other", |_| false, |_| true));
    }
}
