//! From a Kubernetes Pod to a [`PodPlan`]: what the sandbox must run (init containers in order,
//! then the regular containers together), with which images, commands, environment, users,
//! limits and volumes. Pure: no IO, tested with plain values. What the sandbox cannot honour is
//! refused here with a message that lists every offending field.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};

use crate::spec::{self, ContainerConfig, Resources};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPlan {
    /// Unique on the host: `<namespace>_<name>_<uid>` shortened to a safe id.
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub init_containers: Vec<ContainerPlan>,
    pub containers: Vec<ContainerPlan>,
    pub volumes: Vec<VolumePlan>,
    pub share_process_namespace: bool,
    pub grace_period_secs: u64,
    pub restart_policy: RestartPolicy,
    /// The pod's provisioned size: the `CapacityProvisioned` annotation when the pod carries
    /// one, else computed with the Fargate rules ([`api::sizing::pod_size`]). A serverless
    /// (gVisor) sandbox is confined to it as a whole. None when the pod cannot be sized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<PodSize>,
    /// The local ephemeral storage the pod is provisioned with, in bytes (Fargate: 20 GiB, more
    /// through `ephemeral-storage` requests, at most 175 GiB).
    #[serde(default = "default_ephemeral_storage")]
    pub ephemeral_storage_bytes: u64,
}

/// A pod's provisioned size, what its sandbox gets as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodSize {
    /// vCPU in thousandths.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// Ephemeral storage a serverless pod gets without asking (Fargate's 20 GiB).
pub const DEFAULT_EPHEMERAL_STORAGE: u64 = 20 << 30;
/// The most ephemeral storage a serverless pod can ask for (Fargate's 175 GiB).
pub const MAX_EPHEMERAL_STORAGE: u64 = 175 << 30;

fn default_ephemeral_storage() -> u64 {
    DEFAULT_EPHEMERAL_STORAGE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    pub command: Option<Vec<String>>,
    pub args: Option<Vec<String>>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub supplemental_groups: Vec<u32>,
    pub tty: bool,
    /// `stdin`: the container's stdin stays open for `kubectl attach -i`.
    #[serde(default)]
    pub stdin: bool,
    /// `stdinOnce`: the container's stdin closes when the first attach session ends.
    #[serde(default)]
    pub stdin_once: bool,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// `resources.limits.ephemeral-storage` in bytes: the most its writable layer and logs
    /// may hold (measured, see [`crate::pod::storage_usage`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage_limit: Option<u64>,
    pub volume_mounts: Vec<VolumeMount>,
    /// Variables whose value is the pod's IP (`status.podIP`), known once the sandbox exists.
    pub pod_ip_env: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
    pub sub_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumePlan {
    pub name: String,
    pub kind: VolumeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VolumeKind {
    EmptyDir {
        memory: bool,
        /// The volume's `sizeLimit` in bytes, when positive: the most it may hold before the pod
        /// is evicted (measured, like the containers' `ephemeral-storage` limits). Absent from
        /// plans persisted before it was planned.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_limit: Option<u64>,
    },
    /// Files the caller supplies (ConfigMap, Secret, projected, downward API): the object they
    /// come from, and the mode of the files.
    Files {
        sources: Vec<String>,
        default_mode: u32,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pod not supported by this sandbox: {}", .0.join(", "))]
pub struct PlanError(pub Vec<String>);

impl ContainerPlan {
    /// The container's configuration (mounts are added by the sandbox, which knows the paths).
    pub fn config(&self) -> ContainerConfig {
        ContainerConfig {
            name: self.name.clone(),
            command: self.command.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            working_dir: self.working_dir.clone(),
            run_as_user: self.run_as_user,
            run_as_group: self.run_as_group,
            supplemental_groups: self.supplemental_groups.clone(),
            tty: self.tty,
            resources: Resources {
                cpu_millis: self.cpu_millis,
                memory_bytes: self.memory_bytes,
            },
            mounts: Vec::new(),
        }
    }
}

/// A host-safe id from namespace, name and uid.
pub fn pod_id(namespace: &str, name: &str, uid: &str) -> String {
    let base: String = format!("{namespace}_{name}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let h = crate::digest::Digest::of(format!("{namespace}/{name}/{uid}").as_bytes());
    format!("{base}_{}", &h.hex()[..8])
}

fn container(
    c: &Container,
    pod: &Pod,
    pod_sc: Option<&k8s_openapi::api::core::v1::PodSecurityContext>,
    errs: &mut Vec<String>,
) -> ContainerPlan {
    let field = |f: &str| format!("container {:?}: {f}", c.name);
    let meta = &pod.metadata;
    let mut env = Vec::new();
    let mut pod_ip_env = Vec::new();
    for e in c.env.iter().flatten() {
        match (&e.value, &e.value_from) {
            (_, None) => env.push((e.name.clone(), e.value.clone().unwrap_or_default())),
            (_, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => {
                    env.push((e.name.clone(), meta.name.clone().unwrap_or_default()))
                }
                Some("metadata.namespace") => env.push((
                    e.name.clone(),
                    meta.namespace.clone().unwrap_or_else(|| "default".into()),
                )),
                Some("metadata.uid") => {
                    env.push((e.name.clone(), meta.uid.clone().unwrap_or_default()))
                }
                Some("spec.nodeName") => env.push((
                    e.name.clone(),
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .unwrap_or_default(),
                )),
                Some("spec.serviceAccountName") => env.push((
                    e.name.clone(),
                    pod.spec
                        .as_ref()
                        .and_then(|s| s.service_account_name.clone())
                        .unwrap_or_default(),
                )),
                // Known only once the sandbox exists; the sandbox fills these in.
                Some("status.podIP" | "status.hostIP") => pod_ip_env.push(e.name.clone()),
                _ => errs.push(field(&format!(
                    "env {:?}: valueFrom must be resolved by the caller",
                    e.name
                ))),
            },
        }
    }
    if c.env_from.as_ref().is_some_and(|v| !v.is_empty()) {
        errs.push(field("envFrom must be resolved by the caller"));
    }
    let sc = c.security_context.as_ref();
    if sc.and_then(|s| s.privileged) == Some(true) {
        errs.push(field("securityContext.privileged"));
    }
    let id = |v: Option<i64>, what: &str, errs: &mut Vec<String>| {
        v.and_then(|v| {
            u32::try_from(v)
                .map_err(|_| errs.push(field(&format!("{what} {v} out of range"))))
                .ok()
        })
    };
    let run_as_user = id(
        sc.and_then(|s| s.run_as_user)
            .or(pod_sc.and_then(|s| s.run_as_user)),
        "runAsUser",
        errs,
    );
    let run_as_group = id(
        sc.and_then(|s| s.run_as_group)
            .or(pod_sc.and_then(|s| s.run_as_group)),
        "runAsGroup",
        errs,
    );
    // Kubelet adds the pod's fsGroup to every container's supplemental groups.
    let supplemental_groups = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .chain(pod_sc.and_then(|s| s.fs_group))
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    // Limits are Kubernetes quantities read as kubelet reads them (`MilliValue` for CPU,
    // `Value` for bytes, rounded up: `512m` of memory is 0.512 bytes, so 1): zero sets no limit.
    let mut limit = |name: &str, parse: fn(&str) -> Result<u64, String>| {
        let q = limits.get(name)?;
        match parse(&q.0) {
            Ok(0) => None,
            Ok(v) => Some(v),
            Err(e) => {
                errs.push(field(&format!("{name} limit {:?}: {e}", q.0)));
                None
            }
        }
    };
    let cpu_millis = limit("cpu", spec::parse_cpu);
    let memory_bytes = limit("memory", spec::parse_memory);
    let ephemeral_storage_limit = limit("ephemeral-storage", spec::parse_memory);
    if c.ports
        .iter()
        .flatten()
        .any(|p| p.host_port.is_some() || p.host_ip.is_some())
    {
        errs.push(field("port contains HostIP or HostPort"));
    }
    ContainerPlan {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        command: c.command.clone(),
        args: c.args.clone(),
        env,
        working_dir: c.working_dir.clone(),
        run_as_user,
        run_as_group,
        supplemental_groups,
        tty: c.tty.unwrap_or(false),
        stdin: c.stdin.unwrap_or(false),
        stdin_once: c.stdin_once.unwrap_or(false),
        cpu_millis,
        memory_bytes,
        ephemeral_storage_limit,
        volume_mounts: c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| VolumeMount {
                volume: m.name.clone(),
                path: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
                sub_path: m.sub_path.clone().filter(|s| !s.is_empty()),
            })
            .collect(),
        pod_ip_env,
    }
}

/// Plans `pod`. Every field the sandbox cannot honour is listed in the error.
pub fn plan(pod: &Pod) -> Result<PodPlan, PlanError> {
    let mut errs = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return Err(PlanError(vec!["spec is missing".into()]));
    };
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        errs.push("HostNetwork".into());
    }
    if spec.host_pid == Some(true) {
        errs.push("HostPID".into());
    }
    if spec.host_ipc == Some(true) {
        errs.push("HostIPC".into());
    }
    let psc = spec.security_context.as_ref();
    let init_containers: Vec<ContainerPlan> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| container(c, pod, psc, &mut errs))
        .collect();
    let containers: Vec<ContainerPlan> = spec
        .containers
        .iter()
        .map(|c| container(c, pod, psc, &mut errs))
        .collect();
    if containers.is_empty() {
        errs.push("no containers".into());
    }
    let mut volumes = Vec::new();
    for v in spec.volumes.iter().flatten() {
        let kind = if let Some(e) = &v.empty_dir {
            let size_limit = e.size_limit.as_ref().and_then(|q| {
                size_limit(&q.0).unwrap_or_else(|| {
                    errs.push(format!("volume {:?}: emptyDir sizeLimit {:?}", v.name, q.0));
                    None
                })
            });
            Some(VolumeKind::EmptyDir {
                memory: e.medium.as_deref() == Some("Memory"),
                size_limit,
            })
        } else if let Some(cm) = &v.config_map {
            Some(VolumeKind::Files {
                sources: vec![format!("configmap/{}", cm.name)],
                default_mode: mode(cm.default_mode),
            })
        } else if let Some(s) = &v.secret {
            Some(VolumeKind::Files {
                sources: vec![format!(
                    "secret/{}",
                    s.secret_name.clone().unwrap_or_default()
                )],
                default_mode: mode(s.default_mode),
            })
        } else if let Some(p) = &v.projected {
            let sources = p
                .sources
                .iter()
                .flatten()
                .map(|s| {
                    if let Some(cm) = &s.config_map {
                        format!("configmap/{}", cm.name)
                    } else if let Some(sec) = &s.secret {
                        format!("secret/{}", sec.name)
                    } else if s.service_account_token.is_some() {
                        "serviceaccounttoken".into()
                    } else {
                        "downwardapi".into()
                    }
                })
                .collect();
            Some(VolumeKind::Files {
                sources,
                default_mode: mode(p.default_mode),
            })
        } else if v.downward_api.is_some() {
            Some(VolumeKind::Files {
                sources: vec!["downwardapi".into()],
                default_mode: 0o644,
            })
        } else {
            errs.push(format!("volume {:?}: only emptyDir, configMap, secret, projected and downwardAPI are supported", v.name));
            None
        };
        if let Some(kind) = kind {
            volumes.push(VolumePlan {
                name: v.name.clone(),
                kind,
            });
        }
    }
    let known: BTreeMap<&str, ()> = volumes.iter().map(|v| (v.name.as_str(), ())).collect();
    for c in init_containers.iter().chain(&containers) {
        for m in &c.volume_mounts {
            if !known.contains_key(m.volume.as_str()) {
                errs.push(format!(
                    "container {:?}: volumeMount of unknown volume {:?}",
                    c.name, m.volume
                ));
            }
        }
    }
    if !errs.is_empty() {
        return Err(PlanError(errs));
    }
    let restart_policy = match spec.restart_policy.as_deref() {
        Some("Never") => RestartPolicy::Never,
        Some("OnFailure") => RestartPolicy::OnFailure,
        _ => RestartPolicy::Always,
    };
    Ok(PodPlan {
        id: pod_id(&namespace, &name, &uid),
        hostname: spec.hostname.clone().unwrap_or_else(|| name.clone()),
        name,
        namespace,
        init_containers,
        containers,
        volumes,
        share_process_namespace: spec.share_process_namespace.unwrap_or(false),
        grace_period_secs: spec
            .termination_grace_period_seconds
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(30),
        restart_policy,
        size: pod_size(pod),
        ephemeral_storage_bytes: ephemeral_storage(spec),
    })
}

/// Parses a `CapacityProvisioned` annotation (`0.25vCPU 0.5GB`; GB of 1024 MiB, as Fargate
/// bills). Pure.
pub fn parse_capacity(s: &str) -> Option<PodSize> {
    let mut parts = s.split_whitespace();
    let cpu: f64 = parts.next()?.strip_suffix("vCPU")?.parse().ok()?;
    let mem: f64 = parts.next()?.strip_suffix("GB")?.parse().ok()?;
    if parts.next().is_some() || !(cpu > 0.0 && cpu.is_finite() && mem > 0.0 && mem.is_finite()) {
        return None;
    }
    Some(PodSize {
        cpu_millis: (cpu * 1000.0).round() as u64,
        memory_bytes: (mem * 1024.0).round() as u64 * (1 << 20),
    })
}

/// The pod's size: its `CapacityProvisioned` annotation, else the Fargate rules. A pod larger
/// than the largest size gets the largest (admission refuses such pods on serverless nodes).
fn pod_size(pod: &Pod) -> Option<PodSize> {
    if let Some(size) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(api::profile::CAPACITY_ANNOTATION))
        .and_then(|s| parse_capacity(s))
    {
        return Some(size);
    }
    let spec = serde_json::to_value(pod.spec.as_ref()?).ok()?;
    let size = match api::sizing::pod_size(&spec) {
        Ok(s) => s,
        Err(api::sizing::SizingError::TooLarge { .. }) => api::sizing::largest_size(),
        Err(_) => return None,
    };
    Some(PodSize {
        cpu_millis: u64::from(size.millicpu),
        memory_bytes: size.memory_mib << 20,
    })
}

/// The pod's provisioned ephemeral storage: what it asks for (the larger of the largest init
/// container's and the sum of the regular containers' `ephemeral-storage` requests, a limit
/// counting where there is no request), rounded up to whole GiB, at least 20 GiB and at most
/// 175 GiB. Pure.
fn ephemeral_storage(spec: &k8s_openapi::api::core::v1::PodSpec) -> u64 {
    let ask = |c: &Container| {
        let r = c.resources.as_ref();
        let pick = |m: Option<
            &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >| {
            m.and_then(|m| m.get("ephemeral-storage"))
                .and_then(|q| spec::parse_memory(&q.0).ok())
        };
        pick(r.and_then(|r| r.requests.as_ref()))
            .or_else(|| pick(r.and_then(|r| r.limits.as_ref())))
            .unwrap_or(0)
    };
    let regular: u64 = spec.containers.iter().map(ask).fold(0, u64::saturating_add);
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(ask)
        .max()
        .unwrap_or(0);
    let needed = regular.max(init).div_ceil(1 << 30).saturating_mul(1 << 30);
    needed.clamp(DEFAULT_EPHEMERAL_STORAGE, MAX_EPHEMERAL_STORAGE)
}

/// A byte count as a Kubernetes quantity in canonical form (`10Mi`, `1G`, `1500`), as kubelet
/// prints limits in its eviction messages. Pure.
pub fn format_bytes(bytes: u64) -> String {
    if bytes == 0 {
        return "0".into();
    }
    for (shift, suffix) in [
        (60, "Ei"),
        (50, "Pi"),
        (40, "Ti"),
        (30, "Gi"),
        (20, "Mi"),
        (10, "Ki"),
    ] {
        if bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    for (div, suffix) in [
        (1_000_000_000_000_000_000u64, "E"),
        (1_000_000_000_000_000, "P"),
        (1_000_000_000_000, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ] {
        if bytes.is_multiple_of(div) {
            return format!("{}{suffix}", bytes / div);
        }
    }
    bytes.to_string()
}

/// Data of the ConfigMaps and Secrets a pod refers to, fetched by the caller:
/// `configmap/NAME` or `secret/NAME` -> key -> bytes (ConfigMap `data` and `binaryData` together).
pub type Objects = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

fn all_containers(spec: &k8s_openapi::api::core::v1::PodSpec) -> impl Iterator<Item = &Container> {
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
}

/// The ConfigMaps and Secrets the pod refers to (env, envFrom, volumes): key as in [`Objects`]
/// -> whether every reference to it is optional.
pub fn references(pod: &Pod) -> BTreeMap<String, bool> {
    let mut out: BTreeMap<String, bool> = BTreeMap::new();
    let mut add = |key: String, optional: Option<bool>| {
        let o = optional.unwrap_or(false);
        out.entry(key).and_modify(|v| *v = *v && o).or_insert(o);
    };
    let Some(spec) = pod.spec.as_ref() else {
        return BTreeMap::new();
    };
    for c in all_containers(spec) {
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(r) = &from.config_map_key_ref {
                add(format!("configmap/{}", r.name), r.optional);
            }
            if let Some(r) = &from.secret_key_ref {
                add(format!("secret/{}", r.name), r.optional);
            }
        }
        for f in c.env_from.iter().flatten() {
            if let Some(r) = &f.config_map_ref {
                add(format!("configmap/{}", r.name), r.optional);
            }
            if let Some(r) = &f.secret_ref {
                add(format!("secret/{}", r.name), r.optional);
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(cm) = &v.config_map {
            add(format!("configmap/{}", cm.name), cm.optional);
        }
        if let Some(sec) = &v.secret {
            add(
                format!("secret/{}", sec.secret_name.clone().unwrap_or_default()),
                sec.optional,
            );
        }
        for src in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(cm) = &src.config_map {
                add(format!("configmap/{}", cm.name), cm.optional);
            }
            if let Some(sec) = &src.secret {
                add(format!("secret/{}", sec.name), sec.optional);
            }
        }
    }
    out
}

fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

/// The pod with `env[].valueFrom.configMapKeyRef/secretKeyRef` and `envFrom` replaced by plain
/// values from `objects` (envFrom first, `env` overriding, as the kubelet does). A missing
/// object or key that is not optional is an error (kubelet's CreateContainerConfigError).
pub fn resolve_env(pod: &Pod, objects: &Objects) -> Result<Pod, PlanError> {
    use k8s_openapi::api::core::v1::EnvVar;
    let mut pod = pod.clone();
    let mut errs = Vec::new();
    let Some(spec) = pod.spec.as_mut() else {
        return Ok(pod);
    };
    let lookup = |kind: &str, name: &str, key: &str| -> Option<String> {
        objects
            .get(&format!("{kind}/{name}"))
            .and_then(|o| o.get(key))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    for c in spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut())
    {
        let mut env: Vec<EnvVar> = Vec::new();
        let set = |env: &mut Vec<EnvVar>, v: EnvVar| match env.iter_mut().find(|e| e.name == v.name)
        {
            Some(e) => *e = v,
            None => env.push(v),
        };
        for f in c.env_from.take().into_iter().flatten() {
            let prefix = f.prefix.clone().unwrap_or_default();
            let (kind, name, optional) = match (&f.config_map_ref, &f.secret_ref) {
                (Some(r), _) => ("configmap", r.name.clone(), r.optional.unwrap_or(false)),
                (None, Some(r)) => ("secret", r.name.clone(), r.optional.unwrap_or(false)),
                (None, None) => continue,
            };
            match objects.get(&format!("{kind}/{name}")) {
                Some(data) => {
                    for (k, v) in data {
                        let key = format!("{prefix}{k}");
                        if is_env_name(&key) {
                            set(
                                &mut env,
                                EnvVar {
                                    name: key,
                                    value: Some(String::from_utf8_lossy(v).into_owned()),
                                    value_from: None,
                                },
                            );
                        }
                    }
                }
                None if optional => {}
                None => errs.push(format!(
                    "container {:?}: envFrom {kind} {name:?} not found",
                    c.name
                )),
            }
        }
        for e in c.env.take().into_iter().flatten() {
            let from = e.value_from.as_ref();
            let resolved = if let Some(r) = from.and_then(|f| f.config_map_key_ref.as_ref()) {
                Some((
                    lookup("configmap", &r.name, &r.key),
                    r.optional,
                    "configmap",
                    &r.name,
                    &r.key,
                ))
            } else {
                from.and_then(|f| f.secret_key_ref.as_ref()).map(|r| {
                    (
                        lookup("secret", &r.name, &r.key),
                        r.optional,
                        "secret",
                        &r.name,
                        &r.key,
                    )
                })
            };
            match resolved {
                None => set(&mut env, e.clone()),
                Some((Some(value), ..)) => set(
                    &mut env,
                    EnvVar {
                        name: e.name.clone(),
                        value: Some(value),
                        value_from: None,
                    },
                ),
                Some((None, Some(true), ..)) => {}
                Some((None, _, kind, name, key)) => errs.push(format!(
                    "container {:?}: env {:?}: key {key:?} of {kind} {name:?} not found",
                    c.name, e.name
                )),
            }
        }
        c.env = (!env.is_empty()).then_some(env);
    }
    if errs.is_empty() {
        Ok(pod)
    } else {
        Err(PlanError(errs))
    }
}

/// The pod without its ConfigMap/Secret environment references (`env[].valueFrom`
/// configMapKeyRef/secretKeyRef and `envFrom`): what can still be planned when they cannot be
/// resolved, to report the pod's containers while it waits for them.
pub fn strip_env_references(pod: &Pod) -> Pod {
    let mut pod = pod.clone();
    if let Some(spec) = pod.spec.as_mut() {
        for c in spec
            .init_containers
            .iter_mut()
            .flatten()
            .chain(spec.containers.iter_mut())
        {
            c.env_from = None;
            if let Some(env) = c.env.as_mut() {
                env.retain(|e| {
                    e.value_from.as_ref().is_none_or(|f| {
                        f.config_map_key_ref.is_none() && f.secret_key_ref.is_none()
                    })
                });
            }
        }
    }
    pod
}

fn downward_field(pod: &Pod, path: &str) -> Option<Vec<u8>> {
    let m = &pod.metadata;
    let map = |m: &Option<BTreeMap<String, String>>| {
        m.iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    Some(
        match path {
            "metadata.name" => m.name.clone().unwrap_or_default(),
            "metadata.namespace" => m.namespace.clone().unwrap_or_default(),
            "metadata.uid" => m.uid.clone().unwrap_or_default(),
            "metadata.labels" => map(&m.labels),
            "metadata.annotations" => map(&m.annotations),
            _ => return None,
        }
        .into_bytes(),
    )
}

/// The files of the pod's ConfigMap, Secret, projected and downwardAPI volumes, from `objects`
/// (`items` select and rename keys). Missing objects that are optional give no files; others
/// are an error.
pub fn volume_files(
    pod: &Pod,
    objects: &Objects,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, PlanError> {
    use k8s_openapi::api::core::v1::KeyToPath;
    let mut out = BTreeMap::new();
    let mut errs = Vec::new();
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(out);
    };
    let mut take = |vol: &str,
                    files: &mut BTreeMap<String, Vec<u8>>,
                    key: String,
                    items: &Option<Vec<KeyToPath>>,
                    optional: Option<bool>| {
        let Some(data) = objects.get(&key) else {
            if optional != Some(true) {
                errs.push(format!("volume {vol:?}: {key} not found"));
            }
            return;
        };
        match items {
            Some(items) if !items.is_empty() => {
                for it in items {
                    match data.get(&it.key) {
                        Some(v) => {
                            files.insert(it.path.clone(), v.clone());
                        }
                        None if optional == Some(true) => {}
                        None => errs.push(format!(
                            "volume {vol:?}: key {:?} of {key} not found",
                            it.key
                        )),
                    }
                }
            }
            _ => {
                for (k, v) in data {
                    files.insert(k.clone(), v.clone());
                }
            }
        }
    };
    for v in spec.volumes.iter().flatten() {
        let mut files = BTreeMap::new();
        if let Some(cm) = &v.config_map {
            take(
                &v.name,
                &mut files,
                format!("configmap/{}", cm.name),
                &cm.items,
                cm.optional,
            );
        } else if let Some(sec) = &v.secret {
            let name = sec.secret_name.clone().unwrap_or_default();
            take(
                &v.name,
                &mut files,
                format!("secret/{name}"),
                &sec.items,
                sec.optional,
            );
        } else if let Some(p) = &v.projected {
            for src in p.sources.iter().flatten() {
                if let Some(cm) = &src.config_map {
                    take(
                        &v.name,
                        &mut files,
                        format!("configmap/{}", cm.name),
                        &cm.items,
                        cm.optional,
                    );
                }
                if let Some(sec) = &src.secret {
                    take(
                        &v.name,
                        &mut files,
                        format!("secret/{}", sec.name),
                        &sec.items,
                        sec.optional,
                    );
                }
                for it in src
                    .downward_api
                    .iter()
                    .flat_map(|d| d.items.iter().flatten())
                {
                    if let Some(b) = it
                        .field_ref
                        .as_ref()
                        .and_then(|f| downward_field(pod, &f.field_path))
                    {
                        files.insert(it.path.clone(), b);
                    }
                }
            }
        } else if let Some(d) = &v.downward_api {
            for it in d.items.iter().flatten() {
                if let Some(b) = it
                    .field_ref
                    .as_ref()
                    .and_then(|f| downward_field(pod, &f.field_path))
                {
                    files.insert(it.path.clone(), b);
                }
            }
        } else {
            continue;
        }
        out.insert(v.name.clone(), files);
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(PlanError(errs))
    }
}

/// An emptyDir `sizeLimit` in bytes, as kubelet reads it (a Kubernetes quantity, rounded up):
/// Some(None) when it sets no limit (zero or negative), None when it does not parse. A limit
/// larger than any disk is kept as `u64::MAX`. Pure.
fn size_limit(q: &str) -> Option<Option<u64>> {
    let q = api::sizing::parse_quantity(q).ok()?;
    if q.negative || q.mantissa == 0 {
        return Some(None);
    }
    let bytes = q
        .value()
        .map_or(u64::MAX, |b| u64::try_from(b).unwrap_or(u64::MAX));
    Some(Some(bytes))
}

fn mode(m: Option<i32>) -> u32 {
    m.and_then(|m| u32::try_from(m).ok()).unwrap_or(0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn plans_a_pod() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {
                "restartPolicy": "Never",
                "securityContext": {"runAsUser": 1000, "supplementalGroups": [5]},
                "initContainers": [{"name": "init", "image": "busybox", "command": ["sh", "-c", "true"]}],
                "containers": [{
                    "name": "app", "image": "reg/app:1", "args": ["serve"],
                    "env": [{"name": "A", "value": "1"}, {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "securityContext": {"runAsGroup": 7},
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                    "volumeMounts": [{"name": "scratch", "mountPath": "/s"}, {"name": "cfg", "mountPath": "/etc/app", "readOnly": true}]
                }],
                "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "app-config"}}]
            }
        }));
        let plan = plan(&p).unwrap();
        assert_eq!(plan.hostname, "web");
        assert_eq!(plan.restart_policy, RestartPolicy::Never);
        assert_eq!(plan.init_containers.len(), 1);
        let app = &plan.containers[0];
        assert_eq!(
            app.env,
            [
                ("A".to_string(), "1".to_string()),
                ("POD".to_string(), "web".to_string())
            ]
        );
        assert_eq!((app.run_as_user, app.run_as_group), (Some(1000), Some(7)));
        assert_eq!(app.supplemental_groups, [5]);
        assert_eq!(
            (app.cpu_millis, app.memory_bytes),
            (Some(500), Some(64 << 20))
        );
        assert_eq!(
            plan.volumes[1].kind,
            VolumeKind::Files {
                sources: vec!["configmap/app-config".into()],
                default_mode: 0o644
            }
        );
        assert_eq!(app.config().resources.memory_bytes, Some(64 << 20));
        assert!(plan.id.starts_with("shop_web_"));
    }

    #[test]
    fn resolves_env_and_volume_files() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {
                "containers": [{
                    "name": "app", "image": "x",
                    "envFrom": [{"configMapRef": {"name": "cfg"}, "prefix": "CFG_"}, {"secretRef": {"name": "gone", "optional": true}}],
                    "env": [
                        {"name": "CFG_A", "value": "override"},
                        {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}}},
                        {"name": "OPT", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "nope", "optional": true}}}
                    ]
                }],
                "volumes": [
                    {"name": "c", "configMap": {"name": "cfg", "items": [{"key": "b", "path": "sub/b.txt"}]}},
                    {"name": "s", "secret": {"secretName": "sec"}},
                    {"name": "d", "downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}
                ]
            }
        }));
        let refs = references(&p);
        assert_eq!(refs.get("configmap/cfg"), Some(&false));
        assert_eq!(refs.get("secret/gone"), Some(&true));
        assert_eq!(refs.get("secret/sec"), Some(&false));
        let objects: Objects = [
            (
                "configmap/cfg".to_string(),
                [
                    ("A".to_string(), b"1".to_vec()),
                    ("b".to_string(), b"2".to_vec()),
                ]
                .into(),
            ),
            (
                "secret/sec".to_string(),
                [("password".to_string(), b"hunter2".to_vec())].into(),
            ),
        ]
        .into();
        let resolved = resolve_env(&p, &objects).unwrap();
        let planned = plan(&resolved).unwrap();
        assert_eq!(
            planned.containers[0].env,
            [
                ("CFG_A".to_string(), "override".to_string()),
                ("CFG_b".to_string(), "2".to_string()),
                ("PASS".to_string(), "hunter2".to_string())
            ]
        );
        let files = volume_files(&p, &objects).unwrap();
        assert_eq!(files["c"].keys().collect::<Vec<_>>(), ["sub/b.txt"]);
        assert_eq!(files["s"]["password"], b"hunter2");
        assert_eq!(files["d"]["name"], b"web");
        assert!(plan(&strip_env_references(&p)).is_ok());
        let err = resolve_env(&p, &Objects::new()).unwrap_err().to_string();
        assert!(
            err.contains("envFrom configmap \"cfg\" not found") && err.contains("PASS"),
            "{err}"
        );
        assert!(volume_files(&p, &Objects::new()).is_err());
    }

    #[test]
    fn sizes_the_pod_and_its_storage() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "big"},
            "spec": {"containers": [
                {"name": "a", "image": "x", "resources": {"requests": {"cpu": "1", "memory": "8Gi", "ephemeral-storage": "30Gi"},
                                                         "limits": {"ephemeral-storage": "40Gi"}}},
                {"name": "b", "image": "x", "resources": {"limits": {"ephemeral-storage": "10Mi"}}}
            ]}
        }));
        let planned = plan(&p).unwrap();
        // 1 vCPU + 8 GB + 256 MiB rounds to 2 vCPU / 9 GB (the Fargate example).
        assert_eq!(
            planned.size,
            Some(PodSize {
                cpu_millis: 2000,
                memory_bytes: 9 << 30
            })
        );
        // 30 Gi requested + 10 Mi (limit only) rounds up to 31 GiB.
        assert_eq!(planned.ephemeral_storage_bytes, 31 << 30);
        assert_eq!(
            planned.containers[0].ephemeral_storage_limit,
            Some(40 << 30)
        );
        assert_eq!(
            planned.containers[1].ephemeral_storage_limit,
            Some(10 << 20)
        );

        let small = pod(serde_json::json!({
            "metadata": {"name": "s", "annotations": {"CapacityProvisioned": "0.5vCPU 1GB"}},
            "spec": {"containers": [{"name": "a", "image": "x"}]}
        }));
        let planned = plan(&small).unwrap();
        assert_eq!(
            planned.size,
            Some(PodSize {
                cpu_millis: 500,
                memory_bytes: 1 << 30
            })
        );
        assert_eq!(planned.ephemeral_storage_bytes, DEFAULT_EPHEMERAL_STORAGE);
        let unannotated = pod(serde_json::json!({
            "metadata": {"name": "s"},
            "spec": {"containers": [{"name": "a", "image": "x"}]}
        }));
        assert_eq!(
            plan(&unannotated).unwrap().size,
            Some(PodSize {
                cpu_millis: 250,
                memory_bytes: 512 << 20
            })
        );
        assert_eq!(
            parse_capacity("0.25vCPU 0.5GB"),
            Some(PodSize {
                cpu_millis: 250,
                memory_bytes: 512 << 20
            })
        );
        assert_eq!(parse_capacity("0.25 0.5GB"), None);
        assert_eq!(parse_capacity("0vCPU 1GB"), None);
        // A record written before sizes were planned still reads.
        let mut old = serde_json::to_value(&planned).unwrap();
        old.as_object_mut()
            .unwrap()
            .remove("ephemeral_storage_bytes");
        old.as_object_mut().unwrap().remove("size");
        let back: PodPlan = serde_json::from_value(old).unwrap();
        assert_eq!(back.size, None);
        assert_eq!(back.ephemeral_storage_bytes, DEFAULT_EPHEMERAL_STORAGE);

        let bad = pod(serde_json::json!({
            "metadata": {"name": "s"},
            "spec": {"containers": [{"name": "a", "image": "x", "resources": {"limits": {"ephemeral-storage": "lots"}}}]}
        }));
        assert!(
            plan(&bad)
                .unwrap_err()
                .to_string()
                .contains("ephemeral-storage limit")
        );
    }

    /// An emptyDir's positive `sizeLimit` is planned in bytes (zero or negative: no limit); one
    /// that does not parse is refused; a plan persisted before the field still loads.
    #[test]
    fn plans_empty_dir_size_limits() {
        let p = plan(&pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "c", "image": "x"}],
                "volumes": [
                    {"name": "free", "emptyDir": {}},
                    {"name": "data", "emptyDir": {"sizeLimit": "1Mi"}},
                    {"name": "cache", "emptyDir": {"sizeLimit": "2M"}},
                    {"name": "frac", "emptyDir": {"sizeLimit": "1.5Ki"}},
                    {"name": "zero", "emptyDir": {"sizeLimit": "0"}},
                    {"name": "neg", "emptyDir": {"sizeLimit": "-1Mi"}},
                    {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
                ]
            }
        })))
        .unwrap();
        let kinds: Vec<(&str, &VolumeKind)> = p
            .volumes
            .iter()
            .map(|v| (v.name.as_str(), &v.kind))
            .collect();
        let empty = |memory, size_limit| VolumeKind::EmptyDir { memory, size_limit };
        assert_eq!(
            kinds,
            [
                ("free", &empty(false, None)),
                ("data", &empty(false, Some(1 << 20))),
                ("cache", &empty(false, Some(2_000_000))),
                ("frac", &empty(false, Some(1536))),
                ("zero", &empty(false, None)),
                ("neg", &empty(false, None)),
                ("ram", &empty(true, Some(64 << 20))),
            ]
        );
        // Persisted and loaded again; a plan written without the field loads with no limit.
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(serde_json::from_value::<PodPlan>(json.clone()).unwrap(), p);
        assert!(
            json["volumes"][0]["kind"]["EmptyDir"]
                .get("size_limit")
                .is_none()
        );
        let old: VolumeKind =
            serde_json::from_value(serde_json::json!({"EmptyDir": {"memory": true}})).unwrap();
        assert_eq!(old, empty(true, None));
        // A sizeLimit that is not a quantity is refused, named with its volume.
        let err = plan(&pod(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "c", "image": "x"}],
                "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "lots"}}]
            }
        })))
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("volume \"data\": emptyDir sizeLimit \"lots\""),
            "{err}"
        );
    }

    /// Limits are read as Kubernetes reads quantities, not as docker reads sizes: `512m` of
    /// memory is 0.512 bytes (rounded up to 1), `1k` is 1000, `1Ki` 1024; zero sets no limit; a
    /// quantity that does not parse or is negative is refused, naming the container and why.
    #[test]
    fn fs_group_is_a_supplemental_group() {
        let p = plan(&pod(serde_json::json!({
            "metadata": {"name": "g"},
            "spec": {"securityContext": {"supplementalGroups": [5], "fsGroup": 2000},
                "containers": [{"name": "c", "image": "x"}]}
        })))
        .unwrap();
        assert_eq!(p.containers[0].supplemental_groups, vec![5, 2000]);
    }

    #[test]
    fn reads_limits_as_kubernetes_quantities() {
        let limits = |cpu: &str, memory: &str, storage: &str| {
            plan(&pod(serde_json::json!({
                "metadata": {"name": "q"},
                "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits":
                    {"cpu": cpu, "memory": memory, "ephemeral-storage": storage}}}]}
            })))
            .map(|p| {
                let c = &p.containers[0];
                (c.cpu_millis, c.memory_bytes, c.ephemeral_storage_limit)
            })
        };
        assert_eq!(
            limits("250m", "512m", "1k"),
            Ok((Some(250), Some(1), Some(1000)))
        );
        assert_eq!(
            limits("0.5", "1Ki", "1.5Ki"),
            Ok((Some(500), Some(1024), Some(1536)))
        );
        assert_eq!(
            limits("1e-4", "64Mi", "1G"),
            Ok((Some(1), Some(64 << 20), Some(1_000_000_000)))
        );
        assert_eq!(limits("0", "0", "0"), Ok((None, None, None)));
        let err = limits("1", "64mb", "1Gi").unwrap_err().to_string();
        assert!(
            err.contains(
                "container \"c\": memory limit \"64mb\": unable to parse quantity's suffix"
            ),
            "{err}"
        );
        let err = limits("-1", "1Gi", "1Gi").unwrap_err().to_string();
        assert!(
            err.contains("cpu limit \"-1\": must not be negative"),
            "{err}"
        );
    }

    #[test]
    fn formats_quantities_as_kubernetes() {
        assert_eq!(format_bytes(10 << 20), "10Mi");
        assert_eq!(format_bytes(20 << 30), "20Gi");
        assert_eq!(format_bytes(1_000_000_000), "1G");
        assert_eq!(format_bytes(1500), "1500");
        assert_eq!(format_bytes(0), "0");
    }

    #[test]
    fn lists_every_unsupported_field() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "bad"},
            "spec": {
                "hostNetwork": true,
                "containers": [{
                    "name": "c", "image": "x",
                    "securityContext": {"privileged": true},
                    "ports": [{"containerPort": 80, "hostPort": 80}],
                    "volumeMounts": [{"name": "nope", "mountPath": "/n"}]
                }],
                "volumes": [{"name": "h", "hostPath": {"path": "/"}}]
            }
        }));
        let err = plan(&p).unwrap_err();
        let msg = err.to_string();
        for want in [
            "HostNetwork",
            "privileged",
            "HostPort",
            "\"h\"",
            "unknown volume \"nope\"",
        ] {
            assert!(msg.contains(want), "{want} missing in {msg}");
        }
    }
}
