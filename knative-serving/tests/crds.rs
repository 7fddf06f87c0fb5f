//! The CRDs generated from the types carry upstream's names, short names,
//! categories and printer columns (`specs/CRDS.md`), so `kubectl get ksvc`
//! keeps working.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use knative_serving::api::{Configuration, Revision, Route, Service};
use kube::CustomResourceExt;

fn columns(crd: &CustomResourceDefinition) -> Vec<(String, String)> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.clone(), c.json_path.clone()))
        .collect()
}

fn check(crd: CustomResourceDefinition, name: &str, short: &[&str], cols: &[(&str, &str)]) {
    assert_eq!(crd.metadata.name.as_deref(), Some(name));
    assert_eq!(
        crd.spec.names.short_names.clone().unwrap_or_default(),
        short
    );
    assert_eq!(
        crd.spec.names.categories.clone().unwrap_or_default(),
        ["all", "knative", "serving"]
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1");
    assert!(
        version
            .subresources
            .as_ref()
            .is_some_and(|s| s.status.is_some()),
        "status subresource"
    );
    let want: Vec<(String, String)> = cols
        .iter()
        .map(|(n, p)| ((*n).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(columns(&crd), want);
}

const READY: (&str, &str) = ("Ready", ".status.conditions[?(@.type=='Ready')].status");
const REASON: (&str, &str) = ("Reason", ".status.conditions[?(@.type=='Ready')].reason");

#[test]
fn serving_crds_match_upstream() {
    check(
        Service::crd(),
        "services.serving.knative.dev",
        &["ksvc", "kservice"],
        &[
            ("URL", ".status.url"),
            ("LatestCreated", ".status.latestCreatedRevisionName"),
            ("LatestReady", ".status.latestReadyRevisionName"),
            READY,
            REASON,
        ],
    );
    check(
        Configuration::crd(),
        "configurations.serving.knative.dev",
        &["config", "cfg"],
        &[
            ("LatestCreated", ".status.latestCreatedRevisionName"),
            ("LatestReady", ".status.latestReadyRevisionName"),
            READY,
            REASON,
        ],
    );
    check(
        Revision::crd(),
        "revisions.serving.knative.dev",
        &["rev"],
        &[
            (
                "Config Name",
                ".metadata.labels['serving\\.knative\\.dev/configuration']",
            ),
            (
                "Generation",
                ".metadata.labels['serving\\.knative\\.dev/configurationGeneration']",
            ),
            READY,
            REASON,
            ("Actual Replicas", ".status.actualReplicas"),
            ("Desired Replicas", ".status.desiredReplicas"),
        ],
    );
    check(
        Route::crd(),
        "routes.serving.knative.dev",
        &["rt"],
        &[("URL", ".status.url"), READY, REASON],
    );
}
