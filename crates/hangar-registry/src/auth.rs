//! Who may do what: credentials from the request, decided by an [`Authorizer`] the
//! server provides (the control plane's tokens).

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use futures_util::future::BoxFuture;

use crate::error::RegistryError;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read manifests, blobs and tags (and, without a repository, only prove the
    /// credentials: `GET /v2/`).
    Pull,
    /// Upload blobs, push manifests and tags.
    Push,
    /// Delete manifests, tags and blob links.
    Delete,
    /// List repositories (each is then filtered with [`Action::Pull`]).
    Catalog,
}

/// Why an [`Authorizer`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No or unknown credentials (401 with a challenge).
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials that do not allow this (403 `DENIED`).
    #[error("{0}")]
    Forbidden(String),
    /// The repository's app does not exist or is not visible to the caller (404
    /// `NAME_UNKNOWN`).
    #[error("{0}")]
    NotFound(String),
    /// Deciding failed (500).
    #[error("{0}")]
    Internal(String),
}

impl From<Denied> for RegistryError {
    fn from(d: Denied) -> RegistryError {
        match d {
            Denied::Unauthorized(m) => RegistryError::Unauthorized(m),
            Denied::Forbidden(m) => RegistryError::Denied(m),
            Denied::NotFound(m) => RegistryError::NameUnknown(m),
            Denied::Internal(m) => RegistryError::internal(m),
        }
    }
}

/// Decides whether a token may do `action` on `repo` (`None`: no repository, for
/// `GET /v2/` and the catalog).
pub trait Authorizer: Send + Sync + 'static {
    /// `token` is the Hangar token from the request (`None` when it sent none).
    fn authorize(
        &self,
        token: Option<String>,
        repo: Option<&str>,
        action: Action,
    ) -> BoxFuture<'static, Result<(), Denied>>;
}

/// The token of a request: `Authorization: Bearer <token>`, or `Basic` with any user name
/// and the token as the password (what `docker login` / `skopeo --creds` send).
pub fn request_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    let token = if scheme.eq_ignore_ascii_case("bearer") {
        rest.to_string()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        decoded.split_once(':')?.1.to_string()
    } else {
        return None;
    };
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn token_of(value: &str) -> Option<String> {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        request_token(&headers)
    }

    #[test]
    fn credentials_from_bearer_and_basic() {
        assert_eq!(token_of("Bearer hgr_1").as_deref(), Some("hgr_1"));
        assert_eq!(token_of("bearer  hgr_1 ").as_deref(), Some("hgr_1"));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:hgr_2");
        assert_eq!(
            token_of(&format!("Basic {basic}")).as_deref(),
            Some("hgr_2")
        );
        let colon = base64::engine::general_purpose::STANDARD.encode("u:a:b");
        assert_eq!(token_of(&format!("Basic {colon}")).as_deref(), Some("a:b"));
        let empty = base64::engine::general_purpose::STANDARD.encode("u:");
        assert_eq!(token_of(&format!("Basic {empty}")), None);
        assert_eq!(token_of("Basic !!!"), None);
        assert_eq!(token_of("Digest x"), None);
        assert_eq!(token_of("Bearer"), None);
        assert_eq!(request_token(&HeaderMap::new()), None);
    }
}
