//! Sockets in another network namespace (the pod network's, e.g. `/run/netns/nodeless-pods`),
//! for probes and port-forwarding from an agent that itself stays in the host's namespace.
//!
//! A socket belongs to the namespace of the thread that created it, for its whole life. So a
//! fresh OS thread is spawned per call: it enters the namespace (`setns(CLONE_NEWNET)`), creates
//! the socket and exits; nothing else ever runs on a thread that switched namespace. The connect
//! itself then runs on the caller's tokio runtime.
//!
//! Must not depend on the runtime or the API server.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Connect to `addr` from inside the network namespace at `netns`, within `timeout`.
///
/// A timeout is an error of kind [`io::ErrorKind::TimedOut`] (message `i/o timeout`, as Go says).
pub async fn connect(netns: &Path, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = in_netns(netns, move || {
        if addr.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
    })
    .await?;
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(stream) => stream,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "i/o timeout")),
    }
}

/// Runs `make` on a fresh OS thread that first enters the network namespace at `netns`; the
/// thread ends with `make`. Only for creating sockets (they keep the namespace they were made in).
pub(crate) async fn in_netns<T, F>(netns: &Path, make: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let path = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("netns-socket".into())
        .spawn(move || {
            let result = enter(&path).and_then(|()| make());
            let _ = tx.send(result);
        })?;
    rx.await
        .map_err(|_| io::Error::other("the network namespace thread died"))?
}

/// Moves the calling thread into the network namespace at `path`.
fn enter(path: &Path) -> io::Result<()> {
    let file = std::fs::File::open(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", path.display()),
        )
    })?;
    rustix::thread::move_into_link_name_space(
        file.as_fd(),
        Some(rustix::thread::LinkNameSpaceType::Network),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("entering network namespace {}: {e}", path.display()),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::io::{Read, Write};
    use std::path::PathBuf;
    use std::process::Command;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A network namespace made for one test, removed on drop.
    struct TestNetns {
        name: String,
        path: PathBuf,
    }

    impl TestNetns {
        /// `None` (with a loud message) when this machine cannot make one (not root, no `ip`).
        fn create(tag: &str) -> Option<TestNetns> {
            let name = format!("nl-t-{}-{tag}", std::process::id());
            let ok = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !ok {
                eprintln!("SKIPPED: cannot create a network namespace (needs root and iproute2)");
                return None;
            }
            let ns = TestNetns {
                path: PathBuf::from("/run/netns").join(&name),
                name,
            };
            let up = Command::new("ip")
                .args(["-n", &ns.name, "link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(up.success());
            Some(ns)
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.name])
                .status();
        }
    }

    #[tokio::test]
    async fn connects_inside_the_namespace_only() {
        let Some(ns) = TestNetns::create("conn") else {
            return;
        };
        // A listener on the namespace's own loopback.
        let listener = in_netns(&ns.path, || std::net::TcpListener::bind(("127.0.0.1", 0)))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hello");
            conn.write_all(b"world").unwrap();
        });
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut stream = connect(&ns.path, addr, Duration::from_secs(5))
            .await
            .unwrap();
        stream.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world");
        server.join().unwrap();

        // The host's 127.0.0.1 is another address: a host listener is not reached from inside.
        let host = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let host_addr = host.local_addr().unwrap();
        let err = connect(&ns.path, host_addr, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        // ... while the same address is reachable from the host itself.
        tokio::net::TcpStream::connect(host_addr).await.unwrap();

        // The calling thread stayed in the process's namespace.
        let own = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        let process = std::fs::read_link("/proc/self/ns/net").unwrap();
        assert_eq!(own, process);
    }

    #[tokio::test]
    async fn a_missing_namespace_is_an_error() {
        let err = connect(
            Path::new("/run/netns/nl-t-does-not-exist"),
            ([127, 0, 0, 1], 1).into(),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nl-t-does-not-exist"), "{err}");
    }

    #[tokio::test]
    async fn connect_times_out() {
        let Some(ns) = TestNetns::create("tmo") else {
            return;
        };
        // A veth pair whose far end has no address: nobody answers for 10.99.0.2, only the
        // timeout ends the connect.
        for args in [
            &["link", "add", "v0", "type", "veth", "peer", "name", "v1"][..],
            &["addr", "add", "10.99.0.1/24", "dev", "v0"],
            &["link", "set", "v0", "up"],
            &["link", "set", "v1", "up"],
        ] {
            let ok = Command::new("ip")
                .args(["-n", &ns.name])
                .args(args)
                .status()
                .unwrap();
            assert!(ok.success(), "ip {args:?}");
        }
        let started = std::time::Instant::now();
        let err = connect(
            &ns.path,
            ([10, 99, 0, 2], 80).into(),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert_eq!(err.to_string(), "i/o timeout");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
