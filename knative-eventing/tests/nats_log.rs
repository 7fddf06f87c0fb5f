//! `NatsLog` against a real `nats-server` with JetStream, started by the
//! tests on a free loopback port with a temporary store: offsets, cursors,
//! restarts of the client and of the server, two processes sharing a
//! stream, and a broker delivering over HTTP through it.
//!
//! The tests need `nats-server` (2.9 or later) on `PATH` and fail, rather
//! than skip, without it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cloudevents::{AttributesReader, Event, EventBuilder, EventBuilderV10};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use knative_eventing::api::TriggerSpec;
use knative_eventing::binding;
use knative_eventing::broker::{Brokers, DispatchConfig, IngressConfig, TriggerRoute};
use knative_eventing::filter::Filter;
use knative_eventing::log::nats::{NatsLog, NatsLogConfig};
use knative_eventing::log::{Entry, EventLog, LogError, Record};
use serde_json::json;

#[path = "support/nats_server.rs"]
mod nats_server;
use nats_server::NatsServer;

const DEADLINE: Duration = Duration::from_secs(20);

/// A server with its store in a fresh temporary directory.
fn server() -> (tempfile::TempDir, NatsServer) {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(dir.path());
    (dir, server)
}

async fn connect(server: &NatsServer) -> NatsLog {
    connect_with(server, NatsLogConfig::default()).await
}

async fn connect_with(server: &NatsServer, config: NatsLogConfig) -> NatsLog {
    NatsLog::connect(&server.url(), config)
        .await
        .expect("connects")
}

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

/// An event with every kind of attribute, data and headers.
fn rich(i: u64) -> Entry {
    let builder = EventBuilderV10::new()
        .id(format!("id-{i}"))
        .ty("dev.knative.test")
        .source(format!("/sources/{}", i % 7))
        .subject(format!("subject {i} é"))
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
            ("x-request-id".to_owned(), format!("req-{i}")),
        ],
    }
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.event.id()).collect()
}

/// Reads `count` events from `from` on, in batches.
async fn read_all(log: &NatsLog, name: &str, from: u64, count: usize) -> Vec<Record> {
    let mut read: Vec<Record> = Vec::new();
    while read.len() < count {
        let batch = log
            .read(name, from + read.len() as u64, 100)
            .await
            .expect("read");
        assert!(!batch.is_empty(), "events missing after {}", read.len());
        read.extend(batch);
    }
    read
}

async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_events_are_read_back_exactly_at_their_offsets() {
    let (_dir, server) = server();
    let log = connect(&server).await;
    log.create("ns/b").await.expect("created");
    log.create("ns/b").await.expect("creating again is fine");
    assert_eq!(*log.end("ns/b").expect("end").borrow(), 0);
    assert_eq!(log.committed("ns/b", "c").await.expect("registered"), 0);
    let entries: Vec<Entry> = (0..10).map(rich).collect();
    assert_eq!(
        log.append("ns/b", entries[..3].to_vec())
            .await
            .expect("append"),
        0
    );
    assert_eq!(
        log.append("ns/b", entries[3..].to_vec())
            .await
            .expect("append"),
        3
    );
    assert_eq!(*log.end("ns/b").expect("end").borrow(), 10);
    let records = log.read("ns/b", 0, 100).await.expect("read");
    assert_eq!(records.len(), 10);
    for (i, (record, entry)) in records.iter().zip(&entries).enumerate() {
        assert_eq!(record.offset, i as u64);
        assert_eq!(*record.event, entry.event);
        assert_eq!(&*record.headers, entry.headers.as_slice());
    }
    let middle = log.read("ns/b", 4, 3).await.expect("read");
    assert_eq!(ids(&middle), ["id-4", "id-5", "id-6"]);
    assert_eq!(middle[0].offset, 4);
    assert!(log.read("ns/b", 10, 5).await.expect("read").is_empty());
    assert!(log.read("ns/b", 50, 5).await.expect("read").is_empty());
    assert!(log.read("ns/b", 3, 0).await.expect("read").is_empty());
    // An empty append answers the end.
    assert_eq!(log.append("ns/b", Vec::new()).await.expect("append"), 10);
    // The stream is the log's, with its name in the description.
    assert_eq!(log.stream_name("ns/b"), "KNATIVE_LOG_ns_2Fb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_read_from_their_cursor_and_the_server_trims_behind_the_slowest() {
    let (_dir, server) = server();
    let log = connect(&server).await;
    log.create("ns/b").await.expect("created");
    assert_eq!(
        log.committed("ns/b", "trigger/t1").await.expect("cursor"),
        0
    );
    assert_eq!(
        log.committed("ns/b", "trigger/t2").await.expect("cursor"),
        0
    );
    let first = log
        .append("ns/b", vec![entry("1"), entry("2"), entry("3")])
        .await
        .expect("appended");
    assert_eq!(first, 0);
    assert_eq!(
        ids(&log.read("ns/b", 1, 10).await.expect("read")),
        ["2", "3"]
    );
    log.commit("ns/b", "trigger/t1", 3).await.expect("commit");
    assert_eq!(
        log.committed("ns/b", "trigger/t1").await.expect("cursor"),
        3
    );
    assert_eq!(
        ids(&log.read("ns/b", 0, 10).await.expect("read")),
        ["1", "2", "3"],
        "t2 has read nothing"
    );
    log.commit("ns/b", "trigger/t2", 2).await.expect("commit");
    eventually("the trim behind t2", || async {
        matches!(
            log.read("ns/b", 0, 1).await,
            Err(LogError::Discarded {
                requested: 0,
                oldest: 2,
                ..
            })
        )
    })
    .await;
    assert_eq!(ids(&log.read("ns/b", 2, 10).await.expect("read")), ["3"]);
    // Commits never go back, and stop at the end.
    log.commit("ns/b", "trigger/t1", 1).await.expect("commit");
    assert_eq!(
        log.committed("ns/b", "trigger/t1").await.expect("cursor"),
        3
    );
    log.commit("ns/b", "trigger/t2", 99).await.expect("commit");
    assert_eq!(
        log.committed("ns/b", "trigger/t2").await.expect("cursor"),
        3
    );
    // A consumer seen later starts at the end.
    assert_eq!(
        log.committed("ns/b", "trigger/t3").await.expect("cursor"),
        3
    );
    log.append("ns/b", vec![entry("4")]).await.expect("append");
    assert_eq!(
        log.committed("ns/b", "trigger/t3").await.expect("cursor"),
        3
    );
    // A removed consumer cannot commit itself back.
    log.remove_consumer("ns/b", "trigger/t3")
        .await
        .expect("removed");
    log.remove_consumer("ns/b", "trigger/t3")
        .await
        .expect("removing again is fine");
    assert!(matches!(
        log.commit("ns/b", "trigger/t3", 4).await,
        Err(LogError::NotFound(what)) if what == "ns/b#trigger/t3"
    ));
    // Once every consumer is past them, no event is kept.
    log.commit("ns/b", "trigger/t1", 4).await.expect("commit");
    log.commit("ns/b", "trigger/t2", 4).await.expect("commit");
    eventually("everything trimmed", || async {
        matches!(
            log.read("ns/b", 3, 1).await,
            Err(LogError::Discarded { oldest: 4, .. })
        )
    })
    .await;
}

/// A consumer created after some events does not need them: once the
/// earlier consumers are past them they go, although the new one has not
/// committed anything yet (nats-server 2.9 would keep them for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_consumer_does_not_hold_back_older_events() {
    let (_dir, server) = server();
    let log = connect(&server).await;
    log.create("l").await.expect("created");
    assert_eq!(log.committed("l", "early").await.expect("cursor"), 0);
    log.append("l", vec![entry("1"), entry("2"), entry("3")])
        .await
        .expect("append");
    assert_eq!(log.committed("l", "late").await.expect("cursor"), 3);
    log.commit("l", "early", 3).await.expect("commit");
    eventually("the trim", || async {
        matches!(
            log.read("l", 0, 1).await,
            Err(LogError::Discarded { oldest: 3, .. })
        )
    })
    .await;
    assert_eq!(log.committed("l", "late").await.expect("cursor"), 3);
    log.append("l", vec![entry("4")]).await.expect("append");
    assert_eq!(ids(&log.read("l", 3, 10).await.expect("read")), ["4"]);
    log.commit("l", "late", 4).await.expect("commit");
    assert_eq!(log.committed("l", "late").await.expect("cursor"), 4);
    assert_eq!(log.committed("l", "early").await.expect("cursor"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_consumers_events_are_not_kept_but_the_end_moves() {
    let (_dir, server) = server();
    let log = connect(&server).await;
    log.create("l").await.expect("created");
    let mut end = log.end("l").expect("end");
    assert_eq!(
        log.append("l", vec![entry("1"), entry("2")])
            .await
            .expect("append"),
        0
    );
    tokio::time::timeout(DEADLINE, end.changed())
        .await
        .expect("notified")
        .expect("open");
    eventually("the end at 2", || {
        let end = end.clone();
        async move { *end.borrow() == 2 }
    })
    .await;
    eventually("nothing kept", || async {
        matches!(
            log.read("l", 0, 10).await,
            Err(LogError::Discarded {
                requested: 0,
                oldest: 2,
                ..
            })
        )
    })
    .await;
    assert!(log.read("l", 2, 10).await.expect("read").is_empty());
    // A consumer registered now starts at the end.
    assert_eq!(log.committed("l", "c").await.expect("cursor"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_log_is_not_found() {
    let (_dir, server) = server();
    let log = connect(&server).await;
    let not_found =
        |r: Result<(), LogError>| matches!(r, Err(LogError::NotFound(ref l)) if l == "nope");
    assert!(not_found(
        log.append("nope", vec![entry("1")]).await.map(|_| ())
    ));
    assert!(not_found(log.append("nope", Vec::new()).await.map(|_| ())));
    assert!(not_found(log.read("nope", 0, 1).await.map(|_| ())));
    assert!(not_found(log.end("nope").map(|_| ())));
    assert!(not_found(log.committed("nope", "c").await.map(|_| ())));
    assert!(not_found(log.commit("nope", "c", 0).await));
    assert!(not_found(log.remove_consumer("nope", "c").await));
    log.delete("nope").await.expect("deleting nothing is fine");
    // A consumer never registered cannot commit.
    log.create("l").await.expect("created");
    assert!(matches!(
        log.commit("l", "c", 0).await,
        Err(LogError::NotFound(what)) if what == "l#c"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_client_resumes_at_the_committed_cursor() {
    let (_dir, server) = server();
    let entries: Vec<Entry> = (0..1000).map(rich).collect();
    {
        let log = connect(&server).await;
        log.create("ns/b").await.expect("created");
        assert_eq!(log.committed("ns/b", "slow").await.expect("cursor"), 0);
        assert_eq!(log.committed("ns/b", "fast").await.expect("cursor"), 0);
        for chunk in entries.chunks(100) {
            log.append("ns/b", chunk.to_vec()).await.expect("append");
        }
        log.commit("ns/b", "slow", 250).await.expect("commit");
        log.commit("ns/b", "fast", 900).await.expect("commit");
        // Dropped: its connection closes.
    }
    let log = connect(&server).await;
    log.create("ns/b").await.expect("created");
    assert_eq!(*log.end("ns/b").expect("end").borrow(), 1000);
    assert_eq!(log.committed("ns/b", "slow").await.expect("cursor"), 250);
    assert_eq!(log.committed("ns/b", "fast").await.expect("cursor"), 900);
    assert!(matches!(
        log.read("ns/b", 249, 1).await,
        Err(LogError::Discarded { oldest: 250, .. })
    ));
    let read = read_all(&log, "ns/b", 250, 750).await;
    for (record, entry) in read.iter().zip(&entries[250..]) {
        assert_eq!(*record.event, entry.event, "offset {}", record.offset);
        assert_eq!(&*record.headers, entry.headers.as_slice());
    }
    assert_eq!(read.last().map(|r| r.offset), Some(999));
    assert_eq!(
        log.append("ns/b", vec![entry("next")])
            .await
            .expect("append"),
        1000
    );
    assert_eq!(log.committed("ns/b", "late").await.expect("cursor"), 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_cursors_survive_a_restart_of_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(dir.path());
    let log = connect(&server).await;
    log.create("l").await.expect("created");
    log.committed("l", "c").await.expect("registered");
    log.committed("l", "d").await.expect("registered");
    let entries: Vec<Entry> = (0..50).map(rich).collect();
    log.append("l", entries.clone()).await.expect("append");
    log.commit("l", "c", 20).await.expect("commit");
    log.commit("l", "d", 30).await.expect("commit");
    let (store, port) = server.stop();
    // While it is away, calls fail as storage errors (not NotFound).
    let err = log.read("l", 20, 1).await.expect_err("no server");
    assert!(matches!(err, LogError::Storage { .. }), "{err}");
    let server = NatsServer::start_on(&store, port);
    // The old client reconnects by itself.
    let mut retried = None;
    let start = Instant::now();
    while retried.is_none() {
        match log.committed("l", "c").await {
            Ok(offset) => retried = Some(offset),
            Err(e) => {
                assert!(start.elapsed() < DEADLINE, "no reconnection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(retried, Some(20));
    // A new client sees the same.
    let fresh = connect(&server).await;
    fresh.create("l").await.expect("created");
    assert_eq!(*fresh.end("l").expect("end").borrow(), 50);
    assert_eq!(fresh.committed("l", "d").await.expect("cursor"), 30);
    let read = read_all(&fresh, "l", 20, 30).await;
    for (record, entry) in read.iter().zip(&entries[20..]) {
        assert_eq!(*record.event, entry.event);
    }
    assert!(matches!(
        fresh.read("l", 19, 1).await,
        Err(LogError::Discarded { oldest: 20, .. })
    ));
    // Appends go on where they were, and the old client's end follows.
    let end = log.end("l").expect("end");
    assert_eq!(
        fresh.append("l", vec![entry("x")]).await.expect("append"),
        50
    );
    eventually("the old client's end", || {
        let end = end.clone();
        async move { *end.borrow() == 51 }
    })
    .await;
    assert!(end.has_changed().is_ok(), "still open");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_of_one_process_wake_the_dispatchers_of_another() {
    let (_dir, server) = server();
    let ingress = connect(&server).await;
    // No polling: only the ordered consumer can wake it.
    let dispatcher = connect_with(
        &server,
        NatsLogConfig {
            end_poll_interval: Duration::from_secs(3600),
            ..NatsLogConfig::default()
        },
    )
    .await;
    ingress.create("ns/b").await.expect("created");
    dispatcher.create("ns/b").await.expect("created");
    let cursor = dispatcher.committed("ns/b", "t").await.expect("cursor");
    let mut end = dispatcher.end("ns/b").expect("end");
    assert_eq!(*end.borrow_and_update(), cursor);
    for round in 0..5u64 {
        let first = ingress
            .append("ns/b", vec![entry(&format!("e{round}"))])
            .await
            .expect("append");
        assert_eq!(first, round);
        let started = Instant::now();
        tokio::time::timeout(DEADLINE, end.changed())
            .await
            .expect("woken")
            .expect("open");
        let woken = started.elapsed();
        assert!(woken < Duration::from_millis(900), "woken after {woken:?}");
        let next = *end.borrow_and_update();
        let records = dispatcher.read("ns/b", round, 10).await.expect("read");
        assert_eq!(next, round + 1);
        assert_eq!(ids(&records), [format!("e{round}")]);
        dispatcher
            .commit("ns/b", "t", round + 1)
            .await
            .expect("commit");
    }
    // A commit by one process is the cursor of the other.
    assert_eq!(ingress.committed("ns/b", "t").await.expect("cursor"), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_log_removes_its_events_cursors_and_end_everywhere() {
    let (_dir, server) = server();
    let log = connect(&server).await;
    let other = connect(&server).await;
    for name in ["a", "b"] {
        log.create(name).await.expect("created");
        log.committed(name, "c").await.expect("registered");
        log.append(name, vec![entry("1"), entry("2")])
            .await
            .expect("append");
    }
    other.create("a").await.expect("followed");
    let mut end = log.end("a").expect("end");
    let mut elsewhere = other.end("a").expect("end");
    log.delete("a").await.expect("deleted");
    assert!(
        tokio::time::timeout(DEADLINE, end.changed())
            .await
            .expect("closed")
            .is_err(),
        "the end's sender is gone"
    );
    // The other process notices at its next poll.
    assert!(
        tokio::time::timeout(DEADLINE, async {
            while elsewhere.changed().await.is_ok() {}
        })
        .await
        .is_ok(),
        "the other process's end closes"
    );
    assert!(matches!(
        other.read("a", 0, 1).await,
        Err(LogError::NotFound(_))
    ));
    assert!(matches!(log.end("a"), Err(LogError::NotFound(_))));
    assert!(matches!(
        log.committed("a", "c").await,
        Err(LogError::NotFound(_))
    ));
    // The other log is untouched.
    assert_eq!(ids(&log.read("b", 0, 10).await.expect("read")), ["1", "2"]);
    // Created again, it starts afresh, with no cursor.
    log.create("a").await.expect("created");
    assert_eq!(*log.end("a").expect("end").borrow(), 0);
    assert_eq!(log.committed("a", "c").await.expect("new cursor"), 0);
    assert_eq!(log.append("a", vec![entry("x")]).await.expect("append"), 0);
    assert_eq!(ids(&log.read("a", 0, 10).await.expect("read")), ["x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_refuses_appends_until_consumers_catch_up() {
    let (_dir, server) = server();
    let log = connect_with(
        &server,
        NatsLogConfig {
            max_events: Some(2),
            ..NatsLogConfig::default()
        },
    )
    .await;
    log.create("l").await.expect("created");
    log.committed("l", "c").await.expect("registered");
    log.append("l", vec![entry("1"), entry("2")])
        .await
        .expect("fits");
    let err = log.append("l", vec![entry("3")]).await.expect_err("full");
    assert!(
        matches!(&err, LogError::Storage { message, .. } if message.contains("full")),
        "{err}"
    );
    log.commit("l", "c", 2).await.expect("commit");
    eventually("room again", || async {
        log.append("l", vec![entry("3")]).await.is_ok()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_older_than_max_age_are_discarded_even_unread() {
    let (_dir, server) = server();
    let log = connect_with(
        &server,
        NatsLogConfig {
            max_age: Some(Duration::from_millis(500)),
            ..NatsLogConfig::default()
        },
    )
    .await;
    log.create("l").await.expect("created");
    log.committed("l", "c").await.expect("registered");
    log.append("l", vec![entry("1"), entry("2")])
        .await
        .expect("append");
    assert_eq!(log.read("l", 0, 10).await.expect("read").len(), 2);
    eventually("the events expire", || async {
        matches!(
            log.read("l", 0, 10).await,
            Err(LogError::Discarded {
                requested: 0,
                oldest: 2,
                ..
            })
        )
    })
    .await;
    // The cursor stays behind; committing at the oldest is fine.
    assert_eq!(log.committed("l", "c").await.expect("cursor"), 0);
    log.commit("l", "c", 2).await.expect("commit");
    log.append("l", vec![entry("3")]).await.expect("append");
    assert_eq!(ids(&log.read("l", 2, 10).await.expect("read")), ["3"]);
    log.commit("l", "c", 3).await.expect("commit");
    assert_eq!(log.committed("l", "c").await.expect("cursor"), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appenders_get_distinct_correct_offsets() {
    let (_dir, server) = server();
    let writers = [connect(&server).await, connect(&server).await];
    writers[0].create("l").await.expect("created");
    writers[1].create("l").await.expect("created");
    writers[0].committed("l", "c").await.expect("registered");
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let log = writers[(task % 2) as usize].clone();
        tasks.push(tokio::spawn(async move {
            let mut firsts = Vec::new();
            for batch in 0..10u64 {
                let entries = (0..5)
                    .map(|i| entry(&format!("{task}-{batch}-{i}")))
                    .collect();
                let first = log.append("l", entries).await.expect("append");
                firsts.push((first, format!("{task}-{batch}-0")));
            }
            firsts
        }));
    }
    let mut firsts = Vec::new();
    for task in tasks {
        firsts.extend(task.await.expect("task"));
    }
    let records = read_all(&writers[0], "l", 0, 400).await;
    assert_eq!(records.len(), 400);
    let mut offsets: Vec<u64> = firsts.iter().map(|(o, _)| *o).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), 80, "distinct first offsets");
    for (first, id) in &firsts {
        assert_eq!(records[*first as usize].event.id(), id, "offset {first}");
    }
    // Each batch's entries are in order (interleaved with others').
    for task in 0..8 {
        for batch in 0..10 {
            let seen: Vec<&str> = records
                .iter()
                .map(|r| r.event.id())
                .filter(|id| id.starts_with(&format!("{task}-{batch}-")))
                .collect();
            let expected: Vec<String> = (0..5).map(|i| format!("{task}-{batch}-{i}")).collect();
            assert_eq!(seen, expected);
        }
    }
}

/// A subscriber that records the events it gets.
async fn subscriber() -> (String, Arc<Mutex<Vec<Event>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("http://{}/", listener.local_addr().expect("address"));
    let received = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = Arc::clone(&record);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let record = Arc::clone(&record);
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let status = match binding::read_request(
                                &parts.headers,
                                &body,
                                &binding::Limits::default(),
                            ) {
                                Ok((_, events)) => {
                                    record.lock().expect("lock").extend(events);
                                    StatusCode::ACCEPTED
                                }
                                Err(_) => StatusCode::BAD_REQUEST,
                            };
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, received)
}

/// A broker replica on its own connection, serving its ingress.
async fn replica(server: &NatsServer) -> (Brokers, SocketAddr) {
    let log = Arc::new(connect(server).await);
    let brokers = Brokers::new(log, IngressConfig::default(), DispatchConfig::default());
    brokers
        .upsert_broker("ns", "b", None, None)
        .await
        .expect("broker");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let address = listener.local_addr().expect("address");
    let serving = brokers.clone();
    tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
    (brokers, address)
}

async fn post(ingress: SocketAddr, event: &Event) -> StatusCode {
    let (headers, body) = binding::write_binary(event).expect("encodes");
    let mut request = Request::builder()
        .method("POST")
        .uri(format!("http://{ingress}/ns/b"));
    for (name, value) in &headers {
        request = request.header(name, value);
    }
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    client
        .request(request.body(Full::new(body)).expect("request"))
        .await
        .expect("answered")
        .status()
}

/// Two broker replicas on one stream: the event posted to one replica's
/// ingress is delivered by the other replica's dispatcher, over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_delivers_from_ingress_to_subscriber_across_replicas() {
    let (_dir, server) = server();
    let (ingress_replica, ingress) = replica(&server).await;
    let (dispatch_replica, _) = replica(&server).await;
    let (url, received) = subscriber().await;
    let spec: TriggerSpec =
        serde_json::from_value(json!({"broker": "b", "subscriber": {"uri": url}})).expect("spec");
    dispatch_replica
        .upsert_trigger(
            "ns",
            "b",
            "t",
            TriggerRoute {
                filter: Filter::for_trigger(&spec).expect("filter"),
                subscriber: url.clone(),
                delivery: None,
                dead_letter_sink: None,
            },
        )
        .await
        .expect("trigger");
    let sent = EventBuilderV10::new()
        .id("e1")
        .ty("dev.knative.test")
        .source("/s")
        .data("application/json", json!({"hello": "nats"}))
        .build()
        .expect("event");
    assert_eq!(post(ingress, &sent).await, StatusCode::ACCEPTED);
    eventually("the delivery", || async {
        !received.lock().expect("lock").is_empty()
    })
    .await;
    let got = received.lock().expect("lock").clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id(), "e1");
    assert_eq!(got[0].data(), sent.data());
    // Delivered and committed: nothing is left in the stream.
    let log = connect(&server).await;
    log.create("ns/b").await.expect("followed");
    eventually("the commit", || async {
        log.committed("ns/b", "trigger/t").await.ok() == Some(1)
    })
    .await;
    drop((ingress_replica, dispatch_replica));
}

/// `cargo test --release --test nats_log -- --ignored --nocapture append_throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn append_throughput() {
    let (_dir, server) = server();
    let log = connect_with(
        &server,
        NatsLogConfig {
            max_events: None,
            ..NatsLogConfig::default()
        },
    )
    .await;
    log.create("l").await.expect("created");
    log.committed("l", "c").await.expect("registered");
    for batch in [1usize, 100] {
        let rounds = if batch == 1 { 3000 } else { 200 };
        let started = Instant::now();
        for r in 0..rounds {
            let entries = (0..batch).map(|i| rich((r * batch + i) as u64)).collect();
            log.append("l", entries).await.expect("append");
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "batch {batch}, 1 appender: {:.0} appends/s, {:.0} events/s ({rounds} appends in {secs:.2}s)",
            rounds as f64 / secs,
            (rounds * batch) as f64 / secs
        );
    }
    for appenders in [16usize, 64] {
        let per = 300;
        let started = Instant::now();
        let tasks: Vec<_> = (0..appenders)
            .map(|a| {
                let log = log.clone();
                tokio::spawn(async move {
                    for r in 0..per {
                        log.append("l", vec![rich((a * per + r) as u64)])
                            .await
                            .expect("append");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("task");
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "batch 1, {appenders} concurrent appenders: {:.0} events/s ({} appends in {secs:.2}s)",
            (appenders * per) as f64 / secs,
            appenders * per
        );
    }
    let started = Instant::now();
    let mut read = 0;
    let end = *log.end("l").expect("end").borrow();
    while read < end {
        read += log.read("l", read, 100).await.expect("read").len() as u64;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "read in batches of 100: {:.0} events/s ({read} in {secs:.2}s)",
        read as f64 / secs
    );
}

/// Events accepted but not yet delivered when a dispatcher replica stops
/// are delivered by the next one: its cursor only moved past finished
/// deliveries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_flight_when_a_replica_stops_are_delivered_by_the_next() {
    let (_dir, server) = server();
    // A subscriber that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let hang_url = format!("http://{}/", hang.local_addr().expect("address"));
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((stream, _)) = hang.accept().await {
            keep.lock().expect("lock").push(stream);
        }
    });
    let route = |url: &str| {
        let spec: TriggerSpec =
            serde_json::from_value(json!({"broker": "b", "subscriber": {"uri": url}}))
                .expect("spec");
        TriggerRoute {
            filter: Filter::for_trigger(&spec).expect("filter"),
            subscriber: url.to_owned(),
            delivery: None,
            dead_letter_sink: None,
        }
    };
    let (ingress_replica, ingress) = replica(&server).await;
    {
        let (stopping, _) = replica(&server).await;
        stopping
            .upsert_trigger("ns", "b", "t", route(&hang_url))
            .await
            .expect("trigger");
        for i in 0..5 {
            let sent = EventBuilderV10::new()
                .id(format!("e{i}"))
                .ty("t")
                .source("/s")
                .build()
                .expect("event");
            assert_eq!(post(ingress, &sent).await, StatusCode::ACCEPTED);
        }
        eventually("the deliveries to hang", || async {
            !held.lock().expect("lock").is_empty()
        })
        .await;
        // The replica stops mid-delivery.
    }
    let (url, received) = subscriber().await;
    let (next, _) = replica(&server).await;
    next.upsert_trigger("ns", "b", "t", route(&url))
        .await
        .expect("trigger");
    eventually("redelivery by the next replica", || async {
        received.lock().expect("lock").len() >= 5
    })
    .await;
    let mut got: Vec<String> = received
        .lock()
        .expect("lock")
        .iter()
        .map(|e| e.id().to_owned())
        .collect();
    got.sort();
    assert_eq!(got, ["e0", "e1", "e2", "e3", "e4"]);
    drop((ingress_replica, next));
}
