//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several
//! operator replicas exactly one reconciles (issue 9 §4, `specs/BUILD.md §3`:
//! kube-runtime 5 has no lease module, so this is the small own loop it
//! suggests, with client-go's rules).
//!
//! - A replica **acquires** the Lease when it does not exist (create), has
//!   no holder (released), or has expired; it **renews** it every
//!   [`renew_interval`](LeaseConfig::renew_interval) (2 s) by writing
//!   `renewTime`, and the Lease lasts
//!   [`lease_duration`](LeaseConfig::lease_duration) (15 s) after a renewal.
//! - Every write carries the `resourceVersion` just read, so of two
//!   replicas racing for the Lease one gets a 409 Conflict and stays a
//!   follower.
//! - Expiry is judged the clock-skew-safe way client-go does: a Lease has
//!   expired when this replica has seen the same record, unchanged, for the
//!   lease duration on its own monotonic clock; a record whose `renewTime`
//!   is older than the lease duration plus
//!   [`max_clock_skew`](LeaseConfig::max_clock_skew) by the wall clock is
//!   expired at once (a holder long gone).
//! - A leader **steps down** on the first renewal that fails (an error, a
//!   conflict, the Lease taken) or that does not finish before
//!   [`renew_deadline`](LeaseConfig::renew_deadline) after the last good
//!   one: its work is told to stop and given at most the time left on its
//!   Lease, so two replicas never both reconcile.
//! - On shutdown a leader releases the Lease (empty holder) so a standby
//!   takes over at once.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's name, e.g. `knative-operator`.
    pub name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// This replica's identity, written to `holderIdentity` (the pod name).
    pub identity: String,
    /// How long a Lease lasts after its last renewal (15 s).
    pub lease_duration: Duration,
    /// How often the leader renews (2 s).
    pub renew_interval: Duration,
    /// How long after the last good renewal a leader gives up (10 s); must
    /// be less than `lease_duration`.
    pub renew_deadline: Duration,
    /// How often a follower tries to acquire (2 s).
    pub retry_interval: Duration,
    /// How far the holder's clock may be behind ours before a stale
    /// `renewTime` counts as expired at once (5 s).
    pub max_clock_skew: Duration,
}

impl LeaseConfig {
    /// The defaults for `namespace/name`, held as `identity`.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        LeaseConfig {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(2),
            renew_deadline: Duration::from_secs(10),
            retry_interval: Duration::from_secs(2),
            max_clock_skew: Duration::from_secs(5),
        }
    }
}

/// What one acquire-or-renew attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the Lease (it just acquired or renewed it).
    Leading,
    /// Another replica holds it (`holder`), or won the race for it.
    Following {
        /// The holder seen, if any.
        holder: Option<String>,
    },
}

/// Why leading ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Shutdown was asked for (the Lease was released).
    Shutdown,
    /// The Lease could not be renewed; the work was stopped.
    Lost(String),
    /// The work ended on its own (the Lease was released).
    Finished,
}

/// Why a Lease request failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The API server refused or could not be reached.
    #[error("lease {lease}: {source}")]
    Api {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

/// A leader's term: cloneable; [`ended`](Term::ended) completes when the
/// leader must stop working (leadership lost or shutdown).
#[derive(Clone, Debug)]
pub struct Term(watch::Receiver<bool>);

impl Term {
    /// Completes when the term is over.
    pub async fn ended(mut self) {
        let _ = self.0.wait_for(|over| *over).await;
    }

    /// Whether the term is over.
    pub fn is_over(&self) -> bool {
        *self.0.borrow()
    }
}

/// The last Lease record seen and when (on our monotonic clock).
struct Observed {
    resource_version: Option<String>,
    since: Instant,
}

/// Competes for a Lease and runs work while holding it (see the
/// [module docs](self)).
pub struct LeaderElector {
    leases: Api<Lease>,
    config: LeaseConfig,
    observed: Mutex<Option<Observed>>,
    leading: watch::Sender<bool>,
}

impl std::fmt::Debug for LeaderElector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaderElector {
    /// An elector for the Lease `config` names.
    pub fn new(client: Client, config: LeaseConfig) -> Self {
        LeaderElector {
            leases: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(None),
            leading: watch::channel(false).0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Whether this replica leads now (for readiness and metrics).
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Follows [`is_leading`](Self::is_leading) as it changes.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    fn api_error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            lease: format!("{}/{}", self.config.namespace, self.config.name),
            source,
        }
    }

    /// How long this replica has seen `lease` unchanged.
    fn observe(&self, lease: &Lease) -> Duration {
        let mut observed = self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rv = lease.metadata.resource_version.clone();
        match observed.as_ref() {
            Some(o) if o.resource_version == rv => o.since.elapsed(),
            _ => {
                *observed = Some(Observed {
                    resource_version: rv,
                    since: Instant::now(),
                });
                Duration::ZERO
            }
        }
    }

    /// Whether a Lease held by another replica has expired.
    fn expired(&self, spec: &LeaseSpec, unchanged_for: Duration) -> bool {
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.lease_duration, Duration::from_secs);
        if unchanged_for >= duration {
            return true;
        }
        let Some(renewed) = spec.renew_time.as_ref() else {
            return true;
        };
        let stale_after = duration + self.config.max_clock_skew;
        let age = jiff::Timestamp::now().duration_since(renewed.0);
        age.is_positive() && age.unsigned_abs() > stale_after
    }

    fn spec_for_us(&self, now: jiff::Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: i32::try_from(self.config.lease_duration.as_secs()).ok(),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }
    }

    /// One attempt to acquire the Lease or, if held, renew it.
    #[tracing::instrument(level = "debug", skip(self), fields(lease = %self.config.name, identity = %self.config.identity))]
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, LeaderError> {
        let now = jiff::Timestamp::now();
        let name = self.config.name.as_str();
        let current = self
            .leases
            .get_opt(name)
            .await
            .map_err(|e| self.api_error(e))?;
        let Some(lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec_for_us(now)),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Leading)
                }
                Err(e) if is_conflict(&e) => Ok(Attempt::Following { holder: None }),
                Err(e) => Err(self.api_error(e)),
            };
        };
        let unchanged_for = self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        if !ours && holder.is_some() && !self.expired(&spec, unchanged_for) {
            return Ok(Attempt::Following { holder });
        }
        let mut next = lease.clone();
        let mut new_spec = self.spec_for_us(now);
        if ours {
            new_spec.acquire_time = spec.acquire_time.clone();
            new_spec.lease_transitions = spec.lease_transitions;
        } else {
            new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        next.spec = Some(new_spec);
        match self
            .leases
            .replace(name, &PostParams::default(), &next)
            .await
        {
            Ok(stored) => {
                self.observe(&stored);
                if !ours {
                    tracing::info!(previous = ?holder, "acquired the lease");
                }
                Ok(Attempt::Leading)
            }
            Err(e) if is_conflict(&e) => Ok(Attempt::Following { holder }),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Gives the Lease up if this replica holds it: no holder, a 1 s
    /// duration, so that another replica acquires it at once.
    #[tracing::instrument(level = "debug", skip(self), fields(lease = %self.config.name))]
    pub async fn release(&self) -> Result<(), LeaderError> {
        let name = self.config.name.as_str();
        let Some(mut lease) = self
            .leases
            .get_opt(name)
            .await
            .map_err(|e| self.api_error(e))?
        else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        let now = jiff::Timestamp::now();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(now));
        lease.spec = Some(spec);
        match self
            .leases
            .replace(name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else already has it: nothing to release.
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(self.api_error(e)),
        }
    }

    /// Renews every `renew_interval` until a renewal fails; returns why and
    /// when the last good renewal was.
    async fn keep_renewing(&self, mut last_renewal: Instant) -> (String, Instant) {
        loop {
            tokio::time::sleep(self.config.renew_interval).await;
            let deadline = last_renewal + self.config.renew_deadline;
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => last_renewal = Instant::now(),
                Ok(Ok(Attempt::Following { holder })) => {
                    let holder = holder.unwrap_or_else(|| "another replica".into());
                    return (format!("the lease is held by {holder}"), last_renewal);
                }
                Ok(Err(e)) => return (format!("renewing failed: {e}"), last_renewal),
                Err(_) => {
                    return (
                        "no renewal succeeded before the renew deadline".into(),
                        last_renewal,
                    );
                }
            }
        }
    }

    /// Waits until this replica leads (or `shutdown` completes), then runs
    /// `lead` with its [`Term`] while renewing the Lease. Returns when
    /// shutdown is asked for, the Lease is lost, or the work ends; in every
    /// case the work has been told to stop and has finished or been dropped
    /// (after a grace period no longer than what is left on the Lease).
    pub async fn run<F, W>(&self, shutdown: impl Future<Output = ()>, lead: F) -> Outcome
    where
        F: FnOnce(Term) -> W,
        W: Future<Output = ()>,
    {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    // An attempt cut short may still have won the Lease.
                    if let Err(e) = self.release().await {
                        tracing::warn!(error = %e, "could not release the lease");
                    }
                    return Outcome::Shutdown;
                }
                attempt = self.try_acquire_or_renew() => match attempt {
                    Ok(Attempt::Leading) => break,
                    Ok(Attempt::Following { holder }) => {
                        tracing::debug!(?holder, "following");
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot acquire the lease"),
                },
            }
            tokio::select! {
                () = &mut shutdown => return Outcome::Shutdown,
                () = tokio::time::sleep(self.config.retry_interval) => {}
            }
        }
        tracing::info!(identity = %self.config.identity, "leading");
        self.leading.send_replace(true);
        let (stop, term) = watch::channel(false);
        let work = lead(Term(term));
        tokio::pin!(work);
        let renewing = self.keep_renewing(Instant::now());
        tokio::pin!(renewing);
        let (outcome, grace) = tokio::select! {
            () = &mut work => (Outcome::Finished, Duration::ZERO),
            () = &mut shutdown => (Outcome::Shutdown, self.config.renew_deadline),
            (reason, last) = &mut renewing => {
                // Others may take over once our Lease runs out: stop well before.
                let left = (last + self.config.lease_duration).saturating_duration_since(Instant::now());
                (Outcome::Lost(reason), left / 2)
            }
        };
        self.leading.send_replace(false);
        stop.send_replace(true);
        if outcome != Outcome::Finished && tokio::time::timeout(grace, &mut work).await.is_err() {
            tracing::warn!("the work did not stop in time; dropping it");
        }
        match &outcome {
            Outcome::Lost(reason) => tracing::error!(%reason, "lost the lease; stepped down"),
            Outcome::Shutdown | Outcome::Finished => {
                if let Err(e) = self.release().await {
                    tracing::warn!(error = %e, "could not release the lease");
                }
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests;
