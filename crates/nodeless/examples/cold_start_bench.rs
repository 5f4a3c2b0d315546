//! Cold start benchmark (issue 3's figure "cold start with a 50 MB image from a local registry:
//! p50 <= 1 s"): a gVisor pod started on a host whose image store does not hold its image, so
//! that the start pulls it from a registry on loopback, next to the reference tools pulling the
//! same image from the same registry in the same run.
//!
//! Setup: the release `nodeless` binary serves the registry in its own process
//! (`nodeless registry serve` on a free 127.0.0.1 port, HTTPS with the CA it keeps in its data
//! dir, token auth), `nodeless registry create-repository bench/big` creates the repository and
//! `nodeless registry get-login-password --repository bench/big --actions pull` gives the pull
//! credential agents get. The image is the busybox test image (`tests/common/image.rs`) plus one
//! gzip layer of `--size-mib` MiB (default 50) of random, incompressible data in 1 MiB files, so
//! that the compressed image is ~50 MB; `skopeo copy` pushes it as `bench/big:1`.
//!
//! Series, interleaved run by run (one uncounted warm-up of each first):
//! - cold pod start: a new, empty image store (trusting the registry's CA, basic auth with the
//!   pull credential), then [`pod::start`] of a one-container pod (no pod network) running
//!   `touch /r/ready`, `/r` an emptyDir; timed from just before the call until the file is seen
//!   on the host (polled every millisecond). The store's progress events give, in the same
//!   run, when the manifest was resolved, when the big layer was downloaded and when it was
//!   verified and unpacked (the end of the pull); the pod is removed after each run.
//! - pull only: `ImageStore::pull` of the same reference into a new, empty store.
//! - skopeo (peer): `skopeo copy docker://... oci:NEWDIR` (download, digest check, blobs
//!   written, no unpacking).
//! - podman (peer, when installed): `podman pull` into a new, empty storage root (download,
//!   digest check, unpacking into overlay layers), as a kubelet's runtime would.
//! - warm pod start: the same pod with the image already in the store (no registry request).
//!
//! Afterwards the unpack path is taken apart offline on the same big layer: sha256 of the
//! compressed blob (the digest check), unpacking the uncompressed tar (untar + diff_id hash)
//! and `unpack_layer` of the gzip blob (all of it).
//!
//! Run (as root, with runsc and skopeo): `cargo build --release -p nodeless --bin nodeless
//! --example cold_start_bench && target/release/examples/cold_start_bench [--runs N]
//! [--size-mib M] [--nodeless PATH] [--no-podman] [--keep]`. `RUST_LOG=sandbox=debug` shows the
//! pull's own log. Everything lives in a temporary directory removed at the end (pods removed,
//! the registry process killed, mounts checked); `--keep` keeps it (with `registry.log`).

#[path = "../tests/common/image.rs"]
mod image;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandbox::digest::{Digest, HashingReader};
use sandbox::image::{Auth, ImageStore, PullEvent, PullOptions, Source, StoreOptions};
use sandbox::pod::{self, Host, VolumeFiles};
use sandbox::runtime::{self, Runtime, RuntimeKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Readiness is polled at this interval.
const POLL: Duration = Duration::from_millis(1);
/// A run that shows no readiness within this is a failure.
const TIMEOUT: Duration = Duration::from_secs(60);
/// The repository and tag the image is pushed as.
const REPO: &str = "bench/big";
/// The goal of issue 3.
const GOAL: Duration = Duration::from_secs(1);

struct Args {
    runs: usize,
    size_mib: usize,
    nodeless: PathBuf,
    podman: bool,
    keep: bool,
}

fn default_nodeless() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/nodeless");
    std::fs::canonicalize(&p).unwrap_or(p)
}

fn parse_args() -> Result<Args, BoxError> {
    let mut args = Args {
        runs: 10,
        size_mib: 50,
        nodeless: default_nodeless(),
        podman: true,
        keep: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => {
                args.runs = it.next().ok_or("--runs needs a number")?.parse()?;
                if args.runs == 0 {
                    return Err("--runs must be at least 1".into());
                }
            }
            "--size-mib" => {
                args.size_mib = it.next().ok_or("--size-mib needs a number")?.parse()?;
            }
            "--nodeless" => {
                args.nodeless = PathBuf::from(it.next().ok_or("--nodeless needs a path")?);
            }
            "--no-podman" => args.podman = false,
            "--keep" => args.keep = true,
            "-h" | "--help" => {
                println!(
                    "cold_start_bench [--runs N] [--size-mib M] [--nodeless PATH] [--no-podman] [--keep]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if !args.nodeless.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p nodeless --bin nodeless (or --nodeless PATH)",
            args.nodeless.display()
        )
        .into());
    }
    Ok(args)
}

/// Nearest-rank percentile of sorted `v`. Pure.
fn percentile(v: &[Duration], p: usize) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * v.len()).div_ceil(100).max(1);
    v[rank.min(v.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd`, failing with its stderr when it does not succeed; its stdout.
fn run(cmd: &mut Command) -> Result<String, BoxError> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `nodeless registry serve` in its own process; killed when dropped.
struct RegistryProc {
    child: Child,
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// A directory holding the registry's `ca.crt` (skopeo's and podman's `--*cert-dir`).
    certs: PathBuf,
    ca_pem: String,
    admin_password: String,
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RegistryProc {
    fn start(bin: &Path, work: &Path) -> Result<Self, BoxError> {
        let dir = work.join("registry");
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let log = std::fs::File::create(work.join("registry.log"))?;
        let child = Command::new(bin)
            .arg("registry")
            .arg("--data-dir")
            .arg(&dir)
            .arg("serve")
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--maintenance-interval", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let mut reg = RegistryProc {
            child,
            bin: bin.to_owned(),
            dir: dir.clone(),
            port,
            certs: work.join("certs"),
            ca_pem: String::new(),
            admin_password: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = reg.child.try_wait()? {
                return Err(format!(
                    "registry exited ({status}); see {}",
                    work.join("registry.log").display()
                )
                .into());
            }
            if dir.join("endpoint").is_file()
                && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            {
                break;
            }
            if Instant::now() > deadline {
                return Err("the registry did not come up within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        reg.ca_pem = std::fs::read_to_string(dir.join("tls/ca.crt"))?;
        std::fs::create_dir_all(&reg.certs)?;
        std::fs::write(reg.certs.join("ca.crt"), &reg.ca_pem)?;
        reg.admin_password = std::fs::read_to_string(dir.join("auth/admin-password"))?
            .trim()
            .to_owned();
        Ok(reg)
    }

    /// `nodeless registry --data-dir DIR <verb...>`.
    fn cli(&self, verb: &[&str]) -> Result<String, BoxError> {
        run(Command::new(&self.bin)
            .arg("registry")
            .arg("--data-dir")
            .arg(&self.dir)
            .args(verb))
    }

    fn reference(&self) -> String {
        format!("127.0.0.1:{}/{REPO}:1", self.port)
    }
}

/// xorshift64*: cheap bytes that deflate cannot shrink.
fn random_bytes(state: &mut u64, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The uncompressed tar of the big layer: `data/big/NN`, `mib` files of 1 MiB random bytes.
fn big_tar(mib: usize) -> Result<Vec<u8>, BoxError> {
    let mut b = tar::Builder::new(Vec::with_capacity((mib + 1) << 20));
    let header = |kind: tar::EntryType, mode: u32, size: usize| {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size as u64);
        h
    };
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        "data/big/",
        std::io::empty(),
    )?;
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    for i in 0..mib {
        let data = random_bytes(&mut state, 1 << 20);
        b.append_data(
            &mut header(tar::EntryType::Regular, 0o644, data.len()),
            format!("data/big/{i:03}"),
            &data[..],
        )?;
    }
    Ok(b.into_inner()?)
}

fn write_blob(layout: &Path, data: &[u8]) -> Result<(Digest, usize), BoxError> {
    let d = Digest::of(data);
    std::fs::write(layout.join("blobs/sha256").join(d.hex()), data)?;
    Ok((d, data.len()))
}

fn read_json(path: &Path) -> Result<serde_json::Value, BoxError> {
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// Sizes of what [`build_image`] made.
struct Built {
    /// The big layer uncompressed (kept for the offline decomposition).
    big_tar: PathBuf,
    /// The big layer as pushed (gzip).
    big_blob: PathBuf,
    big_digest: Digest,
    compressed_total: u64,
}

/// The busybox OCI layout at `layout` (tag `latest`) plus the big gzip layer on top.
fn build_image(work: &Path, layout: &Path, mib: usize) -> Result<Built, BoxError> {
    image::busybox_layout(layout, "latest", &["sh"], &[]);
    let tar = big_tar(mib)?;
    let tar_path = work.join("big.tar");
    std::fs::write(&tar_path, &tar)?;
    let diff_id = Digest::of(&tar);
    drop(tar);
    // gzip -1: the data is random, a higher level would only take longer.
    let gz_out = Command::new("gzip")
        .args(["-1", "-n", "-c"])
        .arg(&tar_path)
        .stdin(Stdio::null())
        .output()?;
    if !gz_out.status.success() {
        return Err("gzip failed".into());
    }
    let (digest, size) = write_blob(layout, &gz_out.stdout)?;

    // Add the layer to the config and the manifest, and point the index at the new manifest.
    let blobs = layout.join("blobs/sha256");
    let mut index = read_json(&layout.join("index.json"))?;
    let m_digest: Digest = index["manifests"][0]["digest"]
        .as_str()
        .ok_or("index.json without a manifest")?
        .parse()?;
    let mut manifest = read_json(&blobs.join(m_digest.hex()))?;
    let c_digest: Digest = manifest["config"]["digest"]
        .as_str()
        .ok_or("manifest without config")?
        .parse()?;
    let mut config = read_json(&blobs.join(c_digest.hex()))?;
    config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or("config without diff_ids")?
        .push(diff_id.to_string().into());
    let (c_digest, c_size) = write_blob(layout, &serde_json::to_vec(&config)?)?;
    manifest["config"]["digest"] = c_digest.to_string().into();
    manifest["config"]["size"] = c_size.into();
    manifest["layers"]
        .as_array_mut()
        .ok_or("manifest without layers")?
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest.to_string(),
            "size": size,
        }));
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let compressed_total = manifest["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["size"].as_u64()).sum::<u64>())
        .unwrap_or(0)
        + c_size as u64
        + manifest_bytes.len() as u64;
    let (m_digest, m_size) = write_blob(layout, &manifest_bytes)?;
    index["manifests"][0]["digest"] = m_digest.to_string().into();
    index["manifests"][0]["size"] = m_size.into();
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(Built {
        big_tar: tar_path,
        big_blob: blobs.join(digest.hex()),
        big_digest: digest,
        compressed_total,
    })
}

/// Waits until `path` exists; the time from `t0`.
async fn wait_ready(path: &Path, t0: Instant) -> Result<Duration, BoxError> {
    loop {
        if path.exists() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > TIMEOUT {
            return Err(format!("{} never appeared", path.display()).into());
        }
        tokio::time::sleep(POLL).await;
    }
}

fn pod_json(uid: &str, image: &str) -> Result<k8s_openapi::api::core::v1::Pod, BoxError> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": "bench", "namespace": "bench", "uid": uid},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "main", "image": image, "command": ["touch", "/r/ready"],
                 "volumeMounts": [{"name": "r", "mountPath": "/r"}]}
            ],
            "volumes": [{"name": "r", "emptyDir": {}}]
        }
    }))?)
}

/// Pull progress events with the time they were seen.
type Events = Arc<Mutex<Vec<(Instant, PullEvent)>>>;

/// The pull phases of one run, from `t0`: manifest resolved, big layer downloaded, pull done
/// (the last layer verified and unpacked).
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    resolved: Duration,
    downloaded: Duration,
    pulled: Duration,
}

fn phases(events: &[(Instant, PullEvent)], t0: Instant, big: &Digest) -> Phases {
    let since = |t: &Instant| t.saturating_duration_since(t0);
    let mut p = Phases::default();
    for (t, e) in events {
        match e {
            PullEvent::Resolved { .. } => p.resolved = since(t),
            PullEvent::LayerProgress { digest, .. } if digest == big => p.downloaded = since(t),
            PullEvent::LayerDone(_) | PullEvent::LayerPresent(_) => {
                p.pulled = p.pulled.max(since(t))
            }
            _ => {}
        }
    }
    p
}

struct Bench {
    data: PathBuf,
    rt: Arc<dyn Runtime>,
    reference: String,
    ca_pem: String,
    auth: Auth,
    big: Digest,
}

impl Bench {
    /// A host with a new, empty image store at `data/<name>`, recording pull events.
    fn host(&self, name: &str) -> Result<(Host, Events), BoxError> {
        let store = ImageStore::open(self.data.join(name), StoreOptions::default())?;
        store.trust_roots_pem(self.ca_pem.as_bytes())?;
        let events: Events = Arc::default();
        let rec = events.clone();
        let progress: sandbox::image::store::ProgressFn = Arc::new(move |e: &PullEvent| {
            let now = Instant::now();
            rec.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((now, e.clone()));
        });
        let host = Host {
            data_dir: self.data.clone(),
            images: Arc::new(store),
            network: None,
            pull: PullOptions {
                auth: self.auth.clone(),
                progress: Some(progress),
            },
        };
        Ok((host, events))
    }

    /// One pod start on `host`: the time until ready, and the instant the clock started.
    async fn pod_once(&self, host: &Host, uid: &str) -> Result<(Duration, Instant), BoxError> {
        let plan = sandbox::plan::plan(&pod_json(uid, &self.reference)?)?;
        let ready = pod::dir(&host.data_dir, &plan.id).join("volumes/r/ready");
        let t0 = Instant::now();
        let task = {
            let (host, rt, plan) = (host.clone(), self.rt.clone(), plan.clone());
            tokio::spawn(async move { pod::start(&host, rt, &plan, &VolumeFiles::new()).await })
        };
        let waited = wait_ready(&ready, t0).await;
        let started = task.await;
        let outcome = match (started, waited) {
            (Ok(Ok(run)), Ok(d)) => {
                let (exits, _) = run.wait().await?;
                match exits.iter().find(|(_, e)| e.code != 0) {
                    Some((n, e)) => Err(format!("container {n} exited {}", e.code).into()),
                    None => Ok((d, t0)),
                }
            }
            (Ok(Ok(run)), Err(e)) => {
                run.stop(Duration::from_secs(1)).await;
                let _ = run.wait().await;
                Err(e)
            }
            (Ok(Err(e)), _) => Err(e.into()),
            (Err(e), _) => Err(e.into()),
        };
        pod::remove(host, self.rt.as_ref(), &plan).await?;
        outcome
    }

    /// A cold pod start (new store): ready time and pull phases; the store is deleted after.
    async fn cold(&self, i: usize) -> Result<(Duration, Phases), BoxError> {
        let name = format!("images-cold-{i}");
        let (host, events) = self.host(&name)?;
        let r = self.pod_once(&host, &format!("cold-{i}")).await;
        let ev = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = std::fs::remove_dir_all(self.data.join(&name));
        let (ready, t0) = r?;
        Ok((ready, phases(&ev, t0, &self.big)))
    }

    /// A pull alone into a new store, with its phases; deleted after.
    async fn pull_only(&self, i: usize) -> Result<(Duration, Phases), BoxError> {
        let name = format!("images-pull-{i}");
        let (host, events) = self.host(&name)?;
        let source: Source = self.reference.parse()?;
        let t0 = Instant::now();
        let r = host.images.pull(&source, &host.pull).await;
        let d = t0.elapsed();
        let ev = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let _ = std::fs::remove_dir_all(self.data.join(&name));
        r?;
        Ok((d, phases(&ev, t0, &self.big)))
    }
}

/// `skopeo copy` of the image from the registry into a new OCI layout; removed after.
fn skopeo_once(reg: &RegistryProc, creds: &str, dst: &Path) -> Result<Duration, BoxError> {
    let t0 = Instant::now();
    let r = run(Command::new("skopeo")
        .arg("--insecure-policy")
        .arg("copy")
        .arg("--src-cert-dir")
        .arg(&reg.certs)
        .arg("--src-creds")
        .arg(creds)
        .arg(format!("docker://{}", reg.reference()))
        .arg(format!("oci:{}:1", dst.display())));
    let d = t0.elapsed();
    let _ = std::fs::remove_dir_all(dst);
    r?;
    Ok(d)
}

/// `podman pull` into a new storage root; removed after (`podman rmi` first, then the dir).
fn podman_once(reg: &RegistryProc, creds: &str, root: &Path) -> Result<Duration, BoxError> {
    let podman = |args: &[&str]| {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(root.join("root"))
            .arg("--runroot")
            .arg(root.join("run"))
            .args(["--storage-driver", "overlay", "--events-backend", "none"])
            .args(args);
        c
    };
    let certs = reg.certs.display().to_string();
    let reference = reg.reference();
    let t0 = Instant::now();
    let r = run(&mut podman(&[
        "pull",
        "--quiet",
        "--cert-dir",
        &certs,
        "--creds",
        creds,
        &format!("docker://{reference}"),
    ]));
    let d = t0.elapsed();
    let _ = run(&mut podman(&["rmi", "--all", "--force"]));
    let _ = std::fs::remove_dir_all(root);
    r?;
    Ok(d)
}

/// The offline decomposition of the big layer's unpack: (sha256 of the blob, untar of the
/// uncompressed tar, unpack_layer of the gzip blob), the median of 3 each.
fn decompose(work: &Path, built: &Built) -> Result<(Duration, Duration, Duration), BoxError> {
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (mut hash, mut untar, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..3 {
        let t0 = Instant::now();
        let (d, _) = HashingReader::new(std::fs::File::open(&built.big_blob)?).finish()?;
        hash.push(t0.elapsed());
        if d != built.big_digest {
            return Err("blob digest mismatch".into());
        }
        let dst = work.join(format!("untar-{i}"));
        std::fs::create_dir_all(&dst)?;
        let t0 = Instant::now();
        sandbox::image::unpack::unpack_tar(
            std::io::BufReader::new(std::fs::File::open(&built.big_tar)?),
            &dst,
        )?;
        untar.push(t0.elapsed());
        std::fs::remove_dir_all(&dst)?;
        std::fs::create_dir_all(&dst)?;
        let t0 = Instant::now();
        sandbox::image::unpack::unpack_layer(&built.big_blob, &built.big_digest, None, &dst)?;
        all.push(t0.elapsed());
        std::fs::remove_dir_all(&dst)?;
    }
    Ok((median(hash), median(untar), median(all)))
}

#[derive(Default)]
struct Results {
    cold: Vec<Duration>,
    resolved: Vec<Duration>,
    downloaded: Vec<Duration>,
    pulled: Vec<Duration>,
    /// Ready minus pull done: the sandbox start after the pull.
    start_after_pull: Vec<Duration>,
    /// Big layer downloaded -> pull done: verify + unpack of the big layer.
    unpack: Vec<Duration>,
    pull_only: Vec<Duration>,
    skopeo: Vec<Duration>,
    podman: Vec<Duration>,
    warm: Vec<Duration>,
    decompose: Option<(Duration, Duration, Duration)>,
    compressed: u64,
    push: Duration,
}

async fn bench(work: &Path, args: &Args, res: &mut Results) -> Result<(), BoxError> {
    let reg = RegistryProc::start(&args.nodeless, work)?;
    eprintln!(
        "registry (nodeless registry serve) on 127.0.0.1:{}",
        reg.port
    );
    reg.cli(&["create-repository", REPO])?;
    let pull_token = reg
        .cli(&[
            "get-login-password",
            "--repository",
            REPO,
            "--actions",
            "pull",
        ])?
        .trim()
        .to_owned();

    let layout = work.join("layout");
    let built = build_image(work, &layout, args.size_mib)?;
    res.compressed = built.compressed_total;
    eprintln!(
        "image: busybox + {} MiB random (gzip), {:.1} MB compressed; pushing",
        args.size_mib,
        built.compressed_total as f64 / 1e6
    );
    let t0 = Instant::now();
    run(Command::new("skopeo")
        .arg("--insecure-policy")
        .arg("copy")
        .arg("--dest-cert-dir")
        .arg(&reg.certs)
        .arg("--dest-creds")
        .arg(format!("nodeless:{}", reg.admin_password))
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{}", reg.reference())))?;
    res.push = t0.elapsed();

    let data = work.join("data");
    std::fs::create_dir_all(&data)?;
    let b = Bench {
        rt: Arc::from(runtime::open(RuntimeKind::Gvisor, &data)?),
        data,
        reference: reg.reference(),
        ca_pem: reg.ca_pem.clone(),
        auth: Auth::Basic {
            username: "nodeless".into(),
            password: pull_token.clone(),
        },
        big: built.big_digest.clone(),
    };
    let creds = format!("nodeless:{pull_token}");
    let podman = args.podman
        && Command::new("podman")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());

    eprintln!("warm-up (not counted)");
    b.cold(usize::MAX).await?;
    b.pull_only(usize::MAX).await?;
    skopeo_once(&reg, &creds, &work.join("skopeo-warmup"))?;
    if podman {
        podman_once(&reg, &creds, &work.join("podman-warmup"))?;
    }
    for i in 0..args.runs {
        let (ready, p) = b.cold(i).await?;
        let (pull, pp) = b.pull_only(i).await?;
        let sk = skopeo_once(&reg, &creds, &work.join(format!("skopeo-{i}")))?;
        let pm = if podman {
            Some(podman_once(
                &reg,
                &creds,
                &work.join(format!("podman-{i}")),
            )?)
        } else {
            None
        };
        eprintln!(
            "run {i}: cold {} ms (resolved {}, downloaded {}, pulled {}), pull {} ms (resolved {}, \
             downloaded {}, pulled {}), skopeo {} ms{}, load {}",
            ms(ready),
            ms(p.resolved),
            ms(p.downloaded),
            ms(p.pulled),
            ms(pull),
            ms(pp.resolved),
            ms(pp.downloaded),
            ms(pp.pulled),
            ms(sk),
            pm.map(|d| format!(", podman {} ms", ms(d)))
                .unwrap_or_default(),
            load()
        );
        res.cold.push(ready);
        res.resolved.push(p.resolved);
        res.downloaded.push(p.downloaded);
        res.pulled.push(p.pulled);
        res.start_after_pull.push(ready.saturating_sub(p.pulled));
        res.unpack.push(p.pulled.saturating_sub(p.downloaded));
        res.pull_only.push(pull);
        res.skopeo.push(sk);
        res.podman.extend(pm);
    }

    eprintln!("warm pod starts (image present)");
    let (host, _) = b.host("images-warm")?;
    let source: Source = b.reference.parse()?;
    host.images.pull(&source, &host.pull).await?;
    b.pod_once(&host, "warm-warmup").await?;
    for i in 0..args.runs {
        let (ready, _) = b.pod_once(&host, &format!("warm-{i}")).await?;
        res.warm.push(ready);
    }
    drop(host);

    eprintln!("offline decomposition of the big layer's unpack");
    res.decompose = Some(decompose(work, &built)?);
    Ok(())
}

fn print(res: &mut Results, args: &Args) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "cold start: gVisor pod, image busybox + {} MiB random (gzip, {:.1} MB compressed) pulled \
         from `nodeless registry serve` on 127.0.0.1 (HTTPS, token auth); {} runs, ms",
        args.size_mib,
        res.compressed as f64 / 1e6,
        args.runs
    );
    let _ = writeln!(out, "{:<58} {:>8} {:>8}", "series", "p50", "p99");
    let rows: [(&str, &mut Vec<Duration>); 10] = [
        (
            "cold pod start (new store -> container running)",
            &mut res.cold,
        ),
        (
            "  of which: manifest resolved (from start)",
            &mut res.resolved,
        ),
        (
            "  of which: big layer downloaded (from start)",
            &mut res.downloaded,
        ),
        ("  of which: pull done (from start)", &mut res.pulled),
        (
            "  big layer verify + unpack (downloaded -> done)",
            &mut res.unpack,
        ),
        (
            "  sandbox start after the pull (done -> ready)",
            &mut res.start_after_pull,
        ),
        (
            "pull only (ImageStore::pull, new store)",
            &mut res.pull_only,
        ),
        (
            "peer: skopeo copy docker:// -> oci: (no unpack)",
            &mut res.skopeo,
        ),
        (
            "peer: podman pull (new storage root, unpacks)",
            &mut res.podman,
        ),
        ("warm pod start (image present)", &mut res.warm),
    ];
    for (label, v) in rows {
        if v.is_empty() {
            continue;
        }
        v.sort();
        let _ = writeln!(
            out,
            "{:<58} {:>8} {:>8}",
            label,
            ms(percentile(v, 50)),
            ms(percentile(v, 99))
        );
    }
    if let Some((hash, untar, all)) = res.decompose {
        let _ = writeln!(
            out,
            "big layer offline (median of 3): sha256 of blob {} ms, untar+diff_id of the tar {} ms, \
             unpack_layer of the gzip blob {} ms (=> gunzip ~{} ms)",
            ms(hash),
            ms(untar),
            ms(all),
            ms(all.saturating_sub(hash + untar))
        );
    }
    let _ = writeln!(
        out,
        "push (skopeo copy oci: -> registry, once): {} ms",
        ms(res.push)
    );
    let p50 = percentile(&res.cold, 50);
    let _ = writeln!(
        out,
        "goal: cold start p50 <= {} ms: {} ({} ms); load {}",
        GOAL.as_millis(),
        if p50 <= GOAL { "met" } else { "NOT met" },
        ms(p50),
        load()
    );
}

/// Undoes what failed runs may have left: container mounts and runtime state.
fn cleanup(data: &Path) {
    if let Ok(rd) = std::fs::read_dir(data.join("containers")) {
        for e in rd.flatten() {
            let _ = sandbox::container::remove(data, &e.file_name().to_string_lossy());
        }
    }
}

fn main() -> Result<(), BoxError> {
    let args = parse_args()?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tmp = tempfile::Builder::new()
        .prefix("cold-start-bench")
        .tempdir()?;
    let work: PathBuf = tmp.path().to_owned();
    let mut res = Results::default();
    // The registry process is dropped (killed) inside `bench`, whatever happens.
    let result = rt.block_on(bench(&work, &args, &mut res));
    drop(rt);
    cleanup(&work.join("data"));
    if std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .contains(&work.display().to_string())
    {
        let kept = tmp.keep();
        return Err(format!("mounts left under {}; not removed", kept.display()).into());
    }
    if args.keep {
        eprintln!("kept {}", tmp.keep().display());
    }
    result?;
    print(&mut res, &args);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=10).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50), Duration::from_millis(5));
        assert_eq!(percentile(&v, 99), Duration::from_millis(10));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn random_data_does_not_repeat() {
        let mut s = 1;
        let a = random_bytes(&mut s, 4096);
        let b = random_bytes(&mut s, 4096);
        assert_eq!(a.len(), 4096);
        assert_ne!(a, b);
    }
}
