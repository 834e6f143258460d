//! Span files made for the tests, written with `opentelemetry-proto`'s own types and serde
//! encoding (so the reader is checked against the reference encoder), and `filament spans` run
//! on them as from its command line.

use clap::Parser;
use filament_spans::cli::{SpansArgs, run_to};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::Event;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, TracesData};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// A span to write.
#[derive(Debug, Clone)]
pub(crate) struct S {
    pub(crate) trace: u128,
    pub(crate) id: u64,
    pub(crate) parent: u64,
    pub(crate) name: &'static str,
    /// OTLP kind number.
    pub(crate) kind: i32,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) error: Option<&'static str>,
}

impl S {
    pub(crate) fn new(
        trace: u128,
        id: u64,
        parent: u64,
        name: &'static str,
        kind: i32,
        start: u64,
        end: u64,
    ) -> S {
        S {
            trace,
            id,
            parent,
            name,
            kind,
            start,
            end,
            error: None,
        }
    }

    pub(crate) fn failed(mut self, message: &'static str) -> S {
        self.error = Some(message);
        self
    }
}

fn text(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// One OTLP/JSON line holding `span`, made by process `pid` of `role` in `job`.
pub(crate) fn line(span: &S, pid: u32, role: &str, job: &str) -> String {
    let data = TracesData {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    text("filament.job_id", job),
                    text("filament.role", role),
                    int("process.pid", i64::from(pid)),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "filament".to_owned(),
                    ..InstrumentationScope::default()
                }),
                spans: vec![Span {
                    trace_id: span.trace.to_be_bytes().to_vec(),
                    span_id: span.id.to_be_bytes().to_vec(),
                    parent_span_id: if span.parent == 0 {
                        Vec::new()
                    } else {
                        span.parent.to_be_bytes().to_vec()
                    },
                    name: span.name.to_owned(),
                    kind: span.kind,
                    start_time_unix_nano: span.start,
                    end_time_unix_nano: span.end,
                    attributes: vec![
                        text("filament.function", span.name),
                        int("n", span.id as i64),
                    ],
                    events: vec![Event {
                        time_unix_nano: span.start + 1,
                        name: "started".to_owned(),
                        attributes: vec![text("why", "a test")],
                        ..Event::default()
                    }],
                    status: span.error.map(|message| Status {
                        code: 2,
                        message: message.to_owned(),
                    }),
                    ..Span::default()
                }],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    serde_json::to_string(&data).expect("OTLP/JSON encodes")
}

/// Writes `<dir>/<pid>.json` with the spans, one line each.
pub(crate) fn write_file(dir: &Path, pid: u32, role: &str, job: &str, spans: &[S]) -> PathBuf {
    let path = dir.join(format!("{pid}.json"));
    let text: String = spans
        .iter()
        .map(|s| line(s, pid, role, job) + "\n")
        .collect();
    std::fs::write(&path, text).expect("the test can write its span file");
    path
}

#[derive(Debug, Parser)]
struct Command {
    #[command(flatten)]
    spans: SpansArgs,
}

/// Runs `filament spans ARGS…` (`ARGS` as on the command line, without `filament spans`): its
/// standard output and exit code.
pub(crate) fn spans(args: &[&str]) -> (String, ExitCode) {
    let command =
        Command::try_parse_from(std::iter::once("filament-spans").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("filament spans {args:?}: {e}"));
    let mut out = Vec::new();
    let code = run_to(command.spans, &mut out, false);
    (String::from_utf8(out).expect("output is UTF-8"), code)
}

/// The fixture folder `name` of this crate.
pub(crate) fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}
