//! Checks of the `$(...)` references written in Task and Pipeline fields
//! against what the spec declares (`specs/BUILD.md §1.4`), as upstream's
//! webhook does before anything runs.

use std::collections::{BTreeMap, BTreeSet};

use knative_core::apis::FieldError;

use super::param::{ParamSpec, ParamType};
use crate::substitution::{Occurrence, Reference, Selector, scan};

/// Where a string sits, which decides whether `[*]` may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    /// A string field: `[*]` is not allowed.
    String,
    /// An element of an array field (`command`, `args`, `values`, an
    /// array param value): `[*]` may be the whole element.
    ArrayElement,
    /// A param value given as a string: `[*]` may be the whole value.
    ParamValue,
}

/// The params a spec can see: its own declarations, plus names passed down
/// from an enclosing run or pipeline whose types are not known here.
#[derive(Clone, Debug, Default)]
pub(crate) struct ParamScope<'a> {
    declared: BTreeMap<&'a str, &'a ParamSpec>,
    propagated: BTreeSet<String>,
}

impl<'a> ParamScope<'a> {
    pub(crate) fn new(specs: &'a [ParamSpec], propagated: BTreeSet<String>) -> Self {
        ParamScope {
            declared: specs.iter().map(|p| (p.name.as_str(), p)).collect(),
            propagated,
        }
    }

    /// Problems with one param reference found in a field of kind `field`.
    pub(crate) fn check(
        &self,
        name: &str,
        selector: &Selector,
        occurrence: &Occurrence,
        text: &str,
        field: Field,
        path: &str,
    ) -> FieldError {
        let expr = &occurrence.expression;
        let Some(spec) = self.declared.get(name) else {
            if self.propagated.contains(name) {
                return FieldError::none();
            }
            return FieldError::new(
                format!("$({expr}) refers to param {name:?}, which is not declared"),
                path,
            );
        };
        let type_ = spec.param_type();
        let star_ok = field != Field::String && occurrence.is_whole(text);
        let problem = match (selector, type_) {
            (Selector::Whole, ParamType::String) => None,
            (Selector::Whole, t) => Some(format!(
                "$({expr}) is an {t} param: use $({expr}[*]) as a whole element of an array field{}",
                if t == ParamType::Array {
                    format!(", or $({expr}[<index>])")
                } else {
                    ", or $(params.<name>.<key>)".to_owned()
                }
            )),
            (Selector::All, ParamType::String) => {
                Some(format!("$({expr}) selects all elements of a string param"))
            }
            (Selector::All, ParamType::Object) if field == Field::ArrayElement => Some(format!(
                "$({expr}) is an object; only a param value may take a whole object"
            )),
            (Selector::All, _) if !star_ok => Some(format!(
                "$({expr}) may only be used as a whole element of an array field"
            )),
            (Selector::All, _) => None,
            (Selector::Index(_), ParamType::Array) => None,
            (Selector::Index(_), t) => Some(format!("$({expr}) indexes a {t} param")),
            (Selector::Key(key), ParamType::Object) => (!spec.properties.contains_key(key))
                .then(|| format!("$({expr}): key {key:?} is not among the param's properties")),
            (Selector::Key(_), t) => Some(format!("$({expr}) reads a key of a {t} param")),
        };
        match problem {
            Some(message) => FieldError::new(message, path),
            None => FieldError::none(),
        }
    }
}

/// What a Task's steps and sidecars may refer to.
#[derive(Clone, Debug, Default)]
pub(crate) struct TaskScope<'a> {
    pub(crate) params: ParamScope<'a>,
    pub(crate) results: BTreeSet<&'a str>,
    pub(crate) workspaces: BTreeSet<String>,
    pub(crate) steps: BTreeSet<&'a str>,
}

impl TaskScope<'_> {
    /// Problems with the references in one field.
    pub(crate) fn check(&self, text: &str, field: Field, path: &str) -> FieldError {
        let mut errs = FieldError::none();
        for occurrence in scan(text) {
            let expr = &occurrence.expression;
            let reference = match &occurrence.reference {
                Ok(r) => r,
                Err(reason) => {
                    errs.push(malformed(expr, reason, path));
                    continue;
                }
            };
            match reference {
                Reference::Param { name, selector } => {
                    errs.push(
                        self.params
                            .check(name, selector, &occurrence, text, field, path),
                    );
                }
                Reference::ResultPath { result } if !self.results.contains(result.as_str()) => {
                    errs.push(FieldError::new(
                        format!("$({expr}) refers to result {result:?}, which is not declared"),
                        path,
                    ));
                }
                Reference::Workspace { name, .. } if !self.workspaces.contains(name) => {
                    errs.push(FieldError::new(
                        format!("$({expr}) refers to workspace {name:?}, which is not declared"),
                        path,
                    ));
                }
                Reference::StepExitCodePath { step } if !self.steps.contains(step.as_str()) => {
                    errs.push(FieldError::new(
                        format!("$({expr}) refers to step {step:?}, which does not exist"),
                        path,
                    ));
                }
                Reference::TaskResult { .. }
                | Reference::FinallyResult { .. }
                | Reference::TaskStatus { .. }
                | Reference::TaskReason { .. }
                | Reference::TasksStatus
                | Reference::MatrixLength { .. } => {
                    errs.push(FieldError::new(
                        format!("$({expr}) can only be used in a Pipeline"),
                        path,
                    ));
                }
                _ => {}
            }
        }
        errs
    }
}

pub(crate) fn malformed(expr: &str, reason: &str, path: &str) -> FieldError {
    FieldError::new(format!("malformed reference $({expr}): {reason}"), path)
}
