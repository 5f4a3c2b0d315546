//! `nodeless agent`: a node agent that registers this host (or, with `--runtime fake --nodes N`,
//! N fake nodes) with an API server and runs the pods bound there.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Run nothing; pods go Running and Ready as with kwok (for tests and scale benchmarks).
    Fake,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The API server URL, e.g. https://10.0.0.1:6443 (with --token).
    #[arg(
        long,
        env = "NODELESS_SERVER",
        required_unless_present = "kubeconfig",
        requires = "token"
    )]
    pub server: Option<String>,
    /// The bearer token to authenticate with.
    #[arg(long, env = "NODELESS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A kubeconfig to use in place of --server and --token.
    #[arg(long, conflicts_with_all = ["server", "token"])]
    pub kubeconfig: Option<PathBuf>,
    /// PEM CA bundle that signed the server's certificate.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long, conflicts_with = "ca_file")]
    pub insecure_skip_tls_verify: bool,
    /// Run pods on this host (a worker node).
    #[arg(long)]
    pub worker: bool,
    /// What runs the pods.
    #[arg(long, value_enum, default_value_t = RuntimeKind::Fake)]
    pub runtime: RuntimeKind,
    /// How many nodes to register (more than one only with the fake runtime): PREFIX-0..PREFIX-N-1.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// The node name (or, with --nodes > 1, the prefix of the names) [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// Fake nodes' cpu capacity.
    #[arg(long, default_value = "32")]
    pub fake_cpu: String,
    /// Fake nodes' memory capacity.
    #[arg(long, default_value = "256Gi")]
    pub fake_memory: String,
    /// Fake nodes' pod capacity.
    #[arg(long, default_value_t = 110)]
    pub fake_pods: u32,
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "nodeless".to_string())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    if !args.worker {
        anyhow::bail!("only worker agents exist so far: pass --worker");
    }
    let creds = match (&args.kubeconfig, &args.server, &args.token) {
        (Some(path), _, _) => agent::connect::Credentials::Kubeconfig(path.clone()),
        (None, Some(server), Some(token)) => agent::connect::Credentials::Token {
            server: server.clone(),
            token: token.clone(),
            ca_file: args.ca_file.clone(),
            insecure: args.insecure_skip_tls_verify,
        },
        _ => anyhow::bail!("pass --kubeconfig, or --server and --token"),
    };
    let client = agent::connect::client(&creds)
        .await
        .context("cannot make an API client")?;
    let base = args.node_name.clone().unwrap_or_else(hostname);
    let runtime = Arc::new(agent::runtime::Fake::new());
    let version = agent::runtime::Runtime::version(runtime.as_ref());
    let nodes: Vec<agent::node::NodeSpec> = (0..args.nodes.max(1))
        .map(|i| {
            let name = if args.nodes <= 1 {
                base.clone()
            } else {
                format!("{base}-{i}")
            };
            let mut n = agent::node::NodeSpec::fake(&name, i, &version);
            n.cpu = args.fake_cpu.clone();
            n.memory = args.fake_memory.clone();
            n.pods = args.fake_pods;
            n
        })
        .collect();
    tracing::info!(nodes = nodes.len(), runtime = ?args.runtime, "agent starting");
    tokio::select! {
        r = agent::run(client, runtime, agent::Config::new(nodes)) => r.context("agent stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
