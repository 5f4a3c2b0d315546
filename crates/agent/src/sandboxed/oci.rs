//! Pods under an OCI runtime (`runsc` for gVisor, `crun`; [`sandbox::pod`]): one sandbox per
//! pod (gVisor's pause container, or crun's namespaces), a container with its shim per run.
//! The agent drives the init containers one by one, as kubelet does.

use super::engine::{AttachInput, Boot, PodEngine, Run, RunEnd, StartContext};
use super::*;

/// A pod's OCI runtime and, once made, its sandbox.
pub(super) struct OciEngine {
    runtime: Arc<dyn SbRuntime>,
    sandbox: Mutex<Option<pod::Sandbox>>,
}

impl OciEngine {
    pub(super) fn new(runtime: Arc<dyn SbRuntime>, sandbox: Option<pod::Sandbox>) -> OciEngine {
        OciEngine {
            runtime,
            sandbox: Mutex::new(sandbox),
        }
    }

    /// The pod's sandbox, made with exactly the pod IP. The IP may still be held by a pod of
    /// the same Node name that is being torn down (the scheduler reuses an address once its
    /// pod object is gone, which can be a moment before this host has released it): that is
    /// waited for, bounded.
    async fn prepare(
        &self,
        e: &Arc<PodEntry>,
        ctx: &StartContext<'_>,
    ) -> Result<pod::Sandbox, RuntimeError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let prepare = pod::Prepare {
            ip: ctx.ip,
            uid: Some(e.uid.clone()),
        };
        loop {
            let permit = ctx.starts.clone().acquire_owned().await;
            if e.stopping() {
                return Err(failed("the pod was stopped while starting"));
            }
            let attempt = pod::prepare(
                &e.host,
                self.runtime.clone(),
                &e.plan,
                ctx.files,
                &prepare,
            )
            .await;
            drop(permit);
            match attempt {
                Err(pod::PodError::Network(sandbox::network::NetworkError::InUse(addr, holder)))
                    if tokio::time::Instant::now() < deadline && !e.stopping() =>
                {
                    debug!(%addr, %holder, "pod address still held by a pod being removed; waiting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other,
            }
        }
        .map_err(|err| e.sandbox_failed(&error_chain(&err)))
    }
}

/// A container's run under its shim.
fn oci_run(started: container::Started) -> Run {
    let started_at = match &started.state().status {
        container::Status::Running { started_at } => time(started_at),
        _ => None,
    }
    .unwrap_or_else(now_time);
    let end = async move {
        let exit = started.wait().await.map_err(|e| e.to_string())?;
        Ok(match &exit.state.status {
            container::Status::Terminated {
                started_at,
                finished_at,
                reason,
                ..
            } => RunEnd {
                code: exit.code,
                reason: reason.clone(),
                message: None,
                started_at: time(started_at),
                finished_at: time(finished_at),
            },
            _ => RunEnd {
                code: exit.code,
                reason: container::exit_reason(exit.code, exit.oom_killed).into(),
                message: None,
                started_at: None,
                finished_at: Some(now_time()),
            },
        })
    }
    .boxed();
    Run { started_at, end }
}

#[async_trait::async_trait]
impl PodEngine for OciEngine {
    fn kind(&self) -> RuntimeKind {
        self.runtime.kind()
    }

    async fn start(&self, e: &Arc<PodEntry>, ctx: &StartContext<'_>) -> Result<Boot, RuntimeError> {
        let sandbox = self.prepare(e, ctx).await?;
        // The Pod object, for a restarted agent to find its pods again.
        let _ = std::fs::write(
            sandbox.dir.join(crate::eviction::POD_FILE),
            serde_json::to_vec(ctx.pod).unwrap_or_default(),
        );
        *lock(&self.sandbox) = Some(sandbox);

        // Init containers, in order.
        for (i, c) in e.plan.init_containers.iter().enumerate() {
            let code = supervise(e.clone(), Which::Init(i), None).await;
            if e.stopping() {
                return Err(failed("the pod was stopped while initializing"));
            }
            if code != 0 {
                info!(pod = %e.pod_ref(), container = %c.name, code,
                    "an init container failed and will not run again: the pod ends");
                return Ok(Boot::EndedInInit(code));
            }
        }
        lock(&e.shared).initialized = true;
        e.changed();

        // The regular containers' first runs start here, so that they run when this returns;
        // their supervisors take them over.
        let mut first_runs = BTreeMap::new();
        let permit = ctx.starts.clone().acquire_owned().await;
        for (i, c) in e.plan.containers.iter().enumerate() {
            if let Ok(run) = self.run(e, c, 0).await {
                set_running(e, Which::Regular(i), &run);
                first_runs.insert(i, run);
            }
        }
        drop(permit);
        Ok(Boot::Running(first_runs))
    }

    async fn run(
        &self,
        e: &PodEntry,
        plan: &ContainerPlan,
        restart_count: u32,
    ) -> Result<Run, String> {
        let sandbox = lock(&self.sandbox).clone();
        let image = lock(&e.images).get(&plan.image).cloned();
        let (Some(sandbox), Some(image)) = (sandbox, image) else {
            return Err(format!("the sandbox of container {} is gone", plan.name));
        };
        // The container's stdin and terminal, as its spec asks: its shim keeps them.
        let dir = container::dir(&e.host.data_dir, &e.host_id(&plan.name));
        if let Err(err) = e.stdio_of(&plan.name).write(&dir) {
            warn!(container = %plan.name, error = %err, "writing the container's stdio settings");
        }
        match sandbox.launch(plan, &image, restart_count).await {
            Ok(s) => {
                e.created_and_started(&plan.name);
                Ok(oci_run(s))
            }
            Err(err) => {
                let msg = error_chain(&err);
                warn!(container = %plan.name, error = %msg, "starting a container");
                Err(msg)
            }
        }
    }

    async fn kill(&self, e: &PodEntry, name: &str, signal: i32) -> Result<(), String> {
        self.runtime
            .kill(&e.host_id(name), signal)
            .await
            .map_err(|e| e.to_string())
    }

    async fn kill_all(&self, e: &PodEntry) {
        for c in e.plan.init_containers.iter().chain(&e.plan.containers) {
            let id = e.host_id(&c.name);
            if self.runtime.status(&id).await.ok().flatten().is_some() {
                let _ = self.runtime.kill(&id, 9).await;
            }
        }
    }

    fn ip(&self) -> Option<Ipv4Addr> {
        lock(&self.sandbox).as_ref().and_then(|s| s.ip)
    }

    fn probe_exec(&self, e: &PodEntry, name: &str) -> Option<Arc<crate::probe::ExecFn>> {
        let (runtime, id) = (self.runtime.clone(), e.host_id(name));
        // The run is reported started once its runtime was spawned, which may be a moment
        // before the container exists (crun): the first probe waits for it.
        let created = Arc::new(std::sync::atomic::AtomicBool::new(false));
        Some(Arc::new(move |cmd: Vec<String>, timeout: Duration| {
            let (runtime, id, created) = (runtime.clone(), id.clone(), created.clone());
            async move {
                if !created.load(std::sync::atomic::Ordering::Acquire) {
                    wait_created(runtime.as_ref(), &id).await;
                    created.store(true, std::sync::atomic::Ordering::Release);
                }
                exec_probe(runtime, id, cmd, timeout).await
            }
            .boxed()
        }))
    }

    async fn exec(
        &self,
        e: &PodEntry,
        name: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        let id = e.host_id(name);
        // A run that just began may not be running for the runtime yet.
        wait_created(self.runtime.as_ref(), &id).await;
        if request.tty {
            return tty::exec(&e.host.data_dir, self.runtime.as_ref(), &id, request).await;
        }
        let pipe = |on: bool| {
            if on {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            }
        };
        let stdio = sandbox::runtime::Stdio {
            stdin: pipe(request.stdin),
            stdout: pipe(request.stdout),
            stderr: pipe(request.stderr),
            foreground: false,
        };
        let mut child = self
            .runtime
            .exec(&id, &request.command, false, stdio)
            .map_err(|err| StreamError::Internal(err.to_string()))?;
        let stdin = child
            .stdin
            .take()
            .map(|s| Box::pin(s) as crate::streams::Writer);
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::pin(s) as crate::streams::Reader);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::pin(s) as crate::streams::Reader);
        let exit = async move {
            let status = child
                .wait()
                .await
                .map_err(|err| StreamError::Internal(err.to_string()))?;
            Ok(container::exit_code(status))
        }
        .boxed();
        Ok(ExecSession {
            stdin,
            stdout,
            stderr,
            resize: None,
            exit,
        })
    }

    async fn attach_input(
        &self,
        e: &PodEntry,
        name: &str,
        stdin: bool,
        tty: bool,
        _stdin_once: bool,
    ) -> std::io::Result<AttachInput> {
        // The shim keeps the container's stdin (and closes it for `stdinOnce`).
        let dir = container::dir(&e.host.data_dir, &e.host_id(name));
        shim_input(&dir, stdin, tty).await
    }

    async fn remove(&self, e: &PodEntry) -> Result<(), String> {
        pod::remove(&e.host, self.runtime.as_ref(), &e.plan)
            .await
            .map_err(|err| error_chain(&err))
    }
}

/// Waits (at most 5 s) until the runtime knows container `id` as running.
async fn wait_created(runtime: &dyn SbRuntime, id: &str) {
    for _ in 0..100 {
        if runtime.status(id).await.ok().flatten().as_deref() == Some("running") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn exec_probe(
    runtime: Arc<dyn SbRuntime>,
    id: String,
    cmd: Vec<String>,
    timeout: Duration,
) -> std::io::Result<i32> {
    let stdio = sandbox::runtime::Stdio {
        stdin: std::process::Stdio::null(),
        stdout: std::process::Stdio::null(),
        stderr: std::process::Stdio::null(),
        foreground: false,
    };
    let mut child = runtime
        .exec(&id, &cmd, false, stdio)
        .map_err(std::io::Error::other)?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => Ok(container::exit_code(status?)),
        Err(_) => {
            let _ = child.start_kill();
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("command timed out after {}", go_duration(timeout)),
            ))
        }
    }
}

/// An attach session's input to the shim of the container in `dir`: a writer for its stdin
/// (when `stdin`) and a sender of terminal sizes (when `tty`), framed onto one connection to the
/// shim's attach socket. The session ends (for `stdinOnce`, the container's stdin closes) when
/// both are dropped.
async fn shim_input(dir: &std::path::Path, stdin: bool, tty: bool) -> std::io::Result<AttachInput> {
    use sandbox::shim::{FRAME_CLOSE, FRAME_DATA, FRAME_RESIZE, frame};
    use tokio::io::AsyncWriteExt as _;
    let mut conn = sandbox::shim::connect(dir).await?;
    let (frames_tx, mut frames_rx) = mpsc::channel::<Vec<u8>>(64);
    let writer = stdin.then(|| {
        let (tx, close_tx) = (frames_tx.clone(), frames_tx.clone());
        input_pump(
            move |data| {
                let tx = tx.clone();
                async move { tx.send(frame(FRAME_DATA, &data)).await.is_ok() }
            },
            move || async move {
                let _ = close_tx.send(frame(FRAME_CLOSE, &[])).await;
            },
        )
    });
    let resize = tty.then(|| {
        let tx = frames_tx.clone();
        resize_pump(move |size| {
            let tx = tx.clone();
            async move {
                let mut p = size.width.to_be_bytes().to_vec();
                p.extend_from_slice(&size.height.to_be_bytes());
                tx.send(frame(FRAME_RESIZE, &p)).await.is_ok()
            }
        })
    });
    drop(frames_tx);
    tokio::spawn(async move {
        while let Some(f) = frames_rx.recv().await {
            if conn.write_all(&f).await.is_err() {
                return;
            }
        }
        let _ = conn.shutdown().await;
    });
    Ok((writer, resize))
}

impl SandboxRuntime {
    /// Takes back a pod of an OCI runtime that an earlier agent process started, each
    /// container as its shim left it: a run still going is supervised on; a run that ended
    /// while no agent watched ends at once with its recorded exit, and its supervisor applies
    /// the restart policy (as kubelet does after a restart). `None` (after stopping and
    /// cleaning up what is left of it) when nothing of the pod is left to take back.
    pub(super) async fn adopt_oci(
        &self,
        host: &pod::Host,
        runtime: Arc<dyn SbRuntime>,
        record: &pod::PodRecord,
    ) -> Option<(String, Started)> {
        let adopted = self.adopt_running(host, runtime.clone(), record).await;
        if adopted.is_none() {
            let plan = &record.plan;
            info!(pod = %plan.id, "nothing of the recorded pod is left: cleaning it up");
            // A leftover of the pause container too.
            // Containers this process cannot supervise (no shim) are stopped too.
            for c in plan.init_containers.iter().chain(&plan.containers) {
                let id = pod::container_id(&plan.id, &c.name);
                if runtime.status(&id).await.ok().flatten().is_some() {
                    let _ = runtime.kill(&id, 9).await;
                    let _ = runtime.delete(&id).await;
                }
                if let Some(s) = container::adopt(&host.data_dir, runtime.clone(), &id).await {
                    let _ = runtime.kill(&id, 9).await;
                    let _ = tokio::time::timeout(Duration::from_secs(10), s.wait()).await;
                }
            }
            if let Err(err) = pod::remove(host, runtime.as_ref(), plan).await {
                warn!(pod = %plan.id, error = %error_chain(&err), "cleaning up a recorded pod");
            }
        }
        adopted
    }

    async fn adopt_running(
        &self,
        host: &pod::Host,
        runtime: Arc<dyn SbRuntime>,
        record: &pod::PodRecord,
    ) -> Option<(String, Started)> {
        let plan = &record.plan;
        let (sandbox, by_name) = adopt_sandbox(host, runtime.clone(), plan).await?;
        let pod: Pod = serde_json::from_slice(
            &std::fs::read(sandbox.dir.join(crate::eviction::POD_FILE)).ok()?,
        )
        .ok()?;
        let uid = record.uid.clone().or_else(|| pod.metadata.uid.clone())?;
        if record.uid.is_none() {
            let _ = pod::set_uid(&host.data_dir, &plan.id, &uid);
        }
        let mut adopted = BTreeMap::new();
        for (name, s) in by_name {
            if let Some(i) = plan.containers.iter().position(|c| c.name == name) {
                adopted.insert(i, oci_run(s));
            }
        }
        let images = self.stored_images(plan);
        let prefix = id_prefix(runtime.kind());
        let spec = pod.spec.clone().unwrap_or_default();
        let mk = |c: &ContainerPlan, s: Option<&k8s_openapi::api::core::v1::Container>| {
            let id = pod::container_id(&plan.id, &c.name);
            let container_id = format!("{prefix}://{id}");
            let state = container::read_state(&host.data_dir, &id);
            let terminated_state = state
                .as_ref()
                .and_then(|st| terminated_of(&st.status, &container_id));
            let restart_count = state.as_ref().map_or(0, |s| s.restart_count);
            // The end of the run before (kept when the current one started).
            let last_state = container::read_last(&host.data_dir, &id)
                .filter(|_| restart_count > 0)
                .and_then(|st| terminated_of(&st, &container_id));
            CState {
                state: terminated_state.unwrap_or_else(|| waiting("ContainerCreating", None)),
                restart_count: i32::try_from(restart_count).unwrap_or(0),
                last_state,
                ..CState::new(c, s, container_id, &images)
            }
        };
        let shared = Shared::of(plan, &spec, true, mk);
        let e = self.new_entry(NewEntry {
            uid: &uid,
            pod: &pod,
            plan,
            host: host.clone(),
            engine: Arc::new(OciEngine::new(runtime, Some(sandbox))),
            images,
            shared,
        });
        Some(self.adopted(&e, adopted))
    }
}

/// The terminated state a container's recorded status describes (None unless it ended).
fn terminated_of(status: &container::Status, container_id: &str) -> Option<ContainerState> {
    match status {
        container::Status::Terminated {
            exit_code,
            reason,
            started_at,
            finished_at,
        } => Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: *exit_code,
                reason: Some(reason.clone()),
                started_at: time(started_at),
                finished_at: time(finished_at),
                container_id: Some(container_id.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        _ => None,
    }
}

/// Finds a pod's sandbox again after the agent restarted, with the regular containers its
/// shims ran (name -> [`container::Started`]: running ones resolve when they exit, ones that
/// ended while nobody watched at once with the recorded exit). None when nothing of the pod
/// is left to take back: it was never prepared, its network namespace or (gVisor) its pause
/// container is gone (the host rebooted, or it was being removed), or none of its regular
/// containers ever ran under a shim.
async fn adopt_sandbox(
    host: &pod::Host,
    runtime: Arc<dyn SbRuntime>,
    plan: &PodPlan,
) -> Option<(pod::Sandbox, BTreeMap<String, container::Started>)> {
    let sandbox = pod::reopen(host, runtime.clone(), plan)?;
    if sandbox.netns_path.as_ref().is_some_and(|p| !p.exists()) {
        return None;
    }
    let kind = runtime.kind();
    if kind == RuntimeKind::Gvisor
        && !pod::solo(plan, kind)
        && runtime
            .status(&pod::pause_id(&plan.id))
            .await
            .ok()
            .flatten()
            .as_deref()
            != Some("running")
    {
        return None;
    }
    let mut runs = BTreeMap::new();
    for c in &plan.containers {
        let id = pod::container_id(&plan.id, &c.name);
        if let Some(s) = container::adopt(&host.data_dir, runtime.clone(), &id).await {
            runs.insert(c.name.clone(), s);
        }
    }
    if runs.is_empty() {
        return None;
    }
    let running = runs
        .values()
        .filter(|s| matches!(s.state().status, container::Status::Running { .. }))
        .count();
    info!(pod = %plan.id, containers = runs.len(), running, "pod found again");
    Some((sandbox, runs))
}

mod tty {
    //! Exec with a TTY: the runtime starts the process on a terminal of its own, its
    //! controlling terminal (a typed ^C interrupts it, resizes signal it), and hands back the
    //! terminal's master side (crun: `--console-socket`; runsc: a terminal of ours that is the
    //! controlling terminal of `runsc exec`, which passes its signals on), see
    //! [`sandbox::runtime::Runtime::exec_on_terminal`].
    use super::*;
    use sandbox::shim::PtyIo;
    use std::os::fd::AsFd as _;

    pub(super) async fn exec(
        data_dir: &std::path::Path,
        runtime: &dyn SbRuntime,
        id: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        let process = tty_process(data_dir, id, &request.command);
        let sandbox::runtime::TerminalExec { mut child, master } = runtime
            .exec_on_terminal(id, &process)
            .await
            .map_err(|e| StreamError::Internal(format!("starting the exec: {e}")))?;
        let internal =
            |e: std::io::Error| StreamError::Internal(format!("opening the exec's terminal: {e}"));
        let reader = PtyIo::new(&master).map_err(internal)?;
        let writer = PtyIo::new(&master).map_err(internal)?;
        let (resize_tx, mut resize_rx) = mpsc::channel::<TermSize>(8);
        let resize_fd = master;
        tokio::spawn(async move {
            while let Some(size) = resize_rx.recv().await {
                let ws = rustix::termios::Winsize {
                    ws_row: size.height,
                    ws_col: size.width,
                    ws_xpixel: 0,
                    ws_ypixel: 0,
                };
                let _ = rustix::termios::tcsetwinsize(resize_fd.as_fd(), ws);
            }
        });
        let exit = async move {
            let status = child
                .wait()
                .await
                .map_err(|e| StreamError::Internal(e.to_string()))?;
            Ok(container::exit_code(status))
        }
        .boxed();
        Ok(ExecSession {
            stdin: request
                .stdin
                .then(|| Box::pin(writer) as crate::streams::Writer),
            stdout: Some(Box::pin(reader) as crate::streams::Reader),
            stderr: None,
            resize: Some(resize_tx),
            exit,
        })
    }

    /// The process of an exec with a TTY: the container's own (env, cwd, user, as kubelet's
    /// exec inherits them) with `args` and a terminal.
    fn tty_process(data_dir: &std::path::Path, id: &str, args: &[String]) -> serde_json::Value {
        let spec: serde_json::Value =
            std::fs::read(container::dir(data_dir, id).join("config.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
        let mut process = spec.get("process").cloned().unwrap_or_else(|| {
            serde_json::json!({
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "user": {"uid": 0, "gid": 0},
            })
        });
        process["terminal"] = true.into();
        process["args"] = args.into();
        if let Some(env) = process.get_mut("env").and_then(|e| e.as_array_mut())
            && !env
                .iter()
                .any(|v| v.as_str().is_some_and(|s| s.starts_with("TERM=")))
        {
            env.push("TERM=xterm".into());
        }
        process
    }
}
