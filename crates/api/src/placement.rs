//! Placement of serverless pods (`serverless-scheduler`), as pure functions of plain values: the
//! host agents read from their Leases (`kube-system/nodeless-host-<HOST>`), what the existing
//! serverless Nodes already use, the choice of a host (spread or pack), the pod IP from the
//! host's pod CIDR, the name and the body of the per-pod Node, and upstream-shaped
//! `FailedScheduling` messages when nothing fits.
//!
//! The watch loop that feeds these functions, creates the Nodes and binds the pods lives in
//! `controllers::serverless`; this module must not depend on anything that does IO.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::{Value, json};

use crate::profile::{CAPACITY_ANNOTATION, PROFILE_LABEL};
use crate::sizing::{PodSize, parse_quantity};

/// Namespace of the host agents' Leases.
pub const HOST_LEASE_NAMESPACE: &str = "kube-system";
/// Prefix of a host agent's Lease name (`nodeless-host-<HOST>`).
pub const HOST_LEASE_PREFIX: &str = "nodeless-host-";
/// Label on a host agent's Lease (value `true`).
pub const HOST_AGENT_LABEL: &str = "nodeless.io/host-agent";
/// Lease annotation: JSON `{"cpu":"2","memory":"24Gi","pods":"110"}`.
pub const ALLOCATABLE_ANNOTATION: &str = "nodeless.io/allocatable";
/// Lease annotation: the host's pod subnet, e.g. `10.244.0.0/24`.
pub const POD_CIDR_ANNOTATION: &str = "nodeless.io/pod-cidr";
/// Lease and Node annotation: the agent's streaming server, e.g. `https://127.0.0.1:10250`.
pub const AGENT_ENDPOINT_ANNOTATION: &str = "nodeless.io/agent-endpoint";
/// Lease and Node annotation: lowercase hex SHA-256 of the agent's certificate (DER).
pub const AGENT_CERT_ANNOTATION: &str = "nodeless.io/agent-cert-sha256";
/// Node annotation: the pod's IP.
pub const POD_IP_ANNOTATION: &str = "nodeless.io/pod-ip";
/// Node annotation: `NAMESPACE/NAME` of the pod the Node was made for.
pub const POD_ANNOTATION: &str = "nodeless.io/pod";
/// Node annotation: the uid of the pod the Node was made for.
pub const POD_UID_ANNOTATION: &str = "nodeless.io/pod-uid";
/// Node label: the compute type (`serverless`).
pub const COMPUTE_TYPE_LABEL: &str = "nodeless.io/compute-type";
/// The value of [`COMPUTE_TYPE_LABEL`] (and of the taint) on serverless Nodes.
pub const SERVERLESS: &str = "serverless";
/// Node label: the host agent that runs the Node's pod.
pub const HOST_LABEL: &str = "nodeless.io/host";
/// Prefix of a serverless Node's name (`serverless-ip-A-B-C-D`).
pub const NODE_NAME_PREFIX: &str = "serverless-ip-";

const MIB: i64 = 1024 * 1024;

/// How to choose among the hosts that fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Placement {
    /// The host with the most free memory after placement (spreads pods over hosts).
    #[default]
    Spread,
    /// The host with the least free memory that still fits (fills hosts one by one).
    Pack,
}

impl FromStr for Placement {
    type Err = PlacementError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "spread" | "Spread" => Ok(Placement::Spread),
            "pack" | "Pack" => Ok(Placement::Pack),
            other => Err(PlacementError::UnknownPlacement(other.to_string())),
        }
    }
}

/// Why a host Lease or a CIDR could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("host lease {lease} has no annotation {annotation}")]
    MissingAnnotation {
        lease: String,
        annotation: &'static str,
    },
    #[error("host lease {lease}: invalid annotation {annotation} {value:?}: {reason}")]
    InvalidAnnotation {
        lease: String,
        annotation: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid IPv4 CIDR {0:?}")]
    InvalidCidr(String),
    #[error("unknown placement {0:?} (spread or pack)")]
    UnknownPlacement(String),
}

/// Amounts of what a host offers or its serverless Nodes use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    /// Bytes.
    pub memory: i64,
    pub pods: i64,
}

impl Resources {
    /// What a pod of this size takes: its vCPU, its memory and one pod.
    pub fn of_size(size: &PodSize) -> Self {
        Resources {
            milli_cpu: i64::from(size.millicpu),
            memory: i64::try_from(size.memory_mib)
                .unwrap_or(i64::MAX / MIB)
                .saturating_mul(MIB),
            pods: 1,
        }
    }

    fn add(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.pods = self.pods.saturating_add(o.pods);
    }
}

/// An IPv4 subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    fn mask(&self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        }
    }

    /// Whether the address is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The broadcast (last) address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    /// The gateway (the bridge): the first host address, `.1` in a /24.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).saturating_add(1))
    }
}

impl FromStr for Cidr {
    type Err = PlacementError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PlacementError::InvalidCidr(s.to_string());
        let (ip, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let cidr = Cidr {
            network: ip,
            prefix,
        };
        // The address must be the network address itself (as Kubernetes' podCIDR validation).
        let network = Ipv4Addr::from(u32::from(ip) & cidr.mask());
        if network != ip {
            return Err(bad());
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// A host agent, as its Lease describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// The host's name (`spec.holderIdentity`, else the Lease name without its prefix).
    pub name: String,
    pub allocatable: Resources,
    pub pod_cidr: Cidr,
    pub endpoint: String,
    pub cert_sha256: String,
    /// `renewTime + leaseDurationSeconds` is after `now`.
    pub alive: bool,
}

fn quantity_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Host {
    /// Read a host agent's Lease (see the contract: annotations `nodeless.io/allocatable`,
    /// `nodeless.io/pod-cidr`, `nodeless.io/agent-endpoint`, `nodeless.io/agent-cert-sha256`).
    pub fn from_lease(lease: &Lease, now: jiff::Timestamp) -> Result<Host, PlacementError> {
        let lease_name = lease.metadata.name.clone().unwrap_or_default();
        let spec = lease.spec.as_ref();
        let name = spec
            .and_then(|s| s.holder_identity.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| {
                lease_name
                    .strip_prefix(HOST_LEASE_PREFIX)
                    .unwrap_or(&lease_name)
                    .to_string()
            });
        let annotations = lease.metadata.annotations.clone().unwrap_or_default();
        let get = |annotation: &'static str| {
            annotations
                .get(annotation)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| PlacementError::MissingAnnotation {
                    lease: lease_name.clone(),
                    annotation,
                })
        };
        let invalid = |annotation: &'static str, value: &str, reason: String| {
            PlacementError::InvalidAnnotation {
                lease: lease_name.clone(),
                annotation,
                value: value.to_string(),
                reason,
            }
        };
        let alloc_text = get(ALLOCATABLE_ANNOTATION)?;
        let alloc: serde_json::Map<String, Value> = serde_json::from_str(alloc_text)
            .map_err(|e| invalid(ALLOCATABLE_ANNOTATION, alloc_text, e.to_string()))?;
        let amount = |key: &str, scale: i32| -> Result<i64, PlacementError> {
            let Some(text) = alloc.get(key).and_then(quantity_text) else {
                return Err(invalid(
                    ALLOCATABLE_ANNOTATION,
                    alloc_text,
                    format!("no {key:?}"),
                ));
            };
            let q = parse_quantity(&text)
                .map_err(|e| invalid(ALLOCATABLE_ANNOTATION, alloc_text, e.to_string()))?;
            q.scaled_ceil(scale)
                .and_then(|v| i64::try_from(v).ok())
                .ok_or_else(|| {
                    invalid(
                        ALLOCATABLE_ANNOTATION,
                        alloc_text,
                        format!("{key} must be a non-negative quantity of reasonable size"),
                    )
                })
        };
        let allocatable = Resources {
            milli_cpu: amount("cpu", 3)?,
            memory: amount("memory", 0)?,
            pods: amount("pods", 0)?,
        };
        let cidr_text = get(POD_CIDR_ANNOTATION)?;
        let pod_cidr: Cidr = cidr_text
            .parse()
            .map_err(|e: PlacementError| invalid(POD_CIDR_ANNOTATION, cidr_text, e.to_string()))?;
        let endpoint = get(AGENT_ENDPOINT_ANNOTATION)?.clone();
        let cert_sha256 = get(AGENT_CERT_ANNOTATION)?.clone();
        let alive = spec.is_some_and(|s| {
            let (Some(renew), Some(duration)) = (s.renew_time.as_ref(), s.lease_duration_seconds)
            else {
                return false;
            };
            renew
                .0
                .checked_add(jiff::SignedDuration::from_secs(i64::from(duration)))
                .is_ok_and(|until| until > now)
        });
        Ok(Host {
            name,
            allocatable,
            pod_cidr,
            endpoint,
            cert_sha256,
            alive,
        })
    }
}

/// What the existing serverless Nodes take: resources per host and the IPs in use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Used {
    /// Host name -> the sum of its serverless Nodes' sizes (and their count as `pods`).
    pub per_host: BTreeMap<String, Resources>,
    /// Every IP a serverless Node carries (from its name, else its `nodeless.io/pod-ip`).
    pub ips: BTreeSet<Ipv4Addr>,
}

impl Used {
    /// What `host` already uses.
    pub fn of(&self, host: &str) -> Resources {
        self.per_host.get(host).copied().unwrap_or_default()
    }

    /// Account for one more Node on `host`.
    pub fn add(&mut self, host: &str, ip: Ipv4Addr, size: &PodSize) {
        self.per_host
            .entry(host.to_string())
            .or_default()
            .add(&Resources::of_size(size));
        self.ips.insert(ip);
    }
}

/// Read `0.25vCPU 0.5GB` (the `CapacityProvisioned` annotation) back into a size.
pub fn parse_capacity_provisioned(s: &str) -> Option<PodSize> {
    let mut parts = s.split_whitespace();
    let cpu = parts.next()?.strip_suffix("vCPU")?;
    let mem = parts.next()?.strip_suffix("GB")?;
    if parts.next().is_some() {
        return None;
    }
    let millicpu = u32::try_from(parse_quantity(cpu).ok()?.scaled_ceil(3)?).ok()?;
    // GB of 1024 MiB: read as thousandths of a GB, then converted (rounding up).
    let milli_gb = parse_quantity(mem).ok()?.scaled_ceil(3)?;
    let memory_mib = u64::try_from(milli_gb.checked_mul(1024)?.div_ceil(1000)).ok()?;
    (millicpu > 0 && memory_mib > 0).then_some(PodSize {
        millicpu,
        memory_mib,
    })
}

/// The size a serverless Node stands for: its `CapacityProvisioned` annotation, else its
/// `status.capacity`.
pub fn node_size(node: &Node) -> Option<PodSize> {
    if let Some(size) = node
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CAPACITY_ANNOTATION))
        .and_then(|s| parse_capacity_provisioned(s))
    {
        return Some(size);
    }
    let cap = node.status.as_ref()?.capacity.as_ref()?;
    let cpu = parse_quantity(&cap.get("cpu")?.0).ok()?.scaled_ceil(3)?;
    let mem = parse_quantity(&cap.get("memory")?.0).ok()?.value()?;
    Some(PodSize {
        millicpu: u32::try_from(cpu).ok()?,
        memory_mib: u64::try_from(mem.div_ceil(1024 * 1024)).ok()?,
    })
}

/// The host a serverless Node belongs to (label `nodeless.io/host`).
pub fn node_host(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(HOST_LABEL)
        .map(String::as_str)
}

/// The uid of the pod a serverless Node was made for.
pub fn node_pod_uid(node: &Node) -> Option<&str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(POD_UID_ANNOTATION)
        .map(String::as_str)
}

/// The IP of a serverless Node: from its name, else its `nodeless.io/pod-ip` annotation.
pub fn node_ip(node: &Node) -> Option<Ipv4Addr> {
    node.metadata
        .name
        .as_deref()
        .and_then(parse_node_name)
        .or_else(|| {
            node.metadata
                .annotations
                .as_ref()?
                .get(POD_IP_ANNOTATION)?
                .parse()
                .ok()
        })
}

/// Whether a Node is a serverless one (label `nodeless.io/compute-type=serverless`).
pub fn is_serverless_node(node: &Node) -> bool {
    node.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(COMPUTE_TYPE_LABEL))
        .is_some_and(|v| v == SERVERLESS)
}

/// What the serverless Nodes use, per host, and their IPs. A Node without a readable size counts
/// as the smallest size (0.25 vCPU, 0.5 GB) so it is never free.
pub fn used<'a>(nodes: impl IntoIterator<Item = &'a Node>) -> Used {
    let mut used = Used::default();
    let smallest = PodSize {
        millicpu: 250,
        memory_mib: 512,
    };
    for node in nodes {
        if !is_serverless_node(node) {
            continue;
        }
        let ip = node_ip(node);
        if let Some(ip) = ip {
            used.ips.insert(ip);
        }
        if let Some(host) = node_host(node) {
            let size = node_size(node).unwrap_or(smallest);
            used.per_host
                .entry(host.to_string())
                .or_default()
                .add(&Resources::of_size(&size));
        }
    }
    used
}

/// The first free address of the subnet, skipping the network address, the gateway (the first
/// host address) and the broadcast address.
pub fn allocate_ip(cidr: &Cidr, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let first = u32::from(cidr.network).checked_add(2)?;
    let last = u32::from(cidr.broadcast()).checked_sub(1)?;
    (first..=last)
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
}

/// `10.244.0.2` -> `serverless-ip-10-244-0-2`.
pub fn node_name(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{NODE_NAME_PREFIX}{a}-{b}-{c}-{d}")
}

/// `serverless-ip-10-244-0-2` -> `10.244.0.2`; None for any other name.
pub fn parse_node_name(name: &str) -> Option<Ipv4Addr> {
    let rest = name.strip_prefix(NODE_NAME_PREFIX)?;
    let mut octets = [0u8; 4];
    let mut parts = rest.split('-');
    for o in &mut octets {
        let p = parts.next()?;
        // Canonical decimal only, so that the name round-trips.
        if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
            return None;
        }
        *o = p.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

const REASON_NOT_READY: &str = "not ready";
const REASON_CPU: &str = "Insufficient cpu";
const REASON_MEMORY: &str = "Insufficient memory";
const REASON_PODS: &str = "Too many pods";
const REASON_NO_IP: &str = "no free pod IP";

/// Why no host fits a pod, printed in the shape of upstream's `FailedScheduling` message:
/// `0/2 serverless hosts are available: 1 Insufficient memory, 1 not ready.`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unschedulable {
    pub num_hosts: usize,
    /// Reason -> number of hosts that gave it.
    pub reasons: BTreeMap<&'static str, usize>,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_hosts == 0 {
            return f.write_str("0/0 serverless hosts are available: no host agent is registered.");
        }
        let mut parts: Vec<String> = self
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        parts.sort();
        write!(
            f,
            "0/{} serverless hosts are available: {}.",
            self.num_hosts,
            parts.join(", ")
        )
    }
}

impl std::error::Error for Unschedulable {}

/// Every reason a host cannot take a pod of this size (empty when it can).
fn reasons(size: &PodSize, host: &Host, used: &Used) -> Vec<&'static str> {
    if !host.alive {
        return vec![REASON_NOT_READY];
    }
    let want = Resources::of_size(size);
    let have = used.of(&host.name);
    let mut out = Vec::new();
    if have.milli_cpu.saturating_add(want.milli_cpu) > host.allocatable.milli_cpu {
        out.push(REASON_CPU);
    }
    if have.memory.saturating_add(want.memory) > host.allocatable.memory {
        out.push(REASON_MEMORY);
    }
    if have.pods.saturating_add(1) > host.allocatable.pods {
        out.push(REASON_PODS);
    }
    if out.is_empty() && allocate_ip(&host.pod_cidr, &used.ips).is_none() {
        out.push(REASON_NO_IP);
    }
    out
}

/// Choose a host for a pod of this size: among the live hosts with room (cpu, memory, pods and a
/// free IP), spread takes the one with the most free memory after placement, pack the one with
/// the least; ties go to the first name.
pub fn choose_host<'a>(
    size: &PodSize,
    hosts: &'a [Host],
    used: &Used,
    placement: Placement,
) -> Result<&'a Host, Unschedulable> {
    let mut failed = Unschedulable {
        num_hosts: hosts.len(),
        reasons: BTreeMap::new(),
    };
    let want = Resources::of_size(size);
    let mut best: Option<(&Host, i64)> = None;
    for host in hosts {
        let why = reasons(size, host, used);
        if !why.is_empty() {
            for r in why {
                *failed.reasons.entry(r).or_default() += 1;
            }
            continue;
        }
        let free = host
            .allocatable
            .memory
            .saturating_sub(used.of(&host.name).memory)
            .saturating_sub(want.memory);
        let better = match best {
            None => true,
            Some((b, bf)) => {
                let by_free = match placement {
                    Placement::Spread => free.cmp(&bf).reverse(),
                    Placement::Pack => free.cmp(&bf),
                };
                by_free.then_with(|| host.name.cmp(&b.name)).is_lt()
            }
        };
        if better {
            best = Some((host, free));
        }
    }
    best.map(|(h, _)| h).ok_or(failed)
}

/// `250m`, `1`, `16`: a cpu quantity.
fn cpu_quantity(millicpu: u32) -> String {
    if millicpu.is_multiple_of(1000) {
        (millicpu / 1000).to_string()
    } else {
        format!("{millicpu}m")
    }
}

/// `512Mi`, `2Gi`: a memory quantity.
fn memory_quantity(mib: u64) -> String {
    if mib.is_multiple_of(1024) {
        format!("{}Gi", mib / 1024)
    } else {
        format!("{mib}Mi")
    }
}

/// The Node made for one serverless pod (see the contract's "Serverless nodes"): its labels,
/// annotations, taint, podCIDR, capacity = allocatable = the pod's size, and addresses.
pub fn serverless_node(pod: &Pod, host: &Host, ip: Ipv4Addr, size: &PodSize) -> Value {
    let name = node_name(ip);
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    let mut labels = json!({
        COMPUTE_TYPE_LABEL: SERVERLESS,
        HOST_LABEL: host.name,
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": SERVERLESS,
    });
    if let Some(profile) = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(PROFILE_LABEL))
    {
        labels[PROFILE_LABEL] = json!(profile);
    }
    let capacity_provisioned = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CAPACITY_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| size.capacity_provisioned());
    let capacity = json!({
        "cpu": cpu_quantity(size.millicpu),
        "memory": memory_quantity(size.memory_mib),
        "pods": "1",
    });
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                POD_IP_ANNOTATION: ip.to_string(),
                POD_ANNOTATION: format!("{ns}/{pod_name}"),
                POD_UID_ANNOTATION: pod.metadata.uid.as_deref().unwrap_or_default(),
                AGENT_ENDPOINT_ANNOTATION: host.endpoint,
                AGENT_CERT_ANNOTATION: host.cert_sha256,
                CAPACITY_ANNOTATION: capacity_provisioned,
            },
        },
        "spec": {
            "taints": [{"key": COMPUTE_TYPE_LABEL, "value": SERVERLESS, "effect": "NoSchedule"}],
            "podCIDR": format!("{ip}/32"),
            "podCIDRs": [format!("{ip}/32")],
        },
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": ip.to_string()},
                {"type": "Hostname", "address": name},
            ],
        },
    })
}

/// The size of a serverless pod: its `CapacityProvisioned` annotation (set by admission), else
/// computed from its spec; None when neither can be read.
pub fn pod_size_of(pod: &Pod) -> Option<PodSize> {
    if let Some(size) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CAPACITY_ANNOTATION))
        .and_then(|s| parse_capacity_provisioned(s))
    {
        return Some(size);
    }
    let spec = serde_json::to_value(pod.spec.as_ref()?).ok()?;
    crate::sizing::pod_size(&spec).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn now() -> jiff::Timestamp {
        "2026-01-01T00:00:00Z".parse().unwrap()
    }

    fn lease(host: &str, cidr: &str, memory: &str, renewed_secs_ago: i64) -> Lease {
        let renew = now()
            .checked_sub(jiff::SignedDuration::from_secs(renewed_secs_ago))
            .unwrap();
        serde_json::from_value(json!({
            "metadata": {
                "name": format!("nodeless-host-{host}"),
                "namespace": "kube-system",
                "labels": {HOST_AGENT_LABEL: "true"},
                "annotations": {
                    ALLOCATABLE_ANNOTATION: format!(r#"{{"cpu":"2","memory":"{memory}","pods":"110"}}"#),
                    POD_CIDR_ANNOTATION: cidr,
                    AGENT_ENDPOINT_ANNOTATION: "https://127.0.0.1:10250",
                    AGENT_CERT_ANNOTATION: "ab".repeat(32),
                },
            },
            "spec": {
                "holderIdentity": host,
                "leaseDurationSeconds": 40,
                "renewTime": renew.to_string(),
            },
        }))
        .unwrap()
    }

    fn host(name: &str, memory: &str) -> Host {
        Host::from_lease(&lease(name, "10.244.0.0/24", memory, 1), now()).unwrap()
    }

    fn small() -> PodSize {
        PodSize {
            millicpu: 250,
            memory_mib: 512,
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {
                "name": "web-1", "namespace": "team", "uid": "u-1",
                "labels": {PROFILE_LABEL: "fp-default"},
                "annotations": {CAPACITY_ANNOTATION: "0.25vCPU 0.5GB"},
            },
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        }))
        .unwrap()
    }

    #[test]
    fn parses_a_host_lease() {
        let h = Host::from_lease(&lease("h1", "10.244.0.0/24", "24Gi", 5), now()).unwrap();
        assert_eq!(h.name, "h1");
        assert_eq!(
            h.allocatable,
            Resources {
                milli_cpu: 2000,
                memory: 24 * 1024 * MIB,
                pods: 110
            }
        );
        assert_eq!(h.pod_cidr.to_string(), "10.244.0.0/24");
        assert_eq!(h.endpoint, "https://127.0.0.1:10250");
        assert_eq!(h.cert_sha256.len(), 64);
        assert!(h.alive);
    }

    #[test]
    fn a_lease_past_its_duration_is_not_alive() {
        let h = Host::from_lease(&lease("h1", "10.244.0.0/24", "1Gi", 41), now()).unwrap();
        assert!(!h.alive);
        let h = Host::from_lease(&lease("h1", "10.244.0.0/24", "1Gi", 39), now()).unwrap();
        assert!(h.alive);
        let mut l = lease("h1", "10.244.0.0/24", "1Gi", 0);
        l.spec.as_mut().unwrap().renew_time = None;
        assert!(!Host::from_lease(&l, now()).unwrap().alive);
    }

    #[test]
    fn bad_leases_are_errors() {
        let mut l = lease("h1", "10.244.0.0/24", "1Gi", 0);
        l.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(POD_CIDR_ANNOTATION);
        assert_eq!(
            Host::from_lease(&l, now()),
            Err(PlacementError::MissingAnnotation {
                lease: "nodeless-host-h1".into(),
                annotation: POD_CIDR_ANNOTATION
            })
        );
        let l = lease("h1", "10.244.0.1/24", "1Gi", 0);
        assert!(matches!(
            Host::from_lease(&l, now()),
            Err(PlacementError::InvalidAnnotation { annotation, .. }) if annotation == POD_CIDR_ANNOTATION
        ));
        let l = lease("h1", "10.244.0.0/24", "lots", 0);
        assert!(matches!(
            Host::from_lease(&l, now()),
            Err(PlacementError::InvalidAnnotation { annotation, .. }) if annotation == ALLOCATABLE_ANNOTATION
        ));
    }

    #[test]
    fn host_name_falls_back_to_the_lease_name() {
        let mut l = lease("h9", "10.244.0.0/24", "1Gi", 0);
        l.spec.as_mut().unwrap().holder_identity = None;
        assert_eq!(Host::from_lease(&l, now()).unwrap().name, "h9");
    }

    #[test]
    fn node_names_round_trip() {
        let ip = Ipv4Addr::new(10, 244, 0, 2);
        assert_eq!(node_name(ip), "serverless-ip-10-244-0-2");
        assert_eq!(parse_node_name("serverless-ip-10-244-0-2"), Some(ip));
        for bad in [
            "serverless-ip-10-244-0",
            "serverless-ip-10-244-0-2-1",
            "serverless-ip-10-244-0-256",
            "serverless-ip-10-244-0-02",
            "ip-10-244-0-2",
            "serverless-ip-10-244--2",
        ] {
            assert_eq!(parse_node_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn allocates_skipping_network_gateway_and_broadcast() {
        let cidr: Cidr = "10.244.0.0/30".parse().unwrap();
        let mut used = BTreeSet::new();
        assert_eq!(
            allocate_ip(&cidr, &used),
            Some(Ipv4Addr::new(10, 244, 0, 2))
        );
        used.insert(Ipv4Addr::new(10, 244, 0, 2));
        // .3 is the broadcast of a /30.
        assert_eq!(allocate_ip(&cidr, &used), None);

        let cidr: Cidr = "10.244.1.0/24".parse().unwrap();
        let mut used: BTreeSet<Ipv4Addr> =
            (2..=253).map(|d| Ipv4Addr::new(10, 244, 1, d)).collect();
        // An IP of another subnet does not matter.
        used.insert(Ipv4Addr::new(10, 244, 0, 254));
        assert_eq!(
            allocate_ip(&cidr, &used),
            Some(Ipv4Addr::new(10, 244, 1, 254))
        );
        used.insert(Ipv4Addr::new(10, 244, 1, 254));
        assert_eq!(allocate_ip(&cidr, &used), None);
        // A gap is reused first.
        used.remove(&Ipv4Addr::new(10, 244, 1, 7));
        assert_eq!(
            allocate_ip(&cidr, &used),
            Some(Ipv4Addr::new(10, 244, 1, 7))
        );
        for tiny in ["10.0.0.0/31", "10.0.0.1/32"] {
            let c: Cidr = tiny.parse().unwrap();
            assert_eq!(allocate_ip(&c, &BTreeSet::new()), None);
        }
    }

    #[test]
    fn cidrs_parse_strictly() {
        let c: Cidr = "10.244.0.0/16".parse().unwrap();
        assert_eq!(c.broadcast(), Ipv4Addr::new(10, 244, 255, 255));
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 244, 0, 1));
        assert!(c.contains(Ipv4Addr::new(10, 244, 3, 4)));
        assert!(!c.contains(Ipv4Addr::new(10, 245, 0, 0)));
        for bad in [
            "10.244.0.0",
            "10.244.0.0/33",
            "10.244.0.1/24",
            "x/24",
            "::/0",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn capacity_provisioned_round_trips() {
        for (text, millicpu, memory_mib) in [
            ("0.25vCPU 0.5GB", 250, 512),
            ("2vCPU 9GB", 2000, 9 * 1024),
            ("0.5vCPU 1GB", 500, 1024),
            ("16vCPU 120GB", 16000, 120 * 1024),
        ] {
            let size = parse_capacity_provisioned(text).unwrap();
            assert_eq!(
                size,
                PodSize {
                    millicpu,
                    memory_mib
                }
            );
            assert_eq!(size.capacity_provisioned(), text);
        }
        for bad in ["", "0.25vCPU", "0.25 0.5GB", "xvCPU 1GB", "1vCPU 1GB extra"] {
            assert_eq!(parse_capacity_provisioned(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_node_is_what_the_contract_lists() {
        let h = host("h1", "24Gi");
        let ip = Ipv4Addr::new(10, 244, 0, 2);
        let n = serverless_node(&pod(), &h, ip, &small());
        assert_eq!(
            n,
            json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": "serverless-ip-10-244-0-2",
                    "labels": {
                        "nodeless.io/compute-type": "serverless",
                        "nodeless.io/host": "h1",
                        "kubernetes.io/hostname": "serverless-ip-10-244-0-2",
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "node.kubernetes.io/instance-type": "serverless",
                        "nodeless.io/profile": "fp-default",
                    },
                    "annotations": {
                        "nodeless.io/pod-ip": "10.244.0.2",
                        "nodeless.io/pod": "team/web-1",
                        "nodeless.io/pod-uid": "u-1",
                        "nodeless.io/agent-endpoint": "https://127.0.0.1:10250",
                        "nodeless.io/agent-cert-sha256": "ab".repeat(32),
                        "CapacityProvisioned": "0.25vCPU 0.5GB",
                    },
                },
                "spec": {
                    "taints": [{"key": "nodeless.io/compute-type", "value": "serverless", "effect": "NoSchedule"}],
                    "podCIDR": "10.244.0.2/32",
                    "podCIDRs": ["10.244.0.2/32"],
                },
                "status": {
                    "capacity": {"cpu": "250m", "memory": "512Mi", "pods": "1"},
                    "allocatable": {"cpu": "250m", "memory": "512Mi", "pods": "1"},
                    "addresses": [
                        {"type": "InternalIP", "address": "10.244.0.2"},
                        {"type": "Hostname", "address": "serverless-ip-10-244-0-2"},
                    ],
                },
            })
        );
        let big = PodSize {
            millicpu: 2000,
            memory_mib: 9 * 1024,
        };
        let n = serverless_node(&pod(), &h, ip, &big);
        assert_eq!(
            n["status"]["capacity"],
            json!({"cpu": "2", "memory": "9Gi", "pods": "1"})
        );
        // The node round-trips through the typed Node and is read back.
        let typed: Node = serde_json::from_value(n).unwrap();
        assert!(is_serverless_node(&typed));
        assert_eq!(node_host(&typed), Some("h1"));
        assert_eq!(node_pod_uid(&typed), Some("u-1"));
        assert_eq!(node_ip(&typed), Some(ip));
        // The annotation wins over status.capacity: it is copied from the pod.
        assert_eq!(node_size(&typed), Some(small()));
    }

    #[test]
    fn used_sums_nodes_per_host() {
        let h = host("h1", "24Gi");
        let big = PodSize {
            millicpu: 2000,
            memory_mib: 4096,
        };
        let mut nodes: Vec<Node> = [(2, small()), (3, big)]
            .into_iter()
            .map(|(d, size)| {
                serde_json::from_value(serverless_node(
                    &pod(),
                    &h,
                    Ipv4Addr::new(10, 244, 0, d),
                    &size,
                ))
                .unwrap()
            })
            .collect();
        // Without the annotation, status.capacity tells the size.
        nodes[1]
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(CAPACITY_ANNOTATION);
        // An ordinary node is not counted.
        nodes.push(serde_json::from_value(json!({"metadata": {"name": "worker-1"}})).unwrap());
        let u = used(&nodes);
        assert_eq!(
            u.of("h1"),
            Resources {
                milli_cpu: 2250,
                memory: 4608 * MIB,
                pods: 2
            }
        );
        assert_eq!(u.of("h2"), Resources::default());
        assert_eq!(
            u.ips,
            BTreeSet::from([Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 0, 3)])
        );
    }

    #[test]
    fn spread_and_pack() {
        let hosts = vec![host("a", "4Gi"), host("b", "4Gi")];
        let mut u = Used::default();
        // Empty and equal: ties go to the first name either way.
        assert_eq!(
            choose_host(&small(), &hosts, &u, Placement::Spread)
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            choose_host(&small(), &hosts, &u, Placement::Pack)
                .unwrap()
                .name,
            "a"
        );
        u.add("a", Ipv4Addr::new(10, 244, 0, 2), &small());
        assert_eq!(
            choose_host(&small(), &hosts, &u, Placement::Spread)
                .unwrap()
                .name,
            "b"
        );
        assert_eq!(
            choose_host(&small(), &hosts, &u, Placement::Pack)
                .unwrap()
                .name,
            "a"
        );
        // Pack moves on when the fuller host has no room left.
        let two_gb = PodSize {
            millicpu: 250,
            memory_mib: 2048,
        };
        u.add("a", Ipv4Addr::new(10, 244, 0, 3), &two_gb);
        // a has 1 GiB free: a 2 GB pod only fits on b.
        assert_eq!(
            choose_host(&two_gb, &hosts, &u, Placement::Pack)
                .unwrap()
                .name,
            "b"
        );
    }

    #[test]
    fn nothing_fits_says_why_like_upstream() {
        let mut dead = host("a", "64Gi");
        dead.alive = false;
        let hosts = vec![dead, host("b", "1Gi")];
        let big = PodSize {
            millicpu: 1000,
            memory_mib: 2048,
        };
        let err = choose_host(&big, &hosts, &Used::default(), Placement::Spread).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 serverless hosts are available: 1 Insufficient memory, 1 not ready."
        );
        let huge = PodSize {
            millicpu: 4000,
            memory_mib: 8192,
        };
        let err = choose_host(&huge, &hosts, &Used::default(), Placement::Spread).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 serverless hosts are available: 1 Insufficient cpu, 1 Insufficient memory, 1 not ready."
        );
        let err = choose_host(&big, &[], &Used::default(), Placement::Pack).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/0 serverless hosts are available: no host agent is registered."
        );
    }

    #[test]
    fn pods_and_ips_limit_a_host() {
        let mut l = lease("a", "10.244.0.0/30", "8Gi", 0);
        l.metadata.annotations.as_mut().unwrap().insert(
            ALLOCATABLE_ANNOTATION.into(),
            r#"{"cpu":"4","memory":"8Gi","pods":"1"}"#.into(),
        );
        let hosts = vec![Host::from_lease(&l, now()).unwrap()];
        let mut u = Used::default();
        assert!(choose_host(&small(), &hosts, &u, Placement::Spread).is_ok());
        // The only IP of the /30 is taken by a Node of another host.
        u.ips.insert(Ipv4Addr::new(10, 244, 0, 2));
        let err = choose_host(&small(), &hosts, &u, Placement::Spread).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/1 serverless hosts are available: 1 no free pod IP."
        );
        u.add("a", Ipv4Addr::new(10, 244, 0, 2), &small());
        let err = choose_host(&small(), &hosts, &u, Placement::Spread).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/1 serverless hosts are available: 1 Too many pods."
        );
    }

    #[test]
    fn pod_size_from_annotation_or_spec() {
        assert_eq!(pod_size_of(&pod()), Some(small()));
        let mut p = pod();
        p.metadata.annotations = None;
        p.spec.as_mut().unwrap().containers[0].resources = Some(
            serde_json::from_value(json!({"requests": {"cpu": "1", "memory": "8Gi"}})).unwrap(),
        );
        assert_eq!(
            pod_size_of(&p),
            Some(PodSize {
                millicpu: 2000,
                memory_mib: 9 * 1024
            })
        );
    }

    #[test]
    fn placement_parses() {
        assert_eq!("spread".parse::<Placement>(), Ok(Placement::Spread));
        assert_eq!("pack".parse::<Placement>(), Ok(Placement::Pack));
        assert!("random".parse::<Placement>().is_err());
        assert_eq!(Placement::default(), Placement::Spread);
    }
}
