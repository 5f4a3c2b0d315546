//! The watch cache: one backend watch over every key, each event decoded once and shared by all
//! watchers (with its JSON line pre-rendered for the common case), plus a window of recent events
//! so that watches starting from a recent resourceVersion are served from memory. Watches from
//! older revisions fall back to a watch on the backend.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use serde_json::{Value, json};
use store::{Backend, Revision};
use tokio::sync::broadcast;

/// One store event, decoded.
#[derive(Debug)]
pub struct CachedEvent {
    pub key: String,
    pub revision: Revision,
    /// The object after the change (for a delete: the last state, stamped with the delete's revision).
    pub obj: Value,
    /// The object before the change (None for a create).
    pub prev: Option<Value>,
    pub deleted: bool,
    line: OnceLock<Bytes>,
}

impl CachedEvent {
    /// The plain watch line (`{"type":..,"object":..}\n`) for watchers without selectors,
    /// rendered once.
    /// The event type a watcher without selectors sees.
    pub fn plain_type(&self) -> &'static str {
        if self.deleted {
            "DELETED"
        } else if self.prev.is_none() {
            "ADDED"
        } else {
            "MODIFIED"
        }
    }

    pub fn plain_line(&self) -> Bytes {
        self.line
            .get_or_init(|| {
                let ty = self.plain_type();
                let mut v = serde_json::to_vec(&json!({"type": ty, "object": self.obj}))
                    .unwrap_or_default();
                v.push(b'\n');
                Bytes::from(v)
            })
            .clone()
    }
}

struct Inner {
    buf: VecDeque<Arc<CachedEvent>>,
    /// Every event with revision > `complete_after` is in `buf`.
    complete_after: Revision,
    tx: broadcast::Sender<Arc<CachedEvent>>,
}

/// The shared cache.
pub struct WatchCache {
    inner: Mutex<Inner>,
    capacity: usize,
}

/// A subscription: the backlog after the asked revision, then live events.
pub struct Subscription {
    pub backlog: Vec<Arc<CachedEvent>>,
    pub live: broadcast::Receiver<Arc<CachedEvent>>,
}

fn decode(bytes: &[u8], revision: Revision) -> Option<Value> {
    let mut v: Value = serde_json::from_slice(bytes).ok()?;
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
    Some(v)
}

impl WatchCache {
    /// Start caching from the backend's current revision.
    pub async fn start(backend: Arc<dyn Backend>, capacity: usize) -> store::Result<Arc<Self>> {
        let rev = backend.current_revision().await?;
        let (tx, _) = broadcast::channel(capacity.max(16));
        let cache = Arc::new(Self {
            inner: Mutex::new(Inner {
                buf: VecDeque::new(),
                complete_after: rev,
                tx,
            }),
            capacity,
        });
        let pump = cache.clone();
        tokio::spawn(async move { pump.pump(backend, rev).await });
        Ok(cache)
    }

    async fn pump(self: Arc<Self>, backend: Arc<dyn Backend>, mut after: Revision) {
        use futures::StreamExt;
        loop {
            let mut stream = match backend.watch("/registry/", after).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "watch cache cannot watch the store; restarting");
                    self.reset(&backend).await;
                    after = self.lock().complete_after;
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            while let Some(ev) = stream.next().await {
                match ev {
                    Ok(ev) => {
                        after = ev.revision();
                        self.push(ev);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "watch cache stream ended; resuming");
                        break;
                    }
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forget everything (events were missed): current watchers end and re-watch.
    async fn reset(&self, backend: &Arc<dyn Backend>) {
        let rev = backend.current_revision().await.unwrap_or(0);
        let mut inner = self.lock();
        inner.buf.clear();
        inner.complete_after = rev;
        let (tx, _) = broadcast::channel(self.capacity.max(16));
        inner.tx = tx;
    }

    fn push(&self, ev: store::Event) {
        let Some(cached) = CachedEvent::from_store(ev) else {
            return;
        };
        let cached = Arc::new(cached);
        let mut inner = self.lock();
        inner.buf.push_back(cached.clone());
        while inner.buf.len() > self.capacity {
            if let Some(old) = inner.buf.pop_front() {
                inner.complete_after = old.revision;
            }
        }
        let _ = inner.tx.send(cached);
    }

    /// Subscribe to events after `after`; None when the cache no longer holds them all.
    pub fn subscribe(&self, after: Revision) -> Option<Subscription> {
        let inner = self.lock();
        if after < inner.complete_after {
            return None;
        }
        let backlog = inner
            .buf
            .iter()
            .filter(|e| e.revision > after)
            .cloned()
            .collect();
        Some(Subscription {
            backlog,
            live: inner.tx.subscribe(),
        })
    }
}

impl CachedEvent {
    /// Decode a store event (None if the stored value is not JSON).
    pub fn from_store(ev: store::Event) -> Option<Self> {
        Some(match ev {
            store::Event::Put { kv, prev } => {
                let obj = decode(&kv.value, kv.mod_revision)?;
                let prev = prev.and_then(|p| decode(&p.value, p.mod_revision));
                CachedEvent {
                    key: kv.key,
                    revision: kv.mod_revision,
                    obj,
                    prev,
                    deleted: false,
                    line: OnceLock::new(),
                }
            }
            store::Event::Delete { prev } => {
                let obj = decode(&prev.value, prev.mod_revision)?;
                CachedEvent {
                    key: prev.key,
                    revision: prev.mod_revision,
                    obj,
                    prev: None,
                    deleted: true,
                    line: OnceLock::new(),
                }
            }
        })
    }
}
