//! Benchmark: this registry against Debian's `docker-registry` (distribution 2.8), both on loopback
//! over plain HTTP with filesystem storage in temporary directories, driven by the same client.
//!
//! ```text
//! cargo run --release -p registry --example bench [-- BLOB_MIB BLOBS SMALL_PUSHES MANIFEST_GETS CONCURRENCY MB_OPS]
//! ```
//!
//! Workloads: push BLOBS blobs of BLOB_MIB MiB (POST + PUT ?digest=, the way docker pushes a layer),
//! pull them back (three passes: the best pass, as the ceiling is a best of 10, and the mean), push
//! SMALL_PUSHES images (a 1 KiB layer, a config and a manifest each), and
//! MANIFEST_GETS manifest fetches by tag with CONCURRENCY requests in flight (rate, p50, p99).
//! Then MB_OPS pushes of distinct 1 MiB blobs and MB_OPS pulls of 1 MiB blobs, each at 1 and 8
//! requests in flight (rate and p99 per request; a push is POST + PUT).
//!
//! As a ceiling for pulls, the program measures the machine's loopback + page-cache limit before and
//! after the registries (the higher counts): a trivial std server sends a cached 100 MiB file over a
//! loopback TCP socket to a client that reads it to EOF with a 1 MiB buffer, five times with
//! `std::io::copy` and five times with a 1 MiB read/write loop; the best transfer counts. Pull rates
//! are also shown as a % of it. The client counts response bytes as they arrive (it keeps no copy).
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

/// The machine's loopback + page-cache limit: a cached `mib` MiB file sent over a loopback
/// TCP socket by a trivial std server, read to EOF by a std client; best MiB/s of `runs`.
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
    // two ways to send, `runs` times each: `std::io::copy` (std's own file-to-socket path) and a
    // read/write loop with a 1 MiB buffer; the best transfer of either is the ceiling
    let server = std::thread::spawn(move || {
        let mut big = vec![0u8; 1 << 20];
        for i in 0..2 * runs {
            let (mut s, _) = listener.accept().unwrap();
            let mut f = std::fs::File::open(&server_path).unwrap();
            if i % 2 == 0 {
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
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..2 * runs {
        let start = Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut got = 0usize;
        loop {
            let k = s.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            got += k;
        }
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
    // pull them PULL_PASSES times: the best pass (as the ceiling is a best of 10) and the mean
    let mut passes = Vec::new();
    for _ in 0..PULL_PASSES {
        let start = Instant::now();
        for d in &digests {
            let (st, _, len) = c
                .request_counting(Method::GET, &format!("/v2/{repo}/blobs/{d}"), &[])
                .await
                .unwrap();
            assert_eq!(st, 200);
            assert_eq!(len, (blob_mib as u64) << 20);
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
        let (cc, ds) = (c.clone(), mb_digests.clone());
        let (rate, lat) = concurrent(mb_ops, n, move |i| {
            let (c, ds) = (cc.clone(), ds.clone());
            async move {
                let (st, _, len) = c
                    .request_counting(
                        Method::GET,
                        &format!("/v2/bench/app/blobs/{}", ds[i % ds.len()]),
                        &[],
                    )
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

    // ours
    let ours_dir = tempfile::tempdir().unwrap();
    let reg = Arc::new(
        registry::Registry::open_with(
            ours_dir.path(),
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
    let ours = Target {
        name: "nodeless",
        client: AdminClient::new(
            &format!("http://127.0.0.1:{port}"),
            reg.authority().admin_password(),
            None,
        )
        .unwrap(),
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
        "loopback + page-cache limit (cached 100 MiB file over loopback TCP, best of 10, before / after): {ceiling_before:.1} / {ceiling_after:.1} MiB/s"
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
}
