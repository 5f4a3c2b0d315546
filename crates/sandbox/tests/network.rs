//! The pod network for real: a bridge netns the test creates, two pods, traffic between them.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;

use sandbox::network::{PodNetwork, Subnet};

fn nsenter_ok(netns: &str, args: &[&str]) -> bool {
    std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .args(args)
        .output()
        .unwrap()
        .status
        .success()
}

#[tokio::test]
async fn pods_get_addresses_and_reach_each_other() {
    let tmp = tempfile::tempdir().unwrap();
    let name = format!("nltest-{}", std::process::id());
    let net = PodNetwork::new(
        &name,
        "nlbr0",
        Subnet {
            network: Ipv4Addr::new(10, 201, 7, 0),
            prefix: 24,
        },
        tmp.path(),
    );
    let a = net.attach("pod-a").await.unwrap();
    let b = net.attach("pod-b").await.unwrap();
    assert_eq!(a.ip, Ipv4Addr::new(10, 201, 7, 2));
    assert_eq!(b.ip, Ipv4Addr::new(10, 201, 7, 3));
    assert_eq!(
        net.attach("pod-a").await.unwrap(),
        a,
        "attach is idempotent"
    );
    // A new engine over the same state (an agent restart) sees the same leases.
    let again = PodNetwork::new(&name, "nlbr0", net.subnet, tmp.path());
    assert_eq!(again.attach("pod-b").await.unwrap().ip, b.ip);

    let ping = |from: &str, to: Ipv4Addr| {
        nsenter_ok(
            from,
            &["busybox", "ping", "-c", "1", "-W", "2", &to.to_string()],
        )
    };
    assert!(ping(&a.netns, b.ip), "pod a reaches pod b");
    assert!(ping(&b.netns, a.gateway), "pod b reaches the bridge");
    assert!(ping(&name, a.ip), "the bridge reaches pod a");

    net.detach("pod-a").await.unwrap();
    assert!(!std::path::Path::new("/run/netns").join(&a.netns).exists());
    assert!(!ping(&b.netns, a.ip), "pod a is gone");
    let c = net.attach("pod-c").await.unwrap();
    assert_eq!(c.ip, a.ip, "freed address is reused");
    net.detach("pod-b").await.unwrap();
    net.detach("pod-c").await.unwrap();
    net.destroy().await.unwrap();
}
