//! # knative-eventing
//!
//! Knative Eventing as a library: CloudEvents routed through brokers and
//! channels to filtered subscribers, with durable storage and delivery
//! guarantees.
//!
//! This crate is being built; today it holds only this description of what
//! it will contain (`specs/EVENTING.md` is the behaviour it implements):
//!
//! - `api`: Broker, Trigger, Channel, Subscription, Sequence, Parallel and the
//!   sources (`eventing`, `messaging`, `flows`, `sources.knative.dev/v1`).
//! - `binding`: the CloudEvents HTTP binding (binary, structured, batch) over
//!   `cloudevents-sdk`, with the percent-encoding it lacks (§7, §10).
//! - `filter` and `cesql`: every trigger filter dialect and CESQL v1 (§2–§3).
//! - `delivery`: retries with backoff, timeouts and dead letters (§5).
//! - `log`: the `EventLog` trait with durable embedded and NATS JetStream
//!   implementations.
