//! [`Autoscaler`]: the control plane's loop that drives a
//! [`ScalingPolicy`] per revision (`specs/SERVING.md §3.1`, `§3.4`, `§3.5`).
//!
//! For each revision it is told about ([`Autoscaler::upsert`]) it keeps the
//! stable and panic windows of concurrency and of requests per second, fed
//! once a second by the data plane ([`Autoscaler::record`]: the
//! revision-wide totals, i.e. what the replicas' queue-proxies counted
//! minus what the activator proxied, plus the activator's own figures).
//! Every 2 seconds, and at once when the data plane pokes it about a
//! request for a revision at zero ([`Autoscaler::poke`]), it asks the
//! policy for a decision, applies the scale through
//! [`WorkloadBackend::scale`], publishes whether the activator must be in
//! the request path ([`Autoscaler::activator_flag`]) and the revision's
//! scaling status ([`Autoscaler::status`], which the revision reconciler
//! turns into the `Active` condition).
//!
//! The policy is Knative's KPA ([`Kpa`]) unless a
//! [`PolicyFactory`] says otherwise.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use knative_core::condition::ConditionStatus;
use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info_span, warn};

use super::config::{AutoscalerConfig, AutoscalingError};
use super::kpa::DeciderSpec;
use super::metrics::{Algorithm, MetricWindows};
use super::pa::{Active, ScalingBounds};
use super::policy::{Kpa, MetricSnapshot, PolicyInput, ScalingPolicy};
use crate::api::{Revision, RoutingState, keys};
use crate::backend::{WorkloadBackend, WorkloadKey};

/// How often each revision's policy is asked (upstream's tick).
pub const TICK: Duration = Duration::from_secs(2);

/// The annotation choosing the window averaging algorithm.
pub const METRIC_AGGREGATION_ALGORITHM: &str =
    "autoscaling.knative.dev/metric-aggregation-algorithm";

/// What the autoscaler needs to know about a revision.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalingTarget {
    /// Bounds and scale-to-zero settings.
    pub bounds: ScalingBounds,
    /// The KPA decider's settings (targets, windows, rates).
    pub decider: DeciderSpec,
    /// How the windows average.
    pub algorithm: Algorithm,
}

impl ScalingTarget {
    /// A revision's target from `config-autoscaler` and its annotations
    /// (reachable unless its routing state is `reserve`).
    pub fn of(revision: &Revision, config: &AutoscalerConfig) -> Result<Self, AutoscalingError> {
        let empty = BTreeMap::new();
        let annotations = revision.metadata.annotations.as_ref().unwrap_or(&empty);
        let cc = revision.spec.container_concurrency.unwrap_or(0);
        let reachable = revision.routing_state() != Some(RoutingState::Reserve);
        let mut bounds = ScalingBounds::resolve(config, annotations, cc, reachable)?;
        if let Some(deadline) = annotations
            .get(keys::PROGRESS_DEADLINE)
            .and_then(|v| knative_core::duration::parse(v).ok())
        {
            bounds.progress_deadline = deadline;
        }
        let mut decider = DeciderSpec::from_config(config, annotations, cc)?;
        decider.reachable = reachable;
        Ok(ScalingTarget {
            bounds,
            decider,
            algorithm: Algorithm::from_annotation(
                annotations
                    .get(METRIC_AGGREGATION_ALGORITHM)
                    .map(String::as_str),
            ),
        })
    }

    /// The replicas a new revision starts with: `max(initial-scale,
    /// min-scale)` (0 when unreachable and allowed), at most `max-scale`.
    pub fn initial_replicas(&self) -> u32 {
        let b = &self.bounds;
        let min = if b.reachable { b.min_scale } else { 0 };
        let mut n = if b.reachable {
            b.initial_scale.max(min)
        } else {
            0
        };
        if b.max_scale > 0 {
            n = n.min(b.max_scale);
        }
        u32::try_from(n).unwrap_or(0)
    }
}

/// A revision's scaling state, as the autoscaler last decided it.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleStatus {
    /// Replicas asked of the backend.
    pub replicas: i32,
    /// Whether requests must go through the activator.
    pub activator_in_path: bool,
    /// The PodAutoscaler's `Active` condition.
    pub active: Active,
}

/// Makes a revision's policy.
pub type PolicyFactory =
    Arc<dyn Fn(&WorkloadKey, &ScalingTarget) -> Box<dyn ScalingPolicy> + Send + Sync>;

/// The control plane's autoscaler. Cheap to clone.
#[derive(Clone)]
pub struct Autoscaler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Autoscaler").finish_non_exhaustive()
    }
}

struct Inner {
    backend: Arc<dyn WorkloadBackend>,
    factory: PolicyFactory,
    tick: Duration,
    epoch: Instant,
    revisions: Mutex<HashMap<WorkloadKey, Entry>>,
    flags: Mutex<HashMap<WorkloadKey, Arc<AtomicBool>>>,
}

struct Entry {
    state: Arc<Mutex<State>>,
    poke: Arc<Notify>,
    status: watch::Receiver<ScaleStatus>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct State {
    policy: Box<dyn ScalingPolicy>,
    target: ScalingTarget,
    concurrency: MetricWindows,
    rps: MetricWindows,
    replicas: i32,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Autoscaler {
    /// An autoscaler applying the KPA's decisions to `backend`.
    pub fn new(backend: Arc<dyn WorkloadBackend>) -> Self {
        Self::with_policy(
            backend,
            Arc::new(|_: &WorkloadKey, t: &ScalingTarget| {
                Box::new(Kpa::new(t.decider.clone())) as Box<dyn ScalingPolicy>
            }),
        )
    }

    /// An autoscaler whose revisions' policies `factory` makes.
    pub fn with_policy(backend: Arc<dyn WorkloadBackend>, factory: PolicyFactory) -> Self {
        Self::with_tick(backend, factory, TICK)
    }

    /// An autoscaler ticking every `tick` (tests and simulations).
    pub fn with_tick(
        backend: Arc<dyn WorkloadBackend>,
        factory: PolicyFactory,
        tick: Duration,
    ) -> Self {
        Autoscaler {
            inner: Arc::new(Inner {
                backend,
                factory,
                tick,
                epoch: Instant::now(),
                revisions: Mutex::new(HashMap::new()),
                flags: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn now(&self) -> Duration {
        self.inner.epoch.elapsed()
    }

    /// Starts scaling `key` (scaling it to its initial replicas at once),
    /// or updates its target. Must run inside a tokio runtime.
    pub fn upsert(&self, key: &WorkloadKey, target: ScalingTarget) {
        let mut revisions = self
            .inner
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = revisions.get(key) {
            let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.target != target {
                if state.target.decider != target.decider {
                    // New targets or windows: a fresh policy and windows.
                    state.policy = (self.inner.factory)(key, &target);
                    state.concurrency = windows(&target);
                    state.rps = windows(&target);
                }
                let reachability_changed = state.target.bounds.reachable != target.bounds.reachable;
                state.target = target;
                drop(state);
                if reachability_changed {
                    entry.poke.notify_one();
                }
            }
            return;
        }
        let initial = target.initial_replicas();
        let state = Arc::new(Mutex::new(State {
            policy: (self.inner.factory)(key, &target),
            concurrency: windows(&target),
            rps: windows(&target),
            replicas: i32::try_from(initial).unwrap_or(i32::MAX),
            target,
        }));
        let flag = self.activator_flag(key);
        let (status_tx, status) = watch::channel(ScaleStatus {
            replicas: i32::try_from(initial).unwrap_or(i32::MAX),
            activator_in_path: true,
            active: Active {
                status: ConditionStatus::Unknown,
                reason: "Queued",
                message: "Requests to the target are being buffered as resources are provisioned.",
                since: self.now(),
            },
        });
        let poke = Arc::new(Notify::new());
        let task = tokio::spawn(
            run(
                self.clone_weak(),
                key.clone(),
                Arc::clone(&state),
                Arc::clone(&poke),
                flag,
                status_tx,
                initial,
            )
            .instrument(info_span!("autoscaler", revision = %key)),
        );
        revisions.insert(
            key.clone(),
            Entry {
                state,
                poke,
                status,
                task,
            },
        );
    }

    fn clone_weak(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    /// Stops scaling `key` (the revision is gone).
    pub fn remove(&self, key: &WorkloadKey) {
        self.inner
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
        self.inner
            .flags
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Records one second of the revision's metrics, revision-wide totals:
    /// average concurrency and requests per second.
    pub fn record(&self, key: &WorkloadKey, concurrency: f64, rps: f64) {
        let now = self.now();
        let revisions = self
            .inner
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = revisions.get(key) {
            let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.concurrency.record(now, concurrency);
            state.rps.record(now, rps);
        }
    }

    /// A request reached `key` while it has no ready replica: records one
    /// request in flight (when nothing was recorded yet in the window) and
    /// asks the policy at once, so that scaling from zero does not wait for
    /// the next tick.
    pub fn poke(&self, key: &WorkloadKey) {
        let now = self.now();
        let revisions = self
            .inner
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = revisions.get(key) {
            {
                let mut state = entry.state.lock().unwrap_or_else(PoisonError::into_inner);
                if state
                    .concurrency
                    .stable_and_panic(now)
                    .is_none_or(|(s, p)| s == 0.0 && p == 0.0)
                {
                    state.concurrency.record(now, 1.0);
                    state.rps.record(now, 1.0);
                }
            }
            entry.poke.notify_one();
        }
    }

    /// Whether requests for `key` must go through the activator, as a flag
    /// the data plane reads per request (`true` until the policy says
    /// otherwise).
    pub fn activator_flag(&self, key: &WorkloadKey) -> Arc<AtomicBool> {
        Arc::clone(
            self.inner
                .flags
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.clone())
                .or_insert_with(|| Arc::new(AtomicBool::new(true))),
        )
    }

    /// Follows `key`'s scaling status, if it is being scaled.
    pub fn status(&self, key: &WorkloadKey) -> Option<watch::Receiver<ScaleStatus>> {
        self.inner
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|e| e.status.clone())
    }

    /// The revisions being scaled.
    pub fn revisions(&self) -> Vec<WorkloadKey> {
        self.inner
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }
}

fn windows(target: &ScalingTarget) -> MetricWindows {
    MetricWindows::new(
        target.decider.stable_window,
        target.decider.panic_window,
        target.algorithm,
    )
}

/// The per-revision loop: the initial scale, then a decision every tick or poke.
async fn run(
    inner: std::sync::Weak<Inner>,
    key: WorkloadKey,
    state: Arc<Mutex<State>>,
    poke: Arc<Notify>,
    flag: Arc<AtomicBool>,
    status: watch::Sender<ScaleStatus>,
    initial: u32,
) {
    let Some(backend) = inner.upgrade().map(|i| Arc::clone(&i.backend)) else {
        return;
    };
    if let Err(error) = backend.scale(&key, initial).await {
        warn!(%error, initial, "initial scale failed");
    }
    loop {
        let Some(inner) = inner.upgrade() else { return };
        let now = inner.epoch.elapsed();
        let tick = inner.tick;
        drop(inner);
        let ready = backend
            .status(&key)
            .map(|s| s.borrow().ready.len())
            .unwrap_or(0);
        let ready = u32::try_from(ready).unwrap_or(u32::MAX);
        let (output, active, current) = {
            let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
            let s = &mut *s;
            let metrics = MetricSnapshot {
                stable_concurrency: s.concurrency.stable_and_panic(now).map(|(v, _)| v),
                panic_concurrency: s.concurrency.stable_and_panic(now).map(|(_, v)| v),
                stable_rps: s.rps.stable_and_panic(now).map(|(v, _)| v),
                panic_rps: s.rps.stable_and_panic(now).map(|(_, v)| v),
            };
            let output = s.policy.decide(&PolicyInput {
                now,
                ready_pods: ready,
                current_replicas: s.replicas,
                metrics,
                activator_ready: true,
                bounds: &s.target.bounds,
            });
            (output, s.policy.active(), s.replicas)
        };
        // The activator comes into the path before replicas go away.
        flag.store(output.activator_in_path, Ordering::SeqCst);
        let mut replicas = current;
        if let Some(desired) = output.desired
            && desired != current
            && desired >= 0
        {
            debug!(from = current, to = desired, ready, "scaling");
            match backend
                .scale(&key, u32::try_from(desired).unwrap_or(0))
                .await
            {
                Ok(()) => {
                    replicas = desired;
                    state
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .replicas = desired;
                }
                Err(error) => warn!(%error, desired, "scale failed"),
            }
        }
        let active = active.unwrap_or_else(|| derived_active(replicas, ready, now));
        status.send_if_modified(|s| {
            let next = ScaleStatus {
                replicas,
                activator_in_path: output.activator_in_path,
                active: active.clone(),
            };
            let changed = s.replicas != next.replicas
                || s.activator_in_path != next.activator_in_path
                || s.active.status != next.active.status
                || s.active.reason != next.active.reason;
            if changed {
                *s = next;
            }
            changed
        });
        let wait = output.requeue_after.map_or(tick, |r| r.min(tick));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = poke.notified() => {}
        }
    }
}

/// `Active` for policies that do not say: active with ready replicas,
/// inactive at zero, activating otherwise.
fn derived_active(replicas: i32, ready: u32, now: Duration) -> Active {
    let (status, reason, message) = if ready > 0 {
        (ConditionStatus::True, "", "")
    } else if replicas == 0 {
        (
            ConditionStatus::False,
            "NoTraffic",
            "The target is not receiving traffic.",
        )
    } else {
        (
            ConditionStatus::Unknown,
            "Queued",
            "Requests to the target are being buffered as resources are provisioned.",
        )
    };
    Active {
        status,
        reason,
        message,
        since: now,
    }
}
