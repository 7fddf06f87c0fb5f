//! The activator's per-revision [`Throttler`] (`specs/SERVING.md §4`,
//! "activator").
//!
//! Every request first passes the revision-wide breaker, whose capacity is
//! `containerConcurrency × ready replicas` (cc = 0: unlimited once any
//! replica is ready, none before). With no ready replica the capacity is 0,
//! so requests wait in the breaker's queue: this is how a revision at zero
//! buffers requests while it scales up. At most
//! [`DEFAULT_QUEUE_DEPTH`] requests wait; more are refused
//! ([`ThrottleError::QueueFull`], answered 503). A request that passed the
//! revision breaker takes a slot on one replica with the policy of
//! [`lb`](super::lb); when none is free (replicas changed in between) it
//! waits for the next change and tries again.
//!
//! The caller bounds the whole wait with the revision's timeout (the
//! ingress answers 504 when it passes).

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use super::breaker::{Breaker, BreakerParams, BreakerPermit};
use super::lb::{PodSlot, PodTracker, Policy, pick};
use super::queue_proxy::QueueProxy;

/// How many requests may wait for a revision's capacity.
pub const DEFAULT_QUEUE_DEPTH: usize = 10_000;
/// The revision breaker's capacity for cc = 0 once a replica is ready.
const UNLIMITED: usize = 1 << 24;
/// How long a request that passed the revision breaker but found every
/// replica full waits before looking again (a change wakes it sooner).
const RETRY_PICK: Duration = Duration::from_millis(2);

/// Where the activator sends a replica's requests.
#[derive(Clone, Debug)]
pub enum Destination {
    /// An in-process queue-proxy (the embedded platform).
    QueueProxy(Arc<QueueProxy>),
    /// An address over HTTP: a queue-proxy sidecar, or the app itself.
    Http(SocketAddr),
}

impl Destination {
    /// Whether both lead to the same place (the same queue-proxy, or the
    /// same address).
    pub fn same_as(&self, other: &Destination) -> bool {
        match (self, other) {
            (Destination::QueueProxy(a), Destination::QueueProxy(b)) => Arc::ptr_eq(a, b),
            (Destination::Http(a), Destination::Http(b)) => a == b,
            _ => false,
        }
    }
}

/// One ready replica.
#[derive(Clone, Debug)]
pub struct Replica {
    /// The replica's stable name.
    pub name: String,
    /// Where its requests go.
    pub destination: Destination,
}

/// Why a request cannot be throttled through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ThrottleError {
    /// Too many requests are already waiting.
    #[error("pending request queue full: {0} requests are waiting for this revision")]
    QueueFull(usize),
}

/// A request's place on a revision: the revision-wide permit and a slot on
/// one replica. Dropping it frees both.
#[derive(Debug)]
pub struct Slot {
    tracker: Arc<PodTracker<Replica>>,
    _pod: PodSlot,
    _revision: BreakerPermit,
}

impl Slot {
    /// The replica chosen.
    pub fn replica(&self) -> &Replica {
        &self.tracker.target
    }
}

/// The per-revision throttler.
#[derive(Debug)]
pub struct Throttler {
    cc: usize,
    policy: Policy,
    queue_depth: usize,
    breaker: Breaker,
    trackers: RwLock<Arc<Vec<Arc<PodTracker<Replica>>>>>,
    rr: AtomicUsize,
    changed: Notify,
}

impl Throttler {
    /// A throttler for a revision with `containerConcurrency` `cc`, letting
    /// at most `queue_depth` requests wait.
    pub fn new(cc: usize, queue_depth: usize) -> Self {
        Throttler {
            cc,
            policy: Policy::for_container_concurrency(cc),
            queue_depth,
            breaker: Breaker::new(BreakerParams {
                queue_depth,
                max_concurrency: UNLIMITED,
                initial_capacity: 0,
            }),
            trackers: RwLock::new(Arc::new(Vec::new())),
            rr: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }

    /// The revision's `containerConcurrency`.
    pub fn container_concurrency(&self) -> usize {
        self.cc
    }

    /// The revision breaker's capacity.
    pub fn capacity(&self) -> usize {
        self.breaker.capacity()
    }

    /// Requests waiting for capacity.
    pub fn waiting(&self) -> usize {
        self.breaker.pending()
    }

    /// Ready replicas.
    pub fn replicas(&self) -> usize {
        self.snapshot().len()
    }

    fn snapshot(&self) -> Arc<Vec<Arc<PodTracker<Replica>>>> {
        Arc::clone(&self.trackers.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the ready replicas. Replicas that stay (same name, same
    /// destination) keep their trackers, so requests in flight stay
    /// counted against them; a replica restarted elsewhere gets a new one.
    pub fn update(&self, replicas: Vec<Replica>) {
        let old = self.snapshot();
        let trackers: Vec<Arc<PodTracker<Replica>>> = replicas
            .into_iter()
            .map(|r| {
                old.iter()
                    .find(|t| {
                        t.target.name == r.name && t.target.destination.same_as(&r.destination)
                    })
                    .cloned()
                    .unwrap_or_else(|| Arc::new(PodTracker::new(r, self.cc)))
            })
            .collect();
        self.set(trackers);
    }

    /// Stops sending to replica `name` until the next [`Throttler::update`]
    /// (it refused a connection: it is going away).
    pub fn remove_replica(&self, name: &str) {
        let trackers: Vec<_> = self
            .snapshot()
            .iter()
            .filter(|t| t.target.name != name)
            .cloned()
            .collect();
        self.set(trackers);
    }

    fn set(&self, trackers: Vec<Arc<PodTracker<Replica>>>) {
        let n = trackers.len();
        *self
            .trackers
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(trackers);
        let capacity = match (self.cc, n) {
            (_, 0) => 0,
            (0, _) => UNLIMITED,
            (cc, n) => cc.saturating_mul(n).min(UNLIMITED),
        };
        self.breaker.update_concurrency(capacity);
        self.changed.notify_waiters();
    }

    /// Waits for capacity and a replica slot. Cancel-safe: dropping the
    /// future gives up the place in the queue.
    pub async fn acquire(&self) -> Result<Slot, ThrottleError> {
        if self.breaker.pending() >= self.queue_depth {
            return Err(ThrottleError::QueueFull(self.queue_depth));
        }
        let permit = self
            .breaker
            .acquire()
            .await
            .map_err(|_| ThrottleError::QueueFull(self.queue_depth))?;
        loop {
            let changed = self.changed.notified();
            let trackers = self.snapshot();
            if let Some((tracker, pod)) = pick(self.policy, &trackers, &self.rr) {
                return Ok(Slot {
                    tracker,
                    _pod: pod,
                    _revision: permit,
                });
            }
            tokio::select! {
                () = changed => {}
                () = tokio::time::sleep(RETRY_PICK) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(n: usize) -> Vec<Replica> {
        (0..n)
            .map(|i| Replica {
                name: format!("r-{i}"),
                destination: Destination::Http(SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16))),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn requests_wait_at_zero_and_go_once_a_replica_is_ready() {
        let throttler = Arc::new(Throttler::new(0, 100));
        let waiting: Vec<_> = (0..5)
            .map(|_| {
                let t = Arc::clone(&throttler);
                tokio::spawn(async move { t.acquire().await.map(|s| s.replica().name.clone()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(throttler.waiting(), 5);
        assert!(waiting.iter().all(|w| !w.is_finished()));
        throttler.update(replicas(1));
        for w in waiting {
            assert_eq!(w.await.expect("joined"), Ok("r-0".to_owned()));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_is_cc_times_replicas_and_each_replica_gets_at_most_cc() {
        let throttler = Throttler::new(1, 100);
        throttler.update(replicas(2));
        assert_eq!(throttler.capacity(), 2);
        let a = throttler.acquire().await.expect("slot");
        let b = throttler.acquire().await.expect("slot");
        assert_ne!(a.replica().name, b.replica().name);
        let third = tokio::time::timeout(Duration::from_secs(1), throttler.acquire()).await;
        assert!(third.is_err(), "a third request waits");
        drop(a);
        let c = throttler.acquire().await.expect("slot freed");
        assert_ne!(c.replica().name, b.replica().name);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_is_refused() {
        let throttler = Arc::new(Throttler::new(0, 2));
        let _w: Vec<_> = (0..2)
            .map(|_| {
                let t = Arc::clone(&throttler);
                tokio::spawn(async move { t.acquire().await.map(|_| ()) })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            throttler.acquire().await.err(),
            Some(ThrottleError::QueueFull(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_refused_is_skipped_and_one_restarted_elsewhere_is_new() {
        let throttler = Throttler::new(1, 100);
        throttler.update(replicas(2));
        throttler.remove_replica("r-0");
        assert_eq!(throttler.capacity(), 1);
        let slot = throttler.acquire().await.expect("slot");
        assert_eq!(slot.replica().name, "r-1");
        drop(slot);
        // r-1 comes back on another port while a request holds the old one.
        let held = throttler.acquire().await.expect("slot");
        let mut moved = replicas(2);
        moved[1].destination = Destination::Http(SocketAddr::from(([127, 0, 0, 1], 9999)));
        throttler.update(moved);
        let fresh = tokio::time::timeout(Duration::from_secs(1), throttler.acquire())
            .await
            .expect("the restarted replica has its own slot")
            .expect("slot");
        assert!(matches!(held.replica().destination, Destination::Http(a) if a.port() == 9001));
        drop(fresh);
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_that_stay_keep_their_load() {
        let throttler = Throttler::new(1, 100);
        throttler.update(replicas(1));
        let held = throttler.acquire().await.expect("slot");
        throttler.update(replicas(2));
        // r-0 is still full: the next request goes to r-1.
        let next = throttler.acquire().await.expect("slot");
        assert_eq!(held.replica().name, "r-0");
        assert_eq!(next.replica().name, "r-1");
    }
}
