//! The PodAutoscaler layer above the decider (`specs/SERVING.md §3.5`,
//! upstream `reconciler/autoscaling/kpa/{kpa,scaler}.go`).
//!
//! [`PodAutoscaler`] is a pure state machine: at each reconcile it takes the
//! decider's [`Decision`], the ready pods and what the data plane reports,
//! and returns what to do: the replica count to apply (if any), whether the
//! activator must be in the request path ([`Mode::Proxy`]) or not
//! ([`Mode::Serve`]), how many activators the revision needs, its `Active`
//! condition, and when to look again.
//!
//! It owns the rules the decider does not know: min/max/initial scale,
//! `enable-scale-to-zero`, the activation timeout, marking a revision
//! inactive after a stable window of no traffic, the scale-to-zero grace
//! period and pod retention.

use std::time::Duration;

use knative_core::condition::ConditionStatus;

use super::config::AutoscalerConfig;
use super::kpa::Decision;

/// How long past the progress deadline an activation may take before the
/// revision is given up on and allowed to scale to zero.
pub const ACTIVATION_TIMEOUT_BUFFER: Duration = Duration::from_secs(30);
/// How soon to look again when the data plane is already in proxy mode.
const PROXY_RECHECK: Duration = Duration::from_secs(3);

/// Whether requests go straight to the revision's pods or through the activator.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Requests go to the pods.
    Serve,
    /// Requests go through the activator, which buffers them while pods start.
    #[default]
    Proxy,
}

/// The PodAutoscaler's `Active` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Active {
    /// `True` active, `Unknown` activating, `False` inactive.
    pub status: ConditionStatus,
    /// `Queued`, `NoTraffic`, `TimedOut`, or empty when active.
    pub reason: &'static str,
    /// A human-readable explanation.
    pub message: &'static str,
    /// When the status last changed.
    pub since: Duration,
}

/// A revision's scaling settings, resolved from config and annotations.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingBounds {
    /// `min-scale` (ignored while unreachable).
    pub min_scale: i32,
    /// `max-scale` (0 = unbounded).
    pub max_scale: i32,
    /// `initial-scale`.
    pub initial_scale: i32,
    /// Whether a route references the revision.
    pub reachable: bool,
    /// `enable-scale-to-zero`.
    pub enable_scale_to_zero: bool,
    /// `scale-to-zero-grace-period`.
    pub scale_to_zero_grace_period: Duration,
    /// `scale-to-zero-pod-retention-period` (ignored while unreachable).
    pub pod_retention: Duration,
    /// The stable window (how long a revision stays active without traffic).
    pub stable_window: Duration,
    /// The revision's progress deadline (600 s by default).
    pub progress_deadline: Duration,
    /// `target-burst-capacity` (−1: the activator is always in the path).
    pub target_burst_capacity: f64,
    /// Per-pod capacity (the decider's total value).
    pub total_value: f64,
    /// `activator-capacity`.
    pub activator_capacity: f64,
}

impl ScalingBounds {
    /// Bounds from `config-autoscaler` alone (no annotations).
    pub fn from_config(config: &AutoscalerConfig) -> Self {
        ScalingBounds {
            min_scale: config.min_scale,
            max_scale: config.max_scale,
            initial_scale: config.initial_scale,
            reachable: true,
            enable_scale_to_zero: config.enable_scale_to_zero,
            scale_to_zero_grace_period: config.scale_to_zero_grace_period,
            pod_retention: config.scale_to_zero_pod_retention_period,
            stable_window: config.stable_window,
            progress_deadline: Duration::from_secs(600),
            target_burst_capacity: config.target_burst_capacity,
            total_value: config.container_concurrency_target_default,
            activator_capacity: config.activator_capacity,
        }
    }

    /// Bounds of one revision: `config-autoscaler` overridden by its
    /// annotations, as upstream's `ScaleBounds`, `GetInitialScale`,
    /// `StableWindow`, `resolveTBC` and `ResolveMetricTarget` resolve them.
    pub fn resolve(
        config: &AutoscalerConfig,
        annotations: &std::collections::BTreeMap<String, String>,
        container_concurrency: i64,
        reachable: bool,
    ) -> Result<Self, super::config::AutoscalingError> {
        let a = super::config::Annotations::parse(annotations)?;
        let spec =
            super::kpa::DeciderSpec::from_config(config, annotations, container_concurrency)?;
        let mut b = ScalingBounds::from_config(config);
        b.min_scale = a.min_scale.unwrap_or(config.min_scale);
        b.max_scale = a.max_scale.unwrap_or(config.max_scale);
        b.initial_scale = spec.initial_scale;
        b.reachable = reachable;
        b.pod_retention = a
            .scale_to_zero_pod_retention_period
            .unwrap_or(config.scale_to_zero_pod_retention_period);
        b.stable_window = spec.stable_window;
        b.target_burst_capacity = spec.target_burst_capacity;
        b.total_value = spec.total_value;
        Ok(b)
    }

    /// `(min, max)`: min is 0 while unreachable.
    fn bounds(&self) -> (i32, i32) {
        (
            if self.reachable { self.min_scale } else { 0 },
            self.max_scale,
        )
    }
}

/// What the data plane and pods look like at a reconcile.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observed {
    /// Ready pods.
    pub ready_pods: u32,
    /// Replicas currently asked of the workload backend.
    pub current_replicas: i32,
    /// Whether the activator answers probes for the revision (it is in the
    /// path and can buffer requests). Only consulted before scaling to zero.
    pub activator_ready: bool,
}

/// What the PodAutoscaler decided at one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// The replica count to apply, if it should change.
    pub scale_to: Option<i32>,
    /// The desired scale after the PA's rules (−1: not known yet).
    pub want: i32,
    /// Whether the activator is in the request path.
    pub mode: Mode,
    /// How many activators should serve the revision.
    pub activators: i32,
    /// The `Active` condition.
    pub active: Active,
    /// When to reconcile again even if nothing changes.
    pub requeue_after: Option<Duration>,
}

/// The PodAutoscaler state machine for one revision.
#[derive(Clone, Debug)]
pub struct PodAutoscaler {
    bounds: ScalingBounds,
    initialized: bool,
    active: Active,
    mode: Mode,
    mode_since: Duration,
}

/// upstream's `applyBounds`: below min → min (min wins over max), else
/// above a non-zero max → max.
fn clamp(min: i32, max: i32, x: i32) -> i32 {
    if x < min {
        min
    } else if max != 0 && x > max {
        max
    } else {
        x
    }
}

impl PodAutoscaler {
    /// A new PodAutoscaler at `now`: activating, with the activator in the path.
    pub fn new(bounds: ScalingBounds, now: Duration) -> Self {
        PodAutoscaler {
            bounds,
            initialized: false,
            active: Active {
                status: ConditionStatus::Unknown,
                reason: "Queued",
                message: "Requests to the target are being buffered as resources are provisioned.",
                since: now,
            },
            mode: Mode::Proxy,
            mode_since: now,
        }
    }

    /// Replaces the bounds (annotations or config changed).
    pub fn update(&mut self, bounds: ScalingBounds) {
        self.bounds = bounds;
    }

    /// The bounds in use.
    pub fn bounds(&self) -> &ScalingBounds {
        &self.bounds
    }

    /// Whether the initial scale has been reached once.
    pub fn scale_target_initialized(&self) -> bool {
        self.initialized
    }

    /// The pods needed to count as active: `max(min, initial-scale)` until
    /// the initial scale was reached, then `max(min, 1)`.
    fn min_ready(&self) -> i32 {
        let (min, _) = self.bounds.bounds();
        if self.initialized {
            min.max(1)
        } else {
            min.max(self.bounds.initial_scale)
        }
    }

    /// One reconcile at `now`.
    pub fn reconcile(&mut self, now: Duration, decision: Decision, observed: Observed) -> Outcome {
        let mut requeue = None;
        let want = self.scale(now, decision.desired, observed, &mut requeue);

        // The activator is in the path at zero, when the burst capacity is
        // short, or when nothing is known yet about an inactive revision.
        let inactive = self.active.status == ConditionStatus::False;
        let mode = if want.want == 0
            || decision.excess_burst_capacity < 0
            || (want.want == -1 && inactive)
        {
            Mode::Proxy
        } else {
            Mode::Serve
        };
        if mode != self.mode {
            self.mode = mode;
            self.mode_since = now;
        }
        self.compute_active(now, want.want, observed.ready_pods);

        Outcome {
            scale_to: want.apply.filter(|n| *n != observed.current_replicas),
            want: want.want,
            mode,
            activators: self.activators(observed.ready_pods),
            active: self.active.clone(),
            requeue_after: requeue,
        }
    }

    /// Activators serving the revision: 2 with no burst capacity, else
    /// enough for the pods' capacity plus the burst target.
    fn activators(&self, ready_pods: u32) -> i32 {
        let tbc = self.bounds.target_burst_capacity;
        if tbc == 0.0 {
            return 2;
        }
        let capacity = f64::from(ready_pods) * self.bounds.total_value + tbc.max(0.0);
        ((capacity / self.bounds.activator_capacity).ceil() as i32).max(2)
    }

    /// upstream's `scaler.scale`: the desired scale after bounds and the
    /// scale-to-zero rules, and whether to apply it.
    fn scale(
        &mut self,
        now: Duration,
        desired: i32,
        observed: Observed,
        requeue: &mut Option<Duration>,
    ) -> Want {
        let activating = self.active.status == ConditionStatus::Unknown;
        if desired < 0 && !activating {
            // Metrics are not yet being collected.
            return Want {
                want: desired,
                apply: None,
            };
        }
        let (mut min, max) = self.bounds.bounds();
        let initial = self.bounds.initial_scale;
        if initial > 1 && !self.initialized {
            min = min.max(initial);
        }
        let desired = clamp(min, max, desired);
        let (want, apply) = self.handle_scale_to_zero(now, desired, observed, requeue);
        Want {
            want,
            apply: apply.then_some(want),
        }
    }

    fn handle_scale_to_zero(
        &self,
        now: Duration,
        desired: i32,
        observed: Observed,
        requeue: &mut Option<Duration>,
    ) -> (i32, bool) {
        if desired != 0 {
            return (desired, true);
        }
        let b = &self.bounds;
        if !b.enable_scale_to_zero {
            return (1, true);
        }
        let activation_timeout = b.progress_deadline + ACTIVATION_TIMEOUT_BUFFER;
        match self.active.status {
            ConditionStatus::Unknown => {
                let activating_for = now.saturating_sub(self.active.since);
                if activating_for > activation_timeout {
                    return (desired, true);
                }
                *requeue = Some(activation_timeout - activating_for);
                (-1, false)
            }
            ConditionStatus::True => {
                let active_for = now.saturating_sub(self.active.since);
                if active_for >= b.stable_window {
                    // Mark inactive first (the activator comes into the
                    // path), keeping the current replicas.
                    if self.mode == Mode::Proxy {
                        *requeue = Some(PROXY_RECHECK);
                    }
                    return (desired, false);
                }
                // Hold one pod for the rest of the idle period.
                *requeue = Some(b.stable_window - active_for);
                (1, true)
            }
            ConditionStatus::False => {
                let activator_in_path = b.target_burst_capacity == -1.0 || observed.activator_ready;
                if !activator_in_path {
                    *requeue = Some(Duration::from_secs(1));
                    return (desired, false);
                }
                // Pod retention is ignored while unreachable.
                let retention = if b.reachable {
                    b.pod_retention
                } else {
                    Duration::ZERO
                };
                let inactive_for = now.saturating_sub(self.active.since);
                if inactive_for >= b.scale_to_zero_grace_period.max(retention) {
                    return (desired, true);
                }
                if retention > Duration::ZERO && inactive_for < retention {
                    *requeue = Some(retention - inactive_for);
                    return (desired, false);
                }
                // Otherwise wait until the activator has been in the path
                // for the grace period.
                let proxied_for = if self.mode == Mode::Proxy {
                    now.saturating_sub(self.mode_since)
                } else {
                    Duration::ZERO
                };
                if proxied_for < b.scale_to_zero_grace_period {
                    *requeue = Some(b.scale_to_zero_grace_period - proxied_for);
                    return (desired, false);
                }
                (desired, true)
            }
        }
    }

    /// upstream's `computeActiveCondition`.
    fn compute_active(&mut self, now: Duration, want: i32, ready_pods: u32) {
        let ready = i32::try_from(ready_pods).unwrap_or(i32::MAX);
        let min_ready = self.min_ready();
        if ready >= min_ready {
            self.initialized = true;
        }
        let inactive = self.active.status == ConditionStatus::False;
        let activating = self.active.status == ConditionStatus::Unknown;
        if want == 0 || min_ready == 0 {
            if activating && min_ready > 0 {
                self.mark(
                    now,
                    ConditionStatus::False,
                    "TimedOut",
                    "The target could not be activated.",
                );
            } else {
                self.mark(
                    now,
                    ConditionStatus::False,
                    "NoTraffic",
                    "The target is not receiving traffic.",
                );
            }
        } else if ready < min_ready {
            if want > 0 || !inactive {
                self.mark(
                    now,
                    ConditionStatus::Unknown,
                    "Queued",
                    "Requests to the target are being buffered as resources are provisioned.",
                );
            } else {
                self.mark(
                    now,
                    ConditionStatus::False,
                    "NoTraffic",
                    "The target is not receiving traffic.",
                );
            }
        } else if want > 0 || !inactive {
            self.mark(now, ConditionStatus::True, "", "");
        }
    }

    /// Sets the condition; its time moves only when status or reason change
    /// (as a condition's `lastTransitionTime` does).
    fn mark(
        &mut self,
        now: Duration,
        status: ConditionStatus,
        reason: &'static str,
        message: &'static str,
    ) {
        if self.active.status != status || self.active.reason != reason {
            self.active = Active {
                status,
                reason,
                message,
                since: now,
            };
        }
    }
}

/// The desired scale after the PA's rules, and the count to apply (if any).
struct Want {
    want: i32,
    apply: Option<i32>,
}

#[cfg(test)]
mod tests;
