//! [`WorkQueue`]: the keys a controller still has to reconcile.
//!
//! The semantics of client-go's rate-limited work queue, which Knative's
//! controllers use:
//!
//! - a key is queued at most once, however often it is added (dedupe);
//! - a key being processed is not handed out again until [`WorkQueue::done`];
//!   if it was added meanwhile it is queued again then, so one key is never
//!   reconciled twice at the same time and no change is missed;
//! - [`WorkQueue::add_after`] delays a key (the earliest pending time wins);
//! - [`WorkQueue::add_rate_limited`] delays a key exponentially by its
//!   number of consecutive failures (`base * 2^(failures-1)`, capped),
//!   until [`WorkQueue::forget`] resets it;
//! - after [`WorkQueue::shutdown`] no key is handed out any more.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Per-key exponential backoff for failed keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// client-go's default controller rate limiter: 5 ms doubling up to 1000 s.
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_secs(1000),
        }
    }
}

impl Backoff {
    /// The delay after `failures` consecutive failures (1 = first failure).
    pub fn delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(63);
        let factor = 1u64 << exponent;
        let nanos = u64::try_from(self.base.as_nanos())
            .unwrap_or(u64::MAX)
            .saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max)
    }
}

/// `now + delay`, saturating far in the future instead of overflowing.
fn deadline_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

struct State<T> {
    queue: VecDeque<T>,
    /// Keys that must be (re)processed: queued, or added while processing.
    dirty: HashSet<T>,
    processing: HashSet<T>,
    /// Delayed keys and when they are due.
    waiting: HashMap<T, Instant>,
    failures: HashMap<T, u32>,
    shutting_down: bool,
}

/// A deduplicating, delaying, rate-limiting queue of keys.
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    backoff: Backoff,
}

impl<T> std::fmt::Debug for WorkQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("WorkQueue")
            .field("queued", &state.queue.len())
            .field("processing", &state.processing.len())
            .field("waiting", &state.waiting.len())
            .field("shutting_down", &state.shutting_down)
            .finish()
    }
}

impl<T: Hash + Eq + Clone> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new(Backoff::default())
    }
}

impl<T> WorkQueue<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<T: Hash + Eq + Clone> WorkQueue<T> {
    /// An empty queue whose failed keys back off as `backoff` says.
    pub fn new(backoff: Backoff) -> Self {
        WorkQueue {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                dirty: HashSet::new(),
                processing: HashSet::new(),
                waiting: HashMap::new(),
                failures: HashMap::new(),
                shutting_down: false,
            }),
            notify: Notify::new(),
            backoff,
        }
    }

    /// Queues `key` now, unless it is already queued.
    pub fn add(&self, key: T) {
        let mut state = self.lock();
        if Self::add_locked(&mut state, key) {
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Returns true when a worker should be woken.
    fn add_locked(state: &mut State<T>, key: T) -> bool {
        if state.shutting_down || state.dirty.contains(&key) {
            return false;
        }
        state.dirty.insert(key.clone());
        if state.processing.contains(&key) {
            // Queued again by `done`.
            return false;
        }
        state.queue.push_back(key);
        true
    }

    /// Queues `key` after `delay`; if it is already waiting, the earlier time wins.
    pub fn add_after(&self, key: T, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let due = deadline_after(delay);
        let mut state = self.lock();
        if state.shutting_down {
            return;
        }
        let earlier = state.waiting.get(&key).is_some_and(|at| *at <= due);
        if !earlier {
            state.waiting.insert(key, due);
            drop(state);
            // A worker may be sleeping until a later deadline.
            self.notify.notify_waiters();
        }
    }

    /// Records one more failure of `key` and queues it after its backoff delay.
    pub fn add_rate_limited(&self, key: T) {
        let failures = {
            let mut state = self.lock();
            let n = state.failures.entry(key.clone()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        self.add_after(key, self.backoff.delay(failures));
    }

    /// The number of consecutive failures recorded for `key`.
    pub fn failures(&self, key: &T) -> u32 {
        self.lock().failures.get(key).copied().unwrap_or(0)
    }

    /// Resets the failure count of `key`.
    pub fn forget(&self, key: &T) {
        self.lock().failures.remove(key);
    }

    /// Waits for the next key to process; `None` once the queue is shut down.
    /// Call [`done`](Self::done) when finished with the key.
    pub async fn get(&self) -> Option<T> {
        loop {
            // Registered before looking at the queue, so an `add` between the
            // look and the wait still wakes this worker.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let next_due = {
                let mut state = self.lock();
                if state.shutting_down {
                    return None;
                }
                Self::promote_due(&mut state, Instant::now());
                if let Some(key) = state.queue.pop_front() {
                    state.dirty.remove(&key);
                    state.processing.insert(key.clone());
                    let more = !state.queue.is_empty();
                    drop(state);
                    if more {
                        // Pass the baton: another worker may be idle.
                        self.notify.notify_one();
                    }
                    return Some(key);
                }
                state.waiting.values().min().copied()
            };
            match next_due {
                Some(due) => {
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(due) => {}
                    }
                }
                None => notified.as_mut().await,
            }
        }
    }

    fn promote_due(state: &mut State<T>, now: Instant) {
        let mut due: Vec<(Instant, T)> = state
            .waiting
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, at)| (*at, k.clone()))
            .collect();
        // Oldest first.
        due.sort_by_key(|(at, _)| *at);
        for (_, key) in due {
            state.waiting.remove(&key);
            Self::add_locked(state, key);
        }
    }

    /// Marks `key` as processed; if it was added meanwhile it is queued again.
    pub fn done(&self, key: &T) {
        let mut state = self.lock();
        let was_processing = state.processing.remove(key);
        if was_processing && state.dirty.contains(key) && !state.shutting_down {
            state.queue.push_back(key.clone());
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Stops handing out keys: every pending and future [`get`](Self::get)
    /// returns `None`. Keys being processed may still call `done`.
    pub fn shutdown(&self) {
        self.lock().shutting_down = true;
        self.notify.notify_waiters();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.lock().shutting_down
    }

    /// The number of keys queued now (not counting delayed or in-process ones).
    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// True when no key is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_key_added_twice_is_queued_once() {
        let q = WorkQueue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(q.get().await, Some("b"));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_key_added_while_processing_is_queued_again_after_done() {
        let q = WorkQueue::default();
        q.add("a");
        let key = q.get().await.expect("key");
        q.add("a");
        assert!(q.is_empty(), "not handed out while processing");
        q.done(&key);
        assert_eq!(q.len(), 1);
        assert_eq!(q.get().await, Some("a"));
        q.done(&"a");
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn add_after_delays_and_the_earliest_time_wins() {
        let q = Arc::new(WorkQueue::default());
        let start = Instant::now();
        q.add_after("a", Duration::from_secs(10));
        q.add_after("a", Duration::from_secs(3));
        q.add_after("a", Duration::from_secs(7));
        assert_eq!(q.get().await, Some("a"));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleeping_worker_wakes_for_an_earlier_delayed_key() {
        let q = Arc::new(WorkQueue::default());
        q.add_after("late", Duration::from_secs(60));
        let start = Instant::now();
        let worker = tokio::spawn({
            let q = Arc::clone(&q);
            async move { q.get().await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        q.add_after("early", Duration::from_secs(1));
        assert_eq!(worker.await.expect("joined"), Some("early"));
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_back_off_exponentially_until_forgotten() {
        let q = WorkQueue::new(Backoff {
            base: Duration::from_millis(5),
            max: Duration::from_millis(100),
        });
        let mut delays = Vec::new();
        for _ in 0..6 {
            let start = Instant::now();
            q.add_rate_limited("a");
            let key = q.get().await.expect("key");
            delays.push(start.elapsed().as_millis());
            q.done(&key);
        }
        assert_eq!(delays, [5, 10, 20, 40, 80, 100]);
        assert_eq!(q.failures(&"a"), 6);
        q.forget(&"a");
        assert_eq!(q.failures(&"a"), 0);
    }

    #[test]
    fn default_backoff_matches_client_go() {
        let b = Backoff::default();
        assert_eq!(b.delay(1), Duration::from_millis(5));
        assert_eq!(b.delay(2), Duration::from_millis(10));
        assert_eq!(b.delay(100), Duration::from_secs(1000));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_idle_workers_both_get_work_when_two_keys_arrive() {
        let q: Arc<WorkQueue<u32>> = Arc::new(WorkQueue::default());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..2 {
            let q = Arc::clone(&q);
            let tx = tx.clone();
            tokio::spawn(async move {
                // Hold the key without calling `done`, like a long reconcile.
                let key = q.get().await;
                let _ = tx.send(key);
                std::future::pending::<()>().await;
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        q.add(1);
        q.add(2);
        let mut got = Vec::new();
        for _ in 0..2 {
            let key = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("both workers woke");
            got.push(key.flatten().expect("a key"));
        }
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
    }

    #[tokio::test]
    async fn done_on_a_key_not_being_processed_does_not_duplicate_it() {
        let q = WorkQueue::default();
        q.add("a");
        q.done(&"a");
        assert_eq!(q.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_enormous_delay_does_not_overflow() {
        let q = WorkQueue::default();
        q.add_after("never", Duration::MAX);
        q.add("now");
        assert_eq!(q.get().await, Some("now"));
    }

    #[tokio::test]
    async fn shutdown_wakes_waiting_workers_with_none() {
        let q: Arc<WorkQueue<&str>> = Arc::new(WorkQueue::default());
        let worker = tokio::spawn({
            let q = Arc::clone(&q);
            async move { q.get().await }
        });
        tokio::task::yield_now().await;
        q.shutdown();
        assert_eq!(worker.await.expect("joined"), None);
        q.add("ignored");
        assert!(q.is_empty());
    }
}
