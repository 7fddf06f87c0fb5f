//! [`NatsLog`]: an [`EventLog`] on NATS JetStream, shared by every process
//! connected to the same NATS system.
//!
//! # Which log to choose
//!
//! | log | events survive | shared between processes | use it for |
//! |---|---|---|---|
//! | [`InMemoryLog`] | nothing | no | tests, and brokers whose producers retry anyway |
//! | [`DiskLog`] | a restart, a killed process, a machine crash (fsync per group commit) | no: one process owns the file | the embedded platform (one process, `DESIGN.md` "Two compositions") |
//! | [`NatsLog`] | a restart of the broker *and* of the NATS server; with `replicas: 3`, the loss of a NATS node | yes | brokers running as several replicas (`DESIGN.md`: "NATS JetStream as the shared event log when brokers run in several replicas") |
//!
//! All three give the broker the same guarantee: its ingress answers 202
//! only once [`EventLog::append`] returned (`specs/EVENTING.md §1.3`, and
//! §4: "channel must durably enqueue before acknowledging"), and every
//! trigger gets every event at least once (§4), from its own cursor.
//!
//! # The mapping
//!
//! * **A log is a stream.** Log `ns/b` is stream `KNATIVE_LOG_ns_2Fb` on
//!   subject `knative.log.ns_2Fb` (prefixes in [`NatsLogConfig`]). Stream
//!   names and subject tokens may not hold `.`, `*`, `>`, `/` or white
//!   space, so every byte outside `[A-Za-z0-9-]` (including `_`) is
//!   written `_XX` (upper-case hex): the mapping is reversible and
//!   injective. Names longer than 200 bytes keep a prefix and end with a
//!   64-bit FNV-1a hash of the whole log name. The log's own name is the
//!   stream's description (`knative event log <name>`); [`EventLog::create`]
//!   refuses a stream whose description names another log.
//! * **Offsets are stream sequences minus one.** JetStream numbers a
//!   stream's messages from 1; offsets count from 0. The end of a log (the
//!   offset the next event gets) is thus the stream's last sequence.
//! * **An event is a message in the CloudEvents binary content mode.** The
//!   payload is the event's data, byte for byte; each attribute is a `ce-`
//!   header (`datacontenttype` is `content-type`), its value percent-encoded
//!   as [`crate::binding`] does for HTTP (so any string survives, and other
//!   NATS tools can read the events). What the binary mode would lose is
//!   kept in two more headers, so the event read is the event appended:
//!   `Knative-Log-Data` (`binary`, `string` or `json`: the variant of the
//!   data) and `Knative-Log-Ext-Types` (`name=integer` / `name=boolean` for
//!   extensions that are not strings). Each of [`Entry::headers`] is a
//!   header `Knative-Log-H-<name>` (value percent-encoded). NATS headers
//!   are a map: headers of different names come back sorted by name, the
//!   values of one name in their order.
//! * **A cursor is a durable consumer.** Each (log, consumer) gets one
//!   durable pull consumer (named like streams are, its description the
//!   consumer's name), with `AckPolicy::All` and headers only. Its **ack
//!   floor** is the committed offset: [`EventLog::commit`] to offset `n`
//!   ("done with every event before `n`", i.e. sequences `1..=n`) fetches
//!   the consumer's messages up to sequence `n` (headers only, at most
//!   1024 a request) and acknowledges the last one, which acknowledges all
//!   before it; the acknowledgement waits for the server's confirmation.
//!   A consumer seen for the first time is created with
//!   `DeliverPolicy::New`, so it starts at the log's end, as in
//!   [`InMemoryLog`] (servers report that start as the consumer's
//!   delivered sequence with an ack floor of 0: while nothing delivered
//!   waits for an acknowledgement, the cursor is the larger of the two).
//!   The cursors live in the server (its consumer store), so they survive
//!   restarts of both sides, and a deleted stream takes its consumers
//!   with it. One store, no second source of truth (a KV bucket of
//!   cursors would need its own trimming and clean-up).
//! * **Retention is `Interest`.** The server keeps a message while some
//!   consumer has not acknowledged it, so events every cursor is past are
//!   discarded by the server itself, behind the slowest consumer, as
//!   [`InMemoryLog`] trims; a log without consumers keeps nothing (the
//!   server only numbers the message). `WorkQueue` would be wrong with
//!   several consumers, `Limits` would keep events nobody needs. One gap
//!   is closed by hand: a consumer created after some events "needs" them
//!   on nats-server 2.9 until its first acknowledgement, so a commit (and
//!   a removed consumer) also purges the stream up to the slowest cursor
//!   when the server kept more (a commit at most every 500 ms per log,
//!   or once that much time has passed). On top, [`NatsLogConfig`] sets limits
//!   with `DiscardPolicy::New`: `max_events` (default
//!   [`DEFAULT_CAPACITY`], like [`InMemoryLog`]'s capacity) and
//!   `max_bytes` make a full log refuse appends (the ingress answers 500
//!   and the producer retries) rather than grow without bound behind a
//!   stuck subscriber; `max_age` discards older events even if unread (a
//!   dispatcher then gets [`LogError::Discarded`] and skips them).
//! * **The end is followed from the server.** Each log this `NatsLog` has
//!   touched is followed by an ordered push consumer (headers only,
//!   starting after the known end) whose deliveries carry their stream
//!   sequence, plus a poll of the stream's state every
//!   [`NatsLogConfig::end_poll_interval`] as a safety net (and to notice a
//!   deleted stream, which closes the watch). So an event appended by
//!   *another* process wakes this process's dispatchers: the point of a
//!   shared log. A consumer delivers only stored messages, so a woken
//!   dispatcher finds the event when it reads.
//!
//! # Durability and ordering
//!
//! [`EventLog::append`] publishes every entry, then waits for all their
//! acknowledgements (one round trip for a batch): an acknowledged message
//! is in the stream's store, on a quorum of its replicas when there are
//! several. A single server writes its files without an `fsync` per
//! message (by default), so what survives a graceful restart of the
//! server (tested) may not all survive a crash of its machine: run three
//! replicas where that matters. Entries of one batch get increasing
//! offsets, but appends from concurrent callers may interleave with them;
//! the offset returned is the first entry's own. Every entry is encoded
//! before any is published, but an append that fails part-way (a full
//! log, a lost connection) may have stored its first entries: the
//! producer's retry then duplicates them (delivery is at least once, as
//! `specs/EVENTING.md §5` expects subscribers to tolerate).
//!
//! # Limits
//!
//! * [`EventLog::end`] is synchronous: it knows the logs this `NatsLog`
//!   created, appended to or read (the broker creates its log first), and
//!   answers [`LogError::NotFound`] for others.
//! * Dispatchers read the stream, not their consumer: two processes that
//!   both run a dispatcher for the same trigger both deliver its events.
//!   Run each trigger's dispatcher in one replica (e.g. the leader's);
//!   the ingress can run everywhere.
//! * When events expired (`max_age`) between a cursor and its commit, the
//!   commit may fetch past its target; those messages wait for a
//!   redelivery (after [`NatsLogConfig::ack_wait`]) before a later commit
//!   can move the cursor past them, and a restart meanwhile redelivers
//!   them (at least once).
//! * The stream settings apply when a log's stream is created; changing
//!   [`NatsLogConfig`] does not update existing streams.
//!
//! [`InMemoryLog`]: super::InMemoryLog
//! [`DiskLog`]: super::disk::DiskLog

use std::collections::HashMap;
use std::fmt;
use std::fmt::Write as _;
use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::datetime::DateTime;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, FromConsumer};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use async_trait::async_trait;
use bytes::Bytes;
use cloudevents::event::{AttributeValue, ExtensionValue, SpecVersion};
use cloudevents::message::{BinaryDeserializer, BinarySerializer, MessageAttributeValue};
use cloudevents::{AttributesWriter, Data, Event};
use futures::StreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{Instrument, debug, debug_span};

use super::{DEFAULT_CAPACITY, Entry, EventLog, LogError, Offset, Record};
use crate::binding::{percent_decode_header_value, percent_encode_header_value};

/// How a [`NatsLog`] lays out its streams and consumers.
///
/// The stream settings (`replicas`, `max_*`) apply when a log's stream is
/// created.
#[derive(Clone, Debug)]
pub struct NatsLogConfig {
    /// Replicas of each stream: 1 on a single server, 3 (or 5) in a
    /// cluster for the events to survive the loss of a node.
    pub replicas: usize,
    /// Events older than this are discarded even if a consumer has not
    /// read them. `None`: kept until every consumer is past them.
    pub max_age: Option<Duration>,
    /// At most this many bytes per log; appends beyond fail. `None`: no
    /// limit but the server's.
    pub max_bytes: Option<u64>,
    /// At most this many events per log waiting for some consumer;
    /// appends beyond fail, as beyond [`InMemoryLog`](super::InMemoryLog)'s
    /// capacity. `None`: no limit.
    pub max_events: Option<u64>,
    /// Prefix of stream names: a log's stream is this followed by the
    /// encoded log name. Must be a valid stream name.
    pub stream_prefix: String,
    /// Prefix of subjects: a log's subject is this, a dot and the encoded
    /// log name. Must be a valid subject without wildcards.
    pub subject_prefix: String,
    /// Timeout of JetStream API requests and publish acknowledgements.
    pub request_timeout: Duration,
    /// How often the end of each followed log is also polled (besides the
    /// ordered consumer that follows it as events arrive).
    pub end_poll_interval: Duration,
    /// After how long the server redelivers to a cursor's consumer a
    /// message it fetched but did not acknowledge (see the module docs).
    pub ack_wait: Duration,
}

impl Default for NatsLogConfig {
    fn default() -> Self {
        NatsLogConfig {
            replicas: 1,
            max_age: None,
            max_bytes: None,
            max_events: Some(DEFAULT_CAPACITY as u64),
            stream_prefix: "KNATIVE_LOG_".to_owned(),
            subject_prefix: "knative.log".to_owned(),
            request_timeout: Duration::from_secs(5),
            end_poll_interval: Duration::from_secs(1),
            ack_wait: Duration::from_secs(30),
        }
    }
}

/// An [`EventLog`] on NATS JetStream: one stream per log, one durable
/// consumer per cursor (see the module docs for the mapping). Several
/// processes, each with its own `NatsLog`, can share the same logs.
///
/// Cloning is cheap: clones share the connection and the followed ends.
/// The methods must be called inside a tokio runtime.
#[derive(Clone)]
pub struct NatsLog {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    config: NatsLogConfig,
    /// The logs whose end is followed, by log name.
    follows: Mutex<HashMap<String, Follow>>,
    /// Tells [`Follow`]s apart, so that a follower removes only itself.
    next_follow: AtomicU64,
    /// When each log was last trimmed, and whether a trim waits for its
    /// turn (see [`NatsLog::trim_soon`]).
    trims: Mutex<HashMap<String, TrimState>>,
}

/// The trimming of one log: at most one per [`TRIM_INTERVAL`].
struct TrimState {
    last: std::time::Instant,
    pending: bool,
}

/// Trims of one log are at least this far apart: each lists every cursor
/// (a JetStream API call), and the server's interest retention already
/// drops what every cursor acknowledged, so trimming after every commit
/// only costs.
const TRIM_INTERVAL: Duration = Duration::from_millis(500);

/// The end of one log, followed by a task.
struct Follow {
    id: u64,
    end: watch::Sender<Offset>,
    /// The stream allows direct gets (`allow_direct`).
    direct: bool,
    /// When the stream was created: a stream deleted and created again
    /// (sequences start over) is another log.
    created: DateTime,
    task: tokio::task::AbortHandle,
}

impl Drop for Follow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for NatsLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsLog")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A log's stream and subject.
#[derive(Clone)]
struct Names {
    stream: String,
    subject: String,
}

/// Names longer than this get a hash (JetStream allows 255 bytes).
const MAX_NAME: usize = 200;

/// Messages fetched at a time when a commit moves a cursor.
const FETCH_CHUNK: usize = 1024;

/// Concurrent message gets of one read.
const READ_CONCURRENCY: usize = 256;

/// The header with the variant of the event's data.
const DATA_KIND: &str = "Knative-Log-Data";
/// The header with the types of the extensions that are not strings.
const EXT_TYPES: &str = "Knative-Log-Ext-Types";
/// The prefix of the headers that carry [`Entry::headers`].
const ENTRY_HEADER: &str = "Knative-Log-H-";

impl NatsLog {
    /// Connects to the NATS server(s) at `url` (e.g. `nats://127.0.0.1:4222`
    /// or a comma-separated list). async-nats reconnects by itself when the
    /// connection drops; operations meanwhile wait up to
    /// [`NatsLogConfig::request_timeout`].
    pub async fn connect(
        url: &str,
        config: NatsLogConfig,
    ) -> Result<NatsLog, async_nats::ConnectError> {
        let client = async_nats::ConnectOptions::new()
            .name("knative-eventing")
            .connect(url)
            .await?;
        Ok(NatsLog::from_client(client, config))
    }

    /// A log on an existing connection (for credentials, TLS and other
    /// options, build the client with [`async_nats::ConnectOptions`]).
    pub fn from_client(client: async_nats::Client, config: NatsLogConfig) -> NatsLog {
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client);
        NatsLog {
            inner: Arc::new(Inner {
                js,
                config,
                follows: Mutex::new(HashMap::new()),
                next_follow: AtomicU64::new(0),
                trims: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NatsLogConfig {
        &self.inner.config
    }

    /// The JetStream stream that holds `log`.
    pub fn stream_name(&self, log: &str) -> String {
        self.names(log).stream
    }

    /// The subject `log`'s events are published on.
    pub fn subject(&self, log: &str) -> String {
        self.names(log).subject
    }

    fn names(&self, log: &str) -> Names {
        log_names(&self.inner.config, log)
    }

    /// A JetStream API request: the outer error is the request's, the inner
    /// one the server's answer.
    async fn api<T: DeserializeOwned, P: Serialize + ?Sized>(
        &self,
        log: &str,
        subject: String,
        payload: &P,
        what: &str,
    ) -> Result<Result<T, jetstream::Error>, LogError> {
        match self
            .inner
            .js
            .request::<_, _, Response<T>>(subject, payload)
            .await
        {
            Ok(Response::Ok(value)) => Ok(Ok(value)),
            Ok(Response::Err { error }) => Ok(Err(error)),
            Err(e) => Err(storage(log, what, e)),
        }
    }

    /// The stream of `log`, or `NotFound`.
    async fn stream_info(&self, log: &str, names: &Names) -> Result<stream::Info, LogError> {
        let subject = format!("STREAM.INFO.{}", names.stream);
        match self
            .api::<stream::Info, _>(
                log,
                subject,
                &serde_json::json!({}),
                "cannot get the stream",
            )
            .await?
        {
            Ok(info) => Ok(info),
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Err(LogError::NotFound(log.to_owned()))
            }
            Err(e) => Err(storage(log, "cannot get the stream", e)),
        }
    }

    fn stream_config(&self, log: &str, names: &Names) -> stream::Config {
        let config = &self.inner.config;
        let limit = |v: Option<u64>| v.map_or(-1, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let max_age = config.max_age.unwrap_or_default();
        stream::Config {
            name: names.stream.clone(),
            description: Some(description(log)),
            subjects: vec![names.subject.clone()],
            retention: RetentionPolicy::Interest,
            storage: StorageType::File,
            num_replicas: config.replicas.max(1),
            max_age,
            max_bytes: limit(config.max_bytes),
            max_messages: limit(config.max_events),
            discard: DiscardPolicy::New,
            // The server's default (2 minutes) must not exceed max_age.
            duplicate_window: if max_age.is_zero() {
                Duration::ZERO
            } else {
                max_age.min(Duration::from_secs(120))
            },
            // Direct gets may be answered by a lagging follower: only on
            // a single replica are they as fresh as the leader's answers.
            allow_direct: config.replicas <= 1,
            ..Default::default()
        }
    }

    /// Starts following `log`'s end if this `NatsLog` does not yet (or
    /// follows an older stream of the same name), else moves it forward.
    fn follow(&self, log: &str, names: &Names, info: &stream::Info) {
        let last = info.state.last_sequence;
        let mut follows = self
            .inner
            .follows
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(follow) = follows.get(log)
            && follow.created == info.created
            && !follow.task.is_finished()
        {
            advance(&follow.end, last);
            return;
        }
        let id = self.inner.next_follow.fetch_add(1, Ordering::Relaxed);
        let end = watch::Sender::new(last);
        let task = tokio::spawn(
            follow_end(Follower {
                inner: Arc::downgrade(&self.inner),
                js: self.inner.js.clone(),
                log: log.to_owned(),
                stream: names.stream.clone(),
                end: end.clone(),
                created: info.created,
                id,
                poll: self.inner.config.end_poll_interval,
            })
            .instrument(debug_span!("nats_log.follow", log)),
        )
        .abort_handle();
        // A follow of an older stream goes: its receivers see it closed.
        follows.insert(
            log.to_owned(),
            Follow {
                id,
                end,
                direct: info.config.allow_direct,
                created: info.created,
                task,
            },
        );
    }

    /// The stream's state, read from the server, with `log`'s follow
    /// brought in line with it (a stream created again is followed anew).
    async fn refresh(&self, log: &str, names: &Names) -> Result<stream::Info, LogError> {
        let info = self.stream_info(log, names).await?;
        self.follow(log, names, &info);
        Ok(info)
    }

    /// The end of `log` and whether its stream allows direct gets, when
    /// its end is followed.
    fn followed(&self, log: &str) -> Option<(Offset, bool)> {
        let follows = self
            .inner
            .follows
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        follows
            .get(log)
            .filter(|f| !f.task.is_finished())
            .map(|f| (*f.end.borrow(), f.direct))
    }

    /// Trims `log` now, or once [`TRIM_INTERVAL`] has passed since its
    /// last trim (on a task of its own; one waits at a time).
    async fn trim_soon(&self, log: &str, names: &Names) {
        let wait = {
            let mut trims = self
                .inner
                .trims
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let now = std::time::Instant::now();
            match trims.get_mut(log) {
                Some(state) if now.duration_since(state.last) < TRIM_INTERVAL => {
                    if state.pending {
                        return;
                    }
                    state.pending = true;
                    Some(TRIM_INTERVAL - now.duration_since(state.last))
                }
                Some(state) => {
                    state.last = now;
                    None
                }
                None => {
                    trims.insert(
                        log.to_owned(),
                        TrimState {
                            last: now,
                            pending: false,
                        },
                    );
                    None
                }
            }
        };
        match wait {
            None => {
                if let Err(e) = self.trim(log, names).await {
                    // The commit itself is done; the next one trims again.
                    debug!(error = %e, "cannot trim the log");
                }
            }
            Some(wait) => {
                let (this, log, names) = (self.clone(), log.to_owned(), names.clone());
                tokio::spawn(
                    async move {
                        tokio::time::sleep(wait).await;
                        if let Some(state) = this
                            .inner
                            .trims
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .get_mut(&log)
                        {
                            state.pending = false;
                            state.last = std::time::Instant::now();
                        }
                        if let Err(e) = this.trim(&log, &names).await {
                            debug!(error = %e, "cannot trim the log");
                        }
                    }
                    .instrument(debug_span!("nats_log.trim")),
                );
            }
        }
    }

    /// Moves `log`'s followed end to at least `last` (a sequence just
    /// acknowledged), or starts following it.
    async fn appended(&self, log: &str, names: &Names, last: u64) {
        let followed = {
            let follows = self
                .inner
                .follows
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match follows.get(log) {
                Some(follow) if !follow.task.is_finished() => {
                    advance(&follow.end, last);
                    true
                }
                _ => false,
            }
        };
        if !followed && let Ok(info) = self.stream_info(log, names).await {
            self.follow(log, names, &info);
        }
    }

    fn unfollow(&self, log: &str) {
        let removed = self
            .inner
            .follows
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(log);
        drop(removed);
    }

    /// What a failed publish means: `NotFound` when the stream is gone.
    async fn publish_error(&self, log: &str, names: &Names, e: PublishError) -> LogError {
        if matches!(e.kind(), PublishErrorKind::StreamNotFound) {
            // No responder: no stream, or no JetStream at all.
            return match self.stream_info(log, names).await {
                Err(not_found @ LogError::NotFound(_)) => not_found,
                _ => storage(log, "cannot append", e),
            };
        }
        let api = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<jetstream::Error>());
        if let Some(api) = api {
            if api.error_code() == ErrorCode::STREAM_NOT_FOUND {
                return LogError::NotFound(log.to_owned());
            }
            if api.error_code() == ErrorCode::STREAM_STORE_FAILED
                && api.to_string().contains("maximum")
            {
                return storage(log, &format!("full: {api}"), e);
            }
        }
        storage(log, "cannot append", e)
    }

    async fn append_inner(&self, log: &str, entries: Vec<Entry>) -> Result<Offset, LogError> {
        let names = self.names(log);
        if entries.is_empty() {
            return Ok(self.refresh(log, &names).await?.state.last_sequence);
        }
        // Encode them all first: an event that cannot be encoded stores
        // none of the batch.
        let mut messages = Vec::with_capacity(entries.len());
        for entry in entries {
            messages.push(encode(entry).map_err(|e| LogError::Storage {
                log: log.to_owned(),
                message: format!("cannot encode an event: {e}"),
                source: Some(e.into()),
            })?);
        }
        let mut acks = Vec::with_capacity(messages.len());
        // Publish them all, then wait for the acknowledgements: a batch
        // costs one round trip.
        for (headers, payload) in messages {
            let publish = PublishMessage::build()
                .headers(headers)
                .payload(payload)
                .expected_stream(&names.stream);
            match self
                .inner
                .js
                .send_publish(names.subject.clone(), publish)
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) => return Err(self.publish_error(log, &names, e).await),
            }
        }
        let acked = futures::future::join_all(acks.into_iter().map(IntoFuture::into_future)).await;
        let mut first = None;
        let mut last = 0;
        for ack in acked {
            match ack {
                Ok(ack) => {
                    first.get_or_insert(ack.sequence);
                    last = last.max(ack.sequence);
                }
                Err(e) => return Err(self.publish_error(log, &names, e).await),
            }
        }
        self.appended(log, &names, last).await;
        // Sequences start at 1: the first entry's offset is its sequence - 1.
        Ok(first.unwrap_or(1).saturating_sub(1))
    }

    async fn read_inner(
        &self,
        log: &str,
        from: Offset,
        max: usize,
    ) -> Result<Vec<Record>, LogError> {
        let names = self.names(log);
        // A followed log's end is known without asking the server: a read
        // is then only the gets of its events. A missing first event is
        // told apart from a discarded one below, with the stream's state.
        let (end, direct) = match self.followed(log) {
            Some(known) => known,
            None => {
                let info = self.refresh(log, &names).await?;
                not_discarded(log, from, &info)?;
                (info.state.last_sequence, info.config.allow_direct)
            }
        };
        // Offsets from..from+max are sequences from+1..=from+max.
        let last = end.min(from.saturating_add(max as u64));
        if last <= from {
            return Ok(Vec::new());
        }
        let stream = self
            .inner
            .js
            .get_stream_no_info(&names.stream)
            .await
            .map_err(|e| storage(log, "invalid stream name", e))?;
        let gets = futures::stream::iter(from + 1..=last)
            .map(|sequence| {
                let stream = &stream;
                async move {
                    if direct {
                        match stream.direct_get(sequence).await {
                            Ok(message) => Ok(Some(message)),
                            Err(e) if matches!(e.kind(), stream::DirectGetErrorKind::NotFound) => {
                                Ok(None)
                            }
                            Err(e) => Err(storage(log, "cannot get an event", e)),
                        }
                    } else {
                        match stream.get_raw_message(sequence).await {
                            Ok(message) => Ok(Some(message)),
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    stream::RawMessageErrorKind::NoMessageFound
                                ) =>
                            {
                                Ok(None)
                            }
                            Err(e) => match e.kind() {
                                stream::RawMessageErrorKind::JetStream(api)
                                    if api.error_code() == ErrorCode::NO_MESSAGE_FOUND =>
                                {
                                    Ok(None)
                                }
                                _ => Err(storage(log, "cannot get an event", e)),
                            },
                        }
                    }
                }
            })
            .buffered(READ_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        // A get that failed on a log read through its followed end: the
        // stream may be gone (deleted elsewhere), which the stream's state
        // tells as `NotFound`.
        if gets.iter().any(Result::is_err) {
            self.refresh(log, &names).await?;
        }
        let mut records = Vec::with_capacity(gets.len());
        for (sequence, got) in (from + 1..).zip(gets) {
            let Some(message) = got? else {
                if records.is_empty() {
                    // Discarded since the stream's state was read? (Or the
                    // stream was created again: follow the new one.)
                    not_discarded(log, from, &self.refresh(log, &names).await?)?;
                }
                // A hole (a message deleted by hand): skipped.
                continue;
            };
            let offset = sequence - 1;
            let (event, headers) =
                decode(&message.headers, message.payload).map_err(|e| LogError::Storage {
                    log: log.to_owned(),
                    message: format!("cannot decode the event at offset {offset}: {e}"),
                    source: Some(e.into()),
                })?;
            records.push(Record {
                offset,
                event: Arc::new(event),
                headers: Arc::from(headers),
            });
        }
        Ok(records)
    }

    /// `consumer`'s durable consumer, by name and config.
    fn durable(&self, consumer: &str) -> (String, consumer::Config) {
        let name = bounded_token(consumer, MAX_NAME);
        let config = consumer::Config {
            durable_name: Some(name.clone()),
            name: Some(name.clone()),
            description: Some(consumer.to_owned()),
            deliver_policy: DeliverPolicy::New,
            ack_policy: AckPolicy::All,
            ack_wait: self.inner.config.ack_wait,
            max_deliver: -1,
            max_ack_pending: i64::try_from(FETCH_CHUNK * 16).unwrap_or(i64::MAX),
            headers_only: true,
            ..Default::default()
        };
        (name, config)
    }

    async fn committed_inner(&self, log: &str, consumer: &str) -> Result<Offset, LogError> {
        let names = self.names(log);
        let (name, config) = self.durable(consumer);
        let subject = format!("CONSUMER.INFO.{}.{name}", names.stream);
        let what = "cannot get the cursor";
        let info = match self
            .api::<consumer::Info, _>(log, subject, &serde_json::json!({}), what)
            .await?
        {
            Ok(info) => info,
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                return Err(LogError::NotFound(log.to_owned()));
            }
            Err(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND => {
                // Seen for the first time: it starts at the end.
                #[derive(Serialize)]
                struct Create<'a> {
                    stream_name: &'a str,
                    config: consumer::Config,
                }
                let subject = format!("CONSUMER.CREATE.{}.{name}", names.stream);
                let create = Create {
                    stream_name: &names.stream,
                    config,
                };
                let what = "cannot create the cursor";
                match self
                    .api::<consumer::Info, _>(log, subject, &create, what)
                    .await?
                {
                    Ok(info) => info,
                    Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                        return Err(LogError::NotFound(log.to_owned()));
                    }
                    Err(e) => return Err(storage(log, what, e)),
                }
            }
            Err(e) => return Err(storage(log, what, e)),
        };
        if info.config.description.as_deref() != Some(consumer) {
            return Err(LogError::Storage {
                log: log.to_owned(),
                message: format!(
                    "consumer {name} of stream {} belongs to {:?}, not {consumer:?}",
                    names.stream, info.config.description
                ),
                source: None,
            });
        }
        Ok(cursor_of(&info))
    }

    async fn commit_inner(
        &self,
        log: &str,
        consumer: &str,
        offset: Offset,
    ) -> Result<(), LogError> {
        let names = self.names(log);
        let (name, _) = self.durable(consumer);
        let subject = format!("CONSUMER.INFO.{}.{name}", names.stream);
        let what = "cannot get the cursor";
        let empty = serde_json::json!({});
        let (cursor, info) = tokio::join!(
            self.api::<consumer::Info, _>(log, subject, &empty, what),
            self.stream_info(log, &names)
        );
        let info = info?;
        let cursor = match cursor? {
            Ok(cursor) => cursor,
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                return Err(LogError::NotFound(log.to_owned()));
            }
            // Only registered consumers commit: a consumer removed while
            // its last commit was on its way must not come back.
            Err(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND => {
                return Err(LogError::NotFound(format!("{log}#{consumer}")));
            }
            Err(e) => return Err(storage(log, what, e)),
        };
        let config = consumer::pull::Config::try_from_consumer_config(cursor.config.clone())
            .map_err(|e| LogError::Storage {
                log: log.to_owned(),
                message: format!("consumer {name} is not a cursor: {e}"),
                source: Some(e),
            })?;
        let pull = consumer::Consumer::new(config, cursor.clone(), self.inner.js.clone());
        // Committing offset n acknowledges sequences 1..=n.
        let target = offset.min(info.state.last_sequence);
        let floor = cursor_of(&cursor);
        if target <= floor {
            return Ok(());
        }
        let mut delivered = cursor
            .delivered
            .stream_sequence
            .max(info.state.first_sequence.saturating_sub(1));
        let mut fetches = 0;
        // Messages delivered but not acknowledged (fetched past an earlier
        // target) come back only when due for redelivery: fetching new ones
        // then would not help.
        while delivered < target {
            // Fetch up to the target (plus what is due for redelivery),
            // then acknowledge the last message at or before it.
            let wanted = usize::try_from(target.saturating_sub(delivered))
                .unwrap_or(usize::MAX)
                .clamp(1, FETCH_CHUNK);
            let mut batch = pull
                .fetch()
                .max_messages(wanted)
                .messages()
                .await
                .map_err(|e| storage(log, "cannot move the cursor", e))?;
            let mut best: Option<(u64, jetstream::Message)> = None;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| LogError::Storage {
                    log: log.to_owned(),
                    message: format!("cannot move the cursor: {e}"),
                    source: Some(e),
                })?;
                got += 1;
                let sequence = message
                    .info()
                    .map_err(|e| LogError::Storage {
                        log: log.to_owned(),
                        message: format!("cannot move the cursor: {e}"),
                        source: Some(e),
                    })?
                    .stream_sequence;
                delivered = delivered.max(sequence);
                if sequence <= target && best.as_ref().is_none_or(|(s, _)| sequence > *s) {
                    best = Some((sequence, message));
                }
            }
            if let Some((_, message)) = best {
                message.double_ack().await.map_err(|e| LogError::Storage {
                    log: log.to_owned(),
                    message: format!("cannot move the cursor: {e}"),
                    source: Some(e),
                })?;
            }
            fetches += 1;
            if got == 0 {
                break;
            }
            if fetches > 1 + usize::try_from(target - floor).unwrap_or(usize::MAX) / FETCH_CHUNK {
                debug!(target, delivered, "the cursor waits for redeliveries");
                break;
            }
        }
        if info.state.first_sequence.saturating_sub(1) < target {
            self.trim_soon(log, &names).await;
        }
        Ok(())
    }

    /// Discards the events every cursor of `log` is past. The server does
    /// it by itself (interest retention) as cursors acknowledge, except
    /// for events older than a consumer created after them, which some
    /// servers (2.9) keep until that consumer's first acknowledgement:
    /// a purge up to the slowest cursor drops them (and moves that
    /// consumer's own ack floor up).
    async fn trim(&self, log: &str, names: &Names) -> Result<(), LogError> {
        #[derive(serde::Deserialize)]
        struct Page {
            total: usize,
            #[serde(default)]
            consumers: Option<Vec<consumer::Info>>,
        }
        let what = "cannot list the cursors";
        let mut slowest: Option<u64> = None;
        let mut seen = 0;
        loop {
            let subject = format!("CONSUMER.LIST.{}", names.stream);
            let page = match self
                .api::<Page, _>(log, subject, &serde_json::json!({ "offset": seen }), what)
                .await?
            {
                Ok(page) => page,
                Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                    return Err(LogError::NotFound(log.to_owned()));
                }
                Err(e) => return Err(storage(log, what, e)),
            };
            let consumers = page.consumers.unwrap_or_default();
            if consumers.is_empty() {
                break;
            }
            seen += consumers.len();
            for info in &consumers {
                // Cursors only: the followers of the end (ordered
                // consumers) acknowledge nothing.
                if info.config.durable_name.is_some() && info.config.ack_policy == AckPolicy::All {
                    let cursor = cursor_of(info);
                    slowest = Some(slowest.map_or(cursor, |s| s.min(cursor)));
                }
            }
            if seen >= page.total {
                break;
            }
        }
        let Some(slowest) = slowest else {
            return Ok(());
        };
        let info = self.stream_info(log, names).await?;
        if slowest <= info.state.first_sequence.saturating_sub(1) {
            return Ok(());
        }
        let what = "cannot discard events";
        let subject = format!("STREAM.PURGE.{}", names.stream);
        // Purges the sequences below `seq`: offsets below `slowest`.
        match self
            .api::<serde_json::Value, _>(
                log,
                subject,
                &serde_json::json!({ "seq": slowest + 1 }),
                what,
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Err(LogError::NotFound(log.to_owned()))
            }
            Err(e) => Err(storage(log, what, e)),
        }
    }

    async fn create_inner(&self, log: &str) -> Result<(), LogError> {
        let names = self.names(log);
        let info = match self.stream_info(log, &names).await {
            Ok(info) => info,
            Err(LogError::NotFound(_)) => {
                let subject = format!("STREAM.CREATE.{}", names.stream);
                let config = self.stream_config(log, &names);
                let what = "cannot create the stream";
                match self
                    .api::<stream::Info, _>(log, subject, &config, what)
                    .await?
                {
                    Ok(info) => info,
                    // Created meanwhile by another process.
                    Err(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST => {
                        self.stream_info(log, &names).await?
                    }
                    Err(e) => return Err(storage(log, what, e)),
                }
            }
            Err(e) => return Err(e),
        };
        if info.config.description.as_deref() != Some(description(log).as_str()) {
            return Err(LogError::Storage {
                log: log.to_owned(),
                message: format!(
                    "stream {} exists and is not this log's (its description: {:?})",
                    names.stream, info.config.description
                ),
                source: None,
            });
        }
        self.follow(log, &names, &info);
        Ok(())
    }
}

#[async_trait]
impl EventLog for NatsLog {
    async fn create(&self, log: &str) -> Result<(), LogError> {
        self.create_inner(log)
            .instrument(debug_span!("nats_log.create", log))
            .await
    }

    async fn delete(&self, log: &str) -> Result<(), LogError> {
        let names = self.names(log);
        let subject = format!("STREAM.DELETE.{}", names.stream);
        let what = "cannot delete the stream";
        match self
            .api::<serde_json::Value, _>(log, subject, &serde_json::json!({}), what)
            .instrument(debug_span!("nats_log.delete", log))
            .await?
        {
            Ok(_) => {}
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {}
            Err(e) => return Err(storage(log, what, e)),
        }
        self.unfollow(log);
        self.inner
            .trims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(log);
        Ok(())
    }

    async fn append(&self, log: &str, entries: Vec<Entry>) -> Result<Offset, LogError> {
        let span = debug_span!("nats_log.append", log, events = entries.len());
        self.append_inner(log, entries).instrument(span).await
    }

    async fn read(&self, log: &str, from: Offset, max: usize) -> Result<Vec<Record>, LogError> {
        self.read_inner(log, from, max)
            .instrument(debug_span!("nats_log.read", log, from, max))
            .await
    }

    fn end(&self, log: &str) -> Result<watch::Receiver<Offset>, LogError> {
        let follows = self
            .inner
            .follows
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match follows.get(log) {
            Some(follow) if !follow.task.is_finished() => Ok(follow.end.subscribe()),
            _ => Err(LogError::NotFound(log.to_owned())),
        }
    }

    async fn committed(&self, log: &str, consumer: &str) -> Result<Offset, LogError> {
        self.committed_inner(log, consumer)
            .instrument(debug_span!("nats_log.committed", log, consumer))
            .await
    }

    async fn commit(&self, log: &str, consumer: &str, offset: Offset) -> Result<(), LogError> {
        self.commit_inner(log, consumer, offset)
            .instrument(debug_span!("nats_log.commit", log, consumer, offset))
            .await
    }

    async fn remove_consumer(&self, log: &str, consumer: &str) -> Result<(), LogError> {
        let names = self.names(log);
        let (name, _) = self.durable(consumer);
        let subject = format!("CONSUMER.DELETE.{}.{name}", names.stream);
        let what = "cannot remove the cursor";
        match self
            .api::<serde_json::Value, _>(log, subject, &serde_json::json!({}), what)
            .instrument(debug_span!("nats_log.remove_consumer", log, consumer))
            .await?
        {
            Ok(_) => {}
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                return Err(LogError::NotFound(log.to_owned()));
            }
            Err(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND => return Ok(()),
            Err(e) => return Err(storage(log, what, e)),
        }
        if let Err(e) = self.trim(log, &names).await {
            debug!(error = %e, "cannot trim the log");
        }
        Ok(())
    }
}

/// The stream and subject of `log`.
fn log_names(config: &NatsLogConfig, log: &str) -> Names {
    let token = bounded_token(log, MAX_NAME.saturating_sub(config.stream_prefix.len()));
    Names {
        stream: format!("{}{token}", config.stream_prefix),
        subject: format!("{}.{token}", config.subject_prefix),
    }
}

/// `Discarded` when reading `log` from `from` asks for events the stream
/// (`info`) no longer keeps.
fn not_discarded(log: &str, from: Offset, info: &stream::Info) -> Result<(), LogError> {
    let oldest = oldest_offset(info);
    if from < oldest {
        return Err(LogError::Discarded {
            log: log.to_owned(),
            requested: from,
            oldest,
        });
    }
    Ok(())
}

/// The offset of the oldest event a stream keeps (its end when it keeps
/// none).
fn oldest_offset(info: &stream::Info) -> Offset {
    // An empty stream reports first = last + 1 (or 0 when it never had a
    // message): the oldest offset is then the end.
    info.state.first_sequence.saturating_sub(1)
}

/// Where a cursor's consumer resumes: its ack floor, or what it was
/// delivered when nothing delivered waits for an acknowledgement (a
/// consumer created with `DeliverPolicy::New` reports its start there, and
/// an ack floor of 0, on some servers).
fn cursor_of(info: &consumer::Info) -> Offset {
    let floor = info.ack_floor.stream_sequence;
    if info.num_ack_pending == 0 {
        floor.max(info.delivered.stream_sequence)
    } else {
        floor
    }
}

/// The stream description that names `log`.
fn description(log: &str) -> String {
    format!("knative event log {log}")
}

/// Moves a followed end forward, never back.
fn advance(end: &watch::Sender<Offset>, last: u64) {
    end.send_if_modified(|current| {
        if last > *current {
            *current = last;
            true
        } else {
            false
        }
    });
}

/// What follows one log's end.
struct Follower {
    inner: Weak<Inner>,
    js: jetstream::Context,
    log: String,
    stream: String,
    end: watch::Sender<Offset>,
    created: DateTime,
    id: u64,
    poll: Duration,
}

/// Follows a log's end: an ordered consumer (headers only) from the known
/// end on moves it at every stored message, a poll of the stream's state
/// backs it up and notices a deleted (or re-created) stream, which ends
/// the follow and closes the watch.
async fn follow_end(follower: Follower) {
    let Follower {
        inner,
        js,
        log,
        stream,
        end,
        created,
        id,
        poll,
    } = follower;
    let mut messages: Option<consumer::push::Ordered> = None;
    let mut tick = tokio::time::interval(poll.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if messages.is_none() {
            let start = end.borrow().saturating_add(1);
            match subscribe(&js, &stream, start).await {
                Ok(ordered) => messages = Some(ordered),
                Err(e) => debug!(error = %e, "cannot follow the stream yet"),
            }
        }
        tokio::select! {
            next = async {
                match messages.as_mut() {
                    Some(ordered) => ordered.next().await,
                    None => std::future::pending().await,
                }
            }, if messages.is_some() => match next {
                Some(Ok(message)) => {
                    if let Ok(info) = message.info() {
                        advance(&end, info.stream_sequence);
                    }
                }
                Some(Err(e)) => {
                    debug!(error = %e, "the ordered consumer failed; following again");
                    messages = None;
                }
                None => messages = None,
            },
            _ = tick.tick() => {
                let state: Result<Response<stream::Info>, _> = js
                    .request(format!("STREAM.INFO.{stream}"), &serde_json::json!({}))
                    .await;
                let gone = match state {
                    Ok(Response::Ok(info)) => {
                        advance(&end, info.state.last_sequence);
                        info.created != created
                    }
                    Ok(Response::Err { error }) => {
                        error.error_code() == ErrorCode::STREAM_NOT_FOUND
                    }
                    // The server is away: try again later.
                    Err(_) => false,
                };
                if gone {
                    debug!("the stream is gone");
                    if let Some(inner) = inner.upgrade() {
                        let removed = {
                            let mut follows =
                                inner.follows.lock().unwrap_or_else(PoisonError::into_inner);
                            if follows.get(&log).is_some_and(|f| f.id == id) {
                                follows.remove(&log)
                            } else {
                                None
                            }
                        };
                        drop(removed);
                    }
                    return;
                }
            }
        }
    }
}

/// An ordered consumer of `stream`'s headers from sequence `start` on.
async fn subscribe(
    js: &jetstream::Context,
    stream: &str,
    start: u64,
) -> Result<consumer::push::Ordered, async_nats::Error> {
    let consumer = js
        .create_consumer_on_stream(
            consumer::push::OrderedConfig {
                deliver_subject: js.client().new_inbox(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                headers_only: true,
                ..Default::default()
            },
            stream,
        )
        .await?;
    Ok(consumer.messages().await?)
}

/// Turns an error into [`LogError::Storage`].
fn storage(log: &str, what: &str, e: impl std::error::Error + Send + Sync + 'static) -> LogError {
    LogError::Storage {
        log: log.to_owned(),
        message: format!("{what}: {e}"),
        source: Some(Box::new(e)),
    }
}

/// `name` as a stream name or subject token: bytes outside `[A-Za-z0-9-]`
/// become `_XX`; beyond `max` bytes, a prefix and a hash of `name`.
fn bounded_token(name: &str, max: usize) -> String {
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' {
            token.push(char::from(byte));
        } else {
            let _ = write!(token, "_{byte:02X}");
        }
    }
    if token.len() <= max {
        return token;
    }
    // The token is ASCII: any index is a char boundary.
    let keep = max.saturating_sub(17).min(token.len());
    format!("{}_{:016x}", &token[..keep], fnv1a(name.as_bytes()))
}

/// The 64-bit FNV-1a hash.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Why an event could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CodecError(String);

impl From<cloudevents::message::Error> for CodecError {
    fn from(e: cloudevents::message::Error) -> Self {
        CodecError(e.to_string())
    }
}

fn header(headers: &mut HeaderMap, name: &str, value: &str) -> Result<(), CodecError> {
    let name: HeaderName = name
        .parse()
        .map_err(|e| CodecError(format!("header name {name:?}: {e}")))?;
    let value: HeaderValue = value
        .parse()
        .map_err(|e| CodecError(format!("header {name}: {e}")))?;
    headers.append(name, value);
    Ok(())
}

/// An entry as a message in the CloudEvents binary content mode (see the
/// module docs).
fn encode(entry: Entry) -> Result<(HeaderMap, Bytes), CodecError> {
    let Entry { mut event, headers } = entry;
    let mut out = HeaderMap::new();
    let (content_type, schema, data) = event.take_data();
    event.set_datacontenttype(content_type);
    event.set_dataschema(schema);
    for (name, value) in event.iter_attributes() {
        let text = match value {
            AttributeValue::Time(time) => time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            other => other.to_string(),
        };
        let name = if name == "datacontenttype" {
            "content-type".to_owned()
        } else {
            format!("ce-{name}")
        };
        header(&mut out, &name, &percent_encode_header_value(&text))?;
    }
    let mut types = Vec::new();
    for (name, value) in event.iter_extensions() {
        match value {
            ExtensionValue::String(_) => {}
            ExtensionValue::Integer(_) => types.push(format!("{name}=integer")),
            ExtensionValue::Boolean(_) => types.push(format!("{name}=boolean")),
        }
        header(
            &mut out,
            &format!("ce-{name}"),
            &percent_encode_header_value(&value.to_string()),
        )?;
    }
    if !types.is_empty() {
        types.sort();
        header(&mut out, EXT_TYPES, &types.join(","))?;
    }
    let payload = match data {
        None => Bytes::new(),
        Some(Data::Binary(bytes)) => {
            header(&mut out, DATA_KIND, "binary")?;
            Bytes::from(bytes)
        }
        Some(Data::String(text)) => {
            header(&mut out, DATA_KIND, "string")?;
            Bytes::from(text)
        }
        Some(Data::Json(json)) => {
            header(&mut out, DATA_KIND, "json")?;
            Bytes::from(serde_json::to_vec(&json).map_err(|e| CodecError(e.to_string()))?)
        }
    };
    for (name, value) in headers {
        header(
            &mut out,
            &format!("{ENTRY_HEADER}{name}"),
            &percent_encode_header_value(&value),
        )?;
    }
    Ok((out, payload))
}

/// A stored message, read back as an event through the SDK's binary-mode
/// builder (which parses `time`, `dataschema` and the spec version's
/// attribute names).
struct Stored {
    spec: SpecVersion,
    attributes: Vec<(String, String)>,
    extensions: Vec<(String, MessageAttributeValue)>,
    data: Option<Vec<u8>>,
}

impl BinaryDeserializer for Stored {
    fn deserialize_binary<R: Sized, V: BinarySerializer<R>>(
        self,
        serializer: V,
    ) -> cloudevents::message::Result<R> {
        let mut serializer = serializer.set_spec_version(self.spec)?;
        for (name, value) in self.attributes {
            serializer = serializer.set_attribute(&name, MessageAttributeValue::String(value))?;
        }
        for (name, value) in self.extensions {
            serializer = serializer.set_extension(&name, value)?;
        }
        match self.data {
            Some(bytes) => serializer.end_with_data(bytes),
            None => serializer.end(),
        }
    }
}

/// The inverse of [`encode`].
fn decode(
    headers: &HeaderMap,
    payload: Bytes,
) -> Result<(Event, Vec<(String, String)>), CodecError> {
    let text = |value: &HeaderValue| {
        percent_decode_header_value(value.as_str()).map_err(|e| CodecError(e.to_string()))
    };
    let mut spec = None;
    let mut ce = Vec::new();
    let mut entry_headers: Vec<(String, Vec<String>)> = Vec::new();
    let mut kind = None;
    let mut types = HashMap::new();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        let Some(first) = values.first() else {
            continue;
        };
        if let Some(attribute) = name.strip_prefix("ce-") {
            if attribute == "specversion" {
                spec = Some(
                    SpecVersion::try_from(text(first)?.as_str())
                        .map_err(|e| CodecError(e.to_string()))?,
                );
            } else {
                ce.push((attribute.to_owned(), text(first)?));
            }
        } else if name == "content-type" {
            ce.push(("datacontenttype".to_owned(), text(first)?));
        } else if name == DATA_KIND {
            kind = Some(first.as_str().to_owned());
        } else if name == EXT_TYPES {
            for pair in first.as_str().split(',') {
                if let Some((ext, ty)) = pair.split_once('=') {
                    types.insert(ext.to_owned(), ty.to_owned());
                }
            }
        } else if let Some(entry) = name.strip_prefix(ENTRY_HEADER) {
            let values = values.iter().map(text).collect::<Result<Vec<_>, _>>()?;
            entry_headers.push((entry.to_owned(), values));
        }
    }
    let spec = spec.ok_or_else(|| CodecError("no ce-specversion header".to_owned()))?;
    let mut attributes = Vec::new();
    let mut extensions = Vec::new();
    for (name, value) in ce {
        if spec.attribute_names().contains(&name.as_str()) {
            attributes.push((name, value));
        } else {
            let value = match types.get(&name).map(String::as_str) {
                Some("integer") => MessageAttributeValue::Integer(
                    value
                        .parse()
                        .map_err(|e| CodecError(format!("extension {name}: {e}")))?,
                ),
                Some("boolean") => MessageAttributeValue::Boolean(
                    value
                        .parse()
                        .map_err(|e| CodecError(format!("extension {name}: {e}")))?,
                ),
                _ => MessageAttributeValue::String(value),
            };
            extensions.push((name, value));
        }
    }
    let stored = Stored {
        spec,
        attributes,
        extensions,
        data: kind.is_some().then(|| payload.to_vec()),
    };
    let mut event = BinaryDeserializer::into_event(stored)?;
    match kind.as_deref() {
        None | Some("binary") => {}
        Some(kind) => {
            let (content_type, schema, _) = event.take_data();
            event.set_datacontenttype(content_type);
            event.set_dataschema(schema);
            match kind {
                "string" => {
                    let text = String::from_utf8(payload.to_vec())
                        .map_err(|e| CodecError(e.to_string()))?;
                    event.set_data_unchecked(text);
                }
                "json" => {
                    let json: serde_json::Value =
                        serde_json::from_slice(&payload).map_err(|e| CodecError(e.to_string()))?;
                    event.set_data_unchecked(json);
                }
                other => return Err(CodecError(format!("unknown data kind {other:?}"))),
            }
        }
    }
    entry_headers.sort_by(|a, b| a.0.cmp(&b.0));
    let headers = entry_headers
        .into_iter()
        .flat_map(|(name, values)| values.into_iter().map(move |v| (name.clone(), v)))
        .collect();
    Ok((event, headers))
}

#[cfg(test)]
mod tests {
    use cloudevents::{EventBuilder, EventBuilderV03, EventBuilderV10};
    use serde_json::json;

    use super::*;

    fn rich(i: u64) -> Entry {
        let builder = EventBuilderV10::new()
            .id(format!("id-{i}"))
            .ty("dev.knative.test")
            .source(format!("/sources/{} with space é", i % 7))
            .subject(format!("subject {i}\t%"))
            .time("2024-05-06T07:08:09.123456789Z")
            .extension("seq", i as i64)
            .extension("even", i.is_multiple_of(2))
            .extension("label", format!("l{i}"));
        let event = match i % 5 {
            0 => builder.build(),
            1 => builder
                .data("application/json", json!({"n": i, "f": 1.5, "s": "x"}))
                .build(),
            2 => builder
                .data(
                    "application/json",
                    format!("{{ \"n\" : {i} }}").into_bytes(),
                )
                .build(),
            3 => builder
                .data("application/json", format!("text {i}"))
                .build(),
            _ => builder
                .data_with_schema(
                    "application/octet-stream",
                    "https://example.com/schema",
                    vec![0u8, 159, 146, 150, (i % 256) as u8],
                )
                .build(),
        }
        .expect("event");
        Entry {
            event,
            headers: vec![
                ("knative-foo".to_owned(), "bar".to_owned()),
                ("x-b3-traceid".to_owned(), "a\r\nb".to_owned()),
                ("x-request-id".to_owned(), format!("req {i}")),
                ("x-request-id".to_owned(), "second".to_owned()),
            ],
        }
    }

    #[test]
    fn events_and_headers_round_trip_exactly() {
        let v03 = EventBuilderV03::new()
            .id("old")
            .ty("t")
            .source("/s")
            .data("text/plain", "hello")
            .build()
            .expect("event");
        let entries = (0..10).map(rich).chain([Entry::from(v03)]);
        for entry in entries {
            let (headers, payload) = encode(entry.clone()).expect("encodes");
            let (event, extra) = decode(&headers, payload).expect("decodes");
            assert_eq!(event, entry.event);
            assert_eq!(extra, entry.headers, "sorted by name already");
        }
    }

    #[test]
    fn the_binary_mode_is_readable_by_other_tools() {
        let (headers, payload) = encode(rich(1)).expect("encodes");
        assert_eq!(headers.get("ce-id").map(HeaderValue::as_str), Some("id-1"));
        assert_eq!(
            headers.get("ce-source").map(HeaderValue::as_str),
            Some("/sources/1%20with%20space%20%C3%A9")
        );
        assert_eq!(
            headers.get("content-type").map(HeaderValue::as_str),
            Some("application/json")
        );
        assert_eq!(headers.get("ce-seq").map(HeaderValue::as_str), Some("1"));
        let json: serde_json::Value = serde_json::from_slice(&payload).expect("json");
        assert_eq!(json["n"], 1);
    }

    #[test]
    fn a_broken_message_is_an_error_not_a_panic() {
        let mut headers = HeaderMap::new();
        assert!(decode(&headers, Bytes::new()).is_err(), "no specversion");
        headers.insert("ce-specversion", "1.0");
        headers.insert("ce-id", "x");
        headers.insert("ce-source", "/s");
        headers.insert("ce-type", "t");
        headers.insert("ce-time", "yesterday");
        assert!(decode(&headers, Bytes::new()).is_err(), "bad time");
        headers.insert("ce-time", "2024-05-06T07:08:09Z");
        headers.insert("ce-n", "x");
        headers.insert(EXT_TYPES, "n=integer");
        assert!(decode(&headers, Bytes::new()).is_err(), "bad integer");
        headers.insert("ce-n", "%zz");
        assert!(decode(&headers, Bytes::new()).is_err(), "bad escape");
        headers.insert("ce-n", "7");
        headers.insert(DATA_KIND, "string");
        assert!(
            decode(&headers, Bytes::from_static(&[0xff])).is_err(),
            "not UTF-8"
        );
        headers.insert(DATA_KIND, "json");
        assert!(decode(&headers, Bytes::from_static(b"{")).is_err());
        headers.insert(DATA_KIND, "what");
        assert!(decode(&headers, Bytes::from_static(b"{}")).is_err());
        headers.insert(DATA_KIND, "binary");
        let (event, _) = decode(&headers, Bytes::from_static(b"{}")).expect("fine");
        assert_eq!(event.extension("n"), Some(&ExtensionValue::Integer(7)));
    }

    #[test]
    fn names_are_valid_injective_and_bounded() {
        let config = NatsLogConfig::default();
        let stream = |log: &str| log_names(&config, log).stream;
        assert_eq!(stream("ns/b"), "KNATIVE_LOG_ns_2Fb");
        assert_eq!(log_names(&config, "ns/b").subject, "knative.log.ns_2Fb");
        assert_eq!(stream("a.b_c d*>"), "KNATIVE_LOG_a_2Eb_5Fc_20d_2A_3E");
        assert_ne!(stream("a_2Fb"), stream("a/b"));
        let long = "n".repeat(300);
        let other = format!("{}m", "n".repeat(299));
        let (a, b) = (stream(&long), stream(&other));
        assert!(a.len() <= MAX_NAME && b.len() <= MAX_NAME, "{a}");
        assert!(a.starts_with("KNATIVE_LOG_nnn"), "{a}");
        assert_ne!(a, b);
        assert_eq!(bounded_token("trigger/t", MAX_NAME), "trigger_2Ft");
    }
}
