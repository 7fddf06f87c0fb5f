//! Autoscaling: Knative's KPA (`specs/SERVING.md §3`).
//!
//! | module | what it holds |
//! |---|---|
//! | [`autoscaler`] | the control plane's loop: metrics in, a policy per revision, scale out to the backend |
//! | [`config`] | `config-autoscaler` and the `autoscaling.knative.dev/*` annotations |
//! | [`metrics`] | the stable and panic window averages, linear and weighted-exponential (§3.2) |
//! | [`kpa`] | the decider: target resolution (§3.3) and the 2-second tick (§3.4) |
//! | [`pa`] | the PodAutoscaler layer: bounds, scale to zero, activator mode (§3.5) |
//! | [`policy`] | the `ScalingPolicy` trait the control plane drives, and `Kpa`, Knative's policy |
//! | [`sim`] | replays a load trace through any policy: cost, cold starts, waiting, timeline |
//! | `testing` | (feature `testing`) proptest strategies and invariants for any policy |

pub mod autoscaler;
pub mod config;
pub mod kpa;
pub mod metrics;
pub mod pa;
pub mod policy;
pub mod sim;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
