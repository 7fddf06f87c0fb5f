//! [`ScalingPolicy`]: how many replicas a revision should run, and whether
//! the activator must stay in its request path. The control plane drives any
//! policy the same way; [`Kpa`] is Knative's (the decider of §3.4 under the
//! PodAutoscaler rules of §3.5).
//!
//! A policy is a pure state machine fed once per tick (every 2 s, and at
//! once when a request reaches a revision at zero):
//!
//! ```
//! use std::time::Duration;
//! use knative_serving::autoscaling::config::AutoscalerConfig;
//! use knative_serving::autoscaling::pa::ScalingBounds;
//! use knative_serving::autoscaling::policy::{MetricSnapshot, PolicyInput, ScalingPolicy};
//!
//! /// Scales to one pod per 10 in-flight requests, never to zero.
//! struct TenPerPod;
//!
//! impl ScalingPolicy for TenPerPod {
//!     fn decide(&mut self, input: &PolicyInput<'_>) -> knative_serving::autoscaling::policy::PolicyOutput {
//!         let load = input.metrics.stable_concurrency.unwrap_or(0.0);
//!         let desired = ((load / 10.0).ceil() as i32).max(1);
//!         knative_serving::autoscaling::policy::PolicyOutput::scale(desired, false)
//!     }
//! }
//!
//! let bounds = ScalingBounds::from_config(&AutoscalerConfig::default());
//! let mut policy = TenPerPod;
//! let out = policy.decide(&PolicyInput {
//!     now: Duration::from_secs(2),
//!     ready_pods: 1,
//!     current_replicas: 1,
//!     metrics: MetricSnapshot { stable_concurrency: Some(35.0), ..MetricSnapshot::default() },
//!     activator_ready: true,
//!     bounds: &bounds,
//! });
//! assert_eq!(out.desired, Some(4));
//! ```

use std::time::Duration;

use super::config::Metric;
use super::kpa::{Decider, DeciderSpec, Decision, Observation};
use super::pa::{Active, Mode, Observed, Outcome, PodAutoscaler, ScalingBounds};

/// Window values of the metrics, revision-wide totals; `None` = no data.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MetricSnapshot {
    /// In-flight requests over the stable window.
    pub stable_concurrency: Option<f64>,
    /// In-flight requests over the panic window.
    pub panic_concurrency: Option<f64>,
    /// Requests per second over the stable window.
    pub stable_rps: Option<f64>,
    /// Requests per second over the panic window.
    pub panic_rps: Option<f64>,
}

/// What a policy sees at one tick.
#[derive(Clone, Copy, Debug)]
pub struct PolicyInput<'a> {
    /// Time since an arbitrary epoch (ticks are 2 s apart).
    pub now: Duration,
    /// Ready replicas.
    pub ready_pods: u32,
    /// Replicas currently asked of the workload backend.
    pub current_replicas: i32,
    /// The revision's metrics.
    pub metrics: MetricSnapshot,
    /// Whether the activator answers for the revision (needed before
    /// scaling to zero: something must buffer the next request).
    pub activator_ready: bool,
    /// The revision's scaling bounds and settings.
    pub bounds: &'a ScalingBounds,
}

/// What a policy decided at one tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyOutput {
    /// Replicas to run; `None` leaves the current count.
    pub desired: Option<i32>,
    /// Whether requests must go through the activator.
    pub activator_in_path: bool,
    /// When the policy wants to be asked again even without a tick.
    pub requeue_after: Option<Duration>,
}

impl PolicyOutput {
    /// Runs `desired` replicas.
    pub fn scale(desired: i32, activator_in_path: bool) -> Self {
        PolicyOutput {
            desired: Some(desired),
            activator_in_path,
            requeue_after: None,
        }
    }
}

/// A revision's scaling policy. Implementations must respect
/// `input.bounds` (see `autoscaling::testing` for invariants to check).
pub trait ScalingPolicy: Send {
    /// Decides at one tick.
    fn decide(&mut self, input: &PolicyInput<'_>) -> PolicyOutput;

    /// The revision's `Active` condition after the last decision, for
    /// policies that track one; `None` lets the control plane derive it
    /// (active with ready replicas, inactive at zero, activating otherwise).
    fn active(&self) -> Option<Active> {
        None
    }
}

/// Knative's KPA: the decider and the PodAutoscaler rules.
#[derive(Clone, Debug)]
pub struct Kpa {
    decider: Decider,
    pa: Option<PodAutoscaler>,
    last: Option<Outcome>,
}

impl Kpa {
    /// A KPA for a revision with the given decider spec.
    pub fn new(spec: DeciderSpec) -> Self {
        Kpa {
            decider: Decider::new(spec),
            pa: None,
            last: None,
        }
    }

    /// A KPA created at `now` for a revision that already has `ready_pods`
    /// ready (e.g. after a restart): the decider starts panicking with them.
    pub fn with_ready_pods(spec: DeciderSpec, ready_pods: u32, now: Duration) -> Self {
        Kpa {
            decider: Decider::with_ready_pods(spec, ready_pods, now),
            pa: None,
            last: None,
        }
    }

    /// The decider (its spec and last decision).
    pub fn decider(&self) -> &Decider {
        &self.decider
    }

    /// The last PodAutoscaler outcome, with its `Active` condition.
    pub fn last_outcome(&self) -> Option<&Outcome> {
        self.last.as_ref()
    }

    /// The `Active` condition after the last tick.
    pub fn active(&self) -> Option<&Active> {
        self.last.as_ref().map(|o| &o.active)
    }

    fn observation(&self, input: &PolicyInput<'_>) -> Observation {
        let m = &input.metrics;
        let (stable, panic) = match self.decider.spec().metric {
            Metric::Concurrency => (m.stable_concurrency, m.panic_concurrency),
            Metric::Rps => (m.stable_rps, m.panic_rps),
        };
        Observation {
            ready_pods: input.ready_pods,
            stable: stable.unwrap_or(f64::NAN),
            panic: panic.unwrap_or(f64::NAN),
        }
    }
}

impl ScalingPolicy for Kpa {
    fn decide(&mut self, input: &PolicyInput<'_>) -> PolicyOutput {
        // One source of truth: reachability comes with the bounds.
        if self.decider.spec().reachable != input.bounds.reachable {
            let mut spec = self.decider.spec().clone();
            spec.reachable = input.bounds.reachable;
            self.decider.update(spec);
        }
        let observation = self.observation(input);
        let decision: Decision = self.decider.decide(input.now, observation);
        let pa = self
            .pa
            .get_or_insert_with(|| PodAutoscaler::new(input.bounds.clone(), input.now));
        if pa.bounds() != input.bounds {
            pa.update(input.bounds.clone());
        }
        let outcome = pa.reconcile(
            input.now,
            decision,
            Observed {
                ready_pods: input.ready_pods,
                current_replicas: input.current_replicas,
                activator_ready: input.activator_ready,
            },
        );
        let output = PolicyOutput {
            desired: outcome.scale_to,
            activator_in_path: outcome.mode == Mode::Proxy,
            requeue_after: outcome.requeue_after,
        };
        self.last = Some(outcome);
        output
    }

    fn active(&self) -> Option<Active> {
        self.last.as_ref().map(|o| o.active.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscaling::config::AutoscalerConfig;

    fn input(
        now: u64,
        ready: u32,
        current: i32,
        load: Option<f64>,
        bounds: &ScalingBounds,
    ) -> PolicyInput<'_> {
        PolicyInput {
            now: Duration::from_secs(now),
            ready_pods: ready,
            current_replicas: current,
            metrics: MetricSnapshot {
                stable_concurrency: load,
                panic_concurrency: load,
                ..MetricSnapshot::default()
            },
            activator_ready: true,
            bounds,
        }
    }

    #[test]
    fn the_kpa_scales_up_with_load_and_back_to_zero_when_idle() {
        let bounds = ScalingBounds::from_config(&AutoscalerConfig::default());
        let mut kpa = Kpa::new(DeciderSpec::default());
        // A new revision with its first pod ready and no metrics yet.
        let out = kpa.decide(&input(0, 1, 1, None, &bounds));
        assert_eq!(out.desired, None);
        assert!(out.activator_in_path);
        // 350 in flight: ceil(350/70) = 5 pods.
        let out = kpa.decide(&input(2, 1, 1, Some(350.0), &bounds));
        assert_eq!(out.desired, Some(5));
        let mut t = 2;
        let mut replicas = 5;
        let mut zero_at = None;
        while t < 400 {
            t += 2;
            let out = kpa.decide(&input(
                t,
                u32::try_from(replicas).unwrap_or(0),
                replicas,
                Some(0.0),
                &bounds,
            ));
            if let Some(n) = out.desired {
                replicas = n;
            }
            if replicas == 0 {
                zero_at = Some(t);
                break;
            }
        }
        let zero_at = zero_at.expect("scaled to zero");
        assert!(
            zero_at >= 60 + 30,
            "not before a stable window and the grace period: {zero_at}"
        );
        assert!(
            kpa.decide(&input(zero_at + 2, 0, 0, Some(0.0), &bounds))
                .activator_in_path
        );
    }

    #[test]
    fn reachability_reaches_the_decider_through_the_bounds() {
        let mut bounds = ScalingBounds::from_config(&AutoscalerConfig::default());
        bounds.reachable = false;
        let mut kpa = Kpa::new(DeciderSpec::default());
        kpa.decide(&input(2, 1, 1, Some(0.0), &bounds));
        assert!(!kpa.decider().spec().reachable);
    }

    #[test]
    fn the_kpa_scales_on_rps_when_the_spec_says_so() {
        let bounds = ScalingBounds::from_config(&AutoscalerConfig::default());
        let spec = DeciderSpec {
            metric: Metric::Rps,
            target_value: 140.0,
            total_value: 200.0,
            ..DeciderSpec::default()
        };
        let mut kpa = Kpa::new(spec);
        let mut i = input(2, 1, 1, Some(1.0), &bounds);
        i.metrics.stable_rps = Some(700.0);
        i.metrics.panic_rps = Some(700.0);
        assert_eq!(kpa.decide(&i).desired, Some(5));
    }
}
