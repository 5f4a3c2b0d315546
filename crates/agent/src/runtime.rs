//! The seam between the agent and what runs pods: the [`Runtime`] trait (the real sandboxes,
//! gVisor, crun and micro-VMs, will implement it) and [`Fake`], a kwok-like runtime that runs
//! nothing: containers "start" at once and, for pods that declare it, "exit" after the duration
//! in the annotation `nodeless.io/fake-duration` with the code in `nodeless.io/fake-exit-code`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

/// Annotation: how long the fake containers run ("2s", "500ms", "1m"); "forever" or absent means
/// forever for restartPolicy Always and 1s for Never/OnFailure.
pub const FAKE_DURATION: &str = "nodeless.io/fake-duration";
/// Annotation: the exit code of the fake containers (default 0).
pub const FAKE_EXIT_CODE: &str = "nodeless.io/fake-exit-code";

/// Why the runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("pod {0} is not known to the runtime")]
    UnknownPod(String),
    #[error("{0}")]
    Failed(String),
}

/// One started container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerStarted {
    pub name: String,
    /// `<runtime>://<id>`, as in `containerStatuses[].containerID`.
    pub container_id: String,
    /// The resolved image, `repo@sha256:...`.
    pub image_id: String,
}

/// What the runtime reports after starting a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Started {
    pub containers: Vec<ContainerStarted>,
}

/// Runs pods on this host. Methods are keyed by the pod's uid.
pub trait Runtime: Send + Sync + 'static {
    /// `containerRuntimeVersion` of the node, e.g. `fake://0.1.0`.
    fn version(&self) -> String;
    /// Start (or restart) the pod's containers with this pod IP.
    fn start(
        &self,
        pod: &Pod,
        pod_ip: &str,
    ) -> impl Future<Output = Result<Started, RuntimeError>> + Send;
    /// Resolve with the exit code once the containers exit by themselves (may never resolve).
    fn wait(&self, uid: &str) -> impl Future<Output = Result<i32, RuntimeError>> + Send;
    /// Stop the containers (SIGTERM, then SIGKILL after `grace`) and return the exit code.
    fn stop(
        &self,
        uid: &str,
        grace: Duration,
    ) -> impl Future<Output = Result<i32, RuntimeError>> + Send;
    /// Forget the pod (after it is deleted).
    fn remove(&self, uid: &str);

    /// What a real runtime knows better than the pod-level state machine: each container's
    /// state, restart count, readiness (probes). None (the default, and the fake runtime's
    /// answer) lets the shell derive the container statuses from the pod state.
    fn pod_status(&self, _uid: &str) -> Option<RuntimeStatus> {
        None
    }

    /// A receiver of pod uids whose [`Runtime::pod_status`] changed (a container restarted,
    /// turned ready...): the shell rewrites their status. Taken once by the shell; the default
    /// (no changes are ever announced) returns None.
    fn take_changes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        None
    }

    /// Find again the pods that still run on this host from an earlier agent process (after a
    /// restart of the agent): uid -> what was started. The shell adopts these pods instead of
    /// starting them again. The default: nothing survives.
    fn recover(&self) -> impl Future<Output = HashMap<String, Started>> + Send {
        async { HashMap::new() }
    }
}

/// Container statuses as the kubelet reports them, from a runtime that runs real containers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeStatus {
    /// `status.initContainerStatuses`, in spec order.
    pub init_container_statuses: Vec<k8s_openapi::api::core::v1::ContainerStatus>,
    /// `status.containerStatuses`, in spec order (state, lastState, ready, started,
    /// restartCount, image, imageID, containerID).
    pub container_statuses: Vec<k8s_openapi::api::core::v1::ContainerStatus>,
    /// Every init container succeeded.
    pub initialized: bool,
    /// Every regular container runs and is ready (readiness probes pass).
    pub ready: bool,
    /// The pod was evicted (kubelet's message): it ends Failed with reason `Evicted` and is
    /// not started again, whatever its restartPolicy.
    pub evicted: Option<String>,
}

/// Parse a Go-style duration as the annotation carries it ("2s", "1.5s", "300ms", "1m", "1h").
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = num.parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(secs))
}

/// How long the fake containers of this pod run, and with what exit code. None: forever.
pub fn fake_plan(pod: &Pod) -> (Option<Duration>, i32) {
    let ann = pod.metadata.annotations.as_ref();
    let code = ann
        .and_then(|a| a.get(FAKE_EXIT_CODE))
        .and_then(|c| c.trim().parse().ok())
        .unwrap_or(0);
    let always = pod
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .is_none_or(|p| p == "Always");
    let declared = ann.and_then(|a| a.get(FAKE_DURATION)).map(String::as_str);
    let duration = match declared {
        Some("forever") => None,
        Some(d) => parse_duration(d).or(if always {
            None
        } else {
            Some(Duration::from_secs(1))
        }),
        None if always => None,
        None => Some(Duration::from_secs(1)),
    };
    (duration, code)
}

fn hex(s: &str, n: usize) -> String {
    // FNV-1a, repeated with a counter: a stable fake digest, not a security hash.
    let mut out = String::new();
    let mut i: u64 = 0;
    while out.len() < n {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ i;
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        out.push_str(&format!("{h:016x}"));
        i += 1;
    }
    out.truncate(n);
    out
}

/// The image reference as a runtime resolves it (`nginx` -> `docker.io/library/nginx`).
fn normalized_repo(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let repo = match without_digest[last_slash..].find(':') {
        Some(i) => &without_digest[..last_slash + i],
        None => without_digest,
    };
    let first = repo.split('/').next().unwrap_or("");
    let has_registry =
        repo.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        repo.to_string()
    } else if repo.contains('/') {
        format!("docker.io/{repo}")
    } else {
        format!("docker.io/library/{repo}")
    }
}

#[derive(Debug)]
struct FakePod {
    duration: Option<Duration>,
    code: i32,
}

/// The kwok-like fake runtime.
#[derive(Debug, Default)]
pub struct Fake {
    pods: Mutex<HashMap<String, FakePod>>,
}

impl Fake {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Runtime for Fake {
    fn version(&self) -> String {
        format!("fake://{}", env!("CARGO_PKG_VERSION"))
    }

    async fn start(&self, pod: &Pod, _pod_ip: &str) -> Result<Started, RuntimeError> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let (duration, code) = fake_plan(pod);
        if let Ok(mut pods) = self.pods.lock() {
            pods.insert(uid.clone(), FakePod { duration, code });
        }
        let spec = pod.spec.as_ref();
        let containers = spec
            .map(|s| {
                s.init_containers
                    .iter()
                    .flatten()
                    .chain(s.containers.iter())
            })
            .into_iter()
            .flatten()
            .map(|c| {
                let image = c.image.clone().unwrap_or_default();
                ContainerStarted {
                    name: c.name.clone(),
                    container_id: format!("fake://{}", hex(&format!("{uid}/{}", c.name), 64)),
                    image_id: format!("{}@sha256:{}", normalized_repo(&image), hex(&image, 64)),
                }
            })
            .collect();
        Ok(Started { containers })
    }

    async fn wait(&self, uid: &str) -> Result<i32, RuntimeError> {
        let plan = self
            .pods
            .lock()
            .ok()
            .and_then(|p| p.get(uid).map(|p| (p.duration, p.code)));
        match plan {
            None => Err(RuntimeError::UnknownPod(uid.to_string())),
            Some((None, _)) => std::future::pending().await,
            Some((Some(d), code)) => {
                // A container that "runs" 0s is restarted in a loop; keep it from spinning.
                tokio::time::sleep(d.max(Duration::from_millis(100))).await;
                Ok(code)
            }
        }
    }

    async fn stop(&self, _uid: &str, _grace: Duration) -> Result<i32, RuntimeError> {
        // Fake containers exit at once on SIGTERM, cleanly.
        Ok(0)
    }

    fn remove(&self, uid: &str) {
        if let Ok(mut pods) = self.pods.lock() {
            pods.remove(uid);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(policy: &str, ann: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "uid": "u", "annotations": ann},
            "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "nginx:1.27"}]}
        }))
        .unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("300ms"), Some(Duration::from_millis(300)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn plans() {
        assert_eq!(fake_plan(&pod("Always", json!({}))), (None, 0));
        assert_eq!(
            fake_plan(&pod("Never", json!({}))),
            (Some(Duration::from_secs(1)), 0)
        );
        assert_eq!(
            fake_plan(&pod(
                "OnFailure",
                json!({FAKE_DURATION: "2s", FAKE_EXIT_CODE: "3"})
            )),
            (Some(Duration::from_secs(2)), 3)
        );
        assert_eq!(
            fake_plan(&pod("Never", json!({FAKE_DURATION: "forever"}))),
            (None, 0)
        );
    }

    #[test]
    fn image_ids() {
        assert_eq!(normalized_repo("nginx:1.27"), "docker.io/library/nginx");
        assert_eq!(normalized_repo("bitnami/redis"), "docker.io/bitnami/redis");
        assert_eq!(
            normalized_repo("localhost:5000/a/b:v1"),
            "localhost:5000/a/b"
        );
        assert_eq!(
            normalized_repo("registry.k8s.io/pause:3.10"),
            "registry.k8s.io/pause"
        );
    }

    #[tokio::test]
    async fn fake_runs_and_exits() {
        let rt = Fake::new();
        let p = pod(
            "Never",
            json!({FAKE_DURATION: "100ms", FAKE_EXIT_CODE: "4"}),
        );
        let s = rt.start(&p, "10.244.0.2").await.unwrap();
        assert_eq!(s.containers.len(), 1);
        assert!(s.containers[0].container_id.starts_with("fake://"));
        assert!(
            s.containers[0]
                .image_id
                .starts_with("docker.io/library/nginx@sha256:")
        );
        assert_eq!(rt.wait("u").await.unwrap(), 4);
        rt.remove("u");
        assert!(rt.wait("u").await.is_err());
    }
}
