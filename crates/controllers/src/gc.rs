//! The garbage collector: deletes objects whose owners are gone (background), deletes the
//! dependents of owners deleted in the foreground (`foregroundDeletion` finalizer), and
//! orphans the dependents of owners deleted with the `orphan` finalizer.
//!
//! Watch-based like upstream: one watcher per served kind feeds a graph (uid -> node, owner uid
//! -> dependents); items touched by an event are queued and decided by the pure functions
//! [`decide_dependent`] and [`decide_owner`]. The shell only reads the graph and calls the API.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions, PropagationPolicy,
};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::mpsc;

/// Finalizer that makes the owner wait for its dependents (propagationPolicy Foreground).
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer that makes the collector orphan the dependents (propagationPolicy Orphan).
pub const ORPHAN: &str = "orphan";

/// Errors of the garbage collector.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// An API call failed.
    #[error("API call failed")]
    Api(#[from] kube::Error),
}

/// Configuration of the garbage collector.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long to wait before retrying an item whose processing failed.
    pub retry: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            retry: Duration::from_secs(1),
        }
    }
}

/// What the collector knows about an owner referenced by a dependent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerState {
    /// The owner exists and is not waiting for its dependents.
    Solid,
    /// The owner exists, is being deleted in the foreground and waits for dependents.
    Waiting,
    /// No object with the owner's uid exists.
    Absent,
}

/// What to do with a dependent, decided by [`decide_dependent`].
#[derive(Clone, Debug, PartialEq)]
pub enum DependentAction {
    /// Nothing to do.
    Keep,
    /// Delete the dependent with this propagation policy.
    Delete(PropagationPolicy),
    /// Remove the ownerReferences with these uids.
    RemoveOwners(Vec<String>),
}

/// Upstream's `attemptToDeleteItem`: decide a dependent from the state of its owners.
/// `finalizers` are the dependent's own; `has_dependents` tells whether others depend on it.
pub fn decide_dependent(
    owners: &[(String, OwnerState)],
    deleting: bool,
    finalizers: &[String],
    has_dependents: bool,
) -> DependentAction {
    if owners.is_empty() || deleting {
        return DependentAction::Keep;
    }
    let solid = owners.iter().any(|(_, s)| *s == OwnerState::Solid);
    let not_solid: Vec<String> = owners
        .iter()
        .filter(|(_, s)| *s != OwnerState::Solid)
        .map(|(u, _)| u.clone())
        .collect();
    if solid {
        return if not_solid.is_empty() {
            DependentAction::Keep
        } else {
            DependentAction::RemoveOwners(not_solid)
        };
    }
    let waiting = owners.iter().any(|(_, s)| *s == OwnerState::Waiting);
    if waiting && has_dependents {
        return DependentAction::Delete(PropagationPolicy::Foreground);
    }
    let policy = if finalizers.iter().any(|f| f == ORPHAN) {
        PropagationPolicy::Orphan
    } else if finalizers.iter().any(|f| f == FOREGROUND) {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    };
    DependentAction::Delete(policy)
}

/// A dependent as seen from its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DependentView {
    /// The dependent's uid.
    pub uid: String,
    /// Its reference to the owner has `blockOwnerDeletion: true`.
    pub blocks: bool,
    /// It already has a deletionTimestamp.
    pub deleting: bool,
}

/// What to do with an owner being deleted, decided by [`decide_owner`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnerAction {
    /// Nothing to do (not being deleted, or no finalizer of ours).
    Keep,
    /// Remove the owner's ownerReference from these dependents, then the `orphan` finalizer.
    Orphan(Vec<String>),
    /// Foreground: process these dependents (they will be deleted); the owner waits.
    DeleteDependents(Vec<String>),
    /// Remove this finalizer from the owner.
    RemoveFinalizer(&'static str),
}

/// Decide an owner that may be in foreground or orphan deletion.
pub fn decide_owner(
    deleting: bool,
    finalizers: &[String],
    dependents: &[DependentView],
) -> OwnerAction {
    if !deleting {
        return OwnerAction::Keep;
    }
    if finalizers.iter().any(|f| f == ORPHAN) {
        return if dependents.is_empty() {
            OwnerAction::RemoveFinalizer(ORPHAN)
        } else {
            OwnerAction::Orphan(dependents.iter().map(|d| d.uid.clone()).collect())
        };
    }
    if finalizers.iter().any(|f| f == FOREGROUND) {
        if !dependents.iter().any(|d| d.blocks) {
            // Non-blocking dependents that remain are collected in the background afterwards.
            return OwnerAction::RemoveFinalizer(FOREGROUND);
        }
        let todo: Vec<String> = dependents
            .iter()
            .filter(|d| !d.deleting)
            .map(|d| d.uid.clone())
            .collect();
        return OwnerAction::DeleteDependents(todo);
    }
    OwnerAction::Keep
}

/// A served resource the collectors work on.
#[derive(Clone, Debug)]
pub(crate) struct Served {
    pub ar: ApiResource,
    pub caps: ApiCapabilities,
}

/// All served resources supporting the verbs given (events excluded unless asked for: the
/// collector ignores them as upstream does).
pub(crate) async fn served(
    client: &Client,
    needed: &[&str],
    with_events: bool,
) -> Result<(Vec<Served>, Discovery), kube::Error> {
    let d = Discovery::new(client.clone()).run().await?;
    let mut out = Vec::new();
    for g in d.groups() {
        for (ar, caps) in g.recommended_resources() {
            if ar.plural == "events" && !with_events {
                continue;
            }
            if needed.iter().all(|v| caps.supports_operation(v)) {
                out.push(Served { ar, caps });
            }
        }
    }
    Ok((out, d))
}

#[derive(Clone, Debug)]
struct Node {
    res: usize,
    namespace: Option<String>,
    name: String,
    resource_version: Option<String>,
    owners: Vec<OwnerReference>,
    finalizers: Vec<String>,
    deleting: bool,
}

#[derive(Default)]
struct Graph {
    nodes: HashMap<String, Node>,
    dependents: HashMap<String, BTreeSet<String>>,
}

impl Graph {
    /// Inserts or updates; returns uids to (re)process.
    fn upsert(&mut self, uid: String, node: Node) -> Vec<String> {
        let mut touched = vec![uid.clone()];
        if let Some(old) = self.nodes.get(&uid) {
            for o in &old.owners {
                if let Some(s) = self.dependents.get_mut(&o.uid) {
                    s.remove(&uid);
                }
                touched.push(o.uid.clone());
            }
        }
        for o in &node.owners {
            self.dependents
                .entry(o.uid.clone())
                .or_default()
                .insert(uid.clone());
            touched.push(o.uid.clone());
        }
        if node.deleting {
            touched.extend(self.dependents.get(&uid).into_iter().flatten().cloned());
        }
        self.nodes.insert(uid, node);
        touched
    }

    fn remove(&mut self, uid: &str) -> Vec<String> {
        let mut touched = Vec::new();
        if let Some(old) = self.nodes.remove(uid) {
            for o in &old.owners {
                if let Some(s) = self.dependents.get_mut(&o.uid) {
                    s.remove(uid);
                }
                touched.push(o.uid.clone());
            }
        }
        touched.extend(self.dependents.get(uid).into_iter().flatten().cloned());
        if self.dependents.get(uid).is_some_and(BTreeSet::is_empty) {
            self.dependents.remove(uid);
        }
        touched
    }
}

enum Msg {
    Apply(usize, DynamicObject),
    Delete(DynamicObject),
    Synced(usize),
}

struct Gc {
    client: Client,
    resources: Vec<Served>,
    discovery: Discovery,
    graph: Graph,
}

impl Gc {
    fn api(&self, res: usize, ns: Option<&str>) -> Api<DynamicObject> {
        let s = &self.resources[res];
        match (s.caps.scope.clone(), ns) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &s.ar),
            _ => Api::all_with(self.client.clone(), &s.ar),
        }
    }

    /// Is the owner present? Uses the graph, and a GET when the graph does not know it.
    async fn owner_state(&self, dep: &Node, r: &OwnerReference) -> Result<OwnerState, kube::Error> {
        let judge = |n: &Node| {
            if n.deleting && n.finalizers.iter().any(|f| f == FOREGROUND) {
                OwnerState::Waiting
            } else {
                OwnerState::Solid
            }
        };
        if let Some(n) = self.graph.nodes.get(&r.uid) {
            return Ok(judge(n));
        }
        let (group, version) = match r.api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", r.api_version.as_str()),
        };
        let Some((ar, caps)) = self
            .discovery
            .resolve_gvk(&GroupVersionKind::gvk(group, version, &r.kind))
        else {
            // Unknown kind: never delete on a guess.
            return Ok(OwnerState::Solid);
        };
        let api: Api<DynamicObject> = match (caps.scope, dep.namespace.as_deref()) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => return Ok(OwnerState::Absent),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), &ar),
        };
        Ok(match api.get_opt(&r.name).await? {
            Some(o) if o.metadata.uid.as_deref() == Some(r.uid.as_str()) => {
                let finalizers = o.metadata.finalizers.clone().unwrap_or_default();
                if o.metadata.deletion_timestamp.is_some()
                    && finalizers.iter().any(|f| f == FOREGROUND)
                {
                    OwnerState::Waiting
                } else {
                    OwnerState::Solid
                }
            }
            _ => OwnerState::Absent,
        })
    }

    async fn process(&self, uid: &str) -> Result<(), kube::Error> {
        let Some(node) = self.graph.nodes.get(uid).cloned() else {
            return Ok(());
        };
        // As an owner.
        let deps: Vec<DependentView> = self
            .graph
            .dependents
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|d| {
                let dn = self.graph.nodes.get(d)?;
                let r = dn.owners.iter().find(|o| o.uid == uid)?;
                Some(DependentView {
                    uid: d.clone(),
                    blocks: r.block_owner_deletion == Some(true),
                    deleting: dn.deleting,
                })
            })
            .collect();
        match decide_owner(node.deleting, &node.finalizers, &deps) {
            OwnerAction::Keep => {}
            OwnerAction::RemoveFinalizer(f) => {
                let rest: Vec<&String> = node.finalizers.iter().filter(|x| *x != f).collect();
                self.patch_meta(&node, serde_json::json!({ "finalizers": rest }))
                    .await?;
                tracing::debug!(name = %node.name, finalizer = f, "gc removed finalizer");
                return Ok(());
            }
            OwnerAction::Orphan(ds) => {
                for d in ds {
                    if let Some(dn) = self.graph.nodes.get(&d) {
                        let rest: Vec<&OwnerReference> =
                            dn.owners.iter().filter(|o| o.uid != uid).collect();
                        self.patch_meta(dn, serde_json::json!({ "ownerReferences": rest }))
                            .await?;
                    }
                }
                let rest: Vec<&String> = node.finalizers.iter().filter(|x| *x != ORPHAN).collect();
                self.patch_meta(&node, serde_json::json!({ "finalizers": rest }))
                    .await?;
                return Ok(());
            }
            OwnerAction::DeleteDependents(ds) => {
                for d in ds {
                    Box::pin(self.process_dependent(&d)).await?;
                }
            }
        }
        self.process_dependent(uid).await
    }

    async fn process_dependent(&self, uid: &str) -> Result<(), kube::Error> {
        let Some(node) = self.graph.nodes.get(uid).cloned() else {
            return Ok(());
        };
        if node.owners.is_empty() || node.deleting {
            return Ok(());
        }
        let mut owners = Vec::new();
        for r in &node.owners {
            owners.push((r.uid.clone(), self.owner_state(&node, r).await?));
        }
        let has_dependents = self
            .graph
            .dependents
            .get(uid)
            .is_some_and(|s| !s.is_empty());
        match decide_dependent(&owners, node.deleting, &node.finalizers, has_dependents) {
            DependentAction::Keep => {}
            DependentAction::RemoveOwners(gone) => {
                let rest: Vec<&OwnerReference> = node
                    .owners
                    .iter()
                    .filter(|o| !gone.contains(&o.uid))
                    .collect();
                self.patch_meta(&node, serde_json::json!({ "ownerReferences": rest }))
                    .await?;
            }
            DependentAction::Delete(policy) => {
                tracing::debug!(name = %node.name, ?policy, "gc deleting dependent");
                let dp = DeleteParams {
                    propagation_policy: Some(policy),
                    preconditions: Some(Preconditions {
                        uid: Some(uid.to_string()),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match self
                    .api(node.res, node.namespace.as_deref())
                    .delete(&node.name, &dp)
                    .await
                {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn patch_meta(&self, node: &Node, meta: serde_json::Value) -> Result<(), kube::Error> {
        let mut meta = meta;
        if let (Some(rv), Some(m)) = (&node.resource_version, meta.as_object_mut()) {
            m.insert(
                "resourceVersion".into(),
                serde_json::Value::String(rv.clone()),
            );
        }
        let patch = serde_json::json!({ "metadata": meta });
        match self
            .api(node.res, node.namespace.as_deref())
            .patch(&node.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn node_of(res: usize, o: &DynamicObject) -> Node {
    Node {
        res,
        namespace: o.metadata.namespace.clone(),
        name: o.name_any(),
        resource_version: o.metadata.resource_version.clone(),
        owners: o.metadata.owner_references.clone().unwrap_or_default(),
        finalizers: o.metadata.finalizers.clone().unwrap_or_default(),
        deleting: o.metadata.deletion_timestamp.is_some(),
    }
}

/// Runs the garbage collector until the process ends (discovery is retried until it works).
pub async fn run(client: Client, config: Config) -> Result<(), GcError> {
    // The API server may still be starting: retry discovery until it answers.
    let (resources, discovery) = loop {
        match served(
            &client,
            &[verbs::LIST, verbs::WATCH, verbs::DELETE, verbs::PATCH],
            false,
        )
        .await
        {
            Ok(x) => break x,
            Err(e) => {
                tracing::warn!(error = %e, "gc discovery failed; retrying");
                tokio::time::sleep(config.retry).await;
            }
        }
    };
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    for (i, s) in resources.iter().enumerate() {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &s.ar);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(ev) = stream.next().await {
                let msg = match ev {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => Msg::Apply(i, o),
                    Ok(watcher::Event::Delete(o)) => Msg::Delete(o),
                    Ok(watcher::Event::InitDone) => Msg::Synced(i),
                    Ok(watcher::Event::Init) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "gc watch error");
                        continue;
                    }
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut gc = Gc {
        client,
        resources,
        discovery,
        graph: Graph::default(),
    };
    let mut synced: HashSet<usize> = HashSet::new();
    let mut queue: VecDeque<String> = VecDeque::new();
    let mut queued: HashSet<String> = HashSet::new();
    let mut retry: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(config.retry);
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return Ok(()) };
                let touched = match msg {
                    Msg::Apply(i, o) => match o.metadata.uid.clone() {
                        Some(uid) => gc.graph.upsert(uid, node_of(i, &o)),
                        None => Vec::new(),
                    },
                    Msg::Delete(o) => o.metadata.uid.as_deref().map(|u| gc.graph.remove(u)).unwrap_or_default(),
                    Msg::Synced(i) => { synced.insert(i); Vec::new() }
                };
                for u in touched {
                    if queued.insert(u.clone()) { queue.push_back(u); }
                }
            }
            _ = tick.tick() => {
                for u in retry.drain() {
                    if queued.insert(u.clone()) { queue.push_back(u); }
                }
            }
        }
        if synced.len() < gc.resources.len() {
            continue;
        }
        // Drain whatever is queued; events arriving meanwhile wait in the channel.
        while let Ok(msg) = rx.try_recv() {
            let touched = match msg {
                Msg::Apply(i, o) => match o.metadata.uid.clone() {
                    Some(uid) => gc.graph.upsert(uid, node_of(i, &o)),
                    None => Vec::new(),
                },
                Msg::Delete(o) => o
                    .metadata
                    .uid
                    .as_deref()
                    .map(|u| gc.graph.remove(u))
                    .unwrap_or_default(),
                Msg::Synced(i) => {
                    synced.insert(i);
                    Vec::new()
                }
            };
            for u in touched {
                if queued.insert(u.clone()) {
                    queue.push_back(u);
                }
            }
        }
        while let Some(uid) = queue.pop_front() {
            queued.remove(&uid);
            if let Err(e) = gc.process(&uid).await {
                tracing::debug!(error = %e, uid, "gc item failed; will retry");
                retry.insert(uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn dependent_with_solid_owner_stays() {
        let o = [("a".to_string(), OwnerState::Solid)];
        assert_eq!(
            decide_dependent(&o, false, &[], false),
            DependentAction::Keep
        );
    }

    #[test]
    fn dependent_of_absent_owner_is_deleted_in_background() {
        let o = [("a".to_string(), OwnerState::Absent)];
        assert_eq!(
            decide_dependent(&o, false, &[], false),
            DependentAction::Delete(PropagationPolicy::Background)
        );
        // Its own finalizers pick the policy.
        assert_eq!(
            decide_dependent(&o, false, &s(&[ORPHAN]), false),
            DependentAction::Delete(PropagationPolicy::Orphan)
        );
        // Already deleting: nothing.
        assert_eq!(
            decide_dependent(&o, true, &[], false),
            DependentAction::Keep
        );
    }

    #[test]
    fn partly_dangling_owners_are_removed() {
        let o = [
            ("a".to_string(), OwnerState::Solid),
            ("b".to_string(), OwnerState::Absent),
            ("c".to_string(), OwnerState::Waiting),
        ];
        assert_eq!(
            decide_dependent(&o, false, &[], false),
            DependentAction::RemoveOwners(s(&["b", "c"]))
        );
    }

    #[test]
    fn waiting_owner_deletes_dependents_foreground_if_they_have_their_own() {
        let o = [("a".to_string(), OwnerState::Waiting)];
        assert_eq!(
            decide_dependent(&o, false, &[], true),
            DependentAction::Delete(PropagationPolicy::Foreground)
        );
        assert_eq!(
            decide_dependent(&o, false, &[], false),
            DependentAction::Delete(PropagationPolicy::Background)
        );
    }

    #[test]
    fn owner_decisions() {
        let d = |uid: &str, blocks, deleting| DependentView {
            uid: uid.into(),
            blocks,
            deleting,
        };
        assert_eq!(
            decide_owner(false, &s(&[FOREGROUND]), &[d("x", true, false)]),
            OwnerAction::Keep
        );
        assert_eq!(
            decide_owner(
                true,
                &s(&[FOREGROUND]),
                &[d("x", true, false), d("y", true, true)]
            ),
            OwnerAction::DeleteDependents(s(&["x"]))
        );
        assert_eq!(
            decide_owner(true, &s(&[FOREGROUND]), &[d("x", false, false)]),
            OwnerAction::RemoveFinalizer(FOREGROUND)
        );
        assert_eq!(
            decide_owner(true, &s(&[FOREGROUND]), &[]),
            OwnerAction::RemoveFinalizer(FOREGROUND)
        );
        assert_eq!(
            decide_owner(true, &s(&[ORPHAN]), &[d("x", true, false)]),
            OwnerAction::Orphan(s(&["x"]))
        );
        assert_eq!(
            decide_owner(true, &s(&[ORPHAN]), &[]),
            OwnerAction::RemoveFinalizer(ORPHAN)
        );
        assert_eq!(decide_owner(true, &s(&["other"]), &[]), OwnerAction::Keep);
    }

    #[test]
    fn graph_tracks_dependents() {
        let mut g = Graph::default();
        let owner_ref = OwnerReference {
            uid: "o".into(),
            name: "owner".into(),
            kind: "ReplicaSet".into(),
            api_version: "apps/v1".into(),
            ..Default::default()
        };
        let n = |owners: Vec<OwnerReference>| Node {
            res: 0,
            namespace: None,
            name: "n".into(),
            resource_version: None,
            owners,
            finalizers: vec![],
            deleting: false,
        };
        let touched = g.upsert("d".into(), n(vec![owner_ref.clone()]));
        assert!(touched.contains(&"o".to_string()));
        assert!(g.dependents["o"].contains("d"));
        g.upsert("d".into(), n(vec![]));
        assert!(!g.dependents["o"].contains("d"));
        g.upsert("d".into(), n(vec![owner_ref]));
        let touched = g.remove("o");
        assert_eq!(touched, s(&["d"]));
    }
}
