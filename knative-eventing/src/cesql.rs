//! CloudEvents SQL (CESQL) v1.0.0: a compiled expression engine over CloudEvent context attributes.
//!
//! Behaviour follows `specs/EVENTING.md §3` (CESQL v1.0.0 semantics and the TCK quirks listed there)
//! and `specs/EVENTING.md §10` (what the `cloudevents-sdk` 0.9 event type can and cannot express).
//!
//! # Usage
//!
//! Compile once with [`Expression::parse`], then evaluate many times with [`Expression::evaluate`]
//! (value plus error list) or [`Expression::matches`] (the filter predicate: `true` iff the value is
//! Boolean `true` and no error was raised; it never formats error messages).
//!
//! # Language summary
//!
//! * Keywords (`AND OR XOR NOT LIKE EXISTS IN TRUE FALSE`), function names and identifiers are
//!   case-insensitive; identifiers are lower-cased at parse time (`EXISTS SOURCE` is `EXISTS source`).
//! * Precedence, highest first: function call; unary `NOT` and `-`; `LIKE`; `EXISTS`; `IN`;
//!   `* / %`; `+ -`; `= != <> < <= > >=` (left-associative); `AND OR XOR` (one level,
//!   right-associative as in the ANTLR grammar: `a OR b AND c` is `a OR (b AND c)`).
//! * Integer literals are `[+-]?[0-9]+` and must fit `i32`. The sign belongs to the literal when
//!   it stands where an operand is expected and is directly followed by digits (`--10` is
//!   `-(-10)`, `4 + -1` works); after an operand it is the binary operator, so `5-3` is `5 - 3`.
//! * Strings are `'…'` or `"…"`. Escapes: `\'`, `\"`, `\\` and a doubled delimiter. Any other
//!   backslash pair is kept verbatim, so `LIKE 'a\_b'` still sees the `\_` escape.
//! * `LIKE` needs a string literal pattern; `IN` needs a non-empty parenthesised list.
//! * Unknown functions and known names with an unsupported arity parse, and evaluate to `false` +
//!   MissingFunction (the TCK expects `CONCAT_WS()` to behave so).
//!
//! # Compiled form and performance
//!
//! Parsing produces a tree in which attribute names are resolved to an enum of the context
//! attributes (extensions keep their lower-cased name for one map lookup), built-in functions are
//! resolved by name and arity, `LIKE` patterns are pre-split into literal and wildcard segments
//! (with `starts_with` / `ends_with` / `contains` / equality fast paths), and chains of one logic
//! operator are flattened into a single n-ary node. Evaluation walks the tree with values that
//! borrow from the event and the expression (`Cow<str>`); Boolean-typed nodes are evaluated by a
//! separate path that returns plain `bool`s. Only computed strings (`CONCAT`, `LOWER`, integer to
//! string casts outside comparisons and `LIKE`, the `time` attribute) and error messages allocate.
//!
//! # Evaluation model (fail-fast)
//!
//! Every operator and function is total. When an operator or function itself fails (cast, division
//! by zero, `ABS(-2147483648)`, a bad `LEFT`/`RIGHT`/`SUBSTRING` argument, a missing attribute or
//! function) it records one [`Error`] and yields the value the spec prescribes for that case.
//! Any enclosing operator whose operand failed does no work of its own: it yields the zero value of
//! *its* return type (`""`, `0`, `false`; `false` when the type is unknown) and evaluation stops,
//! so an [`Evaluation`] carries at most one error. `AND`/`OR` short-circuit, so errors in a skipped
//! right operand are never raised. Examples (all from the TCK): `true AND (1 != 1/0)` is `false` +
//! Math error, `missing / 0` is `0` + MissingAttribute only, `ABS(-2147483648)` is `2147483647` +
//! Math error, `LEFT('abc', -2)` is `'abc'` + FunctionEvaluation error.
//!
//! # Documented decisions and deviations
//!
//! * **`time` loses its offset.** `cloudevents-sdk` stores `time` as `DateTime<Utc>`, so `time` reads
//!   as RFC 3339 in UTC with a `Z` suffix and the shortest fractional seconds (Go `RFC3339Nano`
//!   style): an event sent with `2018-04-26T14:48:09+02:00` reads `2018-04-26T12:48:09Z`. The TCK
//!   case "Timestamp type coercion to string" therefore fails (`specs/EVENTING.md §10`).
//! * **Unset optional context attributes** (`datacontenttype`, `dataschema`, `subject`, `time`) are
//!   missing attributes, exactly like absent extensions: the enclosing sub-expression yields its
//!   zero value plus a MissingAttribute error, and `EXISTS` is `false`. (Pre-v1 drafts of the TCK
//!   read an absent `subject` as `""` or `false` without error; Knative's legacy attribute filter
//!   also reads them as `""`.) `data` is never accessible: it always reads as missing and
//!   `EXISTS data` is `false`.
//! * **Extension values** keep their type: `Boolean` → Boolean, `String` → String, `Integer(i64)` →
//!   Integer when it fits `i32`, otherwise its base-10 String form (so it still compares equal to a
//!   string and `LIKE` works, while `> 5` raises a Cast error).
//! * **`NOT` does not accept an Integer** (TCK quirk): `NOT 10` is `true` + Cast error, i.e. a
//!   non-castable `NOT` operand is taken as `false`. Everywhere else Integer → Boolean is `0` →
//!   `false`, otherwise `true`.
//! * **Implicit cast failures** in other operators yield the operator's zero value plus a Cast error
//!   (`'abc' + 1` is `0`, `'abc' = 1` is `false`).
//! * **Integer overflow** in `+ - *`, unary `-` and `/` (`-2147483648 / -1`) wraps (two's
//!   complement) and raises a Math error; `x % -1` is `0` without error.
//! * **`IN`** evaluates its set left to right and stops at the first equal element.
//! * **`SUBSTRING`** checks, in order: negative length (error), position out of range (error),
//!   position `0` (empty string, no error).
//! * Positions in parse errors are byte offsets into the source text. Identifiers longer than 20
//!   characters are accepted (the spec says SHOULD NOT). Nesting deeper than
//!   [`MAX_NESTING_DEPTH`] is a parse error, which bounds every recursion in the engine.
//! * Identifiers are lower-cased, so an extension stored under a name with upper-case letters
//!   (the SDK does not validate names) cannot be addressed.
//! * Only CloudEvents v1.0 attribute names are known (`schemaurl` of v0.3 is looked up as an
//!   extension). User-defined functions are not supported.

mod ast;
mod eval;
mod functions;
mod lexer;
mod like;
mod parser;
#[cfg(test)]
mod tck;
#[cfg(test)]
mod tests;

use std::fmt;

use cloudevents::Event;

pub(crate) use ast::Node;

/// Maximum nesting depth of a parsed expression (parentheses, operators, arguments, set elements).
///
/// Chains of one logic operator (`a OR b OR c …`) are flat and count as one level. The limit
/// keeps parsing, evaluation, printing and dropping within a 2 MiB thread stack even in debug
/// builds (about 4 KiB of parser stack per level there).
pub const MAX_NESTING_DEPTH: usize = 128;

/// A CESQL value: the three primitive types of the language.
///
/// `Display` prints the value the way `STRING(x)` would cast it (`true`, `-12`, raw text).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// A Boolean.
    Boolean(bool),
    /// A signed 32-bit integer.
    Integer(i32),
    /// A Unicode string.
    String(String),
}

impl Value {
    /// The type of this value.
    pub fn value_type(&self) -> Type {
        match self {
            Value::Boolean(_) => Type::Boolean,
            Value::Integer(_) => Type::Integer,
            Value::String(_) => Type::String,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::String(s) => f.write_str(s),
        }
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Integer(v)
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::String(v)
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::String(v.to_owned())
    }
}

/// The static type of an expression, known after parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    /// Always evaluates to a Boolean.
    Boolean,
    /// Always evaluates to an Integer.
    Integer,
    /// Always evaluates to a String.
    String,
    /// Depends on the event: a bare attribute reference (extensions may be Boolean, Integer or
    /// String). When such an expression fails it yields `false`.
    Any,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Boolean => "Boolean",
            Type::Integer => "Integer",
            Type::String => "String",
            Type::Any => "Any",
        })
    }
}

/// The kind of a CESQL error (the error types of the CESQL spec and TCK).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The expression text is not valid CESQL.
    Parse,
    /// Division or modulo by zero, or integer overflow.
    Math,
    /// An implicit or explicit type cast failed.
    Cast,
    /// The expression addressed an attribute the event does not have.
    MissingAttribute,
    /// No function with that name and arity exists.
    MissingFunction,
    /// A built-in function rejected its arguments (e.g. `LEFT('abc', -1)`).
    FunctionEvaluation,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingAttribute => "missing attribute",
            ErrorKind::MissingFunction => "missing function",
            ErrorKind::FunctionEvaluation => "function evaluation",
        })
    }
}

/// A CESQL parse or evaluation error.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} error{}: {message}", PositionSuffix(*.position))]
pub struct Error {
    kind: ErrorKind,
    message: String,
    position: Option<usize>,
}

struct PositionSuffix(Option<usize>);

impl fmt::Display for PositionSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(p) => write!(f, " at position {p}"),
            None => Ok(()),
        }
    }
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            position: None,
        }
    }

    pub(crate) fn parse(position: usize, message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Parse,
            message: message.into(),
            position: Some(position),
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable description, without the kind and position.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// For parse errors: the byte offset in the source text where the problem was found.
    pub fn position(&self) -> Option<usize> {
        self.position
    }
}

/// The outcome of evaluating an expression: always a value, plus the errors raised.
///
/// Evaluation is fail-fast, so `errors` holds at most one error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// The computed value (the prescribed fallback value when an error was raised).
    pub value: Value,
    /// The errors raised during evaluation; empty on success.
    pub errors: Vec<Error>,
}

impl Evaluation {
    /// Filter semantics: `true` iff the value is Boolean `true` and no error was raised.
    pub fn passes(&self) -> bool {
        self.errors.is_empty() && self.value == Value::Boolean(true)
    }
}

/// A compiled CESQL expression.
///
/// Attribute names, function overloads and `LIKE` patterns are resolved at parse time, so
/// evaluation performs no name lookups other than extension-map lookups. `Display` prints the
/// expression in canonical form (upper-case keywords and function names, lower-case identifiers,
/// single-quoted strings, minimal parentheses); parsing that text yields an equal expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expression {
    root: Node,
}

impl Expression {
    /// The names of the context attributes the expression reads, each
    /// once, in the order they first appear.
    pub fn attributes(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        self.root.visit_attributes(&mut |a| {
            let name = a.name();
            if !names.contains(&name) {
                names.push(name);
            }
        });
        names
    }

    /// Parses and compiles a CESQL expression.
    ///
    /// Unknown functions (or known names with an unsupported arity) are not parse errors: they
    /// evaluate to `false` plus a MissingFunction error, as the TCK requires.
    pub fn parse(input: &str) -> Result<Expression, Error> {
        parser::parse(input).map(|root| Expression { root })
    }

    /// Evaluates the expression against an event.
    pub fn evaluate(&self, event: &Event) -> Evaluation {
        let mut ctx = eval::Ctx::new(event, true);
        let value = match eval::eval(&self.root, &mut ctx) {
            Ok(v) | Err(v) => v.into_value(),
        };
        Evaluation {
            value,
            errors: ctx.into_errors(),
        }
    }

    /// Filter predicate: equivalent to `self.evaluate(event).passes()`, but allocation-free on
    /// error paths (error messages are never built).
    pub fn matches(&self, event: &Event) -> bool {
        let mut ctx = eval::Ctx::new(event, false);
        if self.root.return_type() == Type::Boolean {
            eval::eval_bool(&self.root, &mut ctx) == Ok(true)
        } else {
            matches!(eval::eval(&self.root, &mut ctx), Ok(eval::Val::Bool(true)))
        }
    }

    /// The static return type of the expression.
    pub fn return_type(&self) -> Type {
        self.root.return_type()
    }

    /// `true` iff the expression always evaluates to a Boolean ([`Type::Boolean`]).
    ///
    /// A bare attribute reference has type [`Type::Any`] and returns `false` here even though a
    /// Boolean extension would make it pass as a filter; callers validating filters may accept
    /// `Type::Any` as well.
    pub fn is_boolean(&self) -> bool {
        self.return_type() == Type::Boolean
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.root, f)
    }
}

impl std::str::FromStr for Expression {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expression::parse(s)
    }
}
