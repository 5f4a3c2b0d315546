//! `nodeless sandbox run --runtime microvm`: one container in its own QEMU micro-VM
//! ([`sandbox::microvm::MicroVm`]), the way `run` does it with the other runtimes: the
//! container's stdout and stderr on ours as its lines come (followed from the VM's CRI log
//! file), its exit code as ours, Ctrl-C (and SIGTERM or SIGHUP) as with the other runtimes
//! (SIGINT to the container's main process, the VM stopped `--grace` after the first at the
//! latest; the exit code is the container's, 137 when the VM had to be stopped, 130 when the
//! run was interrupted before the container ran). `--cpu`/`--memory` size the VM as a pod of
//! that size is sized ([`sandbox::microvm::pod::vm_size`]); `--memory` also limits the
//! container inside.
//!
//! Files: the VM's own (initramfs, channel socket, console and QEMU logs) under
//! `<container dir>/microvm`, removed with the VM; the container's log at
//! [`container::log_path`]`(dir, 0)` like the other runtimes (kept with `--keep`, for
//! `nodeless sandbox logs`); the image's erofs disk in the host-wide cache
//! `<data dir>/microvm/disks/<manifest digest>.erofs` the node agent uses too.
//!
//! With `-i` our stdin is fed to the container and with `-t` it runs on a terminal (ours in raw
//! mode while it runs, its size followed): the VM is booted attached
//! ([`MicroVm::boot_attached`]) and the output comes from its session instead of the log file.

use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use sandbox::container;
use sandbox::image::{Image, ImageStore};
use sandbox::microvm::pod::{DEFAULT_MEMORY_MIB, vm_size};
use sandbox::microvm::{self, ContainerSpec, ExecEvent, MicroVm, VmAssets, VmConfig};
use sandbox::plan::PodSize;
use sandbox::spec::ContainerConfig;
use tokio::signal::unix::{SignalKind, signal};

use crate::sandbox_cmd::Signals;

/// How often the container's log file is looked at for new lines.
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// Exit code after a Ctrl-C that ended the run before the container could report its own
/// (128 + SIGINT, as a shell reports it).
const INTERRUPTED: i32 = 130;

/// Exit code when the container was stopped at the end of `--grace` (128 + SIGKILL, as docker
/// reports a container killed after its stop timeout).
const KILLED: i32 = 137;

/// Checks, before anything is pulled, that a micro-VM run can go (QEMU, `mkfs.erofs`, the boot
/// assets). Returns the assets.
pub fn prerequisites() -> anyhow::Result<VmAssets> {
    microvm::prerequisites().context("the micro-VM runtime cannot run here")
}

/// One micro-VM run: what `run_container` resolved from the command line.
#[derive(Debug)]
pub struct VmRun<'a> {
    pub data_dir: &'a Path,
    pub store: &'a ImageStore,
    pub image: &'a Image,
    pub id: &'a str,
    pub config: &'a ContainerConfig,
    pub hostname: &'a str,
    pub assets: VmAssets,
    /// Between the first Ctrl-C (SIGINT to the container) and stopping the VM.
    pub grace: Duration,
    /// Keep the container's directory (its log) afterwards.
    pub keep: bool,
    /// `-i`: our stdin to the container's.
    pub interactive: bool,
    /// `-t`: the container on a terminal.
    pub tty: bool,
}

/// Runs the container to its end; returns the exit code the command should end with.
pub async fn run(r: VmRun<'_>) -> anyhow::Result<i32> {
    // Registered first: a Ctrl-C (or SIGTERM, SIGHUP) while the disk is made or the VM boots
    // is ours too.
    let mut signals = Signals::new()?;
    let spec = container_spec(&r)?;
    let cdir = container::dir(r.data_dir, r.id);
    let log_path = container::log_path(&cdir, 0);
    if let Some(parent) = log_path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut vmc = VmConfig::new(r.assets.clone(), cdir.join("microvm"));
    vmc.log_path = log_path.clone();
    vmc.hostname = r.hostname.to_owned();
    (vmc.memory_mib, vmc.cpus) = size(r.config);
    tracing::debug!(id = %r.id, memory_mib = vmc.memory_mib, cpus = vmc.cpus, "booting a micro-VM");

    // Not interruptible: mkfs.erofs (and the overlay mount a layered image needs) must finish
    // or fail on their own; a Ctrl-C meanwhile is seen right after.
    let disk = match microvm::pod::disk_for(r.data_dir, r.store, r.image).await {
        Ok(d) => d,
        Err(e) => {
            cleanup(&r, &cdir);
            return Err(anyhow::Error::new(e)
                .context(format!("making the micro-VM disk of {}", r.image.name)));
        }
    };
    if r.interactive || r.tty {
        return run_attached(&r, &cdir, &vmc, &disk, &spec, signals).await;
    }
    let booted = tokio::select! {
        biased;
        _ = signals.recv() => None,
        vm = MicroVm::boot(&vmc, &disk, &spec) => Some(vm.context("starting the micro-VM")),
    };
    // A Ctrl-C during boot drops the boot: QEMU is killed with its handle.
    let vm = match booted {
        None => {
            cleanup(&r, &cdir);
            return Ok(INTERRUPTED);
        }
        Some(Err(e)) => {
            cleanup(&r, &cdir);
            return Err(e);
        }
        Some(Ok(vm)) => vm,
    };

    let mut follow = Follow {
        path: log_path,
        offset: 0,
    };
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    let ended = loop {
        tokio::select! {
            biased;
            _ = signals.recv() => break None,
            res = vm.wait() => break Some(res),
            _ = tick.tick() => follow.pump(false),
        }
    };
    let code = match ended {
        Some(Ok(code)) => Some(code),
        Some(Err(e)) => {
            // A terminal's Ctrl-C reaches QEMU too (it is in our process group) and may end the
            // VM before our own handler runs: that is an interrupt, not a failure.
            if tokio::time::timeout(Duration::from_millis(200), signals.recv())
                .await
                .is_ok()
            {
                None
            } else {
                follow.pump(true);
                let console = std::fs::read_to_string(vm.console_path()).unwrap_or_default();
                let lines: Vec<&str> = console.lines().collect();
                let tail = lines[lines.len().saturating_sub(20)..].join("\n");
                let _ = vm.destroy().await;
                cleanup(&r, &cdir);
                return Err(anyhow::Error::new(e).context(format!(
                    "the micro-VM of {} stopped before the container ended; guest console:\n{tail}",
                    r.id
                )));
            }
        }
        None => None,
    };
    let code = match code {
        Some(code) => code,
        None => {
            eprintln!(
                "stopping {} (SIGINT, the micro-VM stopped after {}s)",
                r.id,
                r.grace.as_secs()
            );
            let _ = vm.kill(2).await;
            let deadline = tokio::time::sleep(r.grace);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    biased;
                    _ = signals.recv() => {
                        let _ = vm.kill(2).await;
                    }
                    _ = &mut deadline => break KILLED,
                    res = vm.wait() => break res.unwrap_or(INTERRUPTED),
                    _ = tick.tick() => follow.pump(false),
                }
            }
        }
    };
    follow.pump(true);
    // A container that could not start (no such program...) was reported by the sandbox's
    // warning already; it ends with 127.
    if vm.oom_killed() {
        eprintln!("container {} was OOMKilled", r.id);
    }
    let times = vm.boot_times();
    tracing::debug!(
        to_ready = ?times.to_ready,
        to_first_output = ?times.to_first_output,
        "micro-VM boot"
    );
    if let Err(e) = vm.destroy().await {
        tracing::warn!(error = %e, "removing the micro-VM's files");
    }
    cleanup(&r, &cdir);
    Ok(code)
}

/// `-i`/`-t`: the container attached to our stdin/stdout/stderr (or our terminal, raw) through
/// the VM's session; its output comes from there as it is written.
async fn run_attached(
    r: &VmRun<'_>,
    cdir: &Path,
    vmc: &VmConfig,
    disk: &Path,
    spec: &ContainerSpec,
    mut signals: Signals,
) -> anyhow::Result<i32> {
    let booted = tokio::select! {
        biased;
        _ = signals.recv() => None,
        vm = MicroVm::boot_attached(vmc, disk, spec, r.interactive, r.tty) => {
            Some(vm.context("starting the micro-VM"))
        }
    };
    let (vm, session) = match booted {
        None => {
            cleanup(r, cdir);
            return Ok(INTERRUPTED);
        }
        Some(Err(e)) => {
            cleanup(r, cdir);
            return Err(e);
        }
        Some(Ok(b)) => b,
    };
    let (input, mut events) = session.split();
    // Our terminal, raw while the container has it (Ctrl-C then reaches the container).
    let raw = if r.tty { RawTerminal::enter() } else { None };
    let mut winch = signal(SignalKind::window_change()).context("handling SIGWINCH")?;
    if raw.is_some()
        && let Some((rows, cols)) = terminal_size()
    {
        let _ = input.resize(rows, cols).await;
    }
    // Our stdin, read on a thread of its own (a blocking read), fed to the container; its end
    // closes the container's stdin.
    let feeder = r.interactive.then(|| {
        let input = input.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        tokio::spawn(async move {
            while let Some(d) = rx.recv().await {
                if input.write_stdin(&d).await.is_err() {
                    return;
                }
            }
            let _ = input.close_stdin().await;
        })
    });
    let mut interrupted = false;
    // Armed by a Ctrl-C: the VM is stopped `grace` after it.
    let stop = tokio::time::sleep(Duration::from_secs(365 * 86400));
    tokio::pin!(stop);
    let mut lost = None;
    let code = loop {
        tokio::select! {
            biased;
            _ = signals.recv() => {
                if !interrupted {
                    eprintln!(
                        "stopping {} (SIGINT, the micro-VM stopped after {}s)",
                        r.id,
                        r.grace.as_secs()
                    );
                    stop.as_mut().reset(tokio::time::Instant::now() + r.grace);
                }
                interrupted = true;
                let _ = vm.kill(2).await;
            }
            _ = &mut stop, if interrupted => break KILLED,
            _ = winch.recv() => {
                if raw.is_some() && let Some((rows, cols)) = terminal_size() {
                    let _ = input.resize(rows, cols).await;
                }
            }
            e = events.recv() => match e {
                Some(ExecEvent::Stdout(d)) => write_out(&mut std::io::stdout(), &d),
                Some(ExecEvent::Stderr(d)) => write_out(&mut std::io::stderr(), &d),
                // Reported by the sandbox's warning; an Exit with 127 follows.
                Some(ExecEvent::Error(_)) => {}
                Some(ExecEvent::Exit(code)) => break code,
                Some(ExecEvent::Lost(why)) => {
                    lost = Some(why);
                    break INTERRUPTED;
                }
                None => break INTERRUPTED,
            },
        }
    };
    drop(raw);
    if let Some(f) = feeder {
        f.abort();
    }
    if vm.oom_killed() {
        eprintln!("container {} was OOMKilled", r.id);
    }
    if let Err(e) = vm.destroy().await {
        tracing::warn!(error = %e, "removing the micro-VM's files");
    }
    cleanup(r, cdir);
    match lost {
        // A terminal's Ctrl-C (without -t) reaches QEMU too and may end the VM first.
        Some(_) if interrupted => Ok(INTERRUPTED),
        Some(why)
            if tokio::time::timeout(Duration::from_millis(200), signals.recv())
                .await
                .is_err() =>
        {
            anyhow::bail!(
                "the micro-VM of {} stopped before the container ended: {why}",
                r.id
            )
        }
        _ => Ok(code),
    }
}

fn write_out(w: &mut dyn std::io::Write, d: &[u8]) {
    if let Err(e) = w.write_all(d).and_then(|()| w.flush()) {
        tracing::debug!(error = %e, "writing the container's output");
    }
}

/// Our terminal in raw mode (`stty raw -echo`), its settings restored on drop.
pub(crate) struct RawTerminal {
    saved: String,
}

impl RawTerminal {
    /// `None` when stdin is no terminal (or `stty` failed): the output is passed through as is.
    pub(crate) fn enter() -> Option<RawTerminal> {
        Self::enter_with(&["raw", "-echo"])
    }

    /// Raw but for Ctrl-C, which still sends us SIGINT (Ctrl-\\ and Ctrl-Z are plain keys).
    pub(crate) fn enter_keeping_ctrl_c() -> Option<RawTerminal> {
        Self::enter_with(&["raw", "-echo", "isig", "quit", "undef", "susp", "undef"])
    }

    fn enter_with(settings: &[&str]) -> Option<RawTerminal> {
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return None;
        }
        let saved = stty(&["-g"])?;
        stty(settings)?;
        Some(RawTerminal {
            saved: saved.trim().to_owned(),
        })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if stty(&[&self.saved]).is_none() {
            tracing::warn!("could not restore the terminal; run `stty sane`");
        }
    }
}

/// Runs `stty` on our stdin (the terminal); its output, `None` on failure.
fn stty(args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("stty")
        .args(args)
        .stdin(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Our terminal's (rows, columns).
pub(crate) fn terminal_size() -> Option<(u16, u16)> {
    let s = stty(&["size"])?;
    let mut it = s.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(rows)), Some(Ok(cols))) => Some((rows, cols)),
        _ => None,
    }
}

/// Removes the container's directory unless `--keep` (then only the VM's own files went).
fn cleanup(r: &VmRun<'_>, cdir: &Path) {
    let _ = std::fs::remove_dir_all(cdir.join("microvm"));
    if !r.keep
        && let Err(e) = std::fs::remove_dir_all(cdir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, dir = %cdir.display(), "removing the container's directory");
    }
}

/// The VM's (memory MiB, vCPUs): a pod of `--cpu` x `--memory` (a missing one defaults to one
/// vCPU or [`DEFAULT_MEMORY_MIB`]).
fn size(c: &ContainerConfig) -> (u32, u32) {
    let (cpu, mem) = (c.resources.cpu_millis, c.resources.memory_bytes);
    if cpu.is_none() && mem.is_none() {
        return vm_size(None);
    }
    vm_size(Some(PodSize {
        cpu_millis: cpu.unwrap_or(1000),
        memory_bytes: mem.unwrap_or(u64::from(DEFAULT_MEMORY_MIB) << 20),
    }))
}

/// The process the VM runs: argv, environment, cwd and user resolved as for the other
/// runtimes (image config, then the command line).
fn container_spec(r: &VmRun<'_>) -> anyhow::Result<ContainerSpec> {
    // With -t, TERM as the other runtimes set it for a terminal.
    let config = ContainerConfig {
        tty: r.tty,
        ..r.config.clone()
    };
    Ok(microvm::pod::process_of(
        r.store, r.image, &config, r.hostname,
    )?)
}

/// Prints what the container wrote to its CRI log since last time.
pub(crate) struct Follow {
    path: PathBuf,
    offset: u64,
}

impl Follow {
    /// Follows the log at `path` from its start.
    pub(crate) fn new(path: PathBuf) -> Self {
        Follow { path, offset: 0 }
    }

    /// Prints the new complete records (with `all`, whatever is there: the container ended).
    pub(crate) fn pump(&mut self, all: bool) {
        if let Err(e) = self.try_pump(all) {
            tracing::debug!(error = %e, "following the container's log");
        }
    }

    fn try_pump(&mut self, all: bool) -> anyhow::Result<()> {
        let mut f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        f.seek(std::io::SeekFrom::Start(self.offset))?;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        // Only complete records; a partly written last one waits for the next round.
        let end = if all {
            buf.len()
        } else {
            buf.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1)
        };
        if end > 0 {
            self.offset += end as u64;
            crate::sandbox_cmd::print_records(&buf[..end], false)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandbox::spec::Resources;

    fn sized(cpu: Option<u64>, mem: Option<u64>) -> (u32, u32) {
        size(&ContainerConfig {
            resources: Resources {
                cpu_millis: cpu,
                memory_bytes: mem,
            },
            ..Default::default()
        })
    }

    #[test]
    fn cpu_and_memory_size_the_vm() {
        assert_eq!(sized(None, None), vm_size(None));
        assert_eq!(sized(Some(2000), Some(512 << 20)), (512, 2));
        assert_eq!(sized(Some(500), None), (DEFAULT_MEMORY_MIB, 1));
        assert_eq!(sized(None, Some(1 << 30)), (1024, 1));
        // Fractions round up; the VM never gets less than the kernel needs.
        assert_eq!(sized(Some(1500), Some(10 << 20)).1, 2);
        assert!(sized(Some(1500), Some(10 << 20)).0 >= sandbox::microvm::pod::MIN_MEMORY_MIB);
    }
}
