//! The registry's errors and their mapping to the distribution spec's error codes and JSON bodies
//! (`{"errors":[{"code","message","detail"}]}`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// The spec's error codes (plus docker distribution's TAG_INVALID).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    TagInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    RangeInvalid,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::RangeInvalid => "BLOB_UPLOAD_INVALID",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A spec error with its code and a human message.
    #[error("{code:?}: {message}")]
    Spec {
        code: ErrorCode,
        message: String,
        status: Option<StatusCode>,
    },
    /// The request had no valid credentials; carries the WWW-Authenticate challenge.
    #[error("authentication required")]
    Unauthenticated { challenge: String },
    #[error("storage")]
    Store(#[from] StoreError),
    #[error("metadata i/o")]
    Io(#[from] std::io::Error),
    #[error("metadata encoding")]
    Json(#[from] serde_json::Error),
    #[error("repository {0} already exists")]
    RepositoryExists(String),
    #[error("repository {0} is not empty (use --force)")]
    RepositoryNotEmpty(String),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("another registry has {0} open")]
    Locked(String),
}

impl RegistryError {
    pub fn spec(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError::Spec {
            code,
            message: message.into(),
            status: None,
        }
    }

    pub fn spec_with_status(
        code: ErrorCode,
        status: StatusCode,
        message: impl Into<String>,
    ) -> RegistryError {
        RegistryError::Spec {
            code,
            message: message.into(),
            status: Some(status),
        }
    }

    /// The spec code this error is reported with, if it is a spec error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RegistryError::Spec { code, .. } => Some(*code),
            RegistryError::Unauthenticated { .. } => Some(ErrorCode::Unauthorized),
            _ => None,
        }
    }
}

fn body(code: &str, message: &str) -> String {
    serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]}).to_string()
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code, message, challenge) = match &self {
            RegistryError::Spec {
                code,
                message,
                status,
            } => (
                status.unwrap_or(code.status()),
                code.as_str(),
                message.clone(),
                None,
            ),
            RegistryError::Unauthenticated { challenge } => (
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "authentication required".to_string(),
                Some(challenge.clone()),
            ),
            RegistryError::Store(StoreError::NotFound) => (
                StatusCode::NOT_FOUND,
                "BLOB_UNKNOWN",
                "blob unknown to registry".to_string(),
                None,
            ),
            RegistryError::Store(StoreError::DigestMismatch { .. }) => (
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                self.to_string(),
                None,
            ),
            RegistryError::RepositoryExists(_) => (
                StatusCode::CONFLICT,
                "REPOSITORY_ALREADY_EXISTS",
                self.to_string(),
                None,
            ),
            RegistryError::RepositoryNotEmpty(_) => (
                StatusCode::CONFLICT,
                "REPOSITORY_NOT_EMPTY",
                self.to_string(),
                None,
            ),
            RegistryError::BadRequest(m) => (
                StatusCode::BAD_REQUEST,
                "INVALID_PARAMETER",
                m.clone(),
                None,
            ),
            RegistryError::Store(_)
            | RegistryError::Io(_)
            | RegistryError::Json(_)
            | RegistryError::Locked(_) => {
                tracing::error!(error = ?self, "registry internal error");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal error".to_string(),
                    None,
                )
            }
        };
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body(code, &message),
        )
            .into_response();
        if let Some(c) = challenge
            && let Ok(v) = HeaderValue::from_str(&c)
        {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    }
}
