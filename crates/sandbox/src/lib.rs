//! The data plane's engine: images (pull from registries and OCI layouts, unpack, a shared
//! content-addressed cache) and, on top, root filesystems and pod sandboxes run by pluggable
//! runtimes. A library with no knowledge of the API server; the `nodeless sandbox` CLI and the
//! node agent drive it. State lives on disk under a data dir so a restarted agent finds it again.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod container;
pub mod digest;
pub mod image;
pub mod logs;
pub mod network;
pub mod plan;
pub mod pod;
pub mod rootfs;
pub mod runtime;
pub mod spec;
