//! The image store under `<data-dir>/images`: manifests and configs as blobs, every layer unpacked
//! once into `layers/<digest>` (content-addressed, shared by all images and pods), and one record
//! per image name. Writes go to `tmp/` and are renamed into place only once their digest is
//! verified, so a crash or a concurrent process never leaves a half blob or layer visible.
//! [`ImageStore::gc`] evicts least recently used images that no pod uses once the store is above
//! its limit.
//!
//! Download once: concurrent pulls of one image in this process are serialized and the second
//! finds the work done. Across processes sharing the data dir (the host agent and `nodeless
//! sandbox pull`, or two CLIs), every blob fetched by digest (layers, configs, manifests named
//! by digest) is fetched under an exclusive `flock` on `images/locks/<hex>`: whoever takes it
//! second finds the blob (or unpacked layer) verified in the store and fetches nothing. The
//! manifest a tag names is asked for by every pull (a tag may move). A process killed while it
//! holds a blob lock loses the lock with its file descriptors; the next pull fetches the blob
//! again, and removes the dead process's temp files (named after their owner's pid and start
//! time, so a reused pid is not taken for their owner).
//!
//! GC safety: every pull and every lookup that hands out an image holds a shared `flock` on
//! `images/lock` from before it looks at the layers until its record is written; gc holds it
//! exclusively, so it never removes a layer of a pull in progress (in this process or another).
//! Layers that a mounted overlay uses as a lower dir are never removed either.
//!
//! Lock order (no cycle, so no deadlock): the in-process image mutex, then `images/lock`
//! (shared), then one blob at a time: the in-process blob mutex, then `images/locks/<hex>`. A pull
//! never holds two blob locks, and waits for nothing but the network while it holds one. gc
//! takes only `images/lock`, exclusively; as blob lock files are opened only under the shared
//! store lock, gc removes them safely.
//!
//! On disk:
//! ```text
//! images/blobs/sha256/<hex>        manifests and configs
//! images/layers/<hex>/             an unpacked layer (overlayfs lower dir), named by blob digest
//! images/layers/<hex>.json         its diff_id and size
//! images/records/<hash of name>.json  name -> manifest, config, layers, last use
//! images/lock                      shared by pulls, exclusive for gc
//! images/locks/<hex>               exclusive while one process fetches that blob
//! images/tmp/                      work in progress: <kind>-<pid>.<start time>-<n>[-<hex>]
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWrite;
use tracing::{debug, info, warn};

use super::Source;
use super::manifest::{self, Descriptor, Document, ImageConfig, ImageManifest, ManifestError};
use super::unpack::{self, UnpackError};
use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("registry request for {reference}")]
    Registry {
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },
    #[error("manifest of {0}")]
    Manifest(String, #[source] ManifestError),
    #[error("image config of {0} is invalid")]
    Config(String, #[source] serde_json::Error),
    #[error("OCI layout {0}: {1}")]
    Layout(PathBuf, String),
    #[error("{what} has digest {actual}, expected {expected}")]
    Digest {
        what: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("layer {0}")]
    Unpack(Digest, #[source] UnpackError),
    #[error("image config lists {diff_ids} diff_ids for {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
    #[error("image {0} is not in the store")]
    NotPresent(String),
    #[error("stored record {0} is corrupt")]
    Record(PathBuf, #[source] serde_json::Error),
    #[error("background task failed")]
    Join(#[from] tokio::task::JoinError),
    /// Trusted roots given to [`ImageStore::trust_roots_pem`] are not usable certificates.
    #[error("trusted roots: {0}")]
    Certificate(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Registry credentials.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    Bearer(String),
}

/// What a pull reports as it goes (for progress bars).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullEvent {
    /// The manifest is known: these layers (digest, compressed size) make the image.
    Resolved {
        manifest: Digest,
        layers: Vec<(Digest, u64)>,
    },
    /// A layer was already in the store.
    LayerPresent(Digest),
    /// Bytes of a layer downloaded so far (cumulative).
    LayerProgress { digest: Digest, done: u64 },
    /// A layer was verified and unpacked.
    LayerDone(Digest),
}

pub type ProgressFn = Arc<dyn Fn(&PullEvent) + Send + Sync>;

#[derive(Clone, Default)]
pub struct PullOptions {
    pub auth: Auth,
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for PullOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullOptions").field("auth", &"..").finish()
    }
}

#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// Registries (host or host:port) reached over plain HTTP; loopback always is.
    pub insecure_registries: Vec<String>,
    /// Total size of unpacked layers above which [`ImageStore::gc`] evicts unused images.
    pub cache_limit_bytes: Option<u64>,
}

/// One image in the store, ready to build root filesystems from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub config: ImageConfig,
    /// Layer blob digests, bottom first.
    pub layers: Vec<Digest>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    manifest_digest: Digest,
    config_digest: Digest,
    layers: Vec<Digest>,
    /// Last use in unix seconds (what older versions wrote; still written for them).
    last_used: u64,
    /// Last use in unix milliseconds, strictly increasing within one process; absent in records
    /// of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_used_ms: Option<u64>,
}

impl Record {
    fn used_ms(&self) -> u64 {
        self.last_used_ms
            .unwrap_or_else(|| self.last_used.saturating_mul(1000))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LayerMeta {
    diff_id: Digest,
    unpacked_size: u64,
}

/// The result of [`ImageStore::gc`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub evicted_images: Vec<String>,
    pub removed_layers: Vec<Digest>,
    pub size_after: u64,
}

pub struct ImageStore {
    root: PathBuf,
    options: StoreOptions,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Extra CA certificates (DER) trusted for registries besides the system's roots, learnt at
    /// run time ([`ImageStore::trust_roots_pem`]).
    extra_roots: Mutex<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for ImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageStore")
            .field("root", &self.root)
            .finish()
    }
}

/// Now in unix milliseconds, strictly after any earlier call in this process, so that the order
/// of uses is the order of the timestamps even within one millisecond.
fn now_ms() -> u64 {
    static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut last = LAST.load(std::sync::atomic::Ordering::Relaxed);
    loop {
        let next = wall.max(last + 1);
        match LAST.compare_exchange_weak(
            last,
            next,
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
        ) {
            Ok(_) => return next,
            Err(l) => last = l,
        }
    }
}

/// A name for work in progress in `tmp/`: `<prefix>-<owner>-<n>`, the owner being this process
/// ([`owner_token`]).
fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static OWNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let owner = OWNER.get_or_init(|| {
        let pid = std::process::id();
        owner_token(pid).unwrap_or_else(|| pid.to_string())
    });
    format!("{prefix}-{owner}-{n}")
}

/// `<pid>.<start time>` of process `pid` (its start in clock ticks after boot, field 22 of
/// `/proc/<pid>/stat`), or `None` when there is no such process.
fn owner_token(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields go on after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let start = rest.split_whitespace().nth(19)?;
    Some(format!("{pid}.{start}"))
}

/// Whether the owner of a `tmp/` entry named `name` ([`unique`]) is alive: the same pid with
/// the same start time (a bare pid, as older versions wrote, only needs the pid to exist).
fn owner_alive(name: &str) -> bool {
    let Some(owner) = name.split('-').nth(1) else {
        return false;
    };
    match owner.split_once('.') {
        Some((pid, _)) => pid
            .parse::<u32>()
            .ok()
            .and_then(owner_token)
            .is_some_and(|t| t == owner),
        None => owner
            .parse::<u32>()
            .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists()),
    }
}

/// A path in `tmp/` removed (file or tree) when dropped, so that work abandoned on an error or
/// by a cancelled pull does not stay behind.
struct TmpPath(PathBuf);

impl Drop for TmpPath {
    fn drop(&mut self) {
        if let Err(e) = remove_any(&self.0) {
            warn!(path = %self.0.display(), error = %e, "could not remove temp file");
        }
    }
}

/// The lock on one blob ([`ImageStore::blob_lock`]): this process's mutex and the `flock`.
struct BlobLock {
    _file: std::fs::File,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

/// Installs rustls' ring provider once (oci-client is built without one).
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root` (normally `<data-dir>/images`).
    pub fn open(root: impl Into<PathBuf>, options: StoreOptions) -> Result<Self, StoreError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "records", "tmp", "locks"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io("create", &p))?;
        }
        clean_tmp(&root);
        Ok(ImageStore {
            root,
            options,
            locks: Mutex::new(HashMap::new()),
            extra_roots: Mutex::new(Vec::new()),
        })
    }

    /// Trusts the CA certificates in `pem` (one or more `CERTIFICATE` blocks) for registries
    /// reached over HTTPS from now on, besides the system's roots (e.g. the cluster registry's
    /// own CA). Certificates already trusted are not added twice. Nothing is added when any
    /// block is not a usable CA certificate.
    pub fn trust_roots_pem(&self, pem: &[u8]) -> Result<(), StoreError> {
        let roots = parse_roots(pem)?;
        let mut extra = self.extra_roots.lock().unwrap_or_else(|p| p.into_inner());
        for der in roots {
            if !extra.contains(&der) {
                extra.push(der);
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of an unpacked layer (an overlayfs lower dir).
    pub fn layer_dir(&self, digest: &Digest) -> PathBuf {
        self.root.join("layers").join(digest.hex())
    }

    /// Unpacked layer directories of `image`, top first (the order overlayfs `lowerdir` wants).
    pub fn lower_dirs(&self, image: &Image) -> Vec<PathBuf> {
        image
            .layers
            .iter()
            .rev()
            .map(|d| self.layer_dir(d))
            .collect()
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.root
            .join("records")
            .join(format!("{}.json", Digest::of(name.as_bytes()).hex()))
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// The lock on fetching blob `digest`, for tasks of this process (a mutex) and for other
    /// processes (an exclusive `flock` on `locks/<hex>`). Only taken with the shared store lock
    /// held (see the lock order in the module docs). While another process holds it, says so
    /// (`waiting for another pull of <digest>`), checks again every 50 ms and, when `layer`,
    /// reports as this pull's progress the size of the other process's download.
    async fn blob_lock(
        &self,
        digest: &Digest,
        progress: Option<&(dyn Fn(&PullEvent) + Sync)>,
    ) -> Result<BlobLock, StoreError> {
        let guard = self.lock_for(&format!("blob {digest}")).lock_owned().await;
        let path = self.root.join("locks").join(digest.hex());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let mut waited: Option<std::time::Instant> = None;
        let mut shown = 0;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io("lock", &path)(e.into())),
            }
            if waited.is_none() {
                info!("waiting for another pull of {digest}");
                waited = Some(std::time::Instant::now());
            }
            if let Some(report) = progress {
                let theirs = self.download_size(digest);
                if theirs > shown {
                    shown = theirs;
                    report(&PullEvent::LayerProgress {
                        digest: digest.clone(),
                        done: shown,
                    });
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if let Some(t) = waited {
            info!(
                waited_ms = t.elapsed().as_millis() as u64,
                "another pull of {digest} ended"
            );
            // It may have died mid-download (its lock went with it): its temp files go now.
            clean_tmp(&self.root);
        }
        Ok(BlobLock {
            _file: file,
            _guard: guard,
        })
    }

    /// Bytes downloaded so far of the layer blob `digest` by any process (the largest temp
    /// download of it in `tmp/`).
    fn download_size(&self, digest: &Digest) -> u64 {
        let suffix = format!("-{}", digest.hex());
        std::fs::read_dir(self.root.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with("blob-") && n.ends_with(&suffix))
            })
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
    }

    /// The bytes of blob `digest` (a manifest or config named by digest; `what` names it in
    /// errors): from the store when there, else fetched by `fetch`, verified and stored, under
    /// the blob's lock, so that concurrent pulls (in any process) fetch it once.
    async fn small_blob_once<F>(
        &self,
        digest: &Digest,
        what: &str,
        fetch: F,
    ) -> Result<Vec<u8>, StoreError>
    where
        F: std::future::Future<Output = Result<Vec<u8>, StoreError>>,
    {
        let stored = || {
            std::fs::read(self.blob_path(digest))
                .ok()
                .filter(|b| &Digest::of(b) == digest)
        };
        // Present: no lock needed (a stored blob is whole and verified).
        if let Some(b) = stored() {
            debug!(%digest, "{what} present");
            return Ok(b);
        }
        let _lock = self.blob_lock(digest, None).await?;
        if let Some(b) = stored() {
            debug!(%digest, "{what} present");
            return Ok(b);
        }
        let b = fetch.await?;
        verify(what, digest, &b)?;
        write_atomic(&self.root.join("tmp"), &self.blob_path(digest), &b)?;
        Ok(b)
    }

    /// A `flock` on `images/lock`: shared for pulls and lookups, exclusive for [`Self::gc`].
    /// Blocks while the other kind is held (in this process or another); released on drop.
    fn store_lock(root: &Path, exclusive: bool) -> Result<std::fs::File, StoreError> {
        let p = root.join("lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .map_err(io("open", &p))?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        rustix::fs::flock(&f, op).map_err(|e| io("lock", &p)(e.into()))?;
        Ok(f)
    }

    /// The shared store lock, taken off the async threads (gc may hold it for a moment).
    async fn shared_lock(&self) -> Result<std::fs::File, StoreError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || Self::store_lock(&root, false)).await?
    }

    /// The image recorded under `source`'s name, if it and all its layers are present, marked as
    /// used now. No network.
    pub fn get(&self, source: &Source) -> Result<Option<Image>, StoreError> {
        let _shared = Self::store_lock(&self.root, false)?;
        let img = self.get_unlocked(source)?;
        if let Some(img) = &img
            && let Err(e) = self.touch(img)
        {
            // A read-only store still answers.
            warn!(image = %img.name, error = %e, "could not mark the image used");
        }
        Ok(img)
    }

    fn get_unlocked(&self, source: &Source) -> Result<Option<Image>, StoreError> {
        let name = source.to_string();
        let Some(rec) = self.read_record(&self.record_path(&name))? else {
            return Ok(None);
        };
        if !rec.layers.iter().all(|l| self.layer_dir(l).is_dir()) {
            return Ok(None);
        }
        let cfg_path = self.blob_path(&rec.config_digest);
        let Ok(bytes) = std::fs::read(&cfg_path) else {
            return Ok(None);
        };
        let config =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Config(name.clone(), e))?;
        Ok(Some(Image {
            name,
            manifest_digest: rec.manifest_digest,
            config_digest: rec.config_digest,
            config,
            layers: rec.layers,
        }))
    }

    /// The image if present (marking it used), else pulls it.
    pub async fn ensure(&self, source: &Source, opts: &PullOptions) -> Result<Image, StoreError> {
        let name = source.to_string();
        let lock = self.lock_for(&name);
        let _guard = lock.lock().await;
        let _shared = self.shared_lock().await?;
        if let Some(img) = self.get_unlocked(source)? {
            self.touch(&img)?;
            debug!(image = %name, "image present, no pull");
            return Ok(img);
        }
        self.pull_locked(source, opts).await
    }

    /// Resolves `source` again (a registry tag may have moved) and fetches what is missing.
    pub async fn pull(&self, source: &Source, opts: &PullOptions) -> Result<Image, StoreError> {
        let lock = self.lock_for(&source.to_string());
        let _guard = lock.lock().await;
        let _shared = self.shared_lock().await?;
        self.pull_locked(source, opts).await
    }

    /// Pulls with the image's lock and the shared store lock held (until the record is written,
    /// so gc never sees the layers of this pull without the record that names them).
    async fn pull_locked(&self, source: &Source, opts: &PullOptions) -> Result<Image, StoreError> {
        let name = source.to_string();
        let mut archive_dir = None;
        let fetcher = match source {
            Source::Registry(r) => {
                let roots = self
                    .extra_roots
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                Fetcher::registry(r.clone(), &self.options, &opts.auth, roots).await?
            }
            Source::Layout { dir, tag } => Fetcher::Layout {
                dir: dir.clone(),
                tag: tag.clone(),
            },
            Source::Archive { file, tag } => {
                let dir = self.root.join("tmp").join(unique("archive"));
                let (f, d) = (file.clone(), dir.clone());
                tokio::task::spawn_blocking(move || extract_archive(&f, &d)).await??;
                archive_dir = Some(dir.clone());
                Fetcher::Layout {
                    dir,
                    tag: tag.clone(),
                }
            }
        };
        let result = self.fetch_image(&name, &fetcher, opts).await;
        if let Some(d) = archive_dir {
            let _ = remove_any(&d);
        }
        let img = result?;
        info!(image = %name, digest = %img.manifest_digest, layers = img.layers.len(), "image ready");
        Ok(img)
    }

    async fn fetch_image(
        &self,
        name: &str,
        fetcher: &Fetcher,
        opts: &PullOptions,
    ) -> Result<Image, StoreError> {
        let report = |e: &PullEvent| {
            if let Some(p) = &opts.progress {
                p(e)
            }
        };
        // What is fetched by digest from a registry is fetched once (see `small_blob_once`); a
        // layout is read where it is.
        let network = matches!(fetcher, Fetcher::Registry { .. });
        let (bytes, digest) = match fetcher.pinned() {
            Some(want) if network => {
                let top = async { fetcher.top_manifest().await.map(|(b, _)| b) };
                let what = format!("manifest of {name}");
                (self.small_blob_once(&want, &what, top).await?, want)
            }
            _ => fetcher.top_manifest().await?,
        };
        let parse = |b: &[u8]| {
            Document::parse(b, None).map_err(|e| StoreError::Manifest(name.to_owned(), e))
        };
        let (manifest, manifest_bytes, manifest_digest): (ImageManifest, _, _) =
            match parse(&bytes)? {
                Document::Image(m) => (m, bytes, digest),
                Document::Index(entries) => {
                    let entry = manifest::select_platform(&entries)
                        .map_err(|e| StoreError::Manifest(name.to_owned(), e))?
                        .clone();
                    let what = format!("manifest of {name}");
                    let b = if network {
                        let fetch = fetcher.manifest_by_digest(&entry.digest);
                        self.small_blob_once(&entry.digest, &what, fetch).await?
                    } else {
                        let b = fetcher.manifest_by_digest(&entry.digest).await?;
                        verify(&what, &entry.digest, &b)?;
                        b
                    };
                    match parse(&b)? {
                        Document::Image(m) => (m, b, entry.digest),
                        Document::Index(_) => {
                            return Err(StoreError::Manifest(
                                name.to_owned(),
                                ManifestError::NoPlatform,
                            ));
                        }
                    }
                }
            };
        report(&PullEvent::Resolved {
            manifest: manifest_digest.clone(),
            layers: manifest
                .layers
                .iter()
                .map(|l| (l.digest.clone(), l.size))
                .collect(),
        });
        let config_what = format!("config of {name}");
        let config_bytes = if network {
            let fetch = fetcher.small_blob(&manifest.config);
            self.small_blob_once(&manifest.config.digest, &config_what, fetch)
                .await?
        } else {
            match std::fs::read(self.blob_path(&manifest.config.digest)) {
                Ok(b) if Digest::of(&b) == manifest.config.digest => b,
                _ => {
                    let b = fetcher.small_blob(&manifest.config).await?;
                    verify(&config_what, &manifest.config.digest, &b)?;
                    b
                }
            }
        };
        let config: ImageConfig = serde_json::from_slice(&config_bytes)
            .map_err(|e| StoreError::Config(name.to_owned(), e))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::LayerCount {
                diff_ids: config.rootfs.diff_ids.len(),
                layers: manifest.layers.len(),
            });
        }
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            self.fetch_layer(fetcher, layer, diff_id, &report).await?;
        }
        // Every part verified: the blobs, then the record that names them.
        self.write_blob(&manifest_digest, &manifest_bytes)?;
        self.write_blob(&manifest.config.digest, &config_bytes)?;
        let img = Image {
            name: name.to_owned(),
            manifest_digest,
            config_digest: manifest.config.digest.clone(),
            config,
            layers: manifest.layers.iter().map(|l| l.digest.clone()).collect(),
        };
        self.touch(&img)?;
        Ok(img)
    }

    async fn fetch_layer(
        &self,
        fetcher: &Fetcher,
        layer: &Descriptor,
        diff_id: &Digest,
        report: &(dyn Fn(&PullEvent) + Sync),
    ) -> Result<(), StoreError> {
        let dir = self.layer_dir(&layer.digest);
        // Present (the common case): no lock needed, a layer is renamed in whole.
        if dir.is_dir() {
            report(&PullEvent::LayerPresent(layer.digest.clone()));
            return Ok(());
        }
        // Whoever takes the lock second (in this process or another) finds the layer here.
        let _lock = self.blob_lock(&layer.digest, Some(report)).await?;
        if dir.is_dir() {
            report(&PullEvent::LayerPresent(layer.digest.clone()));
            return Ok(());
        }
        let tmp = self.root.join("tmp");
        let (blob, download) = fetcher.layer_blob(layer, &tmp, report).await?;
        let work = TmpPath(tmp.join(unique("layer")));
        std::fs::create_dir(&work.0).map_err(io("create", &work.0))?;
        let (d, id) = (layer.digest.clone(), diff_id.clone());
        // The temp paths go with the task: removed when it ends, even if this pull is dropped.
        let res = tokio::task::spawn_blocking(move || {
            let res = match &download {
                // oci-client's pull_blob hashed the blob as it streamed and failed on a digest
                // other than the layer's: reading 50 MB again to hash it costs ~60 ms here.
                Some(_) => unpack::unpack_verified(&blob, Some(&id), &work.0),
                None => unpack::unpack_layer(&blob, &d, Some(&id), &work.0),
            };
            drop(download);
            (res, work)
        })
        .await?;
        let (unpacked, work) = match res {
            (Ok(u), work) => (u, work),
            (Err(e), _) => return Err(StoreError::Unpack(layer.digest.clone(), e)),
        };
        let meta = LayerMeta {
            diff_id: unpacked.diff_id,
            unpacked_size: unpacked.uncompressed_size,
        };
        let meta_path = dir.with_extension("json");
        write_atomic(
            &tmp,
            &meta_path,
            &serde_json::to_vec(&meta).unwrap_or_default(),
        )?;
        if let Err(e) = std::fs::rename(&work.0, &dir) {
            // Another process finished the same layer first (one that takes no blob lock):
            // theirs is as good as ours.
            if !dir.is_dir() {
                return Err(io("rename", &dir)(e));
            }
        }
        report(&PullEvent::LayerDone(layer.digest.clone()));
        Ok(())
    }

    fn write_blob(&self, d: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let p = self.blob_path(d);
        if p.exists() {
            return Ok(());
        }
        write_atomic(&self.root.join("tmp"), &p, bytes)
    }

    fn read_record(&self, path: &Path) -> Result<Option<Record>, StoreError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Record(path.to_owned(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", path)(e)),
        }
    }

    /// Records `img` under its name, marked as used now.
    fn touch(&self, img: &Image) -> Result<(), StoreError> {
        let ms = now_ms();
        let rec = Record {
            name: img.name.clone(),
            manifest_digest: img.manifest_digest.clone(),
            config_digest: img.config_digest.clone(),
            layers: img.layers.clone(),
            last_used: ms / 1000,
            last_used_ms: Some(ms),
        };
        let bytes = serde_json::to_vec_pretty(&rec).unwrap_or_default();
        write_atomic(&self.root.join("tmp"), &self.record_path(&img.name), &bytes)
    }

    /// Names of all images in the store with their last use (unix seconds), least recently used
    /// first.
    pub fn list(&self) -> Result<Vec<(String, Digest, u64)>, StoreError> {
        let mut records = self.records()?;
        records.sort_by_key(|(_, r)| r.used_ms());
        Ok(records
            .into_iter()
            .map(|(_, r)| {
                let secs = r.used_ms() / 1000;
                (r.name, r.manifest_digest, secs)
            })
            .collect())
    }

    fn records(&self) -> Result<Vec<(PathBuf, Record)>, StoreError> {
        let dir = self.root.join("records");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let p = e.map_err(io("list", &dir))?.path();
            if let Some(r) = self.read_record(&p)? {
                out.push((p, r));
            }
        }
        Ok(out)
    }

    /// Total unpacked size of the stored layers.
    pub fn size(&self) -> Result<u64, StoreError> {
        Ok(self.layer_sizes()?.values().sum())
    }

    fn layer_sizes(&self) -> Result<HashMap<String, u64>, StoreError> {
        let dir = self.root.join("layers");
        let mut out = HashMap::new();
        for e in std::fs::read_dir(&dir).map_err(io("list", &dir))? {
            let p = e.map_err(io("list", &dir))?.path();
            if p.extension().is_some_and(|x| x == "json") {
                continue;
            }
            let size = std::fs::read(p.with_extension("json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<LayerMeta>(&b).ok())
                .map_or(0, |m| m.unpacked_size);
            if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
                out.insert(n.to_owned(), size);
            }
        }
        Ok(out)
    }

    /// Evicts least recently used images whose names are not in `in_use` while the store is above
    /// its limit, then removes layers and blobs no remaining image references.
    ///
    /// `in_use` holds the names ([`Source`] as a string) of the images of every live pod. A layer
    /// that a mounted overlay uses is kept whatever the records say. Waits for pulls in progress
    /// (in any process) to finish and holds them off while it runs: call it from a blocking
    /// thread in async code, or use [`Self::gc_async`].
    pub fn gc(&self, in_use: &HashSet<String>) -> Result<GcReport, StoreError> {
        let exclusive = Self::store_lock(&self.root, true)?;
        self.gc_locked(&exclusive, in_use)
    }

    /// [`Self::gc`] for async callers: waits for pulls in progress off the async threads, then
    /// asks `in_use` for the images in use, and only then decides. Asked while no pull can
    /// progress, `in_use` sees every pod whose image a pull or lookup already handed out, as long
    /// as the caller registers a pod before it ensures the pod's images: no pod loses its image.
    pub async fn gc_async(
        self: &Arc<Self>,
        in_use: impl FnOnce() -> HashSet<String>,
    ) -> Result<GcReport, StoreError> {
        let root = self.root.clone();
        let exclusive =
            tokio::task::spawn_blocking(move || Self::store_lock(&root, true)).await??;
        let in_use = in_use();
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.gc_locked(&exclusive, &in_use)).await?
    }

    /// The work of [`Self::gc`], with the store lock held exclusively (`_exclusive`).
    fn gc_locked(
        &self,
        _exclusive: &std::fs::File,
        in_use: &HashSet<String>,
    ) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        let sizes = self.layer_sizes()?;
        let mounted = mounted_layers(sizes.keys());
        let mut records = self.records()?;
        // Least recently used first; the name breaks ties so the order is always the same.
        records.sort_by(|(_, a), (_, b)| {
            a.used_ms()
                .cmp(&b.used_ms())
                .then_with(|| a.name.cmp(&b.name))
        });
        let live_size = |recs: &[(PathBuf, Record)]| -> u64 {
            let mut layers: HashSet<&str> = recs
                .iter()
                .flat_map(|(_, r)| r.layers.iter().map(|l| l.hex()))
                .collect();
            layers.extend(mounted.iter().map(String::as_str));
            layers
                .iter()
                .map(|l| sizes.get(*l).copied().unwrap_or(0))
                .sum()
        };
        if let Some(limit) = self.options.cache_limit_bytes {
            let mut i = 0;
            while i < records.len() && live_size(&records) > limit {
                if in_use.contains(&records[i].1.name) {
                    i += 1;
                    continue;
                }
                let (path, rec) = records.remove(i);
                std::fs::remove_file(&path).map_err(io("remove", &path))?;
                info!(image = %rec.name, last_used_ms = rec.used_ms(), "evicted from image cache");
                report.evicted_images.push(rec.name);
            }
        }
        let keep: HashSet<String> = records
            .iter()
            .flat_map(|(_, r)| r.layers.iter().map(|l| l.hex().to_owned()))
            .chain(mounted.iter().cloned())
            .collect();
        let mut gone: Vec<&String> = sizes.keys().filter(|h| !keep.contains(*h)).collect();
        gone.sort();
        for hex in gone {
            let dir = self.root.join("layers").join(hex);
            remove_any(&dir).map_err(io("remove", &dir))?;
            let _ = std::fs::remove_file(dir.with_extension("json"));
            if let Ok(d) = format!("sha256:{hex}").parse() {
                report.removed_layers.push(d);
            }
        }
        // Manifests and configs of images no longer recorded.
        let blobs: HashSet<String> = records
            .iter()
            .flat_map(|(_, r)| [r.manifest_digest.hex(), r.config_digest.hex()])
            .map(str::to_owned)
            .collect();
        let dir = self.root.join("blobs/sha256");
        for e in std::fs::read_dir(&dir).map_err(io("list", &dir))?.flatten() {
            if e.file_name().to_str().is_some_and(|n| !blobs.contains(n)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        // Blob lock files: nobody holds or waits for one while gc holds the store exclusively.
        let locks = self.root.join("locks");
        for e in std::fs::read_dir(&locks).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        report.size_after = live_size(&records);
        Ok(report)
    }
}

/// The layers (directory names under `<store>/layers/`) among `names` that a mounted filesystem
/// names in its options (an overlay's `lowerdir`), from this mount namespace's mount table.
/// Matched by `/layers/<hex>` alone, so a data dir reached through a symlink or written with
/// escapes in the table still matches; a false match only keeps a layer.
fn mounted_layers<'a>(names: impl Iterator<Item = &'a String>) -> HashSet<String> {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return HashSet::new();
    };
    names
        .filter(|hex| table.contains(&format!("/layers/{hex}")))
        .cloned()
        .collect()
}

fn verify(what: &str, expected: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
    let actual = Digest::of(bytes);
    if &actual != expected {
        return Err(StoreError::Digest {
            what: what.to_owned(),
            expected: expected.clone(),
            actual,
        });
    }
    Ok(())
}

fn write_atomic(tmp_dir: &Path, dst: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = TmpPath(tmp_dir.join(unique("write")));
    std::fs::write(&tmp.0, bytes).map_err(io("write", &tmp.0))?;
    std::fs::rename(&tmp.0, dst).map_err(io("rename", dst))
}

/// Whether `err` (or what caused it) is a TLS certificate the client refused.
fn is_certificate_error(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return matches!(
                tls,
                rustls::Error::InvalidCertificate(_) | rustls::Error::InvalidCertRevocationList(_)
            );
        }
        // io::Error::source skips the error it wraps; look at that one too.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && is_certificate_error(inner)
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// The certificates (DER) of the `CERTIFICATE` blocks in `pem`, each checked to be a usable
/// trust anchor.
fn parse_roots(pem: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut out = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| StoreError::Certificate(format!("invalid PEM: {e}")))?;
        let mut check = rustls::RootCertStore::empty();
        check
            .add(cert.clone())
            .map_err(|e| StoreError::Certificate(e.to_string()))?;
        out.push(cert.to_vec());
    }
    if out.is_empty() {
        return Err(StoreError::Certificate("no CERTIFICATE in PEM".into()));
    }
    Ok(out)
}

/// Removes the entries of `<root>/tmp` whose owner is gone: leftovers of interrupted work (a
/// process killed mid-download), which belong to nobody now.
fn clean_tmp(root: &Path) {
    let tmp = root.join("tmp");
    let Ok(rd) = std::fs::read_dir(&tmp) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if !name.to_str().is_some_and(owner_alive) {
            debug!(entry = ?name, "removing a dead pull's temp file");
            if let Err(err) = remove_any(&e.path()) {
                warn!(path = %e.path().display(), error = %err, "could not remove temp file");
            }
        }
    }
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn extract_archive(file: &Path, dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let f = std::fs::File::open(file).map_err(io("open", file))?;
    let mut a = tar::Archive::new(std::io::BufReader::new(f));
    a.unpack(dir).map_err(io("unpack archive", file))
}

/// Where blobs come from.
enum Fetcher {
    Registry {
        client: oci_client::Client,
        reference: oci_client::Reference,
        auth: oci_client::secrets::RegistryAuth,
    },
    Layout {
        dir: PathBuf,
        tag: Option<String>,
    },
}

impl Fetcher {
    /// A client for the registry of `reference`. A registry reached over plain HTTP by default
    /// (loopback, or listed as insecure) is first tried over HTTPS, as docker does, so that a
    /// cluster registry on loopback serving TLS works; plain HTTP is used when that fails for
    /// any reason but the server's certificate (which is reported as it is, never downgraded).
    /// Basic credentials are exchanged for a token at once, so a wrong password is reported as
    /// the registry's refusal.
    async fn registry(
        reference: oci_client::Reference,
        options: &StoreOptions,
        auth: &Auth,
        extra_roots: Vec<Vec<u8>>,
    ) -> Result<Self, StoreError> {
        let registry = reference.resolve_registry().to_owned();
        let mut plain_http = false;
        if super::is_insecure(&registry, &options.insecure_registries) {
            // A throwaway client: the anonymous token it may get must not be reused.
            let probe = Self::registry_with(
                reference.clone(),
                &Auth::Anonymous,
                extra_roots.clone(),
                false,
            )?;
            if let Fetcher::Registry { client, .. } = &probe {
                let anonymous = oci_client::secrets::RegistryAuth::Anonymous;
                match client
                    .auth(&reference, &anonymous, oci_client::RegistryOperation::Pull)
                    .await
                {
                    Err(oci_client::errors::OciDistributionError::RequestError(e))
                        if !is_certificate_error(&e) =>
                    {
                        debug!(%registry, error = %e, "no HTTPS, using plain HTTP");
                        plain_http = true;
                    }
                    // HTTPS answered (even if only to refuse): the pull goes on over it.
                    _ => {}
                }
            }
        }
        let fetcher = Self::registry_with(reference, auth, extra_roots, plain_http)?;
        if let (
            Auth::Basic { .. },
            Fetcher::Registry {
                client,
                reference,
                auth,
            },
        ) = (auth, &fetcher)
        {
            let exchange = client
                .auth(reference, auth, oci_client::RegistryOperation::Pull)
                .await;
            if let Err(e @ oci_client::errors::OciDistributionError::AuthenticationFailure(_)) =
                exchange
            {
                return Err(Self::reg_err(reference)(e));
            }
        }
        Ok(fetcher)
    }

    /// A registry client for `reference` over HTTPS (or plain HTTP when `plain_http`), trusting
    /// `extra_roots` (DER) besides the system's roots.
    fn registry_with(
        reference: oci_client::Reference,
        auth: &Auth,
        extra_roots: Vec<Vec<u8>>,
        plain_http: bool,
    ) -> Result<Self, StoreError> {
        install_crypto();
        let registry = reference.resolve_registry().to_owned();
        let protocol = if plain_http {
            oci_client::client::ClientProtocol::HttpsExcept(vec![registry])
        } else {
            oci_client::client::ClientProtocol::Https
        };
        let config = oci_client::client::ClientConfig {
            protocol,
            platform_resolver: Some(Box::new(oci_client::client::linux_amd64_resolver)),
            extra_root_certificates: extra_roots
                .into_iter()
                .map(|data| oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Der,
                    data,
                })
                .collect(),
            ..Default::default()
        };
        // Not `Client::new`: it falls back to a default client (without our roots) on error.
        let client = oci_client::Client::try_from(config).map_err(Self::reg_err(&reference))?;
        let auth = match auth {
            Auth::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            Auth::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
            Auth::Bearer(t) => oci_client::secrets::RegistryAuth::Bearer(t.clone()),
        };
        Ok(Fetcher::Registry {
            client,
            reference,
            auth,
        })
    }

    fn reg_err(
        reference: &oci_client::Reference,
    ) -> impl FnOnce(oci_client::errors::OciDistributionError) -> StoreError {
        let reference = reference.whole();
        move |source| StoreError::Registry { reference, source }
    }

    /// The manifest the source names, with its digest (verified against the reference when it has one).
    async fn top_manifest(&self) -> Result<(Vec<u8>, Digest), StoreError> {
        match self {
            Fetcher::Registry {
                client,
                reference,
                auth,
            } => {
                let (bytes, digest) = client
                    .pull_manifest_raw(reference, auth, manifest::ACCEPTED)
                    .await
                    .map_err(Self::reg_err(reference))?;
                let actual = Digest::of(&bytes);
                if let Some(want) = reference.digest().and_then(|d| d.parse::<Digest>().ok()) {
                    verify(&format!("manifest of {}", reference.whole()), &want, &bytes)?;
                }
                debug!(reference = %reference.whole(), %digest, "manifest fetched");
                Ok((bytes.to_vec(), actual))
            }
            Fetcher::Layout { dir, tag } => {
                let index_path = dir.join("index.json");
                let bytes = std::fs::read(&index_path).map_err(io("read", &index_path))?;
                let index = match Document::parse(&bytes, Some(manifest::OCI_INDEX)) {
                    Ok(Document::Index(entries)) => entries,
                    _ => {
                        return Err(StoreError::Layout(
                            dir.clone(),
                            "index.json is not an image index".into(),
                        ));
                    }
                };
                let entry = match tag {
                    Some(t) => index.iter().find(|d| {
                        d.annotations
                            .as_ref()
                            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
                            .is_some_and(|n| n == t)
                    }),
                    None if index.len() == 1 => index.first(),
                    None => None,
                }
                .ok_or_else(|| {
                    StoreError::Layout(
                        dir.clone(),
                        format!("no single manifest for tag {:?} in index.json", tag),
                    )
                })?;
                let b = self.manifest_by_digest(&entry.digest).await?;
                verify("manifest in layout", &entry.digest, &b)?;
                Ok((b, entry.digest.clone()))
            }
        }
    }

    /// The digest the reference of a registry source pins, if any.
    fn pinned(&self) -> Option<Digest> {
        match self {
            Fetcher::Registry { reference, .. } => reference.digest().and_then(|d| d.parse().ok()),
            Fetcher::Layout { .. } => None,
        }
    }

    async fn manifest_by_digest(&self, d: &Digest) -> Result<Vec<u8>, StoreError> {
        match self {
            Fetcher::Registry {
                client,
                reference,
                auth,
            } => {
                let r = oci_client::Reference::with_digest(
                    reference.resolve_registry().to_owned(),
                    reference.repository().to_owned(),
                    d.to_string(),
                );
                let (bytes, _) = client
                    .pull_manifest_raw(&r, auth, manifest::ACCEPTED)
                    .await
                    .map_err(Self::reg_err(&r))?;
                Ok(bytes.to_vec())
            }
            Fetcher::Layout { dir, .. } => {
                let p = dir.join("blobs/sha256").join(d.hex());
                std::fs::read(&p).map_err(io("read", &p))
            }
        }
    }

    async fn small_blob(&self, desc: &Descriptor) -> Result<Vec<u8>, StoreError> {
        match self {
            Fetcher::Registry {
                client, reference, ..
            } => {
                let mut out = Vec::new();
                client
                    .pull_blob(reference, desc.digest.to_string().as_str(), &mut out)
                    .await
                    .map_err(Self::reg_err(reference))?;
                Ok(out)
            }
            Fetcher::Layout { .. } => self.manifest_by_digest(&desc.digest).await,
        }
    }

    /// A local file holding the layer blob, with a guard when it is a temporary download
    /// (removed with the guard), already checked against `desc.digest` by `pull_blob` while it
    /// streamed. The download is named `blob-<owner>-<n>-<hex>`, so that a pull waiting for
    /// it in another process can show how far it got.
    async fn layer_blob(
        &self,
        desc: &Descriptor,
        tmp: &Path,
        report: &(dyn Fn(&PullEvent) + Sync),
    ) -> Result<(PathBuf, Option<TmpPath>), StoreError> {
        match self {
            Fetcher::Registry {
                client, reference, ..
            } => {
                let path = tmp.join(format!("{}-{}", unique("blob"), desc.digest.hex()));
                let guard = TmpPath(path.clone());
                let file = tokio::fs::File::create(&path)
                    .await
                    .map_err(io("create", &path))?;
                let counting = Counting {
                    inner: file,
                    done: 0,
                    digest: desc.digest.clone(),
                    report,
                    last: 0,
                };
                client
                    .pull_blob(reference, desc.digest.to_string().as_str(), counting)
                    .await
                    .map_err(Self::reg_err(reference))?;
                Ok((path, Some(guard)))
            }
            Fetcher::Layout { dir, .. } => {
                Ok((dir.join("blobs/sha256").join(desc.digest.hex()), None))
            }
        }
    }
}

/// An AsyncWrite that reports how much went through it.
struct Counting<'a, W> {
    inner: W,
    done: u64,
    last: u64,
    digest: Digest,
    report: &'a (dyn Fn(&PullEvent) + Sync),
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counting<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let r = std::pin::Pin::new(&mut this.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &r {
            this.done += *n as u64;
            if this.done - this.last >= 256 * 1024 {
                this.last = this.done;
                (this.report)(&PullEvent::LayerProgress {
                    digest: this.digest.clone(),
                    done: this.done,
                });
            }
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        (this.report)(&PullEvent::LayerProgress {
            digest: this.digest.clone(),
            done: this.done,
        });
        std::pin::Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_found_through_io_errors() {
        let cert = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, cert);
        assert!(is_certificate_error(&wrapped));
        let not_tls = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
        let wrapped = std::io::Error::new(std::io::ErrorKind::InvalidData, not_tls);
        assert!(!is_certificate_error(&wrapped));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_certificate_error(&refused));
    }

    #[test]
    fn records_of_older_versions_keep_their_use_time() {
        let d1 = format!("sha256:{}", "1".repeat(64));
        let d2 = format!("sha256:{}", "2".repeat(64));
        let old = format!(
            r#"{{"name":"x","manifest_digest":"{d1}","config_digest":"{d2}","layers":["{d1}"],"last_used":1700000000}}"#
        );
        let r: Record = serde_json::from_str(&old).unwrap();
        assert_eq!(r.used_ms(), 1_700_000_000_000);
        let new = Record {
            last_used: 1_700_000_000,
            last_used_ms: Some(1_700_000_000_123),
            ..r
        };
        let back: Record = serde_json::from_slice(&serde_json::to_vec(&new).unwrap()).unwrap();
        assert_eq!(back.used_ms(), 1_700_000_000_123);
        assert_eq!(back.last_used, 1_700_000_000, "older versions read seconds");
    }

    #[test]
    fn temp_files_belong_to_live_processes_only() {
        let mine = unique("blob");
        assert!(owner_alive(&mine), "{mine}");
        let me = std::process::id();
        assert!(
            owner_alive(&format!("write-{me}-3")),
            "older versions' names"
        );
        // The same pid started at another time (a reused pid) is not the owner.
        assert!(!owner_alive(&format!("blob-{me}.1-0-abc")));
        // No such process (pid_max is at most 2^22).
        assert!(!owner_alive("layer-99999999.5-1"));
        assert!(!owner_alive("layer-99999999-1"));
        assert!(!owner_alive("garbage"));
        assert!(!owner_alive(""));
    }

    #[tokio::test]
    async fn temp_paths_are_removed_when_dropped_and_dead_owners_are_cleaned() {
        let dir = std::env::temp_dir().join(unique("store-test"));
        std::fs::create_dir_all(dir.join("tmp/x/y")).unwrap();
        drop(TmpPath(dir.join("tmp/x")));
        assert!(!dir.join("tmp/x").exists());
        let dead = dir.join("tmp/blob-99999999.7-0-ab");
        let live = dir.join("tmp").join(unique("blob"));
        std::fs::write(&dead, b"partial").unwrap();
        std::fs::write(&live, b"partial").unwrap();
        clean_tmp(&dir);
        assert!(!dead.exists());
        assert!(live.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn use_times_are_strictly_increasing() {
        let times: Vec<u64> = (0..1000).map(|_| now_ms()).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn roots_must_be_certificates() {
        for bad in [
            &b""[..],
            b"hello",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        ] {
            assert!(
                matches!(parse_roots(bad), Err(StoreError::Certificate(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
