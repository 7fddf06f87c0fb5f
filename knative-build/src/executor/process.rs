//! One step as a host process in a process group of its own, stopped by
//! its deadlines or by cancellation (`specs/BUILD.md §1.7`, §1.9).
//!
//! The step's main process is started with `process_group(0)`, so it and
//! everything it starts (unless they leave the group) share one process
//! group. A deadline or cancellation sends `SIGTERM` to the group, then
//! `SIGKILL` after the grace period. When the main process exits on its
//! own, leftover group members are killed too, as a container's processes
//! die with it.

use std::ffi::OsString;
use std::fs::File;
use std::future::Future;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::CancelSignal;

/// What stops a step early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The step's own timeout passed.
    StepTimeout,
    /// The attempt's timeout passed.
    TaskTimeout,
    /// Cancellation was asked for.
    Cancelled,
}

/// The deadlines of one step.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Deadlines {
    /// The step's own deadline.
    pub(crate) step: Option<Instant>,
    /// The attempt's deadline.
    pub(crate) task: Option<Instant>,
}

impl Deadlines {
    /// Completes when the earlier deadline passes, saying which.
    async fn passed(self) -> Stop {
        let (at, stop) = match (self.step, self.task) {
            (Some(s), Some(t)) if s < t => (s, Stop::StepTimeout),
            (_, Some(t)) => (t, Stop::TaskTimeout),
            (Some(s), None) => (s, Stop::StepTimeout),
            (None, None) => std::future::pending().await,
        };
        tokio::time::sleep_until(at).await;
        stop
    }
}

/// Completes with the first stop condition.
pub(crate) async fn stopped(deadlines: Deadlines, cancel: &mut CancelSignal) -> Stop {
    tokio::select! {
        stop = deadlines.passed() => stop,
        () = cancel.cancelled() => Stop::Cancelled,
    }
}

/// Runs `work` until it completes or a stop condition comes first.
pub(crate) async fn guarded<F: Future>(
    work: F,
    deadlines: Deadlines,
    cancel: &mut CancelSignal,
) -> Result<F::Output, Stop> {
    if cancel.is_cancelled() {
        return Err(Stop::Cancelled);
    }
    tokio::select! {
        out = work => Ok(out),
        stop = stopped(deadlines, cancel) => Err(stop),
    }
}

/// A process to run for a step.
#[derive(Clone, Debug)]
pub(crate) struct ProcessSpec {
    /// The program.
    pub(crate) program: OsString,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Variables set on top of the inherited (or empty) environment.
    pub(crate) env: Vec<(String, String)>,
    /// Start from an empty environment instead of the executor's.
    pub(crate) clear_env: bool,
    /// The working directory.
    pub(crate) working_dir: PathBuf,
}

/// How a step process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ProcessEnd {
    /// The exit code (`128 + signal` when killed by a signal).
    pub(crate) exit_code: i32,
    /// What stopped it early, if anything did.
    pub(crate) stopped: Option<Stop>,
}

/// The exit code a shell would report.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// How often to try again when `exec` finds the script still open for
/// writing in a process another thread is forking (`ETXTBSY`).
const TEXT_BUSY_RETRIES: u32 = 20;

fn spawn(spec: &ProcessSpec, log: &File) -> std::io::Result<tokio::process::Child> {
    let mut attempt = 0;
    loop {
        let mut cmd = tokio::process::Command::new(&spec.program);
        cmd.args(&spec.args)
            .current_dir(&spec.working_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log.try_clone()?))
            .process_group(0)
            .kill_on_drop(true);
        if spec.clear_env {
            cmd.env_clear();
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(Errno::ETXTBSY as i32) => {
                attempt += 1;
                if attempt > TEXT_BUSY_RETRIES {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            other => return other,
        }
    }
}

fn signal_group(pgid: Option<u32>, signal: Signal) {
    let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // ESRCH: the group is gone already.
    let _ = killpg(Pid::from_raw(pgid), signal);
}

/// Runs the process with its output appended to `log`, until it exits or
/// a stop condition comes; then makes sure no process of its group is left.
pub(crate) async fn run(
    spec: &ProcessSpec,
    log: &File,
    deadlines: Deadlines,
    cancel: &mut CancelSignal,
    grace: Duration,
) -> std::io::Result<ProcessEnd> {
    if cancel.is_cancelled() {
        return Ok(ProcessEnd {
            exit_code: 128 + Signal::SIGKILL as i32,
            stopped: Some(Stop::Cancelled),
        });
    }
    let mut child = spawn(spec, log)?;
    let pgid = child.id();
    let outcome = tokio::select! {
        status = child.wait() => Ok(status?),
        stop = stopped(deadlines, cancel) => Err(stop),
    };
    let end = match outcome {
        Ok(status) => ProcessEnd {
            exit_code: exit_code(status),
            stopped: None,
        },
        Err(stop) => {
            tracing::debug!(?stop, ?pgid, "stopping step process group");
            signal_group(pgid, Signal::SIGTERM);
            let status = match tokio::time::timeout(grace, child.wait()).await {
                Ok(status) => status?,
                Err(_) => {
                    signal_group(pgid, Signal::SIGKILL);
                    child.wait().await?
                }
            };
            ProcessEnd {
                exit_code: exit_code(status),
                stopped: Some(stop),
            }
        }
    };
    // What the step left running dies with it, as in a container.
    signal_group(pgid, Signal::SIGKILL);
    Ok(end)
}
