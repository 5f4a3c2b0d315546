//! One suite of runtime behaviour, run against every sandbox runtime on this machine: exit
//! codes, OOM, probes, logs across a restart, exec, and isolation between pods. The agent's
//! real runtime ([`SandboxRuntime`]) runs the pods, with the given runtime for all of them;
//! a runtime whose tool is missing is SKIPPED (the micro-VM fails instead when
//! `NODELESS_REQUIRE_MICROVM` is set, as in CI). Each entry point has its own data dir and pod
//! subnet, so they run in parallel with each other and with the other test files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use agent::runtime::{Runtime, RuntimeStatus};
use agent::sandboxed::SandboxRuntime;
use agent::streams::{ExecRequest, PodStreams};
use common::{available, fixture_with, logs, pod, read_all, status_until};
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Event};
use kube::api::{Api, ListParams};
use sandbox::runtime::RuntimeKind;
use serde_json::json;

/// Runs `sh -c script` in `pod`'s first container: (stdout, stderr, exit code).
async fn sh(rt: &SandboxRuntime, pod: &str, script: &str) -> (String, String, i32) {
    let s = rt
        .exec(
            "default",
            pod,
            None,
            ExecRequest {
                command: vec!["sh".into(), "-c".into(), script.into()],
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec in {pod}: {e}"));
    let (out, err) = tokio::join!(read_all(s.stdout.unwrap()), read_all(s.stderr.unwrap()));
    let code = s.exit.await.unwrap();
    (out, err, code)
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
    let image = f.image.clone();
    let mk = |name: &str, policy: &str, containers: serde_json::Value| {
        pod(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {
                "schedulerName": scheduler,
                "nodeName": format!("node-{prefix}"),
                "restartPolicy": policy,
                "terminationGracePeriodSeconds": 1,
                "containers": containers,
                "volumes": [{"name": "scratch", "emptyDir": {}}],
            },
        }))
    };
    let rt = &f.rt;
    let start = |p: k8s_openapi::api::core::v1::Pod, ip: String| async move {
        let name = p.metadata.name.clone().unwrap();
        let t = Instant::now();
        let started = rt
            .start(&p, &ip)
            .await
            .unwrap_or_else(|e| panic!("{kind}: pod {name} starts: {e}"));
        for c in &started.containers {
            assert!(
                c.container_id.starts_with(&format!("{prefix}://")),
                "{kind}: {c:?}"
            );
        }
        eprintln!(
            "{kind}: pod {name} started in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    };

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

    tokio::join!(exit_codes, oom, restart_logs, two_pods);

    let t = Instant::now();
    let uids = ["uid-exits", "uid-oom", "uid-crash", "uid-web", "uid-peer"];
    futures::future::join_all(uids.iter().map(|uid| async move {
        tokio::time::timeout(
            Duration::from_secs(60),
            rt.stop(uid, Duration::from_secs(1)),
        )
        .await
        .unwrap_or_else(|_| panic!("{kind}: {uid} stops"))
        .unwrap();
        rt.remove(uid);
        rt.removed(uid).await;
    }))
    .await;
    f.assert_nothing_left().await;
    f.cleanup().await;
    eprintln!(
        "{kind}: pods stopped and removed in {:.1} s; suite took {:.1} s",
        t.elapsed().as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
}

/// The micro-VM's prerequisites, or `None`: QEMU, mkfs.erofs and the guest's assets.
fn microvm_missing() -> Option<String> {
    sandbox::microvm::prerequisites()
        .err()
        .map(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_runtime_suite() {
    if !available("crun") {
        println!("SKIPPED container_runtime_suite: crun not found (apt-get install crun)");
        return;
    }
    suite(RuntimeKind::Container).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_runtime_suite() {
    if !available("runsc") {
        println!("SKIPPED gvisor_runtime_suite: runsc not found (apt-get install runsc)");
        return;
    }
    suite(RuntimeKind::Gvisor).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_runtime_suite() {
    if let Some(missing) = microvm_missing() {
        assert!(
            std::env::var_os("NODELESS_REQUIRE_MICROVM").is_none(),
            "microvm_runtime_suite: micro-VM prerequisites missing (NODELESS_REQUIRE_MICROVM is set): {missing}"
        );
        println!("SKIPPED microvm_runtime_suite: {missing}");
        return;
    }
    suite(RuntimeKind::Microvm).await;
}
