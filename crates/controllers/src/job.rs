//! The Job controller: runs pods to completion (parallelism, completions, backoffLimit,
//! activeDeadlineSeconds, ttlSecondsAfterFinished) and keeps `status` as upstream 1.33 does
//! (SuccessCriteriaMet / FailureTarget first, then Complete / Failed once no pod is running).
//!
//! [`plan`] is a pure function of (job, its pods, now); [`run`] is the thin kube-runtime shell.
//! Pod counting follows the legacy (pre-finalizer) tracking: succeeded/failed are counted from
//! the pods that exist, kept monotonic with the previous status, so the pod finalizer
//! `batch.kubernetes.io/job-tracking` is not used.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Api, DeleteParams, ListParams, PostParams, PropagationPolicy};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::events::{self, Recorder};

/// Label with the job's name (legacy spelling).
pub const LABEL_JOB_NAME: &str = "job-name";
/// Label with the job's uid (legacy spelling).
pub const LABEL_CONTROLLER_UID: &str = "controller-uid";
/// Label with the job's name.
pub const LABEL_BATCH_JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// Label with the job's uid.
pub const LABEL_BATCH_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";

/// Errors of the job controller.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// An API call failed.
    #[error("API call failed")]
    Api(#[from] kube::Error),
    /// The job has no uid or name yet.
    #[error("job without name or uid")]
    Incomplete,
}

/// Configuration of the job controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// Requeue interval for jobs that are running (safety net beside watches).
    pub resync: Duration,
    /// Base of the delay before replacing failed pods (upstream: 10 s, doubling, max 6 min).
    pub backoff: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            resync: Duration::from_secs(300),
            backoff: Duration::from_secs(10),
        }
    }
}

/// What the controller should do for one job, computed by [`plan`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Number of pods to create.
    pub create: i32,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// The status to write (None: unchanged).
    pub status: Option<JobStatus>,
    /// Delete the job itself (TTL after finished expired).
    pub delete_job: bool,
    /// Reconcile again after this long (deadline, TTL).
    pub requeue_after: Option<Duration>,
    /// Events to emit: (type, reason, message).
    pub events: Vec<(&'static str, String, String)>,
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

fn is_terminal(p: &Pod) -> bool {
    matches!(phase(p), "Succeeded" | "Failed")
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0)
}

fn created(p: &Pod) -> Option<jiff::Timestamp> {
    p.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

fn condition_true(status: &JobStatus, type_: &str) -> Option<JobCondition> {
    status
        .conditions
        .as_ref()
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_ && c.status == "True"))
        .cloned()
}

fn condition(type_: &str, reason: &str, message: &str, now: jiff::Timestamp) -> JobCondition {
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn push_condition(status: &mut JobStatus, c: JobCondition) {
    let cs = status.conditions.get_or_insert_with(Vec::new);
    if let Some(existing) = cs.iter_mut().find(|x| x.type_ == c.type_) {
        *existing = c;
    } else {
        cs.push(c);
    }
}

fn secs(n: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_secs(n)
}

fn until(now: jiff::Timestamp, t: jiff::Timestamp) -> Duration {
    let d = t.duration_since(now);
    Duration::from_millis(d.as_millis().clamp(0, i128::from(u32::MAX)) as u64)
        + Duration::from_millis(50)
}

/// True if the job finished (Complete or Failed).
pub fn finished(job: &Job) -> bool {
    job.status.as_ref().is_some_and(|s| {
        condition_true(s, "Complete").is_some() || condition_true(s, "Failed").is_some()
    })
}

/// When a pod finished: its containers' latest `finishedAt`, else its creation.
fn finished_at(p: &Pod) -> Option<jiff::Timestamp> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| {
            cs.iter()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
                .map(|t| t.0)
                .max()
        })
        .or_else(|| created(p))
}

/// Upstream's pod failure backoff: `base * 2^(failures since the last success - 1)`, capped at
/// six minutes, counted from the last failure. Returns when new pods may be created.
pub fn backoff_until(pods: &[Pod], base: Duration) -> Option<jiff::Timestamp> {
    if base.is_zero() {
        return None;
    }
    let last_success = pods
        .iter()
        .filter(|p| phase(p) == "Succeeded")
        .filter_map(finished_at)
        .max();
    let failures: Vec<jiff::Timestamp> = pods
        .iter()
        .filter(|p| phase(p) == "Failed")
        .filter_map(finished_at)
        .filter(|t| last_success.is_none_or(|s| *t > s))
        .collect();
    let last = failures.iter().max()?;
    let exp = u32::try_from(failures.len().saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    let delay = base.saturating_mul(1 << exp).min(Duration::from_secs(360));
    let delay = jiff::SignedDuration::try_from(delay).ok()?;
    Some(*last + delay)
}

/// The pure reconciler without pod failure backoff; see [`plan_with_backoff`].
pub fn plan(job: &Job, pods: &[Pod], now: jiff::Timestamp) -> Plan {
    plan_with_backoff(job, pods, now, Duration::ZERO)
}

/// The pure reconciler: given a job, the pods it controls, the time and the base of the pod
/// failure backoff, what to do.
pub fn plan_with_backoff(job: &Job, pods: &[Pod], now: jiff::Timestamp, backoff: Duration) -> Plan {
    let mut out = Plan::default();
    if job.metadata.deletion_timestamp.is_some() {
        return out;
    }
    let spec = job.spec.clone().unwrap_or_default();
    let old = job.status.clone().unwrap_or_default();
    let mut st = old.clone();

    let active: Vec<&Pod> = pods
        .iter()
        .filter(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_none())
        .collect();
    let terminating = pods
        .iter()
        .filter(|p| !is_terminal(p) && p.metadata.deletion_timestamp.is_some())
        .count() as i32;
    let succeeded_now = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i32;
    let failed_now = pods.iter().filter(|p| phase(p) == "Failed").count() as i32;
    let succeeded = succeeded_now.max(old.succeeded.unwrap_or(0));
    let failed = failed_now.max(old.failed.unwrap_or(0));
    st.succeeded = Some(succeeded);
    st.failed = Some(failed);
    st.active = Some(active.len() as i32);
    st.ready = Some(active.iter().filter(|p| is_ready(p)).count() as i32);
    st.terminating = Some(terminating);

    // Already finished: only TTL and cleanup of stragglers.
    if finished(job) {
        out.delete = active.iter().map(|p| p.name_any()).collect();
        let finish_time = old.completion_time.as_ref().map(|t| t.0).or_else(|| {
            condition_true(&old, "Failed").and_then(|c| c.last_transition_time.map(|t| t.0))
        });
        if let (Some(ttl), Some(fin)) = (spec.ttl_seconds_after_finished, finish_time) {
            let expire = fin + secs(i64::from(ttl));
            if now >= expire {
                out.delete_job = true;
            } else {
                out.requeue_after = Some(until(now, expire));
            }
        }
        if st != old {
            out.status = Some(st);
        }
        return out;
    }

    let suspended = spec.suspend.unwrap_or(false);
    if st.start_time.is_none() && !suspended {
        st.start_time = Some(Time(now));
    }

    // A decision already taken: wait for running pods to go, then the terminal condition.
    let pending_failure = condition_true(&old, "FailureTarget");
    let pending_success = condition_true(&old, "SuccessCriteriaMet");
    let mut target = pending_failure
        .clone()
        .map(|c| (true, c))
        .or(pending_success.map(|c| (false, c)));

    if target.is_none() {
        let backoff = spec.backoff_limit.unwrap_or(6);
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let restart_total: i32 = if on_failure {
            active.iter().map(|p| restarts(p)).sum()
        } else {
            0
        };
        let deadline = spec
            .active_deadline_seconds
            .zip(st.start_time.as_ref())
            .map(|(d, s)| s.0 + secs(d));
        let complete = match spec.completions {
            Some(c) => succeeded >= c,
            None => succeeded > 0 && active.is_empty(),
        };
        if failed + restart_total > backoff {
            target = Some((
                true,
                condition(
                    "FailureTarget",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    now,
                ),
            ));
        } else if deadline.is_some_and(|d| now >= d) {
            target = Some((
                true,
                condition(
                    "FailureTarget",
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                    now,
                ),
            ));
        } else if complete {
            target = Some((
                false,
                condition(
                    "SuccessCriteriaMet",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                    now,
                ),
            ));
        } else if let Some(d) = deadline {
            out.requeue_after = Some(until(now, d));
        }
        if let Some((_, c)) = &target {
            push_condition(&mut st, c.clone());
        }
    }

    if let Some((failure, c)) = target {
        out.delete = active.iter().map(|p| p.name_any()).collect();
        if active.is_empty() && terminating == 0 {
            let reason = c.reason.clone().unwrap_or_default();
            let message = c.message.clone().unwrap_or_default();
            if failure {
                push_condition(&mut st, condition("Failed", &reason, &message, now));
                out.events.push((events::WARNING, reason, message));
            } else {
                push_condition(&mut st, condition("Complete", &reason, &message, now));
                st.completion_time = Some(Time(now));
                out.events
                    .push((events::NORMAL, "Completed".into(), "Job completed".into()));
            }
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                if ttl <= 0 {
                    out.delete_job = true;
                } else {
                    out.requeue_after =
                        Some(Duration::from_secs(ttl as u64) + Duration::from_millis(50));
                }
            }
        }
        if st != old {
            out.status = Some(st);
        }
        return out;
    }

    // Running: converge the number of active pods.
    let parallelism = if suspended {
        0
    } else {
        spec.parallelism.unwrap_or(1).max(0)
    };
    let want = match spec.completions {
        Some(c) => (c - succeeded).clamp(0, parallelism),
        // Once one pod succeeded, no new pods; the running ones may finish.
        None if succeeded > 0 => (active.len() as i32).min(parallelism),
        None => parallelism,
    };
    let have = active.len() as i32;
    if have < want {
        match backoff_until(pods, backoff) {
            Some(t) if t > now => out.requeue_after = Some(until(now, t)),
            _ => out.create = want - have,
        }
    } else if have > want {
        let mut victims: Vec<&&Pod> = active.iter().collect();
        // Not yet scheduled first, then not ready, then newest.
        victims.sort_by_key(|p| {
            let scheduled = p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
            (scheduled, is_ready(p), std::cmp::Reverse(created(p)))
        });
        out.delete = victims
            .iter()
            .take((have - want) as usize)
            .map(|p| p.name_any())
            .collect();
    }
    if suspended && old.start_time.is_some() && have == 0 {
        st.start_time = None;
    }
    if st != old {
        out.status = Some(st);
    }
    out
}

/// The pod a job creates (without name: the server generates it from `generateName`).
pub fn pod_for(job: &Job) -> Option<Pod> {
    let name = job.metadata.name.clone()?;
    let uid = job.metadata.uid.clone()?;
    let spec = job.spec.as_ref()?;
    let tpl = &spec.template;
    let mut meta = tpl.metadata.clone().unwrap_or_default();
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(LABEL_JOB_NAME.into(), name.clone());
    labels.insert(LABEL_CONTROLLER_UID.into(), uid.clone());
    labels.insert(LABEL_BATCH_JOB_NAME.into(), name.clone());
    labels.insert(LABEL_BATCH_CONTROLLER_UID.into(), uid.clone());
    let pod_meta = ObjectMeta {
        generate_name: Some(format!("{name}-")),
        namespace: job.metadata.namespace.clone(),
        labels: meta.labels.take(),
        annotations: meta.annotations.take(),
        owner_references: Some(vec![OwnerReference {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            name,
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]),
        ..Default::default()
    };
    Some(Pod {
        metadata: pod_meta,
        spec: tpl.spec.clone(),
        status: None,
    })
}

struct Ctx {
    client: Client,
    recorder: Recorder,
    config: Config,
}

fn owned_by(p: &Pod, uid: &str) -> bool {
    p.metadata.owner_references.as_ref().is_some_and(|rs| {
        rs.iter()
            .any(|r| r.uid == uid && r.controller == Some(true))
    })
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Ctx>) -> Result<Action, JobError> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.metadata.uid.clone().ok_or(JobError::Incomplete)?;
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let pods_api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    // Read fresh state: the job (its status may have moved on) and its pods.
    let job = match jobs.get_opt(&job.name_any()).await? {
        Some(j) if j.metadata.uid.as_deref() == Some(uid.as_str()) => j,
        _ => return Ok(Action::await_change()),
    };
    let pods: Vec<Pod> = pods_api
        .list(&ListParams::default().labels(&format!("{LABEL_BATCH_CONTROLLER_UID}={uid}")))
        .await?
        .items
        .into_iter()
        .filter(|p| owned_by(p, &uid))
        .collect();
    let p = plan_with_backoff(&job, &pods, jiff::Timestamp::now(), ctx.config.backoff);
    let jref = events::object_ref(&job);

    if let Some(st) = &p.status {
        let mut j = job.clone();
        j.status = Some(st.clone());
        jobs.replace_status(&job.name_any(), &PostParams::default(), &j)
            .await?;
    }
    for name in &p.delete {
        match pods_api.delete(name, &DeleteParams::background()).await {
            Ok(_) => {
                ctx.recorder
                    .publish(
                        &jref,
                        events::NORMAL,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {name}"),
                    )
                    .await
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if p.create > 0
        && let Some(pod) = pod_for(&job)
    {
        for _ in 0..p.create {
            match pods_api.create(&PostParams::default(), &pod).await {
                Ok(created) => {
                    ctx.recorder
                        .publish(
                            &jref,
                            events::NORMAL,
                            "SuccessfulCreate",
                            &format!("Created pod: {}", created.name_any()),
                        )
                        .await
                }
                Err(e) => {
                    ctx.recorder
                        .publish(
                            &jref,
                            events::WARNING,
                            "FailedCreate",
                            &format!("Error creating: {e}"),
                        )
                        .await;
                    return Err(e.into());
                }
            }
        }
    }
    for (t, reason, msg) in &p.events {
        ctx.recorder.publish(&jref, t, reason, msg).await;
    }
    if p.delete_job {
        match jobs
            .delete(
                &job.name_any(),
                &DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Background),
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(uid),
                        resource_version: None,
                    }),
                    ..Default::default()
                },
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(
        p.requeue_after
            .unwrap_or(ctx.config.resync)
            .min(ctx.config.resync),
    ))
}

fn error_policy(_job: Arc<Job>, err: &JobError, _ctx: Arc<Ctx>) -> Action {
    tracing::debug!(error = %err, "job reconcile failed; retrying");
    Action::requeue(Duration::from_millis(500))
}

/// Runs the job controller until the watch streams end (they normally never do).
pub async fn run(client: Client, config: Config) {
    let jobs: Api<Job> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), "job-controller"),
        client,
        config,
    });
    Controller::new(jobs, watcher::Config::default())
        .owns(
            pods,
            watcher::Config::default().labels(LABEL_BATCH_CONTROLLER_UID),
        )
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::batch::v1::JobSpec;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus, PodTemplateSpec};

    fn t(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn job(completions: Option<i32>, parallelism: i32) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("pi".into()),
                namespace: Some("default".into()),
                uid: Some("u1".into()),
                ..Default::default()
            },
            spec: Some(JobSpec {
                completions,
                parallelism: Some(parallelism),
                template: PodTemplateSpec {
                    metadata: None,
                    spec: Some(PodSpec {
                        restart_policy: Some("Never".into()),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pod(name: &str, phase: &str, created_at: i64) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                creation_timestamp: Some(Time(t(created_at))),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
        }
    }

    fn with_status(mut j: Job, now: jiff::Timestamp, pods: &[Pod]) -> Job {
        if let Some(s) = plan(&j, pods, now).status {
            j.status = Some(s);
        }
        j
    }

    #[test]
    fn starts_parallelism_pods() {
        let p = plan(&job(Some(3), 2), &[], t(0));
        assert_eq!(p.create, 2);
        let st = p.status.unwrap();
        assert_eq!(st.start_time, Some(Time(t(0))));
        assert_eq!(st.active, Some(0));
    }

    #[test]
    fn creates_only_what_remains() {
        let j = with_status(job(Some(3), 2), t(0), &[]);
        let pods = [
            pod("a", "Succeeded", 0),
            pod("b", "Succeeded", 0),
            pod("c", "Running", 1),
        ];
        let p = plan(&j, &pods, t(5));
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty());
        let pods = [pod("a", "Succeeded", 0), pod("b", "Running", 0)];
        assert_eq!(plan(&j, &pods, t(5)).create, 1);
    }

    #[test]
    fn completes_in_two_steps() {
        let j = with_status(job(Some(3), 2), t(0), &[]);
        let pods = [
            pod("a", "Succeeded", 0),
            pod("b", "Succeeded", 0),
            pod("c", "Succeeded", 1),
        ];
        let p = plan(&j, &pods, t(9));
        let st = p.status.clone().unwrap();
        assert!(condition_true(&st, "SuccessCriteriaMet").is_some());
        assert!(condition_true(&st, "Complete").is_some());
        assert_eq!(st.succeeded, Some(3));
        assert_eq!(st.completion_time, Some(Time(t(9))));
        // While a pod still runs, only SuccessCriteriaMet.
        let mut pods2 = pods.to_vec();
        pods2[0].metadata.deletion_timestamp = None;
        pods2.push(pod("d", "Running", 2));
        let p2 = plan(&j, &pods2, t(9));
        let st2 = p2.status.unwrap();
        assert!(condition_true(&st2, "SuccessCriteriaMet").is_some());
        assert!(condition_true(&st2, "Complete").is_none());
        assert_eq!(p2.delete, vec!["d".to_string()]);
    }

    #[test]
    fn backoff_limit_exceeded() {
        let mut j = job(Some(3), 1);
        j.spec.as_mut().unwrap().backoff_limit = Some(1);
        let j = with_status(j, t(0), &[]);
        let pods = [pod("a", "Failed", 0)];
        let p = plan(&j, &pods, t(1));
        assert_eq!(p.create, 1);
        let pods = [pod("a", "Failed", 0), pod("b", "Failed", 1)];
        let p = plan(&j, &pods, t(2));
        let st = p.status.unwrap();
        let f = condition_true(&st, "Failed").unwrap();
        assert_eq!(f.reason.as_deref(), Some("BackoffLimitExceeded"));
        assert!(condition_true(&st, "FailureTarget").is_some());
        assert_eq!(st.failed, Some(2));
        assert_eq!(p.create, 0);
    }

    #[test]
    fn on_failure_counts_restarts() {
        let mut j = job(Some(1), 1);
        let spec = j.spec.as_mut().unwrap();
        spec.backoff_limit = Some(2);
        spec.template.spec.as_mut().unwrap().restart_policy = Some("OnFailure".into());
        let j = with_status(j, t(0), &[]);
        let mut p = pod("a", "Running", 0);
        p.status.as_mut().unwrap().container_statuses =
            Some(vec![k8s_openapi::api::core::v1::ContainerStatus {
                restart_count: 3,
                ..Default::default()
            }]);
        let out = plan(&j, &[p], t(1));
        assert_eq!(out.delete, vec!["a".to_string()]);
        assert!(condition_true(&out.status.unwrap(), "FailureTarget").is_some());
    }

    #[test]
    fn deadline_exceeded_and_requeue() {
        let mut j = job(Some(1), 1);
        j.spec.as_mut().unwrap().active_deadline_seconds = Some(10);
        let j = with_status(j, t(0), &[]);
        let pods = [pod("a", "Running", 0)];
        let p = plan(&j, &pods, t(3));
        assert!(p.requeue_after.unwrap() >= Duration::from_secs(7));
        let p = plan(&j, &pods, t(11));
        let st = p.status.unwrap();
        assert_eq!(
            condition_true(&st, "FailureTarget")
                .unwrap()
                .reason
                .as_deref(),
            Some("DeadlineExceeded")
        );
        assert_eq!(p.delete, vec!["a".to_string()]);
    }

    #[test]
    fn ttl_after_finished() {
        let mut j = job(Some(1), 1);
        j.spec.as_mut().unwrap().ttl_seconds_after_finished = Some(5);
        let j = with_status(j, t(0), &[]);
        let pods = [pod("a", "Succeeded", 0)];
        let j = with_status(j, t(1), &pods);
        assert!(finished(&j));
        let p = plan(&j, &pods, t(3));
        assert!(!p.delete_job);
        assert!(p.requeue_after.unwrap() >= Duration::from_secs(3));
        assert!(plan(&j, &pods, t(6)).delete_job);
    }

    #[test]
    fn no_completions_finishes_on_first_success() {
        let j = with_status(job(None, 2), t(0), &[]);
        let pods = [pod("a", "Succeeded", 0), pod("b", "Running", 0)];
        let p = plan(&j, &pods, t(1));
        assert_eq!(p.create, 0);
        assert!(p.delete.is_empty());
        let pods = [pod("a", "Succeeded", 0), pod("b", "Succeeded", 0)];
        assert!(condition_true(&plan(&j, &pods, t(2)).status.unwrap(), "Complete").is_some());
    }

    #[test]
    fn scale_down_prefers_newest() {
        let mut j = with_status(job(Some(10), 3), t(0), &[]);
        j.spec.as_mut().unwrap().parallelism = Some(1);
        let pods = [
            pod("old", "Running", 0),
            pod("mid", "Running", 5),
            pod("new", "Running", 9),
        ];
        let mut d = plan(&j, &pods, t(10)).delete;
        d.sort();
        assert_eq!(d, vec!["mid".to_string(), "new".to_string()]);
    }

    #[test]
    fn failure_backoff_delays_replacements() {
        let j = with_status(job(Some(3), 1), t(0), &[]);
        let pods = [pod("a", "Failed", 10)];
        let p = plan_with_backoff(&j, &pods, t(12), Duration::from_secs(10));
        assert_eq!(p.create, 0);
        assert!(p.requeue_after.unwrap() >= Duration::from_secs(8));
        assert_eq!(
            plan_with_backoff(&j, &pods, t(20), Duration::from_secs(10)).create,
            1
        );
        // Two failures: 20 s.
        let pods = [pod("a", "Failed", 10), pod("b", "Failed", 20)];
        assert_eq!(
            plan_with_backoff(&j, &pods, t(39), Duration::from_secs(10)).create,
            0
        );
        assert_eq!(
            plan_with_backoff(&j, &pods, t(40), Duration::from_secs(10)).create,
            1
        );
        // A later success resets it.
        let pods = [pod("a", "Failed", 10), pod("s", "Succeeded", 30)];
        assert_eq!(
            plan_with_backoff(&j, &pods, t(31), Duration::from_secs(10)).create,
            1
        );
    }

    #[test]
    fn pod_template_labels_and_owner() {
        let p = pod_for(&job(Some(1), 1)).unwrap();
        let l = p.metadata.labels.unwrap();
        assert_eq!(l.get(LABEL_JOB_NAME).map(String::as_str), Some("pi"));
        assert_eq!(
            l.get(LABEL_BATCH_CONTROLLER_UID).map(String::as_str),
            Some("u1")
        );
        let o = &p.metadata.owner_references.unwrap()[0];
        assert_eq!((o.kind.as_str(), o.controller), ("Job", Some(true)));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("pi-"));
    }
}
