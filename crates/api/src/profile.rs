//! Serverless profiles (`nodeless.io/v1 ServerlessProfile`, short name `sp`): which pods run
//! serverless, in the shape of eksctl's fargateProfiles. A profile has up to 5 selectors, each a
//! namespace (required) and up to 5 labels; `*` and `?` wildcards are allowed in namespaces, label
//! keys and label values. A pod matches a selector when its namespace matches and it carries all
//! of the selector's labels; it matches the profile when it matches any selector. Profiles are
//! immutable. Also: what a serverless pod may not have (hostNetwork, hostPort, hostPath,
//! privileged unless the profile allows it).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::resource::{Cause, Column, TableSpec};

pub const GROUP: &str = "nodeless.io";
/// The scheduler serverless pods are handed to.
pub const SCHEDULER_NAME: &str = "serverless-scheduler";
/// The pod label naming the profile (set by admission; set by the user to choose one).
pub const PROFILE_LABEL: &str = "nodeless.io/profile";
/// EKS's equivalent of `PROFILE_LABEL`.
pub const EKS_PROFILE_LABEL: &str = "eks.amazonaws.com/fargate-profile";
/// Annotation opting a pod out (`node`).
pub const COMPUTE_TYPE_ANNOTATION: &str = "nodeless.io/compute-type";
/// EKS's opt-out annotation (`ec2`).
pub const EKS_COMPUTE_TYPE_ANNOTATION: &str = "eks.amazonaws.com/compute-type";
/// The annotation with the provisioned size, as on Fargate.
pub const CAPACITY_ANNOTATION: &str = "CapacityProvisioned";
pub const MAX_SELECTORS: usize = 5;
pub const MAX_LABELS: usize = 5;
pub const MAX_PROFILES: usize = 10;

/// One selector: a namespace and labels, with `*`/`?` wildcards.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProfileSelector {
    /// Namespace the pod must be in (wildcards `*` and `?` allowed). Required.
    #[serde(default)]
    pub namespace: String,
    /// Labels the pod must all carry (wildcards allowed in keys and values). At most 5.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What a profile selects and allows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerlessProfileSpec {
    /// Up to 5 selectors; a pod matching any of them runs serverless.
    #[serde(default)]
    pub selectors: Vec<ProfileSelector>,
    /// Allow privileged containers in this profile's pods (off by default, as on Fargate).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_privileged: bool,
    /// The sandbox runtime for this profile's pods: auto (micro-VM where the host has hardware
    /// virtualization, else gVisor), gvisor or microvm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// A serverless profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "io.nodeless.v1.ServerlessProfile")]
pub struct ServerlessProfile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServerlessProfileSpec,
}

/// Glob match with `*` (any run) and `?` (one character).
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

impl ProfileSelector {
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        glob(&self.namespace, namespace)
            && self
                .labels
                .iter()
                .all(|(k, v)| labels.iter().any(|(lk, lv)| glob(k, lk) && glob(v, lv)))
    }
}

impl ServerlessProfile {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or_default()
    }
    pub fn matches(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.spec
            .selectors
            .iter()
            .any(|s| s.matches(namespace, labels))
    }
}

/// Which profile a pod goes to: None when it opts out or no profile matches. The label
/// `nodeless.io/profile` (or EKS's) chooses a profile by name; otherwise the first matching
/// profile by name. Profiles being deleted are skipped. Err when the label names a profile that
/// does not exist or does not select the pod.
pub fn profile_for<'a>(
    pod: &Value,
    profiles: &'a [ServerlessProfile],
) -> Result<Option<&'a ServerlessProfile>, String> {
    let annotations = pod.pointer("/metadata/annotations");
    let ann = |k: &str| annotations.and_then(|a| a.get(k)).and_then(Value::as_str);
    if ann(COMPUTE_TYPE_ANNOTATION) == Some("node")
        || ann(EKS_COMPUTE_TYPE_ANNOTATION) == Some("ec2")
    {
        return Ok(None);
    }
    let namespace = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let labels: BTreeMap<String, String> = pod
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let live: Vec<&ServerlessProfile> = {
        let mut v: Vec<&ServerlessProfile> = profiles
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        v.sort_by(|a, b| a.name().cmp(b.name()));
        v
    };
    if let Some(chosen) = labels
        .get(PROFILE_LABEL)
        .or_else(|| labels.get(EKS_PROFILE_LABEL))
    {
        let Some(p) = live.iter().find(|p| p.name() == chosen) else {
            return Err(format!(
                "serverless profile {chosen:?} named by label {PROFILE_LABEL} does not exist"
            ));
        };
        if !p.matches(namespace, &labels) {
            return Err(format!(
                "serverless profile {chosen:?} does not select pods in namespace {namespace:?} with these labels"
            ));
        }
        return Ok(Some(p));
    }
    Ok(live.into_iter().find(|p| p.matches(namespace, &labels)))
}

/// What a serverless pod may not have, as one message listing every offending field
/// (Fargate's wording, e.g. "fields not supported: HostNetwork, port contains HostIP or HostPort").
/// None when the pod is acceptable.
pub fn unsupported(pod_spec: &Value, allow_privileged: bool) -> Option<String> {
    let mut fields = Vec::new();
    for (key, name) in [
        ("hostNetwork", "HostNetwork"),
        ("hostPID", "HostPID"),
        ("hostIPC", "HostIPC"),
    ] {
        if pod_spec.get(key).and_then(Value::as_bool) == Some(true) {
            fields.push(name);
        }
    }
    let mut parts = Vec::new();
    if !fields.is_empty() {
        parts.push(format!("fields not supported: {}", fields.join(", ")));
    }
    let containers: Vec<&Value> = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .filter_map(|k| pod_spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    if !allow_privileged {
        let privileged: Vec<&str> = containers
            .iter()
            .filter(|c| {
                c.pointer("/securityContext/privileged")
                    .and_then(Value::as_bool)
                    == Some(true)
            })
            .map(|c| c.get("name").and_then(Value::as_str).unwrap_or("?"))
            .collect();
        if !privileged.is_empty() {
            parts.push(format!(
                "invalid SecurityContext fields: Privileged (containers {})",
                privileged.join(", ")
            ));
        }
    }
    let host_ports: Vec<String> = containers
        .iter()
        .flat_map(|c| {
            let name = c
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            c.get("ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(move |p| {
                    let has = p
                        .get("hostPort")
                        .and_then(Value::as_i64)
                        .is_some_and(|h| h != 0)
                        || p.get("hostIP")
                            .and_then(Value::as_str)
                            .is_some_and(|h| !h.is_empty());
                    has.then(|| name.clone())
                })
        })
        .collect();
    if !host_ports.is_empty() {
        parts.push(format!(
            "port contains HostIP or HostPort (containers {})",
            host_ports.join(", ")
        ));
    }
    let host_paths: Vec<&str> = pod_spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| v.get("name").and_then(Value::as_str).unwrap_or("?"))
        .collect();
    if !host_paths.is_empty() {
        parts.push(format!(
            "volumes not supported: {} of type HostPath",
            host_paths.join(", ")
        ));
    }
    (!parts.is_empty()).then(|| {
        format!(
            "Pod not supported on nodeless serverless: {}",
            parts.join(", ")
        )
    })
}

fn check_pattern(field: &str, value: &str, what: &str, causes: &mut Vec<Cause>) {
    // A pattern is checked as the name it stands for, with wildcards replaced by a letter.
    let probe: String = value
        .chars()
        .map(|c| if c == '*' || c == '?' { 'a' } else { c })
        .collect();
    let errs = match what {
        "namespace" => crate::names::is_dns1123_label(&probe),
        "key" => crate::names::is_qualified_name(&probe),
        _ => crate::names::is_valid_label_value(&probe),
    };
    for e in errs {
        causes.push(Cause::invalid(field, &Value::String(value.into()), &e));
    }
}

/// Validation: 1 to 5 selectors, namespace required, at most 5 labels each, valid patterns;
/// the spec is immutable.
pub fn validate(obj: &Value, old: Option<&Value>) -> Vec<Cause> {
    let mut causes = Vec::new();
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if name.is_empty() {
        causes.push(Cause::required("metadata.name"));
    } else {
        for e in crate::names::is_dns1123_subdomain(name) {
            causes.push(Cause::invalid(
                "metadata.name",
                &Value::String(name.into()),
                &e,
            ));
        }
    }
    if let Some(labels) = obj.pointer("/metadata/labels") {
        causes.extend(crate::names::validate_labels(labels, "metadata.labels"));
    }
    let selectors = obj
        .pointer("/spec/selectors")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if selectors.is_empty() {
        causes.push(Cause {
            reason: "FieldValueRequired",
            message: "Required value: at least one selector".into(),
            field: "spec.selectors".into(),
        });
    }
    if selectors.len() > MAX_SELECTORS {
        causes.push(Cause {
            reason: "FieldValueTooMany",
            message: format!(
                "Too many: {}: must have at most {MAX_SELECTORS} items",
                selectors.len()
            ),
            field: "spec.selectors".into(),
        });
    }
    for (i, s) in selectors.iter().enumerate() {
        let ns = s
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if ns.is_empty() {
            causes.push(Cause::required(format!("spec.selectors[{i}].namespace")));
        } else {
            check_pattern(
                &format!("spec.selectors[{i}].namespace"),
                ns,
                "namespace",
                &mut causes,
            );
        }
        let labels = s
            .get("labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if labels.len() > MAX_LABELS {
            causes.push(Cause {
                reason: "FieldValueTooMany",
                message: format!(
                    "Too many: {}: must have at most {MAX_LABELS} items",
                    labels.len()
                ),
                field: format!("spec.selectors[{i}].labels"),
            });
        }
        for (k, v) in &labels {
            check_pattern(
                &format!("spec.selectors[{i}].labels"),
                k,
                "key",
                &mut causes,
            );
            check_pattern(
                &format!("spec.selectors[{i}].labels[{k}]"),
                v.as_str().unwrap_or_default(),
                "value",
                &mut causes,
            );
        }
    }
    if let Some(rt) = obj.pointer("/spec/runtime").and_then(Value::as_str)
        && !matches!(rt, "auto" | "gvisor" | "microvm")
    {
        causes.push(Cause::not_supported(
            "spec.runtime",
            &Value::String(rt.into()),
            &["auto", "gvisor", "microvm"],
        ));
    }
    if let Some(old) = old
        && old.get("spec") != obj.get("spec")
    {
        causes.push(Cause::forbidden(
            "spec",
            "profiles are immutable: create a new profile, then delete the old one",
        ));
    }
    causes
}

pub fn defaults(_obj: &mut Value) {}

fn describe_selectors(obj: &Value) -> String {
    let list: Vec<String> = obj
        .pointer("/spec/selectors")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| {
            let ns = s.get("namespace").and_then(Value::as_str).unwrap_or("");
            let labels: Vec<String> = s
                .get("labels")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            if labels.is_empty() {
                ns.to_string()
            } else {
                format!("{ns}({})", labels.join(","))
            }
        })
        .collect();
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(", ")
    }
}

fn cells(obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let age = obj
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| crate::table::human_duration(now.duration_since(t)))
        .unwrap_or_else(|| "<unknown>".into());
    vec![
        json!(
            obj.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
        ),
        json!(describe_selectors(obj)),
        json!(
            obj.pointer("/spec/runtime")
                .and_then(Value::as_str)
                .unwrap_or("auto")
        ),
        json!(if obj
            .pointer("/spec/allowPrivileged")
            .and_then(Value::as_bool)
            == Some(true)
        {
            "true"
        } else {
            "false"
        }),
        json!(age),
    ]
}

pub const TABLE: TableSpec = TableSpec {
    columns: &[
        Column {
            name: "Name",
            type_: "string",
            format: "name",
            description: "Name of the profile.",
            priority: 0,
        },
        Column {
            name: "Selectors",
            type_: "string",
            format: "",
            description: "Namespaces and labels of the pods this profile runs serverless.",
            priority: 0,
        },
        Column {
            name: "Runtime",
            type_: "string",
            format: "",
            description: "Sandbox runtime of the profile's pods.",
            priority: 0,
        },
        Column {
            name: "Privileged",
            type_: "string",
            format: "",
            description: "Whether privileged containers are allowed.",
            priority: 1,
        },
        Column {
            name: "Age",
            type_: "string",
            format: "",
            description: "Time since the profile was created.",
            priority: 0,
        },
    ],
    cells,
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn profile(name: &str, selectors: Value) -> ServerlessProfile {
        serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"selectors": selectors}}),
        )
        .unwrap()
    }

    fn pod(ns: &str, labels: Value, annotations: Value) -> Value {
        json!({"metadata": {"namespace": ns, "labels": labels, "annotations": annotations}, "spec": {}})
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("team-?", "team-a"));
        assert!(!glob("team-?", "team-ab"));
        assert!(glob("prod-*-web", "prod-eu-1-web"));
        assert!(!glob("prod", "production"));
        assert!(glob("", ""));
    }

    #[test]
    fn first_profile_by_name_wins_and_labels_choose() {
        let ps = vec![
            profile("zeta", json!([{"namespace": "default"}])),
            profile(
                "alpha",
                json!([{"namespace": "def*", "labels": {"app": "web"}}]),
            ),
        ];
        let p = pod("default", json!({"app": "web"}), json!({}));
        assert_eq!(profile_for(&p, &ps).unwrap().unwrap().name(), "alpha");
        let p = pod("default", json!({"app": "db"}), json!({}));
        assert_eq!(profile_for(&p, &ps).unwrap().unwrap().name(), "zeta");
        let p = pod(
            "default",
            json!({"app": "web", "nodeless.io/profile": "zeta"}),
            json!({}),
        );
        assert_eq!(profile_for(&p, &ps).unwrap().unwrap().name(), "zeta");
        let p = pod("default", json!({"nodeless.io/profile": "nope"}), json!({}));
        assert!(profile_for(&p, &ps).is_err());
        let p = pod("other", json!({}), json!({}));
        assert!(profile_for(&p, &ps).unwrap().is_none());
    }

    #[test]
    fn opt_outs() {
        let ps = vec![profile("p", json!([{"namespace": "*"}]))];
        assert!(
            profile_for(
                &pod("a", json!({}), json!({"nodeless.io/compute-type": "node"})),
                &ps
            )
            .unwrap()
            .is_none()
        );
        assert!(
            profile_for(
                &pod(
                    "a",
                    json!({}),
                    json!({"eks.amazonaws.com/compute-type": "ec2"})
                ),
                &ps
            )
            .unwrap()
            .is_none()
        );
        assert!(
            profile_for(&pod("a", json!({}), json!({})), &ps)
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn unsupported_fields_in_one_message() {
        let spec = json!({"hostNetwork": true, "containers": [{"name": "c", "securityContext": {"privileged": true}, "ports": [{"containerPort": 80, "hostPort": 8080}]}],
            "volumes": [{"name": "h", "hostPath": {"path": "/"}}]});
        let m = unsupported(&spec, false).unwrap();
        assert!(m.contains("fields not supported: HostNetwork"), "{m}");
        assert!(
            m.contains("invalid SecurityContext fields: Privileged"),
            "{m}"
        );
        assert!(m.contains("port contains HostIP or HostPort"), "{m}");
        assert!(
            m.contains("volumes not supported: h of type HostPath"),
            "{m}"
        );
        assert!(!unsupported(&spec, true).unwrap().contains("Privileged"));
        assert!(unsupported(&json!({"containers": [{"name": "c"}]}), false).is_none());
    }

    #[test]
    fn validation_and_immutability() {
        let ok = json!({"metadata": {"name": "p"}, "spec": {"selectors": [{"namespace": "team-*", "labels": {"app": "w?b"}}]}});
        assert!(validate(&ok, None).is_empty(), "{:?}", validate(&ok, None));
        let too_many = json!({"metadata": {"name": "p"}, "spec": {"selectors": (0..6).map(|i| json!({"namespace": format!("n{i}")})).collect::<Vec<_>>()}});
        assert!(
            validate(&too_many, None)
                .iter()
                .any(|c| c.reason == "FieldValueTooMany")
        );
        let no_ns =
            json!({"metadata": {"name": "p"}, "spec": {"selectors": [{"labels": {"a": "b"}}]}});
        assert!(
            validate(&no_ns, None)
                .iter()
                .any(|c| c.field == "spec.selectors[0].namespace")
        );
        let none = json!({"metadata": {"name": "p"}, "spec": {}});
        assert!(
            validate(&none, None)
                .iter()
                .any(|c| c.field == "spec.selectors")
        );
        let changed =
            json!({"metadata": {"name": "p"}, "spec": {"selectors": [{"namespace": "other"}]}});
        assert!(
            validate(&changed, Some(&ok))
                .iter()
                .any(|c| c.reason == "FieldValueForbidden")
        );
        let bad =
            json!({"metadata": {"name": "p"}, "spec": {"selectors": [{"namespace": "Bad_NS"}]}});
        assert!(
            validate(&bad, None)
                .iter()
                .any(|c| c.reason == "FieldValueInvalid")
        );
    }
}
