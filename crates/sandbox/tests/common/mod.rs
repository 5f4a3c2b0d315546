//! Test fixtures: images built here from Debian's static busybox, written as OCI layouts and
//! served by a real `docker-registry` on a loopback port. No test touches the internet.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use sandbox::digest::Digest;

pub const BUSYBOX: &str = "/bin/busybox";
pub const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "true", "false", "env", "id", "hostname", "head", "yes",
    "dd", "kill", "ps", "test", "grep", "wc", "pwd", "mkdir", "rm", "touch", "stat", "ip", "wget",
    "nc", "httpd", "timeout", "uname", "seq",
];

#[derive(Clone, Copy, Debug)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

pub enum Entry {
    File(&'static str, Vec<u8>, u32),
    Dir(&'static str),
    Symlink(&'static str, &'static str),
}

/// A tar of `entries`.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match e {
            Entry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(*mode);
                h.set_cksum();
                b.append_data(&mut h, p, &data[..]).unwrap();
            }
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                h.set_cksum();
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                h.set_mode(0o777);
                b.append_link(&mut h, p, target).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// The base layer: static busybox with applet symlinks, /etc, /tmp.
pub fn busybox_layer() -> Vec<u8> {
    let bb = std::fs::read(BUSYBOX).expect("install Debian's busybox-static");
    let mut entries = vec![
        Entry::Dir("bin/"),
        Entry::File("bin/busybox", bb, 0o755),
        Entry::Dir("etc/"),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n".to_vec(),
            0o644,
        ),
        Entry::File("etc/group", b"root:x:0:\nnobody:x:65534:\n".to_vec(), 0o644),
        Entry::File("etc/remove-me", b"gone in layer 2\n".to_vec(), 0o644),
        Entry::Dir("data/"),
        Entry::File("data/old", b"hidden by opaque dir\n".to_vec(), 0o644),
        Entry::Dir("tmp/"),
        Entry::Dir("root/"),
    ];
    for a in APPLETS {
        let p: &'static str = Box::leak(format!("bin/{a}").into_boxed_str());
        entries.push(Entry::Symlink(p, "busybox"));
    }
    tar(&entries)
}

/// A second layer exercising whiteouts and opaque directories.
pub fn top_layer() -> Vec<u8> {
    tar(&[
        Entry::Dir("etc/"),
        Entry::File("etc/.wh.remove-me", vec![], 0o644),
        Entry::File("etc/motd", b"hello from layer 2\n".to_vec(), 0o644),
        Entry::Dir("data/"),
        Entry::File("data/.wh..wh..opq", vec![], 0o644),
        Entry::File("data/new", b"new\n".to_vec(), 0o644),
    ])
}

pub fn compress(t: &[u8], c: Compression) -> (Vec<u8>, &'static str) {
    match c {
        Compression::None => (t.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(t).unwrap();
            (
                gz.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Compression::Zstd => (
            ruzstd::encoding::compress_to_vec(t, ruzstd::encoding::CompressionLevel::Fastest),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

/// The manifest format an image is built in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OCI image manifest and index.
    Oci,
    /// Docker image manifest v2 schema 2 and manifest list, with Docker's config and layer media
    /// types (`rootfs.diff.tar.gzip`; zstd layers are written gzip, which Docker's types allow).
    Docker,
}

pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Blobs of one image: (digest, bytes, media type) for each, plus the manifest bytes.
pub struct Built {
    pub blobs: Vec<(Digest, Vec<u8>)>,
    pub manifest: Vec<u8>,
    pub manifest_digest: Digest,
    pub media_type: &'static str,
    /// When built with an index: the index bytes and digest.
    pub index: Option<(Vec<u8>, Digest)>,
    /// The media type of the index (an OCI index or a Docker manifest list).
    pub index_media_type: &'static str,
    pub layer_digests: Vec<Digest>,
    /// Other manifests the index names (a decoy for another platform).
    pub extra_manifests: Vec<(Digest, Vec<u8>)>,
}

/// Builds an OCI image from uncompressed layer tars. `cmd` becomes the config's Cmd.
pub fn build(layers: &[(Vec<u8>, Compression)], cmd: &[&str], with_index: bool) -> Built {
    build_as(Format::Oci, layers, cmd, with_index)
}

/// Builds an image in `format` from uncompressed layer tars (see [`build`]); with an index, the
/// index (or manifest list) also names a decoy manifest for linux/arm64.
pub fn build_as(
    format: Format,
    layers: &[(Vec<u8>, Compression)],
    cmd: &[&str],
    with_index: bool,
) -> Built {
    let docker = format == Format::Docker;
    let (manifest_type, config_type, index_type) = if docker {
        (
            DOCKER_MANIFEST,
            "application/vnd.docker.container.image.v1+json",
            DOCKER_LIST,
        )
    } else {
        (
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.oci.image.index.v1+json",
        )
    };
    let mut blobs = Vec::new();
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut layer_digests = Vec::new();
    for (t, c) in layers {
        let (b, mt) = match (docker, c) {
            (false, c) => compress(t, *c),
            (true, Compression::None) => {
                (t.clone(), "application/vnd.docker.image.rootfs.diff.tar")
            }
            (true, _) => (
                compress(t, Compression::Gzip).0,
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
            ),
        };
        let d = Digest::of(&b);
        diff_ids.push(Digest::of(t).to_string());
        descs.push(serde_json::json!({"mediaType": mt, "digest": d.to_string(), "size": b.len()}));
        layer_digests.push(d.clone());
        blobs.push((d, b));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "FROM_IMAGE=yes"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = Digest::of(&config);
    blobs.push((config_digest.clone(), config.clone()));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": {"mediaType": config_type, "digest": config_digest.to_string(), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let manifest_digest = Digest::of(&manifest);
    let mut extra_manifests = Vec::new();
    let index = with_index.then(|| {
        let mut decoy: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        decoy["annotations"] = serde_json::json!({"decoy": "arm64"});
        let decoy = serde_json::to_vec(&decoy).unwrap();
        let bogus = Digest::of(&decoy);
        extra_manifests.push((bogus.clone(), decoy.clone()));
        let idx = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": index_type,
            "manifests": [
                {"mediaType": manifest_type, "digest": bogus.to_string(), "size": decoy.len(),
                 "platform": {"architecture": "arm64", "os": "linux"}},
                {"mediaType": manifest_type, "digest": manifest_digest.to_string(),
                 "size": manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
            ]
        }))
        .unwrap();
        let d = Digest::of(&idx);
        (idx, d)
    });
    Built {
        blobs,
        manifest,
        manifest_digest,
        media_type: manifest_type,
        index,
        index_media_type: index_type,
        layer_digests,
        extra_manifests,
    }
}

/// Writes `built` as an OCI layout in `dir` under `tag`.
pub fn write_layout(dir: &Path, tag: &str, built: &Built) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for (d, b) in &built.blobs {
        std::fs::write(blobs.join(d.hex()), b).unwrap();
    }
    std::fs::write(blobs.join(built.manifest_digest.hex()), &built.manifest).unwrap();
    for (d, m) in &built.extra_manifests {
        std::fs::write(blobs.join(d.hex()), m).unwrap();
    }
    let (top, top_type, size) = match &built.index {
        Some((idx, d)) => {
            std::fs::write(blobs.join(d.hex()), idx).unwrap();
            (d.clone(), built.index_media_type, idx.len())
        }
        None => (
            built.manifest_digest.clone(),
            built.media_type,
            built.manifest.len(),
        ),
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": top_type, "digest": top.to_string(), "size": size,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}]
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// The usual test image: busybox + the whiteout layer, gzip, as an OCI layout under `dir`.
pub fn busybox_layout(dir: &Path, cmd: &[&str]) -> Built {
    let built = build(
        &[
            (busybox_layer(), Compression::Gzip),
            (top_layer(), Compression::Zstd),
        ],
        cmd,
        false,
    );
    write_layout(dir, "latest", &built);
    built
}

/// A `docker-registry` (distribution 2.8) on a free loopback port, killed on drop.
pub struct Registry {
    pub addr: String,
    child: Child,
    /// How [`Registry::push`] authenticates.
    push_auth: oci_client::secrets::RegistryAuth,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with("", &[], oci_client::secrets::RegistryAuth::Anonymous)
    }

    /// A registry that wants basic credentials: `user` with the bcrypt hash `bcrypt_hash` (an
    /// htpasswd line's second field). [`Registry::push`] uses `user` and `password`.
    pub fn start_with_htpasswd(user: &str, password: &str, bcrypt_hash: &str) -> Registry {
        Self::start_with(
            "auth:\n  htpasswd:\n    realm: test-realm\n    path: {dir}/htpasswd\n",
            &[("htpasswd", &format!("{user}:{bcrypt_hash}\n"))],
            oci_client::secrets::RegistryAuth::Basic(user.into(), password.into()),
        )
    }

    /// The registry's own copy of blob `d` (to tamper with).
    pub fn blob_file(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self._dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// A registry with `extra` appended to its configuration (`{dir}` stands for its directory,
    /// where `files` (name, content) are written first); pushes authenticate with `push_auth`.
    fn start_with(
        extra: &str,
        files: &[(&str, &str)],
        push_auth: oci_client::secrets::RegistryAuth,
    ) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("install Debian's docker-registry");
        for _ in 0..200 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Registry {
                    addr,
                    child,
                    push_auth,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("docker-registry did not listen on {addr}");
    }

    /// Pushes `built` as `repo:tag` (the index when there is one), byte for byte.
    pub async fn push(&self, repo: &str, tag: &str, built: &Built) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = oci_client::Client::new(oci_client::client::ClientConfig {
            protocol: oci_client::client::ClientProtocol::Http,
            ..Default::default()
        });
        let auth = self.push_auth.clone();
        let r: oci_client::Reference = format!("{}/{repo}:{tag}", self.addr).parse().unwrap();
        client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        client
            .auth(&r, &auth, oci_client::RegistryOperation::Push)
            .await
            .unwrap();
        for (d, b) in &built.blobs {
            client
                .push_blob(&r, b.clone(), &d.to_string())
                .await
                .unwrap();
        }
        let hv = |s: &str| http::HeaderValue::from_str(s).unwrap();
        let by_digest: oci_client::Reference =
            format!("{}/{repo}@{}", self.addr, built.manifest_digest)
                .parse()
                .unwrap();
        match &built.index {
            Some((idx, _)) => {
                for (d, m) in &built.extra_manifests {
                    let r: oci_client::Reference =
                        format!("{}/{repo}@{d}", self.addr).parse().unwrap();
                    client
                        .push_manifest_raw(&r, m.clone(), hv(built.media_type))
                        .await
                        .unwrap();
                }
                client
                    .push_manifest_raw(&by_digest, built.manifest.clone(), hv(built.media_type))
                    .await
                    .unwrap();
                client
                    .push_manifest_raw(&r, idx.clone(), hv(built.index_media_type))
                    .await
                    .unwrap();
            }
            None => {
                client
                    .push_manifest_raw(&r, built.manifest.clone(), hv(built.media_type))
                    .await
                    .unwrap();
            }
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn data_dir() -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().to_owned();
    (d, p)
}

/// A host for pod tests: a data dir holding the busybox test image (with `sh`), a pod network
/// of its own (bridge netns `nltest-<suite>-<pid>-<octet>`, 10.`<net>`.`<octet>`.0/24) and the
/// pod runtime `kind`.
pub struct PodEnv {
    pub _tmp: tempfile::TempDir,
    pub data: PathBuf,
    /// `oci:<layout>` of the busybox image.
    pub image: String,
    pub netns: String,
    pub network: sandbox::network::PodNetwork,
    pub host: sandbox::pod::Host,
    pub rt: std::sync::Arc<dyn sandbox::runtime::Runtime>,
}

pub fn pod_env(suite: &str, kind: sandbox::runtime::RuntimeKind, net: u8, octet: u8) -> PodEnv {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (tmp, data) = data_dir();
    let layout = data.join("layout");
    busybox_layout(&layout, &["sh"]);
    let image = format!("oci:{}", layout.display());
    let store = std::sync::Arc::new(
        sandbox::image::ImageStore::open(data.join("images"), Default::default()).unwrap(),
    );
    let netns = format!("nltest-{suite}-{}-{octet}", std::process::id());
    let network = sandbox::network::PodNetwork::new(
        &netns,
        "nlbr0",
        sandbox::network::Subnet {
            network: std::net::Ipv4Addr::new(10, net, octet, 0),
            prefix: 24,
        },
        data.join("network"),
    );
    let host = sandbox::pod::Host {
        data_dir: data.clone(),
        images: store,
        network: Some(network.clone()),
        pull: Default::default(),
    };
    let rt = std::sync::Arc::from(sandbox::runtime::open_for_pods(kind, &data).unwrap());
    PodEnv {
        _tmp: tmp,
        data,
        image,
        netns,
        network,
        host,
        rt,
    }
}

/// `target/debug/nodeless` (the shim program), next to this test's `deps/` directory.
pub fn nodeless_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("nodeless");
    p.is_file().then_some(p)
}

/// Fails the test when a tool is missing under `NODELESS_REQUIRE_SANDBOX` (set by
/// scripts/test.sh and CI); elsewhere the test is skipped.
fn required(what: &str) {
    assert!(
        std::env::var_os("NODELESS_REQUIRE_SANDBOX").is_none(),
        "{what} is required (NODELESS_REQUIRE_SANDBOX is set)"
    );
}

/// Whether the program `tool` runs (`tool --version`); under `NODELESS_REQUIRE_SANDBOX` a
/// missing one fails the test (see [`required`]).
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        required(&format!("{tool} (apt-get install -y {tool})"));
        println!("SKIPPED: {tool} is not installed");
    }
    found
}

/// Whether the runtime `kind` is installed (see [`required`]).
#[allow(dead_code)]
pub fn has(kind: sandbox::runtime::RuntimeKind) -> bool {
    let found = sandbox::runtime::available().contains(&kind);
    if !found {
        required(&format!(
            "the {kind} runtime (scripts/setup.sh installs it)"
        ));
    }
    found
}

/// The installed runtimes; every one of them under `NODELESS_REQUIRE_SANDBOX`.
#[allow(dead_code)]
pub fn runtimes() -> Vec<sandbox::runtime::RuntimeKind> {
    use sandbox::runtime::RuntimeKind;
    [RuntimeKind::Container, RuntimeKind::Gvisor]
        .into_iter()
        .filter(|k| has(*k))
        .collect()
}

/// Sets the shim binary for this process; false (after saying so) when it is not built.
#[allow(dead_code)]
pub fn use_shim() -> bool {
    match nodeless_binary() {
        Some(b) => {
            sandbox::shim::set_binary(b);
            true
        }
        None => {
            required("the nodeless binary (`cargo build -p nodeless`)");
            println!("SKIPPED: nodeless binary not built (run `cargo build -p nodeless`)");
            false
        }
    }
}

/// CPU seconds used by every process container `id` sees (its own PID namespace): the sum of
/// utime and stime over `/proc/*/stat`, read by an exec into it.
pub async fn cpu_seconds(rt: &dyn sandbox::runtime::Runtime, id: &str) -> f64 {
    let args = ["sh", "-c", "cat /proc/[0-9]*/stat"].map(String::from);
    let out = rt
        .exec(id, &args, false, sandbox::runtime::Stdio::piped())
        .unwrap()
        .wait_with_output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.is_empty(), "no /proc/*/stat in {id}");
    let ticks: u64 = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.rsplit_once(") ")?.1.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / 100.0
}
