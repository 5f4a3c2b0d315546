//! A 1,000-replica Deployment from create to all pods Ready through the in-process API server,
//! the ReplicaSet and Deployment controllers and a fake kubelet (no scheduler). Checks that exactly
//! 1,000 pods exist (expectations hold under the burst of watch events) and prints pods/s.
//! Ignored by default (heavy on a shared machine):
//! `cargo test -p controllers --test deployment_scale -- --ignored --nocapture`
#![allow(clippy::unwrap_used)]

#[path = "deployment_helpers.rs"]
mod helpers;

use std::time::{Duration, Instant};

use helpers::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "heavy: 1,000 pods; run with --ignored"]
async fn thousand_replicas() {
    let env = start().await;
    let c = env.client.clone();
    let api: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "big"},
        "spec": {
            "replicas": 1000,
            "selector": {"matchLabels": {"app": "big"}},
            "template": {"metadata": {"labels": {"app": "big"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
        }
    }))
    .unwrap();
    let start = Instant::now();
    api.create(&PostParams::default(), &d).await.unwrap();
    wait_for(600, "1000 created", || async {
        let d = api.get("big").await.unwrap();
        (d.status?.replicas == Some(1000)).then_some(())
    })
    .await;
    println!("1000 pods created in {:.2}s", start.elapsed().as_secs_f64());
    wait_for(600, "1000 available", || async {
        let d = api.get("big").await.unwrap();
        (d.status?.available_replicas == Some(1000)).then_some(())
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "1000 replicas available in {secs:.2}s: {:.0} pods/s",
        1000.0 / secs
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pods(&c, "default", "app=big").await.len(), 1000);
}

/// The peer for the figure above: the same server creating 1,000 pods directly with 64 requests
/// in flight and no controllers, i.e. the API server's own ceiling on this machine.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "heavy: 1,000 pods; run with --ignored"]
async fn raw_pod_creates_peer() {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Pod;
    let server = apiserver::testing::TestServer::start().await;
    let c = client_for(&server).await;
    let api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "raw-", "labels": {"app": "raw"}},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]}
    }))
    .unwrap();
    let start = Instant::now();
    let n = futures::stream::iter(0..1000)
        .map(|_| {
            let api = api.clone();
            let pod = pod.clone();
            async move { api.create(&PostParams::default(), &pod).await.is_ok() }
        })
        .buffer_unordered(64)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "raw: {n} pods created in {secs:.2}s: {:.0} pods/s",
        n as f64 / secs
    );
    assert_eq!(n, 1000);
}

/// Creation alone (no kubelet writes competing): a 1,000-replica ReplicaSet's pods created by the
/// controller, to compare with `raw_pod_creates_peer`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "heavy: 1,000 pods; run with --ignored"]
async fn thousand_pods_created_without_kubelet() {
    let env = start().await;
    env.auto_ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let c = env.client.clone();
    let api: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(c.clone(), "default");
    let rs = serde_json::from_value(json!({
        "metadata": {"name": "bare"},
        "spec": {
            "replicas": 1000,
            "selector": {"matchLabels": {"app": "bare"}},
            "template": {"metadata": {"labels": {"app": "bare"}}, "spec": {"containers": [{"name": "c", "image": "nginx"}]}}
        }
    }))
    .unwrap();
    let start = Instant::now();
    api.create(&PostParams::default(), &rs).await.unwrap();
    wait_for(600, "1000 pods", || async {
        let rs = api.get("bare").await.unwrap();
        (rs.status?.replicas == 1000).then_some(())
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "controller: 1000 pods created in {secs:.2}s: {:.0} pods/s",
        1000.0 / secs
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(pods(&c, "default", "app=bare").await.len(), 1000);
}
