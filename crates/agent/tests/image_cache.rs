//! The agent's image cache limit (`--image-cache-limit`): once a pod is removed, images no pod
//! of the host uses are evicted, least recently used first, and images of pods that still run
//! are kept. Real crun pods, busybox images built here into OCI layouts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agent::runtime::Runtime;
use agent::streams::{ExecRequest, PodStreams};
use common::{available, busybox_layout, fixture_config, pod, read_all, status_until};
use sandbox::image::Source;
use sandbox::runtime::RuntimeKind;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_pod_evicts_the_images_no_pod_uses() {
    if !available("crun") {
        eprintln!("SKIPPED: needs crun");
        return;
    }
    // A limit below any image: every image no pod uses goes at each collection.
    let f = fixture_config(9, RuntimeKind::Container, RuntimeKind::Container, Some(1)).await;
    let second = f.data.join("second-layout");
    busybox_layout(&second);
    let images = [f.image.clone(), format!("oci:{}:latest", second.display())];
    let mk = |name: &str, image: &str| {
        pod(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")},
            "spec": {
                "nodeName": "worker-1",
                "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}]
            }
        }))
    };
    let stored = |image: &str| {
        let src: Source = image.parse().unwrap();
        f.rt.images().get(&src).unwrap().is_some()
    };
    for (name, image) in [("one", &images[0]), ("two", &images[1])] {
        f.rt.start(&mk(name, image), "").await.unwrap();
        status_until(&f.rt, &format!("uid-{name}"), 30, |s| {
            s.container_statuses[0]
                .state
                .as_ref()
                .is_some_and(|x| x.running.is_some())
        })
        .await;
    }
    assert!(stored(&images[0]) && stored(&images[1]));

    // Pod one goes: its image is no pod's any more and is evicted; pod two's stays.
    f.rt.stop("uid-one", std::time::Duration::from_secs(1))
        .await
        .unwrap();
    f.rt.remove("uid-one");
    f.rt.removed("uid-one").await;
    assert!(
        !stored(&images[0]),
        "the image of the removed pod is evicted"
    );
    assert!(stored(&images[1]), "the image of the running pod stays");

    // Pod two still runs from its (kept) layers.
    let session =
        f.rt.exec(
            "default",
            "two",
            None,
            ExecRequest {
                command: ["cat", "/bin/busybox"].map(String::from).to_vec(),
                stdout: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let out = read_all(session.stdout.unwrap()).await;
    assert!(out.len() > 100_000, "busybox readable in the running pod");
    assert_eq!(session.exit.await.unwrap(), 0);

    // Pod two goes too: nothing is left in the cache.
    f.rt.stop("uid-two", std::time::Duration::from_secs(1))
        .await
        .unwrap();
    f.rt.remove("uid-two");
    f.rt.removed("uid-two").await;
    assert!(!stored(&images[1]));
    assert!(f.rt.images().list().unwrap().is_empty());
}
