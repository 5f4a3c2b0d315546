//! The image formats we read, as plain serde types: OCI and Docker schema2 manifests, OCI image
//! indexes and Docker manifest lists (resolved to linux/amd64), and the image config.
//! Pure: parsing and selection only.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Media types we accept for a manifest request.
pub const ACCEPTED: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A manifest document: either one image or an index of images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    Index(Vec<Descriptor>),
    Image(ImageManifest),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON of a known kind")]
    Json(#[from] serde_json::Error),
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("no linux/amd64 image in the index")]
    NoPlatform,
    #[error("unsupported layer media type {0:?}")]
    LayerMediaType(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    schema_version: Option<u32>,
}

impl Document {
    /// Parses a manifest. The media type from the HTTP response (if any) wins over the body's.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, ManifestError> {
        let probe: Probe = serde_json::from_slice(bytes)?;
        let media_type = content_type
            .filter(|t| ACCEPTED.contains(t))
            .map(str::to_owned)
            .or(probe.media_type.clone());
        match media_type.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => {
                Ok(Document::Index(probe.manifests.unwrap_or_default()))
            }
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => {
                let m: ImageManifest = serde_json::from_slice(bytes)?;
                m.check_layers()?;
                Ok(Document::Image(m))
            }
            Some(other) => Err(ManifestError::MediaType(other.to_owned())),
            // OCI allows mediaType to be absent: decide by shape.
            None if probe.manifests.is_some() => {
                Ok(Document::Index(probe.manifests.unwrap_or_default()))
            }
            None if probe.schema_version == Some(2) => {
                let m: ImageManifest = serde_json::from_slice(bytes)?;
                m.check_layers()?;
                Ok(Document::Image(m))
            }
            None => Err(ManifestError::MediaType(String::new())),
        }
    }
}

impl ImageManifest {
    fn check_layers(&self) -> Result<(), ManifestError> {
        for l in &self.layers {
            if !is_layer_type(&l.media_type) {
                return Err(ManifestError::LayerMediaType(l.media_type.clone()));
            }
        }
        Ok(())
    }
}

/// Layer media types we can unpack (compression is detected from the bytes themselves).
pub fn is_layer_type(t: &str) -> bool {
    matches!(
        t,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    ) || t.is_empty()
}

/// Picks the linux/amd64 entry of an index (an entry without platform counts as a match only when
/// it is the sole entry, as in OCI layouts written by simple tools).
pub fn select_platform(entries: &[Descriptor]) -> Result<&Descriptor, ManifestError> {
    entries
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .or_else(|| match entries {
            [only] if only.platform.is_none() => Some(only),
            _ => None,
        })
        .ok_or(ManifestError::NoPlatform)
}

/// The parts of an image configuration that running a container needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn docker_list_resolves_to_amd64() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},
            {{"mediaType":"{DOCKER_MANIFEST}","digest":"{D2}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#
        );
        let Document::Index(entries) = Document::parse(body.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(select_platform(&entries).unwrap().digest.to_string(), D2);
    }

    #[test]
    fn index_without_amd64_is_an_error() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[
            {{"mediaType":"{OCI_MANIFEST}","digest":"{D1}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}}]}}"#
        );
        let Document::Index(entries) = Document::parse(body.as_bytes(), None).unwrap() else {
            panic!("not an index")
        };
        assert!(matches!(
            select_platform(&entries),
            Err(ManifestError::NoPlatform)
        ));
    }

    #[test]
    fn oci_manifest_without_media_type() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{D1}","size":3}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"{D2}","size":4}}]}}"#
        );
        let Document::Image(m) = Document::parse(body.as_bytes(), None).unwrap() else {
            panic!("not an image")
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.config.size, 3);
    }

    #[test]
    fn unknown_layer_type_is_refused() {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"x","digest":"{D1}","size":3}},
            "layers":[{{"mediaType":"application/wasm","digest":"{D2}","size":4}}]}}"#
        );
        assert!(matches!(
            Document::parse(body.as_bytes(), None),
            Err(ManifestError::LayerMediaType(_))
        ));
    }

    #[test]
    fn docker_config_parses() {
        let body = r#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh"],"WorkingDir":"/w","User":"1000:1000","ExposedPorts":{"80/tcp":{}}},
        "rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]},"history":[]}"#;
        let c: ImageConfig = serde_json::from_str(body).unwrap();
        let rc = c.config.unwrap();
        assert_eq!(rc.cmd.unwrap(), vec!["sh"]);
        assert_eq!(rc.user.as_deref(), Some("1000:1000"));
        assert_eq!(c.rootfs.diff_ids.len(), 1);
    }
}
