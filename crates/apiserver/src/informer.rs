//! Informer-style caches for admission reads: every key under one prefix, decoded, kept current
//! by a list and then a watch of the store from the list's revision (a relist after any watch
//! error, e.g. compaction). kube-apiserver answers its admission reads (namespace lifecycle, ...)
//! from such caches instead of the store.
//!
//! Consistency:
//! - This server's own writes are applied to the cache as soon as the store has acknowledged them
//!   ([`Informer::observe`], write-through), so the very next request sees them. Every entry
//!   carries the revision of its last write and is only ever replaced by a newer one, so the
//!   watch's (later) copy of the same write and write-throughs racing with the watch commute.
//!   Deletes leave a tombstone until the watch has passed their revision.
//! - Until the first list has been read, and from a watch error to the end of the relist, the
//!   cache is not synced: readers then read the store themselves (`Lookup::NotSynced`, `None`).
//! - Writes by other servers show up when the watch delivers them (milliseconds).
//!
//! The cache starts lazily on the first read (in the reader's Tokio runtime); the task stops when
//! the `Informer` is dropped, and a cache whose task died (runtime shut down) starts again on the
//! next read.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use store::{Backend, Revision};

/// Turns an object (JSON API shape) into what the cache keeps; None skips it (as if absent).
pub type Decode<T> = fn(&Value) -> Option<T>;

/// The answer for one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup<T> {
    /// The cache is not synced: read the store.
    NotSynced,
    /// Not in the cache (not seen yet, deleted, or not decodable).
    Missing,
    Found(T),
}

struct Entry<T> {
    /// Revision of the last write of the key that the cache has seen.
    revision: Revision,
    /// None: deleted (a tombstone) or not decodable.
    value: Option<T>,
}

struct State<T> {
    items: BTreeMap<String, Entry<T>>,
    /// Every watch event up to here has been applied (the list's revision after a list).
    revision: Revision,
    synced: bool,
    /// A task is running (or starting) for this cache.
    running: bool,
    tombstones: usize,
    /// The live values in key order, built on demand and dropped on every change.
    snapshot: Option<Arc<Vec<T>>>,
}

struct Shared<T> {
    prefix: String,
    decode: Decode<T>,
    state: Mutex<State<T>>,
}

/// A cache of every key under a prefix.
pub struct Informer<T> {
    shared: Arc<Shared<T>>,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl<T> Drop for Informer<T> {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.abort();
        }
    }
}

impl<T: Clone + Send + Sync + 'static> Informer<T> {
    /// A cache of the keys under `prefix` (not started yet: see [`Informer::start`]).
    pub fn new(prefix: impl Into<String>, decode: Decode<T>) -> Self {
        Self {
            shared: Arc::new(Shared {
                prefix: prefix.into(),
                decode,
                state: Mutex::new(State {
                    items: BTreeMap::new(),
                    revision: 0,
                    synced: false,
                    running: false,
                    tombstones: 0,
                    snapshot: None,
                }),
            }),
            task: Mutex::new(None),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Start the list-and-watch task unless it runs (needs a Tokio runtime; without one, nothing).
    pub fn start(&self, backend: &Arc<dyn Backend>) {
        {
            let mut st = self.shared.lock();
            if st.running {
                return;
            }
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            st.running = true;
            let shared = self.shared.clone();
            let backend = backend.clone();
            let handle = rt.spawn(async move {
                let guard = Stopped(shared.clone());
                shared.run(backend).await;
                drop(guard);
            });
            drop(st);
            let old = self
                .task
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .replace(handle.abort_handle());
            if let Some(old) = old {
                old.abort();
            }
        }
    }

    /// Whether the cache answers (the list was read and the watch runs).
    pub fn synced(&self) -> bool {
        self.shared.lock().synced
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Lookup<T> {
        let st = self.shared.lock();
        if !st.synced {
            return Lookup::NotSynced;
        }
        match st.items.get(key).and_then(|e| e.value.as_ref()) {
            Some(v) => Lookup::Found(v.clone()),
            None => Lookup::Missing,
        }
    }

    /// Every value in key order; None when not synced.
    pub fn list(&self) -> Option<Arc<Vec<T>>> {
        let mut st = self.shared.lock();
        if !st.synced {
            return None;
        }
        if let Some(s) = &st.snapshot {
            return Some(s.clone());
        }
        let s: Arc<Vec<T>> = Arc::new(st.items.values().filter_map(|e| e.value.clone()).collect());
        st.snapshot = Some(s.clone());
        Some(s)
    }

    /// Write-through: the store acknowledged a write of `key` at `revision` (`obj` None: a
    /// delete). Keys outside the prefix are ignored.
    pub fn observe(&self, key: &str, revision: Revision, obj: Option<&Value>) {
        if !key.starts_with(self.shared.prefix.as_str()) {
            return;
        }
        let value = obj.and_then(self.shared.decode);
        let mut st = self.shared.lock();
        // Absent and at or below the watch's revision: the watch has applied this write and
        // whatever followed it already.
        if !st.items.contains_key(key) && revision <= st.revision {
            return;
        }
        st.apply(key, revision, value);
    }
}

/// Marks the cache stopped and unsynced when its task ends (also when it is aborted or its
/// runtime shuts down).
struct Stopped<T>(Arc<Shared<T>>);

impl<T> Drop for Stopped<T> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.running = false;
        st.synced = false;
    }
}

impl<T> State<T> {
    /// Set `key` to `value` as of `revision` unless the cache has a newer write of it.
    fn apply(&mut self, key: &str, revision: Revision, value: Option<T>) {
        match self.items.get_mut(key) {
            Some(e) if e.revision >= revision => return,
            Some(e) => {
                if e.value.is_none() {
                    self.tombstones -= 1;
                }
                e.revision = revision;
                e.value = value;
            }
            None => {
                self.items
                    .insert(key.to_string(), Entry { revision, value });
            }
        }
        if let Some(e) = self.items.get(key)
            && e.value.is_none()
        {
            self.tombstones += 1;
        }
        self.snapshot = None;
    }

    /// The watch has applied everything up to `revision`: tombstones at or below it can go.
    fn advance(&mut self, revision: Revision) {
        self.revision = self.revision.max(revision);
        if self.tombstones > 0 {
            let upto = self.revision;
            self.items
                .retain(|_, e| e.value.is_some() || e.revision > upto);
            self.tombstones = self.items.values().filter(|e| e.value.is_none()).count();
        }
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T: Clone + Send + Sync + 'static> Shared<T> {
    fn decode_bytes(&self, bytes: &[u8]) -> Option<T> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        (self.decode)(&v)
    }

    /// List, then watch from the list's revision; on any error, mark unsynced and start over.
    async fn run(&self, backend: Arc<dyn Backend>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let from = match self.relist(&backend).await {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "admission cache cannot list the store; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let mut stream = match backend.watch(&self.prefix, from).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "admission cache cannot watch the store; relisting");
                    self.lock().synced = false;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            self.lock().synced = true;
            backoff = Duration::from_millis(50);
            loop {
                match stream.next().await {
                    Some(Ok(ev)) => self.apply_event(ev),
                    Some(Err(e)) => {
                        tracing::warn!(prefix = %self.prefix, error = %e, "admission cache watch failed; relisting");
                        break;
                    }
                    None => {
                        tracing::debug!(prefix = %self.prefix, "admission cache watch ended; relisting");
                        break;
                    }
                }
            }
            self.lock().synced = false;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Read every key and install them; returns the list's revision. Entries written after the
    /// list (write-through) are kept.
    async fn relist(&self, backend: &Arc<dyn Backend>) -> store::Result<Revision> {
        let mut items = BTreeMap::new();
        let mut start_after: Option<String> = None;
        let mut revision = None;
        loop {
            let page = backend
                .list(&self.prefix, start_after.as_deref(), 500, revision)
                .await?;
            revision = Some(page.revision);
            start_after = page.items.last().map(|kv| kv.key.clone());
            for kv in page.items {
                let value = self.decode_bytes(&kv.value);
                items.insert(
                    kv.key,
                    Entry {
                        revision: kv.mod_revision,
                        value,
                    },
                );
            }
            if !page.more || start_after.is_none() {
                break;
            }
        }
        let revision = revision.unwrap_or(0);
        let mut st = self.lock();
        let old = std::mem::take(&mut st.items);
        for (k, e) in old {
            if e.revision > revision {
                items.insert(k, e);
            }
        }
        st.tombstones = items.values().filter(|e| e.value.is_none()).count();
        st.items = items;
        st.revision = revision;
        st.snapshot = None;
        Ok(revision)
    }

    fn apply_event(&self, ev: store::Event) {
        let revision = ev.revision();
        let mut st = self.lock();
        match ev {
            store::Event::Put { kv, .. } => {
                let value = self.decode_bytes(&kv.value);
                st.apply(&kv.key, revision, value);
            }
            store::Event::Delete { prev } => st.apply(&prev.key, revision, None),
        }
        st.advance(revision);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn name(v: &Value) -> Option<String> {
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn obj(n: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"metadata": {"name": n}})).unwrap_or_default()
    }

    async fn synced<T: Clone + Send + Sync + 'static>(inf: &Informer<T>) {
        for _ in 0..500 {
            if inf.synced() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the cache did not sync");
    }

    async fn eventually(inf: &Informer<String>, key: &str, want: Lookup<String>) {
        for _ in 0..500 {
            if inf.get(key) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(inf.get(key), want, "{key}");
    }

    #[tokio::test]
    async fn follows_the_store_and_other_writers() {
        let backend: Arc<dyn Backend> = Arc::new(store::memory::Memory::new());
        backend.create("/p/a", obj("a")).await.unwrap();
        backend.create("/q/x", obj("x")).await.unwrap();
        let inf = Informer::new("/p/", name);
        assert_eq!(inf.get("/p/a"), Lookup::NotSynced);
        assert!(inf.list().is_none());
        inf.start(&backend);
        synced(&inf).await;
        assert_eq!(inf.get("/p/a"), Lookup::Found("a".into()));
        assert_eq!(inf.get("/q/x"), Lookup::Missing);
        // Writes that bypass `observe` (another server) arrive through the watch.
        let rev = backend.create("/p/b", obj("b")).await.unwrap();
        eventually(&inf, "/p/b", Lookup::Found("b".into())).await;
        backend.update("/p/b", obj("b2"), rev).await.unwrap();
        eventually(&inf, "/p/b", Lookup::Found("b2".into())).await;
        backend.delete("/p/a", None).await.unwrap();
        eventually(&inf, "/p/a", Lookup::Missing).await;
        assert_eq!(inf.list().unwrap().as_slice(), ["b2".to_string()]);
    }

    #[tokio::test]
    async fn write_through_is_immediate_and_never_goes_back() {
        let backend: Arc<dyn Backend> = Arc::new(store::memory::Memory::new());
        let inf = Informer::new("/p/", name);
        inf.start(&backend);
        synced(&inf).await;
        let v1 = serde_json::json!({"metadata": {"name": "one"}});
        let r1 = backend.create("/p/k", obj("one")).await.unwrap();
        inf.observe("/p/k", r1, Some(&v1));
        assert_eq!(inf.get("/p/k"), Lookup::Found("one".into()));
        let (r2, _) = backend.delete("/p/k", None).await.unwrap();
        inf.observe("/p/k", r2, None);
        assert_eq!(inf.get("/p/k"), Lookup::Missing);
        // A late copy of the older write (the watch's, or a slow write-through) is ignored.
        inf.observe("/p/k", r1, Some(&v1));
        assert_eq!(inf.get("/p/k"), Lookup::Missing);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(inf.get("/p/k"), Lookup::Missing);
        assert!(inf.list().unwrap().is_empty());
        // Keys outside the prefix are not taken.
        inf.observe("/q/k", r2 + 1, Some(&v1));
        assert_eq!(inf.get("/q/k"), Lookup::Missing);
    }

    /// A memory store whose watches can be refused, and whose open watches can be cut (ending
    /// with an error, as a compacted etcd watch does).
    struct Breakable {
        inner: store::memory::Memory,
        refuse: std::sync::atomic::AtomicBool,
        cut: tokio::sync::broadcast::Sender<()>,
    }

    #[async_trait::async_trait]
    impl Backend for Breakable {
        async fn current_revision(&self) -> store::Result<Revision> {
            self.inner.current_revision().await
        }
        async fn get(
            &self,
            key: &str,
            revision: Option<Revision>,
        ) -> store::Result<(Revision, Option<store::KeyValue>)> {
            self.inner.get(key, revision).await
        }
        async fn list(
            &self,
            prefix: &str,
            start_after: Option<&str>,
            limit: usize,
            revision: Option<Revision>,
        ) -> store::Result<store::ListPage> {
            self.inner.list(prefix, start_after, limit, revision).await
        }
        async fn count(&self, prefix: &str) -> store::Result<i64> {
            self.inner.count(prefix).await
        }
        async fn create(&self, key: &str, value: Vec<u8>) -> store::Result<Revision> {
            self.inner.create(key, value).await
        }
        async fn update(
            &self,
            key: &str,
            value: Vec<u8>,
            expected: Revision,
        ) -> store::Result<Revision> {
            self.inner.update(key, value, expected).await
        }
        async fn delete(
            &self,
            key: &str,
            expected: Option<Revision>,
        ) -> store::Result<(Revision, store::KeyValue)> {
            self.inner.delete(key, expected).await
        }
        async fn watch(&self, prefix: &str, after: Revision) -> store::Result<store::WatchStream> {
            let compacted = move || store::Error::Compacted {
                requested: after,
                compacted: after + 1,
            };
            if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(compacted());
            }
            let mut cut = self.cut.subscribe();
            let end = futures::stream::once(async move {
                let _ = cut.recv().await;
                Err(compacted())
            });
            let inner = self.inner.watch(prefix, after).await?;
            Ok(Box::pin(futures::stream::select(inner, end)))
        }
        async fn compact(&self, revision: Revision) -> store::Result<()> {
            self.inner.compact(revision).await
        }
    }

    #[tokio::test]
    async fn relists_after_a_watch_error() {
        let b = Arc::new(Breakable {
            inner: store::memory::Memory::new(),
            refuse: false.into(),
            cut: tokio::sync::broadcast::channel(4).0,
        });
        let backend: Arc<dyn Backend> = b.clone();
        let inf = Informer::new("/p/", name);
        inf.start(&backend);
        synced(&inf).await;
        let rev = backend.create("/p/a", obj("a")).await.unwrap();
        eventually(&inf, "/p/a", Lookup::Found("a".into())).await;
        // The watch fails and cannot be reopened: the cache says so instead of answering.
        b.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = b.cut.send(());
        eventually(&inf, "/p/a", Lookup::NotSynced).await;
        assert!(inf.list().is_none());
        // Writes made meanwhile are read by the relist.
        backend.update("/p/a", obj("a2"), rev).await.unwrap();
        backend.create("/p/b", obj("b")).await.unwrap();
        b.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
        synced(&inf).await;
        assert_eq!(inf.get("/p/a"), Lookup::Found("a2".into()));
        assert_eq!(inf.get("/p/b"), Lookup::Found("b".into()));
        // And the new watch follows later writes.
        backend.delete("/p/b", None).await.unwrap();
        eventually(&inf, "/p/b", Lookup::Missing).await;
    }

    #[tokio::test]
    async fn restarts_after_its_runtime_ended() {
        let backend: Arc<dyn Backend> = Arc::new(store::memory::Memory::new());
        let inf = Arc::new(Informer::new("/p/", name));
        let (b, i) = (backend.clone(), inf.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                i.start(&b);
                synced(&i).await;
            });
        })
        .join()
        .unwrap();
        assert!(!inf.synced());
        inf.start(&backend);
        synced(&inf).await;
        backend.create("/p/a", obj("a")).await.unwrap();
        eventually(&inf, "/p/a", Lookup::Found("a".into())).await;
    }
}
