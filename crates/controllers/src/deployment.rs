//! The Deployment controller: owns one ReplicaSet per pod template (`<deployment>-<pod-template-hash>`),
//! rolls from old ReplicaSets to the new one (RollingUpdate with maxSurge/maxUnavailable, or
//! Recreate), honours `paused`, `revisionHistoryLimit` and `progressDeadlineSeconds`, and writes the
//! status and conditions `kubectl rollout status` and `kubectl get deploy` read.
//!
//! [`plan`] is the decision, a pure function of the Deployment and the ReplicaSets of its namespace,
//! following upstream's `sync`/`rolloutRolling`/`rolloutRecreate` one step at a time; [`run`] is the
//! kube-runtime shell that carries a plan out. Pods are the ReplicaSet controller's business.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, applier};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use crate::podcontrol::{self, POD_TEMPLATE_HASH_LABEL, Recorder};

/// Annotation holding the revision of a ReplicaSet and of its Deployment.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// Annotation with the revisions a ReplicaSet had before (after rollbacks).
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
/// Desired replicas of the Deployment, written on its ReplicaSets.
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
/// Replicas + maxSurge, written on its ReplicaSets.
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Errors of the Deployment controller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("API request failed")]
    Kube(#[from] kube::Error),
    #[error("the ReplicaSet cache stopped")]
    CacheGone,
}

/// A change to an existing ReplicaSet.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RsUpdate {
    pub name: String,
    /// New `spec.replicas`, with the old value (for the event).
    pub replicas: Option<(i32, i32)>,
    /// Annotations to set (merged).
    pub annotations: BTreeMap<String, String>,
    /// New `spec.minReadySeconds`.
    pub min_ready_seconds: Option<i32>,
}

/// What to do for one Deployment.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Orphan ReplicaSets (names) matching the selector, to adopt.
    pub adopt: Vec<String>,
    /// Owned ReplicaSets (names) that no longer match the selector, to release.
    pub release: Vec<String>,
    /// A new ReplicaSet to create.
    pub create: Option<ReplicaSet>,
    /// Changes to existing ReplicaSets.
    pub update: Vec<RsUpdate>,
    /// Old ReplicaSets to delete (revisionHistoryLimit).
    pub delete: Vec<String>,
    /// The Deployment's revision annotation, when it must change.
    pub revision: Option<String>,
    /// The status the Deployment should have.
    pub status: DeploymentStatus,
    /// Reconcile again after this long (progress deadline).
    pub requeue_after: Option<Duration>,
    /// Events (reason, message) to record on the Deployment.
    pub events: Vec<(String, String)>,
}

/// Resolve an int-or-percent against `total` (upstream `GetScaledValueFromIntOrPercent`).
pub fn scaled_value(v: Option<&IntOrString>, default: &str, total: i32, round_up: bool) -> i32 {
    let s = match v {
        Some(IntOrString::Int(i)) => return *i,
        Some(IntOrString::String(s)) => s.as_str(),
        None => default,
    };
    match s.strip_suffix('%') {
        Some(p) => {
            let p: i64 = p.trim().parse().unwrap_or(0);
            let x = p * i64::from(total);
            (if round_up {
                (x + 99).div_euclid(100)
            } else {
                x.div_euclid(100)
            }) as i32
        }
        None => s.trim().parse().unwrap_or(0),
    }
}

fn is_rolling(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        .unwrap_or("RollingUpdate")
        != "Recreate"
}

fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0)
}

/// maxSurge and maxUnavailable as numbers (upstream `ResolveFenceposts`: surge rounds up,
/// unavailable rounds down, and both zero means unavailable 1).
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let ru = d
        .spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.rolling_update.as_ref());
    let replicas = replicas_of(d);
    let surge = scaled_value(ru.and_then(|r| r.max_surge.as_ref()), "25%", replicas, true).max(0);
    let mut unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref()),
        "25%",
        replicas,
        false,
    )
    .max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable)
}

/// Upstream `MaxUnavailable`: 0 for Recreate or no replicas, capped at replicas.
pub fn max_unavailable(d: &Deployment) -> i32 {
    let replicas = replicas_of(d);
    if !is_rolling(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

/// The revision annotation of a ReplicaSet (0 when absent or unparsable).
pub fn revision_of(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether a ReplicaSet's template is the Deployment's template, ignoring the pod-template-hash label.
pub fn template_matches(rs_template: Option<&PodTemplateSpec>, template: &PodTemplateSpec) -> bool {
    let Some(t) = rs_template else { return false };
    let mut t = t.clone();
    if let Some(l) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        l.remove(POD_TEMPLATE_HASH_LABEL);
    }
    let normalize = |t: &PodTemplateSpec| {
        let mut v = serde_json::to_value(t).unwrap_or_default();
        // An empty map and an absent one are the same template.
        if let Some(m) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            m.retain(|_, x| !(x.is_null() || x.as_object().is_some_and(|o| o.is_empty())));
        }
        v
    };
    normalize(&t) == normalize(template)
}

/// A working view of one ReplicaSet while planning.
#[derive(Debug, Clone)]
struct View {
    rs: Arc<ReplicaSet>,
    name: String,
    spec: i32,
    created: bool,
}

impl View {
    fn status_replicas(&self) -> i32 {
        self.rs.status.as_ref().map_or(0, |s| s.replicas)
    }
    fn available(&self) -> i32 {
        self.rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
    }
    /// Available pods the ReplicaSet will keep: a ReplicaSet whose spec was just lowered still
    /// reports the pods it is about to delete.
    fn kept_available(&self) -> i32 {
        self.available().min(self.spec)
    }
    fn ready(&self) -> i32 {
        self.rs
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    }
    fn created_at(&self) -> Option<jiff::Timestamp> {
        self.rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
    }
}

struct Planner<'a> {
    d: &'a Deployment,
    plan: Plan,
}

impl Planner<'_> {
    /// Scales the ReplicaSet `views[i]` to `to` and records upstream's "Scaled up/down replica
    /// set" event; false when it already has `to` replicas.
    fn scale_view(&mut self, views: &mut [View], i: usize, to: i32) -> bool {
        let mut v = views[i].clone();
        let (from, name) = (v.spec, v.name.clone());
        if !self.scale(&mut v, to) {
            return false;
        }
        views[i] = v;
        let dir = if to > from { "up" } else { "down" };
        self.plan.events.push((
            "ScalingReplicaSet".into(),
            format!("Scaled {dir} replica set {name} from {from} to {to}"),
        ));
        true
    }

    fn scale(&mut self, v: &mut View, to: i32) -> bool {
        if v.spec == to {
            return false;
        }
        if v.created {
            if let Some(rs) = self.plan.create.as_mut().and_then(|r| r.spec.as_mut()) {
                rs.replicas = Some(to);
            }
            v.spec = to;
            return true;
        }
        let from = v.spec;
        let (surge, _) = fenceposts(self.d);
        let desired = replicas_of(self.d);
        let max = desired + if is_rolling(self.d) { surge } else { 0 };
        let u = self.update_for(&v.name);
        u.replicas = Some((from, to));
        u.annotations
            .insert(DESIRED_REPLICAS_ANNOTATION.into(), desired.to_string());
        u.annotations
            .insert(MAX_REPLICAS_ANNOTATION.into(), max.to_string());
        v.spec = to;
        true
    }

    fn update_for(&mut self, name: &str) -> &mut RsUpdate {
        let i = match self.plan.update.iter().position(|u| u.name == name) {
            Some(i) => i,
            None => {
                self.plan.update.push(RsUpdate {
                    name: name.to_string(),
                    ..Default::default()
                });
                self.plan.update.len() - 1
            }
        };
        &mut self.plan.update[i]
    }
}

fn condition<'a>(conds: &'a [DeploymentCondition], type_: &str) -> Option<&'a DeploymentCondition> {
    conds.iter().find(|c| c.type_ == type_)
}

/// Upstream `SetDeploymentCondition`: no change when status and reason are the same; the
/// transition time is kept when the status is the same.
fn set_condition(conds: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    if let Some(cur) = condition(conds, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

fn progress_deadline(d: &Deployment) -> Option<i32> {
    d.spec
        .as_ref()
        .and_then(|s| s.progress_deadline_seconds)
        .filter(|s| *s != i32::MAX)
}

/// Annotations the new ReplicaSet takes from its Deployment (upstream skips these).
fn copied_annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.metadata
        .annotations
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            ![
                LAST_APPLIED_ANNOTATION,
                REVISION_ANNOTATION,
                REVISION_HISTORY_ANNOTATION,
                DESIRED_REPLICAS_ANNOTATION,
                MAX_REPLICAS_ANNOTATION,
            ]
            .contains(&k.as_str())
        })
        .collect()
}

/// The ReplicaSet the Deployment creates for its current template.
pub fn new_replicaset(d: &Deployment, hash: &str, replicas: i32, revision: i64) -> ReplicaSet {
    let spec = d.spec.clone().unwrap_or_default();
    let mut template = spec.template.clone();
    let tm = template.metadata.get_or_insert_with(Default::default);
    tm.labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let labels = tm.labels.clone();
    let mut selector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(POD_TEMPLATE_HASH_LABEL.into(), hash.into());
    let mut annotations = copied_annotations(d);
    annotations.insert(REVISION_ANNOTATION.into(), revision.to_string());
    annotations.insert(
        DESIRED_REPLICAS_ANNOTATION.into(),
        replicas_of(d).to_string(),
    );
    let surge = if is_rolling(d) { fenceposts(d).0 } else { 0 };
    annotations.insert(
        MAX_REPLICAS_ANNOTATION.into(),
        (replicas_of(d) + surge).to_string(),
    );
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-{hash}",
                d.metadata.name.as_deref().unwrap_or("deployment")
            )),
            namespace: d.metadata.namespace.clone(),
            labels,
            annotations: Some(annotations),
            owner_references: Some(vec![podcontrol::controller_ref(
                "apps/v1",
                "Deployment",
                &d.metadata,
            )]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// Decide the next step for `d` given the ReplicaSets of its namespace.
pub fn plan(d: &Deployment, rss: &[Arc<ReplicaSet>], now: jiff::Timestamp) -> Plan {
    let mut p = Planner {
        d,
        plan: Plan::default(),
    };
    let uid = d.metadata.uid.as_deref().unwrap_or_default();
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = replicas_of(d);
    let deleting = d.metadata.deletion_timestamp.is_some();
    let old_status = d.status.clone().unwrap_or_default();
    let mut conds = old_status.conditions.clone().unwrap_or_default();
    let mut collision_count = old_status.collision_count;

    // Ownership.
    let mut owned: Vec<Arc<ReplicaSet>> = Vec::new();
    for rs in rss {
        if rs.metadata.namespace != d.metadata.namespace {
            continue;
        }
        let matches = podcontrol::selector_matches(&spec.selector, rs.metadata.labels.as_ref());
        match podcontrol::controller_of(&rs.metadata) {
            Some(r) if r.uid == uid => {
                if matches {
                    owned.push(rs.clone());
                } else if rs.metadata.deletion_timestamp.is_none() {
                    p.plan
                        .release
                        .push(rs.metadata.name.clone().unwrap_or_default());
                }
            }
            Some(_) => {}
            None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                p.plan
                    .adopt
                    .push(rs.metadata.name.clone().unwrap_or_default());
                owned.push(rs.clone());
            }
            None => {}
        }
    }
    owned.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            rs.metadata.name.clone(),
        )
    });

    let mut views: Vec<View> = owned
        .iter()
        .map(|rs| View {
            rs: rs.clone(),
            name: rs.metadata.name.clone().unwrap_or_default(),
            spec: rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
            created: false,
        })
        .collect();
    let mut new_idx = views.iter().position(|v| {
        template_matches(
            v.rs.spec.as_ref().and_then(|s| s.template.as_ref()),
            &spec.template,
        )
    });

    let has_deadline = progress_deadline(d).is_some();
    let paused = spec.paused.unwrap_or(false);

    // Paused/resumed condition (upstream checkPausedConditions).
    if has_deadline
        && condition(&conds, "Progressing").and_then(|c| c.reason.as_deref())
            != Some("ProgressDeadlineExceeded")
    {
        let paused_cond = condition(&conds, "Progressing").and_then(|c| c.reason.as_deref())
            == Some("DeploymentPaused");
        if paused && !paused_cond {
            set_condition(
                &mut conds,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentPaused",
                    "Deployment is paused".into(),
                    now,
                ),
            );
        } else if !paused && paused_cond {
            set_condition(
                &mut conds,
                new_condition(
                    "Progressing",
                    "Unknown",
                    "DeploymentResumed",
                    "Deployment is resumed".into(),
                    now,
                ),
            );
        }
    }

    // Revisions (upstream getNewReplicaSet / SetNewReplicaSetAnnotations).
    let max_old_revision = views
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != new_idx)
        .map(|(_, v)| revision_of(&v.rs.metadata))
        .max()
        .unwrap_or(0);
    let new_revision = max_old_revision + 1;
    if let Some(i) = new_idx {
        let v = &views[i];
        let mut want = copied_annotations(d);
        let cur_rev = revision_of(&v.rs.metadata);
        if cur_rev < new_revision {
            want.insert(REVISION_ANNOTATION.into(), new_revision.to_string());
            if cur_rev > 0 {
                let hist =
                    v.rs.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(REVISION_HISTORY_ANNOTATION))
                        .cloned();
                want.insert(
                    REVISION_HISTORY_ANNOTATION.into(),
                    match hist {
                        Some(h) if !h.is_empty() => format!("{h},{cur_rev}"),
                        _ => cur_rev.to_string(),
                    },
                );
            }
        }
        let have = v.rs.metadata.annotations.clone().unwrap_or_default();
        let missing: BTreeMap<String, String> = want
            .into_iter()
            .filter(|(k, val)| have.get(k) != Some(val))
            .collect();
        let name = v.name.clone();
        if !missing.is_empty() && !deleting {
            p.update_for(&name).annotations.extend(missing);
        }
        if v.rs.spec.as_ref().and_then(|s| s.min_ready_seconds) != spec.min_ready_seconds
            && !deleting
        {
            p.update_for(&name).min_ready_seconds = Some(spec.min_ready_seconds.unwrap_or(0));
        }
        let rev = revision_of(&v.rs.metadata).max(new_revision).to_string();
        if d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION_ANNOTATION))
            != Some(&rev)
            && !deleting
        {
            p.plan.revision = Some(rev);
        }
        if has_deadline && condition(&conds, "Progressing").is_none() {
            set_condition(
                &mut conds,
                new_condition(
                    "Progressing",
                    "True",
                    "FoundNewReplicaSet",
                    format!("Found new replica set \"{name}\""),
                    now,
                ),
            );
        }
    }

    let mut progressed_step = false;

    if deleting {
        // Only status while the Deployment is being deleted.
    } else if paused {
        // Scale only; no rollout progress (upstream sync()).
        let active: Vec<usize> = (0..views.len()).filter(|i| views[*i].spec > 0).collect();
        let target = match (active.as_slice(), new_idx) {
            ([only], _) => Some(*only),
            ([], Some(n)) => Some(n),
            ([], None) => views.len().checked_sub(1),
            _ => None,
        };
        if let Some(t) = target {
            let mut v = views[t].clone();
            p.scale(&mut v, replicas);
            views[t] = v;
        }
        cleanup(&mut p, &views, new_idx, spec.revision_history_limit);
    } else {
        // Create the new ReplicaSet if there is none (upstream getNewReplicaSet with createIfNotExisted).
        if new_idx.is_none() {
            let hash = podcontrol::template_hash(&spec.template, collision_count);
            let name = format!("{}-{hash}", d.metadata.name.as_deref().unwrap_or_default());
            if rss.iter().any(|rs| {
                rs.metadata.namespace == d.metadata.namespace
                    && rs.metadata.name.as_deref() == Some(&name)
            }) {
                // Hash collision with a ReplicaSet of another template: try the next hash.
                collision_count = Some(collision_count.unwrap_or(0) + 1);
                p.plan.requeue_after = Some(Duration::from_millis(10));
            } else {
                let initial = if is_rolling(d) {
                    let (surge, _) = fenceposts(d);
                    let current: i32 = views.iter().map(|v| v.spec).sum();
                    let max_total = replicas + surge;
                    if current >= max_total {
                        0
                    } else {
                        (max_total - current).min(replicas)
                    }
                } else {
                    // Recreate starts at 0 and scales up once the old pods are gone.
                    if views
                        .iter()
                        .all(|v| v.spec == 0 && v.status_replicas() == 0)
                    {
                        replicas
                    } else {
                        0
                    }
                };
                let rs = new_replicaset(d, &hash, initial, new_revision);
                p.plan.events.push((
                    "ScalingReplicaSet".into(),
                    format!("Scaled up replica set {name} from 0 to {initial}"),
                ));
                if has_deadline {
                    set_condition(
                        &mut conds,
                        new_condition(
                            "Progressing",
                            "True",
                            "NewReplicaSetCreated",
                            format!("Created new replica set \"{name}\""),
                            now,
                        ),
                    );
                }
                p.plan.revision = Some(new_revision.to_string());
                views.push(View {
                    rs: Arc::new(rs.clone()),
                    name,
                    spec: initial,
                    created: true,
                });
                p.plan.create = Some(rs);
                new_idx = Some(views.len() - 1);
                progressed_step = true;
            }
        }
        if let Some(ni) = new_idx {
            if is_rolling(d) {
                rolling(&mut p, &mut views, ni, &spec, progressed_step);
            } else {
                recreate(&mut p, &mut views, ni, replicas, &spec);
            }
        }
    }

    // Status (upstream calculateStatus + syncRolloutStatus).
    let sum = |f: &dyn Fn(&View) -> i32| views.iter().map(f).sum::<i32>();
    let available = sum(&|v| v.available());
    let total_spec = sum(&|v| v.spec);
    let new_view = new_idx.map(|i| views[i].clone());
    let mut status = DeploymentStatus {
        replicas: Some(sum(&|v| v.status_replicas())),
        updated_replicas: Some(new_view.as_ref().map_or(0, |v| v.status_replicas())),
        ready_replicas: Some(sum(&|v| v.ready())),
        available_replicas: Some(available),
        unavailable_replicas: Some((total_spec - available).max(0)),
        observed_generation: d.metadata.generation,
        collision_count,
        conditions: None,
        terminating_replicas: None,
    };
    if available >= replicas - max_unavailable(d) {
        set_condition(
            &mut conds,
            new_condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
                now,
            ),
        );
    } else {
        set_condition(
            &mut conds,
            new_condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
                now,
            ),
        );
    }
    if !has_deadline {
        conds.retain(|c| c.type_ != "Progressing");
    } else if !paused && !deleting {
        let cur = condition(&conds, "Progressing").cloned();
        let already_complete = status.replicas == status.updated_replicas
            && cur.as_ref().and_then(|c| c.reason.as_deref()) == Some("NewReplicaSetAvailable");
        let rs_name = new_view
            .as_ref()
            .map(|v| v.name.clone())
            .unwrap_or_default();
        let u = |o: Option<i32>| o.unwrap_or(0);
        let complete = u(status.updated_replicas) == replicas
            && u(status.replicas) == replicas
            && available == replicas
            && status.observed_generation >= d.metadata.generation;
        let progressing = u(status.updated_replicas) > u(old_status.updated_replicas)
            || u(status.replicas) - u(status.updated_replicas)
                < u(old_status.replicas) - u(old_status.updated_replicas)
            || u(status.ready_replicas) > u(old_status.ready_replicas)
            || available > u(old_status.available_replicas);
        if !already_complete {
            if complete && new_view.is_some() {
                let mut c = new_condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                    now,
                );
                if let Some(cur) = cur.as_ref().filter(|c| c.status == "True") {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                conds.retain(|x| x.type_ != "Progressing");
                conds.push(c);
            } else if progressing && new_view.is_some() {
                let mut c = new_condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{rs_name}\" is progressing."),
                    now,
                );
                if let Some(cur) = cur.as_ref().filter(|c| c.status == "True") {
                    c.last_transition_time = cur.last_transition_time.clone();
                }
                conds.retain(|x| x.type_ != "Progressing");
                conds.push(c);
            } else if let Some(cur) = cur.as_ref() {
                let reason = cur.reason.as_deref();
                if reason != Some("NewReplicaSetAvailable")
                    && reason != Some("ProgressDeadlineExceeded")
                {
                    let deadline = i64::from(progress_deadline(d).unwrap_or(600));
                    if let Some(from) = cur.last_update_time.as_ref().map(|t| t.0.as_second()) {
                        if from + deadline < now.as_second() {
                            set_condition(
                                &mut conds,
                                new_condition(
                                    "Progressing",
                                    "False",
                                    "ProgressDeadlineExceeded",
                                    format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                                    now,
                                ),
                            );
                        } else {
                            // Requeue when the deadline would pass (upstream requeueStuckDeployment).
                            let left = (from + deadline - now.as_second()).max(0) as u64 + 1;
                            let d = Duration::from_secs(left);
                            p.plan.requeue_after =
                                Some(p.plan.requeue_after.map_or(d, |r| r.min(d)));
                        }
                    }
                }
            }
        }
        // A rollout in progress with no progress in this step still needs its deadline checked.
        if let Some(c) = condition(&conds, "Progressing")
            && c.status == "True"
            && c.reason.as_deref() != Some("NewReplicaSetAvailable")
            && let Some(from) = c.last_update_time.as_ref().map(|t| t.0.as_second())
        {
            let deadline = i64::from(progress_deadline(d).unwrap_or(600));
            let left = (from + deadline - now.as_second()).max(0) as u64 + 1;
            let d = Duration::from_secs(left);
            p.plan.requeue_after = Some(p.plan.requeue_after.map_or(d, |r| r.min(d)));
        }
    }
    // The ReplicaSets' ReplicaFailure moves into the Deployment (upstream getReplicaFailures):
    // the new ReplicaSet's first, else an old one's; none removes it.
    let rs_failure = |rs: &ReplicaSet| {
        rs.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "ReplicaFailure"))
            .cloned()
    };
    let failure = new_view
        .as_ref()
        .and_then(|v| rs_failure(v.rs.as_ref()))
        .or_else(|| views.iter().find_map(|v| rs_failure(v.rs.as_ref())));
    match failure {
        Some(c) => set_condition(
            &mut conds,
            DeploymentCondition {
                type_: "ReplicaFailure".into(),
                status: c.status,
                reason: c.reason,
                message: c.message,
                last_update_time: c.last_transition_time.clone(),
                last_transition_time: c.last_transition_time,
            },
        ),
        None => conds.retain(|c| c.type_ != "ReplicaFailure"),
    }
    status.conditions = Some(conds);
    p.plan.status = status;
    let mut plan = p.plan;
    plan.update.retain(|u| {
        u.replicas.is_some() || !u.annotations.is_empty() || u.min_ready_seconds.is_some()
    });
    plan
}

/// Rolling update step (upstream rolloutRolling): scale the new ReplicaSet up within maxSurge,
/// else scale old ones down within maxUnavailable, else clean up.
fn rolling(
    p: &mut Planner<'_>,
    views: &mut [View],
    ni: usize,
    spec: &k8s_openapi::api::apps::v1::DeploymentSpec,
    already_stepped: bool,
) {
    let d = p.d;
    let replicas = replicas_of(d);
    if already_stepped {
        return;
    }
    // reconcileNewReplicaSet
    let new_spec = views[ni].spec;
    if new_spec != replicas {
        let target = if new_spec > replicas {
            replicas
        } else {
            let (surge, _) = fenceposts(d);
            let current: i32 = views.iter().map(|v| v.spec).sum();
            let max_total = replicas + surge;
            if current >= max_total {
                new_spec
            } else {
                new_spec + (max_total - current).min(replicas - new_spec)
            }
        };
        if p.scale_view(views, ni, target) {
            return;
        }
    }
    // reconcileOldReplicaSets
    let old: Vec<usize> = (0..views.len()).filter(|i| *i != ni).collect();
    let old_count: i32 = old.iter().map(|i| views[*i].spec).sum();
    if old_count > 0 {
        let all_count: i32 = views.iter().map(|v| v.spec).sum();
        let min_available = replicas - max_unavailable(d);
        let new_unavailable = views[ni].spec - views[ni].kept_available();
        let max_scaled_down = all_count - min_available - new_unavailable;
        let mut scaled = false;
        if max_scaled_down > 0 {
            // cleanupUnhealthyReplicas: old replica sets' unavailable pods first, oldest set first.
            let mut total = 0;
            for &i in &old {
                if total >= max_scaled_down {
                    break;
                }
                let v = &views[i];
                if v.spec == 0 || v.spec <= v.kept_available() {
                    continue;
                }
                let n = (max_scaled_down - total).min(v.spec - v.kept_available());
                let to = v.spec - n;
                p.scale_view(views, i, to);
                total += n;
                scaled = true;
            }
            // scaleDownOldReplicaSetsForRollingUpdate: as many available ones as minAvailable allows.
            let available: i32 = views.iter().map(|v| v.kept_available()).sum();
            if available > min_available {
                let want = available - min_available;
                let mut done = 0;
                for &i in &old {
                    if done >= want {
                        break;
                    }
                    let v = &views[i];
                    if v.spec == 0 {
                        continue;
                    }
                    let n = v.spec.min(want - done);
                    let to = v.spec - n;
                    p.scale_view(views, i, to);
                    done += n;
                    scaled = true;
                }
            }
        }
        if scaled {
            return;
        }
    }
    // Complete: clean up old replica sets beyond the history limit.
    let v = &views[ni];
    if v.spec == replicas
        && v.status_replicas() == replicas
        && v.available() == replicas
        && old
            .iter()
            .all(|i| views[*i].spec == 0 && views[*i].status_replicas() == 0)
    {
        cleanup(p, views, Some(ni), spec.revision_history_limit);
    }
}

/// Recreate step (upstream rolloutRecreate): old replica sets to zero, wait for their pods to go,
/// then the new one to full size.
fn recreate(
    p: &mut Planner<'_>,
    views: &mut [View],
    ni: usize,
    replicas: i32,
    spec: &k8s_openapi::api::apps::v1::DeploymentSpec,
) {
    let old: Vec<usize> = (0..views.len()).filter(|i| *i != ni).collect();
    let mut scaled = false;
    for &i in &old {
        if views[i].spec > 0 {
            p.scale_view(views, i, 0);
            scaled = true;
        }
    }
    if scaled {
        return;
    }
    if old.iter().any(|i| views[*i].status_replicas() > 0) {
        // Old pods still running: wait for the ReplicaSet controller.
        return;
    }
    if p.scale_view(views, ni, replicas) {
        return;
    }
    let v = &views[ni];
    if v.status_replicas() == replicas && v.available() == replicas {
        cleanup(p, views, Some(ni), spec.revision_history_limit);
    }
}

/// Upstream cleanupDeployment: delete the oldest revisions beyond revisionHistoryLimit among old
/// replica sets that are fully scaled down.
fn cleanup(p: &mut Planner<'_>, views: &[View], ni: Option<usize>, limit: Option<i32>) {
    let Some(limit) = limit else { return };
    let mut alive: Vec<&View> = (0..views.len())
        .filter(|i| Some(*i) != ni)
        .map(|i| &views[i])
        .filter(|v| v.rs.metadata.deletion_timestamp.is_none() && !v.created)
        .collect();
    let diff = alive.len() as i64 - i64::from(limit.max(0));
    if diff <= 0 {
        return;
    }
    alive.sort_by_key(|v| (revision_of(&v.rs.metadata), v.created_at()));
    for v in alive.into_iter().take(diff as usize) {
        let observed =
            v.rs.status
                .as_ref()
                .and_then(|s| s.observed_generation)
                .unwrap_or(0);
        if v.status_replicas() != 0
            || v.spec != 0
            || v.rs.metadata.generation.unwrap_or(0) > observed
        {
            continue;
        }
        p.plan.delete.push(v.name.clone());
    }
}

// ---------------------------------------------------------------------------------------------
// The kube-runtime shell.

struct Ctx {
    client: kube::Client,
    rss: Store<ReplicaSet>,
    /// ReplicaSets as this controller last wrote them, used until the cache catches up so that a
    /// reconcile right after a write does not act on the state before it.
    written: Mutex<HashMap<String, (Arc<ReplicaSet>, Instant)>>,
    recorder: Recorder,
}

fn rv(meta: &ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Ctx {
    fn remember(&self, rs: ReplicaSet) {
        if let Some(uid) = rs.metadata.uid.clone() {
            self.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(uid, (Arc::new(rs), Instant::now()));
        }
    }

    /// The ReplicaSets of `ns`: the cache, with this controller's own newer writes laid over it.
    fn replicasets(&self, ns: &str) -> Vec<Arc<ReplicaSet>> {
        let cached: Vec<Arc<ReplicaSet>> = self
            .rss
            .state()
            .into_iter()
            .filter(|r| r.metadata.namespace.as_deref() == Some(ns))
            .collect();
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        written.retain(|_, (_, at)| at.elapsed() < Duration::from_secs(60));
        let mut out = Vec::with_capacity(cached.len());
        let mut seen = std::collections::HashSet::new();
        for rs in cached {
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            seen.insert(uid.clone());
            match written.get(&uid) {
                Some((w, _)) if rv(&w.metadata) > rv(&rs.metadata) => out.push(w.clone()),
                Some(_) => {
                    written.remove(&uid);
                    out.push(rs);
                }
                None => out.push(rs),
            }
        }
        for (uid, (w, _)) in written.iter() {
            if !seen.contains(uid) && w.metadata.namespace.as_deref() == Some(ns) {
                out.push(w.clone());
            }
        }
        out
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    ctx.rss
        .wait_until_ready()
        .await
        .map_err(|_| Error::CacheGone)?;
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    let name = d.metadata.name.clone().unwrap_or_default();
    let rss = ctx.replicasets(&ns);
    let plan = plan(&d, &rss, jiff::Timestamp::now());
    let rs_api: Api<ReplicaSet> = Api::namespaced(ctx.client.clone(), &ns);
    let d_api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let d_ref = podcontrol::object_reference("apps/v1", "Deployment", &d.metadata);
    let by_name: HashMap<&str, &Arc<ReplicaSet>> = rss
        .iter()
        .filter_map(|r| Some((r.metadata.name.as_deref()?, r)))
        .collect();
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let owner = podcontrol::controller_ref("apps/v1", "Deployment", &d.metadata);

    for n in plan.adopt.iter().chain(plan.release.iter()) {
        let Some(rs) = by_name.get(n.as_str()) else {
            continue;
        };
        let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
        if plan.adopt.contains(n) {
            refs.push(owner.clone());
        } else {
            refs.retain(|r| r.uid != uid);
        }
        let body = json!({"metadata": {"ownerReferences": refs, "resourceVersion": rs.metadata.resource_version}});
        match rs_api
            .patch(n, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(rs) => ctx.remember(rs),
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(e) => return Err(e.into()),
        }
    }

    if let Some(rs) = &plan.create {
        match rs_api.create(&PostParams::default(), rs).await {
            Ok(created) => ctx.remember(created),
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(e) => {
                ctx.recorder.event(
                    d_ref.clone(),
                    "Warning",
                    "FailedCreate",
                    format!("Failed to create new replica set: {e}"),
                );
                return Err(e.into());
            }
        }
    }

    for u in &plan.update {
        let Some(rs) = by_name.get(u.name.as_str()) else {
            continue;
        };
        let mut body = json!({"metadata": {"resourceVersion": rs.metadata.resource_version}});
        if !u.annotations.is_empty() {
            body["metadata"]["annotations"] = json!(u.annotations);
        }
        if let Some((_, to)) = u.replicas {
            body["spec"]["replicas"] = json!(to);
        }
        if let Some(m) = u.min_ready_seconds {
            body["spec"]["minReadySeconds"] = json!(m);
        }
        match rs_api
            .patch(&u.name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(updated) => ctx.remember(updated),
            Err(e) if is_conflict(&e) => return Ok(Action::requeue(Duration::from_millis(200))),
            Err(kube::Error::Api(s)) if s.code == 404 => {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    for (reason, message) in &plan.events {
        ctx.recorder
            .event(d_ref.clone(), "Normal", reason, message.clone());
    }

    for n in &plan.delete {
        if let Some(uid) = by_name
            .get(n.as_str())
            .and_then(|r| r.metadata.uid.as_ref())
        {
            ctx.written
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(uid);
        }
        match rs_api.delete(n, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }

    if let Some(rev) = &plan.revision {
        let body = json!({"metadata": {"annotations": {REVISION_ANNOTATION: rev}}});
        match d_api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }

    let old = serde_json::to_value(d.status.clone().unwrap_or_default()).unwrap_or_default();
    let new = serde_json::to_value(&plan.status).unwrap_or_default();
    if old != new {
        let body = json!({"status": plan.status});
        match d_api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(match plan.requeue_after {
        Some(d) => Action::requeue(d),
        None => Action::await_change(),
    })
}

fn error_policy(_d: Arc<Deployment>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(error = %err, "deployment reconcile failed");
    Action::requeue(Duration::from_secs(2))
}

/// Run the Deployment controller until `shutdown` completes.
pub async fn run(client: kube::Client, shutdown: impl Future<Output = ()> + Send + 'static) {
    let d_api: Api<Deployment> = Api::all(client.clone());
    let rs_api: Api<ReplicaSet> = Api::all(client.clone());
    let (d_reader, d_writer) = reflector::store::<Deployment>();
    let (rs_reader, rs_writer) = reflector::store::<ReplicaSet>();

    let d_queue = reflector::reflector(d_writer, watcher(d_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .map_ok(|d: Deployment| ObjectRef::from_obj(&d));
    let d_lookup = d_reader.clone();
    let rs_queue = reflector::reflector(rs_writer, watcher(rs_api, watcher::Config::default()))
        .default_backoff()
        .touched_objects()
        .map_ok(move |rs: ReplicaSet| {
            stream::iter(owners_of_rs(&rs, &d_lookup).into_iter().map(Ok))
        })
        .try_flatten();
    let queue = stream::select(d_queue.boxed(), rs_queue.boxed());
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        rss: rs_reader,
        written: Mutex::new(HashMap::new()),
        recorder: Recorder::new(client, "deployment-controller"),
    });
    let work = applier(
        |d, ctx| Box::pin(reconcile(d, ctx)),
        error_policy,
        ctx,
        d_reader,
        queue,
        ControllerConfig::default(),
    )
    .for_each(|r| async move {
        if let Err(e) = r {
            tracing::debug!(error = %e, "deployment controller");
        }
    });
    tokio::select! {
        _ = work => {}
        _ = shutdown => {}
    }
}

fn owners_of_rs(rs: &ReplicaSet, deployments: &Store<Deployment>) -> Vec<ObjectRef<Deployment>> {
    let ns = rs.metadata.namespace.as_deref().unwrap_or_default();
    if let Some(owner) = podcontrol::controller_of(&rs.metadata) {
        if owner.kind == "Deployment" {
            return vec![ObjectRef::new(&owner.name).within(ns)];
        }
        return Vec::new();
    }
    deployments
        .state()
        .iter()
        .filter(|d| d.metadata.namespace.as_deref() == Some(ns))
        .filter(|d| {
            d.spec.as_ref().is_some_and(|s| {
                podcontrol::selector_matches(&s.selector, rs.metadata.labels.as_ref())
            })
        })
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentSpec, DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
    };
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_000_000).unwrap()
    }

    fn deployment(
        replicas: i32,
        image: &str,
        surge: IntOrString,
        unavailable: IntOrString,
    ) -> Deployment {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("default".into()),
                uid: Some("d-uid".into()),
                generation: Some(1),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: Some(labels.clone()),
                    match_expressions: None,
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(labels),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container {
                            name: "c".into(),
                            image: Some(image.into()),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(surge),
                        max_unavailable: Some(unavailable),
                    }),
                }),
                revision_history_limit: Some(10),
                progress_deadline_seconds: Some(600),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn pct(s: &str) -> IntOrString {
        IntOrString::String(s.into())
    }

    /// A ReplicaSet of `d`'s current template as the API server would hold it, fully available.
    fn rs_of(d: &Deployment, replicas: i32, revision: i64, created: i64) -> ReplicaSet {
        let hash = podcontrol::template_hash(&d.spec.as_ref().unwrap().template, None);
        let mut rs = new_replicaset(d, &hash, replicas, revision);
        rs.metadata.uid = Some(format!("uid-{hash}"));
        rs.metadata.creation_timestamp = Some(Time(jiff::Timestamp::from_second(created).unwrap()));
        rs.metadata.generation = Some(1);
        rs.metadata.resource_version = Some("1".into());
        rs.status = Some(ReplicaSetStatus {
            replicas,
            ready_replicas: Some(replicas),
            available_replicas: Some(replicas),
            observed_generation: Some(1),
            ..Default::default()
        });
        rs
    }

    #[test]
    fn int_or_percent_rounding() {
        assert_eq!(scaled_value(Some(&pct("25%")), "25%", 10, true), 3);
        assert_eq!(scaled_value(Some(&pct("25%")), "25%", 10, false), 2);
        assert_eq!(
            scaled_value(Some(&IntOrString::Int(4)), "25%", 10, false),
            4
        );
        assert_eq!(scaled_value(None, "25%", 1, true), 1);
        assert_eq!(scaled_value(None, "25%", 1, false), 0);
        let d = deployment(10, "a", pct("0%"), pct("0%"));
        assert_eq!(fenceposts(&d), (0, 1));
        let d = deployment(10, "a", pct("30%"), IntOrString::Int(2));
        assert_eq!(fenceposts(&d), (3, 2));
        assert_eq!(
            max_unavailable(&deployment(1, "a", pct("25%"), IntOrString::Int(5))),
            1
        );
    }

    #[test]
    fn creates_first_replicaset() {
        let d = deployment(3, "nginx:1", pct("25%"), pct("25%"));
        let p = plan(&d, &[], now());
        let rs = p.create.unwrap();
        let hash = podcontrol::template_hash(&d.spec.as_ref().unwrap().template, None);
        assert_eq!(
            rs.metadata.name.as_deref(),
            Some(format!("web-{hash}").as_str())
        );
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(3));
        assert_eq!(
            rs.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION],
            "1"
        );
        assert_eq!(
            rs.metadata.labels.as_ref().unwrap()[POD_TEMPLATE_HASH_LABEL],
            hash
        );
        assert_eq!(
            rs.spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .as_ref()
                .unwrap()[POD_TEMPLATE_HASH_LABEL],
            hash
        );
        assert_eq!(
            rs.spec
                .as_ref()
                .unwrap()
                .template
                .as_ref()
                .unwrap()
                .metadata
                .as_ref()
                .unwrap()
                .labels
                .as_ref()
                .unwrap()[POD_TEMPLATE_HASH_LABEL],
            hash
        );
        assert_eq!(p.revision.as_deref(), Some("1"));
        let conds = p.status.conditions.unwrap();
        let prog = condition(&conds, "Progressing").unwrap();
        assert_eq!(prog.reason.as_deref(), Some("NewReplicaSetCreated"));
        let avail = condition(&conds, "Available").unwrap();
        assert_eq!(
            (avail.status.as_str(), avail.reason.as_deref()),
            ("False", Some("MinimumReplicasUnavailable"))
        );
        assert_eq!(
            p.events[0].1,
            format!("Scaled up replica set web-{hash} from 0 to 3")
        );
    }

    #[test]
    fn steady_state_is_complete_and_idle() {
        let mut d = deployment(3, "nginx:1", pct("25%"), pct("25%"));
        let rs = rs_of(&d, 3, 1, 1);
        d.metadata.annotations = Some([(REVISION_ANNOTATION.to_string(), "1".to_string())].into());
        let p = plan(&d, &[Arc::new(rs)], now());
        assert!(
            p.create.is_none()
                && p.update.is_empty()
                && p.delete.is_empty()
                && p.revision.is_none(),
            "{p:?}"
        );
        assert_eq!(
            (
                p.status.replicas,
                p.status.updated_replicas,
                p.status.available_replicas
            ),
            (Some(3), Some(3), Some(3))
        );
        let conds = p.status.conditions.unwrap();
        assert_eq!(
            condition(&conds, "Progressing").unwrap().reason.as_deref(),
            Some("NewReplicaSetAvailable")
        );
        assert_eq!(condition(&conds, "Available").unwrap().status, "True");
    }

    /// Apply a plan to a simulated world, with the ReplicaSet controller and kubelets catching up:
    /// deletions are immediate, new pods become available `per_step` at a time.
    fn apply(world: &mut Vec<ReplicaSet>, d: &mut Deployment, p: &Plan, per_step: i32) {
        if let Some(rs) = &p.create {
            let mut rs = rs.clone();
            rs.metadata.uid = Some(format!("uid-{}", rs.metadata.name.clone().unwrap()));
            rs.metadata.creation_timestamp = Some(Time(now()));
            rs.metadata.generation = Some(1);
            rs.status = Some(ReplicaSetStatus::default());
            world.push(rs);
        }
        for u in &p.update {
            let rs = world
                .iter_mut()
                .find(|r| r.metadata.name.as_deref() == Some(&u.name))
                .unwrap();
            if let Some((_, to)) = u.replicas {
                rs.spec.as_mut().unwrap().replicas = Some(to);
            }
            rs.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .extend(u.annotations.clone());
        }
        world.retain(|r| !p.delete.contains(r.metadata.name.as_ref().unwrap()));
        if let Some(rev) = &p.revision {
            d.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(REVISION_ANNOTATION.into(), rev.clone());
        }
        d.status = Some(p.status.clone());
        // The ReplicaSet controller and kubelets.
        for rs in world.iter_mut() {
            let spec = rs.spec.as_ref().unwrap().replicas.unwrap();
            let st = rs.status.get_or_insert_with(Default::default);
            let avail = st.available_replicas.unwrap_or(0);
            let avail = if spec <= avail {
                spec
            } else {
                (avail + per_step).min(spec)
            };
            st.replicas = spec;
            st.available_replicas = Some(avail);
            st.ready_replicas = Some(avail);
            st.observed_generation = Some(1);
        }
    }

    fn rollout(replicas: i32, surge: IntOrString, unavailable: IntOrString, per_step: i32) {
        let mut d = deployment(replicas, "nginx:1", surge.clone(), unavailable.clone());
        let mut world = vec![rs_of(&d, replicas, 1, 1)];
        d.metadata.annotations = Some([(REVISION_ANNOTATION.to_string(), "1".to_string())].into());
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("nginx:2".into());
        d.metadata.generation = Some(2);
        let (max_surge, max_unavail) = fenceposts(&d);
        for step in 0..200 {
            let rss: Vec<Arc<ReplicaSet>> = world.iter().cloned().map(Arc::new).collect();
            let p = plan(&d, &rss, now());
            apply(&mut world, &mut d, &p, per_step);
            let total: i32 = world
                .iter()
                .map(|r| r.spec.as_ref().unwrap().replicas.unwrap())
                .sum();
            let available: i32 = world
                .iter()
                .map(|r| r.status.as_ref().unwrap().available_replicas.unwrap())
                .sum();
            assert!(
                total <= replicas + max_surge,
                "step {step}: {total} pods > {replicas} + {max_surge}"
            );
            assert!(
                available >= replicas - max_unavail,
                "step {step}: {available} available < {replicas} - {max_unavail}"
            );
            let conds = p.status.conditions.clone().unwrap_or_default();
            if condition(&conds, "Progressing").and_then(|c| c.reason.as_deref())
                == Some("NewReplicaSetAvailable")
            {
                assert_eq!(world.len(), 2);
                let new = world
                    .iter()
                    .find(|r| revision_of(&r.metadata) == 2)
                    .unwrap();
                assert_eq!(new.spec.as_ref().unwrap().replicas, Some(replicas));
                assert!(
                    world
                        .iter()
                        .filter(|r| revision_of(&r.metadata) == 1)
                        .all(|r| r.spec.as_ref().unwrap().replicas == Some(0))
                );
                assert_eq!(
                    d.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION],
                    "2"
                );
                return;
            }
        }
        panic!("rollout did not complete: {world:?}");
    }

    #[test]
    fn rolling_update_respects_surge_and_unavailable() {
        rollout(10, pct("25%"), pct("25%"), 1);
        rollout(10, IntOrString::Int(0), IntOrString::Int(1), 1);
        rollout(10, IntOrString::Int(3), IntOrString::Int(0), 2);
        rollout(1, pct("25%"), pct("25%"), 1);
        rollout(5, pct("100%"), pct("0%"), 5);
        rollout(7, pct("10%"), pct("10%"), 3);
    }

    #[test]
    fn first_step_of_rolling_update() {
        let mut d = deployment(4, "nginx:1", IntOrString::Int(1), IntOrString::Int(0));
        let old = rs_of(&d, 4, 1, 1);
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("nginx:2".into());
        let p = plan(&d, &[Arc::new(old)], now());
        assert_eq!(
            p.create.as_ref().unwrap().spec.as_ref().unwrap().replicas,
            Some(1)
        );
        assert_eq!(
            p.create
                .as_ref()
                .unwrap()
                .metadata
                .annotations
                .as_ref()
                .unwrap()[REVISION_ANNOTATION],
            "2"
        );
        assert!(
            p.update.is_empty(),
            "old replica set untouched until new pods are available"
        );
    }

    #[test]
    fn recreate_scales_old_down_then_new_up() {
        let mut d = deployment(3, "nginx:1", pct("25%"), pct("25%"));
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let mut old = rs_of(&d, 3, 1, 1);
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("nginx:2".into());
        let p = plan(&d, &[Arc::new(old.clone())], now());
        assert_eq!(
            p.create.as_ref().unwrap().spec.as_ref().unwrap().replicas,
            Some(0)
        );
        assert_eq!(p.update[0].replicas, Some((3, 0)));
        // Old pods still terminating: the new replica set stays at 0.
        let mut new = p.create.clone().unwrap();
        new.metadata.uid = Some("new".into());
        new.metadata.creation_timestamp = Some(Time(now()));
        old.spec.as_mut().unwrap().replicas = Some(0);
        let p = plan(&d, &[Arc::new(old.clone()), Arc::new(new.clone())], now());
        assert!(p.update.iter().all(|u| u.replicas.is_none()), "{p:?}");
        // Old pods gone: scale the new one up.
        old.status.as_mut().unwrap().replicas = 0;
        old.status.as_mut().unwrap().available_replicas = Some(0);
        let p = plan(&d, &[Arc::new(old), Arc::new(new)], now());
        let up = p.update.iter().find(|u| u.replicas.is_some()).unwrap();
        assert_eq!(up.replicas, Some((0, 3)));
    }

    #[test]
    fn revision_history_limit_deletes_oldest_scaled_down() {
        let mut d = deployment(2, "v0", pct("25%"), pct("25%"));
        let mut rss = Vec::new();
        for rev in 1..=4 {
            d.spec
                .as_mut()
                .unwrap()
                .template
                .spec
                .as_mut()
                .unwrap()
                .containers[0]
                .image = Some(format!("v{rev}"));
            let mut rs = rs_of(&d, 0, rev, rev);
            rs.spec.as_mut().unwrap().replicas = Some(0);
            rss.push(Arc::new(rs));
        }
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("v5".into());
        rss.push(Arc::new(rs_of(&d, 2, 5, 5)));
        d.spec.as_mut().unwrap().revision_history_limit = Some(2);
        let p = plan(&d, &rss, now());
        let deleted: Vec<i64> = p
            .delete
            .iter()
            .map(|n| {
                revision_of(
                    &rss.iter()
                        .find(|r| r.metadata.name.as_deref() == Some(n))
                        .unwrap()
                        .metadata,
                )
            })
            .collect();
        assert_eq!(deleted, [1, 2]);
    }

    #[test]
    fn paused_does_not_roll_out_but_scales() {
        let mut d = deployment(3, "nginx:1", pct("25%"), pct("25%"));
        let old = rs_of(&d, 3, 1, 1);
        d.spec.as_mut().unwrap().paused = Some(true);
        d.spec.as_mut().unwrap().replicas = Some(5);
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("nginx:2".into());
        let p = plan(&d, &[Arc::new(old)], now());
        assert!(p.create.is_none());
        assert_eq!(p.update[0].replicas, Some((3, 5)));
        let conds = p.status.conditions.unwrap();
        let c = condition(&conds, "Progressing").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("Unknown", Some("DeploymentPaused"))
        );
        // Resumed.
        d.spec.as_mut().unwrap().paused = Some(false);
        d.status = Some(DeploymentStatus {
            conditions: Some(conds),
            ..Default::default()
        });
        let p = plan(&d, &[], now());
        assert!(p.create.is_some());
    }

    #[test]
    fn rollback_reuses_old_replicaset_with_new_revision() {
        let mut d = deployment(2, "v1", pct("25%"), pct("25%"));
        let mut v1 = rs_of(&d, 0, 1, 1);
        v1.spec.as_mut().unwrap().replicas = Some(0);
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("v2".into());
        let v2 = rs_of(&d, 2, 2, 2);
        // `kubectl rollout undo`: the template goes back to v1's (without the hash label).
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("v1".into());
        let p = plan(&d, &[Arc::new(v1.clone()), Arc::new(v2)], now());
        assert!(p.create.is_none());
        let u = p
            .update
            .iter()
            .find(|u| Some(&u.name) == v1.metadata.name.as_ref())
            .unwrap();
        assert_eq!(u.annotations[REVISION_ANNOTATION], "3");
        assert_eq!(u.annotations[REVISION_HISTORY_ANNOTATION], "1");
        assert_eq!(u.replicas, Some((0, 1)), "scaled up within maxSurge");
        assert_eq!(p.revision.as_deref(), Some("3"));
    }

    #[test]
    fn progress_deadline_exceeded() {
        let mut d = deployment(2, "v1", pct("25%"), pct("25%"));
        let mut rs = rs_of(&d, 2, 1, 1);
        rs.status.as_mut().unwrap().available_replicas = Some(0);
        rs.status.as_mut().unwrap().ready_replicas = Some(0);
        d.metadata.annotations = Some([(REVISION_ANNOTATION.to_string(), "1".to_string())].into());
        let old = jiff::Timestamp::from_second(now().as_second() - 601).unwrap();
        d.status = Some(DeploymentStatus {
            replicas: Some(2),
            updated_replicas: Some(2),
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: Some("ReplicaSetUpdated".into()),
                message: None,
                last_update_time: Some(Time(old)),
                last_transition_time: Some(Time(old)),
            }]),
            ..Default::default()
        });
        let p = plan(&d, &[Arc::new(rs.clone())], now());
        let conds = p.status.conditions.unwrap();
        let c = condition(&conds, "Progressing").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some("ProgressDeadlineExceeded"))
        );
        // Not yet past the deadline: requeued for when it would be.
        let recent = jiff::Timestamp::from_second(now().as_second() - 100).unwrap();
        let st = d.status.as_mut().unwrap();
        st.conditions.as_mut().unwrap()[0].last_update_time = Some(Time(recent));
        let p = plan(&d, &[Arc::new(rs)], now());
        assert_eq!(p.requeue_after, Some(Duration::from_secs(501)));
    }

    #[test]
    fn adopts_orphan_and_matches_template() {
        let d = deployment(1, "v1", pct("25%"), pct("25%"));
        let mut rs = rs_of(&d, 1, 1, 1);
        rs.metadata.owner_references = None;
        let p = plan(&d, &[Arc::new(rs.clone())], now());
        assert_eq!(p.adopt, [rs.metadata.name.clone().unwrap()]);
        assert!(p.create.is_none());
    }
}
