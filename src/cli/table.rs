//! Tables for `knative get`: for each kind, NAME and then the printer
//! columns of its CRD in their order, as `kubectl get` shows them.

use serde_json::Value;

/// Whether to colour output (only on a terminal, and not with `NO_COLOR`).
pub fn colour() -> bool {
    use std::io::IsTerminal as _;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// `text` in green, red or yellow for True, False, anything else.
fn status(text: &str, colour: bool) -> String {
    if !colour {
        return text.to_owned();
    }
    let code = match text {
        "True" => "32",
        "False" => "31",
        _ => "33",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn string(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// What a column shows.
#[derive(Clone, Copy, Debug)]
enum Cell {
    /// The value at a JSON pointer, as text.
    Text(&'static str),
    /// A timestamp at a JSON pointer, shown as how long ago (as kubectl
    /// shows `date` printer columns: `45s`, `3m20s`, `2d4h`).
    Age(&'static str),
    /// The status of a condition (coloured on a terminal).
    Status(&'static str),
    /// The reason of a condition.
    Reason(&'static str),
}

const AGE: (&str, Cell) = ("AGE", Cell::Age("/metadata/creationTimestamp"));
const READY: (&str, Cell) = ("READY", Cell::Status("Ready"));
const REASON: (&str, Cell) = ("REASON", Cell::Reason("Ready"));

/// The columns of a kind after NAME, in the order of its CRD's printer
/// columns (upstream's `additionalPrinterColumns`, as kubectl shows them):
/// (header, cell).
fn columns(kind: &str) -> Vec<(&'static str, Cell)> {
    let url = ("URL", Cell::Text("/status/url"));
    let address = ("URL", Cell::Text("/status/address/url"));
    let sink = ("SINK", Cell::Text("/status/sinkUri"));
    match kind {
        "service" => vec![
            url,
            (
                "LATESTCREATED",
                Cell::Text("/status/latestCreatedRevisionName"),
            ),
            ("LATESTREADY", Cell::Text("/status/latestReadyRevisionName")),
            READY,
            REASON,
        ],
        "configuration" => vec![
            (
                "LATESTCREATED",
                Cell::Text("/status/latestCreatedRevisionName"),
            ),
            ("LATESTREADY", Cell::Text("/status/latestReadyRevisionName")),
            READY,
            REASON,
        ],
        "revision" => vec![
            (
                "CONFIG NAME",
                Cell::Text("/metadata/labels/serving.knative.dev~1configuration"),
            ),
            (
                "GENERATION",
                Cell::Text("/metadata/labels/serving.knative.dev~1configurationGeneration"),
            ),
            READY,
            REASON,
            ("ACTUAL REPLICAS", Cell::Text("/status/actualReplicas")),
            ("DESIRED REPLICAS", Cell::Text("/status/desiredReplicas")),
        ],
        "route" => vec![url, READY, REASON],
        "broker" => vec![
            address,
            AGE,
            READY,
            REASON,
            (
                "CLASS",
                Cell::Text("/metadata/annotations/eventing.knative.dev~1broker.class"),
            ),
        ],
        "trigger" => vec![
            ("BROKER", Cell::Text("/spec/broker")),
            ("SUBSCRIBER_URI", Cell::Text("/status/subscriberUri")),
            AGE,
            READY,
            REASON,
        ],
        "inmemorychannel" | "channel" | "sequence" | "parallel" => {
            vec![address, AGE, READY, REASON]
        }
        "subscription" => vec![AGE, READY, REASON],
        "pingsource" => vec![
            sink,
            ("SCHEDULE", Cell::Text("/spec/schedule")),
            AGE,
            READY,
            REASON,
        ],
        "apiserversource" | "containersource" | "sinkbinding" => vec![sink, AGE, READY, REASON],
        "taskrun" | "pipelinerun" => vec![
            ("SUCCEEDED", Cell::Status("Succeeded")),
            ("REASON", Cell::Reason("Succeeded")),
            ("STARTTIME", Cell::Age("/status/startTime")),
            ("COMPLETIONTIME", Cell::Age("/status/completionTime")),
        ],
        // No printer columns (tasks, pipelines): kubectl shows NAME, AGE.
        _ => vec![AGE],
    }
}

/// How long ago `timestamp` (RFC 3339) was before `now`, as kubectl
/// prints ages (apimachinery's `HumanDuration`).
fn age(timestamp: &str, now: jiff::Timestamp) -> String {
    let Ok(then) = timestamp.parse::<jiff::Timestamp>() else {
        return "<invalid>".to_owned();
    };
    let seconds = now.as_second() - then.as_second();
    if seconds < -1 {
        return "<invalid>".to_owned();
    }
    let seconds = seconds.max(0);
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        return match seconds % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        return match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    let days = hours / 24;
    if hours < 24 * 8 {
        return match hours % 24 {
            0 => format!("{days}d"),
            h => format!("{days}d{h}h"),
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{days}d");
    }
    let years = days / 365;
    if hours < 24 * 365 * 8 {
        return match days % 365 {
            0 => format!("{years}y"),
            d => format!("{years}y{d}d"),
        };
    }
    format!("{years}y")
}

/// Renders `objects` of `kind` as a table: NAME, then the kind's printer
/// columns in its CRD's order (with NAMESPACE first when they span
/// several).
pub fn render(kind: &str, objects: &[Value]) -> String {
    render_at(kind, objects, jiff::Timestamp::now(), colour())
}

fn render_at(kind: &str, objects: &[Value], now: jiff::Timestamp, colour: bool) -> String {
    if objects.is_empty() {
        return "No resources found.\n".to_owned();
    }
    let namespaces: std::collections::BTreeSet<String> = objects
        .iter()
        .map(|o| string(&o["metadata"]["namespace"]))
        .collect();
    let many = namespaces.len() > 1;
    let mut columns = columns(kind);
    columns.insert(0, ("NAME", Cell::Text("/metadata/name")));
    if many {
        columns.insert(0, ("NAMESPACE", Cell::Text("/metadata/namespace")));
    }
    let header: Vec<String> = columns.iter().map(|(h, _)| (*h).to_owned()).collect();
    let mut rows = vec![header];
    for object in objects {
        let row = columns
            .iter()
            .map(|(_, cell)| match cell {
                Cell::Text(pointer) => object.pointer(pointer).map(string).unwrap_or_default(),
                Cell::Age(pointer) => object
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .map(|t| age(t, now))
                    .unwrap_or_default(),
                Cell::Status(kind) => condition(object, kind)
                    .map(|c| string(&c["status"]))
                    .unwrap_or_else(|| "Unknown".to_owned()),
                Cell::Reason(kind) => condition(object, kind)
                    .map(|c| string(&c["reason"]))
                    .unwrap_or_default(),
            })
            .collect();
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&columns)
            .enumerate()
            .map(|(i, (cell, (_, what)))| {
                let pad = " ".repeat(widths[i] - cell.chars().count());
                if n > 0 && matches!(what, Cell::Status(_)) {
                    format!("{}{pad}", status(cell, colour))
                } else {
                    format!("{cell}{pad}")
                }
            })
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> jiff::Timestamp {
        "2025-01-01T12:00:00Z".parse().expect("a timestamp")
    }

    fn header(kind: &str, object: Value) -> (String, String) {
        let table = render_at(kind, &[object], now(), false);
        let mut lines = table.lines().map(|l| {
            l.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
                .join("|")
        });
        (
            lines.next().unwrap_or_default(),
            lines.next().unwrap_or_default(),
        )
    }

    fn ready(reason: &str) -> Value {
        json!([{"type": "Ready", "status": "True", "reason": reason}])
    }

    #[test]
    fn a_service_shows_url_revisions_and_readiness() {
        let (head, row) = header(
            "service",
            json!({
                "metadata": {"name": "hello", "namespace": "default"},
                "status": {
                    "url": "http://hello.default.localhost",
                    "latestCreatedRevisionName": "hello-00001",
                    "latestReadyRevisionName": "hello-00001",
                    "conditions": ready("")
                }
            }),
        );
        assert_eq!(head, "NAME|URL|LATESTCREATED|LATESTREADY|READY|REASON");
        assert_eq!(
            row,
            "hello|http://hello.default.localhost|hello-00001|hello-00001|True"
        );
        assert_eq!(render("service", &[]), "No resources found.\n");
    }

    #[test]
    fn a_revision_puts_readiness_before_its_replicas() {
        let (head, row) = header(
            "revision",
            json!({
                "metadata": {
                    "name": "hello-00001",
                    "namespace": "default",
                    "labels": {
                        "serving.knative.dev/configuration": "hello",
                        "serving.knative.dev/configurationGeneration": "1"
                    }
                },
                "status": {"actualReplicas": 2, "desiredReplicas": 3, "conditions": ready("")}
            }),
        );
        assert_eq!(
            head,
            "NAME|CONFIG NAME|GENERATION|READY|REASON|ACTUAL REPLICAS|DESIRED REPLICAS"
        );
        assert_eq!(row, "hello-00001|hello|1|True|2|3");
    }

    #[test]
    fn eventing_kinds_show_their_age_before_readiness() {
        let created = "2025-01-01T11:56:40Z";
        let (head, row) = header(
            "broker",
            json!({
                "metadata": {
                    "name": "default",
                    "namespace": "default",
                    "creationTimestamp": created,
                    "annotations": {"eventing.knative.dev/broker.class": "MTChannelBasedBroker"}
                },
                "status": {
                    "address": {"url": "http://127.0.0.1:8081/default/default"},
                    "conditions": ready("")
                }
            }),
        );
        assert_eq!(head, "NAME|URL|AGE|READY|REASON|CLASS");
        assert_eq!(
            row,
            "default|http://127.0.0.1:8081/default/default|3m20s|True|MTChannelBasedBroker"
        );
        let (head, row) = header(
            "trigger",
            json!({
                "metadata": {"name": "orders", "namespace": "default", "creationTimestamp": created},
                "spec": {"broker": "default"},
                "status": {
                    "subscriberUri": "http://display.default.svc.cluster.local",
                    "conditions": [{"type": "Ready", "status": "False", "reason": "Unreachable"}]
                }
            }),
        );
        assert_eq!(head, "NAME|BROKER|SUBSCRIBER_URI|AGE|READY|REASON");
        assert_eq!(
            row,
            "orders|default|http://display.default.svc.cluster.local|3m20s|False|Unreachable"
        );
        let subscription = json!({"metadata": {"name": "s", "creationTimestamp": created}});
        assert_eq!(
            header("subscription", subscription).0,
            "NAME|AGE|READY|REASON"
        );
        let ping = json!({"metadata": {"name": "p", "creationTimestamp": created}});
        assert_eq!(
            header("pingsource", ping.clone()).0,
            "NAME|SINK|SCHEDULE|AGE|READY|REASON"
        );
        assert_eq!(
            header("inmemorychannel", ping.clone()).0,
            "NAME|URL|AGE|READY|REASON"
        );
        assert_eq!(
            header("containersource", ping).0,
            "NAME|SINK|AGE|READY|REASON"
        );
    }

    #[test]
    fn runs_show_success_then_their_times_and_tasks_their_age() {
        let (head, row) = header(
            "pipelinerun",
            json!({
                "metadata": {"name": "build-app-1", "namespace": "default"},
                "status": {
                    "startTime": "2025-01-01T11:59:15Z",
                    "completionTime": "2025-01-01T11:59:50Z",
                    "conditions": [{"type": "Succeeded", "status": "True", "reason": "Succeeded"}]
                }
            }),
        );
        assert_eq!(head, "NAME|SUCCEEDED|REASON|STARTTIME|COMPLETIONTIME");
        assert_eq!(row, "build-app-1|True|Succeeded|45s|10s");
        let task = json!({"metadata": {"name": "t", "creationTimestamp": "2024-12-30T08:00:00Z"}});
        assert_eq!(
            header("task", task),
            ("NAME|AGE".to_owned(), "t|2d4h".to_owned())
        );
    }

    #[test]
    fn several_namespaces_add_a_namespace_column_first() {
        let objects = [
            json!({"metadata": {"name": "a", "namespace": "one"}}),
            json!({"metadata": {"name": "b", "namespace": "two"}}),
        ];
        let table = render_at("route", &objects, now(), false);
        assert!(
            table.starts_with("NAMESPACE   NAME   URL   READY     REASON\n"),
            "{table}"
        );
        assert!(
            table.contains("one         a            Unknown"),
            "{table}"
        );
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        let ago = |seconds: i64| {
            let then = now()
                .checked_sub(jiff::SignedDuration::from_secs(seconds))
                .expect("in range");
            age(&then.to_string(), now())
        };
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(119), "119s");
        assert_eq!(ago(120), "2m");
        assert_eq!(ago(200), "3m20s");
        assert_eq!(ago(3600), "60m");
        assert_eq!(ago(4 * 3600 + 60), "4h1m");
        assert_eq!(ago(30 * 3600), "30h");
        assert_eq!(ago(3 * 86400), "3d");
        assert_eq!(ago(100 * 86400), "100d");
        assert_eq!(ago(3 * 365 * 86400 + 86400), "3y1d");
        assert_eq!(ago(-10), "<invalid>");
        assert_eq!(age("yesterday", now()), "<invalid>");
    }
}
