//! The seed's quickstart, in Rust: start a cluster with a tracing startup hook, run a remote
//! function, and make a custom span `foo` inside a task.
//!
//! ```text
//! cargo run --release --example quickstart
//! FILAMENT_TRACING_STARTUP_HOOK=path/to/libmy_hook.so:setup_tracing cargo run --release --example quickstart
//!
//! # or, as the seed's first way: a standing cluster with the hook, and the quickstart attached
//! filament start --head --tracing-startup-hook=filament_local_file:setup_tracing
//! FILAMENT_ADDRESS=auto cargo run --release --example quickstart
//! ```
//!
//! With the default hook (`filament_local_file:setup_tracing`) every process of the cluster writes
//! its spans to `/tmp/spans/<pid>.json` (or `$FILAMENT_SPANS_DIR`), one OTLP/JSON line each; the
//! example prints the results, the span files and the span tree.

// The runtime's own `opentelemetry`: another version in your manifest has a tracer provider of its
// own, which no hook configures.
use filament::opentelemetry::trace::Tracer;

#[filament::remote]
fn my_function() -> i32 {
    1
}

#[filament::remote]
fn my_func() -> String {
    // Inside a task, as in the seed: a tracer, and a custom span, child of the task's span.
    let tracer = filament::tracer("quickstart");
    tracer.in_span("foo", |_cx| {
        "Hello world from OpenTelemetry Rust!".to_owned()
    })
}

fn main() -> Result<(), filament::GetError> {
    // In worker processes (this program, re-executed) `init` serves tasks and never returns.
    let (runtime, hook) = filament_examples::init_or_exit();
    println!("tracing startup hook: {hook}");
    println!(
        "my_function returned {}",
        filament::get(&my_function::remote())?
    );
    println!("my_func said: {}", my_func::remote().get()?);
    filament_examples::finish(runtime, &hook);
    Ok(())
}
