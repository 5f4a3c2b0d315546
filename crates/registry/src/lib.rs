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
//!   the admin API (`POST /nodeless/v1/<Action>`, ECR-like JSON) used by the CLI. The token endpoint
//!   answers `GET` (the distribution token spec) and `POST` (its OAuth2 variant: password and
//!   refresh-token grants, refresh tokens for `access_type=offline`);
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
//! - Every blob is verified against its digest before the rename that makes it visible (hashed as
//!   its chunks arrive, or from disk when that state is gone); every acknowledged push (blob,
//!   metadata) was fsynced with its directory first. Upload chunks are not fsynced one by one: the
//!   finished blob is, once; its fsyncs and the link's metadata fsync run side by side.
//! - Large blob reads are served from a read-only memory mapping of the immutable blob file (one
//!   copy, page cache to socket); the one `unsafe` block is in [`store::fs`].
//! - Garbage collection runs under the metadata lock (so no manifest can be accepted for a blob being
//!   deleted) and spares links and files younger than a grace period (so uploads whose manifest is not
//!   pushed yet survive); re-pushing an existing blob refreshes its mtime.
//! - Credentials: HMAC-signed tokens (`auth`), usable as the Basic password of `podman login` or as
//!   Bearer tokens; `/token` narrows them to the requested scopes; the admin password (in `auth/`) is
//!   for the admin API and the CLI.
//! - `PUT /v2/<name>/manifests/<digest>?tag=a&tag=b` (distribution-spec, pushing several tags at
//!   once) tags the manifest with each, all or none (every tag validated, IMMUTABLE tags checked,
//!   before anything is written; more than [`http::MAX_TAGS_PER_PUT`] is 414), and answers one
//!   `OCI-Tag` header per tag.
//! - Referrers: the API indexes every manifest with a `subject` at push time (a PUT answers
//!   `OCI-Subject`; `artifactType` filters and says so in `OCI-Filters-Applied`). The referrers tag
//!   schema (`<alg>-<ref>` index tags) is not maintained by the registry: the spec makes it the
//!   client's fallback when the API is unavailable, i.e. when a manifest PUT with a subject gets no
//!   `OCI-Subject` back; a registry serving the API has nothing to keep in those tags, and there is no
//!   upgrade to run because the API was there from the first push. A client that pushes such a tag
//!   anyway gets it stored like any other tag.
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
