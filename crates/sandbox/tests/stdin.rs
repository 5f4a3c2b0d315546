//! A container with a kept stdin (the pod spec's `stdin`, `stdinOnce`, `tty`): its shim holds
//! the container's standard input for its whole life and copies what attach sessions send on
//! `attach.sock` into it. Against every runtime on this host (crun, gVisor): a `cat` with
//! `stdin: true` echoes what each of several sessions (each a new connection, as a restarted
//! agent makes) sends; with `stdinOnce` the end of the first session closes its stdin and `cat`
//! exits 0; with `tty` a shell on the shim's terminal shows its prompt at once, runs what it
//! is typed and sees the size a session set. Containers without `stdin` get no socket.
//!
//! Needs `target/debug/nodeless` (`cargo build -p nodeless`); without it every test prints
//! `SKIPPED: nodeless binary not built` and returns.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sandbox::container::{self, Io};
use sandbox::image::{Image, ImageStore, PullOptions, StoreOptions};
use sandbox::runtime::{self, Runtime, RuntimeKind};
use sandbox::shim::{self, StdinSpec};
use sandbox::spec::{ContainerConfig, SandboxContext};
use tokio::io::AsyncWriteExt as _;

async fn prepare() -> (tempfile::TempDir, PathBuf, ImageStore, Image) {
    let (tmp, data) = data_dir();
    busybox_layout(&data.join("layout"), &["sh"]);
    let store = ImageStore::open(data.join("images"), StoreOptions::default()).unwrap();
    let source = format!("oci:{}", data.join("layout").display())
        .parse()
        .unwrap();
    let image = store
        .ensure(&source, &PullOptions::default())
        .await
        .unwrap();
    (tmp, data, store, image)
}

/// Starts `command` as container `id` under a shim with `stdio` kept.
async fn start(
    data: &Path,
    store: &ImageStore,
    image: &Image,
    rt: &Arc<dyn Runtime>,
    id: &str,
    command: &[&str],
    stdio: StdinSpec,
) -> container::Started {
    let dir = container::dir(data, id);
    stdio.write(&dir).unwrap();
    let cfg = ContainerConfig {
        name: "main".into(),
        command: Some(command.iter().map(|s| s.to_string()).collect()),
        tty: stdio.tty,
        ..Default::default()
    };
    let sb = SandboxContext {
        hostname: "stdin".into(),
        ..Default::default()
    };
    container::start(
        data,
        store,
        rt.clone(),
        container::Launch {
            id,
            image,
            config: &cfg,
            sandbox: &sb,
            io: Io::Logged,
            restart_count: 0,
        },
    )
    .await
    .unwrap()
}

/// The container's log as text (stdout and stderr records, in order).
fn log_text(dir: &Path) -> String {
    let raw = std::fs::read(container::log_path(dir, 0)).unwrap_or_default();
    raw.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(sandbox::logs::parse_line)
        .map(|r| {
            let mut t = String::from_utf8_lossy(&r.text).into_owned();
            if !r.partial {
                t.push('\n');
            }
            t
        })
        .collect()
}

async fn until_logged(dir: &Path, what: &str) {
    for _ in 0..300 {
        if log_text(dir).contains(what) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what:?} not logged within 30 s; log: {:?}", log_text(dir));
}

async fn send(conn: &mut tokio::net::UnixStream, kind: u8, payload: &[u8]) {
    conn.write_all(&shim::frame(kind, payload)).await.unwrap();
    conn.flush().await.unwrap();
}

async fn kept_stdin(kind: RuntimeKind) {
    let (_tmp, data, store, image) = prepare().await;
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &data).unwrap());

    // stdin: true. Every session (a new connection, as a restarted agent makes) reaches the
    // same stdin; the end of one does not close it.
    let id = "cat";
    let started = start(
        &data,
        &store,
        &image,
        &rt,
        id,
        &["cat"],
        StdinSpec {
            stdin: true,
            ..Default::default()
        },
    )
    .await;
    let dir = container::dir(&data, id);
    for round in 0..3 {
        let mut conn = shim::connect(&dir).await.unwrap();
        send(
            &mut conn,
            shim::FRAME_DATA,
            format!("line-{round}\n").as_bytes(),
        )
        .await;
        until_logged(&dir, &format!("line-{round}\n")).await;
        if round == 1 {
            // A session whose stdin ends does not close the container's (no stdinOnce).
            send(&mut conn, shim::FRAME_CLOSE, &[]).await;
        }
        drop(conn);
    }
    rt.kill(id, 9).await.unwrap();
    let exit = started.wait().await.unwrap();
    assert_eq!(exit.code, 137, "{kind}: cat ran until killed");
    assert!(
        !dir.join(shim::ATTACH_SOCKET).exists(),
        "{kind}: the socket goes with the container"
    );
    container::remove(&data, id).unwrap();

    // stdinOnce: the end of the first session closes the stdin; cat ends with 0.
    let id = "once";
    let started = start(
        &data,
        &store,
        &image,
        &rt,
        id,
        &["sh", "-c", "cat; echo cat-done"],
        StdinSpec {
            stdin: true,
            stdin_once: true,
            tty: false,
        },
    )
    .await;
    let dir = container::dir(&data, id);
    let mut conn = shim::connect(&dir).await.unwrap();
    send(&mut conn, shim::FRAME_DATA, b"only-once\n").await;
    until_logged(&dir, "only-once\n").await;
    drop(conn);
    let exit = tokio::time::timeout(Duration::from_secs(60), started.wait())
        .await
        .expect("stdinOnce: the container ends once the session does")
        .unwrap();
    assert_eq!(exit.code, 0, "{kind}: {}", log_text(&dir));
    assert!(log_text(&dir).contains("cat-done"), "{kind}");
    container::remove(&data, id).unwrap();

    // No stdin: no socket, stdin at its end at once.
    let id = "plain";
    let started = start(
        &data,
        &store,
        &image,
        &rt,
        id,
        &["sh", "-c", "cat; echo eof-at-once"],
        StdinSpec::default(),
    )
    .await;
    let dir = container::dir(&data, id);
    assert!(!dir.join(shim::ATTACH_SOCKET).exists(), "{kind}");
    assert!(shim::connect(&dir).await.is_err(), "{kind}");
    let exit = tokio::time::timeout(Duration::from_secs(60), started.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code, 0, "{kind}");
    assert!(log_text(&dir).contains("eof-at-once"), "{kind}");
    container::remove(&data, id).unwrap();

    // tty: a shell on the shim's terminal; typed input runs, the output is logged.
    let id = "tty";
    let started = start(
        &data,
        &store,
        &image,
        &rt,
        id,
        &["sh"],
        StdinSpec {
            stdin: true,
            stdin_once: true,
            tty: true,
        },
    )
    .await;
    let dir = container::dir(&data, id);
    // An interactive shell's prompt (no newline yet) shows at once.
    until_logged(&dir, "/ # ").await;
    let mut conn = shim::connect(&dir).await.unwrap();
    send(&mut conn, shim::FRAME_RESIZE, &[0, 91, 0, 33]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let line = b"echo hi-$((6*7)); echo size-$(busybox stty size); exit 3\r";
    send(&mut conn, shim::FRAME_DATA, line).await;
    let Ok(exit) = tokio::time::timeout(Duration::from_secs(60), started.wait()).await else {
        let _ = rt.kill(id, 9).await;
        panic!("{kind}: the shell did not exit; log: {:?}", log_text(&dir));
    };
    let exit = exit.unwrap();
    let log = log_text(&dir);
    assert_eq!(exit.code, 3, "{kind}: {log}");
    assert!(log.contains("hi-42"), "{kind}: {log}");
    assert!(log.contains("size-33 91"), "{kind}: {log}");
    drop(conn);
    container::remove(&data, id).unwrap();
}

/// A `tty` container's terminal is its controlling terminal, as docker and containerd give:
/// `[ -t 0 ]` holds, `tty` names it (crun; gVisor's sentry gives host terminals no device
/// name, google/gvisor#13535), a ^C typed into it is turned into SIGINT for the foreground
/// process group by its line discipline, and a session's resize signals it (SIGWINCH) with the
/// new size.
async fn controlling_terminal(kind: RuntimeKind) {
    let (_tmp, data, store, image) = prepare().await;
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &data).unwrap());
    let id = "ctty";
    // SIGINT interrupts the first sleep (its trap runs, the script goes on); SIGWINCH, after
    // `armed`, ends the script from its trap with the size it sees (the shell runs a trap
    // when its foreground command ends: short sleeps).
    let script = "echo tty=$(busybox tty); [ -t 0 ] && [ -t 1 ] && echo stdin-is-a-tty; \
        trap 'echo got-int' INT; echo ready; sleep 30; echo after-int; \
        trap 'echo winch=$(busybox stty size); exit 7' WINCH; echo armed; \
        i=0; while [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done; exit 3";
    let started = start(
        &data,
        &store,
        &image,
        &rt,
        id,
        &["sh", "-c", script],
        StdinSpec {
            stdin: true,
            stdin_once: false,
            tty: true,
        },
    )
    .await;
    let dir = container::dir(&data, id);
    until_logged(&dir, "ready").await;
    let log = log_text(&dir);
    assert_on_a_terminal(kind, &log);
    let mut conn = shim::connect(&dir).await.unwrap();
    // ^C as typed: the terminal's line discipline sends SIGINT to the foreground process
    // group, which interrupts the `sleep 30` and runs the shell's trap at once.
    // (Typed again every 3 s: one typed between `echo ready` and the start of the sleep only
    // runs the trap. All within 15 s, half the sleep.)
    let interrupted = async {
        loop {
            send(&mut conn, shim::FRAME_DATA, &[3]).await;
            for _ in 0..30 {
                if log_text(&dir).contains("armed") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(15), interrupted)
        .await
        .is_err()
    {
        let _ = rt.kill(id, 9).await;
        panic!(
            "{kind}: a typed ^C did not interrupt the container's sleep; log: {:?}",
            log_text(&dir)
        );
    }
    let log = log_text(&dir);
    assert!(log.contains("got-int"), "{kind}: {log}");
    assert!(log.contains("after-int"), "{kind}: {log}");
    // A session's resize signals the foreground process group (SIGWINCH), which sees the new
    // size; its trap ends the script.
    send(&mut conn, shim::FRAME_RESIZE, &[0, 91, 0, 33]).await;
    let Ok(exit) = tokio::time::timeout(Duration::from_secs(15), started.wait()).await else {
        let _ = rt.kill(id, 9).await;
        panic!(
            "{kind}: a resize did not signal the container; log: {:?}",
            log_text(&dir)
        );
    };
    let exit = exit.unwrap();
    let log = log_text(&dir);
    assert_eq!(exit.code, 7, "{kind}: {log}");
    assert!(log.contains("winch=33 91"), "{kind}: {log}");
    drop(conn);
    container::remove(&data, id).unwrap();
}

/// Reads what the terminal of an exec shows, from its master side, into `seen` until it holds
/// `until` (true) or `limit` has passed.
async fn read_until(
    out: &mut shim::PtyIo,
    seen: &mut String,
    until: &str,
    limit: Duration,
) -> bool {
    use tokio::io::AsyncReadExt as _;
    let deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 4096];
    while !seen.contains(until) {
        match tokio::time::timeout_at(deadline, out.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => return false,
        }
    }
    true
}

/// An exec on a terminal ([`Runtime::exec_on_terminal`], what `kubectl exec -t` gets) runs on
/// its controlling terminal: `tty` names it (crun), `[ -t 0 ]` holds, a typed ^C interrupts
/// it and a resize signals it with the new size.
async fn exec_on_terminal(kind: RuntimeKind) {
    let (_tmp, data, store, image) = prepare().await;
    let rt: Arc<dyn Runtime> = Arc::from(runtime::open(kind, &data).unwrap());
    let id = "execd";
    let started = start(
        &data,
        &store,
        &image,
        &rt,
        id,
        &["sleep", "120"],
        StdinSpec::default(),
    )
    .await;
    let dir = container::dir(&data, id);
    for _ in 0..300 {
        if rt.status(id).await.unwrap().as_deref() == Some("running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let mut process = spec["process"].clone();
    process["args"] = serde_json::json!([
        "sh",
        "-c",
        "echo tty=$(busybox tty); [ -t 0 ] && [ -t 1 ] && echo stdin-is-a-tty; \
         trap 'echo got-int' INT; echo ready; sleep 30; echo after-int; \
         trap 'echo winch=$(busybox stty size); exit 7' WINCH; echo armed; \
         i=0; while [ $i -lt 30 ]; do sleep 1; i=$((i+1)); done; exit 3"
    ]);
    let sandbox::runtime::TerminalExec { mut child, master } =
        rt.exec_on_terminal(id, &process).await.unwrap();
    let mut out = shim::PtyIo::new(&master).unwrap();
    let mut seen = String::new();
    assert!(
        read_until(&mut out, &mut seen, "ready", Duration::from_secs(15)).await,
        "{kind}: {seen:?}"
    );
    assert_on_a_terminal(kind, &seen);
    // (Typed again every 3 s: one typed between `echo ready` and the start of the sleep only
    // runs the trap. All within 15 s, half the sleep.)
    let mut interrupted = false;
    for _ in 0..5 {
        rustix::io::write(&master, &[3]).unwrap();
        if read_until(&mut out, &mut seen, "armed", Duration::from_secs(3)).await {
            interrupted = true;
            break;
        }
    }
    assert!(
        interrupted,
        "{kind}: a typed ^C did not interrupt the exec's sleep: {seen:?}"
    );
    assert!(seen.contains("got-int"), "{kind}: {seen:?}");
    let ws = rustix::termios::Winsize {
        ws_row: 33,
        ws_col: 91,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(&master, ws).unwrap();
    assert!(
        read_until(&mut out, &mut seen, "winch=33 91", Duration::from_secs(15)).await,
        "{kind}: a resize did not signal the exec: {seen:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(container::exit_code(status), 7, "{kind}: {seen:?}");

    // `Runtime::exec` with `tty` and a terminal of the caller's: the same for ^C.
    let (master, slave) = shim::open_pty().unwrap();
    let stdio = runtime::Stdio {
        stdin: slave.try_clone().unwrap().into(),
        stdout: slave.try_clone().unwrap().into(),
        stderr: slave.into(),
        foreground: false,
    };
    let script = "[ -t 0 ] && echo exec-tty-$((2*3)); trap 'echo got-int' INT; echo ready; \
        sleep 30; echo after-int; exit 5";
    let mut child = rt
        .exec(id, &["sh".into(), "-c".into(), script.into()], true, stdio)
        .unwrap();
    let mut out = shim::PtyIo::new(&master).unwrap();
    let mut seen = String::new();
    assert!(
        read_until(&mut out, &mut seen, "ready", Duration::from_secs(15)).await,
        "{kind}: {seen:?}"
    );
    assert!(seen.contains("exec-tty-6"), "{kind}: {seen:?}");
    let mut interrupted = false;
    for _ in 0..5 {
        rustix::io::write(&master, &[3]).unwrap();
        if read_until(&mut out, &mut seen, "after-int", Duration::from_secs(3)).await {
            interrupted = true;
            break;
        }
    }
    assert!(
        interrupted,
        "{kind}: a typed ^C did not interrupt `exec --tty`'s sleep: {seen:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(container::exit_code(status), 5, "{kind}: {seen:?}");
    rt.kill(id, 9).await.unwrap();
    let _ = started.wait().await;
    container::remove(&data, id).unwrap();
}

/// `output` (of `[ -t 0 ] && echo stdin-is-a-tty; echo tty=$(tty)`) shows a process on a
/// terminal, named as a device except on gVisor (runsc 2022 names none: google/gvisor#13535).
fn assert_on_a_terminal(kind: RuntimeKind, output: &str) {
    assert!(output.contains("stdin-is-a-tty"), "{kind}: {output:?}");
    let name = output
        .lines()
        .find_map(|l| l.trim().strip_prefix("tty="))
        .unwrap_or_default();
    match kind {
        RuntimeKind::Gvisor => println!("{kind}: `tty` says {name:?}"),
        _ => assert!(
            name.starts_with("/dev/pts/") || name == "/dev/console",
            "{kind}: `tty` names no terminal device: {output:?}"
        ),
    }
}

/// Runs `case` on every runtime the machine has (with the shim), saying `done` after each.
async fn every_runtime<F: std::future::Future<Output = ()>>(
    case: fn(RuntimeKind) -> F,
    done: &str,
) {
    if !use_shim() {
        return;
    }
    for kind in common::runtimes() {
        case(kind).await;
        println!("{kind}: {done}");
    }
}

#[tokio::test]
async fn exec_on_terminal_every_runtime() {
    every_runtime(
        exec_on_terminal,
        "an exec's terminal is its controlling terminal",
    )
    .await;
}

#[tokio::test]
async fn controlling_terminal_every_runtime() {
    every_runtime(
        controlling_terminal,
        "a tty container's terminal is its controlling terminal",
    )
    .await;
}

#[tokio::test]
async fn kept_stdin_every_runtime() {
    every_runtime(
        kept_stdin,
        "kept stdin, stdinOnce, no stdin and tty all behave",
    )
    .await;
}
