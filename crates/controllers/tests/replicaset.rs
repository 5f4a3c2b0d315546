//! The ReplicaSet controller against an in-process API server: pods from the template with a
//! controller reference, scaling both ways (not-ready pods deleted first), adoption and release,
//! status, and no extra pods under a burst.
#![allow(clippy::unwrap_used)]

#[path = "deployment_helpers.rs"]
mod helpers;

use std::sync::atomic::Ordering;
use std::time::Duration;

use helpers::*;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn replicaset(name: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "tier": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]}
            }
        }
    }))
    .unwrap()
}

async fn scale(api: &Api<ReplicaSet>, name: &str, n: i32) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": n}})),
    )
    .await
    .unwrap();
}

async fn rs_status(api: &Api<ReplicaSet>, name: &str) -> (i32, i32, i32, i32) {
    let rs = api.get(name).await.unwrap();
    let s = rs.status.unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
        s.fully_labeled_replicas.unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_scales_adopts_and_releases() {
    let env = start().await;
    env.auto_ready.store(false, Ordering::SeqCst);
    let c = env.client.clone();
    let api: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let created = api
        .create(&PostParams::default(), &replicaset("web", 3))
        .await
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    let ps = wait_for(20, "3 pods", || async {
        Some(pods(&c, "default", "app=web").await).filter(|p| p.len() == 3)
    })
    .await;
    for p in &ps {
        assert!(p.metadata.name.as_ref().unwrap().starts_with("web-"));
        assert_eq!(p.metadata.generate_name.as_deref(), Some("web-"));
        let o = &p.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("ReplicaSet", "web", uid.as_str())
        );
        assert_eq!(
            (o.controller, o.block_owner_deletion),
            (Some(true), Some(true))
        );
        assert_eq!(p.metadata.labels.as_ref().unwrap()["tier"], "web");
    }
    wait_for(20, "status replicas 3", || async {
        (rs_status(&api, "web").await == (3, 0, 0, 3)).then_some(())
    })
    .await;
    for p in &ps {
        mark_ready(&c, "default", p.metadata.name.as_deref().unwrap()).await;
    }
    wait_for(20, "3 ready", || async {
        (rs_status(&api, "web").await == (3, 3, 3, 3)).then_some(())
    })
    .await;
    let rs = api.get("web").await.unwrap();
    assert_eq!(
        rs.status.unwrap().observed_generation,
        rs.metadata.generation
    );

    // Scale up to 5: two new pods, not ready.
    scale(&api, "web", 5).await;
    let five = wait_for(20, "5 pods", || async {
        Some(pods(&c, "default", "app=web").await).filter(|p| p.len() == 5)
    })
    .await;
    let ready_names: Vec<String> = ps
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        five.iter()
            .filter(|p| ready_names.contains(p.metadata.name.as_ref().unwrap()))
            .count(),
        3
    );
    wait_for(20, "status 5/3", || async {
        (rs_status(&api, "web").await == (5, 3, 3, 5)).then_some(())
    })
    .await;

    // Scale down to 3: the two not-ready pods go first.
    scale(&api, "web", 3).await;
    let left = wait_for(20, "3 pods", || async {
        Some(pods(&c, "default", "app=web").await).filter(|p| p.len() == 3)
    })
    .await;
    let mut left_names: Vec<String> = left
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    left_names.sort();
    let mut expect = ready_names.clone();
    expect.sort();
    assert_eq!(
        left_names, expect,
        "scale-down deleted ready pods before not-ready ones"
    );

    // An orphan with matching labels is adopted (and the excess pod removed).
    let pod_api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "orphan", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}
    }))
    .unwrap();
    pod_api
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    // The orphan is not ready, so it is the one deleted after adoption; it is owned before that.
    wait_for(20, "orphan adopted or deleted", || async {
        match pod_api.get_opt("orphan").await.unwrap() {
            None => Some(()),
            Some(p) => p
                .metadata
                .owner_references
                .filter(|r| r.iter().any(|r| r.uid == uid))
                .map(|_| ()),
        }
    })
    .await;
    wait_for(20, "back to 3", || async {
        Some(pods(&c, "default", "app=web").await).filter(|p| p.len() == 3)
    })
    .await;
    assert!(
        pod_api.get_opt("orphan").await.unwrap().is_none(),
        "the adopted, not-ready orphan is the excess pod"
    );

    // Relabel an owned pod: it is released and replaced.
    let victim = left_names[0].clone();
    pod_api
        .patch(
            &victim,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
        )
        .await
        .unwrap();
    wait_for(20, "released", || async {
        let p = pod_api.get(&victim).await.unwrap();
        p.metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .all(|r| r.uid != uid)
            .then_some(())
    })
    .await;
    wait_for(20, "replacement", || async {
        Some(pods(&c, "default", "app=web").await)
            .filter(|p| p.len() == 3 && p.iter().all(|p| p.metadata.name.as_ref() != Some(&victim)))
    })
    .await;

    // Events.
    let ev: Api<Event> = Api::namespaced(c.clone(), "default");
    let evs = wait_for(20, "events", || async {
        let l = ev.list(&ListParams::default()).await.unwrap().items;
        Some(l).filter(|l| {
            l.iter()
                .any(|e| e.reason.as_deref() == Some("SuccessfulDelete"))
        })
    })
    .await;
    assert!(evs.iter().any(|e| {
        e.reason.as_deref() == Some("SuccessfulCreate")
            && e.message
                .as_deref()
                .unwrap_or_default()
                .starts_with("Created pod: web-")
    }));
    assert!(
        evs.iter()
            .all(|e| e.involved_object.kind.as_deref() == Some("ReplicaSet"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_creates_exactly_replicas() {
    let env = start().await;
    let c = env.client.clone();
    let api: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    api.create(&PostParams::default(), &replicaset("big", 300))
        .await
        .unwrap();
    wait_for(60, "300 ready", || async {
        (rs_status(&api, "big").await.1 == 300).then_some(())
    })
    .await;
    // Ready updates caused hundreds of reconciles; none created an extra pod.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pods(&c, "default", "app=big").await.len(), 300);
    scale(&api, "big", 10).await;
    wait_for(60, "10 pods", || async {
        Some(pods(&c, "default", "app=big").await).filter(|p| p.len() == 10)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pods(&c, "default", "app=big").await.len(), 10);
    assert_eq!(rs_status(&api, "big").await.0, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adopts_existing_orphan_instead_of_creating() {
    let env = start().await;
    let c = env.client.clone();
    let pod_api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let orphan: Pod = serde_json::from_value(json!({
        "metadata": {"name": "lonely", "labels": {"app": "adopt", "tier": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}
    }))
    .unwrap();
    pod_api
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    let api: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let rs = api
        .create(&PostParams::default(), &replicaset("adopt", 1))
        .await
        .unwrap();
    let uid = rs.metadata.uid.unwrap();
    wait_for(20, "adopted", || async {
        let p = pod_api.get("lonely").await.unwrap();
        let r = p
            .metadata
            .owner_references?
            .into_iter()
            .find(|r| r.uid == uid)?;
        (r.controller == Some(true) && r.block_owner_deletion == Some(true)).then_some(())
    })
    .await;
    wait_for(20, "status counts the adopted pod", || async {
        (rs_status(&api, "adopt").await == (1, 1, 1, 1)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        pods(&c, "default", "app=adopt").await.len(),
        1,
        "no pod created for an adopted orphan"
    );
}

fn replica_failure(rs: &ReplicaSet) -> Option<(String, String, String)> {
    let c = rs
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "ReplicaFailure")?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_template_sets_replica_failure_until_fixed() {
    let env = start().await;
    let c = env.client.clone();
    let api: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    // The server's serverless admission rejects a pod naming a profile that does not exist
    // (422 Invalid), though the ReplicaSet itself is valid.
    let mut rs = replicaset("broken", 2);
    rs.spec
        .as_mut()
        .unwrap()
        .template
        .as_mut()
        .unwrap()
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .as_mut()
        .unwrap()
        .insert("nodeless.io/profile".into(), "missing".into());
    api.create(&PostParams::default(), &rs).await.unwrap();
    let (status, reason, message) = wait_for(20, "ReplicaFailure", || async {
        replica_failure(&api.get("broken").await.unwrap())
    })
    .await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "FailedCreate"));
    assert!(message.contains("is invalid"), "{message}");
    assert!(message.contains("nodeless.io/profile"), "{message}");
    assert!(pods(&c, "default", "app=broken").await.is_empty());
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let want = format!("Error creating: {message}");
    wait_for(20, "FailedCreate event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some("FailedCreate")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some("broken")
                    && e.message.as_deref() == Some(want.as_str())
            })
    })
    .await;

    // Fix the template: creations succeed and the condition goes.
    api.patch(
        "broken",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"template": {"metadata": {"labels": {"nodeless.io/profile": null}}}}}),
        ),
    )
    .await
    .unwrap();
    wait_for(20, "2 pods", || async {
        Some(pods(&c, "default", "app=broken").await).filter(|p| p.len() == 2)
    })
    .await;
    wait_for(20, "ReplicaFailure removed", || async {
        let rs = api.get("broken").await.unwrap();
        (replica_failure(&rs).is_none() && rs.status.as_ref().is_some_and(|s| s.replicas == 2))
            .then_some(())
    })
    .await;
}
