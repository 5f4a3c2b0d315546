//! Benchmark: this registry against Debian's `docker-registry` (distribution 2.8), both on loopback
//! over plain HTTP with filesystem storage in temporary directories, driven by the same client.
//!
//! ```text
//! cargo run --release -p registry --example bench [-- BLOB_MIB BLOBS SMALL_PUSHES MANIFEST_GETS CONCURRENCY]
//! ```
//!
//! Workloads: push BLOBS blobs of BLOB_MIB MiB (POST + PUT ?digest=, the way docker pushes a layer),
//! pull them back, push SMALL_PUSHES images (a 1 KiB layer, a config and a manifest each), and
//! MANIFEST_GETS manifest fetches by tag with CONCURRENCY requests in flight. Our registry checks a
//! Basic credential on every request (docker-registry runs without auth); both fsync nothing
//! differently from what they do by default (ours fsyncs every acknowledged write).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
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
) -> Vec<f64> {
    let c = &t.client;
    let repo = "bench/app";
    let mut out = Vec::new();
    // big blobs
    let datas: Vec<Bytes> = (0..blobs)
        .map(|i| {
            let mut v = vec![0u8; blob_mib << 20];
            for (j, b) in v.iter_mut().enumerate() {
                *b = ((j as u64)
                    .wrapping_mul(2654435761)
                    .wrapping_add(i as u64 * 7919)
                    >> 11) as u8;
            }
            Bytes::from(v)
        })
        .collect();
    let total = blobs * (blob_mib << 20);
    let start = Instant::now();
    let mut digests = Vec::new();
    for d in &datas {
        digests.push(push_blob(c, repo, d.clone()).await);
    }
    out.push(mib_s(total, start.elapsed()));
    let start = Instant::now();
    for d in &digests {
        let (st, _, body) = c
            .request_with(
                Method::GET,
                &format!("/v2/{repo}/blobs/{d}"),
                &[],
                Bytes::new(),
            )
            .await
            .unwrap();
        assert_eq!(st, 200);
        assert_eq!(body.len(), blob_mib << 20);
    }
    out.push(mib_s(total, start.elapsed()));
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
    let start = Instant::now();
    let per = gets / conc;
    let mut tasks = Vec::new();
    for w in 0..conc {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for k in 0..per {
                let tag = (w * per + k) % small.max(1);
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
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    out.push((per * conc) as f64 / start.elapsed().as_secs_f64());
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
    let (blob_mib, blobs, small, gets, conc) =
        (arg(0, 16), arg(1, 8), arg(2, 200), arg(3, 2000), arg(4, 8));

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
        "workload: {blobs} x {blob_mib} MiB blobs, {small} small image pushes, {gets} manifest GETs ({conc} in flight)"
    );
    let mut results = Vec::new();
    for t in &targets {
        results.push(run(t, blob_mib, blobs, small, gets, conc).await);
    }
    let rows = [
        "blob push MiB/s",
        "blob pull MiB/s",
        "image pushes/s",
        "manifest GETs/s",
    ];
    print!("{:<18}", "");
    for t in &targets {
        print!("{:>18}", t.name);
    }
    if targets.len() == 2 {
        print!("{:>12}", "ratio");
    }
    println!();
    for (i, row) in rows.iter().enumerate() {
        print!("{row:<18}");
        for r in &results {
            print!("{:>18.1}", r[i]);
        }
        if results.len() == 2 {
            print!("{:>12.2}", results[0][i] / results[1][i]);
        }
        println!();
    }
}
