//! In-memory implementations of the traits the source reconcilers call
//! the platform through ([`BindingTarget`], [`ContainerRunner`]), for tests
//! and examples: they record every call and keep the resulting state.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use knative_eventing::api::BindingSubject;
//! use knative_eventing::reconciler::BindingTarget;
//! use knative_eventing::reconciler::testing::RecordingBindingTarget;
//!
//! let target = RecordingBindingTarget::new();
//! let subject = BindingSubject { name: Some("app".into()), ..BindingSubject::default() };
//! target.bind("ns", &subject, vec![("K_SINK".into(), "http://sink".into())]).await.unwrap();
//! assert_eq!(target.env("ns", &subject).get("K_SINK").map(String::as_str), Some("http://sink"));
//! target.unbind("ns", &subject, &["K_SINK"]).await.unwrap();
//! assert!(target.env("ns", &subject).is_empty());
//! # });
//! ```

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::{BindingTarget, ContainerRunner};
use crate::api::BindingSubject;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One call a [`RecordingBindingTarget`] got.
#[derive(Clone, Debug, PartialEq)]
pub enum BindingCall {
    /// [`BindingTarget::bind`].
    Bind {
        /// The namespace.
        namespace: String,
        /// The subject.
        subject: BindingSubject,
        /// The variables set.
        env: Vec<(String, String)>,
    },
    /// [`BindingTarget::unbind`].
    Unbind {
        /// The namespace.
        namespace: String,
        /// The subject.
        subject: BindingSubject,
        /// The variables removed.
        names: Vec<String>,
    },
}

/// A subject's identity in a [`RecordingBindingTarget`]: namespace and the
/// subject as JSON (it has no total order of its own).
type SubjectKey = (String, String);

fn subject_key(namespace: &str, subject: &BindingSubject) -> SubjectKey {
    (
        namespace.to_owned(),
        serde_json::to_string(subject).unwrap_or_default(),
    )
}

/// A [`BindingTarget`] that records calls and keeps each subject's
/// environment; it can be told to fail.
#[derive(Debug, Default)]
pub struct RecordingBindingTarget {
    calls: Mutex<Vec<BindingCall>>,
    env: Mutex<BTreeMap<SubjectKey, BTreeMap<String, String>>>,
    failure: Mutex<Option<String>>,
}

impl RecordingBindingTarget {
    /// A target with no subjects bound.
    pub fn new() -> Self {
        RecordingBindingTarget::default()
    }

    /// Every call so far, oldest first.
    pub fn calls(&self) -> Vec<BindingCall> {
        lock(&self.calls).clone()
    }

    /// The variables bound on `subject` in `namespace`.
    pub fn env(&self, namespace: &str, subject: &BindingSubject) -> BTreeMap<String, String> {
        lock(&self.env)
            .get(&subject_key(namespace, subject))
            .cloned()
            .unwrap_or_default()
    }

    /// Makes every later call fail with `error` (`None`: succeed again).
    pub fn fail_with(&self, error: Option<String>) {
        *lock(&self.failure) = error;
    }
}

#[async_trait]
impl BindingTarget for RecordingBindingTarget {
    async fn bind(
        &self,
        namespace: &str,
        subject: &BindingSubject,
        env: Vec<(String, String)>,
    ) -> Result<(), String> {
        lock(&self.calls).push(BindingCall::Bind {
            namespace: namespace.to_owned(),
            subject: subject.clone(),
            env: env.clone(),
        });
        if let Some(e) = lock(&self.failure).clone() {
            return Err(e);
        }
        lock(&self.env)
            .entry(subject_key(namespace, subject))
            .or_default()
            .extend(env);
        Ok(())
    }

    async fn unbind(
        &self,
        namespace: &str,
        subject: &BindingSubject,
        names: &[&str],
    ) -> Result<(), String> {
        lock(&self.calls).push(BindingCall::Unbind {
            namespace: namespace.to_owned(),
            subject: subject.clone(),
            names: names.iter().map(|n| (*n).to_owned()).collect(),
        });
        if let Some(e) = lock(&self.failure).clone() {
            return Err(e);
        }
        let mut env = lock(&self.env);
        let key = subject_key(namespace, subject);
        if let Some(vars) = env.get_mut(&key) {
            vars.retain(|k, _| !names.contains(&k.as_str()));
            if vars.is_empty() {
                env.remove(&key);
            }
        }
        Ok(())
    }
}

/// A [`ContainerRunner`] that keeps the templates it was asked to run; it
/// can be told to fail.
#[derive(Debug, Default)]
pub struct RecordingContainerRunner {
    running: Mutex<BTreeMap<(String, String), PodTemplateSpec>>,
    ensures: Mutex<usize>,
    removed: Mutex<Vec<(String, String)>>,
    failure: Mutex<Option<String>>,
    unavailable: Mutex<bool>,
}

impl RecordingContainerRunner {
    /// A runner running nothing.
    pub fn new() -> Self {
        RecordingContainerRunner::default()
    }

    /// The template workload `namespace/name` runs, if any.
    pub fn running(&self, namespace: &str, name: &str) -> Option<PodTemplateSpec> {
        lock(&self.running)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// How many times [`ContainerRunner::ensure`] was called.
    pub fn ensure_calls(&self) -> usize {
        *lock(&self.ensures)
    }

    /// The workloads removed so far, oldest first.
    pub fn removed(&self) -> Vec<(String, String)> {
        lock(&self.removed).clone()
    }

    /// Sets what [`ContainerRunner::available`] answers for running
    /// workloads (`true` at first).
    pub fn set_available(&self, available: bool) {
        *lock(&self.unavailable) = !available;
    }

    /// Makes every later call fail with `error` (`None`: succeed again).
    pub fn fail_with(&self, error: Option<String>) {
        *lock(&self.failure) = error;
    }
}

#[async_trait]
impl ContainerRunner for RecordingContainerRunner {
    async fn ensure(
        &self,
        namespace: &str,
        name: &str,
        template: PodTemplateSpec,
    ) -> Result<(), String> {
        *lock(&self.ensures) += 1;
        if let Some(e) = lock(&self.failure).clone() {
            return Err(e);
        }
        lock(&self.running).insert((namespace.to_owned(), name.to_owned()), template);
        Ok(())
    }

    async fn available(&self, namespace: &str, name: &str) -> Result<bool, String> {
        let running = lock(&self.running).contains_key(&(namespace.to_owned(), name.to_owned()));
        Ok(running && !*lock(&self.unavailable))
    }

    async fn remove(&self, namespace: &str, name: &str) -> Result<(), String> {
        if let Some(e) = lock(&self.failure).clone() {
            return Err(e);
        }
        let key = (namespace.to_owned(), name.to_owned());
        lock(&self.running).remove(&key);
        lock(&self.removed).push(key);
        Ok(())
    }
}
