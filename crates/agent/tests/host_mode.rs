//! The agent as a serverless host, against the in-process API server: it publishes its Lease
//! (what the serverless scheduler reads), adopts the Nodes made for it (as the scheduler makes
//! them), runs their pods with the Node's IP, serves logs through its streaming server (the API
//! server proxies them), lets go of deleted Nodes; and, with a scripted runtime, adopts pods
//! that outlived an earlier agent without starting them again, and rewrites a pod's status when
//! the runtime announces a change.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent::host::{FakeStreams, HostSpec};
use agent::node::{Endpoint, NodeSpec};
use agent::runtime::{ContainerStarted, Fake, Runtime, RuntimeError, RuntimeStatus, Started};
use apiserver::testing::TestServer;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn client(ts: &TestServer) -> kube::Client {
    let cfg = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&ts.kubeconfig).unwrap(),
        &Default::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

async fn wait_for<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Agent(tokio::task::JoinHandle<()>);
impl Drop for Agent {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn spawn_agent<R: Runtime>(client: &kube::Client, runtime: Arc<R>, config: agent::Config) -> Agent {
    let c = client.clone();
    Agent(tokio::spawn(async move {
        let r = agent::run(c, runtime, config).await;
        panic!("agent stopped: {r:?}");
    }))
}

fn fast(mut config: agent::Config) -> agent::Config {
    config.lease_interval = Duration::from_millis(500);
    config.status_interval = Duration::from_millis(500);
    config
}

fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn renew_time(l: &Lease) -> Option<String> {
    l.spec
        .as_ref()?
        .renew_time
        .as_ref()
        .map(|t| t.0.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_publishes_itself_and_serves_the_nodes_made_for_it() {
    let ts = TestServer::start().await;
    let client = client(&ts).await;
    let server = agent::server::serve(
        "127.0.0.1:0".parse().unwrap(),
        ts.token.clone(),
        Arc::new(FakeStreams),
    )
    .await
    .unwrap();
    let mut config = fast(agent::Config::host(HostSpec {
        name: "h1".into(),
        cpu: "2".into(),
        memory: "4Gi".into(),
        pods: 10,
        pod_cidr: "10.244.3.0/24".into(),
    }));
    config.endpoint = Some(Endpoint {
        url: server.endpoint.clone(),
        cert_sha256: server.cert_sha256.clone(),
        port: server.addr.port(),
    });
    let agent = spawn_agent(&client, Arc::new(Fake::new()), config.clone());

    // The host Lease, as the scheduler reads it, and renewed.
    let host_leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let lease = wait_for("the host lease", || async {
        host_leases.get_opt("nodeless-host-h1").await.unwrap()
    })
    .await;
    assert_eq!(
        lease.metadata.labels.as_ref().unwrap()["nodeless.io/host-agent"],
        "true"
    );
    let host = api::placement::Host::from_lease(&lease, jiff::Timestamp::now()).unwrap();
    assert!(host.alive);
    assert_eq!(host.name, "h1");
    assert_eq!(host.endpoint, server.endpoint);
    assert_eq!(host.cert_sha256, server.cert_sha256);
    assert_eq!(host.pod_cidr.to_string(), "10.244.3.0/24");
    assert_eq!(host.allocatable.milli_cpu, 2000);
    assert_eq!(host.allocatable.memory, 4 << 30);
    assert_eq!(host.allocatable.pods, 10);
    let first = renew_time(&lease);
    wait_for("the host lease renewed", || async {
        let l = host_leases.get("nodeless-host-h1").await.unwrap();
        (renew_time(&l) != first).then_some(())
    })
    .await;

    // A pod, its Node (as the serverless scheduler makes it), then the binding at once.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let ip: std::net::Ipv4Addr = "10.244.3.7".parse().unwrap();
    let size = api::placement::pod_size_of(&pod).unwrap();
    let node: Node =
        serde_json::from_value(api::placement::serverless_node(&pod, &host, ip, &size)).unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes.create(&PostParams::default(), &node).await.unwrap();
    let node_name = node.metadata.name.clone().unwrap();
    assert_eq!(node_name, "serverless-ip-10-244-3-7");
    let capacity = node.status.as_ref().unwrap().capacity.clone();
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": "web", "namespace": "default"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
    });
    let _: serde_json::Value = pods
        .create_subresource("binding", "web", &PostParams::default(), &binding)
        .await
        .unwrap();

    // The pod runs with the Node's IP.
    let running = wait_for("the pod Running", || async {
        let p = pods.get("web").await.unwrap();
        (phase(&p) == "Running").then_some(p)
    })
    .await;
    let st = running.status.unwrap();
    assert_eq!(st.pod_ip.as_deref(), Some("10.244.3.7"));
    assert_eq!(st.host_ip.as_deref(), Some("10.244.3.7"));
    assert!(st.container_statuses.unwrap()[0].ready);

    // The Node: Ready as the agent writes it, capacity as the scheduler set it.
    let n = wait_for("the node Ready", || async {
        let n = nodes.get(&node_name).await.unwrap();
        let ready = n.status.as_ref()?.conditions.as_ref()?.iter().any(|c| {
            c.type_ == "Ready" && c.status == "True" && c.reason.as_deref() == Some("KubeletReady")
        });
        ready.then_some(n)
    })
    .await;
    let st = n.status.unwrap();
    assert_eq!(st.capacity, capacity, "capacity kept");
    assert_eq!(st.allocatable, capacity, "allocatable kept");
    assert!(
        st.node_info
            .unwrap()
            .container_runtime_version
            .starts_with("fake://")
    );
    let addresses: Vec<(String, String)> = st
        .addresses
        .unwrap()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    assert!(addresses.contains(&("InternalIP".into(), "10.244.3.7".into())));
    assert!(addresses.contains(&("Hostname".into(), node_name.clone())));
    assert_eq!(
        st.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port,
        i32::from(server.addr.port())
    );
    // Its Lease, renewed.
    let node_leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let l = wait_for("the node lease", || async {
        node_leases.get_opt(&node_name).await.unwrap()
    })
    .await;
    assert_eq!(
        l.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some(node_name.as_str())
    );
    let first = renew_time(&l);
    wait_for("the node lease renewed", || async {
        let l = node_leases.get(&node_name).await.unwrap();
        (renew_time(&l) != first).then_some(())
    })
    .await;

    // Logs through the API server's proxy and the agent's streaming server (found from the
    // Node's annotations): the fake runs nothing, so they are empty.
    let logs = pods.logs("web", &Default::default()).await.unwrap();
    assert_eq!(logs, "");

    // The pod goes, then its Node: the node leaves the set (its lease goes and is not renewed
    // again, a pod bound to that name is not run).
    pods.delete("web", &DeleteParams::default()).await.unwrap();
    wait_for("the pod gone", || async {
        pods.get_opt("web").await.unwrap().is_none().then_some(())
    })
    .await;
    nodes
        .delete(&node_name, &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the node lease gone", || async {
        node_leases
            .get_opt(&node_name)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let stray: Pod = serde_json::from_value(json!({
        "metadata": {"name": "stray"},
        "spec": {"nodeName": node_name, "containers": [{"name": "c", "image": "nginx"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &stray).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(node_leases.get_opt(&node_name).await.unwrap().is_none());
    let p = pods.get("stray").await.unwrap();
    assert_ne!(phase(&p), "Running", "a pod on a node that left is not run");
    assert!(p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_none());

    // A Node that comes back is served again, with the pod already bound to it.
    let again: Node =
        serde_json::from_value(api::placement::serverless_node(&pod, &host, ip, &size)).unwrap();
    nodes.create(&PostParams::default(), &again).await.unwrap();
    let before = wait_for("the parked pod Running once its node is back", || async {
        let p = pods.get("stray").await.unwrap();
        (phase(&p) == "Running").then_some(p)
    })
    .await;

    // The agent restarts with a new streaming server (new port, new certificate): the Node it
    // serves points at the new one, and the running pod is unchanged.
    drop(agent);
    drop(server);
    let server = agent::server::serve(
        "127.0.0.1:0".parse().unwrap(),
        ts.token.clone(),
        Arc::new(FakeStreams),
    )
    .await
    .unwrap();

    config.endpoint = Some(Endpoint {
        url: server.endpoint.clone(),
        cert_sha256: server.cert_sha256.clone(),
        port: server.addr.port(),
    });
    let _agent = spawn_agent(&client, Arc::new(Fake::new()), config);
    wait_for("the node's endpoint updated", || async {
        let n = nodes.get(&node_name).await.unwrap();
        let a = n.metadata.annotations.unwrap_or_default();
        let current = a.get("nodeless.io/agent-endpoint") == Some(&server.endpoint)
            && a.get("nodeless.io/agent-cert-sha256") == Some(&server.cert_sha256);
        current.then_some(())
    })
    .await;
    let logs = pods.logs("stray", &Default::default()).await.unwrap();
    assert_eq!(logs, "");
    let after = pods.get("stray").await.unwrap();
    let (b, a) = (before.status.unwrap(), after.status.unwrap());
    assert_eq!(phase_of(&a), "Running");
    assert_eq!(a.pod_ip, b.pod_ip);
    assert_eq!(a.start_time, b.start_time);
    assert_eq!(a.container_statuses, b.container_statuses);
}

/// A runtime that records what it is asked and answers as scripted.
#[derive(Default)]
struct Scripted {
    recovered: HashMap<String, Started>,
    starts: Mutex<Vec<String>>,
    waits: Mutex<Vec<String>>,
    stops: Mutex<Vec<String>>,
    removes: Mutex<Vec<String>>,
    status: Mutex<HashMap<String, RuntimeStatus>>,
    changes: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<String>>>,
}

impl Runtime for Scripted {
    fn version(&self) -> String {
        "scripted://1".into()
    }
    async fn start(&self, pod: &Pod, _pod_ip: &str) -> Result<Started, RuntimeError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.starts.lock().unwrap().push(uid);
        Ok(Started::default())
    }
    async fn wait(&self, uid: &str) -> Result<i32, RuntimeError> {
        self.waits.lock().unwrap().push(uid.to_string());
        std::future::pending().await
    }
    async fn stop(&self, uid: &str, _grace: Duration) -> Result<i32, RuntimeError> {
        self.stops.lock().unwrap().push(uid.to_string());
        Ok(0)
    }
    fn remove(&self, uid: &str) {
        self.removes.lock().unwrap().push(uid.to_string());
    }
    fn pod_status(&self, uid: &str) -> Option<RuntimeStatus> {
        self.status.lock().unwrap().get(uid).cloned()
    }
    fn take_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        self.changes.lock().unwrap().take()
    }
    async fn recover(&self) -> HashMap<String, Started> {
        self.recovered.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovered_pods_are_adopted_and_runtime_changes_rewrite_the_status() {
    let ts = TestServer::start().await;
    let client = client(&ts).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // A pod an earlier agent started and reported.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "kept"},
        "spec": {"nodeName": "w0", "containers": [{"name": "c", "image": "nginx:1.27"}]}
    }))
    .unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let earlier = json!({"status": {
        "phase": "Running",
        "podIP": "10.244.0.9", "podIPs": [{"ip": "10.244.0.9"}],
        "hostIP": "10.250.0.2",
        "startTime": "2026-11-26T01:00:00Z",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-26T01:00:01Z"}],
        "containerStatuses": [{
            "name": "c", "image": "nginx:1.27", "imageID": "docker.io/library/nginx@sha256:aa",
            "containerID": "scripted://c1", "ready": true, "started": true, "restartCount": 2,
            "state": {"running": {"startedAt": "2026-11-26T01:00:01Z"}}, "lastState": {}
        }]
    }});
    pods.patch_status("kept", &PatchParams::default(), &Patch::Merge(earlier))
        .await
        .unwrap();

    let (changes_tx, changes_rx) = tokio::sync::mpsc::unbounded_channel();
    let started = Started {
        containers: vec![ContainerStarted {
            name: "c".into(),
            container_id: "scripted://c1".into(),
            image_id: "docker.io/library/nginx@sha256:aa".into(),
        }],
    };
    let runtime = Arc::new(Scripted {
        recovered: HashMap::from([
            (uid.clone(), started),
            ("gone-uid".to_string(), Started::default()),
        ]),
        changes: Mutex::new(Some(changes_rx)),
        ..Default::default()
    });
    let mut config = fast(agent::Config::new(vec![NodeSpec::fake(
        "w0",
        0,
        "scripted://1",
    )]));
    config.endpoint = Some(Endpoint {
        url: "https://127.0.0.1:10999".into(),
        cert_sha256: "c0".repeat(32),
        port: 10999,
    });
    let _agent = spawn_agent(&client, runtime.clone(), config);

    // Adopted: waited on, never started; the orphan the API does not know is stopped.
    wait_for("the recovered pod waited on", || async {
        runtime.waits.lock().unwrap().contains(&uid).then_some(())
    })
    .await;
    wait_for("the orphan stopped and removed", || async {
        let stopped = runtime
            .stops
            .lock()
            .unwrap()
            .contains(&"gone-uid".to_string());
        let removed = runtime
            .removes
            .lock()
            .unwrap()
            .contains(&"gone-uid".to_string());
        (stopped && removed).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        runtime.starts.lock().unwrap().is_empty(),
        "nothing started again"
    );
    let p = pods.get("kept").await.unwrap();
    let st = p.status.unwrap();
    assert_eq!(phase_of(&st), "Running");
    assert_eq!(st.pod_ip.as_deref(), Some("10.244.0.9"));
    assert_eq!(st.start_time.unwrap().0.to_string(), "2026-11-26T01:00:00Z");
    let cs = &st.container_statuses.unwrap()[0];
    assert_eq!(cs.container_id.as_deref(), Some("scripted://c1"));
    assert_eq!(cs.restart_count, 2);
    assert_eq!(
        cs.state
            .as_ref()
            .unwrap()
            .running
            .as_ref()
            .unwrap()
            .started_at
            .as_ref()
            .unwrap()
            .0
            .to_string(),
        "2026-11-26T01:00:01Z"
    );

    // A worker Node publishes the streaming server too.
    let n = Api::<Node>::all(client.clone()).get("w0").await.unwrap();
    let a = n.metadata.annotations.unwrap();
    assert_eq!(a["nodeless.io/agent-endpoint"], "https://127.0.0.1:10999");
    assert_eq!(a["nodeless.io/agent-cert-sha256"], "c0".repeat(32));
    let port = n
        .status
        .unwrap()
        .daemon_endpoints
        .unwrap()
        .kubelet_endpoint
        .unwrap()
        .port;
    assert_eq!(port, 10999);

    // The runtime's own status (a restart, readiness lost) is written when it says so.
    let cs = serde_json::from_value(json!({
        "name": "c", "image": "nginx:1.27", "imageID": "docker.io/library/nginx@sha256:aa",
        "containerID": "scripted://c2", "ready": false, "started": true, "restartCount": 3,
        "state": {"running": {"startedAt": "2026-11-26T02:00:00Z"}},
        "lastState": {"terminated": {"exitCode": 137, "reason": "Error",
            "startedAt": "2026-11-26T01:00:01Z", "finishedAt": "2026-11-26T01:59:59Z"}}
    }))
    .unwrap();
    runtime.status.lock().unwrap().insert(
        uid.clone(),
        RuntimeStatus {
            init_container_statuses: vec![],
            container_statuses: vec![cs],
            initialized: true,
            ready: false,
            evicted: None,
        },
    );
    changes_tx.send(uid.clone()).unwrap();
    let p = wait_for("the runtime's status written", || async {
        let p = pods.get("kept").await.unwrap();
        let cs = p
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .clone();
        (cs.restart_count == 3).then_some(p)
    })
    .await;
    let st = p.status.unwrap();
    let cs = &st.container_statuses.as_ref().unwrap()[0];
    assert_eq!(cs.container_id.as_deref(), Some("scripted://c2"));
    assert!(!cs.ready);
    assert_eq!(
        cs.last_state
            .as_ref()
            .unwrap()
            .terminated
            .as_ref()
            .unwrap()
            .exit_code,
        137
    );
    let ready = st
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason.as_deref(), Some("ContainersNotReady"));
    assert_eq!(st.pod_ip.as_deref(), Some("10.244.0.9"));
    assert!(runtime.starts.lock().unwrap().is_empty());
}

fn phase_of(st: &k8s_openapi::api::core::v1::PodStatus) -> &str {
    st.phase.as_deref().unwrap_or("")
}
