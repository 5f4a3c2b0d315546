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
use sandbox::spec::{self, ContainerConfig, Resources, SandboxContext};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where images, containers and runtime state live
    /// [default: /var/lib/nodeless as root, else ~/.local/share/nodeless].
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
    /// Run one container from IMAGE, like `docker run`.
    Run(Box<RunArgs>),
    /// List the images on this host.
    Images,
    /// Evict least recently used images above --limit (bytes, e.g. 10Gi).
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
    /// CPU limit (e.g. 0.5, 250m).
    #[arg(long)]
    cpu: Option<String>,
    /// Memory limit (e.g. 64Mi, 512m, 1G).
    #[arg(long)]
    memory: Option<String>,
    /// Keep stdin open and attach it.
    #[arg(short, long)]
    interactive: bool,
    /// Hand this terminal to the container.
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
    /// Seconds between SIGTERM and SIGKILL on Ctrl-C.
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

fn default_data_dir() -> PathBuf {
    if rustix_is_root() {
        return PathBuf::from("/var/lib/nodeless");
    }
    match std::env::var_os("XDG_DATA_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("nodeless"),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".local/share/nodeless"),
    }
}

fn rustix_is_root() -> bool {
    // /proc/self/status has "Uid: real effective ..."; no libc call needed.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
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
    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
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
            let limit =
                spec::parse_memory(&limit).context("--limit must be a size such as 10Gi")?;
            let store = ImageStore::open(
                data_dir.join("images"),
                StoreOptions {
                    insecure_registries: args.insecure_registries,
                    cache_limit_bytes: Some(limit),
                },
            )?;
            let report = store.gc(&Default::default())?;
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
        resources: Resources {
            cpu_millis: r
                .cpu
                .as_deref()
                .map(|c| spec::parse_cpu(c).context("--cpu wants e.g. 0.5 or 500m"))
                .transpose()?,
            memory_bytes: r
                .memory
                .as_deref()
                .map(|m| spec::parse_memory(m).context("--memory wants e.g. 64Mi"))
                .transpose()?,
        },
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

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Stream, Vec<u8>)>();
    let io = if r.tty {
        Io::Inherit
    } else if r.interactive {
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
    let exit = tokio::select! {
        res = &mut waiter => res??,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("stopping {id} (SIGTERM, SIGKILL after {}s)", r.grace);
            let _ = rt.kill(&id, 15).await;
            match tokio::time::timeout(std::time::Duration::from_secs(r.grace), &mut waiter).await {
                Ok(res) => res??,
                Err(_) => {
                    let _ = rt.kill(&id, 9).await;
                    waiter.await??
                }
            }
        }
    };
    let _ = printer.await;
    if exit.oom_killed {
        eprintln!("container {id} was OOMKilled");
    }
    if !r.keep {
        container::remove(data_dir, &id)?;
    }
    Ok(exit.code)
}
