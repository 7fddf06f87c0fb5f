//! Metric window averages of the KPA autoscaler (`specs/SERVING.md §3.2`).
//!
//! The Knative Pod Autoscaler (KPA) keeps, per revision, a *stable* window
//! (default 60 s) and a *panic* window (default 6 s) of observed concurrency or
//! RPS. Each window is a ring of fixed-width time buckets (upstream always uses
//! 1 s buckets, see [`DEFAULT_GRANULARITY`]); every record lands in the bucket
//! of its (truncated) timestamp and records that share a bucket are **summed**.
//!
//! This module is a pure state machine: time is a [`Duration`] since an
//! arbitrary epoch chosen by the caller and every operation is fed `now`
//! explicitly. Nothing reads the wall clock. All instants are truncated down
//! to a multiple of the granularity (counted from that epoch) before use.
//!
//! # Linear average ([`Algorithm::Linear`], the default)
//!
//! Let `lastWrite` / `firstWrite` be the truncated times of the newest write and
//! of the first write of the current run of data, `n` the number of buckets and
//! `d = now − lastWrite` (after truncation):
//!
//! * `d ≤ 0` (the last write is "now", or in the future):
//!   `total / min((lastWrite − firstWrite)/granularity + 1, n)` — a partial
//!   window right after the first write, or after a window of silence.
//! * `0 < d < window`: the `d` ring slots following `lastWrite` (the oldest
//!   samples, which the window has slid past) are subtracted from the total and
//!   the rest is divided by `min((lastWrite − firstWrite)/granularity + 1, n − d/granularity)`:
//!   trailing silence is *excluded* from the denominator, while gaps between
//!   writes count as zeros.
//! * `d ≥ window`: `0`.
//!
//! The linear result is cut to 6 decimals exactly as upstream does it:
//! `floor(x · 1e6) / 1e6` — this truncates towards −∞ (it is not
//! round-half-even), so `2/3` reads `0.666666` and `−1/3` reads `−0.333334`.
//!
//! # Weighted exponential average ([`Algorithm::WeightedExponential`])
//!
//! Selected by the revision annotation
//! `autoscaling.knative.dev/metric-aggregation-algorithm: weighted-exponential`.
//! With `α = max(1 − 0.0001^(1/n), 0.2)` the value is
//! `Σᵢ α(1−α)^(gap+i) · bucket[lastWrite − i]` for `i` in `0 .. n − gap`, newest
//! first, where `gap = (now − lastWrite)/granularity` seconds of silence count as
//! zeros. The weights are not re-normalised (a constant `v` over a full window
//! reads `v·(1 − (1−α)^n) ≈ v`) and `firstWrite` is ignored, so a window that is
//! only partly filled under-reads. The weighted result is **not** rounded.
//! `α` is `0.2` for 60 buckets and `≈ 0.7846` for 6.
//!
//! # No data
//!
//! A window is *empty* when nothing was written for strictly more than one
//! window (`now − lastWrite > window`), or never. [`WindowAverage::value`]
//! returns `None` then; upstream's metric client answers `ErrNoData` when the
//! **stable** window is empty ([`MetricWindows::stable_and_panic`]). When
//! `now − lastWrite == window` exactly the window is not empty yet but both
//! algorithms read `0`.
//!
//! # Records in the past, in the future and after silence
//!
//! * A record whose bucket is not newer than `lastWrite − window`
//!   (`bucketTime + window ≤ lastWrite`) is dropped.
//! * An older record inside the window is added to its bucket and may move
//!   `firstWrite` back; it never moves `lastWrite`.
//! * A newer record clears the ring slots between the last write and itself;
//!   if it comes `≥ window` after the last write the whole ring is cleared and
//!   `firstWrite` restarts at it. Records far in the future are accepted like
//!   any newer record; a later read at an earlier `now` uses the `d ≤ 0` branch.
//!
//! # Cost
//!
//! Recording and reading are `O(n)` at worst (`O(1)` amortised for recording
//! at a steady pace) and never allocate; only [`WindowAverage::new`] and the
//! resize operations allocate the ring.

use std::time::Duration;

/// Bucket width used by upstream's metric collector (its scrape interval).
pub const DEFAULT_GRANULARITY: Duration = Duration::from_secs(1);

/// Largest number of buckets a window may have; longer windows are clamped to
/// `MAX_BUCKETS × granularity` (upstream has no bound; Knative caps the stable
/// window at one hour, i.e. 3600 buckets).
pub const MAX_BUCKETS: usize = 65_536;

/// Revision annotation selecting the aggregation algorithm.
pub const ALGORITHM_ANNOTATION_KEY: &str = "autoscaling.knative.dev/metric-aggregation-algorithm";

/// Lower bound of the smoothing coefficient α.
const MIN_ALPHA: f64 = 0.2;

/// `1 − weightPrecision` upstream (`1 − 0.9999`), an exact constant there, so
/// the float literal `0.0001` and not the float subtraction `1.0 − 0.9999`.
const WEIGHT_TAIL: f64 = 0.0001;

/// `10^6`: linear averages keep 6 decimals.
const DECIMALS_SCALE: f64 = 1e6;

/// How a window turns its buckets into one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Algorithm {
    /// Plain average over the valid part of the window (the default).
    #[default]
    Linear,
    /// Exponentially decaying weights, newest bucket first.
    WeightedExponential,
}

impl Algorithm {
    /// Annotation value of [`Algorithm::Linear`].
    pub const LINEAR: &'static str = "linear";
    /// Annotation value of [`Algorithm::WeightedExponential`].
    pub const WEIGHTED_EXPONENTIAL: &'static str = "weighted-exponential";
    /// Alternate spelling of [`Algorithm::WEIGHTED_EXPONENTIAL`] accepted by
    /// upstream's annotation validation.
    pub const WEIGHTED_EXPONENTIAL_ALT: &'static str = "weightedExponential";

    /// Parses an annotation value the way upstream's validation accepts it:
    /// `linear`, `weighted-exponential` or `weightedExponential`
    /// (case-sensitive, no trimming). Anything else, including the empty
    /// string, is `None`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            Self::LINEAR => Some(Self::Linear),
            Self::WEIGHTED_EXPONENTIAL | Self::WEIGHTED_EXPONENTIAL_ALT => {
                Some(Self::WeightedExponential)
            }
            _ => None,
        }
    }

    /// The algorithm upstream's metric collector builds for a revision whose
    /// annotation has this value: weighted only for exactly
    /// `weighted-exponential`, linear for anything else (absent, `linear`,
    /// unknown, and also the alternate spelling `weightedExponential`, which
    /// validation accepts but the collector does not recognise).
    pub fn from_annotation(value: Option<&str>) -> Self {
        match value {
            Some(Self::WEIGHTED_EXPONENTIAL) => Self::WeightedExponential,
            _ => Self::Linear,
        }
    }

    /// Canonical annotation value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linear => Self::LINEAR,
            Self::WeightedExponential => Self::WEIGHTED_EXPONENTIAL,
        }
    }
}

/// Smoothing coefficient α of the weighted average for `num_buckets` buckets:
/// `max(1 − 0.0001^(1/num_buckets), 0.2)`, with the power evaluated along the
/// same path as Go's `math.Pow` (exact for 1 bucket, a square root for 2,
/// `exp(ln(0.0001)/n)` otherwise).
pub fn weighted_alpha(num_buckets: usize) -> f64 {
    let tail = match num_buckets {
        0 => 0.0,
        1 => WEIGHT_TAIL,
        2 => WEIGHT_TAIL.sqrt(),
        n => ((1.0 / n as f64) * WEIGHT_TAIL.ln()).exp(),
    };
    (1.0 - tail).max(MIN_ALPHA)
}

/// A ring of time buckets covering one window, with its average.
///
/// See the [module documentation](self) for the exact semantics.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowAverage {
    /// Ring indexed by `bucket index mod len`.
    buckets: Vec<f64>,
    /// Sum of every slot of the ring, maintained incrementally like upstream.
    total: f64,
    /// Truncated time (ns since the epoch) of the first write of the current
    /// run of data; `None` is upstream's zero time. May be negative after a
    /// resize.
    first_write: Option<i128>,
    /// Truncated time (ns since the epoch) of the newest write.
    last_write: Option<i128>,
    granularity: Duration,
    granularity_ns: i128,
    window: Duration,
    window_ns: i128,
    algorithm: Algorithm,
    alpha: f64,
}

impl WindowAverage {
    /// A new, empty window of `window` split into `ceil(window / granularity)`
    /// buckets (at least one, at most [`MAX_BUCKETS`]). A zero granularity is
    /// replaced by [`DEFAULT_GRANULARITY`].
    pub fn new(window: Duration, granularity: Duration, algorithm: Algorithm) -> Self {
        let granularity = if granularity.is_zero() {
            DEFAULT_GRANULARITY
        } else {
            granularity
        };
        let granularity_ns = nanos(granularity);
        let (window, len) = fit_window(window, granularity);
        Self {
            buckets: vec![0.0; len],
            total: 0.0,
            first_write: None,
            last_write: None,
            granularity,
            granularity_ns,
            window,
            window_ns: nanos(window),
            algorithm,
            alpha: weighted_alpha(len),
        }
    }

    /// Adds `value` to the bucket of `now`; see the module documentation for
    /// records in the past, in the future and after a window of silence.
    pub fn record(&mut self, now: Duration, value: f64) {
        let at = nanos(now);
        let bucket_time = self.truncate(at);
        let write_idx = self.index(at);

        if self.last_write != Some(bucket_time) {
            if let Some(last) = self.last_write
                && bucket_time + self.window_ns <= last
            {
                // A window or more older than the newest data: dropped.
                return;
            }
            if self.first_write.is_none_or(|first| first > bucket_time) {
                self.first_write = Some(bucket_time);
            }
            if self.last_write.is_none_or(|last| bucket_time > last) {
                match self.last_write {
                    Some(last) if bucket_time - last < self.window_ns => {
                        for i in self.index(last) + 1..=write_idx {
                            let slot = self.slot(i);
                            if let Some(bucket) = self.buckets.get_mut(slot) {
                                self.total -= *bucket;
                                *bucket = 0.0;
                            }
                        }
                    }
                    _ => {
                        self.first_write = Some(bucket_time);
                        self.buckets.fill(0.0);
                        self.total = 0.0;
                    }
                }
                self.last_write = Some(bucket_time);
            }
        }

        let slot = self.slot(write_idx);
        if let Some(bucket) = self.buckets.get_mut(slot) {
            *bucket += value;
            self.total += value;
        }
    }

    /// The window's value at `now`, or `None` when the window is empty
    /// ([`WindowAverage::is_empty`]).
    pub fn value(&self, now: Duration) -> Option<f64> {
        let now = self.truncate(nanos(now));
        if self.is_empty_at(now) {
            None
        } else {
            Some(self.average_at(now))
        }
    }

    /// The window's value at `now` exactly as upstream's `WindowAverage`
    /// returns it: `0` when the window is empty.
    pub fn average(&self, now: Duration) -> f64 {
        self.average_at(self.truncate(nanos(now)))
    }

    /// Whether nothing was recorded for strictly more than one window before
    /// `now` (or ever).
    pub fn is_empty(&self, now: Duration) -> bool {
        self.is_empty_at(self.truncate(nanos(now)))
    }

    /// The window length (after clamping to [`MAX_BUCKETS`] buckets).
    pub fn window(&self) -> Duration {
        self.window
    }

    /// The bucket width.
    pub fn granularity(&self) -> Duration {
        self.granularity
    }

    /// The averaging algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Number of buckets in the ring, `ceil(window / granularity)`.
    pub fn num_buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Changes the window length as upstream's `ResizeWindow` does, `now`
    /// standing for the wall clock upstream reads there.
    ///
    /// Nothing happens if the length is unchanged. Otherwise, when data was
    /// written within the old window of `now`, the newest
    /// `min(old, new)` buckets ending at the last write are kept and the first
    /// write is assumed to be a full old window back
    /// (`lastWrite − (oldBuckets − 1) · granularity`), whatever it really was;
    /// when the data is older than that, the ring restarts empty and the first
    /// write is forgotten (the last write is kept). α is recomputed.
    pub fn resize_window_at(&mut self, now: Duration, window: Duration) {
        let now = self.truncate(nanos(now));
        let live = self
            .last_write
            .is_some_and(|last| now - last <= self.window_ns);
        self.resize(window, live);
    }

    /// [`WindowAverage::resize_window_at`] at the time of the last write: the
    /// current data counts as live whenever something was ever recorded.
    pub fn resize_window(&mut self, window: Duration) {
        let live = self.last_write.is_some();
        self.resize(window, live);
    }

    fn resize(&mut self, window: Duration, live: bool) {
        let (window, len) = fit_window(window, self.granularity);
        if window == self.window {
            return;
        }
        let mut buckets = vec![0.0; len];
        let mut total = 0.0;
        match self.last_write {
            Some(last) if live => {
                let old_len = self.buckets.len();
                let mut idx = self.index(last);
                for _ in 0..len.min(old_len) {
                    let value = self.buckets.get(ring_slot(idx, old_len)).copied();
                    if let (Some(value), Some(bucket)) =
                        (value, buckets.get_mut(ring_slot(idx, len)))
                    {
                        *bucket = value;
                        total += value;
                    }
                    idx -= 1;
                }
                self.first_write = Some(last - (old_len as i128 - 1) * self.granularity_ns);
            }
            _ => self.first_write = None,
        }
        self.window = window;
        self.window_ns = nanos(window);
        self.buckets = buckets;
        self.total = total;
        self.alpha = weighted_alpha(len);
    }

    fn is_empty_at(&self, now: i128) -> bool {
        self.last_write
            .is_none_or(|last| now - last > self.window_ns)
    }

    fn average_at(&self, now: i128) -> f64 {
        match self.algorithm {
            Algorithm::Linear => self.linear_at(now),
            Algorithm::WeightedExponential => self.weighted_at(now),
        }
    }

    fn linear_at(&self, now: i128) -> f64 {
        let Some(last) = self.last_write else {
            return 0.0;
        };
        let since = now - last;
        let len = self.buckets.len() as i128;
        if since <= 0 {
            truncate_decimals(self.total / self.valid_buckets(last, len))
        } else if since < self.window_ns {
            let start = self.index(last);
            let end = self.index(now);
            let mut sum = self.total;
            for i in start + 1..=end {
                sum -= self.buckets.get(self.slot(i)).copied().unwrap_or(0.0);
            }
            truncate_decimals(sum / self.valid_buckets(last, len - (end - start)))
        } else {
            0.0
        }
    }

    /// `min(span/granularity + 1, cap)` as upstream computes it in float64,
    /// with upstream's saturation of `lastWrite − zeroTime` when the first
    /// write is unknown.
    fn valid_buckets(&self, last: i128, cap: i128) -> f64 {
        let span = match self.first_write {
            Some(first) => (last - first).min(i128::from(i64::MAX)),
            None => i128::from(i64::MAX),
        };
        ((span / self.granularity_ns) as f64 + 1.0).min(cap as f64)
    }

    fn weighted_at(&self, now: i128) -> f64 {
        let Some(last) = self.last_write else {
            return 0.0;
        };
        if self.is_empty_at(now) {
            return 0.0;
        }
        let decay = 1.0 - self.alpha;
        let mut multiplier = self.alpha;
        let mut count = self.buckets.len() as i128;
        if now > last {
            let silent = (now - last) / self.granularity_ns;
            multiplier *= go_pow_int(decay, u64::try_from(silent).unwrap_or(u64::MAX));
            count -= silent;
        }
        let start = self.index(last);
        let mut sum = 0.0;
        for i in 0..count.max(0) {
            let bucket = self
                .buckets
                .get(self.slot(start - i))
                .copied()
                .unwrap_or(0.0);
            sum += bucket * multiplier;
            multiplier *= decay;
        }
        sum
    }

    fn truncate(&self, at: i128) -> i128 {
        at - at.rem_euclid(self.granularity_ns)
    }

    fn index(&self, at: i128) -> i128 {
        at.div_euclid(self.granularity_ns)
    }

    fn slot(&self, index: i128) -> usize {
        ring_slot(index, self.buckets.len())
    }
}

/// The stable and panic windows of one metric, fed together.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricWindows {
    stable: WindowAverage,
    panic: WindowAverage,
}

impl MetricWindows {
    /// Both windows with [`DEFAULT_GRANULARITY`] buckets and one algorithm, as
    /// upstream's collector builds them.
    pub fn new(stable_window: Duration, panic_window: Duration, algorithm: Algorithm) -> Self {
        Self::with_granularity(stable_window, panic_window, DEFAULT_GRANULARITY, algorithm)
    }

    /// Both windows with an explicit bucket width.
    pub fn with_granularity(
        stable_window: Duration,
        panic_window: Duration,
        granularity: Duration,
        algorithm: Algorithm,
    ) -> Self {
        Self {
            stable: WindowAverage::new(stable_window, granularity, algorithm),
            panic: WindowAverage::new(panic_window, granularity, algorithm),
        }
    }

    /// Records `value` at `now` into both windows.
    pub fn record(&mut self, now: Duration, value: f64) {
        self.stable.record(now, value);
        self.panic.record(now, value);
    }

    /// `(stable, panic)` averages at `now`, or `None` ("no data") when the
    /// **stable** window is empty. An empty panic window reads `0`.
    ///
    /// Upstream additionally answers "no data" only for metrics that have a
    /// scrape target; a caller without one should read
    /// [`WindowAverage::average`] of both windows instead.
    pub fn stable_and_panic(&self, now: Duration) -> Option<(f64, f64)> {
        if self.stable.is_empty(now) {
            None
        } else {
            Some((self.stable.average(now), self.panic.average(now)))
        }
    }

    /// Resizes both windows ([`WindowAverage::resize_window_at`]).
    pub fn resize_windows_at(
        &mut self,
        now: Duration,
        stable_window: Duration,
        panic_window: Duration,
    ) {
        self.stable.resize_window_at(now, stable_window);
        self.panic.resize_window_at(now, panic_window);
    }

    /// The stable window.
    pub fn stable(&self) -> &WindowAverage {
        &self.stable
    }

    /// The panic window.
    pub fn panic(&self) -> &WindowAverage {
        &self.panic
    }
}

fn nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

fn ring_slot(index: i128, len: usize) -> usize {
    let len = len.max(1) as i128;
    usize::try_from(index.rem_euclid(len)).unwrap_or(0)
}

/// `(clamped window, ceil(window / granularity))`, the quotient computed in
/// float64 like upstream, kept within `1 ..= MAX_BUCKETS`.
fn fit_window(window: Duration, granularity: Duration) -> (Duration, usize) {
    let wanted = (nanos(window) as f64 / nanos(granularity) as f64).ceil();
    if wanted > MAX_BUCKETS as f64 {
        let max = u32::try_from(MAX_BUCKETS).unwrap_or(u32::MAX);
        (
            granularity.checked_mul(max).unwrap_or(Duration::MAX),
            MAX_BUCKETS,
        )
    } else if wanted >= 1.0 {
        (window, wanted as usize)
    } else {
        (window, 1)
    }
}

/// Upstream's `roundToNDigits(6, x)`: `floor(x·1e6)/1e6`.
fn truncate_decimals(x: f64) -> f64 {
    (x * DECIMALS_SCALE).floor() / DECIMALS_SCALE
}

/// `x^n` evaluated like Go's `math.Pow` for a whole exponent: binary powering
/// of the `frexp` mantissa with the binary exponent kept apart, then one
/// correctly rounded scaling.
fn go_pow_int(x: f64, n: u64) -> f64 {
    if n == 0 || x == 1.0 {
        return 1.0;
    }
    if !(x.is_finite() && x > 0.0) {
        return x.powf(n as f64);
    }
    let (mut base, mut base_exp) = frexp(x);
    let mut acc = 1.0;
    let mut acc_exp: i64 = 0;
    let mut rest = n;
    while rest != 0 {
        if !(-(1 << 12)..=(1 << 12)).contains(&base_exp) {
            acc_exp += base_exp;
            break;
        }
        if rest & 1 == 1 {
            acc *= base;
            acc_exp += base_exp;
        }
        base *= base;
        base_exp <<= 1;
        if base < 0.5 {
            base += base;
            base_exp -= 1;
        }
        rest >>= 1;
    }
    scale_by_power_of_two(acc, acc_exp)
}

/// Mantissa in `[0.5, 1)` and exponent of a finite positive `x`.
fn frexp(x: f64) -> (f64, i64) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    let (x, bias) = if x.abs() < f64::MIN_POSITIVE {
        (x * (1u64 << 52) as f64, -52)
    } else {
        (x, 0)
    };
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1022 + bias;
    (f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52)), exp)
}

/// `y · 2^e` with a single rounding (also in the subnormal range).
fn scale_by_power_of_two(mut y: f64, e: i64) -> f64 {
    const TWO_P1023: f64 = f64::from_bits(0x7fe << 52);
    const TWO_M969: f64 = f64::from_bits(54 << 52);
    let mut n = e.clamp(-4000, 4000);
    if n > 1023 {
        for _ in 0..2 {
            if n > 1023 {
                y *= TWO_P1023;
                n -= 1023;
            }
        }
        n = n.min(1023);
    } else if n < -1022 {
        for _ in 0..2 {
            if n < -1022 {
                y *= TWO_M969;
                n += 969;
            }
        }
        n = n.max(-1022);
    }
    y * f64::from_bits(((0x3ff + n) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    const fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    /// One step of a scenario; times are milliseconds since the epoch.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// Record a value.
        Rec(u64, f64),
        /// `value(now)` must equal this exactly.
        Is(u64, Option<f64>),
        /// `value(now)` must be within a tolerance of this.
        Near(u64, f64, f64),
        /// `resize_window_at(now, window_ms)`.
        Resize(u64, u64),
    }
    use Step::{Is, Near, Rec, Resize};

    struct Case<'a> {
        name: &'static str,
        window_ms: u64,
        algorithm: Algorithm,
        steps: &'a [Step],
    }

    const L: Algorithm = Algorithm::Linear;
    const W: Algorithm = Algorithm::WeightedExponential;

    fn run(cases: &[Case<'_>]) {
        for case in cases {
            let mut w = WindowAverage::new(ms(case.window_ms), DEFAULT_GRANULARITY, case.algorithm);
            for (i, step) in case.steps.iter().enumerate() {
                match *step {
                    Rec(at, v) => w.record(ms(at), v),
                    Resize(at, window) => w.resize_window_at(ms(at), ms(window)),
                    Is(at, want) => {
                        let got = w.value(ms(at));
                        assert_eq!(got, want, "{} step {i}: value({at}ms)", case.name);
                        assert_eq!(w.is_empty(ms(at)), want.is_none(), "{} step {i}", case.name);
                    }
                    Near(at, want, tol) => {
                        let got = w.value(ms(at));
                        assert!(
                            got.is_some_and(|g| (g - want).abs() <= tol),
                            "{} step {i}: value({at}ms) = {got:?}, want {want} ± {tol}",
                            case.name
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn linear_scenarios() {
        run(&[
            Case {
                name: "records_in_one_second_are_summed",
                window_ms: 60_000,
                algorithm: L,
                steps: &[
                    Rec(10_000, 1.0),
                    Rec(10_100, 10.0),
                    Rec(10_999, 2.0),
                    Is(10_500, Some(13.0)),
                ],
            },
            Case {
                name: "partial_window_after_start_divides_by_seconds_since_first_write_plus_one",
                window_ms: 60_000,
                algorithm: L,
                steps: &[
                    Rec(100_000, 1.0),
                    Is(100_000, Some(1.0)),
                    Rec(101_000, 2.0),
                    Rec(102_000, 3.0),
                    Rec(103_000, 4.0),
                    Rec(104_000, 5.0),
                    Is(104_000, Some(3.0)),
                    Is(104_999, Some(3.0)),
                ],
            },
            Case {
                name: "full_window_keeps_only_the_newest_buckets",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(0, 1.0),
                    Rec(1_000, 2.0),
                    Rec(2_000, 3.0),
                    Rec(3_000, 4.0),
                    Rec(4_000, 5.0),
                    Rec(5_000, 6.0),
                    Rec(6_000, 7.0),
                    Is(6_000, Some(5.0)),
                ],
            },
            Case {
                name: "trailing_silence_is_excluded_not_zero",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(0, 1.0),
                    Rec(1_000, 2.0),
                    Rec(2_000, 3.0),
                    Rec(3_000, 4.0),
                    Rec(4_000, 5.0),
                    // Seconds 0 and 1 left the window, 5 and 6 are silent.
                    Is(6_000, Some(4.0)),
                    Is(6_900, Some(4.0)),
                    // Only second 4 is left; 5..8 are silent.
                    Is(8_000, Some(5.0)),
                ],
            },
            Case {
                name: "gaps_in_the_middle_count_as_zero",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(0, 5.0),
                    Rec(4_000, 5.0),
                    Is(4_000, Some(2.0)),
                    Rec(8_000, 1.0),
                    // Seconds 5..7 are zeros inside the window 4..8.
                    Is(8_000, Some(1.2)),
                ],
            },
            Case {
                name: "gap_write_clears_the_skipped_slots",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(0, 1.0),
                    Rec(1_000, 2.0),
                    Rec(2_000, 3.0),
                    Rec(3_000, 4.0),
                    Rec(4_000, 5.0),
                    Rec(8_000, 2.0),
                    Is(8_000, Some(1.4)),
                ],
            },
            Case {
                name: "silence_of_exactly_one_window_reads_zero_then_no_data",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Is(0, None),
                    Rec(10_000, 3.0),
                    Is(14_000, Some(3.0)),
                    Is(15_000, Some(0.0)),
                    Is(15_999, Some(0.0)),
                    Is(16_000, None),
                ],
            },
            Case {
                name: "write_after_one_window_of_silence_restarts_partial_window",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(0, 4.0),
                    Rec(5_000, 6.0),
                    Is(5_000, Some(6.0)),
                    Rec(6_000, 2.0),
                    Is(6_000, Some(4.0)),
                    Rec(30_000, 7.0),
                    Is(30_000, Some(7.0)),
                ],
            },
            Case {
                name: "truncates_to_six_decimals_towards_minus_infinity",
                window_ms: 3_000,
                algorithm: L,
                steps: &[
                    Rec(0, 1.0),
                    Rec(1_000, 1.0),
                    Rec(2_000, 0.0),
                    Is(2_000, Some(0.666_666)),
                    Rec(3_000, -3.0),
                    Is(3_000, Some(-0.666_667)),
                ],
            },
            Case {
                // The running total drifts like upstream's: 0.1 + 4.0 − 0.1 is
                // 3.9999999999999996, and truncation then shows it.
                name: "running_total_drift_is_kept_like_upstream",
                window_ms: 4_000,
                algorithm: L,
                steps: &[
                    Rec(0, 0.1),
                    Rec(1_000, 4.0),
                    Rec(4_000, 0.0),
                    Is(4_000, Some(0.999_999)),
                    Rec(5_000, 0.0),
                    Is(5_000, Some(-0.000_001)),
                ],
            },
            Case {
                name: "older_record_inside_window_is_added_and_moves_first_write",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(60_000, 100.0),
                    Rec(57_000, 4.0),
                    Is(60_000, Some(26.0)),
                    Rec(61_000, 6.0),
                    Is(61_000, Some(22.0)),
                    Rec(58_000, 10.0),
                    Is(61_000, Some(24.0)),
                    // 56 + 5 <= 61: a window too old, dropped.
                    Rec(56_000, 1000.0),
                    Is(61_000, Some(24.0)),
                ],
            },
            Case {
                name: "descending_records_keep_the_last_window",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(8_000, 5.0),
                    Rec(7_000, 5.0),
                    Rec(6_000, 5.0),
                    Rec(5_000, 5.0),
                    Rec(4_000, 5.0),
                    Rec(3_000, 5.0),
                    Rec(2_000, 5.0),
                    Rec(1_000, 5.0),
                    Rec(0, 5.0),
                    Is(5_000, Some(5.0)),
                    Is(8_000, Some(5.0)),
                ],
            },
            Case {
                name: "future_record_is_accepted_and_earlier_reads_use_it",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(10_000, 6.0),
                    Rec(12_000, 4.0),
                    Is(11_000, Some(3.333_333)),
                    Rec(40_000, 8.0),
                    Is(20_000, Some(8.0)),
                ],
            },
            Case {
                name: "resize_grow_then_shrink",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(0, 1.0),
                    Rec(1_000, 2.0),
                    Rec(2_000, 3.0),
                    Rec(3_000, 4.0),
                    Rec(4_000, 5.0),
                    Rec(5_000, 6.0),
                    Is(5_000, Some(4.0)),
                    Resize(5_000, 10_000),
                    Is(5_000, Some(4.0)),
                    Rec(6_000, 7.0),
                    Is(6_000, Some(4.5)),
                    Resize(6_000, 4_000),
                    Is(6_000, Some(5.5)),
                    Resize(6_000, 4_000),
                    Is(6_000, Some(5.5)),
                ],
            },
            Case {
                name: "resize_assumes_a_full_old_window_of_data",
                window_ms: 60_000,
                algorithm: L,
                steps: &[
                    Rec(100_000, 10.0),
                    Rec(101_000, 10.0),
                    Is(101_000, Some(10.0)),
                    Resize(101_000, 120_000),
                    // First write is now 59 s before the last: 20 / 60.
                    Is(101_000, Some(0.333_333)),
                ],
            },
            Case {
                name: "resize_of_stale_data_forgets_it",
                window_ms: 5_000,
                algorithm: L,
                steps: &[
                    Rec(0, 9.0),
                    Resize(100_000, 10_000),
                    // Last write is kept, so not empty within 10 s of it, but 0.
                    Is(5_000, Some(0.0)),
                    Is(10_001, Some(0.0)),
                    Is(11_000, None),
                ],
            },
        ]);
    }

    #[test]
    fn weighted_scenarios() {
        run(&[
            Case {
                name: "weighted_single_bucket_reads_alpha_times_value",
                window_ms: 60_000,
                algorithm: W,
                steps: &[Rec(0, 10.0), Is(0, Some(2.0)), Is(999, Some(2.0))],
            },
            Case {
                name: "weighted_silence_since_last_write_counts_as_zeros",
                window_ms: 60_000,
                algorithm: W,
                steps: &[
                    Rec(0, 10.0),
                    Near(1_000, 1.6, 1e-12),
                    Near(2_000, 1.28, 1e-12),
                    Is(60_000, Some(0.0)),
                    Is(61_000, None),
                ],
            },
            Case {
                name: "weighted_partial_window_is_not_renormalised",
                window_ms: 60_000,
                algorithm: W,
                steps: &[
                    Rec(0, 10.0),
                    Rec(1_000, 10.0),
                    Rec(2_000, 10.0),
                    Near(2_000, 10.0 * (1.0 - 0.512), 1e-12),
                ],
            },
            Case {
                name: "weighted_records_in_one_second_are_summed",
                window_ms: 6_000,
                algorithm: W,
                steps: &[
                    Rec(5_000, 1.0),
                    Rec(5_500, 3.0),
                    Near(5_000, 4.0 * 0.784_556_530_996_8, 1e-9),
                ],
            },
        ]);
    }

    #[test]
    fn weighted_alpha_for_60_and_6_buckets() {
        assert_eq!(weighted_alpha(60), 0.2);
        assert_eq!(
            weighted_alpha(41),
            1.0 - ((1.0 / 41.0) * WEIGHT_TAIL.ln()).exp()
        );
        assert!(weighted_alpha(41) > 0.2);
        assert_eq!(weighted_alpha(42), 0.2);
        assert!((weighted_alpha(6) - 0.784_556_530_996_8).abs() < 1e-12);
        assert_eq!(weighted_alpha(1), 1.0 - 0.0001);
        assert_eq!(weighted_alpha(2), 0.99);
        let w = WindowAverage::new(s(6), DEFAULT_GRANULARITY, W);
        assert_eq!(w.num_buckets(), 6);
    }

    #[test]
    fn constant_load_reads_the_constant() {
        for (window, tol) in [(60, 2e-4), (6, 1.1e-2)] {
            let mut lin = WindowAverage::new(s(window), DEFAULT_GRANULARITY, L);
            let mut wei = WindowAverage::new(s(window), DEFAULT_GRANULARITY, W);
            for t in 0..200 {
                lin.record(s(t), 100.0);
                wei.record(s(t), 100.0);
            }
            assert_eq!(lin.value(s(199)), Some(100.0), "linear, {window}s");
            let got = wei.value(s(199)).unwrap_or(f64::NAN);
            assert!((got - 100.0).abs() < tol, "weighted, {window}s: {got}");
            assert!(got < 100.0, "weighted is never re-normalised up: {got}");
        }
    }

    #[test]
    fn ramp_under_reads_with_weighted_but_leads_linear() {
        let mut lin = WindowAverage::new(s(60), DEFAULT_GRANULARITY, L);
        let mut wei = WindowAverage::new(s(60), DEFAULT_GRANULARITY, W);
        for t in 0..60 {
            lin.record(s(t), (t + 1) as f64);
            wei.record(s(t), (t + 1) as f64);
        }
        let linear = lin.value(s(59)).unwrap_or(f64::NAN);
        let weighted = wei.value(s(59)).unwrap_or(f64::NAN);
        assert_eq!(linear, 30.5);
        // Σ 0.2·0.8^i·(60 − i) ≈ 60 − 0.8/0.2.
        assert!((weighted - 56.0).abs() < 1e-2, "{weighted}");
        assert!(linear < weighted && weighted < 60.0);
    }

    #[test]
    fn go_pow_matches_repeated_products_and_edge_cases() {
        assert_eq!(go_pow_int(0.8, 0), 1.0);
        assert_eq!(go_pow_int(0.8, 1), 0.8);
        assert_eq!(go_pow_int(0.8, 2), 0.8 * 0.8);
        assert_eq!(go_pow_int(0.8, 4), (0.8 * 0.8) * (0.8 * 0.8));
        // Low bits first: (x · x²) · x⁴.
        let x = 0.215_443_469_003_188_3;
        assert_eq!(go_pow_int(x, 7), (x * (x * x)) * ((x * x) * (x * x)));
        assert_eq!(go_pow_int(0.0001, 100_000), 0.0);
        assert!(go_pow_int(0.5, 1074) > 0.0);
        assert_eq!(go_pow_int(0.5, 1075), 0.0);
        assert_eq!(frexp(0.8), (0.8, 0));
        assert_eq!(frexp(3.0), (0.75, 2));
        assert_eq!(scale_by_power_of_two(0.75, -1074), f64::from_bits(1));
        assert_eq!(scale_by_power_of_two(1.0, 5000), f64::INFINITY);
    }

    #[test]
    fn algorithm_annotation_values() {
        assert_eq!(Algorithm::parse("linear"), Some(L));
        assert_eq!(Algorithm::parse("weighted-exponential"), Some(W));
        assert_eq!(Algorithm::parse("weightedExponential"), Some(W));
        assert_eq!(Algorithm::parse(""), None);
        assert_eq!(Algorithm::parse("Linear"), None);
        assert_eq!(Algorithm::parse(" linear"), None);
        assert_eq!(Algorithm::from_annotation(None), L);
        assert_eq!(Algorithm::from_annotation(Some("weighted-exponential")), W);
        assert_eq!(Algorithm::from_annotation(Some("weightedExponential")), L);
        assert_eq!(Algorithm::from_annotation(Some("bogus")), L);
        assert_eq!(Algorithm::default(), L);
        assert_eq!(W.as_str(), "weighted-exponential");
    }

    #[test]
    fn construction_edge_cases_do_not_panic() {
        let w = WindowAverage::new(Duration::ZERO, Duration::ZERO, L);
        assert_eq!((w.num_buckets(), w.granularity()), (1, DEFAULT_GRANULARITY));
        let mut w = WindowAverage::new(Duration::MAX, ms(1), W);
        assert_eq!(w.num_buckets(), MAX_BUCKETS);
        assert_eq!(w.window(), ms(MAX_BUCKETS as u64));
        w.record(Duration::MAX, f64::NAN);
        assert!(w.value(Duration::MAX).is_some_and(f64::is_nan));
        let mut w = WindowAverage::new(ms(6_600), s(1), L);
        assert_eq!((w.num_buckets(), w.window()), (7, ms(6_600)));
        w.record(Duration::ZERO, 1.0);
        w.resize_window(ms(2_500));
        assert_eq!(
            (w.num_buckets(), w.value(Duration::ZERO)),
            (3, Some(0.333_333))
        );
    }

    #[test]
    fn coarse_granularity_buckets() {
        // ceil(5 s / 3 s) = 2 buckets of 3 s.
        let mut w = WindowAverage::new(s(5), s(3), L);
        assert_eq!(w.num_buckets(), 2);
        w.record(s(30), 10.0);
        w.record(s(31), 2.0);
        w.record(s(33), 4.0);
        assert_eq!(w.value(s(35)), Some(8.0));
        assert_eq!(w.value(s(36)), Some(4.0));
    }

    #[test]
    fn metric_windows_stable_decides_no_data() {
        let mut m = MetricWindows::new(s(60), s(6), L);
        assert_eq!(m.stable_and_panic(s(0)), None);
        m.record(s(100), 10.0);
        m.record(s(101), 20.0);
        assert_eq!(m.stable_and_panic(s(101)), Some((15.0, 15.0)));
        // Panic window went silent, stable still has data.
        assert_eq!(m.stable_and_panic(s(110)), Some((15.0, 0.0)));
        assert_eq!(m.stable_and_panic(s(161)), Some((0.0, 0.0)));
        assert_eq!(m.stable_and_panic(s(162)), None);
        m.resize_windows_at(s(101), s(30), s(3));
        assert_eq!((m.stable().num_buckets(), m.panic().num_buckets()), (30, 3));
        let w = MetricWindows::new(s(60), s(6), W);
        assert_eq!(w.panic().algorithm(), W);
    }

    #[test]
    fn weighted_resize_recomputes_alpha() {
        let mut w = WindowAverage::new(s(60), DEFAULT_GRANULARITY, W);
        w.record(s(0), 10.0);
        assert_eq!(w.value(s(0)), Some(2.0));
        w.resize_window_at(s(0), s(6));
        let got = w.value(s(0)).unwrap_or(f64::NAN);
        assert!((got - 7.845_565_309_968).abs() < 1e-9, "{got}");
    }

    proptest! {
        #[test]
        fn linear_constant_stream_reads_the_constant_exactly(
            k in 0u32..1_000_000,
            window in 1u64..=120,
            start in 0u64..10_000,
            len in 1u64..300,
            offset_ms in 0u64..1000,
        ) {
            // Multiples of 1/64 add exactly, so the truncation is exact too.
            let c = f64::from(k) / 64.0;
            let mut w = WindowAverage::new(s(window), DEFAULT_GRANULARITY, L);
            for t in start..start + len {
                w.record(s(t) + ms(offset_ms), c);
                prop_assert_eq!(w.value(s(t) + ms(offset_ms)), Some(c));
            }
        }

        #[test]
        fn linear_constant_stream_reads_the_constant_after_truncation(
            c in 0.0f64..1e6,
            window in 1u64..=120,
            len in 1u64..300,
        ) {
            let mut w = WindowAverage::new(s(window), DEFAULT_GRANULARITY, L);
            for t in 0..len {
                w.record(s(t), c);
            }
            let got = w.value(s(len - 1)).unwrap_or(f64::NAN);
            let slack = c * 1e-12;
            prop_assert!(got <= c + slack && got >= c - 1e-6 - slack, "{} vs {}", got, c);
            prop_assert!(got >= 0.0);
        }

        #[test]
        fn linear_is_never_negative_for_non_negative_integers(
            ops in proptest::collection::vec((0u64..200_000, 0u32..1000, any::<bool>()), 1..200),
            window in 1u64..=60,
        ) {
            let mut w = WindowAverage::new(s(window), DEFAULT_GRANULARITY, L);
            for (at, v, read) in ops {
                if read {
                    prop_assert!(w.average(ms(at)) >= 0.0);
                } else {
                    w.record(ms(at), f64::from(v));
                }
            }
        }

        #[test]
        fn linear_is_never_below_one_truncation_step_for_non_negative_inputs(
            ops in proptest::collection::vec((0u64..100_000, 0.0f64..1000.0, any::<bool>()), 1..200),
            window in 1u64..=60,
        ) {
            let mut w = WindowAverage::new(s(window), DEFAULT_GRANULARITY, L);
            for (at, v, read) in ops {
                if read {
                    prop_assert!(w.average(ms(at)) >= -1e-6);
                } else {
                    w.record(ms(at), v);
                }
            }
        }

        #[test]
        fn weighted_constant_stream_is_close_to_the_constant(
            c in 0.0f64..1e6,
            window in 1u64..=120,
        ) {
            let mut w = WindowAverage::new(s(window), DEFAULT_GRANULARITY, W);
            for t in 0..2 * window {
                w.record(s(t), c);
            }
            let got = w.value(s(2 * window - 1)).unwrap_or(f64::NAN);
            let n = w.num_buckets() as i32;
            let expected = c * (1.0 - (1.0 - weighted_alpha(w.num_buckets())).powi(n));
            prop_assert!((got - expected).abs() <= 1e-9 * c.max(1.0), "{} vs {}", got, expected);
            prop_assert!(got <= c * (1.0 + 1e-12) && got >= 0.0);
        }
    }
}
