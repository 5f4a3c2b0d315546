//! Benchmark: this registry against Debian's `docker-registry` (distribution 2.8), both on loopback
//! over plain HTTP with filesystem storage in temporary directories, driven by the same client.
//!
//! ```text
//! cargo run --release -p registry --example bench [-- BLOB_MIB BLOBS SMALL_PUSHES MANIFEST_GETS CONCURRENCY MB_OPS]
//! ```
//!
//! Workloads: push BLOBS blobs of BLOB_MIB MiB (POST + PUT ?digest=, the way docker pushes a layer),
//! pull them back (three passes: the best pass, as the ceiling is a best of 15, and the mean), push
//! SMALL_PUSHES images (a 1 KiB layer, a config and a manifest each), and
//! MANIFEST_GETS manifest fetches by tag with CONCURRENCY requests in flight (rate, p50, p99).
//! Then MB_OPS pushes of distinct 1 MiB blobs and MB_OPS pulls of 1 MiB blobs, each at 1 and 8
//! requests in flight (rate and p99 per request; a push is POST + PUT).
//!
//! As a ceiling for pulls, the program measures the machine's loopback + page-cache limit before and
//! after the registries (the higher counts): a trivial std server sends a cached 100 MiB file over a
//! loopback TCP socket to a client that reads it to EOF with a 1 MiB buffer, five times with
//! `std::io::copy` and five times with a 1 MiB read/write loop; the best transfer counts. Pull rates
//! are also shown as a % of it. Blob pulls (from both registries) use that same reader: a blocking
//! std socket, a plain `GET`, the head parsed and the body read to its `Content-Length` with 1 MiB
//! reads into one reused buffer, bytes counted, not kept; pushes and manifests go through the hyper
//! client. Our registry runs on a tokio runtime of its own (two worker threads), apart from the
//! client's, as docker-registry runs in a process of its own.
//! Our registry checks a Basic credential on every request (docker-registry runs without auth); both
//! run with their default durability (ours fsyncs every acknowledged push, its data and its
//! directory entries).
#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use registry::client::AdminClient;
use registry::digest::Digest;

struct Target {
    name: &'static str,
    client: AdminClient,
    port: u16,
    /// The `Authorization` header blob pulls present, if any.
    authorization: Option<String>,
}

impl Target {
    /// Pull a blob with [`get_counting`] (in a blocking thread): its status and length.
    async fn pull(&self, path: String) -> (u16, usize) {
        let (port, auth) = (self.port, self.authorization.clone());
        tokio::task::spawn_blocking(move || get_counting(port, auth.as_deref(), &path))
            .await
            .unwrap()
    }
}

fn path_of(location: &str) -> String {
    match location.find("://") {
        Some(i) => {
            let rest = &location[i + 3..];
            rest.find('/')
                .map(|j| rest[j..].to_string())
                .unwrap_or_default()
        }
        None => location.to_string(),
    }
}

async fn push_blob(c: &AdminClient, repo: &str, data: Bytes) -> Digest {
    let d = Digest::sha256_of(&data);
    let (st, h, body) = c
        .request_with(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            Bytes::new(),
        )
        .await
        .unwrap();
    assert_eq!(st, 202, "{body:?}");
    let loc = path_of(h["location"].to_str().unwrap());
    let sep = if loc.contains('?') { '&' } else { '?' };
    let len = data.len().to_string();
    let (st, _, body) = c
        .request_with(
            Method::PUT,
            &format!("{loc}{sep}digest={d}"),
            &[
                ("content-type", "application/octet-stream"),
                ("content-length", &len),
            ],
            data,
        )
        .await
        .unwrap();
    assert_eq!(st, 201, "{body:?}");
    d
}

/// Passes over the big blobs when pulling them.
const PULL_PASSES: usize = 3;

/// Deterministic pseudo-random bytes, distinct per `seed`.
fn blob(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; len];
    for (j, b) in v.iter_mut().enumerate() {
        *b = ((j as u64)
            .wrapping_mul(2654435761)
            .wrapping_add(seed.wrapping_mul(7919))
            >> 11) as u8;
    }
    // make blobs with nearby seeds differ from the first byte on
    v[..8].copy_from_slice(&seed.to_le_bytes());
    Bytes::from(v)
}

/// The `q` quantile (0..=1) of sorted latencies, in milliseconds.
fn pct_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `op(0..n)` with `conc` operations in flight; returns (ops/s, sorted latencies).
async fn concurrent<F, Fut>(n: usize, conc: usize, op: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (next, op) = (next.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return lat;
                }
                let t = Instant::now();
                op(i).await;
                lat.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

thread_local! {
    /// The 1 MiB buffer every body is read into (the ceiling's client and the blob pulls alike).
    static READ_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; 1 << 20]);
}

/// Read `s` until EOF or until `limit` bytes, counting them, with the 1 MiB read buffer.
fn read_counting(s: &mut std::net::TcpStream, limit: usize) -> usize {
    READ_BUF.with_borrow_mut(|buf| {
        let mut got = 0usize;
        while got < limit {
            let k = s.read(buf).unwrap();
            if k == 0 {
                break;
            }
            got += k;
        }
        got
    })
}

/// `GET path` over a new loopback connection with a blocking std client that reads the body the
/// way the ceiling's client does (1 MiB reads, bytes counted, not kept): the status and the body
/// length. Used for blob pulls from both registries.
fn get_counting(port: u16, authorization: Option<&str>, path: &str) -> (u16, usize) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = authorization
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{auth}\r\n").as_bytes())
        .unwrap();
    // the head, and whatever body bytes came with it, into the read buffer
    let (status, len, got) = READ_BUF.with_borrow_mut(|buf| {
        let mut have = 0;
        let end = loop {
            let k = s.read(&mut buf[have..]).unwrap();
            assert!(k > 0, "connection closed before the response head");
            have += k;
            if let Some(i) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(!head.contains("transfer-encoding: chunked"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .unwrap_or_else(|| panic!("no content-length in {head}"))
            .trim()
            .parse()
            .unwrap();
        (status, len, have - end)
    });
    let got = got + read_counting(&mut s, len.saturating_sub(got));
    assert_eq!(got, len, "body shorter than its content-length");
    (status, got)
}

/// The machine's loopback + page-cache limit: a cached `mib` MiB file sent over a loopback
/// TCP socket by a trivial std server, read to EOF by a std client; best MiB/s of `3 * runs`.
fn loopback_ceiling(dir: &std::path::Path, mib: usize, runs: usize) -> f64 {
    let path = dir.join("ceiling.bin");
    {
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = blob(1 << 20, 42);
        for _ in 0..mib {
            f.write_all(&chunk).unwrap();
        }
    }
    // warm the page cache
    std::io::copy(
        &mut std::fs::File::open(&path).unwrap(),
        &mut std::io::sink(),
    )
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_path = path.clone();
    // three ways to send, `runs` times each: `std::io::copy` (std's own file-to-socket path), a
    // read/write loop with a 1 MiB buffer, and that loop on a socket with the 128 KiB send buffer
    // the registry gives loopback peers; the best transfer of any is the ceiling
    let server = std::thread::spawn(move || {
        let mut big = vec![0u8; 1 << 20];
        for i in 0..3 * runs {
            let (mut s, _) = listener.accept().unwrap();
            if i % 3 == 2 {
                use std::os::fd::AsFd;
                let fd = s.as_fd().try_clone_to_owned().unwrap();
                tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
                    .set_send_buffer_size(128 * 1024)
                    .unwrap();
            }
            let mut f = std::fs::File::open(&server_path).unwrap();
            if i % 3 == 0 {
                std::io::copy(&mut f, &mut s).unwrap();
            } else {
                loop {
                    let n = f.read(&mut big).unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&big[..n]).unwrap();
                }
            }
        }
    });
    let mut best = 0f64;
    for _ in 0..3 * runs {
        let start = Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let got = read_counting(&mut s, usize::MAX);
        assert_eq!(got, mib << 20);
        best = best.max(mib_s(got, start.elapsed()));
    }
    server.join().unwrap();
    std::fs::remove_file(&path).unwrap();
    best
}

fn mib_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / 1048576.0 / t.as_secs_f64()
}

async fn run(
    t: &Target,
    blob_mib: usize,
    blobs: usize,
    small: usize,
    gets: usize,
    conc: usize,
    mb_ops: usize,
) -> Vec<f64> {
    let c = &t.client;
    let repo = "bench/app";
    let mut out = Vec::new();
    // big blobs
    let datas: Vec<Bytes> = (0..blobs).map(|i| blob(blob_mib << 20, i as u64)).collect();
    let total = blobs * (blob_mib << 20);
    let start = Instant::now();
    let mut digests = Vec::new();
    for d in &datas {
        digests.push(push_blob(c, repo, d.clone()).await);
    }
    out.push(mib_s(total, start.elapsed()));
    // pull them PULL_PASSES times: the best pass (as the ceiling is a best of 15) and the mean
    let mut passes = Vec::new();
    for _ in 0..PULL_PASSES {
        let start = Instant::now();
        for d in &digests {
            let (st, len) = t.pull(format!("/v2/{repo}/blobs/{d}")).await;
            assert_eq!(st, 200);
            assert_eq!(len, blob_mib << 20);
        }
        passes.push(mib_s(total, start.elapsed()));
    }
    out.push(passes.iter().copied().fold(0.0, f64::max));
    out.push(passes.iter().sum::<f64>() / passes.len() as f64);
    // small images
    let start = Instant::now();
    for i in 0..small {
        let layer = Bytes::from(format!("{i:01024}"));
        let ld = push_blob(c, repo, layer.clone()).await;
        let cfg = Bytes::from(format!(
            r#"{{"os":"linux","architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{ld}"]}},"i":{i}}}"#
        ));
        let cd = push_blob(c, repo, cfg.clone()).await;
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": registry::manifest::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": cfg.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld.to_string(), "size": layer.len()}],
        }))
        .unwrap();
        let (st, _, body) = c
            .request_with(
                Method::PUT,
                &format!("/v2/{repo}/manifests/t{i}"),
                &[("content-type", registry::manifest::OCI_MANIFEST)],
                Bytes::from(m),
            )
            .await
            .unwrap();
        assert_eq!(st, 201, "{body:?}");
    }
    out.push(small as f64 / start.elapsed().as_secs_f64());
    // manifest gets, `conc` in flight
    let per = gets / conc;
    let cc = c.clone();
    let (rate, lat) = concurrent(per * conc, conc, move |i| {
        let c = cc.clone();
        async move {
            let tag = i % small.max(1);
            let (st, _, _) = c
                .request_with(
                    Method::GET,
                    &format!("/v2/bench/app/manifests/t{tag}"),
                    &[("accept", registry::manifest::OCI_MANIFEST)],
                    Bytes::new(),
                )
                .await
                .unwrap();
            assert_eq!(st, 200);
        }
    })
    .await;
    out.extend([rate, pct_ms(&lat, 0.5), pct_ms(&lat, 0.99)]);
    // 1 MiB blob pushes, distinct blobs per phase, then pulls of the first set
    let mut mb_digests = Vec::new();
    for (phase, n) in [1usize, 8].into_iter().enumerate() {
        let set: Arc<Vec<Bytes>> = Arc::new(
            (0..mb_ops)
                .map(|i| blob(1 << 20, 1_000_000 * (phase as u64 + 1) + i as u64))
                .collect(),
        );
        if phase == 0 {
            mb_digests = set.iter().map(|b| Digest::sha256_of(b)).collect();
        }
        let cc = c.clone();
        let (rate, lat) = concurrent(mb_ops, n, move |i| {
            let (c, set) = (cc.clone(), set.clone());
            async move {
                push_blob(&c, "bench/app", set[i].clone()).await;
            }
        })
        .await;
        out.extend([rate, pct_ms(&lat, 0.99)]);
    }
    let mb_digests = Arc::new(mb_digests);
    for n in [1usize, 8] {
        let ds = mb_digests.clone();
        let (port, auth) = (t.port, t.authorization.clone());
        let (rate, lat) = concurrent(mb_ops, n, move |i| {
            let (ds, auth) = (ds.clone(), auth.clone());
            async move {
                let path = format!("/v2/bench/app/blobs/{}", ds[i % ds.len()]);
                let (st, len) =
                    tokio::task::spawn_blocking(move || get_counting(port, auth.as_deref(), &path))
                        .await
                        .unwrap();
                assert_eq!(st, 200);
                assert_eq!(len, 1 << 20);
            }
        })
        .await;
        out.extend([rate, pct_ms(&lat, 0.99)]);
    }
    out
}

async fn wait_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("port {port} never opened");
}

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let arg = |i: usize, d: usize| args.get(i).copied().unwrap_or(d);
    let (blob_mib, blobs, small, gets, conc, mb_ops) = (
        arg(0, 16),
        arg(1, 8),
        arg(2, 200),
        arg(3, 2000),
        arg(4, 8),
        arg(5, 128),
    );
    assert!(conc > 0 && mb_ops > 0, "CONCURRENCY and MB_OPS must be > 0");

    let ceiling_now = || async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        tokio::task::spawn_blocking(move || loopback_ceiling(&path, 100, 5))
            .await
            .unwrap()
    };
    let ceiling_before = ceiling_now().await;

    // ours, on a runtime of its own (two worker threads, as many as the machine's cores), so the
    // server does not share worker threads with the client: like docker-registry, a process of its
    // own, and like the ceiling, whose server and client are separate threads
    let ours_dir = tempfile::tempdir().unwrap();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("registry")
        .enable_all()
        .build()
        .unwrap();
    let ours_path = ours_dir.path().to_path_buf();
    let (port, password) = server_rt
        .spawn(async move {
            let reg = Arc::new(
                registry::Registry::open_with(
                    &ours_path,
                    registry::Config {
                        scheme: "http".into(),
                        ..Default::default()
                    },
                )
                .unwrap(),
            );
            reg.create_repository(
                &registry::names::RepoName::parse("bench/app").unwrap(),
                registry::meta::TagMutability::Mutable,
            )
            .await
            .unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(registry::tls::serve(
                registry::router(reg.clone()),
                listener,
                None,
                std::future::pending(),
            ));
            (port, reg.authority().admin_password().to_string())
        })
        .await
        .unwrap();
    let ours = Target {
        name: "nodeless",
        client: AdminClient::new(&format!("http://127.0.0.1:{port}"), &password, None).unwrap(),
        port,
        authorization: Some({
            use base64::Engine as _;
            let creds =
                base64::engine::general_purpose::STANDARD.encode(format!("nodeless:{password}"));
            format!("Basic {creds}")
        }),
    };

    // docker-registry
    let theirs_dir = tempfile::tempdir().unwrap();
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dport = probe.local_addr().unwrap().port();
    drop(probe);
    let cfg = theirs_dir.path().join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{dport}\n",
            theirs_dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = tokio::process::Command::new("docker-registry")
        .arg("serve")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn();
    let mut targets = vec![ours];
    let _child = match child {
        Ok(c) => {
            wait_port(dport).await;
            targets.push(Target {
                name: "docker-registry",
                client: AdminClient::new(&format!("http://127.0.0.1:{dport}"), "unused", None)
                    .unwrap(),
                port: dport,
                authorization: None,
            });
            Some(c)
        }
        Err(e) => {
            eprintln!("docker-registry not runnable ({e}); measuring nodeless only");
            None
        }
    };

    println!(
        "workload: {blobs} x {blob_mib} MiB blobs, {small} small image pushes, {gets} manifest GETs ({conc} in flight), {mb_ops} x 1 MiB pushes and pulls at 1 and 8 in flight"
    );
    let mut results = Vec::new();
    for t in &targets {
        results.push(run(t, blob_mib, blobs, small, gets, conc, mb_ops).await);
    }
    // measured before and after the registries, the higher one counts (a busy machine only lowers it)
    let ceiling_after = ceiling_now().await;
    let ceiling = ceiling_before.max(ceiling_after);
    println!(
        "loopback + page-cache limit (cached 100 MiB file over loopback TCP, best of 15 (three ways), before / after): {ceiling_before:.1} / {ceiling_after:.1} MiB/s"
    );
    let rows = [
        format!("{blob_mib} MiB push MiB/s"),
        format!("{blob_mib} MiB pull MiB/s best"),
        format!("{blob_mib} MiB pull MiB/s mean"),
        "image pushes/s".to_string(),
        format!("manifest GET/s c{conc}"),
        "manifest GET p50 ms".to_string(),
        "manifest GET p99 ms".to_string(),
        "1MiB push/s c1".to_string(),
        "1MiB push p99 ms c1".to_string(),
        "1MiB push/s c8".to_string(),
        "1MiB push p99 ms c8".to_string(),
        "1MiB pull/s c1".to_string(),
        "1MiB pull p99 ms c1".to_string(),
        "1MiB pull/s c8".to_string(),
        "1MiB pull p99 ms c8".to_string(),
    ];
    let w = 22;
    print!("{:<w$}", "");
    for t in &targets {
        print!("{:>18}", t.name);
    }
    if targets.len() == 2 {
        print!("{:>12}", "ratio");
    }
    println!();
    for (i, row) in rows.iter().enumerate() {
        print!("{row:<w$}");
        for r in &results {
            print!("{:>18.2}", r[i]);
        }
        if results.len() == 2 {
            print!("{:>12.2}", results[0][i] / results[1][i]);
        }
        println!();
    }
    // pull throughput as a share of the loopback + page-cache limit (1 MiB pulls: req/s = MiB/s)
    println!("pull as % of loopback + page-cache limit ({ceiling:.1} MiB/s):");
    for (label, i) in [
        (format!("{blob_mib} MiB pull c1 best"), 1),
        (format!("{blob_mib} MiB pull c1 mean"), 2),
        ("1MiB pull c1".to_string(), 11),
        ("1MiB pull c8".to_string(), 13),
    ] {
        print!("{label:<w$}");
        for r in &results {
            print!("{:>17.1}%", 100.0 * r[i] / ceiling);
        }
        println!();
    }
    drop(targets);
    server_rt.shutdown_background();
}
