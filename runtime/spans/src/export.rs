//! Replaying span files to an OTLP/HTTP endpoint (a collector, Jaeger): the files are read line by
//! line with `opentelemetry-proto`'s decoder, consecutive spans of one resource and scope merged,
//! and sent in batches as OTLP protobuf (`POST <endpoint>/v1/traces`). Each span read goes into
//! exactly one batch; a batch is retried when the endpoint says to retry (429, 502, 503, 504) or
//! cannot be reached, then reported with the spans it held, never dropped silently.

use crate::lines::Lines;
use crate::problem::{Problem, ProblemKind};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, TracesData};
use prost::Message;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The OTLP/HTTP path for traces, added to an endpoint given without a path.
pub const TRACES_PATH: &str = "/v1/traces";
/// After this many batches in a row have failed, the export stops: the endpoint is down.
pub const FAILURES_IN_A_ROW: usize = 3;

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// `http(s)://host:port` (then `/v1/traces` is added) or the full URL of the traces endpoint.
    pub endpoint: String,
    /// Spans per batch.
    pub batch_spans: usize,
    /// Attempts after the first, for a batch the endpoint asked to retry or could not take.
    pub retries: u32,
    /// The wait before the first retry; it doubles at each retry (a `Retry-After` wins, up to 30 s).
    pub backoff: Duration,
    /// The time one request may take.
    pub timeout: Duration,
    /// Show progress on standard error when it is a terminal.
    pub progress: bool,
}

impl Default for ExportOptions {
    fn default() -> ExportOptions {
        ExportOptions {
            endpoint: "http://localhost:4318".to_owned(),
            batch_spans: 512,
            retries: 4,
            backoff: Duration::from_millis(200),
            timeout: Duration::from_secs(10),
            progress: false,
        }
    }
}

/// A batch the endpoint did not take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedBatch {
    /// 1-based, in sending order.
    pub number: u64,
    /// Spans in it.
    pub spans: u64,
    /// Where its first and last spans were read.
    pub from: String,
    /// Where its last span was read.
    pub to: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub cause: String,
}

impl std::fmt::Display for FailedBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch {} ({} spans, {} to {}) not sent after {} attempt{}: {}",
            self.number,
            self.spans,
            self.from,
            self.to,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.cause
        )
    }
}

/// What an export did.
#[derive(Debug, Default)]
pub struct ExportReport {
    /// The URL the batches went to.
    pub url: String,
    /// Span files read.
    pub files: usize,
    /// Spans read.
    pub spans_read: u64,
    /// Spans the endpoint took.
    pub spans_sent: u64,
    /// Batches the endpoint took.
    pub batches_sent: u64,
    /// Spans the endpoint took but said it rejected (OTLP partial success).
    pub spans_rejected: u64,
    /// Batches it did not take.
    pub failed: Vec<FailedBatch>,
    /// Whether the export stopped early after [`FAILURES_IN_A_ROW`] failed batches.
    pub gave_up: bool,
    /// Problems with the input (those lines were skipped).
    pub problems: Vec<Problem>,
}

impl ExportReport {
    /// Spans read but not taken by the endpoint.
    pub fn spans_not_sent(&self) -> u64 {
        self.failed.iter().map(|b| b.spans).sum()
    }
}

/// The URL batches go to: `endpoint` itself when it has a path, else `endpoint` + `/v1/traces`.
pub fn traces_url(endpoint: &str) -> Result<String, String> {
    let endpoint = endpoint.trim();
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return Err(format!(
            "endpoint {endpoint:?} is not a URL: give http://host:port (as http://localhost:4318)"
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "endpoint {endpoint:?}: OTLP/HTTP needs http:// or https://, not {scheme}://"
        ));
    }
    match rest.find('/') {
        Some(slash) if !rest[slash..].trim_end_matches('/').is_empty() => Ok(endpoint.to_owned()),
        _ => Ok(format!("{}{TRACES_PATH}", endpoint.trim_end_matches('/'))),
    }
}

/// Sends every span of the files and folders in `inputs` to the endpoint.
pub fn export(inputs: &[PathBuf], options: &ExportOptions) -> Result<ExportReport, String> {
    let url = traces_url(&options.endpoint)?;
    let (files, problems) = crate::read::span_files(inputs);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(options.timeout))
        .build()
        .into();
    let total = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    // A few MB go out before a bar would say anything.
    let progress = if options.progress && total > 4 << 20 && std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "exporting {wide_bar} {binary_bytes}/{binary_total_bytes} read, {msg}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut exporter = Exporter {
        agent,
        options,
        report: ExportReport {
            url,
            files: files.len(),
            problems,
            ..ExportReport::default()
        },
        batch: Batch::default(),
        batches: 0,
        failures_in_a_row: 0,
        progress: &progress,
    };
    let mut done_bytes = 0;
    'files: for file in &files {
        let path = Arc::new(file.clone());
        let mut lines = match Lines::open(&path) {
            Ok(lines) => lines,
            Err(problem) => {
                exporter.report.problems.push(problem);
                continue;
            }
        };
        while let Some(line) = lines.next_line() {
            let line = match line {
                Ok(line) => line,
                Err(problem) => {
                    exporter.report.problems.push(problem);
                    continue;
                }
            };
            if line.bytes.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let at = format!("{}:{}", path.display(), line.number);
            match decode(line.bytes) {
                Ok(data) => {
                    exporter.add(data.resource_spans, &at);
                }
                Err(cause) => {
                    let kind = if line.unterminated {
                        ProblemKind::Truncated { cause }
                    } else {
                        ProblemKind::NotOtlp { cause }
                    };
                    exporter
                        .report
                        .problems
                        .push(Problem::at(&path, Some(line.number), kind));
                }
            }
            if exporter.batch.spans >= options.batch_spans as u64 {
                exporter.send();
            }
            if exporter.report.gave_up {
                break 'files;
            }
            progress.set_position(done_bytes + lines.offset());
        }
        done_bytes += lines.offset();
    }
    if !exporter.report.gave_up {
        exporter.send();
    }
    progress.finish_and_clear();
    Ok(exporter.report)
}

/// One line, checked as the reader checks it: OTLP/JSON with whole ids.
fn decode(bytes: &[u8]) -> Result<TracesData, String> {
    let data: TracesData = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if data.resource_spans.is_empty() {
        return Err("no \"resourceSpans\"".to_owned());
    }
    for span in data
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
    {
        if span.trace_id.len() != 16 {
            return Err("a traceId is not 32 hex digits".to_owned());
        }
        if span.span_id.len() != 8 {
            return Err("a spanId is not 16 hex digits".to_owned());
        }
    }
    Ok(data)
}

#[derive(Default)]
struct Batch {
    resource_spans: Vec<ResourceSpans>,
    spans: u64,
    from: String,
    to: String,
}

struct Exporter<'a> {
    agent: ureq::Agent,
    options: &'a ExportOptions,
    report: ExportReport,
    batch: Batch,
    batches: u64,
    failures_in_a_row: usize,
    progress: &'a ProgressBar,
}

impl Exporter<'_> {
    /// Adds a line's spans to the batch, merged into the last resource and scope when they are
    /// the same (the local-file plugin repeats them on every line).
    fn add(&mut self, resource_spans: Vec<ResourceSpans>, at: &str) {
        let batch = &mut self.batch;
        for rs in resource_spans {
            let spans: usize = rs.scope_spans.iter().map(|ss| ss.spans.len()).sum();
            if spans == 0 {
                continue;
            }
            if batch.spans == 0 {
                batch.from = at.to_owned();
            }
            batch.to = at.to_owned();
            batch.spans += spans as u64;
            self.report.spans_read += spans as u64;
            match batch.resource_spans.last_mut() {
                Some(last) if last.resource == rs.resource && last.schema_url == rs.schema_url => {
                    for ss in rs.scope_spans {
                        match last.scope_spans.last_mut() {
                            Some(l) if l.scope == ss.scope && l.schema_url == ss.schema_url => {
                                l.spans.extend(ss.spans)
                            }
                            _ => last.scope_spans.push(ss),
                        }
                    }
                }
                _ => batch.resource_spans.push(rs),
            }
        }
    }

    fn send(&mut self) {
        let batch = std::mem::take(&mut self.batch);
        if batch.spans == 0 {
            return;
        }
        self.batches += 1;
        let body = ExportTraceServiceRequest {
            resource_spans: batch.resource_spans,
        }
        .encode_to_vec();
        let mut attempts = 0;
        let mut wait = self.options.backoff;
        let cause = loop {
            attempts += 1;
            let (retry, cause, after) = match self.post(&body) {
                Ok(rejected) => {
                    self.report.spans_sent += batch.spans;
                    self.report.spans_rejected += rejected;
                    self.report.batches_sent += 1;
                    self.failures_in_a_row = 0;
                    self.progress
                        .set_message(format!("{} spans sent", self.report.spans_sent));
                    return;
                }
                Err(failure) => failure,
            };
            if !retry || attempts > self.options.retries {
                break cause;
            }
            std::thread::sleep(after.unwrap_or(wait));
            wait = wait.saturating_mul(2);
        };
        self.failures_in_a_row += 1;
        let failed = FailedBatch {
            number: self.batches,
            spans: batch.spans,
            from: batch.from,
            to: batch.to,
            attempts,
            cause,
        };
        self.progress
            .suspend(|| eprintln!("filament spans export: {failed}"));
        self.report.failed.push(failed);
        if self.failures_in_a_row >= FAILURES_IN_A_ROW {
            self.report.gave_up = true;
        }
    }

    /// One POST: the spans the endpoint rejected (partial success), or (retry?, cause,
    /// Retry-After).
    #[allow(clippy::type_complexity)]
    fn post(&self, body: &[u8]) -> Result<u64, (bool, String, Option<Duration>)> {
        let response = self
            .agent
            .post(&self.report.url)
            .header("Content-Type", "application/x-protobuf")
            .send(body)
            .map_err(|e| (true, format!("{}: {e}", self.report.url), None))?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|s| Duration::from_secs(s.min(30)));
        let mut body = response.into_body();
        let bytes = body
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .unwrap_or_default();
        if (200..300).contains(&status) {
            let rejected = ExportTraceServiceResponse::decode(bytes.as_slice())
                .ok()
                .and_then(|r| r.partial_success)
                .map_or(0, |p| p.rejected_spans.max(0) as u64);
            return Ok(rejected);
        }
        let text = String::from_utf8_lossy(&bytes);
        let text = text.trim();
        let cause = if text.is_empty() {
            format!("{} answered HTTP {status}", self.report.url)
        } else {
            let text: String = text.chars().take(300).collect();
            format!("{} answered HTTP {status}: {text}", self.report.url)
        };
        Err((matches!(status, 429 | 502 | 503 | 504), cause, retry_after))
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn an_endpoint_without_a_path_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://localhost:4318").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://localhost:4318/").unwrap(),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://c.example:443/otlp/v1/traces").unwrap(),
            "https://c.example:443/otlp/v1/traces"
        );
        assert!(
            traces_url("localhost:4318")
                .unwrap_err()
                .contains("not a URL")
        );
        assert!(traces_url("grpc://x:4317").unwrap_err().contains("http://"));
    }
}
