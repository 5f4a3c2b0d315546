//! The node agent: registers Node(s) with the API server, keeps their Lease and status, and runs
//! the pods bound to them through a [`runtime::Runtime`]: the sandbox runtime
//! ([`sandboxed::SandboxRuntime`]: gVisor for serverless pods, crun for worker nodes) or the
//! kwok-like fake one ([`runtime::Fake`], many fake nodes per process for scale tests). As a
//! serverless host it publishes a host Lease and adopts the per-pod Nodes the serverless
//! scheduler creates for it; it serves `kubectl logs/exec/attach/port-forward` through a
//! kubelet-style streaming server.
//!
//! - `connect`: a kube client from a kubeconfig or a server URL and token.
//! - `lifecycle`: a pod's life on a node as a state enum and a transition function (sans-IO).
//! - `status`: the pod status kubelet would write for a state (sans-IO).
//! - `node`: the Node object, the Lease and the pod IP allocator (sans-IO).
//! - `host`: serverless host mode: the host Lease, which Nodes are this host's, their status
//!   (sans-IO), and the fake runtime's streams.
//! - `runtime`: the `Runtime` trait and the fake runtime.
//! - `sandboxed`: the real runtime over `crates/sandbox`: per-container supervision with
//!   kubelet's restart back-off, probes, events, recovery of pods after an agent restart.
//! - `probe`: liveness/readiness/startup probes (exec, httpGet, tcpSocket) as kubelet runs them.
//! - `eviction`: ephemeral-storage accounting and kubelet-style eviction.
//! - `netns`: connecting from inside the pod network's namespace.
//! - `streams`: the `PodStreams` trait between the streaming server and the runtime.
//! - `server`: the streaming server (kubelet paths; WebSocket v5/v4 and SPDY/3.1).
//! - `spdy`: a server-side SPDY/3.1 session (what kubectl's SPDY transport speaks).
//! - `sync`: the shell: watches, API writes, timers.
//!
//! Talks to the API server only as a client; must not depend on the apiserver crate.

pub mod connect;
pub mod eviction;
pub mod host;
pub mod lifecycle;
pub mod netns;
pub mod node;
pub mod probe;
pub mod runtime;
pub mod sandboxed;
pub mod server;
pub mod spdy;
pub mod status;
pub mod streams;
pub mod sync;

pub use sync::{AgentError, Config, run};
