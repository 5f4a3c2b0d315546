//! A structure-aware generator of Kubernetes-shaped JSON, driven by the fuzzer's bytes through
//! `arbitrary::Unstructured`: values built from the field names, directive keys and strings the
//! patch and apply code branch on, realistic objects (the fixtures in `seeds/objects/`) mutated at
//! random paths, strategic merge patches shaped like their target, and JSON patches whose paths
//! exist in their target. Random bytes decoded as JSON rarely get past the parser into the merge
//! logic; these do.

use arbitrary::{Result, Unstructured};
use serde_json::{Map, Number, Value};

/// The realistic objects every structured target starts from (kind, JSON text).
pub const FIXTURES: &[(&str, &str)] = &[
    (
        "Deployment",
        include_str!("../seeds/objects/deployment.json"),
    ),
    (
        "Deployment",
        include_str!("../seeds/objects/deployment_applied.json"),
    ),
    ("Pod", include_str!("../seeds/objects/pod.json")),
    ("Service", include_str!("../seeds/objects/service.json")),
    ("ConfigMap", include_str!("../seeds/objects/configmap.json")),
    ("Secret", include_str!("../seeds/objects/secret.json")),
    ("Namespace", include_str!("../seeds/objects/namespace.json")),
    ("Node", include_str!("../seeds/objects/node.json")),
    ("Event", include_str!("../seeds/objects/event.json")),
    ("Event", include_str!("../seeds/objects/event_v1.json")),
    (
        "ServiceAccount",
        include_str!("../seeds/objects/serviceaccount.json"),
    ),
    ("Endpoints", include_str!("../seeds/objects/endpoints.json")),
    (
        "ReplicaSet",
        include_str!("../seeds/objects/replicaset.json"),
    ),
    ("Job", include_str!("../seeds/objects/job.json")),
    ("Lease", include_str!("../seeds/objects/lease.json")),
    (
        "ServerlessProfile",
        include_str!("../seeds/objects/serverlessprofile.json"),
    ),
];

/// Field names the decoders, defaulting, validation, patch and apply code look at.
pub const KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "name",
    "generateName",
    "namespace",
    "labels",
    "annotations",
    "finalizers",
    "ownerReferences",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "managedFields",
    "manager",
    "operation",
    "fieldsType",
    "fieldsV1",
    "time",
    "subresource",
    "spec",
    "status",
    "template",
    "containers",
    "initContainers",
    "ephemeralContainers",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "value",
    "valueFrom",
    "ports",
    "containerPort",
    "hostPort",
    "protocol",
    "port",
    "targetPort",
    "nodePort",
    "volumeMounts",
    "mountPath",
    "volumes",
    "configMap",
    "secret",
    "emptyDir",
    "resources",
    "requests",
    "limits",
    "cpu",
    "memory",
    "ephemeral-storage",
    "selector",
    "matchLabels",
    "matchExpressions",
    "key",
    "operator",
    "values",
    "replicas",
    "strategy",
    "type",
    "rollingUpdate",
    "maxSurge",
    "maxUnavailable",
    "tolerations",
    "effect",
    "tolerationSeconds",
    "conditions",
    "reason",
    "message",
    "imagePullSecrets",
    "hostAliases",
    "ip",
    "hostnames",
    "topologySpreadConstraints",
    "topologyKey",
    "whenUnsatisfiable",
    "maxSkew",
    "data",
    "stringData",
    "binaryData",
    "subsets",
    "addresses",
    "nodeName",
    "restartPolicy",
    "clusterIP",
    "clusterIPs",
    "ipFamilies",
    "ipFamilyPolicy",
    "externalName",
    "sessionAffinity",
    "backoffLimit",
    "completions",
    "parallelism",
    "completionMode",
    "holderIdentity",
    "leaseDurationSeconds",
    "selectors",
    "allowPrivileged",
    "runtime",
    "hostPID",
    "hostIPC",
    "privileged",
    "hostPath",
    "renewTime",
    "eventTime",
    "involvedObject",
    "regarding",
    "series",
    "count",
    "phase",
    "podIP",
    "podIPs",
    "containerStatuses",
    "securityContext",
    "affinity",
    "taints",
    "podCIDR",
    "capacity",
    "allocatable",
    "serviceAccountName",
    "terminationGracePeriodSeconds",
    "priority",
    "schedulerName",
    "hostNetwork",
    "overhead",
    "$patch",
    "$retainKeys",
    "$setElementOrder/containers",
    "$setElementOrder/ports",
    "$setElementOrder/env",
    "$setElementOrder/finalizers",
    "$setElementOrder/volumes",
    "$deleteFromPrimitiveList/finalizers",
    "$deleteFromPrimitiveList/args",
    "$deleteFromPrimitiveList/clusterIPs",
    "f:metadata",
    "f:spec",
    "f:labels",
    "f:name",
    "f:containers",
    "f:replicas",
    "f:image",
    ".",
    "k:{\"name\":\"nginx\"}",
    "k:{\"containerPort\":80,\"protocol\":\"TCP\"}",
    "v:\"x\"",
    "i:0",
];

/// Keys that identify an item of a merged list: a generated patch keeps them.
pub const MERGE_KEYS: &[&str] = &[
    "name",
    "containerPort",
    "port",
    "protocol",
    "ip",
    "key",
    "mountPath",
    "devicePath",
    "type",
    "topologyKey",
    "whenUnsatisfiable",
    "uid",
];

/// Strings that select branches: directive values, enum values, quantities, API versions.
pub const STRINGS: &[&str] = &[
    "",
    "web",
    "app",
    "nginx",
    "x",
    "a=b",
    "TCP",
    "UDP",
    "SCTP",
    "replace",
    "merge",
    "delete",
    "deleteFromPrimitiveList",
    "retainKeys",
    "Apply",
    "Update",
    "FieldsV1",
    "v1",
    "apps/v1",
    "batch/v1",
    "Pod",
    "Deployment",
    "default",
    "kube-system",
    "100m",
    "1Gi",
    "0.5",
    "1e3",
    "-1",
    "Always",
    "IfNotPresent",
    "Never",
    "OnFailure",
    "ClusterIP",
    "None",
    "NodePort",
    "LoadBalancer",
    "ExternalName",
    "In",
    "NotIn",
    "Exists",
    "DoesNotExist",
    "Gt",
    "Lt",
    "NoSchedule",
    "NoExecute",
    "Equal",
    "2025-06-01T10:00:00Z",
    "2025-06-01T10:00:00.000001Z",
    "status",
    "scale",
    "Indexed",
    "NonIndexed",
    "10.0.0.1",
    "::1",
    "kubernetes.io/hostname",
];

/// The managers the apply target alternates between.
pub const MANAGERS: &[&str] = &["kubectl", "helm", "hpa", "kube-controller-manager", "m\"q"];

/// A field name: mostly a known one, sometimes arbitrary text.
pub fn key(u: &mut Unstructured) -> Result<String> {
    if u.ratio(7, 8)? {
        Ok((*u.choose(KEYS)?).to_owned())
    } else {
        u.arbitrary()
    }
}

/// A string value: mostly a known one, sometimes arbitrary text.
pub fn string(u: &mut Unstructured) -> Result<String> {
    if u.ratio(3, 4)? {
        Ok((*u.choose(STRINGS)?).to_owned())
    } else {
        u.arbitrary()
    }
}

fn number(u: &mut Unstructured) -> Result<Value> {
    Ok(match u.int_in_range(0..=3)? {
        0 => Value::from(u.int_in_range(-2i64..=70_000)?),
        1 => Value::from(u.arbitrary::<i64>()?),
        2 => Value::from(u.arbitrary::<u64>()?),
        _ => Number::from_f64(u.arbitrary::<f64>()?).map_or(Value::Null, Value::Number),
    })
}

/// Any JSON value, nested at most `depth` containers deep.
pub fn value(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let top = if depth == 0 { 4 } else { 6 };
    Ok(match u.int_in_range(0..=top)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => number(u)?,
        3 | 4 => Value::String(string(u)?),
        5 => {
            let n = u.int_in_range(0..=4)?;
            let mut a = Vec::with_capacity(n);
            for _ in 0..n {
                a.push(value(u, depth - 1)?);
            }
            Value::Array(a)
        }
        _ => object(u, depth - 1)?,
    })
}

/// A JSON object with known (mostly) field names.
pub fn object(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let n = u.int_in_range(0..=5)?;
    let mut m = Map::new();
    for _ in 0..n {
        m.insert(key(u)?, value(u, depth)?);
    }
    Ok(Value::Object(m))
}

/// One of the fixtures, parsed; `kind` picks a fixture of that kind most of the time.
pub fn fixture(u: &mut Unstructured, kind: Option<&str>) -> Result<Value> {
    let same: Vec<&(&str, &str)> = FIXTURES.iter().filter(|(k, _)| Some(*k) == kind).collect();
    let text = if !same.is_empty() && u.ratio(7, 8)? {
        u.choose(&same)?.1
    } else {
        u.choose(FIXTURES)?.1
    };
    Ok(serde_json::from_str(text).expect("the fixtures are valid JSON (tested)"))
}

/// A fixture with up to four random changes at random paths below its root.
pub fn mutated_fixture(u: &mut Unstructured, kind: Option<&str>) -> Result<Value> {
    let mut v = fixture(u, kind)?;
    for _ in 0..u.int_in_range(0..=4)? {
        mutate_inside(u, &mut v)?;
    }
    Ok(v)
}

/// An object: a (mutated) fixture most of the time, else a generated object (which may be
/// anything, as a request body may).
pub fn object_like(u: &mut Unstructured, kind: Option<&str>) -> Result<Value> {
    if u.ratio(7, 8)? {
        mutated_fixture(u, kind)
    } else {
        object(u, 4)
    }
}

/// One change somewhere in `v`: walk down a random path, then replace, delete, insert or
/// duplicate (a duplicate list item is what merge-by-key code must survive).
pub fn mutate(u: &mut Unstructured, v: &mut Value) -> Result<()> {
    mutate_at(u, v, false)
}

/// [`mutate`] that never replaces `v` itself when it is a non-empty container (an object stays
/// an object: the change is somewhere inside).
pub fn mutate_inside(u: &mut Unstructured, v: &mut Value) -> Result<()> {
    mutate_at(u, v, true)
}

fn mutate_at(u: &mut Unstructured, v: &mut Value, must_descend: bool) -> Result<()> {
    let descend = must_descend || u.ratio(3, 4)?;
    match v {
        Value::Object(m) if !m.is_empty() && descend => {
            let i = u.choose_index(m.len())?;
            let k = m.keys().nth(i).cloned().unwrap_or_default();
            match u.int_in_range(0..=5)? {
                0 => {
                    m.shift_remove(&k);
                }
                1 => {
                    m.insert(key(u)?, value(u, 3)?);
                }
                _ => {
                    if let Some(next) = m.get_mut(&k) {
                        mutate_at(u, next, false)?;
                    }
                }
            }
        }
        Value::Array(a) if !a.is_empty() && descend => {
            let i = u.choose_index(a.len())?;
            match u.int_in_range(0..=5)? {
                0 => {
                    a.remove(i);
                }
                1 => {
                    let dup = a[i].clone();
                    a.push(dup);
                }
                2 => a.insert(i, value(u, 3)?),
                _ => mutate_at(u, &mut a[i], false)?,
            }
        }
        _ => *v = value(u, 3)?,
    }
    Ok(())
}

/// A strategic merge patch shaped like `target`: some fields kept and changed, some deleted
/// (`null`), list items by their merge keys, and the directives (`$patch`, `$retainKeys`,
/// `$setElementOrder/...`, `$deleteFromPrimitiveList/...`) placed where they apply.
pub fn smp_patch(u: &mut Unstructured, target: &Value, depth: u32) -> Result<Value> {
    if depth == 0 || u.ratio(1, 10)? {
        return value(u, 2);
    }
    Ok(match target {
        Value::Object(m) => {
            let mut p = Map::new();
            for (k, v) in m {
                if MERGE_KEYS.contains(&k.as_str()) && u.ratio(7, 8)? {
                    p.insert(k.clone(), v.clone());
                    continue;
                }
                match u.int_in_range(0..=6)? {
                    0 | 1 => {}
                    2 => {
                        p.insert(k.clone(), Value::Null);
                    }
                    3 => {
                        p.insert(k.clone(), value(u, 2)?);
                    }
                    _ => {
                        p.insert(k.clone(), smp_patch(u, v, depth - 1)?);
                    }
                }
                if let Value::Array(items) = v {
                    if u.ratio(1, 6)? {
                        let order = items.iter().map(keys_only).collect();
                        p.insert(format!("$setElementOrder/{k}"), Value::Array(order));
                    }
                    if u.ratio(1, 8)? {
                        let del = items.iter().filter(|it| !it.is_object()).cloned().collect();
                        p.insert(format!("$deleteFromPrimitiveList/{k}"), Value::Array(del));
                    }
                }
            }
            if u.ratio(1, 4)? {
                p.insert(key(u)?, value(u, 2)?);
            }
            if u.ratio(1, 10)? {
                let d = *u.choose(&["replace", "delete", "merge", "bogus"])?;
                p.insert("$patch".into(), d.into());
            }
            if u.ratio(1, 10)? {
                let keep = m.keys().filter(|_| u.ratio(1, 2).unwrap_or(false));
                let keep: Vec<Value> = keep.cloned().map(Value::String).collect();
                p.insert("$retainKeys".into(), Value::Array(keep));
            }
            Value::Object(p)
        }
        Value::Array(items) => {
            let mut out = Vec::new();
            for it in items {
                match u.int_in_range(0..=5)? {
                    0 => {}
                    1 => {
                        let mut d = keys_only(it);
                        if let Value::Object(m) = &mut d {
                            m.insert("$patch".into(), "delete".into());
                        }
                        out.push(d);
                    }
                    2 => out.push(value(u, 2)?),
                    _ => out.push(smp_patch(u, it, depth - 1)?),
                }
            }
            if u.ratio(1, 6)? {
                out.push(
                    serde_json::json!({"$patch": *u.choose(&["replace", "delete", "merge"])?}),
                );
            }
            Value::Array(out)
        }
        other => {
            if u.ratio(1, 2)? {
                value(u, 1)?
            } else {
                other.clone()
            }
        }
    })
}

/// A list item reduced to its merge-key fields (what `$setElementOrder` lists carry).
fn keys_only(item: &Value) -> Value {
    match item {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| MERGE_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Every JSON pointer into `v` (at most 256), the root included.
pub fn pointers(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        if out.len() >= 256 {
            return;
        }
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    let esc = k.replace('~', "~0").replace('/', "~1");
                    walk(c, format!("{at}/{esc}"), out);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    walk(c, format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
        out.push(at);
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}

/// An RFC 6902 JSON patch body against `target`: paths that exist, paths one step past them
/// (`/-`, a new key, an index past the end), and now and then an arbitrary path.
pub fn json_patch(u: &mut Unstructured, target: &Value) -> Result<Value> {
    let ptrs = pointers(target);
    let path = |u: &mut Unstructured| -> Result<String> {
        let base = u.choose(&ptrs)?.clone();
        Ok(match u.int_in_range(0..=7)? {
            0 => format!("{base}/-"),
            1 => format!("{base}/{}", key(u)?),
            2 => format!("{base}/{}", u.int_in_range(0..=12u32)?),
            3 => u.arbitrary()?,
            _ => base,
        })
    };
    let n = u.int_in_range(0..=6)?;
    let mut ops = Vec::with_capacity(n);
    for _ in 0..n {
        let op = *u.choose(&["add", "remove", "replace", "move", "copy", "test", "bogus"])?;
        let mut m = Map::new();
        m.insert("op".into(), op.into());
        m.insert("path".into(), path(u)?.into());
        if matches!(op, "move" | "copy") || u.ratio(1, 16)? {
            m.insert("from".into(), path(u)?.into());
        }
        if matches!(op, "add" | "replace" | "test") || u.ratio(1, 16)? {
            let v = if op == "test" && u.ratio(1, 2)? {
                let p = u.choose(&ptrs)?;
                target.pointer(p).cloned().unwrap_or(Value::Null)
            } else {
                value(u, 2)?
            };
            m.insert("value".into(), v);
        }
        ops.push(Value::Object(m));
    }
    Ok(Value::Array(ops))
}

/// A server-side apply configuration: a mutated fixture (of `kind` mostly), without
/// `metadata.managedFields` most of the time, as kubectl sends it.
pub fn apply_config(u: &mut Unstructured, kind: Option<&str>) -> Result<Value> {
    let mut c = object_like(u, kind)?;
    if u.ratio(7, 8)?
        && let Some(m) = c.get_mut("metadata").and_then(Value::as_object_mut)
    {
        m.shift_remove("managedFields");
    }
    Ok(c)
}
