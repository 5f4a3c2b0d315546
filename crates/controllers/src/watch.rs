//! Watch plumbing shared by the channel-driven controllers (scheduler, serverless scheduler,
//! profile controller): a task that forwards one resource's watch events into the controller's
//! message channel, and a guard that aborts such tasks when the controller returns.

use futures::StreamExt;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Spawn a task that runs `watcher(api, config)` with the default backoff and sends each event,
/// wrapped by `wrap`, into `tx`. Watch errors are logged as warnings with the message `what`
/// (e.g. `"scheduler: pod watch"`); the task ends when the receiver is gone.
pub fn forward_watch<K, M>(
    api: Api<K>,
    config: watcher::Config,
    tx: mpsc::Sender<M>,
    wrap: fn(Box<watcher::Event<K>>) -> M,
    what: &'static str,
) -> JoinHandle<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    M: Send + 'static,
{
    tokio::spawn(async move {
        let mut s = watcher(api, config).default_backoff().boxed();
        while let Some(ev) = s.next().await {
            match ev {
                Ok(ev) => {
                    if tx.send(wrap(Box::new(ev))).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "{what}"),
            }
        }
    })
}

/// Aborts the tasks it holds when dropped.
pub struct AbortOnDrop(pub Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}
