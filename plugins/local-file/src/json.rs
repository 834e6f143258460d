//! A span's OTLP/JSON, written straight from the borrowed [`SpanRecord`]: what
//! `opentelemetry-proto`'s serde writes for the `Span` message built from it (camelCase keys in the
//! message's field order, ids in lower-case hex, 64-bit integers as strings, enums as integers),
//! less every field that holds its default value (empty strings and lists, zero counts, an unset
//! status), which proto3's JSON mapping lets a writer leave out and every reader restores: a task
//! span's line is half the size. Built without the message; strings that need escaping and doubles
//! go through `serde_json` itself, so escaping and number formatting are its own; integers go
//! through `itoa`, which `serde_json` uses for them too.

use filament_plugin_api::{KeyValue, Scope, SpanKind, SpanRecord, StatusCode, Value};
use serde_json::Result;

/// Appends the JSON of `span` as an OTLP `Span` message; its attributes through `memo` when given.
pub(crate) fn span(
    out: &mut Vec<u8>,
    span: &SpanRecord<'_>,
    memo: Option<&mut AttributeMemo>,
) -> Result<()> {
    let mut o = Object::new(out);
    o.hex("traceId", &span.trace_id.0);
    o.hex("spanId", &span.span_id.0);
    o.string("traceState", span.trace_state.as_str())?;
    if !span.parent_span_id.is_zero() {
        o.hex("parentSpanId", &span.parent_span_id.0);
    }
    o.number(
        "flags",
        super::span_flags(span.trace_flags, span.parent_is_remote),
    )?;
    o.string("name", span.name.as_str())?;
    o.number("kind", kind(span.kind))?;
    o.quoted_number("startTimeUnixNano", span.start_time_unix_nano)?;
    o.quoted_number("endTimeUnixNano", span.end_time_unix_nano)?;
    match memo {
        Some(memo) if !span.attributes.is_empty() => {
            o.key("attributes");
            memo.attributes(o.out, &span.attributes)?;
        }
        _ => o.attributes("attributes", &span.attributes)?,
    }
    o.number("droppedAttributesCount", span.dropped_attributes_count)?;
    if !span.events.is_empty() {
        o.key("events");
        o.out.push(b'[');
        for (index, event) in span.events.iter().enumerate() {
            if index > 0 {
                o.out.push(b',');
            }
            let mut e = Object::new(o.out);
            e.quoted_number("timeUnixNano", event.time_unix_nano)?;
            e.string("name", event.name.as_str())?;
            e.attributes("attributes", &event.attributes)?;
            e.number("droppedAttributesCount", event.dropped_attributes_count)?;
            e.end();
        }
        o.out.push(b']');
    }
    o.number("droppedEventsCount", span.dropped_events_count)?;
    if !span.links.is_empty() {
        o.key("links");
        o.out.push(b'[');
        for (index, link) in span.links.iter().enumerate() {
            if index > 0 {
                o.out.push(b',');
            }
            let mut l = Object::new(o.out);
            l.hex("traceId", &link.trace_id.0);
            l.hex("spanId", &link.span_id.0);
            l.string("traceState", link.trace_state.as_str())?;
            l.attributes("attributes", &link.attributes)?;
            l.number("droppedAttributesCount", link.dropped_attributes_count)?;
            l.number("flags", super::span_flags(link.trace_flags, link.is_remote))?;
            l.end();
        }
        o.out.push(b']');
    }
    o.number("droppedLinksCount", span.dropped_links_count)?;
    let code = status_code(span.status.code);
    let message = span.status.description.as_str();
    if code != 0 || !message.is_empty() {
        o.key("status");
        let mut s = Object::new(o.out);
        s.string("message", message)?;
        s.number("code", code)?;
        s.end();
    }
    o.end();
    Ok(())
}

/// Appends the JSON of a `Resource` message with these attributes.
pub(crate) fn resource(out: &mut Vec<u8>, attributes: &[KeyValue<'_>]) -> Result<()> {
    let mut o = Object::new(out);
    o.attributes("attributes", attributes)?;
    o.end();
    Ok(())
}

/// Appends the JSON of an `InstrumentationScope` message.
pub(crate) fn scope(out: &mut Vec<u8>, scope: &Scope<'_>) -> Result<()> {
    let mut o = Object::new(out);
    o.string("name", scope.name.as_str())?;
    o.string("version", scope.version.as_str())?;
    o.attributes("attributes", &scope.attributes)?;
    o.end();
    Ok(())
}

/// A JSON object being written, whose fields are left out when they hold their default value
/// (proto3's JSON mapping lets a writer omit them; every reader takes them as the default).
pub(crate) struct Object<'o> {
    pub(crate) out: &'o mut Vec<u8>,
    first: bool,
}

impl<'o> Object<'o> {
    pub(crate) fn new(out: &'o mut Vec<u8>) -> Self {
        out.push(b'{');
        Object { out, first: true }
    }

    /// Writes `"name":`, after a comma unless it is the first field.
    // Inlined, so that the field names are constants and their copies a few moves.
    #[inline(always)]
    pub(crate) fn key(&mut self, name: &str) {
        if !std::mem::take(&mut self.first) {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub(crate) fn end(self) {
        self.out.push(b'}');
    }

    // Inlined, so that the field names are constants and their copies a few moves.
    #[inline(always)]
    fn hex(&mut self, name: &str, bytes: &[u8]) {
        self.key(name);
        self.out.push(b'"');
        hex(self.out, bytes);
        self.out.push(b'"');
    }

    // Inlined, so that the field names are constants and their copies a few moves.
    #[inline(always)]
    pub(crate) fn string(&mut self, name: &str, s: &str) -> Result<()> {
        if s.is_empty() {
            return Ok(());
        }
        self.key(name);
        string(self.out, s)
    }

    // Inlined, so that the field names are constants and their copies a few moves.
    #[inline(always)]
    fn number<N: itoa::Integer + Default + PartialEq>(&mut self, name: &str, n: N) -> Result<()> {
        if n == N::default() {
            return Ok(());
        }
        self.key(name);
        number(self.out, n)
    }

    // Inlined, so that the field names are constants and their copies a few moves.
    #[inline(always)]
    fn quoted_number<N: itoa::Integer + Default + PartialEq>(
        &mut self,
        name: &str,
        n: N,
    ) -> Result<()> {
        if n == N::default() {
            return Ok(());
        }
        self.key(name);
        quoted_number(self.out, n)
    }

    fn attributes(&mut self, name: &str, list: &[KeyValue<'_>]) -> Result<()> {
        if list.is_empty() {
            return Ok(());
        }
        self.key(name);
        attributes(self.out, list)
    }
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
        attribute(out, kv)?;
    }
    out.push(b']');
    Ok(())
}

/// One `KeyValue` message.
fn attribute(out: &mut Vec<u8>, kv: &KeyValue<'_>) -> Result<()> {
    // The key even when empty: `opentelemetry-proto`'s reader requires it.
    let mut o = Object::new(out);
    o.key("key");
    string(o.out, kv.key.as_str())?;
    o.key("value");
    value(o.out, &kv.value)?;
    o.end();
    Ok(())
}

/// The JSON of the scalar attributes of the last span, by position: most of a span's attributes
/// are the same from span to span (a process's ids, the function's name), and comparing an
/// attribute with the last one at its place is much cheaper than encoding it. What it appends is
/// byte for byte what encoding would.
#[derive(Debug, Default)]
pub(crate) struct AttributeMemo {
    slots: Vec<Slot>,
}

#[derive(Debug, Default)]
struct Slot {
    key: Vec<u8>,
    value: Scalar,
    /// A string value's bytes.
    text: Vec<u8>,
    /// The attribute's JSON.
    json: Vec<u8>,
}

/// A remembered attribute value: only scalars (arrays are always encoded).
#[derive(Debug, Default, PartialEq)]
enum Scalar {
    /// Nothing remembered.
    #[default]
    None,
    Bool(bool),
    I64(i64),
    /// By its bits: a NaN matches itself, `0.0` does not match `-0.0`.
    F64(u64),
    /// A string, whose bytes are in `Slot::text`.
    Str,
}

/// Strings longer than this are not remembered.
const MEMO_MAX_STRING: usize = 512;

impl Scalar {
    /// What is remembered of `value`: a string's kind only (its bytes are `Slot::text`), nothing
    /// of an array.
    fn of(value: &Value<'_>) -> Scalar {
        match value {
            Value::Bool(b) => Scalar::Bool(*b),
            Value::I64(i) => Scalar::I64(*i),
            Value::F64(f) => Scalar::F64(f.to_bits()),
            Value::Str(_) => Scalar::Str,
            _ => Scalar::None,
        }
    }
}

impl Slot {
    /// Whether `kv` is the remembered attribute.
    fn matches(&self, kv: &KeyValue<'_>) -> bool {
        let same_text = match &kv.value {
            Value::Str(s) => s.as_str().as_bytes() == self.text,
            _ => true,
        };
        self.value != Scalar::None
            && self.value == Scalar::of(&kv.value)
            && same_text
            && self.key == kv.key.as_str().as_bytes()
    }
}

impl AttributeMemo {
    /// Appends the JSON list of `attributes`, remembering each scalar one at its position.
    fn attributes(&mut self, out: &mut Vec<u8>, attributes: &[KeyValue<'_>]) -> Result<()> {
        if self.slots.len() < attributes.len() {
            self.slots.resize_with(attributes.len(), Slot::default);
        }
        out.push(b'[');
        for (index, (kv, slot)) in attributes.iter().zip(&mut self.slots).enumerate() {
            if index > 0 {
                out.push(b',');
            }
            if slot.matches(kv) {
                out.extend_from_slice(&slot.json);
                continue;
            }
            let start = out.len();
            attribute(out, kv)?;
            slot.value = match &kv.value {
                Value::Str(s) if s.len() > MEMO_MAX_STRING => Scalar::None,
                Value::Str(s) => {
                    slot.text.clear();
                    slot.text.extend_from_slice(s.as_str().as_bytes());
                    Scalar::Str
                }
                value => Scalar::of(value),
            };
            if slot.value != Scalar::None {
                slot.key.clear();
                slot.key.extend_from_slice(kv.key.as_str().as_bytes());
                slot.json.clear();
                slot.json.extend_from_slice(&out[start..]);
            }
        }
        out.push(b']');
        Ok(())
    }
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
    // `values` even when empty: `opentelemetry-proto`'s reader requires it.
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

/// A JSON string, as `serde_json` writes it. Most keys and values need no escaping (no control
/// character, quote or backslash: the only bytes `serde_json` escapes), and are copied whole after
/// one branch-free scan; the others go through `serde_json`.
fn string(out: &mut Vec<u8>, s: &str) -> Result<()> {
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\')
    });
    if !plain {
        return serde_json::to_writer(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// An integer, in decimal: what `serde_json` writes for one (it uses `itoa` too).
fn number(out: &mut Vec<u8>, n: impl itoa::Integer) -> Result<()> {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    Ok(())
}

/// A 64-bit integer as OTLP/JSON writes it: a decimal string.
fn quoted_number(out: &mut Vec<u8>, n: impl itoa::Integer) -> Result<()> {
    let mut buffer = itoa::Buffer::new();
    let digits = buffer.format(n).as_bytes();
    out.reserve(digits.len() + 2);
    out.push(b'"');
    out.extend_from_slice(digits);
    out.push(b'"');
    Ok(())
}

/// Lower-case hex of an id (at most 16 bytes), appended in one piece.
fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let bytes = &bytes[..bytes.len().min(16)];
    let mut text = [0u8; 32];
    let text = &mut text[..2 * bytes.len()];
    // Cannot fail: the text is exactly twice the bytes' length.
    if const_hex::encode_to_slice(bytes, text).is_ok() {
        out.extend_from_slice(text);
    }
}
