use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn bounds() -> ScalingBounds {
    ScalingBounds::from_config(&AutoscalerConfig::default())
}

fn decision(desired: i32, ebc: i32) -> Decision {
    Decision {
        desired,
        excess_burst_capacity: ebc,
        panicking: false,
    }
}

fn observed(ready: u32, current: i32) -> Observed {
    Observed {
        ready_pods: ready,
        current_replicas: current,
        activator_ready: true,
    }
}

/// A PA that became active at `at` with one ready pod.
fn active_pa(at: Duration) -> PodAutoscaler {
    let mut pa = PodAutoscaler::new(bounds(), Duration::ZERO);
    let out = pa.reconcile(at, decision(1, 0), observed(1, 1));
    assert_eq!(out.active.status, ConditionStatus::True);
    pa
}

#[test]
fn a_new_pod_autoscaler_is_activating_behind_the_activator() {
    let mut pa = PodAutoscaler::new(bounds(), Duration::ZERO);
    let out = pa.reconcile(secs(1), decision(-1, -111), observed(0, 0));
    assert_eq!(out.active.status, ConditionStatus::Unknown);
    assert_eq!(out.active.reason, "Queued");
    assert_eq!(out.mode, Mode::Proxy);
    // The workload starts with the initial scale; the PA leaves it alone
    // until the decider knows something, and looks again before the
    // activation times out.
    assert_eq!(out.want, -1);
    assert_eq!(out.scale_to, None);
    assert_eq!(out.requeue_after, Some(secs(629)));
}

#[test]
fn unknown_desired_scale_does_nothing_unless_activating() {
    let mut pa = active_pa(secs(1));
    let out = pa.reconcile(secs(3), decision(-1, 0), observed(1, 1));
    assert_eq!(out.want, -1);
    assert_eq!(out.scale_to, None);
}

#[test]
fn min_and_max_scale_bound_the_decision_and_min_is_ignored_while_unreachable() {
    let mut b = bounds();
    b.min_scale = 2;
    b.max_scale = 5;
    let mut pa = PodAutoscaler::new(b.clone(), Duration::ZERO);
    assert_eq!(
        pa.reconcile(secs(1), decision(9, 0), observed(2, 2)).want,
        5
    );
    assert_eq!(
        pa.reconcile(secs(3), decision(1, 0), observed(5, 5)).want,
        2
    );
    b.reachable = false;
    pa.update(b);
    assert_eq!(
        pa.reconcile(secs(5), decision(1, 0), observed(2, 2)).want,
        1
    );
}

#[test]
fn initial_scale_raises_the_minimum_until_it_is_reached() {
    let mut b = bounds();
    b.initial_scale = 3;
    let mut pa = PodAutoscaler::new(b, Duration::ZERO);
    let out = pa.reconcile(secs(1), decision(1, 0), observed(1, 0));
    assert_eq!(out.scale_to, Some(3));
    assert_eq!(
        out.active.status,
        ConditionStatus::Unknown,
        "3 pods are needed to be active"
    );
    let out = pa.reconcile(secs(3), decision(1, 0), observed(3, 3));
    assert_eq!(out.active.status, ConditionStatus::True);
    assert!(pa.scale_target_initialized());
    let out = pa.reconcile(secs(5), decision(1, 0), observed(3, 3));
    assert_eq!(
        out.scale_to,
        Some(1),
        "after the initial scale, the decision rules"
    );
}

#[test]
fn scale_to_zero_disabled_keeps_one_pod() {
    let mut b = bounds();
    b.enable_scale_to_zero = false;
    let mut pa = PodAutoscaler::new(b, Duration::ZERO);
    pa.reconcile(secs(1), decision(1, 0), observed(1, 1));
    let out = pa.reconcile(secs(100), decision(0, 0), observed(1, 1));
    assert_eq!(out.want, 1);
    assert_eq!(out.scale_to, None, "already at one");
}

#[test]
fn an_active_revision_holds_one_pod_until_a_stable_window_has_passed() {
    let mut pa = active_pa(secs(10));
    let out = pa.reconcile(secs(40), decision(0, 0), observed(1, 1));
    assert_eq!(out.want, 1);
    assert_eq!(out.requeue_after, Some(secs(30)));
    assert_eq!(out.active.status, ConditionStatus::True);
    // A stable window after becoming active: marked inactive, activator in
    // the path, replicas kept for now.
    let out = pa.reconcile(secs(70), decision(0, 0), observed(1, 1));
    assert_eq!(out.want, 0);
    assert_eq!(out.scale_to, None);
    assert_eq!(out.mode, Mode::Proxy);
    assert_eq!(
        (out.active.status, out.active.reason),
        (ConditionStatus::False, "NoTraffic")
    );
}

#[test]
fn an_inactive_revision_scales_to_zero_after_the_grace_period_behind_the_activator() {
    let mut pa = active_pa(secs(10));
    pa.reconcile(secs(70), decision(0, 0), observed(1, 1));
    let out = pa.reconcile(secs(80), decision(0, 0), observed(1, 1));
    assert_eq!(out.scale_to, None, "the grace period has not passed");
    assert_eq!(out.requeue_after, Some(secs(20)));
    let out = pa.reconcile(secs(100), decision(0, 0), observed(1, 1));
    assert_eq!(out.scale_to, Some(0));
}

#[test]
fn scale_to_zero_waits_until_the_activator_answers() {
    let mut pa = active_pa(secs(10));
    pa.reconcile(secs(70), decision(0, 0), observed(1, 1));
    let not_ready = Observed {
        activator_ready: false,
        ..observed(1, 1)
    };
    let out = pa.reconcile(secs(200), decision(0, 0), not_ready);
    assert_eq!(out.scale_to, None);
    assert_eq!(out.requeue_after, Some(secs(1)));
}

#[test]
fn pod_retention_keeps_the_last_pod_unless_unreachable() {
    let mut b = bounds();
    b.pod_retention = secs(120);
    let mut pa = PodAutoscaler::new(b.clone(), Duration::ZERO);
    pa.reconcile(secs(10), decision(1, 0), observed(1, 1));
    pa.reconcile(secs(70), decision(0, 0), observed(1, 1));
    let out = pa.reconcile(secs(150), decision(0, 0), observed(1, 1));
    assert_eq!(
        out.scale_to, None,
        "retained for 120 s after going inactive"
    );
    assert_eq!(out.requeue_after, Some(secs(40)));
    assert_eq!(
        pa.reconcile(secs(190), decision(0, 0), observed(1, 1))
            .scale_to,
        Some(0)
    );

    b.reachable = false;
    let mut pa = PodAutoscaler::new(b, Duration::ZERO);
    pa.reconcile(secs(10), decision(1, 0), observed(1, 1));
    pa.reconcile(secs(70), decision(0, 0), observed(1, 1));
    assert_eq!(
        pa.reconcile(secs(100), decision(0, 0), observed(1, 1))
            .scale_to,
        Some(0)
    );
}

#[test]
fn an_activation_that_takes_longer_than_the_progress_deadline_gives_up() {
    let mut pa = PodAutoscaler::new(bounds(), Duration::ZERO);
    pa.reconcile(secs(1), decision(-1, 0), observed(0, 1));
    let out = pa.reconcile(secs(600), decision(0, 0), observed(0, 1));
    assert_eq!(out.want, -1, "still within 600 s + 30 s");
    assert_eq!(out.requeue_after, Some(secs(30)));
    let out = pa.reconcile(secs(631), decision(0, 0), observed(0, 1));
    assert_eq!(out.scale_to, Some(0));
    assert_eq!(
        (out.active.status, out.active.reason),
        (ConditionStatus::False, "TimedOut")
    );
}

#[test]
fn the_activator_leaves_the_path_only_with_pods_and_spare_burst_capacity() {
    let mut pa = PodAutoscaler::new(bounds(), Duration::ZERO);
    assert_eq!(
        pa.reconcile(secs(1), decision(2, -50), observed(2, 2)).mode,
        Mode::Proxy
    );
    assert_eq!(
        pa.reconcile(secs(3), decision(3, 20), observed(3, 3)).mode,
        Mode::Serve
    );
}

#[test]
fn activators_scale_with_capacity_and_burst_target() {
    let mut pa = PodAutoscaler::new(bounds(), Duration::ZERO);
    // ceil((3 · 100 + 211) / 100) = 6
    assert_eq!(
        pa.reconcile(secs(1), decision(3, 0), observed(3, 3))
            .activators,
        6
    );
    let mut b = bounds();
    b.target_burst_capacity = 0.0;
    let mut pa = PodAutoscaler::new(b, Duration::ZERO);
    assert_eq!(
        pa.reconcile(secs(1), decision(3, 0), observed(3, 3))
            .activators,
        2
    );
}

#[test]
fn zero_initial_scale_starts_inactive() {
    let mut b = bounds();
    b.initial_scale = 0;
    let mut pa = PodAutoscaler::new(b, Duration::ZERO);
    // The decider's initial burst capacity: 0 · 100 − 211.
    let out = pa.reconcile(secs(1), decision(-1, -211), observed(0, 0));
    assert_eq!(
        (out.active.status, out.active.reason),
        (ConditionStatus::False, "NoTraffic")
    );
    assert_eq!(out.mode, Mode::Proxy);
}

#[test]
fn a_retention_shorter_than_the_grace_period_scales_down_once_the_activator_has_been_in_the_path() {
    let mut b = bounds();
    b.pod_retention = secs(10);
    let mut pa = PodAutoscaler::new(b, Duration::ZERO);
    // Negative burst capacity: the activator has been in the path all along.
    pa.reconcile(secs(10), decision(1, -111), observed(1, 1));
    pa.reconcile(secs(70), decision(0, -111), observed(1, 1));
    let out = pa.reconcile(secs(75), decision(0, -111), observed(1, 1));
    assert_eq!(out.scale_to, None, "retained for 10 s");
    assert_eq!(out.want, 0);
    assert_eq!(
        pa.reconcile(secs(80), decision(0, -111), observed(1, 1))
            .scale_to,
        Some(0)
    );
}

#[test]
fn min_wins_over_max_like_upstream() {
    let mut b = bounds();
    b.initial_scale = 5;
    b.max_scale = 3;
    let mut pa = PodAutoscaler::new(b, Duration::ZERO);
    assert_eq!(
        pa.reconcile(secs(1), decision(1, 0), observed(0, 0)).want,
        5
    );
}

#[test]
fn bounds_resolve_annotations_over_config() {
    let annotations = [
        ("autoscaling.knative.dev/min-scale", "3"),
        ("autoscaling.knative.dev/max-scale", "7"),
        (
            "autoscaling.knative.dev/scale-to-zero-pod-retention-period",
            "90s",
        ),
        ("autoscaling.knative.dev/window", "30s"),
        ("autoscaling.knative.dev/target-burst-capacity", "0"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let b = ScalingBounds::resolve(&AutoscalerConfig::default(), &annotations, 10, false)
        .expect("valid");
    assert_eq!((b.min_scale, b.max_scale), (3, 7));
    assert_eq!(b.pod_retention, secs(90));
    assert_eq!(b.stable_window, secs(30));
    assert_eq!(b.target_burst_capacity, 0.0);
    assert_eq!(
        b.total_value, 10.0,
        "containerConcurrency is the per-pod capacity"
    );
    assert!(!b.reachable);
}
