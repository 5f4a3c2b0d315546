//! The etcd backend's read modes against a real single-member etcd: serializable reads are
//! chosen only for a single-member cluster, and they still see every acknowledged write at once,
//! from any connection and any handle (read-your-writes and monotonic revisions under concurrent
//! writers), like linearizable reads.
//!
//! Without an `etcd` binary the cases print a SKIPPED line, or panic when
//! `NODELESS_REQUIRE_ETCD=1`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use store::Backend;
use store::etcd::{Etcd, EtcdOptions, LocalEtcd, LocalEtcdError, ReadMode};

async fn server() -> Option<(LocalEtcd, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    match LocalEtcd::start(dir.path()).await {
        Ok(server) => Some((server, dir)),
        Err(LocalEtcdError::NotInstalled) => {
            if std::env::var("NODELESS_REQUIRE_ETCD").is_ok_and(|v| v == "1") {
                panic!(
                    "NODELESS_REQUIRE_ETCD=1 but no etcd binary: apt-get install -y etcd-server"
                );
            }
            eprintln!("!!!!! SKIPPED: etcd read-mode test, no `etcd` binary !!!!!");
            None
        }
        Err(e) => panic!("cannot start etcd: {e}"),
    }
}

#[tokio::test]
async fn read_mode_follows_the_options_and_the_member_count() {
    let Some((server, _dir)) = server().await else {
        return;
    };
    let endpoints = [server.endpoint().to_owned()];
    let default = Etcd::connect(&endpoints, "/r/").await.unwrap();
    assert!(default.serializable_reads(), "one member: serializable");
    let linearizable = Etcd::connect_with(
        &endpoints,
        "/r/",
        EtcdOptions {
            connections: 1,
            reads: ReadMode::Linearizable,
            coalesce_reads: true,
        },
    )
    .await
    .unwrap();
    assert!(!linearizable.serializable_reads());
    assert!(server.pid() > 0);
}

/// Writers on one handle, readers on another (each over several connections): a read that
/// starts after a create was acknowledged sees it, and the revision a reader sees never goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serializable_reads_see_every_acknowledged_write() {
    let Some((server, _dir)) = server().await else {
        return;
    };
    let endpoints = [server.endpoint().to_owned()];
    let options = EtcdOptions {
        connections: 3,
        reads: ReadMode::SerializableIfSingleMember,
        coalesce_reads: true,
    };
    let writer = Arc::new(
        Etcd::connect_with(&endpoints, "/r/", options)
            .await
            .unwrap(),
    );
    let reader = Arc::new(
        Etcd::connect_with(&endpoints, "/r/", options)
            .await
            .unwrap(),
    );
    assert!(reader.serializable_reads());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let (writer, reader) = (writer.clone(), reader.clone());
            tokio::spawn(async move {
                let mut last_seen = 0;
                for i in 0..50 {
                    let key = format!("/k/{t}/{i}");
                    let rev = writer.create(&key, vec![b'x'; 100]).await.unwrap();
                    let (at, kv) = reader.get(&key, None).await.unwrap();
                    let kv = kv.unwrap_or_else(|| panic!("{key} written at {rev} not seen"));
                    assert_eq!(kv.mod_revision, rev);
                    assert!(at >= rev, "read at {at} before the write at {rev}");
                    assert!(
                        at >= last_seen,
                        "revision went back from {last_seen} to {at}"
                    );
                    last_seen = at;
                    let current = reader.current_revision().await.unwrap();
                    assert!(current >= at);
                    let page = reader
                        .list(&format!("/k/{t}/"), None, 0, None)
                        .await
                        .unwrap();
                    assert_eq!(page.items.len(), i + 1);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(reader.count("/k/").await.unwrap(), 400);
}

/// Sum of a counter in etcd's `/metrics` over the label sets that contain `label`.
async fn metric(endpoint: &str, name: &str, label: &str) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = endpoint.trim_start_matches("http://");
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    body.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Many tasks read one key while a writer keeps updating it: each read returns a value at least
/// as new as the last update acknowledged before the read started (so a read never shares an
/// etcd request that was sent before it arrived), and the reads were coalesced (etcd served
/// fewer ranges than there were reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_reads_are_linearizable_and_fewer() {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    let Some((server, _dir)) = server().await else {
        return;
    };
    let endpoints = [server.endpoint().to_owned()];
    for reads in [ReadMode::SerializableIfSingleMember, ReadMode::Linearizable] {
        let options = EtcdOptions {
            connections: 1,
            reads,
            coalesce_reads: true,
        };
        let etcd = Arc::new(
            Etcd::connect_with(&endpoints, "/c/", options)
                .await
                .unwrap(),
        );
        let key = format!("/hot/{reads:?}");
        let mut rev = etcd.create(&key, b"0".to_vec()).await.unwrap();
        let acked = Arc::new(AtomicI64::new(rev));
        let done = Arc::new(AtomicBool::new(false));
        let ranges_before =
            metric(server.endpoint(), "grpc_server_handled_total", "\"Range\"").await;
        let readers: Vec<_> = (0..16)
            .map(|_| {
                let (etcd, acked, done, key) =
                    (etcd.clone(), acked.clone(), done.clone(), key.clone());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !done.load(Ordering::SeqCst) {
                        let floor = acked.load(Ordering::SeqCst);
                        let (at, kv) = etcd.get(&key, None).await.unwrap();
                        let seen = kv.unwrap().mod_revision;
                        assert!(
                            seen >= floor,
                            "read {seen}, but {floor} was acknowledged before"
                        );
                        assert!(at >= seen);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        for i in 1..=200 {
            rev = etcd
                .update(&key, i.to_string().into_bytes(), rev)
                .await
                .unwrap();
            acked.store(rev, Ordering::SeqCst);
        }
        done.store(true, Ordering::SeqCst);
        let mut gets = 0;
        for r in readers {
            gets += r.await.unwrap();
        }
        let ranges = metric(server.endpoint(), "grpc_server_handled_total", "\"Range\"").await
            - ranges_before;
        assert!(gets > 200, "{reads:?}: only {gets} reads");
        assert!(
            ranges < gets as f64 * 0.8,
            "{reads:?}: {ranges} etcd ranges for {gets} reads: not coalesced"
        );
        eprintln!("{reads:?}: {gets} reads served by {ranges} etcd ranges");
    }
}
