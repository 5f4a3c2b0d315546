//! The micro-VM sandbox: one container in its own QEMU `-M microvm` guest.
//!
//! The host side of the path: it finds the assets ([`VmAssets`]: Debian's cloud kernel as a PVH
//! `vmlinux`, the virtio/erofs/overlay modules, the static guest agent from `crates/guest`, all
//! made by `scripts/microvm-assets.sh`), turns an image's unpacked layers into one read-only
//! erofs image ([`make_erofs`]), generates the initramfs ([`initramfs`]), boots QEMU (KVM when
//! the CPU has VMX/SVM, else software emulation) and talks to the guest agent over a
//! virtio-serial port with the [`proto`] frames: run the container, its stdout/stderr into a
//! CRI log file ([`crate::logs::format_line`]), exec sessions, signals, status, exit code.
//!
//! What the guest can reach: its read-only disks (erofs images), its tmpfs, the channel, and,
//! when given one ([`VmConfig::network`], [`plug_tap`]), a virtio-net device on a tap in the
//! pod's network namespace (QEMU's userspace backend, `vhost=off`), which takes the pod's
//! address: the guest agent configures `eth0` from the kernel command line
//! ([`VmNetwork::kernel_args`]). No shared directory. Must not depend on the other runtimes.
//!
//! [`MicroVm`] runs one container; [`pod::MicroVmPod`] runs a whole pod (one disk and root
//! filesystem per container, init containers in order, volumes, /etc files, the pod's size).
//!
//! Files of one VM live in its directory: `initrd.img`, `agent.sock`, `console.log` (the guest's
//! serial console, for boot diagnostics), `qemu.log` (QEMU's stderr); [`MicroVm::destroy`]
//! removes them.

pub mod cgroup;
pub mod initramfs;
pub mod pod;

#[path = "../../guest/src/proto.rs"]
#[allow(dead_code)]
pub mod proto;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot, watch};

use crate::logs::{self, Stream};
use proto::{Decoder, Frame, PidNs, Spec, State};

/// Where [`VmAssets::locate`] looks when `NODELESS_MICROVM_ASSETS` is not set.
pub const DEFAULT_ASSETS_DIR: &str = "/var/cache/nodeless/microvm";
/// The environment variable naming the assets directory.
pub const ASSETS_ENV: &str = "NODELESS_MICROVM_ASSETS";
/// The QEMU binary looked up on PATH.
pub const QEMU: &str = "qemu-system-x86_64";

#[derive(Debug, thiserror::Error)]
pub enum MicroVmError {
    #[error("micro-VM asset {0} is missing; run scripts/microvm-assets.sh (or set {ASSETS_ENV})")]
    MissingAsset(PathBuf),
    #[error(
        "{QEMU} not found on PATH; install Debian's qemu-system-x86 (apt-get install qemu-system-x86)"
    )]
    QemuMissing,
    #[error(
        "mkfs.erofs not found on PATH; install Debian's erofs-utils (apt-get install erofs-utils)"
    )]
    MkfsMissing,
    #[error("{0}")]
    Io(String, #[source] std::io::Error),
    #[error("mkfs.erofs failed on {dir}: {stderr}")]
    Mkfs { dir: PathBuf, stderr: String },
    #[error("the micro-VM did not boot: {reason}; guest console:\n{console}")]
    Boot { reason: String, console: String },
    #[error("the host-guest channel")]
    Channel(#[source] proto::ProtoError),
    #[error("the guest agent: {0}")]
    Guest(String),
    #[error("the micro-VM has stopped")]
    Stopped,
    #[error("setting up the micro-VM's network: {0}")]
    Net(String),
    #[error("init container {name} failed with exit code {code}{}", error.as_deref().map(|e| format!(": {e}")).unwrap_or_default())]
    InitContainer {
        name: String,
        code: i32,
        error: Option<String>,
    },
}

type Result<T, E = MicroVmError> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MicroVmError {
    let what = what.into();
    move |e| MicroVmError::Io(what, e)
}

/// The files a micro-VM boots from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmAssets {
    /// An uncompressed kernel (PVH ELF `vmlinux`).
    pub kernel: PathBuf,
    /// `<name>.ko` files and `order` (one name a line, dependencies first).
    pub modules_dir: PathBuf,
    /// The static `nodeless-guest` binary.
    pub guest_agent: PathBuf,
}

impl VmAssets {
    /// The assets in `$NODELESS_MICROVM_ASSETS`, else in [`DEFAULT_ASSETS_DIR`].
    pub fn locate() -> Result<VmAssets> {
        let dir = std::env::var_os(ASSETS_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ASSETS_DIR));
        VmAssets::in_dir(&dir)
    }

    /// The assets as `scripts/microvm-assets.sh` lays them out in `dir`.
    pub fn in_dir(dir: &Path) -> Result<VmAssets> {
        let a = VmAssets {
            kernel: dir.join("vmlinux"),
            modules_dir: dir.join("modules"),
            guest_agent: dir.join("nodeless-guest"),
        };
        for p in [&a.kernel, &a.modules_dir.join("order"), &a.guest_agent] {
            if !p.is_file() {
                return Err(MicroVmError::MissingAsset(p.clone()));
            }
        }
        Ok(a)
    }
}

/// `qemu-system-x86_64` on PATH, or an error naming the package.
pub fn qemu_binary() -> Result<PathBuf> {
    find_on_path(QEMU).ok_or(MicroVmError::QemuMissing)
}

/// Checks that micro-VMs can run here, before anything is pulled or booted: QEMU and
/// `mkfs.erofs` on PATH, the guest's boot assets in place. Returns the assets; the error says
/// what to install or run.
pub fn prerequisites() -> Result<VmAssets> {
    qemu_binary()?;
    find_on_path("mkfs.erofs").ok_or(MicroVmError::MkfsMissing)?;
    VmAssets::locate()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether `cpuinfo` (the text of /proc/cpuinfo) shows hardware virtualization (VMX/SVM).
/// /dev/kvm alone proves nothing (see docs: PVM hosts have it and cannot boot a stock guest).
pub fn has_hardware_virtualization(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"))
}

/// How QEMU executes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accel {
    /// KVM when /proc/cpuinfo has VMX/SVM, else TCG.
    #[default]
    Auto,
    Kvm,
    /// Software emulation (slow; works everywhere).
    Tcg,
}

impl Accel {
    /// `Auto` made concrete for this host.
    pub fn resolve(self) -> Accel {
        match self {
            Accel::Auto => {
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                if has_hardware_virtualization(&cpuinfo) && Path::new("/dev/kvm").exists() {
                    Accel::Kvm
                } else {
                    Accel::Tcg
                }
            }
            a => a,
        }
    }
}

/// The size of the writable layer of a container of [`MicroVm`] (`nodeless sandbox run`): its
/// `limit` (none given: [`crate::plan::DEFAULT_EPHEMERAL_STORAGE`], the 20 GiB ephemeral storage
/// Fargate gives a pod) but at most half the VM's memory, which is what the guest can hold (the
/// layer is a tmpfs in the VM's RAM; half is tmpfs's own default, the rest is for the kernel,
/// the agent and the container's processes). Pure.
pub fn writable_cap(memory_mib: u32, limit: Option<u64>) -> u64 {
    let half = (u64::from(memory_mib) << 20) / 2;
    limit
        .unwrap_or(crate::plan::DEFAULT_EPHEMERAL_STORAGE)
        .min(half)
        .max(1 << 20)
}

/// One VM's settings.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub assets: VmAssets,
    pub memory_mib: u32,
    pub cpus: u32,
    pub accel: Accel,
    /// The VM's own directory (created; emptied by [`MicroVm::destroy`]).
    pub dir: PathBuf,
    /// The container's CRI log file (appended to).
    pub log_path: PathBuf,
    /// How long the guest may take to answer after QEMU starts.
    pub boot_timeout: Duration,
    /// The VM's network device (a tap in the pod's netns, see [`plug_tap`]); none without.
    pub network: Option<VmNetwork>,
    /// The guest's hostname (the pod's name); the kernel's default when empty.
    pub hostname: String,
    /// The container's `ephemeral-storage` limit: the size of its writable layer, see
    /// [`writable_cap`] (none: the default). A write past it fails with ENOSPC.
    pub writable_limit: Option<u64>,
}

impl VmConfig {
    /// 256 MiB, 1 vCPU, automatic acceleration, 120 s boot timeout (TCG on a loaded 2-core
    /// host is slow), log at `dir/container.log`.
    pub fn new(assets: VmAssets, dir: impl Into<PathBuf>) -> VmConfig {
        let dir = dir.into();
        VmConfig {
            assets,
            memory_mib: 256,
            cpus: 1,
            accel: Accel::Auto,
            log_path: dir.join("container.log"),
            dir,
            boot_timeout: Duration::from_secs(120),
            network: None,
            hostname: String::new(),
            writable_limit: None,
        }
    }
}

/// The container process: what runs inside the VM's root filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub args: Vec<String>,
    /// `KEY=VALUE`, the whole environment.
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// The memory limit (a cgroup of its own in the guest); over it the OOM killer ends it.
    pub memory_limit_bytes: Option<u64>,
    /// Supplementary groups (the pod's `supplementalGroups`), besides `gid`.
    pub groups: Vec<u32>,
    /// The CPU limit in thousandths of a CPU (`cpu.max` of its cgroup in the guest).
    pub cpu_limit_millis: Option<u64>,
}

impl ContainerSpec {
    /// The guest's spec of a process in PID namespace `pid_ns`.
    fn to_spec(&self, stdin: bool, tty: bool, pid_ns: PidNs) -> Spec {
        Spec {
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: if self.cwd.is_empty() {
                "/".into()
            } else {
                self.cwd.clone()
            },
            uid: self.uid,
            gid: self.gid,
            stdin,
            tty,
            root: 0,
            memory_limit: self.memory_limit_bytes.unwrap_or(0),
            groups: self.groups.clone(),
            cpu_limit_millis: self.cpu_limit_millis.unwrap_or(0),
            pid_ns,
        }
    }
}

/// What an exec session produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Escapes a value for a QEMU option list (a comma is written twice).
fn qemu_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The kernel command line (with `tsc_early_khz=`, see [`host_tsc_khz`]).
pub const KERNEL_ARGS: &str = "console=ttyS0 quiet panic=-1 rdinit=/init";

/// The TSC rate the guest kernel is told when the host's is not known.
pub const DEFAULT_TSC_KHZ: u64 = 2_000_000;

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter, which every x86-64 CPU has.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// The host's TSC rate in kHz, measured once (the TSC against the monotonic clock over 20 ms),
/// for the guest kernel's `tsc_early_khz=` (which also spares it the calibration at boot).
/// Under software emulation the guest's TSC is the host's: told another rate, the guest's
/// clocks run fast or slow (at 2 GHz on a 2.3 GHz host, 15 % fast), and so would the exit
/// times it reports ([`proto::Frame::Exit`]). [`DEFAULT_TSC_KHZ`] elsewhere than x86-64.
pub fn host_tsc_khz() -> u64 {
    static KHZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let t0 = Instant::now();
            let c0 = rdtsc();
            std::thread::sleep(Duration::from_millis(20));
            let c1 = rdtsc();
            let us = t0.elapsed().as_micros();
            let khz = u128::from(c1.wrapping_sub(c0)) * 1000 / us.max(1);
            // Far from any real TSC: a measurement gone wrong.
            match u64::try_from(khz) {
                Ok(k) if (100_000..=10_000_000).contains(&k) => k,
                _ => DEFAULT_TSC_KHZ,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        DEFAULT_TSC_KHZ
    })
}

/// The VM's network: a tap device in the pod's network namespace, joined to the pod's `eth0`
/// (its veth to the pod-network bridge) by tc redirects both ways, so the guest's `eth0` (with
/// the veth's MAC address) takes the pod's place on the bridge. The pod's address moves into
/// the guest (the pod netns keeps none), as gVisor does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNetwork {
    /// `/run/netns/<name>`: QEMU runs in it (to open the tap).
    pub netns_path: PathBuf,
    pub tap: String,
    /// The MAC address the guest's `eth0` takes (the pod veth's).
    pub mac: String,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// The tap device's name inside the pod's netns.
pub const TAP: &str = "tap0";

impl VmNetwork {
    /// The kernel arguments that tell the guest agent its address and route.
    pub fn kernel_args(&self) -> String {
        format!(
            "nodeless.ip={}/{} nodeless.gw={}",
            self.ip, self.prefix, self.gateway
        )
    }
}

/// What `ip -o -4 addr show dev eth0` says: the first `inet A/P`. Pure.
fn parse_inet(text: &str) -> Option<(Ipv4Addr, u8)> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "inet" {
            let (a, p) = words.next()?.split_once('/')?;
            return Some((a.parse().ok()?, p.parse().ok()?));
        }
    }
    None
}

/// The `link/ether` address in `ip link show` output. Pure.
fn parse_mac(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "link/ether" {
            return words.next().map(str::to_owned);
        }
    }
    None
}

async fn run_tool(args: &[&str]) -> Result<String> {
    let (prog, rest) = args.split_first().unwrap_or((&"true", &[]));
    let out = tokio::process::Command::new(prog)
        .args(rest)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(io(format!("running {}", args.join(" "))))?;
    if !out.status.success() {
        return Err(MicroVmError::Net(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Makes the pod's network namespace (from [`crate::network::PodNetwork::attach`]) ready for a
/// VM: a tap device [`TAP`] redirected to and from `eth0` with tc, and `eth0`'s address taken
/// off (the guest carries it). Idempotent: a second call (an agent restart) finds the tap and
/// the address it recorded in the tap's alias.
pub async fn plug_tap(att: &crate::network::Attachment) -> Result<VmNetwork> {
    let ns = att.netns.as_str();
    let eth = run_tool(&["ip", "-n", ns, "-o", "link", "show", "dev", "eth0"]).await?;
    let mac = parse_mac(&eth).ok_or_else(|| MicroVmError::Net(format!("no MAC in {eth:?}")))?;
    let tap_exists = run_tool(&["ip", "-n", ns, "-o", "link", "show", "dev", TAP])
        .await
        .ok();
    let addr = run_tool(&["ip", "-n", ns, "-o", "-4", "addr", "show", "dev", "eth0"]).await?;
    let prefix = match parse_inet(&addr) {
        Some((_, p)) => p,
        None => tap_exists
            .as_deref()
            .and_then(|t| t.split_once("alias nodeless:"))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| MicroVmError::Net(format!("eth0 of {ns} has no address")))?,
    };
    if tap_exists.is_none() {
        run_tool(&["ip", "-n", ns, "tuntap", "add", "dev", TAP, "mode", "tap"]).await?;
        let alias = format!("nodeless:{prefix}");
        run_tool(&["ip", "-n", ns, "link", "set", TAP, "alias", &alias]).await?;
        run_tool(&["ip", "-n", ns, "link", "set", TAP, "up"]).await?;
        for (from, to) in [("eth0", TAP), (TAP, "eth0")] {
            run_tool(&["tc", "-n", ns, "qdisc", "add", "dev", from, "ingress"]).await?;
            run_tool(&[
                "tc", "-n", ns, "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all",
                "u32", "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev",
                to,
            ])
            .await?;
        }
    }
    // The guest answers for the address now; the namespace must not.
    run_tool(&["ip", "-n", ns, "addr", "flush", "dev", "eth0"]).await?;
    Ok(VmNetwork {
        netns_path: att.netns_path.clone(),
        tap: TAP.to_owned(),
        mac,
        ip: att.ip,
        prefix,
        gateway: att.gateway,
    })
}

/// A hostname the kernel command line can carry (a DNS name: nothing that could add kernel
/// arguments). Pure.
fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 64
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The files of one boot in a VM's directory: the initramfs (written), the channel's socket
/// (a stale one removed), the guest's console log, and QEMU's own log (created: its stderr).
pub(crate) struct BootFiles {
    pub initrd: PathBuf,
    pub socket: PathBuf,
    pub console: PathBuf,
    pub qemu_log: PathBuf,
    pub qemu_stderr: std::fs::File,
}

impl BootFiles {
    pub(crate) fn create(dir: &Path, assets: &VmAssets) -> Result<BootFiles> {
        let qemu_log = dir.join("qemu.log");
        let qemu_stderr = std::fs::File::create(&qemu_log)
            .map_err(io(format!("creating {}", qemu_log.display())))?;
        let initrd = dir.join("initrd.img");
        std::fs::write(&initrd, initramfs(assets)?)
            .map_err(io(format!("writing {}", initrd.display())))?;
        let socket = dir.join("agent.sock");
        let _ = std::fs::remove_file(&socket);
        Ok(BootFiles {
            initrd,
            socket,
            console: dir.join("console.log"),
            qemu_log,
            qemu_stderr,
        })
    }
}

/// The files one VM's QEMU command names.
#[derive(Debug, Clone, Copy)]
pub struct VmFiles<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// The containers' disks (attached read-only), with the serial the guest finds each by
    /// (none for the single container's, which is `/dev/vda`).
    pub disks: &'a [(&'a Path, Option<&'a str>)],
    /// The host end of the agent channel (QEMU listens).
    pub socket: &'a Path,
    /// The guest's serial console output.
    pub console: &'a Path,
    /// The network device, if any: (tap name, MAC address).
    pub net: Option<(&'a str, &'a str)>,
    /// Extra kernel arguments for the guest agent (address, hostname).
    pub extra_args: &'a str,
    /// The TSC rate the guest kernel counts with ([`host_tsc_khz`]).
    pub tsc_khz: u64,
}

/// QEMU's arguments for one VM. Pure.
pub fn qemu_args(accel: Accel, memory_mib: u32, cpus: u32, files: &VmFiles<'_>) -> Vec<String> {
    let VmFiles {
        kernel,
        initrd,
        disks,
        socket,
        console,
        net,
        extra_args,
        tsc_khz,
    } = *files;
    let mut a: Vec<String> = vec![
        "-M".into(),
        // ACPI stays on: without it the virtio-mmio devices are not found.
        "microvm,x-option-roms=off,isa-serial=on,rtc=on".into(),
    ];
    match accel {
        Accel::Kvm => a.extend(["-enable-kvm".into(), "-cpu".into(), "host".into()]),
        Accel::Tcg | Accel::Auto => {
            a.extend(["-accel".into(), "tcg".into(), "-cpu".into(), "max".into()])
        }
    }
    a.extend([
        "-m".into(),
        memory_mib.to_string(),
        "-smp".into(),
        cpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // QEMU's own seccomp filter: a guest that took QEMU over still cannot spawn, setuid or
        // use obsolete system calls.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        "-monitor".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", qemu_escape(console)),
        "-kernel".into(),
        qemu_escape(kernel),
        "-initrd".into(),
        qemu_escape(initrd),
        "-append".into(),
        if extra_args.is_empty() {
            format!("{KERNEL_ARGS} tsc_early_khz={tsc_khz}")
        } else {
            format!("{KERNEL_ARGS} tsc_early_khz={tsc_khz} {extra_args}")
        },
    ]);
    for (i, (disk, serial)) in disks.iter().enumerate() {
        a.extend([
            "-drive".into(),
            format!(
                "file={},if=none,format=raw,id=d{i},readonly=on",
                qemu_escape(disk)
            ),
            "-device".into(),
            match serial {
                Some(s) => format!("virtio-blk-device,drive=d{i},serial={s}"),
                None => format!("virtio-blk-device,drive=d{i}"),
            },
        ]);
    }
    a.extend([
        "-device".into(),
        "virtio-serial-device".into(),
        "-chardev".into(),
        format!(
            "socket,path={},server=on,wait=off,id=c0",
            qemu_escape(socket)
        ),
        "-device".into(),
        "virtserialport,chardev=c0,name=agent".into(),
    ]);
    if let Some((tap, mac)) = net {
        a.extend([
            "-netdev".into(),
            // No /dev/vhost-net here; QEMU's own virtio-net backend reads the tap.
            format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off"),
            "-device".into(),
            format!("virtio-net-device,netdev=n0,mac={mac}"),
        ]);
    }
    a
}

/// The initramfs for `assets`: the agent as /init and the modules in `modules/order`.
pub fn initramfs(assets: &VmAssets) -> Result<Vec<u8>> {
    let agent = std::fs::read(&assets.guest_agent)
        .map_err(io(format!("reading {}", assets.guest_agent.display())))?;
    let order_path = assets.modules_dir.join("order");
    let order = std::fs::read_to_string(&order_path)
        .map_err(io(format!("reading {}", order_path.display())))?;
    let mut modules = Vec::new();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let p = assets.modules_dir.join(format!("{name}.ko"));
        let data = std::fs::read(&p).map_err(|_| MicroVmError::MissingAsset(p.clone()))?;
        modules.push((name.to_owned(), data));
    }
    Ok(initramfs::cpio(&initramfs::members(agent, modules)))
}

/// Makes the read-only erofs image `out` from an image's unpacked layers (`lower`, top first,
/// as [`crate::image::ImageStore::lower_dirs`] gives them). Several layers are merged through
/// a read-only overlay mount (whiteouts and opaque directories applied) under `out`'s
/// directory; one layer is used as it is. Needs `mkfs.erofs` (and root for the mount).
pub async fn make_erofs(lower: &[PathBuf], out: &Path) -> Result<()> {
    let mkfs = find_on_path("mkfs.erofs").ok_or(MicroVmError::MkfsMissing)?;
    let parent = out.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    let (src, merged) = match lower {
        [] => {
            return Err(MicroVmError::Guest(
                "an image needs at least one layer".into(),
            ));
        }
        [one] => (one.clone(), None),
        many => {
            static SEQ: AtomicU32 = AtomicU32::new(0);
            let merged = parent.join(format!(
                ".erofs-merge-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&merged)
                .map_err(io(format!("creating {}", merged.display())))?;
            let dirs: Vec<String> = many.iter().map(|p| p.display().to_string()).collect();
            let opts = std::ffi::CString::new(format!("lowerdir={}", dirs.join(":")))
                .map_err(|e| io("overlay options")(std::io::Error::other(e)))?;
            rustix::mount::mount(
                "overlay",
                &merged,
                "overlay",
                rustix::mount::MountFlags::RDONLY,
                Some(opts.as_c_str()),
            )
            .map_err(|e| io(format!("mounting overlay at {}", merged.display()))(e.into()))?;
            (merged.clone(), Some(merged))
        }
    };
    // Two pods of one image may convert it at once: each into a file of its own.
    static TMP: AtomicU32 = AtomicU32::new(0);
    let tmp = PathBuf::from(format!(
        "{}.tmp-{}-{}",
        out.display(),
        std::process::id(),
        TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let result = tokio::process::Command::new(&mkfs)
        .arg("--quiet")
        .arg(&tmp)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .await;
    if let Some(m) = &merged {
        let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        let _ = std::fs::remove_dir(m);
    }
    let output = result.map_err(io("running mkfs.erofs"))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(MicroVmError::Mkfs {
            dir: src,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    std::fs::rename(&tmp, out).map_err(io(format!("renaming to {}", out.display())))
}

/// Turns output chunks into CRI log records, a line at a time per stream, and keeps count of
/// the guest's output offsets: what it has (`next`) and what is in the file ([`Self::written`],
/// what the host acknowledges).
struct LogWriter {
    file: std::fs::File,
    partial: [Vec<u8>; 2],
    /// The offset in each of the guest's streams of the next byte expected.
    next: [u64; 2],
    /// Where [`Self::written`] is kept for a later agent (16 bytes: stdout, stderr), if
    /// anywhere.
    ack_file: Option<std::fs::File>,
}

impl LogWriter {
    fn new(file: std::fs::File) -> LogWriter {
        LogWriter {
            file,
            partial: [Vec::new(), Vec::new()],
            next: [0, 0],
            ack_file: None,
        }
    }

    /// Output of the guest at `offset` of `stream` (none from a guest of version 1): what
    /// was had already (sent again after a resume) is skipped; a gap (output the guest no
    /// longer kept) is logged.
    fn accept(&mut self, stream: Stream, offset: Option<u64>, data: &[u8]) {
        let i = stream as usize;
        let data = match offset {
            None => data,
            Some(o) => {
                if o > self.next[i] {
                    tracing::warn!(
                        lost_bytes = o - self.next[i],
                        "micro-VM container output lost (not kept by the guest)"
                    );
                    self.next[i] = o;
                }
                let skip =
                    usize::try_from(self.next[i] - o).map_or(data.len(), |n| n.min(data.len()));
                &data[skip..]
            }
        };
        self.next[i] += data.len() as u64;
        self.push(stream, data);
    }

    /// The offsets up to which each stream is in the log file (unterminated lines held here
    /// are not).
    fn written(&self) -> [u64; 2] {
        [
            self.next[0] - self.partial[0].len() as u64,
            self.next[1] - self.partial[1].len() as u64,
        ]
    }

    /// Writes [`Self::written`] to the ack file; returns it.
    fn save_written(&mut self) -> [u64; 2] {
        let w = self.written();
        if let Some(f) = &self.ack_file {
            use std::os::unix::fs::FileExt as _;
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&w[0].to_le_bytes());
            b[8..].copy_from_slice(&w[1].to_le_bytes());
            if let Err(e) = f.write_all_at(&b, 0) {
                tracing::warn!(error = %e, "saving the micro-VM log offsets");
            }
        }
        w
    }

    fn push(&mut self, stream: Stream, mut data: &[u8]) {
        let i = stream as usize;
        while !data.is_empty() {
            let (line, rest, complete) = match data.iter().position(|b| *b == b'\n') {
                Some(n) => (&data[..n], &data[n + 1..], true),
                None => (data, &[][..], false),
            };
            self.partial[i].extend_from_slice(line);
            data = rest;
            if complete {
                self.emit(stream, false);
            } else if self.partial[i].len() >= logs::MAX_LINE {
                self.emit(stream, true);
            }
        }
    }

    fn emit(&mut self, stream: Stream, partial: bool) {
        let i = stream as usize;
        let text = std::mem::take(&mut self.partial[i]);
        let line = logs::format_line(jiff::Timestamp::now(), stream, partial, &text);
        if let Err(e) = self.file.write_all(&line) {
            tracing::warn!(error = %e, "writing the micro-VM container log");
        }
    }

    /// Writes what is left of unterminated lines.
    fn finish(&mut self) {
        for s in [Stream::Stdout, Stream::Stderr] {
            if !self.partial[s as usize].is_empty() {
                self.emit(s, false);
            }
        }
    }
}

/// What an exec session reports, in order; [`ExecEvent::Exit`] is the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// Starting failed (no such program...); an `Exit` with 127 follows.
    Error(String),
    Exit(i32),
    /// The VM went away before the process ended; nothing follows.
    Lost(String),
}

/// A process started in the running container with [`MicroVm::exec_session`]: stream its
/// output, feed its stdin, signal it.
pub struct ExecSession {
    id: u32,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    events: mpsc::UnboundedReceiver<ExecEvent>,
}

impl ExecSession {
    /// The next event; `None` after `Exit` or `Lost`.
    pub async fn next_event(&mut self) -> Option<ExecEvent> {
        self.events.recv().await
    }

    fn input(&self) -> ExecInput {
        ExecInput {
            id: self.id,
            writer: self.writer.clone(),
        }
    }

    /// Feeds `data` to the process's stdin (the session must have been opened with stdin).
    pub async fn write_stdin(&self, data: &[u8]) -> Result<()> {
        self.input().write_stdin(data).await
    }

    /// Closes the process's stdin.
    pub async fn close_stdin(&self) -> Result<()> {
        self.input().close_stdin().await
    }

    /// Sends `signal` to the process.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        self.input().signal(signal).await
    }

    /// Sets the terminal's size (a session started with `tty`).
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        self.input().resize(rows, cols).await
    }

    /// Splits the session into its input (stdin, signals, resizes: usable from any task) and
    /// its events, for a caller that feeds and reads it at once.
    pub fn split(self) -> (ExecInput, mpsc::UnboundedReceiver<ExecEvent>) {
        (self.input(), self.events)
    }

    /// Reads every event up to the exit: the whole output and the code.
    pub async fn collect(mut self) -> Result<ExecOutput> {
        let mut out = ExecOutput::default();
        let mut error = None;
        while let Some(e) = self.next_event().await {
            match e {
                ExecEvent::Stdout(d) => out.stdout.extend_from_slice(&d),
                ExecEvent::Stderr(d) => out.stderr.extend_from_slice(&d),
                ExecEvent::Error(msg) => error = Some(msg),
                ExecEvent::Exit(code) => {
                    return match error {
                        Some(msg) if code == 127 => Err(MicroVmError::Guest(msg)),
                        _ => {
                            out.code = code;
                            Ok(out)
                        }
                    };
                }
                ExecEvent::Lost(why) => return Err(MicroVmError::Guest(why)),
            }
        }
        Err(MicroVmError::Stopped)
    }
}

/// The input side of an [`ExecSession`] (see [`ExecSession::split`]).
#[derive(Clone)]
pub struct ExecInput {
    id: u32,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
}

impl ExecInput {
    /// Feeds `data` to the process's stdin.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(proto::CHUNK) {
            send(&self.writer, &Frame::Stdin(self.id, chunk.to_vec())).await?;
        }
        Ok(())
    }

    /// Closes the process's stdin.
    pub async fn close_stdin(&self) -> Result<()> {
        send(&self.writer, &Frame::Stdin(self.id, Vec::new())).await
    }

    /// Sends `signal` to the process.
    pub async fn signal(&self, signal: i32) -> Result<()> {
        send(&self.writer, &Frame::Signal(self.id, signal)).await
    }

    /// Sets the terminal's size.
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        send(&self.writer, &Frame::Resize(self.id, rows, cols)).await
    }
}

/// Reads an ack file ([`LogWriter::save_written`]): zeros when there is none.
fn read_written(path: &Path) -> [u64; 2] {
    match std::fs::read(path) {
        Ok(b) if b.len() >= 16 => [
            u64::from_le_bytes(b[..8].try_into().unwrap_or_default()),
            u64::from_le_bytes(b[8..16].try_into().unwrap_or_default()),
        ],
        _ => [0, 0],
    }
}

/// Sends [`Frame::Ack`]s from a task of its own, the latest offsets of each process at a time,
/// so the reader never waits on the channel's writer (the guest may be blocked writing).
#[derive(Clone)]
struct Acker(mpsc::UnboundedSender<(u32, [u64; 2])>);

impl Acker {
    fn spawn(writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>) -> Acker {
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, [u64; 2])>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut latest = HashMap::from([first]);
                while let Ok((id, offs)) = rx.try_recv() {
                    latest.insert(id, offs);
                }
                for (id, offs) in latest {
                    if send(&writer, &Frame::Ack(id, offs)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Acker(tx)
    }

    fn ack(&self, id: u32, offsets: [u64; 2]) {
        let _ = self.0.send((id, offsets));
    }
}

async fn send(writer: &tokio::sync::Mutex<OwnedWriteHalf>, f: &Frame) -> Result<()> {
    let mut w = writer.lock().await;
    w.write_all(&f.encode())
        .await
        .map_err(|_| MicroVmError::Stopped)
}

/// What the reader task shares with [`MicroVm`].
struct Shared {
    execs: HashMap<u32, mpsc::UnboundedSender<ExecEvent>>,
    queries: HashMap<u32, Vec<oneshot::Sender<State>>>,
    container_error: Option<String>,
    first_output: Option<Instant>,
    ready: Option<oneshot::Sender<()>>,
    /// The OOM killer ended the container.
    oom: bool,
    acker: Option<Acker>,
    /// The guest's protocol version (its `Ready` says; 0 before): a guest of version 1 is
    /// sent no acknowledgements.
    guest_version: u32,
}

/// The container's end as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ended {
    Code(i32),
    /// The channel closed (QEMU gone) before an exit code came.
    Lost(String),
}

/// Boot figures of one VM.
#[derive(Debug, Clone, Copy)]
pub struct BootTimes {
    /// QEMU started -> the guest agent answered (root filesystem mounted).
    pub to_ready: Duration,
    /// QEMU started -> the container's first output, if any yet.
    pub to_first_output: Option<Duration>,
}

/// A running micro-VM with one container in it.
pub struct MicroVm {
    child: tokio::process::Child,
    pid: Option<u32>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Mutex<Shared>>,
    ended: watch::Receiver<Option<Ended>>,
    reader: tokio::task::JoinHandle<()>,
    next_id: AtomicU32,
    container: ContainerSpec,
    dir: PathBuf,
    log_path: PathBuf,
    started: Instant,
    to_ready: Duration,
}

fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The command that runs `qemu`: with a network, QEMU runs in the pod's netns (where its tap
/// is); nsenter execs it, so the child is QEMU itself.
fn qemu_command(qemu: &Path, network: Option<&VmNetwork>) -> tokio::process::Command {
    match network {
        Some(n) => {
            let mut c = tokio::process::Command::new("nsenter");
            c.arg(format!("--net={}", n.netns_path.display()))
                .arg("--")
                .arg(qemu);
            c
        }
        None => tokio::process::Command::new(qemu),
    }
}

/// Waits for QEMU to create its channel socket (at start-up: server=on,wait=off). On failure
/// returns the reason for a [`MicroVmError::Boot`]; a QEMU still running after 20s since
/// `started` is killed.
async fn connect_channel(
    child: &mut tokio::process::Child,
    socket: &Path,
    qemu_log: &Path,
    started: Instant,
) -> std::result::Result<UnixStream, String> {
    loop {
        if let Ok(s) = UnixStream::connect(socket).await {
            return Ok(s);
        }
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(qemu_log).unwrap_or_default();
            return Err(format!("qemu exited ({status}): {}", err.trim()));
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.start_kill();
            return Err(format!("no socket at {}", socket.display()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl MicroVm {
    /// Boots a VM whose disk is the erofs image `rootfs` and starts `container` in it. Returns
    /// once the container process was started (or failed to start: see [`MicroVm::wait`]).
    pub async fn boot(
        config: &VmConfig,
        rootfs: &Path,
        container: &ContainerSpec,
    ) -> Result<MicroVm> {
        Self::boot_with(config, rootfs, container, None).await
    }

    /// [`MicroVm::boot`] with the container attached: its stdin fed by the host (`stdin`), on a
    /// terminal (`tty`: one output stream, resizable), its output streamed to the returned
    /// session as well as written to the CRI log (`docker run -i/-t`). The session's `Exit` is
    /// the container's exit code; its input's signals and resizes go to the container.
    pub async fn boot_attached(
        config: &VmConfig,
        rootfs: &Path,
        container: &ContainerSpec,
        stdin: bool,
        tty: bool,
    ) -> Result<(MicroVm, ExecSession)> {
        let (tx, events) = mpsc::unbounded_channel();
        let vm = Self::boot_with(config, rootfs, container, Some((stdin, tty, tx))).await?;
        let session = ExecSession {
            id: 0,
            writer: vm.writer.clone(),
            events,
        };
        Ok((vm, session))
    }

    async fn boot_with(
        config: &VmConfig,
        rootfs: &Path,
        container: &ContainerSpec,
        attached: Option<(bool, bool, mpsc::UnboundedSender<ExecEvent>)>,
    ) -> Result<MicroVm> {
        let qemu = qemu_binary()?;
        if !rootfs.is_file() {
            return Err(MicroVmError::MissingAsset(rootfs.to_owned()));
        }
        let dir = &config.dir;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let BootFiles {
            initrd,
            socket,
            console,
            qemu_log,
            qemu_stderr,
        } = BootFiles::create(dir, &config.assets)?;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.log_path)
            .map_err(io(format!("opening {}", config.log_path.display())))?;

        let mut extra = vec![format!(
            "nodeless.writable={}",
            writable_cap(config.memory_mib, config.writable_limit)
        )];
        if let Some(n) = &config.network {
            extra.push(n.kernel_args());
        }
        if valid_hostname(&config.hostname) {
            extra.push(format!("nodeless.hostname={}", config.hostname));
        }
        let extra = extra.join(" ");
        let args = qemu_args(
            config.accel.resolve(),
            config.memory_mib,
            config.cpus,
            &VmFiles {
                kernel: &config.assets.kernel,
                initrd: &initrd,
                disks: &[(rootfs, None)],
                socket: &socket,
                console: &console,
                net: config
                    .network
                    .as_ref()
                    .map(|n| (n.tap.as_str(), n.mac.as_str())),
                extra_args: &extra,
                tsc_khz: host_tsc_khz(),
            },
        );
        let mut command = qemu_command(&qemu, config.network.as_ref());
        let started = Instant::now();
        let mut child = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(qemu_stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", qemu.display())))?;
        let pid = child.id();
        let boot_error = |reason: String| MicroVmError::Boot {
            reason,
            console: console_tail(&console),
        };

        let stream = connect_channel(&mut child, &socket, &qemu_log, started)
            .await
            .map_err(boot_error)?;
        let (mut read_half, write_half) = stream.into_split();

        let (ready_tx, ready_rx) = oneshot::channel();
        let (stdin, tty) = attached.as_ref().map_or((false, false), |a| (a.0, a.1));
        let mut execs = HashMap::new();
        if let Some((_, _, tx)) = attached {
            // Process 0's output and end go to the attached session too.
            execs.insert(0, tx);
        }
        let shared = Arc::new(Mutex::new(Shared {
            execs,
            queries: HashMap::new(),
            container_error: None,
            first_output: None,
            ready: Some(ready_tx),
            oom: false,
            acker: None,
            guest_version: 0,
        }));
        let (ended_tx, ended) = watch::channel(None);
        let reader = {
            let shared = shared.clone();
            let mut log = LogWriter::new(log_file);
            tokio::spawn(async move {
                let mut dec = Decoder::default();
                let mut buf = vec![0u8; 64 * 1024];
                let why = loop {
                    let n = match read_half.read(&mut buf).await {
                        Ok(0) => break "the channel closed".to_owned(),
                        Ok(n) => n,
                        Err(e) => break format!("reading the channel: {e}"),
                    };
                    dec.push(&buf[..n]);
                    loop {
                        match dec.next_frame() {
                            Ok(Some(f)) => dispatch(f, &shared, &mut log, &ended_tx),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "bad frame from the guest agent");
                                return lose(&shared, &ended_tx, &mut log, e.to_string());
                            }
                        }
                    }
                };
                lose(&shared, &ended_tx, &mut log, why);
            })
        };

        let writer = Arc::new(tokio::sync::Mutex::new(write_half));
        shared.lock().unwrap_or_else(|p| p.into_inner()).acker = Some(Acker::spawn(writer.clone()));
        let vm = MicroVm {
            child,
            pid,
            writer,
            shared,
            ended,
            reader,
            next_id: AtomicU32::new(1),
            container: container.clone(),
            dir: dir.clone(),
            log_path: config.log_path.clone(),
            started,
            to_ready: Duration::ZERO,
        };
        // The agent reads its first frame once up, answers Ready, then runs it.
        // The container's process is PID 1 of its own PID namespace.
        vm.send(&Frame::Run(0, container.to_spec(stdin, tty, PidNs::Own)))
            .await?;
        let mut vm = vm;
        let mut ended = vm.ended.clone();
        // Ready comes before the container's end on the channel, and a container that ends at
        // once may have both seen at the same poll: Ready first, or a quick run would be taken
        // for a failed boot.
        tokio::select! {
            biased;
            r = ready_rx => {
                if r.is_err() {
                    let why = vm.ended_reason();
                    let _ = vm.child.start_kill();
                    return Err(boot_error(why));
                }
            }
            _ = ended.wait_for(|e| e.is_some()) => {
                let why = vm.ended_reason();
                let _ = vm.child.start_kill();
                return Err(boot_error(why));
            }
            _ = tokio::time::sleep(config.boot_timeout) => {
                let _ = vm.child.start_kill();
                return Err(boot_error(format!("no answer within {:?}", config.boot_timeout)));
            }
        }
        vm.to_ready = started.elapsed();
        Ok(vm)
    }

    fn ended_reason(&self) -> String {
        match &*self.ended.borrow() {
            Some(Ended::Lost(why)) => why.clone(),
            Some(Ended::Code(c)) => format!("the container ended with {c} during boot"),
            None => "the guest agent went away".into(),
        }
    }

    async fn send(&self, f: &Frame) -> Result<()> {
        send(&self.writer, f).await
    }

    /// QEMU's process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The container's CRI log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The guest's serial console (kernel and agent messages).
    pub fn console_path(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// Boot figures so far.
    pub fn boot_times(&self) -> BootTimes {
        let first = self
            .shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first_output;
        BootTimes {
            to_ready: self.to_ready,
            to_first_output: first.map(|t| t.duration_since(self.started)),
        }
    }

    /// Waits for the container to end and returns its exit code (128 + signal when killed).
    /// The VM powers itself off after the container ends.
    pub async fn wait(&self) -> Result<i32> {
        let mut ended = self.ended.clone();
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

    /// The error the guest reported for the container (e.g. the program does not exist).
    pub fn container_error(&self) -> Option<String> {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .container_error
            .clone()
    }

    /// Whether the OOM killer ended the container (over `memory_limit_bytes`): `OOMKilled`.
    pub fn oom_killed(&self) -> bool {
        self.shared.lock().unwrap_or_else(|p| p.into_inner()).oom
    }

    /// Sends `signal` (e.g. 15, 9) to the container's process.
    pub async fn kill(&self, signal: i32) -> Result<()> {
        self.send(&Frame::Signal(0, signal)).await
    }

    /// The container's state as the guest sees it.
    pub async fn status(&self) -> Result<State> {
        let (tx, rx) = oneshot::channel();
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .queries
            .entry(0)
            .or_default()
            .push(tx);
        self.send(&Frame::Query(0)).await?;
        rx.await.map_err(|_| MicroVmError::Stopped)
    }

    /// Runs `args` in the container (its env, cwd and user), feeding `stdin` when given, and
    /// returns its output and exit code.
    pub async fn exec(&self, args: &[&str], stdin: Option<&[u8]>) -> Result<ExecOutput> {
        let spec = ContainerSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            ..self.container.clone()
        };
        self.exec_spec(&spec, stdin).await
    }

    /// [`MicroVm::exec`] with a process spec of its own.
    pub async fn exec_spec(
        &self,
        spec: &ContainerSpec,
        stdin: Option<&[u8]>,
    ) -> Result<ExecOutput> {
        let session = self.exec_session(spec, stdin.is_some(), false).await?;
        if let Some(data) = stdin {
            session.write_stdin(data).await?;
            session.close_stdin().await?;
        }
        session.collect().await
    }

    /// Starts `spec` in the running container and returns the session to stream its output
    /// and feed its stdin (when `stdin`). With `tty` the process runs on a terminal: its
    /// output comes as `Stdout` only, and [`ExecSession::resize`] sets the window size.
    pub async fn exec_session(
        &self,
        spec: &ContainerSpec,
        stdin: bool,
        tty: bool,
    ) -> Result<ExecSession> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, events) = mpsc::unbounded_channel();
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .execs
            .insert(id, tx);
        // In the container's PID namespace.
        self.send(&Frame::Run(id, spec.to_spec(stdin, tty, PidNs::Join(0))))
            .await?;
        Ok(ExecSession {
            id,
            writer: self.writer.clone(),
            events,
        })
    }

    /// Stops the VM (SIGKILL to QEMU if it still runs), waits for QEMU to exit, and removes the
    /// VM's files (socket, initramfs, console and QEMU logs). The container log stays.
    pub async fn destroy(mut self) -> Result<()> {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        self.reader.abort();
        for f in ["agent.sock", "initrd.img", "console.log", "qemu.log"] {
            let p = self.dir.join(f);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("removing {}", p.display()))(e)),
            }
        }
        Ok(())
    }

    /// Waits until QEMU has exited on its own (after the container ended), at most `limit`.
    pub async fn wait_vm_exit(&mut self, limit: Duration) -> Result<bool> {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(r) => r.map(|_| true).map_err(io("waiting for qemu")),
            Err(_) => Ok(false),
        }
    }
}

impl Drop for MicroVm {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn dispatch(
    f: Frame,
    shared: &Arc<Mutex<Shared>>,
    log: &mut LogWriter,
    ended: &watch::Sender<Option<Ended>>,
) {
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    match f {
        Frame::Ready(version) => {
            s.guest_version = version;
            if let Some(tx) = s.ready.take() {
                let _ = tx.send(());
            }
        }
        Frame::Started(..) => {}
        Frame::OomKilled(0) => s.oom = true,
        Frame::Stdout(id, d) => output(&mut s, log, id, Stream::Stdout, None, d),
        Frame::Stderr(id, d) => output(&mut s, log, id, Stream::Stderr, None, d),
        Frame::Output(id, stderr, offset, d) => {
            let stream = if stderr {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            output(&mut s, log, id, stream, Some(offset), d)
        }
        Frame::Exit(0, code, _) => {
            log.finish();
            let _ = log.file.flush();
            // The container may end before the agent's Ready was read (a failing mount).
            s.ready.take();
            if let Some(tx) = s.execs.remove(&0) {
                let _ = tx.send(ExecEvent::Exit(code));
            }
            ended.send_replace(Some(Ended::Code(code)));
        }
        Frame::Exit(id, code, _) => {
            if let Some(tx) = s.execs.remove(&id) {
                let _ = tx.send(ExecEvent::Exit(code));
            }
        }
        Frame::Error(0, msg) => {
            tracing::warn!(error = %msg, "micro-VM container");
            if let Some(tx) = s.execs.get(&0) {
                let _ = tx.send(ExecEvent::Error(msg.clone()));
            }
            s.container_error = Some(msg);
        }
        Frame::Error(id, msg) => {
            if let Some(tx) = s.execs.get(&id) {
                let _ = tx.send(ExecEvent::Error(msg));
            }
        }
        Frame::Status(id, st) => {
            if let Some(q) = s.queries.get_mut(&id)
                && !q.is_empty()
            {
                let _ = q.remove(0).send(st);
            }
        }
        other => tracing::warn!(frame = ?other, "unexpected frame from the guest agent"),
    }
}

/// Output of process `id`: the container's (0) to its log (and an attached session), an exec
/// session's to it.
fn output(
    s: &mut Shared,
    log: &mut LogWriter,
    id: u32,
    stream: Stream,
    offset: Option<u64>,
    d: Vec<u8>,
) {
    if d.is_empty() {
        return;
    }
    if id == 0 {
        s.first_output.get_or_insert_with(Instant::now);
        log.accept(stream, offset, &d);
        if let Some(a) = s.acker.as_ref().filter(|_| s.guest_version >= 2) {
            a.ack(0, log.written());
        }
    }
    if let Some(tx) = s.execs.get(&id) {
        let _ = tx.send(match stream {
            Stream::Stdout => ExecEvent::Stdout(d),
            Stream::Stderr => ExecEvent::Stderr(d),
        });
    }
}

/// The channel is gone: everything still waiting learns it.
fn lose(
    shared: &Arc<Mutex<Shared>>,
    ended: &watch::Sender<Option<Ended>>,
    log: &mut LogWriter,
    why: String,
) {
    log.finish();
    let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
    s.ready.take();
    for (_, tx) in s.execs.drain() {
        let _ = tx.send(ExecEvent::Lost(format!("the micro-VM stopped: {why}")));
    }
    s.queries.clear();
    ended.send_if_modified(|e| {
        if e.is_none() {
            *e = Some(Ended::Lost(why));
            true
        } else {
            false
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardware_virtualization_is_read_from_cpu_flags() {
        assert!(!has_hardware_virtualization(
            "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr hypervisor\n"
        ));
        assert!(has_hardware_virtualization("flags\t\t: fpu vmx sse\n"));
        assert!(has_hardware_virtualization("flags\t\t: fpu svm sse\n"));
        assert!(!has_hardware_virtualization("model name\t: vmx svm\n"));
    }

    #[test]
    fn qemu_args_attach_disk_read_only_and_channel_and_no_network() {
        let a = qemu_args(
            Accel::Tcg,
            256,
            2,
            &VmFiles {
                kernel: Path::new("/k/vmlinux"),
                initrd: Path::new("/d/initrd.img"),
                disks: &[
                    (Path::new("/d/a,b.erofs"), None),
                    (Path::new("/d/c.erofs"), Some("c2")),
                ],
                socket: Path::new("/d/agent.sock"),
                console: Path::new("/d/console.log"),
                net: None,
                extra_args: "",
                tsc_khz: DEFAULT_TSC_KHZ,
            },
        );
        let s = a.join(" ");
        assert!(s.starts_with("-M microvm,"));
        assert!(!s.contains("acpi=off"));
        assert!(s.contains("-accel tcg -cpu max"));
        assert!(!s.contains("kvm"));
        assert!(s.contains("-m 256 -smp 2"));
        assert!(s.contains("-nodefaults"));
        assert!(s.contains(
            "-drive file=/d/a,,b.erofs,if=none,format=raw,id=d0,readonly=on -device virtio-blk-device,drive=d0 "
        ));
        assert!(s.contains(
            "-drive file=/d/c.erofs,if=none,format=raw,id=d1,readonly=on -device virtio-blk-device,drive=d1,serial=c2 "
        ));
        assert!(s.contains("socket,path=/d/agent.sock,server=on,wait=off,id=c0"));
        assert!(s.contains("virtserialport,chardev=c0,name=agent"));
        assert!(s.contains("tsc_early_khz=2000000"));
        assert!(!s.contains("-netdev") && !s.contains("-nic") && !s.contains("virtfs"));
        let k = qemu_args(
            Accel::Kvm,
            128,
            1,
            &VmFiles {
                kernel: Path::new("k"),
                initrd: Path::new("i"),
                disks: &[(Path::new("r"), None)],
                socket: Path::new("s"),
                console: Path::new("c"),
                net: Some(("tap0", "02:00:00:00:00:01")),
                extra_args: "nodeless.ip=10.1.0.2/24 nodeless.gw=10.1.0.1",
                tsc_khz: 2_300_000,
            },
        )
        .join(" ");
        assert!(k.contains("-enable-kvm -cpu host"));
        assert!(k.contains(
            "-netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off \
             -device virtio-net-device,netdev=n0,mac=02:00:00:00:00:01"
        ));
        assert!(k.contains(
            "rdinit=/init tsc_early_khz=2300000 nodeless.ip=10.1.0.2/24 nodeless.gw=10.1.0.1"
        ));
        let khz = host_tsc_khz();
        assert!((100_000..=10_000_000).contains(&khz), "{khz}");
    }

    #[test]
    fn ip_output_is_parsed() {
        let a = "2: eth0    inet 10.201.9.2/24 scope global eth0\\       valid_lft forever";
        assert_eq!(parse_inet(a), Some((Ipv4Addr::new(10, 201, 9, 2), 24)));
        assert_eq!(parse_inet("2: eth0"), None);
        let l = "2: eth0@if7: <BROADCAST,MULTICAST,UP> mtu 1500 qdisc noqueue state UP \\    link/ether 8a:1c:3f:00:11:22 brd ff:ff:ff:ff:ff:ff link-netns x";
        assert_eq!(parse_mac(l).as_deref(), Some("8a:1c:3f:00:11:22"));
    }

    #[test]
    fn log_writer_splits_lines_across_chunks_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut w = LogWriter::new(std::fs::File::create(&p).unwrap());
        w.push(Stream::Stdout, b"hel");
        w.push(Stream::Stderr, b"err\n");
        w.push(Stream::Stdout, b"lo\nwor");
        w.finish();
        let text = std::fs::read(&p).unwrap();
        let recs: Vec<_> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| logs::parse_line(l).unwrap())
            .collect();
        let got: Vec<(&str, &[u8])> = recs
            .iter()
            .map(|r| (r.stream.as_str(), &r.text[..]))
            .collect();
        assert_eq!(
            got,
            [
                ("stderr", &b"err"[..]),
                ("stdout", &b"hello"[..]),
                ("stdout", &b"wor"[..])
            ]
        );
    }

    /// Output sent again after a resume is written once; what the file has is what an
    /// acknowledgement says (not the unterminated line held back), and it is kept on disk.
    #[test]
    fn resent_output_is_logged_once_and_acknowledged_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let acks = dir.path().join("acked");
        let mut w = LogWriter::new(std::fs::File::create(&p).unwrap());
        w.ack_file = Some(std::fs::File::create(&acks).unwrap());
        w.accept(Stream::Stdout, Some(0), b"one\ntw");
        assert_eq!(w.save_written(), [4, 0]);
        assert_eq!(read_written(&acks), [4, 0]);
        // The guest sends again from the acknowledged offset: "tw" again, then more.
        let mut again = LogWriter::new(std::fs::OpenOptions::new().append(true).open(&p).unwrap());
        again.next = read_written(&acks);
        again.accept(Stream::Stdout, Some(4), b"two\nth");
        again.accept(Stream::Stdout, Some(4), b"two\nthree\n");
        again.accept(Stream::Stderr, Some(0), b"e\n");
        assert_eq!(again.written(), [14, 2]);
        // A gap (output the guest dropped) is skipped over.
        again.accept(Stream::Stderr, Some(10), b"f\n");
        assert_eq!(again.written(), [14, 12]);
        let text = std::fs::read(&p).unwrap();
        let got: Vec<String> = text
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| String::from_utf8_lossy(&logs::parse_line(l).unwrap().text).into_owned())
            .collect();
        assert_eq!(got, ["one", "two", "three", "e", "f"]);
        assert_eq!(read_written(&dir.path().join("none")), [0, 0]);
    }

    #[test]
    fn the_writable_layer_is_capped_by_the_default_and_the_vms_memory() {
        assert_eq!(writable_cap(256, None), 128 << 20);
        assert_eq!(writable_cap(256, Some(8 << 20)), 8 << 20);
        assert_eq!(writable_cap(256, Some(1 << 30)), 128 << 20);
        assert_eq!(
            writable_cap(64 << 10, None),
            crate::plan::DEFAULT_EPHEMERAL_STORAGE
        );
    }

    #[test]
    fn missing_assets_name_the_setup_script() {
        let dir = tempfile::tempdir().unwrap();
        let e = VmAssets::in_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("scripts/microvm-assets.sh"), "{e}");
    }
}
