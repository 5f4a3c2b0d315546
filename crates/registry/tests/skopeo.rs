//! End-to-end with real clients: skopeo copies a handmade OCI layout into the registry over HTTPS
//! (the registry's own CA, token auth) and back out; the result is byte-identical. Skips loudly when
//! skopeo is not installed (`apt-get install -y skopeo`).
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use registry::digest::Digest;

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn write_blob(layout: &Path, data: &[u8]) -> (Digest, usize) {
    let d = Digest::sha256_of(data);
    let dir = layout.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(d.hex()), data).unwrap();
    (d, data.len())
}

/// An OCI layout with one image: a tar of a few files, tagged `tag`.
fn make_layout(root: &Path, tag: &str) -> Digest {
    let files = root.join("rootfs");
    std::fs::create_dir_all(files.join("etc")).unwrap();
    std::fs::write(files.join("etc/hello.txt"), b"hello from nodeless\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(files.join("data.bin"), &big).unwrap();
    let tar = root.join("layer.tar");
    let st = Command::new("tar")
        .args([
            "--sort=name",
            "--mtime=@0",
            "--owner=0",
            "--group=0",
            "--numeric-owner",
            "-C",
        ])
        .arg(&files)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let diff_id = Digest::sha256_of(&std::fs::read(&tar).unwrap());
    // gzip it, as clients push (an uncompressed layer would be recompressed by skopeo)
    assert!(
        Command::new("gzip")
            .args(["-n", "-f"])
            .arg(&tar)
            .status()
            .unwrap()
            .success()
    );
    let layer = std::fs::read(root.join("layer.tar.gz")).unwrap();
    let layout = root.join("src");
    std::fs::create_dir_all(&layout).unwrap();
    let (ld, ls) = write_blob(&layout, &layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    }))
    .unwrap();
    let (cd, cs) = write_blob(&layout, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": registry::manifest::OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cs},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.to_string(), "size": ls}],
    }))
    .unwrap();
    let (md, ms) = write_blob(&layout, &manifest);
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": registry::manifest::OCI_MANIFEST, "digest": md.to_string(), "size": ms,
                "annotations": {"org.opencontainers.image.ref.name": tag}}],
        }))
        .unwrap(),
    )
    .unwrap();
    md
}

fn blobs_of(layout: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

async fn skopeo(args: Vec<String>) -> std::process::Output {
    tokio::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .args(&args)
        .output()
        .await
        .unwrap()
}

fn s(x: impl AsRef<std::ffi::OsStr>) -> String {
    x.as_ref().to_string_lossy().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_copy_roundtrip_is_byte_identical() {
    if !have("skopeo") {
        eprintln!("SKIPPED: skopeo is not installed (apt-get install -y skopeo)");
        return;
    }
    let h = common::harness();
    let srv = common::serve_tls(&h).await;
    let work = tempfile::tempdir().unwrap();
    let md = make_layout(work.path(), "v1");
    let src = work.path().join("src");
    let dst = work.path().join("dst");
    let token = h.auth.strip_prefix("Bearer ").unwrap().to_string();
    let creds = format!("nodeless:{token}");
    let remote = format!("docker://127.0.0.1:{}/team/app:v1", srv.port);

    // the repository does not exist yet: refused, with a hint
    let out = skopeo(vec![
        "copy".into(),
        "--dest-cert-dir".into(),
        s(&srv.certs),
        "--dest-creds".into(),
        creds.clone(),
        format!("oci:{}:v1", s(&src)),
        remote.clone(),
    ])
    .await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("create-repository"), "{err}");

    h.create_repo("team/app").await;
    // wrong credentials
    let out = skopeo(vec![
        "copy".into(),
        "--dest-cert-dir".into(),
        s(&srv.certs),
        "--dest-creds".into(),
        "nodeless:wrong".into(),
        format!("oci:{}:v1", s(&src)),
        remote.clone(),
    ])
    .await;
    assert!(!out.status.success());
    // the real push
    let out = skopeo(vec![
        "copy".into(),
        "--dest-cert-dir".into(),
        s(&srv.certs),
        "--dest-creds".into(),
        creds.clone(),
        format!("oci:{}:v1", s(&src)),
        remote.clone(),
    ])
    .await;
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = skopeo(vec![
        "inspect".into(),
        "--cert-dir".into(),
        s(&srv.certs),
        "--creds".into(),
        creds.clone(),
        remote.clone(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["Digest"], md.to_string());
    assert_eq!(info["Architecture"], "amd64");
    let out = skopeo(vec![
        "inspect".into(),
        "--raw".into(),
        "--cert-dir".into(),
        s(&srv.certs),
        "--creds".into(),
        creds.clone(),
        remote.clone(),
    ])
    .await;
    assert_eq!(Digest::sha256_of(&out.stdout), md);

    let out = skopeo(vec![
        "copy".into(),
        "--src-cert-dir".into(),
        s(&srv.certs),
        "--src-creds".into(),
        creds.clone(),
        remote.clone(),
        format!("oci:{}:v1", s(&dst)),
    ])
    .await;
    assert!(
        out.status.success(),
        "skopeo copy back: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(blobs_of(&src), blobs_of(&dst));

    // a second push of the same image is cheap (blobs exist) and gives the same digest
    let out = skopeo(vec![
        "copy".into(),
        "--dest-cert-dir".into(),
        s(&srv.certs),
        "--dest-creds".into(),
        creds.clone(),
        format!("oci:{}:v1", s(&src)),
        format!("docker://127.0.0.1:{}/team/app:v1-again", srv.port),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        h.reg.snapshot().await["team/app"]["v1-again"],
        md.to_string()
    );

    // a pull-only login password can pull but not push
    let pull_only = h.reg.authority().login_token(
        "ci",
        vec![registry::auth::Access {
            repository: "team/*".into(),
            actions: vec!["pull".into()],
        }],
        registry::registry::now_secs(),
    );
    let ro = format!("nodeless:{pull_only}");
    let out = skopeo(vec![
        "inspect".into(),
        "--raw".into(),
        "--cert-dir".into(),
        s(&srv.certs),
        "--creds".into(),
        ro.clone(),
        remote.clone(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = skopeo(vec![
        "copy".into(),
        "--dest-cert-dir".into(),
        s(&srv.certs),
        "--dest-creds".into(),
        ro,
        format!("oci:{}:v1", s(&src)),
        format!("docker://127.0.0.1:{}/team/app:v2", srv.port),
    ])
    .await;
    assert!(!out.status.success());
    assert!(!h.reg.snapshot().await["team/app"].contains_key("v2"));
}
