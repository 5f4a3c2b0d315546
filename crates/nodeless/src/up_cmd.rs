//! `nodeless up`: a whole single-machine cluster in one process: the API server with its store,
//! controllers and schedulers, the registry, and one local host agent that runs serverless pods
//! in sandboxes. Like `eksctl create cluster --fargate`, it also creates a default profile
//! (`fp-default`, namespaces `default` and `kube-system`), so that ordinary Deployments run
//! serverless at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the store, the PKI, the registry, images and pod sandboxes live.
    #[arg(long, env = "NODELESS_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    /// Address of the API server (HTTPS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub bind: SocketAddr,
    /// Where to write the admin kubeconfig [default: DATA_DIR/admin.kubeconfig].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Address of the OCI registry.
    #[arg(long, default_value = "127.0.0.1:6444")]
    pub registry_bind: SocketAddr,
    /// Address of the local agent's streaming server (logs, exec, port-forward).
    #[arg(long, default_value = "127.0.0.1:10250")]
    pub agent_listen: SocketAddr,
    /// Pod subnet of this host (inside the project's pod network namespace).
    #[arg(long, default_value = "10.244.0.0/24")]
    pub pod_cidr: String,
    /// Sandbox runtime for serverless pods: auto, gvisor, microvm, fake (no sandboxes, for
    /// trials).
    #[arg(long, default_value = "auto")]
    pub runtime: String,
    /// CPU the local host offers to serverless pods [default: this machine's cores].
    #[arg(long)]
    pub allocatable_cpu: Option<String>,
    /// Memory the local host offers to serverless pods [default: this machine's memory].
    #[arg(long)]
    pub allocatable_memory: Option<String>,
    /// Do not create the default profile `fp-default`.
    #[arg(long)]
    pub no_default_profile: bool,
}

/// Parses a subcommand's flags from strings, so `up` drives them exactly as the CLI does.
#[derive(Debug, Parser)]
struct Sub<T: clap::Args> {
    #[command(flatten)]
    args: T,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let kubeconfig = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
    let data = args.data_dir.display().to_string();
    let server_args = Sub::<crate::server_cmd::Args>::try_parse_from([
        "server".to_string(),
        format!("--data-dir={data}"),
        format!("--bind={}", args.bind),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--registry-bind={}", args.registry_bind),
        "--no-leader-elect".into(),
    ])
    .context("server flags")?
    .args;
    // A kubeconfig left by an earlier run must not be mistaken for this server's.
    let _ = std::fs::remove_file(&kubeconfig);
    let mut server = tokio::spawn(crate::server_cmd::run(server_args));

    let client = tokio::select! {
        r = wait_for_server(&kubeconfig) => r?,
        r = &mut server => return r.context("server task")?,
    };
    if !args.no_default_profile {
        ensure_default_profile(&client).await?;
    }
    let mut flags = vec![
        "agent".to_string(),
        format!("--kubeconfig={}", kubeconfig.display()),
        format!("--data-dir={data}"),
        format!("--listen={}", args.agent_listen),
        format!("--pod-cidr={}", args.pod_cidr),
        format!("--runtime={}", args.runtime),
    ];
    if let Some(cpu) = &args.allocatable_cpu {
        flags.push(format!("--allocatable-cpu={cpu}"));
    }
    if let Some(memory) = &args.allocatable_memory {
        flags.push(format!("--allocatable-memory={memory}"));
    }
    let agent_args = Sub::<crate::agent_cmd::Args>::try_parse_from(flags)
        .context("agent flags")?
        .args;
    let mut agent = tokio::spawn(crate::agent_cmd::run(agent_args));
    tracing::info!(kubeconfig = %kubeconfig.display(), "cluster up: KUBECONFIG={} kubectl get nodes", kubeconfig.display());
    tokio::select! {
        r = &mut server => r.context("server task")?,
        r = &mut agent => {
            server.abort();
            r.context("agent task")?
        }
    }
}

/// Waits until the server wrote its kubeconfig and answers through it.
async fn wait_for_server(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(yaml) = std::fs::read_to_string(kubeconfig) {
            let client = crate::server_cmd::client_from_kubeconfig(&yaml).await?;
            if client.apiserver_version().await.is_ok() {
                return Ok(client);
            }
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the API server did not come up within 60 s (kubeconfig {})",
                kubeconfig.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The profile eksctl's `--fargate` makes: pods in `default` and `kube-system` run serverless.
async fn ensure_default_profile(client: &kube::Client) -> anyhow::Result<()> {
    let ar = controllers::profiles::api_resource();
    let profiles: kube::Api<kube::core::DynamicObject> = kube::Api::all_with(client.clone(), &ar);
    let obj: kube::core::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": ar.api_version,
        "kind": ar.kind,
        "metadata": {"name": "fp-default"},
        "spec": {"selectors": [{"namespace": "default"}, {"namespace": "kube-system"}]}
    }))?;
    match profiles.create(&Default::default(), &obj).await {
        Ok(_) => tracing::info!(
            "created the default profile fp-default (namespaces default, kube-system)"
        ),
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("cannot create the default profile fp-default"),
    }
    Ok(())
}
