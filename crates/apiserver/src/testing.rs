//! An in-process API server on a loopback port (in-memory store), for tests of components that
//! talk to the API server as clients (controllers, schedulers, agents).

use std::sync::Arc;

use crate::admission::Admission;
use crate::objects::Objects;

/// A running test server; stops when dropped.
pub struct TestServer {
    pub url: String,
    pub token: String,
    pub ca_pem: String,
    /// An admin kubeconfig (YAML) for this server.
    pub kubeconfig: String,
    pub state: Arc<crate::State>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempdir::Dir,
}

mod tempdir {
    /// A temporary directory removed on drop (keeps `tempfile` out of the library's dependencies).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Start a server on 127.0.0.1 with a fresh in-memory store.
    pub async fn start() -> Self {
        Self::start_with(Admission::default()).await
    }

    /// Start with extra admission plugins after the built-in ones (pod defaults, serverless profiles).
    /// Pod logs/exec/attach/port-forward go to the agents through
    /// [`AgentProxy`](crate::podproxy::AgentProxy) with the server's admin token.
    pub async fn start_with(extra: Admission) -> Self {
        Self::start_with_proxy(extra, |token| {
            Arc::new(crate::podproxy::AgentProxy::new(token.to_string()))
        })
        .await
    }

    /// Start with extra admission plugins and the `PodProxy` that `proxy` makes from the
    /// server's admin token (e.g. `|_| Arc::new(apiserver::NoNodes)`).
    pub async fn start_with_proxy(
        extra: Admission,
        proxy: impl FnOnce(&str) -> Arc<dyn crate::PodProxy>,
    ) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "nodeless-test-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        let pki = crate::pki::Pki::ensure(&dir, &[]).expect("make test PKI");
        let backend: Arc<dyn store::Backend> = Arc::new(store::memory::Memory::new());
        let admission = crate::default_admission(backend.clone()).then(extra);
        let watch_cache = crate::watchcache::WatchCache::start(backend.clone(), 10_000)
            .await
            .expect("watch cache");
        let objects = Objects::new(backend, admission);
        crate::bootstrap(&objects).await.expect("bootstrap");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let url = format!("https://127.0.0.1:{}", addr.port());
        let state = Arc::new(crate::State {
            objects,
            tokens: crate::Tokens::new([pki.admin_token.clone()]),
            pod_proxy: proxy(&pki.admin_token),
            server_address: format!("127.0.0.1:{}", addr.port()),
            watch_cache: Some(watch_cache),
        });
        let tls = pki.server_config().expect("tls config");
        let app = crate::router(state.clone());
        let task = tokio::spawn(async move {
            let _ = crate::serve_tls(listener, tls, app).await;
        });
        Self {
            kubeconfig: pki.kubeconfig(&url),
            url,
            token: pki.admin_token.clone(),
            ca_pem: pki.ca_pem.clone(),
            state,
            task,
            _dir: tempdir::Dir(dir),
        }
    }
}
