//! The serverless scheduler and the profile controller against the in-process API server, with a
//! real kube client. No agent: the test plays the host agents by writing their Leases itself, and
//! creates ServerlessProfiles so that admission marks the pods.
#![allow(clippy::unwrap_used)]

mod common;

use common::{client, eventually};

use std::collections::BTreeMap;
use std::time::Duration;

use api::placement::{self, Placement};
use apiserver::testing::TestServer;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

async fn create_profile(c: &kube::Client, name: &str, selectors: serde_json::Value) {
    let api: Api<DynamicObject> = Api::all_with(c.clone(), &controllers::profiles::api_resource());
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "nodeless.io/v1",
        "kind": "ServerlessProfile",
        "metadata": {"name": name},
        "spec": {"selectors": selectors},
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
}

async fn delete_profile(c: &kube::Client, name: &str) {
    let api: Api<DynamicObject> = Api::all_with(c.clone(), &controllers::profiles::api_resource());
    api.delete(name, &DeleteParams::default()).await.unwrap();
}

fn host_lease(host: &str, cidr: &str, memory: &str, renewed: jiff::Timestamp) -> Lease {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("nodeless-host-{host}"),
            "namespace": "kube-system",
            "labels": {"nodeless.io/host-agent": "true"},
            "annotations": {
                "nodeless.io/allocatable": format!(r#"{{"cpu":"4","memory":"{memory}","pods":"110"}}"#),
                "nodeless.io/pod-cidr": cidr,
                "nodeless.io/agent-endpoint": format!("https://127.0.0.1:1025{}", host.len()),
                "nodeless.io/agent-cert-sha256": "0f".repeat(32),
            },
        },
        "spec": {
            "holderIdentity": host,
            "leaseDurationSeconds": 40,
            "renewTime": renewed.to_string(),
        },
    }))
    .unwrap()
}

/// Publish a host agent, as `nodeless agent` does.
async fn add_host(c: &kube::Client, host: &str, cidr: &str, memory: &str) {
    let api: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    api.create(
        &PostParams::default(),
        &host_lease(host, cidr, memory, jiff::Timestamp::now()),
    )
    .await
    .unwrap();
}

fn pod(name: &str, labels: serde_json::Value, requests: Option<serde_json::Value>) -> Pod {
    let mut container = json!({"name": "c", "image": "busybox"});
    if let Some(r) = requests {
        container["resources"] = json!({"requests": r});
    }
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [container]},
    }))
    .unwrap()
}

fn node_of(p: &Pod) -> Option<String> {
    p.spec.as_ref()?.node_name.clone()
}

async fn wait_bound(pods: &Api<Pod>, name: &str) -> String {
    eventually(&format!("{name} bound"), || async {
        node_of(&pods.get(name).await.unwrap()).is_some()
    })
    .await;
    node_of(&pods.get(name).await.unwrap()).unwrap()
}

async fn events_for(c: &kube::Client, pod: &str, reason: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(c.clone(), "default");
    api.list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.involved_object.name.as_deref() == Some(pod) && e.reason.as_deref() == Some(reason)
        })
        .collect()
}

fn scheduled_condition(p: &Pod) -> Option<(String, String, String)> {
    let c = p
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled")?;
    Some((
        c.status.clone(),
        c.reason.clone().unwrap_or_default(),
        c.message.clone().unwrap_or_default(),
    ))
}

fn labels(n: &Node) -> BTreeMap<String, String> {
    n.metadata.labels.clone().unwrap_or_default()
}

fn annotations(n: &Node) -> BTreeMap<String, String> {
    n.metadata.annotations.clone().unwrap_or_default()
}

async fn node_exists(nodes: &Api<Node>, name: &str) -> bool {
    nodes.get_opt(name).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_gets_its_own_node_and_loses_it_when_deleted() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    create_profile(&c, "fp-default", json!([{"namespace": "default"}])).await;
    add_host(&c, "h1", "10.244.0.0/24", "24Gi").await;
    let sched = tokio::spawn(controllers::serverless::run(c.clone(), Default::default()));
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let nodes: Api<Node> = Api::all(c.clone());

    let created = pods
        .create(&PostParams::default(), &pod("web", json!({}), None))
        .await
        .unwrap();
    // Admission marked it.
    assert_eq!(
        created.spec.as_ref().unwrap().scheduler_name.as_deref(),
        Some("serverless-scheduler")
    );
    let node_name = wait_bound(&pods, "web").await;
    assert_eq!(node_name, "serverless-ip-10-244-0-2");
    let n = nodes.get(&node_name).await.unwrap();
    let l = labels(&n);
    for (k, v) in [
        ("nodeless.io/compute-type", "serverless"),
        ("nodeless.io/host", "h1"),
        ("kubernetes.io/hostname", "serverless-ip-10-244-0-2"),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("node.kubernetes.io/instance-type", "serverless"),
        ("nodeless.io/profile", "fp-default"),
    ] {
        assert_eq!(l.get(k).map(String::as_str), Some(v), "label {k}");
    }
    let a = annotations(&n);
    let uid = created.metadata.uid.clone().unwrap();
    for (k, v) in [
        ("nodeless.io/pod-ip", "10.244.0.2"),
        ("nodeless.io/pod", "default/web"),
        ("nodeless.io/pod-uid", uid.as_str()),
        ("nodeless.io/agent-endpoint", "https://127.0.0.1:10252"),
        ("CapacityProvisioned", "0.25vCPU 0.5GB"),
    ] {
        assert_eq!(a.get(k).map(String::as_str), Some(v), "annotation {k}");
    }
    assert_eq!(
        a.get("nodeless.io/agent-cert-sha256"),
        Some(&"0f".repeat(32))
    );
    let spec = n.spec.clone().unwrap();
    let taints = spec.taints.unwrap();
    assert_eq!(taints.len(), 1);
    assert_eq!(
        (
            taints[0].key.as_str(),
            taints[0].value.as_deref(),
            taints[0].effect.as_str()
        ),
        ("nodeless.io/compute-type", Some("serverless"), "NoSchedule")
    );
    assert_eq!(spec.pod_cidr.as_deref(), Some("10.244.0.2/32"));
    let status = n.status.clone().unwrap();
    let cap = status.capacity.unwrap();
    assert_eq!(cap["cpu"].0, "250m");
    assert_eq!(cap["memory"].0, "512Mi");
    assert_eq!(cap["pods"].0, "1");
    assert_eq!(status.allocatable.unwrap(), cap);
    let addresses: Vec<(String, String)> = status
        .addresses
        .unwrap()
        .into_iter()
        .map(|a| (a.type_, a.address))
        .collect();
    assert_eq!(
        addresses,
        vec![
            ("InternalIP".to_string(), "10.244.0.2".to_string()),
            (
                "Hostname".to_string(),
                "serverless-ip-10-244-0-2".to_string()
            ),
        ]
    );
    // The Scheduled event, from the serverless scheduler.
    eventually("Scheduled event", || async {
        !events_for(&c, "web", "Scheduled").await.is_empty()
    })
    .await;
    let ev = events_for(&c, "web", "Scheduled").await.remove(0);
    assert_eq!(
        ev.message.as_deref(),
        Some("Successfully assigned default/web to serverless-ip-10-244-0-2")
    );
    assert_eq!(
        ev.source.and_then(|s| s.component).as_deref(),
        Some("serverless-scheduler")
    );

    // A second pod: a second node and IP; a bigger pod gets a bigger node.
    pods.create(&PostParams::default(), &pod("web2", json!({}), None))
        .await
        .unwrap();
    assert_eq!(wait_bound(&pods, "web2").await, "serverless-ip-10-244-0-3");
    pods.create(
        &PostParams::default(),
        &pod("big", json!({}), Some(json!({"cpu": "1", "memory": "8Gi"}))),
    )
    .await
    .unwrap();
    let big = wait_bound(&pods, "big").await;
    assert_eq!(big, "serverless-ip-10-244-0-4");
    let n = nodes.get(&big).await.unwrap();
    let cap = n.status.clone().unwrap().capacity.unwrap();
    assert_eq!(
        (cap["cpu"].0.as_str(), cap["memory"].0.as_str()),
        ("2", "9Gi")
    );
    assert_eq!(
        annotations(&n)
            .get("CapacityProvisioned")
            .map(String::as_str),
        Some("2vCPU 9GB")
    );

    // The pod is deleted (no agent here to finish a graceful deletion: grace 0): its Node goes,
    // the others stay.
    pods.delete("web", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("web's node deleted", || async {
        !node_exists(&nodes, "serverless-ip-10-244-0-2").await
    })
    .await;
    assert!(node_exists(&nodes, "serverless-ip-10-244-0-3").await);
    assert!(node_exists(&nodes, &big).await);
    // The freed IP is given again, once the scheduler's own Node watch has shown the deletion
    // (it does not reuse an address while its watch still shows the Node): give it a moment.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    pods.create(&PostParams::default(), &pod("web3", json!({}), None))
        .await
        .unwrap();
    assert_eq!(wait_bound(&pods, "web3").await, "serverless-ip-10-244-0-2");
    // Exactly one node per pod.
    let all = nodes.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(
        all.len(),
        3,
        "{:?}",
        all.iter()
            .map(|n| n.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    sched.abort();
}

async fn host_of(pods: &Api<Pod>, nodes: &Api<Node>, name: &str) -> String {
    let node = wait_bound(pods, name).await;
    labels(&nodes.get(&node).await.unwrap())["nodeless.io/host"].clone()
}

/// Place pods asking for these amounts of memory, one after another (so that each decision sees
/// the previous ones), on two empty hosts `a` and `b` of 4 GiB; the hosts they land on.
async fn place(placement: Placement, memory: &[&str]) -> Vec<String> {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    create_profile(&c, "fp-default", json!([{"namespace": "default"}])).await;
    add_host(&c, "a", "10.244.0.0/24", "4Gi").await;
    add_host(&c, "b", "10.244.1.0/24", "4Gi").await;
    let config = controllers::serverless::Config {
        placement,
        ..Default::default()
    };
    let sched = tokio::spawn(controllers::serverless::run(c.clone(), config));
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let nodes: Api<Node> = Api::all(c.clone());
    let mut hosts = Vec::new();
    for (i, m) in memory.iter().enumerate() {
        let name = format!("p{i}");
        pods.create(
            &PostParams::default(),
            &pod(&name, json!({}), Some(json!({"memory": m}))),
        )
        .await
        .unwrap();
        hosts.push(host_of(&pods, &nodes, &name).await);
    }
    sched.abort();
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_and_pack_across_two_hosts() {
    // 1Gi + 256Mi rounds up to 0.25 vCPU 2 GB; 2Gi + 256Mi to 0.5 vCPU 3 GB.
    let spread = place(Placement::Spread, &["1Gi", "1Gi"]).await;
    assert_eq!(spread, vec!["a", "b"], "spread uses both hosts");
    // Pack: the first two fill a; the 3 GB pod no longer fits there and goes to b.
    let pack = place(Placement::Pack, &["1Gi", "1Gi", "2Gi"]).await;
    assert_eq!(pack, vec!["a", "a", "b"], "pack fills one host first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_pending_until_a_host_is_alive() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    create_profile(&c, "fp-default", json!([{"namespace": "default"}])).await;
    // A host whose agent stopped renewing two minutes ago.
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    let stale = jiff::Timestamp::now()
        .checked_sub(jiff::SignedDuration::from_secs(120))
        .unwrap();
    leases
        .create(
            &PostParams::default(),
            &host_lease("old", "10.244.0.0/24", "24Gi", stale),
        )
        .await
        .unwrap();
    let config = controllers::serverless::Config {
        // Retry often, to show that the event is not repeated while the message stays the same.
        resync: Duration::from_millis(200),
        ..Default::default()
    };
    let sched = tokio::spawn(controllers::serverless::run(c.clone(), config));
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &pod("waiting", json!({}), None))
        .await
        .unwrap();
    let expected = "0/1 serverless hosts are available: 1 not ready.";
    eventually("PodScheduled=False", || async {
        scheduled_condition(&pods.get("waiting").await.unwrap())
            .is_some_and(|(s, r, m)| s == "False" && r == "Unschedulable" && m == expected)
    })
    .await;
    eventually("FailedScheduling event", || async {
        !events_for(&c, "waiting", "FailedScheduling")
            .await
            .is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let evs = events_for(&c, "waiting", "FailedScheduling").await;
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].count, Some(1), "not repeated while nothing changed");
    assert_eq!(evs[0].message.as_deref(), Some(expected));
    assert_eq!(evs[0].type_.as_deref(), Some("Warning"));
    assert_eq!(
        evs[0].source.as_ref().and_then(|s| s.component.as_deref()),
        Some("serverless-scheduler")
    );
    let p = pods.get("waiting").await.unwrap();
    assert!(node_of(&p).is_none());
    assert_eq!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Pending")
    );

    // A host agent appears: the pod is placed there.
    add_host(&c, "new", "10.244.7.0/24", "24Gi").await;
    assert_eq!(
        wait_bound(&pods, "waiting").await,
        "serverless-ip-10-244-7-2"
    );
    eventually("PodScheduled=True", || async {
        scheduled_condition(&pods.get("waiting").await.unwrap())
            .is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    sched.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_a_node_made_for_a_pod_and_sweeps_orphans() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    create_profile(&c, "fp-default", json!([{"namespace": "default"}])).await;
    add_host(&c, "h1", "10.244.0.0/24", "24Gi").await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let nodes: Api<Node> = Api::all(c.clone());
    let leases: Api<Lease> = Api::namespaced(c.clone(), "kube-system");
    let host = placement::Host::from_lease(
        &leases.get("nodeless-host-h1").await.unwrap(),
        jiff::Timestamp::now(),
    )
    .unwrap();
    let size = api::sizing::PodSize {
        millicpu: 250,
        memory_mib: 512,
    };
    // As a scheduler that stopped between creating the Node and binding would leave it.
    let p = pods
        .create(&PostParams::default(), &pod("half", json!({}), None))
        .await
        .unwrap();
    let made: Node = serde_json::from_value(placement::serverless_node(
        &p,
        &host,
        "10.244.0.9".parse().unwrap(),
        &size,
    ))
    .unwrap();
    nodes.create(&PostParams::default(), &made).await.unwrap();
    // And a Node whose pod is long gone.
    let mut ghost_pod = p.clone();
    ghost_pod.metadata.uid = Some("no-such-uid".into());
    let ghost: Node = serde_json::from_value(placement::serverless_node(
        &ghost_pod,
        &host,
        "10.244.0.5".parse().unwrap(),
        &size,
    ))
    .unwrap();
    nodes.create(&PostParams::default(), &ghost).await.unwrap();
    // A pod bound already is left alone (its node is an ordinary one here).
    let mut bound = pod("bound", json!({}), None);
    bound.spec.as_mut().unwrap().node_name = Some("worker-1".into());
    pods.create(&PostParams::default(), &bound).await.unwrap();

    let config = controllers::serverless::Config {
        orphan_grace: Duration::ZERO,
        ..Default::default()
    };
    let sched = tokio::spawn(controllers::serverless::run(c.clone(), config));
    assert_eq!(wait_bound(&pods, "half").await, "serverless-ip-10-244-0-9");
    eventually("the orphan node deleted", || async {
        !node_exists(&nodes, "serverless-ip-10-244-0-5").await
    })
    .await;
    let names: Vec<String> = nodes
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    assert_eq!(names, vec!["serverless-ip-10-244-0-9"]);
    assert_eq!(
        node_of(&pods.get("bound").await.unwrap()).as_deref(),
        Some("worker-1")
    );
    // The next pod takes the lowest free IP, now that .5 is free again.
    pods.create(&PostParams::default(), &pod("next", json!({}), None))
        .await
        .unwrap();
    assert_eq!(wait_bound(&pods, "next").await, "serverless-ip-10-244-0-2");
    sched.abort();
}

async fn pod_exists(pods: &Api<Pod>, name: &str) -> bool {
    pods.get_opt(name).await.unwrap().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_profile_evicts_its_pods() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    for p in ["fp-a", "fp-b", "fp-c"] {
        let app = p.trim_start_matches("fp-");
        create_profile(
            &c,
            p,
            json!([{"namespace": "default", "labels": {"app": app}}]),
        )
        .await;
    }
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    for (name, app) in [
        ("a1", "a"),
        ("a2", "a"),
        ("b1", "b"),
        ("c1", "c"),
        ("plain", "none"),
    ] {
        let p = pods
            .create(
                &PostParams::default(),
                &pod(name, json!({"app": app}), None),
            )
            .await
            .unwrap();
        let profile = p
            .metadata
            .labels
            .unwrap_or_default()
            .get("nodeless.io/profile")
            .cloned();
        let expected = (app != "none").then(|| format!("fp-{app}"));
        assert_eq!(profile, expected, "{name}");
    }
    // A profile deleted while no controller ran: its pod goes at start.
    delete_profile(&c, "fp-b").await;
    let ctl = tokio::spawn(controllers::profiles::run(c.clone()));
    eventually("b1 evicted", || async { !pod_exists(&pods, "b1").await }).await;

    delete_profile(&c, "fp-a").await;
    eventually("a1 and a2 evicted", || async {
        !pod_exists(&pods, "a1").await && !pod_exists(&pods, "a2").await
    })
    .await;
    let evs = events_for(&c, "a1", "Evicted").await;
    assert_eq!(evs.len(), 1);
    assert_eq!(
        evs[0].message.as_deref(),
        Some("Evicting pod: serverless profile \"fp-a\" was deleted")
    );
    assert_eq!(
        evs[0].source.as_ref().and_then(|s| s.component.as_deref()),
        Some("serverless-profile-controller")
    );
    assert!(!events_for(&c, "b1", "Evicted").await.is_empty());
    // The others stay.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pod_exists(&pods, "c1").await);
    assert!(pod_exists(&pods, "plain").await);
    assert!(events_for(&c, "c1", "Evicted").await.is_empty());
    // A pod with the same name, created again under a live profile, is left alone.
    pods.create(
        &PostParams::default(),
        &pod("a1", json!({"app": "c"}), None),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(pod_exists(&pods, "a1").await);
    ctl.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_serverless_pods_and_leases_are_left_alone_by_other_names() {
    // A pod for the default scheduler is not touched by the serverless scheduler, and an
    // ordinary Node is never deleted by it.
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    add_host(&c, "h1", "10.244.0.0/24", "24Gi").await;
    let nodes: Api<Node> = Api::all(c.clone());
    let worker: Node = serde_json::from_value(json!({"metadata": {"name": "worker-1"}})).unwrap();
    nodes.create(&PostParams::default(), &worker).await.unwrap();
    let sched = tokio::spawn(controllers::serverless::run(
        c.clone(),
        controllers::serverless::Config {
            orphan_grace: Duration::ZERO,
            ..Default::default()
        },
    ));
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    pods.create(&PostParams::default(), &pod("ordinary", json!({}), None))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(node_of(&pods.get("ordinary").await.unwrap()).is_none());
    assert!(node_exists(&nodes, "worker-1").await);
    // Status patches of the Node (as the agent writes) do not confuse it.
    nodes
        .patch_status(
            "worker-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(node_exists(&nodes, "worker-1").await);
    sched.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_gets_one_node_and_ip_each() {
    let ts = TestServer::start().await;
    let c = client(&ts).await;
    create_profile(&c, "fp-default", json!([{"namespace": "default"}])).await;
    add_host(&c, "a", "10.244.0.0/24", "24Gi").await;
    add_host(&c, "b", "10.244.1.0/24", "24Gi").await;
    let sched = tokio::spawn(controllers::serverless::run(c.clone(), Default::default()));
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let nodes: Api<Node> = Api::all(c.clone());
    let names: Vec<String> = (0..12).map(|i| format!("burst-{i}")).collect();
    futures::future::join_all(names.iter().map(|n| {
        let pods = pods.clone();
        async move {
            pods.create(&PostParams::default(), &pod(n, json!({}), None))
                .await
                .unwrap()
        }
    }))
    .await;
    let mut bound = std::collections::BTreeSet::new();
    for n in &names {
        let node = wait_bound(&pods, n).await;
        let p = pods.get(n).await.unwrap();
        let made = nodes.get(&node).await.unwrap();
        assert_eq!(
            annotations(&made).get("nodeless.io/pod-uid"),
            p.metadata.uid.as_ref(),
            "{n} is on its own node"
        );
        assert!(bound.insert(node), "one node per pod");
    }
    let all = nodes.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all.len(), names.len(), "no node left over");
    let per_host = |h: &str| {
        all.iter()
            .filter(|n| labels(n)["nodeless.io/host"] == h)
            .count()
    };
    assert_eq!((per_host("a"), per_host("b")), (6, 6), "spread evenly");
    sched.abort();
}
