//! The [`WorkloadBackend`] trait: how a revision's replicas run on some
//! runtime (local processes, Kubernetes Deployments, VMs, …).
//!
//! The revision reconciler describes what should run with a
//! [`WorkloadSpec`], asks for a number of replicas with
//! [`WorkloadBackend::scale`], and follows [`WorkloadStatus`] through a
//! watch channel: ready endpoints for the data plane, replica counts for
//! `status.actualReplicas`, and failures for `ContainerHealthy` /
//! `ResourcesAvailable` (`specs/SERVING.md §1`).

pub mod local;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use tokio::sync::watch;

/// Identifies one revision's workload.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    /// The revision's namespace.
    pub namespace: String,
    /// The revision's name.
    pub revision: String,
}

impl WorkloadKey {
    /// The key of revision `revision` in `namespace`.
    pub fn new(namespace: impl Into<String>, revision: impl Into<String>) -> Self {
        WorkloadKey {
            namespace: namespace.into(),
            revision: revision.into(),
        }
    }
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.revision)
    }
}

/// Everything a backend needs to run a revision's replicas.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadSpec {
    /// Which revision this is.
    pub key: WorkloadKey,
    /// The revision's containers as written in its spec.
    pub containers: Vec<Container>,
    /// The revision's pod-level fields (`volumes`, `serviceAccountName`,
    /// `imagePullSecrets`, `initContainers`, `securityContext`,
    /// `nodeSelector`, `tolerations`, `affinity`, …) with `containers`
    /// left empty: the containers are [`WorkloadSpec::containers`].
    /// Backends that run pods carry these over; backends that run processes
    /// may ignore them.
    pub pod: PodSpec,
    /// Index in `containers` of the serving container (the one with a port,
    /// or the only one).
    pub serving_container: usize,
    /// The port the serving container listens on inside its sandbox
    /// (`containerPort`, default 8080). Backends that give each replica its
    /// own port tell the process through the `PORT` variable.
    pub container_port: u16,
    /// Labels for the replicas (the revision's labels plus
    /// `serving.knative.dev/revision`).
    pub labels: BTreeMap<String, String>,
    /// Annotations for the workload (a Deployment) and its replicas: the
    /// revision's, less the ones Knative keeps for itself on revisions
    /// (`lastPinned`, `no-gc`, `routingStateModified`, `routes`) and the
    /// `autoscaling.knative.dev/` settings.
    pub annotations: BTreeMap<String, String>,
    /// How long a replica gets between SIGTERM and SIGKILL
    /// (`timeoutSeconds` in Knative).
    pub termination_grace_period: Duration,
    /// The revision's `containerConcurrency`: the most requests one replica
    /// handles at once (0 = no limit). Backends that run a queue-proxy
    /// next to each replica hand it on (`CONTAINER_CONCURRENCY`).
    pub container_concurrency: u32,
    /// The revision's `responseStartTimeoutSeconds`: how long a response
    /// may take to start (`None` = only the request timeout,
    /// [`WorkloadSpec::termination_grace_period`], applies).
    pub response_start_timeout: Option<Duration>,
    /// The revision's `idleTimeoutSeconds`: the longest a response may go
    /// without writing (`None` = no limit).
    pub idle_timeout: Option<Duration>,
    /// The Revision as the controlling owner of what the backend creates
    /// (Kubernetes backends put it in their objects' `ownerReferences`, so
    /// deleting the Revision deletes them); `None` when the revision has no
    /// uid yet, or for backends that keep no objects.
    pub owner: Option<OwnerReference>,
}

/// One replica that is ready to take requests.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// A stable name for the replica (e.g. `hello-00001-1`).
    pub replica: String,
    /// Where it listens.
    pub address: SocketAddr,
}

/// Why replicas are not (all) running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadFailure {
    /// One CamelCase word, e.g. `ExitCode1`, `ContainerMissing`.
    pub reason: String,
    /// A human-readable explanation.
    pub message: String,
    /// Whether the problem is in the container itself (crash, bad command:
    /// reported as `ContainerHealthy=False`) rather than in getting
    /// resources (reported as `ResourcesAvailable=False`).
    pub container: bool,
}

/// What a backend reports about one workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadStatus {
    /// Replicas asked for with the last [`WorkloadBackend::scale`].
    pub desired: u32,
    /// Replicas that exist (started, whether ready or not).
    pub actual: u32,
    /// Replicas that are ready, with their addresses.
    pub ready: Vec<Endpoint>,
    /// The latest failure, cleared when a replica becomes ready again.
    pub failure: Option<WorkloadFailure>,
}

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The spec cannot run on this backend; the message says why and what to do.
    #[error("{key}: {message}")]
    Unsupported {
        /// The workload.
        key: WorkloadKey,
        /// What is wrong.
        message: String,
    },
    /// No workload with this key was ensured.
    #[error("workload {0} does not exist")]
    NotFound(WorkloadKey),
    /// The runtime failed.
    #[error("{key}: {message}")]
    Runtime {
        /// The workload.
        key: WorkloadKey,
        /// What failed.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Runs revisions' replicas on some runtime.
///
/// Calls are idempotent: `ensure` with the same spec and `scale` to the
/// current count change nothing.
#[cfg_attr(any(test, feature = "mock"), mockall::automock)]
#[async_trait]
pub trait WorkloadBackend: Send + Sync {
    /// Creates (or updates) the workload without starting replicas beyond
    /// its current scale.
    async fn ensure(&self, spec: &WorkloadSpec) -> Result<(), BackendError>;

    /// Runs `replicas` replicas: starts missing ones, stops extra ones
    /// gracefully (SIGTERM, then SIGKILL after the grace period).
    async fn scale(&self, key: &WorkloadKey, replicas: u32) -> Result<(), BackendError>;

    /// Stops every replica and forgets the workload. Removing an unknown
    /// workload is not an error.
    async fn remove(&self, key: &WorkloadKey) -> Result<(), BackendError>;

    /// Follows the workload's status: the receiver holds the latest value
    /// and is notified after each change (a slow reader may skip brief states).
    fn status(&self, key: &WorkloadKey) -> Result<watch::Receiver<WorkloadStatus>, BackendError>;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use mockall::predicate::eq;
    use tokio::sync::watch;

    use super::*;

    /// A caller works against the mock: it ensures, scales and reads the
    /// status it is given.
    #[tokio::test]
    async fn mock_backend_records_calls_and_returns_status() -> Result<(), BackendError> {
        let key = WorkloadKey::new("default", "hello-00001");
        let spec = WorkloadSpec {
            key: key.clone(),
            containers: vec![Container::default()],
            pod: PodSpec::default(),
            serving_container: 0,
            container_port: 8080,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            termination_grace_period: Duration::from_secs(30),
            container_concurrency: 0,
            response_start_timeout: None,
            idle_timeout: None,
            owner: None,
        };
        let (status_tx, status_rx) = watch::channel(WorkloadStatus::default());
        let mut backend = MockWorkloadBackend::new();
        backend
            .expect_ensure()
            .withf(|s| s.key.revision == "hello-00001")
            .times(1)
            .returning(|_| Ok(()));
        backend
            .expect_scale()
            .with(eq(key.clone()), eq(2))
            .times(1)
            .returning(|_, _| Ok(()));
        backend
            .expect_status()
            .returning(move |_| Ok(status_rx.clone()));
        let backend: &dyn WorkloadBackend = &backend;
        backend.ensure(&spec).await?;
        backend.scale(&key, 2).await?;
        status_tx.send_replace(WorkloadStatus {
            desired: 2,
            actual: 2,
            ..WorkloadStatus::default()
        });
        let status = backend.status(&key)?.borrow().clone();
        assert_eq!((status.desired, status.actual), (2, 2));
        Ok(())
    }
}
