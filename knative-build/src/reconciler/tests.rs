//! The reconcilers against the in-memory store and a mocked executor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use knative_core::condition::ConditionStatus;
use knative_core::runtime::Reconciler;
use knative_core::store::{InMemoryStore, Objects};
use tokio::sync::watch;

use super::*;
use crate::api::{ParamValue, TaskRunSpecStatus, labels};
use crate::executor::{
    CancelHandle, Execution, ExecutionFailure, ExecutionPhase, ExecutionStatus, MockStepExecutor,
    RunKey, RunPaths, StepOutcome, StepPhase,
};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const NS: &str = "ci";

fn execution(status: ExecutionStatus) -> (Execution, watch::Sender<ExecutionStatus>) {
    let (sender, receiver) = watch::channel(status);
    let (cancel, _signal) = CancelHandle::new();
    (
        Execution {
            status: receiver,
            cancel,
        },
        sender,
    )
}

fn running(pod: &str) -> ExecutionStatus {
    ExecutionStatus {
        pod_name: pod.to_owned(),
        phase: ExecutionPhase::Running,
        steps: vec![StepOutcome {
            name: "list".into(),
            container: "step-list".into(),
            phase: StepPhase::Running,
            ..StepOutcome::default()
        }],
        ..ExecutionStatus::default()
    }
}

fn paths() -> RunPaths {
    RunPaths {
        results_dir: "/run/results".into(),
        steps_dir: "/run/steps".into(),
        workspaces: [("src".to_owned(), "/claims/src".to_owned())].into(),
        credentials: "/run/creds".into(),
    }
}

struct Fixture {
    store: InMemoryStore,
    task_runs: Arc<dyn Objects<TaskRun>>,
    tasks: Arc<dyn Objects<Task>>,
}

impl Fixture {
    fn new() -> Self {
        let store = InMemoryStore::new();
        Fixture {
            task_runs: Arc::new(store.objects::<TaskRun>()),
            tasks: Arc::new(store.objects::<Task>()),
            store,
        }
    }

    fn reconciler(&self, executor: MockStepExecutor) -> TaskRunReconciler {
        TaskRunReconciler::new(
            Arc::clone(&self.task_runs),
            Arc::clone(&self.tasks),
            Arc::new(executor),
        )
    }

    async fn create<K: knative_core::store::ApiObject>(
        &self,
        yaml: &str,
    ) -> Result<K, Box<dyn std::error::Error>> {
        let mut obj: K = serde_yaml::from_str(yaml)?;
        obj.meta_mut().namespace = Some(NS.to_owned());
        Ok(self.store.objects::<K>().create(&obj).await?)
    }

    async fn task_run(&self, name: &str) -> Result<TaskRun, Box<dyn std::error::Error>> {
        Ok(self.task_runs.get(Some(NS), name).await?)
    }

    /// Writes `status` onto the stored TaskRun.
    async fn set_status(
        &self,
        name: &str,
        status: TaskRunStatus,
    ) -> Result<TaskRun, Box<dyn std::error::Error>> {
        let mut tr = self.task_run(name).await?;
        tr.status = Some(status);
        Ok(self.task_runs.replace_status(&tr).await?)
    }
}

const TASK: &str = r#"
apiVersion: tekton.dev/v1
kind: Task
metadata: {name: list}
spec:
  params: [{name: flags, type: array, default: ["-l"]}]
  workspaces: [{name: src}]
  results: [{name: files, type: array}, {name: count}]
  steps:
    - name: list
      image: alpine
      command: [ls, "$(params.flags[*])", "$(workspaces.src.path)"]
    - name: count
      image: alpine
      script: ls $(workspaces.src.path) | wc -l > $(results.count.path)
"#;

const RUN: &str = r#"
apiVersion: tekton.dev/v1
kind: TaskRun
metadata: {name: list-1}
spec:
  taskRef: {name: list}
  workspaces: [{name: src, emptyDir: {}}]
"#;

fn condition(tr: &TaskRun) -> (ConditionStatus, String, String) {
    tr.succeeded().map_or(
        (ConditionStatus::Unknown, String::new(), String::new()),
        |c| (c.status, c.reason.clone(), c.message.clone()),
    )
}

#[tokio::test]
async fn starting_a_task_run_substitutes_the_executors_paths() -> TestResult {
    let f = Fixture::new();
    f.create::<Task>(TASK).await?;
    let tr = f.create::<TaskRun>(RUN).await?;
    let (exec, _sender) = execution(running("list-1-pod"));
    let mut executor = MockStepExecutor::new();
    executor.expect_execution().returning(|_| None);
    executor
        .expect_paths()
        .withf(|key, spec, bindings| {
            *key == RunKey::new(NS, "list-1", 0) && spec.steps.len() == 2 && bindings.len() == 1
        })
        .returning(|_, _, _| Ok(paths()));
    executor
        .expect_start()
        .withf(|request| {
            let steps = &request.task_spec.steps;
            steps[0].command == ["ls", "-l", "/claims/src"]
                && steps[1].script.as_deref() == Some("ls /claims/src | wc -l > /run/results/count")
                && request.timeout == Some(Duration::from_secs(3600))
        })
        .times(1)
        .return_once(move |_| Ok(exec));
    let reconciler = f.reconciler(executor);
    reconciler.reconcile(Arc::new(tr)).await?;

    let tr = f.task_run("list-1").await?;
    assert_eq!(
        condition(&tr),
        (
            ConditionStatus::Unknown,
            task_run_reasons::RUNNING.to_owned(),
            "Not all Steps in the Task have finished executing".to_owned()
        )
    );
    let status = tr.status.as_ref().ok_or("a status")?;
    assert_eq!(status.pod_name.as_deref(), Some("list-1-pod"));
    assert!(status.start_time.is_some());
    assert!(status.completion_time.is_none());
    assert_eq!(
        status.task_spec.as_ref().map(|s| s.steps.len()),
        Some(2),
        "the spec that runs is recorded"
    );
    assert!(status.steps[0].state.running.is_some());
    Ok(())
}

#[tokio::test]
async fn a_finished_attempt_writes_typed_results_and_ends_the_task_run() -> TestResult {
    let f = Fixture::new();
    let task: Task = f.create(TASK).await?;
    f.create::<TaskRun>(RUN).await?;
    let started = TaskRunStatus {
        start_time: Some(Time(Timestamp::now())),
        task_spec: Some(task.spec),
        ..TaskRunStatus::default()
    };
    let tr = f.set_status("list-1", started).await?;
    let mut done = running("list-1-pod");
    done.phase = ExecutionPhase::Succeeded;
    done.steps[0].phase = StepPhase::Terminated;
    done.steps[0].exit_code = Some(0);
    done.steps[0].termination_reason = Some("Completed".into());
    done.results = BTreeMap::from([
        ("files".to_owned(), r#"["a","b"]"#.to_owned()),
        ("count".to_owned(), "2\n".to_owned()),
    ]);
    let (exec, _sender) = execution(done);
    let mut executor = MockStepExecutor::new();
    executor
        .expect_execution()
        .returning(move |_| Some(exec.clone()));
    executor
        .expect_forget()
        .withf(|key| *key == RunKey::new(NS, "list-1", 0))
        .times(1)
        .return_const(());
    f.reconciler(executor).reconcile(Arc::new(tr)).await?;

    let tr = f.task_run("list-1").await?;
    assert_eq!(condition(&tr).1, task_run_reasons::SUCCEEDED);
    let status = tr.status.as_ref().ok_or("a status")?;
    assert!(status.completion_time.is_some());
    assert_eq!(
        status.result("files").map(|r| &r.value),
        Some(&ParamValue::Array(vec!["a".into(), "b".into()]))
    );
    assert_eq!(
        status.result("count").map(|r| &r.value),
        Some(&ParamValue::from("2\n")),
        "results are kept verbatim"
    );
    let terminated = status.steps[0]
        .state
        .terminated
        .as_ref()
        .ok_or("a terminated step")?;
    assert_eq!(terminated.exit_code, 0);
    Ok(())
}

#[tokio::test]
async fn a_result_that_is_not_of_its_declared_type_fails_the_task_run() -> TestResult {
    let task: Task = serde_yaml::from_str(TASK)?;
    let raw = BTreeMap::from([("files".to_owned(), "a b".to_owned())]);
    let err = task_run_results(&task.spec, &raw).err().ok_or("an error")?;
    assert_eq!(
        err,
        "result \"files\" is declared as array but its value is not a JSON array: \"a b\""
    );
    Ok(())
}

#[tokio::test]
async fn cancelling_a_task_run_stops_its_attempt_then_ends_it() -> TestResult {
    let f = Fixture::new();
    let task: Task = f.create(TASK).await?;
    f.create::<TaskRun>(RUN).await?;
    f.set_status(
        "list-1",
        TaskRunStatus {
            start_time: Some(Time(Timestamp::now())),
            task_spec: Some(task.spec),
            ..TaskRunStatus::default()
        },
    )
    .await?;
    let mut tr = f.task_run("list-1").await?;
    tr.spec.status = Some(TaskRunSpecStatus::TaskRunCancelled);
    tr.spec.status_message = Some("no longer needed".into());
    let tr = f.task_runs.replace(&tr).await?;

    let (exec, sender) = execution(running("list-1-pod"));
    let cancel = exec.cancel.clone();
    let mut executor = MockStepExecutor::new();
    executor
        .expect_execution()
        .returning(move |_| Some(exec.clone()));
    executor.expect_forget().return_const(());
    let reconciler = f.reconciler(executor);
    reconciler.reconcile(Arc::new(tr.clone())).await?;
    assert!(cancel.is_cancelled(), "the attempt was asked to stop");
    assert!(f.task_run("list-1").await?.succeeded().is_none());

    sender.send_modify(|s| {
        s.phase = ExecutionPhase::Cancelled;
        s.failure = Some(ExecutionFailure {
            reason: task_run_reasons::CANCELLED.into(),
            message: "TaskRun \"list-1\" was cancelled".into(),
        });
    });
    reconciler.reconcile(Arc::new(tr)).await?;
    let tr = f.task_run("list-1").await?;
    assert_eq!(
        condition(&tr),
        (
            ConditionStatus::False,
            task_run_reasons::CANCELLED.to_owned(),
            "TaskRun \"list-1\" was cancelled. no longer needed".to_owned()
        )
    );
    Ok(())
}

#[tokio::test]
async fn an_attempt_the_executor_lost_ends_the_task_run() -> TestResult {
    let f = Fixture::new();
    f.create::<Task>(TASK).await?;
    f.create::<TaskRun>(RUN).await?;
    let mut status = TaskRunStatus {
        start_time: Some(Time(Timestamp::now())),
        pod_name: Some("list-1-pod".into()),
        ..TaskRunStatus::default()
    };
    set_succeeded(
        &mut status.status,
        Timestamp::now(),
        ConditionStatus::Unknown,
        task_run_reasons::RUNNING,
        "",
    );
    let tr = f.set_status("list-1", status).await?;
    let mut executor = MockStepExecutor::new();
    executor.expect_execution().returning(|_| None);
    executor.expect_start().never();
    f.reconciler(executor).reconcile(Arc::new(tr)).await?;
    let (status, reason, message) = condition(&f.task_run("list-1").await?);
    assert_eq!(status, ConditionStatus::False);
    assert_eq!(reason, task_run_reasons::EXECUTION_FAILED);
    assert_eq!(
        message,
        "the executor has no record of attempt 0 (pod \"list-1-pod\"); it may have restarted"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_task_or_an_unsupported_binding_fails_without_running() -> TestResult {
    let f = Fixture::new();
    let tr = f.create::<TaskRun>(RUN).await?;
    let mut executor = MockStepExecutor::new();
    executor.expect_execution().returning(|_| None);
    executor.expect_start().never();
    f.reconciler(executor).reconcile(Arc::new(tr)).await?;
    let (status, reason, message) = condition(&f.task_run("list-1").await?);
    assert_eq!(
        (status, reason.as_str(), message.as_str()),
        (
            ConditionStatus::False,
            task_run_reasons::COULDNT_GET_TASK,
            "Error retrieving Task for TaskRun ci/list-1: Task \"list\" not found"
        )
    );

    f.create::<Task>(TASK).await?;
    let tr = f
        .create::<TaskRun>(&RUN.replace("list-1", "list-2"))
        .await?;
    let mut executor = MockStepExecutor::new();
    executor.expect_execution().returning(|_| None);
    executor.expect_paths().returning(|_, _, _| {
        Err(crate::executor::ExecutorError::unsupported(
            "no volumes here",
        ))
    });
    executor.expect_start().never();
    f.reconciler(executor).reconcile(Arc::new(tr)).await?;
    let (status, reason, message) = condition(&f.task_run("list-2").await?);
    assert_eq!(
        (status, reason.as_str(), message.as_str()),
        (
            ConditionStatus::False,
            task_run_reasons::EXECUTION_FAILED,
            "no volumes here"
        )
    );
    Ok(())
}

/// A TaskRun with an embedded spec and params, as a PipelineRun creates it.
const PARAM_RUN: &str = r#"
apiVersion: tekton.dev/v1
kind: TaskRun
metadata: {name: show-1}
spec:
  params:
    - {name: who, value: "$(context.taskRun.name) in $(workspaces.src.path)"}
    - {name: mode, value: fast}
    - {name: dir, value: out}
  workspaces: [{name: src, emptyDir: {}, subPath: "$(params.dir)/$(context.taskRun.name)"}]
  taskSpec:
    params:
      - {name: who}
      - {name: mode, enum: [fast, safe]}
      - {name: dir}
    workspaces: [{name: src}, {name: cache, optional: true}]
    steps:
      - {name: show, image: alpine, script: "echo $(params.who) $(params.mode)"}
"#;

#[tokio::test]
async fn task_scope_references_in_param_values_and_sub_paths_are_resolved() -> TestResult {
    let f = Fixture::new();
    let tr = f.create::<TaskRun>(PARAM_RUN).await?;
    let (exec, _sender) = execution(running("show-1-pod"));
    let mut executor = MockStepExecutor::new();
    executor.expect_execution().returning(|_| None);
    executor
        .expect_paths()
        .withf(|_, _, bindings| bindings[0].sub_path.as_deref() == Some("out/show-1"))
        .returning(|_, _, _| Ok(paths()));
    executor
        .expect_start()
        .withf(|request| {
            request.task_spec.steps[0].script.as_deref() == Some("echo show-1 in /claims/src fast")
                && request.workspaces[0].sub_path.as_deref() == Some("out/show-1")
        })
        .times(1)
        .return_once(move |_| Ok(exec));
    f.reconciler(executor).reconcile(Arc::new(tr)).await?;
    let (status, reason, message) = condition(&f.task_run("show-1").await?);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::Unknown, task_run_reasons::RUNNING),
        "{message}"
    );
    Ok(())
}

#[tokio::test]
async fn a_value_outside_the_enum_fails_the_task_run_without_running() -> TestResult {
    let f = Fixture::new();
    let tr = f
        .create::<TaskRun>(&PARAM_RUN.replace("value: fast", "value: slow"))
        .await?;
    let mut executor = MockStepExecutor::new();
    executor.expect_execution().returning(|_| None);
    executor.expect_paths().never();
    executor.expect_start().never();
    f.reconciler(executor).reconcile(Arc::new(tr)).await?;
    let (status, reason, message) = condition(&f.task_run("show-1").await?);
    assert_eq!(
        (status, reason.as_str(), message.as_str()),
        (
            ConditionStatus::False,
            task_run_reasons::INVALID_PARAM_VALUE,
            "TaskRun \"show-1\" parameters have invalid values: spec.params[1].value: \
             param \"mode\" value \"slow\" is not in the enum list; allowed values: \"fast\", \"safe\""
        )
    );
    Ok(())
}

#[tokio::test]
async fn an_unbound_required_workspace_fails_the_task_run_without_running() -> TestResult {
    let f = Fixture::new();
    let tr = f
        .create::<TaskRun>(&PARAM_RUN.replace(
            "  workspaces: [{name: src, emptyDir: {}, subPath: \"$(params.dir)/$(context.taskRun.name)\"}]\n",
            "",
        ))
        .await?;
    assert!(tr.spec.workspaces.is_empty());
    let mut executor = MockStepExecutor::new();
    executor.expect_execution().returning(|_| None);
    executor.expect_paths().never();
    executor.expect_start().never();
    f.reconciler(executor).reconcile(Arc::new(tr)).await?;
    let (status, reason, message) = condition(&f.task_run("show-1").await?);
    assert_eq!(
        (status, reason.as_str(), message.as_str()),
        (
            ConditionStatus::False,
            task_run_reasons::VALIDATION_FAILED,
            "declared workspace \"src\" is required but has not been bound"
        )
    );
    Ok(())
}

#[tokio::test]
async fn a_failed_attempt_of_a_task_run_with_retries_is_archived() -> TestResult {
    let f = Fixture::new();
    let task: Task = f.create(TASK).await?;
    f.create::<TaskRun>(&RUN.replace("spec:\n", "spec:\n  retries: 1\n"))
        .await?;
    let tr = f
        .set_status(
            "list-1",
            TaskRunStatus {
                start_time: Some(Time(Timestamp::now())),
                task_spec: Some(task.spec),
                ..TaskRunStatus::default()
            },
        )
        .await?;
    let mut failed = running("list-1-pod");
    failed.phase = ExecutionPhase::Failed;
    failed.failure = Some(ExecutionFailure {
        reason: task_run_reasons::FAILED.into(),
        message: "\"step-list\" exited with code 2".into(),
    });
    let (exec, _sender) = execution(failed);
    let mut executor = MockStepExecutor::new();
    executor
        .expect_execution()
        .withf(|key| key.attempt == 0)
        .returning(move |_| Some(exec.clone()));
    executor.expect_forget().times(1).return_const(());
    f.reconciler(executor).reconcile(Arc::new(tr)).await?;

    let tr = f.task_run("list-1").await?;
    let (status, reason, _) = condition(&tr);
    assert_eq!(
        (status, reason.as_str()),
        (ConditionStatus::Unknown, task_run_reasons::TO_BE_RETRIED)
    );
    let status = tr.status.as_ref().ok_or("a status")?;
    assert_eq!(status.retries_status.len(), 1);
    assert!(status.start_time.is_none() && status.pod_name.is_none());
    let archived = status.retries_status[0].succeeded().ok_or("a condition")?;
    assert_eq!(archived.message, "\"step-list\" exited with code 2");
    assert!(status.retries_status[0].completion_time.is_some());
    Ok(())
}

#[test]
fn archiving_an_attempt_keeps_earlier_ones_and_the_spec() {
    let mut first = TaskRunStatus {
        pod_name: Some("r-pod".into()),
        start_time: Some(Time(Timestamp::UNIX_EPOCH)),
        ..TaskRunStatus::default()
    };
    set_succeeded(
        &mut first.status,
        Timestamp::UNIX_EPOCH,
        ConditionStatus::False,
        "Failed",
        "boom",
    );
    let second = archive_attempt(&first, Timestamp::UNIX_EPOCH);
    let third = archive_attempt(&second, Timestamp::UNIX_EPOCH);
    assert_eq!(third.retries_status.len(), 2);
    assert!(
        third
            .retries_status
            .iter()
            .all(|s| s.retries_status.is_empty())
    );
    assert_eq!(third.retries_status[0].pod_name.as_deref(), Some("r-pod"));
    assert_eq!(
        third.succeeded().map(|c| c.message.as_str()),
        Some("Attempt 2 failed; retrying")
    );
}

const PIPELINE_RUN: &str = r#"
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {name: pr, labels: {team: build}}
spec:
  workspaces:
    - name: shared
      volumeClaimTemplate:
        metadata: {name: data}
        spec: {accessModes: [ReadWriteOnce]}
  pipelineSpec:
    workspaces: [{name: shared}]
    tasks:
      - name: flaky
        retries: 1
        taskRef: {name: list}
        workspaces: [{name: src, workspace: shared, subPath: code}]
"#;

#[tokio::test]
async fn pipeline_runs_create_owned_task_runs_and_retry_failed_ones() -> TestResult {
    let f = Fixture::new();
    let pipeline_runs: Arc<dyn Objects<PipelineRun>> = Arc::new(f.store.objects());
    let pipelines: Arc<dyn Objects<Pipeline>> = Arc::new(f.store.objects());
    let reconciler = PipelineRunReconciler::new(
        Arc::clone(&pipeline_runs),
        pipelines,
        Arc::clone(&f.task_runs),
    );
    let pr: PipelineRun = f.create(PIPELINE_RUN).await?;
    reconciler.reconcile(Arc::new(pr.clone())).await?;

    let tr = f.task_run("pr-flaky").await?;
    let labels_map = tr.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels_map[labels::PIPELINE_RUN], "pr");
    assert_eq!(labels_map[labels::PIPELINE_TASK], "flaky");
    assert_eq!(labels_map["team"], "build");
    let owner = &tr.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(Some(owner.uid.as_str()), pr.metadata.uid.as_deref());
    let binding = &tr.spec.workspaces[0];
    let claim = binding
        .persistent_volume_claim
        .as_ref()
        .ok_or("the template became a claim")?;
    assert_eq!(claim.claim_name, claim_name(&pr, &pr.spec.workspaces[0]));
    assert!(claim.claim_name.starts_with("data-"));
    assert_eq!(binding.sub_path.as_deref(), Some("code"));

    let pr = pipeline_runs.get(Some(NS), "pr").await?;
    let status = pr.status.as_ref().ok_or("a status")?;
    assert!(status.start_time.is_some());
    assert_eq!(status.child_references.len(), 1);
    assert_eq!(pr.succeeded().map(|c| c.reason.as_str()), Some("Running"));

    // The attempt fails: the PipelineRun archives it for a retry.
    let mut failed = TaskRunStatus::default();
    set_succeeded(
        &mut failed.status,
        Timestamp::now(),
        ConditionStatus::False,
        task_run_reasons::FAILED,
        "boom",
    );
    f.set_status("pr-flaky", failed).await?;
    reconciler.reconcile(Arc::new(pr)).await?;
    let tr = f.task_run("pr-flaky").await?;
    assert_eq!(condition(&tr).1, task_run_reasons::TO_BE_RETRIED);
    assert_eq!(tr.status.as_ref().map(|s| s.retries_status.len()), Some(1));

    // The retry fails too: no retries left, the run fails.
    let mut status = tr.status.clone().unwrap_or_default();
    set_succeeded(
        &mut status.status,
        Timestamp::now(),
        ConditionStatus::False,
        task_run_reasons::FAILED,
        "boom again",
    );
    f.set_status("pr-flaky", status).await?;
    let pr = pipeline_runs.get(Some(NS), "pr").await?;
    reconciler.reconcile(Arc::new(pr)).await?;
    let pr = pipeline_runs.get(Some(NS), "pr").await?;
    let c = pr.succeeded().ok_or("a condition")?;
    assert_eq!(
        (c.status, c.reason.as_str(), c.message.as_str()),
        (
            ConditionStatus::False,
            "Failed",
            "Tasks Completed: 1 (Failed: 1, Cancelled 0), Skipped: 0"
        )
    );
    assert!(
        pr.status
            .as_ref()
            .is_some_and(|s| s.completion_time.is_some())
    );
    Ok(())
}

#[tokio::test]
async fn a_pipeline_ref_to_nothing_fails_the_run() -> TestResult {
    let f = Fixture::new();
    let pipeline_runs: Arc<dyn Objects<PipelineRun>> = Arc::new(f.store.objects());
    let reconciler = PipelineRunReconciler::new(
        Arc::clone(&pipeline_runs),
        Arc::new(f.store.objects::<Pipeline>()),
        Arc::clone(&f.task_runs),
    );
    let pr: PipelineRun = f
        .create("apiVersion: tekton.dev/v1\nkind: PipelineRun\nmetadata: {name: lost}\nspec:\n  pipelineRef: {name: nowhere}\n")
        .await?;
    reconciler.reconcile(Arc::new(pr)).await?;
    let pr = pipeline_runs.get(Some(NS), "lost").await?;
    let c = pr.succeeded().ok_or("a condition")?;
    assert_eq!(
        (c.status, c.reason.as_str(), c.message.as_str()),
        (
            ConditionStatus::False,
            "CouldntGetPipeline",
            "Error retrieving pipeline for pipelinerun ci/lost: Pipeline \"nowhere\" not found"
        )
    );
    Ok(())
}
