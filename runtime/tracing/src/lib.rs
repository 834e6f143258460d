//! Filament's tracing host: load the plugins a hook string names, let them configure
//! OpenTelemetry, and route every span of this process to them.
//!
//! This crate is the half of Filament that needs no cluster: any Rust program can load tracing
//! startup hooks with [`install`]. The runtime (crate `filament`) re-exports it as
//! `filament::tracing` and runs it in every process of a cluster. It depends on
//! `filament-plugin-api` (the stable ABI) and OpenTelemetry, nothing of the runtime; the only
//! `unsafe` code of the workspace lives in its [`loader`](self#the-loader), where a library is
//! opened and its symbol proven to be a hook before anything in it runs.
//!
//! The path of a span: user or runtime code records it with the ordinary `opentelemetry` API on the
//! host's tracer provider (`provider`); when it ends, the `bridge` processor turns it into a
//! borrowed [`SpanRecord`](filament_plugin_api::SpanRecord) and hands it across the ABI to every
//! processor the hooks added. The hooks themselves were found and checked by the `loader` before
//! anything in them ran, and configured the host through `setup`.
//!
//! ```no_run
//! use opentelemetry::trace::{Tracer, TracerProvider as _};
//!
//! // Each process writes its spans to /tmp/spans/<pid>.json.
//! let guard = filament_tracing::install("filament_local_file:setup_tracing")?;
//! let tracer = opentelemetry::global::tracer("my-app");
//! tracer.in_span("foo", |_cx| {
//!     // work
//! });
//! drop(guard); // flushes and shuts the plugins down, bounded in time
//! # Ok::<(), filament_tracing::HookError>(())
//! ```
//!
//! # The loader
//!
//! A hook string `library:symbol[,library:symbol…]` is parsed ([`parse_hooks`]); each library is
//! found (see [`PLUGIN_PATH_ENV`] for the search order), opened, and its symbol checked against the
//! header that `filament_plugin_api::export_hook!` exports next to it: a magic value, the ABI
//! version and abi_stable's layout check of the hook's signature. Only then is the hook called.
//! Libraries are never unloaded.

#![warn(missing_docs)]

mod bridge;
mod error;
pub mod instrument;
mod loader;
mod log;
mod provider;
mod setup;
mod spec;

/// The `opentelemetry` crate the host records spans with: make spans through it, not through
/// another version, whose global tracer provider no hook configures.
pub use opentelemetry;

pub use bridge::ProcessorReport;
pub use error::HookError;
pub use filament_plugin_api::{ProcessInfo, ProcessRole, ProcessorStats};
pub use loader::{PLUGIN_PATH_ENV, plugin_home};
pub use provider::OTEL_SDK_DISABLED;
pub use spec::{HookSpec, parse_hooks};

use bridge::{Bridge, Sinks};
use filament_plugin_api::{
    LogLevel, RawTracingSetup_TO,
    abi_stable::{sabi_trait::TD_Opaque, std_types::RResult},
};
use log::HookLog;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanProcessor as _};
use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Duration;

/// The environment variable that names the tracing startup hook(s) when the program does not.
pub const TRACING_STARTUP_HOOK_ENV: &str = "FILAMENT_TRACING_STARTUP_HOOK";

/// How long dropping a [`TracingGuard`] waits for the plugins to flush and shut down.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a hook's setup may take before the host gives up on it, unless
/// [`SETUP_TIMEOUT_ENV`] or [`Tracing::setup_timeout`] says otherwise.
pub const DEFAULT_SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The environment variable that sets the deadline of each hook's setup, in seconds (`2.5`): a
/// cluster's processes inherit it, so one value holds for the driver, every worker and the head.
pub const SETUP_TIMEOUT_ENV: &str = "FILAMENT_HOOK_SETUP_TIMEOUT";

/// The setup deadline from [`SETUP_TIMEOUT_ENV`], else [`DEFAULT_SETUP_TIMEOUT`].
fn setup_timeout_from_env() -> Result<Duration, HookError> {
    let Some(value) = std::env::var_os(SETUP_TIMEOUT_ENV) else {
        return Ok(DEFAULT_SETUP_TIMEOUT);
    };
    let bad = |reason: &str| HookError::BadSetting {
        variable: SETUP_TIMEOUT_ENV,
        value: value.to_string_lossy().into_owned(),
        reason: reason.to_owned(),
    };
    let text = value.to_str().ok_or_else(|| bad("it is not UTF-8"))?;
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| bad("give a number of seconds, such as 10 or 2.5"))?;
    Duration::try_from_secs_f64(seconds)
        .ok()
        .filter(|timeout| !timeout.is_zero())
        .ok_or_else(|| bad("give a positive number of seconds"))
}

/// Loads, checks and runs the hooks of `hooks` (`library:symbol[,library:symbol…]`), installs the
/// resulting tracer provider as this process's global one, and the W3C trace-context propagator.
///
/// Keep the returned guard alive while the program traces: dropping it flushes and shuts down.
pub fn install(hooks: &str) -> Result<TracingGuard, HookError> {
    Tracing::new(hooks).install()
}

/// Parses `hooks`, finds, loads and checks every library, and calls nothing: fail fast when a hook
/// is given, long before a process would run it.
pub fn check(hooks: &str) -> Result<Vec<HookSpec>, HookError> {
    let specs = parse_hooks(hooks)?;
    for spec in &specs {
        loader::load_hook(spec)?;
    }
    Ok(specs)
}

/// A hook that passed every check, without having run: where its library is and what it was
/// built against (`filament plugins list`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HookInfo {
    /// The hook as given.
    pub spec: HookSpec,
    /// The library it was found in, canonical.
    pub path: std::path::PathBuf,
    /// The `filament-plugin-api` ABI version it was built against, `(major, minor)`.
    pub abi: (u32, u32),
}

/// As [`check`], describing each hook.
pub fn inspect(hooks: &str) -> Result<Vec<HookInfo>, HookError> {
    parse_hooks(hooks)?
        .iter()
        .map(|spec| {
            loader::load_hook(spec).map(|hook| HookInfo {
                spec: hook.spec,
                path: hook.path,
                abi: hook.abi,
            })
        })
        .collect()
}

/// The libraries and symbols `hooks` names, each library found, checked and given by its
/// canonical path: two hook strings that name the same hooks differently resolve the same.
pub fn resolve(hooks: &str) -> Result<Vec<(std::path::PathBuf, String)>, HookError> {
    parse_hooks(hooks)?
        .iter()
        .map(|spec| loader::load_hook(spec).map(|hook| (hook.path, hook.spec.symbol)))
        .collect()
}

/// Tracing for one process, built from a hook string and facts about the process.
#[derive(Debug, Clone)]
pub struct Tracing {
    hooks: String,
    process: ProcessInfo,
    config: BTreeMap<String, String>,
    environment: Option<BTreeMap<String, String>>,
    shutdown_timeout: Duration,
    setup_timeout: Option<Duration>,
}

impl Tracing {
    /// Tracing through the hooks of `hooks`, for a process of role [`ProcessRole::Other`].
    pub fn new(hooks: impl Into<String>) -> Self {
        Tracing {
            hooks: hooks.into(),
            process: ProcessInfo {
                pid: std::process::id(),
                role: ProcessRole::Other,
                job_id: None.into(),
                node_id: None.into(),
                worker_id: None.into(),
            },
            config: BTreeMap::new(),
            environment: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            setup_timeout: None,
        }
    }

    /// The process's role, as hooks see it.
    pub fn role(mut self, role: ProcessRole) -> Self {
        self.process.role = role;
        self
    }

    /// The job this process belongs to.
    pub fn job_id(mut self, id: impl Into<String>) -> Self {
        self.process.job_id = Some(id.into().into()).into();
        self
    }

    /// The node this process runs on.
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.process.node_id = Some(id.into().into()).into();
        self
    }

    /// The worker this process is.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.process.worker_id = Some(id.into().into()).into();
        self
    }

    /// A configuration value hooks read with `TracingSetup::config` (before the environment).
    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// The environment hooks read after the configuration values, instead of this process's own:
    /// a worker of a standing cluster reads its driver's, so that a job is configured by its
    /// driver whatever the node's environment holds.
    pub fn environment(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.environment = Some(vars.into_iter().collect());
        self
    }

    /// How long dropping the guard waits for plugins to flush and shut down.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long each hook's setup may take (by default [`SETUP_TIMEOUT_ENV`], else
    /// [`DEFAULT_SETUP_TIMEOUT`]). A hook that has not returned by then fails with
    /// [`HookError::SetupTimeout`].
    pub fn setup_timeout(mut self, timeout: Duration) -> Self {
        self.setup_timeout = Some(timeout);
        self
    }

    /// Runs the hooks and builds the tracer provider, without installing it globally: use
    /// [`TracingGuard::provider`] to make tracers.
    pub fn build(self) -> Result<TracingGuard, HookError> {
        self.build_inner(false)
    }

    /// Runs the hooks, builds the tracer provider, and installs it (and the W3C propagator) as the
    /// process's global ones.
    pub fn install(self) -> Result<TracingGuard, HookError> {
        self.build_inner(true)
    }

    fn build_inner(self, global: bool) -> Result<TracingGuard, HookError> {
        let specs = parse_hooks(&self.hooks)?;
        let checked = specs
            .iter()
            .map(loader::load_hook)
            .collect::<Result<Vec<_>, _>>()?;
        if provider::sdk_disabled() {
            log::emit(
                HookLog::Host,
                LogLevel::Info,
                "OTEL_SDK_DISABLED=true: the hooks were checked but not run; no spans are recorded",
            );
            return Ok(TracingGuard::inert(specs, self.shutdown_timeout));
        }

        let setup_timeout = match self.setup_timeout {
            Some(timeout) => timeout,
            None => setup_timeout_from_env()?,
        };
        let mut host = run_hooks(
            checked,
            setup::HostSetup {
                current_hook: String::new(),
                process: self.process.clone(),
                config: self.config.clone(),
                environment: self.environment.clone(),
                provider: None,
                processors: Vec::new(),
                instrumentations: instrument::Requested::default(),
            },
            setup_timeout,
            self.shutdown_timeout,
        )?;
        if host.processors.is_empty() {
            log::emit(
                HookLog::Host,
                LogLevel::Warn,
                &format!(
                    "the tracing startup hook \"{}\" added no span processor: spans of this process are recorded but go nowhere",
                    self.hooks
                ),
            );
        }
        let requested = host.provider.take();
        let instrumentations = std::mem::take(&mut host.instrumentations);
        let (bridge, sinks) = if host.processors.is_empty() {
            (None, None)
        } else {
            let (bridge, sinks) = Bridge::new(std::mem::take(&mut host.processors));
            (Some(bridge), Some(sinks))
        };
        let provider = provider::build(requested.as_ref(), &self.process, bridge);
        if global {
            opentelemetry::global::set_tracer_provider(provider.clone());
            opentelemetry::global::set_text_map_propagator(
                opentelemetry_sdk::propagation::TraceContextPropagator::new(),
            );
            // Process-wide, as the global provider is: only an installed tracing switches
            // instrumentations on.
            instrument::activate(instrumentations, &provider);
        }
        Ok(TracingGuard {
            hooks: specs,
            provider: Some(provider),
            sinks,
            global,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

/// Runs each hook's setup in order on a thread of its own, giving each `timeout`: a hook that
/// blocks fails the process's tracing with [`HookError::SetupTimeout`] instead of hanging it (its
/// thread is left behind, and nothing the hooks set up is used).
fn run_hooks(
    hooks: Vec<loader::CheckedHook>,
    host: setup::HostSetup,
    timeout: Duration,
    shutdown_timeout: Duration,
) -> Result<setup::HostSetup, HookError> {
    enum Step {
        /// Hook `n` returned.
        Returned(
            usize,
            RResult<(), filament_plugin_api::abi_stable::std_types::RString>,
        ),
        /// Every hook returned; the host with what they asked for.
        Done(Box<setup::HostSetup>),
    }
    let names: Vec<String> = hooks.iter().map(|hook| hook.spec.to_string()).collect();
    let (steps, step) = mpsc::channel();
    std::thread::Builder::new()
        .name("filament-hook-setup".into())
        .spawn(move || {
            let mut host = host;
            for (n, hook) in hooks.iter().enumerate() {
                host.current_hook = hook.spec.to_string();
                let raw = RawTracingSetup_TO::from_ptr(&mut host, TD_Opaque);
                let returned = (hook.entry.setup)(raw);
                let failed = returned.is_err();
                if steps.send(Step::Returned(n, returned)).is_err() || failed {
                    // Processors that earlier hooks added may hold files or threads: release them.
                    let (bridge, _) = Bridge::new(std::mem::take(&mut host.processors));
                    let _ = bridge.shutdown_with_timeout(shutdown_timeout);
                    return;
                }
            }
            let _ = steps.send(Step::Done(Box::new(host)));
        })
        .map_err(|error| HookError::SetupFailed {
            hook: names.join(","),
            message: format!("no thread to run the setup on: {error}"),
        })?;
    let mut next = 0;
    loop {
        match step.recv_timeout(timeout) {
            Ok(Step::Returned(n, RResult::ROk(()))) => next = n + 1,
            Ok(Step::Returned(n, RResult::RErr(message))) => {
                return Err(HookError::SetupFailed {
                    hook: names[n].clone(),
                    message: message.into_string(),
                });
            }
            Ok(Step::Done(host)) => return Ok(*host),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(HookError::SetupTimeout {
                    hook: names[next.min(names.len() - 1)].clone(),
                    timeout,
                });
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(HookError::SetupFailed {
                    hook: names[next.min(names.len() - 1)].clone(),
                    message: "the setup thread ended without an answer".into(),
                });
            }
        }
    }
}

/// Keeps a process's tracing alive; dropping it flushes and shuts down the plugins, bounded in time.
#[derive(Debug)]
#[must_use = "dropping the guard shuts tracing down"]
pub struct TracingGuard {
    hooks: Vec<HookSpec>,
    provider: Option<SdkTracerProvider>,
    sinks: Option<Sinks>,
    global: bool,
    shutdown_timeout: Duration,
}

/// Why shutting tracing down did not go cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The plugins did not finish within the timeout; the process goes on without them.
    #[error("tracing did not shut down within {0:?}")]
    Timeout(Duration),
    /// A plugin's processor failed to flush or shut down.
    #[error("tracing shutdown failed: {0}")]
    Failed(String),
}

impl TracingGuard {
    fn inert(hooks: Vec<HookSpec>, shutdown_timeout: Duration) -> Self {
        TracingGuard {
            hooks,
            provider: None,
            sinks: None,
            global: false,
            shutdown_timeout,
        }
    }

    /// The hooks that were run.
    pub fn hooks(&self) -> &[HookSpec] {
        &self.hooks
    }

    /// The tracer provider; `None` when `OTEL_SDK_DISABLED=true`.
    pub fn provider(&self) -> Option<&SdkTracerProvider> {
        self.provider.as_ref()
    }

    /// What became of the spans of each processor the hooks added.
    pub fn processors(&self) -> Vec<ProcessorReport> {
        self.sinks.as_ref().map(Sinks::reports).unwrap_or_default()
    }

    /// The spans of this process so far, summed over its processors.
    pub fn span_counts(&self) -> SpanCounts {
        self.report_handle().span_counts()
    }

    /// A handle that reads [`TracingGuard::processors`] from anywhere, for as long as it lives.
    pub fn report_handle(&self) -> ReportHandle {
        ReportHandle(self.sinks.clone())
    }

    /// Asks every plugin processor to export what it buffers.
    pub fn force_flush(&self) -> Result<(), ShutdownError> {
        match (&self.provider, &self.sinks) {
            (Some(_), Some(sinks)) => sinks
                .force_flush(bridge::FLUSH_TIMEOUT)
                .map_err(ShutdownError::Failed),
            _ => Ok(()),
        }
    }

    /// Flushes and shuts the plugins down, waiting at most the shutdown timeout.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.shutdown_inner()
    }

    fn shutdown_inner(&mut self) -> Result<(), ShutdownError> {
        let Some(provider) = self.provider.take() else {
            return Ok(());
        };
        if self.global {
            instrument::deactivate();
            opentelemetry::global::set_tracer_provider(
                opentelemetry::trace::noop::NoopTracerProvider::new(),
            );
        }
        // A plugin that ignores its timeout must not hold the process: shut down on a helper thread
        // and stop waiting when the time is up.
        let timeout = self.shutdown_timeout;
        let (done, finished) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("filament-tracing-shutdown".into())
            .spawn(move || {
                let _ = done.send(provider.shutdown_with_timeout(timeout));
            });
        if spawned.is_err() {
            return Err(ShutdownError::Failed(
                "could not start the shutdown thread".into(),
            ));
        }
        match finished.recv_timeout(timeout + Duration::from_millis(100)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ShutdownError::Failed(
                self.sinks
                    .as_ref()
                    .and_then(Sinks::shutdown_failure)
                    .unwrap_or_else(|| error.to_string()),
            )),
            Err(_) => {
                log::emit(
                    HookLog::Host,
                    LogLevel::Warn,
                    &format!("tracing did not shut down within {timeout:?}; giving up on it"),
                );
                Err(ShutdownError::Timeout(timeout))
            }
        }
    }
}

/// Reads a process's processor reports without holding its [`TracingGuard`].
#[derive(Debug, Clone)]
pub struct ReportHandle(Option<Sinks>);

impl ReportHandle {
    /// What became of the spans of each processor the hooks added.
    pub fn processors(&self) -> Vec<ProcessorReport> {
        self.0.as_ref().map(Sinks::reports).unwrap_or_default()
    }

    /// The spans of the process so far, summed over its processors.
    pub fn span_counts(&self) -> SpanCounts {
        SpanCounts::of(&self.processors())
    }
}

/// A process's spans, summed over its plugin processors: what `filament status` shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanCounts {
    /// Spans the processors say they exported; for a processor that counts nothing (says 0
    /// exported and 0 dropped), the spans it took without error.
    pub exported: u64,
    /// Spans lost: those whose `on_end` failed or panicked, and what the processors say they
    /// dropped (a processor whose shutdown gave up on an export counts those spans too).
    pub dropped: u64,
}

impl SpanCounts {
    /// The sum over `reports`.
    pub fn of(reports: &[ProcessorReport]) -> SpanCounts {
        reports.iter().fold(SpanCounts::default(), |sum, report| {
            let counts = report.plugin.exported + report.plugin.dropped > 0;
            let exported = if counts {
                report.plugin.exported
            } else {
                report.delivered
            };
            SpanCounts {
                exported: sum.exported + exported,
                dropped: sum.dropped + report.undelivered + report.plugin.dropped,
            }
        })
    }
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        // Failures were reported by the bridge when they happened.
        let _ = self.shutdown_inner();
    }
}
