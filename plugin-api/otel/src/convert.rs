//! `SpanRecord` → `SpanData`: a borrowed ABI record into the SDK's owned span, field by field.
//!
//! Every field of the record has a place in [`SpanData`] or in the [`Resource`] the exporter is
//! given with [`SpanExporter::set_resource`](opentelemetry_sdk::trace::SpanExporter::set_resource),
//! and nothing is invented: a zero parent id stays the invalid id, an empty trace state stays empty,
//! an empty scope version stays `None`.

use filament_plugin_api as api;
use opentelemetry::trace::{
    Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::str::FromStr;
use std::time::{Duration, SystemTime};

/// The SDK's span for a record: ids, parent, kind, name, times, attributes, events, links,
/// status, dropped counts and scope. The resource goes separately: see [`resource`].
pub fn span_data(record: &api::SpanRecord<'_>) -> SpanData {
    // Both are non-exhaustive: built from their defaults.
    let mut events = SpanEvents::default();
    events.events = record.events.iter().map(event).collect();
    events.dropped_count = record.dropped_events_count;
    let mut links = SpanLinks::default();
    links.links = record.links.iter().map(link).collect();
    links.dropped_count = record.dropped_links_count;
    SpanData {
        span_context: span_context(
            record.trace_id,
            record.span_id,
            record.trace_flags,
            // A finished span of this process is never remote itself.
            false,
            record.trace_state.as_str(),
        ),
        parent_span_id: SpanId::from_bytes(record.parent_span_id.0),
        parent_span_is_remote: record.parent_is_remote,
        span_kind: span_kind(record.kind),
        name: record.name.as_str().to_owned().into(),
        start_time: time(record.start_time_unix_nano),
        end_time: time(record.end_time_unix_nano),
        attributes: key_values(record.attributes.as_slice()),
        dropped_attributes_count: record.dropped_attributes_count,
        events,
        links,
        status: status(&record.status),
        instrumentation_scope: scope(&record.scope),
    }
}

/// The SDK's resource for a record's resource: its attributes and schema URL.
pub fn resource(resource: &api::Resource<'_>) -> Resource {
    let attributes = key_values(resource.attributes.as_slice());
    let builder = Resource::builder_empty();
    if resource.schema_url.is_empty() {
        builder.with_attributes(attributes).build()
    } else {
        builder
            .with_schema_url(attributes, resource.schema_url.as_str().to_owned())
            .build()
    }
}

/// The SDK's instrumentation scope for a record's scope.
pub fn scope(scope: &api::Scope<'_>) -> InstrumentationScope {
    let mut builder = InstrumentationScope::builder(scope.name.as_str().to_owned())
        .with_attributes(key_values(scope.attributes.as_slice()));
    if !scope.version.is_empty() {
        builder = builder.with_version(scope.version.as_str().to_owned());
    }
    if !scope.schema_url.is_empty() {
        builder = builder.with_schema_url(scope.schema_url.as_str().to_owned());
    }
    builder.build()
}

/// The SDK's span kind.
pub fn span_kind(kind: api::SpanKind) -> SpanKind {
    match kind {
        api::SpanKind::Internal => SpanKind::Internal,
        api::SpanKind::Server => SpanKind::Server,
        api::SpanKind::Client => SpanKind::Client,
        api::SpanKind::Producer => SpanKind::Producer,
        api::SpanKind::Consumer => SpanKind::Consumer,
    }
}

/// The SDK's status. The description is kept only for errors, as the API allows.
pub fn status(status: &api::Status<'_>) -> Status {
    match status.code {
        api::StatusCode::Unset => Status::Unset,
        api::StatusCode::Ok => Status::Ok,
        api::StatusCode::Error => Status::error(status.description.as_str().to_owned()),
    }
}

/// Owned attributes from borrowed ones.
pub fn key_values(attributes: &[api::KeyValue<'_>]) -> Vec<KeyValue> {
    attributes.iter().map(key_value).collect()
}

/// An owned attribute from a borrowed one.
pub fn key_value(attribute: &api::KeyValue<'_>) -> KeyValue {
    KeyValue::new(attribute.key.as_str().to_owned(), value(&attribute.value))
}

/// An owned attribute value from a borrowed one, arrays included.
pub fn value(value: &api::Value<'_>) -> Value {
    match value {
        api::Value::Bool(b) => Value::Bool(*b),
        api::Value::I64(i) => Value::I64(*i),
        api::Value::F64(f) => Value::F64(*f),
        api::Value::Str(s) => Value::String(StringValue::from(s.as_str().to_owned())),
        api::Value::BoolArray(a) => Value::Array(Array::Bool(a.to_vec())),
        api::Value::I64Array(a) => Value::Array(Array::I64(a.to_vec())),
        api::Value::F64Array(a) => Value::Array(Array::F64(a.to_vec())),
        api::Value::StrArray(a) => Value::Array(Array::String(
            a.iter()
                .map(|s| StringValue::from(s.as_str().to_owned()))
                .collect(),
        )),
    }
}

/// A point in time from nanoseconds since the Unix epoch.
pub fn time(unix_nanos: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_nanos)
}

fn event(event: &api::Event<'_>) -> Event {
    Event::new(
        event.name.as_str().to_owned(),
        time(event.time_unix_nano),
        key_values(event.attributes.as_slice()),
        event.dropped_attributes_count,
    )
}

fn link(link: &api::Link<'_>) -> Link {
    Link::new(
        span_context(
            link.trace_id,
            link.span_id,
            link.trace_flags,
            link.is_remote,
            link.trace_state.as_str(),
        ),
        key_values(link.attributes.as_slice()),
        link.dropped_attributes_count,
    )
}

fn span_context(
    trace_id: api::TraceId,
    span_id: api::SpanId,
    trace_flags: u8,
    is_remote: bool,
    trace_state: &str,
) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(trace_id.0),
        SpanId::from_bytes(span_id.0),
        TraceFlags::new(trace_flags),
        is_remote,
        trace_state_of(trace_state),
    )
}

/// The host built the record from a valid `TraceState`, so its header parses; a value that does
/// not (a host bug) is dropped rather than failing the span.
fn trace_state_of(header: &str) -> TraceState {
    if header.is_empty() {
        return TraceState::NONE;
    }
    TraceState::from_str(header).unwrap_or(TraceState::NONE)
}
