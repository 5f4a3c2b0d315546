//! `nodeless agent`: the node agent. Without `--worker` it is a serverless host: it publishes
//! its Lease (`kube-system/nodeless-host-HOST`, what it offers and where its streaming server
//! is) and runs the pods of the Nodes the serverless scheduler makes for it. With `--worker` it
//! registers this host (or, with `--runtime fake --nodes N`, N fake nodes) as ordinary Nodes.
//!
//! Runtimes: `auto` (gVisor for serverless pods, crun for worker pods), `gvisor`, `container`
//! (crun), or `fake` (kwok-like, runs nothing; for tests and scale benchmarks).
//!
//! Also compiled into `crates/agent/examples/schedule_bench.rs`, so it names nothing of the
//! `nodeless` binary crate itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Run nothing; pods go Running and Ready as with kwok (for tests and scale benchmarks).
    Fake,
    /// Serverless pods in micro-VMs where the CPU has hardware virtualization (and the
    /// micro-VM assets are installed), else gVisor; crun for worker pods.
    Auto,
    /// gVisor (runsc) for every pod.
    Gvisor,
    /// crun for every pod.
    Container,
    /// A QEMU micro-VM per pod (KVM, or software emulation where the host has no VMX/SVM).
    Microvm,
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
    /// Register worker Node(s) that run ordinary pods, instead of serving serverless pods.
    #[arg(long)]
    pub worker: bool,
    /// What runs the pods [default: fake with --worker, else auto].
    #[arg(long, value_enum)]
    pub runtime: Option<RuntimeKind>,
    /// Where the agent keeps its state (in DIR/agent: images, sandboxes, pod network leases)
    /// [default: /var/lib/nodeless as root, else $XDG_DATA_HOME/nodeless or
    /// ~/.local/share/nodeless].
    #[arg(long, env = "NODELESS_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the streaming server (logs, exec, attach, port-forward); port 0 = any
    /// [default: 127.0.0.1:10250; any port with the fake runtime].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// This host's pod subnet (its bridge is the first address).
    #[arg(long, default_value = "10.244.0.0/24")]
    pub pod_cidr: String,
    /// CPUs offered to pods [default: this machine's].
    #[arg(long)]
    pub allocatable_cpu: Option<String>,
    /// Memory offered to pods, e.g. 24Gi [default: this machine's].
    #[arg(long)]
    pub allocatable_memory: Option<String>,
    /// How many pods this host runs at most.
    #[arg(long)]
    pub allocatable_pods: Option<u32>,
    /// A registry to pull from over plain HTTP (repeatable; loopback ones always are).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Total unpacked size of the image cache, a Kubernetes quantity (20Gi, 500M); over it,
    /// images no pod uses are evicted, least recently used first, as pods are removed
    /// [default: no limit].
    #[arg(long, value_name = "QUANTITY", value_parser = sandbox::spec::parse_memory)]
    pub image_cache_limit: Option<u64>,
    /// How often each pod's local ephemeral storage is measured for kubelet's storage
    /// evictions (kubelet's housekeeping interval): 10s, 500ms, 1m...
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = agent::eviction::parse_interval)]
    pub eviction_interval: std::time::Duration,
    /// How many nodes to register (more than one only with the fake runtime): PREFIX-0..PREFIX-N-1.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// HOST: the host's name, the node name (or, with --nodes > 1, the prefix of the names)
    /// [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// Fake nodes' cpu capacity (when --allocatable-cpu is not given).
    #[arg(long, default_value = "32")]
    pub fake_cpu: String,
    /// Fake nodes' memory capacity (when --allocatable-memory is not given).
    #[arg(long, default_value = "256Gi")]
    pub fake_memory: String,
    /// Fake nodes' pod capacity (when --allocatable-pods is not given).
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

/// `auto` for serverless pods: a micro-VM where the CPU has hardware virtualization and the
/// micro-VM's assets are installed, else gVisor.
fn auto_serverless_runtime() -> sandbox::runtime::RuntimeKind {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let kind = sandbox::runtime::resolve(sandbox::runtime::RuntimeChoice::Auto, &cpuinfo);
    if kind == sandbox::runtime::RuntimeKind::Microvm
        && let Err(e) = sandbox::microvm::VmAssets::locate()
    {
        tracing::warn!(error = %e, "hardware virtualization, but no micro-VM assets: gVisor it is");
        return sandbox::runtime::RuntimeKind::Gvisor;
    }
    kind
}

/// The bridge of a pod subnet inside the pod network namespace: one per subnet, so that agents
/// with different subnets on one machine (tests) never share a bridge. At most 15 characters.
fn bridge_name(cidr: &api::placement::Cidr) -> String {
    format!("nl{:08x}{:02}", u32::from(cidr.network), cidr.prefix)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let kind = args.runtime.unwrap_or(if args.worker {
        RuntimeKind::Fake
    } else {
        RuntimeKind::Auto
    });
    if !args.worker && args.nodes > 1 {
        anyhow::bail!(
            "--nodes is for --worker agents; a serverless host serves the Nodes made for it"
        );
    }
    if kind != RuntimeKind::Fake && args.nodes > 1 {
        anyhow::bail!("--nodes > 1 needs --runtime fake");
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
    let token = agent::connect::bearer_token(&creds).context("cannot read the agent's token")?;
    let pod_cidr: api::placement::Cidr = args
        .pod_cidr
        .parse()
        .with_context(|| format!("--pod-cidr {}", args.pod_cidr))?;

    if kind == RuntimeKind::Fake {
        let runtime = Arc::new(agent::runtime::Fake::new());
        let streams: Arc<dyn agent::streams::PodStreams> = Arc::new(agent::host::FakeStreams);
        // Any port by default: several fake agents share a machine in tests.
        let listen = args
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let server = match token {
            Some(token) => Some(serve_streams(listen, token, streams).await?),
            None => {
                tracing::warn!("no bearer token (client certificates?): no streaming server");
                None
            }
        };
        return serve(client, runtime, &args, kind, server.as_ref()).await;
    }

    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::default_data_dir)
        .join("agent");
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    // Containers run under shims of this binary, so they outlive the agent.
    let exe = std::env::current_exe().context("cannot find the agent's own binary")?;
    sandbox::shim::set_binary(exe);
    use sandbox::runtime::RuntimeKind as Sandbox;
    let (serverless_runtime, worker_runtime) = match kind {
        RuntimeKind::Gvisor => (Sandbox::Gvisor, Sandbox::Gvisor),
        RuntimeKind::Container => (Sandbox::Container, Sandbox::Container),
        RuntimeKind::Microvm => (Sandbox::Microvm, Sandbox::Microvm),
        RuntimeKind::Auto | RuntimeKind::Fake => (auto_serverless_runtime(), Sandbox::Container),
    };
    let network = sandbox::network::PodNetwork::new(
        "nodeless-pods",
        bridge_name(&pod_cidr),
        sandbox::network::Subnet {
            network: pod_cidr.network,
            prefix: pod_cidr.prefix,
        },
        data_dir.join("network"),
    );
    let config = agent::sandboxed::SandboxConfig {
        data_dir: data_dir.clone(),
        serverless_runtime,
        worker_runtime,
        network,
        insecure_registries: args.insecure_registries.clone(),
        image_cache_limit_bytes: args.image_cache_limit,
        eviction_interval: args.eviction_interval,
    };
    // It checks the tools it needs and says what to install.
    let runtime = agent::sandboxed::SandboxRuntime::new(config, client.clone())
        .await
        .context("cannot start the sandbox runtime")?;
    let token = token.context(
        "the streaming server needs the agent's bearer token: use --token, or a kubeconfig whose user has a token",
    )?;
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 10250)));
    let server = serve_streams(listen, token, runtime.clone()).await?;
    serve(client, runtime, &args, kind, Some(&server)).await
}

async fn serve_streams(
    listen: SocketAddr,
    token: String,
    streams: Arc<dyn agent::streams::PodStreams>,
) -> anyhow::Result<agent::server::StreamServer> {
    let server = agent::server::serve(listen, token, streams)
        .await
        .with_context(|| format!("cannot serve logs/exec/port-forward on {listen} (--listen)"))?;
    tracing::info!(endpoint = %server.endpoint, "streaming server");
    Ok(server)
}

/// Builds the agent's configuration and runs it (until it fails or Ctrl-C).
async fn serve<R: agent::runtime::Runtime>(
    client: kube::Client,
    runtime: Arc<R>,
    args: &Args,
    kind: RuntimeKind,
    server: Option<&agent::server::StreamServer>,
) -> anyhow::Result<()> {
    let base = args.node_name.clone().unwrap_or_else(hostname);
    let version = runtime.version();
    let fake = kind == RuntimeKind::Fake;
    let endpoint = server.map(|s| agent::node::Endpoint {
        url: s.endpoint.clone(),
        cert_sha256: s.cert_sha256.clone(),
        port: s.addr.port(),
    });
    let (machine_cpu, machine_memory) = agent::host::machine_resources();
    let mut config = if args.worker {
        let nodes: Vec<agent::node::NodeSpec> = (0..args.nodes.max(1))
            .map(|i| {
                let name = if args.nodes <= 1 {
                    base.clone()
                } else {
                    format!("{base}-{i}")
                };
                let mut n = agent::node::NodeSpec::fake(&name, i, &version);
                let (cpu, memory, pods) = if fake {
                    (&args.fake_cpu, &args.fake_memory, args.fake_pods)
                } else {
                    (&machine_cpu, &machine_memory, 110)
                };
                n.cpu = args.allocatable_cpu.clone().unwrap_or_else(|| cpu.clone());
                n.memory = args
                    .allocatable_memory
                    .clone()
                    .unwrap_or_else(|| memory.clone());
                n.pods = args.allocatable_pods.unwrap_or(pods);
                if args.nodes <= 1 {
                    n.pod_cidr = args.pod_cidr.clone();
                }
                if !fake {
                    // The address the API server reaches this host at.
                    n.internal_ip = server
                        .map(|s| s.addr.ip())
                        .filter(|ip| !ip.is_unspecified())
                        .map_or_else(|| "127.0.0.1".to_string(), |ip| ip.to_string());
                }
                n
            })
            .collect();
        agent::Config::new(nodes)
    } else {
        agent::Config::host(agent::host::HostSpec {
            name: base,
            cpu: args.allocatable_cpu.clone().unwrap_or(machine_cpu),
            memory: args.allocatable_memory.clone().unwrap_or(machine_memory),
            pods: args.allocatable_pods.unwrap_or(110),
            pod_cidr: args.pod_cidr.clone(),
        })
    };
    config.endpoint = endpoint;
    tracing::info!(
        mode = if args.worker { "worker" } else { "serverless host" },
        nodes = config.nodes.len(),
        runtime = %version,
        "agent starting"
    );
    tokio::select! {
        r = agent::run(client, runtime, config) => r.context("agent stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_names_fit_and_differ() {
        let a: api::placement::Cidr = "10.244.0.0/24".parse().unwrap_or_else(|_| unreachable!());
        let b: api::placement::Cidr = "10.244.9.0/24".parse().unwrap_or_else(|_| unreachable!());
        assert_eq!(bridge_name(&a), "nl0af4000024");
        assert_ne!(bridge_name(&a), bridge_name(&b));
        assert!(bridge_name(&a).len() <= 15);
    }
}
