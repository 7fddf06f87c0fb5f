//! Scenario tests for the CESQL engine (`specs/EVENTING.md §3`).

use cloudevents::{Event, EventBuilder, EventBuilderV10};
use proptest::prelude::*;

use super::ast::{Attr, BinOp, Literal, LogicOp, Node};
use super::functions::Builtin;
use super::like::LikePattern;
use super::{ErrorKind, Evaluation, Expression, MAX_NESTING_DEPTH, Type, Value, parser};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// An event with every optional attribute set and a few typed extensions.
fn full_event() -> Event {
    EventBuilderV10::new()
        .id("A234-1234-1234")
        .source("/orders/123")
        .ty("com.example.order.created")
        .subject("order-123")
        .time("2018-04-26T14:48:09+02:00")
        .data_with_schema(
            "application/json",
            "http://example.com/schema",
            String::from("{}"),
        )
        .extension("priority", 7i64)
        .extension("urgent", true)
        .extension("region", "eu-west-1")
        .extension("big", 5_000_000_000i64)
        .extension("numstr", "42")
        .extension("flag", "TRUE")
        .extension("unicode", "ÄbÇ")
        .extension("empty", "")
        .build()
        .expect("valid event")
}

/// Only the required attributes.
fn minimal_event() -> Event {
    EventBuilderV10::new()
        .id("1")
        .source("s")
        .ty("t")
        .build()
        .expect("valid event")
}

fn b(v: bool) -> Value {
    Value::Boolean(v)
}
fn i(v: i32) -> Value {
    Value::Integer(v)
}
fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn run(expr: &str, event: &Event) -> Evaluation {
    let e = Expression::parse(expr).unwrap_or_else(|err| panic!("parse {expr:?}: {err}"));
    let evaluation = e.evaluate(event);
    assert_eq!(
        e.matches(event),
        evaluation.passes(),
        "matches() disagrees with evaluate().passes() for {expr:?}"
    );
    assert!(
        evaluation.errors.len() <= 1,
        "fail-fast allows one error: {expr:?}"
    );
    evaluation
}

fn check_cases(event: &Event, cases: &[(&str, Value, Option<ErrorKind>)]) {
    let mut failures = Vec::new();
    for (expr, value, error) in cases {
        let ev = run(expr, event);
        let got_error = ev.errors.first().map(|e| e.kind());
        if &ev.value != value || got_error != *error {
            failures.push(format!(
                "{expr:?}: expected {value:?} / {error:?}, got {:?} / {:?}",
                ev.value, ev.errors
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

use ErrorKind::{Cast, FunctionEvaluation, Math, MissingAttribute, MissingFunction};

// ---------------------------------------------------------------------------------------------
// Table-driven semantics
// ---------------------------------------------------------------------------------------------

#[test]
fn literals_and_case_insensitive_keywords() {
    check_cases(
        &full_event(),
        &[
            ("TRUE", b(true), None),
            ("tRuE", b(true), None),
            ("false", b(false), None),
            ("0", i(0), None),
            ("-2147483648", i(i32::MIN), None),
            ("2147483647", i(i32::MAX), None),
            ("+5", i(5), None),
            ("'abc'", s("abc"), None),
            ("\"abc\"", s("abc"), None),
            ("''", s(""), None),
            ("'it''s'", s("it's"), None),
            (r#""say ""hi""""#, s(r#"say "hi""#), None),
            (r"'a\'b'", s("a'b"), None),
            (r#""a\"b""#, s("a\"b"), None),
            (r"'a\\b'", s(r"a\b"), None),
            (r"'a\nb'", s(r"a\nb"), None),
            ("'a\"b'", s("a\"b"), None),
            ("'ÄbÇ'", s("ÄbÇ"), None),
            ("(TRUE)", b(true), None),
            ("((((1))))", i(1), None),
        ],
    );
}

#[test]
fn arithmetic_truncates_wraps_and_raises_math_errors() {
    check_cases(
        &full_event(),
        &[
            ("4 * 2 + 4 / 2", i(10), None),
            ("4 * (2 + 4) / 2", i(12), None),
            ("7 / 2", i(3), None),
            ("-7 / 2", i(-3), None),
            ("7 % 3", i(1), None),
            ("-7 % 3", i(-1), None),
            ("7 % -3", i(1), None),
            ("5 / 0", i(0), Some(Math)),
            ("5 % 0", i(0), Some(Math)),
            ("2147483647 + 1", i(i32::MIN), Some(Math)),
            ("-2147483648 - 1", i(i32::MAX), Some(Math)),
            ("65536 * 65536", i(0), Some(Math)),
            ("-2147483648 / -1", i(i32::MIN), Some(Math)),
            ("-2147483648 % -1", i(0), None),
            ("-(-2147483648)", i(i32::MIN), Some(Math)),
            ("5-3", i(2), None),
            ("5 - -3", i(8), None),
            ("5--3", i(8), None),
            ("--10", i(10), None),
            ("- 5", i(-5), None),
            ("-TRUE", i(-1), None),
            ("-'10'", i(-10), None),
            ("--'10'", i(10), None),
            ("-'abc'", i(0), Some(Cast)),
            ("'5' + 3", i(8), None),
            ("5 + '3'", i(8), None),
            ("5 + TRUE", i(6), None),
            ("'a' + 1", i(0), Some(Cast)),
            ("' 1' + 1", i(0), Some(Cast)),
            ("1 + missing", i(0), Some(MissingAttribute)),
            ("1 / missing", i(0), Some(MissingAttribute)),
            ("missing / 0", i(0), Some(MissingAttribute)),
            ("missing * 5", i(0), Some(MissingAttribute)),
            ("-missing", i(0), Some(MissingAttribute)),
            ("priority * 2", i(14), None),
            ("numstr + 1", i(43), None),
            ("(1 / 0) + 1", i(0), Some(Math)),
        ],
    );
}

#[test]
fn comparisons_cast_the_left_operand_to_the_right_type() {
    check_cases(
        &full_event(),
        &[
            ("1 < 2", b(true), None),
            ("2 <= 2", b(true), None),
            ("3 > 2", b(true), None),
            ("2 >= 3", b(false), None),
            ("'10' > 9", b(true), None),
            ("'abc' < 1", b(false), Some(Cast)),
            ("TRUE > FALSE", b(true), None),
            ("priority > 5", b(true), None),
            ("priority >= 7", b(true), None),
            ("priority = 7", b(true), None),
            ("priority = '7'", b(true), None),
            ("'7' = priority", b(true), None),
            ("region = 'eu-west-1'", b(true), None),
            ("region <> 'x'", b(true), None),
            ("region != 'eu-west-1'", b(false), None),
            ("'abc' = 'ABC'", b(false), None),
            ("TRUE = \"true\"", b(true), None),
            ("TRUE = 'TRUE'", b(false), None),
            ("'TRUE' = TRUE", b(true), None),
            ("'yes' = TRUE", b(false), Some(Cast)),
            ("1 = TRUE", b(true), None),
            ("0 = FALSE", b(true), None),
            ("'abc' = 1", b(false), Some(Cast)),
            ("'abc' != 1", b(false), Some(Cast)),
            ("'01' = 1", b(true), None),
            ("1 = '01'", b(false), None),
            ("missing = 2", b(false), Some(MissingAttribute)),
            ("2 = missing", b(false), Some(MissingAttribute)),
            ("missing != 2", b(false), Some(MissingAttribute)),
            ("missing <= 2", b(false), Some(MissingAttribute)),
            ("flag = TRUE", b(true), None),
            ("urgent = 'true'", b(true), None),
            ("1 < 2 = TRUE", b(true), None),
        ],
    );
}

#[test]
fn logic_short_circuits_and_is_right_associative() {
    check_cases(
        &full_event(),
        &[
            ("FALSE AND TRUE", b(false), None),
            ("TRUE AND TRUE", b(true), None),
            ("FALSE OR TRUE", b(true), None),
            ("FALSE OR FALSE", b(false), None),
            ("TRUE XOR TRUE", b(false), None),
            ("TRUE XOR FALSE", b(true), None),
            ("false AND (1 != 1/0)", b(false), None),
            ("true AND (1 != 1/0)", b(false), Some(Math)),
            ("true OR (1 != 1/0)", b(true), None),
            ("false OR (1 != 1/0)", b(false), Some(Math)),
            ("FALSE XOR (1/0 = 0)", b(false), Some(Math)),
            ("'true' AND 'TRUE'", b(true), None),
            ("'yes' AND TRUE", b(false), Some(Cast)),
            ("TRUE AND 'yes'", b(false), Some(Cast)),
            ("1 AND TRUE", b(true), None),
            ("0 OR FALSE", b(false), None),
            ("missing AND TRUE", b(false), Some(MissingAttribute)),
            ("FALSE AND missing", b(false), None),
            ("TRUE OR missing", b(true), None),
            ("TRUE AND missing", b(false), Some(MissingAttribute)),
            ("true AND (missing = '')", b(false), Some(MissingAttribute)),
            // Right-associative: TRUE OR (TRUE AND FALSE).
            ("TRUE OR TRUE AND FALSE", b(true), None),
            // FALSE AND (TRUE OR TRUE).
            ("FALSE AND TRUE OR TRUE", b(false), None),
            ("(FALSE AND TRUE) OR TRUE", b(true), None),
            ("1 + 1 = 2 AND 2 * 3 = 6", b(true), None),
            ("urgent AND priority > 5", b(true), None),
        ],
    );
}

#[test]
fn not_binds_tighter_than_everything_and_rejects_integers() {
    check_cases(
        &full_event(),
        &[
            ("NOT TRUE", b(false), None),
            ("NOT FALSE", b(true), None),
            ("not 'TRUE'", b(false), None),
            ("NOT 'FALSE'", b(true), None),
            ("NOT 10", b(true), Some(Cast)),
            ("NOT 0", b(true), Some(Cast)),
            ("NOT 'abc'", b(true), Some(Cast)),
            ("NOT missing", b(false), Some(MissingAttribute)),
            ("NOT NOT TRUE", b(true), None),
            ("NOT urgent", b(false), None),
            // (NOT TRUE) AND FALSE, not NOT (TRUE AND FALSE).
            ("NOT TRUE AND FALSE", b(false), None),
            ("NOT (TRUE AND FALSE)", b(true), None),
            ("NOT FALSE = TRUE", b(true), None),
        ],
    );
}

#[test]
fn like_matches_wildcards_escapes_and_casts_to_string() {
    check_cases(
        &full_event(),
        &[
            ("source LIKE '/orders/%'", b(true), None),
            ("source NOT LIKE '/orders/%'", b(false), None),
            ("type LIKE 'com.%.created'", b(true), None),
            ("type LIKE 'com._xample%'", b(true), None),
            ("type LIKE '%.created'", b(true), None),
            ("type LIKE '%order%'", b(true), None),
            ("type LIKE 'COM.%'", b(false), None),
            ("'' LIKE '%'", b(true), None),
            ("'' LIKE ''", b(true), None),
            ("'' LIKE '_'", b(false), None),
            ("'abc' LIKE '%%'", b(true), None),
            ("'abc' LIKE 'a%c%'", b(true), None),
            ("'abcabc' LIKE '%abc'", b(true), None),
            ("'aXbXc' LIKE 'a_b_c'", b(true), None),
            ("'ÄbÇ' LIKE '_b_'", b(true), None),
            ("unicode LIKE '_b_'", b(true), None),
            ("'mississippi' LIKE '%iss%ipp%'", b(true), None),
            ("'mississippi' LIKE 'm%ss_ss%i'", b(true), None),
            ("'mississippi' LIKE 'm%ss_ss%x'", b(false), None),
            ("'ab' LIKE 'a%b%'", b(true), None),
            ("'aab' LIKE 'a%ab'", b(true), None),
            ("'ab' LIKE 'a%ab'", b(false), None),
            (r"'a%' LIKE 'a\%'", b(true), None),
            (r"'ab' LIKE 'a\%'", b(false), None),
            (r"'a_' LIKE 'a\_'", b(true), None),
            (r"'ab' LIKE 'a\_'", b(false), None),
            (r"'a\b' LIKE 'a\b'", b(true), None),
            (r"'a\b' LIKE 'a\\b'", b(true), None),
            ("priority LIKE '7'", b(true), None),
            ("-12 LIKE '-1_'", b(true), None),
            ("urgent LIKE 't%'", b(true), None),
            ("TRUE LIKE 'tr%'", b(true), None),
            ("missing LIKE '%'", b(false), Some(MissingAttribute)),
            ("missing NOT LIKE 'x'", b(false), Some(MissingAttribute)),
            // LIKE binds tighter than +: 1 + (2 LIKE '2') = 1 + TRUE.
            ("1 + 2 LIKE '2'", i(2), None),
            (
                "type like '%.created' and source like '/orders/%'",
                b(true),
                None,
            ),
        ],
    );
}

#[test]
fn exists_reports_presence_only() {
    let full = full_event();
    check_cases(
        &full,
        &[
            ("EXISTS id", b(true), None),
            ("EXISTS SOURCE", b(true), None),
            ("exists specversion", b(true), None),
            ("EXISTS subject", b(true), None),
            ("EXISTS time", b(true), None),
            ("EXISTS dataschema", b(true), None),
            ("EXISTS urgent", b(true), None),
            ("EXISTS Priority", b(true), None),
            ("EXISTS missing", b(false), None),
            ("EXISTS data", b(false), None),
            ("NOT EXISTS missing", b(true), None),
        ],
    );
    check_cases(
        &minimal_event(),
        &[
            ("EXISTS id", b(true), None),
            ("EXISTS type", b(true), None),
            ("EXISTS subject", b(false), None),
            ("EXISTS time", b(false), None),
            ("EXISTS datacontenttype", b(false), None),
            ("EXISTS dataschema", b(false), None),
        ],
    );
}

#[test]
fn in_casts_set_elements_to_the_left_operand_type() {
    check_cases(
        &full_event(),
        &[
            ("'1' IN (1, 2)", b(true), None),
            ("'TRUE' IN (TRUE, 'false')", b(false), None),
            ("'true' IN (TRUE, 'false')", b(true), None),
            ("1 IN ('1', 'x')", b(true), None),
            ("1 IN ('x', 1)", b(false), Some(Cast)),
            ("TRUE IN (1)", b(true), None),
            ("FALSE IN (0)", b(true), None),
            ("region IN ('us', 'eu-west-1')", b(true), None),
            ("region NOT IN ('us', 'eu')", b(true), None),
            ("region NOT IN ('eu-west-1')", b(false), None),
            ("priority IN (1, 7)", b(true), None),
            ("priority IN ('7')", b(true), None),
            ("priority in (1 + 6)", b(true), None),
            ("missing IN (1)", b(false), Some(MissingAttribute)),
            ("1 IN (missing)", b(false), Some(MissingAttribute)),
            ("1 IN (1, missing)", b(true), None),
            ("1 NOT IN (2, 1/0)", b(false), Some(Math)),
            // IN binds tighter than +: 1 + (1 IN (1)).
            ("1 + 1 IN (1)", i(2), None),
        ],
    );
}

#[test]
fn attributes_read_as_their_string_forms_and_extensions_keep_types() {
    check_cases(
        &full_event(),
        &[
            ("id", s("A234-1234-1234"), None),
            ("source", s("/orders/123"), None),
            ("type", s("com.example.order.created"), None),
            ("specversion", s("1.0"), None),
            ("subject", s("order-123"), None),
            // Offset lost: cloudevents-sdk stores DateTime<Utc>.
            ("time", s("2018-04-26T12:48:09Z"), None),
            ("datacontenttype", s("application/json"), None),
            ("dataschema", s("http://example.com/schema"), None),
            ("priority", i(7), None),
            ("PRIORITY", i(7), None),
            ("urgent", b(true), None),
            ("big", s("5000000000"), None),
            ("big = '5000000000'", b(true), None),
            ("big > 5", b(false), Some(Cast)),
            ("region", s("eu-west-1"), None),
            ("empty", s(""), None),
            ("data", b(false), Some(MissingAttribute)),
            ("missing", b(false), Some(MissingAttribute)),
            (
                "firstname = 'Francesco' OR subject = 'order-123'",
                b(false),
                Some(MissingAttribute),
            ),
        ],
    );
    // Unset optional attributes are missing (CESQL v1), not empty strings.
    check_cases(
        &minimal_event(),
        &[
            ("subject", b(false), Some(MissingAttribute)),
            ("time", b(false), Some(MissingAttribute)),
            ("datacontenttype", b(false), Some(MissingAttribute)),
            ("dataschema", b(false), Some(MissingAttribute)),
            ("subject = ''", b(false), Some(MissingAttribute)),
            ("LENGTH(subject)", i(0), Some(MissingAttribute)),
            ("EXISTS subject AND subject = 'x'", b(false), None),
            (
                "EXISTS subject OR subject = 'x'",
                b(false),
                Some(MissingAttribute),
            ),
        ],
    );
}

#[test]
fn time_keeps_fractional_seconds_in_shortest_form() {
    let event = EventBuilderV10::new()
        .id("1")
        .source("s")
        .ty("t")
        .time("2024-01-02T03:04:05.500+01:00")
        .build()
        .expect("valid event");
    check_cases(&event, &[("time", s("2024-01-02T02:04:05.5Z"), None)]);
    let event = EventBuilderV10::new()
        .id("1")
        .source("s")
        .ty("t")
        .time("2024-01-02T03:04:05.000000123Z")
        .build()
        .expect("valid event");
    check_cases(
        &event,
        &[("time", s("2024-01-02T03:04:05.000000123Z"), None)],
    );
}

#[test]
fn string_functions_cover_their_edge_cases() {
    check_cases(
        &full_event(),
        &[
            ("LENGTH('abc')", i(3), None),
            ("LENGTH('')", i(0), None),
            ("LENGTH('ÄbÇ')", i(3), None),
            ("LENGTH(TRUE)", i(4), None),
            ("LENGTH(12345)", i(5), None),
            ("length(region)", i(9), None),
            ("LENGTH(missing)", i(0), Some(MissingAttribute)),
            ("CONCAT()", s(""), None),
            ("CONCAT('a')", s("a"), None),
            ("CONCAT('a', 1, TRUE)", s("a1true"), None),
            ("CONCAT(region, '/', priority)", s("eu-west-1/7"), None),
            ("CONCAT('a', missing)", s(""), Some(MissingAttribute)),
            ("CONCAT_WS(',')", s(""), None),
            ("CONCAT_WS(',', 'a')", s("a"), None),
            ("CONCAT_WS('-', 'a', 'b', 'c')", s("a-b-c"), None),
            ("Concat_Ws('', 'a', 'b')", s("ab"), None),
            ("CONCAT_WS()", b(false), Some(MissingFunction)),
            ("CONCAT_WS(missing, 'a')", s(""), Some(MissingAttribute)),
            ("LOWER('AbC')", s("abc"), None),
            ("LOWER('ÄB')", s("äb"), None),
            ("LOWER(TRUE)", s("true"), None),
            ("UPPER('abc')", s("ABC"), None),
            ("UPPER('straße')", s("STRASSE"), None),
            ("UPPER(missing)", s(""), Some(MissingAttribute)),
            ("TRIM('   a b c   ')", s("a b c"), None),
            ("TRIM('\t a \n')", s("a"), None),
            ("TRIM('\u{2003}x\u{2003}')", s("x"), None),
            ("TRIM('')", s(""), None),
            ("LEFT('abc', 2)", s("ab"), None),
            ("LEFT('abc', 10)", s("abc"), None),
            ("LEFT('abc', 0)", s(""), None),
            ("LEFT('', 0)", s(""), None),
            ("LEFT('ÄbÇ', 2)", s("Äb"), None),
            ("LEFT('abc', -1)", s("abc"), Some(FunctionEvaluation)),
            ("LEFT('abc', 'x')", s(""), Some(Cast)),
            ("LEFT('abc', '2')", s("ab"), None),
            ("RIGHT('abc', 2)", s("bc"), None),
            ("RIGHT('abc', 10)", s("abc"), None),
            ("RIGHT('', 0)", s(""), None),
            ("RIGHT('ÄbÇ', 2)", s("bÇ"), None),
            ("RIGHT('abc', -2)", s("abc"), Some(FunctionEvaluation)),
            ("SUBSTRING('abcdef', 1)", s("abcdef"), None),
            ("SUBSTRING('abcdef', 2)", s("bcdef"), None),
            ("SUBSTRING('abcdef', 6)", s("f"), None),
            ("SUBSTRING('abcdef', -6)", s("abcdef"), None),
            ("SUBSTRING('Sakila', -3)", s("ila"), None),
            ("SUBSTRING('abcdef', 2, 4)", s("bcde"), None),
            ("SUBSTRING('Sakila', -5, 3)", s("aki"), None),
            ("SUBSTRING('abcdef', 2, 100)", s("bcdef"), None),
            ("SUBSTRING('abcdef', 2, 0)", s(""), None),
            ("SUBSTRING('abc', 1, 2147483647)", s("abc"), None),
            ("SUBSTRING('ÄbÇd', 2, 2)", s("bÇ"), None),
            ("SUBSTRING('abc', 0)", s(""), None),
            ("SUBSTRING('abc', 0, 1)", s(""), None),
            ("SUBSTRING('abcdef', 7)", s(""), Some(FunctionEvaluation)),
            ("SUBSTRING('abcdef', 10)", s(""), Some(FunctionEvaluation)),
            ("SUBSTRING('abcdef', -10)", s(""), Some(FunctionEvaluation)),
            (
                "SUBSTRING('abcdef', 10, 10)",
                s(""),
                Some(FunctionEvaluation),
            ),
            (
                "SUBSTRING('abcdef', -10, 10)",
                s(""),
                Some(FunctionEvaluation),
            ),
            (
                "SUBSTRING('abcdef', 2, -1)",
                s(""),
                Some(FunctionEvaluation),
            ),
            ("SUBSTRING('abc', 0, -1)", s(""), Some(FunctionEvaluation)),
            ("SUBSTRING('', 1)", s(""), Some(FunctionEvaluation)),
            (
                "SUBSTRING('abc', -2147483648)",
                s(""),
                Some(FunctionEvaluation),
            ),
            (
                "SUBSTRING('abc', 2147483647, 2147483647)",
                s(""),
                Some(FunctionEvaluation),
            ),
            ("SUBSTRING(type, 1, 3) = 'com'", b(true), None),
            ("LENGTH(CONCAT(region, '-x')) = 11", b(true), None),
        ],
    );
}

#[test]
fn cast_and_math_functions_cover_their_edge_cases() {
    check_cases(
        &full_event(),
        &[
            ("INT('1')", i(1), None),
            ("INT('-1')", i(-1), None),
            ("INT('+5')", i(5), None),
            ("INT(' 1')", i(0), Some(Cast)),
            ("INT('2147483648')", i(0), Some(Cast)),
            ("INT('ABC')", i(0), Some(Cast)),
            ("INT(TRUE)", i(1), None),
            ("INT(FALSE)", i(0), None),
            ("int(numstr)", i(42), None),
            ("INT(missing)", i(0), Some(MissingAttribute)),
            ("BOOL('TRUE')", b(true), None),
            ("BOOL('fAlSe')", b(false), None),
            ("BOOL('yes')", b(false), Some(Cast)),
            ("BOOL(0)", b(false), None),
            ("BOOL(-50)", b(true), None),
            ("BOOL(flag)", b(true), None),
            ("STRING(TRUE)", s("true"), None),
            ("STRING(FALSE)", s("false"), None),
            ("STRING(-1)", s("-1"), None),
            ("STRING(priority)", s("7"), None),
            ("STRING('abc')", s("abc"), None),
            ("ABS(10)", i(10), None),
            ("ABS(-10)", i(10), None),
            ("ABS(0)", i(0), None),
            ("ABS(-2147483648)", i(i32::MAX), Some(Math)),
            ("ABS('-5')", i(5), None),
            ("ABS('x')", i(0), Some(Cast)),
            ("ABS(1/0)", i(0), Some(Math)),
            ("ABS(-2147483648) + 1", i(0), Some(Math)),
            ("FOO(1)", b(false), Some(MissingFunction)),
            ("foo()", b(false), Some(MissingFunction)),
            ("LENGTH('a', 'b')", b(false), Some(MissingFunction)),
            ("SUBSTRING('a')", b(false), Some(MissingFunction)),
            ("NOT FOO()", b(false), Some(MissingFunction)),
            ("LENGTH ('abc')", i(3), None),
        ],
    );
}

#[test]
fn spec_example_filters() {
    let event = EventBuilderV10::new()
        .id("1")
        .source("s")
        .ty("t")
        .extension("hop", "5")
        .extension("ttl", "10")
        .extension("sequence", "10")
        .extension("firstname", "Francesco")
        .extension("lastname", "Guardiani")
        .build()
        .expect("valid event");
    check_cases(
        &event,
        &[
            ("int(hop) < int(ttl) and int(hop) < 1000", b(true), None),
            ("hop < ttl", b(true), None),
            ("sequence = 10", b(true), None),
            ("firstname = 'Francesco'", b(true), None),
            (
                "(firstname = 'Francesco' AND lastname = 'Guardiani') OR subject = 'Francesco Guardiani'",
                b(true),
                None,
            ),
            ("EXISTS subject", b(false), None),
        ],
    );
}

#[test]
fn typical_filter_passes_and_fails_as_expected() {
    let expr = Expression::parse(
        "type = 'com.example.order.created' AND source LIKE '/orders/%' AND (priority > 5 OR EXISTS urgent)",
    )
    .expect("valid filter");
    assert!(expr.is_boolean());
    assert!(expr.matches(&full_event()));
    assert!(expr.evaluate(&full_event()).passes());
    assert!(!expr.matches(&minimal_event()));
    let ev = EventBuilderV10::new()
        .id("1")
        .source("/orders/1")
        .ty("com.example.order.created")
        .build()
        .expect("valid event");
    // priority missing → MissingAttribute → does not pass, even though EXISTS urgent is false.
    let evaluation = expr.evaluate(&ev);
    assert_eq!(evaluation.value, b(false));
    assert_eq!(evaluation.errors.len(), 1);
    assert_eq!(evaluation.errors[0].kind(), MissingAttribute);
    assert!(!evaluation.passes());
    assert!(!expr.matches(&ev));
}

#[test]
fn return_types_are_known_statically() {
    let ty = |e: &str| Expression::parse(e).expect("valid").return_type();
    assert_eq!(ty("a = 1"), Type::Boolean);
    assert_eq!(ty("EXISTS a"), Type::Boolean);
    assert_eq!(ty("a LIKE 'x'"), Type::Boolean);
    assert_eq!(ty("a IN (1)"), Type::Boolean);
    assert_eq!(ty("NOT a"), Type::Boolean);
    assert_eq!(ty("FOO()"), Type::Boolean);
    assert_eq!(ty("1 + a"), Type::Integer);
    assert_eq!(ty("-a"), Type::Integer);
    assert_eq!(ty("LENGTH(a)"), Type::Integer);
    assert_eq!(ty("CONCAT(a)"), Type::String);
    assert_eq!(ty("'x'"), Type::String);
    assert_eq!(ty("a"), Type::Any);
    assert!(!Expression::parse("a").expect("valid").is_boolean());
    assert!(Expression::parse("a AND b").expect("valid").is_boolean());
}

#[test]
fn errors_expose_kind_message_and_display() {
    let err = Expression::parse("(1 + 2").expect_err("unbalanced");
    assert_eq!(err.kind(), ErrorKind::Parse);
    assert_eq!(err.position(), Some(6));
    assert!(err.message().contains("')'"), "{}", err.message());
    assert!(
        err.to_string().starts_with("parse error at position 6: "),
        "{err}"
    );
    let ev = run("5 / 0", &full_event());
    let e = &ev.errors[0];
    assert_eq!(e.kind(), Math);
    assert_eq!(e.position(), None);
    assert_eq!(e.to_string(), format!("math error: {}", e.message()));
    let ev = run("missing", &full_event());
    assert!(ev.errors[0].message().contains("'missing'"));
}

#[test]
fn value_display_and_conversions() {
    assert_eq!(b(true).to_string(), "true");
    assert_eq!(i(-3).to_string(), "-3");
    assert_eq!(s("a'b").to_string(), "a'b");
    assert_eq!(Value::from(true), b(true));
    assert_eq!(Value::from(3), i(3));
    assert_eq!(Value::from("x"), s("x"));
    assert_eq!(s("x").value_type(), Type::String);
}

// ---------------------------------------------------------------------------------------------
// Parse errors
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_inputs_are_parse_errors_with_positions() {
    let cases: &[(&str, usize)] = &[
        ("", 0),
        ("   ", 0),
        ("1 +", 3),
        ("(1 + 2", 6),
        ("1 + 2)", 5),
        ("'abc", 0),
        ("x = \"abc", 4),
        ("x LIKE 5", 7),
        ("x LIKE y", 7),
        ("x LIKE", 6),
        ("x LIKE ('a')", 7),
        ("x IN ()", 6),
        ("x IN 1", 5),
        ("x IN (1, )", 9),
        ("x IN (1", 7),
        ("2147483648", 0),
        ("-2147483649", 0),
        ("1 + 99999999999", 4),
        ("a ! b", 2),
        ("a == b", 3),
        ("EXISTS 1", 7),
        ("EXISTS", 6),
        ("EXISTS f(x)", 8),
        ("my_ext = 1", 0),
        ("f1(x)", 0),
        ("a NOT b", 2),
        ("TRUE FALSE", 5),
        ("+x", 0),
        ("1 # 2", 2),
        ("LENGTH('a'", 10),
        ("LENGTH('a' 'b')", 11),
        ("ÄB", 0),
        ("NOT", 3),
        ("a AND", 5),
        ("()", 1),
        ("1 2", 2),
        ("x = 'a\\'", 4),
    ];
    let mut failures = Vec::new();
    for (input, pos) in cases {
        match Expression::parse(input) {
            Ok(e) => failures.push(format!("{input:?} parsed as {e}")),
            Err(err) => {
                if err.kind() != ErrorKind::Parse || err.position() != Some(*pos) {
                    failures.push(format!("{input:?}: expected position {pos}, got {err}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn nesting_deeper_than_the_limit_is_a_parse_error() {
    // Run on an explicit 2 MiB stack (the default for spawned threads) to pin the guarantee that
    // the deepest accepted expressions parse, evaluate, print and drop there, even unoptimised.
    let worker = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(|| {
            let event = full_event();
            let max = MAX_NESTING_DEPTH;
            let accepted = [
                format!("{}1{}", "(".repeat(max - 1), ")".repeat(max - 1)),
                format!("{}TRUE", "NOT ".repeat(max - 1)),
                format!("{}1", "-".repeat(max - 1)),
                vec!["1"; max].join(" + "),
                format!("{}1{}", "ABS(".repeat(max - 1), ")".repeat(max - 1)),
                format!("{}1{}", "(-".repeat(max / 2 - 1), ")".repeat(max / 2 - 1)),
            ];
            for text in &accepted {
                let e =
                    Expression::parse(text).unwrap_or_else(|err| panic!("{}…: {err}", &text[..20]));
                assert_total(&e, std::slice::from_ref(&event));
                let printed = e.to_string();
                assert_eq!(Expression::parse(&printed).ok(), Some(e));
            }
            let rejected = [
                format!("{}1{}", "(".repeat(max + 1), ")".repeat(max + 1)),
                format!("{}TRUE", "NOT ".repeat(max + 1)),
                vec!["1"; max + 2].join(" + "),
                "(".repeat(100_000),
                "-".repeat(100_000),
                "NOT ".repeat(100_000),
                vec!["TRUE"; 10_000].join(" AND FALSE OR "),
            ];
            for text in &rejected {
                let err = Expression::parse(text).expect_err("too deep");
                assert_eq!(err.kind(), ErrorKind::Parse);
            }
            // Chains of one logic operator are flat: far longer than the depth limit is fine.
            let logic = vec!["TRUE"; 10_000].join(" AND ");
            assert!(Expression::parse(&logic).expect("flat").matches(&event));
            let logic = vec!["FALSE"; 10_000].join(" or ");
            assert!(!Expression::parse(&logic).expect("flat").matches(&event));
        })
        .expect("spawn");
    worker
        .join()
        .expect("deep expressions stay within a 2 MiB stack");
}

// ---------------------------------------------------------------------------------------------
// Canonical printing
// ---------------------------------------------------------------------------------------------

#[test]
fn display_prints_canonical_cesql() {
    let cases: &[(&str, &str)] = &[
        ("tRuE", "TRUE"),
        ("EXISTS SOURCE", "EXISTS source"),
        ("a and b or c", "a AND b OR c"),
        ("(a AND b) OR c", "(a AND b) OR c"),
        ("a AND (b OR c)", "a AND b OR c"),
        ("1 + 2 * 3", "1 + 2 * 3"),
        ("(1 + 2) * 3", "(1 + 2) * 3"),
        ("1 - (2 - 3)", "1 - (2 - 3)"),
        ("(1 - 2) - 3", "1 - 2 - 3"),
        ("- 5", "- 5"),
        ("--10", "--10"),
        ("-(-(5))", "-- 5"),
        ("-(a + 1)", "-(a + 1)"),
        (r"x not like 'a\_b'", r"x NOT LIKE 'a\_b'"),
        (r"'a\\'", r"'a\\'"),
        ("x IN (1,2)", "x IN (1, 2)"),
        ("x not in ('a')", "x NOT IN ('a')"),
        ("concat_ws('-', a)", "CONCAT_WS('-', a)"),
        ("foo()", "FOO()"),
        ("\"it's\"", r"'it\'s'"),
        ("NOT (a = b)", "NOT (a = b)"),
        ("(NOT a) = b", "NOT a = b"),
        ("a IN (1) LIKE 'x'", "(a IN (1)) LIKE 'x'"),
        ("1 + 2 LIKE '3'", "1 + 2 LIKE '3'"),
        ("a <> b", "a != b"),
        ("Priority >= 5", "priority >= 5"),
    ];
    for (input, canonical) in cases {
        let e = Expression::parse(input).expect("valid");
        assert_eq!(e.to_string(), *canonical, "printing {input:?}");
        assert_eq!(
            Expression::parse(canonical).expect("canonical reparses"),
            e,
            "round trip of {input:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------------

const KEYWORDS: [&str; 9] = [
    "and", "or", "xor", "not", "like", "exists", "in", "true", "false",
];

fn arb_text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(vec![
            'a', 'b', 'Z', '0', ' ', '\'', '"', '\\', '%', '_', 'ä', '\n', ',', '(',
        ]),
        0..8,
    )
    .prop_map(String::from_iter)
}

fn arb_attr() -> impl Strategy<Value = Attr> {
    prop_oneof![
        proptest::sample::select(vec![
            "id",
            "source",
            "specversion",
            "type",
            "datacontenttype",
            "dataschema",
            "subject",
            "time",
            "data",
            "priority",
            "urgent",
            "region",
            "big",
            "missing",
            "length",
        ])
        .prop_map(Attr::resolve),
        "[a-z0-9]{1,6}"
            .prop_filter("not a keyword or a number", |n| {
                !KEYWORDS.contains(&n.as_str()) && !n.bytes().all(|b| b.is_ascii_digit())
            })
            .prop_map(|n| Attr::resolve(&n)),
    ]
}

fn arb_leaf() -> impl Strategy<Value = Node> {
    prop_oneof![
        any::<bool>().prop_map(|v| Node::Literal(Literal::Bool(v))),
        any::<i32>().prop_map(|v| Node::Literal(Literal::Int(v))),
        prop_oneof![Just(0), Just(1), Just(-1), Just(2), Just(i32::MIN)]
            .prop_map(|v| Node::Literal(Literal::Int(v))),
        arb_text().prop_map(|v| Node::Literal(Literal::Str(v.into_boxed_str()))),
        arb_attr().prop_map(Node::Attribute),
        arb_attr().prop_map(Node::Exists),
    ]
}

const BUILTINS: [(Builtin, usize, usize); 14] = [
    (Builtin::Length, 1, 1),
    (Builtin::Concat, 0, 3),
    (Builtin::ConcatWs, 1, 3),
    (Builtin::Lower, 1, 1),
    (Builtin::Upper, 1, 1),
    (Builtin::Trim, 1, 1),
    (Builtin::Left, 2, 2),
    (Builtin::Right, 2, 2),
    (Builtin::Substring, 2, 2),
    (Builtin::SubstringLen, 3, 3),
    (Builtin::Int, 1, 1),
    (Builtin::Bool, 1, 1),
    (Builtin::String, 1, 1),
    (Builtin::Abs, 1, 1),
];

fn arb_node() -> impl Strategy<Value = Node> {
    arb_leaf().prop_recursive(6, 64, 4, |inner| {
        let bin_ops = proptest::sample::select(vec![
            BinOp::Mul,
            BinOp::Div,
            BinOp::Mod,
            BinOp::Add,
            BinOp::Sub,
            BinOp::Eq,
            BinOp::Ne,
            BinOp::Lt,
            BinOp::Le,
            BinOp::Gt,
            BinOp::Ge,
        ]);
        let logic_ops = proptest::sample::select(vec![LogicOp::And, LogicOp::Or, LogicOp::Xor]);
        prop_oneof![
            inner.clone().prop_map(|n| Node::Not(Box::new(n))),
            inner.clone().prop_map(|n| Node::Negate(Box::new(n))),
            (bin_ops, inner.clone(), inner.clone()).prop_map(|(op, l, r)| Node::Binary(
                op,
                Box::new(l),
                Box::new(r)
            )),
            (logic_ops, inner.clone(), inner.clone()).prop_map(|(op, l, r)| Node::logic(op, l, r)),
            (inner.clone(), arb_text(), any::<bool>()).prop_map(|(n, p, negated)| Node::Like {
                operand: Box::new(n),
                pattern: Box::new(LikePattern::compile(&p)),
                negated,
            }),
            (
                inner.clone(),
                proptest::collection::vec(inner.clone(), 1..4),
                any::<bool>()
            )
                .prop_map(|(n, set, negated)| Node::In {
                    operand: Box::new(n),
                    set: set.into_boxed_slice(),
                    negated,
                }),
            (
                proptest::sample::select(BUILTINS.to_vec()),
                any::<usize>(),
                proptest::collection::vec(inner.clone(), 3)
            )
                .prop_map(|((function, min, max), seed, mut args)| {
                    args.truncate(min + seed % (max - min + 1));
                    Node::Call {
                        function,
                        args: args.into_boxed_slice(),
                    }
                }),
            (
                proptest::sample::select(vec!["FOO", "MY_FN", "X"]),
                proptest::collection::vec(inner, 0..3)
            )
                .prop_map(|(name, args)| Node::MissingFunction {
                    name: name.into(),
                    args: args.into_boxed_slice(),
                }),
        ]
    })
}

/// Token soup: mostly-valid fragments that reach deep into the parser and evaluator.
fn arb_token_soup() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        proptest::sample::select(vec![
            "(",
            ")",
            ",",
            "NOT",
            "-",
            "+",
            "*",
            "/",
            "%",
            "=",
            "!=",
            "<>",
            "<",
            "<=",
            ">",
            ">=",
            "AND",
            "OR",
            "XOR",
            "LIKE",
            "IN",
            "EXISTS",
            "TRUE",
            "false",
            "0",
            "1",
            "-1",
            "2147483647",
            "-2147483648",
            "'a%'",
            "'_b'",
            "''",
            "\"x\"",
            "'10'",
            "'true'",
            "id",
            "type",
            "priority",
            "urgent",
            "big",
            "missing",
            "time",
            "data",
            "ABS",
            "SUBSTRING",
            "LEFT",
            "RIGHT",
            "CONCAT",
            "CONCAT_WS",
            "LENGTH",
            "INT",
            "BOOL",
            "STRING",
            "TRIM",
            "UPPER",
            "LOWER",
            "FOO",
        ]),
        0..16,
    )
    .prop_map(|tokens| tokens.join(" "))
}

fn events() -> Vec<Event> {
    let odd = EventBuilderV10::new()
        .id("")
        .source("x")
        .ty("")
        .extension("priority", "not a number")
        .extension("urgent", i64::MIN)
        .extension("big", -1i64)
        .build()
        .expect("valid event");
    vec![full_event(), minimal_event(), odd]
}

fn assert_total(expr: &Expression, events: &[Event]) {
    for event in events {
        let evaluation = expr.evaluate(event);
        assert!(evaluation.errors.len() <= 1);
        assert_eq!(expr.matches(event), evaluation.passes(), "{expr}");
    }
}

/// Reference `LIKE` semantics: straightforward backtracking over characters.
fn like_reference(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy)]
    enum P {
        Lit(char),
        One,
        Many,
    }
    let mut ps = Vec::new();
    let mut it = pattern.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\\' if matches!(it.peek(), Some('%' | '_')) => {
                ps.push(P::Lit(it.next().expect("peeked")));
            }
            '%' => ps.push(P::Many),
            '_' => ps.push(P::One),
            c => ps.push(P::Lit(c)),
        }
    }
    fn go(p: &[P], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(P::Many) => (0..=t.len()).any(|k| go(&p[1..], &t[k..])),
            Some(P::One) => !t.is_empty() && go(&p[1..], &t[1..]),
            Some(P::Lit(c)) => t.first() == Some(c) && go(&p[1..], &t[1..]),
        }
    }
    let t: Vec<char> = text.chars().collect();
    go(&ps, &t)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn printing_then_parsing_a_tree_gives_the_same_tree(node in arb_node()) {
        let text = node.to_string();
        let parsed = parser::parse(&text);
        prop_assert!(parsed.is_ok(), "{text:?} failed to parse: {:?}", parsed);
        prop_assert_eq!(parsed.expect("checked"), node, "printed as {:?}", text);
    }

    #[test]
    fn evaluating_generated_trees_never_panics(node in arb_node()) {
        let expr = Expression { root: node };
        assert_total(&expr, &events());
    }

    #[test]
    fn arbitrary_strings_never_panic(input in any::<String>()) {
        if let Ok(expr) = Expression::parse(&input) {
            assert_total(&expr, &events());
        }
    }

    #[test]
    fn token_soup_never_panics_and_round_trips(input in arb_token_soup()) {
        if let Ok(expr) = Expression::parse(&input) {
            assert_total(&expr, &events());
            let printed = expr.to_string();
            prop_assert_eq!(Expression::parse(&printed).ok(), Some(expr), "{:?}", printed);
        }
    }

    #[test]
    fn like_agrees_with_a_reference_matcher(
        pattern in "[ab%_\\\\ä]{0,8}",
        text in "[ab%_\\\\ä]{0,8}",
    ) {
        prop_assert_eq!(
            LikePattern::compile(&pattern).matches(&text),
            like_reference(&pattern, &text),
            "{:?} LIKE {:?}", text, pattern
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Benchmark
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "benchmark: cargo test --release -- --ignored --nocapture bench_"]
fn bench_typical_filter_throughput() {
    use std::hint::black_box;
    use std::time::Instant;

    let expr = Expression::parse(
        "type = 'com.example.order.created' AND source LIKE '/orders/%' AND (priority > 5 OR EXISTS urgent)",
    )
    .expect("valid filter");
    let event = EventBuilderV10::new()
        .id("A234-1234-1234")
        .source("/orders/123")
        .ty("com.example.order.created")
        .time("2018-04-26T14:48:09+02:00")
        .extension("priority", 7i64)
        .extension("urgent", true)
        .extension("region", "eu-west-1")
        .extension("tenant", "acme")
        .build()
        .expect("valid event");
    let no_priority = EventBuilderV10::new()
        .id("A234-1234-1234")
        .source("/orders/123")
        .ty("com.example.order.created")
        .extension("urgent", true)
        .extension("region", "eu-west-1")
        .build()
        .expect("valid event");
    assert!(expr.matches(&event));

    const N: u32 = 5_000_000;
    let measure = |name: &str, f: &dyn Fn() -> bool| {
        for _ in 0..N / 10 {
            black_box(f());
        }
        let start = Instant::now();
        let mut passed = 0u32;
        for _ in 0..N {
            passed += u32::from(black_box(f()));
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{name}: {N} evaluations in {secs:.3} s = {:.2} M evaluations/s ({passed} passed)",
            f64::from(N) / secs / 1e6
        );
    };
    measure("evaluate().passes() [passing event]", &|| {
        black_box(&expr).evaluate(black_box(&event)).passes()
    });
    measure("matches() [passing event]", &|| {
        black_box(&expr).matches(black_box(&event))
    });
    measure("evaluate().passes() [missing priority → error]", &|| {
        black_box(&expr).evaluate(black_box(&no_priority)).passes()
    });
    measure("matches() [missing priority → error]", &|| {
        black_box(&expr).matches(black_box(&no_priority))
    });
}
