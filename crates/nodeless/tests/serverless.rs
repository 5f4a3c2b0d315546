//! The serverless data plane end to end, the way the EKS-on-Fargate walkthrough goes: `nodeless
//! up` (API server, controllers, registry, one local host agent with gVisor sandboxes), an image
//! pushed by skopeo to the cluster's registry, and the real kubectl: pods each on their own
//! `serverless-ip-*` node, logs, exec (WebSocket with 1.33, SPDY with 1.28, a TTY through a
//! pseudo-terminal), port-forward, scale, rollout, deletion leaving nothing behind, admission
//! errors, CrashLoopBackOff, profile deletion, and an agent restart that changes no pod.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::procs::{Proc, free_port, needs_microvm, processes_naming};
use common::{eventually, kubectl_at, tail, which};
use serde_json::Value;

/// The tests share the host's pod network namespace: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn subnet() -> String {
    common::procs::subnet(200, 50)
}

fn needs_sandboxes() -> bool {
    common::procs::needs_sandboxes(&["runsc", "crun", "skopeo", "script"])
}

struct Cluster {
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    registry: String,
    /// `B.C` of this cluster's pod CIDR 10.B.C.0/24.
    subnet: String,
    /// The registry's data dir (credentials, CA).
    registry_dir: PathBuf,
    procs: Vec<Proc>,
    /// The arguments of `nodeless up` (to start it again).
    up_args: Vec<String>,
}

impl Cluster {
    fn data(&self) -> &Path {
        self.dir.path()
    }

    /// `nodeless up` in one process.
    fn up() -> Cluster {
        Cluster::up_with(&[])
    }

    /// `nodeless up` with `extra` arguments.
    fn up_with(extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let (api, reg) = (free_port(), free_port());
        let kubeconfig = dir.path().join("admin.kubeconfig");
        let net = subnet();
        let args: Vec<String> = vec![
            "up".into(),
            format!("--data-dir={}", dir.path().display()),
            format!("--bind=127.0.0.1:{api}"),
            format!("--registry-bind=127.0.0.1:{reg}"),
            "--agent-listen=127.0.0.1:0".into(),
            format!("--pod-cidr=10.{net}.0/24"),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(extra.iter().map(|a| a.to_string()))
            .collect();
        let p = Proc::spawn(&args, dir.path().join("up.log"));
        let c = Cluster {
            kubeconfig,
            registry: format!("127.0.0.1:{reg}"),
            subnet: net,
            registry_dir: dir.path().join("registry"),
            procs: vec![p],
            up_args: args,
            dir,
        };
        c.wait_host();
        c
    }

    fn log(&self) -> String {
        self.procs
            .iter()
            .map(|p| tail(&p.log(), 60))
            .collect::<Vec<_>>()
            .join("\n----\n")
    }

    /// Until the API answers and the host agent has published its Lease.
    fn wait_host(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.kubeconfig.exists() {
                let out = self.kubectl(
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
                );
                if out.status.success() && !out.stdout.is_empty() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not come up:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kubectl(&self, binary: &str, args: &[&str]) -> Output {
        kubectl_at(binary, &self.kubeconfig, self.data(), args, None)
    }

    fn ok(&self, binary: &str, args: &[&str]) -> String {
        let out = self.kubectl(binary, args);
        assert!(
            out.status.success(),
            "{binary} {args:?} failed: {}\nstdout: {}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl create -f -` of `manifest`.
    fn ok_stdin_create(&self, manifest: &str) {
        let out = kubectl_at(
            "kubectl",
            &self.kubeconfig,
            self.data(),
            &["create", "-f", "-"],
            Some(manifest),
        );
        assert!(
            out.status.success(),
            "kubectl create: {}\nlogs:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok("kubectl", &a)).unwrap()
    }

    /// Builds a busybox image running `cmd` with `files`, pushes it with skopeo as `repo:tag`.
    fn push(&self, repo: &str, tag: &str, cmd: &[&str], files: &[(&str, &str)]) -> String {
        common::push_busybox(
            &self.registry,
            &self.registry_dir,
            self.data(),
            (repo, tag),
            cmd,
            files,
        )
    }

    fn pods(&self, ns: &str, selector: &str) -> Vec<Value> {
        let v = self.json(&["get", "pods", "-n", ns, "-l", selector]);
        v["items"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until exactly `n` pods match, all Running and Ready, not terminating.
    fn running(&self, ns: &str, selector: &str, n: usize, secs: u64) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let pods = self.pods(ns, selector);
            let ready = pods
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| {
                    p["status"]["phase"] == "Running"
                        && p["status"]["conditions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
                .count();
            if ready == n && pods.len() == n {
                return pods;
            }
            assert!(
                Instant::now() < deadline,
                "wanted {n} running pods for {selector}, have {}: {}\nlogs:\n{}",
                pods.len(),
                serde_json::to_string_pretty(&pods).unwrap(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn events_for(&self, ns: &str, name: &str) -> String {
        self.ok(
            "kubectl",
            &[
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                &format!("involvedObject.name={name}"),
                "-o",
                "custom-columns=REASON:.reason,MESSAGE:.message",
            ],
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Keep the whole logs of a failed run for whoever debugs it.
            let all: String = self.procs.iter().map(|p| p.log()).collect();
            let path =
                std::env::temp_dir().join(format!("nodeless-failed-{}.log", std::process::id()));
            if std::fs::write(&path, all).is_ok() {
                eprintln!("full logs of the failed run: {}", path.display());
            }
        }
        for p in &mut self.procs {
            p.kill9();
        }
        // Whatever a failed test left behind: sandboxes and shims run from the data dir.
        let d = self.data().display().to_string();
        let _ = Command::new("pkill").args(["-9", "-f", &d]).status();
        std::thread::sleep(Duration::from_millis(200));
        // Pod network namespaces and veths of this cluster's pods, then its bridge.
        for port in bridge_ports(&self.subnet) {
            if let Some(suffix) = port.strip_prefix("nlv") {
                let _ = Command::new("ip")
                    .args(["netns", "del", &format!("nl-{suffix}")])
                    .status();
            }
            let _ = Command::new("ip")
                .args(["-n", "nodeless-pods", "link", "del", &port])
                .status();
        }
        let _ = Command::new("ip")
            .args([
                "-n",
                "nodeless-pods",
                "link",
                "del",
                &bridge_of(&self.subnet),
            ])
            .status();
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

fn name(p: &Value) -> String {
    p["metadata"]["name"].as_str().unwrap().to_string()
}

fn node_of(p: &Value) -> String {
    p["spec"]["nodeName"].as_str().unwrap_or("").to_string()
}

/// `kubectl exec -it POD -- sh` through a pseudo-terminal (`script`), typing `input`.
fn exec_tty(c: &Cluster, binary: &str, pod: &str, input: &str, expect: &str) -> String {
    let exe = which(binary).unwrap();
    let cmdline = format!(
        "{} --kubeconfig {} --cache-dir {} exec -it {pod} -- sh",
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
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait for the shell's prompt before typing.
    while !String::from_utf8_lossy(&seen).contains('#') && Instant::now() < deadline {
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.extend(b);
        }
    }
    stdin.write_all(input.as_bytes()).unwrap();
    stdin.flush().unwrap();
    while !String::from_utf8_lossy(&seen).contains(expect) && Instant::now() < deadline {
        if let Ok(b) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.extend(b);
        }
    }
    let _ = stdin.write_all(b"exit\n");
    drop(stdin);
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        text.contains(expect),
        "{binary} exec -it: wanted {expect:?} in the terminal, saw {text:?}\nlogs:\n{}",
        c.log()
    );
    text
}

/// `kubectl port-forward pod/POD LOCAL:8080` and one HTTP GET through it.
fn port_forward_get(c: &Cluster, binary: &str, pod: &str) -> String {
    let local = free_port();
    let exe = which(binary).unwrap();
    let mut child = Command::new(exe)
        .env("KUBECONFIG", &c.kubeconfig)
        .env("HOME", c.data())
        .args([
            "port-forward",
            &format!("pod/{pod}"),
            &format!("{local}:8080"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let got = (|| {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", local)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
            s.write_all(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            out.contains("200").then_some(out)
        })();
        if let Some(b) = got {
            break b;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{binary} port-forward never answered: {}{}\nlogs:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                c.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    assert!(
        body.contains("hello from the pod"),
        "{binary} port-forward body: {body}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    body
}

fn sandbox_processes(data: &Path) -> Vec<String> {
    processes_naming(data, |l| l.contains("runsc") || l.contains("shim"))
}

/// The bridge the agent makes for pod CIDR 10.B.C.0/24 in the pod network namespace.
fn bridge_of(subnet: &str) -> String {
    let mut parts = subnet.split('.').map(|p| p.parse::<u8>().unwrap());
    let (b, c) = (parts.next().unwrap(), parts.next().unwrap());
    format!("nl0a{b:02x}{c:02x}0024")
}

/// Interfaces still plugged into this cluster's bridge (one veth per pod).
fn bridge_ports(subnet: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "-n",
            "nodeless-pods",
            "-o",
            "link",
            "show",
            "master",
            &bridge_of(subnet),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

fn mounts_under(data: &Path) -> Vec<String> {
    let d = data.join("pods").display().to_string();
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&d)))
        .map(str::to_string)
        .collect()
}

#[test]
fn fargate_walkthrough() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !needs_sandboxes() {
        return;
    }
    let c = Cluster::up();
    let image = c.push(
        "team/web",
        "1",
        &[
            "sh",
            "-c",
            "echo hello from $(hostname); exec httpd -f -p 8080 -h /www",
        ],
        &[("www/index.html", "hello from the pod\n")],
    );

    // The default profile selects `default`: the deployment runs serverless.
    let sp = c.ok("kubectl", &["get", "sp"]);
    assert!(sp.contains("fp-default"), "{sp}");
    c.ok(
        "kubectl",
        &[
            "create",
            "deployment",
            "first-container",
            &format!("--image={image}"),
        ],
    );
    let pods = c.running("default", "app=first-container", 1, 120);
    let pod = name(&pods[0]);
    let node = node_of(&pods[0]);
    let prefix = format!("serverless-ip-10-{}-", c.subnet.replace('.', "-"));
    assert!(node.starts_with(&prefix), "{node}");
    let ip = pods[0]["status"]["podIP"].as_str().unwrap().to_string();
    assert_eq!(node, format!("serverless-ip-{}", ip.replace('.', "-")));
    assert_eq!(
        pods[0]["metadata"]["annotations"]["CapacityProvisioned"],
        "0.25vCPU 0.5GB"
    );
    let cs = &pods[0]["status"]["containerStatuses"][0];
    assert_eq!(cs["ready"], true, "{cs}");
    assert!(cs["state"]["running"]["startedAt"].is_string(), "{cs}");
    assert!(cs["imageID"].as_str().unwrap().contains("@sha256:"), "{cs}");

    let nodes = c.ok("kubectl", &["get", "nodes", "-o", "wide", "--show-labels"]);
    assert!(nodes.contains(&node), "{nodes}");
    assert!(
        nodes.contains("nodeless.io/compute-type=serverless"),
        "{nodes}"
    );
    assert!(nodes.contains("Ready"), "{nodes}");
    let events = c.events_for("default", &pod);
    for reason in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(events.contains(reason), "no {reason} event: {events}");
    }

    // Logs.
    let logs = c.ok("kubectl", &["logs", &pod]);
    assert!(logs.contains(&format!("hello from {pod}")), "{logs}");
    let logs = c.ok(
        "kubectl",
        &["logs", "deploy/first-container", "--timestamps"],
    );
    assert!(logs.contains(" hello from "), "{logs}");

    // exec: WebSocket (1.33) and SPDY (1.28), exit codes, a TTY.
    for k in ["kubectl.1.28", "kubectl.1.33"] {
        if which(k).is_none() {
            continue;
        }
        let out = c.ok(k, &["exec", &pod, "--", "cat", "/www/index.html"]);
        assert_eq!(out, "hello from the pod\n", "{k}");
        let out = c.ok(
            k,
            &["exec", &pod, "--", "sh", "-c", "echo out; echo err >&2"],
        );
        assert_eq!(out, "out\n", "{k}");
        let out = c.kubectl(k, &["exec", &pod, "--", "false"]);
        assert_eq!(out.status.code(), Some(1), "{k} exec false");
        let out = c.kubectl(k, &["exec", &pod, "--", "sh", "-c", "exit 7"]);
        assert_eq!(out.status.code(), Some(7), "{k} exec exit 7");
        let out = common::kubectl_at(
            k,
            &c.kubeconfig,
            c.data(),
            &["exec", "-i", &pod, "--", "wc", "-c"],
            Some("12345"),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "5",
            "{k} exec -i"
        );
        exec_tty(&c, k, &pod, "echo $((6*7))\n", "42");
        port_forward_get(&c, k, &pod);
    }

    // Scale out: each pod on its own node; then back to one.
    c.ok(
        "kubectl",
        &["scale", "deployment/first-container", "--replicas=5"],
    );
    let pods = c.running("default", "app=first-container", 5, 180);
    let mut nodes: Vec<String> = pods.iter().map(node_of).collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 5, "one node per pod: {nodes:?}");

    // Two pods: apart (processes, files) yet reachable by IP.
    let (a, b) = (name(&pods[0]), name(&pods[1]));
    let b_ip = pods[1]["status"]["podIP"].as_str().unwrap().to_string();
    c.ok("kubectl", &["exec", &a, "--", "touch", "/tmp/only-in-a"]);
    let out = c.kubectl("kubectl", &["exec", &b, "--", "ls", "/tmp/only-in-a"]);
    assert!(!out.status.success(), "a file of pod A is visible in pod B");
    let ps = c.ok("kubectl", &["exec", &a, "--", "ps", "-o", "pid,args"]);
    assert_eq!(
        ps.lines().filter(|l| l.contains("httpd")).count(),
        1,
        "pod A sees other pods' processes: {ps}"
    );
    let page = c.ok(
        "kubectl",
        &[
            "exec",
            &a,
            "--",
            "wget",
            "-q",
            "-O-",
            &format!("http://{b_ip}:8080/index.html"),
        ],
    );
    assert_eq!(page, "hello from the pod\n");

    c.ok(
        "kubectl",
        &["scale", "deployment/first-container", "--replicas=1"],
    );
    c.running("default", "app=first-container", 1, 120);
    eventually(60, "nodes of removed pods deleted", || {
        let v = c.json(&["get", "nodes", "-l", "nodeless.io/compute-type=serverless"]);
        (v["items"].as_array().unwrap().len() == 1).then_some(())
    });

    // A new image rolls out; undo brings the first back.
    let image2 = c.push(
        "team/web",
        "2",
        &[
            "sh",
            "-c",
            "echo version two; exec httpd -f -p 8080 -h /www",
        ],
        &[("www/index.html", "hello from the pod\n")],
    );
    c.ok(
        "kubectl",
        &[
            "set",
            "image",
            "deployment/first-container",
            &format!("web={image2}"),
        ],
    );
    c.ok(
        "kubectl",
        &[
            "rollout",
            "status",
            "deployment/first-container",
            "--timeout=180s",
        ],
    );
    let pods = c.running("default", "app=first-container", 1, 120);
    assert_eq!(pods[0]["spec"]["containers"][0]["image"], image2.as_str());
    c.ok(
        "kubectl",
        &["rollout", "undo", "deployment/first-container"],
    );
    c.ok(
        "kubectl",
        &[
            "rollout",
            "status",
            "deployment/first-container",
            "--timeout=180s",
        ],
    );
    let pods = c.running("default", "app=first-container", 1, 120);
    assert_eq!(pods[0]["spec"]["containers"][0]["image"], image.as_str());

    // A crashing container: CrashLoopBackOff with restarts counted.
    let crash = c.push("team/crash", "1", &["sh", "-c", "echo dying; exit 3"], &[]);
    c.ok(
        "kubectl",
        &[
            "create",
            "deployment",
            "crasher",
            &format!("--image={crash}"),
        ],
    );
    let p = eventually(120, "CrashLoopBackOff", || {
        let pods = c.pods("default", "app=crasher");
        let p = pods.first()?.clone();
        let cs = &p["status"]["containerStatuses"][0];
        (cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && cs["restartCount"].as_i64()? >= 1
            && cs["lastState"]["terminated"]["exitCode"] == 3)
            .then_some(p)
    });
    let table = c.ok("kubectl", &["get", "pod", &name(&p)]);
    assert!(table.contains("CrashLoopBackOff"), "{table}");
    // The previous instance's log.
    eventually(120, "the previous instance's log", || {
        let prev = c.ok("kubectl", &["logs", &name(&p), "--previous"]);
        prev.contains("dying").then_some(())
    });
    c.ok("kubectl", &["delete", "deployment", "crasher"]);

    // An init container that fails under restartPolicy Never: the pod fails (kubelet's rule),
    // and is not started again.
    let badinit = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"badinit"}},
        "spec":{{"restartPolicy":"Never",
          "initContainers":[{{"name":"check","image":"{crash}"}}],
          "containers":[{{"name":"c","image":"{crash}","command":["true"]}}]}}}}"#
    );
    c.ok_stdin_create(&badinit);
    let failed = eventually(120, "the pod with a failing init container failed", || {
        let p = c.json(&["get", "pod", "badinit"]);
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    let init = &failed["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["exitCode"], 3, "{init}");
    assert_eq!(init["restartCount"], 0, "{init}");
    c.ok("kubectl", &["delete", "pod", "badinit"]);

    // What a serverless pod cannot have: one message naming every field.
    let bad = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"hostnet"},
        "spec":{"hostNetwork":true,"containers":[{"name":"c","image":"x","ports":[{"containerPort":80,"hostPort":80}]}]}}"#;
    let out = common::kubectl_at(
        "kubectl",
        &c.kubeconfig,
        c.data(),
        &["create", "-f", "-"],
        Some(bad),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("(Forbidden)") && err.contains("HostNetwork") && err.contains("HostPort"),
        "{err}"
    );

    // A namespace no profile selects and no worker node: Pending with the reason.
    c.ok("kubectl", &["create", "namespace", "plain"]);
    c.ok(
        "kubectl",
        &["run", "lonely", "-n", "plain", &format!("--image={image}")],
    );
    eventually(60, "FailedScheduling for a pod without a profile", || {
        let ev = c.events_for("plain", "lonely");
        ev.contains("FailedScheduling").then_some(())
    });
    let p = c.json(&["get", "pod", "lonely", "-n", "plain"]);
    assert_eq!(p["status"]["phase"], "Pending");
    assert!(p["spec"]["nodeName"].is_null());

    // Deleting the profile evicts its pods.
    let sp = r#"{"apiVersion":"nodeless.io/v1","kind":"ServerlessProfile","metadata":{"name":"batch"},
        "spec":{"selectors":[{"namespace":"batch"}]}}"#;
    common::kubectl_at(
        "kubectl",
        &c.kubeconfig,
        c.data(),
        &["create", "-f", "-"],
        Some(sp),
    );
    c.ok("kubectl", &["create", "namespace", "batch"]);
    c.ok(
        "kubectl",
        &["run", "worker", "-n", "batch", &format!("--image={image}")],
    );
    c.running("batch", "run=worker", 1, 120);
    c.ok("kubectl", &["delete", "sp", "batch"]);
    eventually(90, "pods of a deleted profile evicted", || {
        c.pods("batch", "run=worker").is_empty().then_some(())
    });

    // Delete everything: pods, nodes and sandboxes go, nothing left on the host.
    c.ok("kubectl", &["delete", "deployment", "first-container"]);
    c.ok("kubectl", &["delete", "pod", "lonely", "-n", "plain"]);
    eventually(120, "all serverless pods and nodes gone", || {
        let pods = c.json(&["get", "pods", "-A"]);
        let nodes = c.json(&["get", "nodes"]);
        (pods["items"].as_array().unwrap().is_empty()
            && nodes["items"].as_array().unwrap().is_empty())
        .then_some(())
    });
    eventually(
        60,
        "no sandbox processes, mounts or interfaces left",
        || {
            let procs = sandbox_processes(c.data());
            let mounts = mounts_under(c.data());
            let ports = bridge_ports(&c.subnet);
            (procs.is_empty() && mounts.is_empty() && ports.is_empty()).then_some(())
        },
    );
}

/// Killing the host agent and starting it again changes no running pod.
#[test]
fn agent_restart_keeps_pods() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !needs_sandboxes() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (api, reg) = (free_port(), free_port());
    let d = dir.path().display().to_string();
    let net = subnet();
    let server = Proc::spawn(
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
        format!("--pod-cidr=10.{net}.0/24"),
        "--node-name=restart-host".into(),
    ];
    let agent = Proc::spawn(&agent_args, dir.path().join("agent.log"));
    let mut c = Cluster {
        kubeconfig,
        registry: format!("127.0.0.1:{reg}"),
        subnet: net,
        // The registry of `nodeless server` lives in DATA/server/registry.
        registry_dir: dir.path().join("server/registry"),
        procs: vec![server, agent],
        up_args: Vec::new(),
        dir,
    };
    let sp = r#"{"apiVersion":"nodeless.io/v1","kind":"ServerlessProfile","metadata":{"name":"all"},
        "spec":{"selectors":[{"namespace":"default"}]}}"#;
    c.wait_host();
    let out = common::kubectl_at(
        "kubectl",
        &c.kubeconfig,
        c.data(),
        &["create", "-f", "-"],
        Some(sp),
    );
    assert!(out.status.success());
    let image = c.push(
        "team/web",
        "1",
        &["sh", "-c", "while true; do echo tick; sleep 1; done"],
        &[],
    );
    c.ok(
        "kubectl",
        &[
            "create",
            "deployment",
            "steady",
            &format!("--image={image}"),
        ],
    );
    let before = c.running("default", "app=steady", 1, 120);
    let pod = name(&before[0]);
    let cs = before[0]["status"]["containerStatuses"][0].clone();

    c.procs[1].kill9();
    std::thread::sleep(Duration::from_secs(2));
    let logs_mid = c.ok(
        "kubectl",
        &["get", "pod", &pod, "-o", "jsonpath={.status.phase}"],
    );
    assert_eq!(logs_mid, "Running");
    let agent = Proc::spawn(&agent_args, c.data().join("agent2.log"));
    c.procs[1] = agent;
    std::thread::sleep(Duration::from_secs(5));
    let after = c.running("default", "app=steady", 1, 60);
    assert_eq!(name(&after[0]), pod, "the pod was replaced");
    let cs2 = &after[0]["status"]["containerStatuses"][0];
    assert_eq!(cs2["containerID"], cs["containerID"], "container restarted");
    assert_eq!(cs2["restartCount"], cs["restartCount"]);
    assert_eq!(
        cs2["state"]["running"]["startedAt"],
        cs["state"]["running"]["startedAt"]
    );
    assert_eq!(after[0]["status"]["podIP"], before[0]["status"]["podIP"]);
    // Still logging, and exec still works through the new agent.
    let n1 = c.ok("kubectl", &["logs", &pod]).lines().count();
    std::thread::sleep(Duration::from_secs(3));
    let n2 = c.ok("kubectl", &["logs", &pod]).lines().count();
    assert!(n2 > n1, "the container stopped logging across the restart");
    let out = c.ok("kubectl", &["exec", &pod, "--", "echo", "still here"]);
    assert_eq!(out, "still here\n");

    c.ok("kubectl", &["delete", "deployment", "steady"]);
    eventually(120, "pod and sandbox gone", || {
        (c.pods("default", "app=steady").is_empty() && sandbox_processes(c.data()).is_empty())
            .then_some(())
    });

    // Hybrid: a worker node (crun) takes the pods that no profile selects.
    let worker_net = subnet();
    let worker = Proc::spawn(
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
    );
    c.procs.push(worker);
    eventually(60, "worker node Ready", || {
        let out = c.kubectl("kubectl", &["get", "node", "worker-1"]);
        String::from_utf8_lossy(&out.stdout)
            .contains(" Ready")
            .then_some(())
    });
    c.ok("kubectl", &["create", "namespace", "plain"]);
    c.ok(
        "kubectl",
        &[
            "run",
            "onworker",
            "-n",
            "plain",
            &format!("--image={image}"),
            "--restart=Never",
        ],
    );
    let pods = c.running("plain", "run=onworker", 1, 120);
    assert_eq!(node_of(&pods[0]), "worker-1");
    assert_eq!(pods[0]["spec"]["schedulerName"], "default-scheduler");
    let cid = pods[0]["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(cid.starts_with("crun://"), "{cid}");
    let out = c.ok(
        "kubectl",
        &["exec", "-n", "plain", "onworker", "--", "echo", "on crun"],
    );
    assert_eq!(out, "on crun\n");
    let logs = c.ok("kubectl", &["logs", "-n", "plain", "onworker"]);
    assert!(logs.contains("tick"), "{logs}");
    c.ok("kubectl", &["delete", "pod", "-n", "plain", "onworker"]);
    eventually(60, "worker pod gone", || {
        c.pods("plain", "run=onworker").is_empty().then_some(())
    });
}

fn qemu_processes(data: &Path) -> Vec<String> {
    processes_naming(data, |l| l.contains("qemu-system"))
}

/// `nodeless up --runtime microvm`: pods in QEMU micro-VMs (software emulation on this kind of
/// host) through the same kubectl paths as gVisor pods: an init container filling an emptyDir,
/// a readiness probe (exec in the VM), logs, exec (WebSocket and SPDY, stdin, a TTY, exit
/// codes), port-forward, a crashing container restarted in its VM with `--previous` logs, the
/// whole `nodeless up` killed and started again without touching the VM, and deletion leaving
/// no QEMU, pod directory or veth behind.
#[test]
fn micro_vm_pods() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The micro-VM's prerequisites, then the tools the rest of the cluster needs.
    if !needs_microvm("micro_vm_pods") || !needs_sandboxes() {
        return;
    }
    let mut c = Cluster::up_with(&["--runtime=microvm"]);
    let image = c.push("team/vm", "1", &["sh"], &[]);
    let pod = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"vm1","labels":{{"app":"vm"}}}},
        "spec":{{
          "initContainers":[{{"name":"fill","image":"{image}",
            "command":["sh","-c","echo hello from the pod > /www/index.html"],
            "volumeMounts":[{{"name":"www","mountPath":"/www"}}]}}],
          "containers":[{{"name":"web","image":"{image}",
            "command":["sh","-c","echo hello from $(hostname); exec httpd -f -p 8080 -h /www"],
            "readinessProbe":{{"exec":{{"command":["cat","/www/index.html"]}},"periodSeconds":2}},
            "volumeMounts":[{{"name":"www","mountPath":"/www"}}]}}],
          "volumes":[{{"name":"www","emptyDir":{{}}}}]}}}}"#
    );
    c.ok_stdin_create(&pod);
    let pods = c.running("default", "app=vm", 1, 240);
    let node = node_of(&pods[0]);
    assert!(node.starts_with("serverless-ip-10-"), "{node}");
    let cs = pods[0]["status"]["containerStatuses"][0].clone();
    let cid = cs["containerID"].as_str().unwrap().to_string();
    assert!(cid.starts_with("microvm://"), "{cs}");
    let init = &pods[0]["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["reason"], "Completed", "{init}");
    let vms = qemu_processes(c.data());
    assert_eq!(vms.len(), 1, "{vms:?}");
    let events = c.events_for("default", "vm1");
    for reason in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(events.contains(reason), "no {reason} event: {events}");
    }

    let logs = c.ok("kubectl", &["logs", "vm1"]);
    assert!(logs.contains("hello from vm1"), "{logs}");
    for k in ["kubectl.1.28", "kubectl.1.33"] {
        if which(k).is_none() {
            continue;
        }
        let out = c.ok(k, &["exec", "vm1", "--", "cat", "/www/index.html"]);
        assert_eq!(out, "hello from the pod\n", "{k}");
        let out = c.ok(
            k,
            &["exec", "vm1", "--", "sh", "-c", "echo out; echo err >&2"],
        );
        assert_eq!(out, "out\n", "{k}");
        let out = c.kubectl(k, &["exec", "vm1", "--", "false"]);
        assert_eq!(out.status.code(), Some(1), "{k} exec false");
        let out = common::kubectl_at(
            k,
            &c.kubeconfig,
            c.data(),
            &["exec", "-i", "vm1", "--", "wc", "-c"],
            Some("12345"),
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "5",
            "{k} exec -i"
        );
        exec_tty(&c, k, "vm1", "echo $((6*7))\n", "42");
        port_forward_get(&c, k, "vm1");
    }

    // A crashing container runs again in its VM; the previous run's log stays.
    let crash = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"crash","labels":{{"app":"crash"}}}},
        "spec":{{"containers":[{{"name":"c","image":"{image}",
          "command":["sh","-c","echo boom; exit 3"]}}]}}}}"#
    );
    c.ok_stdin_create(&crash);
    let status = eventually(120, "the crashing container restarted", || {
        let p = c.json(&["get", "pod", "crash"]);
        let cs = p["status"]["containerStatuses"][0].clone();
        (cs["restartCount"].as_i64().unwrap_or(0) >= 1
            && cs["lastState"]["terminated"]["exitCode"] == 3)
            .then_some(cs)
    });
    assert_eq!(
        status["lastState"]["terminated"]["reason"], "Error",
        "{status}"
    );
    let prev = c.ok("kubectl", &["logs", "crash", "--previous"]);
    assert!(prev.contains("boom"), "{prev}");
    assert_eq!(qemu_processes(c.data()).len(), 2);

    // attach -i: the container's stdin is in the guest; stdinOnce closes it after the session.
    let cat = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"catvm","labels":{{"app":"catvm"}}}},
        "spec":{{"restartPolicy":"Never","containers":[{{"name":"c","image":"{image}",
          "command":["cat"],"stdin":true,"stdinOnce":true}}]}}}}"#
    );
    c.ok_stdin_create(&cat);
    c.running("default", "app=catvm", 1, 120);
    // Pods in two VMs reach each other by IP, and see nothing of each other's files.
    let vm1_ip = pods[0]["status"]["podIP"].as_str().unwrap().to_string();
    let url = format!("http://{vm1_ip}:8080/index.html");
    let out = c.ok("kubectl", &["exec", "catvm", "--", "wget", "-qO-", &url]);
    assert_eq!(out, "hello from the pod\n");
    let out = c.kubectl(
        "kubectl",
        &["exec", "catvm", "--", "cat", "/www/index.html"],
    );
    assert!(
        !out.status.success(),
        "catvm sees vm1's volume: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = common::kubectl_at(
        "kubectl",
        &c.kubeconfig,
        c.data(),
        &["attach", "-i", "catvm"],
        Some("hello-vm\n"),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello-vm"),
        "attach -i: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let done = eventually(60, "cat ended with its stdin", || {
        let p = c.json(&["get", "pod", "catvm"]);
        (p["status"]["phase"] == "Succeeded").then_some(p)
    });
    let logs = done["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"].clone();
    assert_eq!(logs, 0, "{done}");
    c.ok("kubectl", &["delete", "pod", "catvm"]);

    // An init container that fails under restartPolicy Never fails the pod; its VM is gone.
    let bad = format!(
        r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"badinit"}},
        "spec":{{"restartPolicy":"Never",
          "initContainers":[{{"name":"check","image":"{image}","command":["sh","-c","exit 4"]}}],
          "containers":[{{"name":"c","image":"{image}","command":["true"]}}]}}}}"#
    );
    c.ok_stdin_create(&bad);
    let failed = eventually(120, "the pod with a failing init container failed", || {
        let p = c.json(&["get", "pod", "badinit"]);
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    let init = &failed["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["exitCode"], 4, "{init}");
    assert_eq!(init["state"]["terminated"]["reason"], "Error", "{init}");
    assert_eq!(qemu_processes(c.data()).len(), 2);
    c.ok("kubectl", &["delete", "pod", "badinit"]);

    // The VM outlives the whole `nodeless up`; the new process takes it back.
    let before = c.json(&["get", "pod", "vm1"]);
    c.procs[0].kill9();
    assert!(
        qemu_processes(c.data()).contains(&vms[0]),
        "the VM went with the agent"
    );
    let again = Proc::spawn(&c.up_args, c.data().join("up2.log"));
    c.procs[0] = again;
    c.wait_host();
    std::thread::sleep(Duration::from_secs(3));
    let after = c.running("default", "app=vm", 1, 60);
    let (cs1, cs2) = (
        &before["status"]["containerStatuses"][0],
        &after[0]["status"]["containerStatuses"][0],
    );
    assert_eq!(cs2["containerID"], cs1["containerID"]);
    assert_eq!(cs2["restartCount"], cs1["restartCount"]);
    assert_eq!(
        cs2["state"]["running"]["startedAt"],
        cs1["state"]["running"]["startedAt"]
    );
    assert_eq!(after[0]["status"]["podIP"], before["status"]["podIP"]);
    assert!(
        qemu_processes(c.data()).contains(&vms[0]),
        "QEMU was replaced"
    );
    let out = c.ok("kubectl", &["exec", "vm1", "--", "echo", "still here"]);
    assert_eq!(out, "still here\n");

    c.ok("kubectl", &["delete", "pod", "vm1", "crash", "--wait=true"]);
    eventually(120, "VMs, pod directories and veths gone", || {
        let pods_dir = c.data().join("agent/pods");
        let left = std::fs::read_dir(&pods_dir).map(|d| d.count()).unwrap_or(0);
        (qemu_processes(c.data()).is_empty() && left == 0 && bridge_ports(&c.subnet).is_empty())
            .then_some(())
    });
    let nodes = c.ok("kubectl", &["get", "nodes", "-o", "name"]);
    assert!(!nodes.contains("serverless-ip-"), "{nodes}");
}
