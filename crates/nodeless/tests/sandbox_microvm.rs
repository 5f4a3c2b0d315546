//! `nodeless sandbox run --runtime microvm` end to end with the real binary: a busybox OCI
//! layout built here, its output on our stdout/stderr, its exit code as the command's, the
//! command line's env/workdir/user/cpu/memory in the VM, Ctrl-C, -i and -t, and the clear
//! message when the assets are missing. Booting needs the assets of `scripts/microvm-assets.sh`,
//! qemu-system-x86 and erofs-utils: without them those tests say SKIPPED, or fail when
//! `NODELESS_REQUIRE_MICROVM` is set (CI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sandbox::microvm::{self, VmAssets};

/// `Ok` when a VM can boot here, else `None` after printing why the test is skipped (a panic
/// under `NODELESS_REQUIRE_MICROVM`).
fn assets_or_skip(test: &str) -> Option<VmAssets> {
    let missing = match microvm::prerequisites() {
        Ok(a) => return Some(a),
        Err(e) => e.to_string(),
    };
    if std::env::var_os("NODELESS_REQUIRE_MICROVM").is_some() {
        panic!(
            "{test}: micro-VM prerequisites missing (NODELESS_REQUIRE_MICROVM is set): {missing}"
        );
    }
    println!("SKIPPED {test}: {missing}");
    None
}

/// A data dir and a busybox layout whose image runs `cmd` by default.
struct Setup {
    _dir: tempfile::TempDir,
    data: PathBuf,
    image: String,
}

fn setup(cmd: &[&str]) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    common::image::busybox_layout(&layout, "v1", cmd, &[]);
    Setup {
        data: dir.path().join("data"),
        image: format!("oci:{}:v1", layout.display()),
        _dir: dir,
    }
}

/// A data dir and an image that does not exist: for what must fail before any pull.
fn no_image() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    Setup {
        data: dir.path().join("data"),
        image: format!("oci:{}:v1", dir.path().join("no-layout").display()),
        _dir: dir,
    }
}

fn nodeless(s: &Setup, run_args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nodeless"));
    c.arg("sandbox")
        .arg("--data-dir")
        .arg(&s.data)
        .args(["run", "--runtime", "microvm"])
        .args(run_args)
        .env("NODELESS_LOG", "warn");
    c
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// QEMU processes whose command line names `dir`.
fn qemus_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let c = String::from_utf8_lossy(&c).replace('\0', " ");
                    c.contains("qemu-system") && c.contains(&needle)
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn microvm_run_prints_output_and_exits_with_the_container_code() {
    if assets_or_skip("microvm_run_prints_output_and_exits_with_the_container_code").is_none() {
        return;
    }
    let s = setup(&["sh", "-c", "echo from the image cmd"]);
    let t = Instant::now();
    let out = nodeless(&s, &[&s.image, "--", "sh", "-c", "echo hello; exit 3"])
        .output()
        .unwrap();
    println!("sandbox run --runtime microvm took {:?}", t.elapsed());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\n",
        "{}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    // Nothing of the run is left: no QEMU, no container directory (no --keep).
    assert!(qemus_under(&s.data).is_empty());
    let containers: Vec<_> = std::fs::read_dir(s.data.join("containers"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(containers.is_empty(), "{containers:?}");

    // The image's own command when none is given; the disk made by the first run is reused.
    let out = nodeless(&s, &[&s.image]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "from the image cmd\n",
        "{}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

#[test]
fn microvm_run_applies_env_workdir_user_and_size() {
    if assets_or_skip("microvm_run_applies_env_workdir_user_and_size").is_none() {
        return;
    }
    let s = setup(&["true"]);
    let script = "echo \"$GREETING\"; pwd; id -u; grep -c ^processor /proc/cpuinfo; \
                  grep MemTotal /proc/meminfo; echo oops >&2";
    let out = nodeless(
        &s,
        &[
            "--cpu",
            "2",
            "--memory",
            "300Mi",
            "-e",
            "GREETING=hi there",
            "-w",
            "/tmp",
            "-u",
            "65534",
            "--name",
            "sized",
            "--keep",
            &s.image,
            "--",
            "sh",
            "-c",
            script,
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[..4],
        ["hi there", "/tmp", "65534", "2"],
        "{}",
        show(&out)
    );
    // MemTotal is what the 300 MiB VM's kernel has left for use.
    let kib: u64 = lines[4]
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}", show(&out)));
    assert!(
        (200 * 1024..=300 * 1024).contains(&kib),
        "MemTotal {kib} kB for --memory 300Mi\n{}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("oops\n"),
        "{}",
        show(&out)
    );
    // --keep: the log stays for `sandbox logs`, the VM's own files do not.
    let logs = Command::new(env!("CARGO_BIN_EXE_nodeless"))
        .arg("sandbox")
        .arg("--data-dir")
        .arg(&s.data)
        .args(["logs", "sized"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&logs.stdout).starts_with("hi there\n/tmp\n"),
        "{}",
        show(&logs)
    );
    assert!(!s.data.join("containers/sized/microvm").exists());
}

#[test]
fn microvm_run_stops_on_ctrl_c() {
    if assets_or_skip("microvm_run_stops_on_ctrl_c").is_none() {
        return;
    }
    let s = setup(&["true"]);
    let mut child = nodeless(
        &s,
        &[
            "--grace",
            "5",
            &s.image,
            "--",
            "sh",
            "-c",
            "echo started; sleep 1000 & wait",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    assert_eq!(qemus_under(&s.data).len(), 1, "one VM runs the container");
    let t = Instant::now();
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "stderr:\n{stderr}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "SIGTERM ends sh at once: {:?}",
        t.elapsed()
    );
    assert!(stderr.contains("stopping"), "{stderr}");
    assert!(qemus_under(&s.data).is_empty(), "QEMU is gone");
}

#[test]
fn microvm_run_interactive_feeds_stdin() {
    if assets_or_skip("microvm_run_interactive_feeds_stdin").is_none() {
        return;
    }
    let s = setup(&["true"]);
    let mut child = nodeless(
        &s,
        &[
            "-i",
            &s.image,
            "--",
            "sh",
            "-c",
            "read first; echo \"first: $first\"; cat; echo err >&2; exit 2",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    std::io::Write::write_all(&mut stdin, b"one\n").unwrap();
    // The answer comes while the container still runs (its stdin is still open).
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "first: one\n");
    std::io::Write::write_all(&mut stdin, b"two\nthree").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(rest, "two\nthree", "stderr:\n{stderr}");
    assert!(stderr.contains("err\n"), "{stderr}");
    assert_eq!(status.code(), Some(2), "stderr:\n{stderr}");
}

#[test]
fn microvm_run_tty_gives_a_terminal() {
    if assets_or_skip("microvm_run_tty_gives_a_terminal").is_none() {
        return;
    }
    let s = setup(&["true"]);
    let out = nodeless(
        &s,
        &[
            "-t",
            &s.image,
            "--",
            "sh",
            "-c",
            "test -t 0 && test -t 1 && echo \"tty $TERM\"; exit 4",
        ],
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    // A terminal turns "\n" into "\r\n".
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "tty xterm\r\n",
        "{}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
}

/// Needs no VM (nor an image): the message says what to install or run.
#[test]
fn microvm_run_without_assets_says_what_to_run() {
    let s = no_image();
    let out = nodeless(&s, &[&s.image])
        .env("NODELESS_MICROVM_ASSETS", s.data.join("no-assets"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("scripts/microvm-assets.sh")
            || err.contains("apt-get install qemu-system-x86"),
        "{}",
        show(&out)
    );
}
