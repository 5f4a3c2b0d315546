//! Helpers shared by the controllers' integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::time::Duration;

/// A kube client for the in-process test server.
pub async fn client(ts: &apiserver::testing::TestServer) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(&ts.kubeconfig).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// Poll `f` every 100 ms until it holds; panic after 30 s.
pub async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}
