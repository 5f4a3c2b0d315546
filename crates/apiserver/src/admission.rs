//! The admission chain: mutating plugins run first (in order), then validating plugins, on every
//! write of every resource. Later parts of nodeless (serverless profiles, ...) plug in here.

use std::sync::Arc;

use api::resource::ResourceDef;
use serde_json::Value;
use store::Revision;

use crate::error::ApiResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
}

/// One admission plugin. Both steps default to "no opinion".
#[async_trait::async_trait]
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
    /// Change the object before validation (create and update).
    async fn mutate(
        &self,
        _def: &ResourceDef,
        _op: Operation,
        _obj: &mut Value,
        _old: Option<&Value>,
    ) -> ApiResult<()> {
        Ok(())
    }
    /// Accept or reject the final object (create, update; for delete `obj` is the object being deleted).
    async fn validate(
        &self,
        _def: &ResourceDef,
        _op: Operation,
        _obj: &Value,
        _old: Option<&Value>,
    ) -> ApiResult<()> {
        Ok(())
    }
    /// The store acknowledged a write of `key` at `revision` (`obj`: the object written, None
    /// for a delete). Plugins with caches apply it at once, so that the next request sees it.
    fn observe(&self, _key: &str, _revision: Revision, _obj: Option<&Value>) {}
}

/// The ordered chain of plugins.
#[derive(Clone, Default)]
pub struct Admission {
    plugins: Vec<Arc<dyn Plugin>>,
}

impl Admission {
    pub fn new(plugins: Vec<Arc<dyn Plugin>>) -> Self {
        Self { plugins }
    }
    pub fn push(&mut self, plugin: Arc<dyn Plugin>) {
        self.plugins.push(plugin);
    }
    /// This chain followed by `other`'s plugins.
    pub fn then(mut self, other: Admission) -> Self {
        self.plugins.extend(other.plugins);
        self
    }
    pub async fn mutate(
        &self,
        def: &ResourceDef,
        op: Operation,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        for p in &self.plugins {
            p.mutate(def, op, obj, old).await?;
        }
        Ok(())
    }
    pub async fn validate(
        &self,
        def: &ResourceDef,
        op: Operation,
        obj: &Value,
        old: Option<&Value>,
    ) -> ApiResult<()> {
        for p in &self.plugins {
            p.validate(def, op, obj, old).await?;
        }
        Ok(())
    }
    /// Tell every plugin about a write the store acknowledged (see [`Plugin::observe`]).
    pub fn observe(&self, key: &str, revision: Revision, obj: Option<&Value>) {
        for p in &self.plugins {
            p.observe(key, revision, obj);
        }
    }
    pub async fn validate_delete(&self, def: &ResourceDef, obj: &Value) -> ApiResult<()> {
        for p in &self.plugins {
            p.validate(def, Operation::Delete, obj, None).await?;
        }
        Ok(())
    }
}

/// Upstream's DefaultTolerationSeconds-style built-in plugins live below.
pub mod builtin {
    use super::*;

    /// Pods get the not-ready/unreachable tolerations (300 s) that upstream's
    /// DefaultTolerationSeconds plugin adds, and the ServiceAccount plugin's default account name.
    pub struct PodDefaults;

    #[async_trait::async_trait]
    impl Plugin for PodDefaults {
        fn name(&self) -> &'static str {
            "PodDefaults"
        }
        async fn mutate(
            &self,
            def: &ResourceDef,
            op: Operation,
            obj: &mut Value,
            _old: Option<&Value>,
        ) -> ApiResult<()> {
            if op != Operation::Create || def.kind != "Pod" || !def.group.is_empty() {
                return Ok(());
            }
            api::defaults::pod_default_service_account(obj);
            api::defaults::pod_default_tolerations(obj);
            Ok(())
        }
    }
}
