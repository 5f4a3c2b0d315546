//! The embedded default backend, on SQLite.
//!
//! Layout (like kine's): one append-only `log` table whose row id is the revision. Every write
//! inserts a row: `key`, `created` (a create), `deleted` (a delete; `value` then holds the last
//! value), `create_revision`, `prev_revision` (the key's previous row), `value` and `old_value` (the
//! value before an update, so an event is self-contained). Reading at revision R means taking, per
//! key, the newest row with id <= R. A `meta` table holds the current and the compacted revision.
//! Compaction deletes the rows that no read at or after the compaction revision can see.
//!
//! Durability: WAL journal with `synchronous=FULL`, so every commit fsyncs the WAL before the write
//! is acknowledged; an acknowledged write survives a kill -9 of the process and a loss of the page
//! cache (power loss). `NORMAL` would only sync at checkpoints and could lose the last commits.
//!
//! Group commit: one writer thread owns the only write connection. It takes every queued write
//! request, applies them all in one transaction, commits (one fsync) and only then answers them,
//! so N concurrent writers share one fsync. If the transaction fails, every request of the batch
//! gets the error. After each commit the writer broadcasts the batch's events to the watchers.
//! Reads run on tokio's blocking pool with a small pool of read-only connections; WAL lets them
//! read a consistent snapshot while the writer commits.
//!
//! One process per database file: live watch events come from this process's writer only. The
//! path must be a real file (not `:memory:`): the read connections open it too.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

use futures::stream;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{broadcast, oneshot};

use crate::memory::{
    DEFAULT_WATCH_BUFFER, check_read_revision, check_watch_revision, live_stream, prefix_end,
};
use crate::{Backend, Error, Event, KeyValue, ListPage, Result, Revision, WatchStream};

/// At most this many write requests share one transaction.
const MAX_BATCH: usize = 1024;
/// Read connections kept open between reads.
const MAX_IDLE_READERS: usize = 8;
/// Revisions compacted per write transaction.
const COMPACT_STEP: Revision = 10_000;
/// Rows read per query while a watch catches up.
const CATCH_UP_PAGE: i64 = 512;

/// Every write of a batch failed because the batch's transaction failed.
#[derive(Debug, thiserror::Error)]
#[error("sqlite write transaction failed")]
pub struct TransactionFailed(#[source] Arc<rusqlite::Error>);

/// The writer thread is gone (it panicked); no write can be done.
#[derive(Debug, thiserror::Error)]
#[error("sqlite writer thread stopped")]
pub struct WriterStopped;

/// The SQLite backend. See the module documentation for the layout and the durability rules.
pub struct Sqlite {
    // Fields drop in this order: the readers' connections are closed before the writer thread
    // is told to stop (by the sender's drop) and closes the last connection, which checkpoints
    // and removes the WAL under an exclusive lock. A reader closing at that same moment on
    // another thread deadlocked inside SQLite 3.51.1 (unixClose against the WAL close's lock;
    // seen once in `store --test durability`).
    readers: Arc<Readers>,
    events: broadcast::Sender<Arc<[Event]>>,
    writer: mpsc::Sender<Request>,
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Backend(Box::new(e))
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    created INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    create_revision INTEGER NOT NULL,
    prev_revision INTEGER NOT NULL,
    value BLOB NOT NULL,
    old_value BLOB
);
CREATE INDEX IF NOT EXISTS log_key_id ON log (key, id);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('revision', 1), ('compacted', 0);
";

impl Sqlite {
    /// Opens (creating if needed) the database at `path` and starts its writer thread.
    ///
    /// Synchronous: it does a little blocking file I/O (open, WAL setup, schema), so call it at
    /// startup or from `spawn_blocking`. It needs no tokio runtime; the async methods do.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with_watch_buffer(path, DEFAULT_WATCH_BUFFER)
    }

    /// Like [`Sqlite::open`], with watchers allowed to fall behind by at most `buffer` write
    /// batches before their stream ends with [`crate::memory::WatchError::Lagged`].
    pub fn open_with_watch_buffer(path: &Path, buffer: usize) -> Result<Self> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(backend)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(backend)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(backend(std::io::Error::other(format!(
                "sqlite refused WAL journal mode (got {mode})"
            ))));
        }
        conn.execute_batch("PRAGMA synchronous=FULL;")
            .map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;

        let (events, _) = broadcast::channel(buffer.max(1));
        let (tx, rx) = mpsc::channel();
        let writer_events = events.clone();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, writer_events))
            .map_err(backend)?;
        Ok(Sqlite {
            readers: Arc::new(Readers {
                path: path.to_path_buf(),
                idle: Mutex::new(Vec::new()),
            }),
            events,
            writer: tx,
        })
    }

    async fn write(&self, op: Op) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Request { op, reply })
            .map_err(|_| backend(WriterStopped))?;
        rx.await.map_err(|_| backend(WriterStopped))?
    }
}

// ---------------------------------------------------------------------------------------------
// Writer

enum Op {
    Create {
        key: String,
        value: Vec<u8>,
    },
    Update {
        key: String,
        value: Vec<u8>,
        expected: Revision,
    },
    Delete {
        key: String,
        expected: Option<Revision>,
    },
    Compact(Revision),
}

enum Reply {
    Revision(Revision),
    Deleted(Revision, KeyValue),
    Compacted,
}

struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Reply>>,
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Request>,
    events: broadcast::Sender<Arc<[Event]>>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match apply_batch(&mut conn, &batch) {
            Ok((results, batch_events)) => {
                if !batch_events.is_empty() {
                    // Watchers first, so a writer that got its answer finds its event queued.
                    let _ = events.send(Arc::from(batch_events));
                }
                for (req, result) in batch.into_iter().zip(results) {
                    let _ = req.reply.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = batch.len(), "sqlite write batch failed");
                let e = Arc::new(e);
                for req in batch {
                    let _ = req.reply.send(Err(backend(TransactionFailed(e.clone()))));
                }
            }
        }
    }
}

/// The newest row of a key: (id, create_revision, deleted, value).
type Row = (Revision, Revision, bool, Vec<u8>);

fn latest_row(tx: &rusqlite::Transaction<'_>, key: &str) -> rusqlite::Result<Option<Row>> {
    tx.prepare_cached(
        "SELECT id, create_revision, deleted, value FROM log WHERE key = ?1 ORDER BY id DESC LIMIT 1",
    )?
    .query_row(params![key.as_bytes()], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })
    .optional()
}

/// The current value of a key from its newest row, if it is not a delete.
fn live_kv(key: &str, row: Option<Row>) -> Option<KeyValue> {
    match row {
        Some((id, create_revision, false, value)) => Some(KeyValue {
            key: key.to_owned(),
            value,
            create_revision,
            mod_revision: id,
        }),
        _ => None,
    }
}

struct NewRow<'a> {
    id: Revision,
    key: &'a str,
    created: bool,
    deleted: bool,
    create_revision: Revision,
    prev_revision: Revision,
    value: &'a [u8],
    old_value: Option<&'a [u8]>,
}

fn insert(tx: &rusqlite::Transaction<'_>, row: NewRow<'_>) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO log (id, key, created, deleted, create_revision, prev_revision, value, old_value)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        row.id,
        row.key.as_bytes(),
        row.created,
        row.deleted,
        row.create_revision,
        row.prev_revision,
        row.value,
        row.old_value,
    ])?;
    Ok(())
}

fn meta(conn: &Connection, name: &str) -> rusqlite::Result<Revision> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
}

/// Applies a batch in one transaction. The outer error fails the whole batch; the inner results
/// are the per-request answers (a request may fail on its own, e.g. AlreadyExists).
#[allow(clippy::type_complexity)]
fn apply_batch(
    conn: &mut Connection,
    batch: &[Request],
) -> rusqlite::Result<(Vec<Result<Reply>>, Vec<Event>)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let start = meta(&tx, "revision")?;
    let mut revision = start;
    let mut results = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    for req in batch {
        results.push(apply_op(&tx, &mut revision, &req.op, &mut events)?);
    }
    if revision != start {
        tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'revision'")?
            .execute([revision])?;
    }
    tx.commit()?;
    Ok((results, events))
}

fn apply_op(
    tx: &rusqlite::Transaction<'_>,
    revision: &mut Revision,
    op: &Op,
    events: &mut Vec<Event>,
) -> rusqlite::Result<Result<Reply>> {
    match op {
        Op::Create { key, value } => {
            let row = latest_row(tx, key)?;
            let prev_revision = row.as_ref().map_or(0, |r| r.0);
            if live_kv(key, row).is_some() {
                return Ok(Err(Error::AlreadyExists(key.clone())));
            }
            let id = *revision + 1;
            insert(
                tx,
                NewRow {
                    id,
                    key,
                    created: true,
                    deleted: false,
                    create_revision: id,
                    prev_revision,
                    value,
                    old_value: None,
                },
            )?;
            *revision = id;
            events.push(Event::Put {
                kv: KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: id,
                    mod_revision: id,
                },
                prev: None,
            });
            Ok(Ok(Reply::Revision(id)))
        }
        Op::Update {
            key,
            value,
            expected,
        } => {
            let Some(prev) = live_kv(key, latest_row(tx, key)?) else {
                return Ok(Err(Error::NotFound(key.clone())));
            };
            if prev.mod_revision != *expected {
                return Ok(Err(Error::Conflict {
                    key: key.clone(),
                    expected: *expected,
                    current: prev.mod_revision,
                }));
            }
            let id = *revision + 1;
            insert(
                tx,
                NewRow {
                    id,
                    key,
                    created: false,
                    deleted: false,
                    create_revision: prev.create_revision,
                    prev_revision: prev.mod_revision,
                    value,
                    old_value: Some(&prev.value),
                },
            )?;
            *revision = id;
            events.push(Event::Put {
                kv: KeyValue {
                    key: key.clone(),
                    value: value.clone(),
                    create_revision: prev.create_revision,
                    mod_revision: id,
                },
                prev: Some(prev),
            });
            Ok(Ok(Reply::Revision(id)))
        }
        Op::Delete { key, expected } => {
            let Some(prev) = live_kv(key, latest_row(tx, key)?) else {
                return Ok(Err(Error::NotFound(key.clone())));
            };
            if let Some(expected) = *expected
                && prev.mod_revision != expected
            {
                return Ok(Err(Error::Conflict {
                    key: key.clone(),
                    expected,
                    current: prev.mod_revision,
                }));
            }
            let id = *revision + 1;
            insert(
                tx,
                NewRow {
                    id,
                    key,
                    created: false,
                    deleted: true,
                    create_revision: prev.create_revision,
                    prev_revision: prev.mod_revision,
                    value: &prev.value,
                    old_value: None,
                },
            )?;
            *revision = id;
            events.push(Event::Delete {
                prev: KeyValue {
                    mod_revision: id,
                    ..prev.clone()
                },
            });
            Ok(Ok(Reply::Deleted(id, prev)))
        }
        Op::Compact(target) => {
            let target = *target;
            if target > *revision {
                return Ok(Err(Error::FutureRevision {
                    requested: target,
                    current: *revision,
                }));
            }
            let old = meta(tx, "compacted")?;
            if target <= old {
                return Ok(Ok(Reply::Compacted));
            }
            // A row is useless at and after the target once the key's next row (the one whose
            // `prev_revision` points at it) is at or before the target. Rows whose next row is at
            // or before `old` went at the previous compaction, so only rows in (old, target]
            // need looking at.
            tx.prepare_cached(
                "DELETE FROM log WHERE id IN (
                     SELECT prev_revision FROM log WHERE id > ?1 AND id <= ?2 AND prev_revision > 0)",
            )?
            .execute([old, target])?;
            // A delete older than the target: the key is absent at the target either way.
            tx.prepare_cached("DELETE FROM log WHERE id >= ?1 AND id < ?2 AND deleted = 1")?
                .execute([old, target])?;
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'compacted'")?
                .execute([target])?;
            Ok(Ok(Reply::Compacted))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Readers

struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA query_only=ON;")?;
        Ok(conn)
    }

    /// Runs `f` in a read transaction (one consistent snapshot) on the blocking pool.
    async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>, Snapshot) -> Result<T> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let idle = me.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = match idle {
                Some(c) => c,
                None => me.open().map_err(backend)?,
            };
            let result = (|| {
                let tx = conn.transaction().map_err(backend)?;
                let snapshot = Snapshot {
                    revision: meta(&tx, "revision").map_err(backend)?,
                    compacted: meta(&tx, "compacted").map_err(backend)?,
                };
                let out = f(&tx, snapshot)?;
                tx.rollback().map_err(backend)?;
                Ok(out)
            })();
            let mut idle = me.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
            result
        })
        .await
        .map_err(backend)?
    }
}

/// The revisions seen by a read transaction.
#[derive(Clone, Copy)]
struct Snapshot {
    revision: Revision,
    compacted: Revision,
}

fn key_string(bytes: Vec<u8>) -> rusqlite::Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// The SQL condition selecting keys under `prefix` and after `start_after`, with its parameters.
fn range_condition(prefix: &str, start_after: Option<&str>) -> (String, Vec<Vec<u8>>) {
    let mut sql = String::from("key >= ?");
    let mut args = vec![prefix.as_bytes().to_vec()];
    if let Some(end) = prefix_end(prefix.as_bytes()) {
        sql.push_str(" AND key < ?");
        args.push(end);
    }
    if let Some(after) = start_after {
        sql.push_str(" AND key > ?");
        args.push(after.as_bytes().to_vec());
    }
    (sql, args)
}

/// Decodes a `log` row into the event it records.
fn row_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let id: Revision = r.get("id")?;
    let key = key_string(r.get("key")?)?;
    let created: bool = r.get("created")?;
    let deleted: bool = r.get("deleted")?;
    let create_revision: Revision = r.get("create_revision")?;
    let prev_revision: Revision = r.get("prev_revision")?;
    let value: Vec<u8> = r.get("value")?;
    let old_value: Option<Vec<u8>> = r.get("old_value")?;
    Ok(if deleted {
        Event::Delete {
            prev: KeyValue {
                key,
                value,
                create_revision,
                mod_revision: id,
            },
        }
    } else {
        let prev = if created {
            None
        } else {
            Some(KeyValue {
                key: key.clone(),
                value: old_value.unwrap_or_default(),
                create_revision,
                mod_revision: prev_revision,
            })
        };
        Event::Put {
            kv: KeyValue {
                key,
                value,
                create_revision,
                mod_revision: id,
            },
            prev,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Backend

#[async_trait::async_trait]
impl Backend for Sqlite {
    async fn current_revision(&self) -> Result<Revision> {
        self.readers.read(|_, snap| Ok(snap.revision)).await
    }

    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Revision, Option<KeyValue>)> {
        let key = key.to_owned();
        self.readers
            .read(move |tx, snap| {
                let at = check_read_revision(revision, snap.revision, snap.compacted)?;
                let row = tx
                    .prepare_cached(
                        "SELECT id, create_revision, deleted, value FROM log
                         WHERE key = ?1 AND id <= ?2 ORDER BY id DESC LIMIT 1",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![key.as_bytes(), at], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                        })
                        .optional()
                    })
                    .map_err(backend)?;
                Ok((at, live_kv(&key, row)))
            })
            .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListPage> {
        let (cond, args) = range_condition(prefix, start_after);
        let sql = format!(
            // Walks the (key, id) index in key order, so a limited page stops early.
            "SELECT l.key, l.id, l.create_revision, l.value FROM log AS l
             WHERE {cond}
               AND l.id = (SELECT max(n.id) FROM log AS n WHERE n.key = l.key AND n.id <= ?)
               AND l.deleted = 0
             ORDER BY l.key LIMIT ?"
        );
        let fetch = if limit == 0 {
            -1
        } else {
            i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1
        };
        self.readers
            .read(move |tx, snap| {
                let at = check_read_revision(revision, snap.revision, snap.compacted)?;
                let mut params: Vec<&dyn rusqlite::ToSql> =
                    args.iter().map(|a| a as &dyn rusqlite::ToSql).collect();
                params.push(&at);
                params.push(&fetch);
                let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
                let mut items = stmt
                    .query_map(params.as_slice(), |r| {
                        Ok(KeyValue {
                            key: key_string(r.get(0)?)?,
                            mod_revision: r.get(1)?,
                            create_revision: r.get(2)?,
                            value: r.get(3)?,
                        })
                    })
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(backend)?;
                let more = limit > 0 && items.len() > limit;
                items.truncate(if limit == 0 { items.len() } else { limit });
                Ok(ListPage {
                    revision: at,
                    items,
                    more,
                })
            })
            .await
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        let (cond, args) = range_condition(prefix, None);
        let sql = format!(
            "SELECT count(*) FROM log AS l
             JOIN (SELECT max(id) AS m FROM log WHERE {cond} GROUP BY key) AS g ON l.id = g.m
             WHERE l.deleted = 0"
        );
        self.readers
            .read(move |tx, _| {
                tx.prepare_cached(&sql)
                    .and_then(|mut s| {
                        s.query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0))
                    })
                    .map_err(backend)
            })
            .await
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        match self
            .write(Op::Create {
                key: key.to_owned(),
                value,
            })
            .await?
        {
            Reply::Revision(r) => Ok(r),
            _ => Err(unexpected_reply()),
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        match self
            .write(Op::Update {
                key: key.to_owned(),
                value,
                expected,
            })
            .await?
        {
            Reply::Revision(r) => Ok(r),
            _ => Err(unexpected_reply()),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        match self
            .write(Op::Delete {
                key: key.to_owned(),
                expected,
            })
            .await?
        {
            Reply::Deleted(r, kv) => Ok((r, kv)),
            _ => Err(unexpected_reply()),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        // Subscribe before reading the snapshot: any event newer than the snapshot is committed
        // after it, so it is broadcast after this subscription.
        let rx = self.events.subscribe();
        let snap = self.readers.read(|_, snap| Ok(snap)).await?;
        check_watch_revision(after, snap.compacted)?;
        let upto = snap.revision.max(after);
        let state = WatchState {
            readers: self.readers.clone(),
            prefix: prefix.to_owned(),
            cursor: after,
            upto,
            pending: VecDeque::new(),
            live: None,
            rx: Some(rx),
        };
        Ok(Box::pin(stream::unfold(Some(state), watch_step)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        // In steps, each its own transaction, so writes go on between them.
        let snap = self.readers.read(|_, snap| Ok(snap)).await?;
        if revision > snap.revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: snap.revision,
            });
        }
        let mut step = snap.compacted;
        loop {
            step = (step + COMPACT_STEP).min(revision);
            match self.write(Op::Compact(step)).await? {
                Reply::Compacted => {}
                _ => return Err(unexpected_reply()),
            }
            if step >= revision {
                return Ok(());
            }
        }
    }
}

/// The writer answered with a reply of the wrong kind (a bug).
#[derive(Debug, thiserror::Error)]
#[error("sqlite writer sent an unexpected reply")]
struct UnexpectedReply;

fn unexpected_reply() -> Error {
    backend(UnexpectedReply)
}

type LiveStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Event>> + Send>>;

struct WatchState {
    readers: Arc<Readers>,
    prefix: String,
    /// Every event up to this revision has been read from the log.
    cursor: Revision,
    /// The catch-up reads the log up to here; live events start after it.
    upto: Revision,
    pending: VecDeque<Event>,
    live: Option<LiveStream>,
    rx: Option<broadcast::Receiver<Arc<[Event]>>>,
}

async fn watch_step(state: Option<WatchState>) -> Option<(Result<Event>, Option<WatchState>)> {
    use futures::StreamExt;
    let mut st = state?;
    loop {
        if let Some(event) = st.pending.pop_front() {
            return Some((Ok(event), Some(st)));
        }
        if let Some(live) = st.live.as_mut() {
            let item = live.next().await?;
            let done = item.is_err();
            return Some((item, if done { None } else { Some(st) }));
        }
        if st.cursor >= st.upto {
            let rx = st.rx.take()?;
            st.live = Some(Box::pin(live_stream(rx, st.prefix.clone(), st.upto)));
            continue;
        }
        let (prefix, cursor, upto) = (st.prefix.clone(), st.cursor, st.upto);
        let page = st
            .readers
            .read(move |tx, snap| {
                // Rows in (cursor, upto] may have been compacted since the watch started.
                check_watch_revision(cursor, snap.compacted)?;
                let (cond, args) = range_condition(&prefix, None);
                let sql = format!(
                    "SELECT * FROM log WHERE id > ? AND id <= ? AND {cond} ORDER BY id LIMIT ?"
                );
                let mut params: Vec<&dyn rusqlite::ToSql> = vec![&cursor, &upto];
                params.extend(args.iter().map(|a| a as &dyn rusqlite::ToSql));
                params.push(&CATCH_UP_PAGE);
                let mut stmt = tx.prepare_cached(&sql).map_err(backend)?;
                let events = stmt
                    .query_map(params.as_slice(), row_event)
                    .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
                    .map_err(backend)?;
                Ok(events)
            })
            .await;
        match page {
            Ok(events) => {
                st.cursor = if events.len() < CATCH_UP_PAGE as usize {
                    upto
                } else {
                    events.last().map_or(upto, Event::revision)
                };
                st.pending.extend(events);
            }
            Err(e) => return Some((Err(e), None)),
        }
    }
}
