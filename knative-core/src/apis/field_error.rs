//! [`FieldError`]: validation errors that know which field they are about.

use std::fmt;

/// How serious a [`Diagnostic`] is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// The object is rejected.
    #[default]
    Error,
    /// The object is accepted; the user should still hear about it.
    Warning,
}

/// One problem found by validation: a message about one or more field paths.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Diagnostic {
    /// What is wrong, e.g. `missing field`.
    pub message: String,
    /// The fields it is about, e.g. `spec.template.spec.containers[0].image`.
    /// An empty path means the object being validated itself.
    pub paths: Vec<String>,
    /// More explanation, printed on the line after the message.
    pub details: String,
    /// Whether this rejects the object.
    pub level: Level,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let paths: Vec<&str> = self
            .paths
            .iter()
            .map(String::as_str)
            .filter(|p| !p.is_empty())
            .collect();
        if paths.is_empty() {
            f.write_str(&self.message)?;
        } else {
            write!(f, "{}: {}", paths.join(", "), self.message)?;
        }
        if !self.details.is_empty() {
            write!(f, "\n{}", self.details)?;
        }
        Ok(())
    }
}

/// Accumulated, path-aware validation errors (`knative.dev/pkg/apis.FieldError`).
///
/// An empty `FieldError` means "valid". Errors are built where the problem is
/// found, with paths relative to the value being validated, and get their
/// full path as they travel up through [`via_field`](Self::via_field) and
/// [`via_index`](Self::via_index):
///
/// ```
/// use knative_core::apis::FieldError;
///
/// let container = FieldError::missing_field("image");
/// let spec = container.via_index(0).via_field("containers").via_field("spec");
/// let err = spec
///     .via_field("template")
///     .via_field("spec")
///     .also(FieldError::invalid_value(-1, "spec.traffic[1].percent"));
/// assert_eq!(
///     err.to_string(),
///     "spec.template.spec.containers[0].image: missing field\n\
///      spec.traffic[1].percent: invalid value: -1"
/// );
/// ```
///
/// `Display` prints one line per problem as `path: message` (the Kubernetes
/// API's order, so a user sees which line of YAML to fix first); problems
/// with the same message are merged into one line listing every path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use = "a FieldError holds validation results; combine it with `also` or turn it into a Result"]
pub struct FieldError {
    diagnostics: Vec<Diagnostic>,
}

/// Field paths a [`FieldError`] constructor accepts: one path or several.
pub trait IntoPaths {
    /// The paths as owned strings.
    fn into_paths(self) -> Vec<String>;
}

impl IntoPaths for &str {
    fn into_paths(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}

impl IntoPaths for String {
    fn into_paths(self) -> Vec<String> {
        vec![self]
    }
}

impl IntoPaths for &String {
    fn into_paths(self) -> Vec<String> {
        vec![self.clone()]
    }
}

impl IntoPaths for &[&str] {
    fn into_paths(self) -> Vec<String> {
        self.iter().map(|p| (*p).to_owned()).collect()
    }
}

impl<const N: usize> IntoPaths for [&str; N] {
    fn into_paths(self) -> Vec<String> {
        self.iter().map(|p| (*p).to_owned()).collect()
    }
}

impl IntoPaths for Vec<String> {
    fn into_paths(self) -> Vec<String> {
        self
    }
}

/// The path of "this value itself", for errors about the value being validated.
pub const CURRENT_FIELD: &str = "";

impl FieldError {
    /// No errors.
    pub fn none() -> Self {
        FieldError::default()
    }

    /// A problem with any message about `paths` (upstream's `ErrGeneric`).
    pub fn new(message: impl Into<String>, paths: impl IntoPaths) -> Self {
        FieldError {
            diagnostics: vec![Diagnostic {
                message: message.into(),
                paths: paths.into_paths(),
                details: String::new(),
                level: Level::Error,
            }],
        }
    }

    /// A required field is missing.
    pub fn missing_field(paths: impl IntoPaths) -> Self {
        Self::new("missing field", paths)
    }

    /// Fields that must not be set here.
    pub fn disallowed_fields(paths: impl IntoPaths) -> Self {
        Self::new("must not set the field(s)", paths)
    }

    /// Deprecated fields that must not be changed in an update.
    pub fn disallowed_update_deprecated_fields(paths: impl IntoPaths) -> Self {
        Self::new("must not update deprecated field(s)", paths)
    }

    /// A field holds a value that is not allowed.
    pub fn invalid_value(value: impl fmt::Display, path: impl IntoPaths) -> Self {
        Self::new(format!("invalid value: {value}"), path)
    }

    /// The element at `index` of the array `field` holds a value that is not allowed.
    pub fn invalid_array_value(value: impl fmt::Display, field: &str, index: usize) -> Self {
        Self::invalid_value(value, CURRENT_FIELD).via_field_index(field, index)
    }

    /// Exactly one of `paths` must be set and none is.
    pub fn missing_one_of(paths: impl IntoPaths) -> Self {
        Self::new("expected exactly one, got neither", paths)
    }

    /// Exactly one of `paths` must be set and more than one is.
    pub fn multiple_one_of(paths: impl IntoPaths) -> Self {
        Self::new("expected exactly one, got both", paths)
    }

    /// A map key that is not a valid name.
    pub fn invalid_key_name(key: &str, path: impl IntoPaths) -> Self {
        Self::new(format!("invalid key name {key:?}"), path)
    }

    /// A value outside `lower..=upper`.
    pub fn out_of_bounds(
        value: impl fmt::Display,
        lower: impl fmt::Display,
        upper: impl fmt::Display,
        path: impl IntoPaths,
    ) -> Self {
        Self::new(format!("expected {lower} <= {value} <= {upper}"), path)
    }

    /// Adds details (printed under the message) to every problem held.
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        let details = details.into();
        for d in &mut self.diagnostics {
            d.details.clone_from(&details);
        }
        self
    }

    /// Sets the level of every problem held (e.g. [`Level::Warning`] for
    /// deprecations that should not reject the object).
    pub fn at(mut self, level: Level) -> Self {
        for d in &mut self.diagnostics {
            d.level = level;
        }
        self
    }

    /// Only the problems of `level`.
    pub fn filter(&self, level: Level) -> FieldError {
        FieldError {
            diagnostics: self
                .diagnostics
                .iter()
                .filter(|d| d.level == level)
                .cloned()
                .collect(),
        }
    }

    /// Adds the problems of `other`.
    pub fn also(mut self, other: FieldError) -> Self {
        self.diagnostics.extend(other.diagnostics);
        self
    }

    /// Adds `other`'s problems in place.
    pub fn push(&mut self, other: FieldError) {
        self.diagnostics.extend(other.diagnostics);
    }

    /// Prefixes every path with `field` (which may itself be dotted, `spec.template`).
    pub fn via_field(self, field: &str) -> Self {
        self.prefix(field)
    }

    /// Prefixes every path with the index `[index]`.
    pub fn via_index(self, index: usize) -> Self {
        self.prefix(&format!("[{index}]"))
    }

    /// Prefixes every path with `field[index]`.
    pub fn via_field_index(self, field: &str, index: usize) -> Self {
        self.via_index(index).via_field(field)
    }

    /// Prefixes every path with the map key `[key]`.
    pub fn via_key(self, key: &str) -> Self {
        self.prefix(&format!("[{key}]"))
    }

    /// Prefixes every path with `field[key]`.
    pub fn via_field_key(self, field: &str, key: &str) -> Self {
        self.via_key(key).via_field(field)
    }

    fn prefix(mut self, prefix: &str) -> Self {
        for d in &mut self.diagnostics {
            for path in &mut d.paths {
                *path = join_path(prefix, path);
            }
        }
        self
    }

    /// True when there is no problem at all.
    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    /// True when some problem has level [`Level::Error`].
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.level == Level::Error)
    }

    /// `Ok(())` unless some problem has level [`Level::Error`]; warnings alone pass.
    pub fn into_result(self) -> Result<(), FieldError> {
        if self.has_errors() { Err(self) } else { Ok(()) }
    }

    /// The problems, merged and sorted as `Display` prints them: problems
    /// with the same message, details and level become one with all their
    /// paths (sorted, without duplicates); the list is sorted by paths, then
    /// message.
    pub fn diagnostics(&self) -> Vec<Diagnostic> {
        let mut merged: Vec<Diagnostic> = Vec::with_capacity(self.diagnostics.len());
        for d in &self.diagnostics {
            match merged
                .iter_mut()
                .find(|m| m.message == d.message && m.details == d.details && m.level == d.level)
            {
                Some(m) => m.paths.extend(d.paths.iter().cloned()),
                None => merged.push(d.clone()),
            }
        }
        for m in &mut merged {
            m.paths.sort();
            m.paths.dedup();
        }
        merged.sort_by(|a, b| {
            (&a.paths, &a.message, &a.details).cmp(&(&b.paths, &b.message, &b.details))
        });
        merged
    }
}

/// Joins path components the way upstream's `flatten` does: dots between
/// fields, none before an index or key (`containers` + `[0]` →
/// `containers[0]`), empty components dropped. Bracketed keys stay whole
/// even when they contain dots (`labels[app.kubernetes.io/name]`).
fn join_path(prefix: &str, path: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + path.len() + 1);
    for part in path_parts(prefix).chain(path_parts(path)) {
        if part.is_empty() {
            continue;
        }
        if !out.is_empty() && !part.starts_with('[') {
            out.push('.');
        }
        out.push_str(part);
    }
    out
}

/// Splits a path into fields and bracketed parts: `a.b[x.y].c` → `a`, `b`,
/// `[x.y]`, `c`.
fn path_parts(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = path;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if let Some(stripped) = rest.strip_prefix('.') {
            rest = stripped;
            return Some("");
        }
        let end = if rest.starts_with('[') {
            rest.find(']').map_or(rest.len(), |i| i + 1)
        } else {
            rest.find(['.', '[']).unwrap_or(rest.len())
        };
        let (part, tail) = rest.split_at(end);
        rest = tail;
        Some(part)
    })
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics().iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}

impl FromIterator<FieldError> for FieldError {
    fn from_iter<I: IntoIterator<Item = FieldError>>(iter: I) -> Self {
        let mut all = FieldError::none();
        for e in iter {
            all.push(e);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_paths_flatten_indexes_onto_their_field() {
        let err = FieldError::missing_field("image")
            .via_index(0)
            .via_field("containers")
            .via_field("spec")
            .via_field("template")
            .via_field("spec");
        assert_eq!(
            err.to_string(),
            "spec.template.spec.containers[0].image: missing field"
        );
    }

    #[test]
    fn consecutive_indexes_and_keys_stay_together() {
        let err = FieldError::invalid_value("x", "bar")
            .via_index(0)
            .via_index(1)
            .via_field("foo");
        assert_eq!(err.to_string(), "foo[1][0].bar: invalid value: x");
        let err = FieldError::invalid_key_name("Bad Key", CURRENT_FIELD)
            .via_field_key("annotations", "Bad Key")
            .via_field("metadata");
        assert_eq!(
            err.to_string(),
            "metadata.annotations[Bad Key]: invalid key name \"Bad Key\""
        );
    }

    #[test]
    fn dotted_map_keys_stay_inside_their_brackets() {
        let err = FieldError::invalid_value("x y", CURRENT_FIELD)
            .via_field_key("labels", "app.kubernetes.io/name")
            .via_field("metadata");
        assert_eq!(
            err.to_string(),
            "metadata.labels[app.kubernetes.io/name]: invalid value: x y"
        );
        let err = FieldError::missing_field("spec.template[a.b].image").via_field("x");
        assert_eq!(err.to_string(), "x.spec.template[a.b].image: missing field");
    }

    #[test]
    fn an_error_about_the_value_itself_takes_the_field_path() {
        let err = FieldError::invalid_array_value(150, "traffic", 1).via_field("spec");
        assert_eq!(err.to_string(), "spec.traffic[1]: invalid value: 150");
        let err = FieldError::new("must be positive", CURRENT_FIELD);
        assert_eq!(err.to_string(), "must be positive");
    }

    #[test]
    fn same_message_merges_paths_and_output_is_sorted() {
        let err = FieldError::missing_field("spec.b")
            .also(FieldError::out_of_bounds(
                101,
                0,
                100,
                "spec.traffic[0].percent",
            ))
            .also(FieldError::missing_field(["spec.a", "spec.b"]));
        assert_eq!(
            err.to_string(),
            "spec.a, spec.b: missing field\nspec.traffic[0].percent: expected 0 <= 101 <= 100"
        );
    }

    #[test]
    fn details_print_on_their_own_line() {
        let err =
            FieldError::invalid_value("3x", "spec.timeout").with_details("use a duration like 30s");
        assert_eq!(
            err.to_string(),
            "spec.timeout: invalid value: 3x\nuse a duration like 30s"
        );
    }

    #[test]
    fn one_of_errors_list_all_fields() {
        assert_eq!(
            FieldError::multiple_one_of(["broker", "brokerRef"])
                .via_field("spec")
                .to_string(),
            "spec.broker, spec.brokerRef: expected exactly one, got both"
        );
        assert_eq!(
            FieldError::missing_one_of(["broker", "brokerRef"]).to_string(),
            "broker, brokerRef: expected exactly one, got neither"
        );
    }

    #[test]
    fn empty_error_is_valid_and_warnings_do_not_reject() {
        assert!(FieldError::none().into_result().is_ok());
        let warning = FieldError::new("deprecated", "spec.old").at(Level::Warning);
        assert!(!warning.is_empty());
        assert!(warning.clone().into_result().is_ok());
        let both = warning.also(FieldError::missing_field("spec.new"));
        assert_eq!(both.filter(Level::Warning).diagnostics().len(), 1);
        assert_eq!(
            both.into_result()
                .expect_err("has an error")
                .filter(Level::Error)
                .to_string(),
            "spec.new: missing field"
        );
    }

    #[test]
    fn errors_collect_from_an_iterator() {
        let err: FieldError = (0..3)
            .map(|i| FieldError::missing_field("name").via_field_index("containers", i))
            .collect();
        assert_eq!(
            err.to_string(),
            "containers[0].name, containers[1].name, containers[2].name: missing field"
        );
    }
}
