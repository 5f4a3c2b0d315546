//! Test images built here from Debian's static busybox (no internet): an OCI layout on disk
//! that `skopeo copy` pushes to the cluster's registry.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use sha2::Digest as _;

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "true", "false", "env", "id", "hostname", "head", "ps",
    "kill", "test", "grep", "wc", "mkdir", "touch", "wget", "nc", "httpd", "ip", "date", "seq",
    "printf", "expr",
];

fn sha256(data: &[u8]) -> String {
    let d = sha2::Sha256::digest(data);
    let mut s = String::from("sha256:");
    for b in d {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn blob(dir: &Path, data: &[u8]) -> (String, usize) {
    let digest = sha256(data);
    let p = dir
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    std::fs::write(p, data).unwrap();
    (digest, data.len())
}

/// A header with every numeric field set (uid, gid, mtime): unpackers reject empty ones.
fn header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// The root filesystem layer: busybox with applet links, /etc files, and `files` (path, content).
fn layer(files: &[(&str, &str)]) -> Vec<u8> {
    let bb = std::fs::read("/bin/busybox").expect("install Debian's busybox-static");
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, p: &str| {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, std::io::empty()).unwrap();
    };
    for d in ["bin/", "etc/", "tmp/", "root/", "www/", "data/"] {
        dir(&mut b, d);
    }
    let file = |b: &mut tar::Builder<Vec<u8>>, p: &str, data: &[u8], mode: u32| {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, p, data).unwrap();
    };
    file(&mut b, "bin/busybox", &bb, 0o755);
    file(
        &mut b,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        0o644,
    );
    file(&mut b, "etc/group", b"root:x:0:\nnobody:x:65534:\n", 0o644);
    for (p, c) in files {
        file(&mut b, p, c.as_bytes(), 0o644);
    }
    for a in APPLETS {
        let mut h = header();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// Writes an OCI layout at `dir` with one image tagged `tag`: busybox, `files`, and `cmd`.
pub fn busybox_layout(dir: &Path, tag: &str, cmd: &[&str], files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tar = layer(files);
    let diff_id = sha256(&tar);
    let (layer_digest, layer_size) = blob(dir, &tar);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    let (config_digest, config_size) = blob(dir, &serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let (m_digest, m_size) = blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m_digest, "size": m_size,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}
