//! The host's instrumentations ("patching" libraries, as the seed says), which hooks switch on by
//! name, and the task interceptors they add.
//!
//! A plugin is a shared object with its own copies of `tracing` and `log`: it cannot reach the
//! dispatcher or the logger of the program that loaded it. The host shares the program's copies, so
//! the host implements every instrumentation, and a hook only switches them on through its handle
//! (`TracingSetup::enable_instrumentation`). Each is off unless a hook switched it on; off, it costs
//! one relaxed atomic load where the runtime would otherwise do the work ([`enabled`]).
//!
//! - `tracing`: spans and events of the `tracing` crate (in task code and in every library it
//!   calls) become OpenTelemetry spans and span events of the host's provider, through the
//!   ecosystem's `tracing-opentelemetry` layer, filtered by an `EnvFilter` directive. The runtime
//!   attaches a task's CONSUMER span as the current OpenTelemetry context while the task runs, and
//!   the layer takes the current context as the parent of a span with no `tracing` parent: the
//!   task's `tracing` spans are children of its CONSUMER span (or of the user's current span).
//!   Events outside any `tracing` span become events of the current OpenTelemetry span.
//! - `log`: records of the `log` crate become events on the current span, with `level`, `target`
//!   and the message, filtered by the same directive (through `tracing-log`'s `LogTracer`).
//! - `get`, `wait`, `serialization`, `queue_wait`, `worker_startup`: the runtime's own internals
//!   (crate `filament` reads the switches).
//!
//! A program that set its own global `tracing` subscriber keeps it: the `tracing` and `log`
//! bridges then say so once and stay off (a global subscriber cannot be wrapped after the fact,
//! and layering onto an unknown subscriber type is not possible from here). Likewise a program that
//! set its own `log` logger keeps it and the `log` bridge stays off.

use super::log::{self as host_log, HookLog};
use super::setup::to_otel_value;
use filament_plugin_api::{
    KeyValue as AbiKeyValue, LogLevel, RawTaskInterceptor_TO, RawTaskSpan, RawTaskSpan_TO,
    TaskInfo, TaskOutcome,
    abi_stable::{
        sabi_trait::TD_Opaque,
        std_types::{RBox, RResult},
    },
};
use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{SpanBuilder, TraceContextExt as _, Tracer, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_log::NormalizeEvent as _;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::layer::{Context as LayerContext, Layer, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

/// The filter directive of the `tracing` and `log` bridges when a hook gives none.
pub const DEFAULT_FILTER: &str = "info";

/// An instrumentation the host offers, switched on by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Instrumentation {
    /// `tracing` spans and events as OpenTelemetry spans and span events.
    Tracing,
    /// `log` records as span events.
    Log,
    /// A span per `get` (`filament.get`).
    Get,
    /// A span per `wait` (`filament.wait`).
    Wait,
    /// A span per serialization and deserialization of an argument or result, with its size.
    Serialization,
    /// How long each task waited between its submission and the start of its run.
    QueueWait,
    /// A span of a worker's start-up, with the hooks' own set-up time.
    WorkerStartup,
}

impl Instrumentation {
    /// Every instrumentation, in the order of their switches.
    pub const ALL: [Instrumentation; 7] = [
        Instrumentation::Tracing,
        Instrumentation::Log,
        Instrumentation::Get,
        Instrumentation::Wait,
        Instrumentation::Serialization,
        Instrumentation::QueueWait,
        Instrumentation::WorkerStartup,
    ];

    /// The name a hook switches it on by.
    pub fn name(self) -> &'static str {
        match self {
            Instrumentation::Tracing => "tracing",
            Instrumentation::Log => "log",
            Instrumentation::Get => "get",
            Instrumentation::Wait => "wait",
            Instrumentation::Serialization => "serialization",
            Instrumentation::QueueWait => "queue_wait",
            Instrumentation::WorkerStartup => "worker_startup",
        }
    }

    /// The instrumentation of a name.
    pub fn from_name(name: &str) -> Option<Instrumentation> {
        Self::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Every name, comma-separated, for messages.
    pub fn names() -> String {
        Self::ALL.map(Instrumentation::name).join(", ")
    }

    fn takes_filter(self) -> bool {
        matches!(self, Instrumentation::Tracing | Instrumentation::Log)
    }
}

static SWITCHES: [AtomicBool; 7] = [const { AtomicBool::new(false) }; 7];

/// Whether an instrumentation is on in this process: one relaxed atomic load.
#[inline]
pub fn enabled(instrumentation: Instrumentation) -> bool {
    SWITCHES[instrumentation as usize].load(Ordering::Relaxed)
}

/// What the hooks of a process asked for, collected while they run.
#[derive(Default)]
pub(crate) struct Requested {
    switched_on: Vec<Instrumentation>,
    /// The filter directive of the bridges, and the hook that gave it.
    filter: Option<(String, String)>,
    interceptors: Vec<Interceptor>,
}

impl std::fmt::Debug for Requested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requested")
            .field("switched_on", &self.switched_on)
            .field("filter", &self.filter)
            .field("interceptors", &self.interceptors.len())
            .finish()
    }
}

impl Requested {
    /// Records hook `hook`'s request to switch `name` on with `options`; the error names the input.
    pub(crate) fn enable(&mut self, hook: &str, name: &str, options: &str) -> Result<(), String> {
        let Some(instrumentation) = Instrumentation::from_name(name.trim()) else {
            return Err(format!(
                "unknown instrumentation \"{name}\" (known: {})",
                Instrumentation::names()
            ));
        };
        let options = options.trim();
        if instrumentation.takes_filter() {
            let directive = if options.is_empty() {
                DEFAULT_FILTER
            } else {
                options
            };
            parse_filter(directive).map_err(|why| format!("instrumentation \"{name}\": {why}"))?;
            match &self.filter {
                Some((first, by)) if first != directive => {
                    return Err(format!(
                        "instrumentation \"{name}\": filter \"{directive}\" differs from \"{first}\", given by hook \"{by}\"; the tracing and log bridges share one filter"
                    ));
                }
                Some(_) => {}
                None => self.filter = Some((directive.to_owned(), hook.to_owned())),
            }
        } else if !options.is_empty() {
            return Err(format!(
                "instrumentation \"{name}\" takes no options (given \"{options}\")"
            ));
        }
        if !self.switched_on.contains(&instrumentation) {
            self.switched_on.push(instrumentation);
        }
        Ok(())
    }

    pub(crate) fn add_interceptor(
        &mut self,
        hook: &str,
        raw: RawTaskInterceptor_TO<'static, RBox<()>>,
    ) {
        self.interceptors.push(Interceptor {
            hook: hook.to_owned(),
            raw,
            reported: AtomicBool::new(false),
            reported_slow: AtomicBool::new(false),
        });
    }
}

/// Parses a filter directive in `RUST_LOG` syntax, strictly: a directive that does not parse is an
/// error naming it, never silently ignored.
pub fn parse_filter(directive: &str) -> Result<EnvFilter, String> {
    EnvFilter::builder()
        .parse(directive)
        .map_err(|e| format!("filter directive \"{directive}\" is malformed: {e}"))
}

/// Switches on what the hooks asked for, for the process whose provider is `provider`; undone by
/// [`deactivate`] when tracing shuts down.
pub(crate) fn activate(requested: Requested, provider: &SdkTracerProvider) {
    let Requested {
        switched_on,
        filter,
        interceptors,
    } = requested;
    if !interceptors.is_empty() {
        *INTERCEPTORS.write().unwrap_or_else(|p| p.into_inner()) = interceptors;
        INTERCEPTING.store(true, Ordering::Release);
    }
    let bridges: Vec<Instrumentation> = switched_on
        .iter()
        .copied()
        .filter(|i| i.takes_filter())
        .collect();
    let mut on = switched_on;
    if !bridges.is_empty() {
        let directive = filter.map_or_else(|| DEFAULT_FILTER.to_owned(), |(d, _)| d);
        *BRIDGE_TRACER.write().unwrap_or_else(|p| p.into_inner()) = Some(BoxedTracer::new(
            Box::new(provider.tracer("filament.instrument")),
        ));
        if let Err(why) = install_bridges(&bridges, &directive) {
            host_log::emit(HookLog::Host, LogLevel::Warn, &why);
            on.retain(|i| !i.takes_filter() || bridges_installed(*i));
        }
    }
    for instrumentation in on {
        SWITCHES[instrumentation as usize].store(true, Ordering::Release);
    }
}

/// Switches every instrumentation off and forgets the interceptors (tracing shut down). A
/// subscriber or logger the bridges installed stays, as globals do, doing nothing until switched on
/// again.
pub(crate) fn deactivate() {
    for switch in &SWITCHES {
        switch.store(false, Ordering::Release);
    }
    INTERCEPTING.store(false, Ordering::Release);
    INTERCEPTORS
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .clear();
    *BRIDGE_TRACER.write().unwrap_or_else(|p| p.into_inner()) = None;
}

// ---- the `tracing` and `log` bridges ----

/// Whether this process's global `tracing` subscriber is the bridges' own.
static OWN_SUBSCRIBER: AtomicBool = AtomicBool::new(false);
/// Whether this process's `log` logger is the bridges' own.
static OWN_LOGGER: AtomicBool = AtomicBool::new(false);
/// Whether the bridges said once that they stay off.
static SAID_OFF: AtomicBool = AtomicBool::new(false);

/// Whether the global `tracing` dispatcher is the bridges' own: the host's messages then go to
/// standard error, not into spans.
pub(crate) fn own_subscriber() -> bool {
    OWN_SUBSCRIBER.load(Ordering::Relaxed)
}

fn bridges_installed(instrumentation: Instrumentation) -> bool {
    match instrumentation {
        Instrumentation::Tracing => OWN_SUBSCRIBER.load(Ordering::Relaxed),
        Instrumentation::Log => {
            OWN_SUBSCRIBER.load(Ordering::Relaxed) && OWN_LOGGER.load(Ordering::Relaxed)
        }
        _ => true,
    }
}

/// The tracer the `tracing` layer makes spans with: the current provider's, swapped when tracing
/// is installed again in the same process (the global subscriber itself cannot be).
static BRIDGE_TRACER: RwLock<Option<BoxedTracer>> = RwLock::new(None);

/// The bridges' tracer: whichever provider is current.
#[derive(Debug, Clone, Copy)]
struct HostTracer;

impl Tracer for HostTracer {
    type Span = BoxedSpan;

    fn build_with_context(
        &self,
        builder: SpanBuilder,
        parent: &opentelemetry::Context,
    ) -> BoxedSpan {
        match BRIDGE_TRACER
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some(tracer) => tracer.build_with_context(builder, parent),
            None => opentelemetry::global::tracer("filament.instrument")
                .build_with_context(builder, parent),
        }
    }
}

fn install_bridges(bridges: &[Instrumentation], directive: &str) -> Result<(), String> {
    if !OWN_SUBSCRIBER.load(Ordering::Relaxed) {
        if ::tracing::dispatcher::has_been_set() {
            return Err(stay_off(
                "this program set its own global `tracing` subscriber, which it keeps",
            ));
        }
        let filter = parse_filter(directive)?;
        let subscriber = tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(HostTracer)
                    .with_location(false)
                    .with_threads(false)
                    .with_filter(tracing_subscriber::filter::filter_fn(|_| {
                        enabled(Instrumentation::Tracing)
                    })),
            )
            .with(CurrentSpanEvents);
        if ::tracing::subscriber::set_global_default(subscriber).is_err() {
            return Err(stay_off(
                "this program set its own global `tracing` subscriber, which it keeps",
            ));
        }
        OWN_SUBSCRIBER.store(true, Ordering::Release);
    }
    if bridges.contains(&Instrumentation::Log) && !OWN_LOGGER.load(Ordering::Relaxed) {
        let max = parse_filter(directive)?
            .max_level_hint()
            .map_or(log::LevelFilter::Trace, level_filter_as_log);
        if tracing_log::LogTracer::builder()
            .with_max_level(max)
            .init()
            .is_err()
        {
            return Err(stay_off(
                "this program set its own `log` logger, which it keeps; the log bridge stays off",
            ));
        }
        OWN_LOGGER.store(true, Ordering::Release);
    }
    Ok(())
}

fn stay_off(why: &str) -> String {
    if SAID_OFF.swap(true, Ordering::Relaxed) {
        // Said once already; the caller's warning repeats nothing new.
        return format!("instrumentation: {why}");
    }
    format!("instrumentation: {why}; the tracing and log bridges stay off")
}

fn level_filter_as_log(level: tracing_subscriber::filter::LevelFilter) -> log::LevelFilter {
    use tracing_subscriber::filter::LevelFilter as L;
    match level {
        L::OFF => log::LevelFilter::Off,
        L::ERROR => log::LevelFilter::Error,
        L::WARN => log::LevelFilter::Warn,
        L::INFO => log::LevelFilter::Info,
        L::DEBUG => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    }
}

/// Puts events that `tracing-opentelemetry` has no span for on the current OpenTelemetry span
/// (the task's CONSUMER span, or the user's): `tracing` events outside any `tracing` span, and
/// `log` records when the `tracing` bridge is off.
struct CurrentSpanEvents;

impl<S> Layer<S> for CurrentSpanEvents
where
    S: ::tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &::tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let from_log = event.is_log();
        let wanted = if from_log {
            enabled(Instrumentation::Log)
        } else {
            enabled(Instrumentation::Tracing)
        };
        if !wanted {
            return;
        }
        let in_a_bridged_span = enabled(Instrumentation::Tracing)
            && (event.parent().is_some()
                || (event.is_contextual() && ctx.lookup_current().is_some()));
        if in_a_bridged_span {
            // `tracing-opentelemetry` puts it on that span.
            return;
        }
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        if !span.is_recording() {
            return;
        }
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut fields = EventFields {
            message: None,
            attributes: vec![
                opentelemetry::KeyValue::new("level", meta.level().as_str()),
                opentelemetry::KeyValue::new("target", meta.target().to_owned()),
            ],
        };
        event.record(&mut fields);
        let name = fields
            .message
            .unwrap_or_else(|| event.metadata().name().to_owned());
        span.add_event(name, fields.attributes);
    }
}

/// An event's fields as attributes; its `message` as the event's name (as `tracing-opentelemetry`
/// names events), and `log`'s own bookkeeping fields left out.
struct EventFields {
    message: Option<String>,
    attributes: Vec<opentelemetry::KeyValue>,
}

impl EventFields {
    fn keep(&self, field: &::tracing::field::Field) -> bool {
        !field.name().starts_with("log.")
    }
}

impl ::tracing::field::Visit for EventFields {
    fn record_str(&mut self, field: &::tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else if self.keep(field) {
            self.attributes
                .push(opentelemetry::KeyValue::new(field.name(), value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &::tracing::field::Field, value: i64) {
        if self.keep(field) {
            self.attributes
                .push(opentelemetry::KeyValue::new(field.name(), value));
        }
    }

    fn record_u64(&mut self, field: &::tracing::field::Field, value: u64) {
        if self.keep(field) {
            let value: opentelemetry::Value =
                i64::try_from(value).map_or_else(|_| value.to_string().into(), Into::into);
            self.attributes
                .push(opentelemetry::KeyValue::new(field.name(), value));
        }
    }

    fn record_f64(&mut self, field: &::tracing::field::Field, value: f64) {
        if self.keep(field) {
            self.attributes
                .push(opentelemetry::KeyValue::new(field.name(), value));
        }
    }

    fn record_bool(&mut self, field: &::tracing::field::Field, value: bool) {
        if self.keep(field) {
            self.attributes
                .push(opentelemetry::KeyValue::new(field.name(), value));
        }
    }

    fn record_debug(&mut self, field: &::tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = Some(format!("{value:?}"));
        } else if self.keep(field) {
            self.attributes.push(opentelemetry::KeyValue::new(
                field.name(),
                format!("{value:?}"),
            ));
        }
    }
}

// ---- task interceptors ----

/// An interceptor a hook added.
struct Interceptor {
    hook: String,
    raw: RawTaskInterceptor_TO<'static, RBox<()>>,
    /// Whether its first failure was reported (later ones are not).
    reported: AtomicBool,
    /// Whether its first slow call was reported (later ones are not).
    reported_slow: AtomicBool,
}

/// An interceptor call that takes longer than this is reported, once per interceptor: it runs on
/// the task's path, where a few microseconds are the norm.
pub const SLOW_INTERCEPTOR: std::time::Duration = std::time::Duration::from_millis(10);

static INTERCEPTING: AtomicBool = AtomicBool::new(false);
static INTERCEPTORS: RwLock<Vec<Interceptor>> = RwLock::new(Vec::new());

/// Whether any hook added a task interceptor: one relaxed atomic load.
#[inline]
pub fn intercepting() -> bool {
    INTERCEPTING.load(Ordering::Relaxed)
}

/// Collects the attributes interceptors set.
struct Collected<'a>(&'a mut Vec<opentelemetry::KeyValue>);

impl RawTaskSpan for Collected<'_> {
    fn set_attribute(&mut self, attribute: AbiKeyValue<'_>) {
        self.0.push(opentelemetry::KeyValue::new(
            attribute.key.to_string(),
            to_otel_value(attribute.value),
        ));
    }
}

/// Calls every interceptor's `on_start` for `task`; appends the attributes they set to
/// `attributes`. A panicking interceptor is reported once and the task goes on.
pub fn task_started(task: &TaskInfo<'_>, attributes: &mut Vec<opentelemetry::KeyValue>) {
    for_each_interceptor(task, "on_start", |raw, task| {
        let mut collected = Collected(attributes);
        raw.on_start(task, RawTaskSpan_TO::from_ptr(&mut collected, TD_Opaque))
    });
}

/// Calls every interceptor's `on_end` for `task`; appends the attributes they set to
/// `attributes`. A panicking interceptor is reported once and the task's result is unaffected.
pub fn task_ended(
    task: &TaskInfo<'_>,
    outcome: TaskOutcome,
    attributes: &mut Vec<opentelemetry::KeyValue>,
) {
    for_each_interceptor(task, "on_end", |raw, task| {
        let mut collected = Collected(attributes);
        raw.on_end(
            task,
            outcome,
            RawTaskSpan_TO::from_ptr(&mut collected, TD_Opaque),
        )
    });
}

fn for_each_interceptor(
    task: &TaskInfo<'_>,
    method: &str,
    mut call: impl FnMut(
        &RawTaskInterceptor_TO<'static, RBox<()>>,
        &TaskInfo<'_>,
    ) -> RResult<(), filament_plugin_api::abi_stable::std_types::RString>,
) {
    let interceptors = INTERCEPTORS.read().unwrap_or_else(|p| p.into_inner());
    for interceptor in interceptors.iter() {
        let started = std::time::Instant::now();
        let returned = call(&interceptor.raw, task);
        let took = started.elapsed();
        if took > SLOW_INTERCEPTOR && !interceptor.reported_slow.swap(true, Ordering::Relaxed) {
            host_log::emit(
                HookLog::Hook(&interceptor.hook),
                LogLevel::Warn,
                &format!(
                    "its task interceptor took {:.1} ms in {method} of task {}: interceptors run on the task's path and should take microseconds (reported once)",
                    took.as_secs_f64() * 1000.0,
                    task.name
                ),
            );
        }
        if let RResult::RErr(message) = returned
            && !interceptor.reported.swap(true, Ordering::Relaxed)
        {
            host_log::emit(
                HookLog::Hook(&interceptor.hook),
                LogLevel::Error,
                &format!(
                    "its task interceptor panicked in {method} of task {} ({message}); the task is unaffected, and further panics of this interceptor are not reported",
                    task.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_name_is_refused_naming_it_and_the_known_ones() {
        let error = Requested::default()
            .enable("h", "tracingg", "")
            .unwrap_err();
        assert_eq!(
            error,
            "unknown instrumentation \"tracingg\" (known: tracing, log, get, wait, serialization, queue_wait, worker_startup)"
        );
    }

    #[test]
    fn a_malformed_filter_is_refused_naming_it() {
        let error = Requested::default()
            .enable("h", "tracing", "info,my_crate=loud")
            .unwrap_err();
        assert!(
            error.starts_with(
                "instrumentation \"tracing\": filter directive \"info,my_crate=loud\" is malformed"
            ),
            "{error}"
        );
    }

    #[test]
    fn internals_take_no_options() {
        let error = Requested::default().enable("h", "get", "x").unwrap_err();
        assert_eq!(
            error,
            "instrumentation \"get\" takes no options (given \"x\")"
        );
    }

    #[test]
    fn the_bridges_share_one_filter() {
        let mut requested = Requested::default();
        requested.enable("a", "tracing", "debug").unwrap();
        requested.enable("b", "log", "").unwrap_err();
        requested.enable("b", "log", "debug").unwrap();
        assert_eq!(
            requested.switched_on,
            [Instrumentation::Tracing, Instrumentation::Log]
        );
    }

    #[test]
    fn every_name_maps_back() {
        for instrumentation in Instrumentation::ALL {
            assert_eq!(
                Instrumentation::from_name(instrumentation.name()),
                Some(instrumentation)
            );
        }
    }
}
