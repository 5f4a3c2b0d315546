//! A small static test program (std only), built by the agent's tests with plain `rustc`
//! (`rustc --edition 2021 -O -C target-feature=+crt-static ...`) and put in an image beside
//! busybox. Its behaviour is chosen by its arguments:
//! - `serve PORT`: an HTTP/1.0 server on 0.0.0.0:PORT: `GET /` answers 200
//!   "rust-ok <hostname>\n", anything else 404. Prints "listening PORT" at start; on SIGTERM
//!   prints "bye" and exits 0.
//! - `exit N`: prints "exit N" to stderr and exits N.
//! - `alloc MIB`: allocates and touches MIB MiB, then sleeps (and touches them again).
//! - `env NAME`: prints the variable's value.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SIGTERM: i32 = 15;

unsafe extern "C" {
    // From the C library std links (statically, with crt-static): std has no signal API.
    fn signal(sig: i32, handler: extern "C" fn(i32)) -> usize;
    fn gethostname(name: *mut u8, len: usize) -> i32;
}

static TERMINATED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_term(_sig: i32) {
    TERMINATED.store(true, Ordering::SeqCst);
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length.
    let rc = unsafe { gethostname(buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return String::from("unknown");
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn answer(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    // The request line and headers (no body is expected).
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && !req.windows(2).any(|w| w == b"\n\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
        if req.len() > 64 * 1024 {
            break;
        }
    }
    let req = String::from_utf8_lossy(&req);
    let mut words = req.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, body) = if method == "GET" && path == "/" {
        ("200 OK", format!("rust-ok {}\n", hostname()))
    } else {
        ("404 Not Found", String::from("not found\n"))
    };
    let resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes());
    let _ = s.flush();
}

fn serve(port: u16) -> i32 {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        signal(SIGTERM, on_term);
    }
    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {port}: {e}");
            return 1;
        }
    };
    // Nonblocking, so that the loop notices SIGTERM (the C library restarts a blocked accept).
    listener
        .set_nonblocking(true)
        .expect("nonblocking listener");
    println!("listening {port}");
    loop {
        if TERMINATED.load(Ordering::SeqCst) {
            println!("bye");
            return 0;
        }
        match listener.accept() {
            Ok((s, _)) => {
                std::thread::spawn(move || answer(s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                eprintln!("accept: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn alloc(mib: usize) -> i32 {
    println!("allocating {mib} MiB");
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    for _ in 0..mib {
        let mut c = vec![0u8; 1 << 20];
        for i in (0..c.len()).step_by(4096) {
            c[i] = 1;
        }
        chunks.push(std::hint::black_box(c));
    }
    println!("allocated {mib} MiB");
    loop {
        // Touch it all again, so that it stays taken.
        for c in &mut chunks {
            for i in (0..c.len()).step_by(4096) {
                c[i] = c[i].wrapping_add(1);
            }
        }
        std::hint::black_box(&chunks);
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn usage() -> i32 {
    eprintln!("usage: testprog serve PORT | exit N | alloc MIB | env NAME");
    2
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let code = match args.as_slice() {
        ["serve", port] => match port.parse() {
            Ok(p) => serve(p),
            Err(_) => usage(),
        },
        ["exit", n] => match n.parse::<i32>() {
            Ok(n) => {
                eprintln!("exit {n}");
                n
            }
            Err(_) => usage(),
        },
        ["alloc", mib] => match mib.parse() {
            Ok(m) => alloc(m),
            Err(_) => usage(),
        },
        ["env", name] => match std::env::var(name) {
            Ok(v) => {
                println!("{v}");
                0
            }
            Err(_) => 1,
        },
        _ => usage(),
    };
    std::process::exit(code);
}
