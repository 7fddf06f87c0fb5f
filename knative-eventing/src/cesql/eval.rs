//! Fail-fast evaluator over borrowed values (`specs/EVENTING.md §3`).
//!
//! Values borrow from the event or from the expression (`Cow::Borrowed`); only computed strings
//! (`CONCAT`, `LOWER`, integer → string casts outside comparisons, `time`) allocate. A node's
//! outcome is `Ok(value)` or `Err(value)`: `Err` means an error was raised in that sub-tree (and
//! recorded in the context when collecting); the carried value is the one the failing operator
//! prescribes, which is what the whole expression reports if the failure reaches the root.

use std::borrow::Cow;

use cloudevents::event::{ExtensionValue, SpecVersion};
use cloudevents::{AttributesReader, Event};

use super::ast::{Attr, BinOp, Literal, LogicOp, Node};
use super::{Error, ErrorKind, Type, Value};

/// An evaluation-time value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Val<'a> {
    Bool(bool),
    Int(i32),
    Str(Cow<'a, str>),
}

impl Val<'_> {
    pub(crate) fn into_value(self) -> Value {
        match self {
            Val::Bool(b) => Value::Boolean(b),
            Val::Int(i) => Value::Integer(i),
            Val::Str(s) => Value::String(s.into_owned()),
        }
    }

    pub(crate) fn zero(ty: Type) -> Val<'static> {
        match ty {
            Type::Integer => Val::Int(0),
            Type::String => Val::Str(Cow::Borrowed("")),
            Type::Boolean | Type::Any => Val::Bool(false),
        }
    }

    fn describe(&self) -> String {
        match self {
            Val::Bool(b) => format!("Boolean {b}"),
            Val::Int(i) => format!("Integer {i}"),
            Val::Str(s) => {
                let mut out = String::from("String ");
                // Infallible for String targets.
                let _ = super::ast::write_string_literal(&mut out, s);
                out
            }
        }
    }
}

/// `Ok`: the sub-expression succeeded. `Err`: it raised an error; the value is its fallback.
pub(crate) type Outcome<'a> = Result<Val<'a>, Val<'a>>;

/// Evaluation context: the event and the error sink.
pub(crate) struct Ctx<'a> {
    event: &'a Event,
    collect: bool,
    errors: Vec<Error>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(event: &'a Event, collect: bool) -> Self {
        Ctx {
            event,
            collect,
            errors: Vec::new(),
        }
    }

    pub(crate) fn into_errors(self) -> Vec<Error> {
        self.errors
    }

    /// Records an error; the message is only built when errors are collected.
    pub(crate) fn raise(&mut self, kind: ErrorKind, message: impl FnOnce() -> String) {
        if self.collect {
            self.errors.push(Error::new(kind, message()));
        }
    }

    pub(crate) fn cast_error(&mut self, v: &Val<'_>, target: Type) {
        self.raise(ErrorKind::Cast, || {
            format!("cannot cast {} to {target}", v.describe())
        });
    }
}

/// Formats an `i32` on the stack (for comparisons and `LIKE` without allocation).
pub(crate) struct IntStr {
    buf: [u8; 11],
    start: usize,
}

impl IntStr {
    pub(crate) fn new(i: i32) -> Self {
        let mut buf = [0u8; 11];
        let mut pos = buf.len();
        let mut n = i64::from(i).unsigned_abs();
        loop {
            pos -= 1;
            // `n % 10` is < 10, so the cast is lossless.
            buf[pos] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if i < 0 {
            pos -= 1;
            buf[pos] = b'-';
        }
        IntStr { buf, start: pos }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.buf.get(self.start..).unwrap_or_default()).unwrap_or_default()
    }
}

pub(crate) fn bool_str(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// Integer cast (`INT` semantics): Boolean → 1/0, String → base-10 `i32` with optional sign.
pub(crate) fn cast_int(v: &Val<'_>) -> Option<i32> {
    match v {
        Val::Int(i) => Some(*i),
        Val::Bool(b) => Some(i32::from(*b)),
        Val::Str(s) => s.parse::<i32>().ok(),
    }
}

/// Boolean cast (`BOOL` semantics): Integer 0 → false else true, String "true"/"false" in any case.
pub(crate) fn cast_bool(v: &Val<'_>) -> Option<bool> {
    match v {
        Val::Bool(b) => Some(*b),
        Val::Int(i) => Some(*i != 0),
        Val::Str(s) => {
            if s.eq_ignore_ascii_case("true") {
                Some(true)
            } else if s.eq_ignore_ascii_case("false") {
                Some(false)
            } else {
                None
            }
        }
    }
}

/// String cast (`STRING` semantics); never fails.
pub(crate) fn cast_str(v: Val<'_>) -> Cow<'_, str> {
    match v {
        Val::Str(s) => s,
        Val::Bool(b) => Cow::Borrowed(bool_str(b)),
        Val::Int(i) => Cow::Owned(i.to_string()),
    }
}

/// Runs `f` with the string form of `v`, allocating nothing.
fn with_str<R>(v: &Val<'_>, f: impl FnOnce(&str) -> R) -> R {
    match v {
        Val::Str(s) => f(s),
        Val::Bool(b) => f(bool_str(*b)),
        Val::Int(i) => f(IntStr::new(*i).as_str()),
    }
}

/// Equality after casting `other` to the type of `target` (`None`: the cast failed).
fn equal_as(target: &Val<'_>, other: &Val<'_>) -> Option<bool> {
    match target {
        Val::Bool(b) => cast_bool(other).map(|o| o == *b),
        Val::Int(i) => cast_int(other).map(|o| o == *i),
        Val::Str(s) => Some(with_str(other, |o| o == s.as_ref())),
    }
}

fn time_string(event: &Event) -> Option<String> {
    event.time().map(|t| {
        let mut s = t.format("%Y-%m-%dT%H:%M:%S%.f").to_string();
        if s.rfind('.').is_some() {
            while s.ends_with('0') {
                s.pop();
            }
            if s.ends_with('.') {
                s.pop();
            }
        }
        s.push('Z');
        s
    })
}

/// Reads an attribute; `None` when it is absent and must raise MissingAttribute.
fn read_attribute<'a>(attr: &'a Attr, event: &'a Event) -> Option<Val<'a>> {
    let borrowed = |s: &'a str| Val::Str(Cow::Borrowed(s));
    Some(match attr {
        Attr::Id => borrowed(event.id()),
        Attr::Source => borrowed(event.source().as_str()),
        Attr::SpecVersion => borrowed(match event.specversion() {
            SpecVersion::V03 => "0.3",
            SpecVersion::V10 => "1.0",
        }),
        Attr::Type => borrowed(event.ty()),
        Attr::DataContentType => borrowed(event.datacontenttype()?),
        Attr::DataSchema => borrowed(event.dataschema()?.as_str()),
        Attr::Subject => borrowed(event.subject()?),
        Attr::Time => Val::Str(Cow::Owned(time_string(event)?)),
        Attr::Data => return None,
        Attr::Extension(name) => match event.extension(name)? {
            ExtensionValue::String(s) => borrowed(s),
            ExtensionValue::Boolean(b) => Val::Bool(*b),
            ExtensionValue::Integer(i) => i32::try_from(*i)
                .map(Val::Int)
                .unwrap_or_else(|_| Val::Str(Cow::Owned(i.to_string()))),
        },
    })
}

fn attribute_exists(attr: &Attr, event: &Event) -> bool {
    match attr {
        Attr::Id | Attr::Source | Attr::SpecVersion | Attr::Type => true,
        Attr::DataContentType => event.datacontenttype().is_some(),
        Attr::DataSchema => event.dataschema().is_some(),
        Attr::Subject => event.subject().is_some(),
        Attr::Time => event.time().is_some(),
        Attr::Data => false,
        Attr::Extension(name) => event.extension(name).is_some(),
    }
}

/// Evaluates an operand; on failure returns `Err(zero)` from the enclosing function.
macro_rules! operand {
    ($node:expr, $ctx:expr, $zero:expr) => {
        match value($node, $ctx) {
            Ok(v) => v,
            Err(_) => return Err($zero),
        }
    };
}

fn int_operand<'a>(v: Val<'a>, ctx: &mut Ctx<'a>) -> Result<i32, Val<'a>> {
    cast_int(&v).ok_or_else(|| {
        ctx.cast_error(&v, Type::Integer);
        Val::Int(0)
    })
}

fn math_overflow<'a>(ctx: &mut Ctx<'a>, what: &str, wrapped: i32) -> Val<'a> {
    ctx.raise(ErrorKind::Math, || format!("integer overflow in {what}"));
    Val::Int(wrapped)
}

fn arithmetic<'a>(op: BinOp, a: i32, b: i32, ctx: &mut Ctx<'a>) -> Outcome<'a> {
    let (checked, wrapped) = match op {
        BinOp::Add => (a.checked_add(b), a.wrapping_add(b)),
        BinOp::Sub => (a.checked_sub(b), a.wrapping_sub(b)),
        BinOp::Mul => (a.checked_mul(b), a.wrapping_mul(b)),
        BinOp::Div | BinOp::Mod if b == 0 => {
            ctx.raise(ErrorKind::Math, || {
                format!(
                    "{} by zero",
                    if op == BinOp::Div {
                        "division"
                    } else {
                        "modulo"
                    }
                )
            });
            return Err(Val::Int(0));
        }
        BinOp::Div => (a.checked_div(b), a.wrapping_div(b)),
        // `i32::MIN % -1` is mathematically 0: no overflow in the result.
        BinOp::Mod => (Some(a.wrapping_rem(b)), a.wrapping_rem(b)),
        // Comparisons never reach here.
        _ => return Ok(Val::Int(0)),
    };
    match checked {
        Some(v) => Ok(Val::Int(v)),
        None => Err(math_overflow(ctx, op.symbol(), wrapped)),
    }
}

/// Outcome of a Boolean-typed node: `Err` carries the fallback value, as in [`Outcome`].
pub(crate) type BoolOutcome = Result<bool, bool>;

fn wrap_bool<'a>(o: BoolOutcome) -> Outcome<'a> {
    o.map(Val::Bool).map_err(Val::Bool)
}

/// Evaluates any node to a value.
pub(crate) fn eval<'a>(node: &'a Node, ctx: &mut Ctx<'a>) -> Outcome<'a> {
    match node {
        Node::Literal(Literal::Bool(b)) => Ok(Val::Bool(*b)),
        Node::Literal(Literal::Int(i)) => Ok(Val::Int(*i)),
        Node::Literal(Literal::Str(s)) => Ok(Val::Str(Cow::Borrowed(s))),
        Node::Attribute(attr) => attribute(attr, ctx),
        Node::Negate(operand) => negate(operand, ctx),
        Node::Binary(op, l, r) if op.return_type() == Type::Integer => {
            let lv = operand!(l, ctx, Val::Int(0));
            let rv = operand!(r, ctx, Val::Int(0));
            let a = int_operand(lv, ctx)?;
            let b = int_operand(rv, ctx)?;
            arithmetic(*op, a, b, ctx)
        }
        Node::Call { function, args } => function.call(args, ctx),
        _ => wrap_bool(eval_bool(node, ctx)),
    }
}

/// Literals are handled inline to avoid a call per leaf.
#[inline]
fn value<'a>(node: &'a Node, ctx: &mut Ctx<'a>) -> Outcome<'a> {
    match node {
        Node::Literal(Literal::Int(i)) => Ok(Val::Int(*i)),
        Node::Literal(Literal::Str(s)) => Ok(Val::Str(Cow::Borrowed(s))),
        _ => eval(node, ctx),
    }
}

/// Evaluates a node whose static type is Boolean; equivalent to [`eval`] with the value
/// unwrapped, but keeps results in registers on the filter hot path.
pub(crate) fn eval_bool<'a>(node: &'a Node, ctx: &mut Ctx<'a>) -> BoolOutcome {
    match node {
        Node::Literal(Literal::Bool(b)) => Ok(*b),
        Node::Exists(attr) => Ok(attribute_exists(attr, ctx.event)),
        Node::Not(operand) => not(operand, ctx),
        Node::Binary(op, l, r) if op.return_type() == Type::Boolean => compare(*op, l, r, ctx),
        Node::Logic(op, operands) => logic(*op, operands, ctx),
        Node::Like {
            operand,
            pattern,
            negated,
        } => {
            let v = operand!(operand, ctx, false);
            let m = with_str(&v, |s| pattern.matches(s));
            Ok(m != *negated)
        }
        Node::In {
            operand,
            set,
            negated,
        } => in_set(operand, set, *negated, ctx),
        Node::MissingFunction { name, args } => {
            ctx.raise(ErrorKind::MissingFunction, || {
                format!(
                    "no function {name} accepting {} argument{}",
                    args.len(),
                    if args.len() == 1 { "" } else { "s" }
                )
            });
            Err(false)
        }
        // BOOL(x) and, defensively, anything else.
        _ => match eval(node, ctx) {
            Ok(Val::Bool(b)) => Ok(b),
            Err(Val::Bool(b)) => Err(b),
            Ok(_) | Err(_) => Err(false),
        },
    }
}

/// An operand used as a Boolean (logic operators): Boolean-typed nodes take the fast path,
/// others are evaluated and cast (Cast error on failure).
fn bool_operand<'a>(node: &'a Node, ctx: &mut Ctx<'a>) -> Result<bool, ()> {
    if node.return_type() == Type::Boolean {
        return eval_bool(node, ctx).map_err(drop);
    }
    let v = value(node, ctx).map_err(drop)?;
    cast_bool(&v).ok_or_else(|| ctx.cast_error(&v, Type::Boolean))
}

fn attribute<'a>(attr: &'a Attr, ctx: &mut Ctx<'a>) -> Outcome<'a> {
    match read_attribute(attr, ctx.event) {
        Some(v) => Ok(v),
        None => {
            ctx.raise(ErrorKind::MissingAttribute, || {
                format!("missing attribute '{}'", attr.name())
            });
            Err(Val::Bool(false))
        }
    }
}

fn not<'a>(operand: &'a Node, ctx: &mut Ctx<'a>) -> BoolOutcome {
    let v = operand!(operand, ctx, false);
    // TCK quirk: an Integer operand is not cast; it raises a Cast error and counts as `false`,
    // so `NOT 10` is `true` + Cast error.
    let b = match v {
        Val::Int(_) => None,
        ref other => cast_bool(other),
    };
    match b {
        Some(b) => Ok(!b),
        None => {
            ctx.cast_error(&v, Type::Boolean);
            Err(true)
        }
    }
}

fn negate<'a>(operand: &'a Node, ctx: &mut Ctx<'a>) -> Outcome<'a> {
    let v = operand!(operand, ctx, Val::Int(0));
    let i = int_operand(v, ctx)?;
    match i.checked_neg() {
        Some(n) => Ok(Val::Int(n)),
        None => Err(math_overflow(ctx, "unary -", i.wrapping_neg())),
    }
}

/// `= != < <= > >=`.
fn compare<'a>(op: BinOp, l: &'a Node, r: &'a Node, ctx: &mut Ctx<'a>) -> BoolOutcome {
    let lv = operand!(l, ctx, false);
    let rv = operand!(r, ctx, false);
    match op {
        BinOp::Eq | BinOp::Ne => match equal_as(&rv, &lv) {
            Some(eq) => Ok(eq == (op == BinOp::Eq)),
            None => {
                ctx.cast_error(&lv, rv_type(&rv));
                Err(false)
            }
        },
        _ => {
            let (Some(a), Some(b)) = (cast_int(&lv), cast_int(&rv)) else {
                let bad = if cast_int(&lv).is_none() { &lv } else { &rv };
                ctx.cast_error(bad, Type::Integer);
                return Err(false);
            };
            Ok(match op {
                BinOp::Lt => a < b,
                BinOp::Le => a <= b,
                BinOp::Gt => a > b,
                _ => a >= b,
            })
        }
    }
}

/// `AND` / `OR` chains stop at the first deciding operand; `XOR` evaluates every operand.
fn logic<'a>(op: LogicOp, operands: &'a [Node], ctx: &mut Ctx<'a>) -> BoolOutcome {
    let mut acc = op == LogicOp::And;
    for node in operands {
        let b = bool_operand(node, ctx).map_err(|()| false)?;
        match op {
            LogicOp::And if !b => return Ok(false),
            LogicOp::Or if b => return Ok(true),
            LogicOp::Xor => acc ^= b,
            _ => {}
        }
    }
    Ok(acc)
}

fn in_set<'a>(operand: &'a Node, set: &'a [Node], negated: bool, ctx: &mut Ctx<'a>) -> BoolOutcome {
    let target = operand!(operand, ctx, false);
    for element in set {
        let ev = operand!(element, ctx, false);
        match equal_as(&target, &ev) {
            Some(true) => return Ok(!negated),
            Some(false) => {}
            None => {
                ctx.cast_error(&ev, rv_type(&target));
                return Err(false);
            }
        }
    }
    Ok(negated)
}

fn rv_type(v: &Val<'_>) -> Type {
    match v {
        Val::Bool(_) => Type::Boolean,
        Val::Int(_) => Type::Integer,
        Val::Str(_) => Type::String,
    }
}

/// Evaluates a function argument; `None` when it failed (the caller returns its zero value).
pub(crate) fn argument<'a>(args: &'a [Node], i: usize, ctx: &mut Ctx<'a>) -> Option<Val<'a>> {
    match args.get(i) {
        Some(node) => eval(node, ctx).ok(),
        None => {
            ctx.raise(ErrorKind::MissingFunction, || {
                format!("missing argument {}", i + 1)
            });
            None
        }
    }
}
