//! The storage seam: a key-value `Backend` with etcd semantics (one global revision, reads at a
//! revision, writes guarded by the expected revision, watch from a revision, compaction), and its
//! implementations: in-memory, SQLite (the embedded default) and etcd.
//!
//! This crate knows nothing about Kubernetes objects: keys are strings, values are bytes.
//! It must not depend on the API server or on `api`.

use std::pin::Pin;

use futures::Stream;

pub mod etcd;
pub mod faulty;
pub mod memory;
pub mod sqlite;

/// A store revision. Every successful write makes the global revision grow by one.
pub type Revision = i64;

/// One stored key with the revisions that etcd keeps for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision at which the key was created (the latest creation if it was deleted and made again).
    pub create_revision: Revision,
    /// The revision of the last write to the key (for a delete event: the revision of the delete).
    pub mod_revision: Revision,
}

/// A page of keys under a prefix, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// The revision the page was read at (the current revision when none was asked for).
    pub revision: Revision,
    /// Keys in ascending byte order.
    pub items: Vec<KeyValue>,
    /// More keys follow the last one of `items`.
    pub more: bool,
}

/// A change seen by a watch. Events come in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A create (`prev` is None) or an update (`prev` is the value before).
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// A delete. `prev` is the last value; its `mod_revision` is replaced by the delete's revision.
    Delete { prev: KeyValue },
}

impl Event {
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { prev } => prev.mod_revision,
        }
    }
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev } => &prev.key,
        }
    }
}

/// A stream of events; it ends with an `Err` when the watch cannot go on (e.g. compaction).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, Error>> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key {0} not found")]
    NotFound(String),
    #[error("key {0} already exists")]
    AlreadyExists(String),
    /// The key's mod revision was not the expected one.
    #[error("key {key} was modified (expected revision {expected}, current {current})")]
    Conflict {
        key: String,
        expected: Revision,
        current: Revision,
    },
    /// The revision asked for has been compacted away.
    #[error("revision {requested} has been compacted (oldest available {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The revision asked for is newer than the store's current revision.
    #[error("revision {requested} is in the future (current {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    #[error("storage backend failed")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The storage interface, modelled on kine's: a dozen methods and nothing more.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The current (latest) revision.
    async fn current_revision(&self) -> Result<Revision>;

    /// Read one key, at `revision` or at the latest when None.
    /// Returns the revision read at and the value if the key existed then.
    async fn get(
        &self,
        key: &str,
        revision: Option<Revision>,
    ) -> Result<(Revision, Option<KeyValue>)>;

    /// Read keys starting with `prefix`, in key order, strictly after `start_after` when given,
    /// at most `limit` of them (0 = no limit), at `revision` or the latest when None.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<ListPage>;

    /// Count keys under `prefix` at the latest revision.
    async fn count(&self, prefix: &str) -> Result<i64>;

    /// Create `key`; fails with AlreadyExists if it exists. Returns the new revision.
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Revision>;

    /// Replace `key` if its mod revision is `expected`; NotFound if missing, Conflict otherwise.
    /// Returns the new revision.
    async fn update(&self, key: &str, value: Vec<u8>, expected: Revision) -> Result<Revision>;

    /// Delete `key`, guarded by `expected` when given. Returns the delete's revision and the last value.
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<(Revision, KeyValue)>;

    /// Watch keys under `prefix`, delivering every event with revision > `after`, in order,
    /// then new events as they happen. Compacted if `after` is below the compaction revision
    /// (a delete made exactly at the compaction revision may be forgotten, so it cannot be replayed).
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;

    /// Forget history at and before `revision` (reads and watches older than it fail with Compacted).
    async fn compact(&self, revision: Revision) -> Result<()>;
}
