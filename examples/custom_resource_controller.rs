//! A controller for a custom resource, entirely in memory: defaulting and
//! path-aware validation, a living condition set, and status written back
//! through the object store by the controller runtime.
//!
//! Run it with `cargo run --example custom_resource_controller`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use knative::core::apis::{Context, FieldError, SetDefaults, Validate};
use knative::core::condition::{ConditionSet, Status};
use knative::core::runtime::{Action, Controller, Reconciler};
use knative::core::store::{InMemoryStore, Objects, StoreError};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The spec of a Greeting: a message shown by some replicas.
#[derive(CustomResource, Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "example.knative.dev",
    version = "v1",
    kind = "Greeting",
    namespaced,
    status = "GreetingStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct GreetingSpec {
    /// What to say.
    pub message: String,
    /// How many replicas say it (defaults to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
}

/// The status of a Greeting: the Knative duck status.
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
pub struct GreetingStatus {
    /// Conditions and observed generation.
    #[serde(flatten)]
    pub status: Status,
}

impl SetDefaults for GreetingSpec {
    fn set_defaults(&mut self, _ctx: &Context<'_>) {
        self.replicas.get_or_insert(1);
    }
}

impl Validate for GreetingSpec {
    fn validate(&self, _ctx: &Context<'_>) -> FieldError {
        let mut errs = FieldError::none();
        if self.message.is_empty() {
            errs.push(FieldError::missing_field("message"));
        }
        if let Some(r) = self.replicas.filter(|r| !(0..=10).contains(r)) {
            errs.push(FieldError::out_of_bounds(r, 0, 10, "replicas"));
        }
        errs
    }
}

/// Greeting's conditions: Ready follows SpecValid and Greeted.
fn condition_set() -> ConditionSet {
    ConditionSet::living(&["SpecValid", "Greeted"])
}

struct GreetingReconciler {
    greetings: Arc<dyn Objects<Greeting>>,
}

#[async_trait]
impl Reconciler<Greeting> for GreetingReconciler {
    type Error = StoreError;

    async fn reconcile(&self, greeting: Arc<Greeting>) -> Result<Action, StoreError> {
        let mut greeting = (*greeting).clone();
        let ctx = Context::create();
        greeting.spec.set_defaults(&ctx);
        let errors = greeting.spec.validate(&ctx).via_field("spec");

        let set = condition_set();
        let mut status = greeting.status.take().unwrap_or_default().status;
        let mut conditions = set.manage(&mut status.conditions);
        conditions.initialize();
        if errors.is_empty() {
            conditions.mark_true("SpecValid");
            conditions.mark_true("Greeted");
        } else {
            conditions.mark_false("SpecValid", "InvalidSpec", &errors.to_string());
        }
        status.observed_generation = greeting.metadata.generation;
        greeting.status = Some(GreetingStatus { status });
        self.greetings.replace_status(&greeting).await?;
        Ok(Action::await_change())
    }
}

fn greeting(name: &str, message: &str, replicas: Option<i32>) -> Greeting {
    let mut g = Greeting::new(
        name,
        GreetingSpec {
            message: message.into(),
            replicas,
        },
    );
    g.metadata.namespace = Some("default".into());
    g
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = InMemoryStore::new();
    let greetings: Arc<dyn Objects<Greeting>> = Arc::new(store.objects::<Greeting>());
    greetings
        .create(&greeting("hello", "Hello, world", None))
        .await?;
    greetings.create(&greeting("broken", "", Some(50))).await?;

    let controller = Controller::new(
        Arc::clone(&greetings),
        Arc::new(GreetingReconciler {
            greetings: Arc::clone(&greetings),
        }),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(controller.run(async {
        let _ = stopped.await;
    }));

    // Wait until the controller has observed both objects.
    let observed = |g: &Greeting| {
        g.status
            .as_ref()
            .is_some_and(|s| s.status.observed_generation == g.metadata.generation)
    };
    let all = loop {
        let all = greetings.list(Some("default"), &Default::default()).await?;
        if all.iter().all(observed) {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let _ = stop.send(());
    running.await?;

    for g in &all {
        let status = g.status.clone().unwrap_or_default().status;
        let ready = status.condition("Ready").cloned().unwrap_or_default();
        println!(
            "{:<8} Ready={:<7} {}",
            g.metadata.name.as_deref().unwrap_or(""),
            ready.status,
            ready.message.replace('\n', "; ")
        );
    }
    let set = condition_set();
    let ready: Vec<bool> = all
        .iter()
        .map(|g| set.is_happy(&g.status.clone().unwrap_or_default().status.conditions))
        .collect();
    assert_eq!(ready, [false, true], "broken is not ready, hello is");
    Ok(())
}
