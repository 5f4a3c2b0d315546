//! `kubectl attach` with stdin and `kubectl run -it` end to end, with the real kubectl (1.33 over
//! WebSocket, 1.28 over SPDY) against `nodeless server` and a host agent running gVisor
//! sandboxes (and `run -it` on a crun worker node too): `run -it --rm -- sh` typed into through a pseudo-terminal (`script`) runs what is
//! typed, ends when the shell exits (stdinOnce) and deletes the pod; `attach -i` to a pod whose
//! container has `stdin: true` running `cat` gets its lines echoed back, again after the agent
//! was restarted (the container's shim keeps its stdin); `attach -i` to a container without
//! `stdin: true` is refused. And a pod writing past its `ephemeral-storage` limit, and one
//! filling an emptyDir past its `sizeLimit`, are evicted (Failed, reason Evicted, kubelet's
//! message and event, no DisruptionTarget) and not restarted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::procs::{Proc, free_port};
use common::{eventually, kubectl_at, kubectl_versions, tail, which};

/// A pod subnet of its own (`B.C` of 10.B.C.0/24), apart from the other tests' (200-249).
fn subnet() -> String {
    common::procs::subnet(150, 40)
}

fn needs_sandboxes() -> bool {
    common::procs::needs_sandboxes(&["runsc", "skopeo", "script"])
}

/// Starts `nodeless ARGS`; agents measure pods' storage every second (kubelet: every 10 s).
fn spawn(args: &[String], log: PathBuf) -> Proc {
    let mut args = args.to_vec();
    if args.first().is_some_and(|a| a == "agent") {
        args.push("--eviction-interval=1s".into());
    }
    Proc::spawn(&args, log)
}

/// `nodeless server` plus one host agent (restartable), in a temporary data dir.
struct Cluster {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    registry: String,
    server: Proc,
    agent: Proc,
    agent_args: Vec<String>,
    /// A worker node (crun), when started.
    worker: Option<Proc>,
}

impl Cluster {
    fn up() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (api, reg) = (free_port(), free_port());
        let d = dir.path().display().to_string();
        let server = spawn(
            &[
                "server".into(),
                format!("--data-dir={d}/server"),
                format!("--bind=127.0.0.1:{api}"),
                format!("--registry-bind=127.0.0.1:{reg}"),
            ],
            dir.path().join("server.log"),
        );
        let kubeconfig = dir.path().join("server/admin.kubeconfig");
        eventually(60, "server kubeconfig", || {
            kubeconfig.exists().then_some(())
        });
        let agent_args: Vec<String> = vec![
            "agent".into(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--data-dir={d}/agent"),
            "--listen=127.0.0.1:0".into(),
            format!("--pod-cidr=10.{}.0/24", subnet()),
            "--node-name=attach-host".into(),
        ];
        let agent = spawn(&agent_args, dir.path().join("agent.log"));
        let c = Cluster {
            dir,
            kubeconfig,
            registry: format!("127.0.0.1:{reg}"),
            server,
            agent,
            agent_args,
            worker: None,
        };
        eventually(120, "the host agent's lease", || {
            let out = c.kubectl(
                "kubectl",
                &[
                    "get",
                    "leases",
                    "-n",
                    "kube-system",
                    "-l",
                    "nodeless.io/host-agent=true",
                    "-o",
                    "name",
                ],
                None,
            );
            (out.status.success() && !out.stdout.is_empty()).then_some(())
        });
        let sp = r#"{"apiVersion":"nodeless.io/v1","kind":"ServerlessProfile","metadata":{"name":"all"},
            "spec":{"selectors":[{"namespace":"default"}]}}"#;
        c.ok("kubectl", &["create", "-f", "-"], Some(sp));
        c
    }

    fn data(&self) -> &Path {
        self.dir.path()
    }

    fn log(&self) -> String {
        let mut s = String::new();
        for f in ["server.log", "agent.log", "agent2.log", "worker.log"] {
            let t = std::fs::read_to_string(self.data().join(f)).unwrap_or_default();
            s.push_str(&format!("---- {f}\n{}\n", tail(&t, 60)));
        }
        s
    }

    fn kubectl(&self, binary: &str, args: &[&str], stdin: Option<&str>) -> std::process::Output {
        kubectl_at(binary, &self.kubeconfig, self.data(), args, stdin)
    }

    fn ok(&self, binary: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.kubectl(binary, args, stdin);
        assert!(
            out.status.success(),
            "{binary} {args:?} failed: {}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Builds a busybox image and pushes it with skopeo as `repo:tag`.
    fn push(&self, repo: &str, tag: &str, cmd: &[&str]) -> String {
        common::push_busybox(
            &self.registry,
            &self.data().join("server/registry"),
            self.data(),
            (repo, tag),
            cmd,
            &[],
        )
    }

    fn phase(&self, pod: &str) -> String {
        let out = self.kubectl(
            "kubectl",
            &["get", "pod", pod, "-o", "jsonpath={.status.phase}"],
            None,
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_running(&self, pod: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.phase(pod) != "Running" {
            assert!(
                Instant::now() < deadline,
                "pod {pod} not Running\nlogs:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn gone(&self, ns: &str, pod: &str) -> bool {
        let out = self.kubectl("kubectl", &["get", "pod", "-n", ns, pod], None);
        String::from_utf8_lossy(&out.stderr).contains("NotFound")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("logs:\n{}", self.log());
        }
        self.agent.kill9();
        if let Some(w) = self.worker.as_mut() {
            w.kill9();
        }
        self.server.kill9();
        let d = self.data().display().to_string();
        // Sandboxes and shims started from this data dir.
        let _ = Command::new("pkill").args(["-9", "-f", &d]).status();
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut ms: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(1))
                .filter(|m| m.starts_with(&d))
                .collect();
            ms.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ms {
                let _ = Command::new("umount").args(["-l", m]).status();
            }
        }
    }
}

/// Output of a child's stdout, read on a thread.
fn reader(mut out: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    rx
}

/// Reads into `seen` until it contains `want` or `deadline` passes.
fn read_until(
    rx: &std::sync::mpsc::Receiver<Vec<u8>>,
    seen: &mut Vec<u8>,
    want: &str,
    deadline: Instant,
) -> bool {
    while Instant::now() < deadline {
        if String::from_utf8_lossy(seen).contains(want) {
            return true;
        }
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.extend(b);
        }
    }
    String::from_utf8_lossy(seen).contains(want)
}

/// `kubectl run -it --rm --restart=Never POD --image=IMAGE -- sh` through a pseudo-terminal,
/// typing a command and `exit`: the output shows, kubectl ends, the pod is deleted.
fn run_it(c: &Cluster, binary: &str, ns: &str, pod: &str, image: &str) {
    let exe = which(binary).unwrap();
    let cmdline = format!(
        "{} --kubeconfig {} --cache-dir {} run -n {ns} -it --rm --restart=Never {pod} --image={image} -- sh",
        exe.display(),
        c.kubeconfig.display(),
        c.data().join(format!("kube-cache-{binary}")).display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmdline, "/dev/null"])
        .env("HOME", c.data())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = reader(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(150);
    let attached = read_until(&rx, &mut seen, "try pressing enter", deadline);
    if !attached {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "{binary} run -it did not attach: {:?}\nlogs:\n{}",
            String::from_utf8_lossy(&seen),
            c.log()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    stdin
        .write_all(b"[ -t 0 ] && echo on-a-tty; echo hi-$((6*7)); exit\r")
        .unwrap();
    stdin.flush().unwrap();
    let answered = read_until(
        &rx,
        &mut seen,
        "hi-42",
        Instant::now() + Duration::from_secs(60),
    );
    // The shell exits, the attach ends, kubectl deletes the pod and exits.
    let end = Instant::now() + Duration::from_secs(90);
    let mut status = None;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend(b);
        }
    }
    while let Ok(b) = rx.try_recv() {
        seen.extend(b);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        answered,
        "{binary} run -it: no hi-42 in {text:?}\nlogs:\n{}",
        c.log()
    );
    assert!(
        status.is_some(),
        "{binary} run -it did not end after exit: {text:?}\nlogs:\n{}",
        c.log()
    );
    assert!(text.contains("deleted"), "{binary} --rm: {text:?}");
    assert!(
        text.contains("on-a-tty\r\n"),
        "{binary} run -it: the shell's stdin is no terminal: {text:?}"
    );
    println!("{binary} run -it transcript: {text:?}");
    eventually(60, "the --rm pod gone", || c.gone(ns, pod).then_some(()));
}

/// `kubectl attach -i POD` with a pipe for stdin: a line written comes back through `cat`.
fn attach_echo(c: &Cluster, binary: &str, pod: &str, line: &str) {
    let exe = which(binary).unwrap();
    let mut child = Command::new(exe)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.data())
        .arg("--cache-dir")
        .arg(c.data().join(format!("kube-cache-{binary}")))
        .args(["attach", "-i", pod])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = reader(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = Vec::new();
    // Until the session is up, a line may be sent before the output is followed: resend.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut got = false;
    while !got && Instant::now() < deadline {
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        got = read_until(
            &rx,
            &mut seen,
            line,
            Instant::now() + Duration::from_secs(3),
        );
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "{binary} attach -i ended ({status}) early: {err}\nlogs:\n{}",
                c.log()
            );
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "{binary} attach -i {pod}: {:?}",
        String::from_utf8_lossy(&seen)
    );
    assert!(
        got,
        "{binary} attach -i: {line:?} not echoed, saw {:?}\nlogs:\n{}",
        String::from_utf8_lossy(&seen),
        c.log()
    );
}

#[test]
fn attach_stdin_and_run_it() {
    if !needs_sandboxes() {
        return;
    }
    let mut c = Cluster::up();
    let image = c.push("team/shell", "1", &["sh", "-c", "sleep 100000"]);
    let versions: Vec<String> = kubectl_versions()
        .into_iter()
        .filter(|v| v != "kubectl.1.31")
        .collect();

    // A container with stdin: true running cat, and one without.
    let cat = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"cat"}},
           "spec":{{"containers":[{{"name":"c","image":"{image}","command":["cat"],"stdin":true}}]}}}}"#
    );
    c.ok("kubectl", &["create", "-f", "-"], Some(&cat));
    let plain = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"plain"}},
           "spec":{{"containers":[{{"name":"c","image":"{image}"}}]}}}}"#
    );
    c.ok("kubectl", &["create", "-f", "-"], Some(&plain));
    c.wait_running("cat");
    c.wait_running("plain");

    for (i, k) in versions.iter().enumerate() {
        attach_echo(&c, k, "cat", &format!("echo-me-{i}"));
        run_it(&c, k, "default", &format!("t{i}"), &image);
        // No stdin: true, no input.
        let out = c.kubectl(k, &["attach", "-i", "plain"], Some("ignored\n"));
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{k} attach -i plain: {:?} {err:?}", out.status);
        assert!(
            !out.status.success() && err.contains("stdin: true"),
            "{k} attach -i to a container without stdin: {:?} {err}",
            out.status
        );
    }
    // On a worker node (crun): the shell gets the shim's terminal as its stdio.
    let d = c.data().display().to_string();
    let worker_net = {
        let salt = std::process::id() + 7;
        format!("{}.{}", 190 + salt % 10, (salt / 10) % 250 + 1)
    };
    c.worker = Some(spawn(
        &[
            "agent".into(),
            format!("--kubeconfig={}", c.kubeconfig.display()),
            format!("--data-dir={d}/worker"),
            "--worker".into(),
            "--runtime=auto".into(),
            "--node-name=worker-1".into(),
            "--listen=127.0.0.1:0".into(),
            format!("--pod-cidr=10.{worker_net}.0/24"),
        ],
        c.data().join("worker.log"),
    ));
    eventually(60, "worker node Ready", || {
        let out = c.kubectl("kubectl", &["get", "node", "worker-1"], None);
        String::from_utf8_lossy(&out.stdout)
            .contains(" Ready")
            .then_some(())
    });
    c.ok("kubectl", &["create", "namespace", "plain"], None);
    for (i, k) in versions.iter().enumerate() {
        run_it(&c, k, "plain", &format!("w{i}"), &image);
    }

    // The pod that kept its stdin still does.
    assert_eq!(c.phase("cat"), "Running");

    // A new agent attaches to the stdin the shim kept.
    c.agent.kill9();
    std::thread::sleep(Duration::from_secs(2));
    c.agent = spawn(&c.agent_args, c.data().join("agent2.log"));
    std::thread::sleep(Duration::from_secs(5));
    c.wait_running("cat");
    for k in &versions {
        attach_echo(&c, k, "cat", &format!("after-restart-{k}"));
    }
    let logs = c.ok("kubectl", &["logs", "cat"], None);
    assert!(
        logs.contains("echo-me-0") && logs.contains("after-restart"),
        "{logs}"
    );
    c.ok(
        "kubectl",
        &["delete", "pod", "cat", "plain", "--grace-period=1"],
        None,
    );

    // Storage eviction, as kubelet does it: a pod writing past its ephemeral-storage limit, and
    // one filling its emptyDir past the volume's sizeLimit, are evicted (Failed, reason Evicted,
    // kubelet's message, an Evicted event) and not restarted. Neither gets a DisruptionTarget
    // condition: kubelet gives one to its node-pressure evictions only, not to these limit
    // evictions (their condition, when there is one, is kept by every later status write: the
    // agent's unit tests).
    let hog = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"hog"}},
           "spec":{{"restartPolicy":"Always","containers":[{{"name":"c","image":"{image}",
             "command":["sh","-c","yes filling-the-log-past-the-limit | head -n 200000; dd if=/dev/zero of=/big bs=1024 count=4096; sleep 100000"],
             "resources":{{"limits":{{"ephemeral-storage":"2Mi"}}}}}}]}}}}"#
    );
    c.ok("kubectl", &["create", "-f", "-"], Some(&hog));
    let scratch = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"scratch"}},
           "spec":{{"restartPolicy":"Always","containers":[{{"name":"c","image":"{image}",
             "command":["sh","-c","dd if=/dev/zero of=/data/big bs=1024 count=4096; sync; sleep 100000"],
             "volumeMounts":[{{"name":"data","mountPath":"/data"}}]}}],
             "volumes":[{{"name":"data","emptyDir":{{"sizeLimit":"1Mi"}}}}]}}}}"#
    );
    c.ok("kubectl", &["create", "-f", "-"], Some(&scratch));
    for (pod, want) in [
        (
            "hog",
            "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. ",
        ),
        (
            "scratch",
            "Usage of EmptyDir volume \"data\" exceeds the limit \"1Mi\". ",
        ),
    ] {
        let status = eventually(180, &format!("the {pod} pod evicted"), || {
            let out = c.kubectl("kubectl", &["get", "pod", pod, "-o", "json"], None);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
            (v["status"]["phase"] == "Failed" && v["status"]["reason"] == "Evicted")
                .then(|| v["status"].clone())
        });
        println!("evicted pod {pod} status: {status}");
        assert_eq!(status["message"], want, "{status}");
        let events = c.ok(
            "kubectl",
            &[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.name={pod}"),
                "-o",
                "custom-columns=REASON:.reason,TYPE:.type,MESSAGE:.message",
            ],
            None,
        );
        assert!(
            events.lines().any(|l| l.starts_with("Evicted")
                && l.contains("Warning")
                && l.contains(want.trim_end())),
            "{events}"
        );
    }
    // Some status writes later (the agent's, the eviction's), still as kubelet leaves them.
    std::thread::sleep(Duration::from_secs(3));
    for (pod, limit) in [("hog", "2Mi"), ("scratch", "1Mi")] {
        let v: serde_json::Value =
            serde_json::from_str(&c.ok("kubectl", &["get", "pod", pod, "-o", "json"], None))
                .unwrap();
        let status = &v["status"];
        assert_eq!(
            status["phase"], "Failed",
            "an evicted pod stays Failed: {status}"
        );
        assert_eq!(status["reason"], "Evicted", "{status}");
        assert!(
            status["message"]
                .as_str()
                .is_some_and(|m| m.contains(limit)),
            "{status}"
        );
        assert_eq!(
            status["containerStatuses"][0]["restartCount"], 0,
            "an evicted pod is not restarted, restartPolicy Always notwithstanding: {status}"
        );
        let conditions = status["conditions"].as_array().cloned().unwrap_or_default();
        let of = |t: &str| conditions.iter().find(|c| c["type"] == t).cloned();
        assert!(
            of("DisruptionTarget").is_none(),
            "kubelet marks no limit eviction DisruptionTarget: {status}"
        );
        for t in ["Ready", "ContainersReady"] {
            let c = of(t).unwrap_or_else(|| panic!("no {t} condition: {status}"));
            assert_eq!(c["status"], "False", "{status}");
            assert_eq!(c["reason"], "PodCompleted", "{status}");
        }
        assert!(
            status["containerStatuses"][0]["state"]["terminated"].is_object(),
            "{status}"
        );
    }
}
