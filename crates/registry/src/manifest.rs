//! Manifest parsing and validation: OCI image manifests and indexes, Docker schema2 manifests and
//! manifest lists. Extracts what the registry must know: the blobs an image references, the child
//! manifests of an index, the subject (for the referrers API) and the artifact type. Sans-IO.

use std::collections::BTreeMap;

use crate::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY_CONFIG: &str = "application/vnd.oci.empty.v1+json";

/// Why a manifest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("manifest schemaVersion must be 2")]
    SchemaVersion,
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: Option<i64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    annotations: Option<BTreeMap<String, String>>,
}

/// What the registry keeps from a parsed manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub media_type: String,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Parsed {
    /// Whether this is an index / manifest list.
    pub fn is_index(&self) -> bool {
        self.media_type == OCI_INDEX || self.media_type == DOCKER_LIST
    }

    /// The blobs (config and layers) an image manifest needs.
    pub fn blobs(&self) -> Vec<Digest> {
        self.config
            .iter()
            .chain(self.layers.iter())
            .map(|d| d.digest.clone())
            .collect()
    }

    /// The artifact type the referrers API reports: `artifactType`, else the config's media type.
    pub fn effective_artifact_type(&self) -> Option<String> {
        self.artifact_type
            .clone()
            .or_else(|| self.config.as_ref().map(|c| c.media_type.clone()))
    }
}

fn base_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

/// Parse `body` sent with `content_type`.
pub fn parse(content_type: Option<&str>, body: &[u8]) -> Result<Parsed, ManifestError> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    if raw.schema_version != Some(2) {
        return Err(ManifestError::SchemaVersion);
    }
    let header = content_type.map(base_type).filter(|c| {
        [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].contains(c)
            || c.starts_with("application/vnd.docker.distribution.manifest.v1")
    });
    if let (Some(h), Some(b)) = (header, raw.media_type.as_deref())
        && h != b
    {
        return Err(ManifestError::MediaTypeMismatch {
            header: h.to_string(),
            body: b.to_string(),
        });
    }
    let media_type = match header.or(raw.media_type.as_deref()) {
        Some(m) => m.to_string(),
        None if raw.manifests.is_some() => OCI_INDEX.to_string(),
        None => OCI_MANIFEST.to_string(),
    };
    let parsed = Parsed {
        media_type,
        config: raw.config,
        layers: raw.layers.unwrap_or_default(),
        manifests: raw.manifests.unwrap_or_default(),
        subject: raw.subject,
        artifact_type: raw.artifact_type,
        annotations: raw.annotations,
    };
    match parsed.media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => {
            if parsed.config.is_none() {
                return Err(ManifestError::Invalid(
                    "image manifest without config".into(),
                ));
            }
            if !parsed.manifests.is_empty() {
                return Err(ManifestError::Invalid(
                    "image manifest with manifests".into(),
                ));
            }
        }
        OCI_INDEX | DOCKER_LIST => {
            if parsed.config.is_some() || !parsed.layers.is_empty() {
                return Err(ManifestError::Invalid("index with config or layers".into()));
            }
        }
        other => return Err(ManifestError::UnsupportedMediaType(other.to_string())),
    }
    Ok(parsed)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_image_manifest_with_subject() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"x/sig",
            "config":{{"mediaType":"{OCI_EMPTY_CONFIG}","digest":"{D}","size":0}},
            "layers":[{{"mediaType":"a","digest":"{D}","size":0}}],
            "subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{D}","size":2}}}}"#
        );
        let p = parse(Some(OCI_MANIFEST), body.as_bytes()).unwrap();
        assert_eq!(p.blobs().len(), 2);
        assert_eq!(p.subject.unwrap().digest.to_string(), D);
        assert_eq!(p.artifact_type.as_deref(), Some("x/sig"));
    }

    #[test]
    fn rejects_bad_manifests() {
        assert!(matches!(parse(None, b"{"), Err(ManifestError::Json(_))));
        assert_eq!(
            parse(None, br#"{"schemaVersion":1}"#),
            Err(ManifestError::SchemaVersion)
        );
        let body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[]}}"#);
        assert!(matches!(
            parse(Some(OCI_MANIFEST), body.as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(parse(Some(OCI_INDEX), body.as_bytes()).unwrap().is_index());
        assert!(matches!(
            parse(Some(OCI_MANIFEST), br#"{"schemaVersion":2,"layers":[]}"#),
            Err(ManifestError::Invalid(_))
        ));
        let bad_digest = r#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:zz","size":1},"layers":[]}"#;
        assert!(matches!(
            parse(Some(OCI_MANIFEST), bad_digest.as_bytes()),
            Err(ManifestError::Json(_))
        ));
    }
}
