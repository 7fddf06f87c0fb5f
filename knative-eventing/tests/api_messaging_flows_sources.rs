//! Channels, subscriptions, flows and sources (`specs/EVENTING.md §4`–`§6`):
//! realistic manifests parse, default, validate and round-trip; every
//! validation rule reports its exact field path; PingSource schedules and
//! events behave as upstream's.

use std::fmt::Debug;
use std::path::PathBuf;

use cloudevents::{AttributesReader, Data};
use jiff::Timestamp;
use knative_core::apis::{Context, FieldError, SetDefaults, Validate};
use knative_eventing::api::flows;
use knative_eventing::api::{
    ApiServerSource, Channel, ChannelTemplateSpec, ContainerSource, Destination, InMemoryChannel,
    Parallel, PingSource, Sequence, SinkBinding, Subscription,
};
use knative_eventing::ping::{Schedule, ScheduleError, ping_event, sink_env};
use kube::CustomResourceExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn fixture_text(name: &str) -> String {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", name]
        .iter()
        .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture<T: DeserializeOwned>(name: &str) -> T {
    serde_yaml::from_str(&fixture_text(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Parses a fixture, checks nothing is lost on the way back out, defaults
/// it, validates it clean and round-trips the defaulted object.
fn load<T>(name: &str) -> T
where
    T: DeserializeOwned + Serialize + SetDefaults + Validate + PartialEq + Debug,
{
    let raw: serde_json::Value =
        serde_yaml::from_str(&fixture_text(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut object: T = fixture(name);
    let written = serde_json::to_value(&object).expect("serializes");
    assert_eq!(
        written, raw,
        "{name}: a field was lost or changed in parsing"
    );

    let ctx = Context::create();
    object.set_defaults(&ctx);
    let errs = object.validate(&ctx);
    assert!(errs.is_empty(), "{name} should validate clean:\n{errs}");

    let yaml = serde_yaml::to_string(&object).expect("serializes");
    let back: T = serde_yaml::from_str(&yaml).unwrap_or_else(|e| panic!("{name}: {e}\n{yaml}"));
    assert_eq!(back, object, "{name}: YAML round trip");
    let json = serde_json::to_string(&object).expect("serializes");
    let back: T = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, object, "{name}: JSON round trip");
    object
}

/// Every path of every problem, sorted.
fn paths(errs: &FieldError) -> Vec<String> {
    let mut all: Vec<String> = errs
        .diagnostics()
        .into_iter()
        .flat_map(|d| d.paths)
        .collect();
    all.sort();
    all
}

/// Validates on create and returns the sorted error paths.
fn error_paths<T: Validate>(object: &T) -> Vec<String> {
    paths(&object.validate(&Context::create()))
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

fn nexts(schedule: &Schedule, after: &str, n: usize) -> Vec<String> {
    let mut t = ts(after);
    let mut out = Vec::new();
    for _ in 0..n {
        match schedule.next_after(t) {
            Some(next) => {
                out.push(next.to_string());
                t = next;
            }
            None => break,
        }
    }
    out
}

// ---------------------------------------------------------------------------
// messaging.knative.dev/v1
// ---------------------------------------------------------------------------

#[test]
fn channel_fixture_and_defaults() {
    let ch: Channel = load("channel.yaml");
    assert_eq!(
        ch.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("messaging.knative.dev/subscribable"))
            .map(String::as_str),
        Some("v1")
    );
    let dls = ch
        .spec
        .channelable
        .delivery
        .as_ref()
        .and_then(|d| d.dead_letter_sink.as_ref())
        .and_then(|d| d.reference.as_ref())
        .and_then(|r| r.namespace.as_deref());
    assert_eq!(
        dls,
        Some("shop"),
        "dead-letter sink ref defaults its namespace"
    );
    let status = ch.status.as_ref().expect("status");
    assert_eq!(
        status.channel.as_ref().map(|c| c.kind.as_str()),
        Some("InMemoryChannel")
    );
    assert!(Channel::condition_set().is_happy(&status.channelable.status.conditions));

    let mut bare = ch.clone();
    bare.spec.channel_template = None;
    bare.set_defaults(&Context::create());
    assert_eq!(
        bare.spec.channel_template,
        Some(ChannelTemplateSpec::in_memory_channel())
    );
}

#[test]
fn channel_validation_paths() {
    let ch: Channel = load("channel.yaml");

    let mut no_kind = ch.clone();
    if let Some(t) = &mut no_kind.spec.channel_template {
        t.kind.clear();
        t.api_version.clear();
    }
    assert_eq!(
        error_paths(&no_kind),
        [
            "spec.channelTemplate.apiVersion",
            "spec.channelTemplate.kind"
        ]
    );

    let mut no_template = ch.clone();
    no_template.spec.channel_template = None;
    assert_eq!(error_paths(&no_template), ["spec.channelTemplate"]);

    let mut bad_delivery = ch.clone();
    if let Some(d) = &mut bad_delivery.spec.channelable.delivery {
        d.retry = Some(-1);
    }
    assert_eq!(error_paths(&bad_delivery), ["spec.delivery.retry"]);

    let mut other_impl = ch.clone();
    other_impl.spec.channel_template = Some(ChannelTemplateSpec {
        api_version: "messaging.knative.dev/v1beta1".into(),
        kind: "KafkaChannel".into(),
        spec: None,
    });
    let errs = other_impl.validate(&Context::update(&ch));
    assert_eq!(paths(&errs), ["spec.channelTemplate"]);
    assert!(
        errs.to_string().contains("Immutable fields changed"),
        "{errs}"
    );

    let mut more_delivery = ch.clone();
    if let Some(d) = &mut more_delivery.spec.channelable.delivery {
        d.retry = Some(9);
    }
    assert!(more_delivery.validate(&Context::update(&ch)).is_empty());
}

#[test]
fn in_memory_channel_fixture_and_validation_paths() {
    let imc: InMemoryChannel = load("inmemorychannel.yaml");
    assert_eq!(imc.spec.channelable.subscribers.len(), 2);
    let status = imc.status.as_ref().expect("status");
    assert_eq!(status.subscribers.len(), 2);
    assert_eq!(
        status.subscribers[1].message.as_deref(),
        Some("dispatcher: connection refused")
    );
    let set = InMemoryChannel::condition_set();
    assert!(set.is_happy(&status.status.conditions));

    let mut no_uris = imc.clone();
    no_uris.spec.channelable.subscribers[1].subscriber_uri = None;
    assert_eq!(
        error_paths(&no_uris),
        [
            "spec.subscribers[1].replyUri",
            "spec.subscribers[1].subscriberUri"
        ]
    );

    let mut bad_delay = imc.clone();
    if let Some(d) = &mut bad_delay.spec.channelable.subscribers[0].delivery {
        d.backoff_delay = Some("1s".into());
    }
    assert_eq!(
        error_paths(&bad_delay),
        ["spec.subscribers[0].delivery.backoffDelay"]
    );
}

#[test]
fn subscription_fixture_and_defaults() {
    let sub: Subscription = load("subscription.yaml");
    let ns = |d: &Destination| d.reference.as_ref().and_then(|r| r.namespace.clone());
    assert_eq!(ns(&sub.spec.subscriber).as_deref(), Some("shop"));
    assert_eq!(
        sub.spec.reply.as_ref().and_then(ns).as_deref(),
        Some("shop")
    );
    assert_eq!(
        sub.spec.channel.namespace, None,
        "the channel ref gets no namespace"
    );
    let physical = sub
        .status
        .as_ref()
        .and_then(|s| s.physical_subscription.as_ref())
        .expect("physicalSubscription");
    assert_eq!(
        physical.delivery.dead_letter_sink_uri.as_deref(),
        Some("http://dead-letters.shop.svc.cluster.local")
    );
}

#[test]
fn subscription_validation_paths() {
    let sub: Subscription = load("subscription.yaml");

    let mut no_channel = sub.clone();
    no_channel.spec.channel = Default::default();
    let errs = no_channel.validate(&Context::create());
    assert_eq!(paths(&errs), ["spec.channel"]);
    assert!(errs.to_string().contains("missing field"), "{errs}");

    let mut channel_ns = sub.clone();
    channel_ns.spec.channel.namespace = Some("other".into());
    assert_eq!(error_paths(&channel_ns), ["spec.channel.namespace"]);

    let mut channel_no_name = sub.clone();
    channel_no_name.spec.channel.name.clear();
    assert_eq!(error_paths(&channel_no_name), ["spec.channel.name"]);

    let mut no_subscriber = sub.clone();
    no_subscriber.spec.subscriber = Destination::default();
    let errs = no_subscriber.validate(&Context::create());
    assert_eq!(paths(&errs), ["spec.subscriber"]);
    assert!(
        errs.to_string().contains("must reference a subscriber"),
        "{errs}"
    );

    let mut relative = sub.clone();
    relative.spec.subscriber = Destination::uri("/relative");
    assert_eq!(error_paths(&relative), ["spec.subscriber.uri"]);

    let mut bad_reply = sub.clone();
    if let Some(r) = bad_reply
        .spec
        .reply
        .as_mut()
        .and_then(|r| r.reference.as_mut())
    {
        r.kind.clear();
    }
    assert_eq!(error_paths(&bad_reply), ["spec.reply.ref.kind"]);

    let mut bad_dls = sub.clone();
    if let Some(d) = &mut bad_dls.spec.delivery {
        d.dead_letter_sink = Some(Destination::uri("dead-letters"));
    }
    assert_eq!(error_paths(&bad_dls), ["spec.delivery.deadLetterSink.uri"]);

    // Only subscriber, reply and delivery may change.
    let mut moved = sub.clone();
    moved.spec.channel.name = "payments".into();
    let errs = moved.validate(&Context::update(&sub));
    assert_eq!(paths(&errs), ["spec.channel"]);
    assert!(
        errs.to_string().contains("Immutable fields changed"),
        "{errs}"
    );
    let mut retargeted = sub.clone();
    retargeted.spec.subscriber = Destination::uri("http://new.shop.svc.cluster.local");
    retargeted.spec.reply = None;
    retargeted.spec.delivery = None;
    assert!(retargeted.validate(&Context::update(&sub)).is_empty());
}

// ---------------------------------------------------------------------------
// flows.knative.dev/v1
// ---------------------------------------------------------------------------

#[test]
fn sequence_fixture_defaults_and_names() {
    let seq: Sequence = load("sequence.yaml");
    assert_eq!(seq.spec.steps.len(), 3);
    assert_eq!(
        seq.spec.steps[0]
            .destination
            .reference
            .as_ref()
            .and_then(|r| r.namespace.as_deref()),
        Some("shop")
    );
    assert_eq!(seq.channel_name(0), "sequence-kn-sequence-0");
    assert_eq!(seq.subscription_name(2), "sequence-kn-sequence-2");
    assert_eq!(flows::sequence_channel_name("s", 7), "s-kn-sequence-7");
    let status = seq.status.as_ref().expect("status");
    assert_eq!(
        status.subscription_statuses[0].ready.reason,
        "NotAddedToChannel"
    );

    let mut bare = seq.clone();
    bare.spec.channel_template = None;
    bare.set_defaults(&Context::create());
    assert_eq!(
        bare.spec.channel_template,
        Some(ChannelTemplateSpec::in_memory_channel())
    );
}

#[test]
fn sequence_validation_paths() {
    let seq: Sequence = load("sequence.yaml");

    let mut empty = seq.clone();
    empty.spec.steps.clear();
    assert_eq!(error_paths(&empty), ["spec.steps"]);

    let mut relative = seq.clone();
    relative.spec.steps[1].destination = Destination::uri("/not-absolute");
    relative.spec.steps[1].delivery = None;
    let errs = relative.validate(&Context::create());
    assert_eq!(paths(&errs), ["spec.steps[1].uri"]);
    assert!(
        errs.to_string()
            .starts_with("spec.steps[1].uri: invalid value: /not-absolute")
    );

    let mut neither = seq.clone();
    neither.spec.steps[2].destination = Destination::default();
    assert_eq!(
        error_paths(&neither),
        ["spec.steps[2].ref", "spec.steps[2].uri"]
    );

    let mut bad_delivery = seq.clone();
    if let Some(d) = &mut bad_delivery.spec.steps[1].delivery {
        d.timeout = Some("PT0S".into());
    }
    assert_eq!(
        error_paths(&bad_delivery),
        ["spec.steps[1].delivery.timeout"]
    );

    let mut template = seq.clone();
    if let Some(t) = &mut template.spec.channel_template {
        t.api_version.clear();
    }
    assert_eq!(error_paths(&template), ["spec.channelTemplate.apiVersion"]);

    let mut reply = seq.clone();
    reply.spec.reply = Some(Destination::uri("broker"));
    assert_eq!(error_paths(&reply), ["spec.reply.uri"]);
}

#[test]
fn parallel_fixture_defaults_and_names() {
    let par: Parallel = load("parallel.yaml");
    assert_eq!(par.ingress_channel_name(), "odd-even-kn-parallel");
    assert_eq!(par.branch_channel_name(1), "odd-even-kn-parallel-1");
    assert_eq!(
        par.filter_subscription_name(0),
        "odd-even-kn-parallel-filter-0"
    );
    assert_eq!(
        par.subscriber_subscription_name(0),
        "odd-even-kn-parallel-0"
    );
    let status = par.status.as_ref().expect("status");
    assert_eq!(
        status.branch_statuses[0]
            .filter_subscription_status
            .subscription
            .name
            .as_deref(),
        Some(par.filter_subscription_name(0).as_str())
    );
    assert_eq!(
        status
            .ingress_channel_status
            .as_ref()
            .and_then(|c| c.channel.name.clone()),
        Some(par.ingress_channel_name())
    );
    assert_eq!(
        par.spec.branches[0]
            .filter
            .as_ref()
            .and_then(|f| f.reference.as_ref())
            .and_then(|r| r.namespace.as_deref()),
        Some("shop")
    );
}

#[test]
fn parallel_validation_paths() {
    let par: Parallel = load("parallel.yaml");

    let mut empty = par.clone();
    empty.spec.branches.clear();
    assert_eq!(error_paths(&empty), ["spec.branches"]);

    let mut filter = par.clone();
    filter.spec.branches[0].filter = Some(Destination::uri("even-filter"));
    assert_eq!(error_paths(&filter), ["spec.branches[0].filter.uri"]);

    let mut subscriber = par.clone();
    subscriber.spec.branches[1].subscriber = Destination::default();
    assert_eq!(
        error_paths(&subscriber),
        [
            "spec.branches[1].subscriber.ref",
            "spec.branches[1].subscriber.uri"
        ]
    );

    let mut reply = par.clone();
    reply.spec.branches[1].reply = Some(Destination::uri("/archive"));
    assert_eq!(error_paths(&reply), ["spec.branches[1].reply.uri"]);

    let mut delivery = par.clone();
    if let Some(d) = &mut delivery.spec.branches[1].delivery {
        d.retry = Some(-3);
    }
    assert_eq!(error_paths(&delivery), ["spec.branches[1].delivery.retry"]);

    let mut template = par.clone();
    if let Some(t) = &mut template.spec.channel_template {
        t.kind.clear();
    }
    assert_eq!(error_paths(&template), ["spec.channelTemplate.kind"]);
}

// ---------------------------------------------------------------------------
// sources.knative.dev/v1
// ---------------------------------------------------------------------------

#[test]
fn ping_source_fixture_and_defaults() {
    let ping: PingSource = load("pingsource.yaml");
    assert_eq!(
        ping.spec
            .source
            .sink
            .reference
            .as_ref()
            .and_then(|r| r.namespace.as_deref()),
        Some("shop")
    );
    let mut unscheduled = ping.clone();
    unscheduled.spec.schedule.clear();
    unscheduled.set_defaults(&Context::create());
    assert_eq!(unscheduled.spec.schedule, "* * * * *");
    let status = ping.status.as_ref().expect("status");
    assert_eq!(status.ce_attributes[0].type_, "dev.knative.sources.ping");
    assert_eq!(status.ce_attributes[0].source, ping.event_source());
}

#[test]
fn ping_source_validation_paths() {
    let ping: PingSource = load("pingsource.yaml");

    let mut both = ping.clone();
    both.spec.data_base64 = "e30=".into();
    let errs = both.validate(&Context::create());
    assert_eq!(paths(&errs), ["spec.data", "spec.dataBase64"]);
    assert!(
        errs.to_string().contains("expected exactly one, got both"),
        "{errs}"
    );

    let mut bad_base64 = ping.clone();
    bad_base64.spec.data.clear();
    bad_base64.spec.content_type = "application/octet-stream".into();
    bad_base64.spec.data_base64 = "not base64!".into();
    assert_eq!(error_paths(&bad_base64), ["spec.dataBase64"]);

    let mut bad_json_base64 = ping.clone();
    bad_json_base64.spec.data.clear();
    bad_json_base64.spec.data_base64 = "eyJtZXNzYWdlIjo=".into(); // `{"message":`
    let errs = bad_json_base64.validate(&Context::create());
    assert_eq!(paths(&errs), ["spec.dataBase64"]);
    assert!(errs.to_string().contains("JSON"), "{errs}");

    let mut bad_json = ping.clone();
    bad_json.spec.data = "hello".into();
    assert_eq!(error_paths(&bad_json), ["spec.data"]);
    let mut text = bad_json.clone();
    text.spec.content_type = "text/plain".into();
    assert!(
        error_paths(&text).is_empty(),
        "non-JSON bodies are free-form"
    );

    let mut every = ping.clone();
    every.spec.schedule = "@every 1m".into();
    let errs = every.validate(&Context::create());
    assert_eq!(paths(&errs), ["spec.schedule"]);
    assert!(
        errs.to_string().contains("unsupported descriptor @every"),
        "{errs}"
    );

    let mut bad_cron = ping.clone();
    bad_cron.spec.schedule = "61 * * * *".into();
    assert_eq!(error_paths(&bad_cron), ["spec.schedule"]);

    let mut bad_zone = ping.clone();
    bad_zone.spec.timezone = "Mars/Olympus_Mons".into();
    let errs = bad_zone.validate(&Context::create());
    assert_eq!(paths(&errs), ["spec.timezone"]);
    assert!(errs.to_string().contains("Mars/Olympus_Mons"), "{errs}");

    let mut no_sink = ping.clone();
    no_sink.spec.source.sink = Destination::default();
    assert_eq!(error_paths(&no_sink), ["spec.sink.ref", "spec.sink.uri"]);

    let mut overrides = ping.clone();
    if let Some(o) = &mut overrides.spec.source.ce_overrides {
        o.extensions.insert("Team-Name".into(), "x".into());
        o.extensions.insert("time".into(), "x".into());
    }
    let errs = overrides.validate(&Context::create());
    assert_eq!(
        paths(&errs),
        ["spec.ceOverrides.extensions", "spec.ceOverrides.extensions"]
    );
    let text = errs.to_string();
    assert!(
        text.contains("\"Team-Name\"") && text.contains("\"time\""),
        "{text}"
    );
}

#[test]
fn container_source_fixture_defaults_and_validation_paths() {
    let cs: ContainerSource = load("containersource.yaml");

    let mut unnamed: ContainerSource = fixture("containersource.yaml");
    if let Some(pod) = &mut unnamed.spec.template.spec {
        pod.containers[0].name.clear();
    }
    unnamed.set_defaults(&Context::create());
    assert_eq!(
        unnamed
            .spec
            .template
            .spec
            .as_ref()
            .map(|p| p.containers[0].name.as_str()),
        Some("test-heartbeats-0")
    );

    let mut no_image = cs.clone();
    if let Some(pod) = &mut no_image.spec.template.spec {
        pod.containers[0].image = None;
    }
    assert_eq!(
        error_paths(&no_image),
        ["spec.template.spec.containers[0].image"]
    );

    let mut no_containers = cs.clone();
    no_containers.spec.template.spec = None;
    assert_eq!(
        error_paths(&no_containers),
        ["spec.template.spec.containers"]
    );

    let mut no_sink = cs.clone();
    no_sink.spec.source.sink = Destination::uri("event-display");
    assert_eq!(error_paths(&no_sink), ["spec.sink.uri"]);
}

#[test]
fn sink_binding_fixture_defaults_and_validation_paths() {
    let sb: SinkBinding = load("sinkbinding.yaml");
    assert_eq!(sb.spec.subject.namespace.as_deref(), Some("shop"));

    let mut both = sb.clone();
    both.spec.subject.name = Some("heartbeat".into());
    assert_eq!(
        error_paths(&both),
        ["spec.subject.name", "spec.subject.selector"]
    );

    let mut neither = sb.clone();
    neither.spec.subject.selector = None;
    let errs = neither.validate(&Context::create());
    assert_eq!(paths(&errs), ["spec.subject.name", "spec.subject.selector"]);
    assert!(errs.to_string().contains("got neither"), "{errs}");

    let mut by_name = neither.clone();
    by_name.spec.subject.name = Some("heartbeat".into());
    assert!(error_paths(&by_name).is_empty());

    let mut elsewhere = sb.clone();
    elsewhere.spec.subject.namespace = Some("other".into());
    assert_eq!(error_paths(&elsewhere), ["spec.subject.namespace"]);

    let mut no_kind = sb.clone();
    no_kind.spec.subject.kind.clear();
    no_kind.spec.subject.api_version.clear();
    assert_eq!(
        error_paths(&no_kind),
        ["spec.subject.apiVersion", "spec.subject.kind"]
    );
}

#[test]
fn api_server_source_fixture_defaults_and_validation_paths() {
    let src: ApiServerSource = load("apiserversource.yaml");
    assert_eq!(
        src.status.as_ref().map(|s| s.namespaces.clone()),
        Some(vec!["shop".to_owned()])
    );

    let mut bare = src.clone();
    bare.spec.mode.clear();
    bare.spec.service_account_name.clear();
    bare.set_defaults(&Context::create());
    assert_eq!(bare.spec.mode, "Reference");
    assert_eq!(bare.spec.service_account_name, "default");

    let mut mode = src.clone();
    mode.spec.mode = "Everything".into();
    assert_eq!(error_paths(&mode), ["spec.mode"]);

    let mut none = src.clone();
    none.spec.resources.clear();
    assert_eq!(error_paths(&none), ["spec.resources"]);

    let mut resources = src.clone();
    resources.spec.resources[0].api_version = "a/b/c".into();
    resources.spec.resources[1].kind = " ".into();
    assert_eq!(
        error_paths(&resources),
        ["spec.resources[0].apiVersion", "spec.resources[1].kind"]
    );

    let mut owner = src.clone();
    if let Some(o) = &mut owner.spec.owner {
        o.kind.clear();
    }
    assert_eq!(error_paths(&owner), ["spec.owner.kind"]);

    let mut filters = src.clone();
    filters.spec.filters[0].cesql = Some("type = ".into());
    assert_eq!(
        error_paths(&filters),
        ["spec.filters[0].cesql", "spec.filters[0].prefix"]
    );
}

// ---------------------------------------------------------------------------
// CRD metadata (specs/CRDS.md)
// ---------------------------------------------------------------------------

fn crd_facts<T: CustomResourceExt>() -> (String, Vec<String>, Vec<String>, Vec<String>) {
    let crd = T::crd();
    let names = crd.spec.names;
    let columns = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    (
        crd.metadata.name.unwrap_or_default(),
        names.short_names.unwrap_or_default(),
        names.categories.unwrap_or_default(),
        columns,
    )
}

#[test]
fn crd_names_short_names_categories_and_columns() {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let ready = ["Age", "Ready", "Reason"];
    let url_ready = ["URL", "Age", "Ready", "Reason"];
    let sink_ready = ["Sink", "Age", "Ready", "Reason"];
    let cases = [
        (
            crd_facts::<Channel>(),
            "channels.messaging.knative.dev",
            s(&["ch"]),
            s(&["all", "knative", "messaging", "channel"]),
            s(&url_ready),
        ),
        (
            crd_facts::<InMemoryChannel>(),
            "inmemorychannels.messaging.knative.dev",
            s(&["imc"]),
            s(&["all", "knative", "messaging", "channel"]),
            s(&url_ready),
        ),
        (
            crd_facts::<Subscription>(),
            "subscriptions.messaging.knative.dev",
            s(&["sub"]),
            s(&["all", "knative", "messaging"]),
            s(&ready),
        ),
        (
            crd_facts::<Sequence>(),
            "sequences.flows.knative.dev",
            vec![],
            s(&["all", "knative", "flows"]),
            s(&url_ready),
        ),
        (
            crd_facts::<Parallel>(),
            "parallels.flows.knative.dev",
            vec![],
            s(&["all", "knative", "flows"]),
            s(&url_ready),
        ),
        (
            crd_facts::<PingSource>(),
            "pingsources.sources.knative.dev",
            vec![],
            s(&["all", "knative", "sources"]),
            s(&["Sink", "Schedule", "Age", "Ready", "Reason"]),
        ),
        (
            crd_facts::<ApiServerSource>(),
            "apiserversources.sources.knative.dev",
            vec![],
            s(&["all", "knative", "sources"]),
            s(&sink_ready),
        ),
        (
            crd_facts::<ContainerSource>(),
            "containersources.sources.knative.dev",
            vec![],
            s(&["all", "knative", "sources"]),
            s(&sink_ready),
        ),
        (
            crd_facts::<SinkBinding>(),
            "sinkbindings.sources.knative.dev",
            vec![],
            s(&["all", "knative", "sources", "bindings"]),
            s(&sink_ready),
        ),
    ];
    for ((name, short, categories, columns), want_name, want_short, want_cat, want_cols) in cases {
        assert_eq!(name, want_name);
        assert_eq!(short, want_short, "{name}");
        assert_eq!(categories, want_cat, "{name}");
        assert_eq!(columns, want_cols, "{name}");
    }
}

// ---------------------------------------------------------------------------
// PingSource schedules
// ---------------------------------------------------------------------------

#[test]
fn every_five_minutes() {
    let s = Schedule::parse("*/5 * * * *", None).expect("parses");
    assert_eq!(
        nexts(&s, "2026-03-01T10:02:30Z", 3),
        [
            "2026-03-01T10:05:00Z",
            "2026-03-01T10:10:00Z",
            "2026-03-01T10:15:00Z"
        ]
    );
    // A firing time itself is excluded; sub-seconds do not matter.
    assert_eq!(
        nexts(&s, "2026-03-01T10:05:00Z", 1),
        ["2026-03-01T10:10:00Z"]
    );
    assert_eq!(
        nexts(&s, "2026-03-01T10:04:59.999Z", 1),
        ["2026-03-01T10:05:00Z"]
    );
}

#[test]
fn hourly_and_other_descriptors() {
    let hourly = Schedule::parse("@hourly", None).expect("parses");
    assert_eq!(
        nexts(&hourly, "2026-03-01T10:00:00Z", 2),
        ["2026-03-01T11:00:00Z", "2026-03-01T12:00:00Z"]
    );
    let daily = Schedule::parse("@daily", None).expect("parses");
    assert_eq!(
        nexts(&daily, "2026-03-01T10:00:00Z", 1),
        ["2026-03-02T00:00:00Z"]
    );
    let midnight = Schedule::parse("@midnight", None).expect("parses");
    assert_eq!(midnight.pattern(), daily.pattern());
    let weekly = Schedule::parse("@weekly", None).expect("parses");
    // 2026-03-01 is a Sunday.
    assert_eq!(
        nexts(&weekly, "2026-03-01T10:00:00Z", 1),
        ["2026-03-08T00:00:00Z"]
    );
    let yearly = Schedule::parse("@annually", None).expect("parses");
    assert_eq!(
        nexts(&yearly, "2026-03-01T10:00:00Z", 1),
        ["2027-01-01T00:00:00Z"]
    );
}

#[test]
fn six_fields_have_seconds() {
    let s = Schedule::parse("*/10 * * * * *", None).expect("parses");
    assert_eq!(
        nexts(&s, "2026-03-01T10:00:05Z", 3),
        [
            "2026-03-01T10:00:10Z",
            "2026-03-01T10:00:20Z",
            "2026-03-01T10:00:30Z"
        ]
    );
    let s = Schedule::parse("30 15 9 * * mon-fri", None).expect("parses");
    // 2026-03-06 is a Friday: next is Monday the 9th.
    assert_eq!(
        nexts(&s, "2026-03-06T09:15:30Z", 1),
        ["2026-03-09T09:15:30Z"]
    );
}

#[test]
fn berlin_across_the_spring_and_autumn_dst_changes() {
    // 09:00 Berlin is 08:00Z in winter (CET) and 07:00Z in summer (CEST);
    // clocks go forward on 2026-03-29 and back on 2026-10-25.
    let nine = Schedule::parse("0 9 * * *", Some("Europe/Berlin")).expect("parses");
    assert_eq!(nine.timezone_name(), Some("Europe/Berlin"));
    assert_eq!(
        nexts(&nine, "2026-03-27T12:00:00Z", 3),
        [
            "2026-03-28T08:00:00Z",
            "2026-03-29T07:00:00Z",
            "2026-03-30T07:00:00Z"
        ]
    );
    assert_eq!(
        nexts(&nine, "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T08:00:00Z", "2026-10-26T08:00:00Z"]
    );
    // Hourly keeps firing on the hour of real time through both changes:
    // 02:00-03:00 does not exist in spring and happens twice in autumn.
    let hourly = Schedule::parse("0 * * * *", Some("Europe/Berlin")).expect("parses");
    assert_eq!(
        nexts(&hourly, "2026-03-29T00:30:00Z", 2),
        ["2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"]
    );
    assert_eq!(
        nexts(&hourly, "2026-10-25T00:30:00Z", 3),
        [
            "2026-10-25T01:00:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T03:00:00Z"
        ]
    );
    // A fixed time inside the spring gap fires right after the gap
    // (croner's rule; robfig/cron skips that day), and once in autumn.
    let half_two = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).expect("parses");
    assert_eq!(
        nexts(&half_two, "2026-03-28T12:00:00Z", 2),
        ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    );
    assert_eq!(
        nexts(&half_two, "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
}

#[test]
fn every_and_bad_zones_are_rejected() {
    let every = Schedule::parse("@every 1m", None).expect_err("rejected");
    assert_eq!(every, ScheduleError::Every);
    assert!(every.to_string().contains("unsupported descriptor @every"));
    assert!(matches!(
        Schedule::parse("* * * * *", Some("Europe/Atlantis")),
        Err(ScheduleError::BadTimezone { .. })
    ));
    assert!(matches!(
        Schedule::parse("CRON_TZ=Nowhere/Town * * * * *", None),
        Err(ScheduleError::BadTimezone { .. })
    ));
    assert!(matches!(
        Schedule::parse("* * * *", None),
        Err(ScheduleError::FieldCount(4))
    ));
    assert!(matches!(
        Schedule::parse("", None),
        Err(ScheduleError::Empty)
    ));
    // Never-matching dates parse (as in robfig) but never fire.
    let feb30 = Schedule::parse("0 0 30 2 *", None).expect("parses");
    assert_eq!(feb30.next_after(ts("2026-01-01T00:00:00Z")), None);
}

// ---------------------------------------------------------------------------
// the ping event and the adapter environment
// ---------------------------------------------------------------------------

#[test]
fn ping_event_attributes_and_json_data() {
    let ping: PingSource = load("pingsource.yaml");
    let fire = ts("2026-03-01T10:06:00Z");
    let event = ping_event(&ping, fire);
    assert_eq!(event.ty(), "dev.knative.sources.ping");
    assert_eq!(
        event.source().to_string(),
        "/apis/v1/namespaces/shop/pingsources/test-ping-source"
    );
    assert!(uuid::Uuid::parse_str(event.id()).is_ok(), "{}", event.id());
    assert_eq!(
        event.time().map(|t| t.to_rfc3339()),
        Some("2026-03-01T10:06:00+00:00".to_owned())
    );
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert_eq!(
        event.data(),
        Some(&Data::Binary(br#"{"message": "Hello world!"}"#.to_vec())),
        "spec.data is sent as written"
    );
    assert_eq!(
        event.extension("team").map(ToString::to_string),
        Some("payments".to_owned())
    );
    assert_eq!(
        event.extension("env").map(ToString::to_string),
        Some("prod".to_owned())
    );
    let again = ping_event(&ping, fire);
    assert_ne!(again.id(), event.id(), "every ping gets a fresh id");
}

#[test]
fn ping_event_binary_and_text_data() {
    let mut ping: PingSource = load("pingsource.yaml");
    ping.spec.data.clear();
    ping.spec.content_type = "application/octet-stream".into();
    ping.spec.data_base64 = "AAEC/w==".into();
    let event = ping_event(&ping, ts("2026-03-01T10:06:00Z"));
    assert_eq!(event.data(), Some(&Data::Binary(vec![0, 1, 2, 255])));
    assert_eq!(event.datacontenttype(), Some("application/octet-stream"));

    ping.spec.data_base64.clear();
    ping.spec.content_type = "text/plain".into();
    ping.spec.data = "ping".into();
    let event = ping_event(&ping, ts("2026-03-01T10:06:00Z"));
    assert_eq!(event.data(), Some(&Data::String("ping".into())));

    ping.spec.data.clear();
    ping.spec.content_type.clear();
    let event = ping_event(&ping, ts("2026-03-01T10:06:00Z"));
    assert_eq!(event.data(), None);
    assert_eq!(event.datacontenttype(), None);
}

#[test]
fn sink_env_carries_the_sink_and_overrides_json() {
    let sb: SinkBinding = load("sinkbinding.yaml");
    let env = sink_env(
        "http://event-display.shop.svc.cluster.local",
        sb.spec.source.ce_overrides.as_ref(),
    );
    assert_eq!(
        env,
        [
            (
                "K_SINK".to_owned(),
                "http://event-display.shop.svc.cluster.local".to_owned()
            ),
            (
                "K_CE_OVERRIDES".to_owned(),
                r#"{"extensions":{"sink":"bound"}}"#.to_owned()
            ),
        ]
    );
    let ping: PingSource = load("pingsource.yaml");
    let env = sink_env("http://s", ping.spec.source.ce_overrides.as_ref());
    assert_eq!(
        env[1].1,
        r#"{"extensions":{"env":"prod","team":"payments"}}"#
    );
}
