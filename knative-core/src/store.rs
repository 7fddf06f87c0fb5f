//! The object store: [`Objects<K>`], the one trait every reconciler reads and
//! writes API objects through, and [`InMemoryStore`], its embedded
//! implementation.
//!
//! The trait is shaped after the Kubernetes API (and `kube::Api<K>`), so the
//! same reconciler runs over the in-memory store in one process and over a
//! real API server through the Kubernetes adapter:
//!
//! - `resourceVersion` changes on every write; [`Objects::replace`] with a
//!   stale one fails with [`StoreError::Conflict`] (optimistic concurrency);
//! - `metadata.generation` starts at 1 and is bumped only when the spec (any
//!   top-level field but `apiVersion`, `kind`, `metadata` and `status`)
//!   changes, or when deletion starts;
//! - `status` is a subresource: create and replace ignore it, and only
//!   [`Objects::replace_status`] and [`Objects::patch_status`] change it;
//! - deleting an object with finalizers only sets `deletionTimestamp`; the
//!   object goes away when an update removes its last finalizer;
//! - when an object goes away, objects whose `ownerReferences` all point to
//!   objects that no longer exist are deleted too (background cascade), and
//!   dangling references are removed from objects that still have an owner;
//! - a watch starts with a consistent snapshot and then sees every write, in
//!   order.
//!
//! ```
//! # tokio_test_block_on(async {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use knative_core::store::{InMemoryStore, Objects, StoreError};
//!
//! let store = InMemoryStore::new();
//! let config_maps = store.objects::<ConfigMap>();
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("config-autoscaler".into());
//! cm.metadata.namespace = Some("knative-serving".into());
//! let created = config_maps.create(&cm).await?;
//! assert_eq!(created.metadata.generation, Some(1));
//!
//! // A writer holding an old copy loses the race.
//! let mut newer = created.clone();
//! newer.data = Some([("stable-window".to_owned(), "60s".to_owned())].into());
//! config_maps.replace(&newer).await?;
//! let err = config_maps.replace(&created).await.unwrap_err();
//! assert!(matches!(err, StoreError::Conflict { .. }));
//! # Ok::<(), StoreError>(())
//! # }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

mod memory;

use std::any::TypeId;
use std::fmt;

use async_trait::async_trait;
use futures::stream::BoxStream;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::Resource;
use kube::core::Selector;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::apis::FieldError;

pub use memory::{InMemoryObjects, InMemoryStore};

/// What an object type needs to be kept in an [`Objects`] store: a Kubernetes
/// resource whose kind is known at compile time (or from a default dynamic
/// type), serializable, and shareable across tasks.
pub trait ApiObject:
    Resource<DynamicType: Default, Scope: 'static>
    + Clone
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The object's kind, e.g. `Service`.
    fn kind_name() -> String {
        Self::kind(&Self::DynamicType::default()).into_owned()
    }

    /// The object's `apiVersion`, e.g. `serving.knative.dev/v1`.
    fn api_version_name() -> String {
        Self::api_version(&Self::DynamicType::default()).into_owned()
    }

    /// The key (namespace and name) of this object.
    fn key(&self) -> ObjectKey {
        ObjectKey {
            namespace: self.meta().namespace.clone().filter(|n| !n.is_empty()),
            name: self.meta().name.clone().unwrap_or_default(),
        }
    }
}

impl<K> ApiObject for K where
    K: Resource<DynamicType: Default, Scope: 'static>
        + Clone
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Whether a kind is namespaced, known from its `Scope` type.
pub(crate) enum ScopeKind {
    Namespaced,
    Cluster,
    /// Dynamic types: whatever the object says.
    FromObject,
}

pub(crate) fn scope_of<K: ApiObject>() -> ScopeKind {
    let scope = TypeId::of::<K::Scope>();
    if scope == TypeId::of::<NamespaceResourceScope>() {
        ScopeKind::Namespaced
    } else if scope == TypeId::of::<ClusterResourceScope>() {
        ScopeKind::Cluster
    } else {
        ScopeKind::FromObject
    }
}

/// Where an object lives: its namespace (none for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// The namespace, or `None` for a cluster-scoped object.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

impl ObjectKey {
    /// The key of a namespaced object.
    pub fn namespaced(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: Some(namespace.into()),
            name: name.into(),
        }
    }

    /// The key of a cluster-scoped object.
    pub fn cluster(name: impl Into<String>) -> Self {
        ObjectKey {
            namespace: None,
            name: name.into(),
        }
    }

    /// The namespace as a `&str`, if any.
    pub fn namespace(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A change seen by a watch.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent<K> {
    /// The object was created.
    Added(K),
    /// The object was changed (including the start of its deletion).
    Modified(K),
    /// The object is gone; this is its last state.
    Deleted(K),
}

impl<K> WatchEvent<K> {
    /// The object the event is about.
    pub fn object(&self) -> &K {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }

    /// The object the event is about, by value.
    pub fn into_object(self) -> K {
        match self {
            WatchEvent::Added(o) | WatchEvent::Modified(o) | WatchEvent::Deleted(o) => o,
        }
    }
}

/// A watch: the objects that existed when it started, then every change after.
pub struct Watch<K> {
    /// A consistent snapshot of the watched objects, sorted by namespace and name.
    pub initial: Vec<K>,
    /// Every change after the snapshot, in the order the store applied them.
    /// The stream ends when the store goes away; an `Err` item means the
    /// watch broke and must be started again.
    pub events: BoxStream<'static, Result<WatchEvent<K>, StoreError>>,
}

impl<K> fmt::Debug for Watch<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("initial", &self.initial.len())
            .finish_non_exhaustive()
    }
}

/// The result of a delete.
#[derive(Clone, Debug, PartialEq)]
pub enum Deletion<K> {
    /// The object is gone; this is its last state.
    Removed(K),
    /// The object has finalizers: it now has a `deletionTimestamp` and goes
    /// away once they are all removed.
    Terminating(K),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No object of this kind has that key.
    #[error("{kind} {key:?} not found")]
    NotFound {
        /// The object's kind.
        kind: String,
        /// The key looked up, `namespace/name`.
        key: String,
    },
    /// An object of this kind with that key already exists.
    #[error("{kind} {key:?} already exists")]
    AlreadyExists {
        /// The object's kind.
        kind: String,
        /// The key, `namespace/name`.
        key: String,
    },
    /// The write was based on an old version of the object: read it again,
    /// apply the change and retry.
    #[error(
        "conflict writing {kind} {key:?}: {reason}; the object has been modified, \
         apply your changes to the latest version and try again"
    )]
    Conflict {
        /// The object's kind.
        kind: String,
        /// The key, `namespace/name`.
        key: String,
        /// What did not match, e.g. the resourceVersions.
        reason: String,
    },
    /// The object (or the patch) is not acceptable; the field errors say where.
    #[error("{kind} {key:?} is invalid:\n{errors}")]
    Invalid {
        /// The object's kind.
        kind: String,
        /// The key, `namespace/name` (empty when the name itself is missing).
        key: String,
        /// Every problem found, with field paths.
        errors: FieldError,
    },
    /// The object could not be converted to or from JSON.
    #[error("{kind} {key:?} could not be (de)serialized: {source}")]
    Serialization {
        /// The object's kind.
        kind: String,
        /// The key, `namespace/name`.
        key: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// The backing service failed (an API server, a network error, ...).
    #[error("store backend failed: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// True for [`StoreError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::NotFound { .. })
    }

    /// True for [`StoreError::Conflict`].
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }

    /// True for [`StoreError::AlreadyExists`].
    pub fn is_already_exists(&self) -> bool {
        matches!(self, StoreError::AlreadyExists { .. })
    }
}

/// Typed access to the objects of one kind, as Kubernetes' API gives it.
///
/// `namespace` arguments are `None` for cluster-scoped kinds, and for `list`
/// and `watch` also mean "all namespaces".
#[async_trait]
pub trait Objects<K: ApiObject>: Send + Sync {
    /// The object with this name.
    async fn get(&self, namespace: Option<&str>, name: &str) -> Result<K, StoreError>;

    /// The objects in `namespace` (or all) whose labels match `selector`,
    /// sorted by namespace and name.
    async fn list(
        &self,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<K>, StoreError>;

    /// Creates `obj` (its `status` is dropped; `generateName` is honoured) and
    /// returns it as stored, with uid, resourceVersion, generation 1 and
    /// creationTimestamp set.
    async fn create(&self, obj: &K) -> Result<K, StoreError>;

    /// Replaces the object with `obj`, whose `metadata.resourceVersion` must
    /// be the stored one. Its `status` is ignored. Removing the last
    /// finalizer of a terminating object deletes it.
    async fn replace(&self, obj: &K) -> Result<K, StoreError>;

    /// Replaces only the status of the object with `obj.status`;
    /// `metadata.resourceVersion` must be the stored one.
    async fn replace_status(&self, obj: &K) -> Result<K, StoreError>;

    /// Applies a JSON merge patch (RFC 7386) to the object, ignoring `status`.
    /// A `metadata.resourceVersion` in the patch is a precondition.
    async fn patch(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<K, StoreError>;

    /// Applies a JSON merge patch (RFC 7386) of the form `{"status": {...}}`
    /// to the object's status. A `metadata.resourceVersion` in the patch is a
    /// precondition.
    async fn patch_status(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<K, StoreError>;

    /// Deletes the object, or starts deleting it if it has finalizers.
    async fn delete(&self, namespace: Option<&str>, name: &str) -> Result<Deletion<K>, StoreError>;

    /// Watches the objects in `namespace` (or all).
    async fn watch(&self, namespace: Option<&str>) -> Result<Watch<K>, StoreError>;
}
