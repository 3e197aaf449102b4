//! Scoped tokens and organization isolation, through the real CLI and curl: a deploy
//! token reaches its app and nothing else, an organization token sees only its
//! organization, read-only tokens only read, and revoked or expired tokens are refused
//! at once.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{HANGAR, Server, eventually, testapp_image};

/// The CLI run with `token` instead of the admin token.
fn hangar_as(s: &Server, token: &str, args: &[&str]) -> Output {
    Command::new(HANGAR)
        .args(args)
        .env("HANGAR_API_URL", &s.url)
        .env("HANGAR_API_TOKEN", token)
        .env_remove("HANGAR_APP")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// An API call with `token` (curl).
fn call(s: &Server, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string());
    s.api_with(
        method,
        path,
        body.as_deref(),
        Some(token),
        "application/json",
    )
}

/// Asserts the status of a call with `token`; returns the body.
#[track_caller]
fn expect(
    s: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
    want: &[u16],
) -> Value {
    let shown = format!("{body:?}");
    let (code, v) = call(s, token, method, path, body);
    assert!(
        want.contains(&code),
        "{method} {path} {shown}: {code} (want {want:?}): {v}"
    );
    if code >= 400 {
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: no JSON error: {v}"
        );
    }
    v
}

/// Creates a token with the CLI (as `as_token`) and returns it from stdout.
fn create_token(s: &Server, as_token: &str, args: &[&str]) -> String {
    let mut a = vec!["tokens", "create"];
    a.extend_from_slice(args);
    let out = hangar_as(s, as_token, &a);
    assert!(
        out.status.success(),
        "hangar {a:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        token.starts_with("hgr_") && token.len() == 68,
        "stdout is the token alone: {token:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shown only now"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    token
}

fn names(v: &Value, list_key: Option<&str>, field: &str) -> Vec<String> {
    let list = match list_key {
        Some(k) => &v[k],
        None => v,
    };
    let mut out: Vec<String> = list
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x[field].as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

fn sleeper(name: &str) -> Value {
    json!({
        "name": name,
        "config": { "image": "busybox:latest", "init": { "cmd": ["sleep", "1000"] } }
    })
}

#[test]
fn tokens_are_scoped_to_their_app_or_organization_and_refused_once_revoked_or_expired() {
    require_root!();
    let s = Server::start();
    let admin = s.token.clone();
    s.import(
        &hangar_runtime::image::build::busybox_image(),
        "busybox:latest",
    );
    s.import(&testapp_image(), "testapp:latest");
    s.ok(&["orgs", "create", "acme"]);
    s.ok(&["apps", "create", "alpha"]);
    s.ok(&["apps", "create", "beta"]);
    s.ok(&["apps", "create", "gamma", "--org", "acme"]);

    // ---- A deploy token of alpha ----
    let deploy = create_token(&s, &admin, &["deploy", "--app", "alpha", "--name", "ci"]);
    // It runs alpha's machines and reads alpha.
    let m = expect(
        &s,
        &deploy,
        "POST",
        "/v1/apps/alpha/machines",
        Some(sleeper("web")),
        &[200],
    );
    assert_eq!(m["state"], "started", "{m}");
    let id = m["id"].as_str().unwrap().to_owned();
    let list = expect(&s, &deploy, "GET", "/v1/apps/alpha/machines", None, &[200]);
    assert_eq!(names(&list, None, "id"), [id.as_str()]);
    expect(&s, &deploy, "GET", "/v1/apps/alpha", None, &[200]);
    expect(
        &s,
        &deploy,
        "GET",
        &format!("/v1/apps/alpha/machines/{id}/events"),
        None,
        &[200],
    );
    expect(
        &s,
        &deploy,
        "GET",
        &format!("/v1/apps/alpha/machines/{id}/logs"),
        None,
        &[200],
    );
    let out = hangar_as(&s, &deploy, &["machine", "list", "--app", "alpha"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It lists only its app and its organization.
    let apps = expect(&s, &deploy, "GET", "/v1/apps", None, &[200]);
    assert_eq!(names(&apps, Some("apps"), "name"), ["alpha"]);
    let orgs = expect(&s, &deploy, "GET", "/v1/orgs", None, &[200]);
    assert_eq!(names(&orgs, None, "slug"), ["default"]);
    // Other apps, of its organization or another, do not exist for it.
    for path in [
        "/v1/apps/beta",
        "/v1/apps/beta/machines",
        "/v1/apps/gamma/machines",
        "/v1/apps/nope/machines",
        "/v1/apps/beta/secrets",
    ] {
        let v = expect(&s, &deploy, "GET", path, None, &[403, 404]);
        assert!(!v.to_string().contains("acme"), "{path} leaks: {v}");
    }
    expect(
        &s,
        &deploy,
        "POST",
        "/v1/apps/beta/machines",
        Some(sleeper("x")),
        &[404],
    );
    let out = hangar_as(&s, &deploy, &["machine", "list", "--app", "beta"]);
    assert!(
        !out.status.success(),
        "machine list of beta with alpha's token"
    );
    // Everything beyond its app is refused.
    for (method, path, body) in [
        ("POST", "/v1/apps", json!({"app_name": "newapp"})),
        ("POST", "/v1/orgs", json!({"slug": "evil"})),
        (
            "POST",
            "/v1/tokens",
            json!({"kind": "deploy", "app": "alpha"}),
        ),
        (
            "POST",
            "/v1/tokens",
            json!({"kind": "readonly", "app": "alpha"}),
        ),
        ("POST", "/v1/images/gc", json!({})),
    ] {
        let v = expect(&s, &deploy, method, path, Some(body.clone()), &[403]);
        assert!(
            v["error"].as_str().unwrap().contains("token"),
            "{method} {path}: {v}"
        );
    }
    expect(&s, &deploy, "DELETE", "/v1/apps/alpha", None, &[403]);
    expect(&s, &deploy, "GET", "/v1/tokens", None, &[403]);
    for args in [
        vec!["apps", "create", "newapp"],
        vec!["orgs", "create", "evil"],
        vec!["tokens", "create", "deploy", "--app", "alpha"],
    ] {
        let out = hangar_as(&s, &deploy, &args);
        assert!(!out.status.success(), "hangar {args:?} with a deploy token");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("deploy token"), "hangar {args:?}: {err}");
    }
    // Nothing was created by the refused calls.
    let apps = s.json(&["apps", "list"]);
    assert_eq!(
        names(&apps, Some("apps"), "name"),
        ["alpha", "beta", "gamma"]
    );
    // `hangar deploy` of alpha works with it; of beta it is refused.
    let app_dir = s.data_dir().join("alpha-src");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(
        app_dir.join("hangar.toml"),
        "app = \"alpha\"\n\n[http_service]\n  internal_port = 8080\n",
    )
    .unwrap();
    let dir = app_dir.to_str().unwrap();
    let out = hangar_as(&s, &deploy, &["deploy", dir, "--image", "testapp:latest"]);
    assert!(
        out.status.success(),
        "deploy with a deploy token: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.server_log()
    );
    let status = hangar_as(&s, &deploy, &["--json", "status", "--app", "alpha"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let out = hangar_as(
        &s,
        &deploy,
        &["deploy", dir, "--image", "testapp:latest", "--app", "beta"],
    );
    assert!(!out.status.success(), "deploy of beta with alpha's token");
    let releases = s.json(&["releases", "--app", "beta"]);
    assert_eq!(releases.as_array().map(Vec::len), Some(0), "{releases}");
    // It may stop and destroy alpha's machines.
    expect(
        &s,
        &deploy,
        "DELETE",
        &format!("/v1/apps/alpha/machines/{id}?force=true"),
        None,
        &[200],
    );

    // ---- An organization token of acme ----
    let acme = create_token(&s, &admin, &["org", "--org", "acme"]);
    let apps = expect(&s, &acme, "GET", "/v1/apps", None, &[200]);
    assert_eq!(names(&apps, Some("apps"), "name"), ["gamma"]);
    let orgs = expect(&s, &acme, "GET", "/v1/orgs", None, &[200]);
    assert_eq!(names(&orgs, None, "slug"), ["acme"]);
    let hidden = expect(&s, &acme, "GET", "/v1/apps/alpha", None, &[404]);
    let missing = expect(&s, &acme, "GET", "/v1/apps/nope", None, &[404]);
    assert_eq!(
        hidden["error"].as_str().unwrap().replace("alpha", "X"),
        missing["error"].as_str().unwrap().replace("nope", "X"),
        "a hidden app answers as a missing one"
    );
    expect(&s, &acme, "GET", "/v1/apps/alpha/machines", None, &[404]);
    expect(
        &s,
        &acme,
        "GET",
        &format!("/v1/apps/alpha/machines/{id}"),
        None,
        &[404],
    );
    expect(&s, &acme, "GET", "/v1/apps?org_slug=default", None, &[404]);
    // It creates apps in its own organization, and not in others.
    let created = expect(
        &s,
        &acme,
        "POST",
        "/v1/apps",
        Some(json!({"app_name": "delta"})),
        &[201],
    );
    assert_eq!(created["organization"]["slug"], "acme", "{created}");
    expect(
        &s,
        &acme,
        "POST",
        "/v1/apps",
        Some(json!({"app_name": "eps", "org_slug": "default"})),
        &[404],
    );
    expect(
        &s,
        &acme,
        "POST",
        "/v1/orgs",
        Some(json!({"slug": "more"})),
        &[403],
    );
    // It creates deploy tokens of its own apps only, and no org or admin tokens.
    let gamma_deploy = create_token(&s, &acme, &["deploy", "--app", "gamma"]);
    expect(
        &s,
        &gamma_deploy,
        "GET",
        "/v1/apps/gamma/machines",
        None,
        &[200],
    );
    expect(
        &s,
        &gamma_deploy,
        "GET",
        "/v1/apps/delta/machines",
        None,
        &[404],
    );
    expect(
        &s,
        &acme,
        "POST",
        "/v1/tokens",
        Some(json!({"kind": "deploy", "app": "alpha"})),
        &[404],
    );
    expect(
        &s,
        &acme,
        "POST",
        "/v1/tokens",
        Some(json!({"kind": "admin"})),
        &[403],
    );
    expect(
        &s,
        &acme,
        "POST",
        "/v1/tokens",
        Some(json!({"kind": "org", "org_slug": "acme"})),
        &[403],
    );
    // It lists only acme's tokens and cannot revoke others'.
    let listed = hangar_as(&s, &acme, &["--json", "tokens", "list"]);
    assert!(listed.status.success());
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let slugs: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["org_slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["acme", "acme"], "{listed}");
    assert!(
        !listed.to_string().contains("hgr_"),
        "a listing shows no token: {listed}"
    );
    let all = s.json(&["tokens", "list"]);
    let alpha_token_id = all
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci")
        .map(|t| t["id"].as_i64().unwrap())
        .expect("the ci token in the admin's list");
    expect(
        &s,
        &acme,
        "DELETE",
        &format!("/v1/tokens/{alpha_token_id}"),
        None,
        &[404],
    );

    // ---- A read-only token of the default organization ----
    let ro = create_token(&s, &admin, &["readonly", "--org", "default"]);
    let apps = expect(&s, &ro, "GET", "/v1/apps", None, &[200]);
    assert_eq!(names(&apps, Some("apps"), "name"), ["alpha", "beta"]);
    expect(&s, &ro, "GET", "/v1/apps/beta/machines", None, &[200]);
    expect(
        &s,
        &ro,
        "POST",
        "/v1/apps/beta/machines",
        Some(sleeper("ro")),
        &[403],
    );
    expect(
        &s,
        &ro,
        "POST",
        "/v1/apps",
        Some(json!({"app_name": "roapp"})),
        &[403],
    );
    let out = hangar_as(&s, &ro, &["apps", "create", "roapp"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    expect(&s, &ro, "GET", "/v1/apps/gamma", None, &[404]);

    // ---- Revocation takes effect on the very next request ----
    let out = s.ok(&["tokens", "revoke", &alpha_token_id.to_string()]);
    assert!(out.contains("Revoked"), "{out}");
    let v = expect(&s, &deploy, "GET", "/v1/apps/alpha/machines", None, &[401]);
    assert!(v["error"].as_str().unwrap().contains("revoked"), "{v}");
    let out = hangar_as(&s, &deploy, &["machine", "list", "--app", "alpha"]);
    assert!(!out.status.success());
    // Revoking it again, or a token that does not exist, is a clear error.
    let out = s.hangar(&["tokens", "revoke", &alpha_token_id.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already revoked"));
    let out = s.hangar(&["tokens", "revoke", "999999"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    // The last admin token cannot be revoked.
    let admin_id = all
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["kind"] == "admin")
        .map(|t| t["id"].as_i64().unwrap())
        .unwrap();
    let (code, v) = s.api("DELETE", &format!("/v1/tokens/{admin_id}"), None);
    assert_eq!(code, 409, "{v}");
    expect(&s, &admin, "GET", "/v1/apps", None, &[200]);

    // ---- Deleting an app revokes its tokens ----
    s.ok(&["apps", "destroy", "gamma", "--yes"]);
    expect(&s, &gamma_deploy, "GET", "/v1/apps", None, &[401]);

    // ---- Expiry is enforced: a 1s token is refused once it expires ----
    let short = create_token(&s, &admin, &["deploy", "--app", "alpha", "--expiry", "1s"]);
    let v = eventually(Duration::from_secs(10), "the 1s token to expire", || {
        let (code, v) = call(&s, &short, "GET", "/v1/apps/alpha", None);
        assert!(code == 200 || code == 401, "{code}: {v}");
        (code == 401).then_some(v)
    });
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains("expired at") && msg.contains("hangar tokens create"),
        "{msg}"
    );

    // ---- Bad input ----
    for (body, want, needle) in [
        (json!({"kind": "deploy", "app": "nope"}), 404, "nope"),
        (json!({"kind": "root"}), 400, "unknown token kind"),
        (json!({"kind": "deploy"}), 400, "--app"),
        (
            json!({"kind": "deploy", "app": "alpha", "expiry": "soon"}),
            400,
            "30d",
        ),
        (
            json!({"kind": "deploy", "app": "alpha", "expiry": "0s"}),
            400,
            "at least 1s",
        ),
        (json!({"kind": "org", "org_slug": "nope"}), 404, "nope"),
        (json!({"kind": "admin", "app": "alpha"}), 400, "admin"),
        (json!({"kind": "org", "bogus": 1}), 400, "bogus"),
        (
            json!({"kind": "deploy", "app": "alpha", "name": ""}),
            400,
            "name",
        ),
    ] {
        let (code, v) = call(&s, &admin, "POST", "/v1/tokens", Some(body.clone()));
        assert_eq!(code, want, "{body}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{body}: {v} does not mention {needle:?}"
        );
    }
    for (args, needle) in [
        (vec!["tokens", "create", "deploy", "--app", "nope"], "nope"),
        (
            vec![
                "tokens", "create", "deploy", "--app", "alpha", "--expiry", "soon",
            ],
            "30d",
        ),
        (vec!["tokens", "create", "root"], "root"),
        (vec!["tokens", "create", "deploy"], "--app"),
    ] {
        let out = s.hangar(&args);
        assert!(!out.status.success(), "hangar {args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "hangar {args:?}: {err}");
    }
    // Unknown and malformed tokens.
    expect(&s, "hgr_0000", "GET", "/v1/apps", None, &[401]);
}
