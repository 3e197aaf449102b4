//! The built-in OCI distribution registry, served by `hangar server` under `/v2/`.
//!
//! It implements the distribution spec's pull, push, content discovery and content
//! management routes on the runtime's content-addressed blob store, so a pushed image is
//! a machine image without a copy (see `docs/registry.md`):
//!
//! - [`auth`]: credentials (Bearer, or Basic with the token as password) and the
//!   [`Authorizer`] the server implements with its tokens;
//! - `uploads`: upload sessions streamed to the store's `tmp/`, hashed as they arrive and
//!   renamed into `blobs/` only when the digest matches;
//! - `blobs`, `manifests`, `tags`: the read and write routes;
//! - `meta`: which blobs, manifests and tags each repository holds.
//!
//! **Invariant:** nothing becomes visible before its digest is verified: a blob is
//! renamed into the store only after its digest matched, and a manifest is recorded only
//! after every blob it names is in the repository.
//!
//! **API boundary:** the registry never decides who may do what; it asks the
//! [`Authorizer`] for every request.

pub mod auth;
mod blobs;
pub mod error;
mod manifests;
mod meta;
pub mod names;
mod tags;
mod uploads;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hangar_runtime::image::ImageStore;
use tracing::Instrument as _;

pub use auth::{Action, Authorizer, Denied};
pub use error::{RegistryError, RegistryResult};

use meta::Meta;
use uploads::Uploads;

/// The registry's state: the image store, its own metadata and the open uploads.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    images: ImageStore,
    meta: Meta,
    uploads: Uploads,
    authorizer: Arc<dyn Authorizer>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("images", &self.inner.images)
            .field("meta", &self.inner.meta)
            .finish()
    }
}

impl Registry {
    /// Opens the registry's metadata under `root` (creating it) on top of `images`, and
    /// registers its blobs as gc roots of the image store.
    pub fn open(
        images: ImageStore,
        root: &Path,
        authorizer: Arc<dyn Authorizer>,
    ) -> RegistryResult<Registry> {
        let meta = Meta::open(root)?;
        let roots = meta.clone();
        images.add_gc_roots(Arc::new(move || {
            roots
                .all_blobs()
                .map_err(|e| hangar_runtime::image::ImageError::Io {
                    context: "listing the registry's blobs for gc".into(),
                    source: std::io::Error::other(e.to_string()),
                })
        }));
        Ok(Registry {
            inner: Arc::new(Inner {
                images,
                meta,
                uploads: Uploads::default(),
                authorizer,
            }),
        })
    }

    /// Asks the authorizer, with the request's credentials.
    async fn authorize(
        &self,
        headers: &HeaderMap,
        repo: Option<&str>,
        action: Action,
    ) -> RegistryResult<()> {
        let token = auth::request_token(headers);
        self.inner
            .authorizer
            .authorize(token, repo, action)
            .await
            .map_err(RegistryError::from)
    }
}

/// The `/v2/` routes, to merge into the API router.
pub fn router(registry: Registry) -> Router {
    Router::new()
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(registry)
}

/// Where a `/v2/...` path leads. Repository names contain `/`, so the path is split at the
/// last route keyword, as the distribution registry does.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Base,
    Catalog,
    Tags(String),
    Manifest(String, String),
    Blob(String, String),
    UploadStart(String),
    Upload(String, String),
    Referrers(String, String),
}

fn route_of(path: &str) -> Option<Route> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Some(Route::Tags(name.into()));
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Some(Route::UploadStart(name.into()));
    }
    for (keyword, make) in [
        (
            "/blobs/uploads/",
            Route::Upload as fn(String, String) -> Route,
        ),
        ("/manifests/", Route::Manifest),
        ("/blobs/", Route::Blob),
        ("/referrers/", Route::Referrers),
    ] {
        if let Some(at) = rest.rfind(keyword) {
            let (name, last) = (&rest[..at], &rest[at + keyword.len()..]);
            if !last.is_empty() && !last.contains('/') {
                return Some(make(name.into(), last.into()));
            }
        }
    }
    None
}

/// The repository a route names, if any.
fn route_repo(route: &Route) -> Option<&str> {
    match route {
        Route::Base | Route::Catalog => None,
        Route::Tags(n)
        | Route::Manifest(n, _)
        | Route::Blob(n, _)
        | Route::UploadStart(n)
        | Route::Upload(n, _)
        | Route::Referrers(n, _) => Some(n),
    }
}

/// Adds the API version header every answer carries.
fn with_version(mut response: Response) -> Response {
    response.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

async fn dispatch(State(registry): State<Registry>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::debug_span!("registry", %method, %path);
    let response = match handle(registry, req).instrument(span).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(%method, %path, error = %e, "registry request refused");
            e.into_response()
        }
    };
    with_version(response)
}

async fn handle(registry: Registry, req: Request) -> RegistryResult<Response> {
    let (parts, body) = req.into_parts();
    let route = route_of(parts.uri.path()).ok_or_else(|| {
        RegistryError::NoRoute(format!(
            "no registry route for {}: see docs/registry.md for the routes",
            parts.uri.path()
        ))
    })?;
    if let Some(repo) = route_repo(&route) {
        names::validate_repository(repo)?;
    }
    let method = &parts.method;
    let head = method == Method::HEAD;
    let query = parts.uri.query().unwrap_or("");
    let h = &parts.headers;
    let r = &registry;
    match (route, method.clone()) {
        (Route::Base, Method::GET | Method::HEAD) => {
            r.authorize(h, None, Action::Pull).await?;
            Ok((
                [(header::CONTENT_TYPE, "application/json")],
                if head { "" } else { "{}" },
            )
                .into_response())
        }
        (Route::Catalog, Method::GET) => tags::catalog(r, h, query).await,
        (Route::Tags(name), Method::GET) => {
            r.authorize(h, Some(&name), Action::Pull).await?;
            tags::list(r, &name, query).await
        }
        (Route::Manifest(name, reference), Method::GET | Method::HEAD) => {
            r.authorize(h, Some(&name), Action::Pull).await?;
            manifests::get(r, &name, &reference, head).await
        }
        (Route::Manifest(name, reference), Method::PUT) => {
            r.authorize(h, Some(&name), Action::Push).await?;
            manifests::put(r, &name, &reference, h, body).await
        }
        (Route::Manifest(name, reference), Method::DELETE) => {
            r.authorize(h, Some(&name), Action::Delete).await?;
            manifests::delete(r, &name, &reference).await
        }
        (Route::Referrers(name, digest), Method::GET) => {
            r.authorize(h, Some(&name), Action::Pull).await?;
            manifests::referrers(r, &name, &digest, query).await
        }
        (Route::Blob(name, digest), Method::GET | Method::HEAD) => {
            r.authorize(h, Some(&name), Action::Pull).await?;
            blobs::get(r, &name, &digest, h, head).await
        }
        (Route::Blob(name, digest), Method::DELETE) => {
            r.authorize(h, Some(&name), Action::Delete).await?;
            blobs::delete(r, &name, &digest).await
        }
        (Route::UploadStart(name), Method::POST) => {
            r.authorize(h, Some(&name), Action::Push).await?;
            uploads::start(r, &name, query, h, body).await
        }
        (Route::Upload(name, id), Method::GET) => {
            r.authorize(h, Some(&name), Action::Push).await?;
            uploads::status(r, &name, &id).await
        }
        (Route::Upload(name, id), Method::PATCH) => {
            r.authorize(h, Some(&name), Action::Push).await?;
            uploads::patch(r, &name, &id, h, body).await
        }
        (Route::Upload(name, id), Method::PUT) => {
            r.authorize(h, Some(&name), Action::Push).await?;
            uploads::finish(r, &name, &id, query, h, body).await
        }
        (Route::Upload(name, id), Method::DELETE) => {
            r.authorize(h, Some(&name), Action::Push).await?;
            uploads::cancel(r, &name, &id).await
        }
        (route, method) => Err(RegistryError::Unsupported(format!(
            "{method} is not supported on {route:?}: see docs/registry.md for the routes"
        ))),
    }
}

/// Runs blocking file work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> RegistryResult<T> + Send + 'static,
) -> RegistryResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(RegistryError::internal)?
}

/// A query parameter's value (percent-decoded for the few characters clients encode in
/// digests and repository names).
pub(crate) fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An empty response with a status and headers.
pub(crate) fn empty(status: StatusCode, headers: Vec<(header::HeaderName, String)>) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

#[cfg(test)]
mod route_tests {
    use super::*;

    #[test]
    fn routes_split_at_the_last_keyword() {
        let d = format!("sha256:{}", "a".repeat(64));
        for (path, route) in [
            ("/v2/", Some(Route::Base)),
            ("/v2", Some(Route::Base)),
            ("/v2/_catalog", Some(Route::Catalog)),
            ("/v2/a/b/tags/list", Some(Route::Tags("a/b".into()))),
            (
                "/v2/a/manifests/v1",
                Some(Route::Manifest("a".into(), "v1".into())),
            ),
            (
                "/v2/a/manifests/x/manifests/v1",
                Some(Route::Manifest("a/manifests/x".into(), "v1".into())),
            ),
            (
                &format!("/v2/a/b/blobs/{d}"),
                Some(Route::Blob("a/b".into(), d.clone())),
            ),
            ("/v2/a/blobs/uploads/", Some(Route::UploadStart("a".into()))),
            ("/v2/a/blobs/uploads", Some(Route::UploadStart("a".into()))),
            (
                "/v2/a/blobs/uploads/abc",
                Some(Route::Upload("a".into(), "abc".into())),
            ),
            (
                &format!("/v2/a/referrers/{d}"),
                Some(Route::Referrers("a".into(), d.clone())),
            ),
            ("/v2/a/unknown", None),
            ("/v2/a/manifests/", None),
        ] {
            assert_eq!(route_of(path), route, "{path}");
        }
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param("n=2&last=a%2Fb", "last").as_deref(),
            Some("a/b")
        );
        assert_eq!(
            query_param("digest=sha256%3Aab", "digest").as_deref(),
            Some("sha256:ab")
        );
        assert_eq!(query_param("n=2", "last"), None);
        assert_eq!(query_param("x=%zz%", "x").as_deref(), Some("%zz%"));
    }
}

#[cfg(test)]
mod tests;
