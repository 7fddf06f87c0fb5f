//! Running one TaskRun attempt's steps: the backend-agnostic
//! [`StepExecutor`] trait and the [`LocalExecutor`] that runs steps as
//! host processes (`specs/BUILD.md §1.2`, §1.5, §1.6, §1.10).
//!
//! The TaskRun reconciler resolves a Task (step template applied, every
//! `$(...)` substituted) and hands it to an executor as an
//! [`ExecutionRequest`]. The executor runs the steps one after another and
//! publishes an [`ExecutionStatus`] on a watch channel after every change:
//! per-step outcomes (exit code, start and end times, termination reason),
//! the Task's results once the steps are done, and how the attempt ended.
//! [`Execution::cancel`] stops it. Logs are kept per step and read back
//! with [`StepExecutor::logs`].
//!
//! Paths differ per backend: a pod mounts results at `/tekton/results` and
//! workspaces at their `mountPath`, the local executor uses directories
//! under its run root. The reconciler asks [`StepExecutor::paths`] before
//! substituting, so `$(results.x.path)`, `$(workspaces.w.path)`,
//! `$(steps.step-s.exitCode.path)` and `$(credentials.path)` name what the
//! steps really see ([`RunPaths::apply_to`]).
//!
//! The contract every executor keeps (the Kubernetes adapter's pod-based
//! executor included):
//!
//! - steps run in order; after a step fails (non-zero exit, step timeout)
//!   the remaining steps are skipped unless the failed step has
//!   `onError: continue` (§1.2);
//! - a step's `timeout` and the request's `timeout` (the whole attempt) are
//!   enforced by the executor; the attempt then ends
//!   [`ExecutionPhase::Failed`] (step timeout) or
//!   [`ExecutionPhase::TimedOut`];
//! - results are read after the steps, verbatim (no trimming), and only
//!   the ones the Task declares (§1.5); the executor's size limit replaces
//!   Tekton's 4 KiB termination-message cap (§5, pain point 1);
//! - [`StepExecutor::start`] is idempotent per [`RunKey`]: starting a key
//!   that runs (or ran) returns the existing [`Execution`];
//! - steps whose `image` is [`builtin::IMAGE_BUILDER`](crate::api::builtin)
//!   are run by the project's image builder, not in a container (§2).

mod builtin_step;
pub mod local;
mod process;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio::sync::watch;

use crate::api::{TaskSpec, WorkspaceBinding};
use crate::image::ImageError;
use crate::substitution::Replacements;

pub use local::{DEFAULT_MAX_RESULT_SIZE, LocalExecutor, LocalExecutorConfig};

/// One attempt of one TaskRun: what an executor keys its runs by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunKey {
    /// The TaskRun's namespace.
    pub namespace: String,
    /// The TaskRun's name.
    pub task_run: String,
    /// 0 for the first attempt, `n` for the `n`th retry.
    pub attempt: u32,
}

impl RunKey {
    /// The key of attempt `attempt` of TaskRun `namespace/task_run`.
    pub fn new(namespace: impl Into<String>, task_run: impl Into<String>, attempt: u32) -> Self {
        RunKey {
            namespace: namespace.into(),
            task_run: task_run.into(),
            attempt,
        }
    }

    /// The attempt's pod name as Tekton gives it (§1.1): `<taskrun>-pod`,
    /// then `<taskrun>-pod-retry<N>`, shortened with a hash past 63
    /// characters. Executors without pods use it to name the attempt.
    pub fn pod_name(&self) -> String {
        let suffix = if self.attempt == 0 {
            "-pod".to_owned()
        } else {
            format!("-pod-retry{}", self.attempt)
        };
        knative_core::apis::names::child_name(&self.task_run, &suffix)
    }
}

impl std::fmt::Display for RunKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}", self.namespace, self.task_run, self.attempt)
    }
}

/// Where an attempt's steps find results, exit codes, workspaces and
/// credentials, as the steps see them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunPaths {
    /// The directory of `$(results.<r>.path)` files.
    pub results_dir: String,
    /// The directory holding `step-<name>/exitCode` files.
    pub steps_dir: String,
    /// `$(workspaces.<w>.path)` for each declared workspace (empty for an
    /// unbound optional one).
    pub workspaces: BTreeMap<String, String>,
    /// `$(credentials.path)`.
    pub credentials: String,
}

impl RunPaths {
    /// `$(results.<result>.path)`.
    pub fn result_path(&self, result: &str) -> String {
        format!("{}/{result}", self.results_dir)
    }

    /// `$(steps.step-<step>.exitCode.path)`.
    pub fn exit_code_path(&self, step: &str) -> String {
        format!("{}/step-{step}/exitCode", self.steps_dir)
    }

    /// Points the path references of task-scope `replacements` (built with
    /// [`Replacements::for_task`]) at these paths.
    pub fn apply_to(&self, replacements: &mut Replacements) {
        for (result, path) in &mut replacements.result_paths {
            *path = self.result_path(result);
        }
        for (step, path) in &mut replacements.step_exit_code_paths {
            *path = self.exit_code_path(step);
        }
        for (name, values) in &mut replacements.workspaces {
            if let Some(path) = self.workspaces.get(name) {
                values.path.clone_from(path);
            }
        }
        replacements.credentials_path = Some(self.credentials.clone());
    }
}

/// One attempt to run: a resolved Task and where its workspaces come from.
#[derive(Clone, Debug, PartialEq)]
pub struct ExecutionRequest {
    /// Which TaskRun attempt this is.
    pub key: RunKey,
    /// The Task with the step template applied and every reference
    /// substituted (paths from [`StepExecutor::paths`]).
    pub task_spec: TaskSpec,
    /// The TaskRun's workspace bindings.
    pub workspaces: Vec<WorkspaceBinding>,
    /// How long the whole attempt may take; `None` for no limit.
    pub timeout: Option<Duration>,
}

/// Where an attempt stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExecutionPhase {
    /// Accepted, no step started yet.
    #[default]
    Pending,
    /// A step is running.
    Running,
    /// Every step succeeded (or failed with `onError: continue`).
    Succeeded,
    /// A step failed, a step timed out, a result was too large, or the
    /// executor could not run a step.
    Failed,
    /// The attempt ran past the request's timeout; its processes were killed.
    TimedOut,
    /// The attempt was cancelled; its processes were killed.
    Cancelled,
}

impl ExecutionPhase {
    /// Whether the attempt has ended.
    pub fn is_done(self) -> bool {
        matches!(
            self,
            ExecutionPhase::Succeeded
                | ExecutionPhase::Failed
                | ExecutionPhase::TimedOut
                | ExecutionPhase::Cancelled
        )
    }
}

/// Where one step stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StepPhase {
    /// Not started.
    #[default]
    Waiting,
    /// Running.
    Running,
    /// Ended (including skipped).
    Terminated,
}

/// `terminationReason` values of steps (upstream's, plus the container
/// reasons Kubernetes reports).
pub mod termination_reasons {
    /// The step exited 0.
    pub const COMPLETED: &str = "Completed";
    /// The step exited non-zero (or could not start).
    pub const ERROR: &str = "Error";
    /// The step failed but has `onError: continue`.
    pub const CONTINUED: &str = "Continued";
    /// The step did not run: an earlier step failed, its `when` did not
    /// hold, or the attempt was stopped before it.
    pub const SKIPPED: &str = "Skipped";
    /// The step ran past its own `timeout`.
    pub const TIMEOUT_EXCEEDED: &str = "TimeoutExceeded";
    /// The step was stopped by the attempt's timeout.
    pub const TASK_RUN_TIMEOUT: &str = "TaskRunTimeout";
    /// The step was stopped by cancellation.
    pub const CANCELLED: &str = "TaskRunCancelled";
}

/// What happened to one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// The step's name (empty for an unnamed step).
    pub name: String,
    /// Its container name, `step-<name>` or `step-unnamed-<i>`.
    pub container: String,
    /// Where it stands.
    pub phase: StepPhase,
    /// Its exit code once it ended (`128 + signal` when killed); `None` for
    /// a skipped step.
    pub exit_code: Option<i32>,
    /// When it started.
    pub started_at: Option<Timestamp>,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// Why it ended ([`termination_reasons`]).
    pub termination_reason: Option<String>,
}

/// Why an attempt did not succeed: a `Succeeded` reason of
/// [`task_run_reasons`](crate::api::task_run_reasons) and a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutionFailure {
    /// The TaskRun condition reason (`Failed`, `TaskRunTimeout`, …).
    pub reason: String,
    /// What went wrong, naming the step or result.
    pub message: String,
}

/// What an executor reports about one attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecutionStatus {
    /// The attempt's name on the backend (the pod name; the local
    /// executor's run directory name).
    pub pod_name: String,
    /// Where the attempt stands.
    pub phase: ExecutionPhase,
    /// When the first step started.
    pub started_at: Option<Timestamp>,
    /// When the attempt ended.
    pub finished_at: Option<Timestamp>,
    /// One outcome per step, in order.
    pub steps: Vec<StepOutcome>,
    /// The declared results that were written, as raw text, once the steps
    /// are done.
    pub results: BTreeMap<String, String>,
    /// Why the attempt did not succeed.
    pub failure: Option<ExecutionFailure>,
}

/// Asks an execution to stop. Cheap to clone; backend-agnostic (the local
/// executor kills process groups, a pod executor deletes the pod).
#[derive(Clone, Debug)]
pub struct CancelHandle {
    sender: Arc<watch::Sender<bool>>,
}

/// The receiving side of a [`CancelHandle`], held by the execution.
#[derive(Clone, Debug)]
pub struct CancelSignal {
    receiver: watch::Receiver<bool>,
}

impl CancelHandle {
    /// A new handle and the signal it fires.
    pub fn new() -> (CancelHandle, CancelSignal) {
        let (sender, receiver) = watch::channel(false);
        (
            CancelHandle {
                sender: Arc::new(sender),
            },
            CancelSignal { receiver },
        )
    }

    /// Asks the execution to stop (again is harmless).
    pub fn cancel(&self) {
        self.sender.send_replace(true);
    }

    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        *self.sender.borrow()
    }
}

impl CancelSignal {
    /// Whether cancellation was asked for.
    pub fn is_cancelled(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes once cancellation is asked for (never if every handle is
    /// dropped without asking).
    pub async fn cancelled(&mut self) {
        if self.receiver.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A started attempt: its status and a way to stop it.
#[derive(Clone, Debug)]
pub struct Execution {
    /// The latest status; notified after every change.
    pub status: watch::Receiver<ExecutionStatus>,
    /// Stops the attempt.
    pub cancel: CancelHandle,
}

impl Execution {
    /// A copy of the latest status.
    pub fn current(&self) -> ExecutionStatus {
        self.status.borrow().clone()
    }
}

/// Why an executor call failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The Task asks for something this executor cannot do; the message
    /// says what and what to do instead. Not worth retrying.
    #[error("{message}")]
    Unsupported {
        /// What is not supported.
        message: String,
    },
    /// A file or directory could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The executor knows no attempt with this key (or no such step).
    #[error("no execution {key} (or no such step {step:?})")]
    NotFound {
        /// The attempt.
        key: RunKey,
        /// The step asked for, if any.
        step: Option<String>,
    },
    /// The built-in image step failed to set up.
    #[error(transparent)]
    Image(#[from] ImageError),
}

impl ExecutorError {
    /// Whether retrying the same call cannot help (the Task must change).
    pub fn is_permanent(&self) -> bool {
        matches!(self, ExecutorError::Unsupported { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ExecutorError::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn unsupported(message: impl Into<String>) -> Self {
        ExecutorError::Unsupported {
            message: message.into(),
        }
    }
}

/// Runs TaskRun attempts on some backend: host processes
/// ([`LocalExecutor`]), pods (the Kubernetes adapter), or a mock
/// (`MockStepExecutor` with the `mock` feature). See the
/// [module docs](self) for the contract.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait StepExecutor: Send + Sync {
    /// Where the steps of attempt `key` of `spec` with these workspace
    /// bindings will find results, exit codes, workspaces and credentials.
    /// Fails with [`ExecutorError::Unsupported`] for a binding this
    /// executor cannot provide.
    fn paths(
        &self,
        key: &RunKey,
        spec: &TaskSpec,
        workspaces: &[WorkspaceBinding],
    ) -> Result<RunPaths, ExecutorError>;

    /// Starts the attempt (or returns the one already started under its key).
    async fn start(&self, request: ExecutionRequest) -> Result<Execution, ExecutorError>;

    /// The attempt started under `key`, if the executor still knows it.
    fn execution(&self, key: &RunKey) -> Option<Execution>;

    /// The output (stdout and stderr, interleaved) of one step of attempt
    /// `key`, by step name or container name (`step-<name>`).
    async fn logs(&self, key: &RunKey, step: &str) -> Result<Vec<u8>, ExecutorError>;

    /// Forgets a finished attempt (its logs stay readable). Forgetting a
    /// running attempt cancels it.
    fn forget(&self, key: &RunKey);
}
