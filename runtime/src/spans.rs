//! The spans the runtime makes, as Ray makes them: a PRODUCER span per submission in the caller and a
//! CONSUMER span per execution in the worker, linked by the W3C context carried in the task envelope.
//! With no tracing hook nothing here runs: no context is injected, no span is made.

use crate::wire::{TaskKind, TaskSpec};
use opentelemetry::global::BoxedSpan;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Facts every span of this process carries.
#[derive(Debug, Clone)]
pub(crate) struct ProcessFacts {
    pub(crate) pid: u32,
    pub(crate) job_id: String,
    pub(crate) node_id: String,
    pub(crate) worker_id: Option<String>,
}

/// The attributes every span of this process carries, made once (their strings shared, not copied).
static PROCESS_ATTRIBUTES: OnceLock<Vec<KeyValue>> = OnceLock::new();

fn shared(value: &str) -> opentelemetry::Value {
    opentelemetry::Value::String(opentelemetry::StringValue::from(Arc::<str>::from(value)))
}

/// Turns task tracing on for this process (a hook was installed).
pub(crate) fn enable(facts: ProcessFacts) {
    let _ = PROCESS_ATTRIBUTES.get_or_init(|| {
        let mut attributes = vec![
            KeyValue::new("filament.pid", i64::from(facts.pid)),
            KeyValue::new("filament.job_id", shared(&facts.job_id)),
            KeyValue::new("filament.node_id", shared(&facts.node_id)),
        ];
        if let Some(worker) = &facts.worker_id {
            attributes.push(KeyValue::new("filament.worker_id", shared(worker)));
        }
        attributes
    });
    *TRACER.write().unwrap_or_else(|p| p.into_inner()) =
        Some(Arc::new(opentelemetry::global::tracer("filament")));
    ENABLED.store(true, Ordering::Release);
}

/// Turns task tracing off (the runtime stopped; a later `init` may have no hook).
pub(crate) fn disable() {
    ENABLED.store(false, Ordering::Release);
    *TRACER.write().unwrap_or_else(|p| p.into_inner()) = None;
}

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

thread_local! {
    /// The id of the task this thread is running, for `filament.task_id` on nested submissions.
    static CURRENT_TASK: std::cell::Cell<Option<crate::ObjectId>> = const { std::cell::Cell::new(None) };
}

struct Carrier<'a>(&'a mut Vec<(String, String)>);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), value));
    }
}

struct Reader<'a>(&'a [(String, String)]);

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The runtime's tracer, made when tracing is switched on (after the hook installed the provider)
/// rather than looked up for every span.
static TRACER: RwLock<Option<Arc<opentelemetry::global::BoxedTracer>>> = RwLock::new(None);

pub(crate) fn tracer() -> Arc<opentelemetry::global::BoxedTracer> {
    if let Some(tracer) = TRACER.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return Arc::clone(tracer);
    }
    Arc::new(opentelemetry::global::tracer("filament"))
}

/// The attributes every span of this process carries (pid, job, node, worker).
pub(crate) fn process_attributes() -> Vec<KeyValue> {
    PROCESS_ATTRIBUTES.get().cloned().unwrap_or_default()
}

/// The attributes of a task's span (its name shared, not copied, as `filament.function`).
fn attributes(spec_name: &Arc<str>, kind: &TaskKind) -> Vec<KeyValue> {
    let process = PROCESS_ATTRIBUTES
        .get()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut attributes = Vec::with_capacity(7 + process.len());
    match kind {
        TaskKind::Function { .. } => {
            attributes.push(KeyValue::new("filament.remote", "function"));
        }
        TaskKind::CreateActor { actor, .. } | TaskKind::ActorCall { actor, .. } => {
            attributes.push(KeyValue::new("filament.remote", "actor"));
            let (class, method) = spec_name.rsplit_once("::").unwrap_or((spec_name, ""));
            attributes.push(KeyValue::new("filament.actor_class", class.to_owned()));
            attributes.push(KeyValue::new("filament.actor_method", method.to_owned()));
            attributes.push(KeyValue::new("filament.actor_id", hex_id(*actor)));
        }
    }
    attributes.push(KeyValue::new(
        "filament.function",
        opentelemetry::StringValue::from(Arc::clone(spec_name)),
    ));
    attributes.extend_from_slice(process);
    if let Some(task) = CURRENT_TASK.with(|t| t.get()) {
        attributes.push(KeyValue::new("filament.task_id", hex_id(task.0)));
    }
    attributes
}

/// A task's or an actor's id as their `Display` writes it (16 lower-case hex digits), without
/// `core::fmt`'s padding machinery: made for every traced task.
fn hex_id(id: u64) -> String {
    const_hex::encode(id.to_be_bytes())
}

/// A span's name: the task's name and a suffix, in one allocation of the right size (`format!`
/// is several times slower, and this is made for every traced task).
fn span_name(name: &str, suffix: &str) -> String {
    let mut span_name = String::with_capacity(name.len() + suffix.len());
    span_name.push_str(name);
    span_name.push_str(suffix);
    span_name
}

/// The PRODUCER span of a submission; it ends when dropped, once the task is on its way.
pub(crate) struct ProducerSpan(Option<Context>);

impl Drop for ProducerSpan {
    fn drop(&mut self) {
        if let Some(cx) = self.0.take() {
            cx.span().end();
        }
    }
}

/// Makes the PRODUCER span of a submission, child of the caller's current span, and puts its
/// context into the envelope. The span covers the submission only: drop the returned value once
/// the task is sent (its export then overlaps the task's run instead of delaying it).
pub(crate) fn on_submit(spec: &mut TaskSpec) -> ProducerSpan {
    if !enabled() {
        return ProducerSpan(None);
    }
    let tracer = tracer();
    let span = tracer
        .span_builder(span_name(&spec.name, " filament.remote"))
        .with_kind(SpanKind::Producer)
        .with_attributes(attributes(&spec.name, &spec.kind))
        .start_with_context(&*tracer, &Context::current());
    let cx = Context::current_with_span(span);
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut Carrier(&mut spec.trace_context));
    });
    crate::instrument::on_submit(&mut spec.trace_context);
    ProducerSpan(Some(cx))
}

/// The attribute that numbers a retry's CONSUMER span: 1 for the first retry, … (a first attempt
/// has none).
pub(crate) const ATTEMPT: &str = "filament.attempt";

/// The CONSUMER span of an attempt that died with its worker (whose own span died with it),
/// recorded by the driver: from when it sent the task to when it saw the worker go, with status
/// ERROR, an `exception` event saying why, `filament.attempt` and `filament.recorded_by = driver`.
pub(crate) fn on_attempt_lost(lost: crate::driver::LostAttempt) {
    if !enabled() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Reader(&lost.trace_context))
    });
    let tracer = tracer();
    let message = lost.error.to_string();
    let mut attributes = attributes(&lost.name, &lost.kind);
    attributes.push(KeyValue::new(ATTEMPT, i64::from(lost.attempt)));
    attributes.push(KeyValue::new("filament.recorded_by", "driver"));
    let mut builder = tracer
        .span_builder(span_name(&lost.name, " filament.remote_worker"))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes);
    if let Some(started) = lost.started {
        builder = builder.with_start_time(started);
    }
    let span = builder.start_with_context(&*tracer, &parent);
    let cx = parent.with_span(span);
    let span = cx.span();
    span.add_event(
        "exception",
        vec![
            KeyValue::new(
                "exception.type",
                match lost.error {
                    crate::TaskError::WorkerDied { .. } => "worker died",
                    _ => "worker lost",
                },
            ),
            KeyValue::new("exception.message", message.clone()),
        ],
    );
    span.set_status(Status::error(message));
    span.end();
}

/// The CONSUMER span of an execution, current while the task runs.
pub(crate) struct ConsumerSpan {
    span: Option<(Context, opentelemetry::ContextGuard)>,
    previous_task: Option<crate::ObjectId>,
}

/// Starts the CONSUMER span of a task (child of its PRODUCER) and makes it current, so that spans the
/// task makes are its children and tasks it submits continue the trace.
pub(crate) fn on_execute(
    id: crate::ObjectId,
    name: &Arc<str>,
    kind: &TaskKind,
    trace_context: &[(String, String)],
    attempt: u32,
) -> ConsumerSpan {
    let previous_task = CURRENT_TASK.with(|t| t.replace(Some(id)));
    if !enabled() {
        return ConsumerSpan {
            span: None,
            previous_task,
        };
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Reader(trace_context))
    });
    let tracer = tracer();
    let mut attributes = attributes(name, kind);
    if attempt > 0 {
        attributes.push(KeyValue::new(ATTEMPT, i64::from(attempt)));
    }
    let span: BoxedSpan = tracer
        .span_builder(span_name(name, " filament.remote_worker"))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes)
        .start_with_context(&*tracer, &parent);
    let cx = parent.with_span(span);
    let guard = cx.clone().attach();
    ConsumerSpan {
        span: Some((cx, guard)),
        previous_task,
    }
}

impl ConsumerSpan {
    /// Adds attributes to the span (those of the instrumentations and interceptors).
    pub(crate) fn set_attributes(&self, attributes: Vec<KeyValue>) {
        if let Some((cx, _)) = &self.span
            && !attributes.is_empty()
        {
            cx.span().set_attributes(attributes);
        }
    }

    /// Records how the task ended (a panicked task's span gets status ERROR and an `exception`
    /// event) and leaves the task's context; the span ends when the returned value is dropped.
    pub(crate) fn finish(self, panic_message: Option<&str>) -> FinishedConsumerSpan {
        CURRENT_TASK.with(|t| t.set(self.previous_task));
        let Some((cx, guard)) = self.span else {
            return FinishedConsumerSpan(None);
        };
        drop(guard);
        let span = cx.span();
        if let Some(message) = panic_message {
            span.add_event(
                "exception",
                vec![
                    KeyValue::new("exception.type", "panic"),
                    KeyValue::new("exception.message", message.to_owned()),
                ],
            );
            span.set_status(Status::error(message.to_owned()));
        }
        FinishedConsumerSpan(Some(cx))
    }
}

/// A task's CONSUMER span, ended when dropped.
pub(crate) struct FinishedConsumerSpan(Option<Context>);

impl Drop for FinishedConsumerSpan {
    fn drop(&mut self) {
        if let Some(cx) = self.0.take() {
            cx.span().end();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn task_ids_and_span_names_are_what_format_makes() {
        for id in [0, 1, 0xabc, 0x0002_0000_0000_0001, u64::MAX] {
            let id = crate::ObjectId(id);
            assert_eq!(super::hex_id(id.0), id.to_string());
        }
        assert_eq!(
            super::span_name("m::f", " filament.remote"),
            "m::f filament.remote"
        );
    }
}
