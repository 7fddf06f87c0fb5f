//! Results: what Tasks declare and write ([`TaskResult`], [`TaskRunResult`])
//! and what Pipelines publish from them ([`PipelineResult`],
//! [`PipelineRunResult`]) (`specs/BUILD.md §1.5`).

use std::collections::BTreeMap;

use knative_core::apis::FieldError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::param::{ParamType, ParamValue, PropertySpec};

/// A result a Task declares; a step writes it to `$(results.<name>.path)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskResult {
    /// The result's name.
    pub name: String,
    /// `string` (the default), `array` or `object`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ParamType>,
    /// The keys of an `object` result.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, PropertySpec>,
    /// What the result holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where the value comes from when a step (not a file) provides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ParamValue>,
}

impl TaskResult {
    /// A string result.
    pub fn string(name: impl Into<String>) -> Self {
        TaskResult {
            name: name.into(),
            type_: Some(ParamType::String),
            ..TaskResult::default()
        }
    }

    /// The declared type, `object` when only `properties` say so, else `string`.
    pub fn result_type(&self) -> ParamType {
        self.type_.unwrap_or(if self.properties.is_empty() {
            ParamType::String
        } else {
            ParamType::Object
        })
    }

    /// Fills in the type and the type of each property.
    pub fn set_defaults(&mut self) {
        self.type_ = Some(self.result_type());
        for property in self.properties.values_mut() {
            property.type_.get_or_insert(ParamType::String);
        }
    }

    fn validate(&self) -> FieldError {
        let mut errs = validate_result_name(&self.name, "name");
        if self.result_type() == ParamType::Object && self.properties.is_empty() {
            errs.push(
                FieldError::missing_field("properties")
                    .with_details("an object result declares its keys in `properties`"),
            );
        }
        if self.result_type() != ParamType::Object && !self.properties.is_empty() {
            errs.push(
                FieldError::disallowed_fields("properties")
                    .with_details("only object results declare properties"),
            );
        }
        errs
    }
}

/// Checks a result name: letters, digits, `-`, `_` and `.`, starting and
/// ending with a letter or digit.
pub fn validate_result_name(name: &str, path: &str) -> FieldError {
    if name.is_empty() {
        return FieldError::missing_field(path);
    }
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let middle_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ends_ok(name.chars().next()) && ends_ok(name.chars().last()) && middle_ok {
        FieldError::none()
    } else {
        FieldError::invalid_key_name(name, path).with_details(
            "result names consist of letters, digits, '-', '_' and '.', \
             and start and end with a letter or digit",
        )
    }
}

/// Checks declared results: each one, and that names are unique. Paths are
/// relative to the list's field.
pub fn validate_task_results(results: &[TaskResult], field: &str) -> FieldError {
    let mut errs = FieldError::none();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, result) in results.iter().enumerate() {
        errs.push(result.validate().via_field_index(field, i));
        if let Some(first) = seen.insert(result.name.as_str(), i) {
            errs.push(
                FieldError::new(
                    format!(
                        "result {:?} is declared twice (see {field}[{first}])",
                        result.name
                    ),
                    "name",
                )
                .via_field_index(field, i),
            );
        }
    }
    errs
}

/// A result a TaskRun produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskRunResult {
    /// The declared result's name.
    pub name: String,
    /// The result's type.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ParamType>,
    /// The value written.
    pub value: ParamValue,
}

impl TaskRunResult {
    /// A string result.
    pub fn string(name: impl Into<String>, value: impl Into<String>) -> Self {
        TaskRunResult {
            name: name.into(),
            type_: Some(ParamType::String),
            value: ParamValue::String(value.into()),
        }
    }
}

/// A result a Pipeline publishes, computed from its tasks' results.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PipelineResult {
    /// The result's name.
    pub name: String,
    /// `string`, `array` or `object`; inferred from `value` when left out.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ParamType>,
    /// What it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The value, usually `$(tasks.<task>.results.<result>)`.
    pub value: ParamValue,
}

impl PipelineResult {
    /// Fills in the type from the value's shape: a lone `[*]` reference
    /// stands for an array.
    pub fn set_defaults(&mut self) {
        if self.type_.is_none() {
            let inferred = match &self.value {
                ParamValue::String(s) if s.trim_end().ends_with("[*])") => ParamType::Array,
                other => other.param_type(),
            };
            self.type_ = Some(inferred);
        }
    }
}

/// A result a PipelineRun published.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PipelineRunResult {
    /// The Pipeline result's name.
    pub name: String,
    /// Its value.
    pub value: ParamValue,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_names_start_and_end_alphanumeric() {
        assert!(validate_result_name("IMAGE_DIGEST", "name").is_empty());
        assert!(validate_result_name("a.b-c", "name").is_empty());
        assert!(!validate_result_name("-digest", "name").is_empty());
        assert!(!validate_result_name("digest_", "name").is_empty());
        assert!(!validate_result_name("has space", "name").is_empty());
    }

    #[test]
    fn duplicate_results_are_reported_on_the_second() {
        let results = vec![TaskResult::string("url"), TaskResult::string("url")];
        assert_eq!(
            validate_task_results(&results, "results").to_string(),
            "results[1].name: result \"url\" is declared twice (see results[0])"
        );
    }
}
