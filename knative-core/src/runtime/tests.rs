use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use tokio::sync::oneshot;

use super::*;
use crate::store::{InMemoryStore, StoreError};

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TestError(String);

/// Records every reconcile; behaviour is scripted per test.
#[derive(Default)]
struct Recorder {
    /// (key, value of data["v"]) for each reconcile, in order.
    calls: Mutex<Vec<(ObjectKey, String)>>,
    in_flight: Mutex<HashMap<ObjectKey, usize>>,
    max_in_flight_per_key: AtomicUsize,
    delay: Duration,
    fail_first: usize,
    requeue_after: Option<Duration>,
    panic_first: bool,
    panicked: AtomicBool,
    finished: AtomicUsize,
}

impl Recorder {
    fn calls(&self) -> Vec<(ObjectKey, String)> {
        self.calls.lock().expect("lock").clone()
    }

    fn count(&self) -> usize {
        self.calls.lock().expect("lock").len()
    }
}

fn value_of(obj: &ConfigMap) -> String {
    obj.data
        .as_ref()
        .and_then(|d| d.get("v").cloned())
        .unwrap_or_default()
}

#[async_trait]
impl Reconciler<ConfigMap> for Recorder {
    type Error = TestError;

    async fn reconcile(&self, obj: Arc<ConfigMap>) -> Result<Action, TestError> {
        let key = obj.key();
        let n = {
            let mut calls = self.calls.lock().expect("lock");
            calls.push((key.clone(), value_of(&obj)));
            calls.len()
        };
        {
            let mut in_flight = self.in_flight.lock().expect("lock");
            let c = in_flight.entry(key.clone()).or_insert(0);
            *c += 1;
            self.max_in_flight_per_key.fetch_max(*c, Ordering::SeqCst);
        }
        if self.panic_first && !self.panicked.swap(true, Ordering::SeqCst) {
            if let Some(c) = self.in_flight.lock().expect("lock").get_mut(&key) {
                *c -= 1;
            }
            panic!("reconciler bug");
        }
        tokio::time::sleep(self.delay).await;
        if let Some(c) = self.in_flight.lock().expect("lock").get_mut(&key) {
            *c -= 1;
        }
        self.finished.fetch_add(1, Ordering::SeqCst);
        if n <= self.fail_first {
            return Err(TestError(format!("failure {n}")));
        }
        Ok(match self.requeue_after {
            Some(d) => Action::requeue_after(d),
            None => Action::await_change(),
        })
    }
}

fn config_map(name: &str, v: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..ObjectMeta::default()
        },
        data: Some([("v".to_owned(), v.to_owned())].into()),
        ..ConfigMap::default()
    }
}

struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("controller task");
    }
}

fn start<R: Reconciler<ConfigMap>>(controller: Controller<ConfigMap, R>) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(async {
        let _ = stopped.await;
    }));
    Running { stop, task }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for: {what}");
}

fn fast_config() -> Config {
    Config {
        concurrency: 4,
        backoff: Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(20),
        },
        rewatch_delay: Duration::from_millis(10),
    }
}

#[tokio::test]
async fn reconciles_every_existing_object_on_start() {
    let cms = InMemoryStore::new().objects::<ConfigMap>();
    for name in ["a", "b", "c"] {
        cms.create(&config_map(name, "1")).await.expect("created");
    }
    let recorder = Arc::new(Recorder::default());
    let running = start(Controller::new(
        Arc::new(cms.clone()),
        Arc::clone(&recorder),
    ));
    eventually("three reconciles", || recorder.count() == 3).await;
    running.stop().await;
    let mut names: Vec<_> = recorder.calls().into_iter().map(|(k, _)| k.name).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_is_never_reconciled_twice_at_once_and_the_last_version_wins() {
    let cms = InMemoryStore::new().objects::<ConfigMap>();
    let mut cm = cms.create(&config_map("hot", "0")).await.expect("created");
    let recorder = Arc::new(Recorder {
        delay: Duration::from_millis(15),
        ..Recorder::default()
    });
    let running = start(Controller::with_config(
        Arc::new(cms.clone()),
        Arc::clone(&recorder),
        fast_config(),
    ));
    for i in 1..=20 {
        cm.data = Some([("v".to_owned(), i.to_string())].into());
        cm = cms.replace(&cm).await.expect("replaced");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    eventually("the last version is reconciled", || {
        recorder.calls().last().is_some_and(|(_, v)| v == "20")
    })
    .await;
    running.stop().await;
    assert_eq!(recorder.max_in_flight_per_key.load(Ordering::SeqCst), 1);
    let count = recorder.count();
    assert!(
        count < 21,
        "changes while queued are merged, got {count} reconciles"
    );
}

#[tokio::test]
async fn requeue_after_reconciles_again_without_a_change() {
    let cms = InMemoryStore::new().objects::<ConfigMap>();
    cms.create(&config_map("periodic", "1"))
        .await
        .expect("created");
    let recorder = Arc::new(Recorder {
        requeue_after: Some(Duration::from_millis(20)),
        ..Recorder::default()
    });
    let running = start(Controller::new(Arc::new(cms), Arc::clone(&recorder)));
    eventually("three periodic reconciles", || recorder.count() >= 3).await;
    running.stop().await;
}

#[tokio::test]
async fn failed_reconciles_are_retried_with_backoff_until_they_succeed() {
    let cms = InMemoryStore::new().objects::<ConfigMap>();
    cms.create(&config_map("flaky", "1"))
        .await
        .expect("created");
    let recorder = Arc::new(Recorder {
        fail_first: 3,
        ..Recorder::default()
    });
    let controller = Controller::with_config(Arc::new(cms), Arc::clone(&recorder), fast_config());
    let queue = Arc::clone(&controller.queue);
    let running = start(controller);
    eventually("success after three failures", || {
        recorder.finished.load(Ordering::SeqCst) == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    running.stop().await;
    assert_eq!(recorder.count(), 4, "no retry after success");
    assert_eq!(
        queue.failures(&ObjectKey::namespaced("default", "flaky")),
        0,
        "success forgets the failures"
    );
}

struct Permanent(AtomicUsize);

#[async_trait]
impl Reconciler<ConfigMap> for Permanent {
    type Error = TestError;
    async fn reconcile(&self, _obj: Arc<ConfigMap>) -> Result<Action, TestError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(TestError("bad spec".into()))
    }
    fn error_policy(&self, _obj: &ConfigMap, _error: &TestError) -> ErrorPolicy {
        ErrorPolicy::Forget
    }
}

#[tokio::test]
async fn a_forgotten_error_waits_for_the_next_change() {
    let cms = InMemoryStore::new().objects::<ConfigMap>();
    let cm = cms.create(&config_map("bad", "1")).await.expect("created");
    let reconciler = Arc::new(Permanent(AtomicUsize::new(0)));
    let running = start(Controller::with_config(
        Arc::new(cms.clone()),
        Arc::clone(&reconciler),
        fast_config(),
    ));
    eventually("first reconcile", || {
        reconciler.0.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(reconciler.0.load(Ordering::SeqCst), 1, "not retried");
    let mut fixed = cm.clone();
    fixed.data = Some([("v".to_owned(), "2".to_owned())].into());
    cms.replace(&fixed).await.expect("replaced");
    eventually("reconciled after the change", || {
        reconciler.0.load(Ordering::SeqCst) == 2
    })
    .await;
    running.stop().await;
}

#[tokio::test]
async fn a_panicking_reconcile_is_retried_and_the_controller_survives() {
    let cms = InMemoryStore::new().objects::<ConfigMap>();
    cms.create(&config_map("p", "1")).await.expect("created");
    let recorder = Arc::new(Recorder {
        panic_first: true,
        ..Recorder::default()
    });
    let running = start(Controller::with_config(
        Arc::new(cms),
        Arc::clone(&recorder),
        fast_config(),
    ));
    eventually("retried after the panic", || {
        recorder.finished.load(Ordering::SeqCst) == 1
    })
    .await;
    running.stop().await;
    assert_eq!(recorder.count(), 2);
}

#[tokio::test]
async fn deleted_objects_are_not_reconciled() {
    let cms = InMemoryStore::new().objects::<ConfigMap>();
    cms.create(&config_map("gone", "1")).await.expect("created");
    let recorder = Arc::new(Recorder::default());
    let running = start(Controller::new(
        Arc::new(cms.clone()),
        Arc::clone(&recorder),
    ));
    eventually("first reconcile", || recorder.count() == 1).await;
    cms.delete(Some("default"), "gone").await.expect("deleted");
    tokio::time::sleep(Duration::from_millis(50)).await;
    running.stop().await;
    assert_eq!(recorder.count(), 1);
}

#[derive(Default)]
struct DeploymentRecorder(Mutex<Vec<String>>);

#[async_trait]
impl Reconciler<Deployment> for DeploymentRecorder {
    type Error = StoreError;
    async fn reconcile(&self, obj: Arc<Deployment>) -> Result<Action, StoreError> {
        self.0
            .lock()
            .expect("lock")
            .push(obj.metadata.name.clone().unwrap_or_default());
        Ok(Action::await_change())
    }
}

#[tokio::test]
async fn a_change_to_an_owned_child_reconciles_its_owner() {
    let store = InMemoryStore::new();
    let deployments = store.objects::<Deployment>();
    let cms = store.objects::<ConfigMap>();
    let owner = deployments
        .create(&Deployment {
            metadata: ObjectMeta {
                name: Some("owner".into()),
                namespace: Some("default".into()),
                ..ObjectMeta::default()
            },
            ..Deployment::default()
        })
        .await
        .expect("created");
    let mut child = config_map("child", "1");
    child.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        ..OwnerReference::default()
    }]);
    let mut child = cms.create(&child).await.expect("created");
    // Not a child: owned by a ConfigMap of the same name.
    let same_name = cms
        .create(&config_map("owner", "1"))
        .await
        .expect("created");
    let mut stranger = config_map("stranger", "1");
    stranger.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: same_name.metadata.uid.clone().unwrap_or_default(),
        ..OwnerReference::default()
    }]);
    let mut stranger = cms.create(&stranger).await.expect("created");

    let recorder = Arc::new(DeploymentRecorder::default());
    let controller = Controller::new(Arc::new(deployments.clone()), Arc::clone(&recorder))
        .owns(Arc::new(cms.clone()) as Arc<dyn Objects<ConfigMap>>);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(async {
        let _ = stopped.await;
    }));
    let count = || recorder.0.lock().expect("lock").len();
    eventually("initial reconcile", || count() >= 1).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = count();

    stranger.data = Some([("v".to_owned(), "2".to_owned())].into());
    cms.replace(&stranger).await.expect("replaced");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        count(),
        before,
        "a stranger's change does not trigger the owner"
    );

    child.data = Some([("v".to_owned(), "2".to_owned())].into());
    cms.replace(&child).await.expect("replaced");
    eventually("owner reconciled after the child changed", || {
        count() > before
    })
    .await;
    let after_change = count();
    cms.delete(Some("default"), "child").await.expect("deleted");
    eventually("owner reconciled after the child was deleted", || {
        count() > after_change
    })
    .await;
    let _ = stop.send(());
    task.await.expect("controller task");
    assert!(
        recorder
            .0
            .lock()
            .expect("lock")
            .iter()
            .all(|n| n == "owner")
    );
}

#[tokio::test]
async fn keys_can_be_enqueued_from_outside() {
    let cms = InMemoryStore::new().objects::<ConfigMap>();
    cms.create(&config_map("poked", "1"))
        .await
        .expect("created");
    let recorder = Arc::new(Recorder::default());
    let controller = Controller::new(Arc::new(cms), Arc::clone(&recorder));
    let handle = controller.handle();
    let running = start(controller);
    eventually("initial reconcile", || recorder.count() == 1).await;
    handle.enqueue(ObjectKey::namespaced("default", "poked"));
    eventually("poked reconcile", || recorder.count() == 2).await;
    running.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_reconciles_in_flight() {
    let cms = InMemoryStore::new().objects::<ConfigMap>();
    cms.create(&config_map("slow", "1")).await.expect("created");
    let recorder = Arc::new(Recorder {
        delay: Duration::from_millis(200),
        ..Recorder::default()
    });
    let running = start(Controller::new(Arc::new(cms), Arc::clone(&recorder)));
    eventually("reconcile started", || recorder.count() == 1).await;
    assert_eq!(recorder.finished.load(Ordering::SeqCst), 0);
    running.stop().await;
    assert_eq!(
        recorder.finished.load(Ordering::SeqCst),
        1,
        "run returned only after the reconcile finished"
    );
}

/// The in-memory store, but the first watch fails as a broken API server
/// connection would.
struct FirstWatchFails {
    inner: crate::store::InMemoryObjects<ConfigMap>,
    watches: AtomicUsize,
}

#[async_trait]
impl Objects<ConfigMap> for FirstWatchFails {
    async fn get(&self, namespace: Option<&str>, name: &str) -> Result<ConfigMap, StoreError> {
        self.inner.get(namespace, name).await
    }
    async fn list(
        &self,
        namespace: Option<&str>,
        selector: &kube::core::Selector,
    ) -> Result<Vec<ConfigMap>, StoreError> {
        self.inner.list(namespace, selector).await
    }
    async fn create(&self, obj: &ConfigMap) -> Result<ConfigMap, StoreError> {
        self.inner.create(obj).await
    }
    async fn replace(&self, obj: &ConfigMap) -> Result<ConfigMap, StoreError> {
        self.inner.replace(obj).await
    }
    async fn replace_status(&self, obj: &ConfigMap) -> Result<ConfigMap, StoreError> {
        self.inner.replace_status(obj).await
    }
    async fn patch(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<ConfigMap, StoreError> {
        self.inner.patch(namespace, name, patch).await
    }
    async fn patch_status(
        &self,
        namespace: Option<&str>,
        name: &str,
        patch: &serde_json::Value,
    ) -> Result<ConfigMap, StoreError> {
        self.inner.patch_status(namespace, name, patch).await
    }
    async fn delete(
        &self,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<crate::store::Deletion<ConfigMap>, StoreError> {
        self.inner.delete(namespace, name).await
    }
    async fn watch(
        &self,
        namespace: Option<&str>,
    ) -> Result<crate::store::Watch<ConfigMap>, StoreError> {
        if self.watches.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err(StoreError::Backend("connection refused".into()));
        }
        self.inner.watch(namespace).await
    }
}

#[tokio::test]
async fn a_failed_watch_is_retried_and_then_sees_changes() {
    let inner = InMemoryStore::new().objects::<ConfigMap>();
    inner
        .create(&config_map("existing", "1"))
        .await
        .expect("created");
    let objects = Arc::new(FirstWatchFails {
        inner: inner.clone(),
        watches: AtomicUsize::new(0),
    });
    let recorder = Arc::new(Recorder::default());
    let running = start(Controller::with_config(
        Arc::clone(&objects) as Arc<dyn Objects<ConfigMap>>,
        Arc::clone(&recorder),
        fast_config(),
    ));
    eventually("the snapshot of the second watch is reconciled", || {
        recorder.count() == 1
    })
    .await;
    inner
        .create(&config_map("later", "1"))
        .await
        .expect("created");
    eventually("a change after the retry is reconciled", || {
        recorder.count() == 2
    })
    .await;
    running.stop().await;
    assert_eq!(objects.watches.load(Ordering::SeqCst), 2);
    assert_eq!(
        recorder.calls()[1].0,
        ObjectKey::namespaced("default", "later")
    );
}
