//! The Deployment controller (with the ReplicaSet controller and a fake kubelet) against an
//! in-process API server: create -> ReplicaSet -> pods, scale, rolling update observed by watch
//! (never more ReplicaSet replicas than replicas + maxSurge, never fewer ready pods than
//! replicas - maxUnavailable), Recreate, revisionHistoryLimit, pause/resume, rollback.
#![allow(clippy::unwrap_used)]

#[path = "deployment_helpers.rs"]
mod helpers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use helpers::*;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

const REV: &str = "deployment.kubernetes.io/revision";

fn deployment(name: &str, replicas: i32, image: &str, strategy: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]}
            }
        }
    }))
    .unwrap()
}

fn rolling(surge: serde_json::Value, unavailable: serde_json::Value) -> serde_json::Value {
    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}})
}

/// Whether the Deployment finished rolling out, as `kubectl rollout status` decides it.
fn rolled_out(d: &Deployment) -> bool {
    let s = d.status.clone().unwrap_or_default();
    let want = d.spec.as_ref().unwrap().replicas.unwrap_or(1);
    let prog = s
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Progressing");
    s.observed_generation >= d.metadata.generation
        && prog.is_some_and(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"))
        && s.updated_replicas == Some(want)
        && s.replicas == Some(want)
        && s.available_replicas == Some(want)
}

async fn wait_rolled_out(api: &Api<Deployment>, name: &str) -> Deployment {
    wait_for(60, &format!("{name} rolled out"), || async {
        Some(api.get(name).await.unwrap()).filter(rolled_out)
    })
    .await
}

async fn owned_rs(c: &kube::Client, d: &Deployment) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let uid = d.metadata.uid.clone().unwrap();
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| {
            r.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid)
        })
        .collect()
}

fn rev(rs: &ReplicaSet) -> String {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REV))
        .cloned()
        .unwrap_or_default()
}

async fn set_image(api: &Api<Deployment>, name: &str, image: &str) {
    let body =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]}}}});
    api.patch(name, &PatchParams::default(), &Patch::Strategic(body))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_scale_and_rolling_update() {
    let env = start().await;
    let c = env.client.clone();
    let api: Api<Deployment> = Api::namespaced(c.clone(), "default");
    api.create(
        &PostParams::default(),
        &deployment("web", 6, "nginx:1", rolling(json!(2), json!(1))),
    )
    .await
    .unwrap();
    let d = wait_rolled_out(&api, "web").await;
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REV], "1");
    let conds = d.status.as_ref().unwrap().conditions.clone().unwrap();
    let avail = conds.iter().find(|c| c.type_ == "Available").unwrap();
    assert_eq!(
        (avail.status.as_str(), avail.reason.as_deref()),
        ("True", Some("MinimumReplicasAvailable"))
    );
    let rss = owned_rs(&c, &d).await;
    assert_eq!(rss.len(), 1);
    let rs1 = rss[0].clone();
    let hash = rs1.metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(rs1.metadata.name.clone().unwrap(), format!("web-{hash}"));
    assert_eq!(rev(&rs1), "1");
    let ps = pods(&c, "default", "app=web").await;
    assert_eq!(ps.len(), 6);
    assert!(ps.iter().all(|p| {
        p.metadata.labels.as_ref().unwrap()["pod-template-hash"] == hash
            && p.metadata
                .name
                .as_ref()
                .unwrap()
                .starts_with(&format!("web-{hash}-"))
    }));

    // Scale.
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 8}})),
    )
    .await
    .unwrap();
    wait_rolled_out(&api, "web").await;
    assert_eq!(pods(&c, "default", "app=web").await.len(), 8);

    // Rolling update, observed by watching pods and replica sets.
    let min_ready = 8 - 1;
    let max_total = 8 + 2;
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let pod_api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let v = violations.clone();
    let pod_watch = tokio::spawn(async move {
        let mut ready: HashMap<String, bool> = HashMap::new();
        let mut synced = false;
        let mut w = watcher(pod_api, watcher::Config::default().labels("app=web"))
            .default_backoff()
            .boxed();
        while let Some(Ok(ev)) = w.next().await {
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let r = p.metadata.deletion_timestamp.is_none()
                        && p.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            });
                    ready.insert(p.metadata.name.unwrap(), r);
                }
                watcher::Event::Delete(p) => {
                    ready.remove(&p.metadata.name.unwrap());
                }
                watcher::Event::InitDone => synced = true,
                watcher::Event::Init => {}
            }
            let n = ready.values().filter(|r| **r).count();
            if synced && n < min_ready {
                v.lock().unwrap().push(format!("only {n} ready pods"));
            }
        }
    });
    let rs_api: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let v = violations.clone();
    let max_seen = Arc::new(Mutex::new(0));
    let m = max_seen.clone();
    let rs_watch = tokio::spawn(async move {
        let mut spec: BTreeMap<String, i32> = BTreeMap::new();
        let mut w = watcher(rs_api, watcher::Config::default())
            .default_backoff()
            .touched_objects()
            .boxed();
        while let Some(Ok(rs)) = w.next().await {
            spec.insert(
                rs.metadata.name.clone().unwrap(),
                rs.spec.unwrap().replicas.unwrap_or(0),
            );
            let total: i32 = spec.values().sum();
            let mut mx = m.lock().unwrap();
            *mx = (*mx).max(total);
            if total > max_total {
                v.lock()
                    .unwrap()
                    .push(format!("replica sets ask for {total} pods"));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_image(&api, "web", "nginx:2").await;
    let d = wait_rolled_out(&api, "web").await;
    pod_watch.abort();
    rs_watch.abort();
    assert!(
        violations.lock().unwrap().is_empty(),
        "{:?}",
        violations.lock().unwrap()
    );
    assert!(*max_seen.lock().unwrap() > 8, "the rollout surged");
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REV], "2");
    let rss = owned_rs(&c, &d).await;
    assert_eq!(rss.len(), 2);
    let old = rss
        .iter()
        .find(|r| r.metadata.uid == rs1.metadata.uid)
        .unwrap();
    let new = rss
        .iter()
        .find(|r| r.metadata.uid != rs1.metadata.uid)
        .unwrap();
    assert_eq!(
        (old.spec.as_ref().unwrap().replicas, rev(old).as_str()),
        (Some(0), "1")
    );
    assert_eq!(
        (new.spec.as_ref().unwrap().replicas, rev(new).as_str()),
        (Some(8), "2")
    );
    let ps = pods(&c, "default", "app=web").await;
    assert_eq!(ps.len(), 8);
    assert!(
        ps.iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("nginx:2"))
    );

    // Idle once rolled out: no status or replica set writes in a loop.
    let rv = |d: &Deployment| d.metadata.resource_version.clone();
    let before = api.get("web").await.unwrap();
    let rs_before: Vec<_> = owned_rs(&c, &before)
        .await
        .iter()
        .map(|r| r.metadata.resource_version.clone())
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = api.get("web").await.unwrap();
    assert_eq!(rv(&before), rv(&after), "deployment keeps being written");
    let rs_after: Vec<_> = owned_rs(&c, &after)
        .await
        .iter()
        .map(|r| r.metadata.resource_version.clone())
        .collect();
    assert_eq!(rs_before, rs_after, "replica sets keep being written");

    // Events on the Deployment.
    let ev: Api<Event> = Api::namespaced(c.clone(), "default");
    let evs = ev.list(&ListParams::default()).await.unwrap().items;
    let msgs: Vec<String> = evs
        .iter()
        .filter(|e| e.involved_object.kind.as_deref() == Some("Deployment"))
        .filter_map(|e| e.message.clone())
        .collect();
    assert!(
        msgs.iter()
            .any(|m| m == &format!("Scaled up replica set web-{hash} from 0 to 6")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.starts_with(&format!("Scaled down replica set web-{hash} from "))),
        "{msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_never_mixes_versions() {
    let env = start().await;
    let c = env.client.clone();
    let api: Api<Deployment> = Api::namespaced(c.clone(), "default");
    api.create(
        &PostParams::default(),
        &deployment("rc", 3, "nginx:1", json!({"type": "Recreate"})),
    )
    .await
    .unwrap();
    wait_rolled_out(&api, "rc").await;
    let mixed = Arc::new(Mutex::new(false));
    let pod_api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mx = mixed.clone();
    let watch = tokio::spawn(async move {
        let mut images: HashMap<String, String> = HashMap::new();
        let mut w = watcher(pod_api, watcher::Config::default().labels("app=rc"))
            .default_backoff()
            .boxed();
        while let Some(Ok(ev)) = w.next().await {
            match ev {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    let img = p.spec.unwrap().containers[0]
                        .image
                        .clone()
                        .unwrap_or_default();
                    images.insert(p.metadata.name.unwrap(), img);
                }
                watcher::Event::Delete(p) => {
                    images.remove(&p.metadata.name.unwrap());
                }
                _ => {}
            }
            let kinds: std::collections::HashSet<&String> = images.values().collect();
            if kinds.len() > 1 {
                *mx.lock().unwrap() = true;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_image(&api, "rc", "nginx:2").await;
    let d = wait_rolled_out(&api, "rc").await;
    watch.abort();
    assert!(
        !*mixed.lock().unwrap(),
        "old and new pods existed at the same time"
    );
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REV], "2");
    let ps = pods(&c, "default", "app=rc").await;
    assert_eq!(ps.len(), 3);
    assert!(
        ps.iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("nginx:2"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_limit_pause_resume_and_rollback() {
    let env = start().await;
    let c = env.client.clone();
    let api: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let mut d = deployment("h", 2, "img:1", rolling(json!("25%"), json!("25%")));
    d.spec.as_mut().unwrap().revision_history_limit = Some(1);
    api.create(&PostParams::default(), &d).await.unwrap();
    wait_rolled_out(&api, "h").await;
    for i in 2..=4 {
        set_image(&api, "h", &format!("img:{i}")).await;
        wait_rolled_out(&api, "h").await;
    }
    let d = api.get("h").await.unwrap();
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REV], "4");
    let rss = wait_for(20, "history trimmed to 1 old replica set", || async {
        Some(owned_rs(&c, &d).await).filter(|r| r.len() == 2)
    })
    .await;
    let mut revs: Vec<String> = rss.iter().map(rev).collect();
    revs.sort();
    assert_eq!(revs, ["3", "4"]);

    // Pause: a template change makes no new replica set.
    api.patch(
        "h",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true}})),
    )
    .await
    .unwrap();
    set_image(&api, "h", "img:5").await;
    let d = wait_for(20, "paused condition", || async {
        let d = api.get("h").await.unwrap();
        let s = d.status.clone()?;
        let prog = s
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Progressing")?;
        (prog.reason.as_deref() == Some("DeploymentPaused")
            && s.observed_generation == d.metadata.generation)
            .then_some(d)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // (Upstream also trims history while paused: with no replica set for the new template, both
    // remaining ones count as old, so only the active one is left.)
    let rss = owned_rs(&c, &d).await;
    assert!(
        rss.iter().all(|r| r
            .spec
            .as_ref()
            .unwrap()
            .template
            .as_ref()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .image
            .as_deref()
            != Some("img:5")),
        "no replica set for the paused template"
    );
    assert!(
        pods(&c, "default", "app=h")
            .await
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("img:4"))
    );
    // Scaling still works while paused.
    api.patch(
        "h",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    wait_for(20, "scaled while paused", || async {
        Some(pods(&c, "default", "app=h").await).filter(|p| p.len() == 3)
    })
    .await;

    // Resume: the rollout proceeds.
    api.patch(
        "h",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await
    .unwrap();
    let d = wait_rolled_out(&api, "h").await;
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REV], "5");

    // Rollback as kubectl does it: the template of revision 4 (without its hash label).
    let rss = owned_rs(&c, &d).await;
    let r4 = rss.iter().find(|r| rev(r) == "4").unwrap();
    let mut template =
        serde_json::to_value(r4.spec.as_ref().unwrap().template.as_ref().unwrap()).unwrap();
    template["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("pod-template-hash");
    api.patch(
        "h",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(
                json!([{"op": "replace", "path": "/spec/template", "value": template}]),
            )
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let d = wait_rolled_out(&api, "h").await;
    assert_eq!(d.metadata.annotations.as_ref().unwrap()[REV], "6");
    let rss = owned_rs(&c, &d).await;
    let back = rss
        .iter()
        .find(|r| r.metadata.uid == r4.metadata.uid)
        .unwrap();
    assert_eq!(rev(back), "6");
    assert_eq!(
        back.metadata.annotations.as_ref().unwrap()["deployment.kubernetes.io/revision-history"],
        "4"
    );
    assert!(
        pods(&c, "default", "app=h")
            .await
            .iter()
            .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("img:4"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_deadline_exceeded_when_pods_never_ready() {
    let env = start().await;
    env.auto_ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let c = env.client.clone();
    let api: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let mut d = deployment("slow", 2, "nginx:1", rolling(json!(1), json!(0)));
    d.spec.as_mut().unwrap().progress_deadline_seconds = Some(2);
    api.create(&PostParams::default(), &d).await.unwrap();
    let d = wait_for(30, "ProgressDeadlineExceeded", || async {
        let d = api.get("slow").await.unwrap();
        let prog = d
            .status
            .clone()?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Progressing")?;
        (prog.reason.as_deref() == Some("ProgressDeadlineExceeded")).then_some(d)
    })
    .await;
    let s = d.status.unwrap();
    let avail = s
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Available")
        .unwrap();
    assert_eq!(
        (avail.status.as_str(), avail.reason.as_deref()),
        ("False", Some("MinimumReplicasUnavailable"))
    );
    assert_eq!(
        (
            s.replicas,
            s.updated_replicas,
            s.available_replicas,
            s.unavailable_replicas
        ),
        (Some(2), Some(2), Some(0), Some(2))
    );
}
