//! PATCH requests: JSON patch, JSON merge patch, strategic merge patch and server-side apply,
//! applied to the current object and written through the same path as an update.

use api::resource::Cause;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::State;
use crate::error::{ApiError, ApiResult};
use crate::http::{Query, yaml_to_json};
use crate::objects::{ObjectRef, WriteOptions, Written, now_rfc3339};

/// The patch formats of `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

pub fn patch_type(headers: &HeaderMap) -> ApiResult<PatchType> {
    let mime = crate::http::media_type(headers, "");
    match mime.as_str() {
        "application/json-patch+json" => Ok(PatchType::Json),
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        "application/apply-patch+yaml" => Ok(PatchType::Apply),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
            ),
        )),
    }
}

/// Apply `body` to the object as `Content-Type` says and write the result.
pub fn apply_patch(kind: PatchType, current: &Value, body: &[u8]) -> ApiResult<Value> {
    match kind {
        PatchType::Json => api::patch::json_patch(current, body).map_err(patch_error),
        PatchType::Merge => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            if !p.is_object() {
                return Err(ApiError::bad_request("a merge patch must be a JSON object"));
            }
            Ok(api::patch::merge_patch(current, &p))
        }
        PatchType::Strategic => {
            let p: Value = serde_json::from_slice(body)
                .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
            api::patch::strategic_merge_patch(current, &p).map_err(patch_error)
        }
        PatchType::Apply => Err(ApiError::internal(
            "apply patches are handled by server-side apply",
        )),
    }
}

fn patch_error(e: api::patch::PatchError) -> ApiError {
    let code = StatusCode::from_u16(e.status_code()).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY);
    ApiError::new(code, e.reason(), e.message().to_string())
}

pub async fn patch(
    st: &State,
    r: &ObjectRef,
    sub: Option<&str>,
    headers: &HeaderMap,
    q: &Query,
    body: &[u8],
    opts: &WriteOptions,
) -> ApiResult<Written> {
    let kind = patch_type(headers)?;
    if kind == PatchType::Apply {
        let manager = q.get("fieldManager").filter(|m| !m.is_empty()).cloned().ok_or_else(|| {
            ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
        })?;
        let force = q.get("force").is_some_and(|f| f == "true");
        let config = yaml_to_json(body)?;
        if !config.is_object() {
            return Err(ApiError::bad_request("an apply patch must be an object"));
        }
        let def = r.def;
        return st
            .objects
            .modify(r, sub, opts, "Apply", |live| {
                let mut cfg = config.clone();
                crate::objects::check_type(def, &mut cfg)?;
                if let Some(n) = cfg.pointer("/metadata/name").and_then(Value::as_str)
                    && n != r.name
                {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({})",
                        r.name
                    )));
                }
                let mut out =
                    api::apply::apply_to(live, &cfg, &manager, sub, force, &now_rfc3339())
                        .map_err(|e| {
                            let code =
                                StatusCode::from_u16(e.code()).unwrap_or(StatusCode::CONFLICT);
                            let mut err = ApiError::new(code, e.reason(), e.message())
                                .with_details(def.group, def.plural, &r.name);
                            if let Some(d) = err.details.as_mut() {
                                d.causes = e
                                    .causes()
                                    .into_iter()
                                    .map(|c| Cause {
                                        reason: "FieldManagerConflict",
                                        message: c.message.unwrap_or_default(),
                                        field: c.field.unwrap_or_default(),
                                    })
                                    .collect();
                            }
                            err
                        })?;
                if let Some(m) = out.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.insert("name".into(), r.name.clone().into());
                    if live.is_none() {
                        m.remove("resourceVersion");
                    }
                }
                Ok(out)
            })
            .await;
    }
    st.objects
        .modify(r, sub, opts, "Update", |live| match live {
            None => Err(
                ApiError::not_found(&r.resource_name(), &r.name).with_details(
                    r.def.group,
                    r.def.plural,
                    &r.name,
                ),
            ),
            Some(current) => apply_patch(kind, current, body),
        })
        .await
}
