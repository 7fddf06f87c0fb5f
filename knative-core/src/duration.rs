//! Parsing and formatting of the duration strings found in Knative and Tekton YAML.
//!
//! Two syntaxes appear in practice:
//!
//! * Go's `time.ParseDuration` syntax (`"300ms"`, `"1h30m"`, `"2.5s"`), used by
//!   Tekton timeouts and most Knative configuration; see [`parse_go`].
//! * ISO-8601 durations (`"PT1S"`, `"PT0.2S"`, `"P1DT2H"`), used by Knative
//!   Eventing's delivery settings such as `backoffDelay`; see [`parse_iso8601`].
//!
//! [`parse`] accepts either, picking the syntax from the leading `P`, and
//! [`format_go`] renders a duration the way Go's `time.Duration.String()` does.
//!
//! Durations are unsigned and limited to the range of Go's `time.Duration`:
//! at most `i64::MAX` nanoseconds (`2562047h47m16.854775807s`, about 292
//! years). Negative and larger values are rejected with a [`DurationError`].
//!
//! ```
//! use std::time::Duration;
//! use knative_core::duration::{format_go, parse, parse_go, parse_iso8601};
//!
//! assert_eq!(parse_go("1h30m"), Ok(Duration::from_secs(90 * 60)));
//! assert_eq!(parse_iso8601("PT0.2S"), Ok(Duration::from_millis(200)));
//! assert_eq!(parse(" P1DT2H "), Ok(Duration::from_secs(26 * 60 * 60)));
//! assert_eq!(format_go(Duration::from_millis(1500)), "1.5s");
//!
//! let error = parse_go("1x").unwrap_err();
//! assert_eq!(
//!     error.to_string(),
//!     r#"invalid duration "1x": unknown unit "x" (expected ns, us, µs, ms, s, m, h)"#
//! );
//! ```

use std::fmt;
use std::time::Duration;

use thiserror::Error;

/// The largest duration accepted or produced: Go's `time.Duration` maximum.
const MAX_NANOS: u64 = i64::MAX as u64;

const NANOS_PER_MICRO: u64 = 1_000;
const NANOS_PER_MILLI: u64 = 1_000_000;
const NANOS_PER_SECOND: u64 = 1_000_000_000;
const NANOS_PER_MINUTE: u64 = 60 * NANOS_PER_SECOND;
const NANOS_PER_HOUR: u64 = 60 * NANOS_PER_MINUTE;
const NANOS_PER_DAY: u64 = 24 * NANOS_PER_HOUR;

/// The Go units, as listed in error messages.
const GO_UNITS: &str = "ns, us, µs, ms, s, m, h";

/// Go stops accumulating fraction digits once the value would exceed 2^63.
const GO_FRACTION_LIMIT: u64 = 1 << 63;

/// An ISO-8601 designator and the length of one of its units in nanoseconds.
type Designator = (char, u64);

/// Designators allowed between `P` and `T`, in the order they must appear.
///
/// A year is 365.2425 days and a month a twelfth of that (30.436875 days),
/// the mean lengths in the Gregorian calendar.
const DATE_DESIGNATORS: [Designator; 4] = [
    ('Y', 31_556_952 * NANOS_PER_SECOND),
    ('M', 2_629_746 * NANOS_PER_SECOND),
    ('W', 7 * NANOS_PER_DAY),
    ('D', NANOS_PER_DAY),
];

/// Designators allowed after `T`, in the order they must appear.
const TIME_DESIGNATORS: [Designator; 3] = [
    ('H', NANOS_PER_HOUR),
    ('M', NANOS_PER_MINUTE),
    ('S', NANOS_PER_SECOND),
];

/// Why a duration string could not be parsed.
///
/// It keeps the rejected input and a reason that says what is wrong and,
/// where it helps, at which byte offset. It displays as, for example,
/// `invalid duration "1x": unknown unit "x" (expected ns, us, µs, ms, s, m, h)`
/// or `invalid ISO-8601 duration "PT": expected at least one component after 'T'`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid {syntax} {input:?}: {reason}")]
pub struct DurationError {
    syntax: Syntax,
    input: String,
    reason: String,
}

impl DurationError {
    fn new(syntax: Syntax, input: &str, reason: String) -> Self {
        Self {
            syntax,
            input: input.to_owned(),
            reason,
        }
    }

    /// The string that was rejected (after trimming, when it came through [`parse`]).
    pub fn input(&self) -> &str {
        &self.input
    }

    /// What is wrong with the input, without the `invalid duration "…"` prefix.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Which of the two syntaxes an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Go,
    Iso8601,
}

impl fmt::Display for Syntax {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Syntax::Go => "duration",
            Syntax::Iso8601 => "ISO-8601 duration",
        })
    }
}

/// Parses a duration in either syntax, ignoring surrounding whitespace.
///
/// Input whose first character (after an optional sign) is `P` is read as
/// ISO-8601 with [`parse_iso8601`], anything else as Go syntax with
/// [`parse_go`]. A lower-case `p` also selects ISO-8601, so that its error
/// explains that designators must be upper-case.
///
/// ```
/// # use std::time::Duration;
/// # use knative_core::duration::parse;
/// assert_eq!(parse("PT30S"), parse("30s"));
/// assert_eq!(parse("\t1m\n"), Ok(Duration::from_secs(60)));
/// ```
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let (_, body) = split_sign(s);
    if body.starts_with(['P', 'p']) {
        parse_iso8601(s)
    } else {
        parse_go(s)
    }
}

/// Parses Go's `time.ParseDuration` syntax.
///
/// The grammar is Go's: an optional `+` or `-`, then one or more decimal
/// numbers, each with an optional fraction and a unit: `ns`, `us`, `µs`
/// (U+00B5), `μs` (U+03BC), `ms`, `s`, `m` or `h`, for example `"300ms"`,
/// `"1.5h"`, `".5s"` or `"2h45m30.5s"`. A lone `"0"` needs no unit.
///
/// Fractions are converted the way Go does it, truncated to whole
/// nanoseconds. A leading `-` is only accepted when the value is zero
/// (`"-0s"`), and totals above `i64::MAX` nanoseconds are rejected.
///
/// ```
/// # use std::time::Duration;
/// # use knative_core::duration::parse_go;
/// assert_eq!(parse_go("2h45m"), Ok(Duration::from_secs(2 * 3600 + 45 * 60)));
/// assert!(parse_go("-1.5h").is_err());
/// ```
pub fn parse_go(s: &str) -> Result<Duration, DurationError> {
    let error = |reason: String| DurationError::new(Syntax::Go, s, reason);
    let (negative, body) = split_sign(s);
    if body == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(error("empty string".to_owned()));
    }
    if body.is_empty() {
        return Err(error("expected a number after the sign".to_owned()));
    }
    let mut total = 0;
    let mut pos = s.len() - body.len();
    while pos < s.len() {
        let (nanos, end) = go_component(s, pos).map_err(error)?;
        total = add_nanos(total, nanos).ok_or_else(|| error(overflow_reason()))?;
        pos = end;
    }
    if negative && total > 0 {
        return Err(error("negative durations are not allowed".to_owned()));
    }
    Ok(Duration::from_nanos(total))
}

/// Parses one `<number><unit>` component starting at byte `start`, returning
/// its length in nanoseconds and the byte offset just past it.
fn go_component(s: &str, start: usize) -> Result<(u64, usize), String> {
    let number = Decimal::scan(s, start, b".");
    if !number.has_int_digits && !number.has_fraction_digits {
        return Err(if number.has_mark {
            format!("expected digits around '.' at byte {start}")
        } else {
            expected_number(s, start)
        });
    }
    let rest = s.get(number.end..).unwrap_or_default();
    let unit_len = rest
        .find(|c: char| c == '.' || c.is_ascii_digit())
        .unwrap_or(rest.len());
    let (unit, _) = rest.split_at(unit_len);
    if unit.is_empty() {
        return Err(format!(
            "missing unit after {:?} (expected {GO_UNITS})",
            number.text
        ));
    }
    let unit_nanos = go_unit_nanos(unit)
        .ok_or_else(|| format!("unknown unit {unit:?} (expected {GO_UNITS})"))?;
    let nanos = number.go_nanos(unit_nanos).ok_or_else(overflow_reason)?;
    Ok((nanos, number.end + unit.len()))
}

/// The length of a Go unit in nanoseconds.
fn go_unit_nanos(unit: &str) -> Option<u64> {
    match unit {
        "ns" => Some(1),
        "us" | "\u{b5}s" | "\u{3bc}s" => Some(NANOS_PER_MICRO),
        "ms" => Some(NANOS_PER_MILLI),
        "s" => Some(NANOS_PER_SECOND),
        "m" => Some(NANOS_PER_MINUTE),
        "h" => Some(NANOS_PER_HOUR),
        _ => None,
    }
}

/// Parses an ISO-8601 duration such as `PT0.2S`, `P1DT2H` or `P1Y2M3DT4H5M6.5S`.
///
/// The form is `P`, then date components (`Y` years, `M` months, `W` weeks,
/// `D` days) and optionally `T` followed by time components (`H` hours, `M`
/// minutes, `S` seconds). Each component is a number and an upper-case
/// designator; components appear at most once and in that order, at least
/// one must be present, and `T` must be followed by at least one. Any one
/// component may have a fraction (with `.` or `,` as decimal mark, digits on
/// both sides), but only the last component present.
///
/// Calendar units are converted with fixed lengths: a week is 7 days, a day
/// 24 hours, a month 30.436875 days and a year 365.2425 days (the Gregorian
/// mean lengths), so `P1M` is `2629746s` whatever the date. Results are
/// truncated to whole nanoseconds. A leading `+` is accepted, a leading `-`
/// is rejected (durations are unsigned), and so are totals above `i64::MAX`
/// nanoseconds.
///
/// ```
/// # use std::time::Duration;
/// # use knative_core::duration::parse_iso8601;
/// assert_eq!(parse_iso8601("P2W"), Ok(Duration::from_secs(14 * 24 * 3600)));
/// assert!(parse_iso8601("PT").is_err());
/// ```
pub fn parse_iso8601(s: &str) -> Result<Duration, DurationError> {
    IsoParser::new(s)
        .parse()
        .map(Duration::from_nanos)
        .map_err(|reason| DurationError::new(Syntax::Iso8601, s, reason))
}

/// Which part of an ISO-8601 duration the parser is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Between `P` and `T`.
    Date,
    /// After `T`.
    Time,
}

impl Section {
    fn designators(self) -> &'static [Designator] {
        match self {
            Section::Date => &DATE_DESIGNATORS,
            Section::Time => &TIME_DESIGNATORS,
        }
    }

    /// The section's designators, for error messages.
    fn list(self) -> &'static str {
        match self {
            Section::Date => "Y, M, W, D",
            Section::Time => "H, M, S",
        }
    }
}

/// A left-to-right reader of one ISO-8601 duration; errors are reasons.
struct IsoParser<'a> {
    input: &'a str,
    pos: usize,
    section: Section,
    /// Index into the section's designators of the first one still allowed.
    next_designator: usize,
    /// Components read in the current section.
    section_components: usize,
    /// Components read in total.
    components: usize,
    /// The text of a component that had a fraction, if one did.
    fractional: Option<&'a str>,
    total: u64,
}

impl<'a> IsoParser<'a> {
    fn new(input: &'a str) -> Self {
        Self {
            input,
            pos: 0,
            section: Section::Date,
            next_designator: 0,
            section_components: 0,
            components: 0,
            fractional: None,
            total: 0,
        }
    }

    /// Reads the whole input, returning the total in nanoseconds.
    fn parse(mut self) -> Result<u64, String> {
        self.start()?;
        while let Some(c) = self.peek() {
            if c == 'T' {
                self.enter_time_section()?;
            } else {
                self.component()?;
            }
        }
        self.finish()
    }

    fn peek(&self) -> Option<char> {
        char_at(self.input, self.pos)
    }

    /// Reads the optional `+` and the `P`.
    fn start(&mut self) -> Result<(), String> {
        if self.input.is_empty() {
            return Err("empty string".to_owned());
        }
        let (negative, body) = split_sign(self.input);
        if negative {
            return Err("negative durations are not allowed".to_owned());
        }
        self.pos = self.input.len() - body.len();
        match self.peek() {
            Some('P') => {
                self.pos += 1;
                Ok(())
            }
            Some(c) => Err(unexpected(c, self.pos, "'P'")),
            None => Err("expected 'P' after the sign".to_owned()),
        }
    }

    fn enter_time_section(&mut self) -> Result<(), String> {
        if self.section == Section::Time {
            return Err(format!("repeated 'T' at byte {}", self.pos));
        }
        self.section = Section::Time;
        self.next_designator = 0;
        self.section_components = 0;
        self.pos += 1;
        Ok(())
    }

    /// Reads one `<number><designator>` component.
    fn component(&mut self) -> Result<(), String> {
        let start = self.pos;
        if let Some(fractional) = self.fractional {
            return Err(format!(
                "only the last component may have a fraction, but {fractional:?} \
                 is followed by more at byte {start}"
            ));
        }
        let number = Decimal::scan(self.input, start, b".,");
        self.check_number(&number, start)?;
        let designator = char_at(self.input, number.end).ok_or_else(|| {
            format!(
                "missing designator after {:?} (expected one of {})",
                number.text,
                self.section.list()
            )
        })?;
        let unit_nanos = self.designator_nanos(designator, number.end)?;
        let nanos = number.exact_nanos(unit_nanos).ok_or_else(overflow_reason)?;
        self.total = add_nanos(self.total, nanos).ok_or_else(overflow_reason)?;
        self.pos = number.end + designator.len_utf8();
        if number.has_mark {
            self.fractional = self.input.get(start..self.pos);
        }
        self.section_components += 1;
        self.components += 1;
        Ok(())
    }

    /// ISO-8601 wants digits before and, if there is a decimal mark, after it.
    fn check_number(&self, number: &Decimal<'_>, start: usize) -> Result<(), String> {
        if !number.has_int_digits {
            return Err(if number.has_mark {
                format!("expected a digit before the decimal mark at byte {start}")
            } else {
                char_at(self.input, start)
                    .and_then(|c| lower_case_designator(c, start))
                    .unwrap_or_else(|| expected_number(self.input, start))
            });
        }
        if number.has_mark && !number.has_fraction_digits {
            return Err(format!(
                "expected a digit after the decimal mark at byte {}",
                number.end - 1
            ));
        }
        Ok(())
    }

    /// Checks that `designator` may come next and returns its unit length.
    fn designator_nanos(&mut self, designator: char, at: usize) -> Result<u64, String> {
        let designators = self.section.designators();
        match designators
            .iter()
            .enumerate()
            .find(|(_, (symbol, _))| *symbol == designator)
        {
            Some((index, &(_, nanos))) if index >= self.next_designator => {
                self.next_designator = index + 1;
                Ok(nanos)
            }
            Some(_) => Err(format!(
                "designator '{designator}' at byte {at} is repeated or out of order \
                 (expected {} in that order)",
                self.section.list()
            )),
            None => Err(self.misplaced(designator, at)),
        }
    }

    /// Explains a designator that is not allowed in the current section.
    fn misplaced(&self, designator: char, at: usize) -> String {
        let is_in = |designators: &[Designator]| designators.iter().any(|(c, _)| *c == designator);
        match self.section {
            Section::Date if is_in(&TIME_DESIGNATORS) => {
                format!("designator '{designator}' at byte {at} must come after 'T'")
            }
            Section::Time if is_in(&DATE_DESIGNATORS) => {
                format!("designator '{designator}' at byte {at} is not allowed after 'T'")
            }
            _ => unexpected(designator, at, &format!("one of {}", self.section.list())),
        }
    }

    /// Checks that something was read, in total and after `T`.
    fn finish(self) -> Result<u64, String> {
        match self.section {
            Section::Date if self.components == 0 => {
                Err("expected at least one component after 'P'".to_owned())
            }
            Section::Time if self.section_components == 0 => {
                Err("expected at least one component after 'T'".to_owned())
            }
            _ => Ok(self.total),
        }
    }
}

/// Explains an unexpected character in an ISO-8601 duration, pointing out
/// lower-case designators.
fn unexpected(c: char, at: usize, expected: &str) -> String {
    lower_case_designator(c, at)
        .unwrap_or_else(|| format!("unexpected {c:?} at byte {at} (expected {expected})"))
}

/// Explains a lower-case ISO-8601 designator, if `c` is one.
fn lower_case_designator(c: char, at: usize) -> Option<String> {
    matches!(c, 'p' | 'y' | 'm' | 'w' | 'd' | 't' | 'h' | 's')
        .then(|| format!("designators must be upper-case, found '{c}' at byte {at}"))
}

/// A decimal number as written: digits, then optionally a mark and more digits.
struct Decimal<'a> {
    /// The number as written.
    text: &'a str,
    /// The integer part, saturated at `u64::MAX` (which overflows anyway).
    int: u64,
    /// The leading fraction digits that fit, as Go keeps them.
    fraction: u64,
    /// How many fraction digits `fraction` holds.
    fraction_len: u32,
    /// Whether digits were dropped from `fraction`.
    fraction_truncated: bool,
    has_int_digits: bool,
    has_mark: bool,
    has_fraction_digits: bool,
    /// The byte offset just past the number.
    end: usize,
}

impl<'a> Decimal<'a> {
    /// Reads `[0-9]*(<mark>[0-9]*)?` from byte `start` of `s`.
    fn scan(s: &'a str, start: usize, marks: &[u8]) -> Self {
        let bytes = s.as_bytes();
        let mut number = Decimal {
            text: "",
            int: 0,
            fraction: 0,
            fraction_len: 0,
            fraction_truncated: false,
            has_int_digits: false,
            has_mark: false,
            has_fraction_digits: false,
            end: start,
        };
        let mut pos = start;
        while let Some(digit) = digit_at(bytes, pos) {
            number.int = number.int.saturating_mul(10).saturating_add(digit);
            number.has_int_digits = true;
            pos += 1;
        }
        if bytes.get(pos).is_some_and(|b| marks.contains(b)) {
            number.has_mark = true;
            pos += 1;
            while let Some(digit) = digit_at(bytes, pos) {
                number.push_fraction_digit(digit);
                pos += 1;
            }
        }
        number.end = pos;
        number.text = s.get(start..pos).unwrap_or_default();
        number
    }

    /// Appends a fraction digit unless the fraction is full, like Go's
    /// `leadingFraction`: once a digit does not fit, the rest are dropped.
    fn push_fraction_digit(&mut self, digit: u64) {
        self.has_fraction_digits = true;
        if self.fraction_truncated {
            return;
        }
        match self
            .fraction
            .checked_mul(10)
            .and_then(|f| f.checked_add(digit))
        {
            Some(next) if next <= GO_FRACTION_LIMIT => {
                self.fraction = next;
                self.fraction_len += 1;
            }
            _ => self.fraction_truncated = true,
        }
    }

    /// The integer part times `unit`, if it is within range.
    fn whole_nanos(&self, unit: u64) -> Option<u64> {
        self.int.checked_mul(unit).filter(|&n| n <= MAX_NANOS)
    }

    /// The value in `unit`s as nanoseconds, computing the fraction exactly
    /// as Go does, in `float64`: `uint64(float64(f) * (float64(unit) / scale))`.
    /// Go relies on that rounding (`"0.3333333333333333333h"` is `20m0s`).
    fn go_nanos(&self, unit: u64) -> Option<u64> {
        // Go's scale is a float64 multiplied by ten once per kept digit.
        let scale = (0..self.fraction_len).fold(1.0_f64, |scale, _| scale * 10.0);
        // The product is below `unit` (at most 3.6e12), so the cast does
        // not saturate; it truncates toward zero like Go's conversion.
        let fraction = (self.fraction as f64 * (unit as f64 / scale)) as u64;
        add_nanos(self.whole_nanos(unit)?, fraction)
    }

    /// The value in `unit`s as nanoseconds, with the fraction computed
    /// exactly and truncated.
    fn exact_nanos(&self, unit: u64) -> Option<u64> {
        // The fraction is below 2^63 + 1 and `unit` below 2^55, so the
        // product fits; a scale too large for u128 makes the part zero.
        let fraction = match 10_u128.checked_pow(self.fraction_len) {
            Some(scale) => u128::from(self.fraction) * u128::from(unit) / scale,
            None => 0,
        };
        add_nanos(self.whole_nanos(unit)?, u64::try_from(fraction).ok()?)
    }
}

fn digit_at(bytes: &[u8], pos: usize) -> Option<u64> {
    bytes
        .get(pos)
        .filter(|b| b.is_ascii_digit())
        .map(|b| u64::from(b - b'0'))
}

fn char_at(s: &str, pos: usize) -> Option<char> {
    s.get(pos..).and_then(|rest| rest.chars().next())
}

/// Splits off a leading `+` or `-`, telling whether it was `-`.
fn split_sign(s: &str) -> (bool, &str) {
    match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    }
}

/// Adds two nanosecond counts, failing above the maximum duration.
fn add_nanos(a: u64, b: u64) -> Option<u64> {
    a.checked_add(b).filter(|&n| n <= MAX_NANOS)
}

fn expected_number(s: &str, at: usize) -> String {
    match char_at(s, at) {
        Some(c) => format!("expected a number at byte {at}, found {c:?}"),
        None => format!("expected a number at byte {at}"),
    }
}

fn overflow_reason() -> String {
    format!(
        "duration exceeds the maximum of {}",
        format_go(Duration::from_nanos(MAX_NANOS))
    )
}

/// Formats a duration exactly like Go's `time.Duration.String()`.
///
/// Zero is `0s`. Below one second the largest of `ns`, `µs` (U+00B5) and
/// `ms` that fits is used, with a fraction (`1.5ms`, `300ms`, `1.000001ms`).
/// From one second on the form is `72h3m0.5s`: hours and minutes appear
/// only from the first non-zero one (`1h0m0s`, `1m30s`, `1.5s`). Fractions
/// have no trailing zeros.
///
/// Go cannot represent durations above `i64::MAX` nanoseconds, so those are
/// formatted as that maximum, `2562047h47m16.854775807s`.
///
/// ```
/// # use std::time::Duration;
/// # use knative_core::duration::format_go;
/// assert_eq!(format_go(Duration::from_secs(3600)), "1h0m0s");
/// assert_eq!(format_go(Duration::from_micros(1500)), "1.5ms");
/// ```
pub fn format_go(d: Duration) -> String {
    let nanos = u64::try_from(d.as_nanos()).map_or(MAX_NANOS, |n| n.min(MAX_NANOS));
    match nanos {
        0 => "0s".to_owned(),
        n if n < NANOS_PER_SECOND => format_subsecond(n),
        n => format_clock(n),
    }
}

/// Formats `0 < nanos < 1s` in the largest unit below a second that fits.
fn format_subsecond(nanos: u64) -> String {
    let (fraction_digits, unit) = if nanos < NANOS_PER_MICRO {
        (0, "ns")
    } else if nanos < NANOS_PER_MILLI {
        (3, "\u{b5}s")
    } else {
        (6, "ms")
    };
    format!("{}{unit}", fixed_point(nanos, fraction_digits))
}

/// Formats `nanos >= 1s` as hours, minutes and seconds.
fn format_clock(nanos: u64) -> String {
    let hours = nanos / NANOS_PER_HOUR;
    let minutes = nanos / NANOS_PER_MINUTE % 60;
    let seconds = fixed_point(nanos % NANOS_PER_MINUTE, 9);
    if hours > 0 {
        format!("{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Writes `value / 10^fraction_digits` in decimal without trailing zeros.
fn fixed_point(value: u64, fraction_digits: u32) -> String {
    let scale = 10_u64.pow(fraction_digits);
    let (int, fraction) = (value / scale, value % scale);
    if fraction == 0 {
        return int.to_string();
    }
    let width = fraction_digits as usize;
    let fraction = format!("{fraction:0width$}");
    format!("{int}.{}", fraction.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    const WEEK: u64 = 7 * DAY;
    const MONTH: u64 = 2_629_746;
    const YEAR: u64 = 31_556_952;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    fn ns(n: u64) -> Duration {
        Duration::from_nanos(n)
    }

    /// Asserts that every input parses to its expected duration.
    fn assert_parses(
        parser: fn(&str) -> Result<Duration, DurationError>,
        cases: &[(&str, Duration)],
    ) {
        for &(input, expected) in cases {
            assert_eq!(parser(input), Ok(expected), "input {input:?}");
        }
    }

    /// Asserts that every input is rejected with a reason containing the
    /// expected text, and that the error keeps the input.
    fn assert_rejects(parser: fn(&str) -> Result<Duration, DurationError>, cases: &[(&str, &str)]) {
        for &(input, expected) in cases {
            match parser(input) {
                Ok(d) => panic!("input {input:?} parsed as {d:?}, expected an error"),
                Err(error) => {
                    assert!(
                        error.reason().contains(expected),
                        "input {input:?}: reason {:?} does not mention {expected:?}",
                        error.reason()
                    );
                    assert_eq!(error.input(), input);
                }
            }
        }
    }

    #[test]
    fn parse_go_accepts_brief_examples() {
        assert_parses(
            parse_go,
            &[
                ("0", Duration::ZERO),
                ("1h30m", secs(HOUR + 30 * MINUTE)),
                ("1.5h", secs(HOUR + 30 * MINUTE)),
                (".5s", ms(500)),
                ("1.s", secs(1)),
                ("300ms", ms(300)),
                ("2h45m30.5s", secs(2 * HOUR + 45 * MINUTE + 30) + ms(500)),
                ("+5s", secs(5)),
                ("-0s", Duration::ZERO),
                ("-0", Duration::ZERO),
                ("+0", Duration::ZERO),
                ("-0.0000000001s", Duration::ZERO),
            ],
        );
    }

    #[test]
    fn parse_go_accepts_go_test_table() {
        // Cases from Go's own `time.ParseDuration` tests (negative ones excluded).
        assert_parses(
            parse_go,
            &[
                ("2h45m", secs(2 * HOUR + 45 * MINUTE)),
                ("5s", secs(5)),
                ("30s", secs(30)),
                ("1478s", secs(1478)),
                ("5.0s", secs(5)),
                ("5.6s", ms(5600)),
                ("5.s", secs(5)),
                ("1.0s", secs(1)),
                ("1.00s", secs(1)),
                ("1.004s", ms(1004)),
                ("1.0040s", ms(1004)),
                ("100.00100s", ms(100_001)),
                ("10ns", ns(10)),
                ("11us", ns(11_000)),
                ("12\u{b5}s", ns(12_000)),
                ("12\u{3bc}s", ns(12_000)),
                ("13ms", ms(13)),
                ("14s", secs(14)),
                ("15m", secs(15 * MINUTE)),
                ("16h", secs(16 * HOUR)),
                ("3h30m", secs(3 * HOUR + 30 * MINUTE)),
                ("10.5s4m", secs(4 * MINUTE + 10) + ms(500)),
                (
                    "1h2m3s4ms5us6ns",
                    secs(HOUR + 2 * MINUTE + 3) + ns(4_005_006),
                ),
                ("39h9m14.425s", secs(39 * HOUR + 9 * MINUTE + 14) + ms(425)),
                ("52763797000ns", ns(52_763_797_000)),
                ("0.3333333333333333333h", secs(20 * MINUTE)),
                ("9007199254740993ns", ns(9_007_199_254_740_993)),
                ("9223372036854775807ns", ns(MAX_NANOS)),
                ("9223372036854775.807us", ns(MAX_NANOS)),
                ("9223372036s854ms775us807ns", ns(MAX_NANOS)),
                ("0.100000000000000000000h", secs(6 * MINUTE)),
                (
                    "0.830103483285477580700h",
                    secs(49 * MINUTE + 48) + ns(372_539_827),
                ),
            ],
        );
    }

    #[test]
    fn parse_go_truncates_sub_nanosecond_digits() {
        assert_parses(
            parse_go,
            &[
                ("1.0000000001s", secs(1)),
                ("1.9999999999s", secs(1) + ns(999_999_999)),
                ("0.5ns", Duration::ZERO),
                ("1.9ns", ns(1)),
                ("0.0000000000000000000000000000001h", Duration::ZERO),
            ],
        );
    }

    #[test]
    fn parse_go_rejects_invalid_input() {
        assert_rejects(
            parse_go,
            &[
                ("", "empty string"),
                ("-", "expected a number after the sign"),
                ("+", "expected a number after the sign"),
                ("30", r#"missing unit after "30""#),
                ("00", r#"missing unit after "00""#),
                ("1.5.5s", r#"missing unit after "1.5""#),
                (
                    "1d",
                    r#"unknown unit "d" (expected ns, us, µs, ms, s, m, h)"#,
                ),
                ("1x", r#"unknown unit "x""#),
                ("1S", r#"unknown unit "S""#),
                ("1h 30m", r#"unknown unit "h ""#),
                (".", "expected digits around '.' at byte 0"),
                (".s", "expected digits around '.' at byte 0"),
                ("-.s", "expected digits around '.' at byte 1"),
                ("s", "expected a number at byte 0, found 's'"),
                ("1h-30m", r#"unknown unit "h-""#),
                ("--1s", "expected a number at byte 1, found '-'"),
                ("-1.5h", "negative durations are not allowed"),
                ("-2m3.4s", "negative durations are not allowed"),
                ("9223372036854775808ns", "exceeds the maximum"),
                ("9223372036854775.808us", "exceeds the maximum"),
                ("9223372036s854ms775us808ns", "exceeds the maximum"),
                ("2562048h", "exceeds the maximum"),
                ("3000000h", "exceeds the maximum"),
                ("99999999999999999999999999h", "exceeds the maximum"),
                ("-9223372036854775808ns", "exceeds the maximum"),
            ],
        );
    }

    #[test]
    fn parse_iso8601_accepts_knative_examples() {
        assert_parses(
            parse_iso8601,
            &[
                ("PT1S", secs(1)),
                ("PT0.2S", ms(200)),
                ("PT10M", secs(10 * MINUTE)),
                ("P1DT2H", secs(DAY + 2 * HOUR)),
                ("P2W", secs(2 * WEEK)),
                (
                    "P1Y2M3DT4H5M6.5S",
                    secs(YEAR + 2 * MONTH + 3 * DAY + 4 * HOUR + 5 * MINUTE + 6) + ms(500),
                ),
            ],
        );
    }

    #[test]
    fn parse_iso8601_accepts_other_forms() {
        assert_parses(
            parse_iso8601,
            &[
                ("+PT1S", secs(1)),
                ("PT0,5S", ms(500)),
                ("P0D", Duration::ZERO),
                ("PT0S", Duration::ZERO),
                ("P1Y", secs(YEAR)),
                ("P1M", secs(MONTH)),
                ("PT1M", secs(MINUTE)),
                ("P1W1D", secs(WEEK + DAY)),
                ("PT36H", secs(36 * HOUR)),
                ("PT90M", secs(90 * MINUTE)),
                ("P1.5D", secs(36 * HOUR)),
                ("PT1.5H", secs(HOUR + 30 * MINUTE)),
                ("P0.5Y", secs(YEAR / 2)),
                ("P1DT0.25S", secs(DAY) + ms(250)),
                ("PT0.000000001S", ns(1)),
                ("PT0.0000000019S", ns(1)),
                ("PT9223372036.854775807S", ns(MAX_NANOS)),
            ],
        );
    }

    #[test]
    fn parse_iso8601_rejects_invalid_input() {
        assert_rejects(
            parse_iso8601,
            &[
                ("", "empty string"),
                ("+", "expected 'P' after the sign"),
                ("1S", "unexpected '1' at byte 0 (expected 'P')"),
                ("+-PT1S", "unexpected '-' at byte 1"),
                ("P", "expected at least one component after 'P'"),
                ("PT", "expected at least one component after 'T'"),
                ("P1DT", "expected at least one component after 'T'"),
                ("-PT1S", "negative durations are not allowed"),
                (
                    "pt1s",
                    "designators must be upper-case, found 'p' at byte 0",
                ),
                (
                    "PT1s",
                    "designators must be upper-case, found 's' at byte 3",
                ),
                ("P1d", "designators must be upper-case, found 'd'"),
                ("P1Dt1H", "designators must be upper-case, found 't'"),
                ("P1H", "designator 'H' at byte 2 must come after 'T'"),
                ("P1S", "designator 'S' at byte 2 must come after 'T'"),
                ("PT1D", "designator 'D' at byte 3 is not allowed after 'T'"),
                ("PT1Y", "designator 'Y' at byte 3 is not allowed after 'T'"),
                (
                    "P1M1Y",
                    "designator 'Y' at byte 4 is repeated or out of order",
                ),
                (
                    "P1D1D",
                    "designator 'D' at byte 4 is repeated or out of order",
                ),
                (
                    "PT1S1M",
                    "designator 'M' at byte 5 is repeated or out of order",
                ),
                ("PTT1H", "repeated 'T' at byte 2"),
                ("P1X", "unexpected 'X' at byte 2"),
                ("P1", r#"missing designator after "1""#),
                ("PT1", r#"missing designator after "1""#),
                ("P-1D", "expected a number at byte 1, found '-'"),
                ("PT1S ", "expected a number at byte 4, found ' '"),
                (
                    "PT.5S",
                    "expected a digit before the decimal mark at byte 2",
                ),
                ("PT1.S", "expected a digit after the decimal mark at byte 3"),
                (
                    "P1.5DT1H",
                    r#"only the last component may have a fraction, but "1.5D""#,
                ),
                ("PT1.5M30S", "only the last component may have a fraction"),
                ("P300Y", "exceeds the maximum"),
                ("PT99999999999999999999S", "exceeds the maximum"),
                ("PT9223372036.854775808S", "exceeds the maximum"),
            ],
        );
    }

    #[test]
    fn parse_trims_and_dispatches_on_leading_p() {
        assert_parses(
            parse,
            &[
                (" 1h30m ", secs(HOUR + 30 * MINUTE)),
                ("\tPT1S\n", secs(1)),
                ("+PT1S", secs(1)),
                ("0", Duration::ZERO),
                ("P1D", secs(DAY)),
            ],
        );
    }

    #[test]
    fn parse_reports_errors_in_the_chosen_syntax() {
        let cases = [
            (
                "-PT1S",
                "invalid ISO-8601 duration \"-PT1S\": negative durations are not allowed",
            ),
            (
                "-1s",
                "invalid duration \"-1s\": negative durations are not allowed",
            ),
            (
                " pt1s ",
                "invalid ISO-8601 duration \"pt1s\": designators must be upper-case, found 'p' at byte 0",
            ),
            ("   ", "invalid duration \"\": empty string"),
            (
                "1d",
                "invalid duration \"1d\": unknown unit \"d\" (expected ns, us, µs, ms, s, m, h)",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                parse(input).map_err(|e| e.to_string()),
                Err(expected.to_owned()),
                "input {input:?}"
            );
        }
    }

    #[test]
    fn error_displays_input_and_reason() {
        let go = DurationError::new(
            Syntax::Go,
            "1x",
            format!("unknown unit \"x\" (expected {GO_UNITS})"),
        );
        assert_eq!(parse_go("1x"), Err(go.clone()));
        assert_eq!(
            go.to_string(),
            r#"invalid duration "1x": unknown unit "x" (expected ns, us, µs, ms, s, m, h)"#
        );
        assert_eq!(go.input(), "1x");
        assert_eq!(
            go.reason(),
            r#"unknown unit "x" (expected ns, us, µs, ms, s, m, h)"#
        );

        assert_eq!(
            parse_iso8601("PT").map_err(|e| e.to_string()),
            Err(
                r#"invalid ISO-8601 duration "PT": expected at least one component after 'T'"#
                    .to_owned()
            )
        );
    }

    #[test]
    fn format_go_matches_go_string() {
        let cases = [
            (Duration::ZERO, "0s"),
            (ns(1), "1ns"),
            (ns(999), "999ns"),
            (ns(1_000), "1\u{b5}s"),
            (ns(1_100), "1.1\u{b5}s"),
            (ms(2) + ns(200_000), "2.2ms"),
            (ns(1_500_000), "1.5ms"),
            (ms(300), "300ms"),
            (ns(1_000_001), "1.000001ms"),
            (ns(999_999_999), "999.999999ms"),
            (secs(1), "1s"),
            (ms(1500), "1.5s"),
            (ms(3300), "3.3s"),
            (secs(30), "30s"),
            (secs(60), "1m0s"),
            (secs(90), "1m30s"),
            (secs(4 * MINUTE + 5), "4m5s"),
            (secs(4 * MINUTE + 5) + ms(1), "4m5.001s"),
            (secs(5 * HOUR + 6 * MINUTE + 7) + ms(1), "5h6m7.001s"),
            (secs(HOUR), "1h0m0s"),
            (secs(8 * MINUTE) + ns(1), "8m0.000000001s"),
            (secs(2 * HOUR + 45 * MINUTE + 30) + ms(500), "2h45m30.5s"),
            (secs(72 * HOUR + 3 * MINUTE) + ms(500), "72h3m0.5s"),
            (ns(MAX_NANOS), "2562047h47m16.854775807s"),
        ];
        for (d, expected) in cases {
            assert_eq!(format_go(d), expected, "duration {d:?}");
        }
    }

    #[test]
    fn format_go_saturates_above_go_maximum() {
        for d in [ns(MAX_NANOS) + ns(1), ns(u64::MAX), Duration::MAX] {
            assert_eq!(format_go(d), "2562047h47m16.854775807s", "duration {d:?}");
        }
    }

    #[test]
    fn format_go_round_trips_canonical_strings() {
        let canonical = [
            "0s",
            "1ns",
            "1.1\u{b5}s",
            "2.2ms",
            "300ms",
            "1.000001ms",
            "3.3s",
            "1m30s",
            "4m5.001s",
            "1h0m0s",
            "2h45m30.5s",
            "72h3m0.5s",
            "8m0.000000001s",
            "2562047h47m16.854775807s",
        ];
        for input in canonical {
            assert_eq!(parse_go(input).map(format_go), Ok(input.to_owned()));
        }
    }

    #[test]
    fn overflow_reason_names_the_maximum() {
        assert_eq!(
            overflow_reason(),
            "duration exceeds the maximum of 2562047h47m16.854775807s"
        );
    }

    fn any_go_duration() -> impl Strategy<Value = Duration> {
        prop_oneof![
            (0..=MAX_NANOS).prop_map(ns),
            (0..NANOS_PER_SECOND).prop_map(ns),
            (0..=MAX_NANOS / NANOS_PER_SECOND).prop_map(secs),
            (0..=MAX_NANOS / NANOS_PER_MILLI).prop_map(ms),
        ]
    }

    proptest! {
        #[test]
        fn parse_go_inverts_format_go(d in any_go_duration()) {
            prop_assert_eq!(parse_go(&format_go(d)), Ok(d));
        }

        #[test]
        fn parsers_never_panic(s in r"[-+ PTYMWDHSpts0-9.,µμnuhx]{0,24}|\PC{0,24}") {
            let _ = parse(&s);
            let _ = parse_go(&s);
            let _ = parse_iso8601(&s);
        }
    }
}
