//! # knative-build
//!
//! Tekton-style builds as a library: tasks and pipelines that turn source
//! into OCI images and push them to a registry, without Docker
//! (`specs/BUILD.md` is the behaviour it implements).
//!
//! | module | what it holds | spec |
//! |---|---|---|
//! | [`api`] | `tekton.dev/v1` Task, TaskRun, Pipeline, PipelineRun: types, defaults, validation | §1.1–§1.9 |
//! | [`substitution`] | `$(params.*)`, `$(tasks.*.results.*)`, `$(workspaces.*)`, `$(context.*)` references | §1.4 |
//! | [`scheduler`] | the PipelineRun DAG as a pure state machine | §1.7–§1.9 |
//! | [`image`] | reproducible OCI image building, OCI layouts on disk, registry push and pull | §2 |
//! | [`executor`] | the `StepExecutor` trait (one TaskRun attempt's steps, results, logs, cancellation) and `LocalExecutor` (steps as host processes, the built-in image step in-process) | §1.2, §1.5, §1.6, §1.10, §4, §5 |
//! | [`reconciler`] | `TaskRunReconciler` and `PipelineRunReconciler` over the object store, and `Build`, both controllers wired together | §1.7–§1.10 |
//!
//! Features: `mock` adds `executor::MockStepExecutor` (mockall) for tests
//! of code that drives an executor.
//!
//! ```
//! use knative_core::apis::{Context, SetDefaults, Validate};
//! use knative_build::api::TaskRun;
//!
//! let yaml = r#"
//! apiVersion: tekton.dev/v1
//! kind: TaskRun
//! metadata: {name: hello-run}
//! spec:
//!   params: [{name: who, value: world}]
//!   taskSpec:
//!     params: [{name: who}]
//!     steps:
//!       - name: greet
//!         image: alpine
//!         script: echo "hello $(params.who)"
//! "#;
//! let mut run: TaskRun = serde_yaml::from_str(yaml).unwrap();
//! let ctx = Context::create();
//! run.set_defaults(&ctx);
//! assert!(run.validate(&ctx).is_empty());
//! assert_eq!(run.spec.timeout.as_deref(), Some("1h0m0s"));
//! ```

pub mod api;
pub mod executor;
pub mod image;
pub mod reconciler;
pub mod scheduler;
pub mod substitution;
