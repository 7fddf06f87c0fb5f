//! Knative status conditions and condition sets.
//!
//! Implements `specs/SERVING.md §1` (the Knative duck status and the *living*
//! condition set) and `specs/BUILD.md §1.8` (the *batch* condition set Tekton
//! uses, whose happy condition is `Succeeded`).
//!
//! A [`ConditionSet`] names one *happy* condition (`Ready` or `Succeeded`) and
//! the *dependent* (terminal) conditions it is derived from. A
//! [`ConditionManager`], obtained with [`ConditionSet::manage`], changes a list
//! of conditions the way Knative does:
//!
//! - marking a dependent `True` sets the happy condition `True` only when every
//!   dependent is `True`; otherwise the happy condition takes the status, reason
//!   and message of the most recently changed unhappy dependent (`False` before
//!   `Unknown`);
//! - marking a dependent `False` sets the happy condition `False` with the same
//!   reason and message;
//! - marking a dependent `Unknown` sets the happy condition `Unknown` unless
//!   another dependent is `False`;
//! - conditions that are not dependents are informational (severity `Info`);
//! - `lastTransitionTime` moves only when status, severity, reason or message
//!   really change, and the list is kept sorted by type.
//!
//! ```
//! use knative_core::condition::{ConditionSet, ConditionStatus};
//!
//! let set = ConditionSet::living(&["ConfigurationsReady", "RoutesReady"]);
//! let mut conditions = Vec::new();
//! let mut manager = set.manage(&mut conditions);
//! manager.initialize();
//! manager.mark_true("ConfigurationsReady");
//! assert!(!manager.is_happy());
//! manager.mark_false("RoutesReady", "RevisionMissing", "Configuration \"hello\" does not have any ready Revision.");
//! let ready = manager.happy_condition().unwrap();
//! assert_eq!(ready.status, ConditionStatus::False);
//! assert_eq!(ready.reason, "RevisionMissing");
//! manager.mark_true("RoutesReady");
//! assert!(manager.is_happy());
//! ```

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The happy condition of a living condition set (long-running resources).
pub const READY: &str = "Ready";
/// The happy condition of a batch condition set (run-to-completion resources).
pub const SUCCEEDED: &str = "Succeeded";

/// The status of a condition: `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// It is not known (yet) whether the condition holds.
    #[default]
    Unknown,
}

impl fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

/// How to treat a condition that is not `True`.
///
/// `Error` is written as an empty string and omitted from YAML, as upstream does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[schemars(with = "String")]
pub enum ConditionSeverity {
    /// A failure of this condition is an error (the default; terminal conditions).
    #[default]
    Error,
    /// A failure of this condition is a warning.
    Warning,
    /// The condition is informational.
    Info,
}

impl ConditionSeverity {
    /// The wire form: `""`, `"Warning"` or `"Info"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionSeverity::Error => "",
            ConditionSeverity::Warning => "Warning",
            ConditionSeverity::Info => "Info",
        }
    }

    /// True for the default severity, which serialization omits.
    pub fn is_error(&self) -> bool {
        *self == ConditionSeverity::Error
    }
}

impl Serialize for ConditionSeverity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ConditionSeverity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "" | "Error" => Ok(ConditionSeverity::Error),
            "Warning" => Ok(ConditionSeverity::Warning),
            "Info" => Ok(ConditionSeverity::Info),
            other => Err(serde::de::Error::custom(format!(
                "unknown condition severity {other:?} (expected \"\", \"Warning\" or \"Info\")"
            ))),
        }
    }
}

/// One readiness condition of a Knative resource (`knative.dev/pkg/apis.Condition`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// The condition's type, a CamelCase word such as `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// How to treat the condition when it is not `True`.
    #[serde(default, skip_serializing_if = "ConditionSeverity::is_error")]
    pub severity: ConditionSeverity,
    /// When the condition last changed status, reason or message.
    ///
    /// Excluded from [`PartialEq`], like upstream's `VolatileTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// One CamelCase word saying why the condition is as it is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// A human-readable explanation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Semantic equality: everything but `lastTransitionTime`.
impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.type_ == other.type_
            && self.status == other.status
            && self.severity == other.severity
            && self.reason == other.reason
            && self.message == other.message
    }
}

impl Condition {
    /// A condition of type `type_` with status `status`, error severity and no reason.
    pub fn new(type_: impl Into<String>, status: ConditionStatus) -> Self {
        Condition {
            type_: type_.into(),
            status,
            ..Condition::default()
        }
    }

    /// Sets the reason and message.
    #[must_use]
    pub fn with_reason(mut self, reason: impl Into<String>, message: impl Into<String>) -> Self {
        self.reason = reason.into();
        self.message = message.into();
        self
    }

    /// True when the status is `True`.
    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }

    /// True when the status is `False`.
    pub fn is_false(&self) -> bool {
        self.status == ConditionStatus::False
    }

    /// True when the status is `Unknown`.
    pub fn is_unknown(&self) -> bool {
        self.status == ConditionStatus::Unknown
    }
}

/// Finds the condition of type `type_` in a list.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// The Knative duck status every resource carries (`knative.dev/pkg/apis/duck/v1.Status`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The `metadata.generation` the controller last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The resource's conditions, sorted by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Extra status information controllers record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Status {
    /// The condition of type `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        find(&self.conditions, type_)
    }

    /// Whether a client may treat the resource as ready: the controller has
    /// observed `generation` and the `happy` condition is `True`
    /// (`specs/SERVING.md §1`, upstream's `IsReady()`).
    pub fn is_ready(&self, generation: Option<i64>, happy: &str) -> bool {
        self.observed_generation.is_some()
            && self.observed_generation == generation
            && self.condition(happy).is_some_and(Condition::is_true)
    }
}

/// A happy condition and the dependent conditions it is derived from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConditionSet {
    happy: String,
    dependents: Vec<String>,
}

impl ConditionSet {
    /// A living condition set: happy condition `Ready` derived from `dependents`.
    pub fn living(dependents: &[&str]) -> Self {
        Self::new(READY, dependents)
    }

    /// A batch condition set: happy condition `Succeeded` derived from `dependents`
    /// (Tekton's TaskRun and PipelineRun use it with no dependents).
    pub fn batch(dependents: &[&str]) -> Self {
        Self::new(SUCCEEDED, dependents)
    }

    /// A condition set with any happy condition. Duplicates and the happy
    /// condition itself are dropped from `dependents`.
    pub fn new(happy: &str, dependents: &[&str]) -> Self {
        let mut deps: Vec<String> = Vec::with_capacity(dependents.len());
        for d in dependents {
            if *d != happy && !deps.iter().any(|x| x == d) {
                deps.push((*d).to_owned());
            }
        }
        ConditionSet {
            happy: happy.to_owned(),
            dependents: deps,
        }
    }

    /// The happy condition's type.
    pub fn happy(&self) -> &str {
        &self.happy
    }

    /// The dependent conditions' types, in the order given.
    pub fn dependents(&self) -> &[String] {
        &self.dependents
    }

    /// Whether `type_` is the happy condition or one of its dependents.
    pub fn is_terminal(&self, type_: &str) -> bool {
        type_ == self.happy || self.dependents.iter().any(|d| d == type_)
    }

    /// The severity a condition of this type gets: `Error` for terminal
    /// conditions, `Info` for the others.
    pub fn severity(&self, type_: &str) -> ConditionSeverity {
        if self.is_terminal(type_) {
            ConditionSeverity::Error
        } else {
            ConditionSeverity::Info
        }
    }

    /// Whether the happy condition in `conditions` is `True`.
    pub fn is_happy(&self, conditions: &[Condition]) -> bool {
        find(conditions, &self.happy).is_some_and(Condition::is_true)
    }

    /// A manager over `conditions` that stamps changes with the current time.
    pub fn manage<'a>(&'a self, conditions: &'a mut Vec<Condition>) -> ConditionManager<'a> {
        self.manage_at(conditions, Time(jiff::Timestamp::now()))
    }

    /// A manager over `conditions` that stamps changes with `now` (for tests and replays).
    pub fn manage_at<'a>(
        &'a self,
        conditions: &'a mut Vec<Condition>,
        now: Time,
    ) -> ConditionManager<'a> {
        ConditionManager {
            set: self,
            conditions,
            now,
            touched: Vec::new(),
        }
    }
}

/// Changes a list of conditions following a [`ConditionSet`]'s rules.
#[derive(Debug)]
pub struct ConditionManager<'a> {
    set: &'a ConditionSet,
    conditions: &'a mut Vec<Condition>,
    now: Time,
    /// Types changed through this manager, oldest first: they all carry the
    /// same `now`, so this orders changes that share a transition time.
    touched: Vec<String>,
}

impl ConditionManager<'_> {
    /// The condition of type `type_`, if set.
    pub fn get(&self, type_: &str) -> Option<&Condition> {
        find(self.conditions, type_)
    }

    /// The happy (top-level) condition, if set.
    pub fn happy_condition(&self) -> Option<&Condition> {
        self.get(&self.set.happy)
    }

    /// Whether the happy condition is `True`.
    pub fn is_happy(&self) -> bool {
        self.set.is_happy(self.conditions)
    }

    /// Whether the happy condition is `True` or `False` (a batch run has ended).
    pub fn is_done(&self) -> bool {
        self.happy_condition().is_some_and(|c| !c.is_unknown())
    }

    /// Sets `condition`, replacing the one of the same type.
    ///
    /// Nothing changes when the new condition equals the old one apart from
    /// `lastTransitionTime`; otherwise `lastTransitionTime` becomes now and the
    /// list is re-sorted by type.
    pub fn set(&mut self, mut condition: Condition) {
        if self.get(&condition.type_) == Some(&condition) {
            return;
        }
        condition.last_transition_time = Some(self.now.clone());
        self.touched.retain(|t| *t != condition.type_);
        self.touched.push(condition.type_.clone());
        // Also drops duplicates another writer may have left.
        self.conditions.retain(|c| c.type_ != condition.type_);
        self.conditions.push(condition);
        self.conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    }

    /// Removes a non-terminal condition. Terminal conditions cannot be
    /// cleared: the call returns an error naming the condition.
    pub fn clear(&mut self, type_: &str) -> Result<(), ClearTerminalCondition> {
        if self.set.is_terminal(type_) {
            return Err(ClearTerminalCondition(type_.to_owned()));
        }
        self.conditions.retain(|c| c.type_ != type_);
        Ok(())
    }

    /// Sets the happy condition to `Unknown` if it is unset, and every unset
    /// dependent to `True` if the happy condition is `True`, else `Unknown`.
    pub fn initialize(&mut self) {
        let happy_status = match self.happy_condition() {
            Some(c) => c.status,
            None => {
                let happy = Condition::new(self.set.happy.clone(), ConditionStatus::Unknown);
                self.set(happy);
                ConditionStatus::Unknown
            }
        };
        let status = if happy_status == ConditionStatus::True {
            ConditionStatus::True
        } else {
            ConditionStatus::Unknown
        };
        for dependent in &self.set.dependents {
            if self.get(dependent).is_none() {
                self.set(Condition::new(dependent.clone(), status));
            }
        }
    }

    /// Marks `type_` `True`, then updates the happy condition from the dependents.
    pub fn mark_true(&mut self, type_: &str) {
        self.mark_true_with_reason(type_, "", "");
    }

    /// Marks `type_` `True` with a reason and message, then updates the happy
    /// condition from the dependents.
    pub fn mark_true_with_reason(&mut self, type_: &str, reason: &str, message: &str) {
        self.set(self.with_severity(type_, ConditionStatus::True, reason, message));
        self.mark_happy(type_);
    }

    /// Marks `type_` `Unknown`; the happy condition becomes `Unknown` too when
    /// `type_` is a dependent, unless a dependent is `False` (then the happy
    /// condition is made `False` if it is not already).
    pub fn mark_unknown(&mut self, type_: &str, reason: &str, message: &str) {
        self.set(self.with_severity(type_, ConditionStatus::Unknown, reason, message));

        let any_false = self
            .set
            .dependents
            .iter()
            .any(|d| self.get(d).is_some_and(Condition::is_false));
        if any_false {
            if !self.happy_condition().is_some_and(Condition::is_false) {
                let happy = self.set.happy.clone();
                self.mark_false(&happy, reason, message);
            }
            return;
        }
        if self.set.dependents.iter().any(|d| d == type_) {
            let happy = Condition::new(self.set.happy.clone(), ConditionStatus::Unknown)
                .with_reason(reason, message);
            self.set(happy);
        }
    }

    /// Marks `type_` `False`; when `type_` is a dependent the happy condition
    /// becomes `False` with the same reason and message.
    pub fn mark_false(&mut self, type_: &str, reason: &str, message: &str) {
        self.set(self.with_severity(type_, ConditionStatus::False, reason, message));
        if self.set.dependents.iter().any(|d| d == type_) {
            let happy = Condition::new(self.set.happy.clone(), ConditionStatus::False)
                .with_reason(reason, message);
            self.set(happy);
        }
    }

    /// A condition of `type_` with the severity this set gives it.
    fn with_severity(
        &self,
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: &str,
    ) -> Condition {
        Condition {
            severity: self.set.severity(type_),
            ..Condition::new(type_, status).with_reason(reason, message)
        }
    }

    /// After `changed` became `True`: the happy condition takes the state of
    /// the most recent unhappy dependent, or becomes `True` if there is none.
    fn mark_happy(&mut self, changed: &str) {
        match self.find_unhappy_dependent() {
            Some((status, reason, message)) => {
                let happy =
                    Condition::new(self.set.happy.clone(), status).with_reason(reason, message);
                self.set(happy);
            }
            None if changed != self.set.happy => {
                self.set(Condition::new(
                    self.set.happy.clone(),
                    ConditionStatus::True,
                ));
            }
            None => {}
        }
    }

    /// The unhappy terminal condition that should decide the happy condition:
    /// among error-severity conditions other than the happy one, the most
    /// recently changed `False` one, else the most recently changed `Unknown`
    /// one; an unset dependent counts as `Unknown` with no reason.
    fn find_unhappy_dependent(&self) -> Option<(ConditionStatus, String, String)> {
        if self.set.dependents.is_empty() {
            return None;
        }
        let mut terminal: Vec<&Condition> = self
            .conditions
            .iter()
            .filter(|c| c.severity == ConditionSeverity::Error && c.type_ != self.set.happy)
            .collect();
        // Most recent first: by transition time, then by the order of
        // changes made through this manager (which share one time).
        let recency = |c: &Condition| {
            (
                c.last_transition_time.as_ref().map(|t| t.0),
                self.touched.iter().position(|t| *t == c.type_),
            )
        };
        terminal.sort_by_key(|c| std::cmp::Reverse(recency(c)));
        let pick = terminal
            .iter()
            .find(|c| c.is_false())
            .or_else(|| terminal.iter().find(|c| c.is_unknown()));
        if let Some(c) = pick {
            return Some((c.status, c.reason.clone(), c.message.clone()));
        }
        let all_set = self.set.dependents.iter().all(|d| self.get(d).is_some());
        if !all_set {
            return Some((ConditionStatus::Unknown, String::new(), String::new()));
        }
        None
    }
}

/// Returned by [`ConditionManager::clear`] for a terminal condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "condition {0:?} is terminal (the happy condition or one of its dependents) and cannot be cleared"
)]
pub struct ClearTerminalCondition(pub String);

#[cfg(test)]
mod tests;
