//! The edge proxy inside a real server: routing by Host to healthy machines, draining.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Server, eventually, testapp_image, through_proxy};

fn http_config(extra_env: &[(&str, &str)], exec: Option<&str>) -> Value {
    let env: serde_json::Map<String, Value> = extra_env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    let mut config = json!({
        "image": "testapp:latest",
        "env": env,
        "services": [{
            "protocol": "tcp",
            "internal_port": 8080,
            "ports": [{"port": 80, "handlers": ["http"]}],
            "checks": [{"type": "http", "path": "/health", "interval": "1s", "timeout": "1s"}]
        }]
    });
    if let Some(cmd) = exec {
        config["init"] = json!({"exec": ["/bin/sh", "-c", cmd]});
    }
    config
}

fn create(s: &Server, app: &str, name: &str, config: &Value) -> String {
    let body = json!({"name": name, "config": config}).to_string();
    let (code, m) = s.api("POST", &format!("/v1/apps/{app}/machines"), Some(&body));
    assert_eq!(code, 200, "{m}\n{}", s.server_log());
    m["id"].as_str().unwrap().to_owned()
}

fn served_by(s: &Server, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let (code, body) = through_proxy(s.http, "edge.localhost", "/");
            assert_eq!(code, 200, "{body}");
            body.split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[test]
fn routes_by_host_to_healthy_machines_and_drains_without_errors() {
    require_root!();
    let s = Server::start();
    s.import(&testapp_image(), "testapp:latest");
    s.ok(&["apps", "create", "edge"]);

    // Unknown host and no machine yet: readable errors.
    let (code, body) = through_proxy(s.http, "nope.localhost", "/");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("nope.localhost"), "{body}");
    let (code, body) = through_proxy(s.http, "edge.localhost", "/");
    assert_eq!(code, 503, "{body}");

    let m1 = create(&s, "edge", "m1", &http_config(&[], None));
    let m2 = create(&s, "edge", "m2", &http_config(&[], None));
    // The third machine fails its check for its first 4 seconds, then passes.
    let m3 = create(
        &s,
        "edge",
        "m3",
        &http_config(
            &[],
            Some("touch /tmp/unhealthy; (sleep 4; rm /tmp/unhealthy) & exec /bin/hangar-testapp"),
        ),
    );

    // Both healthy machines get traffic (least outstanding spreads sequential requests), the sick one none.
    let seen: BTreeSet<String> = eventually(
        Duration::from_secs(10),
        "both healthy machines to serve",
        || {
            let seen: BTreeSet<String> = served_by(&s, 20).into_iter().collect();
            (seen.len() >= 2).then_some(seen)
        },
    );
    assert!(seen.contains(&m1) && seen.contains(&m2), "{seen:?}");
    assert!(
        !seen.contains(&m3),
        "the unhealthy machine got traffic: {seen:?}"
    );
    let (_, m) = s.api("GET", &format!("/v1/apps/edge/machines/{m3}"), None);
    assert_eq!(m["checks"][0]["status"], "critical", "{m}");

    // Once its check passes it joins within about one check interval.
    eventually(
        Duration::from_secs(10),
        "the recovered machine to get traffic",
        || served_by(&s, 12).contains(&m3).then_some(()),
    );
    let (_, m) = s.api("GET", &format!("/v1/apps/edge/machines/{m3}"), None);
    assert_eq!(m["checks"][0]["status"], "passing", "{m}");
    let status = s.ok(&["machine", "status", &m3, "--app", "edge"]);
    assert!(
        status.contains("servicecheck-00-http-8080") && status.contains("passing"),
        "{status}"
    );

    // Stop m1 while a bounded load runs and a slow request is in flight on it: zero errors.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for _ in 0..3 {
        let (stop, done, failures, proxy) = (stop.clone(), done.clone(), failures.clone(), s.http);
        workers.push(std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let (code, body) = through_proxy(proxy, "edge.localhost", "/");
                if code != 200 {
                    failures.lock().unwrap().push(format!("{code} {body}"));
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let proxy = s.http;
            std::thread::spawn(move || through_proxy(proxy, "edge.localhost", "/slow?ms=2000"))
        })
        .collect();
    // The slow requests are in flight once the proxy counts them (metrics on the API listener).
    eventually(
        Duration::from_secs(10),
        "the slow requests to be in flight",
        || {
            let metrics = std::process::Command::new("curl")
                .args(["-sS", &format!("{}/metrics", s.url)])
                .output()
                .ok()?;
            let in_flight: f64 = String::from_utf8_lossy(&metrics.stdout)
                .lines()
                .filter(|l| l.starts_with("hangar_proxy_in_flight{") && l.contains("app=\"edge\""))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            (in_flight >= 3.0).then_some(())
        },
    );
    let started = Instant::now();
    s.ok(&["machine", "stop", &m1, "--app", "edge"]);
    let stop_took = started.elapsed();
    // Keep the load on for a while after the stop: some more requests must complete.
    let at_stop = done.load(Ordering::Relaxed);
    eventually(Duration::from_secs(20), "requests after the stop", || {
        (done.load(Ordering::Relaxed) >= at_stop + 20).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let total = done.load(Ordering::Relaxed);
    for h in slow {
        let (code, body) = h.join().unwrap();
        assert_eq!(code, 200, "a slow in-flight request failed: {body}");
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {total} requests failed during the stop: {failures:?}",
        failures.len()
    );
    assert!(
        total > 20,
        "the load was too small to mean anything: {total}"
    );
    assert!(
        stop_took < Duration::from_secs(10),
        "stop took {stop_took:?}"
    );
    let after: BTreeSet<String> = served_by(&s, 10).into_iter().collect();
    assert!(
        !after.contains(&m1),
        "the stopped machine still gets traffic: {after:?}"
    );

    // Metrics on the API listener.
    let metrics = std::process::Command::new("curl")
        .args(["-sS", &format!("{}/metrics", s.url)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        text.contains("edge"),
        "metrics have no series for the app: {text}"
    );
}

#[test]
fn custom_hostnames_route_to_their_app_until_removed() {
    require_root!();
    let s = Server::start();
    s.import(&testapp_image(), "testapp:latest");
    s.ok(&["apps", "create", "site"]);
    s.ok(&["apps", "create", "other"]);
    let m = create(&s, "site", "m1", &http_config(&[], None));

    // Not routed before it is added.
    let (code, body) = through_proxy(s.http, "www.example.com", "/");
    assert_eq!(code, 404, "{body}");

    // Added through the CLI (mixed case and a trailing dot are normalised), listed by both.
    let added = s.json(&["domains", "add", "WWW.Example.com.", "--app", "site"]);
    assert_eq!(added["hostname"], "www.example.com", "{added}");
    let listed = s.json(&["domains", "list", "--app", "site"]);
    assert_eq!(listed[0]["hostname"], "www.example.com", "{listed}");
    let (code, list) = s.api("GET", "/v1/apps/site/hostnames", None);
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["hostnames"].as_array().unwrap().len(), 1, "{list}");

    // The proxy routes the name (any case, with a port) to the app's machine.
    let body = eventually(
        Duration::from_secs(15),
        "the custom hostname to reach the app",
        || {
            let (code, body) = through_proxy(s.http, "www.EXAMPLE.com:80", "/");
            (code == 200).then_some(body)
        },
    );
    assert!(body.contains(&m), "served by another machine: {body}");
    // The app's own name still works.
    let (code, _) = through_proxy(s.http, "site.localhost", "/");
    assert_eq!(code, 200);

    // Bad input: readable 4xx answers.
    let post = |app: &str, host: &str| {
        s.api(
            "POST",
            &format!("/v1/apps/{app}/hostnames"),
            Some(&json!({ "hostname": host }).to_string()),
        )
    };
    let (code, err) = post("site", "not a host");
    assert_eq!(code, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("invalid label"),
        "{err}"
    );
    let (code, err) = post("site", "10.1.2.3");
    assert_eq!(code, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("IP address"),
        "{err}"
    );
    let (code, err) = post("other", "www.example.com");
    assert_eq!(code, 409, "{err}");
    assert!(err["error"].as_str().unwrap().contains("app site"), "{err}");
    let (code, err) = post("site", "www.example.com");
    assert_eq!(code, 409, "{err}");
    let (code, err) = post("site", "x.other.localhost");
    assert_eq!(code, 409, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("app other"),
        "{err}"
    );
    let (code, err) = post("nope", "nope.example.com");
    assert_eq!(code, 404, "{err}");
    let (code, err) = s.api("DELETE", "/v1/apps/other/hostnames/www.example.com", None);
    assert_eq!(code, 404, "{err}");
    let out = s.hangar(&["domains", "add", "www.example.com", "--app", "other"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("belongs to app site"), "{stderr}");

    // Removed: the proxy answers 404 for it again, the app's own name keeps working.
    s.ok(&["domains", "remove", "www.example.com", "--app", "site"]);
    eventually(
        Duration::from_secs(15),
        "the removed hostname to stop routing",
        || (through_proxy(s.http, "www.example.com", "/").0 == 404).then_some(()),
    );
    let (code, _) = through_proxy(s.http, "site.localhost", "/");
    assert_eq!(code, 200);
    let listed = s.json(&["domains", "list", "--app", "site"]);
    assert_eq!(listed, json!([]), "{listed}");
}
