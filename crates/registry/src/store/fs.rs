//! [`FsStore`]: blobs on a local filesystem.
//!
//! Layout under the root:
//! - `blobs/<alg>/<first two hex>/<hex>`: verified, immutable blobs;
//! - `uploads/<id>/data` and `uploads/<id>/info.json`: sessions in progress;
//! - `tmp/`: files being written by `put`, renamed into `blobs/` once verified and synced.
//!
//! Durability: data files are `fsync`ed before the rename that makes them visible, and the directory
//! holding the new entry is `fsync`ed before the call returns.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::{BlobInfo, BlobStore, ByteStream, StoreError, UploadInfo, valid_upload_id};
use crate::digest::{Algorithm, Digest, Hasher};

const READ_CHUNK: usize = 256 * 1024;

/// A filesystem blob store.
#[derive(Debug, Clone)]
pub struct FsStore {
    root: PathBuf,
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
        Ok(FsStore { root })
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
        match tokio::fs::metadata(self.blob_path(digest)).await {
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
        file.seek(SeekFrom::Start(start))?;
        let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        tokio::task::spawn_blocking(move || {
            let mut tx = tx;
            while remaining > 0 {
                let want = remaining.min(READ_CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                let r = file.read(&mut buf);
                let item = match r {
                    Ok(0) => Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "blob shorter than expected",
                    )),
                    Ok(n) => {
                        buf.truncate(n);
                        remaining -= n as u64;
                        Ok(Bytes::from(buf))
                    }
                    Err(e) => Err(e),
                };
                let stop = item.is_err();
                if futures::executor::block_on(futures::SinkExt::send(&mut tx, item)).is_err()
                    || stop
                {
                    break;
                }
            }
        });
        Ok(rx.boxed())
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
        blocking(move || {
            create_dir_durable(&dir)?;
            std::fs::File::create(dir.join("data"))?.sync_all()?;
            let json = serde_json::to_vec(&info).map_err(std::io::Error::other)?;
            let mut f = std::fs::File::create(dir.join("info.json"))?;
            std::io::Write::write_all(&mut f, &json)?;
            f.sync_all()?;
            sync_dir(&dir)?;
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
        let mut file = match tokio::fs::OpenOptions::new().write(true).open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let current = file.metadata().await?.len();
        if current != offset {
            return Err(StoreError::OffsetMismatch {
                current,
                requested: offset,
            });
        }
        file.seek(SeekFrom::Start(offset)).await?;
        let result: Result<u64, StoreError> = async {
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
                file.write_all(&chunk).await?;
            }
            if let Some(d) = declared
                && written != d
            {
                return Err(StoreError::SizeMismatch {
                    declared: d,
                    received: written,
                });
            }
            file.flush().await?;
            file.sync_data().await?;
            Ok(offset + written)
        }
        .await;
        if result.is_err() {
            // Roll back to where the chunk started: a failed chunk leaves nothing.
            let _ = file.set_len(offset).await;
            let _ = file.sync_data().await;
        }
        result
    }

    async fn upload_commit(&self, id: &str, digest: &Digest) -> Result<u64, StoreError> {
        let dir = self.upload_dir(id)?;
        let this = self.clone();
        let digest = digest.clone();
        blocking(move || {
            let data = dir.join("data");
            if !data.exists() {
                return Err(StoreError::NotFound);
            }
            let res = (|| -> Result<u64, StoreError> {
                let (actual, size) = hash_file(&data, digest.algorithm())?;
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
