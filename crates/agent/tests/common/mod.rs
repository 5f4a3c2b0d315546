//! Shared by the agent's sandbox tests (sandboxed.rs, runtime_suite.rs): a busybox OCI layout
//! built here, a real in-process API server, and a [`SandboxRuntime`] with its own data dir,
//! pod network namespace, bridge and subnet, cleaned up even when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent::runtime::{Runtime, RuntimeStatus};
use agent::sandboxed::{SandboxConfig, SandboxRuntime};
use agent::streams::{LogOptions, PodStreams};
use apiserver::testing::TestServer;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use sandbox::network::PodNetwork;
use sandbox::runtime::RuntimeKind;
use serde_json::json;
use tokio::io::AsyncReadExt as _;

// ---- images -----------------------------------------------------------------------------------

const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "ls", "true", "false", "env", "id", "hostname", "test", "touch",
    "httpd", "tty", "exit", "mkdir", "wget", "ps", "stty", "dd",
];

/// A minimal ustar writer: (path, content, mode) files, directories (path ends with `/`), and
/// symlinks (content = target, mode 0).
pub fn tar(entries: &[(String, Vec<u8>, u32, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (path, content, mode, kind) in entries {
        let mut h = [0u8; 512];
        h[..path.len()].copy_from_slice(path.as_bytes());
        let oct = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        oct(&mut h, 100, 8, u64::from(*mode));
        oct(&mut h, 108, 8, 0);
        oct(&mut h, 116, 8, 0);
        let size = if *kind == b'0' { content.len() } else { 0 };
        oct(&mut h, 124, 12, size as u64);
        oct(&mut h, 136, 12, 1_700_000_000);
        h[156] = *kind;
        if *kind == b'2' {
            h[157..157 + content.len()].copy_from_slice(content);
        }
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        out.extend_from_slice(&h);
        if *kind == b'0' {
            out.extend_from_slice(content);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A busybox image (one uncompressed layer) as an OCI layout in `dir`, tag `latest`.
pub fn busybox_layout(dir: &Path) -> String {
    layout_with(dir, &[])
}

/// [`busybox_layout`] with `extra_files` (path in the image without the leading `/`, content,
/// mode) in its layer, after busybox's (their directories must be in the image already).
pub fn layout_with(dir: &Path, extra_files: &[(&str, &[u8], u32)]) -> String {
    use sandbox::digest::Digest;
    let bb = std::fs::read("/bin/busybox").expect("install Debian's busybox-static");
    let mut entries = vec![
        ("bin/".to_string(), vec![], 0o755, b'5'),
        ("bin/busybox".to_string(), bb, 0o755, b'0'),
        ("etc/".to_string(), vec![], 0o755, b'5'),
        (
            "etc/passwd".to_string(),
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
            0o644,
            b'0',
        ),
        (
            "etc/group".to_string(),
            b"root:x:0:\n".to_vec(),
            0o644,
            b'0',
        ),
        ("tmp/".to_string(), vec![], 0o1777, b'5'),
        ("www/".to_string(), vec![], 0o755, b'5'),
    ];
    for a in APPLETS {
        entries.push((format!("bin/{a}"), b"busybox".to_vec(), 0o777, b'2'));
    }
    for (path, content, mode) in extra_files {
        entries.push((
            path.trim_start_matches('/').to_string(),
            content.to_vec(),
            *mode,
            b'0',
        ));
    }
    let layer = tar(&entries);
    let layer_digest = Digest::of(&layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]},
    }))
    .unwrap();
    let config_digest = Digest::of(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest.to_string(), "size": layer.len()}],
    }))
    .unwrap();
    let manifest_digest = Digest::of(&manifest);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for (d, b) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        std::fs::write(blobs.join(d.hex()), b).unwrap();
    }
    let index = json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest.to_string(), "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    manifest_digest.to_string()
}

// ---- fixture ----------------------------------------------------------------------------------

pub struct Fixture {
    _server: TestServer,
    pub client: kube::Client,
    pub rt: Arc<SandboxRuntime>,
    pub data: PathBuf,
    pub network: PodNetwork,
    pub image: String,
    pub manifest_digest: String,
}

/// Whether `tool` is on PATH. Tests skip without it, except under `NODELESS_REQUIRE_SANDBOX`
/// (set by scripts/test.sh and CI), where a missing tool fails the test.
pub fn available(tool: &str) -> bool {
    let found = std::process::Command::new("which")
        .arg(tool)
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || std::env::var_os("NODELESS_REQUIRE_SANDBOX").is_none(),
        "{tool} is required (NODELESS_REQUIRE_SANDBOX is set; scripts/setup.sh installs it)"
    );
    found
}

/// Runs `command` in `container` (None: the first) of pod `default/pod`: (stdout, stderr, exit
/// code).
pub async fn exec_in(
    rt: &SandboxRuntime,
    pod: &str,
    container: Option<&str>,
    command: &[&str],
) -> (String, String, i32) {
    use agent::streams::PodStreams as _;
    let s = rt
        .exec(
            "default",
            pod,
            container,
            agent::streams::ExecRequest {
                command: command.iter().map(|s| s.to_string()).collect(),
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec in {pod}/{container:?}: {e}"));
    let (out, err) = tokio::join!(read_all(s.stdout.unwrap()), read_all(s.stderr.unwrap()));
    let code = s.exit.await.unwrap();
    (out, err, code)
}

/// Whether the micro-VM's prerequisites (QEMU, mkfs.erofs, the guest's assets) are here.
/// Tests skip without them, except under `NODELESS_REQUIRE_MICROVM` (set by scripts/test.sh
/// and CI), where they fail.
pub fn microvm_available(test: &str) -> bool {
    let Err(missing) = sandbox::microvm::prerequisites() else {
        return true;
    };
    assert!(
        std::env::var_os("NODELESS_REQUIRE_MICROVM").is_none(),
        "{test}: micro-VM prerequisites missing (NODELESS_REQUIRE_MICROVM is set): {missing}"
    );
    println!("SKIPPED {test}: {missing}");
    false
}

/// Whether `test` can run on runtime `kind` here: its tool (crun, runsc) or the micro-VM's
/// prerequisites; a missing one fails under `NODELESS_REQUIRE_SANDBOX` /
/// `NODELESS_REQUIRE_MICROVM`, else the test says it is SKIPPED.
pub fn runtime_available(kind: RuntimeKind, test: &str) -> bool {
    let tool = match kind {
        RuntimeKind::Microvm => return microvm_available(test),
        RuntimeKind::Container => "crun",
        RuntimeKind::Gvisor => "runsc",
    };
    let found = available(tool);
    if !found {
        println!("SKIPPED {test}: {tool} not found (apt-get install {tool})");
    }
    found
}

/// Stops the pods with `uids` (grace 1 s, each within 60 s), all at once, and removes them.
pub async fn stop_and_remove(rt: &SandboxRuntime, uids: &[&str], kind: RuntimeKind) {
    futures::future::join_all(uids.iter().map(|uid| async move {
        tokio::time::timeout(
            Duration::from_secs(60),
            rt.stop(uid, Duration::from_secs(1)),
        )
        .await
        .unwrap_or_else(|_| panic!("{kind}: {uid} stops"))
        .unwrap();
        rt.remove(uid);
        rt.removed(uid).await;
    }))
    .await;
}

/// [`fixture_with`] gVisor for serverless pods and crun for the others.
pub async fn fixture(n: u8) -> Fixture {
    fixture_with(n, RuntimeKind::Gvisor, RuntimeKind::Container).await
}

/// A runtime over its own data dir and pod network (subnet `10.203.<n>.0/24`, netns named
/// after this process and `n`: a distinct `n` per test), with `serverless` for pods of the
/// serverless scheduler and `worker` for the others.
pub async fn fixture_with(n: u8, serverless: RuntimeKind, worker: RuntimeKind) -> Fixture {
    fixture_config(n, serverless, worker, None).await
}

/// [`fixture_with`], with an image cache limit.
pub async fn fixture_config(
    n: u8,
    serverless: RuntimeKind,
    worker: RuntimeKind,
    image_cache_limit_bytes: Option<u64>,
) -> Fixture {
    // Containers run under shims (so that they outlive the agent) when the `nodeless` binary
    // is built; else as children of this process.
    if let Some(b) = nodeless_binary() {
        sandbox::shim::set_binary(b);
    }
    let server = TestServer::start().await;
    let cfg = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&server.kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let data = std::env::temp_dir().join(format!("nl-agent-sbx-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).unwrap();
    let layout = data.join("layout");
    let manifest_digest = busybox_layout(&layout);
    let network = PodNetwork::new(
        format!("nl-test-{}-{n}", std::process::id()),
        "nlbr0",
        format!("10.203.{n}.0/24").parse().unwrap(),
        data.join("network"),
    );
    let rt = SandboxRuntime::new(
        SandboxConfig {
            data_dir: data.clone(),
            serverless_runtime: serverless,
            worker_runtime: worker,
            network: network.clone(),
            insecure_registries: vec![],
            image_cache_limit_bytes,
            eviction_interval: agent::eviction::INTERVAL,
        },
        client.clone(),
    )
    .await
    .unwrap();
    Fixture {
        _server: server,
        client,
        rt,
        data,
        network,
        image: format!("oci:{}:latest", layout.display()),
        manifest_digest,
    }
}

/// The processes (but this one) whose command line names `path`.
fn processes_naming(path: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            (pid != std::process::id() && String::from_utf8_lossy(&cmdline).contains(path))
                .then_some(pid)
        })
        .collect()
}

/// A failed test still leaves nothing behind: processes started under this data dir are
/// killed, mounts under it detached, the pod netns and the network's netns deleted.
impl Drop for Fixture {
    fn drop(&mut self) {
        let data = self.data.display().to_string();
        // The runtime's supervisors may still run (on the test runtime's other threads) and
        // start again what is killed, the first time at once: sweep until a round finds
        // nothing left.
        for _ in 0..20 {
            let pids = processes_naming(&data);
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&data))
            .collect();
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in points {
            let _ = std::process::Command::new("umount")
                .args(["-l", m])
                .status();
        }
        for rec in sandbox::pod::list(&self.data) {
            if let Some(ns) = rec.netns {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &ns])
                    .status();
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.network.netns])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

impl Fixture {
    pub async fn cleanup(self) {
        self.network.destroy().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.data);
    }

    /// Nothing of the pods is left: no container processes, no mounts, no veths, no pod netns.
    pub async fn assert_nothing_left(&self) {
        let data = self.data.display().to_string();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.lines().any(|l| l.contains(&data)),
            "mounts left under {data}: {}",
            mounts
                .lines()
                .filter(|l| l.contains(&data))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let ps = std::process::Command::new("ps")
            .args(["-eo", "pid,args"])
            .output()
            .unwrap();
        let ps = String::from_utf8_lossy(&ps.stdout);
        let left: Vec<&str> = ps
            .lines()
            .filter(|l| l.contains(&data) && !l.contains(" ps "))
            .collect();
        assert!(left.is_empty(), "processes left: {left:?}");
        let links = std::process::Command::new("ip")
            .args([
                "-n",
                &self.network.netns,
                "-o",
                "link",
                "show",
                "type",
                "veth",
            ])
            .output()
            .unwrap();
        assert!(
            links.stdout.is_empty(),
            "veths left: {}",
            String::from_utf8_lossy(&links.stdout)
        );
        let pods = std::fs::read_dir(self.data.join("pods"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(pods, 0, "pod directories left");
    }
}

pub fn pod(value: serde_json::Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

/// Polls `pod_status` until `ok` holds (at most `secs`).
pub async fn status_until(
    rt: &SandboxRuntime,
    uid: &str,
    secs: u64,
    ok: impl Fn(&RuntimeStatus) -> bool,
) -> RuntimeStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let s = rt.pod_status(uid).expect("known pod");
        if ok(&s) {
            return s;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("condition not reached; last status: {s:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn read_all(mut r: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v).await;
    String::from_utf8_lossy(&v).into_owned()
}

pub async fn logs(rt: &SandboxRuntime, ns: &str, pod: &str, c: &str, previous: bool) -> String {
    let options = LogOptions {
        previous,
        ..Default::default()
    };
    logs_with(rt, ns, pod, c, options).await
}

/// Container `c`'s log as `options` ask for it, read to its end.
pub async fn logs_with(
    rt: &SandboxRuntime,
    ns: &str,
    pod: &str,
    c: &str,
    options: LogOptions,
) -> String {
    let mut s = rt.logs(ns, pod, Some(c), options).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `target/debug/nodeless` (the shim program), next to this test's `deps/` directory.
pub fn nodeless_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("nodeless");
    p.is_file().then_some(p)
}
