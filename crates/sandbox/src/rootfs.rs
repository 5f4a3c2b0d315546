//! A container's root filesystem: the image's unpacked layers stacked read-only with overlayfs
//! under a private writable layer. Layers stay shared; only `upper/` belongs to the container.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("creating {0}")]
    Create(PathBuf, #[source] std::io::Error),
    #[error("mounting overlay at {0}")]
    Mount(PathBuf, #[source] std::io::Error),
    #[error("unmounting {0}")]
    Unmount(PathBuf, #[source] std::io::Error),
    #[error("an image needs at least one layer")]
    NoLayers,
}

/// The overlay mount options for `lower` (top first). Pure.
pub fn overlay_options(lower: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    )
}

/// Mounts the root filesystem under `dir` (`dir/rootfs`, writable layer in `dir/upper`) and
/// returns the rootfs path. Idempotent: an existing mount is kept (an agent restart).
pub fn mount(lower: &[PathBuf], dir: &Path) -> Result<PathBuf, RootfsError> {
    if lower.is_empty() {
        return Err(RootfsError::NoLayers);
    }
    let (upper, work, rootfs) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).map_err(|e| RootfsError::Create(d.clone(), e))?;
    }
    if is_mountpoint(&rootfs) {
        return Ok(rootfs);
    }
    let opts = std::ffi::CString::new(overlay_options(lower, &upper, &work))
        .map_err(|e| RootfsError::Mount(rootfs.clone(), std::io::Error::other(e)))?;
    rustix::mount::mount(
        "overlay",
        &rootfs,
        "overlay",
        rustix::mount::MountFlags::empty(),
        Some(opts.as_c_str()),
    )
    .map_err(|e| RootfsError::Mount(rootfs.clone(), e.into()))?;
    Ok(rootfs)
}

/// Unmounts `dir/rootfs` if mounted.
pub fn unmount(dir: &Path) -> Result<(), RootfsError> {
    let rootfs = dir.join("rootfs");
    if !is_mountpoint(&rootfs) {
        return Ok(());
    }
    rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH)
        .map_err(|e| RootfsError::Unmount(rootfs.clone(), e.into()))
}

/// Whether `p` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mountpoint(p: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = p.display().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_list_layers_top_first() {
        let o = overlay_options(
            &["/l/top".into(), "/l/base".into()],
            Path::new("/c/upper"),
            Path::new("/c/work"),
        );
        assert_eq!(
            o,
            "lowerdir=/l/top:/l/base,upperdir=/c/upper,workdir=/c/work"
        );
    }

    #[test]
    fn overlay_stacks_and_hides_whiteouts() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base");
        let top = t.path().join("top");
        std::fs::create_dir_all(base.join("d")).unwrap();
        std::fs::create_dir_all(&top).unwrap();
        std::fs::write(base.join("a"), "a").unwrap();
        std::fs::write(base.join("gone"), "x").unwrap();
        std::fs::write(base.join("d/old"), "x").unwrap();
        std::fs::create_dir_all(top.join("d")).unwrap();
        rustix::fs::setxattr(
            top.join("d"),
            "trusted.overlay.opaque",
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            top.join("gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::empty(),
            rustix::fs::makedev(0, 0),
        )
        .unwrap();
        let c = t.path().join("c");
        let root = mount(&[top, base], &c).unwrap();
        assert!(is_mountpoint(&root));
        assert_eq!(
            mount(&[t.path().join("x")], &c).unwrap(),
            root,
            "idempotent"
        );
        assert_eq!(std::fs::read_to_string(root.join("a")).unwrap(), "a");
        assert!(!root.join("gone").exists());
        assert!(!root.join("d/old").exists());
        std::fs::write(root.join("new"), "n").unwrap();
        assert!(c.join("upper/new").exists());
        unmount(&c).unwrap();
        assert!(!is_mountpoint(&root));
    }
}
