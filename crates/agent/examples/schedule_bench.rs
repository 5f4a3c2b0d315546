//! Scheduling and start-up throughput with many fake nodes, all in one process: an in-process
//! API server (memory store), the default scheduler, and `nodeless agent --runtime fake --nodes N`
//! (the CLI module itself, so this also exercises its flags). Creates P pods directly (no
//! controllers) and prints how fast they were bound and became Running.
//!
//! `cargo run --release -p agent --example schedule_bench -- [NODES] [PODS]` (defaults 100 1000)

use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

#[path = "../../nodeless/src/agent_cmd.rs"]
mod agent_cmd;
#[path = "../../nodeless/src/data_dir.rs"]
mod data_dir;

use data_dir::default_data_dir;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    agent: agent_cmd::Args,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let nodes: u32 = argv.next().map(|s| s.parse()).transpose()?.unwrap_or(100);
    let pods: usize = argv.next().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let ts = apiserver::testing::TestServer::start().await;
    let kubeconfig =
        std::env::temp_dir().join(format!("schedule-bench-{}.kubeconfig", std::process::id()));
    std::fs::write(&kubeconfig, &ts.kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::from_yaml(&ts.kubeconfig)?,
        &Default::default(),
    )
    .await?;
    let client = kube::Client::try_from(cfg)?;

    let cli = Cli::try_parse_from([
        "agent".to_string(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--worker".into(),
        "--runtime".into(),
        "fake".into(),
        "--nodes".into(),
        nodes.to_string(),
        "--node-name".into(),
        "bench".into(),
    ])?;
    let agent = tokio::spawn(agent_cmd::run(cli.agent));
    let c = client.clone();
    let scheduler =
        tokio::spawn(async move { controllers::scheduler::run(c, Default::default()).await });
    let node_api: Api<Node> = Api::all(client.clone());
    while node_api.list(&ListParams::default()).await?.items.len() < nodes as usize {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("{nodes} fake nodes registered");

    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let start = Instant::now();
    futures::stream::iter(0..pods)
        .for_each_concurrent(32, |i| {
            let api = pod_api.clone();
            async move {
                let p: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("bench-{i}")},
                    "spec": {"containers": [{"name": "c", "image": "nginx",
                        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
                }))
                .expect("a valid pod");
                if let Err(e) = api.create(&PostParams::default(), &p).await {
                    eprintln!("create bench-{i}: {e}");
                }
            }
        })
        .await;
    let created = start.elapsed();
    let (mut bound_at, mut running_at) = (None, None);
    let mut bound = std::collections::HashSet::new();
    let mut running = std::collections::HashSet::new();
    let mut events = kube::runtime::watcher(pod_api.clone(), Default::default()).boxed();
    let deadline = tokio::time::sleep(Duration::from_secs(300));
    tokio::pin!(deadline);
    loop {
        let ev = tokio::select! {
            ev = events.next() => ev,
            _ = &mut deadline => {
                println!("gave up: {} bound, {} running", bound.len(), running.len());
                break;
            }
        };
        let Some(Ok(ev)) = ev else { continue };
        let p = match ev {
            kube::runtime::watcher::Event::Apply(p)
            | kube::runtime::watcher::Event::InitApply(p) => p,
            _ => continue,
        };
        let name = p.metadata.name.clone().unwrap_or_default();
        if p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some() {
            bound.insert(name.clone());
        }
        if p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running") {
            running.insert(name);
        }
        if bound.len() == pods && bound_at.is_none() {
            bound_at = Some(start.elapsed());
        }
        if running.len() == pods {
            running_at = Some(start.elapsed());
            break;
        }
    }
    println!("created {pods} pods in {:.2}s", created.as_secs_f64());
    if let Some(b) = bound_at {
        println!(
            "all bound after {:.2}s: {:.0} pods/s scheduled",
            b.as_secs_f64(),
            pods as f64 / b.as_secs_f64()
        );
    }
    if let Some(r) = running_at {
        println!(
            "all Running after {:.2}s: {:.0} pods/s",
            r.as_secs_f64(),
            pods as f64 / r.as_secs_f64()
        );
    }
    agent.abort();
    scheduler.abort();
    let _ = std::fs::remove_file(&kubeconfig);
    Ok(())
}
