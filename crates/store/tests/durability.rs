//! An acknowledged SQLite write survives `kill -9` of the process that made it.
//!
//! The test re-executes its own binary to run `child_writer`, which writes keys from 16 tasks (so
//! group commit batches them) and prints `ACK <key>` after each write is acknowledged. The parent
//! SIGKILLs it in the middle of the load, reopens the database and checks every acknowledged key,
//! three times over on the same file. (Losing the page cache, i.e. power loss, is covered by
//! `synchronous=FULL`, which fsyncs the WAL before acknowledging; a test process cannot drop the
//! page cache of its own machine.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::Backend;
use store::sqlite::Sqlite;

const DB_ENV: &str = "STORE_DURABILITY_CHILD_DB";
const ROUND_ENV: &str = "STORE_DURABILITY_CHILD_ROUND";

fn value_of(key: &str) -> Vec<u8> {
    key.repeat(8).into_bytes()
}

#[test]
#[ignore = "helper process of sqlite_acknowledged_writes_survive_sigkill"]
fn child_writer() {
    let (Ok(path), Ok(round)) = (std::env::var(DB_ENV), std::env::var(ROUND_ENV)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let db = Arc::new(Sqlite::open(std::path::Path::new(&path)).unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|t| {
                let db = db.clone();
                let round = round.clone();
                tokio::spawn(async move {
                    for i in 0.. {
                        let key = format!("/d/{round}/{t}/{i}");
                        db.create(&key, value_of(&key)).await.unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ACK {key}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn sqlite_acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let exe = std::env::current_exe().unwrap();
    let mut total_acked = 0usize;
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_writer",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DB_ENV, &db)
            .env(ROUND_ENV, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        // Kill at a different point of the load each round.
        let kill_after = 200 + round * 137;
        while acked.len() < kill_after {
            assert!(
                Instant::now() < deadline,
                "child too slow: {} acks",
                acked.len()
            );
            match lines.next() {
                Some(line) => {
                    if let Some(key) = line.unwrap().strip_prefix("ACK ") {
                        acked.push(key.to_owned());
                    }
                }
                None => panic!("child exited early: {:?}", child.wait()),
            }
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed");
        // Acks printed before the kill are still in the pipe.
        for line in lines {
            if let Some(key) = line.unwrap().strip_prefix("ACK ") {
                acked.push(key.to_owned());
            }
        }
        total_acked += acked.len();

        let conn = rusqlite::Connection::open(&db).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        drop(conn);

        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = Sqlite::open(&db).unwrap();
            for key in &acked {
                let (_, kv) = store.get(key, None).await.unwrap();
                let kv = kv.unwrap_or_else(|| panic!("round {round}: acknowledged {key} lost"));
                assert_eq!(kv.value, value_of(key));
            }
            // Every write is one revision; unacknowledged writes may have committed too.
            let rev = store.current_revision().await.unwrap();
            assert!(
                rev > total_acked as i64,
                "revision {rev} < {total_acked} acks"
            );
            let stored = store.count("/d/").await.unwrap();
            let after_keys = store.count("/after/").await.unwrap();
            assert_eq!(after_keys, round as i64);
            assert_eq!(
                stored + after_keys,
                rev - 1,
                "one revision per create, no gap"
            );
            // The store still takes writes after the crash.
            store
                .create(&format!("/after/{round}"), vec![1])
                .await
                .unwrap();
        });
        eprintln!(
            "round {round}: {} acknowledged writes survived SIGKILL",
            acked.len()
        );
    }
}
