//! The in-memory backend: the reference semantics of [`Backend`], used by tests.
//!
//! It keeps every version of every key until compaction, so reads at an old revision and watches
//! from an old revision behave exactly like the durable backends. Nothing is persisted.
//!
//! This module also holds the few helpers the SQLite backend shares with it (prefix ranges and the
//! live half of a watch stream). It depends on nothing but tokio and futures.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{StreamExt, stream};
use tokio::sync::broadcast;

use crate::{Backend, Error, Event, KeyValue, ListPage, Result, Revision, WatchStream};

/// Default number of write batches a watcher may fall behind before its stream ends with an error.
pub const DEFAULT_WATCH_BUFFER: usize = 1024;

/// Why a watch stream ended early (carried inside [`Error::Backend`]).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The watcher did not keep up with the writes; it must watch again from its last revision.
    #[error("watcher fell behind by {0} write batches")]
    Lagged(u64),
}

/// The in-memory backend. Cheap to create; all data is lost when it is dropped.
pub struct Memory {
    state: Mutex<State>,
    events: broadcast::Sender<Arc<[Event]>>,
}

struct State {
    revision: Revision,
    compacted: Revision,
    /// Every retained version of every key, oldest first; `kv: None` marks a delete.
    keys: BTreeMap<String, Vec<Version>>,
    /// Every retained event, in revision order.
    log: VecDeque<Event>,
}

struct Version {
    revision: Revision,
    kv: Option<KeyValue>,
}

impl Default for Memory {
    fn default() -> Self {
        Self::new()
    }
}

impl Memory {
    /// An empty store at revision 1 (like a fresh etcd), with the default watch buffer.
    pub fn new() -> Self {
        Self::with_watch_buffer(DEFAULT_WATCH_BUFFER)
    }

    /// An empty store whose watchers may fall behind by at most `buffer` writes before their
    /// stream ends with [`WatchError::Lagged`].
    pub fn with_watch_buffer(buffer: usize) -> Self {
        let (events, _) = broadcast::channel(buffer.max(1));
        Memory {
            state: Mutex::new(State {
                revision: 1,
                compacted: 0,
                keys: BTreeMap::new(),
                log: VecDeque::new(),
            }),
            events,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written: every write
        // computes its result before mutating.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies one write under the lock and tells the watchers.
    fn commit(&self, st: &mut State, key: &str, kv: Option<KeyValue>, event: Event) -> Revision {
        st.revision += 1;
        let revision = st.revision;
        debug_assert_eq!(event.revision(), revision);
        st.keys
            .entry(key.to_owned())
            .or_default()
            .push(Version { revision, kv });
        st.log.push_back(event.clone());
        // No receivers is fine: nobody watches.
        let _ = self.events.send(Arc::from(vec![event]));
        revision
    }
}

impl State {
    fn latest(&self, key: &str) -> Option<&KeyValue> {
        self.keys.get(key)?.last()?.kv.as_ref()
    }

    fn at(&self, key: &str, revision: Revision) -> Option<&KeyValue> {
        let versions = self.keys.get(key)?;
        let n = versions.partition_point(|v| v.revision <= revision);
        versions.get(n.checked_sub(1)?)?.kv.as_ref()
    }

    /// The revision to read at, checked against the retained history.
    fn read_revision(&self, requested: Option<Revision>) -> Result<Revision> {
        check_read_revision(requested, self.revision, self.compacted)
    }
}

/// Resolves the revision a read asks for (`None` or `<= 0` means the latest) and checks that it
/// is neither compacted away nor in the future.
pub(crate) fn check_read_revision(
    requested: Option<Revision>,
    current: Revision,
    compacted: Revision,
) -> Result<Revision> {
    match requested {
        Some(r) if r > 0 => {
            if r > current {
                Err(Error::FutureRevision {
                    requested: r,
                    current,
                })
            } else if r < compacted {
                Err(Error::Compacted {
                    requested: r,
                    compacted,
                })
            } else {
                Ok(r)
            }
        }
        _ => Ok(current),
    }
}

/// Checks that a watch may start after `after`: only from the compaction revision on. (etcd drops
/// a delete made exactly at the compaction revision, so a watch from just before it could miss
/// that event; every backend refuses it alike.)
pub(crate) fn check_watch_revision(after: Revision, compacted: Revision) -> Result<()> {
    if after < compacted {
        Err(Error::Compacted {
            requested: after,
            compacted,
        })
    } else {
        Ok(())
    }
}

/// The first key (as bytes) that sorts after every key starting with `prefix`, or None when no
/// such key exists (empty prefix). UTF-8 never contains the byte 0xff, so incrementing the last
/// byte is enough for a string prefix.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The live half of a watch: events from the write broadcast with revision > `after` and key
/// under `prefix`. Ends with [`WatchError::Lagged`] if the receiver fell behind, and ends
/// quietly when the backend is dropped.
pub(crate) fn live_stream(
    rx: broadcast::Receiver<Arc<[Event]>>,
    prefix: String,
    after: Revision,
) -> impl futures::Stream<Item = Result<Event>> + Send + 'static {
    struct Live {
        rx: broadcast::Receiver<Arc<[Event]>>,
        prefix: String,
        after: Revision,
        pending: VecDeque<Event>,
    }
    let live = Live {
        rx,
        prefix,
        after,
        pending: VecDeque::new(),
    };
    stream::unfold(Some(live), |live| async move {
        let mut live = live?;
        loop {
            if let Some(event) = live.pending.pop_front() {
                return Some((Ok(event), Some(live)));
            }
            match live.rx.recv().await {
                Ok(batch) => {
                    let (after, prefix) = (live.after, &live.prefix);
                    live.pending.extend(
                        batch
                            .iter()
                            .filter(|e| {
                                e.revision() > after && e.key().starts_with(prefix.as_str())
                            })
                            .cloned(),
                    );
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    return Some((Err(Error::Backend(Box::new(WatchError::Lagged(n)))), None));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

#[async_trait::async_trait]
impl Backend for Memory {
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.lock().revision)
    }

    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Revision, Option<KeyValue>)> {
        let st = self.lock();
        let at = st.read_revision(revision)?;
        Ok((at, st.at(key, at).cloned()))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListPage> {
        let st = self.lock();
        let at = st.read_revision(revision)?;
        let lower = match start_after {
            Some(s) if s >= prefix => Bound::Excluded(s),
            _ => Bound::Included(prefix),
        };
        let mut items = Vec::new();
        let mut more = false;
        let range = st.keys.range::<str, _>((lower, Bound::Unbounded));
        for (key, _) in range.take_while(|(k, _)| k.starts_with(prefix)) {
            let Some(kv) = st.at(key, at) else { continue };
            if limit > 0 && items.len() == limit {
                more = true;
                break;
            }
            items.push(kv.clone());
        }
        Ok(ListPage {
            revision: at,
            items,
            more,
        })
    }

    async fn count(&self, prefix: &str) -> Result<i64> {
        let st = self.lock();
        let n = st
            .keys
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(_, v)| v.last().is_some_and(|v| v.kv.is_some()))
            .count();
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision> {
        let mut st = self.lock();
        if st.latest(key).is_some() {
            return Err(Error::AlreadyExists(key.to_owned()));
        }
        let revision = st.revision + 1;
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: revision,
            mod_revision: revision,
        };
        let event = Event::Put {
            kv: kv.clone(),
            prev: None,
        };
        Ok(self.commit(&mut st, key, Some(kv), event))
    }

    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision> {
        let mut st = self.lock();
        let Some(prev) = st.latest(key).cloned() else {
            return Err(Error::NotFound(key.to_owned()));
        };
        if prev.mod_revision != expected {
            return Err(Error::Conflict {
                key: key.to_owned(),
                expected,
                current: prev.mod_revision,
            });
        }
        let revision = st.revision + 1;
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            create_revision: prev.create_revision,
            mod_revision: revision,
        };
        let event = Event::Put {
            kv: kv.clone(),
            prev: Some(prev),
        };
        Ok(self.commit(&mut st, key, Some(kv), event))
    }

    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)> {
        let mut st = self.lock();
        let Some(prev) = st.latest(key).cloned() else {
            return Err(Error::NotFound(key.to_owned()));
        };
        if let Some(expected) = expected
            && prev.mod_revision != expected
        {
            return Err(Error::Conflict {
                key: key.to_owned(),
                expected,
                current: prev.mod_revision,
            });
        }
        let revision = st.revision + 1;
        let event = Event::Delete {
            prev: KeyValue {
                mod_revision: revision,
                ..prev.clone()
            },
        };
        let revision = self.commit(&mut st, key, None, event);
        Ok((revision, prev))
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let st = self.lock();
        check_watch_revision(after, st.compacted)?;
        // Subscribing under the lock: every write not in the catch-up is in the broadcast.
        let rx = self.events.subscribe();
        let start = st.log.partition_point(|e| e.revision() <= after);
        let catch_up: Vec<Result<Event>> = st
            .log
            .range(start..)
            .filter(|e| e.key().starts_with(prefix))
            .cloned()
            .map(Ok)
            .collect();
        let upto = st.revision.max(after);
        drop(st);
        Ok(Box::pin(stream::iter(catch_up).chain(live_stream(
            rx,
            prefix.to_owned(),
            upto,
        ))))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut st = self.lock();
        if revision > st.revision {
            return Err(Error::FutureRevision {
                requested: revision,
                current: st.revision,
            });
        }
        if revision <= st.compacted {
            return Ok(());
        }
        for versions in st.keys.values_mut() {
            let n = versions.partition_point(|v| v.revision <= revision);
            let Some(last) = n.checked_sub(1) else {
                continue;
            };
            // Keep the version visible at `revision`, unless it is a delete older than it.
            let keep_from = match &versions[last] {
                Version {
                    kv: None,
                    revision: r,
                } if *r < revision => n,
                _ => last,
            };
            versions.drain(..keep_from);
        }
        st.keys.retain(|_, v| !v.is_empty());
        while st.log.front().is_some_and(|e| e.revision() < revision) {
            st.log.pop_front();
        }
        st.compacted = revision;
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b""), None);
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    }

    #[test]
    fn read_revision_rules() {
        assert_eq!(check_read_revision(None, 10, 3).unwrap(), 10);
        assert_eq!(check_read_revision(Some(0), 10, 3).unwrap(), 10);
        assert_eq!(check_read_revision(Some(3), 10, 3).unwrap(), 3);
        assert!(matches!(
            check_read_revision(Some(2), 10, 3),
            Err(Error::Compacted {
                requested: 2,
                compacted: 3
            })
        ));
        assert!(matches!(
            check_read_revision(Some(11), 10, 3),
            Err(Error::FutureRevision {
                requested: 11,
                current: 10
            })
        ));
    }

    #[tokio::test]
    async fn slow_watcher_ends_with_lagged_error() {
        let m = Memory::with_watch_buffer(4);
        let mut w = m.watch("", 1).await.unwrap();
        for i in 0..10 {
            m.create(&format!("k{i}"), vec![]).await.unwrap();
        }
        let mut seen = Vec::new();
        let err = loop {
            match w.next().await {
                Some(Ok(e)) => seen.push(e.revision()),
                Some(Err(e)) => break e,
                None => panic!("stream ended without an error"),
            }
        };
        assert!(matches!(&err, Error::Backend(inner) if inner.to_string().contains("fell behind")));
        // Whatever was delivered before the error is a gap-free prefix.
        assert_eq!(seen, (2..2 + seen.len() as i64).collect::<Vec<_>>());
    }
}
