//! Service → Configuration → Revision → Route → Ready with real child
//! processes, then a second revision with a 50/50 split and a tag, checking
//! every status field a `kubectl get ksvc -o yaml` user reads.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use knative_core::apis::{Context, SetDefaults, Validate};
use knative_core::condition::{ConditionStatus, READY};
use knative_core::store::{InMemoryStore, ObjectKey, Objects};
use knative_serving::api::{Revision, Service, TrafficTarget, keys};
use knative_serving::backend::local::{LocalBackend, LocalCommand, LocalConfig};
use knative_serving::backend::{WorkloadBackend, WorkloadKey};
use knative_serving::config::ServingConfig;
use knative_serving::reconciler::{Serving, ServingObjects};
use knative_serving::traffic::WeightedRevision;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(30);

fn service_yaml(target: &str, traffic: &str) -> String {
    format!(
        r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: default
spec:
  template:
    spec:
      containers:
        - image: sample-app
          env:
            - name: TARGET
              value: {target}
          readinessProbe:
            httpGet:
              path: /healthz
{traffic}
"#
    )
}

/// Polls `check` until it returns `Some`, failing with `what` after the deadline.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("writes");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("reads");
    response
}

fn condition(conditions: &[knative_core::condition::Condition], type_: &str) -> ConditionStatus {
    knative_core::condition::find(conditions, type_).map_or(ConditionStatus::Unknown, |c| c.status)
}

async fn ready_service(services: &Arc<dyn Objects<Service>>, generation: i64) -> Service {
    eventually(&format!("service generation {generation} ready"), || {
        let services = Arc::clone(services);
        async move {
            let svc = services.get(Some("default"), "hello").await.ok()?;
            let observed = svc.status.as_ref()?.status.observed_generation;
            (observed == Some(generation) && svc.is_ready()).then_some(svc)
        }
    })
    .await
}

async fn apply(services: &Arc<dyn Objects<Service>>, yaml: &str) {
    let mut svc: Service = serde_yaml::from_str(yaml).expect("manifest parses");
    let ctx = Context::create();
    svc.set_defaults(&ctx);
    let errors = svc.validate(&ctx);
    assert!(errors.is_empty(), "manifest is valid: {errors}");
    match services.get(Some("default"), "hello").await {
        Ok(existing) => {
            svc.metadata.resource_version = existing.metadata.resource_version.clone();
            services.replace(&svc).await.expect("updated");
        }
        Err(_) => {
            services.create(&svc).await.expect("created");
        }
    }
}

struct Running {
    backend: LocalBackend,
    objects: ServingObjects,
    routing: knative_serving::traffic::RoutingTable,
    stop: tokio::sync::oneshot::Sender<()>,
    controllers: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.controllers.await.expect("controllers stopped");
    }
}

fn start() -> Running {
    let backend = LocalBackend::new(LocalConfig {
        images: [(
            "sample-app".to_owned(),
            LocalCommand {
                command: vec![env!("CARGO_BIN_EXE_knative-sample-app").to_owned()],
                ..LocalCommand::default()
            },
        )]
        .into(),
        ..LocalConfig::default()
    });
    let store = InMemoryStore::new();
    let objects = ServingObjects::in_memory(&store);
    let mut config = ServingConfig::default();
    config.network = config
        .network
        .with_domain_config_map(&BTreeMap::from([("example.com".to_owned(), String::new())]));
    let serving = Serving::new(objects.clone(), Arc::new(backend.clone()), config);
    let routing = serving.routing();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let controllers = tokio::spawn(serving.run(async {
        let _ = stopped.await;
    }));
    Running {
        backend,
        objects,
        routing,
        stop,
        controllers,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gradual_rollout_moves_traffic_step_by_step_to_the_new_revision() {
    let running = start();
    let services = Arc::clone(&running.objects.services);
    let revisions = Arc::clone(&running.objects.revisions);
    apply(&services, &service_yaml("v1", "")).await;
    ready_service(&services, 1).await;

    // A 4 s rollout: 1% first, then steps of 33 points about every second.
    let yaml = service_yaml("v2", "").replace(
        "  namespace: default\n",
        "  namespace: default\n  annotations:\n    serving.knative.dev/rollout-duration: 4s\n",
    );
    apply(&services, &yaml).await;
    let key = ObjectKey::namespaced("default", "hello");
    let mut seen: Vec<i64> = Vec::new();
    let start = Instant::now();
    loop {
        let share = running.routing.snapshot().get(&key).map(|t| {
            t.targets
                .iter()
                .find(|w| w.revision == "hello-00002")
                .map_or(0, |w| w.percent)
        });
        if let Some(share) = share
            && seen.last() != Some(&share)
        {
            seen.push(share);
            if share > 0 && share < 100 {
                // Mid-rollout the old revision still serves and stays warm.
                let old = revisions
                    .get(Some("default"), "hello-00001")
                    .await
                    .expect("old revision");
                assert_eq!(
                    old.routing_state(),
                    Some(knative_serving::api::RoutingState::Active)
                );
                let svc = services
                    .get(Some("default"), "hello")
                    .await
                    .expect("service");
                assert!(
                    !svc.is_ready(),
                    "the service is not ready while traffic migrates"
                );
            }
        }
        if seen.last() == Some(&100) {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "rollout stalled at {seen:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let steps: Vec<i64> = seen.iter().copied().filter(|p| *p > 0).collect();
    assert_eq!(
        steps.first(),
        Some(&1),
        "the new revision starts at 1%: {seen:?}"
    );
    assert!(steps.len() >= 3, "traffic moved in steps: {seen:?}");
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "monotonic: {seen:?}");
    let svc = ready_service(&services, 2).await;
    assert_eq!(
        svc.status
            .as_ref()
            .and_then(|s| s.latest_ready_revision_name.as_deref()),
        Some("hello-00002")
    );
    let old = eventually("the old revision goes to reserve", || {
        let revisions = Arc::clone(&revisions);
        async move {
            let old = revisions.get(Some("default"), "hello-00001").await.ok()?;
            (old.routing_state() == Some(knative_serving::api::RoutingState::Reserve))
                .then_some(old)
        }
    })
    .await;
    assert!(
        old.metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key(keys::ROUTES))
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_to_ready_revision_then_split_traffic_with_a_tag() {
    let running = start();
    let (backend, objects, routing) = (
        running.backend.clone(),
        running.objects.clone(),
        running.routing.clone(),
    );
    let services = Arc::clone(&objects.services);

    // 1. A new Service becomes Ready with one revision taking all traffic.
    apply(&services, &service_yaml("World", "")).await;
    let svc = ready_service(&services, 1).await;
    let status = svc.status.clone().expect("status");
    assert_eq!(
        status.url.as_deref(),
        Some("http://hello.default.example.com")
    );
    assert_eq!(
        status.address.as_ref().and_then(|a| a.url.as_deref()),
        Some("http://hello.default.svc.cluster.local")
    );
    assert_eq!(
        status.latest_created_revision_name.as_deref(),
        Some("hello-00001")
    );
    assert_eq!(
        status.latest_ready_revision_name.as_deref(),
        Some("hello-00001")
    );
    assert_eq!(
        status.traffic,
        [TrafficTarget {
            revision_name: Some("hello-00001".into()),
            latest_revision: Some(true),
            percent: Some(100),
            ..TrafficTarget::default()
        }]
    );
    for type_ in ["ConfigurationsReady", "RoutesReady", READY] {
        assert_eq!(
            condition(&status.status.conditions, type_),
            ConditionStatus::True,
            "{type_}"
        );
    }

    let revisions = Arc::clone(&objects.revisions);
    // The autoscaler marks the revision Active at its next tick once a
    // replica is ready.
    let rev1: Revision = eventually("revision hello-00001 active", || {
        let revisions = Arc::clone(&revisions);
        async move {
            let r = revisions.get(Some("default"), "hello-00001").await.ok()?;
            let active = condition(&r.status.as_ref()?.status.conditions, "Active");
            (active == ConditionStatus::True).then_some(r)
        }
    })
    .await;
    let rev_status = rev1.status.clone().expect("revision status");
    assert!(rev1.is_ready());
    assert_eq!(rev_status.actual_replicas, Some(1));
    assert_eq!(rev_status.desired_replicas, Some(1));
    for type_ in ["ResourcesAvailable", "ContainerHealthy", "Active"] {
        assert_eq!(
            condition(&rev_status.status.conditions, type_),
            ConditionStatus::True,
            "{type_}"
        );
    }
    let labels = rev1.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get(keys::CONFIGURATION).map(String::as_str),
        Some("hello")
    );
    assert_eq!(
        labels
            .get(keys::CONFIGURATION_GENERATION)
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(labels.get(keys::SERVICE).map(String::as_str), Some("hello"));
    let rev1 = eventually("hello-00001 routing state active", || {
        let revisions = Arc::clone(&revisions);
        async move {
            let rev = revisions.get(Some("default"), "hello-00001").await.ok()?;
            let active = rev.metadata.labels.as_ref()?.get(keys::ROUTING_STATE)? == "active";
            active.then_some(rev)
        }
    })
    .await;
    assert_eq!(
        rev1.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(keys::ROUTES))
            .map(String::as_str),
        Some("hello")
    );

    // The published traffic table sends the host to the revision, whose
    // replica really answers.
    let table = routing
        .snapshot()
        .get(&ObjectKey::namespaced("default", "hello"))
        .cloned()
        .expect("published");
    assert_eq!(table.host, "hello.default.example.com");
    assert_eq!(
        table.targets,
        [WeightedRevision {
            revision: "hello-00001".into(),
            percent: 100
        }]
    );
    let endpoint = backend
        .status(&WorkloadKey::new("default", "hello-00001"))
        .expect("workload")
        .borrow()
        .ready[0]
        .address;
    assert!(http_get(endpoint, "/").await.contains("Hello World!"));

    // 2. A new template plus a 50/50 split with a tag on the new revision.
    let traffic = r#"  traffic:
    - revisionName: hello-00001
      percent: 50
    - latestRevision: true
      percent: 50
      tag: candidate"#;
    apply(&services, &service_yaml("v2", traffic)).await;
    let svc = eventually("generation 2 ready on the second revision", || {
        let services = Arc::clone(&services);
        async move {
            let svc = services.get(Some("default"), "hello").await.ok()?;
            let status = svc.status.as_ref()?;
            let done = svc.is_ready()
                && status.latest_ready_revision_name.as_deref() == Some("hello-00002");
            done.then_some(svc)
        }
    })
    .await;
    let status = svc.status.clone().expect("status");
    assert_eq!(status.status.observed_generation, Some(2));
    assert_eq!(
        status.latest_created_revision_name.as_deref(),
        Some("hello-00002")
    );
    assert_eq!(
        status.url.as_deref(),
        Some("http://hello.default.example.com")
    );
    assert_eq!(
        status.traffic,
        [
            TrafficTarget {
                revision_name: Some("hello-00001".into()),
                latest_revision: Some(false),
                percent: Some(50),
                ..TrafficTarget::default()
            },
            TrafficTarget {
                tag: Some("candidate".into()),
                revision_name: Some("hello-00002".into()),
                latest_revision: Some(true),
                percent: Some(50),
                url: Some("http://candidate-hello.default.example.com".into()),
                ..TrafficTarget::default()
            },
        ]
    );
    let table = routing
        .snapshot()
        .get(&ObjectKey::namespaced("default", "hello"))
        .cloned()
        .expect("published");
    assert_eq!(
        table.targets,
        [
            WeightedRevision {
                revision: "hello-00001".into(),
                percent: 50
            },
            WeightedRevision {
                revision: "hello-00002".into(),
                percent: 50
            },
        ]
    );
    assert_eq!(table.tags.len(), 1);
    assert_eq!(table.tags[0].host, "candidate-hello.default.example.com");
    assert_eq!(
        table.tags[0].targets,
        [WeightedRevision {
            revision: "hello-00002".into(),
            percent: 100
        }]
    );
    let endpoint = backend
        .status(&WorkloadKey::new("default", "hello-00002"))
        .expect("workload")
        .borrow()
        .ready[0]
        .address;
    assert!(http_get(endpoint, "/").await.contains("Hello v2!"));
    let rev2 = revisions
        .get(Some("default"), "hello-00002")
        .await
        .expect("revision");
    assert_eq!(
        rev2.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(keys::CONFIGURATION_GENERATION))
            .map(String::as_str),
        Some("2")
    );

    // 3. Deleting the Service removes every child, the workloads and the route.
    services
        .delete(Some("default"), "hello")
        .await
        .expect("deleted");
    eventually("children and workloads gone", || {
        let revisions = Arc::clone(&revisions);
        let backend = backend.clone();
        let routing = routing.clone();
        async move {
            let left = revisions
                .list(Some("default"), &Default::default())
                .await
                .ok()?;
            let workload_gone = backend
                .status(&WorkloadKey::new("default", "hello-00001"))
                .is_err();
            (left.is_empty() && workload_gone && routing.snapshot().is_empty()).then_some(())
        }
    })
    .await;
    running.stop().await;
}

fn configuration_yaml(name: &str, revision: &str, target: &str) -> String {
    format!(
        r#"
apiVersion: serving.knative.dev/v1
kind: Configuration
metadata:
  name: {name}
  namespace: default
spec:
  template:
    metadata:
      name: {revision}
    spec:
      containers:
        - image: sample-app
          env: [{{name: TARGET, value: {target}}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_cannot_take_traffic_to_another_configurations_revision() {
    let running = start();
    let configurations = Arc::clone(&running.objects.configurations);
    let services = Arc::clone(&running.objects.services);
    let other: knative_serving::api::Configuration =
        serde_yaml::from_str(&configuration_yaml("hello-foo", "hello-foo-00001", "other"))
            .expect("parses");
    configurations.create(&other).await.expect("created");
    eventually("the other configuration's revision", || {
        let revisions = Arc::clone(&running.objects.revisions);
        async move { revisions.get(Some("default"), "hello-foo-00001").await.ok() }
    })
    .await;

    // `hello-` is the right prefix, but the name belongs to `hello-foo`.
    let yaml = service_yaml(
        "mine",
        "  traffic:\n    - revisionName: hello-foo-00001\n      percent: 100",
    )
    .replace(
        "  template:\n",
        "  template:\n    metadata:\n      name: hello-foo-00001\n",
    );
    apply(&services, &yaml).await;
    let svc = eventually("RoutesReady=False RevisionNameTaken", || {
        let services = Arc::clone(&services);
        async move {
            let svc = services.get(Some("default"), "hello").await.ok()?;
            let routes = knative_core::condition::find(
                &svc.status.as_ref()?.status.conditions,
                "RoutesReady",
            )?;
            (routes.reason == "RevisionNameTaken").then_some(svc)
        }
    })
    .await;
    let conditions = &svc.status.as_ref().expect("status").status.conditions;
    assert_eq!(condition(conditions, READY), ConditionStatus::False);
    assert_eq!(
        condition(conditions, "ConfigurationsReady"),
        ConditionStatus::False
    );
    assert!(
        running
            .objects
            .routes
            .get(Some("default"), "hello")
            .await
            .is_err(),
        "no route is created to someone else's revision"
    );
    assert!(running.routing.snapshot().is_empty());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_revision_name_with_a_changed_template_fails_clearly() {
    let running = start();
    let configurations = Arc::clone(&running.objects.configurations);
    let mut cfg: knative_serving::api::Configuration =
        serde_yaml::from_str(&configuration_yaml("hello", "hello-a", "one")).expect("parses");
    cfg = configurations.create(&cfg).await.expect("created");
    for (revision, target) in [("hello-b", "two"), ("hello-a", "three")] {
        let created = eventually("the revision of the current generation", || {
            let configurations = Arc::clone(&configurations);
            let generation = cfg.metadata.generation;
            async move {
                let c = configurations.get(Some("default"), "hello").await.ok()?;
                (c.status.as_ref()?.status.observed_generation == generation).then_some(c)
            }
        })
        .await;
        // A client that skips validation reuses an old name for a new template.
        let mut next: knative_serving::api::Configuration =
            serde_yaml::from_str(&configuration_yaml("hello", revision, target)).expect("parses");
        next.metadata.resource_version = created.metadata.resource_version.clone();
        cfg = configurations.replace(&next).await.expect("replaced");
    }
    let failed = eventually("Ready=False for the reused name", || {
        let configurations = Arc::clone(&configurations);
        async move {
            let c = configurations.get(Some("default"), "hello").await.ok()?;
            let ready =
                knative_core::condition::find(&c.status.as_ref()?.status.conditions, READY)?;
            (c.metadata.generation == Some(3) && ready.is_false()).then_some(ready.clone())
        }
    })
    .await;
    assert_eq!(failed.reason, "RevisionFailed");
    assert!(
        failed.message.contains("stamped from generation 1"),
        "{}",
        failed.message
    );
    running.stop().await;
}
