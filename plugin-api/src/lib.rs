//! The stable ABI between the Filament runtime and its tracing hook plugins.
//!
//! # Why this crate exists
//!
//! Filament's tracing is a plugin. A *tracing startup hook* — a `library:symbol` string given when a
//! cluster starts — names a shared object (a Rust `cdylib`) and a function in it. The runtime loads
//! the library in every process of the cluster, checks that the symbol really is a hook built against
//! a compatible version of this crate, and calls it before the process runs its first task. The hook
//! decides where spans go: a file per process, Jaeger, your own backend.
//!
//! A plugin is compiled separately from the program that loads it, possibly with another compiler
//! and other versions of every crate, so nothing of `opentelemetry` crosses the boundary. What does
//! is defined here, with [`abi_stable`]'s checked layouts:
//!
//! - [`TracingSetup`], the handle a hook receives: it configures the host's tracer provider
//!   (sampler, resource, span limits — once per process), adds span processors, and tells the hook
//!   about the process (pid, role, job, node, worker) and the configuration;
//! - [`SpanProcessor`], what a plugin implements to receive finished spans;
//! - [`SpanRecord`], a finished span as borrowed views (ids, name, kind, times, typed attributes,
//!   events, links, status, scope, resource), valid for the duration of one call;
//! - [`TaskInterceptor`], what a plugin implements to be called around every task a worker runs
//!   (ABI 1.2), and the host's instrumentations it switches on by name
//!   ([`TracingSetup::enable_instrumentation`]);
//! - [`export_hook!`], which exports a hook function under the symbol of your choice, with the
//!   header the host checks before calling anything, and panic guards at every entry.
//!
//! # A hook in full
//!
//! ```
//! use filament_plugin_api::{export_hook, LogLevel, SpanProcessor, SpanRecord, TracingSetup};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! /// Prints one line per finished span.
//! struct PrintSpans {
//!     printed: AtomicU64,
//! }
//!
//! impl SpanProcessor for PrintSpans {
//!     fn name(&self) -> String {
//!         "print-spans".into()
//!     }
//!
//!     fn on_end(&self, span: &SpanRecord<'_>) {
//!         println!("{} {} took {} ns", span.trace_id, span.name, span.duration_nanos());
//!         self.printed.fetch_add(1, Ordering::Relaxed);
//!     }
//! }
//!
//! fn setup_tracing(setup: &mut TracingSetup<'_>) -> Result<(), String> {
//!     let process = setup.process();
//!     setup.log(LogLevel::Info, &format!("printing spans of process {}", process.pid));
//!     setup.add_span_processor(PrintSpans { printed: AtomicU64::new(0) });
//!     Ok(())
//! }
//!
//! // The hook string for this plugin is `libmy_plugin.so:setup_tracing`.
//! export_hook!(setup_tracing);
//! ```
//!
//! Build the crate with `crate-type = ["cdylib"]` and pass the library's path at startup:
//! `FILAMENT_TRACING_STARTUP_HOOK=target/release/libmy_plugin.so:setup_tracing`.
//!
//! # Rules of the boundary
//!
//! - **Borrowed, not copied.** A [`SpanRecord`] borrows the host's span for one call; copy what you
//!   keep. This is what makes the boundary nearly free.
//! - **Nothing unwinds across it.** Every entry the host calls is wrapped by this crate in a panic
//!   guard; a panic becomes an error the host reports once.
//! - **Never unloaded.** The host keeps a loaded plugin mapped until the process exits, so
//!   thread-locals and statics in plugins are safe.
//! - **Grows by appending.** The host-side trait and the processor trait are abi_stable prefix types:
//!   methods added later go at the end with a default, so a plugin built today keeps loading.
//!   A change to a record type bumps [`ABI_MAJOR`] and the host refuses older hooks
//!   with a one-line cause.

#![warn(missing_docs)]
// `deny`, not `forbid`: the modules of the `#[sabi_trait]` traits are allowed the unsafe
// vtable glue abi_stable generates for them (the boundary itself, checked by its layout checks);
// nothing in this crate writes `unsafe` by hand.
#![deny(unsafe_code)]

pub mod hook;
#[allow(unsafe_code)] // `#[sabi_trait] RawTaskInterceptor` and `RawTaskSpan`
pub mod interceptor;
#[allow(unsafe_code)] // `#[sabi_trait] RawSpanProcessor`
pub mod processor;
pub mod record;
#[allow(unsafe_code)] // `#[sabi_trait] RawTracingSetup`
pub mod setup;

pub use abi_stable;
pub use hook::{ABI_MAJOR, ABI_MINOR, AbiMismatch, HookEntry, HookHeader};
pub use interceptor::{
    GuardedInterceptor, RawTaskInterceptor, RawTaskInterceptor_TO, RawTaskSpan, RawTaskSpan_TO,
    RawTaskSpanMut, TaskInfo, TaskInterceptor, TaskKind, TaskOutcome, TaskSpan,
};
pub use processor::{
    Guarded, ProcessorError, ProcessorStats, RawSpanProcessor, RawSpanProcessor_TO, SpanProcessor,
};
pub use record::{
    Event, KeyValue, Link, Resource, Scope, SpanId, SpanKind, SpanRecord, Status, StatusCode,
    TraceId, Value,
};
pub use setup::{
    ConfigureError, LogLevel, ProcessInfo, ProcessRole, ProviderConfig, RawTracingSetup,
    RawTracingSetup_TO, RawTracingSetupMut, Sampler, SpanLimits, TracingSetup,
};
