//! Two `nodeless server` processes on one real etcd serve the same data, and a watch on one sees
//! writes made through the other.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_etcd() {
    if store::etcd::LocalEtcd::binary().is_none() {
        assert!(
            std::env::var_os("NODELESS_REQUIRE_ETCD").is_none(),
            "etcd is required (apt-get install etcd-server)"
        );
        eprintln!("SKIPPED: etcd is not installed (apt-get install etcd-server)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let etcd = store::etcd::LocalEtcd::start(dir.path()).await.unwrap();
    let prefix = format!("/nodeless-test-{}", std::process::id());
    let args: Vec<String> = [
        "--store",
        "etcd",
        "--etcd-endpoints",
        etcd.endpoint(),
        "--etcd-prefix",
        prefix.as_str(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (a, b) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        (Server::start_with(&args), Server::start_with(&args))
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || {
        let k = "kubectl.1.33";
        let exe = common::which(k).unwrap();
        let mut watch = std::process::Command::new(exe)
            .env("KUBECONFIG", &b.kubeconfig)
            .env("HOME", b.dir.path())
            .args(["get", "configmaps", "-w", "--request-timeout=30s"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        a.ok(k, &["create", "configmap", "from-a", "--from-literal=k=v"]);
        let got = b.ok(
            k,
            &["get", "configmap", "from-a", "-o", "jsonpath={.data.k}"],
        );
        assert_eq!(got, "v", "server b reads what server a wrote");
        let stdout = watch.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        eventually(15, "b's watch to see a's write", || {
            rx.try_recv().ok().filter(|l| l.contains("from-a"))
        });
        let _ = watch.kill();
        let _ = watch.wait();
        b.ok(k, &["delete", "configmap", "from-a"]);
        let out = a.kubectl_v(k, &["get", "configmap", "from-a"]);
        assert!(!out.status.success(), "a sees b's delete");
    })
    .await
    .unwrap();
    drop(etcd);
}
