//! Runtimes run one OCI bundle each, behind the [`Runtime`] trait, chosen per pod:
//! `gvisor` (Debian's runsc, user-space kernel, `--platform=ptrace`), `container` (crun, plain
//! namespaces and cgroups) and later `microvm`. `auto` picks the micro-VM only where the CPU has
//! hardware virtualization (vmx/svm flags, not the mere presence of /dev/kvm), else gVisor.

mod oci;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use oci::OciRuntime;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Gvisor,
    Container,
    Microvm,
}

/// What the user asked for: a runtime, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RuntimeChoice {
    #[default]
    Auto,
    Kind(RuntimeKind),
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("unknown runtime {0:?} (expected auto, gvisor, container or microvm)")]
    Unknown(String),
    #[error("runtime {kind} needs {tool}, which is not installed: {hint}")]
    Missing {
        kind: RuntimeKind,
        tool: &'static str,
        hint: &'static str,
    },
    #[error("runtime {0} is not implemented yet")]
    NotImplemented(RuntimeKind),
    #[error("starting {tool}")]
    Spawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} {action} {id} failed: {stderr}")]
    Command {
        tool: String,
        action: &'static str,
        id: String,
        stderr: String,
    },
    #[error("preparing cgroups for crun")]
    Cgroup(#[source] std::io::Error),
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RuntimeKind::Gvisor => "gvisor",
            RuntimeKind::Container => "container",
            RuntimeKind::Microvm => "microvm",
        })
    }
}

impl FromStr for RuntimeChoice {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => RuntimeChoice::Auto,
            "gvisor" | "runsc" => RuntimeChoice::Kind(RuntimeKind::Gvisor),
            "container" | "crun" => RuntimeChoice::Kind(RuntimeKind::Container),
            "microvm" | "vm" => RuntimeChoice::Kind(RuntimeKind::Microvm),
            other => return Err(RuntimeError::Unknown(other.to_owned())),
        })
    }
}

/// Whether `/proc/cpuinfo` text shows hardware virtualization. Pure.
pub fn has_hardware_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// The runtime `auto` means on a host with this cpuinfo. While the micro-VM runtime is not
/// built, hosts with virtualization get gVisor too.
pub fn resolve(choice: RuntimeChoice, cpuinfo: &str) -> RuntimeKind {
    match choice {
        RuntimeChoice::Kind(k) => k,
        RuntimeChoice::Auto if has_hardware_virtualization(cpuinfo) && MICROVM_READY => {
            RuntimeKind::Microvm
        }
        RuntimeChoice::Auto => RuntimeKind::Gvisor,
    }
}

const MICROVM_READY: bool = false;

/// Standard streams for a container process.
#[derive(Debug)]
pub struct Stdio {
    pub stdin: std::process::Stdio,
    pub stdout: std::process::Stdio,
    pub stderr: std::process::Stdio,
    /// Keep the runtime in our process group (an interactive terminal session); otherwise it
    /// gets its own, so signals meant for us (Ctrl-C, an agent's SIGTERM) do not reach it.
    pub foreground: bool,
}

impl Stdio {
    /// stdin closed, stdout and stderr piped to us.
    pub fn piped() -> Self {
        Stdio {
            stdin: std::process::Stdio::null(),
            stdout: std::process::Stdio::piped(),
            stderr: std::process::Stdio::piped(),
            foreground: false,
        }
    }
}

/// One way to run OCI bundles.
#[async_trait::async_trait]
pub trait Runtime: Send + Sync + fmt::Debug {
    fn kind(&self) -> RuntimeKind;

    /// Creates and starts the bundle's container; the returned child lives as long as the
    /// container and exits with its status.
    fn spawn(
        &self,
        id: &str,
        bundle: &Path,
        stdio: Stdio,
    ) -> Result<tokio::process::Child, RuntimeError>;

    /// Sends `signal` to the container's processes.
    async fn kill(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;

    /// Removes what the runtime keeps about a stopped (or, forced, running) container.
    async fn delete(&self, id: &str) -> Result<(), RuntimeError>;

    /// Starts `args` inside the running container.
    fn exec(
        &self,
        id: &str,
        args: &[String],
        tty: bool,
        stdio: Stdio,
    ) -> Result<tokio::process::Child, RuntimeError>;

    /// The runtime's view of a container: `Some("running")`, `Some("stopped")`..., `None` if unknown.
    async fn status(&self, id: &str) -> Result<Option<String>, RuntimeError>;
}

/// Opens the runtime of `kind` with its state under `data_dir/runtime`, checking its tools.
pub fn open(kind: RuntimeKind, data_dir: &Path) -> Result<Box<dyn Runtime>, RuntimeError> {
    let root: PathBuf = data_dir.join("runtime").join(kind.to_string());
    match kind {
        RuntimeKind::Gvisor => Ok(Box::new(OciRuntime::gvisor(root)?)),
        RuntimeKind::Container => Ok(Box::new(OciRuntime::crun(root)?)),
        RuntimeKind::Microvm => Err(RuntimeError::NotImplemented(kind)),
    }
}

/// Runtimes usable on this host (for test suites that run against every runtime).
pub fn available() -> Vec<RuntimeKind> {
    [RuntimeKind::Container, RuntimeKind::Gvisor]
        .into_iter()
        .filter(|k| match k {
            RuntimeKind::Gvisor => oci::which("runsc").is_some(),
            RuntimeKind::Container => oci::which("crun").is_some(),
            RuntimeKind::Microvm => false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_uses_cpu_flags_not_dev_kvm() {
        let pvm = "processor : 0\nflags : fpu vme de pse hypervisor lahf_lm\n";
        let vmx = "processor : 0\nflags : fpu vme vmx ept\n";
        assert!(!has_hardware_virtualization(pvm));
        assert!(has_hardware_virtualization(vmx));
        assert_eq!(resolve(RuntimeChoice::Auto, pvm), RuntimeKind::Gvisor);
        assert_eq!(
            resolve("container".parse().unwrap(), pvm),
            RuntimeKind::Container
        );
        assert!("docker".parse::<RuntimeChoice>().is_err());
    }
}
