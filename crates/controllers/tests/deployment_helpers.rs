//! Shared helpers of the Deployment and ReplicaSet integration tests (included with `#[path]`):
//! an in-process API server with both controllers running, and a stand-in for kubelets that marks
//! pods Running and Ready.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

pub struct Env {
    pub server: apiserver::testing::TestServer,
    pub client: kube::Client,
    /// When true, the fake kubelet marks new pods Ready.
    pub auto_ready: Arc<AtomicBool>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn client_for(ts: &apiserver::testing::TestServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&ts.kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// Start a server, the ReplicaSet and Deployment controllers, and a fake kubelet.
pub async fn start() -> Env {
    let server = apiserver::testing::TestServer::start().await;
    let client = client_for(&server).await;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = futures::future::FutureExt::shared(async move {
        let _ = rx.await;
    });
    tokio::spawn(controllers::replicaset::run(client.clone(), rx.clone()));
    tokio::spawn(controllers::deployment::run(client.clone(), rx.clone()));
    let auto_ready = Arc::new(AtomicBool::new(true));
    tokio::spawn(fake_kubelet(client.clone(), auto_ready.clone(), rx));
    Env {
        server,
        client,
        auto_ready,
        _stop: tx,
    }
}

/// Mark a pod Running and Ready as a kubelet would.
pub async fn mark_ready(client: &kube::Client, ns: &str, name: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let now = jiff::Timestamp::now().to_string();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastTransitionTime": now});
    let body = json!({"status": {
        "phase": "Running",
        "startTime": now,
        "podIP": "10.0.0.1",
        "conditions": [cond("PodScheduled"), cond("Initialized"), cond("ContainersReady"), cond("Ready")],
    }});
    let _ = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await;
}

async fn fake_kubelet(
    client: kube::Client,
    auto: Arc<AtomicBool>,
    stop: impl std::future::Future<Output = ()>,
) {
    let api: Api<Pod> = Api::all(client.clone());
    let work = watcher(api, watcher::Config::default())
        .default_backoff()
        .applied_objects()
        .try_for_each_concurrent(32, |pod| {
            let client = client.clone();
            let auto = auto.clone();
            async move {
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                if !ready
                    && pod.metadata.deletion_timestamp.is_none()
                    && auto.load(Ordering::SeqCst)
                {
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    mark_ready(
                        &client,
                        pod.metadata.namespace.as_deref().unwrap_or("default"),
                        pod.metadata.name.as_deref().unwrap_or_default(),
                    )
                    .await;
                }
                Ok(())
            }
        });
    tokio::select! {
        _ = work => {}
        _ = stop => {}
    }
}

/// Poll `f` until it returns Some, or panic after `secs` seconds with `what`.
pub async fn wait_for<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pods of a namespace matching a label selector.
pub async fn pods(client: &kube::Client, ns: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.list(&kube::api::ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

/// Collect everything a watch yields into a shared Vec until dropped.
pub fn record<K>(api: Api<K>) -> (Arc<std::sync::Mutex<Vec<K>>>, tokio::task::JoinHandle<()>)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let mut w = watcher(api, watcher::Config::default())
            .default_backoff()
            .touched_objects()
            .boxed();
        while let Some(Ok(o)) = w.next().await {
            s.lock().unwrap().push(o);
        }
    });
    (seen, task)
}
