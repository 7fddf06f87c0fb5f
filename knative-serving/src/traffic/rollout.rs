//! Gradual rollout of traffic to a Configuration's newest Revision.
//!
//! When a route sends traffic to a Configuration "by latest revision" and a
//! rollout duration is set (the `serving.knative.dev/rollout-duration`
//! annotation on the Route or Service, else config-network's
//! `rollout-duration`), a new latest-ready Revision does not take over at
//! once. Instead the route reconciler moves traffic over in steps:
//!
//! 1. When the new Revision appears it receives 1%, taken from the newest
//!    older Revision that still has traffic, and the start time is stamped.
//! 2. When the Ingress first reports Ready, the time that took is the
//!    smallest sensible step; from it and the rollout duration the number
//!    of steps, the size of each step and the time between steps are
//!    computed ([`Rollout::observe_ready`]).
//! 3. Every step moves `stepSize` points to the new Revision, draining the
//!    newest older Revision first; Revisions reaching 0% drop out and the
//!    rollout ends when a single Revision is left ([`Rollout::step`]).
//!
//! Rollouts are tracked per (Configuration, tag) pair. The state between
//! reconciles lives, as JSON, in the Ingress annotation
//! [`ROLLOUT_ANNOTATION`]; the JSON layout is the one upstream Knative
//! writes, so annotations written by either implementation can be read by
//! the other ([`Rollout::to_annotation`], [`Rollout::from_annotation`]).
//!
//! A reconcile therefore looks like:
//!
//! ```text
//! let duration = rollout_duration(&route.annotations, network.rollout_duration)?;
//! let goal = Rollout::from_targets(&RolloutTarget::from_route_targets(&traffic));
//! if duration.is_zero() { write goal.to_annotation(); return }
//! let mut prev = Rollout::from_annotation(ingress_annotation).ok();
//! if ingress just turned ready { prev.observe_ready(now, duration.as_secs_f64()) }
//! let (effective, next) = goal.step(prev.as_ref(), now);
//! // program the ingress from effective.revision_percents(..), requeue at `next`.
//! ```
//!
//! Times are Unix timestamps in nanoseconds (`i64`), as upstream stores them.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

/// Ingress annotation holding the serialized [`Rollout`] state.
pub const ROLLOUT_ANNOTATION: &str = "networking.internal.knative.dev/rollout";

/// Route/Service annotation setting the rollout duration, as a Go duration
/// string at whole-second precision (for example `"200s"` or `"3m20s"`).
pub const ROLLOUT_DURATION_ANNOTATION: &str = crate::api::keys::ROLLOUT_DURATION;

/// Older spelling of [`ROLLOUT_DURATION_ANNOTATION`], still honoured when
/// the preferred key is absent.
pub const ROLLOUT_DURATION_ANNOTATION_ALT: &str = "serving.knative.dev/rolloutDuration";

/// Errors from reading rollout state or the rollout duration.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The rollout-duration annotation does not hold an acceptable value.
    #[error("invalid value {value:?} for annotation {key}: {reason}")]
    InvalidDuration {
        /// The annotation key that was read.
        key: String,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The rollout annotation is not valid JSON for a [`Rollout`].
    #[error("rollout annotation is not valid rollout JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The rollout annotation parsed but failed [`Rollout::validate`].
    #[error("rollout annotation is inconsistent: {0}")]
    Invalid(String),
}

/// The rollout state of a whole Route: one entry per (Configuration, tag)
/// pair that receives traffic by latest revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Configuration rollouts, sorted by tag and, within a tag, by
    /// Configuration name.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub configurations: Vec<ConfigurationRollout>,
}

/// The rollout state of one (Configuration, tag) pair.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigurationRollout {
    /// The Configuration being rolled out.
    #[serde(rename = "configurationName", default)]
    pub configuration_name: String,
    /// The traffic tag; empty for the default (untagged) traffic.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tag: String,
    /// Total share of the route's traffic for this pair; the Revisions'
    /// percents sum to it.
    #[serde(default)]
    pub percent: i64,
    /// The Revisions taking part, oldest first; the last one is the
    /// Revision being rolled out to. One entry when no rollout is under way.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub revisions: Vec<RevisionRollout>,
    /// Timing and sizing of the steps.
    #[serde(rename = "stepParams", default)]
    pub step_params: StepParams,
}

/// One Revision's share during a rollout.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRollout {
    /// The Revision's name.
    #[serde(rename = "revisionName", default)]
    pub revision_name: String,
    /// Share of the whole route's traffic (not of the Configuration's).
    #[serde(default)]
    pub percent: i64,
}

/// Timing and sizing of a configuration rollout's steps (upstream's
/// `RolloutParams`). Zero means "not set" for every field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepParams {
    /// When the rollout started (Unix nanoseconds).
    #[serde(rename = "starttime", default, skip_serializing_if = "is_zero")]
    pub start_time: i64,
    /// When the next step is due (Unix nanoseconds).
    #[serde(rename = "nextStepTime", default, skip_serializing_if = "is_zero")]
    pub next_step_time: i64,
    /// Nanoseconds between two steps.
    #[serde(rename = "stepDuration", default, skip_serializing_if = "is_zero")]
    pub step_duration: i64,
    /// Percentage points moved per step.
    #[serde(rename = "stepSize", default, skip_serializing_if = "is_zero")]
    pub step_size: i64,
}

/// A configuration-following traffic target, as input to
/// [`Rollout::from_targets`].
///
/// Each value is one entry of a traffic *group*: the default group (tag
/// `""`) holds every target of the route, and each tag's group holds the
/// targets carrying that tag. [`RolloutTarget::from_route_targets`] builds
/// these groups from a route's traffic the way upstream does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutTarget {
    /// The Configuration followed.
    pub configuration_name: String,
    /// The traffic group: `""` for the default traffic, else the tag.
    pub tag: String,
    /// The Configuration's latest ready Revision.
    pub revision_name: String,
    /// The share of traffic for the pair within its group.
    pub percent: i64,
}

/// One of a route's traffic targets with its Revision resolved, as input to
/// [`RolloutTarget::from_route_targets`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteTarget {
    /// The target's tag; empty when untagged.
    pub tag: String,
    /// The Configuration: the one followed for latest-revision targets, the
    /// Revision's owner (if known) for pinned ones.
    pub configuration_name: String,
    /// The Revision: the latest ready one for latest-revision targets, the
    /// pinned one otherwise.
    pub revision_name: String,
    /// The target's percent.
    pub percent: i64,
    /// Whether the target follows the Configuration's latest revision.
    pub latest_revision: bool,
}

impl RolloutTarget {
    /// Groups a route's resolved traffic the way upstream's traffic
    /// configuration does, and returns the latest-revision entries.
    ///
    /// Every target belongs to the default group `""`; a tagged target also
    /// belongs to its tag's group. Within a group, targets naming the same
    /// Revision are merged (percents summed; the first one's other fields
    /// win, including whether it follows the latest revision), and a group
    /// left with a single entry gets 100%. Entries that do not follow the
    /// latest revision are then dropped.
    pub fn from_route_targets(targets: &[RouteTarget]) -> Vec<RolloutTarget> {
        let mut groups: BTreeMap<&str, Vec<RouteTarget>> = BTreeMap::new();
        for target in targets {
            merge_into_group(groups.entry("").or_default(), target);
            if !target.tag.is_empty() {
                merge_into_group(groups.entry(target.tag.as_str()).or_default(), target);
            }
        }
        let mut out = Vec::new();
        for (tag, mut group) in groups {
            if let [only] = group.as_mut_slice() {
                only.percent = 100;
            }
            out.extend(
                group
                    .into_iter()
                    .filter(|t| t.latest_revision)
                    .map(|t| RolloutTarget {
                        configuration_name: t.configuration_name,
                        tag: tag.to_owned(),
                        revision_name: t.revision_name,
                        percent: t.percent,
                    }),
            );
        }
        out
    }
}

/// Adds `target` to a traffic group, merging it with an entry for the same
/// Revision.
fn merge_into_group(group: &mut Vec<RouteTarget>, target: &RouteTarget) {
    match group
        .iter_mut()
        .find(|t| t.revision_name == target.revision_name)
    {
        Some(existing) => existing.percent = existing.percent.wrapping_add(target.percent),
        None => group.push(target.clone()),
    }
}

impl Rollout {
    /// Builds the goal rollout state from configuration-following targets
    /// (upstream's `BuildRollout`).
    ///
    /// Targets for the same (Configuration, tag) pair are merged, summing
    /// their percents; pairs with 0% are left out (a tag-only target sends
    /// no default traffic). Each entry gets a single Revision holding the
    /// whole percent. The result is sorted by tag, then Configuration name.
    pub fn from_targets(targets: &[RolloutTarget]) -> Rollout {
        let mut configurations: Vec<ConfigurationRollout> = Vec::new();
        for target in targets {
            match configurations
                .iter_mut()
                .find(|c| c.configuration_name == target.configuration_name && c.tag == target.tag)
            {
                Some(existing) => {
                    existing.percent = existing.percent.wrapping_add(target.percent);
                }
                None => configurations.push(ConfigurationRollout {
                    configuration_name: target.configuration_name.clone(),
                    tag: target.tag.clone(),
                    percent: target.percent,
                    revisions: vec![RevisionRollout {
                        revision_name: target.revision_name.clone(),
                        percent: 0,
                    }],
                    step_params: StepParams::default(),
                }),
            }
        }
        configurations.retain(|c| c.percent != 0);
        for c in &mut configurations {
            for r in &mut c.revisions {
                r.percent = c.percent;
            }
        }
        let mut rollout = Rollout { configurations };
        rollout.sort();
        rollout
    }

    /// Parses the [`ROLLOUT_ANNOTATION`] value and checks it with
    /// [`Rollout::validate`].
    ///
    /// Upstream treats an absent, unparsable or inconsistent annotation as
    /// "no previous state"; callers should do the same with any error.
    pub fn from_annotation(value: &str) -> Result<Rollout, RolloutError> {
        let rollout: Rollout = serde_json::from_str(value)?;
        if !rollout.validate() {
            return Err(RolloutError::Invalid(value.to_owned()));
        }
        Ok(rollout)
    }

    /// Serializes the state for the [`ROLLOUT_ANNOTATION`], byte for byte
    /// as Go's `encoding/json` would (compact, upstream field names and
    /// omissions, and `<`, `>`, `&`, U+2028, U+2029 escaped).
    pub fn to_annotation(&self) -> String {
        match serde_json::to_string(self) {
            Ok(json) => go_html_escape(&json),
            // Serializing plain structs of strings and integers cannot fail;
            // fall back to the empty state rather than panic.
            Err(_) => "{}".to_owned(),
        }
    }

    /// Upstream's sanity check of a deserialized state: no entry above
    /// 100%, step sizes within `0..=percent`, and each entry's Revision
    /// percents summing to its percent.
    pub fn validate(&self) -> bool {
        self.configurations.iter().all(|c| {
            c.percent <= 100
                && c.step_params.step_size >= 0
                && c.step_params.step_size <= c.percent
                && c.revisions
                    .iter()
                    .fold(0i64, |sum, r| sum.wrapping_add(r.percent))
                    == c.percent
        })
    }

    /// Whether no entry has a rollout under way (each has at most one
    /// Revision).
    pub fn done(&self) -> bool {
        self.configurations.iter().all(ConfigurationRollout::done)
    }

    /// The entries for a tag (`""` for the default traffic).
    pub fn rollouts_by_tag<'a>(
        &'a self,
        tag: &'a str,
    ) -> impl Iterator<Item = &'a ConfigurationRollout> + 'a {
        self.configurations.iter().filter(move |c| c.tag == tag)
    }

    /// The traffic split for a (Configuration, tag) pair, oldest Revision
    /// first, or `None` when the pair has no entry (then the target's own
    /// Revision and percent apply unchanged).
    pub fn revision_percents(&self, configuration: &str, tag: &str) -> Option<&[RevisionRollout]> {
        self.configurations
            .iter()
            .find(|c| c.tag == tag && c.configuration_name == configuration)
            .map(|c| c.revisions.as_slice())
    }

    /// Once the Ingress reports Ready for the first time after a rollout
    /// started, computes the step parameters of every entry that has a
    /// start time but no step duration yet (upstream's `ObserveReady`).
    ///
    /// The time it took to become ready, rounded up to whole seconds and at
    /// least 1s, is the smallest step (`minStep`). With `duration_secs` the
    /// rollout duration: `dur = max(1, duration − minStep)`,
    /// `steps = max(1, dur / minStep)` capped at `percent − 1`,
    /// `stepSize = round((percent − 1) / steps)`, `stepDuration = dur /
    /// steps` seconds, and the next step is due `stepDuration` from `now`.
    /// The arithmetic is done in `f64` exactly as upstream does it.
    pub fn observe_ready(&mut self, now: i64, duration_secs: f64) {
        for c in &mut self.configurations {
            if c.step_params.step_duration == 0 && c.step_params.start_time > 0 {
                let waited = go_duration_seconds(now.wrapping_sub(c.step_params.start_time));
                let min_step_secs = go_max(1.0, waited.ceil());
                c.compute_step_params(now as f64, min_step_secs, duration_secs);
                tracing::debug!(
                    configuration = %c.configuration_name,
                    tag = %c.tag,
                    params = ?c.step_params,
                    "computed rollout step parameters"
                );
            }
        }
    }

    /// Merges this goal state with the `previous` state and performs any
    /// due step (upstream's `Step`).
    ///
    /// `self` is the goal built by [`Rollout::from_targets`]; `previous` is
    /// the state read from the Ingress annotation (after
    /// [`Rollout::observe_ready`] when the Ingress just became ready).
    /// Returns the new state and the earliest time a further step is due,
    /// if any. Without a previous state the goal is returned unchanged.
    ///
    /// Per tag, goal and previous entries are matched by Configuration name
    /// (both lists are expected sorted, as this type keeps them):
    /// - a tag absent from `previous` contributes only its first goal entry,
    ///   taken as is;
    /// - a matched entry above 1% is stepped; at exactly 1% it is taken as
    ///   is; at 0% it is dropped;
    /// - an unmatched goal entry is taken as is unless at 0%.
    pub fn step(&self, previous: Option<&Rollout>, now: i64) -> (Rollout, Option<i64>) {
        let prev = match previous {
            Some(p) if !p.configurations.is_empty() => p,
            _ => {
                tracing::debug!("no previous rollout state to step from");
                return (self.clone(), None);
            }
        };
        let cur_by_tag = group_by_tag(&self.configurations);
        let prev_by_tag = group_by_tag(&prev.configurations);

        let mut out = Vec::new();
        let mut earliest = i64::MAX;
        for (tag, goals) in &cur_by_tag {
            let Some(prevs) = prev_by_tag.get(tag) else {
                if let Some(first) = goals.first() {
                    out.push((*first).clone());
                }
                continue;
            };
            let (mut i, mut j) = (0, 0);
            while let Some(goal) = goals.get(i) {
                let Some(old) = prevs.get(j) else {
                    out.push((*goal).clone());
                    i += 1;
                    continue;
                };
                if goal.configuration_name == old.configuration_name {
                    if goal.percent > 1 {
                        let stepped = step_config(goal, (*old).clone(), now);
                        let next = stepped.step_params.next_step_time;
                        if next > 0 && next < earliest {
                            earliest = next;
                        }
                        out.push(stepped);
                    } else if goal.percent == 1 {
                        out.push((*goal).clone());
                    }
                    i += 1;
                    j += 1;
                } else if goal.configuration_name < old.configuration_name {
                    if goal.percent != 0 {
                        out.push((*goal).clone());
                    }
                    i += 1;
                } else {
                    j += 1;
                }
            }
        }
        let mut rollout = Rollout {
            configurations: out,
        };
        rollout.sort();
        let next = (earliest != i64::MAX).then_some(earliest);
        (rollout, next)
    }

    /// Sorts entries by tag, then Configuration name.
    fn sort(&mut self) {
        self.configurations.sort_by(|a, b| {
            a.tag
                .cmp(&b.tag)
                .then_with(|| a.configuration_name.cmp(&b.configuration_name))
        });
    }
}

impl ConfigurationRollout {
    /// Whether no rollout is under way (at most one Revision).
    pub fn done(&self) -> bool {
        self.revisions.len() < 2
    }

    /// Computes the step parameters once the first 1% took `min_step_secs`.
    fn compute_step_params(&mut self, now: f64, min_step_secs: f64, duration_secs: f64) {
        let duration_secs = go_max(1.0, duration_secs - min_step_secs);
        let mut num_steps = go_max(1.0, duration_secs / min_step_secs);
        // 1% has already moved, so at most `percent - 1` steps of 1% remain.
        let remaining = self.percent.wrapping_sub(1) as f64;
        if remaining < num_steps {
            num_steps = remaining;
        }
        let step_size = (remaining / num_steps).round();
        let step_duration = duration_secs / num_steps * 1e9;
        // `as` saturates (NaN becomes 0), like Go's conversions on arm64.
        self.step_params.step_duration = step_duration as i64;
        self.step_params.step_size = step_size as i64;
        self.step_params.next_step_time = (now + step_duration) as i64;
    }
}

/// Groups entries by tag, keeping their order within each tag.
fn group_by_tag(configs: &[ConfigurationRollout]) -> BTreeMap<&str, Vec<&ConfigurationRollout>> {
    let mut groups: BTreeMap<&str, Vec<&ConfigurationRollout>> = BTreeMap::new();
    for c in configs {
        groups.entry(c.tag.as_str()).or_default().push(c);
    }
    groups
}

/// Re-targets the previous state of one pair to a (possibly changed) total
/// percent: an increase goes to the newest Revision, a decrease is taken
/// from the oldest ones, dropping those that reach 0.
fn adjust_percentage(goal: i64, prev: &mut ConfigurationRollout) {
    let diff = goal.wrapping_sub(prev.percent);
    if goal == 0 {
        tracing::info!(configuration = %prev.configuration_name, "configuration traffic set to 0%");
        prev.revisions.clear();
    } else if diff > 0 {
        tracing::info!(
            configuration = %prev.configuration_name,
            increase = diff,
            "configuration traffic increased; the newest revision gets the difference"
        );
        if let Some(last) = prev.revisions.last_mut() {
            last.percent = last.percent.wrapping_add(diff);
        }
    } else if diff < 0 {
        let mut remaining = diff.wrapping_neg();
        tracing::info!(
            configuration = %prev.configuration_name,
            decrease = remaining,
            "configuration traffic decreased; taking the difference from the oldest revisions"
        );
        let mut dropped = 0;
        while remaining > 0 {
            let Some(rev) = prev.revisions.get_mut(dropped) else {
                break;
            };
            if rev.percent > remaining {
                rev.percent -= remaining;
                break;
            }
            remaining = remaining.wrapping_sub(rev.percent);
            dropped += 1;
        }
        prev.revisions.drain(..dropped);
    }
}

/// Moves one step of traffic to the newest Revision if the step is due.
fn step_revisions(goal: &mut ConfigurationRollout, now: i64) {
    let count = goal.revisions.len();
    if now < goal.step_params.next_step_time || count < 2 {
        return;
    }
    let step_size = goal.step_params.step_size;
    let mut remaining = step_size;
    // Revisions `0..keep` stay; the newest one moves to index `keep`.
    let mut keep = count - 1;
    while remaining > 0 && keep > 0 {
        let rev = &mut goal.revisions[keep - 1];
        if rev.percent > remaining {
            rev.percent -= remaining;
            break;
        }
        remaining = remaining.wrapping_sub(rev.percent);
        keep -= 1;
    }
    goal.revisions.swap(keep, count - 1);
    goal.revisions.truncate(keep + 1);
    if let Some(newest) = goal.revisions.last_mut() {
        newest.percent = newest.percent.wrapping_add(step_size);
        // The drained Revisions may have held less than a step (the total
        // was lowered mid-rollout); never exceed the total.
        if newest.percent > goal.percent {
            newest.percent = goal.percent;
        }
    }
    if goal.revisions.len() > 1 {
        goal.step_params.next_step_time = now.wrapping_add(goal.step_params.step_duration);
    } else {
        goal.step_params = StepParams::default();
    }
}

/// Steps one (Configuration, tag) pair present in both goal and previous
/// state.
fn step_config(
    goal: &ConfigurationRollout,
    mut prev: ConfigurationRollout,
    now: i64,
) -> ConfigurationRollout {
    let mut ret = ConfigurationRollout {
        configuration_name: goal.configuration_name.clone(),
        tag: goal.tag.clone(),
        percent: goal.percent,
        revisions: goal.revisions.clone(),
        // Timing is reset unless it carries over below.
        step_params: StepParams::default(),
    };
    if !prev.revisions.is_empty() {
        adjust_percentage(goal.percent, &mut prev);
    }
    let Some(goal_rev) = goal.revisions.first() else {
        return ret;
    };
    let same_revision = match prev.revisions.last() {
        None => true,
        Some(last) => last.revision_name == goal_rev.revision_name,
    };
    if same_revision {
        // No new Revision: nothing to do unless a rollout is under way.
        if prev.revisions.len() > 1 {
            ret.revisions = prev.revisions;
            ret.step_params = prev.step_params;
            // Steps are only sized once the Ingress was seen Ready.
            if ret.step_params.step_size > 0 {
                step_revisions(&mut ret, now);
            }
        }
        return ret;
    }

    tracing::debug!(
        configuration = %goal.configuration_name,
        tag = %goal.tag,
        revision = %goal_rev.revision_name,
        start = now,
        "starting a revision rollout"
    );
    ret.step_params.start_time = now;
    // The new Revision's 1% comes from the newest Revision with traffic.
    if let Some(donor) = prev.revisions.iter_mut().rev().find(|r| r.percent > 0) {
        donor.percent -= 1;
    }
    let mut revisions: Vec<RevisionRollout> = prev
        .revisions
        .into_iter()
        .filter(|r| r.percent != 0)
        .collect();
    revisions.push(RevisionRollout {
        revision_name: goal_rev.revision_name.clone(),
        percent: 1,
    });
    ret.revisions = revisions;
    ret
}

/// Resolves the rollout duration for a Route or Service.
///
/// The annotation ([`ROLLOUT_DURATION_ANNOTATION`], else
/// [`ROLLOUT_DURATION_ANNOTATION_ALT`]; a present-but-empty preferred key
/// counts as unset) is a Go duration string such as `"200s"`, `"3m20s"` or
/// `"0"`, at whole-second precision and not negative; a bare number other
/// than `0` is rejected, as upstream's webhook rejects it. A zero
/// annotation, or none, falls back to `config_default_secs` (config-network
/// `rollout-duration`, whole seconds); a default of 0 or less disables
/// rollouts. A zero result means rollouts are disabled.
pub fn rollout_duration(
    annotations: &BTreeMap<String, String>,
    config_default_secs: i64,
) -> Result<Duration, RolloutError> {
    let found = [ROLLOUT_DURATION_ANNOTATION, ROLLOUT_DURATION_ANNOTATION_ALT]
        .into_iter()
        .find_map(|key| annotations.get(key).map(|value| (key, value)));
    if let Some((key, value)) = found.filter(|(_, value)| !value.is_empty()) {
        let invalid = |reason: String| RolloutError::InvalidDuration {
            key: key.to_owned(),
            value: value.clone(),
            reason,
        };
        let duration = knative_core::duration::parse_go(value)
            .map_err(|e| e.reason().to_owned())
            .map_err(invalid)?;
        if duration.subsec_nanos() != 0 {
            return Err(invalid("not at second precision".to_owned()));
        }
        if !duration.is_zero() {
            return Ok(duration);
        }
    }
    Ok(Duration::from_secs(
        u64::try_from(config_default_secs).unwrap_or(0),
    ))
}

/// Go's `time.Duration.Seconds` for a nanosecond count.
fn go_duration_seconds(nanos: i64) -> f64 {
    let secs = nanos / 1_000_000_000;
    let rest = nanos % 1_000_000_000;
    secs as f64 + rest as f64 / 1e9
}

/// Go's `math.Max`: infinities win, then NaN, then the larger value
/// (`+0` over `-0`).
fn go_max(x: f64, y: f64) -> f64 {
    if x == f64::INFINITY || y == f64::INFINITY {
        f64::INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x == 0.0 && y == 0.0 {
        if x.is_sign_negative() { y } else { x }
    } else if x > y {
        x
    } else {
        y
    }
}

/// Escapes what Go's `encoding/json` escapes beyond serde_json: `<`, `>`,
/// `&`, U+2028 and U+2029. They can only occur inside JSON strings, so a
/// textual replacement is safe.
fn go_html_escape(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// serde `skip_serializing_if` helper for Go's `omitempty` on integers.
fn is_zero(value: &i64) -> bool {
    *value == 0
}

/// Reads a JSON `null` as the default value, as Go does for slices.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: i64 = 1_000_000_000;
    /// A whole-second timestamp, exactly representable as `f64`.
    const T0: i64 = 1_700_000_000 * SEC;

    fn rev(name: &str, percent: i64) -> RevisionRollout {
        RevisionRollout {
            revision_name: name.to_owned(),
            percent,
        }
    }

    fn cfg(
        name: &str,
        tag: &str,
        percent: i64,
        revisions: &[(&str, i64)],
        step_params: StepParams,
    ) -> ConfigurationRollout {
        ConfigurationRollout {
            configuration_name: name.to_owned(),
            tag: tag.to_owned(),
            percent,
            revisions: revisions.iter().map(|(n, p)| rev(n, *p)).collect(),
            step_params,
        }
    }

    fn goal(entries: &[(&str, &str, &str, i64)]) -> Rollout {
        let targets: Vec<RolloutTarget> = entries
            .iter()
            .map(|(config, tag, revision, percent)| RolloutTarget {
                configuration_name: (*config).to_owned(),
                tag: (*tag).to_owned(),
                revision_name: (*revision).to_owned(),
                percent: *percent,
            })
            .collect();
        Rollout::from_targets(&targets)
    }

    fn started(start: i64) -> StepParams {
        StepParams {
            start_time: start,
            ..StepParams::default()
        }
    }

    fn params(start: i64, next: i64, duration: i64, size: i64) -> StepParams {
        StepParams {
            start_time: start,
            next_step_time: next,
            step_duration: duration,
            step_size: size,
        }
    }

    /// What the route reconciler does with the annotation each pass.
    struct Reconciler {
        annotation: Option<String>,
        duration_secs: f64,
    }

    impl Reconciler {
        fn new(duration_secs: f64) -> Self {
            Reconciler {
                annotation: None,
                duration_secs,
            }
        }

        fn reconcile(
            &mut self,
            goal: &Rollout,
            became_ready: bool,
            now: i64,
        ) -> (Rollout, Option<i64>) {
            let mut prev = self
                .annotation
                .as_deref()
                .and_then(|a| Rollout::from_annotation(a).ok());
            if became_ready && let Some(p) = prev.as_mut() {
                p.observe_ready(now, self.duration_secs);
            }
            let (effective, next) = goal.step(prev.as_ref(), now);
            self.annotation = Some(effective.to_annotation());
            (effective, next)
        }
    }

    fn split(rollout: &Rollout, config: &str, tag: &str) -> Vec<(String, i64)> {
        rollout
            .revision_percents(config, tag)
            .unwrap_or_default()
            .iter()
            .map(|r| (r.revision_name.clone(), r.percent))
            .collect()
    }

    fn owned(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
        pairs.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect()
    }

    #[test]
    fn four_step_rollout_moves_1_26_51_76_100() {
        // 200s rollout; the ingress takes 40s to get the first 1% ready, so
        // minStep = 40s, dur = 160s, 4 steps of round(99/4) = 25 points,
        // 40s apart.
        let mut r = Reconciler::new(200.0);
        let (state, next) = r.reconcile(
            &goal(&[("hello", "", "hello-1", 100)]),
            false,
            T0 - 100 * SEC,
        );
        assert_eq!(split(&state, "hello", ""), owned(&[("hello-1", 100)]));
        assert_eq!(next, None);

        let to_new = goal(&[("hello", "", "hello-2", 100)]);
        let (state, next) = r.reconcile(&to_new, false, T0);
        assert_eq!(
            state.configurations,
            vec![cfg(
                "hello",
                "",
                100,
                &[("hello-1", 99), ("hello-2", 1)],
                started(T0)
            )]
        );
        assert_eq!(next, None);

        let (state, next) = r.reconcile(&to_new, true, T0 + 40 * SEC);
        assert_eq!(
            state.configurations,
            vec![cfg(
                "hello",
                "",
                100,
                &[("hello-1", 99), ("hello-2", 1)],
                params(T0, T0 + 80 * SEC, 40 * SEC, 25)
            )]
        );
        assert_eq!(next, Some(T0 + 80 * SEC));

        // A reconcile before the step is due changes nothing.
        let (state, next) = r.reconcile(&to_new, false, T0 + 79 * SEC);
        assert_eq!(
            split(&state, "hello", ""),
            owned(&[("hello-1", 99), ("hello-2", 1)])
        );
        assert_eq!(next, Some(T0 + 80 * SEC));

        let mut seen = vec![1];
        for (at, old, new) in [(80, 74, 26), (120, 49, 51), (160, 24, 76)] {
            let (state, next) = r.reconcile(&to_new, false, T0 + at * SEC);
            assert_eq!(
                split(&state, "hello", ""),
                owned(&[("hello-1", old), ("hello-2", new)])
            );
            assert_eq!(
                state.configurations[0].step_params,
                params(T0, T0 + (at + 40) * SEC, 40 * SEC, 25)
            );
            assert_eq!(next, Some(T0 + (at + 40) * SEC));
            seen.push(new);
        }
        let (state, next) = r.reconcile(&to_new, false, T0 + 200 * SEC);
        assert_eq!(
            state.configurations,
            vec![cfg(
                "hello",
                "",
                100,
                &[("hello-2", 100)],
                StepParams::default()
            )]
        );
        assert_eq!(next, None);
        seen.push(100);
        assert_eq!(seen, vec![1, 26, 51, 76, 100]);
        assert_eq!(
            r.annotation.as_deref(),
            Some(
                r#"{"configurations":[{"configurationName":"hello","percent":100,"revisions":[{"revisionName":"hello-2","percent":100}],"stepParams":{}}]}"#
            )
        );
    }

    #[test]
    fn new_revision_takes_one_percent_from_newest_older_revision_with_traffic() {
        struct Case {
            name: &'static str,
            prev: ConfigurationRollout,
            want: &'static [(&'static str, i64)],
        }
        let cases = [
            Case {
                name: "steady state: the only revision gives 1%",
                prev: cfg("c", "", 100, &[("r1", 100)], StepParams::default()),
                want: &[("r1", 99), ("r3", 1)],
            },
            Case {
                name: "mid-rollout: the newest older revision gives 1%",
                prev: cfg("c", "", 100, &[("r1", 50), ("r2", 50)], params(1, 2, 3, 4)),
                want: &[("r1", 50), ("r2", 49), ("r3", 1)],
            },
            Case {
                name: "newest at 1% gives it and drops out",
                prev: cfg("c", "", 100, &[("r1", 99), ("r2", 1)], started(1)),
                want: &[("r1", 99), ("r3", 1)],
            },
            Case {
                name: "newest without traffic is skipped and dropped",
                prev: cfg(
                    "c",
                    "",
                    100,
                    &[("r1", 100), ("r2", 0)],
                    StepParams::default(),
                ),
                want: &[("r1", 99), ("r3", 1)],
            },
        ];
        let target = goal(&[("c", "", "r3", 100)]);
        for case in cases {
            let prev = Rollout {
                configurations: vec![case.prev],
            };
            let (got, next) = target.step(Some(&prev), T0);
            assert_eq!(split(&got, "c", ""), owned(case.want), "{}", case.name);
            assert_eq!(
                got.configurations[0].step_params,
                started(T0),
                "{}",
                case.name
            );
            assert_eq!(next, None, "{}", case.name);
            assert!(got.validate(), "{}", case.name);
        }
    }

    #[test]
    fn third_revision_mid_rollout_restarts_from_one_percent() {
        let mut r = Reconciler::new(200.0);
        let prev = Rollout {
            configurations: vec![cfg(
                "c",
                "",
                100,
                &[("r1", 74), ("r2", 26)],
                params(T0, T0 + 120 * SEC, 40 * SEC, 25),
            )],
        };
        r.annotation = Some(prev.to_annotation());
        let to_r3 = goal(&[("c", "", "r3", 100)]);
        let (state, next) = r.reconcile(&to_r3, false, T0 + 100 * SEC);
        assert_eq!(
            state.configurations,
            vec![cfg(
                "c",
                "",
                100,
                &[("r1", 74), ("r2", 25), ("r3", 1)],
                started(T0 + 100 * SEC)
            )]
        );
        assert_eq!(next, None);

        // Ready 10s later: minStep 10s, dur 190s, 19 steps of round(99/19) = 5.
        let (state, next) = r.reconcile(&to_r3, true, T0 + 110 * SEC);
        assert_eq!(
            state.configurations[0].step_params,
            params(T0 + 100 * SEC, T0 + 120 * SEC, 10 * SEC, 5)
        );
        assert_eq!(next, Some(T0 + 120 * SEC));

        let mut now = T0 + 120 * SEC;
        let mut history = Vec::new();
        loop {
            let (state, next) = r.reconcile(&to_r3, false, now);
            history.push(split(&state, "c", ""));
            match next {
                Some(at) => now = at,
                None => break,
            }
        }
        // r2 (the newest older revision) drains first while r1 keeps 74.
        assert_eq!(history[0], owned(&[("r1", 74), ("r2", 20), ("r3", 6)]));
        assert_eq!(history[4], owned(&[("r1", 74), ("r3", 26)]));
        assert_eq!(history[5], owned(&[("r1", 69), ("r3", 31)]));
        for split in &history {
            if split.iter().any(|(n, _)| n == "r2") {
                assert_eq!(split[0], ("r1".to_owned(), 74));
            }
        }
        assert_eq!(history.last(), Some(&owned(&[("r3", 100)])));
        assert_eq!(history.len(), 20);
    }

    #[test]
    fn tagged_and_untagged_pairs_roll_out_independently() {
        let mid = params(T0, T0 + 120 * SEC, 40 * SEC, 25);
        let prev = Rollout {
            configurations: vec![
                cfg("c", "", 100, &[("r1", 74), ("r2", 26)], mid.clone()),
                cfg("c", "canary", 100, &[("r2", 100)], StepParams::default()),
            ],
        };
        let both_r2 = goal(&[("c", "", "r2", 100), ("c", "canary", "r2", 100)]);
        let (got, next) = both_r2.step(Some(&prev), T0 + 120 * SEC);
        assert_eq!(split(&got, "c", ""), owned(&[("r1", 49), ("r2", 51)]));
        assert_eq!(split(&got, "c", "canary"), owned(&[("r2", 100)]));
        assert_eq!(got.configurations[1].step_params, StepParams::default());
        assert_eq!(next, Some(T0 + 160 * SEC));

        // r3 starts a separate rollout in each pair.
        let both_r3 = goal(&[("c", "", "r3", 100), ("c", "canary", "r3", 100)]);
        let (got, next) = both_r3.step(Some(&got), T0 + 130 * SEC);
        assert_eq!(
            split(&got, "c", ""),
            owned(&[("r1", 49), ("r2", 50), ("r3", 1)])
        );
        assert_eq!(split(&got, "c", "canary"), owned(&[("r2", 99), ("r3", 1)]));
        assert_eq!(next, None);

        // A tag the previous state did not have starts at 100% at once.
        let with_new_tag = goal(&[("c", "", "r2", 100), ("c", "blue", "r2", 100)]);
        let (got, _) = with_new_tag.step(Some(&prev), T0 + 121 * SEC);
        assert_eq!(split(&got, "c", "blue"), owned(&[("r2", 100)]));
        assert_eq!(split(&got, "c", ""), owned(&[("r1", 49), ("r2", 51)]));
        assert_eq!(
            got.configurations
                .iter()
                .map(|c| c.tag.as_str())
                .collect::<Vec<_>>(),
            vec!["", "blue"]
        );
    }

    #[test]
    fn config_with_60_of_a_60_40_split_rolls_within_its_share() {
        let traffic = [
            RouteTarget {
                configuration_name: "c".into(),
                revision_name: "r2".into(),
                percent: 60,
                latest_revision: true,
                ..RouteTarget::default()
            },
            RouteTarget {
                configuration_name: "c".into(),
                revision_name: "pinned".into(),
                percent: 40,
                latest_revision: false,
                ..RouteTarget::default()
            },
        ];
        let to_r2 = Rollout::from_targets(&RolloutTarget::from_route_targets(&traffic));
        assert_eq!(
            to_r2.configurations,
            vec![cfg("c", "", 60, &[("r2", 60)], StepParams::default())]
        );

        let mut r = Reconciler::new(100.0);
        r.annotation = Some(goal(&[("c", "", "r1", 60)]).to_annotation());
        let (state, _) = r.reconcile(&to_r2, false, T0);
        assert_eq!(split(&state, "c", ""), owned(&[("r1", 59), ("r2", 1)]));
        // Ready after 10s: dur 90s, 9 steps of round(59/9) = 7, 10s apart.
        let (state, next) = r.reconcile(&to_r2, true, T0 + 10 * SEC);
        assert_eq!(
            state.configurations[0].step_params,
            params(T0, T0 + 20 * SEC, 10 * SEC, 7)
        );
        let mut now = next.unwrap_or_default();
        let mut new_share = vec![1];
        loop {
            let (state, next) = r.reconcile(&to_r2, false, now);
            let split = split(&state, "c", "");
            assert_eq!(split.iter().map(|(_, p)| p).sum::<i64>(), 60);
            new_share.push(split.last().map(|(_, p)| *p).unwrap_or_default());
            match next {
                Some(at) => now = at,
                None => break,
            }
        }
        assert_eq!(new_share, vec![1, 8, 15, 22, 29, 36, 43, 50, 57, 60]);
        assert_eq!(now, T0 + 100 * SEC);
    }

    #[test]
    fn duration_shorter_than_readiness_does_one_step() {
        let mut r = Reconciler::new(10.0);
        r.annotation = Some(goal(&[("c", "", "r1", 100)]).to_annotation());
        let to_r2 = goal(&[("c", "", "r2", 100)]);
        r.reconcile(&to_r2, false, T0);
        // 30s to become ready > 10s duration: dur = max(1, 10-30) = 1s,
        // steps = 1, stepSize = 99.
        let (state, next) = r.reconcile(&to_r2, true, T0 + 30 * SEC);
        assert_eq!(
            state.configurations[0].step_params,
            params(T0, T0 + 31 * SEC, SEC, 99)
        );
        assert_eq!(next, Some(T0 + 31 * SEC));
        let (state, next) = r.reconcile(&to_r2, false, T0 + 31 * SEC);
        assert_eq!(
            state.configurations,
            vec![cfg("c", "", 100, &[("r2", 100)], StepParams::default())]
        );
        assert_eq!(next, None);
    }

    #[test]
    fn rollout_ends_when_one_revision_remains() {
        let prev = Rollout {
            configurations: vec![cfg(
                "c",
                "",
                100,
                &[("r1", 10), ("r2", 5), ("r3", 85)],
                params(T0, T0, 10 * SEC, 20),
            )],
        };
        assert!(!prev.done());
        let (got, next) = goal(&[("c", "", "r3", 100)]).step(Some(&prev), T0);
        assert_eq!(
            got.configurations,
            vec![cfg("c", "", 100, &[("r3", 100)], StepParams::default())]
        );
        assert!(got.done());
        assert_eq!(next, None);
    }

    #[test]
    fn step_scenarios() {
        let mid = params(T0 - 50 * SEC, T0, 5 * SEC, 3);
        struct Case {
            name: &'static str,
            goal: Rollout,
            prev: Option<Rollout>,
            want: Vec<ConfigurationRollout>,
            next: Option<i64>,
        }
        let one = |c: ConfigurationRollout| Rollout {
            configurations: vec![c],
        };
        let cases = vec![
            Case {
                name: "no previous state: goal as is",
                goal: goal(&[("c", "", "r2", 100)]),
                prev: None,
                want: vec![cfg("c", "", 100, &[("r2", 100)], StepParams::default())],
                next: None,
            },
            Case {
                name: "same single revision: steady, params cleared",
                goal: goal(&[("c", "", "r1", 100)]),
                prev: Some(one(cfg("c", "", 100, &[("r1", 100)], mid.clone()))),
                want: vec![cfg("c", "", 100, &[("r1", 100)], StepParams::default())],
                next: None,
            },
            Case {
                name: "due step moves stepSize points",
                goal: goal(&[("c", "", "r2", 100)]),
                prev: Some(one(cfg(
                    "c",
                    "",
                    100,
                    &[("r1", 95), ("r2", 5)],
                    mid.clone(),
                ))),
                want: vec![cfg(
                    "c",
                    "",
                    100,
                    &[("r1", 92), ("r2", 8)],
                    params(T0 - 50 * SEC, T0 + 5 * SEC, 5 * SEC, 3),
                )],
                next: Some(T0 + 5 * SEC),
            },
            Case {
                name: "late reconcile schedules the next step from now",
                goal: goal(&[("c", "", "r2", 100)]),
                prev: Some(one(cfg(
                    "c",
                    "",
                    100,
                    &[("r1", 95), ("r2", 5)],
                    params(T0 - 50 * SEC, T0 - 3 * SEC, 5 * SEC, 3),
                ))),
                want: vec![cfg(
                    "c",
                    "",
                    100,
                    &[("r1", 92), ("r2", 8)],
                    params(T0 - 50 * SEC, T0 + 5 * SEC, 5 * SEC, 3),
                )],
                next: Some(T0 + 5 * SEC),
            },
            Case {
                name: "before observe_ready (stepSize 0) nothing moves",
                goal: goal(&[("c", "", "r2", 100)]),
                prev: Some(one(cfg(
                    "c",
                    "",
                    100,
                    &[("r1", 95), ("r2", 5)],
                    started(T0 - SEC),
                ))),
                want: vec![cfg(
                    "c",
                    "",
                    100,
                    &[("r1", 95), ("r2", 5)],
                    started(T0 - SEC),
                )],
                next: None,
            },
            Case {
                name: "1% target is taken as is",
                goal: goal(&[("c", "", "r2", 1)]),
                prev: Some(one(cfg("c", "", 1, &[("r1", 1)], StepParams::default()))),
                want: vec![cfg("c", "", 1, &[("r2", 1)], StepParams::default())],
                next: None,
            },
            Case {
                name: "0% goal entry is dropped",
                goal: Rollout {
                    configurations: vec![cfg("c", "", 0, &[("r2", 0)], StepParams::default())],
                },
                prev: Some(one(cfg(
                    "c",
                    "",
                    100,
                    &[("r1", 100)],
                    StepParams::default(),
                ))),
                want: vec![],
                next: None,
            },
            Case {
                name: "percent raised mid-rollout: newest gets the difference",
                goal: goal(&[("c", "", "r3", 75)]),
                prev: Some(one(cfg(
                    "c",
                    "",
                    25,
                    &[("r1", 11), ("r2", 14)],
                    StepParams::default(),
                ))),
                want: vec![cfg(
                    "c",
                    "",
                    75,
                    &[("r1", 11), ("r2", 63), ("r3", 1)],
                    started(T0),
                )],
                next: None,
            },
            Case {
                name: "percent lowered: oldest gives the difference",
                goal: goal(&[("c", "", "r3", 33)]),
                prev: Some(one(cfg(
                    "c",
                    "",
                    42,
                    &[("r1", 11), ("r2", 31)],
                    StepParams::default(),
                ))),
                want: vec![cfg(
                    "c",
                    "",
                    33,
                    &[("r1", 2), ("r2", 30), ("r3", 1)],
                    started(T0),
                )],
                next: None,
            },
            Case {
                name: "percent lowered past the oldest revision drops it",
                goal: goal(&[("c", "", "r2", 50)]),
                prev: Some(one(cfg(
                    "c",
                    "",
                    100,
                    &[("r1", 10), ("r2", 90)],
                    mid.clone(),
                ))),
                want: vec![cfg("c", "", 50, &[("r2", 50)], StepParams::default())],
                next: None,
            },
            Case {
                name: "step larger than what is left is capped at the total",
                goal: goal(&[("c", "", "r2", 15)]),
                prev: Some(one(cfg(
                    "c",
                    "",
                    60,
                    &[("r1", 40), ("r2", 20)],
                    params(1, T0, SEC, 10),
                ))),
                want: vec![cfg("c", "", 15, &[("r2", 15)], StepParams::default())],
                next: None,
            },
            Case {
                name: "new and removed configurations are taken as is",
                goal: goal(&[("a", "", "a1", 50), ("c", "", "r1", 50)]),
                prev: Some(Rollout {
                    configurations: vec![
                        cfg("b", "", 50, &[("b1", 50)], StepParams::default()),
                        cfg("c", "", 50, &[("r1", 50)], StepParams::default()),
                    ],
                }),
                want: vec![
                    cfg("a", "", 50, &[("a1", 50)], StepParams::default()),
                    cfg("c", "", 50, &[("r1", 50)], StepParams::default()),
                ],
                next: None,
            },
            Case {
                name: "earliest next step across configurations",
                goal: goal(&[("a", "", "a2", 50), ("b", "", "b2", 50)]),
                prev: Some(Rollout {
                    configurations: vec![
                        cfg(
                            "a",
                            "",
                            50,
                            &[("a1", 40), ("a2", 10)],
                            params(1, T0, 43 * SEC, 3),
                        ),
                        cfg(
                            "b",
                            "",
                            50,
                            &[("b1", 40), ("b2", 10)],
                            params(1, T0, 7 * SEC, 4),
                        ),
                    ],
                }),
                want: vec![
                    cfg(
                        "a",
                        "",
                        50,
                        &[("a1", 37), ("a2", 13)],
                        params(1, T0 + 43 * SEC, 43 * SEC, 3),
                    ),
                    cfg(
                        "b",
                        "",
                        50,
                        &[("b1", 36), ("b2", 14)],
                        params(1, T0 + 7 * SEC, 7 * SEC, 4),
                    ),
                ],
                next: Some(T0 + 7 * SEC),
            },
        ];
        for case in cases {
            let (got, next) = case.goal.step(case.prev.as_ref(), T0);
            assert_eq!(got.configurations, case.want, "{}", case.name);
            assert_eq!(next, case.next, "{}", case.name);
        }
    }

    #[test]
    fn new_tag_with_several_configurations_keeps_only_the_first() {
        // Upstream quirk: a tag the previous state lacks contributes only its
        // first (by name) entry.
        let prev = Rollout {
            configurations: vec![cfg("c", "x", 100, &[("r1", 100)], StepParams::default())],
        };
        let (got, _) = goal(&[("a", "", "a1", 50), ("b", "", "b1", 50)]).step(Some(&prev), T0);
        assert_eq!(
            got.configurations,
            vec![cfg("a", "", 50, &[("a1", 50)], StepParams::default())]
        );
    }

    #[test]
    fn observe_ready_scenarios() {
        const NOW: i64 = 200_620_092_020 + 1982;
        const OLDEN: i64 = 198_219_841_988;
        let mut ro = Rollout {
            configurations: vec![
                cfg("has-step", "", 100, &[], params(0, 0, 11, 0)),
                cfg("not-started", "", 100, &[], StepParams::default()),
                cfg("ready-within-1s", "", 100, &[], started(200_620_092_020)),
                cfg("ready-after-2.4s", "", 100, &[], started(OLDEN)),
                cfg("ready-after-2.4s-75", "", 75, &[], started(OLDEN)),
                cfg("ready-after-2.4s-50", "", 50, &[], started(OLDEN)),
            ],
        };
        ro.observe_ready(NOW, 120.0);
        let got: Vec<StepParams> = ro
            .configurations
            .into_iter()
            .map(|c| c.step_params)
            .collect();
        assert_eq!(
            got,
            vec![
                params(0, 0, 11, 0),
                StepParams::default(),
                // minStep 1s, dur 119s, 99 steps of 1 point, 119/99 s apart.
                params(200_620_092_020, NOW + 1_202_020_202, 1_202_020_202, 1),
                // minStep 3s, dur 117s, 39 steps 3s apart.
                params(OLDEN, NOW + 3 * SEC, 3 * SEC, 3),
                params(OLDEN, NOW + 3 * SEC, 3 * SEC, 2),
                params(OLDEN, NOW + 3 * SEC, 3 * SEC, 1),
            ]
        );
    }

    #[test]
    fn validate_scenarios() {
        let cases = [
            (
                "steady",
                cfg("c", "", 100, &[("r", 100)], StepParams::default()),
                true,
            ),
            (
                "empty pair",
                cfg("c", "", 0, &[], StepParams::default()),
                true,
            ),
            (
                "over 100%",
                cfg("c", "", 101, &[("r", 101)], StepParams::default()),
                false,
            ),
            (
                "revision above total",
                cfg("c", "", 42, &[("r", 43)], StepParams::default()),
                false,
            ),
            (
                "revisions above total",
                cfg("c", "", 42, &[("a", 41), ("b", 3)], StepParams::default()),
                false,
            ),
            (
                "negative step",
                cfg("c", "", 42, &[("a", 42)], params(0, 0, 0, -1)),
                false,
            ),
            (
                "step above total",
                cfg("c", "", 42, &[("a", 42)], params(0, 0, 0, 43)),
                false,
            ),
        ];
        for (name, c, want) in cases {
            let r = Rollout {
                configurations: vec![cfg("ok", "", 10, &[("x", 10)], StepParams::default()), c],
            };
            assert_eq!(r.validate(), want, "{name}");
        }
    }

    #[test]
    fn from_targets_sums_pairs_skips_zero_and_sorts() {
        let got = goal(&[
            ("b", "", "b1", 30),
            ("a", "t", "a1", 100),
            ("a", "", "a1", 20),
            ("b", "", "b1", 10),
            ("z", "", "z1", 0),
        ]);
        assert_eq!(
            got.configurations,
            vec![
                cfg("a", "", 20, &[("a1", 20)], StepParams::default()),
                cfg("b", "", 40, &[("b1", 40)], StepParams::default()),
                cfg("a", "t", 100, &[("a1", 100)], StepParams::default()),
            ]
        );
        assert_eq!(split(&got, "b", ""), owned(&[("b1", 40)]));
        assert_eq!(got.revision_percents("b", "t"), None);
    }

    #[test]
    fn from_route_targets_groups_like_upstream() {
        let t = |tag: &str, config: &str, revision: &str, percent: i64, latest: bool| RouteTarget {
            tag: tag.into(),
            configuration_name: config.into(),
            revision_name: revision.into(),
            percent,
            latest_revision: latest,
        };
        struct Case {
            name: &'static str,
            traffic: Vec<RouteTarget>,
            want: Vec<(&'static str, &'static str, i64)>,
        }
        let cases = [
            Case {
                name: "tagged latest target also counts in the default group",
                traffic: vec![t("canary", "c", "c2", 100, true)],
                want: vec![("c", "", 100), ("c", "canary", 100)],
            },
            Case {
                name: "tag-only target gets 100% in its group, nothing by default",
                traffic: vec![t("", "c", "c2", 100, true), t("t", "d", "d1", 0, true)],
                want: vec![("c", "", 100), ("d", "t", 100)],
            },
            Case {
                name: "same revision twice is merged",
                traffic: vec![
                    t("", "c", "c2", 30, true),
                    t("x", "c", "c2", 20, true),
                    t("", "p", "p1", 50, false),
                ],
                want: vec![("c", "", 50), ("c", "x", 100)],
            },
            Case {
                name: "pinned target listed first hides the latest one on the same revision",
                traffic: vec![t("", "c", "c2", 40, false), t("", "c", "c2", 60, true)],
                want: vec![],
            },
        ];
        for case in cases {
            let got: Vec<(String, String, i64)> =
                Rollout::from_targets(&RolloutTarget::from_route_targets(&case.traffic))
                    .configurations
                    .into_iter()
                    .map(|c| (c.configuration_name, c.tag, c.percent))
                    .collect();
            let want: Vec<(String, String, i64)> = case
                .want
                .iter()
                .map(|(c, t, p)| ((*c).to_owned(), (*t).to_owned(), *p))
                .collect();
            assert_eq!(got, want, "{}", case.name);
        }
    }

    #[test]
    fn annotation_json_round_trip_matches_upstream_bytes() {
        let cases = [
            ("empty", Rollout::default(), "{}"),
            (
                "steady with tag",
                Rollout {
                    configurations: vec![
                        cfg(
                            "valhalla",
                            "",
                            100,
                            &[("valhalla-01982", 100)],
                            StepParams::default(),
                        ),
                        cfg(
                            "thor",
                            "tagged",
                            100,
                            &[("thor-02020", 100)],
                            StepParams::default(),
                        ),
                    ],
                },
                r#"{"configurations":[{"configurationName":"valhalla","percent":100,"revisions":[{"revisionName":"valhalla-01982","percent":100}],"stepParams":{}},{"configurationName":"thor","tag":"tagged","percent":100,"revisions":[{"revisionName":"thor-02020","percent":100}],"stepParams":{}}]}"#,
            ),
            (
                "mid-rollout",
                Rollout {
                    configurations: vec![cfg(
                        "hello",
                        "",
                        100,
                        &[("hello-1", 74), ("hello-2", 26)],
                        params(T0, T0 + 120 * SEC, 40 * SEC, 25),
                    )],
                },
                r#"{"configurations":[{"configurationName":"hello","percent":100,"revisions":[{"revisionName":"hello-1","percent":74},{"revisionName":"hello-2","percent":26}],"stepParams":{"starttime":1700000000000000000,"nextStepTime":1700000120000000000,"stepDuration":40000000000,"stepSize":25}}]}"#,
            ),
            (
                "no revisions, html-escaped name",
                Rollout {
                    configurations: vec![cfg("a<b>&c", "", 0, &[], started(5))],
                },
                r#"{"configurations":[{"configurationName":"a\u003cb\u003e\u0026c","percent":0,"stepParams":{"starttime":5}}]}"#,
            ),
        ];
        for (name, rollout, json) in cases {
            assert_eq!(rollout.to_annotation(), json, "{name}");
            let back = Rollout::from_annotation(json);
            assert_eq!(back.ok().as_ref(), Some(&rollout), "{name}");
        }
        // Go accepts nulls for slices and ignores unknown fields.
        let lenient = Rollout::from_annotation(
            r#"{"configurations":[{"configurationName":"c","percent":0,"revisions":null,"stepParams":{},"extra":1}]}"#,
        );
        assert!(lenient.is_ok());
        assert!(matches!(
            Rollout::from_annotation("not json"),
            Err(RolloutError::Json(_))
        ));
        assert!(matches!(
            Rollout::from_annotation(
                r#"{"configurations":[{"configurationName":"c","percent":101}]}"#
            ),
            Err(RolloutError::Invalid(_))
        ));
    }

    #[test]
    fn rollout_duration_scenarios() {
        let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let ok = [
            ("no annotation uses the default", ann(&[]), 60, 60),
            ("no annotation, no default: off", ann(&[]), 0, 0),
            ("negative default: off", ann(&[]), -5, 0),
            (
                "seconds",
                ann(&[(ROLLOUT_DURATION_ANNOTATION, "200s")]),
                60,
                200,
            ),
            (
                "compound",
                ann(&[(ROLLOUT_DURATION_ANNOTATION, "1h2m3s")]),
                0,
                3723,
            ),
            (
                "whole-second fraction",
                ann(&[(ROLLOUT_DURATION_ANNOTATION, "1.5m")]),
                0,
                90,
            ),
            (
                "zero falls back",
                ann(&[(ROLLOUT_DURATION_ANNOTATION, "0s")]),
                45,
                45,
            ),
            (
                "bare zero",
                ann(&[(ROLLOUT_DURATION_ANNOTATION, "0")]),
                45,
                45,
            ),
            (
                "empty value falls back",
                ann(&[(ROLLOUT_DURATION_ANNOTATION, "")]),
                45,
                45,
            ),
            (
                "alternate key",
                ann(&[(ROLLOUT_DURATION_ANNOTATION_ALT, "30s")]),
                0,
                30,
            ),
            (
                "preferred key wins",
                ann(&[
                    (ROLLOUT_DURATION_ANNOTATION, "10s"),
                    (ROLLOUT_DURATION_ANNOTATION_ALT, "30s"),
                ]),
                0,
                10,
            ),
            (
                "empty preferred key hides the alternate",
                ann(&[
                    (ROLLOUT_DURATION_ANNOTATION, ""),
                    (ROLLOUT_DURATION_ANNOTATION_ALT, "30s"),
                ]),
                7,
                7,
            ),
        ];
        for (name, annotations, default, want) in ok {
            let got = rollout_duration(&annotations, default);
            assert_eq!(got.ok(), Some(Duration::from_secs(want)), "{name}");
        }
        for value in ["200", "-5s", "1.5s", "500ms", "soon", "5 s", " 5s"] {
            let got = rollout_duration(&ann(&[(ROLLOUT_DURATION_ANNOTATION, value)]), 60);
            match got {
                Err(RolloutError::InvalidDuration { key, value: v, .. }) => {
                    assert_eq!(key, ROLLOUT_DURATION_ANNOTATION);
                    assert_eq!(v, value);
                }
                other => panic!("{value:?}: expected an error, got {other:?}"),
            }
        }
        let message = rollout_duration(&ann(&[(ROLLOUT_DURATION_ANNOTATION, "200")]), 0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            message.contains(ROLLOUT_DURATION_ANNOTATION) && message.contains("\"200\""),
            "{message}"
        );
    }

    #[derive(Clone, Debug)]
    enum Op {
        NewRevision(usize),
        SetSplit(i64),
        Reconcile {
            advance_secs: i64,
            became_ready: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..2).prop_map(Op::NewRevision),
            (0i64..=100).prop_map(Op::SetSplit),
            (0i64..120, any::<bool>()).prop_map(|(advance_secs, became_ready)| Op::Reconcile {
                advance_secs,
                became_ready
            }),
        ]
    }

    proptest! {
        #[test]
        fn percents_always_sum_to_the_pair_total_and_stay_non_negative(
            duration in 1u32..400,
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let mut r = Reconciler::new(f64::from(duration));
            let mut generation = [1usize, 1];
            let mut a_percent = 100i64;
            let mut now = T0;
            for op in ops {
                match op {
                    Op::NewRevision(config) => generation[config] += 1,
                    Op::SetSplit(p) => a_percent = p,
                    Op::Reconcile { advance_secs, .. } => now += advance_secs * SEC + 123_456_789,
                }
                let became_ready = matches!(op, Op::Reconcile { became_ready: true, .. });
                let target = goal(&[
                    ("a", "", &format!("a-{}", generation[0]), a_percent),
                    ("b", "", &format!("b-{}", generation[1]), 100 - a_percent),
                    ("a", "x", &format!("a-{}", generation[0]), 100),
                ]);
                let (state, next) = r.reconcile(&target, became_ready, now);
                for c in &state.configurations {
                    let sum: i64 = c.revisions.iter().map(|r| r.percent).sum();
                    prop_assert_eq!(sum, c.percent, "{:?}", c);
                    prop_assert!(c.revisions.iter().all(|r| r.percent >= 0), "{:?}", c);
                    prop_assert!(c.percent >= 0);
                    let goal_entry = target
                        .configurations
                        .iter()
                        .find(|g| g.configuration_name == c.configuration_name && g.tag == c.tag);
                    prop_assert_eq!(goal_entry.map(|g| g.percent), Some(c.percent));
                    // The newest revision is always the current latest one.
                    let newest = c.revisions.last().map(|r| r.revision_name.clone());
                    let latest = goal_entry.and_then(|g| g.revisions.first()).map(|r| r.revision_name.clone());
                    prop_assert_eq!(newest, latest);
                }
                if let Some(at) = next {
                    prop_assert!(at > now);
                }
                let annotation = state.to_annotation();
                let back = Rollout::from_annotation(&annotation).ok();
                if state.validate() {
                    prop_assert_eq!(back, Some(state));
                }
            }
        }
    }
}
