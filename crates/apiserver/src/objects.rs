//! The generic object store: create, read, list, update, patch, delete and watch for every declared
//! resource, on top of a `store::Backend`. This is where upstream's "registry strategy" lives:
//! system metadata (uid, creationTimestamp, generation, resourceVersion), the spec/status split,
//! defaulting, admission, validation, finalizers and graceful deletion.
//!
//! Objects are `serde_json::Value`s in the JSON API shape. They are stored as JSON without
//! `metadata.resourceVersion`; the store's mod revision is the resourceVersion.

use std::sync::Arc;

use api::resource::{Cause, ResourceDef};
use api::selector::{FieldSelector, LabelSelector};
use http::StatusCode;
use serde_json::{Map, Value, json};
use store::{Backend, Revision};

use crate::admission::{Admission, Operation};
use crate::error::{ApiError, ApiResult};
use crate::informer::{Informer, Lookup};

/// Where one object lives.
#[derive(Debug, Clone)]
pub struct ObjectRef {
    pub def: &'static ResourceDef,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    pub fn key(&self) -> String {
        key(self.def, self.namespace.as_deref(), &self.name)
    }
    /// `pods` or `deployments.apps`, as upstream names resources in messages.
    pub fn resource_name(&self) -> String {
        resource_name(self.def)
    }
}

pub fn resource_name(def: &ResourceDef) -> String {
    if def.group.is_empty() {
        def.plural.to_string()
    } else {
        format!("{}.{}", def.plural, def.group)
    }
}

/// The storage location of a resource: (group segment, plural). Converted resources live with
/// the resource they are stored as.
fn storage(def: &ResourceDef) -> (&str, &str) {
    match def.conversion {
        Some(c) => (c.storage_group, c.storage_plural),
        None => (
            if def.group.is_empty() {
                "core"
            } else {
                def.group
            },
            def.plural,
        ),
    }
}

/// The storage key of an object.
pub fn key(def: &ResourceDef, namespace: Option<&str>, name: &str) -> String {
    let (g, plural) = storage(def);
    match namespace {
        Some(ns) => format!("/registry/{g}/{plural}/{ns}/{name}"),
        None => format!("/registry/{g}/{plural}/{name}"),
    }
}

/// The key prefix of a collection (all namespaces when `namespace` is None).
pub fn prefix(def: &ResourceDef, namespace: Option<&str>) -> String {
    let (g, plural) = storage(def);
    match namespace {
        Some(ns) => format!("/registry/{g}/{plural}/{ns}/"),
        None => format!("/registry/{g}/{plural}/"),
    }
}

/// Options common to writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: String,
    /// "Strict", "Warn" or "Ignore".
    pub field_validation: String,
}

/// The outcome of a write: the object and warnings to send as `Warning` headers.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
    pub created: bool,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: Option<LabelSelector>,
    pub field_selector: Option<FieldSelector>,
    pub limit: usize,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// Options of a delete (`meta/v1 DeleteOptions`).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    pub grace_period_seconds: Option<i64>,
    pub propagation_policy: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// The generic store.
pub struct Objects {
    pub backend: Arc<dyn Backend>,
    pub admission: Admission,
    /// Namespace name -> terminating, for the namespace lifecycle check of every namespaced create
    /// (kept current by a watch and by this server's own namespace writes).
    namespaces: Informer<bool>,
}

/// What the namespace cache keeps of a namespace: whether it is terminating.
fn namespace_terminating(ns: &Value) -> Option<bool> {
    Some(meta(ns).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|d| !d.is_null())))
}

fn namespaces_def() -> &'static ResourceDef {
    api::resource::find("", "v1", "namespaces").expect("namespaces are always served")
}

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Decode a stored value as `def`'s form and stamp its resourceVersion.
pub fn decode(def: &ResourceDef, bytes: &[u8], revision: Revision) -> ApiResult<Value> {
    let v = decode_raw(bytes, revision)?;
    Ok(match def.conversion {
        Some(c) => (c.from_storage)(v),
        None => v,
    })
}

fn decode_raw(bytes: &[u8], revision: Revision) -> ApiResult<Value> {
    let mut v: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::internal(format!("stored object is not valid JSON: {e}")))?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
    Ok(v)
}

fn encode(def: &ResourceDef, obj: &Value) -> Vec<u8> {
    let mut o = match def.conversion {
        Some(c) => (c.to_storage)(obj.clone()),
        None => obj.clone(),
    };
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        meta.remove("selfLink");
    }
    serde_json::to_vec(&o).unwrap_or_default()
}

fn meta(obj: &Value) -> Option<&Map<String, Value>> {
    obj.get("metadata").and_then(Value::as_object)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

pub fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    meta(obj).and_then(|m| m.get(field)).and_then(Value::as_str)
}

fn finalizers(obj: &Value) -> Vec<String> {
    meta(obj)
        .and_then(|m| m.get("finalizers"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn parse_rv(s: &str) -> ApiResult<Revision> {
    s.parse::<Revision>()
        .map_err(|_| ApiError::bad_request(format!("invalid resource version {s:?}")))
}

const GENERATE_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn generate_suffix() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..5)
        .map(|_| GENERATE_ALPHABET[rng.random_range(0..GENERATE_ALPHABET.len())] as char)
        .collect()
}

/// Check apiVersion/kind of a body against the URL's resource (missing ones are filled in).
pub fn check_type(def: &ResourceDef, obj: &mut Value) -> ApiResult<()> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request(
            "the body of the request must be a JSON object",
        ));
    };
    let want_av = def.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), want_av.clone().into());
        }
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
    }
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), def.kind.into());
        }
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )));
        }
    }
    if map
        .get("metadata")
        .is_some_and(|m| !m.is_object() && !m.is_null())
    {
        return Err(ApiError::bad_request("metadata must be an object"));
    }
    Ok(())
}

/// Typed decoding: type errors are BadRequest; unknown fields are an error (Strict), a warning
/// (Warn, the default) or dropped silently (Ignore). Returns the canonical object.
pub fn typed(
    def: &ResourceDef,
    obj: &Value,
    field_validation: &str,
    warnings: &mut Vec<String>,
) -> ApiResult<Value> {
    let known = (def.roundtrip)(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            def.kind, def.version, def.kind
        ))
    })?;
    let unknown = api::resource::unknown_fields(obj, &known);
    if !unknown.is_empty() {
        match field_validation {
            "Strict" => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|u| format!("unknown field {:?}", u.trim_start_matches('.')))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )));
            }
            "Ignore" => {}
            _ => warnings.extend(
                unknown
                    .iter()
                    .map(|u| format!("unknown field {:?}", u.trim_start_matches('.'))),
            ),
        }
    }
    Ok(known)
}

fn spec_of(obj: &Value) -> Option<&Value> {
    obj.get("spec").or_else(|| obj.get("template"))
}

impl Objects {
    pub fn new(backend: Arc<dyn Backend>, admission: Admission) -> Self {
        Self {
            backend,
            admission,
            namespaces: Informer::new(prefix(namespaces_def(), None), namespace_terminating),
        }
    }

    /// The store acknowledged a write of `key` at `revision` (`obj` None: a delete): the
    /// admission caches take it at once, so that the next request sees it.
    fn observe(&self, key: &str, revision: Revision, obj: Option<&Value>) {
        self.namespaces.observe(key, revision, obj);
        self.admission.observe(key, revision, obj);
    }

    /// `backend.create`, then [`Self::observe`].
    async fn store_create(
        &self,
        def: &ResourceDef,
        key: &str,
        obj: &Value,
    ) -> store::Result<Revision> {
        let rev = self.backend.create(key, encode(def, obj)).await?;
        self.observe(key, rev, Some(obj));
        Ok(rev)
    }

    /// `backend.update`, then [`Self::observe`].
    async fn store_update(
        &self,
        def: &ResourceDef,
        key: &str,
        obj: &Value,
        expected: Revision,
    ) -> store::Result<Revision> {
        let rev = self.backend.update(key, encode(def, obj), expected).await?;
        self.observe(key, rev, Some(obj));
        Ok(rev)
    }

    /// `backend.delete`, then [`Self::observe`]; returns the delete's revision.
    async fn store_delete(&self, key: &str, expected: Revision) -> store::Result<Revision> {
        let (rev, _) = self.backend.delete(key, Some(expected)).await?;
        self.observe(key, rev, None);
        Ok(rev)
    }

    /// Read one object (latest).
    pub async fn get(&self, r: &ObjectRef) -> ApiResult<Value> {
        let (_, kv) = self.backend.get(&r.key(), None).await?;
        match kv {
            Some(kv) => decode(r.def, &kv.value, kv.mod_revision),
            None => Err(
                ApiError::not_found(&r.resource_name(), &r.name).with_details(
                    r.def.group,
                    r.def.plural,
                    &r.name,
                ),
            ),
        }
    }

    async fn get_kv(&self, r: &ObjectRef) -> ApiResult<Option<(Value, Revision)>> {
        let (_, kv) = self.backend.get(&r.key(), None).await?;
        match kv {
            Some(kv) => Ok(Some((
                decode(r.def, &kv.value, kv.mod_revision)?,
                kv.mod_revision,
            ))),
            None => Ok(None),
        }
    }

    /// List a collection; returns the items, the list's resourceVersion and a continue token.
    pub async fn list(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<(Vec<Value>, Revision, Option<String>, Option<i64>)> {
        let pfx = prefix(def, namespace);
        let (mut start_after, mut revision) = match &opts.continue_token {
            Some(tok) => {
                let (rev, key) = decode_continue(tok)?;
                (Some(key), Some(rev))
            }
            None => (None, None),
        };
        if revision.is_none()
            && let Some(rv) = opts
                .resource_version
                .as_deref()
                .filter(|s| !s.is_empty() && *s != "0")
        {
            let rv = parse_rv(rv)?;
            let current = self.backend.current_revision().await?;
            if opts.resource_version_match.as_deref() == Some("Exact") {
                revision = Some(rv);
            } else if rv > current {
                return Err(ApiError::timeout(format!(
                    "Too large resource version: {rv}, current: {current}"
                )));
            }
        }
        let mut items = Vec::new();
        let filtering = opts.label_selector.as_ref().is_some_and(|s| !s.is_empty())
            || opts.field_selector.is_some();
        loop {
            let want = if opts.limit == 0 {
                0
            } else {
                opts.limit
                    .saturating_sub(items.len())
                    .max(if filtering { 100 } else { 0 })
            };
            let page = self
                .backend
                .list(&pfx, start_after.as_deref(), want, revision)
                .await?;
            revision = Some(page.revision);
            let mut last_key = None;
            for kv in page.items {
                last_key = Some(kv.key.clone());
                let obj = decode(def, &kv.value, kv.mod_revision)?;
                if self.matches(def, &obj, opts)? {
                    items.push(obj);
                    if opts.limit > 0 && items.len() >= opts.limit {
                        break;
                    }
                }
            }
            let rev = page.revision;
            let more_in_store =
                page.more || (opts.limit > 0 && items.len() >= opts.limit && last_key.is_some());
            if opts.limit > 0 && items.len() >= opts.limit {
                if more_in_store {
                    // Is there anything after the last returned key?
                    let last = last_key.clone().unwrap_or_default();
                    let probe = self.backend.list(&pfx, Some(&last), 1, Some(rev)).await?;
                    if !probe.items.is_empty() {
                        let remaining = self.backend.count(&pfx).await.ok();
                        return Ok((
                            items,
                            rev,
                            Some(encode_continue(rev, &last)),
                            remaining.map(|r| r.max(0)),
                        ));
                    }
                }
                return Ok((items, rev, None, None));
            }
            if !page.more {
                return Ok((items, rev, None, None));
            }
            start_after = last_key;
        }
    }

    /// Every object matching `opts`' selectors at the latest revision (no paging), with that revision.
    pub async fn list_all(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> ApiResult<(Vec<Value>, Revision)> {
        let all = ListOptions {
            limit: 0,
            continue_token: None,
            resource_version: None,
            resource_version_match: None,
            ..opts.clone()
        };
        let (items, rev, _, _) = self.list(def, namespace, &all).await?;
        Ok((items, rev))
    }

    pub fn matches(&self, def: &ResourceDef, obj: &Value, opts: &ListOptions) -> ApiResult<bool> {
        if let Some(sel) = &opts.label_selector {
            let empty = Map::new();
            let labels = meta(obj)
                .and_then(|m| m.get("labels"))
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            if !sel.matches(labels) {
                return Ok(false);
            }
        }
        if let Some(fs) = &opts.field_selector {
            return fs
                .matches_object(def.group, def.kind, obj)
                .map_err(|e| ApiError::bad_request(e.to_string()));
        }
        Ok(true)
    }

    /// Check that the namespace exists and is not terminating: from the namespace cache when
    /// it has the namespace, else (not synced, or not there: maybe created a moment ago by
    /// another server) from the store, as kube-apiserver's NamespaceLifecycle does.
    async fn check_namespace(&self, ns: &str, creating: bool) -> ApiResult<()> {
        let r = ObjectRef {
            def: namespaces_def(),
            namespace: None,
            name: ns.to_string(),
        };
        self.namespaces.start(&self.backend);
        let terminating = match self.namespaces.get(&r.key()) {
            Lookup::Found(terminating) => Some(terminating),
            Lookup::Missing | Lookup::NotSynced => self
                .get_kv(&r)
                .await?
                .map(|(nsobj, _)| namespace_terminating(&nsobj).unwrap_or(false)),
        };
        match terminating {
            None => Err(ApiError::not_found("namespaces", ns).with_details("", "namespaces", ns)),
            Some(terminating) => {
                if creating && terminating {
                    return Err(ApiError::forbidden(format!(
                        "unable to create new content in namespace {ns} because it is being terminated"
                    ))
                    .with_details("", "namespaces", ns));
                }
                Ok(())
            }
        }
    }

    /// Create an object in `namespace` (None for cluster-scoped kinds).
    pub async fn create(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        obj: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        self.create_as(def, namespace, obj, opts, "Update").await
    }

    /// Create, recording the write in managedFields as `operation` ("Update"), or keeping the
    /// managedFields that server-side apply computed ("Apply").
    async fn create_as(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
        operation: &str,
    ) -> ApiResult<Written> {
        check_type(def, &mut obj)?;
        let mut warnings = Vec::new();
        let mut obj = typed(def, &obj, &opts.field_validation, &mut warnings)?;
        {
            let m = meta_mut(&mut obj);
            if let Some(ns) = namespace {
                match m.get("namespace").and_then(Value::as_str) {
                    None | Some("") => {
                        m.insert("namespace".into(), ns.into());
                    }
                    Some(other) if other == ns => {}
                    Some(_) => {
                        return Err(ApiError::bad_request(
                            "the namespace of the provided object does not match the namespace sent on the request",
                        ));
                    }
                }
            } else {
                m.remove("namespace");
            }
            let has_name = m
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty());
            if !has_name
                && let Some(g) = m
                    .get("generateName")
                    .and_then(Value::as_str)
                    .filter(|g| !g.is_empty())
            {
                let name = format!("{g}{}", generate_suffix());
                m.insert("name".into(), name.into());
            }
            if m.get("name")
                .and_then(Value::as_str)
                .is_none_or(|n| n.is_empty())
            {
                return Err(ApiError::invalid(
                    def.kind,
                    def.group,
                    "",
                    vec![Cause {
                        reason: "FieldValueRequired",
                        message: "Required value: name or generateName is required".into(),
                        field: "metadata.name".into(),
                    }],
                ));
            }
            m.insert("uid".into(), uuid::Uuid::new_v4().to_string().into());
            m.insert("creationTimestamp".into(), now_rfc3339().into());
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            m.remove("deletionGracePeriodSeconds");
            m.remove("selfLink");
            if def.generation {
                m.insert("generation".into(), 1.into());
            } else {
                m.remove("generation");
            }
        }
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        if let Some(ns) = namespace {
            self.check_namespace(ns, true).await?;
        }
        prepare_for_create(def, &mut obj);
        (def.defaults)(&mut obj);
        if def.group == "batch" && def.kind == "Job" {
            let uid = meta_str(&obj, "uid").unwrap_or_default().to_string();
            api::defaults::job_selector(&mut obj, &uid);
        }
        self.admission
            .mutate(def, Operation::Create, &mut obj, None)
            .await?;
        let causes = (def.validate)(&obj, None);
        if !causes.is_empty() {
            return Err(ApiError::invalid(def.kind, def.group, &name, causes));
        }
        self.admission
            .validate(def, Operation::Create, &obj, None)
            .await?;
        let manager = if opts.field_manager.is_empty() {
            "unknown"
        } else {
            &opts.field_manager
        };
        if operation != "Apply" {
            api::apply::update_managed_fields(
                None,
                &mut obj,
                manager,
                operation,
                None,
                &def.api_version(),
                &now_rfc3339(),
            );
        }
        let r = ObjectRef {
            def,
            namespace: namespace.map(str::to_string),
            name: name.clone(),
        };
        if opts.dry_run {
            return Ok(Written {
                object: obj,
                warnings,
                created: true,
            });
        }
        match self.store_create(def, &r.key(), &obj).await {
            Ok(rev) => {
                meta_mut(&mut obj).insert("resourceVersion".into(), rev.to_string().into());
                Ok(Written {
                    object: obj,
                    warnings,
                    created: true,
                })
            }
            Err(store::Error::AlreadyExists(_)) => {
                Err(ApiError::already_exists(&r.resource_name(), &name)
                    .with_details(def.group, def.plural, &name))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Replace an object (PUT), or one of its subresources (`status`).
    pub async fn update(
        &self,
        r: &ObjectRef,
        subresource: Option<&str>,
        mut obj: Value,
        opts: &WriteOptions,
    ) -> ApiResult<Written> {
        check_type(r.def, &mut obj)?;
        let mut warnings = Vec::new();
        let obj = typed(r.def, &obj, &opts.field_validation, &mut warnings)?;
        if let Some(n) = meta_str(&obj, "name")
            && n != r.name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                r.name
            )));
        }
        let precondition = meta_str(&obj, "resourceVersion")
            .filter(|s| !s.is_empty())
            .map(parse_rv)
            .transpose()?;
        let current = self.get_kv(r).await?;
        let Some((old, rev)) = current else {
            if allow_create_on_update(r.def) && subresource.is_none() {
                let mut obj = obj;
                meta_mut(&mut obj).insert("name".into(), r.name.clone().into());
                return self.create(r.def, r.namespace.as_deref(), obj, opts).await;
            }
            return Err(
                ApiError::not_found(&r.resource_name(), &r.name).with_details(
                    r.def.group,
                    r.def.plural,
                    &r.name,
                ),
            );
        };
        if let Some(p) = precondition
            && p != rev
        {
            return Err(ApiError::conflict(&r.resource_name(), &r.name, "the object has been modified; please apply your changes to the latest version and try again").with_details(r.def.group, r.def.plural, &r.name));
        }
        let mut w = self
            .write_over(r, subresource, old, rev, obj, opts, "Update")
            .await?;
        w.warnings.extend(warnings);
        Ok(w)
    }

    /// The common tail of update and patch: strategy, defaults, admission, validation, generation,
    /// finalizer completion, and a write guarded by the revision that was read.
    #[allow(clippy::too_many_arguments)]
    pub async fn write_over(
        &self,
        r: &ObjectRef,
        subresource: Option<&str>,
        old: Value,
        rev: Revision,
        mut obj: Value,
        opts: &WriteOptions,
        operation: &str,
    ) -> ApiResult<Written> {
        let def = r.def;
        prepare_for_update(def, subresource, &old, &mut obj);
        if def.group.is_empty() && def.kind == "Service" {
            api::defaults::service_keep_allocated(&mut obj, &old);
        }
        (def.defaults)(&mut obj);
        self.admission
            .mutate(def, Operation::Update, &mut obj, Some(&old))
            .await?;
        let causes = (def.validate)(&obj, Some(&old));
        if !causes.is_empty() {
            return Err(ApiError::invalid(def.kind, def.group, &r.name, causes));
        }
        self.admission
            .validate(def, Operation::Update, &obj, Some(&old))
            .await?;
        if def.generation && spec_of(&obj) != spec_of(&old) {
            let g = meta(&old)
                .and_then(|m| m.get("generation"))
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut obj).insert("generation".into(), (g + 1).into());
        }
        let manager = if opts.field_manager.is_empty() {
            "unknown"
        } else {
            &opts.field_manager
        };
        if operation != "Apply" {
            api::apply::update_managed_fields(
                Some(&old),
                &mut obj,
                manager,
                operation,
                subresource,
                &def.api_version(),
                &now_rfc3339(),
            );
        }
        // A terminating object whose last finalizer is gone is deleted now.
        let terminating =
            meta(&obj).is_some_and(|m| m.get("deletionTimestamp").is_some_and(|d| !d.is_null()));
        if terminating
            && finalizers(&obj).is_empty()
            && !pending_graceful(def, &obj)
            && !(def.kind == "Namespace" && namespace_has_finalizers(&obj))
        {
            if opts.dry_run {
                return Ok(Written {
                    object: obj,
                    warnings: vec![],
                    created: false,
                });
            }
            return match self.store_delete(&r.key(), rev).await {
                Ok(_) => Ok(Written {
                    object: obj,
                    warnings: vec![],
                    created: false,
                }),
                Err(store::Error::Conflict { .. }) => Err(self.conflict(r)),
                Err(store::Error::NotFound(_)) => {
                    Err(ApiError::not_found(&r.resource_name(), &r.name))
                }
                Err(e) => Err(e.into()),
            };
        }
        if strip_rv(&obj) == strip_rv(&old) {
            return Ok(Written {
                object: old,
                warnings: vec![],
                created: false,
            });
        }
        if opts.dry_run {
            return Ok(Written {
                object: obj,
                warnings: vec![],
                created: false,
            });
        }
        match self.store_update(def, &r.key(), &obj, rev).await {
            Ok(new_rev) => {
                meta_mut(&mut obj).insert("resourceVersion".into(), new_rev.to_string().into());
                Ok(Written {
                    object: obj,
                    warnings: vec![],
                    created: false,
                })
            }
            Err(store::Error::Conflict { .. }) => Err(self.conflict(r)),
            Err(store::Error::NotFound(_)) => Err(ApiError::not_found(&r.resource_name(), &r.name)),
            Err(e) => Err(e.into()),
        }
    }

    fn conflict(&self, r: &ObjectRef) -> ApiError {
        ApiError::conflict(&r.resource_name(), &r.name, "the object has been modified; please apply your changes to the latest version and try again")
            .with_details(r.def.group, r.def.plural, &r.name)
    }

    /// Read-modify-write with retries on conflicts (for patches and internal updates). `f` gets the
    /// current object (None when missing) and returns the new one, or an error.
    pub async fn modify<F>(
        &self,
        r: &ObjectRef,
        subresource: Option<&str>,
        opts: &WriteOptions,
        operation: &str,
        mut f: F,
    ) -> ApiResult<Written>
    where
        F: FnMut(Option<&Value>) -> ApiResult<Value>,
    {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let current = self.get_kv(r).await?;
            let result = match current {
                None => {
                    let obj = f(None)?;
                    self.create_as(r.def, r.namespace.as_deref(), obj, opts, operation)
                        .await
                }
                Some((old, rev)) => {
                    let mut obj = f(Some(&old))?;
                    check_type(r.def, &mut obj)?;
                    let mut warnings = Vec::new();
                    let obj = typed(r.def, &obj, &opts.field_validation, &mut warnings)?;
                    if let Some(p) = meta_str(&obj, "resourceVersion").filter(|s| !s.is_empty())
                        && parse_rv(p)? != rev
                    {
                        return Err(self.conflict(r));
                    }
                    self.write_over(r, subresource, old, rev, obj, opts, operation)
                        .await
                        .map(|mut w| {
                            w.warnings.extend(warnings);
                            w
                        })
                }
            };
            match result {
                Err(e)
                    if e.code == StatusCode::CONFLICT && e.reason == "Conflict" && attempts < 8 =>
                {
                    continue;
                }
                other => return other,
            }
        }
    }

    /// Delete an object, honouring finalizers, graceful deletion and the propagation policy.
    /// Returns the object and whether it is gone (false: it is terminating).
    pub async fn delete(&self, r: &ObjectRef, opts: &DeleteOptions) -> ApiResult<(Value, bool)> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let Some((mut obj, rev)) = self.get_kv(r).await? else {
                return Err(
                    ApiError::not_found(&r.resource_name(), &r.name).with_details(
                        r.def.group,
                        r.def.plural,
                        &r.name,
                    ),
                );
            };
            if let Some(uid) = &opts.precondition_uid
                && meta_str(&obj, "uid") != Some(uid.as_str())
            {
                return Err(ApiError::conflict(
                    &r.resource_name(),
                    &r.name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&obj, "uid").unwrap_or_default()
                    ),
                ));
            }
            if let Some(prv) = &opts.precondition_rv
                && parse_rv(prv)? != rev
            {
                return Err(ApiError::conflict(
                    &r.resource_name(),
                    &r.name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {prv}, ResourceVersion in object meta: {rev}"
                    ),
                ));
            }
            self.admission.validate_delete(r.def, &obj).await?;
            let mut fins = finalizers(&obj);
            let was_terminating = meta(&obj)
                .is_some_and(|m| m.get("deletionTimestamp").is_some_and(|d| !d.is_null()));
            match opts.propagation_policy.as_deref() {
                Some("Foreground")
                    if !fins.iter().any(|f| f == "foregroundDeletion") && !was_terminating =>
                {
                    fins.push("foregroundDeletion".into())
                }
                Some("Orphan") if !fins.iter().any(|f| f == "orphan") && !was_terminating => {
                    fins.push("orphan".into())
                }
                None | Some("Background") | Some("Foreground") | Some("Orphan") => {}
                Some(other) => {
                    return Err(ApiError::invalid(
                        "DeleteOptions",
                        "",
                        "",
                        vec![Cause::not_supported(
                            "propagationPolicy",
                            &Value::String(other.into()),
                            &["Foreground", "Background", "Orphan"],
                        )],
                    ));
                }
            }
            let grace = graceful_period(r.def, &obj, opts.grace_period_seconds);
            if r.def.kind == "Namespace" && r.def.group.is_empty() {
                fins_namespace(&mut obj);
            }
            let namespace_pending = r.def.kind == "Namespace" && namespace_has_finalizers(&obj);
            if fins.is_empty() && grace == 0 && !namespace_pending {
                if opts.dry_run {
                    return Ok((obj, true));
                }
                match self.store_delete(&r.key(), rev).await {
                    Ok(_) => return Ok((obj, true)),
                    Err(store::Error::Conflict { .. }) if attempts < 8 => continue,
                    Err(store::Error::NotFound(_)) => {
                        return Err(ApiError::not_found(&r.resource_name(), &r.name));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            // Graceful: mark the object terminating and let its finalizers / kubelet finish.
            let m = meta_mut(&mut obj);
            if fins.is_empty() {
                m.remove("finalizers");
            } else {
                m.insert("finalizers".into(), json!(fins));
            }
            let now = jiff::Timestamp::now();
            let existing_grace = m.get("deletionGracePeriodSeconds").and_then(Value::as_i64);
            let shorten = existing_grace.is_none_or(|g| grace < g);
            if !was_terminating || shorten {
                let at = now
                    .checked_add(jiff::SignedDuration::from_secs(grace))
                    .unwrap_or(now);
                m.insert(
                    "deletionTimestamp".into(),
                    at.round(jiff::Unit::Second)
                        .unwrap_or(at)
                        .strftime("%Y-%m-%dT%H:%M:%SZ")
                        .to_string()
                        .into(),
                );
                m.insert("deletionGracePeriodSeconds".into(), grace.into());
                if r.def.generation {
                    let g = m.get("generation").and_then(Value::as_i64).unwrap_or(0);
                    m.insert("generation".into(), (g + 1).into());
                }
            }
            if opts.dry_run {
                return Ok((obj, false));
            }
            match self.store_update(r.def, &r.key(), &obj, rev).await {
                Ok(new_rev) => {
                    meta_mut(&mut obj).insert("resourceVersion".into(), new_rev.to_string().into());
                    return Ok((obj, false));
                }
                Err(store::Error::Conflict { .. }) if attempts < 8 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Read-modify-write for system subresources (binding, namespace finalize) that upstream
    /// writes without the update strategy: no admission and no update validation, but the same
    /// optimistic concurrency. A terminating namespace with no finalizers left is deleted.
    pub async fn raw_modify<F>(
        &self,
        r: &ObjectRef,
        mut f: F,
        opts: &WriteOptions,
    ) -> ApiResult<Value>
    where
        F: FnMut(&Value) -> ApiResult<Value>,
    {
        for _ in 0..8 {
            let Some((old, rev)) = self.get_kv(r).await? else {
                return Err(
                    ApiError::not_found(&r.resource_name(), &r.name).with_details(
                        r.def.group,
                        r.def.plural,
                        &r.name,
                    ),
                );
            };
            let mut obj = f(&old)?;
            api::apply::update_managed_fields(
                Some(&old),
                &mut obj,
                &opts.field_manager,
                "Update",
                None,
                &r.def.api_version(),
                &now_rfc3339(),
            );
            let terminating = meta(&obj)
                .is_some_and(|m| m.get("deletionTimestamp").is_some_and(|d| !d.is_null()));
            let result = if r.def.kind == "Namespace"
                && terminating
                && !namespace_has_finalizers(&obj)
                && finalizers(&obj).is_empty()
            {
                self.store_delete(&r.key(), rev).await.map(|_| rev)
            } else {
                self.store_update(r.def, &r.key(), &obj, rev).await
            };
            match result {
                Ok(new_rev) => {
                    meta_mut(&mut obj).insert("resourceVersion".into(), new_rev.to_string().into());
                    return Ok(obj);
                }
                Err(store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.conflict(r))
    }

    /// Watch a collection after `after`.
    pub async fn watch(
        &self,
        def: &'static ResourceDef,
        namespace: Option<&str>,
        after: Revision,
    ) -> ApiResult<store::WatchStream> {
        Ok(self.backend.watch(&prefix(def, namespace), after).await?)
    }
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    v
}

fn allow_create_on_update(def: &ResourceDef) -> bool {
    matches!(
        (def.group, def.kind),
        ("coordination.k8s.io", "Lease")
            | ("", "Event")
            | ("events.k8s.io", "Event")
            | ("", "Endpoints")
    )
}

/// Pods bound to a node are deleted gracefully (the node agent finishes the deletion).
fn graceful_period(def: &ResourceDef, obj: &Value, requested: Option<i64>) -> i64 {
    if def.group.is_empty() && def.kind == "Pod" {
        let bound = obj
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        let finished = matches!(
            obj.pointer("/status/phase").and_then(Value::as_str),
            Some("Succeeded" | "Failed")
        );
        if !bound || finished {
            return 0;
        }
        let default = obj
            .pointer("/spec/terminationGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(30);
        let g = requested.unwrap_or(default);
        return g.max(0);
    }
    0
}

fn pending_graceful(def: &ResourceDef, obj: &Value) -> bool {
    def.group.is_empty()
        && def.kind == "Pod"
        && meta(obj)
            .and_then(|m| m.get("deletionGracePeriodSeconds"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

fn namespace_has_finalizers(obj: &Value) -> bool {
    obj.pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn fins_namespace(obj: &mut Value) {
    if let Some(status) = obj.get_mut("status").and_then(Value::as_object_mut) {
        status.insert("phase".into(), "Terminating".into());
    } else {
        obj["status"] = json!({"phase": "Terminating"});
    }
}

/// What upstream strategies do before a create: a fresh status for kinds with a status split.
fn prepare_for_create(def: &ResourceDef, obj: &mut Value) {
    if !def.status_split {
        return;
    }
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match (def.group, def.kind) {
        ("", "Pod") => {
            let qos = qos_class(map.get("spec"));
            map.insert(
                "status".into(),
                json!({"phase": "Pending", "qosClass": qos}),
            );
        }
        ("", "Node") | ("", "Namespace") => {}
        ("", "Service") => {
            map.insert("status".into(), json!({"loadBalancer": {}}));
        }
        _ => {
            map.insert("status".into(), json!({}));
        }
    }
}

/// Upstream's spec/status split on update: the main resource keeps the old status, `/status`
/// keeps the old spec; system metadata never changes through an update.
fn prepare_for_update(def: &ResourceDef, subresource: Option<&str>, old: &Value, obj: &mut Value) {
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    match subresource {
        Some("status") => {
            let status = map.get("status").cloned();
            let mut next = old.clone();
            if let Some(n) = next.as_object_mut() {
                match status {
                    Some(s) => n.insert("status".into(), s),
                    None => n.remove("status"),
                };
                // Metadata changes through /status: labels, annotations and ownerReferences are kept
                // from the old object as upstream does.
            }
            *obj = next;
        }
        _ => {
            if def.status_split {
                match old.get("status") {
                    Some(s) => map.insert("status".into(), s.clone()),
                    None => map.remove("status"),
                };
            }
        }
    }
    let old_meta = meta(old).cloned().unwrap_or_default();
    let m = meta_mut(obj);
    for field in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
        "name",
        "namespace",
        "generateName",
    ] {
        match old_meta.get(field) {
            Some(v) => m.insert(field.into(), v.clone()),
            None => m.remove(field),
        };
    }
    // Finalizers cannot be added to an object being deleted (they may be removed).
    if old_meta
        .get("deletionTimestamp")
        .is_some_and(|d| !d.is_null())
    {
        let old_f: Vec<Value> = old_meta
            .get("finalizers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(new_f) = m.get("finalizers").and_then(Value::as_array).cloned() {
            let kept: Vec<Value> = new_f.into_iter().filter(|f| old_f.contains(f)).collect();
            m.insert("finalizers".into(), Value::Array(kept));
        }
    }
}

/// The pod's QoS class from its containers' requests and limits.
fn qos_class(spec: Option<&Value>) -> &'static str {
    let Some(spec) = spec else {
        return "BestEffort";
    };
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| spec.get(*k).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in &containers {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        if req.is_some_and(|r| !r.is_empty()) || lim.is_some_and(|l| !l.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let l = lim.and_then(|l| l.get(res));
            let r = req.and_then(|r| r.get(res)).or(l);
            if l.is_none() || r != l {
                guaranteed = false;
            }
        }
    }
    if !any {
        "BestEffort"
    } else if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

fn encode_continue(rev: Revision, key: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"v": "meta.k8s.io/v1", "rv": rev, "start": key}).to_string())
}

fn decode_continue(token: &str) -> ApiResult<(Revision, String)> {
    use base64::Engine;
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rev = v.get("rv").and_then(Value::as_i64).ok_or_else(bad)?;
    let start = v.get("start").and_then(Value::as_str).ok_or_else(bad)?;
    if !start.starts_with("/registry/") {
        return Err(bad());
    }
    Ok((rev, start.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let t = encode_continue(42, "/registry/core/pods/default/a");
        assert_eq!(
            decode_continue(&t).expect("valid"),
            (42, "/registry/core/pods/default/a".to_string())
        );
        assert!(decode_continue("!!!").is_err());
        assert!(decode_continue("e30").is_err());
    }

    #[test]
    fn qos_classes() {
        assert_eq!(
            qos_class(Some(&json!({"containers": [{"name": "a"}]}))),
            "BestEffort"
        );
        let g = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(Some(&g)), "Guaranteed");
        let b = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(Some(&b)), "Burstable");
    }
}
