//! The spans the runtime makes, as Ray makes them: a PRODUCER span per submission in the caller and a
//! CONSUMER span per execution in the worker, linked by the W3C context carried in the task envelope.
//! With no tracing hook nothing here runs: no context is injected, no span is made.

use crate::wire::{TaskKind, TaskSpec};
use opentelemetry::global::BoxedSpan;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Facts every span of this process carries.
#[derive(Debug, Clone)]
pub(crate) struct ProcessFacts {
    pub(crate) job_id: String,
    pub(crate) node_id: String,
    pub(crate) worker_id: Option<String>,
}

static FACTS: OnceLock<ProcessFacts> = OnceLock::new();

/// Turns task tracing on for this process (a hook was installed).
pub(crate) fn enable(facts: ProcessFacts) {
    let _ = FACTS.set(facts);
    ENABLED.store(true, Ordering::Release);
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

fn tracer() -> opentelemetry::global::BoxedTracer {
    opentelemetry::global::tracer("filament")
}

fn attributes(spec_name: &str, kind: &TaskKind, actor_class: Option<&str>) -> Vec<KeyValue> {
    let facts = FACTS.get();
    let mut attributes = Vec::with_capacity(10);
    match kind {
        TaskKind::Function { .. } => {
            attributes.push(KeyValue::new("filament.remote", "function"));
        }
        TaskKind::CreateActor { actor, .. } | TaskKind::ActorCall { actor, .. } => {
            attributes.push(KeyValue::new("filament.remote", "actor"));
            let (class, method) = spec_name.rsplit_once("::").unwrap_or((spec_name, ""));
            attributes.push(KeyValue::new(
                "filament.actor_class",
                actor_class.unwrap_or(class).to_owned(),
            ));
            attributes.push(KeyValue::new("filament.actor_method", method.to_owned()));
            attributes.push(KeyValue::new("filament.actor_id", format!("{actor:016x}")));
        }
    }
    attributes.push(KeyValue::new("filament.function", spec_name.to_owned()));
    attributes.push(KeyValue::new("filament.pid", i64::from(std::process::id())));
    if let Some(facts) = facts {
        attributes.push(KeyValue::new("filament.job_id", facts.job_id.clone()));
        attributes.push(KeyValue::new("filament.node_id", facts.node_id.clone()));
        if let Some(worker) = &facts.worker_id {
            attributes.push(KeyValue::new("filament.worker_id", worker.clone()));
        }
    }
    if let Some(task) = CURRENT_TASK.with(|t| t.get()) {
        attributes.push(KeyValue::new("filament.task_id", task.to_string()));
    }
    attributes
}

/// Makes the PRODUCER span of a submission, child of the caller's current span, and puts its
/// context into the envelope. The span covers the submission only.
pub(crate) fn on_submit(spec: &mut TaskSpec) {
    if !enabled() {
        return;
    }
    let tracer = tracer();
    let span = tracer
        .span_builder(format!("{} filament.remote", spec.name))
        .with_kind(SpanKind::Producer)
        .with_attributes(attributes(&spec.name, &spec.kind, None))
        .start_with_context(&tracer, &Context::current());
    let cx = Context::current_with_span(span);
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut Carrier(&mut spec.trace_context));
    });
    cx.span().end();
}

/// The CONSUMER span of an execution, current while the task runs.
pub(crate) struct Execution {
    span: Option<(Context, opentelemetry::ContextGuard)>,
    previous_task: Option<crate::ObjectId>,
}

/// Starts the CONSUMER span of a task (child of its PRODUCER) and makes it current, so that spans the
/// task makes are its children and tasks it submits continue the trace.
pub(crate) fn on_execute(
    id: crate::ObjectId,
    name: &str,
    kind: &TaskKind,
    trace_context: &[(String, String)],
) -> Execution {
    let previous_task = CURRENT_TASK.with(|t| t.replace(Some(id)));
    if !enabled() {
        return Execution {
            span: None,
            previous_task,
        };
    }
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&Reader(trace_context))
    });
    let tracer = tracer();
    let span: BoxedSpan = tracer
        .span_builder(format!("{name} filament.remote_worker"))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes(name, kind, None))
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let guard = cx.clone().attach();
    Execution {
        span: Some((cx, guard)),
        previous_task,
    }
}

impl Execution {
    /// Ends the span; a panicked task's span gets status ERROR and an `exception` event.
    pub(crate) fn finish(self, panic_message: Option<&str>) {
        CURRENT_TASK.with(|t| t.set(self.previous_task));
        let Some((cx, guard)) = self.span else {
            return;
        };
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
        span.end();
        drop(guard);
    }
}
