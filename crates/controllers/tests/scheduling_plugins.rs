//! The default scheduler's affinity, topology spread and preemption against the in-process API
//! server, with Node objects written directly (no agent) and the ReplicaSet controller making
//! the pods: required anti-affinity spreads replicas one per node and leaves the rest Pending
//! with upstream's message, a zone spread constraint balances zones, and a high-priority pod
//! preempts a low-priority one on a full node.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, eventually};

use std::collections::BTreeMap;

use apiserver::testing::TestServer;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const ZONE: &str = "topology.kubernetes.io/zone";

async fn add_node(client: &kube::Client, name: &str, cpu: &str, labels: Value) {
    let api: Api<Node> = Api::all(client.clone());
    let mut l = json!({"kubernetes.io/hostname": name});
    if let (Some(l), Some(extra)) = (l.as_object_mut(), labels.as_object()) {
        l.extend(extra.clone());
    }
    let n: Node = serde_json::from_value(json!({"metadata": {"name": name, "labels": l}})).unwrap();
    api.create(&PostParams::default(), &n).await.unwrap();
    let status = json!({"status": {
        "allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}],
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
}

fn replicaset(name: &str, replicas: i32, pod_spec: Value) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}
        }
    }))
    .unwrap()
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

fn scheduled_false(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .and_then(|c| c.message.clone())
}

/// Start the scheduler and the ReplicaSet controller; dropping the sender stops the latter.
fn start_controllers(
    c: &kube::Client,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let sched = tokio::spawn({
        let c = c.clone();
        async move {
            let _ = controllers::scheduler::run(c, Default::default()).await;
        }
    });
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(controllers::replicaset::run(c.clone(), async move {
        let _ = rx.await;
    }));
    (sched, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_affinity_puts_one_replica_per_node_and_leaves_the_fourth_pending() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    for i in 0..3 {
        add_node(&c, &format!("n{i}"), "8", json!({})).await;
    }
    let (sched, _stop) = start_controllers(&c);
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let spec = json!({
        "containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": "100m"}}}],
        "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": "kubernetes.io/hostname"}]}}
    });
    rss.create(&PostParams::default(), &replicaset("web", 4, spec))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let want = "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
                preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod..";
    eventually(
        "3 bound on distinct nodes, 1 pending with the message",
        || async {
            let l = pods.list(&ListParams::default()).await.unwrap();
            let bound: Vec<String> = l.items.iter().filter_map(node_of).collect();
            let pending: Vec<String> = l.items.iter().filter_map(scheduled_false).collect();
            l.items.len() == 4 && bound.len() == 3 && pending == vec![want.to_string()]
        },
    )
    .await;
    let l = pods.list(&ListParams::default()).await.unwrap();
    let mut bound: Vec<String> = l.items.iter().filter_map(node_of).collect();
    bound.sort();
    assert_eq!(bound, vec!["n0", "n1", "n2"]);
    let pending = l.items.iter().find(|p| node_of(p).is_none()).unwrap();
    let pending_name = pending.metadata.name.clone().unwrap();
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    eventually("FailedScheduling event", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("FailedScheduling")
                    && e.involved_object.name.as_deref() == Some(pending_name.as_str())
                    && e.message.as_deref() == Some(want)
            })
    })
    .await;
    // A fourth node makes room for it.
    add_node(&c, "n3", "8", json!({})).await;
    eventually("the fourth replica bound to n3", || async {
        node_of(&pods.get(&pending_name).await.unwrap()).as_deref() == Some("n3")
    })
    .await;
    sched.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_spread_balances_zones() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    // Zone a has three nodes, zone b one: per node, zone a would win; per zone, they balance.
    for i in 0..3 {
        add_node(&c, &format!("a{i}"), "8", json!({ZONE: "a"})).await;
    }
    add_node(&c, "b0", "8", json!({ZONE: "b"})).await;
    // A node without the zone label is never used by the constrained pods.
    add_node(&c, "nozone", "64", json!({})).await;
    let (sched, _stop) = start_controllers(&c);
    let rss: Api<ReplicaSet> = Api::namespaced(c.clone(), "default");
    let spec = json!({
        "containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": "100m"}}}],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": ZONE,
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "spread"}}}]
    });
    rss.create(&PostParams::default(), &replicaset("spread", 6, spec))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    eventually("6 bound", || async {
        let l = pods.list(&ListParams::default()).await.unwrap();
        l.items.len() == 6 && l.items.iter().all(|p| node_of(p).is_some())
    })
    .await;
    let l = pods.list(&ListParams::default()).await.unwrap();
    let mut per_zone = BTreeMap::<String, usize>::new();
    for p in &l.items {
        let n = node_of(p).unwrap();
        assert_ne!(n, "nozone");
        *per_zone.entry(n[..1].to_string()).or_default() += 1;
    }
    assert_eq!(per_zone, BTreeMap::from([("a".into(), 3), ("b".into(), 3)]));
    sched.abort();
}

fn prio_pod(name: &str, cpu: &str, priority: Option<i32>) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "nginx",
        "resources": {"requests": {"cpu": cpu}}}]});
    if let Some(p) = priority {
        spec["priority"] = json!(p);
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn high_priority_pod_preempts_a_low_priority_one() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    add_node(&c, "full", "1", json!({})).await;
    let (sched, _stop) = start_controllers(&c);
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    // No priority: it counts as 0.
    pods.create(&PostParams::default(), &prio_pod("low", "800m", None))
        .await
        .unwrap();
    eventually("low bound", || async {
        node_of(&pods.get("low").await.unwrap()).is_some()
    })
    .await;
    let low_uid = pods.get("low").await.unwrap().metadata.uid.unwrap();

    // Same priority with preemptionPolicy Never: it waits, nobody is evicted.
    let mut never = prio_pod("never", "500m", Some(1000));
    never.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
    pods.create(&PostParams::default(), &never).await.unwrap();
    eventually("never Unschedulable", || async {
        scheduled_false(&pods.get("never").await.unwrap()).as_deref()
            == Some(
                "0/1 nodes are available: 1 Insufficient cpu. \
                 preemption: not eligible due to preemptionPolicy=Never..",
            )
    })
    .await;
    assert!(
        pods.get("low")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
    pods.delete("never", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();

    pods.create(
        &PostParams::default(),
        &prio_pod("high", "500m", Some(1000)),
    )
    .await
    .unwrap();
    let high_uid = pods.get("high").await.unwrap().metadata.uid.unwrap();
    eventually("high nominated to the full node", || async {
        let p = pods.get("high").await.unwrap();
        p.status.and_then(|s| s.nominated_node_name).as_deref() == Some("full")
    })
    .await;
    // The victim: marked, deleted gracefully, with the Preempted event.
    eventually("low being deleted", || async {
        match pods.get_opt("low").await.unwrap() {
            None => true,
            Some(p) => p.metadata.deletion_timestamp.is_some(),
        }
    })
    .await;
    if let Some(p) = pods.get_opt("low").await.unwrap() {
        let conds = p.status.unwrap().conditions.unwrap_or_default();
        assert!(conds.iter().any(|c| c.type_ == "DisruptionTarget"
            && c.status == "True"
            && c.reason.as_deref() == Some("PreemptionByScheduler")));
    }
    let events: Api<Event> = Api::namespaced(c.clone(), "default");
    let want = format!("Preempted by pod {high_uid} on node full");
    eventually("Preempted event on the victim", || async {
        events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Preempted")
                    && e.involved_object.uid.as_deref() == Some(low_uid.as_str())
                    && e.message.as_deref() == Some(want.as_str())
            })
    })
    .await;
    assert!(node_of(&pods.get("high").await.unwrap()).is_none());
    // The kubelet's part: the victim's containers stop and the pod goes.
    let _ = pods
        .delete("low", &DeleteParams::default().grace_period(0))
        .await;
    eventually("high bound to the full node", || async {
        node_of(&pods.get("high").await.unwrap()).as_deref() == Some("full")
    })
    .await;
    sched.abort();
}
