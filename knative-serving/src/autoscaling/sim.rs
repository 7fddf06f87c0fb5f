//! A simulator that replays a load trace through any [`ScalingPolicy`]
//! and reports what it would cost and how requests would fare.
//!
//! The model, stepped once per second of simulated time:
//!
//! - the trace gives the offered load (in-flight requests, and requests per
//!   second; without an RPS column, each in-flight request is taken to last
//!   one second, so RPS = concurrency); the load holds until the next point;
//! - the revision-wide load is recorded into stable and panic windows, as
//!   queue-proxies and the activator report it (`specs/SERVING.md §3.1`);
//! - every tick (2 s), and at once when load arrives with no replica, the
//!   policy decides; new replicas become ready after `pod_startup`; removed
//!   replicas go away at once (not-yet-ready ones first);
//! - ready replicas serve up to `pod_capacity` in-flight requests each; the
//!   rest wait. A second with load and no ready replica counts its requests
//!   as cold-start requests, delayed until the first replica is ready;
//!   otherwise excess load waits `excess / capacity` seconds (Little's law).
//!
//! It is a cost/latency model for comparing policies, not a queueing-exact
//! replay.

use std::fmt::Write as _;
use std::time::Duration;

use super::metrics::{Algorithm, MetricWindows};
use super::pa::ScalingBounds;
use super::policy::{MetricSnapshot, PolicyInput, ScalingPolicy};

/// One point of a load trace: from `at` on, this much load.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadPoint {
    /// When this load starts.
    pub at: Duration,
    /// In-flight requests (revision-wide).
    pub concurrency: f64,
    /// Requests per second, if known.
    pub rps: Option<f64>,
}

/// Why a trace could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("load trace line {line}: {reason}")]
pub struct TraceError {
    /// The 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// A load trace: a step function of time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trace {
    points: Vec<LoadPoint>,
}

impl Trace {
    /// A trace from points in time order.
    pub fn new(mut points: Vec<LoadPoint>) -> Self {
        points.sort_by_key(|p| p.at);
        Trace { points }
    }

    /// Reads CSV lines `t_seconds,concurrency[,rps]`; a header line and
    /// blank lines are skipped. Errors name the line.
    pub fn from_csv(text: &str) -> Result<Self, TraceError> {
        let mut points = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let number = |idx: usize, what: &str| -> Result<f64, TraceError> {
                let field = fields.get(idx).copied().unwrap_or("");
                field
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| TraceError {
                        line: i + 1,
                        reason: format!("{what} {field:?} is not a non-negative number"),
                    })
            };
            if i == 0 && fields.first().is_some_and(|f| f.parse::<f64>().is_err()) {
                continue; // header
            }
            if !(2..=3).contains(&fields.len()) {
                return Err(TraceError {
                    line: i + 1,
                    reason: format!(
                        "expected t_seconds,concurrency[,rps], got {} fields",
                        fields.len()
                    ),
                });
            }
            let at = number(0, "t_seconds")?;
            let concurrency = number(1, "concurrency")?;
            let rps = if fields.len() == 3 {
                Some(number(2, "rps")?)
            } else {
                None
            };
            points.push(LoadPoint {
                at: Duration::from_secs_f64(at),
                concurrency,
                rps,
            });
        }
        Ok(Trace::new(points))
    }

    /// The load at `t` (none before the first point).
    pub fn at(&self, t: Duration) -> LoadPoint {
        let idx = self.points.partition_point(|p| p.at <= t);
        match idx.checked_sub(1).and_then(|i| self.points.get(i)) {
            Some(p) => *p,
            None => LoadPoint {
                at: t,
                concurrency: 0.0,
                rps: Some(0.0),
            },
        }
    }

    /// When the last point starts.
    pub fn end(&self) -> Duration {
        self.points.last().map_or(Duration::ZERO, |p| p.at)
    }

    /// The points.
    pub fn points(&self) -> &[LoadPoint] {
        &self.points
    }
}

/// How to simulate.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Time from asking for a replica to it being ready.
    pub pod_startup: Duration,
    /// In-flight requests one replica serves.
    pub pod_capacity: f64,
    /// How often the policy decides (2 s, like the KPA).
    pub tick: Duration,
    /// The revision's scaling bounds.
    pub bounds: ScalingBounds,
    /// The stable metric window.
    pub stable_window: Duration,
    /// The panic metric window.
    pub panic_window: Duration,
    /// How the windows average.
    pub algorithm: Algorithm,
    /// Time simulated after the trace's last point (to see scale-down).
    pub tail: Duration,
    /// Replicas at the start.
    pub initial_replicas: u32,
}

impl SimConfig {
    /// A config with upstream's defaults for `bounds`.
    pub fn new(bounds: ScalingBounds) -> Self {
        SimConfig {
            pod_startup: Duration::from_secs(3),
            pod_capacity: 100.0,
            tick: Duration::from_secs(2),
            stable_window: bounds.stable_window,
            panic_window: Duration::from_secs(6),
            algorithm: Algorithm::Linear,
            tail: Duration::from_secs(180),
            initial_replicas: 0,
            bounds,
        }
    }
}

/// The state of one simulated second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Simulated time.
    pub t: Duration,
    /// Offered in-flight requests.
    pub load: f64,
    /// Replicas asked for (starting or ready).
    pub replicas: u32,
    /// Ready replicas.
    pub ready: u32,
    /// Whether the activator was in the path.
    pub activator_in_path: bool,
    /// In-flight requests waiting for capacity.
    pub waiting: f64,
}

/// What a simulation found.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Replica-seconds paid for (starting and ready replicas).
    pub pod_seconds: f64,
    /// Requests that arrived with no ready replica.
    pub cold_start_requests: f64,
    /// All requests.
    pub requests: f64,
    /// Median, 90th and 99th percentile waiting time of requests.
    pub wait_p50: Duration,
    /// 90th percentile waiting time.
    pub wait_p90: Duration,
    /// 99th percentile waiting time.
    pub wait_p99: Duration,
    /// Most replicas at once.
    pub max_replicas: u32,
    /// One sample per simulated second.
    pub samples: Vec<Sample>,
}

impl Report {
    /// The timeline as CSV: `t_seconds,load,replicas,ready,activator_in_path,waiting`.
    pub fn timeline_csv(&self) -> String {
        let mut csv = String::from("t_seconds,load,replicas,ready,activator_in_path,waiting\n");
        for s in &self.samples {
            let _ = writeln!(
                csv,
                "{},{},{},{},{},{}",
                s.t.as_secs(),
                s.load,
                s.replicas,
                s.ready,
                u8::from(s.activator_in_path),
                s.waiting
            );
        }
        csv
    }
}

/// Weighted percentile of `(value, weight)` pairs sorted by value.
fn percentile(sorted: &[(f64, f64)], total: f64, p: f64) -> Duration {
    if total <= 0.0 {
        return Duration::ZERO;
    }
    let mut acc = 0.0;
    for (value, weight) in sorted {
        acc += weight;
        if acc >= p * total {
            return Duration::from_secs_f64(*value);
        }
    }
    sorted
        .last()
        .map_or(Duration::ZERO, |(v, _)| Duration::from_secs_f64(*v))
}

/// Replays `trace` through `policy`.
pub fn simulate(policy: &mut dyn ScalingPolicy, trace: &Trace, config: &SimConfig) -> Report {
    let second = Duration::from_secs(1);
    let end = trace.end() + config.tail;
    let mut concurrency =
        MetricWindows::new(config.stable_window, config.panic_window, config.algorithm);
    let mut rps_windows =
        MetricWindows::new(config.stable_window, config.panic_window, config.algorithm);
    // When each replica is (or will be) ready.
    let mut replicas: Vec<Duration> = vec![Duration::ZERO; config.initial_replicas as usize];
    let mut activator_in_path = true;
    let mut next_tick = Duration::ZERO;
    let (mut pod_seconds, mut cold, mut requests, mut max_replicas) = (0.0, 0.0, 0.0, 0u32);
    let mut waits: Vec<(f64, f64)> = Vec::new();
    let mut samples = Vec::new();
    let mut t = Duration::ZERO;
    while t <= end {
        let load = trace.at(t);
        let rps = load.rps.unwrap_or(load.concurrency);
        concurrency.record(t, load.concurrency);
        rps_windows.record(t, rps);
        let poke = load.concurrency > 0.0 && replicas.is_empty();
        if t >= next_tick || poke {
            let (stable_concurrency, panic_concurrency) = concurrency.stable_and_panic(t).unzip();
            let (stable_rps, panic_rps) = rps_windows.stable_and_panic(t).unzip();
            let ready = replicas.iter().filter(|r| **r <= t).count();
            let out = policy.decide(&PolicyInput {
                now: t,
                ready_pods: u32::try_from(ready).unwrap_or(u32::MAX),
                current_replicas: i32::try_from(replicas.len()).unwrap_or(i32::MAX),
                metrics: MetricSnapshot {
                    stable_concurrency,
                    panic_concurrency,
                    stable_rps,
                    panic_rps,
                },
                activator_ready: true,
                bounds: &config.bounds,
            });
            activator_in_path = out.activator_in_path;
            if let Some(desired) = out.desired {
                let desired = usize::try_from(desired.max(0)).unwrap_or(0);
                if desired > replicas.len() {
                    replicas.resize(desired, t + config.pod_startup);
                } else {
                    // Newest (least ready) first.
                    replicas.sort();
                    replicas.truncate(desired);
                }
            }
            if t >= next_tick {
                next_tick = t + config.tick;
            }
        }
        let ready = replicas.iter().filter(|r| **r <= t).count();
        let capacity = ready as f64 * config.pod_capacity;
        let waiting = (load.concurrency - capacity).max(0.0);
        if rps > 0.0 {
            requests += rps;
            let wait = if capacity <= 0.0 {
                cold += rps;
                replicas
                    .iter()
                    .min()
                    .map_or(config.tick + config.pod_startup, |r| {
                        r.saturating_sub(t) + second
                    })
                    .as_secs_f64()
            } else {
                waiting / capacity
            };
            waits.push((wait, rps));
        }
        pod_seconds += replicas.len() as f64;
        let count = u32::try_from(replicas.len()).unwrap_or(u32::MAX);
        max_replicas = max_replicas.max(count);
        samples.push(Sample {
            t,
            load: load.concurrency,
            replicas: count,
            ready: u32::try_from(ready).unwrap_or(u32::MAX),
            activator_in_path,
            waiting,
        });
        t += second;
    }
    waits.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total: f64 = waits.iter().map(|(_, w)| w).sum();
    Report {
        pod_seconds,
        cold_start_requests: cold,
        requests,
        wait_p50: percentile(&waits, total, 0.50),
        wait_p90: percentile(&waits, total, 0.90),
        wait_p99: percentile(&waits, total, 0.99),
        max_replicas,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaling::config::AutoscalerConfig;
    use crate::autoscaling::kpa::DeciderSpec;
    use crate::autoscaling::policy::{Kpa, PolicyOutput};

    fn config() -> SimConfig {
        SimConfig::new(ScalingBounds::from_config(&AutoscalerConfig::default()))
    }

    #[test]
    fn traces_read_csv_with_a_header_and_name_bad_lines() {
        let trace = Trace::from_csv("t_seconds,concurrency,rps\n0,0,0\n10,300,600\n\n70,0\n")
            .expect("valid");
        assert_eq!(trace.points().len(), 3);
        assert_eq!(trace.at(Duration::from_secs(15)).concurrency, 300.0);
        assert_eq!(trace.at(Duration::from_secs(15)).rps, Some(600.0));
        assert_eq!(trace.at(Duration::from_secs(80)).concurrency, 0.0);
        let err = Trace::from_csv("0,1\n5,lots\n").expect_err("bad number");
        assert_eq!(
            err.to_string(),
            "load trace line 2: concurrency \"lots\" is not a non-negative number"
        );
        let err = Trace::from_csv("0,1,2,3\n").expect_err("too many fields");
        assert!(err.to_string().contains("got 4 fields"), "{err}");
    }

    #[test]
    fn the_kpa_follows_a_step_and_returns_to_zero() {
        let trace = Trace::from_csv("0,0\n10,300\n130,0\n").expect("valid");
        let mut kpa = Kpa::new(DeciderSpec::default());
        let report = simulate(&mut kpa, &trace, &config());
        // ceil(300 / 70) = 5 replicas under steady load.
        let steady = report
            .samples
            .iter()
            .find(|s| s.t == Duration::from_secs(120))
            .expect("sample");
        assert_eq!(steady.replicas, 5);
        assert_eq!(steady.ready, 5);
        let last = report.samples.last().expect("samples");
        assert_eq!(last.replicas, 0, "scaled to zero after the load stopped");
        assert!(
            report.cold_start_requests > 0.0,
            "the first requests met no replica"
        );
        assert!(report.max_replicas >= 5);
        assert!(report.wait_p99 >= report.wait_p50);
        assert!(
            report
                .timeline_csv()
                .starts_with("t_seconds,load,replicas,ready,activator_in_path,waiting\n0,0,")
        );
    }

    /// Keeps a fixed number of replicas.
    struct Fixed(i32);

    impl ScalingPolicy for Fixed {
        fn decide(&mut self, _input: &PolicyInput<'_>) -> PolicyOutput {
            PolicyOutput::scale(self.0, false)
        }
    }

    #[test]
    fn pod_seconds_count_every_replica_second() {
        let trace = Trace::from_csv("0,10\n9,10\n").expect("valid");
        let mut cfg = config();
        cfg.tail = Duration::ZERO;
        cfg.pod_startup = Duration::ZERO;
        let report = simulate(&mut Fixed(2), &trace, &cfg);
        assert_eq!(report.samples.len(), 10);
        assert_eq!(report.pod_seconds, 20.0);
        assert_eq!(report.cold_start_requests, 0.0);
        assert_eq!(report.wait_p99, Duration::ZERO);
    }
}
