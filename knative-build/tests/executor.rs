//! The local executor with real processes (specs/BUILD.md §1.2, §1.5,
//! §1.6, §1.7, §1.9): scripts and commands, results without the 4 KiB
//! cap, timeouts and cancellation that kill whole process groups,
//! `onError: continue`, logs, and the built-in image step into an OCI
//! layout.

use std::path::Path;
use std::time::Duration;

use knative_build::api::{TaskSpec, WorkspaceBinding, effective_params, task_run_reasons};
use knative_build::executor::{
    Execution, ExecutionPhase, ExecutionRequest, ExecutionStatus, LocalExecutor,
    LocalExecutorConfig, RunKey, StepExecutor, StepPhase, termination_reasons,
};
use knative_build::substitution::{Replacements, TaskRunContext, resolve_task_spec};
use knative_core::apis::{Context, SetDefaults};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn executor(root: &Path) -> LocalExecutor {
    LocalExecutor::new(LocalExecutorConfig::new(root).termination_grace(Duration::from_millis(500)))
}

/// What the TaskRun reconciler does before starting: defaults, the
/// executor's paths, substitution.
fn request(
    executor: &LocalExecutor,
    name: &str,
    yaml: &str,
    workspaces: Vec<WorkspaceBinding>,
    timeout: Option<Duration>,
) -> Result<ExecutionRequest, Box<dyn std::error::Error>> {
    let mut spec: TaskSpec = serde_yaml::from_str(yaml)?;
    spec.set_defaults(&Context::create());
    let key = RunKey::new("default", name, 0);
    let paths = executor.paths(&key, &spec, &workspaces)?;
    let effective = TaskSpec {
        steps: spec.effective_steps(),
        step_template: None,
        ..spec.clone()
    };
    let (params, _) = effective_params(&spec.params, &[]);
    let context = TaskRunContext {
        task_run_name: name.to_owned(),
        namespace: "default".to_owned(),
        ..TaskRunContext::default()
    };
    let mut replacements = Replacements::for_task(&effective, params, &workspaces, &context);
    paths.apply_to(&mut replacements);
    Ok(ExecutionRequest {
        key,
        task_spec: resolve_task_spec(&effective, &replacements)?,
        workspaces,
        timeout,
    })
}

async fn finished(execution: &Execution) -> Result<ExecutionStatus, Box<dyn std::error::Error>> {
    let mut status = execution.status.clone();
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        status.wait_for(|s| s.phase.is_done()),
    )
    .await
    .map_err(|_| "the attempt did not finish within 60 s")??
    .clone();
    Ok(done)
}

async fn run(
    executor: &LocalExecutor,
    name: &str,
    yaml: &str,
) -> Result<ExecutionStatus, Box<dyn std::error::Error>> {
    let execution = executor
        .start(request(executor, name, yaml, Vec::new(), None)?)
        .await?;
    finished(&execution).await
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

async fn wait_gone(pid: u32) -> bool {
    for _ in 0..100 {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn read_pid(file: &Path) -> Result<u32, Box<dyn std::error::Error>> {
    for _ in 0..200 {
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
async fn scripts_commands_env_and_working_dirs_run_on_the_host() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let yaml = r#"
results: [{name: greeting}, {name: shebang}, {name: args}, {name: first-exit}]
steps:
  - name: greet
    image: alpine
    workingDir: sub/dir
    env: [{name: GREETING, value: hello}]
    script: |
      echo "to the log"
      printf '%s from %s' "$GREETING" "$(pwd)" > $(results.greeting.path)
  - name: direct
    image: alpine
    script: |
      #!/bin/sh
      printf '%s' "$0" > $(results.shebang.path)
  - name: command
    image: alpine
    command: [sh, -c]
    args: ['printf "%s|%s" "$1" "`cat $(steps.step-greet.exitCode.path)`" > $(results.args.path)', argv0, "two words"]
  - name: exit-code
    image: alpine
    script: cp $(steps.step-command.exitCode.path) $(results.first-exit.path)
"#;
    let status = run(&executor, "host", yaml).await?;
    assert_eq!(status.phase, ExecutionPhase::Succeeded, "{status:?}");
    let run_dir = executor.run_dir(&RunKey::new("default", "host", 0));
    let workdir = run_dir.join("workspace/sub/dir");
    assert_eq!(
        status.results["greeting"],
        format!("hello from {}", workdir.display())
    );
    assert!(
        status.results["shebang"].ends_with("scripts/step-direct"),
        "a #! script runs directly: {}",
        status.results["shebang"]
    );
    assert_eq!(status.results["args"], "two words|0");
    assert_eq!(status.results["first-exit"], "0");
    assert_eq!(status.pod_name, "host-pod");
    let log = executor
        .logs(&RunKey::new("default", "host", 0), "greet")
        .await?;
    assert_eq!(String::from_utf8(log)?, "to the log\n");
    for step in &status.steps {
        assert_eq!(step.phase, StepPhase::Terminated);
        assert_eq!(step.exit_code, Some(0));
        assert_eq!(
            step.termination_reason.as_deref(),
            Some(termination_reasons::COMPLETED)
        );
        assert!(step.started_at <= step.finished_at);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_larger_than_4_kib_are_kept_whole() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let yaml = r#"
results: [{name: big}, {name: list, type: array}]
steps:
  - name: write
    image: alpine
    script: |
      head -c 102400 /dev/zero | tr '\0' x > $(results.big.path)
      printf '["a","b"]' > $(results.list.path)
"#;
    let status = run(&executor, "big", yaml).await?;
    assert_eq!(status.phase, ExecutionPhase::Succeeded, "{status:?}");
    assert_eq!(status.results["big"].len(), 102_400);
    assert!(status.results["big"].bytes().all(|b| b == b'x'));
    assert_eq!(status.results["list"], r#"["a","b"]"#);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_the_limit_fails_the_attempt_naming_it() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = LocalExecutor::new(LocalExecutorConfig::new(root.path()).max_result_size(1000));
    let yaml = r#"
results: [{name: small}, {name: huge}]
steps:
  - name: write
    image: alpine
    script: |
      printf ok > $(results.small.path)
      head -c 2000 /dev/zero > $(results.huge.path)
"#;
    let status = run(&executor, "limit", yaml).await?;
    assert_eq!(status.phase, ExecutionPhase::Failed);
    let failure = status.failure.ok_or("a failure")?;
    assert_eq!(failure.reason, task_run_reasons::RESULT_LARGER_THAN_ALLOWED);
    assert_eq!(
        failure.message,
        "result \"huge\" is 2000 bytes, more than the 1000 bytes allowed (LocalExecutorConfig::max_result_size)"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_kills_the_whole_process_group() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let pid_file = root.path().join("child.pid");
    let yaml = format!(
        r#"
steps:
  - name: hang
    image: alpine
    timeout: 1s
    script: |
      sleep 300 &
      echo $! > {}
      wait
  - name: after
    image: alpine
    script: echo never
"#,
        pid_file.display()
    );
    let started = std::time::Instant::now();
    let status = run(&executor, "hang", &yaml).await?;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status.phase, ExecutionPhase::Failed);
    let failure = status.failure.ok_or("a failure")?;
    assert_eq!(failure.reason, task_run_reasons::FAILED);
    assert_eq!(
        failure.message,
        "\"step-hang\" exited because the step exceeded its timeout of \"1s\""
    );
    assert_eq!(
        status.steps[0].termination_reason.as_deref(),
        Some(termination_reasons::TIMEOUT_EXCEEDED)
    );
    assert_eq!(
        status.steps[0].exit_code,
        Some(128 + 15),
        "killed by SIGTERM"
    );
    assert_eq!(
        status.steps[1].termination_reason.as_deref(),
        Some(termination_reasons::SKIPPED)
    );
    let child = read_pid(&pid_file).await?;
    assert!(
        wait_gone(child).await,
        "the step's background child {child} survived"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_kills_the_running_step_and_skips_the_rest() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let pid_file = root.path().join("child.pid");
    let yaml = format!(
        r#"
steps:
  - name: work
    image: alpine
    script: |
      sleep 300 &
      echo $! > {}
      wait
  - name: after
    image: alpine
    script: echo never
"#,
        pid_file.display()
    );
    let execution = executor
        .start(request(&executor, "cancel", &yaml, Vec::new(), None)?)
        .await?;
    let child = read_pid(&pid_file).await?;
    assert!(!process_gone(child));
    execution.cancel.cancel();
    let status = finished(&execution).await?;
    assert_eq!(status.phase, ExecutionPhase::Cancelled);
    let failure = status.failure.ok_or("a failure")?;
    assert_eq!(failure.reason, task_run_reasons::CANCELLED);
    assert_eq!(failure.message, "TaskRun \"cancel\" was cancelled");
    assert_eq!(
        status.steps[0].termination_reason.as_deref(),
        Some(termination_reasons::CANCELLED)
    );
    assert_eq!(
        status.steps[1].termination_reason.as_deref(),
        Some(termination_reasons::SKIPPED)
    );
    assert!(
        wait_gone(child).await,
        "the step's child {child} survived cancellation"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_timeout_ends_it_as_timed_out() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let yaml = "steps:\n  - {name: slow, image: alpine, script: sleep 30}\n";
    let execution = executor
        .start(request(
            &executor,
            "slow",
            yaml,
            Vec::new(),
            Some(Duration::from_secs(1)),
        )?)
        .await?;
    let status = finished(&execution).await?;
    assert_eq!(status.phase, ExecutionPhase::TimedOut);
    let failure = status.failure.ok_or("a failure")?;
    assert_eq!(failure.reason, task_run_reasons::TIMED_OUT);
    assert_eq!(
        failure.message,
        "TaskRun \"slow\" failed to finish within \"1s\""
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_continue_goes_on_after_a_failing_step() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let yaml = r#"
results: [{name: code}]
steps:
  - {name: lint, image: alpine, onError: continue, script: exit 7}
  - {name: report, image: alpine, script: 'cp $(steps.step-lint.exitCode.path) $(results.code.path)'}
"#;
    let status = run(&executor, "continue", yaml).await?;
    assert_eq!(status.phase, ExecutionPhase::Succeeded, "{status:?}");
    assert_eq!(status.steps[0].exit_code, Some(7));
    assert_eq!(
        status.steps[0].termination_reason.as_deref(),
        Some(termination_reasons::CONTINUED)
    );
    assert_eq!(status.results["code"], "7");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_the_attempt_with_its_exit_code() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let yaml = r#"
steps:
  - {name: boom, image: alpine, script: 'echo about to fail >&2; exit 3'}
  - {name: after, image: alpine, script: echo never}
"#;
    let status = run(&executor, "boom", yaml).await?;
    assert_eq!(status.phase, ExecutionPhase::Failed);
    let failure = status.failure.ok_or("a failure")?;
    let key = RunKey::new("default", "boom", 0);
    assert_eq!(
        failure.message,
        format!(
            "\"step-boom\" exited with code 3 (logs: {})",
            executor.log_path(&key, "step-boom").display()
        )
    );
    assert_eq!(status.steps[0].exit_code, Some(3));
    assert_eq!(status.steps[1].exit_code, None);
    assert_eq!(
        String::from_utf8(executor.logs(&key, "step-boom").await?)?,
        "about to fail\n"
    );
    assert!(
        executor.logs(&key, "after").await.is_err(),
        "a skipped step has no log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_a_step_leaves_behind_die_with_it() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let pid_file = root.path().join("child.pid");
    let yaml = format!(
        "steps:\n  - name: leave\n    image: alpine\n    script: |\n      sleep 300 &\n      echo $! > {}\n",
        pid_file.display()
    );
    let status = run(&executor, "leave", &yaml).await?;
    assert_eq!(status.phase, ExecutionPhase::Succeeded);
    let child = read_pid(&pid_file).await?;
    assert!(
        wait_gone(child).await,
        "leftover child {child} survived its step"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_are_shared_and_unsupported_bindings_are_refused() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let claim: WorkspaceBinding = serde_yaml::from_str(
        "{name: data, persistentVolumeClaim: {claimName: shared}, subPath: app}",
    )?;
    let writer = "workspaces: [{name: data}]\nsteps:\n  - {name: w, image: alpine, script: 'echo v1 > $(workspaces.data.path)/file'}\n";
    let reader = "workspaces: [{name: data}]\nresults: [{name: seen}]\nsteps:\n  - {name: r, image: alpine, script: 'cat $(workspaces.data.path)/file > $(results.seen.path)'}\n";
    let first = executor
        .start(request(
            &executor,
            "writer",
            writer,
            vec![claim.clone()],
            None,
        )?)
        .await?;
    assert_eq!(finished(&first).await?.phase, ExecutionPhase::Succeeded);
    let second = executor
        .start(request(&executor, "reader", reader, vec![claim], None)?)
        .await?;
    let status = finished(&second).await?;
    assert_eq!(status.results["seen"], "v1\n");
    assert!(
        executor
            .claim_dir("default", "shared")
            .join("app/file")
            .is_file()
    );

    let config_map: WorkspaceBinding =
        serde_yaml::from_str("{name: data, configMap: {name: settings}}")?;
    let err = request(&executor, "cm", writer, vec![config_map], None)
        .err()
        .ok_or("a configMap binding is refused")?;
    assert_eq!(
        err.to_string(),
        "workspace \"data\" is bound to configMap; the local executor supports emptyDir, persistentVolumeClaim and volumeClaimTemplate bindings"
    );
    let entrypoint_only = request(
        &executor,
        "image-only",
        "steps:\n  - {name: app, image: alpine, args: [--help]}\n",
        Vec::new(),
        None,
    )?;
    let err = executor
        .start(entrypoint_only)
        .await
        .err()
        .ok_or("a step without command is refused")?;
    assert!(err.is_permanent());
    assert!(
        err.to_string()
            .starts_with("step-app: a step without command or script")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_image_step_writes_an_oci_layout_and_its_results() -> TestResult {
    let root = tempfile::tempdir()?;
    let executor = executor(root.path());
    let out = root.path().join("layout");
    let yaml = format!(
        r#"
results: [{{name: IMAGE_DIGEST}}, {{name: IMAGE_URL}}]
steps:
  - name: prepare
    image: alpine
    script: mkdir -p app && echo hi > app/hello.txt
  - name: image
    image: knative.dev/build/image
    params:
      - {{name: source, value: app}}
      - {{name: image, value: "oci:{}:v1"}}
      - {{name: entrypoint, value: /hello.txt}}
"#,
        out.display()
    );
    let status = run(&executor, "oci", &yaml).await?;
    assert_eq!(status.phase, ExecutionPhase::Succeeded, "{status:?}");
    let digest = &status.results["IMAGE_DIGEST"];
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(
        status.results["IMAGE_URL"],
        format!("oci:{}:v1", out.display())
    );
    let index = std::fs::read_to_string(out.join("index.json"))?;
    assert!(index.contains(digest.as_str()), "{index}");
    Ok(())
}
