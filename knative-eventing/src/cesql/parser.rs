//! Precedence-climbing parser producing the compiled tree (`specs/EVENTING.md §3`, grammar).
//!
//! Functions on the recursive path keep small stack frames: error messages are built in
//! `#[cold]` helpers, and tokens are moved out of the token list instead of cloned.

use super::ast::{Attr, BinOp, Literal, LogicOp, Node, prec};
use super::functions::Builtin;
use super::lexer::{Tok, Token, tokenize};
use super::like::LikePattern;
use super::{Error, MAX_NESTING_DEPTH};

/// Parses a whole expression.
pub(crate) fn parse(input: &str) -> Result<Node, Error> {
    let tokens = tokenize(input)?;
    let mut p = Parser {
        tokens,
        next: 0,
        depth: 0,
    };
    if p.peek() == &Tok::Eof {
        return Err(Error::parse(0, "empty expression"));
    }
    let (node, _) = p.expr(0)?;
    if p.peek() != &Tok::Eof {
        return Err(unexpected(p.pos(), p.peek(), "after a complete expression"));
    }
    Ok(node)
}

/// A parsed node and the depth of its tree.
type Parsed = (Node, usize);

struct Parser {
    tokens: Vec<Token>,
    next: usize,
    /// Current recursion depth.
    depth: usize,
}

enum Infix {
    Binary(BinOp),
    Logic(LogicOp),
    Like { negated: bool },
    In { negated: bool },
}

#[cold]
#[inline(never)]
fn unexpected(pos: usize, found: &Tok, context: &str) -> Error {
    Error::parse(pos, format!("unexpected {} {context}", found.describe()))
}

#[cold]
#[inline(never)]
fn expected(pos: usize, what: &str, found: &Tok) -> Error {
    Error::parse(pos, format!("expected {what}, found {}", found.describe()))
}

#[cold]
#[inline(never)]
fn too_deep(pos: usize) -> Error {
    Error::parse(
        pos,
        format!("expression nesting exceeds the maximum depth of {MAX_NESTING_DEPTH}"),
    )
}

impl Parser {
    fn peek(&self) -> &Tok {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> &Tok {
        self.tokens
            .get(self.next + ahead)
            .map_or(&Tok::Eof, |t| &t.tok)
    }

    fn pos(&self) -> usize {
        self.tokens
            .get(self.next)
            .or_else(|| self.tokens.last())
            .map_or(0, |t| t.pos)
    }

    /// Takes the next token (the final `Eof` is never consumed).
    fn advance(&mut self) -> Token {
        let pos = self.pos();
        match self.tokens.get_mut(self.next) {
            Some(t) if t.tok != Tok::Eof => {
                self.next += 1;
                Token {
                    tok: std::mem::replace(&mut t.tok, Tok::Eof),
                    pos,
                }
            }
            _ => Token { tok: Tok::Eof, pos },
        }
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<(), Error> {
        if self.peek() == tok {
            self.advance();
            Ok(())
        } else {
            Err(expected(self.pos(), what, self.peek()))
        }
    }

    /// Checks the depth of a node about to be built.
    fn checked(&self, node: Node, depth: usize, pos: usize) -> Result<Parsed, Error> {
        if depth > MAX_NESTING_DEPTH {
            Err(too_deep(pos))
        } else {
            Ok((node, depth))
        }
    }

    fn infix(&self) -> Result<Option<(u8, Infix)>, Error> {
        Ok(Some(match self.peek() {
            Tok::And => (prec::LOGIC, Infix::Logic(LogicOp::And)),
            Tok::Or => (prec::LOGIC, Infix::Logic(LogicOp::Or)),
            Tok::Xor => (prec::LOGIC, Infix::Logic(LogicOp::Xor)),
            Tok::Eq => (prec::CMP, Infix::Binary(BinOp::Eq)),
            Tok::NotEq => (prec::CMP, Infix::Binary(BinOp::Ne)),
            Tok::Lt => (prec::CMP, Infix::Binary(BinOp::Lt)),
            Tok::Le => (prec::CMP, Infix::Binary(BinOp::Le)),
            Tok::Gt => (prec::CMP, Infix::Binary(BinOp::Gt)),
            Tok::Ge => (prec::CMP, Infix::Binary(BinOp::Ge)),
            Tok::Plus => (prec::ADD, Infix::Binary(BinOp::Add)),
            Tok::Minus => (prec::ADD, Infix::Binary(BinOp::Sub)),
            Tok::Star => (prec::MUL, Infix::Binary(BinOp::Mul)),
            Tok::Slash => (prec::MUL, Infix::Binary(BinOp::Div)),
            Tok::Percent => (prec::MUL, Infix::Binary(BinOp::Mod)),
            Tok::Like => (prec::LIKE, Infix::Like { negated: false }),
            Tok::In => (prec::IN, Infix::In { negated: false }),
            Tok::Not => match self.peek_at(1) {
                Tok::Like => (prec::LIKE, Infix::Like { negated: true }),
                Tok::In => (prec::IN, Infix::In { negated: true }),
                _ => {
                    return Err(expected(
                        self.pos(),
                        "LIKE or IN after NOT",
                        self.peek_at(1),
                    ));
                }
            },
            _ => return Ok(None),
        }))
    }

    /// Parses an expression whose operators bind at least as tightly as `min`.
    fn expr(&mut self, min: u8) -> Result<Parsed, Error> {
        self.depth += 1;
        if self.depth > MAX_NESTING_DEPTH {
            return Err(too_deep(self.pos()));
        }
        let result = self.expr_inner(min);
        self.depth -= 1;
        result
    }

    fn expr_inner(&mut self, min: u8) -> Result<Parsed, Error> {
        let mut lhs = self.prefix()?;
        while let Some((p, op)) = self.infix()? {
            if p < min {
                break;
            }
            lhs = match op {
                Infix::Logic(op) => self.logic_chain(lhs, op)?,
                Infix::Binary(op) => self.binary(lhs, op, p)?,
                Infix::Like { negated } => self.like(lhs, negated)?,
                Infix::In { negated } => self.in_set(lhs, negated)?,
            };
        }
        Ok(lhs)
    }

    /// `lhs op e (op e)*` at the logic level, folded right-associatively without recursion.
    fn logic_chain(&mut self, first: Parsed, first_op: LogicOp) -> Result<Parsed, Error> {
        let mut operands = vec![first];
        let mut ops = Vec::new();
        let mut next_op = Some((first_op, self.pos()));
        while let Some((op, pos)) = next_op {
            self.advance();
            ops.push((op, pos));
            operands.push(self.expr(prec::LOGIC + 1)?);
            next_op = match self.infix()? {
                Some((_, Infix::Logic(op))) => Some((op, self.pos())),
                _ => None,
            };
        }
        let Some(mut acc) = operands.pop() else {
            return Err(expected(self.pos(), "an expression", self.peek()));
        };
        while let (Some((op, pos)), Some((l, ld))) = (ops.pop(), operands.pop()) {
            let (r, rd) = acc;
            let depth = match &r {
                Node::Logic(o, _) if *o == op => rd.max(ld + 1),
                _ => rd.max(ld) + 1,
            };
            acc = self.checked(Node::logic(op, l, r), depth, pos)?;
        }
        Ok(acc)
    }

    fn binary(&mut self, (lhs, ld): Parsed, op: BinOp, p: u8) -> Result<Parsed, Error> {
        let pos = self.pos();
        self.advance();
        let (rhs, rd) = self.expr(p + 1)?;
        self.checked(
            Node::Binary(op, Box::new(lhs), Box::new(rhs)),
            ld.max(rd) + 1,
            pos,
        )
    }

    fn like(&mut self, (lhs, ld): Parsed, negated: bool) -> Result<Parsed, Error> {
        let pos = self.pos();
        if negated {
            self.advance();
        }
        self.advance();
        let t = self.advance();
        let Tok::Str(pattern) = t.tok else {
            return Err(expected(
                t.pos,
                "a string literal pattern after LIKE",
                &t.tok,
            ));
        };
        self.checked(
            Node::Like {
                operand: Box::new(lhs),
                pattern: Box::new(LikePattern::compile(&pattern)),
                negated,
            },
            ld + 1,
            pos,
        )
    }

    fn in_set(&mut self, (lhs, ld): Parsed, negated: bool) -> Result<Parsed, Error> {
        let pos = self.pos();
        if negated {
            self.advance();
        }
        self.advance();
        self.expect(&Tok::LParen, "'(' after IN")?;
        if self.peek() == &Tok::RParen {
            return Err(Error::parse(self.pos(), "the IN set must not be empty"));
        }
        let (set, sd) = self.list()?;
        self.checked(
            Node::In {
                operand: Box::new(lhs),
                set: set.into_boxed_slice(),
                negated,
            },
            ld.max(sd) + 1,
            pos,
        )
    }

    /// Parses `expr (, expr)* )` after an opening parenthesis; returns the items and max depth.
    fn list(&mut self) -> Result<(Vec<Node>, usize), Error> {
        let mut items = Vec::new();
        let mut depth = 0;
        loop {
            let (item, d) = self.expr(0)?;
            items.push(item);
            depth = depth.max(d);
            match self.peek() {
                Tok::Comma => {
                    self.advance();
                }
                Tok::RParen => {
                    self.advance();
                    return Ok((items, depth));
                }
                other => return Err(expected(self.pos(), "',' or ')'", other)),
            }
        }
    }

    fn prefix(&mut self) -> Result<Parsed, Error> {
        let t = self.advance();
        match t.tok {
            Tok::Not | Tok::Minus => self.unary(t),
            Tok::LParen => {
                let inner = self.expr(0)?;
                self.expect(&Tok::RParen, "')'")?;
                Ok(inner)
            }
            Tok::Word(word) if self.peek() == &Tok::LParen => self.call(word, t.pos),
            _ => self.atom(t),
        }
    }

    fn unary(&mut self, t: Token) -> Result<Parsed, Error> {
        let (operand, d) = self.expr(prec::UNARY)?;
        let node = if t.tok == Tok::Not {
            Node::Not(Box::new(operand))
        } else {
            Node::Negate(Box::new(operand))
        };
        self.checked(node, d + 1, t.pos)
    }

    /// Literals, attribute references and `EXISTS`; anything else is an error.
    fn atom(&mut self, t: Token) -> Result<Parsed, Error> {
        let node = match t.tok {
            Tok::Int(i) => Node::Literal(Literal::Int(i)),
            Tok::Str(s) => Node::Literal(Literal::Str(s.into_boxed_str())),
            Tok::True => Node::Literal(Literal::Bool(true)),
            Tok::False => Node::Literal(Literal::Bool(false)),
            Tok::Word(word) => Node::Attribute(identifier(&word, t.pos)?),
            Tok::Exists => {
                let id = self.advance();
                match id.tok {
                    Tok::Word(word) => Node::Exists(identifier(&word, id.pos)?),
                    other => {
                        return Err(expected(id.pos, "an attribute name after EXISTS", &other));
                    }
                }
            }
            Tok::Plus => {
                return Err(Error::parse(
                    t.pos,
                    "unary '+' is not an operator (a '+' sign must directly precede digits)",
                ));
            }
            other => return Err(expected(t.pos, "an expression", &other)),
        };
        Ok((node, 1))
    }

    fn call(&mut self, word: String, pos: usize) -> Result<Parsed, Error> {
        let mut chars = word.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphabetic() || c == '_');
        if !valid {
            return Err(invalid_function_name(&word, pos));
        }
        self.advance(); // '('
        let (args, depth) = if self.peek() == &Tok::RParen {
            self.advance();
            (Vec::new(), 0)
        } else {
            self.list()?
        };
        let name = word.to_ascii_uppercase();
        let args = args.into_boxed_slice();
        let node = match Builtin::resolve(&name, args.len()) {
            Some(function) => Node::Call { function, args },
            None => Node::MissingFunction {
                name: name.into_boxed_str(),
                args,
            },
        };
        self.checked(node, depth + 1, pos)
    }
}

#[cold]
#[inline(never)]
fn invalid_function_name(word: &str, pos: usize) -> Error {
    Error::parse(
        pos,
        format!("invalid function name '{word}' (expected [A-Za-z][A-Za-z_]*)"),
    )
}

/// Validates an identifier (`[A-Za-z0-9]+`) and resolves it, case-insensitively.
fn identifier(word: &str, pos: usize) -> Result<Attr, Error> {
    if word.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(Attr::resolve(&word.to_ascii_lowercase()))
    } else {
        Err(Error::parse(
            pos,
            format!(
                "invalid attribute name '{word}' (expected [a-z0-9]+; '_' is only allowed in function names)"
            ),
        ))
    }
}
