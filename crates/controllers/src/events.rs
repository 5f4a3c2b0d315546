//! A small event recorder: writes core/v1 `Event`s about objects, de-duplicating
//! repeats of the same (object, type, reason, message) by bumping `count` and
//! `lastTimestamp`, as client-go's event correlator does.
//!
//! Owns only event bookkeeping; it must not know anything about particular controllers.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::Mutex;

/// Event type `Normal`.
pub const NORMAL: &str = "Normal";
/// Event type `Warning`.
pub const WARNING: &str = "Warning";

/// Errors while recording an event.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    /// The API call failed.
    #[error("writing event")]
    Api(#[from] kube::Error),
    /// The referenced object has no namespace and no default could be used.
    #[error("object reference has no name")]
    NoName,
}

/// The identity of an event for de-duplication.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    uid: String,
    kind: String,
    namespace: String,
    name: String,
    type_: String,
    reason: String,
    message: String,
}

#[derive(Clone, Debug)]
struct Seen {
    event_name: String,
    count: i32,
}

/// Records events for one component (e.g. `job-controller`).
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    seen: Arc<Mutex<HashMap<Key, Seen>>>,
}

/// Builds an `ObjectReference` for any typed Kubernetes object.
pub fn object_ref<K>(obj: &K) -> ObjectReference
where
    K: Resource<DynamicType = ()>,
{
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        name: obj.meta().name.clone(),
        namespace: obj.meta().namespace.clone(),
        uid: obj.meta().uid.clone(),
        resource_version: obj.meta().resource_version.clone(),
        field_path: None,
    }
}

/// Pure: the Event object to create for a first occurrence.
pub fn new_event(
    obj: &ObjectReference,
    component: &str,
    type_: &str,
    reason: &str,
    message: &str,
    now: jiff::Timestamp,
    name_suffix: &str,
) -> Event {
    let ns = obj
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "default".to_string());
    let base = obj.name.clone().unwrap_or_default();
    let ts = Time(now);
    Event {
        metadata: ObjectMeta {
            name: Some(format!("{base}.{name_suffix}")),
            namespace: Some(ns),
            ..Default::default()
        },
        involved_object: obj.clone(),
        type_: Some(type_.to_string()),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        source: Some(EventSource {
            component: Some(component.to_string()),
            host: None,
        }),
        count: Some(1),
        first_timestamp: Some(ts.clone()),
        last_timestamp: Some(ts),
        event_time: None::<MicroTime>,
        reporting_component: Some(component.to_string()),
        reporting_instance: Some(component.to_string()),
        action: None,
        related: None,
        series: None,
    }
}

fn suffix(now: jiff::Timestamp, n: u64) -> String {
    // Like client-go: hex of nanoseconds, plus a counter to avoid collisions.
    format!("{:x}{:x}", now.as_nanosecond() as u128, n)
}

impl Recorder {
    /// A recorder writing events with `source.component = component`.
    pub fn new(client: Client, component: impl Into<String>) -> Self {
        Self {
            client,
            component: component.into(),
            seen: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Records an event; repeats of the same object/type/reason/message bump `count`.
    pub async fn record(
        &self,
        obj: &ObjectReference,
        type_: &str,
        reason: &str,
        message: &str,
    ) -> Result<(), EventError> {
        let name = obj.name.clone().ok_or(EventError::NoName)?;
        let ns = obj
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".to_string());
        let key = Key {
            uid: obj.uid.clone().unwrap_or_default(),
            kind: obj.kind.clone().unwrap_or_default(),
            namespace: ns.clone(),
            name,
            type_: type_.into(),
            reason: reason.into(),
            message: message.into(),
        };
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        let now = jiff::Timestamp::now();
        let mut seen = self.seen.lock().await;
        if let Some(prev) = seen.get(&key).cloned() {
            let count = prev.count + 1;
            let patch = serde_json::json!({
                "count": count,
                "lastTimestamp": Time(now),
            });
            match api
                .patch(
                    &prev.event_name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(_) => {
                    seen.insert(
                        key,
                        Seen {
                            event_name: prev.event_name,
                            count,
                        },
                    );
                    return Ok(());
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    seen.remove(&key);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let n = seen.len() as u64;
        let ev = new_event(
            obj,
            &self.component,
            type_,
            reason,
            message,
            now,
            &suffix(now, n),
        );
        let created = api.create(&PostParams::default(), &ev).await?;
        // Bound memory: forget everything once the cache grows large.
        if seen.len() > 4096 {
            seen.clear();
        }
        seen.insert(
            key,
            Seen {
                event_name: created.name_any(),
                count: 1,
            },
        );
        Ok(())
    }

    /// Records an event, logging (not returning) a failure: events are best effort.
    pub async fn publish(&self, obj: &ObjectReference, type_: &str, reason: &str, message: &str) {
        if let Err(e) = self.record(obj, type_, reason, message).await {
            tracing::warn!(error = %e, reason, "failed to record event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_event_fields() {
        let r = ObjectReference {
            api_version: Some("batch/v1".into()),
            kind: Some("Job".into()),
            name: Some("pi".into()),
            namespace: Some("ns".into()),
            uid: Some("u1".into()),
            ..Default::default()
        };
        let now = jiff::Timestamp::from_second(1_700_000_000).expect("valid");
        let e = new_event(
            &r,
            "job-controller",
            NORMAL,
            "SuccessfulCreate",
            "Created pod: pi-x",
            now,
            "abc",
        );
        assert_eq!(e.metadata.name.as_deref(), Some("pi.abc"));
        assert_eq!(e.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(e.count, Some(1));
        assert_eq!(
            e.source.and_then(|s| s.component).as_deref(),
            Some("job-controller")
        );
        assert_eq!(e.reporting_component.as_deref(), Some("job-controller"));
        assert_eq!(e.first_timestamp, e.last_timestamp);
        assert_eq!(e.involved_object.kind.as_deref(), Some("Job"));
    }

    #[test]
    fn cluster_scoped_object_goes_to_default() {
        let r = ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            ..Default::default()
        };
        let now = jiff::Timestamp::from_second(1).expect("valid");
        let e = new_event(&r, "node-controller", NORMAL, "X", "y", now, "1");
        assert_eq!(e.metadata.namespace.as_deref(), Some("default"));
    }
}
