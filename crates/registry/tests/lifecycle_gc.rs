//! Lifecycle policies and garbage collection through the registry: expiry by rule, cascade to blobs at
//! the next collection, and the grace period that keeps uploads in flight.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use registry::digest::Digest;
use registry::manifest::OCI_MANIFEST;
use registry::names::RepoName;
use registry::registry::now_secs;

#[tokio::test]
async fn lifecycle_expires_by_rule_and_gc_frees_the_blobs() {
    let h = common::harness();
    h.create_repo("app").await;
    let name = RepoName::parse("app").unwrap();
    let (_, v1) = h.push_image("app", "v1", b"layer v1").await;
    let (_, v2) = h.push_image("app", "v2", b"layer v2").await;
    let (_, v3) = h.push_image("app", "v3", b"layer v3").await;
    // an untagged image: push by tag then delete the tag
    let (_, old) = h.push_image("app", "tmp", b"layer old").await;
    h.send(
        Method::DELETE,
        "/v2/app/manifests/tmp",
        &[],
        axum::body::Body::empty(),
    )
    .await;

    let bad = h
        .reg
        .set_lifecycle_policy(&name, Some(r#"{"rules":[{"rulePriority":1}]}"#))
        .await;
    assert!(bad.is_err());
    let policy = r#"{"rules":[
        {"rulePriority":1,"description":"drop untagged after 1 day","selection":{"tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":1},"action":{"type":"expire"}},
        {"rulePriority":2,"description":"keep 2 releases","selection":{"tagStatus":"tagged","tagPrefixList":["v"],"countType":"imageCountMoreThan","countNumber":2},"action":{"type":"expire"}}]}"#;
    h.reg
        .set_lifecycle_policy(&name, Some(policy))
        .await
        .unwrap();
    assert_eq!(
        h.reg.lifecycle_policy(&name).await.unwrap().as_deref(),
        Some(policy)
    );

    // today: the untagged image is too young; only the oldest release goes (pushes in the same second
    // are ordered by digest, so check the count and that the newest two by time survive)
    let now = now_secs();
    let dry = h.reg.apply_lifecycle(Some(&name), now, true).await.unwrap();
    assert_eq!(dry.len(), 1);
    assert!(h.get(&format!("/v2/app/manifests/{old}")).await.status == StatusCode::OK);
    // two days on: the untagged image goes as well
    let expired = h
        .reg
        .apply_lifecycle(Some(&name), now + 2 * 86_400, false)
        .await
        .unwrap();
    let expired: Vec<String> = expired.into_iter().map(|(_, d)| d).collect();
    assert_eq!(expired.len(), 2, "{expired:?}");
    assert!(expired.contains(&old.to_string()));
    let remaining: Vec<Digest> = [&v1, &v2, &v3]
        .into_iter()
        .filter(|d| !expired.contains(&d.to_string()))
        .cloned()
        .collect();
    assert_eq!(remaining.len(), 2);
    for d in &remaining {
        assert_eq!(
            h.get(&format!("/v2/app/manifests/{d}")).await.status,
            StatusCode::OK
        );
    }

    // GC with the default grace keeps everything (all blobs are young)
    let r = h
        .reg
        .collect_garbage(Duration::from_secs(3600), false)
        .await
        .unwrap();
    assert!(r.blobs_deleted.is_empty());
    // with no grace: the expired manifests, their layers go; the shared config blobs differ per image
    let r = h.reg.collect_garbage(Duration::ZERO, false).await.unwrap();
    assert!(r.blobs_deleted.contains(&old.to_string()));
    assert!(
        r.blobs_deleted
            .contains(&Digest::sha256_of(b"layer old").to_string())
    );
    assert!(r.bytes_freed > 0);
    for d in &remaining {
        let m = h.get(&format!("/v2/app/manifests/{d}")).await;
        assert_eq!(m.status, StatusCode::OK);
        let j = m.json();
        let layer = j["layers"][0]["digest"].as_str().unwrap();
        assert_eq!(
            h.get(&format!("/v2/app/blobs/{layer}")).await.status,
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn gc_is_safe_with_uploads_in_flight() {
    let h = common::harness();
    h.create_repo("app").await;
    // a session half done, and a blob uploaded whose manifest is not pushed yet
    let r = h
        .send(
            Method::POST,
            "/v2/app/blobs/uploads/",
            &[],
            axum::body::Body::empty(),
        )
        .await;
    let loc = r.header("location").unwrap();
    h.send(Method::PATCH, &loc, &[], Bytes::from_static(b"first half "))
        .await;
    let cfg = h.push_blob("app", b"{}").await;

    let r = h
        .reg
        .collect_garbage(Duration::from_secs(3600), false)
        .await
        .unwrap();
    assert!(r.blobs_deleted.is_empty());
    assert_eq!(r.links_dropped, 0);
    // the session is untouched and completes; the manifest referencing the young blob is accepted
    h.send(Method::PATCH, &loc, &[], Bytes::from_static(b"second half"))
        .await;
    let d = Digest::sha256_of(b"first half second half");
    let r = h
        .send(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[],
            axum::body::Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let m = common::oci_manifest(&cfg, 2, &[(d.clone(), 22)], None);
    assert_eq!(
        h.put_manifest("app", "t", OCI_MANIFEST, &m).await.status,
        StatusCode::CREATED
    );
    // now everything is referenced: even a zero-grace collection keeps it
    let r = h.reg.collect_garbage(Duration::ZERO, false).await.unwrap();
    assert!(r.blobs_deleted.is_empty(), "{r:?}");
    assert_eq!(
        h.get(&format!("/v2/app/blobs/{d}")).await.status,
        StatusCode::OK
    );
    // an unreferenced upload goes once the grace is over (here: zero)
    let stray = h.push_blob("app", b"stray").await;
    let dry = h.reg.collect_garbage(Duration::ZERO, true).await.unwrap();
    assert_eq!(dry.blobs_deleted, vec![stray.to_string()]);
    assert_eq!(
        h.get(&format!("/v2/app/blobs/{stray}")).await.status,
        StatusCode::OK
    );
    let r = h.reg.collect_garbage(Duration::ZERO, false).await.unwrap();
    assert_eq!(r.blobs_deleted, vec![stray.to_string()]);
    assert_eq!(r.links_dropped, 1);
    assert_eq!(
        h.get(&format!("/v2/app/blobs/{stray}")).await.code(),
        "BLOB_UNKNOWN"
    );
}

#[tokio::test]
async fn idle_upload_sessions_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let h = common::harness_with(|_| {
        registry::Registry::open_with(
            dir.path(),
            registry::Config {
                upload_ttl: Duration::ZERO,
                ..Default::default()
            },
        )
        .unwrap()
    });
    h.create_repo("app").await;
    let r = h
        .send(
            Method::POST,
            "/v2/app/blobs/uploads/",
            &[],
            axum::body::Body::empty(),
        )
        .await;
    let loc = r.header("location").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(h.reg.clean_uploads().await.unwrap(), 1);
    assert_eq!(h.get(&loc).await.code(), "BLOB_UPLOAD_UNKNOWN");
}
