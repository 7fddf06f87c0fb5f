//! Trigger filters (`specs/EVENTING.md §2`): the legacy attribute map and
//! the Subscriptions API dialects `exact`, `prefix`, `suffix`, `all`,
//! `any`, `not` and `cesql`.
//!
//! A [`Filter`] is compiled once from a [`TriggerSpec`] (CESQL parsed,
//! attribute names resolved) and evaluated per event without allocating,
//! except to format non-string attributes (`time`, integer and boolean
//! extensions) that a filter compares.
//!
//! Results have three states, as upstream's: [`FilterResult::Pass`],
//! [`FilterResult::Fail`] and [`FilterResult::NoFilter`] (nothing to
//! check); only `Fail` keeps an event from the subscriber. `all` fails as
//! soon as a child fails and otherwise returns its last child's result;
//! `any` passes as soon as a child passes and otherwise returns its last
//! child's result (so `any(Fail, NoFilter)` delivers, as upstream); `not`
//! swaps `Pass` and `Fail` and keeps `NoFilter`. When a trigger has both,
//! `filters` wins over `filter`.
//!
//! ```
//! use knative_eventing::api::TriggerSpec;
//! use knative_eventing::filter::{Filter, FilterResult};
//! use cloudevents::EventBuilder;
//!
//! let spec: TriggerSpec = serde_json::from_value(serde_json::json!({
//!     "broker": "default",
//!     "subscriber": {"uri": "http://sink"},
//!     "filters": [{"prefix": {"type": "com.example."}}, {"cesql": "source LIKE '/orders/%'"}]
//! })).unwrap();
//! let filter = Filter::for_trigger(&spec).unwrap();
//! let event = cloudevents::EventBuilderV10::new()
//!     .id("1").ty("com.example.order.created").source("/orders/42")
//!     .build().unwrap();
//! assert_eq!(filter.evaluate(&event), FilterResult::Pass);
//! ```

use std::borrow::Cow;
use std::collections::BTreeMap;

use cloudevents::event::ExtensionValue;
use cloudevents::{AttributesReader, Event};

use crate::api::{SubscriptionsApiFilter, TriggerSpec, is_valid_attribute_name};
use crate::cesql::Expression;

/// The outcome of a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FilterResult {
    /// The event matches.
    Pass,
    /// The event does not match: it is not delivered.
    Fail,
    /// There was nothing to check: the event is delivered.
    NoFilter,
}

impl FilterResult {
    /// Whether the event is delivered (anything but `Fail`).
    pub fn delivers(self) -> bool {
        self != FilterResult::Fail
    }
}

/// Why a trigger's filters cannot be compiled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilterError {
    /// A filter sets no dialect or more than one.
    #[error("{path}: a filter must set exactly one dialect, found {found}")]
    Dialects {
        /// Where, e.g. `filters[1]`.
        path: String,
        /// How many are set.
        found: usize,
    },
    /// An attribute name is not `^[a-z][a-z0-9]*$`.
    #[error("{path}: invalid attribute name {name:?}")]
    AttributeName {
        /// Where.
        path: String,
        /// The name.
        name: String,
    },
    /// A CESQL expression does not parse.
    #[error("{path}: the CESQL expression does not parse: {error}")]
    Cesql {
        /// Where.
        path: String,
        /// The parse error.
        error: crate::cesql::Error,
    },
}

/// A context attribute, resolved at compile time.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attribute {
    SpecVersion,
    Type,
    Source,
    Subject,
    Id,
    Time,
    DataSchema,
    DataContentType,
    DataMediaType,
    Extension(String),
}

impl Attribute {
    fn new(name: &str) -> Self {
        match name {
            "specversion" => Attribute::SpecVersion,
            "type" => Attribute::Type,
            "source" => Attribute::Source,
            "subject" => Attribute::Subject,
            "id" => Attribute::Id,
            "time" => Attribute::Time,
            "dataschema" | "schemaurl" => Attribute::DataSchema,
            "datacontenttype" => Attribute::DataContentType,
            "datamediatype" => Attribute::DataMediaType,
            other => Attribute::Extension(other.to_owned()),
        }
    }

    /// The attribute's string form; `None` when an extension is missing.
    /// Unset optional core attributes read as `""`, an unset `time` as
    /// Go's zero time, as upstream's lookup does.
    fn read<'e>(&self, event: &'e Event) -> Option<Cow<'e, str>> {
        Some(match self {
            Attribute::SpecVersion => Cow::Borrowed(match event.specversion() {
                cloudevents::event::SpecVersion::V03 => "0.3",
                cloudevents::event::SpecVersion::V10 => "1.0",
            }),
            Attribute::Type => Cow::Borrowed(event.ty()),
            Attribute::Source => Cow::Borrowed(event.source().as_str()),
            Attribute::Subject => Cow::Borrowed(event.subject().unwrap_or("")),
            Attribute::Id => Cow::Borrowed(event.id()),
            Attribute::Time => match event.time() {
                Some(t) => Cow::Owned(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                None => Cow::Borrowed("0001-01-01T00:00:00Z"),
            },
            Attribute::DataSchema => Cow::Borrowed(event.dataschema().map_or("", |u| u.as_str())),
            Attribute::DataContentType => Cow::Borrowed(event.datacontenttype().unwrap_or("")),
            Attribute::DataMediaType => Cow::Borrowed(
                event
                    .datacontenttype()
                    .map_or("", |c| c.split(';').next().unwrap_or("").trim()),
            ),
            Attribute::Extension(name) => match event.extension(name)? {
                ExtensionValue::String(s) => Cow::Borrowed(s.as_str()),
                ExtensionValue::Integer(i) => Cow::Owned(i.to_string()),
                ExtensionValue::Boolean(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
            },
        })
    }
}

/// How an attribute is compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    /// Legacy: equal, or (for `""`) present and non-empty.
    Legacy,
    Exact,
    Prefix,
    Suffix,
}

#[derive(Clone, Debug)]
enum Node {
    /// Every attribute condition holds (an empty list: `NoFilter`).
    Attributes(Match, Vec<(Attribute, String)>),
    All(Vec<Node>),
    Any(Vec<Node>),
    Not(Box<Node>),
    Cesql(Box<Expression>),
    /// Nothing to check.
    Nothing,
}

/// A trigger's compiled filters.
#[derive(Clone, Debug)]
pub struct Filter {
    root: Node,
    /// The extension attributes the filter reads (see
    /// [`Filter::reads_extension`]).
    extensions: Box<[Box<str>]>,
}

/// The extension attributes `node` reads, each once.
fn extensions_read(node: &Node, out: &mut Vec<Box<str>>) {
    let mut add = |name: &str| {
        if !out.iter().any(|n| &**n == name) {
            out.push(name.into());
        }
    };
    match node {
        Node::Attributes(_, conditions) => {
            for (attribute, _) in conditions {
                if let Attribute::Extension(name) = attribute {
                    add(name);
                }
            }
        }
        Node::All(nodes) | Node::Any(nodes) => {
            nodes.iter().for_each(|n| extensions_read(n, out));
        }
        Node::Not(n) => extensions_read(n, out),
        Node::Cesql(expression) => {
            for name in expression.attributes() {
                if matches!(Attribute::new(name), Attribute::Extension(_)) {
                    add(name);
                }
            }
        }
        Node::Nothing => {}
    }
}

impl Filter {
    /// Compiles a trigger's filters: its `filters` when there are any
    /// (ANDed), else its legacy `filter.attributes`.
    pub fn for_trigger(spec: &TriggerSpec) -> Result<Filter, FilterError> {
        let root = if spec.filters.is_empty() {
            match spec.filter.as_ref().and_then(|f| f.attributes.as_ref()) {
                None => Node::Nothing,
                Some(map) => attributes(Match::Legacy, map, "filter.attributes")?,
            }
        } else {
            Node::All(
                spec.filters
                    .iter()
                    .enumerate()
                    .map(|(i, f)| compile(f, &format!("filters[{i}]")))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(Filter::of(root))
    }

    fn of(root: Node) -> Filter {
        let mut extensions = Vec::new();
        extensions_read(&root, &mut extensions);
        Filter {
            root,
            extensions: extensions.into_boxed_slice(),
        }
    }

    /// Whether the filter reads the extension attribute `name`: when it
    /// does not, evaluating it on an event with or without that extension
    /// gives the same result.
    pub fn reads_extension(&self, name: &str) -> bool {
        self.extensions.iter().any(|n| &**n == name)
    }

    /// Compiles one Subscriptions API filter.
    pub fn from_subscriptions_api(filter: &SubscriptionsApiFilter) -> Result<Filter, FilterError> {
        Ok(Filter::of(compile(filter, "filter")?))
    }

    /// A filter that lets everything through.
    pub fn none() -> Filter {
        Filter::of(Node::Nothing)
    }

    /// Evaluates the filter on `event`.
    pub fn evaluate(&self, event: &Event) -> FilterResult {
        evaluate(&self.root, event)
    }
}

fn attributes(how: Match, map: &BTreeMap<String, String>, path: &str) -> Result<Node, FilterError> {
    let mut conditions = Vec::with_capacity(map.len());
    for (name, value) in map {
        if !is_valid_attribute_name(name) {
            return Err(FilterError::AttributeName {
                path: path.to_owned(),
                name: name.clone(),
            });
        }
        conditions.push((Attribute::new(name), value.clone()));
    }
    Ok(Node::Attributes(how, conditions))
}

fn compile(filter: &SubscriptionsApiFilter, path: &str) -> Result<Node, FilterError> {
    // As upstream, an empty map, list or expression is no dialect: the
    // first non-empty one applies.
    let found = filter.dialects_set().len();
    if found > 1 {
        return Err(FilterError::Dialects {
            path: path.to_owned(),
            found,
        });
    }
    let map = |m: &Option<BTreeMap<String, String>>| m.as_ref().filter(|m| !m.is_empty()).cloned();
    if let Some(map) = map(&filter.exact) {
        return attributes(Match::Exact, &map, &format!("{path}.exact"));
    }
    if let Some(map) = map(&filter.prefix) {
        return attributes(Match::Prefix, &map, &format!("{path}.prefix"));
    }
    if let Some(map) = map(&filter.suffix) {
        return attributes(Match::Suffix, &map, &format!("{path}.suffix"));
    }
    if let Some(list) = filter.all.as_ref().filter(|l| !l.is_empty()) {
        return Ok(Node::All(
            list.iter()
                .enumerate()
                .map(|(i, f)| compile(f, &format!("{path}.all[{i}]")))
                .collect::<Result<_, _>>()?,
        ));
    }
    if let Some(list) = filter.any.as_ref().filter(|l| !l.is_empty()) {
        return Ok(Node::Any(
            list.iter()
                .enumerate()
                .map(|(i, f)| compile(f, &format!("{path}.any[{i}]")))
                .collect::<Result<_, _>>()?,
        ));
    }
    if let Some(not) = &filter.not {
        return Ok(Node::Not(Box::new(compile(not, &format!("{path}.not"))?)));
    }
    if let Some(expression) = filter.cesql.as_ref().filter(|c| !c.is_empty()) {
        return Expression::parse(expression)
            .map(|e| Node::Cesql(Box::new(e)))
            .map_err(|error| FilterError::Cesql {
                path: format!("{path}.cesql"),
                error,
            });
    }
    // `{}`: always passes.
    Ok(Node::Nothing)
}

fn evaluate(node: &Node, event: &Event) -> FilterResult {
    match node {
        Node::Nothing => FilterResult::NoFilter,
        Node::Attributes(_, conditions) if conditions.is_empty() => FilterResult::NoFilter,
        Node::Attributes(how, conditions) => {
            for (attribute, wanted) in conditions {
                let Some(value) = attribute.read(event) else {
                    return FilterResult::Fail;
                };
                let holds = match how {
                    Match::Legacy if wanted.is_empty() => !value.is_empty(),
                    Match::Legacy | Match::Exact => value == wanted.as_str(),
                    Match::Prefix => value.starts_with(wanted.as_str()),
                    Match::Suffix => value.ends_with(wanted.as_str()),
                };
                if !holds {
                    return FilterResult::Fail;
                }
            }
            FilterResult::Pass
        }
        Node::All(children) => {
            let mut result = FilterResult::NoFilter;
            for child in children {
                result = evaluate(child, event);
                if result == FilterResult::Fail {
                    return FilterResult::Fail;
                }
            }
            result
        }
        Node::Any(children) => {
            let mut result = FilterResult::NoFilter;
            for child in children {
                result = evaluate(child, event);
                if result == FilterResult::Pass {
                    return FilterResult::Pass;
                }
            }
            result
        }
        Node::Not(child) => match evaluate(child, event) {
            FilterResult::Pass => FilterResult::Fail,
            FilterResult::Fail => FilterResult::Pass,
            FilterResult::NoFilter => FilterResult::NoFilter,
        },
        Node::Cesql(expression) => {
            if expression.matches(event) {
                FilterResult::Pass
            } else {
                FilterResult::Fail
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use cloudevents::EventBuilder;
    use cloudevents::EventBuilderV10;
    use serde_json::json;

    use super::*;

    fn event() -> Event {
        EventBuilderV10::new()
            .id("abc")
            .ty("com.example.order.created")
            .source("/orders/42")
            .extension("priority", 7i64)
            .extension("region", "eu-west")
            .build()
            .expect("valid event")
    }

    fn filters(filters: serde_json::Value) -> Filter {
        let spec: TriggerSpec = serde_json::from_value(json!({
            "broker": "b", "subscriber": {"uri": "http://s"}, "filters": filters
        }))
        .expect("spec");
        Filter::for_trigger(&spec).expect("compiles")
    }

    fn legacy(attributes: serde_json::Value) -> Filter {
        let spec: TriggerSpec = serde_json::from_value(json!({
            "broker": "b", "subscriber": {"uri": "http://s"}, "filter": {"attributes": attributes}
        }))
        .expect("spec");
        Filter::for_trigger(&spec).expect("compiles")
    }

    use FilterResult::{Fail, NoFilter, Pass};

    #[test]
    fn legacy_attributes_match_exactly_and_empty_means_present() {
        assert_eq!(
            legacy(json!({"type": "com.example.order.created"})).evaluate(&event()),
            Pass
        );
        assert_eq!(
            legacy(json!({"type": "com.example.order"})).evaluate(&event()),
            Fail
        );
        assert_eq!(legacy(json!({"region": ""})).evaluate(&event()), Pass);
        assert_eq!(legacy(json!({"missing": ""})).evaluate(&event()), Fail);
        assert_eq!(
            legacy(json!({"subject": ""})).evaluate(&event()),
            Fail,
            "unset reads as empty"
        );
        assert_eq!(legacy(json!({"priority": "7"})).evaluate(&event()), Pass);
        assert_eq!(legacy(json!({})).evaluate(&event()), NoFilter);
        let spec: TriggerSpec =
            serde_json::from_value(json!({"broker": "b", "subscriber": {"uri": "http://s"}}))
                .expect("spec");
        assert_eq!(
            Filter::for_trigger(&spec)
                .expect("compiles")
                .evaluate(&event()),
            NoFilter
        );
    }

    #[test]
    fn exact_prefix_and_suffix_compare_string_forms() {
        assert_eq!(
            filters(json!([{"exact": {"source": "/orders/42"}}])).evaluate(&event()),
            Pass
        );
        assert_eq!(
            filters(json!([{"prefix": {"type": "com.example."}}])).evaluate(&event()),
            Pass
        );
        assert_eq!(
            filters(json!([{"suffix": {"region": "-west"}}])).evaluate(&event()),
            Pass
        );
        assert_eq!(
            filters(json!([{"suffix": {"nothere": "x"}}])).evaluate(&event()),
            Fail
        );
        assert_eq!(
            filters(json!([{"exact": {"subject": "x"}}])).evaluate(&event()),
            Fail
        );
    }

    #[test]
    fn filters_know_the_extensions_they_read() {
        let f = filters(json!([
            {"exact": {"type": "t"}},
            {"any": [{"prefix": {"region": "eu"}}, {"cesql": "EXISTS knativebrokerttl AND source = 'x'"}]}
        ]));
        assert!(f.reads_extension("region"));
        assert!(f.reads_extension("knativebrokerttl"));
        assert!(
            !f.reads_extension("type"),
            "a core attribute, not an extension"
        );
        assert!(
            !filters(json!([{"cesql": "'knativebrokerttl' = type"}]))
                .reads_extension("knativebrokerttl")
        );
        assert!(!Filter::none().reads_extension("knativebrokerttl"));
    }

    /// An empty map, list or expression is no dialect: the next non-empty
    /// one applies, as upstream's filter materialisation does.
    #[test]
    fn empty_dialects_are_skipped() {
        assert_eq!(
            filters(json!([{"exact": {}, "prefix": {"type": "com.example."}}])).evaluate(&event()),
            Pass
        );
        assert_eq!(
            filters(json!([{"exact": {}, "prefix": {"type": "org."}}])).evaluate(&event()),
            Fail
        );
        assert_eq!(
            filters(json!([{"all": [], "cesql": "id = 'nope'"}])).evaluate(&event()),
            Fail
        );
        assert_eq!(
            filters(json!([{"exact": {}, "cesql": ""}])).evaluate(&event()),
            NoFilter
        );
    }

    #[test]
    fn all_any_and_not_keep_upstreams_three_states() {
        let pass = json!({"exact": {"id": "abc"}});
        let fail = json!({"exact": {"id": "nope"}});
        let nothing = json!({});
        assert_eq!(
            filters(json!([{"all": [pass, nothing]}])).evaluate(&event()),
            NoFilter
        );
        assert_eq!(
            filters(json!([{"all": [pass, fail]}])).evaluate(&event()),
            Fail
        );
        assert_eq!(filters(json!([{"all": []}])).evaluate(&event()), NoFilter);
        assert_eq!(
            filters(json!([{"any": [fail, pass]}])).evaluate(&event()),
            Pass
        );
        assert_eq!(
            filters(json!([{"any": [fail, nothing]}])).evaluate(&event()),
            NoFilter
        );
        assert_eq!(
            filters(json!([{"any": [fail, fail]}])).evaluate(&event()),
            Fail
        );
        assert_eq!(filters(json!([{"any": []}])).evaluate(&event()), NoFilter);
        assert_eq!(filters(json!([{"not": fail}])).evaluate(&event()), Pass);
        assert_eq!(filters(json!([{"not": pass}])).evaluate(&event()), Fail);
        assert_eq!(
            filters(json!([{"not": nothing}])).evaluate(&event()),
            NoFilter
        );
    }

    #[test]
    fn cesql_passes_only_on_true_without_errors() {
        assert_eq!(
            filters(json!([{"cesql": "priority > 5 AND region = 'eu-west'"}])).evaluate(&event()),
            Pass
        );
        assert_eq!(
            filters(json!([{"cesql": "priority > 9"}])).evaluate(&event()),
            Fail
        );
        // A missing attribute is an error: the event does not pass.
        assert_eq!(
            filters(json!([{"cesql": "missing = 'x' OR TRUE"}])).evaluate(&event()),
            Fail
        );
    }

    #[test]
    fn filters_win_over_the_legacy_filter() {
        let spec: TriggerSpec = serde_json::from_value(json!({
            "broker": "b", "subscriber": {"uri": "http://s"},
            "filter": {"attributes": {"type": "nope"}},
            "filters": [{"exact": {"id": "abc"}}]
        }))
        .expect("spec");
        assert_eq!(
            Filter::for_trigger(&spec)
                .expect("compiles")
                .evaluate(&event()),
            Pass
        );
    }

    #[test]
    fn bad_filters_do_not_compile() {
        let spec: TriggerSpec = serde_json::from_value(json!({
            "broker": "b", "subscriber": {"uri": "http://s"},
            "filters": [{"exact": {"id": "a"}}, {"any": [{"exact": {"Id": "x"}}]}]
        }))
        .expect("spec");
        let err = Filter::for_trigger(&spec)
            .expect_err("bad name")
            .to_string();
        assert_eq!(
            err,
            "filters[1].any[0].exact: invalid attribute name \"Id\""
        );
        let spec: TriggerSpec = serde_json::from_value(json!({
            "broker": "b", "subscriber": {"uri": "http://s"},
            "filters": [{"cesql": "type ="}]
        }))
        .expect("spec");
        let err = Filter::for_trigger(&spec)
            .expect_err("bad cesql")
            .to_string();
        assert!(
            err.starts_with("filters[0].cesql: the CESQL expression does not parse"),
            "{err}"
        );
    }
}
