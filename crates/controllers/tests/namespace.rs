//! Namespace controller against the in-process API server: a namespace full of objects of
//! several kinds goes away, waiting for a terminating pod that the "node" finishes late.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, eventually};

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};

fn from<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_full_of_objects_goes_away() {
    let ts = apiserver::testing::TestServer::start().await;
    let c = client(&ts).await;
    tokio::spawn(controllers::namespace::run(
        c.clone(),
        controllers::namespace::Config {
            recheck: Duration::from_millis(300),
            write_conditions: false,
        },
    ));
    let pp = PostParams::default();
    let nss: Api<Namespace> = Api::all(c.clone());
    nss.create(
        &pp,
        &from(serde_json::json!({"metadata": {"name": "doomed"}})),
    )
    .await
    .unwrap();
    // A neighbour that must survive.
    nss.create(
        &pp,
        &from(serde_json::json!({"metadata": {"name": "keep"}})),
    )
    .await
    .unwrap();

    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "doomed");
    let secrets: Api<Secret> = Api::namespaced(c.clone(), "doomed");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "doomed");
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "doomed");
    for i in 0..5 {
        cms.create(
            &pp,
            &from(serde_json::json!({"metadata": {"name": format!("cm{i}")}})),
        )
        .await
        .unwrap();
    }
    secrets
        .create(&pp, &from(serde_json::json!({"metadata": {"name": "s"}})))
        .await
        .unwrap();
    deploys
        .create(
            &pp,
            &from(serde_json::json!({"metadata": {"name": "web"}, "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}})),
        )
        .await
        .unwrap();
    let pod = serde_json::json!({"metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "c", "image": "busybox"}]}});
    pods.create(&pp, &from(pod.clone())).await.unwrap();
    // A pod bound to a node: deletion is graceful and the node finishes it.
    let mut bound = pod.clone();
    bound["metadata"]["name"] = "bound".into();
    bound["spec"]["nodeName"] = "n1".into();
    pods.create(&pp, &from(bound)).await.unwrap();
    let keep_cms: Api<ConfigMap> = Api::namespaced(c.clone(), "keep");
    keep_cms
        .create(&pp, &from(serde_json::json!({"metadata": {"name": "x"}})))
        .await
        .unwrap();

    nss.delete("doomed", &DeleteParams::default())
        .await
        .unwrap();

    // Content goes, except the terminating bound pod; the namespace waits for it.
    eventually("content deleted", || async {
        cms.list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
            && secrets
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .is_empty()
            && deploys
                .list(&Default::default())
                .await
                .unwrap()
                .items
                .is_empty()
            && pods.get_opt("p").await.unwrap().is_none()
    })
    .await;
    let b = pods.get("bound").await.unwrap();
    assert!(
        b.metadata.deletion_timestamp.is_some(),
        "bound pod is terminating"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        nss.get_opt("doomed").await.unwrap().is_some(),
        "namespace waits for its pod"
    );

    // The node finishes the pod; the namespace disappears.
    pods.delete(
        "bound",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("namespace gone", || async {
        nss.get_opt("doomed").await.unwrap().is_none()
    })
    .await;
    assert!(
        keep_cms.get_opt("x").await.unwrap().is_some(),
        "other namespaces untouched"
    );
    assert!(
        nss.get("keep")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
}
