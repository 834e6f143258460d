//! A span's OTLP/JSON, written straight from the borrowed [`SpanRecord`]: the same bytes as
//! `opentelemetry-proto`'s serde writes for the `Span` message built from it (camelCase keys in the
//! message's field order, ids in lower-case hex, 64-bit integers as strings, enums as integers,
//! every field present), without building that message first. Strings and doubles go through
//! `serde_json` itself, so escaping and number formatting are its own.

use filament_plugin_api::{KeyValue, SpanKind, SpanRecord, StatusCode, Value};
use serde_json::Result;
use std::io::Write;

/// Appends the JSON of `span` as an OTLP `Span` message.
pub(crate) fn span(out: &mut Vec<u8>, span: &SpanRecord<'_>) -> Result<()> {
    out.extend_from_slice(br#"{"traceId":""#);
    hex(out, &span.trace_id.0);
    out.extend_from_slice(br#"","spanId":""#);
    hex(out, &span.span_id.0);
    out.extend_from_slice(br#"","traceState":"#);
    string(out, span.trace_state.as_str())?;
    out.extend_from_slice(br#","parentSpanId":""#);
    if !span.parent_span_id.is_zero() {
        hex(out, &span.parent_span_id.0);
    }
    out.extend_from_slice(br#"","flags":"#);
    number(
        out,
        super::span_flags(span.trace_flags, span.parent_is_remote),
    )?;
    out.extend_from_slice(br#","name":"#);
    string(out, span.name.as_str())?;
    out.extend_from_slice(br#","kind":"#);
    number(out, kind(span.kind))?;
    out.extend_from_slice(br#","startTimeUnixNano":"#);
    quoted_number(out, span.start_time_unix_nano)?;
    out.extend_from_slice(br#","endTimeUnixNano":"#);
    quoted_number(out, span.end_time_unix_nano)?;
    out.extend_from_slice(br#","attributes":"#);
    attributes(out, &span.attributes)?;
    out.extend_from_slice(br#","droppedAttributesCount":"#);
    number(out, span.dropped_attributes_count)?;
    out.extend_from_slice(br#","events":["#);
    for (index, event) in span.events.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"timeUnixNano":"#);
        quoted_number(out, event.time_unix_nano)?;
        out.extend_from_slice(br#","name":"#);
        string(out, event.name.as_str())?;
        out.extend_from_slice(br#","attributes":"#);
        attributes(out, &event.attributes)?;
        out.extend_from_slice(br#","droppedAttributesCount":"#);
        number(out, event.dropped_attributes_count)?;
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"droppedEventsCount":"#);
    number(out, span.dropped_events_count)?;
    out.extend_from_slice(br#","links":["#);
    for (index, link) in span.links.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"traceId":""#);
        hex(out, &link.trace_id.0);
        out.extend_from_slice(br#"","spanId":""#);
        hex(out, &link.span_id.0);
        out.extend_from_slice(br#"","traceState":"#);
        string(out, link.trace_state.as_str())?;
        out.extend_from_slice(br#","attributes":"#);
        attributes(out, &link.attributes)?;
        out.extend_from_slice(br#","droppedAttributesCount":"#);
        number(out, link.dropped_attributes_count)?;
        out.extend_from_slice(br#","flags":"#);
        number(out, super::span_flags(link.trace_flags, link.is_remote))?;
        out.push(b'}');
    }
    out.extend_from_slice(br#"],"droppedLinksCount":"#);
    number(out, span.dropped_links_count)?;
    out.extend_from_slice(br#","status":{"message":"#);
    string(out, span.status.description.as_str())?;
    out.extend_from_slice(br#","code":"#);
    number(out, status_code(span.status.code))?;
    out.extend_from_slice(b"}}");
    Ok(())
}

/// OTLP's `SpanKind` numbers.
fn kind(kind: SpanKind) -> i32 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

/// OTLP's `Status.StatusCode` numbers.
fn status_code(code: StatusCode) -> i32 {
    match code {
        StatusCode::Unset => 0,
        StatusCode::Ok => 1,
        StatusCode::Error => 2,
    }
}

fn attributes(out: &mut Vec<u8>, attributes: &[KeyValue<'_>]) -> Result<()> {
    out.push(b'[');
    for (index, kv) in attributes.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"key":"#);
        string(out, kv.key.as_str())?;
        out.extend_from_slice(br#","value":"#);
        value(out, &kv.value)?;
        out.push(b'}');
    }
    out.push(b']');
    Ok(())
}

/// An `AnyValue`: `{"<kind>Value":…}`, integers as strings, arrays as `{"values":[AnyValue…]}`.
fn value(out: &mut Vec<u8>, value: &Value<'_>) -> Result<()> {
    match value {
        Value::Bool(b) => scalar_bool(out, *b),
        Value::I64(i) => scalar_int(out, *i)?,
        Value::F64(f) => scalar_double(out, *f)?,
        Value::Str(s) => scalar_string(out, s.as_str())?,
        Value::BoolArray(a) => array(out, a, |out, b| {
            scalar_bool(out, *b);
            Ok(())
        })?,
        Value::I64Array(a) => array(out, a, |out, i| scalar_int(out, *i))?,
        Value::F64Array(a) => array(out, a, |out, f| scalar_double(out, *f))?,
        Value::StrArray(a) => array(out, a, |out, s| scalar_string(out, s.as_str()))?,
    }
    Ok(())
}

fn array<T>(
    out: &mut Vec<u8>,
    items: &[T],
    mut item: impl FnMut(&mut Vec<u8>, &T) -> Result<()>,
) -> Result<()> {
    out.extend_from_slice(br#"{"arrayValue":{"values":["#);
    for (index, element) in items.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        item(out, element)?;
    }
    out.extend_from_slice(b"]}}");
    Ok(())
}

fn scalar_bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b {
        br#"{"boolValue":true}"#
    } else {
        br#"{"boolValue":false}"#
    });
}

fn scalar_int(out: &mut Vec<u8>, i: i64) -> Result<()> {
    out.extend_from_slice(br#"{"intValue":"#);
    quoted_number(out, i)?;
    out.push(b'}');
    Ok(())
}

fn scalar_double(out: &mut Vec<u8>, f: f64) -> Result<()> {
    out.extend_from_slice(br#"{"doubleValue":"#);
    serde_json::to_writer(&mut *out, &f)?;
    out.push(b'}');
    Ok(())
}

fn scalar_string(out: &mut Vec<u8>, s: &str) -> Result<()> {
    out.extend_from_slice(br#"{"stringValue":"#);
    string(out, s)?;
    out.push(b'}');
    Ok(())
}

fn string(out: &mut Vec<u8>, s: &str) -> Result<()> {
    serde_json::to_writer(out, s)
}

/// An integer, in decimal: what `serde_json` writes for one (`Display` of the integer types is the
/// same).
fn number(out: &mut Vec<u8>, n: impl std::fmt::Display) -> Result<()> {
    write!(out, "{n}").map_err(serde_json::Error::io)
}

/// A 64-bit integer as OTLP/JSON writes it: a decimal string.
fn quoted_number(out: &mut Vec<u8>, n: impl std::fmt::Display) -> Result<()> {
    write!(out, "\"{n}\"").map_err(serde_json::Error::io)
}

fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)]);
        out.push(DIGITS[usize::from(byte & 0xf)]);
    }
}
