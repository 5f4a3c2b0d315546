//! [`Registry`]: the registry's operations over a [`BlobStore`] and the repository metadata, free of
//! HTTP. The router in [`crate::http`] maps requests onto these methods; the admin API and the
//! maintenance task (lifecycle, upload cleanup, garbage collection) call them directly.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::auth::Authority;
use crate::digest::Digest;
use crate::error::{ErrorCode, RegistryError};
use crate::lifecycle;
use crate::manifest::{self, Descriptor};
use crate::meta::{ManifestRecord, Meta, RepoRecord, TagMutability};
use crate::names::{Reference, RepoName, Tag};
use crate::store::fs::FsStore;
use crate::store::{BlobStore, ByteStream, StoreError, UploadInfo};

/// Largest manifest accepted (the spec asks registries to accept at least 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Age after which a link to a blob that does not exist is dropped by the garbage collector.
const DANGLING_LINK_SECS: u64 = 600;

/// Settings of a registry instance.
#[derive(Debug, Clone)]
pub struct Config {
    /// Require credentials on every request (default true).
    pub auth: bool,
    /// The token endpoint advertised in `WWW-Authenticate`; `None`: `<scheme>://<Host>/token`.
    pub realm: Option<String>,
    /// Scheme used to build the realm from the Host header.
    pub scheme: String,
    /// The `service` of the Bearer challenge.
    pub service: String,
    pub max_manifest_bytes: usize,
    /// Blobs younger than this are never collected (uploads in flight, manifests not pushed yet).
    pub gc_grace: Duration,
    /// Upload sessions idle longer than this are removed.
    pub upload_ttl: Duration,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            auth: true,
            realm: None,
            scheme: "https".into(),
            service: "nodeless-registry".into(),
            max_manifest_bytes: MAX_MANIFEST_BYTES,
            gc_grace: Duration::from_secs(3600),
            upload_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// A repository as the admin API describes it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RepositorySummary {
    pub repository_name: String,
    pub created_at: u64,
    pub image_tag_mutability: TagMutability,
    pub image_count: usize,
}

/// An image as `describe-images` shows it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageDetail {
    pub image_digest: String,
    pub image_tags: Vec<String>,
    pub image_size_in_bytes: u64,
    pub image_pushed_at: u64,
    pub image_manifest_media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_media_type: Option<String>,
}

/// What a garbage collection did (or would do, in a dry run).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    pub blobs_deleted: Vec<String>,
    pub bytes_freed: u64,
    pub links_dropped: usize,
    pub blobs_kept: usize,
}

/// A manifest fetched from a repository.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// The result of a manifest push.
#[derive(Debug, Clone)]
pub struct PushedManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

/// The registry.
pub struct Registry {
    store: Arc<dyn BlobStore>,
    meta: tokio::sync::Mutex<Meta>,
    authority: Authority,
    config: Config,
    data_dir: PathBuf,
    upload_locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held (flock) while the registry is open.
    _lock: std::fs::File,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("data_dir", &self.data_dir)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn name_unknown(name: &str) -> RegistryError {
    RegistryError::spec(
        ErrorCode::NameUnknown,
        format!(
            "repository {name} does not exist; create it with `nodeless registry create-repository {name}`"
        ),
    )
}

fn repo<'a>(meta: &'a Meta, name: &RepoName) -> Result<&'a RepoRecord, RegistryError> {
    meta.repos
        .get(name)
        .ok_or_else(|| name_unknown(name.as_str()))
}

fn repo_mut<'a>(meta: &'a mut Meta, name: &RepoName) -> Result<&'a mut RepoRecord, RegistryError> {
    meta.repos
        .get_mut(name)
        .ok_or_else(|| name_unknown(name.as_str()))
}

fn summary(r: &RepoRecord) -> RepositorySummary {
    RepositorySummary {
        repository_name: r.name.to_string(),
        created_at: r.created_at,
        image_tag_mutability: r.tag_mutability,
        image_count: r.manifests.len(),
    }
}

fn upload_unknown() -> RegistryError {
    RegistryError::spec(ErrorCode::BlobUploadUnknown, "upload unknown to registry")
}

/// Map a store error met while writing an upload chunk.
fn upload_error(e: StoreError) -> RegistryError {
    match e {
        StoreError::NotFound | StoreError::InvalidUploadId => upload_unknown(),
        StoreError::OffsetMismatch { current, requested } => RegistryError::spec(
            ErrorCode::RangeInvalid,
            format!("upload is at offset {current}, the chunk starts at {requested}"),
        ),
        StoreError::SizeMismatch { .. } => {
            RegistryError::spec(ErrorCode::BlobUploadInvalid, e.to_string())
        }
        StoreError::DigestMismatch { .. } => {
            RegistryError::spec(ErrorCode::DigestInvalid, e.to_string())
        }
        StoreError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionAborted => {
            RegistryError::spec(
                ErrorCode::BlobUploadInvalid,
                format!("request body ended early: {io}"),
            )
        }
        other => RegistryError::Store(other),
    }
}

impl Registry {
    /// Open a registry in `data_dir` with a filesystem store and default settings.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Registry, RegistryError> {
        Registry::open_with(data_dir, Config::default())
    }

    /// Open a registry in `data_dir` with a filesystem store.
    pub fn open_with(
        data_dir: impl AsRef<Path>,
        config: Config,
    ) -> Result<Registry, RegistryError> {
        let store = FsStore::open(data_dir.as_ref().join("store"))?;
        Registry::with_store(data_dir, Arc::new(store), config)
    }

    /// Open a registry whose blobs live in `store`; metadata and credentials live in `data_dir`.
    pub fn with_store(
        data_dir: impl AsRef<Path>,
        store: Arc<dyn BlobStore>,
        config: Config,
    ) -> Result<Registry, RegistryError> {
        let data_dir = data_dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&data_dir)?;
        // One registry per data directory: the metadata lives in memory.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(data_dir.join("lock"))?;
        if lock.try_lock().is_err() {
            return Err(RegistryError::Locked(data_dir.display().to_string()));
        }
        let meta = Meta::load(&data_dir.join("repositories"))?;
        let authority = Authority::load_or_create(&data_dir.join("auth"))?;
        Ok(Registry {
            store,
            meta: tokio::sync::Mutex::new(meta),
            authority,
            config,
            data_dir,
            upload_locks: std::sync::Mutex::new(HashMap::new()),
            _lock: lock,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn authority(&self) -> &Authority {
        &self.authority
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn store(&self) -> &Arc<dyn BlobStore> {
        &self.store
    }

    fn upload_lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.upload_locks.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(id.to_string()).or_default().clone()
    }

    // ---- repositories -------------------------------------------------------------------------

    pub async fn create_repository(
        &self,
        name: &RepoName,
        mutability: TagMutability,
    ) -> Result<RepositorySummary, RegistryError> {
        let mut meta = self.meta.lock().await;
        if meta.repos.contains_key(name) {
            return Err(RegistryError::RepositoryExists(name.to_string()));
        }
        let rec = RepoRecord::new(name.clone(), now_secs(), mutability);
        let out = summary(&rec);
        meta.repos.insert(name.clone(), rec);
        if let Err(e) = meta.persist(name).await {
            meta.repos.remove(name);
            return Err(e.into());
        }
        Ok(out)
    }

    pub async fn describe_repositories(
        &self,
        names: Option<&[RepoName]>,
    ) -> Result<Vec<RepositorySummary>, RegistryError> {
        let meta = self.meta.lock().await;
        match names {
            None => Ok(meta.repos.values().map(summary).collect()),
            Some(ns) => ns.iter().map(|n| repo(&meta, n).map(summary)).collect(),
        }
    }

    pub async fn repository_exists(&self, name: &RepoName) -> bool {
        self.meta.lock().await.repos.contains_key(name)
    }

    /// Delete a repository; without `force` it must hold no images. Its blobs go at the next GC.
    pub async fn delete_repository(
        &self,
        name: &RepoName,
        force: bool,
    ) -> Result<RepositorySummary, RegistryError> {
        let mut meta = self.meta.lock().await;
        let r = repo(&meta, name)?;
        if !force && !r.manifests.is_empty() {
            return Err(RegistryError::RepositoryNotEmpty(name.to_string()));
        }
        let out = summary(r);
        let Some(removed) = meta.repos.remove(name) else {
            return Err(name_unknown(name.as_str()));
        };
        if let Err(e) = meta.persist(name).await {
            meta.repos.insert(name.clone(), removed);
            return Err(e.into());
        }
        Ok(out)
    }

    pub async fn describe_images(
        &self,
        name: &RepoName,
    ) -> Result<Vec<ImageDetail>, RegistryError> {
        let meta = self.meta.lock().await;
        let r = repo(&meta, name)?;
        Ok(r.manifests
            .iter()
            .map(|(d, m)| ImageDetail {
                image_digest: d.to_string(),
                image_tags: r.tags_of(d),
                image_size_in_bytes: m.image_size,
                image_pushed_at: m.pushed_at,
                image_manifest_media_type: m.media_type.clone(),
                artifact_media_type: m.artifact_type.clone(),
            })
            .collect())
    }

    pub async fn set_lifecycle_policy(
        &self,
        name: &RepoName,
        text: Option<&str>,
    ) -> Result<(), RegistryError> {
        if let Some(t) = text {
            lifecycle::parse(t).map_err(|e| RegistryError::BadRequest(e.to_string()))?;
        }
        let mut meta = self.meta.lock().await;
        let r = repo_mut(&mut meta, name)?;
        let old = std::mem::replace(&mut r.lifecycle_policy, text.map(str::to_string));
        if let Err(e) = meta.persist(name).await {
            if let Some(r) = meta.repos.get_mut(name) {
                r.lifecycle_policy = old;
            }
            return Err(e.into());
        }
        Ok(())
    }

    pub async fn lifecycle_policy(&self, name: &RepoName) -> Result<Option<String>, RegistryError> {
        let meta = self.meta.lock().await;
        Ok(repo(&meta, name)?.lifecycle_policy.clone())
    }

    /// Apply lifecycle policies (of `only`, or of every repository) at `now`. Returns the expired
    /// (repository, digest) pairs, including manifests removed with them (index children, referrers).
    pub async fn apply_lifecycle(
        &self,
        only: Option<&RepoName>,
        now: u64,
        dry_run: bool,
    ) -> Result<Vec<(String, String)>, RegistryError> {
        let mut meta = self.meta.lock().await;
        let names: Vec<RepoName> = match only {
            Some(n) => {
                repo(&meta, n)?;
                vec![n.clone()]
            }
            None => meta.repos.keys().cloned().collect(),
        };
        let mut out = Vec::new();
        for name in names {
            let Some(r) = meta.repos.get_mut(&name) else {
                continue;
            };
            let Some(text) = r.lifecycle_policy.clone() else {
                continue;
            };
            let Ok(policy) = lifecycle::parse(&text) else {
                continue;
            };
            let children = r.child_manifests();
            let images: Vec<lifecycle::Image> = r
                .manifests
                .iter()
                .filter(|(d, m)| !children.contains(*d) && m.subject.is_none())
                .map(|(d, m)| lifecycle::Image {
                    digest: d.clone(),
                    tags: r.tags_of(d),
                    pushed_at: m.pushed_at,
                })
                .collect();
            let expired = lifecycle::evaluate(&policy, &images, now);
            if expired.is_empty() {
                continue;
            }
            let before = r.clone();
            for (d, _) in expired {
                if dry_run {
                    out.push((name.to_string(), d.to_string()));
                } else {
                    for gone in r.remove_manifest(&d) {
                        out.push((name.to_string(), gone.to_string()));
                    }
                }
            }
            if !dry_run && let Err(e) = meta.persist(&name).await {
                meta.repos.insert(name.clone(), before);
                return Err(e.into());
            }
        }
        Ok(out)
    }

    /// Remove upload sessions idle for longer than the configured TTL; returns how many.
    pub async fn clean_uploads(&self) -> Result<usize, RegistryError> {
        let cutoff = now_secs().saturating_sub(self.config.upload_ttl.as_secs());
        let mut n = 0;
        for u in self.store.uploads().await? {
            if u.started < cutoff && self.store.upload_abort(&u.id).await.is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Collect blobs no manifest references. Blob links no manifest uses are dropped once older than
    /// `grace`, and unlinked blob files once their mtime is older than `grace`, so uploads and pushes in
    /// flight are never collected. Manifest pushes are serialised with the collection by the metadata
    /// lock, so a manifest can never be accepted for a blob being deleted.
    pub async fn collect_garbage(
        &self,
        grace: Duration,
        dry_run: bool,
    ) -> Result<GcReport, RegistryError> {
        let mut meta = self.meta.lock().await;
        let now = now_secs();
        let grace_secs = grace.as_secs();
        let mut report = GcReport::default();
        let stored = self.store.list().await?;
        let existing: BTreeSet<&Digest> = stored.iter().map(|b| &b.digest).collect();
        let mut referenced = BTreeSet::new();
        let mut linked = BTreeSet::new();
        let mut changed = Vec::new();
        for (name, r) in meta.repos.iter_mut() {
            let refs = r.referenced_blobs();
            let drop: BTreeSet<Digest> = r
                .blobs
                .iter()
                .filter(|(d, at)| {
                    let age = now.saturating_sub(**at);
                    // unreferenced past the grace period, or a link to nothing (a crash between
                    // the link and the blob's commit) no upload can still be finishing
                    (!refs.contains(*d) && age >= grace_secs)
                        || (!existing.contains(*d) && age >= DANGLING_LINK_SECS)
                })
                .map(|(d, _)| d.clone())
                .collect();
            report.links_dropped += drop.len();
            linked.extend(r.blobs.keys().filter(|d| !drop.contains(*d)).cloned());
            if !dry_run && !drop.is_empty() {
                r.blobs.retain(|d, _| !drop.contains(d));
                changed.push(name.clone());
            }
            referenced.extend(refs);
        }
        for name in changed {
            meta.persist(&name).await?;
        }
        let file_cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for b in stored {
            if referenced.contains(&b.digest)
                || linked.contains(&b.digest)
                || b.modified > file_cutoff
            {
                report.blobs_kept += 1;
                continue;
            }
            if dry_run || self.store.delete(&b.digest).await? {
                report.bytes_freed += b.size;
                report.blobs_deleted.push(b.digest.to_string());
            }
        }
        Ok(report)
    }

    /// One maintenance pass: lifecycle policies, idle upload sessions, garbage collection.
    pub async fn maintain(&self) -> Result<(usize, usize, GcReport), RegistryError> {
        let expired = self.apply_lifecycle(None, now_secs(), false).await?.len();
        let uploads = self.clean_uploads().await?;
        let gc = self.collect_garbage(self.config.gc_grace, false).await?;
        Ok((expired, uploads, gc))
    }

    // ---- blobs ------------------------------------------------------------------------------

    async fn linked(&self, name: &RepoName, digest: &Digest) -> Result<bool, RegistryError> {
        let meta = self.meta.lock().await;
        let r = repo(&meta, name)?;
        Ok(r.blobs.contains_key(digest) || r.referenced_blobs().contains(digest))
    }

    /// The size of a blob of `name`.
    pub async fn blob_size(&self, name: &RepoName, digest: &Digest) -> Result<u64, RegistryError> {
        let unknown = || RegistryError::spec(ErrorCode::BlobUnknown, "blob unknown to registry");
        if !self.linked(name, digest).await? {
            return Err(unknown());
        }
        self.store.stat(digest).await?.ok_or_else(unknown)
    }

    /// Read a blob (or a range of it) of `name`.
    pub async fn blob_read(
        &self,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<ByteStream, RegistryError> {
        match self.store.read(digest, range).await {
            Ok(s) => Ok(s),
            Err(StoreError::NotFound) => Err(RegistryError::spec(
                ErrorCode::BlobUnknown,
                "blob unknown to registry",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Unlink a blob from `name` (the bytes go at the next GC if nothing else uses them).
    pub async fn blob_delete(&self, name: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
        let mut meta = self.meta.lock().await;
        let r = repo_mut(&mut meta, name)?;
        if r.blobs.remove(digest).is_none() {
            return Err(RegistryError::spec(
                ErrorCode::BlobUnknown,
                "blob unknown to registry",
            ));
        }
        meta.persist(name).await?;
        Ok(())
    }

    /// Link `digest` into `name` durably; whether the link is new.
    async fn link(&self, name: &RepoName, digest: &Digest) -> Result<bool, RegistryError> {
        let (new, durable) = {
            let mut meta = self.meta.lock().await;
            let r = repo_mut(&mut meta, name)?;
            let new = r.blobs.insert(digest.clone(), now_secs()).is_none();
            (new, meta.persist_begin(name))
        };
        // waited for without the lock: concurrent pushes share one metadata write
        durable.wait().await?;
        Ok(new)
    }

    /// Drop a link made by [`Registry::link`] for a blob that did not come to exist.
    async fn unlink(&self, name: &RepoName, digest: &Digest) -> Result<(), RegistryError> {
        let mut meta = self.meta.lock().await;
        let r = repo_mut(&mut meta, name)?;
        if r.blobs.remove(digest).is_some() {
            meta.persist(name).await?;
        }
        Ok(())
    }

    /// Mount `digest` from `from` into `name`; `false` if `from` does not have it.
    pub async fn mount(
        &self,
        name: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        {
            let meta = self.meta.lock().await;
            repo(&meta, name)?;
            let Some(src) = meta.repos.get(from) else {
                return Ok(false);
            };
            if !src.blobs.contains_key(digest) && !src.referenced_blobs().contains(digest) {
                return Ok(false);
            }
        }
        if self.store.stat(digest).await?.is_none() {
            return Ok(false);
        }
        self.link(name, digest).await?;
        Ok(true)
    }

    /// Start an upload session in `name`.
    pub async fn upload_start(&self, name: &RepoName) -> Result<String, RegistryError> {
        if !self.repository_exists(name).await {
            return Err(name_unknown(name.as_str()));
        }
        let id = uuid::Uuid::new_v4().to_string();
        self.store.upload_create(&id, name.as_str()).await?;
        Ok(id)
    }

    /// The session `id` of `name`.
    pub async fn upload_status(
        &self,
        name: &RepoName,
        id: &str,
    ) -> Result<UploadInfo, RegistryError> {
        match self.store.upload_info(id).await? {
            Some(u) if u.repository == name.as_str() => Ok(u),
            _ => Err(upload_unknown()),
        }
    }

    /// Append a chunk. `start` (from Content-Range) must be the current size when given.
    pub async fn upload_append(
        &self,
        name: &RepoName,
        id: &str,
        start: Option<u64>,
        data: ByteStream,
        declared: Option<u64>,
    ) -> Result<u64, RegistryError> {
        let lock = self.upload_lock(id);
        let _guard = lock.lock().await;
        let info = self.upload_status(name, id).await?;
        let offset = start.unwrap_or(info.size);
        self.store
            .upload_append(id, offset, data, declared)
            .await
            .map_err(upload_error)
    }

    /// Finish an upload: verify it against `digest`, make it a blob and link it into `name`.
    pub async fn upload_finish(
        &self,
        name: &RepoName,
        id: &str,
        digest: &Digest,
    ) -> Result<(), RegistryError> {
        let lock = self.upload_lock(id);
        let _guard = lock.lock().await;
        self.upload_status(name, id).await?;
        // The blob's two fsyncs (data, directory) and the link's (metadata) run side by side: the
        // push is acknowledged once both are durable. A link whose blob did not come to exist is
        // removed at once; one left by a crash in between leads nowhere (reads and manifest pushes
        // check that the blob exists) and the garbage collector drops it.
        let (committed, linked) = tokio::join!(
            self.store.upload_commit(id, digest),
            self.link(name, digest)
        );
        if let Err(e) = committed {
            if matches!(linked, Ok(true))
                && let Err(u) = self.unlink(name, digest).await
            {
                tracing::warn!(%name, %digest, error = %u, "could not drop the link of a failed upload");
            }
            return Err(upload_error(e));
        }
        linked.map(|_| ())
    }

    /// Cancel an upload.
    pub async fn upload_cancel(&self, name: &RepoName, id: &str) -> Result<(), RegistryError> {
        let lock = self.upload_lock(id);
        let _guard = lock.lock().await;
        self.upload_status(name, id).await?;
        self.store.upload_abort(id).await.map_err(upload_error)
    }

    // ---- manifests and tags -------------------------------------------------------------------

    /// Push a manifest under `reference`.
    pub async fn manifest_put(
        &self,
        name: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PushedManifest, RegistryError> {
        self.manifest_put_tagged(name, reference, content_type, body, &[])
            .await
    }

    /// Push a manifest under `reference` and tag it with each of `tags` as well (the
    /// distribution spec's `?tag=` parameters): all of them or, if any is refused (an IMMUTABLE
    /// tag that names another manifest), none.
    pub async fn manifest_put_tagged(
        &self,
        name: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
        tags: &[Tag],
    ) -> Result<PushedManifest, RegistryError> {
        if body.len() > self.config.max_manifest_bytes {
            return Err(RegistryError::spec_with_status(
                ErrorCode::SizeInvalid,
                http::StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "manifest is larger than {} bytes",
                    self.config.max_manifest_bytes
                ),
            ));
        }
        if !self.repository_exists(name).await {
            return Err(name_unknown(name.as_str()));
        }
        let parsed = manifest::parse(content_type, &body)
            .map_err(|e| RegistryError::spec(ErrorCode::ManifestInvalid, e.to_string()))?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = d.same_algorithm_of(&body);
                if &actual != d {
                    return Err(RegistryError::spec(
                        ErrorCode::DigestInvalid,
                        format!("manifest digest is {actual}, not {d}"),
                    ));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256_of(&body),
        };
        let mut meta = self.meta.lock().await;
        let r = repo_mut(&mut meta, name)?;
        let needed_blobs = parsed.blobs();
        let mut referenced: Option<BTreeSet<Digest>> = None;
        for b in &needed_blobs {
            if !r.blobs.contains_key(b)
                && !referenced
                    .get_or_insert_with(|| r.referenced_blobs())
                    .contains(b)
            {
                return Err(RegistryError::spec(
                    ErrorCode::ManifestBlobUnknown,
                    format!("blob {b} is not in repository {name}"),
                ));
            }
        }
        for m in &parsed.manifests {
            if !r.manifests.contains_key(&m.digest) {
                return Err(RegistryError::spec(
                    ErrorCode::ManifestBlobUnknown,
                    format!("manifest {} is not in repository {name}", m.digest),
                ));
            }
        }
        let mut all_tags: Vec<&Tag> = tags.iter().collect();
        if let Reference::Tag(t) = reference {
            all_tags.insert(0, t);
        }
        if r.tag_mutability == TagMutability::Immutable {
            for t in &all_tags {
                if let Some(existing) = r.tags.get(t.as_str())
                    && existing != &digest
                {
                    return Err(RegistryError::spec(
                        ErrorCode::TagInvalid,
                        format!(
                            "tag {t} already exists in {name} and the repository's tags are IMMUTABLE"
                        ),
                    ));
                }
            }
        }
        // A blob known only by its link must exist (a crash between the link and the blob's commit
        // leaves a link to nothing).
        let referenced = referenced.unwrap_or_else(|| r.referenced_blobs());
        for b in needed_blobs.iter().filter(|b| !referenced.contains(*b)) {
            if self.store.stat(b).await?.is_none() {
                return Err(RegistryError::spec(
                    ErrorCode::ManifestBlobUnknown,
                    format!("blob {b} is not in repository {name}"),
                ));
            }
        }
        // Valid: store the bytes (under the lock, so a refused manifest leaves nothing behind and the
        // garbage collector cannot run in between).
        self.store.put(&digest, body.clone()).await?;
        let Some(r) = meta.repos.get_mut(name) else {
            return Err(name_unknown(name.as_str()));
        };
        let before = r.clone();
        let image_size = parsed
            .config
            .iter()
            .chain(parsed.layers.iter())
            .chain(parsed.manifests.iter())
            .map(|d| d.size)
            .sum();
        let pushed_at = r
            .manifests
            .get(&digest)
            .map(|m| m.pushed_at)
            .unwrap_or_else(now_secs);
        let subject = parsed.subject.as_ref().map(|s| s.digest.clone());
        r.manifests.insert(
            digest.clone(),
            ManifestRecord {
                media_type: parsed.media_type.clone(),
                size: body.len() as u64,
                pushed_at,
                blobs: needed_blobs,
                children: parsed.manifests.iter().map(|m| m.digest.clone()).collect(),
                subject: subject.clone(),
                artifact_type: parsed.effective_artifact_type(),
                annotations: parsed.annotations.clone(),
                image_size,
            },
        );
        for t in &all_tags {
            r.tags.insert(t.to_string(), digest.clone());
        }
        if let Err(e) = meta.persist(name).await {
            meta.repos.insert(name.clone(), before);
            return Err(e.into());
        }
        Ok(PushedManifest { digest, subject })
    }

    /// Resolve a reference to a digest and its record.
    async fn resolve(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, ManifestRecord), RegistryError> {
        let meta = self.meta.lock().await;
        let r = repo(&meta, name)?;
        let unknown = || {
            RegistryError::spec(
                ErrorCode::ManifestUnknown,
                format!("manifest {reference} unknown to repository {name}"),
            )
        };
        let digest = match reference {
            Reference::Tag(t) => r.tags.get(t.as_str()).cloned().ok_or_else(unknown)?,
            Reference::Digest(d) => d.clone(),
        };
        let rec = r.manifests.get(&digest).cloned().ok_or_else(unknown)?;
        Ok((digest, rec))
    }

    /// A manifest's digest, media type and size, without its body.
    pub async fn manifest_head(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, ManifestRecord), RegistryError> {
        self.resolve(name, reference).await
    }

    /// Fetch a manifest.
    pub async fn manifest_get(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<FetchedManifest, RegistryError> {
        let (digest, rec) = self.resolve(name, reference).await?;
        let body = crate::store::read_all(self.store.as_ref(), &digest).await?;
        Ok(FetchedManifest {
            digest,
            media_type: rec.media_type,
            body,
        })
    }

    /// Delete a manifest (by digest: it and its tags) or a tag (by tag).
    pub async fn manifest_delete(
        &self,
        name: &RepoName,
        reference: &Reference,
    ) -> Result<(), RegistryError> {
        let mut meta = self.meta.lock().await;
        let r = repo_mut(&mut meta, name)?;
        let unknown = || {
            RegistryError::spec(
                ErrorCode::ManifestUnknown,
                format!("manifest {reference} unknown to repository {name}"),
            )
        };
        let before = r.clone();
        match reference {
            Reference::Tag(t) => {
                r.tags.remove(t.as_str()).ok_or_else(unknown)?;
            }
            Reference::Digest(d) => {
                if r.remove_manifest(d).is_empty() {
                    return Err(unknown());
                }
            }
        }
        if let Err(e) = meta.persist(name).await {
            meta.repos.insert(name.clone(), before);
            return Err(e.into());
        }
        Ok(())
    }

    /// Tags of `name` in lexical order after `last`, at most `n`; and whether more follow.
    pub async fn tags(
        &self,
        name: &RepoName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<(Vec<String>, bool), RegistryError> {
        let meta = self.meta.lock().await;
        let r = repo(&meta, name)?;
        Ok(page(r.tags.keys().cloned(), n, last))
    }

    /// Repository names (those `visible` accepts) in lexical order after `last`, at most `n`.
    pub async fn catalog(
        &self,
        visible: impl Fn(&str) -> bool,
        n: Option<usize>,
        last: Option<&str>,
    ) -> (Vec<String>, bool) {
        let meta = self.meta.lock().await;
        page(
            meta.repos
                .keys()
                .map(|k| k.to_string())
                .filter(|k| visible(k)),
            n,
            last,
        )
    }

    /// Manifests of `name` whose subject is `subject`, optionally of one artifact type.
    pub async fn referrers(
        &self,
        name: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Descriptor>, RegistryError> {
        let meta = self.meta.lock().await;
        let r = repo(&meta, name)?;
        Ok(r.manifests
            .iter()
            .filter(|(_, m)| m.subject.as_ref() == Some(subject))
            .filter(|(_, m)| artifact_type.is_none() || m.artifact_type.as_deref() == artifact_type)
            .map(|(d, m)| Descriptor {
                media_type: m.media_type.clone(),
                digest: d.clone(),
                size: m.size,
                artifact_type: m.artifact_type.clone(),
                annotations: m.annotations.clone(),
            })
            .collect())
    }

    /// Repositories with their tags (for tests and tools).
    pub async fn snapshot(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let meta = self.meta.lock().await;
        meta.repos
            .iter()
            .map(|(n, r)| {
                (
                    n.to_string(),
                    r.tags
                        .iter()
                        .map(|(t, d)| (t.clone(), d.to_string()))
                        .collect(),
                )
            })
            .collect()
    }
}

fn page(
    items: impl Iterator<Item = String>,
    n: Option<usize>,
    last: Option<&str>,
) -> (Vec<String>, bool) {
    let mut it = items.filter(|i| last.is_none_or(|l| i.as_str() > l));
    match n {
        None => (it.collect(), false),
        Some(n) => {
            let out: Vec<String> = it.by_ref().take(n).collect();
            let more = it.next().is_some();
            (out, more)
        }
    }
}

/// Parse a manifest reference (tag or digest) with the spec's error codes.
pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    if s.contains(':') {
        s.parse::<Digest>()
            .map(Reference::Digest)
            .map_err(|e| RegistryError::spec(ErrorCode::DigestInvalid, e.to_string()))
    } else {
        Tag::parse(s)
            .map(Reference::Tag)
            .map_err(|e| RegistryError::spec(ErrorCode::TagInvalid, e.to_string()))
    }
}
