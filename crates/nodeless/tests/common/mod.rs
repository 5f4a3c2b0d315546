//! Test support: start the real `nodeless server` binary on a free loopback port with a temporary
//! data dir, and run the real kubectl against it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod image;
pub mod procs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub port: u16,
    pub extra_args: Vec<String>,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nodeless")
}

use procs::free_port;

impl Server {
    /// Start with the default (sqlite) store.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut s = Server {
            child: None,
            kubeconfig: dir.path().join("admin.kubeconfig"),
            dir,
            port,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    /// Start (again) the server process on the same data dir and port.
    pub fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let child = Command::new(bin())
            .arg("server")
            .arg("--data-dir")
            .arg(self.dir.path())
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["--registry-bind", "127.0.0.1:0"])
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start nodeless server");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("server exited early with {status}: {}", self.log());
            }
            if self.kubeconfig.exists()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("server did not become ready: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pki/admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl_at("kubectl", &self.kubeconfig, self.dir.path(), args, None)
    }

    pub fn kubectl_v(&self, binary: &str, args: &[&str]) -> Output {
        kubectl_at(binary, &self.kubeconfig, self.dir.path(), args, None)
    }

    pub fn kubectl_stdin(&self, binary: &str, args: &[&str], stdin: &str) -> Output {
        kubectl_at(binary, &self.kubeconfig, self.dir.path(), args, Some(stdin))
    }

    /// Run kubectl and insist on success; returns stdout.
    pub fn ok(&self, binary: &str, args: &[&str]) -> String {
        let out = self.kubectl_v(binary, args);
        assert!(
            out.status.success(),
            "{binary} {args:?} failed: {}\nstdout: {}\nserver log tail: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ok_stdin(&self, binary: &str, args: &[&str], stdin: &str) -> String {
        let out = self.kubectl_stdin(binary, args, stdin);
        assert!(
            out.status.success(),
            "{binary} {args:?} failed: {}\nstdout: {}\nserver log tail: {}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            tail(&self.log(), 30)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The versioned kubectl binaries the end-to-end tests run: the server's own minor (1.33), one
/// in between, and 1.28 (OpenAPI v2 protobuf for `apply`, SPDY-only exec).
pub fn kubectl_versions() -> Vec<String> {
    let mut out = Vec::new();
    for v in ["kubectl.1.33", "kubectl.1.31", "kubectl.1.28"] {
        if which(v).is_some() {
            out.push(v.to_string());
        }
    }
    assert!(
        !out.is_empty(),
        "no versioned kubectl (kubectl.1.NN) on PATH: install the kubectl package"
    );
    out
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/lib/google-cloud-sdk/bin")])
    {
        let p = dir.join(name);
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

pub fn kubectl_at(
    binary: &str,
    kubeconfig: &Path,
    home: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Output {
    let exe = which(binary).unwrap_or_else(|| PathBuf::from(binary));
    let mut cmd = Command::new(exe);
    cmd.env("KUBECONFIG", kubeconfig)
        .env("HOME", home)
        .arg("--cache-dir")
        .arg(home.join(format!("kube-cache-{binary}")))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match stdin {
        None => {
            cmd.stdin(Stdio::null());
            cmd.output().expect("run kubectl")
        }
        Some(input) => {
            use std::io::Write;
            cmd.stdin(Stdio::piped());
            let mut child = cmd.spawn().expect("run kubectl");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait_with_output().expect("kubectl output")
        }
    }
}

/// Poll `f` until it returns Some, or panic after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Builds a busybox image running `cmd` with `files` (an OCI layout under `work`) and pushes it
/// with skopeo as `repo:tag` to the cluster registry at `registry`, whose data dir is `regdir`
/// (its CA and credentials); returns the image reference.
pub fn push_busybox(
    registry: &str,
    regdir: &Path,
    work: &Path,
    (repo, tag): (&str, &str),
    cmd: &[&str],
    files: &[(&str, &str)],
) -> String {
    let rd = regdir.display().to_string();
    let _ = Command::new(bin())
        .args(["registry", "create-repository", repo, "--data-dir", &rd])
        .output();
    let out = Command::new(bin())
        .args(["registry", "get-login-password", "--data-dir", &rd])
        .output()
        .unwrap();
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let layout = work.join(format!("layout-{}-{tag}", repo.replace('/', "-")));
    image::busybox_layout(&layout, tag, cmd, files);
    let dest = format!("{registry}/{repo}:{tag}");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .arg("--dest-creds")
        .arg(format!("nodeless:{token}"))
        .arg("--dest-cert-dir")
        .arg(regdir.join("tls"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dest
}
