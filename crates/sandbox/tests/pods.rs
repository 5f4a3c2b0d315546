//! Whole pods: init containers, shared volumes, ConfigMap files, hostname, /etc/hosts, and for
//! crun the pod network (containers share localhost; the pod IP is reachable from the bridge).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use sandbox::pod::{self, Phase, VolumeFiles};
use sandbox::runtime::RuntimeKind;

fn log_of(data: &std::path::Path, id: &str) -> String {
    let raw = std::fs::read(sandbox::container::log_path(
        &sandbox::container::dir(data, id),
        0,
    ))
    .unwrap_or_default();
    raw.split(|b| *b == b'\n')
        .filter_map(sandbox::logs::parse_line)
        .map(|r| String::from_utf8_lossy(&r.text).into_owned() + "\n")
        .collect()
}

async fn wait_for_log(data: &std::path::Path, id: &str, needle: &str) -> String {
    for _ in 0..200 {
        let l = log_of(data, id);
        if l.contains(needle) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never logged {needle:?}: {}", log_of(data, id));
}

type Env = PodEnv;

fn env(kind: RuntimeKind, subnet_octet: u8) -> Env {
    pod_env("pods", kind, 202, subnet_octet)
}

async fn pod_suite(kind: RuntimeKind, subnet_octet: u8) {
    let Env {
        _tmp,
        data,
        image,
        netns,
        network,
        host,
        rt,
    } = env(kind, subnet_octet);

    let shared_localhost = true;
    let client_script = if shared_localhost {
        "cat /cfg/key; hostname; grep web /etc/hosts; \
         for i in $(seq 1 50); do wget -q -O - http://127.0.0.1:8080/greeting && break; sleep 0.1; done; echo client-done"
    } else {
        "cat /cfg/key; hostname; cat /work/greeting; echo client-done"
    };
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "test", "uid": format!("uid-{kind}")},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                {"name": "init1", "image": image, "command": ["sh", "-c", "echo one > /work/order"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]},
                {"name": "init2", "image": image, "command": ["sh", "-c", "cat /work/order; echo hello-from-init > /work/greeting"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}]}
            ],
            "containers": [
                {"name": "server", "image": image, "command": ["httpd", "-f", "-p", "8080", "-h", "/work"],
                 "volumeMounts": [{"name": "work", "mountPath": "/work", "readOnly": true}]},
                {"name": "client", "image": image, "command": ["sh", "-c", client_script],
                 "volumeMounts": [{"name": "work", "mountPath": "/work"}, {"name": "cfg", "mountPath": "/cfg", "readOnly": true}]}
            ],
            "volumes": [{"name": "work", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}]
        }
    }))
    .unwrap();
    let plan = sandbox::plan::plan(&pod).unwrap();
    let files: VolumeFiles = [(
        "cfg".to_string(),
        [("key".to_string(), b"value-from-configmap\n".to_vec())].into(),
    )]
    .into();
    let run = pod::start(&host, rt.clone(), &plan, &files).await.unwrap();
    assert_eq!(run.init_exits.len(), 2);
    assert!(
        log_of(&data, &pod::container_id(&plan.id, "init2")).contains("one"),
        "init containers ran in order"
    );

    let client = pod::container_id(&plan.id, "client");
    let log = wait_for_log(&data, &client, "client-done").await;
    assert!(log.contains("value-from-configmap"), "{kind}: {log}");
    assert!(log.contains("hello-from-init"), "{kind}: {log}");
    assert!(
        log.lines().any(|l| l == "web"),
        "{kind}: hostname is the pod name: {log}"
    );
    if shared_localhost {
        let ip = run.ip.unwrap();
        assert!(
            log.contains(&format!("{ip}\tweb")),
            "{kind}: /etc/hosts names the pod IP: {log}"
        );
        // From the bridge's namespace, the pod answers on its own address.
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args([
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{ip}:8080/greeting"),
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hello-from-init\n",
            "{kind}: {out:?}"
        );
    }
    // Agent restart: the pod is found again on disk.
    let found = pod::list(&data);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].plan, plan);

    // Exec into a running container.
    let out = run
        .exec("server", &["cat".into(), "/work/greeting".into()])
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello-from-init\n",
        "{kind}: {out:?}"
    );

    // Restart one container: the previous run's log stays, the new run logs into its own file.
    let mut run = run;
    let previous = run.restart("client", Duration::from_secs(2)).await.unwrap();
    assert_eq!(previous.code, 0, "{kind}");
    let cdir = sandbox::container::dir(&data, &client);
    for _ in 0..200 {
        if std::fs::read_to_string(sandbox::container::log_path(&cdir, 1))
            .unwrap_or_default()
            .contains("client-done")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = std::fs::read_to_string(sandbox::container::log_path(&cdir, 1)).unwrap();
    assert!(
        second.contains("value-from-configmap") && second.contains("client-done"),
        "{kind}: {second}"
    );
    assert!(
        std::fs::read_to_string(sandbox::container::log_path(&cdir, 0))
            .unwrap()
            .contains("client-done")
    );
    let state = sandbox::container::read_state(&data, &client).unwrap();
    assert_eq!(state.restart_count, 1);

    run.stop(Duration::from_secs(2)).await;
    let (exits, phase) = run.wait().await.unwrap();
    let code = |n: &str| exits.iter().find(|(name, _)| name == n).unwrap().1.code;
    assert_eq!(code("client"), 0, "{kind}");
    assert_ne!(code("server"), 0, "{kind}: the server was stopped");
    assert_eq!(phase, Phase::Failed);
    pod::remove(&host, rt.as_ref(), &plan).await.unwrap();
    assert!(!pod::dir(&data, &plan.id).exists());
    network.destroy().await.unwrap();
}

#[tokio::test]
async fn crun_pod() {
    if !common::has(RuntimeKind::Container) {
        eprintln!("SKIPPED: crun is not installed (apt-get install crun)");
        return;
    }
    pod_suite(RuntimeKind::Container, 1).await;
}

#[tokio::test]
async fn gvisor_pod() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    pod_suite(RuntimeKind::Gvisor, 2).await;
}

/// Fetches `url` from the bridge's namespace (busybox wget), retrying for up to 5 s.
#[track_caller]
fn fetch_from_bridge(netns: &str, url: &str) -> String {
    let mut last = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .args(["busybox", "wget", "-q", "-O", "-", url])
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        last = format!("{out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} never answered: {last}");
}

/// A gVisor pod with one container (no pause: each of its sandboxes is the container's own)
/// keeps its address for the container after an init container's sandbox came and went, and
/// again after the container restarts.
#[tokio::test]
async fn gvisor_solo_pod_keeps_its_address() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    let Env {
        _tmp,
        image,
        netns,
        network,
        host,
        rt,
        ..
    } = env(RuntimeKind::Gvisor, 3);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "solo", "namespace": "test", "uid": "uid-solo"},
        "spec": {
            "restartPolicy": "Always",
            "initContainers": [
                {"name": "init", "image": image, "command": ["sh", "-c", "echo from-init > /www/page"],
                 "volumeMounts": [{"name": "www", "mountPath": "/www"}]}
            ],
            "containers": [
                {"name": "web", "image": image, "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                 "volumeMounts": [{"name": "www", "mountPath": "/www"}]}
            ],
            "volumes": [{"name": "www", "emptyDir": {}}]
        }
    }))
    .unwrap();
    let plan = sandbox::plan::plan(&pod).unwrap();
    assert!(pod::solo(&plan, RuntimeKind::Gvisor));
    let mut run = pod::start(&host, rt.clone(), &plan, &VolumeFiles::new())
        .await
        .unwrap();
    let url = format!("http://{}:8080/page", run.ip.unwrap());
    assert_eq!(fetch_from_bridge(&netns, &url), "from-init\n");
    run.restart("web", Duration::from_secs(2)).await.unwrap();
    assert_eq!(
        fetch_from_bridge(&netns, &url),
        "from-init\n",
        "the restarted container's sandbox has the pod's address"
    );
    run.stop(Duration::from_secs(2)).await;
    let _ = run.wait().await;
    pod::remove(&host, rt.as_ref(), &plan).await.unwrap();
    network.destroy().await.unwrap();
}

/// A container joined to a gVisor pod's sandbox is started again under the same runsc id at
/// the first attempt, as the agent does it (start, wait for the end, start again at once):
/// after it ended by itself and after it was killed.
#[tokio::test]
async fn gvisor_joined_container_restarts_at_first_attempt() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    let Env {
        _tmp,
        image,
        network,
        host,
        rt,
        ..
    } = env(RuntimeKind::Gvisor, 4);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "again", "namespace": "test", "uid": "uid-again"},
        "spec": {
            "restartPolicy": "Always",
            "containers": [
                {"name": "short", "image": image, "command": ["sh", "-c",
                    "echo run; sleep 100 & sleep 0.3; exit 3"]},
                {"name": "long", "image": image, "command": ["sleep", "600"]}
            ]
        }
    }))
    .unwrap();
    let plan = sandbox::plan::plan(&pod).unwrap();
    assert!(!pod::solo(&plan, RuntimeKind::Gvisor));
    let images = pod::pull_images(&host, &plan).await.unwrap();
    let sb = pod::prepare(
        &host,
        rt.clone(),
        &plan,
        &VolumeFiles::new(),
        &Default::default(),
    )
    .await
    .unwrap();
    let (short, long) = (&plan.containers[0], &plan.containers[1]);
    let long_run = sb.launch(long, &images[&long.image], 0).await.unwrap();
    let short_id = pod::container_id(&plan.id, &short.name);
    for n in 0..4u32 {
        let started = sb
            .launch(short, &images[&short.image], n)
            .await
            .unwrap_or_else(|e| panic!("start #{n} of a joined container failed: {e:?}"));
        let killed = n % 2 == 1;
        if killed {
            rt.kill(&short_id, 9).await.unwrap();
        }
        let exit = started.wait().await.unwrap();
        assert_eq!(
            exit.code,
            if killed { 137 } else { 3 },
            "run #{n}: {exit:?}"
        );
    }
    // The sentry still has the container while runsc's state of it is gone (a `delete` that
    // removed the state file but did not reach the sentry): `runsc create` says "already
    // exists" once; the start still succeeds at the first attempt.
    let stale = sb.launch(short, &images[&short.image], 4).await.unwrap();
    let root = host.data_dir.join("runtime").join("gvisor");
    let prefix = format!("{short_id}_sandbox:");
    for f in std::fs::read_dir(&root).unwrap().flatten() {
        if f.file_name().to_string_lossy().starts_with(&prefix) {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    let again = sb
        .launch(short, &images[&short.image], 5)
        .await
        .expect("start over a container the sentry still has");
    assert_eq!(again.wait().await.unwrap().code, 3);
    drop(stale);
    rt.kill(&pod::container_id(&plan.id, &long.name), 9)
        .await
        .unwrap();
    let _ = long_run.wait().await;
    pod::remove(&host, rt.as_ref(), &plan).await.unwrap();
    network.destroy().await.unwrap();
}
