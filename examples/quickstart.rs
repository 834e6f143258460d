//! The seed's quickstart, in Rust: start a cluster with a tracing startup hook, run a remote
//! function, and make a custom span `foo` inside a task.
//!
//! ```text
//! cargo run --release --example quickstart
//! FILAMENT_TRACING_STARTUP_HOOK=path/to/libmy_hook.so:setup_tracing cargo run --release --example quickstart
//! ```
//!
//! With the default hook (`filament_local_file:setup_tracing`) every process of the cluster writes
//! its spans to `/tmp/spans/<pid>.json` (or `$FILAMENT_SPANS_DIR`), one OTLP/JSON line each; the
//! example prints the result, the span files and the span tree.

use filament_examples::{hook_from_env, print_trees, read_spans, spans_dir};
use opentelemetry::trace::Tracer;
use std::process::ExitCode;

#[filament::remote]
fn my_function() -> i32 {
    1
}

#[filament::remote]
fn my_func() -> String {
    let tracer = opentelemetry::global::tracer("quickstart");
    tracer.in_span("foo", |_cx| {
        "Hello world from OpenTelemetry Rust!".to_owned()
    })
}

fn main() -> ExitCode {
    let hook = hook_from_env();
    let runtime = match filament::init(filament::Config::default().tracing_startup_hook(&hook)) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("tracing startup hook: {hook}");
    match filament::get(&my_function::remote()) {
        Ok(value) => println!("my_function returned {value}"),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    match my_func::remote().get() {
        Ok(greeting) => println!("my_func said: {greeting}"),
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::FAILURE;
        }
    }
    // Stopping the cluster flushes every process's spans.
    let job = runtime.job_id().to_owned();
    drop(runtime);

    if hook.contains("filament_local_file") {
        let dir = spans_dir();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .collect();
        files.sort();
        let spans = read_spans(&files);
        let ours: Vec<_> = spans.into_iter().filter(|s| s.job == job).collect();
        let mut pids: Vec<&str> = ours.iter().map(|s| s.pid.as_str()).collect();
        pids.sort();
        pids.dedup();
        println!("span files of this run in {}:", dir.display());
        for pid in pids {
            println!("  {}", dir.join(format!("{pid}.json")).display());
        }
        print_trees(&ours);
    }
    ExitCode::SUCCESS
}
