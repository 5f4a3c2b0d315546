//! The serverless profile controller: when a `ServerlessProfile` (`nodeless.io/v1`, cluster
//! scoped) is deleted, its pods (label `nodeless.io/profile=<name>`) are evicted through
//! `pods/NAME/eviction` (a delete when eviction is not served), each with an `Evicted` event that
//! says why. Their controllers recreate them; they stay Pending unless another profile selects
//! them, as on EKS on Fargate. Pods of profiles found missing at start are evicted the same way.
//!
//! A pod naming a profile this controller has not seen (the profile watch may lag the pod watch)
//! is only evicted after a direct read of the profile says it is gone. Finished pods are left as
//! they are (they hold no sandbox), and so are pods already being deleted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api::profile::PROFILE_LABEL;
use api::scheduling;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, EvictParams, PostParams, Preconditions,
};
use kube::runtime::watcher;
use tokio::sync::{Semaphore, mpsc};

use crate::api_code;
use crate::events::{Recorder, WARNING, object_ref};
use crate::watch::{AbortOnDrop, forward_watch};

/// The component named in the events.
pub const COMPONENT: &str = "serverless-profile-controller";

/// The API resource of `ServerlessProfile` (for a `DynamicObject` client).
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: api::profile::GROUP.into(),
        version: "v1".into(),
        api_version: format!("{}/v1", api::profile::GROUP),
        kind: "ServerlessProfile".into(),
        plural: "serverlessprofiles".into(),
    }
}

/// Why the controller stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProfilesError {
    /// A watch stream ended (the client went away).
    #[error("the {0} watch ended")]
    WatchEnded(&'static str),
}

enum Msg {
    Profile(Box<watcher::Event<DynamicObject>>),
    Pod(Box<watcher::Event<Pod>>),
    /// A direct read of a profile: whether it exists (and is not being deleted); None when the
    /// read failed.
    Checked {
        name: String,
        exists: Option<bool>,
    },
    Evicted {
        uid: String,
        ok: bool,
    },
}

#[derive(Default)]
struct State {
    /// Live profiles by name (not being deleted).
    profiles: HashSet<String>,
    profile_relist: Option<HashSet<String>>,
    profiles_synced: bool,
    /// Profiles known to be gone (deleted while watched, missing after a relist, or read as
    /// missing).
    gone: HashSet<String>,
    /// Profiles being read.
    checking: HashSet<String>,
    /// Pods with a profile label, by uid.
    pods: HashMap<String, Pod>,
    pod_relist: Option<HashSet<String>>,
    pods_synced: bool,
    /// Pods being evicted.
    evicting: HashSet<String>,
    /// Pods evicted that the watch still shows.
    evicted: HashSet<String>,
    /// Pods whose eviction failed: when to try again, and how many tries so far.
    retry: HashMap<String, (Instant, u32)>,
}

fn profile_live(o: &DynamicObject) -> bool {
    o.metadata.deletion_timestamp.is_none()
}

fn uid_of(p: &Pod) -> String {
    p.metadata.uid.clone().unwrap_or_default()
}

fn profile_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()?
        .get(PROFILE_LABEL)
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

impl State {
    fn profile_applied(&mut self, o: &DynamicObject) {
        let name = o.metadata.name.clone().unwrap_or_default();
        if let Some(seen) = self.profile_relist.as_mut() {
            seen.insert(name.clone());
        }
        if profile_live(o) {
            self.gone.remove(&name);
            self.profiles.insert(name);
        } else {
            self.profiles.remove(&name);
            self.gone.insert(name);
        }
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Profile(ev) => match *ev {
                watcher::Event::Init => self.profile_relist = Some(HashSet::new()),
                watcher::Event::InitApply(o) | watcher::Event::Apply(o) => self.profile_applied(&o),
                watcher::Event::Delete(o) => {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    self.profiles.remove(&name);
                    self.gone.insert(name);
                }
                watcher::Event::InitDone => {
                    self.profiles_synced = true;
                    if let Some(seen) = self.profile_relist.take() {
                        let missing: Vec<String> =
                            self.profiles.difference(&seen).cloned().collect();
                        for name in missing {
                            self.profiles.remove(&name);
                            self.gone.insert(name);
                        }
                    }
                }
            },
            Msg::Pod(ev) => match *ev {
                watcher::Event::Init => self.pod_relist = Some(HashSet::new()),
                watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                    let uid = uid_of(&p);
                    if let Some(seen) = self.pod_relist.as_mut() {
                        seen.insert(uid.clone());
                    }
                    self.pods.insert(uid, p);
                }
                watcher::Event::Delete(p) => {
                    let uid = uid_of(&p);
                    self.pods.remove(&uid);
                    self.retry.remove(&uid);
                    self.evicted.remove(&uid);
                }
                watcher::Event::InitDone => {
                    self.pods_synced = true;
                    if let Some(seen) = self.pod_relist.take() {
                        self.pods.retain(|uid, _| seen.contains(uid));
                        self.retry.retain(|uid, _| seen.contains(uid));
                        self.evicted.retain(|uid| seen.contains(uid));
                    }
                }
            },
            Msg::Checked { name, exists } => {
                self.checking.remove(&name);
                if exists == Some(false) && !self.profiles.contains(&name) {
                    self.gone.insert(name);
                }
            }
            Msg::Evicted { uid, ok } => {
                self.evicting.remove(&uid);
                if ok {
                    self.retry.remove(&uid);
                    if self.pods.contains_key(&uid) {
                        self.evicted.insert(uid);
                    }
                } else {
                    let tries = self.retry.get(&uid).map_or(0, |(_, n)| *n) + 1;
                    let delay = Duration::from_millis(500)
                        .saturating_mul(1u32 << tries.min(6))
                        .min(Duration::from_secs(30));
                    self.retry.insert(uid, (Instant::now() + delay, tries));
                }
            }
        }
    }

    fn ready(&self) -> bool {
        self.profiles_synced
            && self.pods_synced
            && self.profile_relist.is_none()
            && self.pod_relist.is_none()
    }
}

enum Action {
    Check(String),
    Evict { pod: Box<Pod>, profile: String },
}

fn plan(st: &mut State, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut pods: Vec<&Pod> = st.pods.values().collect();
    pods.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    let mut check = HashSet::new();
    let mut evict = Vec::new();
    for p in pods {
        let Some(profile) = profile_of(p) else {
            continue;
        };
        if st.profiles.contains(profile)
            || p.metadata.deletion_timestamp.is_some()
            || scheduling::is_terminated(p)
        {
            continue;
        }
        let uid = uid_of(p);
        if st.evicting.contains(&uid)
            || st.evicted.contains(&uid)
            || st.retry.get(&uid).is_some_and(|(at, _)| now < *at)
        {
            continue;
        }
        if st.gone.contains(profile) {
            evict.push((uid, p.clone(), profile.to_string()));
        } else if !st.checking.contains(profile) {
            check.insert(profile.to_string());
        }
    }
    for name in check {
        st.checking.insert(name.clone());
        actions.push(Action::Check(name));
    }
    for (uid, pod, profile) in evict {
        st.evicting.insert(uid);
        actions.push(Action::Evict {
            pod: Box::new(pod),
            profile,
        });
    }
    actions
}

/// Run the profile controller until its watches end.
pub async fn run(client: kube::Client) -> Result<(), ProfilesError> {
    let (tx, mut rx) = mpsc::channel::<Msg>(4096);
    let ar = api_resource();
    let profiles: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let pods: Api<Pod> = Api::all(client.clone());
    let _guard = AbortOnDrop(vec![
        forward_watch(
            profiles,
            watcher::Config::default(),
            tx.clone(),
            Msg::Profile,
            "profile controller: profile watch",
        ),
        forward_watch(
            pods,
            watcher::Config::default().labels(PROFILE_LABEL),
            tx.clone(),
            Msg::Pod,
            "profile controller: pod watch",
        ),
    ]);
    let semaphore = Arc::new(Semaphore::new(16));
    let recorder = Recorder::new(client.clone(), COMPONENT);
    let mut st = State::default();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return Err(ProfilesError::WatchEnded("profile")) };
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
            let (client, semaphore, tx, recorder, ar) = (
                client.clone(),
                semaphore.clone(),
                tx.clone(),
                recorder.clone(),
                ar.clone(),
            );
            tokio::spawn(async move {
                let _permit = semaphore.acquire().await;
                let msg = match action {
                    Action::Check(name) => {
                        let api: Api<DynamicObject> = Api::all_with(client, &ar);
                        let exists = match api.get_opt(&name).await {
                            Ok(found) => Some(found.is_some_and(|o| profile_live(&o))),
                            Err(e) => {
                                tracing::debug!(profile = %name, error = %e, "reading a profile");
                                None
                            }
                        };
                        Msg::Checked { name, exists }
                    }
                    Action::Evict { pod, profile } => {
                        let ok = evict(&client, &recorder, &pod, &profile).await;
                        Msg::Evicted {
                            uid: uid_of(&pod),
                            ok,
                        }
                    }
                };
                let _ = tx.send(msg).await;
            });
        }
    }
}

/// Evict one pod (delete it when eviction is not served); true when it is gone or going.
async fn evict(client: &kube::Client, recorder: &Recorder, pod: &Pod, profile: &str) -> bool {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let message = format!("Evicting pod: serverless profile {profile:?} was deleted");
    tracing::info!(pod = %format!("{ns}/{name}"), %profile, "evicting a pod of a deleted serverless profile");
    recorder
        .publish(&object_ref(pod), WARNING, "Evicted", &message)
        .await;
    // Only this pod, not one recreated under the same name.
    let delete = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let params = EvictParams {
        delete_options: Some(delete.clone()),
        post_options: PostParams::default(),
    };
    let fallback = match api.evict(&name, &params).await {
        Ok(_) => return true,
        // A conflict on the uid precondition: that pod is gone already.
        Err(e) if api_code(&e) == Some(409) => return true,
        // Not found (the pod, or the subresource), not allowed or not served: delete instead.
        Err(e) if matches!(api_code(&e), Some(404 | 405 | 501)) => e,
        // 429: a disruption budget forbids it now; try again later.
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "eviction failed");
            return false;
        }
    };
    tracing::debug!(pod = %format!("{ns}/{name}"), error = %fallback, "eviction not possible, deleting");
    match api.delete(&name, &delete).await {
        Ok(_) => true,
        Err(e) if matches!(api_code(&e), Some(404 | 409)) => true,
        Err(e) => {
            tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "deleting failed");
            false
        }
    }
}
