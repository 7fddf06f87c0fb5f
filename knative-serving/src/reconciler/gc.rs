//! Revision garbage collection, configured by the `config-gc` ConfigMap.
//!
//! For each Configuration the collector decides which of its Revisions to
//! delete ([`revisions_to_delete`]):
//!
//! - Nothing happens when the Configuration has at most
//!   `min-non-active-revisions` Revisions, or when every deletion setting is
//!   disabled.
//! - *Active* Revisions are never collected: the latest ready Revision, any
//!   Revision annotated `serving.knative.dev/no-gc: "true"`, and any whose
//!   routing state is not `reserve`.
//! - The other (*non-active*) Revisions are ordered by when they were last
//!   active (routing-state change, else creation), oldest first. A
//!   non-active Revision is *stale* when it was created at least
//!   `retain-since-create-time` ago and last active at least
//!   `retain-since-last-active-time` ago (a disabled bound always holds;
//!   both disabled means nothing is stale). Stale Revisions are deleted
//!   oldest first, keeping at least `min-non-active-revisions` non-active
//!   ones.
//! - If more than `max-non-active-revisions` non-stale non-active Revisions
//!   remain, the oldest of them are deleted down to that maximum.
//!
//! Timestamps are Unix seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::RoutingState;

/// Name of the ConfigMap holding these settings.
pub const CONFIG_MAP_NAME: &str = "config-gc";

/// ConfigMap key: minimum age since creation before a Revision can be stale.
pub const RETAIN_SINCE_CREATE_TIME_KEY: &str = "retain-since-create-time";
/// ConfigMap key: minimum time since last active before a Revision can be
/// stale.
pub const RETAIN_SINCE_LAST_ACTIVE_TIME_KEY: &str = "retain-since-last-active-time";
/// ConfigMap key: non-active Revisions always kept.
pub const MIN_NON_ACTIVE_REVISIONS_KEY: &str = "min-non-active-revisions";
/// ConfigMap key: non-active Revisions kept at most, stale or not.
pub const MAX_NON_ACTIVE_REVISIONS_KEY: &str = "max-non-active-revisions";

/// The value that disables a duration or the maximum (any letter case).
const DISABLED: &str = "disabled";

/// Errors from reading the `config-gc` ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GcConfigError {
    /// A key does not hold a whole number.
    #[error("failed to parse {key}: {value:?} is not a valid integer: {reason}")]
    InvalidInteger {
        /// The ConfigMap key.
        key: String,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A key does not hold a Go duration (or `disabled`).
    #[error("failed to parse {key}: {value:?} is not a valid duration: {reason}")]
    InvalidDuration {
        /// The ConfigMap key.
        key: String,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// `min-non-active-revisions` is negative.
    #[error("min-non-active-revisions must be non-negative, was: {value}")]
    NegativeMinimum {
        /// The configured minimum.
        value: i64,
    },
    /// `min-non-active-revisions` exceeds an enabled maximum.
    #[error("min-non-active-revisions({min}) must be <= max-non-active-revisions({max})")]
    MinimumAboveMaximum {
        /// The configured minimum.
        min: i64,
        /// The configured maximum.
        max: u64,
    },
}

/// Revision GC settings (the `config-gc` ConfigMap). `None` means disabled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcConfig {
    /// A Revision created more recently than this is not stale.
    pub retain_since_create_time: Option<Duration>,
    /// A Revision active more recently than this is not stale.
    pub retain_since_last_active_time: Option<Duration>,
    /// Non-active Revisions always kept, stale or not.
    pub min_non_active_revisions: usize,
    /// Non-active Revisions kept at most, stale or not.
    pub max_non_active_revisions: Option<usize>,
}

impl Default for GcConfig {
    /// Upstream's defaults: 48h, 15h, 20 and 1000.
    fn default() -> Self {
        GcConfig {
            retain_since_create_time: Some(Duration::from_secs(48 * 3600)),
            retain_since_last_active_time: Some(Duration::from_secs(15 * 3600)),
            min_non_active_revisions: 20,
            max_non_active_revisions: Some(1000),
        }
    }
}

impl GcConfig {
    /// Reads the settings from the ConfigMap's data, starting from the
    /// defaults.
    ///
    /// The two durations are Go durations (`"48h"`, `"1h30m"`, `"0"`) or
    /// `disabled`, and must not be negative; the maximum is a non-negative
    /// integer or `disabled`; an empty value for any of these three keeps
    /// the default. The minimum is an integer (an empty value is an error)
    /// and must be non-negative and, unless the maximum is disabled, at
    /// most the maximum. Other keys are ignored.
    pub fn from_config_map(data: &BTreeMap<String, String>) -> Result<GcConfig, GcConfigError> {
        let mut config = GcConfig::default();
        let mut min = i64::try_from(config.min_non_active_revisions).unwrap_or(i64::MAX);
        if let Some(raw) = data.get(MIN_NON_ACTIVE_REVISIONS_KEY) {
            min = parse_go_int(raw).map_err(|reason| GcConfigError::InvalidInteger {
                key: MIN_NON_ACTIVE_REVISIONS_KEY.to_owned(),
                value: raw.clone(),
                reason,
            })?;
        }
        if let Some(raw) = data.get(RETAIN_SINCE_CREATE_TIME_KEY) {
            parse_disabled_or_duration(
                RETAIN_SINCE_CREATE_TIME_KEY,
                raw,
                &mut config.retain_since_create_time,
            )?;
        }
        if let Some(raw) = data.get(RETAIN_SINCE_LAST_ACTIVE_TIME_KEY) {
            parse_disabled_or_duration(
                RETAIN_SINCE_LAST_ACTIVE_TIME_KEY,
                raw,
                &mut config.retain_since_last_active_time,
            )?;
        }
        let mut max = config.max_non_active_revisions.map(|m| m as u64);
        if let Some(raw) = data.get(MAX_NON_ACTIVE_REVISIONS_KEY) {
            parse_disabled_or_count(raw, &mut max)?;
        }
        if min < 0 {
            return Err(GcConfigError::NegativeMinimum { value: min });
        }
        if let Some(max) = max
            && min.unsigned_abs() > max
        {
            return Err(GcConfigError::MinimumAboveMaximum { min, max });
        }
        config.min_non_active_revisions = usize::try_from(min).unwrap_or(usize::MAX);
        config.max_non_active_revisions = max.map(|m| usize::try_from(m).unwrap_or(usize::MAX));
        Ok(config)
    }
}

/// Reads a duration setting that may be `disabled`; empty keeps `target`.
fn parse_disabled_or_duration(
    key: &str,
    raw: &str,
    target: &mut Option<Duration>,
) -> Result<(), GcConfigError> {
    if raw.is_empty() {
        return Ok(());
    }
    if go_equal_fold(raw, DISABLED) {
        *target = None;
        return Ok(());
    }
    let duration = knative_core::duration::parse_go(raw)
        .map_err(|e| e.reason().to_owned())
        .map_err(|reason| GcConfigError::InvalidDuration {
            key: key.to_owned(),
            value: raw.to_owned(),
            reason,
        })?;
    *target = Some(duration);
    Ok(())
}

/// Reads `max-non-active-revisions`, which may be `disabled`; empty keeps
/// `target`.
fn parse_disabled_or_count(raw: &str, target: &mut Option<u64>) -> Result<(), GcConfigError> {
    if raw.is_empty() {
        return Ok(());
    }
    if go_equal_fold(raw, DISABLED) {
        *target = None;
        return Ok(());
    }
    let invalid = |reason: String| GcConfigError::InvalidInteger {
        key: MAX_NON_ACTIVE_REVISIONS_KEY.to_owned(),
        value: raw.to_owned(),
        reason,
    };
    // Go's strconv.ParseUint: decimal digits only, no sign.
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("expected decimal digits".to_owned()));
    }
    let value: u64 = raw.parse().map_err(|e| invalid(format!("{e}")))?;
    if value > i64::MAX as u64 {
        return Err(invalid(format!("value should be lower than {}", i64::MAX)));
    }
    *target = Some(value);
    Ok(())
}

/// Go's `strconv.ParseInt(s, 10, 64)`: optional sign, decimal digits.
fn parse_go_int(raw: &str) -> Result<i64, String> {
    let digits = raw.strip_prefix(['+', '-']).unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("expected an optionally signed decimal integer".to_owned());
    }
    raw.parse::<i64>().map_err(|e| format!("{e}"))
}

/// Go's `strings.EqualFold` against a lower-case ASCII word: ASCII letters
/// match either case, and so do the two non-ASCII characters that fold to
/// ASCII letters (U+017F for `s`, U+212A for `k`).
fn go_equal_fold(input: &str, word: &str) -> bool {
    let folded = input.chars().map(|c| match c {
        '\u{17f}' => 's',
        '\u{212a}' => 'k',
        c => c.to_ascii_lowercase(),
    });
    folded.eq(word.chars())
}

/// Whether a [`NO_GC`](crate::api::keys::NO_GC) value exempts the Revision (`true`, any
/// letter case).
pub fn no_gc_annotation_set(value: Option<&str>) -> bool {
    value.is_some_and(|v| go_equal_fold(v, "true"))
}

/// One Revision of the Configuration being collected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcCandidate {
    /// The Revision's name.
    pub name: String,
    /// Creation time (Unix seconds).
    pub created: i64,
    /// When the routing state last changed (Unix seconds), if recorded.
    pub last_active: Option<i64>,
    /// The routing state (`None` when the label is missing or unknown).
    pub routing_state: Option<RoutingState>,
    /// Whether [`NO_GC`](crate::api::keys::NO_GC) is set to true.
    pub no_gc: bool,
}

impl GcCandidate {
    /// When the Revision was last active: the routing-state change, else
    /// its creation.
    pub fn last_active_time(&self) -> i64 {
        self.last_active.unwrap_or(self.created)
    }

    /// Whether the Revision is exempt from collection.
    fn is_active(&self, latest_ready: Option<&str>) -> bool {
        latest_ready == Some(self.name.as_str())
            || self.no_gc
            || self.routing_state != Some(RoutingState::Reserve)
    }

    /// Whether both retention bounds have passed at `now`.
    fn is_stale(&self, config: &GcConfig, now: i64) -> bool {
        let (create, active) = (
            config.retain_since_create_time,
            config.retain_since_last_active_time,
        );
        if create.is_none() && active.is_none() {
            return false;
        }
        let retained = |since: i64, bound: Option<Duration>| {
            bound.is_some_and(|bound| {
                let elapsed_nanos = (i128::from(now) - i128::from(since)) * 1_000_000_000;
                elapsed_nanos < bound.as_nanos() as i128
            })
        };
        !retained(self.created, create) && !retained(self.last_active_time(), active)
    }
}

/// Chooses the Revisions of one Configuration to delete, in deletion order.
///
/// `candidates` are all the Configuration's Revisions (active ones
/// included: they count towards the minimum), `latest_ready` its
/// `status.latestReadyRevisionName`, `now` the current Unix time in
/// seconds. Non-active Revisions are ordered by last-active time, then
/// creation time, then name (upstream's sort is unstable on ties; this
/// order is deterministic).
pub fn revisions_to_delete(
    config: &GcConfig,
    latest_ready: Option<&str>,
    candidates: &[GcCandidate],
    now: i64,
) -> Vec<String> {
    let min = config.min_non_active_revisions;
    if config.max_non_active_revisions.is_none()
        && config.retain_since_create_time.is_none()
        && config.retain_since_last_active_time.is_none()
    {
        return Vec::new();
    }
    if candidates.len() <= min {
        return Vec::new();
    }
    let mut non_active: Vec<&GcCandidate> = candidates
        .iter()
        .filter(|c| !c.is_active(latest_ready))
        .collect();
    if non_active.len() <= min {
        return Vec::new();
    }
    non_active.sort_by(|a, b| {
        a.last_active_time()
            .cmp(&b.last_active_time())
            .then_with(|| a.created.cmp(&b.created))
            .then_with(|| a.name.cmp(&b.name))
    });

    // Keep at least `min` non-active Revisions.
    let deletable = non_active.len() - min;
    let mut deleted = vec![false; non_active.len()];
    let mut out = Vec::new();
    for (i, candidate) in non_active.iter().enumerate() {
        if !candidate.is_stale(config, now) {
            continue;
        }
        tracing::info!(revision = %candidate.name, "deleting stale revision");
        out.push(candidate.name.clone());
        deleted[i] = true;
        if out.len() >= deletable {
            return out;
        }
    }

    let non_stale = non_active.len() - out.len();
    let Some(max) = config.max_non_active_revisions else {
        return out;
    };
    if non_stale <= max {
        return out;
    }
    let extra = non_stale - max;
    tracing::info!(
        max,
        extra,
        "maximum non-active revisions exceeded; deleting the oldest"
    );
    out.extend(
        non_active
            .iter()
            .zip(&deleted)
            .filter(|(_, deleted)| !**deleted)
            .take(extra)
            .map(|(candidate, _)| candidate.name.clone()),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3600;
    const NOW: i64 = 1_700_000_000;

    fn hours(h: u64) -> Option<Duration> {
        Some(Duration::from_secs(h * 3600))
    }

    fn config(
        create: Option<Duration>,
        active: Option<Duration>,
        min: usize,
        max: Option<usize>,
    ) -> GcConfig {
        GcConfig {
            retain_since_create_time: create,
            retain_since_last_active_time: active,
            min_non_active_revisions: min,
            max_non_active_revisions: max,
        }
    }

    /// A reserve Revision created `created_ago` hours ago, last active
    /// `active_ago` hours ago if given.
    fn reserve(name: &str, created_ago: i64, active_ago: Option<i64>) -> GcCandidate {
        GcCandidate {
            name: name.to_owned(),
            created: NOW - created_ago * H,
            last_active: active_ago.map(|a| NOW - a * H),
            routing_state: Some(RoutingState::Reserve),
            no_gc: false,
        }
    }

    fn with_state(mut c: GcCandidate, state: Option<RoutingState>) -> GcCandidate {
        c.routing_state = state;
        c
    }

    fn preserved(mut c: GcCandidate) -> GcCandidate {
        c.no_gc = true;
        c
    }

    struct Case {
        name: &'static str,
        config: GcConfig,
        latest_ready: Option<&'static str>,
        revisions: Vec<GcCandidate>,
        want: Vec<&'static str>,
    }

    #[test]
    fn revisions_to_delete_scenarios() {
        let default_times = |min, max| config(hours(48), hours(15), min, max);
        let cases = vec![
            Case {
                name: "at most min revisions in total: keep all",
                config: default_times(2, Some(1000)),
                latest_ready: None,
                revisions: vec![reserve("a", 100, None), reserve("b", 100, None)],
                want: vec![],
            },
            Case {
                name: "at most min non-active revisions: keep all",
                config: default_times(2, Some(1000)),
                latest_ready: Some("l"),
                revisions: vec![
                    reserve("a", 100, None),
                    reserve("b", 100, None),
                    with_state(reserve("c", 100, None), Some(RoutingState::Active)),
                    reserve("l", 100, None),
                ],
                want: vec![],
            },
            Case {
                name: "latest ready revision is never deleted",
                config: default_times(0, Some(1000)),
                latest_ready: Some("b"),
                revisions: vec![reserve("a", 100, None), reserve("b", 200, None)],
                want: vec!["a"],
            },
            Case {
                name: "no-gc revision is never deleted",
                config: default_times(0, Some(1000)),
                latest_ready: None,
                revisions: vec![preserved(reserve("a", 200, None)), reserve("b", 100, None)],
                want: vec!["b"],
            },
            Case {
                name: "routing states other than reserve are never deleted",
                config: default_times(0, Some(0)),
                latest_ready: None,
                revisions: vec![
                    with_state(reserve("pending", 300, None), Some(RoutingState::Pending)),
                    with_state(reserve("active", 300, None), Some(RoutingState::Active)),
                    with_state(reserve("unset", 300, None), None),
                    reserve("reserve", 100, None),
                ],
                want: vec!["reserve"],
            },
            Case {
                name: "stale ones go oldest-first by last active, then created",
                config: default_times(0, Some(1000)),
                latest_ready: None,
                revisions: vec![
                    reserve("a", 100, Some(20)),
                    reserve("b", 90, Some(30)),
                    reserve("c", 80, None),
                    reserve("d", 70, Some(30)),
                ],
                want: vec!["c", "b", "d", "a"],
            },
            Case {
                name: "recently created or recently active is not stale",
                config: default_times(0, Some(1000)),
                latest_ready: None,
                revisions: vec![
                    reserve("young", 47, None),
                    reserve("recently-active", 100, Some(14)),
                    reserve("stale", 100, Some(16)),
                ],
                want: vec!["stale"],
            },
            Case {
                name: "exactly at both retention bounds counts as stale",
                config: default_times(0, Some(1000)),
                latest_ready: None,
                revisions: vec![
                    reserve("edge", 48, Some(15)),
                    reserve("inside", 48, Some(14)),
                ],
                want: vec!["edge"],
            },
            Case {
                name: "stale deletions capped at non-active minus min",
                config: default_times(2, Some(1000)),
                latest_ready: Some("l"),
                revisions: vec![
                    reserve("l", 1, None),
                    reserve("e", 60, None),
                    reserve("d", 70, None),
                    reserve("c", 80, None),
                    reserve("b", 90, None),
                    reserve("a", 100, None),
                ],
                want: vec!["a", "b", "c"],
            },
            Case {
                name: "cap reached during stale pass skips the max pass",
                config: default_times(3, Some(3)),
                latest_ready: None,
                revisions: (1..=6)
                    .map(|i| {
                        reserve(
                            ["r1", "r2", "r3", "r4", "r5", "r6"][i - 1],
                            100 + i as i64,
                            None,
                        )
                    })
                    .collect(),
                want: vec!["r6", "r5", "r4"],
            },
            Case {
                name: "over max: oldest non-stale extras go after the stale ones",
                config: default_times(1, Some(2)),
                latest_ready: None,
                revisions: vec![
                    reserve("n0", 40, None),
                    reserve("s1", 100, Some(20)),
                    reserve("n1", 12, None),
                    reserve("n2", 11, None),
                    reserve("n3", 10, None),
                ],
                want: vec!["s1", "n0", "n1"],
            },
            Case {
                name: "create bound disabled: only last active counts",
                config: config(None, hours(15), 0, Some(1000)),
                latest_ready: None,
                revisions: vec![reserve("old-enough", 20, None), reserve("recent", 14, None)],
                want: vec!["old-enough"],
            },
            Case {
                name: "last-active bound disabled: only creation counts",
                config: config(hours(48), None, 0, Some(1000)),
                latest_ready: None,
                revisions: vec![reserve("old", 50, Some(1)), reserve("young", 47, None)],
                want: vec!["old"],
            },
            Case {
                name: "both bounds disabled: nothing is stale, max still applies",
                config: config(None, None, 0, Some(1)),
                latest_ready: None,
                revisions: vec![
                    reserve("a", 3, None),
                    reserve("b", 2, None),
                    reserve("c", 1, None),
                ],
                want: vec!["a", "b"],
            },
            Case {
                name: "everything disabled: nothing is deleted",
                config: config(None, None, 0, None),
                latest_ready: None,
                revisions: vec![reserve("a", 1000, None)],
                want: vec![],
            },
            Case {
                name: "max disabled: only stale revisions go",
                config: config(hours(48), hours(15), 0, None),
                latest_ready: None,
                revisions: vec![
                    reserve("s1", 100, None),
                    reserve("s2", 99, None),
                    reserve("f1", 1, None),
                    reserve("f2", 2, None),
                ],
                want: vec!["s1", "s2"],
            },
            Case {
                name: "zero durations make every non-active revision stale",
                config: config(Some(Duration::ZERO), Some(Duration::ZERO), 1, None),
                latest_ready: None,
                revisions: vec![reserve("a", 0, None), reserve("b", 0, Some(0))],
                want: vec!["a"],
            },
            Case {
                name: "min above max (built directly) deletes below min like upstream",
                config: config(None, None, 3, Some(1)),
                latest_ready: None,
                revisions: (1..=5)
                    .map(|i| reserve(["r1", "r2", "r3", "r4", "r5"][i - 1], i as i64, None))
                    .collect(),
                want: vec!["r5", "r4", "r3", "r2"],
            },
        ];
        for case in cases {
            let got = revisions_to_delete(&case.config, case.latest_ready, &case.revisions, NOW);
            assert_eq!(got, case.want, "{}", case.name);
        }
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn config_map_parsing_scenarios() {
        let cases = [
            (
                "empty map gives the defaults",
                data(&[]),
                GcConfig::default(),
            ),
            (
                "overrides",
                data(&[
                    (RETAIN_SINCE_CREATE_TIME_KEY, "17h"),
                    (RETAIN_SINCE_LAST_ACTIVE_TIME_KEY, "1h30m"),
                    (MIN_NON_ACTIVE_REVISIONS_KEY, "5"),
                    (MAX_NON_ACTIVE_REVISIONS_KEY, "500"),
                    ("stale-revision-create-delay", "ignored"),
                ]),
                config(hours(17), Some(Duration::from_secs(5400)), 5, Some(500)),
            ),
            (
                "disabled in any letter case",
                data(&[
                    (RETAIN_SINCE_CREATE_TIME_KEY, "disabled"),
                    (RETAIN_SINCE_LAST_ACTIVE_TIME_KEY, "Disabled"),
                    (MIN_NON_ACTIVE_REVISIONS_KEY, "0"),
                    (MAX_NON_ACTIVE_REVISIONS_KEY, "DISABLED"),
                ]),
                config(None, None, 0, None),
            ),
            (
                "empty values keep the defaults",
                data(&[
                    (RETAIN_SINCE_CREATE_TIME_KEY, ""),
                    (RETAIN_SINCE_LAST_ACTIVE_TIME_KEY, ""),
                    (MAX_NON_ACTIVE_REVISIONS_KEY, ""),
                ]),
                GcConfig::default(),
            ),
            (
                "zero durations and immediate collection",
                data(&[
                    (RETAIN_SINCE_CREATE_TIME_KEY, "0"),
                    (RETAIN_SINCE_LAST_ACTIVE_TIME_KEY, "0s"),
                    (MIN_NON_ACTIVE_REVISIONS_KEY, "0"),
                    (MAX_NON_ACTIVE_REVISIONS_KEY, "0"),
                ]),
                config(Some(Duration::ZERO), Some(Duration::ZERO), 0, Some(0)),
            ),
            (
                "signed minimum equal to maximum",
                data(&[
                    (MIN_NON_ACTIVE_REVISIONS_KEY, "+7"),
                    (MAX_NON_ACTIVE_REVISIONS_KEY, "7"),
                ]),
                config(hours(48), hours(15), 7, Some(7)),
            ),
            (
                "minimum above a disabled maximum",
                data(&[
                    (MIN_NON_ACTIVE_REVISIONS_KEY, "5000"),
                    (MAX_NON_ACTIVE_REVISIONS_KEY, "disabled"),
                ]),
                config(hours(48), hours(15), 5000, None),
            ),
        ];
        for (name, data, want) in cases {
            assert_eq!(GcConfig::from_config_map(&data), Ok(want), "{name}");
        }
    }

    #[test]
    fn config_map_errors_name_the_key_and_value() {
        let invalid_duration =
            |key: &str, value: &str| (key.to_owned(), value.to_owned(), "duration");
        let invalid_integer =
            |key: &str, value: &str| (key.to_owned(), value.to_owned(), "integer");
        let cases = [
            (
                "unparsable duration",
                data(&[(RETAIN_SINCE_CREATE_TIME_KEY, "invalid")]),
                invalid_duration(RETAIN_SINCE_CREATE_TIME_KEY, "invalid"),
            ),
            (
                "duration without unit",
                data(&[(RETAIN_SINCE_CREATE_TIME_KEY, "48")]),
                invalid_duration(RETAIN_SINCE_CREATE_TIME_KEY, "48"),
            ),
            (
                "negative duration",
                data(&[(RETAIN_SINCE_LAST_ACTIVE_TIME_KEY, "-1h")]),
                invalid_duration(RETAIN_SINCE_LAST_ACTIVE_TIME_KEY, "-1h"),
            ),
            (
                "padded duration",
                data(&[(RETAIN_SINCE_LAST_ACTIVE_TIME_KEY, " 15h")]),
                invalid_duration(RETAIN_SINCE_LAST_ACTIVE_TIME_KEY, " 15h"),
            ),
            (
                "empty minimum",
                data(&[(MIN_NON_ACTIVE_REVISIONS_KEY, "")]),
                invalid_integer(MIN_NON_ACTIVE_REVISIONS_KEY, ""),
            ),
            (
                "disabled minimum",
                data(&[(MIN_NON_ACTIVE_REVISIONS_KEY, "disabled")]),
                invalid_integer(MIN_NON_ACTIVE_REVISIONS_KEY, "disabled"),
            ),
            (
                "minus-one maximum",
                data(&[(MAX_NON_ACTIVE_REVISIONS_KEY, "-1")]),
                invalid_integer(MAX_NON_ACTIVE_REVISIONS_KEY, "-1"),
            ),
            (
                "signed maximum",
                data(&[(MAX_NON_ACTIVE_REVISIONS_KEY, "+5")]),
                invalid_integer(MAX_NON_ACTIVE_REVISIONS_KEY, "+5"),
            ),
            (
                "maximum above i64",
                data(&[(MAX_NON_ACTIVE_REVISIONS_KEY, "9223372036854775808")]),
                invalid_integer(MAX_NON_ACTIVE_REVISIONS_KEY, "9223372036854775808"),
            ),
            (
                "the minimum is checked before the durations",
                data(&[
                    (MIN_NON_ACTIVE_REVISIONS_KEY, "x"),
                    (RETAIN_SINCE_CREATE_TIME_KEY, "y"),
                ]),
                invalid_integer(MIN_NON_ACTIVE_REVISIONS_KEY, "x"),
            ),
        ];
        for (name, data, (key, value, kind)) in cases {
            let err = GcConfig::from_config_map(&data).err();
            let (got_key, got_value, got_kind) = match &err {
                Some(GcConfigError::InvalidDuration { key, value, .. }) => {
                    (key.clone(), value.clone(), "duration")
                }
                Some(GcConfigError::InvalidInteger { key, value, .. }) => {
                    (key.clone(), value.clone(), "integer")
                }
                other => panic!("{name}: unexpected {other:?}"),
            };
            assert_eq!(
                (got_key, got_value, got_kind),
                (key.clone(), value.clone(), kind),
                "{name}"
            );
            let message = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(
                message.contains(&key) && message.contains(&format!("{value:?}")),
                "{name}: {message}"
            );
        }

        assert_eq!(
            GcConfig::from_config_map(&data(&[(MIN_NON_ACTIVE_REVISIONS_KEY, "-1")])),
            Err(GcConfigError::NegativeMinimum { value: -1 })
        );
        assert_eq!(
            GcConfig::from_config_map(&data(&[
                (MIN_NON_ACTIVE_REVISIONS_KEY, "20"),
                (MAX_NON_ACTIVE_REVISIONS_KEY, "10")
            ])),
            Err(GcConfigError::MinimumAboveMaximum { min: 20, max: 10 })
        );
        let message = GcConfig::from_config_map(&data(&[(MAX_NON_ACTIVE_REVISIONS_KEY, "10")]))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            message.as_deref(),
            Some("min-non-active-revisions(20) must be <= max-non-active-revisions(10)")
        );
    }

    #[test]
    fn no_gc_parsing() {
        for (value, want) in [
            (Some("true"), true),
            (Some("TRUE"), true),
            (Some("True"), true),
            (Some("yes"), false),
            (Some(" true"), false),
            (Some(""), false),
            (None, false),
        ] {
            assert_eq!(no_gc_annotation_set(value), want, "{value:?}");
        }
        assert!(go_equal_fold("di\u{17f}abled", DISABLED));
    }
}
