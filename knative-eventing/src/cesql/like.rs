//! `LIKE` patterns compiled at parse time and matched without allocation (`specs/EVENTING.md §3`).
//!
//! `%` matches any run of characters, `_` exactly one character (Unicode scalar value), `\%` and
//! `\_` match the literal character, and every other character (including a `\` that does not
//! precede `%` or `_`) matches itself, case-sensitively.

/// One element of a `%`-free segment.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    /// Literal text.
    Text(Box<str>),
    /// `n` consecutive `_` wildcards.
    AnyChars(usize),
}

/// A run of pieces between `%` wildcards, with a fixed length in characters.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Segment {
    pieces: Box<[Piece]>,
    chars: usize,
}

impl Segment {
    /// Matches the segment at byte offset `pos`; returns the end offset.
    fn match_at(&self, s: &str, mut pos: usize) -> Option<usize> {
        for piece in self.pieces.iter() {
            match piece {
                Piece::Text(t) => {
                    if s.get(pos..)?.starts_with(&**t) {
                        pos += t.len();
                    } else {
                        return None;
                    }
                }
                Piece::AnyChars(n) => {
                    let rest = s.get(pos..)?;
                    let mut it = rest.char_indices();
                    for _ in 0..*n {
                        it.next()?;
                    }
                    pos += it.next().map_or(rest.len(), |(i, _)| i);
                }
            }
        }
        Some(pos)
    }

    /// Finds the leftmost match starting at or after `from`; returns its end offset.
    fn find_from(&self, s: &str, from: usize) -> Option<usize> {
        let rest = s.get(from..)?;
        // Fast skip to candidate positions when the segment starts with literal text.
        if let Some(Piece::Text(t)) = self.pieces.first() {
            let mut offset = 0;
            while let Some(i) = rest.get(offset..)?.find(&**t) {
                let start = from + offset + i;
                if let Some(end) = self.match_at(s, start) {
                    return Some(end);
                }
                // Advance past the first character of this candidate.
                offset += i + rest.get(offset + i..)?.chars().next()?.len_utf8();
            }
            return None;
        }
        // Segments are never empty, so no match can start at the very end.
        rest.char_indices()
            .find_map(|(i, _)| self.match_at(s, from + i))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Matcher {
    /// No wildcards at all.
    Exact(Box<str>),
    /// `text%`
    Prefix(Box<str>),
    /// `%text`
    Suffix(Box<str>),
    /// `%text%`
    Contains(Box<str>),
    /// `%` (or `%%…`): matches everything.
    Everything,
    /// Anything else.
    General {
        /// Segment anchored at the start (pattern does not begin with `%`).
        head: Option<Segment>,
        /// Segments between `%`s, matched leftmost-first.
        middle: Box<[Segment]>,
        /// Segment anchored at the end (pattern does not end with `%`).
        tail: Option<Segment>,
        /// Whether the pattern contains a `%` at all.
        has_percent: bool,
    },
}

/// A compiled `LIKE` pattern; keeps its source text for printing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LikePattern {
    source: Box<str>,
    matcher: Matcher,
}

impl LikePattern {
    /// Compiles the (already unescaped) string-literal value of a pattern. Never fails.
    pub(crate) fn compile(source: &str) -> LikePattern {
        // Split into segments at unescaped `%`.
        let mut segments: Vec<Vec<Piece>> = vec![Vec::new()];
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        let flush = |text: &mut String, seg: &mut Vec<Piece>| {
            if !text.is_empty() {
                seg.push(Piece::Text(std::mem::take(text).into_boxed_str()));
            }
        };
        while let Some(c) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some('%' | '_')) => {
                    if let Some(escaped) = chars.next() {
                        text.push(escaped);
                    }
                }
                '%' => {
                    if let Some(seg) = segments.last_mut() {
                        flush(&mut text, seg);
                    }
                    segments.push(Vec::new());
                }
                '_' => {
                    if let Some(seg) = segments.last_mut() {
                        flush(&mut text, seg);
                        if let Some(Piece::AnyChars(n)) = seg.last_mut() {
                            *n += 1;
                        } else {
                            seg.push(Piece::AnyChars(1));
                        }
                    }
                }
                c => text.push(c),
            }
        }
        if let Some(seg) = segments.last_mut() {
            flush(&mut text, seg);
        }

        let has_percent = segments.len() > 1;
        let starts_with_percent = has_percent && segments.first().is_some_and(Vec::is_empty);
        let ends_with_percent = has_percent && segments.last().is_some_and(Vec::is_empty);
        let no_underscore = segments
            .iter()
            .flatten()
            .all(|p| matches!(p, Piece::Text(_)));
        // Non-empty segments, in order.
        let nonempty: Vec<&Vec<Piece>> = segments.iter().filter(|s| !s.is_empty()).collect();

        let simple = if no_underscore && nonempty.len() <= 1 {
            let text: Box<str> = match nonempty.first().and_then(|s| s.first()) {
                Some(Piece::Text(t)) => t.clone(),
                _ => "".into(),
            };
            match (has_percent, starts_with_percent, ends_with_percent) {
                (false, _, _) => Some(Matcher::Exact(text)),
                (true, _, _) if text.is_empty() => Some(Matcher::Everything),
                (true, false, true) => Some(Matcher::Prefix(text)),
                (true, true, false) => Some(Matcher::Suffix(text)),
                (true, true, true) => Some(Matcher::Contains(text)),
                (true, false, false) => None,
            }
        } else {
            None
        };
        let matcher = if let Some(m) = simple {
            m
        } else {
            let to_segment = |pieces: &Vec<Piece>| Segment {
                chars: pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Text(t) => t.chars().count(),
                        Piece::AnyChars(n) => *n,
                    })
                    .sum(),
                pieces: pieces.clone().into_boxed_slice(),
            };
            if has_percent {
                let n = segments.len();
                let head = segments.first().filter(|s| !s.is_empty()).map(to_segment);
                let tail = segments.last().filter(|s| !s.is_empty()).map(to_segment);
                let middle = segments
                    .iter()
                    .take(n.saturating_sub(1))
                    .skip(1)
                    .filter(|s| !s.is_empty())
                    .map(to_segment)
                    .collect();
                Matcher::General {
                    head,
                    middle,
                    tail,
                    has_percent,
                }
            } else {
                Matcher::General {
                    head: segments.first().map(to_segment),
                    middle: Box::new([]),
                    tail: None,
                    has_percent,
                }
            }
        };
        LikePattern {
            source: source.into(),
            matcher,
        }
    }

    /// The pattern's string value as written (after string-literal unescaping).
    pub(crate) fn source(&self) -> &str {
        &self.source
    }

    /// Whether `s` matches the whole pattern.
    pub(crate) fn matches(&self, s: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(t) => s == &**t,
            Matcher::Prefix(t) => s.starts_with(&**t),
            Matcher::Suffix(t) => s.ends_with(&**t),
            Matcher::Contains(t) => s.contains(&**t),
            Matcher::Everything => true,
            Matcher::General {
                head,
                middle,
                tail,
                has_percent,
            } => {
                if !has_percent {
                    return match head {
                        Some(seg) => seg.match_at(s, 0) == Some(s.len()),
                        None => s.is_empty(),
                    };
                }
                let mut pos = 0;
                if let Some(seg) = head {
                    match seg.match_at(s, 0) {
                        Some(end) => pos = end,
                        None => return false,
                    }
                }
                for seg in middle.iter() {
                    match seg.find_from(s, pos) {
                        Some(end) => pos = end,
                        None => return false,
                    }
                }
                match tail {
                    None => true,
                    Some(seg) => {
                        let start = if seg.chars == 0 {
                            s.len()
                        } else {
                            match s.char_indices().rev().nth(seg.chars - 1) {
                                Some((i, _)) => i,
                                None => return false,
                            }
                        };
                        start >= pos && seg.match_at(s, start) == Some(s.len())
                    }
                }
            }
        }
    }
}
