use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::Selector;
use proptest::prelude::*;
use serde_json::json;

use super::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn meta(ns: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        namespace: Some(ns.into()),
        name: Some(name.into()),
        ..ObjectMeta::default()
    }
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    Deployment {
        metadata: meta("default", name),
        spec: DeploymentSpec {
            replicas: Some(replicas),
            ..DeploymentSpec::default()
        },
        status: None,
    }
}

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: meta("default", name),
        ..ConfigMap::default()
    }
}

fn owned_by<K: ApiObject>(mut obj: K, owner: &impl ApiObject) -> K {
    let owner_ref = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    obj.meta_mut()
        .owner_references
        .get_or_insert_with(Vec::new)
        .push(owner_ref);
    obj
}

fn rv(obj: &impl ApiObject) -> u64 {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn create_sets_server_fields_and_drops_status() {
    let deployments = InMemoryObjects::<Deployment>::new();
    let mut d = deployment("hello", 1);
    d.status = Some(DeploymentStatus {
        replicas: Some(7),
        ..DeploymentStatus::default()
    });
    let created = deployments.create(&d).await.expect("created");
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some());
    assert!(created.metadata.creation_timestamp.is_some());
    assert!(created.metadata.resource_version.is_some());
    assert!(created.status.is_none(), "status is a subresource");
    assert_eq!(
        deployments
            .get(Some("default"), "hello")
            .await
            .expect("found"),
        created
    );
}

#[tokio::test]
async fn create_rejects_an_existing_name() {
    let cms = InMemoryObjects::<ConfigMap>::new();
    cms.create(&config_map("a")).await.expect("created");
    let err = cms.create(&config_map("a")).await.expect_err("duplicate");
    assert!(err.is_already_exists(), "{err}");
    assert_eq!(err.to_string(), "ConfigMap \"default/a\" already exists");
}

#[tokio::test]
async fn create_explains_invalid_metadata_with_field_paths() {
    let cms = InMemoryObjects::<ConfigMap>::new();
    let mut cm = config_map("Not_Valid");
    cm.metadata.resource_version = Some("12".into());
    let err = cms.create(&cm).await.expect_err("invalid");
    let text = err.to_string();
    assert!(
        text.contains("metadata.name: invalid value: Not_Valid"),
        "{text}"
    );
    assert!(
        text.contains("metadata.resourceVersion: must not set"),
        "{text}"
    );

    let mut no_ns = config_map("a");
    no_ns.metadata.namespace = None;
    let err = cms.create(&no_ns).await.expect_err("invalid");
    assert!(
        err.to_string()
            .contains("metadata.namespace: missing field"),
        "{err}"
    );
}

#[tokio::test]
async fn cluster_scoped_kinds_ignore_namespaces() {
    let namespaces = InMemoryObjects::<Namespace>::new();
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("team-a".into()),
            namespace: Some("ignored".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    let created = namespaces.create(&ns).await.expect("created");
    assert_eq!(created.metadata.namespace, None);
    assert!(namespaces.get(None, "team-a").await.is_ok());
    assert!(namespaces.get(Some("x"), "team-a").await.is_ok());
}

#[tokio::test]
async fn list_and_watch_of_a_cluster_scoped_kind_ignore_the_namespace() {
    let namespaces = InMemoryObjects::<Namespace>::new();
    let mut watch = namespaces.watch(Some("default")).await.expect("watch");
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some("team-a".into()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    namespaces.create(&ns).await.expect("created");
    let listed = namespaces
        .list(Some("default"), &Selector::default())
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert!(matches!(
        watch.events.next().await,
        Some(Ok(WatchEvent::Added(_)))
    ));
}

#[tokio::test]
async fn long_generate_names_are_cut_to_fit_a_dns_label() {
    let cms = InMemoryObjects::<ConfigMap>::new();
    let mut cm = config_map("");
    cm.metadata.name = None;
    cm.metadata.generate_name = Some("a".repeat(70));
    let created = cms.create(&cm).await.expect("created");
    assert_eq!(created.metadata.name.map(|n| n.len()), Some(63));
}

#[tokio::test]
async fn generate_name_appends_a_random_suffix() {
    let cms = InMemoryObjects::<ConfigMap>::new();
    let mut cm = config_map("");
    cm.metadata.name = None;
    cm.metadata.generate_name = Some("hello-".into());
    let a = cms.create(&cm).await.expect("created");
    let b = cms.create(&cm).await.expect("created");
    let (a, b) = (
        a.metadata.name.unwrap_or_default(),
        b.metadata.name.unwrap_or_default(),
    );
    assert!(
        a.starts_with("hello-") && a.len() == "hello-".len() + 5,
        "{a}"
    );
    assert_ne!(a, b);
}

#[tokio::test]
async fn replace_with_stale_resource_version_conflicts() {
    let deployments = InMemoryObjects::<Deployment>::new();
    let v1 = deployments
        .create(&deployment("hello", 1))
        .await
        .expect("created");
    let mut v2 = v1.clone();
    v2.spec.replicas = Some(2);
    deployments.replace(&v2).await.expect("first writer wins");
    let mut stale = v1.clone();
    stale.spec.replicas = Some(3);
    let err = deployments.replace(&stale).await.expect_err("stale");
    assert!(err.is_conflict(), "{err}");
    let stored = deployments
        .get(Some("default"), "hello")
        .await
        .expect("found");
    assert_eq!(stored.spec.replicas, Some(2));
}

#[tokio::test]
async fn replace_without_resource_version_is_invalid() {
    let cms = InMemoryObjects::<ConfigMap>::new();
    cms.create(&config_map("a")).await.expect("created");
    let err = cms.replace(&config_map("a")).await.expect_err("invalid");
    assert!(
        err.to_string()
            .contains("metadata.resourceVersion: missing field"),
        "{err}"
    );
    let mut missing = config_map("missing");
    missing.metadata.resource_version = Some("1".into());
    let err = cms.replace(&missing).await.expect_err("absent");
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn generation_bumps_only_on_spec_change() {
    let deployments = InMemoryObjects::<Deployment>::new();
    let created = deployments
        .create(&deployment("hello", 1))
        .await
        .expect("created");

    let mut labelled = created.clone();
    labelled.metadata.labels = Some([("app".to_owned(), "hello".to_owned())].into());
    let labelled = deployments.replace(&labelled).await.expect("labels");
    assert_eq!(
        labelled.metadata.generation,
        Some(1),
        "metadata is not spec"
    );
    assert!(rv(&labelled) > rv(&created));

    let mut with_status = labelled.clone();
    with_status.status = Some(DeploymentStatus {
        ready_replicas: Some(1),
        ..DeploymentStatus::default()
    });
    let with_status = deployments
        .replace_status(&with_status)
        .await
        .expect("status");
    assert_eq!(
        with_status.metadata.generation,
        Some(1),
        "status is not spec"
    );
    assert_eq!(
        with_status.status.as_ref().and_then(|s| s.ready_replicas),
        Some(1)
    );

    let mut scaled = with_status.clone();
    scaled.spec.replicas = Some(3);
    let scaled = deployments.replace(&scaled).await.expect("spec");
    assert_eq!(scaled.metadata.generation, Some(2));
    assert_eq!(
        scaled.status.and_then(|s| s.ready_replicas),
        Some(1),
        "replace keeps the stored status"
    );
}

#[tokio::test]
async fn replace_ignores_status_and_replace_status_ignores_spec() {
    let deployments = InMemoryObjects::<Deployment>::new();
    let created = deployments
        .create(&deployment("hello", 1))
        .await
        .expect("created");
    let mut both = created.clone();
    both.spec.replicas = Some(5);
    both.status = Some(DeploymentStatus {
        replicas: Some(5),
        ..DeploymentStatus::default()
    });
    let after_status = deployments.replace_status(&both).await.expect("status");
    assert_eq!(after_status.spec.replicas, Some(1));
    assert_eq!(
        after_status.status.as_ref().and_then(|s| s.replicas),
        Some(5)
    );

    let mut spec_only = after_status.clone();
    spec_only.spec.replicas = Some(5);
    spec_only.status = None;
    let after_spec = deployments.replace(&spec_only).await.expect("spec");
    assert_eq!(after_spec.spec.replicas, Some(5));
    assert_eq!(after_spec.status.as_ref().and_then(|s| s.replicas), Some(5));
}

#[tokio::test]
async fn no_op_writes_keep_the_resource_version_and_emit_nothing() {
    let cms = InMemoryObjects::<ConfigMap>::new();
    let created = cms.create(&config_map("a")).await.expect("created");
    let mut watch = cms.watch(None).await.expect("watch");
    let same = cms.replace(&created).await.expect("no-op");
    assert_eq!(
        same.metadata.resource_version,
        created.metadata.resource_version
    );
    let patched = cms
        .patch(Some("default"), "a", &json!({"data": {"k": "v"}}))
        .await
        .expect("patch");
    assert!(rv(&patched) > rv(&created));
    match watch.events.next().await {
        Some(Ok(WatchEvent::Modified(cm))) => assert_eq!(cm, patched),
        other => panic!("expected the patch, got {other:?}"),
    }
}

#[tokio::test]
async fn patch_status_merges_and_checks_its_precondition() {
    let deployments = InMemoryObjects::<Deployment>::new();
    let created = deployments
        .create(&deployment("hello", 1))
        .await
        .expect("created");
    let one = deployments
        .patch_status(
            Some("default"),
            "hello",
            &json!({"status": {"replicas": 1, "readyReplicas": 1}}),
        )
        .await
        .expect("patched");
    let two = deployments
        .patch_status(
            Some("default"),
            "hello",
            &json!({"status": {"readyReplicas": 0}}),
        )
        .await
        .expect("patched");
    let status = two.status.clone().unwrap_or_default();
    assert_eq!(status.replicas, Some(1), "merge keeps other fields");
    assert_eq!(status.ready_replicas, Some(0));
    assert_eq!(two.metadata.generation, Some(1));
    let err = deployments
        .patch_status(
            Some("default"),
            "hello",
            &json!({"metadata": {"resourceVersion": one.metadata.resource_version}, "status": {"replicas": 9}}),
        )
        .await
        .expect_err("stale precondition");
    assert!(err.is_conflict(), "{err}");
    let err = deployments
        .patch(Some("default"), "hello", &json!({"metadata": {"resourceVersion": created.metadata.resource_version}, "spec": {"replicas": 4}}))
        .await
        .expect_err("stale precondition");
    assert!(err.is_conflict(), "{err}");
}

#[tokio::test]
async fn a_patch_that_does_not_fit_the_schema_or_renames_is_invalid() {
    let deployments = InMemoryObjects::<Deployment>::new();
    deployments
        .create(&deployment("hello", 1))
        .await
        .expect("created");
    let err = deployments
        .patch(
            Some("default"),
            "hello",
            &json!({"spec": {"replicas": "three"}}),
        )
        .await
        .expect_err("wrong type");
    let text = err.to_string();
    assert!(matches!(err, StoreError::Invalid { .. }), "{text}");
    assert!(
        text.contains("patch does not fit the Deployment schema"),
        "{text}"
    );
    assert!(text.contains("invalid type: string \"three\""), "{text}");
    let err = deployments
        .patch(
            Some("default"),
            "hello",
            &json!({"metadata": {"name": "other"}}),
        )
        .await
        .expect_err("rename");
    assert!(
        err.to_string()
            .contains("metadata.name: field is immutable"),
        "{err}"
    );
    let err = deployments
        .patch(Some("default"), "hello", &json!(["not", "an", "object"]))
        .await
        .expect_err("not an object");
    assert!(
        err.to_string()
            .contains("a merge patch must be a JSON object"),
        "{err}"
    );
}

#[tokio::test]
async fn delete_without_finalizers_removes_the_object() {
    let cms = InMemoryObjects::<ConfigMap>::new();
    cms.create(&config_map("a")).await.expect("created");
    match cms.delete(Some("default"), "a").await.expect("deleted") {
        Deletion::Removed(cm) => assert_eq!(cm.metadata.name.as_deref(), Some("a")),
        other => panic!("expected removal, got {other:?}"),
    }
    assert!(
        cms.get(Some("default"), "a")
            .await
            .expect_err("gone")
            .is_not_found()
    );
    assert!(
        cms.delete(Some("default"), "a")
            .await
            .expect_err("gone")
            .is_not_found()
    );
}

#[tokio::test]
async fn finalizer_blocks_deletion_until_it_is_removed() {
    let deployments = InMemoryObjects::<Deployment>::new();
    let mut d = deployment("hello", 1);
    d.metadata.finalizers = Some(vec!["serving.knative.dev/cleanup".into()]);
    let created = deployments.create(&d).await.expect("created");

    let terminating = match deployments
        .delete(Some("default"), "hello")
        .await
        .expect("delete")
    {
        Deletion::Terminating(d) => d,
        other => panic!("expected terminating, got {other:?}"),
    };
    assert!(terminating.metadata.deletion_timestamp.is_some());
    assert_eq!(
        terminating.metadata.generation,
        Some(2),
        "deletion bumps generation"
    );
    assert!(
        deployments.get(Some("default"), "hello").await.is_ok(),
        "still there"
    );
    // Deleting again changes nothing.
    let again = deployments
        .delete(Some("default"), "hello")
        .await
        .expect("delete");
    assert_eq!(again, Deletion::Terminating(terminating.clone()));
    assert!(rv(&terminating) > rv(&created));

    // A terminating object cannot gain finalizers.
    let mut more = terminating.clone();
    more.metadata
        .finalizers
        .get_or_insert_with(Vec::new)
        .push("example.com/other".into());
    let err = deployments
        .replace(&more)
        .await
        .expect_err("no new finalizers");
    assert!(
        err.to_string()
            .contains("metadata.finalizers[1]: no new finalizers can be added"),
        "{err}"
    );

    let mut watch = deployments.watch(None).await.expect("watch");
    let mut done = terminating.clone();
    done.metadata.finalizers = Some(Vec::new());
    deployments.replace(&done).await.expect("finalizer removed");
    assert!(
        deployments
            .get(Some("default"), "hello")
            .await
            .expect_err("gone")
            .is_not_found()
    );
    assert!(matches!(
        watch.events.next().await,
        Some(Ok(WatchEvent::Deleted(_)))
    ));
}

#[tokio::test]
async fn deleting_an_owner_cascades_to_its_dependents_across_kinds() {
    let store = InMemoryStore::new();
    let deployments = store.objects::<Deployment>();
    let cms = store.objects::<ConfigMap>();
    let owner = deployments
        .create(&deployment("owner", 1))
        .await
        .expect("created");
    let other_owner = deployments
        .create(&deployment("other", 1))
        .await
        .expect("created");
    let only_child = cms
        .create(&owned_by(config_map("only-child"), &owner))
        .await
        .expect("created");
    // A grandchild owned by the config map (ownership chains cascade).
    let grandchild = Deployment {
        metadata: ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "ConfigMap".into(),
                name: "only-child".into(),
                uid: only_child.metadata.uid.clone().unwrap_or_default(),
                ..OwnerReference::default()
            }]),
            ..meta("default", "grandchild")
        },
        ..deployment("grandchild", 1)
    };
    deployments.create(&grandchild).await.expect("created");
    let shared = owned_by(owned_by(config_map("shared"), &owner), &other_owner);
    let mut shared = shared;
    // Only one owner may be the controller.
    if let Some(refs) = shared.metadata.owner_references.as_mut() {
        refs[1].controller = Some(false);
    }
    cms.create(&shared).await.expect("created");
    cms.create(&config_map("unrelated")).await.expect("created");

    deployments
        .delete(Some("default"), "owner")
        .await
        .expect("deleted");

    assert!(
        cms.get(Some("default"), "only-child")
            .await
            .expect_err("cascaded")
            .is_not_found()
    );
    assert!(
        deployments
            .get(Some("default"), "grandchild")
            .await
            .expect_err("cascaded")
            .is_not_found()
    );
    let shared = cms
        .get(Some("default"), "shared")
        .await
        .expect("still owned");
    let owners: Vec<_> = shared
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(owners, ["other"], "the dangling reference is dropped");
    assert!(cms.get(Some("default"), "unrelated").await.is_ok());
}

#[tokio::test]
async fn an_object_created_for_an_owner_that_is_gone_is_collected() {
    let store = InMemoryStore::new();
    let deployments = store.objects::<Deployment>();
    let cms = store.objects::<ConfigMap>();
    let owner = deployments
        .create(&deployment("owner", 1))
        .await
        .expect("created");
    deployments
        .delete(Some("default"), "owner")
        .await
        .expect("deleted");
    // A reconcile that still had the owner in its cache creates a child.
    let mut watch = cms.watch(None).await.expect("watch");
    let late = cms
        .create(&owned_by(config_map("late-child"), &owner))
        .await
        .expect("created");
    assert!(late.metadata.uid.is_some());
    assert!(
        cms.get(Some("default"), "late-child")
            .await
            .expect_err("collected")
            .is_not_found()
    );
    assert!(matches!(
        watch.events.next().await,
        Some(Ok(WatchEvent::Added(_)))
    ));
    assert!(matches!(
        watch.events.next().await,
        Some(Ok(WatchEvent::Deleted(_)))
    ));
}

#[tokio::test]
async fn a_child_of_a_terminating_owner_stays_until_the_owner_is_gone() {
    let store = InMemoryStore::new();
    let deployments = store.objects::<Deployment>();
    let cms = store.objects::<ConfigMap>();
    let mut d = deployment("owner", 1);
    d.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let owner = deployments.create(&d).await.expect("created");
    cms.create(&owned_by(config_map("child"), &owner))
        .await
        .expect("created");
    let terminating = match deployments
        .delete(Some("default"), "owner")
        .await
        .expect("delete")
    {
        Deletion::Terminating(d) => d,
        other => panic!("expected terminating, got {other:?}"),
    };
    assert!(
        cms.get(Some("default"), "child").await.is_ok(),
        "owner still exists"
    );
    let mut release = terminating;
    release.metadata.finalizers = None;
    deployments
        .replace(&release)
        .await
        .expect("finalizer removed");
    assert!(
        cms.get(Some("default"), "child")
            .await
            .expect_err("collected with its owner")
            .is_not_found()
    );
}

#[tokio::test]
async fn cascade_respects_the_dependents_finalizers() {
    let store = InMemoryStore::new();
    let deployments = store.objects::<Deployment>();
    let cms = store.objects::<ConfigMap>();
    let owner = deployments
        .create(&deployment("owner", 1))
        .await
        .expect("created");
    let mut child = owned_by(config_map("child"), &owner);
    child.metadata.finalizers = Some(vec!["example.com/keep".into()]);
    cms.create(&child).await.expect("created");
    deployments
        .delete(Some("default"), "owner")
        .await
        .expect("deleted");
    let child = cms
        .get(Some("default"), "child")
        .await
        .expect("finalizer holds it");
    assert!(child.metadata.deletion_timestamp.is_some());
}

#[tokio::test]
async fn watch_sees_every_write_in_order() {
    let cms = InMemoryObjects::<ConfigMap>::new();
    cms.create(&config_map("before")).await.expect("created");
    let mut all = cms.watch(None).await.expect("watch");
    let mut other_ns = cms.watch(Some("other")).await.expect("watch");
    assert_eq!(all.initial.len(), 1);
    assert!(other_ns.initial.is_empty());

    let a = cms.create(&config_map("a")).await.expect("created");
    let mut a2 = a.clone();
    a2.data = Some([("k".to_owned(), "1".to_owned())].into());
    let a2 = cms.replace(&a2).await.expect("replaced");
    let mut a3 = a2.clone();
    a3.data = Some([("k".to_owned(), "2".to_owned())].into());
    let a3 = cms.replace(&a3).await.expect("replaced");
    let elsewhere = ConfigMap {
        metadata: meta("other", "x"),
        ..ConfigMap::default()
    };
    let elsewhere = cms.create(&elsewhere).await.expect("created");
    cms.delete(Some("default"), "a").await.expect("deleted");

    let mut seen = Vec::new();
    for _ in 0..5 {
        match all.events.next().await {
            Some(Ok(event)) => seen.push(event),
            other => panic!("watch ended early: {other:?}"),
        }
    }
    let kinds: Vec<_> = seen
        .iter()
        .map(|e| match e {
            WatchEvent::Added(_) => "Added",
            WatchEvent::Modified(_) => "Modified",
            WatchEvent::Deleted(_) => "Deleted",
        })
        .collect();
    assert_eq!(kinds, ["Added", "Modified", "Modified", "Added", "Deleted"]);
    assert_eq!(seen[0].object(), &a);
    assert_eq!(seen[1].object(), &a2);
    assert_eq!(seen[2].object(), &a3);
    let versions: Vec<_> = seen.iter().map(|e| rv(e.object())).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");

    match other_ns.events.next().await {
        Some(Ok(WatchEvent::Added(cm))) => assert_eq!(cm, elsewhere),
        other => panic!("expected the other namespace's add, got {other:?}"),
    }
}

#[tokio::test]
async fn list_filters_by_namespace_and_label_selector() {
    let cms = InMemoryObjects::<ConfigMap>::new();
    for (ns, name, app) in [
        ("default", "a", "x"),
        ("default", "b", "y"),
        ("other", "c", "x"),
    ] {
        let mut cm = ConfigMap {
            metadata: meta(ns, name),
            ..ConfigMap::default()
        };
        cm.metadata.labels = Some([("app".to_owned(), app.to_owned())].into());
        cms.create(&cm).await.expect("created");
    }
    let names = |v: Vec<ConfigMap>| -> Vec<String> {
        v.into_iter().filter_map(|c| c.metadata.name).collect()
    };
    let everything = Selector::default();
    assert_eq!(
        names(cms.list(None, &everything).await.expect("list")),
        ["a", "b", "c"]
    );
    assert_eq!(
        names(cms.list(Some("default"), &everything).await.expect("list")),
        ["a", "b"]
    );
    let app_x: Selector = [("app", "x")].into_iter().collect();
    assert_eq!(
        names(cms.list(None, &app_x).await.expect("list")),
        ["a", "c"]
    );
}

/// Increments a counter in a config map with get / modify / replace,
/// retrying on conflict, as every controller does.
async fn increment(cms: &InMemoryObjects<ConfigMap>) -> usize {
    let mut conflicts = 0;
    loop {
        let mut cm = cms.get(Some("default"), "counter").await.expect("exists");
        let data = cm.data.get_or_insert_with(Default::default);
        let n: u64 = data.get("n").and_then(|v| v.parse().ok()).unwrap_or(0);
        data.insert("n".into(), (n + 1).to_string());
        match cms.replace(&cm).await {
            Ok(_) => return conflicts,
            Err(e) if e.is_conflict() => {
                conflicts += 1;
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn concurrent_writers_never_lose_an_update(writers in 2usize..8, increments in 1usize..25) {
        let total = rt().block_on(async move {
            let cms = Arc::new(InMemoryObjects::<ConfigMap>::new());
            cms.create(&config_map("counter")).await.expect("created");
            let tasks: Vec<_> = (0..writers)
                .map(|_| {
                    let cms = Arc::clone(&cms);
                    tokio::spawn(async move {
                        for _ in 0..increments {
                            increment(&cms).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await.expect("writer finished");
            }
            let cm = cms.get(Some("default"), "counter").await.expect("exists");
            cm.data.unwrap_or_default().get("n").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0)
        });
        prop_assert_eq!(total, writers * increments);
    }

    #[test]
    fn generation_is_monotonic_and_counts_spec_changes(ops in proptest::collection::vec(0u8..4, 1..30)) {
        rt().block_on(async move {
            let deployments = InMemoryObjects::<Deployment>::new();
            let mut current = deployments.create(&deployment("d", 0)).await.expect("created");
            let mut spec_changes = 0;
            for (i, op) in ops.into_iter().enumerate() {
                let before = current.clone();
                let mut next = current.clone();
                current = match op {
                    0 => {
                        let spec = &mut next.spec;
                        spec.replicas = Some(spec.replicas.unwrap_or(0) + 1);
                        spec_changes += 1;
                        deployments.replace(&next).await.expect("spec")
                    }
                    1 => {
                        next.metadata.labels = Some([("i".to_owned(), i.to_string())].into());
                        deployments.replace(&next).await.expect("labels")
                    }
                    2 => {
                        next.status = Some(DeploymentStatus { observed_generation: Some(i as i64), ..Default::default() });
                        deployments.replace_status(&next).await.expect("status")
                    }
                    _ => deployments.replace(&next).await.expect("no-op"),
                };
                let (g0, g1) = (before.metadata.generation.unwrap_or(0), current.metadata.generation.unwrap_or(0));
                assert!(g1 >= g0, "generation went backwards");
                assert!(rv(&current) >= rv(&before), "resourceVersion went backwards");
                assert_eq!(g1, 1 + spec_changes, "generation counts spec changes only");
            }
        });
    }
}
