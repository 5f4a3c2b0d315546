//! What a node agent registers and keeps up to date, as plain values: the Node object (capacity,
//! allocatable, labels, annotations, conditions, addresses, nodeInfo, daemonEndpoints), its Lease
//! in `kube-node-lease`, and the pod IP allocator of the node's pod CIDR. Pure: no IO.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use api::placement::{AGENT_CERT_ANNOTATION, AGENT_ENDPOINT_ANNOTATION, Cidr};
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::status::time;

/// The namespace of node leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
/// `leaseDurationSeconds` of node leases (kubelet's default).
pub const LEASE_DURATION_SECONDS: i32 = 40;
/// The kubelet version the agent reports.
pub const KUBELET_VERSION: &str = "v1.33.0-nodeless";
/// The kubelet port reported when no streaming server runs.
pub const DEFAULT_KUBELET_PORT: u16 = 10250;

/// Where the agent's streaming server (logs, exec, attach, port-forward) is reached: published in
/// the `nodeless.io/agent-endpoint` / `nodeless.io/agent-cert-sha256` annotations and as
/// `status.daemonEndpoints.kubeletEndpoint.Port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `https://ADDR:PORT`.
    pub url: String,
    /// Lowercase hex SHA-256 of the server certificate's DER.
    pub cert_sha256: String,
    pub port: u16,
}

impl Endpoint {
    /// The two annotations that publish it.
    pub fn annotations(&self) -> Value {
        json!({AGENT_ENDPOINT_ANNOTATION: self.url, AGENT_CERT_ANNOTATION: self.cert_sha256})
    }
}

/// The kubelet port to report for an optional endpoint.
pub fn kubelet_port(endpoint: Option<&Endpoint>) -> u16 {
    endpoint.map_or(DEFAULT_KUBELET_PORT, |e| e.port)
}

/// The resources and identity of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    /// Its index among the nodes of this agent: picks the pod CIDR and fake addresses.
    pub index: u32,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
    pub ephemeral_storage: String,
    pub internal_ip: String,
    pub runtime_version: String,
    /// The node's pod CIDR (`spec.podCIDR`), where its pod IPs come from.
    pub pod_cidr: String,
}

impl NodeSpec {
    /// A fake node numbered `index` (kwok's defaults: 32 cpu, 256Gi, 110 pods).
    pub fn fake(name: &str, index: u32, runtime_version: &str) -> Self {
        NodeSpec {
            name: name.to_string(),
            index,
            cpu: "32".into(),
            memory: "256Gi".into(),
            pods: 110,
            ephemeral_storage: "100Gi".into(),
            internal_ip: fake_node_ip(index),
            runtime_version: runtime_version.to_string(),
            pod_cidr: indexed_pod_cidr(index),
        }
    }
}

/// The pod CIDR of node `index`: `10.244.N.0/24` for the first 256 nodes, then
/// `10.(245+N/256).(N%256).0/24`.
pub fn indexed_pod_cidr(index: u32) -> String {
    let (a, b) = (244 + (index / 256) % 8, index % 256);
    format!("10.{a}.{b}.0/24")
}

/// The fake InternalIP of node `index`: 10.250.x.y (a string only, never contacted).
pub fn fake_node_ip(index: u32) -> String {
    let n = index + 1;
    format!("10.250.{}.{}", (n / 250) % 256, n % 250 + 1)
}

/// `kubernetes.io/arch` of this machine.
pub fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The node conditions the agent reports: no pressure, Ready with reason KubeletReady.
pub fn conditions(now: Timestamp) -> Value {
    let c = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": time(now), "lastTransitionTime": time(now)})
    };
    json!([
        c(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        c(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        c(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        c(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// The Node object to create.
pub fn node_object(n: &NodeSpec, endpoint: Option<&Endpoint>, now: Timestamp) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": n.name,
            "labels": node_labels(n),
            "annotations": node_annotations(endpoint),
        },
        "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]},
        "status": node_status(n, kubelet_port(endpoint), now),
    })
}

/// The annotations the agent sets on its Nodes.
pub fn node_annotations(endpoint: Option<&Endpoint>) -> Value {
    let mut a = json!({"node.alpha.kubernetes.io/ttl": "0"});
    if let (Some(e), Some(map)) = (endpoint, a.as_object_mut())
        && let Value::Object(more) = e.annotations()
    {
        map.extend(more);
    }
    a
}

/// `status.nodeInfo`; `seed` makes the machine and boot ids of a node (its index, a hash of its
/// name).
pub fn node_info(seed: u64, runtime_version: &str) -> Value {
    json!({
        "machineID": format!("{:032x}", u128::from(seed) + 1),
        "systemUUID": format!("00000000-0000-0000-0000-{:012x}", (seed & 0xffff_ffff_ffff) + 1),
        "bootID": format!("00000000-0000-0000-0000-{:012x}", (seed & 0xffff_ffff_ffff) + 1),
        "kernelVersion": "6.0.0-nodeless",
        "osImage": "nodeless",
        "containerRuntimeVersion": runtime_version,
        "kubeletVersion": KUBELET_VERSION,
        "kubeProxyVersion": "",
        "operatingSystem": "linux",
        "architecture": arch(),
    })
}

/// The labels the agent sets.
pub fn node_labels(n: &NodeSpec) -> Value {
    json!({
        "kubernetes.io/hostname": n.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": arch(),
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": arch(),
    })
}

/// The node status the agent reports.
pub fn node_status(n: &NodeSpec, kubelet_port: u16, now: Timestamp) -> Value {
    let resources = json!({
        "cpu": n.cpu, "memory": n.memory, "pods": n.pods.to_string(),
        "ephemeral-storage": n.ephemeral_storage,
    });
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": conditions(now),
        "addresses": [
            {"type": "InternalIP", "address": n.internal_ip},
            {"type": "Hostname", "address": n.name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": node_info(u64::from(n.index), &n.runtime_version),
        "phase": "Running",
    })
}

/// Whether a node's observed conditions are what the agent reports (Ready True, pressures False).
pub fn conditions_current(node: &k8s_openapi::api::core::v1::Node) -> bool {
    let Some(cs) = node.status.as_ref().and_then(|s| s.conditions.as_ref()) else {
        return false;
    };
    let want = [
        ("Ready", "True"),
        ("MemoryPressure", "False"),
        ("DiskPressure", "False"),
        ("PIDPressure", "False"),
    ];
    want.iter()
        .all(|(t, s)| cs.iter().any(|c| c.type_ == *t && c.status == *s))
}

/// The node's Lease, renewed at `now`.
pub fn lease(node: &str, node_uid: Option<&str>, now: Timestamp) -> Value {
    let mut l = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node, "namespace": LEASE_NAMESPACE},
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": crate::status::micro_time(now),
        },
    });
    if let Some(uid) = node_uid {
        l["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]);
    }
    l
}

/// Pod IPs of one node's pod CIDR: every host address but the gateway (the first), lowest free
/// first.
#[derive(Debug, Clone)]
pub struct Ipam {
    cidr: Cidr,
    used: BTreeSet<Ipv4Addr>,
}

impl Ipam {
    /// The allocator of this pod CIDR.
    pub fn new(cidr: Cidr) -> Self {
        Ipam {
            cidr,
            used: BTreeSet::new(),
        }
    }

    /// The allocator of a CIDR given as text; None when it does not parse.
    pub fn parse(cidr: &str) -> Option<Self> {
        cidr.parse().ok().map(Self::new)
    }

    /// A free IP, or None when all are taken.
    pub fn allocate(&mut self) -> Option<String> {
        let ip = api::placement::allocate_ip(&self.cidr, &self.used)?;
        self.used.insert(ip);
        Some(ip.to_string())
    }

    fn assignable(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(ip)
            && ip != self.cidr.network
            && ip != self.cidr.gateway()
            && ip != self.cidr.broadcast()
    }

    /// Mark an IP as taken (a pod found running at startup).
    pub fn claim(&mut self, ip: &str) -> bool {
        match ip.parse::<Ipv4Addr>() {
            Ok(ip) if self.assignable(ip) => self.used.insert(ip),
            _ => false,
        }
    }

    /// Give an IP back.
    pub fn release(&mut self, ip: &str) {
        if let Ok(ip) = ip.parse::<Ipv4Addr>() {
            self.used.remove(&ip);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn node_object_has_what_kubelet_registers() {
        let n = NodeSpec::fake("fake-3", 3, "fake://0.1.0");
        let o = node_object(&n, None, Timestamp::UNIX_EPOCH);
        assert_eq!(o["spec"]["podCIDR"], "10.244.3.0/24");
        assert_eq!(o["metadata"]["labels"]["kubernetes.io/hostname"], "fake-3");
        assert_eq!(o["metadata"]["labels"]["kubernetes.io/os"], "linux");
        assert_eq!(o["status"]["allocatable"]["pods"], "110");
        assert_eq!(
            o["status"]["nodeInfo"]["kubeletVersion"],
            "v1.33.0-nodeless"
        );
        assert_eq!(o["status"]["addresses"][0]["address"], "10.250.0.5");
        assert_eq!(
            o["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
            10250
        );
        assert!(
            o["metadata"]["annotations"]
                .get(AGENT_ENDPOINT_ANNOTATION)
                .is_none()
        );
        let node: k8s_openapi::api::core::v1::Node = serde_json::from_value(o).unwrap();
        assert!(conditions_current(&node));
    }

    #[test]
    fn the_streaming_endpoint_is_published() {
        let n = NodeSpec::fake("w", 0, "fake://0.1.0");
        let e = Endpoint {
            url: "https://127.0.0.1:41000".into(),
            cert_sha256: "ab".repeat(32),
            port: 41000,
        };
        let o = node_object(&n, Some(&e), Timestamp::UNIX_EPOCH);
        let a = &o["metadata"]["annotations"];
        assert_eq!(a["nodeless.io/agent-endpoint"], "https://127.0.0.1:41000");
        assert_eq!(a["nodeless.io/agent-cert-sha256"], "ab".repeat(32));
        assert_eq!(a["node.alpha.kubernetes.io/ttl"], "0");
        assert_eq!(
            o["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"],
            41000
        );
    }

    #[test]
    fn ipam_allocates_and_reuses() {
        let mut ip = Ipam::parse(&indexed_pod_cidr(1)).unwrap();
        assert_eq!(ip.allocate().unwrap(), "10.244.1.2");
        assert!(ip.claim("10.244.1.3"));
        assert_eq!(ip.allocate().unwrap(), "10.244.1.4");
        ip.release("10.244.1.2");
        assert_eq!(ip.allocate().unwrap(), "10.244.1.2");
        assert!(!ip.claim("10.244.9.9"));
        assert!(!ip.claim("10.244.1.1"), "the gateway");
        assert!(!ip.claim("10.244.1.255"), "the broadcast address");
        let mut full = Ipam::parse("10.244.0.0/24").unwrap();
        for _ in 2..=254 {
            full.allocate().unwrap();
        }
        assert_eq!(full.allocate(), None);
        assert_eq!(NodeSpec::fake("x", 300, "").pod_cidr, "10.245.44.0/24");
        let mut wide = Ipam::parse("10.88.0.0/16").unwrap();
        assert_eq!(wide.allocate().unwrap(), "10.88.0.2");
        assert!(wide.claim("10.88.3.7"));
        assert!(Ipam::parse("10.88.0.1/16").is_none());
    }

    #[test]
    fn lease_spec() {
        let l = lease("n", Some("uid"), Timestamp::UNIX_EPOCH);
        assert_eq!(l["spec"]["holderIdentity"], "n");
        assert_eq!(l["spec"]["leaseDurationSeconds"], 40);
        assert_eq!(l["spec"]["renewTime"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(l["metadata"]["ownerReferences"][0]["kind"], "Node");
    }
}
