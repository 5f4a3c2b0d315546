//! The `nodeless` binary: one command with subcommands (`server`, `registry`, `sandbox`, ...),
//! wiring the library crates together. Errors here are `anyhow`; libraries use typed errors.

use clap::{Parser, Subcommand};

use data_dir::default_data_dir;

/// mimalloc instead of glibc's malloc: under a pod burst the API server spent ~25% of its CPU
/// in malloc/free (docs/benchmarks.md, "Scheduling and controllers").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod agent_cmd;
mod data_dir;
mod registry_cmd;
mod sandbox_cmd;
mod sandbox_vm;
mod server_cmd;
mod up_cmd;

/// Serverless Kubernetes on your own machines.
#[derive(Debug, Parser)]
#[command(name = "nodeless", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a whole single-machine cluster in one process: API server, controllers, registry and
    /// a local host agent running serverless pods in sandboxes.
    Up(up_cmd::Args),
    /// Run the Kubernetes API server (with its store, controllers, scheduler and registry).
    Server(server_cmd::Args),
    /// Run a node agent: register this host's node(s) and run the pods bound to them.
    Agent(agent_cmd::Args),
    /// Run or manage the OCI registry.
    Registry(registry_cmd::Args),
    /// Pull images and run pod sandboxes on this host (the data plane's engine, for debugging).
    Sandbox(sandbox_cmd::Args),
}

/// The container shim (`nodeless sandbox shim --dir DIR`) is started once per container and
/// lives as long as it: it skips the command-line parser and runs on a single-threaded runtime
/// (no worker threads to start or to keep in memory). `None` for any other command line.
fn shim_dir(args: &[std::ffi::OsString]) -> Option<std::path::PathBuf> {
    match args {
        [_, a, b, c, dir] if a == "sandbox" && b == "shim" && c == "--dir" => Some(dir.into()),
        _ => None,
    }
}

fn run_shim(dir: &std::path::Path) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NODELESS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(sandbox::shim::main(dir))?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(dir) = shim_dir(&args) {
        return run_shim(&dir);
    }
    let cli = Cli::parse_from(args);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NODELESS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(args) => up_cmd::run(args).await,
            Command::Server(args) => server_cmd::run(args).await,
            Command::Agent(args) => agent_cmd::run(args).await,
            Command::Registry(args) => registry_cmd::run(args).await,
            Command::Sandbox(args) => sandbox_cmd::run(args).await,
        }
    })
}
