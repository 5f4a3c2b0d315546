//! Images: where they come from ([`Source`]), their formats ([`manifest`]), unpacking layers
//! ([`unpack`]) and the content-addressed store shared by every pod on the host ([`store`]).

pub mod manifest;
pub mod store;
pub mod unpack;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

pub use store::{Auth, Image, ImageStore, PullEvent, PullOptions, StoreError, StoreOptions};

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A registry reference such as `busybox`, `127.0.0.1:5000/app:v1`, `quay.io/x/y@sha256:...`.
    Registry(oci_client::Reference),
    /// `oci:DIR[:TAG]`: an OCI image layout directory.
    Layout { dir: PathBuf, tag: Option<String> },
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    Archive { file: PathBuf, tag: Option<String> },
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("invalid image reference {0:?}")]
    Reference(String, #[source] oci_client::ParseError),
    #[error("empty path in image reference {0:?}")]
    EmptyPath(String),
}

fn split_tag(rest: &str) -> (PathBuf, Option<String>) {
    match rest.rsplit_once(':') {
        Some((path, tag)) if !tag.is_empty() && !tag.contains('/') => {
            (PathBuf::from(path), Some(tag.to_owned()))
        }
        _ => (PathBuf::from(rest), None),
    }
}

impl FromStr for Source {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split_tag(rest);
            if dir.as_os_str().is_empty() {
                return Err(SourceError::EmptyPath(s.to_owned()));
            }
            return Ok(Source::Layout { dir, tag });
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            let (file, tag) = split_tag(rest);
            if file.as_os_str().is_empty() {
                return Err(SourceError::EmptyPath(s.to_owned()));
            }
            return Ok(Source::Archive { file, tag });
        }
        let r = s.strip_prefix("docker://").unwrap_or(s);
        oci_client::Reference::try_from(r)
            .map(Source::Registry)
            .map_err(|e| SourceError::Reference(s.to_owned(), e))
    }
}

impl fmt::Display for Source {
    /// The canonical name under which the store records the image.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Registry(r) => f.write_str(&r.whole()),
            Source::Layout { dir, tag } => {
                write!(f, "oci:{}", dir.display())?;
                tag.as_ref().map_or(Ok(()), |t| write!(f, ":{t}"))
            }
            Source::Archive { file, tag } => {
                write!(f, "oci-archive:{}", file.display())?;
                tag.as_ref().map_or(Ok(()), |t| write!(f, ":{t}"))
            }
        }
    }
}

/// Whether plain HTTP is used for a registry host: loopback always, others when listed as insecure.
pub fn is_insecure(registry: &str, insecure: &[String]) -> bool {
    let host = registry
        .strip_prefix('[')
        .and_then(|r| r.split_once(']').map(|(h, _)| h))
        .unwrap_or_else(|| registry.rsplit_once(':').map_or(registry, |(h, _)| h));
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || insecure.iter().any(|i| i == registry || i == host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse() {
        assert_eq!(
            "oci:/tmp/lay:v1".parse::<Source>().unwrap(),
            Source::Layout {
                dir: "/tmp/lay".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            "oci:./lay".parse::<Source>().unwrap(),
            Source::Layout {
                dir: "./lay".into(),
                tag: None
            }
        );
        assert_eq!(
            "oci-archive:/x/a.tar".parse::<Source>().unwrap(),
            Source::Archive {
                file: "/x/a.tar".into(),
                tag: None
            }
        );
        let Source::Registry(r) = "busybox".parse::<Source>().unwrap() else {
            panic!()
        };
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        let Source::Registry(r) = "127.0.0.1:5000/a/b:c".parse::<Source>().unwrap() else {
            panic!()
        };
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert!("oci:".parse::<Source>().is_err());
    }

    #[test]
    fn insecure_registries() {
        assert!(is_insecure("127.0.0.1:5000", &[]));
        assert!(is_insecure("localhost:5000", &[]));
        assert!(is_insecure("[::1]:5000", &[]));
        assert!(!is_insecure("quay.io", &[]));
        assert!(!is_insecure("10.0.0.1:5000", &[]));
        assert!(is_insecure("reg.lan:5000", &["reg.lan".into()]));
    }
}
