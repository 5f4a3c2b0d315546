//! Pod-level limits with the real runtimes: a gVisor pod's whole sandbox is confined to the
//! pod's size (CPU quota and memory, measured from the sandbox's cgroup), and ephemeral storage
//! is measured per container and per pod (`pod::storage_usage`) for gVisor and crun.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use sandbox::plan::PodPlan;
use sandbox::pod::{self, VolumeFiles};
use sandbox::runtime::RuntimeKind;

type Env = PodEnv;

fn env(kind: RuntimeKind, octet: u8) -> Env {
    pod_env("limits", kind, 207, octet)
}

fn log_of(data: &Path, id: &str) -> String {
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

async fn wait_for_log(data: &Path, id: &str, needle: &str) -> String {
    for _ in 0..400 {
        let l = log_of(data, id);
        if l.contains(needle) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{id} never logged {needle:?}: {}", log_of(data, id));
}

/// A hierarchy's file of the pod's sandbox cgroup.
fn cgroup_file(controller: &str, cgroup: &str, file: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup")
        .join(controller)
        .join(cgroup.trim_start_matches('/'))
        .join(file)
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

/// Every process in `cgroup` (of the cpu hierarchy) and its child cgroups: their command lines.
fn processes_in(cgroup: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![cgroup_file("cpu", cgroup, "")];
    while let Some(d) = dirs.pop() {
        for pid in std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out.push(String::from_utf8_lossy(&cmd).replace('\0', " "));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            dirs.extend(
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

fn planned(json: serde_json::Value) -> PodPlan {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json).unwrap();
    sandbox::plan::plan(&pod).unwrap()
}

/// A gVisor pod of the smallest size (0.25 vCPU / 0.5 GB): a busy loop gets about a quarter
/// of a core, measured from the sandbox's cgroup over 2 s; allocating past 0.5 GB fails.
#[tokio::test]
async fn gvisor_sandbox_is_confined_to_the_pod_size() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    let e = env(RuntimeKind::Gvisor, 1);
    let plan = planned(serde_json::json!({
        "metadata": {"name": "small", "namespace": "test", "uid": "limits-cpu",
                     "annotations": {"CapacityProvisioned": "0.25vCPU 0.5GB"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "spin", "image": e.image, "command": ["sh", "-c",
                    "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo; echo spinning; while :; do :; done"]},
                {"name": "small", "image": e.image, "command": ["sleep", "600"],
                 "resources": {"limits": {"memory": "64Mi"}}},
            ]
        }
    }));
    assert_eq!(
        plan.size,
        Some(sandbox::plan::PodSize {
            cpu_millis: 250,
            memory_bytes: 512 << 20
        })
    );
    let run = pod::start(&e.host, e.rt.clone(), &plan, &VolumeFiles::new())
        .await
        .unwrap();
    let spin = pod::container_id(&plan.id, "spin");
    let log = wait_for_log(&e.data, &spin, "spinning").await;
    // The sentry is sized from the cgroup: 512 MiB of memory.
    assert!(log.contains("MemTotal:         524288 kB"), "{log}");

    let cg = pod::sandbox_cgroup(&e.data, &plan.id);
    assert_eq!(
        read_u64(&cgroup_file("cpu", &cg, "cpu.cfs_quota_us")),
        25_000
    );
    assert_eq!(
        read_u64(&cgroup_file("cpu", &cg, "cpu.cfs_period_us")),
        100_000
    );
    assert_eq!(
        read_u64(&cgroup_file("memory", &cg, "memory.limit_in_bytes")),
        512 << 20
    );
    // The whole sandbox is in there: the sentry and the gofers.
    let procs = processes_in(&cg);
    assert!(
        procs
            .iter()
            .any(|p| p.contains("runsc") && p.contains("boot")),
        "sentry not in the pod cgroup: {procs:?}"
    );
    assert!(
        procs
            .iter()
            .filter(|p| p.contains("runsc") && p.contains("gofer"))
            .count()
            >= 2,
        "gofers of the pause and of the container in the pod cgroup: {procs:?}"
    );

    // CPU: over 2 s a busy loop gets about 0.5 s (a quarter of a core), never a whole core.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let usage = cgroup_file("cpuacct", &cg, "cpuacct.usage");
    let (t0, u0) = (Instant::now(), read_u64(&usage));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (dt, du) = (t0.elapsed().as_secs_f64(), read_u64(&usage) - u0);
    let cores = du as f64 / 1e9 / dt;
    eprintln!("gVisor pod of 0.25 vCPU used {cores:.3} cores over {dt:.2} s");
    assert!(
        (0.15..=0.32).contains(&cores),
        "busy loop used {cores:.3} cores, want about 0.25"
    );

    // A container's own memory limit inside the sandbox: held by the memory watchdog
    // (`sandbox::limitwatch`), which may or may not catch a buffer this short-lived
    // (informational; `gvisor_joined_container_over_its_limit_is_oom_killed` asserts it).
    let out = run
        .exec(
            "small",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/dev/null bs=128M count=1; echo dd-exit=$?",
            ]
            .map(String::from),
        )
        .await;
    eprintln!("128 MiB in a container limited to 64Mi inside the pod: {out:?}");

    // Memory: a container that allocates 600 MiB in a 512 MiB pod does not get it.
    let hog = pod::container_id(&plan.id, "spin");
    let out = run
        .exec(
            "spin",
            &[
                "sh",
                "-c",
                "dd if=/dev/zero of=/dev/null bs=600M count=1; echo dd-exit=$?",
            ]
            .map(String::from),
        )
        .await;
    eprintln!("allocation past the pod size: {out:?}");
    let allocated = match &out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).contains("dd-exit=0") && o.status.success(),
        Err(_) => false,
    };
    assert!(!allocated, "600 MiB allocated in a 512 MiB pod: {out:?}");
    // The kernel may charge a few pages past the limit while it reclaims or kills
    // (seen: limit + 4 KiB); anything near 600 MiB would mean no confinement.
    let peak = read_u64(&cgroup_file("memory", &cg, "memory.max_usage_in_bytes"));
    assert!(
        peak <= (512 << 20) + (1 << 20),
        "sandbox peak {peak} past its limit"
    );
    eprintln!(
        "hog log: {}; sandbox peak memory {} MiB",
        log_of(&e.data, &hog),
        peak >> 20
    );

    run.stop(Duration::from_secs(1)).await;
    let _ = run.wait().await;
    pod::remove(&e.host, e.rt.as_ref(), &plan).await.unwrap();
    assert!(
        !cgroup_file("cpu", &cg, "").exists(),
        "the pod cgroup is removed with the pod"
    );
    e.network.destroy().await.unwrap();
}

/// A gVisor pod with one container is its own sandbox (no pause container): the sandbox lives
/// in the pod's cgroup, limited to the container's memory limit (below the pod's size) and the
/// pod's CPU; exec works; going over the limit ends the container as OOMKilled (exit 137).
#[tokio::test]
async fn gvisor_solo_pod_is_one_sandbox_and_reports_oom() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    let e = env(RuntimeKind::Gvisor, 4);
    let plan = planned(serde_json::json!({
        "metadata": {"name": "solo", "namespace": "test", "uid": "limits-solo",
                     "annotations": {"CapacityProvisioned": "0.25vCPU 0.5GB"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "only", "image": e.image, "command": ["sh", "-c",
                    "grep MemTotal /proc/meminfo; echo up; sleep 600"],
                 "resources": {"limits": {"memory": "96Mi"}}},
            ]
        }
    }));
    assert!(pod::solo(&plan, RuntimeKind::Gvisor));
    assert!(!pod::solo(&plan, RuntimeKind::Container));
    let run = pod::start(&e.host, e.rt.clone(), &plan, &VolumeFiles::new())
        .await
        .unwrap();
    let id = pod::container_id(&plan.id, "only");
    let log = wait_for_log(&e.data, &id, "up").await;
    // The sentry is sized by the container's limit, the smaller of the two.
    assert!(log.contains("MemTotal:          98304 kB"), "{log}");
    assert!(
        !sandbox::container::dir(&e.data, &pod::pause_id(&plan.id)).exists(),
        "a solo pod has no pause container"
    );
    let cg = pod::sandbox_cgroup(&e.data, &plan.id);
    assert_eq!(
        read_u64(&cgroup_file("memory", &cg, "memory.limit_in_bytes")),
        96 << 20
    );
    assert_eq!(
        read_u64(&cgroup_file("cpu", &cg, "cpu.cfs_quota_us")),
        25_000
    );
    let procs = processes_in(&cg);
    assert!(
        procs
            .iter()
            .any(|p| p.contains("runsc") && p.contains("boot")),
        "sentry not in the pod cgroup: {procs:?}"
    );
    assert_eq!(
        procs
            .iter()
            .filter(|p| p.contains("runsc") && p.contains("gofer"))
            .count(),
        1,
        "one gofer: {procs:?}"
    );
    let out = run.exec("only", &["hostname".to_owned()]).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "solo");

    // 200 MiB in one buffer: over the 96 MiB limit.
    let dd = ["dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1"].map(String::from);
    let _ = tokio::time::timeout(Duration::from_secs(30), run.exec("only", &dd)).await;
    let (exits, _) = tokio::time::timeout(Duration::from_secs(30), run.wait())
        .await
        .expect("the container ends when its sandbox goes over its limit")
        .unwrap();
    let (name, exit) = &exits[0];
    assert_eq!(name, "only");
    assert_eq!(exit.code, 137, "{exit:?}");
    assert!(exit.oom_killed, "{exit:?}");
    pod::remove(&e.host, e.rt.as_ref(), &plan).await.unwrap();
    assert!(
        !cgroup_file("memory", &cg, "").exists(),
        "the pod cgroup is removed with the pod"
    );
    e.network.destroy().await.unwrap();
}

/// The sandbox's memory cgroup's `oom_kill` counter (cgroup v1 `memory.oom_control`).
fn oom_kills(cgroup: &str) -> u64 {
    std::fs::read_to_string(cgroup_file("memory", cgroup, "memory.oom_control"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

/// A gVisor pod with several containers (one sandbox) and no container limits: a container
/// that takes more than the pod's size makes the host kernel OOM-kill the sandbox (its cgroup
/// is limited to the pod's size), and every container ends with it. Each is reported the way
/// kubelet reports a container killed because its pod ran out of memory: OOMKilled, exit 137.
#[tokio::test]
async fn gvisor_pod_over_its_size_reports_oom_killed() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    pod_over_its_size("full", 7).await;
}

/// The same with the containers under shims (as the agent runs them): the shim records the
/// end runsc could not tell, the pod's sandbox OOM kill corrects it.
#[tokio::test]
async fn gvisor_pod_over_its_size_reports_oom_killed_under_shims() {
    const SHIMMED: &str = "NODELESS_TEST_LIMITS_SHIMMED";
    const NAME: &str = "gvisor_pod_over_its_size_reports_oom_killed_under_shims";
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    if std::env::var_os(SHIMMED).is_none() {
        // The shim is set once per process, for every test in it: this one runs alone.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
            .env(SHIMMED, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
        eprintln!("{text}");
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        return;
    }
    if !common::use_shim() {
        return;
    }
    pod_over_its_size("fuller", 8).await;
}

async fn pod_over_its_size(name: &str, octet: u8) {
    let e = env(RuntimeKind::Gvisor, octet);
    let plan = planned(serde_json::json!({
        "metadata": {"name": name, "namespace": "test", "uid": format!("limits-pod-oom-{name}"),
                     "annotations": {"CapacityProvisioned": "0.25vCPU 0.5GB"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                // One 600 MiB buffer in a 512 MiB pod, no limit of its own.
                {"name": "hog", "image": e.image, "command": ["sh", "-c",
                    "echo up; sleep 1; dd if=/dev/zero of=/dev/null bs=600M count=1; echo dd-exit=$?"]},
                {"name": "peer", "image": e.image, "command": ["sh", "-c", "echo up; sleep 600"]},
            ]
        }
    }));
    assert!(!pod::solo(&plan, RuntimeKind::Gvisor));
    let run = pod::start(&e.host, e.rt.clone(), &plan, &VolumeFiles::new())
        .await
        .unwrap();
    let (hog, peer) = (
        pod::container_id(&plan.id, "hog"),
        pod::container_id(&plan.id, "peer"),
    );
    wait_for_log(&e.data, &hog, "up").await;
    wait_for_log(&e.data, &peer, "up").await;
    let cg = pod::sandbox_cgroup(&e.data, &plan.id);
    let kills_before = oom_kills(&cg);
    let t0 = Instant::now();
    // The pod's cgroup goes when its last container is released: its counter is watched
    // while the pod runs.
    let waiting = tokio::spawn(run.wait());
    let mut kills_after = kills_before;
    while !waiting.is_finished() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the pod ends when its sandbox goes over the pod's size"
        );
        kills_after = kills_after.max(oom_kills(&cg));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (exits, _) = waiting.await.unwrap().unwrap();
    eprintln!(
        "pod ended {:.1} s after its containers ran; sandbox oom_kill {kills_before} -> \
         {kills_after}; exits {exits:?}; hog log {:?}",
        t0.elapsed().as_secs_f64(),
        log_of(&e.data, &hog),
    );
    assert!(
        kills_after > kills_before,
        "the host kernel OOM-killed in the sandbox's cgroup"
    );
    assert!(
        !log_of(&e.data, &hog).contains("dd-exit"),
        "the hog outlived its allocation"
    );
    // Both ended with the sandbox: both are reported as kubelet reports a container killed
    // because its pod ran out of memory, in the pod's wait and in their recorded state.
    assert_eq!(exits.len(), 2, "{exits:?}");
    for (name, exit) in &exits {
        assert_eq!(
            (exit.code, exit.oom_killed),
            (137, true),
            "{name}: {exit:?}"
        );
    }
    for id in [&hog, &peer] {
        let status = sandbox::container::read_state(&e.data, id).map(|s| s.status);
        let Some(sandbox::container::Status::Terminated {
            exit_code, reason, ..
        }) = &status
        else {
            panic!("{id}: {status:?}")
        };
        assert_eq!((*exit_code, reason.as_str()), (137, "OOMKilled"), "{id}");
    }
    pod::remove(&e.host, e.rt.as_ref(), &plan).await.unwrap();
    e.network.destroy().await.unwrap();
}

/// The state of container `id` once it has ended (at most `within`).
async fn terminated(data: &Path, id: &str, within: Duration) -> sandbox::container::Status {
    let deadline = Instant::now() + within;
    loop {
        let status = sandbox::container::read_state(data, id).map(|s| s.status);
        if let Some(s @ sandbox::container::Status::Terminated { .. }) = status {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{id} still not ended after {within:?}: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// In a gVisor pod with several containers (one sandbox, a pause container the others join),
/// a container's own memory limit holds: one limited to 64Mi that takes and keeps 200 MiB
/// is killed and reported OOMKilled (exit 137), while the other container keeps running and
/// answers, and the pod's sandbox stays.
#[tokio::test]
async fn gvisor_joined_container_over_its_limit_is_oom_killed() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    let e = env(RuntimeKind::Gvisor, 5);
    let plan = planned(serde_json::json!({
        "metadata": {"name": "pair", "namespace": "test", "uid": "limits-joined-oom",
                     "annotations": {"CapacityProvisioned": "0.5vCPU 1GB"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                // `tail` keeps its whole input (no newline in it) and then blocks writing
                // into a pipe nobody reads: 200 MiB held.
                {"name": "hog", "image": e.image, "command": ["sh", "-c",
                    "echo up; sleep 1; head -c 209715200 /dev/zero | /bin/busybox tail | sleep 600"],
                 "resources": {"limits": {"memory": "64Mi"}}},
                {"name": "peer", "image": e.image, "command": ["sh", "-c", "echo up; sleep 600"],
                 "resources": {"limits": {"memory": "128Mi"}}},
            ]
        }
    }));
    assert!(!pod::solo(&plan, RuntimeKind::Gvisor));
    let mut run = pod::start(&e.host, e.rt.clone(), &plan, &VolumeFiles::new())
        .await
        .unwrap();
    let (hog, peer) = (
        pod::container_id(&plan.id, "hog"),
        pod::container_id(&plan.id, "peer"),
    );
    wait_for_log(&e.data, &peer, "up").await;
    let t0 = Instant::now();
    let status = terminated(&e.data, &hog, Duration::from_secs(60)).await;
    eprintln!(
        "hog ended {:.1} s after the peer ran: {status:?}",
        t0.elapsed().as_secs_f64()
    );
    let sandbox::container::Status::Terminated {
        exit_code, reason, ..
    } = &status
    else {
        unreachable!()
    };
    assert_eq!((*exit_code, reason.as_str()), (137, "OOMKilled"));

    // The other container and the sandbox live on.
    let out = run
        .exec("peer", &["sh", "-c", "echo alive"].map(String::from))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "alive");
    assert_eq!(
        e.rt.status(&peer).await.unwrap().as_deref(),
        Some("running")
    );
    assert_eq!(
        e.rt.status(&pod::pause_id(&plan.id))
            .await
            .unwrap()
            .as_deref(),
        Some("running")
    );
    // The peer, under its own limit, is left alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(matches!(
        sandbox::container::read_state(&e.data, &peer).map(|s| s.status),
        Some(sandbox::container::Status::Running { .. })
    ));

    // A restart of the killed container runs again in the same sandbox.
    let previous = run.restart("hog", Duration::from_secs(1)).await.unwrap();
    assert_eq!((previous.code, previous.oom_killed), (137, true));

    run.stop(Duration::from_secs(1)).await;
    let (exits, _) = run.wait().await.unwrap();
    for (name, exit) in &exits {
        assert!(!exit.oom_killed || name == "hog", "{name}: {exit:?}");
    }
    pod::remove(&e.host, e.rt.as_ref(), &plan).await.unwrap();
    e.network.destroy().await.unwrap();
}

/// A container with `ephemeral-storage: 10Mi` that writes 20 MiB into its root filesystem,
/// beside a container writing into an emptyDir: `storage_usage` sees each.
async fn storage_suite(kind: RuntimeKind, octet: u8) {
    let e = env(kind, octet);
    let plan = planned(serde_json::json!({
        "metadata": {"name": "disk", "namespace": "test", "uid": format!("limits-disk-{kind}")},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "writer", "image": e.image,
                 "resources": {"limits": {"ephemeral-storage": "10Mi"}},
                 "command": ["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=20 && sync && echo written; sleep 600"]},
                {"name": "scratch", "image": e.image,
                 "command": ["sh", "-c", "dd if=/dev/zero of=/scratch/f bs=1M count=3 && sync && echo written; sleep 600"],
                 "volumeMounts": [{"name": "s", "mountPath": "/scratch"}]},
            ],
            "volumes": [{"name": "s", "emptyDir": {}}]
        }
    }));
    assert_eq!(plan.containers[0].ephemeral_storage_limit, Some(10 << 20));
    let run = pod::start(&e.host, e.rt.clone(), &plan, &VolumeFiles::new())
        .await
        .unwrap();
    for c in ["writer", "scratch"] {
        wait_for_log(&e.data, &pod::container_id(&plan.id, c), "written").await;
    }
    let mut usage = pod::storage_usage(&e.host, &plan);
    for _ in 0..100 {
        if usage.containers["writer"] >= 20 << 20 && usage.volumes["s"] >= 3 << 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        usage = pod::storage_usage(&e.host, &plan);
    }
    eprintln!("{kind}: {usage:?}");
    let writer = usage.containers["writer"];
    assert!(
        writer >= 20 << 20 && writer > plan.containers[0].ephemeral_storage_limit.unwrap(),
        "{kind}: writer uses {writer}, over its 10Mi limit"
    );
    assert!(writer < 24 << 20, "{kind}: writer counted {writer}");
    assert!(
        usage.containers["scratch"] < 1 << 20,
        "{kind}: the emptyDir is not the container's: {usage:?}"
    );
    assert!(
        (3 << 20..4 << 20).contains(&usage.volumes["s"]),
        "{kind}: {usage:?}"
    );
    assert_eq!(
        usage.total,
        usage.containers.values().sum::<u64>() + usage.volumes.values().sum::<u64>()
    );
    run.stop(Duration::from_secs(1)).await;
    let _ = run.wait().await;
    pod::remove(&e.host, e.rt.as_ref(), &plan).await.unwrap();
    assert_eq!(pod::storage_usage(&e.host, &plan).total, 0);
    e.network.destroy().await.unwrap();
}

#[tokio::test]
async fn gvisor_ephemeral_storage_is_measured() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    storage_suite(RuntimeKind::Gvisor, 2).await;
}

#[tokio::test]
async fn crun_ephemeral_storage_is_measured() {
    if !common::has(RuntimeKind::Container) {
        eprintln!("SKIPPED: crun is not installed (apt-get install crun)");
        return;
    }
    storage_suite(RuntimeKind::Container, 3).await;
}

/// In a pod's shared gVisor sandbox, a container's `limits.cpu` holds: two spinning
/// containers in a 1-vCPU pod, one limited to 250m, the other unlimited. runsc alone would
/// share the core between them; the watchdog keeps the limited one near a quarter of a core.
#[tokio::test]
async fn gvisor_joined_container_over_its_cpu_limit_is_throttled() {
    if !common::has(RuntimeKind::Gvisor) {
        eprintln!("SKIPPED: runsc is not installed (apt-get install runsc)");
        return;
    }
    let e = env(RuntimeKind::Gvisor, 6);
    let spin = |name: &str, limits: serde_json::Value| {
        serde_json::json!({"name": name, "image": e.image,
            // A spinner that ends by itself, should the test fail before it stops the pod.
            "command": ["sh", "-c", "(while :; do :; done) & echo up; sleep 90; kill $!"],
            "resources": {"limits": limits}})
    };
    let plan = planned(serde_json::json!({
        "metadata": {"name": "spinners", "namespace": "test", "uid": "limits-joined-cpu",
                     "annotations": {"CapacityProvisioned": "1vCPU 2GB"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                spin("capped", serde_json::json!({"cpu": "250m"})),
                spin("free", serde_json::json!({})),
            ]
        }
    }));
    assert!(!pod::solo(&plan, RuntimeKind::Gvisor));
    let run = pod::start(&e.host, e.rt.clone(), &plan, &VolumeFiles::new())
        .await
        .unwrap();
    for name in ["capped", "free"] {
        wait_for_log(&e.data, &pod::container_id(&plan.id, name), "up").await;
    }
    // Let the watchdog settle, then measure both over the same window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let ids = ["capped", "free"].map(|n| pod::container_id(&plan.id, n));
    let (capped0, free0) = (
        cpu_seconds(e.rt.as_ref(), &ids[0]).await,
        cpu_seconds(e.rt.as_ref(), &ids[1]).await,
    );
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (capped1, free1) = (
        cpu_seconds(e.rt.as_ref(), &ids[0]).await,
        cpu_seconds(e.rt.as_ref(), &ids[1]).await,
    );
    let secs = t0.elapsed().as_secs_f64();
    let (capped, free) = ((capped1 - capped0) / secs, (free1 - free0) / secs);
    eprintln!("over {secs:.1} s: capped used {capped:.3} cores, free {free:.3}");
    assert!(capped <= 0.35, "the 250m container used {capped:.3} cores");
    assert!(
        capped >= 0.05,
        "the 250m container hardly ran: {capped:.3} cores"
    );
    assert!(free > capped, "free {free:.3} <= capped {capped:.3}");
    // Both still run (a stopped container is continued, not ended).
    for id in &ids {
        assert_eq!(e.rt.status(id).await.unwrap().as_deref(), Some("running"));
    }

    run.stop(Duration::from_secs(1)).await;
    run.wait().await.unwrap();
    pod::remove(&e.host, e.rt.as_ref(), &plan).await.unwrap();
    e.network.destroy().await.unwrap();
}
