//! Garbage collector against the in-process API server: background, foreground (with a
//! chain), orphan, and dependents whose owner never existed.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, eventually};

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams};

async fn cm(api: &Api<ConfigMap>, name: &str, owners: &[(&ConfigMap, bool)]) -> ConfigMap {
    let refs: Vec<serde_json::Value> = owners
        .iter()
        .map(|(o, block)| {
            serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "name": o.name_any(),
                "uid": o.uid().unwrap(), "blockOwnerDeletion": block})
        })
        .collect();
    let obj: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "ownerReferences": refs}, "data": {"k": "v"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap()
}

async fn gone(api: &Api<ConfigMap>, name: &str) -> bool {
    api.get_opt(name).await.unwrap().is_none()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn propagation_policies() {
    let ts = apiserver::testing::TestServer::start().await;
    let c = client(&ts).await;
    tokio::spawn(controllers::gc::run(
        c.clone(),
        controllers::gc::Config::default(),
    ));
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");

    // A dependent whose owner never existed is collected.
    let ghost: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "ghost"}})).unwrap();
    let mut ghost_ref = api.create(&PostParams::default(), &ghost).await.unwrap();
    api.delete("ghost", &DeleteParams::default()).await.unwrap();
    ghost_ref.metadata.uid = Some("no-such-uid".into());
    let dangling = cm(&api, "dangling", &[(&ghost_ref, false)]).await;
    let _ = dangling;
    eventually("dangling dependent collected", || gone(&api, "dangling")).await;

    // Background.
    let o1 = cm(&api, "o1", &[]).await;
    cm(&api, "d1", &[(&o1, false)]).await;
    cm(&api, "d1b", &[(&o1, true)]).await;
    api.delete("o1", &DeleteParams::background()).await.unwrap();
    eventually("background dependents", || async {
        gone(&api, "d1").await && gone(&api, "d1b").await
    })
    .await;

    // Foreground with a chain: o2 <- mid (blocking) <- leaf (blocking), and a non-blocking d3.
    let o2 = cm(&api, "o2", &[]).await;
    let mid = cm(&api, "mid", &[(&o2, true)]).await;
    cm(&api, "leaf", &[(&mid, true)]).await;
    cm(&api, "d3", &[(&o2, false)]).await;
    api.delete("o2", &DeleteParams::foreground()).await.unwrap();
    // The owner is visible with the finalizer while dependents go.
    let o2_now = api.get_opt("o2").await.unwrap();
    if let Some(o) = o2_now {
        assert!(o.metadata.deletion_timestamp.is_some());
        assert!(o.finalizers().iter().any(|f| f == "foregroundDeletion"));
    }
    eventually("foreground chain", || async {
        gone(&api, "o2").await
            && gone(&api, "mid").await
            && gone(&api, "leaf").await
            && gone(&api, "d3").await
    })
    .await;

    // Orphan.
    let o3 = cm(&api, "o3", &[]).await;
    let other = cm(&api, "other", &[]).await;
    cm(&api, "d4", &[(&o3, true), (&other, false)]).await;
    api.delete("o3", &DeleteParams::orphan()).await.unwrap();
    eventually("orphan owner gone", || gone(&api, "o3")).await;
    let d4 = api.get("d4").await.unwrap();
    let refs: Vec<String> = d4
        .owner_references()
        .iter()
        .map(|r| r.name.clone())
        .collect();
    assert_eq!(
        refs,
        vec!["other".to_string()],
        "only the orphaning owner's reference removed"
    );
    // Still there a bit later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(api.get_opt("d4").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_in_other_kind_and_cluster_scope() {
    use k8s_openapi::api::core::v1::Namespace;
    let ts = apiserver::testing::TestServer::start().await;
    let c = client(&ts).await;
    tokio::spawn(controllers::gc::run(
        c.clone(),
        controllers::gc::Config::default(),
    ));
    // A namespaced ConfigMap owned by a cluster-scoped Namespace object "owner-ns".
    let nss: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "owner-ns"}})).unwrap();
    let ns = nss.create(&PostParams::default(), &ns).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let obj: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "by-ns", "ownerReferences": [{"apiVersion": "v1", "kind": "Namespace",
            "name": "owner-ns", "uid": ns.uid().unwrap()}]}
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        api.get_opt("by-ns").await.unwrap().is_some(),
        "owner present: dependent kept"
    );
    // Without a namespace controller the namespace stays Terminating with its finalizer; finish it.
    nss.delete("owner-ns", &DeleteParams::default())
        .await
        .unwrap();
    let body = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "owner-ns"}, "spec": {"finalizers": []}});
    let _: Namespace = nss
        .replace_subresource("finalize", "owner-ns", &PostParams::default(), &body)
        .await
        .unwrap();
    eventually("dependent of deleted cluster-scoped owner", || {
        gone(&api, "by-ns")
    })
    .await;
}
