//! `nodeless sandbox run` end to end with the real binary: one suite of cases, written once and
//! run against every runtime of this machine: `gvisor` (runsc), `container` (crun) and
//! `microvm` (QEMU, in software emulation where there is no KVM), as one test per runtime
//! (`microvm_cli_suite`, `oci_container_cli_suite`, `oci_gvisor_cli_suite`) whose cases run
//! side by side, each with a data dir of its own, and whose failure lists every case that
//! failed. `SANDBOX_CLI_CASES="word ..."` runs only the cases whose name has one of the words.
//! The image is a busybox OCI layout built here.
//!
//! The cases: the container's output on ours and its exit code as the command's, the image's
//! own command, `--keep` and `sandbox logs`, nothing of the run left; env, workdir, user and
//! `--cpu`/`--memory` as Kubernetes quantities applied to the container, with `-i` (our stdin
//! to the container's); `-t` with and without a terminal of ours (a terminal of its own, its
//! controlling one, sized as ours, typed into, and a typed Ctrl-C reaching its foreground
//! process group); Ctrl-C sent to the command (SIGINT forwarded to the container's main process
//! only, as docker's sig-proxy does, the container's own exit code, SIGKILL after `--grace`);
//! SIGTERM to the command stopping the container with nothing left; a refused quantity; and
//! the message when the runtime's tools are missing.
//!
//! A runtime whose tools are missing says SKIPPED, or fails when `NODELESS_REQUIRE_SANDBOX`
//! (runsc, crun, script) or `NODELESS_REQUIRE_MICROVM` (QEMU, mkfs.erofs and the assets of
//! `scripts/microvm-assets.sh`) is set, as in CI. A micro-VM boots for every `sandbox run`
//! (seconds under TCG), so each run checks as much as the command line allows: 10 boots in all.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

/// How long any step may wait for the container (a micro-VM boot under load included).
const PATIENCE: Duration = Duration::from_secs(120);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rt {
    Gvisor,
    Container,
    Microvm,
}

impl Rt {
    /// The `--runtime` value.
    fn name(self) -> &'static str {
        match self {
            Rt::Gvisor => "gvisor",
            Rt::Container => "container",
            Rt::Microvm => "microvm",
        }
    }

    /// Whether this runtime runs here; without it `test` is SKIPPED (a failure under
    /// `NODELESS_REQUIRE_SANDBOX` / `NODELESS_REQUIRE_MICROVM`).
    fn available(self, test: &str) -> bool {
        match self {
            Rt::Gvisor => common::procs::needs_sandboxes(&["runsc"]),
            Rt::Container => common::procs::needs_sandboxes(&["crun"]),
            Rt::Microvm => common::procs::needs_microvm(test),
        }
    }

    /// The processes that are the container's sandbox while it runs, by their command lines
    /// naming `data`: the micro-VM's QEMU, gVisor's sandbox (its kernel), crun's `run`.
    fn sandboxes(self, data: &Path) -> Vec<String> {
        common::procs::processes_naming(data, |args| match self {
            Rt::Microvm => args.contains("qemu-system"),
            Rt::Gvisor => args.starts_with("runsc-sandbox "),
            Rt::Container => args.contains("crun ") && args.contains(" run "),
        })
    }
}

/// One case's own data dir, and a busybox image whose command is `echo from the image cmd`.
struct Setup {
    rt: Rt,
    _dir: tempfile::TempDir,
    data: PathBuf,
    image: String,
}

fn setup(rt: Rt) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    common::image::busybox_layout(&layout, "v1", &["sh", "-c", "echo from the image cmd"], &[]);
    Setup {
        rt,
        data: dir.path().join("data"),
        image: format!("oci:{}:v1", layout.display()),
        _dir: dir,
    }
}

/// A data dir and an image that does not exist: for what must fail before any pull.
fn no_image(rt: Rt) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    Setup {
        rt,
        data: dir.path().join("data"),
        image: format!("oci:{}:v1", dir.path().join("no-layout").display()),
        _dir: dir,
    }
}

impl Setup {
    /// `nodeless sandbox --data-dir DATA run --runtime RT ARGS...`.
    fn run(&self, run_args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_nodeless"));
        c.arg("sandbox")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["run", "--runtime", self.rt.name()])
            .args(run_args)
            .env("NODELESS_LOG", "warn");
        c
    }

    /// `sh -c script` in the image, run with `flags` ([`Self::run`]).
    fn sh(&self, flags: &[&str], script: &str) -> Command {
        let tail = [self.image.as_str(), "--", "sh", "-c", script];
        self.run(&[flags, &tail[..]].concat())
    }

    /// [`Self::sh`], started with its pipes.
    fn start(&self, flags: &[&str], script: &str) -> Running {
        Running::spawn(self.sh(flags, script), &self.data)
    }

    fn show(&self, out: &Output) -> String {
        format!(
            "runtime {}, status {:?}\nstdout:\n{}\nstderr:\n{}",
            self.rt.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The run printed `stdout` and ended with `code`.
    fn assert_ran(&self, out: &Output, stdout: &str, code: i32) {
        assert_eq!(
            (
                String::from_utf8_lossy(&out.stdout).as_ref(),
                out.status.code()
            ),
            (stdout, Some(code)),
            "{}",
            self.show(out)
        );
    }

    /// The containers left in the data dir (none after a run without `--keep`).
    fn containers_left(&self) -> Vec<String> {
        std::fs::read_dir(self.data.join("containers"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Nothing of a run is left: no container directory (without `--keep`) and no process
    /// naming the data dir (no QEMU, no runsc, no crun, no shim).
    fn assert_nothing_left(&self) {
        let rt = self.rt.name();
        assert!(
            self.containers_left().is_empty(),
            "runtime {rt}: {:?}",
            self.containers_left()
        );
        let procs = common::procs::processes_naming(&self.data, |_| true);
        assert!(procs.is_empty(), "runtime {rt}: left running: {procs:#?}");
    }
}

/// A child's pipe read on a thread of its own, so that waiting for its text has a deadline.
struct Pipe {
    rx: mpsc::Receiver<Vec<u8>>,
    got: Vec<u8>,
    ended: bool,
}

impl Pipe {
    fn new(mut r: impl Read + Send + 'static) -> Pipe {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = r.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        Pipe {
            rx,
            got: Vec::new(),
            ended: false,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.got).into_owned()
    }

    /// Waits until what came contains `want` (true), or the pipe ends or [`PATIENCE`] runs
    /// out (false).
    fn until(&mut self, want: &str) -> bool {
        self.until_with(|t| t.contains(want))
    }

    /// Waits until what came satisfies `done`, like [`Self::until`].
    fn until_with(&mut self, done: impl Fn(&str) -> bool) -> bool {
        self.until_within(PATIENCE, done)
    }

    /// Waits until what came satisfies `done` (true), or the pipe ends or `patience` runs out
    /// (false).
    fn until_within(&mut self, patience: Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + patience;
        while !done(&self.text()) {
            if self.ended {
                return false;
            }
            match self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(d) => self.got.extend(d),
                Err(mpsc::RecvTimeoutError::Disconnected) => self.ended = true,
                Err(mpsc::RecvTimeoutError::Timeout) => return false,
            }
        }
        true
    }

    /// Waits until a whole line (up to its "\n") starting with `start` has come, like
    /// [`Self::until`].
    fn until_line(&mut self, start: &str) -> bool {
        let whole = |t: &str| {
            t.split_inclusive('\n')
                .any(|l| l.starts_with(start) && l.ends_with('\n'))
        };
        self.until_with(whole)
    }

    /// Everything, once the pipe has ended (or [`PATIENCE`] ran out).
    fn all(mut self) -> String {
        self.until("\0never\0");
        self.text()
    }
}

/// A running `nodeless sandbox run` (or `script` running it) over data dir `data`, with its
/// pipes; if a failed assertion leaves it running, it is stopped on drop.
struct Running {
    child: Child,
    data: PathBuf,
    stdin: Option<ChildStdin>,
    stdout: Option<Pipe>,
    stderr: Option<Pipe>,
}

/// Sends `sig` to the processes whose command line names `data` and matches `which`.
fn signal_all(data: &Path, sig: &str, which: impl Fn(&str) -> bool) {
    for p in common::procs::processes_naming(data, which) {
        if let Some(pid) = p.split_whitespace().next() {
            let _ = Command::new("kill").args([sig, pid]).status();
        }
    }
}

impl Running {
    fn spawn(mut c: Command, data: &Path) -> Running {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Running {
            stdin: child.stdin.take(),
            stdout: child.stdout.take().map(Pipe::new),
            stderr: child.stderr.take().map(Pipe::new),
            data: data.to_owned(),
            child,
        }
    }

    fn out(&mut self) -> &mut Pipe {
        self.stdout.as_mut().unwrap()
    }

    fn write(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(data).unwrap();
        stdin.flush().unwrap();
    }

    fn signal(&self, sig: &str) {
        let kill = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
    }

    /// Waits for the end: (exit code, all of stdout, all of stderr).
    fn finish(mut self) -> (Option<i32>, String, String) {
        drop(self.stdin.take());
        let status = self.child.wait().unwrap();
        let out = self.stdout.take().map(Pipe::all).unwrap_or_default();
        let err = self.stderr.take().map(Pipe::all).unwrap_or_default();
        (status.code(), out, err)
    }
}

impl Drop for Running {
    /// Ctrl-C to the command (under `script` too), which stops the container within its grace
    /// (10 s unless given); then whatever of the run is left (the command, QEMU, runsc, crun),
    /// by their ids.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let nodeless = env!("CARGO_BIN_EXE_nodeless");
        signal_all(&self.data, "-INT", |args| args.starts_with(nodeless));
        let until = Instant::now() + Duration::from_secs(15);
        while Instant::now() < until && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        signal_all(&self.data, "-KILL", |_| true);
    }
}

/// The container's output on ours and its exit code as the command's; nothing of the run is
/// left (no container directory, no QEMU, runsc or crun). Then the image's own command, with
/// `--keep`: its log stays for `sandbox logs` (the micro-VM's own files do not); with the
/// micro-VM the disk made by the first run is reused.
fn output_and_exit_code(s: &Setup) {
    let out = s
        .sh(&[], "echo hello; echo oops >&2; exit 3")
        .output()
        .unwrap();
    s.assert_ran(&out, "hello\n", 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("oops\n"),
        "{}",
        s.show(&out)
    );
    s.assert_nothing_left();

    let out = s
        .run(&["--name", "kept", "--keep", &s.image])
        .output()
        .unwrap();
    s.assert_ran(&out, "from the image cmd\n", 0);
    assert_eq!(s.containers_left(), ["kept"]);
    let logs = Command::new(env!("CARGO_BIN_EXE_nodeless"))
        .arg("sandbox")
        .arg("--data-dir")
        .arg(&s.data)
        .args(["logs", "kept"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "from the image cmd\n",
        "{}",
        s.show(&logs)
    );
    // (Only the micro-VM has files of its own there, but none may stay on any runtime.)
    assert!(!s.data.join("containers/kept/microvm").exists());
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

/// `-e`, `-w`, `-u`, `--cpu` and `--memory` applied to the container, and `-i`: our stdin is
/// the container's, its answers come while it runs, our end of stdin ends its stdin; its
/// stderr on ours and its exit code as the command's.
///
/// The limits differ by runtime, as what shows them does:
/// - gVisor and crun: `--cpu 250m --memory 64Mi`, read from the host's cgroup files of the
///   container (found by its id) while it waits for us; gVisor's kernel also has the memory
///   limit as its whole memory (MemTotal).
/// - micro-VM: no host cgroup carries the container's id (its limits are a cgroup inside the
///   guest, which the container cannot see); the VM is sized as a pod of `--cpu` x `--memory`
///   (whole vCPUs, at least 128 MiB), so `--cpu 2 --memory 300Mi` shows as 2 processors and
///   the 300 MiB VM's kernel's MemTotal.
fn env_workdir_user_limits_and_stdin(s: &Setup) {
    let rt = s.rt.name();
    let id = format!("limits-{rt}-{}", std::process::id());
    let (cpu, memory) = match s.rt {
        Rt::Gvisor | Rt::Container => ("250m", "64Mi"),
        Rt::Microvm => ("2", "300Mi"),
    };
    let script = "echo \"$GREETING\"; pwd; id -u; id -g; grep -c ^processor /proc/cpuinfo; \
                  grep MemTotal /proc/meminfo; echo ready; \
                  read first; echo \"first: $first\"; cat; echo err >&2; exit 2";
    let mut r = s.start(
        &[
            "--cpu",
            cpu,
            "--memory",
            memory,
            "-e",
            "GREETING=hi there",
            "-w",
            "/tmp",
            "-u",
            "65534:65533",
            "--name",
            &id,
            "-i",
        ],
        script,
    );
    // The answers, then the container waits for our stdin: its limits are looked at meanwhile.
    assert!(
        r.out().until("ready\n"),
        "runtime {rt}: {:?}",
        r.out().text()
    );
    let before = r.out().text();
    let lines: Vec<&str> = before.lines().collect();
    let limits = host_limits(&id);
    assert_eq!(
        lines.get(..4),
        Some(&["hi there", "/tmp", "65534", "65533"][..]),
        "runtime {rt}: {lines:?}"
    );
    let processors: Option<u32> = lines.get(4).and_then(|l| l.parse().ok());
    let mem_kib: Option<u64> = lines
        .get(5)
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    match s.rt {
        Rt::Gvisor | Rt::Container => {
            assert_eq!(
                limits.0,
                Some(64 << 20),
                "runtime {rt}: memory limit of {id}"
            );
            assert_eq!(limits.1, Some(250), "runtime {rt}: CPU quota of {id}");
            // crun's container sees the host's MemTotal: nothing to compare.
            if s.rt == Rt::Gvisor {
                assert_eq!(mem_kib, Some(64 * 1024), "runtime {rt}: {lines:?}");
            }
        }
        Rt::Microvm => {
            assert_eq!(processors, Some(2), "runtime {rt}: {lines:?}");
            let kib = mem_kib.unwrap_or_else(|| panic!("runtime {rt}: {lines:?}"));
            assert!(
                (200 * 1024..=300 * 1024).contains(&kib),
                "runtime {rt}: MemTotal {kib} kB for --memory 300Mi: {lines:?}"
            );
        }
    }

    // The answer comes while the container still runs (its stdin is still open).
    r.write(b"one\n");
    assert!(
        r.out().until("first: one\n"),
        "runtime {rt}: {:?}",
        r.out().text()
    );
    assert_eq!(
        r.out().text(),
        format!("{before}first: one\n"),
        "runtime {rt}"
    );
    r.write(b"two\nthree");
    let (code, out, err) = r.finish();
    assert_eq!(
        out,
        format!("{before}first: one\ntwo\nthree"),
        "runtime {rt}, stderr:\n{err}"
    );
    assert!(err.contains("err\n"), "runtime {rt}: {err}");
    assert_eq!(code, Some(2), "runtime {rt}, stderr:\n{err}");
    s.assert_nothing_left();
}

/// `-t` when ours is no terminal (stdin from /dev/null): the container's stdin and stdout are
/// still a terminal of its own (which turns "\n" into "\r\n"), with TERM set, and `tty` names
/// it: a pseudo-terminal's slave (crun, given it by `--console-socket`) or the guest's console
/// (the micro-VM).
fn tty_without_our_terminal(s: &Setup) {
    let rt = s.rt.name();
    let out = s
        .sh(
            &["-t"],
            "[ -t 0 ] && [ -t 1 ] && echo stdin-is-a-tty; echo \"TERM=$TERM\"; tty; exit 4",
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", s.show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.ends_with("\r\n") && text.matches('\n').count() == text.matches("\r\n").count(),
        "runtime {rt}: the terminal's lines end with \"\\r\\n\": {text:?}"
    );
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    assert_eq!(
        lines.get(..2),
        Some(&["stdin-is-a-tty", "TERM=xterm"][..]),
        "{}",
        s.show(&out)
    );
    let tty = lines.get(2).copied().unwrap_or_default();
    match s.rt {
        // runsc (release 2022...) gives the container a terminal whose name `ttyname` cannot
        // find (upstream google/gvisor#13535): `tty` says "not a tty" though `[ -t 0 ]` holds.
        Rt::Gvisor => assert_eq!(tty, "not a tty", "{}", s.show(&out)),
        Rt::Container | Rt::Microvm => assert!(
            tty.starts_with("/dev/pts/") || tty == "/dev/console",
            "{}",
            s.show(&out)
        ),
    }
    assert_eq!(lines.len(), 3, "{}", s.show(&out));
    s.assert_nothing_left();
}

/// [`Setup::sh`] run by `sh` on a terminal of its own (util-linux `script`) of 33 rows and 101
/// columns; what is written to its stdin is typed on that
/// terminal, and its stdout is the terminal's output.
fn on_a_terminal(s: &Setup, flags: &[&str], script: &str) -> Running {
    let quote = |a: &std::ffi::OsStr| format!("'{}'", a.to_string_lossy().replace('\'', "'\\''"));
    let run = s.sh(flags, script);
    let words: Vec<String> = std::iter::once(run.get_program())
        .chain(run.get_args())
        .map(quote)
        .collect();
    let mut c = Command::new("script");
    c.args([
        "-qefc",
        &format!("stty rows 33 cols 101; exec {}", words.join(" ")),
        "/dev/null",
    ])
    .env("NODELESS_LOG", "warn");
    Running::spawn(c, &s.data)
}

/// `-it` on our terminal: stdin, stdout and stderr are a terminal of the container's, of our
/// terminal's size, with TERM set; what we type reaches it (echoed by its terminal); then a
/// typed Ctrl-C reaches the terminal's foreground process group as SIGINT, as with `docker run
/// -it`: the shell's foreground `sleep 30` ends at once (not only PID 1, the shell, whose trap
/// runs), and the shell goes on to its exit code, the command's. (`started` comes once that
/// `sleep` runs: a Ctrl-C before it would reach the shell alone, and the `sleep` would run on.)
fn tty_on_our_terminal_and_typed_ctrl_c(s: &Setup) {
    if !common::procs::needs_sandboxes(&["script"]) {
        return;
    }
    let rt = s.rt.name();
    let t = Instant::now();
    let mut r = on_a_terminal(
        s,
        &["-it"],
        "for f in 0 1 2; do test -t $f && echo \"fd $f is a terminal\"; done; \
         stty size; echo \"TERM=$TERM\"; read line; echo \"read: $line\"; \
         trap 'echo got INT' INT; \
         (until grep -qsx sleep /proc/[0-9]*/comm; do :; done; echo started) & \
         sleep 30; echo after-int; exit 9",
    );
    // Typed on our terminal once the line before the shell's `read` is whole (else the echo
    // of what is typed may come before its end), echoed by the container's, read by its shell.
    assert!(
        r.out().until_line("TERM="),
        "runtime {rt}: {:?}",
        r.out().text()
    );
    r.write(b"typed\r");
    assert!(
        r.out().until("started"),
        "runtime {rt}: {:?}",
        r.out().text()
    );
    let before = r.out().text().replace('\r', "");
    assert_eq!(
        before.lines().collect::<Vec<_>>(),
        [
            "fd 0 is a terminal",
            "fd 1 is a terminal",
            "fd 2 is a terminal",
            "33 101",
            "TERM=xterm",
            "typed",
            "read: typed",
            "started"
        ],
        "runtime {rt}: {before:?}"
    );
    r.write(&[3]);
    let typed = Instant::now();
    let both = |t: &str| t.contains("got INT") && t.contains("after-int");
    assert!(
        r.out().until_within(Duration::from_secs(10), both),
        "runtime {rt}: no \"got INT\" and \"after-int\" {:?} after a typed Ctrl-C: {:?}",
        typed.elapsed(),
        r.out().text()
    );
    let (code, all, _) = r.finish();
    println!("sandbox run -it --runtime {rt} took {:?}", t.elapsed());
    assert_eq!(code, Some(9), "runtime {rt}: {all:?}");
    s.assert_nothing_left();
}

/// Ctrl-C (SIGINT to the command) is forwarded to the container as SIGINT, as `docker run`
/// does, while one sandbox runs it; the command says it is stopping and ends with the
/// container's own code, at once unless the container ignores SIGINT: then it is killed at
/// the end of `--grace` (137). Nothing of the run is left.
fn ctrl_c(s: &Setup, script: &str, grace: u64, want: i32) {
    stopped_by(s, "-INT", script, grace, want);
}

/// [`ctrl_c`] with signal `sig` (a `kill` flag) sent to the command.
fn stopped_by(s: &Setup, sig: &str, script: &str, grace: u64, want: i32) {
    let rt = s.rt.name();
    let mut r = s.start(&["--grace", &grace.to_string()], script);
    assert!(r.out().until("\n"), "runtime {rt}: {:?}", r.out().text());
    assert_eq!(r.out().text(), "started\n", "runtime {rt}");
    let sandboxes = s.rt.sandboxes(&s.data);
    assert_eq!(
        sandboxes.len(),
        1,
        "runtime {rt}: one sandbox runs the container: {sandboxes:#?}"
    );
    assert_eq!(s.containers_left().len(), 1, "runtime {rt}");
    let t = Instant::now();
    r.signal(sig);
    let (code, out, err) = r.finish();
    let took = t.elapsed();
    assert_eq!(code, Some(want), "runtime {rt}, {script}: {out}{err}");
    assert!(err.contains("stopping"), "runtime {rt}: {err}");
    if want == 7 {
        assert_eq!(out, "started\ngot INT\n", "runtime {rt}");
    }
    if want == 6 {
        assert_eq!(out, "started\nstopped\n", "runtime {rt}");
    }
    let grace = Duration::from_secs(grace);
    if want == 137 {
        assert!(took >= grace, "runtime {rt}: {took:?}");
    } else {
        assert!(took < grace, "runtime {rt}, {script}: {took:?}");
    }
    s.assert_nothing_left();
}

/// A shell that traps SIGINT ends with its trap's code.
fn ctrl_c_runs_the_trap(s: &Setup) {
    ctrl_c(
        s,
        "trap 'echo got INT; exit 7' INT; echo started; sleep 1000 & wait",
        2,
        7,
    );
}

/// Ctrl-C reaches the container's main process only, as docker's sig-proxy (and kubelet)
/// signal a container: a shell as PID 1 without a trap, waiting for its foreground child, does
/// not act on SIGINT (the kernel drops a signal its init has no handler for) and the `sleep`
/// never gets it, so the container is killed at the end of `--grace`: 137.
fn ctrl_c_reaches_the_main_process_only(s: &Setup) {
    ctrl_c(s, "echo started; sleep 1000; exit $?", 2, 137);
}

/// SIGTERM to the command (as a service manager or `kill` stops it) stops the container as a
/// Ctrl-C does, on every runtime (the micro-VM's QEMU included): the container's trap runs,
/// its code is the command's, and nothing of the run (runsc, crun, the shim, QEMU) is left.
fn sigterm_stops_the_container(s: &Setup) {
    stopped_by(
        s,
        "-TERM",
        "trap 'echo stopped; exit 6' INT TERM; echo started; sleep 1000 & wait",
        10,
        6,
    );
}

/// A shell waiting for a background child, ended by SIGINT: 130. (busybox sh as PID 1 takes
/// SIGINT in `wait`, and ignores one that comes before it gets there: a CI run got 137 when
/// `started` was printed before `wait`. Now a background child says it a second later.)
fn ctrl_c_ends_a_waiting_shell(s: &Setup) {
    ctrl_c(s, "sleep 1000 & (sleep 1; echo started) & wait", 5, 130);
}

/// A shell that ignores SIGINT is killed at the end of `--grace`: 137.
fn ctrl_c_ignored_is_killed_after_grace(s: &Setup) {
    ctrl_c(s, "trap '' INT; echo started; sleep 1000; exit 3", 2, 137);
}

/// A quantity that is not a Kubernetes one is refused before anything is pulled or run (the
/// image here does not even exist, nor need the runtime's tools), saying which flag, what
/// value and why.
fn refuses_a_bad_quantity(rt: Rt) {
    let s = no_image(rt);
    for (flag, value) in [("--memory", "64mb"), ("--cpu", "-1"), ("--memory", "lots")] {
        let out = s
            .run(&[&format!("{flag}={value}"), &s.image])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}", s.show(&out));
        assert!(
            err.contains(&format!("{flag} \"{value}\"")) && err.contains("Kubernetes quantity"),
            "{}",
            s.show(&out)
        );
    }
}

/// Without the runtime's tools the command fails before any pull (the image here does not
/// exist) with a message that says what to install or run: runsc or crun not on PATH; the
/// micro-VM's assets not where `NODELESS_MICROVM_ASSETS` says. Needs no runtime.
fn says_what_to_install(rt: Rt) {
    let s = no_image(rt);
    let empty = s.data.join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let mut c = s.run(&[&s.image]);
    let hints: &[&str] = match rt {
        Rt::Gvisor => {
            c.env("PATH", &empty);
            &["apt-get install runsc"]
        }
        Rt::Container => {
            c.env("PATH", &empty);
            &["apt-get install crun"]
        }
        Rt::Microvm => {
            c.env("NODELESS_MICROVM_ASSETS", s.data.join("no-assets"));
            &[
                "scripts/microvm-assets.sh",
                "apt-get install qemu-system-x86",
            ]
        }
    };
    let out = c.output().unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", s.show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(hints.iter().any(|h| err.contains(h)), "{}", s.show(&out));
}

/// A case that runs containers, on its own setup.
type Case = fn(&Setup);

/// The cases that run containers, longest first (the micro-VM's output case boots twice).
const CASES: &[(&str, Case)] = &[
    ("output_and_exit_code", output_and_exit_code),
    (
        "env_workdir_user_limits_and_stdin",
        env_workdir_user_limits_and_stdin,
    ),
    (
        "ctrl_c_ignored_is_killed_after_grace",
        ctrl_c_ignored_is_killed_after_grace,
    ),
    ("ctrl_c_ends_a_waiting_shell", ctrl_c_ends_a_waiting_shell),
    (
        "ctrl_c_reaches_the_main_process_only",
        ctrl_c_reaches_the_main_process_only,
    ),
    ("sigterm_stops_the_container", sigterm_stops_the_container),
    ("ctrl_c_runs_the_trap", ctrl_c_runs_the_trap),
    (
        "tty_on_our_terminal_and_typed_ctrl_c",
        tty_on_our_terminal_and_typed_ctrl_c,
    ),
    ("tty_without_our_terminal", tty_without_our_terminal),
];

/// A case that needs no runtime (it fails before any would run).
type FreeCase = fn(Rt);

/// The cases that need no runtime.
const WITHOUT_A_RUNTIME: &[(&str, FreeCase)] = &[
    ("refuses_a_bad_quantity", refuses_a_bad_quantity),
    ("says_what_to_install", says_what_to_install),
];

/// The panic's message.
fn message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs `case`, timed; its failure (a panic) as `name: message`.
fn attempt(rt: Rt, name: &str, case: impl FnOnce()) -> Option<String> {
    let t = Instant::now();
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(case));
    eprintln!(
        "{}: {name} {} in {:.1} s",
        rt.name(),
        if res.is_ok() { "passed" } else { "FAILED" },
        t.elapsed().as_secs_f64()
    );
    res.err()
        .map(|e| format!("{name}: {}", message(e.as_ref())))
}

/// Every case on `rt` (those that run containers only if `rt` runs here), each with a data dir
/// of its own, side by side: at most two micro-VMs at once (under TCG each keeps a core busy),
/// four OCI containers. `SANDBOX_CLI_CASES` (words) runs only the cases whose name has one.
/// Fails with the list of the cases that failed, after all have run.
fn suite(rt: Rt) {
    let began = Instant::now();
    let only = std::env::var("SANDBOX_CLI_CASES").unwrap_or_default();
    let wanted =
        |name: &str| only.trim().is_empty() || only.split_whitespace().any(|w| name.contains(w));
    let mut failed: Vec<String> = WITHOUT_A_RUNTIME
        .iter()
        .filter(|(name, _)| wanted(name))
        .filter_map(|(name, case)| attempt(rt, name, || case(rt)))
        .collect();
    if rt.available(&format!("the {} suite", rt.name())) {
        let cases: Vec<_> = CASES.iter().filter(|(name, _)| wanted(name)).collect();
        let at_once = if rt == Rt::Microvm { 2 } else { 4 };
        let next = AtomicUsize::new(0);
        let failures = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..at_once {
                scope.spawn(|| {
                    while let Some((name, case)) = cases.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let s = setup(rt);
                        if let Some(f) = attempt(rt, name, || case(&s)) {
                            failures.lock().unwrap().push(f);
                        }
                    }
                });
            }
        });
        failed.extend(failures.into_inner().unwrap());
    }
    eprintln!(
        "{}: suite took {:.1} s",
        rt.name(),
        began.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{}: {} case(s) failed:\n{}",
        rt.name(),
        failed.len(),
        failed.join("\n")
    );
}

// libtest starts tests in the order of their names: the micro-VM's suite, the longest, is
// named to start first, beside crun's; gVisor's follows crun's.
#[test]
fn microvm_cli_suite() {
    suite(Rt::Microvm);
}

#[test]
fn oci_container_cli_suite() {
    suite(Rt::Container);
}

#[test]
fn oci_gvisor_cli_suite() {
    suite(Rt::Gvisor);
}
