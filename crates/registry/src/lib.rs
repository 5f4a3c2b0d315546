//! An OCI distribution (v1.1) registry with ECR-style repositories, token auth, lifecycle policies and
//! garbage collection. It owns everything behind `nodeless registry` and the registry port of
//! `nodeless server`; it depends on no other nodeless crate.
//!
//! Module map:
//! - [`digest`], [`names`], [`manifest`], [`lifecycle`], [`auth`]: sans-IO cores (digests, names and
//!   request paths, manifest parsing, lifecycle policy evaluation, token signing and scopes), tested
//!   with plain values;
//! - [`store`]: the [`store::BlobStore`] seam (content-addressed blobs and upload sessions), its
//!   filesystem implementation [`store::fs::FsStore`] and the fault-injecting
//!   [`store::faulty::FaultyStore`];
//! - [`meta`]: repositories, manifests, tags and blob links, persisted one JSON file per repository;
//! - [`registry`]: [`Registry`], the operations (push, pull, discovery, deletion, repositories,
//!   lifecycle, GC) over the store and the metadata;
//! - [`http`]: [`router`]`(Arc<Registry>) -> axum::Router`: the `/v2/` API, the `/token` endpoint and
//!   the admin API (`POST /nodeless/v1/<Action>`, ECR-like JSON) used by the CLI;
//! - [`tls`]: the self-made CA and serving certificate kept in the data directory, and [`tls::serve`];
//! - [`client`]: a small HTTP client for the admin API (what the CLI verbs use).
//!
//! Data directory: `store/` (blobs, uploads), `repositories/` (metadata), `auth/` (signing key, admin
//! password), `tls/` (CA and serving certificate), `endpoint` (the URL `serve` listens on), `lock`
//! (held while a registry has the directory open).
//!
//! Decisions worth knowing:
//! - Blobs are global and content-addressed, but visible per repository only through links (uploads
//!   and mounts create them), so a token for one repository cannot read another's layers by digest.
//! - Every blob is hashed from disk after the upload and before the rename that makes it visible;
//!   every acknowledged write (blob, metadata) was fsynced with its directory first.
//! - Garbage collection runs under the metadata lock (so no manifest can be accepted for a blob being
//!   deleted) and spares links and files younger than a grace period (so uploads whose manifest is not
//!   pushed yet survive); re-pushing an existing blob refreshes its mtime.
//! - Credentials: HMAC-signed tokens (`auth`), usable as the Basic password of `podman login` or as
//!   Bearer tokens; `/token` narrows them to the requested scopes; the admin password (in `auth/`) is
//!   for the admin API and the CLI.
//! - The metadata is local JSON even when blobs would live in an object store; a remote metadata
//!   backend would be a second seam.

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
