//! The per-span cost of Filament's export path, in four variants measured in one run:
//!
//! - **floor**: an `opentelemetry_sdk` tracer provider whose only span processor does nothing: what
//!   making a span costs before anyone exports it;
//! - **native**: the same provider with a span processor in the host that turns each `SpanData` into
//!   OTLP with `opentelemetry-proto`'s own transform and writes it with the local-file plugin's
//!   encoder and writer (`SpanFile::write_otlp_span`, linked as an rlib; the resource and scope
//!   encoded once, as the plugin does): the same exporter, native;
//! - **abi**: the real path, `filament::tracing::Tracing` loading `libfilament_local_file.so`: host
//!   provider → bridge → borrowed `SpanRecord` → plugin processor across the ABI → the same writer,
//!   which encodes the span straight from the record instead of building the OTLP message first
//!   (same bytes);
//! - **batch**: the same as abi with `FILAMENT_LOCAL_FILE_MODE=batch` (a queue large enough that no
//!   span is dropped): the thread that ends a span encodes it into the queue, the plugin's writer
//!   thread writes lines of many spans. A sample's time runs until a `force_flush` has written
//!   every span, so it counts the writer's work too (in parallel, on a machine with a core free).
//!
//! `abi / native` is the price of the plugin boundary less what the plugin's direct encoding saves
//! (below 1 since it has encoded from the record); `native - floor` is what exporting costs.
//!
//! Samples are interleaved (floor, native, abi, floor, native, abi, …) rather than run variant after
//! variant: on a shared, noisy machine the load changes over seconds, and interleaving makes every
//! burst of noise land on all variants alike instead of on whichever ran at the time. Medians say
//! what is typical, minima what the code costs when nothing interferes; ratios are given for both.
//!
//! Run with `cargo bench -p filament-bench --bench export_path`. Without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick smoke pass with few spans. It prints figures and
//! never judges timings; it panics only if a variant lost or garbled spans.

use filament::tracing::{ProcessRole, Tracing, TracingGuard};
use filament_bench::{median, min};
use filament_local_file::{OtlpSpan, SpanFile};
use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, StringValue};
use opentelemetry_proto::tonic::trace::v1::TracesData;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span, SpanData, SpanProcessor};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The span name of a remote task, as Filament's runtime names it.
const SPAN_NAME: &str = "my_module::my_function filament.remote_worker";
const FUNCTION: &str = "my_module::my_function";
const JOB_ID: &str = "02000000";
const NODE_ID: &str = "4f1c2bd1a1e0c5b8e2a6f3d9c0b7a4e1d2c3b4a5f6e7d8c9b0a1f2e3";
const WORKER_ID: &str = "8c1f4e2a9b3d7c6e5f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a";
/// OTLP's `SPAN_KIND_CONSUMER`.
const OTLP_KIND_CONSUMER: i32 = 5;

/// How much to run: the real benchmark, or a smoke pass.
#[derive(Debug, Clone, Copy)]
struct Plan {
    warmup_spans: usize,
    spans_per_sample: usize,
    samples: usize,
    /// A smoke pass checks that everything works; its timings mean nothing.
    smoke: bool,
}

const BENCH: Plan = Plan {
    warmup_spans: 30_000,
    spans_per_sample: 200_000,
    samples: 7,
    smoke: false,
};

const SMOKE: Plan = Plan {
    warmup_spans: 100,
    spans_per_sample: 2_000,
    samples: 1,
    smoke: true,
};

/// The floor: receives every span and drops it.
#[derive(Debug)]
struct NoopProcessor;

impl SpanProcessor for NoopProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The native exporter: `opentelemetry-proto`'s transform, then the local-file plugin's writer.
#[derive(Debug)]
struct NativeFileProcessor {
    file: SpanFile,
    /// The provider's resource, converted once (the provider hands it over in `set_resource`).
    resource: ResourceAttributesWithSchema,
    /// Changes when the resource does.
    resource_key: u64,
    failures: Arc<AtomicU64>,
}

impl SpanProcessor for NativeFileProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        // The plugin's own encoder, fed from the SDK's span through `opentelemetry-proto`'s
        // transform: the resource and scope encoded once, as the plugin does.
        // The scope is cheap to clone (static names, no attributes); the span is converted by
        // value, as the transform wants it.
        let scope = span.instrumentation_scope.clone();
        let scope_key = fnv1a(&[scope.name(), scope.version().unwrap_or_default()]);
        let scope_schema_url = scope.schema_url().unwrap_or_default().to_owned();
        let proto_scope = || (scope, None).into();
        let proto_span = opentelemetry_proto::tonic::trace::v1::Span::from(span);
        let written = self.file.write_otlp_span(OtlpSpan {
            resource_key: self.resource_key,
            resource: || opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: self.resource.attributes.0.clone(),
                ..Default::default()
            },
            resource_schema_url: self.resource.schema_url.as_deref().unwrap_or_default(),
            scope_key,
            scope: proto_scope,
            scope_schema_url: &scope_schema_url,
            span: &proto_span,
        });
        if written.is_err() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
        self.resource_key += 1;
    }
}

/// FNV-1a of a few strings, separated: the native processor's scope key.
fn fnv1a(strings: &[&str]) -> u64 {
    strings.iter().fold(0xcbf2_9ce4_8422_2325, |hash, s| {
        s.bytes().chain([0xff]).fold(hash, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    })
}

/// The attributes the runtime gives a worker process's resource (see `filament::tracing`'s
/// provider), so that floor and native describe the same process as the ABI variant does.
fn worker_resource() -> Resource {
    let mut attributes = vec![
        KeyValue::new("process.pid", i64::from(std::process::id())),
        KeyValue::new("filament.role", ProcessRole::Worker.as_str()),
        KeyValue::new("filament.job_id", JOB_ID),
        KeyValue::new("filament.node_id", NODE_ID),
        KeyValue::new("filament.worker_id", WORKER_ID),
    ];
    if let Some(name) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
    {
        attributes.push(KeyValue::new("process.executable.name", name));
    }
    Resource::builder().with_attributes(attributes).build()
}

/// The local-file plugin's shared object, built by cargo next to this executable.
fn plugin_path() -> PathBuf {
    let exe = std::env::current_exe().expect("the bench executable's path");
    let dir = exe.parent().expect("the executable's directory");
    let profile_dir = match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps") => dir.parent().expect("target/<profile>"),
        _ => dir,
    };
    let file = "libfilament_local_file.so";
    [profile_dir.join("deps").join(file), profile_dir.join(file)]
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "{file} was not found in {0}/deps or {0}; it is built by depending on filament-local-file",
                profile_dir.display()
            )
        })
}

/// One variant: its provider, where its spans go, and what it measured.
struct Variant {
    name: &'static str,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The span file, for the variants that write one.
    file: Option<PathBuf>,
    /// Keeps the ABI variant's tracing (and its plugin processor) alive.
    guard: Option<TracingGuard>,
    native_failures: Option<Arc<AtomicU64>>,
    /// Whether the spans go many to a line (batch mode).
    batched: bool,
    /// Spans made so far, warm-up included.
    spans: u64,
    /// Lines found in the span file so far.
    lines: u64,
    bytes: u64,
    /// The last line of the last sample, kept for the content check.
    last_line: Option<String>,
    ns_per_span: Vec<f64>,
    _dir: TempDir,
}

impl Variant {
    fn new(
        name: &'static str,
        provider: SdkTracerProvider,
        file: Option<PathBuf>,
        dir: TempDir,
    ) -> Self {
        let tracer = provider.tracer("filament");
        Variant {
            name,
            provider,
            tracer,
            file,
            guard: None,
            native_failures: None,
            batched: false,
            spans: 0,
            lines: 0,
            bytes: 0,
            last_line: None,
            ns_per_span: Vec::new(),
            _dir: dir,
        }
    }

    /// Makes `n` spans and returns the nanoseconds per span; then counts what reached the file and
    /// empties it (outside the timing), so that the disk holds one sample at most.
    fn run(&mut self, n: usize, task_ids: &[StringValue]) -> f64 {
        let start = Instant::now();
        make_spans(&self.tracer, n, task_ids);
        if self.batched {
            let guard = self.guard.as_ref().expect("the batch variant's guard");
            guard
                .force_flush()
                .unwrap_or_else(|e| panic!("{}: force_flush failed: {e}", self.name));
        }
        let elapsed = start.elapsed();
        self.spans += n as u64;
        if let Some(path) = &self.file {
            let (lines, bytes, last_line) = count_lines(path);
            // A batched line holds many spans: count them by their `"kind":` field, which every
            // span has (and events and links have not).
            self.lines += if self.batched {
                count_spans(path)
            } else {
                lines
            };
            self.bytes += bytes;
            self.last_line = last_line;
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| f.set_len(0))
                .unwrap_or_else(|e| panic!("cannot truncate {}: {e}", path.display()));
        }
        elapsed.as_nanos() as f64 / n as f64
    }
}

fn temp_dir(variant: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("filament-bench-{variant}-"))
        .tempdir()
        .expect("a temporary directory")
}

fn floor() -> Variant {
    let provider = SdkTracerProvider::builder()
        .with_resource(worker_resource())
        .with_span_processor(NoopProcessor)
        .build();
    Variant::new("floor", provider, None, temp_dir("floor"))
}

fn native() -> Variant {
    let dir = temp_dir("native");
    let file =
        SpanFile::create(dir.path(), std::process::id()).unwrap_or_else(|e| panic!("native: {e}"));
    let path = file.path().to_owned();
    let failures = Arc::new(AtomicU64::new(0));
    let provider = SdkTracerProvider::builder()
        .with_resource(worker_resource())
        .with_span_processor(NativeFileProcessor {
            file,
            resource: ResourceAttributesWithSchema::default(),
            resource_key: 0,
            failures: Arc::clone(&failures),
        })
        .build();
    let mut variant = Variant::new("native", provider, Some(path), dir);
    variant.native_failures = Some(failures);
    variant
}

fn abi(plugin: &Path) -> Variant {
    abi_variant("abi", plugin, false)
}

fn batch(plugin: &Path) -> Variant {
    abi_variant("batch", plugin, true)
}

fn abi_variant(name: &'static str, plugin: &Path, batched: bool) -> Variant {
    let dir = temp_dir(name);
    let mode = if batched { "batch" } else { "simple" };
    let guard = Tracing::new(format!("{}:setup_tracing", plugin.display()))
        .role(ProcessRole::Worker)
        .job_id(JOB_ID)
        .node_id(NODE_ID)
        .worker_id(WORKER_ID)
        .config(
            filament_local_file::SPANS_DIR_KEY,
            dir.path().to_str().expect("a UTF-8 temporary path"),
        )
        .config(filament_local_file::MODE_KEY, mode)
        .config(filament_local_file::MAX_QUEUE_SIZE_KEY, "1000000")
        .build()
        .unwrap_or_else(|e| panic!("{name}: the local-file hook failed to set up: {e}"));
    let provider = guard
        .provider()
        .unwrap_or_else(|| panic!("{name}: no tracer provider (is OTEL_SDK_DISABLED=true?)"))
        .clone();
    let path = dir.path().join(format!("{}.json", std::process::id()));
    let mut variant = Variant::new(name, provider, Some(path), dir);
    variant.guard = Some(guard);
    variant.batched = batched;
    variant
}

/// The spans in a span file.
fn count_spans(path: &Path) -> u64 {
    let text = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    filament_bench::count_spans(&text)
}

/// Makes `n` spans the way a worker traces a task: start, five attributes, end.
fn make_spans(tracer: &SdkTracer, n: usize, task_ids: &[StringValue]) {
    let pid = i64::from(std::process::id());
    for i in 0..n {
        let mut span = tracer
            .span_builder(SPAN_NAME)
            .with_kind(SpanKind::Consumer)
            .start(tracer);
        span.set_attribute(KeyValue::new("filament.function", FUNCTION));
        span.set_attribute(KeyValue::new("filament.pid", pid));
        span.set_attribute(KeyValue::new(
            "filament.task_id",
            task_ids[i % task_ids.len()].clone(),
        ));
        span.set_attribute(KeyValue::new("filament.worker_id", WORKER_ID));
        span.set_attribute(KeyValue::new("filament.job_id", JOB_ID));
        span.end();
    }
}

/// Lines and bytes of a span file, and its last line.
fn count_lines(path: &Path) -> (u64, u64, Option<String>) {
    let (lines, bytes) = filament_bench::count_lines(path);
    let mut file =
        File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    if bytes == 0 {
        return (0, 0, None);
    }
    // The last line is in the last 64 KiB, but for batched lines, which may need more.
    let mut tail_len = bytes.min(64 * 1024);
    let (tail, start) = loop {
        let mut tail = vec![0u8; tail_len as usize];
        file.seek(SeekFrom::Start(bytes - tail_len))
            .and_then(|_| file.read_exact(&mut tail))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        assert_eq!(
            tail.last(),
            Some(&b'\n'),
            "{}: the last line is incomplete",
            path.display()
        );
        let body = &tail[..tail.len() - 1];
        match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => break (tail, i + 1),
            None if tail_len == bytes => break (tail, 0),
            None => tail_len = bytes.min(tail_len * 4),
        }
    };
    let body = &tail[..tail.len() - 1];
    let last = String::from_utf8(body[start..].to_vec()).expect("a UTF-8 span line");
    (lines, bytes, Some(last))
}

/// What a span line says, reduced to what does not vary between runs and variants.
#[derive(Debug, PartialEq)]
struct LineSummary {
    name: String,
    kind: i32,
    scope: String,
    attributes: Vec<String>,
    resource: Vec<String>,
}

fn summarize(variant: &str, line: &str) -> LineSummary {
    let data: TracesData = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("{variant}: a span line is not OTLP/JSON ({e}): {line}"));
    let [resource_spans] = data.resource_spans.as_slice() else {
        panic!("{variant}: expected one ResourceSpans per line: {line}");
    };
    let [scope_spans] = resource_spans.scope_spans.as_slice() else {
        panic!("{variant}: expected one ScopeSpans per line: {line}");
    };
    // One span per line, but for the batch variant: its line's last span.
    let Some(span) = scope_spans.spans.last() else {
        panic!("{variant}: a line without spans: {line}");
    };
    assert!(
        span.trace_id.len() == 16 && span.span_id.len() == 8,
        "{variant}: bad ids in {line}"
    );
    assert!(
        span.end_time_unix_nano >= span.start_time_unix_nano && span.start_time_unix_nano > 0,
        "{variant}: bad times in {line}"
    );
    let describe = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        let mut described: Vec<String> = kvs
            .iter()
            .map(|kv| format!("{}={:?}", kv.key, kv.value))
            .collect();
        described.sort();
        described
    };
    LineSummary {
        name: span.name.clone(),
        kind: span.kind,
        scope: scope_spans
            .scope
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        attributes: describe(&span.attributes),
        resource: describe(
            resource_spans
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or_default(),
        ),
    }
}

/// Checks that every span of the file variants reached its file, intact, and that both files say
/// the same thing. Panics with the reason otherwise.
fn verify(native: &Variant, abi: &Variant, batch: &Variant) {
    for variant in [native, abi, batch] {
        assert_eq!(
            variant.lines, variant.spans,
            "{}: {} spans were made but {} lines were written",
            variant.name, variant.spans, variant.lines
        );
    }
    let failures = native
        .native_failures
        .as_ref()
        .map_or(0, |f| f.load(Ordering::Relaxed));
    assert_eq!(failures, 0, "native: {failures} writes failed");
    for variant in [abi, batch] {
        let guard = variant.guard.as_ref().expect("the plugin variant's guard");
        let reports = guard.processors();
        let [report] = reports.as_slice() else {
            panic!(
                "{}: expected one plugin processor, found {reports:?}",
                variant.name
            );
        };
        assert!(
            report.failures == 0
                && report.delivered == variant.spans
                && report.plugin.exported == variant.spans
                && report.plugin.dropped == 0,
            "{}: {} spans made, but the plugin processor reports {report:?}",
            variant.name,
            variant.spans
        );
    }

    let summary = |variant: &Variant| {
        let line = variant
            .last_line
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no span line to check", variant.name));
        summarize(variant.name, line)
    };
    let (native_line, abi_line) = (summary(native), summary(abi));
    assert!(
        native_line.name == SPAN_NAME
            && native_line.kind == OTLP_KIND_CONSUMER
            && native_line.attributes.len() == 5,
        "native: unexpected span {native_line:?}"
    );
    assert_eq!(
        native_line, abi_line,
        "the native and the abi variants wrote different spans"
    );
    assert_eq!(
        abi_line,
        summary(batch),
        "the abi and the batch variants wrote different spans"
    );
}

fn report(plan: Plan, variants: &[Variant; 4], elapsed: Duration) {
    let [floor, native, abi, batch] = variants;
    let floor_median = median(&floor.ns_per_span);
    let smoke = if plan.smoke {
        " (smoke pass without --bench: not a measurement)"
    } else {
        ""
    };
    println!(
        "export path: {} samples x {} spans per variant, interleaved; ns per span{smoke}",
        plan.samples, plan.spans_per_sample
    );
    println!(
        "{:<8} {:>10} {:>10} {:>14} {:>11}   samples",
        "variant", "median", "min", "above floor", "bytes/span"
    );
    for variant in variants {
        let med = median(&variant.ns_per_span);
        let bytes = if variant.file.is_some() {
            format!("{:.1}", variant.bytes as f64 / variant.spans as f64)
        } else {
            "-".to_owned()
        };
        let samples: Vec<String> = variant
            .ns_per_span
            .iter()
            .map(|ns| format!("{ns:.0}"))
            .collect();
        println!(
            "{:<8} {:>10.1} {:>10.1} {:>14.1} {:>11}   {}",
            variant.name,
            med,
            min(&variant.ns_per_span),
            med - floor_median,
            bytes,
            samples.join(" ")
        );
    }
    let (native_median, abi_median) = (median(&native.ns_per_span), median(&abi.ns_per_span));
    let (native_min, abi_min) = (min(&native.ns_per_span), min(&abi.ns_per_span));
    let paired: Vec<f64> = abi
        .ns_per_span
        .iter()
        .zip(&native.ns_per_span)
        .map(|(a, n)| a / n)
        .collect();
    println!(
        "ratio abi/native (median): {:.2}  (target <= 1.10)",
        abi_median / native_median
    );
    println!("ratio abi/native (min):    {:.2}", abi_min / native_min);
    println!(
        "ratio abi/native (median of per-round ratios): {:.2}",
        median(&paired)
    );
    println!(
        "abi - native: {:+.1} ns/span (medians), {:+.1} ns/span (minima)",
        abi_median - native_median,
        abi_min - native_min
    );
    println!(
        "ratio batch/abi (median): {:.2}; batch - floor: {:+.1} ns/span (medians)",
        median(&batch.ns_per_span) / abi_median,
        median(&batch.ns_per_span) - floor_median
    );
    println!(
        "checked: {} spans per file variant, all written, the same content natively, through the ABI and batched; {:.1} s",
        native.spans,
        elapsed.as_secs_f64()
    );
}

fn main() {
    let started = Instant::now();
    let plan = if std::env::args().any(|a| a == "--bench") {
        BENCH
    } else {
        SMOKE
    };
    let plugin = plugin_path();
    let task_ids: Vec<StringValue> = (0..4096u64)
        .map(|i| StringValue::from(format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15))))
        .collect();

    let mut variants = [floor(), native(), abi(&plugin), batch(&plugin)];
    for variant in &mut variants {
        variant.run(plan.warmup_spans, &task_ids);
    }
    for _ in 0..plan.samples {
        for variant in &mut variants {
            let ns = variant.run(plan.spans_per_sample, &task_ids);
            variant.ns_per_span.push(ns);
        }
    }

    let [_, native, abi, batch] = &variants;
    verify(native, abi, batch);
    report(plan, &variants, started.elapsed());

    for variant in variants {
        if let Some(guard) = variant.guard {
            guard
                .shutdown()
                .unwrap_or_else(|e| panic!("{}: shutdown failed: {e}", variant.name));
        }
        let _ = variant.provider.shutdown();
    }
}
