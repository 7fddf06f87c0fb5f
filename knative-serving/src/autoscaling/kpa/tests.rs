use super::*;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn obs(ready_pods: u32, stable: f64, panic: f64) -> Observation {
    Observation {
        ready_pods,
        stable,
        panic,
    }
}

fn spec_with(f: impl FnOnce(&mut DeciderSpec)) -> DeciderSpec {
    let mut spec = DeciderSpec::default();
    f(&mut spec);
    spec
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn default_targets_are_seventy_concurrent_of_a_hundred() {
    let spec = DeciderSpec::default();
    assert_eq!(spec.target_value, 70.0);
    assert_eq!(spec.total_value, 100.0);
    assert_eq!(spec.panic_threshold, 2.0);
    assert_eq!(spec.stable_window, secs(60));
    assert_eq!(spec.panic_window, secs(6));
    assert_eq!(spec.target_burst_capacity, 211.0);
    assert_eq!(spec.activation_scale, 1);
    assert!(spec.reachable);
}

#[test]
fn container_concurrency_sets_the_total_and_caps_the_annotation_target() {
    let config = AutoscalerConfig::default();
    let spec = DeciderSpec::from_config(&config, &BTreeMap::new(), 10).expect("valid");
    assert_eq!((spec.total_value, spec.target_value), (10.0, 7.0));
    let capped = DeciderSpec::from_config(
        &config,
        &annotations(&[("autoscaling.knative.dev/target", "50")]),
        10,
    )
    .expect("valid");
    assert_eq!(capped.total_value, 10.0);
    let free = DeciderSpec::from_config(
        &config,
        &annotations(&[("autoscaling.knative.dev/target", "50")]),
        0,
    )
    .expect("valid");
    assert_eq!((free.total_value, free.target_value), (50.0, 35.0));
    let tu = DeciderSpec::from_config(
        &config,
        &annotations(&[(
            "autoscaling.knative.dev/target-utilization-percentage",
            "50",
        )]),
        0,
    )
    .expect("valid");
    assert_eq!(tu.target_value, 50.0);
}

#[test]
fn rps_target_includes_the_utilization() {
    let spec = DeciderSpec::from_config(
        &AutoscalerConfig::default(),
        &annotations(&[("autoscaling.knative.dev/metric", "rps")]),
        0,
    )
    .expect("valid");
    assert_eq!(spec.metric, Metric::Rps);
    assert_eq!(spec.total_value, 200.0);
    assert!((spec.target_value - 140.0).abs() < 1e-9);
}

#[test]
fn target_is_never_below_the_minimum() {
    let spec = DeciderSpec::from_config(
        &AutoscalerConfig::default(),
        &annotations(&[
            ("autoscaling.knative.dev/target", "0.01"),
            ("autoscaling.knative.dev/target-utilization-percentage", "1"),
        ]),
        0,
    )
    .expect("valid");
    assert_eq!(spec.target_value, TARGET_MIN);
}

#[test]
fn panic_window_is_a_rounded_share_of_the_stable_window_of_at_least_a_second() {
    let config = AutoscalerConfig::default();
    let spec = DeciderSpec::from_config(
        &config,
        &annotations(&[
            ("autoscaling.knative.dev/window", "15s"),
            ("autoscaling.knative.dev/panic-window-percentage", "10"),
        ]),
        0,
    )
    .expect("valid");
    assert_eq!(spec.panic_window, secs(2), "1.5 s rounds to 2 s");
    let spec = DeciderSpec::from_config(
        &config,
        &annotations(&[
            ("autoscaling.knative.dev/window", "6s"),
            ("autoscaling.knative.dev/panic-window-percentage", "1"),
        ]),
        0,
    )
    .expect("valid");
    assert_eq!(spec.panic_window, secs(1));
}

#[test]
fn a_new_decider_reports_unknown_scale_and_its_initial_burst_capacity() {
    let d = Decider::new(DeciderSpec::default());
    assert_eq!(d.last().desired, -1);
    assert_eq!(d.last().excess_burst_capacity, 100 - 211);
    let zero = Decider::new(spec_with(|s| s.target_burst_capacity = 0.0));
    assert_eq!(zero.last().excess_burst_capacity, 0);
    let unlimited = Decider::new(spec_with(|s| s.target_burst_capacity = -1.0));
    assert_eq!(unlimited.last().excess_burst_capacity, -1);
}

#[test]
fn ready_pods_count_as_at_least_one_for_rates_but_burst_capacity_uses_the_raw_count() {
    let mut d = Decider::new(DeciderSpec::default());
    let decision = d.decide(secs(2), obs(0, 0.0, 0.0));
    assert_eq!(decision.desired, 0);
    // EBC = floor(0 · 100 − 211 − 0): the raw count, not max(1, ready).
    assert_eq!(decision.excess_burst_capacity, -211);
}

#[test]
fn scale_from_zero_is_not_rate_limited() {
    let mut d = Decider::new(spec_with(|s| s.max_scale_up_rate = 2.0));
    // With no ready pod, maxUp = ceil(2 · max(1, 0)) = 2 … but the load asks for 50.
    let decision = d.decide(secs(2), obs(0, 3500.0, 3500.0));
    assert_eq!(decision.desired, 2, "the rate uses max(1, ready)");
    let mut d = Decider::new(DeciderSpec::default());
    let decision = d.decide(secs(2), obs(0, 3500.0, 3500.0));
    assert_eq!(
        decision.desired, 50,
        "with the default rate of 1000, zero pods may jump to 50"
    );
}

#[test]
fn one_pod_may_scale_to_zero() {
    let mut d = Decider::new(DeciderSpec::default());
    let decision = d.decide(secs(2), obs(1, 0.0, 0.0));
    assert_eq!(decision.desired, 0, "maxDown = floor(1/2) = 0");
}

#[test]
fn scale_down_is_limited_by_the_rate() {
    let mut d = Decider::new(DeciderSpec::default());
    let decision = d.decide(secs(2), obs(1, 0.0, 0.0));
    assert_eq!(decision.desired, 0);
    let mut d = Decider::new(DeciderSpec::default());
    d.decide(secs(2), obs(1, 0.0, 0.0));
    let decision = d.decide(secs(4), obs(10, 0.0, 0.0));
    assert_eq!(decision.desired, 5, "maxDown = floor(10 / 2)");
}

#[test]
fn an_unreachable_revision_drops_straight_to_zero_without_delay() {
    let mut d = Decider::new(spec_with(|s| {
        s.reachable = false;
        s.scale_down_delay = secs(30);
    }));
    d.decide(secs(2), obs(1, 0.0, 0.0));
    let decision = d.decide(secs(4), obs(10, 0.0, 0.0));
    assert_eq!(decision.desired, 0);
}

#[test]
fn activation_scale_applies_only_with_traffic_and_bypasses_max_up() {
    let spec = spec_with(|s| {
        s.activation_scale = 5;
        s.max_scale_up_rate = 2.0;
    });
    let mut d = Decider::new(spec.clone());
    assert_eq!(
        d.decide(secs(2), obs(0, 0.0, 0.0)).desired,
        0,
        "no traffic, no activation scale"
    );
    let mut d = Decider::new(spec);
    let decision = d.decide(secs(2), obs(0, 1.0, 1.0));
    assert_eq!(decision.desired, 5, "above maxUp = 2");
}

#[test]
fn panic_starts_at_twice_the_ready_pods_in_the_panic_window() {
    let mut d = Decider::new(DeciderSpec::default());
    // dppc = ceil(140/70) = 2 → 2/1 = 200% ≥ 200%.
    let decision = d.decide(secs(2), obs(1, 10.0, 140.0));
    assert!(decision.panicking);
    let mut d = Decider::new(DeciderSpec::default());
    let decision = d.decide(secs(2), obs(1, 10.0, 70.0));
    assert!(!decision.panicking);
}

/// One tick 2 s after the previous one.
fn tick(d: &mut Decider, t: &mut u64, ready: u32, stable: f64, panic: f64) -> Decision {
    *t += 2;
    d.decide(secs(*t), obs(ready, stable, panic))
}

#[test]
fn worked_example_three_hundred_concurrent_from_idle() {
    let mut d = Decider::new(DeciderSpec::default());
    let mut t = 0;
    assert_eq!(tick(&mut d, &mut t, 1, 5.0, 50.0).desired, 1);
    let decision = tick(&mut d, &mut t, 1, 15.0, 150.0);
    assert!(decision.panicking);
    assert_eq!(decision.desired, 3);
    assert_eq!(tick(&mut d, &mut t, 1, 25.0, 250.0).desired, 4);
    assert_eq!(tick(&mut d, &mut t, 1, 30.0, 300.0).desired, 5);
    let last_over = t;
    // Pods arrive; the load is steady at ceil(300/70) = 5 pods.
    let mut decision = tick(&mut d, &mut t, 5, 40.0, 300.0);
    while t < last_over + 60 {
        assert!(
            decision.panicking,
            "panic lasts a stable window after the last spike (t={t})"
        );
        assert_eq!(decision.desired, 5);
        decision = tick(&mut d, &mut t, 5, 300.0, 300.0);
    }
    decision = tick(&mut d, &mut t, 5, 300.0, 300.0);
    assert!(!decision.panicking, "panic ended at t={t}");
    assert_eq!(decision.desired, 5);
}

#[test]
fn panic_keeps_the_peak_even_if_stable_is_lower() {
    let mut d = Decider::new(DeciderSpec::default());
    d.decide(secs(2), obs(1, 10.0, 700.0));
    assert_eq!(d.last().desired, 10);
    // The burst fades; stable alone would want 1, panic keeps 10.
    let decision = d.decide(secs(4), obs(10, 10.0, 10.0));
    assert!(decision.panicking);
    assert_eq!(decision.desired, 10, "never scale down while panicking");
}

#[test]
fn the_stable_value_counts_while_panicking_if_it_is_higher() {
    let mut d = Decider::new(DeciderSpec::default());
    d.decide(secs(2), obs(1, 10.0, 140.0));
    let decision = d.decide(secs(4), obs(2, 700.0, 10.0));
    assert_eq!(decision.desired, 10);
}

#[test]
fn scale_down_delay_is_a_max_over_recent_ticks() {
    // No panic and no scale-down rate limit, so only the delay window acts.
    let mut d = Decider::new(spec_with(|s| {
        s.scale_down_delay = secs(10);
        s.panic_threshold = 1000.0;
        s.max_scale_down_rate = 1000.0;
    }));
    assert_eq!(d.decide(secs(2), obs(0, 700.0, 700.0)).desired, 10);
    // Load disappears; the desired count stays at the recent maximum for 10 s.
    let mut t = 2;
    let mut decisions = Vec::new();
    while t < 20 {
        t += 2;
        decisions.push(d.decide(secs(t), obs(10, 69.0, 69.0)).desired);
    }
    assert_eq!(decisions, [10, 10, 10, 10, 1, 1, 1, 1, 1]);
}

#[test]
fn scale_down_delay_does_not_delay_scale_ups() {
    let mut d = Decider::new(spec_with(|s| s.scale_down_delay = secs(10)));
    assert_eq!(d.decide(secs(2), obs(1, 70.0, 70.0)).desired, 1);
    assert_eq!(d.decide(secs(4), obs(1, 140.0, 140.0)).desired, 2);
}

#[test]
fn no_data_keeps_the_last_decision() {
    let mut d = Decider::new(DeciderSpec::default());
    let first = d.decide(secs(2), obs(1, 140.0, 140.0));
    let stale = d.decide(secs(4), obs(3, f64::NAN, f64::NAN));
    assert_eq!(stale, first);
    let mut fresh = Decider::new(DeciderSpec::default());
    assert_eq!(fresh.decide(secs(2), obs(1, f64::NAN, 0.0)).desired, -1);
}

#[test]
fn a_decider_created_with_ready_pods_starts_panicking_and_holds_them() {
    let mut d = Decider::with_ready_pods(DeciderSpec::default(), 3, secs(0));
    assert!(d.last().panicking);
    let decision = d.decide(secs(2), obs(3, 0.0, 0.0));
    assert!(decision.panicking);
    assert_eq!(decision.desired, 3, "no scale-down right after a restart");
    let later = d.decide(secs(62), obs(3, 0.0, 0.0));
    assert!(!later.panicking);
    assert_eq!(
        later.desired, 1,
        "maxDown = floor(3/2) = 1 once the panic is over"
    );
    let single = Decider::with_ready_pods(DeciderSpec::default(), 1, secs(0));
    assert!(!single.last().panicking, "one pod needs no protection");
}

#[test]
fn the_first_tick_stands_in_for_creation_when_pods_are_already_ready() {
    let mut d = Decider::new(DeciderSpec::default());
    let decision = d.decide(secs(2), obs(4, 0.0, 0.0));
    assert!(decision.panicking);
    assert_eq!(decision.desired, 4);
}

#[test]
fn burst_capacity_uses_the_panic_value() {
    let mut d = Decider::new(DeciderSpec::default());
    let decision = d.decide(secs(2), obs(3, 50.0, 50.0));
    // floor(3 · 100 − 211 − 50) = 39
    assert_eq!(decision.excess_burst_capacity, 39);
    let mut zero = Decider::new(spec_with(|s| s.target_burst_capacity = 0.0));
    assert_eq!(
        zero.decide(secs(2), obs(3, 50.0, 50.0))
            .excess_burst_capacity,
        0
    );
    let mut unlimited = Decider::new(spec_with(|s| s.target_burst_capacity = -1.0));
    assert_eq!(
        unlimited
            .decide(secs(2), obs(3, 50.0, 50.0))
            .excess_burst_capacity,
        -1
    );
}

#[test]
fn the_panic_window_rounds_like_go_after_truncating_to_nanoseconds() {
    let spec = DeciderSpec::from_config(
        &AutoscalerConfig::default(),
        &annotations(&[
            ("autoscaling.knative.dev/window", "125s"),
            ("autoscaling.knative.dev/panic-window-percentage", "67.6"),
        ]),
        0,
    )
    .expect("valid");
    assert_eq!(spec.panic_window, secs(84));
}

#[test]
fn updating_the_spec_keeps_the_delay_window_as_upstream_does() {
    let mut d = Decider::new(spec_with(|s| {
        s.panic_threshold = 1000.0;
        s.max_scale_down_rate = 1000.0;
    }));
    d.decide(secs(2), obs(0, 700.0, 700.0));
    // A delay configured later does not apply to a running decider.
    d.update(spec_with(|s| {
        s.scale_down_delay = secs(60);
        s.panic_threshold = 1000.0;
        s.max_scale_down_rate = 1000.0;
    }));
    assert_eq!(d.decide(secs(4), obs(10, 69.0, 69.0)).desired, 1);
}
