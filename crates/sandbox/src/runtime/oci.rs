//! The two OCI command-line runtimes, runsc (gVisor) and crun, driven through their shared CLI
//! (`run`, `kill`, `delete`, `exec`, `state`).

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::{Runtime, RuntimeError, RuntimeKind, Stdio};

/// Finds `tool` on PATH.
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

#[derive(Debug, Clone)]
pub struct OciRuntime {
    kind: RuntimeKind,
    binary: PathBuf,
    global: Vec<String>,
}

impl OciRuntime {
    /// gVisor's runsc with the ptrace platform (the kvm platform hangs on PVM hosts).
    pub fn gvisor(root: PathBuf) -> Result<Self, RuntimeError> {
        let binary = which("runsc").ok_or(RuntimeError::Missing {
            kind: RuntimeKind::Gvisor,
            tool: "runsc",
            hint: "apt-get install runsc",
        })?;
        std::fs::create_dir_all(&root).map_err(|source| RuntimeError::Spawn {
            tool: "mkdir".into(),
            source,
        })?;
        Ok(OciRuntime {
            kind: RuntimeKind::Gvisor,
            binary,
            global: vec![
                format!("--root={}", root.display()),
                "--platform=ptrace".into(),
                "--network=none".into(),
            ],
        })
    }

    /// crun, after making the host's hybrid cgroup layout acceptable to it.
    pub fn crun(root: PathBuf) -> Result<Self, RuntimeError> {
        let binary = which("crun").ok_or(RuntimeError::Missing {
            kind: RuntimeKind::Container,
            tool: "crun",
            hint: "apt-get install crun",
        })?;
        std::fs::create_dir_all(&root).map_err(|source| RuntimeError::Spawn {
            tool: "mkdir".into(),
            source,
        })?;
        fix_hybrid_cgroups(Path::new("/sys/fs/cgroup"))?;
        Ok(OciRuntime {
            kind: RuntimeKind::Container,
            binary,
            global: vec![format!("--root={}", root.display())],
        })
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(&self.global);
        c
    }

    async fn simple(
        &self,
        action: &'static str,
        id: &str,
        args: &[&str],
    ) -> Result<std::process::Output, RuntimeError> {
        let out = self
            .command()
            .arg(action)
            .args(args)
            .arg(id)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| RuntimeError::Spawn {
                tool: self.binary.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(RuntimeError::Command {
                tool: self.kind.to_string(),
                action,
                id: id.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(out)
    }
}

/// On hosts with cgroup v1 controllers plus a v2 hierarchy at `unified` but no v1 hugetlb
/// mount, crun refuses ("cgroups in hybrid mode not supported"); a v1 hugetlb mount fixes it.
fn fix_hybrid_cgroups(cgroot: &Path) -> Result<(), RuntimeError> {
    let hugetlb = cgroot.join("hugetlb");
    if !cgroot.join("unified").is_dir() || !cgroot.join("memory").is_dir() || hugetlb.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&hugetlb).map_err(RuntimeError::Cgroup)?;
    rustix::mount::mount(
        "cgroup",
        &hugetlb,
        "cgroup",
        rustix::mount::MountFlags::empty(),
        Some(c"hugetlb"),
    )
    .map_err(|e| RuntimeError::Cgroup(e.into()))?;
    tracing::info!(path = %hugetlb.display(), "mounted a v1 hugetlb cgroup hierarchy so crun accepts the hybrid layout");
    Ok(())
}

#[async_trait::async_trait]
impl Runtime for OciRuntime {
    fn kind(&self) -> RuntimeKind {
        self.kind
    }

    fn spawn(
        &self,
        id: &str,
        bundle: &Path,
        stdio: Stdio,
    ) -> Result<tokio::process::Child, RuntimeError> {
        let mut c = self.command();
        c.arg("run").arg("--bundle").arg(bundle).arg(id);
        c.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        if !stdio.foreground {
            c.process_group(0);
        }
        c.kill_on_drop(false);
        c.spawn().map_err(|source| RuntimeError::Spawn {
            tool: self.binary.display().to_string(),
            source,
        })
    }

    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let sig = signal.to_string();
        let args = ["--all", id, sig.as_str()];
        let out = self
            .command()
            .arg("kill")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|source| RuntimeError::Spawn {
                tool: self.binary.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(RuntimeError::Command {
                tool: self.kind.to_string(),
                action: "kill",
                id: id.to_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), RuntimeError> {
        match self.simple("delete", id, &["--force"]).await {
            Ok(_) => Ok(()),
            // Already gone is what we wanted.
            Err(RuntimeError::Command { stderr, .. })
                if stderr.contains("does not exist")
                    || stderr.contains("not found")
                    || stderr.contains("No such") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn exec(
        &self,
        id: &str,
        args: &[String],
        tty: bool,
        stdio: Stdio,
    ) -> Result<tokio::process::Child, RuntimeError> {
        let mut c = self.command();
        c.arg("exec");
        if tty {
            c.arg("--tty");
        }
        c.arg(id).args(args);
        c.stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr);
        c.spawn().map_err(|source| RuntimeError::Spawn {
            tool: self.binary.display().to_string(),
            source,
        })
    }

    async fn status(&self, id: &str) -> Result<Option<String>, RuntimeError> {
        match self.simple("state", id, &[]).await {
            Ok(out) => {
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                Ok(v.get("status").and_then(|s| s.as_str()).map(str::to_owned))
            }
            Err(RuntimeError::Command { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
