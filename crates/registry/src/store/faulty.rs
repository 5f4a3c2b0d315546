//! [`FaultyStore`]: wraps any [`BlobStore`] and fails chosen operations, for tests of what a failure
//! leaves behind (neon's `simulate_failures` idea).

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures::StreamExt;

use super::{BlobInfo, BlobStore, ByteStream, StoreError, UploadInfo};
use crate::digest::Digest;

/// The operations a fault can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Stat,
    Read,
    Put,
    Delete,
    List,
    UploadCreate,
    UploadAppend,
    UploadCommit,
    UploadAbort,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Stat => "stat",
            Op::Read => "read",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::List => "list",
            Op::UploadCreate => "upload_create",
            Op::UploadAppend => "upload_append",
            Op::UploadCommit => "upload_commit",
            Op::UploadAbort => "upload_abort",
        }
    }
}

/// How an operation fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fail before touching the inner store.
    Before,
    /// For `UploadAppend`: pass this many bytes to the inner store, then break the stream (a client
    /// that disconnects mid-chunk).
    CutStreamAfter(u64),
}

/// A store that fails the next N calls of chosen operations.
pub struct FaultyStore<S> {
    inner: S,
    faults: Mutex<HashMap<Op, (Fault, u32)>>,
}

impl<S: BlobStore> FaultyStore<S> {
    pub fn new(inner: S) -> FaultyStore<S> {
        FaultyStore {
            inner,
            faults: Mutex::new(HashMap::new()),
        }
    }

    /// Make the next `times` calls of `op` fail with `fault`.
    pub fn fail(&self, op: Op, fault: Fault, times: u32) {
        if let Ok(mut f) = self.faults.lock() {
            f.insert(op, (fault, times));
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn take(&self, op: Op) -> Option<Fault> {
        let mut f = self.faults.lock().ok()?;
        let entry = f.get_mut(&op)?;
        if entry.1 == 0 {
            return None;
        }
        entry.1 -= 1;
        Some(entry.0)
    }

    fn check(&self, op: Op) -> Result<(), StoreError> {
        match self.take(op) {
            Some(Fault::Before) => Err(StoreError::Injected(op.name())),
            _ => Ok(()),
        }
    }
}

fn cut_after(data: ByteStream, limit: u64) -> ByteStream {
    let mut passed = 0u64;
    data.map(move |chunk| {
        let chunk = chunk?;
        if passed >= limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "injected: stream cut",
            ));
        }
        let room = (limit - passed) as usize;
        passed += chunk.len() as u64;
        if chunk.len() > room {
            passed = limit;
            return Ok(chunk.slice(..room));
        }
        Ok(chunk)
    })
    .chain(futures::stream::once(async {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "injected: stream cut",
        ))
    }))
    .boxed()
}

#[async_trait::async_trait]
impl<S: BlobStore> BlobStore for FaultyStore<S> {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        self.check(Op::Stat)?;
        self.inner.stat(digest).await
    }
    async fn read(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, StoreError> {
        self.check(Op::Read)?;
        self.inner.read(digest, range).await
    }
    async fn put(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        self.check(Op::Put)?;
        self.inner.put(digest, data).await
    }
    async fn delete(&self, digest: &Digest) -> Result<bool, StoreError> {
        self.check(Op::Delete)?;
        self.inner.delete(digest).await
    }
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        self.check(Op::List)?;
        self.inner.list().await
    }
    async fn upload_create(&self, id: &str, repository: &str) -> Result<(), StoreError> {
        self.check(Op::UploadCreate)?;
        self.inner.upload_create(id, repository).await
    }
    async fn upload_info(&self, id: &str) -> Result<Option<UploadInfo>, StoreError> {
        self.inner.upload_info(id).await
    }
    async fn upload_append(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
        declared: Option<u64>,
    ) -> Result<u64, StoreError> {
        match self.take(Op::UploadAppend) {
            Some(Fault::Before) => Err(StoreError::Injected("upload_append")),
            Some(Fault::CutStreamAfter(n)) => {
                self.inner
                    .upload_append(id, offset, cut_after(data, n), declared)
                    .await
            }
            None => self.inner.upload_append(id, offset, data, declared).await,
        }
    }
    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<u64, StoreError> {
        self.check(Op::UploadCommit)?;
        self.inner.upload_commit(id, digest).await
    }
    async fn upload_abort(&self, id: &str) -> Result<(), StoreError> {
        self.check(Op::UploadAbort)?;
        self.inner.upload_abort(id).await
    }
    async fn uploads(&self) -> Result<Vec<UploadInfo>, StoreError> {
        self.inner.uploads().await
    }
}
