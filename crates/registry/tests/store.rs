//! One suite for every BlobStore (the filesystem store, and it wrapped by the fault injector with no
//! faults armed), then the failure cases through the fault injector, and durability across reopen.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use registry::digest::Digest;
use registry::store::faulty::{Fault, FaultyStore, Op};
use registry::store::fs::FsStore;
use registry::store::{BlobStore, ByteStream, StoreError, read_all};

fn stream(chunks: Vec<&'static [u8]>) -> ByteStream {
    futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))).boxed()
}

async fn suite(store: &dyn BlobStore) {
    // put verifies
    let d = Digest::sha256_of(b"hello");
    assert!(matches!(
        store.put(&d, Bytes::from_static(b"jello")).await,
        Err(StoreError::DigestMismatch { .. })
    ));
    assert_eq!(store.stat(&d).await.unwrap(), None);
    store.put(&d, Bytes::from_static(b"hello")).await.unwrap();
    store.put(&d, Bytes::from_static(b"hello")).await.unwrap();
    assert_eq!(store.stat(&d).await.unwrap(), Some(5));
    assert_eq!(read_all(store, &d).await.unwrap().as_ref(), b"hello");
    let mut part = Vec::new();
    let mut s = store.read(&d, Some((1, 3))).await.unwrap();
    while let Some(c) = s.next().await {
        part.extend_from_slice(&c.unwrap());
    }
    assert_eq!(part, b"ell");

    // uploads
    store.upload_create("u1", "repo").await.unwrap();
    assert_eq!(store.upload_info("u1").await.unwrap().unwrap().size, 0);
    assert_eq!(
        store
            .upload_append("u1", 0, stream(vec![b"ab", b"c"]), Some(3))
            .await
            .unwrap(),
        3
    );
    assert!(matches!(
        store.upload_append("u1", 0, stream(vec![b"x"]), None).await,
        Err(StoreError::OffsetMismatch {
            current: 3,
            requested: 0
        })
    ));
    // declared more than carried: rolled back
    assert!(matches!(
        store
            .upload_append("u1", 3, stream(vec![b"de"]), Some(5))
            .await,
        Err(StoreError::SizeMismatch { .. })
    ));
    // declared less than carried: rolled back
    assert!(matches!(
        store
            .upload_append("u1", 3, stream(vec![b"defgh"]), Some(2))
            .await,
        Err(StoreError::SizeMismatch { .. })
    ));
    assert_eq!(store.upload_info("u1").await.unwrap().unwrap().size, 3);
    assert_eq!(
        store
            .upload_append("u1", 3, stream(vec![b"def"]), None)
            .await
            .unwrap(),
        6
    );
    let want = Digest::sha256_of(b"abcdef");
    // a wrong digest ends the session and leaves no blob
    let wrong = Digest::sha256_of(b"nope");
    assert!(matches!(
        store.upload_commit("u1", &wrong).await,
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(store.upload_info("u1").await.unwrap().is_none());
    assert_eq!(store.stat(&wrong).await.unwrap(), None);
    assert_eq!(store.stat(&want).await.unwrap(), None);

    store.upload_create("u2", "repo").await.unwrap();
    store
        .upload_append("u2", 0, stream(vec![b"abcdef"]), None)
        .await
        .unwrap();
    assert_eq!(store.upload_commit("u2", &want).await.unwrap(), 6);
    assert_eq!(read_all(store, &want).await.unwrap().as_ref(), b"abcdef");
    assert!(store.uploads().await.unwrap().is_empty());

    // abort
    store.upload_create("u3", "repo").await.unwrap();
    store.upload_abort("u3").await.unwrap();
    assert!(matches!(
        store.upload_abort("u3").await,
        Err(StoreError::NotFound)
    ));
    // ids cannot escape
    assert!(store.upload_create("../x", "repo").await.is_err());
    assert!(store.upload_info("../../etc").await.unwrap().is_none());

    // list and delete
    let mut listed: Vec<String> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.digest.to_string())
        .collect();
    listed.sort();
    let mut expected = vec![d.to_string(), want.to_string()];
    expected.sort();
    assert_eq!(listed, expected);
    assert!(store.delete(&d).await.unwrap());
    assert!(!store.delete(&d).await.unwrap());
    assert!(matches!(
        store.read(&d, None).await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn fs_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&FsStore::open(dir.path()).unwrap()).await;
}

async fn read_range(store: &dyn BlobStore, d: &Digest, range: Option<(u64, u64)>) -> Vec<u8> {
    let mut s = store.read(d, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.unwrap());
    }
    out
}

#[tokio::test]
async fn large_blobs_and_ranges_read_back_exactly() {
    // large reads come from a memory mapping (1 MiB, then 8 MiB slices), small ones from a read loop; chunked
    // uploads are hashed on the way in: both must give the bytes back exactly
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let data: Vec<u8> = (0..9_000_001u32)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8)
        .collect();
    let d = Digest::sha256_of(&data);
    store.upload_create("big", "r").await.unwrap();
    let mut at = 0u64;
    for piece in data.chunks(3_000_000) {
        let chunks: Vec<Result<Bytes, std::io::Error>> = piece
            .chunks(65_536)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        at = store
            .upload_append("big", at, futures::stream::iter(chunks).boxed(), None)
            .await
            .unwrap();
    }
    assert_eq!(
        store.upload_commit("big", &d).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(read_range(&store, &d, None).await, data);
    for (a, b) in [
        (0u64, 262_143u64),
        (1, 262_144),
        (4095, 5_000_000),
        (8_999_000, 9_000_000),
        (7, 9),
    ] {
        assert_eq!(
            read_range(&store, &d, Some((a, b))).await,
            &data[a as usize..=b as usize],
            "{a}-{b}"
        );
    }
    // a range past the end is an error, not a short read
    assert!(store.read(&d, Some((9_000_000, 9_000_001))).await.is_err());
}

#[tokio::test]
async fn faulty_store_without_faults_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&FaultyStore::new(FsStore::open(dir.path()).unwrap())).await;
}

#[tokio::test]
async fn a_chunk_cut_midway_leaves_the_upload_where_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(FsStore::open(dir.path()).unwrap());
    store.upload_create("u", "r").await.unwrap();
    store
        .upload_append("u", 0, stream(vec![b"0123"]), None)
        .await
        .unwrap();
    store.fail(Op::UploadAppend, Fault::CutStreamAfter(3), 1);
    assert!(
        store
            .upload_append("u", 4, stream(vec![b"4567", b"89"]), None)
            .await
            .is_err()
    );
    assert_eq!(store.upload_info("u").await.unwrap().unwrap().size, 4);
    store
        .upload_append("u", 4, stream(vec![b"456789"]), None)
        .await
        .unwrap();
    let d = Digest::sha256_of(b"0123456789");
    store.upload_commit("u", &d).await.unwrap();
    assert_eq!(read_all(&store, &d).await.unwrap().as_ref(), b"0123456789");
}

#[tokio::test]
async fn failures_through_the_registry_leave_nothing_visible() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = Arc::new(FaultyStore::new(
        FsStore::open(dir.path().join("store")).unwrap(),
    ));
    let f2 = faulty.clone();
    let h = common::harness_with(move |d| {
        registry::Registry::with_store(d, f2, registry::Config::default()).unwrap()
    });
    h.create_repo("app").await;
    // commit fails: 500, the blob is not visible and a retry succeeds
    faulty.fail(Op::UploadCommit, Fault::Before, 1);
    let d = Digest::sha256_of(b"payload");
    let r = h
        .send(
            axum::http::Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={d}"),
            &[],
            Bytes::from_static(b"payload"),
        )
        .await;
    assert_eq!(r.status, axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        h.get(&format!("/v2/app/blobs/{d}")).await.code(),
        "BLOB_UNKNOWN"
    );
    assert!(
        faulty.inner().uploads().await.unwrap().is_empty(),
        "the failed session was cleaned up"
    );
    assert_eq!(h.push_blob("app", b"payload").await, d);
    // a manifest whose bytes cannot be stored is not acknowledged and not tagged
    faulty.fail(Op::Put, Fault::Before, 1);
    let m = common::oci_manifest(&d, 7, &[], None);
    let r = h
        .put_manifest("app", "t", registry::manifest::OCI_MANIFEST, &m)
        .await;
    assert_eq!(r.status, axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        h.get("/v2/app/manifests/t").await.code(),
        "MANIFEST_UNKNOWN"
    );
    // a chunk cut mid-stream: BLOB_UPLOAD_INVALID-or-500, the session stays at its old offset
    let r = h
        .send(
            axum::http::Method::POST,
            "/v2/app/blobs/uploads/",
            &[],
            axum::body::Body::empty(),
        )
        .await;
    let loc = r.header("location").unwrap();
    faulty.fail(Op::UploadAppend, Fault::CutStreamAfter(2), 1);
    let r = h
        .send(
            axum::http::Method::PATCH,
            &loc,
            &[],
            Bytes::from_static(b"abcdef"),
        )
        .await;
    assert!(r.status.is_client_error() || r.status.is_server_error());
    assert_eq!(h.get(&loc).await.header("range").unwrap(), "0-0");
    assert_eq!(
        faulty
            .inner()
            .upload_info(loc.rsplit('/').next().unwrap())
            .await
            .unwrap()
            .unwrap()
            .size,
        0
    );
}

#[tokio::test]
async fn acknowledged_pushes_survive_reopen_and_interrupted_writes_vanish() {
    let dir = tempfile::tempdir().unwrap();
    let (md, ld);
    {
        let reg = Arc::new(registry::Registry::open(dir.path()).unwrap());
        let h = common::Harness::from_registry(reg, dir.path());
        h.create_repo("app").await;
        let (_, d) = h.push_image("app", "v1", b"persisted layer").await;
        md = d;
        ld = Digest::sha256_of(b"persisted layer");
    }
    // simulate a crash in the middle of writes: temp files in store/tmp and repositories/
    std::fs::write(dir.path().join("store/tmp/partial"), b"half").unwrap();
    std::fs::write(dir.path().join("repositories/.abc.tmp"), b"{").unwrap();
    let reg = Arc::new(registry::Registry::open(dir.path()).unwrap());
    let h = common::Harness::from_registry(reg, dir.path());
    let r = h.get("/v2/app/manifests/v1").await;
    assert_eq!(r.header("docker-content-digest").unwrap(), md.to_string());
    assert_eq!(
        h.get(&format!("/v2/app/blobs/{ld}")).await.body.as_ref(),
        b"persisted layer"
    );
    assert!(!dir.path().join("store/tmp/partial").exists());
    assert!(!dir.path().join("repositories/.abc.tmp").exists());
}
