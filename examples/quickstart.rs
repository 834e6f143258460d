//! The seed's quickstart: trace a program through a startup hook and make the custom span `foo`.
//!
//! ```text
//! cargo run --release --example quickstart
//! FILAMENT_TRACING_STARTUP_HOOK=path/to/libmy_hook.so:setup_tracing cargo run --release --example quickstart
//! ```
//!
//! With the default hook (`filament_local_file:setup_tracing`) the spans land in
//! `/tmp/spans/<pid>.json` (or `$FILAMENT_SPANS_DIR`), one OTLP/JSON line each; the example prints
//! where they went and their tree.

use filament_examples::{hook_from_env, print_trees, read_spans, span_file, spans_dir};
use opentelemetry::trace::{Span, TraceContextExt, Tracer};
use std::process::ExitCode;

fn main() -> ExitCode {
    let hook = hook_from_env();
    println!("tracing startup hook: {hook}");
    let guard = match filament::tracing::install(&hook) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };

    // As in the seed: a tracer from the global provider, and a custom span `foo`.
    let tracer = opentelemetry::global::tracer("quickstart");
    let answer = tracer.in_span("foo", |cx| {
        println!("Hello world from OpenTelemetry Rust!");
        cx.span()
            .set_attribute(opentelemetry::KeyValue::new("greeting", "hello"));
        let mut child = tracer.start("bar");
        let answer: u64 = (1..=10).sum();
        child.set_attribute(opentelemetry::KeyValue::new("answer", answer as i64));
        child.end();
        answer
    });
    println!("result: {answer}");

    let reports = guard.processors();
    if let Err(error) = guard.shutdown() {
        eprintln!("warning: {error}");
    }
    for report in &reports {
        println!(
            "spans went to {} ({} exported, {} dropped)",
            report.name, report.plugin.exported, report.plugin.dropped
        );
    }
    if hook.contains("filament_local_file") {
        let file = span_file(&spans_dir(), std::process::id());
        println!("span file: {}", file.display());
        print_trees(&read_spans(&[file]));
    }
    ExitCode::SUCCESS
}
