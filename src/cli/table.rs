//! Tables for `knative get`, with kubectl's columns for each kind.

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

/// The columns of a kind: (header, JSON pointer).
fn columns(kind: &str) -> Vec<(&'static str, &'static str)> {
    match kind {
        "service" => vec![
            ("URL", "/status/url"),
            ("LATESTCREATED", "/status/latestCreatedRevisionName"),
            ("LATESTREADY", "/status/latestReadyRevisionName"),
        ],
        "configuration" => vec![
            ("LATESTCREATED", "/status/latestCreatedRevisionName"),
            ("LATESTREADY", "/status/latestReadyRevisionName"),
        ],
        "revision" => vec![
            (
                "CONFIG NAME",
                "/metadata/labels/serving.knative.dev~1configuration",
            ),
            (
                "GENERATION",
                "/metadata/labels/serving.knative.dev~1configurationGeneration",
            ),
            ("ACTUAL REPLICAS", "/status/actualReplicas"),
            ("DESIRED REPLICAS", "/status/desiredReplicas"),
        ],
        "route" => vec![("URL", "/status/url")],
        "broker" => vec![("URL", "/status/address/url")],
        "trigger" => vec![
            ("BROKER", "/spec/broker"),
            ("SUBSCRIBER_URI", "/status/subscriberUri"),
        ],
        "inmemorychannel" | "channel" | "sequence" | "parallel" => {
            vec![("URL", "/status/address/url")]
        }
        "pingsource" => vec![("SINK", "/status/sinkUri"), ("SCHEDULE", "/spec/schedule")],
        "containersource" | "sinkbinding" => vec![("SINK", "/status/sinkUri")],
        "taskrun" | "pipelinerun" => vec![
            ("STARTTIME", "/status/startTime"),
            ("COMPLETIONTIME", "/status/completionTime"),
        ],
        _ => Vec::new(),
    }
}

/// Renders `objects` of `kind` as a table: NAME, the kind's columns,
/// READY, REASON (and NAMESPACE when they span several).
pub fn render(kind: &str, objects: &[Value]) -> String {
    if objects.is_empty() {
        return "No resources found.\n".to_owned();
    }
    let colour = colour();
    let namespaces: std::collections::BTreeSet<String> = objects
        .iter()
        .map(|o| string(&o["metadata"]["namespace"]))
        .collect();
    let many = namespaces.len() > 1;
    let columns = columns(kind);
    let mut header: Vec<String> = Vec::new();
    if many {
        header.push("NAMESPACE".to_owned());
    }
    header.push("NAME".to_owned());
    header.extend(columns.iter().map(|(h, _)| (*h).to_owned()));
    let runs = matches!(kind, "taskrun" | "pipelinerun");
    header.push(if runs { "SUCCEEDED" } else { "READY" }.to_owned());
    header.push("REASON".to_owned());
    let mut rows = vec![header];
    for object in objects {
        let mut row = Vec::new();
        if many {
            row.push(string(&object["metadata"]["namespace"]));
        }
        row.push(string(&object["metadata"]["name"]));
        for (_, pointer) in &columns {
            row.push(object.pointer(pointer).map(string).unwrap_or_default());
        }
        let ready = condition(object, "Ready").or_else(|| condition(object, "Succeeded"));
        row.push(
            ready
                .map(|c| string(&c["status"]))
                .unwrap_or_else(|| "Unknown".to_owned()),
        );
        row.push(ready.map(|c| string(&c["reason"])).unwrap_or_default());
        rows.push(row);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let ready_column = rows[0].len() - 2;
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let pad = " ".repeat(widths[i] - cell.chars().count());
                if n > 0 && i == ready_column {
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

    #[test]
    fn a_table_has_the_kinds_columns_and_readiness() {
        let objects = vec![serde_json::json!({
            "metadata": {"name": "hello", "namespace": "default"},
            "status": {
                "url": "http://hello.default.localhost",
                "latestCreatedRevisionName": "hello-00001",
                "latestReadyRevisionName": "hello-00001",
                "conditions": [{"type": "Ready", "status": "True", "reason": ""}]
            }
        })];
        let table = render("service", &objects);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("NAME"), "{table}");
        assert!(lines[0].contains("URL") && lines[0].contains("LATESTREADY"));
        assert!(lines[1].contains("http://hello.default.localhost"));
        assert!(lines[1].contains("True"));
        assert_eq!(render("service", &[]), "No resources found.\n");
    }
}
