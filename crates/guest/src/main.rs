//! `nodeless-guest`: PID 1 of the micro-VM's initramfs.
//!
//! Boot: mount /proc, /sys, /dev; load the kernel modules listed in `/modules/order` (dependency
//! order) with `finit_module`; open the virtio-serial port named `agent`; mount the container's
//! image (erofs on /dev/vda, read-only) under a tmpfs-backed overlay at `/container`; answer the
//! host's first frame with `Ready`. Then serve [`guest::proto`] frames: run the container (id 0)
//! and exec sessions (chrooted into `/container`, with their env, cwd, uid/gid), stream their
//! stdout/stderr, forward stdin and signals, report exits and states. When the container exits,
//! every other process is killed, the exit is reported, and the VM powers off.
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

use guest::proto::{CHUNK, Frame, Spec, State};
use rustix::mount::{MountFlags, mount};

/// Where the container's root filesystem is assembled.
const ROOT: &str = "/container";
/// The name of the virtio-serial port the host opens (`-device virtserialport,name=agent`).
const PORT_NAME: &str = "agent";
/// The container's block device.
const DISK: &str = "/dev/vda";

type Error = Box<dyn std::error::Error + Send + Sync>;

fn log(msg: &str) {
    eprintln!("nodeless-guest: {msg}");
}

fn main() {
    if let Err(e) = run() {
        log(&format!("fatal: {e}"));
    }
    power_off();
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
    let port = wait_for(Duration::from_secs(10), find_port)
        .ok_or("no virtio-serial port named 'agent' (virtio_console loaded?)")?;
    let chan = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .map_err(|e| format!("opening {}: {e}", port.display()))?;
    let out = Out(Arc::new(Mutex::new(chan.try_clone()?)));
    let mut input = chan;

    // The root filesystem is mounted while the host connects.
    let mounted = mount_container();
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
        out.send(&Frame::Exit(0, 127));
        std::thread::sleep(Duration::from_millis(300));
        return Err(e);
    }
    out.send(&Frame::Ready);

    let agent = Agent {
        out: out.clone(),
        procs: Arc::new(Mutex::new(HashMap::new())),
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

/// Erofs (read-only) under an overlay whose upper layer is a tmpfs, plus the container's
/// /proc, /sys (read-only), a minimal /dev and /dev/shm. The container never sees this
/// initramfs's /dev (which has the disk and the channel).
fn mount_container() -> Result<(), Error> {
    wait_for(Duration::from_secs(10), || {
        Path::new(DISK).exists().then_some(())
    })
    .ok_or("no /dev/vda (virtio_blk loaded? disk attached?)")?;
    mount_fs(DISK, "/lower", "erofs", MountFlags::RDONLY, "")?;
    mount_fs("tmpfs", "/rw", "tmpfs", MountFlags::empty(), "mode=0755")?;
    std::fs::create_dir_all("/rw/upper")?;
    std::fs::create_dir_all("/rw/work")?;
    mount_fs(
        "overlay",
        ROOT,
        "overlay",
        MountFlags::empty(),
        "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work",
    )?;
    let nosuid = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    mount_fs("proc", &format!("{ROOT}/proc"), "proc", nosuid, "")?;
    mount_fs(
        "sysfs",
        &format!("{ROOT}/sys"),
        "sysfs",
        nosuid | MountFlags::RDONLY,
        "",
    )?;
    let dev = format!("{ROOT}/dev");
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
    mount_fs("tmpfs", &format!("{dev}/shm"), "tmpfs", nosuid, "mode=1777")?;
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

/// The channel's writing half, shared by every thread; one frame per lock.
#[derive(Clone)]
struct Out(Arc<Mutex<File>>);

impl Out {
    fn send(&self, f: &Frame) {
        let mut w = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_to(&mut *w) {
            log(&format!("sending to the host: {e}"));
        }
    }
}

struct Proc {
    pid: u32,
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    /// The terminal's master side, for a process started with `tty`.
    pty: Option<File>,
    /// Exit code once reaped.
    code: Option<i32>,
    /// Output pipes still open.
    open_streams: u8,
    /// Exit reported to the host.
    reported: bool,
}

#[derive(Clone)]
struct Agent {
    out: Out,
    procs: Arc<Mutex<HashMap<u32, Proc>>>,
}

impl Agent {
    fn table(&self) -> MutexGuard<'_, HashMap<u32, Proc>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, f: Frame) {
        match f {
            Frame::Run(id, spec) => self.spawn(id, spec),
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
                let pid = self
                    .table()
                    .get(&id)
                    .filter(|p| p.code.is_none())
                    .map(|p| p.pid);
                if let (Some(pid), Some(sig)) = (pid, rustix::process::Signal::from_named_raw(sig))
                    && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
                {
                    let _ = rustix::process::kill_process(pid, sig);
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
            other => log(&format!("unexpected frame from the host: {other:?}")),
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
            match open_pty() {
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
        let (uid, gid, cwd) = (spec.uid, spec.gid, spec.cwd.clone());
        let cwd = if cwd.is_empty() { "/".to_owned() } else { cwd };
        #[allow(unsafe_code)]
        // SAFETY: the closure runs in the forked child before exec and only makes system calls
        // through rustix; it allocates nothing and takes no locks. `unshare(CLONE_NEWNS)` only
        // gives the (single-threaded) child its own mount table, which the child then owns.
        unsafe {
            cmd.pre_exec(move || {
                if tty {
                    // A session of its own with the terminal as its controlling tty.
                    rustix::process::setsid()?;
                    rustix::process::ioctl_tiocsctty(rustix::stdio::stdin())?;
                }
                enter_container(&cwd)?;
                let gid = rustix::process::Gid::from_raw(gid);
                rustix::thread::set_thread_groups(&[gid])?;
                rustix::thread::set_thread_res_gid(gid, gid, gid)?;
                let uid = rustix::process::Uid::from_raw(uid);
                rustix::thread::set_thread_res_uid(uid, uid, uid)?;
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                self.fail(id, format!("starting {program}: {e}"));
                return;
            }
        };
        // The slave ends now live only in the child.
        drop(cmd);
        let pid = child.id();
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
                open_streams: if tty { 1 } else { 2 },
                reported: false,
            },
        );
        self.out.send(&Frame::Started(id, pid));
        if let Some(master) = pty {
            match master.try_clone() {
                Ok(r) => self.pump(id, r, false),
                Err(e) => log(&format!("terminal of {id}: {e}")),
            }
            if let Some(p) = table.get_mut(&id) {
                p.pty = Some(master);
            }
        }
        if let Some(r) = child.stdout.take() {
            self.pump(id, r, false);
        }
        if let Some(r) = child.stderr.take() {
            self.pump(id, r, true);
        }
        // The child is reaped by `reap`, never through `child`.
        drop(child);
    }

    /// Reports that `id` could not start.
    fn fail(&self, id: u32, msg: String) {
        self.out.send(&Frame::Error(id, msg));
        self.out.send(&Frame::Exit(id, 127));
        if id == 0 {
            power_off_soon();
        }
    }

    fn pump(&self, id: u32, mut r: impl Read + Send + 'static, stderr: bool) {
        let agent = self.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let d = buf[..n].to_vec();
                        agent.out.send(&if stderr {
                            Frame::Stderr(id, d)
                        } else {
                            Frame::Stdout(id, d)
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
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
        let Some(code) = p.code else { return };
        if p.open_streams > 0 || p.reported {
            return;
        }
        p.reported = true;
        p.stdin = None;
        p.pty = None;
        self.out.send(&Frame::Exit(id, code));
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

/// A terminal from the container's own devpts instance: (master, slave). The slave is
/// `/dev/pts/N` inside the container.
fn open_pty() -> std::io::Result<(File, File)> {
    use rustix::fs::{Mode, OFlags};
    use rustix::pty::OpenptFlags;
    let master = rustix::fs::open(
        format!("{ROOT}/dev/pts/ptmx").as_str(),
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
/// device cgroup here to make it harmless) and without `NET_RAW` (no network yet).
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
fn enter_container(cwd: &str) -> std::io::Result<()> {
    use rustix::mount::{MountPropagationFlags, mount_change, mount_move};
    // SAFETY: called only between fork and exec in a single-threaded child (see `spawn`).
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)? };
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )?;
    rustix::process::chdir(ROOT)?;
    mount_move(".", "/")?;
    rustix::process::chroot(".")?;
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
