//! The KPA decider: how many pods a revision wants, as Knative's
//! `scaling/autoscaler.go` decides it every 2 s (`specs/SERVING.md §3.3–§3.4`).
//!
//! [`Decider`] is a pure state machine: give it the time and the observed
//! window values, get a [`Decision`]. It keeps only what upstream keeps
//! between ticks: the panic start time, the highest pod count seen while
//! panicking, and the scale-down-delay window.
//!
//! ```
//! use std::time::Duration;
//! use knative_serving::autoscaling::kpa::{Decider, DeciderSpec, Observation};
//!
//! let mut decider = Decider::new(DeciderSpec::default());
//! // 300 concurrent requests seen by the panic window, one pod ready:
//! let d = decider.decide(Duration::from_secs(2), Observation { ready_pods: 1, stable: 50.0, panic: 150.0 });
//! assert!(d.panicking); // ceil(150/70) = 3 pods, 3/1 ≥ 200%
//! assert_eq!(d.desired, 3);
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::config::{
    Annotations, AutoscalerConfig, AutoscalingError, BUCKET_SIZE, Metric, RPS_TARGET_UTILIZATION,
    TARGET_MIN, TICK_INTERVAL,
};

/// Everything the decider needs to know about a revision, one field per knob.
#[derive(Clone, Debug, PartialEq)]
pub struct DeciderSpec {
    /// The metric being scaled on.
    pub metric: Metric,
    /// Per-pod target of the metric (`total · utilization`, at least 0.01).
    pub target_value: f64,
    /// Per-pod capacity: the target before utilization (used for burst capacity).
    pub total_value: f64,
    /// Most that pods can grow per tick, as a factor of ready pods.
    pub max_scale_up_rate: f64,
    /// Most that pods can shrink per tick, as a divisor of ready pods.
    pub max_scale_down_rate: f64,
    /// Panic when the panic-window pods reach this many times the ready pods
    /// (a ratio: 2.0 = 200%).
    pub panic_threshold: f64,
    /// The stable window (also how long a panic lasts after the last spike).
    pub stable_window: Duration,
    /// The panic window.
    pub panic_window: Duration,
    /// Spare capacity to keep before taking the activator out of the path
    /// (0 = never in the path when pods run, −1 = always).
    pub target_burst_capacity: f64,
    /// The least pods to start when scaling from zero (1 = no effect).
    pub activation_scale: i32,
    /// Scale-downs wait until the desired count has been lower this long.
    pub scale_down_delay: Duration,
    /// Pods a new revision starts with (for the initial burst capacity).
    pub initial_scale: i32,
    /// Whether a route sends the revision traffic; unreachable revisions may
    /// drop to zero at once.
    pub reachable: bool,
}

impl Default for DeciderSpec {
    /// The spec of a revision with `containerConcurrency: 0` and default
    /// `config-autoscaler`.
    fn default() -> Self {
        let config = AutoscalerConfig::default();
        // The default config and no annotations are always valid.
        match DeciderSpec::from_config(&config, &BTreeMap::new(), 0) {
            Ok(spec) => spec,
            Err(_) => unreachable!("upstream's defaults are valid"),
        }
    }
}

/// Rounds a duration to whole seconds, as Go's `Duration.Round(time.Second)`.
fn round_to_second(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() >= 500_000_000))
}

impl DeciderSpec {
    /// Resolves a revision's spec from `config-autoscaler`, its annotations
    /// and its `containerConcurrency` (§3.3: target resolution).
    pub fn from_config(
        config: &AutoscalerConfig,
        annotations: &BTreeMap<String, String>,
        container_concurrency: i64,
    ) -> Result<Self, AutoscalingError> {
        let a = Annotations::parse(annotations)?;
        let metric = a.metric.unwrap_or_default();
        let cc = container_concurrency as f64;
        let (mut total, mut utilization) = match metric {
            Metric::Concurrency => (
                if container_concurrency == 0 {
                    config.container_concurrency_target_default
                } else {
                    cc
                },
                config.container_concurrency_target_fraction,
            ),
            Metric::Rps => (config.rps_target_default, RPS_TARGET_UTILIZATION),
        };
        if let Some(target) = a.target {
            total = if metric == Metric::Concurrency && container_concurrency != 0 {
                target.min(cc)
            } else {
                target
            };
        }
        if let Some(tu) = a.target_utilization {
            utilization = tu;
        }
        let stable_window = a.window.unwrap_or(config.stable_window);
        let panic_pct = a
            .panic_window_percentage
            .unwrap_or(config.panic_window_percentage);
        // Go: time.Duration(float64(sw) * pct / 100).Round(time.Second),
        // truncated to whole nanoseconds first.
        let nanos = (stable_window.as_nanos() as f64 * panic_pct / 100.0) as u64;
        let panic_window = round_to_second(Duration::from_nanos(nanos)).max(BUCKET_SIZE);
        let initial_scale = match a.initial_scale {
            Some(0) if !config.allow_zero_initial_scale => config.initial_scale,
            Some(n) => n,
            None => config.initial_scale,
        };
        Ok(DeciderSpec {
            metric,
            target_value: (total * utilization).max(TARGET_MIN),
            total_value: total,
            max_scale_up_rate: config.max_scale_up_rate,
            max_scale_down_rate: config.max_scale_down_rate,
            panic_threshold: a
                .panic_threshold_percentage
                .unwrap_or(config.panic_threshold_percentage)
                / 100.0,
            stable_window,
            panic_window,
            target_burst_capacity: a
                .target_burst_capacity
                .unwrap_or(config.target_burst_capacity),
            activation_scale: a.activation_scale.unwrap_or(1),
            scale_down_delay: a.scale_down_delay.unwrap_or(config.scale_down_delay),
            initial_scale,
            reachable: true,
        })
    }

    /// The excess burst capacity a new decider reports before its first tick:
    /// 0 or −1 for those burst capacities, else `initialScale · total − TBC`.
    pub fn initial_excess_burst_capacity(&self) -> i32 {
        let tbc = self.target_burst_capacity;
        if tbc == 0.0 || tbc == -1.0 {
            tbc as i32
        } else {
            (f64::from(self.initial_scale) * self.total_value - tbc) as i32
        }
    }
}

/// What the metric pipeline saw at one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observation {
    /// Ready pods now.
    pub ready_pods: u32,
    /// Stable-window value of the metric (revision-wide total).
    pub stable: f64,
    /// Panic-window value of the metric (revision-wide total).
    pub panic: f64,
}

impl Observation {
    /// Whether the windows have data; a tick without data changes nothing
    /// (upstream returns an invalid result and the last decision sticks).
    pub fn has_data(&self) -> bool {
        self.stable.is_finite() && self.panic.is_finite()
    }
}

/// The decider's output for one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Pods wanted; −1 before the first tick with data.
    pub desired: i32,
    /// Spare capacity beyond the burst target; negative means the activator
    /// must stay in the request path.
    pub excess_burst_capacity: i32,
    /// Whether the decider is in panic mode.
    pub panicking: bool,
}

/// The sliding maximum over the last `buckets` two-second slots, keyed by
/// `now / granularity` like upstream's `max.TimeWindow`.
#[derive(Clone, Debug)]
struct MaxWindow {
    buckets: i64,
    granularity_secs: u64,
    /// (slot, value), values strictly decreasing from front to back.
    entries: VecDeque<(i64, i32)>,
}

impl MaxWindow {
    fn new(duration: Duration, granularity: Duration) -> Self {
        let granularity_secs = granularity.as_secs().max(1);
        let buckets = duration.as_secs_f64() / granularity.as_secs_f64();
        MaxWindow {
            buckets: (buckets.ceil() as i64).max(1),
            granularity_secs,
            entries: VecDeque::new(),
        }
    }

    fn record(&mut self, now: Duration, value: i32) {
        let slot = i64::try_from(now.as_secs() / self.granularity_secs).unwrap_or(i64::MAX);
        // A smaller older value can never be the maximum again.
        while self.entries.back().is_some_and(|(_, v)| value >= *v) {
            self.entries.pop_back();
        }
        // Drop values that fell out of the window.
        while self
            .entries
            .front()
            .is_some_and(|(s, _)| *s <= slot - self.buckets)
        {
            self.entries.pop_front();
        }
        self.entries.push_back((slot, value));
    }

    fn current(&self) -> i32 {
        self.entries.front().map_or(0, |(_, v)| *v)
    }
}

/// The KPA's decision state machine for one revision.
///
/// `now` is any monotonic time, but the scale-down-delay window groups
/// ticks into 2 s slots by `now / 2 s`; to reproduce upstream's traces
/// exactly, pass Unix time.
#[derive(Clone, Debug)]
pub struct Decider {
    spec: DeciderSpec,
    /// When the current panic started or was last extended.
    panic_time: Option<Duration>,
    max_panic_pods: i32,
    delay_window: Option<MaxWindow>,
    last: Decision,
    started: bool,
}

impl Decider {
    /// A decider for a revision with no ready pods yet.
    pub fn new(spec: DeciderSpec) -> Self {
        let delay_window = (spec.scale_down_delay > Duration::ZERO)
            .then(|| MaxWindow::new(spec.scale_down_delay, TICK_INTERVAL));
        let last = Decision {
            desired: -1,
            excess_burst_capacity: spec.initial_excess_burst_capacity(),
            panicking: false,
        };
        Decider {
            spec,
            panic_time: None,
            max_panic_pods: 0,
            delay_window,
            last,
            started: false,
        }
    }

    /// A decider created at `now` for a revision that already has
    /// `ready_pods` pods (e.g. after an autoscaler restart): with more than
    /// one pod it starts panicking with that many pods, so it does not scale
    /// down before it has seen enough data.
    pub fn with_ready_pods(spec: DeciderSpec, ready_pods: u32, now: Duration) -> Self {
        let mut decider = Decider::new(spec);
        decider.start(ready_pods, now);
        decider
    }

    fn start(&mut self, ready_pods: u32, now: Duration) {
        self.started = true;
        self.max_panic_pods = i32::try_from(ready_pods).unwrap_or(i32::MAX);
        if ready_pods > 1 {
            self.panic_time = Some(now);
            self.last.panicking = true;
        }
    }

    /// The spec in use.
    pub fn spec(&self) -> &DeciderSpec {
        &self.spec
    }

    /// Replaces the spec (annotations or config changed). Like upstream's
    /// `Update`, the panic state and the scale-down-delay window (created
    /// once, only if the delay was non-zero at creation) are kept.
    pub fn update(&mut self, spec: DeciderSpec) {
        self.spec = spec;
    }

    /// The latest decision (desired −1 before the first tick with data).
    pub fn last(&self) -> Decision {
        self.last
    }

    /// One tick: the pods wanted given what was observed at `now`.
    pub fn decide(&mut self, now: Duration, observed: Observation) -> Decision {
        if !self.started {
            // Upstream reads the ready count when the decider is created.
            self.start(observed.ready_pods, now);
        }
        if !observed.has_data() {
            return self.last;
        }
        let spec = &self.spec;
        let raw_ready = f64::from(observed.ready_pods);
        let ready = raw_ready.max(1.0);
        let max_up = (spec.max_scale_up_rate * ready).ceil();
        let max_down = if spec.reachable {
            (ready / spec.max_scale_down_rate).floor()
        } else {
            0.0
        };
        let dspc = (observed.stable / spec.target_value).ceil();
        let dppc = (observed.panic / spec.target_value).ceil();
        let mut stable = dspc.max(max_down).min(max_up) as i32;
        let mut panic = dppc.max(max_down).min(max_up) as i32;
        if spec.activation_scale > 1 {
            if dspc > 0.0 && spec.activation_scale > stable {
                stable = spec.activation_scale;
            }
            if dppc > 0.0 && spec.activation_scale > panic {
                panic = spec.activation_scale;
            }
        }

        let over_threshold = dppc / ready >= spec.panic_threshold;
        match self.panic_time {
            _ if over_threshold => self.panic_time = Some(now),
            Some(since) if since + spec.stable_window < now => {
                self.panic_time = None;
                self.max_panic_pods = 0;
            }
            _ => {}
        }

        let mut desired = stable;
        if self.panic_time.is_some() {
            desired = desired.max(panic);
            // Never scale down while panicking.
            self.max_panic_pods = self.max_panic_pods.max(desired);
            desired = self.max_panic_pods;
        }
        if let Some(window) = self.delay_window.as_mut().filter(|_| spec.reachable) {
            window.record(now, desired);
            desired = window.current();
        }

        let tbc = spec.target_burst_capacity;
        let excess = if tbc == 0.0 {
            0.0
        } else if tbc > 0.0 {
            (raw_ready * spec.total_value - tbc - observed.panic).floor()
        } else {
            -1.0
        };
        self.last = Decision {
            desired,
            excess_burst_capacity: excess as i32,
            panicking: self.panic_time.is_some(),
        };
        self.last
    }
}

#[cfg(test)]
mod tests;
