//! Probes from the pod network's namespace: a network namespace made by the test, with the pod
//! IP on its loopback and an HTTP server inside; the probes reach it only through the namespace.
//! Needs root and iproute2; says so and skips otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use agent::probe::{self, ExecFn, Handler, Outcome, ProbeEvent, ProbeTarget};
use k8s_openapi::api::core::v1::{Container, ContainerPort, HTTPGetAction, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 5);

struct TestNetns {
    name: String,
    path: PathBuf,
}

impl TestNetns {
    fn create() -> Option<TestNetns> {
        let name = format!("nl-t-{}-probe", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            eprintln!("SKIPPED: cannot create a network namespace (needs root and iproute2)");
            return None;
        }
        let ns = TestNetns {
            path: PathBuf::from("/run/netns").join(&name),
            name,
        };
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", &format!("{POD_IP}/32"), "dev", "lo"],
        ] {
            let ok = Command::new("ip")
                .args(["-n", &ns.name])
                .args(args)
                .status()
                .unwrap();
            assert!(ok.success(), "ip {args:?}");
        }
        Some(ns)
    }

    /// An HTTP server on POD_IP:port inside the namespace: 200 for `/ok`, 500 otherwise.
    /// Its thread enters the namespace for good (a test thread, nothing else runs on it).
    fn http_server(&self, port: u16) {
        let path = self.path.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            let listener = std::net::TcpListener::bind((POD_IP, port)).unwrap();
            tx.send(()).unwrap();
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut line = String::new();
                BufReader::new(&conn).read_line(&mut line).unwrap();
                let status = if line.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                let _ = write!(conn, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            }
        });
        rx.recv().unwrap();
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn no_exec() -> Arc<ExecFn> {
    Arc::new(|_, _| Box::pin(async { Ok(0) }))
}

fn http(port: u16, path: &str) -> Handler {
    Handler::Http {
        https: false,
        host: None,
        port,
        path: path.into(),
        headers: vec![],
    }
}

#[tokio::test]
async fn probes_reach_the_pod_through_its_network_namespace() {
    let Some(ns) = TestNetns::create() else {
        return;
    };
    let port = 18080;
    ns.http_server(port);
    let target = ProbeTarget {
        pod_ip: POD_IP,
        netns: Some(ns.path.clone()),
        exec: no_exec(),
    };
    let t = Duration::from_secs(2);
    assert_eq!(target.run(&http(port, "/ok"), t).await, Outcome::Success);
    assert_eq!(
        target.run(&http(port, "/bad"), t).await,
        Outcome::Failure("HTTP probe failed with statuscode: 500".into())
    );
    assert_eq!(
        target.run(&Handler::Tcp { host: None, port }, t).await,
        Outcome::Success
    );
    assert_eq!(
        target
            .run(
                &Handler::Tcp {
                    host: None,
                    port: port + 1
                },
                t
            )
            .await,
        Outcome::Failure(format!(
            "dial tcp {POD_IP}:{}: connect: connection refused",
            port + 1
        ))
    );

    // The whole loop: a readiness probe on a named port through the namespace.
    let container = Container {
        name: "web".into(),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: port.into(),
            ..Default::default()
        }]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::String("http".into()),
                path: Some("/ok".into()),
                ..Default::default()
            }),
            period_seconds: Some(1),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(port.into()),
                path: Some("/bad".into()),
                ..Default::default()
            }),
            period_seconds: Some(1),
            // The second failure (a period later, readiness has answered by then) kills.
            failure_threshold: Some(2),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handle = probe::spawn(&container, target, tx);
    let mut events = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        events.push(event);
    }
    handle.await.unwrap();
    assert_eq!(events[0], ProbeEvent::Started);
    assert!(events.contains(&ProbeEvent::Ready(true)), "{events:?}");
    assert_eq!(
        events.last().unwrap(),
        &ProbeEvent::LivenessFailed(
            "Liveness probe failed: HTTP probe failed with statuscode: 500".into()
        )
    );
}
