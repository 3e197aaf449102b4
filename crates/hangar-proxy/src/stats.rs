//! Per-machine counters that outlive snapshots.
//!
//! **Invariant:** a machine's [`MachineStats`] is the same object in every snapshot that lists the
//! machine, so in-flight counts stay correct across publishes. The request path reaches it through
//! the compiled snapshot (an `Arc` per backend) and only touches atomics; the registry's mutex is
//! taken at publish time and by the control plane's `in_flight` / `wait_idle` calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::upstream::idle_is_usable;

/// After this many connection failures in a row a machine is ejected for [`EJECTION_TIME`].
pub(crate) const EJECT_AFTER_FAILURES: u32 = 3;
/// How long an ejected machine is skipped by the balancer (unless every machine is ejected).
pub(crate) const EJECTION_TIME: Duration = Duration::from_secs(10);
/// Idle pooled upstream connections older than this are closed instead of reused, so a machine
/// whose keep-alive timeout is short does not make us send on a connection it is closing.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// At most this many idle upstream connections are kept per machine.
pub(crate) const POOL_MAX_IDLE: usize = 256;

/// Load, pool and health of one machine.
pub(crate) struct MachineStats {
    pub(crate) machine_id: String,
    in_flight: AtomicUsize,
    idle_waiters: AtomicUsize,
    idle: Notify,
    /// Set from the snapshot: a draining machine's connections are not returned to the pool.
    pub(crate) draining: AtomicBool,
    consecutive_connect_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the machine is ejected; 0 when not ejected.
    ejected_until_ms: AtomicU64,
    epoch: Instant,
    pool: Mutex<Pool>,
    /// The app's queue, woken when this machine finishes a request.
    pub(crate) queue: Arc<AppQueue>,
    pub(crate) in_flight_gauge: Gauge,
}

struct Pool {
    addr: Option<SocketAddr>,
    idle: Vec<(TcpStream, Instant)>,
}

impl MachineStats {
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Takes one unit of load unless that would reach `hard_limit`.
    pub(crate) fn try_acquire(self: &Arc<Self>, hard_limit: Option<u32>) -> Option<InFlightGuard> {
        let limit = hard_limit.map_or(usize::MAX, |l| l as usize);
        let mut current = self.in_flight.load(Ordering::SeqCst);
        loop {
            if current >= limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.in_flight_gauge.inc();
        Some(InFlightGuard {
            stats: self.clone(),
        })
    }

    fn release(&self) {
        self.in_flight_gauge.dec();
        let previous = self.in_flight.fetch_sub(1, Ordering::SeqCst);
        // Both checks read a counter the waiter increments before it re-checks the load, so
        // either the waiter sees the freed slot or we see the waiter (SeqCst on both sides).
        if previous == 1 && self.idle_waiters.load(Ordering::SeqCst) > 0 {
            self.idle.notify_waiters();
        }
        if self.queue.waiting.load(Ordering::SeqCst) > 0 {
            self.queue.notify.notify_waiters();
        }
    }

    /// Waits until nothing is in flight to this machine, or `timeout` passes.
    pub(crate) async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        self.idle_waiters.fetch_add(1, Ordering::SeqCst);
        let result = loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                break true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break self.in_flight.load(Ordering::SeqCst) == 0;
            }
        };
        self.idle_waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && self.now_ms() < until
    }

    pub(crate) fn record_connect_success(&self) {
        if self.consecutive_connect_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_connect_failures
                .store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn record_connect_failure(&self) {
        let failures = self
            .consecutive_connect_failures
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if failures >= EJECT_AFTER_FAILURES {
            let until = self.now_ms() + u64::try_from(EJECTION_TIME.as_millis()).unwrap_or(0);
            self.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
        }
    }

    /// Takes a live idle connection from the pool, dropping stale and closed ones.
    pub(crate) fn take_pooled(&self) -> Option<TcpStream> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the pool's size.
        while let Some((stream, since)) = pool.idle.pop() {
            if since.elapsed() < POOL_IDLE_TIMEOUT && idle_is_usable(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Returns a connection whose response has been read in full, unless the machine is draining.
    pub(crate) fn return_pooled(&self, stream: TcpStream) {
        if self.draining.load(Ordering::Relaxed) {
            return;
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.idle.len() < POOL_MAX_IDLE {
            pool.idle.push((stream, Instant::now()));
        }
    }

    /// Applies a snapshot's view of the machine: a new address or a non-eligible status empties
    /// the pool so that no new request reuses a connection to a draining or moved machine.
    fn update(&self, addr: SocketAddr, eligible: bool) {
        self.draining.store(!eligible, Ordering::Relaxed);
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if pool.addr != Some(addr) || !eligible {
            pool.idle.clear();
            pool.addr = Some(addr);
        }
    }
}

/// One unit of load on a machine, released on drop (when the response body ends or the
/// upgraded connection closes).
pub(crate) struct InFlightGuard {
    stats: Arc<MachineStats>,
}

impl InFlightGuard {
    pub(crate) fn stats(&self) -> &Arc<MachineStats> {
        &self.stats
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.stats.release();
    }
}

/// Requests of one app waiting for a machine below its hard limit.
#[derive(Default)]
pub(crate) struct AppQueue {
    pub(crate) waiting: AtomicUsize,
    pub(crate) notify: Notify,
}

/// Machine id to stats, and app name to queue; weak so that removed machines are freed once
/// their last request ends.
#[derive(Default)]
pub(crate) struct StatsRegistry {
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    machines: HashMap<String, (String, Weak<MachineStats>)>,
    queues: HashMap<String, Weak<AppQueue>>,
}

impl StatsRegistry {
    /// Returns the app's queue, creating it when new.
    pub(crate) fn queue(&self, app: &str) -> Arc<AppQueue> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = inner.queues.get(app).and_then(Weak::upgrade) {
            return queue;
        }
        let queue = Arc::new(AppQueue::default());
        inner.queues.insert(app.to_owned(), Arc::downgrade(&queue));
        queue
    }

    /// Returns the machine's stats, creating them when new, and applies the snapshot's view.
    pub(crate) fn machine(
        &self,
        app: &str,
        machine_id: &str,
        addr: SocketAddr,
        eligible: bool,
        queue: &Arc<AppQueue>,
        gauge: impl FnOnce() -> Gauge,
    ) -> Arc<MachineStats> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let existing = inner
            .machines
            .get(machine_id)
            .and_then(|(_, weak)| weak.upgrade());
        let stats = match existing {
            Some(stats) => stats,
            None => {
                let stats = Arc::new(MachineStats {
                    machine_id: machine_id.to_owned(),
                    in_flight: AtomicUsize::new(0),
                    idle_waiters: AtomicUsize::new(0),
                    idle: Notify::new(),
                    draining: AtomicBool::new(!eligible),
                    consecutive_connect_failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    epoch: Instant::now(),
                    pool: Mutex::new(Pool {
                        addr: Some(addr),
                        idle: Vec::new(),
                    }),
                    queue: queue.clone(),
                    in_flight_gauge: gauge(),
                });
                inner.machines.insert(
                    machine_id.to_owned(),
                    (app.to_owned(), Arc::downgrade(&stats)),
                );
                stats
            }
        };
        drop(inner);
        stats.update(addr, eligible);
        stats
    }

    pub(crate) fn get(&self, machine_id: &str) -> Option<Arc<MachineStats>> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .machines
            .get(machine_id)
            .and_then(|(_, weak)| weak.upgrade())
    }

    /// Forgets entries whose machines and queues are gone; returns the (app, machine id) pairs
    /// forgotten.
    pub(crate) fn prune(&self) -> Vec<(String, String)> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        inner.machines.retain(|id, (app, weak)| {
            let alive = weak.strong_count() > 0;
            if !alive {
                gone.push((app.clone(), id.clone()));
            }
            alive
        });
        inner.queues.retain(|_, weak| weak.strong_count() > 0);
        gone
    }
}
