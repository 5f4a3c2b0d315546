//! Support for the end-to-end tests that run sandboxes: `nodeless` processes with their logs,
//! free ports, a pod subnet per run, and the check for the sandbox tools.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{bin, which};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A pod subnet of its own for each run (`B.C` of 10.B.C.0/24, B from `base` to `base + span -
/// 1`), so that what an earlier, killed run left in the pod network cannot answer for this
/// run's addresses; test files use distinct ranges.
pub fn subnet(base: u32, span: u32) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let salt = std::process::id() + n * 37;
    format!("{}.{}", base + salt % span, (salt / span) % 250 + 1)
}

/// Whether `tools` are installed; without them the test is skipped, unless
/// `NODELESS_REQUIRE_SANDBOX` is set (CI), where it fails.
pub fn needs_sandboxes(tools: &[&str]) -> bool {
    for tool in tools {
        if which(tool).is_none() {
            assert!(
                std::env::var_os("NODELESS_REQUIRE_SANDBOX").is_none(),
                "{tool} is required (scripts/setup.sh installs it)"
            );
            println!("SKIPPED: {tool} not installed");
            return false;
        }
    }
    true
}

/// A `nodeless` process whose output goes to a log file.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `nodeless ARGS` with debug logs of the agent and sandboxes, and `env`.
    pub fn spawn_with(args: &[String], log: PathBuf, env: &[(&str, &str)]) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(bin())
            .args(args)
            .env("NODELESS_LOG", "info,agent=debug,sandbox=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start nodeless");
        Proc { child, log }
    }

    pub fn spawn(args: &[String], log: PathBuf) -> Proc {
        Self::spawn_with(args, log, &[])
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the micro-VM runtime can boot here (QEMU, mkfs.erofs and the assets of
/// `scripts/microvm-assets.sh`); without it `test` says SKIPPED, or fails when
/// `NODELESS_REQUIRE_MICROVM` is set (CI).
pub fn needs_microvm(test: &str) -> bool {
    let missing = match sandbox::microvm::prerequisites() {
        Ok(_) => return true,
        Err(e) => e.to_string(),
    };
    assert!(
        std::env::var_os("NODELESS_REQUIRE_MICROVM").is_none(),
        "{test}: micro-VM prerequisites missing (NODELESS_REQUIRE_MICROVM is set): {missing}"
    );
    println!("SKIPPED {test}: {missing}");
    false
}

/// `pid args` of the processes whose command line names `dir` and matches `which`.
pub fn processes_naming(dir: &std::path::Path, which: impl Fn(&str) -> bool) -> Vec<String> {
    let d = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let args = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args = String::from_utf8_lossy(&args).replace('\0', " ");
            (args.contains(&d) && which(&args)).then(|| format!("{pid} {}", args.trim_end()))
        })
        .collect()
}
