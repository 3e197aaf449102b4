//! Health checks: TCP and HTTP probes into a machine's private address.
//!
//! Every started machine with checks gets one checker task per run. A check is
//! `critical` until its first success, so a new machine gets traffic only once it is
//! healthy. Until the first success, probes run every half second (or the interval, if
//! shorter) so deploys are not held up by a long interval; after that they run at the
//! configured interval. Failures inside the grace period read as `warning`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hangar_core::machine::{CheckStatus, MachineConfig, MachineServiceCheck};

/// Default time between probes (Fly's default).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(15);
/// Default time a probe may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Probe period while a check has not passed yet.
pub const FAST_INTERVAL: Duration = Duration::from_millis(500);
/// Probe period during the first seconds of a run, before the first pass.
pub const STARTUP_INTERVAL: Duration = Duration::from_millis(50);
/// How long after a start the checks probe at [`STARTUP_INTERVAL`].
pub const STARTUP_WINDOW: Duration = Duration::from_secs(3);

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connect.
    Tcp,
    /// An HTTP request; 2xx and 3xx pass.
    Http {
        /// Method.
        method: String,
        /// Path (with query).
        path: String,
        /// `https` instead of `http`.
        https: bool,
        /// Skip certificate verification for `https`.
        tls_skip_verify: bool,
        /// Extra headers.
        headers: Vec<(String, String)>,
    },
}

/// One check of a machine, with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    /// Name shown in the API (`servicecheck-00-http-8080` for service checks, as Fly names them).
    pub name: String,
    /// The probe.
    pub probe: Probe,
    /// Port inside the machine.
    pub port: u16,
    /// Time between probes.
    pub interval: Duration,
    /// Time a probe may take.
    pub timeout: Duration,
    /// Failures during this time after start are warnings.
    pub grace_period: Duration,
    /// The service's internal port, for service checks; `None` for machine-level checks.
    pub service_port: Option<u16>,
}

fn spec(
    name: String,
    c: &MachineServiceCheck,
    default_port: Option<u16>,
    service_port: Option<u16>,
) -> Option<CheckSpec> {
    let port = c.port.or(default_port)?;
    let kind = c
        .kind
        .as_deref()
        .unwrap_or(if c.path.is_some() { "http" } else { "tcp" });
    let probe = if kind.eq_ignore_ascii_case("http") {
        Probe::Http {
            method: c
                .method
                .clone()
                .unwrap_or_else(|| "GET".to_owned())
                .to_ascii_uppercase(),
            path: c.path.clone().unwrap_or_else(|| "/".to_owned()),
            https: c
                .protocol
                .as_deref()
                .is_some_and(|p| p.eq_ignore_ascii_case("https")),
            tls_skip_verify: c.tls_skip_verify.unwrap_or(false),
            headers: c
                .headers
                .iter()
                .flat_map(|h| h.values.iter().map(|v| (h.name.clone(), v.clone())))
                .collect(),
        }
    } else {
        Probe::Tcp
    };
    Some(CheckSpec {
        name,
        probe,
        port,
        interval: c
            .interval
            .map_or(DEFAULT_INTERVAL, |d| d.0)
            .max(Duration::from_millis(100)),
        timeout: c
            .timeout
            .map_or(DEFAULT_TIMEOUT, |d| d.0)
            .max(Duration::from_millis(50)),
        grace_period: c.grace_period.map_or(Duration::ZERO, |d| d.0),
        service_port,
    })
}

/// The checks of a machine config: machine-level `checks` and every service's `checks`.
/// A machine-level check without a port uses the first service's internal port; one with
/// no port at all is skipped (the config validation reports it).
pub fn check_specs(config: &MachineConfig) -> Vec<CheckSpec> {
    let first_port = config.services.first().map(|s| s.internal_port);
    let mut out: Vec<CheckSpec> = config
        .checks
        .iter()
        .filter_map(|(name, c)| spec(name.clone(), &c.check, first_port, None))
        .collect();
    for (i, svc) in config.services.iter().enumerate() {
        for c in &svc.checks {
            let kind = c
                .kind
                .as_deref()
                .unwrap_or(if c.path.is_some() { "http" } else { "tcp" })
                .to_ascii_lowercase();
            let port = c.port.unwrap_or(svc.internal_port);
            let mut name = format!("servicecheck-{i:02}-{kind}-{port}");
            let mut n = 1;
            while out.iter().any(|s| s.name == name) {
                n += 1;
                name = format!("servicecheck-{i:02}-{kind}-{port}-{n}");
            }
            out.extend(spec(
                name,
                c,
                Some(svc.internal_port),
                Some(svc.internal_port),
            ));
        }
    }
    out
}

/// The HTTP client of checks. It never follows redirects (a check of one machine must not
/// make the host fetch another tenant's service or a host-local endpoint; a 3xx passes as
/// is) and ignores proxy settings of the environment.
pub fn client(accept_invalid_certs: bool) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(0)
        .danger_accept_invalid_certs(accept_invalid_certs)
        .build()
        .unwrap_or_default()
}

/// Runs one probe. `Ok` carries the output to show; `Err` why it failed.
pub async fn probe(
    spec: &CheckSpec,
    ip: IpAddr,
    client: &reqwest::Client,
) -> Result<String, String> {
    let addr = SocketAddr::new(ip, spec.port);
    match &spec.probe {
        Probe::Tcp => {
            match tokio::time::timeout(spec.timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(format!("connected to {addr}")),
                Ok(Err(e)) => Err(format!("connect to {addr} failed: {e}")),
                Err(_) => Err(format!(
                    "connect to {addr} timed out after {:?}",
                    spec.timeout
                )),
            }
        }
        Probe::Http {
            method,
            path,
            https,
            tls_skip_verify,
            headers,
        } => {
            let scheme = if *https { "https" } else { "http" };
            let host = match ip {
                IpAddr::V4(v4) => v4.to_string(),
                IpAddr::V6(v6) => format!("[{v6}]"),
            };
            let url = format!("{scheme}://{host}:{}{path}", spec.port);
            let method = reqwest::Method::from_bytes(method.as_bytes())
                .map_err(|e| format!("invalid method {method:?}: {e}"))?;
            let client = if *tls_skip_verify && *https {
                self::client(true)
            } else {
                client.clone()
            };
            let mut req = client.request(method.clone(), &url).timeout(spec.timeout);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let body = resp.text().await.unwrap_or_default();
                    let snippet: String = body.chars().take(200).collect();
                    let out = format!("{method} {url}: {status} {}", snippet.trim());
                    if status.is_success() || status.is_redirection() {
                        Ok(out)
                    } else {
                        Err(out)
                    }
                }
                Err(e) if e.is_timeout() => Err(format!(
                    "{method} {url}: timed out after {:?}",
                    spec.timeout
                )),
                Err(e) => Err(format!("{method} {url}: {e}")),
            }
        }
    }
}

/// Whether every check that gates traffic to `service_port` passes: machine-level checks
/// and that service's own checks.
pub fn passing_for(
    statuses: &BTreeMap<String, CheckStatus>,
    specs: &[CheckSpec],
    service_port: u16,
) -> bool {
    specs
        .iter()
        .filter(|s| s.service_port.is_none() || s.service_port == Some(service_port))
        .all(|s| {
            statuses
                .get(&s.name)
                .is_some_and(|st| st.status == "passing")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::machine::{GoDuration, MachineCheck, MachineService};

    fn svc_check(kind: &str, path: Option<&str>) -> MachineServiceCheck {
        MachineServiceCheck {
            kind: Some(kind.into()),
            path: path.map(Into::into),
            interval: Some(GoDuration::from_secs(5)),
            ..Default::default()
        }
    }

    #[test]
    fn specs_from_machine_and_service_checks() {
        let mut cfg = MachineConfig {
            image: "x".into(),
            ..Default::default()
        };
        cfg.services.push(MachineService {
            protocol: "tcp".into(),
            internal_port: 8080,
            checks: vec![
                svc_check("http", Some("/health")),
                svc_check("tcp", None),
                svc_check("tcp", None),
            ],
            ..Default::default()
        });
        cfg.checks.insert(
            "alive".into(),
            MachineCheck {
                check: svc_check("tcp", None),
                kind: None,
            },
        );
        let specs = check_specs(&cfg);
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "alive",
                "servicecheck-00-http-8080",
                "servicecheck-00-tcp-8080",
                "servicecheck-00-tcp-8080-2"
            ]
        );
        assert_eq!(
            specs[0].port, 8080,
            "machine-level check without a port uses the first service's port"
        );
        assert_eq!(specs[0].service_port, None);
        assert_eq!(specs[1].interval, Duration::from_secs(5));
        assert_eq!(specs[1].timeout, DEFAULT_TIMEOUT);
        assert!(
            matches!(&specs[1].probe, Probe::Http { path, method, .. } if path == "/health" && method == "GET")
        );
    }

    #[test]
    fn passing_requires_every_relevant_check() {
        let mut cfg = MachineConfig {
            image: "x".into(),
            ..Default::default()
        };
        cfg.services.push(MachineService {
            protocol: "tcp".into(),
            internal_port: 80,
            checks: vec![svc_check("tcp", None)],
            ..Default::default()
        });
        cfg.services.push(MachineService {
            protocol: "tcp".into(),
            internal_port: 81,
            checks: vec![svc_check("tcp", None)],
            ..Default::default()
        });
        let specs = check_specs(&cfg);
        let st = |name: &str, status: &str| {
            (
                name.to_owned(),
                CheckStatus {
                    name: name.into(),
                    status: status.into(),
                    output: String::new(),
                    updated_at: String::new(),
                },
            )
        };
        let statuses: BTreeMap<_, _> = [
            st("servicecheck-00-tcp-80", "passing"),
            st("servicecheck-01-tcp-81", "critical"),
        ]
        .into();
        assert!(passing_for(&statuses, &specs, 80));
        assert!(!passing_for(&statuses, &specs, 81));
        assert!(
            !passing_for(&BTreeMap::new(), &specs, 80),
            "no result yet is not passing"
        );
    }

    #[tokio::test]
    async fn probes_against_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 4096];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let resp = if req.starts_with("GET /ok") {
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                    } else {
                        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\nsick"
                    };
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
        let client = reqwest::Client::new();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mk = |probe: Probe, port: u16| CheckSpec {
            name: "c".into(),
            probe,
            port,
            interval: DEFAULT_INTERVAL,
            timeout: Duration::from_secs(2),
            grace_period: Duration::ZERO,
            service_port: None,
        };
        let http = |path: &str| Probe::Http {
            method: "GET".into(),
            path: path.into(),
            https: false,
            tls_skip_verify: false,
            headers: vec![],
        };
        assert!(probe(&mk(Probe::Tcp, port), ip, &client).await.is_ok());
        assert!(
            probe(&mk(http("/ok"), port), ip, &client)
                .await
                .unwrap()
                .contains("200")
        );
        assert!(
            probe(&mk(http("/bad"), port), ip, &client)
                .await
                .unwrap_err()
                .contains("503")
        );
        // A closed port fails.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(probe(&mk(Probe::Tcp, closed), ip, &client).await.is_err());
    }
}
