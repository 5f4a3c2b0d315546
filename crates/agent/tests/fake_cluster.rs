//! The scheduler and the agent with the fake runtime, in process, against the in-process API
//! server: pods get scheduled, bound and Running; unschedulable pods say why; taints keep pods
//! off nodes; graceful deletion completes; Jobs' pods complete.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use agent::node::NodeSpec;
use agent::runtime::Fake;
use apiserver::testing::TestServer;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

struct Cluster {
    _ts: TestServer,
    client: kube::Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn cluster(nodes: u32) -> Cluster {
    let ts = TestServer::start().await;
    let cfg = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&ts.kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();
    let runtime = Arc::new(Fake::new());
    let specs: Vec<NodeSpec> = (0..nodes)
        .map(|i| {
            let mut n = NodeSpec::fake(&format!("fake-{i}"), i, "fake://test");
            n.cpu = "4".into();
            n
        })
        .collect();
    let mut tasks = Vec::new();
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let r = agent::run(c, runtime, agent::Config::new(specs)).await;
        panic!("agent stopped: {r:?}");
    }));
    let c = client.clone();
    tasks.push(tokio::spawn(async move {
        let r = controllers::scheduler::run(c, Default::default()).await;
        panic!("scheduler stopped: {r:?}");
    }));
    let nodes_api: Api<Node> = Api::all(client.clone());
    wait_for("nodes registered", || async {
        nodes_api
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
            == nodes as usize
    })
    .await;
    Cluster {
        _ts: ts,
        client,
        tasks,
    }
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn pod(name: &str, extra: serde_json::Value) -> Pod {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27",
            "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}}}]}
    });
    merge(&mut p, &extra);
    serde_json::from_value(p).unwrap()
}

fn merge(a: &mut serde_json::Value, b: &serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn condition<'a>(p: &'a Pod, t: &str) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_scheduled_bound_and_running() {
    let c = cluster(3).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    for i in 0..6 {
        pods.create(&PostParams::default(), &pod(&format!("web-{i}"), json!({})))
            .await
            .unwrap();
    }
    wait_for("6 pods Running and Ready", || async {
        let l = pods.list(&ListParams::default()).await.unwrap();
        l.items
            .iter()
            .filter(|p| {
                phase(p) == "Running" && condition(p, "Ready").is_some_and(|c| c.status == "True")
            })
            .count()
            == 6
    })
    .await;
    let l = pods.list(&ListParams::default()).await.unwrap();
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for p in &l.items {
        let node = p.spec.as_ref().unwrap().node_name.clone().unwrap();
        *per_node.entry(node.clone()).or_default() += 1;
        let st = p.status.as_ref().unwrap();
        let ip = st.pod_ip.as_deref().unwrap();
        let idx: u32 = node.trim_start_matches("fake-").parse().unwrap();
        assert!(
            ip.starts_with(&format!("10.244.{idx}.")),
            "pod IP {ip} on {node}"
        );
        assert!(st.host_ip.as_deref().unwrap().starts_with("10.250."));
        assert!(st.start_time.is_some());
        assert_eq!(st.qos_class.as_deref(), Some("Burstable"), "qosClass kept");
        let cs = &st.container_statuses.as_ref().unwrap()[0];
        assert!(cs.ready && cs.started == Some(true));
        assert!(cs.container_id.as_deref().unwrap().starts_with("fake://"));
        assert!(
            cs.state
                .as_ref()
                .unwrap()
                .running
                .as_ref()
                .unwrap()
                .started_at
                .is_some()
        );
        for t in [
            "PodReadyToStartContainers",
            "Initialized",
            "ContainersReady",
            "PodScheduled",
        ] {
            assert_eq!(
                condition(p, t).map(|c| c.status.as_str()),
                Some("True"),
                "{t}"
            );
        }
    }
    // 4 cpu nodes, 500m pods: least allocated spreads them 2/2/2.
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2]
    );
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    wait_for("Scheduled events", || async {
        let l = events.list(&ListParams::default()).await.unwrap();
        l.items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Scheduled"))
            .count()
            == 6
    })
    .await;
    let l = events.list(&ListParams::default()).await.unwrap();
    let e = l
        .items
        .iter()
        .find(|e| {
            e.involved_object.name.as_deref() == Some("web-0")
                && e.reason.as_deref() == Some("Scheduled")
        })
        .unwrap();
    let node = pods
        .get("web-0")
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .unwrap();
    assert_eq!(
        e.message.as_deref(),
        Some(format!("Successfully assigned default/web-0 to {node}").as_str())
    );
    assert_eq!(
        e.source.as_ref().unwrap().component.as_deref(),
        Some("default-scheduler")
    );
    // Leases and node status.
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    wait_for("leases", || async {
        leases
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len()
            == 3
    })
    .await;
    let l = leases.get("fake-1").await.unwrap();
    let spec = l.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("fake-1"));
    assert_eq!(spec.lease_duration_seconds, Some(40));
    assert!(spec.renew_time.is_some());
    let n: Node = Api::<Node>::all(c.client.clone())
        .get("fake-1")
        .await
        .unwrap();
    let st = n.status.unwrap();
    assert_eq!(st.node_info.unwrap().kubelet_version, "v1.33.0-nodeless");
    assert!(
        st.conditions
            .unwrap()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );
    assert_eq!(
        n.metadata
            .labels
            .unwrap()
            .get("kubernetes.io/os")
            .map(String::as_str),
        Some("linux")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmatched_node_selector_stays_pending_with_the_event() {
    let c = cluster(3).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &pod("picky", json!({"spec": {"nodeSelector": {"disk": "ssd"}}})),
    )
    .await
    .unwrap();
    let want = "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. \
                preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling..";
    wait_for("PodScheduled=False", || async {
        let p = pods.get("picky").await.unwrap();
        condition(&p, "PodScheduled").is_some_and(|c| {
            c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
                && c.message.as_deref() == Some(want)
        })
    })
    .await;
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    wait_for("FailedScheduling event", || async {
        let l = events.list(&ListParams::default()).await.unwrap();
        l.items.iter().any(|e| {
            e.reason.as_deref() == Some("FailedScheduling")
                && e.type_.as_deref() == Some("Warning")
                && e.message.as_deref() == Some(want)
                && e.involved_object.name.as_deref() == Some("picky")
        })
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let p = pods.get("picky").await.unwrap();
    assert_eq!(phase(&p), "Pending");
    assert!(p.spec.unwrap().node_name.is_none());
    // A node gets the label: the pod is retried and lands there.
    let nodes: Api<Node> = Api::all(c.client.clone());
    nodes
        .patch(
            "fake-2",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"disk": "ssd"}}})),
        )
        .await
        .unwrap();
    wait_for("the pod Running on fake-2", || async {
        let p = pods.get("picky").await.unwrap();
        phase(&p) == "Running" && p.spec.as_ref().unwrap().node_name.as_deref() == Some("fake-2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taints_keep_pods_off_nodes() {
    let c = cluster(3).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    for n in ["fake-0", "fake-1"] {
        nodes
            .patch(
                n,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": [{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]}})),
            )
            .await
            .unwrap();
    }
    // Let the scheduler see the taints before the pods come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let small = json!({"spec": {"containers": [{"name": "c", "image": "nginx", "resources": {"requests": {"cpu": "100m"}}}]}});
    for i in 0..5 {
        pods.create(
            &PostParams::default(),
            &pod(&format!("t-{i}"), small.clone()),
        )
        .await
        .unwrap();
    }
    let mut tolerating = small.clone();
    merge(
        &mut tolerating,
        &json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "fake-0"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}]}}),
    );
    pods.create(&PostParams::default(), &pod("db", tolerating))
        .await
        .unwrap();
    wait_for("6 pods Running", || async {
        pods.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .filter(|p| phase(p) == "Running")
            .count()
            == 6
    })
    .await;
    for p in pods.list(&ListParams::default()).await.unwrap().items {
        let name = p.metadata.name.clone().unwrap();
        let node = p.spec.unwrap().node_name.unwrap();
        if name == "db" {
            assert_eq!(node, "fake-0");
        } else {
            assert_eq!(node, "fake-2", "{name} must avoid the tainted nodes");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_deletion_completes_and_jobs_pods_finish() {
    let c = cluster(1).await;
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    pods.create(&PostParams::default(), &pod("long", json!({})))
        .await
        .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("job-ok", json!({"metadata": {"annotations": {"nodeless.io/fake-duration": "1s"}}, "spec": {"restartPolicy": "Never"}})),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("job-bad", json!({"metadata": {"annotations": {"nodeless.io/fake-duration": "500ms", "nodeless.io/fake-exit-code": "3"}},
            "spec": {"restartPolicy": "Never"}})),
    )
    .await
    .unwrap();
    wait_for("long Running", || async {
        phase(&pods.get("long").await.unwrap()) == "Running"
    })
    .await;
    wait_for("job-ok Succeeded", || async {
        phase(&pods.get("job-ok").await.unwrap()) == "Succeeded"
    })
    .await;
    wait_for("job-bad Failed", || async {
        phase(&pods.get("job-bad").await.unwrap()) == "Failed"
    })
    .await;
    let ok = pods.get("job-ok").await.unwrap();
    let st = ok.status.as_ref().unwrap();
    let term = st.container_statuses.as_ref().unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(term.exit_code, 0);
    assert_eq!(term.reason.as_deref(), Some("Completed"));
    let ran = term
        .finished_at
        .unwrap()
        .0
        .duration_since(term.started_at.unwrap().0);
    assert!(ran.as_secs_f64() >= 0.9, "ran {ran:?}");
    assert_eq!(
        condition(&ok, "Ready").unwrap().reason.as_deref(),
        Some("PodCompleted")
    );
    let bad = pods.get("job-bad").await.unwrap();
    let term = bad.status.unwrap().container_statuses.unwrap()[0]
        .state
        .clone()
        .unwrap()
        .terminated
        .unwrap();
    assert_eq!((term.exit_code, term.reason.as_deref()), (3, Some("Error")));

    // Graceful deletion: the API server only marks the pod; the agent stops the containers,
    // writes their terminated status, then deletes the pod for good. Watch it happen.
    use futures::StreamExt;
    let rv = pods
        .get("long")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = kube::api::WatchParams::default().fields("metadata.name=long");
    let mut stream = pods.watch(&wp, &rv).await.unwrap().boxed();
    pods.delete("long", &DeleteParams::default()).await.unwrap();
    let mut saw_terminated_before_delete = false;
    let mut saw_marked = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the pod is deleted in time");
        match ev.unwrap().unwrap() {
            kube::api::WatchEvent::Modified(p) => {
                saw_marked |= p.metadata.deletion_timestamp.is_some();
                let terminated = p
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .all(|c| c.state.as_ref().is_some_and(|s| s.terminated.is_some()))
                    });
                if terminated {
                    assert!(saw_marked, "terminated only after the deletion request");
                    assert_eq!(
                        p.status.as_ref().unwrap().phase.as_deref(),
                        Some("Succeeded")
                    );
                    saw_terminated_before_delete = true;
                }
            }
            kube::api::WatchEvent::Deleted(_) => break,
            _ => {}
        }
    }
    assert!(saw_marked && saw_terminated_before_delete);
    assert!(matches!(pods.get("long").await, Err(kube::Error::Api(e)) if e.code == 404));
    // A completed pod is deleted at once too.
    pods.delete("job-ok", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("job-ok gone", || async {
        matches!(pods.get("job-ok").await, Err(kube::Error::Api(e)) if e.code == 404)
    })
    .await;
}
