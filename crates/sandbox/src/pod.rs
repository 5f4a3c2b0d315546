//! A pod sandbox: the whole pod on one host. The pod gets a directory under
//! `<data-dir>/pods/<id>` (its plan, volumes, /etc files, namespaces), an address on the pod
//! network, then its init containers run one after the other and its regular containers run
//! together, sharing the network and IPC namespaces, one /dev/shm and, with
//! `shareProcessNamespace`, one PID namespace (the pause container's, as in Kubernetes), each
//! with its own root filesystem.
//!
//! Limits (docs/adr/007-sandbox-limits.md): a gVisor pod's whole sandbox (the sentry, its
//! ptrace stubs and every gofer) lives in one cgroup, [`sandbox_cgroup`], limited to the pod's
//! provisioned size ([`PodPlan::size`]): runsc applies the pause container's
//! `linux.resources` to it and sizes the sentry (CPUs, total memory) from it. The containers'
//! cgroups are nested inside. Ephemeral storage is measured, as kubelet does, by
//! [`storage_usage`]; the agent evicts pods over their limits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::container::{self, ContainerError, Exit, Io};
use crate::image::{ImageStore, PullOptions, Source, SourceError, StoreError};
use crate::network::{Attachment, NetworkError, PodNetwork};
use crate::plan::{ContainerPlan, PodPlan, VolumeKind};
use crate::runtime::{Runtime, RuntimeKind};
use crate::spec::{Mount, PodShm, SandboxContext};

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("image of container {0:?}")]
    Source(String, #[source] SourceError),
    #[error("image of container {0:?}")]
    Image(String, #[source] StoreError),
    #[error("container {0:?}")]
    Container(String, #[source] ContainerError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("init container {name:?} failed with exit code {code}")]
    InitFailed { name: String, code: i32 },
    #[error("creating the pod's IPC namespace: {0}")]
    Namespace(String),
    #[error("pod sandbox (pause container): {0}")]
    Pause(String),
    #[error("no running container {0:?} in the pod")]
    NoContainer(String),
    #[error("volume {0:?}: file path {1:?} escapes the volume")]
    FilePath(String, String),
    #[error("container {0:?} mounts volume {1:?} with subPath {2:?} that escapes it")]
    SubPath(String, String, String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> PodError + 'a {
    move |source| PodError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Files of the pod's ConfigMap/Secret/projected volumes, which the caller (the agent) fetched:
/// volume name -> (relative path -> content).
pub type VolumeFiles = BTreeMap<String, BTreeMap<String, Vec<u8>>>;

/// What is kept in `pod.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub plan: PodPlan,
    pub runtime: RuntimeKind,
    pub ip: Option<std::net::Ipv4Addr>,
    pub netns: Option<String>,
    /// The Kubernetes uid of the pod (agents key pods by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// The pod's phase, as Kubernetes reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

/// The phase from the regular containers' exit codes (all have exited). Pure.
pub fn phase_of(exits: &[i32]) -> Phase {
    if exits.iter().all(|c| *c == 0) {
        Phase::Succeeded
    } else {
        Phase::Failed
    }
}

/// Id of a pod's container on the host.
pub fn container_id(pod_id: &str, name: &str) -> String {
    format!("{pod_id}-{name}")
}

/// `/etc/hosts` of a pod. Pure.
pub fn hosts_file(hostname: &str, ip: Option<std::net::Ipv4Addr>) -> String {
    let mut s = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    if let Some(ip) = ip {
        s.push_str(&format!("{ip}\t{hostname}\n"));
    }
    s
}

/// `/etc/resolv.conf` of a pod in `namespace`. Pure.
pub fn resolv_conf(namespace: &str, nameserver: Option<std::net::Ipv4Addr>) -> String {
    let mut s = String::new();
    if let Some(ns) = nameserver {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    s.push_str(&format!(
        "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    ));
    s
}

/// Joins `rel` under `base`, refusing absolute paths and `..`. Pure.
fn inside(base: &Path, rel: &str) -> Option<PathBuf> {
    let mut p = base.to_path_buf();
    for c in Path::new(rel).components() {
        match c {
            std::path::Component::Normal(n) => p.push(n),
            std::path::Component::CurDir => {}
            _ => return None,
        }
    }
    Some(p)
}

/// Where everything a pod sandbox needs comes from.
#[derive(Clone)]
pub struct Host {
    pub data_dir: PathBuf,
    pub images: Arc<ImageStore>,
    pub network: Option<PodNetwork>,
    pub pull: PullOptions,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// A started pod: its regular containers run; [`PodRun::wait`] collects them.
pub struct PodRun {
    pub id: String,
    pub dir: PathBuf,
    pub ip: Option<std::net::Ipv4Addr>,
    pub init_exits: Vec<Exit>,
    runtime: Arc<dyn Runtime>,
    running: Vec<(
        String,
        tokio::task::JoinHandle<Result<Exit, ContainerError>>,
    )>,
    host: Host,
    context: SandboxContext,
    /// What each regular container runs, to start it again.
    launches: BTreeMap<String, (crate::spec::ContainerConfig, crate::image::Image)>,
    restarts: BTreeMap<String, u32>,
    pod_cpu: Option<u64>,
    solo: bool,
}

impl std::fmt::Debug for PodRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodRun")
            .field("id", &self.id)
            .field("ip", &self.ip)
            .finish()
    }
}

/// The directory of pod `id`.
pub fn dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("pods").join(id)
}

/// Pulls (or finds in the store) every image of the plan: image reference -> image.
pub async fn pull_images(
    host: &Host,
    plan: &PodPlan,
) -> Result<BTreeMap<String, crate::image::Image>, PodError> {
    let mut images = BTreeMap::new();
    for c in plan.init_containers.iter().chain(&plan.containers) {
        if images.contains_key(&c.image) {
            continue;
        }
        let src: Source = c
            .image
            .parse()
            .map_err(|e| PodError::Source(c.name.clone(), e))?;
        let img = host
            .images
            .ensure(&src, &host.pull)
            .await
            .map_err(|e| PodError::Image(c.name.clone(), e))?;
        images.insert(c.image.clone(), img);
    }
    Ok(images)
}

/// Creates the pod sandbox and starts it: network, volumes, init containers (in order, each must
/// succeed), then all regular containers.
pub async fn start(
    host: &Host,
    runtime: Arc<dyn Runtime>,
    plan: &PodPlan,
    files: &VolumeFiles,
) -> Result<PodRun, PodError> {
    // Images first: a pod whose image cannot be had never gets a network address.
    let images = pull_images(host, plan).await?;
    debug!(pod = %plan.id, "images present");
    let sandbox = prepare(host, runtime.clone(), plan, files, &Prepare::default()).await?;
    debug!(pod = %plan.id, "sandbox prepared");

    let mut init_exits = Vec::new();
    for c in &plan.init_containers {
        let started = sandbox.launch(c, &images[&c.image], 0).await?;
        let exit = started
            .wait()
            .await
            .map_err(|e| PodError::Container(c.name.clone(), e))?;
        info!(pod = %plan.id, container = %c.name, code = exit.code, "init container finished");
        if exit.code != 0 {
            return Err(PodError::InitFailed {
                name: c.name.clone(),
                code: exit.code,
            });
        }
        init_exits.push(exit);
    }

    let mut running = Vec::new();
    let mut launches = BTreeMap::new();
    for c in &plan.containers {
        let img = &images[&c.image];
        let cfg = sandbox.config_for(c)?;
        let started = sandbox.launch_config(&c.name, &cfg, img, 0).await?;
        launches.insert(c.name.clone(), (cfg, img.clone()));
        running.push((c.name.clone(), tokio::spawn(started.wait())));
    }
    info!(pod = %plan.id, ip = ?sandbox.ip, runtime = %runtime.kind(), "pod running");
    Ok(PodRun {
        id: plan.id.clone(),
        dir: sandbox.dir.clone(),
        ip: sandbox.ip,
        init_exits,
        runtime,
        running,
        host: host.clone(),
        context: sandbox.context.clone(),
        launches,
        restarts: BTreeMap::new(),
        pod_cpu: sandbox.pod_cpu,
        solo: sandbox.solo.is_some(),
    })
}

/// Options of [`prepare`].
#[derive(Debug, Clone, Default)]
pub struct Prepare {
    /// The pod's address on the network (None: the network allocates one).
    pub ip: Option<std::net::Ipv4Addr>,
    /// The Kubernetes uid of the pod, kept in the record.
    pub uid: Option<String>,
}

/// A pod sandbox whose shared parts exist (directory, network, /etc files, volumes, IPC
/// namespace, gVisor's pause container): containers are launched into it one by one.
#[derive(Clone)]
pub struct Sandbox {
    pub id: String,
    pub dir: PathBuf,
    pub ip: Option<std::net::Ipv4Addr>,
    /// The pod's network namespace (`/run/netns/...`), if it is on a network.
    pub netns_path: Option<PathBuf>,
    runtime: Arc<dyn Runtime>,
    host: Host,
    context: SandboxContext,
    /// A [`solo`] pod: its size (None when the pod has no provisioned size) caps the
    /// container's resources.
    solo: Option<Option<crate::plan::PodSize>>,
    /// The CPU limit (thousandths) of a gVisor pod's sandbox, applied once its containers run.
    pod_cpu: Option<u64>,
    /// The pod's network namespace was set up by [`prepare`] and no sandbox has booted in it
    /// yet (shared by clones).
    fresh_net: Arc<std::sync::atomic::AtomicBool>,
    /// Volumes of the pod that Kubernetes always mounts read-only (ConfigMap, Secret,
    /// projected, downward API).
    read_only_volumes: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("ip", &self.ip)
            .finish()
    }
}

pub fn write_record(pdir: &Path, record: &PodRecord) -> Result<(), PodError> {
    let rec_path = pdir.join("pod.json");
    let tmp = pdir.join("pod.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(record).unwrap_or_default())
        .map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &rec_path).map_err(io("rename", &rec_path))
}

/// Reads the record of pod `id`.
pub fn read_record(data_dir: &Path, id: &str) -> Option<PodRecord> {
    let b = std::fs::read(dir(data_dir, id).join("pod.json")).ok()?;
    serde_json::from_slice(&b).ok()
}

/// Records the Kubernetes uid of pod `id` (a record written before uids were kept).
pub fn set_uid(data_dir: &Path, id: &str, uid: &str) -> Result<(), PodError> {
    let pdir = dir(data_dir, id);
    let Some(mut rec) = read_record(data_dir, id) else {
        return Err(PodError::NoContainer(id.to_owned()));
    };
    if rec.uid.as_deref() != Some(uid) {
        rec.uid = Some(uid.to_owned());
        write_record(&pdir, &rec)?;
    }
    Ok(())
}

/// The cgroup scope of an engine on this host: cgroups are host-wide, so they are named after
/// the data dir and two engines never collide (the same scope as the containers' cgroups).
fn cgroup_scope(data_dir: &Path) -> String {
    format!(
        "nodeless-{}",
        &crate::digest::Digest::of(data_dir.as_os_str().as_encoded_bytes()).hex()[..8]
    )
}

/// The cgroup (a path relative to the root of every hierarchy, e.g.
/// `/sys/fs/cgroup/cpuacct/<this>`) that holds a gVisor pod's whole sandbox, limited to the
/// pod's size. The pod's containers get cgroups below it.
pub fn sandbox_cgroup(data_dir: &Path, pod_id: &str) -> String {
    format!("/{}/pod-{pod_id}", cgroup_scope(data_dir))
}

/// Whether a pod runs without a pause container: a gVisor pod with one regular container makes
/// that container the root of its own sandbox. That saves the pause sandbox and the join (two
/// runsc create/start rounds, ~40% of a pod start), a gofer, a shim and two `runsc wait`s per
/// pod. The container's cgroup is then the sandbox's, limited to the smaller of its own limits
/// and the pod's size, so going over its memory limit ends the sandbox and is reported
/// OOMKilled. Init containers run before it the same way, each in a sandbox of its own on the
/// pod's network namespace and volumes. A restart starts a new sandbox in the same network
/// namespace, so the pod keeps its address.
pub fn solo(plan: &PodPlan, kind: RuntimeKind) -> bool {
    kind == RuntimeKind::Gvisor && plan.containers.len() == 1
}

/// The resources of a container that is a whole sandbox: its own limits, capped by the pod's
/// size (a container without limits gets the pod's size).
fn capped(
    own: crate::spec::Resources,
    size: Option<crate::plan::PodSize>,
) -> crate::spec::Resources {
    let min = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    crate::spec::Resources {
        cpu_millis: min(own.cpu_millis, size.map(|s| s.cpu_millis)),
        memory_bytes: min(own.memory_bytes, size.map(|s| s.memory_bytes)),
    }
}

/// Removes the cgroup directories of `path` (its children first) in every hierarchy. Best
/// effort: a cgroup that still has processes stays.
fn remove_cgroup_tree(path: &str) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in rd.flatten() {
        let dir = h.path().join(path.trim_start_matches('/'));
        if let Ok(children) = std::fs::read_dir(&dir) {
            for c in children.flatten() {
                if c.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&dir);
        // The engine's scope too, once no pod is left in it.
        if let Some(scope) = dir.parent() {
            let _ = std::fs::remove_dir(scope);
        }
    }
}

/// Removes the child cgroups of `path` in every hierarchy, waiting (at most 5 s) for the
/// processes still in them to end.
async fn empty_child_cgroups(path: &str) {
    let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    let hierarchies: Vec<PathBuf> = rd.flatten().map(|h| h.path()).collect();
    for _ in 0..100 {
        let mut left = false;
        for h in &hierarchies {
            let Ok(children) = std::fs::read_dir(h.join(path.trim_start_matches('/'))) else {
                continue;
            };
            for c in children.flatten() {
                if c.file_type().is_ok_and(|t| t.is_dir()) && std::fs::remove_dir(c.path()).is_err()
                {
                    left = true;
                }
            }
        }
        if !left {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    warn!(
        cgroup = path,
        "container cgroups of the pod still busy at removal"
    );
}

/// Creates the shared parts of the pod sandbox (idempotent: a pod prepared again keeps its
/// address and namespaces).
pub async fn prepare(
    host: &Host,
    runtime: Arc<dyn Runtime>,
    plan: &PodPlan,
    files: &VolumeFiles,
    options: &Prepare,
) -> Result<Sandbox, PodError> {
    let pdir = dir(&host.data_dir, &plan.id);
    std::fs::create_dir_all(pdir.join("etc")).map_err(io("create", &pdir))?;

    let attachment: Option<Attachment> = match &host.network {
        Some(net) => Some(net.attach_with_ip(&plan.id, options.ip).await?),
        None => None,
    };
    let ip = attachment.as_ref().map(|a| a.ip);
    let record = PodRecord {
        plan: plan.clone(),
        runtime: runtime.kind(),
        ip,
        netns: attachment.as_ref().map(|a| a.netns.clone()),
        uid: options.uid.clone(),
    };
    write_record(&pdir, &record)?;

    // /etc files shared by the pod's containers.
    let etc = pdir.join("etc");
    for (name, content) in [
        ("hosts", hosts_file(&plan.hostname, ip)),
        (
            "resolv.conf",
            resolv_conf(&plan.namespace, attachment.as_ref().map(|a| a.gateway)),
        ),
        ("hostname", format!("{}\n", plan.hostname)),
    ] {
        let p = etc.join(name);
        std::fs::write(&p, content).map_err(io("write", &p))?;
    }

    // Volumes.
    let vols = pdir.join("volumes");
    for v in &plan.volumes {
        let vdir = vols.join(&v.name);
        std::fs::create_dir_all(&vdir).map_err(io("create", &vdir))?;
        if let VolumeKind::Files { default_mode, .. } = &v.kind {
            for (rel, content) in files.get(&v.name).into_iter().flatten() {
                let p = inside(&vdir, rel)
                    .ok_or_else(|| PodError::FilePath(v.name.clone(), rel.clone()))?;
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
                }
                std::fs::write(&p, content).map_err(io("write", &p))?;
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*default_mode))
                    .map_err(io("chmod", &p))?;
            }
        } else {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&vdir, std::fs::Permissions::from_mode(0o777))
                .map_err(io("chmod", &vdir))?;
        }
    }

    // The pod's IPC namespace, kept alive by a bind mount on a file.
    let ipc = pdir.join("ipc.ns");
    if runtime.kind() == RuntimeKind::Container && !crate::rootfs::is_mountpoint(&ipc) {
        std::fs::write(&ipc, b"").map_err(io("create", &ipc))?;
        let out = tokio::process::Command::new("unshare")
            .arg(format!("--ipc={}", ipc.display()))
            .arg("true")
            .output()
            .await
            .map_err(io("run unshare for", &ipc))?;
        if !out.status.success() {
            return Err(PodError::Namespace(
                String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            ));
        }
    }
    // The pod's /dev/shm, shared by its containers. crun: a tmpfs of kubelet's default size on
    // the host. runsc: the sentry keeps one tmpfs for the whole sandbox (a pod mount hint on the
    // pause container, see `start_pause`); the directory only names it.
    let shm = pdir.join(SHM);
    if matches!(runtime.kind(), RuntimeKind::Container | RuntimeKind::Gvisor) {
        std::fs::create_dir_all(&shm).map_err(io("create", &shm))?;
    }
    if runtime.kind() == RuntimeKind::Container && !crate::rootfs::is_mountpoint(&shm) {
        let opts =
            std::ffi::CString::new(format!("mode=1777,size={SHM_BYTES}")).unwrap_or_default();
        use rustix::mount::MountFlags;
        rustix::mount::mount(
            "shm",
            &shm,
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            Some(opts.as_c_str()),
        )
        .map_err(|e| io("mount a tmpfs on", &shm)(e.into()))?;
    }
    let mut sandbox = Sandbox {
        id: plan.id.clone(),
        dir: pdir,
        ip,
        netns_path: attachment.as_ref().map(|a| a.netns_path.clone()),
        runtime: runtime.clone(),
        host: host.clone(),
        context: SandboxContext::default(),
        solo: None,
        pod_cpu: None,
        fresh_net: Default::default(),
        read_only_volumes: Default::default(),
    };
    sandbox.context = sandbox.base_context(plan);
    sandbox
        .fresh_net
        .store(attachment.is_some(), std::sync::atomic::Ordering::Release);
    // gVisor: one sandbox for the whole pod, held by a pause container the others join; they
    // share its network stack (the pod netns), IPC, /dev/shm and (when asked) PID namespaces.
    // The whole sandbox is confined to the pod's size. A solo pod needs no pause.
    if runtime.kind() == RuntimeKind::Gvisor && sandbox.solo.is_none() {
        let mut bare = sandbox.context.clone();
        bare.annotations.clear();
        bare.cgroups_path = Some(sandbox_cgroup(&host.data_dir, &plan.id));
        let reaper = plan.share_process_namespace;
        start_pause(host, &runtime, &plan.id, &bare, plan.size, reaper).await?;
    }
    // crun: a PID namespace lives as long as its first process; a pod that shares one gets a
    // pause container to hold it (under a shim, like gVisor's), its namespace bind-mounted
    // where the containers join it.
    if runtime.kind() == RuntimeKind::Container && plan.share_process_namespace {
        let mut bare = sandbox.context.clone();
        bare.pidns = None;
        hold_pid_namespace(host, &runtime, &plan.id, &sandbox.dir, &bare).await?;
    }
    Ok(sandbox)
}

/// The sandbox of a pod prepared earlier (by this or an earlier agent process), from its record;
/// None if the pod was never prepared.
pub fn reopen(host: &Host, runtime: Arc<dyn Runtime>, plan: &PodPlan) -> Option<Sandbox> {
    let record = read_record(&host.data_dir, &plan.id)?;
    let mut sandbox = Sandbox {
        id: plan.id.clone(),
        dir: dir(&host.data_dir, &plan.id),
        ip: record.ip,
        netns_path: record
            .netns
            .as_deref()
            .map(|n| Path::new("/run/netns").join(n)),
        runtime,
        host: host.clone(),
        context: SandboxContext::default(),
        solo: None,
        pod_cpu: None,
        fresh_net: Default::default(),
        read_only_volumes: Default::default(),
    };
    sandbox.context = sandbox.base_context(plan);
    Some(sandbox)
}

impl Sandbox {
    fn base_context(&mut self, plan: &PodPlan) -> SandboxContext {
        let kind = self.runtime.kind();
        self.solo = solo(plan, kind).then_some(plan.size);
        self.pod_cpu = (kind == RuntimeKind::Gvisor && self.solo.is_none())
            .then(|| plan.size.map(|s| s.cpu_millis))
            .flatten();
        self.read_only_volumes = plan
            .volumes
            .iter()
            .filter(|v| matches!(v.kind, VolumeKind::Files { .. }))
            .map(|v| v.name.clone())
            .collect();
        // One /dev/shm and (when asked) one PID namespace for the pod; a solo pod has one
        // container, which keeps a /dev/shm of its own.
        let pod_wide =
            kind == RuntimeKind::Container || (kind == RuntimeKind::Gvisor && self.solo.is_none());
        let mut context = SandboxContext {
            hostname: plan.hostname.clone(),
            netns: self.netns_path.clone(),
            ipcns: (kind == RuntimeKind::Container).then(|| self.dir.join("ipc.ns")),
            pidns: (pod_wide && plan.share_process_namespace).then(|| self.dir.join(PID_NS)),
            shm: pod_wide.then(|| match kind {
                RuntimeKind::Gvisor => PodShm::Sentry(self.dir.join(SHM)),
                _ => PodShm::Host(self.dir.join(SHM)),
            }),
            ..Default::default()
        };
        if self.solo.is_some() {
            context.cgroups_path = Some(sandbox_cgroup(&self.host.data_dir, &plan.id));
        }
        if kind == RuntimeKind::Gvisor && self.solo.is_none() {
            context.annotations = vec![
                (crate::runtime::CONTAINER_TYPE.into(), "container".into()),
                (crate::runtime::SANDBOX_ID.into(), pause_id(&plan.id)),
            ];
        }
        context
    }

    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// The configuration of container `c` in this sandbox: its plan plus the pod IP variables,
    /// the pod's /etc files and its volume mounts.
    pub fn config_for(&self, c: &ContainerPlan) -> Result<crate::spec::ContainerConfig, PodError> {
        let etc = self.dir.join("etc");
        let vols = self.dir.join("volumes");
        let mut cfg = c.config();
        if let Some(size) = self.solo {
            cfg.resources = capped(cfg.resources, size);
        }
        for k in &c.pod_ip_env {
            cfg.env.push((
                k.clone(),
                self.ip.map(|ip| ip.to_string()).unwrap_or_default(),
            ));
        }
        for name in ["hosts", "resolv.conf", "hostname"] {
            cfg.mounts.push(Mount {
                host_path: etc.join(name),
                container_path: format!("/etc/{name}"),
                read_only: false,
            });
        }
        for m in &c.volume_mounts {
            let base = vols.join(&m.volume);
            let host_path = match &m.sub_path {
                Some(sp) => {
                    let p = inside(&base, sp).ok_or_else(|| {
                        PodError::SubPath(c.name.clone(), m.volume.clone(), sp.clone())
                    })?;
                    std::fs::create_dir_all(&p).map_err(io("create", &p))?;
                    p
                }
                None => base,
            };
            cfg.mounts.push(Mount {
                host_path,
                container_path: m.path.clone(),
                read_only: m.read_only || self.read_only_volumes.contains(&m.volume),
            });
        }
        Ok(cfg)
    }

    /// Starts container `c` (its `restart_count`-th run: a fresh writable layer and log file).
    pub async fn launch(
        &self,
        c: &ContainerPlan,
        image: &crate::image::Image,
        restart_count: u32,
    ) -> Result<container::Started, PodError> {
        let cfg = self.config_for(c)?;
        self.launch_config(&c.name, &cfg, image, restart_count)
            .await
    }

    /// [`Sandbox::launch`] with the configuration [`Sandbox::config_for`] gave for container
    /// `name`.
    async fn launch_config(
        &self,
        name: &str,
        cfg: &crate::spec::ContainerConfig,
        image: &crate::image::Image,
        restart_count: u32,
    ) -> Result<container::Started, PodError> {
        // Every sandbox of a solo pod but the first finds the pod's address taken off eth0.
        let first = self
            .fresh_net
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        let restore_ip = self.ip.filter(|_| self.solo.is_some() && !first);
        launch_in(
            &self.host,
            &self.runtime,
            &self.context,
            &self.id,
            name,
            cfg,
            image,
            restart_count,
            self.pod_cpu,
            restore_ip,
        )
        .await
    }
}

/// Starts container `name` of pod `pod_id` with configuration `cfg` (its `restart_count`-th
/// run: a fresh writable layer and log file).
///
/// A gVisor sandbox boots unthrottled: booting is the host's work, not the pod's, and under a
/// quarter-core quota it takes four times as long. Its CPU limit (`pod_cpu` for a pod with a
/// pause container, the container's own for a [`solo`] pod) is set on the pod's cgroup as soon
/// as the container runs, before the start is reported.
///
/// A gVisor sandbox takes the pod's address off eth0 when it boots (its own network stack
/// answers for it), so a later sandbox of a solo pod (after an init container, or a restart)
/// gets `restore_ip` put back first.
#[allow(clippy::too_many_arguments)]
async fn launch_in(
    host: &Host,
    runtime: &Arc<dyn Runtime>,
    context: &SandboxContext,
    pod_id: &str,
    name: &str,
    cfg: &crate::spec::ContainerConfig,
    image: &crate::image::Image,
    restart_count: u32,
    pod_cpu: Option<u64>,
    restore_ip: Option<std::net::Ipv4Addr>,
) -> Result<container::Started, PodError> {
    let id = container_id(pod_id, name);
    if let (Some(ip), Some(net)) = (restore_ip, &host.network) {
        net.restore(pod_id, ip).await?;
    }
    let context = container_context(context, &host.data_dir, pod_id, name);
    let mut cfg = cfg.clone();
    let own_sandbox = runtime.kind() == RuntimeKind::Gvisor && !context.joins_sandbox();
    let cpu = if own_sandbox {
        cfg.resources.cpu_millis.take()
    } else {
        pod_cpu
    };
    let started = container::start(
        &host.data_dir,
        &host.images,
        runtime.clone(),
        container::Launch {
            id: &id,
            image,
            config: &cfg,
            sandbox: &context,
            io: Io::Logged,
            restart_count,
        },
    )
    .await
    .map_err(|e| PodError::Container(name.to_owned(), e))?;
    if runtime.kind() == RuntimeKind::Gvisor
        && let Some(millis) = cpu
    {
        if !runtime
            .wait_running(&id, std::time::Duration::from_secs(10))
            .await
        {
            debug!(%id, "not seen running before its CPU limit is set");
        }
        set_cpu_limit(&sandbox_cgroup(&host.data_dir, pod_id), millis);
    }
    debug!(%id, "container running");
    Ok(started)
}

/// Sets the CPU limit of cgroup `path` (relative to the cgroup root): `cpu.cfs_quota_us` in a
/// v1 hierarchy, `cpu.max` in a v2 one. Best effort, logged.
fn set_cpu_limit(path: &str, millis: u64) {
    const PERIOD: u64 = 100_000;
    let quota = (millis * PERIOD / 1000).max(1000);
    let rel = path.trim_start_matches('/');
    let v1 = Path::new("/sys/fs/cgroup/cpu").join(rel);
    let result = if v1.join("cpu.cfs_quota_us").exists() {
        std::fs::write(v1.join("cpu.cfs_period_us"), PERIOD.to_string())
            .and_then(|()| std::fs::write(v1.join("cpu.cfs_quota_us"), quota.to_string()))
    } else {
        std::fs::write(
            Path::new("/sys/fs/cgroup").join(rel).join("cpu.max"),
            format!("{quota} {PERIOD}"),
        )
    };
    match result {
        Ok(()) => debug!(cgroup = path, millis, "pod CPU limit set"),
        Err(e) => warn!(cgroup = path, error = %e, "setting the pod's CPU limit"),
    }
}

/// The context of container `name` of a pod: in a gVisor pod its cgroup lies inside the
/// sandbox's (runsc creates it empty and puts the container's gofer there, so the gofer counts
/// against the pod's size too). runsc does not hold such a container to its own memory limit:
/// a watchdog in its shim does ([`crate::limitwatch`]).
fn container_context(
    context: &SandboxContext,
    data_dir: &Path,
    pod_id: &str,
    name: &str,
) -> SandboxContext {
    let mut context = context.clone();
    if context.joins_sandbox() {
        context.cgroups_path = Some(format!("{}/{name}", sandbox_cgroup(data_dir, pod_id)));
    }
    context
}

/// The pod's /dev/shm (a directory of the pod's) and its size: kubelet's default.
const SHM: &str = "shm";
pub const SHM_BYTES: u64 = 64 << 20;
/// The pod's shared PID namespace (shareProcessNamespace): for crun a bind mount of the pause
/// container's; for runsc a name the sentry matches between its containers' specs.
const PID_NS: &str = "pid.ns";

/// runsc's pod mount hint for the pod's /dev/shm: every container of the sandbox that mounts
/// `source` gets the same tmpfs in the sentry (memory of the sandbox, shared between them, as
/// containerd-shim-runsc does it for Kubernetes' shared volumes).
fn shm_mount_hint(source: &Path) -> Vec<(String, String)> {
    let key = |field: &str| format!("dev.gvisor.spec.mount.pod-shm.{field}");
    vec![
        (key("source"), source.display().to_string()),
        (key("type"), "tmpfs".into()),
        (key("share"), "pod".into()),
    ]
}

/// The host PID of crun container `id`'s first process, from crun's state (`<root>/<id>/status`).
fn crun_pid(data_dir: &Path, id: &str) -> Option<i32> {
    let p = data_dir
        .join("runtime")
        .join(RuntimeKind::Container.to_string())
        .join(id)
        .join("status");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    v.get("pid")?.as_i64().and_then(|p| i32::try_from(p).ok())
}

/// Starts (unless it runs) the pause container of crun pod `pod_id` in a PID namespace of its
/// own and bind-mounts that namespace on the pod's `pid.ns`, where its containers join it.
async fn hold_pid_namespace(
    host: &Host,
    runtime: &Arc<dyn Runtime>,
    pod_id: &str,
    pdir: &Path,
    context: &SandboxContext,
) -> Result<(), PodError> {
    let target = pdir.join(PID_NS);
    let id = pause_id(pod_id);
    // Held already (the runtime asked only then: a new pod's pause starts at once).
    if crate::rootfs::is_mountpoint(&target) {
        if runtime.status(&id).await.ok().flatten().as_deref() == Some("running") {
            return Ok(());
        }
        rustix::mount::unmount(&target, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| io("unmount", &target)(e.into()))?;
    }
    start_pause(host, runtime, pod_id, context, None, true).await?;
    // `crun run` under the shim: the state names the pause's process once it is created.
    let own = std::fs::read_link("/proc/self/ns/pid").ok();
    let mut ns = None;
    for _ in 0..400 {
        if let Some(pid) = crun_pid(&host.data_dir, &id) {
            let path = PathBuf::from(format!("/proc/{pid}/ns/pid"));
            if std::fs::read_link(&path)
                .ok()
                .is_some_and(|l| Some(l) != own)
            {
                ns = Some(path);
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let ns = ns.ok_or_else(|| PodError::Pause("the pause container never ran".into()))?;
    std::fs::write(&target, b"").map_err(io("create", &target))?;
    rustix::mount::mount_bind(&ns, &target)
        .map_err(|e| io("bind-mount the pause's PID namespace on", &target)(e.into()))?;
    debug!(pod = pod_id, "PID namespace held by the pause container");
    Ok(())
}

/// The pause container's id for pod `pod_id`.
pub fn pause_id(pod_id: &str) -> String {
    container_id(pod_id, "pause")
}

/// The pause root filesystem: the host's static busybox, copied once.
fn pause_rootfs(data_dir: &Path) -> Result<PathBuf, PodError> {
    let root = data_dir.join("pause").join("rootfs");
    let bin = root.join("bin/busybox");
    if bin.is_file() {
        return Ok(root);
    }
    let src = Path::new("/bin/busybox");
    if !src.is_file() {
        return Err(PodError::Pause(
            "needs a static /bin/busybox: apt-get install busybox-static".into(),
        ));
    }
    let dir = root.join("bin");
    std::fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(io("create", &p))?;
    }
    let tmp = dir.join(".busybox.tmp");
    std::fs::copy(src, &tmp).map_err(io("copy", &tmp))?;
    std::fs::rename(&tmp, &bin).map_err(io("rename", &bin))?;
    Ok(root)
}

/// The pause of a pod that shares its PID namespace is the namespace's first process, which
/// inherits every orphan: like Kubernetes' pause it reaps them (busybox sh's `wait` reaps any
/// child), and it ends on SIGTERM.
const PAUSE_REAPER: [&str; 4] = [
    "/bin/busybox",
    "sh",
    "-c",
    "trap 'exit 0' TERM; while :; do /bin/busybox sleep 2147483647 & wait $!; done",
];

/// Starts pod `pod_id`'s pause container (unless it runs): `reaper` when it is the first
/// process of the pod's shared PID namespace.
async fn start_pause(
    host: &Host,
    runtime: &Arc<dyn Runtime>,
    pod_id: &str,
    context: &SandboxContext,
    size: Option<crate::plan::PodSize>,
    reaper: bool,
) -> Result<String, PodError> {
    let id = pause_id(pod_id);
    if runtime.status(&id).await.ok().flatten().as_deref() == Some("running") {
        return Ok(id);
    }
    runtime
        .delete(&id)
        .await
        .map_err(|e| PodError::Pause(e.to_string()))?;
    let rootfs = pause_rootfs(&host.data_dir)?;
    let cfg = crate::spec::ContainerConfig {
        name: "pause".into(),
        command: Some(if reaper {
            PAUSE_REAPER.map(String::from).to_vec()
        } else {
            ["/bin/busybox", "sleep", "2147483647"]
                .map(String::from)
                .to_vec()
        }),
        // runsc applies the sandbox container's resources to the sandbox's cgroup; the CPU
        // limit comes once the containers run (see `launch_in`).
        resources: crate::spec::Resources {
            cpu_millis: None,
            memory_bytes: size.map(|s| s.memory_bytes),
        },
        ..Default::default()
    };
    let mut sb = context.clone();
    if runtime.kind() == RuntimeKind::Gvisor {
        sb.annotations = vec![
            (crate::runtime::CONTAINER_TYPE.into(), "sandbox".into()),
            (crate::runtime::SANDBOX_ID.into(), id.clone()),
        ];
        if let Some(PodShm::Sentry(shm)) = &context.shm {
            sb.annotations.extend(shm_mount_hint(shm));
        }
    }
    let spec = crate::spec::runtime_spec(&cfg, &Default::default(), (0, 0), &rootfs, &sb)
        .map_err(|e| PodError::Pause(e.to_string()))?;
    let bundle = container::dir(&host.data_dir, &id);
    std::fs::create_dir_all(&bundle).map_err(io("create", &bundle))?;
    let p = bundle.join("config.json");
    std::fs::write(&p, serde_json::to_vec_pretty(&spec).unwrap_or_default())
        .map_err(io("write", &p))?;
    // The pause lives until the pod is removed (under a shim when one is set, so it outlives
    // the agent); nobody waits for it.
    let _pause = container::start_pause(&host.data_dir, runtime.clone(), &id)
        .await
        .map_err(|e| PodError::Pause(e.to_string()))?;
    Ok(id)
}

impl PodRun {
    /// Host ids of the regular containers.
    pub fn container_ids(&self) -> Vec<String> {
        self.running
            .iter()
            .map(|(n, _)| container_id(&self.id, n))
            .collect()
    }

    /// Stops every container: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&self, grace: std::time::Duration) {
        for id in self.container_ids() {
            if let Err(e) = self.runtime.kill(&id, 15).await {
                warn!(%id, error = %e, "SIGTERM failed (already exited?)");
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self.running.iter().all(|(_, h)| h.is_finished()) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for id in self.container_ids() {
            let _ = self.runtime.kill(&id, 9).await;
        }
    }

    /// Restarts one regular container: stops it (SIGTERM, SIGKILL after `grace`), then starts it
    /// again with a fresh writable layer and a new log file. Returns how the previous run ended.
    pub async fn restart(
        &mut self,
        name: &str,
        grace: std::time::Duration,
    ) -> Result<Exit, PodError> {
        let pos = self
            .running
            .iter()
            .position(|(n, _)| n == name)
            .ok_or_else(|| PodError::NoContainer(name.to_owned()))?;
        let id = container_id(&self.id, name);
        let (_, mut handle) = self.running.remove(pos);
        if !handle.is_finished() {
            let _ = self.runtime.kill(&id, 15).await;
        }
        let previous = match tokio::time::timeout(grace, &mut handle).await {
            Ok(joined) => joined,
            Err(_) => {
                let _ = self.runtime.kill(&id, 9).await;
                handle.await
            }
        };
        let previous = previous
            .map_err(|e| {
                PodError::Container(
                    name.to_owned(),
                    ContainerError::Io {
                        op: "join",
                        path: PathBuf::new(),
                        source: std::io::Error::other(e),
                    },
                )
            })?
            .map_err(|e| PodError::Container(name.to_owned(), e))?;
        let count = self.restarts.entry(name.to_owned()).or_insert(0);
        *count += 1;
        let restart_count = *count;
        let (cfg, img) = self
            .launches
            .get(name)
            .ok_or_else(|| PodError::NoContainer(name.to_owned()))?;
        let started = launch_in(
            &self.host,
            &self.runtime,
            &self.context,
            &self.id,
            name,
            cfg,
            img,
            restart_count,
            self.pod_cpu,
            self.ip.filter(|_| self.solo),
        )
        .await?;
        self.running
            .insert(pos, (name.to_owned(), tokio::spawn(started.wait())));
        info!(pod = %self.id, container = name, restart_count, "container restarted");
        Ok(previous)
    }

    /// Runs `args` in a regular container and collects its output (no TTY).
    pub async fn exec(
        &self,
        name: &str,
        args: &[String],
    ) -> Result<std::process::Output, PodError> {
        let id = container_id(&self.id, name);
        let child = self
            .runtime
            .exec(&id, args, false, crate::runtime::Stdio::piped())
            .map_err(|e| PodError::Container(name.to_owned(), e.into()))?;
        child
            .wait_with_output()
            .await
            .map_err(io("exec in", &self.dir))
    }

    /// Waits for every regular container; returns (name, exit) in spec order and the pod phase.
    pub async fn wait(self) -> Result<(Vec<(String, Exit)>, Phase), PodError> {
        let mut out = Vec::new();
        for (name, h) in self.running {
            let exit = h
                .await
                .map_err(|e| {
                    PodError::Container(
                        name.clone(),
                        ContainerError::Io {
                            op: "join",
                            path: PathBuf::new(),
                            source: std::io::Error::other(e),
                        },
                    )
                })?
                .map_err(|e| PodError::Container(name.clone(), e))?;
            out.push((name, exit));
        }
        let phase = phase_of(&out.iter().map(|(_, e)| e.code).collect::<Vec<_>>());
        Ok((out, phase))
    }
}

/// Waits (at most 10 s) until the shim of the container directory `dir`, if any, has exited:
/// it cleans up after its container, and must be done before the directory goes.
async fn shim_gone(dir: &Path) {
    let Some(pid) = crate::shim::read_pid(dir) else {
        return;
    };
    for _ in 0..200 {
        if !crate::shim::is_alive(pid, dir) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    warn!(dir = %dir.display(), pid, "container shim still running at removal");
}

/// Removes a stopped pod: its containers' directories, its namespaces, its address, its files.
pub async fn remove(host: &Host, runtime: &dyn Runtime, plan: &PodPlan) -> Result<(), PodError> {
    if runtime.kind() == RuntimeKind::Gvisor && !solo(plan, runtime.kind()) {
        let pause = pause_id(&plan.id);
        let _ = runtime.kill(&pause, 9).await;
        // runsc removes the sandbox's cgroup on delete and gives up while the containers'
        // cgroups (created inside it) remain: those go first, once their gofers are gone.
        empty_child_cgroups(&sandbox_cgroup(&host.data_dir, &plan.id)).await;
        runtime
            .delete(&pause)
            .await
            .map_err(|e| PodError::Pause(e.to_string()))?;
        let pdir = container::dir(&host.data_dir, &pause);
        shim_gone(&pdir).await;
        let _ = std::fs::remove_dir_all(pdir);
    }
    let cleanup_cgroup = runtime.kind() == RuntimeKind::Gvisor;
    for c in plan.init_containers.iter().chain(&plan.containers) {
        let id = container_id(&plan.id, &c.name);
        shim_gone(&container::dir(&host.data_dir, &id)).await;
        container::remove(&host.data_dir, &id)
            .map_err(|e| PodError::Container(c.name.clone(), e))?;
    }
    if cleanup_cgroup {
        remove_cgroup_tree(&sandbox_cgroup(&host.data_dir, &plan.id));
    }
    if let Some(net) = &host.network {
        net.detach(&plan.id).await?;
    }
    if runtime.kind() == RuntimeKind::Container && plan.share_process_namespace {
        let pause = pause_id(&plan.id);
        let _ = runtime.kill(&pause, 9).await;
        let pdir = container::dir(&host.data_dir, &pause);
        shim_gone(&pdir).await;
        runtime
            .delete(&pause)
            .await
            .map_err(|e| PodError::Pause(e.to_string()))?;
        let _ = std::fs::remove_dir_all(pdir);
    }
    let pdir = dir(&host.data_dir, &plan.id);
    for ns in ["ipc.ns", PID_NS, SHM] {
        let p = pdir.join(ns);
        if crate::rootfs::is_mountpoint(&p) {
            rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH)
                .map_err(|e| io("unmount", &p)(e.into()))?;
        }
    }
    match std::fs::remove_dir_all(&pdir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io("remove", &pdir)(e)),
    }
}

/// Local ephemeral storage a pod uses, measured as kubelet measures it: bytes of disk blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageUsage {
    /// Per container (init and regular, by name): its writable layer plus its log files.
    pub containers: BTreeMap<String, u64>,
    /// Per disk-backed volume (emptyDir not in memory, ConfigMap/Secret/projected files).
    pub volumes: BTreeMap<String, u64>,
    /// Containers and volumes together: what counts against the pod's limits.
    pub total: u64,
}

/// Bytes of disk blocks under `root` (like `du -s`): symlinks not followed, other filesystems
/// not entered, a file with several links counted once.
fn disk_usage(root: &Path, seen: &mut std::collections::HashSet<(u64, u64)>) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return 0;
    };
    let dev = top.dev();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.dev() != dev {
            continue;
        }
        if !md.is_dir() && md.nlink() > 1 && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        total = total.saturating_add(md.blocks().saturating_mul(512));
        if md.is_dir()
            && let Ok(rd) = std::fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    total
}

/// What pod `plan` uses of the host's disk: each container's writable layer (`upper/`) and
/// logs, and the pod's disk-backed volumes. Blocking IO that walks directories (run it on a
/// blocking thread); what does not exist counts as 0.
pub fn storage_usage(host: &Host, plan: &PodPlan) -> StorageUsage {
    let mut seen = std::collections::HashSet::new();
    let mut usage = StorageUsage::default();
    for c in plan.init_containers.iter().chain(&plan.containers) {
        let cdir = container::dir(&host.data_dir, &container_id(&plan.id, &c.name));
        let bytes = disk_usage(&cdir.join("upper"), &mut seen)
            .saturating_add(disk_usage(&cdir.join("logs"), &mut seen));
        usage.containers.insert(c.name.clone(), bytes);
        usage.total = usage.total.saturating_add(bytes);
    }
    let vols = dir(&host.data_dir, &plan.id).join("volumes");
    for v in &plan.volumes {
        if matches!(v.kind, VolumeKind::EmptyDir { memory: true, .. }) {
            continue;
        }
        let bytes = disk_usage(&vols.join(&v.name), &mut seen);
        usage.volumes.insert(v.name.clone(), bytes);
        usage.total = usage.total.saturating_add(bytes);
    }
    usage
}

/// Pods recorded on disk (what a restarted agent finds again).
pub fn list(data_dir: &Path) -> Vec<PodRecord> {
    let Ok(rd) = std::fs::read_dir(data_dir.join("pods")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| std::fs::read(e.path().join("pod.json")).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pure_parts() {
        assert_eq!(phase_of(&[0, 0]), Phase::Succeeded);
        assert_eq!(phase_of(&[0, 1]), Phase::Failed);
        let h = hosts_file("web", Some("10.0.0.5".parse().unwrap()));
        assert!(h.contains("127.0.0.1\tlocalhost\n") && h.ends_with("10.0.0.5\tweb\n"));
        assert!(resolv_conf("shop", None).starts_with("search shop.svc.cluster.local"));
        assert_eq!(
            inside(Path::new("/v"), "a/b"),
            Some(PathBuf::from("/v/a/b"))
        );
        assert_eq!(inside(Path::new("/v"), "../x"), None);
        assert_eq!(inside(Path::new("/v"), "/etc"), None);
    }
}
