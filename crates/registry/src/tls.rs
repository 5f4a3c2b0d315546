//! TLS for the standalone registry: a self-made CA and a serving certificate kept in
//! `<data-dir>/tls/` (`ca.crt`, `ca.key`, `server.crt`, `server.key`), made with rcgen on first start
//! and remade when the wanted names change; and [`serve`], which runs a router over HTTPS (rustls with
//! the ring provider, HTTP/1.1 and HTTP/2) or plain HTTP.

use std::future::Future;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::auth::write_private;

/// TLS setup failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls files")]
    Io(#[from] std::io::Error),
    #[error("certificate generation")]
    Rcgen(#[from] rcgen::Error),
    #[error("rustls")]
    Rustls(#[from] rustls::Error),
    #[error("no certificate or key in {0}")]
    Pem(String),
}

/// PEM material of the CA and the serving certificate.
#[derive(Debug, Clone)]
pub struct Material {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params() -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "nodeless registry CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2099, 1, 1);
    Ok(p)
}

/// The names a serving certificate covers by default, plus `extra`.
pub fn default_names(extra: &[String]) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    for e in extra {
        if !names.contains(e) {
            names.push(e.clone());
        }
    }
    names
}

/// Load the CA and serving certificate from `dir`, making what is missing. The serving certificate is
/// remade when `names` differ from those it was made for.
pub fn ensure(dir: &Path, names: &[String]) -> Result<Material, TlsError> {
    std::fs::create_dir_all(dir)?;
    let ca_key_path = dir.join("ca.key");
    let ca_crt_path = dir.join("ca.crt");
    let (ca_key, ca_pem) = match (
        std::fs::read_to_string(&ca_key_path),
        std::fs::read_to_string(&ca_crt_path),
    ) {
        (Ok(k), Ok(c)) => (rcgen::KeyPair::from_pem(&k)?, c),
        _ => {
            let key = rcgen::KeyPair::generate()?;
            let cert = ca_params()?.self_signed(&key)?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_private(&ca_crt_path, cert.pem().as_bytes())?;
            (key, cert.pem())
        }
    };
    let names_path = dir.join("server.names");
    let wanted = names.join("\n");
    let existing = (
        std::fs::read_to_string(dir.join("server.crt")),
        std::fs::read_to_string(dir.join("server.key")),
        std::fs::read_to_string(&names_path),
    );
    if let (Ok(cert_pem), Ok(key_pem), Ok(n)) = existing
        && n == wanted
    {
        return Ok(Material {
            ca_pem,
            cert_pem,
            key_pem,
        });
    }
    let issuer = rcgen::Issuer::new(ca_params()?, ca_key);
    let mut p = rcgen::CertificateParams::new(names.to_vec())?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "nodeless registry");
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2099, 1, 1);
    let key = rcgen::KeyPair::generate()?;
    let cert = p.signed_by(&key, &issuer)?;
    write_private(&dir.join("server.key"), key.serialize_pem().as_bytes())?;
    write_private(&dir.join("server.crt"), cert.pem().as_bytes())?;
    write_private(&names_path, wanted.as_bytes())?;
    Ok(Material {
        ca_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server configuration for `m` (ALPN h2 and http/1.1).
pub fn server_config(m: &Material) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = rustls_pemfile::certs(&mut m.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut m.key_pem.as_bytes())?
        .ok_or_else(|| TlsError::Pem("server.key".into()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A rustls client configuration trusting only `ca_pem`.
pub fn client_config(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem("ca.crt".into()));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Send buffer for connections from this host (the kernel doubles it for its own bookkeeping).
const LOOPBACK_SNDBUF: u32 = 128 * 1024;

/// Socket settings for an accepted connection. A peer on loopback gets a small send buffer: over
/// loopback, what sits in a large send buffer is pushed out (and run through the receiver's TCP
/// input) by the *receiving* process's core, in the ACK processing of its reads, so that core does
/// the TCP work of both ends besides its own copy while the sending core waits; with a small buffer
/// the sender's own writes push its segments and the two cores share the work (single 100 MiB pulls
/// over loopback on 2 cores: means of 1,260-1,710 MiB/s without, 2,310-4,540 MiB/s with). Other
/// peers keep the kernel's autotuned buffer, which a high bandwidth × delay path needs.
fn tune(tcp: &tokio::net::TcpStream) {
    let loopback = tcp.peer_addr().map(|a| a.ip().is_loopback());
    if !matches!(loopback, Ok(true)) {
        return;
    }
    // tokio sets the option only through `TcpSocket`: on a duplicate of the descriptor (the option
    // belongs to the socket, which both descriptors share)
    let set = tcp.as_fd().try_clone_to_owned().and_then(|fd| {
        tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd))
            .set_send_buffer_size(LOOPBACK_SNDBUF)
    });
    if let Err(e) = set {
        tracing::debug!(error = %e, "could not set the send buffer size");
    }
}

/// Serve `router` on `listener` (over TLS when `tls` is given) until `shutdown` completes.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Some(tls) = tls else {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| tune(tcp));
        return axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            tune(&stream);
            let tls = match acceptor.accept(stream).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "tls handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(router);
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_kept_and_serving_cert_follows_the_names() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure(dir.path(), &["localhost".into()]).unwrap();
        let b = ensure(dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.cert_pem, b.cert_pem);
        let c = ensure(dir.path(), &["localhost".into(), "registry.example".into()]).unwrap();
        assert_eq!(a.ca_pem, c.ca_pem);
        assert_ne!(a.cert_pem, c.cert_pem);
        server_config(&c).unwrap();
        client_config(&c.ca_pem).unwrap();
        assert!(client_config("not a pem").is_err());
    }
}
