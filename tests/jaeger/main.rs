//! The Jaeger plugin end to end: real programs (`cluster-program`, `traced-program`, the
//! quickstart) load `filament_jaeger` in every process and export over OTLP to receivers inside this
//! test process, which decode with the `opentelemetry-proto` crate's generated types. Faults are
//! real too: a closed port, a port that never answers, a receiver that answers 503.

mod receiver;
mod thrift;

use filament::tracing::Tracing;
use filament_tests::{ReadSpan, Run, filament_bin, output_text, quickstart_bin, read_spans_dir};
use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
use receiver::{GrpcReceiver, HttpReceiver, Received, closed_port, silent_port};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use thrift::{AgentReceiver, CollectorReceiver};

const JAEGER: &str = "filament_jaeger:setup_tracing";
const LOCAL_FILE: &str = "filament_local_file:setup_tracing";
const BOTH: &str = "filament_jaeger:setup_tracing,filament_local_file:setup_tracing";

/// A generous bound against hangs, never a measurement.
const HANG_BOUND: Duration = Duration::from_secs(60);

/// Runs `cluster-program` with a hook and its spans directory, and the extra variables.
fn cluster_program(args: &[&str], hook: &str, spans: &Path, envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cluster-program"));
    command
        .args(args)
        .env("FILAMENT_TRACING_STARTUP_HOOK", hook)
        .env("FILAMENT_SPANS_DIR", spans)
        .env("TEST_WORKERS", "2")
        .env("RUST_BACKTRACE", "0");
    clear_otel(&mut command);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("cluster-program runs")
}

/// The tests' own environment must not leak into what the programs read.
fn clear_otel(command: &mut Command) {
    for (key, _) in std::env::vars() {
        if key.starts_with("OTEL_") || key == "FILAMENT_JAEGER_PROTOCOL" {
            command.env_remove(key);
        }
    }
}

/// A run whose spans are the ones of its job that a receiver got, grouped by process.
fn received_run(output: Output, received: &Received) -> Run {
    let empty = tempfile::tempdir().unwrap();
    let mut run = Run::new(output, empty.path());
    let job = Value::StringValue(run.value("job_id").to_owned());
    let mut by_pid: BTreeMap<u32, Vec<ReadSpan>> = BTreeMap::new();
    for span in received.spans() {
        if span.resource_attribute("filament.job_id") != Some(&job) {
            continue;
        }
        let Some(Value::IntValue(pid)) = span.resource_attribute("process.pid") else {
            panic!("{} has no process.pid: {:?}", span.name(), span.resource)
        };
        by_pid.entry(*pid as u32).or_default().push(span);
    }
    run.spans = by_pid;
    run
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Internal) => "internal",
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        _ => "unspecified",
    }
}

/// The span trees, one string per root: names, kinds and status, children sorted, ids left out, so
/// that runs and transports can be compared.
fn trees(spans: &[&ReadSpan]) -> Vec<String> {
    let ids: BTreeSet<String> = spans.iter().map(|s| s.span_id()).collect();
    let mut children: HashMap<String, Vec<&ReadSpan>> = HashMap::new();
    for span in spans {
        children
            .entry(span.parent_span_id())
            .or_default()
            .push(span);
    }
    fn render(span: &ReadSpan, children: &HashMap<String, Vec<&ReadSpan>>, depth: usize) -> String {
        let status = span.span.status.as_ref().map_or(0, |s| s.code);
        let mut text = format!(
            "{}{} ({}, status {status})\n",
            "  ".repeat(depth),
            span.name(),
            kind_name(span.span.kind)
        );
        let mut below: Vec<String> = children
            .get(&span.span_id())
            .into_iter()
            .flatten()
            .map(|child| render(child, children, depth + 1))
            .collect();
        below.sort();
        text.extend(below);
        text
    }
    let mut roots: Vec<String> = spans
        .iter()
        .filter(|s| !ids.contains(&s.parent_span_id()))
        .map(|root| render(root, &children, 0))
        .collect();
    roots.sort();
    roots
}

/// Every span id once.
fn assert_each_span_once(run: &Run) {
    let all = run.all();
    let ids: BTreeSet<String> = all.iter().map(|s| s.span_id()).collect();
    assert_eq!(
        ids.len(),
        all.len(),
        "a span arrived twice: {:?}",
        run.names()
    );
}

fn string(s: &str) -> Value {
    Value::StringValue(s.to_owned())
}

fn attr<'a>(span: &'a ReadSpan, key: &str) -> &'a Value {
    span.attribute(key)
        .unwrap_or_else(|| panic!("{} has no {key}: {:?}", span.name(), span.span.attributes))
}

/// The trees of the `mixed` scenario of `cluster-program`.
const MIXED_TREES: [&str; 6] = [
    "cluster_program::Counter::incr filament.remote (producer, status 0)\n  cluster_program::Counter::incr filament.remote_worker (consumer, status 0)\n",
    "cluster_program::Counter::new filament.remote (producer, status 0)\n  cluster_program::Counter::new filament.remote_worker (consumer, status 0)\n",
    "cluster_program::add filament.remote (producer, status 0)\n  cluster_program::add filament.remote_worker (consumer, status 0)\n",
    "cluster_program::fails filament.remote (producer, status 0)\n  cluster_program::fails filament.remote_worker (consumer, status 2)\n",
    "cluster_program::outer filament.remote (producer, status 0)\n  cluster_program::outer filament.remote_worker (consumer, status 0)\n    cluster_program::add filament.remote (producer, status 0)\n      cluster_program::add filament.remote_worker (consumer, status 0)\n",
    "cluster_program::with_custom_span filament.remote (producer, status 0)\n  cluster_program::with_custom_span filament.remote_worker (consumer, status 0)\n    foo (internal, status 0)\n",
];

/// What the `mixed` scenario must deliver, wherever its spans went.
fn assert_mixed(run: &Run) {
    assert_eq!(run.value("add"), "3");
    assert_eq!(run.value("counter"), "5");
    assert_eq!(run.value("nested"), "50");
    assert_eq!(run.value("custom"), "inside foo");
    assert_each_span_once(run);
    assert_eq!(trees(&run.all()), MIXED_TREES, "{:#?}", trees(&run.all()));
    assert!(
        run.spans.len() >= 3,
        "driver and workers: {:?}",
        run.spans.keys()
    );

    // Each top-level call is its own trace; parents are real spans of the same trace.
    let all = run.all();
    let by_id: HashMap<String, &ReadSpan> = all.iter().map(|s| (s.span_id(), *s)).collect();
    for span in &all {
        if let Some(parent) = by_id.get(&span.parent_span_id()) {
            assert_eq!(span.trace_id(), parent.trace_id(), "{}", span.name());
        }
        assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano);
        assert_eq!(span.trace_id().len(), 32);
    }
    let traces: BTreeSet<String> = all.iter().map(|s| s.trace_id()).collect();
    assert_eq!(traces.len(), 6, "six top-level calls, six traces");

    // The nested chain crosses three processes.
    let (p_outer, outer) = run.span("cluster_program::outer filament.remote_worker");
    let (p_driver, _) = run.span("cluster_program::outer filament.remote");
    assert_eq!(p_driver, run.driver_pid());
    assert_ne!(p_outer, p_driver);

    // Attributes, events and status of a panicking task.
    let (_, failed) = run.span("cluster_program::fails filament.remote_worker");
    let status = failed.span.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "it broke");
    assert_eq!(failed.span.events[0].name, "exception");
    assert_eq!(
        filament_tests::find(&failed.span.events[0].attributes, "exception.message"),
        Some(&string("it broke"))
    );
    assert_eq!(
        attr(failed, "filament.function"),
        &string("cluster_program::fails")
    );
    assert_eq!(attr(outer, "filament.remote"), &string("function"));
    assert!(matches!(
        attr(outer, "filament.task_id"),
        Value::StringValue(_)
    ));
    let (_, created) = run.span("cluster_program::Counter::new filament.remote_worker");
    assert_eq!(
        attr(created, "filament.actor_class"),
        &string("cluster_program::Counter")
    );
    let (_, custom) = run.span("foo");
    assert_eq!(custom.scope_name, "cluster-program");
}

#[test]
fn a_multi_process_job_arrives_over_otlp_http_intact() {
    let receiver = HttpReceiver::start();
    let spans = tempfile::tempdir().unwrap();
    let output = cluster_program(
        &["mixed"],
        JAEGER,
        spans.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())],
    );
    let run = received_run(output, &receiver.received).ok();
    assert_mixed(&run);

    // The process's resource: Jaeger's process tags.
    for (pid, spans) in &run.spans {
        for span in spans {
            assert_eq!(
                span.resource_attribute("service.name"),
                Some(&string("cluster-program")),
                "the program's name by default"
            );
            assert_eq!(
                span.resource_attribute("process.pid"),
                Some(&Value::IntValue(i64::from(*pid)))
            );
            assert!(span.resource_attribute("host.name").is_some());
            assert!(span.resource_attribute("filament.role").is_some());
        }
    }
    let (worker_pid, _) = run.span("cluster_program::with_custom_span filament.remote_worker");
    let worker_span = &run.spans[&worker_pid][0];
    assert!(matches!(
        worker_span.resource_attribute("filament.worker_id"),
        Some(Value::StringValue(_))
    ));
}

#[test]
fn a_multi_process_job_arrives_over_otlp_grpc_intact() {
    let receiver = GrpcReceiver::start();
    let spans = tempfile::tempdir().unwrap();
    let output = cluster_program(
        &["mixed"],
        JAEGER,
        spans.path(),
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
        ],
    );
    let run = received_run(output, &receiver.received).ok();
    assert_mixed(&run);
}

#[test]
fn over_grpc_headers_become_metadata_and_gzip_is_used() {
    let receiver = GrpcReceiver::start();
    let output = traced_program(
        3,
        &[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-team=core,authorization=Bearer%20t0k3n",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ],
    );
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(receiver.received.spans().len(), 3);
    assert_eq!(receiver.received.header("x-team"), ["core"]);
    assert_eq!(receiver.received.header("authorization"), ["Bearer t0k3n"]);
    assert_eq!(receiver.received.header("grpc-encoding"), ["gzip"]);
}

#[test]
fn otlp_http_json_bodies_arrive_too() {
    let receiver = HttpReceiver::start();
    let output = traced_program(
        5,
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
        ],
    );
    assert!(output.status.success(), "{}", output_text(&output));
    let mut names: Vec<String> = receiver
        .received
        .spans()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["span-0", "span-1", "span-2", "span-3", "span-4"]);
}

#[test]
fn the_quickstarts_trees_arrive_over_otlp_http() {
    let receiver = HttpReceiver::start();
    let spans = tempfile::tempdir().unwrap();
    let mut command = Command::new(quickstart_bin());
    clear_otel(&mut command);
    let output = command
        .env("FILAMENT_TRACING_STARTUP_HOOK", JAEGER)
        .env("FILAMENT_SPANS_DIR", spans.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_SERVICE_NAME", "seed-quickstart")
        .env_remove("FILAMENT_ADDRESS")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("my_function returned 1"), "{stdout}");
    let received = receiver.received.spans();
    let all: Vec<&ReadSpan> = received.iter().collect();
    assert_eq!(
        trees(&all),
        [
            "quickstart::my_func filament.remote (producer, status 0)\n  quickstart::my_func filament.remote_worker (consumer, status 0)\n    foo (internal, status 0)\n",
            "quickstart::my_function filament.remote (producer, status 0)\n  quickstart::my_function filament.remote_worker (consumer, status 0)\n",
        ]
    );
    let ids: BTreeSet<String> = all.iter().map(|s| s.span_id()).collect();
    assert_eq!(ids.len(), 5, "each span once");
    for span in &all {
        assert_eq!(
            span.resource_attribute("service.name"),
            Some(&string("seed-quickstart")),
            "OTEL_SERVICE_NAME"
        );
    }
    assert!(
        read_spans_dir(spans.path()).is_empty(),
        "the Jaeger hook alone writes no span file"
    );
}

#[test]
fn the_same_binary_swaps_local_file_jaeger_and_both_without_recompiling() {
    // Local files.
    let files = tempfile::tempdir().unwrap();
    let output = cluster_program(&["mixed"], LOCAL_FILE, files.path(), &[]);
    let from_files = Run::new(output, files.path()).ok();
    assert_mixed(&from_files);

    // Jaeger.
    let receiver = HttpReceiver::start();
    let unused = tempfile::tempdir().unwrap();
    let output = cluster_program(
        &["mixed"],
        JAEGER,
        unused.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())],
    );
    let from_jaeger = received_run(output, &receiver.received).ok();
    assert_eq!(trees(&from_jaeger.all()), trees(&from_files.all()));
    assert!(read_spans_dir(unused.path()).is_empty());

    // Both, in one run: the same spans, ids and all, in the files and at the receiver.
    let receiver = HttpReceiver::start();
    let files = tempfile::tempdir().unwrap();
    let output = cluster_program(
        &["mixed"],
        BOTH,
        files.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())],
    );
    let in_files = Run::new(output.clone(), files.path()).ok();
    let at_receiver = received_run(output, &receiver.received).ok();
    assert_mixed(&in_files);
    assert_mixed(&at_receiver);
    let ids = |run: &Run| -> BTreeSet<(String, String, String)> {
        run.all()
            .iter()
            .map(|s| (s.trace_id(), s.span_id(), s.parent_span_id()))
            .collect()
    };
    assert_eq!(ids(&in_files), ids(&at_receiver));
}

#[test]
fn every_setting_may_come_from_the_clusters_configuration() {
    let receiver = HttpReceiver::start();
    let guard = Tracing::new(JAEGER)
        .config(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            format!("{}/v1/traces", receiver.endpoint()),
        )
        .config("OTEL_SERVICE_NAME", "configured-service")
        .config("OTEL_EXPORTER_OTLP_HEADERS", "x-team=core")
        .build()
        .unwrap();
    let tracer = guard.provider().unwrap().tracer("configured");
    tracer.in_span("configured-span", |_| {});
    guard.shutdown().unwrap();
    let spans = receiver.received.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name(), "configured-span");
    assert_eq!(spans[0].scope_name, "configured");
    assert_eq!(
        spans[0].resource_attribute("service.name"),
        Some(&string("configured-service"))
    );
    assert_eq!(receiver.received.header("x-team"), ["core"]);
}

#[test]
fn headers_and_gzip_compression_reach_the_receiver() {
    let receiver = HttpReceiver::start();
    let output = traced_program(
        3,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            (
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                "authorization=Bearer%20t0k3n",
            ),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
    );
    assert!(output.status.success(), "{}", output_text(&output));
    assert_eq!(receiver.received.spans().len(), 3);
    assert_eq!(receiver.received.header("content-encoding"), ["gzip"]);
    assert_eq!(receiver.received.header("authorization"), ["Bearer t0k3n"]);
}

fn setup_error(key: &str, value: &str) -> String {
    match Tracing::new(JAEGER).config(key, value).build() {
        Ok(_) => panic!("{key}={value} was accepted"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn a_malformed_endpoint_is_an_error_at_setup_naming_it() {
    assert_eq!(
        setup_error("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318"),
        format!(
            "hook \"{JAEGER}\": setup failed: OTEL_EXPORTER_OTLP_ENDPOINT=\"localhost:4318\": not an http or https URL (scheme `localhost`); expected e.g. http://localhost:4318"
        )
    );
    assert_eq!(
        setup_error("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://[::1"),
        format!(
            "hook \"{JAEGER}\": setup failed: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=\"http://[::1\": not a valid URL (invalid IPv6 address); expected e.g. http://localhost:4318"
        )
    );
}

#[test]
fn an_unknown_protocol_is_an_error_at_setup_naming_it() {
    assert_eq!(
        setup_error("OTEL_EXPORTER_OTLP_PROTOCOL", "http/thrift"),
        format!(
            "hook \"{JAEGER}\": setup failed: OTEL_EXPORTER_OTLP_PROTOCOL=\"http/thrift\": unknown protocol; expected grpc, http/protobuf or http/json"
        )
    );
}

#[test]
fn a_header_string_that_does_not_parse_is_an_error_at_setup_naming_it() {
    assert_eq!(
        setup_error("OTEL_EXPORTER_OTLP_HEADERS", "api-key"),
        format!(
            "hook \"{JAEGER}\": setup failed: OTEL_EXPORTER_OTLP_HEADERS=\"api-key\": the entry \"api-key\" is not name=value; expected e.g. api-key=secret,team=core"
        )
    );
}

/// A run whose spans are the ones of its job that a legacy receiver got, grouped by process.
fn legacy_run(output: Output, spans: Vec<ReadSpan>) -> Run {
    let empty = tempfile::tempdir().unwrap();
    let mut run = Run::new(output, empty.path());
    let job = Value::StringValue(run.value("job_id").to_owned());
    let mut by_pid: BTreeMap<u32, Vec<ReadSpan>> = BTreeMap::new();
    for span in spans {
        if span.resource_attribute("filament.job_id") != Some(&job) {
            continue;
        }
        let Some(Value::IntValue(pid)) = span.resource_attribute("process.pid") else {
            panic!(
                "{} has no process.pid tag: {:?}",
                span.name(),
                span.resource
            )
        };
        by_pid.entry(*pid as u32).or_default().push(span);
    }
    run.spans = by_pid;
    run
}

#[test]
fn a_multi_process_job_arrives_at_a_legacy_jaeger_agent_over_udp_thrift() {
    let agent = AgentReceiver::start();
    let spans = tempfile::tempdir().unwrap();
    let port = agent.port().to_string();
    let output = cluster_program(
        &["mixed"],
        JAEGER,
        spans.path(),
        &[
            ("FILAMENT_JAEGER_PROTOCOL", "thrift-udp"),
            ("OTEL_EXPORTER_JAEGER_AGENT_HOST", "127.0.0.1"),
            ("OTEL_EXPORTER_JAEGER_AGENT_PORT", &port),
        ],
    );
    // UDP is fire and forget: give the last datagrams a moment to be read.
    let until = Instant::now() + HANG_BOUND;
    let mut run = legacy_run(output.clone(), agent.received.spans());
    while run.all().len() < 15 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
        run = legacy_run(output.clone(), agent.received.spans());
    }
    let run = run.ok();
    assert_mixed(&run);
    for span in run.all() {
        assert_eq!(
            span.resource_attribute("service.name"),
            Some(&string("cluster-program"))
        );
    }
}

#[test]
fn a_multi_process_job_arrives_at_a_legacy_jaeger_collector_over_http_thrift() {
    let collector = CollectorReceiver::start();
    let spans = tempfile::tempdir().unwrap();
    let output = cluster_program(
        &["mixed"],
        JAEGER,
        spans.path(),
        &[
            ("FILAMENT_JAEGER_PROTOCOL", "thrift-http"),
            ("OTEL_EXPORTER_JAEGER_ENDPOINT", &collector.endpoint()),
        ],
    );
    let run = legacy_run(output, collector.received.spans()).ok();
    assert_mixed(&run);
}

#[test]
fn bad_legacy_settings_are_errors_at_setup_naming_them() {
    let error = |pairs: &[(&str, &str)]| {
        let mut tracing = Tracing::new(JAEGER);
        for (key, value) in pairs {
            tracing = tracing.config(*key, *value);
        }
        match tracing.build() {
            Ok(_) => panic!("{pairs:?} was accepted"),
            Err(error) => error.to_string(),
        }
    };
    assert_eq!(
        error(&[("FILAMENT_JAEGER_PROTOCOL", "thrift-grpc")]),
        format!(
            "hook \"{JAEGER}\": setup failed: FILAMENT_JAEGER_PROTOCOL=\"thrift-grpc\": unknown transport; expected otlp, thrift-udp or thrift-http"
        )
    );
    assert_eq!(
        error(&[
            ("FILAMENT_JAEGER_PROTOCOL", "thrift-udp"),
            ("OTEL_EXPORTER_JAEGER_AGENT_PORT", "agent")
        ]),
        format!(
            "hook \"{JAEGER}\": setup failed: OTEL_EXPORTER_JAEGER_AGENT_PORT=\"agent\": expected a port number"
        )
    );
    assert_eq!(
        error(&[
            ("FILAMENT_JAEGER_PROTOCOL", "thrift-http"),
            ("OTEL_EXPORTER_JAEGER_ENDPOINT", "collector:14268")
        ]),
        format!(
            "hook \"{JAEGER}\": setup failed: OTEL_EXPORTER_JAEGER_ENDPOINT=\"collector:14268\": not an http or https URL (scheme `collector`); expected e.g. http://localhost:4318"
        )
    );
}

#[test]
fn a_bad_setting_makes_init_fail_fast_in_a_real_program() {
    let spans = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = cluster_program(
        &["one-task"],
        JAEGER,
        spans.path(),
        &[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon")],
    );
    assert!(started.elapsed() < HANG_BOUND);
    assert_eq!(output.status.code(), Some(3), "{}", output_text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT=\"soon\": expected a whole number of milliseconds"
        ),
        "{stderr}"
    );
}

/// Runs `traced-program` with the Jaeger hook: `spans` spans, then a shutdown.
fn traced_program(spans: usize, envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_traced-program"));
    command
        .args(["--hooks", JAEGER, "--spans", &spans.to_string()])
        .env("RUST_BACKTRACE", "0");
    clear_otel(&mut command);
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("traced-program runs")
}

/// The lines of standard error that contain `text`.
fn lines_with(output: &Output, text: &str) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| l.contains(text))
        .map(str::to_owned)
        .collect()
}

/// The program ended well, within the bound; one warning and one summary, not one per span.
fn assert_reported_once(output: &Output, started: Instant) -> String {
    assert!(started.elapsed() < HANG_BOUND, "the program hung");
    assert!(output.status.success(), "{}", output_text(output));
    let warnings = lines_with(output, "filament_jaeger: dropping spans");
    assert_eq!(warnings.len(), 1, "{}", output_text(output));
    let summaries = lines_with(output, " spans exported, ");
    assert_eq!(summaries.len(), 1, "{}", output_text(output));
    summaries[0].clone()
}

#[test]
fn a_receiver_that_is_down_costs_counted_spans_and_the_program_exits() {
    let started = Instant::now();
    let mut command = Command::new(env!("CARGO_BIN_EXE_traced-program"));
    clear_otel(&mut command);
    let endpoint = closed_port();
    let output = command
        .args(["--hooks", JAEGER, "--spans", "50", "--flush-first"])
        .env("RUST_BACKTRACE", "0")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .output()
        .unwrap();
    // The host's report, after a flush (which failed, hence failures=1): the exporter's failures
    // counted as failed and dropped.
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(
            "processor \"filament_jaeger\" delivered=50 failures=1 exported=0 dropped=50 failed=50"
        ),
        "{}",
        output_text(&output)
    );
    let summary = assert_reported_once(&output, started);
    assert!(
        summary.starts_with(
            "filament_jaeger: 0 spans exported, 50 dropped (0 on a full queue, 50 failed to export, first failure: "
        ),
        "{summary}"
    );
    // The failure says where the spans were going.
    let to = format!("OTLP http/protobuf to {endpoint}/v1/traces: ");
    assert!(summary.contains(&to), "{to:?} not in {summary}");
    let warning = &lines_with(&output, "filament_jaeger: dropping spans")[0];
    assert!(warning.contains(&to), "{to:?} not in {warning}");
}

#[test]
fn a_port_that_never_answers_fails_the_export_after_the_otlp_timeout() {
    let (_listener, url) = silent_port();
    let started = Instant::now();
    let output = traced_program(
        50,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
        ],
    );
    let summary = assert_reported_once(&output, started);
    assert!(
        summary.starts_with(
            "filament_jaeger: 0 spans exported, 50 dropped (0 on a full queue, 50 failed to export"
        ),
        "{summary}"
    );
}

#[test]
fn with_default_timeouts_a_silent_port_never_holds_the_program_past_the_shutdown_timeout() {
    let (_listener, url) = silent_port();
    let started = Instant::now();
    let output = traced_program(10, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &url)]);
    assert!(started.elapsed() < HANG_BOUND, "the program hung");
    assert!(output.status.success(), "{}", output_text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("span processor \"filament_jaeger\" failed in shutdown: timed out"),
        "shutdown stopped waiting at the host's timeout: {}",
        output_text(&output)
    );
    let summaries = lines_with(&output, "filament_jaeger: 0 spans exported, 0 dropped");
    assert_eq!(summaries.len(), 1, "{}", output_text(&output));
    assert!(
        summaries[0].ends_with("; 10 still being exported when shutdown stopped waiting"),
        "{}",
        summaries[0]
    );
}

#[test]
fn a_full_queue_drops_and_counts_and_never_blocks_the_program() {
    let (_listener, url) = silent_port();
    let started = Instant::now();
    let output = traced_program(
        2000,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &url),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16"),
        ],
    );
    let summary = assert_reported_once(&output, started);
    let full: u64 = summary
        .split(" on a full queue")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(full > 0, "{summary}");
    assert!(
        summary.starts_with("filament_jaeger: 0 spans exported, 2000 dropped"),
        "every span is accounted for: {summary}"
    );
}

#[test]
fn a_batch_refused_with_503_is_counted_and_the_next_batches_arrive() {
    // The batch holding span-0 is always refused, retries included; every other is accepted.
    let receiver = HttpReceiver::refusing(|request| {
        request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .any(|s| s.name == "span-0")
    });
    let started = Instant::now();
    let output = traced_program(
        100,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10"),
        ],
    );
    let summary = assert_reported_once(&output, started);
    assert!(
        summary.starts_with(
            "filament_jaeger: 90 spans exported, 10 dropped (0 on a full queue, 10 failed to export, first failure: "
        ),
        "{summary}"
    );
    assert!(summary.contains("503"), "{summary}");
    assert!(receiver.received.refused() >= 1);
    let mut names: Vec<String> = receiver
        .received
        .spans()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (10..100).map(|i| format!("span-{i}")).collect();
    expected.sort();
    assert_eq!(names, expected, "each of the other spans exactly once");
}

#[test]
fn when_everything_arrives_nothing_is_reported() {
    let receiver = HttpReceiver::start();
    let output = traced_program(20, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint())]);
    assert!(output.status.success(), "{}", output_text(&output));
    assert!(
        lines_with(&output, "filament_jaeger").is_empty(),
        "{}",
        output_text(&output)
    );
    assert_eq!(receiver.received.spans().len(), 20);
    assert!(receiver.received.requests() >= 1);
}

#[test]
fn the_stdout_template_prints_every_span_through_the_sdk_exporter() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_traced-program"));
    clear_otel(&mut command);
    let output = command
        .args([
            "--hooks",
            "filament_otel_hook_template:setup_tracing",
            "--spans",
            "3",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    for name in ["span-0", "span-1", "span-2"] {
        let line = format!("\tName         : {name}\n");
        assert_eq!(
            stdout.matches(&line).count(),
            1,
            "{name} once in:\n{stdout}"
        );
    }
}

/// A standing cluster's folder; dropping it runs `filament stop`.
struct StandingCluster {
    temp: tempfile::TempDir,
    started: bool,
}

impl StandingCluster {
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        clear_otel(&mut command);
        filament_tests::in_session(&mut command, self.temp.path());
        command
    }
}

impl Drop for StandingCluster {
    fn drop(&mut self) {
        if self.started {
            let _ = self.command(&filament_bin()).arg("stop").output();
        }
    }
}

#[test]
fn a_standing_cluster_started_with_the_jaeger_hook_delivers_the_quickstarts_spans() {
    let receiver = HttpReceiver::start();
    let endpoint = receiver.endpoint();
    let mut cluster = StandingCluster {
        temp: tempfile::tempdir().unwrap(),
        started: false,
    };
    let output = cluster
        .command(&filament_bin())
        .args([
            "start",
            "--head",
            "--port",
            "0",
            "--num-cpus",
            "2",
            "--tracing-startup-hook",
            JAEGER,
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .output()
        .unwrap();
    cluster.started = true;
    assert!(output.status.success(), "start: {}", output_text(&output));

    // The driver's OTEL_* variables go to its workers; pooled workers outlive the job, so their
    // batches leave on the schedule delay, made short here.
    let output = cluster
        .command(&quickstart_bin())
        .env("FILAMENT_ADDRESS", "auto")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "quickstart: {}",
        output_text(&output)
    );

    let until = Instant::now() + HANG_BOUND;
    while receiver.received.spans().len() < 5 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let received = receiver.received.spans();
    let all: Vec<&ReadSpan> = received.iter().collect();
    assert_eq!(
        trees(&all),
        [
            "quickstart::my_func filament.remote (producer, status 0)\n  quickstart::my_func filament.remote_worker (consumer, status 0)\n    foo (internal, status 0)\n",
            "quickstart::my_function filament.remote (producer, status 0)\n  quickstart::my_function filament.remote_worker (consumer, status 0)\n",
        ]
    );
    let ids: BTreeSet<String> = all.iter().map(|s| s.span_id()).collect();
    assert_eq!(ids.len(), 5, "each span once");
    let pids: BTreeSet<String> = all
        .iter()
        .map(|s| format!("{:?}", s.resource_attribute("process.pid")))
        .collect();
    assert!(pids.len() >= 2, "the driver and its workers: {pids:?}");
}

#[test]
fn over_grpc_a_receiver_that_is_down_or_silent_costs_counted_spans_and_the_program_exits() {
    let (_listener, silent) = silent_port();
    for endpoint in [closed_port(), silent] {
        let started = Instant::now();
        let output = traced_program(
            20,
            &[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
            ],
        );
        let summary = assert_reported_once(&output, started);
        assert!(
            summary.starts_with(
                "filament_jaeger: 0 spans exported, 20 dropped (0 on a full queue, 20 failed to export"
            ),
            "{endpoint}: {summary}"
        );
    }
}

#[test]
fn a_batch_larger_than_a_udp_packet_reaches_the_agent_split_and_whole() {
    let agent = AgentReceiver::start();
    let port = agent.port().to_string();
    let output = traced_program(
        1000,
        &[
            ("FILAMENT_JAEGER_PROTOCOL", "thrift-udp"),
            ("OTEL_EXPORTER_JAEGER_AGENT_HOST", "127.0.0.1"),
            ("OTEL_EXPORTER_JAEGER_AGENT_PORT", &port),
            // One batch of a thousand spans: far more than one 65,000-byte datagram.
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
        ],
    );
    assert!(output.status.success(), "{}", output_text(&output));
    let until = Instant::now() + HANG_BOUND;
    while agent.received.spans().len() < 1000 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut names: Vec<String> = agent
        .received
        .spans()
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..1000).map(|i| format!("span-{i}")).collect();
    expected.sort();
    assert_eq!(names, expected, "every span once");
    assert!(
        agent.datagrams() > 1,
        "split into several datagrams: {}",
        agent.datagrams()
    );
}

/// Threads of this process whose name starts with `prefix` (Linux keeps 15 bytes of a name).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim_end().starts_with(prefix))
        })
        .count()
}

#[test]
fn the_grpc_runtime_lives_inside_the_plugin_and_stops_at_shutdown() {
    // The plugin names its runtime's threads `filament-jaeger-grpc` (`filament-jaeger` in /proc);
    // no other test of this process starts gRPC in process.
    let receiver = GrpcReceiver::start();
    assert_eq!(threads_named("filament-jaeger"), 0);
    let guard = Tracing::new(JAEGER)
        .config("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .config("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .build()
        .unwrap();
    // A thread takes its name once it runs: give the runtime's threads a moment to.
    let until = Instant::now() + HANG_BOUND;
    while threads_named("filament-jaeger") == 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        threads_named("filament-jaeger") >= 1,
        "the plugin's runtime runs"
    );
    let tracer = guard.provider().unwrap().tracer("in-process");
    tracer.in_span("over-grpc", |_| {});
    guard.shutdown().unwrap();
    assert_eq!(receiver.received.spans().len(), 1);
    let until = Instant::now() + HANG_BOUND;
    while threads_named("filament-jaeger") > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        threads_named("filament-jaeger"),
        0,
        "the runtime stopped with the processor"
    );
}

/// The spans `cluster-program <scenario>` leaves, counted from a run with the local-file hook.
fn spans_of(scenario: &str) -> usize {
    let spans = tempfile::tempdir().unwrap();
    let output = cluster_program(&[scenario], LOCAL_FILE, spans.path(), &[]);
    assert!(output.status.success(), "{}", output_text(&output));
    read_spans_dir(spans.path()).values().map(Vec::len).sum()
}

/// Of a summary line, the spans dropped plus those still being exported when shutdown stopped
/// waiting: the process's spans, when none was exported.
fn lost_in(summary: &str) -> usize {
    let number_before = |text: &str| -> usize {
        summary
            .split(text)
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let pending = if summary.contains(" still being exported") {
        number_before(" still being exported")
    } else {
        0
    };
    number_before(" dropped (") + pending
}

#[test]
fn every_process_of_a_job_says_what_a_silent_receiver_cost_it() {
    // Default timeouts: each process's shutdown stops waiting for its export after 5 s. The
    // driver keeps its workers until they have flushed and said so.
    let expected = spans_of("mixed");
    let (_listener, url) = silent_port();
    let spans = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = cluster_program(
        &["mixed"],
        JAEGER,
        spans.path(),
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &url)],
    );
    assert!(started.elapsed() < HANG_BOUND, "the program hung");
    assert!(output.status.success(), "{}", output_text(&output));
    let summaries = lines_with(&output, "filament_jaeger: 0 spans exported, ");
    // A worker's lines reach the driver's standard error prefixed with who said them.
    let from_workers = summaries.iter().filter(|l| l.starts_with('(')).count();
    assert!(
        from_workers >= 2 && summaries.len() == from_workers + 1,
        "the driver, a pool worker and the actor's process each say what they lost: {}",
        output_text(&output)
    );
    let lost: usize = summaries.iter().map(|l| lost_in(l)).sum();
    assert_eq!(lost, expected, "{}", output_text(&output));
}

#[test]
fn a_standing_clusters_status_counts_what_a_down_receiver_cost_each_process() {
    let expected = spans_of("mixed");
    let mut cluster = StandingCluster {
        temp: tempfile::tempdir().unwrap(),
        started: false,
    };
    let output = cluster
        .command(&filament_bin())
        .args(["start", "--head", "--port", "0", "--num-cpus", "2"])
        .args(["--tracing-startup-hook", JAEGER])
        .output()
        .unwrap();
    cluster.started = true;
    assert!(output.status.success(), "start: {}", output_text(&output));
    let spans = tempfile::tempdir().unwrap();
    let output = cluster
        .command(Path::new(env!("CARGO_BIN_EXE_cluster-program")))
        .arg("mixed")
        .env("FILAMENT_ADDRESS", "auto")
        .env("FILAMENT_SPANS_DIR", spans.path())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", closed_port())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", output_text(&output));
    let job = String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("job_id=").map(str::to_owned))
        .unwrap();

    let status = cluster
        .command(&filament_bin())
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", output_text(&status));
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let job = status["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job.as_str())
        .unwrap_or_else(|| panic!("job {job} in {status}"));
    let processes = job["processes"].as_array().unwrap();
    // Nothing was exported; every span is counted dropped once, by the process that made it.
    // The workers ended before their job did: status still says where they ran.
    for process in processes {
        assert_eq!(process["spans_exported"], 0, "{process}");
        if !process["worker"].is_null() {
            assert!(process["node_id"].is_string(), "{process}");
        }
    }
    let dropped: u64 = processes
        .iter()
        .map(|p| p["spans_dropped"].as_u64().unwrap())
        .sum();
    assert_eq!(dropped, expected as u64, "{job}");
}
