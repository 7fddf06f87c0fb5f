use super::*;
use proptest::prelude::*;

fn at(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(secs).expect("valid test timestamp"))
}

fn service_set() -> ConditionSet {
    ConditionSet::living(&["ConfigurationsReady", "RoutesReady"])
}

fn status_of(conditions: &[Condition], type_: &str) -> Option<ConditionStatus> {
    find(conditions, type_).map(|c| c.status)
}

#[test]
fn living_set_drops_duplicates_and_the_happy_condition_from_dependents() {
    let set = ConditionSet::living(&["A", "Ready", "B", "A"]);
    assert_eq!(set.happy(), "Ready");
    assert_eq!(set.dependents(), ["A".to_owned(), "B".to_owned()]);
    assert_eq!(ConditionSet::batch(&[]).happy(), "Succeeded");
}

#[test]
fn initialize_sets_happy_and_dependents_unknown() {
    let set = service_set();
    let mut conditions = Vec::new();
    set.manage_at(&mut conditions, at(1)).initialize();
    let types: Vec<_> = conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["ConfigurationsReady", "Ready", "RoutesReady"]);
    assert!(conditions.iter().all(Condition::is_unknown));
    assert!(
        conditions
            .iter()
            .all(|c| c.severity == ConditionSeverity::Error)
    );
}

#[test]
fn initialize_with_true_happy_condition_sets_missing_dependents_true() {
    let set = service_set();
    let mut conditions = vec![Condition::new("Ready", ConditionStatus::True)];
    set.manage_at(&mut conditions, at(1)).initialize();
    assert_eq!(
        status_of(&conditions, "RoutesReady"),
        Some(ConditionStatus::True)
    );
    assert_eq!(
        status_of(&conditions, "ConfigurationsReady"),
        Some(ConditionStatus::True)
    );
}

#[test]
fn ready_becomes_true_only_when_every_dependent_is_true() {
    let set = service_set();
    let mut conditions = Vec::new();
    let mut m = set.manage_at(&mut conditions, at(1));
    m.initialize();
    m.mark_true("ConfigurationsReady");
    assert_eq!(
        m.happy_condition().map(|c| c.status),
        Some(ConditionStatus::Unknown)
    );
    m.mark_true("RoutesReady");
    assert!(m.is_happy());
}

#[test]
fn marking_a_dependent_false_makes_ready_false_with_its_reason() {
    let set = service_set();
    let mut conditions = Vec::new();
    let mut m = set.manage_at(&mut conditions, at(1));
    m.mark_true("ConfigurationsReady");
    m.mark_true("RoutesReady");
    m.mark_false("RoutesReady", "RevisionMissing", "no ready revision");
    let ready = m.happy_condition().cloned().expect("ready is set");
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason, "RevisionMissing");
    assert_eq!(ready.message, "no ready revision");
}

#[test]
fn marking_a_dependent_unknown_keeps_ready_false_while_another_is_false() {
    let set = service_set();
    let mut conditions = Vec::new();
    let mut m = set.manage_at(&mut conditions, at(1));
    m.mark_false("ConfigurationsReady", "RevisionFailed", "boom");
    m.mark_unknown("RoutesReady", "Deploying", "");
    let ready = m.happy_condition().cloned().expect("ready is set");
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason, "RevisionFailed");
}

#[test]
fn marking_a_dependent_unknown_makes_ready_unknown() {
    let set = service_set();
    let mut conditions = Vec::new();
    let mut m = set.manage_at(&mut conditions, at(1));
    m.mark_true("ConfigurationsReady");
    m.mark_true("RoutesReady");
    m.mark_unknown(
        "RoutesReady",
        "TrafficNotMigrated",
        "Traffic is not yet migrated",
    );
    let ready = m.happy_condition().cloned().expect("ready is set");
    assert_eq!(ready.status, ConditionStatus::Unknown);
    assert_eq!(ready.reason, "TrafficNotMigrated");
}

#[test]
fn marking_true_propagates_the_most_recent_false_dependent() {
    let set = ConditionSet::living(&["A", "B", "C"]);
    let mut conditions = Vec::new();
    set.manage_at(&mut conditions, at(1))
        .mark_false("A", "OldFailure", "");
    set.manage_at(&mut conditions, at(2))
        .mark_unknown("B", "Waiting", "");
    set.manage_at(&mut conditions, at(3))
        .mark_false("B", "NewFailure", "");
    set.manage_at(&mut conditions, at(4)).mark_true("C");
    let ready = find(&conditions, "Ready").expect("ready is set");
    assert_eq!(ready.status, ConditionStatus::False);
    assert_eq!(ready.reason, "NewFailure");
}

#[test]
fn within_one_manager_the_latest_failure_decides_ready() {
    let set = ConditionSet::living(&["ResourcesAvailable", "ContainerHealthy"]);
    let mut conditions = Vec::new();
    let mut m = set.manage_at(&mut conditions, at(1));
    m.mark_false("ContainerHealthy", "ExitCode1", "");
    m.mark_false("ResourcesAvailable", "Unschedulable", "");
    m.mark_true("Active");
    assert_eq!(
        m.happy_condition().map(|c| c.reason.clone()),
        Some("Unschedulable".to_owned())
    );
}

#[test]
fn set_repairs_unsorted_and_duplicated_conditions() {
    let set = service_set();
    let mut conditions = vec![
        Condition::new("RoutesReady", ConditionStatus::False),
        Condition::new("Ready", ConditionStatus::False),
        Condition::new("RoutesReady", ConditionStatus::Unknown),
    ];
    set.manage_at(&mut conditions, at(1))
        .mark_true("RoutesReady");
    let types: Vec<_> = conditions.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Ready", "RoutesReady"]);
}

#[test]
fn informational_conditions_get_info_severity_and_do_not_affect_ready() {
    let set = ConditionSet::living(&["ResourcesAvailable", "ContainerHealthy"]);
    let mut conditions = Vec::new();
    let mut m = set.manage_at(&mut conditions, at(1));
    m.mark_true("ResourcesAvailable");
    m.mark_true("ContainerHealthy");
    m.mark_false(
        "Active",
        "NoTraffic",
        "The target is not receiving traffic.",
    );
    assert!(m.is_happy());
    assert_eq!(
        m.get("Active").map(|c| c.severity),
        Some(ConditionSeverity::Info)
    );
    assert!(m.clear("Active").is_ok());
    assert!(m.get("Active").is_none());
}

#[test]
fn terminal_conditions_cannot_be_cleared() {
    let set = service_set();
    let mut conditions = Vec::new();
    let mut m = set.manage_at(&mut conditions, at(1));
    m.initialize();
    let err = m.clear("RoutesReady").expect_err("terminal");
    assert!(err.to_string().contains("RoutesReady"));
    assert!(m.get("RoutesReady").is_some());
}

#[test]
fn last_transition_time_moves_only_on_real_change() {
    let set = service_set();
    let mut conditions = Vec::new();
    set.manage_at(&mut conditions, at(10))
        .mark_false("RoutesReady", "X", "m");
    set.manage_at(&mut conditions, at(20))
        .mark_false("RoutesReady", "X", "m");
    let t = |cs: &[Condition]| {
        find(cs, "RoutesReady")
            .and_then(|c| c.last_transition_time.clone())
            .map(|t| t.0.as_second())
    };
    assert_eq!(t(&conditions), Some(10));
    set.manage_at(&mut conditions, at(30))
        .mark_false("RoutesReady", "X", "other message");
    assert_eq!(t(&conditions), Some(30));
}

#[test]
fn conditions_stay_sorted_by_type() {
    let set = ConditionSet::living(&["Zeta", "Alpha"]);
    let mut conditions = Vec::new();
    let mut m = set.manage_at(&mut conditions, at(1));
    m.mark_true("Zeta");
    m.mark_true("Middle");
    m.mark_true("Alpha");
    let types: Vec<_> = conditions.iter().map(|c| c.type_.clone()).collect();
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(types, sorted);
}

#[test]
fn batch_set_tracks_succeeded_and_done() {
    let set = ConditionSet::batch(&[]);
    let mut conditions = Vec::new();
    let mut m = set.manage_at(&mut conditions, at(1));
    m.initialize();
    assert!(!m.is_done());
    m.mark_unknown(
        "Succeeded",
        "Running",
        "Not all Steps in the Task have finished executing",
    );
    assert!(!m.is_done());
    m.mark_true_with_reason(
        "Succeeded",
        "Succeeded",
        "All Steps have completed executing",
    );
    assert!(m.is_done());
    assert!(m.is_happy());
    let c = m.happy_condition().cloned().expect("set");
    assert_eq!(c.reason, "Succeeded");
}

#[test]
fn condition_yaml_round_trips_with_upstream_field_names() {
    let yaml = r#"
- type: Ready
  status: "False"
  reason: RevisionMissing
  message: Configuration "hello" does not have any ready Revision.
  lastTransitionTime: "2024-05-01T10:00:00Z"
- type: Active
  status: Unknown
  severity: Info
"#;
    let conditions: Vec<Condition> = serde_yaml::from_str(yaml).expect("parses");
    assert_eq!(conditions[0].status, ConditionStatus::False);
    assert_eq!(conditions[1].severity, ConditionSeverity::Info);
    let json = serde_json::to_value(&conditions).expect("serializes");
    assert_eq!(json[0]["lastTransitionTime"], "2024-05-01T10:00:00Z");
    assert!(
        json[0].get("severity").is_none(),
        "error severity is omitted"
    );
    assert_eq!(json[1]["severity"], "Info");
    let back: Vec<Condition> = serde_json::from_value(json).expect("parses back");
    assert_eq!(back, conditions);
}

#[test]
fn unknown_severity_is_rejected_with_the_value() {
    let err =
        serde_json::from_str::<Condition>(r#"{"type":"Ready","status":"True","severity":"Fatal"}"#)
            .expect_err("invalid");
    assert!(err.to_string().contains("Fatal"), "{err}");
}

#[test]
fn status_is_ready_requires_observed_generation() {
    let mut status = Status {
        observed_generation: Some(1),
        conditions: vec![Condition::new("Ready", ConditionStatus::True)],
        ..Status::default()
    };
    assert!(status.is_ready(Some(1), READY));
    assert!(!status.is_ready(Some(2), READY));
    status.conditions[0].status = ConditionStatus::Unknown;
    assert!(!status.is_ready(Some(1), READY));
}

#[derive(Clone, Debug)]
enum Op {
    True(usize),
    TrueWithReason(usize),
    False(usize),
    Unknown(usize),
    Initialize,
}

fn op() -> impl Strategy<Value = Op> {
    // Indexes 0..4 are dependents, 4..6 informational conditions.
    prop_oneof![
        (0..6usize).prop_map(Op::True),
        (0..6usize).prop_map(Op::TrueWithReason),
        (0..6usize).prop_map(Op::False),
        (0..6usize).prop_map(Op::Unknown),
        Just(Op::Initialize),
    ]
}

const TYPES: [&str; 6] = ["A", "B", "C", "D", "Info1", "Info2"];

proptest! {
    #[test]
    fn ready_is_true_iff_all_dependents_are_true(ops in proptest::collection::vec(op(), 1..40)) {
        let set = ConditionSet::living(&TYPES[..4]);
        let mut conditions = Vec::new();
        for (tick, op) in ops.iter().enumerate() {
            let mut m = set.manage_at(&mut conditions, at(tick as i64));
            match op {
                Op::True(i) => m.mark_true(TYPES[*i]),
                Op::TrueWithReason(i) => m.mark_true_with_reason(TYPES[*i], "Why", "msg"),
                Op::False(i) => m.mark_false(TYPES[*i], "Failed", "msg"),
                Op::Unknown(i) => m.mark_unknown(TYPES[*i], "Waiting", "msg"),
                Op::Initialize => m.initialize(),
            }
            let all_true = set
                .dependents()
                .iter()
                .all(|d| find(&conditions, d).is_some_and(Condition::is_true));
            prop_assert_eq!(set.is_happy(&conditions), all_true, "after {:?}: {:?}", op, conditions);
            let mut types: Vec<_> = conditions.iter().map(|c| c.type_.clone()).collect();
            let sorted = { let mut s = types.clone(); s.sort(); s };
            prop_assert_eq!(&types, &sorted);
            types.dedup();
            prop_assert_eq!(types.len(), conditions.len());
        }
    }
}
