//! The compiled routing table and the choice of a machine for a request.
//!
//! Least outstanding requests among eligible machines, in Fly's load buckets: machines below
//! the soft limit are preferred; machines at or over it are used only when every machine is;
//! machines at the hard limit are not used. Ties are broken by starting the scan at a random
//! machine.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::error::Unavailable;
use crate::metrics::AppMetrics;
use crate::snapshot::{BackendStatus, ConcurrencyKind};
use crate::stats::{AppQueue, InFlightGuard, MachineStats};

/// A [`crate::RoutingSnapshot`] resolved against the proxy's counters and metrics.
pub(crate) struct CompiledSnapshot {
    pub(crate) version: u64,
    pub(crate) base_domain: String,
    pub(crate) region: String,
    pub(crate) hosts: HashMap<String, Arc<CompiledApp>>,
}

pub(crate) struct CompiledApp {
    pub(crate) app: String,
    pub(crate) kind: ConcurrencyKind,
    pub(crate) soft_limit: Option<u32>,
    pub(crate) hard_limit: Option<u32>,
    pub(crate) queue_timeout: Duration,
    pub(crate) eligible: Vec<CompiledBackend>,
    /// Kept so that the stats of draining machines live while the snapshot lists them.
    pub(crate) _others: Vec<Arc<MachineStats>>,
    /// Why no machine is eligible, when none is.
    pub(crate) unavailable: Unavailable,
    pub(crate) machines: usize,
    pub(crate) queue: Arc<AppQueue>,
    pub(crate) metrics: AppMetrics,
}

pub(crate) struct CompiledBackend {
    pub(crate) addr: SocketAddr,
    pub(crate) stats: Arc<MachineStats>,
}

/// Why [`CompiledApp::pick`] found no machine.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoPick {
    /// Every remaining machine is at its hard limit: the request may queue.
    AllAtHardLimit,
    /// Every machine has been tried.
    Exhausted,
}

impl CompiledApp {
    /// The reason no machine is eligible, from the statuses of the snapshot's backends.
    pub(crate) fn unavailable_reason(statuses: impl Iterator<Item = BackendStatus>) -> Unavailable {
        let (mut unhealthy, mut draining) = (false, false);
        for status in statuses {
            match status {
                BackendStatus::Unhealthy => unhealthy = true,
                BackendStatus::Draining => draining = true,
                BackendStatus::Eligible | BackendStatus::NotStarted => {}
            }
        }
        if unhealthy {
            Unavailable::NoneHealthy
        } else if draining {
            Unavailable::AllDraining
        } else {
            Unavailable::NoneStarted
        }
    }

    /// Picks the least loaded eligible machine not in `tried` and takes a unit of its load.
    pub(crate) fn pick(&self, tried: &[usize]) -> Result<(usize, InFlightGuard), NoPick> {
        let count = self.eligible.len();
        if count == 0 {
            return Err(NoPick::Exhausted);
        }
        let hard = self.hard_limit.map_or(usize::MAX, |l| l as usize);
        let soft = self.soft_limit.map_or(usize::MAX, |l| l as usize);
        let offset = if count > 1 {
            rand::random_range(0..count)
        } else {
            0
        };
        // A machine passively ejected for refusing connections is skipped unless every untried
        // machine is ejected: then routing to one is better than refusing the request.
        let all_ejected = (0..count)
            .filter(|i| !tried.contains(i))
            .all(|i| self.eligible[i].stats.is_ejected());
        // Bounded: each failed acquisition means another request took the slot in between.
        for _ in 0..count + 4 {
            let mut best: Option<(bool, usize, usize)> = None;
            let mut untried = 0;
            for step in 0..count {
                let index = (offset + step) % count;
                if tried.contains(&index) {
                    continue;
                }
                untried += 1;
                let stats = &self.eligible[index].stats;
                if !all_ejected && stats.is_ejected() {
                    continue;
                }
                let load = stats.in_flight();
                if load >= hard {
                    continue;
                }
                let over_soft = load >= soft;
                let better = match best {
                    None => true,
                    Some((best_over, best_load, _)) => (over_soft, load) < (best_over, best_load),
                };
                if better {
                    best = Some((over_soft, load, index));
                }
            }
            let Some((_, _, index)) = best else {
                return Err(if untried == 0 {
                    NoPick::Exhausted
                } else {
                    NoPick::AllAtHardLimit
                });
            };
            if let Some(guard) = self.eligible[index].stats.try_acquire(self.hard_limit) {
                return Ok((index, guard));
            }
        }
        Err(NoPick::AllAtHardLimit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::stats::StatsRegistry;

    /// Builds an app whose machines carry `loads` in-flight requests each and picks one.
    fn check(
        loads: &[usize],
        soft: Option<u32>,
        hard: Option<u32>,
        tried: &[usize],
    ) -> Result<usize, NoPick> {
        let registry = StatsRegistry::default();
        let metrics = Metrics::new(&mut prometheus_client::registry::Registry::default());
        let queue = registry.queue("app");
        let mut guards = Vec::new();
        let eligible: Vec<CompiledBackend> = loads
            .iter()
            .enumerate()
            .map(|(i, load)| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16));
                let stats = registry.machine("app", &format!("m{i}"), addr, true, &queue, || {
                    metrics.in_flight_gauge("app", &format!("m{i}"))
                });
                for _ in 0..*load {
                    guards.push(stats.try_acquire(None).unwrap());
                }
                CompiledBackend { addr, stats }
            })
            .collect();
        let app = CompiledApp {
            app: "app".to_owned(),
            kind: ConcurrencyKind::Requests,
            soft_limit: soft,
            hard_limit: hard,
            queue_timeout: Duration::from_secs(1),
            eligible,
            _others: Vec::new(),
            unavailable: Unavailable::NoneStarted,
            machines: loads.len(),
            queue,
            metrics: metrics.app("app"),
        };
        let picked = app.pick(tried).map(|(index, _guard)| index);
        drop(guards);
        picked
    }

    #[test]
    fn picks_by_load_bucket_then_least_load() {
        // Least outstanding requests.
        assert_eq!(check(&[3, 1, 2], None, None, &[]), Ok(1));
        // Below the soft limit is preferred; over it only when every machine is.
        assert_eq!(check(&[5, 2], Some(2), None, &[]), Ok(1));
        assert_eq!(check(&[5, 3], Some(2), None, &[]), Ok(1));
        // At the hard limit a machine is not used; when all are, the request may queue.
        assert_eq!(check(&[2, 1], Some(1), Some(2), &[]), Ok(1));
        assert_eq!(
            check(&[2, 2], Some(1), Some(2), &[]),
            Err(NoPick::AllAtHardLimit)
        );
        // Tried machines are skipped; when every machine was tried, nothing is left.
        assert_eq!(check(&[0, 5], None, None, &[0]), Ok(1));
        assert_eq!(check(&[0, 5], None, None, &[0, 1]), Err(NoPick::Exhausted));
        assert_eq!(check(&[], None, None, &[]), Err(NoPick::Exhausted));
    }

    #[test]
    fn unavailable_reason_names_the_most_useful_cause() {
        use BackendStatus::*;
        let reason = |s: &[BackendStatus]| CompiledApp::unavailable_reason(s.iter().copied());
        assert_eq!(reason(&[]), Unavailable::NoneStarted);
        assert_eq!(reason(&[NotStarted]), Unavailable::NoneStarted);
        assert_eq!(reason(&[NotStarted, Unhealthy]), Unavailable::NoneHealthy);
        assert_eq!(reason(&[Draining, NotStarted]), Unavailable::AllDraining);
    }
}
