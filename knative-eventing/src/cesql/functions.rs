//! Built-in functions, resolved by name and arity at parse time (`specs/EVENTING.md §3`).
//!
//! Argument types are cast implicitly (String parameters accept anything; Integer parameters
//! raise a Cast error for non-numeric strings). `INT`, `BOOL` and `STRING` are the explicit casts.

use std::borrow::Cow;
use std::ops::Range;

use super::ast::Node;
use super::eval::{Ctx, Outcome, Val, argument, cast_bool, cast_int, cast_str};
use super::{ErrorKind, Type};

/// A built-in function overload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Builtin {
    /// `LENGTH(s)`
    Length,
    /// `CONCAT(s…)`, zero or more arguments.
    Concat,
    /// `CONCAT_WS(delimiter, s…)`, at least one argument.
    ConcatWs,
    /// `LOWER(s)`
    Lower,
    /// `UPPER(s)`
    Upper,
    /// `TRIM(s)`
    Trim,
    /// `LEFT(s, n)`
    Left,
    /// `RIGHT(s, n)`
    Right,
    /// `SUBSTRING(s, pos)`
    Substring,
    /// `SUBSTRING(s, pos, len)`
    SubstringLen,
    /// `INT(x)`
    Int,
    /// `BOOL(x)`
    Bool,
    /// `STRING(x)`
    String,
    /// `ABS(i)`
    Abs,
}

impl Builtin {
    /// Finds the overload for an upper-case name and an argument count.
    pub(crate) fn resolve(name: &str, arity: usize) -> Option<Builtin> {
        Some(match (name, arity) {
            ("LENGTH", 1) => Builtin::Length,
            ("CONCAT", _) => Builtin::Concat,
            ("CONCAT_WS", n) if n >= 1 => Builtin::ConcatWs,
            ("LOWER", 1) => Builtin::Lower,
            ("UPPER", 1) => Builtin::Upper,
            ("TRIM", 1) => Builtin::Trim,
            ("LEFT", 2) => Builtin::Left,
            ("RIGHT", 2) => Builtin::Right,
            ("SUBSTRING", 2) => Builtin::Substring,
            ("SUBSTRING", 3) => Builtin::SubstringLen,
            ("INT", 1) => Builtin::Int,
            ("BOOL", 1) => Builtin::Bool,
            ("STRING", 1) => Builtin::String,
            ("ABS", 1) => Builtin::Abs,
            _ => return None,
        })
    }

    /// Canonical (upper-case) name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Builtin::Length => "LENGTH",
            Builtin::Concat => "CONCAT",
            Builtin::ConcatWs => "CONCAT_WS",
            Builtin::Lower => "LOWER",
            Builtin::Upper => "UPPER",
            Builtin::Trim => "TRIM",
            Builtin::Left => "LEFT",
            Builtin::Right => "RIGHT",
            Builtin::Substring | Builtin::SubstringLen => "SUBSTRING",
            Builtin::Int => "INT",
            Builtin::Bool => "BOOL",
            Builtin::String => "STRING",
            Builtin::Abs => "ABS",
        }
    }

    pub(crate) fn return_type(self) -> Type {
        match self {
            Builtin::Length | Builtin::Int | Builtin::Abs => Type::Integer,
            Builtin::Bool => Type::Boolean,
            _ => Type::String,
        }
    }

    /// Evaluates the arguments (left to right, stopping at the first failure) and applies the
    /// function.
    pub(crate) fn call<'a>(self, args: &'a [Node], ctx: &mut Ctx<'a>) -> Outcome<'a> {
        let zero = Val::zero(self.return_type());
        // Evaluates argument `i`, returning the zero value when it failed.
        macro_rules! arg {
            ($i:expr) => {
                match argument(args, $i, ctx) {
                    Some(v) => v,
                    None => return Err(zero),
                }
            };
        }
        // Evaluates argument `i` and casts it to Integer.
        macro_rules! int_arg {
            ($i:expr) => {{
                let v = arg!($i);
                match cast_int(&v) {
                    Some(i) => i,
                    None => {
                        ctx.cast_error(&v, Type::Integer);
                        return Err(zero);
                    }
                }
            }};
        }
        match self {
            Builtin::Length => {
                let s = cast_str(arg!(0));
                Ok(Val::Int(char_count(&s)))
            }
            Builtin::Concat => {
                let mut out: Option<Cow<'a, str>> = None;
                for i in 0..args.len() {
                    let s = cast_str(arg!(i));
                    out = Some(match out {
                        None => s,
                        Some(acc) => Cow::Owned(acc.into_owned() + &s),
                    });
                }
                Ok(Val::Str(out.unwrap_or(Cow::Borrowed(""))))
            }
            Builtin::ConcatWs => {
                let delimiter = cast_str(arg!(0));
                let mut out: Option<Cow<'a, str>> = None;
                for i in 1..args.len() {
                    let s = cast_str(arg!(i));
                    out = Some(match out {
                        None => s,
                        Some(acc) => {
                            let mut acc = acc.into_owned();
                            acc.push_str(&delimiter);
                            acc.push_str(&s);
                            Cow::Owned(acc)
                        }
                    });
                }
                Ok(Val::Str(out.unwrap_or(Cow::Borrowed(""))))
            }
            Builtin::Lower => {
                let s = cast_str(arg!(0));
                Ok(Val::Str(
                    if s.is_ascii() && !s.bytes().any(|b| b.is_ascii_uppercase()) {
                        s
                    } else {
                        Cow::Owned(s.to_lowercase())
                    },
                ))
            }
            Builtin::Upper => {
                let s = cast_str(arg!(0));
                Ok(Val::Str(
                    if s.is_ascii() && !s.bytes().any(|b| b.is_ascii_lowercase()) {
                        s
                    } else {
                        Cow::Owned(s.to_uppercase())
                    },
                ))
            }
            Builtin::Trim => {
                let s = cast_str(arg!(0));
                let start = s.len() - s.trim_start().len();
                let end = start + s.trim().len();
                Ok(Val::Str(slice(s, start..end)))
            }
            Builtin::Left | Builtin::Right => {
                let s = cast_str(arg!(0));
                let n = int_arg!(1);
                if n < 0 {
                    ctx.raise(ErrorKind::FunctionEvaluation, || {
                        format!("{}: length must not be negative, got {n}", self.name())
                    });
                    return Err(Val::Str(s));
                }
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                let len = s.chars().count();
                if n >= len {
                    return Ok(Val::Str(s));
                }
                let range = if self == Builtin::Left {
                    0..byte_offset(&s, n)
                } else {
                    byte_offset(&s, len - n)..s.len()
                };
                Ok(Val::Str(slice(s, range)))
            }
            Builtin::Substring | Builtin::SubstringLen => {
                let s = cast_str(arg!(0));
                let pos = int_arg!(1);
                let count = if self == Builtin::SubstringLen {
                    Some(int_arg!(2))
                } else {
                    None
                };
                substring(s, pos, count, ctx)
            }
            Builtin::Int => {
                let v = arg!(0);
                match cast_int(&v) {
                    Some(i) => Ok(Val::Int(i)),
                    None => {
                        ctx.cast_error(&v, Type::Integer);
                        Err(zero)
                    }
                }
            }
            Builtin::Bool => {
                let v = arg!(0);
                match cast_bool(&v) {
                    Some(b) => Ok(Val::Bool(b)),
                    None => {
                        ctx.cast_error(&v, Type::Boolean);
                        Err(zero)
                    }
                }
            }
            Builtin::String => Ok(Val::Str(cast_str(arg!(0)))),
            Builtin::Abs => {
                let i = int_arg!(0);
                match i.checked_abs() {
                    Some(a) => Ok(Val::Int(a)),
                    None => {
                        ctx.raise(ErrorKind::Math, || {
                            format!("ABS({i}) overflows; returning {}", i32::MAX)
                        });
                        Err(Val::Int(i32::MAX))
                    }
                }
            }
        }
    }
}

fn char_count(s: &str) -> i32 {
    i32::try_from(s.chars().count()).unwrap_or(i32::MAX)
}

/// Byte offset of the `n`-th character (or the end of the string).
fn byte_offset(s: &str, n: usize) -> usize {
    s.char_indices().nth(n).map_or(s.len(), |(i, _)| i)
}

/// Sub-slice of a `Cow`, borrowing when possible. `range` lies on character boundaries.
fn slice(s: Cow<'_, str>, range: Range<usize>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(b.get(range).unwrap_or_default()),
        Cow::Owned(o) => Cow::Owned(o.get(range).unwrap_or_default().to_owned()),
    }
}

/// `SUBSTRING(s, pos[, count])`: 1-based `pos`, negative counts from the end, 0 gives `""`.
fn substring<'a>(s: Cow<'a, str>, pos: i32, count: Option<i32>, ctx: &mut Ctx<'a>) -> Outcome<'a> {
    let empty = Val::Str(Cow::Borrowed(""));
    if let Some(c) = count.filter(|c| *c < 0) {
        ctx.raise(ErrorKind::FunctionEvaluation, || {
            format!("SUBSTRING: length must not be negative, got {c}")
        });
        return Err(empty);
    }
    let len = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
    let p = i64::from(pos);
    if p > len || p < -len {
        ctx.raise(ErrorKind::FunctionEvaluation, || {
            format!("SUBSTRING: position {pos} is out of range for a string of length {len}")
        });
        return Err(empty);
    }
    if p == 0 {
        return Ok(empty);
    }
    // 0-based start character.
    let start = if p > 0 { p - 1 } else { len + p };
    let end = match count {
        Some(c) => (start + i64::from(c)).min(len),
        None => len,
    };
    let start = usize::try_from(start).unwrap_or(0);
    let end = usize::try_from(end).unwrap_or(0);
    let b_start = byte_offset(&s, start);
    let b_end = byte_offset(&s, end);
    Ok(Val::Str(slice(s, b_start..b_end)))
}
