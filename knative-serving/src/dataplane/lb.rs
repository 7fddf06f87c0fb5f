//! The activator's load balancing across a revision's replicas
//! (`specs/SERVING.md §4`, "Load balancing"), chosen by
//! `containerConcurrency`:
//!
//! - cc = 0: [`Policy::PowerOfTwoChoices`]: two random replicas, the one with
//!   fewer outstanding requests wins (random tie break);
//! - 1 ≤ cc ≤ 3: [`Policy::FirstAvailable`]: the first replica with a free
//!   slot, in a stable order (so few replicas stay warm);
//! - cc > 3: [`Policy::RoundRobin`]: the next replica with a free slot.
//!
//! With cc ≥ 1 every [`PodTracker`] carries a breaker of cc slots, so the
//! activator never sends a replica more than it accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::breaker::{Breaker, BreakerParams, BreakerPermit};

/// Per-replica queue depth of the trackers' breakers.
const TRACKER_QUEUE_DEPTH: usize = 10_000;

/// A load-balancing policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Least outstanding of two random replicas (cc = 0).
    PowerOfTwoChoices,
    /// The first replica with a free slot (1 ≤ cc ≤ 3).
    FirstAvailable,
    /// The next replica with a free slot, round robin (cc > 3).
    RoundRobin,
}

impl Policy {
    /// The policy upstream uses for `containerConcurrency` `cc`.
    pub fn for_container_concurrency(cc: usize) -> Policy {
        match cc {
            0 => Policy::PowerOfTwoChoices,
            1..=3 => Policy::FirstAvailable,
            _ => Policy::RoundRobin,
        }
    }
}

/// One replica as the activator sees it.
#[derive(Debug)]
pub struct PodTracker<T> {
    /// Where requests for the replica go.
    pub target: T,
    breaker: Option<Breaker>,
    outstanding: Arc<AtomicUsize>,
}

impl<T> PodTracker<T> {
    /// A tracker for a replica of a revision with `containerConcurrency` `cc`.
    pub fn new(target: T, cc: usize) -> Self {
        PodTracker {
            target,
            breaker: (cc > 0).then(|| {
                Breaker::new(BreakerParams {
                    queue_depth: TRACKER_QUEUE_DEPTH,
                    max_concurrency: cc,
                    initial_capacity: cc,
                })
            }),
            outstanding: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Requests sent to the replica and not finished.
    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Takes a slot on the replica without waiting; `None` when it is full.
    fn reserve(&self) -> Option<PodSlot> {
        let permit = match &self.breaker {
            Some(b) => Some(b.try_reserve()?),
            None => None,
        };
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        Some(PodSlot {
            _permit: permit,
            outstanding: Arc::clone(&self.outstanding),
        })
    }
}

/// A request's slot on one replica; released when dropped.
#[derive(Debug)]
pub struct PodSlot {
    _permit: Option<BreakerPermit>,
    outstanding: Arc<AtomicUsize>,
}

impl Drop for PodSlot {
    fn drop(&mut self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks a replica among `trackers` with `policy`; `rr` is the round-robin
/// position, shared across calls. `None` when every replica is full (or
/// there is none).
pub fn pick<T>(
    policy: Policy,
    trackers: &[Arc<PodTracker<T>>],
    rr: &AtomicUsize,
) -> Option<(Arc<PodTracker<T>>, PodSlot)> {
    let n = trackers.len();
    match (policy, n) {
        (_, 0) => None,
        (Policy::PowerOfTwoChoices, 1) => {
            let t = &trackers[0];
            t.reserve().map(|slot| (Arc::clone(t), slot))
        }
        (Policy::PowerOfTwoChoices, _) => {
            let a = fastrand::usize(..n);
            let mut b = fastrand::usize(..n - 1);
            if b >= a {
                b += 1;
            }
            let (ta, tb) = (&trackers[a], &trackers[b]);
            let (oa, ob) = (ta.outstanding(), tb.outstanding());
            let first = if oa < ob || (oa == ob && fastrand::bool()) {
                [ta, tb]
            } else {
                [tb, ta]
            };
            first
                .into_iter()
                .find_map(|t| t.reserve().map(|slot| (Arc::clone(t), slot)))
        }
        (Policy::FirstAvailable, _) => trackers
            .iter()
            .find_map(|t| t.reserve().map(|slot| (Arc::clone(t), slot))),
        (Policy::RoundRobin, _) => {
            let start = rr.fetch_add(1, Ordering::Relaxed);
            (0..n).find_map(|i| {
                let t = &trackers[(start + i) % n];
                t.reserve().map(|slot| (Arc::clone(t), slot))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trackers(n: usize, cc: usize) -> Vec<Arc<PodTracker<usize>>> {
        (0..n).map(|i| Arc::new(PodTracker::new(i, cc))).collect()
    }

    #[test]
    fn the_policy_follows_container_concurrency() {
        assert_eq!(
            Policy::for_container_concurrency(0),
            Policy::PowerOfTwoChoices
        );
        assert_eq!(Policy::for_container_concurrency(1), Policy::FirstAvailable);
        assert_eq!(Policy::for_container_concurrency(3), Policy::FirstAvailable);
        assert_eq!(Policy::for_container_concurrency(4), Policy::RoundRobin);
    }

    #[test]
    fn first_available_fills_replicas_in_order() {
        let t = trackers(3, 2);
        let rr = AtomicUsize::new(0);
        let picks: Vec<_> = (0..6)
            .map(|_| pick(Policy::FirstAvailable, &t, &rr).expect("a free slot"))
            .collect();
        let order: Vec<usize> = picks.iter().map(|(t, _)| t.target).collect();
        assert_eq!(order, [0, 0, 1, 1, 2, 2]);
        assert!(pick(Policy::FirstAvailable, &t, &rr).is_none(), "all full");
        drop(picks);
        assert_eq!(t.iter().map(|t| t.outstanding()).sum::<usize>(), 0);
    }

    #[test]
    fn round_robin_skips_full_replicas() {
        let t = trackers(3, 4);
        let rr = AtomicUsize::new(0);
        let order: Vec<usize> = (0..3)
            .map(|_| pick(Policy::RoundRobin, &t, &rr).expect("free").0.target)
            .collect();
        assert_eq!(order, [0, 1, 2]);
        // Fill replica 1 and check it is skipped.
        let held: Vec<_> = (0..4).map(|_| t[1].reserve().expect("slot")).collect();
        let order: Vec<usize> = (0..4)
            .map(|_| pick(Policy::RoundRobin, &t, &rr).expect("free").0.target)
            .collect();
        assert!(!order.contains(&1), "{order:?}");
        drop(held);
    }

    #[test]
    fn power_of_two_choices_prefers_the_less_loaded_replica() {
        let t = trackers(2, 0);
        let rr = AtomicUsize::new(0);
        let busy: Vec<_> = (0..5).map(|_| t[0].reserve().expect("no limit")).collect();
        for _ in 0..20 {
            let (chosen, _slot) = pick(Policy::PowerOfTwoChoices, &t, &rr).expect("some");
            assert_eq!(chosen.target, 1);
        }
        drop(busy);
        // Balanced load spreads over both.
        let mut counts = [0usize; 2];
        let mut held = Vec::new();
        for _ in 0..100 {
            let (chosen, slot) = pick(Policy::PowerOfTwoChoices, &t, &rr).expect("some");
            counts[chosen.target] += 1;
            held.push(slot);
        }
        assert!(counts[0].abs_diff(counts[1]) <= 2, "{counts:?}");
    }

    #[test]
    fn no_replicas_no_pick() {
        let t: Vec<Arc<PodTracker<usize>>> = Vec::new();
        assert!(pick(Policy::RoundRobin, &t, &AtomicUsize::new(0)).is_none());
    }
}
