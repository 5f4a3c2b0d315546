//! One behaviour suite run against every runtime available on this host (crun, gVisor):
//! exit codes, logs, env/user/hostname, the image's whiteouts, memory limits, kill.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use sandbox::container::{self, Io, Status};
use sandbox::image::{Image, ImageStore, PullOptions, StoreOptions};
use sandbox::runtime::{self, Runtime, RuntimeKind};
use sandbox::spec::{ContainerConfig, Resources, SandboxContext};

struct Env {
    _tmp: tempfile::TempDir,
    data: std::path::PathBuf,
    store: ImageStore,
    image: Image,
}

async fn env() -> Env {
    let (tmp, data) = data_dir();
    let layout = data.join("layout");
    busybox_layout(&layout, &["sh", "-c", "echo default-cmd"]);
    let store = ImageStore::open(data.join("images"), StoreOptions::default()).unwrap();
    let image = store
        .pull(
            &format!("oci:{}", layout.display()).parse().unwrap(),
            &PullOptions::default(),
        )
        .await
        .unwrap();
    Env {
        _tmp: tmp,
        data,
        store,
        image,
    }
}

fn sh(script: &str) -> ContainerConfig {
    ContainerConfig {
        name: "main".into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

fn log_text(dir: &Path) -> String {
    let raw = std::fs::read(container::log_path(dir, 0)).unwrap_or_default();
    let mut out = String::new();
    for l in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let r = sandbox::logs::parse_line(l).unwrap();
        out.push_str(&format!(
            "{}:{}\n",
            r.stream,
            String::from_utf8_lossy(&r.text)
        ));
    }
    out
}

async fn run(
    e: &Env,
    rt: &Arc<dyn Runtime>,
    id: &str,
    c: ContainerConfig,
) -> (container::Exit, String) {
    let sb = SandboxContext {
        hostname: "pod-x".into(),
        ..Default::default()
    };
    let started = container::start(
        &e.data,
        &e.store,
        rt.clone(),
        container::Launch {
            id,
            image: &e.image,
            config: &c,
            sandbox: &sb,
            io: Io::Logged,
            restart_count: 0,
        },
    )
    .await
    .unwrap();
    let dir = started.dir.clone();
    let exit = started.wait().await.unwrap();
    (exit, log_text(&dir))
}

async fn suite(kind: RuntimeKind) {
    let e = env().await;
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &e.data).unwrap());

    // Image default command, stdout captured.
    let (exit, log) = run(
        &e,
        &rt,
        "default",
        ContainerConfig {
            name: "main".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(exit.code, 0, "{kind}: {log}");
    assert_eq!(log, "stdout:default-cmd\n", "{kind}");
    assert!(
        matches!(exit.state.status, Status::Terminated { ref reason, .. } if reason == "Completed")
    );
    assert!(!sandbox::rootfs::is_mountpoint(
        &container::dir(&e.data, "default").join("rootfs")
    ));

    // Exit code, stderr, env, hostname, user, whiteouts and the opaque dir.
    let mut c = sh(
        "echo to-err >&2; echo $FROM_IMAGE $MINE $(hostname) $(id -u):$(id -g); \
                    cat /etc/motd; ls /etc/remove-me 2>/dev/null || echo no-remove-me; ls /data; exit 7",
    );
    c.env = vec![("MINE".into(), "pod".into())];
    c.run_as_user = Some(65534);
    c.run_as_group = Some(65534);
    let (exit, log) = run(&e, &rt, "checks", c).await;
    assert_eq!(exit.code, 7, "{kind}: {log}");
    assert!(
        matches!(exit.state.status, Status::Terminated { exit_code: 7, ref reason, .. } if reason == "Error")
    );
    assert!(log.contains("stderr:to-err\n"), "{kind}: {log}");
    assert!(
        log.contains("stdout:yes pod pod-x 65534:65534\n"),
        "{kind}: {log}"
    );
    assert!(log.contains("stdout:hello from layer 2\n"), "{kind}: {log}");
    assert!(log.contains("stdout:no-remove-me\n"), "{kind}: {log}");
    assert!(
        log.contains("stdout:new\n") && !log.contains("old"),
        "{kind}: {log}"
    );

    // The writable layer is the container's own: the image's layers are untouched.
    let (exit, _) = run(
        &e,
        &rt,
        "writer",
        sh("echo scribble > /etc/motd && rm /bin/echo"),
    )
    .await;
    assert_eq!(exit.code, 0);
    let top = e.store.layer_dir(&e.image.layers[1]);
    assert_eq!(
        std::fs::read_to_string(top.join("etc/motd")).unwrap(),
        "hello from layer 2\n"
    );
    let (_, log) = run(&e, &rt, "reader", sh("cat /etc/motd; ls /bin/echo")).await;
    assert!(
        log.contains("stdout:hello from layer 2\n") && log.contains("/bin/echo"),
        "{kind}: {log}"
    );

    // Over its memory limit: killed and reported as OOMKilled (a gVisor container that is its
    // own sandbox takes the whole sandbox down with it).
    let mut hog = ContainerConfig {
        name: "hog".into(),
        command: Some(
            ["dd", "if=/dev/zero", "of=/dev/null", "bs=256M", "count=1"]
                .map(String::from)
                .to_vec(),
        ),
        ..Default::default()
    };
    hog.resources = Resources {
        memory_bytes: Some(64 << 20),
        cpu_millis: Some(500),
    };
    let (exit, log) = run(&e, &rt, "hog", hog).await;
    assert_ne!(exit.code, 0, "{kind}: memory limit not enforced: {log}");
    assert_eq!(exit.code, 137, "{kind}: {log}");
    assert!(exit.oom_killed, "{kind}: {exit:?} {log}");
    assert!(
        matches!(exit.state.status, Status::Terminated { ref reason, .. } if reason == "OOMKilled"),
        "{kind}: {exit:?}"
    );

    // SIGTERM reaches the container's process.
    let sb = SandboxContext {
        hostname: "pod-x".into(),
        ..Default::default()
    };
    let c = sh("trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.1; done");
    let started = container::start(
        &e.data,
        &e.store,
        rt.clone(),
        container::Launch {
            id: "term",
            image: &e.image,
            config: &c,
            sandbox: &sb,
            io: Io::Logged,
            restart_count: 0,
        },
    )
    .await
    .unwrap();
    let log_file = container::log_path(&started.dir, 0);
    for _ in 0..100 {
        if std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .contains("ready")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        rt.status("term").await.unwrap().as_deref(),
        Some("running"),
        "{kind}"
    );
    rt.kill("term", 15).await.unwrap();
    let dir = started.dir.clone();
    let exit = started.wait().await.unwrap();
    assert_eq!(exit.code, 3, "{kind}: {}", log_text(&dir));
    assert!(log_text(&dir).contains("got-term"));
    assert_eq!(
        rt.status("term").await.unwrap(),
        None,
        "runtime state removed"
    );
}

#[tokio::test]
async fn crun_container_runtime() {
    if !common::has(RuntimeKind::Container) {
        eprintln!("SKIPPED: crun is not installed (apt-get install crun)");
        return;
    }
    suite(RuntimeKind::Container).await;
}

#[tokio::test]
async fn gvisor_runtime() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    suite(RuntimeKind::Gvisor).await;
}
