//! End-to-end with podman: `podman login --password-stdin` with a login password, push an image built
//! from a tarball, pull it back, into a private podman store (vfs). Skips loudly without podman.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

async fn podman(store: &Path, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("podman");
    cmd.arg("--root")
        .arg(store.join("root"))
        .arg("--runroot")
        .arg(store.join("runroot"))
        .arg("--storage-driver")
        .arg("vfs")
        .args(args)
        .env("REGISTRY_AUTH_FILE", store.join("auth.json"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        s.write_all(input.as_bytes()).await.unwrap();
        drop(s);
    }
    child.wait_with_output().await.unwrap()
}

fn ok(o: &std::process::Output) -> bool {
    if !o.status.success() {
        eprintln!("stderr: {}", String::from_utf8_lossy(&o.stderr));
    }
    o.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn podman_login_push_pull() {
    let works = std::process::Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !works {
        eprintln!("SKIPPED: podman is not installed (apt-get install -y podman)");
        return;
    }
    let h = common::harness();
    h.create_repo("demo/app").await;
    let srv = common::serve_tls(&h).await;
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::write(rootfs.join("etc/greeting"), b"hello podman\n").unwrap();
    let tar = work.path().join("rootfs.tar");
    assert!(
        std::process::Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap()
            .success()
    );
    let import = podman(
        &store,
        &["import", tar.to_str().unwrap(), "localhost/podtest:v1"],
        None,
    )
    .await;
    if !import.status.success() {
        eprintln!(
            "SKIPPED: podman cannot run here: {}",
            String::from_utf8_lossy(&import.stderr)
        );
        return;
    }
    let host = format!("127.0.0.1:{}", srv.port);
    let certs = srv.certs.to_str().unwrap().to_string();
    let password = h.auth.strip_prefix("Bearer ").unwrap().to_string();
    let login = podman(
        &store,
        &[
            "login",
            "--cert-dir",
            &certs,
            "--username",
            "nodeless",
            "--password-stdin",
            &host,
        ],
        Some(&password),
    )
    .await;
    assert!(ok(&login));
    let image = format!("{host}/demo/app:v1");
    assert!(ok(&podman(
        &store,
        &["push", "--cert-dir", &certs, "localhost/podtest:v1", &image],
        None
    )
    .await));
    let tags = h.reg.snapshot().await;
    let digest = tags["demo/app"]["v1"].clone();
    assert!(ok(
        &podman(&store, &["rmi", "localhost/podtest:v1"], None).await
    ));
    assert!(ok(&podman(
        &store,
        &["pull", "--cert-dir", &certs, &image],
        None
    )
    .await));
    let out = podman(
        &store,
        &["image", "inspect", "--format", "{{.Digest}}", &image],
        None,
    )
    .await;
    assert!(ok(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);
    // after logout, pulls are refused
    assert!(ok(&podman(&store, &["logout", &host], None).await));
    assert!(ok(&podman(&store, &["rmi", &image], None).await));
    let out = podman(&store, &["pull", "--cert-dir", &certs, &image], None).await;
    assert!(!out.status.success());
    // podman's storage holds root-owned vfs layers: remove it through podman
    let _ = podman(&store, &["system", "reset", "--force"], None).await;
}
