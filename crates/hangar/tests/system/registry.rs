//! The built-in registry with real clients: skopeo pushes and pulls, curl checks the
//! protocol's errors, and a pushed image runs as a machine without an import.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Server, curl, eventually, httpd_image};

/// Runs skopeo; panics with its stderr when it fails.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One raw HTTP call with curl: (status, headers, body).
fn raw(method: &str, url: &str, headers: &[String], data: Option<&str>) -> (u16, String, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-D", "-", "-X", method, "--max-time", "60", url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(d) = data {
        cmd.args(["--data-binary", d]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.pointer("/errors/0/code")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[test]
fn skopeo_push_pull_round_trip_and_the_pushed_image_runs() {
    require_root!();
    let s = Server::start();
    let host = s.url.trim_start_matches("http://").to_owned();
    let creds = format!("anyone:{}", s.token);
    s.ok(&["apps", "create", "regapp"]);
    s.ok(&["apps", "create", "other"]);

    let archive = s.dir.path().join("httpd-oci.tar");
    httpd_image()
        .write_oci_archive(&archive, Some("httpd:latest"))
        .unwrap();
    let src = format!("oci-archive:{}", archive.display());
    let dest = format!("docker://{host}/regapp:v1");

    // Without credentials the registry answers 401 with a challenge skopeo understands.
    let (status, head, body) = raw("GET", &format!("{}/v2/", s.url), &[], None);
    assert_eq!(status, 401, "{body}");
    assert!(
        head.contains("www-authenticate: basic realm=\"hangar\""),
        "{head}"
    );
    assert_eq!(error_code(&body), "UNAUTHORIZED");
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", &src, &dest])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a push without credentials succeeded"
    );

    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &creds,
        &src,
        &dest,
    ]);
    let pushed = skopeo(&["inspect", "--raw", &src]);
    let remote = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        "--creds",
        &creds,
        &dest,
    ]);
    assert_eq!(
        remote, pushed,
        "the registry serves the manifest byte for byte"
    );

    let out_dir = s.dir.path().join("pulled");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &creds,
        &dest,
        &format!("dir:{}", out_dir.display()),
    ]);
    assert_eq!(
        std::fs::read(out_dir.join("manifest.json")).unwrap(),
        pushed
    );
    let tags = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        "--creds",
        &creds,
        &format!("docker://{host}/regapp"),
    ]);
    let tags: Value = serde_json::from_slice(&tags).unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]), "{tags}");

    // The pushed image is a machine image under the name it was pushed to, no import.
    s.ok(&[
        "machine",
        "run",
        &format!("{host}/regapp:v1"),
        "--app",
        "regapp",
        "--name",
        "web",
    ]);
    let (code, list) = s.api("GET", "/v1/apps/regapp/machines", None);
    assert_eq!(code, 200, "{list}");
    let v4 = list[0]["private_ipv4"].as_str().unwrap().to_owned();
    let body = eventually(Duration::from_secs(10), "the pushed httpd", || {
        curl(&format!("http://{v4}:8080/"))
    });
    assert_eq!(body, "hello from hangar\n");
    s.ok(&[
        "machine",
        "run",
        "regapp:v1",
        "--app",
        "regapp",
        "--name",
        "bare",
    ]);

    // A deploy token of app regapp cannot push to app other (403), but to its own app.
    let (code, created) = s.api(
        "POST",
        "/v1/tokens",
        Some(r#"{"kind":"deploy","app":"regapp"}"#),
    );
    assert_eq!(code, 201, "{created}");
    let deploy = created["token"].as_str().unwrap().to_owned();
    let bearer = format!("Authorization: Bearer {deploy}");
    let (status, _, body) = raw(
        "POST",
        &format!("{}/v2/other/blobs/uploads/", s.url),
        std::slice::from_ref(&bearer),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(error_code(&body), "DENIED");
    let out = Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("ci:{deploy}"),
            &src,
            &format!("docker://{host}/other:v1"),
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a deploy token pushed to another app"
    );
    skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &format!("ci:{deploy}"),
        &src,
        &format!("docker://{host}/regapp/web:v2"),
    ]);

    // A push to a repository whose app does not exist says so.
    let admin = format!("Authorization: Bearer {}", s.token);
    let (status, _, body) = raw(
        "POST",
        &format!("{}/v2/nosuchapp/blobs/uploads/", s.url),
        std::slice::from_ref(&admin),
        None,
    );
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_code(&body), "NAME_UNKNOWN");
    assert!(body.contains("hangar apps create nosuchapp"), "{body}");

    // Bad input over the wire.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (status, _, body) = raw(
        "POST",
        &format!("{}/v2/regapp/blobs/uploads/?digest={wrong}", s.url),
        &[
            admin.clone(),
            "Content-Type: application/octet-stream".into(),
        ],
        Some("not what the digest says"),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_code(&body), "DIGEST_INVALID");
    let (status, _, body) = raw(
        "GET",
        &format!("{}/v2/RegApp/tags/list", s.url),
        std::slice::from_ref(&admin),
        None,
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "NAME_INVALID"),
        "{body}"
    );
    let (status, _, body) = raw(
        "GET",
        &format!("{}/v2/regapp/manifests/-bad", s.url),
        std::slice::from_ref(&admin),
        None,
    );
    assert_eq!(
        (status, error_code(&body).as_str()),
        (400, "TAG_INVALID"),
        "{body}"
    );
    let (status, _, body) = raw(
        "PATCH",
        &format!("{}/v2/regapp/blobs/uploads/", s.url),
        std::slice::from_ref(&admin),
        None,
    );
    assert_eq!(status, 405, "{body}");
    let (status, head, _) = raw(
        "POST",
        &format!("{}/v2/regapp/blobs/uploads/", s.url),
        std::slice::from_ref(&admin),
        None,
    );
    assert_eq!(status, 202);
    let location = head
        .lines()
        .find_map(|l| l.strip_prefix("location: "))
        .unwrap()
        .trim()
        .to_owned();
    let (status, _, body) = raw(
        "PATCH",
        &format!("{}{location}", s.url),
        &[admin.clone(), "Content-Length: 10000000000000".into()],
        None,
    );
    assert_eq!(status, 413, "{body}");
    assert_eq!(error_code(&body), "SIZE_INVALID");
}

/// `buildah push` (a second real client) to the built-in registry; the image runs.
#[test]
fn buildah_pushes_to_the_registry_and_the_image_runs() {
    require_root!();
    let have = Command::new("buildah").arg("--version").output();
    if !have.is_ok_and(|o| o.status.success()) {
        eprintln!("skipping: buildah is not installed (CI installs it)");
        return;
    }
    let s = Server::start();
    let host = s.url.trim_start_matches("http://").to_owned();
    s.ok(&["apps", "create", "bpush"]);
    // buildah's own storage lives in the test's temporary dir, not the host's.
    let root = s.dir.path().join("buildah-root");
    let runroot = s.dir.path().join("buildah-run");
    let buildah = |args: &[&str]| -> String {
        let out = Command::new("buildah")
            .arg("--root")
            .arg(&root)
            .arg("--runroot")
            .arg(&runroot)
            .args(["--storage-driver", "vfs"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "buildah {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let archive = s.dir.path().join("httpd-oci.tar");
    httpd_image()
        .write_oci_archive(&archive, Some("httpd:latest"))
        .unwrap();
    let source = format!("oci-archive:{}", archive.display());
    // `pull --quiet` prints the image id: the local image to push.
    let source = buildah(&["pull", "--quiet", &source]);
    let target = format!("docker://{host}/bpush:v1");
    let creds = format!("anyone:{}", s.token);
    // Without credentials: refused.
    let out = Command::new("buildah")
        .arg("--root")
        .arg(&root)
        .arg("--runroot")
        .arg(&runroot)
        .args([
            "--storage-driver",
            "vfs",
            "push",
            "--tls-verify=false",
            &source,
            &target,
        ])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a push without credentials must fail"
    );
    buildah(&[
        "push",
        "--tls-verify=false",
        "--creds",
        &creds,
        &source,
        &target,
    ]);
    let listed = s.ok(&["images", "list"]);
    assert!(listed.contains("bpush:v1"), "{listed}");
    s.ok(&[
        "machine",
        "run",
        "bpush:v1",
        "--app",
        "bpush",
        "--name",
        "web",
        "--port",
        "80:8080/tcp:http",
    ]);
    eventually(Duration::from_secs(20), "the pushed image to serve", || {
        let (code, _) = crate::support::through_proxy(s.http, "bpush.localhost", "/");
        (code == 200).then_some(())
    });
}
