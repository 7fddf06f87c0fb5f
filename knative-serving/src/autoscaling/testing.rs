//! A property-testing kit for scaling policies (feature `testing`):
//! proptest strategies for load traces and bounds, and invariants any
//! [`ScalingPolicy`] can be checked against by replaying traces through the
//! [simulator](super::sim).
//!
//! Property-testing your own policy takes a few lines:
//!
//! ```
//! # #[cfg(feature = "testing")] {
//! use knative_serving::autoscaling::policy::{PolicyInput, PolicyOutput, ScalingPolicy};
//! use knative_serving::autoscaling::sim::{simulate, SimConfig};
//! use knative_serving::autoscaling::testing::{bounds, check, load_trace};
//! use proptest::prelude::*;
//!
//! /// One pod per 50 in-flight requests, within the bounds, zero when idle.
//! struct FiftyPerPod;
//!
//! impl ScalingPolicy for FiftyPerPod {
//!     fn decide(&mut self, input: &PolicyInput<'_>) -> PolicyOutput {
//!         let load = input.metrics.stable_concurrency.unwrap_or(0.0);
//!         let want = (load / 50.0).ceil() as i32;
//!         let b = input.bounds;
//!         let max = if b.max_scale > 0 { b.max_scale } else { i32::MAX };
//!         PolicyOutput::scale(want.clamp(b.min_scale, max), want == 0)
//!     }
//! }
//!
//! proptest!(ProptestConfig::with_cases(16), |(trace in load_trace(), bounds in bounds())| {
//!     let config = SimConfig::new(bounds);
//!     let report = simulate(&mut FiftyPerPod, &trace, &config);
//!     prop_assert!(check::within_bounds(&report, &config).is_ok());
//! });
//! # }
//! ```

use std::time::Duration;

use proptest::prelude::*;

use super::config::AutoscalerConfig;
use super::pa::ScalingBounds;
use super::sim::{LoadPoint, Trace};

/// How long generated traces last.
pub const TRACE_LENGTH: Duration = Duration::from_secs(600);

fn point(at: u64, concurrency: f64) -> LoadPoint {
    LoadPoint {
        at: Duration::from_secs(at),
        concurrency,
        rps: None,
    }
}

/// Steps: the load jumps between levels and holds each for a while.
pub fn steps() -> impl Strategy<Value = Trace> {
    prop::collection::vec((0.0f64..2000.0, 20u64..180), 1..6).prop_map(|levels| {
        let mut at = 0;
        let mut points = Vec::new();
        for (level, hold) in levels {
            points.push(point(at, level.round()));
            at += hold;
        }
        points.push(point(at, 0.0));
        Trace::new(points)
    })
}

/// Spikes: short bursts far above a low base load.
pub fn spikes() -> impl Strategy<Value = Trace> {
    (
        0.0f64..50.0,
        prop::collection::vec((30u64..500, 200.0f64..5000.0, 2u64..20), 1..4),
    )
        .prop_map(|(base, spikes)| {
            let mut points = vec![point(0, base.round())];
            let mut sorted = spikes;
            sorted.sort_by_key(|s| s.0);
            let mut last_end = 0;
            for (at, height, length) in sorted {
                let at = at.max(last_end + 1);
                points.push(point(at, height.round()));
                points.push(point(at + length, base.round()));
                last_end = at + length;
            }
            points.push(point(last_end + 60, 0.0));
            Trace::new(points)
        })
}

/// Ramps: the load climbs linearly to a peak, then falls back.
pub fn ramps() -> impl Strategy<Value = Trace> {
    (50.0f64..3000.0, 30u64..300, 30u64..300).prop_map(|(peak, up, down)| {
        let mut points = Vec::new();
        for s in (0..=up).step_by(5) {
            points.push(point(s, (peak * s as f64 / up as f64).round()));
        }
        for s in (0..=down).step_by(5) {
            points.push(point(
                up + s,
                (peak * (1.0 - s as f64 / down as f64)).round(),
            ));
        }
        Trace::new(points)
    })
}

/// Diurnal: a sine-shaped day compressed into the trace.
pub fn diurnal() -> impl Strategy<Value = Trace> {
    (10.0f64..2000.0, 0.0f64..1.0).prop_map(|(peak, phase)| {
        let length = TRACE_LENGTH.as_secs();
        let points = (0..=length)
            .step_by(10)
            .map(|s| {
                let x = (s as f64 / length as f64 + phase) * std::f64::consts::TAU;
                point(s, (peak * (0.5 + 0.5 * x.sin())).round())
            })
            .collect();
        Trace::new(points)
    })
}

/// Bursty on/off: load comes and goes, with idle gaps long enough to scale to zero or not.
pub fn bursty() -> impl Strategy<Value = Trace> {
    prop::collection::vec((1.0f64..800.0, 5u64..60, 5u64..200), 1..5).prop_map(|bursts| {
        let mut at = 0;
        let mut points = Vec::new();
        for (level, on, off) in bursts {
            points.push(point(at, level.round()));
            points.push(point(at + on, 0.0));
            at += on + off;
        }
        Trace::new(points)
    })
}

/// Any of the trace shapes.
pub fn load_trace() -> impl Strategy<Value = Trace> {
    prop_oneof![steps(), spikes(), ramps(), diurnal(), bursty()]
}

/// Scaling bounds a user could configure: min/max/initial scale, grace
/// period, scale to zero on or off.
pub fn bounds() -> impl Strategy<Value = ScalingBounds> {
    (
        0i32..3,
        prop::option::of(3i32..30),
        1i32..3,
        6u64..60,
        any::<bool>(),
    )
        .prop_map(|(min, max, initial, grace, to_zero)| {
            let mut b = ScalingBounds::from_config(&AutoscalerConfig::default());
            b.min_scale = min;
            b.max_scale = max.unwrap_or(0);
            b.initial_scale = initial;
            b.scale_to_zero_grace_period = Duration::from_secs(grace);
            b.enable_scale_to_zero = to_zero;
            b
        })
}

/// Invariant checks over a simulation [`Report`](super::sim::Report); each
/// returns `Err` with the first violation, saying when and what.
pub mod check {
    use std::time::Duration;

    use super::super::sim::{Report, SimConfig, Trace};

    /// The time of the first tick that can have applied a decision.
    fn first_decision(config: &SimConfig) -> Duration {
        config.tick
    }

    /// Replicas stay within `[min, max]` (max 0 = unbounded) once the
    /// policy has decided, except that min does not hold while the revision
    /// is unreachable.
    pub fn within_bounds(report: &Report, config: &SimConfig) -> Result<(), String> {
        let b = &config.bounds;
        let min = if b.reachable {
            u32::try_from(b.min_scale).unwrap_or(0)
        } else {
            0
        };
        let max = u32::try_from(b.max_scale).unwrap_or(0);
        for s in report
            .samples
            .iter()
            .filter(|s| s.t >= first_decision(config))
        {
            if max > 0 && s.replicas > max {
                return Err(format!(
                    "t={}s: {} replicas, above max-scale {max}",
                    s.t.as_secs(),
                    s.replicas
                ));
            }
            if s.replicas < min {
                return Err(format!(
                    "t={}s: {} replicas, below min-scale {min}",
                    s.t.as_secs(),
                    s.replicas
                ));
            }
        }
        Ok(())
    }

    /// Replicas never grow faster than `max_scale_up_rate` times the ready
    /// replicas (at least one) allows, per tick; `floor` raises the allowed
    /// count (min scale, initial scale, activation scale).
    /// The simulation starts from no replica, so the first sample is
    /// checked against zero.
    pub fn scale_up_rate(
        report: &Report,
        max_scale_up_rate: f64,
        floor: u32,
    ) -> Result<(), String> {
        let start = report
            .samples
            .first()
            .map(|first| super::super::sim::Sample {
                replicas: 0,
                ready: 0,
                ..*first
            });
        let samples: Vec<_> = start.iter().chain(report.samples.iter()).copied().collect();
        for pair in samples.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            let allowed =
                ((max_scale_up_rate * f64::from(before.ready.max(1))).ceil() as u32).max(floor);
            if after.replicas > before.replicas && after.replicas > allowed {
                return Err(format!(
                    "t={}s: {} → {} replicas with {} ready; at most {allowed} allowed",
                    after.t.as_secs(),
                    before.replicas,
                    after.replicas,
                    before.ready
                ));
            }
        }
        Ok(())
    }

    /// Replicas reach zero only after the load has been zero for at least
    /// the scale-to-zero grace period (and never when scale to zero is off).
    pub fn zero_only_after_grace(
        report: &Report,
        trace: &Trace,
        config: &SimConfig,
    ) -> Result<(), String> {
        let grace = config.bounds.scale_to_zero_grace_period;
        let mut last_load: Option<Duration> = None;
        for pair in report.samples.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            if trace.at(before.t).concurrency > 0.0 {
                last_load = Some(before.t);
            }
            if before.replicas > 0 && after.replicas == 0 {
                if !config.bounds.enable_scale_to_zero {
                    return Err(format!(
                        "t={}s: scaled to zero with scale to zero disabled",
                        after.t.as_secs()
                    ));
                }
                if let Some(last) = last_load
                    && after.t.saturating_sub(last) < grace
                {
                    return Err(format!(
                        "t={}s: scaled to zero {}s after the last load, grace period is {}s",
                        after.t.as_secs(),
                        after.t.saturating_sub(last).as_secs(),
                        grace.as_secs()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Under a load held steady for at least `settle` plus the stable
    /// window, replicas reach `ceil(load / target)` (within the bounds) by
    /// the end of the plateau and hold it.
    pub fn follows_sustained_load(
        report: &Report,
        trace: &Trace,
        config: &SimConfig,
        target: f64,
        settle: Duration,
    ) -> Result<(), String> {
        let points = trace.points();
        let b = &config.bounds;
        for (i, p) in points.iter().enumerate() {
            let Some(end) = points.get(i + 1).map(|n| n.at) else {
                continue;
            };
            if p.concurrency <= 0.0 || end.saturating_sub(p.at) < config.stable_window + settle {
                continue;
            }
            let mut want = (p.concurrency / target).ceil() as u32;
            want = want.max(u32::try_from(b.min_scale).unwrap_or(0));
            if b.max_scale > 0 {
                want = want.min(u32::try_from(b.max_scale).unwrap_or(u32::MAX));
            }
            let at = end.saturating_sub(Duration::from_secs(1));
            if let Some(s) = report.samples.iter().find(|s| s.t == at)
                && s.replicas != want
            {
                return Err(format!(
                    "t={}s: {} replicas after a steady load of {} since t={}s; want ceil({}/{target}) = {want}",
                    at.as_secs(),
                    s.replicas,
                    p.concurrency,
                    p.at.as_secs(),
                    p.concurrency
                ));
            }
        }
        Ok(())
    }
}

/// Checks the KPA decider's promise of never scaling down while panicking,
/// by replaying `trace` through its windows and decider.
pub fn kpa_never_scales_down_while_panicking(
    trace: &Trace,
    spec: &super::kpa::DeciderSpec,
    ready: impl Fn(Duration) -> u32,
) -> Result<(), String> {
    use super::kpa::{Decider, Observation};
    use super::metrics::{Algorithm, MetricWindows};
    let mut windows = MetricWindows::new(spec.stable_window, spec.panic_window, Algorithm::Linear);
    let mut decider = Decider::new(spec.clone());
    let mut previous: Option<super::kpa::Decision> = None;
    let end = trace.end() + spec.stable_window * 2;
    let mut t = Duration::ZERO;
    while t <= end {
        windows.record(t, trace.at(t).concurrency);
        if t.as_secs().is_multiple_of(2)
            && let Some((stable, panic)) = windows.stable_and_panic(t)
        {
            let d = decider.decide(
                t,
                Observation {
                    ready_pods: ready(t),
                    stable,
                    panic,
                },
            );
            if let Some(p) = previous
                && p.panicking
                && d.panicking
                && d.desired < p.desired
            {
                return Err(format!(
                    "t={}s: scaled down {} → {} while panicking",
                    t.as_secs(),
                    p.desired,
                    d.desired
                ));
            }
            previous = Some(d);
        }
        t += Duration::from_secs(1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaling::kpa::DeciderSpec;
    use crate::autoscaling::policy::Kpa;
    use crate::autoscaling::sim::{SimConfig, simulate};

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn the_kpa_keeps_every_invariant(trace in load_trace(), bounds in bounds()) {
            let config = SimConfig::new(bounds.clone());
            let spec = DeciderSpec::default();
            let report = simulate(&mut Kpa::new(spec.clone()), &trace, &config);
            prop_assert_eq!(check::within_bounds(&report, &config), Ok(()));
            let floor = u32::try_from(bounds.min_scale.max(bounds.initial_scale)).unwrap_or(0);
            prop_assert_eq!(check::scale_up_rate(&report, spec.max_scale_up_rate, floor), Ok(()));
            prop_assert_eq!(check::zero_only_after_grace(&report, &trace, &config), Ok(()));
            prop_assert_eq!(
                check::follows_sustained_load(&report, &trace, &config, spec.target_value, Duration::from_secs(30)),
                Ok(())
            );
            prop_assert_eq!(kpa_never_scales_down_while_panicking(&trace, &spec, |_| 1), Ok(()));
        }
    }

    #[test]
    fn the_checks_catch_a_policy_that_breaks_them() {
        use crate::autoscaling::policy::{PolicyInput, PolicyOutput, ScalingPolicy};
        /// Jumps to 50 replicas, and drops to zero as soon as the 6 s panic
        /// window is empty.
        struct Reckless;
        impl ScalingPolicy for Reckless {
            fn decide(&mut self, input: &PolicyInput<'_>) -> PolicyOutput {
                let load = input.metrics.panic_concurrency.unwrap_or(0.0);
                PolicyOutput::scale(if load > 0.0 { 50 } else { 0 }, false)
            }
        }
        let trace = Trace::new(vec![point(0, 100.0), point(20, 0.0)]);
        let mut b = ScalingBounds::from_config(&AutoscalerConfig::default());
        b.max_scale = 10;
        let config = SimConfig::new(b);
        let report = simulate(&mut Reckless, &trace, &config);
        assert!(check::within_bounds(&report, &config).is_err());
        assert!(check::scale_up_rate(&report, 2.0, 1).is_err());
        assert!(check::zero_only_after_grace(&report, &trace, &config).is_err());
    }
}
