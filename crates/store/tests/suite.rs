//! One behaviour suite for every backend: each case below runs against the in-memory backend,
//! SQLite (in a temp dir) and etcd (a real `etcd` started per test on loopback ports), the latter
//! twice: with the default options (serializable reads, as the cluster has one member) and with
//! linearizable, uncoalesced reads spread over three connections.
//!
//! Without an `etcd` binary the etcd cases print a SKIPPED line, or panic when
//! `NODELESS_REQUIRE_ETCD=1` (as CI sets it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use store::etcd::{Etcd, EtcdOptions, LocalEtcd, LocalEtcdError, ReadMode};
use store::memory::Memory;
use store::sqlite::Sqlite;
use store::{Backend, Error, Event, KeyValue, Revision, WatchStream};

/// A backend under test and whatever must live as long as it (temp dir, etcd process).
struct Harness {
    backend: Arc<dyn Backend>,
    _keep: Box<dyn Any>,
}

fn memory() -> Option<Harness> {
    Some(Harness {
        backend: Arc::new(Memory::new()),
        _keep: Box::new(()),
    })
}

fn sqlite() -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let backend = Sqlite::open(&dir.path().join("store.db")).unwrap();
    Some(Harness {
        backend: Arc::new(backend),
        _keep: Box::new(dir),
    })
}

async fn etcd() -> Option<Harness> {
    etcd_with(EtcdOptions::default()).await
}

/// etcd with linearizable reads, each its own request, over several connections (the default is
/// serializable, coalesced reads on a single-member cluster, over one connection).
async fn etcd_linearizable() -> Option<Harness> {
    etcd_with(EtcdOptions {
        connections: 3,
        reads: ReadMode::Linearizable,
        coalesce_reads: false,
    })
    .await
}

async fn etcd_with(options: EtcdOptions) -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let server = match LocalEtcd::start(dir.path()).await {
        Ok(server) => server,
        Err(LocalEtcdError::NotInstalled) => {
            if std::env::var("NODELESS_REQUIRE_ETCD").is_ok_and(|v| v == "1") {
                panic!(
                    "NODELESS_REQUIRE_ETCD=1 but no etcd binary: apt-get install -y etcd-server"
                );
            }
            eprintln!(
                "!!!!! SKIPPED: etcd backend test, no `etcd` binary (apt-get install -y etcd-server) !!!!!"
            );
            return None;
        }
        Err(e) => panic!("cannot start etcd: {e}"),
    };
    let backend = Etcd::connect_with(&[server.endpoint().to_owned()], "/suite/", options)
        .await
        .unwrap();
    assert_eq!(
        backend.serializable_reads(),
        options.reads == ReadMode::SerializableIfSingleMember
    );
    // Something outside the prefix, which no case may ever see.
    let other = Etcd::connect(&[server.endpoint().to_owned()], "/other/")
        .await
        .unwrap();
    other.create("/p/outside", b"x".to_vec()).await.unwrap();
    // The server must die before its data dir is removed: fields drop in order.
    Some(Harness {
        backend: Arc::new(backend),
        _keep: Box::new((server, dir)),
    })
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let h = super::memory().unwrap();
                    super::$case(h.backend.clone()).await;
                }
            )*
        }
        mod sqlite_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let h = super::sqlite().unwrap();
                    super::$case(h.backend.clone()).await;
                }
            )*
        }
        mod etcd_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(h) = super::etcd().await {
                        super::$case(h.backend.clone()).await;
                    }
                }
            )*
        }
        mod etcd_linearizable_backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    if let Some(h) = super::etcd_linearizable().await {
                        super::$case(h.backend.clone()).await;
                    }
                }
            )*
        }
    };
}

suite!(
    revisions_grow_by_one_per_write,
    get_at_old_revision,
    list_prefix_limit_start_after_revision,
    create_already_exists,
    update_conflict_and_not_found,
    delete_with_and_without_expected,
    watch_sees_events_after_revision_in_order,
    watch_event_contents,
    watch_catch_up_during_writes,
    watch_only_its_prefix,
    compaction,
    concurrent_writers,
    same_answers_as_the_memory_reference,
);

type B = Arc<dyn Backend>;

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// The next `n` events; panics on an error, an end or a 10 s silence.
async fn take(w: &mut WatchStream, n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Ok(e))) => out.push(e),
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e:?}", out.len()),
            Ok(None) => panic!("watch ended after {} events", out.len()),
            Err(_) => panic!("watch silent after {} of {n} events", out.len()),
        }
    }
    out
}

/// Asserts that nothing more arrives for a while.
async fn assert_quiet(w: &mut WatchStream) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
        panic!("unexpected watch item: {item:?}");
    }
}

fn summary(events: &[Event]) -> Vec<(Revision, String, &'static str)> {
    events
        .iter()
        .map(|e| {
            let kind = match e {
                Event::Put { prev: None, .. } => "create",
                Event::Put { prev: Some(_), .. } => "update",
                Event::Delete { .. } => "delete",
            };
            (e.revision(), e.key().to_owned(), kind)
        })
        .collect()
}

async fn revisions_grow_by_one_per_write(b: B) {
    let r0 = b.current_revision().await.unwrap();
    assert_eq!(b.create("/p/a", v("1")).await.unwrap(), r0 + 1);
    assert_eq!(b.create("/p/b", v("1")).await.unwrap(), r0 + 2);
    assert_eq!(b.update("/p/a", v("2"), r0 + 1).await.unwrap(), r0 + 3);
    let (rd, prev) = b.delete("/p/b", None).await.unwrap();
    assert_eq!(rd, r0 + 4);
    assert_eq!(prev.mod_revision, r0 + 2);
    assert_eq!(b.current_revision().await.unwrap(), r0 + 4);
    // Failed writes do not move the revision.
    assert!(b.create("/p/a", v("x")).await.is_err());
    assert!(b.update("/p/a", v("x"), r0).await.is_err());
    assert!(b.delete("/p/b", None).await.is_err());
    assert_eq!(b.current_revision().await.unwrap(), r0 + 4);
    assert_eq!(b.create("/p/b", v("again")).await.unwrap(), r0 + 5);
}

async fn get_at_old_revision(b: B) {
    let r0 = b.current_revision().await.unwrap();
    let r1 = b.create("/p/k", v("v1")).await.unwrap();
    let r2 = b.update("/p/k", v("v2"), r1).await.unwrap();
    let (r3, _) = b.delete("/p/k", Some(r2)).await.unwrap();
    let r4 = b.create("/p/k", v("v4")).await.unwrap();

    let kv = |value: &str, create_revision, mod_revision| KeyValue {
        key: "/p/k".into(),
        value: v(value),
        create_revision,
        mod_revision,
    };
    assert_eq!(b.get("/p/k", Some(r0)).await.unwrap(), (r0, None));
    assert_eq!(
        b.get("/p/k", Some(r1)).await.unwrap(),
        (r1, Some(kv("v1", r1, r1)))
    );
    assert_eq!(
        b.get("/p/k", Some(r2)).await.unwrap(),
        (r2, Some(kv("v2", r1, r2)))
    );
    assert_eq!(b.get("/p/k", Some(r3)).await.unwrap(), (r3, None));
    assert_eq!(
        b.get("/p/k", Some(r4)).await.unwrap(),
        (r4, Some(kv("v4", r4, r4)))
    );
    assert_eq!(
        b.get("/p/k", None).await.unwrap(),
        (r4, Some(kv("v4", r4, r4)))
    );
    assert_eq!(b.get("/p/missing", None).await.unwrap(), (r4, None));
    match b.get("/p/k", Some(r4 + 10)).await {
        Err(Error::FutureRevision { requested, current }) => {
            assert_eq!((requested, current), (r4 + 10, r4));
        }
        other => panic!("expected FutureRevision, got {other:?}"),
    }
}

async fn list_prefix_limit_start_after_revision(b: B) {
    for k in ["/p/b", "/p/a", "/q/x", "/p/c", "/pz"] {
        b.create(k, v(k)).await.unwrap();
    }
    let before_d = b.create("/p/d", v("d")).await.unwrap();
    b.delete("/p/d", None).await.unwrap();
    let rb = b.get("/p/b", None).await.unwrap().1.unwrap().mod_revision;
    let now = b.update("/p/b", v("b2"), rb).await.unwrap();
    let keys = |items: &[KeyValue]| items.iter().map(|i| i.key.clone()).collect::<Vec<_>>();

    let page = b.list("/p/", None, 0, None).await.unwrap();
    assert_eq!(keys(&page.items), ["/p/a", "/p/b", "/p/c"]);
    assert_eq!((page.revision, page.more), (now, false));
    assert_eq!(page.items[1].value, v("b2"));
    assert_eq!(page.items[1].mod_revision, now);

    let page = b.list("/p/", None, 2, None).await.unwrap();
    assert_eq!(keys(&page.items), ["/p/a", "/p/b"]);
    assert!(page.more);
    let page = b.list("/p/", Some("/p/b"), 2, None).await.unwrap();
    assert_eq!(keys(&page.items), ["/p/c"]);
    assert!(!page.more);
    let page = b.list("/p/", Some("/p/a"), 2, None).await.unwrap();
    assert_eq!(keys(&page.items), ["/p/b", "/p/c"]);
    assert!(!page.more, "exactly `limit` keys left is not `more`");
    let page = b.list("/p/", Some("/p/c"), 0, None).await.unwrap();
    assert!(page.items.is_empty() && !page.more);
    let page = b.list("/p/", Some("/a"), 0, None).await.unwrap();
    assert_eq!(
        keys(&page.items),
        ["/p/a", "/p/b", "/p/c"],
        "start_after before the prefix"
    );
    let page = b.list("/p/", Some("/z"), 0, None).await.unwrap();
    assert!(page.items.is_empty(), "start_after past the prefix");

    // At an old revision: /p/d existed, /p/b had its first value.
    let page = b.list("/p/", None, 0, Some(before_d)).await.unwrap();
    assert_eq!(keys(&page.items), ["/p/a", "/p/b", "/p/c", "/p/d"]);
    assert_eq!(page.revision, before_d);
    assert_eq!(page.items[1].value, v("/p/b"));
    let page = b
        .list("/p/", Some("/p/a"), 1, Some(before_d))
        .await
        .unwrap();
    assert_eq!(keys(&page.items), ["/p/b"]);
    assert!(page.more);

    let all = b.list("", None, 0, None).await.unwrap();
    assert_eq!(keys(&all.items), ["/p/a", "/p/b", "/p/c", "/pz", "/q/x"]);
    assert_eq!(b.count("/p/").await.unwrap(), 3);
    assert_eq!(b.count("/p").await.unwrap(), 4);
    assert_eq!(b.count("").await.unwrap(), 5);
    assert_eq!(b.count("/nothing/").await.unwrap(), 0);
    assert!(matches!(
        b.list("/p/", None, 0, Some(now + 1)).await,
        Err(Error::FutureRevision { .. })
    ));
}

async fn create_already_exists(b: B) {
    b.create("/p/a", v("1")).await.unwrap();
    match b.create("/p/a", v("2")).await {
        Err(Error::AlreadyExists(k)) => assert_eq!(k, "/p/a"),
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(b.get("/p/a", None).await.unwrap().1.unwrap().value, v("1"));
}

async fn update_conflict_and_not_found(b: B) {
    match b.update("/p/none", v("1"), 0).await {
        Err(Error::NotFound(k)) => assert_eq!(k, "/p/none"),
        other => panic!("expected NotFound, got {other:?}"),
    }
    let r1 = b.create("/p/a", v("1")).await.unwrap();
    let r2 = b.update("/p/a", v("2"), r1).await.unwrap();
    match b.update("/p/a", v("3"), r1).await {
        Err(Error::Conflict {
            key,
            expected,
            current,
        }) => {
            assert_eq!((key.as_str(), expected, current), ("/p/a", r1, r2));
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert!(matches!(
        b.update("/p/a", v("3"), 0).await,
        Err(Error::Conflict { .. })
    ));
    assert_eq!(b.get("/p/a", None).await.unwrap().1.unwrap().value, v("2"));
    b.delete("/p/a", None).await.unwrap();
    assert!(matches!(
        b.update("/p/a", v("4"), r2).await,
        Err(Error::NotFound(_))
    ));
}

async fn delete_with_and_without_expected(b: B) {
    assert!(matches!(
        b.delete("/p/none", None).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        b.delete("/p/none", Some(5)).await,
        Err(Error::NotFound(_))
    ));
    let r1 = b.create("/p/a", v("1")).await.unwrap();
    let r2 = b.update("/p/a", v("2"), r1).await.unwrap();
    match b.delete("/p/a", Some(r1)).await {
        Err(Error::Conflict {
            expected, current, ..
        }) => assert_eq!((expected, current), (r1, r2)),
        other => panic!("expected Conflict, got {other:?}"),
    }
    let (rd, prev) = b.delete("/p/a", Some(r2)).await.unwrap();
    assert_eq!(rd, r2 + 1);
    assert_eq!(
        prev,
        KeyValue {
            key: "/p/a".into(),
            value: v("2"),
            create_revision: r1,
            mod_revision: r2
        }
    );
    assert_eq!(b.get("/p/a", None).await.unwrap().1, None);
    assert!(matches!(
        b.delete("/p/a", None).await,
        Err(Error::NotFound(_))
    ));

    let r3 = b.create("/p/b", v("b")).await.unwrap();
    let (rd, prev) = b.delete("/p/b", None).await.unwrap();
    assert_eq!((rd, prev.value, prev.mod_revision), (r3 + 1, v("b"), r3));
}

async fn watch_sees_events_after_revision_in_order(b: B) {
    let r0 = b.current_revision().await.unwrap();
    let r1 = b.create("/w/a", v("1")).await.unwrap();
    let r2 = b.create("/w/b", v("1")).await.unwrap();
    let r3 = b.update("/w/a", v("2"), r1).await.unwrap();
    let (r4, _) = b.delete("/w/b", Some(r2)).await.unwrap();

    // From the start: everything, in order.
    let mut w = b.watch("/w/", r0).await.unwrap();
    let got = take(&mut w, 4).await;
    assert_eq!(
        summary(&got),
        [
            (r1, "/w/a".into(), "create"),
            (r2, "/w/b".into(), "create"),
            (r3, "/w/a".into(), "update"),
            (r4, "/w/b".into(), "delete"),
        ]
    );
    // From the middle: only what follows.
    let mut w2 = b.watch("/w/", r2).await.unwrap();
    assert_eq!(summary(&take(&mut w2, 2).await), summary(&got[2..]));
    // From now: nothing until the next write, then exactly it, on every watcher.
    let mut w3 = b.watch("/w/", r4).await.unwrap();
    assert_quiet(&mut w3).await;
    let r5 = b.create("/w/c", v("1")).await.unwrap();
    for w in [&mut w, &mut w2, &mut w3] {
        assert_eq!(summary(&take(w, 1).await), [(r5, "/w/c".into(), "create")]);
        assert_quiet(w).await;
    }
    // From the future: waits for it.
    let mut w4 = b.watch("/w/", r5 + 1).await.unwrap();
    b.create("/w/d", v("1")).await.unwrap();
    let r7 = b.create("/w/e", v("1")).await.unwrap();
    assert_eq!(
        summary(&take(&mut w4, 1).await),
        [(r7, "/w/e".into(), "create")]
    );
}

async fn watch_event_contents(b: B) {
    let r0 = b.current_revision().await.unwrap();
    let mut live = b.watch("/e/", r0).await.unwrap();
    let r1 = b.create("/e/k", v("one")).await.unwrap();
    let r2 = b.update("/e/k", v("two"), r1).await.unwrap();
    let (r3, _) = b.delete("/e/k", None).await.unwrap();
    let kv = |value: &str, m| KeyValue {
        key: "/e/k".into(),
        value: v(value),
        create_revision: r1,
        mod_revision: m,
    };
    let expected = vec![
        Event::Put {
            kv: kv("one", r1),
            prev: None,
        },
        Event::Put {
            kv: kv("two", r2),
            prev: Some(kv("one", r1)),
        },
        Event::Delete {
            prev: kv("two", r3),
        },
    ];
    assert_eq!(take(&mut live, 3).await, expected, "live events");
    let mut replay = b.watch("/e/", r0).await.unwrap();
    assert_eq!(take(&mut replay, 3).await, expected, "events from history");
}

async fn watch_catch_up_during_writes(b: B) {
    const HISTORY: usize = 300;
    const LIVE: usize = 300;
    let r0 = b.current_revision().await.unwrap();
    for i in 0..HISTORY {
        b.create(&format!("/c/{i:04}"), v("h")).await.unwrap();
    }
    // Writers run while the watch is being set up and catching up.
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            let tasks: Vec<_> = (0..4)
                .map(|t| {
                    let b = b.clone();
                    tokio::spawn(async move {
                        for i in 0..LIVE / 4 {
                            b.create(&format!("/c/live-{t}-{i:04}"), v("l"))
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    // Watches started at different moments of the write load, each from the same revision.
    let mut watches = Vec::new();
    for _ in 0..8 {
        watches.push(b.watch("/c/", r0).await.unwrap());
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let want: Vec<Revision> = (r0 + 1..=r0 + (HISTORY + LIVE) as i64).collect();
    for (n, w) in watches.iter_mut().enumerate() {
        let got = take(w, HISTORY + LIVE).await;
        let revs: Vec<Revision> = got.iter().map(Event::revision).collect();
        assert_eq!(revs, want, "watch {n}: every revision once, in order");
        let keys: HashSet<&str> = got.iter().map(Event::key).collect();
        assert_eq!(keys.len(), HISTORY + LIVE);
    }
    writer.await.unwrap();
    for w in &mut watches {
        assert_quiet(w).await;
    }
}

async fn watch_only_its_prefix(b: B) {
    let r0 = b.current_revision().await.unwrap();
    let mut wa = b.watch("/a/", r0).await.unwrap();
    let mut all = b.watch("/", r0).await.unwrap();
    b.create("/a/1", v("1")).await.unwrap();
    b.create("/b/1", v("1")).await.unwrap();
    b.create("/ab", v("1")).await.unwrap();
    b.create("/a/2", v("1")).await.unwrap();
    let got = take(&mut wa, 2).await;
    assert_eq!(
        got.iter().map(Event::key).collect::<Vec<_>>(),
        ["/a/1", "/a/2"]
    );
    assert_quiet(&mut wa).await;
    let got = take(&mut all, 4).await;
    assert_eq!(
        got.iter().map(Event::key).collect::<Vec<_>>(),
        ["/a/1", "/b/1", "/ab", "/a/2"]
    );
    // A watch started later from history is filtered the same way.
    let mut wb = b.watch("/b/", r0).await.unwrap();
    assert_eq!(take(&mut wb, 1).await[0].key(), "/b/1");
    assert_quiet(&mut wb).await;
}

/// A watch from a compacted revision fails, at once or as its first item.
async fn assert_watch_compacted(b: &B, prefix: &str, after: Revision) {
    match b.watch(prefix, after).await {
        Err(Error::Compacted { .. }) => {}
        Err(e) => panic!("expected Compacted, got {e:?}"),
        Ok(mut w) => match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
            Ok(Some(Err(Error::Compacted { .. }))) => {}
            other => panic!("expected a Compacted watch error, got {other:?}"),
        },
    }
}

async fn compaction(b: B) {
    let r1 = b.create("/k/a", v("a1")).await.unwrap();
    let r2 = b.update("/k/a", v("a2"), r1).await.unwrap();
    let r3 = b.create("/k/b", v("b1")).await.unwrap();
    let (r4, _) = b.delete("/k/b", None).await.unwrap();
    let r5 = b.create("/k/c", v("c1")).await.unwrap();
    let r6 = b.update("/k/a", v("a3"), r2).await.unwrap();
    let _ = (r3, r4);

    b.compact(r5).await.unwrap();
    match b.get("/k/a", Some(r2)).await {
        Err(Error::Compacted {
            requested,
            compacted,
        }) => assert_eq!((requested, compacted), (r2, r5)),
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(matches!(
        b.get("/k/a", Some(r5 - 1)).await,
        Err(Error::Compacted { .. })
    ));
    assert!(matches!(
        b.list("/k/", None, 0, Some(r1)).await,
        Err(Error::Compacted { .. })
    ));
    assert_watch_compacted(&b, "/k/", r1).await;
    assert_watch_compacted(&b, "/k/", r5 - 1).await;

    // At and after the compaction revision everything still reads.
    assert_eq!(
        b.get("/k/a", Some(r5)).await.unwrap().1.unwrap().value,
        v("a2")
    );
    assert_eq!(b.get("/k/b", Some(r5)).await.unwrap().1, None);
    let page = b.list("/k/", None, 0, Some(r5)).await.unwrap();
    assert_eq!(
        page.items
            .iter()
            .map(|i| i.key.as_str())
            .collect::<Vec<_>>(),
        ["/k/a", "/k/c"]
    );
    assert_eq!(page.items[0].value, v("a2"));
    let page = b.list("/k/", None, 0, None).await.unwrap();
    assert_eq!(page.items[0].value, v("a3"));
    let mut w = b.watch("/k/", r5).await.unwrap();
    let got = take(&mut w, 1).await;
    assert_eq!(summary(&got), [(r6, "/k/a".into(), "update")]);

    // Compacting again at or below is harmless; beyond the current revision is refused.
    b.compact(r5).await.unwrap();
    b.compact(r1).await.unwrap();
    assert!(matches!(
        b.compact(r6 + 5).await,
        Err(Error::FutureRevision { .. })
    ));
    b.compact(r6).await.unwrap();
    assert!(matches!(
        b.get("/k/a", Some(r5)).await,
        Err(Error::Compacted { .. })
    ));
    assert_eq!(b.get("/k/c", None).await.unwrap().1.unwrap().value, v("c1"));
    assert_eq!(b.count("/k/").await.unwrap(), 2);
}

async fn concurrent_writers(b: B) {
    const TASKS: usize = 32;
    const EACH: usize = 20;
    let r0 = b.current_revision().await.unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let b = b.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..EACH {
                    revs.push(b.create(&format!("/cw/{t}/{i}"), v("x")).await.unwrap());
                }
                revs
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        let revs = t.await.unwrap();
        assert!(
            revs.windows(2).all(|w| w[0] < w[1]),
            "one task's writes are ordered"
        );
        all.extend(revs);
    }
    all.sort();
    let want: Vec<Revision> = (r0 + 1..=r0 + (TASKS * EACH) as i64).collect();
    assert_eq!(all, want, "distinct revisions, none skipped");
    assert_eq!(b.count("/cw/").await.unwrap(), (TASKS * EACH) as i64);

    // Racing guarded updates of one key: exactly one wins.
    let base = b.create("/cw/race", v("0")).await.unwrap();
    let racers: Vec<_> = (0..16)
        .map(|i| {
            let b = b.clone();
            tokio::spawn(async move { b.update("/cw/race", v(&i.to_string()), base).await })
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        match r.await.unwrap() {
            Ok(_) => wins += 1,
            Err(Error::Conflict { current, .. }) => assert_eq!(current, base + 1),
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(wins, 1);
}

/// Random guarded writes and compactions give the same answers as the in-memory reference, the
/// same lists at every retained revision and the same replayed events.
async fn same_answers_as_the_memory_reference(b: B) {
    let reference = Memory::new();
    // Line the revisions up (the etcd harness wrote outside the prefix already).
    let start = b.current_revision().await.unwrap();
    for i in 0..start - 1 {
        reference
            .create(&format!("/pad/{i}"), vec![])
            .await
            .unwrap();
    }
    let m: B = Arc::new(reference);
    assert_eq!(m.current_revision().await.unwrap(), start);

    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut compacted = 0;
    for step in 0..240 {
        let key = format!("/r/{}", rand(6));
        let value = step.to_string().into_bytes();
        let current = m.get(&key, None).await.unwrap().1.map(|kv| kv.mod_revision);
        let guard = match (current, rand(5)) {
            (Some(r), 0) => r - 1,
            (Some(r), _) => r,
            (None, _) => 1,
        };
        let (x, y) = match rand(3) {
            0 => (
                format!("{:?}", m.create(&key, value.clone()).await),
                format!("{:?}", b.create(&key, value).await),
            ),
            1 => (
                format!("{:?}", m.update(&key, value.clone(), guard).await),
                format!("{:?}", b.update(&key, value, guard).await),
            ),
            _ => {
                let expected = (rand(2) == 0).then_some(guard);
                (
                    format!("{:?}", m.delete(&key, expected).await),
                    format!("{:?}", b.delete(&key, expected).await),
                )
            }
        };
        assert_eq!(x, y, "step {step} on {key}");
        if step % 50 == 49 {
            let rev = m.current_revision().await.unwrap() - rand(12) as i64;
            m.compact(rev).await.unwrap();
            b.compact(rev).await.unwrap();
            compacted = rev;
        }
    }
    let current = m.current_revision().await.unwrap();
    assert_eq!(b.current_revision().await.unwrap(), current);
    for rev in compacted..=current {
        let x = m.list("/r/", None, 0, Some(rev)).await.unwrap();
        let y = b.list("/r/", None, 0, Some(rev)).await.unwrap();
        assert_eq!(x, y, "list at {rev}");
    }
    let n = (current - compacted) as usize;
    let mut wm = m.watch("/r/", compacted).await.unwrap();
    let mut wb = b.watch("/r/", compacted).await.unwrap();
    assert_eq!(take(&mut wm, n).await, take(&mut wb, n).await);
    assert_quiet(&mut wb).await;
}
