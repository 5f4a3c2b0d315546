//! The server's own PKI and credentials, made on first start and kept in the data dir:
//! a CA, a serving certificate signed by it (re-issued when the served names change), the admin
//! bearer token, and the admin kubeconfig.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a certificate")]
    Cert(#[from] rcgen::Error),
    #[error("invalid TLS material")]
    Tls(#[from] rustls::Error),
    #[error("invalid PEM in {0}")]
    Pem(PathBuf),
}

/// The CA, the serving certificate and the admin token.
#[derive(Clone)]
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub admin_token: String,
    dir: PathBuf,
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.into(),
            source,
        }),
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "nodeless-ca");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    Ok(params)
}

fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

impl Pki {
    /// Load the PKI from `dir/pki`, making what is missing. `names` are the DNS names and IPs the
    /// serving certificate must cover.
    pub fn ensure(dir: &Path, names: &[String]) -> Result<Self, PkiError> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).map_err(|source| PkiError::Io {
            path: pki.clone(),
            source,
        })?;
        let (ca_pem, ca_key_pem) = match (read(&pki.join("ca.crt"))?, read(&pki.join("ca.key"))?) {
            (Some(c), Some(k)) => (c, k),
            _ => {
                let key = KeyPair::generate()?;
                let cert = ca_params()?.self_signed(&key)?;
                write_private(&pki.join("ca.key"), &key.serialize_pem())?;
                write_private(&pki.join("ca.crt"), &cert.pem())?;
                (cert.pem(), key.serialize_pem())
            }
        };
        let mut sans: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        for n in names {
            if !sans.contains(n) {
                sans.push(n.clone());
            }
        }
        let wanted = sans.join(",");
        let existing = (
            read(&pki.join("server.crt"))?,
            read(&pki.join("server.key"))?,
            read(&pki.join("server.names"))?,
        );
        let (cert_pem, key_pem) = match existing {
            (Some(c), Some(k), Some(n)) if n == wanted => (c, k),
            _ => {
                let ca_key = KeyPair::from_pem(&ca_key_pem)?;
                let issuer = Issuer::new(ca_params()?, ca_key);
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(sans.clone())?;
                params
                    .distinguished_name
                    .push(DnType::CommonName, "nodeless-apiserver");
                params.not_before = rcgen::date_time_ymd(2025, 1, 1);
                params.not_after = rcgen::date_time_ymd(2035, 1, 1);
                params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
                let cert = params.signed_by(&key, &issuer)?;
                write_private(&pki.join("server.key"), &key.serialize_pem())?;
                write_private(&pki.join("server.crt"), &cert.pem())?;
                write_private(&pki.join("server.names"), &wanted)?;
                (cert.pem(), key.serialize_pem())
            }
        };
        let admin_token = match read(&pki.join("admin.token"))? {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let t = random_token();
                write_private(&pki.join("admin.token"), &t)?;
                t
            }
        };
        Ok(Self {
            ca_pem,
            cert_pem,
            key_pem,
            admin_token,
            dir: dir.to_path_buf(),
        })
    }

    /// A rustls server config (ring provider, h2 and http/1.1).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|_| PkiError::Pem(self.dir.join("pki/server.crt")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|_| PkiError::Pem(self.dir.join("pki/server.key")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The admin kubeconfig for `server` (an https URL).
    pub fn kubeconfig(&self, server: &str) -> String {
        use base64::Engine;
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    server: {server}\n  name: nodeless\ncontexts:\n- context:\n    cluster: nodeless\n    namespace: default\n    user: admin\n  name: nodeless\ncurrent-context: nodeless\npreferences: {{}}\nusers:\n- name: admin\n  user:\n    token: {}\n",
            self.admin_token
        )
    }

    /// Write the admin kubeconfig to `path` (mode 0600).
    pub fn write_kubeconfig(&self, path: &Path, server: &str) -> Result<(), PkiError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| PkiError::Io {
                path: parent.into(),
                source,
            })?;
        }
        write_private(path, &self.kubeconfig(server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pki_is_made_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Pki::ensure(dir.path(), &["127.0.0.1".into()]).expect("first");
        let b = Pki::ensure(dir.path(), &["127.0.0.1".into()]).expect("second");
        assert_eq!(a.ca_pem, b.ca_pem);
        assert_eq!(a.cert_pem, b.cert_pem);
        assert_eq!(a.admin_token, b.admin_token);
        let c = Pki::ensure(dir.path(), &["10.9.9.9".into()]).expect("new name");
        assert_eq!(a.ca_pem, c.ca_pem, "the CA stays");
        assert_ne!(
            a.cert_pem, c.cert_pem,
            "the serving cert is re-issued for new names"
        );
        assert!(c.server_config().is_ok());
        assert!(
            a.kubeconfig("https://127.0.0.1:6443")
                .contains(&a.admin_token)
        );
    }
}
