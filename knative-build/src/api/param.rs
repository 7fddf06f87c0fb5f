//! Params: declarations ([`ParamSpec`]) and values ([`Param`], [`ParamValue`])
//! (`specs/BUILD.md §1.3`).
//!
//! A param has a type, `string` (the default), `array` of strings or `object`
//! with string values and a declared set of keys (`properties`). A value is
//! written in YAML as a plain string, a list or a map, and keeps that shape.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use knative_core::apis::FieldError;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

/// The type of a param or a result: `string`, `array` or `object`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// One string (the default).
    #[default]
    String,
    /// A list of strings.
    Array,
    /// A map of string keys to string values.
    Object,
}

impl ParamType {
    /// The wire form: `string`, `array` or `object`.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Array => "array",
            ParamType::Object => "object",
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A param or result value: a string, an array of strings or an object of
/// strings. Serialized without a tag, as the YAML shows it.
///
/// Numbers and booleans written without quotes (`value: 3`) are read as
/// their text, as Tekton does.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// A string value.
    String(String),
    /// An array value.
    Array(Vec<String>),
    /// An object value.
    Object(BTreeMap<String, String>),
}

impl Default for ParamValue {
    fn default() -> Self {
        ParamValue::String(String::new())
    }
}

impl ParamValue {
    /// The type of this value.
    pub fn param_type(&self) -> ParamType {
        match self {
            ParamValue::String(_) => ParamType::String,
            ParamValue::Array(_) => ParamType::Array,
            ParamValue::Object(_) => ParamType::Object,
        }
    }

    /// The string, if this is a string value.
    pub fn as_string(&self) -> Option<&str> {
        match self {
            ParamValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as JSON text for arrays and objects, and the plain string
    /// otherwise (how array and object results are written to files).
    pub fn to_text(&self) -> String {
        match self {
            ParamValue::String(s) => s.clone(),
            ParamValue::Array(a) => serde_json::to_string(a).unwrap_or_default(),
            ParamValue::Object(o) => serde_json::to_string(o).unwrap_or_default(),
        }
    }

    /// Reads a result written as text: JSON for `array` and `object`
    /// results, the raw text for `string` ones. `None` when the text is not
    /// valid JSON of the declared type.
    pub fn from_text(text: &str, type_: ParamType) -> Option<ParamValue> {
        match type_ {
            ParamType::String => Some(ParamValue::String(text.to_owned())),
            ParamType::Array => serde_json::from_str(text.trim())
                .ok()
                .map(ParamValue::Array),
            ParamType::Object => serde_json::from_str(text.trim())
                .ok()
                .map(ParamValue::Object),
        }
    }
}

impl From<&str> for ParamValue {
    fn from(s: &str) -> Self {
        ParamValue::String(s.to_owned())
    }
}

impl From<String> for ParamValue {
    fn from(s: String) -> Self {
        ParamValue::String(s)
    }
}

impl From<Vec<String>> for ParamValue {
    fn from(a: Vec<String>) -> Self {
        ParamValue::Array(a)
    }
}

impl From<BTreeMap<String, String>> for ParamValue {
    fn from(o: BTreeMap<String, String>) -> Self {
        ParamValue::Object(o)
    }
}

/// A scalar written in YAML or JSON, as text.
fn scalar_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        match &value {
            serde_json::Value::Array(items) => items
                .iter()
                .map(|v| {
                    scalar_text(v).ok_or_else(|| {
                        D::Error::custom(format!("array param values hold strings, got {v}"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(ParamValue::Array),
            serde_json::Value::Object(map) => map
                .iter()
                .map(|(k, v)| {
                    scalar_text(v).map(|s| (k.clone(), s)).ok_or_else(|| {
                        D::Error::custom(format!(
                            "object param values hold strings, got {v} for key {k:?}"
                        ))
                    })
                })
                .collect::<Result<BTreeMap<_, _>, _>>()
                .map(ParamValue::Object),
            serde_json::Value::Null => Err(D::Error::custom(
                "a param value must be a string, an array or an object, got null",
            )),
            other => scalar_text(other)
                .map(ParamValue::String)
                .ok_or_else(|| D::Error::custom(format!("unsupported param value {other}"))),
        }
    }
}

impl JsonSchema for ParamValue {
    fn schema_name() -> Cow<'static, str> {
        "ParamValue".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        // A string, an array of strings or an object of strings: a
        // structural CRD schema cannot say "one of these types", so the
        // value is left open, as upstream's CRDs do.
        json_schema!({
            "description": "A string, an array of strings or an object of strings.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// One key of an `object` param or result.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PropertySpec {
    /// The key's type; only `string` is supported.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ParamType>,
}

/// A param a Task or Pipeline declares.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParamSpec {
    /// The param's name, unique (ignoring case) among the params.
    pub name: String,
    /// `string`, `array` or `object`; inferred from `default` and
    /// `properties` when left out.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ParamType>,
    /// What the param is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The keys of an `object` param.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, PropertySpec>,
    /// The value used when a run gives none. Object defaults may be partial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<ParamValue>,
    /// The values a `string` param may take, when limited.
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    pub enum_: Vec<String>,
}

impl ParamSpec {
    /// A string param without a default.
    pub fn string(name: impl Into<String>) -> Self {
        ParamSpec {
            name: name.into(),
            type_: Some(ParamType::String),
            ..ParamSpec::default()
        }
    }

    /// The declared or inferred type.
    pub fn param_type(&self) -> ParamType {
        self.type_.unwrap_or_else(|| self.inferred_type())
    }

    fn inferred_type(&self) -> ParamType {
        match &self.default {
            Some(v) => v.param_type(),
            None if !self.properties.is_empty() => ParamType::Object,
            None => ParamType::String,
        }
    }

    /// Fills in the type (inferred from `default`, then `properties`) and
    /// the type of each property (`string`).
    pub fn set_defaults(&mut self) {
        if self.type_.is_none() {
            self.type_ = Some(self.inferred_type());
        }
        for property in self.properties.values_mut() {
            property.type_.get_or_insert(ParamType::String);
        }
    }

    /// Checks one declaration; paths are relative to it.
    fn validate(&self) -> FieldError {
        let mut errs = validate_param_name(&self.name, "name");
        let type_ = self.param_type();
        if let Some(default) = &self.default
            && default.param_type() != type_
        {
            errs.push(FieldError::new(
                format!(
                    "default has type {} but the param is declared {type_}",
                    default.param_type()
                ),
                "default",
            ));
        }
        match type_ {
            ParamType::Object => {
                if self.name.contains('.') {
                    errs.push(
                        FieldError::invalid_value(&self.name, "name")
                            .with_details("object param names may not contain dots"),
                    );
                }
                if self.properties.is_empty() {
                    errs.push(
                        FieldError::missing_field("properties")
                            .with_details("an object param declares its keys in `properties`"),
                    );
                }
                for (key, property) in &self.properties {
                    if key.contains('.') {
                        errs.push(
                            FieldError::invalid_key_name(key, CURRENT)
                                .via_field_key("properties", key)
                                .with_details("object keys may not contain dots"),
                        );
                    }
                    if property.type_.is_some_and(|t| t != ParamType::String) {
                        errs.push(
                            FieldError::new("object keys hold strings only", "type")
                                .via_field_key("properties", key),
                        );
                    }
                }
                if let Some(ParamValue::Object(default)) = &self.default {
                    for key in default.keys() {
                        if !self.properties.contains_key(key) {
                            errs.push(
                                FieldError::new(
                                    format!("key {key:?} is not declared in properties"),
                                    CURRENT,
                                )
                                .via_field_key("default", key),
                            );
                        }
                    }
                }
            }
            ParamType::String | ParamType::Array => {
                if !self.properties.is_empty() {
                    errs.push(
                        FieldError::disallowed_fields("properties")
                            .with_details("only object params declare properties"),
                    );
                }
            }
        }
        if !self.enum_.is_empty() {
            if type_ != ParamType::String {
                errs.push(
                    FieldError::disallowed_fields("enum")
                        .with_details("only string params may list allowed values"),
                );
            }
            let mut seen = BTreeSet::new();
            for (i, value) in self.enum_.iter().enumerate() {
                if !seen.insert(value) {
                    errs.push(FieldError::new(
                        format!("value {value:?} is listed twice"),
                        format!("enum[{i}]"),
                    ));
                }
            }
            if let Some(ParamValue::String(default)) = &self.default
                && !self.enum_.contains(default)
            {
                errs.push(FieldError::new(
                    format!("default {default:?} is not one of the allowed values in enum"),
                    "default",
                ));
            }
        }
        errs
    }
}

const CURRENT: &str = knative_core::apis::CURRENT_FIELD;

/// Checks a param name: letters, digits, `-`, `_` and `.`, starting with a
/// letter or `_` (`specs/BUILD.md §1.3`).
pub fn validate_param_name(name: &str, path: &str) -> FieldError {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if name.is_empty() {
        return FieldError::missing_field(path);
    }
    if first_ok && rest_ok {
        FieldError::none()
    } else {
        FieldError::invalid_key_name(name, path).with_details(
            "param names consist of letters, digits, '-', '_' and '.', \
             and start with a letter or '_'",
        )
    }
}

/// Checks a list of declarations: each one, and that names are unique
/// ignoring case. Paths are relative to the list's field (`params[1].name`).
pub fn validate_param_specs(specs: &[ParamSpec], field: &str) -> FieldError {
    let mut errs = FieldError::none();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, spec) in specs.iter().enumerate() {
        errs.push(spec.validate().via_field_index(field, i));
        if let Some(first) = seen.insert(spec.name.to_ascii_lowercase(), i) {
            errs.push(
                FieldError::new(
                    format!(
                        "param {:?} is declared twice (names are compared ignoring case; see {field}[{first}])",
                        spec.name
                    ),
                    "name",
                )
                .via_field_index(field, i),
            );
        }
    }
    errs
}

/// A param's value given by a run or a pipeline task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Param {
    /// The declared param's name.
    pub name: String,
    /// Its value.
    pub value: ParamValue,
}

impl Param {
    /// A param with a value.
    pub fn new(name: impl Into<String>, value: impl Into<ParamValue>) -> Self {
        Param {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Checks that param values name distinct params. Paths are relative to the
/// list's field (`params[1].name`).
pub fn validate_params(params: &[Param], field: &str) -> FieldError {
    let mut errs = FieldError::none();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, param) in params.iter().enumerate() {
        if param.name.is_empty() {
            errs.push(FieldError::missing_field("name").via_field_index(field, i));
        }
        if let Some(first) = seen.insert(param.name.as_str(), i) {
            errs.push(
                FieldError::new(
                    format!(
                        "param {:?} is given twice (see {field}[{first}])",
                        param.name
                    ),
                    "name",
                )
                .via_field_index(field, i),
            );
        }
    }
    errs
}

/// The values of `specs` for a run: each declared param's given value, else
/// its default; object values are completed key by key from the default.
/// Params given but not declared are kept as given (a Task may read
/// propagated values). Declared params with neither value nor default are
/// returned in the error list.
pub fn effective_params(
    specs: &[ParamSpec],
    given: &[Param],
) -> (BTreeMap<String, ParamValue>, Vec<String>) {
    let mut values = BTreeMap::new();
    let mut missing = Vec::new();
    for param in given {
        values.insert(param.name.clone(), param.value.clone());
    }
    for spec in specs {
        match (values.get_mut(&spec.name), &spec.default) {
            (Some(ParamValue::Object(value)), Some(ParamValue::Object(default))) => {
                for (k, v) in default {
                    value.entry(k.clone()).or_insert_with(|| v.clone());
                }
            }
            (Some(_), _) => {}
            (None, Some(default)) => {
                values.insert(spec.name.clone(), default.clone());
            }
            (None, None) => missing.push(spec.name.clone()),
        }
    }
    (values, missing)
}

/// Checks given values against the `enum` of the params they are for
/// (`specs/BUILD.md §1.3`: enums are checked at run time). Paths are
/// `params[i].value` with `i` the index in `given`; each error names the
/// param and its allowed values. Values of undeclared params, params
/// without an enum, and non-string values (enums are for strings) pass.
pub fn validate_param_enums(specs: &[ParamSpec], given: &[Param]) -> FieldError {
    let mut errs = FieldError::none();
    for (i, param) in given.iter().enumerate() {
        let Some(spec) = specs.iter().find(|s| s.name == param.name) else {
            continue;
        };
        if spec.enum_.is_empty() {
            continue;
        }
        let ParamValue::String(value) = &param.value else {
            continue;
        };
        if !spec.enum_.contains(value) {
            errs.push(FieldError::new(
                format!(
                    "param {:?} value {value:?} is not in the enum list; allowed values: {}",
                    param.name,
                    spec.enum_
                        .iter()
                        .map(|v| format!("{v:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                format!("params[{i}].value"),
            ));
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_their_shape_through_yaml() {
        let params: Vec<Param> = serde_yaml::from_str(
            "- {name: s, value: hello}\n- {name: a, value: [x, y]}\n- {name: o, value: {k: v}}\n- {name: n, value: 3}",
        )
        .expect("valid test input");
        assert_eq!(params[0].value, ParamValue::from("hello"));
        assert_eq!(
            params[1].value,
            ParamValue::Array(vec!["x".into(), "y".into()])
        );
        assert_eq!(params[2].value.param_type(), ParamType::Object);
        assert_eq!(params[3].value, ParamValue::from("3"));
        let back = serde_json::to_value(&params[1]).expect("valid test input");
        assert_eq!(back, serde_json::json!({"name": "a", "value": ["x", "y"]}));
    }

    #[test]
    fn type_is_inferred_from_default_then_properties() {
        let mut p = ParamSpec {
            name: "flags".into(),
            default: Some(ParamValue::Array(vec![])),
            ..ParamSpec::default()
        };
        p.set_defaults();
        assert_eq!(p.type_, Some(ParamType::Array));
        let mut p = ParamSpec {
            name: "git".into(),
            properties: [("url".to_owned(), PropertySpec::default())].into(),
            ..ParamSpec::default()
        };
        p.set_defaults();
        assert_eq!(p.type_, Some(ParamType::Object));
        assert_eq!(p.properties["url"].type_, Some(ParamType::String));
    }

    #[test]
    fn names_follow_the_rules_and_are_unique_ignoring_case() {
        assert!(validate_param_name("_a.b-c", "name").is_empty());
        assert!(!validate_param_name("1a", "name").is_empty());
        let specs = vec![ParamSpec::string("Url"), ParamSpec::string("url")];
        let err = validate_param_specs(&specs, "params");
        assert!(
            err.to_string()
                .starts_with("params[1].name: param \"url\" is declared twice")
        );
    }

    #[test]
    fn default_of_the_wrong_type_is_reported_on_default() {
        let specs = vec![ParamSpec {
            name: "x".into(),
            type_: Some(ParamType::Array),
            default: Some(ParamValue::from("one")),
            ..ParamSpec::default()
        }];
        assert_eq!(
            validate_param_specs(&specs, "params").to_string(),
            "params[0].default: default has type string but the param is declared array"
        );
    }

    #[test]
    fn values_outside_the_enum_are_reported_with_param_and_allowed_values() {
        let specs = vec![ParamSpec {
            name: "mode".into(),
            enum_: vec!["fast".into(), "safe".into()],
            ..ParamSpec::default()
        }];
        let ok = vec![Param::new("other", "x"), Param::new("mode", "safe")];
        assert!(validate_param_enums(&specs, &ok).is_empty());
        let bad = vec![Param::new("other", "x"), Param::new("mode", "slow")];
        assert_eq!(
            validate_param_enums(&specs, &bad).to_string(),
            "params[1].value: param \"mode\" value \"slow\" is not in the enum list; allowed values: \"fast\", \"safe\""
        );
    }

    #[test]
    fn object_values_are_completed_from_partial_defaults() {
        let specs = vec![ParamSpec {
            name: "git".into(),
            type_: Some(ParamType::Object),
            properties: [
                ("url".to_owned(), PropertySpec::default()),
                ("rev".to_owned(), PropertySpec::default()),
            ]
            .into(),
            default: Some(ParamValue::Object([("rev".into(), "main".into())].into())),
            ..ParamSpec::default()
        }];
        let given = vec![Param::new(
            "git",
            ParamValue::Object([("url".into(), "https://x".into())].into()),
        )];
        let (values, missing) = effective_params(&specs, &given);
        assert!(missing.is_empty());
        assert_eq!(
            values["git"],
            ParamValue::Object(
                [
                    ("rev".into(), "main".into()),
                    ("url".into(), "https://x".into())
                ]
                .into()
            )
        );
    }
}
