//! Registry errors in the distribution spec's envelope: the only place where they become
//! HTTP responses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An error a registry call returns. Each variant is one code of the distribution spec;
/// its message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 404 `BLOB_UNKNOWN`: the blob is not in this repository.
    #[error("{0}")]
    BlobUnknown(String),
    /// 404 `BLOB_UPLOAD_UNKNOWN`: no such upload session (finished, cancelled or expired).
    #[error("{0}")]
    BlobUploadUnknown(String),
    /// 400 `BLOB_UPLOAD_INVALID`: the upload request is malformed.
    #[error("{0}")]
    BlobUploadInvalid(String),
    /// 400 `DIGEST_INVALID`: the content does not match the digest, or the digest is malformed.
    #[error("{message}")]
    DigestInvalid {
        /// What failed.
        message: String,
        /// The digest the client named.
        expected: Option<String>,
        /// The digest of what it sent.
        actual: Option<String>,
    },
    /// 400 `MANIFEST_BLOB_UNKNOWN`: a manifest names a blob or manifest this repository
    /// does not hold.
    #[error("{message}")]
    ManifestBlobUnknown {
        /// What failed.
        message: String,
        /// The missing digest.
        digest: String,
    },
    /// 400 `MANIFEST_INVALID`: the manifest is malformed or of an unsupported type.
    #[error("{0}")]
    ManifestInvalid(String),
    /// 404 `MANIFEST_UNKNOWN`: no such tag or manifest in this repository.
    #[error("{0}")]
    ManifestUnknown(String),
    /// 400 `NAME_INVALID`: the repository name breaks the grammar.
    #[error("{0}")]
    NameInvalid(String),
    /// 404 `NAME_UNKNOWN`: no such repository (or app).
    #[error("{0}")]
    NameUnknown(String),
    /// 400 `SIZE_INVALID`: a length does not match the content.
    #[error("{0}")]
    SizeInvalid(String),
    /// 413 `SIZE_INVALID`: the content is larger than what the server can store.
    #[error("{0}")]
    TooLarge(String),
    /// 401 `UNAUTHORIZED`: no or unknown credentials; answered with a `WWW-Authenticate`
    /// challenge.
    #[error("{0}")]
    Unauthorized(String),
    /// 403 `DENIED`: the credentials do not allow this.
    #[error("{0}")]
    Denied(String),
    /// 405 `UNSUPPORTED`: the operation is not supported.
    #[error("{0}")]
    Unsupported(String),
    /// 404 `UNSUPPORTED`: no such route.
    #[error("{0}")]
    NoRoute(String),
    /// 416 `RANGE_INVALID`: a chunk does not continue the upload, or a read range is out of
    /// the blob. `current` is the upload's size (for the `Range` header) or the blob's
    /// length (for `Content-Range: bytes */len`).
    #[error("{message}")]
    RangeInvalid {
        /// What failed.
        message: String,
        /// Bytes the upload holds, or the blob's length.
        current: u64,
        /// Whether this is a blob read (else an upload chunk).
        read: bool,
    },
    /// 400 `TAG_INVALID`: the reference is neither a tag nor a digest.
    #[error("{0}")]
    TagInvalid(String),
    /// 400 `PAGINATION_NUMBER_INVALID`: `n` is not a number.
    #[error("{0}")]
    PaginationNumberInvalid(String),
    /// 429 `TOOMANYREQUESTS`: too many open upload sessions.
    #[error("{0}")]
    TooManyRequests(String),
    /// 500 `UNKNOWN`: the host failed.
    #[error("{0}")]
    Internal(String),
}

impl RegistryError {
    /// The status code and the spec's error code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use RegistryError::*;
        match self {
            BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
            BlobUploadUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
            BlobUploadInvalid(_) => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
            DigestInvalid { .. } => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ManifestBlobUnknown { .. } => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
            ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
            ManifestUnknown(_) => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
            NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            NameUnknown(_) => (StatusCode::NOT_FOUND, "NAME_UNKNOWN"),
            SizeInvalid(_) => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
            TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            Unsupported(_) => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            NoRoute(_) => (StatusCode::NOT_FOUND, "UNSUPPORTED"),
            RangeInvalid { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
            TagInvalid(_) => (StatusCode::BAD_REQUEST, "TAG_INVALID"),
            PaginationNumberInvalid(_) => (StatusCode::BAD_REQUEST, "PAGINATION_NUMBER_INVALID"),
            TooManyRequests(_) => (StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        }
    }

    /// The spec's optional `detail`.
    fn detail(&self) -> Option<serde_json::Value> {
        match self {
            RegistryError::DigestInvalid {
                expected, actual, ..
            } => Some(serde_json::json!({ "expected": expected, "actual": actual })),
            RegistryError::ManifestBlobUnknown { digest, .. } => {
                Some(serde_json::json!({ "digest": digest }))
            }
            _ => None,
        }
    }

    /// A 500 from anything displayable, logged because the client sees only the message.
    pub fn internal(e: impl std::fmt::Display) -> RegistryError {
        tracing::error!(error = %e, "registry request failed");
        RegistryError::Internal(e.to_string())
    }
}

/// The challenge sent with every 401: docker, skopeo and buildah answer it with Basic
/// credentials (any user name, a Hangar token as the password).
pub const CHALLENGE: &str = "Basic realm=\"hangar\"";

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let mut error = serde_json::json!({ "code": code, "message": self.to_string() });
        if let Some(detail) = self.detail() {
            error["detail"] = detail;
        }
        let body = serde_json::json!({ "errors": [error] }).to_string();
        let mut response =
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            "Docker-Distribution-API-Version",
            HeaderValue::from_static("registry/2.0"),
        );
        match &self {
            RegistryError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(CHALLENGE),
                );
            }
            RegistryError::RangeInvalid {
                current,
                read: true,
                ..
            } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{current}")) {
                    headers.insert(header::CONTENT_RANGE, v);
                }
            }
            RegistryError::RangeInvalid {
                current,
                read: false,
                ..
            } => {
                if let Ok(v) = HeaderValue::from_str(&upload_range(*current)) {
                    headers.insert(header::RANGE, v);
                }
            }
            _ => {}
        }
        response
    }
}

/// The `Range` header of an upload holding `size` bytes (`0-<last byte>`, `0-0` when empty,
/// as the distribution registry answers).
pub(crate) fn upload_range(size: u64) -> String {
    format!("0-{}", size.saturating_sub(1))
}

/// Shorthand for handler results.
pub type RegistryResult<T> = Result<T, RegistryError>;
