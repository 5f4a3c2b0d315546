//! The data plane's engine: images, root filesystems, runtimes and pod sandboxes on one host.
//! A library with no knowledge of the API server; the `nodeless sandbox` CLI and the node agent
//! drive it. It must not depend on the apiserver or store crates.
//!
//! Map:
//! - [`image`]: pull from registries (oci-client; loopback and configured registries over plain
//!   HTTP; anonymous, basic and token auth), OCI layouts and archives; Docker schema2 / OCI
//!   manifests and indexes (resolved to linux/amd64); gzip/zstd/plain layers; every digest and
//!   diff_id verified; layers unpacked once into a content-addressed store with overlayfs
//!   whiteouts; LRU eviction of images no pod uses.
//! - [`rootfs`]: a container's root filesystem, image layers under a private writable layer.
//! - [`spec`] (pure): container request + image config -> OCI runtime spec.
//! - [`runtime`]: the [`runtime::Runtime`] trait; `gvisor` (runsc, ptrace platform) and
//!   `container` (crun) through their shared CLI; `auto` picks by CPU flags.
//! - [`container`]: one container's life: bundle, logs, exit code, OOM verdict, `state.json`.
//! - [`shim`]: the per-container process (`nodeless sandbox shim`) that holds the container's
//!   stdio, writes its log and records its exit, so containers outlive the agent.
//! - [`microvm`]: the micro-VM path: QEMU `-M microvm`, our static guest agent (`crates/guest`)
//!   as PID 1, the image as an erofs disk, host-guest frames over virtio-serial.
//! - [`logs`]: CRI-format log files, one per container start.
//! - [`plan`] (pure): Kubernetes Pod -> [`plan::PodPlan`], refusing what cannot be honoured.
//! - [`network`]: the pod network (a bridge in a netns the project owns, a netns per pod).
//! - [`pod`]: a whole pod: network, volumes, /etc files, init containers then regular ones,
//!   sharing network and IPC (gVisor: one sandbox per pod, held by a pause container).
//!
//! On disk under the data dir: `images/` (blobs, layers, records), `containers/<id>/` (bundle,
//! rootfs mount, writable layer, logs, state.json), `pods/<id>/` (pod.json, volumes, etc),
//! `network/leases/`, `runtime/<kind>/` (the runtimes' own state), `pause/` (gVisor pause rootfs).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod container;
pub mod digest;
pub mod image;
pub mod limitwatch;
pub mod logs;
pub mod microvm;
pub mod network;
pub mod plan;
pub mod pod;
pub mod rootfs;
pub mod runtime;
pub mod shim;
pub mod spec;
