//! The pod status the agent writes for a [`PodState`], as the kubelet writes it: phase,
//! conditions (PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled),
//! container and init container statuses, host and pod IPs, startTime. Pure: a function of the
//! pod, its state, what the runtime reported and the time.
//!
//! Two sources for the container statuses: a real runtime's own ([`RuntimeStatus`]: each
//! container's state, restarts, readiness), used as they are when present; else they are
//! derived from the pod-level state (the fake runtime, or a pod the runtime let go).
//!
//! An evicted pod (the state's or the runtime's eviction message) says so in every status
//! computed for it, whatever copy of the pod it is computed from and whether the runtime still
//! knows the pod: `phase: Failed`, `reason: Evicted` and kubelet's message once no container
//! runs, and for a node-pressure eviction the `DisruptionTarget` condition from the start of the
//! eviction on (kubelet's). The agent's status writes replace the conditions list (a JSON merge
//! patch): a status that left it out would drop the condition the eviction wrote.

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::eviction::{DISRUPTION_TARGET, REASON, TERMINATION_BY_KUBELET};
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
    let evicted = evicted_of(state);
    let (phase, running, exit, restarts, last_exit) = match state {
        PodState::Running {
            started_at,
            restarts,
            last_exit,
        } => ("Running", Some(*started_at), None, *restarts, *last_exit),
        PodState::Completed { exit, restarts, .. }
        | PodState::Deleting {
            exit: Some(exit),
            restarts,
            ..
        } => (
            ended_phase(exit.code, evicted),
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
    let mut conditions = vec![
        condition(pod, "PodReadyToStartContainers", !terminal, None, now),
        condition(pod, "Initialized", true, completed, now),
        condition(pod, "Ready", !terminal, completed, now),
        condition(pod, "ContainersReady", !terminal, completed, now),
        condition(pod, "PodScheduled", true, None, now),
    ];
    conditions.extend(disruption(pod, evicted, now));
    let mut status = assemble(
        pod,
        phase,
        conditions,
        &start_time,
        Value::Array(containers),
        Value::Array(init),
        cx,
    );
    say_evicted(&mut status, evicted.filter(|_| terminal));
    Some(status)
}

/// The eviction message the state carries.
fn evicted_of(state: &PodState) -> Option<&str> {
    match state {
        PodState::Completed { evicted, .. } | PodState::Deleting { evicted, .. } => {
            evicted.as_deref()
        }
        _ => None,
    }
}

/// The phase of a pod whose containers ended with `code`: an evicted pod Failed whatever it was.
fn ended_phase(code: i32, evicted: Option<&str>) -> &'static str {
    if code == 0 && evicted.is_none() {
        "Succeeded"
    } else {
        "Failed"
    }
}

/// Kubelet's `DisruptionTarget` condition of a pod evicted for node pressure (None for any
/// other pod: kubelet's limit evictions carry no condition); its transition time kept when the
/// pod has it already.
fn disruption(pod: &Pod, evicted: Option<&str>, now: Timestamp) -> Option<Value> {
    let message = evicted.filter(|m| crate::eviction::disruption_target(m))?;
    let mut c = condition(
        pod,
        DISRUPTION_TARGET,
        true,
        Some(TERMINATION_BY_KUBELET),
        now,
    );
    c["message"] = message.into();
    Some(c)
}

/// The reason and message of an evicted pod that ended.
fn say_evicted(status: &mut Value, evicted: Option<&str>) {
    if let Some(message) = evicted {
        status["reason"] = REASON.into();
        status["message"] = message.into();
    }
}

/// The status from a real runtime's container statuses; the phase still comes from the state
/// (Starting is Pending: images being pulled, containers being created).
fn from_runtime(
    pod: &Pod,
    state: &PodState,
    rs: &RuntimeStatus,
    cx: &Context<'_>,
) -> Option<Value> {
    // The state's eviction, else the runtime's (it evicts before the shell hears of it).
    let evicted = evicted_of(state).or(rs.evicted.as_deref());
    // Kubelet reports an evicted pod Failed once none of its containers can run any more.
    let stopped = evicted.is_some()
        && !rs
            .init_container_statuses
            .iter()
            .chain(&rs.container_statuses)
            .any(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
    let (phase, started_at) = match state {
        PodState::Starting { .. } if stopped => ("Failed", None),
        PodState::Starting { .. } => ("Pending", None),
        PodState::Running { started_at, .. } if stopped => ("Failed", Some(*started_at)),
        PodState::Running { started_at, .. } => ("Running", Some(*started_at)),
        PodState::Completed { exit, .. }
        | PodState::Deleting {
            exit: Some(exit), ..
        } => (ended_phase(exit.code, evicted), Some(exit.started_at)),
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
    // An evicted pod says so, as kubelet writes it, whatever copy of the pod this is from:
    // DisruptionTarget (node pressure) from the start, reason and message once it ended.
    conditions.extend(disruption(pod, evicted, now));
    let containers = serde_json::to_value(&rs.container_statuses).ok()?;
    let init = serde_json::to_value(&rs.init_container_statuses).ok()?;
    let mut status = assemble(pod, phase, conditions, &start_time, containers, init, cx);
    say_evicted(&mut status, evicted.filter(|_| terminal));
    Some(status)
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
    // Keep conditions others own (readiness gates, DisruptionTarget...), unless computed here.
    let ours = [
        "PodReadyToStartContainers",
        "Initialized",
        "Ready",
        "ContainersReady",
        "PodScheduled",
    ];
    let computed: Vec<String> = conditions
        .iter()
        .filter_map(|c| c["type"].as_str().map(str::to_owned))
        .collect();
    for c in pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
    {
        if !ours.contains(&c.type_.as_str())
            && !computed.contains(&c.type_)
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
        let s = pod_status(
            &pod(),
            &PodState::Completed {
                exit,
                restarts: 0,
                evicted: None,
            },
            &cx,
        )
        .unwrap();
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
                evicted: None,
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

    const LIMIT: &str =
        "Pod ephemeral local storage usage exceeds the total limit of containers 2Mi. ";
    const PRESSURE: &str = "The node was low on resource: ephemeral-storage. \
        Threshold quantity: 20Gi, available: -1Gi. ";

    fn disruptions(s: &Value) -> Vec<Value> {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["type"] == "DisruptionTarget")
            .cloned()
            .collect()
    }

    fn killed(evicted: Option<&str>) -> PodState {
        PodState::Completed {
            exit: Exit {
                code: 137,
                started_at: ts(1),
                finished_at: ts(4),
            },
            restarts: 0,
            evicted: evicted.map(str::to_owned),
        }
    }

    /// The runtime's container statuses with every container ended.
    fn ended(mut rs: RuntimeStatus) -> RuntimeStatus {
        for c in &mut rs.container_statuses {
            c.state = serde_json::from_value(json!({"terminated": {"exitCode": 137,
                "reason": "Error", "startedAt": "2027-01-15T08:00:02Z",
                "finishedAt": "2027-01-15T08:00:09Z"}}))
            .unwrap();
        }
        rs
    }

    #[test]
    fn an_evicted_pod_says_so_once_it_ended() {
        for (message, marked) in [(LIMIT, false), (PRESSURE, true)] {
            let mut rs = runtime_status(false, 0);
            rs.evicted = Some(message.into());
            let cx = Context {
                host_ip: "10.244.0.7",
                pod_ip: Some("10.244.0.7"),
                started: None,
                runtime: Some(&rs),
                now: ts(5),
            };
            let ended_state = killed(Some(message));
            let s = pod_status(&pod(), &ended_state, &cx).unwrap();
            assert_eq!(s["phase"], "Failed");
            assert_eq!(s["reason"], "Evicted");
            assert_eq!(s["message"], message);
            // DisruptionTarget for a node-pressure eviction only, as kubelet marks them.
            let d = disruptions(&s);
            assert_eq!(d.len(), usize::from(marked), "{s}");
            if marked {
                assert_eq!(d[0]["status"], "True");
                assert_eq!(d[0]["reason"], "TerminationByKubelet");
                assert_eq!(d[0]["message"], message);
            }
            // While a container still runs (the kill is under way) the pod is Running, without
            // the reason; the condition is there from the start of the eviction (kubelet's).
            let running = PodState::Running {
                started_at: ts(1),
                restarts: 0,
                last_exit: None,
            };
            let s = pod_status(&pod(), &running, &cx).unwrap();
            assert_eq!(s["phase"], "Running");
            assert!(s.get("reason").is_none(), "{s}");
            assert_eq!(disruptions(&s).len(), usize::from(marked), "{s}");
            // Once no container runs, Failed/Evicted before the shell hears of the exit.
            let rs = ended(rs.clone());
            let cx = Context {
                runtime: Some(&rs),
                ..cx
            };
            let s = pod_status(&pod(), &running, &cx).unwrap();
            assert_eq!(s["phase"], "Failed", "{s}");
            assert_eq!(s["reason"], "Evicted");
            assert_eq!(disruptions(&s).len(), usize::from(marked), "{s}");
        }
    }

    /// The race that dropped DisruptionTarget: the shell rewrote the status of an evicted pod
    /// after the runtime let it go (no runtime status, so no eviction in it) from a copy of the
    /// pod older than the eviction's own write. The status comes from the state, which keeps
    /// the eviction: the condition is in every status computed after it, once.
    #[test]
    fn the_eviction_outlives_the_runtime_and_stale_copies() {
        let cx = Context {
            host_ip: "10.244.0.7",
            pod_ip: Some("10.244.0.7"),
            started: None,
            runtime: None,
            now: ts(9),
        };
        let stale = pod();
        let s = pod_status(&stale, &killed(Some(PRESSURE)), &cx).unwrap();
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["reason"], "Evicted");
        assert_eq!(s["message"], PRESSURE);
        let d = disruptions(&s);
        assert_eq!(d.len(), 1, "{s}");
        assert_eq!(d[0]["reason"], "TerminationByKubelet");
        assert_eq!(d[0]["lastTransitionTime"], time(ts(9)));
        // A copy that has it (the eviction's write): once, its transition time kept.
        let mut fresh = pod();
        let status = fresh.status.as_mut().unwrap();
        status.conditions.as_mut().unwrap().push(
            serde_json::from_value(json!({"type": "DisruptionTarget", "status": "True",
                "reason": "TerminationByKubelet", "message": PRESSURE,
                "lastTransitionTime": "2026-06-01T00:00:00Z"}))
            .unwrap(),
        );
        let s = pod_status(&fresh, &killed(Some(PRESSURE)), &cx).unwrap();
        let d = disruptions(&s);
        assert_eq!(d.len(), 1, "{s}");
        assert_eq!(d[0]["lastTransitionTime"], "2026-06-01T00:00:00Z");
        // Deleted after its eviction: still said.
        let deleting = PodState::Deleting {
            exit: Some(Exit {
                code: 137,
                started_at: ts(1),
                finished_at: ts(4),
            }),
            restarts: 0,
            evicted: Some(PRESSURE.into()),
        };
        let s = pod_status(&stale, &deleting, &cx).unwrap();
        assert_eq!(s["reason"], "Evicted");
        assert_eq!(disruptions(&s).len(), 1, "{s}");
        // A limit eviction: Failed/Evicted, no condition; an exit of 0 is Failed too.
        let mut limit = killed(Some(LIMIT));
        if let PodState::Completed { exit, .. } = &mut limit {
            exit.code = 0;
        }
        let s = pod_status(&stale, &limit, &cx).unwrap();
        assert_eq!(s["phase"], "Failed");
        assert_eq!(s["reason"], "Evicted");
        assert!(disruptions(&s).is_empty(), "{s}");
        // Not evicted: nothing said.
        let s = pod_status(&stale, &killed(None), &cx).unwrap();
        assert!(
            s.get("reason").is_none() && disruptions(&s).is_empty(),
            "{s}"
        );
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
