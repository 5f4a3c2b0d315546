//! A small static Rust program (tests/programs/testprog.rs, built here with plain `rustc`) in
//! an image beside busybox, run in every sandbox runtime through the agent's real runtime
//! ([`SandboxRuntime`]): an HTTP server with an httpGet readiness probe that answers with its
//! hostname and exits 0 on SIGTERM, an exit code, and an OOM kill. A runtime whose tool is
//! missing is SKIPPED (the micro-VM fails instead when `NODELESS_REQUIRE_MICROVM` is set).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use agent::runtime::{Runtime, RuntimeStatus};
use agent::sandboxed::SandboxRuntime;
use common::{
    fixture_with, layout_with, logs, pod, runtime_available, status_until, stop_and_remove,
};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, Pod};
use sandbox::runtime::RuntimeKind;
use serde_json::json;

/// Whether the ELF executable `bin` asks for a program interpreter (a PT_INTERP header): a
/// dynamically linked program does.
fn has_interpreter(bin: &[u8]) -> bool {
    assert!(
        bin.len() > 64 && bin.starts_with(b"\x7fELF") && bin[4] == 2 && bin[5] == 1,
        "not a little-endian ELF64 executable"
    );
    let u16_at = |at: usize| u16::from_le_bytes(bin[at..at + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(bin[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(bin[at..at + 4].try_into().unwrap()) == 3
    })
}

/// The test program, built once per test process with `rustc` (`RUSTC`, as cargo sets it, else
/// from PATH) as a static executable.
fn testprog() -> &'static [u8] {
    static BIN: OnceLock<Vec<u8>> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/programs/testprog.rs");
        let dir = std::env::temp_dir().join(format!("nl-testprog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("testprog");
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let t = Instant::now();
        let built = std::process::Command::new(&rustc)
            .args([
                "--edition",
                "2021",
                "-O",
                "-C",
                "target-feature=+crt-static",
            ])
            .args(["-C", "strip=symbols", "-o"])
            .arg(&out)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("run {rustc:?}: {e}"));
        assert!(
            built.status.success(),
            "{rustc:?} {}: {}",
            src.display(),
            String::from_utf8_lossy(&built.stderr)
        );
        let bin = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            !has_interpreter(&bin),
            "testprog is dynamically linked (PT_INTERP): the image has no C library"
        );
        eprintln!(
            "testprog built ({} KiB) in {:.1} s",
            bin.len() / 1024,
            t.elapsed().as_secs_f64()
        );
        bin
    })
}

fn first(st: &RuntimeStatus) -> &k8s_openapi::api::core::v1::ContainerStatus {
    &st.container_statuses[0]
}

fn terminated(st: &RuntimeStatus) -> Option<&ContainerStateTerminated> {
    first(st).state.as_ref().and_then(|s| s.terminated.as_ref())
}

/// Runs `command` in `pod`'s first container: (stdout, stderr, exit code).
async fn exec(rt: &SandboxRuntime, pod: &str, command: &[&str]) -> (String, String, i32) {
    common::exec_in(rt, pod, None, command).await
}

/// Waits (at most 120 s: the micro-VM runs under TCG) for the pod `uid` to end: its exit code.
async fn ended(rt: &SandboxRuntime, kind: RuntimeKind, uid: &str) -> i32 {
    tokio::time::timeout(Duration::from_secs(120), rt.wait(uid))
        .await
        .unwrap_or_else(|_| panic!("{kind}: {uid} ends"))
        .unwrap()
}

async fn run(kind: RuntimeKind) {
    let began = Instant::now();
    // Subnets 10.203.31-33.0/24: apart from the other test files' (1-9, 21-23).
    let n = match kind {
        RuntimeKind::Container => 31,
        RuntimeKind::Gvisor => 32,
        RuntimeKind::Microvm => 33,
    };
    let f = fixture_with(n, kind, kind).await;
    let layout = f.data.join("rust-layout");
    layout_with(&layout, &[("bin/testprog", testprog(), 0o755)]);
    let image = format!("oci:{}:latest", layout.display());
    let prefix = match kind {
        RuntimeKind::Gvisor => "gvisor",
        RuntimeKind::Container => "crun",
        RuntimeKind::Microvm => "microvm",
    };
    // Worker pods for crun, serverless ones for the others (as the agent is set up).
    let scheduler = match kind {
        RuntimeKind::Container => "default-scheduler",
        _ => "serverless-scheduler",
    };
    let mk = |name: &str, policy: &str, container: serde_json::Value| -> Pod {
        pod(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {
                "schedulerName": scheduler,
                "nodeName": format!("node-{prefix}"),
                "restartPolicy": policy,
                "terminationGracePeriodSeconds": 10,
                "containers": [container],
            },
        }))
    };
    let rt = &f.rt;
    let start = |p: Pod, ip: String| async move {
        let name = p.metadata.name.clone().unwrap();
        let t = Instant::now();
        let started = rt
            .start(&p, &ip)
            .await
            .unwrap_or_else(|e| panic!("{kind}: pod {name} starts: {e}"));
        for c in &started.containers {
            assert!(
                c.container_id.starts_with(&format!("{prefix}://")),
                "{kind}: {c:?}"
            );
        }
        eprintln!(
            "{kind}: pod {name} started in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    };

    // A server: ready by its httpGet probe, answers with its hostname (the pod's name), says
    // "bye" and exits 0 at once on SIGTERM.
    let server = async {
        let t = Instant::now();
        let p = mk(
            "rweb",
            "Always",
            json!({"name": "web", "image": image, "command": ["/bin/testprog", "serve", "8080"],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080},
                    "periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": 1}}),
        );
        start(p, format!("10.203.{n}.10")).await;
        let st = status_until(rt, "uid-rweb", 120, |s| s.ready).await;
        assert!(first(&st).ready, "{kind}: {st:#?}");
        let log = logs(rt, "default", "rweb", "web", false).await;
        assert!(log.contains("listening 8080\n"), "{kind}: log {log:?}");
        let (page, err, code) = exec(rt, "rweb", &["wget", "-qO-", "http://127.0.0.1:8080/"]).await;
        assert_eq!(
            (page.as_str(), code),
            ("rust-ok rweb\n", 0),
            "{kind}: GET / from inside: {err}"
        );
        let (_, err, code) = exec(
            rt,
            "rweb",
            &["wget", "-qO-", "http://127.0.0.1:8080/missing"],
        )
        .await;
        assert!(
            code != 0 && err.contains("404"),
            "{kind}: GET /missing exited {code}: {err:?}"
        );
        let (path, err, code) = exec(rt, "rweb", &["/bin/testprog", "env", "PATH"]).await;
        assert_eq!(
            (path.as_str(), code),
            ("/bin\n", 0),
            "{kind}: the image's PATH: {err}"
        );
        let stopping = Instant::now();
        let code = tokio::time::timeout(
            Duration::from_secs(60),
            rt.stop("uid-rweb", Duration::from_secs(10)),
        )
        .await
        .unwrap_or_else(|_| panic!("{kind}: rweb stops"))
        .unwrap();
        let took = stopping.elapsed();
        assert!(
            code == 0 && took < Duration::from_secs(5),
            "{kind}: the server (exits 0 on SIGTERM, grace 10 s) stopped with {code} in {took:?}"
        );
        let log = logs(rt, "default", "rweb", "web", false).await;
        assert!(log.ends_with("bye\n"), "{kind}: log after stop {log:?}");
        eprintln!(
            "{kind}: server checked in {:.1} s (stopped in {:.1} s)",
            t.elapsed().as_secs_f64(),
            took.as_secs_f64()
        );
    };

    // An exit code.
    let exits = async {
        let t = Instant::now();
        let p = mk(
            "rexit",
            "Never",
            json!({"name": "main", "image": image, "command": ["/bin/testprog", "exit", "42"]}),
        );
        start(p, String::new()).await;
        let code = ended(rt, kind, "uid-rexit").await;
        let st = status_until(rt, "uid-rexit", 10, |s| terminated(s).is_some()).await;
        let term = terminated(&st).unwrap();
        assert_eq!(
            (code, term.exit_code, term.reason.as_deref()),
            (42, 42, Some("Error")),
            "{kind}: {st:#?}"
        );
        let log = logs(rt, "default", "rexit", "main", false).await;
        assert!(log.contains("exit 42\n"), "{kind}: log {log:?}");
        eprintln!(
            "{kind}: exit code checked in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    };

    // An OOM kill: 200 MiB under a 32Mi limit.
    let oom = async {
        let t = Instant::now();
        let p = mk(
            "room",
            "Never",
            json!({"name": "hog", "image": image, "command": ["/bin/testprog", "alloc", "200"],
                "resources": {"limits": {"memory": "32Mi"}}}),
        );
        start(p, String::new()).await;
        let code = ended(rt, kind, "uid-room").await;
        let st = status_until(rt, "uid-room", 10, |s| terminated(s).is_some()).await;
        let term = terminated(&st).unwrap();
        assert_eq!(
            (code, term.exit_code, term.reason.as_deref()),
            (137, 137, Some("OOMKilled")),
            "{kind}: {st:#?}\nlog: {:?}",
            logs(rt, "default", "room", "hog", false).await
        );
        eprintln!("{kind}: OOM checked in {:.1} s", t.elapsed().as_secs_f64());
    };

    tokio::join!(server, exits, oom);

    stop_and_remove(rt, &["uid-rweb", "uid-rexit", "uid-room"], kind).await;
    f.assert_nothing_left().await;
    f.cleanup().await;
    eprintln!(
        "{kind}: rust program checked in {:.1} s",
        began.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_rust_program() {
    if runtime_available(RuntimeKind::Container, "container_rust_program") {
        run(RuntimeKind::Container).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_rust_program() {
    if runtime_available(RuntimeKind::Gvisor, "gvisor_rust_program") {
        run(RuntimeKind::Gvisor).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_rust_program() {
    if runtime_available(RuntimeKind::Microvm, "microvm_rust_program") {
        run(RuntimeKind::Microvm).await;
    }
}
