//! The handle a hook receives: [`TracingSetup`], and what it can say through it.
//!
//! A plugin is its own shared object with its own copy of every crate, so it cannot reach the host's
//! `opentelemetry::global` or `tracing` dispatcher. Everything it wants from the host goes through
//! this handle, which wraps the host's [`RawTracingSetup`] trait object.

#[cfg(not(any(filament_abi_1_0_test, filament_abi_1_1_test)))]
use crate::interceptor::{GuardedInterceptor, RawTaskInterceptor_TO, TaskInterceptor};
use crate::processor::{Guarded, RawSpanProcessor_TO, SpanProcessor};
use crate::record::KeyValue;
use abi_stable::{
    StableAbi, sabi_trait,
    sabi_trait::TD_Opaque,
    sabi_types::RMut,
    std_types::{RBox, ROption, RResult, RSlice, RStr, RString},
};
use std::fmt;

/// Which sampler the host's tracer provider uses (the values of `OTEL_TRACES_SAMPLER`).
#[repr(C, u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// Record every span (`always_on`).
    AlwaysOn,
    /// Record nothing (`always_off`).
    AlwaysOff,
    /// Record this fraction of traces, chosen by trace id (`traceidratio`).
    TraceIdRatio(f64),
    /// Follow the parent's decision; root spans always sampled (`parentbased_always_on`, the default).
    ParentBasedAlwaysOn,
    /// Follow the parent's decision; root spans never sampled (`parentbased_always_off`).
    ParentBasedAlwaysOff,
    /// Follow the parent's decision; root spans by ratio (`parentbased_traceidratio`).
    ParentBasedTraceIdRatio(f64),
}

/// Limits on what one span keeps; the excess is dropped and counted.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanLimits {
    /// Attributes per span (`OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`).
    pub max_attributes_per_span: u32,
    /// Events per span (`OTEL_SPAN_EVENT_COUNT_LIMIT`).
    pub max_events_per_span: u32,
    /// Links per span (`OTEL_SPAN_LINK_COUNT_LIMIT`).
    pub max_links_per_span: u32,
    /// Attributes per event (`OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT`).
    pub max_attributes_per_event: u32,
    /// Attributes per link (`OTEL_LINK_ATTRIBUTE_COUNT_LIMIT`).
    pub max_attributes_per_link: u32,
}

impl Default for SpanLimits {
    /// The OpenTelemetry specification's defaults: 128 of everything.
    fn default() -> Self {
        SpanLimits {
            max_attributes_per_span: 128,
            max_events_per_span: 128,
            max_links_per_span: 128,
            max_attributes_per_event: 128,
            max_attributes_per_link: 128,
        }
    }
}

/// How the host should build its tracer provider. Fields left `None`/empty keep the host's defaults,
/// which follow the `OTEL_*` environment variables.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default)]
pub struct ProviderConfig<'a> {
    /// The sampler.
    pub sampler: ROption<Sampler>,
    /// Attributes added to the process's resource (they win over the host's own).
    pub resource: RSlice<'a, KeyValue<'a>>,
    /// Span limits.
    pub span_limits: ROption<SpanLimits>,
}

/// Why [`TracingSetup::configure_provider`] did not apply a configuration.
#[repr(C, u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum ConfigureError {
    /// The provider was configured already in this process; the host warned and kept the first.
    AlreadyConfigured,
    /// The configuration is invalid (the host says why).
    Invalid(RString),
}

impl fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigureError::AlreadyConfigured => f.write_str(
                "the tracer provider was already configured in this process; the first configuration is kept",
            ),
            ConfigureError::Invalid(why) => write!(f, "invalid provider configuration: {why}"),
        }
    }
}

impl std::error::Error for ConfigureError {}

/// What kind of process the hook runs in.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessRole {
    /// The user's program, which submits work.
    Driver,
    /// A worker process that runs tasks and actors.
    Worker,
    /// Anything else (a head or node daemon, a program that only installs tracing).
    Other,
}

impl ProcessRole {
    /// The role as a lower-case word (`driver`, `worker`, `other`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessRole::Driver => "driver",
            ProcessRole::Worker => "worker",
            ProcessRole::Other => "other",
        }
    }
}

/// Facts about the process the hook runs in.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The operating system's process id.
    pub pid: u32,
    /// The process's role in the cluster.
    pub role: ProcessRole,
    /// The job (one driver's run), when there is one.
    pub job_id: ROption<RString>,
    /// The node (machine) the process runs on, when it is part of a cluster.
    pub node_id: ROption<RString>,
    /// The worker's id, in worker processes.
    pub worker_id: ROption<RString>,
}

/// Severity of a message logged through the host.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something is wrong but work goes on.
    Warn,
    /// Normal operation worth telling.
    Info,
    /// Detail for debugging.
    Debug,
}

/// The host's side of the handle, as a stable-ABI trait object. Plugin authors use [`TracingSetup`];
/// the host implements this.
///
/// New methods are appended after the last one, with a default body, so that a plugin built against
/// this version keeps loading in newer hosts and the reverse.
#[cfg(not(any(filament_abi_1_0_test, filament_abi_1_1_test)))]
#[sabi_trait]
pub trait RawTracingSetup {
    /// Configures the tracer provider; allowed once per process.
    fn configure_provider(&mut self, config: &ProviderConfig<'_>) -> RResult<(), ConfigureError>;

    /// Adds a span processor; it receives every span the process finishes.
    fn add_span_processor(&mut self, processor: RawSpanProcessor_TO<'static, RBox<()>>);

    /// Facts about this process.
    fn process_info(&self) -> ProcessInfo;

    /// A configuration value given at startup, or the process environment's.
    fn config(&self, key: RStr<'_>) -> ROption<RString>;

    /// Logs a message through the host.
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, message: RStr<'_>);

    /// Switches on one of the host's instrumentations by name, with its options (ABI 1.2). A host
    /// older than 1.2 has no instrumentations: the call says so.
    fn enable_instrumentation(
        &mut self,
        name: RStr<'_>,
        options: RStr<'_>,
    ) -> RResult<(), ConfigureError> {
        let _ = options;
        RResult::RErr(ConfigureError::Invalid(
            format!("this host predates instrumentations (ABI 1.2): cannot switch on \"{name}\"")
                .into(),
        ))
    }

    /// Adds a task interceptor (ABI 1.2). A host older than 1.2 refuses it.
    fn add_task_interceptor(
        &mut self,
        interceptor: RawTaskInterceptor_TO<'static, RBox<()>>,
    ) -> RResult<(), ConfigureError> {
        drop(interceptor);
        RResult::RErr(ConfigureError::Invalid(
            "this host predates task interceptors (ABI 1.2)".into(),
        ))
    }
}

// The trait as ABI 1.1 (and 1.0) had it, for the test that proves hooks built against it keep
// loading (`--cfg filament_abi_1_1_test`, in a target directory of its own). `#[sabi_trait]` does
// not see `#[cfg]` on a method, hence the whole trait.
#[cfg(any(filament_abi_1_0_test, filament_abi_1_1_test))]
#[allow(missing_docs)]
#[sabi_trait]
pub trait RawTracingSetup {
    fn configure_provider(&mut self, config: &ProviderConfig<'_>) -> RResult<(), ConfigureError>;
    fn add_span_processor(&mut self, processor: RawSpanProcessor_TO<'static, RBox<()>>);
    fn process_info(&self) -> ProcessInfo;
    fn config(&self, key: RStr<'_>) -> ROption<RString>;
    #[sabi(last_prefix_field)]
    fn log(&self, level: LogLevel, message: RStr<'_>);
}

/// The handle type that crosses the boundary: a mutable borrow of the host's setup state.
pub type RawTracingSetupMut<'a> = RawTracingSetup_TO<'a, RMut<'a, ()>>;

/// What a hook receives: configure the host's tracing through it.
///
/// ```
/// use filament_plugin_api::{LogLevel, ProviderConfig, Sampler, TracingSetup};
///
/// fn setup_tracing(setup: &mut TracingSetup<'_>) -> Result<(), String> {
///     let pid = setup.process().pid;
///     setup.log(LogLevel::Info, &format!("tracing set up in process {pid}"));
///     setup
///         .configure_provider(&ProviderConfig {
///             sampler: Some(Sampler::AlwaysOn).into(),
///             ..ProviderConfig::default()
///         })
///         .map_err(|e| e.to_string())
/// }
/// # let _ = setup_tracing;
/// ```
pub struct TracingSetup<'a> {
    raw: RawTracingSetupMut<'a>,
}

impl fmt::Debug for TracingSetup<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingSetup").finish_non_exhaustive()
    }
}

impl<'a> TracingSetup<'a> {
    /// Wraps the host's handle. The host calls this; a plugin receives a ready `TracingSetup`.
    pub fn from_raw(raw: RawTracingSetupMut<'a>) -> Self {
        TracingSetup { raw }
    }

    /// Wraps any implementation of the host side, e.g. a host's own setup state.
    pub fn from_host<T: RawTracingSetup + 'a>(host: &'a mut T) -> Self {
        TracingSetup {
            raw: RawTracingSetup_TO::from_ptr(host, TD_Opaque),
        }
    }

    /// Configures the host's tracer provider: sampler, resource attributes, span limits.
    ///
    /// Allowed once per process, as in OpenTelemetry: a second call (from this hook or another) is
    /// ignored, the host warns, and this returns [`ConfigureError::AlreadyConfigured`].
    pub fn configure_provider(
        &mut self,
        config: &ProviderConfig<'_>,
    ) -> Result<(), ConfigureError> {
        self.raw.configure_provider(config).into()
    }

    /// Adds a span processor: from now on it receives every span this process finishes.
    ///
    /// Its methods are guarded: a panic inside them is caught in the plugin and reported to the host
    /// as an error, never unwound across the boundary.
    pub fn add_span_processor<P: SpanProcessor>(&mut self, processor: P) {
        let boxed = RawSpanProcessor_TO::from_value(Guarded(processor), TD_Opaque);
        self.raw.add_span_processor(boxed);
    }

    /// Facts about this process: pid, role, job, node and worker.
    pub fn process(&self) -> ProcessInfo {
        self.raw.process_info()
    }

    /// A configuration value given at startup; falls back to the process environment.
    pub fn config(&self, key: &str) -> Option<String> {
        self.raw
            .config(key.into())
            .into_option()
            .map(RString::into_string)
    }

    /// Logs a message through the host (its `tracing` subscriber, or standard error).
    pub fn log(&self, level: LogLevel, message: &str) {
        self.raw.log(level, message.into());
    }

    /// Switches on one of the host's instrumentations by name (ABI 1.2). `options` is what the
    /// instrumentation takes: a filter directive in `RUST_LOG` syntax for `tracing` and `log`
    /// (empty: `info`), nothing for the others. The host's README lists the names.
    ///
    /// An unknown name, options an instrumentation does not take, or a host older than 1.2 are
    /// [`ConfigureError::Invalid`], naming the input.
    #[cfg(not(any(filament_abi_1_0_test, filament_abi_1_1_test)))]
    pub fn enable_instrumentation(
        &mut self,
        name: &str,
        options: &str,
    ) -> Result<(), ConfigureError> {
        self.raw
            .enable_instrumentation(name.into(), options.into())
            .into()
    }

    /// Adds a task interceptor (ABI 1.2): in worker processes, the host calls it at the start and
    /// the end of every task and actor call. Its methods are guarded: a panic is caught in the
    /// plugin, the host reports it once and the task goes on unaffected.
    #[cfg(not(any(filament_abi_1_0_test, filament_abi_1_1_test)))]
    pub fn add_task_interceptor<I: TaskInterceptor>(
        &mut self,
        interceptor: I,
    ) -> Result<(), ConfigureError> {
        let boxed = RawTaskInterceptor_TO::from_value(GuardedInterceptor(interceptor), TD_Opaque);
        self.raw.add_task_interceptor(boxed).into()
    }
}
