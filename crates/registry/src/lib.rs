//! An OCI distribution (v1.1) registry with ECR-style repositories, token auth, lifecycle policies and
//! garbage collection. It owns everything behind `nodeless registry` and the registry port of
//! `nodeless server`; it depends on no other nodeless crate.
//!
//! Module map:
//! - [`digest`], [`names`], [`manifest`], [`lifecycle`], [`auth`]: sans-IO cores (digests, names and
//!   request paths, manifest parsing, lifecycle policy evaluation, token signing and scopes), tested
//!   with plain values;
//! - [`store`]: the [`store::BlobStore`] seam (content-addressed blobs and upload sessions), its
//!   filesystem implementation and a fault-injecting wrapper;
//! - [`meta`]: repositories, manifests, tags and blob links, persisted one JSON file per repository;
//! - [`registry`]: [`Registry`], the operations (push, pull, discovery, deletion, repositories,
//!   lifecycle, GC) over the store and the metadata;
//! - [`http`]: `router(state) -> axum::Router`: the `/v2/` API, the `/token` endpoint and the admin
//!   API (`/nodeless/v1/<Action>`, ECR-like JSON) used by the CLI;
//! - [`tls`]: the self-made CA and serving certificate kept in the data directory, and `serve`;
//! - [`client`]: a small HTTP client for the admin API (what the CLI verbs use).
//!
//! Data directory layout: `store/` (blobs, uploads), `repositories/` (metadata), `auth/` (signing key,
//! admin password), `tls/` (CA and serving certificate).

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod auth;
pub mod client;
pub mod digest;
pub mod error;
pub mod http;
pub mod lifecycle;
pub mod manifest;
pub mod meta;
pub mod names;
pub mod registry;
pub mod store;
pub mod tls;

pub use error::{ErrorCode, RegistryError};
pub use http::router;
pub use registry::{Config, Registry};
/// Re-exported for callers of [`client::AdminClient`] (its bodies are JSON values).
pub use serde_json;
