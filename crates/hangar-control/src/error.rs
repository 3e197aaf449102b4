//! API errors and their status codes: the only place where errors become HTTP responses.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hangar_core::machine::ConfigError;
use hangar_runtime::image::ImageError;
use hangar_store::StoreError;

/// An error an API call returns: a status and one clear sentence.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 401: missing or unknown token.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token is valid but its scope does not allow this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such app, machine, image or route.
    #[error("{0}")]
    NotFound(String),
    /// 408: `wait` timed out.
    #[error("{0}")]
    Timeout(String),
    /// 409: conflicts with existing state (name taken, wrong state).
    #[error("{0}")]
    Conflict(String),
    /// 412: a precondition does not hold (destroy a running machine without force).
    #[error("{0}")]
    Precondition(String),
    /// 413: body too large.
    #[error("{0}")]
    TooLarge(String),
    /// 422: a value that cannot work.
    #[error("{0}")]
    Unprocessable(String),
    /// 500: the host failed.
    #[error("{0}")]
    Internal(String),
    /// 502: an upstream (a registry) failed.
    #[error("{0}")]
    BadGateway(String),
}

impl ApiError {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Precondition(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// A 500 from any error, keeping its message chain.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => ApiError::Conflict(m),
            StoreError::NotFound(m) => ApiError::NotFound(m),
            other => ApiError::internal(other),
        }
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        ApiError::Unprocessable(e.to_string())
    }
}

impl From<ImageError> for ApiError {
    fn from(e: ImageError) -> Self {
        let msg = e.to_string();
        match e {
            ImageError::InvalidReference { .. } | ImageError::BadArchive(_) => {
                ApiError::BadRequest(msg)
            }
            ImageError::NotFound(_) => ApiError::NotFound(msg),
            ImageError::DigestMismatch { .. }
            | ImageError::UnsafeEntry { .. }
            | ImageError::Unauthorized { .. } => ApiError::Unprocessable(msg),
            ImageError::Registry { .. } => ApiError::BadGateway(msg),
            ImageError::Io { .. } => ApiError::Internal(msg),
        }
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
