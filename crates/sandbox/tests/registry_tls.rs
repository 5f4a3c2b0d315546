//! Pulling from the cluster's own registry (the `registry` crate) as agents do: HTTPS with the
//! cluster's CA (learnt at run time with `ImageStore::trust_roots_pem`) and basic credentials
//! (`nodeless` + a pull token) exchanged for a Bearer token. The image is pushed with skopeo.
//! Skips loudly when skopeo is not installed.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use registry::auth::Access;
use registry::meta::TagMutability;
use registry::names::RepoName;
use sandbox::image::{Auth, ImageStore, PullOptions, Source, StoreError, StoreOptions};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The error and all its causes, one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// The registry over HTTPS on a loopback port; stops when the sender is dropped.
struct Served {
    reg: Arc<registry::Registry>,
    port: u16,
    ca_pem: String,
    /// A directory with `ca.crt`, for skopeo's `--dest-cert-dir`.
    certs: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(dir: &Path) -> Served {
    let reg = Arc::new(
        registry::Registry::open_with(dir.join("registry"), registry::Config::default()).unwrap(),
    );
    let material =
        registry::tls::ensure(&dir.join("tls"), &registry::tls::default_names(&[])).unwrap();
    let certs = dir.join("client-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &material.ca_pem).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(registry::tls::serve(
        registry::router(reg.clone()),
        listener,
        Some(registry::tls::server_config(&material).unwrap()),
        async {
            let _ = rx.await;
        },
    ));
    Served {
        reg,
        port,
        ca_pem: material.ca_pem,
        certs,
        _stop: tx,
    }
}

fn basic(password: &str) -> PullOptions {
    PullOptions {
        auth: Auth::Basic {
            username: "nodeless".into(),
            password: password.into(),
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_the_cluster_registry_with_its_ca_and_basic_auth() {
    if !have("skopeo") {
        assert!(
            std::env::var_os("NODELESS_REQUIRE_SANDBOX").is_none(),
            "skopeo is required (NODELESS_REQUIRE_SANDBOX is set; apt-get install -y skopeo)"
        );
        eprintln!("SKIPPED: skopeo is not installed (apt-get install -y skopeo)");
        return;
    }
    let (_d, dir) = common::data_dir();
    let srv = serve(&dir).await;
    srv.reg
        .create_repository(
            &RepoName::parse("team/busybox").unwrap(),
            TagMutability::Mutable,
        )
        .await
        .unwrap();

    // Push as an admin would.
    let layout = dir.join("layout");
    let built = common::busybox_layout(&layout, &["sh"]);
    let out = tokio::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .arg("copy")
        .arg("--dest-cert-dir")
        .arg(&srv.certs)
        .arg("--dest-creds")
        .arg(format!("nodeless:{}", srv.reg.authority().admin_password()))
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://127.0.0.1:{}/team/busybox:1", srv.port))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What `nodeless server` puts in the kube-system/nodeless-registry Secret: a pull token.
    let pull_token = srv.reg.authority().login_token(
        "nodeless",
        vec![Access {
            repository: "team/busybox".into(),
            actions: vec!["pull".into()],
        }],
        registry::registry::now_secs(),
    );
    let source: Source = format!("127.0.0.1:{}/team/busybox:1", srv.port)
        .parse()
        .unwrap();
    let store = ImageStore::open(dir.join("images"), StoreOptions::default()).unwrap();

    // The registry's CA is not trusted yet: a certificate error (not a downgrade to plain HTTP).
    let err = store.pull(&source, &basic(&pull_token)).await.unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, StoreError::Registry { .. }), "{text}");
    assert!(text.contains("certificate"), "{text}");
    eprintln!("untrusted CA: {text}");
    assert!(store.get(&source).unwrap().is_none());

    // Garbage is refused and changes nothing.
    assert!(matches!(
        store.trust_roots_pem(b"not a certificate"),
        Err(StoreError::Certificate(_))
    ));
    assert!(matches!(
        store.trust_roots_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        Err(StoreError::Certificate(_))
    ));
    store.trust_roots_pem(srv.ca_pem.as_bytes()).unwrap();
    // Learning the same root again is harmless.
    store.trust_roots_pem(srv.ca_pem.as_bytes()).unwrap();

    // A wrong password: the token exchange is refused.
    let err = store.pull(&source, &basic("wrong")).await.unwrap_err();
    let text = chain(&err);
    assert!(text.contains("UNAUTHORIZED"), "{text}");
    eprintln!("wrong password: {text}");

    // No credentials at all: refused as well.
    let err = store
        .pull(&source, &PullOptions::default())
        .await
        .unwrap_err();
    let text = chain(&err);
    // oci-client: "Not authorized: url https://..." (the manifest request's 401).
    assert!(text.to_lowercase().contains("not authorized"), "{text}");
    assert!(store.get(&source).unwrap().is_none());

    // The CA and the pull token: the image comes down, verified and unpacked.
    let img = store.pull(&source, &basic(&pull_token)).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
    assert_eq!(img.layers, built.layer_digests);
    assert!(
        store
            .layer_dir(&img.layers[0])
            .join("bin/busybox")
            .is_file()
    );
    assert_eq!(
        img.config.config.as_ref().unwrap().cmd.as_deref(),
        Some(&["sh".to_owned()][..])
    );
    assert_eq!(store.get(&source).unwrap(), Some(img));
}

#[tokio::test]
async fn plain_http_registries_on_loopback_still_work() {
    // A plain-HTTP registry on loopback: the HTTPS attempt fails, plain HTTP is used.
    let reg = common::Registry::start();
    let (_d, dir) = common::data_dir();
    let built = common::busybox_layout(&dir.join("layout"), &["sh"]);
    reg.push("lib/busybox", "1", &built).await;
    let store = ImageStore::open(dir.join("images"), StoreOptions::default()).unwrap();
    let source: Source = format!("{}/lib/busybox:1", reg.addr).parse().unwrap();
    let img = store.pull(&source, &PullOptions::default()).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
}
