//! Write throughput and latency of the SQLite backend next to a bare etcd, on the same disk.
//!
//! ```text
//! cargo run -p store --release --example store_bench [-- --seconds 5 --value-size 512 --dir /var/tmp]
//! ```
//!
//! Every write is a `create` of a new key, acknowledged only once durable (SQLite: WAL fsync with
//! group commit; etcd: its own WAL fsync). For each concurrency (1, 16, 64 writer tasks) it prints
//! writes per second and the p50/p99 latency of one write. etcd (the `etcd` binary, 3.4 on
//! Debian) is started by the program on loopback with its data in a temp dir next to SQLite's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::Backend;
use store::etcd::{Etcd, LocalEtcd};
use store::sqlite::Sqlite;

const CONCURRENCY: [usize; 3] = [1, 16, 64];

struct Args {
    seconds: f64,
    value_size: usize,
    dir: Option<PathBuf>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 3.0,
        value_size: 256,
        dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value().parse().expect("--seconds: a number"),
            "--value-size" => a.value_size = value().parse().expect("--value-size: a number"),
            "--dir" => a.dir = Some(PathBuf::from(value())),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

#[derive(Clone, Copy)]
struct Figures {
    writes_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

async fn run(backend: Arc<dyn Backend>, tag: &str, concurrency: usize, args: &Args) -> Figures {
    let value = vec![b'v'; args.value_size];
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (backend, value, tag) = (backend.clone(), value.clone(), tag.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let key = format!("/bench/{tag}/{concurrency}/{t}/{i}");
                    let t0 = Instant::now();
                    backend
                        .create(&key, value.clone())
                        .await
                        .expect("write failed");
                    latencies.push(t0.elapsed());
                    i += 1;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("writer task panicked"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Figures {
        writes_per_sec: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args = args();
    let base = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("temp dir");
    println!(
        "store_bench: {}s per run, {}-byte values, data under {}",
        args.seconds,
        args.value_size,
        base.path().display()
    );

    let sqlite_dir = base.path().join("sqlite");
    std::fs::create_dir_all(&sqlite_dir).expect("sqlite dir");
    let sqlite: Arc<dyn Backend> =
        Arc::new(Sqlite::open(&sqlite_dir.join("store.db")).expect("open sqlite"));

    let etcd_dir = base.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).expect("etcd dir");
    let (etcd_server, etcd): (Option<LocalEtcd>, Option<Arc<dyn Backend>>) =
        match LocalEtcd::start(&etcd_dir).await {
            Ok(server) => {
                let backend = Etcd::connect(&[server.endpoint().to_owned()], "/bench")
                    .await
                    .expect("connect etcd");
                (Some(server), Some(Arc::new(backend)))
            }
            Err(e) => {
                println!("etcd: not measured ({e})");
                (None, None)
            }
        };

    let mut rows = Vec::new();
    for c in CONCURRENCY {
        let s = run(sqlite.clone(), "sqlite", c, &args).await;
        let e = match &etcd {
            Some(etcd) => Some(run(etcd.clone(), "etcd", c, &args).await),
            None => None,
        };
        rows.push((c, s, e));
    }

    println!();
    println!(
        "{:>11} | {:>12} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>7}",
        "concurrency", "sqlite w/s", "p50 ms", "p99 ms", "etcd w/s", "p50 ms", "p99 ms", "ratio"
    );
    println!("{}", "-".repeat(92));
    for (c, s, e) in rows {
        let (ew, ep50, ep99, ratio) = match e {
            Some(e) => (
                format!("{:.0}", e.writes_per_sec),
                ms(e.p50),
                ms(e.p99),
                format!("{:.2}x", s.writes_per_sec / e.writes_per_sec),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:>11} | {:>12.0} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>7}",
            c,
            s.writes_per_sec,
            ms(s.p50),
            ms(s.p99),
            ew,
            ep50,
            ep99,
            ratio
        );
    }
    println!("(ratio = sqlite writes/s divided by etcd writes/s)");
    drop(etcd);
    drop(etcd_server);
}
