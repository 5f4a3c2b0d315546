//! Pods in micro-VMs (the `microvm` runtime, [`sandbox::microvm::pod`]): the whole pod in one
//! QEMU `-M microvm` guest, KVM where the host has VMX/SVM, software emulation elsewhere.
//!
//! [`VmEngine`] is this runtime's [`PodEngine`]. It differs from the OCI runtimes' engine in a
//! few places only, all here: the VM is
//! booted with every container of the pod at once (init containers run inside the boot, in
//! order; one that fails ends that boot, and the pod boots again after kubelet's back-off when
//! its policy restarts init containers), a container's later runs are restarts inside the same
//! VM, exec goes over the VM's channel, and the VM outlives the agent (a restarted agent takes
//! it back by its state file). Logs are the same CRI files as the other runtimes write.

use super::engine::{AttachInput, Boot, PodEngine, Run, RunEnd, StartContext};
use super::*;
use sandbox::microvm::pod::{MicroVmPod, PodVmOptions};
use sandbox::microvm::{self, Accel, ContainerSpec, ExecEvent, VmAssets};
use std::path::Path;
use tokio::io::AsyncWriteExt as _;

/// What boots this host's pod VMs.
#[derive(Debug, Clone)]
pub(super) struct VmHost {
    assets: VmAssets,
    accel: Accel,
    boot_timeout: Duration,
}

impl VmHost {
    /// Finds QEMU, mkfs.erofs and the guest's kernel and agent, with what to do when one is
    /// missing.
    pub(super) fn open() -> Result<VmHost, RuntimeError> {
        let assets = microvm::prerequisites().map_err(failed)?;
        let accel = Accel::Auto.resolve();
        info!(?accel, kernel = %assets.kernel.display(), "micro-VM runtime ready");
        Ok(VmHost {
            assets,
            accel,
            // Software emulation boots in seconds, and slower still on a busy host.
            boot_timeout: if accel == Accel::Kvm {
                Duration::from_secs(30)
            } else {
                Duration::from_secs(120)
            },
        })
    }
}

/// A pod's booted VM.
pub(super) struct VmPod {
    vm: tokio::sync::Mutex<MicroVmPod>,
    pub(super) ip: Option<Ipv4Addr>,
}

impl VmPod {
    fn new(vm: MicroVmPod) -> Arc<VmPod> {
        let ip = vm.ip();
        Arc::new(VmPod {
            vm: tokio::sync::Mutex::new(vm),
            ip,
        })
    }

    pub(super) async fn kill(&self, name: &str, signal: i32) -> Result<(), String> {
        self.vm
            .lock()
            .await
            .kill(name, signal)
            .await
            .map_err(|e| e.to_string())
    }

    pub(super) async fn running(&self, name: &str) -> bool {
        self.vm.lock().await.running(name)
    }

    /// The run of container `name` that is going now (its first, or one after a restart).
    /// It started when its log file was made (the VM makes it as it starts the process): the
    /// same answer for a later agent that takes the VM back.
    async fn current_run(self: &Arc<Self>, name: &str) -> Result<Run, String> {
        let (ended, log) = {
            let vm = self.vm.lock().await;
            let ended = vm.ended(name).map_err(|e| e.to_string())?;
            (ended, vm.log_path(name).map(Path::to_path_buf))
        };
        let started_at = log
            .and_then(|p| std::fs::metadata(p).ok())
            .and_then(|m| m.created().ok())
            .and_then(|t| Timestamp::try_from(t).ok())
            .map_or_else(now_time, Time);
        let (vm, name) = (self.clone(), name.to_owned());
        let began = started_at.clone();
        let end = async move {
            let code = ended.await.map_err(|e| e.to_string())?;
            let vm = vm.vm.lock().await;
            Ok(RunEnd {
                code,
                reason: container::exit_reason(code, vm.oom_killed(&name)).into(),
                message: vm.container_error(&name),
                started_at: Some(began),
                // When the host learned of the end (what the VM's state file keeps too).
                finished_at: Some(
                    vm.finished_at(&name)
                        .and_then(time_of)
                        .unwrap_or_else(now_time),
                ),
            })
        }
        .boxed();
        Ok(Run { started_at, end })
    }

    /// Runs container `name` again (it has ended) in the same VM.
    pub(super) async fn restart(self: &Arc<Self>, name: &str) -> Result<Run, String> {
        self.vm
            .lock()
            .await
            .restart(name)
            .await
            .map_err(|e| e.to_string())?;
        self.current_run(name).await
    }

    /// An attach session's input to container `name`: a writer for its stdin (when `stdin`;
    /// with `stdin_once` the container's stdin closes when the session's does) and a sender of
    /// terminal sizes (when `tty`).
    pub(super) fn attach_input(
        self: &Arc<Self>,
        name: &str,
        stdin: bool,
        tty: bool,
        stdin_once: bool,
    ) -> (
        Option<crate::streams::Writer>,
        Option<mpsc::Sender<TermSize>>,
    ) {
        let writer = stdin.then(|| {
            let (vm, name) = (self.clone(), name.to_owned());
            let (vm2, name2) = (vm.clone(), name.clone());
            input_pump(
                move |data| {
                    let (vm, name) = (vm.clone(), name.clone());
                    async move {
                        let r = vm.vm.lock().await.write_stdin(&name, &data).await;
                        if let Err(err) = &r {
                            debug!(container = %name, error = %err, "attach input");
                        }
                        r.is_ok()
                    }
                },
                move || async move {
                    if stdin_once {
                        let _ = vm2.vm.lock().await.close_stdin(&name2).await;
                    }
                },
            )
        });
        let resize = tty.then(|| {
            let (vm, name) = (self.clone(), name.to_owned());
            resize_pump(move |size| {
                let (vm, name) = (vm.clone(), name.clone());
                async move {
                    let vm = vm.vm.lock().await;
                    vm.resize(&name, size.height, size.width).await.is_ok()
                }
            })
        });
        (writer, resize)
    }

    /// An exec probe: `cmd` in container `name`, its exit code, or an error after `timeout`.
    pub(super) async fn probe(
        &self,
        name: &str,
        cmd: &[String],
        timeout: Duration,
    ) -> std::io::Result<i32> {
        let session = {
            let vm = self.vm.lock().await;
            let spec = ContainerSpec {
                args: cmd.to_vec(),
                ..vm.spec_of(name).unwrap_or_default()
            };
            vm.exec_session(name, &spec, false, false)
                .await
                .map_err(std::io::Error::other)?
        };
        match tokio::time::timeout(timeout, session.collect()).await {
            Ok(out) => out.map(|o| o.code).map_err(std::io::Error::other),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("command timed out after {}", go_duration(timeout)),
            )),
        }
    }

    /// `kubectl exec` into container `name`: its output as streams, its input and terminal
    /// sizes fed to the guest.
    pub(super) async fn exec(
        &self,
        name: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        let session = {
            let vm = self.vm.lock().await;
            let mut spec = ContainerSpec {
                args: request.command.clone(),
                ..vm.spec_of(name).unwrap_or_default()
            };
            if request.tty && !spec.env.iter().any(|e| e.starts_with("TERM=")) {
                spec.env.push("TERM=xterm".into());
            }
            vm.exec_session(name, &spec, request.stdin, request.tty)
                .await
                .map_err(|e| StreamError::Internal(format!("exec in the micro-VM: {e}")))?
        };
        let (input, mut events) = session.split();
        let (mut out_w, out_r) = tokio::io::duplex(64 * 1024);
        let (mut err_w, err_r) = tokio::io::duplex(64 * 1024);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<Result<i32, StreamError>>();
        let merged = request.tty;
        tokio::spawn(async move {
            let mut out_open = true;
            let mut err_open = true;
            let result = loop {
                match events.recv().await {
                    Some(ExecEvent::Stdout(d)) => {
                        out_open = out_open && out_w.write_all(&d).await.is_ok();
                    }
                    Some(ExecEvent::Stderr(d)) if merged => {
                        out_open = out_open && out_w.write_all(&d).await.is_ok();
                    }
                    Some(ExecEvent::Stderr(d)) => {
                        err_open = err_open && err_w.write_all(&d).await.is_ok();
                    }
                    Some(ExecEvent::Error(msg)) => {
                        let line = format!("{msg}\n");
                        err_open = err_open && err_w.write_all(line.as_bytes()).await.is_ok();
                    }
                    Some(ExecEvent::Exit(code)) => break Ok(code),
                    Some(ExecEvent::Lost(why)) => {
                        break Err(StreamError::Internal(format!(
                            "the micro-VM went away: {why}"
                        )));
                    }
                    None => break Err(StreamError::Internal("the micro-VM went away".into())),
                }
            };
            let _ = out_w.shutdown().await;
            let _ = err_w.shutdown().await;
            let _ = exit_tx.send(result);
        });
        let stdin = request.stdin.then(|| {
            let (data_in, close_in) = (input.clone(), input.clone());
            input_pump(
                move |data| {
                    let input = data_in.clone();
                    async move { input.write_stdin(&data).await.is_ok() }
                },
                move || async move {
                    let _ = close_in.close_stdin().await;
                },
            )
        });
        let resize = request.tty.then(|| {
            resize_pump(move |size| {
                let input = input.clone();
                async move { input.resize(size.height, size.width).await.is_ok() }
            })
        });
        let exit = async move {
            exit_rx
                .await
                .unwrap_or_else(|_| Err(StreamError::Internal("the exec was lost".into())))
        }
        .boxed();
        Ok(ExecSession {
            stdin,
            stdout: request
                .stdout
                .then(|| Box::pin(out_r) as crate::streams::Reader),
            stderr: (request.stderr && !merged).then(|| Box::pin(err_r) as crate::streams::Reader),
            resize,
            exit,
        })
    }
}

async fn remove_files(host: &pod::Host, plan: &PodPlan) -> Result<(), String> {
    for c in plan.init_containers.iter().chain(&plan.containers) {
        let id = pod::container_id(&plan.id, &c.name);
        container::remove(&host.data_dir, &id).map_err(|e| e.to_string())?;
    }
    if let Some(net) = &host.network {
        net.detach(&plan.id).await.map_err(|e| e.to_string())?;
    }
    match std::fs::remove_dir_all(pod::dir(&host.data_dir, &plan.id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// A pod's micro-VM: what boots it and, once booted, the VM.
pub(super) struct VmEngine {
    host: VmHost,
    vm: Mutex<Option<Arc<VmPod>>>,
}

impl VmEngine {
    pub(super) fn new(host: VmHost) -> VmEngine {
        VmEngine {
            host,
            vm: Mutex::new(None),
        }
    }

    fn vm(&self) -> Option<Arc<VmPod>> {
        lock(&self.vm).clone()
    }

    fn booted(&self, name: &str) -> Result<Arc<VmPod>, String> {
        self.vm()
            .ok_or_else(|| format!("the micro-VM of container {name} is gone"))
    }
}

#[async_trait::async_trait]
impl PodEngine for VmEngine {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Microvm
    }

    /// The writable layers and emptyDirs live in the guest: measured there (the logs on the
    /// host).
    async fn storage_usage(&self, e: &PodEntry) -> Option<sandbox::pod::StorageUsage> {
        let vm = self.vm()?;
        let vm = vm.vm.lock().await;
        vm.storage_usage(&e.plan)
            .await
            .map_err(|err| debug!(error = %err, "measuring a micro-VM's storage"))
            .ok()
    }

    /// Boots the pod's VM (its images are pulled): the network attachment with the pod's IP,
    /// the record a restarted agent finds it by, then the boot, again after a back-off while an
    /// init container fails and the policy restarts it (init containers run inside the boot).
    /// Returns once the regular containers run.
    async fn start(&self, e: &Arc<PodEntry>, ctx: &StartContext<'_>) -> Result<Boot, RuntimeError> {
        let (pod, files, ip) = (ctx.pod, ctx.files, ctx.ip);
        let vm_host = &self.host;
        let plan = &e.plan;
        let host = &e.host;
        let sandbox_failed = |msg: String| e.sandbox_failed(&msg);
        let pdir = pod::dir(&host.data_dir, &plan.id);
        std::fs::create_dir_all(&pdir)
            .map_err(|err| sandbox_failed(format!("creating {}: {err}", pdir.display())))?;
        let net = host
            .network
            .clone()
            .ok_or_else(|| failed("this agent has no pod network"))?;
        // The address may still be held by a pod of the same Node name being torn down.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let att = loop {
            match net.attach_with_ip(&plan.id, ip).await {
                Err(sandbox::network::NetworkError::InUse(addr, holder))
                    if tokio::time::Instant::now() < deadline && !e.stopping() =>
                {
                    debug!(%addr, %holder, "pod address still held by a pod being removed; waiting");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => break other,
            }
        }
        .map_err(|err| sandbox_failed(error_chain(&err)))?;
        let record = pod::PodRecord {
            plan: plan.clone(),
            runtime: RuntimeKind::Microvm,
            ip: Some(att.ip),
            netns: Some(att.netns.clone()),
            uid: Some(e.uid.clone()),
        };
        pod::write_record(&pdir, &record).map_err(|err| sandbox_failed(err.to_string()))?;
        let _ = std::fs::write(
            pdir.join(crate::eviction::POD_FILE),
            serde_json::to_vec(pod).unwrap_or_default(),
        );
        let options = PodVmOptions {
            assets: vm_host.assets.clone(),
            accel: vm_host.accel,
            boot_timeout: vm_host.boot_timeout,
            volume_files: files.clone(),
            nameserver: Some(att.gateway),
        };
        let images = lock(&e.images).clone();
        let mut backoff: Option<Duration> = None;
        let mut stop_rx = e.stopping.subscribe();
        let vm = loop {
            let permit = ctx.starts.clone().acquire_owned().await;
            if e.stopping() {
                return Err(failed("the pod was stopped while starting"));
            }
            let began = Instant::now();
            let attempt = MicroVmPod::start(host, plan, &images, Some(&att), &options).await;
            drop(permit);
            match attempt {
                Ok(mut vm) => {
                    vm.outlive_handle();
                    break vm;
                }
                Err(microvm::MicroVmError::InitContainer { name, code, error }) => {
                    let Some(i) = plan.init_containers.iter().position(|c| c.name == name) else {
                        return Err(failed(format!("init container {name} failed")));
                    };
                    let cid = e
                        .get(Which::Init(i))
                        .map(|c| c.container_id)
                        .unwrap_or_default();
                    for j in 0..i {
                        e.update(Which::Init(j), |c| {
                            c.state = completed(&c.container_id);
                            c.ready = true;
                        });
                    }
                    let mut state = failed_run(code, "Error", error.unwrap_or_default(), &cid);
                    if let Some(t) = state.terminated.as_mut()
                        && t.message.as_deref() == Some("")
                    {
                        t.message = None;
                    }
                    e.update(Which::Init(i), |c| c.state = state.clone());
                    let policy = init_policy(plan.restart_policy);
                    info!(pod = %e.pod_ref(), container = %name, code, "init container failed in the micro-VM");
                    if !should_restart(policy, code) {
                        return Ok(Boot::EndedInInit(code));
                    }
                    let (delay, next) = next_backoff(backoff, began.elapsed());
                    backoff = Some(next);
                    if let Some(d) = delay {
                        let msg = format!(
                            "back-off {} restarting failed container={name} pod={}",
                            go_duration(d),
                            e.pod_ref()
                        );
                        e.update(Which::Init(i), |c| {
                            c.last_state = Some(state.clone());
                            c.state = waiting("CrashLoopBackOff", Some(msg));
                        });
                        e.event(
                            Some(&name),
                            true,
                            "BackOff",
                            format!(
                                "Back-off restarting failed container {name} in pod {}",
                                e.pod_ref()
                            ),
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(d) => {}
                            _ = stop_rx.wait_for(|s| *s) => {
                                return Err(failed("the pod was stopped while initializing"));
                            }
                        }
                    }
                    e.update(Which::Init(i), |c| {
                        c.last_state = Some(state.clone());
                        c.restart_count += 1;
                    });
                }
                Err(err) => return Err(sandbox_failed(error_chain(&err))),
            }
        };
        let vm = VmPod::new(vm);
        *lock(&self.vm) = Some(vm.clone());
        for (i, c) in plan.init_containers.iter().enumerate() {
            e.update(Which::Init(i), |s| {
                s.state = completed(&s.container_id);
                s.ready = true;
            });
            e.created_and_started(&c.name);
        }
        lock(&e.shared).initialized = true;
        let mut first_runs = BTreeMap::new();
        for (i, c) in plan.containers.iter().enumerate() {
            match vm.current_run(&c.name).await {
                Ok(run) => {
                    debug!(id = %pod::container_id(&plan.id, &c.name), "container running");
                    set_running(e, Which::Regular(i), &run);
                    first_runs.insert(i, run);
                }
                Err(err) => warn!(container = %c.name, error = %err, "a container of the micro-VM"),
            }
            e.created_and_started(&c.name);
        }
        e.changed();
        Ok(Boot::Running(first_runs))
    }

    async fn run(
        &self,
        e: &PodEntry,
        plan: &ContainerPlan,
        _restart_count: u32,
    ) -> Result<Run, String> {
        let run = self.booted(&plan.name)?.restart(&plan.name).await;
        if run.is_ok() {
            e.event(
                Some(&plan.name),
                false,
                "Started",
                format!("Started container {}", plan.name),
            );
        }
        run
    }

    async fn kill(&self, _e: &PodEntry, name: &str, signal: i32) -> Result<(), String> {
        match self.vm() {
            Some(vm) => vm.kill(name, signal).await,
            None => Ok(()),
        }
    }

    async fn kill_all(&self, e: &PodEntry) {
        let Some(vm) = self.vm() else {
            return;
        };
        for c in e.plan.init_containers.iter().chain(&e.plan.containers) {
            if vm.running(&c.name).await {
                let _ = vm.kill(&c.name, 9).await;
            }
        }
    }

    fn ip(&self) -> Option<Ipv4Addr> {
        self.vm().and_then(|vm| vm.ip)
    }

    fn probe_exec(&self, _e: &PodEntry, name: &str) -> Option<Arc<crate::probe::ExecFn>> {
        let vm = self.vm()?;
        let name = name.to_owned();
        Some(Arc::new(move |cmd: Vec<String>, timeout: Duration| {
            let (vm, name) = (vm.clone(), name.clone());
            async move { vm.probe(&name, &cmd, timeout).await }.boxed()
        }))
    }

    async fn exec(
        &self,
        _e: &PodEntry,
        name: &str,
        request: &ExecRequest,
    ) -> Result<ExecSession, StreamError> {
        let vm = self
            .vm()
            .ok_or_else(|| StreamError::BadRequest("the pod has no running micro-VM".into()))?;
        vm.exec(name, request).await
    }

    async fn attach_input(
        &self,
        _e: &PodEntry,
        name: &str,
        stdin: bool,
        tty: bool,
        stdin_once: bool,
    ) -> std::io::Result<AttachInput> {
        // A micro-VM container's stdin and terminal are in the guest.
        let vm = self
            .vm()
            .ok_or_else(|| std::io::Error::other("the pod has no running micro-VM"))?;
        Ok(vm.attach_input(name, stdin, tty, stdin_once))
    }

    /// Stops the pod's VM (if it was booted) and removes what the pod left on the host: its
    /// containers' directories (logs), its network attachment and its directory.
    async fn remove(&self, e: &PodEntry) -> Result<(), String> {
        let vm = lock(&self.vm).take();
        if let Some(vm) = vm {
            match Arc::try_unwrap(vm) {
                Ok(vm) => vm
                    .vm
                    .into_inner()
                    .destroy()
                    .await
                    .map_err(|e| e.to_string())?,
                // A probe or exec still holds it: stop QEMU all the same.
                Err(vm) => {
                    let pid = vm.vm.lock().await.pid();
                    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                        let _ = rustix::process::kill_process(
                            rustix::process::Pid::from_raw(pid).ok_or("no pid")?,
                            rustix::process::Signal::KILL,
                        );
                    }
                }
            }
        }
        remove_files(&e.host, &e.plan).await
    }
}

impl SandboxRuntime {
    /// Takes back the VM of a pod an earlier agent process started; `None` (after cleaning
    /// up what is left of it) when its QEMU is gone.
    pub(super) async fn adopt_vm(
        &self,
        vm_host: VmHost,
        host: &pod::Host,
        record: &pod::PodRecord,
    ) -> Option<(String, Started)> {
        let plan = &record.plan;
        let vm = match MicroVmPod::reattach(host, plan).await {
            Ok(Some(mut vm)) => {
                vm.outlive_handle();
                vm
            }
            Ok(None) => {
                info!(pod = %plan.id, "the micro-VM of a recorded pod is gone: cleaning it up");
                if let Err(err) = remove_files(host, plan).await {
                    warn!(pod = %plan.id, error = %err, "cleaning up a recorded micro-VM pod");
                }
                return None;
            }
            Err(err) => {
                warn!(pod = %plan.id, error = %err, "taking back a micro-VM");
                return None;
            }
        };
        let pdir = pod::dir(&host.data_dir, &plan.id);
        let pod: Pod =
            serde_json::from_slice(&std::fs::read(pdir.join(crate::eviction::POD_FILE)).ok()?)
                .ok()?;
        let uid = record.uid.clone().or_else(|| pod.metadata.uid.clone())?;
        let images = self.stored_images(plan);
        let spec = pod.spec.clone().unwrap_or_default();
        let mk = |c: &ContainerPlan, s: Option<&k8s_openapi::api::core::v1::Container>| {
            let id = pod::container_id(&plan.id, &c.name);
            let container_id = format!("microvm://{id}");
            let state = s.map_or_else(
                || completed(&container_id),
                |_| match vm.exit_code(&c.name) {
                    Some(code) => {
                        let mut st = failed_run(
                            code,
                            container::exit_reason(code, vm.oom_killed(&c.name)),
                            String::new(),
                            &container_id,
                        );
                        if let Some(t) = st.terminated.as_mut() {
                            let (began, ended) = (vm.started_at(&c.name), vm.finished_at(&c.name));
                            t.started_at = began.and_then(time_of).or(t.started_at.take());
                            t.finished_at = ended.and_then(time_of).or(t.finished_at.take());
                        }
                        st
                    }
                    None => waiting("ContainerCreating", None),
                },
            );
            // The end of the run before (kept in the VM's state when this one started).
            let last_state = s
                .and_then(|_| vm.last_run(&c.name))
                .map(|r| past_run_state(&r, &container_id));
            CState {
                state,
                last_state,
                restart_count: vm
                    .restarts(&c.name)
                    .map_or(0, |r| i32::try_from(r).unwrap_or(0)),
                ready: s.is_none(),
                ..CState::new(c, s, container_id, &images)
            }
        };
        let shared = Shared::of(plan, &spec, true, mk);
        let running: Vec<(usize, String)> = plan
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| vm.running(&c.name))
            .map(|(i, c)| (i, c.name.clone()))
            .collect();
        // A run that ended while no agent watched ends at once with its recorded exit (its
        // times from its log file), and its supervisor applies the restart policy: a Never
        // container does not run again.
        let mut adopted = BTreeMap::new();
        for (i, c) in plan.containers.iter().enumerate() {
            let Some(code) = vm.exit_code(&c.name) else {
                continue;
            };
            let meta = vm.log_path(&c.name).and_then(|p| std::fs::metadata(p).ok());
            let at = |t: std::io::Result<std::time::SystemTime>| {
                t.ok().and_then(|t| Timestamp::try_from(t).ok()).map(Time)
            };
            let started_at = vm
                .started_at(&c.name)
                .and_then(time_of)
                .or_else(|| meta.as_ref().and_then(|m| at(m.created())));
            let finished_at = vm
                .finished_at(&c.name)
                .and_then(time_of)
                .or_else(|| meta.as_ref().and_then(|m| at(m.modified())));
            let end = RunEnd {
                code,
                reason: container::exit_reason(code, vm.oom_killed(&c.name)).into(),
                message: vm.container_error(&c.name),
                started_at: started_at.clone(),
                finished_at: finished_at.or_else(|| Some(now_time())),
            };
            let run = Run {
                started_at: started_at.unwrap_or_else(now_time),
                end: async move { Ok(end) }.boxed(),
            };
            adopted.insert(i, run);
        }
        let vm = VmPod::new(vm);
        let e = self.new_entry(NewEntry {
            uid: &uid,
            pod: &pod,
            plan,
            host: host.clone(),
            engine: Arc::new(VmEngine {
                host: vm_host,
                vm: Mutex::new(Some(vm.clone())),
            }),
            images,
            shared,
        });
        for (i, name) in running {
            if let Ok(run) = vm.current_run(&name).await {
                set_running(&e, Which::Regular(i), &run);
                // An end while no agent was attached is dated as the VM's state has it
                // (`current_run`'s end reads it).
                adopted.insert(i, run);
            }
        }
        Some(self.adopted(&e, adopted))
    }
}

fn time_of(t: std::time::SystemTime) -> Option<Time> {
    Timestamp::try_from(t).ok().map(Time)
}

/// The terminated state of a run the VM's state keeps.
fn past_run_state(r: &sandbox::microvm::pod::PastRun, container_id: &str) -> ContainerState {
    let mut s = failed_run(
        r.code,
        container::exit_reason(r.code, r.oom_killed),
        String::new(),
        container_id,
    );
    if let Some(t) = s.terminated.as_mut() {
        t.started_at = r.started.and_then(time_of).or(t.started_at.take());
        t.finished_at = r.finished.and_then(time_of).or(t.finished_at.take());
    }
    s
}

/// The terminated state of an init container that succeeded.
fn completed(container_id: &str) -> ContainerState {
    let mut s = failed_run(0, "Completed", String::new(), container_id);
    if let Some(t) = s.terminated.as_mut() {
        t.message = None;
    }
    s
}
