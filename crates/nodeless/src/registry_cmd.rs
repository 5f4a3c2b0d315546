//! `nodeless registry ...`: run the OCI registry standalone (`serve`) and manage it ECR-style
//! (`create-repository`, `describe-repositories`, `delete-repository`, `list-images`,
//! `describe-images`, lifecycle policies, garbage collection, `get-login-password`).
//!
//! The management verbs reach a running registry at `--endpoint` (default: the URL `serve` wrote to
//! `<data-dir>/endpoint`) with the admin credential found in `--data-dir`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use registry::auth::{Access, Authority};
use registry::client::AdminClient;
use registry::{Config, Registry};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The registry's data directory (holds the admin credential and the CA); by default the
    /// `registry` directory in nodeless' data directory (as `nodeless server` keeps it).
    #[arg(
        long,
        global = true,
        env = "NODELESS_REGISTRY_DATA_DIR",
        default_value_os_t = crate::default_data_dir().join("registry")
    )]
    data_dir: PathBuf,
    /// URL of a running registry (default: the one `serve` recorded in the data directory).
    #[arg(long, global = true, env = "NODELESS_REGISTRY_ENDPOINT")]
    endpoint: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Mutability {
    #[value(name = "MUTABLE")]
    Mutable,
    #[value(name = "IMMUTABLE")]
    Immutable,
}

#[derive(Debug, clap::Subcommand)]
enum Verb {
    /// Serve the registry (HTTPS with a CA kept in the data directory, or plain HTTP).
    Serve {
        /// Address and port to listen on.
        #[arg(long, default_value = "127.0.0.1:5000")]
        bind: String,
        /// Serve plain HTTP (for loopback use).
        #[arg(long)]
        insecure_http: bool,
        /// Extra DNS names or IPs for the serving certificate.
        #[arg(long = "tls-san")]
        tls_san: Vec<String>,
        /// Seconds between maintenance passes (lifecycle policies, upload cleanup, GC); 0 disables.
        #[arg(long, default_value_t = 3600)]
        maintenance_interval: u64,
        /// Blobs younger than this many seconds are never garbage collected.
        #[arg(long, default_value_t = 3600)]
        gc_grace_period: u64,
    },
    /// Create a repository.
    CreateRepository {
        name: String,
        #[arg(long, value_enum, default_value = "MUTABLE")]
        image_tag_mutability: Mutability,
    },
    /// Describe repositories (all, or the named ones).
    DescribeRepositories { names: Vec<String> },
    /// Delete a repository (with --force even if it holds images).
    DeleteRepository {
        name: String,
        #[arg(long)]
        force: bool,
    },
    /// List a repository's image ids (digest and tag).
    ListImages { name: String },
    /// Describe a repository's images.
    DescribeImages { name: String },
    /// Set a repository's lifecycle policy (JSON text, or file://PATH).
    PutLifecyclePolicy {
        name: String,
        #[arg(long)]
        lifecycle_policy_text: String,
    },
    /// Show a repository's lifecycle policy.
    GetLifecyclePolicy { name: String },
    /// Remove a repository's lifecycle policy.
    DeleteLifecyclePolicy { name: String },
    /// Apply lifecycle policies now (of one repository or all).
    StartLifecyclePolicy {
        name: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Free blobs no manifest references.
    GarbageCollect {
        /// Keep blobs younger than this many seconds (default: the server's setting).
        #[arg(long)]
        grace_period: Option<u64>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a password valid 12 hours, for `podman login --username nodeless --password-stdin`.
    GetLoginPassword {
        /// Limit to these repositories (`name`, `prefix/*`); default all.
        #[arg(long = "repository")]
        repositories: Vec<String>,
        /// Limit to these actions (pull, push, delete); default all.
        #[arg(long, value_delimiter = ',')]
        actions: Vec<String>,
    },
}

fn read_trimmed(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

fn client(args: &Args) -> anyhow::Result<AdminClient> {
    let endpoint = match &args.endpoint {
        Some(e) => e.clone(),
        None => read_trimmed(&args.data_dir.join("endpoint"))
            .context("no --endpoint given and no running registry recorded in --data-dir")?,
    };
    let password = read_trimmed(&args.data_dir.join("auth/admin-password"))
        .context("the admin credential is not in --data-dir")?;
    let ca = std::fs::read_to_string(args.data_dir.join("tls/ca.crt")).ok();
    Ok(AdminClient::new(&endpoint, &password, ca.as_deref())?)
}

fn print(v: &registry::serde_json::Value) -> anyhow::Result<()> {
    println!("{}", registry::serde_json::to_string_pretty(v)?);
    Ok(())
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    use registry::serde_json::{self, json};
    let call = |action: &'static str, body: serde_json::Value| {
        let c = client(&args);
        async move {
            let v = c?.call(action, body).await?;
            print(&v)
        }
    };
    match &args.verb {
        Verb::Serve {
            bind,
            insecure_http,
            tls_san,
            maintenance_interval,
            gc_grace_period,
        } => {
            serve(
                &args.data_dir,
                bind,
                *insecure_http,
                tls_san,
                *maintenance_interval,
                *gc_grace_period,
            )
            .await
        }
        Verb::CreateRepository {
            name,
            image_tag_mutability,
        } => {
            let m = match image_tag_mutability {
                Mutability::Mutable => "MUTABLE",
                Mutability::Immutable => "IMMUTABLE",
            };
            call(
                "CreateRepository",
                json!({"repositoryName": name, "imageTagMutability": m}),
            )
            .await
        }
        Verb::DescribeRepositories { names } => {
            let body = if names.is_empty() {
                json!({})
            } else {
                json!({ "repositoryNames": names })
            };
            call("DescribeRepositories", body).await
        }
        Verb::DeleteRepository { name, force } => {
            call(
                "DeleteRepository",
                json!({"repositoryName": name, "force": force}),
            )
            .await
        }
        Verb::ListImages { name } => call("ListImages", json!({ "repositoryName": name })).await,
        Verb::DescribeImages { name } => {
            call("DescribeImages", json!({ "repositoryName": name })).await
        }
        Verb::PutLifecyclePolicy {
            name,
            lifecycle_policy_text,
        } => {
            let text = match lifecycle_policy_text.strip_prefix("file://") {
                Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading {p}"))?,
                None => lifecycle_policy_text.clone(),
            };
            call(
                "PutLifecyclePolicy",
                json!({"repositoryName": name, "lifecyclePolicyText": text}),
            )
            .await
        }
        Verb::GetLifecyclePolicy { name } => {
            call("GetLifecyclePolicy", json!({ "repositoryName": name })).await
        }
        Verb::DeleteLifecyclePolicy { name } => {
            call("DeleteLifecyclePolicy", json!({ "repositoryName": name })).await
        }
        Verb::StartLifecyclePolicy { name, dry_run } => {
            call(
                "StartLifecyclePolicy",
                json!({"repositoryName": name, "dryRun": dry_run}),
            )
            .await
        }
        Verb::GarbageCollect {
            grace_period,
            dry_run,
        } => {
            call(
                "RunGarbageCollection",
                json!({"gracePeriodSeconds": grace_period, "dryRun": dry_run}),
            )
            .await
        }
        Verb::GetLoginPassword {
            repositories,
            actions,
        } => {
            let authority = Authority::load(&args.data_dir.join("auth"))
                .context("the registry's signing key is not in --data-dir")?;
            let actions = if actions.is_empty() {
                registry::auth::ACTIONS
                    .iter()
                    .map(|a| a.to_string())
                    .collect()
            } else {
                for a in actions {
                    anyhow::ensure!(
                        registry::auth::ACTIONS.contains(&a.as_str()),
                        "unknown action {a:?} (pull, push, delete)"
                    );
                }
                actions.clone()
            };
            let repos = if repositories.is_empty() {
                vec!["*".to_string()]
            } else {
                repositories.clone()
            };
            let access = repos
                .into_iter()
                .map(|repository| Access {
                    repository,
                    actions: actions.clone(),
                })
                .collect();
            println!(
                "{}",
                authority.login_token("nodeless", access, registry::registry::now_secs())
            );
            Ok(())
        }
    }
}

async fn serve(
    data_dir: &Path,
    bind: &str,
    insecure_http: bool,
    tls_san: &[String],
    maintenance_interval: u64,
    gc_grace_period: u64,
) -> anyhow::Result<()> {
    let config = Config {
        scheme: if insecure_http { "http" } else { "https" }.into(),
        gc_grace: Duration::from_secs(gc_grace_period),
        ..Config::default()
    };
    let reg = Arc::new(
        Registry::open_with(data_dir, config)
            .with_context(|| format!("opening the registry in {}", data_dir.display()))?,
    );
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("binding {bind}"))?;
    let addr = listener.local_addr()?;
    let tls = if insecure_http {
        None
    } else {
        let material = registry::tls::ensure(
            &data_dir.join("tls"),
            &registry::tls::default_names(tls_san),
        )?;
        Some(registry::tls::server_config(&material)?)
    };
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let endpoint = format!(
        "{}://{host}:{}",
        if insecure_http { "http" } else { "https" },
        addr.port()
    );
    std::fs::write(data_dir.join("endpoint"), format!("{endpoint}\n"))?;
    tracing::info!(%endpoint, data_dir = %data_dir.display(), "registry serving");
    if maintenance_interval > 0 {
        let reg = reg.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(maintenance_interval));
            tick.tick().await;
            loop {
                tick.tick().await;
                match reg.maintain().await {
                    Ok((expired, uploads, gc)) => tracing::info!(
                        expired,
                        uploads,
                        blobs_deleted = gc.blobs_deleted.len(),
                        bytes_freed = gc.bytes_freed,
                        "registry maintenance"
                    ),
                    Err(e) => tracing::error!(error = ?e, "registry maintenance failed"),
                }
            }
        });
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    registry::tls::serve(registry::router(reg), listener, tls, shutdown).await?;
    Ok(())
}
