//! [`FsStore`]: blobs on a local filesystem.
//!
//! Layout under the root:
//! - `blobs/<alg>/<first two hex>/<hex>`: verified, immutable blobs;
//! - `uploads/<id>/data` and `uploads/<id>/info.json`: sessions in progress;
//! - `tmp/`: files being written by `put`, renamed into `blobs/` once verified and synced.
//!
//! Durability: data files are `fsync`ed before the rename that makes them visible, and the directory
//! holding the new entry is `fsync`ed before the call returns. Upload chunks are not `fsync`ed one by
//! one: the finished upload is, once, in `upload_commit` before it becomes a blob. An acknowledged chunk
//! survives a crash of the process (it is in the page cache); after a power loss an unfinished session
//! may come back shorter or with a damaged tail, which the digest check at commit refuses (the client
//! restarts the upload), so no damaged blob can ever become visible.
//!
//! Speed: chunks are written by one blocking thread per request and hashed (SHA-256) on the way in; the
//! hash state is kept in memory per session, so a commit whose session was hashed to its end needs no
//! second pass over the data (after a restart, or for SHA-512, the file is hashed from disk). Reads of
//! 256 KiB or more are served from a read-only memory mapping of the (immutable) blob file, so the
//! bytes are copied once, from the page cache into the socket; smaller ones are read in a blocking
//! thread. A mapped read is sent in slices (1 MiB first, so the first bytes leave at once, then
//! 8 MiB), each faulted in (`MADV_POPULATE_READ`) by a blocking thread while the slice before it is
//! being sent: a blob that is not in the page cache is read from disk there, never by a runtime
//! thread inside the socket write, and the request waits for no more than the first slice.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;

use super::{BlobInfo, BlobStore, ByteStream, StoreError, UploadInfo, valid_upload_id};
use crate::digest::{Algorithm, Digest, Hasher};

/// Size of the chunks a blob is read (and sent) in.
const READ_CHUNK: usize = 1024 * 1024;
/// Reads at least this large are served from a memory mapping.
const MMAP_MIN: u64 = 256 * 1024;
/// Size of the first slice a mapped read is sent in (small, so the first bytes go out soon)...
const MMAP_FIRST: usize = 1024 * 1024;
/// ...and of the slices after it.
const MMAP_CHUNK: usize = 8 * 1024 * 1024;
/// Chunks in flight between the request and the writing thread.
const WRITE_QUEUE: usize = 16;

/// SHA-256 state of a session's data so far: (bytes hashed, state).
type HashStates = Arc<Mutex<HashMap<String, (u64, Hasher)>>>;

/// A filesystem blob store.
#[derive(Clone)]
pub struct FsStore {
    root: PathBuf,
    hashes: HashStates,
}

impl std::fmt::Debug for FsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Create `dir` (and parents) and fsync each parent whose entries changed.
fn create_dir_durable(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

fn hash_file(path: &Path, algorithm: Algorithm) -> std::io::Result<(Digest, u64)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((h.finish(), total))
}

/// A read-only mapping of (part of) an immutable blob file, shared by the [`Bytes`] sent from it.
struct Mapped(memmap2::Mmap);

impl AsRef<[u8]> for Mapped {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// [`Bytes`] owner sharing a mapping.
struct MappedRef(Arc<Mapped>);

impl AsRef<[u8]> for MappedRef {
    fn as_ref(&self) -> &[u8] {
        &self.0.0
    }
}

/// Map `len` bytes of `file` from `offset`, without faulting anything in yet.
#[allow(unsafe_code)]
fn map_range(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<Arc<Mapped>> {
    let len = usize::try_from(len).map_err(std::io::Error::other)?;
    // SAFETY: a mapping is undefined behaviour if the file changes underneath it. Blob files are
    // immutable: written under `tmp/` or `uploads/`, fsynced, verified and renamed into `blobs/`,
    // then never opened for writing again except to set their mtime (`touch`, which does not
    // truncate or write). Deleting a blob (GC) unlinks the name; the mapped inode lives on until
    // the mapping is dropped. Only someone editing `blobs/` by hand, against the store's contract,
    // could truncate a mapped file (the process would then get SIGBUS, not read wrong bytes).
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len(len)
            .map(file)?
    };
    Ok(Arc::new(Mapped(map)))
}

/// Start faulting `map[range]` in (reading from disk what is not cached) in a blocking thread, so
/// that sending it never blocks a runtime thread on the disk.
fn populate(
    map: Arc<Mapped>,
    range: std::ops::Range<usize>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    tokio::task::spawn_blocking(move || {
        match map
            .0
            .advise_range(memmap2::Advice::PopulateRead, range.start, range.len())
        {
            // kernels before 5.14: touch one byte per page instead
            Err(e) if e.raw_os_error() == Some(22) => {
                let mut x = 0u8;
                for i in range.step_by(4096) {
                    x ^= map.0[i];
                }
                std::hint::black_box(x);
                Ok(())
            }
            r => r,
        }
    })
}

/// The slices of a mapping to send: `MMAP_FIRST` bytes, then `MMAP_CHUNK` at a time; each slice is
/// faulted in by a blocking thread while the one before it is being sent.
fn mapped_stream(map: Arc<Mapped>) -> ByteStream {
    let n = map.0.len();
    let slices: Vec<std::ops::Range<usize>> = {
        let mut v = Vec::new();
        let mut a = 0;
        while a < n {
            let len = if a == 0 { MMAP_FIRST } else { MMAP_CHUNK };
            let b = (a + len).min(n);
            v.push(a..b);
            a = b;
        }
        v
    };
    let whole = Bytes::from_owner(MappedRef(map.clone()));
    let mut ahead = None;
    let mut i = 0;
    futures::stream::poll_fn(move |cx| {
        use std::task::Poll;
        let Some(range) = slices.get(i).cloned() else {
            return Poll::Ready(None);
        };
        let fut = ahead.get_or_insert_with(|| populate(map.clone(), range.clone()));
        let Poll::Ready(done) = std::pin::Pin::new(fut).poll(cx) else {
            return Poll::Pending;
        };
        if let Err(e) = done.map_err(std::io::Error::other).and_then(|r| r) {
            i = slices.len();
            return Poll::Ready(Some(Err(e)));
        }
        i += 1;
        // start faulting the next slice in now, while this one goes out
        ahead = slices.get(i).map(|r| populate(map.clone(), r.clone()));
        Poll::Ready(Some(Ok(whole.slice(range))))
    })
    .boxed()
}

/// Refresh an existing blob's mtime (so a re-pushed blob is as young as a new one for the garbage
/// collector's grace period); `false` if it does not exist.
fn touch(path: &Path) -> std::io::Result<bool> {
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(f) => {
            f.set_modified(SystemTime::now())?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
}

impl FsStore {
    /// Open (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<FsStore, StoreError> {
        let root = root.into();
        for d in ["blobs", "uploads", "tmp"] {
            create_dir_durable(&root.join(d))?;
        }
        // Left-overs of interrupted `put`s are never visible; drop them.
        if let Ok(rd) = std::fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        Ok(FsStore {
            root,
            hashes: Arc::default(),
        })
    }

    fn take_hash(&self, id: &str) -> Option<(u64, Hasher)> {
        self.hashes.lock().ok()?.remove(id)
    }

    fn keep_hash(&self, id: &str, size: u64, h: Hasher) {
        if let Ok(mut m) = self.hashes.lock() {
            m.insert(id.to_string(), (size, h));
        }
    }

    /// The final path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("blobs")
            .join(digest.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn upload_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        if !valid_upload_id(id) {
            return Err(StoreError::InvalidUploadId);
        }
        Ok(self.root.join("uploads").join(id))
    }

    /// Move a verified, synced file into place and sync the directory.
    fn publish(&self, src: &Path, digest: &Digest) -> Result<(), StoreError> {
        let dst = self.blob_path(digest);
        let dir = dst.parent().map(Path::to_path_buf).unwrap_or_default();
        create_dir_durable(&dir)?;
        std::fs::rename(src, &dst)?;
        sync_dir(&dir)?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl BlobStore for FsStore {
    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        // one `stat` of a (usually cached) inode: cheaper here than a hop to a blocking thread,
        // like the `open` in `read`
        match std::fs::metadata(self.blob_path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn read(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, StoreError> {
        let path = self.blob_path(digest);
        let mut file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        let (start, end) = range.unwrap_or((0, len.saturating_sub(1)));
        let mut remaining = if len == 0 { 0 } else { end + 1 - start };
        if start.saturating_add(remaining) > len {
            return Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "range beyond the end of the blob",
            )));
        }
        if remaining >= MMAP_MIN {
            // Large reads are served from a mapping of the page cache: the bytes are copied once,
            // into the socket, instead of twice (into a buffer, then into the socket).
            return Ok(mapped_stream(map_range(&file, start, remaining)?));
        }
        file.seek(SeekFrom::Start(start))?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tokio::task::spawn_blocking(move || {
            while remaining > 0 {
                let want = remaining.min(READ_CHUNK as u64);
                // `read_to_end` fills the spare capacity without zeroing it first
                let mut buf = Vec::with_capacity(want as usize);
                let item = match (&mut file).take(want).read_to_end(&mut buf) {
                    Ok(0) => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob shorter than expected",
                    )),
                    Ok(n) => {
                        remaining -= n as u64;
                        Ok(Bytes::from(buf))
                    }
                    Err(e) => Err(e),
                };
                let stop = item.is_err();
                if tx.blocking_send(item).is_err() || stop {
                    break;
                }
            }
        });
        Ok(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed())
    }

    async fn put(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        let actual = digest.same_algorithm_of(&data);
        if &actual != digest {
            return Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let this = self.clone();
        let digest = digest.clone();
        blocking(move || {
            if touch(&this.blob_path(&digest))? {
                return Ok(());
            }
            let tmp = this
                .root
                .join("tmp")
                .join(uuid::Uuid::new_v4().simple().to_string());
            let res = (|| -> Result<(), StoreError> {
                let mut f = std::fs::File::create(&tmp)?;
                std::io::Write::write_all(&mut f, &data)?;
                f.sync_all()?;
                this.publish(&tmp, &digest)
            })();
            if res.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            res
        })
        .await
    }

    async fn delete(&self, digest: &Digest) -> Result<bool, StoreError> {
        let path = self.blob_path(digest);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    let dir = dir.to_path_buf();
                    blocking(move || Ok(sync_dir(&dir)?)).await?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn list(&self) -> Result<Vec<BlobInfo>, StoreError> {
        let root = self.root.join("blobs");
        blocking(move || {
            let mut out = Vec::new();
            for alg in std::fs::read_dir(&root)?.flatten() {
                let alg_name = alg.file_name().to_string_lossy().to_string();
                for prefix in std::fs::read_dir(alg.path())?.flatten() {
                    for blob in std::fs::read_dir(prefix.path())?.flatten() {
                        let name = blob.file_name().to_string_lossy().to_string();
                        let Ok(digest) = format!("{alg_name}:{name}").parse::<Digest>() else {
                            continue;
                        };
                        let meta = blob.metadata()?;
                        out.push(BlobInfo {
                            digest,
                            size: meta.len(),
                            modified: meta.modified()?,
                        });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    async fn upload_create(&self, id: &str, repository: &str) -> Result<(), StoreError> {
        let dir = self.upload_dir(id)?;
        let info = UploadInfo {
            id: id.to_string(),
            repository: repository.to_string(),
            size: 0,
            started: now_secs(),
        };
        // Not fsynced: a session lost to a power cut is unknown afterwards and the client starts
        // over; a half-written one is reported without a repository and cleaned up.
        blocking(move || {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::create(dir.join("data"))?;
            let json = serde_json::to_vec(&info).map_err(std::io::Error::other)?;
            std::fs::write(dir.join("info.json"), json)?;
            Ok(())
        })
        .await
    }

    async fn upload_info(&self, id: &str) -> Result<Option<UploadInfo>, StoreError> {
        let dir = match self.upload_dir(id) {
            Ok(d) => d,
            Err(_) => return Ok(None),
        };
        let raw = match tokio::fs::read(dir.join("info.json")).await {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let Ok(mut info) = serde_json::from_slice::<UploadInfo>(&raw) else {
            return Ok(None);
        };
        info.size = match tokio::fs::metadata(dir.join("data")).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some(info))
    }

    async fn upload_append(
        &self,
        id: &str,
        offset: u64,
        mut data: ByteStream,
        declared: Option<u64>,
    ) -> Result<u64, StoreError> {
        let path = self.upload_dir(id)?.join("data");
        let mut file = match std::fs::OpenOptions::new().write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let current = file.metadata()?.len();
        if current != offset {
            return Err(StoreError::OffsetMismatch {
                current,
                requested: offset,
            });
        }
        // Hash on the way in when the state covers exactly the bytes before this chunk.
        let hasher = match self.take_hash(id) {
            Some((n, h)) if n == offset => Some(h),
            _ if offset == 0 => Some(Hasher::new(Algorithm::Sha256)),
            _ => None,
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            let mut hasher = hasher;
            let res = (|| -> std::io::Result<()> {
                file.seek(SeekFrom::Start(offset))?;
                while let Some(chunk) = rx.blocking_recv() {
                    file.write_all(&chunk)?;
                    if let Some(h) = hasher.as_mut() {
                        h.update(&chunk);
                    }
                }
                Ok(())
            })();
            (file, hasher, res)
        });
        // Feed the writer; stop at the first problem (dropping `tx` ends the writer's loop).
        let fed: Result<u64, StoreError> = async {
            let mut written = 0u64;
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                written += chunk.len() as u64;
                if let Some(d) = declared
                    && written > d
                {
                    return Err(StoreError::SizeMismatch {
                        declared: d,
                        received: written,
                    });
                }
                if tx.send(chunk).await.is_err() {
                    // the writer stopped on an error: it is reported below
                    return Ok(written);
                }
            }
            if let Some(d) = declared
                && written != d
            {
                return Err(StoreError::SizeMismatch {
                    declared: d,
                    received: written,
                });
            }
            Ok(written)
        }
        .await;
        drop(tx);
        let (file, hasher, wrote) = writer
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let result = match (fed, wrote) {
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e.into()),
            (Ok(n), Ok(())) => Ok(offset + n),
        };
        match &result {
            Ok(size) => {
                if let Some(h) = hasher {
                    self.keep_hash(id, *size, h);
                }
            }
            Err(_) => {
                // Roll back to where the chunk started: a failed chunk leaves nothing.
                blocking(move || {
                    file.set_len(offset)?;
                    Ok(())
                })
                .await
                .ok();
            }
        }
        result
    }

    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<u64, StoreError> {
        let dir = self.upload_dir(id)?;
        let this = self.clone();
        let digest = digest.clone();
        let state = self.take_hash(id);
        blocking(move || {
            let data = dir.join("data");
            if !data.exists() {
                return Err(StoreError::NotFound);
            }
            let res = (|| -> Result<u64, StoreError> {
                let on_disk = std::fs::metadata(&data)?.len();
                let (actual, size) = match state {
                    Some((n, h)) if n == on_disk && digest.algorithm() == Algorithm::Sha256 => {
                        (h.finish(), n)
                    }
                    _ => hash_file(&data, digest.algorithm())?,
                };
                if actual != digest {
                    return Err(StoreError::DigestMismatch {
                        expected: digest.clone(),
                        actual,
                    });
                }
                if !touch(&this.blob_path(&digest))? {
                    let f = std::fs::OpenOptions::new().write(true).open(&data)?;
                    // A fresh mtime keeps the new blob inside the garbage collector's grace period
                    // until a manifest can reference it.
                    f.set_modified(SystemTime::now())?;
                    f.sync_all()?;
                    this.publish(&data, &digest)?;
                }
                Ok(size)
            })();
            // The session ends whatever happened: nothing of it stays behind.
            let _ = std::fs::remove_dir_all(&dir);
            res
        })
        .await
    }

    async fn upload_abort(&self, id: &str) -> Result<(), StoreError> {
        let dir = self.upload_dir(id)?;
        self.take_hash(id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    async fn uploads(&self) -> Result<Vec<UploadInfo>, StoreError> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(self.root.join("uploads")).await?;
        while let Some(e) = rd.next_entry().await? {
            let id = e.file_name().to_string_lossy().to_string();
            match self.upload_info(&id).await? {
                Some(info) => out.push(info),
                None => {
                    // A session whose creation was interrupted: report it with what we know so the
                    // cleaner can remove it.
                    if valid_upload_id(&id) {
                        out.push(UploadInfo {
                            id,
                            repository: String::new(),
                            size: 0,
                            started: 0,
                        });
                    }
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_range(store: &FsStore, d: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
        let mut s = store.read(d, range).await.unwrap();
        let mut out = Vec::new();
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn mapped_reads_cross_slice_edges_exactly() {
        // more than the first slice and two full slices, so every kind of slice edge is crossed
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let len = MMAP_FIRST + 2 * MMAP_CHUNK + 12_345;
        let data: Vec<u8> = (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let d = Digest::sha256_of(&data);
        store.put(&d, Bytes::from(data.clone())).await.unwrap();
        let whole = read_range(&store, &d, None).await;
        assert_eq!(Digest::sha256_of(&whole), d);
        let (first, chunk) = (MMAP_FIRST as u64, MMAP_CHUNK as u64);
        for (a, b) in [
            (0, first - 1),
            (0, first),
            (first - 1, first + chunk),
            (4097, first + 2 * chunk + 1),
            (1, len as u64 - 1),
            (len as u64 - MMAP_MIN, len as u64 - 1),
        ] {
            assert_eq!(
                read_range(&store, &d, Some((a, b))).await,
                &data[a as usize..=b as usize],
                "{a}-{b}"
            );
        }
    }
}
