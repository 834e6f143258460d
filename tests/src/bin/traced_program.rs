//! A program that installs tracing hooks and makes spans, for tests that need a process of its own
//! (process-wide environment variables, exit behaviour, what reaches standard error).
//!
//! Usage: `traced-program [--hooks HOOKS] [--spans N] [--interval-ms MS] [--flush-first]
//! [--exit-without-shutdown]`
//! With `--interval-ms`, it waits that long after each span and prints `ended=<i>` once span `i`
//! ended. Before shutting down it prints what each processor reports (`processor "…" delivered=…`),
//! after a flush with `--flush-first`.
//! Hooks default to `FILAMENT_TRACING_STARTUP_HOOK`. Prints `pid=<pid>` first. Exit codes: 0 done,
//! 2 bad arguments, 3 the hooks were refused (the error on standard error).

use opentelemetry::trace::{Span, Tracer};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut hooks = std::env::var(filament::tracing::TRACING_STARTUP_HOOK_ENV).ok();
    let mut spans = 1usize;
    let mut exit_without_shutdown = false;
    let mut flush_first = false;
    let mut interval = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--hooks" => hooks = args.next(),
            "--spans" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => spans = n,
                None => {
                    eprintln!("--spans needs a number");
                    return ExitCode::from(2);
                }
            },
            "--interval-ms" => match args.next().and_then(|n| n.parse().ok()) {
                Some(ms) => interval = Some(std::time::Duration::from_millis(ms)),
                None => {
                    eprintln!("--interval-ms needs a number");
                    return ExitCode::from(2);
                }
            },
            "--exit-without-shutdown" => exit_without_shutdown = true,
            "--flush-first" => flush_first = true,
            other => {
                eprintln!("unknown argument {other:?}");
                return ExitCode::from(2);
            }
        }
    }
    println!("pid={}", std::process::id());
    let guard = match filament::tracing::install(hooks.as_deref().unwrap_or_default()) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(3);
        }
    };
    let tracer = opentelemetry::global::tracer("traced-program");
    for i in 0..spans {
        let mut span = tracer.start(format!("span-{i}"));
        span.set_attribute(opentelemetry::KeyValue::new("index", i as i64));
        span.end();
        if let Some(interval) = interval {
            println!("ended={i}");
            std::io::Write::flush(&mut std::io::stdout()).expect("stdout");
            std::thread::sleep(interval);
        }
    }
    if exit_without_shutdown {
        std::process::exit(0);
    }
    if flush_first && let Err(error) = guard.force_flush() {
        println!("flush: {error}");
    }
    for report in guard.processors() {
        println!(
            "processor {:?} delivered={} failures={} exported={} dropped={} failed={}",
            report.name,
            report.delivered,
            report.failures,
            report.plugin.exported,
            report.plugin.dropped,
            report.plugin_failed
        );
    }
    if let Err(error) = guard.shutdown() {
        println!("shutdown: {error}");
    }
    ExitCode::SUCCESS
}
