//! The TaskRun and PipelineRun reconcilers end to end on the in-memory
//! store with the local executor: real processes, a real git repository
//! and a real `docker-registry`, checked with `skopeo`
//! (specs/BUILD.md §1.5–§1.10, §2). Needs `git`, `docker-registry` and
//! `skopeo` on the host.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Registry, git_repo, skopeo};
use knative_build::api::{
    ParamValue, Pipeline, PipelineRun, SkippingReason, Task, TaskRun, labels, pipeline_run_reasons,
    task_run_reasons,
};
use knative_build::executor::{LocalExecutor, LocalExecutorConfig};
use knative_build::reconciler::{Build, BuildObjects};
use knative_build::scheduler::{CANCELLED_BY_PIPELINE_RUN, CANCELLED_BY_TIMEOUT};
use knative_core::store::{InMemoryStore, Objects};
use kube::ResourceExt;
use kube::core::Selector;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Error = Box<dyn std::error::Error>;

const NS: &str = "default";

fn fixture(name: &str) -> Result<String, Error> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    Ok(std::fs::read_to_string(path)?)
}

/// The build controllers over an in-memory store, stopped when dropped.
struct Platform {
    objects: BuildObjects,
    executor: LocalExecutor,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    _root: tempfile::TempDir,
}

impl Platform {
    fn start(
        configure: impl FnOnce(LocalExecutorConfig) -> LocalExecutorConfig,
    ) -> Result<Self, Error> {
        let root = tempfile::tempdir()?;
        let store = InMemoryStore::new();
        let objects = BuildObjects::in_memory(&store);
        let config = configure(
            LocalExecutorConfig::new(root.path()).termination_grace(Duration::from_millis(500)),
        );
        let executor = LocalExecutor::new(config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let build = Build::new(objects.clone(), Arc::new(executor.clone()));
        tokio::spawn(build.run(async {
            let _ = stopped.await;
        }));
        Ok(Platform {
            objects,
            executor,
            stop: Some(stop),
            _root: root,
        })
    }

    async fn create_yaml<K>(&self, objects: &Arc<dyn Objects<K>>, yaml: &str) -> Result<K, Error>
    where
        K: knative_core::store::ApiObject,
    {
        let mut obj: K = serde_yaml::from_str(yaml)?;
        obj.meta_mut().namespace = Some(NS.to_owned());
        Ok(objects.create(&obj).await?)
    }

    async fn pipeline_run_done(&self, name: &str, within: Duration) -> Result<PipelineRun, Error> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let pr = self.objects.pipeline_runs.get(Some(NS), name).await?;
            if pr.is_done() {
                return Ok(pr);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("PipelineRun {name} did not finish: {:#?}", pr.status).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn task_run_done(&self, name: &str, within: Duration) -> Result<TaskRun, Error> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let tr = self.objects.task_runs.get(Some(NS), name).await?;
            if tr.is_done() {
                return Ok(tr);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("TaskRun {name} did not finish: {:#?}", tr.status).into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn task_runs_of(&self, pipeline_run: &str) -> Result<Vec<TaskRun>, Error> {
        let selector: Selector = [(labels::PIPELINE_RUN.to_owned(), pipeline_run.to_owned())]
            .into_iter()
            .collect();
        Ok(self.objects.task_runs.list(Some(NS), &selector).await?)
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn condition(reason: Option<&knative_core::condition::Condition>) -> (String, String, String) {
    reason.map_or_else(Default::default, |c| {
        (c.status.to_string(), c.reason.clone(), c.message.clone())
    })
}

fn result<'a>(pr: &'a PipelineRun, name: &str) -> Option<&'a str> {
    pr.status
        .as_ref()?
        .results
        .iter()
        .find(|r| r.name == name)?
        .value
        .as_string()
}

/// Whether process `pid` has exited (gone, or a zombie nobody reaped yet).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

async fn read_pid(file: &Path) -> Result<u32, Error> {
    for _ in 0..400 {
        if let Ok(text) = std::fs::read_to_string(file)
            && let Ok(pid) = text.trim().parse()
        {
            return Ok(pid);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{} never held a pid", file.display()).into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_build_push_pipeline_pushes_the_image_and_reports_its_digest() -> TestResult {
    let registry = Registry::start()?;
    let sources = tempfile::tempdir()?;
    let repo = sources.path().join("repo");
    let commit = git_repo(&repo)?;
    let platform = Platform::start(|c| c.plain_http(&registry.host))?;

    platform
        .create_yaml::<Task>(&platform.objects.tasks, &fixture("task-git-clone.yaml")?)
        .await?;
    platform
        .create_yaml::<Pipeline>(
            &platform.objects.pipelines,
            &fixture("pipeline-clone-image-push.yaml")?,
        )
        .await?;
    let target = registry.image("demo/app:v1");
    let run = format!(
        r#"
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {{name: release-1}}
spec:
  pipelineRef: {{name: clone-image-push}}
  params:
    - {{name: repo-url, value: "file://{}"}}
    - {{name: image, value: "{target}"}}
  workspaces:
    - name: shared
      volumeClaimTemplate:
        spec:
          accessModes: [ReadWriteOnce]
          resources: {{requests: {{storage: 1Gi}}}}
"#,
        repo.display()
    );
    platform
        .create_yaml::<PipelineRun>(&platform.objects.pipeline_runs, &run)
        .await?;
    let pr = platform
        .pipeline_run_done("release-1", Duration::from_secs(120))
        .await?;
    let (status, reason, message) = condition(pr.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        (
            "True",
            "Succeeded",
            "Tasks Completed: 2 (Failed: 0, Cancelled 0), Skipped: 0"
        ),
        "{:#?}",
        pr.status
    );
    let digest = result(&pr, "image-digest").ok_or("an image-digest result")?;
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(result(&pr, "image-url"), Some(target.as_str()));
    assert_eq!(result(&pr, "commit"), Some(commit.as_str()));

    // The registry has the image under that digest, seen independently.
    let pinned = format!("docker://{}/demo/app@{digest}", registry.host);
    let inspect = skopeo(&["inspect", "--tls-verify=false", &pinned])?;
    assert_eq!(inspect["Digest"], *digest);
    let config = skopeo(&["inspect", "--config", "--tls-verify=false", &pinned])?;
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/bin/server"])
    );

    // Two TaskRuns, owned by the run, labelled as upstream labels them.
    let task_runs = platform.task_runs_of("release-1").await?;
    let names: Vec<String> = task_runs.iter().map(|t| t.name_any()).collect();
    assert_eq!(names, ["release-1-build-push", "release-1-fetch-source"]);
    for tr in &task_runs {
        let owner = &tr.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("PipelineRun", "release-1")
        );
        assert_eq!(tr.labels()[labels::PIPELINE], "clone-image-push");
        let status = tr.status.as_ref().ok_or("a status")?;
        assert_eq!(
            status.pod_name.as_deref(),
            Some(format!("{}-pod", tr.name_any()).as_str())
        );
        assert!(status.start_time.is_some() && status.completion_time.is_some());
        assert!(status.task_spec.is_some());
        // Both tasks saw the same claim, made from the volumeClaimTemplate.
        let binding = &tr.spec.workspaces[0];
        assert!(binding.volume_claim_template.is_none());
        let claim = binding
            .persistent_volume_claim
            .as_ref()
            .ok_or("a claim binding")?;
        assert!(claim.claim_name.starts_with("pvc-"), "{}", claim.claim_name);
    }
    let clone = &task_runs[1];
    let clone_status = clone.status.as_ref().ok_or("a status")?;
    assert_eq!(
        clone_status.result("commit").map(|r| &r.value),
        Some(&ParamValue::from(commit.as_str()))
    );
    assert_eq!(clone.labels()[labels::TASK], "git-clone");
    let build = task_runs[0].status.as_ref().ok_or("a status")?;
    let steps: Vec<(&str, Option<&str>)> = build
        .steps
        .iter()
        .map(|s| (s.name.as_str(), s.termination_reason.as_deref()))
        .collect();
    assert_eq!(
        steps,
        [
            ("check-commit", Some("Completed")),
            ("build-and-push", Some("Completed"))
        ]
    );
    let key = knative_build::executor::RunKey::new(NS, "release-1-build-push", 0);
    let log = platform.executor.log_path(&key, "step-build-and-push");
    let log = std::fs::read_to_string(log)?;
    assert!(
        log.contains(&format!("pushed {}/demo/app@{digest}", registry.host)),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_finally_and_retries_run_with_real_steps() -> TestResult {
    let platform = Platform::start(|c| c)?;
    let run = r#"
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {name: flow}
spec:
  params: [{name: deploy, value: "no"}]
  pipelineSpec:
    params: [{name: deploy}]
    tasks:
      - name: flaky
        retries: 2
        taskSpec:
          results: [{name: attempt}]
          steps:
            - name: try
              image: alpine
              script: |
                printf '%s' "$(context.task.retry-count)" > $(results.attempt.path)
                test "$(context.task.retry-count)" -ge 1
      - name: deploy
        runAfter: [flaky]
        when:
          - {input: $(params.deploy), operator: in, values: ["yes"]}
        taskSpec:
          steps: [{name: deploy, image: alpine, script: exit 1}]
    finally:
      - name: report
        params:
          - {name: flaky-status, value: $(tasks.flaky.status)}
          - {name: attempt, value: $(tasks.flaky.results.attempt)}
        taskSpec:
          params: [{name: flaky-status}, {name: attempt}]
          results: [{name: summary}]
          steps:
            - name: summarize
              image: alpine
              env:
                - {name: STATUS, value: $(params.flaky-status)}
                - {name: ATTEMPT, value: $(params.attempt)}
              script: printf '%s after attempt %s' "$STATUS" "$ATTEMPT" > $(results.summary.path)
    results:
      - name: summary
        value: $(finally.report.results.summary)
"#;
    platform
        .create_yaml::<PipelineRun>(&platform.objects.pipeline_runs, run)
        .await?;
    let pr = platform
        .pipeline_run_done("flow", Duration::from_secs(60))
        .await?;
    let (status, reason, message) = condition(pr.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        (
            "True",
            "Completed",
            "Tasks Completed: 2 (Failed: 0, Cancelled 0), Skipped: 1"
        ),
        "{:#?}",
        pr.status
    );
    assert_eq!(result(&pr, "summary"), Some("Succeeded after attempt 1"));
    let pr_status = pr.status.as_ref().ok_or("a status")?;
    assert_eq!(pr_status.skipped_tasks.len(), 1);
    assert_eq!(pr_status.skipped_tasks[0].name, "deploy");
    assert_eq!(
        pr_status.skipped_tasks[0].reason,
        SkippingReason::WhenExpressions
    );
    assert_eq!(pr_status.skipped_tasks[0].when_expressions[0].input, "no");
    assert!(pr_status.finally_start_time.is_some());

    let flaky = platform
        .objects
        .task_runs
        .get(Some(NS), "flow-flaky")
        .await?;
    let flaky_status = flaky.status.as_ref().ok_or("a status")?;
    assert_eq!(
        flaky_status.retries_status.len(),
        1,
        "one failed attempt archived"
    );
    let first = &flaky_status.retries_status[0];
    let first_condition = first.succeeded().ok_or("a condition")?;
    assert_eq!(first_condition.reason, task_run_reasons::FAILED);
    assert!(
        first_condition
            .message
            .starts_with("\"step-try\" exited with code 1")
    );
    assert_eq!(first.pod_name.as_deref(), Some("flow-flaky-pod"));
    assert_eq!(
        flaky_status.pod_name.as_deref(),
        Some("flow-flaky-pod-retry1")
    );
    assert_eq!(
        flaky_status.result("attempt").map(|r| &r.value),
        Some(&ParamValue::from("1"))
    );
    let names: Vec<String> = platform
        .task_runs_of("flow")
        .await?
        .iter()
        .map(|t| t.name_any())
        .collect();
    assert_eq!(names, ["flow-flaky", "flow-report"], "deploy never ran");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_spec_fixture_runs_with_propagated_params() -> TestResult {
    let platform = Platform::start(|c| c)?;
    let mut run: PipelineRun = serde_yaml::from_str(&fixture("pipelinerun-embedded.yaml")?)?;
    run.metadata.generate_name = None;
    run.metadata.name = Some("embedded".to_owned());
    run.metadata.namespace = Some(NS.to_owned());
    platform.objects.pipeline_runs.create(&run).await?;
    let pr = platform
        .pipeline_run_done("embedded", Duration::from_secs(60))
        .await?;
    let (status, reason, message) = condition(pr.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        (
            "True",
            pipeline_run_reasons::SUCCEEDED,
            "Tasks Completed: 2 (Failed: 0, Cancelled 0), Skipped: 0"
        ),
        "{:#?}",
        pr.status
    );
    // `$(params.note)` is a Pipeline param the embedded Task never declares.
    assert_eq!(
        result(&pr, "summary"),
        Some("https://github.com/knative-rs/knative-rs.git linux/amd64 nightly")
    );
    let show = platform
        .objects
        .task_runs
        .get(Some(NS), "embedded-show")
        .await?;
    let script = show
        .spec
        .task_spec
        .as_ref()
        .and_then(|s| s.steps[1].script.as_deref())
        .ok_or("the summarize step's script")?;
    assert!(script.contains("$(params.first) nightly"), "{script}");
    let report = platform
        .task_run_done("embedded-final-report", Duration::from_secs(10))
        .await?;
    let key = knative_build::executor::RunKey::new(NS, report.name_any(), 0);
    let logs =
        knative_build::executor::StepExecutor::logs(&platform.executor, &key, "print").await?;
    assert_eq!(
        String::from_utf8_lossy(&logs),
        "https://github.com/knative-rs/knative-rs.git linux/amd64 nightly on embedded-final-report\n"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_the_task_run_with_its_exit_code() -> TestResult {
    let platform = Platform::start(|c| c)?;
    let run = r#"
apiVersion: tekton.dev/v1
kind: TaskRun
metadata: {name: unit}
spec:
  taskSpec:
    steps:
      - {name: prepare, image: alpine, script: echo ready}
      - {name: test, image: alpine, script: 'echo "1 test failed" >&2; exit 3'}
      - {name: publish, image: alpine, script: echo never}
"#;
    platform
        .create_yaml::<TaskRun>(&platform.objects.task_runs, run)
        .await?;
    let tr = platform
        .task_run_done("unit", Duration::from_secs(30))
        .await?;
    let (status, reason, message) = condition(tr.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", task_run_reasons::FAILED)
    );
    assert!(
        message.starts_with("\"step-test\" exited with code 3 (logs: "),
        "{message}"
    );
    let status = tr.status.as_ref().ok_or("a status")?;
    let codes: Vec<(i32, Option<&str>)> = status
        .steps
        .iter()
        .map(|s| {
            let t = s.state.terminated.as_ref();
            (
                t.map_or(-1, |t| t.exit_code),
                s.termination_reason.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            (0, Some("Completed")),
            (3, Some("Error")),
            (0, Some("Skipped"))
        ]
    );
    let key = knative_build::executor::RunKey::new(NS, "unit", 0);
    let log = knative_build::executor::StepExecutor::logs(&platform.executor, &key, "test").await?;
    assert_eq!(String::from_utf8(log)?, "1 test failed\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_run_results_are_not_capped_at_4_kib_but_at_the_configured_limit() -> TestResult {
    let platform = Platform::start(|c| c.max_result_size(64 * 1024))?;
    let task = r#"
apiVersion: tekton.dev/v1
kind: Task
metadata: {name: write}
spec:
  params: [{name: bytes}]
  results: [{name: blob}]
  steps:
    - name: write
      image: alpine
      script: head -c $(params.bytes) /dev/zero | tr '\0' y > $(results.blob.path)
"#;
    platform
        .create_yaml::<Task>(&platform.objects.tasks, task)
        .await?;
    for (name, bytes) in [("eight-kib", 8192), ("too-big", 100_000)] {
        let run = format!(
            "apiVersion: tekton.dev/v1\nkind: TaskRun\nmetadata: {{name: {name}}}\nspec:\n  taskRef: {{name: write}}\n  params: [{{name: bytes, value: \"{bytes}\"}}]\n"
        );
        platform
            .create_yaml::<TaskRun>(&platform.objects.task_runs, &run)
            .await?;
    }
    let ok = platform
        .task_run_done("eight-kib", Duration::from_secs(30))
        .await?;
    assert_eq!(condition(ok.succeeded()).1, task_run_reasons::SUCCEEDED);
    let blob = ok
        .status
        .as_ref()
        .and_then(|s| s.result("blob"))
        .and_then(|r| r.value.as_string())
        .ok_or("a blob result")?;
    assert_eq!(blob.len(), 8192);

    let too_big = platform
        .task_run_done("too-big", Duration::from_secs(30))
        .await?;
    let (status, reason, message) = condition(too_big.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        (
            "False",
            task_run_reasons::RESULT_LARGER_THAN_ALLOWED,
            "result \"blob\" is 100000 bytes, more than the 65536 bytes allowed (LocalExecutorConfig::max_result_size)"
        )
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_run_timeout_stops_it_as_timed_out() -> TestResult {
    let platform = Platform::start(|c| c)?;
    let run = r#"
apiVersion: tekton.dev/v1
kind: TaskRun
metadata: {name: slow}
spec:
  timeout: 1s
  taskSpec:
    steps: [{name: sleep, image: alpine, script: sleep 60}]
"#;
    platform
        .create_yaml::<TaskRun>(&platform.objects.task_runs, run)
        .await?;
    let tr = platform
        .task_run_done("slow", Duration::from_secs(20))
        .await?;
    let (status, reason, message) = condition(tr.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        (
            "False",
            task_run_reasons::TIMED_OUT,
            "TaskRun \"slow\" failed to finish within \"1s\""
        )
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_pipeline_run_kills_its_running_steps() -> TestResult {
    let platform = Platform::start(|c| c)?;
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("sleeper.pid");
    let run = format!(
        r#"
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {{name: long}}
spec:
  pipelineSpec:
    tasks:
      - name: wait
        taskSpec:
          steps:
            - name: sleep
              image: alpine
              script: |
                sleep 300 &
                echo $! > {}
                wait
      - name: after
        runAfter: [wait]
        taskSpec:
          steps: [{{name: never, image: alpine, script: exit 0}}]
"#,
        pid_file.display()
    );
    platform
        .create_yaml::<PipelineRun>(&platform.objects.pipeline_runs, &run)
        .await?;
    let sleeper = read_pid(&pid_file).await?;
    platform
        .objects
        .pipeline_runs
        .patch(
            Some(NS),
            "long",
            &serde_json::json!({"spec": {"status": "Cancelled"}}),
        )
        .await?;
    let pr = platform
        .pipeline_run_done("long", Duration::from_secs(30))
        .await?;
    let (status, reason, message) = condition(pr.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        (
            "False",
            pipeline_run_reasons::CANCELLED,
            "PipelineRun \"long\" was cancelled"
        )
    );
    let tr = platform
        .task_run_done("long-wait", Duration::from_secs(10))
        .await?;
    let (status, reason, message) = condition(tr.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", task_run_reasons::CANCELLED)
    );
    assert_eq!(
        message,
        format!("TaskRun \"long-wait\" was cancelled. {CANCELLED_BY_PIPELINE_RUN}")
    );
    let mut gone = false;
    for _ in 0..100 {
        if process_gone(sleeper) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the step's child {sleeper} survived the cancellation");
    assert_eq!(
        platform.task_runs_of("long").await?.len(),
        1,
        "nothing new started"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pipeline_run_stops_the_steps_of_its_task_runs() -> TestResult {
    let platform = Platform::start(|c| c)?;
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("sleeper.pid");
    let run = format!(
        r#"
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {{name: doomed}}
spec:
  pipelineSpec:
    tasks:
      - name: wait
        taskSpec:
          steps:
            - name: sleep
              image: alpine
              script: |
                sleep 300 &
                echo $! > {}
                wait
"#,
        pid_file.display()
    );
    platform
        .create_yaml::<PipelineRun>(&platform.objects.pipeline_runs, &run)
        .await?;
    let sleeper = read_pid(&pid_file).await?;
    platform
        .objects
        .pipeline_runs
        .delete(Some(NS), "doomed")
        .await?;
    let mut gone = false;
    for _ in 0..100 {
        if process_gone(sleeper) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the step's child {sleeper} survived the deletion");
    assert!(
        platform.task_runs_of("doomed").await?.is_empty(),
        "the TaskRun went with its owner"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_timeout_cancels_its_running_task_runs() -> TestResult {
    let platform = Platform::start(|c| c)?;
    let run = r#"
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata: {name: late}
spec:
  timeouts: {pipeline: 2s}
  pipelineSpec:
    tasks:
      - name: slow
        taskSpec:
          steps: [{name: sleep, image: alpine, script: sleep 60}]
    finally:
      - name: cleanup
        taskSpec:
          steps: [{name: never, image: alpine, script: exit 0}]
"#;
    platform
        .create_yaml::<PipelineRun>(&platform.objects.pipeline_runs, run)
        .await?;
    let started = std::time::Instant::now();
    let pr = platform
        .pipeline_run_done("late", Duration::from_secs(30))
        .await?;
    assert!(started.elapsed() < Duration::from_secs(15));
    let (status, reason, message) = condition(pr.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        (
            "False",
            pipeline_run_reasons::TIMED_OUT,
            "PipelineRun \"late\" failed to finish within \"2s\""
        )
    );
    let tr = platform
        .task_run_done("late-slow", Duration::from_secs(10))
        .await?;
    let (status, reason, message) = condition(tr.succeeded());
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", task_run_reasons::CANCELLED)
    );
    assert!(message.ends_with(CANCELLED_BY_TIMEOUT), "{message}");
    let names: Vec<String> = platform
        .task_runs_of("late")
        .await?
        .iter()
        .map(|t| t.name_any())
        .collect();
    assert_eq!(
        names,
        ["late-slow"],
        "finally does not run after a pipeline timeout"
    );
    Ok(())
}
