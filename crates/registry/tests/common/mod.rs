//! Test harness: a registry in a temporary directory, driven through its router with `oneshot`.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use bytes::Bytes;
use http_body_util::BodyExt;
use registry::auth::Access;
use registry::digest::Digest;
use registry::meta::TagMutability;
use registry::names::RepoName;
use registry::{Config, Registry};
use tower::ServiceExt;

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    /// The spec error code of an error body.
    pub fn code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub reg: Arc<Registry>,
    pub router: axum::Router,
    /// `Bearer <token>` with every action on every repository.
    pub auth: String,
}

pub fn harness() -> Harness {
    harness_with(|dir| Registry::open_with(dir, Config::default()).unwrap())
}

pub fn harness_with(open: impl FnOnce(&std::path::Path) -> Registry) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let reg = Arc::new(open(dir.path()));
    let router = registry::router(reg.clone());
    let token = reg.authority().login_token(
        "test",
        vec![Access {
            repository: "*".into(),
            actions: vec!["pull".into(), "push".into(), "delete".into()],
        }],
        registry::registry::now_secs(),
    );
    Harness {
        dir,
        reg,
        router,
        auth: format!("Bearer {token}"),
    }
}

impl Harness {
    pub async fn create_repo(&self, name: &str) {
        self.reg
            .create_repository(&RepoName::parse(name).unwrap(), TagMutability::Mutable)
            .await
            .unwrap();
    }

    pub async fn send(
        &self,
        method: Method,
        uri: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Resp {
        let mut b = Request::builder().method(method).uri(uri);
        let mut has_auth = false;
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("authorization") {
                has_auth = true;
            }
            b = b.header(*k, *v);
        }
        if !has_auth {
            b = b.header("authorization", &self.auth);
        }
        b = b.header("host", "registry.test");
        let resp = self
            .router
            .clone()
            .oneshot(b.body(body.into()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.send(Method::GET, uri, &[], Body::empty()).await
    }

    /// Monolithic blob push; returns the digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let d = Digest::sha256_of(data);
        let r = self
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[("content-type", "application/octet-stream")],
                Bytes::copy_from_slice(data),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        d
    }

    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("content-type", media_type)],
            Bytes::copy_from_slice(body),
        )
        .await
    }

    /// Push a config and one layer and an OCI manifest referencing them; returns (manifest bytes,
    /// manifest digest).
    pub async fn push_image(&self, repo: &str, tag: &str, layer: &[u8]) -> (Vec<u8>, Digest) {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            Digest::sha256_of(layer)
        );
        let cd = self.push_blob(repo, config.as_bytes()).await;
        let ld = self.push_blob(repo, layer).await;
        let manifest = oci_manifest(&cd, config.len(), &[(ld, layer.len())], None);
        let r = self
            .put_manifest(repo, tag, registry::manifest::OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let d = Digest::sha256_of(&manifest);
        assert_eq!(r.header("docker-content-digest").unwrap(), d.to_string());
        (manifest, d)
    }
}

pub fn oci_manifest(
    config: &Digest,
    config_size: usize,
    layers: &[(Digest, usize)],
    subject: Option<(&Digest, usize)>,
) -> Vec<u8> {
    let mut m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": registry::manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
        "layers": layers.iter().map(|(d, s)| serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": s})).collect::<Vec<_>>(),
    });
    if let Some((d, s)) = subject {
        m["subject"] = serde_json::json!({"mediaType": registry::manifest::OCI_MANIFEST, "digest": d.to_string(), "size": s});
    }
    serde_json::to_vec(&m).unwrap()
}

impl Harness {
    /// A harness over an existing registry whose data lives in `dir` (not removed on drop).
    pub fn from_registry(reg: Arc<Registry>, _dir: &std::path::Path) -> Harness {
        let router = registry::router(reg.clone());
        let token = reg.authority().login_token(
            "test",
            vec![Access {
                repository: "*".into(),
                actions: vec!["pull".into(), "push".into(), "delete".into()],
            }],
            registry::registry::now_secs(),
        );
        Harness {
            dir: tempfile::tempdir().unwrap(),
            reg,
            router,
            auth: format!("Bearer {token}"),
        }
    }
}

pub struct Server {
    pub port: u16,
    /// A directory with the CA as `ca.crt` (for --cert-dir).
    pub certs: std::path::PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Serve the harness's router over TLS on a loopback port.
pub async fn serve_tls(h: &Harness) -> Server {
    let material = registry::tls::ensure(
        &h.dir.path().join("tls"),
        &registry::tls::default_names(&[]),
    )
    .unwrap();
    let certs = h.dir.path().join("client-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &material.ca_pem).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tls = registry::tls::server_config(&material).unwrap();
    tokio::spawn(registry::tls::serve(
        h.router.clone(),
        listener,
        Some(tls),
        async {
            let _ = rx.await;
        },
    ));
    Server {
        port,
        certs,
        stop: Some(tx),
    }
}
