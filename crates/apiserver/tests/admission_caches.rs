//! The admission caches (namespaces for the lifecycle check, serverless profiles for pod
//! admission): two servers on one store, so that writes made by this server (visible to its very
//! next request) and by another one (visible once its watch delivers them, or at once for a
//! namespace the cache lacks) can both be checked, and a store that counts the reads admission
//! makes, to check that a synced cache answers them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apiserver::State;
use apiserver::objects::Objects;
use axum::body::Body;
use futures::StreamExt;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use store::{Backend, KeyValue, ListPage, Revision, WatchStream};
use tower::ServiceExt;

const TOKEN: &str = "test-token";
const NAMESPACES: &str = "/registry/core/namespaces/";
const PROFILES: &str = "/registry/nodeless.io/serverlessprofiles/";

/// A store that counts reads of namespaces and lists of profiles, and delays watch events.
struct Counting {
    inner: Arc<dyn Backend>,
    namespace_gets: AtomicUsize,
    profile_lists: AtomicUsize,
}

impl Counting {
    fn reads(&self) -> (usize, usize) {
        (
            self.namespace_gets.load(Ordering::SeqCst),
            self.profile_lists.load(Ordering::SeqCst),
        )
    }
}

#[async_trait::async_trait]
impl Backend for Counting {
    async fn current_revision(&self) -> store::Result<Revision> {
        self.inner.current_revision().await
    }
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> store::Result<(Revision, Option<KeyValue>)> {
        if key.starts_with(NAMESPACES) {
            self.namespace_gets.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.get(key, revision).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> store::Result<ListPage> {
        if prefix == PROFILES {
            self.profile_lists.fetch_add(1, Ordering::SeqCst);
        }
        self.inner.list(prefix, start_after, limit, revision).await
    }
    async fn count(&self, prefix: &str) -> store::Result<i64> {
        self.inner.count(prefix).await
    }
    async fn create(&self, key: &str, value: Vec<u8>) -> store::Result<Revision> {
        self.inner.create(key, value).await
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Revision,
    ) -> store::Result<Revision> {
        self.inner.update(key, value, expected).await
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> store::Result<(Revision, KeyValue)> {
        self.inner.delete(key, expected).await
    }
    /// Events arrive 20 ms late, so that only write-through can make a write visible to the
    /// next request.
    async fn watch(&self, prefix: &str, after: Revision) -> store::Result<WatchStream> {
        let events = self.inner.watch(prefix, after).await?;
        Ok(Box::pin(events.then(|ev| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ev
        })))
    }
    async fn compact(&self, revision: Revision) -> store::Result<()> {
        self.inner.compact(revision).await
    }
}

struct Server {
    st: Arc<State>,
    store: Arc<Counting>,
}

async fn server(shared: Arc<dyn Backend>, tag: &str) -> Server {
    let store = Arc::new(Counting {
        inner: shared,
        namespace_gets: AtomicUsize::new(0),
        profile_lists: AtomicUsize::new(0),
    });
    let backend: Arc<dyn Backend> = store.clone();
    let objects = Objects::new(backend.clone(), apiserver::default_admission(backend));
    apiserver::bootstrap(&objects).await.unwrap();
    let st = Arc::new(State {
        objects,
        tokens: apiserver::Tokens::new([TOKEN.to_string()]),
        pod_proxy: Arc::new(apiserver::NoNodes),
        server_address: "127.0.0.1:6443".into(),
        watch_cache: None,
    });
    let s = Server { st, store };
    // The first pod create starts the caches; wait until they answer without store reads.
    s.create_pod("default", &format!("{tag}-warm-up")).await;
    for i in 0.. {
        let before = s.store.reads();
        let (code, v) = s.create_pod("default", &format!("{tag}-warm-up-{i}")).await;
        assert_eq!(code, StatusCode::CREATED, "{v}");
        if s.store.reads() == before {
            break;
        }
        assert!(i < 200, "the admission caches never answered alone");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    s
}

impl Server {
    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let resp = apiserver::router(self.st.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, v)
    }

    async fn create_pod(&self, ns: &str, name: &str) -> (StatusCode, Value) {
        let pod = json!({"metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        self.call("POST", &format!("/api/v1/namespaces/{ns}/pods"), Some(pod))
            .await
    }

    async fn create_namespace(&self, name: &str) {
        let (s, v) = self
            .call(
                "POST",
                "/api/v1/namespaces",
                Some(json!({"metadata": {"name": name}})),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    async fn create_profile(&self, name: &str, namespace: &str) {
        let p = json!({"apiVersion": "nodeless.io/v1", "kind": "ServerlessProfile",
            "metadata": {"name": name}, "spec": {"selectors": [{"namespace": namespace}]}});
        let (s, v) = self
            .call("POST", "/apis/nodeless.io/v1/serverlessprofiles", Some(p))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }

    async fn delete(&self, uri: &str) {
        let (s, v) = self.call("DELETE", uri, None).await;
        assert!(s.is_success(), "{s} {v}");
    }
}

fn serverless(pod: &Value) -> bool {
    pod["spec"]["schedulerName"] == "serverless-scheduler"
}

async fn servers() -> (Server, Server) {
    let shared: Arc<dyn Backend> = Arc::new(store::memory::Memory::new());
    (server(shared.clone(), "a").await, server(shared, "b").await)
}

/// Retry `f` until it holds (another server's write reaches this one through its watch).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..400 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn synced_caches_answer_pod_admission_without_store_reads() {
    let (a, _b) = servers().await;
    a.create_profile("fp", "default").await;
    let before = a.store.reads();
    for i in 0..20 {
        let (s, v) = a.create_pod("default", &format!("p{i}")).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert!(serverless(&v), "{v}");
    }
    assert_eq!(a.store.reads(), before, "(namespace gets, profile lists)");
}

#[tokio::test]
async fn profiles_written_here_apply_to_the_very_next_pod() {
    let (a, _b) = servers().await;
    let (_, v) = a.create_pod("default", "before").await;
    assert!(!serverless(&v), "{v}");
    a.create_profile("fp", "default").await;
    let (s, v) = a.create_pod("default", "after-create").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(serverless(&v), "{v}");
    assert_eq!(v["metadata"]["labels"]["nodeless.io/profile"], "fp");
    a.delete("/apis/nodeless.io/v1/serverlessprofiles/fp").await;
    let (s, v) = a.create_pod("default", "after-delete").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(!serverless(&v), "{v}");
}

#[tokio::test]
async fn profiles_written_by_another_server_arrive_through_the_watch() {
    let (a, b) = servers().await;
    b.create_profile("fp", "default").await;
    let mut n = 0;
    eventually("a pod on A is serverless", || {
        n += 1;
        let name = format!("c{n}");
        let a = &a;
        async move { serverless(&a.create_pod("default", &name).await.1) }
    })
    .await;
    b.delete("/apis/nodeless.io/v1/serverlessprofiles/fp").await;
    eventually("a pod on A is not serverless", || {
        n += 1;
        let name = format!("d{n}");
        let a = &a;
        async move { !serverless(&a.create_pod("default", &name).await.1) }
    })
    .await;
}

#[tokio::test]
async fn namespaces_created_here_or_elsewhere_take_pods_at_once() {
    let (a, b) = servers().await;
    a.create_namespace("here").await;
    let (s, v) = a.create_pod("here", "p").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Not in A's cache yet: A reads the store rather than refusing.
    b.create_namespace("elsewhere").await;
    let (s, v) = a.create_pod("elsewhere", "p").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test]
async fn pods_in_missing_namespaces_are_404() {
    let (a, _b) = servers().await;
    let (s, v) = a.create_pod("nowhere", "p").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["reason"], "NotFound");
    assert_eq!(v["details"]["kind"], "namespaces");
    assert_eq!(v["details"]["name"], "nowhere");
}

#[tokio::test]
async fn terminating_namespaces_refuse_pods() {
    let (a, b) = servers().await;
    a.create_namespace("gone").await;
    let (s, v) = a.create_pod("gone", "p").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = b.create_pod("gone", "p2").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Both caches have the namespace (live) by now.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.delete("/api/v1/namespaces/gone").await;
    // Deleted here: refused by the very next request.
    let (s, v) = a.create_pod("gone", "q").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["reason"], "Forbidden");
    assert!(
        v["message"].as_str().unwrap().contains("being terminated"),
        "{v}"
    );
    // Deleted by another server: refused once its watch has delivered the change.
    let mut n = 0;
    eventually("B refuses pods in the terminating namespace", || {
        n += 1;
        let name = format!("r{n}");
        let b = &b;
        async move { b.create_pod("gone", &name).await.0 == StatusCode::FORBIDDEN }
    })
    .await;
}

/// The same on a real etcd (each server its own client), when etcd is installed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_etcd() {
    if store::etcd::LocalEtcd::binary().is_none() {
        eprintln!("SKIPPED: etcd is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = store::etcd::LocalEtcd::start(dir.path()).await.unwrap();
    let endpoints = [etcd.endpoint().to_string()];
    let connect = || async {
        let e = store::etcd::Etcd::connect(&endpoints, "/admission-caches")
            .await
            .unwrap();
        Arc::new(e) as Arc<dyn Backend>
    };
    let a = server(connect().await, "a").await;
    let b = server(connect().await, "b").await;
    // Own writes: visible to the next request.
    a.create_profile("fp", "default").await;
    let (s, v) = a.create_pod("default", "p1").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert!(serverless(&v), "{v}");
    a.create_namespace("here").await;
    let (s, v) = a.create_pod("here", "p").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Another server's namespace: read from the store while A's cache lacks it.
    b.create_namespace("elsewhere").await;
    let (s, v) = a.create_pod("elsewhere", "p").await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    // Another server's profile delete reaches A through its watch.
    let mut n = 0;
    eventually("B sees A's profile", || {
        n += 1;
        let name = format!("b{n}");
        let b = &b;
        async move { serverless(&b.create_pod("default", &name).await.1) }
    })
    .await;
    b.delete("/apis/nodeless.io/v1/serverlessprofiles/fp").await;
    eventually("A sees B's profile delete", || {
        n += 1;
        let name = format!("a{n}");
        let a = &a;
        async move { !serverless(&a.create_pod("default", &name).await.1) }
    })
    .await;
    // Terminating: refused here at once, there once the watch delivers it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.delete("/api/v1/namespaces/here").await;
    let (s, v) = a.create_pod("here", "q").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    eventually("B refuses pods in the terminating namespace", || {
        n += 1;
        let name = format!("r{n}");
        let b = &b;
        async move { b.create_pod("here", &name).await.0 == StatusCode::FORBIDDEN }
    })
    .await;
    let (s, v) = a.create_pod("nowhere", "p").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let before = a.store.reads();
    for i in 0..10 {
        let (s, v) = a.create_pod("default", &format!("last{i}")).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
    }
    assert_eq!(a.store.reads(), before, "(namespace gets, profile lists)");
    drop((a, b));
    drop(etcd);
}
