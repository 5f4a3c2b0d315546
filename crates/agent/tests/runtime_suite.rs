//! One suite of runtime behaviour, run against every sandbox runtime on this machine: exit
//! codes, OOM, probes (exec, httpGet, tcpSocket, startup), logs (across a restart, with
//! timestamps, followed), exec (with a TTY and a resize, with stdin), stop (SIGTERM, then
//! SIGKILL after the grace period), and isolation (processes, files, memory, the host's
//! files, `kill -1` from inside a pod). The agent's
//! real runtime ([`SandboxRuntime`]) runs the pods, with the given runtime for all of them;
//! a runtime whose tool is missing is SKIPPED (the micro-VM fails instead when
//! `NODELESS_REQUIRE_MICROVM` is set, as in CI). Each entry point has its own data dir and pod
//! subnet, so they run in parallel with each other and with the other test files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agent::runtime::{Runtime, RuntimeStatus};
use agent::sandboxed::SandboxRuntime;
use agent::streams::{ExecRequest, LogOptions, PodStreams};
use common::{fixture_with, logs, pod, read_all, runtime_available, status_until, stop_and_remove};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Event, Pod};
use kube::api::{Api, ListParams};
use sandbox::runtime::RuntimeKind;
use serde_json::json;
use tokio::io::AsyncWriteExt as _;

/// Runs `sh -c script` in `pod`'s first container: (stdout, stderr, exit code).
async fn sh(rt: &SandboxRuntime, pod: &str, script: &str) -> (String, String, i32) {
    common::exec_in(rt, pod, None, &["sh", "-c", script]).await
}

/// The events of the pod with `uid`, as "reason: message".
async fn events_of(client: &kube::Client, uid: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some(uid))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.message.unwrap_or_default()
            )
        })
        .collect()
}

fn first(st: &RuntimeStatus) -> &ContainerStatus {
    &st.container_statuses[0]
}

fn terminated(c: &ContainerStatus) -> Option<&ContainerStateTerminated> {
    c.state.as_ref().and_then(|s| s.terminated.as_ref())
}

fn running(st: &RuntimeStatus) -> bool {
    first(st)
        .state
        .as_ref()
        .is_some_and(|s| s.running.is_some())
}

fn waiting_reason(st: &RuntimeStatus) -> Option<&str> {
    first(st)
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref())
}

/// What every step needs: the runtime and how its pods are made.
struct Ctx<'a> {
    kind: RuntimeKind,
    prefix: &'static str,
    scheduler: &'static str,
    image: String,
    rt: &'a SandboxRuntime,
    client: &'a kube::Client,
}

impl Ctx<'_> {
    /// A pod of this runtime (grace period 1 s, an emptyDir `scratch`).
    fn pod(&self, name: &str, policy: &str, containers: serde_json::Value) -> Pod {
        pod(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {
                "schedulerName": self.scheduler,
                "nodeName": format!("node-{}", self.prefix),
                "restartPolicy": policy,
                "terminationGracePeriodSeconds": 1,
                "containers": containers,
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
        }))
    }

    async fn start(&self, p: Pod, ip: String) {
        let kind = self.kind;
        let name = p.metadata.name.clone().unwrap();
        let t = Instant::now();
        let started = self
            .rt
            .start(&p, &ip)
            .await
            .unwrap_or_else(|e| panic!("{kind}: pod {name} starts: {e}"));
        for c in &started.containers {
            assert!(
                c.container_id.starts_with(&format!("{}://", self.prefix)),
                "{kind}: {c:?}"
            );
        }
        eprintln!(
            "{kind}: pod {name} started in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
}

/// The status of the container `name`.
fn named<'a>(st: &'a RuntimeStatus, name: &str) -> &'a ContainerStatus {
    st.container_statuses
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no status of container {name}: {st:#?}"))
}

fn is_running(c: &ContainerStatus) -> bool {
    c.state.as_ref().is_some_and(|s| s.running.is_some())
}

/// Runs `sh -c script` in `container` of `pod`: (stdout, stderr, exit code).
async fn sh_in(
    rt: &SandboxRuntime,
    pod: &str,
    container: &str,
    script: &str,
) -> (String, String, i32) {
    common::exec_in(rt, pod, Some(container), &["sh", "-c", script]).await
}

/// Waits up to `secs` for an event of `uid` starting with `prefix` ("Reason: message").
async fn event_until(client: &kube::Client, uid: &str, prefix: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let events = events_of(client, uid).await;
        if let Some(e) = events.iter().find(|e| e.starts_with(prefix)) {
            return e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no event {prefix:?} of {uid} in {secs} s: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// (3b) httpGet, tcpSocket and startup probes, on one pod of two containers:
/// - `web` serves /www on 8080 at once (its httpGet readiness probe would pass at once) and on
///   8081 (its tcpSocket liveness probe) only once the test creates /tmp/go; its startup probe
///   passes once 8081 serves. So readiness and liveness must wait for the startup probe.
/// - `nostart`: a startup probe that always fails: killed and restarted ("Unhealthy").
async fn probe_kinds(ctx: &Ctx<'_>, ip: String) {
    let (kind, rt) = (ctx.kind, ctx.rt);
    let t = Instant::now();
    let p = ctx.pod(
        "probes",
        "Always",
        json!([
            {"name": "web", "image": ctx.image, "command": ["sh", "-c",
                "echo up > /www/index.html; httpd -f -p 8080 -h /www & \
                 while ! test -e /tmp/go; do sleep 0.2; done; \
                 httpd -f -p 8081 -h /www & echo $! > /tmp/live.pid; \
                 until wget -q -O /dev/null http://127.0.0.1:8081/index.html; do sleep 0.1; done; \
                 touch /tmp/up; echo serving; exec sleep 3600"],
             "startupProbe": {"exec": {"command": ["test", "-e", "/tmp/up"]},
                "periodSeconds": 1, "timeoutSeconds": 10, "failureThreshold": 120},
             "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080},
                "periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": 1},
             "livenessProbe": {"tcpSocket": {"port": 8081},
                "periodSeconds": 1, "timeoutSeconds": 5, "failureThreshold": 1}},
            {"name": "nostart", "image": ctx.image, "command": ["sh", "-c", "echo waiting; exec sleep 3600"],
             "startupProbe": {"exec": {"command": ["false"]},
                "periodSeconds": 1, "timeoutSeconds": 10, "failureThreshold": 2}},
        ]),
    );
    ctx.start(p, ip.clone()).await;
    let st = status_until(rt, "uid-probes", 30, |s| is_running(named(s, "web"))).await;
    assert_ne!(named(&st, "web").started, Some(true), "{kind}: {st:#?}");

    // The startup probe fails (no /tmp/up): for 3 s, `web` is neither started nor ready
    // (though its readiness probe would pass), and not killed (though its liveness probe would
    // fail). `nostart` is not ready either.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let st = rt.pod_status("uid-probes").unwrap();
        let web = named(&st, "web");
        assert!(
            !st.ready && !web.ready && web.started != Some(true) && web.restart_count == 0,
            "{kind}: readiness or liveness ran before the startup probe passed: {st:#?}"
        );
        assert!(
            !named(&st, "nostart").ready,
            "{kind}: a container (without a readiness probe) whose startup probe has not \
             passed is reported ready; kubelet: not ready before started: {st:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (page, _, code) = sh_in(
        rt,
        "probes",
        "web",
        "wget -q -O- http://127.0.0.1:8080/index.html",
    )
    .await;
    assert_eq!((page.as_str(), code), ("up\n", 0), "{kind}: 8080 serves");
    let events = events_of(ctx.client, "uid-probes").await;
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("Unhealthy: Liveness") || e.starts_with("Unhealthy: Readiness")),
        "{kind}: liveness or readiness probed before the startup probe passed: {events:#?}"
    );

    // `nostart`'s startup probe failed twice: Unhealthy each time, then killed and restarted
    // (meanwhile `web` runs on).
    let e = event_until(
        ctx.client,
        "uid-probes",
        "Killing: Container nostart failed startup probe, will be restarted",
        30,
    )
    .await;
    eprintln!("{kind}: {e}");
    // Kubelet's recorder: `web`'s startup probe failed once a second, each time with the same
    // message: one Event whose count rises, not an Event per attempt.
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), "default");
    let repeats: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.uid.as_deref() == Some("uid-probes")
                && e.involved_object.field_path.as_deref() == Some("spec.containers{web}")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.starts_with("Startup probe failed"))
        })
        .collect();
    assert_eq!(repeats.len(), 1, "{kind}: {repeats:#?}");
    assert!(
        repeats[0].count.unwrap_or(0) >= 2
            && repeats[0].last_timestamp > repeats[0].first_timestamp,
        "{kind}: {repeats:#?}"
    );
    let st = status_until(rt, "uid-probes", 30, |s| {
        named(s, "nostart").restart_count >= 1
    })
    .await;
    let ns = named(&st, "nostart");
    assert!(
        ns.last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some())
            && !ns.ready
            && ns.started != Some(true),
        "{kind}: nostart after its startup probe failed: {st:#?}"
    );
    assert_eq!(named(&st, "web").restart_count, 0, "{kind}: {st:#?}");

    // Startup passes: ready through the httpGet probe.
    assert_eq!(sh_in(rt, "probes", "web", "touch /tmp/go").await.2, 0);
    let st = status_until(rt, "uid-probes", 30, |s| named(s, "web").ready).await;
    assert_eq!(named(&st, "web").started, Some(true), "{kind}: {st:#?}");
    // The httpGet probe really asks: a 404 makes `web` not ready, the page back ready again.
    assert_eq!(sh_in(rt, "probes", "web", "rm /www/index.html").await.2, 0);
    status_until(rt, "uid-probes", 20, |s| !named(s, "web").ready).await;
    event_until(
        ctx.client,
        "uid-probes",
        "Unhealthy: Readiness probe failed: HTTP probe failed with statuscode: 404",
        20,
    )
    .await;
    assert_eq!(
        sh_in(rt, "probes", "web", "echo up > /www/index.html")
            .await
            .2,
        0
    );
    let st = status_until(rt, "uid-probes", 20, |s| named(s, "web").ready).await;
    assert_eq!(named(&st, "web").restart_count, 0, "{kind}: {st:#?}");

    // The tcpSocket liveness probe: 8081 closed -> Unhealthy, killed, restarted.
    let events = events_of(ctx.client, "uid-probes").await;
    assert!(
        !events.iter().any(|e| e.starts_with("Unhealthy: Liveness")),
        "{kind}: liveness failed while 8081 served: {events:#?}"
    );
    assert_eq!(
        sh_in(rt, "probes", "web", "kill $(cat /tmp/live.pid)")
            .await
            .2,
        0
    );
    let e = event_until(
        ctx.client,
        "uid-probes",
        "Unhealthy: Liveness probe failed: dial tcp",
        30,
    )
    .await;
    eprintln!("{kind}: {e}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = rt.pod_status("uid-probes").unwrap();
        if named(&st, "web").restart_count >= 1 {
            break st;
        }
        if Instant::now() > deadline {
            panic!(
                "{kind}: web not restarted 30 s after its liveness probe failed;\n\
                 events: {:#?}\nstatus: {st:#?}",
                events_of(ctx.client, "uid-probes").await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        named(&st, "web")
            .last_state
            .as_ref()
            .is_some_and(|l| l.terminated.is_some()),
        "{kind}: lastState after the liveness kill: {st:#?}"
    );
    eprintln!(
        "{kind}: httpGet, tcpSocket and startup probes checked in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// A file on the host that no pod may see; removed when dropped.
struct HostMarker(std::path::PathBuf);

impl Drop for HostMarker {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Reads a log to its end (or, following, to the container's end) within `secs`.
async fn read_log(rt: &SandboxRuntime, pod: &str, options: LogOptions, secs: u64) -> String {
    let mut s = rt.logs("default", pod, None, options).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(secs), async {
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the log of {pod} ends within {secs} s"));
    String::from_utf8_lossy(&out).into_owned()
}

/// An exec session's stdout (the terminal, with a TTY) to its end and exit code, within 30 s.
async fn finish(s: agent::streams::ExecSession) -> (String, i32) {
    tokio::time::timeout(Duration::from_secs(30), async move {
        let out = read_all(s.stdout.unwrap()).await;
        (out, s.exit.await.unwrap())
    })
    .await
    .expect("the exec session ends")
}

/// Exec with a TTY and stdin (and a resize), with stdin without a TTY, logs (timestamps, follow),
/// isolation (memory, the host's files, `kill -1` from inside) and stop (SIGTERM, then SIGKILL
/// after the grace period), on three pods:
/// - `polite`: traps SIGTERM and exits 0; keeps a marker in its environment and in /dev/shm;
///   a background child would log `child-term` if the stop signal reached it (it must not).
/// - `stubborn`: ignores SIGTERM.
/// - `snoop`: looks for the marker and the host's files, then kills every process it can.
async fn lifecycle(ctx: &Ctx<'_>) {
    let (kind, rt) = (ctx.kind, ctx.rt);
    let t = Instant::now();
    let marker = format!("nodeless-secret-{}-{}", std::process::id(), ctx.prefix);
    let host_name = format!("nodeless-marker-{}-{}", std::process::id(), ctx.prefix);
    let host_file = HostMarker(std::path::PathBuf::from(format!("/tmp/{host_name}")));
    std::fs::write(&host_file.0, b"host-only\n").unwrap();
    let polite = ctx.pod(
        "polite",
        "Always",
        json!([{"name": "main", "image": ctx.image,
            "env": [{"name": "MARKER", "value": marker}],
            "command": ["sh", "-c",
                "trap 'sleep 0.5; echo term; exit 0' TERM; echo $MARKER > /dev/shm/marker || exit 9; \
                 (trap 'echo child-term; exit 0' TERM; while :; do sleep 1; done) & \
                 echo started; while :; do \
                 if test -e /tmp/say; then cat /tmp/say; rm /tmp/say; fi; sleep 1; done"]}]),
    );
    let stubborn = ctx.pod(
        "stubborn",
        "Always",
        json!([{"name": "main", "image": ctx.image, "command": ["sh", "-c",
            "trap '' TERM; echo started; while :; do sleep 1; done"]}]),
    );
    let snoop = ctx.pod(
        "snoop",
        "Always",
        json!([{"name": "main", "image": ctx.image, "command": ["sh", "-c",
            "echo run; i=0; while :; do i=$((i+1)); echo $i > /tmp/beat; sleep 0.5; done"]}]),
    );
    tokio::join!(
        ctx.start(polite, String::new()),
        ctx.start(stubborn, String::new()),
        ctx.start(snoop, String::new()),
    );
    for uid in ["uid-polite", "uid-stubborn", "uid-snoop"] {
        status_until(rt, uid, 30, running).await;
    }

    // Exec with a TTY and stdin: the size set through a resize, commands typed on stdin.
    let s = rt
        .exec(
            "default",
            "polite",
            None,
            ExecRequest {
                command: vec!["sh".into()],
                stdin: true,
                stdout: true,
                tty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(s.stderr.is_none(), "{kind}: a TTY merges stderr");
    s.resize
        .as_ref()
        .expect("a TTY session takes resizes")
        .send(agent::streams::TermSize {
            width: 120,
            height: 40,
        })
        .await
        .unwrap();
    let mut stdin = s.stdin.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stdin
        .write_all(
            b"test -t 0 && test -t 1 && echo is-a-tty; stty size; tty; echo typed-$((6*7))\n",
        )
        .await
        .unwrap();
    // The terminal is the shell's controlling terminal: a typed ^C reaches the foreground
    // `sleep` through the line discipline (its process group, not only the shell).
    let typed = Instant::now();
    stdin.write_all(b"sleep 30\n").await.unwrap();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stdin.write_all(&[3]).await.unwrap();
    }
    stdin
        .write_all(b"echo back-$((2+3)); exit 7\n")
        .await
        .unwrap();
    let s = agent::streams::ExecSession { stdin: None, ..s };
    let (out, code) = finish(s).await;
    let took = typed.elapsed();
    drop(stdin);
    assert!(
        out.contains("is-a-tty\r\n")
            && out.contains("40 120\r\n")
            && out.contains("typed-42")
            && out.contains("back-5"),
        "{kind}: TTY session output: {out:?}"
    );
    assert!(
        took < Duration::from_secs(20),
        "{kind}: a typed ^C did not end the foreground sleep 30 ({took:?}): {out:?}"
    );
    // gVisor (runsc 2022) names no device for the terminal it is handed (`tty` says "not a
    // tty", as under docker; google/gvisor#13535); crun and the micro-VM name the pty.
    if kind != RuntimeKind::Gvisor {
        assert!(
            out.contains("/dev/pts/"),
            "{kind}: `tty` names the pty: {out:?}"
        );
    }
    assert_eq!(code, 7, "{kind}: TTY exit code; output {out:?}");

    // Exec with stdin, no TTY: `cat` echoes it; `read` gets it, and the exit code.
    for (script, input, want_out, want_code) in [
        (
            "cat",
            "through stdin\nand more\n",
            "through stdin\nand more\n",
            0,
        ),
        ("read x; echo got-$x; exit 3", "hello\n", "got-hello\n", 3),
    ] {
        let s = rt
            .exec(
                "default",
                "polite",
                None,
                ExecRequest {
                    command: vec!["sh".into(), "-c".into(), script.into()],
                    stdin: true,
                    stdout: true,
                    stderr: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        assert!(s.resize.is_none(), "{kind}: no resizes without a TTY");
        let mut stdin = s.stdin.unwrap();
        stdin.write_all(input.as_bytes()).await.unwrap();
        drop(stdin);
        let s = agent::streams::ExecSession { stdin: None, ..s };
        let err = s.stderr.unwrap();
        let s = agent::streams::ExecSession { stderr: None, ..s };
        let ((out, code), err) = tokio::join!(finish(s), read_all(err));
        assert_eq!(
            (out.as_str(), err.as_str(), code),
            (want_out, "", want_code),
            "{kind}: exec {script:?} with stdin"
        );
    }

    // Logs with timestamps: every line starts with an RFC 3339 time of this run, then a space.
    let stamped = read_log(
        rt,
        "polite",
        LogOptions {
            timestamps: true,
            ..Default::default()
        },
        10,
    )
    .await;
    assert!(
        !stamped.is_empty() && stamped.ends_with('\n'),
        "{kind}: {stamped:?}"
    );
    let mut texts = Vec::new();
    for line in stamped.lines() {
        let (stamp, text) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("{kind}: no timestamp in {line:?}"));
        let at: jiff::Timestamp = stamp
            .parse()
            .unwrap_or_else(|e| panic!("{kind}: {stamp:?} in {line:?} is not RFC 3339: {e}"));
        let age = jiff::Timestamp::now().duration_since(at);
        assert!(
            age.as_secs() >= 0 && age.as_secs() < 600,
            "{kind}: {line:?} is not of this run"
        );
        texts.push(text);
    }
    assert_eq!(texts, ["started"], "{kind}: {stamped:?}");

    // (6b) Memory: `polite` finds its marker in its own environment and /dev/shm (so the
    // search works); `snoop`, root in its own pod, finds neither, nor reads the host's memory.
    let search = format!(
        "busybox grep -l {marker} /proc/[0-9]*/environ 2>/dev/null; \
         busybox grep -rl {marker} /dev/shm 2>/dev/null; true"
    );
    let (own, _, _) = sh_in(rt, "polite", "main", &search).await;
    assert!(
        own.contains("/environ") && own.contains("/dev/shm/marker"),
        "{kind}: polite finds its own marker: {own:?}"
    );
    let (found, err, code) = sh_in(
        rt,
        "snoop",
        "main",
        &format!("id -u; ls -a /dev/shm; {search}"),
    )
    .await;
    assert_eq!(code, 0, "{kind}: {err}");
    assert!(
        found.starts_with("0\n") && !found.contains("/environ") && !found.contains("marker"),
        "{kind}: snoop (root) finds polite's marker: {found:?}"
    );
    for dev in ["/dev/mem", "/proc/kcore", "/dev/kmem", "/dev/port"] {
        let (bytes, err, _) = sh_in(
            rt,
            "snoop",
            "main",
            &format!("busybox head -c 4096 {dev} | busybox wc -c"),
        )
        .await;
        assert_eq!(bytes.trim(), "0", "{kind}: snoop reads {dev}: {err}");
        eprintln!("{kind}: reading {dev} in a pod: {}", err.trim());
    }

    // (6c) The host's files: a marker file in the host's /tmp is nowhere in the pod.
    let (found, err, code) = sh_in(
        rt,
        "snoop",
        "main",
        &format!(
            "ls -a /tmp /proc/1/root/tmp /proc/[0-9]*/root/tmp 2>&1; cat /tmp/{host_name} 2>/dev/null; \
             busybox find / \\( -path /proc -o -path /sys \\) -prune -o \
             \\( -name {host_name} -o -name busybox \\) -print 2>/dev/null; true"
        ),
    )
    .await;
    assert_eq!(code, 0, "{kind}: {err}");
    assert!(
        found.contains("/bin/busybox") && found.contains("beat\n"),
        "{kind}: the search works: {found:?}"
    );
    assert!(
        !found.contains("host-only") && !found.contains(&format!("/{host_name}")),
        "{kind}: the pod sees the host's /tmp: {found:?}"
    );
    let (_, _, code) = sh_in(rt, "snoop", "main", &format!("cat /tmp/{host_name}")).await;
    assert_ne!(code, 0, "{kind}: the pod reads the host's {host_name}");

    // (6d) `kill -15 -1` then `kill -9 -1` inside `snoop`: the runtime still answers, `polite`
    // runs on untouched, and snoop's own state is reported as it is.
    let beat = || async {
        let (b, _, code) = sh_in(rt, "snoop", "main", "cat /tmp/beat").await;
        (code == 0).then(|| b.trim().parse::<u64>().unwrap_or(0))
    };
    assert!(beat().await.is_some(), "{kind}: snoop's heartbeat");
    let killing = tokio::time::timeout(
        Duration::from_secs(30),
        sh_in(
            rt,
            "snoop",
            "main",
            "kill -15 -1; sleep 1; kill -9 -1; echo killed",
        ),
    )
    .await
    .expect("the killing exec ends");
    eprintln!("{kind}: kill -1 in a pod: {killing:?}");
    assert!(
        rt.pod_status("uid-polite").is_some_and(|s| running(&s)),
        "{kind}"
    );
    let (alive, _, code) = sh_in(rt, "polite", "main", "echo alive; cat /dev/shm/marker").await;
    assert_eq!(
        (alive.as_str(), code),
        (format!("alive\n{marker}\n").as_str(), 0),
        "{kind}: polite after snoop's kill -1"
    );
    let st = rt.pod_status("uid-polite").unwrap();
    assert_eq!(first(&st).restart_count, 0, "{kind}: {st:#?}");
    // snoop: running again within the restart back-off, and what its status says is so: the
    // heartbeat goes on while it says running with the same restart count; a killed run is in
    // lastState as killed.
    let st = status_until(rt, "uid-snoop", 40, running).await;
    let restarts = first(&st).restart_count;
    let before = beat().await.expect("snoop answers exec");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = beat().await.expect("snoop answers exec");
    let st = rt.pod_status("uid-snoop").unwrap();
    assert!(
        running(&st) && first(&st).restart_count == restarts && after > before,
        "{kind}: snoop said running ({restarts} restarts) but its heartbeat went {before} -> \
         {after}: {st:#?}"
    );
    if restarts > 0 {
        let last = first(&st)
            .last_state
            .as_ref()
            .and_then(|l| l.terminated.clone())
            .unwrap_or_else(|| panic!("{kind}: restarted without lastState: {st:#?}"));
        assert!(
            [137, 143].contains(&last.exit_code),
            "{kind}: snoop's killed run: {last:?}"
        );
    }
    eprintln!("{kind}: after kill -1, snoop runs with {restarts} restarts");

    // Logs, followed: lines written after the read began, ending with the container. Then
    // stop: `polite` exits 0 on SIGTERM at once, `stubborn` is killed after its 2 s.
    let follow = async {
        let mut s = rt
            .logs(
                "default",
                "polite",
                None,
                LogOptions {
                    follow: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        let mut said = false;
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(chunk) = s.next().await {
                out.extend_from_slice(&chunk.unwrap());
                if !said && out.ends_with(b"started\n") {
                    said = true;
                    let (_, _, code) =
                        sh_in(rt, "polite", "main", "echo said-after > /tmp/say").await;
                    assert_eq!(code, 0);
                }
            }
        })
        .await;
        let out = String::from_utf8_lossy(&out).into_owned();
        assert!(
            ended.is_ok(),
            "{kind}: the followed log did not end: {out:?}"
        );
        out
    };
    let stops = async {
        // The followed line came (the follow is on), then stop.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !logs(rt, "default", "polite", "main", false)
            .await
            .contains("said-after")
        {
            assert!(Instant::now() < deadline, "{kind}: /tmp/say never printed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let timed = |uid: &'static str, grace: u64| async move {
            let t = Instant::now();
            let code = tokio::time::timeout(
                Duration::from_secs(60),
                rt.stop(uid, Duration::from_secs(grace)),
            )
            .await
            .unwrap_or_else(|_| panic!("{kind}: {uid} stops"))
            .unwrap();
            (code, t.elapsed())
        };
        tokio::join!(timed("uid-polite", 10), timed("uid-stubborn", 2))
    };
    let (followed, ((polite_code, polite_took), (stubborn_code, stubborn_took))) =
        tokio::join!(follow, stops);
    eprintln!(
        "{kind}: stop: polite {polite_code} in {:.1} s, stubborn {stubborn_code} in {:.1} s",
        polite_took.as_secs_f64(),
        stubborn_took.as_secs_f64()
    );
    // The stop signal goes to the main process only, as kubelet sends it: the background
    // child, which would say `child-term` on SIGTERM, ends with the container (SIGKILL).
    assert!(
        followed.starts_with("started\nsaid-after\n")
            && followed.ends_with("term\n")
            && !followed.contains("child-term"),
        "{kind}: followed log: {followed:?}"
    );
    assert!(
        polite_code == 0 && polite_took < Duration::from_secs(6),
        "{kind}: polite (exits on SIGTERM) stopped with {polite_code} in {polite_took:?}"
    );
    assert!(
        logs(rt, "default", "polite", "main", false)
            .await
            .ends_with("term\n"),
        "{kind}: term in polite's log"
    );
    assert!(
        stubborn_code == 137
            && stubborn_took >= Duration::from_millis(1500)
            && stubborn_took < Duration::from_secs(8),
        "{kind}: stubborn (ignores SIGTERM, grace 2 s) stopped with {stubborn_code} in \
         {stubborn_took:?}"
    );
    for (uid, code) in [("uid-polite", 0), ("uid-stubborn", 137)] {
        let st = rt.pod_status(uid).unwrap();
        let term =
            terminated(first(&st)).unwrap_or_else(|| panic!("{kind}: {uid} stopped: {st:#?}"));
        assert_eq!(term.exit_code, code, "{kind}: {uid}: {st:#?}");
    }
    drop(host_file);
    eprintln!(
        "{kind}: exec (TTY, stdin), logs (timestamps, follow), isolation (memory, host files, \
         kill -1) and stop checked in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

/// The suite for one runtime: every pod runs in `kind`. The checks of different pods run at
/// once; the longest is the restart back-off (10 s).
async fn suite(kind: RuntimeKind) {
    let began = Instant::now();
    // Subnets 10.203.21-23.0/24: apart from sandboxed.rs's 1-4.
    let n = match kind {
        RuntimeKind::Container => 21,
        RuntimeKind::Gvisor => 22,
        RuntimeKind::Microvm => 23,
    };
    let f = fixture_with(n, kind, kind).await;
    let prefix = match kind {
        RuntimeKind::Gvisor => "gvisor",
        RuntimeKind::Container => "crun",
        RuntimeKind::Microvm => "microvm",
    };
    // Worker pods for crun, serverless ones for the others (as the agent is set up).
    let scheduler = match kind {
        RuntimeKind::Container => "default-scheduler",
        _ => "serverless-scheduler",
    };
    let ctx = Ctx {
        kind,
        prefix,
        scheduler,
        image: f.image.clone(),
        rt: &f.rt,
        client: &f.client,
    };
    let image = ctx.image.clone();
    let mk =
        |name: &str, policy: &str, containers: serde_json::Value| ctx.pod(name, policy, containers);
    let rt = &f.rt;
    let start = |p: Pod, ip: String| ctx.start(p, ip);

    // (1) Exit codes: a Never pod whose container exits 3.
    let exit_codes = async {
        let t = Instant::now();
        let p = mk(
            "exits",
            "Never",
            json!([{"name": "main", "image": image, "command": ["sh", "-c", "echo bye; exit 3"]}]),
        );
        start(p, String::new()).await;
        let code = tokio::time::timeout(Duration::from_secs(60), rt.wait("uid-exits"))
            .await
            .expect("the pod ends")
            .unwrap();
        assert_eq!(code, 3, "{kind}: wait");
        let st = status_until(rt, "uid-exits", 10, |s| terminated(first(s)).is_some()).await;
        let c = first(&st);
        let term = terminated(c).unwrap();
        assert_eq!(
            (term.exit_code, term.reason.as_deref(), c.restart_count),
            (3, Some("Error"), 0),
            "{kind}: {c:#?}"
        );
        assert!(!st.ready);
        assert_eq!(logs(rt, "default", "exits", "main", false).await, "bye\n");
        eprintln!(
            "{kind}: exit codes checked in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    };

    // (2) OOM: a container limited to 64Mi takes 256 MiB (one buffer, filled again and again so
    // that it stays taken, whoever watches).
    let oom = async {
        let t = Instant::now();
        let p = mk(
            "oom",
            "Never",
            json!([{"name": "hog", "image": image,
                "command": ["sh", "-c", "echo hog; exec dd if=/dev/zero of=/dev/null bs=256M count=64"],
                "resources": {"limits": {"memory": "64Mi"}}}]),
        );
        start(p, String::new()).await;
        let code = tokio::time::timeout(Duration::from_secs(60), rt.wait("uid-oom"))
            .await
            .expect("the hog ends")
            .unwrap();
        let st = status_until(rt, "uid-oom", 10, |s| terminated(first(s)).is_some()).await;
        let c = first(&st);
        let term = terminated(c).unwrap();
        assert_eq!(
            (code, term.exit_code, term.reason.as_deref()),
            (137, 137, Some("OOMKilled")),
            "{kind}: {c:#?}\nlog: {:?}",
            logs(rt, "default", "oom", "hog", false).await
        );
        eprintln!("{kind}: OOM checked in {:.1} s", t.elapsed().as_secs_f64());
    };

    // (4) Logs of the current and the previous run: a container that prints its run number
    // (kept in an emptyDir) and fails, restarted at once, then after kubelet's 10 s back-off.
    let restart_logs = async {
        let t = Instant::now();
        let p = mk(
            "crash",
            "Always",
            json!([{"name": "main", "image": image, "command": ["sh", "-c",
                "n=$(cat /scratch/n 2>/dev/null || echo 0); n=$((n+1)); echo $n > /scratch/n; echo run-$n; exit 1"],
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}]),
        );
        start(p, String::new()).await;
        let last_run = |s: &RuntimeStatus| {
            first(s)
                .last_state
                .as_ref()
                .and_then(|l| l.terminated.clone())
        };
        let backing_off = |s: &RuntimeStatus| waiting_reason(s) == Some("CrashLoopBackOff");
        // Run 0 failed, run 1 (restarted at once) too: backing off.
        let st = status_until(rt, "uid-crash", 60, backing_off).await;
        assert_eq!(
            first(&st).restart_count,
            1,
            "{kind}: restarted at once, once"
        );
        let run1 = last_run(&st).expect("lastState terminated");
        // Run 2 (after the back-off) failed too: backing off again. (Between the two, the
        // restart count goes up before the new run starts: wait for run 2's end.)
        let st = status_until(rt, "uid-crash", 60, |s| {
            backing_off(s) && last_run(s).is_some_and(|l| l.started_at != run1.started_at)
        })
        .await;
        let k = first(&st).restart_count;
        assert_eq!(k, 2, "{kind}: {st:#?}");
        let run2 = last_run(&st).unwrap();
        for run in [&run1, &run2] {
            assert_eq!(
                (run.exit_code, run.reason.as_deref()),
                (1, Some("Error")),
                "{kind}: {run:?}"
            );
        }
        let ms = |t: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>| {
            t.as_ref().expect("a time").0.as_millisecond()
        };
        let backed_off = ms(&run2.started_at) - ms(&run1.finished_at);
        assert!(
            backed_off >= 9_500,
            "{kind}: run 2 started {backed_off} ms after run 1 ended, within the 10 s back-off"
        );
        // Stable for the next back-off (20 s): restart K ran as run-(K+1).
        let current = logs(rt, "default", "crash", "main", false).await;
        let previous = logs(rt, "default", "crash", "main", true).await;
        assert_eq!(
            first(&rt.pod_status("uid-crash").unwrap()).restart_count,
            k,
            "{kind}: no restart while reading the logs"
        );
        assert_eq!(
            (current.as_str(), previous.as_str()),
            (
                format!("run-{}\n", k + 1).as_str(),
                format!("run-{k}\n").as_str()
            ),
            "{kind}: current and previous logs at restart {k}"
        );
        eprintln!(
            "{kind}: restart logs checked in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    };

    // (3) probes, (5) exec and (6) isolation, on two pods running at once: `web` (httpd, a
    // readiness probe waiting for a file) and `peer` (a liveness probe that fails once a file
    // exists).
    let web_ip = format!("10.203.{n}.10");
    let two_pods = async {
        let t = Instant::now();
        let web = mk(
            "web",
            "Always",
            json!([{"name": "web", "image": image, "command": ["sh", "-c",
                "echo hello-from-web > /www/index.html; echo only-web > /tmp/only-in-web; echo started; exec httpd -f -p 8080 -h /www"],
                "readinessProbe": {"exec": {"command": ["test", "-e", "/tmp/ready"]},
                    "periodSeconds": 1, "timeoutSeconds": 10, "failureThreshold": 1}}]),
        );
        let peer = mk(
            "peer",
            "Always",
            json!([{"name": "peer", "image": image, "command": ["sh", "-c",
                "echo only-peer > /tmp/only-in-peer; echo started; exec sleep 3600"],
                "livenessProbe": {"exec": {"command": ["sh", "-c", "test ! -e /tmp/die"]},
                    "periodSeconds": 1, "timeoutSeconds": 10, "failureThreshold": 1}}]),
        );
        tokio::join!(
            start(web, web_ip.clone()),
            start(peer, format!("10.203.{n}.11"))
        );
        for uid in ["uid-web", "uid-peer"] {
            status_until(rt, uid, 30, running).await;
        }

        // (3) Readiness: not ready while the probe fails (a few periods), ready once it passes.
        let readiness = async {
            let until = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < until {
                let st = rt.pod_status("uid-web").unwrap();
                assert!(
                    !st.ready && !first(&st).ready,
                    "{kind}: ready before the probe passes: {st:#?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(sh(rt, "web", "touch /tmp/ready").await.2, 0);
            let st = status_until(rt, "uid-web", 20, |s| s.ready).await;
            assert!(first(&st).ready && first(&st).restart_count == 0);
        };

        // (5) Exec: output and exit code.
        let exec = async {
            let (out, err, code) = sh(rt, "web", "echo hi; exit 5").await;
            assert_eq!(
                (out.as_str(), err.as_str(), code),
                ("hi\n", "", 5),
                "{kind}"
            );
        };

        // (6) Isolation: each sees its own processes and files only, and they talk by IP. Then
        // (3) liveness: the peer's probe fails and it is restarted.
        let isolation_then_liveness = async {
            let procs = "ps; for f in /proc/[0-9]*/cmdline; do cat $f; echo; done";
            let ((web_ps, _, c1), (peer_ps, _, c2)) =
                tokio::join!(sh(rt, "web", procs), sh(rt, "peer", procs));
            assert_eq!((c1, c2), (0, 0), "{kind}: {web_ps}\n{peer_ps}");
            assert!(
                web_ps.contains("httpd") && peer_ps.contains("sleep"),
                "{kind}: each sees its own processes: web {web_ps:?}, peer {peer_ps:?}"
            );
            assert!(
                !web_ps.contains("sleep") && !peer_ps.contains("httpd"),
                "{kind}: pods see each other's processes: web {web_ps:?}, peer {peer_ps:?}"
            );
            let files = "cat /tmp/only-in-web /tmp/only-in-peer /www/index.html";
            let ((web_files, _, _), (peer_files, _, _)) =
                tokio::join!(sh(rt, "web", files), sh(rt, "peer", files));
            assert_eq!(
                (web_files.as_str(), peer_files.as_str()),
                ("only-web\nhello-from-web\n", "only-peer\n"),
                "{kind}: each pod sees its own files only"
            );
            let (page, err, code) = sh(
                rt,
                "peer",
                &format!("wget -q -O- http://{web_ip}:8080/index.html"),
            )
            .await;
            assert_eq!(
                (page.as_str(), code),
                ("hello-from-web\n", 0),
                "{kind}: peer reaches web at {web_ip}: {err}"
            );

            // (3) Liveness. It has passed so far (no /tmp/die): no Unhealthy event yet.
            let events = events_of(&f.client, "uid-peer").await;
            assert!(
                !events.iter().any(|e| e.starts_with("Unhealthy")),
                "{kind}: the liveness probe failed before /tmp/die existed: {events:#?}"
            );
            assert_eq!(sh(rt, "peer", "touch /tmp/die").await.2, 0);
            // Killed and restarted: the killed run in lastState; kubelet's events say why.
            let deadline = Instant::now() + Duration::from_secs(30);
            let st = loop {
                let st = rt.pod_status("uid-peer").unwrap();
                if first(&st).restart_count >= 1 {
                    break st;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{kind}: not restarted 30 s after its liveness probe began to fail;\n\
                         events: {:#?}\nstatus: {st:#?}",
                        events_of(&f.client, "uid-peer").await
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(
                first(&st)
                    .last_state
                    .as_ref()
                    .is_some_and(|s| s.terminated.is_some()),
                "{kind}: lastState after the liveness kill: {st:#?}"
            );
            let events = events_of(&f.client, "uid-peer").await;
            assert!(
                events
                    .iter()
                    .any(|e| e.starts_with("Unhealthy: Liveness probe failed")),
                "{kind}: Unhealthy event for the liveness failure: {events:#?}"
            );
            // The restarted container is a new one from its image (kubelet's): the file that
            // failed the probe went with the killed run's writable layer, and it runs on.
            let st = status_until(rt, "uid-peer", 30, |s| {
                first(s).restart_count >= 1 && running(s)
            })
            .await;
            let restarts = first(&st).restart_count;
            let until = Instant::now() + Duration::from_secs(3);
            while Instant::now() < until {
                let st = rt.pod_status("uid-peer").unwrap();
                assert!(
                    first(&st).restart_count == restarts && running(&st),
                    "{kind}: the restarted container did not run on: killed again by its \
                     liveness probe or ended. A new container from the image has no /tmp/die: \
                     either the killed run's writable layer was kept, or the probe failed for \
                     another reason; events: {:#?}\nstatus: {st:#?}",
                    events_of(&f.client, "uid-peer").await
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let (_, _, code) = sh(rt, "peer", "test -e /tmp/die").await;
            assert_eq!(code, 1, "{kind}: /tmp/die in the restarted container");
        };
        tokio::join!(readiness, exec, isolation_then_liveness);
        eprintln!(
            "{kind}: probes, exec and isolation checked in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    };

    // (7) Storage eviction, as kubelet does it: a pod whose writable layers and emptyDirs
    // together pass the total of its containers' ephemeral-storage limits is evicted (its
    // containers killed, not restarted, kubelet's message). The usage is measured where it
    // lives: on the host for gVisor and crun, in the guest for the micro-VM.
    let eviction = async {
        let t = Instant::now();
        let p = mk(
            "hog",
            "Always",
            json!([{"name": "main", "image": image,
                "resources": {"limits": {"ephemeral-storage": "4Mi"}},
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                "command": ["sh", "-c",
                    "dd if=/dev/zero of=/scratch/big bs=1024 count=6144 && sync; \
                     echo filled; sleep 100000"]}]),
        );
        start(p, String::new()).await;
        let st = status_until(rt, "uid-hog", 90, |s| s.evicted.is_some()).await;
        assert_eq!(
            st.evicted.as_deref(),
            Some("Pod ephemeral local storage usage exceeds the total limit of containers 4Mi. "),
            "{kind}: {st:#?}"
        );
        tokio::time::timeout(Duration::from_secs(60), rt.wait("uid-hog"))
            .await
            .unwrap_or_else(|_| panic!("{kind}: the evicted pod ends"))
            .unwrap();
        let st = rt.pod_status("uid-hog").unwrap();
        assert_eq!(
            first(&st).restart_count,
            0,
            "{kind}: not restarted: {st:#?}"
        );
        assert!(
            terminated(first(&st)).is_some(),
            "{kind}: killed by the eviction: {st:#?}"
        );
        eprintln!(
            "{kind}: storage eviction checked in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    };

    let probes_ip = format!("10.203.{n}.12");
    tokio::join!(
        exit_codes,
        oom,
        restart_logs,
        two_pods,
        probe_kinds(&ctx, probes_ip),
        lifecycle(&ctx),
        eviction
    );

    let t = Instant::now();
    let uids = [
        "uid-exits",
        "uid-oom",
        "uid-crash",
        "uid-web",
        "uid-peer",
        "uid-probes",
        "uid-polite",
        "uid-stubborn",
        "uid-snoop",
        "uid-hog",
    ];
    stop_and_remove(rt, &uids, kind).await;
    f.assert_nothing_left().await;
    f.cleanup().await;
    eprintln!(
        "{kind}: pods stopped and removed in {:.1} s; suite took {:.1} s",
        t.elapsed().as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runtime_suite() {
    if runtime_available(RuntimeKind::Container, "container_runtime_suite") {
        suite(RuntimeKind::Container).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_runtime_suite() {
    if runtime_available(RuntimeKind::Gvisor, "gvisor_runtime_suite") {
        suite(RuntimeKind::Gvisor).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_runtime_suite() {
    if runtime_available(RuntimeKind::Microvm, "microvm_runtime_suite") {
        suite(RuntimeKind::Microvm).await;
    }
}
