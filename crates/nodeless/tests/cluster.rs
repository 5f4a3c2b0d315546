//! A whole cluster from the real binaries: `nodeless server` (controllers and scheduler in process)
//! and `nodeless agent --runtime fake` processes as nodes, driven by the real kubectl.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};

use common::{Server, eventually};
use serde_json::Value;

const K: &str = "kubectl.1.33";

struct Agent(Child);

impl Agent {
    fn start(server: &Server, name: &str, nodes: u32, extra: &[&str]) -> Self {
        let log =
            std::fs::File::create(server.dir.path().join(format!("agent-{name}.log"))).unwrap();
        let child = Command::new(common::bin())
            .args(["agent", "--kubeconfig"])
            .arg(&server.kubeconfig)
            .args([
                "--worker",
                "--runtime",
                "fake",
                "--node-name",
                name,
                "--nodes",
                &nodes.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Agent(child)
    }
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn get_json(server: &Server, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    json(&server.ok(K, &a))
}

fn ready_nodes(server: &Server) -> usize {
    get_json(server, &["get", "nodes"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
        .count()
}

fn running_pods(server: &Server, ns: &str, selector: &str) -> Vec<Value> {
    get_json(server, &["-n", ns, "get", "pods", "-l", selector])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| {
            p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
        })
        .cloned()
        .collect()
}

#[test]
fn deployments_roll_scale_undo_and_delete_on_fake_nodes() {
    let server = Server::start();
    let _agent = Agent::start(&server, "fake", 3, &[]);
    eventually(30, "3 ready nodes", || {
        (ready_nodes(&server) == 3).then_some(())
    });

    server.ok(
        K,
        &[
            "create",
            "deployment",
            "web",
            "--image=nginx:1.26",
            "--replicas=3",
        ],
    );
    server.ok(K, &["rollout", "status", "deployment/web", "--timeout=60s"]);
    assert_eq!(running_pods(&server, "default", "app=web").len(), 3);

    server.ok(K, &["scale", "deployment", "web", "--replicas=5"]);
    server.ok(K, &["rollout", "status", "deployment/web", "--timeout=60s"]);
    let pods = running_pods(&server, "default", "app=web");
    assert_eq!(pods.len(), 5);
    let nodes: std::collections::HashSet<&str> = pods
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap())
        .collect();
    assert_eq!(nodes.len(), 3, "pods spread over the nodes");

    // A rolling update observed by watch: available replicas never drop below
    // replicas - maxUnavailable (25% of 5 rounds down to 1).
    let exe = common::which(K).unwrap();
    let mut watch = Command::new(exe)
        .env("KUBECONFIG", &server.kubeconfig)
        .env("HOME", server.dir.path())
        .args([
            "get",
            "deployment",
            "web",
            "-w",
            "-o",
            "jsonpath={.status.availableReplicas} {.status.updatedReplicas}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    server.ok(K, &["set", "image", "deployment/web", "nginx=nginx:1.27"]);
    server.ok(K, &["rollout", "status", "deployment/web", "--timeout=90s"]);
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).into_owned();
    let available: Vec<i64> = seen
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(available.len() >= 3, "the watch saw the rollout: {seen}");
    assert!(
        available.iter().all(|a| *a >= 4),
        "availableReplicas dipped below 4: {seen}"
    );
    let pods = running_pods(&server, "default", "app=web");
    assert!(
        pods.iter()
            .all(|p| p["spec"]["containers"][0]["image"] == "nginx:1.27")
    );

    let history = server.ok(K, &["rollout", "history", "deployment/web"]);
    assert!(history.contains('1') && history.contains('2'), "{history}");
    server.ok(K, &["rollout", "undo", "deployment/web"]);
    server.ok(K, &["rollout", "status", "deployment/web", "--timeout=90s"]);
    let d = get_json(&server, &["get", "deployment", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.26"
    );

    // Orphan: the ReplicaSets stay, without their owner.
    server.ok(K, &["delete", "deployment", "web", "--cascade=orphan"]);
    let rs = get_json(&server, &["get", "rs", "-l", "app=web"]);
    let items = rs["items"].as_array().unwrap();
    assert!(!items.is_empty());
    assert!(
        items.iter().all(|r| r["metadata"]["ownerReferences"]
            .as_array()
            .is_none_or(|o| o.is_empty())),
        "orphaned: {rs}"
    );
    // Foreground: the ReplicaSet goes only after its pods.
    let name = items.iter().find(|r| r["spec"]["replicas"] != 0).unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    server.ok(
        K,
        &[
            "delete",
            "rs",
            &name,
            "--cascade=foreground",
            "--timeout=60s",
        ],
    );
    eventually(60, "the pods of the deleted ReplicaSet to go", || {
        running_pods(&server, "default", "app=web")
            .is_empty()
            .then_some(())
    });
    // Background (the default): the remaining ReplicaSets' pods are collected.
    server.ok(K, &["delete", "rs", "-l", "app=web"]);
    eventually(60, "all web pods gone", || {
        get_json(&server, &["get", "pods", "-l", "app=web"])["items"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
}

#[test]
fn jobs_namespaces_scheduling_failures_and_taints() {
    let server = Server::start();
    let _agent = Agent::start(&server, "fake", 2, &[]);
    eventually(30, "2 ready nodes", || {
        (ready_nodes(&server) == 2).then_some(())
    });

    // A Job with completions 3 / parallelism 2 finishes; its TTL removes it.
    let job = r#"{"apiVersion":"batch/v1","kind":"Job","metadata":{"name":"batch"},"spec":{"completions":3,"parallelism":2,"ttlSecondsAfterFinished":3,
        "template":{"metadata":{"annotations":{"nodeless.io/fake-duration":"1s"}},"spec":{"restartPolicy":"Never","containers":[{"name":"c","image":"busybox"}]}}}}"#;
    server.ok_stdin(K, &["create", "-f", "-"], job);
    eventually(60, "the job to complete", || {
        let j = get_json(&server, &["get", "job", "batch"]);
        (j["status"]["succeeded"] == 3).then_some(())
    });
    let table = server.ok(K, &["get", "jobs"]);
    assert!(
        table.contains("Complete") && table.contains("3/3"),
        "{table}"
    );
    eventually(60, "the TTL to delete the job", || {
        let out = server.kubectl_v(K, &["get", "job", "batch"]);
        (!out.status.success()).then_some(())
    });

    // A pod with a nodeSelector no node has stays Pending, with the event that says why.
    server.ok(
        K,
        &[
            "run",
            "picky",
            "--image=nginx",
            "--overrides",
            r#"{"apiVersion":"v1","spec":{"nodeSelector":{"disk":"ssd"}}}"#,
        ],
    );
    eventually(30, "a FailedScheduling event", || {
        let d = server.ok(K, &["describe", "pod", "picky"]);
        d.contains("FailedScheduling").then_some(d)
    });
    let p = get_json(&server, &["get", "pod", "picky"]);
    assert_eq!(p["status"]["phase"], "Pending");
    assert!(
        p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "PodScheduled" && c["status"] == "False")
    );

    // Taints keep pods off a node.
    server.ok(
        K,
        &["taint", "node", "fake-0", "dedicated=infra:NoSchedule"],
    );
    server.ok(
        K,
        &[
            "create",
            "deployment",
            "spread",
            "--image=nginx",
            "--replicas=4",
        ],
    );
    server.ok(
        K,
        &["rollout", "status", "deployment/spread", "--timeout=60s"],
    );
    let pods = running_pods(&server, "default", "app=spread");
    assert_eq!(pods.len(), 4);
    assert!(
        pods.iter().all(|p| p["spec"]["nodeName"] == "fake-1"),
        "no pod on the tainted node"
    );

    // Deleting a namespace full of objects removes everything, then the namespace.
    server.ok(K, &["create", "namespace", "doomed"]);
    server.ok(
        K,
        &[
            "-n",
            "doomed",
            "create",
            "deployment",
            "d",
            "--image=nginx",
            "--replicas=2",
        ],
    );
    server.ok(
        K,
        &[
            "-n",
            "doomed",
            "create",
            "configmap",
            "c",
            "--from-literal=a=b",
        ],
    );
    server.ok(
        K,
        &[
            "-n",
            "doomed",
            "rollout",
            "status",
            "deployment/d",
            "--timeout=60s",
        ],
    );
    server.ok(K, &["delete", "namespace", "doomed", "--timeout=60s"]);
    let out = server.kubectl_v(K, &["get", "namespace", "doomed"]);
    assert!(!out.status.success(), "the namespace is gone");
    let pods = get_json(&server, &["get", "pods", "-A"]);
    assert!(
        pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["metadata"]["namespace"] != "doomed")
    );
}

#[test]
fn a_lost_node_goes_not_ready_and_its_pods_are_replaced() {
    let server = Server::start_with(&["--node-grace-period", "4", "--pod-eviction-timeout", "2"]);
    let mut doomed = Agent::start(&server, "lost", 1, &[]);
    eventually(30, "the first node", || {
        (ready_nodes(&server) == 1).then_some(())
    });
    server.ok(
        K,
        &[
            "create",
            "deployment",
            "app",
            "--image=nginx",
            "--replicas=2",
        ],
    );
    server.ok(K, &["rollout", "status", "deployment/app", "--timeout=60s"]);
    let _survivor = Agent::start(&server, "kept", 1, &[]);
    eventually(30, "the second node", || {
        (ready_nodes(&server) == 2).then_some(())
    });

    doomed.kill();
    eventually(60, "the lost node to turn NotReady", || {
        let n = get_json(&server, &["get", "node", "lost"]);
        let ready = n["status"]["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        (ready["status"] == "Unknown").then_some(())
    });
    eventually(90, "the pods to be replaced on the kept node", || {
        let pods = running_pods(&server, "default", "app=app");
        (pods.len() == 2 && pods.iter().all(|p| p["spec"]["nodeName"] == "kept")).then_some(())
    });
}
