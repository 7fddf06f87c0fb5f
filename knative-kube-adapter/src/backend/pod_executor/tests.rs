use http::Method;
use serde_json::{Value, json};

use super::*;
use crate::backend::fixtures::{ApiServer, status};

const PODS: &str = "/api/v1/namespaces/default/pods";
const POD: &str = "/api/v1/namespaces/default/pods/build-pod";
const TASK_RUN: &str = "/apis/tekton.dev/v1/namespaces/default/taskruns/build";

fn task(yaml: &str) -> TaskSpec {
    serde_yaml::from_str(yaml).expect("a valid task spec")
}

/// A 2-step Task: a script writing a result, then a command step that
/// may fail (`onError: continue`), with an emptyDir workspace.
fn two_steps() -> ExecutionRequest {
    ExecutionRequest {
        key: RunKey::new("default", "build", 0),
        task_spec: task(
            r#"
workspaces: [{name: src}]
results: [{name: digest}]
steps:
  - name: a
    image: alpine
    script: printf sha256:abc > /tekton/results/digest
  - name: b
    image: alpine
    command: [sh, -c]
    args: [exit 3]
    onError: continue
    workingDir: out
"#,
        ),
        workspaces: vec![WorkspaceBinding::empty_dir("src")],
        timeout: Some(Duration::from_secs(600)),
    }
}

fn names(containers: &[Container]) -> Vec<&str> {
    containers.iter().map(|c| c.name.as_str()).collect()
}

#[test]
fn steps_are_init_containers_in_order_then_the_results_container() -> Result<(), ExecutorError> {
    let plan = desired_pod(&two_steps(), None, &PodExecutorConfig::default())?;
    let pod = plan.pod;
    assert_eq!(pod.metadata.name.as_deref(), Some("build-pod"));
    let spec = pod.spec.expect("a pod spec");
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.active_deadline_seconds, Some(660));
    let init = spec.init_containers.expect("init containers");
    assert_eq!(names(&init), ["prepare", "step-a", "step-b"]);
    assert_eq!(names(&spec.containers), ["results"]);

    let prepare = &init[0];
    assert_eq!(prepare.image.as_deref(), Some(DEFAULT_HELPER_IMAGE));
    let program = &prepare.command.as_ref().expect("a command")[2];
    assert!(
        program.contains("printf 0 > /tekton/steps/step-a/exitCode"),
        "{program}"
    );
    assert!(
        !program.contains("step-b/exitCode"),
        "a wrapped step writes its own: {program}"
    );
    assert!(program.contains("> /tekton/scripts/step-a"), "{program}");
    assert!(
        program.contains("base64 -d > /tekton/scripts/step-a"),
        "{program}"
    );
    // The script travels base64-encoded: the kubelet would expand `$(…)`
    // and `$$` in a plain env value.
    let script = prepare.env.iter().flatten().find(|e| e.name == "SCRIPT_0");
    let decoded = script
        .and_then(|e| e.value.as_deref())
        .and_then(|v| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(v).ok()
        })
        .map(|b| String::from_utf8_lossy(&b).into_owned());
    assert_eq!(
        decoded.as_deref(),
        Some("#!/bin/sh\nset -e\nprintf sha256:abc > /tekton/results/digest")
    );

    let a = &init[1];
    assert_eq!(a.command, Some(vec!["/tekton/scripts/step-a".to_owned()]));
    assert_eq!(
        a.termination_message_path.as_deref(),
        Some(TERMINATION_PATH)
    );
    let mounts: Vec<(&str, &str)> = a
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert!(
        mounts.contains(&("tekton-internal-results", "/tekton/results")),
        "{mounts:?}"
    );
    assert!(mounts.contains(&("ws-0", "/workspace/src")), "{mounts:?}");

    let b = &init[2];
    let command = b.command.clone().expect("a command");
    assert_eq!(command[..2], ["/bin/sh", "-c"]);
    assert!(command[2].contains("exitCode %s"), "{}", command[2]);
    assert_eq!(command[3], "step-b");
    assert_eq!(
        b.args,
        Some(vec!["sh".into(), "-c".into(), "exit 3".into()])
    );
    assert_eq!(b.working_dir.as_deref(), Some("/workspace/out"));

    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(volumes.contains(&"ws-0") && volumes.contains(&"tekton-internal-workspace"));
    assert!(
        spec.containers[0].command.as_ref().expect("a command")[2].contains("for name in 'digest'")
    );
    Ok(())
}

#[test]
fn what_a_pod_cannot_run_is_unsupported() {
    let cases = [
        (
            "steps: [{name: img, image: knative.dev/build/image, params: [{name: source, value: .}]}]",
            vec![],
            "in-process",
        ),
        (
            "steps: [{image: a, command: [x]}]\nsidecars: [{name: s, image: b}]",
            vec![],
            "sidecars",
        ),
        (
            "steps: [{image: a, onError: continue}]",
            vec![],
            "command or script",
        ),
        (
            "workspaces: [{name: w}]\nsteps: [{image: a, command: [x]}]",
            vec![WorkspaceBinding {
                name: "w".into(),
                volume_claim_template: Some(Default::default()),
                ..WorkspaceBinding::default()
            }],
            "volumeClaimTemplate",
        ),
        (
            "workspaces: [{name: w}]\nsteps: [{image: a, command: [x]}]",
            vec![],
            "not bound",
        ),
    ];
    for (yaml, workspaces, want) in cases {
        let request = ExecutionRequest {
            key: RunKey::new("default", "build", 0),
            task_spec: task(yaml),
            workspaces,
            timeout: None,
        };
        match desired_pod(&request, None, &PodExecutorConfig::default()) {
            Err(ExecutorError::Unsupported { message }) => {
                assert!(message.contains(want), "{yaml}: {message}");
            }
            other => panic!("{yaml}: expected Unsupported, got {other:?}"),
        }
    }
}

#[test]
fn paths_are_the_pod_mounts() -> Result<(), ExecutorError> {
    let request = two_steps();
    let paths = pod_paths(&request.task_spec, &request.workspaces)?;
    assert_eq!(paths.result_path("digest"), "/tekton/results/digest");
    assert_eq!(paths.exit_code_path("a"), "/tekton/steps/step-a/exitCode");
    assert_eq!(
        paths.workspaces.get("src").map(String::as_str),
        Some("/workspace/src")
    );
    assert_eq!(paths.credentials, "/tekton/creds");
    Ok(())
}

#[test]
fn results_text_parses_verbatim_or_fails_when_cut() {
    let map = |pairs: &[(&str, &str)]| {
        ResultsMessage::Results(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    };
    let cases: Vec<(&str, Result<ResultsMessage, &str>)> = vec![
        ("", Ok(map(&[]))),
        (
            "digest 10\nsha256:abc\n",
            Ok(map(&[("digest", "sha256:abc")])),
        ),
        (
            "a 6\nline1\n\nb 0\n\n",
            Ok(map(&[("a", "line1\n"), ("b", "")])),
        ),
        ("overflow 5000", Ok(ResultsMessage::Overflow(5000))),
        ("digest 10\nsha256", Err("cut short")),
        ("digest ten\n", Err("malformed")),
        ("digest 3\nabcd\n", Err("newline")),
    ];
    for (text, want) in cases {
        match (parse_results(text), want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text:?}"),
            (Err(got), Err(want)) => assert!(got.contains(want), "{text:?}: {got}"),
            (got, want) => panic!("{text:?}: got {got:?}, want {want:?}"),
        }
    }
}

fn pod_json(phase: &str, init: Value, main: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "build-pod", "namespace": "default", "resourceVersion": "5"},
        "status": {
            "phase": phase,
            "initContainerStatuses": init,
            "containerStatuses": main,
        },
    })
}

fn container(name: &str, state: Value) -> Value {
    json!({"name": name, "image": "x", "imageID": "", "ready": false, "restartCount": 0, "state": state})
}

fn terminated(code: i32, message: &str) -> Value {
    json!({"terminated": {
        "exitCode": code,
        "message": message,
        "startedAt": "2026-01-01T00:00:00Z",
        "finishedAt": "2026-01-01T00:00:01Z",
    }})
}

fn running() -> Value {
    json!({"running": {"startedAt": "2026-01-01T00:00:00Z"}})
}

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("a valid pod")
}

#[test]
fn status_follows_init_container_states() -> Result<(), ExecutorError> {
    let plan = desired_pod(&two_steps(), None, &PodExecutorConfig::default())?;
    let waiting = |reason: &str| json!({"waiting": {"reason": reason, "message": "pull failed"}});
    struct Case {
        name: &'static str,
        pod: Option<Value>,
        phase: ExecutionPhase,
        steps: [(StepPhase, Option<i32>, Option<&'static str>); 2],
        failure: Option<&'static str>,
    }
    let cases = [
        Case {
            name: "first step running",
            pod: Some(pod_json(
                "Pending",
                json!([
                    container("prepare", terminated(0, "")),
                    container("step-a", running()),
                    container("step-b", json!({"waiting": {"reason": "PodInitializing"}})),
                ]),
                json!([]),
            )),
            phase: ExecutionPhase::Running,
            steps: [
                (StepPhase::Running, None, None),
                (StepPhase::Waiting, None, None),
            ],
            failure: None,
        },
        Case {
            name: "first step failed: the second is skipped",
            pod: Some(pod_json(
                "Failed",
                json!([
                    container("prepare", terminated(0, "")),
                    container("step-a", terminated(2, "")),
                    container("step-b", json!({"waiting": {"reason": "PodInitializing"}})),
                ]),
                json!([]),
            )),
            phase: ExecutionPhase::Failed,
            steps: [
                (StepPhase::Terminated, Some(2), Some(term::ERROR)),
                (StepPhase::Terminated, None, Some(term::SKIPPED)),
            ],
            failure: Some(reasons::FAILED),
        },
        Case {
            name: "second step failed but continues",
            pod: Some(pod_json(
                "Succeeded",
                json!([
                    container("prepare", terminated(0, "")),
                    container("step-a", terminated(0, "")),
                    container("step-b", terminated(0, "exitCode 3")),
                ]),
                json!([container("results", terminated(0, ""))]),
            )),
            phase: ExecutionPhase::Succeeded,
            steps: [
                (StepPhase::Terminated, Some(0), Some(term::COMPLETED)),
                (StepPhase::Terminated, Some(3), Some(term::CONTINUED)),
            ],
            failure: None,
        },
        Case {
            name: "image cannot be pulled",
            pod: Some(pod_json(
                "Pending",
                json!([
                    container("prepare", terminated(0, "")),
                    container("step-a", waiting("ImagePullBackOff")),
                ]),
                json!([]),
            )),
            phase: ExecutionPhase::Failed,
            steps: [
                (StepPhase::Waiting, None, None),
                (StepPhase::Terminated, None, Some(term::SKIPPED)),
            ],
            failure: Some(reasons::IMAGE_PULL_FAILED),
        },
        Case {
            name: "evicted",
            pod: Some(json!({
                "metadata": {"name": "build-pod"},
                "status": {"phase": "Failed", "reason": "Evicted", "message": "low on disk"},
            })),
            phase: ExecutionPhase::Failed,
            steps: [
                (StepPhase::Terminated, None, Some(term::SKIPPED)),
                (StepPhase::Terminated, None, Some(term::SKIPPED)),
            ],
            failure: Some(reasons::POD_EVICTED),
        },
        Case {
            name: "pod gone",
            pod: None,
            phase: ExecutionPhase::Failed,
            steps: [
                (StepPhase::Terminated, None, Some(term::SKIPPED)),
                (StepPhase::Terminated, None, Some(term::SKIPPED)),
            ],
            failure: Some(reasons::FAILED),
        },
    ];
    for case in cases {
        let pod = case.pod.map(pod);
        let status = observed_status(&plan, pod.as_ref());
        assert_eq!(status.phase, case.phase, "{}", case.name);
        let steps: Vec<(StepPhase, Option<i32>, Option<&str>)> = status
            .steps
            .iter()
            .map(|s| (s.phase, s.exit_code, s.termination_reason.as_deref()))
            .collect();
        assert_eq!(steps, case.steps, "{}", case.name);
        assert_eq!(
            status.failure.as_ref().map(|f| f.reason.as_str()),
            case.failure,
            "{}",
            case.name
        );
    }
    Ok(())
}

/// The executor reads the TaskRun's uid, creates the pod and starts
/// following it.
async fn start(
    server: &mut ApiServer,
    executor: &PodStepExecutor,
) -> Result<Execution, ExecutorError> {
    start_run(server, executor, json!({"taskRef": {"name": "build"}}))
        .await
        .map(|(execution, _)| execution)
}

/// [`start`] with a TaskRun of spec `spec`; also returns the created pod.
async fn start_run(
    server: &mut ApiServer,
    executor: &PodStepExecutor,
    spec: Value,
) -> Result<(Execution, Value), ExecutorError> {
    let execution = executor.start(two_steps()).await?;
    server
        .expect(
            Method::GET,
            TASK_RUN,
            &[],
            200,
            json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                "metadata": {"name": "build", "namespace": "default", "uid": "tr-uid"},
                "spec": spec,
            }),
        )
        .await;
    let created = server
        .expect(
            Method::POST,
            PODS,
            &[],
            201,
            pod_json("Pending", json!([]), json!([])),
        )
        .await
        .body;
    assert_eq!(created["metadata"]["name"], "build-pod");
    assert_eq!(created["metadata"]["labels"]["tekton.dev/taskRun"], "build");
    assert_eq!(
        created["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "tekton.dev/v1", "kind": "TaskRun", "name": "build", "uid": "tr-uid",
            "controller": true, "blockOwnerDeletion": true,
        }])
    );
    let init: Vec<&str> = created["spec"]["initContainers"]
        .as_array()
        .expect("init containers")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(init, ["prepare", "step-a", "step-b"]);
    assert_eq!(created["spec"]["containers"][0]["name"], "results");
    assert_eq!(created["spec"]["restartPolicy"], "Never");
    Ok((execution, created))
}

/// Answers the watcher's initial list with `pod`.
async fn list(server: &mut ApiServer, pod: Value) {
    let pending = server.next(Method::GET, PODS).await;
    assert!(
        pending.has("fieldSelector", "metadata.name=build-pod"),
        "{:?}",
        pending.query
    );
    pending.respond(
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": [pod]}),
    );
}

async fn wait_done(execution: &Execution) -> ExecutionStatus {
    let mut status = execution.status.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| s.phase.is_done()),
    )
    .await
    .expect("the attempt ends")
    .expect("the executor keeps the channel")
    .clone()
}

#[tokio::test]
async fn a_two_step_run_reads_results_from_the_termination_message() -> Result<(), ExecutorError> {
    let (client, mut server) = ApiServer::new();
    let executor = PodStepExecutor::new(client, PodExecutorConfig::default());
    let execution = start(&mut server, &executor).await?;
    list(
        &mut server,
        pod_json(
            "Succeeded",
            json!([
                container("prepare", terminated(0, "")),
                container("step-a", terminated(0, "")),
                container("step-b", terminated(0, "exitCode 3")),
            ]),
            json!([container(
                "results",
                terminated(0, "digest 10\nsha256:abc\n")
            )]),
        ),
    )
    .await;
    let status = wait_done(&execution).await;
    assert_eq!(status.phase, ExecutionPhase::Succeeded, "{status:?}");
    assert_eq!(status.pod_name, "build-pod");
    assert_eq!(
        status.results,
        BTreeMap::from([("digest".to_owned(), "sha256:abc".to_owned())])
    );
    assert_eq!(status.steps[1].exit_code, Some(3));
    Ok(())
}

#[tokio::test]
async fn results_over_4_kib_are_read_from_the_results_log() -> Result<(), ExecutorError> {
    let (client, mut server) = ApiServer::new();
    let executor = PodStepExecutor::new(client, PodExecutorConfig::default());
    let execution = start(&mut server, &executor).await?;
    list(
        &mut server,
        pod_json(
            "Succeeded",
            json!([
                container("prepare", terminated(0, "")),
                container("step-a", terminated(0, "")),
                container("step-b", terminated(0, "exitCode 0")),
            ]),
            json!([container("results", terminated(0, "overflow 5012"))]),
        ),
    )
    .await;
    let big = "x".repeat(5000);
    server
        .expect(
            Method::GET,
            &format!("{POD}/log"),
            &[("container", "results")],
            200,
            Value::String(format!("digest 5000\n{big}\n")),
        )
        .await;
    let status = wait_done(&execution).await;
    assert_eq!(status.phase, ExecutionPhase::Succeeded, "{status:?}");
    assert_eq!(status.results.get("digest").map(String::len), Some(5000));
    Ok(())
}

#[tokio::test]
async fn cancelling_keeps_the_logs_and_deletes_the_pod() -> Result<(), ExecutorError> {
    let (client, mut server) = ApiServer::new();
    let executor = PodStepExecutor::new(client, PodExecutorConfig::default());
    let execution = start(&mut server, &executor).await?;
    list(
        &mut server,
        pod_json(
            "Pending",
            json!([
                container("prepare", terminated(0, "")),
                container("step-a", running()),
                container("step-b", json!({"waiting": {"reason": "PodInitializing"}})),
            ]),
            json!([]),
        ),
    )
    .await;
    // The watcher goes on watching; leave that request open.
    let _watch = server.next(Method::GET, PODS).await;
    let mut rx = execution.status.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|s| s.phase == ExecutionPhase::Running),
    )
    .await
    .expect("the attempt runs")
    .expect("the executor keeps the channel");

    execution.cancel.cancel();
    let limit = ("limitBytes", "1048576");
    server
        .expect(
            Method::GET,
            &format!("{POD}/log"),
            &[("container", "prepare"), limit],
            200,
            Value::String("prepared\n".into()),
        )
        .await;
    server
        .expect(
            Method::GET,
            &format!("{POD}/log"),
            &[("container", "step-a"), limit],
            200,
            Value::String("building…\n".into()),
        )
        .await;
    let deleted = server
        .expect(Method::DELETE, POD, &[], 200, status(200, "Success"))
        .await
        .body;
    assert_eq!(deleted["propagationPolicy"], "Background");
    let status = wait_done(&execution).await;
    assert_eq!(status.phase, ExecutionPhase::Cancelled);
    assert_eq!(
        status.failure.map(|f| f.reason),
        Some(reasons::CANCELLED.to_owned())
    );
    let steps: Vec<(StepPhase, Option<&str>)> = status
        .steps
        .iter()
        .map(|s| (s.phase, s.termination_reason.as_deref()))
        .collect();
    assert_eq!(
        steps,
        [
            (StepPhase::Terminated, Some(term::CANCELLED)),
            (StepPhase::Terminated, Some(term::SKIPPED)),
        ]
    );
    // The kept logs answer without the API server.
    let key = RunKey::new("default", "build", 0);
    assert_eq!(executor.logs(&key, "a").await?, "building…\n".as_bytes());
    assert_eq!(
        executor.logs(&key, "step-a").await?,
        "building…\n".as_bytes()
    );
    assert!(matches!(
        executor.logs(&key, "b").await,
        Err(ExecutorError::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn live_logs_come_from_the_pod() -> Result<(), ExecutorError> {
    let (client, mut server) = ApiServer::new();
    let executor = PodStepExecutor::new(client, PodExecutorConfig::default());
    let call = tokio::spawn(async move {
        executor
            .logs(&RunKey::new("default", "build", 0), "compile")
            .await
    });
    server
        .expect(
            Method::GET,
            &format!("{POD}/log"),
            &[("container", "step-compile"), ("limitBytes", "1048576")],
            200,
            Value::String("ok\n".into()),
        )
        .await;
    assert_eq!(call.await.expect("logs run")?, b"ok\n");
    Ok(())
}

/// A podTemplate setting every field the executor copies.
fn full_pod_template() -> Value {
    json!({
        "nodeSelector": {"disktype": "ssd"},
        "env": [
            {"name": "PROXY", "value": "http://proxy:3128"},
            {"name": "SHARED", "value": "from-template"},
        ],
        "tolerations": [{"key": "build", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "arch", "operator": "In", "values": ["amd64"]},
            ]}],
        }}},
        "securityContext": {"runAsNonRoot": true, "runAsUser": 1000, "fsGroup": 2000},
        "volumes": [{"name": "cache", "emptyDir": {}}],
        "runtimeClassName": "gvisor",
        "automountServiceAccountToken": false,
        "dnsPolicy": "None",
        "dnsConfig": {"nameservers": ["10.0.0.10"]},
        "enableServiceLinks": true,
        "priorityClassName": "builds",
        "schedulerName": "batch",
        "imagePullSecrets": [{"name": "registry"}],
        "hostAliases": [{"ip": "10.0.0.1", "hostnames": ["git.local"]}],
        "hostNetwork": true,
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
        }],
        "unknownField": "ignored",
    })
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or_default().to_owned(),
                e["value"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Checks a created pod (JSON) carries [`full_pod_template`] and service
/// account `builder`.
fn assert_carries_the_template(pod: &Value) {
    let spec = &pod["spec"];
    let template = full_pod_template();
    assert_eq!(spec["serviceAccountName"], "builder");
    for field in [
        "nodeSelector",
        "tolerations",
        "affinity",
        "securityContext",
        "runtimeClassName",
        "automountServiceAccountToken",
        "dnsPolicy",
        "dnsConfig",
        "enableServiceLinks",
        "priorityClassName",
        "schedulerName",
        "imagePullSecrets",
        "hostAliases",
        "hostNetwork",
        "topologySpreadConstraints",
    ] {
        assert_eq!(spec[field], template[field], "{field}");
    }
    // The executor's volumes stay; the template's come after them.
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(volumes.last(), Some(&"cache"), "{volumes:?}");
    for own in [
        "tekton-internal-workspace",
        "tekton-internal-results",
        "ws-0",
    ] {
        assert!(volumes.contains(&own), "{own} kept: {volumes:?}");
    }
    // Template env on every step, before the step's own; the step's wins.
    let init = spec["initContainers"].as_array().expect("init containers");
    let pair = |n: &str, v: &str| (n.to_owned(), v.to_owned());
    assert_eq!(
        env_of(&init[1]),
        [
            pair("PROXY", "http://proxy:3128"),
            pair("SHARED", "from-step")
        ],
        "step-a"
    );
    assert_eq!(
        env_of(&init[2]),
        [
            pair("PROXY", "http://proxy:3128"),
            pair("SHARED", "from-template")
        ],
        "step-b"
    );
    // The helper containers do not get it.
    assert!(
        !env_of(&init[0]).iter().any(|(n, _)| n == "PROXY"),
        "prepare"
    );
    assert!(env_of(&spec["containers"][0]).is_empty(), "results");
}

/// [`two_steps`] with step `a` setting `SHARED=from-step`.
fn two_steps_with_env() -> ExecutionRequest {
    let mut request = two_steps();
    request.task_spec.steps[0].env = vec![EnvVar {
        name: "SHARED".into(),
        value: Some("from-step".into()),
        ..EnvVar::default()
    }];
    request
}

#[test]
fn the_task_runs_service_account_and_pod_template_reach_the_pod()
-> Result<(), Box<dyn std::error::Error>> {
    let mut plan = desired_pod(&two_steps_with_env(), None, &PodExecutorConfig::default())?;
    let run: TaskRunSpec = serde_json::from_value(json!({
        "serviceAccountName": "builder",
        "podTemplate": full_pod_template(),
    }))?;
    apply_task_run(&mut plan.pod, &run)?;
    assert_carries_the_template(&serde_json::to_value(&plan.pod)?);
    Ok(())
}

#[test]
fn without_a_pod_template_the_pod_keeps_its_defaults() -> Result<(), Box<dyn std::error::Error>> {
    let before = desired_pod(&two_steps(), None, &PodExecutorConfig::default())?.pod;
    for spec in [
        json!({}),
        json!({"podTemplate": null}),
        json!({"podTemplate": {}}),
    ] {
        let mut pod = before.clone();
        apply_task_run(&mut pod, &serde_json::from_value(spec.clone())?)?;
        assert_eq!(pod, before, "{spec}");
    }
    let mut pod = before.clone();
    apply_task_run(
        &mut pod,
        &serde_json::from_value(json!({"serviceAccountName": "builder"}))?,
    )?;
    let spec = pod.spec.expect("a pod spec");
    assert_eq!(spec.service_account_name.as_deref(), Some("builder"));
    assert_eq!(spec.enable_service_links, Some(false));
    Ok(())
}

#[test]
fn an_invalid_pod_template_is_an_error_and_changes_nothing()
-> Result<(), Box<dyn std::error::Error>> {
    let before = desired_pod(&two_steps(), None, &PodExecutorConfig::default())?.pod;
    for template in [
        json!({"nodeSelector": ["not", "a", "map"]}),
        json!({"tolerations": "all"}),
        json!("a string"),
    ] {
        let mut pod = before.clone();
        let run: TaskRunSpec = serde_json::from_value(json!({
            "serviceAccountName": "builder",
            "podTemplate": template,
        }))?;
        let error = apply_task_run(&mut pod, &run).expect_err("an invalid template");
        assert!(error.contains("podTemplate"), "{error}");
        assert_eq!(pod, before, "{template}");
    }
    Ok(())
}

#[tokio::test]
async fn the_created_pod_carries_the_task_runs_service_account_and_pod_template()
-> Result<(), ExecutorError> {
    let (client, mut server) = ApiServer::new();
    let executor = PodStepExecutor::new(client, PodExecutorConfig::default());
    let execution = executor.start(two_steps_with_env()).await?;
    server
        .expect(
            Method::GET,
            TASK_RUN,
            &[],
            200,
            json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                "metadata": {"name": "build", "namespace": "default", "uid": "tr-uid"},
                "spec": {
                    "taskRef": {"name": "build"},
                    "serviceAccountName": "builder",
                    "podTemplate": full_pod_template(),
                },
            }),
        )
        .await;
    let created = server
        .expect(
            Method::POST,
            PODS,
            &[],
            201,
            pod_json("Pending", json!([]), json!([])),
        )
        .await
        .body;
    assert_eq!(created["metadata"]["ownerReferences"][0]["uid"], "tr-uid");
    assert_carries_the_template(&created);
    execution.cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn only_a_service_account_reaches_the_pod_through_start() -> Result<(), ExecutorError> {
    let (client, mut server) = ApiServer::new();
    let executor = PodStepExecutor::new(client, PodExecutorConfig::default());
    let (execution, created) = start_run(
        &mut server,
        &executor,
        json!({"taskRef": {"name": "build"}, "serviceAccountName": "builder"}),
    )
    .await?;
    assert_eq!(created["spec"]["serviceAccountName"], "builder");
    assert_eq!(created["spec"]["enableServiceLinks"], false);
    assert!(created["spec"].get("nodeSelector").is_none());
    execution.cancel.cancel();
    Ok(())
}

#[tokio::test]
async fn an_invalid_pod_template_fails_the_attempt_without_a_pod() -> Result<(), ExecutorError> {
    let (client, mut server) = ApiServer::new();
    let executor = PodStepExecutor::new(client, PodExecutorConfig::default());
    let execution = executor.start(two_steps()).await?;
    server
        .expect(
            Method::GET,
            TASK_RUN,
            &[],
            200,
            json!({
                "apiVersion": "tekton.dev/v1", "kind": "TaskRun",
                "metadata": {"name": "build", "namespace": "default", "uid": "tr-uid"},
                "spec": {"taskRef": {"name": "build"}, "podTemplate": {"tolerations": "all"}},
            }),
        )
        .await;
    let status = wait_done(&execution).await;
    server.expect_no_request().await;
    assert_eq!(status.phase, ExecutionPhase::Failed, "{status:?}");
    let failure = status.failure.as_ref().expect("a failure");
    assert_eq!(failure.reason, reasons::FAILED);
    assert!(
        failure.message.contains("podTemplate"),
        "{}",
        failure.message
    );
    assert!(
        status
            .steps
            .iter()
            .all(|s| s.termination_reason.as_deref() == Some(term::SKIPPED)),
        "{status:?}"
    );
    Ok(())
}
