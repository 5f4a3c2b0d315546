//! Repository metadata: which repositories exist, their settings, the blobs linked into each, their
//! manifests and tags. Kept in memory and persisted as one JSON file per repository under
//! `<data-dir>/repositories/`, each written to a temporary file, fsynced, renamed and the directory
//! fsynced before the change is acknowledged. Writes of one repository are serialized and always
//! write the newest snapshot, so changes made while a write is in flight share the next one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::Digest;
use crate::names::RepoName;

/// ECR's tag mutability setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagMutability {
    #[default]
    Mutable,
    Immutable,
}

/// A manifest stored in a repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub pushed_at: u64,
    /// Config and layers.
    #[serde(default)]
    pub blobs: Vec<Digest>,
    /// Child manifests of an index.
    #[serde(default)]
    pub children: Vec<Digest>,
    #[serde(default)]
    pub subject: Option<Digest>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Sum of the config and layer sizes (for describe-images).
    #[serde(default)]
    pub image_size: u64,
}

/// One repository.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RepoRecord {
    pub name: RepoName,
    pub created_at: u64,
    #[serde(default)]
    pub tag_mutability: TagMutability,
    #[serde(default)]
    pub lifecycle_policy: Option<String>,
    /// Blobs uploaded or mounted into this repository, with the time they were linked.
    #[serde(default)]
    pub blobs: BTreeMap<Digest, u64>,
    #[serde(default)]
    pub manifests: BTreeMap<Digest, ManifestRecord>,
    #[serde(default)]
    pub tags: BTreeMap<String, Digest>,
}

impl RepoRecord {
    pub fn new(name: RepoName, created_at: u64, tag_mutability: TagMutability) -> RepoRecord {
        RepoRecord {
            name,
            created_at,
            tag_mutability,
            lifecycle_policy: None,
            blobs: BTreeMap::new(),
            manifests: BTreeMap::new(),
            tags: BTreeMap::new(),
        }
    }

    /// Tags pointing at `digest`.
    pub fn tags_of(&self, digest: &Digest) -> Vec<String> {
        self.tags
            .iter()
            .filter(|(_, d)| *d == digest)
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Manifests that are children of another manifest in this repository.
    pub fn child_manifests(&self) -> BTreeSet<Digest> {
        self.manifests
            .values()
            .flat_map(|m| m.children.iter().cloned())
            .collect()
    }

    /// Remove a manifest and its tags, then (cascading) children no longer referenced by any other
    /// manifest nor tagged. Returns the removed digests.
    pub fn remove_manifest(&mut self, digest: &Digest) -> Vec<Digest> {
        let mut removed = Vec::new();
        let mut queue = vec![digest.clone()];
        while let Some(d) = queue.pop() {
            let Some(rec) = self.manifests.remove(&d) else {
                continue;
            };
            self.tags.retain(|_, t| *t != d);
            // referrers of a deleted manifest go with it
            for (r, m) in &self.manifests {
                if m.subject.as_ref() == Some(&d) {
                    queue.push(r.clone());
                }
            }
            removed.push(d);
            let still = self.child_manifests();
            for c in rec.children {
                if !still.contains(&c) && !self.tags.values().any(|t| *t == c) {
                    queue.push(c);
                }
            }
        }
        removed
    }

    /// Every blob this repository's manifests need (including the manifests themselves).
    pub fn referenced_blobs(&self) -> BTreeSet<Digest> {
        let mut out = BTreeSet::new();
        for (d, m) in &self.manifests {
            out.insert(d.clone());
            out.extend(m.blobs.iter().cloned());
        }
        out
    }
}

/// File name of a repository's record: `/` (not allowed in a component) becomes `~`.
fn file_name(name: &RepoName) -> String {
    format!("{}.json", name.as_str().replace('/', "~"))
}

/// The persisted set of repositories.
#[derive(Debug)]
pub struct Meta {
    dir: PathBuf,
    pub repos: BTreeMap<RepoName, RepoRecord>,
    /// Version of the last snapshot handed to a writer (snapshots are taken under the caller's
    /// lock on `Meta`, so versions follow the order of the changes).
    version: u64,
    writers: HashMap<RepoName, Arc<RepoWriter>>,
}

/// The writer of one repository's record: writes are serialized by `io` (which holds the version
/// known durable); `pending` holds the newest snapshot not written yet. Whoever takes `io` writes
/// the newest snapshot, which covers every change submitted before it: concurrent changes share
/// one write (group commit).
#[derive(Debug, Default)]
struct RepoWriter {
    io: tokio::sync::Mutex<u64>,
    pending: std::sync::Mutex<Option<(u64, Option<RepoRecord>)>>,
}

/// A change waiting to be durable: see [`Meta::persist_begin`].
#[must_use = "a change is durable only once `wait` returns Ok"]
pub struct Durable {
    dir: PathBuf,
    name: RepoName,
    version: u64,
    writer: Arc<RepoWriter>,
}

impl Durable {
    /// Wait until the change (or a later one of the same repository) is on disk.
    pub async fn wait(self) -> std::io::Result<()> {
        let mut durable = self.writer.io.lock().await;
        if *durable >= self.version {
            return Ok(());
        }
        let snapshot = match self.writer.pending.lock() {
            Ok(mut p) => p.take(),
            Err(p) => p.into_inner().take(),
        };
        let Some((version, rec)) = snapshot.filter(|(v, _)| *v >= self.version) else {
            return Err(std::io::Error::other(
                "the write that carried this change failed",
            ));
        };
        let (dir, name) = (self.dir.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || match rec {
            Some(r) => Meta::write(&dir, &r),
            None => Meta::remove(&dir, &name),
        })
        .await
        .map_err(std::io::Error::other)??;
        *durable = version;
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

impl Meta {
    /// Load every repository record from `dir` (created if missing).
    pub fn load(dir: &Path) -> std::io::Result<Meta> {
        std::fs::create_dir_all(dir)?;
        let mut repos = BTreeMap::new();
        for e in std::fs::read_dir(dir)?.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with('.') {
                // an interrupted write: never acknowledged
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let raw = std::fs::read(&path)?;
            match serde_json::from_slice::<RepoRecord>(&raw) {
                Ok(r) => {
                    repos.insert(r.name.clone(), r);
                }
                Err(err) => {
                    tracing::error!(path = %path.display(), %err, "unreadable repository record")
                }
            }
        }
        Ok(Meta {
            dir: dir.to_path_buf(),
            repos,
            version: 0,
            writers: HashMap::new(),
        })
    }

    /// Durably write a repository's record (blocking I/O; call from a blocking context).
    pub fn write(dir: &Path, rec: &RepoRecord) -> std::io::Result<()> {
        use std::io::Write as _;
        let final_path = dir.join(file_name(&rec.name));
        let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
        let json = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &final_path)?;
            sync_dir(dir)
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    /// Durably remove a repository's record.
    pub fn remove(dir: &Path, name: &RepoName) -> std::io::Result<()> {
        match std::fs::remove_file(dir.join(file_name(name))) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Durably write `name`'s record as it is now (or remove it if it no longer exists).
    pub async fn persist(&mut self, name: &RepoName) -> std::io::Result<()> {
        self.persist_begin(name).wait().await
    }

    /// Snapshot `name`'s record for writing; the returned [`Durable`] completes once it is on
    /// disk. Call under the lock on `Meta`, then wait after releasing it: changes of the same
    /// repository made meanwhile are written together.
    pub fn persist_begin(&mut self, name: &RepoName) -> Durable {
        self.version += 1;
        let version = self.version;
        let writer = self.writers.entry(name.clone()).or_default().clone();
        let snapshot = self.repos.get(name).cloned();
        match writer.pending.lock() {
            Ok(mut p) => *p = Some((version, snapshot)),
            Err(p) => *p.into_inner() = Some((version, snapshot)),
        }
        Durable {
            dir: self.dir.clone(),
            name: name.clone(),
            version,
            writer,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_changes_share_writes_and_the_newest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = Meta::load(dir.path()).unwrap();
        let name = RepoName::parse("app").unwrap();
        meta.repos.insert(
            name.clone(),
            RepoRecord::new(name.clone(), 1, TagMutability::Mutable),
        );
        let d1 = Digest::sha256_of(b"1");
        let d2 = Digest::sha256_of(b"2");
        meta.repos
            .get_mut(&name)
            .unwrap()
            .blobs
            .insert(d1.clone(), 1);
        let first = meta.persist_begin(&name);
        meta.repos
            .get_mut(&name)
            .unwrap()
            .blobs
            .insert(d2.clone(), 2);
        let second = meta.persist_begin(&name);
        // the later change is written first; the earlier one is then already durable
        second.wait().await.unwrap();
        first.wait().await.unwrap();
        let back = Meta::load(dir.path()).unwrap();
        let blobs = &back.repos[&name].blobs;
        assert!(blobs.contains_key(&d1) && blobs.contains_key(&d2));
        // a removal goes through the same writer
        meta.repos.remove(&name);
        meta.persist(&name).await.unwrap();
        assert!(Meta::load(dir.path()).unwrap().repos.is_empty());
    }
}
