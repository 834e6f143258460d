//! The instrument hook end to end: a real driver and workers (`instrumented-program`) with
//! `filament_instrument` composed with an exporter hook, spans read back from the local-file
//! plugin's OTLP/JSON files (or received over OTLP from the Jaeger plugin) with the
//! `opentelemetry-proto` decoder.

#[allow(dead_code, unreachable_pub)]
#[path = "../jaeger/receiver.rs"]
mod receiver;

use filament_tests::{ReadSpan, Run, assert_child_of, find, read_spans_dir};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use std::collections::BTreeSet;
use std::process::Command;

const INSTRUMENT: &str = "filament_instrument:setup_tracing";
const BOTH: &str = "filament_instrument:setup_tracing,filament_local_file:setup_tracing";

fn program(scenario: &str, hooks: &str, envs: &[(&str, &str)]) -> (Command, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_instrumented-program"));
    command
        .arg(scenario)
        .env("FILAMENT_TRACING_STARTUP_HOOK", hooks)
        .env("FILAMENT_SPANS_DIR", dir.path())
        .env("RUST_BACKTRACE", "0");
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") || key.starts_with("FILAMENT_INSTRUMENT") || key == "RUST_LOG" {
            command.env_remove(key);
        }
    }
    for (key, value) in envs {
        command.env(key, value);
    }
    (command, dir)
}

fn run_with(scenario: &str, hooks: &str, envs: &[(&str, &str)]) -> Run {
    let (mut command, dir) = program(scenario, hooks, envs);
    Run::new(
        command.output().expect("instrumented-program runs"),
        dir.path(),
    )
}

fn run(scenario: &str, envs: &[(&str, &str)]) -> Run {
    run_with(scenario, BOTH, envs).ok()
}

fn string(s: &str) -> Value {
    Value::StringValue(s.to_owned())
}

fn stderr(run: &Run) -> String {
    String::from_utf8_lossy(&run.output.stderr).into_owned()
}

fn event<'a>(span: &'a ReadSpan, name: &str) -> &'a Event {
    span.span
        .events
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| {
            panic!(
                "{} has no event {name:?}: {:?}",
                span.name(),
                span.span.events
            )
        })
}

fn event_attr<'a>(event: &'a Event, key: &str) -> &'a Value {
    find(&event.attributes, key).unwrap_or_else(|| {
        panic!(
            "event {:?} has no {key}: {:?}",
            event.name, event.attributes
        )
    })
}

fn number(value: Option<&Value>) -> f64 {
    match value {
        Some(Value::DoubleValue(v)) => *v,
        Some(Value::IntValue(v)) => *v as f64,
        Some(Value::StringValue(v)) if v.parse::<f64>().is_ok() => v.parse().unwrap(),
        other => panic!("not a number: {other:?}"),
    }
}

const TRACED: &str = "instrumented_program::traced filament.remote_worker";

#[test]
fn tracing_spans_of_a_task_are_children_of_its_consumer_span_with_fields_as_attributes() {
    let run = run("tracing", &[]);
    assert_eq!(run.value("result"), "22");
    let (worker, consumer) = run.span(TRACED);
    let (step_pid, step) = run.span("step");
    assert_eq!(step_pid, worker, "in the process that ran the task");
    assert_ne!(worker, run.driver_pid());
    assert_child_of(step, consumer);
    assert_eq!(step.span.kind, SpanKind::Internal as i32);
    // `#[tracing::instrument]` records a function's arguments with `Debug`.
    assert_eq!(step.attribute("n"), Some(&string("8")), "the argument `n`");
    assert_eq!(
        step.resource_attribute("process.pid"),
        Some(&Value::IntValue(i64::from(worker)))
    );
    let stepping = event(step, "stepping");
    assert_eq!(number(Some(event_attr(stepping, "half"))), 4.0);
    assert_eq!(event_attr(stepping, "level"), &string("INFO"));
    run.assert_one_tree();
}

#[test]
fn log_records_are_events_on_the_current_span() {
    let run = run("tracing", &[]);
    let (_, consumer) = run.span(TRACED);
    // Outside any `tracing` span: on the task's CONSUMER span.
    let record = event(consumer, "a log record in the task itself");
    assert_eq!(event_attr(record, "level"), &string("INFO"));
    assert_eq!(
        event_attr(record, "target"),
        &string("instrumented_program::task")
    );
    let outside = event(consumer, "a tracing event outside any tracing span");
    assert_eq!(event_attr(outside, "level"), &string("WARN"));
    assert_eq!(event_attr(outside, "n"), &Value::IntValue(8));
    // Inside one: on that span.
    let (_, step) = run.span("step");
    let inside = event(step, "a log record inside step 8");
    assert_eq!(event_attr(inside, "level"), &string("INFO"));
    assert!(
        !consumer
            .span
            .events
            .iter()
            .any(|e| e.name == "a log record inside step 8"),
        "once, on the innermost span"
    );
}

#[test]
fn with_only_the_log_bridge_records_go_on_the_task_span_and_tracing_stays_out() {
    let run = run("tracing", &[("FILAMENT_INSTRUMENT", "log")]);
    assert_eq!(run.value("result"), "22");
    let names = run.names();
    assert!(
        !names.iter().any(|n| n == "step" || n == "checksum"),
        "no tracing span: {names:?}"
    );
    let (_, consumer) = run.span(TRACED);
    for record in [
        "a log record in the task itself",
        "a log record inside step 8",
        "checksum of 3 items computed",
    ] {
        event(consumer, record);
    }
    assert!(
        !consumer
            .span
            .events
            .iter()
            .any(|e| e.name == "a tracing event outside any tracing span" || e.name == "stepping"),
        "tracing events are the tracing bridge's: {:?}",
        consumer.span.events
    );
}

#[test]
fn spans_of_a_library_instrumented_with_tracing_appear_without_touching_it() {
    let run = run("tracing", &[]);
    let (_, step) = run.span("step");
    let (_, checksum) = run.span("checksum");
    let (_, double) = run.span("double");
    assert_child_of(checksum, step);
    assert_child_of(double, checksum);
    assert_eq!(number(checksum.attribute("items")), 3.0, "a field");
    assert_eq!(double.attribute("sum"), Some(&string("11")), "an argument");
    let audit = event(checksum, "checksum of 3 items computed");
    assert_eq!(event_attr(audit, "level"), &string("WARN"));
    assert_eq!(event_attr(audit, "target"), &string("traced_lib::audit"));
    // `info` by default: the library's debug event is filtered out.
    assert!(double.span.events.is_empty(), "{:?}", double.span.events);
}

#[test]
fn the_filter_directive_selects_what_is_bridged() {
    let debug = run(
        "tracing",
        &[(
            "FILAMENT_INSTRUMENT_FILTER",
            "info,filament_traced_lib=debug",
        )],
    );
    let (_, double) = debug.span("double");
    event(double, "doubling is a detail");

    let quiet = run(
        "tracing",
        &[("FILAMENT_INSTRUMENT_FILTER", "warn,filament_traced_lib=off")],
    );
    let names = quiet.names();
    assert!(
        !names.iter().any(|n| n == "step" || n == "checksum"),
        "{names:?}"
    );
    let (_, consumer) = quiet.span(TRACED);
    event(consumer, "a tracing event outside any tracing span");
    assert!(
        !consumer
            .span
            .events
            .iter()
            .any(|e| e.name == "a log record in the task itself"),
        "info records are below warn"
    );
}

#[test]
fn get_and_wait_spans_appear_only_when_switched_on() {
    let off = run("get", &[]);
    assert_eq!(off.value("result"), "50");
    assert!(
        !off.names().iter().any(|n| n.starts_with("filament.")),
        "{:?}",
        off.names()
    );

    let on = run("get", &[("FILAMENT_INSTRUMENT", "get,wait")]);
    assert_eq!(on.value("result"), "50");
    let gets: Vec<(u32, &ReadSpan)> = on
        .with_pids()
        .into_iter()
        .filter(|(_, s)| s.name() == "filament.get")
        .collect();
    assert_eq!(
        gets.len(),
        2,
        "one in the task, one in the driver: {:?}",
        on.names()
    );
    let (_, consumer) = on.span("instrumented_program::gets_inside filament.remote_worker");
    let (in_task_pid, in_task) = gets
        .iter()
        .find(|(_, s)| s.parent_span_id() == consumer.span_id())
        .expect("a get inside the task, child of its CONSUMER span");
    assert_ne!(*in_task_pid, on.driver_pid());
    assert_eq!(
        in_task.attribute("filament.object_count"),
        Some(&Value::IntValue(1))
    );
    assert!(number(in_task.attribute("filament.bytes")) > 0.0);
    let (wait_pid, wait) = on.span("filament.wait");
    assert_eq!(wait_pid, on.driver_pid());
    assert_eq!(
        wait.attribute("filament.ready_count"),
        Some(&Value::IntValue(1))
    );
    assert!(
        !on.names().iter().any(|n| n == "step"),
        "only what was named"
    );
}

#[test]
fn serialization_queue_wait_and_worker_startup_are_recorded_when_switched_on() {
    let run = run(
        "many",
        &[(
            "FILAMENT_INSTRUMENT",
            "serialization,queue_wait,worker_startup",
        )],
    );
    assert_eq!(run.value("results"), "[1, 2, 3, 4, 5]");
    let all = run.all();
    let serialized: Vec<&&ReadSpan> = all
        .iter()
        .filter(|s| s.name() == "filament.serialize")
        .collect();
    assert!(
        serialized.len() >= 10 + 5,
        "2 arguments and a result per task: {}",
        serialized.len()
    );
    assert!(
        serialized
            .iter()
            .all(|s| number(s.attribute("filament.bytes")) > 0.0)
    );
    assert!(
        serialized
            .iter()
            .any(|s| s.attribute("filament.value") == Some(&string("argument")))
    );
    assert!(
        serialized
            .iter()
            .any(|s| s.attribute("filament.value") == Some(&string("result")))
    );
    assert!(all.iter().any(|s| s.name() == "filament.deserialize"));
    for consumer in all
        .iter()
        .filter(|s| s.name().ends_with("filament.remote_worker"))
    {
        let waited = number(consumer.attribute("filament.queue_wait_ms"));
        assert!((0.0..60_000.0).contains(&waited), "{waited} ms");
    }
    let startups: Vec<&&ReadSpan> = all
        .iter()
        .filter(|s| s.name() == "filament.worker_startup")
        .collect();
    assert_eq!(startups.len(), 2, "one per worker");
    for startup in startups {
        let setup = all
            .iter()
            .find(|s| s.name() == "filament.hook_setup" && s.parent_span_id() == startup.span_id())
            .expect("the hooks' set-up inside the start-up");
        assert!(setup.span.start_time_unix_nano >= startup.span.start_time_unix_nano);
        assert!(setup.span.end_time_unix_nano <= startup.span.end_time_unix_nano);
        assert!(number(startup.attribute("filament.hook_setup_ms")) > 0.0);
    }
}

#[test]
fn the_interceptor_puts_resource_use_on_every_task_and_actor_call_span() {
    let run = run("tasks", &[]);
    assert_eq!(run.value("calls"), "[2, 3]");
    let consumers: Vec<&ReadSpan> = run
        .all()
        .into_iter()
        .filter(|s| s.name().ends_with("filament.remote_worker"))
        .collect();
    assert_eq!(
        consumers.len(),
        5,
        "2 tasks, a creation and 2 calls: {:?}",
        run.names()
    );
    for span in &consumers {
        for key in [
            "filament.cpu_user_ms",
            "filament.cpu_system_ms",
            "filament.peak_memory_growth_bytes",
        ] {
            assert!(
                span.attribute(key).is_some(),
                "{} has no {key}",
                span.name()
            );
        }
    }
    // The task spun until the scheduler counted 50 ms of CPU on its thread (whatever the load).
    let spun: f64 = run.value("spun_ms").parse().unwrap();
    assert!(spun >= 50.0, "{spun}");
    let (_, spinner) = run.span("instrumented_program::spins filament.remote_worker");
    let cpu = number(spinner.attribute("filament.cpu_user_ms"))
        + number(spinner.attribute("filament.cpu_system_ms"));
    assert!(
        (30.0..500.0).contains(&cpu),
        "a task that spun {spun} ms of CPU was measured at {cpu} ms"
    );
}

#[test]
fn the_instrument_hook_alone_exports_nothing_and_breaks_nothing() {
    let (mut command, dir) = program("tracing", INSTRUMENT, &[("FILAMENT_INSTRUMENT", "all")]);
    let output = command.output().unwrap();
    let run = Run::new(output, dir.path()).ok();
    assert_eq!(run.value("result"), "22");
    assert!(
        read_spans_dir(dir.path()).is_empty(),
        "no file in the spans directory"
    );
}

fn shape(run: &Run) -> BTreeSet<(String, String)> {
    let all = run.all();
    let name_of = |id: &str| {
        all.iter()
            .find(|s| s.span_id() == id)
            .map_or_else(String::new, |s| s.name().to_owned())
    };
    all.iter()
        .map(|s| (s.name().to_owned(), name_of(&s.parent_span_id())))
        .collect()
}

#[test]
fn hooks_in_either_order_give_the_same_spans() {
    let first = run("tracing", &[]);
    let (mut command, dir) = program(
        "tracing",
        "filament_local_file:setup_tracing,filament_instrument:setup_tracing",
        &[],
    );
    let second = Run::new(command.output().unwrap(), dir.path()).ok();
    assert_eq!(second.value("result"), "22");
    assert_eq!(shape(&first), shape(&second));
    assert!(shape(&second).contains(&("double".to_owned(), "checksum".to_owned())));
}

#[test]
fn with_the_jaeger_hook_the_same_spans_arrive_as_in_the_files() {
    let receiver = receiver::HttpReceiver::start();
    let (mut command, dir) = program(
        "tracing",
        "filament_instrument:setup_tracing,filament_jaeger:setup_tracing,filament_local_file:setup_tracing",
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())],
    );
    let output = command.output().unwrap();
    let in_files = Run::new(output.clone(), dir.path()).ok();
    let ids = |spans: Vec<&ReadSpan>| -> BTreeSet<(String, String, String, String)> {
        spans
            .iter()
            .map(|s| {
                (
                    s.name().to_owned(),
                    s.trace_id(),
                    s.span_id(),
                    s.parent_span_id(),
                )
            })
            .collect()
    };
    let job = string(in_files.value("job_id"));
    let received = receiver.received.spans();
    let at_receiver: Vec<&ReadSpan> = received
        .iter()
        .filter(|s| s.resource_attribute("filament.job_id") == Some(&job))
        .collect();
    assert_eq!(ids(at_receiver), ids(in_files.all()));
    in_files.span("checksum");
}

fn init_error(envs: &[(&str, &str)]) -> String {
    let run = run_with("tracing", BOTH, envs);
    assert_eq!(run.output.status.code(), Some(3), "{}", run.text());
    stderr(&run)
}

#[test]
fn an_unknown_instrumentation_is_an_error_at_init_naming_it() {
    let error = init_error(&[("FILAMENT_INSTRUMENT", "tracing,gett")]);
    assert!(
        error.contains("hook \"filament_instrument:setup_tracing\"")
            && error.contains("FILAMENT_INSTRUMENT=\"tracing,gett\": unknown instrumentation \"gett\" (known: tracing, log, get, wait,"),
        "{error}"
    );
}

#[test]
fn a_malformed_filter_is_an_error_at_init_naming_it() {
    let error = init_error(&[("FILAMENT_INSTRUMENT_FILTER", "info,my_crate=loud")]);
    assert!(
        error.contains(
            "FILAMENT_INSTRUMENT_FILTER=\"info,my_crate=loud\": instrumentation \"tracing\": filter directive \"info,my_crate=loud\" is malformed"
        ),
        "{error}"
    );
}

/// Asserts that the lines of `error` containing `report` come from distinct processes (what
/// workers print reaches the driver prefixed with `(worker … pid=…)`), at least one; returns how
/// many.
fn reported_once_per_process(error: &str, report: &str) -> usize {
    let reporters: Vec<&str> = error
        .lines()
        .filter(|line| line.contains(report))
        .map(|line| line.split_once(") ").map_or(line, |(prefix, _)| prefix))
        .collect();
    let distinct: BTreeSet<&str> = reporters.iter().copied().collect();
    assert!(!reporters.is_empty(), "reported:\n{error}");
    assert_eq!(
        reporters.len(),
        distinct.len(),
        "once per process:\n{error}"
    );
    reporters.len()
}

#[test]
fn a_panicking_interceptor_is_contained_and_reported_once() {
    let run = run_with(
        "tasks",
        "filament_test_hooks:panicking_interceptor,filament_local_file:setup_tracing",
        &[("TEST_WORKERS", "1")],
    )
    .ok();
    assert_eq!(run.value("sum"), "3");
    assert_eq!(run.value("calls"), "[2, 3]");
    let error = stderr(&run);
    // Each worker process (the pool's one, the actor's) reports its first panic and no other.
    let reporters =
        reported_once_per_process(&error, "its task interceptor panicked in on_start of task");
    assert!(reporters <= 2, "{error}");
    assert!(
        error.contains("the interceptor panicked on task"),
        "{error}"
    );
    // Its on_end still runs on every task.
    let consumers: Vec<&ReadSpan> = run
        .all()
        .into_iter()
        .filter(|s| s.name().ends_with("filament.remote_worker"))
        .collect();
    assert_eq!(consumers.len(), 5);
    assert!(
        consumers
            .iter()
            .all(|s| s.attribute("test.intercepted") == Some(&Value::BoolValue(true)))
    );
}

#[test]
fn a_slow_interceptor_is_reported_once_per_process_and_tasks_complete() {
    let run = run_with(
        "tasks",
        "filament_test_hooks:slow_interceptor,filament_local_file:setup_tracing",
        &[("TEST_WORKERS", "1")],
    )
    .ok();
    assert_eq!(run.value("sum"), "3");
    assert_eq!(run.value("calls"), "[2, 3]");
    let error = stderr(&run);
    reported_once_per_process(&error, "its task interceptor took");
    assert!(
        error.contains("ms in on_end of task instrumented_program::"),
        "names the call and the task: {error}"
    );
}

#[test]
fn a_program_with_its_own_subscriber_keeps_it_and_is_told_once() {
    let run = run("tracing", &[("TEST_OWN_SUBSCRIBER", "1")]);
    assert_eq!(run.value("result"), "22");
    let error = stderr(&run);
    // Said to the program's own subscriber, once in each process (the driver's own, and each
    // worker's, which reaches the driver prefixed with the worker).
    let said: Vec<&str> = error
        .lines()
        .filter(|line| {
            line.contains(
                "own subscriber: tracing: instrumentation: this program set its own global `tracing` subscriber, which it keeps",
            )
        })
        .collect();
    assert!(
        said.iter().any(|line| line.starts_with("own subscriber: ")),
        "the driver says so: {error}"
    );
    assert_eq!(
        said.len(),
        3,
        "once in the driver and in each of 2 workers: {error}"
    );
    assert!(
        !run.names().iter().any(|n| n == "step"),
        "the bridge stayed off"
    );
    // The runtime's own spans and the interceptor are unaffected.
    let (_, consumer) = run.span(TRACED);
    assert!(consumer.attribute("filament.cpu_user_ms").is_some());
}
