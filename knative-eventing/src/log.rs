//! [`EventLog`]: where a broker's (or channel's) events wait between the
//! ingress and the dispatchers that deliver them.
//!
//! The ingress answers 202 only once [`EventLog::append`] returned, so an
//! accepted event is as safe as the log makes it. Each consumer (one per
//! trigger or subscription) reads from its own cursor and commits how far
//! it got; events every consumer committed past may be discarded. A
//! consumer seen for the first time starts at the end of the log: a new
//! trigger gets the events that arrive after it, as upstream's do.
//!
//! [`InMemoryLog`] keeps events in memory; [`disk::DiskLog`] keeps them in
//! one file (redb, every append synced before it returns) and survives a
//! restart or a killed process with its cursors; [`nats::NatsLog`] (feature
//! `nats`, on by default) keeps them in NATS JetStream, shared by every
//! broker replica connected to it. The `nats` module docs compare the three.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cloudevents::Event;
use tokio::sync::watch;

/// A position in a log: the n-th event ever appended (from 0).
pub type Offset = u64;

/// One event to append, with the HTTP headers that travel with it
/// (`x-request-id`, `knative-*`, `x-b3-*`: see `specs/EVENTING.md §1.3`).
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The event.
    pub event: Event,
    /// Headers to pass on to subscribers, as (lower-case name, value).
    pub headers: Vec<(String, String)>,
}

impl From<Event> for Entry {
    fn from(event: Event) -> Self {
        Entry {
            event,
            headers: Vec::new(),
        }
    }
}

/// One event read from a log.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Its position.
    pub offset: Offset,
    /// The event (shared between the consumers that read it).
    pub event: Arc<Event>,
    /// The headers that travel with it.
    pub headers: Arc<[(String, String)]>,
}

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log does not exist (e.g. its broker was deleted).
    #[error("event log {0:?} does not exist")]
    NotFound(String),
    /// Events before `requested` were discarded.
    #[error("event log {log:?}: offset {requested} was discarded (the oldest kept is {oldest})")]
    Discarded {
        /// The log.
        log: String,
        /// The offset asked for.
        requested: Offset,
        /// The oldest offset still kept.
        oldest: Offset,
    },
    /// The storage failed.
    #[error("event log {log:?}: {message}")]
    Storage {
        /// The log.
        log: String,
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// Durable storage of events between ingress and delivery.
#[async_trait]
pub trait EventLog: Send + Sync {
    /// Creates the log `log` if it does not exist.
    async fn create(&self, log: &str) -> Result<(), LogError>;

    /// Deletes `log` and its cursors.
    async fn delete(&self, log: &str) -> Result<(), LogError>;

    /// Appends `entries` in order and returns the offset of the first.
    /// When this returns, they are as durable as the log makes them.
    async fn append(&self, log: &str, entries: Vec<Entry>) -> Result<Offset, LogError>;

    /// Up to `max` events from offset `from` on (fewer, or none, at the end).
    async fn read(&self, log: &str, from: Offset, max: usize) -> Result<Vec<Record>, LogError>;

    /// Follows the log's end: the offset the next appended event gets.
    fn end(&self, log: &str) -> Result<watch::Receiver<Offset>, LogError>;

    /// Where `consumer` resumes: the offset it committed, or the log's end
    /// for a consumer seen for the first time (which is then registered).
    async fn committed(&self, log: &str, consumer: &str) -> Result<Offset, LogError>;

    /// Records that `consumer` is done with every event before `offset`.
    /// `consumer` must have been registered by [`EventLog::committed`].
    async fn commit(&self, log: &str, consumer: &str, offset: Offset) -> Result<(), LogError>;

    /// Forgets `consumer` (its trigger was deleted).
    async fn remove_consumer(&self, log: &str, consumer: &str) -> Result<(), LogError>;
}

/// The headers kept with an event.
type Headers = Arc<[(String, String)]>;

struct Stream {
    /// Offset of `events[0]`.
    base: Offset,
    events: VecDeque<(Arc<Event>, Headers)>,
    end: watch::Sender<Offset>,
    cursors: HashMap<String, Offset>,
}

impl Stream {
    fn next(&self) -> Offset {
        self.base + self.events.len() as u64
    }

    /// Drops events every consumer is past (all of them when there is no
    /// consumer: nobody would ever read them).
    fn trim(&mut self) {
        let keep_from = self.cursors.values().copied().min().unwrap_or(self.next());
        while self.base < keep_from && self.events.pop_front().is_some() {
            self.base += 1;
        }
    }
}

/// How many events an [`InMemoryLog`] keeps per log by default.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// An [`EventLog`] in memory: fast, and lost with the process. Each log
/// keeps at most its capacity of events that some consumer has not
/// committed yet; appends beyond it fail (the ingress answers 500, so the
/// producer retries later) instead of growing without bound behind a
/// stuck subscriber.
#[derive(Clone)]
pub struct InMemoryLog {
    streams: Arc<Mutex<HashMap<String, Stream>>>,
    capacity: usize,
}

impl Default for InMemoryLog {
    fn default() -> Self {
        InMemoryLog::with_capacity(DEFAULT_CAPACITY)
    }
}

impl std::fmt::Debug for InMemoryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryLog").finish_non_exhaustive()
    }
}

impl InMemoryLog {
    /// An empty log store keeping up to [`DEFAULT_CAPACITY`] events per log.
    pub fn new() -> Self {
        InMemoryLog::default()
    }

    /// An empty log store keeping up to `capacity` events per log.
    pub fn with_capacity(capacity: usize) -> Self {
        InMemoryLog {
            streams: Arc::new(Mutex::new(HashMap::new())),
            capacity: capacity.max(1),
        }
    }

    fn with<T>(
        &self,
        log: &str,
        f: impl FnOnce(&mut Stream) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        match streams.get_mut(log) {
            Some(stream) => f(stream),
            None => Err(LogError::NotFound(log.to_owned())),
        }
    }

    /// Events currently kept in `log` (after trimming).
    pub fn len(&self, log: &str) -> usize {
        self.with(log, |s| Ok(s.events.len())).unwrap_or(0)
    }

    /// Whether `log` keeps no event.
    pub fn is_empty(&self, log: &str) -> bool {
        self.len(log) == 0
    }
}

#[async_trait]
impl EventLog for InMemoryLog {
    async fn create(&self, log: &str) -> Result<(), LogError> {
        let mut streams = self.streams.lock().unwrap_or_else(PoisonError::into_inner);
        streams.entry(log.to_owned()).or_insert_with(|| Stream {
            base: 0,
            events: VecDeque::new(),
            end: watch::channel(0).0,
            cursors: HashMap::new(),
        });
        Ok(())
    }

    async fn delete(&self, log: &str) -> Result<(), LogError> {
        self.streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(log);
        Ok(())
    }

    async fn append(&self, log: &str, events: Vec<Entry>) -> Result<Offset, LogError> {
        let capacity = self.capacity;
        self.with(log, |s| {
            if s.events.len() + events.len() > capacity {
                return Err(LogError::Storage {
                    log: log.to_owned(),
                    message: format!(
                        "full: {} events wait for a slow consumer (capacity {capacity})",
                        s.events.len()
                    ),
                    source: None,
                });
            }
            let first = s.next();
            s.events.extend(
                events
                    .into_iter()
                    .map(|e| (Arc::new(e.event), Arc::from(e.headers))),
            );
            let next = s.next();
            s.end.send_replace(next);
            if s.cursors.is_empty() {
                s.trim();
            }
            Ok(first)
        })
    }

    async fn read(&self, log: &str, from: Offset, max: usize) -> Result<Vec<Record>, LogError> {
        self.with(log, |s| {
            if from < s.base {
                return Err(LogError::Discarded {
                    log: log.to_owned(),
                    requested: from,
                    oldest: s.base,
                });
            }
            let start = usize::try_from(from - s.base)
                .unwrap_or(usize::MAX)
                .min(s.events.len());
            Ok(s.events
                .range(start..)
                .take(max)
                .enumerate()
                .map(|(i, (event, headers))| Record {
                    offset: from + i as u64,
                    event: Arc::clone(event),
                    headers: Arc::clone(headers),
                })
                .collect())
        })
    }

    fn end(&self, log: &str) -> Result<watch::Receiver<Offset>, LogError> {
        self.with(log, |s| Ok(s.end.subscribe()))
    }

    async fn committed(&self, log: &str, consumer: &str) -> Result<Offset, LogError> {
        self.with(log, |s| {
            let next = s.next();
            Ok(*s.cursors.entry(consumer.to_owned()).or_insert(next))
        })
    }

    async fn commit(&self, log: &str, consumer: &str, offset: Offset) -> Result<(), LogError> {
        self.with(log, |s| {
            let offset = offset.min(s.next());
            // Only registered consumers commit: a consumer removed while
            // its last commit was on its way must not come back.
            let Some(cursor) = s.cursors.get_mut(consumer) else {
                return Err(LogError::NotFound(format!("{log}#{consumer}")));
            };
            *cursor = (*cursor).max(offset);
            s.trim();
            Ok(())
        })
    }

    async fn remove_consumer(&self, log: &str, consumer: &str) -> Result<(), LogError> {
        self.with(log, |s| {
            s.cursors.remove(consumer);
            s.trim();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV10};

    use super::*;

    fn entry(id: &str) -> Entry {
        event(id).into()
    }

    fn event(id: &str) -> Event {
        EventBuilderV10::new()
            .id(id)
            .ty("t")
            .source("/s")
            .build()
            .expect("event")
    }

    #[tokio::test]
    async fn consumers_read_from_their_cursor_and_trim_behind_the_slowest() {
        let log = InMemoryLog::new();
        log.create("ns/b").await.expect("created");
        // Consumers registered before the events see all of them.
        assert_eq!(log.committed("ns/b", "t1").await.expect("cursor"), 0);
        assert_eq!(log.committed("ns/b", "t2").await.expect("cursor"), 0);
        let first = log
            .append("ns/b", vec![entry("1"), entry("2"), entry("3")])
            .await
            .expect("appended");
        assert_eq!(first, 0);
        assert_eq!(*log.end("ns/b").expect("end").borrow(), 3);
        let records = log.read("ns/b", 1, 10).await.expect("read");
        assert_eq!(
            records.iter().map(|r| r.event.id()).collect::<Vec<_>>(),
            ["2", "3"]
        );
        log.commit("ns/b", "t1", 3).await.expect("commit");
        assert_eq!(log.len("ns/b"), 3, "t2 has not read anything");
        log.commit("ns/b", "t2", 2).await.expect("commit");
        assert_eq!(log.len("ns/b"), 1);
        assert!(matches!(
            log.read("ns/b", 0, 1).await,
            Err(LogError::Discarded { oldest: 2, .. })
        ));
        // A consumer seen later starts at the end.
        assert_eq!(log.committed("ns/b", "t3").await.expect("cursor"), 3);
        // A removed consumer cannot commit itself back.
        log.remove_consumer("ns/b", "t3").await.expect("removed");
        assert!(log.commit("ns/b", "t3", 3).await.is_err());
    }

    #[tokio::test]
    async fn a_full_log_refuses_appends_until_consumers_catch_up() {
        let log = InMemoryLog::with_capacity(2);
        log.create("l").await.expect("created");
        log.committed("l", "c").await.expect("registered");
        log.append("l", vec![entry("1"), entry("2")])
            .await
            .expect("fits");
        let err = log.append("l", vec![entry("3")]).await.expect_err("full");
        assert!(err.to_string().contains("full"), "{err}");
        log.commit("l", "c", 2).await.expect("commit");
        log.append("l", vec![entry("3")]).await.expect("room again");
    }

    #[tokio::test]
    async fn an_unknown_log_is_not_found() {
        let log = InMemoryLog::new();
        assert!(matches!(
            log.append("nope", vec![entry("1")]).await,
            Err(LogError::NotFound(_))
        ));
    }
}

pub mod disk;
#[cfg(feature = "nats")]
pub mod nats;
