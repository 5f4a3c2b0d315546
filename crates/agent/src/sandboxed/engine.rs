//! One trait for what runs a pod's containers, whatever the runtime: [`PodEngine`].
//!
//! The agent picks an engine per pod (the pod's runtime kind: `gvisor` and `container` are
//! OCI runtimes, [`super::oci::OciEngine`]; `microvm` boots the pod in a VM,
//! [`super::vm::VmEngine`]) and from then on talks to it only through this trait. Everything
//! kubelet does around the runs (statuses, restarts with back-off, probes, events, logs,
//! eviction) is the same code for every runtime.

use super::*;
use crate::streams::Writer;

/// Whatever a pod's engine needs to start it: the Pod, the files of its projected volumes,
/// its IP, and the host's bound on sandboxes created at once.
pub(super) struct StartContext<'a> {
    pub(super) pod: &'a Pod,
    pub(super) files: &'a pod::VolumeFiles,
    pub(super) ip: Option<Ipv4Addr>,
    pub(super) starts: &'a Arc<tokio::sync::Semaphore>,
}

/// How a pod's start ended.
pub(super) enum Boot {
    /// Its init containers succeeded and its regular containers run: their first runs, by
    /// index (a container whose first run could not start is missing; its supervisor starts
    /// it again).
    Running(BTreeMap<usize, Run>),
    /// An init container failed and its policy does not run it again: the pod ends with its
    /// code, and no regular container ran.
    EndedInInit(i32),
}

/// How a run of a container ended.
pub(super) struct RunEnd {
    pub(super) code: i32,
    /// Kubelet's reason: `Completed`, `Error`, `OOMKilled`.
    pub(super) reason: String,
    pub(super) message: Option<String>,
    pub(super) started_at: Option<Time>,
    pub(super) finished_at: Option<Time>,
}

/// One run of a container: when it started, and its end.
pub(super) struct Run {
    pub(super) started_at: Time,
    pub(super) end: futures::future::BoxFuture<'static, Result<RunEnd, String>>,
}

impl Run {
    /// Waits for the run's end: its terminated state and exit code.
    pub(super) async fn wait(self, container_id: &str) -> Result<(ContainerState, i32), String> {
        let end = self.end.await?;
        let state = ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: end.code,
                reason: Some(end.reason),
                message: end.message,
                started_at: end.started_at,
                finished_at: end.finished_at,
                container_id: Some(container_id.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok((state, end.code))
    }
}

/// An attach session's input to a container: a writer for its stdin and a sender of
/// terminal sizes.
pub(super) type AttachInput = (Option<Writer>, Option<mpsc::Sender<TermSize>>);

/// What runs one pod's containers. Methods take the pod's entry (its plan, host, pulled
/// images and the statuses the agent keeps); the engine keeps only what its runtime needs
/// (the OCI sandbox, the VM).
#[async_trait::async_trait]
pub(super) trait PodEngine: Send + Sync {
    /// The runtime, as container IDs name it (`gvisor://…`, `crun://…`, `microvm://…`).
    fn kind(&self) -> RuntimeKind;

    /// Creates the pod's sandbox with its IP and runs its init containers in order (each
    /// init container's statuses and events recorded in `e`, again after kubelet's back-off
    /// while one fails and its policy restarts it); then starts the regular containers.
    /// Resolves once they run.
    async fn start(&self, e: &Arc<PodEntry>, ctx: &StartContext<'_>) -> Result<Boot, RuntimeError>;

    /// Starts run `restart_count` of container `plan` (its earlier run has ended), with
    /// kubelet's events; Err is the message of kubelet's `Failed` event.
    async fn run(
        &self,
        e: &PodEntry,
        plan: &ContainerPlan,
        restart_count: u32,
    ) -> Result<Run, String>;

    /// Sends `signal` to container `name`'s current run.
    async fn kill(&self, e: &PodEntry, name: &str, signal: i32) -> Result<(), String>;

    /// SIGKILL to every container of the pod the runtime still knows.
    async fn kill_all(&self, e: &PodEntry);

    /// The pod's IP (inside the pod network's namespace), once its sandbox exists.
    fn ip(&self) -> Option<Ipv4Addr>;

    /// How exec probes of container `name` run their command (None: the sandbox is gone).
    fn probe_exec(&self, e: &PodEntry, name: &str) -> Option<Arc<crate::probe::ExecFn>>;

    /// `kubectl exec` into running container `name`.
    async fn exec(
        &self,
        e: &PodEntry,
        name: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, StreamError>;

    /// `kubectl attach` input to container `name`: its stdin (when `stdin`; with
    /// `stdin_once` the container's stdin closes with the session's) and terminal sizes
    /// (when `tty`).
    async fn attach_input(
        &self,
        e: &PodEntry,
        name: &str,
        stdin: bool,
        tty: bool,
        stdin_once: bool,
    ) -> std::io::Result<AttachInput>;

    /// Removes what the pod left on the host: its sandbox or VM, containers, mounts,
    /// network attachment and directory. Its containers have ended or were killed.
    async fn remove(&self, e: &PodEntry) -> Result<(), String>;

    /// The pod's local ephemeral storage, for kubelet's eviction checks: by default what its
    /// containers' writable layers, logs and volumes hold on the host (the OCI runtimes).
    async fn storage_usage(&self, e: &PodEntry) -> Option<sandbox::pod::StorageUsage> {
        let (h, p) = (e.host.clone(), e.plan.clone());
        tokio::task::spawn_blocking(move || sandbox::pod::storage_usage(&h, &p))
            .await
            .ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[tokio::test]
    async fn a_run_ends_in_kubelets_terminated_state() {
        let run = Run {
            started_at: at("2026-11-26T10:00:00Z"),
            end: async {
                Ok(RunEnd {
                    code: 137,
                    reason: "OOMKilled".into(),
                    message: Some("over its limit".into()),
                    started_at: Some(at("2026-11-26T10:00:00Z")),
                    finished_at: Some(at("2026-11-26T10:00:05Z")),
                })
            }
            .boxed(),
        };
        let (state, code) = run.wait("gvisor://p-c").await.unwrap();
        assert_eq!(code, 137);
        assert!(state.running.is_none() && state.waiting.is_none());
        let t = state.terminated.unwrap();
        assert_eq!(t.exit_code, 137);
        assert_eq!(t.reason.as_deref(), Some("OOMKilled"));
        assert_eq!(t.message.as_deref(), Some("over its limit"));
        assert_eq!(t.container_id.as_deref(), Some("gvisor://p-c"));
        assert_eq!(t.finished_at, Some(at("2026-11-26T10:00:05Z")));
    }

    #[tokio::test]
    async fn a_lost_run_is_an_error() {
        let run = Run {
            started_at: at("2026-11-26T10:00:00Z"),
            end: async { Err("the shim went away".to_owned()) }.boxed(),
        };
        assert_eq!(
            run.wait("crun://p-c").await.unwrap_err(),
            "the shim went away"
        );
    }
}
