//! Leader election through a `coordination.k8s.io/v1 Lease`, as upstream's leaderelection: the
//! holder renews the lease; others take it over once it has not been renewed for its duration.
//! Used so that several `nodeless server` processes on one etcd run one set of controllers.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use serde_json::json;

/// Where the lease lives and how it is held.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This instance's identity (host name + process id, say).
    pub identity: String,
    /// How long a lease stays valid without renewal (15 s upstream).
    pub lease_duration: Duration,
    /// How often the holder renews and others retry (2 s upstream).
    pub retry_period: Duration,
}

impl LeaderConfig {
    pub fn new(lease_name: &str, identity: &str) -> Self {
        Self {
            namespace: "kube-system".into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the lease as observed: a pure function of the lease and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nobody holds it (or it does not exist): take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds a valid lease.
    Wait,
}

/// Decide from the observed lease (None: it does not exist).
pub fn decide(lease: Option<&Lease>, me: &str, now: jiff::Timestamp) -> Decision {
    let Some(spec) = lease.and_then(|l| l.spec.as_ref()) else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            match renewed {
                Some(r)
                    if r.checked_add(jiff::SignedDuration::from_secs(duration))
                        .is_ok_and(|until| until > now) =>
                {
                    Decision::Wait
                }
                _ => Decision::Acquire,
            }
        }
    }
}

fn lease_body(cfg: &LeaderConfig, acquire: bool, old: Option<&Lease>) -> Lease {
    let now = MicroTime(jiff::Timestamp::now());
    let mut lease = old.cloned().unwrap_or_else(|| {
        serde_json::from_value(
            json!({"metadata": {"name": cfg.lease_name, "namespace": cfg.namespace}}),
        )
        .expect("a static lease")
    });
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some(cfg.identity.clone());
    spec.lease_duration_seconds = Some(cfg.lease_duration.as_secs() as i32);
    spec.renew_time = Some(now.clone());
    if acquire {
        spec.acquire_time = Some(now);
        spec.lease_transitions =
            Some(spec.lease_transitions.unwrap_or(0) + i32::from(old.is_some()));
    }
    lease
}

/// Try once to acquire or renew. Returns whether we hold the lease afterwards.
pub async fn try_hold(api: &Api<Lease>, cfg: &LeaderConfig) -> bool {
    let current = match api.get_opt(&cfg.lease_name).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the leader lease");
            return false;
        }
    };
    let decision = decide(current.as_ref(), &cfg.identity, jiff::Timestamp::now());
    let result = match (&decision, &current) {
        (Decision::Wait, _) => return false,
        (_, None) => api
            .create(&PostParams::default(), &lease_body(cfg, true, None))
            .await
            .map(|_| ()),
        (d, Some(old)) => api
            .replace(
                &cfg.lease_name,
                &PostParams::default(),
                &lease_body(cfg, *d == Decision::Acquire, Some(old)),
            )
            .await
            .map(|_| ()),
    };
    match result {
        Ok(()) => {
            if decision == Decision::Acquire {
                tracing::info!(lease = %cfg.lease_name, identity = %cfg.identity, "became leader");
            }
            true
        }
        Err(e) => {
            tracing::debug!(error = %e, "lost the race for the leader lease");
            false
        }
    }
}

/// Run `work` while this instance holds the lease; stop it when the lease is lost and start it
/// again when it is regained. Never returns.
pub async fn run_as_leader<F, Fut>(client: kube::Client, cfg: LeaderConfig, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    loop {
        if !try_hold(&api, &cfg).await {
            tokio::time::sleep(cfg.retry_period).await;
            continue;
        }
        let task = tokio::spawn(work());
        loop {
            tokio::time::sleep(cfg.retry_period).await;
            if !try_hold(&api, &cfg).await {
                tracing::warn!(lease = %cfg.lease_name, "lost the leader lease; stopping controllers");
                task.abort();
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64) -> Lease {
        let t = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_secs(renewed_secs_ago))
            .unwrap();
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": MicroTime(t)}})).unwrap()
    }

    #[test]
    fn decisions() {
        let now = jiff::Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(decide(Some(&lease("a", 1)), "a", now), Decision::Renew);
        assert_eq!(decide(Some(&lease("b", 1)), "a", now), Decision::Wait);
        assert_eq!(
            decide(Some(&lease("b", 30)), "a", now),
            Decision::Acquire,
            "expired lease is taken over"
        );
        assert_eq!(decide(Some(&lease("", 1)), "a", now), Decision::Acquire);
    }
}
