//! API tokens: create (the token is in the answer, once), list, revoke.

use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::{Client, ClientError};

/// A token as listed: its scope and dates, never the token itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Id: `hangar tokens revoke ID`.
    pub id: i64,
    /// `admin`, `org`, `deploy` or `readonly`.
    pub kind: String,
    /// A name for people.
    pub name: String,
    /// The organization it is scoped to (none for admin tokens).
    #[serde(default)]
    pub org_slug: Option<String>,
    /// The app it is scoped to.
    #[serde(default)]
    pub app: Option<String>,
    /// Whether it may only read.
    #[serde(default)]
    pub read_only: bool,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339; none: never expires.
    #[serde(default)]
    pub expires_at: Option<String>,
    /// RFC 3339 of its last use (to the minute).
    #[serde(default)]
    pub last_used_at: Option<String>,
    /// RFC 3339 once revoked.
    #[serde(default)]
    pub revoked_at: Option<String>,
    /// Id of the token that created it.
    #[serde(default)]
    pub created_by: Option<i64>,
}

/// A token just created: its description and the token itself, shown only once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    /// The description.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The token (`hgr_...`): store it now, it cannot be shown again.
    pub token: String,
}

/// What to create: `POST /v1/tokens`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateTokenRequest {
    /// `admin`, `org`, `deploy` or `readonly`.
    pub kind: String,
    /// App scope (deploy, readonly).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Organization scope (org, readonly).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
    /// A name for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A duration (`30d`, `12h`) or `never`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiry: Option<String>,
}

impl Client {
    /// `POST /v1/tokens`.
    pub async fn create_token(
        &self,
        request: &CreateTokenRequest,
    ) -> Result<CreatedToken, ClientError> {
        let url = self.url(&["v1", "tokens"]);
        self.json(self.request(Method::POST, url).json(request))
            .await
    }

    /// `GET /v1/tokens`: tokens that are not revoked, optionally of one organization.
    pub async fn list_tokens(&self, org_slug: Option<&str>) -> Result<Vec<TokenInfo>, ClientError> {
        let mut url = self.url(&["v1", "tokens"]);
        if let Some(org) = org_slug {
            url.query_pairs_mut().append_pair("org_slug", org);
        }
        self.json(self.request(Method::GET, url)).await
    }

    /// `DELETE /v1/tokens/{id}`.
    pub async fn revoke_token(&self, id: i64) -> Result<TokenInfo, ClientError> {
        let url = self.url(&["v1", "tokens", &id.to_string()]);
        self.json(self.request(Method::DELETE, url)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_tokens_parse_with_their_description() {
        let body = serde_json::json!({
            "id": 3, "kind": "deploy", "name": "ci", "org_slug": "default", "app": "web",
            "read_only": false, "created_at": "2026-01-01T00:00:00Z",
            "expires_at": null, "last_used_at": null, "revoked_at": null, "created_by": 1,
            "token": "hgr_abc"
        });
        let t: CreatedToken = serde_json::from_value(body).unwrap();
        assert_eq!(t.token, "hgr_abc");
        assert_eq!(t.info.app.as_deref(), Some("web"));
        let req = CreateTokenRequest {
            kind: "deploy".into(),
            app: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&req).unwrap(),
            serde_json::json!({"kind": "deploy", "app": "web"})
        );
    }
}
