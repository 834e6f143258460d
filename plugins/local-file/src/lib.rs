//! Filament's local-file tracing hook: every process writes its spans to `<dir>/<pid>.json`.
//!
//! Hook string: `filament_local_file:setup_tracing` (or the library's path). `<dir>` is the
//! configuration value `FILAMENT_SPANS_DIR` (given at startup, else the environment), by default
//! `/tmp/spans`; it is created if missing.
//!
//! Each line is one OTLP/JSON `TracesData` object, exactly as the OpenTelemetry file exporter
//! specification defines it: lower-case hex ids, camelCase keys, 64-bit integers as strings, enums
//! as integers. Fields holding their default value (empty strings and lists, zero counts, an unset
//! status) are left out, as proto3's JSON mapping allows: a task span's line is about half the
//! size. Any OTLP/JSON reader (the `opentelemetry-proto` crate, the collector's `otlpjsonfile`
//! receiver) parses every line, and every line carries its resource.
//!
//! Two modes, chosen by the configuration value `FILAMENT_LOCAL_FILE_MODE`:
//!
//! - `simple` (the default): each span is written when it ends, one span per line, with one
//!   appending `write` of the whole line: a reader sees it at once, and a crash never leaves half a
//!   line. Nothing is buffered in the process, so nothing is lost when it exits, however it exits.
//! - `batch`: the thread that ends a span encodes it into a queue without waiting for the writer
//!   (only, briefly, for another thread encoding a span or the writer taking the queue)
//!   (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048; a full queue drops the span and counts it); a writer thread
//!   writes many spans per line, under one resource, when a line holds
//!   `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512) spans, when `OTEL_BSP_SCHEDULE_DELAY` (5000 ms) has
//!   passed since its first span, at `force_flush` and at `shutdown`. A process that exits without
//!   shutting down loses what was queued (at most the spans of the last schedule delay); the file
//!   still holds only whole lines, each span at most once.
//!
//! In both modes a failed write drops its spans, counts them, and warns once;
//! a short one (a full disk) is cut back to the last whole line, so the file never holds half a
//! span. A file deleted under the process (its folder removed mid-run) is noticed within a second
//! and made again at its path; the spans written to the deleted file meanwhile are counted as
//! dropped.
//!
//! The file is opened without following links and without blocking, and must be a regular file
//! of this process's user; the folder must be this user's or, if others may write it, sticky (as
//! `/tmp` is). The default folder is made for this user alone (mode 0700); if another user has
//! `/tmp/spans` already, this user's spans go to `/tmp/spans-<uid>`, and the hook says so.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod batch;
mod json;

pub use batch::{
    BatchConfig, BatchFile, DEFAULT_MAX_EXPORT_BATCH_SIZE, DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_SCHEDULE_DELAY, MAX_EXPORT_BATCH_SIZE_KEY, MAX_QUEUE_SIZE_KEY, MODE_KEY,
    SCHEDULE_DELAY_KEY,
};

use filament_plugin_api::{
    KeyValue, LogLevel, ProcessorError, ProcessorStats, SpanKind, SpanProcessor, SpanRecord,
    StatusCode, TracingSetup, Value, export_hook,
};
use opentelemetry_proto::tonic::{
    common::v1 as common, resource::v1 as resource, trace::v1 as trace,
};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The configuration key (and environment variable) naming the spans directory.
pub const SPANS_DIR_KEY: &str = "FILAMENT_SPANS_DIR";

/// The spans directory when `FILAMENT_SPANS_DIR` is unset, as in Ray's default hook.
pub const DEFAULT_SPANS_DIR: &str = "/tmp/spans";

export_hook!(setup_tracing);

/// How often the open file is checked for having been deleted.
const UNLINK_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The hook: opens this process's span file and adds a processor that writes to it.
fn setup_tracing(setup: &mut TracingSetup<'_>) -> Result<(), String> {
    let batch = match setup.config(MODE_KEY).as_deref().map(str::trim) {
        None | Some("" | "simple") => None,
        Some("batch") => Some(BatchConfig::read(|key| setup.config(key))?),
        Some(other) => {
            return Err(format!(
                "{MODE_KEY}={other:?}: unknown mode; use \"simple\" (the default: one line per span as it ends) or \"batch\" (many spans per line, written by a thread of its own)"
            ));
        }
    };
    let given = setup
        .config(SPANS_DIR_KEY)
        .filter(|dir| !dir.trim().is_empty());
    let pid = setup.process().pid;
    let file = match given {
        Some(dir) => SpanFile::create(Path::new(&dir), pid),
        None => {
            let dir = default_dir();
            if dir != Path::new(DEFAULT_SPANS_DIR) {
                setup.log(
                    LogLevel::Warn,
                    &format!(
                        "{DEFAULT_SPANS_DIR} belongs to another user: spans go to {} ({SPANS_DIR_KEY} chooses another folder)",
                        dir.display()
                    ),
                );
            }
            SpanFile::create_private(&dir, pid)
        }
    }
    .map_err(|e| e.to_string())?;
    setup.log(
        LogLevel::Debug,
        &format!("writing spans to {}", file.path().display()),
    );
    match batch {
        None => setup.add_span_processor(file),
        Some(config) => {
            setup.add_span_processor(BatchFile::start(file, config).map_err(|e| {
                format!("cannot start the span writer thread ({MODE_KEY}=batch): {e}")
            })?)
        }
    }
    Ok(())
}

/// The default folder: `/tmp/spans` when it is this user's or does not exist, else
/// `/tmp/spans-<uid>`.
fn default_dir() -> PathBuf {
    let shared = PathBuf::from(DEFAULT_SPANS_DIR);
    match std::fs::symlink_metadata(&shared) {
        Ok(meta) if meta.uid() != user() => {
            PathBuf::from(format!("{DEFAULT_SPANS_DIR}-{}", user()))
        }
        _ => shared,
    }
}

fn user() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Why the span file could not be set up.
#[derive(Debug)]
pub enum SpanFileError {
    /// The directory could not be created.
    CreateDir {
        /// The directory.
        dir: PathBuf,
        /// The cause.
        error: io::Error,
    },
    /// The directory is not safe to write spans into: another user's, or writable by others and
    /// not sticky (anyone could plant a link or a FIFO at the file's name).
    UnsafeDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// The file could not be opened for appending.
    Open {
        /// The file.
        path: PathBuf,
        /// The cause.
        error: io::Error,
    },
}

impl std::fmt::Display for SpanFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpanFileError::CreateDir { dir, error } => write!(
                f,
                "cannot create the spans directory {} ({SPANS_DIR_KEY}): {error}",
                dir.display()
            ),
            SpanFileError::UnsafeDir { dir, reason } => write!(
                f,
                "refusing to write spans into {} ({SPANS_DIR_KEY}): {reason}",
                dir.display()
            ),
            SpanFileError::Open { path, error } => write!(
                f,
                "cannot open the span file {} for writing ({SPANS_DIR_KEY}): {error}",
                path.display()
            ),
        }
    }
}

impl std::error::Error for SpanFileError {}

/// A process's span file: one OTLP/JSON line per span.
#[derive(Debug)]
pub struct SpanFile {
    path: PathBuf,
    /// The encoder and the open file, together: a line is encoded and written under one lock.
    state: Mutex<FileState>,
    exported: AtomicU64,
    dropped: AtomicU64,
    warned: AtomicBool,
    warned_deleted: AtomicBool,
    shut_down: AtomicBool,
    /// Whether this process made the file (and may remove it if it stays empty).
    created: bool,
}

#[derive(Debug)]
struct FileState {
    writer: LineWriter,
    file: File,
    /// When the file was last checked for having been deleted.
    checked: Instant,
    /// Lines written since then: lost, if it was.
    since_check: u64,
}

impl SpanFile {
    /// Creates `dir` if needed and opens `dir/<pid>.json` for appending.
    pub fn create(dir: &Path, pid: u32) -> Result<Self, SpanFileError> {
        Self::create_in(dir, pid, None)
    }

    /// As [`create`](Self::create), but a folder it makes is this user's alone (mode 0700).
    pub fn create_private(dir: &Path, pid: u32) -> Result<Self, SpanFileError> {
        Self::create_in(dir, pid, Some(0o700))
    }

    fn create_in(dir: &Path, pid: u32, mode: Option<u32>) -> Result<Self, SpanFileError> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        if let Some(mode) = mode {
            builder.mode(mode);
        }
        builder
            .create(dir)
            .map_err(|error| SpanFileError::CreateDir {
                dir: dir.to_owned(),
                error,
            })?;
        check_dir(dir)?;
        let path = dir.join(format!("{pid}.json"));
        let created = std::fs::symlink_metadata(&path).is_err();
        let file = open(&path).map_err(|error| SpanFileError::Open {
            path: path.clone(),
            error,
        })?;
        Ok(SpanFile {
            path,
            state: Mutex::new(FileState {
                writer: LineWriter::default(),
                file,
                checked: Instant::now(),
                since_check: 0,
            }),
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            warned: AtomicBool::new(false),
            warned_deleted: AtomicBool::new(false),
            shut_down: AtomicBool::new(false),
            created,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one `TracesData` as one line, with a single `write`.
    pub fn write_traces_data(&self, data: &trace::TracesData) -> io::Result<()> {
        let mut state = self.lock();
        let line = &mut state.writer.buffer;
        line.clear();
        serde_json::to_writer(&mut *line, data).map_err(io::Error::other)?;
        line.push(b'\n');
        self.write_line(&mut state)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FileState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends one span as one line, with a single `write`: what
    /// [`write_traces_data`](Self::write_traces_data) of [`traces_data`] reads back as, less the
    /// default-valued fields; the resource's and the scope's JSON, the same for most spans of a
    /// process, are encoded once and reused.
    pub fn write_span(&self, span: &SpanRecord<'_>) -> io::Result<()> {
        let mut state = self.lock();
        state.writer.encode(span).map_err(io::Error::other)?;
        self.write_line(&mut state)
    }

    /// Appends one span given in OTLP form, with the same encoder as
    /// [`write_span`](Self::write_span): for a host that exports natively, without the ABI.
    pub fn write_otlp_span<R, S>(&self, parts: OtlpSpan<'_, R, S>) -> io::Result<()>
    where
        R: FnOnce() -> resource::Resource,
        S: FnOnce() -> common::InstrumentationScope,
    {
        let mut state = self.lock();
        state.writer.encode_parts(parts).map_err(io::Error::other)?;
        self.write_line(&mut state)
    }

    /// Writes the encoded line whole, or not at all.
    fn write_line(&self, state: &mut FileState) -> io::Result<()> {
        let line = std::mem::take(&mut state.writer.buffer);
        let result = self.write_spans(state, &line, 1);
        state.writer.buffer = line;
        result
    }

    /// Writes a line of `spans` spans whole, or not at all.
    fn write_spans(&self, state: &mut FileState, line: &[u8], spans: u64) -> io::Result<()> {
        if state.checked.elapsed() >= UNLINK_CHECK_INTERVAL {
            self.reopen_if_deleted(state);
        }
        let written = match (&state.file).write(line) {
            Ok(written) => written,
            Err(error) => {
                // A write that failed may still have put bytes down (NFS, FUSE): cut them too.
                self.reopen_if_deleted(state);
                return Err(error);
            }
        };
        if written != line.len() {
            // The disk is full, say: cut the half line away, or the next span would be glued to
            // it. This process alone writes this file, under this lock: its end is this line's.
            let cut = state.file.metadata().and_then(|meta| {
                state
                    .file
                    .set_len(meta.len().saturating_sub(written as u64))
            });
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                match cut {
                    Ok(()) => format!("short write: {written} of {} bytes, cut back", line.len()),
                    Err(error) => format!(
                        "short write: {written} of {} bytes, and cutting it back failed: {error}",
                        line.len()
                    ),
                },
            ));
        }
        state.since_check += spans;
        Ok(())
    }

    /// If the file was deleted (its folder removed, say), makes it again at its path; what was
    /// written to the deleted file since the last check is counted as dropped.
    fn reopen_if_deleted(&self, state: &mut FileState) {
        state.checked = Instant::now();
        let lost = std::mem::take(&mut state.since_check);
        if !state.file.metadata().is_ok_and(|meta| meta.nlink() == 0) {
            return;
        }
        let _ = self
            .exported
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(lost))
            });
        self.dropped.fetch_add(lost, Ordering::Relaxed);
        let reopened = self
            .path
            .parent()
            .map_or(Ok(()), |dir| {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
            })
            .and_then(|()| open(&self.path));
        let outcome = match reopened {
            Ok(file) => {
                state.file = file;
                "made it again".to_owned()
            }
            Err(error) => format!("cannot make it again ({error}); spans are dropped meanwhile"),
        };
        if !self.warned_deleted.swap(true, Ordering::Relaxed) {
            eprintln!(
                "filament_local_file: the span file {} was deleted; {lost} spans written to it since are lost (counted as dropped); {outcome} (warned once)",
                self.path.display()
            );
        }
    }

    /// Counts a line of `spans` spans as written or dropped.
    fn count(&self, result: io::Result<()>, spans: u64) {
        // (A line is counted as exported once `write_line` is done with it; a deleted file takes
        // back what went to it.)
        match result {
            Ok(()) => {
                self.exported.fetch_add(spans, Ordering::Relaxed);
            }
            Err(error) => {
                self.dropped.fetch_add(spans, Ordering::Relaxed);
                if !self.warned.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "filament_local_file: cannot write spans to {}: {error}; dropping spans (warned once, counted)",
                        self.path.display()
                    );
                }
            }
        }
    }
}

impl SpanProcessor for SpanFile {
    fn name(&self) -> String {
        format!("local-file {}", self.path.display())
    }

    fn on_end(&self, span: &SpanRecord<'_>) {
        if self.shut_down.load(Ordering::Relaxed) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.count(self.write_span(span), 1);
    }

    fn force_flush(&self, _timeout: Duration) -> Result<(), ProcessorError> {
        // Every line went to the kernel when its span ended; nothing is buffered here.
        Ok(())
    }

    fn shutdown(&self, _timeout: Duration) -> Result<(), ProcessorError> {
        // Every line is already in the kernel's hands, which keeps it across the process's exit.
        // No fsync: it would make a cluster's shutdown wait for the disk (hundreds of ms for a big
        // file) to guard only against the machine itself crashing.
        if self.shut_down.swap(true, Ordering::Relaxed) {
            return Err(ProcessorError::AlreadyShutdown);
        }
        // A process that recorded no span leaves no empty file of its own behind.
        let state = self.lock();
        let ours_and_empty = state.file.metadata().is_ok_and(|file| {
            file.len() == 0
                && std::fs::symlink_metadata(&self.path)
                    .is_ok_and(|at_path| (at_path.dev(), at_path.ino()) == (file.dev(), file.ino()))
        });
        if self.created && ours_and_empty {
            let _ = std::fs::remove_file(&self.path);
        }
        Ok(())
    }

    fn stats(&self) -> ProcessorStats {
        ProcessorStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Opens a span file for appending: never through a link, never blocking (a FIFO planted at its
/// name), and only a regular file of this user.
fn open(path: &Path) -> io::Result<File> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(|error| {
            if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                io::Error::other("it is a symbolic link: refusing to follow it")
            } else {
                error
            }
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("it is not a regular file"));
    }
    if meta.uid() != user() {
        return Err(io::Error::other(format!(
            "it belongs to user {}, not to this user ({})",
            meta.uid(),
            user()
        )));
    }
    Ok(file)
}

/// A spans folder must be this user's (or root's, as `/tmp` is) and, if others may write it,
/// sticky: else anyone could plant a link or a FIFO at a span file's name.
fn check_dir(dir: &Path) -> Result<(), SpanFileError> {
    let meta = std::fs::metadata(dir).map_err(|error| SpanFileError::CreateDir {
        dir: dir.to_owned(),
        error,
    })?;
    let unsafe_dir = |reason: String| SpanFileError::UnsafeDir {
        dir: dir.to_owned(),
        reason,
    };
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a folder".into()));
    }
    if meta.uid() != user() && meta.uid() != 0 {
        return Err(unsafe_dir(format!(
            "it belongs to user {}, not to this user ({}); set {SPANS_DIR_KEY} to a folder of yours",
            meta.uid(),
            user()
        )));
    }
    const STICKY: u32 = 0o1000;
    if meta.mode() & 0o022 != 0 && meta.mode() & STICKY == 0 {
        return Err(unsafe_dir(format!(
            "others may write it (mode {:o}) and it is not sticky; `chmod go-w` or `chmod +t` it, or set {SPANS_DIR_KEY} to a folder of yours",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// OTLP's span flags: bit 8 says whether bit 9 (the parent is remote) is known.
const SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const SPAN_FLAGS_CONTEXT_IS_REMOTE: u32 = 0x200;

fn span_flags(trace_flags: u8, is_remote: bool) -> u32 {
    let remote = if is_remote {
        SPAN_FLAGS_CONTEXT_IS_REMOTE
    } else {
        0
    };
    u32::from(trace_flags) | SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE | remote
}

fn any_value(value: &Value<'_>) -> common::AnyValue {
    use common::any_value::Value as V;
    fn array(values: Vec<V>) -> V {
        V::ArrayValue(common::ArrayValue {
            values: values
                .into_iter()
                .map(|v| common::AnyValue { value: Some(v) })
                .collect(),
        })
    }
    let value = match value {
        Value::Bool(b) => V::BoolValue(*b),
        Value::I64(i) => V::IntValue(*i),
        Value::F64(f) => V::DoubleValue(*f),
        Value::Str(s) => V::StringValue(s.as_str().to_owned()),
        Value::BoolArray(a) => array(a.iter().map(|b| V::BoolValue(*b)).collect()),
        Value::I64Array(a) => array(a.iter().map(|i| V::IntValue(*i)).collect()),
        Value::F64Array(a) => array(a.iter().map(|f| V::DoubleValue(*f)).collect()),
        Value::StrArray(a) => array(
            a.iter()
                .map(|s| V::StringValue(s.as_str().to_owned()))
                .collect(),
        ),
    };
    common::AnyValue { value: Some(value) }
}

fn attributes(attributes: &[KeyValue<'_>]) -> Vec<common::KeyValue> {
    attributes
        .iter()
        .map(|kv| common::KeyValue {
            key: kv.key.as_str().to_owned(),
            value: Some(any_value(&kv.value)),
            ..Default::default()
        })
        .collect()
}

fn kind(kind: SpanKind) -> trace::span::SpanKind {
    match kind {
        SpanKind::Internal => trace::span::SpanKind::Internal,
        SpanKind::Server => trace::span::SpanKind::Server,
        SpanKind::Client => trace::span::SpanKind::Client,
        SpanKind::Producer => trace::span::SpanKind::Producer,
        SpanKind::Consumer => trace::span::SpanKind::Consumer,
    }
}

fn status_code(code: StatusCode) -> trace::status::StatusCode {
    match code {
        StatusCode::Unset => trace::status::StatusCode::Unset,
        StatusCode::Ok => trace::status::StatusCode::Ok,
        StatusCode::Error => trace::status::StatusCode::Error,
    }
}

/// What surrounds the spans of a line with one resource and one scope: `head`, the spans
/// separated by commas, `tail`. A line of one span or of many is the same document but for its
/// `spans` array (and `filament spans` parses only that array when a line's frame repeats).
#[derive(Debug)]
struct Frame {
    resource_key: u64,
    scope_key: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// The encoding state of a span file: a reused line buffer, and the frames of the resource and
/// the scopes seen last, keyed by a fingerprint of their content.
#[derive(Debug, Default)]
struct LineWriter {
    buffer: Vec<u8>,
    frames: Frames,
    memo: json::AttributeMemo,
}

/// The frames seen last, most recent last; a frame's resource JSON is encoded once per resource.
#[derive(Debug, Default)]
struct Frames {
    resource: Option<(u64, Vec<u8>)>,
    kept: Vec<Arc<Frame>>,
}

/// Frames whose JSON is kept; a process rarely has more tracers than this.
const SCOPES_KEPT: usize = 16;

impl Frames {
    /// The frame of `span`'s resource and scope, encoded if new.
    fn of_record(&mut self, span: &SpanRecord<'_>) -> serde_json::Result<Arc<Frame>> {
        let scope = &span.scope;
        self.get(FrameParts {
            resource_key: match span.resource.id {
                0 => fingerprint(&span.resource.attributes, &[]),
                id => id,
            },
            resource: |out: &mut Vec<u8>| json::resource(out, &span.resource.attributes),
            resource_schema_url: span.resource.schema_url.as_str(),
            scope_key: fingerprint(
                &scope.attributes,
                &[scope.name.as_str(), scope.version.as_str()],
            ),
            scope: |out: &mut Vec<u8>| json::scope(out, scope),
            scope_schema_url: scope.schema_url.as_str(),
        })
    }

    fn get<R, S>(&mut self, parts: FrameParts<'_, R, S>) -> serde_json::Result<Arc<Frame>>
    where
        R: FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
        S: FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
    {
        // The schema URLs are part of what the frame is.
        let resource_key =
            fingerprint(&[], &[parts.resource_schema_url]) ^ parts.resource_key.rotate_left(1);
        let scope_key =
            fingerprint(&[], &[parts.scope_schema_url]) ^ parts.scope_key.rotate_left(1);
        if let Some(frame) = self
            .kept
            .iter()
            .rev()
            .find(|f| f.resource_key == resource_key && f.scope_key == scope_key)
        {
            return Ok(Arc::clone(frame));
        }
        if self.resource.as_ref().map(|(key, _)| *key) != Some(resource_key) {
            let mut json = Vec::new();
            (parts.resource)(&mut json)?;
            self.resource = Some((resource_key, json));
        }
        let resource = self.resource.as_ref().map_or(&b"null"[..], |(_, j)| j);
        let mut head = br#"{"resourceSpans":[{"resource":"#.to_vec();
        head.extend_from_slice(resource);
        head.extend_from_slice(br#","scopeSpans":[{"scope":"#);
        (parts.scope)(&mut head)?;
        head.extend_from_slice(br#","spans":["#);
        let mut tail = b"]".to_vec();
        for url in [parts.scope_schema_url, parts.resource_schema_url] {
            if !url.is_empty() {
                tail.extend_from_slice(br#","schemaUrl":"#);
                serde_json::to_writer(&mut tail, url)?;
            }
            tail.extend_from_slice(b"}]");
        }
        tail.extend_from_slice(b"}\n");
        if self.kept.len() == SCOPES_KEPT {
            self.kept.remove(0);
        }
        let frame = Arc::new(Frame {
            resource_key,
            scope_key,
            head,
            tail,
        });
        self.kept.push(Arc::clone(&frame));
        Ok(frame)
    }
}

impl LineWriter {
    /// Encodes `span` as one OTLP/JSON `TracesData` line into the buffer.
    fn encode(&mut self, span: &SpanRecord<'_>) -> serde_json::Result<()> {
        let frame = self.frames.of_record(span)?;
        let memo = &mut self.memo;
        line(&mut self.buffer, &frame, |out| {
            json::span(out, span, Some(memo))
        })
    }

    /// Encodes one line from its OTLP parts, each encoded by `opentelemetry-proto`'s serde.
    fn encode_parts<R, S>(&mut self, parts: OtlpSpan<'_, R, S>) -> serde_json::Result<()>
    where
        R: FnOnce() -> resource::Resource,
        S: FnOnce() -> common::InstrumentationScope,
    {
        let frame = self.frames.get(FrameParts {
            resource_key: parts.resource_key,
            resource: |out: &mut Vec<u8>| serde_json::to_writer(out, &(parts.resource)()),
            resource_schema_url: parts.resource_schema_url,
            scope_key: parts.scope_key,
            scope: |out: &mut Vec<u8>| serde_json::to_writer(out, &(parts.scope)()),
            scope_schema_url: parts.scope_schema_url,
        })?;
        line(&mut self.buffer, &frame, |out| {
            serde_json::to_writer(out, parts.span)
        })
    }
}

/// Encodes one line into `line`: the frame's head, the span, the frame's tail.
fn line(
    line: &mut Vec<u8>,
    frame: &Frame,
    span: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
) -> serde_json::Result<()> {
    line.clear();
    line.extend_from_slice(&frame.head);
    span(line)?;
    line.extend_from_slice(&frame.tail);
    Ok(())
}

/// A frame's parts: its resource and scope as writers of their JSON, keyed by a fingerprint.
struct FrameParts<'a, R, S> {
    resource_key: u64,
    resource: R,
    resource_schema_url: &'a str,
    scope_key: u64,
    scope: S,
    scope_schema_url: &'a str,
}

/// One span in OTLP form, with its resource and scope as builders keyed by a fingerprint of their
/// content: [`SpanFile::write_otlp_span`] builds and encodes them only when the key is new.
#[derive(Debug)]
pub struct OtlpSpan<'a, R, S> {
    /// Identifies the resource: equal keys, equal resources.
    pub resource_key: u64,
    /// Builds the resource.
    pub resource: R,
    /// The resource's schema URL.
    pub resource_schema_url: &'a str,
    /// Identifies the scope: equal keys, equal scopes.
    pub scope_key: u64,
    /// Builds the scope.
    pub scope: S,
    /// The scope's schema URL.
    pub scope_schema_url: &'a str,
    /// The span.
    pub span: &'a trace::Span,
}

/// FNV-1a over attributes and a few strings: which resource or scope this is.
fn fingerprint(attributes: &[KeyValue<'_>], strings: &[&str]) -> u64 {
    fn eat(hash: u64, bytes: &[u8]) -> u64 {
        let hash = bytes.iter().fold(hash, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        // A separator, so that ("ab", "c") and ("a", "bc") differ.
        (hash ^ 0xff).wrapping_mul(0x0000_0100_0000_01b3)
    }
    let mut hash = 0xcbf2_9ce4_8422_2325;
    for string in strings {
        hash = eat(hash, string.as_bytes());
    }
    for kv in attributes {
        hash = eat(hash, kv.key.as_str().as_bytes());
        hash = match &kv.value {
            Value::Bool(b) => eat(hash, &[1, u8::from(*b)]),
            Value::I64(i) => eat(eat(hash, &[2]), &i.to_le_bytes()),
            Value::F64(f) => eat(eat(hash, &[3]), &f.to_bits().to_le_bytes()),
            Value::Str(s) => eat(eat(hash, &[4]), s.as_str().as_bytes()),
            Value::BoolArray(a) => a
                .iter()
                .fold(eat(hash, &[5]), |h, b| eat(h, &[u8::from(*b)])),
            Value::I64Array(a) => a
                .iter()
                .fold(eat(hash, &[6]), |h, i| eat(h, &i.to_le_bytes())),
            Value::F64Array(a) => a
                .iter()
                .fold(eat(hash, &[7]), |h, f| eat(h, &f.to_bits().to_le_bytes())),
            Value::StrArray(a) => a
                .iter()
                .fold(eat(hash, &[8]), |h, s| eat(h, s.as_str().as_bytes())),
        };
    }
    hash
}

fn proto_resource(span: &SpanRecord<'_>) -> resource::Resource {
    resource::Resource {
        attributes: attributes(&span.resource.attributes),
        ..Default::default()
    }
}

fn proto_scope(span: &SpanRecord<'_>) -> common::InstrumentationScope {
    common::InstrumentationScope {
        name: span.scope.name.as_str().to_owned(),
        version: span.scope.version.as_str().to_owned(),
        attributes: attributes(&span.scope.attributes),
        dropped_attributes_count: 0,
    }
}

/// One span as the OTLP `TracesData` of a file exporter line: its resource, its scope, the span.
pub fn traces_data(span: &SpanRecord<'_>) -> trace::TracesData {
    trace::TracesData {
        resource_spans: vec![trace::ResourceSpans {
            resource: Some(proto_resource(span)),
            scope_spans: vec![trace::ScopeSpans {
                scope: Some(proto_scope(span)),
                spans: vec![proto_span(span)],
                schema_url: span.scope.schema_url.as_str().to_owned(),
            }],
            schema_url: span.resource.schema_url.as_str().to_owned(),
        }],
    }
}

fn proto_span(span: &SpanRecord<'_>) -> trace::Span {
    trace::Span {
        trace_id: span.trace_id.0.to_vec(),
        span_id: span.span_id.0.to_vec(),
        trace_state: span.trace_state.as_str().to_owned(),
        parent_span_id: if span.parent_span_id.is_zero() {
            Vec::new()
        } else {
            span.parent_span_id.0.to_vec()
        },
        flags: span_flags(span.trace_flags, span.parent_is_remote),
        name: span.name.as_str().to_owned(),
        kind: kind(span.kind) as i32,
        start_time_unix_nano: span.start_time_unix_nano,
        end_time_unix_nano: span.end_time_unix_nano,
        attributes: attributes(&span.attributes),
        dropped_attributes_count: span.dropped_attributes_count,
        events: span
            .events
            .iter()
            .map(|event| trace::span::Event {
                time_unix_nano: event.time_unix_nano,
                name: event.name.as_str().to_owned(),
                attributes: attributes(&event.attributes),
                dropped_attributes_count: event.dropped_attributes_count,
            })
            .collect(),
        dropped_events_count: span.dropped_events_count,
        links: span
            .links
            .iter()
            .map(|link| trace::span::Link {
                trace_id: link.trace_id.0.to_vec(),
                span_id: link.span_id.0.to_vec(),
                trace_state: link.trace_state.as_str().to_owned(),
                attributes: attributes(&link.attributes),
                dropped_attributes_count: link.dropped_attributes_count,
                flags: span_flags(link.trace_flags, link.is_remote),
            })
            .collect(),
        dropped_links_count: span.dropped_links_count,
        status: Some(trace::Status {
            message: span.status.description.as_str().to_owned(),
            code: status_code(span.status.code) as i32,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use filament_plugin_api::{
        Event, Link, Resource, Scope, SpanId, SpanKind, Status, StatusCode, TraceId,
    };

    fn record<'a>(
        attributes: &'a [KeyValue<'a>],
        events: &'a [Event<'a>],
        links: &'a [Link<'a>],
        resource: &'a [KeyValue<'a>],
        scope: &'a str,
    ) -> SpanRecord<'a> {
        SpanRecord {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: SpanId([3; 8]),
            parent_is_remote: true,
            trace_flags: 1,
            trace_state: "k=v".into(),
            name: "a \"quoted\" name".into(),
            kind: SpanKind::Consumer,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_001_000,
            attributes: attributes.into(),
            dropped_attributes_count: 1,
            events: events.into(),
            dropped_events_count: 0,
            links: links.into(),
            dropped_links_count: 2,
            status: Status {
                code: StatusCode::Error,
                description: "boom".into(),
            },
            scope: Scope {
                name: scope.into(),
                version: "1.0".into(),
                schema_url: "".into(),
                attributes: (&[][..]).into(),
            },
            resource: Resource {
                attributes: resource.into(),
                schema_url: "https://example.test/schema".into(),
                id: 0,
            },
        }
    }

    fn unset_status_present(mut data: trace::TracesData) -> trace::TracesData {
        for rs in &mut data.resource_spans {
            for ss in &mut rs.scope_spans {
                for span in &mut ss.spans {
                    span.status.get_or_insert_with(Default::default);
                }
            }
        }
        data
    }

    /// Decodes a line with `opentelemetry-proto`'s serde, as any OTLP/JSON reader would.
    fn decode(line: &[u8]) -> trace::TracesData {
        let text = std::str::from_utf8(line).unwrap();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{text}"
        );
        serde_json::from_str(text.trim_end()).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// The line `LineWriter` writes for `span` must read back as the `TracesData` built from it:
    /// the message `opentelemetry-proto` reads from its own encoding of it. (Compared through
    /// `Debug`, where a NaN equals itself; an absent status is an unset one, as OTLP says.)
    fn assert_encodes_as_proto(writer: &mut LineWriter, span: &SpanRecord<'_>) {
        writer.encode(span).unwrap();
        let mut expected = serde_json::to_vec(&traces_data(span)).unwrap();
        expected.push(b'\n');
        assert_eq!(
            format!("{:#?}", unset_status_present(decode(&writer.buffer))),
            format!("{:#?}", decode(&expected))
        );
        assert!(writer.buffer.len() <= expected.len());
    }

    #[test]
    fn attributes_of_every_type_encode_as_opentelemetry_proto_does() {
        let strings = [
            "plain".into(),
            "".into(),
            "quote \" backslash \\ slash / tab \t newline \n nul \u{0} bell \u{7} del \u{7f}"
                .into(),
            "unicode é ✓ 🦀 \u{2028}".into(),
        ];
        let bools = [true, false];
        let ints = [0, -1, i64::MIN, i64::MAX];
        let doubles = [
            0.0,
            -0.0,
            0.1,
            -2.5e-300,
            1e300,
            f64::MAX,
            f64::MIN_POSITIVE,
        ];
        let odd_doubles = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        let mut attributes = vec![
            KeyValue::new("bool.true", Value::Bool(true)),
            KeyValue::new("bool.false", Value::Bool(false)),
            KeyValue::new("", Value::Str("an empty key".into())),
            KeyValue::new("key \"quoted\" ✓", Value::Str("value\n".into())),
            KeyValue::new("bools", Value::BoolArray((&bools[..]).into())),
            KeyValue::new("ints", Value::I64Array((&ints[..]).into())),
            KeyValue::new("doubles", Value::F64Array((&doubles[..]).into())),
            KeyValue::new("odd doubles", Value::F64Array((&odd_doubles[..]).into())),
            KeyValue::new("strings", Value::StrArray((&strings[..]).into())),
            KeyValue::new("no bools", Value::BoolArray((&[][..]).into())),
            KeyValue::new("no ints", Value::I64Array((&[][..]).into())),
            KeyValue::new("no doubles", Value::F64Array((&[][..]).into())),
            KeyValue::new("no strings", Value::StrArray((&[][..]).into())),
        ];
        attributes.extend(ints.iter().map(|i| KeyValue::new("int", Value::I64(*i))));
        attributes.extend(
            doubles
                .iter()
                .chain(&odd_doubles)
                .map(|f| KeyValue::new("double", Value::F64(*f))),
        );
        attributes.extend(
            strings
                .iter()
                .map(|s| KeyValue::new("string", Value::Str(*s))),
        );
        let resource = [KeyValue::new("service.name", Value::Str("svc".into()))];
        let mut writer = LineWriter::default();
        assert_encodes_as_proto(&mut writer, &record(&attributes, &[], &[], &resource, "s"));
        assert_encodes_as_proto(&mut writer, &record(&[], &[], &[], &resource, "s"));
    }

    #[test]
    fn events_links_status_kinds_and_ids_encode_as_opentelemetry_proto_does() {
        let attributes = [KeyValue::new("k", Value::I64(1))];
        let events = [
            Event {
                name: "first \"event\"".into(),
                time_unix_nano: 0,
                attributes: (&attributes[..]).into(),
                dropped_attributes_count: 3,
            },
            Event {
                name: "".into(),
                time_unix_nano: u64::MAX,
                attributes: (&[][..]).into(),
                dropped_attributes_count: 0,
            },
        ];
        let links = [
            Link {
                trace_id: TraceId([0xab; 16]),
                span_id: SpanId([0x0f; 8]),
                trace_flags: 0,
                trace_state: "a=1,b=2".into(),
                is_remote: true,
                attributes: (&attributes[..]).into(),
                dropped_attributes_count: u32::MAX,
            },
            Link {
                trace_id: TraceId([0; 16]),
                span_id: SpanId([0; 8]),
                trace_flags: 0xff,
                trace_state: "".into(),
                is_remote: false,
                attributes: (&[][..]).into(),
                dropped_attributes_count: 0,
            },
        ];
        let resource = [KeyValue::new("service.name", Value::Str("svc".into()))];
        let kinds = [
            SpanKind::Internal,
            SpanKind::Server,
            SpanKind::Client,
            SpanKind::Producer,
            SpanKind::Consumer,
        ];
        let statuses = [
            (StatusCode::Unset, ""),
            (StatusCode::Ok, ""),
            (StatusCode::Error, "it \"broke\"\n"),
        ];
        let mut writer = LineWriter::default();
        for (index, kind) in kinds.into_iter().enumerate() {
            for (code, description) in statuses {
                for (events, links) in [
                    (&events[..], &links[..]),
                    (&[][..], &[][..]),
                    (&events[..1], &links[1..]),
                ] {
                    let mut span = record(&attributes, events, links, &resource, "s");
                    span.kind = kind;
                    span.status = Status {
                        code,
                        description: description.into(),
                    };
                    span.trace_id = TraceId([index as u8 * 0x31; 16]);
                    span.span_id = SpanId([0x9a; 8]);
                    if index % 2 == 0 {
                        span.parent_span_id = SpanId([0; 8]);
                        span.parent_is_remote = false;
                        span.trace_state = "".into();
                        span.trace_flags = 0;
                        span.dropped_attributes_count = 0;
                        span.dropped_events_count = u32::MAX;
                        span.dropped_links_count = 0;
                        span.start_time_unix_nano = 0;
                        span.end_time_unix_nano = u64::MAX;
                    }
                    assert_encodes_as_proto(&mut writer, &span);
                }
            }
        }
    }

    #[test]
    fn remembered_attributes_are_the_fresh_encoding_byte_for_byte() {
        let long = "x".repeat(2000);
        let strings = ["a".into(), "b".into()];
        let ints = [1, 2];
        let lists: Vec<Vec<KeyValue<'_>>> = vec![
            vec![
                KeyValue::new("k", Value::Str("v".into())),
                KeyValue::new("n", Value::I64(1)),
            ],
            // The same again: every attribute remembered.
            vec![
                KeyValue::new("k", Value::Str("v".into())),
                KeyValue::new("n", Value::I64(1)),
            ],
            // Same keys, other values; same values, other keys; other types with equal bits.
            vec![
                KeyValue::new("k", Value::Str("w".into())),
                KeyValue::new("m", Value::I64(1)),
            ],
            vec![
                KeyValue::new("k", Value::Str("w\"\n".into())),
                KeyValue::new("m", Value::F64(f64::from_bits(1))),
            ],
            vec![
                KeyValue::new("k", Value::Bool(true)),
                KeyValue::new("m", Value::F64(f64::NAN)),
                KeyValue::new("third", Value::F64(-0.0)),
            ],
            vec![
                KeyValue::new("k", Value::Bool(false)),
                KeyValue::new("m", Value::F64(f64::NAN)),
                KeyValue::new("third", Value::F64(0.0)),
            ],
            // Arrays and long strings are never remembered.
            vec![
                KeyValue::new("k", Value::StrArray((&strings[..]).into())),
                KeyValue::new("m", Value::Str(long.as_str().into())),
                KeyValue::new("third", Value::I64Array((&ints[..]).into())),
            ],
            vec![
                KeyValue::new("k", Value::StrArray((&strings[1..]).into())),
                KeyValue::new("m", Value::Str(long[1..].into())),
                KeyValue::new("third", Value::I64Array((&ints[1..]).into())),
            ],
            vec![KeyValue::new("k", Value::Str("v".into()))],
            vec![],
            vec![
                KeyValue::new("k", Value::Str("v".into())),
                KeyValue::new("n", Value::I64(1)),
                KeyValue::new("third", Value::F64(0.0)),
            ],
        ];
        let resource = [KeyValue::new("service.name", Value::Str("svc".into()))];
        let mut writer = LineWriter::default();
        for attributes in &lists {
            let span = record(attributes, &[], &[], &resource, "s");
            writer.encode(&span).unwrap();
            let mut fresh = LineWriter::default();
            fresh.encode(&span).unwrap();
            assert_eq!(
                String::from_utf8(writer.buffer.clone()).unwrap(),
                String::from_utf8(fresh.buffer).unwrap()
            );
            assert_encodes_as_proto(&mut writer, &span);
        }
    }

    #[test]
    fn a_line_with_cached_resource_and_scope_is_the_fresh_encoding_byte_for_byte() {
        let strings = ["x".into(), "y".into()];
        let attributes = [
            KeyValue::new("s", Value::Str("text".into())),
            KeyValue::new("i", Value::I64(-7)),
            KeyValue::new("f", Value::F64(0.5)),
            KeyValue::new("b", Value::Bool(true)),
            KeyValue::new("sa", Value::StrArray((&strings[..]).into())),
        ];
        let event_attributes = [KeyValue::new(
            "exception.message",
            Value::Str("it broke".into()),
        )];
        let events = [Event {
            name: "exception".into(),
            time_unix_nano: 1_700_000_000_000_000_500,
            attributes: (&event_attributes[..]).into(),
            dropped_attributes_count: 0,
        }];
        let links = [Link {
            trace_id: TraceId([4; 16]),
            span_id: SpanId([5; 8]),
            trace_flags: 1,
            trace_state: "".into(),
            is_remote: false,
            attributes: (&[][..]).into(),
            dropped_attributes_count: 0,
        }];
        let first_resource = [KeyValue::new("service.name", Value::Str("a".into()))];
        let second_resource = [KeyValue::new("service.name", Value::Str("b".into()))];

        let mut writer = LineWriter::default();
        let cases = [
            record(&attributes, &events, &links, &first_resource, "one"),
            record(&attributes, &events, &links, &first_resource, "one"),
            record(&attributes, &[], &[], &first_resource, "two"),
            record(&attributes, &events, &links, &second_resource, "one"),
        ];
        for span in &cases {
            writer.encode(span).unwrap();
            let cached = writer.buffer.clone();
            let mut fresh = LineWriter::default();
            fresh.encode(span).unwrap();
            assert_eq!(
                String::from_utf8(cached).unwrap(),
                String::from_utf8(fresh.buffer).unwrap()
            );
            assert_eq!(
                format!("{:?}", unset_status_present(decode(&writer.buffer))),
                format!("{:?}", traces_data(span))
            );
        }
        assert_eq!(
            writer.frames.kept.len(),
            3,
            "(a, one), (a, two), (b, one): each encoded once"
        );
    }
}
