//! Subresources with their own shapes: `scale` (autoscaling/v1 Scale), `binding`, `eviction`
//! and the namespace `finalize` call.

use http::{HeaderMap, Method};
use serde_json::{Value, json};

use crate::State;
use crate::error::{ApiError, ApiResult};
use crate::objects::{DeleteOptions, ObjectRef, WriteOptions, meta_str, now_rfc3339};
use crate::patch::{PatchType, apply_patch, patch_type};

/// The `autoscaling/v1 Scale` view of a Deployment or ReplicaSet.
pub fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector")
        .and_then(|s| api::selector::LabelSelector::from_json(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or(json!({}));
    let mut m = json!({});
    for k in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "creationTimestamp",
    ] {
        if let Some(v) = meta.get(k) {
            m[k] = v.clone();
        }
    }
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": m,
        "spec": {"replicas": obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0)},
        "status": {"replicas": obj.pointer("/status/replicas").and_then(Value::as_i64).unwrap_or(0), "selector": selector},
    })
}

/// PUT or PATCH of `scale`: the new replica count goes into `.spec.replicas`.
pub async fn write_scale(
    st: &State,
    r: &ObjectRef,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
    opts: &WriteOptions,
) -> ApiResult<Value> {
    let kind = if method == Method::PUT {
        None
    } else {
        Some(patch_type(headers)?)
    };
    if kind == Some(PatchType::Apply) {
        return Err(ApiError::unsupported_media_type(
            "application/apply-patch+yaml",
        ));
    }
    let w = st
        .objects
        .modify(r, Some("scale"), opts, "Update", |live| {
            let Some(current) = live else {
                return Err(ApiError::not_found(&r.resource_name(), &r.name));
            };
            let scale = scale_of(current);
            let new_scale = match kind {
                None => crate::http::decode_body(headers, body)?,
                Some(k) => apply_patch(k, &scale, body)?,
            };
            if let Some(rv) = new_scale.pointer("/metadata/resourceVersion").and_then(Value::as_str)
                && method == Method::PUT && Some(rv) != meta_str(current, "resourceVersion") {
                    return Err(ApiError::conflict(&r.resource_name(), &r.name, "the object has been modified; please apply your changes to the latest version and try again"));
                }
            let replicas = new_scale.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(0);
            if replicas < 0 {
                return Err(ApiError::invalid("Scale", "autoscaling", &r.name, vec![api::resource::Cause::invalid("spec.replicas", &json!(replicas), "must be greater than or equal to 0")]));
            }
            let mut obj = current.clone();
            obj["spec"]["replicas"] = replicas.into();
            if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            Ok(obj)
        })
        .await?;
    Ok(scale_of(&w.object))
}

/// POST pods/NAME/binding: assign the pod to a node (once).
pub async fn bind(st: &State, r: &ObjectRef, binding: &Value) -> ApiResult<()> {
    let node = binding
        .pointer("/target/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if node.is_empty() {
        return Err(ApiError::invalid(
            "Binding",
            "",
            &r.name,
            vec![api::resource::Cause::required("target.name")],
        ));
    }
    let opts = WriteOptions {
        field_manager: "scheduler".into(),
        field_validation: "Ignore".into(),
        dry_run: false,
    };
    st.objects
        .raw_modify(r, |current| {
            if let Some(existing) = current.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
                return Err(ApiError::conflict(&r.resource_name(), &r.name, &format!("pod {} is already assigned to node {existing:?}", r.name)));
            }
            if current.pointer("/metadata/deletionTimestamp").is_some_and(|d| !d.is_null()) {
                return Err(ApiError::conflict(&r.resource_name(), &r.name, "pod is being deleted, cannot be assigned to a host"));
            }
            let mut obj = current.clone();
            obj["spec"]["nodeName"] = node.clone().into();
            let cond = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now_rfc3339()});
            let conds = obj["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let mut conds: Vec<Value> = conds.into_iter().filter(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled")).collect();
            conds.push(cond);
            obj["status"]["conditions"] = Value::Array(conds);
            Ok(obj)
        }, &opts)
        .await?;
    Ok(())
}

/// POST pods/NAME/eviction: a delete with the eviction's options.
pub async fn evict(st: &State, r: &ObjectRef, eviction: &Value) -> ApiResult<()> {
    let o = eviction.get("deleteOptions").cloned().unwrap_or(json!({}));
    let opts = DeleteOptions {
        grace_period_seconds: o.get("gracePeriodSeconds").and_then(Value::as_i64),
        propagation_policy: o
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_uid: o
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string),
        precondition_rv: o
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string),
        dry_run: false,
    };
    st.objects.delete(r, &opts).await.map(|_| ())
}

/// PUT namespaces/NAME/finalize: replace `spec.finalizers`; the namespace goes when none is left
/// and it is terminating.
pub async fn finalize_namespace(st: &State, r: &ObjectRef, body: Value) -> ApiResult<Value> {
    let fins = body
        .pointer("/spec/finalizers")
        .cloned()
        .unwrap_or(json!([]));
    let opts = WriteOptions {
        field_manager: "namespace-controller".into(),
        field_validation: "Ignore".into(),
        dry_run: false,
    };
    let w = st
        .objects
        .raw_modify(
            r,
            |current| {
                let mut obj = current.clone();
                obj["spec"]["finalizers"] = fins.clone();
                Ok(obj)
            },
            &opts,
        )
        .await?;
    Ok(w)
}
