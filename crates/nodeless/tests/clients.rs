//! The kube-rs client and the Python `kubernetes` client against the real `nodeless server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Server;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

async fn client(server: &Server) -> kube::Client {
    let kc = Kubeconfig::read_from(&server.kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

fn pod(name: &str, app: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_crud_watch_and_apply() {
    let server = Server::start();
    let client = client(&server).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");

    // Watch from the current list revision, then make changes.
    let list = pods.list(&ListParams::default()).await.unwrap();
    let rv = list.metadata.resource_version.clone().unwrap();
    let mut stream = pods
        .watch(&WatchParams::default().labels("app=a"), &rv)
        .await
        .unwrap()
        .boxed();

    for i in 0..3 {
        pods.create(&PostParams::default(), &pod(&format!("a{i}"), "a"))
            .await
            .unwrap();
    }
    pods.create(&PostParams::default(), &pod("b0", "b"))
        .await
        .unwrap();
    let created = pods.get("a0").await.unwrap();
    assert_eq!(
        created.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );
    assert_eq!(
        created
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref()),
        Some("Always"),
        "defaults"
    );

    // Label selectors, all operators.
    let names = |l: kube::core::ObjectList<Pod>| {
        l.items
            .into_iter()
            .map(|p| p.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app=a"))
                .await
                .unwrap()
        ),
        ["a0", "a1", "a2"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app notin (a)"))
                .await
                .unwrap()
        ),
        ["b0"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("app in (a,b),app!=a"))
                .await
                .unwrap()
        ),
        ["b0"]
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().labels("!app"))
                .await
                .unwrap()
        )
        .len(),
        0
    );
    assert_eq!(
        names(
            pods.list(&ListParams::default().fields("metadata.name=a1"))
                .await
                .unwrap()
        ),
        ["a1"]
    );

    // Paging with limit/continue sees every pod once.
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(2);
    loop {
        let page = pods.list(&lp).await.unwrap();
        let cont = page.metadata.continue_.clone();
        seen.extend(names(page));
        match cont {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(seen, ["a0", "a1", "a2", "b0"]);

    // The watch saw exactly the three matching creations, in order.
    let mut added = Vec::new();
    while added.len() < 3 {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(WatchEvent::Added(p)) => added.push(p.metadata.name.unwrap()),
            // The in-process scheduler marks these pods unschedulable (no nodes): MODIFIED.
            Some(WatchEvent::Bookmark(_) | WatchEvent::Modified(_)) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(added, ["a0", "a1", "a2"]);

    // Optimistic concurrency: a stale update is a 409 Conflict.
    let mut stale = pods.get("a1").await.unwrap();
    pods.patch(
        "a1",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "1"}}})),
    )
    .await
    .unwrap();
    stale
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert("y".into(), "2".into());
    let err = pods
        .replace("a1", &PostParams::default(), &stale)
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (409, "Conflict")),
        other => panic!("expected a Conflict, got {other:?}"),
    }

    // Server-side apply with field managers and conflicts.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cfg = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "v1"}});
    cms.patch("ssa", &PatchParams::apply("alice"), &Patch::Apply(&cfg))
        .await
        .unwrap();
    let other = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"k": "v2"}});
    let err = cms
        .patch("ssa", &PatchParams::apply("bob"), &Patch::Apply(&other))
        .await
        .unwrap_err();
    match err {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 409);
            assert!(
                s.message.contains("conflict with \"alice\""),
                "{}",
                s.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let forced = cms
        .patch(
            "ssa",
            &PatchParams::apply("bob").force(),
            &Patch::Apply(&other),
        )
        .await
        .unwrap();
    assert_eq!(forced.data.unwrap()["k"], "v2");

    // Status subresource: the main resource ignores status, /status ignores spec.
    pods.patch_status(
        "a2",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running"}})),
    )
    .await
    .unwrap();
    pods.patch(
        "a2",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Failed"}})),
    )
    .await
    .unwrap();
    assert_eq!(
        pods.get("a2")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Running")
    );

    // dryRun=All writes nothing.
    let pp = PostParams {
        dry_run: true,
        ..Default::default()
    };
    pods.create(&pp, &pod("dry", "a")).await.unwrap();
    assert!(pods.get_opt("dry").await.unwrap().is_none());

    // Delete.
    pods.delete("b0", &DeleteParams::default()).await.unwrap();
    assert!(pods.get_opt("b0").await.unwrap().is_none());
}

#[test]
fn python_kubernetes_client() {
    let server = Server::start();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python_client.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(&server.kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python client failed (is `pip install kubernetes` done? scripts/setup.sh does it):\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("python client: ok"));
}
