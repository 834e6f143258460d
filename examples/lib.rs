//! What the examples share: finding the span files the local-file hook wrote and printing the
//! span trees in them.

#![warn(missing_docs)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The hook the examples use when `FILAMENT_TRACING_STARTUP_HOOK` is unset.
pub const DEFAULT_HOOK: &str = "filament_local_file:setup_tracing";

/// The hook named by `FILAMENT_TRACING_STARTUP_HOOK`, or the local-file hook.
pub fn hook_from_env() -> String {
    std::env::var(filament::tracing::TRACING_STARTUP_HOOK_ENV)
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_HOOK.to_owned())
}

/// The directory the local-file hook writes to: `FILAMENT_SPANS_DIR`, else `/tmp/spans`.
pub fn spans_dir() -> PathBuf {
    std::env::var_os("FILAMENT_SPANS_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/spans"))
}

/// One span as read from an OTLP/JSON line.
#[derive(Debug, Clone)]
pub struct SpanLine {
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// Parent span id, hex; empty for a root.
    pub parent_span_id: String,
    /// Name.
    pub name: String,
    /// OTLP span kind number.
    pub kind: i64,
    /// Duration in microseconds.
    pub micros: u64,
    /// The pid of the process whose file held it.
    pub pid: String,
    /// The `filament.job_id` of its process's resource (empty outside a cluster).
    pub job: String,
}

/// Reads the spans of the given span files.
pub fn read_spans(files: &[PathBuf]) -> Vec<SpanLine> {
    let mut spans = Vec::new();
    for file in files {
        let pid = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines() {
            let Ok(data) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            for resource_spans in data["resourceSpans"].as_array().into_iter().flatten() {
                let job = resource_spans["resource"]["attributes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|kv| kv["key"] == "filament.job_id")
                    .and_then(|kv| kv["value"]["stringValue"].as_str())
                    .unwrap_or_default()
                    .to_owned();
                let scopes = resource_spans["scopeSpans"]
                    .as_array()
                    .into_iter()
                    .flatten();
                for span in scopes.flat_map(|ss| ss["spans"].as_array().into_iter().flatten()) {
                    let time = |key: &str| {
                        span[key]
                            .as_str()
                            .and_then(|s| s.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                    spans.push(SpanLine {
                        trace_id: text("traceId"),
                        span_id: text("spanId"),
                        parent_span_id: text("parentSpanId"),
                        name: text("name"),
                        kind: span["kind"].as_i64().unwrap_or(0),
                        micros: time("endTimeUnixNano").saturating_sub(time("startTimeUnixNano"))
                            / 1000,
                        pid: pid.clone(),
                        job: job.clone(),
                    });
                }
            }
        }
    }
    spans
}

fn kind_name(kind: i64) -> &'static str {
    match kind {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

/// Prints the spans as trees, one per trace, children under their parents.
pub fn print_trees(spans: &[SpanLine]) {
    let mut by_trace: BTreeMap<&str, Vec<&SpanLine>> = BTreeMap::new();
    for span in spans {
        by_trace.entry(&span.trace_id).or_default().push(span);
    }
    for (trace, spans) in by_trace {
        println!("trace {trace}");
        let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        let roots = spans
            .iter()
            .filter(|s| s.parent_span_id.is_empty() || !ids.contains(&s.parent_span_id.as_str()));
        for root in roots {
            print_subtree(root, &spans, 1);
        }
    }
}

fn print_subtree(span: &SpanLine, all: &[&SpanLine], depth: usize) {
    println!(
        "{}└─ {} ({}, {} µs, pid {})",
        "   ".repeat(depth - 1),
        span.name,
        kind_name(span.kind),
        span.micros,
        span.pid
    );
    for child in all.iter().filter(|s| s.parent_span_id == span.span_id) {
        print_subtree(child, all, depth + 1);
    }
}

/// Starts a cluster with the hook from the environment (the local-file hook by default), or
/// attaches to the standing cluster `FILAMENT_ADDRESS` names (whose hook it then uses); prints the
/// error and exits if that fails. Returns the runtime and the hooks it runs.
pub fn init_or_exit() -> (filament::Runtime, String) {
    let config = filament::Config::default();
    let config = if config.address.is_some() {
        config
    } else {
        config.tracing_startup_hook(hook_from_env())
    };
    match filament::init(config) {
        Ok(runtime) => {
            let hooks: Vec<String> = runtime
                .tracing()
                .map(|t| t.hooks().iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            let hook = if hooks.is_empty() {
                "none".to_owned()
            } else {
                hooks.join(",")
            };
            (runtime, hook)
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    }
}

/// Stops the cluster (which flushes every process's spans) and, with the local-file hook, prints
/// the span files of this job and its span trees.
pub fn finish(runtime: filament::Runtime, hook: &str) {
    let job = runtime.job_id().to_owned();
    drop(runtime);
    if !hook.contains("filament_local_file") {
        return;
    }
    let dir = spans_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .collect();
    files.sort();
    let ours: Vec<SpanLine> = read_spans(&files)
        .into_iter()
        .filter(|s| s.job == job)
        .collect();
    let mut pids: Vec<&str> = ours.iter().map(|s| s.pid.as_str()).collect();
    pids.sort();
    pids.dedup();
    println!("span files of this run in {}:", dir.display());
    for pid in pids {
        println!("  {}", dir.join(format!("{pid}.json")).display());
    }
    print_trees(&ours);
}
