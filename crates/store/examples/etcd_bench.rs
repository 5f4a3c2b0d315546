//! What a create costs on etcd, request pattern by request pattern, next to the bare etcd
//! ceiling, all against one bare etcd 3.4 started by this program (same flags as the API server
//! bench's).
//!
//! ```text
//! cargo run -p store --release --example etcd_bench [-- --seconds 4 --concurrency 16
//!     --value-size 1500 --etcd-arg --some-flag=value]
//! ```
//!
//! Each row runs `--concurrency` writer tasks in a closed loop for `--seconds`, each creating new
//! keys, and prints creates/s, the p50/p99 latency of one create, the CPU etcd and this program
//! spent per create (from `/proc/PID/stat`), and etcd's WAL fsyncs and range requests per create
//! (from its `/metrics`). The rows:
//!
//! - `txn`: only the create transaction (`compare create_revision == 0, put`): the bare etcd
//!   ceiling for our write.
//! - `get + txn`: a read of one fixed key, then the create; linearizable or serializable read,
//!   each its own etcd request or coalesced with equal concurrent reads.
//! - `list + get + txn`: what the API server sends per pod create (it lists the serverless
//!   profiles, an empty prefix here, and reads the namespace, then creates), over 1 or more
//!   connections.
//! - `+watch`: while one prefix watch with `prev_kv` (the API server's watch cache) receives
//!   every event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use store::Backend;
use store::etcd::{Etcd, EtcdOptions, LocalEtcd, ReadMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Args {
    seconds: f64,
    concurrency: usize,
    value_size: usize,
    etcd_args: Vec<String>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 4.0,
        concurrency: 16,
        value_size: 1500,
        etcd_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => a.seconds = value().parse().expect("--seconds: a number"),
            "--concurrency" => a.concurrency = value().parse().expect("--concurrency: a number"),
            "--value-size" => a.value_size = value().parse().expect("--value-size: a number"),
            "--etcd-arg" => a.etcd_args.push(value()),
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// utime + stime of a process.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// Sum of the samples of a Prometheus metric (all label sets) from etcd's `/metrics`.
async fn metric(endpoint: &str, name: &str, label: &str) -> f64 {
    let addr = endpoint.trim_start_matches("http://");
    let Ok(mut conn) = tokio::net::TcpStream::connect(addr).await else {
        return f64::NAN;
    };
    let req = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if conn.write_all(req.as_bytes()).await.is_err() {
        return f64::NAN;
    }
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body).await;
    body.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
                && l.contains(label)
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[derive(Clone, Copy)]
struct Counters {
    etcd_cpu: Duration,
    own_cpu: Duration,
    fsyncs: f64,
    ranges: f64,
}

async fn counters(etcd: &LocalEtcd) -> Counters {
    Counters {
        etcd_cpu: cpu_time(etcd.pid()),
        own_cpu: cpu_time(std::process::id()),
        fsyncs: metric(
            etcd.endpoint(),
            "etcd_disk_wal_fsync_duration_seconds_count",
            "",
        )
        .await,
        ranges: metric(
            etcd.endpoint(),
            "grpc_server_handled_total",
            "grpc_method=\"Range\"",
        )
        .await,
    }
}

struct Row {
    name: String,
    creates_per_sec: f64,
    p50: Duration,
    p99: Duration,
    etcd_cpu: Duration,
    own_cpu: Duration,
    fsyncs: f64,
    ranges: f64,
}

#[derive(Clone, Copy)]
struct Case {
    /// Reads before each create: 0, 1 (get the fixed key) or 2 (list an empty prefix, then get).
    reads: usize,
    read: Option<ReadMode>,
    coalesce: bool,
    connections: usize,
    watch: bool,
}

async fn run(etcd: &LocalEtcd, run_no: usize, case: Case, args: &Args) -> Row {
    let options = EtcdOptions {
        connections: case.connections,
        reads: case.read.unwrap_or(ReadMode::Linearizable),
        coalesce_reads: case.coalesce,
    };
    let backend = Etcd::connect_with(&[etcd.endpoint().to_owned()], "/bench", options)
        .await
        .expect("connect etcd");
    let prefix = format!("/run{run_no}/");
    backend
        .create(&format!("{prefix}namespace"), b"{}".to_vec())
        .await
        .expect("create the read key");
    let watcher = if case.watch {
        let rev = backend.current_revision().await.expect("revision");
        let mut ws = backend.watch(&prefix, rev).await.expect("watch");
        Some(tokio::spawn(async move {
            let mut n = 0u64;
            while let Some(ev) = ws.next().await {
                ev.expect("watch event");
                n += 1;
            }
            n
        }))
    } else {
        None
    };
    let backend: Arc<Etcd> = Arc::new(backend);
    let value = vec![b'v'; args.value_size];
    let before = counters(etcd).await;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|t| {
            let (backend, value, prefix) = (backend.clone(), value.clone(), prefix.clone());
            let reads = case.reads;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let key = format!("{prefix}pods/{t}/{i}");
                    let t0 = Instant::now();
                    if reads >= 2 {
                        let page = backend
                            .list(&format!("{prefix}profiles/"), None, 0, None)
                            .await
                            .expect("list failed");
                        assert!(page.items.is_empty());
                    }
                    if reads >= 1 {
                        let (_, kv) = backend
                            .get(&format!("{prefix}namespace"), None)
                            .await
                            .expect("read failed");
                        assert!(kv.is_some());
                    }
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
    let after = counters(etcd).await;
    if let Some(w) = watcher {
        w.abort();
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    let n = all.len().max(1);
    let mode = match case.read {
        Some(ReadMode::SerializableIfSingleMember) => "serializable",
        _ => "linearizable",
    };
    let mode = if case.coalesce {
        format!("{mode}, coalesced")
    } else {
        mode.to_owned()
    };
    let read = match case.reads {
        0 => String::new(),
        1 => format!("get ({mode}) + "),
        _ => format!("list + get ({mode}) + "),
    };
    let watch = if case.watch { " +watch" } else { "" };
    Row {
        name: format!("{read}txn, {} conn{watch}", case.connections),
        creates_per_sec: all.len() as f64 / elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        etcd_cpu: (after.etcd_cpu.saturating_sub(before.etcd_cpu)) / n as u32,
        own_cpu: (after.own_cpu.saturating_sub(before.own_cpu)) / n as u32,
        fsyncs: (after.fsyncs - before.fsyncs) / n as f64,
        ranges: (after.ranges - before.ranges) / n as f64,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() {
    let args = args();
    let base = tempfile::tempdir().expect("temp dir");
    let etcd = LocalEtcd::start_with(base.path(), &args.etcd_args)
        .await
        .expect("start etcd (apt-get install etcd-server)");
    println!(
        "etcd_bench: {} s per row, {} writers, {}-byte values, etcd flags {:?}, data under {}",
        args.seconds,
        args.concurrency,
        args.value_size,
        args.etcd_args,
        base.path().display()
    );
    let case = |reads, read, coalesce, connections, watch| Case {
        reads,
        read,
        coalesce,
        connections,
        watch,
    };
    let (lin, ser) = (
        Some(ReadMode::Linearizable),
        Some(ReadMode::SerializableIfSingleMember),
    );
    let cases = [
        case(0, None, false, 1, false),
        case(1, lin, false, 1, false),
        case(1, ser, false, 1, false),
        case(1, ser, true, 1, false),
        case(2, lin, false, 1, true),
        case(2, ser, false, 1, true),
        case(2, lin, true, 1, true),
        case(2, ser, true, 1, true),
        case(2, ser, true, 2, true),
        case(0, None, false, 1, true),
    ];
    println!();
    println!(
        "| pattern | creates/s | p50 ms | p99 ms | etcd CPU µs/create | bench CPU µs/create | fsyncs/create | ranges/create |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, case) in cases.into_iter().enumerate() {
        let r = run(&etcd, i, case, &args).await;
        println!(
            "| {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} |",
            r.name,
            r.creates_per_sec,
            ms(r.p50),
            ms(r.p99),
            r.etcd_cpu.as_secs_f64() * 1e6,
            r.own_cpu.as_secs_f64() * 1e6,
            r.fsyncs,
            r.ranges
        );
    }
    drop(etcd);
}
