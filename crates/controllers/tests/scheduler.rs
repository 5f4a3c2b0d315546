//! The default scheduler against the in-process API server, with Node objects written directly
//! (no agent): bindings, events, the Unschedulable condition and retries on cluster changes.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, eventually};

use std::time::Duration;

use apiserver::testing::TestServer;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn add_node(client: &kube::Client, name: &str, cpu: &str, ready: &str) {
    let api: Api<Node> = Api::all(client.clone());
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
    }))
    .unwrap();
    api.create(&PostParams::default(), &n).await.unwrap();
    let status = json!({"status": {
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": ready}],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

fn pod(name: &str, cpu: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "nginx",
            "resources": {"requests": {"cpu": cpu}}}]}
    }))
    .unwrap()
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

fn scheduled_condition(p: &Pod) -> Option<(String, String, String)> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_reports_unschedulable_and_retries() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    add_node(&c, "small", "1", "True").await;
    add_node(&c, "big", "4", "True").await;
    add_node(&c, "down", "64", "False").await;
    let sched = tokio::spawn(controllers::scheduler::run(c.clone(), Default::default()));
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");

    // Fits only on "big" (cpu), never on the node that is not Ready.
    pods.create(&PostParams::default(), &pod("two-cpu", "2"))
        .await
        .unwrap();
    eventually("two-cpu bound", || async {
        node_of(&pods.get("two-cpu").await.unwrap()).is_some()
    })
    .await;
    let p = pods.get("two-cpu").await.unwrap();
    assert_eq!(node_of(&p).as_deref(), Some("big"));
    assert_eq!(scheduled_condition(&p).unwrap().0, "True");

    // Fits nowhere: 3 cpu left on nothing.
    pods.create(&PostParams::default(), &pod("three-cpu", "3"))
        .await
        .unwrap();
    let want = "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
                2 Insufficient cpu. preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, \
                2 No preemption victims found for incoming pod..";
    eventually("three-cpu Unschedulable", || async {
        let p = pods.get("three-cpu").await.unwrap();
        scheduled_condition(&p) == Some(("False".into(), "Unschedulable".into(), want.into()))
    })
    .await;
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let l = events.list(&ListParams::default()).await.unwrap();
    let failed: Vec<&Event> = l
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .collect();
    assert!(!failed.is_empty());
    assert!(failed.iter().all(|e| e.type_.as_deref() == Some("Warning")
        && e.message.as_deref() == Some(want)
        && e.involved_object.kind.as_deref() == Some("Pod")
        && e.involved_object.name.as_deref() == Some("three-cpu")
        && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("default-scheduler")));
    eventually("Scheduled event for two-cpu", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Scheduled")
                    && e.message.as_deref() == Some("Successfully assigned default/two-cpu to big")
            })
    })
    .await;

    // Freeing "big" (the bound pod goes away) makes room: the pending pod is retried.
    pods.delete("two-cpu", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("three-cpu bound to big", || async {
        node_of(&pods.get("three-cpu").await.unwrap()).as_deref() == Some("big")
    })
    .await;

    // A new node is picked up too; an unschedulable (cordoned) node is not used.
    pods.create(&PostParams::default(), &pod("four-cpu", "4"))
        .await
        .unwrap();
    eventually("four-cpu Unschedulable", || async {
        scheduled_condition(&pods.get("four-cpu").await.unwrap()).is_some_and(|c| c.0 == "False")
    })
    .await;
    add_node(&c, "cordoned", "8", "True").await;
    let nodes: Api<Node> = Api::all(c.clone());
    nodes
        .patch(
            "cordoned",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": true}})),
        )
        .await
        .unwrap();
    add_node(&c, "new", "8", "True").await;
    eventually("four-cpu bound to new", || async {
        node_of(&pods.get("four-cpu").await.unwrap()).as_deref() == Some("new")
    })
    .await;

    // Pods for another scheduler are left alone.
    let mut other = pod("other", "1m");
    other.spec.as_mut().unwrap().scheduler_name = Some("my-scheduler".into());
    pods.create(&PostParams::default(), &other).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = pods.get("other").await.unwrap();
    assert!(node_of(&p).is_none());
    assert!(scheduled_condition(&p).is_none());
    sched.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_pods_spread_without_overcommit() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    for i in 0..5 {
        add_node(&c, &format!("n{i}"), "2", "True").await;
    }
    let sched = tokio::spawn(controllers::scheduler::run(c.clone(), Default::default()));
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    // 5 nodes x 2 cpu = 20 pods of 500m; 4 more do not fit.
    for i in 0..24 {
        pods.create(&PostParams::default(), &pod(&format!("p{i}"), "500m"))
            .await
            .unwrap();
    }
    eventually("20 bound, 4 unschedulable", || async {
        let l = pods.list(&ListParams::default()).await.unwrap();
        let bound = l.items.iter().filter(|p| node_of(p).is_some()).count();
        let unsched = l
            .items
            .iter()
            .filter(|p| scheduled_condition(p).is_some_and(|c| c.0 == "False"))
            .count();
        bound == 20 && unsched == 4
    })
    .await;
    let l = pods.list(&ListParams::default()).await.unwrap();
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for p in &l.items {
        if let Some(n) = node_of(p) {
            *per_node.entry(n).or_default() += 1;
        }
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![4; 5]);
    sched.abort();
}
