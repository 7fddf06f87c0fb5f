//! Tokenizer for CESQL (`specs/EVENTING.md §3`, lexical rules).

use super::Error;

/// A token kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Integer literal, sign included, range-checked.
    Int(i32),
    /// String literal value, unescaped.
    Str(String),
    /// A word of `[A-Za-z0-9_]` that is neither a keyword nor all digits (identifier or function
    /// name; the parser decides).
    Word(String),
    And,
    Or,
    Xor,
    Not,
    Like,
    Exists,
    In,
    True,
    False,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Eof,
}

impl Tok {
    /// Whether this token ends an operand (so a following `+`/`-` is a binary operator).
    fn ends_operand(&self) -> bool {
        matches!(
            self,
            Tok::Int(_) | Tok::Str(_) | Tok::Word(_) | Tok::True | Tok::False | Tok::RParen
        )
    }

    /// Description for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Int(i) => format!("integer {i}"),
            Tok::Str(_) => "string literal".to_owned(),
            Tok::Word(w) => format!("'{w}'"),
            Tok::Eof => "end of input".to_owned(),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::And => "AND",
            Tok::Or => "OR",
            Tok::Xor => "XOR",
            Tok::Not => "NOT",
            Tok::Like => "LIKE",
            Tok::Exists => "EXISTS",
            Tok::In => "IN",
            Tok::True => "TRUE",
            Tok::False => "FALSE",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Comma => ",",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Eq => "=",
            Tok::NotEq => "!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Int(_) | Tok::Str(_) | Tok::Word(_) | Tok::Eof => "",
        }
    }
}

/// A token and its byte offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) tok: Tok,
    pub(crate) pos: usize,
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn keyword(word: &str) -> Option<Tok> {
    const KEYWORDS: [(&str, Tok); 9] = [
        ("AND", Tok::And),
        ("OR", Tok::Or),
        ("XOR", Tok::Xor),
        ("NOT", Tok::Not),
        ("LIKE", Tok::Like),
        ("EXISTS", Tok::Exists),
        ("IN", Tok::In),
        ("TRUE", Tok::True),
        ("FALSE", Tok::False),
    ];
    KEYWORDS
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(word))
        .map(|(_, t)| t.clone())
}

/// Splits the input into tokens, ending with [`Tok::Eof`].
pub(crate) fn tokenize(input: &str) -> Result<Vec<Token>, Error> {
    let bytes = input.as_bytes();
    let mut tokens: Vec<Token> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        let prev_ends_operand = tokens.last().is_some_and(|t| t.tok.ends_operand());
        let tok = match b {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b'(' => {
                i += 1;
                Tok::LParen
            }
            b')' => {
                i += 1;
                Tok::RParen
            }
            b',' => {
                i += 1;
                Tok::Comma
            }
            b'*' => {
                i += 1;
                Tok::Star
            }
            b'/' => {
                i += 1;
                Tok::Slash
            }
            b'%' => {
                i += 1;
                Tok::Percent
            }
            b'=' => {
                i += 1;
                Tok::Eq
            }
            b'!' => {
                if bytes.get(i + 1) == Some(&b'=') {
                    i += 2;
                    Tok::NotEq
                } else {
                    return Err(Error::parse(i, "unexpected '!' (did you mean '!='?)"));
                }
            }
            b'<' => match bytes.get(i + 1) {
                Some(b'=') => {
                    i += 2;
                    Tok::Le
                }
                Some(b'>') => {
                    i += 2;
                    Tok::NotEq
                }
                _ => {
                    i += 1;
                    Tok::Lt
                }
            },
            b'>' => {
                if bytes.get(i + 1) == Some(&b'=') {
                    i += 2;
                    Tok::Ge
                } else {
                    i += 1;
                    Tok::Gt
                }
            }
            b'+' | b'-' => {
                // A sign directly followed by a digit-only word is part of an integer literal,
                // unless it follows an operand (then it is the binary operator).
                let word_end = (i + 1..bytes.len())
                    .find(|&j| !is_word_byte(bytes[j]))
                    .unwrap_or(bytes.len());
                let digits = &bytes[i + 1..word_end];
                if !prev_ends_operand && !digits.is_empty() && digits.iter().all(u8::is_ascii_digit)
                {
                    let text = &input[i..word_end];
                    i = word_end;
                    Tok::Int(parse_int(text, start)?)
                } else {
                    i += 1;
                    if b == b'+' { Tok::Plus } else { Tok::Minus }
                }
            }
            b'\'' | b'"' => {
                let (value, end) = string_literal(input, i)?;
                i = end;
                Tok::Str(value)
            }
            b if is_word_byte(b) => {
                let end = (i..bytes.len())
                    .find(|&j| !is_word_byte(bytes[j]))
                    .unwrap_or(bytes.len());
                let word = &input[i..end];
                i = end;
                if word.bytes().all(|c| c.is_ascii_digit()) {
                    Tok::Int(parse_int(word, start)?)
                } else if let Some(k) = keyword(word) {
                    k
                } else {
                    Tok::Word(word.to_owned())
                }
            }
            _ => {
                let c = input[i..].chars().next().unwrap_or('\u{FFFD}');
                return Err(Error::parse(i, format!("unexpected character {c:?}")));
            }
        };
        tokens.push(Token { tok, pos: start });
    }
    tokens.push(Token {
        tok: Tok::Eof,
        pos: input.len(),
    });
    Ok(tokens)
}

fn parse_int(text: &str, pos: usize) -> Result<i32, Error> {
    text.parse::<i32>().map_err(|_| {
        Error::parse(
            pos,
            format!("integer literal {text} does not fit a 32-bit signed integer"),
        )
    })
}

/// Reads a quoted string starting at `start` (the quote); returns the value and the end offset.
fn string_literal(input: &str, start: usize) -> Result<(String, usize), Error> {
    let bytes = input.as_bytes();
    let quote = bytes[start];
    let mut value = String::new();
    let mut i = start + 1;
    // Start of the pending run of plain characters.
    let mut run = i;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            value.push_str(&input[run..i]);
            match bytes.get(i + 1) {
                Some(&e @ (b'\'' | b'"' | b'\\')) => {
                    value.push(char::from(e));
                    i += 2;
                }
                Some(_) => {
                    // Unknown escape: keep the backslash; the next character is plain text.
                    value.push('\\');
                    i += 1;
                    // Consume the following character verbatim (it cannot close the string).
                    let c_len = input[i..].chars().next().map_or(1, char::len_utf8);
                    value.push_str(&input[i..i + c_len]);
                    i += c_len;
                }
                None => break,
            }
            run = i;
        } else if b == quote {
            value.push_str(&input[run..i]);
            if bytes.get(i + 1) == Some(&quote) {
                value.push(char::from(quote));
                i += 2;
                run = i;
            } else {
                return Ok((value, i + 1));
            }
        } else {
            i += 1;
        }
    }
    Err(Error::parse(start, "unterminated string literal"))
}
