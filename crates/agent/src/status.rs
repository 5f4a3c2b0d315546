//! The pod status the agent writes for a [`PodState`], as the kubelet writes it: phase,
//! conditions (PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled),
//! container and init container statuses, host and pod IPs, startTime. Pure: a function of the
//! pod, its state, what the runtime reported and the time.
//!
//! Two sources for the container statuses: a real runtime's own ([`RuntimeStatus`]: each
//! container's state, restarts, readiness), used as they are when present; else they are
//! derived from the pod-level state (the fake runtime).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::lifecycle::{Exit, PodState};
use crate::runtime::{RuntimeStatus, Started};

/// Kubernetes' RFC 3339 time with seconds.
pub fn time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Kubernetes' MicroTime (RFC 3339 with microseconds), as in a Lease's `renewTime`.
pub fn micro_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// What the status depends on besides the state.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub host_ip: &'a str,
    pub pod_ip: Option<&'a str>,
    pub started: Option<&'a Started>,
    /// What the runtime reports of the containers (None: derive them from the state).
    pub runtime: Option<&'a RuntimeStatus>,
    pub now: Timestamp,
}

fn terminated(exit: &Exit, container_id: &str) -> Value {
    json!({"terminated": {
        "exitCode": exit.code,
        "reason": if exit.code == 0 { "Completed" } else { "Error" },
        "startedAt": time(exit.started_at),
        "finishedAt": time(exit.finished_at),
        "containerID": container_id,
    }})
}

/// The previous condition of this type, to keep its transition time when unchanged.
fn condition(pod: &Pod, type_: &str, status: bool, reason: Option<&str>, now: Timestamp) -> Value {
    let status = if status { "True" } else { "False" };
    let old = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    let transition = match old {
        Some(c) if c.status == status => c
            .last_transition_time
            .as_ref()
            .map_or_else(|| time(now), |t| time(t.0)),
        _ => time(now),
    };
    let mut c = json!({"type": type_, "status": status, "lastProbeTime": null, "lastTransitionTime": transition});
    if let Some(r) = reason {
        c["reason"] = r.into();
    }
    c
}

/// The status (a JSON merge patch body's `status`) for this state; None when nothing is to be
/// written (states the kubelet does not report).
pub fn pod_status(pod: &Pod, state: &PodState, cx: &Context<'_>) -> Option<Value> {
    if let Some(rs) = cx.runtime {
        return from_runtime(pod, state, rs, cx);
    }
    let spec = pod.spec.as_ref()?;
    let (phase, running, exit, restarts, last_exit) = match state {
        PodState::Running {
            started_at,
            restarts,
            last_exit,
        } => ("Running", Some(*started_at), None, *restarts, *last_exit),
        PodState::Completed { exit, restarts } => (
            if exit.code == 0 {
                "Succeeded"
            } else {
                "Failed"
            },
            None,
            Some(*exit),
            *restarts,
            None,
        ),
        PodState::Deleting {
            exit: Some(exit),
            restarts,
        } => (
            if exit.code == 0 {
                "Succeeded"
            } else {
                "Failed"
            },
            None,
            Some(*exit),
            *restarts,
            None,
        ),
        _ => return None,
    };
    let now = cx.now;
    let terminal = running.is_none();
    let start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| time(t.0))
        .or_else(|| running.or(exit.map(|e| e.started_at)).map(time))
        .unwrap_or_else(|| time(now));
    let id_of = |name: &str| -> (String, String) {
        cx.started
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .map(|c| (c.container_id.clone(), c.image_id.clone()))
            .unwrap_or_default()
    };
    let containers: Vec<Value> = spec
        .containers
        .iter()
        .map(|c| {
            let (cid, image_id) = id_of(&c.name);
            let state = match (running, exit) {
                (Some(at), _) => json!({"running": {"startedAt": time(at)}}),
                (None, Some(e)) => terminated(&e, &cid),
                (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            let last_state = last_exit.map_or_else(|| json!({}), |e| terminated(&e, &cid));
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": image_id,
                "containerID": cid,
                "ready": running.is_some(),
                "started": running.is_some(),
                "restartCount": restarts,
                "state": state,
                "lastState": last_state,
            })
        })
        .collect();
    let init_at = time(running.or(exit.map(|e| e.started_at)).unwrap_or(now));
    let init: Vec<Value> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| {
            let (cid, image_id) = id_of(&c.name);
            let sidecar = c.restart_policy.as_deref() == Some("Always") && !terminal;
            let state = if sidecar {
                json!({"running": {"startedAt": init_at}})
            } else {
                json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": init_at,
                    "finishedAt": init_at, "containerID": cid}})
            };
            json!({
                "name": c.name,
                "image": c.image.clone().unwrap_or_default(),
                "imageID": image_id,
                "containerID": cid,
                "ready": sidecar || !terminal,
                "started": sidecar,
                "restartCount": 0,
                "state": state,
                "lastState": {},
            })
        })
        .collect();
    let completed = terminal.then_some("PodCompleted");
    let conditions = vec![
        condition(pod, "PodReadyToStartContainers", !terminal, None, now),
        condition(pod, "Initialized", true, completed, now),
        condition(pod, "Ready", !terminal, completed, now),
        condition(pod, "ContainersReady", !terminal, completed, now),
        condition(pod, "PodScheduled", true, None, now),
    ];
    Some(assemble(
        pod,
        phase,
        conditions,
        &start_time,
        Value::Array(containers),
        Value::Array(init),
        cx,
    ))
}

/// The status from a real runtime's container statuses; the phase still comes from the state
/// (Starting is Pending: images being pulled, containers being created).
fn from_runtime(
    pod: &Pod,
    state: &PodState,
    rs: &RuntimeStatus,
    cx: &Context<'_>,
) -> Option<Value> {
    let (phase, started_at) = match state {
        PodState::Starting { .. } => ("Pending", None),
        PodState::Running { started_at, .. } => ("Running", Some(*started_at)),
        PodState::Completed { exit, .. }
        | PodState::Deleting {
            exit: Some(exit), ..
        } => (
            if exit.code == 0 {
                "Succeeded"
            } else {
                "Failed"
            },
            Some(exit.started_at),
        ),
        _ => return None,
    };
    let now = cx.now;
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let start_time = pod
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| time(t.0))
        .or_else(|| started_at.map(time))
        .unwrap_or_else(|| time(now));
    let completed = terminal.then_some("PodCompleted");
    let ready = rs.ready && !terminal;
    let not_ready = if terminal {
        completed
    } else {
        (!ready).then_some("ContainersNotReady")
    };
    let initialized_reason = if terminal {
        completed
    } else {
        (!rs.initialized).then_some("ContainersNotInitialized")
    };
    let mut conditions = vec![
        condition(pod, "PodReadyToStartContainers", !terminal, None, now),
        condition(
            pod,
            "Initialized",
            rs.initialized || terminal,
            initialized_reason,
            now,
        ),
        condition(pod, "Ready", ready, not_ready, now),
        condition(pod, "ContainersReady", ready, not_ready, now),
        condition(pod, "PodScheduled", true, None, now),
    ];
    // An evicted pod says so, as kubelet writes it, whatever copy of the pod this is from.
    let evicted = rs.evicted.as_deref().filter(|_| terminal);
    if let Some(message) = evicted
        && !has_condition(pod, "DisruptionTarget")
    {
        let mut c = condition(
            pod,
            "DisruptionTarget",
            true,
            Some("TerminationByKubelet"),
            now,
        );
        c["message"] = message.into();
        conditions.push(c);
    }
    let containers = serde_json::to_value(&rs.container_statuses).ok()?;
    let init = serde_json::to_value(&rs.init_container_statuses).ok()?;
    let mut status = assemble(pod, phase, conditions, &start_time, containers, init, cx);
    if let Some(message) = evicted {
        status["reason"] = "Evicted".into();
        status["message"] = message.into();
    }
    Some(status)
}

/// Whether the pod's status has a condition of this type.
fn has_condition(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_))
}

/// The status body: phase, our conditions then the ones others own, IPs, startTime, statuses.
fn assemble(
    pod: &Pod,
    phase: &str,
    mut conditions: Vec<Value>,
    start_time: &str,
    containers: Value,
    init: Value,
    cx: &Context<'_>,
) -> Value {
    // Keep conditions others own (readiness gates, DisruptionTarget...).
    let ours = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ];
    for c in pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        if !ours.contains(&c.type_.as_str())
            && let Ok(v) = serde_json::to_value(c)
        {
            conditions.push(v);
        }
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": cx.host_ip,
        "hostIPs": [{"ip": cx.host_ip}],
        "startTime": start_time,
        "containerStatuses": containers,
    });
    if init.as_array().is_some_and(|a| !a.is_empty()) {
        status["initContainerStatuses"] = init;
    }
    if let Some(ip) = cx.pod_ip {
        status["podIP"] = ip.into();
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::runtime::ContainerStarted;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
            "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}],
                     "initContainers": [{"name": "i", "image": "busybox"}]},
            "status": {"phase": "Pending", "qosClass": "BestEffort",
                       "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
        }))
        .unwrap()
    }

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn running_status_as_kubelet_writes_it() {
        let started = Started {
            containers: vec![ContainerStarted {
                name: "c".into(),
                container_id: "fake://abc".into(),
                image_id: "docker.io/library/nginx@sha256:00".into(),
            }],
        };
        let cx = Context {
            host_ip: "10.250.0.1",
            pod_ip: Some("10.244.0.2"),
            started: Some(&started),
            runtime: None,
            now: ts(5),
        };
        let state = PodState::Running {
            started_at: ts(1),
            restarts: 0,
            last_exit: None,
        };
        let s = pod_status(&pod(), &state, &cx).unwrap();
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.244.0.2");
        assert_eq!(s["podIPs"][0]["ip"], "10.244.0.2");
        assert_eq!(s["hostIP"], "10.250.0.1");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["ready"], true);
        assert_eq!(c["started"], true);
        assert_eq!(c["containerID"], "fake://abc");
        assert_eq!(c["state"]["running"]["startedAt"], time(ts(1)));
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["terminated"]["reason"],
            "Completed"
        );
        let types: Vec<&str> = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "PodReadyToStartContainers",
                "Initialized",
                "Ready",
                "ContainersReady",
                "PodScheduled"
            ]
        );
        // PodScheduled keeps its transition time; qosClass is not touched (merge patch).
        assert_eq!(
            s["conditions"][4]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert!(s.get("qosClass").is_none());
    }

    #[test]
    fn completed_and_failed() {
        let cx = Context {
            host_ip: "10.250.0.1",
            pod_ip: None,
            started: None,
            runtime: None,
            now: ts(9),
        };
        let exit = Exit {
            code: 0,
            started_at: ts(1),
            finished_at: ts(3),
        };
        let s = pod_status(&pod(), &PodState::Completed { exit, restarts: 0 }, &cx).unwrap();
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(s["conditions"][2]["status"], "False");
        assert_eq!(s["conditions"][2]["reason"], "PodCompleted");
        let t = &s["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(t["exitCode"], 0);
        assert_eq!(t["finishedAt"], time(ts(3)));
        let failed = Exit { code: 2, ..exit };
        let s = pod_status(
            &pod(),
            &PodState::Completed {
                exit: failed,
                restarts: 0,
            },
            &cx,
        )
        .unwrap();
        assert_eq!(s["phase"], "Failed");
        assert_eq!(
            s["containerStatuses"][0]["state"]["terminated"]["reason"],
            "Error"
        );
        assert!(pod_status(&pod(), &PodState::Pending, &cx).is_none());
    }

    fn runtime_status(ready: bool, restarts: i32) -> RuntimeStatus {
        let cs = serde_json::from_value(json!({
            "name": "c", "image": "nginx:1.27", "imageID": "docker.io/library/nginx@sha256:11",
            "containerID": "runsc://c1", "ready": ready, "started": true, "restartCount": restarts,
            "state": {"running": {"startedAt": "2027-01-15T08:00:02Z"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                "startedAt": "2027-01-15T08:00:00Z", "finishedAt": "2027-01-15T08:00:01Z"}}
        }))
        .unwrap();
        let init = serde_json::from_value(json!({
            "name": "i", "image": "busybox", "imageID": "", "containerID": "runsc://i1",
            "ready": true, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}
        }))
        .unwrap();
        RuntimeStatus {
            init_container_statuses: vec![init],
            container_statuses: vec![cs],
            initialized: true,
            ready,
            evicted: None,
        }
    }

    #[test]
    fn an_evicted_pod_says_so_once_it_ended() {
        let mut rs = runtime_status(false, 0);
        rs.evicted = Some(
            "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. ".into(),
        );
        let cx = Context {
            host_ip: "10.244.0.7",
            pod_ip: Some("10.244.0.7"),
            started: None,
            runtime: Some(&rs),
            now: ts(5),
        };
        let ended = PodState::Completed {
            exit: Exit {
                code: 137,
                started_at: ts(1),
                finished_at: ts(4),
            },
            restarts: 0,
        };
        let s = pod_status(&pod(), &ended, &cx).unwrap();
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["reason"], "Evicted");
        assert!(s["message"].as_str().unwrap().contains("2Mi"));
        let disruption: Vec<_> = s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["type"] == "DisruptionTarget")
            .collect();
        assert_eq!(disruption.len(), 1, "{s}");
        assert_eq!(disruption[0]["reason"], "TerminationByKubelet");
        // While it still runs (the kill is under way), nothing is said yet.
        let running = PodState::Running {
            started_at: ts(1),
            restarts: 0,
            last_exit: None,
        };
        let s = pod_status(&pod(), &running, &cx).unwrap();
        assert!(s.get("reason").is_none(), "{s}");
    }

    #[test]
    fn a_real_runtime_s_statuses_are_used_as_they_are() {
        let rs = runtime_status(false, 2);
        let cx = Context {
            host_ip: "10.244.0.7",
            pod_ip: Some("10.244.0.7"),
            started: None,
            runtime: Some(&rs),
            now: ts(5),
        };
        let state = PodState::Running {
            started_at: ts(1),
            restarts: 0,
            last_exit: None,
        };
        let s = pod_status(&pod(), &state, &cx).unwrap();
        assert_eq!(s["phase"], "Running");
        let c = &s["containerStatuses"][0];
        assert_eq!(c["restartCount"], 2, "the runtime's count, not the state's");
        assert_eq!(c["containerID"], "runsc://c1");
        assert_eq!(c["ready"], false);
        assert_eq!(c["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(s["initContainerStatuses"][0]["containerID"], "runsc://i1");
        let cond = |t: &str| {
            s["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t)
                .cloned()
                .unwrap()
        };
        assert_eq!(cond("Ready")["status"], "False");
        assert_eq!(cond("Ready")["reason"], "ContainersNotReady");
        assert_eq!(cond("ContainersReady")["status"], "False");
        assert_eq!(cond("Initialized")["status"], "True");
        assert_eq!(s["podIP"], "10.244.0.7");

        let rs = runtime_status(true, 2);
        let cx = Context {
            runtime: Some(&rs),
            ..cx
        };
        let s = pod_status(&pod(), &state, &cx).unwrap();
        assert_eq!(s["conditions"][2]["type"], "Ready");
        assert_eq!(s["conditions"][2]["status"], "True");

        // Starting: Pending with what the runtime says (e.g. pulling).
        let mut rs = runtime_status(false, 0);
        rs.initialized = false;
        let cx = Context {
            runtime: Some(&rs),
            ..cx
        };
        let starting = PodState::Starting {
            restarts: 0,
            last_exit: None,
        };
        let s = pod_status(&pod(), &starting, &cx).unwrap();
        assert_eq!(s["phase"], "Pending");
        assert_eq!(s["conditions"][1]["type"], "Initialized");
        assert_eq!(s["conditions"][1]["status"], "False");
        assert_eq!(s["conditions"][1]["reason"], "ContainersNotInitialized");
        assert!(pod_status(&pod(), &PodState::Pending, &cx).is_none());
    }
}
