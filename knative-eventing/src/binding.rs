//! The CloudEvents v1.0 HTTP protocol binding and the JSON event format
//! (`specs/EVENTING.md §7`), built on the `Event` type of `cloudevents-sdk`
//! but not on its HTTP reader, which lacks what `specs/EVENTING.md §10` lists:
//! percent-decoding of `ce-` headers, case-insensitive detection of the
//! structured mode, attribute-name validation and the i32 range of integers.
//!
//! The functions work on [`http::HeaderMap`] and complete bodies (`&[u8]`),
//! so hyper servers and clients, and any other `http`-based stack, can use
//! them. The broker ingress (`specs/EVENTING.md §1.3`) calls
//! [`read_request`] with batches turned off and answers
//! [`BindingError::status_code`] on failure; the broker filter reads reply
//! events with [`read_response`].
//!
//! # Content modes
//!
//! [`mode_of`] looks at the media type of `Content-Type` (case-insensitive,
//! parameters ignored): `application/cloudevents-batch` (optionally with a
//! `+format` suffix) is [`Mode::Batch`], `application/cloudevents` (optionally
//! with a suffix) is [`Mode::Structured`], anything else, or no content type,
//! is [`Mode::Binary`]. Only the JSON format (`+json`) is implemented; other
//! formats are rejected with [`BindingErrorKind::UnsupportedFormat`].
//!
//! # Decisions
//!
//! * **Spec version.** Only `1.0` is read and written; `0.3` is rejected
//!   ([`BindingErrorKind::UnsupportedSpecVersion`]), also when writing an
//!   SDK event that carries `0.3` attributes.
//! * **Header values.** On write, the canonical string form of every `ce-`
//!   value is percent-encoded: space, `"`, `%`, and every character outside
//!   U+0021–U+007E, as upper-case `%XY` escapes of its UTF-8 bytes. On read,
//!   optional whitespace around the value is dropped, an RFC 7230
//!   quoted-string (with backslash escapes) is unquoted, then one round of
//!   percent-decoding runs; lower-case hex and needless escapes are accepted,
//!   byte sequences that are not UTF-8 (such as `%C0%A0`) are rejected, and
//!   so are malformed escapes (`%zz`, a truncated `%4`). Raw UTF-8 bytes in a
//!   header (sent by SDKs that do not percent-encode) are accepted.
//!   [`HeaderDecoding::Lenient`] keeps malformed escapes as literal text,
//!   for senders such as sdk-go that put raw `%` into values.
//!   `Content-Type` itself is an ordinary header and is not percent-decoded.
//! * **Charset.** The `charset` parameter of the structured and batch
//!   content types is ignored: the body must be UTF-8 JSON (RFC 8259).
//! * **Attribute names** must match `[a-z0-9]+` and must not be `data`;
//!   names longer than the recommended 20 characters and names that start
//!   with a digit are accepted (both are SHOULD rules). Header names are
//!   case-insensitive (the `http` crate lowercases them), JSON member names
//!   are not: `"myExt"` is rejected.
//! * **String values** (`id`, `type`, `source`, `subject`,
//!   `datacontenttype`, string extensions) must not contain the control
//!   characters U+0000–U+001F and U+007F–U+009F nor Unicode noncharacters;
//!   `id`, `source` and `type` must be non-empty, and so must `subject`,
//!   `datacontenttype` and `dataschema` when present. `source` is otherwise
//!   not checked against the URI-reference grammar (the SDK stores it as a
//!   string; sdk-go is as lenient).
//! * **`dataschema`** must be an absolute URI, because the SDK stores it as
//!   an absolute `url::Url`: relative references, including `#`, are
//!   rejected with [`BindingErrorKind::InvalidAttribute`]. The value written
//!   back is the URL's normalised serialisation (`HTTP://Example.com` becomes
//!   `http://example.com/`).
//! * **`time`** must be an RFC 3339 timestamp. The SDK keeps it as
//!   `DateTime<Utc>`, so the original offset is lost; it is written in UTC
//!   with a `Z` suffix and only as many fraction digits as needed.
//! * **Integers.** A JSON extension value that is a number must be written
//!   without fraction or exponent and fit i32 (the spec's Integer); the SDK
//!   stores it as i64. Writing an SDK integer outside the i32 range fails
//!   with [`BindingErrorKind::IntegerOutOfRange`]. JSON objects and arrays
//!   are not valid extension values; `null` means unset.
//! * **Extension types in binary mode.** A header carries no type, so every
//!   extension read from a `ce-` header is an `ExtensionValue::String`
//!   (`ce-knativebrokerttl: 255` reads as the string `"255"`). Structured
//!   mode keeps booleans and integers.
//! * **Data.** A content type is JSON-ish when its media subtype is `json`
//!   or ends in `+json`; an absent content type counts as `application/json`
//!   in the JSON format. Binary mode: an empty body means no data; a JSON-ish
//!   `Content-Type` makes the body a parsed `Data::Json` (invalid JSON is an
//!   error); any other body is `Data::Binary`. Structured mode: `data_base64`
//!   is decoded to `Data::Binary` whatever the content type; `data` under a
//!   JSON-ish or absent content type is `Data::Json` (including strings and an
//!   explicit `null`), a string `data` under another content type is
//!   `Data::String`, and a non-string one is kept as `Data::Json`. Writing:
//!   `Data::Binary` is the body or `data_base64`; `Data::Json` is the JSON
//!   text or `data`; `Data::String` is the raw text under a non-JSON content
//!   type and a JSON string otherwise. When binary mode sends JSON or string
//!   data of an event without `datacontenttype`, it sets `Content-Type:
//!   application/json`, as the JSON format asks. Consequently write-then-read
//!   is the identity in structured mode, and in binary mode up to these
//!   rules (string data comes back as bytes, extensions as strings).
//! * **Batches.** An empty batch (`[]`) is valid and reads as no events. One
//!   invalid element fails the whole batch, with an error located at
//!   `batch[i]`. [`Limits::allow_batch`] turns batches off (the Knative
//!   ingress does not accept them) and [`Limits::max_batch_events`] caps them.
//! * **Strictness elsewhere.** Duplicate `ce-` headers, duplicate
//!   `Content-Type` headers, duplicate JSON members and a `ce-datacontenttype`
//!   header in binary mode are errors. In structured mode `ce-` headers are
//!   ignored: the body is authoritative.
//! * **Size.** Bodies above [`Limits::max_body_bytes`] (default
//!   [`DEFAULT_MAX_BODY_BYTES`]) fail with [`BindingErrorKind::TooLarge`];
//!   servers should also cap the body while collecting it and may call
//!   [`check_content_length`] first.

use std::collections::HashSet;
use std::fmt;

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::event::{ExtensionValue, SpecVersion};
use cloudevents::{AttributesReader, AttributesWriter, Data, Event, EventBuilder, EventBuilderV10};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use url::Url;

/// The largest body accepted by default: 4 MiB.
///
/// The spec only obliges intermediaries to forward events up to 64 KiB;
/// 4 MiB leaves room for the larger payloads Knative users send while
/// keeping a JSON body's parse cost bounded (it is also gRPC's default).
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The largest number of events accepted in one batch by default.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 10_000;

/// `Content-Type` written for a structured-mode JSON event.
pub const STRUCTURED_JSON_CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// `Content-Type` written for a JSON batch of events.
pub const BATCH_JSON_CONTENT_TYPE: &str = "application/cloudevents-batch+json; charset=utf-8";

/// The only spec version this module reads and writes.
pub const SPEC_VERSION: &str = "1.0";

/// The context attributes defined by CloudEvents v1.0 (everything else is an
/// extension).
pub const CORE_ATTRIBUTES: [&str; 8] = [
    "specversion",
    "id",
    "source",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
];

/// The recommended maximum length of an attribute name (a SHOULD: longer
/// names are accepted).
pub const RECOMMENDED_MAX_NAME_LEN: usize = 20;

/// How an HTTP message carries its event(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Attributes in `ce-` headers, `datacontenttype` in `Content-Type`, data
    /// as the body.
    Binary,
    /// The whole event in the body (`application/cloudevents+json`).
    Structured,
    /// A JSON array of structured events (`application/cloudevents-batch+json`).
    Batch,
}

impl Mode {
    /// The `Content-Type` this module writes for the mode, `None` for binary
    /// mode (where it is the event's `datacontenttype`).
    pub fn content_type(self) -> Option<&'static str> {
        match self {
            Mode::Binary => None,
            Mode::Structured => Some(STRUCTURED_JSON_CONTENT_TYPE),
            Mode::Batch => Some(BATCH_JSON_CONTENT_TYPE),
        }
    }
}

/// How strictly `ce-` header values are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderDecoding {
    /// As the spec says: a malformed escape (`%zz`, a truncated `%4`), an
    /// unterminated quoted-string or escapes that decode to invalid UTF-8
    /// are errors.
    #[default]
    Strict,
    /// For senders that do not percent-encode (sdk-go, sdk-java): malformed
    /// escapes and quotes are kept as literal text, and a value whose escapes
    /// decode to invalid UTF-8 is kept undecoded. Well-formed escapes are
    /// still decoded.
    Lenient,
}

/// Bounds and policies for reading events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest body accepted ([`BindingErrorKind::TooLarge`] above it).
    pub max_body_bytes: usize,
    /// The largest number of events in one batch
    /// ([`BindingErrorKind::TooManyEvents`] above it).
    pub max_batch_events: usize,
    /// Whether [`read_request`] accepts batched mode
    /// ([`BindingErrorKind::BatchNotAllowed`] when it does not).
    pub allow_batch: bool,
    /// How `ce-` header values are decoded.
    pub header_decoding: HeaderDecoding,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            allow_batch: true,
            header_decoding: HeaderDecoding::Strict,
        }
    }
}

/// What went wrong, for tests and for picking a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BindingErrorKind {
    /// The body (or its announced `Content-Length`) exceeds the limit: 413.
    TooLarge,
    /// Neither a `ce-specversion` header nor a CloudEvents content type.
    NotCloudEvent,
    /// A CloudEvents content type with a format other than JSON: 415.
    UnsupportedFormat,
    /// A batch where none is accepted (a reply, or batches turned off).
    BatchNotAllowed,
    /// A batch with more events than [`Limits::max_batch_events`].
    TooManyEvents,
    /// A header value that is not a usable string (not visible ASCII where
    /// that is required, an unterminated quoted-string).
    InvalidHeader,
    /// A malformed percent escape in a `ce-` header.
    InvalidPercentEncoding,
    /// Bytes that are not UTF-8, raw or after percent-decoding.
    InvalidUtf8,
    /// The same attribute twice (repeated header or JSON member).
    DuplicateAttribute,
    /// The body is not JSON although its content type says it is.
    InvalidJson,
    /// Valid JSON of the wrong shape (a structured event that is not an
    /// object, a batch that is not an array of objects).
    InvalidEnvelope,
    /// A required attribute is absent or `null`.
    MissingAttribute,
    /// An attribute value is invalid (empty, wrong JSON type, bad
    /// timestamp, URI or media type, disallowed characters).
    InvalidAttribute,
    /// An attribute name is not `[a-z0-9]+`, is reserved or is misplaced.
    InvalidAttributeName,
    /// A spec version other than `1.0`.
    UnsupportedSpecVersion,
    /// An integer outside the i32 range of the CloudEvents Integer type.
    IntegerOutOfRange,
    /// `data_base64` is not valid base64.
    InvalidBase64,
    /// Both `data` and `data_base64` are present.
    DataConflict,
}

/// An error reading or writing an event: what is wrong and where.
///
/// Displayed on one line as `LOCATION: MESSAGE`, for example
/// `header ce-id: missing` or `batch[2].specversion: "0.9" is not supported
/// (only "1.0")`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingError {
    kind: BindingErrorKind,
    location: Option<String>,
    message: String,
}

impl BindingError {
    fn new(
        kind: BindingErrorKind,
        location: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        BindingError {
            kind,
            location: Some(location.into()),
            message: message.into(),
        }
    }

    fn unlocated(kind: BindingErrorKind, message: impl Into<String>) -> Self {
        BindingError {
            kind,
            location: None,
            message: message.into(),
        }
    }

    fn at(mut self, location: impl Into<String>) -> Self {
        self.location = Some(location.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> BindingErrorKind {
        self.kind
    }

    /// Where: `header ce-id`, `body`, `body.time`, `batch[2].id`,
    /// `event.source` (writing), or `None` when the message is not tied to
    /// one place.
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }

    /// The description without the location.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The status a server answers when a request fails with this error:
    /// 413 for [`BindingErrorKind::TooLarge`], 415 for
    /// [`BindingErrorKind::UnsupportedFormat`], 400 otherwise (Knative's
    /// ingress and filter answer 400 for undecodable events). Errors from the
    /// writers are the sender's own fault and map to 500 at the caller.
    pub fn status_code(&self) -> StatusCode {
        match self.kind {
            BindingErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            BindingErrorKind::UnsupportedFormat => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl fmt::Display for BindingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.location {
            Some(location) => write!(f, "{location}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for BindingError {}

type Result<T, E = BindingError> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// Mode detection and content types
// ---------------------------------------------------------------------------

/// The media type of a content type without parameters, trimmed and
/// lower-cased (`Application/JSON; charset=utf-8` → `application/json`).
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

fn is_batch_media_type(essence: &str) -> bool {
    essence == "application/cloudevents-batch"
        || essence.starts_with("application/cloudevents-batch+")
}

fn is_structured_media_type(essence: &str) -> bool {
    essence == "application/cloudevents" || essence.starts_with("application/cloudevents+")
}

/// Whether a content type declares JSON data: its subtype is `json` or ends
/// in `+json` (`application/json`, `text/json; charset=utf-8`,
/// `application/vnd.foo+json`). Case-insensitive; parameters are ignored.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = essence(content_type);
    match essence.split_once('/') {
        Some((_, subtype)) => subtype == "json" || subtype.ends_with("+json"),
        None => false,
    }
}

/// The content mode of a message, from its `Content-Type` alone
/// (case-insensitive, parameters such as `charset` ignored). A missing or
/// unreadable content type means binary mode.
pub fn mode_of(headers: &HeaderMap) -> Mode {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Mode::Binary;
    };
    let Ok(text) = std::str::from_utf8(value.as_bytes()) else {
        return Mode::Binary;
    };
    let essence = essence(text);
    if is_batch_media_type(&essence) {
        Mode::Batch
    } else if is_structured_media_type(&essence) {
        Mode::Structured
    } else {
        Mode::Binary
    }
}

/// The single `Content-Type` of a message, trimmed; errors on repeats and on
/// values that are not visible ASCII.
fn content_type(headers: &HeaderMap) -> Result<Option<String>> {
    let location = "header content-type";
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BindingError::new(
            BindingErrorKind::DuplicateAttribute,
            location,
            "appears more than once",
        ));
    }
    let text = first.to_str().map_err(|_| {
        BindingError::new(
            BindingErrorKind::InvalidHeader,
            location,
            "is not visible ASCII",
        )
    })?;
    Ok(Some(text.trim_matches([' ', '\t']).to_owned()))
}

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// Checks the RFC 2046 shape `type/subtype[; parameters]`: both parts are
/// RFC 7230 tokens, and the whole value is printable ASCII (so that binary
/// mode can put it into `Content-Type`). Parameters are not parsed further.
fn check_media_type(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_graphic() || *c == ' ' || *c == '\t'))
    {
        return Err(format!(
            "{value:?} is not a media type: contains the character U+{:04X}",
            c as u32
        ));
    }
    let media = value.split(';').next().unwrap_or_default().trim();
    let valid = match media.split_once('/') {
        Some((ty, sub)) => {
            !ty.is_empty()
                && !sub.is_empty()
                && ty.chars().all(is_tchar)
                && sub.chars().all(is_tchar)
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{value:?} is not a media type of the form type/subtype"
        ))
    }
}

/// Fails with [`BindingErrorKind::TooLarge`] when the message announces a
/// `Content-Length` above [`Limits::max_body_bytes`], so that a server can
/// answer 413 before reading the body. An absent or unparsable
/// `Content-Length` passes (the HTTP stack validates it).
pub fn check_content_length(headers: &HeaderMap, limits: &Limits) -> Result<()> {
    let announced = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(n) if n > limits.max_body_bytes as u64 => Err(too_large(n, limits)),
        _ => Ok(()),
    }
}

fn too_large(len: u64, limits: &Limits) -> BindingError {
    BindingError::new(
        BindingErrorKind::TooLarge,
        "body",
        format!(
            "{len} bytes exceed the limit of {} bytes",
            limits.max_body_bytes
        ),
    )
}

// ---------------------------------------------------------------------------
// Header value encoding
// ---------------------------------------------------------------------------

/// Characters percent-encoded in `ce-` header values: C0 controls and DEL
/// (from `CONTROLS`), space, `"` and `%`; `utf8_percent_encode` also escapes
/// every non-ASCII byte.
const HEADER_ENCODE_SET: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// Percent-encodes a `ce-` header value: space, `"`, `%` and every character
/// outside U+0021–U+007E become upper-case `%XY` escapes of their UTF-8
/// bytes (`Euro € 😀` → `Euro%20%E2%82%AC%20%F0%9F%98%80`). The result is
/// always a valid [`HeaderValue`].
pub fn percent_encode_header_value(s: &str) -> String {
    utf8_percent_encode(s, HEADER_ENCODE_SET).to_string()
}

/// Decodes a `ce-` header value as the spec says (strictly): optional
/// whitespace around it is dropped, a quoted-string is unquoted (backslash
/// escapes included), then one round of percent-decoding runs. Lower-case
/// hex and needless escapes are accepted; malformed escapes and escapes that
/// decode to invalid UTF-8 are errors.
pub fn percent_decode_header_value(s: &str) -> Result<String> {
    decode_header_text(s, HeaderDecoding::Strict).map_err(|e| e.at("header value"))
}

/// Decodes raw header bytes: they must be UTF-8 (visible ASCII when the
/// sender percent-encodes, raw UTF-8 from SDKs that do not).
fn decode_header_bytes(raw: &[u8], mode: HeaderDecoding) -> Result<String> {
    let text = std::str::from_utf8(raw).map_err(|e| {
        BindingError::unlocated(
            BindingErrorKind::InvalidUtf8,
            format!(
                "value is not valid UTF-8 (invalid byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    decode_header_text(text, mode)
}

fn decode_header_text(s: &str, mode: HeaderDecoding) -> Result<String> {
    let trimmed = s.trim_matches([' ', '\t']);
    let unquoted = match unquote(trimmed) {
        Ok(Some(inner)) => inner,
        Ok(None) => trimmed.to_owned(),
        Err(message) => match mode {
            HeaderDecoding::Strict => {
                return Err(BindingError::unlocated(
                    BindingErrorKind::InvalidHeader,
                    message,
                ));
            }
            HeaderDecoding::Lenient => trimmed.to_owned(),
        },
    };
    percent_decode(&unquoted, mode)
}

/// Undoes an RFC 7230 quoted-string: `Ok(None)` when the value does not start
/// with `"`.
fn unquote(s: &str) -> Result<Option<String>, String> {
    let Some(rest) = s.strip_prefix('"') else {
        return Ok(None);
    };
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, escaped)) => out.push(escaped),
                None => return Err("unterminated quoted-string (ends with a backslash)".into()),
            },
            '"' => {
                if i + 1 == rest.len() {
                    return Ok(Some(out));
                }
                return Err(format!(
                    "unexpected text after the closing quote of a quoted-string: {:?}",
                    &rest[i + 1..]
                ));
            }
            other => out.push(other),
        }
    }
    Err("unterminated quoted-string (no closing quote)".into())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(s: &str, mode: HeaderDecoding) -> Result<String> {
    if !s.contains('%') {
        return Ok(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let hi = bytes.get(i + 1).copied().and_then(hex_value);
        let lo = bytes.get(i + 2).copied().and_then(hex_value);
        match (hi, lo) {
            (Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            _ => match mode {
                HeaderDecoding::Lenient => {
                    out.push(b);
                    i += 1;
                }
                HeaderDecoding::Strict => {
                    // `i` is at an ASCII `%`, so slicing there is safe.
                    let shown: String = s[i..].chars().take(3).collect();
                    let message = if bytes.len() - i < 3 {
                        format!("truncated percent escape {shown:?} at byte {i}")
                    } else {
                        format!("invalid percent escape {shown:?} at byte {i}")
                    };
                    return Err(BindingError::unlocated(
                        BindingErrorKind::InvalidPercentEncoding,
                        message,
                    ));
                }
            },
        }
    }
    match String::from_utf8(out) {
        Ok(decoded) => Ok(decoded),
        Err(e) => match mode {
            HeaderDecoding::Lenient => Ok(s.to_owned()),
            HeaderDecoding::Strict => Err(BindingError::unlocated(
                BindingErrorKind::InvalidUtf8,
                format!(
                    "percent-decoded bytes are not valid UTF-8 (invalid sequence at decoded byte {})",
                    e.utf8_error().valid_up_to()
                ),
            )),
        },
    }
}

// ---------------------------------------------------------------------------
// Names and values
// ---------------------------------------------------------------------------

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("attribute name is empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
    {
        return Err(format!(
            "attribute name {name:?} contains {c:?}: names may only use a-z and 0-9"
        ));
    }
    if name == "data" {
        return Err("attribute name \"data\" is reserved".into());
    }
    Ok(())
}

fn is_noncharacter(c: char) -> bool {
    let cp = c as u32;
    (0xFDD0..=0xFDEF).contains(&cp) || cp & 0xFFFE == 0xFFFE
}

/// Checks the CloudEvents String type: no C0/C1 control characters, no
/// noncharacters (lone surrogates cannot occur in a Rust string).
fn check_string(value: &str) -> Result<(), String> {
    match value
        .chars()
        .find(|&c| c <= '\u{1F}' || ('\u{7F}'..='\u{9F}').contains(&c) || is_noncharacter(c))
    {
        Some(c) => Err(format!(
            "contains the disallowed character U+{:04X}",
            c as u32
        )),
        None => Ok(()),
    }
}

fn check_required(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    check_string(value)
}

fn parse_time(value: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("{value:?} is not an RFC 3339 timestamp ({e})"))
}

fn format_time(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn parse_dataschema(value: &str) -> Result<Url, String> {
    // `Url::parse` would silently drop tabs and newlines: refuse them first.
    check_required(value)?;
    Url::parse(value).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => format!(
            "{value:?} is not an absolute URI (relative references are not supported: \
             cloudevents-sdk stores dataschema as an absolute URL)"
        ),
        other => format!("{value:?} is not a valid URI ({other})"),
    })
}

/// Checks an integer against the CloudEvents Integer range (i32).
fn check_integer(value: i64) -> Result<(), String> {
    if i32::try_from(value).is_ok() {
        Ok(())
    } else {
        Err(format!(
            "{value} is outside the Integer range {}..={}",
            i32::MIN,
            i32::MAX
        ))
    }
}

// ---------------------------------------------------------------------------
// Event assembly shared by the readers
// ---------------------------------------------------------------------------

/// Attribute values gathered from headers or JSON members, not yet checked.
#[derive(Default)]
struct RawFields {
    id: Option<String>,
    source: Option<String>,
    ty: Option<String>,
    subject: Option<String>,
    time: Option<String>,
    dataschema: Option<String>,
    datacontenttype: Option<String>,
    extensions: Vec<(String, ExtensionValue)>,
}

impl RawFields {
    /// The slot of a core attribute other than `specversion`.
    fn core_slot(&mut self, name: &str) -> Option<&mut Option<String>> {
        match name {
            "id" => Some(&mut self.id),
            "source" => Some(&mut self.source),
            "type" => Some(&mut self.ty),
            "subject" => Some(&mut self.subject),
            "time" => Some(&mut self.time),
            "dataschema" => Some(&mut self.dataschema),
            "datacontenttype" => Some(&mut self.datacontenttype),
            _ => None,
        }
    }
}

fn check_specversion(value: &str, location: &str) -> Result<()> {
    if value == SPEC_VERSION {
        Ok(())
    } else {
        Err(BindingError::new(
            BindingErrorKind::UnsupportedSpecVersion,
            location,
            format!("{value:?} is not supported (only \"1.0\")"),
        ))
    }
}

/// Checks the gathered attributes and builds the SDK event. `loc` names the
/// place an attribute came from.
fn assemble(raw: RawFields, data: Option<Data>, loc: &dyn Fn(&str) -> String) -> Result<Event> {
    let invalid = |name: &str, message: String| {
        BindingError::new(BindingErrorKind::InvalidAttribute, loc(name), message)
    };
    let required = |name: &str, value: Option<String>| -> Result<String> {
        let value = value.ok_or_else(|| {
            BindingError::new(BindingErrorKind::MissingAttribute, loc(name), "missing")
        })?;
        check_required(&value).map_err(|m| invalid(name, m))?;
        Ok(value)
    };
    let id = required("id", raw.id)?;
    let source = required("source", raw.source)?;
    let ty = required("type", raw.ty)?;
    if let Some(subject) = &raw.subject {
        check_required(subject).map_err(|m| invalid("subject", m))?;
    }
    let time = match &raw.time {
        Some(t) => Some(parse_time(t).map_err(|m| invalid("time", m))?),
        None => None,
    };
    let dataschema = match &raw.dataschema {
        Some(s) => Some(parse_dataschema(s).map_err(|m| invalid("dataschema", m))?),
        None => None,
    };
    if let Some(ct) = &raw.datacontenttype {
        check_media_type(ct).map_err(|m| invalid("datacontenttype", m))?;
    }

    let mut builder = EventBuilderV10::new().id(id).source(source).ty(ty);
    if let Some(subject) = raw.subject {
        builder = builder.subject(subject);
    }
    if let Some(time) = time {
        builder = builder.time(time);
    }
    for (name, value) in raw.extensions {
        builder = builder.extension(&name, value);
    }
    let mut event = builder.build().map_err(|e| {
        BindingError::unlocated(
            BindingErrorKind::InvalidAttribute,
            format!("cloudevents-sdk rejected the event: {e}"),
        )
    })?;
    event.set_datacontenttype(raw.datacontenttype);
    event.set_dataschema(dataschema);
    if let Some(data) = data {
        event.set_data_unchecked(data);
    }
    Ok(event)
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Reads one or more events from a request's headers and its complete body.
///
/// Returns the content mode and the events: exactly one in binary and
/// structured mode, zero or more in batched mode.
pub fn read_request(
    headers: &HeaderMap,
    body: &[u8],
    limits: &Limits,
) -> Result<(Mode, Vec<Event>)> {
    if body.len() > limits.max_body_bytes {
        return Err(too_large(body.len() as u64, limits));
    }
    let mode = mode_of(headers);
    let events = match mode {
        Mode::Binary => vec![read_binary(headers, body, limits)?],
        Mode::Structured => {
            require_json_format(headers, "application/cloudevents+json")?;
            vec![read_structured(body)?]
        }
        Mode::Batch => {
            if !limits.allow_batch {
                return Err(BindingError::new(
                    BindingErrorKind::BatchNotAllowed,
                    "header content-type",
                    "batched content mode is not accepted here",
                ));
            }
            require_json_format(headers, "application/cloudevents-batch+json")?;
            read_batch(body, limits)?
        }
    };
    Ok((mode, events))
}

/// Reads the event of a response (a reply event).
///
/// A response with neither a CloudEvents content type nor any `ce-` header
/// and an empty body carries no event: `Ok(None)`. A non-empty body without
/// either is [`BindingErrorKind::NotCloudEvent`] (Knative's filter answers
/// 502 for it), and a batch is [`BindingErrorKind::BatchNotAllowed`]. The
/// caller decides which status codes may carry a reply (a 202 never does).
pub fn read_response(headers: &HeaderMap, body: &[u8], limits: &Limits) -> Result<Option<Event>> {
    let mode = mode_of(headers);
    let has_ce_header = headers.keys().any(|k| k.as_str().starts_with("ce-"));
    if mode == Mode::Binary && !has_ce_header && body.is_empty() {
        return Ok(None);
    }
    if mode == Mode::Batch {
        return Err(BindingError::new(
            BindingErrorKind::BatchNotAllowed,
            "header content-type",
            "a reply carries at most one event, not a batch",
        ));
    }
    let (_, mut events) = read_request(headers, body, limits)?;
    Ok(events.pop())
}

fn require_json_format(headers: &HeaderMap, expected: &str) -> Result<()> {
    let ct = content_type(headers)?.unwrap_or_default();
    if essence(&ct) == expected {
        Ok(())
    } else {
        Err(BindingError::new(
            BindingErrorKind::UnsupportedFormat,
            "header content-type",
            format!("event format {ct:?} is not supported (only {expected})"),
        ))
    }
}

fn header_location(attribute: &str) -> String {
    if attribute == "datacontenttype" {
        "header content-type".into()
    } else {
        format!("header ce-{attribute}")
    }
}

fn read_binary(headers: &HeaderMap, body: &[u8], limits: &Limits) -> Result<Event> {
    let ct = content_type(headers)?;
    let has_ce_header = headers.keys().any(|k| k.as_str().starts_with("ce-"));
    let Some(specversion) = headers.get("ce-specversion") else {
        if has_ce_header {
            return Err(BindingError::new(
                BindingErrorKind::MissingAttribute,
                "header ce-specversion",
                "missing",
            ));
        }
        let described = match &ct {
            Some(ct) => format!("content type {ct:?} is not a CloudEvents format"),
            None => "no content type".to_owned(),
        };
        return Err(BindingError::unlocated(
            BindingErrorKind::NotCloudEvent,
            format!("not a CloudEvent: no ce-specversion header and {described}"),
        ));
    };
    let specversion = decode_header_bytes(specversion.as_bytes(), limits.header_decoding)
        .map_err(|e| e.at("header ce-specversion"))?;
    check_specversion(&specversion, "header ce-specversion")?;

    let mut raw = RawFields::default();
    for name in headers.keys() {
        let Some(attribute) = name.as_str().strip_prefix("ce-") else {
            continue;
        };
        let location = format!("header {name}");
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(BindingError::new(
                BindingErrorKind::DuplicateAttribute,
                location,
                "appears more than once",
            ));
        }
        if attribute == "specversion" {
            continue;
        }
        if attribute == "datacontenttype" {
            return Err(BindingError::new(
                BindingErrorKind::InvalidAttributeName,
                location,
                "not allowed in binary mode: datacontenttype travels in content-type",
            ));
        }
        check_name(attribute)
            .map_err(|m| BindingError::new(BindingErrorKind::InvalidAttributeName, &location, m))?;
        let value = headers
            .get(name)
            .map(|v| decode_header_bytes(v.as_bytes(), limits.header_decoding))
            .transpose()
            .map_err(|e| e.at(&location))?
            .unwrap_or_default();
        if let Some(slot) = raw.core_slot(attribute) {
            *slot = Some(value);
        } else {
            check_string(&value)
                .map_err(|m| BindingError::new(BindingErrorKind::InvalidAttribute, &location, m))?;
            raw.extensions
                .push((attribute.to_owned(), ExtensionValue::String(value)));
        }
    }
    let data = if body.is_empty() {
        None
    } else if ct.as_deref().is_some_and(is_json_content_type) {
        let value: Value = serde_json::from_slice(body).map_err(|e| json_error("body", &e))?;
        Some(Data::Json(value))
    } else {
        Some(Data::Binary(body.to_vec()))
    };
    raw.datacontenttype = ct;
    assemble(raw, data, &header_location)
}

fn json_error(location: &str, e: &serde_json::Error) -> BindingError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full);
    BindingError::new(
        BindingErrorKind::InvalidJson,
        location,
        format!(
            "invalid JSON at line {} column {}: {message}",
            e.line(),
            e.column()
        ),
    )
}

fn read_structured(body: &[u8]) -> Result<Event> {
    let raw: RawJson = serde_json::from_slice(body).map_err(|e| json_error("body", &e))?;
    match raw {
        RawJson::Object(object) => event_from_object(object, "body"),
        RawJson::Array(_) => Err(BindingError::new(
            BindingErrorKind::InvalidEnvelope,
            "body",
            "expected a JSON object, found an array (batches use application/cloudevents-batch+json)",
        )),
        RawJson::Other(kind) => Err(BindingError::new(
            BindingErrorKind::InvalidEnvelope,
            "body",
            format!("expected a JSON object, found {kind}"),
        )),
    }
}

fn read_batch(body: &[u8], limits: &Limits) -> Result<Vec<Event>> {
    let raw: RawJson = serde_json::from_slice(body).map_err(|e| json_error("body", &e))?;
    let elements = match raw {
        RawJson::Array(elements) => elements,
        RawJson::Object(_) => {
            return Err(BindingError::new(
                BindingErrorKind::InvalidEnvelope,
                "body",
                "expected a JSON array of events, found an object",
            ));
        }
        RawJson::Other(kind) => {
            return Err(BindingError::new(
                BindingErrorKind::InvalidEnvelope,
                "body",
                format!("expected a JSON array of events, found {kind}"),
            ));
        }
    };
    if elements.len() > limits.max_batch_events {
        return Err(BindingError::new(
            BindingErrorKind::TooManyEvents,
            "body",
            format!(
                "{} events exceed the batch limit of {}",
                elements.len(),
                limits.max_batch_events
            ),
        ));
    }
    elements
        .into_iter()
        .enumerate()
        .map(|(i, element)| {
            let prefix = format!("batch[{i}]");
            match element {
                RawJson::Object(object) => event_from_object(object, &prefix),
                RawJson::Array(_) => Err(BindingError::new(
                    BindingErrorKind::InvalidEnvelope,
                    prefix,
                    "expected a JSON object, found an array",
                )),
                RawJson::Other(kind) => Err(BindingError::new(
                    BindingErrorKind::InvalidEnvelope,
                    prefix,
                    format!("expected a JSON object, found {kind}"),
                )),
            }
        })
        .collect()
}

fn member_location(prefix: &str, name: &str) -> String {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!("{prefix}.{name}")
    } else {
        format!("{prefix}[{name:?}]")
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Converts a JSON extension value: `Ok(None)` for `null` (unset).
fn extension_from_json(value: Value) -> Result<Option<ExtensionValue>, (BindingErrorKind, String)> {
    let invalid = |m: String| (BindingErrorKind::InvalidAttribute, m);
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(ExtensionValue::Boolean(b))),
        Value::String(s) => {
            check_string(&s).map_err(invalid)?;
            Ok(Some(ExtensionValue::String(s)))
        }
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                check_integer(i).map_err(|m| (BindingErrorKind::IntegerOutOfRange, m))?;
                Ok(Some(ExtensionValue::Integer(i)))
            } else if n.is_u64() {
                Err((
                    BindingErrorKind::IntegerOutOfRange,
                    format!(
                        "{n} is outside the Integer range {}..={}",
                        i32::MIN,
                        i32::MAX
                    ),
                ))
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if f.is_finite() && f.fract() == 0.0 && (f < i32::MIN as f64 || f > i32::MAX as f64)
                {
                    Err((
                        BindingErrorKind::IntegerOutOfRange,
                        format!(
                            "{n} is outside the Integer range {}..={}",
                            i32::MIN,
                            i32::MAX
                        ),
                    ))
                } else {
                    Err(invalid(format!(
                        "{n} is not an Integer (written without fraction or exponent)"
                    )))
                }
            }
        }
        other => Err(invalid(format!(
            "extension values must be a string, an integer or a boolean, found {}",
            json_kind(&other)
        ))),
    }
}

fn event_from_object(object: RawObject, prefix: &str) -> Result<Event> {
    if let Some(name) = object.duplicate {
        return Err(BindingError::new(
            BindingErrorKind::DuplicateAttribute,
            member_location(prefix, &name),
            "member appears more than once",
        ));
    }
    let loc = |name: &str| member_location(prefix, name);

    // specversion first: it decides which attributes exist.
    let specversion = object
        .members
        .iter()
        .find(|(name, _)| name == "specversion")
        .map(|(_, value)| value);
    match specversion {
        None | Some(Value::Null) => {
            return Err(BindingError::new(
                BindingErrorKind::MissingAttribute,
                loc("specversion"),
                "missing",
            ));
        }
        Some(Value::String(s)) => check_specversion(s, &loc("specversion"))?,
        Some(other) => {
            return Err(BindingError::new(
                BindingErrorKind::InvalidAttribute,
                loc("specversion"),
                format!("expected a string, found {}", json_kind(other)),
            ));
        }
    }

    let mut raw = RawFields::default();
    let mut data: Option<Value> = None;
    let mut data_base64: Option<Value> = None;
    for (name, value) in object.members {
        match name.as_str() {
            "specversion" => continue,
            "data" => {
                data = Some(value);
                continue;
            }
            "data_base64" => {
                if !value.is_null() {
                    data_base64 = Some(value);
                }
                continue;
            }
            _ => {}
        }
        let location = loc(&name);
        if let Some(slot) = raw.core_slot(&name) {
            match value {
                Value::Null => {}
                Value::String(s) => *slot = Some(s),
                other => {
                    return Err(BindingError::new(
                        BindingErrorKind::InvalidAttribute,
                        location,
                        format!("expected a string, found {}", json_kind(&other)),
                    ));
                }
            }
            continue;
        }
        check_name(&name)
            .map_err(|m| BindingError::new(BindingErrorKind::InvalidAttributeName, &location, m))?;
        match extension_from_json(value) {
            Ok(Some(ext)) => raw.extensions.push((name, ext)),
            Ok(None) => {}
            Err((kind, message)) => return Err(BindingError::new(kind, location, message)),
        }
    }

    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(BindingError::new(
                BindingErrorKind::DataConflict,
                prefix,
                "data and data_base64 are both present",
            ));
        }
        (None, None) => None,
        (None, Some(encoded)) => {
            let location = loc("data_base64");
            let Value::String(encoded) = encoded else {
                return Err(BindingError::new(
                    BindingErrorKind::InvalidBase64,
                    location,
                    format!("expected a base64 string, found {}", json_kind(&encoded)),
                ));
            };
            let bytes = BASE64_LENIENT_PADDING
                .decode(encoded.as_bytes())
                .map_err(|e| {
                    BindingError::new(
                        BindingErrorKind::InvalidBase64,
                        location,
                        format!("invalid base64: {e}"),
                    )
                })?;
            Some(Data::Binary(bytes))
        }
        (Some(value), None) => {
            let json = raw
                .datacontenttype
                .as_deref()
                .is_none_or(is_json_content_type);
            Some(match value {
                Value::String(s) if !json => Data::String(s),
                other => Data::Json(other),
            })
        }
    };
    assemble(raw, data, &loc)
}

/// Standard alphabet; padding optional on input.
const BASE64_LENIENT_PADDING: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A JSON document as far as the readers need it: objects keep their members
/// in order (with the first repeated name noted), arrays their elements,
/// anything else only its kind.
enum RawJson {
    Object(RawObject),
    Array(Vec<RawJson>),
    Other(&'static str),
}

struct RawObject {
    members: Vec<(String, Value)>,
    duplicate: Option<String>,
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawJsonVisitor)
    }
}

struct RawJsonVisitor;

impl<'de> Visitor<'de> for RawJsonVisitor {
    type Value = RawJson;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawJson, E> {
        Ok(RawJson::Other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawJson, E> {
        Ok(RawJson::Other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawJson, E> {
        Ok(RawJson::Other("a number"))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawJson, E> {
        Ok(RawJson::Other("a number"))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<RawJson, E> {
        Ok(RawJson::Other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<RawJson, E> {
        Ok(RawJson::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawJson, A::Error> {
        let mut elements = Vec::new();
        while let Some(element) = seq.next_element::<RawJson>()? {
            elements.push(element);
        }
        Ok(RawJson::Array(elements))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawJson, A::Error> {
        let mut members = Vec::new();
        let mut seen = HashSet::new();
        let mut duplicate = None;
        while let Some(name) = map.next_key::<String>()? {
            let value = map.next_value::<Value>()?;
            if !seen.insert(name.clone()) && duplicate.is_none() {
                duplicate = Some(name.clone());
            }
            members.push((name, value));
        }
        Ok(RawJson::Object(RawObject { members, duplicate }))
    }
}

// ---------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------

/// Checks that an SDK event can be written as a valid CloudEvent; `prefix`
/// names it in errors (`event`, `batch[3]`).
fn check_writable(event: &Event, prefix: &str) -> Result<()> {
    let loc = |name: &str| member_location(prefix, name);
    let invalid = |name: &str, message: String| {
        BindingError::new(BindingErrorKind::InvalidAttribute, loc(name), message)
    };
    if event.specversion() != SpecVersion::V10 {
        return Err(BindingError::new(
            BindingErrorKind::UnsupportedSpecVersion,
            loc("specversion"),
            format!(
                "{:?} is not supported (only \"1.0\")",
                event.specversion().as_str()
            ),
        ));
    }
    check_required(event.id()).map_err(|m| invalid("id", m))?;
    check_required(event.source()).map_err(|m| invalid("source", m))?;
    check_required(event.ty()).map_err(|m| invalid("type", m))?;
    if let Some(subject) = event.subject() {
        check_required(subject).map_err(|m| invalid("subject", m))?;
    }
    if let Some(ct) = event.datacontenttype() {
        check_media_type(ct).map_err(|m| invalid("datacontenttype", m))?;
    }
    for (name, value) in event.iter_extensions() {
        let location = loc(name);
        check_name(name)
            .map_err(|m| BindingError::new(BindingErrorKind::InvalidAttributeName, &location, m))?;
        if CORE_ATTRIBUTES.contains(&name) {
            return Err(BindingError::new(
                BindingErrorKind::InvalidAttributeName,
                location,
                format!("extension name {name:?} collides with a core attribute"),
            ));
        }
        match value {
            ExtensionValue::String(s) => check_string(s)
                .map_err(|m| BindingError::new(BindingErrorKind::InvalidAttribute, &location, m))?,
            ExtensionValue::Integer(i) => check_integer(*i).map_err(|m| {
                BindingError::new(BindingErrorKind::IntegerOutOfRange, &location, m)
            })?,
            ExtensionValue::Boolean(_) => {}
        }
    }
    Ok(())
}

fn extension_string(value: &ExtensionValue) -> String {
    match value {
        ExtensionValue::String(s) => s.clone(),
        ExtensionValue::Boolean(b) => b.to_string(),
        ExtensionValue::Integer(i) => i.to_string(),
    }
}

fn insert_header(headers: &mut HeaderMap, attribute: &str, value: &str) -> Result<()> {
    let location = format!("event.{attribute}");
    let name = HeaderName::from_bytes(format!("ce-{attribute}").as_bytes()).map_err(|e| {
        BindingError::new(
            BindingErrorKind::InvalidAttributeName,
            &location,
            e.to_string(),
        )
    })?;
    let value = HeaderValue::from_str(&percent_encode_header_value(value)).map_err(|e| {
        BindingError::new(BindingErrorKind::InvalidHeader, &location, e.to_string())
    })?;
    headers.insert(name, value);
    Ok(())
}

fn json_bytes(value: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| {
        BindingError::new(
            BindingErrorKind::InvalidJson,
            "event.data",
            format!("cannot serialise data: {e}"),
        )
    })
}

/// The `Content-Type` and body of an event in binary mode.
fn binary_payload(event: &Event) -> Result<(Option<String>, Vec<u8>)> {
    let ct = event.datacontenttype().map(str::to_owned);
    let json = ct.as_deref().is_none_or(is_json_content_type);
    let json_ct = || ct.clone().or_else(|| Some("application/json".to_owned()));
    Ok(match event.data() {
        None => (ct, Vec::new()),
        Some(Data::Binary(bytes)) => (ct, bytes.clone()),
        Some(Data::Json(Value::String(s))) if !json => (ct, s.as_bytes().to_vec()),
        Some(Data::Json(value)) => (json_ct(), json_bytes(value)?),
        Some(Data::String(s)) if !json => (ct, s.as_bytes().to_vec()),
        Some(Data::String(s)) => (json_ct(), json_bytes(&Value::String(s.clone()))?),
    })
}

/// Writes an event as a binary-mode HTTP message: `ce-` headers
/// (percent-encoded), `Content-Type` from `datacontenttype`, data as the
/// body. JSON and string data of an event without `datacontenttype` get
/// `Content-Type: application/json`.
pub fn write_binary(event: &Event) -> Result<(HeaderMap, Bytes)> {
    check_writable(event, "event")?;
    let mut headers = HeaderMap::new();
    insert_header(&mut headers, "specversion", SPEC_VERSION)?;
    insert_header(&mut headers, "id", event.id())?;
    insert_header(&mut headers, "source", event.source())?;
    insert_header(&mut headers, "type", event.ty())?;
    if let Some(subject) = event.subject() {
        insert_header(&mut headers, "subject", subject)?;
    }
    if let Some(time) = event.time() {
        insert_header(&mut headers, "time", &format_time(time))?;
    }
    if let Some(schema) = event.dataschema() {
        insert_header(&mut headers, "dataschema", schema.as_str())?;
    }
    let mut extensions: Vec<_> = event.iter_extensions().collect();
    extensions.sort_by_key(|(name, _)| *name);
    for (name, value) in extensions {
        insert_header(&mut headers, name, &extension_string(value))?;
    }
    let (ct, body) = binary_payload(event)?;
    if let Some(ct) = ct {
        let value = HeaderValue::from_str(&ct).map_err(|e| {
            BindingError::new(
                BindingErrorKind::InvalidAttribute,
                "event.datacontenttype",
                e.to_string(),
            )
        })?;
        headers.insert(CONTENT_TYPE, value);
    }
    Ok((headers, Bytes::from(body)))
}

/// Serialises an event in the JSON format, members in a fixed order: the
/// required attributes, the optional ones, extensions by name, then data.
struct JsonEvent<'a>(&'a Event);

impl Serialize for JsonEvent<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let event = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", SPEC_VERSION)?;
        map.serialize_entry("id", event.id())?;
        map.serialize_entry("source", event.source())?;
        map.serialize_entry("type", event.ty())?;
        if let Some(ct) = event.datacontenttype() {
            map.serialize_entry("datacontenttype", ct)?;
        }
        if let Some(schema) = event.dataschema() {
            map.serialize_entry("dataschema", schema.as_str())?;
        }
        if let Some(subject) = event.subject() {
            map.serialize_entry("subject", subject)?;
        }
        if let Some(time) = event.time() {
            map.serialize_entry("time", &format_time(time))?;
        }
        let mut extensions: Vec<_> = event.iter_extensions().collect();
        extensions.sort_by_key(|(name, _)| *name);
        for (name, value) in extensions {
            match value {
                ExtensionValue::String(s) => map.serialize_entry(name, s)?,
                ExtensionValue::Boolean(b) => map.serialize_entry(name, b)?,
                ExtensionValue::Integer(i) => map.serialize_entry(name, i)?,
            }
        }
        match event.data() {
            None => {}
            Some(Data::Binary(bytes)) => {
                map.serialize_entry("data_base64", &STANDARD.encode(bytes))?;
            }
            Some(Data::Json(value)) => map.serialize_entry("data", value)?,
            Some(Data::String(s)) => map.serialize_entry("data", s)?,
        }
        map.end()
    }
}

struct JsonBatch<'a>(&'a [Event]);

impl Serialize for JsonBatch<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for event in self.0 {
            seq.serialize_element(&JsonEvent(event))?;
        }
        seq.end()
    }
}

fn json_message(content_type: &'static str, body: Vec<u8>) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    (headers, Bytes::from(body))
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| {
        BindingError::unlocated(
            BindingErrorKind::InvalidJson,
            format!("cannot serialise the event: {e}"),
        )
    })
}

/// Writes an event as a structured-mode HTTP message
/// (`application/cloudevents+json; charset=utf-8`).
pub fn write_structured(event: &Event) -> Result<(HeaderMap, Bytes)> {
    check_writable(event, "event")?;
    let body = to_json(&JsonEvent(event))?;
    Ok(json_message(STRUCTURED_JSON_CONTENT_TYPE, body))
}

/// Writes events as a batched-mode HTTP message
/// (`application/cloudevents-batch+json; charset=utf-8`); an empty slice
/// gives `[]`.
pub fn write_batch(events: &[Event]) -> Result<(HeaderMap, Bytes)> {
    for (i, event) in events.iter().enumerate() {
        check_writable(event, &format!("batch[{i}]"))?;
    }
    let body = to_json(&JsonBatch(events))?;
    Ok(json_message(BATCH_JSON_CONTENT_TYPE, body))
}

/// Writes one event in the given mode; [`Mode::Batch`] gives a batch of one.
pub fn write_event(event: &Event, mode: Mode) -> Result<(HeaderMap, Bytes)> {
    match mode {
        Mode::Binary => write_binary(event),
        Mode::Structured => write_structured(event),
        Mode::Batch => write_batch(std::slice::from_ref(event)),
    }
}

#[cfg(test)]
#[path = "binding_tests.rs"]
mod tests;
