//! Randomised inputs against the network-facing decoders and the router: no panic, no 5xx, nothing
//! created. A small deterministic generator stands in for a fuzzer so this runs in every `cargo test`.
#![allow(clippy::unwrap_used)]

mod common;

use axum::body::Body;
use axum::http::Method;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const PIECES: &[&str] = &[
    "v2",
    "_catalog",
    "blobs",
    "uploads",
    "manifests",
    "tags",
    "list",
    "referrers",
    "..",
    ".",
    "%2e%2e",
    "%2F",
    "",
    "a",
    "app",
    "A",
    "a-b",
    "a__b",
    "x.y",
    "latest",
    "sha256:",
    "sha512:zz",
    "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "00000000-0000",
    "?n=",
    "?n=-1",
    "?last=",
    "?digest=sha256:00",
    "?mount=x&from=..",
    "\u{e9}",
    "%00",
    "~",
];

#[tokio::test]
async fn random_requests_never_panic_or_fail_internally() {
    let h = common::harness();
    h.create_repo("app").await;
    let mut rng = Rng(0x9E3779B97F4A7C15);
    let methods = [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::POST,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ];
    for _ in 0..3000 {
        let n = 1 + rng.next() % 6;
        // mostly distribution API paths, some anything
        let mut path = String::from(if rng.next().is_multiple_of(5) {
            "/"
        } else {
            "/v2/app/"
        });
        for i in 0..n {
            if i > 0 {
                path.push('/');
            }
            path.push_str(rng.pick(PIECES));
        }
        if path.contains(['\u{e9}', ' ']) || axum::http::Uri::try_from(path.as_str()).is_err() {
            continue;
        }
        let method = methods[(rng.next() % methods.len() as u64) as usize].clone();
        let range = rng.pick(&[
            "",
            "bytes=0-",
            "bytes=-0",
            "bytes=5-1",
            "bytes=x",
            "0-",
            "9-1",
            "0-99999999999999999999",
        ]);
        let mut headers = vec![];
        if !range.is_empty() {
            headers.push(("range", range));
            headers.push(("content-range", range));
        }
        let ct = rng.pick(&[
            "",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.oci.image.index.v1+json",
            "text/plain",
        ]);
        if !ct.is_empty() {
            headers.push(("content-type", ct));
        }
        let body = rng.pick(&[
            "",
            "{}",
            "{\"schemaVersion\":2}",
            "{\"schemaVersion\":2,\"manifests\":[{}]}",
            "garbage",
            "[1,2",
        ]);
        let r = h
            .send(
                method.clone(),
                &path,
                &headers,
                Body::from(body.to_string()),
            )
            .await;
        assert!(
            !r.status.is_server_error(),
            "{method} {path} {headers:?} -> {} {:?}",
            r.status,
            r.body
        );
    }
    // nothing but `app` exists
    let files: Vec<_> = std::fs::read_dir(h.dir.path().join("repositories"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, vec![std::ffi::OsString::from("app.json")]);
}

#[test]
fn decoders_do_not_panic_on_random_bytes() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let len = (rng.next() % 64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let s = String::from_utf8_lossy(&bytes);
        let _ = registry::names::parse_route(&s);
        let _ = registry::names::RepoName::parse(&s);
        let _ = registry::names::Tag::parse(&s);
        let _ = s.parse::<registry::digest::Digest>();
        let _ = registry::auth::parse_authorization(&s);
        let _ = registry::auth::parse_scope(&s);
        let _ = registry::manifest::parse(None, &bytes);
        let _ = registry::lifecycle::parse(&s);
        let _ = registry::registry::parse_reference(&s);
    }
}
