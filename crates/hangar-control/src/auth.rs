//! Bearer-token authentication. Only SHA-256 digests of tokens are stored.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::supervisor::Control;

/// The digest under which a token is stored.
pub fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: `hgr_` and 64 hex characters (32 random bytes).
pub fn generate_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("hgr_{}", hex::encode(bytes))
}

/// Rejects requests without a known token. Accepts `Bearer <t>` and Fly's `FlyV1 <t>`.
pub async fn require_token(
    State(control): State<Arc<Control>>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let token = header
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("FlyV1 ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("missing token: send `Authorization: Bearer <token>` (the admin token is in <data-dir>/admin-token)".into()))?;
    match control.store.token_kind(&token_digest(token)).await? {
        Some(_) => Ok(next.run(req).await),
        None => Err(ApiError::Unauthorized("invalid token".into())),
    }
}
