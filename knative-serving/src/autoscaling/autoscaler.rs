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
    factory: Mutex<PolicyFactory>,
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
    /// Concurrency a poke recorded ahead of the data plane's report; taken
    /// off the next report so the first request is not counted twice.
    poke_debt: f64,
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
                factory: Mutex::new(factory),
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

    /// Makes revisions registered from now on use `factory`'s policies
    /// (revisions already being scaled keep theirs).
    pub fn set_policy(&self, factory: PolicyFactory) {
        *self
            .inner
            .factory
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = factory;
    }

    fn policy(&self, key: &WorkloadKey, target: &ScalingTarget) -> Box<dyn ScalingPolicy> {
        let factory = Arc::clone(
            &self
                .inner
                .factory
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        factory(key, target)
    }

    /// The entry of `key`: its state and poke, cloned out of the map so
    /// that no map lock is held while a policy decides.
    fn entry(&self, key: &WorkloadKey) -> Option<(Arc<Mutex<State>>, Arc<Notify>)> {
        self.inner
            .revisions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .map(|e| (Arc::clone(&e.state), Arc::clone(&e.poke)))
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
            let (state, poke) = (Arc::clone(&entry.state), Arc::clone(&entry.poke));
            drop(revisions);
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            if state.target != target {
                let mut old = state.target.decider.clone();
                old.reachable = target.decider.reachable;
                if old != target.decider {
                    // New targets or windows (the revision's annotations
                    // changed): a fresh policy and windows. Reachability
                    // alone reaches the policy through the bounds.
                    state.policy = self.policy(key, &target);
                    state.concurrency = windows(&target);
                    state.rps = windows(&target);
                }
                let reachability_changed = state.target.bounds.reachable != target.bounds.reachable;
                state.target = target;
                drop(state);
                if reachability_changed {
                    poke.notify_one();
                }
            }
            return;
        }
        let initial = target.initial_replicas();
        let state = Arc::new(Mutex::new(State {
            policy: self.policy(key, &target),
            concurrency: windows(&target),
            rps: windows(&target),
            replicas: i32::try_from(initial).unwrap_or(i32::MAX),
            poke_debt: 0.0,
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
        // The flag stays: a data plane may hold it, and a revision scaled
        // again later must reach the same one.
    }

    /// Records one second of the revision's metrics, revision-wide totals:
    /// average concurrency and requests per second.
    pub fn record(&self, key: &WorkloadKey, concurrency: f64, rps: f64) {
        let now = self.now();
        if let Some((state, _)) = self.entry(key) {
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            let debt = state.poke_debt.min(concurrency.max(0.0));
            state.poke_debt = 0.0;
            state.concurrency.record(now, concurrency - debt);
            state.rps.record(now, rps);
        }
    }

    /// A request reached `key` while it has no ready replica: records one
    /// request in flight (when nothing was recorded yet in the window) and
    /// asks the policy at once, so that scaling from zero does not wait for
    /// the next tick.
    pub fn poke(&self, key: &WorkloadKey) {
        let now = self.now();
        if let Some((state, poke)) = self.entry(key) {
            {
                let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
                let idle = state
                    .concurrency
                    .stable_and_panic(now)
                    .is_none_or(|(s, p)| s == 0.0 && p == 0.0);
                if idle {
                    state.concurrency.record(now, 1.0);
                    state.poke_debt = 1.0;
                }
            }
            poke.notify_one();
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
    let mut initialized = false;
    loop {
        // The initial scale first, retried at every tick until it works.
        if !initialized {
            match backend.scale(&key, initial).await {
                Ok(()) => initialized = true,
                Err(error) => {
                    warn!(%error, initial, "initial scale failed; retrying");
                    let tick = inner.upgrade().map_or(TICK, |i| i.tick);
                    tokio::select! {
                        () = tokio::time::sleep(tick) => {}
                        () = poke.notified() => {}
                    }
                    continue;
                }
            }
        }
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
            let concurrency = s.concurrency.stable_and_panic(now);
            let rps = s.rps.stable_and_panic(now);
            let metrics = MetricSnapshot {
                stable_concurrency: concurrency.map(|(v, _)| v),
                panic_concurrency: concurrency.map(|(_, v)| v),
                stable_rps: rps.map(|(v, _)| v),
                panic_rps: rps.map(|(_, v)| v),
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use async_trait::async_trait;

    use super::*;
    use crate::autoscaling::policy::PolicyOutput;
    use crate::backend::{BackendError, WorkloadSpec, WorkloadStatus};

    /// A backend that records the scale it is asked for and reports that
    /// many ready replicas at once.
    struct Recording {
        scaled: Mutex<Vec<u32>>,
        status: watch::Sender<WorkloadStatus>,
    }

    impl Recording {
        fn new() -> Arc<Self> {
            Arc::new(Recording {
                scaled: Mutex::new(Vec::new()),
                status: watch::channel(WorkloadStatus::default()).0,
            })
        }
        fn scaled(&self) -> Vec<u32> {
            self.scaled.lock().expect("lock").clone()
        }
    }

    #[async_trait]
    impl WorkloadBackend for Recording {
        async fn ensure(&self, _: &WorkloadSpec) -> Result<(), BackendError> {
            Ok(())
        }
        async fn scale(&self, _: &WorkloadKey, replicas: u32) -> Result<(), BackendError> {
            self.scaled.lock().expect("lock").push(replicas);
            self.status.send_modify(|s| {
                s.desired = replicas;
                s.actual = replicas;
                s.ready = (0..replicas)
                    .map(|i| crate::backend::Endpoint {
                        replica: format!("r-{i}"),
                        address: std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    })
                    .collect();
            });
            Ok(())
        }
        async fn remove(&self, _: &WorkloadKey) -> Result<(), BackendError> {
            Ok(())
        }
        fn status(&self, _: &WorkloadKey) -> Result<watch::Receiver<WorkloadStatus>, BackendError> {
            Ok(self.status.subscribe())
        }
    }

    /// One replica per 10 in flight (panic window), never zero; the
    /// activator leaves the path once two replicas run.
    struct PerTen {
        seen: Arc<AtomicU32>,
    }

    impl ScalingPolicy for PerTen {
        fn decide(&mut self, input: &PolicyInput<'_>) -> PolicyOutput {
            self.seen.fetch_add(1, Ordering::SeqCst);
            let load = input.metrics.panic_concurrency.unwrap_or(0.0);
            let desired = ((load / 10.0).ceil() as i32).max(1);
            PolicyOutput::scale(desired, input.ready_pods < 2)
        }
    }

    fn target() -> ScalingTarget {
        ScalingTarget {
            bounds: ScalingBounds::from_config(&AutoscalerConfig::default()),
            decider: DeciderSpec::default(),
            algorithm: Algorithm::default(),
        }
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn the_control_plane_drives_a_user_policy_from_recorded_metrics() {
        let backend = Recording::new();
        let seen = Arc::new(AtomicU32::new(0));
        let factory_seen = Arc::clone(&seen);
        let autoscaler = Autoscaler::with_tick(
            backend.clone(),
            Arc::new(move |_: &WorkloadKey, _: &ScalingTarget| {
                Box::new(PerTen {
                    seen: Arc::clone(&factory_seen),
                }) as Box<dyn ScalingPolicy>
            }),
            Duration::from_millis(20),
        );
        let key = WorkloadKey::new("default", "hello-00001");
        autoscaler.upsert(&key, target());
        // The initial scale comes first, then ticks.
        until("the initial scale", || backend.scaled().first() == Some(&1)).await;
        until("a tick", || seen.load(Ordering::SeqCst) > 0).await;
        let flag = autoscaler.activator_flag(&key);
        assert!(
            flag.load(Ordering::SeqCst),
            "one replica: activator in the path"
        );

        // 35 in flight: four replicas, and the activator leaves the path.
        // (Records within one second add up: this is one second's report.)
        autoscaler.record(&key, 35.0, 100.0);
        until(
            &format!("scale to 4 (scaled so far: {:?})", backend.scaled()),
            || backend.scaled().last() == Some(&4),
        )
        .await;
        until("serve mode", || !flag.load(Ordering::SeqCst)).await;
        let status = autoscaler.status(&key).expect("scaled").borrow().clone();
        assert_eq!(status.replicas, 4);
        assert_eq!(
            status.active.status,
            ConditionStatus::True,
            "derived: ready replicas"
        );

        // Removing the revision stops its loop.
        autoscaler.remove(&key);
        let calls = seen.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(seen.load(Ordering::SeqCst) <= calls + 1);
        assert!(autoscaler.status(&key).is_none());
    }

    #[tokio::test]
    async fn a_poke_wakes_the_kpa_at_zero_without_waiting_for_a_tick() {
        let backend = Recording::new();
        // A tick far away: only the poke can trigger a decision in time.
        let autoscaler = Autoscaler::with_tick(
            backend.clone(),
            Arc::new(|_: &WorkloadKey, t: &ScalingTarget| {
                Box::new(Kpa::new(t.decider.clone())) as Box<dyn ScalingPolicy>
            }),
            Duration::from_secs(3600),
        );
        let key = WorkloadKey::new("default", "hello-00001");
        let mut t = target();
        t.bounds.initial_scale = 0;
        t.decider.initial_scale = 0;
        autoscaler.upsert(&key, t);
        until("the initial scale to zero", || backend.scaled() == [0]).await;
        autoscaler.poke(&key);
        until("scale from zero", || backend.scaled().last() == Some(&1)).await;
    }

    #[test]
    fn a_new_revision_starts_at_max_of_initial_and_min_within_max() {
        let mut t = target();
        t.bounds.initial_scale = 2;
        t.bounds.min_scale = 3;
        assert_eq!(t.initial_replicas(), 3);
        t.bounds.max_scale = 2;
        assert_eq!(t.initial_replicas(), 2);
        t.bounds.reachable = false;
        assert_eq!(t.initial_replicas(), 0);
    }
}
