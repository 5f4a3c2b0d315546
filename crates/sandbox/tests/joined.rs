//! Containers joined to a gVisor pod's sandbox, run under their shims (as the agent runs
//! them): the memory watchdog of a container's own limit lives in its shim, and a container
//! that ended is started again under the same runsc id at the first attempt.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use sandbox::pod::{self, VolumeFiles};
use sandbox::runtime::{self, RuntimeKind};

fn ready() -> bool {
    if !runtime::available().contains(&RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return false;
    }
    use_shim()
}

fn planned(json: serde_json::Value) -> sandbox::plan::PodPlan {
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
    let images = pod::pull_images(&e.host, &plan).await.unwrap();
    let sb = pod::prepare(
        &e.host,
        e.rt.clone(),
        &plan,
        &VolumeFiles::new(),
        &Default::default(),
    )
    .await
    .unwrap();
    let mut runs = Vec::new();
    for c in &plan.containers {
        let s = sb.launch(c, &images[&c.image], 0).await.unwrap();
        assert!(s.shim_pid().is_some(), "{} runs under a shim", c.name);
        runs.push(s);
    }
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
    let images = pod::pull_images(&e.host, &plan).await.unwrap();
    let sb = pod::prepare(
        &e.host,
        e.rt.clone(),
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
