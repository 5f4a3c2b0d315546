//! `nodeless sandbox run` with the OCI runtimes (`--runtime gvisor`: runsc, `--runtime
//! container`: crun) end to end with the real binary, against a busybox OCI layout built here:
//! the container's output on ours, its exit code as the command's, env/workdir/user,
//! `--cpu`/`--memory` as Kubernetes quantities applied to the container, `-i` (our stdin to
//! the container's), `-t` (a terminal of its own, sized as ours) and Ctrl-C. Each test runs once
//! per runtime. Without runsc or crun the tests say SKIPPED, or fail when
//! `NODELESS_REQUIRE_SANDBOX` is set (CI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The runtimes under test and the tool each needs.
const RUNTIMES: [(&str, &str); 2] = [("gvisor", "runsc"), ("container", "crun")];

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

/// The runtimes whose tool is installed (all of them, or a failure, under
/// `NODELESS_REQUIRE_SANDBOX`).
fn runtimes() -> Vec<&'static str> {
    RUNTIMES
        .iter()
        .filter(|(_, tool)| common::procs::needs_sandboxes(&[tool]))
        .map(|(r, _)| *r)
        .collect()
}

/// `nodeless sandbox --data-dir DATA run --runtime RUNTIME ARGS...`.
fn nodeless(s: &Setup, runtime: &str, run_args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_nodeless"));
    c.arg("sandbox")
        .arg("--data-dir")
        .arg(&s.data)
        .args(["run", "--runtime", runtime])
        .args(run_args)
        .env("NODELESS_LOG", "warn");
    c
}

fn show(runtime: &str, out: &Output) -> String {
    format!(
        "runtime {runtime}, status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The containers left in the data dir (none after a run without `--keep`).
fn containers_left(s: &Setup) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(s.data.join("containers"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

#[test]
fn run_prints_output_and_exits_with_the_container_code() {
    let s = setup(&["sh", "-c", "echo from the image cmd"]);
    for rt in runtimes() {
        let out = nodeless(
            &s,
            rt,
            &[
                &s.image,
                "--",
                "sh",
                "-c",
                "echo hello; echo oops >&2; exit 3",
            ],
        )
        .output()
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello\n",
            "{}",
            show(rt, &out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("oops\n"),
            "{}",
            show(rt, &out)
        );
        assert_eq!(out.status.code(), Some(3), "{}", show(rt, &out));
        assert!(containers_left(&s).is_empty(), "{:?}", containers_left(&s));

        // The image's own command when none is given.
        let out = nodeless(&s, rt, &[&s.image]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "from the image cmd\n",
            "{}",
            show(rt, &out)
        );
        assert_eq!(out.status.code(), Some(0), "{}", show(rt, &out));
    }
}

/// Directories named `name` below `root` (a few levels deep) and all below them.
fn cgroup_dirs(root: &Path, name: &str, depth: u32, inside: bool, out: &mut Vec<PathBuf>) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let here = inside || e.file_name() == name;
        if here {
            out.push(e.path());
        }
        cgroup_dirs(&e.path(), name, depth - 1, here, out);
    }
}

/// The memory limit (bytes) and CPU quota (millicores) the host's cgroups (v1 or v2) hold for
/// container `id`: the smallest limit and any quota on its cgroups and those below them.
fn host_limits(id: &str) -> (Option<u64>, Option<u64>) {
    let mut dirs = Vec::new();
    cgroup_dirs(Path::new("/sys/fs/cgroup"), id, 8, false, &mut dirs);
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let memory = dirs
        .iter()
        .filter_map(|d| {
            read(d.join("memory.limit_in_bytes"))
                .or_else(|| read(d.join("memory.max")))?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .min();
    let cpu = dirs.iter().find_map(|d| {
        let (quota, period) = match (
            read(d.join("cpu.cfs_quota_us")),
            read(d.join("cpu.cfs_period_us")),
        ) {
            (Some(q), Some(p)) => (q.trim().parse::<i64>().ok()?, p.trim().parse::<i64>().ok()?),
            _ => {
                let max = read(d.join("cpu.max"))?;
                let mut it = max.split_whitespace();
                (it.next()?.parse().ok()?, it.next()?.parse().ok()?)
            }
        };
        (quota > 0 && period > 0).then(|| u64::try_from(quota * 1000 / period).unwrap_or(0))
    });
    (memory, cpu)
}

#[test]
fn run_applies_env_workdir_user_cpu_and_memory() {
    let s = setup(&["true"]);
    for rt in runtimes() {
        let id = format!("limits-{rt}");
        // The answers, then the container waits for us to look at its cgroups from the host.
        let script = "echo \"$GREETING\"; pwd; id -u; id -g; \
                      grep MemTotal /proc/meminfo; echo ready; read x";
        let mut child = nodeless(
            &s,
            rt,
            &[
                "--cpu",
                "250m",
                "--memory",
                "64Mi",
                "-e",
                "GREETING=hi there",
                "-w",
                "/tmp",
                "-u",
                "65534:65533",
                "--name",
                &id,
                "-i",
                &s.image,
                "--",
                "sh",
                "-c",
                script,
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 || line == "ready\n" {
                break;
            }
            lines.push(line.trim_end().to_owned());
        }
        let (memory, cpu) = host_limits(&id);
        child.stdin.take().unwrap().write_all(b"done\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", show(rt, &out));
        assert_eq!(
            lines.get(..4),
            Some(&["hi there", "/tmp", "65534", "65533"].map(String::from)[..]),
            "runtime {rt}: {lines:?}"
        );
        assert_eq!(memory, Some(64 << 20), "runtime {rt}: memory limit of {id}");
        assert_eq!(cpu, Some(250), "runtime {rt}: CPU quota of {id}");
        // gVisor's kernel has the container's memory limit as its whole memory.
        if rt == "gvisor" {
            let kib: Option<u64> = lines
                .get(4)
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
            assert_eq!(kib, Some(64 * 1024), "runtime {rt}: {lines:?}");
        }
    }
}

/// A quantity that is not a Kubernetes one is refused before anything is pulled or run (the
/// image here does not even exist), saying which flag, what value and why.
#[test]
fn run_refuses_a_bad_quantity() {
    let s = setup(&["true"]);
    let missing = format!("oci:{}:v1", s.data.join("no-layout").display());
    for (flag, value) in [("--memory", "64mb"), ("--cpu", "-1"), ("--memory", "lots")] {
        let out = nodeless(&s, "container", &[&format!("{flag}={value}"), &missing])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}", show("container", &out));
        assert!(
            err.contains(&format!("{flag} \"{value}\"")) && err.contains("Kubernetes quantity"),
            "{}",
            show("container", &out)
        );
    }
}

#[test]
fn run_interactive_feeds_stdin() {
    let s = setup(&["true"]);
    for rt in runtimes() {
        let mut child = nodeless(
            &s,
            rt,
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
        stdin.write_all(b"one\n").unwrap();
        // The answer comes while the container still runs (its stdin is still open).
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "first: one\n", "runtime {rt}");
        stdin.write_all(b"two\nthree").unwrap();
        drop(stdin);
        let mut rest = String::new();
        stdout.read_to_string(&mut rest).unwrap();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert_eq!(rest, "two\nthree", "runtime {rt}, stderr:\n{stderr}");
        assert!(stderr.contains("err\n"), "runtime {rt}: {stderr}");
        assert_eq!(status.code(), Some(2), "runtime {rt}, stderr:\n{stderr}");
    }
}

/// `nodeless sandbox run --runtime RT ARGS...` run by `sh` on a terminal of its own (util-linux
/// `script`) of 33 rows and 101 columns; its stdin is piped (what is written there is typed on
/// that terminal) and its output is the terminal's.
fn on_a_terminal(s: &Setup, rt: &str, args: &[&str]) -> std::process::Child {
    let quote = |a: &str| format!("'{}'", a.replace('\'', "'\\''"));
    let data = s.data.display().to_string();
    let run: Vec<String> = [
        env!("CARGO_BIN_EXE_nodeless"),
        "sandbox",
        "--data-dir",
        &data,
        "run",
        "--runtime",
        rt,
    ]
    .iter()
    .chain(args)
    .map(|a| quote(a))
    .collect();
    Command::new("script")
        .args([
            "-qefc",
            &format!("stty rows 33 cols 101; exec {}", run.join(" ")),
            "/dev/null",
        ])
        .env("NODELESS_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads `r` until `want` has come (or it ends); what came.
fn read_until(r: &mut impl std::io::Read, want: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains(want) {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn run_tty_gives_the_container_a_terminal_of_its_size() {
    if !common::procs::needs_sandboxes(&["script"]) {
        return;
    }
    let s = setup(&["true"]);
    for rt in runtimes() {
        let t = Instant::now();
        let mut child = on_a_terminal(
            &s,
            rt,
            &[
                "-it",
                &s.image,
                "--",
                "sh",
                "-c",
                "for f in 0 1 2; do test -t $f && echo \"fd $f is a terminal\"; done; \
                 stty size; echo \"TERM=$TERM\"; read line; echo \"read: $line\"; exit 4",
            ],
        );
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let before = read_until(&mut stdout, "TERM=");
        // Typed on our terminal, echoed by the container's, read by its shell.
        stdin.write_all(b"typed\r").unwrap();
        let rest = read_until(&mut stdout, "read: typed");
        let status = child.wait().unwrap();
        drop(stdin);
        println!("sandbox run -it --runtime {rt} took {:?}", t.elapsed());
        let all = format!("{before}{rest}").replace('\r', "");
        let lines: Vec<&str> = all.lines().collect();
        assert_eq!(
            lines,
            [
                "fd 0 is a terminal",
                "fd 1 is a terminal",
                "fd 2 is a terminal",
                "33 101",
                "TERM=xterm",
                "typed",
                "read: typed"
            ],
            "runtime {rt}: {all:?}"
        );
        assert_eq!(status.code(), Some(4), "runtime {rt}: {all:?}");
        assert!(containers_left(&s).is_empty(), "{:?}", containers_left(&s));
    }
}

/// Ctrl-C (SIGINT to the command) is forwarded to the container as SIGINT, as `docker run`
/// does; the command ends with the container's own code: 7 from a shell that traps SIGINT,
/// 130 from one whose child SIGINT ended, 137 when it ignores SIGINT and is killed after
/// `--grace`. The same with the micro-VM, and on a terminal (`-t`), where Ctrl-C is typed.
#[test]
fn run_forwards_ctrl_c_and_exits_with_the_container_code() {
    let s = setup(&["true"]);
    let cases = [
        (
            "trap 'echo got INT; exit 7' INT; echo started; sleep 1000 & wait",
            7,
        ),
        ("echo started; sleep 1000; exit $?", 130),
        ("trap '' INT; echo started; sleep 1000; exit 3", 137),
    ];
    // The micro-VM does the same, when it can boot here.
    let microvm = match sandbox::microvm::prerequisites() {
        Ok(_) => Some("microvm"),
        Err(e) if std::env::var_os("NODELESS_REQUIRE_MICROVM").is_some() => {
            panic!("micro-VM prerequisites missing (NODELESS_REQUIRE_MICROVM is set): {e}")
        }
        Err(_) => None,
    };
    for rt in runtimes().into_iter().chain(microvm) {
        for (script, want) in cases {
            let mut child = nodeless(
                &s,
                rt,
                &["--grace", "2", &s.image, "--", "sh", "-c", script],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
            let mut stdout = BufReader::new(child.stdout.take().unwrap());
            let mut line = String::new();
            stdout.read_line(&mut line).unwrap();
            assert_eq!(line, "started\n", "runtime {rt}");
            let t = Instant::now();
            let kill = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(kill.success());
            let status = child.wait().unwrap();
            let (mut out, mut err) = (String::new(), String::new());
            stdout.read_to_string(&mut out).unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let took = t.elapsed();
            assert_eq!(
                status.code(),
                Some(want),
                "runtime {rt}, {script}: {out}{err}"
            );
            assert!(err.contains("stopping"), "{err}");
            if want == 7 {
                assert_eq!(out, "got INT\n", "runtime {rt}");
            }
            // Killed at the end of --grace; the others end at once.
            if want == 137 {
                assert!(took >= Duration::from_secs(2), "{took:?}");
            } else {
                assert!(
                    took < Duration::from_secs(2),
                    "runtime {rt}, {script}: {took:?}"
                );
            }
            assert!(containers_left(&s).is_empty(), "{:?}", containers_left(&s));
        }
    }
}

#[test]
fn run_tty_forwards_a_typed_ctrl_c() {
    if !common::procs::needs_sandboxes(&["script"]) {
        return;
    }
    let s = setup(&["true"]);
    for rt in runtimes() {
        let mut child = on_a_terminal(
            &s,
            rt,
            &[
                "-it",
                &s.image,
                "--",
                "sh",
                "-c",
                "trap 'echo got INT; exit 9' INT; echo started; sleep 1000 & wait",
            ],
        );
        let mut stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let before = read_until(&mut stdout, "started");
        assert!(before.contains("started"), "runtime {rt}: {before:?}");
        stdin.write_all(&[3]).unwrap();
        let rest = read_until(&mut stdout, "got INT");
        let status = child.wait().unwrap();
        drop(stdin);
        assert!(rest.contains("got INT"), "runtime {rt}: {rest:?}");
        assert_eq!(status.code(), Some(9), "runtime {rt}: {rest:?}");
        assert!(containers_left(&s).is_empty(), "{:?}", containers_left(&s));
    }
}
