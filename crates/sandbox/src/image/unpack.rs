//! Unpacking one layer (tar, gzip or zstd, detected from the bytes) into its own directory, in
//! the form overlayfs stacks: OCI whiteouts (`.wh.NAME`) become 0:0 character devices and opaque
//! markers (`.wh..wh..opq`) become the `trusted.overlay.opaque` xattr. The uncompressed stream is
//! hashed and checked against the config's diff_id. Blocking IO; call it from `spawn_blocking`.

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::digest::{Digest, HashingReader};

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading layer")]
    Io(#[from] std::io::Error),
    #[error("layer entry {path:?}")]
    Entry {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("layer entry {0:?} escapes the layer root")]
    Escape(PathBuf),
    #[error("zstd stream")]
    Zstd(#[source] std::io::Error),
    #[error("layer content digest is {actual}, the manifest says {expected}")]
    Digest { expected: Digest, actual: Digest },
    #[error("uncompressed layer digest is {actual}, the image config says {expected}")]
    DiffId { expected: Digest, actual: Digest },
}

/// What unpacking found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// Checks `blob`'s digest, then unpacks it into `dst` (which must exist and be empty).
pub fn unpack_layer(
    blob: &Path,
    expected: &Digest,
    expected_diff_id: Option<&Digest>,
    dst: &Path,
) -> Result<Unpacked, UnpackError> {
    let (actual, _) = HashingReader::new(fs::File::open(blob)?).finish()?;
    if &actual != expected {
        return Err(UnpackError::Digest {
            expected: expected.clone(),
            actual,
        });
    }
    unpack_verified(blob, expected_diff_id, dst)
}

/// Unpacks `blob`, whose digest the caller has already checked (e.g. as it was downloaded),
/// into `dst` (which must exist and be empty), checking the uncompressed stream's diff_id.
pub fn unpack_verified(
    blob: &Path,
    expected_diff_id: Option<&Digest>,
    dst: &Path,
) -> Result<Unpacked, UnpackError> {
    let mut input = BufReader::new(fs::File::open(blob)?);
    let magic = input.fill_buf()?.to_vec();
    let stream: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(input))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new(input)
                .map_err(|e| UnpackError::Zstd(std::io::Error::other(e.to_string())))?,
        )
    } else {
        Box::new(input)
    };
    let unpacked = unpack_tar(stream, dst)?;
    if let Some(want) = expected_diff_id
        && want != &unpacked.diff_id
    {
        return Err(UnpackError::DiffId {
            expected: want.clone(),
            actual: unpacked.diff_id,
        });
    }
    Ok(unpacked)
}

/// Unpacks an uncompressed tar stream into `dst`, converting whiteouts.
pub fn unpack_tar(stream: impl Read, dst: &Path) -> Result<Unpacked, UnpackError> {
    let root = dst.canonicalize()?;
    let mut archive = tar::Archive::new(HashingReader::new(stream));
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let rel = clean(&raw).ok_or_else(|| UnpackError::Escape(raw.clone()))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let err = |source| UnpackError::Entry {
            path: raw.clone(),
            source,
        };
        let name = rel
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        if name == ".wh..wh..opq" {
            let dir = safe_parent(&root, parent_rel)?;
            rustix::fs::setxattr(
                &dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| err(e.into()))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let dir = safe_parent(&root, parent_rel)?;
            let target = dir.join(hidden);
            remove_any(&target).map_err(err)?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o000),
                rustix::fs::makedev(0, 0),
            )
            .map_err(|e| err(e.into()))?;
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            let dir = safe_parent(&root, parent_rel)?;
            let target = dir.join(&name);
            remove_any(&target).map_err(err)?;
            let h = entry.header();
            let mode = h.mode().map_err(err)? & 0o7777;
            let (file_type, dev) = if kind.is_fifo() {
                (rustix::fs::FileType::Fifo, 0)
            } else {
                let maj = h.device_major().map_err(err)?.unwrap_or(0);
                let min = h.device_minor().map_err(err)?.unwrap_or(0);
                let t = if kind.is_character_special() {
                    rustix::fs::FileType::CharacterDevice
                } else {
                    rustix::fs::FileType::BlockDevice
                };
                (t, rustix::fs::makedev(maj, min))
            };
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &target,
                file_type,
                rustix::fs::Mode::from_raw_mode(mode),
                dev,
            )
            .map_err(|e| err(e.into()))?;
            continue;
        }
        entry.unpack_in(&root).map_err(err)?;
    }
    let (diff_id, uncompressed_size) = archive.into_inner().finish()?;
    Ok(Unpacked {
        diff_id,
        uncompressed_size,
    })
}

/// Normalizes a tar path: drops `/` and `.`; `None` if it climbs with `..`.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Creates `root/rel` as a directory and checks (after resolving symlinks) that it stays in root.
fn safe_parent(root: &Path, rel: &Path) -> Result<PathBuf, UnpackError> {
    let dir = root.join(rel);
    fs::create_dir_all(&dir).map_err(|source| UnpackError::Entry {
        path: rel.to_owned(),
        source,
    })?;
    let real = dir.canonicalize()?;
    if !real.starts_with(root) {
        return Err(UnpackError::Escape(rel.to_owned()));
    }
    Ok(real)
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn tar_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_cksum();
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_cksum();
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_become_overlay_markers() {
        let dir = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            ("etc/", None),
            ("etc/.wh.passwd", Some(b"")),
            ("var/.wh..wh..opq", Some(b"")),
            ("var/keep", Some(b"k")),
            ("./bin/x", Some(b"hello")),
        ]);
        let u = unpack_tar(&t[..], dir.path()).unwrap();
        assert_eq!(u.diff_id, Digest::of(&t));
        let m = fs::symlink_metadata(dir.path().join("etc/passwd")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(m.rdev(), 0);
        let mut buf = [0u8; 4];
        let n = rustix::fs::getxattr(dir.path().join("var"), "trusted.overlay.opaque", &mut buf)
            .unwrap();
        assert_eq!(&buf[..n], b"y");
        assert_eq!(fs::read(dir.path().join("var/keep")).unwrap(), b"k");
        assert_eq!(fs::read(dir.path().join("bin/x")).unwrap(), b"hello");
    }

    #[test]
    fn parent_dir_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // tar::Builder refuses `..` itself, so write the name into the header by hand.
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../evil\0\0");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[][..]).unwrap();
        let t = b.into_inner().unwrap();
        assert!(matches!(
            unpack_tar(&t[..], dir.path()),
            Err(UnpackError::Escape(_))
        ));
    }

    #[test]
    fn gzip_and_zstd_are_detected_and_digests_checked() {
        use std::io::Write;
        let t = tar_of(&[("a", Some(b"1"))]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&t).unwrap();
        let gz = gz.finish().unwrap();
        let zst =
            ruzstd::encoding::compress_to_vec(&t[..], ruzstd::encoding::CompressionLevel::Fastest);
        for blob in [gz, zst, t.clone()] {
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("blob");
            fs::write(&file, &blob).unwrap();
            let out = dir.path().join("out");
            fs::create_dir(&out).unwrap();
            let u = unpack_layer(&file, &Digest::of(&blob), Some(&Digest::of(&t)), &out).unwrap();
            assert_eq!(u.diff_id, Digest::of(&t));
            assert_eq!(fs::read(out.join("a")).unwrap(), b"1");
            let out2 = dir.path().join("out2");
            fs::create_dir(&out2).unwrap();
            assert!(matches!(
                unpack_layer(&file, &Digest::of(b"other"), None, &out2),
                Err(UnpackError::Digest { .. })
            ));
            assert!(matches!(
                unpack_layer(&file, &Digest::of(&blob), Some(&Digest::of(b"x")), &out2),
                Err(UnpackError::DiffId { .. })
            ));
        }
    }
}
