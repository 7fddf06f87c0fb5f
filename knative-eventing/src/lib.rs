//! # knative-eventing
//!
//! Knative Eventing as a library: CloudEvents routed through brokers to
//! filtered subscribers, with retries, dead letters and reply events
//! (`specs/EVENTING.md` is the behaviour it implements).
//!
//! | module | what it holds |
//! |---|---|
//! | [`api`] | `eventing.knative.dev/v1` Broker and Trigger, `messaging.knative.dev/v1` Channel, InMemoryChannel and Subscription, `flows.knative.dev/v1` Sequence and Parallel, `sources.knative.dev/v1` PingSource, ApiServerSource, ContainerSource and SinkBinding, and the duck types `Destination`, `KReference`, `DeliverySpec` (§1, §4–§6) |
//! | [`binding`] | the CloudEvents HTTP binding: binary, structured and batch, with percent-encoded headers (§7, §10) |
//! | [`cesql`] | CESQL v1: parser, type checker and evaluator (§3) |
//! | [`filter`] | trigger filters: the legacy attribute map and every Subscriptions API dialect (§2) |
//! | [`log`] | the `EventLog` between ingress and dispatch: in memory, durable on disk (`log::disk::DiskLog`), and shared on NATS JetStream (`log::nats::NatsLog`) |
//! | [`delivery`] | retries, backoff, `Retry-After`, replies and dead letters (§5) |
//! | [`ping`] | PingSource cron schedules in IANA zones, the ping event, the `K_SINK`/`K_CE_OVERRIDES` adapter environment (§6) |
//! | [`broker`] | the broker data path: ingress `POST /{namespace}/{broker}` and per-trigger dispatchers (§1.3–§1.5) |
//! | [`channel`] | the channel data path: ingress `POST /{namespace}/{channel}` and per-subscription dispatchers (§4) |
//! | [`reconciler`] | the reconcilers of every kind but ApiServerSource: status, address and destination resolution, children of flows, data-plane programming, PingSource schedules, SinkBinding and ContainerSource through platform traits (§1, §4, §6) |

pub mod api;
pub mod binding;
pub mod broker;
pub mod cesql;
pub mod channel;
pub mod delivery;
mod dispatcher;
pub mod filter;
pub mod log;
pub mod ping;
pub mod reconciler;
