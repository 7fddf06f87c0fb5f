//! Time-weighted request statistics kept by the queue-proxy and the
//! activator for the autoscaler (`specs/SERVING.md §4`).
//!
//! [`RequestStats`] integrates concurrency over time: before every event the
//! running "concurrency × time" sum is advanced to the event's instant with
//! the concurrency that held until then. A [`RequestStats::report`] turns the
//! sums of the current window into average concurrencies and request counts
//! and opens the next window; the concurrency itself carries over.
//!
//! Requests forwarded by the activator (flagged `K-Proxy-Request:
//! activator`) are "proxied": they count in the totals *and* in the proxied
//! figures.
//!
//! Timestamps are supplied by the caller so the arithmetic is deterministic
//! and testable. An instant earlier than the last one seen is treated as
//! equal to it, so time never runs backwards and no interval is negative.
//! Sums are kept in integer nanoseconds, so they are exact.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

/// Averages and counts over one reporting window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StatsReport {
    /// Time-weighted mean number of requests in flight during the window.
    pub average_concurrency: f64,
    /// Time-weighted mean number of proxied requests in flight.
    pub average_proxied_concurrency: f64,
    /// Requests that arrived during the window (proxied ones included).
    /// A float because callers divide it by the window length to get a rate.
    pub request_count: f64,
    /// Proxied requests that arrived during the window.
    pub proxied_request_count: f64,
}

/// Concurrency and arrival statistics, shared between request handlers and
/// the reporting loop.
#[derive(Debug)]
pub struct RequestStats {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Start of the current reporting window.
    window_start: Instant,
    /// Instant up to which the integrals are computed.
    last: Instant,
    concurrency: u64,
    proxied_concurrency: u64,
    /// Sum of concurrency × nanoseconds since `window_start`.
    integral: u128,
    /// Same for proxied requests.
    proxied_integral: u128,
    request_count: u64,
    proxied_request_count: u64,
}

impl State {
    /// Moves the integrals forward to `now` (clamped to be no earlier than
    /// the last event) with the concurrency that held until then, and returns
    /// the clamped instant.
    fn advance(&mut self, now: Instant) -> Instant {
        let now = now.max(self.last);
        let elapsed = (now - self.last).as_nanos();
        self.integral += u128::from(self.concurrency) * elapsed;
        self.proxied_integral += u128::from(self.proxied_concurrency) * elapsed;
        self.last = now;
        now
    }
}

impl RequestStats {
    /// Creates empty statistics whose first window starts at `now`.
    #[must_use]
    pub fn new(now: Instant) -> RequestStats {
        RequestStats {
            state: Mutex::new(State {
                window_start: now,
                last: now,
                concurrency: 0,
                proxied_concurrency: 0,
                integral: 0,
                proxied_integral: 0,
                request_count: 0,
                proxied_request_count: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Updates never panic half-way, so a poisoned lock still guards
        // consistent data.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a request arriving at `now`.
    pub fn request_in(&self, now: Instant, proxied: bool) {
        let mut s = self.lock();
        s.advance(now);
        s.concurrency += 1;
        s.request_count += 1;
        if proxied {
            s.proxied_concurrency += 1;
            s.proxied_request_count += 1;
        }
    }

    /// Records a request finishing at `now`. An unmatched call (more
    /// departures than arrivals) leaves the concurrency at zero.
    pub fn request_out(&self, now: Instant, proxied: bool) {
        let mut s = self.lock();
        s.advance(now);
        s.concurrency = s.concurrency.saturating_sub(1);
        if proxied {
            s.proxied_concurrency = s.proxied_concurrency.saturating_sub(1);
        }
    }

    /// Closes the current window at `now` and returns its figures, then opens
    /// a new window at `now` with zeroed sums and counts; the current
    /// concurrency carries over.
    ///
    /// If the window has zero length the averages are the current
    /// concurrencies.
    pub fn report(&self, now: Instant) -> StatsReport {
        let mut s = self.lock();
        let now = s.advance(now);
        let window = (now - s.window_start).as_nanos();
        let (average_concurrency, average_proxied_concurrency) = if window == 0 {
            (s.concurrency as f64, s.proxied_concurrency as f64)
        } else {
            (
                s.integral as f64 / window as f64,
                s.proxied_integral as f64 / window as f64,
            )
        };
        let report = StatsReport {
            average_concurrency,
            average_proxied_concurrency,
            request_count: s.request_count as f64,
            proxied_request_count: s.proxied_request_count as f64,
        };
        s.window_start = now;
        s.integral = 0;
        s.proxied_integral = 0;
        s.request_count = 0;
        s.proxied_request_count = 0;
        report
    }

    /// Requests currently in flight (proxied ones included).
    #[must_use]
    pub fn current_concurrency(&self) -> u64 {
        self.lock().concurrency
    }

    /// Proxied requests currently in flight.
    #[must_use]
    pub fn current_proxied_concurrency(&self) -> u64 {
        self.lock().proxied_concurrency
    }

    /// Records a request arriving now and returns a guard that records its
    /// departure when dropped.
    #[must_use = "dropping the guard immediately ends the request"]
    pub fn track(self: &Arc<Self>, proxied: bool) -> InFlight {
        self.request_in(Instant::now(), proxied);
        InFlight {
            stats: Arc::clone(self),
            proxied,
        }
    }
}

/// A request counted as in flight by [`RequestStats::track`]; dropping it
/// records the request's departure.
#[derive(Debug)]
#[must_use = "dropping the guard immediately ends the request"]
pub struct InFlight {
    stats: Arc<RequestStats>,
    proxied: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.request_out(Instant::now(), self.proxied);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn assert_close(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-9,
            "expected {expected}, got {actual}"
        );
    }

    #[test]
    fn types_are_send_sync_static() {
        fn send_sync_static<T: Send + Sync + 'static>() {}
        send_sync_static::<RequestStats>();
        send_sync_static::<InFlight>();
        send_sync_static::<StatsReport>();
    }

    #[test]
    fn empty_window_reports_zero() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        assert_eq!(stats.report(t0 + ms(1000)), StatsReport::default());
    }

    #[test]
    fn one_request_for_the_whole_second_averages_one() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        stats.request_in(t0, false);
        stats.request_out(t0 + ms(1000), false);
        let r = stats.report(t0 + ms(1000));
        assert_close(r.average_concurrency, 1.0);
        assert_close(r.average_proxied_concurrency, 0.0);
        assert_close(r.request_count, 1.0);
        assert_close(r.proxied_request_count, 0.0);
    }

    #[test]
    fn one_request_for_half_the_window_averages_one_half() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        stats.request_in(t0 + ms(250), false);
        stats.request_out(t0 + ms(750), false);
        let r = stats.report(t0 + ms(1000));
        assert_close(r.average_concurrency, 0.5);
        assert_close(r.request_count, 1.0);
    }

    #[test]
    fn overlapping_requests_add_up() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        // A: 0..1000ms, B: 500..1000ms → 1.0 + 0.5.
        stats.request_in(t0, false);
        stats.request_in(t0 + ms(500), false);
        assert_eq!(stats.current_concurrency(), 2);
        stats.request_out(t0 + ms(1000), false);
        stats.request_out(t0 + ms(1000), false);
        let r = stats.report(t0 + ms(1000));
        assert_close(r.average_concurrency, 1.5);
        assert_close(r.request_count, 2.0);
        assert_eq!(stats.current_concurrency(), 0);
    }

    #[test]
    fn proxied_requests_count_in_total_and_proxied_figures() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        stats.request_in(t0, true);
        stats.request_in(t0, false);
        stats.request_out(t0 + ms(500), true);
        let r = stats.report(t0 + ms(1000));
        // Proxied: 0..500ms; direct: 0..1000ms (still running).
        assert_close(r.average_concurrency, 1.5);
        assert_close(r.average_proxied_concurrency, 0.5);
        assert_close(r.request_count, 2.0);
        assert_close(r.proxied_request_count, 1.0);
    }

    #[test]
    fn report_resets_counts_but_concurrency_carries_over() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        stats.request_in(t0, true);
        stats.request_in(t0, false);
        stats.request_out(t0 + ms(100), false);
        let first = stats.report(t0 + ms(1000));
        assert_close(first.request_count, 2.0);
        assert_close(first.average_concurrency, 1.1);

        // The proxied request is still running through the next window.
        let second = stats.report(t0 + ms(2000));
        assert_close(second.average_concurrency, 1.0);
        assert_close(second.average_proxied_concurrency, 1.0);
        assert_close(second.request_count, 0.0);
        assert_close(second.proxied_request_count, 0.0);
        assert_eq!(stats.current_concurrency(), 1);
        assert_eq!(stats.current_proxied_concurrency(), 1);

        // It ends a quarter into the third window.
        stats.request_out(t0 + ms(2250), true);
        let third = stats.report(t0 + ms(3000));
        assert_close(third.average_concurrency, 0.25);
        assert_close(third.average_proxied_concurrency, 0.25);
    }

    #[test]
    fn zero_length_window_reports_current_concurrency() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        stats.request_in(t0, false);
        stats.request_in(t0, true);
        let r = stats.report(t0);
        assert_close(r.average_concurrency, 2.0);
        assert_close(r.average_proxied_concurrency, 1.0);
        assert_close(r.request_count, 2.0);
        assert_close(r.proxied_request_count, 1.0);

        // Right after a report the new window is empty too.
        let again = stats.report(t0 + ms(0));
        assert_close(again.average_concurrency, 2.0);
        assert_close(again.request_count, 0.0);
    }

    #[test]
    fn instants_earlier_than_the_last_event_count_as_equal() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        stats.request_in(t0 + ms(500), false);
        // Arrives "before" the previous event: no negative interval.
        stats.request_in(t0 + ms(200), false);
        stats.request_out(t0 + ms(1000), false);
        stats.request_out(t0 + ms(1000), false);
        let r = stats.report(t0 + ms(1000));
        // Both counted as in flight from 500ms to 1000ms.
        assert_close(r.average_concurrency, 1.0);
        assert_close(r.request_count, 2.0);

        // A report dated before the last event closes an empty window at
        // the last event's instant.
        stats.request_in(t0 + ms(1500), false);
        let early = stats.report(t0 + ms(1200));
        assert_close(early.average_concurrency, 0.0);
        assert_close(early.request_count, 1.0);
        let next = stats.report(t0 + ms(2500));
        assert_close(next.average_concurrency, 1.0);
    }

    #[test]
    fn unmatched_request_out_does_not_underflow() {
        let t0 = Instant::now();
        let stats = RequestStats::new(t0);
        stats.request_out(t0 + ms(10), true);
        assert_eq!(stats.current_concurrency(), 0);
        assert_eq!(stats.current_proxied_concurrency(), 0);
        assert_close(stats.report(t0 + ms(1000)).average_concurrency, 0.0);
    }

    #[test]
    fn track_guard_counts_while_alive() {
        let stats = Arc::new(RequestStats::new(Instant::now()));
        let a = stats.track(true);
        let b = stats.track(false);
        assert_eq!(stats.current_concurrency(), 2);
        assert_eq!(stats.current_proxied_concurrency(), 1);
        drop(a);
        assert_eq!(stats.current_concurrency(), 1);
        assert_eq!(stats.current_proxied_concurrency(), 0);
        let moved = std::thread::spawn(move || drop(b));
        moved.join().expect("thread");
        assert_eq!(stats.current_concurrency(), 0);
        let r = stats.report(Instant::now());
        assert_close(r.request_count, 2.0);
        assert_close(r.proxied_request_count, 1.0);
    }
}
