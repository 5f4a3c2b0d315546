//! Pulling from the cluster's own registry (the `registry` crate) as agents do: HTTPS with the
//! cluster's CA (learnt at run time with `ImageStore::trust_roots_pem`) and basic credentials
//! (`nodeless` + a pull token) exchanged for a Bearer token. The image is pushed with skopeo.
//! Skips loudly when skopeo is not installed.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use registry::auth::Access;
use registry::meta::TagMutability;
use registry::names::RepoName;
use sandbox::image::{Auth, ImageStore, PullOptions, Source, StoreError, StoreOptions};

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The error and all its causes, one line.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

/// The registry over HTTPS on a loopback port; stops when the sender is dropped.
struct Served {
    reg: Arc<registry::Registry>,
    port: u16,
    ca_pem: String,
    /// A directory with `ca.crt`, for skopeo's `--dest-cert-dir`.
    certs: std::path::PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn serve(dir: &Path) -> Served {
    let reg = Arc::new(
        registry::Registry::open_with(dir.join("registry"), registry::Config::default()).unwrap(),
    );
    let material =
        registry::tls::ensure(&dir.join("tls"), &registry::tls::default_names(&[])).unwrap();
    let certs = dir.join("client-certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), &material.ca_pem).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(registry::tls::serve(
        registry::router(reg.clone()),
        listener,
        Some(registry::tls::server_config(&material).unwrap()),
        async {
            let _ = rx.await;
        },
    ));
    Served {
        reg,
        port,
        ca_pem: material.ca_pem,
        certs,
        _stop: tx,
    }
}

fn basic(password: &str) -> PullOptions {
    PullOptions {
        auth: Auth::Basic {
            username: "nodeless".into(),
            password: password.into(),
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_the_cluster_registry_with_its_ca_and_basic_auth() {
    if !have("skopeo") {
        assert!(
            std::env::var_os("NODELESS_REQUIRE_SANDBOX").is_none(),
            "skopeo is required (NODELESS_REQUIRE_SANDBOX is set; apt-get install -y skopeo)"
        );
        eprintln!("SKIPPED: skopeo is not installed (apt-get install -y skopeo)");
        return;
    }
    let (_d, dir) = common::data_dir();
    let srv = serve(&dir).await;
    srv.reg
        .create_repository(
            &RepoName::parse("team/busybox").unwrap(),
            TagMutability::Mutable,
        )
        .await
        .unwrap();

    // Push as an admin would.
    let layout = dir.join("layout");
    let built = common::busybox_layout(&layout, &["sh"]);
    let out = tokio::process::Command::new("skopeo")
        .arg("--insecure-policy")
        .arg("copy")
        .arg("--dest-cert-dir")
        .arg(&srv.certs)
        .arg("--dest-creds")
        .arg(format!("nodeless:{}", srv.reg.authority().admin_password()))
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://127.0.0.1:{}/team/busybox:1", srv.port))
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What `nodeless server` puts in the kube-system/nodeless-registry Secret: a pull token.
    let pull_token = srv.reg.authority().login_token(
        "nodeless",
        vec![Access {
            repository: "team/busybox".into(),
            actions: vec!["pull".into()],
        }],
        registry::registry::now_secs(),
    );
    let source: Source = format!("127.0.0.1:{}/team/busybox:1", srv.port)
        .parse()
        .unwrap();
    let store = ImageStore::open(dir.join("images"), StoreOptions::default()).unwrap();

    // The registry's CA is not trusted yet: a certificate error (not a downgrade to plain HTTP).
    let err = store.pull(&source, &basic(&pull_token)).await.unwrap_err();
    let text = chain(&err);
    assert!(matches!(err, StoreError::Registry { .. }), "{text}");
    assert!(text.contains("certificate"), "{text}");
    eprintln!("untrusted CA: {text}");
    assert!(store.get(&source).unwrap().is_none());

    // Garbage is refused and changes nothing.
    assert!(matches!(
        store.trust_roots_pem(b"not a certificate"),
        Err(StoreError::Certificate(_))
    ));
    assert!(matches!(
        store.trust_roots_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
        Err(StoreError::Certificate(_))
    ));
    store.trust_roots_pem(srv.ca_pem.as_bytes()).unwrap();
    // Learning the same root again is harmless.
    store.trust_roots_pem(srv.ca_pem.as_bytes()).unwrap();

    // A wrong password: the token exchange is refused.
    let err = store.pull(&source, &basic("wrong")).await.unwrap_err();
    let text = chain(&err);
    assert!(text.contains("UNAUTHORIZED"), "{text}");
    eprintln!("wrong password: {text}");

    // No credentials at all: refused as well.
    let err = store
        .pull(&source, &PullOptions::default())
        .await
        .unwrap_err();
    let text = chain(&err);
    // oci-client: "Not authorized: url https://..." (the manifest request's 401).
    assert!(text.to_lowercase().contains("not authorized"), "{text}");
    assert!(store.get(&source).unwrap().is_none());

    // The CA and the pull token: the image comes down, verified and unpacked.
    let img = store.pull(&source, &basic(&pull_token)).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
    assert_eq!(img.layers, built.layer_digests);
    assert!(
        store
            .layer_dir(&img.layers[0])
            .join("bin/busybox")
            .is_file()
    );
    assert_eq!(
        img.config.config.as_ref().unwrap().cmd.as_deref(),
        Some(&["sh".to_owned()][..])
    );
    assert_eq!(store.get(&source).unwrap(), Some(img));
}

#[tokio::test]
async fn plain_http_registries_on_loopback_still_work() {
    // A plain-HTTP registry on loopback: the HTTPS attempt fails, plain HTTP is used.
    let reg = common::Registry::start();
    let (_d, dir) = common::data_dir();
    let built = common::busybox_layout(&dir.join("layout"), &["sh"]);
    reg.push("lib/busybox", "1", &built).await;
    let store = ImageStore::open(dir.join("images"), StoreOptions::default()).unwrap();
    let source: Source = format!("{}/lib/busybox:1", reg.addr).parse().unwrap();
    let img = store.pull(&source, &PullOptions::default()).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
}

/// A bcrypt hash of `password` for an htpasswd file, made with what the machine has (Python's
/// `crypt` or `mkpasswd`); `None` when neither can.
fn bcrypt(password: &str) -> Option<String> {
    let tries: [(&str, Vec<&str>); 2] = [
        (
            "python3",
            vec![
                "-W",
                "ignore",
                "-c",
                "import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH)))",
                password,
            ],
        ),
        ("mkpasswd", vec!["-m", "bcrypt", password]),
    ];
    tries.into_iter().find_map(|(tool, args)| {
        let out = Command::new(tool).args(&args).output().ok()?;
        let hash = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && hash.starts_with("$2")).then_some(hash)
    })
}

fn basic_as(user: &str, password: &str) -> PullOptions {
    PullOptions {
        auth: Auth::Basic {
            username: user.into(),
            password: password.into(),
        },
        ..Default::default()
    }
}

/// Nothing of any image in the store at `images`: no blob, layer, record or leftover.
fn assert_nothing_stored(images: &Path) {
    for d in ["blobs/sha256", "layers", "records", "tmp"] {
        let left: Vec<_> = std::fs::read_dir(images.join(d))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "{d}: {left:?}");
    }
}

#[tokio::test]
async fn basic_auth_against_a_registry_with_htpasswd() {
    let Some(hash) = bcrypt("s3cret pass") else {
        assert!(
            std::env::var_os("NODELESS_REQUIRE_SANDBOX").is_none(),
            "python3 with crypt or mkpasswd is required to make a bcrypt htpasswd entry"
        );
        eprintln!("SKIPPED: no way to make a bcrypt hash (python3 crypt, mkpasswd)");
        return;
    };
    let reg = common::Registry::start_with_htpasswd("alice", "s3cret pass", &hash);
    let (_d, dir) = common::data_dir();
    let built = common::busybox_layout(&dir.join("layout"), &["sh"]);
    reg.push("private/busybox", "1", &built).await;
    let store = ImageStore::open(dir.join("images"), StoreOptions::default()).unwrap();
    let source: Source = format!("{}/private/busybox:1", reg.addr).parse().unwrap();

    for (what, opts) in [
        ("wrong password", basic_as("alice", "s3cret pasS")),
        ("unknown user", basic_as("bob", "s3cret pass")),
        ("no credentials", PullOptions::default()),
    ] {
        let err = store.pull(&source, &opts).await.unwrap_err();
        let text = chain(&err);
        eprintln!("{what}: {text}");
        assert!(matches!(err, StoreError::Registry { .. }), "{what}: {text}");
        let lower = text.to_lowercase();
        assert!(
            lower.contains("unauthorized") || lower.contains("not authorized"),
            "{what}: {text}"
        );
        assert!(store.get(&source).unwrap().is_none(), "{what}");
        assert_nothing_stored(&dir.join("images"));
    }

    let img = store
        .pull(&source, &basic_as("alice", "s3cret pass"))
        .await
        .unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest);
    assert_eq!(img.layers, built.layer_digests);
    assert!(
        store
            .layer_dir(&img.layers[0])
            .join("bin/busybox")
            .is_file()
    );
    assert_eq!(store.get(&source).unwrap(), Some(img));
}

/// What a [`TokenFront`] saw.
#[derive(Default)]
struct Seen {
    /// Query strings of token requests.
    token_queries: Vec<String>,
    /// Whether any token request carried credentials.
    token_credentials: bool,
    /// Registry requests refused for want of the token.
    refused: usize,
    /// Registry requests passed on with the token.
    passed: usize,
}

/// A front for a plain `docker-registry` that wants anonymous Bearer tokens the way Docker Hub
/// does: a request without the token gets `401` with `WWW-Authenticate: Bearer realm=...,
/// service=...,scope=...`; `GET /token` hands the token out to anyone; requests with it go
/// through. HTTP/1.1, one request per connection (`Connection: close`), GET and HEAD only.
struct TokenFront {
    addr: String,
    seen: Arc<std::sync::Mutex<Seen>>,
}

const FRONT_TOKEN: &str = "anonymous-pull-token-1";
const FRONT_SERVICE: &str = "front.test";

impl TokenFront {
    async fn start(upstream: String) -> TokenFront {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
        let (a, s) = (addr.clone(), seen.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Self::handle(conn, upstream.clone(), a.clone(), s.clone()));
            }
        });
        TokenFront { addr, seen }
    }

    async fn handle(
        mut conn: tokio::net::TcpStream,
        upstream: String,
        me: String,
        seen: Arc<std::sync::Mutex<Seen>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            let Ok(n) = conn.read(&mut buf).await else {
                return;
            };
            // EOF, a TLS hello (the client tries HTTPS first) or garbage: hang up.
            if n == 0 || head.is_empty() && buf[0] == 0x16 || head.len() > 65536 {
                return;
            }
            head.extend_from_slice(&buf[..n]);
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
        };
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let request = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let target = request.split(' ').nth(1).unwrap_or("/").to_owned();
        let authorization = headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone());
        let reply = |status: &str, extra: String, body: String| {
            format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
                body.len()
            )
        };
        let response = if let Some(query) = target.strip_prefix("/token") {
            let mut s = seen.lock().unwrap();
            s.token_queries
                .push(query.trim_start_matches('?').to_owned());
            s.token_credentials |= authorization.is_some();
            reply(
                "200 OK",
                String::new(),
                format!(r#"{{"token":"{FRONT_TOKEN}","expires_in":300}}"#),
            )
        } else if authorization.as_deref() == Some(&format!("Bearer {FRONT_TOKEN}")) {
            seen.lock().unwrap().passed += 1;
            let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            let mut forward = format!("{request}\r\n");
            for (k, v) in &headers {
                if !matches!(k.as_str(), "connection" | "authorization" | "host") {
                    forward.push_str(&format!("{k}: {v}\r\n"));
                }
            }
            forward.push_str(&format!("host: {upstream}\r\nconnection: close\r\n\r\n"));
            if up.write_all(forward.as_bytes()).await.is_err() {
                return;
            }
            let _ = tokio::io::copy(&mut up, &mut conn).await;
            let _ = conn.shutdown().await;
            return;
        } else {
            seen.lock().unwrap().refused += 1;
            // /v2/<name>/(manifests|blobs)/<ref>: the scope a pull needs.
            let scope = target
                .strip_prefix("/v2/")
                .and_then(|p| {
                    p.rsplit_once("/manifests/")
                        .or_else(|| p.rsplit_once("/blobs/"))
                })
                .map(|(name, _)| format!(",scope=\"repository:{name}:pull\""))
                .unwrap_or_default();
            reply(
                "401 Unauthorized",
                format!(
                    "WWW-Authenticate: Bearer realm=\"http://{me}/token\",service=\"{FRONT_SERVICE}\"{scope}\r\n"
                ),
                r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
                    .to_owned(),
            )
        };
        let _ = conn.write_all(response.as_bytes()).await;
        let _ = conn.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_bearer_tokens_as_docker_hub_hands_them_out() {
    let reg = common::Registry::start();
    let (_d, dir) = common::data_dir();
    let built = common::build(
        &[
            (common::busybox_layer(), common::Compression::Gzip),
            (common::top_layer(), common::Compression::Zstd),
        ],
        &["sh"],
        true,
    );
    reg.push("library/busybox", "1", &built).await;
    let front = TokenFront::start(reg.addr.clone()).await;

    let store = ImageStore::open(dir.join("images"), StoreOptions::default()).unwrap();
    let source: Source = format!("{}/library/busybox:1", front.addr).parse().unwrap();
    let img = store.pull(&source, &PullOptions::default()).await.unwrap();
    assert_eq!(img.manifest_digest, built.manifest_digest, "index resolved");
    assert_eq!(img.layers, built.layer_digests);
    assert!(
        store
            .layer_dir(&img.layers[0])
            .join("bin/busybox")
            .is_file()
    );
    let seen = front.seen.lock().unwrap();
    assert!(seen.refused >= 1, "the client was challenged first");
    assert!(!seen.token_credentials, "the token was fetched anonymously");
    eprintln!("token requests: {:?}", seen.token_queries);
    assert!(
        seen.token_queries.iter().any(|q| {
            q.contains(&format!("service={FRONT_SERVICE}"))
                && (q.contains("scope=repository:library/busybox:pull")
                    || q.contains("scope=repository%3Alibrary%2Fbusybox%3Apull"))
        }),
        "{:?}",
        seen.token_queries
    );
    // The index, the manifest, the config and both layers went through with the token.
    assert!(seen.passed >= 5, "{}", seen.passed);
}
