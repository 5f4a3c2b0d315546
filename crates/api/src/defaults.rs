//! Upstream defaulting per kind, on objects in the JSON API shape (`serde_json::Value`).
//!
//! Mirrors `pkg/apis/{core,apps,batch,...}/v1/defaults.go` plus the few admission plugins and
//! strategies whose effect a user sees in `kubectl get -o yaml` on a fresh object (Priority,
//! DefaultTolerationSeconds, ServiceAccount, the Job selector, the Namespace finalizer, the
//! Service's allocated values on update). Every function here is
//! total: a field of the wrong type is left alone (validation reports it), nothing panics.
//!
//! Defaulting never removes what the user set, with two upstream exceptions: a Secret's
//! write-only `stringData` is folded into `data`, and `sessionAffinityConfig` is dropped when a
//! Service's session affinity is `None`.
//!
//! No I/O, no dependency on the store or the HTTP server.

use serde_json::{Map, Value, json};

/// The default for `spec.terminationGracePeriodSeconds`.
pub const TERMINATION_GRACE_PERIOD_SECONDS: i64 = 30;
/// `tolerationSeconds` of the not-ready/unreachable tolerations added to every pod.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;
/// Label put on every namespace, naming it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
/// Labels the Job strategy puts on a Job's pod template and selector.
pub const JOB_CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
pub const LEGACY_JOB_CONTROLLER_UID_LABEL: &str = "controller-uid";
pub const LEGACY_JOB_NAME_LABEL: &str = "job-name";

// ---------------------------------------------------------------------------------------------
// Small helpers on JSON maps. A key holding `null` counts as unset, as upstream's decoder does.

/// The object under `key`, created (empty) when missing or null. None when it has another type.
fn ensure_obj<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let slot = m.entry(key.to_string()).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// The existing object under `key`, if it is one.
fn get_obj<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    m.get_mut(key).and_then(Value::as_object_mut)
}

/// The existing array under `key`, if it is one.
fn get_arr<'a>(m: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Vec<Value>> {
    m.get_mut(key).and_then(Value::as_array_mut)
}

fn unset(m: &Map<String, Value>, key: &str) -> bool {
    m.get(key).is_none_or(Value::is_null)
}

/// Set `key` when missing or null (a pointer field upstream).
fn default_value(m: &mut Map<String, Value>, key: &str, value: Value) {
    if unset(m, key) {
        m.insert(key.to_string(), value);
    }
}

/// Set a string `key` when missing, null or "" (a plain string field upstream).
fn default_str(m: &mut Map<String, Value>, key: &str, value: &str) {
    let empty = match m.get(key) {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    if empty {
        m.insert(key.to_string(), Value::String(value.to_string()));
    }
}

fn str_of<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Apply `f` to every object element of the array under `key`.
fn each_obj(m: &mut Map<String, Value>, key: &str, mut f: impl FnMut(&mut Map<String, Value>)) {
    if let Some(items) = get_arr(m, key) {
        for item in items.iter_mut().filter_map(Value::as_object_mut) {
            f(item);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Kinds without defaulting rules.

/// No defaulting (kinds without upstream defaults).
pub fn none(_obj: &mut Value) {}

// ---------------------------------------------------------------------------------------------
// Pods and pod templates.

/// The pull policy upstream gives an image without one: `Always` for `:latest` or an image
/// with neither tag nor digest, else `IfNotPresent`.
pub fn image_pull_policy(image: &str) -> &'static str {
    if image.is_empty() {
        // upstream fails to parse the reference and treats the tag as ""
        return "IfNotPresent";
    }
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    let last = name.rsplit('/').next().unwrap_or(name);
    let tag = last.rsplit_once(':').map(|(_, tag)| tag);
    match (tag, digest) {
        (Some("latest"), _) => "Always",
        (None, None) => "Always",
        _ => "IfNotPresent",
    }
}

fn default_probe(probe: &mut Map<String, Value>) {
    default_value(probe, "timeoutSeconds", json!(1));
    default_value(probe, "periodSeconds", json!(10));
    default_value(probe, "successThreshold", json!(1));
    default_value(probe, "failureThreshold", json!(3));
    default_handler(probe);
}

/// SetDefaults_HTTPGetAction on a probe or lifecycle handler.
fn default_handler(handler: &mut Map<String, Value>) {
    if let Some(http) = get_obj(handler, "httpGet") {
        default_str(http, "path", "/");
        default_str(http, "scheme", "HTTP");
    }
}

/// SetDefaults_ObjectFieldSelector: `fieldRef.apiVersion` is `v1`.
fn default_field_ref(holder: &mut Map<String, Value>) {
    if let Some(field_ref) = get_obj(holder, "fieldRef") {
        default_str(field_ref, "apiVersion", "v1");
    }
}

/// SetDefaults_Container and what it nests (ports, probes, env, lifecycle).
fn default_container(c: &mut Map<String, Value>) {
    if matches!(c.get("imagePullPolicy"), None | Some(Value::Null))
        || c.get("imagePullPolicy").and_then(Value::as_str) == Some("")
    {
        let policy = image_pull_policy(str_of(c, "image"));
        c.insert("imagePullPolicy".into(), json!(policy));
    }
    default_str(c, "terminationMessagePath", "/dev/termination-log");
    default_str(c, "terminationMessagePolicy", "File");
    default_value(c, "resources", json!({}));
    each_obj(c, "ports", |p| default_str(p, "protocol", "TCP"));
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = get_obj(c, probe) {
            default_probe(p);
        }
    }
    if let Some(lifecycle) = get_obj(c, "lifecycle") {
        for hook in ["postStart", "preStop"] {
            if let Some(h) = get_obj(lifecycle, hook) {
                default_handler(h);
            }
        }
    }
    each_obj(c, "env", |e| {
        if let Some(from) = get_obj(e, "valueFrom") {
            default_field_ref(from);
        }
    });
}

/// The JSON keys of every volume source, in upstream's validation order.
pub(crate) const VOLUME_SOURCES: &[&str] = &[
    "emptyDir",
    "hostPath",
    "gitRepo",
    "gcePersistentDisk",
    "awsElasticBlockStore",
    "secret",
    "nfs",
    "iscsi",
    "glusterfs",
    "flexVolume",
    "persistentVolumeClaim",
    "rbd",
    "cinder",
    "cephfs",
    "quobyte",
    "downwardAPI",
    "fc",
    "azureFile",
    "vsphereVolume",
    "photonPersistentDisk",
    "portworxVolume",
    "azureDisk",
    "csi",
    "projected",
    "scaleIO",
    "configMap",
    "storageos",
    "ephemeral",
    "image",
];

/// SetDefaults_Volume and the per-source defaults (file modes 0644).
fn default_volume(v: &mut Map<String, Value>) {
    if VOLUME_SOURCES.iter().all(|k| unset(v, k)) {
        v.insert("emptyDir".into(), json!({}));
    }
    for source in ["configMap", "secret", "downwardAPI", "projected"] {
        if let Some(s) = get_obj(v, source) {
            default_value(s, "defaultMode", json!(420));
        }
    }
    if let Some(h) = get_obj(v, "hostPath") {
        default_value(h, "type", json!(""));
    }
    if let Some(d) = get_obj(v, "downwardAPI") {
        each_obj(d, "items", default_field_ref);
    }
    if let Some(p) = get_obj(v, "projected") {
        each_obj(p, "sources", |s| {
            if let Some(d) = get_obj(s, "downwardAPI") {
                each_obj(d, "items", default_field_ref);
            }
            if let Some(t) = get_obj(s, "serviceAccountToken") {
                default_value(t, "expirationSeconds", json!(3600));
            }
        });
    }
}

/// SetDefaults_PodSpec: what a pod and every pod template get.
fn default_pod_spec(spec: &mut Map<String, Value>) {
    // the v1 conversion keeps the deprecated `serviceAccount` equal to `serviceAccountName`
    match (
        str_of(spec, "serviceAccountName"),
        str_of(spec, "serviceAccount"),
    ) {
        ("", "") => {}
        ("", deprecated) => {
            let name = deprecated.to_string();
            spec.insert("serviceAccountName".into(), json!(name));
        }
        (name, _) => {
            let name = name.to_string();
            spec.insert("serviceAccount".into(), json!(name));
        }
    }
    default_str(spec, "dnsPolicy", "ClusterFirst");
    default_str(spec, "restartPolicy", "Always");
    default_value(spec, "securityContext", json!({}));
    default_value(
        spec,
        "terminationGracePeriodSeconds",
        json!(TERMINATION_GRACE_PERIOD_SECONDS),
    );
    default_str(spec, "schedulerName", "default-scheduler");
    let host_network = spec.get("hostNetwork").and_then(Value::as_bool) == Some(true);
    for key in ["initContainers", "containers", "ephemeralContainers"] {
        each_obj(spec, key, |c| {
            default_container(c);
            if host_network {
                // defaultHostNetworkPorts: hostPort follows containerPort
                each_obj(c, "ports", |p| {
                    if (unset(p, "hostPort") || p.get("hostPort") == Some(&json!(0)))
                        && let Some(port) = p.get("containerPort").cloned()
                    {
                        p.insert("hostPort".into(), port);
                    }
                });
            }
        });
    }
    each_obj(spec, "volumes", default_volume);
}

/// Pod template (`spec.template` of a workload): SetDefaults_PodSpec only, as upstream; the
/// pod-only defaults (service links, requests from limits, priority) wait for the pod.
fn default_pod_template(template: &mut Map<String, Value>) {
    if let Some(spec) = ensure_obj(template, "spec") {
        default_pod_spec(spec);
    }
}

/// Requests default to limits for each resource that has a limit but no request.
fn default_requests_from_limits(c: &mut Map<String, Value>) {
    let Some(resources) = get_obj(c, "resources") else {
        return;
    };
    let Some(limits) = resources.get("limits").and_then(Value::as_object).cloned() else {
        return;
    };
    if limits.is_empty() {
        return;
    }
    let Some(requests) = ensure_obj(resources, "requests") else {
        return;
    };
    for (name, value) in limits {
        requests.entry(name).or_insert(value);
    }
}

/// The priority the Priority admission plugin gives a pod's `priorityClassName` when no
/// PriorityClass objects exist beyond the two built-in ones.
fn builtin_priority(class: &str) -> i64 {
    match class {
        "system-node-critical" => 2_000_001_000,
        "system-cluster-critical" => 2_000_000_000,
        _ => 0,
    }
}

/// A Pod: SetDefaults_Pod, SetDefaults_PodSpec, the containers', volumes' and probes' defaults,
/// and the Priority admission plugin (`priority`, `preemptionPolicy`).
pub fn pod(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let Some(spec) = ensure_obj(root, "spec") else {
        return;
    };
    default_pod_spec(spec);
    for key in ["initContainers", "containers"] {
        each_obj(spec, key, default_requests_from_limits);
    }
    default_value(spec, "enableServiceLinks", json!(true));
    let priority = builtin_priority(str_of(spec, "priorityClassName"));
    default_value(spec, "priority", json!(priority));
    default_str(spec, "preemptionPolicy", "PreemptLowerPriority");
}

/// The ServiceAccount admission plugin's defaulting: a pod without a service account runs as
/// `default` (the token volume it also mounts upstream is left to the server).
pub fn pod_default_service_account(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let Some(spec) = ensure_obj(root, "spec") else {
        return;
    };
    default_str(spec, "serviceAccountName", "default");
    let name = str_of(spec, "serviceAccountName").to_string();
    spec.insert("serviceAccount".into(), json!(name));
}

/// The DefaultTolerationSeconds admission plugin: tolerate `node.kubernetes.io/not-ready` and
/// `node.kubernetes.io/unreachable` (NoExecute) for 300s unless the pod already tolerates them.
pub fn pod_default_tolerations(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let Some(spec) = ensure_obj(root, "spec") else {
        return;
    };
    let tolerations = spec.entry("tolerations").or_insert(Value::Null);
    if tolerations.is_null() {
        *tolerations = Value::Array(Vec::new());
    }
    let Some(list) = tolerations.as_array_mut() else {
        return;
    };
    let tolerates = |list: &Vec<Value>, key: &str| {
        list.iter().filter_map(Value::as_object).any(|t| {
            let k = str_of(t, "key");
            let effect = str_of(t, "effect");
            (k == key || k.is_empty()) && (effect == "NoExecute" || effect.is_empty())
        })
    };
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        if !tolerates(list, key) {
            list.push(json!({
                "key": key,
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
            }));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Workloads.

/// A Deployment (apps/v1): replicas 1, RollingUpdate 25%/25%, revisionHistoryLimit 10,
/// progressDeadlineSeconds 600, and the pod template's defaults.
pub fn deployment(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let Some(spec) = ensure_obj(root, "spec") else {
        return;
    };
    default_value(spec, "replicas", json!(1));
    if let Some(strategy) = ensure_obj(spec, "strategy") {
        default_str(strategy, "type", "RollingUpdate");
        if str_of(strategy, "type") == "RollingUpdate"
            && let Some(rolling) = ensure_obj(strategy, "rollingUpdate")
        {
            default_value(rolling, "maxUnavailable", json!("25%"));
            default_value(rolling, "maxSurge", json!("25%"));
        }
    }
    default_value(spec, "revisionHistoryLimit", json!(10));
    default_value(spec, "progressDeadlineSeconds", json!(600));
    if let Some(template) = ensure_obj(spec, "template") {
        default_pod_template(template);
    }
}

/// A ReplicaSet (apps/v1): replicas 1 and the pod template's defaults.
pub fn replicaset(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let Some(spec) = ensure_obj(root, "spec") else {
        return;
    };
    default_value(spec, "replicas", json!(1));
    if let Some(template) = ensure_obj(spec, "template") {
        default_pod_template(template);
    }
}

/// A Job (batch/v1), as SetDefaults_Job: completions and parallelism 1 when both are unset
/// (parallelism 1 when only it is), backoffLimit 6 (MaxInt32 with backoffLimitPerIndex),
/// completionMode NonIndexed, suspend false, manualSelector false, podReplacementPolicy
/// TerminatingOrFailed (Failed with a podFailurePolicy), the Job's labels from the template's
/// when it has none, and the pod template's defaults. The template's `restartPolicy` is the
/// user's to set: defaulting it to Always makes validation reject the Job, as upstream.
pub fn job(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let Some(spec) = ensure_obj(root, "spec") else {
        return;
    };
    if unset(spec, "completions") && unset(spec, "parallelism") {
        spec.insert("completions".into(), json!(1));
    }
    default_value(spec, "parallelism", json!(1));
    let backoff = if unset(spec, "backoffLimitPerIndex") {
        6
    } else {
        i64::from(i32::MAX)
    };
    default_value(spec, "backoffLimit", json!(backoff));
    default_value(spec, "completionMode", json!("NonIndexed"));
    default_value(spec, "suspend", json!(false));
    default_value(spec, "manualSelector", json!(false));
    let has_failure_policy = !unset(spec, "podFailurePolicy");
    if let Some(policy) = get_obj(spec, "podFailurePolicy") {
        each_obj(policy, "rules", |rule| {
            each_obj(rule, "onPodConditions", |pattern| {
                default_str(pattern, "status", "True")
            });
        });
    }
    let replacement = if has_failure_policy {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    default_value(spec, "podReplacementPolicy", json!(replacement));
    if let Some(template) = ensure_obj(spec, "template") {
        default_pod_template(template);
    }
    copy_template_labels(root);
}

/// SetDefaults_Job: a Job without labels takes its pod template's labels.
fn copy_template_labels(root: &mut Map<String, Value>) {
    let template_labels = root
        .get("spec")
        .and_then(|s| s.get("template"))
        .and_then(|t| t.get("metadata"))
        .and_then(|m| m.get("labels"))
        .and_then(Value::as_object)
        .cloned();
    let Some(template_labels) = template_labels else {
        return;
    };
    let Some(meta) = ensure_obj(root, "metadata") else {
        return;
    };
    let empty = match meta.get("labels") {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(_) => false,
    };
    if empty {
        meta.insert("labels".into(), Value::Object(template_labels));
    }
}

/// The Job strategy's generated selector (skipped with `spec.manualSelector: true`): the pod
/// template gets `batch.kubernetes.io/job-name`, `job-name`, `batch.kubernetes.io/controller-uid`
/// and `controller-uid` (labels the user set are kept, validation rejects wrong ones), and the
/// selector matches `batch.kubernetes.io/controller-uid=<uid>`. Call it on create, once the
/// server has assigned `uid`, after [`job`]; the Job's labels are then taken from the template's
/// when it has none.
pub fn job_selector(obj: &mut Value, uid: &str) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let name = root
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(spec) = ensure_obj(root, "spec") else {
        return;
    };
    if spec.get("manualSelector").and_then(Value::as_bool) == Some(true) {
        return;
    }
    if let Some(template) = ensure_obj(spec, "template")
        && let Some(meta) = ensure_obj(template, "metadata")
        && let Some(labels) = ensure_obj(meta, "labels")
    {
        for key in [LEGACY_JOB_NAME_LABEL, JOB_NAME_LABEL] {
            labels.entry(key).or_insert_with(|| json!(name));
        }
        for key in [LEGACY_JOB_CONTROLLER_UID_LABEL, JOB_CONTROLLER_UID_LABEL] {
            labels.entry(key).or_insert_with(|| json!(uid));
        }
    }
    if let Some(selector) = ensure_obj(spec, "selector")
        && let Some(match_labels) = ensure_obj(selector, "matchLabels")
    {
        match_labels
            .entry(JOB_CONTROLLER_UID_LABEL)
            .or_insert_with(|| json!(uid));
    }
    copy_template_labels(root);
}

// ---------------------------------------------------------------------------------------------
// Core kinds.

/// A Service: type ClusterIP, sessionAffinity None (ClientIP gets a 10800s timeout), ports
/// protocol TCP and targetPort = port, externalTrafficPolicy Cluster for NodePort/LoadBalancer,
/// internalTrafficPolicy Cluster, allocateLoadBalancerNodePorts true for LoadBalancer, and the
/// IP family fields the allocator sets on a single-stack IPv4 cluster.
pub fn service(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let Some(spec) = ensure_obj(root, "spec") else {
        return;
    };
    default_str(spec, "sessionAffinity", "None");
    match str_of(spec, "sessionAffinity") {
        "None" => {
            spec.remove("sessionAffinityConfig");
        }
        "ClientIP" => {
            if let Some(config) = ensure_obj(spec, "sessionAffinityConfig")
                && let Some(client_ip) = ensure_obj(config, "clientIP")
            {
                default_value(client_ip, "timeoutSeconds", json!(10800));
            }
        }
        _ => {}
    }
    default_str(spec, "type", "ClusterIP");
    each_obj(spec, "ports", |p| {
        default_str(p, "protocol", "TCP");
        let unset_target = match p.get("targetPort") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s.is_empty(),
            Some(Value::Number(n)) => n.as_i64() == Some(0),
            Some(_) => false,
        };
        if unset_target && let Some(port) = p.get("port").cloned() {
            p.insert("targetPort".into(), port);
        }
    });
    let type_ = str_of(spec, "type").to_string();
    let has_external_ips = spec
        .get("externalIPs")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let externally_accessible = type_ == "NodePort"
        || type_ == "LoadBalancer"
        || (type_ == "ClusterIP" && has_external_ips);
    if externally_accessible {
        default_str(spec, "externalTrafficPolicy", "Cluster");
    }
    if matches!(type_.as_str(), "ClusterIP" | "NodePort" | "LoadBalancer") {
        default_value(spec, "internalTrafficPolicy", json!("Cluster"));
    }
    if type_ == "LoadBalancer" {
        default_value(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if type_ != "ExternalName" {
        let headless = str_of(spec, "clusterIP") == "None";
        let has_selector = spec
            .get("selector")
            .and_then(Value::as_object)
            .is_some_and(|s| !s.is_empty());
        let policy = if headless && !has_selector {
            "RequireDualStack"
        } else {
            "SingleStack"
        };
        default_value(spec, "ipFamilyPolicy", json!(policy));
        let families_unset = match spec.get("ipFamilies") {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        if families_unset {
            spec.insert("ipFamilies".into(), json!(["IPv4"]));
        }
    }
}

/// On a Service update, keep what the server allocated when the new object leaves it out (upstream
/// `patchAllocatedValues`): `clusterIP`, `clusterIPs`, and each port's `nodePort` (matched by
/// port number and protocol) for NodePort/LoadBalancer services. Call before validation.
pub fn service_keep_allocated(obj: &mut Value, old: &Value) {
    let Some(old_spec) = old.get("spec").and_then(Value::as_object) else {
        return;
    };
    let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    let new_type = str_of(spec, "type").to_string();
    if new_type != "ExternalName" && str_of(old_spec, "type") != "ExternalName" {
        for key in ["clusterIP", "clusterIPs"] {
            let empty = match spec.get(key) {
                None | Some(Value::Null) => true,
                Some(Value::String(s)) => s.is_empty(),
                Some(Value::Array(a)) => a.is_empty(),
                Some(_) => false,
            };
            if empty && let Some(v) = old_spec.get(key) {
                spec.insert(key.into(), v.clone());
            }
        }
    }
    if new_type == "NodePort" || new_type == "LoadBalancer" {
        let old_ports: Vec<Map<String, Value>> = old_spec
            .get("ports")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_object).cloned().collect())
            .unwrap_or_default();
        each_obj(spec, "ports", |p| {
            let no_node_port = match p.get("nodePort") {
                None | Some(Value::Null) => true,
                Some(v) => v.as_i64() == Some(0),
            };
            if !no_node_port {
                return;
            }
            let protocol = match str_of(p, "protocol") {
                "" => "TCP",
                other => other,
            };
            let found = old_ports.iter().find(|o| {
                o.get("port") == p.get("port")
                    && match str_of(o, "protocol") {
                        "" => "TCP",
                        other => other,
                    } == protocol
            });
            if let Some(node_port) = found.and_then(|o| o.get("nodePort")).cloned() {
                p.insert("nodePort".into(), node_port);
            }
        });
    }
}

/// Endpoints: each port's protocol is TCP.
pub fn endpoints(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    each_obj(root, "subsets", |subset| {
        each_obj(subset, "ports", |p| default_str(p, "protocol", "TCP"));
    });
}

/// A Secret: type Opaque, and the write-only `stringData` folded into `data` (base64, its keys
/// win), as the v1 conversion does. Non-string `stringData` values stay for validation to report.
pub fn secret(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    default_str(root, "type", "Opaque");
    let Some(Value::Object(string_data)) = root.get("stringData").cloned() else {
        return;
    };
    if string_data.values().any(|v| !v.is_string()) {
        return;
    }
    let Some(data) = ensure_obj(root, "data") else {
        return;
    };
    for (key, value) in string_data {
        let text = value.as_str().unwrap_or("");
        data.insert(key, Value::String(base64_encode(text.as_bytes())));
    }
    root.remove("stringData");
}

/// Standard base64 with padding, as Go's `encoding/json` writes `[]byte`.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A Namespace: `spec.finalizers: [kubernetes]` (the strategy), `status.phase: Active`, and the
/// `kubernetes.io/metadata.name` label (once the name is known).
pub fn namespace(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    if let Some(spec) = ensure_obj(root, "spec") {
        let empty = match spec.get("finalizers") {
            None | Some(Value::Null) => true,
            Some(Value::Array(a)) => a.is_empty(),
            Some(_) => false,
        };
        if empty {
            spec.insert("finalizers".into(), json!(["kubernetes"]));
        }
    }
    if let Some(status) = ensure_obj(root, "status") {
        default_str(status, "phase", "Active");
    }
    let Some(meta) = ensure_obj(root, "metadata") else {
        return;
    };
    let name = str_of(meta, "name").to_string();
    if name.is_empty() {
        return;
    }
    if let Some(labels) = ensure_obj(meta, "labels") {
        labels.insert(NAMESPACE_NAME_LABEL.into(), Value::String(name));
    }
}

/// A Node: `status.allocatable` defaults to `status.capacity`.
pub fn node(obj: &mut Value) {
    let Some(root) = obj.as_object_mut() else {
        return;
    };
    let Some(status) = get_obj(root, "status") else {
        return;
    };
    if unset(status, "allocatable")
        && let Some(capacity) = status.get("capacity").filter(|c| c.is_object()).cloned()
    {
        status.insert("allocatable".into(), capacity);
    }
}

/// A core/v1 Event: no upstream defaults.
pub fn event(_obj: &mut Value) {}

/// An events.k8s.io/v1 Event: no upstream defaults.
pub fn event_v1(_obj: &mut Value) {}

/// A ConfigMap: no upstream defaults.
pub fn configmap(_obj: &mut Value) {}

/// A ServiceAccount: no upstream defaults.
pub fn service_account(_obj: &mut Value) {}

/// A Lease: no upstream defaults.
pub fn lease(_obj: &mut Value) {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What `kubectl create deployment web --image=nginx` sends.
    fn kubectl_deployment() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx", "resources": {}}]}
                },
                "strategy": {}
            },
            "status": {}
        })
    }

    #[test]
    fn deployment_as_kubectl_get_shows_it() {
        let mut d = kubectl_deployment();
        deployment(&mut d);
        assert_eq!(
            d["spec"],
            json!({
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "containers": [{
                            "name": "nginx",
                            "image": "nginx",
                            "imagePullPolicy": "Always",
                            "resources": {},
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "File"
                        }],
                        "dnsPolicy": "ClusterFirst",
                        "restartPolicy": "Always",
                        "schedulerName": "default-scheduler",
                        "securityContext": {},
                        "terminationGracePeriodSeconds": 30
                    }
                },
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "revisionHistoryLimit": 10,
                "progressDeadlineSeconds": 600
            })
        );
        // pod-only defaults do not reach templates
        assert!(
            d["spec"]["template"]["spec"]
                .get("enableServiceLinks")
                .is_none()
        );
        assert!(d["spec"]["template"]["spec"].get("priority").is_none());
    }

    #[test]
    fn deployment_keeps_user_values_and_recreate_has_no_rolling_update() {
        let mut d = json!({"spec": {"replicas": 0, "revisionHistoryLimit": 2, "strategy": {"type": "Recreate"},
            "progressDeadlineSeconds": 60, "template": {"spec": {"restartPolicy": "Never"}}}});
        deployment(&mut d);
        assert_eq!(d["spec"]["replicas"], 0);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 2);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 60);
        assert_eq!(d["spec"]["strategy"], json!({"type": "Recreate"}));
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Never");

        let mut d = json!({"spec": {"strategy": {"rollingUpdate": {"maxSurge": 0}}}});
        deployment(&mut d);
        assert_eq!(
            d["spec"]["strategy"]["rollingUpdate"],
            json!({"maxSurge": 0, "maxUnavailable": "25%"})
        );
    }

    #[test]
    fn image_pull_policies() {
        assert_eq!(image_pull_policy("nginx"), "Always");
        assert_eq!(image_pull_policy("nginx:latest"), "Always");
        assert_eq!(image_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(image_pull_policy("localhost:5000/app"), "Always");
        assert_eq!(image_pull_policy("localhost:5000/app:v1"), "IfNotPresent");
        assert_eq!(image_pull_policy("localhost:5000/app:latest"), "Always");
        assert_eq!(image_pull_policy("busybox@sha256:abcd"), "IfNotPresent");
        assert_eq!(image_pull_policy("busybox:latest@sha256:abcd"), "Always");
        assert_eq!(image_pull_policy(""), "IfNotPresent");
    }

    #[test]
    fn pod_defaults_everything_kubectl_run_shows() {
        let mut p = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "x", "labels": {"run": "x"}},
            "spec": {"containers": [{
                "name": "x", "image": "nginx:1.27",
                "ports": [{"containerPort": 80}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "100m"}},
                "livenessProbe": {"httpGet": {"port": 80}},
                "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 5},
                "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]
            }],
            "volumes": [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "scratch"},
                        {"name": "s", "secret": {"secretName": "s", "defaultMode": 256}}]}
        });
        pod(&mut p);
        let spec = &p["spec"];
        assert_eq!(spec["restartPolicy"], "Always");
        assert_eq!(spec["dnsPolicy"], "ClusterFirst");
        assert_eq!(spec["schedulerName"], "default-scheduler");
        assert_eq!(spec["terminationGracePeriodSeconds"], 30);
        assert_eq!(spec["securityContext"], json!({}));
        assert_eq!(spec["enableServiceLinks"], true);
        assert_eq!(spec["priority"], 0);
        assert_eq!(spec["preemptionPolicy"], "PreemptLowerPriority");
        let c = &spec["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
        assert_eq!(c["terminationMessagePolicy"], "File");
        assert_eq!(
            c["ports"][0],
            json!({"containerPort": 80, "protocol": "TCP"})
        );
        assert_eq!(
            c["resources"]["requests"],
            json!({"cpu": "100m", "memory": "128Mi"})
        );
        assert_eq!(
            c["livenessProbe"],
            json!({"httpGet": {"port": 80, "path": "/", "scheme": "HTTP"}, "timeoutSeconds": 1,
                   "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3})
        );
        assert_eq!(c["readinessProbe"]["periodSeconds"], 5);
        assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["apiVersion"], "v1");
        assert_eq!(
            spec["volumes"][0]["configMap"],
            json!({"name": "c", "defaultMode": 420})
        );
        assert_eq!(
            spec["volumes"][1],
            json!({"name": "scratch", "emptyDir": {}})
        );
        assert_eq!(spec["volumes"][2]["secret"]["defaultMode"], 256);
    }

    #[test]
    fn pod_service_account_names() {
        let mut p = json!({"spec": {"serviceAccount": "builder"}});
        pod(&mut p);
        assert_eq!(p["spec"]["serviceAccountName"], "builder");
        let mut p = json!({"spec": {"serviceAccountName": "ci", "serviceAccount": "old"}});
        pod(&mut p);
        assert_eq!(p["spec"]["serviceAccount"], "ci");
        let mut p = json!({"spec": {}});
        pod(&mut p);
        assert!(p["spec"].get("serviceAccountName").is_none());
        pod_default_service_account(&mut p);
        assert_eq!(p["spec"]["serviceAccountName"], "default");
        assert_eq!(p["spec"]["serviceAccount"], "default");
        let mut p = json!({"spec": {"serviceAccountName": "ci"}});
        pod_default_service_account(&mut p);
        assert_eq!(p["spec"]["serviceAccountName"], "ci");
    }

    #[test]
    fn pod_priority_from_builtin_class_and_host_network_ports() {
        let mut p = json!({"spec": {"priorityClassName": "system-node-critical", "hostNetwork": true,
            "containers": [{"name": "a", "image": "a", "ports": [{"containerPort": 8080}]}]}});
        pod(&mut p);
        assert_eq!(p["spec"]["priority"], 2_000_001_000);
        assert_eq!(p["spec"]["containers"][0]["ports"][0]["hostPort"], 8080);
    }

    #[test]
    fn pod_defaults_survive_odd_input() {
        for mut odd in [
            json!(null),
            json!("pod"),
            json!({"spec": "x"}),
            json!({"spec": {"containers": "x", "volumes": [1, null, "v"]}}),
            json!({"spec": {"containers": [null, 3, {"image": 5, "ports": "x", "resources": []}]}}),
            json!({"spec": {"containers": [{"resources": {"limits": "x"}}]}}),
            json!({"spec": {"tolerations": "x"}}),
        ] {
            pod(&mut odd);
            pod_default_tolerations(&mut odd);
            deployment(&mut odd);
            job(&mut odd);
            job_selector(&mut odd, "u");
            service(&mut odd);
            secret(&mut odd);
            namespace(&mut odd);
            node(&mut odd);
            endpoints(&mut odd);
            replicaset(&mut odd);
        }
        // a spec created from nothing still gets its defaults
        let mut p = json!({});
        pod(&mut p);
        assert_eq!(p["spec"]["restartPolicy"], "Always");
    }

    #[test]
    fn default_tolerations_added_once_and_respect_existing() {
        let mut p = json!({"spec": {"containers": []}});
        pod_default_tolerations(&mut p);
        pod_default_tolerations(&mut p);
        assert_eq!(
            p["spec"]["tolerations"],
            json!([
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
            ])
        );
        let mut p = json!({"spec": {"tolerations": [{"operator": "Exists"}]}});
        pod_default_tolerations(&mut p);
        assert_eq!(p["spec"]["tolerations"], json!([{"operator": "Exists"}]));
        let mut p = json!({"spec": {"tolerations": [
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}]}});
        pod_default_tolerations(&mut p);
        let t = p["spec"]["tolerations"].as_array().unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0]["tolerationSeconds"], 10);
        assert_eq!(t[1]["key"], "node.kubernetes.io/not-ready");
    }

    /// What `kubectl create job pi --image=perl` sends, then defaults and the generated selector.
    #[test]
    fn job_defaults_and_selector() {
        let mut j = json!({
            "apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": "pi", "namespace": "default"},
            "spec": {"template": {"metadata": {}, "spec": {
                "containers": [{"name": "pi", "image": "perl", "resources": {}}], "restartPolicy": "Never"}}},
            "status": {}
        });
        job(&mut j);
        job_selector(&mut j, "0b4e");
        let spec = &j["spec"];
        assert_eq!(spec["completions"], 1);
        assert_eq!(spec["parallelism"], 1);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(spec["completionMode"], "NonIndexed");
        assert_eq!(spec["suspend"], false);
        assert_eq!(spec["manualSelector"], false);
        assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
        assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
        let labels = json!({
            "batch.kubernetes.io/controller-uid": "0b4e",
            "batch.kubernetes.io/job-name": "pi",
            "controller-uid": "0b4e",
            "job-name": "pi"
        });
        assert_eq!(spec["template"]["metadata"]["labels"], labels);
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "0b4e"}})
        );
        assert_eq!(j["metadata"]["labels"], labels);
    }

    #[test]
    fn job_completions_parallelism_rules() {
        let mut j = json!({"spec": {"parallelism": 3}});
        job(&mut j);
        assert!(j["spec"].get("completions").is_none());
        assert_eq!(j["spec"]["parallelism"], 3);
        let mut j = json!({"spec": {"completions": 5}});
        job(&mut j);
        assert_eq!(j["spec"]["completions"], 5);
        assert_eq!(j["spec"]["parallelism"], 1);
        let mut j = json!({"spec": {"backoffLimitPerIndex": 1, "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}}});
        job(&mut j);
        assert_eq!(j["spec"]["backoffLimit"], 2147483647);
        assert_eq!(j["spec"]["podReplacementPolicy"], "Failed");
        assert_eq!(
            j["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"],
            "True"
        );
    }

    #[test]
    fn job_selector_respects_manual_selector_and_user_labels() {
        let mut j = json!({"metadata": {"name": "x", "labels": {"team": "a"}},
            "spec": {"manualSelector": true, "template": {"metadata": {"labels": {"app": "x"}}}}});
        let before = j.clone();
        job_selector(&mut j, "u1");
        assert_eq!(j, before);
        let mut j = json!({"metadata": {"name": "x", "labels": {"team": "a"}},
            "spec": {"template": {"metadata": {"labels": {"job-name": "mine"}}}}});
        job_selector(&mut j, "u1");
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["job-name"],
            "mine"
        );
        assert_eq!(
            j["spec"]["template"]["metadata"]["labels"]["batch.kubernetes.io/job-name"],
            "x"
        );
        assert_eq!(j["metadata"]["labels"], json!({"team": "a"}));
    }

    #[test]
    fn replicaset_defaults() {
        let mut rs = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:1"}]}}}});
        replicaset(&mut rs);
        assert_eq!(rs["spec"]["replicas"], 1);
        assert_eq!(
            rs["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }

    /// What `kubectl create service clusterip web --tcp=80:8080` sends.
    #[test]
    fn service_defaults() {
        let mut s = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"ports": [{"name": "80-8080", "port": 80, "targetPort": 8080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
                     "selector": {"app": "web"}, "type": "ClusterIP"}
        });
        service(&mut s);
        let spec = &s["spec"];
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["ipFamilyPolicy"], "SingleStack");
        assert_eq!(spec["ipFamilies"], json!(["IPv4"]));
        assert_eq!(spec["ports"][0]["targetPort"], 8080);
        assert_eq!(
            spec["ports"][1],
            json!({"port": 53, "protocol": "UDP", "targetPort": 53})
        );
        assert!(spec.get("externalTrafficPolicy").is_none());

        let mut s = json!({"spec": {"type": "LoadBalancer", "ports": [{"port": 443, "targetPort": "https"}],
            "sessionAffinity": "ClientIP"}});
        service(&mut s);
        assert_eq!(s["spec"]["externalTrafficPolicy"], "Cluster");
        assert_eq!(s["spec"]["allocateLoadBalancerNodePorts"], true);
        assert_eq!(
            s["spec"]["ports"][0],
            json!({"port": 443, "targetPort": "https", "protocol": "TCP"})
        );
        assert_eq!(
            s["spec"]["sessionAffinityConfig"],
            json!({"clientIP": {"timeoutSeconds": 10800}})
        );

        let mut s = json!({"spec": {"type": "ExternalName", "externalName": "example.com"}});
        service(&mut s);
        assert!(s["spec"].get("ipFamilies").is_none());
        assert!(s["spec"].get("internalTrafficPolicy").is_none());

        let mut s = json!({"spec": {"clusterIP": "None", "ports": [{"port": 80}]}});
        service(&mut s);
        assert_eq!(s["spec"]["ipFamilyPolicy"], "RequireDualStack");
    }

    #[test]
    fn service_keeps_allocated_values() {
        let old = json!({"spec": {"type": "NodePort", "clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"],
            "ports": [{"port": 80, "protocol": "TCP", "nodePort": 30080}]}});
        let mut new = json!({"spec": {"type": "NodePort", "ports": [{"port": 80}, {"port": 81}]}});
        service_keep_allocated(&mut new, &old);
        assert_eq!(new["spec"]["clusterIP"], "10.0.0.7");
        assert_eq!(new["spec"]["clusterIPs"], json!(["10.0.0.7"]));
        assert_eq!(new["spec"]["ports"][0]["nodePort"], 30080);
        assert!(new["spec"]["ports"][1].get("nodePort").is_none());
    }

    #[test]
    fn secret_defaults_type_and_folds_string_data() {
        let mut s = json!({"metadata": {"name": "s"}, "data": {"a": "eA==", "b": "eQ=="},
            "stringData": {"b": "hello", "c": ""}});
        secret(&mut s);
        assert_eq!(s["type"], "Opaque");
        assert_eq!(s["data"], json!({"a": "eA==", "b": "aGVsbG8=", "c": ""}));
        assert!(s.get("stringData").is_none());
        let mut s = json!({"type": "kubernetes.io/tls"});
        secret(&mut s);
        assert_eq!(s["type"], "kubernetes.io/tls");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"abc"), "YWJj");
        assert_eq!(base64_encode(b"a"), "YQ==");
    }

    #[test]
    fn namespace_defaults() {
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "dev"}});
        namespace(&mut ns);
        assert_eq!(ns["spec"], json!({"finalizers": ["kubernetes"]}));
        assert_eq!(ns["status"], json!({"phase": "Active"}));
        assert_eq!(
            ns["metadata"]["labels"],
            json!({"kubernetes.io/metadata.name": "dev"})
        );
    }

    #[test]
    fn node_and_endpoints_defaults() {
        let mut n = json!({"status": {"capacity": {"cpu": "4"}}});
        node(&mut n);
        assert_eq!(n["status"]["allocatable"], json!({"cpu": "4"}));
        let mut e =
            json!({"subsets": [{"addresses": [{"ip": "10.1.0.4"}], "ports": [{"port": 80}]}]});
        endpoints(&mut e);
        assert_eq!(e["subsets"][0]["ports"][0]["protocol"], "TCP");
    }
}
