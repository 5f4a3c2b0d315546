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

/// Runs `args` in container `name` of `run`: (exit code, stdout + stderr).
async fn exec_in(run: &pod::PodRun, name: &str, args: &[&str]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = run.exec(name, &args).await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// What Kubernetes gives the containers of one pod: a projected volume (ConfigMap and Secret
/// sources) and ConfigMap/Secret volumes, read-only even without `readOnly`; an env from a
/// secretKeyRef; the container's workingDir; the pod's /etc/resolv.conf; one /dev/shm for the
/// pod; and the other container's processes visible exactly when shareProcessNamespace is set.
async fn pod_semantics(kind: RuntimeKind, subnet_octet: u8, share: bool) {
    let Env {
        _tmp,
        data,
        image,
        network,
        host,
        rt,
        ..
    } = env(kind, subnet_octet);
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sem", "namespace": "test", "uid": format!("uid-sem-{kind}-{share}")},
        "spec": {
            "restartPolicy": "Never",
            "shareProcessNamespace": share,
            "containers": [
                {"name": "a", "image": image, "command": ["sh", "-c",
                    "echo shm-from-a > /dev/shm/note; echo a-ready; exec sleep 3117"]},
                {"name": "b", "image": image, "workingDir": "/tmp", "command": ["sh", "-c",
                    "pwd; echo \"token=$TOKEN\"; cat /proj/key /proj/token /cfg/key /etc/resolv.conf; \
                     echo b-ready; exec sleep 3118"],
                 "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}],
                 "volumeMounts": [{"name": "proj", "mountPath": "/proj"},
                                  {"name": "cfg", "mountPath": "/cfg"},
                                  {"name": "sec", "mountPath": "/sec"}]}
            ],
            "volumes": [
                {"name": "proj", "projected": {"sources": [
                    {"configMap": {"name": "c"}}, {"secret": {"name": "s"}}]}},
                {"name": "cfg", "configMap": {"name": "c"}},
                {"name": "sec", "secret": {"secretName": "s"}}
            ]
        }
    }))
    .unwrap();
    let objects: sandbox::plan::Objects = [
        (
            "configmap/c".to_string(),
            [("key".to_string(), b"cm-value\n".to_vec())].into(),
        ),
        (
            "secret/s".to_string(),
            [("token".to_string(), b"s3cret".to_vec())].into(),
        ),
    ]
    .into();
    let pod = sandbox::plan::resolve_env(&pod, &objects).unwrap();
    let files = sandbox::plan::volume_files(&pod, &objects).unwrap();
    let plan = sandbox::plan::plan(&pod).unwrap();
    assert_eq!(plan.share_process_namespace, share);
    let run = pod::start(&host, rt.clone(), &plan, &files).await.unwrap();
    // A failed check still removes the pod (its sandboxes would hold the test's pipes).
    let checked = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(semantics_checks(
        &run, &data, &plan, kind, share,
    )))
    .await;
    if checked.is_err() {
        for name in ["a", "b"] {
            let _ = rt.kill(&pod::container_id(&plan.id, name), 9).await;
        }
    }
    run.stop(Duration::from_secs(2)).await;
    let _ = run.wait().await;
    pod::remove(&host, rt.as_ref(), &plan).await.unwrap();
    network.destroy().await.unwrap();
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    assert!(!pod::dir(&data, &plan.id).exists());
}

async fn semantics_checks(
    run: &pod::PodRun,
    data: &std::path::Path,
    plan: &sandbox::plan::PodPlan,
    kind: RuntimeKind,
    share: bool,
) {
    wait_for_log(data, &pod::container_id(&plan.id, "a"), "a-ready").await;
    let log = wait_for_log(data, &pod::container_id(&plan.id, "b"), "b-ready").await;
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines[0], "/tmp", "{kind}: workingDir: {log}");
    assert!(
        lines.contains(&"token=s3cret"),
        "{kind}: env from a secretKeyRef: {log}"
    );
    assert!(
        log.contains("cm-value\ns3cret"),
        "{kind}: projected configMap and secret sources: {log}"
    );
    let resolv = std::fs::read_to_string(pod::dir(data, &plan.id).join("etc/resolv.conf")).unwrap();
    assert!(
        resolv.contains("search test.svc.cluster.local svc.cluster.local cluster.local\n")
            && resolv.contains("nameserver "),
        "{resolv}"
    );
    assert!(
        log.contains(&resolv),
        "{kind}: /etc/resolv.conf is the pod's: {log}"
    );

    // ConfigMap, Secret and projected volumes are read-only without `readOnly`.
    for dir in ["/proj", "/cfg", "/sec"] {
        let (code, out) = exec_in(run, "b", &["touch", &format!("{dir}/new")]).await;
        assert_ne!(code, 0, "{kind}: {dir} is writable: {out}");
    }
    let (code, out) = exec_in(run, "b", &["cat", "/sec/token"]).await;
    assert_eq!((code, out.as_str()), (0, "s3cret"), "{kind}");

    // One /dev/shm for the pod.
    let (code, out) = exec_in(run, "b", &["cat", "/dev/shm/note"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, "shm-from-a\n"),
        "{kind}: /dev/shm is shared"
    );
    let host_shm = pod::dir(data, &plan.id).join("shm");
    match kind {
        // crun: a tmpfs of kubelet's size on the host.
        RuntimeKind::Container => {
            let st = rustix::fs::statvfs(&host_shm).unwrap();
            assert_eq!(st.f_blocks * st.f_frsize, pod::SHM_BYTES, "{kind}");
            assert!(host_shm.join("note").exists(), "{kind}");
        }
        // runsc: a tmpfs in the sentry, nothing written through to the host.
        _ => assert!(
            !host_shm.join("note").exists(),
            "{kind}: /dev/shm is the sentry's"
        ),
    }

    // The other container's processes, by their arguments.
    for (who, own, other) in [
        ("b", "sleep 3118", "sleep 3117"),
        ("a", "sleep 3117", "sleep 3118"),
    ] {
        let (code, ps) = exec_in(run, who, &["ps", "-o", "pid,args"]).await;
        assert_eq!(code, 0, "{kind}: {ps}");
        assert!(ps.contains(own), "{kind}: {who} sees its own process: {ps}");
        assert_eq!(
            ps.contains(other),
            share,
            "{kind}: shareProcessNamespace={share}, {who} sees: {ps}"
        );
    }
    if share {
        // The pause, first process of the shared namespace, reaps what is orphaned in it.
        let (code, out) = exec_in(run, "b", &["sh", "-c", "sleep 0.2 & exit 0"]).await;
        assert_eq!(code, 0, "{kind}: {out}");
        // Running, then a zombie (`Z`, its arguments gone) unless reaped.
        let left = |ps: &str| {
            ps.lines()
                .any(|l| l.contains("sleep 0.2") || l.trim_start().starts_with('Z'))
        };
        let mut ps = String::new();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ps = exec_in(run, "b", &["ps", "-o", "stat,args"]).await.1;
            if !left(&ps) {
                break;
            }
        }
        assert!(!left(&ps), "{kind}: an orphan left: {ps}");
    }
    let (_, procs) = exec_in(run, "b", &["ls", "/proc"]).await;
    let pids = procs
        .split_whitespace()
        .filter(|p| p.parse::<u32>().is_ok())
        .count();
    // Shared: the pause, both containers' processes and `ls`; else `sleep` and `ls`.
    assert_eq!(pids >= 4, share, "{kind}: /proc lists {procs}");
}

#[tokio::test]
async fn crun_pod_semantics_shared_pid() {
    if common::has(RuntimeKind::Container) {
        pod_semantics(RuntimeKind::Container, 5, true).await;
    }
}

#[tokio::test]
async fn crun_pod_semantics_own_pid() {
    if common::has(RuntimeKind::Container) {
        pod_semantics(RuntimeKind::Container, 6, false).await;
    }
}

#[tokio::test]
async fn gvisor_pod_semantics_shared_pid() {
    if common::has(RuntimeKind::Gvisor) {
        pod_semantics(RuntimeKind::Gvisor, 7, true).await;
    }
}

#[tokio::test]
async fn gvisor_pod_semantics_own_pid() {
    if common::has(RuntimeKind::Gvisor) {
        pod_semantics(RuntimeKind::Gvisor, 8, false).await;
    }
}
