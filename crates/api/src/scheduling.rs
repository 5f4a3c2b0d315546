//! Scheduling decisions of the default scheduler (`default-scheduler`), as a pure function of
//! (pod, snapshot of nodes and pods): the filters, the scores and upstream's "0/N nodes are
//! available" message. The watch loop that feeds the snapshot and binds lives in
//! `controllers::scheduler`; this module must not depend on anything that does IO.
//!
//! Filters, in upstream's plugin order (the first one that fails decides a node's reason):
//! `NodeUnschedulable`, `TaintToleration` (a node that is not Ready counts as tainted
//! `node.kubernetes.io/not-ready` or `node.kubernetes.io/unreachable`, `NoSchedule`, as the node
//! lifecycle controller taints it), `NodeAffinity` (nodeSelector and required node affinity),
//! `NodeResourcesFit` (cpu, memory, ephemeral-storage, pod count; every failing resource is a
//! reason). Scores: least allocated (cpu and memory, with upstream's non-zero defaults for pods
//! without requests) plus the spread of the pods of the same controller across nodes (weight 2,
//! as `PodTopologySpread`'s system default). Ties are broken by a hash of the pod's uid, so the
//! decision is deterministic.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::sizing::parse_quantity;

/// The scheduler's name, as upstream.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";
/// Taint of a node with `spec.unschedulable`.
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";
/// Taint of a node whose Ready condition is False.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
/// Taint of a node whose Ready condition is Unknown.
pub const TAINT_UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// CPU counted for scoring a container without a cpu request (upstream `DefaultMilliCPURequest`).
pub const DEFAULT_MILLI_CPU_REQUEST: i64 = 100;
/// Memory counted for scoring a container without a memory request (`DefaultMemoryRequest`).
pub const DEFAULT_MEMORY_REQUEST: i64 = 200 * 1024 * 1024;
/// The largest score a scoring plugin gives a node.
pub const MAX_NODE_SCORE: i64 = 100;

const REASON_UNSCHEDULABLE: &str = "node(s) were unschedulable";
const REASON_AFFINITY: &str = "node(s) didn't match Pod's node affinity/selector";
const REASON_TOO_MANY_PODS: &str = "Too many pods";
const PREEMPTION_NOT_HELPFUL: &str = "Preemption is not helpful for scheduling";
const PREEMPTION_NO_VICTIMS: &str = "No preemption victims found for incoming pod";
/// Upstream's message when there is no node at all.
pub const NO_NODES_AVAILABLE: &str = "no nodes available to schedule pods";

/// Amounts of the resources the scheduler accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub milli_cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

impl Resources {
    fn add(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_add(o.milli_cpu);
        self.memory = self.memory.saturating_add(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_add(o.ephemeral_storage);
    }
    fn sub(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.saturating_sub(o.milli_cpu);
        self.memory = self.memory.saturating_sub(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.saturating_sub(o.ephemeral_storage);
    }
    fn max(&mut self, o: &Resources) {
        self.milli_cpu = self.milli_cpu.max(o.milli_cpu);
        self.memory = self.memory.max(o.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(o.ephemeral_storage);
    }
    fn is_zero(&self) -> bool {
        *self == Resources::default()
    }
}

fn milli(q: Option<&Quantity>) -> i64 {
    q.and_then(|q| parse_quantity(&q.0).ok())
        .and_then(|q| q.milli_value())
        .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn value(q: Option<&Quantity>) -> i64 {
    q.and_then(|q| parse_quantity(&q.0).ok())
        .and_then(|q| q.value())
        .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

fn resources_of(map: Option<&BTreeMap<String, Quantity>>) -> Resources {
    let Some(m) = map else {
        return Resources::default();
    };
    Resources {
        milli_cpu: milli(m.get("cpu")),
        memory: value(m.get("memory")),
        ephemeral_storage: value(m.get("ephemeral-storage")),
    }
}

/// A container's requests; a resource with only a limit requests its limit (API defaulting).
fn container_requests(c: &Container, non_zero: bool) -> Resources {
    let r = c.resources.as_ref();
    let mut req = resources_of(r.and_then(|r| r.requests.as_ref()));
    let lim = resources_of(r.and_then(|r| r.limits.as_ref()));
    let has = |name: &str| {
        r.and_then(|r| r.requests.as_ref())
            .is_some_and(|m| m.contains_key(name))
    };
    if !has("cpu") {
        req.milli_cpu = lim.milli_cpu;
    }
    if !has("memory") {
        req.memory = lim.memory;
    }
    if !has("ephemeral-storage") {
        req.ephemeral_storage = lim.ephemeral_storage;
    }
    if non_zero {
        if req.milli_cpu == 0 {
            req.milli_cpu = DEFAULT_MILLI_CPU_REQUEST;
        }
        if req.memory == 0 {
            req.memory = DEFAULT_MEMORY_REQUEST;
        }
    }
    req
}

/// What a pod requests, as upstream's `resource.PodRequests`: the sum over the containers (and
/// the sidecars, init containers with `restartPolicy: Always`), at least each init container's
/// request (plus the sidecars started before it), plus the pod overhead. With `non_zero`, a
/// container without a cpu/memory request counts upstream's defaults (for scoring).
pub fn pod_requests(spec: &PodSpec, non_zero: bool) -> Resources {
    let mut sum = Resources::default();
    for c in &spec.containers {
        sum.add(&container_requests(c, non_zero));
    }
    let mut sidecars = Resources::default();
    let mut init_max = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let r = container_requests(c, non_zero);
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&r);
            sum.add(&r);
        } else {
            let mut with = r;
            with.add(&sidecars);
            init_max.max(&with);
        }
    }
    sum.max(&init_max);
    if let Some(o) = spec.overhead.as_ref() {
        sum.add(&resources_of(Some(o)));
    }
    sum
}

/// A node as the filters see it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Spec taints plus the ones implied by `unschedulable` and the Ready condition.
    pub taints: Vec<Taint>,
    pub unschedulable: bool,
    pub allocatable: Resources,
    pub allocatable_pods: i64,
}

impl NodeInfo {
    /// Read what the scheduler needs from a Node.
    pub fn from_node(node: &Node) -> Self {
        let name = node.metadata.name.clone().unwrap_or_default();
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let mut taints: Vec<Taint> = spec.and_then(|s| s.taints.clone()).unwrap_or_default();
        let unschedulable = spec.and_then(|s| s.unschedulable).unwrap_or(false);
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        let implied = match ready.as_deref() {
            Some("True") => None,
            Some("Unknown") => Some(TAINT_UNREACHABLE),
            _ => Some(TAINT_NOT_READY),
        };
        if let Some(key) = implied
            && !taints
                .iter()
                .any(|t| t.key == key && t.effect == "NoSchedule")
        {
            taints.push(Taint {
                key: key.to_string(),
                effect: "NoSchedule".to_string(),
                ..Default::default()
            });
        }
        let alloc = status.and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()));
        NodeInfo {
            name,
            labels: node.metadata.labels.clone().unwrap_or_default(),
            taints,
            unschedulable,
            allocatable: resources_of(alloc),
            allocatable_pods: value(alloc.and_then(|a| a.get("pods"))),
        }
    }
}

/// What the bound, non-terminated pods of one node use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub requested: Resources,
    /// Requests with the non-zero defaults, for scoring.
    pub non_zero: Resources,
    pub pods: i64,
    /// Pods per controller uid.
    pub by_controller: HashMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq)]
struct PodEntry {
    node: String,
    requested: Resources,
    non_zero: Resources,
    controller: Option<String>,
}

/// The nodes and the pods bound to them, maintained incrementally from watches.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    nodes: BTreeMap<String, NodeInfo>,
    usage: HashMap<String, NodeUsage>,
    pods: HashMap<String, PodEntry>,
}

/// The uid of the pod's controller (the ownerReference with `controller: true`).
pub fn controller_uid(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.clone())
}

fn pod_key(pod: &Pod) -> String {
    match pod.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => uid.to_string(),
        _ => format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default()
        ),
    }
}

/// Whether a pod is Succeeded or Failed (it no longer holds node resources).
pub fn is_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Snapshot {
    /// A snapshot of these nodes and pods.
    pub fn new<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        pods: impl IntoIterator<Item = &'a Pod>,
    ) -> Self {
        let mut s = Snapshot::default();
        for n in nodes {
            s.upsert_node(n);
        }
        for p in pods {
            s.upsert_pod(p);
        }
        s
    }

    /// Add or replace a node.
    pub fn upsert_node(&mut self, node: &Node) {
        let info = NodeInfo::from_node(node);
        self.nodes.insert(info.name.clone(), info);
    }

    /// Forget a node (its pods' usage is kept until they go).
    pub fn remove_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Account for a pod: bound and not terminated pods use their node's resources.
    pub fn upsert_pod(&mut self, pod: &Pod) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() || is_terminated(pod) {
            self.remove_pod(pod);
            return;
        }
        self.assume(pod, &node);
    }

    /// Account for a pod as bound to `node` (before the binding is observed).
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let entry = PodEntry {
            node: node.to_string(),
            requested: pod_requests(spec, false),
            non_zero: pod_requests(spec, true),
            controller: controller_uid(pod),
        };
        let key = pod_key(pod);
        if self.pods.get(&key) == Some(&entry) {
            return;
        }
        self.remove_key(&key);
        let u = self.usage.entry(entry.node.clone()).or_default();
        u.requested.add(&entry.requested);
        u.non_zero.add(&entry.non_zero);
        u.pods += 1;
        if let Some(c) = &entry.controller {
            *u.by_controller.entry(c.clone()).or_default() += 1;
        }
        self.pods.insert(key, entry);
    }

    /// Stop accounting for a pod.
    pub fn remove_pod(&mut self, pod: &Pod) {
        self.remove_key(&pod_key(pod));
    }

    fn remove_key(&mut self, key: &str) {
        let Some(e) = self.pods.remove(key) else {
            return;
        };
        if let Some(u) = self.usage.get_mut(&e.node) {
            u.requested.sub(&e.requested);
            u.non_zero.sub(&e.non_zero);
            u.pods -= 1;
            if let Some(c) = &e.controller
                && let Some(n) = u.by_controller.get_mut(c)
            {
                *n -= 1;
                if *n <= 0 {
                    u.by_controller.remove(c);
                }
            }
            if u.pods <= 0 {
                self.usage.remove(&e.node);
            }
        }
    }

    /// The node named so.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.get(name)
    }

    /// What the pods bound to a node use.
    pub fn usage(&self, node: &str) -> NodeUsage {
        self.usage.get(node).cloned().unwrap_or_default()
    }

    /// The number of nodes.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// Why no node fits a pod, printed as upstream's `FitError`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitError {
    pub num_nodes: usize,
    /// Reason -> number of nodes that gave it.
    pub reasons: BTreeMap<String, usize>,
    /// The preemption (post-filter) message, e.g. `preemption: 0/3 nodes are available: ...`.
    pub post_filter: String,
}

impl fmt::Display for FitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.num_nodes == 0 {
            return f.write_str(NO_NODES_AVAILABLE);
        }
        write!(f, "{}", histogram(self.num_nodes, &self.reasons))?;
        if !self.post_filter.is_empty() {
            write!(f, " {}.", self.post_filter)?;
        }
        Ok(())
    }
}

impl std::error::Error for FitError {}

fn histogram(num_nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut parts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    parts.sort();
    let mut s = format!("0/{num_nodes} nodes are available:");
    if !parts.is_empty() {
        s.push_str(&format!(" {}.", parts.join(", ")));
    }
    s
}

/// Why one node does not fit; `resolvable` when preemption could help (resources).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFailure {
    pub reasons: Vec<String>,
    pub resolvable: bool,
}

/// Upstream `Toleration.ToleratesTaint`.
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(e) = t.effect.as_deref().filter(|e| !e.is_empty())
        && e != taint.effect
    {
        return false;
    }
    if let Some(k) = t.key.as_deref().filter(|k| !k.is_empty())
        && k != taint.key
    {
        return false;
    }
    match t.operator.as_deref().unwrap_or("") {
        "" | "Equal" => t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        "Exists" => true,
        _ => false,
    }
}

fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| tolerates(t, taint))
}

fn requirement_matches(r: &NodeSelectorRequirement, get: impl Fn(&str) -> Option<String>) -> bool {
    let values = r.values.as_deref().unwrap_or(&[]);
    let v = get(&r.key);
    match r.operator.as_str() {
        "In" => v.is_some_and(|v| values.contains(&v)),
        "NotIn" => v.is_none_or(|v| !values.contains(&v)),
        "Exists" => v.is_some(),
        "DoesNotExist" => v.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), [bound]) = (v, values) else {
                return false;
            };
            let (Ok(v), Ok(bound)) = (v.parse::<i64>(), bound.parse::<i64>()) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node selector term matches: every expression and field; an empty term matches nothing.
pub fn term_matches(term: &NodeSelectorTerm, node: &NodeInfo) -> bool {
    let exprs = term.match_expressions.as_deref().unwrap_or(&[]);
    let fields = term.match_fields.as_deref().unwrap_or(&[]);
    if exprs.is_empty() && fields.is_empty() {
        return false;
    }
    exprs
        .iter()
        .all(|r| requirement_matches(r, |k| node.labels.get(k).cloned()))
        && fields
            .iter()
            .all(|r| requirement_matches(r, |k| (k == "metadata.name").then(|| node.name.clone())))
}

/// The NodeAffinity filter: nodeSelector and required node affinity.
pub fn affinity_matches(spec: &PodSpec, node: &NodeInfo) -> bool {
    if let Some(sel) = spec.node_selector.as_ref()
        && !sel.iter().all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return false;
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        Some(r) => r.node_selector_terms.iter().any(|t| term_matches(t, node)),
        None => true,
    }
}

/// Run the filters on one node; None when the pod fits.
pub fn filter(
    spec: &PodSpec,
    requests: &Resources,
    node: &NodeInfo,
    usage: &NodeUsage,
) -> Option<NodeFailure> {
    let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
    let unresolvable = |r: String| {
        Some(NodeFailure {
            reasons: vec![r],
            resolvable: false,
        })
    };
    if node.unschedulable {
        let taint = Taint {
            key: TAINT_UNSCHEDULABLE.into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        if !tolerated(tolerations, &taint) {
            return unresolvable(REASON_UNSCHEDULABLE.into());
        }
    }
    for taint in &node.taints {
        if (taint.effect == "NoSchedule" || taint.effect == "NoExecute")
            && !tolerated(tolerations, taint)
        {
            return unresolvable(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                taint.key,
                taint.value.as_deref().unwrap_or("")
            ));
        }
    }
    if !affinity_matches(spec, node) {
        return unresolvable(REASON_AFFINITY.into());
    }
    let mut reasons = Vec::new();
    if usage.pods + 1 > node.allocatable_pods {
        reasons.push(REASON_TOO_MANY_PODS.to_string());
    }
    if !requests.is_zero() {
        let free = |alloc: i64, used: i64| alloc.saturating_sub(used);
        if requests.milli_cpu > 0
            && requests.milli_cpu > free(node.allocatable.milli_cpu, usage.requested.milli_cpu)
        {
            reasons.push("Insufficient cpu".into());
        }
        if requests.memory > 0
            && requests.memory > free(node.allocatable.memory, usage.requested.memory)
        {
            reasons.push("Insufficient memory".into());
        }
        if requests.ephemeral_storage > 0
            && requests.ephemeral_storage
                > free(
                    node.allocatable.ephemeral_storage,
                    usage.requested.ephemeral_storage,
                )
        {
            reasons.push("Insufficient ephemeral-storage".into());
        }
    }
    if reasons.is_empty() {
        None
    } else {
        Some(NodeFailure {
            reasons,
            resolvable: true,
        })
    }
}

/// Least-allocated score (0..=100) of cpu and memory after placing the pod.
pub fn least_allocated(non_zero: &Resources, node: &NodeInfo, usage: &NodeUsage) -> i64 {
    let one = |alloc: i64, used: i64, req: i64| {
        if alloc <= 0 {
            return 0;
        }
        let after = used.saturating_add(req);
        if after > alloc {
            return 0;
        }
        (alloc - after).saturating_mul(MAX_NODE_SCORE) / alloc
    };
    (one(
        node.allocatable.milli_cpu,
        usage.non_zero.milli_cpu,
        non_zero.milli_cpu,
    ) + one(
        node.allocatable.memory,
        usage.non_zero.memory,
        non_zero.memory,
    )) / 2
}

/// Spread score (0..=100): fewer pods of the same controller on the node score higher.
pub fn spread(controller: Option<&str>, usage: &NodeUsage, max_count: i64) -> i64 {
    let Some(c) = controller else {
        return MAX_NODE_SCORE;
    };
    if max_count <= 0 {
        return MAX_NODE_SCORE;
    }
    let count = usage.by_controller.get(c).copied().unwrap_or(0);
    MAX_NODE_SCORE * (max_count - count) / max_count
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Whether the default scheduler is responsible for this pod and it still needs a node.
pub fn needs_scheduling(pod: &Pod) -> bool {
    let Some(spec) = pod.spec.as_ref() else {
        return false;
    };
    let scheduler = spec.scheduler_name.as_deref().unwrap_or("");
    (scheduler.is_empty() || scheduler == DEFAULT_SCHEDULER)
        && spec.node_name.as_deref().unwrap_or("").is_empty()
        && pod.metadata.deletion_timestamp.is_none()
        && !is_terminated(pod)
        && spec.scheduling_gates.as_ref().is_none_or(Vec::is_empty)
}

/// Pick a node for the pod, or say why none fits.
pub fn schedule(pod: &Pod, snapshot: &Snapshot) -> Result<String, FitError> {
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let requests = pod_requests(spec, false);
    let non_zero = pod_requests(spec, true);
    let controller = controller_uid(pod);
    let empty = NodeUsage::default();
    let mut feasible: Vec<(&NodeInfo, &NodeUsage)> = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let (mut unresolvable, mut resolvable) = (0usize, 0usize);
    for node in snapshot.nodes.values() {
        let usage = snapshot.usage.get(&node.name).unwrap_or(&empty);
        match filter(spec, &requests, node, usage) {
            None => feasible.push((node, usage)),
            Some(f) => {
                if f.resolvable {
                    resolvable += 1;
                } else {
                    unresolvable += 1;
                }
                for r in f.reasons {
                    *reasons.entry(r).or_default() += 1;
                }
            }
        }
    }
    if feasible.is_empty() {
        let num_nodes = snapshot.nodes.len();
        let post_filter = if num_nodes == 0 {
            String::new()
        } else if spec.preemption_policy.as_deref() == Some("Never") {
            "preemption: not eligible due to preemptionPolicy=Never.".to_string()
        } else {
            // Every pod here has the same priority unless priorities are set; a pod can only
            // preempt pods of lower priority, which this scheduler does not do (yet).
            let mut pre = BTreeMap::new();
            if resolvable > 0 {
                pre.insert(PREEMPTION_NO_VICTIMS.to_string(), resolvable);
            }
            if unresolvable > 0 {
                pre.insert(PREEMPTION_NOT_HELPFUL.to_string(), unresolvable);
            }
            format!("preemption: {}", histogram(num_nodes, &pre))
        };
        return Err(FitError {
            num_nodes,
            reasons,
            post_filter,
        });
    }
    let max_count = feasible
        .iter()
        .map(|(_, u)| {
            controller
                .as_deref()
                .and_then(|c| u.by_controller.get(c).copied())
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0);
    let seed = fnv(&pod_key(pod));
    let best = feasible
        .iter()
        .map(|(n, u)| {
            let score =
                least_allocated(&non_zero, n, u) + 2 * spread(controller.as_deref(), u, max_count);
            // Among equal scores, a pseudo-random but deterministic pick.
            let tie = fnv(&n.name) ^ seed;
            (score, tie, n.name.as_str())
        })
        .max_by_key(|(score, tie, _)| (*score, *tie));
    match best {
        Some((_, _, name)) => Ok(name.to_string()),
        None => Err(FitError {
            num_nodes: snapshot.nodes.len(),
            reasons,
            post_filter: String::new(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str, mem: &str, extra: serde_json::Value) -> Node {
        let n = json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": {},
            "status": {
                "allocatable": {"cpu": cpu, "memory": mem, "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        });
        serde_json::from_value(crate::patch::merge_patch(&n, &extra)).unwrap()
    }

    fn pod(name: &str, cpu: &str, extra: serde_json::Value) -> Pod {
        let p = json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {"containers": [{"name": "c", "image": "nginx",
                "resources": {"requests": {"cpu": cpu}}}]}
        });
        serde_json::from_value(crate::patch::merge_patch(&p, &extra)).unwrap()
    }

    fn bound(name: &str, cpu: &str, node: &str) -> Pod {
        pod(name, cpu, json!({"spec": {"nodeName": node}}))
    }

    #[test]
    fn requests_sum_containers_and_max_init() {
        let p = pod(
            "p",
            "100m",
            json!({"spec": {
                "containers": [
                    {"name": "a", "image": "x", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                    {"name": "b", "image": "x", "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}
                ],
                "initContainers": [
                    {"name": "i", "image": "x", "resources": {"requests": {"cpu": "2"}}}
                ],
                "overhead": {"memory": "10Mi"}
            }}),
        );
        let r = pod_requests(p.spec.as_ref().unwrap(), false);
        assert_eq!(r.milli_cpu, 2000);
        assert_eq!(r.memory, (64 + 1024 + 10) * 1024 * 1024);
        let nz = pod_requests(&pod("q", "0", json!({})).spec.unwrap(), true);
        assert_eq!(nz.memory, DEFAULT_MEMORY_REQUEST);
    }

    #[test]
    fn sidecars_add_to_the_sum() {
        let p = pod(
            "p",
            "100m",
            json!({"spec": {"initContainers": [
                {"name": "s", "image": "x", "restartPolicy": "Always", "resources": {"requests": {"cpu": "300m"}}},
                {"name": "i", "image": "x", "resources": {"requests": {"cpu": "200m"}}}
            ]}}),
        );
        assert_eq!(pod_requests(p.spec.as_ref().unwrap(), false).milli_cpu, 500);
    }

    #[test]
    fn insufficient_cpu_and_affinity_message() {
        let nodes = [
            node("a", "1", "1Gi", json!({})),
            node(
                "b",
                "4",
                "1Gi",
                json!({"metadata": {"labels": {"disk": "hdd"}}}),
            ),
            node("c", "4", "1Gi", json!({})),
        ];
        let pods = [bound("x", "800m", "a")];
        let snap = Snapshot::new(&nodes, &pods);
        let p = pod(
            "p",
            "500m",
            json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]},
                                      {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}]
            }}}}}),
        );
        let err = schedule(&p, &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) didn't match Pod's node affinity/selector. \
             preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, \
             2 Preemption is not helpful for scheduling.."
        );
    }

    #[test]
    fn picks_a_feasible_node_and_counts_assumed_pods() {
        let nodes = [
            node("a", "1", "1Gi", json!({})),
            node("b", "1", "1Gi", json!({})),
        ];
        let mut snap = Snapshot::new(&nodes, &[]);
        let p1 = pod("p1", "600m", json!({}));
        let n1 = schedule(&p1, &snap).unwrap();
        snap.assume(&p1, &n1);
        let p2 = pod("p2", "600m", json!({}));
        let n2 = schedule(&p2, &snap).unwrap();
        assert_ne!(
            n1, n2,
            "least allocated puts the second pod on the other node"
        );
        snap.assume(&p2, &n2);
        let err = schedule(&pod("p3", "600m", json!({})), &snap).unwrap_err();
        assert_eq!(err.reasons.get("Insufficient cpu"), Some(&2));
        // The bound pod observed later replaces the assumption, it is not counted twice.
        snap.upsert_pod(&bound("p1", "600m", &n1));
        assert_eq!(snap.usage(&n1).pods, 1);
        // A terminated pod frees its node.
        let mut done = bound("p1", "600m", &n1);
        done.status = Some(serde_json::from_value(json!({"phase": "Succeeded"})).unwrap());
        snap.upsert_pod(&done);
        assert_eq!(schedule(&pod("p3", "600m", json!({})), &snap).unwrap(), n1);
    }

    #[test]
    fn too_many_pods() {
        let nodes = [node(
            "a",
            "1",
            "1Gi",
            json!({"status": {"allocatable": {"pods": "1"}}}),
        )];
        let snap = Snapshot::new(&nodes, &[bound("x", "0", "a")]);
        let err = schedule(&pod("p", "0", json!({})), &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/1 nodes are available: 1 Too many pods. preemption: 0/1 nodes are available: \
             1 No preemption victims found for incoming pod.."
        );
    }

    #[test]
    fn node_selector() {
        let nodes = [
            node(
                "a",
                "1",
                "1Gi",
                json!({"metadata": {"labels": {"zone": "x"}}}),
            ),
            node(
                "b",
                "1",
                "1Gi",
                json!({"metadata": {"labels": {"zone": "y"}}}),
            ),
        ];
        let snap = Snapshot::new(&nodes, &[]);
        let p = pod("p", "0", json!({"spec": {"nodeSelector": {"zone": "y"}}}));
        assert_eq!(schedule(&p, &snap).unwrap(), "b");
        let p = pod(
            "p",
            "0",
            json!({"spec": {"nodeSelector": {"zone": "z"}, "preemptionPolicy": "Never"}}),
        );
        assert_eq!(
            schedule(&p, &snap).unwrap_err().to_string(),
            "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector. \
             preemption: not eligible due to preemptionPolicy=Never.."
        );
    }

    #[test]
    fn affinity_operators() {
        let n = NodeInfo::from_node(&node(
            "n1",
            "1",
            "1Gi",
            json!({"metadata": {"labels": {"gen": "5", "gpu": "yes"}}}),
        ));
        let term = |op: &str, key: &str, vals: &[&str]| -> NodeSelectorTerm {
            serde_json::from_value(
                json!({"matchExpressions": [{"key": key, "operator": op, "values": vals}]}),
            )
            .unwrap()
        };
        assert!(term_matches(&term("Gt", "gen", &["4"]), &n));
        assert!(!term_matches(&term("Gt", "gen", &["5"]), &n));
        assert!(term_matches(&term("Lt", "gen", &["6"]), &n));
        assert!(
            !term_matches(&term("Lt", "gpu", &["6"]), &n),
            "not a number"
        );
        assert!(term_matches(&term("Exists", "gpu", &[]), &n));
        assert!(!term_matches(&term("DoesNotExist", "gpu", &[]), &n));
        assert!(term_matches(&term("DoesNotExist", "tpu", &[]), &n));
        assert!(term_matches(&term("NotIn", "tpu", &["a"]), &n));
        assert!(!term_matches(&term("NotIn", "gpu", &["yes"]), &n));
        assert!(
            !term_matches(&NodeSelectorTerm::default(), &n),
            "an empty term matches nothing"
        );
        let f: NodeSelectorTerm = serde_json::from_value(
            json!({"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}),
        )
        .unwrap();
        assert!(!term_matches(&f, &n));
    }

    #[test]
    fn taints_and_tolerations() {
        let nodes = [
            node(
                "a",
                "1",
                "1Gi",
                json!({"spec": {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}}),
            ),
            node(
                "b",
                "1",
                "1Gi",
                json!({"spec": {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}}),
            ),
        ];
        let snap = Snapshot::new(&nodes, &[]);
        // PreferNoSchedule does not filter.
        assert_eq!(schedule(&pod("p", "0", json!({})), &snap).unwrap(), "b");
        let only_a = json!({"spec": {"nodeSelector": {"kubernetes.io/hostname": "a"}}});
        let err = schedule(&pod("p", "0", only_a.clone()), &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, \
             1 node(s) had untolerated taint {dedicated: gpu}. preemption: 0/2 nodes are available: \
             2 Preemption is not helpful for scheduling.."
        );
        for tol in [
            json!({"key": "dedicated", "operator": "Equal", "value": "gpu"}),
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}),
            json!({"operator": "Exists"}),
        ] {
            let p = pod(
                "p",
                "0",
                crate::patch::merge_patch(&only_a, &json!({"spec": {"tolerations": [tol]}})),
            );
            assert_eq!(schedule(&p, &snap).unwrap(), "a");
        }
        for tol in [
            json!({"key": "dedicated", "operator": "Equal", "value": "cpu"}),
            json!({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}),
        ] {
            let p = pod(
                "p",
                "0",
                crate::patch::merge_patch(&only_a, &json!({"spec": {"tolerations": [tol]}})),
            );
            assert!(schedule(&p, &snap).is_err());
        }
    }

    #[test]
    fn unschedulable_and_not_ready_nodes() {
        let nodes = [
            node("a", "1", "1Gi", json!({"spec": {"unschedulable": true}})),
            node(
                "b",
                "1",
                "1Gi",
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
            node(
                "c",
                "1",
                "1Gi",
                json!({"status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}),
            ),
        ];
        let snap = Snapshot::new(&nodes, &[]);
        let err = schedule(&pod("p", "0", json!({})), &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, \
             1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 1 node(s) were unschedulable. \
             preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling.."
        );
        let p = pod(
            "p",
            "0",
            json!({"spec": {"tolerations": [{"key": TAINT_UNSCHEDULABLE, "operator": "Exists", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(schedule(&p, &snap).unwrap(), "a");
        assert_eq!(
            schedule(&pod("p", "0", json!({})), &Snapshot::default())
                .unwrap_err()
                .to_string(),
            NO_NODES_AVAILABLE
        );
    }

    #[test]
    fn spreads_a_controllers_pods() {
        let nodes: Vec<Node> = (0..3)
            .map(|i| node(&format!("n{i}"), "64", "64Gi", json!({})))
            .collect();
        let mut snap = Snapshot::new(&nodes, &[]);
        let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "rs", "uid": "rs-uid", "controller": true}]}});
        let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
        for i in 0..9 {
            let p = pod(&format!("p{i}"), "10m", owner.clone());
            let n = schedule(&p, &snap).unwrap();
            snap.assume(&p, &n);
            *per_node.entry(n).or_default() += 1;
        }
        assert_eq!(
            per_node.values().copied().collect::<Vec<_>>(),
            vec![3, 3, 3]
        );
        assert_eq!(snap.usage("n0").by_controller.get("rs-uid"), Some(&3));
    }

    #[test]
    fn which_pods_need_scheduling() {
        assert!(needs_scheduling(&pod("p", "0", json!({}))));
        assert!(needs_scheduling(&pod(
            "p",
            "0",
            json!({"spec": {"schedulerName": "default-scheduler"}})
        )));
        assert!(!needs_scheduling(&pod(
            "p",
            "0",
            json!({"spec": {"schedulerName": "other"}})
        )));
        assert!(!needs_scheduling(&bound("p", "0", "a")));
        assert!(!needs_scheduling(&pod(
            "p",
            "0",
            json!({"spec": {"schedulingGates": [{"name": "g"}]}})
        )));
    }
}
