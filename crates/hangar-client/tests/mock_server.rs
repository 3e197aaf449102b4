//! The client against a tiny in-process HTTP server that records each request and
//! answers with canned responses: request shapes, error mapping, NDJSON streaming and
//! streaming uploads. The real server's behaviour is covered by the whole-system tests.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hangar_client::{
    Client, ClientError, CreateMachineRequest, ListMachinesOptions, LogOptions, PullRequest,
    StopRequest, Token, WaitOptions,
};
use hangar_core::MachineId;
use hangar_core::machine::{GoDuration, MachineConfig};
use tokio::sync::mpsc;

/// One request as the mock server saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    /// Path and query exactly as sent (still percent-encoded).
    uri: String,
    auth: Option<String>,
    content_type: Option<String>,
    content_length: Option<String>,
    body: Vec<u8>,
}

impl Recorded {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

type Responder = Arc<dyn Fn(&Recorded) -> Response + Send + Sync>;

struct Mock {
    url: String,
    recorded: Arc<Mutex<Vec<Recorded>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Mock {
    async fn start(responder: impl Fn(&Recorded) -> Response + Send + Sync + 'static) -> Mock {
        let recorded: Arc<Mutex<Vec<Recorded>>> = Arc::default();
        let responder: Responder = Arc::new(responder);
        let rec = recorded.clone();
        let app = axum::Router::new().fallback(move |req: Request<Body>| {
            let rec = rec.clone();
            let responder = responder.clone();
            async move {
                // Headers are copied out first: a borrow of the request (whose body is
                // not `Sync`) must not live across the await below.
                let mut r = {
                    let header = |name: header::HeaderName| {
                        req.headers()
                            .get(name)
                            .map(|v| v.to_str().unwrap().to_owned())
                    };
                    Recorded {
                        method: req.method().to_string(),
                        uri: req.uri().to_string(),
                        auth: header(header::AUTHORIZATION),
                        content_type: header(header::CONTENT_TYPE),
                        content_length: header(header::CONTENT_LENGTH),
                        body: Vec::new(),
                    }
                };
                r.body = axum::body::to_bytes(req.into_body(), usize::MAX)
                    .await
                    .unwrap()
                    .to_vec();
                rec.lock().unwrap().push(r.clone());
                responder(&r)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Mock {
            url,
            recorded,
            task,
        }
    }

    fn client(&self) -> Client {
        Client::new(&self.url, Token::new("tok")).unwrap()
    }

    /// Takes the requests recorded so far.
    fn take(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.recorded.lock().unwrap())
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json(status: u16, value: serde_json::Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(value)).into_response()
}

fn machine_json(id: &str, state: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id, "name": "web-1", "state": state, "region": "local",
        "instance_id": "01JABCDEFGHJKMNPQRSTVWXYZ0", "private_ip": "fdaa::2",
        "private_ipv4": "10.0.0.2", "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z", "config": {"image": "busybox"},
        "events": [], "host_status": "ok", "app_name": "web"
    })
}

const ID: &str = "0123456789abcd";

fn id() -> MachineId {
    ID.parse().unwrap()
}

#[tokio::test]
async fn app_routes_send_the_documented_requests() {
    let mock = Mock::start(|r| {
        let app = serde_json::json!({"id": "web", "name": "web", "status": "pending",
            "organization": {"name": "acme", "slug": "acme"}, "machine_count": 0,
            "network": "default", "created_at": "2026-01-01T00:00:00Z"});
        match (r.method.as_str(), r.uri.as_str()) {
            ("POST", "/v1/apps") => json(201, app),
            ("GET", "/v1/apps/web") => json(200, app),
            ("GET", _) => json(200, serde_json::json!({"total_apps": 1, "apps": [app]})),
            ("DELETE", _) => StatusCode::ACCEPTED.into_response(),
            _ => StatusCode::IM_A_TEAPOT.into_response(),
        }
    })
    .await;
    let client = mock.client();

    let app = client.create_app("web", Some("acme")).await.unwrap();
    assert_eq!(
        (app.name.as_str(), app.organization.slug.as_str()),
        ("web", "acme")
    );
    let list = client.list_apps(Some("acme")).await.unwrap();
    assert_eq!(list.total_apps, 1);
    assert_eq!(client.get_app("web").await.unwrap().name, "web");
    client.destroy_app("web", true).await.unwrap();
    client.destroy_app("web", false).await.unwrap();

    let reqs = mock.take();
    let shapes: Vec<(&str, &str)> = reqs
        .iter()
        .map(|r| (r.method.as_str(), r.uri.as_str()))
        .collect();
    assert_eq!(
        shapes,
        [
            ("POST", "/v1/apps"),
            ("GET", "/v1/apps?org_slug=acme"),
            ("GET", "/v1/apps/web"),
            ("DELETE", "/v1/apps/web?force=true"),
            ("DELETE", "/v1/apps/web"),
        ]
    );
    assert_eq!(
        reqs[0].json(),
        serde_json::json!({"app_name": "web", "org_slug": "acme"})
    );
    assert_eq!(reqs[0].content_type.as_deref(), Some("application/json"));
    assert!(reqs.iter().all(|r| r.auth.as_deref() == Some("Bearer tok")));
}

#[tokio::test]
async fn machine_routes_send_the_documented_requests() {
    let mock = Mock::start(|r| {
        let path = r.uri.split('?').next().unwrap();
        match (r.method.as_str(), path.rsplit('/').next().unwrap()) {
            ("GET", "machines") => json(200, serde_json::json!([machine_json(ID, "started")])),
            ("POST", "machines") | ("GET" | "POST", ID) => json(200, machine_json(ID, "started")),
            ("POST", "start") => json(200, serde_json::json!({"previous_state": "stopped"})),
            ("GET", "wait") => json(200, serde_json::json!({"ok": true, "state": "started"})),
            ("GET", "events") => json(
                200,
                serde_json::json!([{"id": "e1", "type": "exit", "status": "stopped",
                    "source": "hangar", "timestamp": 1, "request": {"exit_event": {"exit_code": 1}}}]),
            ),
            _ => json(200, serde_json::json!({"ok": true})),
        }
    })
    .await;
    let client = mock.client();
    let config = MachineConfig {
        image: "busybox".into(),
        env: BTreeMap::from([("A".to_owned(), "1".to_owned())]),
        ..MachineConfig::default()
    };
    let request = CreateMachineRequest {
        config: config.clone(),
        name: Some("web-1".into()),
        ..CreateMachineRequest::default()
    };

    let m = client.create_machine("web", &request).await.unwrap();
    assert_eq!(m.id, id());
    let listed = client
        .list_machines(
            "web",
            &ListMachinesOptions {
                include_deleted: true,
                states: vec!["started".into(), "stopped".into()],
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    client
        .list_machines("web", &ListMachinesOptions::default())
        .await
        .unwrap();
    client.get_machine("web", &id()).await.unwrap();
    client.update_machine("web", &id(), &request).await.unwrap();
    let started = client.start_machine("web", &id()).await.unwrap();
    assert_eq!(started.previous_state, "stopped");
    let stop = StopRequest {
        signal: Some("SIGTERM".into()),
        timeout: Some(GoDuration::from_secs(10)),
    };
    assert!(client.stop_machine("web", &id(), &stop).await.unwrap().ok);
    client.restart_machine("web", &id(), &stop).await.unwrap();
    client
        .restart_machine("web", &id(), &StopRequest::default())
        .await
        .unwrap();
    client
        .signal_machine("web", &id(), "SIGUSR1")
        .await
        .unwrap();
    let waited = client
        .wait_machine(
            "web",
            &id(),
            &WaitOptions {
                state: Some("stopped".into()),
                timeout_secs: Some(30),
                instance_id: Some("01J".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(waited.state, "started");
    let events = client.machine_events("web", &id(), Some(5)).await.unwrap();
    assert_eq!(events[0].kind, "exit");
    client.destroy_machine("web", &id(), true).await.unwrap();

    let reqs = mock.take();
    let base = format!("/v1/apps/web/machines/{ID}");
    let shapes: Vec<(String, String)> = reqs
        .iter()
        .map(|r| (r.method.clone(), r.uri.clone()))
        .collect();
    let want: Vec<(String, String)> = [
        ("POST", "/v1/apps/web/machines".to_owned()),
        (
            "GET",
            "/v1/apps/web/machines?include_deleted=true&state=started%2Cstopped".to_owned(),
        ),
        ("GET", "/v1/apps/web/machines".to_owned()),
        ("GET", base.clone()),
        ("POST", base.clone()),
        ("POST", format!("{base}/start")),
        ("POST", format!("{base}/stop")),
        ("POST", format!("{base}/restart?signal=SIGTERM&timeout=10s")),
        ("POST", format!("{base}/restart")),
        ("POST", format!("{base}/signal")),
        (
            "GET",
            format!("{base}/wait?state=stopped&timeout=30&instance_id=01J"),
        ),
        ("GET", format!("{base}/events?limit=5")),
        ("DELETE", format!("{base}?force=true")),
    ]
    .into_iter()
    .map(|(m, u)| (m.to_owned(), u))
    .collect();
    assert_eq!(shapes, want);
    assert_eq!(
        reqs[0].json(),
        serde_json::json!({"config": {"image": "busybox", "env": {"A": "1"}}, "name": "web-1"})
    );
    assert_eq!(
        reqs[6].json(),
        serde_json::json!({"signal": "SIGTERM", "timeout": "10s"})
    );
    assert_eq!(reqs[9].json(), serde_json::json!({"signal": "SIGUSR1"}));
}

#[tokio::test]
async fn image_routes_encode_names_and_send_pull_bodies() {
    let mock = Mock::start(|r| match (r.method.as_str(), r.uri.as_str()) {
        ("GET", "/v1/images") => json(
            200,
            serde_json::json!([{"name": null, "manifest_digest": "sha256:aa",
                "config_digest": "sha256:bb", "size": 10, "layers": 1, "created": null}]),
        ),
        ("POST", "/v1/images/pull") => json(
            201,
            serde_json::json!({"name": "reg:5000/app:v1", "manifest_digest": "sha256:aa",
                "config_digest": "sha256:bb", "size": 10, "layers": 1, "created": null}),
        ),
        ("POST", "/v1/images/gc") => json(
            200,
            serde_json::json!({"removed_blobs": 2, "removed_layers": 1, "freed_bytes": 300}),
        ),
        _ => StatusCode::OK.into_response(),
    })
    .await;
    let client = mock.client();
    let images = client.list_images().await.unwrap();
    assert_eq!(images[0].name, None);
    let pulled = client
        .pull_image(&PullRequest {
            reference: "reg:5000/app:v1".into(),
            username: Some("u".into()),
            password: Some("p".into()),
            insecure: true,
        })
        .await
        .unwrap();
    assert_eq!(pulled.name.as_deref(), Some("reg:5000/app:v1"));
    client.remove_image("reg:5000/app:v1").await.unwrap();
    let gc = client.gc_images().await.unwrap();
    assert_eq!(gc.freed_bytes, 300);

    let reqs = mock.take();
    assert_eq!(
        reqs[1].json(),
        serde_json::json!({"reference": "reg:5000/app:v1", "username": "u", "password": "p", "insecure": true})
    );
    // The `/` of the name must not become a path separator of the route.
    assert_eq!(reqs[2].uri, "/v1/images/reg:5000%2Fapp:v1");
    assert_eq!(reqs[2].method, "DELETE");
}

#[tokio::test]
async fn errors_carry_the_status_and_the_servers_message() {
    let mock = Mock::start(|r| match r.uri.as_str() {
        "/v1/apps/missing" => json(
            404,
            serde_json::json!({"error": "app \"missing\" not found"}),
        ),
        "/v1/apps/locked" => json(401, serde_json::json!({"error": "invalid token"})),
        "/v1/apps/plain" => (StatusCode::BAD_GATEWAY, "upstream\nbroke").into_response(),
        "/v1/apps/empty" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ => json(200, serde_json::json!({"unexpected": true})),
    })
    .await;
    let client = mock.client();

    let err = client.get_app("missing").await.unwrap_err();
    assert!(
        matches!(&err, ClientError::Api { status: 404, message } if message == "app \"missing\" not found"),
        "{err:?}"
    );
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.to_string(), "app \"missing\" not found (HTTP 404)");

    let err = client.get_app("locked").await.unwrap_err();
    assert!(matches!(err, ClientError::Unauthorized { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("invalid token: check the API token")
    );

    let err = client.get_app("plain").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the server answered: upstream broke (HTTP 502)"
    );
    let err = client.get_app("empty").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "the server answered Internal Server Error (HTTP 500)"
    );

    let err = client.get_app("weird").await.unwrap_err();
    assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
    assert!(!err.to_string().contains('\n'));
}

#[tokio::test]
async fn a_closed_port_says_the_server_is_not_running() {
    // Bind then drop to get a loopback port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let client = Client::new(&url, Token::new("t")).unwrap();
    let err = client.list_apps(None).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot reach the Hangar API at {url}: is `hangar server` running?")
    );
}

#[tokio::test]
async fn healthz_sends_no_token() {
    let mock = Mock::start(|_| json(200, serde_json::json!({"ok": true}))).await;
    assert!(mock.client().healthz().await.unwrap());
    let reqs = mock.take();
    assert_eq!(reqs[0].uri, "/healthz");
    assert_eq!(reqs[0].auth, None);
}

#[tokio::test]
async fn logs_are_decoded_line_by_line_as_they_arrive() {
    // The test feeds the response body chunk by chunk; a line split over two chunks
    // must come out whole, and each line must come out before the next is sent.
    let (tx, rx) = mpsc::channel::<Result<String, std::io::Error>>(1);
    let rx = Arc::new(Mutex::new(Some(rx)));
    let mock = Mock::start(move |_| {
        let rx = rx.lock().unwrap().take().expect("one logs request");
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Response::builder()
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Body::from_stream(stream))
            .unwrap()
    })
    .await;
    let client = mock.client();
    let mut logs = client
        .machine_logs(
            "web",
            &id(),
            &LogOptions {
                follow: true,
                tail: Some(10),
            },
        )
        .await
        .unwrap();
    let line = |n: u32| {
        format!(
            r#"{{"timestamp":"2026-01-01T00:00:0{n}.000000001Z","stream":"stdout","message":"line {n}","machine_id":"{ID}","instance_id":"i"}}"#
        )
    };
    let first = line(1);
    let (a, b) = first.split_at(20);
    tx.send(Ok(a.to_owned())).await.unwrap();
    tx.send(Ok(format!("{b}\n\n"))).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), logs.next())
        .await
        .expect("first line arrives before the stream ends")
        .unwrap()
        .unwrap();
    assert_eq!(got.message, "line 1");
    assert_eq!(got.stream, "stdout");

    // A last line without a newline still counts.
    tx.send(Ok(line(2))).await.unwrap();
    drop(tx);
    let got = logs.next().await.unwrap().unwrap();
    assert_eq!(got.message, "line 2");
    assert!(logs.next().await.is_none());

    let reqs = mock.take();
    assert_eq!(
        reqs[0].uri,
        format!("/v1/apps/web/machines/{ID}/logs?follow=true&tail=10")
    );
}

#[tokio::test]
async fn a_garbled_log_line_is_an_error_not_a_panic() {
    let mock = Mock::start(|_| (StatusCode::OK, "not json\n").into_response()).await;
    let mut logs = mock
        .client()
        .machine_logs("web", &id(), &LogOptions::default())
        .await
        .unwrap();
    let err = logs.next().await.unwrap().unwrap_err();
    assert!(matches!(err, ClientError::Decode { .. }), "{err:?}");
}

fn imported() -> Response {
    json(
        201,
        serde_json::json!([{"name": "app:v1", "manifest_digest": "sha256:aa",
            "config_digest": "sha256:bb", "size": 10, "layers": 1, "created": null}]),
    )
}

#[tokio::test]
async fn importing_a_tarball_uploads_it_as_is() {
    let mock = Mock::start(|_| imported()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("image.tar");
    // Bigger than one upload chunk, so the streaming path is exercised.
    let content: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &content).unwrap();

    let images = mock
        .client()
        .import_image(&file, Some("app:v1"))
        .await
        .unwrap();
    assert_eq!(images[0].name.as_deref(), Some("app:v1"));
    let reqs = mock.take();
    assert_eq!(reqs[0].uri, "/v1/images/import?tag=app%3Av1");
    assert_eq!(reqs[0].content_type.as_deref(), Some("application/x-tar"));
    assert_eq!(reqs[0].content_length.as_deref(), Some("700000"));
    assert!(reqs[0].body == content, "the body differs from the file");
}

#[tokio::test]
async fn importing_an_oci_layout_directory_tars_it_on_the_fly() {
    let mock = Mock::start(|_| imported()).await;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let blob = vec![7u8; 600_000];
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        (
            "index.json",
            br#"{"schemaVersion":2,"manifests":[]}"#.to_vec(),
        ),
        ("blobs/sha256/aaaa", blob),
        ("blobs/sha256/bbbb", b"config".to_vec()),
    ];
    for (name, data) in &files {
        let path = layout.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }

    mock.client().import_image(&layout, None).await.unwrap();
    let reqs = mock.take();
    assert_eq!(reqs[0].uri, "/v1/images/import");
    assert_eq!(reqs[0].content_type.as_deref(), Some("application/x-tar"));

    let mut archive = tar::Archive::new(reqs[0].body.as_slice());
    let mut seen = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().into_owned();
        assert!(path.is_relative() && !path.starts_with(".."), "{path:?}");
        if entry.header().entry_type().is_file() {
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            seen.insert(path.display().to_string(), data);
        }
    }
    let want: BTreeMap<String, Vec<u8>> =
        files.into_iter().map(|(n, d)| (n.to_owned(), d)).collect();
    assert_eq!(seen, want);
}

#[tokio::test]
async fn a_directory_that_is_not_a_layout_is_refused_before_uploading() {
    let mock = Mock::start(|_| imported()).await;
    let dir = tempfile::tempdir().unwrap();
    let err = mock
        .client()
        .import_image(dir.path(), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::NotOciLayout { .. }), "{err:?}");
    let err = mock
        .client()
        .import_image(&dir.path().join("missing.tar"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.tar"));
    assert!(mock.take().is_empty(), "nothing may be sent");
}

#[tokio::test]
async fn org_routes_send_the_documented_requests() {
    let org = serde_json::json!({"slug": "acme", "name": "acme", "network_index": 2,
        "created_at": "2026-01-01T00:00:00Z"});
    let mock = Mock::start(move |r| match r.method.as_str() {
        "POST" => json(201, org.clone()),
        _ => json(200, serde_json::json!([org.clone()])),
    })
    .await;
    let client = mock.client();
    assert_eq!(client.create_org("acme").await.unwrap().network_index, 2);
    assert_eq!(client.list_orgs().await.unwrap()[0].slug, "acme");
    let reqs = mock.take();
    assert_eq!(
        (reqs[0].method.as_str(), reqs[0].uri.as_str()),
        ("POST", "/v1/orgs")
    );
    assert_eq!(reqs[0].json(), serde_json::json!({"slug": "acme"}));
    assert_eq!(
        (reqs[1].method.as_str(), reqs[1].uri.as_str()),
        ("GET", "/v1/orgs")
    );
}
