//! The blob store seam: content-addressed blobs plus upload sessions, with nothing about repositories,
//! manifests or HTTP. [`fs::FsStore`] keeps them on a local filesystem; [`faulty::FaultyStore`] wraps any
//! store and injects failures for tests; an S3-compatible object store fits the same trait (uploads map
//! to multipart uploads, commit to a copy into the content-addressed key).
//!
//! Contract every implementation keeps:
//! - a blob is visible (`stat`, `read`) only after its bytes were verified against its digest;
//! - `put` and `upload_commit` return only once the blob is durable (a crash afterwards loses nothing);
//! - `upload_append` need not be durable on its own (the commit is): after a power loss a session may
//!   come back shorter or damaged, which the digest check at commit refuses;
//! - a failed `upload_append` leaves the upload exactly as it was before the call;
//! - a failed or aborted upload leaves no blob behind.

pub mod faulty;
pub mod fs;

use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::digest::Digest;

/// A stream of blob or request bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Blob store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("content does not match digest {expected} (it is {actual})")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("upload is at offset {current}, the chunk starts at {requested}")]
    OffsetMismatch { current: u64, requested: u64 },
    #[error("chunk declared {declared} bytes but carried {received}")]
    SizeMismatch { declared: u64, received: u64 },
    #[error("invalid upload id")]
    InvalidUploadId,
    #[error("i/o")]
    Io(#[from] std::io::Error),
    #[error("injected fault in {0}")]
    Injected(&'static str),
}

/// A stored blob, as listed for garbage collection.
#[derive(Debug, Clone)]
pub struct BlobInfo {
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// An upload session in progress.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct UploadInfo {
    pub id: String,
    pub repository: String,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub started: u64,
}

/// Content-addressed blob storage with resumable uploads.
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// The blob's size, or `None` if it does not exist.
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError>;
    /// Read `range` (start, inclusive end) or the whole blob.
    async fn read(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, StoreError>;
    /// Verify `data` against `digest` and store it durably.
    async fn put(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError>;
    /// Delete a blob; `false` if it did not exist.
    async fn delete(&self, digest: &Digest) -> Result<bool, StoreError>;
    /// Every stored blob.
    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError>;

    /// Start an empty upload session.
    async fn upload_create(&self, id: &str, repository: &str) -> Result<(), StoreError>;
    /// The session, or `None` if unknown.
    async fn upload_info(&self, id: &str) -> Result<Option<UploadInfo>, StoreError>;
    /// Append `data` at `offset` (which must be the current size). With `declared`, the chunk must carry
    /// exactly that many bytes. On any error the upload is left at `offset`. Returns the new size.
    async fn upload_append(
        &self,
        id: &str,
        offset: u64,
        data: ByteStream,
        declared: Option<u64>,
    ) -> Result<u64, StoreError>;
    /// Verify the upload against `digest` and make it a durable blob; the session ends either way.
    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<u64, StoreError>;
    /// Drop a session and its bytes.
    async fn upload_abort(&self, id: &str) -> Result<(), StoreError>;
    /// Every session in progress.
    async fn uploads(&self) -> Result<Vec<UploadInfo>, StoreError>;
}

/// Read a whole (small) blob into memory.
pub async fn read_all(store: &dyn BlobStore, digest: &Digest) -> Result<Bytes, StoreError> {
    let mut s = store.read(digest, None).await?;
    let mut buf = Vec::new();
    while let Some(chunk) = s.next().await {
        buf.extend_from_slice(&chunk?);
    }
    Ok(Bytes::from(buf))
}

/// Upload ids become path components: only `[A-Za-z0-9-]`, at most 64 characters.
pub fn valid_upload_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}
