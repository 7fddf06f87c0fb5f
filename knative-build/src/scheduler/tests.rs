use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource;
use proptest::prelude::*;

use super::*;
use crate::api::{
    PipelineResult, PipelineRunSpec, PipelineWorkspaceDeclaration, TimeoutFields,
    WorkspacePipelineTaskBinding,
};

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn at(minutes: i64) -> Timestamp {
    Timestamp::from_second(T0 + minutes * 60).expect("valid time")
}

fn task(name: &str, after: &[&str]) -> PipelineTask {
    PipelineTask {
        run_after: after.iter().map(|a| (*a).to_owned()).collect(),
        ..PipelineTask::referring(name, name)
    }
}

fn pipeline(tasks: Vec<PipelineTask>, finally: Vec<PipelineTask>) -> PipelineSpec {
    PipelineSpec {
        tasks,
        finally,
        ..PipelineSpec::default()
    }
}

fn run(spec: PipelineRunSpec) -> PipelineRun {
    let mut pr = PipelineRun::new("pr", spec);
    pr.metadata.namespace = Some("ci".into());
    pr.metadata.uid = Some("uid-1".into());
    pr
}

fn started(mut pr: PipelineRun, minutes: i64) -> PipelineRun {
    pr.status.get_or_insert_with(Default::default).start_time = Some(Time(at(minutes)));
    pr
}

fn done(task: &str, status: ConditionStatus, reason: &str) -> ChildRun {
    ChildRun {
        succeeded: Some(Condition::new(SUCCEEDED, status).with_reason(reason, "")),
        ..ChildRun::started(format!("pr-{task}"), task)
    }
}

fn ok(task: &str) -> ChildRun {
    done(task, ConditionStatus::True, task_run_reasons::SUCCEEDED)
}

fn failed(task: &str) -> ChildRun {
    done(task, ConditionStatus::False, task_run_reasons::FAILED)
}

fn running(task: &str) -> ChildRun {
    ChildRun::started(format!("pr-{task}"), task)
}

fn with_result(mut child: ChildRun, name: &str, value: &str) -> ChildRun {
    child.results.push(TaskRunResult::string(name, value));
    child
}

fn decide(pr: &PipelineRun, p: &PipelineSpec, children: &[ChildRun], minutes: i64) -> Decision {
    next(&PipelineRunState::new(pr, p, children, at(minutes)))
}

fn created(d: &Decision) -> Vec<&str> {
    d.create.iter().map(|c| c.pipeline_task.as_str()).collect()
}

fn skipped(d: &Decision) -> Vec<(&str, SkippingReason)> {
    d.skipped
        .iter()
        .map(|s| (s.name.as_str(), s.reason))
        .collect()
}

#[test]
fn a_linear_pipeline_runs_in_order_and_succeeds() {
    let p = pipeline(vec![task("clone", &[]), task("build", &["clone"])], vec![]);
    let pr = run(PipelineRunSpec::default());
    let d = decide(&pr, &p, &[], 0);
    assert_eq!(d.start_time, Some(at(0)));
    assert_eq!(created(&d), ["clone"]);
    assert_eq!(d.create[0].name, "pr-clone");
    assert_eq!(d.create[0].member_of, MemberOf::Tasks);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(3600)));

    let pr = started(pr, 0);
    let d = decide(&pr, &p, &[running("clone")], 1);
    assert!(d.create.is_empty());
    assert_eq!(d.start_time, None);
    assert_eq!(d.condition.reason, reasons::RUNNING);

    let d = decide(&pr, &p, &[ok("clone")], 2);
    assert_eq!(created(&d), ["build"]);
    assert_eq!(
        d.condition.message,
        "Tasks Completed: 1 (Failed: 0, Cancelled 0), Incomplete: 1, Skipped: 0"
    );

    let d = decide(&pr, &p, &[ok("clone"), ok("build")], 3);
    assert!(d.condition.is_true());
    assert_eq!(d.condition.reason, reasons::SUCCEEDED);
    assert_eq!(
        d.condition.message,
        "Tasks Completed: 2 (Failed: 0, Cancelled 0), Skipped: 0"
    );
    assert_eq!(d.completion_time, Some(at(3)));
    assert_eq!(d.requeue_after, None);
    assert_eq!(d.child_references.len(), 2);
}

#[test]
fn params_are_resolved_from_run_params_defaults_results_and_context() {
    let mut build = task("build", &[]);
    build.params = vec![
        Param::new("url", "$(params.repo)@$(tasks.clone.results.commit)"),
        Param::new("flags", "$(params.flags[*])"),
        Param::new(
            "who",
            "$(context.pipelineRun.name)/$(context.pipeline.name)",
        ),
        Param::new("retries", "$(context.pipelineTask.retries)"),
        Param::new("later", "$(context.taskRun.name)"),
    ];
    build.retries = Some(2);
    let mut p = pipeline(vec![task("clone", &[]), build], vec![]);
    p.params = vec![
        crate::api::ParamSpec::string("repo"),
        crate::api::ParamSpec {
            name: "flags".into(),
            default: Some(ParamValue::Array(vec!["-v".into()])),
            ..crate::api::ParamSpec::default()
        },
    ];
    let pr = started(
        run(PipelineRunSpec {
            params: vec![Param::new("repo", "https://git/x")],
            ..PipelineRunSpec::default()
        }),
        0,
    );
    let d = decide(&pr, &p, &[with_result(ok("clone"), "commit", "abc123")], 1);
    assert_eq!(created(&d), ["build"]);
    let values: BTreeMap<&str, &ParamValue> = d.create[0]
        .params
        .iter()
        .map(|p| (p.name.as_str(), &p.value))
        .collect();
    assert_eq!(values["url"], &ParamValue::from("https://git/x@abc123"));
    assert_eq!(values["flags"], &ParamValue::Array(vec!["-v".into()]));
    assert_eq!(values["who"], &ParamValue::from("pr/pr"));
    assert_eq!(values["retries"], &ParamValue::from("2"));
    assert_eq!(
        values["later"],
        &ParamValue::from("$(context.taskRun.name)")
    );
}

#[test]
fn a_false_when_skips_the_task_and_its_result_consumers_but_not_run_after() {
    let mut gate = task("gate", &[]);
    gate.when = vec![WhenExpression::is_in("$(params.deploy)", &["yes"])];
    let mut uses_result = task("uses-result", &[]);
    uses_result.params = vec![Param::new("v", "$(tasks.gate.results.version)")];
    let p = PipelineSpec {
        params: vec![crate::api::ParamSpec {
            name: "deploy".into(),
            default: Some(ParamValue::from("no")),
            ..crate::api::ParamSpec::default()
        }],
        ..pipeline(
            vec![
                gate,
                task("after-gate", &["gate"]),
                uses_result,
                task("after-consumer", &["uses-result"]),
            ],
            vec![],
        )
    };
    let pr = started(run(PipelineRunSpec::default()), 0);
    let d = decide(&pr, &p, &[], 1);
    assert_eq!(created(&d), ["after-gate"]);
    assert_eq!(
        skipped(&d),
        [
            ("gate", SkippingReason::WhenExpressions),
            ("uses-result", SkippingReason::MissingResults),
            ("after-consumer", SkippingReason::ParentTasks),
        ]
    );
    assert_eq!(d.skipped[0].when_expressions[0].input, "no");

    let d = decide(&pr, &p, &[ok("after-gate")], 2);
    assert!(d.condition.is_true());
    assert_eq!(d.condition.reason, reasons::COMPLETED);
    assert_eq!(
        d.condition.message,
        "Tasks Completed: 1 (Failed: 0, Cancelled 0), Skipped: 3"
    );
}

#[test]
fn a_failure_stops_scheduling_and_finally_still_runs() {
    let mut report = task("report", &[]);
    report.params = vec![
        Param::new("all", "$(tasks.status)"),
        Param::new("unit", "$(tasks.unit.status)"),
        Param::new("why", "$(tasks.unit.reason)"),
    ];
    let p = pipeline(
        vec![
            task("unit", &[]),
            task("lint", &[]),
            task("publish", &["unit", "lint"]),
        ],
        vec![report],
    );
    let pr = started(run(PipelineRunSpec::default()), 0);
    let d = decide(&pr, &p, &[failed("unit"), running("lint")], 1);
    assert!(d.create.is_empty());
    assert_eq!(skipped(&d), [("publish", SkippingReason::Stopping)]);
    assert_eq!(d.condition.reason, reasons::RUNNING);

    let d = decide(&pr, &p, &[failed("unit"), ok("lint")], 2);
    assert_eq!(created(&d), ["report"]);
    assert_eq!(d.finally_start_time, Some(at(2)));
    assert_eq!(d.create[0].member_of, MemberOf::Finally);
    let params: Vec<&ParamValue> = d.create[0].params.iter().map(|p| &p.value).collect();
    assert_eq!(
        params,
        [
            &ParamValue::from("Failed"),
            &ParamValue::from("Failed"),
            &ParamValue::from("Failed")
        ]
    );

    let d = decide(&pr, &p, &[failed("unit"), ok("lint"), ok("report")], 3);
    assert!(d.condition.is_false());
    assert_eq!(d.condition.reason, reasons::FAILED);
    assert_eq!(
        d.condition.message,
        "Tasks Completed: 3 (Failed: 1, Cancelled 0), Skipped: 1"
    );
}

#[test]
fn failed_task_runs_are_retried_until_retries_run_out() {
    let mut flaky = task("flaky", &[]);
    flaky.retries = Some(2);
    let p = pipeline(vec![flaky], vec![]);
    let pr = started(run(PipelineRunSpec::default()), 0);
    let d = decide(&pr, &p, &[failed("flaky")], 1);
    assert_eq!(
        d.retry,
        [RetryTaskRun {
            name: "pr-flaky".into(),
            pipeline_task: "flaky".into(),
            attempt: 1
        }]
    );
    assert!(d.condition.is_unknown());
    let mut second = failed("flaky");
    second.retries_done = 1;
    assert_eq!(decide(&pr, &p, &[second.clone()], 2).retry[0].attempt, 2);
    second.retries_done = 2;
    let d = decide(&pr, &p, &[second], 3);
    assert!(d.retry.is_empty());
    assert_eq!(d.condition.reason, reasons::FAILED);
    let mut cancelled = done("flaky", ConditionStatus::False, task_run_reasons::CANCELLED);
    cancelled.cancel_requested = true;
    let d = decide(&pr, &p, &[cancelled], 4);
    assert!(d.retry.is_empty(), "cancellation is never retried");
    assert_eq!(d.condition.reason, reasons::CANCELLED);
}

#[test]
fn on_error_continue_lets_dependents_run() {
    let mut lint = task("lint", &[]);
    lint.on_error = Some("continue".into());
    let p = pipeline(vec![lint, task("build", &["lint"])], vec![]);
    let pr = started(run(PipelineRunSpec::default()), 0);
    let d = decide(&pr, &p, &[failed("lint")], 1);
    assert_eq!(created(&d), ["build"]);
    let d = decide(&pr, &p, &[failed("lint"), ok("build")], 2);
    assert!(d.condition.is_true());
}

#[test]
fn a_result_a_succeeded_task_never_wrote_fails_the_run() {
    let mut build = task("build", &["clone"]);
    build.params = vec![Param::new("rev", "$(tasks.clone.results.commit)")];
    let p = pipeline(vec![task("clone", &[]), build], vec![]);
    let pr = started(run(PipelineRunSpec::default()), 0);
    let d = decide(&pr, &p, &[ok("clone")], 1);
    assert!(d.condition.is_false());
    assert_eq!(d.condition.reason, reasons::INVALID_TASK_RESULT_REFERENCE);
    assert!(
        d.condition.message.contains("commit"),
        "{}",
        d.condition.message
    );
}

#[test]
fn finally_tasks_reading_missing_results_are_skipped() {
    let mut notify = task("notify", &[]);
    notify.params = vec![Param::new("digest", "$(tasks.build.results.digest)")];
    let p = pipeline(vec![task("build", &[])], vec![notify, task("cleanup", &[])]);
    let pr = started(run(PipelineRunSpec::default()), 0);
    let d = decide(&pr, &p, &[failed("build")], 1);
    assert_eq!(created(&d), ["cleanup"]);
    assert_eq!(skipped(&d), [("notify", SkippingReason::MissingResults)]);
}

#[test]
fn the_pipeline_timeout_cancels_everything_and_fails_the_run() {
    let p = pipeline(
        vec![task("a", &[]), task("b", &["a"])],
        vec![task("f", &[])],
    );
    let pr = started(
        run(PipelineRunSpec {
            timeouts: Some(TimeoutFields {
                pipeline: Some("30m".into()),
                ..TimeoutFields::default()
            }),
            ..PipelineRunSpec::default()
        }),
        0,
    );
    let d = decide(&pr, &p, &[running("a")], 10);
    assert_eq!(d.requeue_after, Some(Duration::from_secs(20 * 60)));
    let d = decide(&pr, &p, &[running("a")], 30);
    assert!(d.condition.is_false());
    assert_eq!(d.condition.reason, reasons::TIMED_OUT);
    assert_eq!(
        d.condition.message,
        "PipelineRun \"pr\" failed to finish within \"30m0s\""
    );
    assert_eq!(
        d.cancel,
        [CancelTaskRun {
            name: "pr-a".into(),
            pipeline_task: "a".into(),
            message: CANCELLED_BY_TIMEOUT
        }]
    );
    assert_eq!(
        skipped(&d),
        [
            ("b", SkippingReason::PipelineTimedOut),
            ("f", SkippingReason::PipelineTimedOut)
        ]
    );
    assert_eq!(d.completion_time, Some(at(30)));
}

#[test]
fn the_tasks_timeout_cancels_dag_tasks_then_runs_finally() {
    let p = pipeline(
        vec![task("a", &[]), task("b", &["a"]), task("c", &[])],
        vec![task("f", &[])],
    );
    let pr = started(
        run(PipelineRunSpec {
            timeouts: Some(TimeoutFields {
                pipeline: Some("1h".into()),
                tasks: Some("20m".into()),
                finally: None,
            }),
            ..PipelineRunSpec::default()
        }),
        0,
    );
    let d = decide(&pr, &p, &[ok("a"), running("c")], 20);
    assert_eq!(
        d.cancel,
        [CancelTaskRun {
            name: "pr-c".into(),
            pipeline_task: "c".into(),
            message: CANCELLED_BY_TIMEOUT
        }]
    );
    assert!(d.create.is_empty());
    assert_eq!(skipped(&d), [("b", SkippingReason::TasksTimedOut)]);
    assert!(d.condition.is_unknown());

    let mut c = done("c", ConditionStatus::False, task_run_reasons::CANCELLED);
    c.cancel_requested = true;
    c.status_message = Some(CANCELLED_BY_TIMEOUT.into());
    let children = [ok("a"), c];
    let d = decide(&pr, &p, &children, 21);
    assert_eq!(created(&d), ["f"]);
    // Finally gets the pipeline budget minus the tasks budget: 40m.
    assert_eq!(d.create[0].timeout, Some(Duration::from_secs(40 * 60)));

    let mut with_f = children.to_vec();
    with_f.push(ok("f"));
    let d = decide(&pr, &p, &with_f, 22);
    assert!(d.condition.is_false());
    assert_eq!(d.condition.reason, reasons::FAILED);
    assert_eq!(
        d.condition.message,
        "Tasks Completed: 3 (Failed: 1, Cancelled 0), Skipped: 1"
    );
}

#[test]
fn task_run_timeouts_take_the_smaller_of_budget_and_task_timeout() {
    let mut slow = task("slow", &[]);
    slow.timeout = Some("50m".into());
    let mut quick = task("quick", &[]);
    quick.timeout = Some("5m".into());
    let p = pipeline(vec![slow, quick], vec![]);
    let pr = started(run(PipelineRunSpec::default()), 0);
    let d = decide(&pr, &p, &[], 30);
    let timeouts: Vec<Option<Duration>> = d.create.iter().map(|c| c.timeout).collect();
    assert_eq!(
        timeouts,
        [
            Some(Duration::from_secs(30 * 60)),
            Some(Duration::from_secs(5 * 60))
        ]
    );
    let no_limit = run(PipelineRunSpec {
        timeouts: Some(TimeoutFields {
            pipeline: Some("0".into()),
            ..TimeoutFields::default()
        }),
        ..PipelineRunSpec::default()
    });
    let d = decide(&no_limit, &p, &[], 0);
    assert_eq!(d.create[0].timeout, Some(Duration::from_secs(50 * 60)));
    assert_eq!(d.requeue_after, None);
}

#[test]
fn cancelled_stops_children_and_skips_finally() {
    let p = pipeline(vec![task("a", &[]), task("b", &[])], vec![task("f", &[])]);
    let pr = started(
        run(PipelineRunSpec {
            status: Some(PipelineRunSpecStatus::Cancelled),
            ..PipelineRunSpec::default()
        }),
        0,
    );
    let d = decide(&pr, &p, &[running("a"), ok("b")], 1);
    assert_eq!(d.cancel.len(), 1);
    assert_eq!(d.cancel[0].message, CANCELLED_BY_PIPELINE_RUN);
    assert!(d.condition.is_unknown());
    assert_eq!(d.condition.reason, reasons::CANCELLED);
    let mut a = done("a", ConditionStatus::False, task_run_reasons::CANCELLED);
    a.cancel_requested = true;
    let d = decide(&pr, &p, &[a, ok("b")], 2);
    assert!(d.create.is_empty());
    assert!(d.cancel.is_empty());
    assert!(d.condition.is_false());
    assert_eq!(d.condition.message, "PipelineRun \"pr\" was cancelled");
}

#[test]
fn cancelled_run_finally_cancels_children_then_runs_finally() {
    let p = pipeline(
        vec![task("a", &[]), task("b", &["a"])],
        vec![task("f", &[])],
    );
    let pr = started(
        run(PipelineRunSpec {
            status: Some(PipelineRunSpecStatus::CancelledRunFinally),
            ..PipelineRunSpec::default()
        }),
        0,
    );
    let d = decide(&pr, &p, &[running("a")], 1);
    assert_eq!(d.cancel.len(), 1);
    assert_eq!(skipped(&d), [("b", SkippingReason::GracefullyCancelled)]);
    assert_eq!(d.condition.reason, reasons::CANCELLED_RUNNING_FINALLY);
    let mut a = done("a", ConditionStatus::False, task_run_reasons::CANCELLED);
    a.cancel_requested = true;
    let d = decide(&pr, &p, &[a.clone()], 2);
    assert_eq!(created(&d), ["f"]);
    let d = decide(&pr, &p, &[a, ok("f")], 3);
    assert!(d.condition.is_false());
    assert_eq!(d.condition.reason, reasons::CANCELLED);
    assert_eq!(d.condition.message, "PipelineRun \"pr\" was cancelled");
}

#[test]
fn stopped_run_finally_lets_running_tasks_and_retries_finish() {
    let mut a = task("a", &[]);
    a.retries = Some(1);
    let p = pipeline(vec![a, task("b", &["a"])], vec![task("f", &[])]);
    let pr = started(
        run(PipelineRunSpec {
            status: Some(PipelineRunSpecStatus::StoppedRunFinally),
            ..PipelineRunSpec::default()
        }),
        0,
    );
    let d = decide(&pr, &p, &[running("a")], 1);
    assert!(d.cancel.is_empty());
    assert_eq!(skipped(&d), [("b", SkippingReason::GracefullyStopped)]);
    assert_eq!(d.condition.reason, reasons::STOPPED_RUNNING_FINALLY);
    let d = decide(&pr, &p, &[failed("a")], 2);
    assert_eq!(d.retry.len(), 1);
    let d = decide(&pr, &p, &[ok("a")], 3);
    assert_eq!(created(&d), ["f"]);
    let d = decide(&pr, &p, &[ok("a"), ok("f")], 4);
    assert_eq!(d.condition.reason, reasons::CANCELLED);
}

#[test]
fn a_pending_run_starts_nothing_until_released() {
    let p = pipeline(vec![task("a", &[])], vec![]);
    let mut pr = run(PipelineRunSpec {
        status: Some(PipelineRunSpecStatus::PipelineRunPending),
        ..PipelineRunSpec::default()
    });
    let d = decide(&pr, &p, &[], 0);
    assert!(d.create.is_empty());
    assert_eq!(d.start_time, None);
    assert_eq!(d.condition.reason, reasons::PENDING);
    assert_eq!(d.condition.message, "PipelineRun \"pr\" is pending");
    pr.spec.status = None;
    assert_eq!(created(&decide(&pr, &p, &[], 5)), ["a"]);
}

#[test]
fn an_ended_run_stays_ended() {
    let p = pipeline(vec![task("a", &[])], vec![]);
    let mut pr = started(run(PipelineRunSpec::default()), 0);
    let d = decide(&pr, &p, &[ok("a")], 1);
    d.apply_to(pr.status.get_or_insert_with(Default::default), at(1));
    let again = decide(&pr, &p, &[ok("a")], 100);
    assert_eq!(again.condition, d.condition);
    assert!(again.create.is_empty() && again.cancel.is_empty());
    assert_eq!(again.completion_time, None);
}

#[test]
fn pipeline_results_come_from_task_and_finally_results() {
    let mut p = pipeline(vec![task("build", &[])], vec![task("sign", &[])]);
    p.results = vec![
        PipelineResult {
            name: "digest".into(),
            value: ParamValue::from("$(tasks.build.results.IMAGE_DIGEST)"),
            ..PipelineResult::default()
        },
        PipelineResult {
            name: "ref".into(),
            value: ParamValue::from(
                "$(tasks.build.results.IMAGE_URL)@$(tasks.build.results.IMAGE_DIGEST)",
            ),
            ..PipelineResult::default()
        },
        PipelineResult {
            name: "signature".into(),
            value: ParamValue::from("$(finally.sign.results.sig)"),
            ..PipelineResult::default()
        },
        PipelineResult {
            name: "never".into(),
            value: ParamValue::from("$(tasks.build.results.nope)"),
            ..PipelineResult::default()
        },
    ];
    let pr = started(run(PipelineRunSpec::default()), 0);
    let build = with_result(
        with_result(ok("build"), "IMAGE_DIGEST", "sha256:1"),
        "IMAGE_URL",
        "reg/app",
    );
    let d = decide(&pr, &p, &[build, with_result(ok("sign"), "sig", "s")], 1);
    let results: Vec<(&str, &ParamValue)> = d
        .results
        .iter()
        .map(|r| (r.name.as_str(), &r.value))
        .collect();
    assert_eq!(
        results,
        [
            ("digest", &ParamValue::from("sha256:1")),
            ("ref", &ParamValue::from("reg/app@sha256:1")),
            ("signature", &ParamValue::from("s")),
        ]
    );
}

#[test]
fn new_task_runs_carry_labels_workspaces_and_service_account() {
    let mut build = task("build", &[]);
    build.workspaces = vec![WorkspacePipelineTaskBinding {
        name: "source".into(),
        workspace: Some("shared".into()),
        sub_path: Some("src".into()),
    }];
    let mut p = pipeline(vec![build], vec![]);
    p.workspaces = vec![PipelineWorkspaceDeclaration {
        name: "shared".into(),
        ..PipelineWorkspaceDeclaration::default()
    }];
    let mut spec = PipelineRunSpec {
        workspaces: vec![WorkspaceBinding {
            name: "shared".into(),
            sub_path: Some("run-1".into()),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: "cache".into(),
                read_only: None,
            }),
            ..WorkspaceBinding::default()
        }],
        ..PipelineRunSpec::default()
    };
    spec.task_run_template.service_account_name = Some("builder".into());
    let pr = run(spec);
    let d = decide(&pr, &p, &[], 0);
    let tr = d.create[0].to_task_run(&pr, &p);
    assert_eq!(tr.metadata.name.as_deref(), Some("pr-build"));
    assert_eq!(tr.metadata.namespace.as_deref(), Some("ci"));
    let l = tr.metadata.labels.clone().unwrap_or_default();
    assert_eq!(l[labels::PIPELINE_RUN], "pr");
    assert_eq!(l[labels::PIPELINE_TASK], "build");
    assert_eq!(l[labels::MEMBER_OF], "tasks");
    assert_eq!(l[labels::TASK], "build");
    let owner = &tr.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("PipelineRun", "uid-1")
    );
    assert_eq!(tr.spec.service_account_name.as_deref(), Some("builder"));
    assert_eq!(tr.spec.timeout.as_deref(), Some("1h0m0s"));
    assert_eq!(tr.spec.workspaces[0].name, "source");
    assert_eq!(tr.spec.workspaces[0].sub_path.as_deref(), Some("run-1/src"));
    assert_eq!(tr.spec.workspaces[0].claim_name(), "cache");
    let child = ChildRun::from_task_run(&tr).expect("labelled");
    assert_eq!(child.pipeline_task, "build");
}

#[test]
fn a_cycle_fails_the_run() {
    let p = pipeline(vec![task("a", &["b"]), task("b", &["a"])], vec![]);
    let d = decide(&run(PipelineRunSpec::default()), &p, &[], 0);
    assert_eq!(d.condition.reason, reasons::INVALID_GRAPH);
    assert_eq!(d.condition.message, "the tasks form a cycle: a -> b -> a");
}

#[test]
fn a_param_without_value_or_default_fails_the_run() {
    let mut p = pipeline(vec![task("a", &[])], vec![]);
    p.params = vec![crate::api::ParamSpec::string("image")];
    let d = decide(&run(PipelineRunSpec::default()), &p, &[], 0);
    assert_eq!(d.condition.reason, reasons::PARAMETER_MISSING);
}

#[test]
fn pipeline_params_and_context_are_propagated_into_embedded_task_specs() {
    let yaml = r#"
name: show
params:
  - {name: url, value: $(params.repo.url)}
  - {name: note, value: "task's own"}
taskSpec:
  params: [{name: url}, {name: note}]
  steps:
    - name: print
      image: alpine
      args: ["$(params.platforms[*])", "$(params.url)"]
      script: |
        echo "$(params.note) $(params.release) $(params.repo.revision)"
        echo "$(context.pipelineRun.name) $(context.taskRun.name)"
"#;
    let show: PipelineTask = serde_yaml::from_str(yaml).expect("valid test input");
    let mut p = pipeline(vec![show], vec![]);
    p.params = vec![
        crate::api::ParamSpec {
            name: "platforms".into(),
            type_: Some(crate::api::ParamType::Array),
            ..crate::api::ParamSpec::default()
        },
        crate::api::ParamSpec {
            name: "repo".into(),
            type_: Some(crate::api::ParamType::Object),
            properties: [
                ("url".to_owned(), crate::api::PropertySpec::default()),
                ("revision".to_owned(), crate::api::PropertySpec::default()),
            ]
            .into(),
            ..crate::api::ParamSpec::default()
        },
        crate::api::ParamSpec::string("release"),
        crate::api::ParamSpec::string("note"),
    ];
    let pr = run(PipelineRunSpec {
        params: vec![
            Param::new(
                "platforms",
                ParamValue::Array(vec!["linux/amd64".into(), "linux/arm64".into()]),
            ),
            Param::new(
                "repo",
                ParamValue::Object(
                    [
                        ("url".to_owned(), "https://git/x".to_owned()),
                        ("revision".to_owned(), "main".to_owned()),
                    ]
                    .into(),
                ),
            ),
            Param::new("release", "nightly"),
            Param::new("note", "pipeline's"),
        ],
        ..PipelineRunSpec::default()
    });
    let d = decide(&pr, &p, &[], 0);
    assert_eq!(created(&d), ["show"], "{:?}", d.condition);
    let tr = d.create[0].to_task_run(&pr, &p);
    let spec = tr.spec.task_spec.expect("an embedded spec");
    let step = &spec.steps[0];
    assert_eq!(step.args, ["linux/amd64", "linux/arm64", "$(params.url)"]);
    assert_eq!(
        step.script.as_deref(),
        Some("echo \"$(params.note) nightly main\"\necho \"pr $(context.taskRun.name)\"\n"),
        "params the task passes itself and task-scope references are the Task's"
    );
    let given: Vec<&str> = tr.spec.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(given, ["url", "note"]);
}

#[test]
fn workspace_sub_paths_are_resolved_at_pipeline_scope() {
    let mut build = task("build", &[]);
    build.workspaces = vec![WorkspacePipelineTaskBinding {
        name: "source".into(),
        workspace: Some("shared".into()),
        sub_path: Some("$(params.dir)/$(context.pipelineRun.name)".into()),
    }];
    let mut p = pipeline(vec![build], vec![]);
    p.params = vec![crate::api::ParamSpec::string("dir")];
    p.workspaces = vec![PipelineWorkspaceDeclaration {
        name: "shared".into(),
        ..PipelineWorkspaceDeclaration::default()
    }];
    let pr = run(PipelineRunSpec {
        params: vec![Param::new("dir", "checkout")],
        workspaces: vec![WorkspaceBinding::empty_dir("shared")],
        ..PipelineRunSpec::default()
    });
    let d = decide(&pr, &p, &[], 0);
    let tr = d.create[0].to_task_run(&pr, &p);
    assert_eq!(
        tr.spec.workspaces[0].sub_path.as_deref(),
        Some("checkout/pr")
    );
}

#[test]
fn a_required_workspace_the_run_does_not_bind_fails_the_run_up_front() {
    let mut build = task("build", &[]);
    build.workspaces = vec![
        WorkspacePipelineTaskBinding {
            name: "source".into(),
            ..WorkspacePipelineTaskBinding::default()
        },
        WorkspacePipelineTaskBinding {
            name: "cache".into(),
            ..WorkspacePipelineTaskBinding::default()
        },
    ];
    let mut p = pipeline(vec![build], vec![]);
    p.workspaces = vec![
        PipelineWorkspaceDeclaration {
            name: "source".into(),
            ..PipelineWorkspaceDeclaration::default()
        },
        PipelineWorkspaceDeclaration {
            name: "cache".into(),
            optional: Some(true),
            ..PipelineWorkspaceDeclaration::default()
        },
    ];
    let d = decide(&run(PipelineRunSpec::default()), &p, &[], 0);
    assert!(d.create.is_empty());
    assert!(d.condition.is_false());
    assert_eq!(d.condition.reason, reasons::INVALID_WORKSPACE_BINDINGS);
    assert_eq!(
        d.condition.message,
        "PipelineRun \"pr\" doesn't bind Pipeline \"pr\"'s Workspaces correctly: \
         pipeline requires workspace with name \"source\" be provided by pipelinerun"
    );

    // The optional one may stay unbound; the TaskRun then goes without it.
    let pr = run(PipelineRunSpec {
        workspaces: vec![WorkspaceBinding::empty_dir("source")],
        ..PipelineRunSpec::default()
    });
    let d = decide(&pr, &p, &[], 0);
    assert_eq!(created(&d), ["build"]);
    let tr = d.create[0].to_task_run(&pr, &p);
    let bound: Vec<&str> = tr.spec.workspaces.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(bound, ["source"]);
}

#[test]
fn a_value_outside_its_params_enum_fails_the_run() {
    let mut p = pipeline(vec![task("a", &[])], vec![]);
    p.params = vec![crate::api::ParamSpec {
        name: "env".into(),
        enum_: vec!["dev".into(), "prod".into()],
        ..crate::api::ParamSpec::default()
    }];
    let pr = run(PipelineRunSpec {
        params: vec![Param::new("env", "staging")],
        ..PipelineRunSpec::default()
    });
    let d = decide(&pr, &p, &[], 0);
    assert!(d.create.is_empty());
    assert!(d.condition.is_false());
    assert_eq!(d.condition.reason, reasons::INVALID_PARAM_VALUE);
    assert_eq!(
        d.condition.message,
        "PipelineRun \"pr\" parameters have invalid values: spec.params[0].value: \
         param \"env\" value \"staging\" is not in the enum list; allowed values: \"dev\", \"prod\""
    );
    let pr = run(PipelineRunSpec {
        params: vec![Param::new("env", "prod")],
        ..PipelineRunSpec::default()
    });
    assert_eq!(created(&decide(&pr, &p, &[], 0)), ["a"]);
}

#[test]
fn ignored_failures_count_as_failed_in_the_message_but_do_not_fail_the_run() {
    let mut lint = task("lint", &[]);
    lint.on_error = Some("continue".into());
    let p = pipeline(vec![lint, task("build", &["lint"])], vec![]);
    let pr = started(run(PipelineRunSpec::default()), 0);
    let d = decide(&pr, &p, &[failed("lint")], 1);
    assert_eq!(
        d.condition.message,
        "Tasks Completed: 1 (Failed: 0, Cancelled 0), Incomplete: 1, Skipped: 0"
    );
    let d = decide(&pr, &p, &[failed("lint"), ok("build")], 2);
    assert!(d.condition.is_true());
    assert_eq!(d.condition.reason, reasons::SUCCEEDED);
    assert_eq!(
        d.condition.message,
        "Tasks Completed: 2 (Failed: 1 (Ignored: 1), Cancelled 0), Skipped: 0"
    );
}

#[test]
fn cancel_messages_are_upstreams() {
    assert_eq!(
        CANCELLED_BY_PIPELINE_RUN,
        "TaskRun cancelled as the PipelineRun it belongs to has been cancelled."
    );
    assert_eq!(
        CANCELLED_BY_TIMEOUT,
        "TaskRun cancelled as the PipelineRun it belongs to has timed out."
    );
}

// ---------------------------------------------------------------------------
// Property: on random DAGs, tasks start only after their parents succeeded,
// finally only after every DAG task ended, nothing starts twice, and the
// run always ends when every started TaskRun eventually ends.
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Scenario {
    /// Per task: its parents (lower indexes only, so the graph is acyclic).
    parents: Vec<Vec<usize>>,
    /// Per task: how many retries it has.
    retries: Vec<u8>,
    /// Per task attempt: whether it succeeds (cycled).
    outcomes: Vec<bool>,
    finally: usize,
    /// At which step (if any) the user changes spec.status.
    interrupt: Option<(usize, u8)>,
    /// Minutes per step.
    step_minutes: i64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    (1usize..8)
        .prop_flat_map(|n| {
            let parents = (0..n)
                .map(|i| proptest::sample::subsequence((0..i).collect::<Vec<_>>(), 0..=i))
                .collect::<Vec<_>>();
            (
                parents,
                proptest::collection::vec(0u8..3, n),
                proptest::collection::vec(proptest::bool::weighted(0.8), 1..16),
                0usize..3,
                proptest::option::of((0usize..12, 0u8..3)),
                1i64..12,
            )
        })
        .prop_map(
            |(parents, retries, outcomes, finally, interrupt, step_minutes)| Scenario {
                parents,
                retries,
                outcomes,
                finally,
                interrupt,
                step_minutes,
            },
        )
}

fn scenario_pipeline(s: &Scenario) -> PipelineSpec {
    let name = |i: usize| format!("t{i}");
    let tasks = s
        .parents
        .iter()
        .enumerate()
        .map(|(i, ps)| PipelineTask {
            run_after: ps.iter().map(|p| name(*p)).collect(),
            retries: Some(i32::from(s.retries[i])),
            ..PipelineTask::referring(name(i), "t")
        })
        .collect();
    let finally = (0..s.finally)
        .map(|i| PipelineTask::referring(format!("f{i}"), "f"))
        .collect();
    pipeline(tasks, finally)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn tasks_start_after_parents_succeed_and_runs_always_end(s in scenario()) {
        let p = scenario_pipeline(&s);
        let parents: BTreeMap<String, BTreeSet<String>> = p
            .tasks
            .iter()
            .map(|t| (t.name.clone(), t.run_after.iter().cloned().collect()))
            .collect();
        let mut pr = run(PipelineRunSpec::default());
        let mut children: Vec<ChildRun> = Vec::new();
        let mut attempt = 0usize;
        let mut minutes = 0i64;
        let mut ended = false;
        for step in 0..200 {
            if let Some((when, what)) = s.interrupt && when == step {
                pr.spec.status = Some(match what {
                    0 => PipelineRunSpecStatus::Cancelled,
                    1 => PipelineRunSpecStatus::CancelledRunFinally,
                    _ => PipelineRunSpecStatus::StoppedRunFinally,
                });
            }
            let d = decide(&pr, &p, &children, minutes);
            let by_task: BTreeMap<&str, &ChildRun> =
                children.iter().map(|c| (c.pipeline_task.as_str(), c)).collect();
            for new in &d.create {
                prop_assert!(!by_task.contains_key(new.pipeline_task.as_str()),
                    "{} started twice", new.pipeline_task);
                if let Some(ps) = parents.get(&new.pipeline_task) {
                    for parent in ps {
                        let parent_ok = by_task
                            .get(parent.as_str())
                            .and_then(|c| c.succeeded.as_ref())
                            .is_some_and(Condition::is_true);
                        prop_assert!(parent_ok, "{} started before {parent} succeeded", new.pipeline_task);
                    }
                } else {
                    for t in &p.tasks {
                        let ended = by_task
                            .get(t.name.as_str())
                            .and_then(|c| c.succeeded.as_ref())
                            .is_some_and(|c| !c.is_unknown())
                            || d.skipped.iter().any(|sk| sk.name == t.name);
                        prop_assert!(ended, "finally {} started before {} ended", new.pipeline_task, t.name);
                    }
                }
            }
            let status = pr.status.get_or_insert_with(Default::default);
            d.apply_to(status, at(minutes));
            if d.is_done() {
                prop_assert!(d.completion_time.is_some());
                ended = true;
                break;
            }
            for c in &d.cancel {
                if let Some(child) = children.iter_mut().find(|x| x.name == c.name) {
                    child.cancel_requested = true;
                    child.status_message = Some(c.message.to_owned());
                }
            }
            for r in &d.retry {
                if let Some(child) = children.iter_mut().find(|x| x.name == r.name) {
                    prop_assert_eq!(r.attempt, child.retries_done + 1);
                    child.retries_done += 1;
                    child.succeeded = None;
                }
            }
            children.extend(d.create.iter().map(|n| ChildRun::started(n.name.clone(), n.pipeline_task.clone())));
            // Every running child ends: cancelled ones as cancelled, the
            // others as the scenario says.
            for child in children.iter_mut().filter(|c| c.succeeded.is_none()) {
                let (status, reason) = if child.cancel_requested {
                    (ConditionStatus::False, task_run_reasons::CANCELLED)
                } else {
                    attempt += 1;
                    if s.outcomes[attempt % s.outcomes.len()] {
                        (ConditionStatus::True, task_run_reasons::SUCCEEDED)
                    } else {
                        (ConditionStatus::False, task_run_reasons::FAILED)
                    }
                };
                child.succeeded = Some(Condition::new(SUCCEEDED, status).with_reason(reason, ""));
            }
            minutes += s.step_minutes;
        }
        prop_assert!(ended, "the run did not end");
    }
}
