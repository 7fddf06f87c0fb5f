//! [`PodStepExecutor`]: each TaskRun attempt as one Pod (`specs/BUILD.md
//! §1.10`, "TaskRun → Pod"; results §1.5, workspaces §1.6, timeouts §1.7,
//! cancellation §1.9).
//!
//! # The pod
//!
//! Attempt `ns/run#n` runs in Pod [`RunKey::pod_name`] (`<run>-pod`,
//! `<run>-pod-retry<n>`), labelled `tekton.dev/taskRun=<run>` and
//! `app.kubernetes.io/managed-by=knative-operator`, controlled by the
//! TaskRun (the executor reads its uid from the API server before creating
//! the pod; without it the pod has no owner), `restartPolicy: Never`, and
//! `activeDeadlineSeconds` = the attempt's timeout +
//! [`PodExecutorConfig::deadline_slack`] as a backstop should the operator
//! be gone when the timeout passes. [`desired_pod`] builds it:
//!
//! 1. init container `prepare` ([`PodExecutorConfig::helper_image`], a
//!    small image with a POSIX shell): writes each `script` to
//!    `/tekton/scripts/<container>` (a script without `#!` gets
//!    `#!/bin/sh` and `set -e`, as Tekton does) and a `0` into
//!    `/tekton/steps/step-<name>/exitCode` for every named step;
//! 2. **each step is an init container** `step-<name>` (`step-unnamed-<i>`),
//!    in order: kubelet runs init containers one after another, each only
//!    after the previous one exited 0, and stops the pod at the first that
//!    fails, which is Tekton's default `onError: stopAndFail` without
//!    Tekton's entrypoint binary and wait files. So a step that runs has
//!    every earlier step succeeded, and the pre-written `0` in their
//!    `exitCode` files is true by the time it can read them. Script steps
//!    run their script file; other steps keep their `command` (none: the
//!    image's entrypoint) and `args`;
//! 3. the pod's one regular container, `results`, (helper image) copies
//!    the declared results written under `/tekton/results` into its
//!    termination message once every step is done.
//!
//! A step with `onError: continue` is wrapped in `/bin/sh -c` (so its image
//! needs a shell, and it needs a `command` or `script`): the wrapper runs
//! it, writes its exit code to its `exitCode` file and its termination
//! message (`exitCode <n>`, read back as the step's exit code, reason
//! `Continued` when non-zero) and exits 0 so the next step runs. A step
//! whose `when` does not hold is left out of the pod and reported
//! `Skipped`. Relative `workingDir`s are taken under `/workspace` (an
//! emptyDir, as in Tekton).
//!
//! Volumes: emptyDirs at `/workspace`, `/tekton/results`, `/tekton/steps`,
//! `/tekton/scripts` and `/tekton/creds` ([`StepExecutor::paths`] returns
//! these), the Task's `volumes`, and one volume per bound workspace
//! (`emptyDir`, `persistentVolumeClaim`, `configMap`, `secret`,
//! `projected`, `csi`, with `subPath` and `readOnly`) mounted in every step
//! at its `mountPath` (default `/workspace/<name>`). `volumeClaimTemplate`
//! bindings (the claim must be created first), sidecars and StepActions
//! are [`ExecutorError::Unsupported`], as is the built-in image step
//! ([`builtin::IMAGE_BUILDER`]): it runs the project's image builder
//! in-process, which a pod cannot do without an image of it, so build
//! images in the pod with a builder image (kaniko, buildah, …) or run the
//! TaskRun on the local executor. `stdoutConfig`/`stderrConfig` are
//! ignored.
//!
//! # The TaskRun's service account and pod template
//!
//! An [`ExecutionRequest`] carries the resolved Task, not the TaskRun, so
//! the executor takes `spec.serviceAccountName` and `spec.podTemplate` from
//! the TaskRun it reads for the pod's owner reference, and
//! [`apply_task_run`] puts them on the pod: the service account, and the
//! template's ([`PodTemplate`]) `nodeSelector`, `tolerations`, `affinity`,
//! `securityContext`, `runtimeClassName`, `automountServiceAccountToken`,
//! `dnsPolicy`, `dnsConfig`, `enableServiceLinks` (`false` when unset),
//! `priorityClassName`, `schedulerName`, `imagePullSecrets`,
//! `hostAliases`, `hostNetwork` and `topologySpreadConstraints`; its
//! `volumes` are added after the executor's own, and its `env` goes onto
//! every step container ahead of the step's own variables, a step's
//! variable winning over the template's of the same name (the `prepare`
//! and `results` containers do not get it). A `podTemplate`
//! that is not a valid template fails the attempt before the pod is
//! created. When the TaskRun cannot be read, the pod is created without
//! owner, service account or template (a warning is logged).
//!
//! # Results and the 4 KiB termination message
//!
//! The `results` container writes, for each declared result that exists,
//! `<name> <bytes>\n<bytes>\n` into its termination message
//! (`terminationMessagePath: /tekton/termination`), and the same text to
//! its output. Kubelet keeps at most 4096 bytes of a termination message
//! (and 12 KiB per pod): when the text is larger, the container writes
//! `overflow <bytes>` instead and the executor reads the full text from the
//! container's log (pods/log has no such cap), like Tekton's
//! `results-from: sidecar-logs`. Either way a result larger than
//! [`PodExecutorConfig::max_result_size`] fails the attempt with
//! `TaskRunResultLargerThanAllowedLimit`, and a truncated or malformed
//! message fails it naming the problem. Values are kept verbatim.
//!
//! # Following, timeouts and cancellation
//!
//! A task per attempt creates the pod (adopting an existing one of the same
//! name: a restart of the operator, or a retry of a lost response), follows
//! it with a kube watcher and publishes an [`ExecutionStatus`] after each
//! change: init container states give each step's phase, times and exit
//! code; a step failing (non-zero exit, `OOMKilled`), an image that cannot
//! be pulled (`ImagePullBackOff`, `InvalidImageName`:
//! `TaskRunImagePullFailed`), an evicted pod (`PodEvicted`) or a deleted
//! pod end the attempt. The request's timeout, a step's `timeout` (from the
//! step's `startedAt`) and [`CancelHandle::cancel`](knative_build::executor::CancelHandle::cancel)
//! stop it: the executor reads the logs of every container that started
//! (pods/log, at most [`PodExecutorConfig::max_log_bytes`] each) and keeps
//! them, then deletes the pod, as Tekton does, so the logs outlive the pod
//! (§5, pain point 4). A step timeout stops the pod, so `onError:
//! continue` cannot carry on after it. [`StepExecutor::logs`] returns the
//! kept logs, or reads the pod's live ones.
//!
//! RBAC: `pods` create, get, list, watch, delete; `pods/log` get;
//! `tekton.dev/taskruns` get.

use base64::Engine as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerStatus, EmptyDirVolumeSource, EnvVar, HostAlias,
    LocalObjectReference, Pod, PodDNSConfig, PodSecurityContext, PodSpec, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use knative_build::api::task_run_reasons as reasons;
use knative_build::api::{
    OnError, Step, TaskRun, TaskRunSpec, TaskSpec, WorkspaceBinding, all_hold, builtin,
};
use knative_build::executor::{
    CancelHandle, CancelSignal, Execution, ExecutionFailure, ExecutionPhase, ExecutionRequest,
    ExecutionStatus, ExecutorError, RunKey, RunPaths, StepExecutor, StepOutcome, StepPhase,
    termination_reasons as term,
};
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

/// The default helper image: a POSIX shell with `mkdir`, `chmod`, `cat`,
/// `wc` and `cp`.
pub const DEFAULT_HELPER_IMAGE: &str = "docker.io/library/busybox:1.37";
/// The default limit of one result: 1 MiB (as the local executor's).
pub const DEFAULT_MAX_RESULT_SIZE: u64 = knative_build::executor::DEFAULT_MAX_RESULT_SIZE;
/// Where steps find `$(results.<r>.path)` files.
pub const RESULTS_DIR: &str = "/tekton/results";
/// Where steps find `$(steps.step-<s>.exitCode.path)` files.
pub const STEPS_DIR: &str = "/tekton/steps";
/// Where script steps' scripts are written.
pub const SCRIPTS_DIR: &str = "/tekton/scripts";
/// `$(credentials.path)`.
pub const CREDS_DIR: &str = "/tekton/creds";
/// The default working area (an emptyDir), parent of relative `workingDir`s.
pub const WORKSPACE_DIR: &str = "/workspace";
/// Every container's `terminationMessagePath`.
pub const TERMINATION_PATH: &str = "/tekton/termination";
/// The init container that writes scripts and exit code files.
pub const PREPARE_CONTAINER: &str = "prepare";
/// The container that reports the results.
pub const RESULTS_CONTAINER: &str = "results";
/// The largest termination message kubelet keeps.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4096;
/// The label naming the TaskRun of a pod (Tekton's).
const TASK_RUN_LABEL: &str = "tekton.dev/taskRun";
/// Init container waiting reasons that end the attempt.
const IMAGE_FAILURES: &[&str] = &["ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"];

/// Settings of a [`PodStepExecutor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodExecutorConfig {
    /// The image of the `prepare` and `results` containers
    /// ([`DEFAULT_HELPER_IMAGE`]).
    pub helper_image: String,
    /// The largest result accepted, in bytes ([`DEFAULT_MAX_RESULT_SIZE`]).
    pub max_result_size: u64,
    /// How much of each container's log is kept when a pod is deleted
    /// (1 MiB).
    pub max_log_bytes: u64,
    /// Added to the attempt's timeout for the pod's
    /// `activeDeadlineSeconds` (60 s).
    pub deadline_slack: Duration,
    /// How many attempts' kept logs are remembered (256; the oldest go first).
    pub kept_runs: usize,
}

impl Default for PodExecutorConfig {
    fn default() -> Self {
        PodExecutorConfig {
            helper_image: DEFAULT_HELPER_IMAGE.to_owned(),
            max_result_size: DEFAULT_MAX_RESULT_SIZE,
            max_log_bytes: 1024 * 1024,
            deadline_slack: Duration::from_secs(60),
            kept_runs: 256,
        }
    }
}

/// One step as it runs in the pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedStep {
    /// The step (step template applied, references substituted).
    pub step: Step,
    /// Its container name.
    pub container: String,
    /// Whether it is in the pod (false: its `when` does not hold).
    pub included: bool,
    /// Whether it runs under the `onError: continue` wrapper.
    pub wrapped: bool,
}

/// A TaskRun attempt's pod and how its steps map to containers.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    /// The attempt.
    pub key: RunKey,
    /// The pod to create.
    pub pod: Pod,
    /// The steps, in order.
    pub steps: Vec<PlannedStep>,
    /// The declared results.
    pub results: Vec<String>,
}

fn unsupported(message: impl Into<String>) -> ExecutorError {
    ExecutorError::Unsupported {
        message: message.into(),
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        ..VolumeMount::default()
    }
}

/// The internal volumes and where every step mounts them.
const INTERNAL: &[(&str, &str)] = &[
    ("tekton-internal-workspace", WORKSPACE_DIR),
    ("tekton-internal-results", RESULTS_DIR),
    ("tekton-internal-steps", STEPS_DIR),
    ("tekton-internal-scripts", SCRIPTS_DIR),
    ("tekton-creds", CREDS_DIR),
];

/// The volume of a workspace binding, or why there is none.
fn workspace_volume(name: String, binding: &WorkspaceBinding) -> Result<Volume, ExecutorError> {
    let mut volume = Volume {
        name,
        ..Volume::default()
    };
    if let Some(claim) = &binding.persistent_volume_claim {
        volume.persistent_volume_claim = Some(claim.clone());
    } else if let Some(dir) = &binding.empty_dir {
        volume.empty_dir = Some(dir.clone());
    } else if let Some(config_map) = &binding.config_map {
        volume.config_map = Some(config_map.clone());
    } else if let Some(secret) = &binding.secret {
        volume.secret = Some(secret.clone());
    } else if let Some(projected) = &binding.projected {
        volume.projected = Some(projected.clone());
    } else if let Some(csi) = &binding.csi {
        volume.csi = Some(csi.clone());
    } else if binding.volume_claim_template.is_some() {
        return Err(unsupported(format!(
            "workspace {:?} is bound to a volumeClaimTemplate, which the pod executor does not \
             turn into a claim; create a PersistentVolumeClaim and bind persistentVolumeClaim",
            binding.name
        )));
    } else {
        return Err(unsupported(format!(
            "workspace {:?} is bound to no volume source",
            binding.name
        )));
    }
    Ok(volume)
}

/// Where the steps of `spec` find their paths in a pod.
pub fn pod_paths(
    spec: &TaskSpec,
    workspaces: &[WorkspaceBinding],
) -> Result<RunPaths, ExecutorError> {
    let mut paths = RunPaths {
        results_dir: RESULTS_DIR.to_owned(),
        steps_dir: STEPS_DIR.to_owned(),
        workspaces: BTreeMap::new(),
        credentials: CREDS_DIR.to_owned(),
    };
    for decl in &spec.workspaces {
        let path = match workspaces.iter().find(|b| b.name == decl.name) {
            Some(binding) => {
                workspace_volume(String::new(), binding)?;
                decl.effective_mount_path()
            }
            None if decl.is_optional() => String::new(),
            None => {
                return Err(unsupported(format!(
                    "workspace {:?} is declared by the Task but not bound by the TaskRun",
                    decl.name
                )));
            }
        };
        paths.workspaces.insert(decl.name.clone(), path);
    }
    Ok(paths)
}

/// Quotes `text` for a POSIX shell.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The script a script step's file holds.
fn script_file(script: &str) -> String {
    if script.starts_with("#!") {
        script.to_owned()
    } else {
        format!("#!/bin/sh\nset -e\n{script}")
    }
}

/// The shell program of the `results` container for `results`.
fn results_program(results: &[String]) -> String {
    let names: Vec<String> = results.iter().map(|r| shell_quote(r)).collect();
    format!(
        "out=/tmp/tekton-results\n: > \"$out\"\n\
         for name in {names}; do\n\
         \x20 f={RESULTS_DIR}/\"$name\"\n\
         \x20 if [ -f \"$f\" ]; then\n\
         \x20   printf '%s %s\\n' \"$name\" $(wc -c < \"$f\") >> \"$out\"\n\
         \x20   cat \"$f\" >> \"$out\"\n\
         \x20   printf '\\n' >> \"$out\"\n\
         \x20 fi\n\
         done\n\
         size=$(wc -c < \"$out\")\n\
         if [ \"$size\" -le {TERMINATION_MESSAGE_LIMIT} ]; then cp \"$out\" {TERMINATION_PATH}; \
         else printf 'overflow %s' $size > {TERMINATION_PATH}; fi\n\
         cat \"$out\"\n",
        names = if names.is_empty() {
            "''".to_owned()
        } else {
            names.join(" ")
        },
    )
}

/// The shell program of the `onError: continue` wrapper; `$@` is the step.
fn wrapper_program(step: &Step) -> String {
    let exit_file = if step.name.is_empty() {
        String::new()
    } else {
        format!(
            "printf '%s' \"$code\" > {STEPS_DIR}/step-{}/exitCode\n",
            step.name
        )
    };
    format!(
        "\"$@\"\ncode=$?\n{exit_file}printf 'exitCode %s' \"$code\" > {TERMINATION_PATH}\nexit 0\n"
    )
}

/// Builds the attempt's pod (see the [module docs](self)); `owner` is the
/// TaskRun's controller reference, when known.
pub fn desired_pod(
    request: &ExecutionRequest,
    owner: Option<OwnerReference>,
    config: &PodExecutorConfig,
) -> Result<PodPlan, ExecutorError> {
    let spec = &request.task_spec;
    let key = &request.key;
    if !spec.sidecars.is_empty() {
        return Err(unsupported(
            "sidecars are not supported by the pod executor",
        ));
    }
    pod_paths(spec, &request.workspaces)?;
    let mut volumes: Vec<Volume> = INTERNAL.iter().map(|(name, _)| empty_dir(name)).collect();
    volumes.extend(spec.volumes.iter().cloned());
    let mut workspace_mounts = Vec::new();
    for (i, decl) in spec.workspaces.iter().enumerate() {
        let Some(binding) = request.workspaces.iter().find(|b| b.name == decl.name) else {
            continue;
        };
        let name = format!("ws-{i}");
        volumes.push(workspace_volume(name.clone(), binding)?);
        workspace_mounts.push(VolumeMount {
            sub_path: binding.sub_path.clone().filter(|s| !s.is_empty()),
            read_only: decl.read_only.filter(|r| *r),
            ..mount(&name, &decl.effective_mount_path())
        });
    }
    let mut internal_mounts: Vec<VolumeMount> = INTERNAL
        .iter()
        .map(|(name, path)| mount(name, path))
        .collect();
    internal_mounts.extend(workspace_mounts);

    let mut prepare = vec!["set -e".to_owned()];
    let mut prepare_env = Vec::new();
    let mut steps = Vec::with_capacity(spec.steps.len());
    let mut containers = Vec::new();
    for (i, step) in spec.steps.iter().enumerate() {
        let container = step.container_name(i);
        if step.is_image_builder() {
            return Err(unsupported(format!(
                "{container}: the built-in step {:?} runs the image builder in-process, which \
                 the pod executor cannot do; build in the pod with an image builder (kaniko, \
                 buildah, …) or run this TaskRun on the local executor",
                builtin::IMAGE_BUILDER
            )));
        }
        if step.ref_.is_some() {
            return Err(unsupported(format!(
                "{container}: StepActions (`ref`) are not supported by the pod executor"
            )));
        }
        let included = match all_hold(&step.when) {
            Some(holds) => holds,
            None => {
                return Err(unsupported(format!(
                    "{container}: a `cel` when expression can only be `true` or `false` here"
                )));
            }
        };
        let wrapped = step.on_error() == OnError::Continue;
        steps.push(PlannedStep {
            step: step.clone(),
            container: container.clone(),
            included,
            wrapped,
        });
        if !included {
            continue;
        }
        if !step.name.is_empty() {
            let dir = format!("{STEPS_DIR}/step-{}", step.name);
            prepare.push(format!("mkdir -p {dir}"));
            if !wrapped {
                prepare.push(format!("printf 0 > {dir}/exitCode"));
            }
        }
        let mut argv: Vec<String> = match &step.script {
            Some(script) => {
                let var = format!("SCRIPT_{i}");
                let file = format!("{SCRIPTS_DIR}/{container}");
                // Base64 in the variable: the kubelet expands `$(NAME)`
                // and turns `$$` into `$` in env values, which would change
                // the script.
                prepare.push(format!("printf '%s' \"${var}\" | base64 -d > {file}"));
                prepare.push(format!("chmod +x {file}"));
                prepare_env.push(EnvVar {
                    name: var,
                    value: Some(
                        base64::engine::general_purpose::STANDARD.encode(script_file(script)),
                    ),
                    ..EnvVar::default()
                });
                vec![file]
            }
            None => step.command.clone(),
        };
        let mut args = step.args.clone();
        if wrapped {
            if argv.is_empty() {
                return Err(unsupported(format!(
                    "{container}: `onError: continue` needs a command or script in the pod \
                     executor (the step runs under a shell wrapper)"
                )));
            }
            argv.append(&mut args);
            args = argv;
            argv = vec![
                "/bin/sh".to_owned(),
                "-c".to_owned(),
                wrapper_program(step),
                container.clone(),
            ];
        }
        let working_dir = step
            .working_dir
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(|d| {
                if d.starts_with('/') {
                    d.to_owned()
                } else {
                    format!("{WORKSPACE_DIR}/{d}")
                }
            });
        let mut mounts = step.volume_mounts.clone();
        mounts.extend(internal_mounts.iter().cloned());
        containers.push(Container {
            name: container,
            image: step.image.clone(),
            command: (!argv.is_empty()).then_some(argv),
            args: (!args.is_empty()).then_some(args),
            env: (!step.env.is_empty()).then(|| step.env.clone()),
            env_from: (!step.env_from.is_empty()).then(|| step.env_from.clone()),
            working_dir,
            resources: step.compute_resources.clone(),
            volume_mounts: Some(mounts),
            volume_devices: (!step.volume_devices.is_empty()).then(|| step.volume_devices.clone()),
            image_pull_policy: step.image_pull_policy.clone(),
            security_context: step.security_context.clone(),
            termination_message_path: Some(TERMINATION_PATH.to_owned()),
            termination_message_policy: Some("File".to_owned()),
            ..Container::default()
        });
    }
    let helper =
        |name: &str, program: String, env: Vec<EnvVar>, mounts: Vec<VolumeMount>| Container {
            name: name.to_owned(),
            image: Some(config.helper_image.clone()),
            command: Some(vec!["/bin/sh".to_owned(), "-c".to_owned(), program]),
            env: (!env.is_empty()).then_some(env),
            volume_mounts: Some(mounts),
            termination_message_path: Some(TERMINATION_PATH.to_owned()),
            termination_message_policy: Some("File".to_owned()),
            ..Container::default()
        };
    let mut init_containers = vec![helper(
        PREPARE_CONTAINER,
        prepare.join("\n") + "\n",
        prepare_env,
        vec![
            mount("tekton-internal-steps", STEPS_DIR),
            mount("tekton-internal-scripts", SCRIPTS_DIR),
        ],
    )];
    init_containers.extend(containers);
    let results: Vec<String> = spec.results.iter().map(|r| r.name.clone()).collect();
    let collector = helper(
        RESULTS_CONTAINER,
        results_program(&results),
        Vec::new(),
        vec![mount("tekton-internal-results", RESULTS_DIR)],
    );
    let deadline = request
        .timeout
        .map(|t| i64::try_from((t + config.deadline_slack).as_secs()).unwrap_or(i64::MAX));
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(key.pod_name()),
            namespace: Some(key.namespace.clone()),
            labels: Some(BTreeMap::from([
                (TASK_RUN_LABEL.to_owned(), key.task_run.clone()),
                (
                    "app.kubernetes.io/managed-by".to_owned(),
                    "knative-operator".to_owned(),
                ),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            active_deadline_seconds: deadline,
            init_containers: Some(init_containers),
            containers: vec![collector],
            volumes: Some(volumes),
            enable_service_links: Some(false),
            ..PodSpec::default()
        }),
        status: None,
    };
    Ok(PodPlan {
        key: key.clone(),
        pod,
        steps,
        results,
    })
}

/// A TaskRun's `spec.podTemplate` (Tekton's `pod.Template`): pod settings
/// the executor copies onto the attempt's pod (see [`apply_task_run`]).
/// Unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Labels a node must have to run the pod.
    #[serde(default)]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Environment variables for every step container (a step's own
    /// variable of the same name wins).
    #[serde(default)]
    pub env: Option<Vec<EnvVar>>,
    /// Taints the pod tolerates.
    #[serde(default)]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod (anti-)affinity.
    #[serde(default)]
    pub affinity: Option<Affinity>,
    /// The pod's security context.
    #[serde(default)]
    pub security_context: Option<PodSecurityContext>,
    /// Volumes added after the executor's own.
    #[serde(default)]
    pub volumes: Option<Vec<Volume>>,
    /// The RuntimeClass the pod runs with.
    #[serde(default)]
    pub runtime_class_name: Option<String>,
    /// Whether the service account's token is mounted.
    #[serde(default)]
    pub automount_service_account_token: Option<bool>,
    /// The pod's DNS policy.
    #[serde(default)]
    pub dns_policy: Option<String>,
    /// The pod's DNS settings.
    #[serde(default)]
    pub dns_config: Option<PodDNSConfig>,
    /// Whether services are exposed as environment variables (`false`
    /// when unset).
    #[serde(default)]
    pub enable_service_links: Option<bool>,
    /// The pod's PriorityClass.
    #[serde(default)]
    pub priority_class_name: Option<String>,
    /// The scheduler that places the pod.
    #[serde(default)]
    pub scheduler_name: Option<String>,
    /// Secrets to pull the pod's images with.
    #[serde(default)]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Extra `/etc/hosts` entries.
    #[serde(default)]
    pub host_aliases: Option<Vec<HostAlias>>,
    /// Whether the pod uses the node's network.
    #[serde(default)]
    pub host_network: Option<bool>,
    /// How the pod spreads across topology domains.
    #[serde(default)]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
}

/// `template` env first, without the names `own` sets, then `own`.
fn merged_env(template: &[EnvVar], own: Option<Vec<EnvVar>>) -> Vec<EnvVar> {
    let own = own.unwrap_or_default();
    let mut env: Vec<EnvVar> = template
        .iter()
        .filter(|t| !own.iter().any(|o| o.name == t.name))
        .cloned()
        .collect();
    env.extend(own);
    env
}

/// Puts the TaskRun's `serviceAccountName` and `podTemplate` on `pod` (see
/// the [module docs](self)). Fails, leaving `pod` as it was, when the
/// template is not a valid [`PodTemplate`].
pub fn apply_task_run(pod: &mut Pod, run: &TaskRunSpec) -> Result<(), String> {
    let template: PodTemplate = match &run.pod_template {
        None | Some(serde_json::Value::Null) => PodTemplate::default(),
        Some(value) => serde_json::from_value(value.clone())
            .map_err(|e| format!("invalid podTemplate: {e}"))?,
    };
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    if let Some(account) = run
        .service_account_name
        .as_deref()
        .filter(|a| !a.is_empty())
    {
        spec.service_account_name = Some(account.to_owned());
    }
    if let Some(env) = template.env.filter(|e| !e.is_empty()) {
        for container in spec.init_containers.iter_mut().flatten() {
            if container.name != PREPARE_CONTAINER {
                container.env = Some(merged_env(&env, container.env.take()));
            }
        }
    }
    if let Some(extra) = template.volumes {
        spec.volumes.get_or_insert_with(Vec::new).extend(extra);
    }
    macro_rules! copy {
        ($($field:ident),* $(,)?) => {
            $(if let Some(value) = template.$field {
                spec.$field = Some(value);
            })*
        };
    }
    copy!(
        node_selector,
        tolerations,
        affinity,
        security_context,
        runtime_class_name,
        automount_service_account_token,
        dns_policy,
        dns_config,
        enable_service_links,
        priority_class_name,
        scheduler_name,
        image_pull_secrets,
        host_aliases,
        host_network,
        topology_spread_constraints,
    );
    Ok(())
}

/// What the termination message of the `results` container says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultsMessage {
    /// The results, verbatim.
    Results(BTreeMap<String, String>),
    /// The results were too large for the message (this many bytes); they
    /// are in the container's log.
    Overflow(usize),
}

/// Parses what the `results` container wrote (see the [module
/// docs](self)): `<name> <bytes>\n<value>\n` per result, or
/// `overflow <bytes>`. Fails on truncated or malformed text.
pub fn parse_results(text: &str) -> Result<ResultsMessage, String> {
    if let Some(size) = text.strip_prefix("overflow ") {
        return size
            .trim()
            .parse()
            .map(ResultsMessage::Overflow)
            .map_err(|_| format!("malformed results overflow marker {text:?}"));
    }
    let mut results = BTreeMap::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (header, after) = rest
            .split_once('\n')
            .ok_or_else(|| "the results text was cut short (a header has no end)".to_owned())?;
        let (name, size) = header
            .split_once(' ')
            .ok_or_else(|| format!("malformed result header {header:?}"))?;
        let size: usize = size
            .trim()
            .parse()
            .map_err(|_| format!("malformed result header {header:?}"))?;
        let value = after
            .get(..size)
            .ok_or_else(|| format!("result {name:?} was cut short ({size} bytes announced)"))?;
        rest = after[size..]
            .strip_prefix('\n')
            .ok_or_else(|| format!("result {name:?} is not followed by a newline"))?;
        results.insert(name.to_owned(), value.to_owned());
    }
    Ok(ResultsMessage::Results(results))
}

/// Checks result sizes against `limit`.
fn check_sizes(results: &BTreeMap<String, String>, limit: u64) -> Result<(), ExecutionFailure> {
    for (name, value) in results {
        let size = value.len() as u64;
        if size > limit {
            return Err(ExecutionFailure {
                reason: reasons::RESULT_LARGER_THAN_ALLOWED.to_owned(),
                message: format!(
                    "result {name:?} is {size} bytes, more than the {limit} bytes allowed \
                     (PodExecutorConfig::max_result_size)"
                ),
            });
        }
    }
    Ok(())
}

fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a ContainerStatus> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == name)
}

fn failed(message: String) -> ExecutionFailure {
    ExecutionFailure {
        reason: reasons::FAILED.to_owned(),
        message,
    }
}

/// The attempt's status as `pod` shows it (before results are read): the
/// steps from the init container states, the phase from the pod's, and why
/// it failed. `None` for the pod means it is gone.
pub fn observed_status(plan: &PodPlan, pod: Option<&Pod>) -> ExecutionStatus {
    let mut status = ExecutionStatus {
        pod_name: plan.key.pod_name(),
        ..ExecutionStatus::default()
    };
    let Some(pod) = pod else {
        status.phase = ExecutionPhase::Failed;
        status.failure = Some(failed(format!(
            "pod {:?} was deleted before the steps finished",
            plan.key.pod_name()
        )));
        status.steps = plan.steps.iter().map(skipped).collect();
        return status;
    };
    let pod_phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let ended = matches!(pod_phase, Some("Succeeded" | "Failed"));
    let mut failure: Option<ExecutionFailure> = None;
    let mut any_started = false;
    for planned in &plan.steps {
        let mut outcome = StepOutcome {
            name: planned.step.name.clone(),
            container: planned.container.clone(),
            ..StepOutcome::default()
        };
        if !planned.included {
            outcome.phase = StepPhase::Terminated;
            outcome.termination_reason = Some(term::SKIPPED.to_owned());
            status.steps.push(outcome);
            continue;
        }
        let state = container_status(pod, &planned.container).and_then(|c| c.state.as_ref());
        if let Some(running) = state.and_then(|s| s.running.as_ref()) {
            outcome.phase = StepPhase::Running;
            outcome.started_at = running.started_at.as_ref().map(|t| t.0);
            any_started = true;
        } else if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            any_started = true;
            outcome.phase = StepPhase::Terminated;
            outcome.started_at = t.started_at.as_ref().map(|t| t.0);
            outcome.finished_at = t.finished_at.as_ref().map(|t| t.0);
            let wrapped_code = planned
                .wrapped
                .then(|| {
                    t.message
                        .as_deref()?
                        .strip_prefix("exitCode ")?
                        .trim()
                        .parse()
                        .ok()
                })
                .flatten();
            let code = wrapped_code.unwrap_or(t.exit_code);
            outcome.exit_code = Some(code);
            let reason = if code == 0 {
                term::COMPLETED
            } else if wrapped_code.is_some() {
                term::CONTINUED
            } else {
                term::ERROR
            };
            outcome.termination_reason = Some(reason.to_owned());
            if t.exit_code != 0 && failure.is_none() {
                let why = t.reason.as_deref().unwrap_or("Error");
                failure = Some(ExecutionFailure {
                    reason: if why == "OOMKilled" {
                        reasons::STEP_OOM.to_owned()
                    } else {
                        reasons::FAILED.to_owned()
                    },
                    message: format!(
                        "{:?} exited with code {} ({why})",
                        planned.container, t.exit_code
                    ),
                });
            }
        } else if let Some(waiting) = state.and_then(|s| s.waiting.as_ref())
            && let Some(reason) = waiting.reason.as_deref()
            && IMAGE_FAILURES.contains(&reason)
            && failure.is_none()
        {
            failure = Some(ExecutionFailure {
                reason: reasons::IMAGE_PULL_FAILED.to_owned(),
                message: format!(
                    "the step {:?} in TaskRun {:?} failed to pull the image {:?}: {}",
                    planned.container,
                    plan.key.task_run,
                    planned.step.image.as_deref().unwrap_or_default(),
                    waiting.message.as_deref().unwrap_or(reason)
                ),
            });
        } else if ended || failure.is_some() {
            outcome.phase = StepPhase::Terminated;
            outcome.termination_reason = Some(term::SKIPPED.to_owned());
        }
        status.steps.push(outcome);
    }
    status.started_at = status.steps.iter().filter_map(|s| s.started_at).min();
    let pod_status = pod.status.as_ref();
    match pod_phase {
        Some("Succeeded") => status.phase = ExecutionPhase::Succeeded,
        Some("Failed") => {
            status.phase = ExecutionPhase::Failed;
            let reason = pod_status.and_then(|s| s.reason.as_deref());
            let message = pod_status
                .and_then(|s| s.message.clone())
                .unwrap_or_default();
            failure = failure.or_else(|| {
                Some(match reason {
                    Some("Evicted") => ExecutionFailure {
                        reason: reasons::POD_EVICTED.to_owned(),
                        message,
                    },
                    Some("DeadlineExceeded") => ExecutionFailure {
                        reason: reasons::TIMED_OUT.to_owned(),
                        message: format!(
                            "TaskRun {:?} failed to finish within its timeout (the pod's \
                             activeDeadlineSeconds passed)",
                            plan.key.task_run
                        ),
                    },
                    _ => failed(format!(
                        "pod {:?} failed{}",
                        plan.key.pod_name(),
                        if message.is_empty() {
                            String::new()
                        } else {
                            format!(": {message}")
                        }
                    )),
                })
            });
        }
        _ if failure.is_some() => status.phase = ExecutionPhase::Failed,
        _ if any_started => status.phase = ExecutionPhase::Running,
        _ => status.phase = ExecutionPhase::Pending,
    }
    if status.phase == ExecutionPhase::Succeeded || status.phase == ExecutionPhase::Failed {
        let finished = status.steps.iter().filter_map(|s| s.finished_at).max();
        status.finished_at = finished.or_else(|| Some(Timestamp::now()));
    }
    status.failure = failure;
    status
}

fn skipped(planned: &PlannedStep) -> StepOutcome {
    StepOutcome {
        name: planned.step.name.clone(),
        container: planned.container.clone(),
        phase: StepPhase::Terminated,
        termination_reason: Some(term::SKIPPED.to_owned()),
        ..StepOutcome::default()
    }
}

/// Why an attempt is stopped before its pod ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    Cancelled,
    TaskTimeout,
    /// Step `index` ran past its timeout.
    StepTimeout(usize),
    /// The status shows a failure kubelet will not end (an image that
    /// cannot be pulled).
    Failure,
}

/// What the executor keeps per attempt.
struct Run {
    execution: Execution,
    /// The steps' container names, in order.
    containers: Vec<(String, String)>,
}

struct Inner {
    client: Client,
    config: PodExecutorConfig,
    runs: Mutex<HashMap<RunKey, Run>>,
    /// Logs kept from deleted pods.
    logs: Mutex<KeptLogs>,
}

/// Logs kept from deleted pods, by attempt then container, oldest attempt
/// first.
#[derive(Default)]
struct KeptLogs {
    order: Vec<RunKey>,
    logs: HashMap<RunKey, BTreeMap<String, Vec<u8>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The controller reference to TaskRun `name`; `None` without a uid.
fn owner_reference(name: &str, run: &TaskRun) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: TaskRun::api_version(&()).into_owned(),
        kind: TaskRun::kind(&()).into_owned(),
        name: name.to_owned(),
        uid: run.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Runs TaskRun attempts as pods. See the [module docs](self).
///
/// Cheap to clone: clones share their runs.
#[derive(Clone)]
pub struct PodStepExecutor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PodStepExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodStepExecutor")
            .field("config", &self.inner.config)
            .field("runs", &lock(&self.inner.runs).len())
            .finish()
    }
}

fn api_error(what: String, error: kube::Error) -> ExecutorError {
    ExecutorError::Io {
        path: what.into(),
        source: std::io::Error::other(error),
    }
}

fn is_status(error: &kube::Error, check: impl Fn(&kube::core::Status) -> bool) -> bool {
    matches!(error, kube::Error::Api(status) if check(status))
}

impl PodStepExecutor {
    /// An executor creating pods through `client`.
    pub fn new(client: Client, config: PodExecutorConfig) -> Self {
        PodStepExecutor {
            inner: Arc::new(Inner {
                client,
                config,
                runs: Mutex::new(HashMap::new()),
                logs: Mutex::new(KeptLogs::default()),
            }),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &PodExecutorConfig {
        &self.inner.config
    }

    fn pods(&self, namespace: &str) -> Api<Pod> {
        Api::namespaced(self.inner.client.clone(), namespace)
    }

    /// The TaskRun of attempt `key`, when it can be read.
    async fn task_run(&self, key: &RunKey) -> Option<TaskRun> {
        let api: Api<TaskRun> = Api::namespaced(self.inner.client.clone(), &key.namespace);
        match api.get(&key.task_run).await {
            Ok(run) => Some(run),
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot read the TaskRun; its pod gets no owner, service account or pod template"
                );
                None
            }
        }
    }

    /// Creates the pod, adopting one of the same name; retries transient
    /// errors until stopped. `Err` is why the attempt fails.
    async fn create_pod(
        &self,
        plan: &PodPlan,
        cancel: &mut CancelSignal,
        deadline: Option<Instant>,
    ) -> Result<(), Result<Stop, ExecutionFailure>> {
        let api = self.pods(&plan.key.namespace);
        let mut backoff = Duration::from_millis(500);
        loop {
            match api.create(&PostParams::default(), &plan.pod).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, |s| s.is_already_exists()) => {
                    tracing::info!("pod exists; following it");
                    return Ok(());
                }
                Err(e)
                    if is_status(&e, |s| {
                        s.code >= 400 && s.code < 500 && s.code != 429 && s.code != 409
                    }) =>
                {
                    return Err(Err(failed(format!(
                        "cannot create pod {:?}: {e}",
                        plan.key.pod_name()
                    ))));
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "cannot create the pod; retrying");
                }
            }
            let sleep = tokio::time::sleep(backoff);
            let timeout = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = sleep => {}
                () = cancel.cancelled() => return Err(Ok(Stop::Cancelled)),
                () = timeout => return Err(Ok(Stop::TaskTimeout)),
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Reads and keeps the logs of every container of `pod` that started.
    async fn save_logs(&self, key: &RunKey, pod: Option<&Pod>) {
        let Some(pod) = pod else { return };
        let api = self.pods(&key.namespace);
        let started: Vec<String> = pod
            .status
            .iter()
            .flat_map(|s| {
                s.init_container_statuses
                    .iter()
                    .flatten()
                    .chain(s.container_statuses.iter().flatten())
            })
            .filter(|c| {
                c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            })
            .map(|c| c.name.clone())
            .collect();
        let mut saved = BTreeMap::new();
        for container in started {
            let params = LogParams {
                container: Some(container.clone()),
                limit_bytes: i64::try_from(self.inner.config.max_log_bytes).ok(),
                ..LogParams::default()
            };
            match api.logs(&key.pod_name(), &params).await {
                Ok(text) => {
                    saved.insert(container, text.into_bytes());
                }
                Err(error) => {
                    tracing::warn!(%container, %error, "cannot read the logs before deleting the pod");
                }
            }
        }
        self.keep_logs(key, saved);
    }

    fn keep_logs(&self, key: &RunKey, saved: BTreeMap<String, Vec<u8>>) {
        let mut kept = lock(&self.inner.logs);
        if kept.logs.insert(key.clone(), saved).is_none() {
            kept.order.push(key.clone());
        }
        while kept.order.len() > self.inner.config.kept_runs.max(1) {
            let oldest = kept.order.remove(0);
            kept.logs.remove(&oldest);
        }
    }

    /// Reads the results the `results` container reported.
    async fn read_results(
        &self,
        plan: &PodPlan,
        pod: &Pod,
    ) -> Result<BTreeMap<String, String>, ExecutionFailure> {
        let message = container_status(pod, RESULTS_CONTAINER)
            .and_then(|c| c.state.as_ref())
            .and_then(|s| s.terminated.as_ref())
            .and_then(|t| t.message.clone())
            .unwrap_or_default();
        let parsed =
            parse_results(&message).map_err(|e| failed(format!("cannot read the results: {e}")))?;
        let results = match parsed {
            ResultsMessage::Results(results) => results,
            ResultsMessage::Overflow(size) => {
                tracing::debug!(
                    size,
                    "results overflow the termination message; reading the log"
                );
                let params = LogParams {
                    container: Some(RESULTS_CONTAINER.to_owned()),
                    ..LogParams::default()
                };
                let text = self
                    .pods(&plan.key.namespace)
                    .logs(&plan.key.pod_name(), &params)
                    .await
                    .map_err(|e| failed(format!("cannot read the results from the log: {e}")))?;
                match parse_results(&text) {
                    Ok(ResultsMessage::Results(results)) => results,
                    Ok(ResultsMessage::Overflow(_)) | Err(_) => {
                        return Err(failed(format!(
                            "cannot read the results: the {size} bytes in the log of \
                             container {RESULTS_CONTAINER:?} are malformed"
                        )));
                    }
                }
            }
        };
        check_sizes(&results, self.inner.config.max_result_size)?;
        Ok(results
            .into_iter()
            .filter(|(name, _)| plan.results.contains(name))
            .collect())
    }

    /// Runs one attempt: creates the pod, follows it, stops it.
    async fn run(
        self,
        plan: PodPlan,
        timeout: Option<Duration>,
        sender: watch::Sender<ExecutionStatus>,
        mut cancel: CancelSignal,
    ) {
        let started = Instant::now();
        let task_deadline = timeout.map(|t| started + t);
        let mut plan = plan;
        let mut prepared = Ok(());
        if plan.pod.metadata.owner_references.is_none()
            && let Some(run) = self.task_run(&plan.key).await
        {
            plan.pod.metadata.owner_references =
                owner_reference(&plan.key.task_run, &run).map(|o| vec![o]);
            prepared = apply_task_run(&mut plan.pod, &run.spec).map_err(|message| {
                Err(failed(format!(
                    "cannot build pod {:?}: {message}",
                    plan.key.pod_name()
                )))
            });
        }
        let created = match prepared {
            Ok(()) => self.create_pod(&plan, &mut cancel, task_deadline).await,
            Err(failure) => Err(failure),
        };
        let mut last: Option<Pod> = None;
        let stop = match created {
            Ok(()) => {
                self.follow(&plan, &sender, &mut cancel, task_deadline, &mut last)
                    .await
            }
            Err(Ok(stop)) => Some(stop),
            Err(Err(failure)) => {
                sender.send_modify(|s| {
                    s.phase = ExecutionPhase::Failed;
                    s.failure = Some(failure);
                    s.finished_at = Some(Timestamp::now());
                    for o in &mut s.steps {
                        if o.phase != StepPhase::Terminated {
                            o.phase = StepPhase::Terminated;
                            o.termination_reason = Some(term::SKIPPED.to_owned());
                        }
                    }
                });
                return;
            }
        };
        if let Some(stop) = stop {
            self.stop(&plan, stop, last.as_ref(), timeout, &sender)
                .await;
        }
        tracing::debug!(phase = ?sender.borrow().phase, elapsed = ?started.elapsed(), "attempt ended");
    }

    /// Follows the pod until it ends (`None`) or must be stopped.
    async fn follow(
        &self,
        plan: &PodPlan,
        sender: &watch::Sender<ExecutionStatus>,
        cancel: &mut CancelSignal,
        task_deadline: Option<Instant>,
        last: &mut Option<Pod>,
    ) -> Option<Stop> {
        let api = self.pods(&plan.key.namespace);
        let events =
            kube::runtime::watcher::watch_object(api, &plan.key.pod_name()).default_backoff();
        futures::pin_mut!(events);
        loop {
            let step_deadline = step_deadline(plan, &sender.borrow());
            let deadline = match (task_deadline, step_deadline) {
                (Some(t), Some((s, i))) if s < t => Some((s, Stop::StepTimeout(i))),
                (Some(t), _) => Some((t, Stop::TaskTimeout)),
                (None, Some((s, i))) => Some((s, Stop::StepTimeout(i))),
                (None, None) => None,
            };
            let timer = async {
                match deadline {
                    Some((at, stop)) => {
                        tokio::time::sleep_until(at).await;
                        stop
                    }
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                stop = timer => return Some(stop),
                () = cancel.cancelled() => return Some(Stop::Cancelled),
                event = events.next() => event,
            };
            let pod = match event {
                None => return Some(Stop::Failure),
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching the pod failed; retrying");
                    continue;
                }
                Some(Ok(pod)) => pod,
            };
            let mut status = observed_status(plan, pod.as_ref());
            *last = pod;
            match status.phase {
                ExecutionPhase::Succeeded => {
                    if let Some(pod) = last.as_ref() {
                        match self.read_results(plan, pod).await {
                            Ok(results) => status.results = results,
                            Err(failure) => {
                                status.phase = ExecutionPhase::Failed;
                                status.failure = Some(failure);
                            }
                        }
                    }
                    sender.send_replace(status);
                    return None;
                }
                ExecutionPhase::Failed => {
                    let pod_ended = last.as_ref().is_none_or(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
                    });
                    sender.send_replace(status);
                    return if pod_ended { None } else { Some(Stop::Failure) };
                }
                _ => {
                    sender.send_if_modified(|current| {
                        if *current == status {
                            false
                        } else {
                            *current = status;
                            true
                        }
                    });
                }
            }
        }
    }

    /// Keeps the logs, deletes the pod and publishes how the attempt ended.
    async fn stop(
        &self,
        plan: &PodPlan,
        stop: Stop,
        last: Option<&Pod>,
        timeout: Option<Duration>,
        sender: &watch::Sender<ExecutionStatus>,
    ) {
        tracing::info!(
            ?stop,
            "stopping the attempt: keeping logs, deleting the pod"
        );
        self.save_logs(&plan.key, last).await;
        match self
            .pods(&plan.key.namespace)
            .delete(&plan.key.pod_name(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if is_status(&e, |s| s.is_not_found()) => {}
            Err(error) => tracing::warn!(%error, "cannot delete the pod"),
        }
        let task_run = &plan.key.task_run;
        let (phase, reason, failure) = match stop {
            Stop::Cancelled => (
                ExecutionPhase::Cancelled,
                term::CANCELLED,
                Some(ExecutionFailure {
                    reason: reasons::CANCELLED.to_owned(),
                    message: format!("TaskRun {task_run:?} was cancelled"),
                }),
            ),
            Stop::TaskTimeout => (
                ExecutionPhase::TimedOut,
                term::TASK_RUN_TIMEOUT,
                Some(ExecutionFailure {
                    reason: reasons::TIMED_OUT.to_owned(),
                    message: format!(
                        "TaskRun {task_run:?} failed to finish within {:?}",
                        knative_core::duration::format_go(timeout.unwrap_or_default())
                    ),
                }),
            ),
            Stop::StepTimeout(i) => {
                let planned = plan.steps.get(i);
                (
                    ExecutionPhase::Failed,
                    term::TIMEOUT_EXCEEDED,
                    Some(failed(format!(
                        "{:?} exited because the step exceeded its timeout of {:?}",
                        planned.map(|p| p.container.as_str()).unwrap_or_default(),
                        planned
                            .and_then(|p| p.step.timeout.as_deref())
                            .unwrap_or_default()
                    ))),
                )
            }
            Stop::Failure => (ExecutionPhase::Failed, term::ERROR, None),
        };
        sender.send_modify(|s| {
            for o in &mut s.steps {
                match o.phase {
                    StepPhase::Running => {
                        o.phase = StepPhase::Terminated;
                        o.finished_at = Some(Timestamp::now());
                        o.termination_reason = Some(reason.to_owned());
                    }
                    StepPhase::Waiting => {
                        o.phase = StepPhase::Terminated;
                        o.termination_reason = Some(term::SKIPPED.to_owned());
                    }
                    StepPhase::Terminated => {}
                }
            }
            s.phase = phase;
            if failure.is_some() {
                s.failure = failure;
            }
            if s.failure.is_none() {
                s.failure = Some(failed(format!(
                    "pod {:?} was deleted before the steps finished",
                    plan.key.pod_name()
                )));
            }
            s.finished_at = Some(Timestamp::now());
        });
    }
}

/// When the running step with a `timeout` must stop, and its index.
fn step_deadline(plan: &PodPlan, status: &ExecutionStatus) -> Option<(Instant, usize)> {
    let (i, outcome) = status
        .steps
        .iter()
        .enumerate()
        .find(|(_, o)| o.phase == StepPhase::Running)?;
    let limit = plan
        .steps
        .get(i)?
        .step
        .timeout
        .as_deref()
        .and_then(|t| knative_core::duration::parse_go(t).ok())
        .filter(|d| !d.is_zero())?;
    let started = outcome.started_at?;
    let elapsed: Duration = Timestamp::now()
        .duration_since(started)
        .try_into()
        .unwrap_or(Duration::ZERO);
    Some((Instant::now() + limit.saturating_sub(elapsed), i))
}

#[async_trait]
impl StepExecutor for PodStepExecutor {
    fn paths(
        &self,
        _key: &RunKey,
        spec: &TaskSpec,
        workspaces: &[WorkspaceBinding],
    ) -> Result<RunPaths, ExecutorError> {
        pod_paths(spec, workspaces)
    }

    async fn start(&self, request: ExecutionRequest) -> Result<Execution, ExecutorError> {
        if let Some(existing) = self.execution(&request.key) {
            return Ok(existing);
        }
        let plan = desired_pod(&request, None, &self.inner.config)?;
        let initial = ExecutionStatus {
            pod_name: request.key.pod_name(),
            phase: ExecutionPhase::Pending,
            steps: plan
                .steps
                .iter()
                .map(|s| {
                    if s.included {
                        StepOutcome {
                            name: s.step.name.clone(),
                            container: s.container.clone(),
                            ..StepOutcome::default()
                        }
                    } else {
                        skipped(s)
                    }
                })
                .collect(),
            ..ExecutionStatus::default()
        };
        let (sender, receiver) = watch::channel(initial);
        let (cancel, signal) = CancelHandle::new();
        let execution = Execution {
            status: receiver,
            cancel,
        };
        {
            let mut runs = lock(&self.inner.runs);
            if let Some(existing) = runs.get(&request.key) {
                return Ok(existing.execution.clone());
            }
            runs.insert(
                request.key.clone(),
                Run {
                    execution: execution.clone(),
                    containers: plan
                        .steps
                        .iter()
                        .map(|s| (s.step.name.clone(), s.container.clone()))
                        .collect(),
                },
            );
        }
        let span =
            tracing::info_span!("task_run_pod", key = %request.key, pod = %request.key.pod_name());
        tokio::spawn(
            self.clone()
                .run(plan, request.timeout, sender, signal)
                .instrument(span),
        );
        Ok(execution)
    }

    fn execution(&self, key: &RunKey) -> Option<Execution> {
        lock(&self.inner.runs).get(key).map(|r| r.execution.clone())
    }

    async fn logs(&self, key: &RunKey, step: &str) -> Result<Vec<u8>, ExecutorError> {
        let not_found = || ExecutorError::NotFound {
            key: key.clone(),
            step: Some(step.to_owned()),
        };
        if step.is_empty() || step.contains('/') {
            return Err(not_found());
        }
        let container = lock(&self.inner.runs)
            .get(key)
            .and_then(|run| {
                run.containers
                    .iter()
                    .find(|(name, container)| name == step || container == step)
                    .map(|(_, container)| container.clone())
            })
            .unwrap_or_else(|| {
                if step.starts_with("step-")
                    || step == PREPARE_CONTAINER
                    || step == RESULTS_CONTAINER
                {
                    step.to_owned()
                } else {
                    format!("step-{step}")
                }
            });
        if let Some(saved) = lock(&self.inner.logs).logs.get(key) {
            return saved.get(&container).cloned().ok_or_else(not_found);
        }
        let params = LogParams {
            container: Some(container.clone()),
            limit_bytes: i64::try_from(self.inner.config.max_log_bytes).ok(),
            ..LogParams::default()
        };
        match self
            .pods(&key.namespace)
            .logs(&key.pod_name(), &params)
            .await
        {
            Ok(text) => Ok(text.into_bytes()),
            Err(e) if is_status(&e, |s| s.is_not_found() || s.code == 400) => Err(not_found()),
            Err(e) => Err(api_error(
                format!(
                    "/api/v1/namespaces/{}/pods/{}/log?container={container}",
                    key.namespace,
                    key.pod_name()
                ),
                e,
            )),
        }
    }

    fn forget(&self, key: &RunKey) {
        let removed = lock(&self.inner.runs).remove(key);
        if let Some(run) = removed
            && !run.execution.status.borrow().phase.is_done()
        {
            run.execution.cancel.cancel();
        }
    }
}

#[cfg(test)]
mod tests;
