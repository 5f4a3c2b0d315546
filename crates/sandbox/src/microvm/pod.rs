//! A whole pod in one micro-VM: every container of a [`PodPlan`] on its own read-only erofs
//! disk (one per container, found in the guest by its virtio serial), init containers one after
//! the other, then the regular containers together; the pod's network (a tap in its netns, see
//! [`super::plug_tap`]), hostname, `/etc/hostname`, `/etc/hosts`, `/etc/resolv.conf`, emptyDir
//! volumes (directories of one tmpfs in the guest, shared by the containers mounting them) and
//! ConfigMap/Secret files handed in by the caller; the VM sized from the pod's size
//! ([`vm_size`]).
//!
//! Files: the VM's own under `<pod dir>/microvm` (initramfs, channel socket, console and QEMU
//! logs), the disks in a host-wide cache `<data dir>/microvm/disks/<manifest digest>.erofs`
//! (an image is converted once), each container's CRI log at
//! [`crate::container::log_path`]`(`[`crate::container::dir`]`(data dir, container id), 0)`, as
//! the other runtimes write them.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::AsyncReadExt as _;
use tokio::net::UnixStream;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};

use super::cgroup::VmCgroup;
use super::proto::{self, Decoder, Frame, MountSource, MountSpec, PidNs, Setup};
use super::{
    Accel, Acker, BootFiles, ContainerSpec, Ended, ExecEvent, ExecOutput, ExecSession, LogWriter,
    MicroVmError, Result, VmAssets, VmFiles, connect_channel, console_tail, io, plug_tap,
    qemu_args, qemu_binary, qemu_command, read_written, send, valid_hostname,
};
use crate::image::Image;
use crate::logs::Stream;
use crate::plan::{ContainerPlan, PodPlan, PodSize, VolumeKind};
use crate::pod::Host;

/// The VM's state file in its directory, for [`MicroVmPod::reattach`].
pub const STATE_FILE: &str = "state.json";

/// Memory of a VM whose pod has no size.
pub const DEFAULT_MEMORY_MIB: u32 = 256;
/// The least memory a VM gets (the kernel and the agent need some).
pub const MIN_MEMORY_MIB: u32 = 128;

/// The VM's memory (MiB, rounded up) and vCPUs (rounded up, at least one) for the pod's size.
/// Pure.
pub fn vm_size(size: Option<PodSize>) -> (u32, u32) {
    let Some(s) = size else {
        return (DEFAULT_MEMORY_MIB, 1);
    };
    let mib = s.memory_bytes.div_ceil(1 << 20);
    let mib = u32::try_from(mib).unwrap_or(u32::MAX).max(MIN_MEMORY_MIB);
    let cpus = u32::try_from(s.cpu_millis.div_ceil(1000))
        .unwrap_or(u32::MAX)
        .clamp(1, 255);
    (mib, cpus)
}

/// How a pod VM is booted.
#[derive(Debug, Clone)]
pub struct PodVmOptions {
    pub assets: VmAssets,
    pub accel: Accel,
    /// How long the guest may take to answer after QEMU starts.
    pub boot_timeout: Duration,
    /// The files of the pod's ConfigMap/Secret/projected volumes: volume name -> (path in the
    /// volume -> contents), as [`crate::plan::volume_files`] gives them.
    pub volume_files: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    /// The nameserver written to `/etc/resolv.conf`, if any.
    pub nameserver: Option<Ipv4Addr>,
}

impl PodVmOptions {
    /// Automatic acceleration, a 120 s boot timeout, no volume files, no nameserver.
    pub fn new(assets: VmAssets) -> PodVmOptions {
        PodVmOptions {
            assets,
            accel: Accel::Auto,
            boot_timeout: Duration::from_secs(120),
            volume_files: BTreeMap::new(),
            nameserver: None,
        }
    }
}

/// One container of the pod in the VM.
struct Container {
    name: String,
    /// Its process id on the channel.
    id: u32,
    /// Its root filesystem in the guest.
    root: u32,
    spec: ContainerSpec,
    /// [`crate::container::dir`] of the container: its logs are there.
    dir: PathBuf,
    restarts: u32,
    log_path: PathBuf,
    ended: watch::Receiver<Option<Ended>>,
    /// The process keeps a stdin the host feeds ([`MicroVmPod::write_stdin`]).
    stdin: bool,
    /// The process runs on a terminal.
    tty: bool,
    /// How its root filesystem is made: a restart makes a fresh one from it.
    setup: SavedSetup,
    /// When its current run started.
    started: Option<SystemTime>,
    /// How its previous run ended (once it was restarted).
    last: Option<PastRun>,
}

/// How a container's run ended (kept in the VM's state so that a restarted agent reports it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PastRun {
    pub code: i32,
    /// The OOM killer ended it (Kubernetes' `OOMKilled`).
    pub oom_killed: bool,
    pub started: Option<SystemTime>,
    pub finished: Option<SystemTime>,
}

/// A container's [`Setup`], kept in the VM's state file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct SavedSetup {
    serial: String,
    /// (target, read-only, a pod volume's name or a file's contents).
    mounts: Vec<(String, bool, SavedSource)>,
    /// The writable layer's size (the container's `ephemeral-storage` limit); 0 is none (and
    /// in state files of older versions).
    #[serde(default)]
    writable_limit: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum SavedSource {
    Volume(String),
    File(Vec<u8>),
}

impl SavedSetup {
    fn of(s: &Setup) -> SavedSetup {
        SavedSetup {
            serial: s.serial.clone(),
            mounts: s
                .mounts
                .iter()
                .map(|m| {
                    let src = match &m.source {
                        MountSource::Volume(v) => SavedSource::Volume(v.clone()),
                        MountSource::File(d) => SavedSource::File(d.clone()),
                    };
                    (m.target.clone(), m.read_only, src)
                })
                .collect(),
            writable_limit: s.writable_limit,
        }
    }

    fn setup(&self) -> Setup {
        Setup {
            serial: self.serial.clone(),
            mounts: self
                .mounts
                .iter()
                .map(|(target, read_only, src)| MountSpec {
                    target: target.clone(),
                    read_only: *read_only,
                    source: match src {
                        SavedSource::Volume(v) => MountSource::Volume(v.clone()),
                        SavedSource::File(d) => MountSource::File(d.clone()),
                    },
                })
                .collect(),
            writable_limit: self.writable_limit,
        }
    }
}

/// What the reader task shares with [`MicroVmPod`].
struct Shared {
    execs: HashMap<u32, mpsc::UnboundedSender<ExecEvent>>,
    logs: HashMap<u32, (LogWriter, watch::Sender<Option<Ended>>)>,
    prepared: HashMap<u32, oneshot::Sender<String>>,
    errors: HashMap<u32, String>,
    /// Processes the OOM killer ended.
    oom: std::collections::HashSet<u32>,
    ready: Option<oneshot::Sender<()>>,
    /// When a container's run ended: as the guest reports it (how long ago, by its monotonic
    /// clock), else when the host learned of it.
    ends: HashMap<u32, SystemTime>,
    /// Runs taken back from a VM of protocol version 1 after a restart of the agent and not
    /// yet known to be running: an end that arrives first happened while no host was attached,
    /// at an unknown time after this one (such a guest does not report when a process ended).
    unseen: HashMap<u32, SystemTime>,
    /// Sends the guest what the logs have.
    acker: Option<Acker>,
    /// Who waits for the guest's storage figures, in order.
    usage: Vec<oneshot::Sender<proto::Usage>>,
    /// The guest's protocol version: its `Ready` says, or the state of the VM taken back (0
    /// until known). A guest of version 1 is sent no acknowledgements and cannot resume.
    guest_version: u32,
    /// The last state saved (in this directory): an end is written into it when it arrives.
    saved: Option<(PathBuf, VmState)>,
}

impl Shared {
    fn new(ready: Option<oneshot::Sender<()>>) -> Shared {
        Shared {
            execs: HashMap::new(),
            logs: HashMap::new(),
            prepared: HashMap::new(),
            errors: HashMap::new(),
            oom: Default::default(),
            ready,
            ends: HashMap::new(),
            unseen: HashMap::new(),
            acker: None,
            usage: Vec::new(),
            guest_version: 0,
            saved: None,
        }
    }

    /// Run `id` ended with `code`, `ago_ms` milliseconds ago as the guest says (a guest of
    /// version 1 does not): records when, in the saved state as well.
    fn ended(&mut self, id: u32, code: i32, ago_ms: Option<u64>) {
        let unseen = self.unseen.remove(&id);
        let now = SystemTime::now();
        let at = match ago_ms {
            Some(ms) => now.checked_sub(Duration::from_millis(ms)).unwrap_or(now),
            None => unseen.unwrap_or(now),
        };
        self.ends.insert(id, at);
        let oom = self.oom.contains(&id);
        if let Some((dir, state)) = &mut self.saved
            && let Some(c) = state.containers.iter_mut().find(|c| c.id == id)
        {
            c.exit = Some(code);
            c.finished = Some(at);
            c.oom_killed = oom;
            if let Err(e) = write_state(dir, state) {
                tracing::warn!(error = %e, "saving a micro-VM container's end");
            }
        }
    }
}

/// A pod running in its own micro-VM.
pub struct MicroVmPod {
    qemu: Qemu,
    /// Left running on drop ([`MicroVmPod::detach`]).
    detached: bool,
    pid: Option<u32>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Mutex<Shared>>,
    reader: tokio::task::JoinHandle<()>,
    next_id: AtomicU32,
    /// The next root filesystem number (the boot made 1..=containers; restarts make more).
    next_root: u32,
    containers: Vec<Container>,
    init_exits: Vec<(String, i32)>,
    dir: PathBuf,
    ip: Option<Ipv4Addr>,
    vm_size: (u32, u32),
    /// The containers share one PID namespace (`shareProcessNamespace`).
    share_pid: bool,
    /// The host cgroup holding QEMU to the pod's size (a pod with a size).
    cgroup: Option<VmCgroup>,
}

/// The read-only disk of `image`, made once per host (by manifest digest) in
/// `<data dir>/microvm/disks`, the cache every micro-VM of the host uses.
pub async fn disk_for(
    data_dir: &Path,
    images: &crate::image::ImageStore,
    image: &Image,
) -> Result<PathBuf> {
    let disk = data_dir
        .join("microvm/disks")
        .join(format!("{}.erofs", image.manifest_digest.hex()));
    if !disk.is_file() {
        super::make_erofs(&images.lower_dirs(image), &disk).await?;
    }
    Ok(disk)
}

/// The process a container of `image` runs in a micro-VM: argv, environment, cwd and user as
/// Kubernetes (and the other runtimes) resolve them from the image and `cfg`.
pub fn process_of(
    images: &crate::image::ImageStore,
    image: &Image,
    cfg: &crate::spec::ContainerConfig,
    hostname: &str,
) -> std::result::Result<ContainerSpec, crate::spec::SpecError> {
    let args = crate::spec::argv(cfg, &image.config)?;
    let env = crate::spec::environment(cfg, &image.config, hostname);
    let run = image.config.config.clone().unwrap_or_default();
    // The first `etc/passwd` and `etc/group` of the image's layers (top first).
    let image_file = |rel: &str| {
        images
            .lower_dirs(image)
            .iter()
            .find_map(|d| std::fs::read_to_string(d.join(rel)).ok())
            .unwrap_or_default()
    };
    let (mut uid, mut gid) = crate::spec::resolve_user(
        run.user.as_deref().unwrap_or(""),
        &image_file("etc/passwd"),
        &image_file("etc/group"),
    )?;
    if let Some(u) = cfg.run_as_user {
        uid = u;
    }
    if let Some(g) = cfg.run_as_group {
        gid = g;
    }
    let cwd = cfg
        .working_dir
        .clone()
        .or(run.working_dir)
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "/".into());
    Ok(ContainerSpec {
        args,
        env,
        cwd,
        uid,
        gid,
        memory_limit_bytes: cfg.resources.memory_bytes,
        groups: cfg.supplemental_groups.clone(),
        cpu_limit_millis: cfg.resources.cpu_millis,
    })
}

/// The process a container of the pod runs, with the pod's IP in the variables that ask for it.
fn container_spec(
    host: &Host,
    plan: &PodPlan,
    c: &ContainerPlan,
    image: &Image,
    ip: Option<Ipv4Addr>,
) -> Result<ContainerSpec> {
    let mut spec = process_of(&host.images, image, &c.config(), &plan.hostname)
        .map_err(|e| MicroVmError::Guest(e.to_string()))?;
    if let Some(ip) = ip {
        for k in &c.pod_ip_env {
            spec.env.retain(|e| !e.starts_with(&format!("{k}=")));
            spec.env.push(format!("{k}={ip}"));
        }
    }
    Ok(spec)
}

/// The mounts of one container: the pod's /etc files, then its volume mounts. Pure.
pub fn container_mounts(
    plan: &PodPlan,
    c: &ContainerPlan,
    ip: Option<Ipv4Addr>,
    nameserver: Option<Ipv4Addr>,
    volume_files: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> Result<Vec<MountSpec>> {
    let file = |target: &str, data: String| MountSpec {
        target: target.into(),
        read_only: false,
        source: MountSource::File(data.into_bytes()),
    };
    let mut mounts = vec![
        file("/etc/hostname", format!("{}\n", plan.hostname)),
        file("/etc/hosts", crate::pod::hosts_file(&plan.hostname, ip)),
        file(
            "/etc/resolv.conf",
            crate::pod::resolv_conf(&plan.namespace, nameserver),
        ),
    ];
    for m in &c.volume_mounts {
        let vol = plan
            .volumes
            .iter()
            .find(|v| v.name == m.volume)
            .ok_or_else(|| {
                MicroVmError::Guest(format!(
                    "container {}: volume {:?} is not in the pod",
                    c.name, m.volume
                ))
            })?;
        match &vol.kind {
            VolumeKind::EmptyDir { .. } => mounts.push(MountSpec {
                target: m.path.clone(),
                read_only: m.read_only,
                source: MountSource::Volume(match &m.sub_path {
                    Some(sub) if !sub.is_empty() => format!("{}/{sub}", vol.name),
                    _ => vol.name.clone(),
                }),
            }),
            VolumeKind::Files { .. } => {
                for (rel, data) in volume_files.get(&vol.name).into_iter().flatten() {
                    let sub = m.sub_path.as_deref().unwrap_or("");
                    let target = if sub.is_empty() {
                        format!("{}/{rel}", m.path.trim_end_matches('/'))
                    } else if rel == sub {
                        m.path.clone()
                    } else {
                        continue;
                    };
                    mounts.push(MountSpec {
                        target,
                        read_only: true,
                        source: MountSource::File(data.clone()),
                    });
                }
            }
        }
    }
    Ok(mounts)
}

impl MicroVmPod {
    /// Boots the pod's VM and runs it: every image of `plan` must be in `images` (as
    /// [`crate::pod::pull_images`] gives them). With `network` (from
    /// [`crate::network::PodNetwork::attach`]) the guest takes the pod's address. Init
    /// containers run in order, each to its end; one that fails ends the pod
    /// ([`MicroVmError::InitContainer`], the VM destroyed, its logs kept). Returns once the
    /// regular containers were started.
    pub async fn start(
        host: &Host,
        plan: &PodPlan,
        images: &BTreeMap<String, Image>,
        network: Option<&crate::network::Attachment>,
        options: &PodVmOptions,
    ) -> Result<MicroVmPod> {
        let qemu = qemu_binary()?;
        let dir = crate::pod::dir(&host.data_dir, &plan.id).join("microvm");
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        let ip = network.map(|n| n.ip);

        // Disks and processes: root n (1-based) for the n-th container, inits first.
        let all: Vec<(&ContainerPlan, bool)> = plan
            .init_containers
            .iter()
            .map(|c| (c, true))
            .chain(plan.containers.iter().map(|c| (c, false)))
            .collect();
        if plan.containers.is_empty() {
            return Err(MicroVmError::Guest("the pod has no containers".into()));
        }
        let mut disks = Vec::new();
        let mut prepared = Vec::new();
        for (i, (c, init)) in all.iter().enumerate() {
            let image = images.get(&c.image).ok_or_else(|| {
                MicroVmError::Guest(format!("image {} of {} was not pulled", c.image, c.name))
            })?;
            disks.push(disk_for(&host.data_dir, &host.images, image).await?);
            let root = i as u32 + 1;
            let setup = Setup {
                serial: format!("c{root}"),
                mounts: container_mounts(plan, c, ip, options.nameserver, &options.volume_files)?,
                writable_limit: c.ephemeral_storage_limit.unwrap_or(0),
            };
            let spec = container_spec(host, plan, c, image, ip)?;
            let saved = SavedSetup::of(&setup);
            prepared.push((
                root,
                *init,
                c.name.clone(),
                setup,
                (spec, c.stdin, c.tty, saved),
            ));
        }
        let serials: Vec<String> = (1..=disks.len()).map(|n| format!("c{n}")).collect();
        let disk_args: Vec<(&Path, Option<&str>)> = disks
            .iter()
            .zip(&serials)
            .map(|(d, s)| (d.as_path(), Some(s.as_str())))
            .collect();

        let vmnet = match network {
            Some(att) => Some(plug_tap(att).await?),
            None => None,
        };
        let BootFiles {
            initrd,
            socket,
            console,
            qemu_log,
            qemu_stderr,
        } = BootFiles::create(&dir, &options.assets)?;
        let mut extra = vec!["nodeless.pod=1".to_owned()];
        if let Some(n) = &vmnet {
            extra.push(n.kernel_args());
        }
        if valid_hostname(&plan.hostname) {
            extra.push(format!("nodeless.hostname={}", plan.hostname));
        }
        let extra = extra.join(" ");
        let (memory_mib, cpus) = vm_size(plan.size);
        // The vCPUs are whole CPUs: QEMU's host cgroup holds it to the pod's size.
        let cgroup = plan.size.and_then(|s| {
            VmCgroup::create(
                &crate::pod::sandbox_cgroup(&host.data_dir, &plan.id),
                s.cpu_millis,
            )
        });
        let args = qemu_args(
            options.accel.resolve(),
            memory_mib,
            cpus,
            &VmFiles {
                kernel: &options.assets.kernel,
                initrd: &initrd,
                disks: &disk_args,
                socket: &socket,
                console: &console,
                net: vmnet.as_ref().map(|n| (n.tap.as_str(), n.mac.as_str())),
                extra_args: &extra,
                tsc_khz: super::host_tsc_khz(),
            },
        );
        let mut command = qemu_command(&qemu, vmnet.as_ref());
        if let Some(cg) = &cgroup {
            // QEMU (nsenter, which becomes QEMU) enters the cgroup before `exec`: it runs no
            // instruction outside the quota.
            let files = cg.procs_files();
            #[allow(unsafe_code)]
            // SAFETY: the closure only opens and writes files (async-signal-safe system
            // calls), allocating nothing.
            unsafe {
                command.pre_exec(move || VmCgroup::enter(&files));
            }
        }
        let mut child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(qemu_stderr)
            // QEMU outlives the agent (a process group of its own, not killed with the agent's
            // handle): a restarted agent takes it back with [`MicroVmPod::reattach`].
            .process_group(0)
            .spawn()
            .map_err(io(format!("starting {}", qemu.display())))?;
        let pid = child.id();
        let boot_error = |reason: String| MicroVmError::Boot {
            reason,
            console: console_tail(&console),
        };
        let started = std::time::Instant::now();
        let stream = connect_channel(&mut child, &socket, &qemu_log, started)
            .await
            .map_err(boot_error)?;
        let (read_half, write_half) = stream.into_split();
        let (ready_tx, ready_rx) = oneshot::channel();
        let shared = Arc::new(Mutex::new(Shared::new(Some(ready_tx))));
        let writer = Arc::new(tokio::sync::Mutex::new(write_half));
        shared.lock().unwrap_or_else(|p| p.into_inner()).acker = Some(Acker::spawn(writer.clone()));
        let (reader, mut lost) = spawn_reader(read_half, shared.clone(), None);
        let mut vm = MicroVmPod {
            qemu: Qemu::Child(child),
            detached: false,
            pid,
            writer,
            shared,
            reader,
            next_id: AtomicU32::new(all.len() as u32 + 1),
            next_root: all.len() as u32 + 1,
            containers: Vec::new(),
            init_exits: Vec::new(),
            dir,
            ip,
            vm_size: (memory_mib, cpus),
            share_pid: plan.share_process_namespace,
            cgroup,
        };

        // Every root filesystem is made first; the first frame also makes the agent answer
        // Ready.
        let deadline = tokio::time::Instant::now() + options.boot_timeout;
        let mut ready_rx = Some(ready_rx);
        let mut pending = Vec::new();
        for (root, init, name, setup, run) in prepared {
            let rx = vm.expect_prepared(root);
            let step = async {
                vm.send(&Frame::Prepare(root, setup)).await?;
                if let Some(ready) = ready_rx.take() {
                    ready
                        .await
                        .map_err(|_| MicroVmError::Guest("the guest agent went away".into()))?;
                }
                let msg = rx.await.map_err(|_| MicroVmError::Stopped)?;
                if msg.is_empty() {
                    Ok(())
                } else {
                    Err(MicroVmError::Guest(format!(
                        "preparing container {name}: {msg}"
                    )))
                }
            };
            let r = tokio::select! {
                r = step => r,
                l = lost.wait_for(|l| l.is_some()) => {
                    let why = l.map(|w| w.clone().unwrap_or_default()).unwrap_or_default();
                    Err(boot_error(why))
                }
                _ = tokio::time::sleep_until(deadline) => {
                    Err(boot_error(format!("no answer within {:?}", options.boot_timeout)))
                }
            };
            if let Err(e) = r {
                vm.qemu.kill();
                vm.qemu.wait().await;
                return Err(e);
            }
            pending.push((root, init, name, run));
        }
        // Init containers in order, each to its end; then the regular ones together.
        for (root, init, name, (spec, stdin, tty, saved)) in pending {
            let mut c = vm
                .start_container(root, &name, spec, (stdin, tty), &host.data_dir, plan)
                .await?;
            c.setup = saved;
            if init {
                let code = wait_ended(&c.ended).await;
                match code {
                    Ok(0) => {
                        vm.init_exits.push((name, 0));
                        // Its root filesystem is not needed any more.
                        vm.send(&Frame::Release(root)).await?;
                    }
                    Ok(code) => {
                        let error = vm.container_error_of(c.id);
                        vm.qemu.kill();
                        vm.qemu.wait().await;
                        let _ = std::fs::remove_dir_all(&vm.dir);
                        return Err(MicroVmError::InitContainer { name, code, error });
                    }
                    Err(e) => {
                        vm.qemu.kill();
                        return Err(e);
                    }
                }
            } else {
                vm.containers.push(c);
            }
        }
        vm.save_state()?;
        Ok(vm)
    }

    /// The state to save (`shared`: this pod's, locked).
    fn state(&self, shared: &Shared) -> VmState {
        VmState {
            proto: shared.guest_version.max(1),
            qemu_pid: self.pid.unwrap_or(0),
            next_id: self.next_id.load(Ordering::Relaxed),
            next_root: self.next_root,
            ip: self.ip,
            vm_size: self.vm_size,
            cgroup: self.cgroup.as_ref().map(|c| c.path().to_owned()),
            init_exits: self.init_exits.clone(),
            containers: self
                .containers
                .iter()
                .map(|c| ContainerState {
                    name: c.name.clone(),
                    id: c.id,
                    root: c.root,
                    args: c.spec.args.clone(),
                    env: c.spec.env.clone(),
                    cwd: c.spec.cwd.clone(),
                    uid: c.spec.uid,
                    gid: c.spec.gid,
                    memory_limit_bytes: c.spec.memory_limit_bytes,
                    groups: c.spec.groups.clone(),
                    cpu_limit_millis: c.spec.cpu_limit_millis,
                    stdin: c.stdin,
                    tty: c.tty,
                    setup: c.setup.clone(),
                    dir: c.dir.clone(),
                    restarts: c.restarts,
                    exit: match &*c.ended.borrow() {
                        Some(Ended::Code(code)) => Some(*code),
                        _ => None,
                    },
                    started: c.started,
                    finished: shared.ends.get(&c.id).copied(),
                    oom_killed: shared.oom.contains(&c.id),
                    last: c.last.clone(),
                    acked: shared
                        .logs
                        .get(&c.id)
                        .map_or([0, 0], |(log, _)| log.written()),
                })
                .collect(),
        }
    }

    /// Writes `state.json` (atomically) for [`MicroVmPod::reattach`].
    fn save_state(&self) -> Result<()> {
        // Under the lock: an end the reader records later is written into this state.
        let mut shared = self.lock();
        let state = self.state(&shared);
        write_state(&self.dir, &state)?;
        shared.saved = Some((self.dir.clone(), state));
        Ok(())
    }

    /// Lets go of the VM without stopping it (the agent is shutting down or restarting): its
    /// state is saved and [`MicroVmPod::reattach`] takes it back. Meanwhile the guest's writes
    /// to the channel block (the containers' output waits in the guest, and their writes
    /// block once its pipes are full) and reach the host that takes the VM back. Nothing is
    /// lost in between, even when the agent dies without detaching: the guest keeps what the
    /// host did not acknowledge (written to the log; the offsets are kept in `acked-<id>` and
    /// the state) and sends it again on [`MicroVmPod::reattach`] (up to
    /// [`proto::RESEND_LIMIT`] a stream). The unterminated lines this process holds are
    /// written now, as partial records.
    pub fn detach(mut self) -> Result<()> {
        for (log, _) in self.lock().logs.values_mut() {
            for stream in [Stream::Stdout, Stream::Stderr] {
                if !log.partial[stream as usize].is_empty() {
                    log.emit(stream, true);
                }
            }
        }
        self.save_state()?;
        self.detached = true;
        Ok(())
    }

    /// Takes back the VM of `plan` that an earlier agent started (found by its `state.json`
    /// and QEMU's process, which names the VM's channel): `None` when there is none or its QEMU
    /// is gone. Containers that ended meanwhile are reported ended with their code and when
    /// they ended (the guest says how long ago). The guest sends again the output the logs
    /// miss ([`Frame::Resume`]); whatever the channel held before its answer is dropped.
    pub async fn reattach(host: &Host, plan: &PodPlan) -> Result<Option<MicroVmPod>> {
        let dir = crate::pod::dir(&host.data_dir, &plan.id).join("microvm");
        let Ok(bytes) = std::fs::read(dir.join(STATE_FILE)) else {
            return Ok(None);
        };
        let Ok(state) = serde_json::from_slice::<VmState>(&bytes) else {
            return Ok(None);
        };
        let socket = dir.join("agent.sock");
        let cmdline =
            std::fs::read(format!("/proc/{}/cmdline", state.qemu_pid)).unwrap_or_default();
        let needle = socket.display().to_string();
        if !String::from_utf8_lossy(&cmdline).contains(&needle) {
            // QEMU is gone: so is what was in its cgroup (removed on drop).
            drop(state.cgroup.as_deref().map(VmCgroup::adopt));
            return Ok(None);
        }
        let stream = UnixStream::connect(&socket)
            .await
            .map_err(io(format!("connecting to {}", socket.display())))?;
        let (read_half, write_half) = stream.into_split();
        let shared = Arc::new(Mutex::new(Shared::new(None)));
        let writer = Arc::new(tokio::sync::Mutex::new(write_half));
        shared.lock().unwrap_or_else(|p| p.into_inner()).acker = Some(Acker::spawn(writer.clone()));
        // A guest of version 1 cannot resume: its ends are queried.
        let resume = state.proto >= 2;
        shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .guest_version = state.proto;
        let mut containers = Vec::new();
        let mut running = Vec::new();
        // The latest the host knew of the VM: a run that ended while no host was attached
        // ended after it (and, at the latest, now).
        let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let state_time = mtime(&dir.join(STATE_FILE));
        for c in &state.containers {
            let log_path = crate::container::log_path(&c.dir, c.restarts);
            let (tx, ended) = watch::channel(c.exit.map(Ended::Code));
            {
                let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
                if c.oom_killed {
                    s.oom.insert(c.id);
                }
                if let Some(at) = c.finished {
                    s.ends.insert(c.id, at);
                }
                if c.exit.is_none() && !resume {
                    let seen = [state_time, mtime(&log_path), c.started];
                    if let Some(at) = seen.into_iter().flatten().max() {
                        s.unseen.insert(c.id, at);
                    }
                }
            }
            if c.exit.is_none() {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .map_err(io(format!("opening {}", log_path.display())))?;
                let mut log = LogWriter::new(file);
                // What the log has: the later of the state's and the ack file's offsets.
                let ack_path = ack_file(&dir, c.id);
                let kept = read_written(&ack_path);
                log.next = [kept[0].max(c.acked[0]), kept[1].max(c.acked[1])];
                log.ack_file = open_ack_file(&ack_path, false);
                running.push((c.id, log.next));
                shared
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .logs
                    .insert(c.id, (log, tx));
            }
            containers.push(Container {
                name: c.name.clone(),
                id: c.id,
                root: c.root,
                spec: ContainerSpec {
                    args: c.args.clone(),
                    env: c.env.clone(),
                    cwd: c.cwd.clone(),
                    uid: c.uid,
                    gid: c.gid,
                    memory_limit_bytes: c.memory_limit_bytes,
                    groups: c.groups.clone(),
                    cpu_limit_millis: c.cpu_limit_millis,
                },
                dir: c.dir.clone(),
                restarts: c.restarts,
                log_path,
                ended,
                stdin: c.stdin,
                tty: c.tty,
                setup: c.setup.clone(),
                started: c.started,
                last: c.last.clone(),
            });
        }
        let nonce = resume.then(|| {
            let t = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40) | 1
        });
        let (reader, _lost) = spawn_reader(read_half, shared.clone(), nonce);
        let vm = MicroVmPod {
            qemu: Qemu::Adopted(state.qemu_pid),
            detached: false,
            pid: Some(state.qemu_pid),
            writer,
            shared,
            reader,
            // Exec sessions after the state was saved may have used ids past `next_id`: skip
            // well beyond them (the guest refuses an id it has seen).
            next_id: AtomicU32::new(state.next_id.saturating_add(1 << 20)),
            next_root: state.next_root.max(
                state
                    .containers
                    .iter()
                    .map(|c| c.root + 1)
                    .max()
                    .unwrap_or(1),
            ),
            containers,
            init_exits: state.init_exits,
            dir,
            ip: state.ip,
            vm_size: state.vm_size,
            share_pid: plan.share_process_namespace,
            cgroup: state.cgroup.as_deref().map(VmCgroup::adopt),
        };
        match nonce {
            // The guest sends again what the logs miss, and the ends nobody heard.
            Some(nonce) => vm.send(&Frame::Resume(nonce, running)).await?,
            // Exits the guest reported while nobody listened are answered again.
            None => {
                for (id, _) in running {
                    vm.send(&Frame::Query(id)).await?;
                }
            }
        }
        vm.save_state()?;
        Ok(Some(vm))
    }

    fn expect_prepared(&self, root: u32) -> oneshot::Receiver<String> {
        let (tx, rx) = oneshot::channel();
        self.lock().prepared.insert(root, tx);
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn send(&self, f: &Frame) -> Result<()> {
        send(&self.writer, f).await
    }

    fn container_error_of(&self, id: u32) -> Option<String> {
        self.lock().errors.get(&id).cloned()
    }

    async fn start_container(
        &self,
        root: u32,
        name: &str,
        spec: ContainerSpec,
        (stdin, tty): (bool, bool),
        data_dir: &Path,
        plan: &PodPlan,
    ) -> Result<Container> {
        let cid = crate::pod::container_id(&plan.id, name);
        let dir = crate::container::dir(data_dir, &cid);
        // The process id of a container's first run is its root's number.
        let (log_path, ended) = self
            .run_in(root, root, &spec, &dir, 0, (stdin, tty))
            .await?;
        Ok(Container {
            name: name.to_owned(),
            id: root,
            root,
            spec,
            dir,
            restarts: 0,
            log_path,
            ended,
            stdin,
            tty,
            setup: SavedSetup::default(),
            started: Some(SystemTime::now()),
            last: None,
        })
    }

    /// Runs `spec` as process `id` in root filesystem `root`, its output into the CRI log of
    /// run `restart` in `dir`; with a stdin the host feeds and on a terminal as asked.
    async fn run_in(
        &self,
        id: u32,
        root: u32,
        spec: &ContainerSpec,
        dir: &Path,
        restart: u32,
        (stdin, tty): (bool, bool),
    ) -> Result<(PathBuf, watch::Receiver<Option<Ended>>)> {
        let log_path = crate::container::log_path(dir, restart);
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io(format!("creating {}", parent.display())))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("opening {}", log_path.display())))?;
        let (tx, ended) = watch::channel(None);
        let mut log = LogWriter::new(file);
        log.ack_file = open_ack_file(&ack_file(&self.dir, id), true);
        self.lock().logs.insert(id, (log, tx));
        let pid_ns = if self.share_pid {
            PidNs::Pod
        } else {
            PidNs::Own
        };
        let mut s = spec.to_spec(stdin, tty, pid_ns);
        s.root = root;
        self.send(&Frame::Run(id, s)).await?;
        Ok((log_path, ended))
    }

    /// Starts container `name` again once it has ended, in a fresh root filesystem from its
    /// image (as kubelet's restart is a new container: what the last run wrote is gone; its
    /// volumes stay), its output into the next log file (`logs/<restart>.log`; the previous one
    /// stays for `kubectl logs --previous`). Returns the restart count.
    pub async fn restart(&mut self, name: &str) -> Result<u32> {
        let i = self
            .containers
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| MicroVmError::Guest(format!("no container {name:?} in the pod")))?;
        if self.containers[i].ended.borrow().is_none() {
            return Err(MicroVmError::Guest(format!(
                "container {name} is still running"
            )));
        }
        let past = {
            let c = &self.containers[i];
            let code = match &*c.ended.borrow() {
                Some(Ended::Code(code)) => Some(*code),
                _ => None,
            };
            let s = self.lock();
            code.map(|code| PastRun {
                code,
                oom_killed: s.oom.contains(&c.id),
                started: c.started,
                finished: s.ends.get(&c.id).copied(),
            })
        };
        let root = self.fresh_root(i).await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let c = &self.containers[i];
        let restart = c.restarts + 1;
        let (log_path, ended) = self
            .run_in(id, root, &c.spec, &c.dir, restart, (c.stdin, c.tty))
            .await?;
        let old = c.root;
        if old != root {
            // The last run's root filesystem (and what it wrote there) is freed.
            self.send(&Frame::Release(old)).await?;
        }
        let c = &mut self.containers[i];
        c.root = root;
        c.id = id;
        c.restarts = restart;
        c.log_path = log_path;
        c.ended = ended;
        c.started = Some(SystemTime::now());
        if past.is_some() {
            c.last = past;
        }
        self.save_state()?;
        Ok(restart)
    }

    /// A new root filesystem for the `i`-th container, made as its first was. A container
    /// whose setup is not known (a VM taken back from a state file of an older version) keeps
    /// its root.
    async fn fresh_root(&mut self, i: usize) -> Result<u32> {
        let c = &self.containers[i];
        if c.setup.serial.is_empty() {
            return Ok(c.root);
        }
        let root = self.next_root;
        self.next_root += 1;
        let rx = self.expect_prepared(root);
        self.send(&Frame::Prepare(root, c.setup.setup())).await?;
        let msg = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| MicroVmError::Guest("no answer to preparing a root filesystem".into()))?
            .map_err(|_| MicroVmError::Stopped)?;
        if msg.is_empty() {
            Ok(root)
        } else {
            Err(MicroVmError::Guest(format!(
                "preparing container {}: {msg}",
                c.name
            )))
        }
    }

    fn container(&self, name: &str) -> Result<&Container> {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| MicroVmError::Guest(format!("no container {name:?} in the pod")))
    }

    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The pod's address (inside the VM), when it has a network.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ip
    }

    /// The VM's (memory MiB, vCPUs).
    pub fn vm_size(&self) -> (u32, u32) {
        self.vm_size
    }

    /// The host cgroup (relative to every hierarchy's root) whose CPU quota holds QEMU to the
    /// pod's size: `None` for a pod without a size (or where no cgroup could be made).
    pub fn cgroup(&self) -> Option<&str> {
        self.cgroup.as_ref().map(|c| c.path())
    }

    /// The init containers' exit codes, in order (all 0: a failing one ends [`Self::start`]).
    pub fn init_exits(&self) -> &[(String, i32)] {
        &self.init_exits
    }

    /// The pod's local ephemeral storage as kubelet counts it ([`crate::pod::StorageUsage`]),
    /// from the guest, where the writable layers and emptyDirs are (the host has the logs):
    /// each regular container's writable layer (its current root filesystem's tmpfs) plus its
    /// log files, each emptyDir not in memory, and their total. What the agent's eviction
    /// checks take (`agent::eviction::verdict`) instead of what the OCI runtimes' pods hold on
    /// the host.
    pub async fn storage_usage(&self, plan: &PodPlan) -> Result<crate::pod::StorageUsage> {
        let (tx, rx) = oneshot::channel();
        self.lock().usage.push(tx);
        self.send(&Frame::QueryUsage).await?;
        let guest = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| MicroVmError::Guest("no answer to a storage query".into()))?
            .map_err(|_| MicroVmError::Stopped)?;
        Ok(usage_of(plan, &self.containers, &guest))
    }

    /// The names of the regular containers.
    pub fn container_names(&self) -> Vec<String> {
        self.containers.iter().map(|c| c.name.clone()).collect()
    }

    /// What container `name` runs (argv, env, cwd, user): the base of an exec session's spec.
    pub fn spec_of(&self, name: &str) -> Option<ContainerSpec> {
        self.container(name).ok().map(|c| c.spec.clone())
    }

    /// The CRI log file of container `name`'s current run.
    pub fn log_path(&self, name: &str) -> Option<&Path> {
        self.containers
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.log_path.as_path())
    }

    /// The guest's serial console (kernel and agent messages).
    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Container `name`'s exit code if it has ended (128 + signal when killed).
    pub fn exit_code(&self, name: &str) -> Option<i32> {
        match &*self.container(name).ok()?.ended.borrow() {
            Some(Ended::Code(c)) => Some(*c),
            _ => None,
        }
    }

    /// Whether container `name`'s current run was ended by the OOM killer (over its memory
    /// limit): Kubernetes' `OOMKilled` reason.
    pub fn oom_killed(&self, name: &str) -> bool {
        self.container(name)
            .map(|c| self.lock().oom.contains(&c.id))
            .unwrap_or(false)
    }

    /// The error the guest reported for container `name` (e.g. its program does not exist).
    pub fn container_error(&self, name: &str) -> Option<String> {
        let id = self.container(name).ok()?.id;
        self.container_error_of(id)
    }

    /// Waits for container `name` to end and returns its exit code.
    pub async fn wait(&self, name: &str) -> Result<i32> {
        wait_ended(&self.container(name)?.ended).await
    }

    /// A future of the end of container `name`'s current run (its exit code) that does not
    /// borrow the pod: a supervisor awaits it while others exec, signal or restart.
    pub fn ended(
        &self,
        name: &str,
    ) -> Result<impl std::future::Future<Output = Result<i32>> + Send + 'static> {
        let ended = self.container(name)?.ended.clone();
        Ok(async move { wait_ended(&ended).await })
    }

    /// When container `name`'s current run started (as far as this host knows).
    pub fn started_at(&self, name: &str) -> Option<SystemTime> {
        self.container(name).ok()?.started
    }

    /// When container `name`'s current run ended: the host's clock less how long ago the guest
    /// says it ended (by the guest's monotonic clock, whatever its wall clock says), also for
    /// an end while no host was attached. From a guest of protocol version 1, which does not
    /// say: when the host learned of it, or the last time a host knew the VM.
    pub fn finished_at(&self, name: &str) -> Option<SystemTime> {
        let id = self.container(name).ok()?.id;
        self.lock().ends.get(&id).copied()
    }

    /// How container `name`'s previous run ended, once it was restarted.
    pub fn last_run(&self, name: &str) -> Option<PastRun> {
        self.container(name).ok()?.last.clone()
    }

    /// How many times container `name` was restarted (its current run's log is
    /// `logs/<restarts>.log`).
    pub fn restarts(&self, name: &str) -> Option<u32> {
        self.container(name).ok().map(|c| c.restarts)
    }

    /// Whether container `name`'s current run still goes.
    pub fn running(&self, name: &str) -> bool {
        self.container(name)
            .is_ok_and(|c| c.ended.borrow().is_none())
    }

    /// Keeps the VM running when this handle is dropped (the agent exits or is restarted; a
    /// later one takes the VM back with [`MicroVmPod::reattach`]); [`MicroVmPod::destroy`]
    /// still stops it.
    pub fn outlive_handle(&mut self) {
        self.detached = true;
    }

    /// Feeds `data` to the stdin of container `name`'s current run (one started with
    /// `stdin`).
    pub async fn write_stdin(&self, name: &str, data: &[u8]) -> Result<()> {
        let c = self.container(name)?;
        if !c.stdin {
            return Err(MicroVmError::Guest(format!(
                "container {name} was not started with stdin"
            )));
        }
        for chunk in data.chunks(proto::CHUNK) {
            self.send(&Frame::Stdin(c.id, chunk.to_vec())).await?;
        }
        Ok(())
    }

    /// Closes the stdin of container `name`'s current run (`stdinOnce` after an attach).
    pub async fn close_stdin(&self, name: &str) -> Result<()> {
        let id = self.container(name)?.id;
        self.send(&Frame::Stdin(id, Vec::new())).await
    }

    /// Sets the terminal size of container `name`'s current run (one started with `tty`).
    pub async fn resize(&self, name: &str, rows: u16, cols: u16) -> Result<()> {
        let id = self.container(name)?.id;
        self.send(&Frame::Resize(id, rows, cols)).await
    }

    /// Sends `signal` to container `name`'s process.
    pub async fn kill(&self, name: &str, signal: i32) -> Result<()> {
        let id = self.container(name)?.id;
        self.send(&Frame::Signal(id, signal)).await
    }

    /// Starts `spec` in container `name` (its root filesystem and mounts); see
    /// [`super::MicroVm::exec_session`].
    pub async fn exec_session(
        &self,
        name: &str,
        spec: &ContainerSpec,
        stdin: bool,
        tty: bool,
    ) -> Result<ExecSession> {
        let c = self.container(name)?;
        let (root, container_id) = (c.root, c.id);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::unbounded_channel();
        self.lock().execs.insert(id, tx);
        // In the container's PID namespace (the pod's when it shares one).
        let mut s = spec.to_spec(stdin, tty, PidNs::Join(container_id));
        s.root = root;
        self.send(&Frame::Run(id, s)).await?;
        Ok(ExecSession {
            id,
            writer: self.writer.clone(),
            events,
        })
    }

    /// Runs `args` in container `name` with its env, cwd and user; returns output and code.
    pub async fn exec(
        &self,
        name: &str,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<ExecOutput> {
        let spec = ContainerSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..self.container(name)?.spec.clone()
        };
        let session = self
            .exec_session(name, &spec, stdin.is_some(), false)
            .await?;
        if let Some(data) = stdin {
            session.write_stdin(data).await?;
            session.close_stdin().await?;
        }
        session.collect().await
    }

    /// Stops the VM (SIGKILL to QEMU), waits for it, and removes the VM's files; the
    /// containers' logs and the disk cache stay. The pod's network is the caller's
    /// ([`crate::network::PodNetwork::detach`] removes the tap with the netns).
    pub async fn destroy(mut self) -> Result<()> {
        self.qemu.kill();
        self.qemu.wait().await;
        self.reader.abort();
        if let Some(cg) = self.cgroup.take() {
            cg.remove().await;
        }
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(format!("removing {}", self.dir.display()))(e)),
        }
    }
}

impl Drop for MicroVmPod {
    fn drop(&mut self) {
        self.reader.abort();
        if !self.detached {
            self.qemu.kill();
        } else if let Some(cg) = &mut self.cgroup {
            // QEMU stays in it; the handle that takes the VM back removes it.
            cg.keep = true;
        }
    }
}

/// QEMU: started by this process, or taken back after a restart of the agent.
enum Qemu {
    Child(tokio::process::Child),
    Adopted(u32),
}

impl Qemu {
    fn kill(&mut self) {
        match self {
            Qemu::Child(c) => {
                let _ = c.start_kill();
            }
            Qemu::Adopted(pid) => {
                if let Some(pid) = rustix::process::Pid::from_raw(*pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
        }
    }

    async fn wait(&mut self) {
        match self {
            Qemu::Child(c) => {
                let _ = c.wait().await;
            }
            // Not our child: its new parent reaps it; wait until it is gone (or a zombie).
            Qemu::Adopted(pid) => {
                for _ in 0..500 {
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
                    match stat {
                        Err(_) => return,
                        Ok(s) if s.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')) => {
                            return;
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            }
        }
    }
}

/// Bytes of the files of `dir` (a container's logs), not descending.
fn files_size(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks().saturating_mul(512))
        .fold(0, u64::saturating_add)
}

/// The pod's storage from the guest's figures and the containers' logs. Pure but for the
/// logs' sizes.
fn usage_of(
    plan: &PodPlan,
    containers: &[Container],
    guest: &proto::Usage,
) -> crate::pod::StorageUsage {
    let mut usage = crate::pod::StorageUsage::default();
    for c in containers {
        let layer = guest
            .roots
            .iter()
            .find(|(root, _)| *root == c.root)
            .map_or(0, |(_, b)| *b);
        let bytes = layer.saturating_add(files_size(&c.dir.join("logs")));
        usage.containers.insert(c.name.clone(), bytes);
        usage.total = usage.total.saturating_add(bytes);
    }
    for v in &plan.volumes {
        // A memory-backed emptyDir counts against memory, not storage (as kubelet has it).
        if !matches!(v.kind, VolumeKind::EmptyDir { memory: false, .. }) {
            continue;
        }
        let bytes = guest
            .volumes
            .iter()
            .find(|(name, _)| *name == v.name)
            .map_or(0, |(_, b)| *b);
        usage.volumes.insert(v.name.clone(), bytes);
        usage.total = usage.total.saturating_add(bytes);
    }
    usage
}

/// The file in the VM's directory where the log offsets of process `id` are kept
/// ([`LogWriter::save_written`]): what a later agent asks the guest to send again from.
fn ack_file(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("acked-{id}"))
}

fn open_ack_file(path: &Path, truncate: bool) -> Option<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(truncate)
        .open(path)
        .map_err(
            |e| tracing::warn!(error = %e, path = %path.display(), "opening a micro-VM ack file"),
        )
        .ok()
}

/// What a restarted agent needs to take a running pod VM back (`state.json` in the VM's dir).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct VmState {
    /// The protocol version of the VM's guest, as its `Ready` said ([`proto::VERSION`] for a
    /// guest of this version); 1 in states of older versions (written as none) and for a guest
    /// that said none.
    #[serde(default = "version_1")]
    proto: u32,
    qemu_pid: u32,
    next_id: u32,
    /// 0 in states written before restarts made fresh roots.
    #[serde(default)]
    next_root: u32,
    ip: Option<Ipv4Addr>,
    vm_size: (u32, u32),
    /// QEMU's host cgroup ([`VmCgroup`]); none in states of older versions.
    #[serde(default)]
    cgroup: Option<String>,
    init_exits: Vec<(String, i32)>,
    containers: Vec<ContainerState>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ContainerState {
    name: String,
    id: u32,
    root: u32,
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    uid: u32,
    gid: u32,
    #[serde(default)]
    memory_limit_bytes: Option<u64>,
    #[serde(default)]
    groups: Vec<u32>,
    #[serde(default)]
    cpu_limit_millis: Option<u64>,
    #[serde(default)]
    stdin: bool,
    #[serde(default)]
    tty: bool,
    #[serde(default)]
    setup: SavedSetup,
    dir: PathBuf,
    restarts: u32,
    /// Known exit code of the current run.
    exit: Option<i32>,
    /// When the current run started; none in states of older versions.
    #[serde(default)]
    started: Option<SystemTime>,
    /// When the host learned that the current run ended.
    #[serde(default)]
    finished: Option<SystemTime>,
    #[serde(default)]
    oom_killed: bool,
    /// How the previous run ended (after a restart).
    #[serde(default)]
    last: Option<PastRun>,
    /// The offsets of the current run's stdout and stderr that are in its log (when the state
    /// was saved; `acked-<id>` has the latest).
    #[serde(default)]
    acked: [u64; 2],
}

fn version_1() -> u32 {
    1
}

/// Writes `state.json` in `dir` atomically.
fn write_state(dir: &Path, state: &VmState) -> Result<()> {
    let p = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| io("encoding the VM state")(std::io::Error::other(e)))?;
    std::fs::write(&tmp, json).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, &p).map_err(io(format!("renaming to {}", p.display())))
}

/// Reads frames from the guest until the channel closes; the receiver learns why it closed.
/// With `resume`, every byte before the guest's `Sync` of that nonce is dropped.
fn spawn_reader(
    mut read_half: OwnedReadHalf,
    shared: Arc<Mutex<Shared>>,
    resume: Option<u64>,
) -> (tokio::task::JoinHandle<()>, watch::Receiver<Option<String>>) {
    let (lost_tx, lost) = watch::channel(None::<String>);
    let task = tokio::spawn(async move {
        let mut dec = Decoder::default();
        if let Some(nonce) = resume {
            dec.seek_sync(nonce);
        }
        let mut buf = vec![0u8; 64 * 1024];
        let why = 'read: loop {
            let n = match read_half.read(&mut buf).await {
                Ok(0) => break "the channel closed".to_owned(),
                Ok(n) => n,
                Err(e) => break format!("reading the channel: {e}"),
            };
            dec.push(&buf[..n]);
            loop {
                match dec.next_frame() {
                    Ok(Some(f)) => dispatch(f, &shared),
                    Ok(None) => break,
                    Err(e) => break 'read format!("bad frame from the guest agent: {e}"),
                }
            }
        };
        lose(&shared, why.clone());
        lost_tx.send_replace(Some(why));
    });
    (task, lost)
}

async fn wait_ended(ended: &watch::Receiver<Option<Ended>>) -> Result<i32> {
    let mut ended = ended.clone();
    let e = ended
        .wait_for(|e| e.is_some())
        .await
        .map_err(|_| MicroVmError::Stopped)?
        .clone();
    match e {
        Some(Ended::Code(c)) => Ok(c),
        Some(Ended::Lost(why)) => Err(MicroVmError::Guest(why)),
        None => Err(MicroVmError::Stopped),
    }
}

fn dispatch(f: Frame, shared: &Arc<Mutex<Shared>>) {
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    match f {
        Frame::Ready(version) => {
            s.guest_version = version;
            if let Some(tx) = s.ready.take() {
                let _ = tx.send(());
            }
        }
        Frame::Prepared(root, msg) => {
            if let Some(tx) = s.prepared.remove(&root) {
                let _ = tx.send(msg);
            }
        }
        Frame::Started(..) => {}
        Frame::OomKilled(id) => {
            s.oom.insert(id);
        }
        // The answer to a query after reattaching: a container that ended meanwhile.
        Frame::Status(id, proto::State::Exited { code }) => {
            if let Some((mut log, tx)) = s.logs.remove(&id) {
                log.finish();
                log.save_written();
                s.ended(id, code, None);
                tx.send_replace(Some(Ended::Code(code)));
            }
        }
        Frame::Status(id, proto::State::Unknown) => {
            if let Some((mut log, tx)) = s.logs.remove(&id) {
                log.finish();
                tx.send_replace(Some(Ended::Lost("the guest does not know it".into())));
            }
        }
        // Still running: it ends (if at all) while a host listens.
        Frame::Status(id, proto::State::Running { .. }) => {
            s.unseen.remove(&id);
        }
        Frame::Sync(nonce) => tracing::debug!(nonce, "the guest resumed the channel"),
        Frame::Usage(u) => {
            if !s.usage.is_empty() {
                let _ = s.usage.remove(0).send(u);
            }
        }
        Frame::Stdout(id, d) => output(&mut s, id, Stream::Stdout, None, d),
        Frame::Stderr(id, d) => output(&mut s, id, Stream::Stderr, None, d),
        Frame::Output(id, stderr, offset, d) => {
            let stream = if stderr {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            output(&mut s, id, stream, Some(offset), d)
        }
        Frame::Exit(id, code, ago) => {
            if let Some((mut log, tx)) = s.logs.remove(&id) {
                log.finish();
                log.save_written();
                s.ended(id, code, ago);
                tx.send_replace(Some(Ended::Code(code)));
            } else if let Some(tx) = s.execs.remove(&id) {
                let _ = tx.send(ExecEvent::Exit(code));
            }
        }
        Frame::Error(id, msg) => {
            if s.logs.contains_key(&id) {
                tracing::warn!(error = %msg, "micro-VM pod container");
                s.errors.insert(id, msg);
            } else if let Some(tx) = s.execs.get(&id) {
                let _ = tx.send(ExecEvent::Error(msg));
            }
        }
        other => tracing::warn!(frame = ?other, "unexpected frame from the guest agent"),
    }
}

/// Output of process `id`: a container's into its log (then acknowledged), an exec
/// session's to it.
fn output(s: &mut Shared, id: u32, stream: Stream, offset: Option<u64>, d: Vec<u8>) {
    if d.is_empty() {
        return;
    }
    if let Some((log, _)) = s.logs.get_mut(&id) {
        log.accept(stream, offset, &d);
        let written = log.save_written();
        if let Some(a) = s.acker.as_ref().filter(|_| s.guest_version >= 2) {
            a.ack(id, written);
        }
    } else if let Some(tx) = s.execs.get(&id) {
        let _ = tx.send(match stream {
            Stream::Stdout => ExecEvent::Stdout(d),
            Stream::Stderr => ExecEvent::Stderr(d),
        });
    }
}

fn lose(shared: &Arc<Mutex<Shared>>, why: String) {
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    s.ready.take();
    s.prepared.clear();
    for (_, tx) in s.execs.drain() {
        let _ = tx.send(ExecEvent::Lost(format!("the micro-VM stopped: {why}")));
    }
    for (_, (mut log, tx)) in s.logs.drain() {
        log.finish();
        tx.send_replace(Some(Ended::Lost(why.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{RestartPolicy, VolumeMount, VolumePlan};

    #[test]
    fn vm_size_rounds_up_with_floors() {
        assert_eq!(vm_size(None), (DEFAULT_MEMORY_MIB, 1));
        let s = |cpu_millis, memory_bytes| {
            vm_size(Some(PodSize {
                cpu_millis,
                memory_bytes,
            }))
        };
        assert_eq!(s(250, 768 << 20), (768, 1));
        assert_eq!(s(2000, (4 << 30) + 1), (4097, 2));
        assert_eq!(s(1500, 1 << 20), (MIN_MEMORY_MIB, 2));
        assert_eq!(s(0, 0), (MIN_MEMORY_MIB, 1));
    }

    fn container(name: &str, mounts: Vec<VolumeMount>) -> ContainerPlan {
        ContainerPlan {
            name: name.into(),
            image: "busybox".into(),
            command: None,
            args: None,
            env: vec![],
            working_dir: None,
            run_as_user: None,
            run_as_group: None,
            supplemental_groups: vec![],
            tty: false,
            stdin: false,
            stdin_once: false,
            cpu_millis: None,
            memory_bytes: None,
            ephemeral_storage_limit: None,
            volume_mounts: mounts,
            pod_ip_env: vec![],
        }
    }

    #[test]
    fn mounts_carry_etc_files_volumes_and_config_files() {
        let mount = |volume: &str, path: &str, sub: Option<&str>| VolumeMount {
            volume: volume.into(),
            path: path.into(),
            read_only: false,
            sub_path: sub.map(str::to_owned),
        };
        let c = container(
            "app",
            vec![
                mount("cache", "/cache", None),
                mount("cache", "/sub", Some("x")),
                mount("cfg", "/etc/app", None),
            ],
        );
        let plan = PodPlan {
            id: "p".into(),
            name: "web".into(),
            namespace: "team".into(),
            hostname: "web".into(),
            init_containers: vec![],
            containers: vec![c.clone()],
            volumes: vec![
                VolumePlan {
                    name: "cache".into(),
                    kind: VolumeKind::EmptyDir {
                        memory: false,
                        size_limit: None,
                    },
                },
                VolumePlan {
                    name: "cfg".into(),
                    kind: VolumeKind::Files {
                        sources: vec!["configmap/cfg".into()],
                        default_mode: 0o644,
                    },
                },
            ],
            share_process_namespace: false,
            grace_period_secs: 30,
            restart_policy: RestartPolicy::Never,
            size: None,
            ephemeral_storage_bytes: crate::plan::DEFAULT_EPHEMERAL_STORAGE,
        };
        let files = BTreeMap::from([(
            "cfg".to_owned(),
            BTreeMap::from([("a.conf".to_owned(), b"A".to_vec())]),
        )]);
        let ip = Some(Ipv4Addr::new(10, 1, 0, 5));
        let m = container_mounts(&plan, &c, ip, None, &files).unwrap();
        let targets: Vec<&str> = m.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(
            targets,
            [
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/cache",
                "/sub",
                "/etc/app/a.conf"
            ]
        );
        assert_eq!(m[0].source, MountSource::File(b"web\n".to_vec()));
        assert!(
            matches!(&m[1].source, MountSource::File(d) if String::from_utf8_lossy(d).contains("10.1.0.5\tweb"))
        );
        assert_eq!(m[3].source, MountSource::Volume("cache".into()));
        assert_eq!(m[4].source, MountSource::Volume("cache/x".into()));
        assert!(m[5].read_only);
        let bad = container("x", vec![mount("nope", "/n", None)]);
        assert!(container_mounts(&plan, &bad, ip, None, &files).is_err());
        assert!(valid_hostname("web-0.a"));
        assert!(!valid_hostname("a b") && !valid_hostname(""));
        assert!(!valid_hostname("x rdinit=/bin/sh"));
    }
}

#[cfg(test)]
mod state_tests {
    use super::*;

    /// A state file of an older version (no run times, no previous run) still loads; the
    /// new fields round-trip.
    #[test]
    fn older_states_load_and_run_ends_round_trip() {
        let old = serde_json::json!({
            "qemu_pid": 1, "next_id": 3, "ip": null, "vm_size": [256, 1], "init_exits": [],
            "containers": [{"name": "main", "id": 1, "root": 1, "args": ["sh"], "env": [],
                            "cwd": "/", "uid": 0, "gid": 0, "dir": "/x", "restarts": 2,
                            "exit": null}]
        });
        let mut st: VmState = serde_json::from_value(old).unwrap();
        // Its guest cannot resume; its offsets are none.
        assert_eq!(st.proto, 1);
        assert_eq!(st.containers[0].acked, [0, 0]);
        st.proto = proto::VERSION;
        st.containers[0].acked = [3, 1 << 33];
        let c = &mut st.containers[0];
        assert_eq!((c.started, c.finished, c.oom_killed), (None, None, false));
        assert!(c.last.is_none());
        let t = SystemTime::now();
        c.last = Some(PastRun {
            code: 137,
            oom_killed: true,
            started: Some(t - Duration::from_secs(3)),
            finished: Some(t),
        });
        c.started = Some(t);
        let back: VmState = serde_json::from_slice(&serde_json::to_vec(&st).unwrap()).unwrap();
        assert_eq!(back, st);
    }
}
