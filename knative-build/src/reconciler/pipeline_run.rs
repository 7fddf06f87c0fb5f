//! PipelineRun → TaskRuns, driven by the pure scheduler
//! ([`scheduler::next`](crate::scheduler::next)), and the PipelineRun's
//! status (`specs/BUILD.md §1.6–§1.9`).

use std::sync::Arc;

use async_trait::async_trait;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use knative_core::apis::names::child_name;
use knative_core::apis::{Context, SetDefaults, Validate};
use knative_core::condition::ConditionStatus;
use knative_core::runtime::{Action, Reconciler};
use knative_core::store::{Objects, StoreError};
use kube::ResourceExt;
use kube::core::Selector;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::{ReconcileError, archive_attempt, set_succeeded};
use crate::api::{
    BuildDefaults, Pipeline, PipelineRun, PipelineRunStatus, PipelineSpec, TaskRun,
    WorkspaceBinding, labels, pipeline_run_reasons as reasons,
};
use crate::scheduler::{ChildRun, Decision, PipelineRunState, next};

/// False: the PipelineRun or its Pipeline is not valid.
const VALIDATION_FAILED: &str = "PipelineValidationFailed";
/// False: the Pipeline named by `pipelineRef` could not be read.
const COULDNT_GET_PIPELINE: &str = "CouldntGetPipeline";

/// The claim standing for a PipelineRun's `volumeClaimTemplate` workspace
/// `workspace`: `<template name or "pvc">-<hash of workspace and run>`, as
/// Tekton names the PVC it creates (§1.6). Every TaskRun of the run binds
/// this claim, so they share the workspace.
pub fn claim_name(pipeline_run: &PipelineRun, binding: &WorkspaceBinding) -> String {
    let base = binding
        .volume_claim_template
        .as_ref()
        .and_then(|t| t.metadata.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "pvc".to_owned());
    let owner = pipeline_run
        .metadata
        .uid
        .clone()
        .unwrap_or_else(|| pipeline_run.name_any());
    let hash = Sha256::digest(format!("{}/{owner}", binding.name).as_bytes());
    let hex: String = hash.iter().take(5).map(|b| format!("{b:02x}")).collect();
    child_name(&base, &format!("-{hex}"))
}

/// The run with each `volumeClaimTemplate` binding replaced by its claim.
fn with_claims(pipeline_run: &PipelineRun) -> PipelineRun {
    let mut run = pipeline_run.clone();
    for binding in &mut run.spec.workspaces {
        if binding.volume_claim_template.is_some() {
            let claim = claim_name(pipeline_run, binding);
            binding.volume_claim_template = None;
            binding.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: None,
            });
        }
    }
    run
}

/// Reconciles PipelineRuns into TaskRuns.
pub struct PipelineRunReconciler {
    pipeline_runs: Arc<dyn Objects<PipelineRun>>,
    pipelines: Arc<dyn Objects<Pipeline>>,
    task_runs: Arc<dyn Objects<TaskRun>>,
    defaults: BuildDefaults,
}

impl std::fmt::Debug for PipelineRunReconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineRunReconciler")
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl PipelineRunReconciler {
    /// A reconciler over these stores.
    pub fn new(
        pipeline_runs: Arc<dyn Objects<PipelineRun>>,
        pipelines: Arc<dyn Objects<Pipeline>>,
        task_runs: Arc<dyn Objects<TaskRun>>,
    ) -> Self {
        PipelineRunReconciler {
            pipeline_runs,
            pipelines,
            task_runs,
            defaults: BuildDefaults::default(),
        }
    }

    /// Uses these cluster defaults (the pipeline timeout of runs that set none).
    pub fn with_defaults(mut self, defaults: BuildDefaults) -> Self {
        self.defaults = defaults;
        self
    }

    async fn write(
        &self,
        pipeline_run: &PipelineRun,
        status: PipelineRunStatus,
    ) -> Result<(), ReconcileError> {
        if pipeline_run.status.as_ref() != Some(&status) {
            let mut updated = pipeline_run.clone();
            updated.status = Some(status);
            self.pipeline_runs.replace_status(&updated).await?;
        }
        Ok(())
    }

    /// Ends the run now with False / `reason`, without running anything.
    async fn fail(
        &self,
        pipeline_run: &PipelineRun,
        reason: &str,
        message: String,
        now: Timestamp,
    ) -> Result<Action, ReconcileError> {
        tracing::info!(%reason, %message, "PipelineRun failed");
        let mut status = pipeline_run.status.clone().unwrap_or_default();
        status.status.observed_generation = pipeline_run.metadata.generation;
        set_succeeded(
            &mut status.status,
            now,
            ConditionStatus::False,
            reason,
            message,
        );
        status.start_time.get_or_insert(Time(now));
        status.completion_time.get_or_insert(Time(now));
        self.write(pipeline_run, status).await?;
        Ok(Action::await_change())
    }

    /// The Pipeline to run, defaulted and validated, or why there is none.
    async fn resolve(
        &self,
        pipeline_run: &PipelineRun,
        ctx: &Context<'_>,
    ) -> Result<Result<PipelineSpec, (&'static str, String)>, ReconcileError> {
        if let Some(spec) = &pipeline_run.spec.pipeline_spec {
            return Ok(Ok(spec.clone()));
        }
        let Some(name) = pipeline_run
            .spec
            .pipeline_ref
            .as_ref()
            .and_then(|r| r.name.as_deref())
            .filter(|n| !n.is_empty())
        else {
            return Ok(Err((
                COULDNT_GET_PIPELINE,
                "pipelineRef resolvers are not supported; name a Pipeline".to_owned(),
            )));
        };
        let namespace = pipeline_run.namespace();
        let mut pipeline = match self.pipelines.get(namespace.as_deref(), name).await {
            Ok(p) => p,
            Err(e) if e.is_not_found() => {
                return Ok(Err((
                    COULDNT_GET_PIPELINE,
                    format!(
                        "Error retrieving pipeline for pipelinerun {}/{}: Pipeline {name:?} not found",
                        namespace.unwrap_or_default(),
                        pipeline_run.name_any()
                    ),
                )));
            }
            Err(e) => return Err(e.into()),
        };
        pipeline.set_defaults(ctx);
        let errors = pipeline.validate(ctx);
        if !errors.is_empty() {
            return Ok(Err((
                VALIDATION_FAILED,
                format!("Pipeline {name:?} is invalid: {errors}"),
            )));
        }
        Ok(Ok(pipeline.spec))
    }

    /// The TaskRuns this run owns.
    async fn children(&self, pipeline_run: &PipelineRun) -> Result<Vec<ChildRun>, StoreError> {
        let selector: Selector = [(labels::PIPELINE_RUN.to_owned(), pipeline_run.name_any())]
            .into_iter()
            .collect();
        let uid = pipeline_run.metadata.uid.as_deref();
        Ok(self
            .task_runs
            .list(pipeline_run.namespace().as_deref(), &selector)
            .await?
            .iter()
            .filter(|tr| {
                uid.is_none()
                    || tr
                        .owner_references()
                        .iter()
                        .any(|o| Some(o.uid.as_str()) == uid)
            })
            .filter_map(ChildRun::from_task_run)
            .collect())
    }

    /// Creates, retries and cancels TaskRuns as decided. `Err(message)`
    /// when a TaskRun cannot be created because it is invalid.
    async fn apply(
        &self,
        pipeline_run: &PipelineRun,
        pipeline: &PipelineSpec,
        decision: &Decision,
        now: Timestamp,
    ) -> Result<Result<(), String>, ReconcileError> {
        let namespace = pipeline_run.namespace();
        let ns = namespace.as_deref();
        let for_children = with_claims(pipeline_run);
        for create in &decision.create {
            let task_run = create.to_task_run(&for_children, pipeline);
            match self.task_runs.create(&task_run).await {
                Ok(_) => {
                    tracing::info!(task_run = %create.name, task = %create.pipeline_task, "created TaskRun")
                }
                Err(e) if e.is_already_exists() => {}
                Err(StoreError::Invalid { errors, .. }) => {
                    return Ok(Err(format!(
                        "cannot create TaskRun {:?} for task {:?}: {errors}",
                        create.name, create.pipeline_task
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        for retry in &decision.retry {
            let mut task_run = self.task_runs.get(ns, &retry.name).await?;
            if task_run.is_done() {
                let status = task_run.status.clone().unwrap_or_default();
                task_run.status = Some(archive_attempt(&status, now));
                self.task_runs.replace_status(&task_run).await?;
                tracing::info!(task_run = %retry.name, attempt = retry.attempt, "retrying TaskRun");
            }
        }
        for cancel in &decision.cancel {
            let mut task_run = match self.task_runs.get(ns, &cancel.name).await {
                Ok(tr) => tr,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            if !task_run.spec.is_cancelled() {
                cancel.apply_to(&mut task_run.spec);
                self.task_runs.replace(&task_run).await?;
                tracing::info!(task_run = %cancel.name, reason = cancel.message, "cancelling TaskRun");
            }
        }
        Ok(Ok(()))
    }

    async fn reconcile_pipeline_run(
        &self,
        pipeline_run: &PipelineRun,
    ) -> Result<Action, ReconcileError> {
        if pipeline_run.metadata.deletion_timestamp.is_some() || pipeline_run.is_done() {
            return Ok(Action::await_change());
        }
        let now = Timestamp::now();
        let ctx = Context::create().with_config(self.defaults.clone());
        let mut defaulted = pipeline_run.clone();
        defaulted.set_defaults(&ctx);
        let errors = defaulted.validate(&ctx);
        if !errors.is_empty() {
            return self
                .fail(pipeline_run, VALIDATION_FAILED, errors.to_string(), now)
                .await;
        }
        let pipeline = match self.resolve(&defaulted, &ctx).await? {
            Ok(p) => p,
            Err((reason, message)) => return self.fail(pipeline_run, reason, message, now).await,
        };
        let children = self.children(&defaulted).await?;
        let state = PipelineRunState {
            pipeline_run: &defaulted,
            pipeline: &pipeline,
            children: &children,
            now,
            defaults: self.defaults.clone(),
        };
        let decision = next(&state);
        if let Err(message) = self.apply(&defaulted, &pipeline, &decision, now).await? {
            return self
                .fail(pipeline_run, reasons::CREATE_RUN_FAILED, message, now)
                .await;
        }
        let mut status = pipeline_run.status.clone().unwrap_or_default();
        status.status.observed_generation = pipeline_run.metadata.generation;
        decision.apply_to(&mut status, now);
        status.pipeline_spec = Some(pipeline);
        if decision.is_done() {
            tracing::info!(reason = %decision.condition.reason, message = %decision.condition.message, "PipelineRun ended");
        }
        self.write(pipeline_run, status).await?;
        Ok(match decision.requeue_after {
            Some(delay) => Action::requeue_after(delay),
            None => Action::await_change(),
        })
    }
}

#[async_trait]
impl Reconciler<PipelineRun> for PipelineRunReconciler {
    type Error = ReconcileError;

    async fn reconcile(&self, pipeline_run: Arc<PipelineRun>) -> Result<Action, ReconcileError> {
        let span = tracing::info_span!(
            "pipeline_run",
            namespace = pipeline_run.namespace().unwrap_or_default(),
            name = pipeline_run.name_any(),
        );
        self.reconcile_pipeline_run(&pipeline_run)
            .instrument(span)
            .await
    }
}
