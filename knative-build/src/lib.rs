//! # knative-build
//!
//! Tekton-style builds as a library: tasks and pipelines that turn source
//! into OCI images and push them to a registry, without Docker.
//!
//! This crate is being built; today it holds only this description of what
//! it will contain (`specs/BUILD.md` is the behaviour it implements):
//!
//! - `api`: `tekton.dev/v1` Task, TaskRun, Pipeline and PipelineRun (§1).
//! - `substitution`: `$(params.*)`, `$(tasks.*.results.*)`, `$(workspaces.*)`
//!   and `$(context.*)` references (§1.4).
//! - `scheduler`: the PipelineRun DAG as a pure state machine (§1.7–§1.9).
//! - `executor`: the `StepExecutor` trait and a local process executor (§1.10).
//! - `image`: reproducible OCI image building and registry push (§2).
