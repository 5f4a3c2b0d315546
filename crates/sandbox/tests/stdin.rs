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

#[tokio::test]
async fn kept_stdin_every_runtime() {
    if !use_shim() {
        return;
    }
    for kind in common::runtimes() {
        kept_stdin(kind).await;
        println!("{kind}: kept stdin, stdinOnce, no stdin and tty all behave");
    }
}
