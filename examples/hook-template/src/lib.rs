//! A template for your own Filament tracing hook: copy this crate, rename it, change `on_end`.
//!
//! This one prints a human-readable line per finished span to standard error (or to the file named
//! by the configuration value `CONSOLE_SPANS_FILE`), and tags every span's process with the resource
//! attribute `deployment.environment.name` from `CONSOLE_SPANS_ENVIRONMENT` if set.
//!
//! Hook string once built: `target/release/libfilament_hook_template.so:setup_tracing`.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

use filament_plugin_api::{
    KeyValue, LogLevel, ProcessorError, ProcessorStats, ProviderConfig, SpanProcessor, SpanRecord,
    StatusCode, TracingSetup, Value, export_hook,
};
use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// 1. Export the hook under the symbol users will name after the colon.
export_hook!(setup_tracing);

// 2. The hook runs once in every process, before its first task. Read configuration through the
//    handle (not `std::env`): values given at cluster start reach every process that way. So every
//    process of the cluster sees the same values: a file named there is shared by all of them.
fn setup_tracing(setup: &mut TracingSetup<'_>) -> Result<(), String> {
    if let Some(environment) = setup.config("CONSOLE_SPANS_ENVIRONMENT") {
        let resource = [KeyValue::new(
            "deployment.environment.name",
            Value::Str(environment.as_str().into()),
        )];
        // Allowed once per process; if another hook configured first, keep going with theirs.
        if let Err(error) = setup.configure_provider(&ProviderConfig {
            resource: resource.as_slice().into(),
            ..ProviderConfig::default()
        }) {
            setup.log(LogLevel::Warn, &error.to_string());
        }
    }
    let out: Box<dyn Write + Send> = match setup.config("CONSOLE_SPANS_FILE") {
        // Every process appends to the same file: open it for appending (never truncate what the
        // others wrote) and write each line with one `write`, which O_APPEND keeps whole. Fail at
        // setup, with the path and the cause, rather than lose spans later.
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("cannot open {path} for appending: {e}"))?,
        ),
        None => Box::new(std::io::stderr()),
    };
    let pid = setup.process().pid;
    setup.add_span_processor(ConsoleSpans {
        pid,
        out: Mutex::new(out),
        exported: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    Ok(())
}

// 3. The processor. `on_end` runs on the thread that ended the span, inside the user's task: keep it
//    short and never block (a slow backend wants a bounded queue and a thread of its own).
struct ConsoleSpans {
    pid: u32,
    out: Mutex<Box<dyn Write + Send>>,
    exported: AtomicU64,
    dropped: AtomicU64,
}

impl SpanProcessor for ConsoleSpans {
    fn name(&self) -> String {
        "console".into()
    }

    fn on_end(&self, span: &SpanRecord<'_>) {
        let status = match span.status.code {
            StatusCode::Error => format!(" ERROR {}", span.status.description),
            _ => String::new(),
        };
        // The record is borrowed for this call only: format (copy) what you keep.
        let line = format!(
            "[pid {}] {} {:?} {} µs trace={} span={}{status}\n",
            self.pid,
            span.name,
            span.kind,
            span.duration_nanos() / 1000,
            span.trace_id,
            span.span_id,
        );
        // One `write` of the whole line under a lock (a short one counts as dropped: the rest would
        // land after another process's line); an exporter with a network in the way would queue.
        let written = match self.out.lock() {
            Ok(mut out) => out.write(line.as_bytes()).is_ok_and(|n| n == line.len()),
            Err(_) => false,
        };
        let counter = if written {
            &self.exported
        } else {
            &self.dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn force_flush(&self, _timeout: Duration) -> Result<(), ProcessorError> {
        let mut out = self
            .out
            .lock()
            .map_err(|_| ProcessorError::failed("poisoned"))?;
        out.flush().map_err(ProcessorError::failed)
    }

    fn shutdown(&self, timeout: Duration) -> Result<(), ProcessorError> {
        self.force_flush(timeout)
    }

    fn stats(&self) -> ProcessorStats {
        ProcessorStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}
