//! `/v1/apps/{app}/hostnames`: custom hostnames the edge proxy routes to an app besides
//! `<app>.<domain>` (Fly calls them certificates; TLS comes with the certificates issue).

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hangar_store::{AppRecord, HostnameRecord};
use serde::Deserialize;
use serde_json::{Value, json};

use super::JsonBody;
use crate::auth::{Access, Caller};
use crate::error::{ApiError, ApiResult};
use crate::supervisor::Control;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddHostname {
    hostname: String,
}

fn view(h: &HostnameRecord) -> Value {
    json!({ "hostname": h.hostname, "app": h.app, "created_at": h.created_at })
}

/// Validates a custom hostname and returns it lower-cased, without a trailing dot.
///
/// It must be a DNS name of at least two labels (`www.example.com`), each label 1-63 of
/// `a-z`, `0-9` and `-` not starting or ending with `-`, at most 253 characters, and not
/// an IP address.
pub fn normalize_hostname(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    let name = trimmed
        .strip_suffix('.')
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    if name.is_empty() {
        return Err("the hostname is empty: give a DNS name such as www.example.com".into());
    }
    if name.contains(['/', ':', '[', ']', '@']) {
        return Err(format!(
            "{raw:?} is not a bare host name: give it without scheme, port or path, such as www.example.com"
        ));
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "{name:?} is an IP address: custom hostnames are DNS names; every app is also reachable at <app>.<domain>"
        ));
    }
    if name.len() > 253 {
        return Err(format!(
            "the hostname is {} characters long: DNS names have at most 253",
            name.len()
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if *label == "*" {
            return Err(format!(
                "{name:?} is a wildcard: wildcard hostnames are not supported yet; add each name"
            ));
        }
        let valid = (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(format!(
                "{name:?} has an invalid label {label:?}: each dot-separated part must be 1-63 of a-z, 0-9 and '-', not starting or ending with '-'"
            ));
        }
    }
    if labels.len() < 2 {
        return Err(format!(
            "{name:?} is a single label: give a fully qualified name such as {name}.example.com"
        ));
    }
    if labels
        .last()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{name:?} looks like an IP address (its last label is numeric): give a DNS name"
        ));
    }
    Ok(name)
}

/// Where a hostname falls under the base domain, where `<app>.<domain>` and every name
/// below it belong to app `<app>`.
#[derive(Debug, PartialEq, Eq)]
enum Namespace<'a> {
    /// Outside the base domain: any app may claim it.
    Outside,
    /// The base domain itself.
    Base,
    /// `<app>.<domain>` exactly: the app's built-in name.
    AppName(&'a str),
    /// A name below `<app>.<domain>`.
    Below(&'a str),
}

fn namespace<'a>(host: &'a str, domain: &str) -> Namespace<'a> {
    if domain.is_empty() {
        return Namespace::Outside;
    }
    if host == domain {
        return Namespace::Base;
    }
    let Some(rest) = host.strip_suffix(domain).and_then(|r| r.strip_suffix('.')) else {
        return Namespace::Outside;
    };
    match rest.rsplit_once('.') {
        None => Namespace::AppName(rest),
        Some((_, owner)) => Namespace::Below(owner),
    }
}

/// Refuses names under the base domain that belong to another app (or to no app yet).
async fn check_namespace(
    control: &Control,
    caller: &Caller,
    app: &AppRecord,
    host: &str,
) -> ApiResult<()> {
    let domain = control.opts.domain.clone();
    let owner = match namespace(host, &domain) {
        Namespace::Outside => return Ok(()),
        Namespace::Base => {
            return Err(ApiError::BadRequest(format!(
                "{host:?} is the server's base domain: apps are reached at <app>.{domain}; add a name of your own domain"
            )));
        }
        Namespace::AppName(owner) if owner == app.name => {
            return Err(ApiError::Conflict(format!(
                "{host:?} is the built-in name of app {}: it reaches the app already",
                app.name
            )));
        }
        Namespace::Below(owner) if owner == app.name => return Ok(()),
        Namespace::AppName(owner) | Namespace::Below(owner) => owner,
    };
    match control.store.get_app(owner).await {
        Ok(other) if caller.sees_org(other.org.id) => Err(ApiError::Conflict(format!(
            "{host:?} is under {owner}.{domain}, which belongs to app {owner}: names under <app>.{domain} go to that app; use a name under {}.{domain} or your own domain",
            app.name
        ))),
        Ok(_) => Err(ApiError::Conflict(format!(
            "{host:?} is under {owner}.{domain}, which belongs to another app: use a name under {}.{domain} or your own domain",
            app.name
        ))),
        Err(hangar_store::StoreError::NotFound(_)) => Err(ApiError::BadRequest(format!(
            "{host:?} is under {owner}.{domain}, which is reserved for an app named {owner}: use a name under {}.{domain} or your own domain",
            app.name
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn list(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
) -> ApiResult<Json<Value>> {
    let app = control.store.get_app(&app).await?;
    caller.check_app(&app, Access::Read)?;
    let hostnames = control.store.list_hostnames(&app.name).await?;
    Ok(Json(
        json!({ "hostnames": hostnames.iter().map(view).collect::<Vec<_>>() }),
    ))
}

pub(super) async fn add(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path(app): Path<String>,
    JsonBody(body): JsonBody<AddHostname>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let app = control.store.get_app(&app).await?;
    caller.check_app(&app, Access::Write)?;
    let host = normalize_hostname(&body.hostname).map_err(ApiError::BadRequest)?;
    check_namespace(&control, &caller, &app, &host).await?;
    if let Some(existing) = control.store.hostname_owner(&host).await? {
        return Err(taken(&control, &caller, &app, &existing).await);
    }
    let record = match control.store.add_hostname(&app.name, &host).await {
        Ok(record) => record,
        // Another request added it in between: say who holds it now.
        Err(hangar_store::StoreError::Conflict(_)) => {
            return Err(match control.store.hostname_owner(&host).await? {
                Some(existing) => taken(&control, &caller, &app, &existing).await,
                None => ApiError::Conflict(format!(
                    "{host:?} was being changed by another request: retry"
                )),
            });
        }
        Err(e) => return Err(e.into()),
    };
    control.routing_changed();
    Ok((StatusCode::CREATED, Json(view(&record))))
}

/// The 409 for a name another app holds: it names the owner only when the caller can see
/// the owner's organization.
async fn taken(
    control: &Control,
    caller: &Caller,
    app: &AppRecord,
    existing: &HostnameRecord,
) -> ApiError {
    let host = &existing.hostname;
    if existing.app == app.name {
        return ApiError::Conflict(format!("app {} has hostname {host:?} already", app.name));
    }
    let visible = match control.store.get_app(&existing.app).await {
        Ok(owner) => caller.sees_org(owner.org.id),
        Err(_) => false,
    };
    if visible {
        ApiError::Conflict(format!(
            "hostname {host:?} belongs to app {}: remove it there first with `hangar domains remove {host} --app {}`",
            existing.app, existing.app
        ))
    } else {
        ApiError::Conflict(format!(
            "hostname {host:?} is in use by another organization's app: one hostname reaches one app"
        ))
    }
}

pub(super) async fn remove(
    State(control): State<Arc<Control>>,
    caller: Caller,
    Path((app, hostname)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let app = control.store.get_app(&app).await?;
    caller.check_app(&app, Access::Write)?;
    let trimmed = hostname.trim();
    let host = trimmed
        .strip_suffix('.')
        .unwrap_or(trimmed)
        .to_ascii_lowercase();
    control.store.remove_hostname(&app.name, &host).await?;
    control.routing_changed();
    Ok(Json(json!({ "ok": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_lower_case_dns_names() {
        assert_eq!(
            normalize_hostname(" WWW.Example.COM. ").unwrap(),
            "www.example.com"
        );
        assert_eq!(normalize_hostname("a-1.b.io").unwrap(), "a-1.b.io");
        for bad in [
            "",
            ".",
            "localhost",
            "10.0.0.1",
            "::1",
            "[::1]",
            "1.2.3",
            "www.example.com:8080",
            "http://www.example.com",
            "-a.example.com",
            "a-.example.com",
            "a..example.com",
            "under_score.example.com",
            "*.example.com",
            "ünicode.example.com",
        ] {
            assert!(normalize_hostname(bad).is_err(), "{bad:?} was accepted");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(normalize_hostname(&long_label).is_err());
        let long_name = format!("{}com", "abcdefghi.".repeat(26));
        assert!(normalize_hostname(&long_name).is_err());
    }

    #[test]
    fn names_under_the_base_domain_belong_to_the_app_they_name() {
        use Namespace::*;
        assert_eq!(namespace("www.example.com", "localhost"), Outside);
        assert_eq!(namespace("localhost", "localhost"), Base);
        assert_eq!(namespace("web.localhost", "localhost"), AppName("web"));
        assert_eq!(namespace("a.b.web.localhost", "localhost"), Below("web"));
        // A suffix match must be a whole label.
        assert_eq!(namespace("weblocalhost.com", "localhost"), Outside);
        assert_eq!(namespace("xlocalhost", "localhost"), Outside);
        assert_eq!(namespace("anything.example", ""), Outside);
    }
}
