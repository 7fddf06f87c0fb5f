use http::Method;
use serde_json::{Value, json};

use super::*;
use crate::backend::fixtures::{ApiServer, status};

const SERVICES: &str = "/api/v1/namespaces/default/services";
const APPLY: &[(&str, &str)] = &[("fieldManager", "knative-operator"), ("force", "true")];

fn route(yaml: &str) -> Route {
    serde_yaml::from_str(yaml).expect("a valid route")
}

fn hello() -> Route {
    route(
        r#"
apiVersion: serving.knative.dev/v1
kind: Route
metadata: {name: hello, namespace: default, uid: route-uid, labels: {serving.knative.dev/service: hello}}
spec:
  traffic:
    - {revisionName: hello-00001, percent: 100}
    - {revisionName: hello-00002, percent: 0, tag: candidate}
status:
  traffic:
    - {revisionName: hello-00001, percent: 100, tag: old}
"#,
    )
}

#[test]
fn a_service_per_route_and_tag_points_at_the_ingress() -> Result<(), RouteServicesError> {
    let config = RouteServicesConfig {
        ingress_host: "ingress.knative.svc.cluster.local".into(),
        ..RouteServicesConfig::default()
    };
    let long_route = "r".repeat(40);
    let cases: Vec<(Route, Vec<&str>)> = vec![
        (hello(), vec!["hello", "candidate-hello", "old-hello"]),
        (
            route(
                r#"
metadata: {name: plain, namespace: default, uid: u}
spec: {traffic: [{configurationName: plain, percent: 100}]}
"#,
            ),
            vec!["plain"],
        ),
        (
            route(&format!(
                r#"
metadata: {{name: {}, namespace: default, uid: u}}
spec: {{traffic: [{{revisionName: r, percent: 100, tag: {}}}]}}
"#,
                long_route,
                "t".repeat(30)
            )),
            vec![long_route.as_str()],
        ),
    ];
    for (route, want) in cases {
        let services = desired_route_services(&route, &config)?;
        let names: Vec<String> = services.iter().map(|s| s.name_any()).collect();
        assert_eq!(names, want);
        for service in &services {
            let spec = service.spec.as_ref().expect("a spec");
            assert_eq!(spec.type_.as_deref(), Some("ExternalName"));
            assert_eq!(
                spec.external_name.as_deref(),
                Some("ingress.knative.svc.cluster.local")
            );
            assert_eq!(
                service.labels().get(keys::ROUTE),
                route.metadata.name.as_ref()
            );
            let owner = &service.owner_references()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.controller),
                ("Route", Some(true))
            );
            assert_eq!(owner.block_owner_deletion, Some(true));
        }
    }
    Ok(())
}

#[test]
fn a_route_without_uid_cannot_own_services() {
    let r = route("metadata: {name: x, namespace: default}\nspec: {}");
    let result = desired_route_services(&r, &RouteServicesConfig::default());
    assert!(
        matches!(result, Err(RouteServicesError::Invalid { .. })),
        "{result:?}"
    );
}

fn listed(name: &str, owner_uid: &str) -> Value {
    json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"serving.knative.dev/route": "hello"},
            "ownerReferences": [{
                "apiVersion": "serving.knative.dev/v1", "kind": "Route", "name": "hello",
                "uid": owner_uid, "controller": true,
            }],
        },
        "spec": {"type": "ExternalName", "externalName": "x"},
    })
}

#[tokio::test]
async fn apply_writes_each_service_and_deletes_stale_ones() -> Result<(), RouteServicesError> {
    let (client, mut server) = ApiServer::new();
    let services = RouteServices::new(client, RouteServicesConfig::default());
    let call = tokio::spawn(async move { services.apply(&hello()).await });
    for name in ["hello", "candidate-hello", "old-hello"] {
        let body = server
            .expect(
                Method::PATCH,
                &format!("{SERVICES}/{name}"),
                APPLY,
                200,
                json!({}),
            )
            .await
            .body;
        assert_eq!(body["apiVersion"], "v1");
        assert_eq!(body["kind"], "Service");
        assert_eq!(body["metadata"]["name"], name);
        assert_eq!(
            body["metadata"]["labels"]["serving.knative.dev/route"],
            "hello"
        );
        assert_eq!(
            body["metadata"]["labels"]["serving.knative.dev/service"],
            "hello"
        );
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "route-uid");
        assert_eq!(body["spec"]["type"], "ExternalName");
        assert_eq!(body["spec"]["externalName"], DEFAULT_INGRESS_HOST);
    }
    server
        .expect(
            Method::GET,
            SERVICES,
            &[("labelSelector", "serving.knative.dev/route=hello")],
            200,
            json!({
                "apiVersion": "v1", "kind": "ServiceList", "metadata": {},
                "items": [
                    listed("hello", "route-uid"),
                    listed("gone-hello", "route-uid"),
                    listed("foreign-hello", "someone-else"),
                ],
            }),
        )
        .await;
    server
        .expect(
            Method::DELETE,
            &format!("{SERVICES}/gone-hello"),
            &[],
            200,
            status(200, "Success"),
        )
        .await;
    let names = call.await.expect("apply runs")?;
    assert_eq!(names, ["hello", "candidate-hello", "old-hello"]);
    server.expect_no_request().await;
    Ok(())
}

#[tokio::test]
async fn cleanup_deletes_every_labelled_service() -> Result<(), RouteServicesError> {
    let (client, mut server) = ApiServer::new();
    let services = RouteServices::new(client, RouteServicesConfig::default());
    let call = tokio::spawn(async move { services.cleanup("default", "hello").await });
    server
        .expect(
            Method::GET,
            SERVICES,
            &[("labelSelector", "serving.knative.dev/route=hello")],
            200,
            json!({
                "apiVersion": "v1", "kind": "ServiceList", "metadata": {},
                "items": [listed("hello", "route-uid"), listed("tag-hello", "route-uid")],
            }),
        )
        .await;
    server
        .expect(
            Method::DELETE,
            &format!("{SERVICES}/hello"),
            &[],
            200,
            status(200, "Success"),
        )
        .await;
    server
        .expect(
            Method::DELETE,
            &format!("{SERVICES}/tag-hello"),
            &[],
            404,
            crate::backend::fixtures::not_found(),
        )
        .await;
    call.await.expect("cleanup runs")?;
    Ok(())
}
