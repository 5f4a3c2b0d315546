//! Local ephemeral storage limits, enforced as kubelet enforces them: the pod's disk usage is
//! measured every [`INTERVAL`] ([`sandbox::pod::storage_usage`]: each container's writable
//! layer and logs, the pod's disk-backed volumes) and a pod over a limit is evicted: a Warning
//! event `Evicted`, its containers killed, its status `phase: Failed`, `reason: Evicted` with
//! kubelet's message. Checked in kubelet's order (`localStorageEviction`, then the node
//! pressure):
//!
//! 1. each emptyDir volume's usage against its `sizeLimit` (planned: `VolumeKind::EmptyDir`'s
//!    `size_limit`)
//!    ("Usage of EmptyDir volume \"data\" exceeds the limit \"1Mi\". ");
//! 2. the pod's usage against the sum of its containers' `ephemeral-storage` limits
//!    ("Pod ephemeral local storage usage exceeds the total limit of containers 10Mi. ");
//! 3. each container's writable layer and logs against its own limit
//!    ("Container c exceeded its local ephemeral storage limit \"10Mi\". ");
//! 4. on serverless hosts, the pod's usage against the storage it is provisioned with
//!    (Fargate: 20 GiB by default): the pod is its own node there, so this is kubelet's
//!    node-pressure eviction ("The node was low on resource: ephemeral-storage. ...").
//!
//! Only the node-pressure eviction (4) also gets a `DisruptionTarget` condition
//! (`TerminationByKubelet`, the eviction's message): kubelet's `evictPod` is given that condition
//! by its threshold path only, its local storage limit evictions (1-3) pass none
//! ([`Eviction::disruption_target`]). A Job's `podFailurePolicy` tells them apart by it: a pod
//! over its own limit is a failure, a pod of a node out of disk a disruption.
//!
//! Why measuring rather than a size-limited filesystem: docs/adr/007-sandbox-limits.md.
//! [`verdict`] and the API bodies are pure; [`check`] and [`evict`] do the IO (the agent's loop
//! that calls them every [`interval`] is `watch_storage` in the sandboxed runtime).

use std::future::Future;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use sandbox::plan::{PodPlan, VolumeKind, format_bytes};
use sandbox::pod::StorageUsage;
use serde_json::{Value, json};
use tracing::{info, warn};

/// How often a pod's storage is measured (kubelet's housekeeping interval).
pub const INTERVAL: Duration = Duration::from_secs(10);
/// The pod status reason (and event reason) of an eviction.
pub const REASON: &str = "Evicted";
/// How kubelet's node-pressure eviction messages begin (`evictionMessageFmt`).
pub const NODE_PRESSURE_PREFIX: &str = "The node was low on resource: ";
/// The condition of a pod evicted for node pressure, and its reason.
pub const DISRUPTION_TARGET: &str = "DisruptionTarget";
pub const TERMINATION_BY_KUBELET: &str = "TerminationByKubelet";

/// Why a pod is evicted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Eviction {
    /// An emptyDir volume holds more than its `sizeLimit`.
    EmptyDir {
        volume: String,
        limit: u64,
        usage: u64,
    },
    /// The pod uses more than the sum of its containers' limits.
    PodLimit { limit: u64, usage: u64 },
    /// One container's writable layer and logs hold more than its limit.
    ContainerLimit {
        container: String,
        limit: u64,
        usage: u64,
    },
    /// The pod uses more than the storage it is provisioned with (serverless).
    Provisioned {
        provisioned: u64,
        usage: u64,
        /// The containers that use more than they request: (name, usage, request).
        containers: Vec<(String, u64, u64)>,
    },
}

impl Eviction {
    /// Kubelet's message.
    pub fn message(&self) -> String {
        match self {
            Eviction::EmptyDir { volume, limit, .. } => format!(
                "Usage of EmptyDir volume {volume:?} exceeds the limit {:?}. ",
                format_bytes(*limit)
            ),
            Eviction::PodLimit { limit, .. } => format!(
                "Pod ephemeral local storage usage exceeds the total limit of containers {}. ",
                format_bytes(*limit)
            ),
            Eviction::ContainerLimit {
                container, limit, ..
            } => format!(
                "Container {container} exceeded its local ephemeral storage limit {:?}. ",
                format_bytes(*limit)
            ),
            Eviction::Provisioned {
                provisioned,
                usage,
                containers,
            } => {
                let mut m = format!(
                    "The node was low on resource: ephemeral-storage. Threshold quantity: {}, available: -{}. ",
                    format_bytes(*provisioned),
                    format_bytes(usage.saturating_sub(*provisioned))
                );
                for (name, used, request) in containers {
                    m.push_str(&format!(
                        "Container {name} was using {}, request is {}, has larger consumption of ephemeral-storage. ",
                        format_bytes(*used),
                        format_bytes(*request)
                    ));
                }
                m
            }
        }
    }

    /// Whether kubelet marks the evicted pod with a `DisruptionTarget` condition: for a
    /// node-pressure eviction only.
    pub fn disruption_target(&self) -> bool {
        matches!(self, Eviction::Provisioned { .. })
    }
}

/// Whether an eviction with kubelet's `message` marks the pod with a `DisruptionTarget`
/// condition (see [`Eviction::disruption_target`]): a node-pressure eviction's message. Pure.
pub fn disruption_target(message: &str) -> bool {
    message.starts_with(NODE_PRESSURE_PREFIX)
}

/// The pod's ephemeral-storage limit as kubelet computes it: the larger of the largest init
/// container's limit and the sum of the regular containers' limits, counting only containers
/// that set one; None when none does. Pure.
pub fn pod_limit(plan: &PodPlan) -> Option<u64> {
    let regular: Vec<u64> = plan
        .containers
        .iter()
        .filter_map(|c| c.ephemeral_storage_limit)
        .collect();
    let init = plan
        .init_containers
        .iter()
        .filter_map(|c| c.ephemeral_storage_limit)
        .max();
    if regular.is_empty() && init.is_none() {
        return None;
    }
    Some(
        regular
            .into_iter()
            .fold(0u64, u64::saturating_add)
            .max(init.unwrap_or(0)),
    )
}

/// Whether (and why) the pod must be evicted for its storage `usage`, in kubelet's order: the
/// emptyDir volumes' `sizeLimit`s and the containers' limits come from the plan.
/// `provisioned`: the storage the pod is provisioned with where that is enforced (serverless
/// pods: [`PodPlan::ephemeral_storage_bytes`]), None elsewhere. Pure.
pub fn verdict(plan: &PodPlan, usage: &StorageUsage, provisioned: Option<u64>) -> Option<Eviction> {
    // In the pod's volume order, as kubelet walks them.
    for v in &plan.volumes {
        if let VolumeKind::EmptyDir {
            size_limit: Some(limit),
            ..
        } = v.kind
            && let Some(&used) = usage.volumes.get(&v.name)
            && used > limit
        {
            return Some(Eviction::EmptyDir {
                volume: v.name.clone(),
                limit,
                usage: used,
            });
        }
    }
    if let Some(limit) = pod_limit(plan)
        && usage.total > limit
    {
        return Some(Eviction::PodLimit {
            limit,
            usage: usage.total,
        });
    }
    for c in plan.init_containers.iter().chain(&plan.containers) {
        let used = usage.containers.get(&c.name).copied().unwrap_or(0);
        if let Some(limit) = c.ephemeral_storage_limit
            && used > limit
        {
            return Some(Eviction::ContainerLimit {
                container: c.name.clone(),
                limit,
                usage: used,
            });
        }
    }
    if let Some(provisioned) = provisioned
        && usage.total > provisioned
    {
        let containers = plan
            .init_containers
            .iter()
            .chain(&plan.containers)
            .filter_map(|c| {
                let used = usage.containers.get(&c.name).copied().unwrap_or(0);
                // Requests are not planned; a container over nothing counts as 0.
                (used > 0).then(|| (c.name.clone(), used, 0))
            })
            .collect();
        return Some(Eviction::Provisioned {
            provisioned,
            usage: usage.total,
            containers,
        });
    }
    None
}

/// The status patch (strategic merge: the conditions merge by type, none is dropped) of an
/// evicted pod, as kubelet writes it: the `DisruptionTarget` condition for a node-pressure
/// eviction only ([`disruption_target`]). Pure.
pub fn evicted_status(uid: &str, message: &str, now: Timestamp) -> Value {
    let mut patch = json!({
        "metadata": {"uid": uid},
        "status": {
            "phase": "Failed",
            "reason": REASON,
            "message": message,
        }
    });
    if disruption_target(message) {
        patch["status"]["conditions"] = json!([{
            "type": DISRUPTION_TARGET,
            "status": "True",
            "reason": TERMINATION_BY_KUBELET,
            "message": message,
            "lastTransitionTime": crate::status::time(now),
        }]);
    }
    patch
}

/// The pod kubelet would evict: enough to address it in the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// The node it runs on (the event's source host).
    pub node: String,
}

/// kubelet's `Evicted` Warning event about the pod. Pure.
pub fn evicted_event(pod: &PodRef, message: &str, now: Timestamp) -> Event {
    kubelet_event(pod, None, true, REASON, message.to_owned(), now)
}

/// A core/v1 Event from kubelet about the pod (or its container at `field_path`), seen once
/// at `now`. Pure.
pub(crate) fn kubelet_event(
    pod: &PodRef,
    field_path: Option<String>,
    warning: bool,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Event {
    Event {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}.{:x}",
                pod.name,
                now.as_nanosecond().unsigned_abs()
            )),
            namespace: Some(pod.namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name.clone()),
            namespace: Some(pod.namespace.clone()),
            uid: Some(pod.uid.clone()),
            field_path,
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message),
        type_: Some(if warning { "Warning" } else { "Normal" }.into()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(pod.node.clone()),
        }),
        reporting_component: Some("kubelet".into()),
        reporting_instance: Some(pod.node.clone()),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Default::default()
    }
}

/// Parses a duration as kubelet's flags take them (Go's `time.ParseDuration`: `10s`, `500ms`,
/// `1m30s`, `1.5h`; units ns, us, µs, ms, s, m, h); a clap `value_parser`. Pure.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (e.g. 10s, 500ms, 1m30s)");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * seconds;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// Parses the agent's `--eviction-interval` (a clap `value_parser`): a [`parse_duration`]
/// that is not zero. Pure.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("the eviction interval {s:?} must be more than 0")),
        d => Ok(d),
    }
}

/// The file in the pod's directory where the sandboxed runtime keeps the Pod object.
pub const POD_FILE: &str = "k8s-pod.json";

/// Evicts the pod: the `Evicted` event, then `stop` (which must kill the pod's containers,
/// without restarting them, with no grace period: kubelet's local storage evictions give none),
/// then the status. An API failure is returned after the containers are stopped.
pub async fn evict<F, Fut>(
    client: &kube::Client,
    pod: &PodRef,
    eviction: &Eviction,
    stop: F,
) -> Result<(), kube::Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let message = eviction.message();
    info!(pod = %format!("{}/{}", pod.namespace, pod.name), %message, "evicting");
    let now = Timestamp::now();
    let events: Api<Event> = Api::namespaced(client.clone(), &pod.namespace);
    if let Err(e) = events
        .create(&PostParams::default(), &evicted_event(pod, &message, now))
        .await
    {
        warn!(error = %e, "posting the Evicted event");
    }
    stop().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    pods.patch_status(
        &pod.name,
        &PatchParams::default(),
        &Patch::Strategic(evicted_status(&pod.uid, &message, Timestamp::now())),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sandbox::image::{ImageStore, PullOptions, StoreOptions};
    use sandbox::pod::Host;
    use std::sync::Arc;

    /// What the agent's check of an OCI pod does: measure on the host, then decide.
    async fn check(host: &Host, plan: &PodPlan, provisioned: Option<u64>) -> Option<Eviction> {
        verdict(plan, &sandbox::pod::storage_usage(host, plan), provisioned)
    }

    fn plan(json: Value) -> PodPlan {
        let pod: Pod = serde_json::from_value(json).unwrap();
        sandbox::plan::plan(&pod).unwrap()
    }

    fn usage(containers: &[(&str, u64)], volumes: u64) -> StorageUsage {
        let containers: std::collections::BTreeMap<String, u64> = containers
            .iter()
            .map(|(n, b)| (n.to_string(), *b))
            .collect();
        StorageUsage {
            total: containers.values().sum::<u64>() + volumes,
            containers,
            volumes: [("v".to_string(), volumes)].into(),
        }
    }

    /// A host without a network whose data lives in `data`.
    fn host_at(data: &std::path::Path) -> Host {
        Host {
            data_dir: data.to_owned(),
            images: Arc::new(
                ImageStore::open(data.join("images"), StoreOptions::default()).unwrap(),
            ),
            network: None,
            pull: PullOptions::default(),
        }
    }

    fn two_containers() -> PodPlan {
        plan(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [
                {"name": "c", "image": "x", "resources": {"limits": {"ephemeral-storage": "10Mi"}}},
                {"name": "d", "image": "x"}
            ]}
        }))
    }

    #[test]
    fn kubelet_order_and_messages() {
        let p = two_containers();
        assert_eq!(pod_limit(&p), Some(10 << 20));
        // Under every limit.
        assert_eq!(verdict(&p, &usage(&[("c", 5 << 20)], 1 << 20), None), None);
        // c writes 20 MiB: the pod's total (the sum of the limits) is exceeded first.
        let v = verdict(&p, &usage(&[("c", 20 << 20)], 0), None).unwrap();
        assert_eq!(
            v.message(),
            "Pod ephemeral local storage usage exceeds the total limit of containers 10Mi. "
        );
        // With a second limited container the pod total is 110Mi: c's own limit trips.
        let mut p2 = p.clone();
        p2.containers[1].ephemeral_storage_limit = Some(100 << 20);
        let v = verdict(&p2, &usage(&[("c", 20 << 20), ("d", 0)], 0), None).unwrap();
        assert_eq!(
            v,
            Eviction::ContainerLimit {
                container: "c".into(),
                limit: 10 << 20,
                usage: 20 << 20
            }
        );
        assert_eq!(
            v.message(),
            "Container c exceeded its local ephemeral storage limit \"10Mi\". "
        );
        // Without limits only the provisioned storage (serverless) counts.
        let free = plan(
            json!({"metadata": {"name": "f"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        );
        assert_eq!(pod_limit(&free), None);
        let big = usage(&[("c", 21 << 30)], 0);
        assert_eq!(verdict(&free, &big, None), None);
        let v = verdict(&free, &big, Some(free.ephemeral_storage_bytes)).unwrap();
        assert_eq!(
            v.message(),
            "The node was low on resource: ephemeral-storage. Threshold quantity: 20Gi, available: -1Gi. \
             Container c was using 21Gi, request is 0, has larger consumption of ephemeral-storage. "
        );
    }

    /// An emptyDir over its sizeLimit comes first (kubelet's `emptyDirLimitEviction`), in the
    /// pod's volume order; a volume without a limit, or under it, never evicts.
    #[test]
    fn empty_dir_size_limits() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {
                "containers": [{"name": "c", "image": "x",
                    "resources": {"limits": {"ephemeral-storage": "10Mi"}}}],
                "volumes": [
                    {"name": "free", "emptyDir": {}},
                    {"name": "data", "emptyDir": {"sizeLimit": "1Mi"}},
                    {"name": "cache", "emptyDir": {"sizeLimit": "2M"}},
                    {"name": "zero", "emptyDir": {"sizeLimit": "0"}},
                    {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
                ]
            }
        }))
        .unwrap();
        let p = sandbox::plan::plan(&pod).unwrap();
        let usage = |vols: &[(&str, u64)]| {
            let volumes: std::collections::BTreeMap<String, u64> =
                vols.iter().map(|(n, b)| (n.to_string(), *b)).collect();
            StorageUsage {
                total: volumes.values().sum(),
                containers: [("c".to_string(), 0)].into(),
                volumes,
            }
        };
        // Under the limits (a volume without one may hold anything up to the pod's limit).
        let ok = usage(&[("free", 5 << 20), ("data", 1 << 20), ("cache", 1_000_000)]);
        assert_eq!(verdict(&p, &ok, None), None);
        // Over: data before cache, and before the pod's own limit (also exceeded here).
        let over = usage(&[("free", 0), ("data", 3 << 20), ("cache", 9 << 20)]);
        let v = verdict(&p, &over, None).unwrap();
        assert_eq!(
            v,
            Eviction::EmptyDir {
                volume: "data".into(),
                limit: 1 << 20,
                usage: 3 << 20
            }
        );
        assert_eq!(
            v.message(),
            "Usage of EmptyDir volume \"data\" exceeds the limit \"1Mi\". "
        );
        assert!(!v.disruption_target());
        let v = verdict(&p, &usage(&[("cache", 2_000_001)]), None).unwrap();
        assert_eq!(
            v.message(),
            "Usage of EmptyDir volume \"cache\" exceeds the limit \"2M\". "
        );
        // A volume that sets none (zero counts as none) never evicts.
        let v = verdict(&p, &usage(&[("free", 9 << 20), ("zero", 9 << 20)]), None).unwrap();
        assert!(matches!(v, Eviction::PodLimit { .. }), "{v:?}");
        // Without the limits (a plan persisted before they were planned), the pod's limit is
        // what trips.
        let mut old = p.clone();
        for v in &mut old.volumes {
            if let VolumeKind::EmptyDir { size_limit, .. } = &mut v.kind {
                *size_limit = None;
            }
        }
        let v = verdict(&old, &over, None).unwrap();
        assert!(matches!(v, Eviction::PodLimit { .. }), "{v:?}");
    }

    #[test]
    fn durations_as_kubelet_flags_take_them() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_interval("0").is_err() && parse_interval("0s").is_err());
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        for bad in ["", "10", "s", "10x", "-1s", "1..2s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn status_and_event_are_kubelets() {
        let now: Timestamp = "2026-01-02T03:04:05Z".parse().unwrap();
        let s = evicted_status("u1", "m. ", now);
        assert_eq!(s["status"]["phase"], "Failed");
        assert_eq!(s["status"]["reason"], "Evicted");
        assert_eq!(s["status"]["message"], "m. ");
        // A limit eviction: no condition (kubelet's evictPod is given none for those).
        assert!(s["status"].get("conditions").is_none(), "{s}");
        assert_eq!(s["metadata"]["uid"], "u1");
        // A node-pressure eviction: DisruptionTarget, with the eviction's message.
        let free = plan(
            json!({"metadata": {"name": "f"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}),
        );
        let pressure = verdict(&free, &usage(&[("c", 21 << 30)], 0), Some(20 << 30)).unwrap();
        assert!(pressure.disruption_target());
        let s = evicted_status("u1", &pressure.message(), now);
        let c = &s["status"]["conditions"][0];
        assert_eq!(c["type"], "DisruptionTarget");
        assert_eq!(c["status"], "True");
        assert_eq!(c["reason"], "TerminationByKubelet");
        assert_eq!(c["message"], pressure.message());
        assert_eq!(c["lastTransitionTime"], "2026-01-02T03:04:05Z");
        let pod = PodRef {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u1".into(),
            node: "n".into(),
        };
        let e = evicted_event(&pod, "m. ", now);
        assert_eq!(e.reason.as_deref(), Some("Evicted"));
        assert_eq!(e.type_.as_deref(), Some("Warning"));
        assert_eq!(e.involved_object.uid.as_deref(), Some("u1"));
    }

    /// Measured from disk: a container's writable layer over its limit, as the sandbox lays
    /// it out (`containers/<id>/upper`, `logs`).
    #[tokio::test]
    async fn check_measures_the_writable_layer() {
        let data = std::env::temp_dir().join(format!("nodeless-eviction-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let host = host_at(&data);
        let p = two_containers();
        assert_eq!(check(&host, &p, None).await, None);
        let cdir = sandbox::container::dir(&data, &sandbox::pod::container_id(&p.id, "c"));
        std::fs::create_dir_all(cdir.join("upper")).unwrap();
        std::fs::create_dir_all(cdir.join("logs")).unwrap();
        std::fs::write(cdir.join("upper/big"), vec![1u8; 8 << 20]).unwrap();
        assert_eq!(check(&host, &p, None).await, None);
        std::fs::write(cdir.join("logs/0.log"), vec![1u8; 3 << 20]).unwrap();
        let v = check(&host, &p, None).await.unwrap();
        assert!(
            matches!(v, Eviction::PodLimit { limit, usage } if limit == 10 << 20 && usage >= 11 << 20),
            "{v:?}"
        );
        std::fs::remove_dir_all(&data).unwrap();
    }

    /// An emptyDir over its sizeLimit, measured from disk (`volumes/<name>`): the limit comes
    /// from the plan.
    #[tokio::test]
    async fn check_measures_empty_dirs_against_their_size_limit() {
        let data = std::env::temp_dir().join(format!("nodeless-emptydir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        let host = host_at(&data);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": [{"name": "c", "image": "x"}],
                     "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "1Mi"}}]}
        }))
        .unwrap();
        let p = sandbox::plan::plan(&pod).unwrap();
        let pdir = sandbox::pod::dir(&data, &p.id);
        std::fs::create_dir_all(pdir.join("volumes/data")).unwrap();
        std::fs::write(pdir.join("volumes/data/half"), vec![1u8; 512 << 10]).unwrap();
        // Under the limit.
        assert_eq!(check(&host, &p, None).await, None);
        std::fs::write(pdir.join("volumes/data/big"), vec![1u8; 2 << 20]).unwrap();
        let v = check(&host, &p, None).await.unwrap();
        assert!(
            matches!(&v, Eviction::EmptyDir { volume, limit, usage }
                if volume == "data" && *limit == 1 << 20 && *usage >= 2 << 20),
            "{v:?}"
        );
        assert_eq!(
            v.message(),
            "Usage of EmptyDir volume \"data\" exceeds the limit \"1Mi\". "
        );
        std::fs::remove_dir_all(&data).unwrap();
    }

    /// A one-layer OCI layout in `dir` holding the host's static busybox; `oci:DIR:latest`.
    fn busybox_image(dir: &std::path::Path) -> Option<String> {
        use sandbox::digest::Digest;
        let bb = std::fs::read("/bin/busybox").ok()?;
        // A ustar archive: bin/ and bin/busybox.
        let mut layer = Vec::new();
        for (path, content, mode, kind) in [
            ("bin/", &[][..], 0o755u32, b'5'),
            ("bin/busybox", &bb[..], 0o755, b'0'),
        ] {
            let mut h = [0u8; 512];
            h[..path.len()].copy_from_slice(path.as_bytes());
            let oct = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
                let s = format!("{v:0w$o}\0", w = len - 1);
                h[at..at + len].copy_from_slice(s.as_bytes());
            };
            oct(&mut h, 100, 8, u64::from(mode));
            oct(&mut h, 108, 8, 0);
            oct(&mut h, 116, 8, 0);
            oct(&mut h, 124, 12, content.len() as u64);
            oct(&mut h, 136, 12, 1_700_000_000);
            h[156] = kind;
            h[257..263].copy_from_slice(b"ustar\0");
            h[263..265].copy_from_slice(b"00");
            h[148..156].copy_from_slice(b"        ");
            let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            layer.extend_from_slice(&h);
            layer.extend_from_slice(content);
            layer.resize(layer.len().div_ceil(512) * 512, 0);
        }
        layer.extend_from_slice(&[0u8; 1024]);
        let layer_digest = Digest::of(&layer);
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/busybox", "sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
        }))
        .ok()?;
        let config_digest = Digest::of(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest.to_string(), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest.to_string(), "size": layer.len()}],
        }))
        .ok()?;
        let manifest_digest = Digest::of(&manifest);
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).ok()?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).ok()?;
        for (d, b) in [
            (&layer_digest, &layer),
            (&config_digest, &config),
            (&manifest_digest, &manifest),
        ] {
            std::fs::write(blobs.join(d.hex()), b).ok()?;
        }
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest.to_string(), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).ok()?).ok()?;
        Some(format!("oci:{}:latest", dir.display()))
    }

    /// The whole path with real parts: a pod in a real API server, its container run by crun,
    /// writing 20 MiB past its 10Mi limit; checked every 200 ms as the agent's loop does, then
    /// evicted: killed, event, status.
    #[tokio::test]
    async fn evicts_a_real_pod_over_its_limit() {
        use kube::api::PostParams;
        if !sandbox::runtime::available().contains(&sandbox::runtime::RuntimeKind::Container) {
            eprintln!("SKIPPED: crun is not installed (apt-get install crun)");
            return;
        }
        let data = std::env::temp_dir().join(format!("nodeless-evict-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        let Some(image) = busybox_image(&data.join("layout")) else {
            eprintln!(
                "SKIPPED: umoci could not build the image (apt-get install umoci busybox-static)"
            );
            return;
        };
        let ts = apiserver::testing::TestServer::start().await;
        let client = kube::Client::try_from(
            kube::Config::from_custom_kubeconfig(
                kube::config::Kubeconfig::from_yaml(&ts.kubeconfig).unwrap(),
                &Default::default(),
            )
            .await
            .unwrap(),
        )
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "filler", "namespace": "default"},
            "spec": {"restartPolicy": "Always", "containers": [{
                "name": "c", "image": image,
                "resources": {"limits": {"ephemeral-storage": "10Mi"}},
                "command": ["/bin/busybox", "sh", "-c",
                    "/bin/busybox dd if=/dev/zero of=/big bs=1M count=20; /bin/busybox sync; /bin/busybox sleep 600"]
            }]}
        }))
        .unwrap();
        let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
        let host = host_at(&data);
        let rt: Arc<dyn sandbox::runtime::Runtime> = Arc::from(
            sandbox::runtime::open_for_pods(sandbox::runtime::RuntimeKind::Container, &data)
                .unwrap(),
        );
        let p = sandbox::plan::plan(&pod).unwrap();
        let run = sandbox::pod::start(&host, rt.clone(), &p, &Default::default())
            .await
            .unwrap();
        let pod_ref = PodRef {
            namespace: "default".into(),
            name: "filler".into(),
            uid: pod.metadata.uid.clone().unwrap(),
            node: "node-1".into(),
        };
        let eviction = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let Some(e) = check(&host, &p, None).await {
                    break e;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("over its limit within 60 s");
        let stopped = std::sync::atomic::AtomicBool::new(false);
        evict(&client, &pod_ref, &eviction, || async {
            run.stop(Duration::ZERO).await;
            stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        })
        .await
        .unwrap();
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
        let message =
            "Pod ephemeral local storage usage exceeds the total limit of containers 10Mi. ";
        assert_eq!(eviction.message(), message);
        // The container was killed.
        let (exits, _) = tokio::time::timeout(Duration::from_secs(30), run.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exits[0].1.code, 137, "{exits:?}");
        // The status and the event, as kubelet writes them.
        let got = pods.get("filler").await.unwrap();
        let status = got.status.unwrap();
        assert_eq!(status.phase.as_deref(), Some("Failed"));
        assert_eq!(status.reason.as_deref(), Some("Evicted"));
        assert_eq!(status.message.as_deref(), Some(message));
        // A limit eviction: no DisruptionTarget (kubelet's node-pressure evictions only).
        assert!(
            !status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "DisruptionTarget")
        );
        let events: Api<Event> = Api::namespaced(client.clone(), "default");
        let list = events.list(&Default::default()).await.unwrap();
        assert!(
            list.items
                .iter()
                .any(|e| e.reason.as_deref() == Some("Evicted")
                    && e.message.as_deref() == Some(message)
                    && e.type_.as_deref() == Some("Warning")),
            "{:?}",
            list.items
        );
        sandbox::pod::remove(&host, rt.as_ref(), &p).await.unwrap();
        let _ = std::fs::remove_dir_all(&data);
    }
}
