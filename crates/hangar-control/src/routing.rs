//! Builds the edge proxy's routing snapshot from the store and the supervisor's view of
//! checks and draining.
//!
//! An app is routed when it has machines exposing an `http` handler; each such machine is a
//! backend on its private IPv4 address and the service's internal port. The snapshot lists
//! every machine with the reason it may not get traffic, so the proxy's 503s can say why.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hangar_core::machine::{MachineService, MachineState};
use hangar_proxy::{
    AppRoute, Backend, BackendStatus, Concurrency, ConcurrencyKind, RoutingSnapshot,
};

use crate::checks;
use crate::deploy::machine_release;
use crate::supervisor::Control;

/// How long a request waits for a machine below its hard limit before a 503.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// The service of a machine config that the edge proxy routes to: the first one with an
/// `http` handler, preferring one published on port 80.
pub fn http_service(services: &[MachineService]) -> Option<&MachineService> {
    let http = |s: &&MachineService| {
        s.ports
            .iter()
            .any(|p| p.handlers.iter().any(|h| h.eq_ignore_ascii_case("http")))
    };
    services
        .iter()
        .filter(http)
        .find(|s| s.ports.iter().any(|p| p.port == Some(80)))
        .or_else(|| services.iter().find(http))
}

fn concurrency(service: &MachineService) -> Concurrency {
    let defaults = Concurrency::default();
    match &service.concurrency {
        None => defaults,
        Some(c) => Concurrency {
            kind: match c.kind.as_deref() {
                Some(k) if k.eq_ignore_ascii_case("requests") => ConcurrencyKind::Requests,
                _ => ConcurrencyKind::Connections,
            },
            soft_limit: c.soft_limit.or(defaults.soft_limit),
            hard_limit: c.hard_limit,
        },
    }
}

/// Once a machine of a newer release is eligible, machines of older releases get no new
/// requests (they are drained by the deploy that replaces them): clients see the old
/// version until one moment and the new one after it. Machines no deploy made (no release)
/// are not affected.
fn prefer_newest_release(backends: &mut [Backend], releases: &[Option<i64>]) {
    let newest = backends
        .iter()
        .zip(releases)
        .filter(|(b, _)| b.status == BackendStatus::Eligible)
        .filter_map(|(_, r)| *r)
        .max();
    let Some(newest) = newest else {
        return;
    };
    for (b, r) in backends.iter_mut().zip(releases) {
        if r.is_some_and(|r| r < newest) && b.status == BackendStatus::Eligible {
            b.status = BackendStatus::Draining;
        }
    }
}

impl Control {
    /// The routing table as of now.
    pub async fn routing_snapshot(
        &self,
        version: u64,
        base_domain: &str,
    ) -> Result<RoutingSnapshot, hangar_store::StoreError> {
        let mut snapshot = RoutingSnapshot::new(version, base_domain, self.opts.region.clone());
        let mut custom: HashMap<String, Vec<String>> = HashMap::new();
        for h in self.store.list_all_hostnames().await? {
            custom.entry(h.app).or_default().push(h.hostname);
        }
        let apps = self.store.list_apps(None).await?;
        for app in &apps {
            let mut route = AppRoute {
                app: app.name.clone(),
                concurrency: Concurrency::default(),
                backends: Vec::new(),
                queue_timeout: QUEUE_TIMEOUT,
            };
            let mut have_concurrency = false;
            let mut releases = Vec::new();
            for m in self.store.list_machines(&app.name, false).await? {
                let Some(service) = http_service(&m.config.services) else {
                    continue;
                };
                let Some(ip) = m.ipv4.as_deref().and_then(|s| s.parse::<IpAddr>().ok()) else {
                    continue;
                };
                // Machines of one app normally share a config; the first one decides the limits.
                if !have_concurrency {
                    route.concurrency = concurrency(service);
                    have_concurrency = true;
                }
                let status = if m.state != MachineState::Started {
                    BackendStatus::NotStarted
                } else if self.is_draining(&m.id) {
                    BackendStatus::Draining
                } else if self.is_held(&m.id) {
                    // A blue-green machine waiting for the switch.
                    BackendStatus::Unhealthy
                } else if !checks::passing_for(
                    &self.check_statuses(&m.id),
                    &checks::check_specs(&m.config),
                    service.internal_port,
                ) {
                    BackendStatus::Unhealthy
                } else {
                    BackendStatus::Eligible
                };
                route.backends.push(Backend {
                    machine_id: m.id.to_string(),
                    addr: SocketAddr::new(ip, service.internal_port),
                    status,
                });
                releases.push(machine_release(&m.config));
            }
            prefer_newest_release(&mut route.backends, &releases);
            let hostnames = custom.remove(&app.name).unwrap_or_default();
            snapshot.insert_app(route, &hostnames);
        }
        // The API keeps custom hostnames out of other apps' `<app>.<domain>` names, but an app
        // created after a hostname was added may take its name: the app's own name wins.
        for app in &apps {
            let own = format!("{}.{}", app.name, snapshot.base_domain);
            let shadowed = snapshot.apps.get(&own).is_some_and(|r| r.app != app.name);
            let mine = shadowed
                .then(|| snapshot.apps.values().find(|r| r.app == app.name).cloned())
                .flatten();
            if let Some(mine) = mine {
                tracing::warn!(app = %app.name, hostname = %own,
                    "a custom hostname of another app shadowed an app's own name; the app keeps it");
                snapshot.apps.insert(own, mine);
            }
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::machine::MachinePort;

    fn svc(port: u16, public: u16, handler: &str) -> MachineService {
        MachineService {
            protocol: "tcp".into(),
            internal_port: port,
            ports: vec![MachinePort {
                port: Some(public),
                handlers: vec![handler.into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn newer_release_takes_the_traffic_once_eligible() {
        let b = |id: &str, status| Backend {
            machine_id: id.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            status,
        };
        let mut backends = vec![
            b("old", BackendStatus::Eligible),
            b("new", BackendStatus::Unhealthy),
            b("manual", BackendStatus::Eligible),
        ];
        let releases = [Some(1), Some(2), None];
        prefer_newest_release(&mut backends, &releases);
        assert_eq!(
            backends[0].status,
            BackendStatus::Eligible,
            "v2 is not healthy yet"
        );
        backends[1].status = BackendStatus::Eligible;
        prefer_newest_release(&mut backends, &releases);
        assert_eq!(backends[0].status, BackendStatus::Draining);
        assert_eq!(backends[1].status, BackendStatus::Eligible);
        assert_eq!(
            backends[2].status,
            BackendStatus::Eligible,
            "not a deploy's machine"
        );
    }

    #[test]
    fn picks_the_http_service_on_port_80() {
        let services = [
            svc(5432, 5432, "pg_tls"),
            svc(9000, 8080, "http"),
            svc(8080, 80, "http"),
        ];
        assert_eq!(http_service(&services).unwrap().internal_port, 8080);
        assert_eq!(http_service(&services[..2]).unwrap().internal_port, 9000);
        assert!(http_service(&services[..1]).is_none());
    }

    #[test]
    fn concurrency_from_the_service() {
        let mut s = svc(8080, 80, "http");
        assert_eq!(concurrency(&s), Concurrency::default());
        s.concurrency = Some(hangar_core::machine::Concurrency {
            kind: Some("requests".into()),
            soft_limit: Some(5),
            hard_limit: Some(10),
        });
        assert_eq!(
            concurrency(&s),
            Concurrency {
                kind: ConcurrencyKind::Requests,
                soft_limit: Some(5),
                hard_limit: Some(10)
            }
        );
    }
}
