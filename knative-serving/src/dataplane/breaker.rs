//! Request breaker shared by the queue-proxy and the activator
//! (`specs/SERVING.md §4`).
//!
//! A [`Breaker`] bounds how many requests may be running at once
//! ("capacity" tokens) and how many more may wait for a token (the queue).
//! Admission happens in two steps:
//!
//! 1. An arrival takes one of `queue_depth + max_concurrency` admission
//!    slots. If every slot is taken the request is rejected at once with
//!    [`BreakerError::QueueFull`] — the breaker never builds an unbounded
//!    queue.
//! 2. The admitted request then waits, first come first served, for one of
//!    the `capacity` tokens. The capacity can be moved at runtime with
//!    [`Breaker::update_concurrency`] anywhere between `0` and
//!    `max_concurrency`; a capacity of `0` parks every admitted request until
//!    it is raised again (the activator does this while a revision has no
//!    ready endpoints).
//!
//! The granted [`BreakerPermit`] gives back both the token and the admission
//! slot when dropped. Waiting is cancel safe: dropping an [`Breaker::acquire`]
//! future frees its admission slot, and a token that was handed to it at the
//! same moment goes to the next waiter instead of being lost.
//!
//! # Design
//!
//! Tokens live in a fair (FIFO) [`tokio::sync::Semaphore`]. A granted
//! semaphore permit is detached from the semaphore at once and owned by the
//! [`BreakerPermit`]; on drop the breaker decides whether to put the token
//! back. That decision is what makes shrinking work: lowering the capacity
//! removes idle tokens right away and records the remainder as a *debt*,
//! which is paid by swallowing tokens as in-flight requests return them. So
//! after a shrink no new token is granted until the number of running
//! requests has dropped below the new capacity, and growing first cancels
//! outstanding debt, then adds tokens (which wakes waiters immediately).
//!
//! The uncontended path costs one compare-and-swap for the admission slot,
//! one for the semaphore, a reference-count increment, and on release one
//! short uncontended lock plus the semaphore's own release. Nothing is
//! allocated per request.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit, TryAcquireError};

/// Sizing of a [`Breaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerParams {
    /// How many admitted requests may wait for a token beyond the
    /// `max_concurrency` that may hold one.
    pub queue_depth: usize,
    /// Upper bound for the token capacity; [`Breaker::update_concurrency`]
    /// clamps to it.
    pub max_concurrency: usize,
    /// Token capacity the breaker starts with (clamped to
    /// `max_concurrency`).
    pub initial_capacity: usize,
}

impl BreakerParams {
    /// Parameters of the queue-proxy breaker for a revision with the given
    /// container concurrency: a queue ten times as deep as the concurrency,
    /// and both maximum and initial capacity equal to it.
    ///
    /// The queue-proxy only installs a breaker when `cc >= 1`; with `cc == 0`
    /// this yields a breaker that rejects everything.
    #[must_use]
    pub fn for_container_concurrency(cc: usize) -> BreakerParams {
        BreakerParams {
            queue_depth: cc.saturating_mul(10),
            max_concurrency: cc,
            initial_capacity: cc,
        }
    }
}

/// Why a request could not get through the [`Breaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BreakerError {
    /// Every admission slot (running plus waiting) was taken.
    #[error("pending request queue full")]
    QueueFull,
    /// The request was admitted but no token became free in time.
    #[error("timed out waiting for capacity")]
    Timeout,
}

/// A concurrency limiter with a bounded FIFO wait queue and a capacity that
/// can change at runtime.
///
/// Cloning is cheap and every clone refers to the same breaker.
#[derive(Clone)]
pub struct Breaker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Idle tokens. Tokens held by requests are detached from it.
    sem: Semaphore,
    /// `queue_depth + max_concurrency`: bound on `in_flight`.
    total_slots: usize,
    max_concurrency: usize,
    /// Admitted requests: holding a token or waiting for one.
    in_flight: AtomicUsize,
    /// Admitted requests currently waiting for a token.
    pending: AtomicUsize,
    /// Mirror of `cap.capacity` for lock-free reads.
    capacity: AtomicUsize,
    /// Tokens still to be destroyed after a shrink. Only modified while
    /// `cap` is locked; read without the lock as a fast "is there any debt"
    /// check.
    debt: AtomicUsize,
    /// Serialises capacity changes with the decision, on release, whether a
    /// token goes back to the semaphore or pays the debt.
    cap: Mutex<CapState>,
}

struct CapState {
    capacity: usize,
}

impl Inner {
    fn lock_cap(&self) -> MutexGuard<'_, CapState> {
        // The critical sections never panic half-way through an update, so
        // a poisoned lock still guards consistent data.
        self.cap.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes ownership of a token just granted by the semaphore. Returns
    /// `false` when the token had to pay capacity debt instead (possible only
    /// when a shrink raced with a token handed to a waiter that then went
    /// away), in which case the caller must try again.
    fn claim(&self, permit: SemaphorePermit<'_>) -> bool {
        permit.forget();
        if self.debt.load(Ordering::Acquire) == 0 {
            return true;
        }
        let _cap = self.lock_cap();
        let debt = self.debt.load(Ordering::Acquire);
        if debt == 0 {
            true
        } else {
            self.debt.store(debt - 1, Ordering::Release);
            false
        }
    }

    /// Gives back a token owned by a finished request.
    fn release_token(&self) {
        let _cap = self.lock_cap();
        let debt = self.debt.load(Ordering::Acquire);
        if debt > 0 {
            self.debt.store(debt - 1, Ordering::Release);
        } else {
            self.sem.add_permits(1);
        }
    }
}

/// An admission slot; frees itself on drop.
struct Slot {
    inner: Arc<Inner>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Decrements the waiter count when the wait ends, however it ends.
struct Waiting<'a> {
    inner: &'a Inner,
}

impl<'a> Waiting<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.pending.fetch_add(1, Ordering::Relaxed);
        Waiting { inner }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.inner.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Proof that a request got through the [`Breaker`]: it holds one token and
/// one admission slot, and gives both back when dropped.
#[must_use = "the request only holds capacity while the permit is alive"]
pub struct BreakerPermit {
    slot: Slot,
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        // The token goes first, then `slot` frees the admission slot, so
        // `in_flight()` never reads lower than the number of held tokens.
        self.slot.inner.release_token();
    }
}

impl fmt::Debug for BreakerPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerPermit").finish_non_exhaustive()
    }
}

impl Breaker {
    /// Creates a breaker.
    ///
    /// `max_concurrency` is capped at [`Semaphore::MAX_PERMITS`] and
    /// `initial_capacity` at `max_concurrency`; the number of admission slots
    /// is `queue_depth + max_concurrency` (saturating).
    #[must_use]
    pub fn new(params: BreakerParams) -> Breaker {
        let max_concurrency = params.max_concurrency.min(Semaphore::MAX_PERMITS);
        let capacity = params.initial_capacity.min(max_concurrency);
        Breaker {
            inner: Arc::new(Inner {
                sem: Semaphore::new(capacity),
                total_slots: params.queue_depth.saturating_add(max_concurrency),
                max_concurrency,
                in_flight: AtomicUsize::new(0),
                pending: AtomicUsize::new(0),
                capacity: AtomicUsize::new(capacity),
                debt: AtomicUsize::new(0),
                cap: Mutex::new(CapState { capacity }),
            }),
        }
    }

    /// Takes an admission slot if one is free.
    fn admit(&self) -> Option<Slot> {
        let total = self.inner.total_slots;
        self.inner
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < total).then_some(n + 1)
            })
            .ok()?;
        Some(Slot {
            inner: Arc::clone(&self.inner),
        })
    }

    /// Admits the request and waits (FIFO) for a token.
    ///
    /// Fails at once with [`BreakerError::QueueFull`] when every admission
    /// slot is taken. Cancel safe: dropping the future while it waits frees
    /// its admission slot and loses no token.
    ///
    /// # Errors
    ///
    /// [`BreakerError::QueueFull`] when no admission slot is free.
    pub async fn acquire(&self) -> Result<BreakerPermit, BreakerError> {
        let slot = self.admit().ok_or(BreakerError::QueueFull)?;
        match self.inner.sem.try_acquire() {
            Ok(permit) => {
                if self.inner.claim(permit) {
                    return Ok(BreakerPermit { slot });
                }
            }
            Err(TryAcquireError::NoPermits) => {}
            // The semaphore is never closed; rejecting is the safe answer.
            Err(TryAcquireError::Closed) => return Err(BreakerError::QueueFull),
        }
        let _waiting = Waiting::new(&self.inner);
        loop {
            // Dropping this future mid-wait hands any token assigned to it
            // back to the semaphore (tokio's acquire is cancel safe), and
            // `slot` / `_waiting` undo the bookkeeping.
            let Ok(permit) = self.inner.sem.acquire().await else {
                // Never closed, see above.
                return Err(BreakerError::QueueFull);
            };
            if self.inner.claim(permit) {
                return Ok(BreakerPermit { slot });
            }
        }
    }

    /// Like [`Breaker::acquire`], but gives up with [`BreakerError::Timeout`]
    /// when no token arrived within `timeout`. A full queue is still reported
    /// as [`BreakerError::QueueFull`], immediately.
    ///
    /// # Errors
    ///
    /// [`BreakerError::QueueFull`] when no admission slot is free,
    /// [`BreakerError::Timeout`] when `timeout` elapsed first.
    ///
    /// # Panics
    ///
    /// Panics when called outside a Tokio runtime with the time driver
    /// enabled.
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<BreakerPermit, BreakerError> {
        match tokio::time::timeout(timeout, self.acquire()).await {
            Ok(result) => result,
            Err(_elapsed) => Err(BreakerError::Timeout),
        }
    }

    /// Gets a token right now without waiting, or returns `None` holding
    /// nothing (no free admission slot, or no idle token).
    #[must_use]
    pub fn try_reserve(&self) -> Option<BreakerPermit> {
        let slot = self.admit()?;
        let permit = self.inner.sem.try_acquire().ok()?;
        self.inner.claim(permit).then_some(BreakerPermit { slot })
    }

    /// Sets the token capacity to `n`, clamped to
    /// [`Breaker::max_concurrency`].
    ///
    /// Growing wakes waiters at once. Shrinking never takes tokens away from
    /// running requests; it only stops granting new ones until fewer than `n`
    /// requests are running.
    pub fn update_concurrency(&self, n: usize) {
        let inner = &*self.inner;
        let target = n.min(inner.max_concurrency);
        let mut cap = inner.lock_cap();
        let debt = inner.debt.load(Ordering::Acquire);
        if target > cap.capacity {
            let grow = target - cap.capacity;
            let paid = grow.min(debt);
            inner.debt.store(debt - paid, Ordering::Release);
            if grow > paid {
                inner.sem.add_permits(grow - paid);
            }
        } else if target < cap.capacity {
            let shrink = cap.capacity - target;
            let forgotten = inner.sem.forget_permits(shrink);
            inner
                .debt
                .store(debt + (shrink - forgotten), Ordering::Release);
        }
        cap.capacity = target;
        inner.capacity.store(target, Ordering::Release);
    }

    /// Current token capacity: how many requests may run at once.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.inner.capacity.load(Ordering::Acquire)
    }

    /// Admitted requests: those holding a token plus those waiting for one.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Admitted requests currently waiting for a token.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::Relaxed)
    }

    /// Upper bound for the token capacity.
    #[must_use]
    pub fn max_concurrency(&self) -> usize {
        self.inner.max_concurrency
    }
}

impl fmt::Debug for Breaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("capacity", &self.capacity())
            .field("max_concurrency", &self.max_concurrency())
            .field("total_slots", &self.inner.total_slots)
            .field("in_flight", &self.in_flight())
            .field("pending", &self.pending())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::task::JoinHandle;

    fn breaker(queue_depth: usize, max_concurrency: usize, initial_capacity: usize) -> Breaker {
        Breaker::new(BreakerParams {
            queue_depth,
            max_concurrency,
            initial_capacity,
        })
    }

    /// Idle tokens in the semaphore.
    fn idle_tokens(b: &Breaker) -> usize {
        b.inner.sem.available_permits()
    }

    fn debt(b: &Breaker) -> usize {
        b.inner.debt.load(Ordering::Acquire)
    }

    /// Lets spawned tasks run until `cond` holds.
    async fn settle_until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if cond() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("condition never held: {what}");
    }

    /// Spawns a task that acquires, counts itself in `got`, and holds the
    /// permit until the task is aborted.
    fn spawn_holder(b: &Breaker, got: &Arc<AtomicUsize>) -> JoinHandle<()> {
        let b = b.clone();
        let got = Arc::clone(got);
        tokio::spawn(async move {
            let _permit = b.acquire().await.expect("admitted");
            got.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
        })
    }

    #[test]
    fn types_are_send_sync_static() {
        fn send_sync_static<T: Send + Sync + 'static>() {}
        fn send<T: Send>(_: &T) {}
        send_sync_static::<Breaker>();
        send_sync_static::<BreakerPermit>();
        send_sync_static::<BreakerError>();
        let b = breaker(1, 1, 1);
        let fut = b.acquire();
        send(&fut);
        let fut = b.acquire_timeout(Duration::from_secs(1));
        send(&fut);
    }

    #[test]
    fn errors_display_as_documented() {
        assert_eq!(
            BreakerError::QueueFull.to_string(),
            "pending request queue full"
        );
        assert_eq!(
            BreakerError::Timeout.to_string(),
            "timed out waiting for capacity"
        );
    }

    #[test]
    fn container_concurrency_params_scale_the_queue_tenfold() {
        assert_eq!(
            BreakerParams::for_container_concurrency(3),
            BreakerParams {
                queue_depth: 30,
                max_concurrency: 3,
                initial_capacity: 3
            }
        );
        let b = Breaker::new(BreakerParams::for_container_concurrency(2));
        assert_eq!(b.capacity(), 2);
        assert_eq!(b.max_concurrency(), 2);
        assert_eq!(b.inner.total_slots, 22);
    }

    #[test]
    fn initial_capacity_and_updates_are_clamped_to_max() {
        let b = breaker(0, 4, 9);
        assert_eq!(b.capacity(), 4);
        assert_eq!(idle_tokens(&b), 4);
        b.update_concurrency(100);
        assert_eq!(b.capacity(), 4);
        assert_eq!(idle_tokens(&b), 4);
        b.update_concurrency(2);
        assert_eq!(b.capacity(), 2);
        assert_eq!(idle_tokens(&b), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_fast_once_queue_depth_plus_max_concurrency_are_admitted() {
        let b = breaker(3, 2, 2);
        let got = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..5).map(|_| spawn_holder(&b, &got)).collect();
        settle_until("2 running, 3 queued", || {
            got.load(Ordering::SeqCst) == 2 && b.pending() == 3
        })
        .await;
        assert_eq!(b.in_flight(), 5);

        // The sixth arrival is refused without waiting.
        assert_eq!(b.acquire().await.err(), Some(BreakerError::QueueFull));
        assert_eq!(
            b.acquire_timeout(Duration::from_secs(60)).await.err(),
            Some(BreakerError::QueueFull)
        );
        assert!(b.try_reserve().is_none());
        assert_eq!(b.in_flight(), 5);
        assert_eq!(b.pending(), 3);

        for t in tasks {
            t.abort();
            assert!(t.await.expect_err("aborted").is_cancelled());
        }
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.pending(), 0);
        assert_eq!(idle_tokens(&b), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_queue_depth_admits_only_max_concurrency() {
        let b = breaker(0, 1, 1);
        let p = b.acquire().await.expect("first");
        assert_eq!(b.acquire().await.err(), Some(BreakerError::QueueFull));
        drop(p);
        let _p = b.acquire().await.expect("after release");
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_are_served_in_arrival_order() {
        let b = breaker(10, 1, 1);
        let first = b.acquire().await.expect("first");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..6 {
            let b2 = b.clone();
            let order = Arc::clone(&order);
            tasks.push(tokio::spawn(async move {
                let permit = b2.acquire().await.expect("admitted");
                order.lock().expect("lock").push(i);
                // Hold the token across a timer so the next waiter has to
                // wait for this one.
                tokio::time::sleep(Duration::from_millis(10)).await;
                drop(permit);
            }));
            // Make sure waiter `i` is queued before `i + 1` arrives.
            settle_until("waiter queued", || b.pending() == i + 1).await;
        }
        drop(first);
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(*order.lock().expect("lock"), vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(idle_tokens(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_releases_its_admission_slot() {
        let b = breaker(1, 1, 1);
        let held = b.acquire().await.expect("first");
        let got = Arc::new(AtomicUsize::new(0));
        let waiter = spawn_holder(&b, &got);
        settle_until("waiter queued", || b.pending() == 1).await;
        assert_eq!(b.in_flight(), 2);
        assert_eq!(b.acquire().await.err(), Some(BreakerError::QueueFull));

        // The waiter's client goes away.
        waiter.abort();
        assert!(waiter.await.expect_err("aborted").is_cancelled());
        assert_eq!(b.in_flight(), 1);
        assert_eq!(b.pending(), 0);

        // Its slot is usable by a later arrival, which gets the token next.
        let later = spawn_holder(&b, &got);
        settle_until("later arrival queued", || b.pending() == 1).await;
        drop(held);
        settle_until("later arrival runs", || got.load(Ordering::SeqCst) == 1).await;
        assert_eq!(b.in_flight(), 1);
        later.abort();
        assert!(later.await.expect_err("aborted").is_cancelled());
        assert_eq!(b.in_flight(), 0);
        assert_eq!(idle_tokens(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn timed_out_waiter_releases_its_admission_slot() {
        let b = breaker(1, 1, 1);
        let held = b.acquire().await.expect("first");
        let err = b
            .acquire_timeout(Duration::from_millis(100))
            .await
            .expect_err("no capacity");
        assert_eq!(err, BreakerError::Timeout);
        assert_eq!(b.in_flight(), 1);
        assert_eq!(b.pending(), 0);
        drop(held);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(idle_tokens(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn token_handed_to_a_waiter_that_is_cancelled_goes_to_the_next() {
        let b = breaker(5, 1, 1);
        let held = b.acquire().await.expect("first");
        let got = Arc::new(AtomicUsize::new(0));
        let doomed = spawn_holder(&b, &got);
        settle_until("doomed queued", || b.pending() == 1).await;
        let next = spawn_holder(&b, &got);
        settle_until("next queued", || b.pending() == 2).await;

        // Releasing assigns the token to `doomed` inside the semaphore, but
        // on this single-threaded runtime `doomed` has not run yet when it
        // is cancelled.
        drop(held);
        doomed.abort();
        assert!(doomed.await.expect_err("aborted").is_cancelled());

        settle_until("next runs", || got.load(Ordering::SeqCst) == 1).await;
        assert_eq!(b.in_flight(), 1);
        assert_eq!(b.pending(), 0);
        next.abort();
        assert!(next.await.expect_err("aborted").is_cancelled());
        assert_eq!(b.in_flight(), 0);
        assert_eq!(idle_tokens(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn token_handed_to_a_cancelled_waiter_is_not_lost_when_nobody_waits() {
        let b = breaker(5, 1, 1);
        let held = b.acquire().await.expect("first");
        let got = Arc::new(AtomicUsize::new(0));
        let doomed = spawn_holder(&b, &got);
        settle_until("doomed queued", || b.pending() == 1).await;
        drop(held);
        doomed.abort();
        assert!(doomed.await.expect_err("aborted").is_cancelled());
        assert_eq!(got.load(Ordering::SeqCst), 0);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(idle_tokens(&b), 1);
        assert!(b.try_reserve().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn raising_concurrency_wakes_waiters_at_once() {
        let b = breaker(10, 4, 1);
        let got = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4).map(|_| spawn_holder(&b, &got)).collect();
        settle_until("1 running, 3 queued", || {
            got.load(Ordering::SeqCst) == 1 && b.pending() == 3
        })
        .await;

        b.update_concurrency(3);
        assert_eq!(b.capacity(), 3);
        settle_until("3 running", || got.load(Ordering::SeqCst) == 3).await;
        assert_eq!(b.pending(), 1);

        for t in tasks {
            t.abort();
            assert!(t.await.expect_err("aborted").is_cancelled());
        }
        assert_eq!(b.in_flight(), 0);
        assert_eq!(idle_tokens(&b), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn lowering_concurrency_blocks_new_requests_until_in_flight_drops() {
        let b = breaker(10, 3, 3);
        let p1 = b.acquire().await.expect("1");
        let p2 = b.acquire().await.expect("2");
        let p3 = b.acquire().await.expect("3");

        b.update_concurrency(1);
        assert_eq!(b.capacity(), 1);
        assert_eq!(debt(&b), 2);
        let got = Arc::new(AtomicUsize::new(0));
        let waiter = spawn_holder(&b, &got);
        settle_until("waiter queued", || b.pending() == 1).await;

        // Running requests keep their tokens; 2 and then 1 running are not
        // below the new capacity of 1.
        drop(p1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(got.load(Ordering::SeqCst), 0);
        assert!(b.try_reserve().is_none());
        drop(p2);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(got.load(Ordering::SeqCst), 0);
        assert!(b.try_reserve().is_none());
        assert_eq!(debt(&b), 0);

        // Now nothing runs: the waiter gets the single token.
        drop(p3);
        settle_until("waiter runs", || got.load(Ordering::SeqCst) == 1).await;
        assert!(b.try_reserve().is_none());
        waiter.abort();
        assert!(waiter.await.expect_err("aborted").is_cancelled());
        assert_eq!(b.in_flight(), 0);
        assert_eq!(idle_tokens(&b), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn raising_after_a_shrink_first_cancels_the_debt() {
        let b = breaker(10, 4, 4);
        let permits: Vec<_> = (0..4).map(|_| b.try_reserve().expect("token")).collect();
        b.update_concurrency(1);
        assert_eq!(debt(&b), 3);
        b.update_concurrency(3);
        assert_eq!(debt(&b), 1);
        assert_eq!(idle_tokens(&b), 0);
        b.update_concurrency(4);
        assert_eq!(debt(&b), 0);
        drop(permits);
        assert_eq!(idle_tokens(&b), 4);
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_capacity_parks_requests_until_raised() {
        let b = breaker(10, 5, 0);
        assert_eq!(b.capacity(), 0);
        assert!(b.try_reserve().is_none());
        let got = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..3).map(|_| spawn_holder(&b, &got)).collect();
        settle_until("3 parked", || b.pending() == 3).await;

        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(got.load(Ordering::SeqCst), 0);
        assert_eq!(b.in_flight(), 3);

        b.update_concurrency(2);
        settle_until("2 released", || got.load(Ordering::SeqCst) == 2).await;
        assert_eq!(b.pending(), 1);

        // Back to zero: the running ones finish, the parked one stays parked.
        b.update_concurrency(0);
        for t in tasks {
            t.abort();
            assert!(t.await.expect_err("aborted").is_cancelled());
        }
        assert_eq!(b.in_flight(), 0);
        assert_eq!(idle_tokens(&b), 0);
        assert_eq!(debt(&b), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn try_reserve_neither_waits_nor_leaks() {
        let b = breaker(5, 2, 1);
        let p = b.try_reserve().expect("idle token");
        assert_eq!(b.in_flight(), 1);
        // No token: None, and the admission slot it took is given back.
        assert!(b.try_reserve().is_none());
        assert!(b.try_reserve().is_none());
        assert_eq!(b.in_flight(), 1);
        assert_eq!(b.pending(), 0);
        drop(p);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(idle_tokens(&b), 1);
        let _p = b.try_reserve().expect("token is back");
    }

    #[tokio::test(start_paused = true)]
    async fn try_reserve_does_not_jump_the_queue() {
        let b = breaker(5, 1, 1);
        let held = b.acquire().await.expect("first");
        let got = Arc::new(AtomicUsize::new(0));
        let waiter = spawn_holder(&b, &got);
        settle_until("waiter queued", || b.pending() == 1).await;
        drop(held);
        // The released token belongs to the waiter even before it runs.
        assert!(b.try_reserve().is_none());
        settle_until("waiter runs", || got.load(Ordering::SeqCst) == 1).await;
        waiter.abort();
        assert!(waiter.await.expect_err("aborted").is_cancelled());
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_timeout_succeeds_when_capacity_frees_in_time() {
        let b = breaker(5, 1, 1);
        let held = b.acquire().await.expect("first");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(held);
        });
        let start = tokio::time::Instant::now();
        let p = b
            .acquire_timeout(Duration::from_millis(100))
            .await
            .expect("freed at 50ms");
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert_eq!(b.in_flight(), 1);
        drop(p);
        assert_eq!(b.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_timeout_gives_up_at_the_deadline() {
        let b = breaker(5, 1, 1);
        let held = b.acquire().await.expect("first");
        let start = tokio::time::Instant::now();
        let err = b
            .acquire_timeout(Duration::from_millis(100))
            .await
            .expect_err("nothing frees");
        assert_eq!(err, BreakerError::Timeout);
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(b.in_flight(), 1);
        assert_eq!(b.pending(), 0);
        // A zero timeout still takes an idle token without waiting.
        drop(held);
        let _p = b.acquire_timeout(Duration::ZERO).await.expect("idle token");
    }

    /// Tiny deterministic PRNG (xorshift) so the stress test needs no
    /// dependency.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Outcome {
        Served,
        Rejected,
        TimedOut,
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stress_random_timeouts_leak_no_token_and_no_slot() {
        const CAPACITY: usize = 4;
        let b = breaker(16, CAPACITY, CAPACITY);
        let running = Arc::new(AtomicUsize::new(0));
        let max_running = Arc::new(AtomicUsize::new(0));
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut tasks = Vec::new();
        for i in 0..600 {
            let b = b.clone();
            let running = Arc::clone(&running);
            let max_running = Arc::clone(&max_running);
            let timeout = Duration::from_micros(rng.next() % 3000);
            let hold = Duration::from_micros(rng.next() % 1500);
            tasks.push(tokio::spawn(async move {
                match b.acquire_timeout(timeout).await {
                    Ok(permit) => {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        max_running.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(hold).await;
                        running.fetch_sub(1, Ordering::SeqCst);
                        drop(permit);
                        Outcome::Served
                    }
                    Err(BreakerError::QueueFull) => Outcome::Rejected,
                    Err(BreakerError::Timeout) => Outcome::TimedOut,
                }
            }));
            // Spread arrivals so that waiters, not only rejections, happen.
            if i % 8 == 7 {
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }
        let mut outcomes = Vec::new();
        for t in tasks {
            outcomes.push(t.await.expect("task"));
        }
        let count = |o: Outcome| outcomes.iter().filter(|&&x| x == o).count();
        assert!(count(Outcome::Served) > 0, "nobody served");
        assert!(count(Outcome::TimedOut) > 0, "no waiter timed out");
        assert!(max_running.load(Ordering::SeqCst) <= CAPACITY);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.pending(), 0);
        assert_eq!(idle_tokens(&b), CAPACITY);
        let permits: Vec<_> = (0..CAPACITY)
            .map(|_| b.try_reserve().expect("token"))
            .collect();
        assert!(b.try_reserve().is_none());
        drop(permits);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stress_cancellation_with_capacity_changes_converges() {
        const MAX: usize = 8;
        let b = breaker(32, MAX, 3);
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut tasks = Vec::new();
        for i in 0..400 {
            let b2 = b.clone();
            let timeout = Duration::from_micros(rng.next() % 2000);
            let hold = Duration::from_micros(rng.next() % 300);
            tasks.push(tokio::spawn(async move {
                if let Ok(permit) = b2.acquire_timeout(timeout).await {
                    tokio::time::sleep(hold).await;
                    drop(permit);
                }
            }));
            if i % 10 == 0 {
                let n = usize::try_from(rng.next() % (MAX as u64 + 1)).expect("small");
                b.update_concurrency(n);
                tokio::task::yield_now().await;
            }
        }
        for t in tasks {
            t.await.expect("task");
        }
        b.update_concurrency(5);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.pending(), 0);
        assert_eq!(debt(&b), 0);
        assert_eq!(idle_tokens(&b), 5);
        let permits: Vec<_> = (0..5).map(|_| b.try_reserve().expect("token")).collect();
        assert!(b.try_reserve().is_none());
        drop(permits);
        assert_eq!(idle_tokens(&b), 5);
    }
}
