//! What exporting through `filament-plugin-otel` and the Jaeger plugin costs, measured in one run:
//!
//! - **conversion**: `SpanRecord` → the SDK's `SpanData` (`filament_plugin_otel::convert`), the
//!   price every SDK exporter behind the ABI pays, next to the local-file plugin's encoder writing
//!   the same record as one OTLP/JSON line (`SpanFile::write_span`, encoding and `write`);
//! - **OTLP/HTTP throughput**: spans per second one process exports with the real Jaeger plugin
//!   (`filament::tracing::Tracing` loading `libfilament_jaeger.so`, default batching) to an
//!   OTLP/HTTP receiver in this process, with no drop: spans are made in rounds of one queue
//!   (2048, `OTEL_BSP_MAX_QUEUE_SIZE`), each round flushed, so nothing overflows; the receiver
//!   decodes every request and the run checks that every span arrived once;
//! - **traced task throughput**: batches of no-op tasks on an embedded cluster (2 workers) with the
//!   Jaeger plugin exporting to that receiver, as a ratio to the same batches with the local-file
//!   plugin, clusters alternating in one run. The Jaeger clusters get a queue of 65,536
//!   (`OTEL_BSP_MAX_QUEUE_SIZE`) so that a batch's spans are all exported, and the run reports how
//!   many arrived.
//!
//! `filament::init` re-executes this binary as the worker processes, so the first cluster is made
//! first thing in `main`: a worker never gets past it.
//!
//! Run with `cargo bench -p filament-bench --bench otel_export`. Without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick smoke pass. Figures, never judgements; it panics only
//! if spans were lost.

use filament::Config;
use filament::tracing::Tracing;
use filament_bench::{median, min};
use filament_local_file::SpanFile;
use filament_plugin_api::{
    KeyValue as RecordKeyValue, Resource as RecordResource, Scope, SpanId, SpanKind, SpanRecord,
    Status, StatusCode, TraceId, Value as RecordValue,
};
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Plan {
    conversion_spans: usize,
    conversion_samples: usize,
    http_rounds: usize,
    http_samples: usize,
    /// Clusters of each hook, alternating.
    task_rounds: usize,
    /// Tasks per batch.
    tasks: u32,
}

const BENCH: Plan = Plan {
    conversion_spans: 200_000,
    conversion_samples: 7,
    http_rounds: 50,
    http_samples: 5,
    task_rounds: 5,
    tasks: 20_000,
};

const SMOKE: Plan = Plan {
    conversion_spans: 1_000,
    conversion_samples: 1,
    http_rounds: 1,
    http_samples: 1,
    task_rounds: 1,
    tasks: 200,
};

const JAEGER: &str = "filament_jaeger:setup_tracing";
const LOCAL_FILE: &str = "filament_local_file:setup_tracing";

#[filament::remote]
fn echo(i: u32) -> u32 {
    i
}

/// A cluster with one of the two hooks.
fn cluster(hook: &str, endpoint: Option<&str>, spans_dir: &std::path::Path) -> filament::Runtime {
    let mut config = Config::default()
        .num_workers(2)
        .tracing_startup_hook(hook)
        .tracing_config(
            filament_local_file::SPANS_DIR_KEY,
            spans_dir.to_str().expect("a UTF-8 temporary path"),
        );
    if let Some(endpoint) = endpoint {
        config = config
            .tracing_config("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .tracing_config("OTEL_BSP_MAX_QUEUE_SIZE", "65536");
    }
    filament::init(config).unwrap_or_else(|e| panic!("{hook}: init failed: {e}"))
}

/// Tasks per second of one batch of `n` no-op tasks, submitted then got.
fn batch(n: u32) -> f64 {
    let started = Instant::now();
    let refs: Vec<_> = (0..n).map(echo::remote).collect();
    let values = filament::get_all(&refs).expect("the batch");
    let elapsed = started.elapsed();
    assert_eq!(values.len(), n as usize);
    f64::from(n) / elapsed.as_secs_f64()
}

/// One batch processor queue: a round of this many spans never overflows it.
const ROUND: usize = 2048;

/// A record like a task's CONSUMER span in a worker: ids, eight attributes, the process resource.
fn with_record<R>(f: impl FnOnce(&SpanRecord<'_>) -> R) -> R {
    let attributes = [
        RecordKeyValue::new("filament.remote", RecordValue::Str("function".into())),
        RecordKeyValue::new(
            "filament.function",
            RecordValue::Str("my_module::my_function".into()),
        ),
        RecordKeyValue::new("filament.job_id", RecordValue::Str("02000000".into())),
        RecordKeyValue::new(
            "filament.task_id",
            RecordValue::Str("00000000000000000000000000000a1f".into()),
        ),
        RecordKeyValue::new(
            "filament.worker_id",
            RecordValue::Str("8c1f4e2a9b3d7c6e5f0a1b2c3d4e5f6a".into()),
        ),
        RecordKeyValue::new(
            "filament.node_id",
            RecordValue::Str("4f1c2bd1a1e0c5b8e2a6f3d9c0b7a4e1".into()),
        ),
        RecordKeyValue::new("filament.pid", RecordValue::I64(4242)),
        RecordKeyValue::new("messaging.system", RecordValue::Str("filament".into())),
    ];
    let resource = [
        RecordKeyValue::new("service.name", RecordValue::Str("bench".into())),
        RecordKeyValue::new("process.pid", RecordValue::I64(4242)),
        RecordKeyValue::new("filament.role", RecordValue::Str("worker".into())),
        RecordKeyValue::new("filament.job_id", RecordValue::Str("02000000".into())),
        RecordKeyValue::new(
            "filament.worker_id",
            RecordValue::Str("8c1f4e2a9b3d7c6e5f0a1b2c3d4e5f6a".into()),
        ),
        RecordKeyValue::new(
            "telemetry.sdk.name",
            RecordValue::Str("opentelemetry".into()),
        ),
        RecordKeyValue::new("telemetry.sdk.language", RecordValue::Str("rust".into())),
        RecordKeyValue::new("telemetry.sdk.version", RecordValue::Str("0.33.1".into())),
    ];
    let record = SpanRecord {
        trace_id: TraceId([0x4b; 16]),
        span_id: SpanId([0x17; 8]),
        parent_span_id: SpanId([0x29; 8]),
        parent_is_remote: true,
        trace_flags: 1,
        trace_state: "".into(),
        name: "my_module::my_function filament.remote_worker".into(),
        kind: SpanKind::Consumer,
        start_time_unix_nano: 1_760_000_000_000_000_000,
        end_time_unix_nano: 1_760_000_000_000_250_000,
        attributes: (&attributes[..]).into(),
        dropped_attributes_count: 0,
        events: Default::default(),
        dropped_events_count: 0,
        links: Default::default(),
        dropped_links_count: 0,
        status: Status {
            code: StatusCode::Unset,
            description: "".into(),
        },
        scope: Scope {
            name: "filament".into(),
            version: "0.1.0".into(),
            schema_url: "".into(),
            attributes: Default::default(),
        },
        resource: RecordResource {
            attributes: (&resource[..]).into(),
            schema_url: "".into(),
            id: 1,
        },
    };
    f(&record)
}

/// ns per span of `convert::span_data` (the `SpanData` dropped, as an exporter's batch is).
fn conversion(n: usize) -> f64 {
    with_record(|record| {
        let started = Instant::now();
        for _ in 0..n {
            black_box(filament_plugin_otel::convert::span_data(black_box(record)));
        }
        started.elapsed().as_nanos() as f64 / n as f64
    })
}

/// ns per span of the local-file plugin's encoder and write of the same record.
fn local_file_encoder(file: &SpanFile, n: usize) -> f64 {
    with_record(|record| {
        let started = Instant::now();
        for _ in 0..n {
            file.write_span(black_box(record)).expect("write a span");
        }
        started.elapsed().as_nanos() as f64 / n as f64
    })
}

/// An OTLP/HTTP receiver that decodes every request and counts its spans.
struct Receiver {
    server: Arc<tiny_http::Server>,
    spans: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start() -> Receiver {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind a receiver"));
        let spans = Arc::new(AtomicU64::new(0));
        let thread = {
            let (server, spans) = (server.clone(), spans.clone());
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let mut body = Vec::new();
                    std::io::Read::read_to_end(request.as_reader(), &mut body).unwrap();
                    let decoded = ExportTraceServiceRequest::decode(body.as_slice())
                        .expect("an OTLP protobuf request");
                    let count: usize = decoded
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .map(|s| s.spans.len())
                        .sum();
                    spans.fetch_add(count as u64, Ordering::SeqCst);
                    let _ = request.respond(tiny_http::Response::from_data(Vec::new()));
                }
            })
        };
        Receiver {
            server,
            spans,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.server.server_addr().to_ip().unwrap())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Spans per second through the Jaeger plugin to the receiver, `rounds` rounds of one queue each.
fn otlp_http(receiver: &Receiver, guard: &filament::tracing::TracingGuard, rounds: usize) -> f64 {
    let tracer = guard.provider().expect("a provider").tracer("bench");
    let before = receiver.spans.load(Ordering::SeqCst);
    let started = Instant::now();
    for _ in 0..rounds {
        for i in 0..ROUND {
            let mut span = tracer.start("my_module::my_function filament.remote_worker");
            span.set_attribute(KeyValue::new("filament.pid", i as i64));
            span.set_attribute(KeyValue::new("filament.function", "my_module::my_function"));
            span.end();
        }
        guard.force_flush().expect("flush");
    }
    let elapsed = started.elapsed();
    let arrived = receiver.spans.load(Ordering::SeqCst) - before;
    let sent = (rounds * ROUND) as u64;
    assert_eq!(arrived, sent, "every span arrives, once");
    sent as f64 / elapsed.as_secs_f64()
}

fn main() {
    // In a worker process this call serves tasks and never returns: it must come first.
    let spans_dir = tempfile::tempdir().unwrap();
    let mut first = Some(cluster(LOCAL_FILE, None, spans_dir.path()));
    let started = Instant::now();
    let plan = if std::env::args().any(|a| a == "--bench") {
        BENCH
    } else {
        SMOKE
    };
    let receiver = Receiver::start();
    let endpoint = receiver.endpoint();

    let (mut local_file, mut jaeger, mut arrived) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..plan.task_rounds {
        let order = if round % 2 == 0 {
            [LOCAL_FILE, JAEGER]
        } else {
            [JAEGER, LOCAL_FILE]
        };
        for hook in order {
            let runtime = match first.take() {
                Some(runtime) => runtime,
                None if hook == JAEGER => cluster(hook, Some(&endpoint), spans_dir.path()),
                None => cluster(hook, None, spans_dir.path()),
            };
            assert_eq!(echo::remote(7).get().ok(), Some(7));
            let before = receiver.spans.load(Ordering::SeqCst);
            let per_second = batch(plan.tasks);
            // Dropping the cluster shuts its tracing down: every process flushes.
            drop(runtime);
            if hook == JAEGER {
                jaeger.push(per_second);
                arrived.push(receiver.spans.load(Ordering::SeqCst) - before);
            } else {
                local_file.push(per_second);
            }
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let file = SpanFile::create(dir.path(), std::process::id()).unwrap();
    let (mut convert_ns, mut encode_ns) = (Vec::new(), Vec::new());
    conversion(plan.conversion_spans / 10 + 1);
    local_file_encoder(&file, plan.conversion_spans / 10 + 1);
    for _ in 0..plan.conversion_samples {
        convert_ns.push(conversion(plan.conversion_spans));
        encode_ns.push(local_file_encoder(&file, plan.conversion_spans));
    }

    let guard = Tracing::new(JAEGER)
        .config("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .shutdown_timeout(Duration::from_secs(30))
        .build()
        .expect("the Jaeger plugin loads");
    otlp_http(&receiver, &guard, 1);
    let mut per_second = Vec::new();
    for _ in 0..plan.http_samples {
        per_second.push(otlp_http(&receiver, &guard, plan.http_rounds));
    }
    guard.shutdown().expect("shutdown");

    println!(
        "otel_export{}: {} samples, {:.1} s",
        if plan.conversion_samples == 1 {
            " (smoke pass: timings mean nothing)"
        } else {
            ""
        },
        plan.conversion_samples,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  SpanRecord -> SpanData            median {:>8.0} ns/span  min {:>8.0}",
        median(&convert_ns),
        min(&convert_ns)
    );
    println!(
        "  local-file encoder + write        median {:>8.0} ns/span  min {:>8.0}",
        median(&encode_ns),
        min(&encode_ns)
    );
    let max = per_second.iter().copied().fold(0.0, f64::max);
    println!(
        "  OTLP/HTTP via filament_jaeger     median {:>8.0} spans/s  max {:>8.0}  ({} spans per sample, no drop)",
        median(&per_second),
        max,
        plan.http_rounds * ROUND
    );
    let ratios: Vec<f64> = jaeger.iter().zip(&local_file).map(|(j, l)| j / l).collect();
    println!(
        "  {} no-op tasks, 2 workers:  local-file median {:>8.0} tasks/s, jaeger median {:>8.0} tasks/s, \
         jaeger/local-file median {:.2} (per round: {})",
        plan.tasks,
        median(&local_file),
        median(&jaeger),
        median(&ratios),
        ratios
            .iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  spans the receiver got per Jaeger cluster (2 per task, plus the first task's 2): {arrived:?}"
    );
}
