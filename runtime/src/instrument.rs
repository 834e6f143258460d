//! The runtime's side of the instrumentations a hook switches on (see
//! `filament_tracing::instrument`): spans of its own internals, and the task interceptors' calls.
//!
//! Every entry here starts with one relaxed atomic load of its switch and does nothing more when
//! the switch is off (the default): with no instrument hook the runtime does no extra work.

use crate::object::ObjectId;
use crate::spans::{self, ConsumerSpan};
use crate::wire::TaskKind;
use filament_plugin_api::{TaskInfo, TaskKind as AbiTaskKind, TaskOutcome};
use filament_tracing::instrument::{self, Instrumentation};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use std::time::{SystemTime, UNIX_EPOCH};

/// The envelope entry that carries a task's submission time (Unix nanoseconds) when `queue_wait`
/// is on, next to `traceparent`; never in the user's arguments.
pub(crate) const SUBMITTED_AT: &str = "filament-submitted-at";

/// A span of the runtime's internals, ended when dropped; inert when its instrumentation is off.
pub(crate) struct InternalSpan(Option<Context>);

impl InternalSpan {
    /// Starts span `name`, child of the current span, if `which` is on.
    pub(crate) fn start(
        which: Instrumentation,
        name: &'static str,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> InternalSpan {
        if !instrument::enabled(which) || !spans::enabled() {
            return InternalSpan(None);
        }
        let tracer = spans::tracer();
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes())
            .start_with_context(&*tracer, &Context::current());
        InternalSpan(Some(Context::current_with_span(span)))
    }

    /// Adds attributes (computed only if the span is live).
    pub(crate) fn set(&self, attributes: impl FnOnce() -> Vec<KeyValue>) {
        if let Some(cx) = &self.0 {
            cx.span().set_attributes(attributes());
        }
    }

    /// Marks the span failed.
    pub(crate) fn fail(&self, message: impl FnOnce() -> String) {
        if let Some(cx) = &self.0 {
            cx.span().set_status(Status::error(message()));
        }
    }
}

impl Drop for InternalSpan {
    fn drop(&mut self) {
        if let Some(cx) = self.0.take() {
            cx.span().end();
        }
    }
}

fn ids_attribute(ids: &[ObjectId]) -> KeyValue {
    KeyValue::new(
        "filament.object_ids",
        opentelemetry::Value::Array(opentelemetry::Array::String(
            ids.iter().map(|id| id.to_string().into()).collect(),
        )),
    )
}

/// The span of a `get` of `ids` (`filament.get`).
pub(crate) fn get(ids: &[ObjectId]) -> InternalSpan {
    InternalSpan::start(Instrumentation::Get, "filament.get", || {
        vec![
            KeyValue::new("filament.object_count", ids.len() as i64),
            ids_attribute(ids),
        ]
    })
}

/// Records what a `get` fetched: the results' bytes, or why it failed.
pub(crate) fn got(
    span: &InternalSpan,
    fetched: &Result<Vec<crate::object::Fetched>, crate::GetError>,
) {
    match fetched {
        Ok(results) => span.set(|| {
            let bytes: usize = results
                .iter()
                .filter_map(|(_, r)| r.as_ref().ok().map(|v| v.len()))
                .sum();
            let failed = results.iter().filter(|(_, r)| r.is_err()).count();
            vec![
                KeyValue::new("filament.bytes", bytes as i64),
                KeyValue::new("filament.failed_count", failed as i64),
            ]
        }),
        Err(error) => span.fail(|| error.to_string()),
    }
}

/// The span of a `wait` (`filament.wait`).
pub(crate) fn wait(
    ids: &[ObjectId],
    num_returns: usize,
    timeout: Option<std::time::Duration>,
) -> InternalSpan {
    InternalSpan::start(Instrumentation::Wait, "filament.wait", || {
        let mut attributes = vec![
            KeyValue::new("filament.object_count", ids.len() as i64),
            KeyValue::new("filament.num_returns", num_returns as i64),
            ids_attribute(ids),
        ];
        if let Some(timeout) = timeout {
            attributes.push(KeyValue::new(
                "filament.timeout_ms",
                timeout.as_secs_f64() * 1000.0,
            ));
        }
        attributes
    })
}

/// Records how many objects a `wait` found done.
pub(crate) fn waited(span: &InternalSpan, done: &Result<Vec<bool>, crate::GetError>) {
    match done {
        Ok(done) => span.set(|| {
            vec![KeyValue::new(
                "filament.ready_count",
                done.iter().filter(|d| **d).count() as i64,
            )]
        }),
        Err(error) => span.fail(|| error.to_string()),
    }
}

/// What a value is, in a serialization span.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ValueRole {
    Argument,
    Result,
}

impl ValueRole {
    fn as_str(self) -> &'static str {
        match self {
            ValueRole::Argument => "argument",
            ValueRole::Result => "result",
        }
    }
}

/// Serializes a value (`filament.serialize` span, with its size) with `encode`.
pub(crate) fn serialize<T>(
    role: ValueRole,
    encode: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    let span = InternalSpan::start(Instrumentation::Serialization, "filament.serialize", || {
        vec![
            KeyValue::new("filament.value", role.as_str()),
            KeyValue::new("filament.type", std::any::type_name::<T>()),
        ]
    });
    let encoded = encode();
    match &encoded {
        Ok(bytes) => span.set(|| vec![KeyValue::new("filament.bytes", bytes.len() as i64)]),
        Err(why) => span.fail(|| why.clone()),
    }
    encoded
}

/// Deserializes `bytes` (`filament.deserialize` span, with their size) with `decode`.
pub(crate) fn deserialize<T, E: std::fmt::Display>(
    role: ValueRole,
    bytes: &[u8],
    decode: impl FnOnce(&[u8]) -> Result<T, E>,
) -> Result<T, E> {
    let span = InternalSpan::start(
        Instrumentation::Serialization,
        "filament.deserialize",
        || {
            vec![
                KeyValue::new("filament.value", role.as_str()),
                KeyValue::new("filament.type", std::any::type_name::<T>()),
                KeyValue::new("filament.bytes", bytes.len() as i64),
            ]
        },
    );
    let decoded = decode(bytes);
    if let Err(why) = &decoded {
        span.fail(|| why.to_string());
    }
    decoded
}

fn unix_nanos(at: SystemTime) -> u128 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos())
}

/// Puts the submission time into a task's envelope, when `queue_wait` is on.
pub(crate) fn on_submit(trace_context: &mut Vec<(String, String)>) {
    if instrument::enabled(Instrumentation::QueueWait) {
        trace_context.push((
            SUBMITTED_AT.to_owned(),
            unix_nanos(SystemTime::now()).to_string(),
        ));
    }
}

/// The attributes of a task's CONSUMER span at its start: how long it waited since its submission
/// (`filament.queue_wait_ms`, when `queue_wait` is on; wall clocks of two machines are compared,
/// so across machines it is as good as their clocks' agreement), and what the interceptors set.
pub(crate) struct TaskStart {
    intercepted: bool,
}

/// Calls what is switched on at the start of a task: the queue wait, the interceptors.
pub(crate) fn task_started(
    id: ObjectId,
    name: &str,
    kind: &TaskKind,
    trace_context: &[(String, String)],
    span: &ConsumerSpan,
) -> TaskStart {
    let queue_wait = instrument::enabled(Instrumentation::QueueWait);
    let intercepted = instrument::intercepting();
    if !queue_wait && !intercepted {
        return TaskStart { intercepted };
    }
    let mut attributes = Vec::new();
    if queue_wait
        && let Some(submitted) = trace_context
            .iter()
            .find(|(key, _)| key == SUBMITTED_AT)
            .and_then(|(_, at)| at.parse::<u128>().ok())
    {
        let waited = unix_nanos(SystemTime::now()).saturating_sub(submitted);
        attributes.push(KeyValue::new(
            "filament.queue_wait_ms",
            waited as f64 / 1_000_000.0,
        ));
    }
    if intercepted {
        instrument::task_started(&task_info(id, name, kind), &mut attributes);
    }
    span.set_attributes(attributes);
    TaskStart { intercepted }
}

/// Calls the interceptors at the end of a task, before its span ends.
pub(crate) fn task_ended(
    start: TaskStart,
    id: ObjectId,
    name: &str,
    kind: &TaskKind,
    outcome: TaskOutcome,
    span: &ConsumerSpan,
) {
    if !start.intercepted {
        return;
    }
    let mut attributes = Vec::new();
    instrument::task_ended(&task_info(id, name, kind), outcome, &mut attributes);
    span.set_attributes(attributes);
}

fn task_info<'a>(id: ObjectId, name: &'a str, kind: &TaskKind) -> TaskInfo<'a> {
    TaskInfo {
        id: id.0,
        name: name.into(),
        kind: match kind {
            TaskKind::Function { .. } => AbiTaskKind::Function,
            TaskKind::CreateActor { .. } => AbiTaskKind::ActorCreation,
            TaskKind::ActorCall { .. } => AbiTaskKind::ActorCall,
        },
    }
}

/// When a worker's start-up began and its hooks ran, for the `worker_startup` span.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerStartup {
    pub(crate) started: SystemTime,
    pub(crate) hooks: Option<(SystemTime, SystemTime)>,
}

/// Records a worker's start-up, from `startup.started` to now (`filament.worker_startup`), with
/// the hooks' set-up as a child span (`filament.hook_setup`), if `worker_startup` is on.
pub(crate) fn worker_ready(startup: WorkerStartup, hooks: &str) {
    if !instrument::enabled(Instrumentation::WorkerStartup) || !spans::enabled() {
        return;
    }
    let tracer = spans::tracer();
    let mut attributes = spans::process_attributes();
    if let Some((from, to)) = startup.hooks {
        let took = to.duration_since(from).unwrap_or_default();
        attributes.push(KeyValue::new(
            "filament.hook_setup_ms",
            took.as_secs_f64() * 1000.0,
        ));
    }
    let span = tracer
        .span_builder("filament.worker_startup")
        .with_kind(SpanKind::Internal)
        .with_start_time(startup.started)
        .with_attributes(attributes)
        .start_with_context(&*tracer, &Context::new());
    let cx = Context::new().with_span(span);
    if let Some((from, to)) = startup.hooks {
        let mut hook_span = tracer
            .span_builder("filament.hook_setup")
            .with_kind(SpanKind::Internal)
            .with_start_time(from)
            .with_attributes([KeyValue::new("filament.hooks", hooks.to_owned())])
            .start_with_context(&*tracer, &cx);
        hook_span.end_with_timestamp(to);
    }
    cx.span().end();
}
