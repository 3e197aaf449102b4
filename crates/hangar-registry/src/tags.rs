//! Tag listing and the catalog, both paginated with `n` and `last` and a `Link` header.

use axum::Json;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::error::{RegistryError, RegistryResult};
use crate::{Action, Registry, blocking, query_param};

/// The most entries one page holds, whatever `n` asks for.
const MAX_PAGE: usize = 1000;

/// Applies `last` and `n` to a sorted list; returns the page and, when more follow, the
/// `Link` to the next page.
fn paginate(
    all: Vec<String>,
    query: &str,
    path: &str,
) -> RegistryResult<(Vec<String>, Option<String>)> {
    let n = match query_param(query, "n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            RegistryError::PaginationNumberInvalid(format!("n={n:?} is not a number of entries"))
        })?),
        None => None,
    };
    let last = query_param(query, "last");
    let mut rest: Vec<String> = match &last {
        Some(last) => all.into_iter().filter(|x| x > last).collect(),
        None => all,
    };
    let page_size = n.unwrap_or(MAX_PAGE).min(MAX_PAGE);
    let more = rest.len() > page_size;
    rest.truncate(page_size);
    let link = match (more, rest.last()) {
        (true, Some(last)) => Some(format!("<{path}?n={page_size}&last={last}>; rel=\"next\"")),
        _ => None,
    };
    Ok((rest, link))
}

fn with_link(body: serde_json::Value, link: Option<String>) -> Response {
    let mut response = Json(body).into_response();
    if let Some(link) = link
        && let Ok(value) = HeaderValue::from_str(&link)
    {
        response.headers_mut().insert(header::LINK, value);
    }
    response
}

/// `GET /v2/<name>/tags/list`.
pub(crate) async fn list(registry: &Registry, repo: &str, query: &str) -> RegistryResult<Response> {
    let (r, name) = (registry.clone(), repo.to_string());
    let tags = blocking(move || {
        if !r.inner.meta.repo_exists(&name) {
            return Err(RegistryError::NameUnknown(format!(
                "repository {name} does not exist; push an image to it first"
            )));
        }
        r.inner.meta.tags(&name)
    })
    .await?;
    let (page, link) = paginate(tags, query, &format!("/v2/{repo}/tags/list"))?;
    Ok(with_link(
        serde_json::json!({ "name": repo, "tags": page }),
        link,
    ))
}

/// `GET /v2/_catalog`: the repositories the caller may pull from.
pub(crate) async fn catalog(
    registry: &Registry,
    headers: &HeaderMap,
    query: &str,
) -> RegistryResult<Response> {
    registry.authorize(headers, None, Action::Catalog).await?;
    let r = registry.clone();
    let all = blocking(move || r.inner.meta.repositories()).await?;
    let mut visible = Vec::new();
    for repo in all {
        if registry
            .authorize(headers, Some(&repo), Action::Pull)
            .await
            .is_ok()
        {
            visible.push(repo);
        }
    }
    let (page, link) = paginate(visible, query, "/v2/_catalog")?;
    Ok(with_link(serde_json::json!({ "repositories": page }), link))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(all: &[&str], query: &str, page: &[&str], link: Option<&str>) {
        let all = all.iter().map(|s| s.to_string()).collect();
        let (got, got_link) = paginate(all, query, "/v2/a/tags/list").unwrap();
        assert_eq!(got, page, "{query}");
        assert_eq!(got_link.as_deref(), link, "{query}");
    }

    #[test]
    fn pages() {
        let all = ["a", "b", "c", "d"];
        check(&all, "", &all, None);
        check(
            &all,
            "n=2",
            &["a", "b"],
            Some("</v2/a/tags/list?n=2&last=b>; rel=\"next\""),
        );
        check(&all, "n=2&last=b", &["c", "d"], None);
        check(&all, "last=c", &["d"], None);
        check(&all, "n=0", &[], None);
        check(&all, "n=4", &all, None);
        assert!(matches!(
            paginate(vec![], "n=x", "/"),
            Err(RegistryError::PaginationNumberInvalid(_))
        ));
    }
}
