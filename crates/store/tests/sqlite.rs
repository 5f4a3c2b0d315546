//! SQLite-only behaviour: a failing batch, slow watchers, reopening.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use store::sqlite::Sqlite;
use store::{Backend, Error};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_transaction_fails_its_batch_and_the_store_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let store = std::sync::Arc::new(Sqlite::open(&path).unwrap());
    store.create("/before", vec![1]).await.unwrap();
    let r0 = store.current_revision().await.unwrap();

    // Any insert of /boom aborts the writer's transaction.
    let side = rusqlite::Connection::open(&path).unwrap();
    side.execute_batch(
        "CREATE TRIGGER boom BEFORE INSERT ON log WHEN NEW.key = CAST('/boom' AS BLOB)
         BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .unwrap();

    // The trigger alone does not disturb other writes.
    store.create("/solo", vec![2]).await.unwrap();
    let r0 = r0 + 1;

    // 10 tasks write 5 keys each; one of the 50 writes is /boom.
    let mut tasks = Vec::new();
    for t in 0..10 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..5 {
                let key = if (t, i) == (4, 2) {
                    "/boom".to_owned()
                } else {
                    format!("/k/{t}/{i}")
                };
                let result = store.create(&key, vec![2]).await;
                out.push((key, result));
            }
            out
        }));
    }
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for result in futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(|t| t.unwrap())
    {
        match result {
            (key, Ok(rev)) => ok.push((key, rev)),
            (key, Err(Error::Backend(e))) => {
                assert!(e.to_string().contains("transaction failed"), "{e}");
                failed.push(key);
            }
            (key, Err(e)) => panic!("{key}: unexpected {e:?}"),
        }
    }
    assert!(failed.contains(&"/boom".to_owned()));
    assert!(!ok.is_empty(), "writes in other batches succeed");
    // The successful writes got exactly the revisions after r0; the failed ones left nothing.
    let revs: HashSet<i64> = ok.iter().map(|(_, r)| *r).collect();
    assert_eq!(revs, (r0 + 1..=r0 + ok.len() as i64).collect());
    assert_eq!(
        store.current_revision().await.unwrap(),
        r0 + ok.len() as i64
    );
    for (key, rev) in &ok {
        assert_eq!(
            store.get(key, None).await.unwrap().1.unwrap().mod_revision,
            *rev
        );
    }
    for key in &failed {
        assert_eq!(
            store.get(key, None).await.unwrap().1,
            None,
            "{key} was written"
        );
    }
    eprintln!(
        "{} writes failed with /boom's batch, {} succeeded",
        failed.len(),
        ok.len()
    );

    side.execute_batch("DROP TRIGGER boom").unwrap();
    let r = store.create("/boom", vec![3]).await.unwrap();
    assert_eq!(r, r0 + ok.len() as i64 + 1);
}

#[tokio::test]
async fn slow_watcher_gets_an_error_not_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let store = Sqlite::open_with_watch_buffer(&dir.path().join("store.db"), 2).unwrap();
    let mut w = store.watch("", 1).await.unwrap();
    for i in 0..10 {
        store.create(&format!("/k/{i}"), vec![]).await.unwrap();
    }
    let mut seen = Vec::new();
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), w.next())
            .await
            .unwrap()
        {
            Some(Ok(e)) => seen.push(e.revision()),
            Some(Err(e)) => break e,
            None => panic!("watch ended without an error"),
        }
    };
    assert!(err.to_string().contains("storage backend failed"));
    assert!(format!("{err:?}").contains("Lagged"), "{err:?}");
    assert_eq!(
        seen,
        (2..2 + seen.len() as i64).collect::<Vec<_>>(),
        "no gap before the error"
    );
}

#[tokio::test]
async fn reopen_keeps_data_revision_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    {
        let store = Sqlite::open(&path).unwrap();
        let r1 = store.create("/a", b"1".to_vec()).await.unwrap();
        store.update("/a", b"2".to_vec(), r1).await.unwrap();
        store.create("/b", b"1".to_vec()).await.unwrap();
        store.compact(r1 + 1).await.unwrap();
    }
    let store = Sqlite::open(&path).unwrap();
    assert_eq!(store.current_revision().await.unwrap(), 4);
    assert_eq!(store.get("/a", None).await.unwrap().1.unwrap().value, b"2");
    assert!(matches!(
        store.get("/a", Some(2)).await,
        Err(Error::Compacted { compacted: 3, .. })
    ));
    assert_eq!(store.create("/c", vec![]).await.unwrap(), 5);
}

/// Random writes and compactions applied to SQLite and to the in-memory reference give the same
/// answers, the same reads at every retained revision, the same replayed events, and SQLite keeps
/// exactly the rows those need.
#[tokio::test]
async fn matches_the_memory_reference_under_random_writes_and_compactions() {
    use store::memory::Memory;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let sqlite = Sqlite::open(&path).unwrap();
    let memory = Memory::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let mut compacted = 0;
    for step in 0..400 {
        let key = format!("/r/{}", rand(8));
        let value = step.to_string().into_bytes();
        let current = memory
            .get(&key, None)
            .await
            .unwrap()
            .1
            .map(|kv| kv.mod_revision);
        // Mostly valid guards, sometimes stale ones.
        let guard = match (current, rand(5)) {
            (Some(r), 0) => r - 1,
            (Some(r), _) => r,
            (None, _) => 1,
        };
        match rand(3) {
            0 => {
                let (a, b) = (
                    memory.create(&key, value.clone()).await,
                    sqlite.create(&key, value).await,
                );
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "create {key} at step {step}"
                );
            }
            1 => {
                let (a, b) = (
                    memory.update(&key, value.clone(), guard).await,
                    sqlite.update(&key, value, guard).await,
                );
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "update {key} at step {step}"
                );
            }
            _ => {
                let expected = (rand(2) == 0).then_some(guard);
                let (a, b) = (
                    memory.delete(&key, expected).await,
                    sqlite.delete(&key, expected).await,
                );
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "delete {key} at step {step}"
                );
            }
        }
        if step % 60 == 59 {
            let rev = memory.current_revision().await.unwrap() - rand(15) as i64;
            memory.compact(rev).await.unwrap();
            sqlite.compact(rev).await.unwrap();
            compacted = rev;
        }
    }
    let current = memory.current_revision().await.unwrap();
    assert_eq!(sqlite.current_revision().await.unwrap(), current);
    assert!(compacted > 1);
    for rev in compacted..=current {
        let a = memory.list("", None, 0, Some(rev)).await.unwrap();
        let b = sqlite.list("", None, 0, Some(rev)).await.unwrap();
        assert_eq!(a, b, "list at {rev}");
    }
    let n = (current - compacted) as usize;
    let ten = Duration::from_secs(10);
    let a: Vec<_> = tokio::time::timeout(
        ten,
        memory.watch("", compacted).await.unwrap().take(n).collect(),
    )
    .await
    .unwrap();
    let b: Vec<_> = tokio::time::timeout(
        ten,
        sqlite.watch("", compacted).await.unwrap().take(n).collect(),
    )
    .await
    .unwrap();
    assert_eq!(format!("{a:?}"), format!("{b:?}"));

    // Rows kept: one per revision since the compaction, plus the older rows still visible then.
    let visible_older = memory
        .list("", None, 0, Some(compacted))
        .await
        .unwrap()
        .items
        .iter()
        .filter(|kv| kv.mod_revision < compacted)
        .count();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as usize, n + 1 + visible_older);
}
