//! [`DiskLog`]: an [`EventLog`] in one database file, kept by the embedded
//! [`redb`] key-value store.
//!
//! Why redb: a pure-Rust, well-maintained embedded store with ACID write
//! transactions that are synced to disk before `commit` returns, crash
//! recovery on open, one file, and ordered keys (so a log is a key range
//! and trimming is a range delete) — what a durable event log needs,
//! without a hand-rolled file format or a C dependency.
//!
//! Four tables hold everything:
//!
//! - `logs`: log name → (oldest kept offset, next offset);
//! - `events.v2`: (log name, offset) → the time it was appended, the
//!   encoded event and its headers;
//! - `cursors`: (log name, consumer) → the offset the consumer resumes at;
//! - `sizes`: log name → the bytes of the events it keeps.
//!
//! The newest events of each log (up to 16 Ki) are also kept decoded in
//! memory as they are appended, so that dispatchers that keep up read
//! them without a read transaction or decoding; cursor commits are
//! written without a sync of their own (redb's `Durability::None`: the
//! next append's sync carries them), since a commit lost in a crash only
//! means re-delivery.
//!
//! Events go when every consumer is past them; with a [`Retention`], also
//! when they are older than its maximum age (the writer thread sweeps
//! them) or when the log holds more than its maximum bytes (the oldest go
//! at the append that overflows).
//!
//! Every change is one write transaction, committed with redb's default
//! durability (the file is fsync'd before the commit returns): when
//! [`EventLog::append`] returns, its events survive a crash of the process
//! or of the machine. Concurrent appends are grouped into one transaction
//! (group commit), so many producers share each sync. The semantics are [`InMemoryLog`]'s (capacity,
//! cursors, trimming behind the slowest consumer, `Discarded`), so the two
//! are interchangeable.
//!
//! [`InMemoryLog`]: super::InMemoryLog

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cloudevents::{AttributesWriter, Data, Event};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{DEFAULT_CAPACITY, Entry, EventLog, LogError, Offset, Record};

/// Log name → (oldest kept offset, next offset).
const LOGS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("logs");
/// (log name, offset) → encoded event (see [`encode`]), after the time it
/// was appended.
const EVENTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("events.v2");
/// Log name → bytes of the events it keeps (for [`Retention::max_bytes`]).
const SIZES: TableDefinition<&str, u64> = TableDefinition::new("sizes");
/// (log name, consumer) → the offset the consumer resumes at.
const CURSORS: TableDefinition<(&str, &str), u64> = TableDefinition::new("cursors");

/// The page cache redb keeps in memory (its own default is 1 GiB).
const CACHE_SIZE: usize = 64 * 1024 * 1024;

/// How long a [`DiskLog`] keeps events that consumers have not committed
/// yet. Without retention (the default) an event stays until every
/// consumer is past it, and a full log (see [`DiskLogConfig::capacity`])
/// refuses appends: nothing accepted is ever dropped. With retention, the
/// oldest events go when they are older than `max_age`, or when the log
/// holds more than `max_bytes`, read or not (as a JetStream stream with
/// limits does): a consumer that falls that far behind skips them, and its
/// dispatcher logs how many it lost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Events older than this (since their append) are discarded.
    pub max_age: Option<std::time::Duration>,
    /// The bytes of stored events a log keeps at most; the oldest go
    /// first. An append larger than this by itself is refused.
    pub max_bytes: Option<u64>,
}

/// How a [`DiskLog`] is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLogConfig {
    /// Events a log keeps at most that some consumer has not committed;
    /// appends beyond it fail (the ingress answers 500 and the producer
    /// retries later).
    pub capacity: usize,
    /// Age and size limits (none by default).
    pub retention: Retention,
}

impl Default for DiskLogConfig {
    fn default() -> Self {
        DiskLogConfig {
            capacity: DEFAULT_CAPACITY,
            retention: Retention::default(),
        }
    }
}

/// An [`EventLog`] in a database file: what [`EventLog::append`] accepted
/// survives restarts and crashes. Like [`InMemoryLog`](super::InMemoryLog),
/// each log keeps at most its capacity of events that some consumer has
/// not committed yet, and appends beyond it fail.
///
/// Appends are written by one writer thread that takes every append
/// queued meanwhile into the same transaction and syncs once (group
/// commit): each append still returns only after its events are on disk,
/// and concurrent producers share the sync. Cloning is cheap: clones share
/// the open database; the thread stops with the last clone. Other disk
/// work runs on tokio's blocking threads, so the methods must be called
/// inside a tokio runtime.
#[derive(Clone)]
pub struct DiskLog {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    capacity: usize,
    retention: Retention,
    /// One sender per existing log, following its next offset. Changed only
    /// with `writer` held, right after the transaction that moved the end.
    ends: Mutex<HashMap<String, watch::Sender<Offset>>>,
    /// Held from the start of a write transaction until `ends` reflects it,
    /// so the watch channels see the commits in order.
    writer: Mutex<()>,
    /// The queue of the group-commit writer thread.
    appends: Mutex<std::sync::mpsc::Sender<AppendRequest>>,
    /// The latest events of each log, decoded, so that dispatchers keeping
    /// up with the producers read them from memory (see [`Tail`]).
    tails: Mutex<HashMap<String, Tail>>,
}

/// An event kept in a [`Tail`], with its headers.
type TailRecord = (Arc<Event>, Arc<[(String, String)]>);

/// Events each log keeps decoded in memory, at most.
const TAIL_MAX: usize = 16 * 1024;

/// The newest events of a log as they were appended, shared by the
/// dispatchers that read them soon after (the usual case): no read
/// transaction, no decoding. Offsets below `floor` were trimmed or
/// discarded on disk and are never served from here.
#[derive(Default)]
struct Tail {
    floor: Offset,
    records: std::collections::BTreeMap<Offset, TailRecord>,
}

thread_local! {
    /// The new oldest offsets a write transaction gave logs, applied to
    /// their tails once it committed.
    static NEW_BASES: std::cell::RefCell<Vec<(String, Offset)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Notes that `log`'s oldest kept offset becomes `base` in the current
/// write transaction.
fn note_base(log: &str, base: Offset) {
    NEW_BASES.with(|b| b.borrow_mut().push((log.to_owned(), base)));
}

impl Inner {
    /// Forgets the bases noted by a transaction that did not commit.
    fn drop_noted_bases(&self) {
        NEW_BASES.with(|b| b.borrow_mut().clear());
    }

    /// Raises the tails' floors to the bases a committed transaction
    /// noted, dropping what is below.
    fn apply_noted_bases(&self) {
        let noted = NEW_BASES.with(|b| std::mem::take(&mut *b.borrow_mut()));
        if noted.is_empty() {
            return;
        }
        let mut tails = self.tails.lock().unwrap_or_else(PoisonError::into_inner);
        for (log, base) in noted {
            let tail = tails.entry(log).or_default();
            if base > tail.floor {
                tail.floor = base;
                tail.records = tail.records.split_off(&base);
            }
        }
    }
}

impl fmt::Debug for DiskLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiskLog")
            .field("path", &self.inner.path)
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}

/// What a write transaction does to a log's end once committed.
enum EndUpdate {
    /// Nothing.
    None,
    /// The log exists, ending at this offset if it was not followed yet.
    Ensure(Offset),
    /// The log is gone: its receivers see the sender closed.
    Remove,
}

/// The result of a write transaction's body.
struct Written<T> {
    value: T,
    /// Whether it changed anything (else it is aborted, sparing a sync).
    dirty: bool,
    end: EndUpdate,
}

impl DiskLog {
    /// Opens the database at `path`, creating it if needed, keeping up to
    /// [`DEFAULT_CAPACITY`] events per log. This does blocking I/O (and
    /// repairs the file after a crash): call it before starting the
    /// runtime or through `spawn_blocking`. A file can be open in one
    /// `DiskLog` at a time; opening it again fails.
    pub fn open(path: impl AsRef<Path>) -> Result<DiskLog, LogError> {
        DiskLog::open_with_capacity(path, DEFAULT_CAPACITY)
    }

    /// Like [`DiskLog::open`], keeping up to `capacity` events per log.
    pub fn open_with_capacity(
        path: impl AsRef<Path>,
        capacity: usize,
    ) -> Result<DiskLog, LogError> {
        DiskLog::open_with(
            path,
            DiskLogConfig {
                capacity,
                ..DiskLogConfig::default()
            },
        )
    }

    /// Like [`DiskLog::open`], with a capacity and retention limits.
    pub fn open_with(path: impl AsRef<Path>, config: DiskLogConfig) -> Result<DiskLog, LogError> {
        let capacity = config.capacity;
        let path = path.as_ref().to_path_buf();
        let name = path.display().to_string();
        let db = Database::builder()
            .set_cache_size(CACHE_SIZE)
            .create(&path)
            .ctx(&name, "cannot open the database")?;
        // Create the tables, so that read transactions find them.
        let txn = db.begin_write().ctx(&name, "cannot begin a transaction")?;
        let mut ends = HashMap::new();
        {
            txn.open_table(EVENTS).ctx(&name, "cannot open events")?;
            txn.open_table(CURSORS).ctx(&name, "cannot open cursors")?;
            txn.open_table(SIZES).ctx(&name, "cannot open sizes")?;
            let logs = txn.open_table(LOGS).ctx(&name, "cannot open logs")?;
            for row in logs.iter().ctx(&name, "cannot list logs")? {
                let (log, meta) = row.ctx(&name, "cannot list logs")?;
                let (_, next) = meta.value();
                ends.insert(log.value().to_owned(), watch::channel(next).0);
            }
        }
        txn.commit().ctx(&name, "cannot commit")?;
        let (appends, queue) = std::sync::mpsc::channel();
        let inner = Arc::new(Inner {
            db,
            path,
            capacity: capacity.max(1),
            retention: config.retention,
            ends: Mutex::new(ends),
            writer: Mutex::new(()),
            appends: Mutex::new(appends),
            tails: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("disklog-writer".to_owned())
            .spawn(move || append_writer(weak, queue))
            .ctx(&name, "cannot start the writer thread")?;
        Ok(DiskLog { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Events currently kept in `log` (after trimming).
    pub async fn len(&self, log: &str) -> Result<u64, LogError> {
        self.blocking(log, |inner, log| {
            let txn = inner.db.begin_read().ctx(log, "cannot begin a read")?;
            let logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
            let (base, next) = meta(&logs, log)?;
            Ok(next - base)
        })
        .await
    }

    /// Bytes of the events currently kept in `log`.
    pub async fn size(&self, log: &str) -> Result<u64, LogError> {
        self.blocking(log, |inner, log| {
            let txn = inner.db.begin_read().ctx(log, "cannot begin a read")?;
            let logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
            meta(&logs, log)?;
            let sizes = txn.open_table(SIZES).ctx(log, "cannot open sizes")?;
            Ok(sizes
                .get(log)
                .ctx(log, "cannot read a size")?
                .map_or(0, |v| v.value()))
        })
        .await
    }

    /// Runs `f` on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        log: &str,
        f: impl FnOnce(&Inner, &str) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let inner = Arc::clone(&self.inner);
        let name = log.to_owned();
        tokio::task::spawn_blocking(move || f(&inner, &name))
            .await
            .ctx(log, "the storage task failed")?
    }

    /// Runs `f` in a write transaction on a blocking thread, commits it
    /// and then applies its [`EndUpdate`].
    async fn write<T: Send + 'static>(
        &self,
        log: &str,
        f: impl FnOnce(&WriteTransaction, &str) -> Result<Written<T>, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        self.write_with(log, redb::Durability::Immediate, f).await
    }

    /// [`DiskLog::write`] with the given durability: cursor commits use
    /// [`redb::Durability::None`] (synced by the next append's commit, or
    /// lost in a crash, which only re-delivers: at-least-once), so they do
    /// not cost a sync each.
    async fn write_with<T: Send + 'static>(
        &self,
        log: &str,
        durability: redb::Durability,
        f: impl FnOnce(&WriteTransaction, &str) -> Result<Written<T>, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        self.blocking(log, move |inner, log| {
            let _writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let mut txn = inner
                .db
                .begin_write()
                .ctx(log, "cannot begin a transaction")?;
            txn.set_durability(durability);
            inner.drop_noted_bases();
            let written = match f(&txn, log) {
                Ok(written) => written,
                Err(e) => {
                    inner.drop_noted_bases();
                    return Err(e);
                }
            };
            if written.dirty {
                if let Err(e) = txn.commit().ctx(log, "cannot commit") {
                    inner.drop_noted_bases();
                    return Err(e);
                }
                inner.apply_noted_bases();
            } else {
                inner.drop_noted_bases();
                txn.abort().ctx(log, "cannot abort")?;
            }
            let mut ends = inner.ends.lock().unwrap_or_else(PoisonError::into_inner);
            match written.end {
                EndUpdate::None => {}
                EndUpdate::Ensure(next) => {
                    ends.entry(log.to_owned())
                        .or_insert_with(|| watch::channel(next).0);
                }
                EndUpdate::Remove => {
                    ends.remove(log);
                    inner
                        .tails
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(log);
                }
            }
            Ok(written.value)
        })
        .await
    }
}

/// One queued append.
struct AppendRequest {
    log: String,
    entries: Vec<Vec<u8>>,
    /// The same events decoded, for the log's [`Tail`] once committed.
    decoded: Vec<TailRecord>,
    reply: tokio::sync::oneshot::Sender<Result<Offset, LogError>>,
}

/// Appends at most this many requests in one transaction.
const GROUP_COMMIT_MAX: usize = 1024;

/// The writer thread: takes the queued appends, writes all of them in one
/// transaction and syncs once (group commit), then answers each. Concurrent
/// producers thus share the cost of a sync. Stops when the last `DiskLog`
/// clone is gone.
fn append_writer(inner: std::sync::Weak<Inner>, queue: std::sync::mpsc::Receiver<AppendRequest>) {
    // With a maximum age, the writer also sweeps expired events, a tenth
    // of the age apart (10 ms to 1 s).
    let sweep_every = inner
        .upgrade()
        .and_then(|i| i.retention.max_age)
        .map(|age| {
            (age / 10).clamp(
                std::time::Duration::from_millis(10),
                std::time::Duration::from_secs(1),
            )
        });
    let mut last_sweep = std::time::Instant::now();
    loop {
        let first = match sweep_every {
            None => match queue.recv() {
                Ok(first) => first,
                Err(_) => return,
            },
            Some(every) => {
                let wait = every.saturating_sub(last_sweep.elapsed());
                match queue.recv_timeout(wait) {
                    Ok(first) => first,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                        let Some(strong) = inner.upgrade() else {
                            return;
                        };
                        sweep(&strong);
                        last_sweep = std::time::Instant::now();
                        continue;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        let mut batch = vec![first];
        while batch.len() < GROUP_COMMIT_MAX {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let Some(strong) = inner.upgrade() else {
            for request in batch {
                let _ = request.reply.send(Err(LogError::Storage {
                    log: request.log,
                    message: "the log was closed".to_owned(),
                    source: None,
                }));
            }
            return;
        };
        let replies = write_batch(&strong, batch);
        if sweep_every.is_some_and(|every| last_sweep.elapsed() >= every) {
            sweep(&strong);
            last_sweep = std::time::Instant::now();
        }
        // Let go of the database before answering: a caller that drops its
        // `DiskLog` right after its append must be able to reopen the file.
        drop(strong);
        for (reply, outcome) in replies {
            let _ = reply.send(outcome);
        }
    }
}

/// Discards, in every log, the events older than the retention's
/// maximum age (one transaction; nothing is synced when nothing expired).
fn sweep(inner: &Inner) {
    let Some(max_age) = inner.retention.max_age else {
        return;
    };
    let name = inner.path.display().to_string();
    let _writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
    let oldest_kept =
        now_ms().saturating_sub(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
    let result = (|| -> Result<(), LogError> {
        let txn = inner
            .db
            .begin_write()
            .ctx(&name, "cannot begin a transaction")?;
        let logs: Vec<(String, (u64, u64))> = {
            let table = txn.open_table(LOGS).ctx(&name, "cannot open logs")?;
            let mut logs = Vec::new();
            for row in table.iter().ctx(&name, "cannot list logs")? {
                let (log, meta) = row.ctx(&name, "cannot list logs")?;
                logs.push((log.value().to_owned(), meta.value()));
            }
            logs
        };
        let mut dirty = false;
        for (log, (base, next)) in logs {
            let (new_base, _) =
                discard_front(&txn, &log, base, next, |stamp, _| stamp >= oldest_kept)?;
            if new_base != base {
                tracing::debug!(log, discarded = new_base - base, "events expired");
                dirty = true;
            }
        }
        if dirty {
            txn.commit().ctx(&name, "cannot commit")?;
            inner.apply_noted_bases();
            Ok(())
        } else {
            txn.abort().ctx(&name, "cannot abort")
        }
    })();
    inner.drop_noted_bases();
    if let Err(e) = result {
        tracing::warn!(error = %e, "discarding expired events failed; will try again");
    }
}

/// Discards the oldest events of `log` until `keep(stamp, bytes)` holds
/// for the oldest one left, whatever the cursors; returns the new oldest
/// offset and the bytes freed.
fn discard_front(
    txn: &WriteTransaction,
    log: &str,
    base: Offset,
    next: Offset,
    mut keep: impl FnMut(u64, u64) -> bool,
) -> Result<(Offset, u64), LogError> {
    let mut new_base = base;
    let mut freed = 0u64;
    {
        let events = txn.open_table(EVENTS).ctx(log, "cannot open events")?;
        for row in events
            .range((log, base)..(log, next))
            .ctx(log, "cannot read events")?
        {
            let (key, value) = row.ctx(log, "cannot read an event")?;
            let value = value.value();
            let len = value.len() as u64;
            if keep(stamp(value), len) {
                break;
            }
            new_base = key.value().1 + 1;
            freed += len;
        }
    }
    if new_base == base {
        return Ok((base, 0));
    }
    let mut events = txn.open_table(EVENTS).ctx(log, "cannot open events")?;
    events
        .retain_in((log, base)..(log, new_base), |_, _| false)
        .ctx(log, "cannot discard events")?;
    let mut logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
    logs.insert(log, (new_base, next))
        .ctx(log, "cannot write the log")?;
    note_base(log, new_base);
    add_size(txn, log, -i128::from(freed))?;
    Ok((new_base, freed))
}

/// Adds `delta` to the bytes `log` keeps (floor 0).
fn add_size(txn: &WriteTransaction, log: &str, delta: i128) -> Result<u64, LogError> {
    let mut sizes = txn.open_table(SIZES).ctx(log, "cannot open sizes")?;
    let current = sizes
        .get(log)
        .ctx(log, "cannot read a size")?
        .map_or(0, |v| v.value());
    let updated = u64::try_from((i128::from(current) + delta).max(0)).unwrap_or(u64::MAX);
    sizes.insert(log, updated).ctx(log, "cannot write a size")?;
    Ok(updated)
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The append time stored before an encoded event.
fn stamp(value: &[u8]) -> u64 {
    value
        .first_chunk::<8>()
        .map_or(0, |b| u64::from_le_bytes(*b))
}

/// An answer to send once the batch is done.
type Reply = (
    tokio::sync::oneshot::Sender<Result<Offset, LogError>>,
    Result<Offset, LogError>,
);

fn write_batch(inner: &Inner, mut batch: Vec<AppendRequest>) -> Vec<Reply> {
    let _writer = inner.writer.lock().unwrap_or_else(PoisonError::into_inner);
    let name = inner.path.display().to_string();
    let fail_all = |batch: Vec<AppendRequest>, error: &LogError| -> Vec<Reply> {
        batch
            .into_iter()
            .map(|request| {
                let outcome = Err(LogError::Storage {
                    log: request.log,
                    message: error.to_string(),
                    source: None,
                });
                (request.reply, outcome)
            })
            .collect()
    };
    let txn = match inner
        .db
        .begin_write()
        .ctx(&name, "cannot begin a transaction")
    {
        Ok(txn) => txn,
        Err(e) => return fail_all(batch, &e),
    };
    inner.drop_noted_bases();
    // Each request's outcome, and each log's end after the batch.
    let mut outcomes: Vec<Result<Offset, LogError>> = Vec::with_capacity(batch.len());
    let mut ends: HashMap<String, Offset> = HashMap::new();
    let mut dirty = false;
    for request in &batch {
        let outcome = append_in(
            &txn,
            &request.log,
            &request.entries,
            inner.capacity,
            inner.retention.max_bytes,
        );
        if let Ok((first, next, wrote)) = &outcome {
            ends.insert(request.log.clone(), *next);
            dirty |= *wrote || first != next;
        }
        outcomes.push(outcome.map(|(first, _, _)| first));
    }
    let committed = if dirty {
        txn.commit().ctx(&name, "cannot commit")
    } else {
        txn.abort().ctx(&name, "cannot abort")
    };
    if let Err(e) = committed {
        inner.drop_noted_bases();
        return fail_all(batch, &e);
    }
    inner.apply_noted_bases();
    // The committed events join their logs' tails before the ends move:
    // a dispatcher woken by the new end then reads them from memory, not
    // from the file.
    {
        let mut tails = inner.tails.lock().unwrap_or_else(PoisonError::into_inner);
        for (request, outcome) in batch.iter_mut().zip(&outcomes) {
            let Ok(first) = outcome else { continue };
            let decoded = std::mem::take(&mut request.decoded);
            let tail = tails.entry(request.log.clone()).or_default();
            for (offset, record) in (*first..).zip(decoded) {
                if offset >= tail.floor {
                    tail.records.insert(offset, record);
                }
            }
            while tail.records.len() > TAIL_MAX {
                tail.records.pop_first();
            }
        }
    }
    {
        let mut senders = inner.ends.lock().unwrap_or_else(PoisonError::into_inner);
        for (log, next) in ends {
            senders
                .entry(log)
                .or_insert_with(|| watch::channel(next).0)
                .send_replace(next);
        }
    }
    batch
        .into_iter()
        .zip(outcomes)
        .map(|(request, outcome)| (request.reply, outcome))
        .collect()
}

/// One append inside the batch's transaction: `(first, next, wrote events)`.
fn append_in(
    txn: &WriteTransaction,
    log: &str,
    entries: &[Vec<u8>],
    capacity: usize,
    max_bytes: Option<u64>,
) -> Result<(Offset, Offset, bool), LogError> {
    let mut logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
    let (base, first) = meta(&logs, log)?;
    let kept = first - base;
    let count = entries.len() as u64;
    let bytes: u64 = entries.iter().map(|e| e.len() as u64).sum();
    if let Some(max) = max_bytes
        && bytes > max
    {
        return Err(LogError::Storage {
            log: log.to_owned(),
            message: format!("{bytes} bytes of events are more than the log keeps ({max} bytes)"),
            source: None,
        });
    }
    if kept.saturating_add(count) > capacity as u64 {
        return Err(LogError::Storage {
            log: log.to_owned(),
            message: format!("full: {kept} events wait for a slow consumer (capacity {capacity})"),
            source: None,
        });
    }
    let next = first + count;
    let consumers = {
        let cursors = txn.open_table(CURSORS).ctx(log, "cannot open cursors")?;
        !cursors_of(&cursors, log)?.is_empty()
    };
    if consumers {
        let mut events = txn.open_table(EVENTS).ctx(log, "cannot open events")?;
        for (offset, bytes) in (first..).zip(entries) {
            events
                .insert((log, offset), bytes.as_slice())
                .ctx(log, "cannot write an event")?;
        }
        logs.insert(log, (base, next))
            .ctx(log, "cannot write the log")?;
        drop(logs);
        drop(events);
        let size = add_size(txn, log, i128::from(bytes))?;
        if let Some(max) = max_bytes
            && size > max
        {
            // The oldest go until the log fits again.
            let mut over = size - max;
            discard_front(txn, log, base, next, |_, len| {
                if over == 0 {
                    return true;
                }
                over = over.saturating_sub(len);
                false
            })?;
        }
    } else {
        // Nobody would ever read them: InMemoryLog trims them at once, so
        // they are not even written.
        logs.insert(log, (next, next))
            .ctx(log, "cannot write the log")?;
        note_base(log, next);
    }
    Ok((first, next, count > 0))
}

/// `log`'s (oldest kept, next) offsets, or `NotFound`.
fn meta(
    logs: &impl ReadableTable<&'static str, (u64, u64)>,
    log: &str,
) -> Result<(u64, u64), LogError> {
    match logs.get(log).ctx(log, "cannot read the log")? {
        Some(meta) => Ok(meta.value()),
        None => Err(LogError::NotFound(log.to_owned())),
    }
}

/// The cursors of `log`, as (consumer, offset).
fn cursors_of(
    cursors: &impl ReadableTable<(&'static str, &'static str), u64>,
    log: &str,
) -> Result<Vec<(String, Offset)>, LogError> {
    let mut found = Vec::new();
    for row in cursors.range((log, "")..).ctx(log, "cannot read cursors")? {
        let (key, offset) = row.ctx(log, "cannot read cursors")?;
        let (l, consumer) = key.value();
        if l != log {
            break;
        }
        found.push((consumer.to_owned(), offset.value()));
    }
    Ok(found)
}

/// Drops the events of `log` every consumer is past (all of them when
/// there is no consumer), as `InMemoryLog` does, and returns the new
/// oldest kept offset.
fn trim(txn: &WriteTransaction, log: &str, base: Offset, next: Offset) -> Result<Offset, LogError> {
    let cursors = txn.open_table(CURSORS).ctx(log, "cannot open cursors")?;
    let keep_from = cursors_of(&cursors, log)?
        .into_iter()
        .map(|(_, offset)| offset)
        .min()
        .unwrap_or(next)
        .min(next);
    if base >= keep_from {
        return Ok(base);
    }
    let mut freed = 0u64;
    let mut events = txn.open_table(EVENTS).ctx(log, "cannot open events")?;
    events
        .retain_in((log, base)..(log, keep_from), |_, value| {
            freed += value.len() as u64;
            false
        })
        .ctx(log, "cannot discard events")?;
    let mut logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
    logs.insert(log, (keep_from, next))
        .ctx(log, "cannot write the log")?;
    note_base(log, keep_from);
    drop(logs);
    drop(events);
    add_size(txn, log, -i128::from(freed))?;
    Ok(keep_from)
}

/// How an event's data is stored, after the JSON part of the record.
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DataKind {
    Binary,
    String,
    Json,
}

#[derive(Serialize)]
struct HeadOut<'a> {
    event: &'a Event,
    headers: &'a [(String, String)],
    data: Option<DataKind>,
}

#[derive(Deserialize)]
struct HeadIn {
    event: Event,
    headers: Vec<(String, String)>,
    data: Option<DataKind>,
}

/// Encodes an entry as: the time it was appended (ms since the epoch, 8
/// bytes, little endian), the length of the JSON head (8 bytes, little
/// endian), the head (the event without its data, the headers, the kind
/// of data), then the data's bytes. The data is kept apart, with its
/// variant, because the CloudEvents JSON format does not give back the
/// variant it was given (binary JSON comes back as `Data::Json`, a string
/// with a JSON content type too): the event read is the event appended.
fn encode(entry: &Entry, appended_ms: u64) -> Result<Vec<u8>, serde_json::Error> {
    let Entry { event, headers } = entry;
    let mut event = event.clone();
    let (content_type, schema, data) = event.take_data();
    event.set_datacontenttype(content_type);
    event.set_dataschema(schema);
    let (kind, bytes) = match data {
        None => (None, Vec::new()),
        Some(Data::Binary(bytes)) => (Some(DataKind::Binary), bytes),
        Some(Data::String(text)) => (Some(DataKind::String), text.into_bytes()),
        Some(Data::Json(json)) => (Some(DataKind::Json), serde_json::to_vec(&json)?),
    };
    let head = serde_json::to_vec(&HeadOut {
        event: &event,
        headers,
        data: kind,
    })?;
    let mut out = Vec::with_capacity(16 + head.len() + bytes.len());
    out.extend_from_slice(&appended_ms.to_le_bytes());
    out.extend_from_slice(&(head.len() as u64).to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(&bytes);
    Ok(out)
}

type DecodeError = Box<dyn std::error::Error + Send + Sync>;

/// The inverse of [`encode`].
fn decode(bytes: &[u8]) -> Result<(Event, Vec<(String, String)>), DecodeError> {
    let (_appended, bytes) = bytes.split_first_chunk::<8>().ok_or("truncated record")?;
    let (len, rest) = bytes.split_first_chunk::<8>().ok_or("truncated record")?;
    let len = usize::try_from(u64::from_le_bytes(*len))?;
    if len > rest.len() {
        return Err("truncated record".into());
    }
    let (head, data) = rest.split_at(len);
    let HeadIn {
        mut event,
        headers,
        data: kind,
    } = serde_json::from_slice(head)?;
    match kind {
        None => {}
        Some(DataKind::Binary) => {
            event.set_data_unchecked(data.to_vec());
        }
        Some(DataKind::String) => {
            event.set_data_unchecked(String::from_utf8(data.to_vec())?);
        }
        Some(DataKind::Json) => {
            event.set_data_unchecked(serde_json::from_slice::<serde_json::Value>(data)?);
        }
    }
    Ok((event, headers))
}

#[async_trait]
impl EventLog for DiskLog {
    async fn create(&self, log: &str) -> Result<(), LogError> {
        self.write(log, |txn, log| {
            let mut logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
            let existing = logs
                .get(log)
                .ctx(log, "cannot read the log")?
                .map(|m| m.value());
            Ok(match existing {
                Some((_, next)) => Written {
                    value: (),
                    dirty: false,
                    end: EndUpdate::Ensure(next),
                },
                None => {
                    logs.insert(log, (0, 0)).ctx(log, "cannot write the log")?;
                    Written {
                        value: (),
                        dirty: true,
                        end: EndUpdate::Ensure(0),
                    }
                }
            })
        })
        .await
    }

    async fn delete(&self, log: &str) -> Result<(), LogError> {
        self.write(log, |txn, log| {
            let mut logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
            let Some((base, next)) = logs
                .remove(log)
                .ctx(log, "cannot remove the log")?
                .map(|m| m.value())
            else {
                return Ok(Written {
                    value: (),
                    dirty: false,
                    end: EndUpdate::Remove,
                });
            };
            let mut events = txn.open_table(EVENTS).ctx(log, "cannot open events")?;
            events
                .retain_in((log, base)..(log, next), |_, _| false)
                .ctx(log, "cannot remove events")?;
            let mut cursors = txn.open_table(CURSORS).ctx(log, "cannot open cursors")?;
            for (consumer, _) in cursors_of(&cursors, log)? {
                cursors
                    .remove((log, consumer.as_str()))
                    .ctx(log, "cannot remove a cursor")?;
            }
            let mut sizes = txn.open_table(SIZES).ctx(log, "cannot open sizes")?;
            sizes.remove(log).ctx(log, "cannot remove a size")?;
            Ok(Written {
                value: (),
                dirty: true,
                end: EndUpdate::Remove,
            })
        })
        .await
    }

    async fn append(&self, log: &str, entries: Vec<Entry>) -> Result<Offset, LogError> {
        // Encode before queueing: the writer thread only writes.
        let mut encoded = Vec::with_capacity(entries.len());
        let mut kept = Vec::with_capacity(entries.len());
        let now = now_ms();
        for entry in entries {
            encoded.push(encode(&entry, now).ctx(log, "cannot encode an event")?);
            kept.push((Arc::new(entry.event), Arc::from(entry.headers)));
        }
        let (reply, replied) = tokio::sync::oneshot::channel();
        let request = AppendRequest {
            log: log.to_owned(),
            entries: encoded,
            decoded: kept,
            reply,
        };
        let sent = self
            .inner
            .appends
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .send(request);
        if sent.is_err() {
            return Err(LogError::Storage {
                log: log.to_owned(),
                message: "the writer thread stopped".to_owned(),
                source: None,
            });
        }
        // The writer thread put the events in the tail before it moved
        // the end, so dispatchers woken by the end find them in memory.
        replied.await.unwrap_or_else(|_| {
            Err(LogError::Storage {
                log: log.to_owned(),
                message: "the writer thread stopped".to_owned(),
                source: None,
            })
        })
    }

    async fn read(&self, log: &str, from: Offset, max: usize) -> Result<Vec<Record>, LogError> {
        // From memory when the tail holds `from` and what follows it.
        if max > 0 {
            let tails = self
                .inner
                .tails
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(tail) = tails.get(log)
                && from >= tail.floor
                && tail.records.contains_key(&from)
            {
                let records: Vec<Record> = tail
                    .records
                    .range(from..)
                    .take(max)
                    .zip(from..)
                    .take_while(|((offset, _), expected)| *offset == expected)
                    .map(|((offset, (event, headers)), _)| Record {
                        offset: *offset,
                        event: Arc::clone(event),
                        headers: Arc::clone(headers),
                    })
                    .collect();
                return Ok(records);
            }
        }
        self.blocking(log, move |inner, log| {
            let txn = inner.db.begin_read().ctx(log, "cannot begin a read")?;
            let logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
            let (base, next) = meta(&logs, log)?;
            if from < base {
                return Err(LogError::Discarded {
                    log: log.to_owned(),
                    requested: from,
                    oldest: base,
                });
            }
            if from >= next || max == 0 {
                return Ok(Vec::new());
            }
            let events = txn.open_table(EVENTS).ctx(log, "cannot open events")?;
            let mut records =
                Vec::with_capacity(max.min(usize::try_from(next - from).unwrap_or(max)));
            for row in events
                .range((log, from)..(log, next))
                .ctx(log, "cannot read events")?
                .take(max)
            {
                let (key, value) = row.ctx(log, "cannot read an event")?;
                let (_, offset) = key.value();
                let (event, headers) = decode(value.value()).map_err(|e| LogError::Storage {
                    log: log.to_owned(),
                    message: format!("cannot decode the event at offset {offset}: {e}"),
                    source: Some(e),
                })?;
                records.push(Record {
                    offset,
                    event: Arc::new(event),
                    headers: Arc::from(headers),
                });
            }
            Ok(records)
        })
        .await
    }

    fn end(&self, log: &str) -> Result<watch::Receiver<Offset>, LogError> {
        let ends = self
            .inner
            .ends
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match ends.get(log) {
            Some(end) => Ok(end.subscribe()),
            None => Err(LogError::NotFound(log.to_owned())),
        }
    }

    async fn committed(&self, log: &str, consumer: &str) -> Result<Offset, LogError> {
        let consumer = consumer.to_owned();
        // Most calls find the cursor: a read needs no sync.
        let known = {
            let consumer = consumer.clone();
            self.blocking(log, move |inner, log| {
                let txn = inner.db.begin_read().ctx(log, "cannot begin a read")?;
                let logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
                meta(&logs, log)?;
                let cursors = txn.open_table(CURSORS).ctx(log, "cannot open cursors")?;
                Ok(cursors
                    .get((log, consumer.as_str()))
                    .ctx(log, "cannot read a cursor")?
                    .map(|c| c.value()))
            })
            .await?
        };
        if let Some(offset) = known {
            return Ok(offset);
        }
        self.write(log, move |txn, log| {
            let logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
            let (_, next) = meta(&logs, log)?;
            let mut cursors = txn.open_table(CURSORS).ctx(log, "cannot open cursors")?;
            let existing = cursors
                .get((log, consumer.as_str()))
                .ctx(log, "cannot read a cursor")?
                .map(|c| c.value());
            Ok(match existing {
                Some(offset) => Written {
                    value: offset,
                    dirty: false,
                    end: EndUpdate::None,
                },
                None => {
                    cursors
                        .insert((log, consumer.as_str()), next)
                        .ctx(log, "cannot write a cursor")?;
                    Written {
                        value: next,
                        dirty: true,
                        end: EndUpdate::None,
                    }
                }
            })
        })
        .await
    }

    async fn commit(&self, log: &str, consumer: &str, offset: Offset) -> Result<(), LogError> {
        let consumer = consumer.to_owned();
        self.write_with(log, redb::Durability::None, move |txn, log| {
            let (base, next) = {
                let logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
                meta(&logs, log)?
            };
            let offset = offset.min(next);
            let moved = {
                let mut cursors = txn.open_table(CURSORS).ctx(log, "cannot open cursors")?;
                // Only registered consumers commit: a consumer removed
                // while its last commit was on its way must not come back.
                let Some(cursor) = cursors
                    .get((log, consumer.as_str()))
                    .ctx(log, "cannot read a cursor")?
                    .map(|c| c.value())
                else {
                    return Err(LogError::NotFound(format!("{log}#{consumer}")));
                };
                if offset > cursor {
                    cursors
                        .insert((log, consumer.as_str()), offset)
                        .ctx(log, "cannot write a cursor")?;
                }
                offset > cursor
            };
            let trimmed = trim(txn, log, base, next)? != base;
            Ok(Written {
                value: (),
                dirty: moved || trimmed,
                end: EndUpdate::None,
            })
        })
        .await
    }

    async fn remove_consumer(&self, log: &str, consumer: &str) -> Result<(), LogError> {
        let consumer = consumer.to_owned();
        self.write(log, move |txn, log| {
            let (base, next) = {
                let logs = txn.open_table(LOGS).ctx(log, "cannot open logs")?;
                meta(&logs, log)?
            };
            let removed = {
                let mut cursors = txn.open_table(CURSORS).ctx(log, "cannot open cursors")?;
                cursors
                    .remove((log, consumer.as_str()))
                    .ctx(log, "cannot remove a cursor")?
                    .is_some()
            };
            let trimmed = trim(txn, log, base, next)? != base;
            Ok(Written {
                value: (),
                dirty: removed || trimmed,
                end: EndUpdate::None,
            })
        })
        .await
    }
}

/// Turns storage errors into [`LogError::Storage`].
trait Context<T> {
    fn ctx(self, log: &str, what: &str) -> Result<T, LogError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn ctx(self, log: &str, what: &str) -> Result<T, LogError> {
        self.map_err(|e| LogError::Storage {
            log: log.to_owned(),
            message: format!("{what}: {e}"),
            source: Some(Box::new(e)),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use cloudevents::{AttributesReader, EventBuilder, EventBuilderV03, EventBuilderV10};
    use serde_json::json;

    use super::super::InMemoryLog;
    use super::*;

    fn event(id: &str) -> Event {
        EventBuilderV10::new()
            .id(id)
            .ty("t")
            .source("/s")
            .build()
            .expect("event")
    }

    fn entry(id: &str) -> Entry {
        event(id).into()
    }

    /// An event with every kind of attribute, data and headers, varying
    /// with `i`.
    fn rich(i: u64) -> Entry {
        let builder = EventBuilderV10::new()
            .id(format!("id-{i}"))
            .ty("dev.knative.test")
            .source(format!("/sources/{}", i % 7))
            .subject(format!("subject {i}"))
            .time("2024-05-06T07:08:09.123456789Z")
            .extension("seq", i as i64)
            .extension("even", i.is_multiple_of(2))
            .extension("label", format!("l{i}"));
        let event = match i % 5 {
            0 => builder.build(),
            1 => builder
                .data("application/json", json!({"n": i, "f": 1.5, "s": "x"}))
                .build(),
            // A JSON body received in binary mode: bytes, kept as bytes.
            2 => builder
                .data(
                    "application/json",
                    format!("{{ \"n\" : {i} }}").into_bytes(),
                )
                .build(),
            // A string with a JSON content type stays a string.
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
                ("x-request-id".to_owned(), format!("req-{i}")),
                ("knative-foo".to_owned(), "bar".to_owned()),
            ],
        }
    }

    fn ids(records: &[Record]) -> Vec<&str> {
        records.iter().map(|r| r.event.id()).collect()
    }

    fn db(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("events.redb")
    }

    /// Rows of `log` physically present in the events table.
    fn stored(log: &DiskLog, name: &str) -> usize {
        let txn = log.inner.db.begin_read().expect("read");
        let events = txn.open_table(EVENTS).expect("events");
        events
            .range((name, 0)..=(name, u64::MAX))
            .expect("range")
            .count()
    }

    #[tokio::test]
    async fn consumers_read_from_their_cursor_and_trim_behind_the_slowest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DiskLog::open(db(&dir)).expect("open");
        log.create("ns/b").await.expect("created");
        assert_eq!(log.committed("ns/b", "t1").await.expect("cursor"), 0);
        assert_eq!(log.committed("ns/b", "t2").await.expect("cursor"), 0);
        let first = log
            .append("ns/b", vec![entry("1"), entry("2"), entry("3")])
            .await
            .expect("appended");
        assert_eq!(first, 0);
        assert_eq!(*log.end("ns/b").expect("end").borrow(), 3);
        let records = log.read("ns/b", 1, 10).await.expect("read");
        assert_eq!(ids(&records), ["2", "3"]);
        assert_eq!(records[0].offset, 1);
        log.commit("ns/b", "t1", 3).await.expect("commit");
        assert_eq!(log.len("ns/b").await.expect("len"), 3, "t2 has not read");
        log.commit("ns/b", "t2", 2).await.expect("commit");
        assert_eq!(log.len("ns/b").await.expect("len"), 1);
        assert_eq!(stored(&log, "ns/b"), 1, "trimmed events are deleted");
        assert!(matches!(
            log.read("ns/b", 0, 1).await,
            Err(LogError::Discarded { oldest: 2, .. })
        ));
        // Commits never go back.
        log.commit("ns/b", "t1", 1).await.expect("commit");
        assert_eq!(log.committed("ns/b", "t1").await.expect("cursor"), 3);
        // A consumer seen later starts at the end.
        assert_eq!(log.committed("ns/b", "t3").await.expect("cursor"), 3);
        // A removed consumer cannot commit itself back.
        log.remove_consumer("ns/b", "t3").await.expect("removed");
        assert!(matches!(
            log.commit("ns/b", "t3", 3).await,
            Err(LogError::NotFound(what)) if what == "ns/b#t3"
        ));
    }

    #[tokio::test]
    async fn a_full_log_refuses_appends_until_consumers_catch_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DiskLog::open_with_capacity(db(&dir), 2).expect("open");
        log.create("l").await.expect("created");
        log.committed("l", "c").await.expect("registered");
        log.append("l", vec![entry("1"), entry("2")])
            .await
            .expect("fits");
        let err = log.append("l", vec![entry("3")]).await.expect_err("full");
        assert!(err.to_string().contains("full"), "{err}");
        assert_eq!(*log.end("l").expect("end").borrow(), 2, "nothing appended");
        log.commit("l", "c", 2).await.expect("commit");
        assert_eq!(log.append("l", vec![entry("3")]).await.expect("room"), 2);
    }

    #[tokio::test]
    async fn an_unknown_log_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DiskLog::open(db(&dir)).expect("open");
        let not_found = |r: Result<_, LogError>| matches!(r, Err(LogError::NotFound(_)));
        assert!(not_found(
            log.append("nope", vec![entry("1")]).await.map(|_| ())
        ));
        assert!(not_found(log.read("nope", 0, 1).await.map(|_| ())));
        assert!(not_found(log.end("nope").map(|_| ())));
        assert!(not_found(log.committed("nope", "c").await.map(|_| ())));
        assert!(not_found(log.commit("nope", "c", 0).await));
        assert!(not_found(log.remove_consumer("nope", "c").await));
        log.delete("nope").await.expect("deleting nothing is fine");
    }

    #[tokio::test]
    async fn without_consumers_appended_events_are_not_kept_but_the_end_moves() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DiskLog::open(db(&dir)).expect("open");
        log.create("l").await.expect("created");
        let mut end = log.end("l").expect("end");
        assert_eq!(
            log.append("l", vec![entry("1"), entry("2")])
                .await
                .expect("append"),
            0
        );
        tokio::time::timeout(Duration::from_secs(5), end.changed())
            .await
            .expect("notified")
            .expect("open");
        assert_eq!(*end.borrow_and_update(), 2);
        assert!(matches!(
            log.read("l", 0, 10).await,
            Err(LogError::Discarded {
                requested: 0,
                oldest: 2,
                ..
            })
        ));
        assert!(log.read("l", 2, 10).await.expect("read").is_empty());
        assert_eq!(stored(&log, "l"), 0);
    }

    #[tokio::test]
    async fn deleting_a_log_removes_its_events_cursors_and_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DiskLog::open(db(&dir)).expect("open");
        for name in ["a", "b"] {
            log.create(name).await.expect("created");
            log.committed(name, "c").await.expect("registered");
            log.append(name, vec![entry("1"), entry("2")])
                .await
                .expect("append");
        }
        let mut end = log.end("a").expect("end");
        log.delete("a").await.expect("deleted");
        assert!(end.changed().await.is_err(), "the end's sender is gone");
        assert!(matches!(
            log.read("a", 0, 1).await,
            Err(LogError::NotFound(_))
        ));
        assert_eq!(stored(&log, "a"), 0);
        // The other log is untouched.
        assert_eq!(ids(&log.read("b", 0, 10).await.expect("read")), ["1", "2"]);
        // Created again, it starts afresh.
        log.create("a").await.expect("created");
        assert_eq!(*log.end("a").expect("end").borrow(), 0);
        assert_eq!(log.committed("a", "c").await.expect("new cursor"), 0);
        assert_eq!(log.append("a", vec![entry("x")]).await.expect("append"), 0);
        assert_eq!(ids(&log.read("a", 0, 10).await.expect("read")), ["x"]);
    }

    #[tokio::test]
    async fn events_come_back_exactly_as_appended() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DiskLog::open(db(&dir)).expect("open");
        log.create("l").await.expect("created");
        log.committed("l", "c").await.expect("registered");
        let mut entries: Vec<Entry> = (0..10).map(rich).collect();
        let v03 = EventBuilderV03::new()
            .id("old")
            .ty("t")
            .source("/s")
            .data("text/plain", "hello")
            .build()
            .expect("event");
        entries.push(v03.into());
        log.append("l", entries.clone()).await.expect("append");
        let records = log.read("l", 0, 100).await.expect("read");
        assert_eq!(records.len(), entries.len());
        for (record, entry) in records.iter().zip(&entries) {
            assert_eq!(*record.event, entry.event);
            assert_eq!(&*record.headers, entry.headers.as_slice());
        }
        assert!(matches!(records[2].event.data(), Some(Data::Binary(_))));
        assert!(matches!(records[3].event.data(), Some(Data::String(_))));
    }

    #[tokio::test]
    async fn a_thousand_events_and_the_cursors_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let entries: Vec<Entry> = (0..1000).map(rich).collect();
        {
            let log = DiskLog::open(db(&dir)).expect("open");
            log.create("ns/b").await.expect("created");
            assert_eq!(log.committed("ns/b", "slow").await.expect("cursor"), 0);
            assert_eq!(log.committed("ns/b", "fast").await.expect("cursor"), 0);
            for chunk in entries.chunks(100) {
                log.append("ns/b", chunk.to_vec()).await.expect("append");
            }
            log.commit("ns/b", "slow", 250).await.expect("commit");
            log.commit("ns/b", "fast", 900).await.expect("commit");
        }
        let log = DiskLog::open(db(&dir)).expect("reopen");
        assert_eq!(*log.end("ns/b").expect("end").borrow(), 1000);
        assert_eq!(log.committed("ns/b", "slow").await.expect("cursor"), 250);
        assert_eq!(log.committed("ns/b", "fast").await.expect("cursor"), 900);
        assert!(matches!(
            log.read("ns/b", 249, 1).await,
            Err(LogError::Discarded { oldest: 250, .. })
        ));
        let mut read = Vec::new();
        while read.len() < 750 {
            let batch = log
                .read("ns/b", 250 + read.len() as u64, 64)
                .await
                .expect("read");
            assert!(!batch.is_empty());
            read.extend(batch);
        }
        assert!(log.read("ns/b", 1000, 10).await.expect("read").is_empty());
        for (record, entry) in read.iter().zip(&entries[250..]) {
            assert_eq!(*record.event, entry.event, "offset {}", record.offset);
            assert_eq!(&*record.headers, entry.headers.as_slice());
        }
        assert_eq!(read.last().map(|r| r.offset), Some(999));
        // Appends go on where they were.
        assert_eq!(
            log.append("ns/b", vec![entry("next")])
                .await
                .expect("append"),
            1000
        );
        assert_eq!(log.committed("ns/b", "late").await.expect("cursor"), 1001);
    }

    #[tokio::test]
    async fn events_appended_after_a_commit_are_read_from_the_cursor_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = DiskLog::open(db(&dir)).expect("open");
            log.create("l").await.expect("created");
            log.committed("l", "c").await.expect("registered");
            log.append("l", vec![entry("1"), entry("2")])
                .await
                .expect("append");
            log.commit("l", "c", 2).await.expect("commit");
            log.append("l", vec![entry("3"), entry("4")])
                .await
                .expect("append");
            // Dropped without any shutdown.
        }
        let log = DiskLog::open(db(&dir)).expect("reopen");
        let from = log.committed("l", "c").await.expect("cursor");
        assert_eq!(from, 2);
        assert_eq!(
            ids(&log.read("l", from, 10).await.expect("read")),
            ["3", "4"]
        );
        assert_eq!(stored(&log, "l"), 2);
    }

    #[tokio::test]
    async fn a_database_file_is_open_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DiskLog::open(db(&dir)).expect("open");
        let err = DiskLog::open(db(&dir)).expect_err("already open");
        assert!(matches!(err, LogError::Storage { .. }), "{err}");
        drop(log);
        DiskLog::open(db(&dir)).expect("open again");
    }

    /// Not a test on its own: the child process of
    /// `what_a_killed_process_committed_is_there_after_a_restart`. It
    /// appends batches and prints the first offset of each after its
    /// commit, until it is killed.
    #[tokio::test]
    #[ignore = "the child process of what_a_killed_process_committed_is_there_after_a_restart"]
    async fn killed_writer_child() {
        let path = std::env::var("DISKLOG_CHILD_DB").expect("DISKLOG_CHILD_DB");
        let log = DiskLog::open(path).expect("open");
        log.create("l").await.expect("created");
        log.committed("l", "c").await.expect("registered");
        for batch in 0u64.. {
            let entries = (0..10).map(|i| rich(batch * 10 + i)).collect();
            let first = log.append("l", entries).await.expect("append");
            if batch == 5 {
                log.commit("l", "c", 20).await.expect("commit");
                println!("child-committed 20");
            }
            println!("child-appended {first}");
        }
    }

    #[tokio::test]
    async fn what_a_killed_process_committed_is_there_after_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "log::disk::tests::killed_writer_child",
                "--include-ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("DISKLOG_CHILD_DB", db(&dir))
            .stdout(Stdio::piped())
            .spawn()
            .expect("child");
        let stdout = child.stdout.take().expect("stdout");
        let mut appended = 0;
        let deadline = Instant::now() + Duration::from_secs(60);
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            if let Some(first) = line.strip_prefix("child-appended ") {
                appended = first.parse::<u64>().expect("offset") + 10;
                if appended >= 300 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the child is too slow");
        }
        // SIGKILL, in the middle of later appends: no destructor runs.
        child.kill().expect("kill");
        child.wait().expect("wait");
        assert!(appended >= 300, "the child appended {appended}");

        let log = DiskLog::open(db(&dir)).expect("reopen after a crash");
        let end = *log.end("l").expect("end").borrow();
        assert!(end >= appended, "{end} < {appended}");
        assert_eq!(end % 10, 0, "batches are atomic");
        assert_eq!(log.committed("l", "c").await.expect("cursor"), 20);
        let mut offset = 20;
        while offset < end {
            let batch = log.read("l", offset, 100).await.expect("read");
            assert!(!batch.is_empty());
            for record in batch {
                assert_eq!(record.offset, offset);
                assert_eq!(*record.event, rich(offset).event);
                offset += 1;
            }
        }
        assert_eq!(
            log.append("l", vec![entry("after")]).await.expect("append"),
            end
        );
    }

    /// A small deterministic generator, for `same_answers_as_in_memory_log`.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// An answer, comparable across the two implementations.
    fn outcome<T: fmt::Debug>(r: Result<T, LogError>) -> String {
        match r {
            Ok(v) => format!("ok {v:?}"),
            Err(LogError::NotFound(what)) => format!("not found {what}"),
            Err(LogError::Discarded {
                requested, oldest, ..
            }) => format!("discarded {requested} {oldest}"),
            Err(LogError::Storage { message, .. }) => format!("storage {message}"),
        }
    }

    #[tokio::test]
    async fn same_answers_as_in_memory_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = DiskLog::open_with_capacity(db(&dir), 8).expect("open");
        let memory = InMemoryLog::with_capacity(8);
        let mut rng = Lcg(7);
        let mut id = 0;
        for step in 0..2000 {
            let name = ["a", "b"][rng.next(2) as usize];
            let consumer = ["c1", "c2", "c3"][rng.next(3) as usize];
            let (d, m) = match rng.next(20) {
                0 => (
                    outcome(disk.delete(name).await),
                    outcome(memory.delete(name).await),
                ),
                1 | 2 => (
                    outcome(disk.create(name).await),
                    outcome(memory.create(name).await),
                ),
                3..=7 => {
                    let entries: Vec<Entry> = (0..rng.next(4))
                        .map(|_| {
                            id += 1;
                            entry(&id.to_string())
                        })
                        .collect();
                    (
                        outcome(disk.append(name, entries.clone()).await),
                        outcome(memory.append(name, entries).await),
                    )
                }
                8..=11 => {
                    let from = rng.next(40);
                    let max = rng.next(6) as usize;
                    let show = |r: Result<Vec<Record>, LogError>| {
                        outcome(r.map(|v| {
                            v.iter()
                                .map(|r| (r.offset, r.event.id().to_owned()))
                                .collect::<Vec<_>>()
                        }))
                    };
                    (
                        show(disk.read(name, from, max).await),
                        show(memory.read(name, from, max).await),
                    )
                }
                12 | 13 => (
                    outcome(disk.committed(name, consumer).await),
                    outcome(memory.committed(name, consumer).await),
                ),
                14..=17 => {
                    let offset = rng.next(40);
                    (
                        outcome(disk.commit(name, consumer, offset).await),
                        outcome(memory.commit(name, consumer, offset).await),
                    )
                }
                18 => (
                    outcome(disk.remove_consumer(name, consumer).await),
                    outcome(memory.remove_consumer(name, consumer).await),
                ),
                _ => (
                    outcome(disk.end(name).map(|e| *e.borrow())),
                    outcome(memory.end(name).map(|e| *e.borrow())),
                ),
            };
            assert_eq!(d, m, "step {step}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_size_drops_the_oldest_and_keeps_the_log_under_its_bytes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let one = encode(&entry("e-000"), 0).expect("encodes").len() as u64;
        let max = one * 10 + one / 2;
        let log = DiskLog::open_with(
            db(&dir),
            DiskLogConfig {
                retention: Retention {
                    max_bytes: Some(max),
                    ..Retention::default()
                },
                ..DiskLogConfig::default()
            },
        )
        .expect("opens");
        log.create("l").await.expect("creates");
        // A consumer that never commits: without retention all would stay.
        log.committed("l", "slow").await.expect("registers");
        for i in 0..25 {
            log.append("l", vec![entry(&format!("e-{i:03}"))])
                .await
                .expect("appends");
        }
        let size = log.size("l").await.expect("size");
        assert!(size <= max, "{size} bytes kept, at most {max}");
        assert_eq!(log.len("l").await.expect("len"), 10, "the newest ten fit");
        assert_eq!(size, one * 10);
        match log.read("l", 0, 100).await {
            Err(LogError::Discarded { oldest, .. }) => assert_eq!(oldest, 15),
            other => panic!("expected Discarded, got {}", outcome(other)),
        }
        let records = log.read("l", 15, 100).await.expect("reads");
        assert_eq!(ids(&records).first(), Some(&"e-015"));
        assert_eq!(ids(&records).last(), Some(&"e-024"));
        // Too large by itself: refused, and nothing is dropped for it.
        let big: Vec<Entry> = (0..11).map(|i| entry(&format!("b-{i:03}"))).collect();
        let refused = log.append("l", big).await;
        assert!(
            matches!(&refused, Err(LogError::Storage { message, .. }) if message.contains("more than the log keeps")),
            "{}",
            outcome(refused)
        );
        assert_eq!(log.len("l").await.expect("len"), 10);
        // Commits free bytes too, and the size survives a restart.
        log.commit("l", "slow", 20).await.expect("commits");
        assert_eq!(log.size("l").await.expect("size"), one * 5);
        drop(log);
        let log = DiskLog::open(db(&dir)).expect("reopens");
        assert_eq!(log.size("l").await.expect("size"), one * 5);
        log.delete("l").await.expect("deletes");
        assert!(matches!(log.size("l").await, Err(LogError::NotFound(_))));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_by_age_discards_expired_events_unread_or_not() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = DiskLog::open_with(
            db(&dir),
            DiskLogConfig {
                retention: Retention {
                    // Long enough that a loaded machine does not expire
                    // the old events before the young one is in.
                    max_age: Some(Duration::from_millis(1000)),
                    ..Retention::default()
                },
                ..DiskLogConfig::default()
            },
        )
        .expect("opens");
        log.create("l").await.expect("creates");
        log.committed("l", "slow").await.expect("registers");
        log.append("l", vec![entry("old-1"), entry("old-2")])
            .await
            .expect("appends");
        tokio::time::sleep(Duration::from_millis(300)).await;
        log.append("l", vec![entry("young")])
            .await
            .expect("appends");
        assert_eq!(log.len("l").await.expect("len"), 3, "nothing expired yet");
        // The old ones expire (swept every 100 ms), the young one not yet.
        let start = Instant::now();
        while log.len("l").await.expect("len") != 1 {
            assert!(start.elapsed() < Duration::from_secs(5), "never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let records = log.read("l", 2, 10).await.expect("reads");
        assert_eq!(ids(&records), ["young"]);
        assert!(matches!(
            log.read("l", 0, 10).await,
            Err(LogError::Discarded { oldest: 2, .. })
        ));
        // The cursor still points at 0: a dispatcher skips to 2.
        assert_eq!(log.committed("l", "slow").await.expect("cursor"), 0);
        while log.len("l").await.expect("len") != 0 {
            assert!(start.elapsed() < Duration::from_secs(5), "never expired");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(log.size("l").await.expect("size"), 0);
    }

    /// `cargo test --release -- --ignored --nocapture append_throughput`
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement, not a test"]
    async fn append_throughput() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = DiskLog::open_with_capacity(db(&dir), 10_000_000).expect("open");
        log.create("l").await.expect("created");
        log.committed("l", "c").await.expect("registered");
        for batch in [1usize, 100] {
            let rounds = if batch == 1 { 2000 } else { 300 };
            let started = Instant::now();
            for r in 0..rounds {
                let entries = (0..batch).map(|i| rich((r * batch + i) as u64)).collect();
                log.append("l", entries).await.expect("append");
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "batch {batch}: {:.0} appends/s, {:.0} events/s ({rounds} appends in {secs:.2}s)",
                rounds as f64 / secs,
                (rounds * batch) as f64 / secs
            );
        }
    }
}
