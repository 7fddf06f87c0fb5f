//! `when` expressions: guards on pipeline tasks and steps
//! (`specs/BUILD.md §1.7`).

use knative_core::apis::FieldError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The operator of a `when` expression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operator {
    /// The input is one of the values.
    In,
    /// The input is none of the values.
    NotIn,
}

/// One guard: `input` compared with `values` by `operator`, or one CEL
/// expression in `cel`. CEL is alpha upstream, behind the feature flag
/// `enable-cel-in-whenexpression`, which is off here: validation rejects
/// `cel` (the field is kept so such manifests parse and get a clear error).
///
/// The operator is kept as text so that a wrong one is reported by
/// validation with its path instead of failing to parse.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WhenExpression {
    /// The value tested, usually a `$(params.*)` or `$(tasks.*.results.*)`
    /// reference.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub input: String,
    /// `in` or `notin`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub operator: String,
    /// The values compared with (non-empty; may use `[*]` array references).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// A CEL expression that replaces `input`/`operator`/`values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cel: Option<String>,
}

impl WhenExpression {
    /// An `in` expression.
    pub fn is_in(input: impl Into<String>, values: &[&str]) -> Self {
        WhenExpression {
            input: input.into(),
            operator: "in".into(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            cel: None,
        }
    }

    /// The operator, if it is a known one.
    pub fn parsed_operator(&self) -> Option<Operator> {
        match self.operator.as_str() {
            "in" => Some(Operator::In),
            "notin" => Some(Operator::NotIn),
            _ => None,
        }
    }

    /// Whether the (already substituted) expression holds. `None` means it
    /// cannot be evaluated: validation rejects `cel`, and only its literals
    /// `true` and `false` are understood here.
    pub fn evaluate(&self) -> Option<bool> {
        if let Some(cel) = &self.cel {
            return match cel.trim() {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            };
        }
        let found = self.values.contains(&self.input);
        match self.parsed_operator()? {
            Operator::In => Some(found),
            Operator::NotIn => Some(!found),
        }
    }

    /// Checks the expression's shape; paths are relative to it. `cel` is
    /// rejected: CEL in when expressions is not enabled.
    pub fn validate(&self) -> FieldError {
        let mut errs = FieldError::none();
        if self.cel.is_some() {
            errs.push(FieldError::new(
                "CEL in when expressions is not enabled \
                 (upstream's alpha feature flag enable-cel-in-whenexpression); \
                 use input, operator and values",
                "cel",
            ));
            let mut set = Vec::new();
            if !self.input.is_empty() {
                set.push("input");
            }
            if !self.operator.is_empty() {
                set.push("operator");
            }
            if !self.values.is_empty() {
                set.push("values");
            }
            if !set.is_empty() {
                errs.push(
                    FieldError::disallowed_fields(set.as_slice())
                        .with_details("a `cel` expression stands alone"),
                );
            }
            return errs;
        }
        if self.parsed_operator().is_none() {
            errs.push(if self.operator.is_empty() {
                FieldError::missing_field("operator")
            } else {
                FieldError::invalid_value(&self.operator, "operator")
                    .with_details("the operator is `in` or `notin`")
            });
        }
        if self.values.is_empty() {
            errs.push(
                FieldError::missing_field("values")
                    .with_details("a when expression compares with at least one value"),
            );
        }
        errs
    }
}

/// Checks a list of expressions. Paths are relative to the list's field.
pub fn validate_when_expressions(when: &[WhenExpression], field: &str) -> FieldError {
    when.iter()
        .enumerate()
        .map(|(i, w)| w.validate().via_field_index(field, i))
        .collect()
}

/// Whether every expression holds (an empty list holds); `None` if one
/// cannot be evaluated.
pub fn all_hold(when: &[WhenExpression]) -> Option<bool> {
    let mut all = true;
    for w in when {
        all &= w.evaluate()?;
    }
    Some(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_and_notin_compare_with_values() {
        assert_eq!(
            WhenExpression::is_in("yes", &["yes", "y"]).evaluate(),
            Some(true)
        );
        let mut w = WhenExpression::is_in("no", &["yes"]);
        assert_eq!(w.evaluate(), Some(false));
        w.operator = "notin".into();
        assert_eq!(w.evaluate(), Some(true));
    }

    #[test]
    fn cel_is_rejected_at_its_path() {
        let w = WhenExpression {
            cel: Some("'$(params.branch)' == 'main'".into()),
            ..WhenExpression::default()
        };
        assert_eq!(
            validate_when_expressions(&[w], "when").to_string(),
            "when[0].cel: CEL in when expressions is not enabled \
             (upstream's alpha feature flag enable-cel-in-whenexpression); \
             use input, operator and values"
        );
    }

    #[test]
    fn a_wrong_operator_is_reported_with_its_path() {
        let mut w = WhenExpression::is_in("a", &["a"]);
        w.operator = "equals".into();
        assert_eq!(
            validate_when_expressions(&[w], "when").to_string(),
            "when[0].operator: invalid value: equals\nthe operator is `in` or `notin`"
        );
    }
}
