//! The host's span processor that hands every finished span to the plugins' processors.
//!
//! A span is converted once into a borrowed [`SpanRecord`] (one small array of attribute views; no
//! string is copied) and passed to each plugin processor in turn. A processor that fails or panics is
//! reported once and counted; the others keep receiving spans.

use super::log::{self, HookLog};
use super::setup::AddedProcessor;
use filament_plugin_api::{
    Event, KeyValue, Link, LogLevel, ProcessorError, ProcessorStats, RawSpanProcessor_TO, Resource,
    Scope, SpanId, SpanKind, SpanRecord, Status, StatusCode, TraceId, Value,
    abi_stable::std_types::{RBox, RDuration, RResult, RSlice, RStr},
};
use opentelemetry::trace::{self as otel_trace};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long `force_flush` gives each plugin processor (the SDK's flush has no timeout argument).
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// One plugin processor and what happened to it.
struct Sink {
    hook: String,
    name: String,
    raw: RawSpanProcessor_TO<'static, RBox<()>>,
    wants_on_start: bool,
    /// Spans handed to the processor without error.
    delivered: AtomicU64,
    /// Calls that failed or panicked.
    failures: AtomicU64,
    /// Spans whose `on_end` failed or panicked: never handed over.
    undelivered: AtomicU64,
    /// The first failure's message (the only one logged).
    first_failure: Mutex<Option<String>>,
}

impl Sink {
    fn check(&self, operation: &str, result: RResult<(), ProcessorError>) -> Result<(), String> {
        let RResult::RErr(error) = result else {
            return Ok(());
        };
        self.failures.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "span processor \"{}\" failed in {operation}: {error}",
            self.name
        );
        let mut first = self
            .first_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if first.is_none() {
            *first = Some(message.clone());
            log::emit(
                HookLog::Hook(&self.hook),
                LogLevel::Error,
                &format!("{message} (reported once; later failures are only counted)"),
            );
        }
        Err(message)
    }
}

/// The plugin processors of a process, shared by the bridge and the guard that reports on them.
#[derive(Clone)]
pub(crate) struct Sinks {
    sinks: Arc<Vec<Sink>>,
    /// Why the plugins' shutdown failed, in their words (the SDK wraps them in its own).
    shutdown_failure: Arc<Mutex<Option<String>>>,
}

/// Calls `call` on every sink with the time left until `deadline`; the failures' messages, joined.
fn each_sink(
    sinks: &[Sink],
    operation: &str,
    deadline: Instant,
    call: impl Fn(&Sink, RDuration) -> RResult<(), ProcessorError>,
) -> Result<(), String> {
    let mut failures = Vec::new();
    for sink in sinks {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if let Err(message) = sink.check(operation, call(sink, remaining.into())) {
            failures.push(message);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

impl fmt::Debug for Sinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.sinks.iter().map(|s| &s.name))
            .finish()
    }
}

impl Sinks {
    /// Why the last shutdown of the plugins failed, in their words.
    pub(crate) fn shutdown_failure(&self) -> Option<String> {
        self.shutdown_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Asks every plugin processor to export what it buffers.
    pub(crate) fn force_flush(&self, timeout: Duration) -> Result<(), String> {
        each_sink(
            &self.sinks,
            "force_flush",
            Instant::now() + timeout,
            |sink, timeout| sink.raw.force_flush(timeout),
        )
    }

    /// Counts and first failure of each processor, with what the plugin says it exported and dropped.
    pub(crate) fn reports(&self) -> Vec<ProcessorReport> {
        self.sinks
            .iter()
            .map(|sink| ProcessorReport {
                hook: sink.hook.clone(),
                name: sink.name.clone(),
                delivered: sink.delivered.load(Ordering::Relaxed),
                failures: sink.failures.load(Ordering::Relaxed),
                undelivered: sink.undelivered.load(Ordering::Relaxed),
                first_failure: sink
                    .first_failure
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone(),
                plugin: sink.raw.stats(),
                plugin_failed: sink.raw.failed(),
            })
            .collect()
    }
}

/// What became of one plugin span processor's spans.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessorReport {
    /// The hook that added the processor, `library:symbol`.
    pub hook: String,
    /// The processor's name.
    pub name: String,
    /// Spans handed to it without error.
    pub delivered: u64,
    /// Calls that failed or panicked (`on_end`, `force_flush`, `shutdown`, …).
    pub failures: u64,
    /// Spans whose `on_end` failed or panicked: lost before the processor had them.
    pub undelivered: u64,
    /// The first failure's message (the only one logged).
    pub first_failure: Option<String>,
    /// What the processor itself says it exported and dropped.
    pub plugin: ProcessorStats,
    /// Of `plugin.dropped`, the spans its exporter failed to deliver (refused, timed out,
    /// unreachable); 0 from plugins built against ABI 1.0, which do not say.
    pub plugin_failed: u64,
}

/// The host-side processor that forwards to every plugin processor.
pub(crate) struct Bridge {
    sinks: Sinks,
    /// The provider's resource, as every span's record shows it.
    resource: HostResource,
    any_wants_on_start: bool,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("processors", &self.sinks)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    pub(crate) fn new(processors: Vec<AddedProcessor>) -> (Bridge, Sinks) {
        let sinks: Vec<Sink> = processors
            .into_iter()
            .map(|added| Sink {
                name: added.raw.name().into_string(),
                wants_on_start: added.raw.wants_on_start(),
                hook: added.hook,
                raw: added.raw,
                delivered: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                undelivered: AtomicU64::new(0),
                first_failure: Mutex::new(None),
            })
            .collect();
        let sinks = Sinks {
            sinks: Arc::new(sinks),
            shutdown_failure: Arc::default(),
        };
        let bridge = Bridge {
            any_wants_on_start: sinks.sinks.iter().any(|s| s.wants_on_start),
            sinks: sinks.clone(),
            resource: HostResource::default(),
        };
        (bridge, sinks)
    }
}

impl SpanProcessor for Bridge {
    fn on_start(&self, span: &mut Span, _cx: &opentelemetry::Context) {
        if !self.any_wants_on_start {
            return;
        }
        let Some(data) = span.exported_data() else {
            return;
        };
        with_record(&data, &self.resource, |record| {
            for sink in self.sinks.sinks.iter().filter(|s| s.wants_on_start) {
                let _ = sink.check("on_start", sink.raw.on_start(record));
            }
        });
    }

    fn on_end(&self, span: SpanData) {
        with_record(&span, &self.resource, |record| {
            for sink in self.sinks.sinks.iter() {
                let counter = match sink.check("on_end", sink.raw.on_end(record)) {
                    Ok(()) => &sink.delivered,
                    Err(_) => &sink.undelivered,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.sinks
            .force_flush(FLUSH_TIMEOUT)
            .map_err(OTelSdkError::InternalFailure)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let deadline = Instant::now() + timeout;
        let result = each_sink(
            &self.sinks.sinks,
            "shutdown",
            deadline,
            |sink, remaining| sink.raw.shutdown(remaining),
        );
        if let Err(message) = &result {
            *self
                .sinks
                .shutdown_failure
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(message.clone());
        }
        result.map_err(OTelSdkError::InternalFailure)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        /// Resource ids of this process: a new one for every resource set.
        static NEXT_RESOURCE_ID: AtomicU64 = AtomicU64::new(1);
        self.resource = HostResource {
            attributes: resource
                .iter()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect(),
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
            id: NEXT_RESOURCE_ID.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn kind(kind: &otel_trace::SpanKind) -> SpanKind {
    match kind {
        otel_trace::SpanKind::Client => SpanKind::Client,
        otel_trace::SpanKind::Server => SpanKind::Server,
        otel_trace::SpanKind::Producer => SpanKind::Producer,
        otel_trace::SpanKind::Consumer => SpanKind::Consumer,
        otel_trace::SpanKind::Internal => SpanKind::Internal,
    }
}

/// The provider's resource, kept as a list: walked for every span, it is cheaper than the SDK's
/// map, and its id lets plugins cache what they derive from it.
#[derive(Debug, Default)]
pub(crate) struct HostResource {
    attributes: Vec<(opentelemetry::Key, opentelemetry::Value)>,
    schema_url: String,
    id: u64,
}

/// The view of one attribute. A string array's items need an array of views of their own: it is
/// made here and kept in `string_arrays` with the view's `index`, to be patched in once every view
/// exists (the views borrow it).
#[inline(always)]
fn view<'a>(
    key: &'a opentelemetry::Key,
    value: &'a opentelemetry::Value,
    string_arrays: &mut Vec<(usize, Vec<RStr<'a>>)>,
    index: usize,
) -> KeyValue<'a> {
    use opentelemetry::{Array, Value as OValue};
    let value = match value {
        OValue::Bool(b) => Value::Bool(*b),
        OValue::I64(i) => Value::I64(*i),
        OValue::F64(f) => Value::F64(*f),
        OValue::String(s) => Value::Str(s.as_str().into()),
        OValue::Array(Array::Bool(a)) => Value::BoolArray(a.as_slice().into()),
        OValue::Array(Array::I64(a)) => Value::I64Array(a.as_slice().into()),
        OValue::Array(Array::F64(a)) => Value::F64Array(a.as_slice().into()),
        OValue::Array(Array::String(items)) => {
            let items = items.iter().map(|s| RStr::from_str(s.as_str())).collect();
            string_arrays.push((index, items));
            Value::StrArray(RSlice::EMPTY)
        }
        // Value types added to OpenTelemetry after this host was written.
        _ => Value::Str("<unsupported attribute type>".into()),
    };
    KeyValue {
        key: key.as_str().into(),
        value,
    }
}

/// Builds the borrowed record of a span and hands it to `f`. Copies no string: the record borrows
/// `span` and `resource`; only the arrays of attribute views (and of string-array items) are new.
pub(crate) fn with_record<R>(
    span: &SpanData,
    resource: &HostResource,
    f: impl FnOnce(&SpanRecord<'_>) -> R,
) -> R {
    // One pass builds every attribute view; string arrays need arrays of views of their own, made
    // in the same pass and patched in once they all exist (the views borrow them).
    let scope_attributes = span.instrumentation_scope.attributes().count();
    let count = span.attributes.len()
        + span
            .events
            .iter()
            .map(|e| e.attributes.len())
            .sum::<usize>()
        + span.links.iter().map(|l| l.attributes.len()).sum::<usize>()
        + scope_attributes
        + resource.attributes.len();
    let mut string_arrays: Vec<(usize, Vec<RStr<'_>>)> = Vec::new();
    let mut views: Vec<KeyValue<'_>> = Vec::with_capacity(count);
    // One plain loop per list (a chain of five iterators costs more than the conversions).
    for kv in &span.attributes {
        views.push(view(&kv.key, &kv.value, &mut string_arrays, views.len()));
    }
    for event in span.events.iter() {
        for kv in &event.attributes {
            views.push(view(&kv.key, &kv.value, &mut string_arrays, views.len()));
        }
    }
    for link in span.links.iter() {
        for kv in &link.attributes {
            views.push(view(&kv.key, &kv.value, &mut string_arrays, views.len()));
        }
    }
    for kv in span.instrumentation_scope.attributes() {
        views.push(view(&kv.key, &kv.value, &mut string_arrays, views.len()));
    }
    for (key, value) in &resource.attributes {
        views.push(view(key, value, &mut string_arrays, views.len()));
    }
    for (index, items) in &string_arrays {
        views[*index].value = Value::StrArray(items.as_slice().into());
    }

    let mut cursor = 0;
    let mut take = |n: usize| -> Range<usize> {
        let range = cursor..cursor + n;
        cursor += n;
        range
    };
    let span_range = take(span.attributes.len());
    let event_ranges: Vec<Range<usize>> = span
        .events
        .iter()
        .map(|e| take(e.attributes.len()))
        .collect();
    let link_ranges: Vec<Range<usize>> = span
        .links
        .iter()
        .map(|l| take(l.attributes.len()))
        .collect();
    let scope_range = take(scope_attributes);
    let resource_range = take(resource.attributes.len());
    let views = views.as_slice();

    let events: Vec<Event<'_>> = span
        .events
        .iter()
        .zip(event_ranges)
        .map(|(event, range)| Event {
            name: event.name.as_ref().into(),
            time_unix_nano: unix_nanos(event.timestamp),
            attributes: views[range].into(),
            dropped_attributes_count: event.dropped_attributes_count,
        })
        .collect();
    let trace_states: Vec<String> = span
        .links
        .iter()
        .map(|l| l.span_context.trace_state().header())
        .collect();
    let links: Vec<Link<'_>> = span
        .links
        .iter()
        .zip(link_ranges)
        .zip(&trace_states)
        .map(|((link, range), state)| Link {
            trace_id: TraceId(link.span_context.trace_id().to_bytes()),
            span_id: SpanId(link.span_context.span_id().to_bytes()),
            trace_flags: link.span_context.trace_flags().to_u8(),
            trace_state: state.as_str().into(),
            is_remote: link.span_context.is_remote(),
            attributes: views[range].into(),
            dropped_attributes_count: link.dropped_attributes_count,
        })
        .collect();

    let trace_state = span.span_context.trace_state().header();
    let (status_code, description) = match &span.status {
        otel_trace::Status::Unset => (StatusCode::Unset, ""),
        otel_trace::Status::Ok => (StatusCode::Ok, ""),
        otel_trace::Status::Error { description } => (StatusCode::Error, description.as_ref()),
    };
    let scope = &span.instrumentation_scope;
    let record = SpanRecord {
        trace_id: TraceId(span.span_context.trace_id().to_bytes()),
        span_id: SpanId(span.span_context.span_id().to_bytes()),
        parent_span_id: SpanId(span.parent_span_id.to_bytes()),
        parent_is_remote: span.parent_span_is_remote,
        trace_flags: span.span_context.trace_flags().to_u8(),
        trace_state: trace_state.as_str().into(),
        name: span.name.as_ref().into(),
        kind: kind(&span.span_kind),
        start_time_unix_nano: unix_nanos(span.start_time),
        end_time_unix_nano: unix_nanos(span.end_time),
        attributes: views[span_range].into(),
        dropped_attributes_count: span.dropped_attributes_count,
        events: RSlice::from_slice(&events),
        dropped_events_count: span.events.dropped_count,
        links: RSlice::from_slice(&links),
        dropped_links_count: span.links.dropped_count,
        status: Status {
            code: status_code,
            description: description.into(),
        },
        scope: Scope {
            name: scope.name().into(),
            version: scope.version().unwrap_or_default().into(),
            schema_url: scope.schema_url().unwrap_or_default().into(),
            attributes: views[scope_range].into(),
        },
        resource: Resource {
            attributes: views[resource_range].into(),
            schema_url: resource.schema_url.as_str().into(),
            id: resource.id,
        },
    };
    f(&record)
}
