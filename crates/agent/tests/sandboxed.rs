//! The agent's real runtime against real sandboxes: gVisor (runsc) for serverless pods, crun for
//! worker pods, busybox images built here into OCI layouts, a real in-process API server for
//! ConfigMaps, Secrets and events. Each test has its own data dir, pod network namespace,
//! bridge and subnet, and checks that nothing is left behind (the fixture: `common`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use agent::runtime::Runtime;
use agent::sandboxed::{SandboxConfig, SandboxRuntime};
use agent::streams::{ExecRequest, LogOptions, PodStreams};
use common::{available, fixture, fixture_with, logs, logs_with, pod, read_all, status_until};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, ListParams, PostParams};
use sandbox::runtime::RuntimeKind;
use serde_json::json;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

// ---- tests ------------------------------------------------------------------------------------

/// A serverless pod in gVisor: ConfigMap env and files, an init container, exactly the given
/// IP, statuses with IDs, events, logs, exec (with and without a TTY), port-forward to httpd,
/// then stop and remove leave nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gvisor_serverless_pod() {
    if !available("runsc") || !available("crun") {
        eprintln!("SKIPPED: needs runsc and crun");
        return;
    }
    let f = fixture(1).await;
    let cms: Api<ConfigMap> = Api::namespaced(f.client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "web-config"},
            "data": {"greeting": "hello-from-configmap", "page.html": "<h1>served by httpd</h1>\n"}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    let p = pod(json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "uid-web-1"},
        "spec": {
            "schedulerName": "serverless-scheduler",
            "nodeName": "serverless-ip-10-203-1-7",
            "initContainers": [{"name": "prepare", "image": f.image,
                "command": ["sh", "-c", "cat /cfg/page.html > /www/index.html; echo init-done"],
                "volumeMounts": [{"name": "www", "mountPath": "/www"}, {"name": "cfg", "mountPath": "/cfg"}]}],
            "containers": [{"name": "web", "image": f.image,
                "command": ["sh", "-c", "echo greeting=$GREETING; exec httpd -f -p 8080 -h /www"],
                "env": [{"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "web-config", "key": "greeting"}}}],
                "volumeMounts": [{"name": "www", "mountPath": "/www"}]}],
            "volumes": [{"name": "www", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "web-config"}}]
        }
    }));
    let mut changes = f.rt.take_changes().expect("the change channel");
    let started = f.rt.start(&p, "10.203.1.7").await.expect("pod starts");
    let web = started.containers.iter().find(|c| c.name == "web").unwrap();
    assert!(web.container_id.starts_with("gvisor://"), "{web:?}");
    assert!(
        web.image_id.ends_with(&format!("@{}", f.manifest_digest)),
        "{web:?} vs {}",
        f.manifest_digest
    );
    assert!(changes.try_recv().is_ok(), "status changes are announced");

    let st = status_until(&f.rt, "uid-web-1", 30, |s| s.ready).await;
    assert!(st.initialized);
    let c = &st.container_statuses[0];
    assert_eq!(c.name, "web");
    assert!(c.state.as_ref().unwrap().running.is_some(), "{c:?}");
    assert!(c.ready && c.started == Some(true) && c.restart_count == 0);
    assert_eq!(c.container_id.as_deref(), Some(web.container_id.as_str()));
    let init = &st.init_container_statuses[0];
    let t = init.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
    assert!(init.ready, "a completed init container is ready");

    // Logs.
    let mut log = String::new();
    for _ in 0..100 {
        log = logs(&f.rt, "default", "web", "web", false).await;
        if log.contains("greeting=") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(log, "greeting=hello-from-configmap\n");
    assert!(
        logs(&f.rt, "default", "web", "prepare", false)
            .await
            .contains("init-done")
    );

    // Exec without a TTY: separate streams and the exit code.
    let s =
        f.rt.exec(
            "default",
            "web",
            None,
            ExecRequest {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "echo out; echo err >&2; exit 3".into(),
                ],
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let (out, err) = tokio::join!(read_all(s.stdout.unwrap()), read_all(s.stderr.unwrap()));
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(s.exit.await.unwrap(), 3);

    // Exec with stdin.
    let s =
        f.rt.exec(
            "default",
            "web",
            Some("web"),
            ExecRequest {
                command: vec!["cat".into()],
                stdin: true,
                stdout: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut stdin = s.stdin.unwrap();
    stdin.write_all(b"through stdin\n").await.unwrap();
    drop(stdin);
    assert_eq!(read_all(s.stdout.unwrap()).await, "through stdin\n");
    assert_eq!(s.exit.await.unwrap(), 0);

    // Exec with a TTY.
    let s =
        f.rt.exec(
            "default",
            "web",
            None,
            ExecRequest {
                command: vec![
                    "sh".into(),
                    "-c".into(),
                    "test -t 0 && test -t 1 && echo tty-ok; exit 4".into(),
                ],
                stdin: true,
                stdout: true,
                tty: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(s.stderr.is_none() && s.resize.is_some());
    let out = tokio::time::timeout(Duration::from_secs(30), read_all(s.stdout.unwrap()))
        .await
        .expect("tty output ends");
    assert!(out.contains("tty-ok"), "{out:?}");
    assert_eq!(s.exit.await.unwrap(), 4);

    // A TTY session: commands typed on stdin, the size set through resize.
    let s =
        f.rt.exec(
            "default",
            "web",
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
    s.resize
        .as_ref()
        .unwrap()
        .send(agent::streams::TermSize {
            width: 123,
            height: 45,
        })
        .await
        .unwrap();
    let mut stdin = s.stdin.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stdin
        .write_all(b"stty size; echo typed-$((6*7)); exit 5\n")
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), read_all(s.stdout.unwrap()))
        .await
        .expect("tty output ends");
    assert!(out.contains("typed-42"), "{out:?}");
    assert!(out.contains("45 123"), "terminal size: {out:?}");
    assert_eq!(s.exit.await.unwrap(), 5);
    drop(stdin);

    // Port-forward to httpd on the pod's IP.
    let mut conn = f.rt.port_forward("default", "web", 8080).await.unwrap();
    assert_eq!(
        conn.peer_addr().unwrap().ip().to_string(),
        "10.203.1.7",
        "exactly the given IP"
    );
    conn.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let page = read_all(&mut conn).await;
    assert!(
        page.starts_with("HTTP/1.") && page.contains("<h1>served by httpd</h1>"),
        "{page}"
    );
    assert!(f.rt.port_forward("default", "web", 9).await.is_err());
    assert!(
        f.rt.logs("default", "nope", None, LogOptions::default())
            .await
            .is_err()
    );

    // Events, as kubelet's.
    let events: Api<Event> = Api::namespaced(f.client.clone(), "default");
    let mut reasons = Vec::new();
    for _ in 0..50 {
        let list = events.list(&ListParams::default()).await.unwrap();
        reasons = list
            .items
            .iter()
            .filter(|e| e.involved_object.uid.as_deref() == Some("uid-web-1"))
            .map(|e| {
                assert_eq!(
                    e.source.as_ref().unwrap().component.as_deref(),
                    Some("kubelet")
                );
                assert_eq!(
                    e.source.as_ref().unwrap().host.as_deref(),
                    Some("serverless-ip-10-203-1-7")
                );
                format!(
                    "{}: {}",
                    e.reason.clone().unwrap(),
                    e.message.clone().unwrap()
                )
            })
            .collect();
        if reasons.iter().filter(|r| r.starts_with("Started")).count() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for want in [
        "Pulling: Pulling image",
        "Pulled: Successfully pulled image",
        "Created: Created container web",
        "Started: Started container web",
        "Started: Started container prepare",
    ] {
        assert!(
            reasons.iter().any(|r| r.starts_with(want)),
            "{want} in {reasons:#?}"
        );
    }

    // Stop (SIGTERM; httpd exits on it) and remove.
    let code = tokio::time::timeout(
        Duration::from_secs(60),
        f.rt.stop("uid-web-1", Duration::from_secs(5)),
    )
    .await
    .unwrap()
    .unwrap();
    assert_ne!(code, 0, "httpd was killed");
    assert_eq!(f.rt.wait("uid-web-1").await.unwrap(), code);
    f.rt.remove("uid-web-1");
    f.rt.removed("uid-web-1").await;
    assert!(f.rt.pod_status("uid-web-1").is_none());
    f.assert_nothing_left().await;
    f.cleanup().await;
}

/// Restart policies and kubelet's back-off, in crun (a worker pod).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_restart_policies() {
    if !available("runsc") || !available("crun") {
        eprintln!("SKIPPED: needs runsc and crun");
        return;
    }
    let f = fixture(2).await;
    let mk = |name: &str, policy: &str, script: &str| {
        pod(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {
                "nodeName": "worker-1",
                "restartPolicy": policy,
                "containers": [{"name": "main", "image": f.image, "command": ["sh", "-c", script],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                "volumes": [{"name": "scratch", "emptyDir": {}}]
            }
        }))
    };
    // Always, crashing: restarted at once, then CrashLoopBackOff with lastState and the count.
    let crash = mk("crash", "Always", "echo run; exit 2");
    let started = f.rt.start(&crash, "").await.unwrap();
    assert!(started.containers[0].container_id.starts_with("crun://"));
    let st = status_until(&f.rt, "uid-crash", 30, |s| {
        s.container_statuses[0]
            .state
            .as_ref()
            .and_then(|x| x.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            == Some("CrashLoopBackOff")
    })
    .await;
    let c = &st.container_statuses[0];
    assert_eq!(c.restart_count, 1, "{c:#?}");
    assert!(!c.ready && !st.ready);
    let w = c.state.as_ref().unwrap().waiting.as_ref().unwrap();
    let msg = w.message.as_deref().unwrap();
    assert!(
        msg.starts_with(
            "back-off 10s restarting failed container=main pod=crash_default(uid-crash)"
        ),
        "{msg}"
    );
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (2, Some("Error")));
    assert_eq!(logs(&f.rt, "default", "crash", "main", true).await, "run\n");
    // After the 10 s back-off, it runs again.
    status_until(&f.rt, "uid-crash", 30, |s| {
        s.container_statuses[0].restart_count >= 2
    })
    .await;
    let events: Api<Event> = Api::namespaced(f.client.clone(), "default");
    let backoff = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("BackOff")
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref()
                    == Some(
                        "Back-off restarting failed container main in pod crash_default(uid-crash)",
                    )
        });
    assert!(backoff, "BackOff event");
    let waited = tokio::time::timeout(Duration::from_millis(500), f.rt.wait("uid-crash")).await;
    assert!(
        waited.is_err(),
        "wait does not resolve while the container will run again"
    );

    // Following a log ends when the container does.
    let follow = mk("follow", "Never", "echo one; sleep 1; echo two");
    f.rt.start(&follow, "").await.unwrap();
    let mut stream =
        f.rt.logs(
            "default",
            "follow",
            None,
            LogOptions {
                follow: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut followed = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = stream.next().await {
            followed.extend_from_slice(&chunk.unwrap());
        }
    })
    .await
    .expect("the followed log ends with the container");
    assert_eq!(String::from_utf8_lossy(&followed), "one\ntwo\n");
    assert_eq!(f.rt.wait("uid-follow").await.unwrap(), 0);

    // Never: exit code reported, no restart.
    let never = mk("never", "Never", "echo bye; exit 3");
    f.rt.start(&never, "").await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(30), f.rt.wait("uid-never"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 3);
    let st = f.rt.pod_status("uid-never").unwrap();
    let c = &st.container_statuses[0];
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (t.exit_code, t.reason.as_deref(), c.restart_count),
        (3, Some("Error"), 0)
    );
    assert!(t.started_at.is_some() && t.finished_at.is_some());

    // OnFailure: fails once, succeeds on the restart (the emptyDir survives restarts).
    let flaky = mk(
        "flaky",
        "OnFailure",
        "if test -e /scratch/ran; then echo second; exit 0; fi; touch /scratch/ran; exit 1",
    );
    f.rt.start(&flaky, "").await.unwrap();
    let code = tokio::time::timeout(Duration::from_secs(30), f.rt.wait("uid-flaky"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, 0);
    let st = f.rt.pod_status("uid-flaky").unwrap();
    let c = &st.container_statuses[0];
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (t.exit_code, t.reason.as_deref(), c.restart_count),
        (0, Some("Completed"), 1)
    );
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(last.exit_code, 1);

    // OnFailure with success at once: Completed, never restarted.
    let ok = mk("ok", "OnFailure", "exit 0");
    f.rt.start(&ok, "").await.unwrap();
    assert_eq!(f.rt.wait("uid-ok").await.unwrap(), 0);
    assert_eq!(
        f.rt.pod_status("uid-ok").unwrap().container_statuses[0].restart_count,
        0
    );

    for uid in [
        "uid-crash",
        "uid-follow",
        "uid-never",
        "uid-flaky",
        "uid-ok",
    ] {
        tokio::time::timeout(
            Duration::from_secs(60),
            f.rt.stop(uid, Duration::from_secs(2)),
        )
        .await
        .unwrap()
        .unwrap();
        f.rt.remove(uid);
        f.rt.removed(uid).await;
    }
    f.assert_nothing_left().await;
    f.cleanup().await;
}

/// An agent restart: a new runtime over the same data dir finds the pods again. With shims
/// (the `nodeless` binary built), a running pod is adopted: its status, exec, logs and stop work
/// from the new runtime. Without shims it cannot be supervised and is stopped. A recorded pod
/// whose containers all ended is taken back as it ended with shims (their exits recorded), and
/// cleaned up without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_adopts_or_cleans_up() {
    if !available("runsc") || !available("crun") {
        eprintln!("SKIPPED: needs runsc and crun");
        return;
    }
    let f = fixture(3).await;
    let shims = sandbox::shim::binary().is_some();
    eprintln!("containers under shims: {shims}");
    let done = pod(json!({
        "metadata": {"name": "done", "namespace": "default", "uid": "uid-done"},
        "spec": {"nodeName": "worker-1", "restartPolicy": "Never",
                 "containers": [{"name": "main", "image": f.image, "command": ["true"]}]}
    }));
    f.rt.start(&done, "").await.unwrap();
    assert_eq!(f.rt.wait("uid-done").await.unwrap(), 0);
    // A worker pod (crun) and a serverless one (gVisor), both running.
    let mut firsts = Vec::new();
    for (name, scheduler, ip) in [
        ("sleeper", "default-scheduler", "10.203.3.9"),
        ("gsleeper", "serverless-scheduler", "10.203.3.10"),
    ] {
        let p = pod(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"nodeName": "worker-1", "restartPolicy": "Never", "schedulerName": scheduler,
                     "containers": [{"name": "main", "image": f.image,
                                     "command": ["sh", "-c", "echo sleeping; exec sleep 1000"]}]}
        }));
        let first = f.rt.start(&p, ip).await.unwrap();
        status_until(&f.rt, &format!("uid-{name}"), 30, |s| s.ready).await;
        firsts.push((name, first));
    }
    let again = SandboxRuntime::new(
        SandboxConfig {
            data_dir: f.data.clone(),
            serverless_runtime: RuntimeKind::Gvisor,
            worker_runtime: RuntimeKind::Container,
            network: f.network.clone(),
            insecure_registries: vec![],
            image_cache_limit_bytes: None,
            eviction_interval: agent::eviction::INTERVAL,
        },
        f.client.clone(),
    )
    .await
    .unwrap();
    let adopted = again.recover().await;
    if shims {
        // Its containers ended, but its sandbox is still there: taken back as it ended.
        assert!(adopted.contains_key("uid-done"));
        assert_eq!(again.wait("uid-done").await.unwrap(), 0);
        let st = again.pod_status("uid-done").unwrap();
        let t = st.container_statuses[0].state.as_ref().unwrap();
        let t = t.terminated.as_ref().unwrap();
        assert_eq!((t.exit_code, t.reason.as_deref()), (0, Some("Completed")));
        assert_eq!(st.container_statuses[0].restart_count, 0);
        again.remove("uid-done");
        again.removed("uid-done").await;
    } else {
        assert!(!adopted.contains_key("uid-done"));
        assert!(
            again.pod_status("uid-done").is_none(),
            "the ended pod is not adopted"
        );
    }
    let done_dirs = std::fs::read_dir(f.data.join("pods"))
        .unwrap()
        .flatten()
        .filter(|d| d.file_name().to_string_lossy().starts_with("default_done_"))
        .count();
    assert_eq!(done_dirs, 0, "the ended pod was cleaned up");
    for (name, first) in firsts {
        let uid = format!("uid-{name}");
        if shims {
            assert_eq!(adopted.get(&uid), Some(&first), "{name}: same containers");
            let st = status_until(&again, &uid, 10, |s| s.ready).await;
            assert_eq!(st.container_statuses[0].restart_count, 0);
            let s = again
                .exec(
                    "default",
                    name,
                    None,
                    ExecRequest {
                        command: vec!["echo".into(), "adopted".into()],
                        stdout: true,
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(read_all(s.stdout.unwrap()).await, "adopted\n", "{name}");
            assert_eq!(s.exit.await.unwrap(), 0);
            assert_eq!(
                logs(&again, "default", name, "main", false).await,
                "sleeping\n"
            );
            let code = tokio::time::timeout(
                Duration::from_secs(60),
                again.stop(&uid, Duration::from_secs(2)),
            )
            .await
            .unwrap()
            .unwrap();
            assert_ne!(code, 0);
            again.remove(&uid);
            again.removed(&uid).await;
        } else {
            assert!(adopted.is_empty(), "without shims nothing can be adopted");
            // The first runtime's supervisor sees its container end.
            let code = tokio::time::timeout(Duration::from_secs(30), f.rt.wait(&uid))
                .await
                .expect("the container was stopped")
                .unwrap();
            assert_ne!(code, 0);
            f.rt.remove(&uid);
            f.rt.removed(&uid).await;
        }
    }
    f.assert_nothing_left().await;
    f.cleanup().await;
}

/// The agent dies (its process and every task of it gone; the shims live on) while a Never
/// container is about to exit, an OnFailure one is about to fail, and an Always one has
/// restarted once. A new agent takes each back as its shims left it: the Never run that
/// ended meanwhile keeps its exit code and is not run again; the OnFailure one is restarted
/// (restartCount and lastState as kubelet's); the Always one keeps its restartCount and
/// lastState, and its logs (current and previous).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_keeps_ended_runs_and_last_state() {
    if !available("runsc") || !available("crun") {
        eprintln!("SKIPPED: needs runsc and crun");
        return;
    }
    let f = fixture(5).await;
    if sandbox::shim::binary().is_none() {
        eprintln!("SKIPPED: needs the nodeless binary (containers under shims)");
        f.cleanup().await;
        return;
    }
    let config = SandboxConfig {
        data_dir: f.data.clone(),
        serverless_runtime: RuntimeKind::Gvisor,
        worker_runtime: RuntimeKind::Container,
        network: f.network.clone(),
        insecure_registries: vec![],
        image_cache_limit_bytes: None,
        eviction_interval: agent::eviction::INTERVAL,
    };
    let scratch = json!([{"name": "scratch", "emptyDir": {}}]);
    let mount = json!([{"name": "scratch", "mountPath": "/scratch"}]);
    let never = pod(json!({
        "metadata": {"name": "never", "namespace": "default", "uid": "uid-never"},
        "spec": {"nodeName": "worker-1", "restartPolicy": "Never",
                 "containers": [{"name": "main", "image": f.image,
                                 "command": ["sh", "-c", "echo run; sleep 3; exit 7"]}]}
    }));
    let flaky = pod(json!({
        "metadata": {"name": "flaky", "namespace": "default", "uid": "uid-flaky"},
        "spec": {"nodeName": "worker-1", "restartPolicy": "OnFailure",
                 "containers": [{"name": "main", "image": f.image, "volumeMounts": mount,
                                 "command": ["sh", "-c", "if test -e /scratch/ran; then echo second; exit 0; fi; touch /scratch/ran; echo first; sleep 3; exit 1"]}],
                 "volumes": scratch}
    }));
    // gVisor, two containers: a sandbox held by its pause container.
    let always = pod(json!({
        "metadata": {"name": "always", "namespace": "default", "uid": "uid-always"},
        "spec": {"nodeName": "worker-1", "restartPolicy": "Always",
                 "schedulerName": "serverless-scheduler",
                 "containers": [
                     {"name": "main", "image": f.image, "volumeMounts": mount,
                      "command": ["sh", "-c", "if test -e /scratch/ran; then echo second; exec sleep 1000; fi; touch /scratch/ran; echo first; exit 3"]},
                     {"name": "side", "image": f.image, "command": ["sleep", "1000"]}],
                 "volumes": scratch}
    }));

    // The first agent runs on a tokio runtime of its own, shut down as its process would die.
    let (first_config, client) = (config.clone(), f.client.clone());
    let first_runs = std::thread::spawn(move || {
        let tokio_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let runs = tokio_rt.block_on(async {
            let first = SandboxRuntime::new(first_config, client).await.unwrap();
            // The slow gVisor pod first: the crun runs are still going when the agent dies.
            let always = first.start(&always, "10.203.5.11").await.unwrap();
            let st = status_until(&first, "uid-always", 60, |s| {
                s.container_statuses[0].restart_count == 1
                    && s.container_statuses
                        .iter()
                        .all(|c| c.state.as_ref().is_some_and(|x| x.running.is_some()))
            })
            .await;
            let last = st.container_statuses[0].last_state.as_ref().unwrap();
            assert_eq!(last.terminated.as_ref().unwrap().exit_code, 3);
            let never = first.start(&never, "10.203.5.9").await.unwrap();
            let flaky = first.start(&flaky, "10.203.5.10").await.unwrap();
            for uid in ["uid-never", "uid-flaky"] {
                let st = first.pod_status(uid).unwrap();
                let c = &st.container_statuses[0];
                assert!(
                    c.state.as_ref().is_some_and(|x| x.running.is_some()),
                    "{uid} runs when the agent dies: {c:#?}"
                );
            }
            vec![never, flaky, always]
        });
        tokio_rt.shutdown_timeout(Duration::from_secs(5));
        runs
    })
    .join()
    .unwrap();
    let died = jiff::Timestamp::now();
    // The Never and OnFailure runs end while no agent watches.
    tokio::time::sleep(Duration::from_secs(5)).await;

    let again = SandboxRuntime::new(config, f.client.clone()).await.unwrap();
    let adopted = again.recover().await;
    for (uid, first) in ["uid-never", "uid-flaky", "uid-always"]
        .into_iter()
        .zip(&first_runs)
    {
        assert_eq!(
            adopted.get(uid),
            Some(first),
            "{uid} taken back with the same containers"
        );
    }

    // Never: the recorded exit, not run again.
    let code = tokio::time::timeout(Duration::from_secs(30), again.wait("uid-never"))
        .await
        .expect("the pod ends with its recorded exit")
        .unwrap();
    assert_eq!(code, 7);
    let st = again.pod_status("uid-never").unwrap();
    let c = &st.container_statuses[0];
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (t.exit_code, t.reason.as_deref(), c.restart_count),
        (7, Some("Error"), 0),
        "{c:#?}"
    );
    let (started, finished) = (
        t.started_at.clone().unwrap(),
        t.finished_at.clone().unwrap(),
    );
    assert!(finished.0 > died, "the run ended while no agent watched");
    let ran = finished.0.duration_since(started.0);
    assert!(
        ran.as_secs_f64() >= 2.5,
        "the recorded run's times: {started:?}..{finished:?}"
    );
    assert!(
        c.last_state.as_ref().is_none_or(|l| l.terminated.is_none()),
        "{c:#?}"
    );
    assert_eq!(
        logs(&again, "default", "never", "main", false).await,
        "run\n"
    );

    // OnFailure: its failed run is restarted once, and then succeeds.
    let code = tokio::time::timeout(Duration::from_secs(30), again.wait("uid-flaky"))
        .await
        .expect("the restarted run ends")
        .unwrap();
    assert_eq!(code, 0);
    let st = again.pod_status("uid-flaky").unwrap();
    let c = &st.container_statuses[0];
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (t.exit_code, t.reason.as_deref(), c.restart_count),
        (0, Some("Completed"), 1),
        "{c:#?}"
    );
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
    assert!(last.finished_at.as_ref().unwrap().0 > died, "{last:#?}");
    assert_eq!(
        logs(&again, "default", "flaky", "main", false).await,
        "second\n"
    );
    assert_eq!(
        logs(&again, "default", "flaky", "main", true).await,
        "first\n"
    );

    // Always: still running, with its count, lastState and logs.
    let st = status_until(&again, "uid-always", 10, |s| s.ready).await;
    let c = &st.container_statuses[0];
    assert_eq!(c.restart_count, 1, "{c:#?}");
    assert!(c.state.as_ref().unwrap().running.is_some(), "{c:#?}");
    let last = c.last_state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (last.exit_code, last.reason.as_deref()),
        (3, Some("Error")),
        "{c:#?}"
    );
    assert!(last.finished_at.is_some());
    assert_eq!(st.container_statuses[1].restart_count, 0);
    assert_eq!(
        logs(&again, "default", "always", "main", false).await,
        "second\n"
    );
    assert_eq!(
        logs(&again, "default", "always", "main", true).await,
        "first\n"
    );

    for uid in ["uid-never", "uid-flaky", "uid-always"] {
        tokio::time::timeout(
            Duration::from_secs(60),
            again.stop(uid, Duration::from_secs(2)),
        )
        .await
        .unwrap()
        .unwrap();
        again.remove(uid);
        again.removed(uid).await;
    }
    f.assert_nothing_left().await;
    f.cleanup().await;
}

/// A micro-VM pod whose Never container ends while the agent is down (the VM outlives it):
/// the new agent takes the VM back, the run ends with its exit code and is not run again. Its
/// finish time is when it ended (seconds after the agent died, long before the new one
/// started), and its log has what it wrote meanwhile and what the dying agent had received but
/// not logged (an unterminated line). An Always pod whose container failed once before the
/// outage keeps its restart count and last state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn microvm_recover_keeps_an_ended_run() {
    if let Err(e) = sandbox::microvm::prerequisites() {
        assert!(
            std::env::var_os("NODELESS_REQUIRE_MICROVM").is_none(),
            "micro-VM prerequisites missing (NODELESS_REQUIRE_MICROVM is set): {e}"
        );
        eprintln!("SKIPPED: {e}");
        return;
    }
    let f = fixture_with(6, RuntimeKind::Microvm, RuntimeKind::Container).await;
    let config = SandboxConfig {
        data_dir: f.data.clone(),
        serverless_runtime: RuntimeKind::Microvm,
        worker_runtime: RuntimeKind::Container,
        network: f.network.clone(),
        insecure_registries: vec![],
        image_cache_limit_bytes: None,
        eviction_interval: agent::eviction::INTERVAL,
    };
    let never = pod(json!({
        "metadata": {"name": "vnever", "namespace": "default", "uid": "uid-vnever"},
        "spec": {"nodeName": "worker-1", "restartPolicy": "Never",
                 "schedulerName": "serverless-scheduler",
                 "containers": [{"name": "main", "image": f.image,
                                 "command": ["sh", "-c", "echo start $(cut -d' ' -f1 /proc/uptime); printf half-; sleep 3; echo done; sleep 3; echo end $(cut -d' ' -f1 /proc/uptime); exit 7"]}]}
    }));
    let always = pod(json!({
        "metadata": {"name": "valways", "namespace": "default", "uid": "uid-valways"},
        "spec": {"nodeName": "worker-1", "restartPolicy": "Always",
                 "schedulerName": "serverless-scheduler",
                 "containers": [{"name": "main", "image": f.image,
                                 "command": ["sh", "-c", "if test -e /scratch/ran; then echo second; exec sleep 600; fi; touch /scratch/ran; exit 3"],
                                 "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]}],
                 "volumes": [{"name": "scratch", "emptyDir": {}}]}
    }));
    // The first agent, on a tokio runtime of its own, shut down as its process would die.
    let (first_config, client) = (config.clone(), f.client.clone());
    let first_run = std::thread::spawn(move || {
        let tokio_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let run = tokio_rt.block_on(async {
            let first = SandboxRuntime::new(first_config, client).await.unwrap();
            first.start(&always, "10.203.6.10").await.unwrap();
            // Failed once and runs again.
            status_until(&first, "uid-valways", 90, |s| {
                let c = &s.container_statuses[0];
                c.restart_count == 1 && c.state.as_ref().is_some_and(|x| x.running.is_some())
            })
            .await;
            let run = first.start(&never, "10.203.6.9").await.unwrap();
            // Its first line is logged, and the unterminated "half-" that follows reaches the
            // agent, which holds it (no newline yet) when it dies.
            for _ in 0..300 {
                if logs(&first, "default", "vnever", "main", false)
                    .await
                    .starts_with("start ")
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let st = first.pod_status("uid-vnever").unwrap();
            let c = &st.container_statuses[0];
            assert!(
                c.state.as_ref().is_some_and(|x| x.running.is_some()),
                "runs when the agent dies: {c:#?}"
            );
            run
        });
        tokio_rt.shutdown_timeout(Duration::from_secs(5));
        run
    })
    .join()
    .unwrap();
    let died = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_secs(9)).await;
    let restarted = jiff::Timestamp::now();

    let again = SandboxRuntime::new(config, f.client.clone()).await.unwrap();
    let adopted = again.recover().await;
    assert_eq!(adopted.get("uid-vnever"), Some(&first_run));
    assert!(adopted.contains_key("uid-valways"), "{adopted:?}");
    let st = again.pod_status("uid-valways").unwrap();
    let c = &st.container_statuses[0];
    assert_eq!(c.restart_count, 1, "{c:#?}");
    assert!(
        c.state.as_ref().is_some_and(|x| x.running.is_some()),
        "{c:#?}"
    );
    let last = c.last_state.as_ref().and_then(|l| l.terminated.as_ref());
    let last = last.unwrap_or_else(|| panic!("the failed run is the last state: {c:#?}"));
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    let (began, ended) = (
        last.started_at.as_ref().unwrap().0,
        last.finished_at.as_ref().unwrap().0,
    );
    assert!(began <= ended && ended < died, "{c:#?}");
    let code = tokio::time::timeout(Duration::from_secs(30), again.wait("uid-vnever"))
        .await
        .expect("the pod ends with its recorded exit")
        .unwrap();
    assert_eq!(code, 7);
    // Not run again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = again.pod_status("uid-vnever").unwrap();
    let c = &st.container_statuses[0];
    let t = c.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (t.exit_code, t.reason.as_deref(), c.restart_count),
        (7, Some("Error"), 0),
        "{c:#?}"
    );
    let started = t.started_at.as_ref().unwrap().0;
    assert!(started < died, "the run the first agent started: {c:#?}");
    // It ended while no agent was attached: not at the new agent's adoption, nor when the
    // agent died, but when it did (by the guest's uptime from its first line, which was logged
    // as it was written).
    let finished = t.finished_at.as_ref().unwrap().0;
    assert!(
        started <= finished && finished < restarted,
        "ended before the new agent started: {c:#?}"
    );
    let stamped = logs_with(
        &again,
        "default",
        "vnever",
        "main",
        LogOptions {
            timestamps: true,
            ..Default::default()
        },
    )
    .await;
    let lines: Vec<(jiff::Timestamp, &str)> = stamped
        .lines()
        .map(|l| {
            let (ts, text) = l.split_once(' ').unwrap();
            (ts.parse().unwrap(), text)
        })
        .collect();
    // What it wrote while no agent was attached is kept, and so is what the dying agent had
    // received but not logged.
    let texts: Vec<&str> = lines.iter().map(|(_, t)| *t).collect();
    assert_eq!(texts.len(), 3, "{stamped}");
    assert_eq!(texts[1], "half-done", "{stamped}");
    let uptime = |l: &str, word: &str| -> f64 {
        l.strip_prefix(word)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{l:?}"))
    };
    let guest_secs = uptime(texts[2], "end ") - uptime(texts[0], "start ");
    let ended = lines[0].0 + jiff::SignedDuration::from_secs_f64(guest_secs);
    let off = finished.duration_since(ended).abs();
    println!(
        "finishedAt {off} off the end, which came {} after the agent died",
        ended.duration_since(died)
    );
    assert!(
        off < jiff::SignedDuration::from_secs(2),
        "finishedAt {finished} vs the end at {ended}: {c:#?}"
    );
    assert!(
        finished > died + jiff::SignedDuration::from_secs(2)
            && finished < restarted - jiff::SignedDuration::from_secs(2),
        "ended while the agent was down: {c:#?}"
    );

    tokio::time::timeout(
        Duration::from_secs(60),
        again.stop("uid-vnever", Duration::from_secs(2)),
    )
    .await
    .unwrap()
    .unwrap();
    again.remove("uid-vnever");
    again.removed("uid-vnever").await;
    tokio::time::timeout(
        Duration::from_secs(60),
        again.stop("uid-valways", Duration::from_secs(2)),
    )
    .await
    .unwrap()
    .unwrap();
    again.remove("uid-valways");
    again.removed("uid-valways").await;
    f.assert_nothing_left().await;
    f.cleanup().await;
}

/// Readiness and liveness probes (exec), attach, and an image that cannot be pulled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crun_probes_attach_and_pull_errors() {
    if !available("runsc") || !available("crun") {
        eprintln!("SKIPPED: needs runsc and crun");
        return;
    }
    let f = fixture(4).await;
    let p = pod(json!({
        "metadata": {"name": "probed", "namespace": "default", "uid": "uid-probed"},
        "spec": {
            "nodeName": "worker-1",
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": f.image,
                "command": ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"],
                "readinessProbe": {"exec": {"command": ["test", "-e", "/tmp/ready"]}, "periodSeconds": 1, "timeoutSeconds": 10, "failureThreshold": 1},
                "livenessProbe": {"exec": {"command": ["sh", "-c", "test ! -e /tmp/die"]}, "periodSeconds": 1, "timeoutSeconds": 10, "failureThreshold": 2}}]
        }
    }));
    f.rt.start(&p, "").await.unwrap();
    let st = status_until(&f.rt, "uid-probed", 30, |s| {
        s.container_statuses[0]
            .state
            .as_ref()
            .is_some_and(|x| x.running.is_some())
    })
    .await;
    assert!(
        !st.ready && !st.container_statuses[0].ready,
        "not ready before the probe passes"
    );
    let run = |cmd: &'static str| {
        let rt = f.rt.clone();
        async move {
            let s = rt
                .exec(
                    "default",
                    "probed",
                    None,
                    ExecRequest {
                        command: vec!["sh".into(), "-c".into(), cmd.into()],
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            s.exit.await.unwrap()
        }
    };
    assert_eq!(run("touch /tmp/ready").await, 0);
    status_until(&f.rt, "uid-probed", 15, |s| s.ready).await;

    // Attach: the output from now on.
    let s =
        f.rt.attach(
            "default",
            "probed",
            None,
            ExecRequest {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut out = s.stdout.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.iter().filter(|b| **b == b'\n').count() < 2 {
        let n = tokio::time::timeout(Duration::from_secs(10), out.read(&mut buf))
            .await
            .expect("attached output")
            .unwrap();
        assert!(n > 0, "attach ended early");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(
        text.starts_with("tick ") && !text.starts_with("tick 0\n"),
        "{text}"
    );
    drop(out);

    // Liveness failure: Unhealthy, killed, restarted at once with a fresh writable layer.
    assert_eq!(run("touch /tmp/die").await, 0);
    let st = status_until(&f.rt, "uid-probed", 30, |s| {
        s.container_statuses[0].restart_count >= 1
    })
    .await;
    let last = st.container_statuses[0]
        .last_state
        .as_ref()
        .unwrap()
        .terminated
        .as_ref()
        .unwrap();
    assert_eq!(last.exit_code, 137, "{last:?}");
    assert!(!st.ready, "readiness starts over after the restart");
    let events: Api<Event> = Api::namespaced(f.client.clone(), "default");
    let mut unhealthy = false;
    for _ in 0..50 {
        unhealthy = events
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("Unhealthy")
                    && e.message
                        .as_deref()
                        .is_some_and(|m| m.starts_with("Liveness probe failed"))
            });
        if unhealthy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unhealthy, "Unhealthy event");
    let reasons: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|e| e.involved_object.uid.as_deref() == Some("uid-probed"))
        .map(|e| format!("{:?}: {:?}", e.reason, e.message))
        .collect();
    eprintln!("events: {reasons:#?}");
    assert!(
        logs(&f.rt, "default", "probed", "main", true)
            .await
            .starts_with("tick 0\n")
    );

    // An image that cannot be pulled: ErrImagePull, then ImagePullBackOff, until stopped.
    let bad = pod(json!({
        "metadata": {"name": "bad", "namespace": "default", "uid": "uid-bad"},
        "spec": {"nodeName": "worker-1", "containers": [{"name": "main", "image": "oci:/nonexistent/layout:latest"}]}
    }));
    let rt = f.rt.clone();
    let starting = tokio::spawn(async move { rt.start(&bad, "").await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let r = f.rt.pod_status("uid-bad").and_then(|s| {
            s.container_statuses[0]
                .state
                .as_ref()
                .and_then(|x| x.waiting.as_ref())
                .and_then(|w| w.reason.clone())
        });
        if matches!(r.as_deref(), Some("ErrImagePull" | "ImagePullBackOff")) {
            break r.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pull error: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("pull error state: {reason}");
    f.rt.stop("uid-bad", Duration::from_secs(1)).await.unwrap();
    assert!(starting.await.unwrap().is_err());
    let failed = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .any(|e| {
            e.reason.as_deref() == Some("Failed")
                && e.involved_object.uid.as_deref() == Some("uid-bad")
                && e.message.as_deref().is_some_and(|m| {
                    m.starts_with("Failed to pull image \"oci:/nonexistent/layout:latest\"")
                })
        });
    assert!(failed, "Failed event for the pull");

    // A missing ConfigMap: CreateContainerConfigError, and the pod runs nothing.
    let nocfg = pod(json!({
        "metadata": {"name": "nocfg", "namespace": "default", "uid": "uid-nocfg"},
        "spec": {"nodeName": "worker-1", "containers": [{"name": "main", "image": f.image,
            "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "missing", "key": "k"}}}]}]}
    }));
    let err = f.rt.start(&nocfg, "").await.unwrap_err().to_string();
    assert!(err.contains("configmap \"missing\" not found"), "{err}");
    let st = f.rt.pod_status("uid-nocfg").unwrap();
    let w = st.container_statuses[0]
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap();
    assert_eq!(w.reason.as_deref(), Some("CreateContainerConfigError"));
    assert_eq!(f.rt.wait("uid-nocfg").await.unwrap(), 128);

    for uid in ["uid-probed", "uid-bad", "uid-nocfg"] {
        tokio::time::timeout(
            Duration::from_secs(60),
            f.rt.stop(uid, Duration::from_secs(1)),
        )
        .await
        .unwrap()
        .unwrap();
        f.rt.remove(uid);
        f.rt.removed(uid).await;
    }
    f.assert_nothing_left().await;
    f.cleanup().await;
}
