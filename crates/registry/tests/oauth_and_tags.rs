//! Over real HTTP on loopback: the OAuth2 token endpoint (`POST /token`, the distribution spec's
//! OAuth2 variant as docker and containerd call it) next to the plain `GET /token`, and the
//! distribution spec's `?tag=` parameters on a manifest PUT by digest (with `OCI-Tag` answers),
//! including the bad inputs: unknown grant types, missing fields, wrong passwords, refresh tokens
//! used as credentials, invalid tags and tags an IMMUTABLE repository refuses to move.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use registry::digest::Digest;
use registry::meta::TagMutability;
use registry::names::RepoName;

struct Http {
    port: u16,
    _stop: tokio::sync::oneshot::Sender<()>,
    reg: Arc<registry::Registry>,
    _dir: tempfile::TempDir,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| panic!("not JSON: {:?}", self.body))
    }
}

async fn serve() -> Http {
    let dir = tempfile::tempdir().unwrap();
    let reg = Arc::new(
        registry::Registry::open_with(
            dir.path(),
            registry::Config {
                scheme: "http".into(),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(registry::tls::serve(
        registry::router(reg.clone()),
        listener,
        None,
        async {
            let _ = rx.await;
        },
    ));
    Http {
        port,
        _stop: tx,
        reg,
        _dir: dir,
    }
}

impl Http {
    /// One request on a fresh loopback connection, with exactly the given headers.
    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", format!("127.0.0.1:{}", self.port));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn post_form(&self, form: &str) -> Answer {
        self.send(
            Method::POST,
            "/token",
            &[("content-type", "application/x-www-form-urlencoded")],
            form,
        )
        .await
    }

    fn admin_password(&self) -> String {
        self.reg.authority().admin_password().to_string()
    }

    fn basic(&self, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("nodeless:{password}"))
        )
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn oauth2_password_and_refresh_grants() {
    let s = serve().await;
    for n in ["app", "other"] {
        s.reg
            .create_repository(&RepoName::parse(n).unwrap(), TagMutability::Mutable)
            .await
            .unwrap();
    }
    // a login password limited to pulling `app` (what get-login-password could print)
    let login = s.reg.authority().login_token(
        "nodeless",
        vec![registry::auth::Access {
            repository: "app".into(),
            actions: vec!["pull".into()],
        }],
        registry::registry::now_secs(),
    );

    // grant_type=password, as containerd sends it (scope space-separated, '+' or %20)
    let form = format!(
        "grant_type=password&username=nodeless&password={}&service=nodeless-registry&client_id=containerd-client&scope={}+{}&access_type=offline",
        enc(&login),
        enc("repository:app:pull,push"),
        enc("repository:other:pull"),
    );
    let r = s.post_form(&form).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.headers["cache-control"], "no-store");
    let j = r.json();
    let access = j["access_token"].as_str().unwrap().to_string();
    assert_eq!(j["token"], j["access_token"]);
    assert!(j["expires_in"].as_u64().unwrap() > 3600);
    let issued = j["issued_at"].as_str().unwrap();
    assert!(
        issued.len() == 20 && issued.ends_with('Z') && issued.starts_with("20"),
        "{issued}"
    );
    // only what the login password grants survives the narrowing
    assert_eq!(j["scope"], "repository:app:pull");
    let refresh = j["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh, access);

    // the access token works as a Bearer token for what it grants, and no more
    let bearer = format!("Bearer {access}");
    let r = s
        .send(
            Method::GET,
            "/v2/app/tags/list",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = s
        .send(
            Method::GET,
            "/v2/other/tags/list",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );

    // a refresh token is no credential for the API itself, as Bearer or as Basic password
    for auth in [format!("Bearer {refresh}"), s.basic(&refresh)] {
        let r = s
            .send(
                Method::GET,
                "/v2/app/tags/list",
                &[("authorization", &auth)],
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{auth}");
    }

    // grant_type=refresh_token: a new access token; the same refresh token back with offline
    let r = s
        .post_form(&format!(
            "grant_type=refresh_token&refresh_token={}&service=nodeless-registry&client_id=docker&scope={}&access_type=offline",
            enc(&refresh),
            enc("repository:app:pull")
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let j = r.json();
    assert_eq!(j["scope"], "repository:app:pull");
    assert_eq!(j["refresh_token"].as_str().unwrap(), refresh);
    let again = format!("Bearer {}", j["access_token"].as_str().unwrap());
    let r = s
        .send(
            Method::GET,
            "/v2/app/tags/list",
            &[("authorization", &again)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    // without access_type=offline: no refresh token in the answer
    let r = s
        .post_form(&format!(
            "grant_type=refresh_token&refresh_token={}&service=nodeless-registry&client_id=docker",
            enc(&refresh)
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.json().get("refresh_token").is_none());

    // the admin password through the password grant yields a token for any repository
    let r = s
        .post_form(&format!(
            "grant_type=password&username=admin&password={}&service=nodeless-registry&client_id=t&scope={}",
            enc(&s.admin_password()),
            enc("repository:other:pull,push")
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["scope"], "repository:other:pull,push");

    // GET /token still works, and gives a refresh token with offline_token=true
    let r = s
        .send(
            Method::GET,
            "/token?service=nodeless-registry&scope=repository:app:pull&offline_token=true&client_id=t",
            &[("authorization", &s.basic(&login))],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let j = r.json();
    assert_eq!(j["scope"], "repository:app:pull");
    assert!(j["issued_at"].is_string());
    let get_refresh = j["refresh_token"].as_str().unwrap();
    let r = s
        .post_form(&format!(
            "grant_type=refresh_token&refresh_token={}&service=nodeless-registry&client_id=t",
            enc(get_refresh)
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = s.send(Method::GET, "/token", &[], "").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn oauth2_bad_requests() {
    let s = serve().await;
    let pw = enc(&s.admin_password());
    let base = "service=nodeless-registry&client_id=t";
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            format!("grant_type=authorization_code&code=x&{base}"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            format!("grant_type=client_credentials&{base}"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            format!("username=u&password={pw}&{base}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("grant_type=password&username=u&password={pw}&service=nodeless-registry"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("grant_type=password&username=u&password={pw}&client_id=t"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("grant_type=password&username=u&password={pw}&service=elsewhere&client_id=t"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("grant_type=password&username=u&{base}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("grant_type=password&username=u&password={pw}&access_type=sometimes&{base}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("grant_type=password&username=u&password=wrong&{base}"),
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            format!("grant_type=refresh_token&{base}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            format!("grant_type=refresh_token&refresh_token=nlr1.forged.x&{base}"),
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
    ];
    for (form, status, code) in cases {
        let r = s.post_form(&form).await;
        assert_eq!(r.status, status, "{form}: {:?}", r.body);
        assert_eq!(r.json()["error"], code, "{form}");
        assert!(r.json()["error_description"].is_string());
        assert!(r.json().get("access_token").is_none());
    }
    // an access token is not a refresh token
    let access = s
        .reg
        .authority()
        .login_token("u", vec![], registry::registry::now_secs());
    let r = s
        .post_form(&format!(
            "grant_type=refresh_token&refresh_token={}&{base}",
            enc(&access)
        ))
        .await;
    assert_eq!(r.json()["error"], "invalid_grant");
    // not a form
    let r = s
        .send(
            Method::POST,
            "/token",
            &[("content-type", "application/json")],
            "{\"grant_type\":\"password\"}",
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"], "invalid_request");
    // bad credentials in an Authorization header: 401 invalid_client
    let r = s
        .send(
            Method::POST,
            "/token",
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", &s.basic("wrong")),
            ],
            &format!("grant_type=password&username=u&password={pw}&{base}"),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
    assert!(r.headers.contains_key("www-authenticate"));
}

/// Push a config and a layer to `repo` and return an OCI manifest referencing them.
async fn image(s: &Http, auth: &str, repo: &str, seed: &str) -> Vec<u8> {
    let mut descs = Vec::new();
    for data in [format!("{{\"seed\":\"{seed}\"}}"), format!("layer {seed}")] {
        let d = Digest::sha256_of(data.as_bytes());
        let r = s
            .send(
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
                &[
                    ("authorization", auth),
                    ("content-type", "application/octet-stream"),
                ],
                &data,
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        descs.push((d, data.len()));
    }
    common::oci_manifest(&descs[0].0, descs[0].1, &descs[1..], None)
}

async fn tags(s: &Http, auth: &str, repo: &str) -> Vec<String> {
    let r = s
        .send(
            Method::GET,
            &format!("/v2/{repo}/tags/list"),
            &[("authorization", auth)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    serde_json::from_value(r.json()["tags"].clone()).unwrap()
}

#[tokio::test]
async fn tag_parameters_on_a_push_by_digest() {
    let s = serve().await;
    let auth = s.basic(&s.admin_password());
    s.reg
        .create_repository(&RepoName::parse("app").unwrap(), TagMutability::Mutable)
        .await
        .unwrap();
    s.reg
        .create_repository(
            &RepoName::parse("frozen").unwrap(),
            TagMutability::Immutable,
        )
        .await
        .unwrap();
    let ct = registry::manifest::OCI_MANIFEST;
    let m1 = image(&s, &auth, "app", "1").await;
    let d1 = Digest::sha256_of(&m1);
    let put = |repo: &'static str, query: String, body: Vec<u8>| {
        let (s, auth) = (&s, auth.clone());
        async move {
            s.send(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{}{query}", Digest::sha256_of(&body)),
                &[("authorization", &auth), ("content-type", ct)],
                std::str::from_utf8(&body).unwrap(),
            )
            .await
        }
    };

    // four tags at once: 201, one OCI-Tag header per tag, all of them listed
    let r = put(
        "app",
        "?tag=1.2.3&tag=1.2&tag=1&tag=latest".into(),
        m1.clone(),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.headers["docker-content-digest"], d1.to_string());
    let oci_tags: Vec<&str> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(oci_tags, ["1.2.3", "1.2", "1", "latest"]);
    assert_eq!(
        tags(&s, &auth, "app").await,
        ["1", "1.2", "1.2.3", "latest"]
    );
    for t in ["1.2.3", "latest"] {
        let r = s
            .send(
                Method::GET,
                &format!("/v2/app/manifests/{t}"),
                &[("authorization", &auth), ("accept", ct)],
                "",
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body.as_ref(), m1.as_slice());
    }
    // without tag parameters: no OCI-Tag header, nothing tagged
    let m2 = image(&s, &auth, "app", "2").await;
    let r = put("app", String::new(), m2.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(!r.headers.contains_key("oci-tag"));
    // mutable repository: a tag moves
    let r = put("app", "?tag=latest".into(), m2.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers["oci-tag"], "latest");
    let r = s
        .send(
            Method::HEAD,
            "/v2/app/manifests/latest",
            &[("authorization", &auth), ("accept", ct)],
            "",
        )
        .await;
    assert_eq!(
        r.headers["docker-content-digest"],
        Digest::sha256_of(&m2).to_string()
    );

    // bad tags: TAG_INVALID, and nothing is stored, not even the valid tags of the same request
    let m3 = image(&s, &auth, "app", "3").await;
    for q in [
        "?tag=ok&tag=-bad",
        "?tag=a/b",
        "?tag=",
        "?tag=%2E%2E",
        &format!("?tag={}", "x".repeat(129)),
    ] {
        let r = put("app", q.to_string(), m3.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        assert_eq!(r.json()["errors"][0]["code"], "TAG_INVALID", "{q}");
    }
    assert!(!tags(&s, &auth, "app").await.contains(&"ok".to_string()));
    let r = s
        .send(
            Method::HEAD,
            &format!("/v2/app/manifests/{}", Digest::sha256_of(&m3)),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // too many tags: 414
    let many: String = (0..=registry::http::MAX_TAGS_PER_PUT)
        .map(|i| format!("&tag=t{i}"))
        .collect();
    let r = put("app", format!("?{}", &many[1..]), m3.clone()).await;
    assert_eq!(r.status, StatusCode::URI_TOO_LONG);
    // exactly ten work
    let ten: String = (0..10).map(|i| format!("&tag=t{i}")).collect();
    let r = put("app", format!("?{}", &ten[1..]), m3.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers.get_all("oci-tag").iter().count(), 10);

    // IMMUTABLE repository: new tags are fine, re-pushing the same digest under them too,
    // but moving any one of them refuses the whole request
    let f1 = image(&s, &auth, "frozen", "f1").await;
    let f2 = image(&s, &auth, "frozen", "f2").await;
    let r = put("frozen", "?tag=v1&tag=stable".into(), f1.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = put("frozen", "?tag=v1&tag=stable".into(), f1.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = put("frozen", "?tag=v2&tag=stable".into(), f2.clone()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["errors"][0]["code"], "TAG_INVALID");
    assert!(
        r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("stable")
    );
    assert_eq!(tags(&s, &auth, "frozen").await, ["stable", "v1"]);
    let r = s
        .send(
            Method::HEAD,
            &format!("/v2/frozen/manifests/{}", Digest::sha256_of(&f2)),
            &[("authorization", &auth)],
            "",
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "a refused push leaves nothing"
    );
    // a tag reference plus tag parameters: all of them, the reference's first
    let r = s
        .send(
            Method::PUT,
            "/v2/frozen/manifests/v2?tag=v2.0",
            &[("authorization", &auth), ("content-type", ct)],
            std::str::from_utf8(&f2).unwrap(),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let oci_tags: Vec<&str> = r
        .headers
        .get_all("oci-tag")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert_eq!(oci_tags, ["v2", "v2.0"]);
    assert_eq!(
        tags(&s, &auth, "frozen").await,
        ["stable", "v1", "v2", "v2.0"]
    );
}
