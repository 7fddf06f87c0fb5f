//! [`InMemoryStore`]: every kind's objects in one process, with the
//! Kubernetes API's semantics (see the [module docs](super)).
//!
//! All kinds share one lock and one resourceVersion counter, so a write and
//! the garbage collection it causes across kinds happen atomically, and
//! watchers get events in exactly the order writes were applied. Watchers
//! have unbounded queues: a slow watcher never makes a writer wait or lose
//! an event.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::core::{Selector, SelectorExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{
    ApiObject, Deletion, ObjectKey, Objects, ScopeKind, StoreError, Watch, WatchEvent, scope_of,
};
use crate::apis::FieldError;
use crate::apis::names::validate_object_meta;

/// An in-process object store for every kind, with Kubernetes semantics.
///
/// Cheap to clone: clones share the same objects. Get a typed view of one
/// kind with [`objects`](Self::objects).
#[derive(Clone, Default)]
pub struct InMemoryStore {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("InMemoryStore")
            .field("kinds", &state.tables.len())
            .field("objects", &state.book.uids.len())
            .field("resource_version", &state.book.resource_version)
            .finish()
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        InMemoryStore::default()
    }

    /// A typed view of this store's objects of kind `K`.
    pub fn objects<K: ApiObject>(&self) -> InMemoryObjects<K> {
        InMemoryObjects {
            store: self.clone(),
            _kind: PhantomData,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The objects of kind `K` in an [`InMemoryStore`]; implements [`Objects<K>`].
pub struct InMemoryObjects<K> {
    store: InMemoryStore,
    _kind: PhantomData<fn() -> K>,
}

impl<K> Clone for InMemoryObjects<K> {
    fn clone(&self) -> Self {
        InMemoryObjects {
            store: self.store.clone(),
            _kind: PhantomData,
        }
    }
}

impl<K> std::fmt::Debug for InMemoryObjects<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryObjects")
            .field("kind", &std::any::type_name::<K>())
            .finish()
    }
}

impl<K: ApiObject> Default for InMemoryObjects<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: ApiObject> InMemoryObjects<K> {
    /// The objects of kind `K` in a new store of their own.
    pub fn new() -> Self {
        InMemoryStore::new().objects()
    }

    /// The store these objects live in (to get other kinds from it).
    pub fn store(&self) -> &InMemoryStore {
        &self.store
    }

    /// Runs `f` on this kind's table with the shared bookkeeping.
    fn with_table<R>(&self, f: impl FnOnce(&mut Table<K>, &mut Book) -> R) -> R {
        let mut state = self.store.lock();
        let State { tables, book } = &mut *state;
        f(table_of::<K>(tables), book)
    }

    /// Runs a write on this kind's table, then garbage-collects the
    /// dependents of every object the write removed.
    fn write<R>(
        &self,
        f: impl FnOnce(&mut Table<K>, &mut Book) -> Result<(R, Vec<String>), StoreError>,
    ) -> Result<R, StoreError> {
        let mut state = self.store.lock();
        let State { tables, book } = &mut *state;
        let (result, removed) = f(table_of::<K>(tables), book)?;
        collect_garbage(tables, book, removed);
        Ok(result)
    }
}

/// Shared bookkeeping: the resourceVersion counter and the uids of every
/// object that exists (for owner lookups).
#[derive(Default)]
struct Book {
    resource_version: u64,
    uids: HashSet<String>,
}

impl Book {
    fn next_resource_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }
}

#[derive(Default)]
struct State {
    tables: HashMap<TypeId, Box<dyn AnyTable>>,
    book: Book,
}

/// What garbage collection needs from a table of any kind.
trait AnyTable: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Keys of the objects with an owner reference to `uid`.
    fn dependents_of(&self, uid: &str) -> Vec<ObjectKey>;
    /// Deals with a dependent whose owner is gone: drops dangling owner
    /// references, or deletes it if no owner is left. Returns the uid of
    /// the object if it was removed.
    fn collect(&mut self, key: &ObjectKey, book: &mut Book) -> Option<String>;
}

/// This kind's table, created on first use.
fn table_of<K: ApiObject>(tables: &mut HashMap<TypeId, Box<dyn AnyTable>>) -> &mut Table<K> {
    let table = tables
        .entry(TypeId::of::<K>())
        .or_insert_with(|| Box::new(Table::<K>::new()));
    match table.as_any_mut().downcast_mut::<Table<K>>() {
        Some(table) => table,
        // Tables are keyed by the TypeId of their own K.
        None => unreachable!("table registered under another type's TypeId"),
    }
}

fn collect_garbage(
    tables: &mut HashMap<TypeId, Box<dyn AnyTable>>,
    book: &mut Book,
    mut removed: Vec<String>,
) {
    while let Some(uid) = removed.pop() {
        for table in tables.values_mut() {
            for key in table.dependents_of(&uid) {
                removed.extend(table.collect(&key, book));
            }
        }
    }
}

struct Watcher<K> {
    namespace: Option<String>,
    sender: mpsc::UnboundedSender<Result<WatchEvent<K>, StoreError>>,
}

struct Table<K> {
    objects: BTreeMap<ObjectKey, K>,
    watchers: Vec<Watcher<K>>,
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn not_found<K: ApiObject>(key: &ObjectKey) -> StoreError {
    StoreError::NotFound {
        kind: K::kind_name(),
        key: key.to_string(),
    }
}

fn invalid<K: ApiObject>(key: &ObjectKey, errors: FieldError) -> StoreError {
    StoreError::Invalid {
        kind: K::kind_name(),
        key: key.to_string(),
        errors,
    }
}

fn conflict<K: ApiObject>(key: &ObjectKey, reason: String) -> StoreError {
    StoreError::Conflict {
        kind: K::kind_name(),
        key: key.to_string(),
        reason,
    }
}

/// Fails unless `expected` is the resourceVersion of `stored`.
fn check_resource_version<K: ApiObject>(
    key: &ObjectKey,
    expected: &str,
    stored: &K,
) -> Result<(), StoreError> {
    let actual = stored.meta().resource_version.as_deref().unwrap_or("");
    if expected == actual {
        Ok(())
    } else {
        Err(conflict::<K>(
            key,
            format!("resourceVersion {expected} is not the stored {actual}"),
        ))
    }
}

fn to_json<K: ApiObject>(obj: &K, key: &ObjectKey) -> Result<Value, StoreError> {
    serde_json::to_value(obj).map_err(|source| StoreError::Serialization {
        kind: K::kind_name(),
        key: key.to_string(),
        source,
    })
}

fn from_json<K: ApiObject>(value: Value, key: &ObjectKey) -> Result<K, StoreError> {
    serde_json::from_value(value).map_err(|source| StoreError::Serialization {
        kind: K::kind_name(),
        key: key.to_string(),
        source,
    })
}

/// The parts of an object that make up its spec for generation purposes:
/// every top-level field but apiVersion, kind, metadata and status.
fn spec_of(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        for field in ["apiVersion", "kind", "metadata", "status"] {
            map.remove(field);
        }
    }
    value
}

/// `target` with the `status` of `source` (or none if `source` has none).
fn with_status_of<K: ApiObject>(
    target: &K,
    source: &Value,
    key: &ObjectKey,
) -> Result<K, StoreError> {
    let mut value = to_json(target, key)?;
    if let Value::Object(map) = &mut value {
        match source.get("status") {
            Some(status) if !status.is_null() => {
                map.insert("status".to_owned(), status.clone());
            }
            _ => {
                map.remove("status");
            }
        }
    }
    from_json(value, key)
}

/// Checks owner references the way the API server does: at most one controller.
fn validate_owner_references(meta: &ObjectMeta) -> FieldError {
    let controllers = meta
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true))
        .count();
    let mut errs = FieldError::none();
    if controllers > 1 {
        errs.push(FieldError::new(
            format!("only one reference can have controller set to true, found {controllers}"),
            "metadata.ownerReferences",
        ));
    }
    for (i, r) in meta.owner_references.iter().flatten().enumerate() {
        if r.uid.is_empty() {
            errs.push(
                FieldError::missing_field("uid").via_field_index("metadata.ownerReferences", i),
            );
        }
        if r.name.is_empty() {
            errs.push(
                FieldError::missing_field("name").via_field_index("metadata.ownerReferences", i),
            );
        }
    }
    errs
}

/// The resourceVersion precondition a merge patch may carry.
fn patch_precondition(patch: &Value) -> Option<&str> {
    patch
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .and_then(Value::as_str)
}

const MAX_GENERATE_NAME_PREFIX: usize = 58;
const GENERATE_NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes
        .iter()
        .take(5)
        .map(|b| GENERATE_NAME_ALPHABET[usize::from(*b) % GENERATE_NAME_ALPHABET.len()] as char)
        .collect()
}

impl<K: ApiObject> Table<K> {
    fn new() -> Self {
        Table {
            objects: BTreeMap::new(),
            watchers: Vec::new(),
        }
    }

    fn notify(&mut self, event: WatchEvent<K>) {
        let namespace = event.object().meta().namespace.clone();
        self.watchers.retain(|w| {
            if w.namespace.is_some() && w.namespace != namespace {
                return !w.sender.is_closed();
            }
            w.sender.send(Ok(event.clone())).is_ok()
        });
    }

    fn get(&self, key: &ObjectKey) -> Result<&K, StoreError> {
        self.objects.get(key).ok_or_else(|| not_found::<K>(key))
    }

    /// Removes an object for good and tells watchers; returns its uid.
    fn remove(&mut self, key: &ObjectKey, book: &mut Book) -> Option<(K, String)> {
        let mut obj = self.objects.remove(key)?;
        let uid = obj.meta().uid.clone().unwrap_or_default();
        book.uids.remove(&uid);
        obj.meta_mut().resource_version = Some(book.next_resource_version());
        self.notify(WatchEvent::Deleted(obj.clone()));
        Some((obj, uid))
    }

    /// Stores `obj` (generation already decided by the caller) as the new
    /// version of an existing object, or removes it if it is terminating and
    /// has no finalizer left. Returns the stored object and the uids removed.
    fn commit_update(&mut self, key: &ObjectKey, mut obj: K, book: &mut Book) -> (K, Vec<String>) {
        let terminating = obj.meta().deletion_timestamp.is_some();
        let finalizers_left = obj
            .meta()
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty());
        if terminating && !finalizers_left {
            self.objects.insert(key.clone(), obj);
            return match self.remove(key, book) {
                Some((last, uid)) => (last, vec![uid]),
                None => unreachable!("object inserted just above"),
            };
        }
        obj.meta_mut().resource_version = Some(book.next_resource_version());
        self.objects.insert(key.clone(), obj.clone());
        self.notify(WatchEvent::Modified(obj.clone()));
        let removed = self.collect_if_orphaned(key, book);
        let latest = self.objects.get(key).cloned().unwrap_or(obj);
        (latest, removed)
    }

    /// Garbage-collects an object just written with an owner reference to
    /// an object that does not exist (any more), as the API server's
    /// garbage collector would. Returns the uids removed.
    fn collect_if_orphaned(&mut self, key: &ObjectKey, book: &mut Book) -> Vec<String> {
        let dangling = self.objects.get(key).is_some_and(|o| {
            o.meta()
                .owner_references
                .iter()
                .flatten()
                .any(|r| !book.uids.contains(&r.uid))
        });
        if dangling {
            self.collect(key, book).into_iter().collect()
        } else {
            Vec::new()
        }
    }

    /// Starts or completes the deletion of an object.
    fn delete(
        &mut self,
        key: &ObjectKey,
        book: &mut Book,
    ) -> Result<(Deletion<K>, Vec<String>), StoreError> {
        let current = self.get(key)?.clone();
        let has_finalizers = current
            .meta()
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty());
        if !has_finalizers {
            return match self.remove(key, book) {
                Some((last, uid)) => Ok((Deletion::Removed(last), vec![uid])),
                None => Err(not_found::<K>(key)),
            };
        }
        if current.meta().deletion_timestamp.is_some() {
            return Ok((Deletion::Terminating(current), Vec::new()));
        }
        let mut obj = current;
        let meta = obj.meta_mut();
        meta.deletion_timestamp = Some(now());
        meta.deletion_grace_period_seconds = Some(0);
        meta.generation = Some(meta.generation.unwrap_or(0) + 1);
        meta.resource_version = Some(book.next_resource_version());
        self.objects.insert(key.clone(), obj.clone());
        self.notify(WatchEvent::Modified(obj.clone()));
        Ok((Deletion::Terminating(obj), Vec::new()))
    }
}

impl<K: ApiObject> AnyTable for Table<K> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn dependents_of(&self, uid: &str) -> Vec<ObjectKey> {
        self.objects
            .iter()
            .filter(|(_, o)| {
                o.meta()
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == uid)
            })
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn collect(&mut self, key: &ObjectKey, book: &mut Book) -> Option<String> {
        let obj = self.objects.get(key)?;
        let refs = obj.meta().owner_references.clone().unwrap_or_default();
        let live: Vec<_> = refs
            .iter()
            .filter(|r| book.uids.contains(&r.uid))
            .cloned()
            .collect();
        if live.is_empty() {
            let (_, removed) = self.delete(key, book).ok()?;
            return removed.into_iter().next();
        }
        if live.len() < refs.len() {
            let mut obj = obj.clone();
            obj.meta_mut().owner_references = Some(live);
            let (_, removed) = self.commit_update(key, obj, book);
            return removed.into_iter().next();
        }
        None
    }
}

impl<K: ApiObject> InMemoryObjects<K> {
    /// The key of `obj`, checked against the kind's scope.
    fn key_for_write(&self, obj: &K) -> Result<ObjectKey, StoreError> {
        let mut key = obj.key();
        match scope_of::<K>() {
            ScopeKind::Namespaced if key.namespace.is_none() => {
                return Err(invalid::<K>(
                    &key,
                    FieldError::missing_field("metadata.namespace")
                        .with_details(format!("{} is a namespaced kind", K::kind_name())),
                ));
            }
            ScopeKind::Cluster => key.namespace = None,
            _ => {}
        }
        Ok(key)
    }

    /// The namespace a lookup means: none for cluster-scoped kinds.
    fn scoped_namespace(namespace: Option<&str>) -> Option<String> {
        match scope_of::<K>() {
            ScopeKind::Cluster => None,
            _ => namespace.filter(|n| !n.is_empty()).map(str::to_owned),
        }
    }

    fn lookup_key(namespace: Option<&str>, name: &str) -> ObjectKey {
        ObjectKey {
            namespace: Self::scoped_namespace(namespace),
            name: name.to_owned(),
        }
    }

    /// `current` with a JSON merge patch applied. A patch that does not fit
    /// the kind's schema, or renames the object, is invalid.
    fn merge_patch(current: &K, patch: &Value, key: &ObjectKey) -> Result<K, StoreError> {
        if !patch.is_object() {
            return Err(invalid::<K>(
                key,
                FieldError::new("a merge patch must be a JSON object", ""),
            ));
        }
        let mut value = to_json(current, key)?;
        json_patch::merge(&mut value, patch);
        let patched: K = serde_json::from_value(value).map_err(|e| {
            invalid::<K>(
                key,
                FieldError::new(
                    format!("patch does not fit the {} schema: {e}", K::kind_name()),
                    "",
                ),
            )
        })?;
        let mut errs = FieldError::none();
        if patched.meta().name.as_deref() != Some(key.name.as_str()) {
            errs.push(FieldError::new("field is immutable", "metadata.name"));
        }
        if Self::scoped_namespace(patched.meta().namespace.as_deref()) != key.namespace {
            errs.push(FieldError::new("field is immutable", "metadata.namespace"));
        }
        if errs.is_empty() {
            Ok(patched)
        } else {
            Err(invalid::<K>(key, errs))
        }
    }

    /// The shared update path of `replace` and `patch`: `obj` is the
    /// client's desired object for `key`, checked against the stored one.
    fn update(
        table: &mut Table<K>,
        book: &mut Book,
        key: &ObjectKey,
        obj: K,
    ) -> Result<(K, Vec<String>), StoreError> {
        let current = table.get(key)?.clone();
        let current_meta = current.meta();
        let meta = obj.meta();
        match meta.resource_version.as_deref() {
            None | Some("") => {
                return Err(invalid::<K>(
                    key,
                    FieldError::missing_field("metadata.resourceVersion")
                        .with_details("an update must say which version of the object it changes"),
                ));
            }
            Some(rv) => check_resource_version(key, rv, &current)?,
        }
        if let Some(uid) = meta.uid.as_deref().filter(|u| !u.is_empty())
            && Some(uid) != current_meta.uid.as_deref()
        {
            return Err(conflict::<K>(
                key,
                format!(
                    "uid {uid} is not the stored {}",
                    current_meta.uid.as_deref().unwrap_or("")
                ),
            ));
        }
        let mut errs = validate_object_meta(meta).via_field("metadata");
        errs.push(validate_owner_references(meta));
        if current_meta.deletion_timestamp.is_some() {
            let old: HashSet<&String> = current_meta.finalizers.iter().flatten().collect();
            for (i, f) in meta.finalizers.iter().flatten().enumerate() {
                if !old.contains(f) {
                    errs.push(
                        FieldError::new(
                            "no new finalizers can be added if the object is being deleted",
                            "",
                        )
                        .via_field_index("metadata.finalizers", i),
                    );
                }
            }
        }
        if errs.has_errors() {
            return Err(invalid::<K>(key, errs));
        }

        let current_json = to_json(&current, key)?;
        // Status is a subresource: keep the stored one.
        let mut next = with_status_of(&obj, &current_json, key)?;
        {
            let next_meta = next.meta_mut();
            next_meta.name = Some(key.name.clone());
            next_meta.namespace = key.namespace.clone();
            next_meta.uid = current_meta.uid.clone();
            next_meta.creation_timestamp = current_meta.creation_timestamp.clone();
            next_meta.deletion_timestamp = current_meta.deletion_timestamp.clone();
            next_meta.deletion_grace_period_seconds = current_meta.deletion_grace_period_seconds;
            next_meta.generation = current_meta.generation;
            next_meta.resource_version = current_meta.resource_version.clone();
        }
        let next_json = to_json(&next, key)?;
        if next_json == current_json {
            // A no-op write: nothing changes, no event (as the API server does).
            return Ok((current, Vec::new()));
        }
        if spec_of(next_json) != spec_of(current_json) {
            let generation = current_meta.generation.unwrap_or(0) + 1;
            next.meta_mut().generation = Some(generation);
        }
        Ok(table.commit_update(key, next, book))
    }

    /// The shared path of `replace_status` and `patch_status`.
    fn update_status(
        table: &mut Table<K>,
        book: &mut Book,
        key: &ObjectKey,
        status_source: &Value,
        precondition: Option<&str>,
    ) -> Result<K, StoreError> {
        let current = table.get(key)?.clone();
        if let Some(rv) = precondition {
            check_resource_version(key, rv, &current)?;
        }
        let next = with_status_of(&current, status_source, key)?;
        if to_json(&next, key)?.get("status") == to_json(&current, key)?.get("status") {
            return Ok(current);
        }
        let (stored, _) = table.commit_update(key, next, book);
        Ok(stored)
    }
}

#[async_trait]
impl<K: ApiObject> Objects<K> for InMemoryObjects<K> {
    #[tracing::instrument(level = "trace", skip(self), fields(kind = %K::kind_name()))]
    async fn get(&self, namespace: Option<&str>, name: &str) -> Result<K, StoreError> {
        let key = Self::lookup_key(namespace, name);
        self.with_table(|table, _| table.get(&key).cloned())
    }

    #[tracing::instrument(level = "trace", skip(self), fields(kind = %K::kind_name()))]
    async fn list(
        &self,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Vec<K>, StoreError> {
        let namespace = Self::scoped_namespace(namespace);
        let namespace = namespace.as_deref();
        Ok(self.with_table(|table, _| {
            table
                .objects
                .iter()
                .filter(|(k, _)| namespace.is_none() || k.namespace.as_deref() == namespace)
                .filter(|(_, o)| {
                    selector.matches(o.meta().labels.as_ref().unwrap_or(&BTreeMap::new()))
                })
                .map(|(_, o)| o.clone())
                .collect()
        }))
    }

    #[tracing::instrument(level = "debug", skip(self, obj), fields(kind = %K::kind_name(), key = %obj.key()))]
    async fn create(&self, obj: &K) -> Result<K, StoreError> {
        let mut key = self.key_for_write(obj)?;
        let meta = obj.meta();
        let mut errs = validate_object_meta(meta).via_field("metadata");
        errs.push(validate_owner_references(meta));
        if meta
            .resource_version
            .as_deref()
            .is_some_and(|rv| !rv.is_empty())
        {
            errs.push(
                FieldError::disallowed_fields("metadata.resourceVersion")
                    .with_details("resourceVersion should not be set on objects to be created"),
            );
        }
        if errs.has_errors() {
            return Err(invalid::<K>(&key, errs));
        }
        // Status is a subresource: create drops it (unless the type cannot
        // represent "no status").
        let mut stored = with_status_of(obj, &Value::Null, &key).unwrap_or_else(|_| obj.clone());
        self.write(|table, book| {
            if key.name.is_empty() {
                let mut prefix = meta.generate_name.clone().unwrap_or_default();
                // The API server keeps at most 58 characters of the prefix so
                // that prefix + suffix fits in a 63-character label.
                prefix.truncate(MAX_GENERATE_NAME_PREFIX);
                key.name = loop {
                    let candidate = format!("{prefix}{}", random_suffix());
                    let probe = ObjectKey {
                        namespace: key.namespace.clone(),
                        name: candidate.clone(),
                    };
                    if !table.objects.contains_key(&probe) {
                        break candidate;
                    }
                };
            } else if table.objects.contains_key(&key) {
                return Err(StoreError::AlreadyExists {
                    kind: K::kind_name(),
                    key: key.to_string(),
                });
            }
            let uid = uuid::Uuid::new_v4().to_string();
            let meta = stored.meta_mut();
            meta.name = Some(key.name.clone());
            meta.namespace = key.namespace.clone();
            meta.uid = Some(uid.clone());
            meta.generation = Some(1);
            meta.creation_timestamp = Some(now());
            meta.deletion_timestamp = None;
            meta.deletion_grace_period_seconds = None;
            meta.resource_version = Some(book.next_resource_version());
            book.uids.insert(uid);
            table.objects.insert(key.clone(), stored.clone());
            table.notify(WatchEvent::Added(stored.clone()));
            let removed = table.collect_if_orphaned(&key, book);
            Ok((stored, removed))
        })
    }

    #[tracing::instrument(level = "debug", skip(self, obj), fields(kind = %K::kind_name(), key = %obj.key()))]
    async fn replace(&self, obj: &K) -> Result<K, StoreError> {
        let key = self.key_for_write(obj)?;
        self.write(|table, book| Self::update(table, book, &key, obj.clone()))
    }

    #[tracing::instrument(level = "debug", skip(self, obj), fields(kind = %K::kind_name(), key = %obj.key()))]
    async fn replace_status(&self, obj: &K) -> Result<K, StoreError> {
        let key = self.key_for_write(obj)?;
        let source = to_json(obj, &key)?;
        let precondition = obj
            .meta()
            .resource_version
            .clone()
            .filter(|rv| !rv.is_empty());
        let Some(rv) = precondition else {
            return Err(invalid::<K>(
                &key,
                FieldError::missing_field("metadata.resourceVersion").with_details(
                    "a status update must say which version of the object it changes",
                ),
            ));
        };
        self.write(|table, book| {
            Self::update_status(table, book, &key, &source, Some(&rv)).map(|o| (o, Vec::new()))
        })
    }

    #[tracing::instrument(level = "debug", skip(self, patch), fields(kind = %K::kind_name()))]
    async fn patch(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, StoreError> {
        let key = Self::lookup_key(namespace, name);
        self.write(|table, book| {
            let current = table.get(&key)?.clone();
            let mut desired = Self::merge_patch(&current, patch, &key)?;
            // The precondition, if any, was merged in; otherwise patch the current version.
            if patch_precondition(patch).is_none() {
                desired.meta_mut().resource_version = current.meta().resource_version.clone();
            }
            Self::update(table, book, &key, desired)
        })
    }

    #[tracing::instrument(level = "debug", skip(self, patch), fields(kind = %K::kind_name()))]
    async fn patch_status(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &Value,
    ) -> Result<K, StoreError> {
        let key = Self::lookup_key(namespace, name);
        self.write(|table, book| {
            let current = table.get(&key)?.clone();
            // Only the status of the patched object is taken.
            let patched = to_json(&Self::merge_patch(&current, patch, &key)?, &key)?;
            Self::update_status(table, book, &key, &patched, patch_precondition(patch))
                .map(|o| (o, Vec::new()))
        })
    }

    #[tracing::instrument(level = "debug", skip(self), fields(kind = %K::kind_name()))]
    async fn delete(&self, namespace: Option<&str>, name: &str) -> Result<Deletion<K>, StoreError> {
        let key = Self::lookup_key(namespace, name);
        self.write(|table, book| table.delete(&key, book))
    }

    #[tracing::instrument(level = "debug", skip(self), fields(kind = %K::kind_name()))]
    async fn watch(&self, namespace: Option<&str>) -> Result<Watch<K>, StoreError> {
        let namespace = Self::scoped_namespace(namespace);
        let (sender, receiver) = mpsc::unbounded_channel();
        let initial = self.with_table(|table, _| {
            table.watchers.retain(|w| !w.sender.is_closed());
            table.watchers.push(Watcher {
                namespace: namespace.clone(),
                sender,
            });
            table
                .objects
                .iter()
                .filter(|(k, _)| namespace.is_none() || k.namespace == namespace)
                .map(|(_, o)| o.clone())
                .collect()
        });
        Ok(Watch {
            initial,
            events: UnboundedReceiverStream::new(receiver).boxed(),
        })
    }
}

#[cfg(test)]
mod tests;
