//! The compiled expression tree and its canonical printer (`specs/EVENTING.md §3`).

use std::fmt::{self, Write as _};

use super::Type;
use super::functions::Builtin;
use super::like::LikePattern;

/// A context attribute, resolved at parse time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Attr {
    Id,
    Source,
    SpecVersion,
    Type,
    DataContentType,
    DataSchema,
    Subject,
    Time,
    /// `data`: never accessible from CESQL.
    Data,
    /// Any other name: an extension attribute (lower-case).
    Extension(Box<str>),
}

impl Attr {
    /// Resolves a lower-case identifier.
    pub(crate) fn resolve(name: &str) -> Attr {
        match name {
            "id" => Attr::Id,
            "source" => Attr::Source,
            "specversion" => Attr::SpecVersion,
            "type" => Attr::Type,
            "datacontenttype" => Attr::DataContentType,
            "dataschema" => Attr::DataSchema,
            "subject" => Attr::Subject,
            "time" => Attr::Time,
            "data" => Attr::Data,
            other => Attr::Extension(other.into()),
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Attr::Id => "id",
            Attr::Source => "source",
            Attr::SpecVersion => "specversion",
            Attr::Type => "type",
            Attr::DataContentType => "datacontenttype",
            Attr::DataSchema => "dataschema",
            Attr::Subject => "subject",
            Attr::Time => "time",
            Attr::Data => "data",
            Attr::Extension(name) => name,
        }
    }
}

/// Arithmetic and comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BinOp {
    Mul,
    Div,
    Mod,
    Add,
    Sub,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl BinOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Eq => "=",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
        }
    }

    pub(crate) fn precedence(self) -> u8 {
        match self {
            BinOp::Mul | BinOp::Div | BinOp::Mod => prec::MUL,
            BinOp::Add | BinOp::Sub => prec::ADD,
            _ => prec::CMP,
        }
    }

    pub(crate) fn return_type(self) -> Type {
        match self {
            BinOp::Mul | BinOp::Div | BinOp::Mod | BinOp::Add | BinOp::Sub => Type::Integer,
            _ => Type::Boolean,
        }
    }
}

/// Logical binary operators (one precedence level, right-associative).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogicOp {
    And,
    Or,
    Xor,
}

impl LogicOp {
    pub(crate) fn keyword(self) -> &'static str {
        match self {
            LogicOp::And => "AND",
            LogicOp::Or => "OR",
            LogicOp::Xor => "XOR",
        }
    }
}

/// Binding strength of each syntactic level, lowest first.
pub(crate) mod prec {
    pub(crate) const LOGIC: u8 = 1;
    pub(crate) const CMP: u8 = 2;
    pub(crate) const ADD: u8 = 3;
    pub(crate) const MUL: u8 = 4;
    pub(crate) const IN: u8 = 5;
    pub(crate) const LIKE: u8 = 6;
    pub(crate) const UNARY: u8 = 7;
    pub(crate) const PRIMARY: u8 = 8;
}

/// A literal value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Literal {
    Bool(bool),
    Int(i32),
    Str(Box<str>),
}

/// A node of the compiled expression tree.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Literal(Literal),
    Attribute(Attr),
    Exists(Attr),
    Not(Box<Node>),
    Negate(Box<Node>),
    Binary(BinOp, Box<Node>, Box<Node>),
    /// A chain of one logic operator over two or more operands, evaluated left to right.
    /// Built by [`Node::logic`], so no operand is itself a chain of the same operator.
    Logic(LogicOp, Box<[Node]>),
    Like {
        operand: Box<Node>,
        pattern: Box<LikePattern>,
        negated: bool,
    },
    In {
        operand: Box<Node>,
        set: Box<[Node]>,
        negated: bool,
    },
    Call {
        function: Builtin,
        args: Box<[Node]>,
    },
    /// A call that matched no built-in (name upper-cased); evaluates to `false` + MissingFunction.
    MissingFunction {
        name: Box<str>,
        args: Box<[Node]>,
    },
}

impl Node {
    /// Calls `f` with every attribute the expression reads (`EXISTS`
    /// included), in tree order, repeats included.
    pub(crate) fn visit_attributes<'a>(&'a self, f: &mut impl FnMut(&'a Attr)) {
        match self {
            Node::Literal(_) => {}
            Node::Attribute(a) | Node::Exists(a) => f(a),
            Node::Not(n) | Node::Negate(n) => n.visit_attributes(f),
            Node::Binary(_, l, r) => {
                l.visit_attributes(f);
                r.visit_attributes(f);
            }
            Node::Logic(_, nodes)
            | Node::Call { args: nodes, .. }
            | Node::MissingFunction { args: nodes, .. } => {
                nodes.iter().for_each(|n| n.visit_attributes(f));
            }
            Node::Like { operand, .. } => operand.visit_attributes(f),
            Node::In { operand, set, .. } => {
                operand.visit_attributes(f);
                set.iter().for_each(|n| n.visit_attributes(f));
            }
        }
    }

    /// `l op r`, flattening operands that are chains of the same operator. `AND`, `OR` and
    /// `XOR` are associative under short-circuit, fail-fast evaluation, so this is exact.
    pub(crate) fn logic(op: LogicOp, l: Node, r: Node) -> Node {
        let mut operands = Vec::new();
        for side in [l, r] {
            match side {
                Node::Logic(o, children) if o == op => operands.extend(children.into_vec()),
                other => operands.push(other),
            }
        }
        Node::Logic(op, operands.into_boxed_slice())
    }

    pub(crate) fn return_type(&self) -> Type {
        match self {
            Node::Literal(Literal::Bool(_)) => Type::Boolean,
            Node::Literal(Literal::Int(_)) => Type::Integer,
            Node::Literal(Literal::Str(_)) => Type::String,
            Node::Attribute(_) => Type::Any,
            Node::Exists(_)
            | Node::Not(_)
            | Node::Logic(..)
            | Node::Like { .. }
            | Node::In { .. } => Type::Boolean,
            Node::Negate(_) => Type::Integer,
            Node::Binary(op, _, _) => op.return_type(),
            Node::Call { function, .. } => function.return_type(),
            Node::MissingFunction { .. } => Type::Boolean,
        }
    }

    fn precedence(&self) -> u8 {
        match self {
            Node::Literal(_)
            | Node::Attribute(_)
            | Node::Exists(_)
            | Node::Call { .. }
            | Node::MissingFunction { .. } => prec::PRIMARY,
            Node::Not(_) | Node::Negate(_) => prec::UNARY,
            Node::Binary(op, _, _) => op.precedence(),
            Node::Logic(..) => prec::LOGIC,
            Node::Like { .. } => prec::LIKE,
            Node::In { .. } => prec::IN,
        }
    }
}

/// Writes `s` as a single-quoted CESQL string literal.
///
/// `'` becomes `\'`; a backslash is doubled only where the lexer would otherwise read it as an
/// escape (before `'`, `"`, `\` or at the end), so `a\_b` prints as `'a\_b'`.
pub(crate) fn write_string_literal(f: &mut impl fmt::Write, s: &str) -> fmt::Result {
    f.write_char('\'')?;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => f.write_str("\\'")?,
            '\\' if matches!(chars.peek(), None | Some('\'' | '"' | '\\')) => {
                f.write_str("\\\\")?
            }
            c => f.write_char(c)?,
        }
    }
    f.write_char('\'')
}

/// Writes `node`, wrapped in parentheses when it binds looser than `min`.
fn write_operand(f: &mut fmt::Formatter<'_>, node: &Node, min: u8) -> fmt::Result {
    if node.precedence() < min {
        write!(f, "({node})")
    } else {
        write!(f, "{node}")
    }
}

fn write_list(f: &mut fmt::Formatter<'_>, nodes: &[Node]) -> fmt::Result {
    f.write_char('(')?;
    for (i, n) in nodes.iter().enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{n}")?;
    }
    f.write_char(')')
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Literal(Literal::Bool(true)) => f.write_str("TRUE"),
            Node::Literal(Literal::Bool(false)) => f.write_str("FALSE"),
            Node::Literal(Literal::Int(i)) => write!(f, "{i}"),
            Node::Literal(Literal::Str(s)) => write_string_literal(f, s),
            Node::Attribute(a) => f.write_str(a.name()),
            Node::Exists(a) => write!(f, "EXISTS {}", a.name()),
            Node::Not(operand) => {
                f.write_str("NOT ")?;
                write_operand(f, operand, prec::UNARY)
            }
            Node::Negate(operand) => {
                f.write_char('-')?;
                // `-5` would read back as a negative literal, `--x` is fine.
                if matches!(**operand, Node::Literal(Literal::Int(i)) if i >= 0)
                    || matches!(&**operand, Node::Attribute(Attr::Extension(n)) if n.starts_with(|c: char| c.is_ascii_digit()))
                {
                    f.write_char(' ')?;
                }
                write_operand(f, operand, prec::UNARY)
            }
            Node::Binary(op, l, r) => {
                let p = op.precedence();
                write_operand(f, l, p)?;
                write!(f, " {} ", op.symbol())?;
                write_operand(f, r, p + 1)
            }
            Node::Logic(op, operands) => {
                let last = operands.len().saturating_sub(1);
                for (i, operand) in operands.iter().enumerate() {
                    if i > 0 {
                        write!(f, " {} ", op.keyword())?;
                    }
                    // Right-associative: only the last operand may be an unparenthesised chain.
                    let min = if i == last {
                        prec::LOGIC
                    } else {
                        prec::LOGIC + 1
                    };
                    write_operand(f, operand, min)?;
                }
                Ok(())
            }
            Node::Like {
                operand,
                pattern,
                negated,
            } => {
                write_operand(f, operand, prec::LIKE)?;
                f.write_str(if *negated { " NOT LIKE " } else { " LIKE " })?;
                write_string_literal(f, pattern.source())
            }
            Node::In {
                operand,
                set,
                negated,
            } => {
                write_operand(f, operand, prec::IN)?;
                f.write_str(if *negated { " NOT IN " } else { " IN " })?;
                write_list(f, set)
            }
            Node::Call { function, args } => {
                f.write_str(function.name())?;
                write_list(f, args)
            }
            Node::MissingFunction { name, args } => {
                f.write_str(name)?;
                write_list(f, args)
            }
        }
    }
}
