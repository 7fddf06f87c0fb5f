//! The Lease loop against a mock API server.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::Method;
use serde_json::{Value, json};

use super::*;
use crate::test_util::{ApiServer, Expect, api_status, mock, scenario, scenario_within};

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/knative-serving/leases";
const LEASE: &str =
    "/apis/coordination.k8s.io/v1/namespaces/knative-serving/leases/knative-operator";

fn elector(client: Client) -> LeaderElector {
    LeaderElector::new(
        client,
        LeaseConfig::new("knative-serving", "knative-operator", "pod-a"),
    )
}

fn micro(t: jiff::Timestamp) -> Value {
    serde_json::to_value(MicroTime(t)).expect("a MicroTime")
}

fn lease(
    holder: &str,
    renewed: jiff::Timestamp,
    resource_version: &str,
    transitions: i32,
) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": "knative-operator",
            "namespace": "knative-serving",
            "resourceVersion": resource_version,
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": 15,
            "acquireTime": micro(renewed),
            "renewTime": micro(renewed),
            "leaseTransitions": transitions,
        }
    })
}

fn not_found() -> Value {
    api_status(
        404,
        "NotFound",
        "leases.coordination.k8s.io \"knative-operator\" not found",
        json!({ "name": "knative-operator", "group": "coordination.k8s.io", "kind": "leases" }),
    )
}

fn conflict() -> Value {
    api_status(
        409,
        "Conflict",
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"knative-operator\": \
         the object has been modified; please apply your changes to the latest version and try again",
        json!({ "name": "knative-operator", "group": "coordination.k8s.io", "kind": "leases" }),
    )
}

/// GET → 404, POST → created: the script of acquiring a free Lease.
async fn grant_free_lease(server: &mut ApiServer) {
    server
        .handle(Expect::new(Method::GET, LEASE), 404, not_found())
        .await;
    let (body, send) = server.take(Method::POST, LEASES).await;
    assert_eq!(body["metadata"]["name"], "knative-operator");
    assert_eq!(body["spec"]["holderIdentity"], "pod-a");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    assert!(body["spec"]["renewTime"].is_string(), "{body}");
    assert!(body["spec"]["acquireTime"].is_string(), "{body}");
    let mut created = body;
    created["metadata"]["resourceVersion"] = json!("1");
    server.answer(send, 201, &created);
}

#[tokio::test]
async fn acquires_a_free_lease_by_creating_it() {
    let (client, mut server) = mock();
    let elector = elector(client);
    let attempt = scenario(
        grant_free_lease(&mut server),
        elector.try_acquire_or_renew(),
    )
    .await
    .expect("an answer");
    assert_eq!(attempt, Attempt::Leading);
}

#[tokio::test]
async fn does_not_take_a_lease_another_replica_holds() {
    let (client, mut server) = mock();
    let elector = elector(client);
    let held = lease("pod-b", jiff::Timestamp::now(), "5", 0);
    let attempt = scenario(
        server.handle(Expect::new(Method::GET, LEASE), 200, held),
        elector.try_acquire_or_renew(),
    )
    .await
    .expect("an answer");
    assert_eq!(
        attempt,
        Attempt::Following {
            holder: Some("pod-b".into())
        }
    );
    server.expect_no_request().await;
}

#[tokio::test]
async fn takes_over_an_expired_lease_with_its_resource_version() {
    let (client, mut server) = mock();
    let elector = elector(client);
    let an_hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let script = async {
        server
            .handle(
                Expect::new(Method::GET, LEASE),
                200,
                lease("pod-b", an_hour_ago, "5", 2),
            )
            .await;
        let (body, send) = server.take(Method::PUT, LEASE).await;
        assert_eq!(
            body["metadata"]["resourceVersion"], "5",
            "optimistic concurrency"
        );
        assert_eq!(body["spec"]["holderIdentity"], "pod-a");
        assert_eq!(body["spec"]["leaseTransitions"], 3);
        assert_ne!(body["spec"]["renewTime"], micro(an_hour_ago));
        let mut stored = body;
        stored["metadata"]["resourceVersion"] = json!("6");
        server.answer(send, 200, &stored);
    };
    let attempt = scenario(script, elector.try_acquire_or_renew())
        .await
        .expect("an answer");
    assert_eq!(attempt, Attempt::Leading);
}

#[tokio::test(start_paused = true)]
async fn a_lease_seen_unchanged_for_its_duration_has_expired_whatever_its_clock_says() {
    let (client, mut server) = mock();
    let elector = elector(client);
    // The holder's clock runs an hour ahead: its renewTime looks fresh.
    let ahead = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(1);
    let first = scenario(
        server.handle(
            Expect::new(Method::GET, LEASE),
            200,
            lease("pod-b", ahead, "5", 0),
        ),
        elector.try_acquire_or_renew(),
    )
    .await
    .expect("an answer");
    assert!(matches!(first, Attempt::Following { .. }), "{first:?}");

    tokio::time::advance(Duration::from_secs(16)).await;
    let script = async {
        server
            .handle(
                Expect::new(Method::GET, LEASE),
                200,
                lease("pod-b", ahead, "5", 0),
            )
            .await;
        let (body, send) = server.take(Method::PUT, LEASE).await;
        assert_eq!(body["spec"]["holderIdentity"], "pod-a");
        server.answer(send, 200, &body);
    };
    let second = scenario(script, elector.try_acquire_or_renew())
        .await
        .expect("an answer");
    assert_eq!(second, Attempt::Leading);
}

#[tokio::test]
async fn a_conflict_on_update_means_another_replica_won() {
    let (client, mut server) = mock();
    let elector = elector(client);
    let an_hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let script = async {
        server
            .handle(
                Expect::new(Method::GET, LEASE),
                200,
                lease("pod-b", an_hour_ago, "5", 0),
            )
            .await;
        let (_, send) = server.take(Method::PUT, LEASE).await;
        server.answer(send, 409, &conflict());
    };
    let attempt = scenario(script, elector.try_acquire_or_renew())
        .await
        .expect("an answer");
    assert_eq!(
        attempt,
        Attempt::Following {
            holder: Some("pod-b".into())
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_leader_whose_renewal_fails_stops_its_work_and_steps_down() {
    let (client, mut server) = mock();
    let elector = elector(client);
    let stopped = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let script = async {
        grant_free_lease(&mut server).await;
        // Two seconds later: the renewal finds the Lease and loses the race.
        server
            .handle(
                Expect::new(Method::GET, LEASE),
                200,
                lease("pod-a", jiff::Timestamp::now(), "1", 0),
            )
            .await;
        let (body, send) = server.take(Method::PUT, LEASE).await;
        assert_eq!(body["metadata"]["resourceVersion"], "1");
        server.answer(send, 409, &conflict());
    };
    let (work_started, work_stopped) = (Arc::clone(&started), Arc::clone(&stopped));
    let outcome = scenario_within(
        Duration::from_secs(60),
        script,
        elector.run(std::future::pending(), move |term| async move {
            work_started.store(true, Ordering::SeqCst);
            term.ended().await;
            work_stopped.store(true, Ordering::SeqCst);
        }),
    )
    .await;
    assert!(matches!(outcome, Outcome::Lost(_)), "{outcome:?}");
    assert!(started.load(Ordering::SeqCst) && stopped.load(Ordering::SeqCst));
    assert!(!elector.is_leading());
    // Losing the Lease does not touch it again.
    server.expect_no_request().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_work_and_releases_the_lease() {
    let (client, mut server) = mock();
    let elector = elector(client);
    // Shutdown is asked for once the work runs.
    let (started, shutdown) = tokio::sync::oneshot::channel::<()>();
    let script = async {
        grant_free_lease(&mut server).await;
        // Release: read it, then write it back without a holder.
        server
            .handle(
                Expect::new(Method::GET, LEASE),
                200,
                lease("pod-a", jiff::Timestamp::now(), "1", 0),
            )
            .await;
        let (body, send) = server.take(Method::PUT, LEASE).await;
        assert_eq!(body["spec"].get("holderIdentity"), None, "{body}");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        server.answer(send, 200, &body);
    };
    let outcome = scenario_within(
        Duration::from_secs(60),
        script,
        elector.run(
            async {
                let _ = shutdown.await;
            },
            |term| {
                let _ = started.send(());
                term.ended()
            },
        ),
    )
    .await;
    assert_eq!(outcome, Outcome::Shutdown);
}
