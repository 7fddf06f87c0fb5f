//! PingSource logic without timers: cron [`Schedule`]s, the event a ping
//! emits ([`ping_event`]), and the adapter environment a SinkBinding or
//! ContainerSource injects ([`sink_env`]) (`specs/EVENTING.md §6`).
//!
//! # Schedules
//!
//! Upstream parses PingSource schedules with Go's `robfig/cron` (v3): five
//! fields (minute, hour, day of month, month, day of week) or six with a
//! leading seconds field, `*`/`?`, lists, ranges, steps (`5/15` means
//! `5-59/15`), case-insensitive month and weekday names, the descriptors
//! `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight` and
//! `@hourly`, and a `CRON_TZ=`/`TZ=` prefix; Knative rejects `@every`.
//! When day of month and day of week are both restricted a day matching
//! either fires; when either starts with `*` both must match.
//!
//! [`Schedule::parse`] checks exactly that grammar itself (so croner's
//! extensions — `L`, `W`, `#`, a year field, weekday `7` — are rejected as
//! robfig rejects them) and hands a normalised numeric pattern to
//! [`croner`] for evaluation. croner was chosen because it is maintained,
//! parses 5- and 6-field patterns, has a `jiff` backend (the workspace's
//! time crate: IANA zones from the system database, as Go's
//! `time.LoadLocation` reads them) and computes occurrences on the wall
//! clock of a zone, correctly across DST changes. The `cron` crate was
//! passed over: it requires the seconds field, so standard 5-field
//! schedules would have to be rewritten, and it has no `jiff` support.
//!
//! One DST difference remains: a wall-clock time that a spring-forward gap
//! skips fires right after the gap here (croner follows the Open Cron
//! Pattern Specification), where robfig/cron skips it that day. Repeated
//! wall-clock times after a fall-back fire once for fixed-time schedules.
//! A schedule without a zone is read in UTC (upstream uses the adapter's
//! system zone, which is UTC in its container image).
//!
//! ```
//! use knative_eventing::ping::Schedule;
//!
//! let every_five = Schedule::parse("*/5 * * * *", None).unwrap();
//! let t: jiff::Timestamp = "2026-03-01T10:02:30Z".parse().unwrap();
//! assert_eq!(every_five.next_after(t).unwrap().to_string(), "2026-03-01T10:05:00Z");
//! assert!(Schedule::parse("@every 1m", None).is_err());
//! ```

use base64::Engine as _;
use cloudevents::{AttributesWriter, Data, Event};
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::api::sources::{CeOverrides, PingSource, RESERVED_ATTRIBUTE_NAMES};
use crate::binding;

/// Environment variable with the resolved sink URL.
pub const ENV_SINK: &str = "K_SINK";
/// Environment variable with the JSON of the source's `ceOverrides`.
pub const ENV_CE_OVERRIDES: &str = "K_CE_OVERRIDES";

/// Why a schedule or time zone was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The schedule is empty.
    #[error("empty schedule")]
    Empty,
    /// `@every` is not supported by PingSource.
    #[error(
        "unsupported descriptor @every: use a cron expression or one of @yearly, @annually, \
         @monthly, @weekly, @daily, @midnight, @hourly"
    )]
    Every,
    /// An `@` descriptor robfig/cron does not know.
    #[error(
        "unrecognized descriptor {0:?}: expected @yearly, @annually, @monthly, @weekly, \
         @daily, @midnight or @hourly"
    )]
    UnknownDescriptor(String),
    /// Not 5 or 6 fields.
    #[error(
        "expected 5 fields (minute hour day-of-month month day-of-week) or 6 with leading \
         seconds, found {0}"
    )]
    FieldCount(usize),
    /// A field does not parse or is out of range.
    #[error("{field} field {value:?}: {reason}")]
    Field {
        /// The field's name, e.g. `minute`.
        field: &'static str,
        /// The field as written.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// The time zone is set both in `timezone` and as a `CRON_TZ=` prefix.
    #[error("the time zone is given twice: as {0:?} and in the schedule")]
    TimezoneTwice(String),
    /// The time zone is unknown.
    #[error("provided bad location {name}: {reason}")]
    BadTimezone {
        /// The zone as written.
        name: String,
        /// Why it could not be loaded.
        reason: String,
    },
    /// The evaluator rejected the normalised pattern (should not happen).
    #[error("invalid schedule: {0}")]
    Cron(String),
}

/// A parsed PingSource schedule in a time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
    zone_name: Option<String>,
    pattern: String,
}

/// One cron field's name, bounds and value names.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: FieldSpec = FieldSpec {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY_OF_MONTH: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
/// Month names map to 1..=12: index + 1.
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
/// Weekday names map to 0..=6 (Sunday = 0): their index.
const DAY_OF_WEEK: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 6,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

impl FieldSpec {
    fn error(&self, value: &str, reason: impl Into<String>) -> ScheduleError {
        ScheduleError::Field {
            field: self.name,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }

    /// A number or (for months and weekdays) a name, within bounds.
    fn value(&self, field: &str, token: &str) -> Result<u32, ScheduleError> {
        let lower = token.to_ascii_lowercase();
        let value = match self.names.iter().position(|n| *n == lower) {
            Some(i) => {
                let i = u32::try_from(i).map_err(|_| self.error(field, "bad name"))?;
                if self.min == 1 { i + 1 } else { i }
            }
            None => token
                .parse::<u32>()
                .map_err(|_| self.error(field, format!("{token:?} is not a number")))?,
        };
        if value < self.min || value > self.max {
            return Err(self.error(
                field,
                format!("{value} is outside {}-{}", self.min, self.max),
            ));
        }
        Ok(value)
    }

    /// Normalises one field to numbers croner reads the same way; also
    /// returns whether a part was `*` or `?` (robfig's "star bit").
    fn normalise(&self, field: &str) -> Result<(String, bool), ScheduleError> {
        let mut parts = Vec::new();
        let mut star = false;
        for part in field.split(',') {
            let (range, step) = match part.split_once('/') {
                Some((range, step)) => {
                    let step = step
                        .parse::<u32>()
                        .ok()
                        .filter(|s| *s > 0)
                        .ok_or_else(|| self.error(field, format!("bad step {step:?}")))?;
                    (range, Some(step))
                }
                None => (part, None),
            };
            let bounds = if range == "*" || range == "?" {
                star = true;
                None
            } else {
                let mut ends = range.split('-');
                let (low, high) = match (ends.next(), ends.next(), ends.next()) {
                    (Some(low), None, _) => {
                        let low = self.value(field, low)?;
                        // `N/step` runs from N to the end of the range.
                        (low, if step.is_some() { self.max } else { low })
                    }
                    (Some(low), Some(high), None) => {
                        (self.value(field, low)?, self.value(field, high)?)
                    }
                    _ => return Err(self.error(field, format!("bad range {range:?}"))),
                };
                if low > high {
                    return Err(self.error(field, format!("range {range:?} starts after its end")));
                }
                Some((low, high))
            };
            parts.push(match (bounds, step) {
                (None, None) => "*".to_owned(),
                (None, Some(step)) => format!("*/{step}"),
                (Some((low, high)), None) if low == high => low.to_string(),
                (Some((low, high)), None) => format!("{low}-{high}"),
                (Some((low, high)), Some(step)) => format!("{low}-{high}/{step}"),
            });
        }
        Ok((parts.join(","), star))
    }
}

/// The six-field pattern a robfig/cron descriptor stands for.
fn descriptor(spec: &str) -> Result<&'static str, ScheduleError> {
    Ok(match spec {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * 0",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        other => return Err(ScheduleError::UnknownDescriptor(other.to_owned())),
    })
}

/// Loads a zone as Go's `time.LoadLocation` would: empty and `UTC` are UTC,
/// `Local` is the system zone, anything else an IANA name.
fn load_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    match name {
        "" | "UTC" => Ok(TimeZone::UTC),
        "Local" => Ok(TimeZone::system()),
        _ => TimeZone::get(name).map_err(|e| ScheduleError::BadTimezone {
            name: name.to_owned(),
            reason: e.to_string(),
        }),
    }
}

impl Schedule {
    /// Parses `schedule` read in `timezone` (an IANA name; `None` or empty:
    /// UTC). Errors about the zone are [`ScheduleError::BadTimezone`].
    pub fn parse(schedule: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let mut spec = schedule.trim();
        if spec.is_empty() {
            return Err(ScheduleError::Empty);
        }
        if spec.contains("@every") {
            return Err(ScheduleError::Every);
        }
        let mut zone_name = timezone.filter(|tz| !tz.is_empty()).map(str::to_owned);
        if let Some(prefixed) = spec
            .strip_prefix("CRON_TZ=")
            .or_else(|| spec.strip_prefix("TZ="))
        {
            let (name, rest) = prefixed
                .split_once(char::is_whitespace)
                .unwrap_or((prefixed, ""));
            if let Some(given) = zone_name {
                return Err(ScheduleError::TimezoneTwice(given));
            }
            zone_name = Some(name.to_owned());
            spec = rest.trim();
        }
        let zone = load_zone(zone_name.as_deref().unwrap_or(""))?;

        let fields: Vec<&str> = if spec.starts_with('@') {
            descriptor(spec)?.split(' ').collect()
        } else {
            spec.split_whitespace().collect()
        };
        let specs: &[FieldSpec] = match fields.len() {
            5 => &[MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
            6 => &[SECOND, MINUTE, HOUR, DAY_OF_MONTH, MONTH, DAY_OF_WEEK],
            n => return Err(ScheduleError::FieldCount(n)),
        };
        let mut normalised = Vec::with_capacity(6);
        if fields.len() == 5 {
            normalised.push("0".to_owned());
        }
        let mut stars = Vec::with_capacity(6);
        for (field, field_spec) in fields.iter().zip(specs) {
            let (text, star) = field_spec.normalise(field)?;
            normalised.push(text);
            stars.push(star);
        }
        // robfig: when day of month or day of week has a `*`/`?` part, both
        // must match; otherwise either may.
        // The last three fields are day of month, month and day of week.
        let star_at = |from_end: usize| stars.iter().rev().nth(from_end).copied();
        let dom_and_dow = star_at(2) == Some(true) || star_at(0) == Some(true);
        let pattern = normalised.join(" ");
        let cron = CronParser::builder()
            .seconds(Seconds::Required)
            .year(Year::Disallowed)
            .dom_and_dow(dom_and_dow)
            .build()
            .parse(&pattern)
            .map_err(|e| ScheduleError::Cron(e.to_string()))?;
        Ok(Schedule {
            cron,
            zone,
            zone_name,
            pattern,
        })
    }

    /// The first firing strictly after `t`, or `None` if the schedule never
    /// fires again (e.g. `0 0 30 2 *`).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t.to_zoned(self.zone.clone());
        self.cron
            .find_next_occurrence(&start, false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The zone the schedule is read in.
    pub fn timezone(&self) -> &TimeZone {
        &self.zone
    }

    /// The zone's name as given, `None` for the UTC default.
    pub fn timezone_name(&self) -> Option<&str> {
        self.zone_name.as_deref()
    }

    /// The normalised six-field numeric pattern (seconds first).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

/// A jiff timestamp as the chrono time the CloudEvents SDK stores.
fn to_chrono(t: Timestamp) -> Option<chrono::DateTime<chrono::Utc>> {
    let mut secs = t.as_second();
    let mut nanos = t.subsec_nanosecond();
    if nanos < 0 {
        secs -= 1;
        nanos += 1_000_000_000;
    }
    chrono::DateTime::from_timestamp(secs, u32::try_from(nanos).ok()?)
}

/// The event `source` emits when it fires at `fire_time`.
///
/// Type `dev.knative.sources.ping`, source
/// `/apis/v1/namespaces/{ns}/pingsources/{name}`, a fresh UUID as id, the
/// fire time as `time`; `contentType` is the `datacontenttype`.
/// `ceOverrides` extensions are added (names of context attributes are
/// skipped).
///
/// The body is sent as written, as upstream's adapter sends the bytes of
/// `spec.data`: `data` is never parsed and re-encoded (which would reorder
/// object members and drop whitespace).
///
/// - `dataBase64`: the decoded bytes, [`Data::Binary`]. Validation rejects
///   `dataBase64` that does not decode; such a body is left out.
/// - `data` under a JSON content type (`application/json`, `*/json`,
///   `*/*+json`) or no content type: its bytes, [`Data::Binary`]. Binary
///   mode sends them as the body; structured mode as `data_base64` (the
///   JSON format's member for data that is kept as bytes).
/// - `data` under any other content type: [`Data::String`], which binary
///   mode sends as the body and structured mode as a `data` string.
pub fn ping_event(source: &PingSource, fire_time: Timestamp) -> Event {
    let spec = &source.spec;
    let mut event = Event::default();
    event.set_id(uuid::Uuid::new_v4().to_string());
    event.set_type(PingSource::EVENT_TYPE);
    event.set_source(source.event_source());
    event.set_time(to_chrono(fire_time));

    let data = if !spec.data_base64.is_empty() {
        base64::engine::general_purpose::STANDARD
            .decode(&spec.data_base64)
            .ok()
            .map(Data::Binary)
    } else if spec.data.is_empty() {
        None
    } else if spec.content_type.is_empty() || binding::is_json_content_type(&spec.content_type) {
        // The binding writes string data under a JSON (or no) content type
        // as a JSON string literal: bytes go out as they are.
        Some(Data::Binary(spec.data.as_bytes().to_vec()))
    } else {
        Some(Data::String(spec.data.clone()))
    };
    if let Some(data) = data {
        if spec.content_type.is_empty() {
            event.set_data_unchecked(data);
        } else {
            event.set_data(spec.content_type.clone(), data);
        }
    }

    for (name, value) in spec
        .source
        .ce_overrides
        .iter()
        .flat_map(|o| o.extensions.iter())
    {
        if !RESERVED_ATTRIBUTE_NAMES.contains(&name.as_str()) {
            event.set_extension(name, value.clone());
        }
    }
    event
}

/// The environment a SinkBinding injects into its subject's containers (and
/// a ContainerSource's): `K_SINK` = `sink_uri` and `K_CE_OVERRIDES` = the
/// JSON of `overrides` (`{"extensions":{"k":"v"}}`), empty when there are
/// none, as upstream sets it.
pub fn sink_env(sink_uri: &str, overrides: Option<&CeOverrides>) -> Vec<(String, String)> {
    let ce_overrides = overrides
        .and_then(|o| serde_json::to_string(o).ok())
        .unwrap_or_default();
    vec![
        (ENV_SINK.to_owned(), sink_uri.to_owned()),
        (ENV_CE_OVERRIDES.to_owned(), ce_overrides),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudevents::AttributesReader;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(schedule: &str, tz: Option<&str>, after: &str) -> String {
        Schedule::parse(schedule, tz)
            .expect("parses")
            .next_after(ts(after))
            .map(|t| t.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn robfig_grammar_is_normalised() {
        let p = |s: &str| Schedule::parse(s, None).map(|s| s.pattern().to_owned());
        assert_eq!(p("*/5 * * * *").as_deref(), Ok("0 */5 * * * *"));
        assert_eq!(
            p("5/15 0 ? jan-mar MON-FRI").as_deref(),
            Ok("0 5-59/15 0 * 1-3 1-5")
        );
        assert_eq!(p("@weekly").as_deref(), Ok("0 0 0 * * 0"));
        assert!(matches!(
            p("0 0 * * 7"),
            Err(ScheduleError::Field {
                field: "day-of-week",
                ..
            })
        ));
        assert!(matches!(p("0 0 L * *"), Err(ScheduleError::Field { .. })));
        assert!(matches!(p("0 0 * * 5#2"), Err(ScheduleError::Field { .. })));
        assert!(matches!(
            p("* * * * * * 2030"),
            Err(ScheduleError::FieldCount(7))
        ));
        assert!(matches!(p("*/0 * * * *"), Err(ScheduleError::Field { .. })));
        assert!(matches!(
            p("@HOURLY"),
            Err(ScheduleError::UnknownDescriptor(_))
        ));
    }

    #[test]
    fn day_of_month_and_week_combine_like_robfig() {
        // Both restricted: either matches (1st of the month, or a Monday).
        assert_eq!(
            next("0 0 1 * 1", None, "2026-06-02T00:00:00Z"),
            "2026-06-08T00:00:00Z"
        );
        // A `*`-prefixed field makes both required: even days that are Mondays.
        assert_eq!(
            next("0 0 */2 * 1", None, "2026-06-01T00:00:00Z"),
            "2026-06-15T00:00:00Z"
        );
    }

    #[test]
    fn a_cron_tz_prefix_sets_the_zone_once() {
        let s = Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *", None).expect("parses");
        assert_eq!(s.timezone_name(), Some("Asia/Tokyo"));
        // 09:00 in Tokyo is midnight UTC; the start itself is excluded.
        assert_eq!(
            s.next_after(ts("2026-01-01T00:00:00Z"))
                .map(|t| t.to_string()),
            Some("2026-01-02T00:00:00Z".to_owned())
        );
        assert!(matches!(
            Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *", Some("UTC")),
            Err(ScheduleError::TimezoneTwice(_))
        ));
    }

    fn source(content_type: &str, data: &str) -> PingSource {
        let mut source: PingSource = serde_yaml::from_str(
            "metadata: {name: p, namespace: ns}\nspec: {schedule: '* * * * *'}\n",
        )
        .expect("ping source");
        source.spec.content_type = content_type.to_owned();
        source.spec.data = data.to_owned();
        source
    }

    const UNSORTED: &str = r#"{"b":1,  "a":2}"#;

    #[test]
    fn json_data_is_sent_byte_for_byte() {
        let event = ping_event(
            &source("application/json", UNSORTED),
            ts("2026-03-01T10:06:00Z"),
        );
        assert_eq!(event.datacontenttype(), Some("application/json"));
        let (headers, body) = binding::write_binary(&event).expect("binary");
        assert_eq!(std::str::from_utf8(&body), Ok(UNSORTED));
        assert_eq!(
            headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );

        // Structured mode: valid JSON whose data decodes to the same bytes.
        let (headers, body) = binding::write_structured(&event).expect("structured");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(json["datacontenttype"], "application/json");
        let (_, read) = binding::read_request(&headers, &body, &binding::Limits::default())
            .expect("reads back");
        assert_eq!(
            read[0].data(),
            Some(&Data::Binary(UNSORTED.as_bytes().to_vec()))
        );

        // `+json` types and no content type at all: the bytes too, not a
        // JSON string literal.
        for ct in ["application/vnd.shop+json", ""] {
            let event = ping_event(&source(ct, UNSORTED), ts("2026-03-01T10:06:00Z"));
            let (headers, body) = binding::write_binary(&event).expect("binary");
            assert_eq!(std::str::from_utf8(&body), Ok(UNSORTED), "{ct:?}");
            let sent_ct = headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            assert_eq!(sent_ct, Some(ct).filter(|c| !c.is_empty()), "{ct:?}");
        }
    }

    #[test]
    fn text_data_is_sent_as_written() {
        let text = "  ping,  pong ";
        let event = ping_event(&source("text/plain", text), ts("2026-03-01T10:06:00Z"));
        assert_eq!(event.data(), Some(&Data::String(text.to_owned())));
        let (_, body) = binding::write_binary(&event).expect("binary");
        assert_eq!(std::str::from_utf8(&body), Ok(text));
        let (_, body) = binding::write_structured(&event).expect("structured");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("valid JSON");
        assert_eq!(json["data"], text);
    }

    #[test]
    fn sink_env_is_empty_overrides_without_extensions() {
        assert_eq!(
            sink_env("http://s", None),
            vec![
                ("K_SINK".to_owned(), "http://s".to_owned()),
                ("K_CE_OVERRIDES".to_owned(), String::new())
            ]
        );
    }
}
