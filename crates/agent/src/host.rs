//! Serverless host mode, as plain values: the host agent's Lease
//! (`kube-system/nodeless-host-<HOST>`, what the serverless scheduler reads to place pods), which
//! Nodes are this host's to serve (label `nodeless.io/host=HOST`, created by the scheduler, one
//! per pod), and the status the agent writes on them. Also [`FakeStreams`], what the streaming
//! server serves for the fake runtime. Pure but for [`machine_resources`] (reads /proc); the
//! watches and writes live in [`crate::sync`].

use api::placement::{
    AGENT_CERT_ANNOTATION, AGENT_ENDPOINT_ANNOTATION, ALLOCATABLE_ANNOTATION, HOST_AGENT_LABEL,
    HOST_LABEL, HOST_LEASE_NAMESPACE, HOST_LEASE_PREFIX, POD_CIDR_ANNOTATION, POD_IP_ANNOTATION,
    parse_node_name,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};

use crate::node::{self, Endpoint};
use crate::streams::{ExecRequest, ExecSession, LogOptions, PodStreams, StreamError};

/// `leaseDurationSeconds` of the host Lease.
pub const HOST_LEASE_DURATION_SECONDS: i32 = 40;

/// What a serverless host offers and where its pods live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// HOST: the Lease's holder, the `nodeless.io/host` label of its Nodes.
    pub name: String,
    /// Allocatable for serverless pods, as quantities (`"2"`, `"24Gi"`).
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    /// The host's pod subnet, e.g. `10.244.0.0/24` (the bridge is its first address).
    pub pod_cidr: String,
}

/// The name of the host Lease (in [`HOST_LEASE_NAMESPACE`]).
pub fn lease_name(host: &str) -> String {
    format!("{HOST_LEASE_PREFIX}{host}")
}

/// The host Lease, renewed at `now`: label `nodeless.io/host-agent=true`, annotations
/// allocatable (JSON), pod CIDR and, when a streaming server runs, its endpoint and certificate.
pub fn host_lease(spec: &HostSpec, endpoint: Option<&Endpoint>, now: Timestamp) -> Value {
    let allocatable =
        json!({"cpu": spec.cpu, "memory": spec.memory, "pods": spec.pods.to_string()});
    let mut annotations = json!({
        ALLOCATABLE_ANNOTATION: allocatable.to_string(),
        POD_CIDR_ANNOTATION: spec.pod_cidr,
    });
    if let (Some(e), Some(map)) = (endpoint, annotations.as_object_mut())
        && let Value::Object(more) = e.annotations()
    {
        map.extend(more);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(&spec.name),
            "namespace": HOST_LEASE_NAMESPACE,
            "labels": {HOST_AGENT_LABEL: "true"},
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": spec.name,
            "leaseDurationSeconds": HOST_LEASE_DURATION_SECONDS,
            "renewTime": crate::status::micro_time(now),
        },
    })
}

/// A Node this host serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerlessNode {
    pub name: String,
    pub uid: Option<String>,
    /// The IP of its only pod (and the Node's InternalIP).
    pub pod_ip: String,
}

/// The Node as this host serves it: None unless it is labelled `nodeless.io/host=HOST` and
/// carries a pod IP (`nodeless.io/pod-ip`, else the IP in its `serverless-ip-A-B-C-D` name).
pub fn serverless_node(node: &Node, host: &str) -> Option<ServerlessNode> {
    let name = node.metadata.name.clone()?;
    let ours = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(HOST_LABEL))
        .is_some_and(|h| h == host);
    if !ours {
        return None;
    }
    let annotated = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_IP_ANNOTATION))
        .and_then(|ip| ip.trim().parse::<std::net::Ipv4Addr>().ok());
    let pod_ip = annotated.or_else(|| parse_node_name(&name))?;
    Some(ServerlessNode {
        uid: node.metadata.uid.clone(),
        name,
        pod_ip: pod_ip.to_string(),
    })
}

/// Whether the Node's `nodeless.io/agent-endpoint` / `nodeless.io/agent-cert-sha256` are not
/// this agent's streaming server (the scheduler copies them from the host Lease; an agent that
/// restarted has a new certificate and maybe a new port). False without a server.
pub fn endpoint_stale(node: &Node, endpoint: Option<&Endpoint>) -> bool {
    let Some(e) = endpoint else {
        return false;
    };
    let a = node.metadata.annotations.as_ref();
    let get = |k: &str| a.and_then(|a| a.get(k)).map(String::as_str);
    get(AGENT_ENDPOINT_ANNOTATION) != Some(e.url.as_str())
        || get(AGENT_CERT_ANNOTATION) != Some(e.cert_sha256.as_str())
}

/// FNV-1a of a name: a stable seed for the ids in nodeInfo.
fn seed(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The status the agent writes on a serverless Node (a merge patch body's `status`): Ready
/// conditions, nodeInfo, addresses, daemonEndpoints. Capacity and allocatable are left as the
/// scheduler set them (the pod's size).
pub fn serverless_node_status(
    n: &ServerlessNode,
    runtime_version: &str,
    kubelet_port: u16,
    now: Timestamp,
) -> Value {
    json!({
        "conditions": node::conditions(now),
        "addresses": [
            {"type": "InternalIP", "address": n.pod_ip},
            {"type": "Hostname", "address": n.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": node::node_info(seed(&n.name), runtime_version),
        "phase": "Running",
    })
}

/// This machine's cpus and memory as quantities (`"4"`, `"16318412Ki"`): the default allocatable
/// of a host.
pub fn machine_resources() -> (String, String) {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total_kib(&m))
        .map_or_else(|| "1Gi".to_string(), |kib| format!("{kib}Ki"));
    (cpus.to_string(), memory)
}

/// `MemTotal:  16318412 kB` -> 16318412.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The streams of the fake runtime: it runs no process, so logs are empty and exec, attach and
/// port-forward are refused with 400.
#[derive(Debug, Default, Clone, Copy)]
pub struct FakeStreams;

const NO_PROCESSES: &str = "fake runtime: no processes";

#[async_trait::async_trait]
impl PodStreams for FakeStreams {
    async fn logs(
        &self,
        _namespace: &str,
        _pod: &str,
        _container: Option<&str>,
        _options: LogOptions,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, StreamError> {
        Ok(Box::pin(futures::stream::empty()))
    }

    async fn exec(
        &self,
        _namespace: &str,
        _pod: &str,
        _container: Option<&str>,
        _request: ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        Err(StreamError::BadRequest(NO_PROCESSES.into()))
    }

    async fn attach(
        &self,
        _namespace: &str,
        _pod: &str,
        _container: Option<&str>,
        _request: ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        Err(StreamError::BadRequest(NO_PROCESSES.into()))
    }

    async fn port_forward(
        &self,
        _namespace: &str,
        _pod: &str,
        _port: u16,
    ) -> Result<tokio::net::TcpStream, StreamError> {
        Err(StreamError::BadRequest(NO_PROCESSES.into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::Lease;

    fn spec() -> HostSpec {
        HostSpec {
            name: "h1".into(),
            cpu: "2".into(),
            memory: "24Gi".into(),
            pods: 110,
            pod_cidr: "10.244.0.0/24".into(),
        }
    }

    #[test]
    fn host_lease_is_what_the_scheduler_reads() {
        let e = Endpoint {
            url: "https://127.0.0.1:10250".into(),
            cert_sha256: "0f".repeat(32),
            port: 10250,
        };
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let v = host_lease(&spec(), Some(&e), now);
        assert_eq!(v["metadata"]["name"], "nodeless-host-h1");
        assert_eq!(v["metadata"]["namespace"], "kube-system");
        assert_eq!(v["metadata"]["labels"]["nodeless.io/host-agent"], "true");
        assert_eq!(v["spec"]["leaseDurationSeconds"], 40);
        let alloc: Value = serde_json::from_str(
            v["metadata"]["annotations"]["nodeless.io/allocatable"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(alloc, json!({"cpu": "2", "memory": "24Gi", "pods": "110"}));
        let lease: Lease = serde_json::from_value(v).unwrap();
        let host = api::placement::Host::from_lease(&lease, now).unwrap();
        assert_eq!(host.name, "h1");
        assert_eq!(host.endpoint, "https://127.0.0.1:10250");
        assert_eq!(host.cert_sha256, "0f".repeat(32));
        assert_eq!(host.pod_cidr.to_string(), "10.244.0.0/24");
        assert_eq!(host.allocatable.milli_cpu, 2000);
        assert_eq!(host.allocatable.pods, 110);
        assert!(host.alive);
        // Without a streaming server the endpoint annotations are absent.
        let v = host_lease(&spec(), None, now);
        assert!(
            v["metadata"]["annotations"]
                .get("nodeless.io/agent-endpoint")
                .is_none()
        );
    }

    fn node(labels: Value, annotations: Value, name: &str) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "uid": "n-uid",
            "labels": labels, "annotations": annotations}}))
        .unwrap()
    }

    #[test]
    fn which_nodes_are_ours() {
        let n = node(
            json!({"nodeless.io/host": "h1"}),
            json!({"nodeless.io/pod-ip": "10.244.0.7"}),
            "serverless-ip-10-244-0-7",
        );
        let s = serverless_node(&n, "h1").unwrap();
        assert_eq!(s.pod_ip, "10.244.0.7");
        assert_eq!(s.uid.as_deref(), Some("n-uid"));
        assert!(serverless_node(&n, "h2").is_none(), "another host's");
        let by_name = node(
            json!({"nodeless.io/host": "h1"}),
            json!({}),
            "serverless-ip-10-244-0-9",
        );
        assert_eq!(
            serverless_node(&by_name, "h1").unwrap().pod_ip,
            "10.244.0.9"
        );
        let no_ip = node(json!({"nodeless.io/host": "h1"}), json!({}), "odd");
        assert!(serverless_node(&no_ip, "h1").is_none());
    }

    #[test]
    fn stale_endpoints_are_noticed() {
        let e = Endpoint {
            url: "https://127.0.0.1:4000".into(),
            cert_sha256: "aa".into(),
            port: 4000,
        };
        let current = node(
            json!({}),
            json!({"nodeless.io/agent-endpoint": "https://127.0.0.1:4000",
                   "nodeless.io/agent-cert-sha256": "aa"}),
            "n",
        );
        assert!(!endpoint_stale(&current, Some(&e)));
        let new_cert = node(
            json!({}),
            json!({"nodeless.io/agent-endpoint": "https://127.0.0.1:4000",
                   "nodeless.io/agent-cert-sha256": "bb"}),
            "n",
        );
        assert!(endpoint_stale(&new_cert, Some(&e)));
        let none = node(json!({}), json!({}), "n");
        assert!(endpoint_stale(&none, Some(&e)));
        assert!(!endpoint_stale(&none, None));
    }

    #[test]
    fn serverless_node_status_keeps_capacity_out() {
        let n = ServerlessNode {
            name: "serverless-ip-10-244-0-7".into(),
            uid: None,
            pod_ip: "10.244.0.7".into(),
        };
        let s = serverless_node_status(&n, "runsc://1", 4321, Timestamp::UNIX_EPOCH);
        assert!(s.get("capacity").is_none() && s.get("allocatable").is_none());
        assert_eq!(
            s["addresses"][0],
            json!({"type": "InternalIP", "address": "10.244.0.7"})
        );
        assert_eq!(s["addresses"][1]["type"], "Hostname");
        assert_eq!(s["nodeInfo"]["containerRuntimeVersion"], "runsc://1");
        assert_eq!(s["daemonEndpoints"]["kubeletEndpoint"]["Port"], 4321);
        let ready = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap();
        assert_eq!(
            (&ready["status"], &ready["reason"]),
            (&json!("True"), &json!("KubeletReady"))
        );
    }

    #[test]
    fn machine_memory() {
        assert_eq!(
            mem_total_kib("MemTotal:       16318412 kB\nMemFree: 1 kB\n"),
            Some(16_318_412)
        );
        assert_eq!(mem_total_kib("nothing"), None);
        let (cpu, mem) = machine_resources();
        assert!(cpu.parse::<u32>().unwrap() >= 1);
        assert!(mem.ends_with("Ki") || mem == "1Gi");
    }
}
