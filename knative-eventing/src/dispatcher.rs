//! The dispatch loop shared by brokers' triggers and channels'
//! subscriptions (`specs/EVENTING.md §1.3`, `§4`): one task per consumer
//! reads the log from its cursor, hands each record to a [`Handler`],
//! keeps a bounded window of deliveries in flight, and commits its cursor
//! up to the first record not yet done, in the background and in batches,
//! so that a restart with a durable log re-delivers only unfinished
//! records.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, warn};

use crate::log::{EventLog, LogError, Offset, Record};

/// A boxed delivery.
pub(crate) type Delivery = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What a consumer does with one record (filter, deliver, reply, dead
/// letter); the dispatcher counts it done when the future ends.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Handles `record`.
    fn handle(self: Arc<Self>, record: Record) -> Delivery;
}

/// A running dispatcher and the sender that re-programs it; dropping it
/// stops the dispatcher. Brokers keep one per trigger, channels one per
/// subscription.
pub(crate) struct Consumer {
    route: watch::Sender<Arc<dyn Handler>>,
    task: JoinHandle<()>,
}

impl Consumer {
    /// Hands `handler` to the running dispatcher `name` in `consumers`, or
    /// starts one with `start` (given the receiver it follows).
    pub(crate) fn program(
        consumers: &mut HashMap<String, Consumer>,
        name: &str,
        handler: Arc<dyn Handler>,
        start: impl FnOnce(watch::Receiver<Arc<dyn Handler>>) -> JoinHandle<()>,
    ) {
        if let Some(existing) = consumers.get(name)
            && !existing.task.is_finished()
        {
            existing.route.send_replace(handler);
            return;
        }
        let (route, rx) = watch::channel(handler);
        let task = start(rx);
        consumers.insert(name.to_owned(), Consumer { route, task });
    }

    /// Stops the dispatcher and waits until it is gone (so that no last
    /// commit brings its cursor back after it is forgotten).
    pub(crate) async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One consumer's dispatcher: reads `log_name` from `consumer`'s cursor,
/// hands every record to the current handler (at most `max_in_flight` at
/// a time, each on a task of its own), and commits the cursor up to the
/// first record not yet handled. Returns when the log, or the handler's
/// sender, is gone.
pub(crate) async fn run(
    log: Arc<dyn EventLog>,
    log_name: String,
    consumer: String,
    max_in_flight: usize,
    mut route: watch::Receiver<Arc<dyn Handler>>,
) {
    let max_in_flight = max_in_flight.max(1);
    // Events read but not yet committed are bounded too: one stuck
    // delivery must not let the window run ahead without limit.
    let max_ahead = (max_in_flight as u64).saturating_mul(4);
    let mut retry = Duration::from_millis(50);
    let (mut end, mut cursor) = loop {
        match (
            log.end(&log_name),
            log.committed(&log_name, &consumer).await,
        ) {
            (Ok(end), Ok(cursor)) => break (end, cursor),
            (Err(LogError::NotFound(_)), _) | (_, Err(LogError::NotFound(_))) => return,
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, ?retry, "cannot open the log; retrying");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(5));
            }
        }
    };
    let mut committed = cursor;
    let mut last_commit = cursor;
    let mut commit: Option<JoinHandle<(Offset, Result<(), LogError>)>> = None;
    let mut done: BTreeSet<Offset> = BTreeSet::new();
    // Each delivery is a task of its own, so that a busy trigger's
    // deliveries spread over every core; the set aborts them when the
    // dispatcher stops. A delivery that panicked still counts as done
    // (by its task id), so the cursor never stalls behind it.
    let mut in_flight: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    let mut offsets: HashMap<tokio::task::Id, Offset> = HashMap::new();
    loop {
        // Fill the window.
        while in_flight.len() < max_in_flight && cursor - committed < max_ahead {
            let room = (max_in_flight - in_flight.len())
                .min(usize::try_from(max_ahead - (cursor - committed)).unwrap_or(usize::MAX));
            let records = match log.read(&log_name, cursor, room).await {
                Ok(r) => r,
                Err(LogError::Discarded { oldest, .. }) => {
                    warn!(
                        from = cursor,
                        oldest, "events were discarded before this trigger read them"
                    );
                    cursor = oldest;
                    if committed < oldest {
                        committed = oldest;
                        done = done.split_off(&committed);
                    }
                    continue;
                }
                Err(LogError::NotFound(_)) => return,
                Err(e) => {
                    warn!(error = %e, ?retry, "reading the log failed; retrying");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(Duration::from_secs(5));
                    break;
                }
            };
            retry = Duration::from_millis(50);
            if records.is_empty() {
                break;
            }
            let current = Arc::clone(&route.borrow_and_update());
            for record in records {
                cursor = record.offset + 1;
                let offset = record.offset;
                let task = in_flight.spawn(Arc::clone(&current).handle(record).in_current_span());
                offsets.insert(task.id(), offset);
            }
        }
        tokio::select! {
            Some(finished) = in_flight.join_next_with_id() => {
                let id = match &finished {
                    Ok((id, _)) => *id,
                    Err(e) => {
                        warn!(error = %e, "a delivery task failed; its event counts as done");
                        e.id()
                    }
                };
                let Some(offset) = offsets.remove(&id) else {
                    continue;
                };
                if offset >= committed {
                    done.insert(offset);
                }
                while done.remove(&committed) {
                    committed += 1;
                }
                // Commit in batches of 64, and whenever the window drains;
                // in the background, one at a time, so that a slow (synced)
                // commit does not hold up deliveries.
                if commit.is_none()
                    && committed > last_commit
                    && (in_flight.is_empty() || committed >= last_commit + 64)
                {
                    commit = Some(spawn_commit(&log, &log_name, &consumer, committed));
                }
            }
            Some(result) = async {
                match commit.as_mut() {
                    Some(task) => Some(task.await),
                    None => None,
                }
            }, if commit.is_some() => {
                commit = None;
                match result {
                    Ok((at, Ok(()))) => last_commit = last_commit.max(at),
                    Ok((_, Err(LogError::NotFound(_)))) => return,
                    Ok((_, Err(e))) => warn!(error = %e, "commit failed; will commit again later"),
                    Err(e) => warn!(error = %e, "the commit task failed; will commit again later"),
                }
                if in_flight.is_empty() && committed > last_commit {
                    commit = Some(spawn_commit(&log, &log_name, &consumer, committed));
                }
            }
            changed = end.changed(), if in_flight.len() < max_in_flight => {
                if changed.is_err() {
                    return;
                }
            }
            changed = route.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Commits `consumer`'s cursor at `at` on a task of its own.
fn spawn_commit(
    log: &Arc<dyn EventLog>,
    log_name: &str,
    consumer: &str,
    at: Offset,
) -> JoinHandle<(Offset, Result<(), LogError>)> {
    let (log, log_name, consumer) = (Arc::clone(log), log_name.to_owned(), consumer.to_owned());
    tokio::spawn(async move { (at, log.commit(&log_name, &consumer, at).await) })
}
