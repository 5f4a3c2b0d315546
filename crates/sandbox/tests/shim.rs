//! Containers run under shims outlive the process that started them: against every runtime on
//! this host (crun, gVisor), a helper process (this test binary run again, see
//! [`helper_process`]) starts a container through `container::start` with the real `nodeless`
//! binary as its shim, and is then SIGKILLed with its whole process group. The container keeps
//! running and logging, [`container::adopt`] finds it, and its exit code is known, whether it
//! ends while watched or while nobody watches. The gVisor pod path (pause container plus a
//! container joining its sandbox) is covered the same way.
//!
//! Needs `target/debug/nodeless` (`cargo build -p nodeless`); without it every test prints
//! `SKIPPED: nodeless binary not built` and returns.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sandbox::container::{self, Io, Status};
use sandbox::image::{ImageStore, PullOptions, Source, StoreOptions};
use sandbox::runtime::{self, Runtime, RuntimeKind};
use sandbox::shim;
use sandbox::spec::{ContainerConfig, SandboxContext};

const HELPER: &str = "SHIM_TEST_HELPER";

fn layout_ref(data: &Path) -> Source {
    format!("oci:{}", data.join("layout").display())
        .parse()
        .unwrap()
}

/// A data dir with the busybox image pulled into it.
async fn prepare() -> (tempfile::TempDir, PathBuf, ImageStore) {
    let (tmp, data) = data_dir();
    busybox_layout(&data.join("layout"), &["sh", "-c", "echo default-cmd"]);
    let store = ImageStore::open(data.join("images"), StoreOptions::default()).unwrap();
    store
        .ensure(&layout_ref(&data), &PullOptions::default())
        .await
        .unwrap();
    (tmp, data, store)
}

fn sh(script: &str) -> ContainerConfig {
    ContainerConfig {
        name: "main".into(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

fn kind_of(s: &str) -> RuntimeKind {
    match s {
        "gvisor" => RuntimeKind::Gvisor,
        _ => RuntimeKind::Container,
    }
}

/// The pause container's bundle, written as the pod sandbox writes it.
fn write_pause_bundle(data: &Path, id: &str) {
    let root = data.join("pause-rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).unwrap();
    let cfg = ContainerConfig {
        name: "pause".into(),
        command: Some(
            ["/bin/busybox", "sleep", "2147483647"]
                .map(String::from)
                .to_vec(),
        ),
        ..Default::default()
    };
    let sb = SandboxContext {
        hostname: "pod".into(),
        annotations: vec![
            (runtime::CONTAINER_TYPE.into(), "sandbox".into()),
            (runtime::SANDBOX_ID.into(), id.into()),
        ],
        ..Default::default()
    };
    let spec = sandbox::spec::runtime_spec(&cfg, &Default::default(), (0, 0), &root, &sb).unwrap();
    let dir = container::dir(data, id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
}

/// Not a test: the body of the helper process. Run by [`spawn_helper`] with `SHIM_TEST_HELPER`
/// set: starts a container (and, with a pause id, the gVisor pause first) under a shim, prints
/// `STARTED <shim pid>` and sleeps until it is killed.
#[tokio::test]
#[ignore = "helper process of the other tests"]
async fn helper_process() {
    let Ok(spec) = std::env::var(HELPER) else {
        return;
    };
    // kind|data dir|id|script|pause id (may be empty)
    let parts: Vec<&str> = spec.splitn(5, '|').collect();
    let (kind, data, id, script, pause) = (
        kind_of(parts[0]),
        PathBuf::from(parts[1]),
        parts[2],
        parts[3],
        parts[4],
    );
    assert!(use_shim());
    let store = ImageStore::open(data.join("images"), StoreOptions::default()).unwrap();
    let image = store
        .ensure(&layout_ref(&data), &PullOptions::default())
        .await
        .unwrap();
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &data).unwrap());
    let mut sb = SandboxContext {
        hostname: "pod-x".into(),
        ..Default::default()
    };
    if !pause.is_empty() {
        write_pause_bundle(&data, pause);
        let p = container::start_pause(&data, rt.clone(), pause)
            .await
            .unwrap();
        report(&data, id, &format!("PAUSE {}", p.shim_pid().unwrap()));
        sb.annotations = vec![
            (runtime::CONTAINER_TYPE.into(), "container".into()),
            (runtime::SANDBOX_ID.into(), pause.into()),
        ];
    }
    let cfg = sh(script);
    let started = container::start(
        &data,
        &store,
        rt,
        container::Launch {
            id,
            image: &image,
            config: &cfg,
            sandbox: &sb,
            io: Io::Logged,
            restart_count: 0,
        },
    )
    .await
    .unwrap();
    report(
        &data,
        id,
        &format!("STARTED {}", started.shim_pid().unwrap()),
    );
    std::thread::sleep(Duration::from_secs(600));
}

/// The helper's report file for container `id`.
fn report_path(data: &Path, id: &str) -> PathBuf {
    data.join(format!("helper-{id}.out"))
}

/// Appends a line to the helper's report (a file: the test harness may hold back stdout).
fn report(data: &Path, id: &str, line: &str) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(report_path(data, id))
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

/// A helper process that started container `id` and stays alive until killed.
struct Helper {
    child: std::process::Child,
    shim_pid: u32,
    pause_shim_pid: Option<u32>,
}

fn spawn_helper(kind: RuntimeKind, data: &Path, id: &str, script: &str, pause: &str) -> Helper {
    let _ = std::fs::remove_file(report_path(data, id));
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_process",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            HELPER,
            format!("{kind}|{}|{id}|{script}|{pause}", data.display()),
        )
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..1200 {
        let text = std::fs::read_to_string(report_path(data, id)).unwrap_or_default();
        let pid_after = |prefix: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|p| p.trim().parse::<u32>().unwrap())
        };
        if let Some(shim_pid) = pid_after("STARTED ") {
            return Helper {
                child,
                shim_pid,
                pause_shim_pid: pid_after("PAUSE "),
            };
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{kind}: helper ended ({status}) without starting the container");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{kind}: the helper did not start the container within 120 s");
}

/// Stops the given containers if the test fails half way, so no container outlives it.
struct Reaper {
    data: PathBuf,
    kind: RuntimeKind,
    ids: Vec<&'static str>,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let (tool, sub) = match self.kind {
            RuntimeKind::Gvisor => ("runsc", "gvisor"),
            _ => ("crun", "container"),
        };
        let root = format!("--root={}", self.data.join("runtime").join(sub).display());
        for id in &self.ids {
            let _ = std::process::Command::new(tool)
                .args([root.as_str(), "kill", id, "9"])
                .stderr(std::process::Stdio::null())
                .status();
            // Let its shim release the root filesystem before the data dir goes.
            let dir = container::dir(&self.data, id);
            for _ in 0..50 {
                let pid = shim::read_pid(&dir);
                if pid.is_none_or(|p| !shim::is_alive(p, &dir)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Fields of `/proc/PID/stat` after the command name: [state, ppid, pgrp, session, ...].
fn stat(pid: u32) -> Vec<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

impl Helper {
    /// SIGKILL to the helper's whole process group, as a crashed agent (or its supervisor) does.
    fn kill_group(self) {
        let pid = self.child.id();
        // The shim was started by the helper but left its session.
        let (helper, shim) = (stat(pid), stat(self.shim_pid));
        assert_eq!(shim[1], pid.to_string(), "the helper started the shim");
        assert_ne!(shim[3], helper[3], "the shim runs in a session of its own");
        drop(self);
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        let pgid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        let _ = self.child.wait();
    }
}

fn log_of(dir: &Path, restart: u32) -> String {
    let raw = std::fs::read(container::log_path(dir, restart)).unwrap_or_default();
    raw.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let r = sandbox::logs::parse_line(l).unwrap();
            format!("{}:{}\n", r.stream, String::from_utf8_lossy(&r.text))
        })
        .collect()
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..600 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn survives(kind: RuntimeKind) {
    let (_tmp, data, _store) = prepare().await;
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &data).unwrap());
    let id = "long";
    let script = "trap 'echo got-term; exit 7' TERM; i=0; \
                  while true; do i=$((i+1)); echo tick $i; sleep 0.2; done";
    let _reaper = Reaper {
        data: data.clone(),
        kind,
        ids: vec![id],
    };
    let helper = spawn_helper(kind, &data, id, script, "");
    let shim_pid = helper.shim_pid;
    let dir = container::dir(&data, id);
    helper.kill_group();

    // The starter is gone; the shim and the container are not.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(shim::is_alive(shim_pid, &dir), "{kind}: the shim died");
    assert_eq!(
        rt.status(id).await.unwrap().as_deref(),
        Some("running"),
        "{kind}"
    );
    let before = log_of(&dir, 0).lines().count();
    eventually("the log grows without the starter", || {
        log_of(&dir, 0).lines().count() > before + 2
    })
    .await;
    assert!(log_of(&dir, 0).starts_with("stdout:tick 1\n"), "{kind}");

    let started = container::adopt(&data, rt.clone(), id)
        .await
        .expect("a running container is found again");
    assert_eq!(started.shim_pid(), Some(shim_pid), "{kind}");
    assert!(
        matches!(started.state().status, Status::Running { .. }),
        "{kind}: {:?}",
        started.state()
    );
    // A second adoption (another restart) finds the same shim.
    let again = container::adopt(&data, rt.clone(), id).await.unwrap();
    assert_eq!(again.shim_pid(), Some(shim_pid));

    let waiter = tokio::spawn(started.wait());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "{kind}: wait() ended early");
    rt.kill(id, 15).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(60), waiter)
        .await
        .expect("wait() resolves after the container exits")
        .unwrap()
        .unwrap();
    assert_eq!(exit.code, 7, "{kind}: {}", log_of(&dir, 0));
    assert!(!exit.oom_killed);
    assert!(
        matches!(exit.state.status, Status::Terminated { exit_code: 7, ref reason, .. } if reason == "Error"),
        "{kind}: {:?}",
        exit.state
    );
    assert!(log_of(&dir, 0).contains("stdout:got-term\n"), "{kind}");
    let other = tokio::time::timeout(Duration::from_secs(10), again.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.code, 7);
    // Recorded on disk, cleaned up, and the shim is gone.
    assert_eq!(shim::read_exit(&dir).unwrap().exit_code, 7);
    assert!(matches!(
        container::read_state(&data, id).unwrap().status,
        Status::Terminated { exit_code: 7, .. }
    ));
    assert!(!sandbox::rootfs::is_mountpoint(&dir.join("rootfs")));
    eventually("the shim exits", || !shim::is_alive(shim_pid, &dir)).await;
    assert_ne!(rt.status(id).await.unwrap().as_deref(), Some("running"));
    container::remove(&data, id).unwrap();
}

#[tokio::test]
async fn container_outlives_its_starter_and_is_adopted() {
    if !use_shim() {
        return;
    }
    for kind in common::runtimes() {
        survives(kind).await;
    }
}

async fn unwatched(kind: RuntimeKind, store: &ImageStore, data: &Path) {
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, data).unwrap());
    let id = "brief";
    let script = "echo before; sleep 2; echo after >&2; exit 3";
    let _reaper = Reaper {
        data: data.to_owned(),
        kind,
        ids: vec![id],
    };
    let helper = spawn_helper(kind, data, id, script, "");
    let shim_pid = helper.shim_pid;
    let dir = container::dir(data, id);
    helper.kill_group();
    // It ends while nobody watches.
    eventually("the shim records the exit", || {
        !shim::is_alive(shim_pid, &dir)
    })
    .await;
    let started = container::adopt(data, rt.clone(), id)
        .await
        .expect("an exited container is found with its exit");
    assert_eq!(started.shim_pid(), None);
    let exit = tokio::time::timeout(Duration::from_secs(5), started.wait())
        .await
        .expect("the recorded exit comes at once")
        .unwrap();
    assert_eq!(exit.code, 3, "{kind}");
    assert!(
        matches!(exit.state.status, Status::Terminated { exit_code: 3, ref reason, ref finished_at, .. }
            if reason == "Error" && !finished_at.is_empty()),
        "{kind}: {:?}",
        exit.state
    );
    assert_eq!(
        log_of(&dir, 0),
        "stdout:before\nstderr:after\n",
        "{kind}: output written after the starter died is logged"
    );
    assert!(!sandbox::rootfs::is_mountpoint(&dir.join("rootfs")));

    // A restart (from this process, under a shim too) gets its own log; the previous stays.
    let image = store
        .ensure(&layout_ref(data), &PullOptions::default())
        .await
        .unwrap();
    let cfg = sh("echo second run; exit 0");
    let sb = SandboxContext {
        hostname: "pod-x".into(),
        ..Default::default()
    };
    let started = container::start(
        data,
        store,
        rt.clone(),
        container::Launch {
            id,
            image: &image,
            config: &cfg,
            sandbox: &sb,
            io: Io::Logged,
            restart_count: 1,
        },
    )
    .await
    .unwrap();
    assert!(started.shim_pid().is_some());
    let exit = started.wait().await.unwrap();
    assert_eq!(exit.code, 0, "{kind}: {}", log_of(&dir, 1));
    assert_eq!(exit.state.restart_count, 1);
    assert!(
        matches!(exit.state.status, Status::Terminated { ref reason, .. } if reason == "Completed")
    );
    assert_eq!(log_of(&dir, 1), "stdout:second run\n", "{kind}");
    assert_eq!(log_of(&dir, 0), "stdout:before\nstderr:after\n", "{kind}");
    let adopted = container::adopt(data, rt, id).await.unwrap();
    let again = adopted.wait().await.unwrap();
    assert_eq!((again.code, again.state.restart_count), (0, 1));
    container::remove(data, id).unwrap();
}

#[tokio::test]
async fn exit_while_nobody_watches_is_recorded() {
    if !use_shim() {
        return;
    }
    let (_tmp, data, store) = prepare().await;
    for kind in common::runtimes() {
        unwatched(kind, &store, &data).await;
    }
}

#[tokio::test]
async fn unknown_failed_and_lost_containers() {
    if !use_shim() {
        return;
    }
    let (_tmp, data, store) = prepare().await;
    let image = store
        .ensure(&layout_ref(&data), &PullOptions::default())
        .await
        .unwrap();
    let sb = SandboxContext {
        hostname: "pod-x".into(),
        ..Default::default()
    };
    for kind in common::runtimes() {
        let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &data).unwrap());
        let _reaper = Reaper {
            data: data.clone(),
            kind,
            ids: vec!["bad", "lost"],
        };
        assert!(container::adopt(&data, rt.clone(), "nope").await.is_none());

        // The runtime refuses: start fails with its message, and there is nothing to adopt.
        let bad = ContainerConfig {
            name: "main".into(),
            command: Some(vec!["/no/such/program".into()]),
            ..Default::default()
        };
        let launch = |id, config| container::Launch {
            id,
            image: &image,
            config,
            sandbox: &sb,
            io: Io::Logged,
            restart_count: 0,
        };
        match container::start(&data, &store, rt.clone(), launch("bad", &bad)).await {
            Err(e) => {
                assert!(container::adopt(&data, rt.clone(), "bad").await.is_none());
                eprintln!("{kind}: refused as expected: {e}");
            }
            // runsc reports a missing program only as the exit code.
            Ok(s) => assert_ne!(s.wait().await.unwrap().code, 0, "{kind}"),
        }

        // A shim killed outright: its container is stopped and reported lost (255, Unknown).
        let cfg = sh("while true; do echo alive; sleep 0.2; done");
        let started = container::start(&data, &store, rt.clone(), launch("lost", &cfg))
            .await
            .unwrap();
        let pid = started.shim_pid().unwrap();
        let dir = started.dir.clone();
        eventually("it logs", || log_of(&dir, 0).contains("alive")).await;
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(60), started.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code, 255, "{kind}");
        assert!(
            matches!(exit.state.status, Status::Terminated { ref reason, .. } if reason == "Unknown")
        );
        assert_ne!(rt.status("lost").await.unwrap().as_deref(), Some("running"));
        let again = container::adopt(&data, rt.clone(), "lost").await.unwrap();
        assert_eq!(again.wait().await.unwrap().code, 255);
        container::remove(&data, "lost").unwrap();
        container::remove(&data, "bad").unwrap();
    }
}

#[tokio::test]
async fn gvisor_pod_sandbox_outlives_its_starter() {
    if !use_shim() {
        return;
    }
    if !common::has(RuntimeKind::Gvisor) {
        println!("SKIPPED: runsc not installed");
        return;
    }
    let kind = RuntimeKind::Gvisor;
    let (_tmp, data, store) = prepare().await;
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &data).unwrap());
    let (pause, id) = ("pod1-pause", "pod1-main");
    let script = "trap 'echo bye; exit 5' TERM; while true; do echo in-pod; sleep 0.2; done";
    let _reaper = Reaper {
        data: data.clone(),
        kind,
        ids: vec![id, pause],
    };
    let helper = spawn_helper(kind, &data, id, script, pause);
    let pause_shim = helper.pause_shim_pid.unwrap();
    helper.kill_group();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (pdir, dir) = (container::dir(&data, pause), container::dir(&data, id));
    assert!(shim::is_alive(pause_shim, &pdir));
    assert_eq!(rt.status(pause).await.unwrap().as_deref(), Some("running"));
    let before = log_of(&dir, 0).lines().count();
    eventually("the pod's container keeps logging", || {
        log_of(&dir, 0).lines().count() > before + 2
    })
    .await;

    let main = container::adopt(&data, rt.clone(), id).await.unwrap();
    let pause_started = container::adopt(&data, rt.clone(), pause).await.unwrap();
    assert_eq!(pause_started.shim_pid(), Some(pause_shim));
    rt.kill(id, 15).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(60), main.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code, 5, "{}", log_of(&dir, 0));
    assert!(log_of(&dir, 0).contains("stdout:bye\n"));
    // The sandbox outlives its containers until the pod is removed.
    assert_eq!(rt.status(pause).await.unwrap().as_deref(), Some("running"));
    rt.kill(pause, 9).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(60), pause_started.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code, 137);
    assert_eq!(rt.status(pause).await.unwrap(), None);
    container::remove(&data, id).unwrap();
    container::remove(&data, pause).unwrap();

    // Joining a sandbox that is not there: runsc refuses, the shim says why, start fails.
    let image = store
        .ensure(&layout_ref(&data), &PullOptions::default())
        .await
        .unwrap();
    let sb = SandboxContext {
        hostname: "pod-x".into(),
        annotations: vec![
            (runtime::CONTAINER_TYPE.into(), "container".into()),
            (runtime::SANDBOX_ID.into(), "no-such-sandbox".into()),
        ],
        ..Default::default()
    };
    let cfg = sh("echo never");
    let err = container::start(
        &data,
        &store,
        rt.clone(),
        container::Launch {
            id: "orphan",
            image: &image,
            config: &cfg,
            sandbox: &sb,
            io: Io::Logged,
            restart_count: 0,
        },
    )
    .await
    .expect_err("no sandbox to join");
    assert!(
        matches!(err, container::ContainerError::Shim { .. }),
        "{err:?}"
    );
    assert!(container::adopt(&data, rt, "orphan").await.is_none());
    container::remove(&data, "orphan").unwrap();
}

#[tokio::test]
async fn killing_everything_inside_a_pod_spares_the_shims() {
    if !use_shim() {
        return;
    }
    let (_tmp, data, store) = prepare().await;
    let image = store
        .ensure(&layout_ref(&data), &PullOptions::default())
        .await
        .unwrap();
    let sb = SandboxContext {
        hostname: "pod-x".into(),
        ..Default::default()
    };
    for kind in common::runtimes() {
        let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &data).unwrap());
        let _reaper = Reaper {
            data: data.clone(),
            kind,
            ids: vec!["killer", "bystander"],
        };
        let start = |id: &'static str, script: &'static str| {
            let (rt, data, store, image, sb) = (rt.clone(), &data, &store, &image, &sb);
            async move {
                container::start(
                    data,
                    store,
                    rt,
                    container::Launch {
                        id,
                        image,
                        config: &sh(script),
                        sandbox: sb,
                        io: Io::Logged,
                        restart_count: 0,
                    },
                )
                .await
                .unwrap()
            }
        };
        let bystander = start(
            "bystander",
            "trap 'echo term; exit 9' TERM; while true; do echo up; sleep 0.2; done",
        )
        .await;
        let by_pid = bystander.shim_pid().unwrap();
        let by_dir = bystander.dir.clone();
        // Signal every process it can see, as root inside its container.
        let killer = start(
            "killer",
            "sleep 5 & sleep 0.3; kill -9 -1; kill -15 -1; echo still-here; exit 4",
        )
        .await;
        let killer_pid = killer.shim_pid().unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(60), killer.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code, 4, "{kind}");
        let killer_log = log_of(&container::dir(&data, "killer"), 0);
        assert!(killer_log.contains("still-here"), "{kind}: {killer_log}");
        // Its own shim ended normally, the other container's shim and container are untouched.
        let shim_log =
            std::fs::read_to_string(container::dir(&data, "killer").join(shim::LOG_FILE))
                .unwrap_or_default();
        assert!(!shim::is_alive(
            killer_pid,
            &container::dir(&data, "killer")
        ));
        assert!(shim::is_alive(by_pid, &by_dir), "{kind}: {shim_log}");
        assert_eq!(
            rt.status("bystander").await.unwrap().as_deref(),
            Some("running"),
            "{kind}"
        );

        // SIGTERM to a shim is passed on to its container.
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(by_pid as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(60), bystander.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.code, 9, "{kind}: {}", log_of(&by_dir, 0));
        assert!(log_of(&by_dir, 0).contains("stdout:term\n"), "{kind}");
        container::remove(&data, "killer").unwrap();
        container::remove(&data, "bystander").unwrap();
    }
}

/// A `tty` container joining a pod's gVisor sandbox (runsc create/start/wait; runsc sends the
/// terminal it allocates to the console socket given to `create` when `start` runs) gets it as
/// its stdio (`[ -t 0 ]` holds) and sees the size an attach session sets. (Unlike `runsc run`
/// and `runsc exec`, runsc 20221219 leaves no runtime process that is the terminal's
/// controlling process here, so a typed ^C does not become SIGINT inside the pod.)
#[tokio::test]
async fn gvisor_pod_container_gets_a_terminal() {
    if !use_shim() {
        return;
    }
    if !common::has(RuntimeKind::Gvisor) {
        println!("SKIPPED: runsc not installed");
        return;
    }
    use tokio::io::AsyncWriteExt as _;
    let kind = RuntimeKind::Gvisor;
    let (_tmp, data, store) = prepare().await;
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &data).unwrap());
    let (pause, id) = ("podt-pause", "podt-main");
    let _reaper = Reaper {
        data: data.clone(),
        kind,
        ids: vec![id, pause],
    };
    write_pause_bundle(&data, pause);
    let pause_started = container::start_pause(&data, rt.clone(), pause)
        .await
        .unwrap();
    let image = store
        .ensure(&layout_ref(&data), &PullOptions::default())
        .await
        .unwrap();
    let sb = SandboxContext {
        hostname: "pod-t".into(),
        annotations: vec![
            (runtime::CONTAINER_TYPE.into(), "container".into()),
            (runtime::SANDBOX_ID.into(), pause.into()),
        ],
        ..Default::default()
    };
    let dir = container::dir(&data, id);
    shim::StdinSpec {
        stdin: true,
        stdin_once: false,
        tty: true,
    }
    .write(&dir)
    .unwrap();
    let cfg = ContainerConfig {
        tty: true,
        ..sh(
            "[ -t 0 ] && [ -t 1 ] && echo stdin-is-a-tty; echo ready; i=0; \
            while [ $i -lt 100 ]; do [ \"$(busybox stty size)\" = '33 91' ] && exit 7; \
            sleep 0.2; i=$((i+1)); done; exit 3",
        )
    };
    let started = container::start(
        &data,
        &store,
        rt.clone(),
        container::Launch {
            id,
            image: &image,
            config: &cfg,
            sandbox: &sb,
            io: Io::Logged,
            restart_count: 0,
        },
    )
    .await
    .unwrap();
    eventually("the pod's tty container is ready", || {
        log_of(&dir, 0).contains("ready")
    })
    .await;
    assert!(
        log_of(&dir, 0).contains("stdin-is-a-tty"),
        "{}",
        log_of(&dir, 0)
    );
    let mut conn = shim::connect(&dir).await.unwrap();
    conn.write_all(&shim::frame(shim::FRAME_RESIZE, &[0, 91, 0, 33]))
        .await
        .unwrap();
    let Ok(exit) = tokio::time::timeout(Duration::from_secs(15), started.wait()).await else {
        panic!(
            "the pod container did not see its terminal's new size: {}",
            log_of(&dir, 0)
        );
    };
    let exit = exit.unwrap();
    assert_eq!(exit.code, 7, "{}", log_of(&dir, 0));
    drop(conn);
    rt.kill(pause, 9).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(60), pause_started.wait()).await;
    container::remove(&data, id).unwrap();
    container::remove(&data, pause).unwrap();
}
