//! The ReplicaSet controller: keeps `spec.replicas` active pods that match a ReplicaSet's selector,
//! adopting orphans and releasing pods whose labels no longer match, and reports status.
//!
//! [`plan`] is the decision, a pure function of the ReplicaSet and the pods of its namespace;
//! [`run`] is the kube-runtime shell (one watch on ReplicaSets, one on pods, both cached) that
//! carries a plan out with concurrent, slow-start batches of requests.
//!
//! When creating (or deleting) pods fails, the ReplicaSet gets the condition
//! `ReplicaFailure=True` (reason `FailedCreate`/`FailedDelete`, the API error as message) and a
//! `FailedCreate` Warning event, as upstream's `calculateStatus`; the condition goes once a sync
//! manages the replicas without error ([`replica_failure`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::podcontrol::{self, Expectations, Recorder};

/// Most pods created or deleted in one reconcile (upstream's `burstReplicas`).
pub const BURST_REPLICAS: usize = 500;
/// Most requests in flight at once within one batch. Once the API server is CPU-bound more only
/// lengthens its queue (the latency every other client sees), not the creation rate.
const MAX_IN_FLIGHT: usize = 32;

/// Errors of the ReplicaSet controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed")]
    Kube(#[from] kube::Error),
    #[error("creating {failed} pods failed")]
    CreatePods {
        failed: usize,
        #[source]
        source: kube::Error,
    },
    #[error("the pod cache stopped")]
    CacheGone,
}

/// What to do for one ReplicaSet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Orphan pods (names) that match the selector, to take a controller reference on.
    pub adopt: Vec<String>,
    /// Owned pods (names) that no longer match the selector, to release.
    pub release: Vec<String>,
    /// Number of pods to create from the template.
    pub create: usize,
    /// Pods (names) to delete, in the order upstream picks them.
    pub delete: Vec<String>,
    /// The status the ReplicaSet should have.
    pub status: ReplicaSetStatus,
    /// Reconcile again after this long (a pod becomes available after minReadySeconds).
    pub requeue_after: Option<Duration>,
}

/// Decide what to do for `rs` given the pods of its namespace. `manage` is false while earlier
/// creations/deletions have not shown up in the cache yet (then only status is computed).
pub fn plan(rs: &ReplicaSet, pods: &[Arc<Pod>], now: jiff::Timestamp, manage: bool) -> Plan {
    let mut out = Plan::default();
    let uid = rs.metadata.uid.as_deref().unwrap_or_default();
    let spec = rs.spec.as_ref();
    let selector = spec.map(|s| s.selector.clone()).unwrap_or_default();
    let replicas = spec.and_then(|s| s.replicas).unwrap_or(1).max(0) as usize;
    let min_ready = spec.and_then(|s| s.min_ready_seconds).unwrap_or(0);
    let rs_deleting = rs.metadata.deletion_timestamp.is_some();

    let mut mine: Vec<&Pod> = Vec::new();
    for pod in pods {
        let matches = podcontrol::selector_matches(&selector, pod.metadata.labels.as_ref());
        match podcontrol::controller_of(&pod.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    mine.push(pod);
                } else if pod.metadata.deletion_timestamp.is_none() {
                    out.release
                        .push(pod.metadata.name.clone().unwrap_or_default());
                }
            }
            Some(_) => {}
            None => {
                if matches
                    && !rs_deleting
                    && pod.metadata.deletion_timestamp.is_none()
                    && is_pod_of_namespace(pod, rs)
                {
                    out.adopt
                        .push(pod.metadata.name.clone().unwrap_or_default());
                    mine.push(pod);
                }
            }
        }
    }
    let active: Vec<&Pod> = mine
        .iter()
        .copied()
        .filter(|p| podcontrol::is_active(p))
        .collect();

    if manage && !rs_deleting {
        if active.len() < replicas {
            out.create = (replicas - active.len()).min(BURST_REPLICAS);
        } else if active.len() > replicas {
            let n = (active.len() - replicas).min(BURST_REPLICAS);
            let mut ordered = active.clone();
            ordered.sort_by(|a, b| podcontrol::deletion_order(a, b));
            out.delete = ordered
                .iter()
                .take(n)
                .map(|p| p.metadata.name.clone().unwrap_or_default())
                .collect();
        }
    }

    let template_labels = spec
        .and_then(|s| s.template.as_ref())
        .and_then(|t| t.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let mut status = ReplicaSetStatus {
        replicas: active.len() as i32,
        fully_labeled_replicas: Some(0),
        ready_replicas: Some(0),
        available_replicas: Some(0),
        observed_generation: rs.metadata.generation,
        conditions: rs.status.as_ref().and_then(|s| s.conditions.clone()),
        terminating_replicas: None,
    };
    let mut requeue: Option<Duration> = None;
    for p in &active {
        let labels = p.metadata.labels.as_ref();
        if template_labels
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
        {
            *status.fully_labeled_replicas.get_or_insert(0) += 1;
        }
        if podcontrol::is_ready(p) {
            *status.ready_replicas.get_or_insert(0) += 1;
        }
        match podcontrol::availability(p, min_ready, now) {
            Ok(()) => *status.available_replicas.get_or_insert(0) += 1,
            Err(Some(d)) => requeue = Some(requeue.map_or(d, |r| r.min(d))),
            Err(None) => {}
        }
    }
    out.status = status;
    out.requeue_after = requeue.map(|d| d + Duration::from_secs(1));
    out
}

fn is_pod_of_namespace(pod: &Pod, rs: &ReplicaSet) -> bool {
    pod.metadata.namespace == rs.metadata.namespace
}

/// The pod the ReplicaSet creates from its template: labels and annotations of the template,
/// `generateName: <rs>-`, and a controller reference to the ReplicaSet.
pub fn pod_from_template(rs: &ReplicaSet) -> Pod {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .unwrap_or_default();
    let tm = template.metadata.unwrap_or_default();
    Pod {
        metadata: ObjectMeta {
            generate_name: Some(format!(
                "{}-",
                rs.metadata.name.as_deref().unwrap_or("replicaset")
            )),
            namespace: rs.metadata.namespace.clone(),
            labels: tm.labels,
            annotations: tm.annotations,
            finalizers: tm.finalizers,
            owner_references: Some(vec![podcontrol::controller_ref(
                "apps/v1",
                "ReplicaSet",
                &rs.metadata,
            )]),
            ..Default::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// The `ReplicaFailure` condition type.
pub const REPLICA_FAILURE: &str = "ReplicaFailure";

/// Upstream `calculateStatus`'s handling of `ReplicaFailure`: a failed sync (`failure` is the
/// error's message; `diff` is active pods minus desired replicas) adds the condition when it is
/// absent (reason `FailedCreate` when pods were missing, `FailedDelete` when there were too
/// many); a sync without error removes it.
pub fn replica_failure(
    conditions: Option<Vec<ReplicaSetCondition>>,
    failure: Option<&str>,
    diff: i64,
    now: jiff::Timestamp,
) -> Option<Vec<ReplicaSetCondition>> {
    let mut conds = conditions.unwrap_or_default();
    let present = conds.iter().any(|c| c.type_ == REPLICA_FAILURE);
    match failure {
        Some(message) if !present => {
            let reason = match diff.cmp(&0) {
                std::cmp::Ordering::Less => "FailedCreate",
                std::cmp::Ordering::Greater => "FailedDelete",
                std::cmp::Ordering::Equal => "",
            };
            conds.push(ReplicaSetCondition {
                type_: REPLICA_FAILURE.into(),
                status: "True".into(),
                reason: (!reason.is_empty()).then(|| reason.to_string()),
                message: Some(message.to_string()),
                last_transition_time: Some(Time(now)),
            });
        }
        None if present => conds.retain(|c| c.type_ != REPLICA_FAILURE),
        _ => {}
    }
    (!conds.is_empty()).then_some(conds)
}

/// The message of an API error as upstream prints a `StatusError` (the Status message).
fn error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

fn status_differs(a: Option<&ReplicaSetStatus>, b: &ReplicaSetStatus) -> bool {
    let Some(a) = a else { return true };
    let z = |v: Option<i32>| v.unwrap_or(0);
    a.replicas != b.replicas
        || z(a.fully_labeled_replicas) != z(b.fully_labeled_replicas)
        || z(a.ready_replicas) != z(b.ready_replicas)
        || z(a.available_replicas) != z(b.available_replicas)
        || a.observed_generation != b.observed_generation
        || a.conditions.as_deref().unwrap_or_default()
            != b.conditions.as_deref().unwrap_or_default()
}

struct Ctx {
    client: kube::Client,
    pods: Store<Pod>,
    expectations: Expectations,
    recorder: Recorder,
}

fn key(rs: &ReplicaSet) -> String {
    format!(
        "{}/{}",
        rs.metadata.namespace.as_deref().unwrap_or_default(),
        rs.metadata.name.as_deref().unwrap_or_default()
    )
}

async fn reconcile(rs: Arc<ReplicaSet>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.pods
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let ns = rs.metadata.namespace.clone().unwrap_or_default();
    let key = key(&rs);
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state()
        .into_iter()
        .filter(|p| p.metadata.namespace.as_deref() == Some(&ns))
        .collect();
    let by_name: HashMap<&str, &Pod> = pods
        .iter()
        .filter_map(|p| Some((p.metadata.name.as_deref()?, &**p)))
        .collect();
    let manage = ctx.expectations.satisfied(
        &key,
        |n| by_name.contains_key(n),
        |n| {
            by_name
                .get(n)
                .is_some_and(|p| p.metadata.deletion_timestamp.is_none())
        },
    );
    let now = jiff::Timestamp::now();
    let mut plan = plan(&rs, &pods, now, manage);
    let desired = i64::from(
        rs.spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0),
    );
    let diff = i64::from(plan.status.replicas) - desired;
    let pod_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let rs_ref = podcontrol::object_reference("apps/v1", "ReplicaSet", &rs.metadata);

    // Adopt and release by patching the pods' ownerReferences.
    let owner = podcontrol::controller_ref("apps/v1", "ReplicaSet", &rs.metadata);
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let patches: Vec<(String, serde_json::Value)> = plan
        .adopt
        .iter()
        .filter_map(|n| {
            let p = by_name.get(n.as_str())?;
            let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
            refs.push(owner.clone());
            Some((
                n.clone(),
                json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}}),
            ))
        })
        .chain(plan.release.iter().filter_map(|n| {
            let p = by_name.get(n.as_str())?;
            let refs: Vec<_> = p
                .metadata
                .owner_references
                .clone()
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.uid != uid)
                .collect();
            Some((
                n.clone(),
                json!({"metadata": {"ownerReferences": refs, "uid": p.metadata.uid}}),
            ))
        }))
        .collect();
    let results: Vec<_> = stream::iter(patches)
        .map(|(n, body)| {
            let api = pod_api.clone();
            async move {
                (
                    n.clone(),
                    api.patch(&n, &PatchParams::default(), &Patch::Merge(&body))
                        .await,
                )
            }
        })
        .buffer_unordered(MAX_IN_FLIGHT)
        .collect()
        .await;
    for (n, r) in results {
        if let Err(e) = r {
            tracing::debug!(pod = %n, error = %e, "adopting/releasing a pod failed");
        }
    }

    if plan.create > 0 {
        let template = pod_from_template(&rs);
        for size in podcontrol::slow_start_batches(plan.create) {
            let created: Vec<Result<Pod, kube::Error>> = stream::iter(0..size)
                .map(|_| {
                    let api = pod_api.clone();
                    let t = template.clone();
                    async move { api.create(&PostParams::default(), &t).await }
                })
                .buffer_unordered(MAX_IN_FLIGHT)
                .collect()
                .await;
            let mut names = Vec::new();
            let mut failure = None;
            let mut failed = 0;
            for r in created {
                match r {
                    Ok(p) => names.push(p.metadata.name.unwrap_or_default()),
                    Err(e) => {
                        failed += 1;
                        failure = Some(e);
                    }
                }
            }
            for n in &names {
                ctx.recorder.event(
                    rs_ref.clone(),
                    "Normal",
                    "SuccessfulCreate",
                    format!("Created pod: {n}"),
                );
            }
            ctx.expectations.expect_adds(&key, names);
            if let Some(e) = failure {
                let message = error_message(&e);
                ctx.recorder.event(
                    rs_ref.clone(),
                    "Warning",
                    "FailedCreate",
                    format!("Error creating: {message}"),
                );
                plan.status.conditions =
                    replica_failure(plan.status.conditions.take(), Some(&message), diff, now);
                // The error makes the applier retry with backoff.
                write_status(&ctx, &rs, &plan).await?;
                return Err(Error::CreatePods { failed, source: e });
            }
        }
    }

    let mut delete_failure = None;
    if !plan.delete.is_empty() {
        ctx.expectations
            .expect_deletes(&key, plan.delete.iter().cloned());
        let results: Vec<(String, Result<_, kube::Error>)> = stream::iter(plan.delete.clone())
            .map(|n| {
                let api = pod_api.clone();
                async move { (n.clone(), api.delete(&n, &DeleteParams::default()).await) }
            })
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        for (n, r) in results {
            match r {
                Ok(_) => ctx.recorder.event(
                    rs_ref.clone(),
                    "Normal",
                    "SuccessfulDelete",
                    format!("Deleted pod: {n}"),
                ),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    let message = error_message(&e);
                    ctx.recorder.event(
                        rs_ref.clone(),
                        "Warning",
                        "FailedDelete",
                        format!("Error deleting pod {n}: {message}"),
                    );
                    delete_failure = Some(message);
                }
            }
        }
    }

    plan.status.conditions = replica_failure(
        plan.status.conditions.take(),
        delete_failure.as_deref(),
        diff,
        now,
    );
    write_status(&ctx, &rs, &plan).await?;
    if delete_failure.is_some() {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    Ok(match plan.requeue_after {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

async fn write_status(ctx: &Ctx, rs: &ReplicaSet, plan: &Plan) -> Result<(), Error> {
    if !status_differs(rs.status.as_ref(), &plan.status) {
        return Ok(());
    }
    let api: Api<ReplicaSet> = Api::namespaced(
        ctx.client.clone(),
        rs.metadata.namespace.as_deref().unwrap_or_default(),
    );
    let mut status = serde_json::to_value(&plan.status).unwrap_or_default();
    // A merge patch keeps a list it does not mention: say null to drop the last condition.
    if plan.status.conditions.is_none()
        && let Some(obj) = status.as_object_mut()
    {
        obj.insert("conditions".into(), serde_json::Value::Null);
    }
    let body = json!({ "status": status });
    match api
        .patch_status(
            rs.metadata.name.as_deref().unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(&body),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn error_policy(_rs: Arc<ReplicaSet>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %err, "replicaset reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Run the ReplicaSet controller until `shutdown` completes.
pub async fn run(client: kube::Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    let rs_api: Api<ReplicaSet> = Api::all(client.clone());
    let pod_api: Api<Pod> = Api::all(client.clone());
    let (rs_reader, rs_writer) = reflector::store::<ReplicaSet>();
    let (pod_reader, pod_writer) = reflector::store::<Pod>();

    let rs_queue = reflector::reflector(rs_writer, watcher(rs_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .map_ok(|rs: ReplicaSet| ObjectRef::from_obj(&rs));
    let rs_lookup = rs_reader.clone();
    let pod_queue = reflector::reflector(pod_writer, watcher(pod_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .map_ok(move |pod: Pod| stream::iter(owners_of_pod(&pod, &rs_lookup).into_iter().map(Ok)))
        .try_flatten();
    let queue = stream::select(rs_queue.boxed(), pod_queue.boxed());

    let ctx = Arc::new(Ctx {
        client: client.clone(),
        pods: pod_reader,
        expectations: Expectations::default(),
        recorder: Recorder::new(client, "replicaset-controller"),
    });
    let work = applier(
        |rs, ctx| Box::pin(reconcile(rs, ctx)),
        error_policy,
        ctx,
        rs_reader,
        queue,
        ControllerConfig::default(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "replicaset controller");
        }
    });
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
}

/// The ReplicaSets a pod event concerns: its controller if that is a ReplicaSet, otherwise (an
/// orphan) every ReplicaSet of its namespace whose selector matches it.
fn owners_of_pod(pod: &Pod, rs_store: &Store<ReplicaSet>) -> Vec<ObjectRef<ReplicaSet>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(owner) = podcontrol::controller_of(&pod.metadata) {
        if owner.kind == "ReplicaSet" && owner.api_version.starts_with("apps/") {
            return vec![ObjectRef::new(&owner.name).within(ns)];
        }
        return Vec::new();
    }
    rs_store
        .state()
        .iter()
        .filter(|rs| rs.metadata.namespace.as_deref() == Some(ns))
        .filter(|rs| {
            rs.spec.as_ref().is_some_and(|s| {
                podcontrol::selector_matches(&s.selector, pod.metadata.labels.as_ref())
            })
        })
        .map(|rs| ObjectRef::from_obj(&**rs))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::ReplicaSetSpec;
    use k8s_openapi::api::core::v1::{PodCondition, PodSpec, PodStatus, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, OwnerReference, Time};
    use std::collections::BTreeMap;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn rs(replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                name: Some("web-abc".into()),
                namespace: Some("default".into()),
                uid: Some("rs-uid".into()),
                generation: Some(3),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: None,
                selector: LabelSelector {
                    match_labels: Some(labels(&[("app", "web")])),
                    match_expressions: None,
                },
                template: Some(PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels(&[("app", "web"), ("pod-template-hash", "abc")])),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec::default()),
                }),
            }),
            status: None,
        }
    }

    fn pod(
        name: &str,
        owner: Option<&str>,
        lbl: &[(&str, &str)],
        ready: bool,
        node: Option<&str>,
        created: i64,
    ) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(labels(lbl)),
                creation_timestamp: Some(Time(jiff::Timestamp::from_second(created).unwrap())),
                owner_references: owner.map(|u| {
                    vec![OwnerReference {
                        api_version: "apps/v1".into(),
                        kind: "ReplicaSet".into(),
                        name: "x".into(),
                        uid: u.into(),
                        controller: Some(true),
                        block_owner_deletion: Some(true),
                    }]
                }),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(String::from),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some(if node.is_some() { "Running" } else { "Pending" }.into()),
                conditions: ready.then(|| {
                    vec![PodCondition {
                        type_: "Ready".into(),
                        status: "True".into(),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
        })
    }

    const WEB: &[(&str, &str)] = &[("app", "web"), ("pod-template-hash", "abc")];

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(10_000).unwrap()
    }

    #[test]
    fn scales_up_from_nothing() {
        let p = plan(&rs(3), &[], now(), true);
        assert_eq!(p.create, 3);
        assert_eq!(p.status.replicas, 0);
        assert_eq!(p.status.observed_generation, Some(3));
    }

    #[test]
    fn no_manage_while_expectations_pending() {
        let p = plan(&rs(3), &[], now(), false);
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty());
    }

    #[test]
    fn scale_down_prefers_unready_then_newest() {
        let pods = vec![
            pod("ready-old", Some("rs-uid"), WEB, true, Some("n1"), 1),
            pod("ready-new", Some("rs-uid"), WEB, true, Some("n1"), 5),
            pod("unready", Some("rs-uid"), WEB, false, Some("n1"), 2),
            pod("unscheduled", Some("rs-uid"), WEB, false, None, 0),
        ];
        let p = plan(&rs(1), &pods, now(), true);
        assert_eq!(p.delete, ["unscheduled", "unready", "ready-new"]);
        assert_eq!(p.status.replicas, 4);
        assert_eq!(p.status.ready_replicas, Some(2));
        assert_eq!(p.status.available_replicas, Some(2));
    }

    #[test]
    fn adopts_orphans_and_releases_mismatched() {
        let pods = vec![
            pod("orphan", None, &[("app", "web")], true, Some("n"), 1),
            pod("other-owner", Some("other"), WEB, true, Some("n"), 1),
            pod(
                "relabelled",
                Some("rs-uid"),
                &[("app", "db")],
                true,
                Some("n"),
                1,
            ),
            pod("unrelated", None, &[("app", "db")], true, Some("n"), 1),
        ];
        let p = plan(&rs(2), &pods, now(), true);
        assert_eq!(p.adopt, ["orphan"]);
        assert_eq!(p.release, ["relabelled"]);
        assert_eq!(p.create, 1);
        assert_eq!(p.status.replicas, 1);
        // The adopted pod lacks the pod-template-hash label: not fully labelled.
        assert_eq!(p.status.fully_labeled_replicas, Some(0));
    }

    #[test]
    fn terminating_and_finished_pods_do_not_count() {
        let mut deleting = (*pod("deleting", Some("rs-uid"), WEB, true, Some("n"), 1)).clone();
        deleting.metadata.deletion_timestamp = Some(Time(now()));
        let mut done = (*pod("done", Some("rs-uid"), WEB, false, Some("n"), 1)).clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let p = plan(
            &rs(2),
            &[
                Arc::new(deleting),
                Arc::new(done),
                pod("ok", Some("rs-uid"), WEB, true, Some("n"), 1),
            ],
            now(),
            true,
        );
        assert_eq!(p.create, 1);
        assert_eq!(p.status.replicas, 1);
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut r = rs(1);
        r.spec.as_mut().unwrap().min_ready_seconds = Some(30);
        let mut p = (*pod("p", Some("rs-uid"), WEB, true, Some("n"), 1)).clone();
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(Time(jiff::Timestamp::from_second(9_990).unwrap()));
        let out = plan(&r, &[Arc::new(p)], now(), true);
        assert_eq!(out.status.ready_replicas, Some(1));
        assert_eq!(out.status.available_replicas, Some(0));
        assert_eq!(out.requeue_after, Some(Duration::from_secs(21)));
    }

    #[test]
    fn burst_is_capped() {
        assert_eq!(plan(&rs(2000), &[], now(), true).create, BURST_REPLICAS);
    }

    #[test]
    fn template_pod_has_owner_and_labels() {
        let p = pod_from_template(&rs(1));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-abc-"));
        assert_eq!(
            p.metadata
                .labels
                .unwrap()
                .get("pod-template-hash")
                .map(String::as_str),
            Some("abc")
        );
        let o = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (
                o.kind.as_str(),
                o.uid.as_str(),
                o.controller,
                o.block_owner_deletion
            ),
            ("ReplicaSet", "rs-uid", Some(true), Some(true))
        );
    }

    #[test]
    fn replica_failure_is_added_once_and_removed_on_success() {
        let t0 = now();
        let other = ReplicaSetCondition {
            type_: "Other".into(),
            status: "True".into(),
            ..Default::default()
        };
        let c = replica_failure(Some(vec![other.clone()]), Some("quota exceeded"), -2, t0).unwrap();
        assert_eq!(c.len(), 2);
        let f = c.iter().find(|c| c.type_ == REPLICA_FAILURE).unwrap();
        assert_eq!(
            (f.status.as_str(), f.reason.as_deref(), f.message.as_deref()),
            ("True", Some("FailedCreate"), Some("quota exceeded"))
        );
        // A later failure keeps the condition as it was (upstream does not rewrite it).
        let again = replica_failure(Some(c.clone()), Some("another error"), -1, t0).unwrap();
        assert_eq!(again, c);
        // Too many pods and a failing delete: FailedDelete.
        let del = replica_failure(None, Some("boom"), 1, t0).unwrap();
        assert_eq!(del[0].reason.as_deref(), Some("FailedDelete"));
        // Success removes it and keeps the others; nothing left is None.
        assert_eq!(replica_failure(Some(c), None, 0, t0), Some(vec![other]));
        assert_eq!(replica_failure(Some(del), None, 0, t0), None);
        assert_eq!(replica_failure(None, None, 0, t0), None);
    }
}
