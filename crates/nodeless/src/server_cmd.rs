//! `nodeless server`: the API server on its store, over HTTPS with the server's own PKI, writing
//! an admin kubeconfig.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use apiserver::objects::Objects;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Embedded SQLite in the data dir (durable; the default).
    Sqlite,
    /// An etcd cluster (`--etcd-endpoints`).
    Etcd,
    /// In memory only (lost at exit; for tests and benchmarks).
    Memory,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the store, the PKI and the kubeconfig live.
    #[arg(long, env = "NODELESS_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub data_dir: PathBuf,
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub bind: SocketAddr,
    /// Where to write the admin kubeconfig [default: DATA_DIR/admin.kubeconfig].
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The storage backend.
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// etcd client URLs, comma separated (with `--store etcd`).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix in etcd, so that several clusters can share one etcd.
    #[arg(long, default_value = "/nodeless")]
    pub etcd_prefix: String,
    /// Address of the OCI registry (same CA); its data lives in DATA_DIR/registry.
    #[arg(long, default_value = "127.0.0.1:6444")]
    pub registry_bind: SocketAddr,
    /// Do not run the registry.
    #[arg(long)]
    pub no_registry: bool,
    /// In-process controllers and schedulers to turn off (comma separated): deployment, replicaset,
    /// job, garbage-collector, namespace, node-lifecycle, scheduler, serverless-scheduler,
    /// profiles; or `all`.
    #[arg(long, value_delimiter = ',')]
    pub disable: Vec<String>,
    /// How long a node may go without renewing its lease before it is NotReady (seconds).
    #[arg(long, default_value_t = 40)]
    pub node_grace_period: u64,
    /// Cap on how long pods stay on a NotReady node before eviction (seconds; default: their
    /// tolerations, 300 s for the default ones).
    #[arg(long)]
    pub pod_eviction_timeout: Option<u64>,
    /// Run the controllers without electing a leader (only for a single server).
    #[arg(long)]
    pub no_leader_elect: bool,
    /// Extra names (DNS or IP) for the serving certificate.
    #[arg(long = "tls-san", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data dir {}", args.data_dir.display()))?;
    let backend: Arc<dyn store::Backend> = match args.store {
        StoreKind::Sqlite => {
            let path = args.data_dir.join("state.db");
            Arc::new(
                store::sqlite::Sqlite::open(&path)
                    .with_context(|| format!("cannot open the store {}", path.display()))?,
            )
        }
        StoreKind::Etcd => Arc::new(
            store::etcd::Etcd::connect(&args.etcd_endpoints, &args.etcd_prefix)
                .await
                .with_context(|| {
                    format!("cannot reach etcd at {}", args.etcd_endpoints.join(","))
                })?,
        ),
        StoreKind::Memory => Arc::new(store::memory::Memory::new()),
    };
    let mut names: Vec<String> = args.tls_sans.clone();
    let ip = args.bind.ip();
    if !ip.is_unspecified() {
        names.push(ip.to_string());
    }
    let pki = apiserver::pki::Pki::ensure(&args.data_dir, &names)
        .context("cannot set up the server's certificates")?;
    let tls = pki.server_config()?;
    let admission = apiserver::default_admission(backend.clone());
    tokio::spawn(apiserver::compactor(
        backend.clone(),
        std::time::Duration::from_secs(60),
        std::time::Duration::from_secs(300),
    ));
    let watch_cache = apiserver::watchcache::WatchCache::start(backend.clone(), 4096)
        .await
        .context("cannot start the watch cache")?;
    let objects = Objects::new(backend, admission);
    apiserver::bootstrap(&objects)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the initial namespaces: {e}"))?;
    let host = if ip.is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        ip.to_string()
    };
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("cannot listen on {}", args.bind))?;
    let port = listener.local_addr()?.port();
    let server_url = format!("https://{host}:{port}");
    let state = Arc::new(apiserver::State {
        objects,
        tokens: apiserver::Tokens::new([pki.admin_token.clone()]),
        pod_proxy: Arc::new(apiserver::podproxy::AgentProxy::new(
            pki.admin_token.clone(),
        )),
        server_address: format!("{host}:{port}"),
        watch_cache: Some(watch_cache),
    });
    let kubeconfig = args
        .kubeconfig
        .clone()
        .unwrap_or_else(|| args.data_dir.join("admin.kubeconfig"));
    pki.write_kubeconfig(&kubeconfig, &server_url)
        .context("cannot write the kubeconfig")?;
    tracing::info!(url = %server_url, kubeconfig = %kubeconfig.display(), store = ?args.store, startup_ms = started.elapsed().as_millis() as u64, "API server ready");
    let registry = if args.no_registry {
        None
    } else {
        Some(start_registry(&args, &pki, tls.clone()).await?)
    };
    let app = apiserver::router(state);
    let kubeconfig_yaml = pki.kubeconfig(&server_url);
    if let Some((reg, endpoint)) = registry {
        let yaml = kubeconfig_yaml.clone();
        let ca = pki.ca_pem.clone();
        tokio::spawn(async move {
            match client_from_kubeconfig(&yaml).await {
                Ok(client) => keep_registry_secret(client, reg, endpoint, ca).await,
                Err(e) => tracing::error!(error = format!("{e:#}"), "registry pull secret"),
            }
        });
    }
    let disabled = args.disable.clone();
    let leader_elect = !args.no_leader_elect;
    let identity = format!("{}-{}-{port}", hostname(), std::process::id());
    let node_config = controllers::nodelifecycle::Config {
        grace_period: std::time::Duration::from_secs(args.node_grace_period),
        monitor_period: std::time::Duration::from_secs(args.node_grace_period.clamp(1, 5)),
        toleration_cap: args
            .pod_eviction_timeout
            .map(std::time::Duration::from_secs),
    };
    tokio::spawn(async move {
        if let Err(e) = run_controllers(
            kubeconfig_yaml,
            disabled,
            leader_elect,
            identity,
            node_config,
        )
        .await
        {
            tracing::error!(error = format!("{e:#}"), "controllers stopped");
        }
    });
    tokio::select! {
        r = apiserver::serve_tls(listener, tls, app) => r.context("server stopped")?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Serve the OCI registry on its own port with the API server's CA, and record its endpoint and CA
/// in DATA_DIR/registry for the `nodeless registry` verbs. Returns the registry and its
/// `host:port`.
async fn start_registry(
    args: &Args,
    pki: &apiserver::pki::Pki,
    tls: Arc<rustls::ServerConfig>,
) -> anyhow::Result<(Arc<registry::Registry>, String)> {
    let dir = args.data_dir.join("registry");
    std::fs::create_dir_all(dir.join("tls"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let config = registry::Config {
        scheme: "https".into(),
        ..Default::default()
    };
    let reg =
        Arc::new(registry::Registry::open_with(&dir, config).context("cannot open the registry")?);
    let listener = tokio::net::TcpListener::bind(args.registry_bind)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the registry (use --registry-bind or --no-registry)",
                args.registry_bind
            )
        })?;
    let addr = listener.local_addr()?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    let endpoint = format!("https://{host}:{}", addr.port());
    std::fs::write(dir.join("tls/ca.crt"), &pki.ca_pem).context("cannot write the registry CA")?;
    std::fs::write(dir.join("endpoint"), format!("{endpoint}\n"))
        .context("cannot write the registry endpoint")?;
    let hostport = format!("{host}:{}", addr.port());
    let maint = reg.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            tick.tick().await;
            if let Err(e) = maint.maintain().await {
                tracing::warn!(error = %e, "registry maintenance failed");
            }
        }
    });
    let served = reg.clone();
    tokio::spawn(async move {
        if let Err(e) = registry::tls::serve(
            registry::router(served),
            listener,
            Some(tls),
            std::future::pending(),
        )
        .await
        {
            tracing::error!(error = %e, "registry stopped");
        }
    });
    tracing::info!(%endpoint, "registry ready");
    Ok((reg, hostport))
}

/// The Secret through which node agents pull from the cluster's registry (as Fargate pods pull
/// from ECR with the pod execution role): endpoint, CA and a pull-only login token, renewed well
/// before the token's 12 hours run out.
async fn keep_registry_secret(
    client: kube::Client,
    reg: Arc<registry::Registry>,
    endpoint: String,
    ca_pem: String,
) {
    use base64::Engine as _;
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, "kube-system");
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    loop {
        let token = reg.authority().login_token(
            "nodeless-agent",
            vec![registry::auth::Access {
                repository: "*".into(),
                actions: vec!["pull".into()],
            }],
            registry::registry::now_secs(),
        );
        let secret = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": REGISTRY_SECRET, "namespace": "kube-system",
                "labels": {"app.kubernetes.io/managed-by": "nodeless"}},
            "type": "Opaque",
            "data": {
                "endpoint": b64(&endpoint),
                "ca.crt": b64(&ca_pem),
                "username": b64("nodeless"),
                "password": b64(&token),
            }
        });
        let params = kube::api::PatchParams::apply("nodeless-server").force();
        let wait = match api
            .patch(REGISTRY_SECRET, &params, &kube::api::Patch::Apply(&secret))
            .await
        {
            Ok(_) => {
                tracing::debug!("registry pull secret written");
                std::time::Duration::from_secs(registry::auth::LOGIN_TTL_SECS / 2)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot write the registry pull secret; retrying");
                std::time::Duration::from_secs(2)
            }
        };
        tokio::time::sleep(wait).await;
    }
}

/// Name of the registry pull Secret in kube-system.
pub const REGISTRY_SECRET: &str = "nodeless-registry";

/// A client of this server from its admin kubeconfig.
pub async fn client_from_kubeconfig(yaml: &str) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::from_yaml(yaml).context("the admin kubeconfig")?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .context("the admin kubeconfig")?;
    kube::Client::try_from(cfg).context("cannot make a client to this server")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "nodeless".into())
}

/// The controllers and the default scheduler, run in this process as clients of the API server
/// (through its HTTPS endpoint, exactly as separate processes would). With leader election,
/// only the server holding the `nodeless-controllers` Lease runs them.
async fn run_controllers(
    kubeconfig: String,
    disabled: Vec<String>,
    leader_elect: bool,
    identity: String,
    node_config: controllers::nodelifecycle::Config,
) -> anyhow::Result<()> {
    let client = client_from_kubeconfig(&kubeconfig).await?;
    let off = |name: &str| disabled.iter().any(|d| d == name || d == "all");
    let start = {
        let client = client.clone();
        let node_config = node_config.clone();
        let flags: Vec<(&'static str, bool)> = [
            "deployment",
            "replicaset",
            "job",
            "garbage-collector",
            "namespace",
            "node-lifecycle",
            "scheduler",
            "serverless-scheduler",
            "profiles",
        ]
        .into_iter()
        .map(|n| (n, !off(n)))
        .collect();
        move || {
            let client = client.clone();
            let flags = flags.clone();
            let node_config = node_config.clone();
            async move {
                let on = |n: &str| flags.iter().any(|(name, enabled)| *name == n && *enabled);
                let mut tasks = tokio::task::JoinSet::new();
                if on("deployment") {
                    tasks.spawn(controllers::deployment::run(
                        client.clone(),
                        std::future::pending(),
                    ));
                }
                if on("replicaset") {
                    tasks.spawn(controllers::replicaset::run(
                        client.clone(),
                        std::future::pending(),
                    ));
                }
                if on("job") {
                    tasks.spawn(controllers::job::run(client.clone(), Default::default()));
                }
                if on("garbage-collector") {
                    let c = client.clone();
                    tasks.spawn(async move {
                        if let Err(e) = controllers::gc::run(c, Default::default()).await {
                            tracing::error!(error = %e, "garbage collector stopped");
                        }
                    });
                }
                if on("namespace") {
                    let config = controllers::namespace::Config {
                        write_conditions: true,
                        ..Default::default()
                    };
                    tasks.spawn(controllers::namespace::run(client.clone(), config));
                }
                if on("node-lifecycle") {
                    tasks.spawn(controllers::nodelifecycle::run(
                        client.clone(),
                        node_config.clone(),
                    ));
                }
                if on("scheduler") {
                    let c = client.clone();
                    tasks.spawn(async move {
                        if let Err(e) = controllers::scheduler::run(c, Default::default()).await {
                            tracing::error!(error = %e, "scheduler stopped");
                        }
                    });
                }
                if on("serverless-scheduler") {
                    let c = client.clone();
                    tasks.spawn(async move {
                        if let Err(e) = controllers::serverless::run(c, Default::default()).await {
                            tracing::error!(error = %e, "serverless scheduler stopped");
                        }
                    });
                }
                if on("profiles") {
                    let c = client.clone();
                    tasks.spawn(async move {
                        if let Err(e) = controllers::profiles::run(c).await {
                            tracing::error!(error = %e, "profile controller stopped");
                        }
                    });
                }
                tracing::info!(running = tasks.len(), "controllers started");
                while tasks.join_next().await.is_some() {}
            }
        }
    };
    if leader_elect {
        controllers::leader::run_as_leader(
            client,
            controllers::leader::LeaderConfig::new("nodeless-controllers", &identity),
            start,
        )
        .await;
    } else {
        start().await;
    }
    Ok(())
}
