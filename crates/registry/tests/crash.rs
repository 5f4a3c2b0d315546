//! Crash safety with a real process kill: a registry child process is SIGKILLed while a push is in
//! flight; after a restart every acknowledged push (blobs, manifests, tags, upload chunks) is there,
//! the interrupted upload is invisible, and its session is cleaned up.
//!
//! The child is this test binary re-run with `REGISTRY_CRASH_CHILD=<data dir>`: the `child_server`
//! test then serves the registry over plain HTTP on loopback and prints its port.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use http::Method;
use registry::client::AdminClient;
use registry::digest::Digest;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[tokio::test]
async fn child_server() {
    let Ok(dir) = std::env::var("REGISTRY_CRASH_CHILD") else {
        return; // only meaningful as the child of `kill_mid_push_loses_no_acknowledged_push`
    };
    let config = registry::Config {
        scheme: "http".into(),
        ..Default::default()
    };
    let reg = std::sync::Arc::new(registry::Registry::open_with(&dir, config).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("PORT {}", listener.local_addr().unwrap().port());
    registry::tls::serve(
        registry::router(reg),
        listener,
        None,
        std::future::pending(),
    )
    .await
    .unwrap();
}

struct Child {
    child: tokio::process::Child,
    client: AdminClient,
    port: u16,
}

async fn start(dir: &std::path::Path) -> Child {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_server",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("REGISTRY_CRASH_CHILD", dir)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("child exited before serving");
        // libtest prints `test child_server ... ` without a newline before the child's output
        if let Some(i) = line.find("PORT ") {
            break line[i + 5..].trim().parse().unwrap();
        }
    };
    let password = std::fs::read_to_string(dir.join("auth/admin-password")).unwrap();
    let client =
        AdminClient::new(&format!("http://127.0.0.1:{port}"), password.trim(), None).unwrap();
    Child {
        child,
        client,
        port,
    }
}

async fn push_blob(c: &AdminClient, repo: &str, data: &[u8]) -> Digest {
    let d = Digest::sha256_of(data);
    let (status, _, body) = c
        .request_with(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[],
            Bytes::copy_from_slice(data),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body:?}");
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_mid_push_loses_no_acknowledged_push() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = start(dir.path()).await;
    let c = child.client.clone();
    c.call(
        "CreateRepository",
        serde_json::json!({"repositoryName": "app"}),
    )
    .await
    .unwrap();
    // an acknowledged image
    let cfg = push_blob(&c, "app", b"{}").await;
    let layer: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let ld = push_blob(&c, "app", &layer).await;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": registry::manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg.to_string(), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let (status, _, _) = c
        .request_with(
            Method::PUT,
            "/v2/app/manifests/v1",
            &[("content-type", registry::manifest::OCI_MANIFEST)],
            Bytes::from(manifest.clone()),
        )
        .await
        .unwrap();
    assert_eq!(status, 201);
    // an acknowledged chunk of a resumable upload
    let (status, headers, _) = c
        .request_with(Method::POST, "/v2/app/blobs/uploads/", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 202);
    let session = headers["location"].to_str().unwrap().to_string();
    let big: Vec<u8> = (0..4_000_000u32).map(|i| (i % 241) as u8).collect();
    let (status, _, _) = c
        .request_with(
            Method::PATCH,
            &session,
            &[("content-range", "0-1999999")],
            Bytes::copy_from_slice(&big[..2_000_000]),
        )
        .await
        .unwrap();
    assert_eq!(status, 202);

    // a monolithic push interrupted half way: send headers and half the body, then kill the server
    let half = Digest::sha256_of(&big);
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", child.port))
        .await
        .unwrap();
    let password = std::fs::read_to_string(dir.path().join("auth/admin-password")).unwrap();
    let auth = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("x:{}", password.trim()),
    );
    sock.write_all(
        format!(
            "POST /v2/app/blobs/uploads/?digest={half} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Basic {auth}\r\ncontent-length: {}\r\n\r\n",
            big.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    sock.write_all(&big[..1_500_000]).await.unwrap();
    sock.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.child.start_kill().unwrap();
    child.child.wait().await.unwrap();
    drop(sock);

    // restart
    let mut child = start(dir.path()).await;
    let c = &child.client;
    let (status, headers, body) = c
        .request_with(Method::GET, "/v2/app/manifests/v1", &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.as_ref(), manifest.as_slice());
    assert_eq!(
        headers["docker-content-digest"].to_str().unwrap(),
        Digest::sha256_of(&manifest).to_string()
    );
    let (status, _, body) = c
        .request_with(
            Method::GET,
            &format!("/v2/app/blobs/{ld}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(Digest::sha256_of(&body), ld);
    // the interrupted blob is not visible
    let (status, _, _) = c
        .request_with(
            Method::HEAD,
            &format!("/v2/app/blobs/{half}"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(status, 404);
    // the acknowledged chunk is still there: resume and finish
    let (status, headers, _) = c
        .request_with(Method::GET, &session, &[], Bytes::new())
        .await
        .unwrap();
    assert_eq!(status, 204);
    assert_eq!(headers["range"].to_str().unwrap(), "0-1999999");
    let (status, _, body) = c
        .request_with(
            Method::PUT,
            &format!("{session}?digest={half}"),
            &[("content-range", "2000000-3999999")],
            Bytes::copy_from_slice(&big[2_000_000..]),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{body:?}");

    // while it runs, nobody else may open the data directory
    assert!(matches!(
        registry::Registry::open(dir.path()),
        Err(registry::RegistryError::Locked(_))
    ));
    child.child.start_kill().unwrap();
    child.child.wait().await.unwrap();

    // the interrupted session is left as an upload only, and the cleaner removes it
    let store = registry::store::fs::FsStore::open(dir.path().join("store")).unwrap();
    use registry::store::BlobStore;
    let left = store.uploads().await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reg = registry::Registry::open_with(
        dir.path(),
        registry::Config {
            upload_ttl: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(reg.clean_uploads().await.unwrap(), 1);
    assert!(store.uploads().await.unwrap().is_empty());
    // exactly the acknowledged blobs exist: no trace of the interrupted push
    let mut blobs: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.digest.to_string())
        .collect();
    blobs.sort();
    let mut want = vec![
        cfg.to_string(),
        ld.to_string(),
        Digest::sha256_of(&manifest).to_string(),
        half.to_string(),
    ];
    want.sort();
    assert_eq!(blobs, want);
}
