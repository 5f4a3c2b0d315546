//! The agent's real runtime: pods bound to this host run in real sandboxes (crates/sandbox):
//! gVisor (`runsc`) or a QEMU micro-VM for serverless pods, `crun` (or a micro-VM) for
//! worker-node pods. [`SandboxRuntime`] implements [`crate::runtime::Runtime`] and
//! [`crate::streams::PodStreams`].
//!
//! The runtime is chosen per pod, and each pod's containers are run by an engine behind one
//! trait, [`engine::PodEngine`]: [`oci::OciEngine`] over an OCI runtime (`runsc`, `crun`) and
//! [`vm::VmEngine`] over a micro-VM. Everything below that is not in those two modules is the
//! same for every runtime.
//!
//! Per pod: ConfigMap/Secret values and files are fetched with the kube client, images pulled
//! under kubelet's pull policy (a present image is used without the registry unless `Always`;
//! credentials from the pod's `imagePullSecrets` and the cluster registry's Secret
//! `kube-system/nodeless-registry`, read only when a registry is asked), the sandbox prepared
//! with exactly the pod IP (at most [`start_concurrency`] pods create sandboxes at once), init
//! containers run in order, then one supervisor task per regular container applies the restart
//! policy with kubelet's back-off
//! (10 s doubling to 5 min, reset after 10 min of running; `CrashLoopBackOff` while waiting).
//! Container statuses are kept as kubelet reports them and every change is announced on the
//! [`crate::runtime::Runtime::take_changes`] channel. Events go to the API server as kubelet's
//! (`Pulling`, `Pulled`, `Created`, `Started`, `Killing`, `BackOff`, `Failed`, `Unhealthy`).
//!
//! The decisions (restart or not, back-off, statuses, credentials) are pure functions below;
//! the shell runs processes and talks to the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt as _;
use futures::stream::BoxStream;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    ConfigMap, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Event, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Api;
use sandbox::container;
use sandbox::image::{Auth, Image, ImageStore, PullOptions, Source, StoreOptions};
use sandbox::network::PodNetwork;
use sandbox::plan::{ContainerPlan, Objects, PodPlan, RestartPolicy};
use sandbox::pod;
use sandbox::runtime::{Runtime as SbRuntime, RuntimeKind};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::runtime::{ContainerStarted, Runtime, RuntimeError, RuntimeStatus, Started};
use crate::streams::{ExecRequest, ExecSession, LogOptions, PodStreams, StreamError, TermSize};

mod engine;
mod oci;
mod vm;

use engine::{Boot, PodEngine, Run, StartContext};

/// The scheduler whose pods run in the serverless runtime.
pub const SERVERLESS_SCHEDULER: &str = "serverless-scheduler";
/// The cluster registry's pull credential (contract).
pub const REGISTRY_SECRET: (&str, &str) = ("kube-system", "nodeless-registry");
/// Kubelet's container restart back-off: first delay, cap, and how long a run must last for
/// the back-off to start over.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(10);
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
pub const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// How the agent's sandboxes are set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub data_dir: PathBuf,
    /// Runtime for serverless pods (spec.schedulerName == "serverless-scheduler"): Gvisor
    /// (default) or Microvm.
    pub serverless_runtime: RuntimeKind,
    /// Runtime for other pods (worker nodes): Container (crun) or Microvm.
    pub worker_runtime: RuntimeKind,
    /// The pod network: netns, bridge and subnet (the host's pod CIDR).
    pub network: PodNetwork,
    pub insecure_registries: Vec<String>,
    /// Total unpacked size of the image cache above which images no pod uses are evicted, least
    /// recently used first, each time a pod is removed; `None`: no limit.
    pub image_cache_limit_bytes: Option<u64>,
    /// How often each pod's ephemeral storage is measured for evictions (kubelet's
    /// housekeeping interval; [`crate::eviction::INTERVAL`] by default).
    pub eviction_interval: Duration,
}

// ---------------------------------------------------------------------------------------------
// Pure decisions.

/// Whether a container that exited with `code` runs again under `policy` (kubelet's rule; init
/// containers use OnFailure unless the pod's policy is Never).
pub fn should_restart(policy: RestartPolicy, code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Never => false,
    }
}

/// The policy that applies to init containers of a pod with `policy`.
pub fn init_policy(policy: RestartPolicy) -> RestartPolicy {
    match policy {
        RestartPolicy::Never => RestartPolicy::Never,
        _ => RestartPolicy::OnFailure,
    }
}

/// Kubelet's back-off for one container: `current` is the delay of the last back-off (None: the
/// container has not backed off since the last reset), `ran` how long the run that just ended
/// lasted. Returns the delay to wait now (None: restart at once) and the new `current`.
pub fn next_backoff(current: Option<Duration>, ran: Duration) -> (Option<Duration>, Duration) {
    let current = if ran >= BACKOFF_RESET { None } else { current };
    match current {
        None => (None, BACKOFF_INITIAL),
        Some(d) => (Some(d), (d * 2).min(BACKOFF_MAX)),
    }
}

/// A duration as Go prints it (`10s`, `1m20s`, `5m0s`). Pure.
pub fn go_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{}h{}m{}s", s / 3600, (s % 3600) / 60, s % 60)
    }
}

/// The exit code that decides the phase: 0 if every container succeeded, else the first
/// non-zero code (in spec order). Pure.
pub fn pod_exit_code(codes: &[i32]) -> i32 {
    codes.iter().copied().find(|c| *c != 0).unwrap_or(0)
}

/// The registry part of a docker config key (`https://index.docker.io/v1/` -> `docker.io`). Pure.
pub fn registry_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        h => h.to_owned(),
    }
}

/// Credentials from a `kubernetes.io/dockerconfigjson` (or legacy `.dockercfg`) Secret's
/// content: registry -> basic auth. Pure.
pub fn docker_config_auths(json: &[u8]) -> Vec<(String, Auth)> {
    use base64::Engine as _;
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let auths = v.get("auths").unwrap_or(&v);
    let Some(map) = auths.as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (k, e) in map {
        let field = |f: &str| e.get(f).and_then(|x| x.as_str()).map(str::to_owned);
        let (user, pass) = match (field("username"), field("password"), field("auth")) {
            (Some(u), Some(p), _) => (u, p),
            (_, _, Some(a)) => {
                let Ok(dec) = base64::engine::general_purpose::STANDARD.decode(a.trim()) else {
                    continue;
                };
                let dec = String::from_utf8_lossy(&dec).into_owned();
                let Some((u, p)) = dec.split_once(':') else {
                    continue;
                };
                (u.to_owned(), p.to_owned())
            }
            _ => continue,
        };
        out.push((
            registry_key(k),
            Auth::Basic {
                username: user,
                password: pass,
            },
        ));
    }
    out
}

/// The credential for `registry` among `creds` (first match), anonymous otherwise. Pure.
pub fn auth_for(registry: &str, creds: &[(String, Auth)]) -> Auth {
    creds
        .iter()
        .find(|(r, _)| r == registry)
        .map(|(_, a)| a.clone())
        .unwrap_or_default()
}

/// Kubelet's image pull policy of one image of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Resolve the reference at the registry at every pod start (fetching what changed).
    Always,
    /// Use the image on this host; pull only when it is missing.
    IfNotPresent,
    /// Never pull: the image must be on this host.
    Never,
}

/// The pull policy of `image` in `pod`: `Always` if a container using it says so, `Never` if all
/// do, else `IfNotPresent`. A container without one gets the API's default (`Always` for a
/// `:latest` or untagged reference, else `IfNotPresent`). Pure.
pub fn pull_policy(pod: &Pod, image: &str) -> PullPolicy {
    let default = || {
        let last = image.rsplit('/').next().unwrap_or(image);
        let name = last.split('@').next().unwrap_or(last);
        let digest = last.contains('@');
        match name.split_once(':') {
            _ if digest => PullPolicy::IfNotPresent,
            None => PullPolicy::Always,
            Some((_, "latest")) => PullPolicy::Always,
            Some(_) => PullPolicy::IfNotPresent,
        }
    };
    let spec = pod.spec.as_ref();
    let policies: Vec<PullPolicy> = spec
        .map(|s| s.init_containers.iter().flatten().chain(&s.containers))
        .into_iter()
        .flatten()
        .filter(|c| c.image.as_deref() == Some(image))
        .map(|c| match c.image_pull_policy.as_deref() {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => default(),
        })
        .collect();
    if policies.contains(&PullPolicy::Always) {
        PullPolicy::Always
    } else if !policies.is_empty() && policies.iter().all(|p| *p == PullPolicy::Never) {
        PullPolicy::Never
    } else {
        PullPolicy::IfNotPresent
    }
}

/// `imageID` of a pulled image: `repo@sha256:...` of its manifest.
fn image_id_of(img: &Image) -> String {
    let repo = match img.name.parse::<Source>() {
        Ok(Source::Registry(r)) => format!("{}/{}", r.registry(), r.repository()),
        _ => img
            .name
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or(img.name.clone(), |(r, _)| r.to_owned()),
    };
    format!("{repo}@{}", img.manifest_digest)
}

/// How container IDs name the runtime (`gvisor://…`).
fn id_prefix(kind: RuntimeKind) -> &'static str {
    match kind {
        RuntimeKind::Gvisor => "gvisor",
        RuntimeKind::Container => "crun",
        RuntimeKind::Microvm => "microvm",
    }
}

fn time(s: &str) -> Option<Time> {
    s.parse::<Timestamp>().ok().map(Time)
}

fn now_time() -> Time {
    Time(Timestamp::now())
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Per-pod state.

/// What we know of one container, as kubelet reports it.
#[derive(Debug, Clone)]
struct CState {
    name: String,
    image: String,
    image_id: String,
    container_id: String,
    state: ContainerState,
    last_state: Option<ContainerState>,
    restart_count: i32,
    ready: bool,
    started: bool,
    has_readiness: bool,
    has_startup: bool,
}

impl CState {
    /// A container not started yet (`ContainerCreating`), with the ID of its runs and the ID
    /// of its image when pulled.
    fn new(
        c: &ContainerPlan,
        spec: Option<&k8s_openapi::api::core::v1::Container>,
        container_id: String,
        images: &BTreeMap<String, Image>,
    ) -> CState {
        CState {
            name: c.name.clone(),
            image: c.image.clone(),
            image_id: images.get(&c.image).map(image_id_of).unwrap_or_default(),
            container_id,
            state: waiting("ContainerCreating", None),
            last_state: None,
            restart_count: 0,
            ready: false,
            started: false,
            has_readiness: spec.is_some_and(|s| s.readiness_probe.is_some()),
            has_startup: spec.is_some_and(|s| s.startup_probe.is_some()),
        }
    }

    fn status(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.name.clone(),
            image: self.image.clone(),
            image_id: self.image_id.clone(),
            // Kubelet names the container while it exists, and the last one while waiting
            // to restart it.
            container_id: if self.state.waiting.is_none() && !self.image_id.is_empty() {
                Some(self.container_id.clone())
            } else {
                self.last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .and_then(|t| t.container_id.clone())
            },
            state: Some(self.state.clone()),
            last_state: self.last_state.clone().or_else(|| Some(Default::default())),
            ready: self.ready,
            started: Some(self.started),
            restart_count: self.restart_count,
            ..Default::default()
        }
    }

    fn running(&self) -> bool {
        self.state.running.is_some()
    }
}

#[derive(Debug, Default)]
struct Shared {
    init: Vec<CState>,
    regular: Vec<CState>,
    initialized: bool,
}

impl Shared {
    /// The containers' states as `mk` makes them (given the spec of regular containers), in
    /// the plan's order.
    fn of(
        plan: &PodPlan,
        spec: &k8s_openapi::api::core::v1::PodSpec,
        initialized: bool,
        mk: impl Fn(&ContainerPlan, Option<&k8s_openapi::api::core::v1::Container>) -> CState,
    ) -> Shared {
        Shared {
            init: plan.init_containers.iter().map(|c| mk(c, None)).collect(),
            regular: plan
                .containers
                .iter()
                .zip(&spec.containers)
                .map(|(c, s)| mk(c, Some(s)))
                .collect(),
            initialized,
        }
    }
}

/// Which list a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Init(usize),
    Regular(usize),
}

struct PodEntry {
    uid: String,
    name: String,
    namespace: String,
    node: String,
    plan: PodPlan,
    pod: Pod,
    host: pod::Host,
    /// What runs the pod's containers (its runtime's engine).
    engine: Arc<dyn PodEngine>,
    client: kube::Client,
    changes: mpsc::UnboundedSender<String>,
    images: Mutex<BTreeMap<String, Image>>,
    shared: Mutex<Shared>,
    stopping: watch::Sender<bool>,
    /// Set when the pod is evicted (kubelet's message).
    evicted: Mutex<Option<String>>,
    /// Some(code) once no container will run again.
    done: watch::Sender<Option<i32>>,
    /// Bumped on every status change (log followers and attach watch it).
    version: watch::Sender<u64>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Kubelet's events about the pod, posted in order by [`post_events`].
    events: mpsc::UnboundedSender<Event>,
    started: Mutex<Option<Started>>,
    /// See [`SandboxConfig::eviction_interval`].
    eviction_interval: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a new [`PodEntry`] is made of.
struct NewEntry<'a> {
    uid: &'a str,
    pod: &'a Pod,
    plan: &'a PodPlan,
    host: pod::Host,
    engine: Arc<dyn PodEngine>,
    images: BTreeMap<String, Image>,
    shared: Shared,
}

impl PodEntry {
    fn plan_of(&self, w: Which) -> &ContainerPlan {
        match w {
            Which::Init(i) => &self.plan.init_containers[i],
            Which::Regular(i) => &self.plan.containers[i],
        }
    }

    fn update(&self, w: Which, f: impl FnOnce(&mut CState)) {
        {
            let mut s = lock(&self.shared);
            let c = match w {
                Which::Init(i) => s.init.get_mut(i),
                Which::Regular(i) => s.regular.get_mut(i),
            };
            if let Some(c) = c {
                f(c);
            }
        }
        self.changed();
    }

    fn get(&self, w: Which) -> Option<CState> {
        let s = lock(&self.shared);
        match w {
            Which::Init(i) => s.init.get(i).cloned(),
            Which::Regular(i) => s.regular.get(i).cloned(),
        }
    }

    fn changed(&self) {
        self.version.send_modify(|v| *v += 1);
        let _ = self.changes.send(self.uid.clone());
    }

    fn stopping(&self) -> bool {
        *self.stopping.borrow()
    }

    fn pod_ref(&self) -> String {
        format!("{}_{}({})", self.name, self.namespace, self.uid)
    }

    /// The pod as events and evictions name it.
    fn pod_ref_of(&self) -> crate::eviction::PodRef {
        crate::eviction::PodRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            node: self.node.clone(),
        }
    }

    /// The containers (init and regular) whose current run goes.
    fn running_names(&self) -> Vec<String> {
        let s = lock(&self.shared);
        s.init
            .iter()
            .chain(&s.regular)
            .filter(|c| c.running())
            .map(|c| c.name.clone())
            .collect()
    }

    /// Posts a core/v1 Event about the pod (in the background; failures are logged).
    fn event(&self, container: Option<&str>, warning: bool, reason: &str, message: String) {
        let field_path = container.map(|c| {
            let init = self.plan.init_containers.iter().any(|p| p.name == c);
            if init {
                format!("spec.initContainers{{{c}}}")
            } else {
                format!("spec.containers{{{c}}}")
            }
        });
        let pod = self.pod_ref_of();
        let ev = crate::eviction::kubelet_event(
            &pod,
            field_path,
            warning,
            reason,
            message,
            Timestamp::now(),
        );
        let _ = self.events.send(ev);
    }

    /// Kubelet's `Created` and `Started` events of a container's run.
    fn created_and_started(&self, name: &str) {
        for reason in ["Created", "Started"] {
            self.event(
                Some(name),
                false,
                reason,
                format!("{reason} container {name}"),
            );
        }
    }

    /// The `stdin`, `stdinOnce` and `tty` of container `name`.
    fn stdio_of(&self, name: &str) -> sandbox::shim::StdinSpec {
        let c = self
            .plan
            .containers
            .iter()
            .chain(&self.plan.init_containers)
            .find(|c| c.name == name);
        sandbox::shim::StdinSpec {
            stdin: c.is_some_and(|c| c.stdin),
            stdin_once: c.is_some_and(|c| c.stdin_once),
            tty: c.is_some_and(|c| c.tty),
        }
    }

    fn host_id(&self, name: &str) -> String {
        pod::container_id(&self.plan.id, name)
    }

    /// Sends `signal` to container `name`'s current run.
    async fn kill(&self, name: &str, signal: i32) -> Result<(), String> {
        self.engine.kill(self, name, signal).await
    }

    /// The pod's IP (inside the pod network's namespace).
    fn ip(&self) -> Option<Ipv4Addr> {
        self.engine.ip()
    }

    /// Kubelet's `FailedCreatePodSandBox` event, and the error of the start.
    fn sandbox_failed(&self, msg: &str) -> RuntimeError {
        self.event(
            None,
            true,
            "FailedCreatePodSandBox",
            format!("Failed to create pod sandbox: {msg}"),
        );
        failed(msg)
    }

    fn status(&self) -> RuntimeStatus {
        let s = lock(&self.shared);
        RuntimeStatus {
            init_container_statuses: s.init.iter().map(CState::status).collect(),
            container_statuses: s.regular.iter().map(CState::status).collect(),
            initialized: s.initialized,
            ready: !s.regular.is_empty() && s.regular.iter().all(|c| c.running() && c.ready),
            evicted: lock(&self.evicted).clone(),
        }
    }

    /// Resolves once the pod will run no container again.
    async fn wait_done(&self) -> i32 {
        let mut rx = self.done.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => v.unwrap_or(0),
            Err(_) => 0,
        }
    }
}

fn failed_run(code: i32, reason: &str, message: String, container_id: &str) -> ContainerState {
    let now = now_time();
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some(reason.into()),
            message: Some(message),
            started_at: Some(now.clone()),
            finished_at: Some(now),
            container_id: Some(container_id.to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs one container until its policy says it will not run again; returns its last exit code.
/// `adopted`: a run already going (after an agent restart).
async fn supervise(e: Arc<PodEntry>, w: Which, mut adopted: Option<Run>) -> i32 {
    let plan = e.plan_of(w).clone();
    let policy = match w {
        Which::Init(_) => init_policy(e.plan.restart_policy),
        Which::Regular(_) => e.plan.restart_policy,
    };
    let cid = e.get(w).map(|c| c.container_id).unwrap_or_default();
    let mut backoff: Option<Duration> = None;
    let mut stop_rx = e.stopping.subscribe();
    let mut last_code = 0;
    loop {
        if e.stopping() {
            return last_code;
        }
        let restart_count = e
            .get(w)
            .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
            .unwrap_or(0);
        // A run taken back after it ended (while no agent watched) keeps the terminated
        // state its adoption recorded until its end lands: it is not shown running again.
        let mut ended_before = false;
        let run = match adopted.take() {
            Some(s) => {
                ended_before = e.get(w).is_some_and(|c| c.state.terminated.is_some());
                Ok(s)
            }
            None => e.engine.run(&e, &plan, restart_count).await,
        };
        let began = Instant::now();
        let (state, code) = match run {
            Err(msg) => {
                e.event(Some(&plan.name), true, "Failed", format!("Error: {msg}"));
                (failed_run(128, "StartError", msg, &cid), 128)
            }
            Ok(started) => {
                if !ended_before {
                    set_running(&e, w, &started);
                }
                let probes = probes::spawn_for(&e, w);
                let exit = started.wait(&cid).await;
                probes.abort();
                match exit {
                    Ok(ended) => ended,
                    Err(err) => (failed_run(255, "Unknown", err, &cid), 255),
                }
            }
        };
        last_code = code;
        let ran = began.elapsed();
        let restart = !e.stopping() && should_restart(policy, code);
        info!(pod = %e.pod_ref(), container = %plan.name, code, restart, "container exited");
        e.update(w, |c| {
            c.state = state.clone();
            // Kubelet reports a completed init container as ready.
            c.ready = matches!(w, Which::Init(_)) && code == 0;
            c.started = false;
        });
        if !restart {
            return code;
        }
        let (delay, next) = next_backoff(backoff, ran);
        backoff = Some(next);
        if let Some(d) = delay {
            let msg = format!(
                "back-off {} restarting failed container={} pod={}",
                go_duration(d),
                plan.name,
                e.pod_ref()
            );
            e.update(w, |c| {
                c.last_state = Some(state.clone());
                c.state = waiting("CrashLoopBackOff", Some(msg));
            });
            e.event(
                Some(&plan.name),
                true,
                "BackOff",
                format!(
                    "Back-off restarting failed container {} in pod {}",
                    plan.name,
                    e.pod_ref()
                ),
            );
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = stop_rx.wait_for(|s| *s) => return code,
            }
        }
        e.update(w, |c| {
            c.last_state = Some(state.clone());
            c.restart_count += 1;
        });
    }
}

/// Records that a run of the container is going.
fn set_running(e: &PodEntry, w: Which, started: &Run) {
    let started_at = started.started_at.clone();
    e.update(w, |c| {
        c.state = ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(started_at),
            }),
            ..Default::default()
        };
        // Kubelet: ready once started (its startup probe passed) and, with a readiness probe,
        // once that passes.
        c.ready = !c.has_readiness && !c.has_startup && matches!(w, Which::Regular(_));
        c.started = !c.has_startup;
    });
}

/// What posting an event is: a new Event, or a repeat raising the count of one posted before.
#[derive(Debug, PartialEq)]
enum Post {
    Create,
    Repeat { name: String, count: i32 },
}

/// What makes two events the same: the container (field path), type, reason and message.
type EventKey = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The events posted about one pod, as kubelet's recorder correlates them: an event like one
/// posted before (same container, type, reason and message) raises that Event's count and
/// last timestamp instead of making another object. Pure.
#[derive(Default)]
struct EventLog {
    /// The name and count of each event posted.
    posted: HashMap<EventKey, (String, i32)>,
}

impl EventLog {
    fn key(ev: &Event) -> EventKey {
        (
            ev.involved_object.field_path.clone(),
            ev.type_.clone(),
            ev.reason.clone(),
            ev.message.clone(),
        )
    }

    /// How to post `ev`.
    fn next(&mut self, ev: &Event) -> Post {
        match self.posted.get_mut(&Self::key(ev)) {
            Some((name, count)) => {
                *count += 1;
                Post::Repeat {
                    name: name.clone(),
                    count: *count,
                }
            }
            None => Post::Create,
        }
    }

    /// `ev` was created (under its own name).
    fn created(&mut self, ev: &Event) {
        let name = ev.metadata.name.clone().unwrap_or_default();
        self.posted.insert(Self::key(ev), (name, 1));
    }

    /// The Event a repeat was to raise is gone (expired): the next one is created anew.
    fn forget(&mut self, ev: &Event) {
        self.posted.remove(&Self::key(ev));
    }
}

/// Posts a pod's events in the order they come (failures are logged): a repeat patches the
/// count and last timestamp of the Event it repeats.
async fn post_events(api: Api<Event>, mut rx: mpsc::UnboundedReceiver<Event>) {
    let mut log = EventLog::default();
    while let Some(ev) = rx.recv().await {
        if let Post::Repeat { name, count } = log.next(&ev) {
            let patch = serde_json::json!({"count": count, "lastTimestamp": ev.last_timestamp});
            let params = kube::api::PatchParams::default();
            match api
                .patch(&name, &params, &kube::api::Patch::Merge(&patch))
                .await
            {
                Ok(_) => continue,
                Err(e) => {
                    debug!(error = %e, event = %name, "raising an event's count");
                    log.forget(&ev);
                }
            }
        }
        match api.create(&Default::default(), &ev).await {
            Ok(_) => log.created(&ev),
            Err(e) => debug!(error = %e, "posting an event"),
        }
    }
}

/// Kubelet's local storage eviction for the pod (see [`crate::eviction`]): every
/// [`SandboxConfig::eviction_interval`] while any container of it may still run, its ephemeral storage
/// is measured; once over a limit (a container's or the pod's `ephemeral-storage` limit, or on
/// serverless hosts the storage it is provisioned with) the pod is evicted: an `Evicted`
/// event, its containers killed with no grace period and never restarted, its status
/// `Failed`/`Evicted` with kubelet's message.
async fn watch_storage(e: Arc<PodEntry>) {
    let every = e.eviction_interval;
    let serverless = e
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        == Some(SERVERLESS_SCHEDULER);
    let provisioned = serverless.then_some(e.plan.ephemeral_storage_bytes);
    let eviction = loop {
        tokio::select! {
            _ = e.wait_done() => return,
            () = tokio::time::sleep(every) => {}
        }
        if e.stopping() || e.done.borrow().is_some() {
            return;
        }
        let usage = e.engine.storage_usage(&e).await;
        if let Some(ev) = usage.and_then(|u| crate::eviction::verdict(&e.plan, &u, provisioned)) {
            break ev;
        }
    };
    *lock(&e.evicted) = Some(eviction.message());
    let pod = e.pod_ref_of();
    let entry = e.clone();
    let stop = move || async move {
        let _ = entry.stopping.send_replace(true);
        let running = entry.running_names();
        for name in &running {
            if let Err(err) = entry.kill(name, 9).await {
                debug!(container = %name, error = %err, "SIGKILL for an eviction");
            }
        }
        if tokio::time::timeout(Duration::from_secs(30), entry.wait_done())
            .await
            .is_err()
        {
            warn!(pod = %entry.pod_ref(), "containers did not end after the eviction's SIGKILL");
        }
    };
    // A task of its own: once the containers are killed the pod ends and its tasks (this
    // watcher among them) are aborted, and the status must still be written.
    let (client, pod_ref) = (e.client.clone(), e.pod_ref());
    let evicting = tokio::spawn(async move {
        if let Err(err) = crate::eviction::evict(&client, &pod, &eviction, stop).await {
            warn!(pod = %pod_ref, error = %err, "writing the eviction status");
        }
    });
    let _ = evicting.await;
}

/// Probes (readiness, liveness, startup) of running containers.
mod probes {
    use super::*;

    /// The probe tasks of one run; aborted when the run ends.
    pub(super) struct Running(Option<tokio::task::JoinHandle<()>>);

    impl Running {
        pub(super) fn abort(self) {
            if let Some(h) = self.0 {
                h.abort();
            }
        }
    }

    pub(super) fn spawn_for(e: &Arc<PodEntry>, w: Which) -> Running {
        let Which::Regular(i) = w else {
            return Running(None);
        };
        let Some(spec) = e
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.get(i))
            .cloned()
        else {
            return Running(None);
        };
        if spec.readiness_probe.is_none()
            && spec.liveness_probe.is_none()
            && spec.startup_probe.is_none()
        {
            return Running(None);
        }
        let Some(ip) = e.ip() else {
            return Running(None);
        };
        let Some(exec) = e.engine.probe_exec(e, &spec.name) else {
            return Running(None);
        };
        let target = crate::probe::ProbeTarget {
            pod_ip: ip,
            netns: Some(bridge_netns(&e.host)),
            exec,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handle = crate::probe::spawn(&spec, target, tx);
        let entry = e.clone();
        let name = spec.name.clone();
        let grace = Duration::from_secs(entry.plan.grace_period_secs);
        let watcher = tokio::spawn(async move {
            let _handle = AbortOnDrop(handle);
            while let Some(ev) = rx.recv().await {
                match ev {
                    crate::probe::ProbeEvent::Started => entry.update(w, |c| {
                        c.started = true;
                        if !c.has_readiness {
                            c.ready = true;
                        }
                    }),
                    crate::probe::ProbeEvent::Ready(r) => {
                        if entry.get(w).is_some_and(|c| c.ready != r) {
                            entry.update(w, |c| c.ready = r);
                        }
                    }
                    // Kubelet's `Unhealthy` for every failed attempt of any probe.
                    crate::probe::ProbeEvent::Failed(msg) => {
                        entry.event(Some(&name), true, "Unhealthy", msg);
                    }
                    // At the threshold only `Killing` (the attempt's `Unhealthy` went above).
                    crate::probe::ProbeEvent::LivenessFailed(_)
                    | crate::probe::ProbeEvent::StartupFailed(_) => {
                        let probe = match ev {
                            crate::probe::ProbeEvent::LivenessFailed(_) => "liveness",
                            _ => "startup",
                        };
                        entry.event(
                            Some(&name),
                            false,
                            "Killing",
                            format!("Container {name} failed {probe} probe, will be restarted"),
                        );
                        kill_with_grace(&entry, w, grace).await;
                        return;
                    }
                }
            }
        });
        Running(Some(watcher))
    }

    struct AbortOnDrop(tokio::task::JoinHandle<()>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
}

/// SIGTERM to the container's current run, then SIGKILL after `grace` unless the run ended
/// (as its supervisor saw it; not the runtime's word, which may not know the container).
async fn kill_with_grace(e: &Arc<PodEntry>, w: Which, grace: Duration) {
    let Some(c) = e.get(w) else {
        return;
    };
    let over = || {
        e.get(w)
            .is_none_or(|now| now.restart_count != c.restart_count || !now.running())
    };
    let _ = e.kill(&c.name, 15).await;
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if over() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !over() {
        let _ = e.kill(&c.name, 9).await;
    }
}

/// The pod network's own namespace (where the bridge is, and pod IPs are reachable).
fn bridge_netns(host: &pod::Host) -> PathBuf {
    let name = host
        .network
        .as_ref()
        .map(|n| n.netns.clone())
        .unwrap_or_default();
    PathBuf::from("/run/netns").join(name)
}

// ---------------------------------------------------------------------------------------------
// The runtime.

/// Pods of this host in real sandboxes.
pub struct SandboxRuntime {
    config: SandboxConfig,
    client: kube::Client,
    store: Arc<ImageStore>,
    runtimes: HashMap<RuntimeKind, Arc<dyn SbRuntime>>,
    /// Set when pods run in micro-VMs.
    vm_host: Option<vm::VmHost>,
    pods: Arc<Mutex<HashMap<String, Arc<PodEntry>>>>,
    removing: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    changes_tx: mpsc::UnboundedSender<String>,
    changes_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Sandbox creations and first container starts in progress at once (see
    /// [`start_concurrency`]).
    starts: Arc<tokio::sync::Semaphore>,
}

/// How many pods create their sandbox (or start their first containers) at once: four per CPU.
/// A burst of pods then starts in arrival order in waves instead of all sharing the CPUs until
/// the last one is done, so most of them run sooner and the whole burst is not slower.
pub fn start_concurrency(cpus: usize) -> usize {
    cpus.max(1) * 4
}

impl std::fmt::Debug for SandboxRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxRuntime")
            .field("data_dir", &self.config.data_dir)
            .finish()
    }
}

/// The tool a runtime kind needs, and the package that has it.
fn tool_of(kind: RuntimeKind) -> (&'static str, &'static str) {
    match kind {
        RuntimeKind::Gvisor => ("runsc", "runsc"),
        RuntimeKind::Container => ("crun", "crun"),
        RuntimeKind::Microvm => ("qemu-system-x86_64", "qemu-system-x86"),
    }
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    on_search_path(tool, &path)
}

fn on_search_path(tool: &str, path: &std::ffi::OsStr) -> bool {
    std::env::split_paths(path).any(|d| d.join(tool).is_file())
}

/// The error for a runtime whose tool is not on `path`, naming the package to install.
fn missing_tool(kind: RuntimeKind, path: &std::ffi::OsStr) -> Option<String> {
    let (tool, package) = tool_of(kind);
    (kind != RuntimeKind::Microvm && !on_search_path(tool, path))
        .then(|| format!("{tool} not found on PATH: apt-get install {package}"))
}

fn failed(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Failed(e.to_string())
}

/// Opens the sandbox runtime of `kind`, with a clear message when its tool is missing.
fn open_runtime(
    kind: RuntimeKind,
    data_dir: &std::path::Path,
) -> Result<Arc<dyn SbRuntime>, RuntimeError> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    if let Some(msg) = missing_tool(kind, &path) {
        return Err(RuntimeError::Failed(msg));
    }
    sandbox::runtime::open_for_pods(kind, data_dir)
        .map(Arc::from)
        .map_err(failed)
}

impl SandboxRuntime {
    /// Checks the tools (runsc/crun found on PATH, clear error naming the apt package otherwise), prepares the image store and the network.
    pub async fn new(
        config: SandboxConfig,
        client: kube::Client,
    ) -> Result<Arc<Self>, RuntimeError> {
        let mut runtimes = HashMap::new();
        let mut vm_host = None;
        for kind in [config.serverless_runtime, config.worker_runtime] {
            if kind == RuntimeKind::Microvm {
                if vm_host.is_none() {
                    vm_host = Some(vm::VmHost::open()?);
                }
            } else if let std::collections::hash_map::Entry::Vacant(v) = runtimes.entry(kind) {
                v.insert(open_runtime(kind, &config.data_dir)?);
            }
        }
        for tool in ["ip", "nsenter", "unshare"] {
            if !on_path(tool) {
                let pkg = if tool == "ip" {
                    "iproute2"
                } else {
                    "util-linux"
                };
                return Err(RuntimeError::Failed(format!(
                    "{tool} not found on PATH: apt-get install {pkg}"
                )));
            }
        }
        let store = ImageStore::open(
            config.data_dir.join("images"),
            StoreOptions {
                insecure_registries: config.insecure_registries.clone(),
                cache_limit_bytes: config.image_cache_limit_bytes,
            },
        )
        .map_err(|e| failed(format!("opening the image store: {e}")))?;
        config
            .network
            .ensure()
            .await
            .map_err(|e| failed(format!("preparing the pod network: {e}")))?;
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        Ok(Arc::new(SandboxRuntime {
            config,
            client,
            store: Arc::new(store),
            runtimes,
            vm_host,
            pods: Arc::new(Mutex::new(HashMap::new())),
            removing: Mutex::new(HashMap::new()),
            changes_tx,
            changes_rx: Mutex::new(Some(changes_rx)),
            starts: Arc::new(tokio::sync::Semaphore::new(start_concurrency(
                std::thread::available_parallelism().map_or(1, usize::from),
            ))),
        }))
    }

    /// The image store (shared by every pod of the host).
    pub fn images(&self) -> &Arc<ImageStore> {
        &self.store
    }

    fn host(&self) -> pod::Host {
        pod::Host {
            data_dir: self.config.data_dir.clone(),
            images: self.store.clone(),
            network: Some(self.config.network.clone()),
            pull: PullOptions::default(),
        }
    }

    fn kind_for(&self, pod: &Pod) -> RuntimeKind {
        let serverless = pod.spec.as_ref().and_then(|s| s.scheduler_name.as_deref())
            == Some(SERVERLESS_SCHEDULER);
        if serverless {
            self.config.serverless_runtime
        } else {
            self.config.worker_runtime
        }
    }

    /// The engine of a new pod of runtime `kind`.
    fn engine_for(&self, kind: RuntimeKind) -> Result<Arc<dyn PodEngine>, RuntimeError> {
        if kind == RuntimeKind::Microvm
            && let Some(vm_host) = &self.vm_host
        {
            return Ok(Arc::new(vm::VmEngine::new(vm_host.clone())));
        }
        let runtime = self
            .runtimes
            .get(&kind)
            .cloned()
            .ok_or_else(|| failed(format!("runtime {kind} is not available")))?;
        Ok(Arc::new(oci::OciEngine::new(runtime, None)))
    }

    /// The images of a recorded pod, from the store (no network): a pod taken back after an
    /// agent restart needs them to run its containers again.
    fn stored_images(&self, plan: &PodPlan) -> BTreeMap<String, Image> {
        let mut images = BTreeMap::new();
        for c in plan.init_containers.iter().chain(&plan.containers) {
            if let Ok(src) = c.image.parse::<Source>()
                && let Ok(Some(img)) = self.store.get(&src)
            {
                images.insert(c.image.clone(), img);
            }
        }
        images
    }

    fn entry(&self, uid: &str) -> Option<Arc<PodEntry>> {
        lock(&self.pods).get(uid).cloned()
    }

    fn find(&self, namespace: &str, name: &str) -> Option<Arc<PodEntry>> {
        lock(&self.pods)
            .values()
            .find(|e| e.namespace == namespace && e.name == name)
            .cloned()
    }

    /// Waits until the cleanup that [`Runtime::remove`] started for `uid` is over.
    pub async fn removed(&self, uid: &str) {
        let h = lock(&self.removing).remove(uid);
        if let Some(h) = h {
            let _ = h.await;
        }
    }

    /// ConfigMaps and Secrets the pod refers to, fetched from the API.
    async fn fetch_objects(&self, pod: &Pod, namespace: &str) -> Result<Objects, String> {
        let mut objects = Objects::new();
        for (key, optional) in sandbox::plan::references(pod) {
            let (kind, name) = key.split_once('/').unwrap_or(("", &key));
            let data = match kind {
                "configmap" => {
                    let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
                    api.get_opt(name).await.map(|o| {
                        o.map(|cm| {
                            let mut d: BTreeMap<String, Vec<u8>> = cm
                                .data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.into_bytes()))
                                .collect();
                            for (k, v) in cm.binary_data.unwrap_or_default() {
                                d.insert(k, v.0);
                            }
                            d
                        })
                    })
                }
                _ => {
                    let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
                    api.get_opt(name).await.map(|o| {
                        o.map(|s| {
                            let mut d: BTreeMap<String, Vec<u8>> = s
                                .data
                                .unwrap_or_default()
                                .into_iter()
                                .map(|(k, v)| (k, v.0))
                                .collect();
                            for (k, v) in s.string_data.unwrap_or_default() {
                                d.insert(k, v.into_bytes());
                            }
                            d
                        })
                    })
                }
            };
            match data {
                Ok(Some(d)) => {
                    objects.insert(key, d);
                }
                Ok(None) if optional => {}
                Ok(None) => return Err(format!("{kind} {name:?} not found")),
                Err(e) => return Err(format!("getting {kind} {name:?}: {e}")),
            }
        }
        Ok(objects)
    }

    /// Registry credentials for the pod: its imagePullSecrets, then the cluster registry's.
    async fn credentials(&self, pod: &Pod, namespace: &str) -> Vec<(String, Auth)> {
        let mut creds = Vec::new();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        for r in pod
            .spec
            .as_ref()
            .and_then(|s| s.image_pull_secrets.clone())
            .unwrap_or_default()
        {
            if let Ok(Some(s)) = secrets.get_opt(&r.name).await {
                let data = s.data.unwrap_or_default();
                for key in [".dockerconfigjson", ".dockercfg"] {
                    if let Some(b) = data.get(key) {
                        creds.extend(docker_config_auths(&b.0));
                    }
                }
            }
        }
        let cluster: Api<Secret> = Api::namespaced(self.client.clone(), REGISTRY_SECRET.0);
        if let Ok(Some(s)) = cluster.get_opt(REGISTRY_SECRET.1).await {
            let data = s.data.unwrap_or_default();
            let text = |k: &str| {
                data.get(k)
                    .map(|v| String::from_utf8_lossy(&v.0).trim().to_owned())
            };
            if let (Some(endpoint), Some(username), Some(password)) =
                (text("endpoint"), text("username"), text("password"))
            {
                creds.push((endpoint, Auth::Basic { username, password }));
            }
            if let Some(ca) = data.get("ca.crt")
                && let Err(err) = self.store.trust_roots_pem(&ca.0)
            {
                warn!(error = %err, "the cluster registry's ca.crt is not usable");
            }
        }
        creds
    }

    /// Pulls one image as kubelet does under `policy`, with its events: an image on this host
    /// is used as it is (no registry) unless the policy is `Always`; a missing one is pulled,
    /// retried with back-off (ImagePullBackOff) until it succeeds or the pod is stopped
    /// (`Never`: ErrImageNeverPull).
    async fn pull(
        &self,
        e: &Arc<PodEntry>,
        image: &str,
        policy: PullPolicy,
        creds: &[(String, Auth)],
    ) -> Result<Image, RuntimeError> {
        let users: Vec<Which> = e
            .plan
            .init_containers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.image == image)
            .map(|(i, _)| Which::Init(i))
            .chain(
                e.plan
                    .containers
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| c.image == image)
                    .map(|(i, _)| Which::Regular(i)),
            )
            .collect();
        let first = users.first().map(|w| e.plan_of(*w).name.clone());
        // Every container of the image waits for the same reason.
        let set_waiting = |reason: &str, message: Option<String>| {
            for w in &users {
                e.update(*w, |c| c.state = waiting(reason, message.clone()));
            }
        };
        let src: Source = image
            .parse()
            .map_err(|err| failed(format!("image {image:?}: {err}")))?;
        if policy != PullPolicy::Always
            && let Ok(Some(img)) = self.store.get(&src)
        {
            // Marks it used (image garbage collection); no network for a present image.
            let _ = self.store.ensure(&src, &PullOptions::default()).await;
            e.event(
                first.as_deref(),
                false,
                "Pulled",
                format!("Container image \"{image}\" already present on machine"),
            );
            return Ok(img);
        }
        if policy == PullPolicy::Never {
            let msg =
                format!("Container image \"{image}\" is not present with pull policy of Never");
            e.event(first.as_deref(), true, "ErrImageNeverPull", msg.clone());
            set_waiting("ErrImageNeverPull", Some(msg.clone()));
            return Err(failed(msg));
        }
        let auth = match &src {
            Source::Registry(r) => auth_for(r.registry(), creds),
            _ => Auth::Anonymous,
        };
        let opts = PullOptions {
            auth,
            progress: None,
        };
        let mut backoff: Option<Duration> = None;
        let mut stop_rx = e.stopping.subscribe();
        loop {
            e.event(
                first.as_deref(),
                false,
                "Pulling",
                format!("Pulling image \"{image}\""),
            );
            let t0 = Instant::now();
            let pulled = if policy == PullPolicy::Always {
                self.store.pull(&src, &opts).await
            } else {
                self.store.ensure(&src, &opts).await
            };
            match pulled {
                Ok(img) => {
                    e.event(
                        first.as_deref(),
                        false,
                        "Pulled",
                        format!(
                            "Successfully pulled image \"{image}\" in {:.3}s",
                            t0.elapsed().as_secs_f64()
                        ),
                    );
                    set_waiting("ContainerCreating", None);
                    return Ok(img);
                }
                Err(err) => {
                    let msg = format!("Failed to pull image \"{image}\": {}", error_chain(&err));
                    warn!(pod = %e.pod_ref(), "{msg}");
                    e.event(first.as_deref(), true, "Failed", msg.clone());
                    e.event(
                        first.as_deref(),
                        true,
                        "Failed",
                        "Error: ErrImagePull".into(),
                    );
                    set_waiting("ErrImagePull", Some(msg.clone()));
                    let (_, next) = next_backoff(backoff, Duration::ZERO);
                    let delay = backoff.unwrap_or(BACKOFF_INITIAL);
                    backoff = Some(next);
                    let bmsg = format!("Back-off pulling image \"{image}\"");
                    e.event(first.as_deref(), false, "BackOff", bmsg.clone());
                    set_waiting("ImagePullBackOff", Some(bmsg.clone()));
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop_rx.wait_for(|s| *s) => {
                            return Err(failed(msg));
                        }
                    }
                }
            }
        }
    }

    async fn start_pod(&self, pod: &Pod, pod_ip: &str) -> Result<Started, RuntimeError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if let Some(e) = self.entry(&uid) {
            if e.done.borrow().is_none()
                && !e.stopping()
                && let Some(s) = lock(&e.started).clone()
            {
                return Ok(s);
            }
            // A pod started again after it ended: clean up and start afresh.
            self.remove_now(&uid).await;
        }
        let namespace = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let ip: Option<Ipv4Addr> = if pod_ip.is_empty() {
            None
        } else {
            Some(
                pod_ip
                    .parse()
                    .map_err(|err| failed(format!("pod IP {pod_ip:?}: {err}")))?,
            )
        };
        let objects = self.fetch_objects(pod, &namespace).await;
        let resolved = objects
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|o| sandbox::plan::resolve_env(pod, o).map_err(|e| e.to_string()));
        let plan = match &resolved {
            Ok(p) => sandbox::plan::plan(p),
            // Reported below as CreateContainerConfigError.
            Err(_) => sandbox::plan::plan(&sandbox::plan::strip_env_references(pod)),
        }
        .map_err(failed)?;
        let engine = self.engine_for(self.kind_for(pod))?;
        let prefix = id_prefix(engine.kind());
        let spec = pod.spec.clone().unwrap_or_default();
        let no_images = BTreeMap::new();
        let shared = Shared::of(&plan, &spec, plan.init_containers.is_empty(), |c, s| {
            let id = format!("{prefix}://{}", pod::container_id(&plan.id, &c.name));
            let mut state = CState::new(c, s, id, &no_images);
            if s.is_none() {
                state.state = waiting("PodInitializing", None);
            }
            state
        });
        let entry = NewEntry {
            uid: &uid,
            pod,
            plan: &plan,
            host: self.host(),
            engine,
            images: BTreeMap::new(),
            shared,
        };
        let e = self.new_entry(entry);
        lock(&self.pods).insert(uid.clone(), e.clone());
        e.changed();

        // ConfigMaps/Secrets missing: kubelet's CreateContainerConfigError.
        let objects = match objects.and_then(|o| resolved.map(|_| o)) {
            Ok(o) => o,
            Err(msg) => return Err(self.config_error(&e, msg)),
        };
        let files = match sandbox::plan::volume_files(pod, &objects) {
            Ok(f) => f,
            Err(err) => return Err(self.config_error(&e, err.to_string())),
        };

        // Images. The credentials (two API reads) only when a registry will be asked.
        let wanted: Vec<(String, PullPolicy)> = {
            let mut v: Vec<(String, PullPolicy)> = Vec::new();
            for c in plan.init_containers.iter().chain(&plan.containers) {
                if !v.iter().any(|(i, _)| *i == c.image) {
                    v.push((c.image.clone(), pull_policy(pod, &c.image)));
                }
            }
            v
        };
        let needs_registry = wanted.iter().any(|(image, policy)| match policy {
            PullPolicy::Always => true,
            PullPolicy::Never => false,
            PullPolicy::IfNotPresent => !image
                .parse::<Source>()
                .is_ok_and(|src| matches!(self.store.get(&src), Ok(Some(_)))),
        });
        let creds = if needs_registry {
            self.credentials(pod, &namespace).await
        } else {
            Vec::new()
        };
        let mut images = BTreeMap::new();
        for (image, policy) in &wanted {
            let img = self.pull(&e, image, *policy, &creds).await?;
            images.insert(image.clone(), img);
        }
        {
            let mut s = lock(&e.shared);
            let s = &mut *s;
            for c in s.init.iter_mut().chain(s.regular.iter_mut()) {
                if let Some(img) = images.get(&c.image) {
                    c.image_id = image_id_of(img);
                }
            }
        }
        *lock(&e.images) = images;
        if e.stopping() {
            return Err(failed("the pod was stopped while starting"));
        }
        let ctx = StartContext {
            pod,
            files: &files,
            ip,
            starts: &self.starts,
        };
        match e.engine.start(&e, &ctx).await? {
            Boot::EndedInInit(code) => Ok(self.ended_in_init(&e, code)),
            Boot::Running(first_runs) => {
                let started = self.started_of(&e);
                *lock(&e.started) = Some(started.clone());
                self.spawn_supervisors(&e, first_runs);
                Ok(started)
            }
        }
    }

    /// The pod ran, and ended in an init container that will not run again (its policy is
    /// Never): like kubelet, the pod fails with that code; its regular containers never ran.
    fn ended_in_init(&self, e: &Arc<PodEntry>, code: i32) -> Started {
        let started = self.started_of(e);
        *lock(&e.started) = Some(started.clone());
        let _ = e.done.send_replace(Some(code));
        e.changed();
        started
    }

    fn new_entry(&self, n: NewEntry<'_>) -> Arc<PodEntry> {
        Arc::new(PodEntry {
            uid: n.uid.to_owned(),
            name: n.plan.name.clone(),
            namespace: n.plan.namespace.clone(),
            node: n
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            plan: n.plan.clone(),
            pod: n.pod.clone(),
            host: n.host,
            engine: n.engine,
            client: self.client.clone(),
            changes: self.changes_tx.clone(),
            images: Mutex::new(n.images),
            shared: Mutex::new(n.shared),
            stopping: watch::channel(false).0,
            evicted: Mutex::new(None),
            done: watch::channel(None).0,
            version: watch::channel(0).0,
            tasks: Mutex::new(Vec::new()),
            events: {
                let (tx, rx) = mpsc::unbounded_channel();
                let api = Api::namespaced(self.client.clone(), &n.plan.namespace);
                tokio::spawn(post_events(api, rx));
                tx
            },
            started: Mutex::new(None),
            eviction_interval: self.config.eviction_interval,
        })
    }

    /// Takes over a pod found running after an agent restart, with the runs still going.
    fn adopted(&self, e: &Arc<PodEntry>, runs: BTreeMap<usize, Run>) -> (String, Started) {
        let started = self.started_of(e);
        *lock(&e.started) = Some(started.clone());
        lock(&self.pods).insert(e.uid.clone(), e.clone());
        self.spawn_supervisors(e, runs);
        info!(pod = %e.pod_ref(), "adopted a running pod");
        (e.uid.clone(), started)
    }

    fn config_error(&self, e: &Arc<PodEntry>, msg: String) -> RuntimeError {
        e.event(None, true, "Failed", format!("Error: {msg}"));
        for i in 0..e.plan.containers.len() {
            e.update(Which::Regular(i), |c| {
                c.state = waiting("CreateContainerConfigError", Some(msg.clone()))
            });
        }
        failed(msg)
    }

    fn started_of(&self, e: &PodEntry) -> Started {
        let s = lock(&e.shared);
        Started {
            containers: s
                .init
                .iter()
                .chain(&s.regular)
                .map(|c| ContainerStarted {
                    name: c.name.clone(),
                    container_id: c.container_id.clone(),
                    image_id: c.image_id.clone(),
                })
                .collect(),
        }
    }

    /// One supervisor per regular container, and the task that resolves `wait`.
    fn spawn_supervisors(&self, e: &Arc<PodEntry>, mut adopted: BTreeMap<usize, Run>) {
        let handles: Vec<_> = (0..e.plan.containers.len())
            .map(|i| tokio::spawn(supervise(e.clone(), Which::Regular(i), adopted.remove(&i))))
            .collect();
        let entry = e.clone();
        let coordinator = tokio::spawn(async move {
            let mut codes = Vec::new();
            for h in handles {
                codes.push(h.await.unwrap_or(255));
            }
            let code = pod_exit_code(&codes);
            info!(pod = %entry.pod_ref(), code, "no container of the pod will run again");
            let _ = entry.done.send_replace(Some(code));
            entry.changed();
        });
        lock(&e.tasks).push(coordinator);
        lock(&e.tasks).push(tokio::spawn(watch_storage(e.clone())));
    }

    async fn stop_pod(&self, uid: &str, grace: Duration) -> Result<i32, RuntimeError> {
        let e = self
            .entry(uid)
            .ok_or_else(|| RuntimeError::UnknownPod(uid.to_owned()))?;
        let _ = e.stopping.send_replace(true);
        let running = e.running_names();
        for name in &running {
            e.event(
                Some(name),
                false,
                "Killing",
                format!("Stopping container {name}"),
            );
            if let Err(err) = e.kill(name, 15).await {
                debug!(container = %name, error = %err, "SIGTERM");
            }
        }
        let started = lock(&e.started).is_some();
        if !started {
            // Still starting (pulling, initializing): the start gives up on its own.
            let _ = e.done.send_replace(Some(137));
        }
        if tokio::time::timeout(grace, e.wait_done()).await.is_err() {
            for name in &running {
                let _ = e.kill(name, 9).await;
            }
            if tokio::time::timeout(Duration::from_secs(30), e.wait_done())
                .await
                .is_err()
            {
                warn!(pod = %e.pod_ref(), "containers did not end after SIGKILL");
                let _ = e.done.send_replace(Some(137));
            }
        }
        let code = e.wait_done().await;
        Ok(code)
    }

    /// Stops everything of the pod and removes it from the host.
    async fn remove_now(&self, uid: &str) {
        let Some(e) = lock(&self.pods).remove(uid) else {
            return;
        };
        cleanup(e).await;
        if let Some((store, pods)) = self.image_gc() {
            collect_images(store, pods).await;
        }
    }

    /// What [`collect_images`] needs, when the image cache has a limit.
    fn image_gc(&self) -> Option<ImageGc> {
        self.config
            .image_cache_limit_bytes
            .map(|_| (self.store.clone(), self.pods.clone()))
    }
}

type ImageGc = (Arc<ImageStore>, Arc<Mutex<HashMap<String, Arc<PodEntry>>>>);

/// The store names of the images of every pod the agent holds (starting, running or stopping;
/// a pod is registered before its images are ensured).
fn images_in_use(pods: &Mutex<HashMap<String, Arc<PodEntry>>>) -> HashSet<String> {
    lock(pods)
        .values()
        .flat_map(|e| {
            e.plan
                .init_containers
                .iter()
                .chain(&e.plan.containers)
                .filter_map(|c| c.image.parse::<Source>().ok())
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Evicts least recently used images no pod uses while the cache is over its limit. The pods
/// are read once the store is held (no pull or lookup in progress), so a pod that got its image
/// is counted.
async fn collect_images(store: Arc<ImageStore>, pods: Arc<Mutex<HashMap<String, Arc<PodEntry>>>>) {
    match store.gc_async(|| images_in_use(&pods)).await {
        Ok(r) if !r.evicted_images.is_empty() || !r.removed_layers.is_empty() => info!(
            evicted = ?r.evicted_images,
            layers_removed = r.removed_layers.len(),
            bytes_left = r.size_after,
            "image cache collected"
        ),
        Ok(_) => {}
        Err(err) => warn!(error = %error_chain(&err), "image cache collection"),
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut s = err.source();
    while let Some(x) = s {
        msg.push_str(&format!(": {x}"));
        s = x.source();
    }
    msg
}

/// Kills what still runs of the pod, then removes its containers, mounts, network attachment
/// and directory.
async fn cleanup(e: Arc<PodEntry>) {
    let _ = e.stopping.send_replace(true);
    if lock(&e.started).is_none() && e.done.borrow().is_none() {
        // Still starting: the start gives up on its own; nothing of it will run.
        e.done.send_replace(Some(137));
    }
    e.engine.kill_all(&e).await;
    if tokio::time::timeout(Duration::from_secs(30), e.wait_done())
        .await
        .is_err()
    {
        warn!(pod = %e.pod_ref(), "containers still running at removal");
    }
    for t in lock(&e.tasks).drain(..) {
        t.abort();
    }
    if let Err(err) = e.engine.remove(&e).await {
        warn!(pod = %e.pod_ref(), error = %err, "removing the pod sandbox");
    }
    info!(pod = %e.pod_ref(), "pod removed from the host");
}

impl Runtime for SandboxRuntime {
    fn version(&self) -> String {
        let kind = self.config.serverless_runtime;
        format!("{kind}://{}", env!("CARGO_PKG_VERSION"))
    }

    async fn start(&self, pod: &Pod, pod_ip: &str) -> Result<Started, RuntimeError> {
        let result = self.start_pod(pod, pod_ip).await;
        if result.is_err() {
            // A pod that failed to start runs nothing: `wait` answers at once.
            let uid = pod.metadata.uid.as_deref().unwrap_or_default();
            if let Some(e) = self.entry(uid)
                && lock(&e.started).is_none()
                && e.done.borrow().is_none()
            {
                e.done.send_replace(Some(128));
                e.changed();
            }
        }
        result
    }

    async fn wait(&self, uid: &str) -> Result<i32, RuntimeError> {
        let e = self
            .entry(uid)
            .ok_or_else(|| RuntimeError::UnknownPod(uid.to_owned()))?;
        Ok(e.wait_done().await)
    }

    async fn stop(&self, uid: &str, grace: Duration) -> Result<i32, RuntimeError> {
        self.stop_pod(uid, grace).await
    }

    fn remove(&self, uid: &str) {
        let Some(e) = lock(&self.pods).remove(uid) else {
            return;
        };
        let gc = self.image_gc();
        let h = tokio::spawn(async move {
            cleanup(e).await;
            if let Some((store, pods)) = gc {
                collect_images(store, pods).await;
            }
        });
        lock(&self.removing).insert(uid.to_owned(), h);
    }

    fn pod_status(&self, uid: &str) -> Option<RuntimeStatus> {
        self.entry(uid).map(|e| e.status())
    }

    fn take_changes(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        lock(&self.changes_rx).take()
    }

    async fn recover(&self) -> HashMap<String, Started> {
        recover::run(self).await
    }
}

// ---------------------------------------------------------------------------------------------
// Recovery after an agent restart.

mod recover {
    use super::*;

    pub(super) async fn run(rt: &SandboxRuntime) -> HashMap<String, Started> {
        let mut out = HashMap::new();
        let host = rt.host();
        for record in pod::list(&rt.config.data_dir) {
            let plan = &record.plan;
            let adopted = if record.runtime == RuntimeKind::Microvm {
                let Some(vm_host) = rt.vm_host.clone() else {
                    warn!(pod = %plan.id, "recorded micro-VM pod, but this agent runs no micro-VMs");
                    continue;
                };
                rt.adopt_vm(vm_host, &host, &record).await
            } else {
                let Some(runtime) = rt.runtimes.get(&record.runtime).cloned() else {
                    warn!(pod = %plan.id, runtime = %record.runtime, "recorded pod of a runtime this agent does not run");
                    continue;
                };
                rt.adopt_oci(&host, runtime, &record).await
            };
            if let Some((uid, started)) = adopted {
                out.insert(uid, started);
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Streams: logs, exec, attach, port-forward.

fn not_found(what: String) -> StreamError {
    StreamError::NotFound(what)
}

impl SandboxRuntime {
    fn container_of(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
    ) -> Result<(Arc<PodEntry>, Which), StreamError> {
        let e = self
            .find(namespace, pod)
            .ok_or_else(|| not_found(format!("pod \"{pod}\" not found on this host")))?;
        let w = match container {
            None => Which::Regular(0),
            Some(name) => {
                if let Some(i) = e.plan.containers.iter().position(|c| c.name == name) {
                    Which::Regular(i)
                } else if let Some(i) = e.plan.init_containers.iter().position(|c| c.name == name) {
                    Which::Init(i)
                } else {
                    return Err(not_found(format!(
                        "container {name} is not valid for pod {pod}"
                    )));
                }
            }
        };
        if e.get(w).is_none() {
            return Err(not_found(format!("pod \"{pod}\" has no containers")));
        }
        Ok((e, w))
    }
}

/// Resolves when the run `restart` of the container is over (or the pod is gone).
fn run_over(e: &Arc<PodEntry>, w: Which, restart: i32) -> futures::future::BoxFuture<'static, ()> {
    let entry = e.clone();
    let mut rx = e.version.subscribe();
    async move {
        loop {
            let over = entry.get(w).is_none_or(|c| {
                c.restart_count != restart
                    || !c.running() && c.state.waiting.is_none()
                    || c.state.waiting.as_ref().and_then(|x| x.reason.as_deref())
                        == Some("CrashLoopBackOff")
            }) || entry.done.borrow().is_some();
            if over {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
    .boxed()
}

#[async_trait::async_trait]
impl PodStreams for SandboxRuntime {
    async fn logs(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        options: LogOptions,
    ) -> Result<BoxStream<'static, std::io::Result<Bytes>>, StreamError> {
        let (e, w) = self.container_of(namespace, pod, container)?;
        let c = e.get(w).ok_or_else(|| not_found(pod.to_owned()))?;
        let dir = container::dir(&self.config.data_dir, &e.host_id(&c.name));
        let run = if options.previous {
            if c.restart_count == 0 {
                return Err(StreamError::BadRequest(format!(
                    "previous terminated container \"{}\" in pod \"{pod}\" not found",
                    c.name
                )));
            }
            c.restart_count - 1
        } else {
            c.restart_count
        };
        let mut path = container::log_path(&dir, u32::try_from(run).unwrap_or(0));
        if !path.exists() && !options.previous && run > 0 {
            // Between a back-off and the next run's start the current container is still the
            // last one (kubelet's restart count rises as the new one is created).
            path = container::log_path(&dir, u32::try_from(run - 1).unwrap_or(0));
        }
        let ran = c.running() || c.state.terminated.is_some() || options.previous;
        if !path.exists() && ran {
            // Started, but nothing written yet: an empty log (followable).
            if let Some(parent) = path.parent() {
                let _ = std::fs::create_dir_all(parent);
            }
            let _ = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path);
        }
        if !path.exists() {
            return Err(StreamError::BadRequest(format!(
                "container \"{}\" in pod \"{pod}\" is waiting to start: {}",
                c.name,
                c.state
                    .waiting
                    .as_ref()
                    .and_then(|x| x.reason.clone())
                    .unwrap_or_else(|| "ContainerCreating".into())
            )));
        }
        let since = match (&options.since_time, options.since_seconds) {
            (Some(t), _) => Some(
                t.parse::<Timestamp>()
                    .map_err(|err| StreamError::BadRequest(format!("sinceTime {t:?}: {err}")))?,
            ),
            (None, Some(s)) => Timestamp::now()
                .checked_sub(jiff::SignedDuration::from_secs(s))
                .ok(),
            _ => None,
        };
        let done = if options.follow && !options.previous {
            run_over(&e, w, run)
        } else {
            futures::future::ready(()).boxed()
        };
        let read = sandbox::logs::ReadOptions {
            follow: options.follow && !options.previous,
            timestamps: options.timestamps,
            tail_lines: options.tail_lines.and_then(|n| u64::try_from(n).ok()),
            since,
            limit_bytes: options.limit_bytes.and_then(|n| u64::try_from(n).ok()),
        };
        Ok(sandbox::logs::read(path, read, done))
    }

    async fn exec(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        if request.command.is_empty() {
            return Err(StreamError::BadRequest(
                "you must specify at least one command for the container".into(),
            ));
        }
        let (e, w) = self.container_of(namespace, pod, container)?;
        let c = e.get(w).ok_or_else(|| not_found(pod.to_owned()))?;
        if !c.running() {
            return Err(StreamError::BadRequest(format!(
                "container {} is not running in pod {pod}",
                c.name
            )));
        }
        e.engine.exec(&e, &c.name, &request).await
    }

    async fn attach(
        &self,
        namespace: &str,
        pod: &str,
        container: Option<&str>,
        request: ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        let (e, w) = self.container_of(namespace, pod, container)?;
        let c = e.get(w).ok_or_else(|| not_found(pod.to_owned()))?;
        if !c.running() {
            return Err(StreamError::BadRequest(format!(
                "container {} is not running in pod {pod}",
                c.name
            )));
        }
        // Output from now on, read from the log; input (with `stdin: true`) and terminal
        // resizes (with `tty: true`) go to the container's shim, which keeps its stdin.
        let stdio = e.stdio_of(&c.name);
        if request.stdin && !stdio.stdin {
            return Err(StreamError::BadRequest(format!(
                "container {} in pod {pod} was not started with stdin: true; \
                 attach cannot send it input",
                c.name
            )));
        }
        let dir = container::dir(&self.config.data_dir, &e.host_id(&c.name));
        let (stdin, resize) = if request.stdin || (request.tty && stdio.tty) {
            let input = e.engine.attach_input(
                &e,
                &c.name,
                request.stdin,
                request.tty && stdio.tty,
                stdio.stdin_once,
            );
            match input.await {
                Ok(io) => io,
                Err(err) if request.stdin => {
                    return Err(StreamError::Internal(format!(
                        "attaching to the stdin of container {}: {err}",
                        c.name
                    )));
                }
                // Output only: a terminal that cannot be resized is no reason to refuse.
                Err(err) => {
                    debug!(container = %c.name, error = %err, "no resizes for this attach");
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        let path = container::log_path(&dir, u32::try_from(c.restart_count).unwrap_or(0));
        let mut raw_done = run_over(&e, w, c.restart_count).shared();
        let start = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let (out_tx, out_rx) = tokio::io::duplex(64 * 1024);
        let (err_tx, err_rx) = tokio::io::duplex(64 * 1024);
        let merged = request.tty || stdio.tty;
        let pump_done = raw_done.clone();
        tokio::spawn(follow_raw(
            path,
            start,
            out_tx,
            (!merged).then_some(err_tx),
            pump_done,
        ));
        let entry = e.clone();
        let exit = async move {
            (&mut raw_done).await;
            let code = entry
                .get(w)
                .and_then(|c| {
                    c.state
                        .terminated
                        .as_ref()
                        .or(c.last_state.as_ref().and_then(|l| l.terminated.as_ref()))
                        .map(|t| t.exit_code)
                })
                .unwrap_or(0);
            Ok(code)
        }
        .boxed();
        Ok(ExecSession {
            stdin,
            stdout: request
                .stdout
                .then(|| Box::pin(out_rx) as crate::streams::Reader),
            stderr: (request.stderr && !merged).then(|| Box::pin(err_rx) as crate::streams::Reader),
            resize,
            exit,
        })
    }

    async fn port_forward(
        &self,
        namespace: &str,
        pod: &str,
        port: u16,
    ) -> Result<tokio::net::TcpStream, StreamError> {
        let e = self
            .find(namespace, pod)
            .ok_or_else(|| not_found(format!("pod \"{pod}\" not found on this host")))?;
        let ip = e
            .ip()
            .ok_or_else(|| StreamError::BadRequest(format!("pod {pod} has no IP")))?;
        let netns = bridge_netns(&e.host);
        crate::netns::connect(
            &netns,
            SocketAddr::from((ip, port)),
            Duration::from_secs(10),
        )
        .await
        .map_err(|err| {
            StreamError::Internal(format!(
                "error forwarding port {port} to pod {pod}: failed to connect to {ip}:{port}: {err}"
            ))
        })
    }
}

/// A writer for a session's input: each chunk written goes to `send` (which answers false once
/// nobody takes more), and `close` runs at its end (not when `send` gave up).
fn input_pump<S, SF, C, CF>(mut send: S, close: C) -> crate::streams::Writer
where
    S: FnMut(Vec<u8>) -> SF + Send + 'static,
    SF: std::future::Future<Output = bool> + Send,
    C: FnOnce() -> CF + Send + 'static,
    CF: std::future::Future<Output = ()> + Send,
{
    use tokio::io::AsyncReadExt as _;
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match theirs.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if !send(chunk[..n].to_vec()).await {
                        return;
                    }
                }
            }
        }
        close().await;
    });
    Box::pin(ours)
}

/// A sender of a session's terminal sizes, each handed to `send` (false: stop).
fn resize_pump<S, SF>(mut send: S) -> mpsc::Sender<TermSize>
where
    S: FnMut(TermSize) -> SF + Send + 'static,
    SF: std::future::Future<Output = bool> + Send,
{
    let (tx, mut rx) = mpsc::channel::<TermSize>(8);
    tokio::spawn(async move {
        while let Some(size) = rx.recv().await {
            if !send(size).await {
                return;
            }
        }
    });
    tx
}

/// Copies what is appended to a CRI log file after `start` into `out` (stdout records, and
/// stderr ones unless `err` is given), until `done` and the end of the file.
async fn follow_raw(
    path: PathBuf,
    start: u64,
    mut out: tokio::io::DuplexStream,
    mut err: Option<tokio::io::DuplexStream>,
    done: futures::future::Shared<futures::future::BoxFuture<'static, ()>>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
    let Ok(mut f) = tokio::fs::File::open(&path).await else {
        return;
    };
    if f.seek(std::io::SeekFrom::Start(start)).await.is_err() {
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let finished = done.peek().is_some();
        let n = f.read(&mut chunk).await.unwrap_or(0);
        if n == 0 {
            if finished {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let Some(rec) = sandbox::logs::parse_line(&line[..line.len() - 1]) else {
                continue;
            };
            let mut text = rec.text;
            if !rec.partial {
                text.push(b'\n');
            }
            let target = match (&mut err, rec.stream.as_str()) {
                (Some(e), "stderr") => e,
                _ => &mut out,
            };
            if target.write_all(&text).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn repeated_events_raise_a_count() {
        let pod = crate::eviction::PodRef {
            namespace: "default".into(),
            name: "web".into(),
            uid: "u".into(),
            node: "n".into(),
        };
        let at = |secs: i64| Timestamp::from_second(1_800_000_000 + secs).unwrap();
        let ev = |container: &str, reason: &str, message: &str, secs| {
            crate::eviction::kubelet_event(
                &pod,
                Some(format!("spec.containers{{{container}}}")),
                true,
                reason,
                message.into(),
                at(secs),
            )
        };
        let mut log = EventLog::default();
        let first = ev("web", "Unhealthy", "Readiness probe failed: 404", 0);
        assert_eq!(log.next(&first), Post::Create);
        log.created(&first);
        let name = first.metadata.name.clone().unwrap();
        for count in 2..=3 {
            let again = ev(
                "web",
                "Unhealthy",
                "Readiness probe failed: 404",
                count.into(),
            );
            assert_eq!(
                log.next(&again),
                Post::Repeat {
                    name: name.clone(),
                    count
                }
            );
        }
        // Another message, container or reason is another event.
        for other in [
            ev("web", "Unhealthy", "Readiness probe failed: 500", 4),
            ev("side", "Unhealthy", "Readiness probe failed: 404", 4),
            ev("web", "Killing", "Readiness probe failed: 404", 4),
        ] {
            assert_eq!(log.next(&other), Post::Create);
        }
        // A repeat whose Event is gone is created anew.
        log.forget(&first);
        assert_eq!(log.next(&first), Post::Create);
    }

    #[test]
    fn restart_rules() {
        assert!(should_restart(RestartPolicy::Always, 0));
        assert!(should_restart(RestartPolicy::OnFailure, 2));
        assert!(!should_restart(RestartPolicy::OnFailure, 0));
        assert!(!should_restart(RestartPolicy::Never, 1));
        assert_eq!(init_policy(RestartPolicy::Always), RestartPolicy::OnFailure);
        assert_eq!(init_policy(RestartPolicy::Never), RestartPolicy::Never);
    }

    #[test]
    fn backoff_as_kubelet() {
        let short = Duration::from_secs(1);
        let (d, c) = next_backoff(None, short);
        assert_eq!((d, c), (None, BACKOFF_INITIAL), "first restart at once");
        let (d, c) = next_backoff(Some(c), short);
        assert_eq!(
            (d, c),
            (Some(Duration::from_secs(10)), Duration::from_secs(20))
        );
        let (d, c) = next_backoff(Some(c), short);
        assert_eq!(
            (d, c),
            (Some(Duration::from_secs(20)), Duration::from_secs(40))
        );
        let (d, _) = next_backoff(Some(Duration::from_secs(300)), short);
        assert_eq!(d, Some(BACKOFF_MAX));
        assert_eq!(
            next_backoff(Some(Duration::from_secs(300)), short).1,
            BACKOFF_MAX
        );
        assert_eq!(
            next_backoff(Some(Duration::from_secs(160)), BACKOFF_RESET).0,
            None
        );
        assert_eq!(go_duration(Duration::from_secs(10)), "10s");
        assert_eq!(go_duration(Duration::from_secs(80)), "1m20s");
        assert_eq!(go_duration(Duration::from_secs(300)), "5m0s");
    }

    #[test]
    fn missing_tools_name_the_package() {
        let empty = std::env::temp_dir().join(format!("nl-empty-path-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        assert_eq!(
            missing_tool(RuntimeKind::Gvisor, empty.as_os_str()).as_deref(),
            Some("runsc not found on PATH: apt-get install runsc")
        );
        assert_eq!(
            missing_tool(RuntimeKind::Container, empty.as_os_str()).as_deref(),
            Some("crun not found on PATH: apt-get install crun")
        );
        std::fs::write(empty.join("crun"), b"").unwrap();
        assert_eq!(
            missing_tool(RuntimeKind::Container, empty.as_os_str()),
            None
        );
        let _ = std::fs::remove_dir_all(&empty);
    }

    #[test]
    fn pull_policies_as_kubelet() {
        let pod = |containers: serde_json::Value| -> Pod {
            serde_json::from_value(serde_json::json!({"spec": {"containers": containers}})).unwrap()
        };
        let one = |image: &str, policy: Option<&str>| {
            let mut c = serde_json::json!({"name": "c", "image": image});
            if let Some(p) = policy {
                c["imagePullPolicy"] = p.into();
            }
            pod(serde_json::json!([c]))
        };
        // The API's defaults when the field is absent.
        for (image, want) in [
            ("reg:5000/team/busybox:1", PullPolicy::IfNotPresent),
            ("reg:5000/team/busybox:latest", PullPolicy::Always),
            ("reg:5000/team/busybox", PullPolicy::Always),
            ("busybox", PullPolicy::Always),
            ("reg:5000/busybox@sha256:abcd", PullPolicy::IfNotPresent),
        ] {
            assert_eq!(pull_policy(&one(image, None), image), want, "{image}");
        }
        let img = "reg:5000/team/busybox:1";
        assert_eq!(
            pull_policy(&one(img, Some("Always")), img),
            PullPolicy::Always
        );
        assert_eq!(
            pull_policy(&one(img, Some("Never")), img),
            PullPolicy::Never
        );
        assert_eq!(
            pull_policy(&one("reg/x:latest", Some("IfNotPresent")), "reg/x:latest"),
            PullPolicy::IfNotPresent
        );
        // Several containers of one image: Always wins; Never only when all say so.
        let two = pod(serde_json::json!([
            {"name": "a", "image": img, "imagePullPolicy": "Never"},
            {"name": "b", "image": img, "imagePullPolicy": "Always"},
            {"name": "c", "image": "other:2", "imagePullPolicy": "Never"},
        ]));
        assert_eq!(pull_policy(&two, img), PullPolicy::Always);
        assert_eq!(pull_policy(&two, "other:2"), PullPolicy::Never);
    }

    #[test]
    fn exit_codes_and_credentials() {
        assert_eq!(pod_exit_code(&[0, 0]), 0);
        assert_eq!(pod_exit_code(&[0, 3, 1]), 3);
        let cfg = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"reg.lan:5000":{"username":"a","password":"b"}}}"#;
        let creds = docker_config_auths(cfg);
        assert!(
            matches!(auth_for("docker.io", &creds), Auth::Basic { username, password } if username == "user" && password == "pass")
        );
        assert!(
            matches!(auth_for("reg.lan:5000", &creds), Auth::Basic { username, .. } if username == "a")
        );
        assert!(matches!(auth_for("quay.io", &creds), Auth::Anonymous));
        assert!(docker_config_auths(b"nope").is_empty());
    }
}
