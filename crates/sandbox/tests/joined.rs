//! Containers joined to a gVisor pod's sandbox, run under their shims (as the agent runs
//! them): the watchdog of a container's own memory and CPU limits lives in its shim, and a container
//! that ended is started again under the same runsc id at the first attempt.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use sandbox::plan::PodPlan;
use sandbox::pod::{self, VolumeFiles};
use sandbox::runtime::RuntimeKind;

fn ready() -> bool {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return false;
    }
    use_shim()
}

/// The pod's images and its sandbox (the pause), ready for its containers.
async fn prepared(
    e: &PodEnv,
    plan: &PodPlan,
) -> (pod::Sandbox, BTreeMap<String, sandbox::image::Image>) {
    let images = pod::pull_images(&e.host, plan).await.unwrap();
    let sb = pod::prepare(
        &e.host,
        e.rt.clone(),
        plan,
        &VolumeFiles::new(),
        &Default::default(),
    )
    .await
    .unwrap();
    (sb, images)
}

/// Every container of the pod started in its sandbox, each under its shim.
async fn launch_all(e: &PodEnv, plan: &PodPlan) -> Vec<sandbox::container::Started> {
    let (sb, images) = prepared(e, plan).await;
    let mut runs = Vec::new();
    for c in &plan.containers {
        let s = sb.launch(c, &images[&c.image], 0).await.unwrap();
        assert!(s.shim_pid().is_some(), "{} runs under a shim", c.name);
        runs.push(s);
    }
    runs
}

fn planned(json: serde_json::Value) -> PodPlan {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json).unwrap();
    sandbox::plan::plan(&pod).unwrap()
}

/// Under shims: a container limited to 64Mi that takes and keeps 200 MiB is killed by its
/// shim's watchdog and recorded OOMKilled (exit 137, in `exit.json` too); its neighbour runs on.
#[tokio::test]
async fn shim_kills_a_joined_container_over_its_limit() {
    if !ready() {
        return;
    }
    let e = pod_env("joined", RuntimeKind::Gvisor, 209, 1);
    let plan = planned(serde_json::json!({
        "metadata": {"name": "pair", "namespace": "test", "uid": "joined-oom",
                     "annotations": {"CapacityProvisioned": "0.5vCPU 1GB"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "hog", "image": e.image, "command": ["sh", "-c",
                    "sleep 1; head -c 209715200 /dev/zero | /bin/busybox tail | sleep 600"],
                 "resources": {"limits": {"memory": "64Mi"}}},
                {"name": "peer", "image": e.image, "command": ["sleep", "600"],
                 "resources": {"limits": {"memory": "128Mi"}}},
            ]
        }
    }));
    let mut runs = launch_all(&e, &plan).await;
    let peer_run = runs.pop().unwrap();
    let hog_run = runs.pop().unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(60), hog_run.wait())
        .await
        .expect("the hog ends")
        .unwrap();
    assert_eq!((exit.code, exit.oom_killed), (137, true), "{exit:?}");
    let hog_dir = sandbox::container::dir(&e.data, &pod::container_id(&plan.id, "hog"));
    let rec = sandbox::shim::read_exit(&hog_dir).unwrap();
    assert_eq!((rec.exit_code, rec.reason.as_str()), (137, "OOMKilled"));
    let peer = pod::container_id(&plan.id, "peer");
    assert_eq!(
        e.rt.status(&peer).await.unwrap().as_deref(),
        Some("running")
    );
    e.rt.kill(&peer, 9).await.unwrap();
    let exit = peer_run.wait().await.unwrap();
    assert!(!exit.oom_killed, "{exit:?}");
    pod::remove(&e.host, e.rt.as_ref(), &plan).await.unwrap();
    e.network.destroy().await.unwrap();
}

/// Under shims, as the agent does it (start, wait for the end, start again at once): a joined
/// container is started again under the same runsc id at the first attempt, after it ended by
/// itself and after it was killed.
#[tokio::test]
async fn shim_restarts_a_joined_container_at_first_attempt() {
    if !ready() {
        return;
    }
    let e = pod_env("joined", RuntimeKind::Gvisor, 209, 2);
    let plan = planned(serde_json::json!({
        "metadata": {"name": "again", "namespace": "test", "uid": "joined-again"},
        "spec": {
            "restartPolicy": "Always",
            "containers": [
                {"name": "short", "image": e.image, "command": ["sh", "-c",
                    "echo run; sleep 100 & sleep 0.3; exit 3"]},
                {"name": "long", "image": e.image, "command": ["sleep", "600"]}
            ]
        }
    }));
    let (sb, images) = prepared(&e, &plan).await;
    let (short, long) = (&plan.containers[0], &plan.containers[1]);
    let long_run = sb.launch(long, &images[&long.image], 0).await.unwrap();
    let short_id = pod::container_id(&plan.id, &short.name);
    for n in 0..4u32 {
        let started = sb
            .launch(short, &images[&short.image], n)
            .await
            .unwrap_or_else(|err| panic!("start #{n} of a joined container failed: {err:?}"));
        let killed = n % 2 == 1;
        if killed {
            e.rt.kill(&short_id, 9).await.unwrap();
        }
        let exit = started.wait().await.unwrap();
        assert_eq!(
            exit.code,
            if killed { 137 } else { 3 },
            "run #{n}: {exit:?}"
        );
    }
    e.rt.kill(&pod::container_id(&plan.id, &long.name), 9)
        .await
        .unwrap();
    let _ = long_run.wait().await;
    pod::remove(&e.host, e.rt.as_ref(), &plan).await.unwrap();
    e.network.destroy().await.unwrap();
}

/// Under shims: a container spinning past its `limits.cpu` is held to it by its shim's
/// watchdog, which stops and continues it. A shim killed with -9 meanwhile leaves the container
/// running, not stopped: the monitor in the sandbox continues it when its stdin ends.
#[tokio::test]
async fn shim_holds_a_joined_container_to_its_cpu_limit() {
    if !ready() {
        return;
    }
    let e = pod_env("joined", RuntimeKind::Gvisor, 209, 3);
    let plan = planned(serde_json::json!({
        "metadata": {"name": "spin", "namespace": "test", "uid": "joined-cpu",
                     "annotations": {"CapacityProvisioned": "1vCPU 2GB"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                // Ends by itself, should the test fail before it removes the pod.
                {"name": "capped", "image": e.image, "command": ["sh", "-c",
                    "(while :; do :; done) & sleep 90; kill $!"],
                 "resources": {"limits": {"cpu": "200m"}}},
                {"name": "peer", "image": e.image, "command": ["sleep", "600"]},
            ]
        }
    }));
    let runs = launch_all(&e, &plan).await;
    let capped = pod::container_id(&plan.id, "capped");
    let rate = |secs: u64| {
        let (rt, id) = (e.rt.clone(), capped.clone());
        async move {
            let t0 = std::time::Instant::now();
            let before = cpu_seconds(rt.as_ref(), &id).await;
            tokio::time::sleep(Duration::from_secs(secs)).await;
            (cpu_seconds(rt.as_ref(), &id).await - before) / t0.elapsed().as_secs_f64()
        }
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = rate(6).await;
    eprintln!("under its shim: {held:.3} cores");
    assert!(
        (0.03..=0.3).contains(&held),
        "the 200m container used {held:.3} cores"
    );

    let shim = runs[0].shim_pid().expect("the container runs under a shim");
    let shim = rustix::process::Pid::from_raw(shim as i32).unwrap();
    rustix::process::kill_process(shim, rustix::process::Signal::KILL).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let free = rate(4).await;
    eprintln!("its shim gone: {free:.3} cores");
    assert!(free > 0.4, "left stopped or throttled: {free:.3} cores");

    drop(runs);
    pod::remove(&e.host, e.rt.as_ref(), &plan).await.unwrap();
    e.network.destroy().await.unwrap();
}
