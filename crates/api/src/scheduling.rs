//! Scheduling decisions of the default scheduler (`default-scheduler`), as a pure function of
//! (pod, snapshot of nodes, namespaces and pods): the filters, the scores, preemption and
//! upstream's "0/N nodes are available" message. The watch loop that feeds the snapshot, binds and
//! evicts lives in `controllers::scheduler`; this module must not depend on anything that does IO.
//!
//! Filters, in upstream's plugin order (the first one that fails decides a node's reason):
//! `NodeUnschedulable`, `TaintToleration` (a node that is not Ready counts as tainted
//! `node.kubernetes.io/not-ready` or `node.kubernetes.io/unreachable`, `NoSchedule`, as the node
//! lifecycle controller taints it), `NodeAffinity` (nodeSelector and required node affinity),
//! `NodeResourcesFit` (cpu, memory, ephemeral-storage, pod count; every failing resource is a
//! reason; pods nominated to the node with at least the pod's priority count as placed),
//! `PodTopologySpread` (`DoNotSchedule` constraints: maxSkew, minDomains, nodeAffinityPolicy
//! `Honor` and nodeTaintsPolicy `Ignore` by default, matchLabelKeys) and `InterPodAffinity`
//! (required affinity and anti-affinity of the pod, and the symmetric required anti-affinity of
//! the pods already placed).
//!
//! Scores, each normalized to 0..=100 as upstream and weighted as upstream's default profile:
//! `TaintToleration` (3: fewer untolerated `PreferNoSchedule` taints), `NodeAffinity` (2: weights
//! of the matching preferred terms), `NodeResourcesFit` (1: least allocated cpu and memory, with
//! upstream's non-zero defaults), `PodTopologySpread` (2: the `ScheduleAnyway` constraints, or the
//! system default constraints, hostname maxSkew 3 and zone maxSkew 5, over the pods of the same
//! controller) and `InterPodAffinity` (2: preferred affinity and anti-affinity both ways, and
//! existing pods' required affinity with weight 1). Ties are broken by a hash of the pod's uid, so
//! the decision is deterministic.
//!
//! Preemption (`DefaultPreemption`): when no node fits and the pod may preempt
//! (`preemptionPolicy` is not `Never`, no lower-priority pod is still terminating on its nominated
//! node), each node whose failure preemption can resolve is tried with every lower-priority pod
//! removed; the most important of them are then reprieved one by one while the pod still fits.
//! The node whose victims have the lowest top priority, then the lowest sum of priorities, then
//! the fewest victims wins. PodDisruptionBudgets are not served by this API server, so they are
//! not consulted. A pod without `spec.priority` has priority 0.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeSelectorRequirement, NodeSelectorTerm, Pod, PodAffinityTerm,
    PodSpec, Taint, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as LabelSelectorSpec;
use serde_json::{Value, json};

use crate::selector::LabelSelector;
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
/// `InterPodAffinity`: no node in the topology has the pods the pod requires.
pub const REASON_POD_AFFINITY: &str = "node(s) didn't match pod affinity rules";
/// `InterPodAffinity`: the topology has pods the pod's anti-affinity excludes.
pub const REASON_POD_ANTI_AFFINITY: &str = "node(s) didn't match pod anti-affinity rules";
/// `InterPodAffinity`: a pod already placed excludes this pod by its anti-affinity.
pub const REASON_EXISTING_ANTI_AFFINITY: &str =
    "node(s) didn't satisfy existing pods anti-affinity rules";
/// `PodTopologySpread`: placing the pod here would exceed a constraint's maxSkew.
pub const REASON_SPREAD: &str = "node(s) didn't match pod topology spread constraints";
/// `PodTopologySpread`: the node lacks a constraint's topology key.
pub const REASON_SPREAD_LABEL: &str =
    "node(s) didn't match pod topology spread constraints (missing required label)";
const TERMINATING_ON_NOMINATED: &str =
    "preemption: not eligible due to a terminating pod on the nominated node.";
/// The hostname label (per-node topology).
pub const LABEL_HOSTNAME: &str = "kubernetes.io/hostname";
/// The zone label (the system default spread's second topology).
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// The label every namespace carries with its own name.
pub const LABEL_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
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

/// The label selector of a `metav1.LabelSelector` (null selects nothing), with `matchLabelKeys`
/// (`key In (pod's value)`) and `mismatchLabelKeys` (`key NotIn (pod's value)`) taken from the
/// labels of the pod that declares it, as upstream merges them.
fn selector_of(
    s: Option<&LabelSelectorSpec>,
    match_keys: &[String],
    mismatch_keys: &[String],
    own_labels: &BTreeMap<String, String>,
) -> LabelSelector {
    let Some(s) = s else {
        return LabelSelector::nothing();
    };
    let Ok(mut v) = serde_json::to_value(s) else {
        return LabelSelector::nothing();
    };
    let extra: Vec<Value> = match_keys
        .iter()
        .map(|k| (k, "In"))
        .chain(mismatch_keys.iter().map(|k| (k, "NotIn")))
        .filter_map(|(k, op)| {
            own_labels
                .get(k)
                .map(|val| json!({"key": k, "operator": op, "values": [val]}))
        })
        .collect();
    if !extra.is_empty()
        && let Some(obj) = v.as_object_mut()
    {
        let exprs = obj.entry("matchExpressions").or_insert_with(|| json!([]));
        if let Some(a) = exprs.as_array_mut() {
            a.extend(extra);
        }
    }
    LabelSelector::from_json(&v).unwrap_or_else(|_| LabelSelector::nothing())
}

/// One pod (anti-)affinity term, resolved as upstream's `framework.AffinityTerm`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AffinityTerm {
    /// Namespaces named by the term (the declaring pod's own when neither these nor a
    /// namespace selector are given).
    pub namespaces: Vec<String>,
    pub namespace_selector: LabelSelector,
    pub selector: LabelSelector,
    pub topology_key: String,
    /// The weight of a preferred term (1 for required ones).
    pub weight: i64,
}

impl AffinityTerm {
    /// Resolve a term declared by a pod of `namespace` with these labels.
    pub fn new(
        term: &PodAffinityTerm,
        weight: i64,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Self {
        let mut namespaces = term.namespaces.clone().unwrap_or_default();
        if namespaces.is_empty() && term.namespace_selector.is_none() {
            namespaces.push(namespace.to_string());
        }
        let namespace_selector = match term.namespace_selector.as_ref() {
            Some(s) => selector_of(Some(s), &[], &[], labels),
            None => LabelSelector::nothing(),
        };
        AffinityTerm {
            namespaces,
            namespace_selector,
            selector: selector_of(
                term.label_selector.as_ref(),
                term.match_label_keys.as_deref().unwrap_or(&[]),
                term.mismatch_label_keys.as_deref().unwrap_or(&[]),
                labels,
            ),
            topology_key: term.topology_key.clone(),
            weight,
        }
    }

    /// Whether a pod of `namespace` (whose namespace has `ns_labels`) with `labels` matches.
    pub fn matches(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        ns_labels: &BTreeMap<String, String>,
    ) -> bool {
        (self.namespaces.iter().any(|n| n == namespace)
            || self.namespace_selector.matches(ns_labels))
            && self.selector.matches(labels)
    }
}

/// A pod's pod affinity and anti-affinity, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodAffinityTerms {
    pub required_affinity: Vec<AffinityTerm>,
    pub required_anti_affinity: Vec<AffinityTerm>,
    pub preferred_affinity: Vec<AffinityTerm>,
    pub preferred_anti_affinity: Vec<AffinityTerm>,
}

impl PodAffinityTerms {
    /// The terms of a pod.
    pub fn of(pod: &Pod) -> Self {
        let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
        let empty = BTreeMap::new();
        let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
        let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
        let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
        let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
        let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<AffinityTerm> {
            terms
                .into_iter()
                .flatten()
                .map(|t| AffinityTerm::new(t, 1, ns, labels))
                .collect()
        };
        let preferred = |terms: Option<
            &Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>,
        >| {
            terms
                .into_iter()
                .flatten()
                .map(|t| AffinityTerm::new(&t.pod_affinity_term, i64::from(t.weight), ns, labels))
                .collect::<Vec<_>>()
        };
        PodAffinityTerms {
            required_affinity: required(pa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            required_anti_affinity: required(paa.and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_affinity: preferred(pa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
            preferred_anti_affinity: preferred(paa.and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })),
        }
    }

    /// Whether the pod has no pod (anti-)affinity at all.
    pub fn is_empty(&self) -> bool {
        self.required_affinity.is_empty()
            && self.required_anti_affinity.is_empty()
            && self.preferred_affinity.is_empty()
            && self.preferred_anti_affinity.is_empty()
    }
}

/// The priority of a pod (`spec.priority`, set by the Priority admission plugin; 0 without).
pub fn priority_of(pod: &Pod) -> i32 {
    pod.spec.as_ref().and_then(|s| s.priority).unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq)]
struct PodEntry {
    node: String,
    requested: Resources,
    non_zero: Resources,
    controller: Option<String>,
    namespace: String,
    name: String,
    uid: String,
    labels: BTreeMap<String, String>,
    priority: i32,
    /// The pod has a deletionTimestamp (it still holds its node until it is gone).
    deleting: bool,
    /// Its pod (anti-)affinity, when it has any.
    terms: Option<Arc<PodAffinityTerms>>,
}

/// A pending pod nominated to a node by preemption.
#[derive(Debug, Clone, PartialEq)]
struct Nominated {
    node: String,
    priority: i32,
    requested: Resources,
}

/// The nodes and the pods bound to them, maintained incrementally from watches.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    nodes: BTreeMap<String, NodeInfo>,
    usage: HashMap<String, NodeUsage>,
    pods: HashMap<String, PodEntry>,
    /// Namespace labels, for namespace selectors of affinity terms.
    namespaces: HashMap<String, BTreeMap<String, String>>,
    /// Pending pods with `status.nominatedNodeName`, by pod key.
    nominated: HashMap<String, Nominated>,
    /// Placed pods with pod (anti-)affinity terms.
    with_affinity: usize,
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

    /// Record a namespace's labels (for the namespace selectors of affinity terms).
    pub fn upsert_namespace(&mut self, ns: &Namespace) {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let labels = ns.metadata.labels.clone().unwrap_or_default();
        self.namespaces.insert(name, labels);
    }

    /// Forget a namespace.
    pub fn remove_namespace(&mut self, name: &str) {
        self.namespaces.remove(name);
    }

    /// A namespace's labels; a namespace not seen has only `kubernetes.io/metadata.name`.
    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(ns)
            .cloned()
            .unwrap_or_else(|| BTreeMap::from([(LABEL_NAMESPACE_NAME.to_string(), ns.to_string())]))
    }

    /// Account for a pod: bound and not terminated pods use their node's resources; a pending
    /// pod with `status.nominatedNodeName` holds room on that node for pods of lower priority.
    pub fn upsert_pod(&mut self, pod: &Pod) {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        if node.is_empty() || is_terminated(pod) {
            self.remove_pod(pod);
            let nominated = pod
                .status
                .as_ref()
                .and_then(|s| s.nominated_node_name.as_deref())
                .unwrap_or_default();
            if node.is_empty()
                && !nominated.is_empty()
                && !is_terminated(pod)
                && pod.metadata.deletion_timestamp.is_none()
            {
                self.nominate(pod, nominated);
            }
            return;
        }
        self.assume(pod, &node);
    }

    /// Hold room on `node` for a pending pod (its `status.nominatedNodeName`).
    pub fn nominate(&mut self, pod: &Pod, node: &str) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        self.nominated.insert(
            pod_key(pod),
            Nominated {
                node: node.to_string(),
                priority: priority_of(pod),
                requested: pod_requests(spec, false),
            },
        );
    }

    /// Account for a pod as bound to `node` (before the binding is observed).
    pub fn assume(&mut self, pod: &Pod, node: &str) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let terms = PodAffinityTerms::of(pod);
        let entry = PodEntry {
            node: node.to_string(),
            requested: pod_requests(spec, false),
            non_zero: pod_requests(spec, true),
            controller: controller_uid(pod),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            priority: priority_of(pod),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            terms: (!terms.is_empty()).then(|| Arc::new(terms)),
        };
        let key = pod_key(pod);
        self.nominated.remove(&key);
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
        if entry.terms.is_some() {
            self.with_affinity += 1;
        }
        self.pods.insert(key, entry);
    }

    /// Stop accounting for a pod.
    pub fn remove_pod(&mut self, pod: &Pod) {
        let key = pod_key(pod);
        self.nominated.remove(&key);
        self.remove_key(&key);
    }

    /// Mark a placed pod as being deleted (its node keeps it until it is gone).
    pub fn mark_deleting(&mut self, uid: &str) {
        if let Some(e) = self.pods.get_mut(uid) {
            e.deleting = true;
        }
    }

    fn remove_key(&mut self, key: &str) {
        let Some(e) = self.pods.remove(key) else {
            return;
        };
        if e.terms.is_some() {
            self.with_affinity = self.with_affinity.saturating_sub(1);
        }
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
    /// The preemption (post-filter) message, e.g. `preemption: 0/3 nodes are available: ...`;
    /// empty when preemption found victims.
    pub post_filter: String,
    /// What to evict so that the pod fits, when preemption can help.
    pub preemption: Option<Preemption>,
}

/// The outcome of preemption: the node to nominate and the pods to evict there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preemption {
    pub node: String,
    pub victims: Vec<Victim>,
}

/// A pod preemption evicts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub priority: i32,
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

/// Pod counts per topology key and value.
#[derive(Debug, Clone, Default)]
struct TopologyCounts(HashMap<String, HashMap<String, i64>>);

impl TopologyCounts {
    fn add(&mut self, key: &str, value: &str, n: i64) {
        *self
            .0
            .entry(key.to_string())
            .or_default()
            .entry(value.to_string())
            .or_default() += n;
    }
    fn get(&self, key: &str, value: &str) -> i64 {
        self.0
            .get(key)
            .and_then(|m| m.get(value))
            .copied()
            .unwrap_or(0)
    }
    fn is_empty(&self) -> bool {
        self.0.values().all(HashMap::is_empty)
    }
}

/// A topology spread constraint, resolved.
#[derive(Debug, Clone)]
struct Constraint {
    max_skew: i64,
    key: String,
    min_domains: i64,
    selector: LabelSelector,
    /// The system default constraints count the pods of the pod's controller.
    controller: Option<String>,
    honor_affinity: bool,
    honor_taints: bool,
}

impl Constraint {
    /// Whether a placed pod counts for the constraint (same namespace, selected, not deleting).
    fn counts(&self, e: &PodEntry, namespace: &str) -> bool {
        !e.deleting
            && e.namespace == namespace
            && match &self.controller {
                Some(c) => e.controller.as_ref() == Some(c),
                None => self.selector.matches(&e.labels),
            }
    }

    /// Whether the node's pods count, per nodeAffinityPolicy and nodeTaintsPolicy.
    fn includes(&self, spec: &PodSpec, node: &NodeInfo) -> bool {
        let tolerations = spec.tolerations.as_deref().unwrap_or(&[]);
        (!self.honor_affinity || affinity_matches(spec, node))
            && (!self.honor_taints
                || node.taints.iter().all(|t| {
                    !(t.effect == "NoSchedule" || t.effect == "NoExecute")
                        || tolerated(tolerations, t)
                }))
    }
}

/// The pod being scheduled, with what is derived from it once.
struct Incoming<'a> {
    spec: &'a PodSpec,
    key: String,
    namespace: &'a str,
    labels: BTreeMap<String, String>,
    ns_labels: BTreeMap<String, String>,
    requests: Resources,
    non_zero: Resources,
    priority: i32,
    terms: PodAffinityTerms,
    /// `DoNotSchedule` constraints.
    hard: Vec<Constraint>,
    /// `ScheduleAnyway` constraints, or the system defaults when the pod declares none.
    soft: Vec<Constraint>,
    /// The pod declares constraints (scoring then ignores nodes without all their keys).
    explicit: bool,
}

impl<'a> Incoming<'a> {
    fn new(pod: &'a Pod, spec: &'a PodSpec, snapshot: &Snapshot) -> Self {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        let declared = spec.topology_spread_constraints.as_deref().unwrap_or(&[]);
        let (mut hard, mut soft) = (Vec::new(), Vec::new());
        for c in declared {
            let resolved = Constraint {
                max_skew: i64::from(c.max_skew.max(1)),
                key: c.topology_key.clone(),
                min_domains: i64::from(c.min_domains.unwrap_or(1).max(1)),
                selector: selector_of(
                    c.label_selector.as_ref(),
                    c.match_label_keys.as_deref().unwrap_or(&[]),
                    &[],
                    &labels,
                ),
                controller: None,
                honor_affinity: c.node_affinity_policy.as_deref() != Some("Ignore"),
                honor_taints: c.node_taints_policy.as_deref() == Some("Honor"),
            };
            if c.when_unsatisfiable == "ScheduleAnyway" {
                soft.push(resolved);
            } else {
                hard.push(resolved);
            }
        }
        let controller = controller_uid(pod);
        if declared.is_empty()
            && let Some(c) = controller
        {
            for (key, max_skew) in [(LABEL_HOSTNAME, 3), (LABEL_ZONE, 5)] {
                soft.push(Constraint {
                    max_skew,
                    key: key.to_string(),
                    min_domains: 1,
                    selector: LabelSelector::nothing(),
                    controller: Some(c.clone()),
                    honor_affinity: true,
                    honor_taints: false,
                });
            }
        }
        Incoming {
            spec,
            key: pod_key(pod),
            namespace,
            ns_labels: snapshot.namespace_labels(namespace),
            labels,
            requests: pod_requests(spec, false),
            non_zero: pod_requests(spec, true),
            priority: spec.priority.unwrap_or(0),
            terms: PodAffinityTerms::of(pod),
            hard,
            soft,
            explicit: !declared.is_empty(),
        }
    }

    fn self_matches(&self, c: &Constraint) -> bool {
        c.controller.is_some() || c.selector.matches(&self.labels)
    }
}

/// `PodTopologySpread`'s pre-filter state: matching pods per domain of each hard constraint.
struct SpreadFilter {
    counts: Vec<HashMap<String, i64>>,
    min: Vec<i64>,
}

impl SpreadFilter {
    fn new(inc: &Incoming, snapshot: &Snapshot, removed: &HashSet<&str>) -> Option<Self> {
        if inc.hard.is_empty() {
            return None;
        }
        let mut counts: Vec<HashMap<String, i64>> = vec![HashMap::new(); inc.hard.len()];
        let mut domains: HashMap<&str, Vec<Option<&str>>> = HashMap::new();
        for node in snapshot.nodes.values() {
            if !inc.hard.iter().all(|c| node.labels.contains_key(&c.key)) {
                continue;
            }
            let d = inc
                .hard
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let v = node.labels.get(&c.key)?;
                    if !c.includes(inc.spec, node) {
                        return None;
                    }
                    counts[i].entry(v.clone()).or_insert(0);
                    Some(v.as_str())
                })
                .collect();
            domains.insert(node.name.as_str(), d);
        }
        for (key, e) in &snapshot.pods {
            if removed.contains(key.as_str()) {
                continue;
            }
            let Some(d) = domains.get(e.node.as_str()) else {
                continue;
            };
            for (i, c) in inc.hard.iter().enumerate() {
                if let Some(v) = d[i]
                    && c.counts(e, inc.namespace)
                    && let Some(n) = counts[i].get_mut(v)
                {
                    *n += 1;
                }
            }
        }
        let min = inc
            .hard
            .iter()
            .zip(&counts)
            .map(|(c, m)| {
                if (m.len() as i64) < c.min_domains {
                    0
                } else {
                    m.values().copied().min().unwrap_or(i64::from(i32::MAX))
                }
            })
            .collect();
        Some(SpreadFilter { counts, min })
    }

    /// 'existing matching num' + 'self-match (1 or 0)' - 'global minimum' <= 'maxSkew'.
    fn check(&self, inc: &Incoming, node: &NodeInfo) -> Option<NodeFailure> {
        for (i, c) in inc.hard.iter().enumerate() {
            let Some(v) = node.labels.get(&c.key) else {
                return Some(NodeFailure {
                    reasons: vec![REASON_SPREAD_LABEL.into()],
                    resolvable: false,
                });
            };
            let matching = self.counts[i].get(v).copied().unwrap_or(0);
            let skew = matching + i64::from(inc.self_matches(c)) - self.min[i];
            if skew > c.max_skew {
                return Some(NodeFailure {
                    reasons: vec![REASON_SPREAD.into()],
                    resolvable: true,
                });
            }
        }
        None
    }
}

/// `InterPodAffinity`'s pre-filter state.
struct AffinityFilter {
    /// Placed pods whose required anti-affinity matches the pod.
    existing_anti: TopologyCounts,
    /// Placed pods matching all the pod's required affinity terms.
    affinity: TopologyCounts,
    /// Placed pods matching one of the pod's required anti-affinity terms.
    anti: TopologyCounts,
}

impl AffinityFilter {
    fn new(inc: &Incoming, snapshot: &Snapshot, removed: &HashSet<&str>) -> Option<Self> {
        let own = &inc.terms;
        if own.required_affinity.is_empty()
            && own.required_anti_affinity.is_empty()
            && snapshot.with_affinity == 0
        {
            return None;
        }
        let mut st = AffinityFilter {
            existing_anti: TopologyCounts::default(),
            affinity: TopologyCounts::default(),
            anti: TopologyCounts::default(),
        };
        let mut ns_cache: HashMap<&str, BTreeMap<String, String>> = HashMap::new();
        let scan_all = !own.required_affinity.is_empty() || !own.required_anti_affinity.is_empty();
        for (key, e) in &snapshot.pods {
            if removed.contains(key.as_str()) || (!scan_all && e.terms.is_none()) {
                continue;
            }
            let Some(node) = snapshot.nodes.get(&e.node) else {
                continue;
            };
            if let Some(t) = &e.terms {
                for term in &t.required_anti_affinity {
                    if term.matches(inc.namespace, &inc.labels, &inc.ns_labels)
                        && let Some(v) = node.labels.get(&term.topology_key)
                    {
                        st.existing_anti.add(&term.topology_key, v, 1);
                    }
                }
            }
            if !scan_all {
                continue;
            }
            let nsl = ns_cache
                .entry(e.namespace.as_str())
                .or_insert_with(|| snapshot.namespace_labels(&e.namespace));
            if !own.required_affinity.is_empty()
                && own
                    .required_affinity
                    .iter()
                    .all(|t| t.matches(&e.namespace, &e.labels, nsl))
            {
                for t in &own.required_affinity {
                    if let Some(v) = node.labels.get(&t.topology_key) {
                        st.affinity.add(&t.topology_key, v, 1);
                    }
                }
            }
            for t in &own.required_anti_affinity {
                if t.matches(&e.namespace, &e.labels, nsl)
                    && let Some(v) = node.labels.get(&t.topology_key)
                {
                    st.anti.add(&t.topology_key, v, 1);
                }
            }
        }
        Some(st)
    }

    fn check(&self, inc: &Incoming, node: &NodeInfo) -> Option<NodeFailure> {
        let fail = |reason: &str, resolvable: bool| {
            Some(NodeFailure {
                reasons: vec![reason.to_string()],
                resolvable,
            })
        };
        let mut pods_exist = true;
        for t in &inc.terms.required_affinity {
            match node.labels.get(&t.topology_key) {
                Some(v) => {
                    if self.affinity.get(&t.topology_key, v) <= 0 {
                        pods_exist = false;
                    }
                }
                // All topology labels must exist on the node.
                None => return fail(REASON_POD_AFFINITY, false),
            }
        }
        // The first pod of a group with affinity to itself may go anywhere with the topology.
        let first_of_group = self.affinity.is_empty()
            && inc
                .terms
                .required_affinity
                .iter()
                .all(|t| t.matches(inc.namespace, &inc.labels, &inc.ns_labels));
        if !pods_exist && !first_of_group {
            return fail(REASON_POD_AFFINITY, false);
        }
        for t in &inc.terms.required_anti_affinity {
            if let Some(v) = node.labels.get(&t.topology_key)
                && self.anti.get(&t.topology_key, v) > 0
            {
                return fail(REASON_POD_ANTI_AFFINITY, true);
            }
        }
        if !self.existing_anti.is_empty()
            && node
                .labels
                .iter()
                .any(|(k, v)| self.existing_anti.get(k, v) > 0)
        {
            return fail(REASON_EXISTING_ANTI_AFFINITY, true);
        }
        None
    }
}

/// Run every filter on one node.
fn run_filters(
    inc: &Incoming,
    node: &NodeInfo,
    usage: &NodeUsage,
    spread: Option<&SpreadFilter>,
    affinity: Option<&AffinityFilter>,
) -> Option<NodeFailure> {
    if let Some(f) = filter(inc.spec, &inc.requests, node, usage) {
        return Some(f);
    }
    if let Some(s) = spread
        && let Some(f) = s.check(inc, node)
    {
        return Some(f);
    }
    if let Some(a) = affinity
        && let Some(f) = a.check(inc, node)
    {
        return Some(f);
    }
    None
}

/// A node's usage with the pods nominated to it (of at least the pod's priority) counted.
fn usage_with_nominated(inc: &Incoming, snapshot: &Snapshot, node: &str) -> NodeUsage {
    let mut u = snapshot.usage(node);
    for (key, n) in &snapshot.nominated {
        if n.node == node && *key != inc.key && n.priority >= inc.priority {
            u.requested.add(&n.requested);
            u.pods += 1;
        }
    }
    u
}

/// Upstream `DefaultNormalizeScore`: scale to 0..=100 by the maximum, reversed if asked.
fn normalize(scores: &mut [i64], reverse: bool) {
    let max = scores.iter().copied().max().unwrap_or(0);
    if max <= 0 {
        if reverse {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
        }
        return;
    }
    for s in scores.iter_mut() {
        let v = MAX_NODE_SCORE * *s / max;
        *s = if reverse { MAX_NODE_SCORE - v } else { v };
    }
}

/// `TaintToleration` score: untolerated `PreferNoSchedule` taints, fewer is better.
pub fn taint_scores(spec: &PodSpec, nodes: &[&NodeInfo]) -> Vec<i64> {
    let tolerations: Vec<&Toleration> = spec
        .tolerations
        .iter()
        .flatten()
        .filter(|t| {
            matches!(
                t.effect.as_deref(),
                None | Some("") | Some("PreferNoSchedule")
            )
        })
        .collect();
    let mut scores: Vec<i64> = nodes
        .iter()
        .map(|n| {
            n.taints
                .iter()
                .filter(|t| {
                    t.effect == "PreferNoSchedule"
                        && !tolerations.iter().any(|tol| tolerates(tol, t))
                })
                .count() as i64
        })
        .collect();
    normalize(&mut scores, true);
    scores
}

/// `NodeAffinity` score: the weights of the matching preferred terms.
pub fn node_affinity_scores(spec: &PodSpec, nodes: &[&NodeInfo]) -> Vec<i64> {
    let preferred = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_deref()
        })
        .unwrap_or(&[]);
    let mut scores: Vec<i64> = nodes
        .iter()
        .map(|n| {
            preferred
                .iter()
                .filter(|t| t.weight != 0 && term_matches(&t.preference, n))
                .map(|t| i64::from(t.weight))
                .sum()
        })
        .collect();
    normalize(&mut scores, false);
    scores
}

fn topology_normalizing_weight(size: usize) -> f64 {
    ((size + 2) as f64).ln()
}

/// `PodTopologySpread` score over the feasible nodes.
fn spread_scores(
    inc: &Incoming,
    snapshot: &Snapshot,
    feasible: &[(&NodeInfo, NodeUsage)],
) -> Vec<i64> {
    let cs = &inc.soft;
    if cs.is_empty() {
        return vec![0; feasible.len()];
    }
    let ignored: Vec<bool> = feasible
        .iter()
        .map(|(n, _)| inc.explicit && !cs.iter().all(|c| n.labels.contains_key(&c.key)))
        .collect();
    let considered = ignored.iter().filter(|i| !**i).count();
    let mut pairs: Vec<HashMap<String, i64>> = vec![HashMap::new(); cs.len()];
    for ((n, _), ign) in feasible.iter().zip(&ignored) {
        if *ign {
            continue;
        }
        for (i, c) in cs.iter().enumerate() {
            if c.key != LABEL_HOSTNAME {
                let v = n.labels.get(&c.key).cloned().unwrap_or_default();
                pairs[i].entry(v).or_insert(0);
            }
        }
    }
    let weights: Vec<f64> = cs
        .iter()
        .zip(&pairs)
        .map(|(c, p)| {
            topology_normalizing_weight(if c.key == LABEL_HOSTNAME {
                considered
            } else {
                p.len()
            })
        })
        .collect();
    // Matching pods per node and constraint (the system defaults read the controller counts).
    let mut per_node: HashMap<&str, Vec<i64>> = HashMap::new();
    if cs.iter().any(|c| c.controller.is_none()) {
        for e in snapshot.pods.values() {
            for (i, c) in cs.iter().enumerate() {
                if c.controller.is_none() && c.counts(e, inc.namespace) {
                    per_node
                        .entry(e.node.as_str())
                        .or_insert_with(|| vec![0; cs.len()])[i] += 1;
                }
            }
        }
    }
    let count_on = |node: &str, i: usize| -> i64 {
        match &cs[i].controller {
            Some(c) => snapshot
                .usage
                .get(node)
                .and_then(|u| u.by_controller.get(c))
                .copied()
                .unwrap_or(0),
            None => per_node.get(node).map_or(0, |v| v[i]),
        }
    };
    for node in snapshot.nodes.values() {
        for (i, c) in cs.iter().enumerate() {
            if c.key == LABEL_HOSTNAME || !c.includes(inc.spec, node) {
                continue;
            }
            let v = node.labels.get(&c.key).map(String::as_str).unwrap_or("");
            let n = count_on(&node.name, i);
            if let Some(p) = pairs[i].get_mut(v) {
                *p += n;
            }
        }
    }
    let raw: Vec<Option<i64>> = feasible
        .iter()
        .zip(&ignored)
        .map(|((n, _), ign)| {
            if *ign {
                return None;
            }
            let mut score = 0.0;
            for (i, c) in cs.iter().enumerate() {
                let Some(v) = n.labels.get(&c.key) else {
                    continue;
                };
                let cnt = if c.key == LABEL_HOSTNAME {
                    count_on(&n.name, i)
                } else {
                    pairs[i].get(v).copied().unwrap_or(0)
                };
                score += cnt as f64 * weights[i] + (c.max_skew - 1) as f64;
            }
            Some(score.round() as i64)
        })
        .collect();
    let min = raw.iter().flatten().copied().min().unwrap_or(0);
    let max = raw.iter().flatten().copied().max().unwrap_or(0);
    raw.iter()
        .map(|s| match s {
            None => 0,
            Some(_) if max == 0 => MAX_NODE_SCORE,
            Some(s) => MAX_NODE_SCORE * (max + min - s) / max,
        })
        .collect()
}

/// `InterPodAffinity` score over the feasible nodes.
fn affinity_scores(inc: &Incoming, snapshot: &Snapshot, nodes: &[&NodeInfo]) -> Vec<i64> {
    let own = &inc.terms;
    let has_preferred =
        !own.preferred_affinity.is_empty() || !own.preferred_anti_affinity.is_empty();
    if !has_preferred && snapshot.with_affinity == 0 {
        return vec![0; nodes.len()];
    }
    let mut topo = TopologyCounts::default();
    let mut ns_cache: HashMap<&str, BTreeMap<String, String>> = HashMap::new();
    for e in snapshot.pods.values() {
        if !has_preferred && e.terms.is_none() {
            continue;
        }
        let Some(node) = snapshot.nodes.get(&e.node) else {
            continue;
        };
        let mut process = |t: &AffinityTerm, sign: i64, matches: bool| {
            if matches && let Some(v) = node.labels.get(&t.topology_key) {
                topo.add(&t.topology_key, v, sign * t.weight);
            }
        };
        if has_preferred {
            let nsl = ns_cache
                .entry(e.namespace.as_str())
                .or_insert_with(|| snapshot.namespace_labels(&e.namespace));
            for t in &own.preferred_affinity {
                process(t, 1, t.matches(&e.namespace, &e.labels, nsl));
            }
            for t in &own.preferred_anti_affinity {
                process(t, -1, t.matches(&e.namespace, &e.labels, nsl));
            }
        }
        if let Some(et) = &e.terms {
            let m = |t: &AffinityTerm| t.matches(inc.namespace, &inc.labels, &inc.ns_labels);
            for t in &et.preferred_affinity {
                process(t, 1, m(t));
            }
            for t in &et.preferred_anti_affinity {
                process(t, -1, m(t));
            }
            // Existing pods' required affinity counts with upstream's hardPodAffinityWeight (1).
            for t in &et.required_affinity {
                process(t, 1, m(t));
            }
        }
    }
    let raw: Vec<i64> = nodes
        .iter()
        .map(|n| {
            topo.0
                .iter()
                .filter_map(|(k, m)| m.get(n.labels.get(k)?))
                .sum()
        })
        .collect();
    let min = raw.iter().copied().min().unwrap_or(0);
    let max = raw.iter().copied().max().unwrap_or(0);
    let diff = max - min;
    raw.iter()
        .map(|s| {
            if diff > 0 {
                (MAX_NODE_SCORE as f64 * ((s - min) as f64 / diff as f64)) as i64
            } else {
                0
            }
        })
        .collect()
}

/// Whether the pod may preempt; the message says why not, as upstream.
fn preemption_ineligible(
    pod: &Pod,
    inc: &Incoming,
    snapshot: &Snapshot,
    failures: &[(&NodeInfo, NodeFailure)],
) -> Option<String> {
    if inc.spec.preemption_policy.as_deref() == Some("Never") {
        return Some("preemption: not eligible due to preemptionPolicy=Never.".into());
    }
    let nominated = pod
        .status
        .as_ref()
        .and_then(|s| s.nominated_node_name.as_deref())
        .unwrap_or_default();
    if nominated.is_empty() {
        return None;
    }
    // A nominated node that preemption cannot help is tried again.
    if failures
        .iter()
        .any(|(n, f)| n.name == nominated && !f.resolvable)
    {
        return None;
    }
    snapshot
        .pods
        .values()
        .any(|e| e.node == nominated && e.deleting && e.priority < inc.priority)
        .then(|| TERMINATING_ON_NOMINATED.to_string())
}

/// Whether the pod fits `node` once the `removed` pods are gone.
fn fits_without(
    inc: &Incoming,
    snapshot: &Snapshot,
    node: &NodeInfo,
    removed: &HashSet<&str>,
) -> Option<NodeFailure> {
    let mut usage = usage_with_nominated(inc, snapshot, &node.name);
    for key in removed {
        if let Some(e) = snapshot.pods.get(*key)
            && e.node == node.name
        {
            usage.requested.sub(&e.requested);
            usage.non_zero.sub(&e.non_zero);
            usage.pods -= 1;
        }
    }
    let spread = SpreadFilter::new(inc, snapshot, removed);
    let affinity = AffinityFilter::new(inc, snapshot, removed);
    run_filters(inc, node, &usage, spread.as_ref(), affinity.as_ref())
}

/// `DefaultPreemption`'s dry run: the best node and its victims, or the per-node reasons.
fn find_victims(
    inc: &Incoming,
    snapshot: &Snapshot,
    failures: &[(&NodeInfo, NodeFailure)],
) -> Result<Preemption, BTreeMap<String, usize>> {
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut candidates: Vec<(&NodeInfo, Vec<&PodEntry>)> = Vec::new();
    for (node, failure) in failures {
        if !failure.resolvable {
            *reasons.entry(PREEMPTION_NOT_HELPFUL.into()).or_default() += 1;
            continue;
        }
        let mut potential: Vec<(&str, &PodEntry)> = snapshot
            .pods
            .iter()
            .filter(|(_, e)| e.node == node.name && !e.deleting && e.priority < inc.priority)
            .map(|(k, e)| (k.as_str(), e))
            .collect();
        if potential.is_empty() {
            *reasons.entry(PREEMPTION_NO_VICTIMS.into()).or_default() += 1;
            continue;
        }
        // Most important first: they are the first to be reprieved.
        potential.sort_by(|a, b| {
            b.1.priority
                .cmp(&a.1.priority)
                .then_with(|| a.1.name.cmp(&b.1.name))
        });
        let mut removed: HashSet<&str> = potential.iter().map(|(k, _)| *k).collect();
        if let Some(f) = fits_without(inc, snapshot, node, &removed) {
            for r in f.reasons {
                *reasons.entry(r).or_default() += 1;
            }
            continue;
        }
        let mut victims = Vec::new();
        for (key, e) in &potential {
            removed.remove(key);
            if fits_without(inc, snapshot, node, &removed).is_some() {
                removed.insert(key);
                victims.push(*e);
            }
        }
        if victims.is_empty() {
            *reasons.entry(PREEMPTION_NO_VICTIMS.into()).or_default() += 1;
            continue;
        }
        candidates.push((node, victims));
    }
    let offset = i64::from(i32::MAX) + 1;
    let best = candidates.into_iter().min_by_key(|(node, victims)| {
        let top = victims.iter().map(|v| v.priority).max().unwrap_or(i32::MIN);
        let sum: i64 = victims.iter().map(|v| i64::from(v.priority) + offset).sum();
        (top, sum, victims.len(), node.name.clone())
    });
    match best {
        Some((node, victims)) => Ok(Preemption {
            node: node.name.clone(),
            victims: victims
                .into_iter()
                .map(|e| Victim {
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    uid: e.uid.clone(),
                    priority: e.priority,
                })
                .collect(),
        }),
        None => Err(reasons),
    }
}

/// Pick a node for the pod, or say why none fits (and, when preemption helps, whom to evict).
pub fn schedule(pod: &Pod, snapshot: &Snapshot) -> Result<String, FitError> {
    let default_spec = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&default_spec);
    let inc = Incoming::new(pod, spec, snapshot);
    let none = HashSet::new();
    let spread = SpreadFilter::new(&inc, snapshot, &none);
    let affinity = AffinityFilter::new(&inc, snapshot, &none);
    let has_nominated = !snapshot.nominated.is_empty();
    let empty = NodeUsage::default();
    let mut feasible: Vec<(&NodeInfo, NodeUsage)> = Vec::new();
    let mut failures: Vec<(&NodeInfo, NodeFailure)> = Vec::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for node in snapshot.nodes.values() {
        let nominated;
        let usage = if has_nominated {
            nominated = usage_with_nominated(&inc, snapshot, &node.name);
            &nominated
        } else {
            snapshot.usage.get(&node.name).unwrap_or(&empty)
        };
        match run_filters(&inc, node, usage, spread.as_ref(), affinity.as_ref()) {
            None => feasible.push((node, snapshot.usage(&node.name))),
            Some(f) => {
                for r in &f.reasons {
                    *reasons.entry(r.clone()).or_default() += 1;
                }
                failures.push((node, f));
            }
        }
    }
    let num_nodes = snapshot.nodes.len();
    if feasible.is_empty() {
        let mut preemption = None;
        let post_filter = if num_nodes == 0 {
            String::new()
        } else if let Some(msg) = preemption_ineligible(pod, &inc, snapshot, &failures) {
            msg
        } else {
            match find_victims(&inc, snapshot, &failures) {
                Ok(p) => {
                    preemption = Some(p);
                    String::new()
                }
                Err(pre) => format!("preemption: {}", histogram(num_nodes, &pre)),
            }
        };
        return Err(FitError {
            num_nodes,
            reasons,
            post_filter,
            preemption,
        });
    }
    let nodes: Vec<&NodeInfo> = feasible.iter().map(|(n, _)| *n).collect();
    let taint = taint_scores(spec, &nodes);
    let node_affinity = node_affinity_scores(spec, &nodes);
    let spread = spread_scores(&inc, snapshot, &feasible);
    let pod_affinity = affinity_scores(&inc, snapshot, &nodes);
    let seed = fnv(&pod_key(pod));
    let best = feasible
        .iter()
        .enumerate()
        .map(|(i, (n, u))| {
            let score = least_allocated(&inc.non_zero, n, u)
                + 3 * taint[i]
                + 2 * node_affinity[i]
                + 2 * spread[i]
                + 2 * pod_affinity[i];
            // Among equal scores, a pseudo-random but deterministic pick.
            let tie = fnv(&n.name) ^ seed;
            (score, tie, n.name.as_str())
        })
        .max_by_key(|(score, tie, _)| (*score, *tie));
    match best {
        Some((_, _, name)) => Ok(name.to_string()),
        None => Err(FitError {
            num_nodes,
            reasons,
            post_filter: String::new(),
            preemption: None,
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

    fn zoned(name: &str, zone: &str) -> Node {
        node(
            name,
            "4",
            "8Gi",
            json!({"metadata": {"labels": {LABEL_ZONE: zone}}}),
        )
    }

    fn place(snap: &mut Snapshot, p: &Pod) -> String {
        let n = schedule(p, snap).unwrap();
        snap.assume(p, &n);
        n
    }

    fn anti_affine(name: &str) -> Pod {
        pod(
            name,
            "10m",
            json!({"metadata": {"labels": {"app": "web"}},
                "spec": {"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "web"}}, "topologyKey": LABEL_HOSTNAME}]}}}}),
        )
    }

    #[test]
    fn required_anti_affinity_one_per_node_then_upstream_message() {
        let nodes: Vec<Node> = (0..3)
            .map(|i| node(&format!("n{i}"), "4", "8Gi", json!({})))
            .collect();
        let mut snap = Snapshot::new(&nodes, &[]);
        let mut used: Vec<String> = (0..3)
            .map(|i| place(&mut snap, &anti_affine(&format!("w{i}"))))
            .collect();
        used.sort();
        assert_eq!(used, vec!["n0", "n1", "n2"]);
        let err = schedule(&anti_affine("w3"), &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules. \
             preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod.."
        );
        // A pod of another namespace is not matched by a term without namespaces.
        let mut other = anti_affine("x");
        other.metadata.namespace = Some("other".into());
        assert!(schedule(&other, &snap).is_ok());
    }

    #[test]
    fn existing_pods_anti_affinity_is_symmetric() {
        let nodes = [
            node("a", "4", "8Gi", json!({})),
            node("b", "4", "8Gi", json!({})),
        ];
        let guard = pod(
            "guard",
            "10m",
            json!({"spec": {"nodeName": "a", "affinity": {"podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": LABEL_HOSTNAME}]}}}}),
        );
        let snap = Snapshot::new(&nodes, &[guard]);
        let db = |extra: Value| {
            pod(
                "db",
                "10m",
                crate::patch::merge_patch(&json!({"metadata": {"labels": {"app": "db"}}}), &extra),
            )
        };
        // The db pod itself says nothing about the guard, yet stays off its node.
        let only_a = json!({"spec": {"nodeSelector": {LABEL_HOSTNAME: "a"}}});
        let err = schedule(&db(only_a), &snap).unwrap_err();
        assert_eq!(
            err.reasons.get(REASON_EXISTING_ANTI_AFFINITY),
            Some(&1),
            "{err}"
        );
        assert_eq!(schedule(&db(json!({})), &snap).unwrap(), "b");
    }

    #[test]
    fn required_pod_affinity_by_zone_and_namespace_selector() {
        let nodes = [
            zoned("a1", "a"),
            zoned("a2", "a"),
            zoned("b1", "b"),
            node("bare", "4", "8Gi", json!({})),
        ];
        let cache = pod(
            "cache",
            "10m",
            json!({"metadata": {"namespace": "infra", "labels": {"app": "cache"}}, "spec": {"nodeName": "a1"}}),
        );
        let mut snap = Snapshot::new(&nodes, &[cache]);
        let web = |ns_term: Value| {
            let term = crate::patch::merge_patch(
                &json!({"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": LABEL_ZONE}),
                &ns_term,
            );
            pod(
                "web",
                "10m",
                json!({"spec": {"affinity": {"podAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [term]}}}}),
            )
        };
        // Own namespace only: the cache pod is in "infra", so nothing matches and "web" does not
        // match its own term either.
        let err = schedule(&web(json!({})), &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/4 nodes are available: 4 node(s) didn't match pod affinity rules. \
             preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.."
        );
        // Named namespace: zone a only.
        let p = web(json!({"namespaces": ["infra"]}));
        for _ in 0..3 {
            assert!(schedule(&p, &snap).unwrap().starts_with('a'));
        }
        // Namespace selector on the namespace's labels.
        let p = web(json!({"namespaceSelector": {"matchLabels": {"team": "platform"}}}));
        assert!(schedule(&p, &snap).is_err());
        let ns: Namespace = serde_json::from_value(
            json!({"metadata": {"name": "infra", "labels": {"team": "platform"}}}),
        )
        .unwrap();
        snap.upsert_namespace(&ns);
        assert!(schedule(&p, &snap).unwrap().starts_with('a'));
        // The first pod of a self-affine group may go to any node with the topology key.
        let first = pod(
            "first",
            "10m",
            json!({"metadata": {"labels": {"app": "grp"}}, "spec": {"affinity": {"podAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"app": "grp"}}, "topologyKey": LABEL_ZONE}]}}}}),
        );
        let n = place(&mut snap, &first);
        assert_ne!(n, "bare");
        let zone = snap.node(&n).unwrap().labels[LABEL_ZONE].clone();
        let mut second = first.clone();
        second.metadata.uid = Some("uid-second".into());
        let n2 = schedule(&second, &snap).unwrap();
        assert_eq!(snap.node(&n2).unwrap().labels[LABEL_ZONE], zone);
    }

    fn spread_pod(name: &str, extra: Value) -> Pod {
        let base = json!({"metadata": {"labels": {"app": "s"}}, "spec": {"topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": LABEL_ZONE, "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app": "s"}}}]}});
        pod(name, "10m", crate::patch::merge_patch(&base, &extra))
    }

    #[test]
    fn topology_spread_max_skew_and_min_domains() {
        let nodes = [zoned("a1", "a"), zoned("a2", "a"), zoned("b1", "b")];
        let existing = [
            spread_pod("e1", json!({"spec": {"nodeName": "a1"}})),
            spread_pod("e2", json!({"spec": {"nodeName": "a2"}})),
        ];
        let mut snap = Snapshot::new(&nodes, &existing);
        // a has 2, b has 0: only b keeps the skew within 1, twice.
        assert_eq!(place(&mut snap, &spread_pod("p1", json!({}))), "b1");
        assert_eq!(place(&mut snap, &spread_pod("p2", json!({}))), "b1");
        // 2/2: either zone.
        assert!(schedule(&spread_pod("p3", json!({})), &snap).is_ok());
        // minDomains 3 with only 2 domains: the global minimum counts as 0, so 2+1-0 > 1.
        let md = spread_pod(
            "m",
            json!({"spec": {"topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": LABEL_ZONE, "whenUnsatisfiable": "DoNotSchedule", "minDomains": 3,
                 "labelSelector": {"matchLabels": {"app": "s"}}}]}}),
        );
        assert_eq!(
            schedule(&md, &snap).unwrap_err().reasons.get(REASON_SPREAD),
            Some(&3)
        );
        // Pods of other namespaces and other labels do not count; a node without the key fails.
        let nodes = [
            zoned("a1", "a"),
            zoned("b1", "b"),
            node("bare", "4", "8Gi", json!({})),
        ];
        let existing = [
            spread_pod("e1", json!({"spec": {"nodeName": "a1"}})),
            spread_pod("e2", json!({"spec": {"nodeName": "a1"}})),
            spread_pod(
                "o",
                json!({"metadata": {"namespace": "other"}, "spec": {"nodeName": "b1"}}),
            ),
            pod("big", "4", json!({"spec": {"nodeName": "b1"}})),
        ];
        let snap = Snapshot::new(&nodes, &existing);
        let err = schedule(&spread_pod("p", json!({})), &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/3 nodes are available: 1 Insufficient cpu, \
             1 node(s) didn't match pod topology spread constraints, \
             1 node(s) didn't match pod topology spread constraints (missing required label). \
             preemption: 0/3 nodes are available: 1 Preemption is not helpful for scheduling, \
             2 No preemption victims found for incoming pod.."
        );
        // nodeAffinityPolicy Honor (the default): a pod kept to zone a by node affinity spreads
        // over zone a only, so a1 is fine; with Ignore, zone b (0 pods) still counts.
        let affinity = json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{"key": LABEL_ZONE, "operator": "In", "values": ["a"]}]}]}}}});
        let honor = spread_pod("h", json!({ "spec": affinity.clone() }));
        assert_eq!(schedule(&honor, &snap).unwrap(), "a1");
        let mut spec = affinity;
        spec["topologySpreadConstraints"] = json!([{"maxSkew": 1, "topologyKey": LABEL_ZONE,
            "whenUnsatisfiable": "DoNotSchedule", "nodeAffinityPolicy": "Ignore",
            "labelSelector": {"matchLabels": {"app": "s"}}}]);
        let ignore = spread_pod("i", json!({ "spec": spec }));
        assert_eq!(
            schedule(&ignore, &snap)
                .unwrap_err()
                .reasons
                .get(REASON_SPREAD),
            Some(&1)
        );
    }

    #[test]
    fn soft_spread_and_preferred_terms_steer_the_score() {
        let nodes = [zoned("a1", "a"), zoned("a2", "a"), zoned("b1", "b")];
        let existing = [pod(
            "e",
            "10m",
            json!({"metadata": {"labels": {"app": "s"}}, "spec": {"nodeName": "b1"}}),
        )];
        let snap = Snapshot::new(&nodes, &existing);
        let soft = spread_pod(
            "p",
            json!({"spec": {"topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": LABEL_ZONE, "whenUnsatisfiable": "ScheduleAnyway",
                 "labelSelector": {"matchLabels": {"app": "s"}}}]}}),
        );
        assert!(schedule(&soft, &snap).unwrap().starts_with('a'));
        // Preferred node affinity: the heavier term wins.
        let pref = pod(
            "p",
            "10m",
            json!({"spec": {"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 10, "preference": {"matchExpressions": [{"key": LABEL_ZONE, "operator": "In", "values": ["a"]}]}},
                {"weight": 80, "preference": {"matchExpressions": [{"key": LABEL_ZONE, "operator": "In", "values": ["b"]}]}}]}}}}),
        );
        assert_eq!(schedule(&pref, &snap).unwrap(), "b1");
        let refs: Vec<&NodeInfo> = ["a1", "b1"].iter().map(|n| snap.node(n).unwrap()).collect();
        assert_eq!(
            node_affinity_scores(pref.spec.as_ref().unwrap(), &refs),
            vec![12, 100]
        );
        // Preferred pod anti-affinity keeps away from the zone with the matching pod.
        let away = pod(
            "p",
            "10m",
            json!({"spec": {"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "s"}}, "topologyKey": LABEL_ZONE}}]}}}}),
        );
        assert!(schedule(&away, &snap).unwrap().starts_with('a'));
        // Preferred pod affinity draws to it.
        let near = pod(
            "p",
            "10m",
            json!({"spec": {"affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "s"}}, "topologyKey": LABEL_ZONE}}]}}}}),
        );
        assert_eq!(schedule(&near, &snap).unwrap(), "b1");
    }

    #[test]
    fn prefer_no_schedule_taints_score_lower() {
        let nodes = [
            node(
                "a",
                "4",
                "8Gi",
                json!({"spec": {"taints": [{"key": "soft", "effect": "PreferNoSchedule"}]}}),
            ),
            node("b", "4", "8Gi", json!({})),
        ];
        let snap = Snapshot::new(&nodes, &[]);
        for i in 0..5 {
            assert_eq!(
                schedule(&pod(&format!("p{i}"), "10m", json!({})), &snap).unwrap(),
                "b"
            );
        }
        let refs: Vec<&NodeInfo> = ["a", "b"].iter().map(|n| snap.node(n).unwrap()).collect();
        assert_eq!(taint_scores(&PodSpec::default(), &refs), vec![0, 100]);
        let tolerant: PodSpec = serde_json::from_value(json!({"containers": [],
            "tolerations": [{"key": "soft", "operator": "Exists", "effect": "PreferNoSchedule"}]}))
        .unwrap();
        assert_eq!(taint_scores(&tolerant, &refs), vec![100, 100]);
    }

    fn prio(name: &str, cpu: &str, priority: i32, node: Option<&str>) -> Pod {
        pod(
            name,
            cpu,
            json!({"spec": {"priority": priority, "nodeName": node}}),
        )
    }

    #[test]
    fn preemption_picks_fewest_lowest_priority_victims() {
        let nodes = [
            node("a", "1", "8Gi", json!({})),
            node("b", "1", "8Gi", json!({})),
        ];
        let pods = [
            prio("low", "600m", 1, Some("a")),
            prio("mid", "300m", 5, Some("a")),
            prio("mid2", "900m", 10, Some("b")),
        ];
        let mut snap = Snapshot::new(&nodes, &pods);
        let high = prio("high", "500m", 100, None);
        let err = schedule(&high, &snap).unwrap_err();
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 2 Insufficient cpu."
        );
        // On a, "mid" is reprieved (it still leaves room); only "low" goes. b would lose a
        // priority-10 pod.
        assert_eq!(
            err.preemption,
            Some(Preemption {
                node: "a".into(),
                victims: vec![Victim {
                    namespace: "default".into(),
                    name: "low".into(),
                    uid: "uid-low".into(),
                    priority: 1,
                }],
            })
        );
        // Equal or higher priority pods are never victims.
        let peer = prio("peer", "800m", 2, None);
        let err = schedule(&peer, &snap).unwrap_err();
        assert!(err.preemption.is_none());
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 2 Insufficient cpu. preemption: 0/2 nodes are available: \
             1 Insufficient cpu, 1 No preemption victims found for incoming pod.."
        );
        // preemptionPolicy Never.
        let mut never = high.clone();
        never.spec.as_mut().unwrap().preemption_policy = Some("Never".into());
        assert!(schedule(&never, &snap).unwrap_err().preemption.is_none());
        // Once nominated with the victim terminating, the pod waits instead of preempting more.
        let mut nominated = high.clone();
        nominated.status = Some(serde_json::from_value(json!({"nominatedNodeName": "a"})).unwrap());
        snap.upsert_pod(&nominated);
        snap.mark_deleting("uid-low");
        let err = schedule(&nominated, &snap).unwrap_err();
        assert!(err.preemption.is_none());
        assert_eq!(
            err.to_string(),
            "0/2 nodes are available: 2 Insufficient cpu. \
             preemption: not eligible due to a terminating pod on the nominated node.."
        );
        // The victim goes: the room on a is held for the nominated pod against a lower-priority
        // one, and the nominated pod gets it.
        snap.remove_pod(&pods[0]);
        let small = prio("small", "500m", 0, None);
        let err = schedule(&small, &snap).unwrap_err();
        assert_eq!(err.reasons.get("Insufficient cpu"), Some(&2));
        assert_eq!(schedule(&nominated, &snap).unwrap(), "a");
    }

    #[test]
    fn preemption_removes_anti_affinity_conflicts() {
        let nodes = [node("a", "4", "8Gi", json!({}))];
        let mut low = anti_affine("low");
        low.spec.as_mut().unwrap().node_name = Some("a".into());
        let snap = Snapshot::new(&nodes, &[low]);
        let mut high = anti_affine("high");
        high.spec.as_mut().unwrap().priority = Some(10);
        let err = schedule(&high, &snap).unwrap_err();
        assert_eq!(err.preemption.map(|p| p.victims.len()), Some(1));
    }

    #[test]
    fn thousand_replicas_spread_evenly_over_a_hundred_nodes() {
        let nodes: Vec<Node> = (0..100)
            .map(|i| node(&format!("n{i:03}"), "32", "64Gi", json!({})))
            .collect();
        let mut snap = Snapshot::new(&nodes, &[]);
        let owner = json!({"metadata": {"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "rs", "uid": "rs-uid", "controller": true}]}});
        let started = std::time::Instant::now();
        for i in 0..1000 {
            place(&mut snap, &pod(&format!("p{i}"), "100m", owner.clone()));
        }
        eprintln!("1000 pods on 100 nodes: {:?}", started.elapsed());
        for i in 0..100 {
            assert_eq!(
                snap.usage(&format!("n{i:03}")).by_controller.get("rs-uid"),
                Some(&10)
            );
        }
    }
}
