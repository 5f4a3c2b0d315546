//! The Deployment and ReplicaSet controllers as the real kubectl sees them: `create deployment`,
//! `get deploy` columns, `set image` + `rollout status`, `rollout history` (with change-cause),
//! `rollout undo`, `rollout pause/resume`, `scale`, `describe` events.
#![allow(clippy::unwrap_used)]

#[path = "deployment_helpers.rs"]
mod helpers;

use std::path::{Path, PathBuf};
use std::process::Command;

use helpers::*;

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";

struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(KUBECTL)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()
            .expect("run kubectl");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }
    fn ok(&self, args: &[&str]) -> String {
        let (ok, text) = self.run(args);
        assert!(ok, "kubectl {args:?} failed: {text}");
        text
    }
}

impl Drop for Kubectl {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.kubeconfig);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_rollout_workflow() {
    if !Path::new(KUBECTL).exists() {
        eprintln!("SKIPPED: {KUBECTL} not found");
        return;
    }
    let env = start().await;
    let path = std::env::temp_dir().join(format!(
        "deploy-kubectl-{}-{}.kubeconfig",
        std::process::id(),
        jiff::Timestamp::now().as_nanosecond()
    ));
    std::fs::write(&path, &env.server.kubeconfig).unwrap();
    let k = Kubectl { kubeconfig: path };
    let k = std::sync::Arc::new(k);
    let run = |args: Vec<&'static str>| {
        let k = k.clone();
        async move {
            tokio::task::spawn_blocking(move || k.ok(&args))
                .await
                .unwrap()
        }
    };

    run(vec![
        "create",
        "deployment",
        "web",
        "--image=nginx:1",
        "--replicas=3",
    ])
    .await;
    let out = run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let out = run(vec!["get", "deploy", "web", "--no-headers"]).await;
    let cols: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(&cols[..4], ["web", "3/3", "3", "3"], "{out}");
    let out = run(vec!["get", "rs", "--no-headers"]).await;
    let cols: Vec<&str> = out.split_whitespace().collect();
    assert!(
        cols[0].starts_with("web-") && cols[1..4] == ["3", "3", "3"],
        "{out}"
    );

    run(vec![
        "annotate",
        "deployment/web",
        "kubernetes.io/change-cause=update to nginx:2",
    ])
    .await;
    run(vec!["set", "image", "deployment/web", "nginx=nginx:2"]).await;
    let out = run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    assert!(out.contains("successfully rolled out"), "{out}");
    let out = run(vec!["rollout", "history", "deployment/web"]).await;
    assert!(
        out.contains("REVISION") && out.lines().any(|l| l.starts_with("1 ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("2 ") && l.contains("update to nginx:2")),
        "{out}"
    );
    let out = run(vec!["rollout", "history", "deployment/web", "--revision=1"]).await;
    assert!(out.contains("nginx:1"), "{out}");

    // Undo back to revision 1 (it becomes revision 3).
    let out = run(vec!["rollout", "undo", "deployment/web"]).await;
    assert!(out.contains("rolled back"), "{out}");
    run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    let out = run(vec!["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.metadata.annotations.deployment\\.kubernetes\\.io/revision}"]).await;
    assert_eq!(out.trim(), "nginx:1 3");
    let out = run(vec!["rollout", "history", "deployment/web"]).await;
    assert!(
        out.lines().any(|l| l.starts_with("3 ")) && !out.lines().any(|l| l.starts_with("1 ")),
        "{out}"
    );

    // Pause, change, nothing happens; resume, it rolls out.
    run(vec!["rollout", "pause", "deployment/web"]).await;
    run(vec!["set", "image", "deployment/web", "nginx=nginx:3"]).await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let out = run(vec![
        "get",
        "pods",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ])
    .await;
    assert!(!out.contains("nginx:3"), "{out}");
    run(vec!["rollout", "resume", "deployment/web"]).await;
    run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    let out = run(vec![
        "get",
        "pods",
        "-o",
        "jsonpath={.items[*].spec.containers[0].image}",
    ])
    .await;
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["nginx:3"; 3],
        "{out}"
    );

    // Scale.
    run(vec!["scale", "deployment/web", "--replicas=5"]).await;
    run(vec!["rollout", "status", "deployment/web", "--timeout=60s"]).await;
    let out = run(vec!["get", "deploy", "web", "--no-headers"]).await;
    assert!(out.split_whitespace().nth(1) == Some("5/5"), "{out}");

    let out = run(vec!["describe", "deployment", "web"]).await;
    assert!(
        out.contains("ScalingReplicaSet") && out.contains("Scaled up replica set web-"),
        "{out}"
    );
    assert!(
        out.contains("NewReplicaSetAvailable") && out.contains("MinimumReplicasAvailable"),
        "{out}"
    );
    let out = run(vec!["describe", "rs"]).await;
    assert!(
        out.contains("SuccessfulCreate") && out.contains("Created pod: web-"),
        "{out}"
    );
}
