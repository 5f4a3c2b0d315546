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
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
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
    let supplemental_groups = pod_sc
        .and_then(|s| s.supplemental_groups.clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|g| u32::try_from(g).ok())
        .collect();
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    let cpu_millis = limits.get("cpu").and_then(|q| {
        spec::parse_cpu(&q.0).or_else(|| {
            errs.push(field(&format!("cpu limit {:?}", q.0)));
            None
        })
    });
    let memory_bytes = limits.get("memory").and_then(|q| {
        spec::parse_memory(&q.0).or_else(|| {
            errs.push(field(&format!("memory limit {:?}", q.0)));
            None
        })
    });
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
        cpu_millis,
        memory_bytes,
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
            Some(VolumeKind::EmptyDir {
                memory: e.medium.as_deref() == Some("Memory"),
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
    })
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
