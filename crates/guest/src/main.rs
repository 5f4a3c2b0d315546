//! `nodeless-guest`: PID 1 of the micro-VM's initramfs.
//!
//! Boot: mount /proc, /sys, /dev; load the kernel modules listed in `/modules/order` (dependency
//! order) with `finit_module`; read its settings from the kernel command line
//! ([`guest::bootargs`]): hostname, loopback up, `eth0` with the pod's address and default route
//! when the host attached a network device; open the virtio-serial port named `agent`.
//! One container (the default): mount its image (erofs on /dev/vda, read-only) under a
//! tmpfs-backed overlay at `/container`, answer the host's first frame with `Ready`, run it as
//! process 0; when it exits every other process is killed, the exit is reported, and the VM
//! powers off. A whole pod (`nodeless.pod=1`): the host makes one root filesystem per container
//! with `Prepare` (its disk found by virtio serial, volumes from one shared tmpfs, files such
//! as /etc/hosts bind-mounted) and runs processes in them; the VM runs until the host stops it.
//! Either way the agent serves [`guest::proto`] frames: processes (chrooted into their root
//! filesystem, with their env, cwd, uid/gid), their stdout/stderr, stdin, signals, terminals,
//! exits and states. A container's output is numbered and kept until the host acknowledges
//! it, so a host that takes the VM back gets again what a dying one never logged
//! ([`Frame::Resume`]); an exit is reported with how long ago it happened.
//!
//! Pod semantics as Kubernetes has them: each container's process is PID 1 of a PID namespace
//! of its own (exec sessions join it), or, when the pod shares its process namespace, every
//! container runs in one PID namespace whose PID 1 is a pause process (this binary run with
//! [`PAUSE_ARG`]). The pod's containers share one IPC namespace (the pause process's) and one
//! /dev/shm. The agent is in none of these: a container can neither see nor signal it.
//!
//! The initramfs holds only this binary and the modules; the VM has a block device and this
//! channel, nothing of the host's filesystem. Messages for humans go to the console (stderr).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod netcfg;

use guest::bootargs::BootArgs;
use std::os::fd::{AsFd, OwnedFd};

use guest::proto::{CHUNK, Frame, MountSource, PidNs, RESEND_LIMIT, Setup, Spec, State, Usage};
use rustix::mount::{MountFlags, mount};
use rustix::thread::LinkNameSpaceType;

/// Where the container's root filesystem is assembled.
const ROOT: &str = "/container";
/// The name of the virtio-serial port the host opens (`-device virtserialport,name=agent`).
const PORT_NAME: &str = "agent";
/// The container's block device.
const DISK: &str = "/dev/vda";
/// A pod's volumes (emptyDir): one directory each on this tmpfs.
const VOLUMES: &str = "/volumes";
/// The pod's /dev/shm: one tmpfs, bound into every container.
const SHM: &str = "/shm";
/// An empty directory: the pause process's root.
const EMPTY: &str = "/empty";
/// The argument that makes this binary the pod's pause process instead of the agent.
const PAUSE_ARG: &str = "--nodeless-pause";

/// Where root filesystem `n` lives: 0 is the single container's, n > 0 a pod container's.
fn root_of(n: u32) -> String {
    if n == 0 {
        ROOT.to_owned()
    } else {
        format!("/pod/{n}/root")
    }
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn log(msg: &str) {
    eprintln!("nodeless-guest: {msg}");
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some(PAUSE_ARG) {
        pause();
    }
    if let Err(e) = run() {
        log(&format!("fatal: {e}"));
    }
    power_off();
}

/// The pod's pause process: PID 1 of the shared PID namespace (when the pod asks for one) and
/// the holder of the pod's IPC namespace. It reaps what is re-parented to it and nothing else:
/// an empty root, user nobody, no capabilities.
fn pause() -> ! {
    let nobody_g = rustix::process::Gid::from_raw(65534);
    let nobody_u = rustix::process::Uid::from_raw(65534);
    let dropped = rustix::process::chroot(EMPTY)
        .and_then(|()| rustix::process::chdir("/"))
        .and_then(|()| rustix::thread::set_thread_groups(&[]))
        .and_then(|()| rustix::thread::set_thread_res_gid(nobody_g, nobody_g, nobody_g))
        .and_then(|()| rustix::thread::set_thread_res_uid(nobody_u, nobody_u, nobody_u));
    if let Err(e) = dropped {
        log(&format!("pause: dropping privileges: {e}"));
        std::process::exit(1);
    }
    loop {
        if rustix::process::wait(rustix::process::WaitOptions::empty()).is_err() {
            // No children: orphans come rarely; look again in a while.
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// The container is over: the VM ends once the last frames reached QEMU.
fn power_off_soon() {
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_millis(200));
        power_off();
    });
}

fn power_off() -> ! {
    rustix::fs::sync();
    if rustix::process::getpid().is_init() {
        let _ = rustix::system::reboot(rustix::system::RebootCommand::PowerOff);
        // Not reached when power-off works; QEMU runs with -no-reboot so a restart ends it too.
        let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
    }
    std::process::exit(1)
}

fn run() -> Result<(), Error> {
    let t0 = Instant::now();
    early_mounts()?;
    load_modules(Path::new("/modules"))?;
    let args = BootArgs::parse(&std::fs::read_to_string("/proc/cmdline").unwrap_or_default());
    if let Err(e) = setup_network(&args) {
        log(&format!("network: {e}"));
    }
    if let Err(e) = setup_cgroups() {
        log(&format!("cgroups (no memory limits): {e}"));
    }
    let port = wait_for(Duration::from_secs(10), find_port)
        .ok_or("no virtio-serial port named 'agent' (virtio_console loaded?)")?;
    let chan = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .map_err(|e| format!("opening {}: {e}", port.display()))?;
    let out = Out(Arc::new(Mutex::new(OutState {
        chan: chan.try_clone()?,
        streams: HashMap::new(),
    })));
    let mut input = chan;

    // The root filesystem is mounted while the host connects (a pod's are made on request).
    let mounted = if args.pod {
        mount_fs("tmpfs", VOLUMES, "tmpfs", MountFlags::NOSUID, "mode=0755")
    } else {
        mount_root(DISK, "/lower", "/rw", ROOT, args.writable_limit)
    };
    log(&format!("ready after {} ms", t0.elapsed().as_millis()));

    let first = loop {
        match Frame::read_from(&mut input) {
            Ok(Some(f)) => break f,
            // The host is not connected yet: reads return end of file.
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(e.into()),
        }
    };
    if let Err(e) = mounted {
        out.send(&Frame::Error(0, format!("mounting the container: {e}")));
        out.send(&Frame::Exit(0, 127, Some(0)));
        std::thread::sleep(Duration::from_millis(300));
        return Err(e);
    }
    out.send(&Frame::Ready(guest::proto::VERSION));

    let own_pid_ns = rustix::fs::open(
        "/proc/self/ns/pid",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| format!("opening the agent's PID namespace: {e}"))?;
    let agent = Agent {
        out: out.clone(),
        procs: Arc::new(Mutex::new(HashMap::new())),
        own_pid_ns: Arc::new(own_pid_ns),
        pod_ns: Arc::new(Mutex::new(None)),
    };
    {
        let agent = agent.clone();
        std::thread::spawn(move || agent.reap());
    }
    agent.handle(first);
    loop {
        match Frame::read_from(&mut input) {
            Ok(Some(f)) => agent.handle(f),
            // The host went away (or is not there yet); keep the container running.
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                log(&format!("channel: {e}"));
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Hostname, loopback and (when the host gave an address) `eth0` with the pod's address.
fn setup_network(args: &BootArgs) -> Result<(), Error> {
    if let Some(h) = &args.hostname {
        rustix::system::sethostname(h.as_bytes()).map_err(|e| format!("sethostname: {e}"))?;
    }
    netcfg::loopback_up().map_err(|e| format!("lo: {e}"))?;
    if let Some((ip, prefix)) = args.ip {
        wait_for(Duration::from_secs(10), || {
            Path::new("/sys/class/net/eth0").exists().then_some(())
        })
        .ok_or("no eth0 (virtio_net loaded? -netdev attached?)")?;
        netcfg::configure_eth0(ip, prefix, args.gateway).map_err(|e| format!("eth0: {e}"))?;
    }
    Ok(())
}

fn mount_fs(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MountFlags,
    data: &str,
) -> Result<(), Error> {
    std::fs::create_dir_all(target).map_err(|e| format!("mkdir {target}: {e}"))?;
    let data = std::ffi::CString::new(data)?;
    mount(src, target, fstype, flags, Some(data.as_c_str()))
        .map_err(|e| format!("mount {fstype} on {target}: {e}").into())
}

fn early_mounts() -> Result<(), Error> {
    let nosuid = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    mount_fs("proc", "/proc", "proc", nosuid, "")?;
    mount_fs("sysfs", "/sys", "sysfs", nosuid, "")?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MountFlags::NOSUID,
        "mode=0755",
    )?;
    mount_fs("tmpfs", SHM, "tmpfs", nosuid, "mode=1777")?;
    std::fs::create_dir_all(EMPTY)?;
    Ok(())
}

/// Loads `dir/<name>.ko` for each name in `dir/order`, in that order. A module the kernel
/// already has (built in or loaded) is fine.
fn load_modules(dir: &Path) -> Result<(), Error> {
    let order = match std::fs::read_to_string(dir.join("order")) {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(format!("{name}.ko"));
        let f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        match rustix::system::finit_module(&f, c"", 0) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(format!("loading module {name}: {e}").into()),
        }
    }
    Ok(())
}

fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `/dev/vportNpM` whose name (sysfs) is [`PORT_NAME`], once its device node exists.
fn find_port() -> Option<PathBuf> {
    for e in std::fs::read_dir("/sys/class/virtio-ports").ok()?.flatten() {
        let name = std::fs::read_to_string(e.path().join("name")).unwrap_or_default();
        if name.trim() == PORT_NAME {
            let dev = Path::new("/dev").join(e.file_name());
            if dev.exists() {
                return Some(dev);
            }
        }
    }
    None
}

/// The block device whose virtio serial is `serial` (`/sys/block/vdX/serial`).
fn disk_by_serial(serial: &str) -> Option<String> {
    for e in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let s = std::fs::read_to_string(e.path().join("serial")).unwrap_or_default();
        if s.trim() == serial {
            let dev = Path::new("/dev").join(e.file_name());
            if dev.exists() {
                return Some(dev.display().to_string());
            }
        }
    }
    None
}

/// `rel` (an absolute path in the container) under `root`, refusing `..` and any symbolic
/// link on the way (which would resolve in the agent's own filesystem).
fn inside(root: &str, rel: &str) -> Result<PathBuf, Error> {
    let mut p = PathBuf::from(root);
    for c in Path::new(rel).components() {
        match c {
            std::path::Component::RootDir | std::path::Component::CurDir => {}
            std::path::Component::Normal(n) => {
                p.push(n);
                if p.symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
                {
                    // The overlay's upper layer is ours: a link is replaced, never followed.
                    std::fs::remove_file(&p)?;
                }
            }
            _ => return Err(format!("bad mount path {rel:?}").into()),
        }
    }
    Ok(p)
}

/// Root filesystem `n` of a pod: its disk (found by serial) under a tmpfs overlay, then its
/// mounts: volumes (directories of [`VOLUMES`], shared between containers) and files.
fn prepare(n: u32, setup: &Setup) -> Result<(), Error> {
    if n == 0 {
        return Err("root 0 is the single container's".into());
    }
    let disk = wait_for(Duration::from_secs(10), || disk_by_serial(&setup.serial))
        .ok_or_else(|| format!("no disk with serial {:?}", setup.serial))?;
    let base = format!("/pod/{n}");
    let root = root_of(n);
    mount_root(
        &disk,
        &format!("{base}/lower"),
        &format!("{base}/rw"),
        &root,
        setup.writable_limit,
    )?;
    std::fs::create_dir_all(format!("{base}/files"))?;
    for (i, m) in setup.mounts.iter().enumerate() {
        let target = inside(&root, &m.target)?;
        match &m.source {
            MountSource::Volume(name) => {
                // `name` or `name/sub/path` (a subPath of the volume).
                if name
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
                {
                    return Err(format!("bad volume name {name:?}").into());
                }
                let src = format!("{VOLUMES}/{name}");
                if !Path::new(&src).exists() {
                    std::fs::create_dir_all(&src)?;
                    // emptyDir: writable by every user of the pod, as Kubernetes makes it.
                    rustix::fs::chmod(src.as_str(), rustix::fs::Mode::from_raw_mode(0o777))?;
                }
                std::fs::create_dir_all(&target)?;
                rustix::mount::mount_bind(src.as_str(), &target)
                    .map_err(|e| format!("binding volume {name} to {}: {e}", m.target))?;
            }
            MountSource::File(data) => {
                let src = format!("{base}/files/{i}");
                std::fs::write(&src, data)?;
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                if !target.exists() {
                    std::fs::write(&target, b"")?;
                }
                rustix::mount::mount_bind(src.as_str(), &target)
                    .map_err(|e| format!("binding {}: {e}", m.target))?;
            }
        }
        if m.read_only {
            rustix::mount::mount_remount(
                &target,
                MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
                "",
            )
            .map_err(|e| format!("read-only {}: {e}", m.target))?;
        }
    }
    Ok(())
}

/// Erofs (read-only) under an overlay whose upper layer is a tmpfs, plus the container's
/// /proc, /sys (read-only), a minimal /dev and /dev/shm. The container never sees this
/// initramfs's /dev (which has the disk and the channel).
/// Unmounts root filesystem n (its overlay with everything mounted in it, its writable tmpfs and
/// its image) and removes its directory: a restarted container's last root.
fn release(n: u32) -> Result<(), Error> {
    if n == 0 {
        return Err("root 0 is the single container's".into());
    }
    let base = format!("/pod/{n}");
    for m in [root_of(n), format!("{base}/rw"), format!("{base}/lower")] {
        // Detached: the root's own mounts (proc, dev, volumes, files) go with it.
        rustix::mount::unmount(m.as_str(), rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| format!("unmounting {m}: {e}"))?;
    }
    std::fs::remove_dir_all(&base)?;
    Ok(())
}

/// The mount options of a writable layer's tmpfs: `size=` the container's `ephemeral-storage`
/// limit when it has one (0 is none: the tmpfs may take half the VM's memory, tmpfs's default).
/// Pure.
fn writable_options(limit: u64) -> String {
    if limit == 0 {
        "mode=0755".to_owned()
    } else {
        format!("mode=0755,size={limit}")
    }
}

fn mount_root(
    disk: &str,
    lower: &str,
    rw: &str,
    root: &str,
    writable_limit: u64,
) -> Result<(), Error> {
    wait_for(Duration::from_secs(10), || {
        Path::new(disk).exists().then_some(())
    })
    .ok_or_else(|| format!("no {disk} (virtio_blk loaded? disk attached?)"))?;
    mount_fs(disk, lower, "erofs", MountFlags::RDONLY, "")?;
    mount_fs(
        "tmpfs",
        rw,
        "tmpfs",
        MountFlags::empty(),
        &writable_options(writable_limit),
    )?;
    std::fs::create_dir_all(format!("{rw}/upper"))?;
    std::fs::create_dir_all(format!("{rw}/work"))?;
    mount_fs(
        "overlay",
        root,
        "overlay",
        MountFlags::empty(),
        &format!("lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work"),
    )?;
    let nosuid = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    mount_fs("proc", &format!("{root}/proc"), "proc", nosuid, "")?;
    mount_fs(
        "sysfs",
        &format!("{root}/sys"),
        "sysfs",
        nosuid | MountFlags::RDONLY,
        "",
    )?;
    let dev = format!("{root}/dev");
    mount_fs(
        "tmpfs",
        &dev,
        "tmpfs",
        MountFlags::NOSUID,
        "mode=0755,size=64k",
    )?;
    use rustix::fs::{FileType, Mode, makedev, mknodat};
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let p = format!("{dev}/{name}");
        mknodat(
            rustix::fs::CWD,
            p.as_str(),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            makedev(major, minor),
        )
        .map_err(|e| format!("mknod {p}: {e}"))?;
    }
    // The pod's one /dev/shm (POSIX shared memory between its containers).
    let shm = format!("{dev}/shm");
    std::fs::create_dir_all(&shm)?;
    rustix::mount::mount_bind(SHM, shm.as_str()).map_err(|e| format!("binding {shm}: {e}"))?;
    mount_fs(
        "devpts",
        &format!("{dev}/pts"),
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    for (target, link) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
    ] {
        std::os::unix::fs::symlink(target, format!("{dev}/{link}"))?;
    }
    Ok(())
}

/// The channel's writing half, shared by every thread; one frame per lock (a resume holds it
/// for all it sends again). While no host is attached a write blocks (virtio-serial), and so
/// does every thread that sends.
#[derive(Clone)]
struct Out(Arc<Mutex<OutState>>);

struct OutState {
    chan: File,
    /// Each process's output streams: (id, stderr).
    streams: HashMap<(u32, bool), StreamBuf>,
}

/// One output stream of a process: its byte count and, for a container's process, what the
/// host has not acknowledged yet.
#[derive(Default)]
struct StreamBuf {
    /// The offset of the next byte.
    end: u64,
    /// The unacknowledged bytes (at most [`RESEND_LIMIT`]), the last one at `end - 1`.
    kept: std::collections::VecDeque<u8>,
    /// Whether unacknowledged bytes are kept (a container's process, not an exec session).
    keep: bool,
    /// The process's end of the stream was read: no more output.
    closed: bool,
}

impl StreamBuf {
    /// The offset of the first kept byte.
    fn start(&self) -> u64 {
        self.end - self.kept.len() as u64
    }

    /// Everything is sent and nothing needs sending again.
    fn done(&self) -> bool {
        self.closed && self.kept.is_empty()
    }
}

impl OutState {
    fn write(&mut self, f: &Frame) {
        if let Err(e) = f.write_to(&mut self.chan) {
            log(&format!("sending to the host: {e}"));
        }
    }
}

impl Out {
    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, f: &Frame) {
        self.lock().write(f);
    }

    /// Sends output of process `id`, numbered in its stream, keeping it (`keep`) until the
    /// host acknowledges it.
    fn output(&self, id: u32, stderr: bool, data: &[u8], keep: bool) {
        let mut o = self.lock();
        let s = o.streams.entry((id, stderr)).or_default();
        s.keep = keep;
        let offset = s.end;
        s.end += data.len() as u64;
        if keep {
            s.kept.extend(data);
            let over = s.kept.len().saturating_sub(RESEND_LIMIT);
            s.kept.drain(..over);
        }
        o.write(&Frame::Output(id, stderr, offset, data.to_vec()));
    }

    /// The process closed a stream.
    fn close_stream(&self, id: u32, stderr: bool) {
        let mut o = self.lock();
        if let Some(s) = o.streams.get_mut(&(id, stderr)) {
            s.closed = true;
            if !s.keep || s.done() {
                o.streams.remove(&(id, stderr));
            }
        }
    }

    /// The host has process `id`'s streams up to `offsets`.
    fn ack(&self, id: u32, offsets: [u64; 2]) {
        let mut o = self.lock();
        for (stderr, acked) in [(false, offsets[0]), (true, offsets[1])] {
            let Some(s) = o.streams.get_mut(&(id, stderr)) else {
                continue;
            };
            let start = s.start();
            let upto = acked.min(s.end);
            if upto > start {
                s.kept.drain(..(upto - start) as usize);
            }
            if s.done() {
                o.streams.remove(&(id, stderr));
            }
        }
    }
}

/// The output frames that send again what stream `s` of process `id` keeps from `offset` on
/// (from its first kept byte when that is later: what came before is lost). Pure.
fn resend_frames(id: u32, stderr: bool, s: &StreamBuf, offset: u64) -> Vec<Frame> {
    let start = s.start();
    let from = offset.clamp(start, s.end);
    let data: Vec<u8> = s
        .kept
        .iter()
        .skip((from - start) as usize)
        .copied()
        .collect();
    data.chunks(CHUNK)
        .enumerate()
        .map(|(i, d)| Frame::Output(id, stderr, from + (i * CHUNK) as u64, d.to_vec()))
        .collect()
}

struct Proc {
    pid: u32,
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    /// The terminal's master side, for a process started with `tty`.
    pty: Option<File>,
    /// Exit code once reaped.
    code: Option<i32>,
    /// When it was reaped, by the monotonic clock (not the wall clock, which may be wrong).
    ended: Option<Instant>,
    /// The OOM killer killed in its cgroup.
    oom: bool,
    /// Output pipes still open.
    open_streams: u8,
    /// Exit reported to the host.
    reported: bool,
    /// The process's own cgroup (with a memory or CPU limit), if it has one.
    cgroup: Option<String>,
    /// Its PID namespace, which exec sessions join ([`PidNs::Join`]).
    pid_ns: Option<Arc<OwnedFd>>,
    /// It is PID 1 of that namespace ([`PidNs::Own`]).
    owns_pid_ns: bool,
}

/// The namespaces of the pod, held by its pause process.
struct PodNs {
    pid: Arc<OwnedFd>,
    ipc: Arc<OwnedFd>,
}

#[derive(Clone)]
struct Agent {
    out: Out,
    procs: Arc<Mutex<HashMap<u32, Proc>>>,
    /// The agent's own PID namespace, where the spawning thread returns after each spawn.
    own_pid_ns: Arc<OwnedFd>,
    /// Made with the first process.
    pod_ns: Arc<Mutex<Option<Arc<PodNs>>>>,
}

impl Agent {
    fn table(&self) -> MutexGuard<'_, HashMap<u32, Proc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` (which forks) with the calling thread's children going into PID namespace
    /// `target`, or into a new one when `None`; the thread is back in the agent's own after.
    fn in_pid_ns<T>(&self, target: Option<&OwnedFd>, f: impl FnOnce() -> T) -> Result<T, Error> {
        match target {
            // SAFETY: `NEWPID` only changes where this thread's future children go; no file
            // descriptor table is unshared.
            #[allow(unsafe_code)]
            None => unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWPID) },
            Some(fd) => rustix::thread::move_into_link_name_space(
                fd.as_fd(),
                Some(LinkNameSpaceType::ProcessID),
            ),
        }
        .map_err(|e| format!("entering a PID namespace: {e}"))?;
        let r = f();
        if let Err(e) = rustix::thread::move_into_link_name_space(
            self.own_pid_ns.as_fd(),
            Some(LinkNameSpaceType::ProcessID),
        ) {
            log(&format!("back to the agent's PID namespace: {e}"));
        }
        Ok(r)
    }

    /// The pod's namespaces, made on first use: a pause process in new PID and IPC namespaces.
    fn pod_ns(&self) -> Result<Arc<PodNs>, Error> {
        let mut slot = self.pod_ns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ns) = &*slot {
            return Ok(ns.clone());
        }
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(PAUSE_ARG)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        #[allow(unsafe_code)]
        // SAFETY: runs in the forked child before exec; one system call, no allocation.
        unsafe {
            cmd.pre_exec(|| {
                rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWIPC)?;
                Ok(())
            });
        }
        let child = self
            .in_pid_ns(None, || cmd.spawn())?
            .map_err(|e| format!("starting the pause process: {e}"))?;
        let open = |kind: &str| -> Result<Arc<OwnedFd>, Error> {
            let p = format!("/proc/{}/ns/{kind}", child.id());
            rustix::fs::open(
                p.as_str(),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map(Arc::new)
            .map_err(|e| format!("opening {p}: {e}").into())
        };
        let ns = Arc::new(PodNs {
            pid: open("pid")?,
            ipc: open("ipc")?,
        });
        // Reaped by `reap` if it ever ends.
        drop(child);
        *slot = Some(ns.clone());
        Ok(ns)
    }

    fn handle(&self, f: Frame) {
        match f {
            Frame::Run(id, spec) => self.spawn(id, spec),
            Frame::Prepare(n, setup) => {
                // Finding the disk may take a moment: the channel keeps being served.
                let out = self.out.clone();
                std::thread::spawn(move || {
                    let msg = match prepare(n, &setup) {
                        Ok(()) => String::new(),
                        Err(e) => e.to_string(),
                    };
                    out.send(&Frame::Prepared(n, msg));
                });
            }
            Frame::Stdin(id, data) => {
                let mut t = self.table();
                if let Some(p) = t.get_mut(&id) {
                    if data.is_empty() {
                        p.stdin = None;
                    } else if let Some(tx) = &p.stdin {
                        let _ = tx.send(data);
                    }
                }
            }
            Frame::Signal(id, sig) => {
                let target = self
                    .table()
                    .get(&id)
                    .filter(|p| p.code.is_none())
                    .map(|p| (p.pid, p.pid_ns.clone().filter(|_| p.owns_pid_ns)));
                let Some(sig) = rustix::process::Signal::from_named_raw(sig) else {
                    return;
                };
                match target {
                    // SIGKILL to a container's process: every process of its PID namespace, as
                    // the OCI runtimes' `kill --all` does. Any other signal (the stop signal
                    // included) goes to the main process only, as kubelet sends it.
                    Some((pid, Some(ns))) if sig == rustix::process::Signal::KILL => {
                        signal_namespace(pid, &ns, sig)
                    }
                    Some((pid, _)) => {
                        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                            let _ = rustix::process::kill_process(pid, sig);
                        }
                    }
                    None => {}
                }
            }
            Frame::Resize(id, rows, cols) => {
                if let Some(Proc { pty: Some(m), .. }) = self.table().get(&id) {
                    let size = rustix::termios::Winsize {
                        ws_row: rows,
                        ws_col: cols,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    let _ = rustix::termios::tcsetwinsize(m, size);
                }
            }
            Frame::Release(n) => {
                if let Err(e) = release(n) {
                    log(&format!("releasing root {n}: {e}"));
                }
            }
            Frame::Query(id) => {
                let st = match self.table().get(&id) {
                    None => State::Unknown,
                    Some(Proc {
                        code: Some(code), ..
                    }) => State::Exited { code: *code },
                    Some(p) => State::Running { pid: p.pid },
                };
                self.out.send(&Frame::Status(id, st));
            }
            Frame::Ack(id, offsets) => self.out.ack(id, offsets),
            Frame::Resume(nonce, list) => self.resume(nonce, &list),
            Frame::QueryUsage => {
                // Walking the volumes may take a moment: the channel keeps being served.
                let out = self.out.clone();
                std::thread::spawn(move || out.send(&Frame::Usage(storage_usage())));
            }
            other => log(&format!("unexpected frame from the host: {other:?}")),
        }
    }

    /// A host took the VM back: `Sync`, then each listed process's kept output from the offsets
    /// the host has, and its end if it ended (all under the channel's lock: nothing else comes
    /// in between).
    fn resume(&self, nonce: u64, list: &[(u32, [u64; 2])]) {
        let t = self.table();
        let mut o = self.out.lock();
        o.write(&Frame::Sync(nonce));
        for (id, offsets) in list {
            let mut frames = Vec::new();
            for (stderr, offset) in [(false, offsets[0]), (true, offsets[1])] {
                if let Some(s) = o.streams.get(&(*id, stderr)) {
                    frames.extend(resend_frames(*id, stderr, s, offset));
                }
            }
            match t.get(id) {
                None => frames.push(Frame::Status(*id, State::Unknown)),
                Some(p) if p.reported => {
                    if p.oom {
                        frames.push(Frame::OomKilled(*id));
                    }
                    frames.push(exit_frame(*id, p));
                }
                Some(_) => {}
            }
            for f in &frames {
                o.write(f);
            }
        }
    }

    fn spawn(&self, id: u32, spec: Spec) {
        // Held across fork and insert, so the reaper never sees a child it does not know.
        let mut table = self.table();
        if table.contains_key(&id) {
            self.out
                .send(&Frame::Error(id, format!("id {id} is in use")));
            return;
        }
        let Some(program) = spec.args.first() else {
            self.fail(id, "empty command".into());
            return;
        };
        let mut cmd = Command::new(program);
        cmd.args(&spec.args[1..]).env_clear();
        for kv in &spec.env {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let pty = if spec.tty {
            match open_pty(&root_of(spec.root)) {
                Ok((master, slave)) => {
                    let (a, b) = match (slave.try_clone(), slave.try_clone()) {
                        (Ok(a), Ok(b)) => (a, b),
                        (Err(e), _) | (_, Err(e)) => {
                            self.fail(id, format!("allocating a terminal: {e}"));
                            return;
                        }
                    };
                    cmd.stdin(Stdio::from(slave))
                        .stdout(Stdio::from(a))
                        .stderr(Stdio::from(b));
                    Some(master)
                }
                Err(e) => {
                    self.fail(id, format!("allocating a terminal: {e}"));
                    return;
                }
            }
        } else {
            cmd.stdin(if spec.stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
            None
        };
        let tty = pty.is_some();
        let pod = match self.pod_ns() {
            Ok(ns) => ns,
            Err(e) => {
                self.fail(id, format!("the pod's namespaces: {e}"));
                return;
            }
        };
        let pid_ns = match spec.pid_ns {
            PidNs::Own => None,
            PidNs::Pod => Some(pod.pid.clone()),
            PidNs::Join(other) => match table
                .get(&other)
                .filter(|p| p.code.is_none())
                .and_then(|p| p.pid_ns.clone())
            {
                Some(ns) => Some(ns),
                None => {
                    self.fail(id, format!("process {other} is not running"));
                    return;
                }
            },
        };
        let ipc = pod.ipc.clone();
        let owns_pid_ns = spec.pid_ns == PidNs::Own;
        // Limits: a cgroup of its own, which the child joins before exec.
        let (cgroup, procs) = if spec.memory_limit > 0 || spec.cpu_limit_millis > 0 {
            match make_cgroup(id, spec.memory_limit, spec.cpu_limit_millis) {
                Ok((dir, procs)) => (Some(dir), Some(procs)),
                Err(e) => {
                    self.fail(id, format!("resource limits: {e}"));
                    return;
                }
            }
        } else {
            (None, None)
        };
        let mut groups = vec![rustix::process::Gid::from_raw(spec.gid)];
        for g in &spec.groups {
            let g = rustix::process::Gid::from_raw(*g);
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
        let (uid, gid, cwd) = (spec.uid, spec.gid, spec.cwd.clone());
        let root = root_of(spec.root);
        let cwd = if cwd.is_empty() { "/".to_owned() } else { cwd };
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only makes system calls
        // through rustix; it allocates nothing and takes no locks. `unshare(CLONE_NEWNS)` only
        // gives the (single-threaded) child its own mount table, which the child then owns.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(procs) = &procs {
                    // "0" is the writing process itself.
                    rustix::io::write(procs, b"0")?;
                }
                rustix::thread::move_into_link_name_space(
                    ipc.as_fd(),
                    Some(LinkNameSpaceType::InterProcessCommunication),
                )?;
                if tty {
                    // A session of its own with the terminal as its controlling tty.
                    rustix::process::setsid()?;
                    rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
                }
                enter_container(&root, &cwd)?;
                let gid = rustix::process::Gid::from_raw(gid);
                rustix::thread::set_thread_groups(&groups)?;
                rustix::thread::set_thread_res_gid(gid, gid, gid)?;
                let uid = rustix::process::Uid::from_raw(uid);
                rustix::thread::set_thread_res_uid(uid, uid, uid)?;
                Ok(())
            });
        }
        let spawned = self
            .in_pid_ns(pid_ns.as_deref(), || cmd.spawn())
            .and_then(|r| r.map_err(Error::from));
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    let _ = std::fs::remove_dir(cg);
                }
                self.fail(id, format!("starting {program}: {e}"));
                return;
            }
        };
        // The slave ends now live only in the child.
        drop(cmd);
        let pid = child.id();
        // A new namespace is known by its first process; gone already if that one ended.
        let pid_ns = pid_ns.or_else(|| {
            rustix::fs::open(
                format!("/proc/{pid}/ns/pid").as_str(),
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()
            .map(Arc::new)
        });
        let stdin_writer: Option<Box<dyn Write + Send>> = match &pty {
            Some(m) => m
                .try_clone()
                .ok()
                .map(|f| Box::new(f) as Box<dyn Write + Send>),
            None => child
                .stdin
                .take()
                .map(|w| Box::new(w) as Box<dyn Write + Send>),
        };
        let stdin = stdin_writer.map(|mut w| {
            let (tx, rx) = mpsc::channel::<Vec<u8>>();
            std::thread::spawn(move || {
                while let Ok(d) = rx.recv() {
                    if w.write_all(&d).is_err() {
                        break;
                    }
                }
            });
            tx
        });
        table.insert(
            id,
            Proc {
                pid,
                stdin,
                pty: None,
                code: None,
                ended: None,
                oom: false,
                open_streams: if tty { 1 } else { 2 },
                reported: false,
                cgroup,
                pid_ns,
                owns_pid_ns,
            },
        );
        self.out.send(&Frame::Started(id, pid));
        // A container's output is kept for a host that takes the VM back; an exec session's
        // ends with the host that started it.
        let keep = !matches!(spec.pid_ns, PidNs::Join(_));
        if let Some(master) = pty {
            match master.try_clone() {
                Ok(r) => self.pump(id, r, false, keep),
                Err(e) => log(&format!("terminal of {id}: {e}")),
            }
            if let Some(p) = table.get_mut(&id) {
                p.pty = Some(master);
            }
        }
        if let Some(r) = child.stdout.take() {
            self.pump(id, r, false, keep);
        }
        if let Some(r) = child.stderr.take() {
            self.pump(id, r, true, keep);
        }
        // The child is reaped by `reap`, never through `child`.
        drop(child);
    }

    /// Reports that `id` could not start.
    fn fail(&self, id: u32, msg: String) {
        self.out.send(&Frame::Error(id, msg));
        self.out.send(&Frame::Exit(id, 127, Some(0)));
        if id == 0 {
            power_off_soon();
        }
    }

    fn pump(&self, id: u32, mut r: impl Read + Send + 'static, stderr: bool, keep: bool) {
        let agent = self.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => agent.out.output(id, stderr, &buf[..n], keep),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            agent.out.close_stream(id, stderr);
            let mut t = agent.table();
            if let Some(p) = t.get_mut(&id) {
                p.open_streams = p.open_streams.saturating_sub(1);
            }
            agent.report(&mut t, id);
        });
    }

    /// Sends `Exit` once the process is reaped and its output drained. The container's exit
    /// ends the VM.
    fn report(&self, t: &mut HashMap<u32, Proc>, id: u32) {
        let Some(p) = t.get_mut(&id) else { return };
        if p.code.is_none() {
            return;
        }
        if p.open_streams > 0 || p.reported {
            return;
        }
        p.reported = true;
        p.stdin = None;
        p.pty = None;
        p.pid_ns = None;
        if let Some(cg) = p.cgroup.take() {
            let events = std::fs::read_to_string(format!("{cg}/memory.events")).unwrap_or_default();
            if oom_kills(&events) > 0 {
                p.oom = true;
                self.out.send(&Frame::OomKilled(id));
            }
            // Fails while something of it still runs (a daemon it left): that one keeps it.
            let _ = std::fs::remove_dir(&cg);
        }
        let exit = exit_frame(id, p);
        self.out.send(&exit);
        if id == 0 {
            power_off_soon();
        }
    }

    /// Reaps every child (ours and orphans re-parented to PID 1).
    fn reap(&self) {
        use rustix::process::{WaitIdOptions, WaitOptions};
        loop {
            // Block until some child is a zombie without reaping it: `spawn` (holding the
            // table lock) may still be waiting for its own child when exec failed.
            match rustix::process::waitid(
                rustix::process::WaitId::All,
                WaitIdOptions::EXITED | WaitIdOptions::NOWAIT,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::CHILD) => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(_) => continue,
            }
            let mut t = self.table();
            // `wait` is waitpid(-1): any child, whatever its process group (a tty session or
            // a daemon has its own).
            while let Ok(Some((pid, status))) = rustix::process::wait(WaitOptions::NOHANG) {
                let code = status
                    .exit_status()
                    .or_else(|| status.terminating_signal().map(|s| 128 + s))
                    .unwrap_or(255);
                let pid = pid.as_raw_nonzero().get() as u32;
                let id = t
                    .iter()
                    .find(|(_, p)| p.pid == pid && p.code.is_none())
                    .map(|(id, _)| *id);
                let Some(id) = id else { continue };
                if let Some(p) = t.get_mut(&id) {
                    p.code = Some(code);
                    p.ended = Some(Instant::now());
                }
                if id == 0 {
                    // The container is done: nothing else may outlive it (their pipes close).
                    kill_all_but_self();
                }
                self.report(&mut t, id);
            }
        }
    }
}

/// What the writable layers (each root filesystem's tmpfs: its used blocks) and the pod's
/// volumes (each directory of [`VOLUMES`], walked as `du` does) hold.
fn storage_usage() -> Usage {
    let mut u = Usage::default();
    let used = |rw: &str| {
        rustix::fs::statvfs(rw).ok().map(|s| {
            s.f_blocks
                .saturating_sub(s.f_bfree)
                .saturating_mul(s.f_frsize)
        })
    };
    if let Some(b) = used("/rw") {
        u.roots.push((0, b));
    }
    for e in std::fs::read_dir("/pod").into_iter().flatten().flatten() {
        let Some(n) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(b) = used(&format!("/pod/{n}/rw")) {
            u.roots.push((n, b));
        }
    }
    for e in std::fs::read_dir(VOLUMES).into_iter().flatten().flatten() {
        if let Some(name) = e.file_name().to_str() {
            u.volumes.push((name.to_owned(), disk_usage(&e.path())));
        }
    }
    u.roots.sort();
    u.volumes.sort();
    u
}

/// Bytes of blocks under `root`, on its filesystem, a file with several links counted once.
fn disk_usage(root: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return 0;
    };
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if md.dev() != top.dev() || (md.nlink() > 1 && !md.is_dir() && !seen.insert(md.ino())) {
            continue;
        }
        total = total.saturating_add(md.blocks().saturating_mul(512));
        if md.is_dir() {
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        }
    }
    total
}

/// The `Exit` of an ended process, with how long ago it ended (made when sent).
fn exit_frame(id: u32, p: &Proc) -> Frame {
    let ago = p
        .ended
        .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
    Frame::Exit(id, p.code.unwrap_or(255), ago)
}

/// The cgroup v2 hierarchy of the guest (never visible in a container).
const CGROUP: &str = "/sys/fs/cgroup";

/// Mounts the cgroup v2 hierarchy and enables the memory and CPU controllers for children.
fn setup_cgroups() -> Result<(), Error> {
    mount_fs(
        "cgroup2",
        CGROUP,
        "cgroup2",
        MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV,
        "",
    )?;
    std::fs::write(format!("{CGROUP}/cgroup.subtree_control"), "+memory")
        .map_err(|e| format!("enabling the memory controller: {e}"))?;
    if let Err(e) = std::fs::write(format!("{CGROUP}/cgroup.subtree_control"), "+cpu") {
        log(&format!(
            "cgroups (no CPU limits): enabling the cpu controller: {e}"
        ));
    }
    Ok(())
}

/// A cgroup for process `id` with `limit` bytes of memory (no swap here; 0 is none) and
/// `cpu_millis` thousandths of a CPU (0 is none): its directory and its `cgroup.procs`,
/// opened for the child to join.
fn make_cgroup(id: u32, limit: u64, cpu_millis: u64) -> Result<(String, OwnedFd), Error> {
    let dir = format!("{CGROUP}/p{id}");
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("creating {dir}: {e}").into()),
    }
    if limit > 0 {
        std::fs::write(format!("{dir}/memory.max"), limit.to_string())
            .map_err(|e| format!("{dir}/memory.max: {e}"))?;
    }
    if cpu_millis > 0 {
        std::fs::write(format!("{dir}/cpu.max"), cpu_max(cpu_millis))
            .map_err(|e| format!("{dir}/cpu.max: {e}"))?;
    }
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("{dir}/cgroup.procs"))
        .map_err(|e| format!("{dir}/cgroup.procs: {e}"))?;
    Ok((dir, procs.into()))
}

/// `cpu.max` for `millis` thousandths of a CPU: the quota per 100 ms period (at least 1 ms,
/// the kernel's floor), as kubelet writes it.
fn cpu_max(millis: u64) -> String {
    format!(
        "{} {CPU_PERIOD_US}",
        (millis * CPU_PERIOD_US / 1000).max(1000)
    )
}

/// The CFS period of a CPU limit, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The `oom_kill` count of a `memory.events` file.
fn oom_kills(events: &str) -> u64 {
    events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A terminal from the container's own devpts instance: (master, slave). The slave is
/// `/dev/pts/N` inside the container.
fn open_pty(root: &str) -> std::io::Result<(File, File)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let master = rustix::fs::open(
        format!("{root}/dev/pts/ptmx").as_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    rustix::pty::unlockpt(&master)?;
    let slave = rustix::pty::ioctl_tiocgptpeer(
        &master,
        OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC,
    )?;
    Ok((File::from(master), File::from(slave)))
}

/// Capabilities a container process keeps: Docker's default set without `MKNOD` (there is no
/// device cgroup here to make it harmless) and without `NET_RAW` (no raw sockets: a pod cannot
/// forge packets on the pod network).
fn kept_capabilities() -> rustix::thread::CapabilitySet {
    use rustix::thread::CapabilitySet as C;
    C::CHOWN
        | C::DAC_OVERRIDE
        | C::FSETID
        | C::FOWNER
        | C::SETGID
        | C::SETUID
        | C::SETFCAP
        | C::SETPCAP
        | C::NET_BIND_SERVICE
        | C::SYS_CHROOT
        | C::KILL
        | C::AUDIT_WRITE
}

/// In the forked child: a private mount namespace whose root is the container (moved over `/`
/// as switch_root does, so `..` never leads back to the initramfs), then `cwd`, and a
/// capability bounding set without `SYS_ADMIN`, `SYS_MODULE`, `MKNOD`... so the process cannot
/// mount the agent's devices, load modules or reach the channel. Allocation-free.
#[allow(unsafe_code)]
fn enter_container(root: &str, cwd: &str) -> std::io::Result<()> {
    use rustix::mount::{MountPropagationFlags, mount_change, mount_move};
    // SAFETY: called only between fork and exec in a single-threaded child (see `spawn`).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)? };
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )?;
    rustix::process::chdir(root)?;
    mount_move(".", "/")?;
    rustix::process::chroot(".")?;
    // The /proc of the PID namespace this process is in (the one mounted at boot shows the
    // agent's).
    rustix::mount::unmount("/proc", rustix::mount::UnmountFlags::DETACH)?;
    mount(
        "proc",
        "/proc",
        "proc",
        MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV,
        None,
    )?;
    rustix::process::chdir(cwd)?;
    let keep = kept_capabilities().bits();
    for bit in 0..64u32 {
        if keep & (1 << bit) != 0 {
            continue;
        }
        let cap = rustix::thread::CapabilitySet::from_bits_retain(1 << bit);
        match rustix::thread::remove_capability_from_bounding_set(cap) {
            // Past the last capability this kernel knows.
            Err(rustix::io::Errno::INVAL) => break,
            r => r?,
        }
    }
    Ok(())
}

/// Sends `sig` to every process in PID namespace `ns` (`pid`, its PID 1, last).
fn signal_namespace(pid: u32, ns: &OwnedFd, sig: rustix::process::Signal) {
    let Ok(want) = rustix::fs::fstat(ns) else {
        return;
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(other) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if other == pid {
            continue;
        }
        let same = rustix::fs::stat(format!("/proc/{other}/ns/pid").as_str())
            .is_ok_and(|st| (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino));
        if same && let Some(p) = rustix::process::Pid::from_raw(other as i32) {
            let _ = rustix::process::kill_process(p, sig);
        }
    }
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

fn kill_all_but_self() {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid as u32 == me {
            continue;
        }
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ephemeral_storage_limit_sizes_the_writable_tmpfs() {
        assert_eq!(writable_options(0), "mode=0755");
        assert_eq!(writable_options(4 << 20), "mode=0755,size=4194304");
    }

    /// Kept output is trimmed by acknowledgements and to the resend limit, and a resume sends
    /// again what follows the host's offset, in chunks, from the first kept byte at the
    /// earliest.
    #[test]
    fn kept_output_is_sent_again_from_the_hosts_offset() {
        let mut s = StreamBuf {
            keep: true,
            ..Default::default()
        };
        let data: Vec<u8> = (0..RESEND_LIMIT + CHUNK + 10).map(|i| i as u8).collect();
        s.end = data.len() as u64;
        s.kept.extend(&data[data.len() - RESEND_LIMIT..]);
        assert_eq!(s.start(), (CHUNK + 10) as u64);
        let frames = resend_frames(4, true, &s, (CHUNK + 10 + 5) as u64);
        let mut next = (CHUNK + 15) as u64;
        let mut got = Vec::new();
        for f in &frames {
            let Frame::Output(4, true, off, d) = f else {
                panic!("{f:?}")
            };
            assert_eq!(*off, next);
            assert!(d.len() <= CHUNK);
            next += d.len() as u64;
            got.extend_from_slice(d);
        }
        assert_eq!(got, &data[CHUNK + 15..]);
        // From before the first kept byte: from that byte (the rest is lost).
        let Frame::Output(_, _, off, _) = &resend_frames(4, true, &s, 0)[0] else {
            panic!()
        };
        assert_eq!(*off, s.start());
        // Nothing past the end.
        assert!(resend_frames(4, true, &s, s.end + 3).is_empty());
    }

    #[test]
    fn cpu_limits_become_a_quota_per_period_with_the_kernels_floor() {
        assert_eq!(cpu_max(250), "25000 100000");
        assert_eq!(cpu_max(1500), "150000 100000");
        assert_eq!(cpu_max(1), "1000 100000");
    }

    #[test]
    fn oom_kill_count_is_read_from_memory_events() {
        assert_eq!(oom_kills("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"), 1);
        assert_eq!(oom_kills(""), 0);
    }
}
