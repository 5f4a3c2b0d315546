//! Serverless admission: a mutating step that marks every pod a `ServerlessProfile` selects
//! (scheduler `serverless-scheduler`, the profile label, the `CapacityProvisioned` size), and a
//! validating step that rejects what a serverless pod cannot have, listing every offending field.

use std::sync::Arc;

use api::profile::{self, ServerlessProfile};
use api::resource::{Cause, ResourceDef};
use serde::Deserialize;
use serde_json::{Value, json};
use store::{Backend, Revision};

use crate::admission::{Operation, Plugin};
use crate::error::{ApiError, ApiResult};
use crate::informer::Informer;

const PROFILES_PREFIX: &str = "/registry/nodeless.io/serverlessprofiles/";

/// The plugin. Pod admission reads the profiles from an in-memory cache kept current by a watch
/// of the store (and by this server's own profile writes, applied as soon as they are stored);
/// until the cache has synced, and for the per-cluster limit on profile creates, it reads the
/// store.
pub struct ServerlessAdmission {
    backend: Arc<dyn Backend>,
    cache: Informer<ServerlessProfile>,
}

fn decode_profile(v: &Value) -> Option<ServerlessProfile> {
    ServerlessProfile::deserialize(v).ok()
}

impl ServerlessAdmission {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            backend,
            cache: Informer::new(PROFILES_PREFIX, decode_profile),
        }
    }

    /// The profiles, from the cache when it is synced.
    async fn profiles(&self) -> ApiResult<Arc<Vec<ServerlessProfile>>> {
        self.cache.start(&self.backend);
        match self.cache.list() {
            Some(p) => Ok(p),
            None => self.stored_profiles().await.map(Arc::new),
        }
    }

    /// The profiles, read from the store.
    async fn stored_profiles(&self) -> ApiResult<Vec<ServerlessProfile>> {
        let page = self.backend.list(PROFILES_PREFIX, None, 0, None).await?;
        Ok(page
            .items
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }
}

fn is_pod(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.kind == "Pod"
}

#[async_trait::async_trait]
impl Plugin for ServerlessAdmission {
    fn name(&self) -> &'static str {
        "ServerlessProfiles"
    }

    fn observe(&self, key: &str, revision: Revision, obj: Option<&Value>) {
        self.cache.observe(key, revision, obj);
    }

    async fn mutate(
        &self,
        def: &ResourceDef,
        op: Operation,
        obj: &mut Value,
        _old: Option<&Value>,
    ) -> ApiResult<()> {
        if op != Operation::Create || !is_pod(def) {
            return Ok(());
        }
        let profiles = self.profiles().await?;
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let chosen = profile::profile_for(obj, &profiles).map_err(|msg| {
            ApiError::invalid(
                "Pod",
                "",
                &name,
                vec![Cause::invalid(
                    format!("metadata.labels[{}]", profile::PROFILE_LABEL),
                    &json!(msg),
                    "no such serverless profile for this pod",
                )],
            )
        })?;
        let Some(p) = chosen else { return Ok(()) };
        let size = api::sizing::pod_size(obj.get("spec").unwrap_or(&Value::Null)).map_err(|e| {
            ApiError::invalid(
                "Pod",
                "",
                &name,
                vec![Cause::invalid(
                    "spec.containers",
                    &json!(e.to_string()),
                    "the pod does not fit any serverless size",
                )],
            )
        })?;
        let profile_name = p.name().to_string();
        if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
            spec.insert("schedulerName".into(), profile::SCHEDULER_NAME.into());
        }
        let meta = obj
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(|| ApiError::bad_request("pod without metadata"))?;
        let labels = meta.entry("labels").or_insert_with(|| json!({}));
        if let Some(l) = labels.as_object_mut() {
            l.insert(profile::PROFILE_LABEL.into(), profile_name.into());
        }
        let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(
                profile::CAPACITY_ANNOTATION.into(),
                size.capacity_provisioned().into(),
            );
        }
        Ok(())
    }

    async fn validate(
        &self,
        def: &ResourceDef,
        op: Operation,
        obj: &Value,
        _old: Option<&Value>,
    ) -> ApiResult<()> {
        if def.group == profile::GROUP && def.kind == "ServerlessProfile" && op == Operation::Create
        {
            // A rare write: count from the store, not from a cache that may lag other servers.
            let live = self
                .stored_profiles()
                .await?
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .count();
            if live >= profile::MAX_PROFILES {
                return Err(ApiError::forbidden(format!(
                    "at most {} serverless profiles per cluster; delete one first",
                    profile::MAX_PROFILES
                )));
            }
            return Ok(());
        }
        if op == Operation::Delete || !is_pod(def) {
            return Ok(());
        }
        if obj.pointer("/spec/schedulerName").and_then(Value::as_str)
            != Some(profile::SCHEDULER_NAME)
        {
            return Ok(());
        }
        let chosen = obj
            .pointer("/metadata/labels")
            .and_then(|l| l.get(profile::PROFILE_LABEL))
            .and_then(Value::as_str);
        let allow_privileged = match chosen {
            Some(name) => self
                .profiles()
                .await?
                .iter()
                .any(|p| p.name() == name && p.spec.allow_privileged),
            None => false,
        };
        match profile::unsupported(obj.get("spec").unwrap_or(&Value::Null), allow_privileged) {
            Some(message) => Err(ApiError::forbidden(message)),
            None => Ok(()),
        }
    }
}
