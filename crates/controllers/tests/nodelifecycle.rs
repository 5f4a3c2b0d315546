//! Node lifecycle against the in-process API server: a node whose lease stops being renewed
//! turns Ready=Unknown with the unreachable taint, its pods are marked not ready and, after
//! their toleration, deleted (force-deleted after the grace period since no agent finishes
//! them); a renewed lease brings the node back.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, eventually};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

fn ready(node: &Node) -> (String, Option<String>) {
    let c = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .unwrap();
    (c.status.clone(), c.reason.clone())
}

fn pod_ready(p: &Pod) -> Option<String> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.status.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_lease_node_not_ready_pods_deleted_then_recovers() {
    let ts = apiserver::testing::TestServer::start().await;
    let c = client(&ts).await;
    let pp = PostParams::default();
    let nodes: Api<Node> = Api::all(c.clone());
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-node-lease");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let now = jiff::Timestamp::now();
    nodes
        .create(
            &pp,
            &from(
                serde_json::json!({"metadata": {"name": "n1"}, "status": {"conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady",
                 "message": "kubelet is posting ready status",
                 "lastHeartbeatTime": Time(now), "lastTransitionTime": Time(now)}]}}),
            ),
        )
        .await
        .unwrap();
    leases
        .create(
            &pp,
            &from(serde_json::json!({"metadata": {"name": "n1"}, "spec": {
                "holderIdentity": "n1", "leaseDurationSeconds": 40, "renewTime": MicroTime(now)}})),
        )
        .await
        .unwrap();
    // The "agent" renews the lease while alive is set.
    let alive = Arc::new(AtomicBool::new(true));
    {
        let (leases, alive) = (leases.clone(), alive.clone());
        tokio::spawn(async move {
            loop {
                if alive.load(Ordering::SeqCst) {
                    let patch = serde_json::json!({"spec": {"renewTime": MicroTime(jiff::Timestamp::now())}});
                    let _ = leases
                        .patch("n1", &PatchParams::default(), &Patch::Merge(&patch))
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    let pod = |name: &str, tols: serde_json::Value| -> Pod {
        from(serde_json::json!({"metadata": {"name": name}, "spec": {
            "nodeName": "n1", "terminationGracePeriodSeconds": 1, "tolerations": tols,
            "containers": [{"name": "c", "image": "busybox"}]}}))
    };
    let unreachable = |secs: Option<i64>| {
        let mut t = serde_json::json!({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"});
        if let Some(s) = secs {
            t["tolerationSeconds"] = s.into();
        }
        serde_json::json!([t])
    };
    pods.create(&pp, &pod("evicted", unreachable(Some(1))))
        .await
        .unwrap();
    pods.create(&pp, &pod("stays", unreachable(None)))
        .await
        .unwrap();

    tokio::spawn(controllers::nodelifecycle::run(
        c.clone(),
        controllers::nodelifecycle::Config {
            monitor_period: Duration::from_millis(200),
            grace_period: Duration::from_secs(2),
            toleration_cap: None,
        },
    ));

    // Healthy for a while: nothing happens.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ready(&nodes.get("n1").await.unwrap()).0, "True");
    assert!(
        nodes
            .get("n1")
            .await
            .unwrap()
            .spec
            .and_then(|s| s.taints)
            .unwrap_or_default()
            .is_empty()
    );

    // The agent stops.
    alive.store(false, Ordering::SeqCst);
    eventually("node Unknown with taint", || async {
        let n = nodes.get("n1").await.unwrap();
        let taints = n.spec.clone().and_then(|s| s.taints).unwrap_or_default();
        ready(&n) == ("Unknown".into(), Some("NodeStatusUnknown".into()))
            && taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
    })
    .await;
    eventually("pods marked not ready", || async {
        pod_ready(&pods.get("stays").await.unwrap()).as_deref() == Some("False")
    })
    .await;
    // The evicted pod shows Terminating at some point, then is force-deleted.
    let mut saw_terminating = false;
    for _ in 0..100 {
        match pods.get_opt("evicted").await.unwrap() {
            Some(p) => saw_terminating |= p.metadata.deletion_timestamp.is_some(),
            None => break,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_terminating, "graceful delete first");
    assert!(
        pods.get_opt("evicted").await.unwrap().is_none(),
        "force-deleted after its grace period"
    );
    let stays = pods.get("stays").await.unwrap();
    assert!(
        stays.metadata.deletion_timestamp.is_none(),
        "tolerates forever"
    );

    // The agent comes back.
    alive.store(true, Ordering::SeqCst);
    eventually("node Ready again without taints", || async {
        let n = nodes.get("n1").await.unwrap();
        ready(&n).0 == "True" && n.spec.and_then(|s| s.taints).unwrap_or_default().is_empty()
    })
    .await;
}
