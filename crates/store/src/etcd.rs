//! The etcd backend: the [`Backend`] trait over the etcd v3 API (etcd-client crate).
//!
//! Keys live under a prefix, so several clusters or tests can share one etcd. Writes are etcd
//! transactions guarded by the key's `create_revision` / `mod_revision`; when the guard fails the
//! transaction reads the key instead, which tells NotFound from Conflict in one round trip.
//! etcd's revisions are used as they are (a fresh etcd is at revision 1).
//!
//! Reads cost etcd about as much CPU as writes, and the API server reads before it writes (the
//! namespace of every created object, the admission plugins' lists), so reads are kept cheap:
//! on a single-member cluster they are serializable (no consensus round; see [`ReadMode`]), and
//! equal reads at the latest revision that overlap in time share one request (see
//! `Etcd::coalesced`). Both keep every read linearizable. `etcd_bench` measures what each saves.
//!
//! [`LocalEtcd`] starts a throwaway single-member etcd server from the `etcd` binary, for tests
//! and benchmarks.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, KvClient, Txn, TxnOp,
    TxnOpResponse, WatchOptions,
};
use futures::stream;
use tokio::sync::oneshot;

use crate::memory::prefix_end;
use crate::{Backend, Error, Event, KeyValue, ListPage, Result, Revision, WatchStream};

/// Largest response accepted from etcd (a big list).
const MAX_MESSAGE: usize = 256 << 20;

/// etcd answered something this backend cannot use.
#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// A response lacked a part that etcd always sends.
    #[error("malformed etcd response: {0}")]
    Malformed(&'static str),
    /// A stored key is not UTF-8 or is outside the backend's prefix.
    #[error("etcd key is not a valid key under the prefix")]
    BadKey,
    /// etcd cancelled a watch for a reason other than compaction.
    #[error("etcd cancelled the watch: {0}")]
    WatchCancelled(String),
}

/// The etcd backend. Cloning shares the connections.
#[derive(Clone)]
pub struct Etcd {
    /// One client per connection; requests are spread over them in turn, watches use the first.
    clients: Arc<[Client]>,
    next: Arc<AtomicUsize>,
    prefix: String,
    /// Reads are served from the member's own state, without a round of consensus (see
    /// [`ReadMode`]).
    serializable: bool,
    coalesce_reads: bool,
    /// Reads at the latest revision being sent, each with the requests waiting for the next one.
    reads: Arc<Mutex<HashMap<Read, Vec<Waiter>>>>,
}

/// A read at the latest revision; equal reads that overlap in time share one etcd request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Read {
    Revision,
    Get(String),
    List {
        prefix: String,
        start_after: Option<String>,
        limit: usize,
    },
    Count(String),
}

/// Removes a coalesced read's entry (and so releases its waiters) if its task ends early.
struct ServeGuard {
    reads: Arc<Mutex<HashMap<Read, Vec<Waiter>>>>,
    read: Option<Read>,
}

impl Drop for ServeGuard {
    fn drop(&mut self) {
        if let Some(read) = self.read.take() {
            self.reads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&read);
        }
    }
}

/// The answer of a [`Read`].
#[derive(Debug, Clone)]
enum ReadValue {
    Revision(Revision),
    Get(Revision, Option<KeyValue>),
    List(ListPage),
    Count(i64),
}

/// Where a shared read's answer goes; `None` when the shared read failed (the waiter then reads
/// on its own, to get its own error).
type Waiter = oneshot::Sender<Option<ReadValue>>;

/// How [`Etcd::connect_with`] talks to etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdOptions {
    /// HTTP/2 connections to open; requests go round-robin over them (at least 1).
    pub connections: usize,
    /// When reads may skip consensus (a linearizable read in etcd waits for a ReadIndex round and
    /// for every write committed before it to be applied).
    pub reads: ReadMode,
    /// Equal reads at the latest revision that overlap in time share one etcd request (see
    /// `Etcd::coalesced`).
    pub coalesce_reads: bool,
}

/// Which reads the backend sends to etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Always linearizable reads.
    Linearizable,
    /// Serializable reads when the cluster has exactly one member at connect time (then they
    /// see every acknowledged write: etcd answers a write only once the member has applied it,
    /// and there is no other member that could be ahead); linearizable otherwise.
    SerializableIfSingleMember,
}

impl Default for EtcdOptions {
    fn default() -> Self {
        EtcdOptions {
            connections: 1,
            reads: ReadMode::SerializableIfSingleMember,
            coalesce_reads: true,
        }
    }
}

fn backend(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Backend(Box::new(e))
}

fn is_compacted(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision has been compacted"))
}

fn is_future(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.message().contains("required revision is a future revision"))
}

fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Result<Revision> {
    h.map(|h| h.revision())
        .ok_or_else(|| backend(EtcdError::Malformed("missing header")))
}

impl Etcd {
    /// Connects to etcd at `endpoints` (e.g. `http://127.0.0.1:2379`) with the default
    /// [`EtcdOptions`]; every key is stored under `prefix` (e.g. `/nodeless/`), which is stripped
    /// again on the way out.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self> {
        Self::connect_with(endpoints, prefix, EtcdOptions::default()).await
    }

    /// Connects like [`Etcd::connect`] with explicit options.
    pub async fn connect_with(
        endpoints: &[String],
        prefix: &str,
        options: EtcdOptions,
    ) -> Result<Self> {
        let connect_options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(10));
        let mut clients = Vec::new();
        for _ in 0..options.connections.max(1) {
            let client = Client::connect(endpoints, Some(connect_options.clone()))
                .await
                .map_err(backend)?;
            clients.push(client);
        }
        let serializable = match options.reads {
            ReadMode::Linearizable => false,
            ReadMode::SerializableIfSingleMember => {
                let members = clients[0]
                    .cluster_client()
                    .member_list()
                    .await
                    .map_err(backend)?;
                members.members().len() == 1
            }
        };
        Ok(Etcd {
            clients: clients.into(),
            next: Arc::new(AtomicUsize::new(0)),
            prefix: prefix.to_owned(),
            serializable,
            coalesce_reads: options.coalesce_reads,
            reads: Arc::default(),
        })
    }

    /// Reads skip consensus (single-member cluster, see [`ReadMode`]).
    pub fn serializable_reads(&self) -> bool {
        self.serializable
    }

    /// The next connection, in turn.
    fn client(&self) -> &Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    /// The connection that carries watches.
    fn watch_client(&self) -> etcd_client::WatchClient {
        self.clients[0]
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn kv(&self) -> KvClient {
        self.client()
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Options of a read at the latest revision or at `revision`.
    fn read_options(&self) -> GetOptions {
        if self.serializable {
            GetOptions::new().with_serializable()
        } else {
            GetOptions::new()
        }
    }

    fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{}", self.prefix, key).into_bytes()
    }

    fn convert(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue> {
        let key = std::str::from_utf8(kv.key())
            .ok()
            .and_then(|k| k.strip_prefix(self.prefix.as_str()))
            .ok_or_else(|| backend(EtcdError::BadKey))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// Maps an etcd error of a read at `requested`.
    async fn read_error(&self, e: etcd_client::Error, requested: Revision) -> Error {
        if is_compacted(&e) {
            let compacted = self.compacted_revision().await.unwrap_or(requested + 1);
            Error::Compacted {
                requested,
                compacted,
            }
        } else if is_future(&e) {
            match self.current_revision().await {
                Ok(current) => Error::FutureRevision { requested, current },
                Err(e) => e,
            }
        } else {
            backend(e)
        }
    }

    /// etcd does not report its compaction revision in a read error; a watch from revision 1 on a
    /// key that never exists is cancelled with it.
    async fn compacted_revision(&self) -> Result<Revision> {
        let probe = format!("{}\0compaction-probe", self.prefix);
        let opts = WatchOptions::new().with_start_revision(1);
        let mut ws = self
            .watch_client()
            .watch(probe, Some(opts))
            .await
            .map_err(backend)?;
        let wait = async {
            while let Some(resp) = ws.message().await.map_err(backend)? {
                if resp.compact_revision() > 0 {
                    return Ok(resp.compact_revision());
                }
                if resp.canceled() {
                    break;
                }
            }
            Err(backend(EtcdError::Malformed(
                "watch did not report the compaction",
            )))
        };
        tokio::time::timeout(Duration::from_secs(2), wait)
            .await
            .map_err(backend)?
    }

    /// Reads one key inside a failed transaction's else branch.
    fn else_get(&self, resp: &etcd_client::TxnResponse) -> Result<Option<KeyValue>> {
        match resp.op_responses().first() {
            Some(TxnOpResponse::Get(get)) => {
                get.kvs().first().map(|kv| self.convert(kv)).transpose()
            }
            _ => Err(backend(EtcdError::Malformed("missing get in transaction"))),
        }
    }
}

/// Reads at the latest revision are coalesced: while one read is in flight, equal reads that
/// arrive wait for the next one, which is sent when the first answers and then serves them all.
/// Each still gets an answer from a read that etcd received after the request arrived, so it sees
/// every write acknowledged before (linearizable when etcd's read is); concurrent requests for
/// the same key (every pod create reads its namespace) cost etcd one read per round trip instead
/// of one each.
impl Etcd {
    async fn coalesced(&self, read: Read) -> Result<ReadValue> {
        if !self.coalesce_reads {
            return self.read_direct(&read).await;
        }
        let (tx, rx) = oneshot::channel();
        let lead = {
            let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
            match reads.get_mut(&read) {
                Some(waiting) => {
                    waiting.push(tx);
                    None
                }
                None => {
                    reads.insert(read.clone(), Vec::new());
                    Some(tx)
                }
            }
        };
        if let Some(tx) = lead {
            // A task of its own sends the reads, so that a caller that goes away cannot leave
            // the waiters of `read` stranded.
            tokio::spawn(self.clone().serve_reads(read.clone(), vec![tx]));
        }
        match rx.await {
            Ok(Some(value)) => Ok(value),
            _ => self.read_direct(&read).await,
        }
    }

    /// Sends `read` for `batch`, then again for whoever queued meanwhile, until nobody did.
    async fn serve_reads(self, read: Read, mut batch: Vec<Waiter>) {
        // If this task is dropped midway (its runtime shuts down), the waiters must not wait
        // forever: dropping their senders makes them read on their own.
        let mut guard = ServeGuard {
            reads: self.reads.clone(),
            read: Some(read.clone()),
        };
        loop {
            let mut value = self.read_direct(&read).await.ok();
            let last = batch.pop();
            for waiter in batch {
                let _ = waiter.send(value.clone());
            }
            if let Some(waiter) = last {
                let _ = waiter.send(value.take());
            }
            let mut reads = self.reads.lock().unwrap_or_else(PoisonError::into_inner);
            let waiting = reads.get_mut(&read).map(std::mem::take).unwrap_or_default();
            if waiting.is_empty() {
                reads.remove(&read);
                guard.read = None;
                return;
            }
            batch = waiting;
        }
    }

    async fn read_direct(&self, read: &Read) -> Result<ReadValue> {
        Ok(match read {
            Read::Revision => ReadValue::Revision(self.current_revision_direct().await?),
            Read::Get(key) => {
                let (at, kv) = self.get_direct(key, None).await?;
                ReadValue::Get(at, kv)
            }
            Read::List {
                prefix,
                start_after,
                limit,
            } => ReadValue::List(
                self.list_direct(prefix, start_after.as_deref(), *limit, None)
                    .await?,
            ),
            Read::Count(prefix) => ReadValue::Count(self.count_direct(prefix).await?),
        })
    }

    async fn current_revision_direct(&self) -> Result<Revision> {
        let resp = self
            .kv()
            .get(
                self.full(""),
                Some(self.read_options().with_count_only().with_limit(1)),
            )
            .await
            .map_err(backend)?;
        header_revision(resp.header())
    }

    async fn get_direct(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Revision, Option<KeyValue>)> {
        let mut opts = self.read_options();
        if let Some(r) = revision.filter(|r| *r > 0) {
            opts = opts.with_revision(r);
        }
        let resp = match self.kv().get(self.full(key), Some(opts)).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.read_error(e, revision.unwrap_or(0)).await),
        };
        let at = match revision.filter(|r| *r > 0) {
            Some(r) => r,
            None => header_revision(resp.header())?,
        };
        let kv = resp.kvs().first().map(|kv| self.convert(kv)).transpose()?;
        Ok((at, kv))
    }

    async fn list_direct(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListPage> {
        let full_prefix = self.full(prefix);
        let end = prefix_end(&full_prefix);
        let mut start = full_prefix.clone();
        if let Some(after) = start_after {
            let mut after = self.full(after);
            after.push(0);
            start = start.max(after);
        }
        let empty = end.as_ref().is_some_and(|end| start >= *end);
        let mut opts = self
            .read_options()
            .with_range(end.unwrap_or_else(|| vec![0]));
        if let Some(r) = revision.filter(|r| *r > 0) {
            opts = opts.with_revision(r);
        }
        if empty {
            // Still read (nothing) at the revision, so its checks apply.
            opts = self.read_options().with_count_only();
            if let Some(r) = revision.filter(|r| *r > 0) {
                opts = opts.with_revision(r);
            }
            start = full_prefix;
        } else if limit > 0 {
            opts = opts.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        let resp = match self.kv().get(start, Some(opts)).await {
            Ok(resp) => resp,
            Err(e) => return Err(self.read_error(e, revision.unwrap_or(0)).await),
        };
        let at = match revision.filter(|r| *r > 0) {
            Some(r) => r,
            None => header_revision(resp.header())?,
        };
        if empty {
            return Ok(ListPage {
                revision: at,
                items: Vec::new(),
                more: false,
            });
        }
        let items = resp
            .kvs()
            .iter()
            .map(|kv| self.convert(kv))
            .collect::<Result<Vec<_>>>()?;
        Ok(ListPage {
            revision: at,
            items,
            more: resp.more(),
        })
    }

    async fn count_direct(&self, prefix: &str) -> Result<i64> {
        let resp = self
            .kv()
            .get(
                self.full(prefix),
                Some(self.read_options().with_prefix().with_count_only()),
            )
            .await
            .map_err(backend)?;
        Ok(resp.count())
    }
}

#[async_trait::async_trait]
impl Backend for Etcd {
    async fn current_revision(&self) -> Result<Revision> {
        match self.coalesced(Read::Revision).await? {
            ReadValue::Revision(r) => Ok(r),
            _ => Err(backend(EtcdError::Malformed(
                "coalesced read of another kind",
            ))),
        }
    }

    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Revision, Option<KeyValue>)> {
        if revision.is_some_and(|r| r > 0) {
            return self.get_direct(key, revision).await;
        }
        match self.coalesced(Read::Get(key.to_owned())).await? {
            ReadValue::Get(at, kv) => Ok((at, kv)),
            _ => Err(backend(EtcdError::Malformed(
                "coalesced read of another kind",
            ))),
        }
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListPage> {
        if revision.is_some_and(|r| r > 0) {
            return self.list_direct(prefix, start_after, limit, revision).await;
        }
        let read = Read::List {
            prefix: prefix.to_owned(),
            start_after: start_after.map(str::to_owned),
            limit,
        };
        match self.coalesced(read).await? {
            ReadValue::List(page) => Ok(page),
            _ => Err(backend(EtcdError::Malformed(
                "coalesced read of another kind",
            ))),
        }
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        match self.coalesced(Read::Count(prefix.to_owned())).await? {
            ReadValue::Count(n) => Ok(n),
            _ => Err(backend(EtcdError::Malformed(
                "coalesced read of another kind",
            ))),
        }
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full, value, None)]);
        let resp = self.kv().txn(txn).await.map_err(backend)?;
        if resp.succeeded() {
            header_revision(resp.header())
        } else {
            Err(Error::AlreadyExists(key.to_owned()))
        }
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        let full = self.full(key);
        let txn = Txn::new()
            .when([
                Compare::create_revision(full.clone(), CompareOp::Greater, 0),
                Compare::mod_revision(full.clone(), CompareOp::Equal, expected),
            ])
            .and_then([TxnOp::put(full.clone(), value, None)])
            .or_else([TxnOp::get(full, None)]);
        let resp = self.kv().txn(txn).await.map_err(backend)?;
        if resp.succeeded() {
            return header_revision(resp.header());
        }
        match self.else_get(&resp)? {
            None => Err(Error::NotFound(key.to_owned())),
            Some(kv) => Err(Error::Conflict {
                key: key.to_owned(),
                expected,
                current: kv.mod_revision,
            }),
        }
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let full = self.full(key);
        let mut guards = vec![Compare::create_revision(
            full.clone(),
            CompareOp::Greater,
            0,
        )];
        if let Some(expected) = expected {
            guards.push(Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected,
            ));
        }
        let txn = Txn::new()
            .when(guards)
            .and_then([TxnOp::delete(
                full.clone(),
                Some(DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let resp = self.kv().txn(txn).await.map_err(backend)?;
        if resp.succeeded() {
            let revision = header_revision(resp.header())?;
            let prev = match resp.op_responses().first() {
                Some(TxnOpResponse::Delete(d)) => d.prev_kvs().first().map(|kv| self.convert(kv)),
                _ => None,
            };
            let prev =
                prev.ok_or_else(|| backend(EtcdError::Malformed("delete without prev_kv")))??;
            return Ok((revision, prev));
        }
        match (self.else_get(&resp)?, expected) {
            (Some(kv), Some(expected)) => Err(Error::Conflict {
                key: key.to_owned(),
                expected,
                current: kv.mod_revision,
            }),
            _ => Err(Error::NotFound(key.to_owned())),
        }
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let after = after.max(0);
        let full = self.full(prefix);
        // A watch may start only from the compaction revision on (see `memory`): a read at
        // `after` fails exactly when it is older. (A read at 0 would mean "latest", hence 1.)
        let probe = after.max(1);
        if let Err(e) = self
            .kv()
            .get(
                full.clone(),
                Some(self.read_options().with_count_only().with_revision(probe)),
            )
            .await
            && !is_future(&e)
        {
            return Err(self.read_error(e, after).await);
        }
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after + 1);
        let ws = self
            .watch_client()
            .watch(full, Some(opts))
            .await
            .map_err(backend)?;
        let state = WatchState {
            etcd: self.clone(),
            ws,
            pending: std::collections::VecDeque::new(),
            requested: after,
        };
        Ok(Box::pin(stream::unfold(Some(state), watch_step)))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let opts = CompactionOptions::new().with_physical();
        match self.kv().compact(revision, Some(opts)).await {
            Ok(_) => Ok(()),
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) if is_future(&e) => Err(Error::FutureRevision {
                requested: revision,
                current: self.current_revision().await?,
            }),
            Err(e) => Err(backend(e)),
        }
    }
}

struct WatchState {
    etcd: Etcd,
    /// Owns both halves of the gRPC stream: dropping it cancels the watch.
    ws: etcd_client::WatchStream,
    pending: std::collections::VecDeque<Event>,
    requested: Revision,
}

async fn watch_step(state: Option<WatchState>) -> Option<(Result<Event>, Option<WatchState>)> {
    let mut st = state?;
    loop {
        if let Some(event) = st.pending.pop_front() {
            return Some((Ok(event), Some(st)));
        }
        let resp = match st.ws.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return None,
            Err(e) => return Some((Err(backend(e)), None)),
        };
        if resp.compact_revision() > 0 {
            let err = Error::Compacted {
                requested: st.requested,
                compacted: resp.compact_revision(),
            };
            return Some((Err(err), None));
        }
        if resp.canceled() {
            let reason = resp.cancel_reason().to_owned();
            return Some((Err(backend(EtcdError::WatchCancelled(reason))), None));
        }
        for ev in resp.events() {
            match convert_event(&st.etcd, ev) {
                Ok(event) => {
                    st.requested = event.revision();
                    st.pending.push_back(event);
                }
                Err(e) => return Some((Err(e), None)),
            }
        }
    }
}

fn convert_event(etcd: &Etcd, ev: &etcd_client::Event) -> Result<Event> {
    let kv = ev
        .kv()
        .ok_or_else(|| backend(EtcdError::Malformed("watch event without kv")))?;
    let prev = ev.prev_kv().map(|kv| etcd.convert(kv)).transpose()?;
    match ev.event_type() {
        etcd_client::EventType::Put => Ok(Event::Put {
            kv: etcd.convert(kv)?,
            prev,
        }),
        etcd_client::EventType::Delete => {
            let prev =
                prev.ok_or_else(|| backend(EtcdError::Malformed("delete event without prev_kv")))?;
            Ok(Event::Delete {
                prev: KeyValue {
                    mod_revision: kv.mod_revision(),
                    ..prev
                },
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A throwaway etcd server

/// Starting a local etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalEtcdError {
    /// No `etcd` binary on PATH (install the Debian package `etcd-server`) nor in `$ETCD_BIN`.
    #[error("etcd binary not found (apt-get install etcd-server, or set ETCD_BIN)")]
    NotInstalled,
    /// The process could not be started.
    #[error("could not start etcd")]
    Spawn(#[source] std::io::Error),
    /// etcd did not answer in time; its log is in the data directory.
    #[error("etcd did not become ready (log: {0})")]
    NotReady(PathBuf),
}

/// A single-member etcd server on random loopback ports with its data in a given directory.
/// The process is killed (SIGKILL) when this is dropped.
pub struct LocalEtcd {
    child: Child,
    endpoint: String,
}

impl LocalEtcd {
    /// The etcd binary: `$ETCD_BIN` when set (None if that file does not exist), else `etcd` on
    /// PATH.
    pub fn binary() -> Option<PathBuf> {
        if let Some(bin) = std::env::var_os("ETCD_BIN") {
            let bin = PathBuf::from(bin);
            return bin.is_file().then_some(bin);
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("etcd"))
            .find(|p| p.is_file())
    }

    /// Starts etcd with its data (and its log, `etcd.log`) in `data_dir`, and waits until it
    /// answers.
    pub async fn start(data_dir: &Path) -> Result<Self, LocalEtcdError> {
        Self::start_with(data_dir, &[]).await
    }

    /// Starts etcd like [`LocalEtcd::start`] with extra command-line flags (e.g.
    /// `--backend-batch-interval=...`, for benchmarks).
    pub async fn start_with(
        data_dir: &Path,
        extra_args: &[String],
    ) -> Result<Self, LocalEtcdError> {
        let bin = Self::binary().ok_or(LocalEtcdError::NotInstalled)?;
        let log_path = data_dir.join("etcd.log");
        // Ports are picked by binding port 0 and releasing it: another process may take one in
        // between, so retry a few times.
        for _attempt in 0..3 {
            let (client_port, peer_port) = (free_port()?, free_port()?);
            let client = format!("http://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let log = std::fs::File::create(&log_path).map_err(LocalEtcdError::Spawn)?;
            let log2 = log.try_clone().map_err(LocalEtcdError::Spawn)?;
            let child = Command::new(&bin)
                .arg("--name=test")
                .arg(format!("--data-dir={}", data_dir.join("data").display()))
                .arg(format!("--listen-client-urls={client}"))
                .arg(format!("--advertise-client-urls={client}"))
                .arg(format!("--listen-peer-urls={peer}"))
                .arg(format!("--initial-advertise-peer-urls={peer}"))
                .arg(format!("--initial-cluster=test={peer}"))
                .arg("--log-level=warn")
                .args(extra_args)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2)
                .spawn()
                .map_err(LocalEtcdError::Spawn)?;
            let mut etcd = LocalEtcd {
                child,
                endpoint: client,
            };
            if etcd.wait_ready().await {
                return Ok(etcd);
            }
            // Dropping `etcd` kills the process; try other ports.
        }
        Err(LocalEtcdError::NotReady(log_path))
    }

    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return false;
            }
            let opts = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2));
            if let Ok(mut client) = Client::connect([self.endpoint.as_str()], Some(opts)).await
                && client.get("health-probe", None).await.is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// The etcd process id (to read its CPU time or profile it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16, LocalEtcdError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(LocalEtcdError::Spawn)?;
    Ok(listener.local_addr().map_err(LocalEtcdError::Spawn)?.port())
}
