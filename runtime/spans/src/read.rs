//! Reading span files: OTLP/JSON lines (one `TracesData` per line, as the local-file plugin and the
//! OpenTelemetry file exporters write them), one reader per file across the cores.
//!
//! A line is parsed into borrowed views of the OTLP/JSON fields the views need (ids, name, kind,
//! times, status), the rest kept as the JSON text it was (attributes, events, links) and only when
//! asked; a line's resource is parsed once per distinct resource text, since every line of a
//! process repeats it, and a line that repeats the resource and scope of the line before has only
//! its spans array parsed (`FileReader::parse_line` says why that is the same). `tests/spans/read.rs` checks this
//! reader against `opentelemetry-proto`'s decoder.

use crate::lines::Lines;
use crate::model::{Details, Kind, Origin, Process, Span, SpanId, Status, TraceId, parse_hex};
use crate::problem::{Problem, ProblemKind};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How to read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Keep each span's attributes, events and links (the HTML page shows them; trees and
    /// summaries do not need them).
    pub details: bool,
    /// Show a progress bar on standard error when it is a terminal.
    pub progress: bool,
    /// Reader threads; 0 means one per core.
    pub threads: usize,
}

/// What was read from a set of files.
#[derive(Debug, Default)]
pub struct SpanSet {
    /// The spans, file by file (in the order of [`SpanSet::files`]) and line by line.
    pub spans: Vec<Span>,
    /// Problems met, file by file.
    pub problems: Vec<Problem>,
    /// The files read.
    pub files: Vec<PathBuf>,
    /// Lines read (blank ones included).
    pub lines: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// The span files named by `inputs`: a file stands for itself; a folder for every regular file
/// in it (not its subfolders), sorted by name. A missing input, and a folder with no file, are
/// problems.
pub fn span_files(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<Problem>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for input in inputs {
        let at = Arc::new(input.clone());
        let meta = match std::fs::metadata(input) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.push(Problem::at(&at, None, ProblemKind::Missing));
                continue;
            }
            Err(e) => {
                problems.push(Problem::at(
                    &at,
                    None,
                    ProblemKind::Unreadable(e.to_string()),
                ));
                continue;
            }
        };
        if !meta.is_dir() {
            files.push(input.clone());
            continue;
        }
        let entries = match std::fs::read_dir(input) {
            Ok(entries) => entries,
            Err(e) => {
                problems.push(Problem::at(
                    &at,
                    None,
                    ProblemKind::Unreadable(e.to_string()),
                ));
                continue;
            }
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        if found.is_empty() {
            problems.push(Problem::at(&at, None, ProblemKind::EmptyFolder));
        }
        found.sort();
        files.append(&mut found);
    }
    // A file named twice (a folder and a file in it) is read once: its spans are not doubled.
    let mut seen = HashSet::new();
    files.retain(|f| seen.insert(std::fs::canonicalize(f).unwrap_or_else(|_| f.clone())));
    (files, problems)
}

/// Reads every span of the files and folders in `inputs` (see [`span_files`]).
pub fn read(inputs: &[PathBuf], options: ReadOptions) -> SpanSet {
    let (files, mut problems) = span_files(inputs);
    let mut set = read_files(&files, options);
    problems.append(&mut set.problems);
    set.problems = problems;
    set
}

/// What one file gave.
#[derive(Default)]
struct FileRead {
    spans: Vec<Span>,
    problems: Vec<Problem>,
    lines: u64,
    bytes: u64,
}

/// Reads the given files, one reader thread per file at a time, as many threads as cores.
pub fn read_files(files: &[PathBuf], options: ReadOptions) -> SpanSet {
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .collect();
    // Biggest first, so that the last file to start is a small one.
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    let threads = match options.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .clamp(1, files.len().max(1));
    let progress = progress_bar(options.progress, sizes.iter().sum());
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<FileRead>> = (0..files.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut reader = FileReader::new(options.details, &progress);
                    let mut done = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&index) = order.get(n) else { break };
                        done.push((index, reader.read_file(&files[index])));
                    }
                    done
                })
            })
            .collect();
        for worker in workers {
            // A reader never panics on input; should it panic anyway, say so rather than hide it.
            for (index, read) in worker.join().expect("a span file reader panicked") {
                results[index] = Some(read);
            }
        }
    });
    progress.finish_and_clear();
    let mut set = SpanSet {
        files: files.to_vec(),
        ..SpanSet::default()
    };
    set.spans
        .reserve(results.iter().flatten().map(|r| r.spans.len()).sum());
    for read in results.into_iter().flatten() {
        set.spans.extend(read.spans);
        set.problems.extend(read.problems);
        set.lines += read.lines;
        set.bytes += read.bytes;
    }
    set
}

/// Below this many bytes a read is over before a bar would say anything.
const PROGRESS_FROM_BYTES: u64 = 32 << 20;

fn progress_bar(wanted: bool, total: u64) -> ProgressBar {
    if !wanted || total < PROGRESS_FROM_BYTES || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "reading spans {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// After this many lines a reader guesses how many spans its file holds.
const SIZE_FROM_LINES: u64 = 256;

/// One reader thread's state: the resources and names it has seen, shared by its spans.
struct FileReader<'p> {
    details: bool,
    progress: &'p ProgressBar,
    names: HashSet<Arc<str>>,
}

impl<'p> FileReader<'p> {
    fn new(details: bool, progress: &'p ProgressBar) -> FileReader<'p> {
        FileReader {
            details,
            progress,
            names: HashSet::new(),
        }
    }

    fn read_file(&mut self, path: &Path) -> FileRead {
        let path = Arc::new(path.to_path_buf());
        let mut out = FileRead::default();
        let mut lines = match Lines::open(&path) {
            Ok(lines) => lines,
            Err(problem) => {
                out.problems.push(problem);
                return out;
            }
        };
        let size = std::fs::metadata(path.as_path()).map_or(0, |m| m.len());
        let mut processes = Processes::new(&path);
        let mut reported = 0;
        while let Some(line) = lines.next_line() {
            match line {
                Err(problem) => out.problems.push(problem),
                Ok(line) => {
                    out.lines += 1;
                    if line.bytes.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let origin = Origin {
                        file: Arc::clone(&path),
                        line: line.number,
                    };
                    if let Err(cause) =
                        self.parse_line(line.bytes, &origin, &mut processes, &mut out.spans)
                    {
                        let kind = if line.unterminated {
                            ProblemKind::Truncated { cause }
                        } else {
                            ProblemKind::NotOtlp { cause }
                        };
                        out.problems
                            .push(Problem::at(&path, Some(line.number), kind));
                    }
                }
            }
            let offset = lines.offset();
            if out.lines == SIZE_FROM_LINES && offset > 0 {
                // Room for the spans the rest of the file likely holds: no regrowth, no copies.
                let expected = out.spans.len() as f64 * size as f64 / offset as f64 * 1.05;
                out.spans
                    .reserve((expected as usize).saturating_sub(out.spans.len()));
            }
            if offset - reported >= 1 << 20 {
                self.progress.inc(offset - reported);
                reported = offset;
            }
        }
        out.bytes = lines.offset();
        self.progress.inc(out.bytes - reported);
        out
    }

    /// Parses one line and appends its spans; on error appends nothing.
    ///
    /// Every line of a process repeats its resource and scope, the larger part of the line. So
    /// a line that has one resource and one scope leaves what surrounds its `spans` array (the
    /// bytes before and after it) in `processes`; a next line with the same bytes around its array
    /// only has its array parsed. Replacing one JSON value with another at the same place leaves
    /// the rest of the document as it was, so this reads exactly what a whole parse would.
    fn parse_line(
        &mut self,
        bytes: &[u8],
        origin: &Origin,
        processes: &mut Processes,
        out: &mut Vec<Span>,
    ) -> Result<(), String> {
        if let Some(frame) = &processes.frame
            && bytes.len() >= frame.head.len() + frame.tail.len()
            && bytes.starts_with(&frame.head)
            && bytes.ends_with(&frame.tail)
        {
            let array = &bytes[frame.head.len()..bytes.len() - frame.tail.len()];
            // One UTF-8 check of the whole array is cheaper than one per string.
            if let Ok(array) = std::str::from_utf8(array)
                && let Ok(spans) = serde_json::from_str::<Vec<SpanIn<'_>>>(array)
            {
                let (process, scope) = (Arc::clone(&frame.process), Arc::clone(&frame.scope));
                let start = out.len();
                let result = self.add_spans(spans, &process, &scope, origin, out);
                if result.is_err() {
                    out.truncate(start);
                }
                return result;
            }
        }
        let start = out.len();
        let result = self.parse_whole(bytes, origin, processes, out);
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    fn parse_whole(
        &mut self,
        bytes: &[u8],
        origin: &Origin,
        processes: &mut Processes,
        out: &mut Vec<Span>,
    ) -> Result<(), String> {
        let line: LineIn<'_> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let Some(resource_spans) = line.resource_spans else {
            return Err("no \"resourceSpans\" field".to_owned());
        };
        let single = resource_spans.len() == 1 && resource_spans[0].scope_spans.len() == 1;
        for rs in resource_spans {
            let process = processes.get(rs.resource.map_or("{}", RawValue::get))?;
            for ss in rs.scope_spans {
                let scope: Arc<str> = self.intern(ss.scope.as_ref().map_or("", |s| &s.name));
                let Some(raw) = ss.spans else { continue };
                let spans: Vec<SpanIn<'_>> = serde_json::from_str(raw.get()).map_err(|e| {
                    match serde_json::from_slice::<LineChecked<'_>>(bytes) {
                        // The same error, placed in the line rather than in its array.
                        Err(whole) => whole.to_string(),
                        Ok(_) => e.to_string(),
                    }
                })?;
                self.add_spans(spans, &process, &scope, origin, out)?;
                if single {
                    // Where the array is in the line: the line borrows it.
                    let at = raw.get().as_ptr() as usize - bytes.as_ptr() as usize;
                    processes.frame = Some(Frame {
                        head: bytes[..at].to_vec(),
                        tail: bytes[at + raw.get().len()..].to_vec(),
                        process: Arc::clone(&process),
                        scope,
                    });
                }
            }
        }
        Ok(())
    }

    fn add_spans(
        &mut self,
        spans: Vec<SpanIn<'_>>,
        process: &Arc<Process>,
        scope: &Arc<str>,
        origin: &Origin,
        out: &mut Vec<Span>,
    ) -> Result<(), String> {
        for span in spans {
            let trace_id = parse_hex::<16>(&span.trace_id)
                .ok_or_else(|| format!("traceId {:?} is not 32 hex digits", span.trace_id))?;
            let span_id = parse_hex::<8>(&span.span_id)
                .ok_or_else(|| format!("spanId {:?} is not 16 hex digits", span.span_id))?;
            let parent_id = if span.parent_span_id.is_empty() {
                [0; 8]
            } else {
                parse_hex::<8>(&span.parent_span_id).ok_or_else(|| {
                    format!(
                        "parentSpanId {:?} is not 16 hex digits",
                        span.parent_span_id
                    )
                })?
            };
            let status = match span.status {
                Some(StatusIn { code: 2, message }) => Status::Error(message.into()),
                Some(StatusIn { code: 1, .. }) => Status::Ok,
                _ => Status::Unset,
            };
            let details = self.details.then(|| {
                let raw = |v: Option<&RawValue>| Box::<str>::from(v.map_or("", RawValue::get));
                Box::new(Details {
                    attributes_json: raw(span.attributes),
                    events_json: raw(span.events),
                    links_json: raw(span.links),
                    scope: Arc::clone(scope),
                })
            });
            out.push(Span {
                trace_id: TraceId(trace_id),
                span_id: SpanId(span_id),
                parent_id: SpanId(parent_id),
                name: self.intern(&span.name),
                kind: Kind::from_otlp(span.kind),
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
                status,
                process: Arc::clone(process),
                origin: origin.clone(),
                details,
            });
        }
        Ok(())
    }

    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(name) = self.names.get(name) {
            return Arc::clone(name);
        }
        let name: Arc<str> = Arc::from(name);
        self.names.insert(Arc::clone(&name));
        name
    }
}

/// The processes of one file, by the text of their resource.
struct Processes {
    file: Arc<PathBuf>,
    last: Option<(Box<str>, Arc<Process>)>,
    seen: HashMap<Box<str>, Arc<Process>>,
    /// What surrounds the `spans` array of the last line with one resource and one scope.
    frame: Option<Frame>,
}

/// The bytes of a line before and after its `spans` array, and the process and scope they hold.
struct Frame {
    head: Vec<u8>,
    tail: Vec<u8>,
    process: Arc<Process>,
    scope: Arc<str>,
}

impl Processes {
    fn new(file: &Arc<PathBuf>) -> Processes {
        Processes {
            file: Arc::clone(file),
            last: None,
            seen: HashMap::new(),
            frame: None,
        }
    }

    fn get(&mut self, resource_json: &str) -> Result<Arc<Process>, String> {
        if let Some((text, process)) = &self.last
            && **text == *resource_json
        {
            return Ok(Arc::clone(process));
        }
        let process = match self.seen.get(resource_json) {
            Some(process) => Arc::clone(process),
            None => {
                let process = Arc::new(self.parse(resource_json)?);
                self.seen.insert(resource_json.into(), Arc::clone(&process));
                process
            }
        };
        self.last = Some((resource_json.into(), Arc::clone(&process)));
        Ok(process)
    }

    fn parse(&self, resource_json: &str) -> Result<Process, String> {
        let resource: Resource = serde_json::from_str(resource_json)
            .map_err(|e| format!("its resource is not OTLP/JSON: {e}"))?;
        let text = |key: &str| {
            resource
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    AnyValue::IntValue(i) => Some(i.to_string()),
                    _ => None,
                })
        };
        let pid = text("process.pid")
            .and_then(|p| p.parse().ok())
            .or_else(|| {
                self.file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse().ok())
            })
            .unwrap_or(0);
        Ok(Process {
            pid,
            role: text("filament.role")
                .or_else(|| text("service.name"))
                .unwrap_or_else(|| "unknown".to_owned()),
            job: text("filament.job_id").unwrap_or_default(),
            resource_json: resource_json.into(),
            file: Arc::clone(&self.file),
        })
    }
}

// Borrowed views of OTLP/JSON (https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding):
// camelCase names, ids in hex, 64-bit integers as decimal strings (numbers accepted too), enums as
// numbers, unknown fields ignored.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LineIn<'a> {
    #[serde(borrow)]
    resource_spans: Option<Vec<ResourceSpansIn<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpansIn<'a> {
    #[serde(borrow, default)]
    resource: Option<&'a RawValue>,
    #[serde(borrow, default)]
    scope_spans: Vec<ScopeSpansIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScopeSpansIn<'a> {
    #[serde(borrow, default)]
    scope: Option<ScopeIn<'a>>,
    /// Parsed apart, so that its place in the line is known.
    #[serde(borrow, default)]
    spans: Option<&'a RawValue>,
}

/// A whole line parsed at once, for an error message that points into the line.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LineChecked<'a> {
    #[serde(borrow)]
    #[allow(dead_code)]
    resource_spans: Option<Vec<ResourceSpansChecked<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ResourceSpansChecked<'a> {
    #[serde(borrow, default)]
    #[allow(dead_code)]
    scope_spans: Vec<ScopeSpansChecked<'a>>,
}

#[derive(Deserialize)]
struct ScopeSpansChecked<'a> {
    #[serde(borrow, default)]
    #[allow(dead_code)]
    spans: Vec<SpanIn<'a>>,
}

#[derive(Deserialize)]
struct ScopeIn<'a> {
    #[serde(borrow, default)]
    name: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpanIn<'a> {
    #[serde(borrow)]
    trace_id: Cow<'a, str>,
    #[serde(borrow)]
    span_id: Cow<'a, str>,
    #[serde(borrow, default)]
    parent_span_id: Cow<'a, str>,
    #[serde(borrow, default)]
    name: Cow<'a, str>,
    #[serde(default)]
    kind: i32,
    #[serde(default, deserialize_with = "u64_or_string")]
    start_time_unix_nano: u64,
    #[serde(default, deserialize_with = "u64_or_string")]
    end_time_unix_nano: u64,
    #[serde(borrow, default)]
    attributes: Option<&'a RawValue>,
    #[serde(borrow, default)]
    events: Option<&'a RawValue>,
    #[serde(borrow, default)]
    links: Option<&'a RawValue>,
    #[serde(borrow, default)]
    status: Option<StatusIn<'a>>,
}

#[derive(Deserialize)]
struct StatusIn<'a> {
    #[serde(default)]
    code: i32,
    #[serde(borrow, default)]
    message: Cow<'a, str>,
}

fn u64_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("nanoseconds, as a decimal string or a number")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<u64, E> {
            v.parse()
                .map_err(|_| E::custom(format!("{v:?} is not a number of nanoseconds")))
        }
    }
    d.deserialize_any(Visitor)
}
