//! Tests of the CloudEvents HTTP binding (`specs/EVENTING.md §7`).

use super::*;
use cloudevents::EventBuilderV03;
use proptest::prelude::*;
use serde_json::json;
use std::collections::BTreeMap;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
            HeaderValue::from_str(value).expect("test header value"),
        );
    }
    map
}

fn binary_headers(extra: &[(&str, &str)]) -> HeaderMap {
    let mut pairs = vec![
        ("ce-specversion", "1.0"),
        ("ce-id", "1234"),
        ("ce-source", "/mycontext"),
        ("ce-type", "com.example.someevent"),
    ];
    pairs.extend_from_slice(extra);
    headers(&pairs)
}

fn structured() -> HeaderMap {
    headers(&[("content-type", "application/cloudevents+json")])
}

fn batch() -> HeaderMap {
    headers(&[("content-type", "application/cloudevents-batch+json")])
}

fn read(headers: &HeaderMap, body: &[u8]) -> Result<(Mode, Vec<Event>)> {
    read_request(headers, body, &Limits::default())
}

fn read_one(headers: &HeaderMap, body: &[u8]) -> Event {
    let (_, mut events) = read(headers, body).expect("valid event");
    assert_eq!(events.len(), 1);
    events.pop().expect("one event")
}

fn read_err(headers: &HeaderMap, body: &[u8]) -> BindingError {
    match read(headers, body) {
        Ok(events) => panic!("expected an error, got {events:?}"),
        Err(e) => e,
    }
}

/// Asserts the kind and that the one-line message contains every fragment.
#[track_caller]
fn assert_error(e: &BindingError, kind: BindingErrorKind, fragments: &[&str]) {
    let text = e.to_string();
    assert_eq!(e.kind(), kind, "wrong kind for `{text}`");
    assert!(!text.contains('\n'), "message spans lines: {text:?}");
    for fragment in fragments {
        assert!(
            text.contains(fragment),
            "`{text}` does not contain `{fragment}`"
        );
    }
}

fn structured_body(extra: serde_json::Value) -> Vec<u8> {
    let mut base = json!({
        "specversion": "1.0",
        "id": "A234-1234-1234",
        "source": "/mycontext",
        "type": "com.example.someevent",
    });
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            base.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&base).expect("json")
}

fn structured_without(member: &str) -> Vec<u8> {
    let mut base = json!({
        "specversion": "1.0",
        "id": "A234-1234-1234",
        "source": "/mycontext",
        "type": "com.example.someevent",
    });
    if let Some(map) = base.as_object_mut() {
        map.remove(member);
    }
    serde_json::to_vec(&base).expect("json")
}

fn simple_event() -> Event {
    EventBuilderV10::new()
        .id("1")
        .source("/s")
        .ty("t")
        .build()
        .expect("event")
}

// ---------------------------------------------------------------------------
// Malformed input: each case names a kind and the problem
// ---------------------------------------------------------------------------

#[test]
fn bad_json_in_structured_body() {
    let e = read_err(&structured(), br#"{"specversion": "1.0", "id": }"#);
    assert_error(
        &e,
        BindingErrorKind::InvalidJson,
        &["body: invalid JSON at line 1 column"],
    );
}

#[test]
fn trailing_garbage_after_structured_json() {
    let mut body = structured_body(json!({}));
    body.extend_from_slice(b" x");
    let e = read_err(&structured(), &body);
    assert_error(
        &e,
        BindingErrorKind::InvalidJson,
        &["body: invalid JSON", "trailing"],
    );
}

#[test]
fn structured_body_not_utf8() {
    let e = read_err(&structured(), b"{\"specversion\": \"1.\xff\"}");
    assert_error(&e, BindingErrorKind::InvalidJson, &["body: invalid JSON"]);
}

#[test]
fn missing_id_structured() {
    let e = read_err(&structured(), &structured_without("id"));
    assert_error(
        &e,
        BindingErrorKind::MissingAttribute,
        &["body.id: missing"],
    );
}

#[test]
fn null_id_is_missing() {
    let e = read_err(&structured(), &structured_body(json!({"id": null})));
    assert_error(
        &e,
        BindingErrorKind::MissingAttribute,
        &["body.id: missing"],
    );
}

#[test]
fn missing_id_binary() {
    let h = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ]);
    let e = read_err(&h, b"");
    assert_error(
        &e,
        BindingErrorKind::MissingAttribute,
        &["header ce-id: missing"],
    );
}

#[test]
fn empty_source_structured() {
    let e = read_err(&structured(), &structured_body(json!({"source": ""})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["body.source: must not be empty"],
    );
}

#[test]
fn empty_id_header() {
    let e = read_err(&binary_headers(&[]).tap_insert("ce-id", ""), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["header ce-id: must not be empty"],
    );
}

#[test]
fn empty_subject() {
    let e = read_err(&structured(), &structured_body(json!({"subject": ""})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["body.subject: must not be empty"],
    );
}

#[test]
fn id_of_wrong_json_type() {
    let e = read_err(&structured(), &structured_body(json!({"id": 42})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["body.id: expected a string, found a number"],
    );
}

#[test]
fn control_character_in_type() {
    let e = read_err(&structured(), &structured_body(json!({"type": "a\nb"})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["body.type", "U+000A"],
    );
}

#[test]
fn control_character_in_header_after_decoding() {
    let e = read_err(&binary_headers(&[("ce-subject", "a%0Ab")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["header ce-subject", "U+000A"],
    );
}

#[test]
fn bad_specversion_structured() {
    let e = read_err(
        &structured(),
        &structured_body(json!({"specversion": "0.9"})),
    );
    assert_error(
        &e,
        BindingErrorKind::UnsupportedSpecVersion,
        &[r#"body.specversion: "0.9" is not supported"#],
    );
}

#[test]
fn specversion_03_binary_is_not_supported() {
    let e = read_err(
        &binary_headers(&[]).tap_insert("ce-specversion", "0.3"),
        b"",
    );
    assert_error(
        &e,
        BindingErrorKind::UnsupportedSpecVersion,
        &[r#"header ce-specversion: "0.3" is not supported"#],
    );
}

#[test]
fn specversion_as_number() {
    let e = read_err(&structured(), &structured_body(json!({"specversion": 1.0})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["body.specversion: expected a string"],
    );
}

#[test]
fn missing_specversion_structured() {
    let e = read_err(&structured(), &structured_without("specversion"));
    assert_error(
        &e,
        BindingErrorKind::MissingAttribute,
        &["body.specversion: missing"],
    );
}

#[test]
fn ce_headers_without_specversion() {
    let h = headers(&[("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t")]);
    let e = read_err(&h, b"");
    assert_error(
        &e,
        BindingErrorKind::MissingAttribute,
        &["header ce-specversion: missing"],
    );
}

#[test]
fn uppercase_extension_name_structured() {
    let e = read_err(&structured(), &structured_body(json!({"myExt": "x"})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttributeName,
        &["body.myExt", "\"myExt\" contains 'E'"],
    );
}

#[test]
fn dash_in_extension_name_structured() {
    let e = read_err(&structured(), &structured_body(json!({"my-ext": "x"})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttributeName,
        &[r#"body["my-ext"]"#, "contains '-'"],
    );
}

#[test]
fn underscore_in_extension_header() {
    let e = read_err(&binary_headers(&[("ce-my_ext", "x")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttributeName,
        &["header ce-my_ext", "'_'"],
    );
}

#[test]
fn dash_in_extension_header() {
    let e = read_err(&binary_headers(&[("ce-my-ext", "x")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttributeName,
        &["header ce-my-ext", "'-'"],
    );
}

#[test]
fn empty_extension_header_name() {
    let e = read_err(&binary_headers(&[("ce-", "x")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttributeName,
        &["header ce-: attribute name is empty"],
    );
}

#[test]
fn reserved_data_name_in_header() {
    let e = read_err(&binary_headers(&[("ce-data", "x")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttributeName,
        &["header ce-data", "reserved"],
    );
}

#[test]
fn ce_datacontenttype_header_in_binary_mode() {
    let e = read_err(
        &binary_headers(&[("ce-datacontenttype", "application/json")]),
        b"",
    );
    assert_error(
        &e,
        BindingErrorKind::InvalidAttributeName,
        &["header ce-datacontenttype", "not allowed in binary mode"],
    );
}

#[test]
fn long_extension_names_are_accepted() {
    // The 20-character cap is a SHOULD: a 25-character name passes.
    let name = "abcdefghijklmnopqrstuvwxy";
    assert!(name.len() > RECOMMENDED_MAX_NAME_LEN);
    let header = format!("ce-{name}");
    let event = read_one(&binary_headers(&[(header.as_str(), "v")]), b"");
    assert_eq!(
        event.extension(name),
        Some(&ExtensionValue::String("v".into()))
    );
}

#[test]
fn oversize_body() {
    let limits = Limits {
        max_body_bytes: 16,
        ..Limits::default()
    };
    let e = read_request(&structured(), &[b' '; 17], &limits).expect_err("too large");
    assert_error(
        &e,
        BindingErrorKind::TooLarge,
        &["body: 17 bytes exceed the limit of 16 bytes"],
    );
    assert_eq!(e.status_code(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn oversize_content_length() {
    let limits = Limits {
        max_body_bytes: 100,
        ..Limits::default()
    };
    let e = check_content_length(&headers(&[("content-length", "101")]), &limits)
        .expect_err("too large");
    assert_error(&e, BindingErrorKind::TooLarge, &["101 bytes exceed"]);
    assert!(check_content_length(&headers(&[("content-length", "100")]), &limits).is_ok());
    assert!(check_content_length(&HeaderMap::new(), &limits).is_ok());
}

#[test]
fn wrong_content_type_without_ce_headers() {
    let e = read_err(&headers(&[("content-type", "text/plain")]), b"hello");
    assert_error(
        &e,
        BindingErrorKind::NotCloudEvent,
        &[r#"not a CloudEvent: no ce-specversion header and content type "text/plain""#],
    );
    assert_eq!(e.location(), None);
}

#[test]
fn no_content_type_and_no_ce_headers() {
    let e = read_err(&HeaderMap::new(), b"");
    assert_error(
        &e,
        BindingErrorKind::NotCloudEvent,
        &["not a CloudEvent: no ce-specversion header and no content type"],
    );
}

#[test]
fn unsupported_structured_format() {
    let h = headers(&[("content-type", "application/cloudevents+avro")]);
    let e = read_err(&h, b"\x00\x01");
    assert_error(
        &e,
        BindingErrorKind::UnsupportedFormat,
        &[
            "header content-type",
            "application/cloudevents+avro",
            "not supported",
        ],
    );
    assert_eq!(e.status_code(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[test]
fn invalid_percent_escape() {
    let e = read_err(&binary_headers(&[("ce-subject", "a%zzb")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidPercentEncoding,
        &[r#"header ce-subject: invalid percent escape "%zz" at byte 1"#],
    );
}

#[test]
fn truncated_percent_escape() {
    let e = read_err(&binary_headers(&[("ce-subject", "abc%4")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidPercentEncoding,
        &[r#"header ce-subject: truncated percent escape "%4""#],
    );
}

#[test]
fn lone_percent_at_end() {
    let e = read_err(&binary_headers(&[("ce-myext", "100%")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidPercentEncoding,
        &["header ce-myext", "truncated"],
    );
}

#[test]
fn overlong_utf8_after_decoding() {
    let e = read_err(&binary_headers(&[("ce-subject", "%C0%A0")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidUtf8,
        &["header ce-subject: percent-decoded bytes are not valid UTF-8"],
    );
}

#[test]
fn lone_continuation_byte_after_decoding() {
    let e = read_err(&binary_headers(&[]).tap_insert("ce-id", "ab%80"), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidUtf8,
        &["header ce-id", "decoded byte 2"],
    );
}

#[test]
fn raw_header_bytes_not_utf8() {
    let mut h = binary_headers(&[]);
    h.insert(
        "ce-subject",
        HeaderValue::from_bytes(b"caf\xe9").expect("obs-text is a valid header value"),
    );
    let e = read_err(&h, b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidUtf8,
        &["header ce-subject: value is not valid UTF-8"],
    );
}

#[test]
fn unterminated_quoted_string() {
    let e = read_err(&binary_headers(&[("ce-subject", "\"abc")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidHeader,
        &["header ce-subject", "unterminated quoted-string"],
    );
}

#[test]
fn text_after_quoted_string() {
    let e = read_err(&binary_headers(&[("ce-subject", "\"abc\"def")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidHeader,
        &["header ce-subject", "after the closing quote"],
    );
}

#[test]
fn duplicate_ce_header() {
    let h = binary_headers(&[("ce-id", "5678")]);
    let e = read_err(&h, b"");
    assert_error(
        &e,
        BindingErrorKind::DuplicateAttribute,
        &["header ce-id: appears more than once"],
    );
}

#[test]
fn duplicate_content_type_header() {
    let h = binary_headers(&[
        ("content-type", "text/plain"),
        ("content-type", "text/html"),
    ]);
    let e = read_err(&h, b"x");
    assert_error(
        &e,
        BindingErrorKind::DuplicateAttribute,
        &["header content-type"],
    );
}

#[test]
fn duplicate_json_member() {
    let body = br#"{"specversion":"1.0","id":"1","id":"2","source":"/s","type":"t"}"#;
    let e = read_err(&structured(), body);
    assert_error(
        &e,
        BindingErrorKind::DuplicateAttribute,
        &["body.id: member appears more than once"],
    );
}

#[test]
fn structured_body_is_an_array() {
    let e = read_err(&structured(), b"[]");
    assert_error(
        &e,
        BindingErrorKind::InvalidEnvelope,
        &["body: expected a JSON object, found an array"],
    );
}

#[test]
fn structured_body_is_a_string() {
    let e = read_err(&structured(), b"\"event\"");
    assert_error(
        &e,
        BindingErrorKind::InvalidEnvelope,
        &["body: expected a JSON object, found a string"],
    );
}

#[test]
fn batch_body_is_an_object() {
    let e = read_err(&batch(), &structured_body(json!({})));
    assert_error(
        &e,
        BindingErrorKind::InvalidEnvelope,
        &["body: expected a JSON array"],
    );
}

#[test]
fn batch_with_one_bad_event() {
    let body = format!(
        "[{},{},{}]",
        String::from_utf8(structured_body(json!({"id": "a"}))).expect("utf8"),
        String::from_utf8(structured_body(json!({"id": "b"}))).expect("utf8"),
        String::from_utf8(structured_body(json!({"specversion": "0.9"}))).expect("utf8"),
    );
    let e = read_err(&batch(), body.as_bytes());
    assert_error(
        &e,
        BindingErrorKind::UnsupportedSpecVersion,
        &[r#"batch[2].specversion: "0.9" is not supported"#],
    );
}

#[test]
fn batch_with_missing_id_in_second_event() {
    let body = format!(
        "[{},{}]",
        String::from_utf8(structured_body(json!({}))).expect("utf8"),
        String::from_utf8(structured_without("id")).expect("utf8"),
    );
    let e = read_err(&batch(), body.as_bytes());
    assert_error(
        &e,
        BindingErrorKind::MissingAttribute,
        &["batch[1].id: missing"],
    );
}

#[test]
fn batch_element_not_an_object() {
    let e = read_err(&batch(), b"[42]");
    assert_error(
        &e,
        BindingErrorKind::InvalidEnvelope,
        &["batch[0]: expected a JSON object, found a number"],
    );
}

#[test]
fn batch_not_allowed() {
    let limits = Limits {
        allow_batch: false,
        ..Limits::default()
    };
    let e = read_request(&batch(), b"[]", &limits).expect_err("no batches");
    assert_error(
        &e,
        BindingErrorKind::BatchNotAllowed,
        &["header content-type", "batched"],
    );
}

#[test]
fn batch_too_many_events() {
    let limits = Limits {
        max_batch_events: 2,
        ..Limits::default()
    };
    let one = String::from_utf8(structured_body(json!({}))).expect("utf8");
    let body = format!("[{one},{one},{one}]");
    let e = read_request(&batch(), body.as_bytes(), &limits).expect_err("too many");
    assert_error(
        &e,
        BindingErrorKind::TooManyEvents,
        &["body: 3 events exceed the batch limit of 2"],
    );
}

#[test]
fn data_and_data_base64_both_present() {
    let e = read_err(
        &structured(),
        &structured_body(json!({"data": {"a": 1}, "data_base64": "AAE="})),
    );
    assert_error(
        &e,
        BindingErrorKind::DataConflict,
        &["body: data and data_base64 are both present"],
    );
}

#[test]
fn invalid_base64() {
    let e = read_err(
        &structured(),
        &structured_body(json!({"data_base64": "not base64!"})),
    );
    assert_error(
        &e,
        BindingErrorKind::InvalidBase64,
        &["body.data_base64: invalid base64"],
    );
}

#[test]
fn data_base64_of_wrong_type() {
    let e = read_err(&structured(), &structured_body(json!({"data_base64": 12})));
    assert_error(
        &e,
        BindingErrorKind::InvalidBase64,
        &["body.data_base64: expected a base64 string"],
    );
}

#[test]
fn invalid_time_structured() {
    let e = read_err(
        &structured(),
        &structured_body(json!({"time": "yesterday"})),
    );
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &[r#"body.time: "yesterday" is not an RFC 3339 timestamp"#],
    );
}

#[test]
fn time_without_offset() {
    let e = read_err(&binary_headers(&[("ce-time", "2018-04-05T17:31:00")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["header ce-time", "RFC 3339"],
    );
}

#[test]
fn extension_with_object_value() {
    let e = read_err(&structured(), &structured_body(json!({"myext": {"a": 1}})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &[
            "body.myext: extension values must be a string, an integer or a boolean, found an object",
        ],
    );
}

#[test]
fn extension_with_array_value() {
    let e = read_err(&structured(), &structured_body(json!({"myext": [1]})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["body.myext", "found an array"],
    );
}

#[test]
fn integer_extension_above_i32() {
    let e = read_err(
        &structured(),
        &structured_body(json!({"myext": 2_147_483_648_i64})),
    );
    assert_error(
        &e,
        BindingErrorKind::IntegerOutOfRange,
        &["body.myext: 2147483648 is outside the Integer range -2147483648..=2147483647"],
    );
}

#[test]
fn integer_extension_below_i32() {
    let e = read_err(
        &structured(),
        &structured_body(json!({"myext": -2_147_483_649_i64})),
    );
    assert_error(
        &e,
        BindingErrorKind::IntegerOutOfRange,
        &["body.myext", "-2147483649"],
    );
}

#[test]
fn integer_extension_beyond_u64() {
    let body =
        br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","myext":18446744073709551616}"#;
    let e = read_err(&structured(), body);
    assert_error(&e, BindingErrorKind::IntegerOutOfRange, &["body.myext"]);
}

#[test]
fn fractional_extension_number() {
    let body = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","myext":1.5}"#;
    let e = read_err(&structured(), body);
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["body.myext: 1.5 is not an Integer"],
    );
}

#[test]
fn integer_written_with_exponent_or_fraction() {
    for literal in ["3.0", "1e2"] {
        let body = format!(
            r#"{{"specversion":"1.0","id":"1","source":"/s","type":"t","myext":{literal}}}"#
        );
        let e = read_err(&structured(), body.as_bytes());
        assert_error(
            &e,
            BindingErrorKind::InvalidAttribute,
            &["body.myext", "is not an Integer"],
        );
    }
}

#[test]
fn dataschema_fragment_only() {
    let e = read_err(&structured(), &structured_body(json!({"dataschema": "#"})));
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &[r##"body.dataschema: "#" is not an absolute URI"##],
    );
}

#[test]
fn dataschema_relative() {
    let e = read_err(&binary_headers(&[("ce-dataschema", "/schemas/v1")]), b"");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["header ce-dataschema", "not an absolute URI"],
    );
}

#[test]
fn dataschema_with_control_character() {
    let e = read_err(
        &structured(),
        &structured_body(json!({"dataschema": "https://exa\nmple.com/"})),
    );
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["body.dataschema", "U+000A"],
    );
}

#[test]
fn invalid_datacontenttype_structured() {
    let e = read_err(
        &structured(),
        &structured_body(json!({"datacontenttype": "json"})),
    );
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["body.datacontenttype", "not a media type"],
    );
}

#[test]
fn invalid_content_type_header_in_binary_mode() {
    let e = read_err(&binary_headers(&[("content-type", "text")]), b"x");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["header content-type", "not a media type"],
    );
}

#[test]
fn binary_json_body_that_is_not_json() {
    let e = read_err(
        &binary_headers(&[("content-type", "application/json")]),
        b"{oops",
    );
    assert_error(
        &e,
        BindingErrorKind::InvalidJson,
        &["body: invalid JSON at line 1 column 2"],
    );
}

#[test]
fn response_with_non_ce_body() {
    let e = read_response(
        &headers(&[("content-type", "text/html")]),
        b"<html/>",
        &Limits::default(),
    )
    .expect_err("not an event");
    assert_error(&e, BindingErrorKind::NotCloudEvent, &["not a CloudEvent"]);
}

#[test]
fn response_with_batch() {
    let e = read_response(&batch(), b"[]", &Limits::default()).expect_err("no batch replies");
    assert_error(
        &e,
        BindingErrorKind::BatchNotAllowed,
        &["a reply carries at most one event"],
    );
}

#[test]
fn percent_decode_function_errors() {
    let e = percent_decode_header_value("%G1").expect_err("bad escape");
    assert_error(
        &e,
        BindingErrorKind::InvalidPercentEncoding,
        &["header value: invalid percent escape"],
    );
    let e = percent_decode_header_value("%E2%82").expect_err("cut sequence");
    assert_error(&e, BindingErrorKind::InvalidUtf8, &["header value"]);
}

// ---------------------------------------------------------------------------
// Writing invalid SDK events
// ---------------------------------------------------------------------------

#[test]
fn writing_a_v03_event_fails() {
    let event = EventBuilderV03::new()
        .id("1")
        .source("/s")
        .ty("t")
        .build()
        .expect("event");
    let e = write_binary(&event).expect_err("0.3");
    assert_error(
        &e,
        BindingErrorKind::UnsupportedSpecVersion,
        &["event.specversion", "\"0.3\""],
    );
}

#[test]
fn writing_an_i64_extension_fails() {
    let mut event = simple_event();
    event.set_extension("big", ExtensionValue::Integer(i64::from(i32::MAX) + 1));
    let e = write_structured(&event).expect_err("out of range");
    assert_error(
        &e,
        BindingErrorKind::IntegerOutOfRange,
        &["event.big", "2147483648"],
    );
}

#[test]
fn writing_invalid_extension_names_fails() {
    let mut event = simple_event();
    event.set_extension("Bad-Name", "x");
    let e = write_binary(&event).expect_err("bad name");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttributeName,
        &[r#"event["Bad-Name"]"#],
    );

    let mut event = simple_event();
    event.set_extension("id", "x");
    let e = write_binary(&event).expect_err("collision");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttributeName,
        &["event.id", "collides"],
    );
}

#[test]
fn writing_an_empty_id_fails_in_a_batch_at_its_index() {
    let mut bad = simple_event();
    bad.set_id("");
    let e = write_batch(&[simple_event(), bad]).expect_err("empty id");
    assert_error(
        &e,
        BindingErrorKind::InvalidAttribute,
        &["batch[1].id: must not be empty"],
    );
}

// ---------------------------------------------------------------------------
// Valid input
// ---------------------------------------------------------------------------

trait TapInsert {
    fn tap_insert(self, name: &'static str, value: &str) -> Self;
}

impl TapInsert for HeaderMap {
    fn tap_insert(mut self, name: &'static str, value: &str) -> Self {
        self.insert(name, HeaderValue::from_str(value).expect("value"));
        self
    }
}

#[test]
fn binary_with_json_data() {
    let h = binary_headers(&[
        ("content-type", "application/json; charset=utf-8"),
        ("ce-time", "2018-04-05T03:56:24+02:00"),
        ("ce-subject", "larger-context"),
        ("ce-dataschema", "https://example.com/schema.json"),
        ("ce-comexampleothervalue", "5"),
    ]);
    let (mode, events) = read(&h, br#"{"appinfoA":"abc","appinfoB":123}"#).expect("event");
    assert_eq!(mode, Mode::Binary);
    let event = &events[0];
    assert_eq!(event.id(), "1234");
    assert_eq!(event.source(), "/mycontext");
    assert_eq!(event.ty(), "com.example.someevent");
    assert_eq!(event.subject(), Some("larger-context"));
    assert_eq!(
        event.datacontenttype(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        event.dataschema().map(Url::as_str),
        Some("https://example.com/schema.json")
    );
    assert_eq!(
        event.time().map(format_time).as_deref(),
        Some("2018-04-05T01:56:24Z"),
        "offsets are converted to UTC"
    );
    assert_eq!(
        event.extension("comexampleothervalue"),
        Some(&ExtensionValue::String("5".into())),
        "binary-mode extensions are strings"
    );
    assert_eq!(
        event.data(),
        Some(&Data::Json(json!({"appinfoA": "abc", "appinfoB": 123})))
    );
}

#[test]
fn binary_with_binary_data() {
    let h = binary_headers(&[("content-type", "application/vnd.apache.thrift.binary")]);
    let event = read_one(&h, &[0, 159, 146, 150]);
    assert_eq!(event.data(), Some(&Data::Binary(vec![0, 159, 146, 150])));
    assert_eq!(
        event.datacontenttype(),
        Some("application/vnd.apache.thrift.binary")
    );
}

#[test]
fn binary_without_body_or_content_type() {
    let event = read_one(&binary_headers(&[]), b"");
    assert_eq!(event.data(), None);
    assert_eq!(event.datacontenttype(), None);
}

#[test]
fn binary_body_without_content_type_is_bytes() {
    let event = read_one(&binary_headers(&[]), b"{}");
    assert_eq!(event.data(), Some(&Data::Binary(b"{}".to_vec())));
}

#[test]
fn binary_text_data_is_bytes() {
    let event = read_one(&binary_headers(&[("content-type", "text/plain")]), b"hello");
    assert_eq!(event.data(), Some(&Data::Binary(b"hello".to_vec())));
}

#[test]
fn binary_plus_json_content_type_is_json() {
    let h = binary_headers(&[("content-type", "application/vnd.foo+JSON")]);
    let event = read_one(&h, b"\"just a string\"");
    assert_eq!(event.data(), Some(&Data::Json(json!("just a string"))));
}

#[test]
fn mixed_case_header_names() {
    let h = headers(&[
        ("CE-SpecVersion", "1.0"),
        ("Ce-Id", "1"),
        ("cE-SOURCE", "/s"),
        ("Ce-Type", "t"),
        ("Ce-MyExt", "v"),
        ("Content-Type", "text/plain"),
    ]);
    let event = read_one(&h, b"x");
    assert_eq!(event.id(), "1");
    assert_eq!(
        event.extension("myext"),
        Some(&ExtensionValue::String("v".into()))
    );
}

#[test]
fn percent_encoded_header_values() {
    let h = binary_headers(&[
        ("ce-subject", "Euro%20%E2%82%AC%20%F0%9F%98%80"),
        ("ce-lower", "%e2%82%ac"),
        ("ce-needless", "%41%42C"),
    ]);
    let event = read_one(&h, b"");
    assert_eq!(event.subject(), Some("Euro € 😀"));
    assert_eq!(
        event.extension("lower"),
        Some(&ExtensionValue::String("€".into()))
    );
    assert_eq!(
        event.extension("needless"),
        Some(&ExtensionValue::String("ABC".into()))
    );
}

#[test]
fn quoted_string_header_values() {
    let h = binary_headers(&[("ce-subject", r#""hello \"world\" 100%25""#)]);
    let event = read_one(&h, b"");
    assert_eq!(event.subject(), Some(r#"hello "world" 100%"#));
}

#[test]
fn surrounding_whitespace_is_dropped() {
    let event = read_one(&binary_headers(&[]).tap_insert("ce-id", "  42\t"), b"");
    assert_eq!(event.id(), "42");
}

#[test]
fn raw_utf8_header_values_are_accepted() {
    let mut h = binary_headers(&[]);
    h.insert(
        "ce-subject",
        HeaderValue::from_bytes("café".as_bytes()).expect("obs-text"),
    );
    assert_eq!(read_one(&h, b"").subject(), Some("café"));
}

#[test]
fn lenient_header_decoding() {
    let limits = Limits {
        header_decoding: HeaderDecoding::Lenient,
        ..Limits::default()
    };
    let h = binary_headers(&[
        ("ce-subject", "50% off %zz"),
        ("ce-myext", "%C0%A0"),
        ("ce-quoted", "\"open"),
        ("ce-ok", "a%20b"),
    ]);
    let (_, events) = read_request(&h, b"", &limits).expect("lenient");
    let event = &events[0];
    assert_eq!(event.subject(), Some("50% off %zz"));
    assert_eq!(
        event.extension("myext"),
        Some(&ExtensionValue::String("%C0%A0".into()))
    );
    assert_eq!(
        event.extension("quoted"),
        Some(&ExtensionValue::String("\"open".into()))
    );
    assert_eq!(
        event.extension("ok"),
        Some(&ExtensionValue::String("a b".into()))
    );
}

#[test]
fn structured_with_json_data_and_typed_extensions() {
    let h = headers(&[(
        "content-type",
        "Application/CloudEvents+JSON; Charset=UTF-8",
    )]);
    let body = structured_body(json!({
        "time": "2018-04-05T17:31:00Z",
        "subject": null,
        "comexampleextension1": "value",
        "comexampleothervalue": 5,
        "flag": true,
        "unsetextension": null,
        "datacontenttype": "application/json",
        "data": {"appinfoA": "abc"},
    }));
    let (mode, events) = read(&h, &body).expect("event");
    assert_eq!(mode, Mode::Structured);
    let event = &events[0];
    assert_eq!(event.subject(), None);
    assert_eq!(
        event.extension("comexampleothervalue"),
        Some(&ExtensionValue::Integer(5))
    );
    assert_eq!(
        event.extension("flag"),
        Some(&ExtensionValue::Boolean(true))
    );
    assert_eq!(event.extension("unsetextension"), None);
    assert_eq!(event.data(), Some(&Data::Json(json!({"appinfoA": "abc"}))));
}

#[test]
fn structured_with_data_base64() {
    let body = structured_body(json!({
        "datacontenttype": "application/json",
        "data_base64": "AAGf",
    }));
    let event = read_one(&structured(), &body);
    assert_eq!(
        event.data(),
        Some(&Data::Binary(vec![0, 1, 159])),
        "decoded whatever the type"
    );
    // Unpadded input is accepted too.
    let body = structured_body(json!({"data_base64": "AAE"}));
    assert_eq!(
        read_one(&structured(), &body).data(),
        Some(&Data::Binary(vec![0, 1]))
    );
}

#[test]
fn structured_string_data() {
    let xml = structured_body(
        json!({"datacontenttype": "application/xml", "data": "<much wow=\"xml\"/>"}),
    );
    assert_eq!(
        read_one(&structured(), &xml).data(),
        Some(&Data::String("<much wow=\"xml\"/>".into()))
    );
    let implicit = structured_body(json!({"data": "I'm just a string"}));
    assert_eq!(
        read_one(&structured(), &implicit).data(),
        Some(&Data::Json(json!("I'm just a string"))),
        "no datacontenttype means application/json"
    );
    let null = structured_body(json!({"data": null}));
    assert_eq!(
        read_one(&structured(), &null).data(),
        Some(&Data::Json(json!(null)))
    );
}

#[test]
fn structured_ignores_ce_headers() {
    let mut h = structured();
    h.insert("ce-id", HeaderValue::from_static("other"));
    assert_eq!(
        read_one(&h, &structured_body(json!({}))).id(),
        "A234-1234-1234"
    );
}

#[test]
fn batch_of_three_and_empty_batch() {
    let body = format!(
        "[{},{},{}]",
        String::from_utf8(structured_body(json!({"id": "a", "data_base64": "AA=="})))
            .expect("utf8"),
        String::from_utf8(structured_body(json!({"id": "b", "data": {"x": 1}}))).expect("utf8"),
        String::from_utf8(structured_body(json!({"id": "c"}))).expect("utf8"),
    );
    let h = headers(&[(
        "content-type",
        "application/cloudevents-batch+json; charset=UTF-8",
    )]);
    let (mode, events) = read(&h, body.as_bytes()).expect("batch");
    assert_eq!(mode, Mode::Batch);
    let ids: Vec<_> = events.iter().map(|e| e.id().to_owned()).collect();
    assert_eq!(ids, ["a", "b", "c"]);

    let (mode, events) = read(&batch(), b"[]").expect("empty batch");
    assert_eq!(mode, Mode::Batch);
    assert!(events.is_empty());
}

#[test]
fn mode_detection() {
    let mode = |ct: &str| mode_of(&headers(&[("content-type", ct)]));
    assert_eq!(mode("application/cloudevents+json"), Mode::Structured);
    assert_eq!(
        mode("APPLICATION/CLOUDEVENTS+JSON;charset=utf-8"),
        Mode::Structured
    );
    assert_eq!(mode("application/cloudevents+avro"), Mode::Structured);
    assert_eq!(mode("application/cloudevents-batch+json"), Mode::Batch);
    assert_eq!(
        mode(" Application/CloudEvents-Batch+Json ; charset=utf-8"),
        Mode::Batch
    );
    assert_eq!(mode("application/json"), Mode::Binary);
    assert_eq!(mode("application/cloudeventsfoo"), Mode::Binary);
    assert_eq!(mode_of(&HeaderMap::new()), Mode::Binary);
}

#[test]
fn json_content_types() {
    assert!(is_json_content_type("application/json"));
    assert!(is_json_content_type("text/json; charset=utf-8"));
    assert!(is_json_content_type("Application/Vnd.Foo+JSON"));
    assert!(!is_json_content_type("application/jsonx"));
    assert!(!is_json_content_type("text/plain"));
    assert!(!is_json_content_type("json"));
}

#[test]
fn responses() {
    let limits = Limits::default();
    assert_eq!(
        read_response(&HeaderMap::new(), b"", &limits).expect("empty"),
        None
    );
    assert_eq!(
        read_response(&headers(&[("content-type", "text/plain")]), b"", &limits).expect("empty"),
        None
    );
    let reply = read_response(&binary_headers(&[]), b"", &limits).expect("reply");
    assert_eq!(reply.map(|e| e.id().to_owned()).as_deref(), Some("1234"));
    let reply = read_response(&structured(), &structured_body(json!({})), &limits).expect("reply");
    assert!(reply.is_some());
}

#[test]
fn percent_encoding_examples() {
    assert_eq!(
        percent_encode_header_value("Euro € 😀"),
        "Euro%20%E2%82%AC%20%F0%9F%98%80"
    );
    assert_eq!(
        percent_encode_header_value("a\"b%c\u{7f}\u{85}"),
        "a%22b%25c%7F%C2%85"
    );
    assert_eq!(
        percent_encode_header_value("/plain-ASCII_~!"),
        "/plain-ASCII_~!"
    );
    assert_eq!(percent_decode_header_value("a%2fb").expect("decode"), "a/b");
}

#[test]
fn write_binary_headers_and_body() {
    let event = EventBuilderV10::new()
        .id("id with space")
        .source("/s")
        .ty("t")
        .subject("Euro € 😀")
        .time("2018-04-05T17:31:00.5+00:00")
        .extension("ttl", 255_i64)
        .extension("flag", false)
        .data("application/json", json!({"a": "b"}))
        .build()
        .expect("event");
    let (h, body) = write_binary(&event).expect("write");
    let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(get("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(get("ce-id").as_deref(), Some("id%20with%20space"));
    assert_eq!(
        get("ce-subject").as_deref(),
        Some("Euro%20%E2%82%AC%20%F0%9F%98%80")
    );
    assert_eq!(get("ce-time").as_deref(), Some("2018-04-05T17:31:00.500Z"));
    assert_eq!(get("ce-ttl").as_deref(), Some("255"));
    assert_eq!(get("ce-flag").as_deref(), Some("false"));
    assert_eq!(get("content-type").as_deref(), Some("application/json"));
    assert_eq!(get("ce-datacontenttype"), None);
    assert_eq!(&body[..], br#"{"a":"b"}"#);
}

#[test]
fn write_binary_json_without_content_type_sets_application_json() {
    let mut event = simple_event();
    event.set_data_unchecked(json!([1, 2]));
    let (h, body) = write_binary(&event).expect("write");
    assert_eq!(
        h.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
        Some(&b"application/json"[..])
    );
    assert_eq!(&body[..], b"[1,2]");
}

#[test]
fn write_binary_string_data() {
    let mut event = simple_event();
    event.set_data("text/plain", "hello");
    let (_, body) = write_binary(&event).expect("write");
    assert_eq!(&body[..], b"hello");
    event.set_data("application/json", "hello");
    let (_, body) = write_binary(&event).expect("write");
    assert_eq!(&body[..], b"\"hello\"", "a JSON string under a JSON type");
}

#[test]
fn write_structured_layout() {
    let event = EventBuilderV10::new()
        .id("1")
        .source("/s")
        .ty("t")
        .extension("zed", 5_i64)
        .extension("alpha", "a")
        .data("application/octet-stream", vec![0_u8, 1])
        .build()
        .expect("event");
    let (h, body) = write_structured(&event).expect("write");
    assert_eq!(
        h.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
        Some(STRUCTURED_JSON_CONTENT_TYPE.as_bytes())
    );
    assert_eq!(
        std::str::from_utf8(&body).expect("utf8"),
        r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"application/octet-stream","alpha":"a","zed":5,"data_base64":"AAE="}"#
    );
}

#[test]
fn write_empty_batch() {
    let (h, body) = write_batch(&[]).expect("write");
    assert_eq!(
        h.get(CONTENT_TYPE).map(HeaderValue::as_bytes),
        Some(BATCH_JSON_CONTENT_TYPE.as_bytes())
    );
    assert_eq!(&body[..], b"[]");
}

#[test]
fn write_event_dispatches_on_mode() {
    let event = simple_event();
    for mode in [Mode::Binary, Mode::Structured, Mode::Batch] {
        let (h, body) = write_event(&event, mode).expect("write");
        assert_eq!(mode_of(&h), mode);
        let (read_mode, events) = read(&h, &body).expect("read");
        assert_eq!(read_mode, mode);
        assert_eq!(events, vec![event.clone()]);
    }
}

#[test]
fn dataschema_is_normalised() {
    let body = structured_body(json!({"dataschema": "HTTP://Example.COM"}));
    let event = read_one(&structured(), &body);
    assert_eq!(
        event.dataschema().map(Url::as_str),
        Some("http://example.com/")
    );
}

#[test]
fn status_codes() {
    let e = read_err(&structured(), &structured_without("id"));
    assert_eq!(e.status_code(), StatusCode::BAD_REQUEST);
    assert_eq!(e.location(), Some("body.id"));
    assert_eq!(e.message(), "missing");
    let boxed: Box<dyn std::error::Error> = Box::new(e);
    assert_eq!(boxed.to_string(), "body.id: missing");
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

fn valid_string(s: &str) -> bool {
    check_string(s).is_ok()
}

/// Attribute text with the characters that need encoding: space, quotes,
/// percent, backslash, non-ASCII, emoji.
fn attr_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 %\"\\\\€😀ü/:._~+-]{1,16}",
        "\\PC{1,12}",
        Just("100%".to_owned()),
        Just("%20".to_owned()),
        Just("\"quoted\"".to_owned()),
    ]
    .prop_filter("CloudEvents String", |s| valid_string(s))
}

fn extension_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,24}".prop_filter("not a core or reserved name", |n| {
        !CORE_ATTRIBUTES.contains(&n.as_str()) && n != "data"
    })
}

fn extension_value() -> impl Strategy<Value = ExtensionValue> {
    prop_oneof![
        attr_text().prop_map(ExtensionValue::String),
        Just(ExtensionValue::String(String::new())),
        any::<bool>().prop_map(ExtensionValue::Boolean),
        any::<i32>().prop_map(|i| ExtensionValue::Integer(i64::from(i))),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        // Quarter steps are exact in binary and print shortly.
        (-4000_i32..4000).prop_map(|i| Value::from(f64::from(i) / 4.0)),
        "\\PC{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Content type and data pairs that structured mode reproduces exactly.
fn content() -> impl Strategy<Value = (Option<String>, Option<Data>)> {
    let bytes = prop::collection::vec(any::<u8>(), 0..32);
    prop_oneof![
        Just((None, None)),
        Just((Some("application/json".to_owned()), None)),
        json_value().prop_map(|v| (Some("application/json".to_owned()), Some(Data::Json(v)))),
        json_value().prop_map(|v| (
            Some("application/vnd.example+json; charset=utf-8".to_owned()),
            Some(Data::Json(v))
        )),
        json_value().prop_map(|v| (None, Some(Data::Json(v)))),
        "\\PC{0,20}".prop_map(|s| (
            Some("text/plain; charset=utf-8".to_owned()),
            Some(Data::String(s))
        )),
        bytes.clone().prop_map(|b| (
            Some("application/octet-stream".to_owned()),
            Some(Data::Binary(b))
        )),
        bytes.prop_map(|b| (None, Some(Data::Binary(b)))),
    ]
}

fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    (0_i64..4_102_444_800, 0_u32..1_000_000_000)
        .prop_filter_map("valid timestamp", |(s, n)| DateTime::from_timestamp(s, n))
}

fn dataschema() -> impl Strategy<Value = Url> {
    prop_oneof![
        "[a-zA-Z0-9._~-]{0,10}".prop_map(|p| format!("https://example.com/{p}")),
        "[a-z0-9]{1,10}".prop_map(|p| format!("urn:example:{p}")),
        "\\PC{0,5}".prop_map(|p| format!("http://schemas.example/{p}")),
    ]
    .prop_filter_map("absolute URL", |s| Url::parse(&s).ok())
}

prop_compose! {
    fn event()(
        id in attr_text(),
        source in attr_text(),
        ty in attr_text(),
        subject in prop::option::of(attr_text()),
        time in prop::option::of(timestamp()),
        schema in prop::option::of(dataschema()),
        extensions in prop::collection::btree_map(extension_name(), extension_value(), 0..4),
        (ct, data) in content(),
    ) -> Event {
        let mut builder = EventBuilderV10::new().id(id).source(source).ty(ty);
        if let Some(subject) = subject {
            builder = builder.subject(subject);
        }
        if let Some(time) = time {
            builder = builder.time(time);
        }
        for (name, value) in extensions {
            builder = builder.extension(&name, value);
        }
        let mut event = builder.build().expect("generated event");
        event.set_datacontenttype(ct);
        event.set_dataschema(schema);
        if let Some(data) = data {
            event.set_data_unchecked(data);
        }
        event
    }
}

/// What binary mode gives back for an event: extensions as strings, string
/// data as bytes, empty bodies as no data, JSON without a content type
/// labelled `application/json` (see the module docs).
fn binary_expectation(event: &Event) -> Event {
    let mut expected = event.clone();
    let extensions: Vec<(String, ExtensionValue)> = event
        .iter_extensions()
        .map(|(n, v)| (n.to_owned(), ExtensionValue::String(extension_string(v))))
        .collect();
    for (name, value) in extensions {
        expected.set_extension(&name, value);
    }
    let ct = event.datacontenttype().map(str::to_owned);
    let json = ct.as_deref().is_none_or(is_json_content_type);
    let (ct, data) = match event.data().cloned() {
        None => (ct, None),
        Some(Data::Binary(b)) if b.is_empty() => (ct, None),
        Some(Data::Binary(b)) => (ct, Some(Data::Binary(b))),
        Some(Data::Json(v)) if json => {
            (ct.or(Some("application/json".into())), Some(Data::Json(v)))
        }
        Some(Data::Json(v)) => (
            ct,
            Some(Data::Binary(serde_json::to_vec(&v).expect("json"))),
        ),
        Some(Data::String(s)) if json => (
            ct.or(Some("application/json".into())),
            Some(Data::Json(Value::String(s))),
        ),
        Some(Data::String(s)) if s.is_empty() => (ct, None),
        Some(Data::String(s)) => (ct, Some(Data::Binary(s.into_bytes()))),
    };
    let _ = expected.take_data();
    expected.set_dataschema(event.dataschema().cloned());
    expected.set_datacontenttype(ct);
    if let Some(data) = data {
        expected.set_data_unchecked(data);
    }
    expected
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn binary_round_trip(event in event()) {
        let (h, body) = write_binary(&event).expect("write");
        for (name, value) in &h {
            if name.as_str().starts_with("ce-") {
                prop_assert!(value.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b)),
                    "{name} is not visible ASCII: {value:?}");
            }
        }
        let (mode, events) = read(&h, &body).expect("read");
        prop_assert_eq!(mode, Mode::Binary);
        prop_assert_eq!(events, vec![binary_expectation(&event)]);
    }

    #[test]
    fn structured_round_trip(event in event()) {
        let (h, body) = write_structured(&event).expect("write");
        let (mode, events) = read(&h, &body).expect("read");
        prop_assert_eq!(mode, Mode::Structured);
        prop_assert_eq!(events, vec![event]);
    }

    #[test]
    fn batch_round_trip(events in prop::collection::vec(event(), 0..4)) {
        let (h, body) = write_batch(&events).expect("write");
        let (mode, read_back) = read(&h, &body).expect("read");
        prop_assert_eq!(mode, Mode::Batch);
        prop_assert_eq!(read_back, events);
    }

    #[test]
    fn binary_then_structured_is_stable(event in event()) {
        // Once through binary mode, an event is a fixed point of both modes.
        let (h, body) = write_binary(&event).expect("write");
        let (_, mut once) = read(&h, &body).expect("read");
        let once = once.pop().expect("one event");
        let (h, body) = write_structured(&once).expect("write");
        let (_, twice) = read(&h, &body).expect("read");
        prop_assert_eq!(twice, vec![once.clone()]);
        let (h, body) = write_binary(&once).expect("write");
        let (_, thrice) = read(&h, &body).expect("read");
        prop_assert_eq!(thrice, vec![once]);
    }

    #[test]
    fn header_encoding_round_trip(s in "\\PC{0,24}|[ -~]{0,24}|.{0,8}") {
        let encoded = percent_encode_header_value(&s);
        prop_assert!(HeaderValue::from_str(&encoded).is_ok());
        prop_assert!(!encoded.contains([' ', '"']));
        prop_assert_eq!(percent_decode_header_value(&encoded).expect("decode"), s);
    }

    #[test]
    fn readers_do_not_panic_on_arbitrary_bodies(
        body in prop::collection::vec(any::<u8>(), 0..256),
        ct in prop_oneof![
            Just("application/cloudevents+json"),
            Just("application/cloudevents-batch+json"),
            Just("application/json"),
            Just("text/plain"),
        ],
    ) {
        let h = binary_headers(&[("content-type", ct)]);
        let _ = read(&h, &body);
        let _ = read_response(&h, &body, &Limits::default());
    }

    #[test]
    fn readers_do_not_panic_on_arbitrary_json(value in json_value()) {
        let body = serde_json::to_vec(&value).expect("json");
        let _ = read(&structured(), &body);
        let _ = read(&batch(), &body);
        let wrapped = serde_json::to_vec(&json!([value])).expect("json");
        let _ = read(&batch(), &wrapped);
    }

    #[test]
    fn readers_do_not_panic_on_arbitrary_header_values(
        raw in prop::collection::vec(any::<u8>(), 0..32),
        lenient in any::<bool>(),
    ) {
        if let Ok(value) = HeaderValue::from_bytes(&raw) {
            let mut h = binary_headers(&[]);
            h.insert("ce-subject", value.clone());
            h.insert("ce-myext", value);
            let limits = Limits {
                header_decoding: if lenient { HeaderDecoding::Lenient } else { HeaderDecoding::Strict },
                ..Limits::default()
            };
            let _ = read_request(&h, b"", &limits);
        }
    }
}

#[test]
fn json_value_strategy_covers_nested_documents() {
    // A sanity check that the generator used above yields structured values.
    let nested: BTreeMap<&str, Value> = [("a", json!([1, {"b": null}]))].into_iter().collect();
    let event = {
        let mut e = simple_event();
        e.set_data("application/json", json!(nested));
        e
    };
    let (h, body) = write_structured(&event).expect("write");
    assert_eq!(read_one(&h, &body), event);
}
