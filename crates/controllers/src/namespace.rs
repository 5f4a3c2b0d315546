//! The namespace controller: for a namespace being deleted, deletes every namespaced object of
//! every served kind inside it, re-checks until all are gone (pods may take their grace period),
//! then removes the `kubernetes` finalizer through `namespaces/NAME/finalize`.
//!
//! [`conditions`] (the status conditions as upstream writes them) and [`finalize_spec`] are pure;
//! [`run`] is the kube-runtime shell.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, NamespaceCondition, NamespaceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{Scope, verbs};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};

use crate::gc::served;

/// The finalizer the namespace controller owns.
pub const FINALIZER: &str = "kubernetes";

/// Errors of the namespace controller.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// An API call failed.
    #[error("API call failed")]
    Api(#[from] kube::Error),
}

/// Configuration of the namespace controller.
#[derive(Clone, Debug)]
pub struct Config {
    /// How often a terminating namespace is re-checked while content remains.
    pub recheck: Duration,
    /// Write the deletion conditions to `status` while content remains. Off by default: the API
    /// server currently deletes a terminating namespace on any update once its
    /// `metadata.finalizers` are empty, ignoring `spec.finalizers`, which would drop the
    /// namespace before its content is gone.
    pub write_conditions: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            recheck: Duration::from_secs(2),
            write_conditions: false,
        }
    }
}

/// What one deletion pass observed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// (group resource, number of objects still there).
    pub remaining: Vec<(String, usize)>,
    /// (finalizer, number of objects carrying it).
    pub finalizers: Vec<(String, usize)>,
    /// Errors while deleting content.
    pub failures: Vec<String>,
}

impl Observed {
    /// Nothing left: the namespace may be finalized.
    pub fn empty(&self) -> bool {
        self.remaining.iter().all(|(_, n)| *n == 0) && self.failures.is_empty()
    }
}

fn cond(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    now: jiff::Timestamp,
) -> NamespaceCondition {
    NamespaceCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(now)),
    }
}

/// The deletion conditions upstream puts on a terminating namespace.
pub fn conditions(o: &Observed, now: jiff::Timestamp) -> Vec<NamespaceCondition> {
    let remaining: Vec<String> = o
        .remaining
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(gr, n)| format!("{gr} has {n} resource instances"))
        .collect();
    let fins: Vec<String> = o
        .finalizers
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(f, n)| format!("{f} in {n} resource instances"))
        .collect();
    vec![
        cond(
            "NamespaceDeletionDiscoveryFailure",
            false,
            "ResourcesDiscovered",
            "All resources successfully discovered".into(),
            now,
        ),
        cond(
            "NamespaceDeletionGroupVersionParsingFailure",
            false,
            "ParsedGroupVersions",
            "All legacy kube types successfully parsed".into(),
            now,
        ),
        if o.failures.is_empty() {
            cond(
                "NamespaceDeletionContentFailure",
                false,
                "ContentDeleted",
                "All content successfully deleted, may be waiting on finalization".into(),
                now,
            )
        } else {
            cond(
                "NamespaceDeletionContentFailure",
                true,
                "ContentDeletionFailed",
                format!(
                    "Failed to delete all resource types, {} remaining: {}",
                    o.failures.len(),
                    o.failures.join(", ")
                ),
                now,
            )
        },
        if remaining.is_empty() {
            cond(
                "NamespaceContentRemaining",
                false,
                "ContentRemoved",
                "All content successfully removed".into(),
                now,
            )
        } else {
            cond(
                "NamespaceContentRemaining",
                true,
                "SomeResourcesRemain",
                format!("Some resources are remaining: {}", remaining.join(", ")),
                now,
            )
        },
        if fins.is_empty() {
            cond(
                "NamespaceFinalizersRemaining",
                false,
                "ContentHasNoFinalizers",
                "All content-preserving finalizers finished".into(),
                now,
            )
        } else {
            cond(
                "NamespaceFinalizersRemaining",
                true,
                "SomeFinalizersRemain",
                format!(
                    "Some content in the namespace has finalizers remaining: {}",
                    fins.join(", ")
                ),
                now,
            )
        },
    ]
}

/// The spec to PUT to `finalize`: the same finalizers without ours.
pub fn finalize_spec(ns: &Namespace) -> NamespaceSpec {
    let fins: Vec<String> = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|f| f != FINALIZER)
        .collect();
    NamespaceSpec {
        finalizers: Some(fins),
    }
}

/// Whether this namespace is ours to finish.
pub fn needs_cleanup(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_some()
        && ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| f.iter().any(|x| x == FINALIZER))
}

struct Ctx {
    client: Client,
    config: Config,
}

fn group_resource(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// Deletes the content of `ns` and reports what is left.
async fn delete_content(client: &Client, ns: &str) -> Result<Observed, kube::Error> {
    let (resources, _) = served(client, &[verbs::LIST, verbs::DELETE], true).await?;
    let mut o = Observed::default();
    let mut fins: std::collections::BTreeMap<String, usize> = Default::default();
    for s in resources
        .iter()
        .filter(|s| s.caps.scope == Scope::Namespaced)
    {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &s.ar);
        let gr = group_resource(&s.ar.group, &s.ar.plural);
        let dp = DeleteParams::background();
        let res = if s.caps.supports_operation(verbs::DELETE_COLLECTION) {
            api.delete_collection(&dp, &ListParams::default())
                .await
                .map(|_| ())
        } else {
            async {
                for item in api.list(&ListParams::default()).await?.items {
                    if item.metadata.deletion_timestamp.is_none() {
                        match api.delete(&item.name_any(), &dp).await {
                            Ok(_) => {}
                            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            }
            .await
        };
        if let Err(e) = res {
            tracing::debug!(error = %e, resource = %gr, namespace = ns, "namespace content deletion failed");
            o.failures.push(gr.clone());
        }
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for item in &list.items {
                    for f in item.metadata.finalizers.iter().flatten() {
                        *fins.entry(f.clone()).or_default() += 1;
                    }
                }
                o.remaining.push((gr, list.items.len()));
            }
            Err(e) => {
                tracing::debug!(error = %e, resource = %gr, "listing namespace content failed");
                o.failures.push(gr);
            }
        }
    }
    o.finalizers = fins.into_iter().collect();
    Ok(o)
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Ctx>) -> Result<Action, NamespaceError> {
    if !needs_cleanup(&ns) {
        return Ok(Action::await_change());
    }
    let name = ns.name_any();
    let observed = delete_content(&ctx.client, &name).await?;
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    if observed.empty() {
        let Some(fresh) = api.get_opt(&name).await? else {
            return Ok(Action::await_change());
        };
        let mut body = fresh.clone();
        body.spec = Some(finalize_spec(&fresh));
        match api
            .replace_subresource::<Namespace>("finalize", &name, &PostParams::default(), &body)
            .await
        {
            Ok(_) => return Ok(Action::await_change()),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(e) => return Err(e.into()),
        }
    }
    if !ctx.config.write_conditions {
        tracing::debug!(namespace = %name, ?observed, "namespace content remaining");
        return Ok(Action::requeue(ctx.config.recheck));
    }
    let patch = serde_json::json!({"status": {"phase": "Terminating", "conditions": conditions(&observed, jiff::Timestamp::now())}});
    if let Err(e) = api
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, namespace = %name, "writing namespace conditions failed");
    }
    Ok(Action::requeue(ctx.config.recheck))
}

fn error_policy(_ns: Arc<Namespace>, err: &NamespaceError, ctx: Arc<Ctx>) -> Action {
    tracing::debug!(error = %err, "namespace reconcile failed; retrying");
    Action::requeue(ctx.config.recheck)
}

/// Runs the namespace controller until the process ends.
pub async fn run(client: Client, config: Config) {
    let api: Api<Namespace> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, config });
    Controller::new(api, watcher::Config::default())
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn now() -> jiff::Timestamp {
        jiff::Timestamp::from_second(1_700_000_000).unwrap()
    }

    #[test]
    fn conditions_when_content_remains() {
        let o = Observed {
            remaining: vec![("pods".into(), 2), ("configmaps".into(), 0)],
            finalizers: vec![("foregroundDeletion".into(), 1)],
            failures: vec![],
        };
        assert!(!o.empty());
        let cs = conditions(&o, now());
        let get = |t: &str| cs.iter().find(|c| c.type_ == t).unwrap();
        let r = get("NamespaceContentRemaining");
        assert_eq!(r.status, "True");
        assert_eq!(
            r.message.as_deref(),
            Some("Some resources are remaining: pods has 2 resource instances")
        );
        assert_eq!(get("NamespaceFinalizersRemaining").status, "True");
        assert_eq!(get("NamespaceDeletionContentFailure").status, "False");
        assert_eq!(cs.len(), 5);
    }

    #[test]
    fn empty_and_failures() {
        let mut o = Observed {
            remaining: vec![("pods".into(), 0)],
            ..Default::default()
        };
        assert!(o.empty());
        o.failures.push("secrets".into());
        assert!(!o.empty());
        let cs = conditions(&o, now());
        let f = cs
            .iter()
            .find(|c| c.type_ == "NamespaceDeletionContentFailure")
            .unwrap();
        assert_eq!(
            (f.status.as_str(), f.reason.as_deref()),
            ("True", Some("ContentDeletionFailed"))
        );
    }

    #[test]
    fn finalize_keeps_other_finalizers() {
        let ns = Namespace {
            metadata: ObjectMeta {
                deletion_timestamp: Some(Time(now())),
                ..Default::default()
            },
            spec: Some(NamespaceSpec {
                finalizers: Some(vec!["kubernetes".into(), "example.com/x".into()]),
            }),
            status: None,
        };
        assert!(needs_cleanup(&ns));
        assert_eq!(
            finalize_spec(&ns).finalizers,
            Some(vec!["example.com/x".to_string()])
        );
        let mut live = ns.clone();
        live.metadata.deletion_timestamp = None;
        assert!(!needs_cleanup(&live));
    }

    #[test]
    fn group_resource_strings() {
        assert_eq!(group_resource("", "pods"), "pods");
        assert_eq!(group_resource("apps", "deployments"), "deployments.apps");
    }
}
