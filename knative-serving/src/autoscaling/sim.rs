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
//! replay. A [`Report`] gives its timeline as CSV
//! ([`Report::timeline_csv`]) and as an SVG chart
//! ([`Report::timeline_svg`]); `examples/compare_scaling_policies.rs` in the
//! repository compares the KPA with a user policy this way.

use std::fmt::Write as _;
use std::time::Duration;

use plotters::element::DashedPathElement;
use plotters::prelude::*;

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

/// Why a simulation's output could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("timeline chart: {stage} failed: {reason}")]
pub struct SimError {
    /// What was being done, e.g. "drawing the axes".
    pub stage: &'static str,
    /// The underlying error.
    pub reason: String,
}

impl SimError {
    /// Maps a drawing error to a `SimError` for `stage`.
    fn chart<E: std::fmt::Display>(stage: &'static str) -> impl FnOnce(E) -> SimError {
        move |e| SimError {
            stage,
            reason: e.to_string(),
        }
    }
}

/// The legend's name of the load series in [`Report::timeline_svg`].
pub const SERIES_LOAD: &str = "load (in-flight requests, right axis)";
/// The legend's name of the replicas-asked series in [`Report::timeline_svg`].
pub const SERIES_REPLICAS: &str = "replicas asked";
/// The legend's name of the ready-replicas series in [`Report::timeline_svg`].
pub const SERIES_READY: &str = "ready replicas";

/// Turns per-second samples of a count into a step line: the count holds
/// for the whole second it was sampled in.
fn steps(samples: &[Sample], value: impl Fn(&Sample) -> u32) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(samples.len() * 2);
    let mut last: Option<f64> = None;
    for s in samples {
        let (t, v) = (s.t.as_secs_f64(), f64::from(value(s)));
        if let Some(prev) = last.filter(|prev| *prev != v) {
            points.push((t, prev));
        }
        points.push((t, v));
        last = Some(v);
    }
    if let (Some(s), Some(v)) = (samples.last(), last) {
        points.push((s.t.as_secs_f64() + 1.0, v));
    }
    points
}

impl Report {
    /// The timeline as an SVG chart (960 × 540) titled `title`: time in
    /// seconds across; replicas asked and ready replicas on the left axis;
    /// the offered load (in-flight requests) on its own axis on the right,
    /// scaled to the chart's height. Replicas asked are a solid line, ready
    /// replicas a dashed one over it, so both show where they agree. The
    /// SVG uses `<text>` for its labels (the title is escaped), so no font
    /// files are needed to draw it; the viewer picks a sans-serif font.
    ///
    /// Errors name the drawing stage that failed.
    pub fn timeline_svg(&self, title: &str) -> Result<String, SimError> {
        let end = self
            .samples
            .last()
            .map_or(1.0, |s| s.t.as_secs_f64() + 1.0)
            .max(1.0);
        let most_pods = self
            .samples
            .iter()
            .map(|s| s.replicas.max(s.ready))
            .max()
            .unwrap_or(0);
        // Head room above the highest line for the legend, and at least a
        // few pods tall.
        let pods_top = (f64::from(most_pods) * 1.3).ceil().max(4.0);
        let most_load = self.samples.iter().map(|s| s.load).fold(0.0, f64::max);
        let load_top = (most_load * 1.3).max(1.0);

        let load_style = RGBColor(230, 120, 20).stroke_width(2);
        let replicas_style = RGBColor(40, 90, 200).stroke_width(3);
        // Dashed, on top of the replicas asked: where the two lines agree,
        // both show.
        let ready_style = RGBColor(30, 150, 60).stroke_width(2);

        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, (960, 540)).into_drawing_area();
            root.fill(&WHITE)
                .map_err(SimError::chart("filling the background"))?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, ("sans-serif", 22))
                .margin(14)
                .x_label_area_size(44)
                .y_label_area_size(56)
                .right_y_label_area_size(70)
                .build_cartesian_2d(0.0..end, 0.0..pods_top)
                .map_err(SimError::chart("laying out the chart"))?
                .set_secondary_coord(0.0..end, 0.0..load_top);
            chart
                .configure_mesh()
                .x_desc("time (s)")
                .y_desc("replicas")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .max_light_lines(0)
                .bold_line_style(RGBColor(225, 225, 225))
                .draw()
                .map_err(SimError::chart("drawing the axes"))?;
            chart
                .configure_secondary_axes()
                .y_desc("in-flight requests")
                .y_label_formatter(&|y| format!("{y:.0}"))
                .draw()
                .map_err(SimError::chart("drawing the load axis"))?;
            let load = self.samples.iter().map(|s| (s.t.as_secs_f64(), s.load));
            chart
                .draw_secondary_series(LineSeries::new(load, load_style))
                .map_err(SimError::chart("drawing the load"))?
                .label(SERIES_LOAD)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], load_style));
            chart
                .draw_series(LineSeries::new(
                    steps(&self.samples, |s| s.replicas),
                    replicas_style,
                ))
                .map_err(SimError::chart("drawing the replicas asked"))?
                .label(SERIES_REPLICAS)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], replicas_style));
            chart
                .draw_series(DashedLineSeries::new(
                    steps(&self.samples, |s| s.ready),
                    6,
                    4,
                    ready_style,
                ))
                .map_err(SimError::chart("drawing the ready replicas"))?
                .label(SERIES_READY)
                .legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 20, y)], 6, 4, ready_style)
                });
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.9))
                .border_style(BLACK)
                .draw()
                .map_err(SimError::chart("drawing the legend"))?;
            root.present().map_err(SimError::chart("writing the SVG"))?;
        }
        Ok(svg)
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

    #[test]
    fn the_timeline_renders_as_an_svg_chart() {
        let trace = Trace::from_csv("0,0\n5,250\n40,0\n").expect("valid");
        let mut cfg = config();
        cfg.tail = Duration::from_secs(20);
        let report = simulate(&mut Kpa::new(DeciderSpec::default()), &trace, &cfg);
        let svg = report
            .timeline_svg("KPA on a step")
            .expect("an SVG in a string needs no fonts");
        let head: String = svg.chars().take(80).collect();
        assert!(svg.starts_with("<svg"), "{head}");
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in ["KPA on a step", SERIES_LOAD, SERIES_REPLICAS, SERIES_READY] {
            assert!(svg.contains(text), "the SVG names {text:?}");
        }
        assert!(svg.contains("<polyline"), "the series are drawn as lines");
        // Titles are escaped, so the SVG stays well-formed XML.
        let svg = report.timeline_svg("<KPA> & co").expect("escaped");
        assert!(svg.contains("&lt;KPA&gt; &amp; co"));
        // An empty report still draws (empty) axes.
        let empty = Report {
            samples: Vec::new(),
            ..report
        };
        assert!(
            empty
                .timeline_svg("nothing")
                .expect("empty")
                .contains("</svg>")
        );
    }

    #[test]
    fn counts_are_drawn_as_steps() {
        let sample = |t: u64, replicas: u32| Sample {
            t: Duration::from_secs(t),
            load: 0.0,
            replicas,
            ready: 0,
            activator_in_path: false,
            waiting: 0.0,
        };
        let points = steps(&[sample(0, 1), sample(1, 1), sample(2, 3)], |s| s.replicas);
        assert_eq!(
            points,
            vec![(0.0, 1.0), (1.0, 1.0), (2.0, 1.0), (2.0, 3.0), (3.0, 3.0)]
        );
        assert!(steps(&[], |s| s.replicas).is_empty());
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
