//! Filament's instrument hook: switches on instrumentation ("patching" the libraries that have
//! built-in tracing support, as the seed says) and adds per-task resource use to task spans.
//!
//! Hook string: `filament_instrument:setup_tracing`. It exports no span itself: compose it with an
//! exporter hook, in either order, e.g.
//! `FILAMENT_TRACING_STARTUP_HOOK=filament_instrument:setup_tracing,filament_local_file:setup_tracing`.
//!
//! A plugin has its own copies of `tracing` and `log` and cannot reach the program's, so the host
//! implements the instrumentations and this hook switches them on through its handle
//! ([`TracingSetup::enable_instrumentation`]). What it switches on is the configuration value
//! [`INSTRUMENT_KEY`] (`FILAMENT_INSTRUMENT`, given at startup or in the environment): a comma list
//! of names, by default [`DEFAULT_INSTRUMENTATIONS`]:
//!
//! - `tracing`: `tracing` spans and events become OpenTelemetry spans and span events, children of
//!   the task's CONSUMER span, filtered by [`FILTER_KEY`] (`FILAMENT_INSTRUMENT_FILTER`, `RUST_LOG`
//!   syntax, default `info`);
//! - `log`: `log` records become events on the current span, filtered likewise;
//! - `get`, `wait`, `serialization`, `queue_wait`, `worker_startup`: the runtime's own internals;
//! - `resources` (this plugin's own): a task interceptor that puts each task's CPU time
//!   (`filament.cpu_user_ms`, `filament.cpu_system_ms`, of the thread that ran it) and the growth
//!   of the process's peak resident memory while it ran (`filament.peak_memory_growth_bytes`) on
//!   its CONSUMER span;
//! - `all`: every one of them; `none` (or an empty value): none.
//!
//! An unknown name or a malformed filter fails the hook at set-up, naming the input.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use filament_plugin_api::{
    ConfigureError, TaskInfo, TaskInterceptor, TaskOutcome, TaskSpan, TracingSetup, Value,
    export_hook,
};
use nix::sys::resource::{UsageWho, getrusage};
use std::cell::RefCell;

/// The configuration value naming the instrumentations to switch on (a comma list).
pub const INSTRUMENT_KEY: &str = "FILAMENT_INSTRUMENT";

/// The configuration value holding the filter of the `tracing` and `log` bridges.
pub const FILTER_KEY: &str = "FILAMENT_INSTRUMENT_FILTER";

/// What is switched on when [`INSTRUMENT_KEY`] is not set: the libraries' own tracing and logging,
/// and per-task resource use. The runtime's internals add spans to every `get` and `wait` and are
/// asked for by name.
pub const DEFAULT_INSTRUMENTATIONS: &str = "tracing,log,resources";

/// The filter of the bridges when [`FILTER_KEY`] is not set.
pub const DEFAULT_FILTER: &str = "info";

/// The name of this plugin's own instrumentation: per-task resource use.
pub const RESOURCES: &str = "resources";

/// Every instrumentation of the host this plugin knows (for `all`); a newer host may have more,
/// which are switched on by name all the same.
pub const HOST_INSTRUMENTATIONS: [&str; 7] = [
    "tracing",
    "log",
    "get",
    "wait",
    "serialization",
    "queue_wait",
    "worker_startup",
];

fn setup_tracing(setup: &mut TracingSetup<'_>) -> Result<(), String> {
    let given = setup.config(INSTRUMENT_KEY);
    let list = given
        .clone()
        .unwrap_or_else(|| DEFAULT_INSTRUMENTATIONS.to_owned());
    let filter = setup
        .config(FILTER_KEY)
        .filter(|f| !f.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_FILTER.to_owned());
    let names = expand(&list);
    for name in &names {
        if name == RESOURCES {
            setup
                .add_task_interceptor(ResourceUse)
                .map_err(|e| format!("{INSTRUMENT_KEY}={list:?}: \"{RESOURCES}\": {e}"))?;
            continue;
        }
        let options = if matches!(name.as_str(), "tracing" | "log") {
            filter.as_str()
        } else {
            ""
        };
        setup.enable_instrumentation(name, options).map_err(|e| {
            // The host says why in its own words (`Invalid`); its `Display` speaks of providers.
            let why = match e {
                ConfigureError::Invalid(why) => why.into_string(),
                other => other.to_string(),
            };
            if why.contains("filter directive") {
                format!("{FILTER_KEY}={filter:?}: {why}")
            } else {
                format!(
                    "{INSTRUMENT_KEY}={list:?}: {why}; this plugin also offers \"{RESOURCES}\", \"all\" and \"none\""
                )
            }
        })?;
    }
    Ok(())
}

export_hook!(setup_tracing);

/// The names of a comma list, `all` and `none` expanded, each once, in order.
fn expand(list: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let add: Vec<&str> = match name {
            "none" => Vec::new(),
            "all" => HOST_INSTRUMENTATIONS
                .iter()
                .copied()
                .chain([RESOURCES])
                .collect(),
            other => vec![other],
        };
        for name in add {
            if !names.iter().any(|n| n == name) {
                names.push(name.to_owned());
            }
        }
    }
    names
}

/// A snapshot of what a task is measured by.
#[derive(Debug, Clone, Copy)]
struct Usage {
    user_micros: i64,
    system_micros: i64,
    peak_rss_kib: i64,
}

fn usage() -> Option<Usage> {
    let thread = getrusage(UsageWho::RUSAGE_THREAD).ok()?;
    let process = getrusage(UsageWho::RUSAGE_SELF).ok()?;
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() * 1_000_000 + t.tv_usec();
    Some(Usage {
        user_micros: micros(thread.user_time()),
        system_micros: micros(thread.system_time()),
        peak_rss_kib: process.max_rss(),
    })
}

thread_local! {
    /// The usage at the start of the tasks this thread is running (a stack: a task's `get` may let
    /// the host run another task on a new thread, never on this one, but a stack costs nothing).
    static STARTED: RefCell<Vec<Option<Usage>>> = const { RefCell::new(Vec::new()) };
}

/// The `resources` interceptor: CPU time of the thread that ran the task, and the growth of the
/// process's peak resident memory while it ran.
#[derive(Debug, Clone, Copy)]
pub struct ResourceUse;

impl TaskInterceptor for ResourceUse {
    fn on_start(&self, _task: &TaskInfo<'_>, _span: &mut TaskSpan<'_>) {
        let now = usage();
        STARTED.with(|started| started.borrow_mut().push(now));
    }

    fn on_end(&self, _task: &TaskInfo<'_>, _outcome: TaskOutcome, span: &mut TaskSpan<'_>) {
        let Some(Some(start)) = STARTED.with(|started| started.borrow_mut().pop()) else {
            return;
        };
        let Some(end) = usage() else {
            return;
        };
        let ms = |micros: i64| micros as f64 / 1000.0;
        span.set_attribute(
            "filament.cpu_user_ms",
            Value::F64(ms(end.user_micros - start.user_micros)),
        );
        span.set_attribute(
            "filament.cpu_system_ms",
            Value::F64(ms(end.system_micros - start.system_micros)),
        );
        span.set_attribute(
            "filament.peak_memory_growth_bytes",
            Value::I64((end.peak_rss_kib - start.peak_rss_kib).max(0) * 1024),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_and_none_expand_and_names_come_once() {
        assert_eq!(expand("none"), Vec::<String>::new());
        assert_eq!(expand(""), Vec::<String>::new());
        assert_eq!(expand("get, get,wait"), ["get", "wait"]);
        assert_eq!(expand("all").len(), HOST_INSTRUMENTATIONS.len() + 1);
    }

    #[test]
    fn the_threads_cpu_time_grows_as_it_spins_and_never_past_the_wall_clock() {
        let start = usage().unwrap();
        let wall = std::time::Instant::now();
        let cpu = |u: Usage| u.user_micros + u.system_micros;
        let mut x = 0u64;
        // Until 30 ms of CPU were counted, whatever the machine's load; 10 s at most.
        while cpu(usage().unwrap()) - cpu(start) < 30_000 && wall.elapsed().as_secs() < 10 {
            for _ in 0..10_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        let spent = cpu(usage().unwrap()) - cpu(start);
        let elapsed = wall.elapsed().as_micros() as i64;
        assert!(spent >= 30_000, "{spent} µs of CPU in {elapsed} µs");
        // Thread time, not the process's: one thread cannot spend more than the wall clock
        // (allow a scheduler tick of up to 4 ms).
        assert!(
            spent <= elapsed + 4_000,
            "{spent} µs of CPU in {elapsed} µs"
        );
    }
}
