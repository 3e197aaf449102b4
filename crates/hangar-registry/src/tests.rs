//! The router driven request by request over a temporary image store: every route, every
//! error code, and the properties the spec asks for (digests verified, nothing partial
//! visible, interrupted uploads resumable).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use hangar_runtime::image::ImageStore;
use hangar_runtime::image::build::{RawEntry, raw_tar};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tower::ServiceExt as _;

use super::*;

/// Tokens: `admin` may do everything; `deploy-a` may push and pull repositories of app `a`
/// (another app's repository is refused with 403); `ro` may only pull; repositories of
/// app `ghost` do not exist (404).
struct TestAuthorizer;

impl Authorizer for TestAuthorizer {
    fn authorize(
        &self,
        token: Option<String>,
        repo: Option<&str>,
        action: Action,
    ) -> BoxFuture<'static, Result<(), Denied>> {
        let app = repo.map(|r| names::app_of(r).to_string());
        Box::pin(async move {
            let token = token.ok_or_else(|| Denied::Unauthorized("missing token".into()))?;
            if app.as_deref() == Some("ghost") {
                return Err(Denied::NotFound("app ghost does not exist".into()));
            }
            match token.as_str() {
                "admin" => Ok(()),
                "deploy-a" => match app.as_deref() {
                    None | Some("a") => Ok(()),
                    Some(_) => Err(Denied::Forbidden("deploy token of app a".into())),
                },
                "ro" if matches!(action, Action::Pull | Action::Catalog) => Ok(()),
                "ro" => Err(Denied::Forbidden("read-only".into())),
                _ => Err(Denied::Unauthorized("invalid token".into())),
            }
        })
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    images: ImageStore,
    router: Router,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn code(&self) -> String {
        let json: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        json.pointer("/errors/0/code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageStore::open(&dir.path().join("images")).unwrap();
        let registry = Registry::open(
            images.clone(),
            &dir.path().join("registry"),
            Arc::new(TestAuthorizer),
        )
        .unwrap();
        Fixture {
            _dir: dir,
            images,
            router: router(registry),
        }
    }

    async fn send(&self, req: Request<Body>) -> Answer {
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.send(req.body(body).unwrap()).await
    }

    async fn admin(&self, method: &str, uri: &str, body: impl Into<Body>) -> Answer {
        self.call(method, uri, Some("admin"), &[], body.into())
            .await
    }

    /// Pushes a blob monolithically as `token`; returns its digest.
    async fn push_blob_as(&self, token: &str, repo: &str, data: &[u8]) -> (Answer, String) {
        let digest = sha(data);
        let a = self
            .call(
                "POST",
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                Some(token),
                &[],
                Body::from(data.to_vec()),
            )
            .await;
        (a, digest)
    }

    async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let (a, digest) = self.push_blob_as("admin", repo, data).await;
        assert_eq!(
            a.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&a.body)
        );
        assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
        digest
    }

    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Answer {
        self.call(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            Some("admin"),
            &[("content-type", media_type), ("host", "127.0.0.1:4280")],
            Body::from(bytes.to_vec()),
        )
        .await
    }

    /// Pushes a one-layer runnable image's blobs; returns the manifest bytes.
    async fn push_image_blobs(&self, repo: &str, marker: &str) -> Vec<u8> {
        let layer = raw_tar(&[
            RawEntry::dir("bin/"),
            RawEntry::file("hello.txt", marker.as_bytes()),
        ])
        .unwrap();
        let layer_digest = self.push_blob(repo, &layer).await;
        let config = serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }))
        .unwrap();
        let config_digest = self.push_blob(repo, &config).await;
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": manifests::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
        }))
        .unwrap()
    }
}

#[tokio::test]
async fn version_check_needs_credentials() {
    let f = Fixture::new();
    let a = f.call("GET", "/v2/", None, &[], Body::empty()).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.header("www-authenticate"), Some("Basic realm=\"hangar\""));
    assert_eq!(a.code(), "UNAUTHORIZED");
    let a = f
        .call("GET", "/v2/", Some("nope"), &[], Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    let a = f.admin("GET", "/v2/", Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, b"{}");
    assert_eq!(
        a.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    let basic = base64::engine::general_purpose::STANDARD.encode("someone:admin");
    let a = f
        .call(
            "GET",
            "/v2/",
            None,
            &[("authorization", &format!("Basic {basic}"))],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn blob_get_head_and_ranges() {
    let f = Fixture::new();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let digest = f.push_blob("a", &data).await;
    let uri = format!("/v2/a/blobs/{digest}");

    let a = f.admin("GET", &uri, Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body, data);
    assert_eq!(a.header("content-length"), Some("100000"));
    assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));

    let a = f.admin("HEAD", &uri, Body::empty()).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.body.is_empty());
    assert_eq!(a.header("content-length"), Some("100000"));

    for (range, start, end) in [
        ("bytes=10-19", 10, 19),
        ("bytes=99990-", 99990, 99999),
        ("bytes=-5", 99995, 99999),
        ("bytes=99999-200000", 99999, 99999),
    ] {
        let a = f
            .call(
                "GET",
                &uri,
                Some("admin"),
                &[("range", range)],
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(a.body, data[start..=end], "{range}");
        assert_eq!(
            a.header("content-range"),
            Some(format!("bytes {start}-{end}/100000").as_str())
        );
    }
    for range in [
        "bytes=100000-",
        "bytes=5-2",
        "items=0-1",
        "bytes=0-1,3-4",
        "bytes=-0",
    ] {
        let a = f
            .call(
                "GET",
                &uri,
                Some("admin"),
                &[("range", range)],
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(a.code(), "RANGE_INVALID");
        assert_eq!(a.header("content-range"), Some("bytes */100000"));
    }

    // The blob is content-addressed in the store, but only repositories that hold it
    // serve it.
    let a = f
        .admin("GET", &format!("/v2/b/blobs/{digest}"), Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "BLOB_UNKNOWN");
    let a = f
        .admin("GET", "/v2/a/blobs/sha256:1234", Body::empty())
        .await;
    assert_eq!(a.code(), "DIGEST_INVALID");

    let a = f.admin("DELETE", &uri, Body::empty()).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let a = f.admin("GET", &uri, Body::empty()).await;
    assert_eq!(a.code(), "BLOB_UNKNOWN");
    let a = f.admin("DELETE", &uri, Body::empty()).await;
    assert_eq!(a.code(), "BLOB_UNKNOWN");
}

#[tokio::test]
async fn post_then_put_monolithic_upload() {
    let f = Fixture::new();
    let a = f
        .admin("POST", "/v2/a/web/blobs/uploads/", Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.header("range"), Some("0-0"));
    let location = a.header("location").unwrap().to_string();
    assert!(location.starts_with("/v2/a/web/blobs/uploads/"));
    assert!(a.header("docker-upload-uuid").is_some());
    let data = b"monolithic".to_vec();
    let digest = sha(&data);
    let a = f
        .admin("PUT", &format!("{location}?digest={digest}"), data.clone())
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(
        a.header("location"),
        Some(format!("/v2/a/web/blobs/{digest}").as_str())
    );
    let a = f
        .admin("GET", &format!("/v2/a/web/blobs/{digest}"), Body::empty())
        .await;
    assert_eq!(a.body, data);
    // The session is finished.
    let a = f.admin("GET", &location, Body::empty()).await;
    assert_eq!(a.code(), "BLOB_UPLOAD_UNKNOWN");
    // The final PUT needs a digest.
    let a = f.admin("POST", "/v2/a/blobs/uploads/", Body::empty()).await;
    let location = a.header("location").unwrap().to_string();
    let a = f.admin("PUT", &location, Body::empty()).await;
    assert_eq!(a.code(), "DIGEST_INVALID");
}

#[tokio::test]
async fn chunked_upload_interrupted_then_resumed() {
    let f = Fixture::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let digest = sha(&data);
    let a = f.admin("POST", "/v2/a/blobs/uploads/", Body::empty()).await;
    let location = a.header("location").unwrap().to_string();

    let a = f
        .call(
            "PATCH",
            &location,
            Some("admin"),
            &[("content-range", "0-99999"), ("content-length", "100000")],
            Body::from(data[..100_000].to_vec()),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.header("range"), Some("0-99999"));

    // The next chunk is cut off after 50 000 bytes: the connection dies.
    let partial = Bytes::from(data[100_000..150_000].to_vec());
    let broken = futures_util::stream::iter(vec![
        Ok::<_, std::io::Error>(partial),
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ]);
    let a = f
        .call(
            "PATCH",
            &location,
            Some("admin"),
            &[],
            Body::from_stream(broken),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "BLOB_UPLOAD_INVALID");

    // The client asks where to resume.
    let a = f.admin("GET", &location, Body::empty()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.header("range"), Some("0-149999"));

    // A chunk that does not continue the upload is refused with the current range.
    let a = f
        .call(
            "PATCH",
            &location,
            Some("admin"),
            &[("content-range", "100000-199999")],
            Body::from(data[100_000..200_000].to_vec()),
        )
        .await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(a.code(), "RANGE_INVALID");
    assert_eq!(a.header("range"), Some("0-149999"));
    // A Content-Range that disagrees with Content-Length too.
    let a = f
        .call(
            "PATCH",
            &location,
            Some("admin"),
            &[("content-range", "150000-150009"), ("content-length", "5")],
            Body::from(vec![0u8; 5]),
        )
        .await;
    assert_eq!(a.code(), "RANGE_INVALID");

    let a = f
        .call(
            "PATCH",
            &location,
            Some("admin"),
            &[("content-range", "150000-249999")],
            Body::from(data[150_000..250_000].to_vec()),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert_eq!(a.header("range"), Some("0-249999"));
    // The rest comes with the final PUT.
    let a = f
        .admin(
            "PUT",
            &format!("{location}?digest={digest}"),
            data[250_000..].to_vec(),
        )
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let a = f
        .admin("GET", &format!("/v2/a/blobs/{digest}"), Body::empty())
        .await;
    assert_eq!(a.body, data);
}

#[tokio::test]
async fn digest_mismatch_leaves_nothing_visible() {
    let f = Fixture::new();
    let data = b"the real content".to_vec();
    let claimed = sha(b"something else");
    let a = f
        .admin(
            "POST",
            &format!("/v2/a/blobs/uploads/?digest={claimed}"),
            data.clone(),
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "DIGEST_INVALID");
    assert_eq!(a.json()["errors"][0]["detail"]["actual"], sha(&data));

    let a = f.admin("POST", "/v2/a/blobs/uploads/", Body::empty()).await;
    let location = a.header("location").unwrap().to_string();
    f.admin("PATCH", &location, data.clone()).await;
    let a = f
        .admin(
            "PUT",
            &format!("{location}?digest={claimed}"),
            Body::empty(),
        )
        .await;
    assert_eq!(a.code(), "DIGEST_INVALID");
    // The failed upload is discarded, not left to be committed later.
    let a = f.admin("GET", &location, Body::empty()).await;
    assert_eq!(a.code(), "BLOB_UPLOAD_UNKNOWN");

    for digest in [claimed, sha(&data)] {
        let a = f
            .admin("HEAD", &format!("/v2/a/blobs/{digest}"), Body::empty())
            .await;
        assert_eq!(a.status, StatusCode::NOT_FOUND);
        assert!(f.images.blob_path(&digest).is_none());
    }
    let tmp = std::fs::read_dir(f.images.root().join("tmp"))
        .unwrap()
        .count();
    assert_eq!(tmp, 0, "temporary upload files are removed");
}

#[tokio::test]
async fn huge_content_length_is_refused_before_reading() {
    let f = Fixture::new();
    // One exabyte: more than any test machine's free space.
    let huge = "1000000000000000000";
    let digest = sha(b"x");
    let a = f
        .call(
            "POST",
            &format!("/v2/a/blobs/uploads/?digest={digest}"),
            Some("admin"),
            &[("content-length", huge)],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.code(), "SIZE_INVALID");
    let a = f.admin("POST", "/v2/a/blobs/uploads/", Body::empty()).await;
    let location = a.header("location").unwrap().to_string();
    let a = f
        .call(
            "PATCH",
            &location,
            Some("admin"),
            &[("content-length", huge)],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let a = f.admin("GET", &location, Body::empty()).await;
    assert_eq!(a.header("range"), Some("0-0"));
    let a = f
        .call(
            "PUT",
            "/v2/a/manifests/v1",
            Some("admin"),
            &[("content-length", "5000000")],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn cancel_and_foreign_sessions() {
    let f = Fixture::new();
    let a = f.admin("POST", "/v2/a/blobs/uploads/", Body::empty()).await;
    let location = a.header("location").unwrap().to_string();
    let id = location.rsplit('/').next().unwrap();
    // Another repository cannot reach the session.
    let a = f
        .admin("GET", &format!("/v2/b/blobs/uploads/{id}"), Body::empty())
        .await;
    assert_eq!(a.code(), "BLOB_UPLOAD_UNKNOWN");
    let a = f.admin("DELETE", &location, Body::empty()).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = f.admin("GET", &location, Body::empty()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "BLOB_UPLOAD_UNKNOWN");
    let a = f.admin("DELETE", &location, Body::empty()).await;
    assert_eq!(a.code(), "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn cross_repository_mount() {
    let f = Fixture::new();
    let digest = f.push_blob("b/base", b"shared layer").await;
    let a = f
        .admin(
            "POST",
            &format!("/v2/a/blobs/uploads/?mount={digest}&from=b/base"),
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(
        a.header("location"),
        Some(format!("/v2/a/blobs/{digest}").as_str())
    );
    let a = f
        .admin("GET", &format!("/v2/a/blobs/{digest}"), Body::empty())
        .await;
    assert_eq!(a.body, b"shared layer");

    // A token that may not pull from the source gets an ordinary upload session instead.
    let a = f
        .call(
            "POST",
            &format!("/v2/a/app/blobs/uploads/?mount={digest}&from=b/base"),
            Some("deploy-a"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let a = f
        .call(
            "HEAD",
            &format!("/v2/a/app/blobs/{digest}"),
            Some("deploy-a"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    // So does a source that does not hold the blob.
    let other = sha(b"nowhere");
    let a = f
        .admin(
            "POST",
            &format!("/v2/a/blobs/uploads/?mount={other}&from=b/base"),
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let a = f
        .admin(
            "POST",
            &format!("/v2/a/blobs/uploads/?mount={digest}&from=B"),
            Body::empty(),
        )
        .await;
    assert_eq!(a.code(), "NAME_INVALID");
}

#[tokio::test]
async fn image_manifest_by_tag_and_digest_runs_as_machine_image() {
    let f = Fixture::new();
    let manifest = f.push_image_blobs("a", "v1").await;
    let digest = sha(&manifest);
    let a = f
        .put_manifest("a", "v1", manifests::OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(
        a.header("location"),
        Some(format!("/v2/a/manifests/{digest}").as_str())
    );

    for reference in ["v1", digest.as_str()] {
        let a = f
            .admin(
                "GET",
                &format!("/v2/a/manifests/{reference}"),
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, manifest, "byte-identical");
        assert_eq!(a.header("content-type"), Some(manifests::OCI_MANIFEST));
        assert_eq!(a.header("docker-content-digest"), Some(digest.as_str()));
        let a = f
            .admin(
                "HEAD",
                &format!("/v2/a/manifests/{reference}"),
                Body::empty(),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK);
        assert!(a.body.is_empty());
        assert_eq!(
            a.header("content-length"),
            Some(manifest.len().to_string().as_str())
        );
    }

    // The pushed image is a machine image under the bare name, the host-qualified name
    // and by digest; its layer is unpacked at the first resolve.
    for name in ["a:v1", "127.0.0.1:4280/a:v1", &format!("a@{digest}")] {
        let resolved = f.images.resolve(name).unwrap();
        assert_eq!(resolved.manifest_digest, digest, "{name}");
        assert_eq!(
            std::fs::read_to_string(resolved.layers[0].join("hello.txt")).unwrap(),
            "v1"
        );
    }

    // Pushing again by digest is idempotent; a wrong digest is refused.
    let a = f
        .put_manifest("a", &digest, manifests::OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let wrong = sha(b"other");
    let a = f
        .put_manifest("a", &wrong, manifests::OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(a.code(), "DIGEST_INVALID");

    // Moving the tag to a new image moves the machine image name too.
    let manifest2 = f.push_image_blobs("a", "v2").await;
    let a = f
        .put_manifest("a", "v1", manifests::OCI_MANIFEST, &manifest2)
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(
        f.images.resolve("a:v1").unwrap().manifest_digest,
        sha(&manifest2)
    );

    let a = f.admin("GET", "/v2/a/manifests/v9", Body::empty()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "MANIFEST_UNKNOWN");
    let a = f
        .admin("GET", &format!("/v2/b/manifests/{digest}"), Body::empty())
        .await;
    assert_eq!(a.code(), "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn docker_schema2_manifests_and_lists() {
    let f = Fixture::new();
    let oci = f.push_image_blobs("a", "docker").await;
    let mut json: Value = serde_json::from_slice(&oci).unwrap();
    json["mediaType"] = manifests::DOCKER_MANIFEST.into();
    json["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
    json["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar".into();
    let manifest = serde_json::to_vec_pretty(&json).unwrap();
    let digest = sha(&manifest);
    let a = f
        .put_manifest("a", &digest, manifests::DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );

    let (os, arch) = manifests::host_platform_for_tests();
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifests::DOCKER_LIST,
        "manifests": [
            {"mediaType": manifests::DOCKER_MANIFEST, "digest": digest, "size": manifest.len(),
             "platform": {"os": os, "architecture": arch}},
        ],
    }))
    .unwrap();
    let a = f
        .put_manifest("a", "multi", manifests::DOCKER_LIST, &list)
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    let a = f.admin("GET", "/v2/a/manifests/multi", Body::empty()).await;
    assert_eq!(a.body, list);
    assert_eq!(a.header("content-type"), Some(manifests::DOCKER_LIST));
    // The index names this host's platform: that entry is the machine image.
    assert_eq!(f.images.resolve("a:multi").unwrap().manifest_digest, digest);

    // An OCI index naming a manifest the repository does not hold is refused.
    let missing = sha(b"missing manifest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifests::OCI_INDEX,
        "manifests": [{"mediaType": manifests::OCI_MANIFEST, "digest": missing, "size": 1}],
    }))
    .unwrap();
    let a = f
        .put_manifest("a", "broken", manifests::OCI_INDEX, &index)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(a.json()["errors"][0]["detail"]["digest"], missing);
}

#[tokio::test]
async fn manifest_naming_missing_blobs_is_refused() {
    let f = Fixture::new();
    let manifest = f.push_image_blobs("a", "x").await;
    // The same manifest in a repository that holds none of its blobs.
    let a = f
        .put_manifest("a/other", "v1", manifests::OCI_MANIFEST, &manifest)
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.code(), "MANIFEST_BLOB_UNKNOWN");
    let a = f
        .admin("GET", "/v2/a/other/manifests/v1", Body::empty())
        .await;
    assert_eq!(a.code(), "MANIFEST_UNKNOWN");
    assert!(f.images.resolve("a/other:v1").is_err());
    assert!(f.images.blob_path(&sha(&manifest)).is_none());
}

#[tokio::test]
async fn malformed_manifests_names_and_references() {
    let f = Fixture::new();
    for (content_type, body, why) in [
        (manifests::OCI_MANIFEST, "not json", "not json"),
        (
            manifests::OCI_MANIFEST,
            r#"{"schemaVersion":1,"config":{},"layers":[]}"#,
            "schema 1",
        ),
        (
            manifests::OCI_MANIFEST,
            r#"{"schemaVersion":2,"layers":[]}"#,
            "no config",
        ),
        (
            manifests::OCI_MANIFEST,
            r#"{"schemaVersion":2,"config":{"digest":"sha256:00"},"layers":[]}"#,
            "bad digest",
        ),
        (
            manifests::OCI_INDEX,
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#,
            "type mismatch",
        ),
        (
            "application/vnd.docker.distribution.manifest.v1+json",
            r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v1+json"}"#,
            "unsupported type",
        ),
        ("application/json", r#"{"schemaVersion":2}"#, "no shape"),
    ] {
        let a = f
            .put_manifest("a", "v1", content_type, body.as_bytes())
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{why}");
        assert_eq!(a.code(), "MANIFEST_INVALID", "{why}");
    }
    for name in ["A", "a//b", "a/-b", "a..b", "_blobs", &"a".repeat(256)] {
        let a = f
            .admin("GET", &format!("/v2/{name}/tags/list"), Body::empty())
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(a.code(), "NAME_INVALID", "{name}");
    }
    for reference in ["-v1", ".x", "a%20b", &"t".repeat(129)] {
        let a = f
            .admin(
                "GET",
                &format!("/v2/a/manifests/{reference}"),
                Body::empty(),
            )
            .await;
        assert_eq!(a.code(), "TAG_INVALID", "{reference}");
    }
    let a = f
        .admin("GET", "/v2/a/manifests/sha512:abcd", Body::empty())
        .await;
    assert_eq!(a.code(), "DIGEST_INVALID");
    let a = f.admin("GET", "/v2/a/nothing-here", Body::empty()).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "UNSUPPORTED");
    let a = f.admin("POST", "/v2/a/manifests/v1", Body::empty()).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.code(), "UNSUPPORTED");
}

#[tokio::test]
async fn tags_pagination_catalog_and_delete() {
    let f = Fixture::new();
    let manifest = f.push_image_blobs("a", "x").await;
    let digest = sha(&manifest);
    for tag in ["v3", "v1", "v2", "latest"] {
        let a = f
            .put_manifest("a", tag, manifests::OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(a.status, StatusCode::CREATED);
    }
    let a = f.admin("GET", "/v2/a/tags/list", Body::empty()).await;
    assert_eq!(
        a.json(),
        json!({"name": "a", "tags": ["latest", "v1", "v2", "v3"]})
    );
    assert!(a.header("link").is_none());
    let a = f.admin("GET", "/v2/a/tags/list?n=2", Body::empty()).await;
    assert_eq!(a.json()["tags"], json!(["latest", "v1"]));
    assert_eq!(
        a.header("link"),
        Some("</v2/a/tags/list?n=2&last=v1>; rel=\"next\"")
    );
    let a = f
        .admin("GET", "/v2/a/tags/list?n=2&last=v1", Body::empty())
        .await;
    assert_eq!(a.json()["tags"], json!(["v2", "v3"]));
    let a = f
        .admin("GET", "/v2/a/tags/list?n=many", Body::empty())
        .await;
    assert_eq!(a.code(), "PAGINATION_NUMBER_INVALID");
    let a = f.admin("GET", "/v2/nothing/tags/list", Body::empty()).await;
    assert_eq!(a.code(), "NAME_UNKNOWN");

    f.push_blob("b", b"b's blob").await;
    let a = f.admin("GET", "/v2/_catalog", Body::empty()).await;
    assert_eq!(a.json(), json!({"repositories": ["a", "b"]}));
    let a = f.admin("GET", "/v2/_catalog?n=1", Body::empty()).await;
    assert_eq!(a.json(), json!({"repositories": ["a"]}));
    assert_eq!(
        a.header("link"),
        Some("</v2/_catalog?n=1&last=a>; rel=\"next\"")
    );
    // A deploy token of app a sees only a's repositories.
    let a = f
        .call("GET", "/v2/_catalog", Some("deploy-a"), &[], Body::empty())
        .await;
    assert_eq!(a.json(), json!({"repositories": ["a"]}));

    // Deleting a tag keeps the manifest; deleting by digest removes it and its tags.
    let a = f.admin("DELETE", "/v2/a/manifests/v3", Body::empty()).await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert!(f.images.resolve("a:v3").is_err());
    assert!(f.images.resolve("a:v2").is_ok());
    let a = f
        .admin(
            "DELETE",
            &format!("/v2/a/manifests/{digest}"),
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let a = f.admin("GET", "/v2/a/tags/list", Body::empty()).await;
    assert_eq!(a.json()["tags"], json!([]));
    let a = f
        .admin("GET", &format!("/v2/a/manifests/{digest}"), Body::empty())
        .await;
    assert_eq!(a.code(), "MANIFEST_UNKNOWN");
    for name in ["a:v1", "127.0.0.1:4280/a:latest", &format!("a@{digest}")] {
        assert!(f.images.resolve(name).is_err(), "{name}");
    }
    let a = f
        .admin(
            "DELETE",
            &format!("/v2/a/manifests/{digest}"),
            Body::empty(),
        )
        .await;
    assert_eq!(a.code(), "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn authorization_per_app() {
    let f = Fixture::new();
    let (a, _) = f.push_blob_as("deploy-a", "a/web", b"mine").await;
    assert_eq!(a.status, StatusCode::CREATED);
    let (a, _) = f.push_blob_as("deploy-a", "b", b"theirs").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.code(), "DENIED");
    let (a, _) = f.push_blob_as("ro", "a", b"read only").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    let (a, _) = f.push_blob_as("admin", "ghost", b"no app").await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.code(), "NAME_UNKNOWN");
    let a = f
        .call("POST", "/v2/a/blobs/uploads/", None, &[], Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.header("www-authenticate"), Some("Basic realm=\"hangar\""));
    // Pulling is allowed to the read-only token, deleting is not.
    let digest = sha(b"mine");
    let a = f
        .call(
            "GET",
            &format!("/v2/a/web/blobs/{digest}"),
            Some("ro"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = f
        .call(
            "DELETE",
            &format!("/v2/a/web/blobs/{digest}"),
            Some("ro"),
            &[],
            Body::empty(),
        )
        .await;
    assert_eq!(a.code(), "DENIED");
}

#[tokio::test]
async fn referrers_list_manifests_by_subject() {
    let f = Fixture::new();
    let manifest = f.push_image_blobs("a", "x").await;
    let subject = sha(&manifest);
    f.put_manifest("a", "v1", manifests::OCI_MANIFEST, &manifest)
        .await;
    let empty_config = f.push_blob("a", b"{}").await;
    let signature = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": manifests::OCI_MANIFEST,
        "artifactType": "application/example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty_config, "size": 2},
        "layers": [],
        "subject": {"mediaType": manifests::OCI_MANIFEST, "digest": subject, "size": manifest.len()},
        "annotations": {"who": "me"},
    }))
    .unwrap();
    let sig_digest = sha(&signature);
    let a = f
        .put_manifest("a", &sig_digest, manifests::OCI_MANIFEST, &signature)
        .await;
    assert_eq!(
        a.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(a.header("oci-subject"), Some(subject.as_str()));

    let a = f
        .admin("GET", &format!("/v2/a/referrers/{subject}"), Body::empty())
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("content-type"), Some(manifests::OCI_INDEX));
    assert_eq!(
        a.json()["manifests"],
        json!([{
            "mediaType": manifests::OCI_MANIFEST,
            "digest": sig_digest,
            "size": signature.len(),
            "artifactType": "application/example.signature",
            "annotations": {"who": "me"},
        }])
    );
    let a = f
        .admin(
            "GET",
            &format!("/v2/a/referrers/{subject}?artifactType=other"),
            Body::empty(),
        )
        .await;
    assert_eq!(a.json()["manifests"], json!([]));
    assert_eq!(a.header("oci-filters-applied"), Some("artifactType"));
    // The artifact is not an image: it never becomes a machine image.
    assert!(f.images.resolve(&format!("a@{sig_digest}")).is_err());
}

#[tokio::test]
async fn image_gc_keeps_what_the_registry_holds() {
    let f = Fixture::new();
    let lonely = f.push_blob("a", b"uploaded, no manifest yet").await;
    let manifest = f.push_image_blobs("a", "x").await;
    let digest = sha(&manifest);
    f.put_manifest("a", &digest, manifests::OCI_MANIFEST, &manifest)
        .await;
    f.images.gc(&Default::default()).unwrap();
    assert!(f.images.blob_path(&lonely).is_some());
    assert!(f.images.resolve(&format!("a@{digest}")).is_ok());
    // Once the registry lets go, gc removes the blob.
    f.admin("DELETE", &format!("/v2/a/blobs/{lonely}"), Body::empty())
        .await;
    f.images.gc(&Default::default()).unwrap();
    assert!(f.images.blob_path(&lonely).is_none());
}
