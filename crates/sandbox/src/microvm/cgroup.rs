//! The host cgroup of a pod VM: QEMU (every thread of it: vCPUs, I/O, TCG) is held to the
//! pod's size by a CPU quota, since the VM's vCPUs are whole CPUs ([`super::pod::vm_size`]
//! rounds 250m up to one). The cgroup is the one a gVisor pod's sandbox would get
//! ([`crate::pod::sandbox_cgroup`]), in the `cpu` and `cpuacct` hierarchies of a cgroup v1 host
//! (`cpu.cfs_quota_us` per `cpu.cfs_period_us`) or in the unified hierarchy of a v2 host
//! (`cpu.max`). QEMU enters it before it runs a single instruction (written from the forked
//! child, before `exec`), outlives the agent in it, and the cgroup goes with the VM.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{debug, warn};

/// The CFS period (µs): the quota is `millis × 100` µs of it.
pub const PERIOD_US: u64 = 100_000;

/// The quota (µs per [`PERIOD_US`]) of a pod of `millis` thousandths of a CPU, at least the
/// kernel's floor of 1 ms. Pure.
pub fn quota_us(millis: u64) -> u64 {
    (millis.saturating_mul(PERIOD_US) / 1000).max(1000)
}

/// The directories of cgroup `path` (relative to every hierarchy's root) that hold QEMU under
/// `root` (`/sys/fs/cgroup`): `cpu` and `cpuacct` on a v1 host, the unified one on a v2 host.
fn dirs(root: &Path, path: &str) -> Vec<PathBuf> {
    let rel = path.trim_start_matches('/');
    if root.join("cpu").is_dir() {
        ["cpu", "cpuacct"]
            .iter()
            .map(|h| root.join(h))
            .filter(|h| h.is_dir())
            .map(|h| h.join(rel))
            .collect()
    } else {
        vec![root.join(rel)]
    }
}

/// A pod VM's host cgroup.
#[derive(Debug)]
pub struct VmCgroup {
    /// Relative to the root of every hierarchy (as [`crate::pod::sandbox_cgroup`] gives it).
    path: String,
    dirs: Vec<PathBuf>,
    /// Left in place on drop (the VM outlives the agent).
    pub keep: bool,
}

impl VmCgroup {
    /// Makes cgroup `path` with a CPU quota of `millis`. `None` (logged) when it cannot be made
    /// (no cgroup hierarchy writable here): the VM then runs without the quota.
    pub fn create(path: &str, millis: u64) -> Option<VmCgroup> {
        let dirs = dirs(Path::new("/sys/fs/cgroup"), path);
        let cg = VmCgroup {
            path: path.to_owned(),
            dirs,
            keep: false,
        };
        let quota = quota_us(millis);
        let made = (|| -> std::io::Result<()> {
            for d in &cg.dirs {
                std::fs::create_dir_all(d)?;
            }
            let first = &cg.dirs[0];
            if first.join("cpu.cfs_quota_us").exists() {
                std::fs::write(first.join("cpu.cfs_period_us"), PERIOD_US.to_string())?;
                std::fs::write(first.join("cpu.cfs_quota_us"), quota.to_string())
            } else {
                std::fs::write(first.join("cpu.max"), format!("{quota} {PERIOD_US}"))
            }
        })();
        match made {
            Ok(()) => {
                debug!(
                    cgroup = path,
                    millis,
                    quota_us = quota,
                    "pod VM cgroup made"
                );
                Some(cg)
            }
            Err(e) => {
                warn!(cgroup = path, error = %e, "no host cgroup for the pod VM: its CPU is not held to the pod's size");
                cg.remove_now();
                None
            }
        }
    }

    /// The cgroup of a VM an earlier agent started (it stays until [`VmCgroup::remove`]).
    pub fn adopt(path: &str) -> VmCgroup {
        VmCgroup {
            path: path.to_owned(),
            dirs: dirs(Path::new("/sys/fs/cgroup"), path),
            keep: false,
        }
    }

    /// Its path relative to every hierarchy's root.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `cgroup.procs` files a process writes `0` to, to enter the cgroup (made ready
    /// before a fork: the child writes them without allocating).
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// Puts the calling process in the cgroup. Called in the forked child before `exec`: it
    /// only opens and writes (no allocation).
    pub fn enter(files: &[CString]) -> std::io::Result<()> {
        use rustix::fs::{Mode, OFlags};
        for f in files {
            let fd = rustix::fs::open(
                f.as_c_str(),
                OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            rustix::io::write(&fd, b"0")?;
        }
        Ok(())
    }

    /// CPU time its processes used (ns), from `cpuacct.usage` (v1) or `cpu.stat` (v2).
    pub fn usage_ns(path: &str) -> Option<u64> {
        let root = Path::new("/sys/fs/cgroup");
        let rel = path.trim_start_matches('/');
        if let Ok(s) = std::fs::read_to_string(root.join("cpuacct").join(rel).join("cpuacct.usage"))
        {
            return s.trim().parse().ok();
        }
        let stat = std::fs::read_to_string(root.join(rel).join("cpu.stat")).ok()?;
        stat.lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|us| us * 1000)
    }

    /// Removes the cgroup (QEMU gone: waits up to 5 s for the kernel to let go of it), and
    /// the engine's scope once no pod is left in it.
    pub async fn remove(mut self) {
        for _ in 0..100 {
            if self.remove_now() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !self.remove_now() {
            warn!(cgroup = self.path, "pod VM cgroup still busy at removal");
        }
        self.keep = true;
    }

    /// One attempt at removing every directory; whether none is left.
    fn remove_now(&self) -> bool {
        let mut gone = true;
        for d in &self.dirs {
            match std::fs::remove_dir(d) {
                Ok(()) => {
                    if let Some(scope) = d.parent() {
                        let _ = std::fs::remove_dir(scope);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => gone = false,
            }
        }
        gone
    }
}

impl Drop for VmCgroup {
    /// A VM dropped without [`VmCgroup::remove`] (killed on an error path): its cgroup is
    /// removed once QEMU is gone, from a thread of its own (at most 5 s).
    fn drop(&mut self) {
        if self.keep || self.remove_now() {
            return;
        }
        let cg = VmCgroup {
            path: std::mem::take(&mut self.path),
            dirs: std::mem::take(&mut self.dirs),
            keep: true,
        };
        std::thread::spawn(move || {
            for _ in 0..100 {
                if cg.remove_now() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            warn!(cgroup = cg.path, "pod VM cgroup still busy at removal");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_is_the_pods_size_per_period_with_the_kernels_floor() {
        assert_eq!(quota_us(250), 25_000);
        assert_eq!(quota_us(1500), 150_000);
        assert_eq!(quota_us(1), 1000);
    }

    #[test]
    fn v1_hosts_use_cpu_and_cpuacct_v2_hosts_the_unified_tree() {
        let t = std::env::temp_dir().join(format!("vmcg-{}", std::process::id()));
        std::fs::create_dir_all(t.join("v2")).unwrap();
        assert_eq!(dirs(&t.join("v2"), "/s/pod-a"), vec![t.join("v2/s/pod-a")]);
        for h in ["cpu", "cpuacct", "memory"] {
            std::fs::create_dir_all(t.join("v1").join(h)).unwrap();
        }
        assert_eq!(
            dirs(&t.join("v1"), "/s/pod-a"),
            vec![t.join("v1/cpu/s/pod-a"), t.join("v1/cpuacct/s/pod-a")]
        );
        std::fs::remove_dir_all(&t).unwrap();
    }
}
