//! `nodeless sandbox ...`: the data plane's engine by hand, without the API server.
//! `pull` fetches an image with progress, `run` runs one container the way `docker run` does
//! (output, exit code, Ctrl-C), `images`, `gc` and `logs` inspect what is on this host.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sandbox::container::{self, Io};
use sandbox::image::{Auth, ImageStore, PullEvent, PullOptions, Source, StoreOptions};
use sandbox::logs::Stream;
use sandbox::runtime::{self, RuntimeChoice};
use sandbox::shim;
use sandbox::spec::{self, ContainerConfig, Resources, SandboxContext};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where images, containers and runtime state live
    /// [default: /var/lib/nodeless as root, else $XDG_DATA_HOME/nodeless or
    /// ~/.local/share/nodeless].
    #[arg(long, global = true, env = "NODELESS_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A registry (host or host:port) to reach over plain HTTP (loopback always is). Repeatable.
    #[arg(long = "insecure-registry", global = true)]
    insecure_registries: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Pull an image (registry reference, oci:DIR[:TAG] or oci-archive:FILE[:TAG]).
    Pull {
        image: String,
        #[command(flatten)]
        auth: AuthArgs,
    },
    /// Run one container from IMAGE, like `docker run`: its output on ours, its exit code as
    /// ours. Ctrl-C (SIGINT to this command; SIGTERM and SIGHUP alike) is forwarded to the
    /// container's main process as SIGINT, as docker does; if it has not ended --grace seconds
    /// later it is killed; the exit code is then the container's own (130 when SIGINT ended it,
    /// 137 when it was killed). The same with -t (our terminal is raw but for Ctrl-C) and on
    /// every runtime; with -it Ctrl-C is a key
    /// typed into the container's terminal, whose line discipline interrupts its foreground
    /// process group, as with `docker run -it`.
    Run(Box<RunArgs>),
    /// List the images on this host.
    Images,
    /// Evict least recently used images above --limit (bytes, a Kubernetes quantity, e.g. 10Gi).
    Gc {
        #[arg(long)]
        limit: String,
    },
    /// Print the logs of a kept container (`run --keep`).
    Logs {
        id: String,
        /// Prefix lines with their timestamps.
        #[arg(long)]
        timestamps: bool,
        /// Keep printing new output until the container has exited.
        #[arg(short, long)]
        follow: bool,
    },
    /// Internal: the per-container shim the node agent starts (see `sandbox::shim`).
    #[command(hide = true)]
    Shim {
        /// The container's directory (its bundle and `shim.json`).
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct AuthArgs {
    /// Registry user name (basic auth; the token flow is negotiated from it).
    #[arg(long, env = "NODELESS_REGISTRY_USER")]
    username: Option<String>,
    /// Registry password.
    #[arg(long, env = "NODELESS_REGISTRY_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    image: String,
    /// auto, gvisor, container (crun) or microvm.
    #[arg(long, default_value = "auto")]
    runtime: String,
    /// CPU limit, a Kubernetes quantity (e.g. 0.5, 250m); 0 sets none.
    #[arg(long)]
    cpu: Option<String>,
    /// Memory limit in bytes, a Kubernetes quantity (e.g. 64Mi, 1G; `m` is milli, as in
    /// Kubernetes, not docker's MiB); 0 sets none.
    #[arg(long)]
    memory: Option<String>,
    /// Keep stdin open and attach it (with -t: type it into the container's terminal).
    #[arg(short, long)]
    interactive: bool,
    /// Give the container a terminal (a pseudo-terminal of its own as stdin, stdout and
    /// stderr, sized as ours; ours is raw while it runs), as `docker run -t`.
    #[arg(short, long)]
    tty: bool,
    /// Environment variable K=V. Repeatable.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short, long)]
    workdir: Option<String>,
    /// User id[:group id] to run as.
    #[arg(short, long)]
    user: Option<String>,
    /// Host name (default: the container id).
    #[arg(long)]
    hostname: Option<String>,
    /// Container id (default: generated).
    #[arg(long)]
    name: Option<String>,
    /// Keep the container's directory (logs, writable layer) after it exits.
    #[arg(long)]
    keep: bool,
    /// Seconds between the first Ctrl-C (SIGINT to the container) and SIGKILL.
    #[arg(long, default_value_t = 10)]
    grace: u64,
    /// Replace the image's entrypoint with this program (like docker --entrypoint).
    #[arg(long)]
    entrypoint: Option<String>,
    #[command(flatten)]
    auth: AuthArgs,
    /// The command (replaces the image's Cmd).
    #[arg(last = true)]
    cmd: Vec<String>,
}

/// A flag's Kubernetes quantity (`spec::parse_cpu` or `spec::parse_memory`), or an error that
/// names the flag, the value, why it is refused and an example.
fn quantity(
    flag: &str,
    value: &str,
    parse: fn(&str) -> Result<u64, String>,
    example: &str,
) -> anyhow::Result<u64> {
    parse(value).map_err(|e| {
        anyhow::anyhow!("{flag} {value:?}: {e} (a Kubernetes quantity such as {example})")
    })
}

/// A limit flag: none when absent or zero.
fn limit(
    flag: &str,
    value: Option<&str>,
    parse: fn(&str) -> Result<u64, String>,
    example: &str,
) -> anyhow::Result<Option<u64>> {
    value
        .map(|v| quantity(flag, v, parse, example))
        .transpose()
        .map(|v| v.filter(|v| *v > 0))
}

fn auth(a: &AuthArgs) -> Auth {
    match (&a.username, &a.password) {
        (Some(u), Some(p)) => Auth::Basic {
            username: u.clone(),
            password: p.clone(),
        },
        _ => Auth::Anonymous,
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if let Command::Shim { dir } = &args.command {
        return sandbox::shim::main(dir)
            .await
            .with_context(|| format!("shim for {}", dir.display()));
    }
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let store = ImageStore::open(
        data_dir.join("images"),
        StoreOptions {
            insecure_registries: args.insecure_registries.clone(),
            cache_limit_bytes: None,
        },
    )?;
    match args.command {
        Command::Pull { image, auth: a } => {
            let source: Source = image.parse()?;
            let opts = PullOptions {
                auth: auth(&a),
                progress: Some(progress_printer()),
            };
            let img = store.pull(&source, &opts).await?;
            println!("{} {}", img.name, img.manifest_digest);
            Ok(())
        }
        Command::Images => {
            let mut list = store.list()?;
            list.sort();
            for (name, digest, last_used) in list {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                println!(
                    "{name}\t{digest}\tused {}s ago",
                    now.saturating_sub(last_used)
                );
            }
            println!("total unpacked size: {} bytes", store.size()?);
            Ok(())
        }
        Command::Gc { limit } => {
            let limit = quantity("--limit", &limit, spec::parse_memory, "10Gi")?;
            let store = ImageStore::open(
                data_dir.join("images"),
                StoreOptions {
                    insecure_registries: args.insecure_registries,
                    cache_limit_bytes: Some(limit),
                },
            )?;
            // Images of the pods recorded under the data dir (running or not yet removed) stay;
            // layers a mounted root filesystem uses stay whatever this set says.
            let in_use: std::collections::HashSet<String> = sandbox::pod::list(&data_dir)
                .iter()
                .flat_map(|r| r.plan.init_containers.iter().chain(&r.plan.containers))
                .filter_map(|c| c.image.parse::<Source>().ok())
                .map(|s| s.to_string())
                .collect();
            let report = store.gc(&in_use)?;
            for i in &report.evicted_images {
                println!("evicted {i}");
            }
            println!(
                "{} layers removed, {} bytes left",
                report.removed_layers.len(),
                report.size_after
            );
            Ok(())
        }
        Command::Logs {
            id,
            timestamps,
            follow,
        } => print_logs(&data_dir, &id, timestamps, follow).await,
        Command::Run(r) => {
            let code = run_container(&data_dir, &store, *r).await?;
            std::process::exit(code);
        }
        Command::Shim { .. } => Ok(()),
    }
}

/// Prints CRI log records: stdout's to stdout, stderr's to stderr.
pub(crate) fn print_records(raw: &[u8], timestamps: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for line in raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let Some(rec) = sandbox::logs::parse_line(line) else {
            continue;
        };
        let w: &mut dyn Write = if rec.stream == "stderr" {
            &mut err
        } else {
            &mut out
        };
        if timestamps {
            write!(w, "{} ", rec.time)?;
        }
        w.write_all(&rec.text)?;
        if !rec.partial {
            w.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Prints every run's log of container `id`; with `follow`, keeps printing what the current run
/// (or a restart) writes until the container is terminated.
async fn print_logs(
    data_dir: &Path,
    id: &str,
    timestamps: bool,
    follow: bool,
) -> anyhow::Result<()> {
    let dir = container::dir(data_dir, id);
    let mut n = 0;
    let mut offset = 0usize;
    loop {
        let path = container::log_path(&dir, n);
        let Ok(raw) = std::fs::read(&path) else {
            if n == 0 && !follow {
                anyhow::bail!("no logs for {id} (was it run with --keep?)");
            }
            if !follow {
                return Ok(());
            }
            let done = matches!(
                container::read_state(data_dir, id).map(|s| s.status),
                Some(container::Status::Terminated { .. }) | None
            );
            if done && n > 0 {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            continue;
        };
        // Only complete records; a partly written last line waits for the next round.
        let end = raw.iter().rposition(|b| *b == b'\n').map_or(0, |p| p + 1);
        if end > offset {
            print_records(&raw[offset..end], timestamps)?;
            offset = end;
        }
        if container::log_path(&dir, n + 1).exists() {
            n += 1;
            offset = 0;
            continue;
        }
        if !follow {
            return Ok(());
        }
        let state = container::read_state(data_dir, id);
        if matches!(
            state.map(|s| s.status),
            Some(container::Status::Terminated { .. }) | None
        ) {
            let raw = std::fs::read(&path).unwrap_or_default();
            if raw.len() <= offset {
                return Ok(());
            }
            continue;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A progress bar on stderr (indicatif): bytes downloaded over the image's compressed size,
/// with layers done in the message.
fn progress_printer() -> sandbox::image::store::ProgressFn {
    #[derive(Default)]
    struct P {
        layers: usize,
        done: usize,
        bytes: std::collections::HashMap<String, u64>,
        sizes: std::collections::HashMap<String, u64>,
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    // Ticking on its own: a pull that waits for another process's pull of the same image
    // does not look stuck.
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let state = Arc::new(Mutex::new(P::default()));
    Arc::new(move |e: &PullEvent| {
        let mut p = state.lock().unwrap_or_else(|e| e.into_inner());
        match e {
            PullEvent::Resolved { manifest, layers } => {
                p.layers = layers.len();
                p.sizes = layers.iter().map(|(d, s)| (d.to_string(), *s)).collect();
                bar.set_length(layers.iter().map(|l| l.1).sum());
                bar.println(format!("manifest {manifest}: {} layers", layers.len()));
            }
            PullEvent::LayerPresent(d) | PullEvent::LayerDone(d) => {
                p.done += 1;
                let size = p.sizes.get(&d.to_string()).copied().unwrap_or(0);
                p.bytes.insert(d.to_string(), size);
            }
            PullEvent::LayerProgress { digest, done } => {
                p.bytes.insert(digest.to_string(), *done);
            }
        }
        bar.set_position(p.bytes.values().sum());
        bar.set_message(format!("{}/{} layers", p.done, p.layers));
        if p.layers > 0 && p.done == p.layers {
            bar.finish();
        }
    })
}

async fn run_container(data_dir: &Path, store: &ImageStore, r: RunArgs) -> anyhow::Result<i32> {
    let source: Source = r.image.parse()?;
    let choice: RuntimeChoice = r.runtime.parse()?;
    // Checked before anything is pulled or run.
    let resources = Resources {
        cpu_millis: limit("--cpu", r.cpu.as_deref(), spec::parse_cpu, "250m")?,
        memory_bytes: limit("--memory", r.memory.as_deref(), spec::parse_memory, "64Mi")?,
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kind = runtime::resolve(choice, &cpuinfo);
    // The micro-VM is no OCI runtime: sandbox_vm runs it (checked here, before any pull).
    let (rt, vm_assets): (Option<Arc<dyn runtime::Runtime>>, _) = match kind {
        runtime::RuntimeKind::Microvm => (None, Some(crate::sandbox_vm::prerequisites()?)),
        _ => (Some(Arc::from(runtime::open(kind, data_dir)?)), None),
    };
    let image = store
        .ensure(
            &source,
            &PullOptions {
                auth: auth(&r.auth),
                progress: None,
            },
        )
        .await
        .with_context(|| format!("getting image {}", r.image))?;

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let id = r
        .name
        .clone()
        .unwrap_or_else(|| format!("run-{}-{nanos:x}", std::process::id()));
    let mut env = Vec::new();
    for e in &r.env {
        let (k, v) = e.split_once('=').context("--env wants K=V")?;
        env.push((k.to_owned(), v.to_owned()));
    }
    let (run_as_user, run_as_group) = match &r.user {
        None => (None, None),
        Some(u) => {
            let (a, b) = u
                .split_once(':')
                .map_or((u.as_str(), None), |(a, b)| (a, Some(b)));
            (
                Some(a.parse().context("--user wants uid[:gid]")?),
                b.map(str::parse)
                    .transpose()
                    .context("--user wants uid[:gid]")?,
            )
        }
    };
    let (command, args) = match (&r.entrypoint, r.cmd.is_empty()) {
        (Some(ep), true) => (Some(vec![ep.clone()]), None),
        (Some(ep), false) => (Some(vec![ep.clone()]), Some(r.cmd.clone())),
        (None, true) => (None, None),
        (None, false) => (Some(r.cmd.clone()), Some(vec![])),
    };
    let config = ContainerConfig {
        name: "main".into(),
        command,
        args,
        env,
        working_dir: r.workdir.clone(),
        run_as_user,
        run_as_group,
        tty: false,
        resources,
        ..Default::default()
    };
    let sandbox = SandboxContext {
        hostname: r.hostname.clone().unwrap_or_else(|| id.clone()),
        ..Default::default()
    };
    let rt = match (rt, vm_assets) {
        (Some(rt), _) => rt,
        (None, None) => anyhow::bail!("no runtime for {kind}"),
        (None, Some(assets)) => {
            return crate::sandbox_vm::run(crate::sandbox_vm::VmRun {
                data_dir,
                store,
                image: &image,
                id: &id,
                config: &config,
                hostname: &sandbox.hostname,
                assets,
                grace: std::time::Duration::from_secs(r.grace),
                keep: r.keep,
                interactive: r.interactive,
                tty: r.tty,
            })
            .await;
        }
    };

    if r.tty {
        return run_on_terminal(data_dir, store, rt, &image, &id, config, &sandbox, &r).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Stream, Vec<u8>)>();
    let io = if r.interactive {
        Io::StdinTee(tx)
    } else {
        Io::LoggedTee(tx)
    };
    let printer = tokio::spawn(async move {
        while let Some((stream, bytes)) = rx.recv().await {
            let _ = match stream {
                Stream::Stdout => std::io::stdout()
                    .lock()
                    .write_all(&bytes)
                    .and_then(|()| std::io::stdout().flush()),
                Stream::Stderr => std::io::stderr().lock().write_all(&bytes),
            };
        }
    });
    // Registered before the container starts: a Ctrl-C from then on is the container's.
    let mut signals = Signals::new()?;
    let started = container::start(
        data_dir,
        store,
        rt.clone(),
        container::Launch {
            id: &id,
            image: &image,
            config: &config,
            sandbox: &sandbox,
            io,
            restart_count: 0,
        },
    )
    .await?;
    tracing::debug!(%id, runtime = %kind, "running");
    let mut waiter = tokio::spawn(started.wait());
    let mut stop = Interrupt::new(&id, r.grace);
    let exit = loop {
        tokio::select! {
            res = &mut waiter => break res??,
            _ = signals.recv() => stop.signal(rt.as_ref()).await,
            _ = stop.deadline() => stop.kill(rt.as_ref()).await,
        }
    };
    let _ = printer.await;
    finish(data_dir, &id, r.keep, exit)
}

/// What stops the container: Ctrl-C (SIGINT), and SIGTERM or SIGHUP (our terminal went away)
/// alike, so that the container never outlives the command; on every runtime (the micro-VM's
/// [`crate::sandbox_vm`] too).
pub(crate) struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let on = |kind: SignalKind| signal(kind).context("handling signals");
        Ok(Signals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    /// Resolves at the next of these signals.
    pub(crate) async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
    }
}

/// Ctrl-C (and SIGTERM or SIGHUP, [`Signals`]) as `docker run`'s sig-proxy handles it: each one
/// is forwarded to the container's main process (its PID 1) as SIGINT, not to the other
/// processes, as kubelet and docker signal a container; if it has not ended `grace` after the
/// first, all its processes are killed (SIGKILL). The command then ends with the container's
/// own exit code (130 when SIGINT ended it, 137 when it was killed: a shell as PID 1 without a
/// trap ignores SIGINT, so one waiting for a foreground child, which never gets the signal,
/// ends with 137). The micro-VM does the same ([`crate::sandbox_vm`]).
struct Interrupt<'a> {
    id: &'a str,
    grace: std::time::Duration,
    /// When the container is killed, once a Ctrl-C came.
    kill_at: Option<tokio::time::Instant>,
}

impl<'a> Interrupt<'a> {
    fn new(id: &'a str, grace_secs: u64) -> Self {
        Interrupt {
            id,
            grace: std::time::Duration::from_secs(grace_secs),
            kill_at: None,
        }
    }

    /// A Ctrl-C: SIGINT to the container; the first one arms the kill.
    async fn signal(&mut self, rt: &dyn runtime::Runtime) {
        if self.kill_at.is_none() {
            eprintln!(
                "stopping {} (SIGINT, SIGKILL after {}s)",
                self.id,
                self.grace.as_secs()
            );
            self.kill_at = Some(tokio::time::Instant::now() + self.grace);
        }
        if let Err(e) = rt.kill(self.id, 2).await {
            tracing::debug!(error = %e, "forwarding SIGINT");
        }
    }

    /// Resolves when the grace period after the first Ctrl-C is over (never before one).
    async fn deadline(&self) {
        match self.kill_at {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    async fn kill(&mut self, rt: &dyn runtime::Runtime) {
        eprintln!("killing {} (SIGKILL)", self.id);
        if let Err(e) = rt.kill(self.id, 9).await {
            tracing::debug!(error = %e, "killing the container");
        }
        // Not again: the container's end is waited for.
        self.kill_at = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(3600));
    }
}

/// `-t` with runsc or crun: the container runs under a shim ([`sandbox::shim`]) that holds the
/// master side of the container's terminal, which the runtime allocates as the container's
/// controlling terminal (stdin, stdout and stderr), as the node agent does for a pod's `tty`.
/// Our terminal is put in raw mode and its size is followed; with `-i` our stdin is typed into
/// the container's terminal (its end closes it), Ctrl-C included (its line discipline turns it
/// into SIGINT for the container's foreground process group, as with `docker run -it`); with
/// `-t` alone Ctrl-C is handled as without -t. The terminal's output is printed from the
/// container's log as it comes.
#[allow(clippy::too_many_arguments)]
async fn run_on_terminal(
    data_dir: &Path,
    store: &ImageStore,
    rt: Arc<dyn runtime::Runtime>,
    image: &sandbox::image::Image,
    id: &str,
    config: ContainerConfig,
    sandbox: &SandboxContext,
    r: &RunArgs,
) -> anyhow::Result<i32> {
    use tokio::io::AsyncWriteExt as _;
    let exe = std::env::current_exe().context("locating the nodeless binary for the shim")?;
    shim::set_binary(exe);
    let dir = container::dir(data_dir, id);
    // The container's stdin is the terminal (as docker's -t); without -i nothing is typed.
    shim::StdinSpec {
        stdin: true,
        stdin_once: true,
        tty: true,
    }
    .write(&dir)
    .with_context(|| format!("writing {}", dir.display()))?;
    // Its terminal starts with our terminal's size.
    let stdin_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let size = stdin_is_terminal
        .then(crate::sandbox_vm::terminal_size)
        .flatten();
    if let Some((rows, cols)) = size {
        shim::write_terminal_size(&dir, rows, cols)
            .with_context(|| format!("writing {}", dir.display()))?;
    }
    let config = ContainerConfig {
        tty: true,
        ..config
    };
    let mut signals = Signals::new()?;
    let mut winch = signal(SignalKind::window_change()).context("handling SIGWINCH")?;
    let started = match container::start(
        data_dir,
        store,
        rt.clone(),
        container::Launch {
            id,
            image,
            config: &config,
            sandbox,
            io: Io::Logged,
            restart_count: 0,
        },
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            let _ = container::remove(data_dir, id);
            return Err(e.into());
        }
    };
    let session = match shim::connect(&dir).await {
        Ok(s) => s,
        // The shim removes its socket once the container has ended (and stops accepting just
        // before): a container quicker than us has no terminal left to drive, only its output
        // (in its log) and its exit code.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            tracing::debug!(%id, error = %e, "the container ended before we attached");
            let exit = started.wait().await;
            crate::sandbox_vm::Follow::new(container::log_path(&dir, 0)).pump(true);
            return finish(data_dir, id, r.keep, exit?);
        }
        Err(e) => {
            // No terminal to drive: the container does not run on without us.
            let _ = rt.kill(id, 9).await;
            let _ = started.wait().await;
            let _ = container::remove(data_dir, id);
            return Err(anyhow::Error::new(e).context(format!("attaching to {id}'s terminal")));
        }
    };
    let (_, mut conn) = session.into_split();
    let resize = |size: Option<(u16, u16)>| {
        size.map(|(rows, cols)| {
            let mut p = cols.to_be_bytes().to_vec();
            p.extend(rows.to_be_bytes());
            shim::frame(shim::FRAME_RESIZE, &p)
        })
    };
    if let Some(f) = resize(size) {
        conn.write_all(&f).await?;
    }
    // With -i every key, Ctrl-C included, is typed into the container's terminal, its
    // controlling terminal; with -t alone nothing is typed and Ctrl-C stays a signal (ours,
    // forwarded as without -t).
    let raw = match (stdin_is_terminal, r.interactive) {
        (false, _) => None,
        (true, true) => crate::sandbox_vm::RawTerminal::enter(),
        (true, false) => crate::sandbox_vm::RawTerminal::enter_keeping_ctrl_c(),
    };
    // Our stdin, read on a thread of its own (a blocking read), typed into the terminal.
    let (input_tx, mut input) = tokio::sync::mpsc::channel::<Option<Vec<u8>>>(4);
    if r.interactive {
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match std::io::Read::read(&mut stdin, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if input_tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = input_tx.blocking_send(None);
        });
    }
    let mut follow = crate::sandbox_vm::Follow::new(container::log_path(&dir, 0));
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(20));
    let mut waiter = tokio::spawn(started.wait());
    let mut stop = Interrupt::new(id, r.grace);
    let mut typing = r.interactive;
    let exit = loop {
        tokio::select! {
            res = &mut waiter => break res,
            _ = tick.tick() => follow.pump(false),
            _ = signals.recv() => stop.signal(rt.as_ref()).await,
            _ = stop.deadline() => stop.kill(rt.as_ref()).await,
            _ = winch.recv() => {
                if raw.is_some() && let Some(f) = resize(crate::sandbox_vm::terminal_size()) {
                    let _ = conn.write_all(&f).await;
                }
            }
            d = input.recv(), if typing => {
                let f = match d.flatten() {
                    Some(d) => shim::frame(shim::FRAME_DATA, &d),
                    None => {
                        typing = false;
                        shim::frame(shim::FRAME_CLOSE, &[])
                    }
                };
                if conn.write_all(&f).await.is_err() {
                    typing = false;
                }
            }
        }
    };
    follow.pump(true);
    drop(raw);
    finish(data_dir, id, r.keep, exit??)
}

/// The end of a run: says whether the container was OOMKilled, removes it unless `keep`, and
/// returns its exit code as the command's.
fn finish(data_dir: &Path, id: &str, keep: bool, exit: container::Exit) -> anyhow::Result<i32> {
    if exit.oom_killed {
        eprintln!("container {id} was OOMKilled");
    }
    if !keep {
        container::remove(data_dir, id)?;
    }
    Ok(exit.code)
}
