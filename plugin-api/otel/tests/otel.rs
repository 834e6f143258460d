//! The adapter as plugin authors use it: records in, the SDK's `SpanData` out of any exporter.

use filament_plugin_api::{
    Event, KeyValue, Link, Resource, Scope, SpanId, SpanKind, SpanProcessor, SpanRecord, Status,
    StatusCode, TraceId, Value,
};
use filament_plugin_otel::{BatchConfig, BatchProcessor, SimpleProcessor, convert};
use opentelemetry::trace::{self as ot, TraceState};
use opentelemetry::{Array, StringValue, Value as OtValue};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// What a test exporter does with a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Accept,
    Fail,
    Panic,
    /// A future that never completes: only the export timeout ends it.
    Hang,
}

#[derive(Debug, Default)]
struct Seen {
    batches: Vec<Vec<SpanData>>,
    resources: Vec<opentelemetry_sdk::Resource>,
    shutdown: bool,
}

#[derive(Debug, Clone)]
struct TestExporter {
    seen: Arc<Mutex<Seen>>,
    mode: Arc<Mutex<Mode>>,
    /// While set, `export` waits (blocking its thread, as blocking HTTP clients do).
    gate: Arc<AtomicBool>,
}

impl TestExporter {
    fn new(mode: Mode) -> Self {
        TestExporter {
            seen: Arc::default(),
            mode: Arc::new(Mutex::new(mode)),
            gate: Arc::new(AtomicBool::new(false)),
        }
    }
    fn spans(&self) -> Vec<SpanData> {
        self.seen
            .lock()
            .unwrap()
            .batches
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
    fn batch_sizes(&self) -> Vec<usize> {
        self.seen
            .lock()
            .unwrap()
            .batches
            .iter()
            .map(Vec::len)
            .collect()
    }
}

impl SpanExporter for TestExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        while self.gate.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mode = *self.mode.lock().unwrap();
        match mode {
            Mode::Accept => {
                self.seen.lock().unwrap().batches.push(batch);
                Ok(())
            }
            Mode::Fail => Err(OTelSdkError::InternalFailure(
                "503 Service Unavailable".into(),
            )),
            Mode::Hang => std::future::pending().await,
            Mode::Panic => panic!("the exporter broke"),
        }
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        self.seen.lock().unwrap().shutdown = true;
        Ok(())
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.seen.lock().unwrap().resources.push(resource.clone());
    }
}

const STRS: [abi_stable::std_types::RStr<'static>; 2] = [
    abi_stable::std_types::RStr::from_str("x"),
    abi_stable::std_types::RStr::from_str("y"),
];

fn record<'a>(
    name: &'a str,
    attributes: &'a [KeyValue<'a>],
    events: &'a [Event<'a>],
    links: &'a [Link<'a>],
    resource: &'a [KeyValue<'a>],
    resource_id: u64,
) -> SpanRecord<'a> {
    SpanRecord {
        trace_id: TraceId([0xab; 16]),
        span_id: SpanId([0x01; 8]),
        parent_span_id: SpanId([0x02; 8]),
        parent_is_remote: true,
        trace_flags: 1,
        trace_state: "vendor=value".into(),
        name: name.into(),
        kind: SpanKind::Consumer,
        start_time_unix_nano: 1_700_000_000_000_000_123,
        end_time_unix_nano: 1_700_000_000_500_000_456,
        attributes: attributes.into(),
        dropped_attributes_count: 3,
        events: events.into(),
        dropped_events_count: 4,
        links: links.into(),
        dropped_links_count: 5,
        status: Status {
            code: StatusCode::Error,
            description: "it broke".into(),
        },
        scope: Scope {
            name: "my-scope".into(),
            version: "1.2.3".into(),
            schema_url: "https://opentelemetry.io/schemas/1.21.0".into(),
            attributes: (&[][..]).into(),
        },
        resource: Resource {
            attributes: resource.into(),
            schema_url: "".into(),
            id: resource_id,
        },
    }
}

fn simple(name: &str) -> SpanRecord<'_> {
    record(name, &[], &[], &[], &[], 1)
}

#[test]
fn every_field_of_a_record_reaches_span_data() {
    let attributes = [
        KeyValue::new("s", Value::Str("text".into())),
        KeyValue::new("b", Value::Bool(true)),
        KeyValue::new("i", Value::I64(i64::MIN)),
        KeyValue::new("f", Value::F64(2.5)),
        KeyValue::new("ba", Value::BoolArray((&[true, false][..]).into())),
        KeyValue::new("ia", Value::I64Array((&[1, -2][..]).into())),
        KeyValue::new("fa", Value::F64Array((&[0.5][..]).into())),
        KeyValue::new("sa", Value::StrArray((&STRS[..]).into())),
    ];
    let event_attributes = [KeyValue::new(
        "exception.message",
        Value::Str("boom".into()),
    )];
    let events = [Event {
        name: "exception".into(),
        time_unix_nano: 1_700_000_000_200_000_000,
        attributes: (&event_attributes[..]).into(),
        dropped_attributes_count: 6,
    }];
    let links = [Link {
        trace_id: TraceId([7; 16]),
        span_id: SpanId([9; 8]),
        trace_flags: 1,
        trace_state: "k=v".into(),
        is_remote: true,
        attributes: (&event_attributes[..]).into(),
        dropped_attributes_count: 7,
    }];
    let span = convert::span_data(&record("task", &attributes, &events, &links, &[], 1));

    assert_eq!(
        span.span_context.trace_id(),
        ot::TraceId::from_bytes([0xab; 16])
    );
    assert_eq!(span.span_context.span_id(), ot::SpanId::from_bytes([1; 8]));
    assert!(span.span_context.is_sampled());
    assert_eq!(span.span_context.trace_state().header(), "vendor=value");
    assert_eq!(span.parent_span_id, ot::SpanId::from_bytes([2; 8]));
    assert!(span.parent_span_is_remote);
    assert_eq!(span.span_kind, ot::SpanKind::Consumer);
    assert_eq!(span.name, "task");
    let nanos = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
    assert_eq!(nanos(span.start_time), 1_700_000_000_000_000_123);
    assert_eq!(nanos(span.end_time), 1_700_000_000_500_000_456);

    let values: Vec<(String, OtValue)> = span
        .attributes
        .iter()
        .map(|kv| (kv.key.to_string(), kv.value.clone()))
        .collect();
    assert_eq!(
        values,
        [
            ("s".into(), OtValue::String("text".into())),
            ("b".into(), OtValue::Bool(true)),
            ("i".into(), OtValue::I64(i64::MIN)),
            ("f".into(), OtValue::F64(2.5)),
            ("ba".into(), OtValue::Array(Array::Bool(vec![true, false]))),
            ("ia".into(), OtValue::Array(Array::I64(vec![1, -2]))),
            ("fa".into(), OtValue::Array(Array::F64(vec![0.5]))),
            (
                "sa".into(),
                OtValue::Array(Array::String(vec![
                    StringValue::from("x"),
                    StringValue::from("y")
                ]))
            ),
        ]
    );
    assert_eq!(span.dropped_attributes_count, 3);

    assert_eq!(span.events.len(), 1);
    assert_eq!(span.events.dropped_count, 4);
    let event = &span.events[0];
    assert_eq!(event.name, "exception");
    assert_eq!(nanos(event.timestamp), 1_700_000_000_200_000_000);
    assert_eq!(event.attributes[0].key.as_str(), "exception.message");
    assert_eq!(event.dropped_attributes_count, 6);

    assert_eq!(span.links.len(), 1);
    assert_eq!(span.links.dropped_count, 5);
    let link = &span.links[0];
    assert_eq!(
        link.span_context.trace_id(),
        ot::TraceId::from_bytes([7; 16])
    );
    assert_eq!(link.span_context.span_id(), ot::SpanId::from_bytes([9; 8]));
    assert!(link.span_context.is_remote());
    assert_eq!(link.span_context.trace_state().header(), "k=v");
    assert_eq!(link.attributes.len(), 1);
    assert_eq!(link.dropped_attributes_count, 7);

    assert_eq!(span.status, ot::Status::error("it broke"));
    assert_eq!(span.instrumentation_scope.name(), "my-scope");
    assert_eq!(span.instrumentation_scope.version(), Some("1.2.3"));
    assert_eq!(
        span.instrumentation_scope.schema_url(),
        Some("https://opentelemetry.io/schemas/1.21.0")
    );
}

#[test]
fn a_root_span_keeps_the_invalid_parent_and_an_empty_trace_state() {
    let mut root = simple("root");
    root.parent_span_id = SpanId::default();
    root.trace_state = "".into();
    root.status = Status {
        code: StatusCode::Ok,
        description: "".into(),
    };
    root.scope.version = "".into();
    let span = convert::span_data(&root);
    assert_eq!(span.parent_span_id, ot::SpanId::INVALID);
    assert_eq!(span.span_context.trace_state(), &TraceState::NONE);
    assert_eq!(span.status, ot::Status::Ok);
    assert_eq!(span.instrumentation_scope.version(), None);
}

#[test]
fn the_resource_is_given_to_the_exporter_once_per_resource() {
    let first = [KeyValue::new("service.name", Value::Str("a".into()))];
    let second = [KeyValue::new("service.name", Value::Str("b".into()))];
    let exporter = TestExporter::new(Mode::Accept);
    let processor = BatchProcessor::new("test", exporter.clone(), BatchConfig::default()).unwrap();
    for _ in 0..3 {
        processor.on_end(&record("one", &[], &[], &[], &first, 1));
    }
    processor.on_end(&record("two", &[], &[], &[], &second, 2));
    processor.shutdown(Duration::from_secs(10)).unwrap();

    let seen = exporter.seen.lock().unwrap();
    let names: Vec<String> = seen
        .resources
        .iter()
        .map(|r| {
            r.get(&opentelemetry::Key::from_static_str("service.name"))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        seen.batches.iter().map(Vec::len).collect::<Vec<_>>(),
        [3, 1],
        "a batch never mixes resources"
    );
    assert!(
        seen.shutdown,
        "the exporter is shut down with the processor"
    );
}

#[test]
fn a_full_batch_leaves_at_once_and_the_rest_at_shutdown() {
    let exporter = TestExporter::new(Mode::Accept);
    let config = BatchConfig {
        max_export_batch_size: 4,
        schedule_delay: Duration::from_secs(3600),
        ..BatchConfig::default()
    };
    let processor = BatchProcessor::new("test", exporter.clone(), config).unwrap();
    for _ in 0..4 {
        processor.on_end(&simple("s"));
    }
    let until = Instant::now() + Duration::from_secs(30);
    while exporter.batch_sizes().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        exporter.batch_sizes(),
        [4],
        "a full batch does not wait for the delay"
    );
    for _ in 0..3 {
        processor.on_end(&simple("s"));
    }
    processor.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(exporter.batch_sizes(), [4, 3]);
    assert_eq!(processor.stats().exported, 7);
    assert_eq!(processor.stats().dropped, 0);
}

#[test]
fn a_partial_batch_leaves_after_the_schedule_delay() {
    let exporter = TestExporter::new(Mode::Accept);
    let config = BatchConfig {
        schedule_delay: Duration::from_millis(20),
        ..BatchConfig::default()
    };
    let processor = BatchProcessor::new("test", exporter.clone(), config).unwrap();
    processor.on_end(&simple("s"));
    let until = Instant::now() + Duration::from_secs(30);
    while exporter.spans().is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        exporter.spans().len(),
        1,
        "exported without flush or shutdown"
    );
    processor.shutdown(Duration::from_secs(10)).unwrap();
}

#[test]
fn force_flush_exports_everything_queued() {
    let exporter = TestExporter::new(Mode::Accept);
    let config = BatchConfig {
        schedule_delay: Duration::from_secs(3600),
        max_export_batch_size: 2,
        ..BatchConfig::default()
    };
    let processor = BatchProcessor::new("test", exporter.clone(), config).unwrap();
    for i in 0..5 {
        processor.on_end(&simple(["a", "b", "c", "d", "e"][i]));
    }
    processor.force_flush(Duration::from_secs(10)).unwrap();
    let names: Vec<String> = exporter
        .spans()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"], "in order, each once");
    processor.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(
        processor.force_flush(Duration::from_secs(1)),
        Err(filament_plugin_api::ProcessorError::AlreadyShutdown)
    );
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking_on_end() {
    let exporter = TestExporter::new(Mode::Accept);
    exporter.gate.store(true, Ordering::SeqCst);
    let config = BatchConfig {
        max_queue_size: 4,
        max_export_batch_size: 1,
        ..BatchConfig::default()
    };
    let processor = BatchProcessor::new("test", exporter.clone(), config).unwrap();
    // The export thread takes one span and blocks in `export`; four wait; the rest are dropped.
    processor.on_end(&simple("s"));
    let until = Instant::now() + Duration::from_secs(30);
    while processor.stats().dropped == 0 && Instant::now() < until {
        processor.on_end(&simple("s"));
    }
    for _ in 0..1000 {
        processor.on_end(&simple("s"));
    }
    let offered_after_full = processor.stats().dropped;
    assert!(offered_after_full >= 1000, "{:?}", processor.stats());
    exporter.gate.store(false, Ordering::SeqCst);
    processor.shutdown(Duration::from_secs(10)).unwrap();
    let stats = processor.stats();
    assert_eq!(stats.exported as usize, exporter.spans().len());
    assert!(
        (4..=5).contains(&stats.exported),
        "the queue held four and the thread one: {stats:?}"
    );
    assert_eq!(
        processor.failed(),
        0,
        "a full queue is a drop, not a failure"
    );
}

#[test]
fn failed_exports_are_counted_as_failed_and_dropped_and_export_resumes() {
    let exporter = TestExporter::new(Mode::Fail);
    let config = BatchConfig {
        max_export_batch_size: 2,
        ..BatchConfig::default()
    };
    let processor = BatchProcessor::new("test", exporter.clone(), config).unwrap();
    for _ in 0..4 {
        processor.on_end(&simple("s"));
    }
    let error = processor.force_flush(Duration::from_secs(10)).unwrap_err();
    assert!(
        error.to_string().contains("503 Service Unavailable"),
        "{error}"
    );
    assert_eq!(processor.failed(), 4);
    assert_eq!(processor.stats().dropped, 4);
    assert_eq!(processor.stats().exported, 0);

    // The receiver is back.
    *exporter.mode.lock().unwrap() = Mode::Accept;
    processor.on_end(&simple("s"));
    processor.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(processor.stats().exported, 1);
    assert_eq!(processor.failed(), 4);
}

#[test]
fn an_export_that_never_finishes_is_abandoned_after_the_export_timeout() {
    let exporter = TestExporter::new(Mode::Hang);
    let config = BatchConfig {
        export_timeout: Duration::from_millis(50),
        ..BatchConfig::default()
    };
    let processor = BatchProcessor::new("test", exporter, config).unwrap();
    processor.on_end(&simple("s"));
    let started = Instant::now();
    let result = processor.shutdown(Duration::from_secs(20));
    assert!(started.elapsed() < Duration::from_secs(15), "bounded");
    assert!(
        matches!(result, Err(filament_plugin_api::ProcessorError::Timeout(_))),
        "{result:?}"
    );
    assert_eq!(processor.failed(), 1);
}

#[test]
fn shutdown_returns_within_its_timeout_while_an_export_blocks() {
    let exporter = TestExporter::new(Mode::Accept);
    exporter.gate.store(true, Ordering::SeqCst);
    let processor = BatchProcessor::new(
        "test",
        exporter.clone(),
        BatchConfig {
            max_export_batch_size: 1,
            ..BatchConfig::default()
        },
    )
    .unwrap();
    processor.on_end(&simple("s"));
    let result = processor.shutdown(Duration::from_millis(100));
    assert_eq!(
        result,
        Err(filament_plugin_api::ProcessorError::Timeout(
            Duration::from_millis(100).into()
        ))
    );
    exporter.gate.store(false, Ordering::SeqCst);
}

#[test]
fn unsampled_spans_are_not_exported() {
    let exporter = TestExporter::new(Mode::Accept);
    let processor = BatchProcessor::new("test", exporter.clone(), BatchConfig::default()).unwrap();
    let mut unsampled = simple("unsampled");
    unsampled.trace_flags = 0;
    processor.on_end(&unsampled);
    processor.on_end(&simple("sampled"));
    processor.shutdown(Duration::from_secs(10)).unwrap();
    let names: Vec<String> = exporter
        .spans()
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["sampled"]);
}

#[test]
fn the_simple_processor_exports_each_span_on_its_own() {
    let exporter = TestExporter::new(Mode::Accept);
    let processor = SimpleProcessor::new("test", exporter.clone(), BatchConfig::default()).unwrap();
    for _ in 0..3 {
        processor.on_end(&simple("s"));
    }
    processor.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(exporter.batch_sizes(), [1, 1, 1]);
    assert_eq!(processor.stats().exported, 3);
}

#[test]
fn spans_after_shutdown_are_dropped_and_counted() {
    let exporter = TestExporter::new(Mode::Accept);
    let processor = BatchProcessor::new("test", exporter.clone(), BatchConfig::default()).unwrap();
    processor.shutdown(Duration::from_secs(10)).unwrap();
    processor.on_end(&simple("late"));
    assert!(exporter.spans().is_empty());
    assert_eq!(processor.stats().dropped, 1);
}

#[test]
fn an_exporter_that_panics_fails_its_batch_and_the_next_batches_still_go() {
    let exporter = TestExporter::new(Mode::Panic);
    let processor = BatchProcessor::new("test", exporter.clone(), BatchConfig::default()).unwrap();
    processor.on_end(&simple("s"));
    let error = processor.force_flush(Duration::from_secs(10)).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("the exporter panicked: the exporter broke"),
        "{error}"
    );
    *exporter.mode.lock().unwrap() = Mode::Accept;
    processor.on_end(&simple("s"));
    processor.shutdown(Duration::from_secs(10)).unwrap();
    assert_eq!(processor.stats().exported, 1);
    assert_eq!(processor.failed(), 1);
}
