//! The micro-VM path end to end: a busybox image built here, pulled into the image store from an
//! OCI layout, turned into an erofs disk, booted in QEMU `-M microvm` (software emulation on
//! hosts without VMX/SVM), with the container's logs, exit code, exec, signals and teardown.
//! Needs the assets of `scripts/microvm-assets.sh`, qemu-system-x86 and erofs-utils: without
//! them the tests say SKIPPED, or fail when `NODELESS_REQUIRE_MICROVM` is set (CI).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{busybox_layout, data_dir};
use sandbox::image::{ImageStore, PullOptions, Source, StoreOptions};
use sandbox::microvm::{self, ContainerSpec, ExecEvent, MicroVm, VmAssets, VmConfig, proto::State};

/// The assets, or `None` after printing why the test is skipped (a panic under
/// `NODELESS_REQUIRE_MICROVM`).
fn assets_or_skip(test: &str) -> Option<VmAssets> {
    let missing = match (VmAssets::locate(), microvm::qemu_binary()) {
        (Ok(a), Ok(_)) if Path::new("/usr/bin/mkfs.erofs").exists() => return Some(a),
        (Err(e), _) | (_, Err(e)) => e.to_string(),
        _ => "mkfs.erofs not found; apt-get install erofs-utils".to_owned(),
    };
    if std::env::var_os("NODELESS_REQUIRE_MICROVM").is_some() {
        panic!(
            "{test}: micro-VM prerequisites missing (NODELESS_REQUIRE_MICROVM is set): {missing}"
        );
    }
    println!("SKIPPED {test}: {missing}");
    None
}

/// Pulls the test busybox image (two layers with a whiteout and an opaque dir) and makes its
/// erofs disk; returns the disk path.
async fn busybox_disk(data: &Path) -> PathBuf {
    let layout = data.join("layout");
    busybox_layout(&layout, &["sh"]);
    let store = ImageStore::open(data.join("images"), StoreOptions::default()).unwrap();
    let src: Source = format!("oci:{}:latest", layout.display()).parse().unwrap();
    let img = store.pull(&src, &PullOptions::default()).await.unwrap();
    let disk = data.join("disks/busybox.erofs");
    microvm::make_erofs(&store.lower_dirs(&img), &disk)
        .await
        .unwrap();
    assert!(disk.metadata().unwrap().len() > 0);
    // No merge mount is left behind.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&data.display().to_string()), "{mounts}");
    disk
}

fn spec(args: &[&str]) -> ContainerSpec {
    ContainerSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into(), "GREETING=hi from env".into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
    }
}

fn log_records(p: &Path) -> Vec<(String, String)> {
    std::fs::read(p)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let r = sandbox::logs::parse_line(l).expect("a CRI log line");
            (r.stream, String::from_utf8_lossy(&r.text).into_owned())
        })
        .collect()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn leftovers(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn container_runs_logs_and_exits_in_a_micro_vm() {
    let Some(assets) = assets_or_skip("container_runs_logs_and_exits_in_a_micro_vm") else {
        return;
    };
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    let vm_dir = data.join("vm1");
    let config = VmConfig::new(assets, &vm_dir);
    let mut vm = MicroVm::boot(
        &config,
        &disk,
        &spec(&[
            "sh",
            "-c",
            "echo hello; echo \"$GREETING\"; pwd; echo err >&2; exit 3",
        ]),
    )
    .await
    .unwrap();
    let code = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("the container ends")
        .unwrap();
    assert_eq!(
        code,
        3,
        "console:\n{}",
        std::fs::read_to_string(vm.console_path()).unwrap_or_default()
    );
    let times = vm.boot_times();
    println!(
        "micro-VM (TCG) boot: QEMU start -> agent ready {:?}, -> first container output {:?}",
        times.to_ready, times.to_first_output
    );
    let recs = log_records(vm.log_path());
    assert!(
        recs.contains(&("stdout".into(), "hello".into())),
        "{recs:?}"
    );
    assert!(
        recs.contains(&("stdout".into(), "hi from env".into())),
        "{recs:?}"
    );
    assert!(recs.contains(&("stdout".into(), "/".into())), "{recs:?}");
    assert!(recs.contains(&("stderr".into(), "err".into())), "{recs:?}");

    // The guest powers itself off once the container ended.
    let pid = vm.pid().unwrap();
    assert!(
        vm.wait_vm_exit(Duration::from_secs(30)).await.unwrap(),
        "qemu still running after the container exited"
    );
    vm.destroy().await.unwrap();
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(leftovers(&vm_dir), ["container.log"]);
}

#[tokio::test]
async fn exec_status_and_kill_in_a_micro_vm() {
    let Some(assets) = assets_or_skip("exec_status_and_kill_in_a_micro_vm") else {
        return;
    };
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    let vm_dir = data.join("vm2");
    let config = VmConfig::new(assets, &vm_dir);
    let mut vm = MicroVm::boot(
        &config,
        &disk,
        &spec(&["sh", "-c", "echo started; exec sleep 1000"]),
    )
    .await
    .unwrap();
    let pid = vm.pid().unwrap();
    assert!(matches!(vm.status().await.unwrap(), State::Running { .. }));

    let out = vm.exec(&["cat", "/etc/passwd"], None).await.unwrap();
    assert_eq!(out.code, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("root:x:0:0:root:/root:/bin/sh\n"),
        "{out:?}"
    );
    let out = vm.exec(&["sh", "-c", "exit 5"], None).await.unwrap();
    assert_eq!(out.code, 5);
    let out = vm
        .exec(&["sh", "-c", "cat; echo oops >&2"], Some(b"from stdin\n"))
        .await
        .unwrap();
    assert_eq!(
        (out.code, &out.stdout[..], &out.stderr[..]),
        (0, &b"from stdin\n"[..], &b"oops\n"[..])
    );
    // An interactive session: stdin and stdout stream both ways, a signal ends it.
    let mut session = vm.exec_session(&spec(&["cat"]), true, false).await.unwrap();
    session.write_stdin(b"ping\n").await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), session.next_event())
        .await
        .expect("cat echoes while still running");
    assert_eq!(first, Some(ExecEvent::Stdout(b"ping\n".to_vec())));
    session.signal(15).await.unwrap();
    assert_eq!(session.next_event().await, Some(ExecEvent::Exit(128 + 15)));
    // On a terminal: the process has a controlling tty in the container's /dev/pts, the host
    // resizes it, and the terminal echoes input.
    let mut session = vm
        .exec_session(
            &spec(&[
                "sh",
                "-c",
                "read x; busybox stty size; busybox tty; echo got $x",
            ]),
            true,
            true,
        )
        .await
        .unwrap();
    session.resize(40, 123).await.unwrap();
    session.write_stdin(b"go\n").await.unwrap();
    let mut text = Vec::new();
    let code = loop {
        let Ok(event) = tokio::time::timeout(Duration::from_secs(30), session.next_event()).await
        else {
            panic!(
                "the tty session did not end; output: {:?}",
                String::from_utf8_lossy(&text)
            );
        };
        match event {
            Some(ExecEvent::Stdout(d)) => text.extend_from_slice(&d),
            Some(ExecEvent::Exit(c)) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    let text = String::from_utf8_lossy(&text);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text, "go\r\n40 123\r\n/dev/pts/0\r\ngot go\r\n");
    // The image's layers were merged (whiteout, opaque dir, second layer's files).
    let out = vm
        .exec(
            &[
                "sh",
                "-c",
                "cat /etc/motd; ls /data; test -e /etc/remove-me || echo removed",
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from layer 2\nnew\nremoved\n"
    );
    // The root filesystem is writable (tmpfs upper layer) and its own.
    let out = vm
        .exec(&["sh", "-c", "echo x > /written && cat /written"], None)
        .await
        .unwrap();
    assert_eq!(out.stdout, b"x\n");
    // Nothing of the VM's plumbing is visible: no disk or channel device, no agent binary.
    let out = vm
        .exec(
            &["sh", "-c", "ls /dev; test -e /dev/vda || test -e /dev/vport0p1 || test -e /init || echo isolated"],
            None,
        )
        .await
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.ends_with("isolated\n"), "{listing}");
    assert!(
        !listing.contains("vda") && !listing.contains("vport"),
        "{listing}"
    );
    // Root in the container is not root of the VM: no mounting (the agent's devices), no device
    // nodes, no way into the agent's root through /proc/1/root.
    let out = vm
        .exec(
            &[
                "sh",
                "-c",
                "ls /proc/1/root/ 2>/dev/null && echo reached-agent; \
                 busybox mount -t devtmpfs d /tmp 2>/dev/null && echo mounted; \
                 busybox mknod /x c 1 3 2>/dev/null && echo mknod; id -u",
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    // A program that does not exist is an error, not a hang.
    let err = vm.exec(&["/no/such/program"], None).await.unwrap_err();
    assert!(err.to_string().contains("/no/such/program"), "{err}");

    if let Some(kib) = rss_kib(pid) {
        println!(
            "micro-VM (TCG, 256 MiB guest): QEMU RSS {} MiB with an idle container",
            kib / 1024
        );
    }

    vm.kill(9).await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(60), vm.wait())
        .await
        .expect("the container ends after SIGKILL")
        .unwrap();
    assert_eq!(code, 128 + 9);
    let recs = log_records(vm.log_path());
    assert_eq!(recs, [("stdout".to_owned(), "started".to_owned())]);
    assert!(
        vm.wait_vm_exit(Duration::from_secs(30)).await.unwrap(),
        "qemu still running after the container was killed"
    );
    vm.destroy().await.unwrap();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "qemu {pid} is still there"
    );
    assert_eq!(leftovers(&vm_dir), ["container.log"]);
}

/// Boot figures: `cargo test -p sandbox --test microvm -- --ignored --nocapture boot_figures`.
#[tokio::test]
#[ignore]
async fn boot_figures() {
    let Some(assets) = assets_or_skip("boot_figures") else {
        return;
    };
    let runs: usize = std::env::var("MICROVM_BOOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let (_d, data) = data_dir();
    let disk = busybox_disk(&data).await;
    let mut firsts = Vec::new();
    for i in 0..runs {
        let config = VmConfig::new(assets.clone(), data.join(format!("b{i}")));
        let mut vm = MicroVm::boot(&config, &disk, &spec(&["echo", "hi"]))
            .await
            .unwrap();
        assert_eq!(vm.wait().await.unwrap(), 0);
        let t = vm.boot_times();
        println!(
            "boot {i}: ready {:?}, first output {:?}",
            t.to_ready, t.to_first_output
        );
        firsts.push(t.to_first_output.unwrap());
        vm.wait_vm_exit(Duration::from_secs(30)).await.unwrap();
        vm.destroy().await.unwrap();
    }
    firsts.sort();
    println!(
        "QEMU start -> first container output over {runs} boots: min {:?}, median {:?}, max {:?}",
        firsts[0],
        firsts[runs / 2],
        firsts[runs - 1]
    );
}
