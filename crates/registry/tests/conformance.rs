//! The distribution spec's conformance workflows (pull, push, content discovery, content management)
//! plus auth, repositories and bad inputs, against the router with `oneshot`.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use bytes::Bytes;
use common::{harness, oci_manifest};
use registry::digest::Digest;
use registry::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};

#[tokio::test]
async fn base_and_auth() {
    let h = harness();
    let r = h.get("/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.header("docker-distribution-api-version").unwrap(),
        "registry/2.0"
    );

    // no credentials: 401 with a Bearer challenge everywhere
    for path in [
        "/v2/",
        "/v2/a/manifests/latest",
        "/v2/_catalog",
        "/v2/a/tags/list",
    ] {
        let r = h
            .send(Method::GET, path, &[("authorization", "")], Body::empty())
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(r.code(), "UNAUTHORIZED");
        let c = r.header("www-authenticate").unwrap();
        assert!(
            c.starts_with(
                "Bearer realm=\"https://registry.test/token\",service=\"nodeless-registry\""
            ),
            "{c}"
        );
    }
    let r = h
        .send(
            Method::GET,
            "/v2/a/manifests/x",
            &[("authorization", "")],
            Body::empty(),
        )
        .await;
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("scope=\"repository:a:pull\"")
    );
    // forged / garbage tokens
    let forged = format!("{}x", h.auth);
    for bad in ["Bearer nope", forged.as_str(), "Basic bm9kZWxlc3M6d3Jvbmc="] {
        let r = h
            .send(
                Method::GET,
                "/v2/",
                &[("authorization", bad)],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{bad}");
    }

    // Basic with the login token as password (podman login), then the token flow
    h.create_repo("app").await;
    h.create_repo("other").await;
    let login = h.auth.strip_prefix("Bearer ").unwrap().to_string();
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("nodeless:{login}")
        )
    );
    let r = h
        .send(
            Method::GET,
            "/v2/",
            &[("authorization", &basic)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = h
        .send(
            Method::GET,
            "/token?service=nodeless-registry&scope=repository%3Aapp%3Apull",
            &[("authorization", &basic)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let pull_only = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    assert!(r.json()["expires_in"].as_u64().unwrap() <= 12 * 3600);
    let r = h
        .send(
            Method::GET,
            "/v2/app/tags/list",
            &[("authorization", &pull_only)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // push with a pull-only token: 401 insufficient_scope so the client asks for a wider token
    let r = h
        .send(
            Method::POST,
            "/v2/app/blobs/uploads/",
            &[("authorization", &pull_only)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate")
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
    let r = h
        .send(
            Method::GET,
            "/v2/other/tags/list",
            &[("authorization", &pull_only)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // the catalog shows only what the credential may pull
    let r = h
        .send(
            Method::GET,
            "/v2/_catalog",
            &[("authorization", &pull_only)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["app"]));
    // token endpoint without credentials
    let r = h
        .send(
            Method::GET,
            "/token?scope=repository:app:pull",
            &[("authorization", "")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // a login password scoped to pull on app: Basic push is DENIED
    let scoped = h.reg.authority().login_token(
        "u",
        vec![registry::auth::Access {
            repository: "app".into(),
            actions: vec!["pull".into()],
        }],
        registry::registry::now_secs(),
    );
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("nodeless:{scoped}")
        )
    );
    let r = h
        .send(
            Method::POST,
            "/v2/app/blobs/uploads/",
            &[("authorization", &basic)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.code(), "DENIED");
    // even the token endpoint will not widen it
    let r = h
        .send(
            Method::GET,
            "/token?scope=repository:app:pull,push",
            &[("authorization", &basic)],
            Body::empty(),
        )
        .await;
    let t = format!("Bearer {}", r.json()["token"].as_str().unwrap());
    let r = h
        .send(
            Method::POST,
            "/v2/app/blobs/uploads/",
            &[("authorization", &t)],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn push_to_missing_repository_is_name_unknown() {
    let h = harness();
    let r = h
        .send(Method::POST, "/v2/nope/blobs/uploads/", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.code(), "NAME_UNKNOWN");
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("nodeless registry create-repository nope")
    );
    let r = h.put_manifest("nope", "latest", OCI_MANIFEST, b"{}").await;
    assert_eq!(r.code(), "NAME_UNKNOWN");
    let r = h.get("/v2/nope/tags/list").await;
    assert_eq!(r.code(), "NAME_UNKNOWN");
}

#[tokio::test]
async fn pull_workflow() {
    let h = harness();
    h.create_repo("lib/app").await;
    let layer: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let (manifest, md) = h.push_image("lib/app", "v1", &layer).await;
    let ld = Digest::sha256_of(&layer);

    for reference in ["v1".to_string(), md.to_string()] {
        let r = h.get(&format!("/v2/lib/app/manifests/{reference}")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.as_ref(), manifest.as_slice());
        assert_eq!(r.header("content-type").unwrap(), OCI_MANIFEST);
        assert_eq!(r.header("docker-content-digest").unwrap(), md.to_string());
        let r = h
            .send(
                Method::HEAD,
                &format!("/v2/lib/app/manifests/{reference}"),
                &[],
                Body::empty(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.header("content-length").unwrap(),
            manifest.len().to_string()
        );
        assert_eq!(r.header("docker-content-digest").unwrap(), md.to_string());
    }
    let r = h.get(&format!("/v2/lib/app/blobs/{ld}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), layer.as_slice());
    assert_eq!(r.header("docker-content-digest").unwrap(), ld.to_string());
    let r = h
        .send(
            Method::HEAD,
            &format!("/v2/lib/app/blobs/{ld}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length").unwrap(), layer.len().to_string());
    // ranges
    let r = h
        .send(
            Method::GET,
            &format!("/v2/lib/app/blobs/{ld}"),
            &[("range", "bytes=10-19")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.body.as_ref(), &layer[10..20]);
    assert_eq!(
        r.header("content-range").unwrap(),
        format!("bytes 10-19/{}", layer.len())
    );
    let r = h
        .send(
            Method::GET,
            &format!("/v2/lib/app/blobs/{ld}"),
            &[("range", "bytes=-5")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.body.as_ref(), &layer[layer.len() - 5..]);
    let r = h
        .send(
            Method::GET,
            &format!("/v2/lib/app/blobs/{ld}"),
            &[("range", "bytes=999999-")],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);

    // unknowns
    let r = h.get("/v2/lib/app/manifests/nosuchtag").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    let r = h
        .get(&format!(
            "/v2/lib/app/manifests/{}",
            Digest::sha256_of(b"x")
        ))
        .await;
    assert_eq!(r.code(), "MANIFEST_UNKNOWN");
    let r = h
        .get(&format!("/v2/lib/app/blobs/{}", Digest::sha256_of(b"x")))
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UNKNOWN")
    );
    let r = h.get("/v2/lib/app/blobs/sha256:nothex").await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
    // a blob of another repository is not visible here
    h.create_repo("other").await;
    let r = h.get(&format!("/v2/other/blobs/{ld}")).await;
    assert_eq!(r.code(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn chunked_push_and_resumable_sessions() {
    let h = harness();
    h.create_repo("app").await;
    let data: Vec<u8> = (0..30_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let d = Digest::sha256_of(&data);
    let r = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let loc = r.header("location").unwrap();
    assert!(loc.starts_with("/v2/app/blobs/uploads/"));
    assert!(r.header("docker-upload-uuid").is_some());

    let r = h
        .send(
            Method::PATCH,
            &loc,
            &[
                ("content-range", "0-9999"),
                ("content-length", "10000"),
                ("content-type", "application/octet-stream"),
            ],
            Bytes::copy_from_slice(&data[..10000]),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range").unwrap(), "0-9999");
    let loc = r.header("location").unwrap();
    // out of order chunk
    let r = h
        .send(
            Method::PATCH,
            &loc,
            &[
                ("content-range", "20000-29999"),
                ("content-length", "10000"),
            ],
            Bytes::copy_from_slice(&data[20000..]),
        )
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("range").unwrap(), "0-9999");
    // truncated chunk: declared 10000, carried 5000 -> refused, nothing kept
    let r = h
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "10000-19999")],
            Bytes::copy_from_slice(&data[10000..15000]),
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{:?}", r.body);
    assert_eq!(r.code(), "BLOB_UPLOAD_INVALID");
    // resume: ask where we are
    let r = h.get(&loc).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(r.header("range").unwrap(), "0-9999");
    // a streamed chunk without Content-Range
    let r = h
        .send(
            Method::PATCH,
            &loc,
            &[],
            Bytes::copy_from_slice(&data[10000..20000]),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(r.header("range").unwrap(), "0-19999");
    // last chunk with the PUT
    let r = h
        .send(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[
                ("content-range", "20000-29999"),
                ("content-length", "10000"),
            ],
            Bytes::copy_from_slice(&data[20000..]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.header("location").unwrap(), format!("/v2/app/blobs/{d}"));
    assert_eq!(r.header("docker-content-digest").unwrap(), d.to_string());
    let r = h.get(&format!("/v2/app/blobs/{d}")).await;
    assert_eq!(r.body.as_ref(), data.as_slice());
    // the session is over
    let r = h.get(&loc).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
    );

    // POST then a single PUT with the whole body
    let r = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap();
    let other = b"monolithic via put".to_vec();
    let od = Digest::sha256_of(&other);
    let r = h
        .send(
            Method::PUT,
            &format!("{loc}?digest={od}"),
            &[("content-length", &other.len().to_string())],
            Bytes::from(other.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // cancel a session
    let r = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap();
    let r = h.send(Method::DELETE, &loc, &[], Body::empty()).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = h.get(&loc).await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
    // a session of another repository is unknown here
    h.create_repo("b").await;
    let r = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    let id = r.header("docker-upload-uuid").unwrap();
    let r = h.get(&format!("/v2/b/blobs/uploads/{id}")).await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
    let r = h.get("/v2/app/blobs/uploads/..%2F..%2Fetc").await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn wrong_digest_leaves_nothing() {
    let h = harness();
    h.create_repo("app").await;
    let data = b"some bytes".to_vec();
    let wrong = Digest::sha256_of(b"other bytes");
    let r = h
        .send(
            Method::POST,
            &format!("/v2/app/blobs/uploads/?digest={wrong}"),
            &[],
            Bytes::from(data.clone()),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "DIGEST_INVALID")
    );
    let r = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap();
    let r = h
        .send(
            Method::PUT,
            &format!("{loc}?digest={wrong}"),
            &[],
            Bytes::from(data.clone()),
        )
        .await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    let r = h
        .send(
            Method::PUT,
            &format!("{loc}?digest=sha256:1234"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.code(), "BLOB_UPLOAD_UNKNOWN");
    for d in [wrong.clone(), Digest::sha256_of(&data)] {
        assert_eq!(
            h.get(&format!("/v2/app/blobs/{d}")).await.code(),
            "BLOB_UNKNOWN"
        );
    }
    // nothing in the store, no session left
    assert!(h.reg.store().list().await.unwrap().is_empty());
    assert!(h.reg.store().uploads().await.unwrap().is_empty());
    // a missing digest parameter
    let r = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap();
    let r = h.send(Method::PUT, &loc, &[], Body::empty()).await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    // the failed uploads claimed `wrong` for `app`: once another repository holds those bytes,
    // `app` still cannot read them, nor reference them from a manifest (no link was left behind)
    h.create_repo("other").await;
    assert_eq!(h.push_blob("other", b"other bytes").await, wrong);
    assert_eq!(
        h.get(&format!("/v2/app/blobs/{wrong}")).await.code(),
        "BLOB_UNKNOWN"
    );
    let cfg = h.push_blob("app", b"{}").await;
    let m = oci_manifest(&cfg, 2, &[(wrong.clone(), 11)], None);
    let r = h
        .put_manifest("app", "v1", registry::manifest::OCI_MANIFEST, &m)
        .await;
    assert_eq!(r.code(), "MANIFEST_BLOB_UNKNOWN");
}

#[tokio::test]
async fn sha512_chunked_upload() {
    // chunks are hashed with SHA-256 on the way in; a SHA-512 digest is checked from disk
    let h = harness();
    h.create_repo("app").await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let d: Digest = format!("sha512:{}", {
        use sha2::Digest as _;
        registry::digest::to_hex(&sha2::Sha512::digest(&data))
    })
    .parse()
    .unwrap();
    let r = h
        .send(Method::POST, "/v2/app/blobs/uploads/", &[], Body::empty())
        .await;
    let loc = r.header("location").unwrap();
    let r = h
        .send(
            Method::PATCH,
            &loc,
            &[("content-range", "0-99999")],
            Bytes::copy_from_slice(&data[..100_000]),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    let r = h
        .send(
            Method::PUT,
            &format!("{loc}?digest={d}"),
            &[("content-range", "100000-299999")],
            Bytes::copy_from_slice(&data[100_000..]),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = h.get(&format!("/v2/app/blobs/{d}")).await;
    assert_eq!(r.body.as_ref(), data.as_slice());
}

#[tokio::test]
async fn empty_blob_and_cross_repository_mount() {
    let h = harness();
    h.create_repo("a").await;
    h.create_repo("b").await;
    let empty = h.push_blob("a", b"").await;
    assert_eq!(
        empty.to_string(),
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    let r = h.get(&format!("/v2/a/blobs/{empty}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty());
    // the OCI empty config `{}`
    let cfg = h.push_blob("a", b"{}").await;
    let r = h
        .send(
            Method::POST,
            &format!("/v2/b/blobs/uploads/?mount={cfg}&from=a"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("location").unwrap(), format!("/v2/b/blobs/{cfg}"));
    assert_eq!(
        h.get(&format!("/v2/b/blobs/{cfg}")).await.body.as_ref(),
        b"{}"
    );
    // mount of an unknown blob falls back to a session
    let r = h
        .send(
            Method::POST,
            &format!(
                "/v2/b/blobs/uploads/?mount={}&from=a",
                Digest::sha256_of(b"zz")
            ),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert!(
        r.header("location")
            .unwrap()
            .starts_with("/v2/b/blobs/uploads/")
    );
    // an artifact with the empty config and empty layer
    let m = oci_manifest(&cfg, 2, &[(empty.clone(), 0)], None);
    assert_eq!(
        h.put_manifest("a", "art", OCI_MANIFEST, &m).await.status,
        StatusCode::CREATED
    );
    // b has the config but not the empty layer
    assert_eq!(
        h.put_manifest("b", "art", OCI_MANIFEST, &m).await.code(),
        "MANIFEST_BLOB_UNKNOWN"
    );
}

#[tokio::test]
async fn manifest_validation() {
    let h = harness();
    h.create_repo("app").await;
    let cfg = h.push_blob("app", b"{}").await;
    let missing = Digest::sha256_of(b"missing layer");
    let m = oci_manifest(&cfg, 2, &[(missing, 13)], None);
    let r = h.put_manifest("app", "t", OCI_MANIFEST, &m).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN")
    );
    let r = h.put_manifest("app", "t", OCI_MANIFEST, b"{not json").await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    let r = h
        .put_manifest("app", "t", OCI_INDEX, &oci_manifest(&cfg, 2, &[], None))
        .await;
    assert_eq!(r.code(), "MANIFEST_INVALID");
    let good = oci_manifest(&cfg, 2, &[], None);
    let r = h
        .put_manifest(
            "app",
            &Digest::sha256_of(b"other").to_string(),
            OCI_MANIFEST,
            &good,
        )
        .await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    for bad_tag in [".bad", "a%2Fb", &"t".repeat(129)] {
        let r = h.put_manifest("app", bad_tag, OCI_MANIFEST, &good).await;
        assert_eq!(r.code(), "TAG_INVALID", "{bad_tag}");
    }
    // oversized: 4 MiB + 1
    let mut big = good.clone();
    big.pop();
    big.extend_from_slice(
        format!(
            r#","annotations":{{"x":"{}"}}}}"#,
            "a".repeat(4 * 1024 * 1024)
        )
        .as_bytes(),
    );
    let r = h.put_manifest("app", "big", OCI_MANIFEST, &big).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID")
    );
    // nothing was tagged by all that
    assert!(
        h.get("/v2/app/tags/list").await.json()["tags"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // and nothing was stored: the only blob is the config pushed above
    let stored: Vec<Digest> = h
        .reg
        .store()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.digest)
        .collect();
    assert_eq!(stored, vec![cfg.clone()]);
    // by digest
    let d = Digest::sha256_of(&good);
    let r = h
        .put_manifest("app", &d.to_string(), OCI_MANIFEST, &good)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        r.header("location").unwrap(),
        format!("/v2/app/manifests/{d}")
    );
}

#[tokio::test]
async fn invalid_names_and_path_traversal() {
    let h = harness();
    h.create_repo("app").await;
    for path in [
        "/v2/app/../etc/manifests/latest",
        "/v2/App/manifests/latest",
        "/v2/a%2F..%2Fb/manifests/latest",
        "/v2/./manifests/latest",
        "/v2/a//b/tags/list",
    ] {
        let r = h.put_manifest_raw(path).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(r.code(), "NAME_INVALID", "{path}");
    }
    let r = h.get("/v2/app/unknown/thing").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // nothing was created on disk
    let files: Vec<_> = std::fs::read_dir(h.dir.path().join("repositories"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, vec![std::ffi::OsString::from("app.json")]);
    let admin = h
        .admin(
            "CreateRepository",
            serde_json::json!({"repositoryName": "../x"}),
        )
        .await;
    assert_eq!(admin.status, StatusCode::BAD_REQUEST);
}

trait RawPut {
    async fn put_manifest_raw(&self, path: &str) -> common::Resp;
    async fn admin(&self, action: &str, body: serde_json::Value) -> common::Resp;
}

impl RawPut for common::Harness {
    async fn put_manifest_raw(&self, path: &str) -> common::Resp {
        self.send(
            Method::PUT,
            path,
            &[("content-type", OCI_MANIFEST)],
            Body::from("{}"),
        )
        .await
    }
    async fn admin(&self, action: &str, body: serde_json::Value) -> common::Resp {
        let auth = format!("Bearer {}", self.reg.authority().admin_password());
        self.send(
            Method::POST,
            &format!("/nodeless/v1/{action}"),
            &[("authorization", &auth)],
            Body::from(body.to_string()),
        )
        .await
    }
}

#[tokio::test]
async fn content_discovery() {
    let h = harness();
    h.create_repo("app").await;
    let (_, d) = h.push_image("app", "t1", b"layer").await;
    let m = h.get(&format!("/v2/app/manifests/{d}")).await.body;
    for t in ["t5", "t3", "t2", "t4"] {
        assert_eq!(
            h.put_manifest("app", t, OCI_MANIFEST, &m).await.status,
            StatusCode::CREATED
        );
    }
    let r = h.get("/v2/app/tags/list").await;
    assert_eq!(
        r.json(),
        serde_json::json!({"name": "app", "tags": ["t1", "t2", "t3", "t4", "t5"]})
    );
    let r = h.get("/v2/app/tags/list?n=2").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["t1", "t2"]));
    assert_eq!(
        r.header("link").unwrap(),
        "</v2/app/tags/list?n=2&last=t2>; rel=\"next\""
    );
    let r = h.get("/v2/app/tags/list?n=2&last=t2").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["t3", "t4"]));
    let r = h.get("/v2/app/tags/list?n=2&last=t4").await;
    assert_eq!(r.json()["tags"], serde_json::json!(["t5"]));
    assert!(r.header("link").is_none());
    let r = h.get("/v2/app/tags/list?n=0").await;
    assert_eq!(r.json()["tags"], serde_json::json!([]));

    h.create_repo("b").await;
    h.create_repo("c/d").await;
    let r = h.get("/v2/_catalog?n=2").await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["app", "b"]));
    assert!(r.header("link").unwrap().contains("last=b"));
    let r = h.get("/v2/_catalog?last=b").await;
    assert_eq!(r.json()["repositories"], serde_json::json!(["c/d"]));

    // referrers
    let cfg = h.push_blob("app", b"{}").await;
    let sig_layer = h.push_blob("app", b"signature").await;
    let mut art: serde_json::Value = serde_json::from_slice(&oci_manifest(
        &cfg,
        2,
        &[(sig_layer, 9)],
        Some((&d, m.len())),
    ))
    .unwrap();
    art["artifactType"] = "application/vnd.example.sig".into();
    art["annotations"] = serde_json::json!({"org.example": "yes"});
    let art = serde_json::to_vec(&art).unwrap();
    let ad = Digest::sha256_of(&art);
    let r = h
        .put_manifest("app", &ad.to_string(), OCI_MANIFEST, &art)
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("oci-subject").unwrap(), d.to_string());
    let r = h.get(&format!("/v2/app/referrers/{d}")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type").unwrap(), OCI_INDEX);
    let j = r.json();
    assert_eq!(j["schemaVersion"], 2);
    assert_eq!(j["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(j["manifests"][0]["digest"], ad.to_string());
    assert_eq!(
        j["manifests"][0]["artifactType"],
        "application/vnd.example.sig"
    );
    assert_eq!(j["manifests"][0]["annotations"]["org.example"], "yes");
    assert_eq!(j["manifests"][0]["size"], art.len());
    let r = h
        .get(&format!(
            "/v2/app/referrers/{d}?artifactType=application/vnd.other"
        ))
        .await;
    assert_eq!(r.json()["manifests"], serde_json::json!([]));
    assert_eq!(r.header("oci-filters-applied").unwrap(), "artifactType");
    let r = h
        .get(&format!(
            "/v2/app/referrers/{d}?artifactType=application/vnd.example.sig"
        ))
        .await;
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);
    // a subject that does not exist (yet) is fine, and has no referrers
    let r = h
        .get(&format!("/v2/app/referrers/{}", Digest::sha256_of(b"none")))
        .await;
    assert_eq!(r.json()["manifests"], serde_json::json!([]));
    let r = h.get("/v2/app/referrers/sha256:bad").await;
    assert_eq!(r.code(), "DIGEST_INVALID");
    // deleting the subject deletes its referrers
    assert_eq!(
        h.send(
            Method::DELETE,
            &format!("/v2/app/manifests/{d}"),
            &[],
            Body::empty()
        )
        .await
        .status,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        h.get(&format!("/v2/app/manifests/{ad}")).await.code(),
        "MANIFEST_UNKNOWN"
    );
}

#[tokio::test]
async fn content_management() {
    let h = harness();
    h.create_repo("app").await;
    let (_, d) = h.push_image("app", "t1", b"layer-1").await;
    let m = h.get(&format!("/v2/app/manifests/{d}")).await.body;
    h.put_manifest("app", "t2", OCI_MANIFEST, &m).await;
    // delete a tag: the manifest stays
    let r = h
        .send(Method::DELETE, "/v2/app/manifests/t1", &[], Body::empty())
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.get("/v2/app/manifests/t1").await.code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        h.get(&format!("/v2/app/manifests/{d}")).await.status,
        StatusCode::OK
    );
    // delete by digest: its other tags go too
    let r = h
        .send(
            Method::DELETE,
            &format!("/v2/app/manifests/{d}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.get("/v2/app/manifests/t2").await.code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        h.get(&format!("/v2/app/manifests/{d}")).await.code(),
        "MANIFEST_UNKNOWN"
    );
    let r = h
        .send(
            Method::DELETE,
            &format!("/v2/app/manifests/{d}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN")
    );
    // delete a blob
    let ld = Digest::sha256_of(b"layer-1");
    let r = h
        .send(
            Method::DELETE,
            &format!("/v2/app/blobs/{ld}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.get(&format!("/v2/app/blobs/{ld}")).await.code(),
        "BLOB_UNKNOWN"
    );
    let r = h
        .send(
            Method::DELETE,
            &format!("/v2/app/blobs/{ld}"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.code(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn docker_schema2_and_indexes() {
    let h = harness();
    h.create_repo("app").await;
    let cfg = h.push_blob("app", br#"{"os":"linux"}"#).await;
    let layer = h.push_blob("app", b"docker layer").await;
    let m = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfg.to_string(), "size": 15},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer.to_string(), "size": 12}],
    })).unwrap();
    let r = h.put_manifest("app", "docker", DOCKER_MANIFEST, &m).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let md = Digest::sha256_of(&m);
    let r = h.get("/v2/app/manifests/docker").await;
    assert_eq!(r.header("content-type").unwrap(), DOCKER_MANIFEST);
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": md.to_string(), "size": m.len(), "platform": {"architecture": "amd64", "os": "linux"}}],
    })).unwrap();
    let r = h.put_manifest("app", "multi", DOCKER_LIST, &list).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        h.get("/v2/app/manifests/multi")
            .await
            .header("content-type")
            .unwrap(),
        DOCKER_LIST
    );
    // an OCI index whose child is missing
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": Digest::sha256_of(b"nope").to_string(), "size": 4}],
    })).unwrap();
    assert_eq!(
        h.put_manifest("app", "idx", OCI_INDEX, &index).await.code(),
        "MANIFEST_BLOB_UNKNOWN"
    );
    // deleting the list leaves the (tagged) child
    let r = h
        .send(
            Method::DELETE,
            &format!("/v2/app/manifests/{}", Digest::sha256_of(&list)),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        h.get("/v2/app/manifests/docker").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn immutable_tags_and_admin_api() {
    let h = harness();
    let r = h
        .admin(
            "CreateRepository",
            serde_json::json!({"repositoryName": "frozen", "imageTagMutability": "IMMUTABLE"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["repository"]["imageTagMutability"], "IMMUTABLE");
    let r = h
        .admin(
            "CreateRepository",
            serde_json::json!({"repositoryName": "frozen"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    // the admin API refuses ordinary tokens
    let r = h
        .send(
            Method::POST,
            "/nodeless/v1/DescribeRepositories",
            &[],
            Body::from("{}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    let (_, d1) = h.push_image("frozen", "v1", b"one").await;
    // same digest again under the same tag is fine
    let m1 = h.get(&format!("/v2/frozen/manifests/{d1}")).await.body;
    assert_eq!(
        h.put_manifest("frozen", "v1", OCI_MANIFEST, &m1)
            .await
            .status,
        StatusCode::CREATED
    );
    let cfg = h.push_blob("frozen", b"{}").await;
    let other = oci_manifest(&cfg, 2, &[], None);
    let r = h.put_manifest("frozen", "v1", OCI_MANIFEST, &other).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (StatusCode::BAD_REQUEST, "TAG_INVALID")
    );
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("IMMUTABLE")
    );

    let r = h
        .admin(
            "ListImages",
            serde_json::json!({"repositoryName": "frozen"}),
        )
        .await;
    assert_eq!(
        r.json()["imageIds"],
        serde_json::json!([{"imageDigest": d1.to_string(), "imageTag": "v1"}])
    );
    let r = h.admin("DescribeRepositories", serde_json::json!({})).await;
    assert_eq!(r.json()["repositories"][0]["repositoryName"], "frozen");
    assert_eq!(r.json()["repositories"][0]["imageCount"], 1);
    let r = h
        .admin(
            "DescribeRepositories",
            serde_json::json!({"repositoryNames": ["nope"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = h
        .admin(
            "DeleteRepository",
            serde_json::json!({"repositoryName": "frozen"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    let r = h
        .admin(
            "DeleteRepository",
            serde_json::json!({"repositoryName": "frozen", "force": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.get("/v2/frozen/tags/list").await.code(), "NAME_UNKNOWN");
    // its blobs are collected: config, layer, manifest, `{}` (the refused manifest left nothing)
    let r = h
        .admin(
            "RunGarbageCollection",
            serde_json::json!({"gracePeriodSeconds": 0}),
        )
        .await;
    assert_eq!(
        r.json()["blobsDeleted"].as_array().unwrap().len(),
        4,
        "{:?}",
        r.json()
    );
    assert!(h.reg.store().list().await.unwrap().is_empty());
}
