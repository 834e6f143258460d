//! The batched mode (`FILAMENT_LOCAL_FILE_MODE=batch`): many spans per line under one resource.
//!
//! The thread that ends a span encodes it (the record is borrowed, so it cannot wait) straight
//! into the queue, a buffer shared with the writer thread (no allocation, no message per span); a
//! full queue (`OTEL_BSP_MAX_QUEUE_SIZE` spans) drops the span and counts it. One writer thread
//! takes the whole queue at once when it holds `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans, when
//! `OTEL_BSP_SCHEDULE_DELAY` has passed since its first span, at `force_flush` and at `shutdown`,
//! and writes it as lines of spans of the same resource and scope, at most
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` per line, each with the span file's single `write` (whole
//! lines, a deleted file made again).
//!
//! What a process that exits without shutting down loses: the spans still queued, at most those
//! that ended in the last `OTEL_BSP_SCHEDULE_DELAY`. What reached the file is whole lines, every
//! span at most once.

use crate::json::AttributeMemo;
use crate::{Frame, Frames, SpanFile};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use filament_plugin_api::{ProcessorError, ProcessorStats, SpanProcessor, SpanRecord};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The configuration key choosing the mode: `simple` (the default) or `batch`.
pub const MODE_KEY: &str = "FILAMENT_LOCAL_FILE_MODE";
/// The longest a span waits in batch mode before its line is written, in milliseconds.
pub const SCHEDULE_DELAY_KEY: &str = "OTEL_BSP_SCHEDULE_DELAY";
/// The spec's default for [`SCHEDULE_DELAY_KEY`].
pub const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_millis(5000);
/// How many spans may wait to be written; more are dropped and counted.
pub const MAX_QUEUE_SIZE_KEY: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// The spec's default for [`MAX_QUEUE_SIZE_KEY`].
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;
/// The most spans in one line.
pub const MAX_EXPORT_BATCH_SIZE_KEY: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// The spec's default for [`MAX_EXPORT_BATCH_SIZE_KEY`].
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 512;

/// The batch mode's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// [`SCHEDULE_DELAY_KEY`].
    pub schedule_delay: Duration,
    /// [`MAX_QUEUE_SIZE_KEY`].
    pub max_queue_size: usize,
    /// [`MAX_EXPORT_BATCH_SIZE_KEY`], at most the queue's size.
    pub max_export_batch_size: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            schedule_delay: DEFAULT_SCHEDULE_DELAY,
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            max_export_batch_size: DEFAULT_MAX_EXPORT_BATCH_SIZE,
        }
    }
}

impl BatchConfig {
    /// Reads the settings through `config` (the hook's configuration, else the environment).
    pub fn read(config: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let number = |key: &str, default: usize| -> Result<usize, String> {
            match config(key) {
                None => Ok(default),
                Some(value) if value.trim().is_empty() => Ok(default),
                Some(value) => match value.trim().parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(format!(
                        "{key}={value:?}: not a whole number above zero (unset, it is {default})"
                    )),
                },
            }
        };
        let delay = number(
            SCHEDULE_DELAY_KEY,
            DEFAULT_SCHEDULE_DELAY.as_millis() as usize,
        )?;
        let max_queue_size = number(MAX_QUEUE_SIZE_KEY, DEFAULT_MAX_QUEUE_SIZE)?;
        let max_export_batch_size =
            number(MAX_EXPORT_BATCH_SIZE_KEY, DEFAULT_MAX_EXPORT_BATCH_SIZE)?;
        Ok(BatchConfig {
            schedule_delay: Duration::from_millis(delay as u64),
            max_queue_size,
            max_export_batch_size: max_export_batch_size.min(max_queue_size),
        })
    }
}

/// What the writer thread is told; spans themselves go through [`Queue`].
enum Message {
    /// The queue holds a batch of spans, or its first span while the writer was idle.
    Wake,
    Flush(Sender<()>),
    Shutdown(Sender<()>),
}

/// The spans waiting for the writer, and what encoding them needs, under one lock.
#[derive(Debug, Default)]
struct Queue {
    frames: Frames,
    memo: AttributeMemo,
    pending: Pending,
    /// The writer has nothing to do and waits for a message: the next span must wake it.
    writer_idle: bool,
    /// The writer has taken its last spans: later ones are dropped.
    closed: bool,
}

/// Encoded spans, already as the lines they will be written in: each line a frame's head, its
/// spans (at most `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`) and, but for the last line, its tail.
/// (Each line is written with a `write` of its own, so that a failed write loses one line.)
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Each line's frame, number of spans and start in `bytes`, in order.
    lines: Vec<(Arc<Frame>, usize, usize)>,
    spans: usize,
    /// When the first of them was queued.
    since: Option<Instant>,
}

impl Pending {
    fn len(&self) -> usize {
        self.spans
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.lines.clear();
        self.spans = 0;
        self.since = None;
        if self.bytes.capacity() > 4 << 20 {
            self.bytes.shrink_to(1 << 20);
        }
    }
}

/// A span file written in batches by a thread of its own.
#[derive(Debug)]
pub struct BatchFile {
    file: Arc<SpanFile>,
    queue: Arc<Mutex<Queue>>,
    messages: Sender<Message>,
    config: BatchConfig,
    writer: Mutex<Option<JoinHandle<()>>>,
    closing: AtomicBool,
    warned_full: AtomicBool,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Wake => "Wake",
            Message::Flush(_) => "Flush",
            Message::Shutdown(_) => "Shutdown",
        })
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

impl BatchFile {
    /// Starts the writer thread of `file`.
    pub fn start(file: SpanFile, config: BatchConfig) -> std::io::Result<Self> {
        let file = Arc::new(file);
        let queue = Arc::new(Mutex::new(Queue {
            writer_idle: true,
            ..Queue::default()
        }));
        // Wakes, flushes and a shutdown only: a few at a time at most.
        let (messages, inbox) = crossbeam_channel::bounded(16);
        let writer = {
            let file = Arc::clone(&file);
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name("filament-local-file".into())
                .spawn(move || write_batches(&file, &queue, &inbox, config))?
        };
        Ok(BatchFile {
            file,
            queue,
            messages,
            config,
            writer: Mutex::new(Some(writer)),
            closing: AtomicBool::new(false),
            warned_full: AtomicBool::new(false),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &std::path::Path {
        self.file.path()
    }

    fn drop_span(&self, why: &str) {
        self.file.dropped.fetch_add(1, Ordering::Relaxed);
        if !self.warned_full.swap(true, Ordering::Relaxed) {
            eprintln!(
                "filament_local_file: {why}: dropping spans for {} (warned once, counted)",
                self.file.path().display()
            );
        }
    }

    /// Sends a control message and waits for its answer, within `timeout` in all.
    fn ask(
        &self,
        message: impl FnOnce(Sender<()>) -> Message,
        timeout: Duration,
    ) -> Result<(), ProcessorError> {
        let deadline = Instant::now() + timeout;
        let (done, answer) = crossbeam_channel::bounded(1);
        match self.messages.send_deadline(message(done), deadline) {
            Ok(()) => {}
            Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => {
                return Err(ProcessorError::Timeout(timeout.into()));
            }
            Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
                return Err(ProcessorError::failed("the span writer thread is gone"));
            }
        }
        match answer.recv_deadline(deadline) {
            Ok(()) => Ok(()),
            Err(RecvTimeoutError::Timeout) => Err(ProcessorError::Timeout(timeout.into())),
            Err(RecvTimeoutError::Disconnected) => {
                Err(ProcessorError::failed("the span writer thread is gone"))
            }
        }
    }
}

impl SpanProcessor for BatchFile {
    fn name(&self) -> String {
        format!("local-file {} (batch)", self.file.path().display())
    }

    /// Called on the thread that ended the span: encodes it into the queue, never waiting for
    /// the writer (only for another thread encoding a span, or the writer taking the queue).
    fn on_end(&self, span: &SpanRecord<'_>) {
        if self.closing.load(Ordering::Relaxed) {
            self.file.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut guard = lock(&self.queue);
        let queue = &mut *guard;
        if queue.closed {
            drop(guard);
            self.file.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if queue.pending.len() >= self.config.max_queue_size {
            drop(guard);
            return self.drop_span(&format!(
                "the queue of spans to write is full ({MAX_QUEUE_SIZE_KEY})"
            ));
        }
        let pending = &mut queue.pending;
        let start = pending.bytes.len();
        let encoded = queue.frames.of_record(span).and_then(|frame| {
            // A new line when the frame changes or the line is full: the last one's tail, then
            // this one's head.
            let new_line = match pending.lines.last() {
                Some((last, spans, _)) => {
                    !Arc::ptr_eq(last, &frame) || *spans >= self.config.max_export_batch_size
                }
                None => true,
            };
            match pending.lines.last() {
                Some((last, _, _)) if new_line => pending.bytes.extend_from_slice(&last.tail),
                Some(_) => pending.bytes.push(b','),
                None => {}
            }
            let line_start = pending.bytes.len();
            if new_line {
                pending.bytes.extend_from_slice(&frame.head);
            }
            crate::json::span(&mut pending.bytes, span, Some(&mut queue.memo))
                .map(|()| (frame, new_line.then_some(line_start)))
        });
        match encoded {
            Ok((frame, Some(line_start))) => pending.lines.push((frame, 1, line_start)),
            Ok((_, None)) => {
                if let Some((_, spans, _)) = pending.lines.last_mut() {
                    *spans += 1;
                }
            }
            Err(error) => {
                pending.bytes.truncate(start);
                drop(guard);
                return self.file.count(Err(std::io::Error::other(error)), 1);
            }
        }
        pending.spans += 1;
        let queued = pending.len();
        if queued == 1 {
            pending.since = Some(Instant::now());
        }
        let wake = queued == self.config.max_export_batch_size
            || (queued == 1 && std::mem::take(&mut queue.writer_idle));
        drop(guard);
        if wake {
            // A full inbox already holds a message that makes the writer look at the queue.
            let _ = self.messages.try_send(Message::Wake);
        }
    }

    fn force_flush(&self, timeout: Duration) -> Result<(), ProcessorError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(ProcessorError::AlreadyShutdown);
        }
        self.ask(Message::Flush, timeout)
    }

    fn shutdown(&self, timeout: Duration) -> Result<(), ProcessorError> {
        if self.closing.swap(true, Ordering::Relaxed) {
            return Err(ProcessorError::AlreadyShutdown);
        }
        let started = Instant::now();
        self.ask(Message::Shutdown, timeout)?;
        if let Some(writer) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            // It answered: it is returning.
            let _ = writer.join();
        }
        self.file
            .shutdown(timeout.saturating_sub(started.elapsed()))
    }

    fn stats(&self) -> ProcessorStats {
        self.file.stats()
    }
}

/// The writer thread: takes the queued spans when they are due and writes them as lines.
fn write_batches(
    file: &SpanFile,
    queue: &Mutex<Queue>,
    messages: &Receiver<Message>,
    config: BatchConfig,
) {
    // What was taken from the queue, swapped with the queue's buffers so that neither side
    // allocates once both have grown.
    let mut taken = Pending::default();
    loop {
        let due = {
            let mut queue = lock(queue);
            let since = queue.pending.since;
            // Nothing queued: the next span wakes the writer.
            queue.writer_idle = since.is_none();
            since.map(|since| since + config.schedule_delay)
        };
        let message = match due {
            Some(due) => messages.recv_deadline(due),
            None => messages.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let (done, last) = match message {
            Ok(Message::Wake) | Err(RecvTimeoutError::Timeout) => (None, false),
            Ok(Message::Flush(done)) => (Some(done), false),
            Ok(Message::Shutdown(done)) => (Some(done), true),
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        {
            let mut queue = lock(queue);
            let due = queue
                .pending
                .since
                .is_some_and(|since| since + config.schedule_delay <= Instant::now());
            let everything = done.is_some() || last || due;
            if everything || queue.pending.len() >= config.max_export_batch_size {
                std::mem::swap(&mut queue.pending, &mut taken);
                if !everything {
                    // Taken for its full lines: a last line still filling stays queued.
                    requeue_last_line(&mut taken, &mut queue.pending, config.max_export_batch_size);
                }
            }
            queue.closed = last;
        }
        write_taken(file, &mut taken);
        if let Some(done) = done {
            let _ = done.send(());
        }
        if last {
            return;
        }
    }
}

/// Moves the last taken line back to the (empty) queue if it holds fewer than `per_line` spans and
/// is not the only line, so that lines fill up as spans come rather than being cut when taken.
fn requeue_last_line(taken: &mut Pending, queue: &mut Pending, per_line: usize) {
    let [.., (before, _, _), (_, spans, start)] = taken.lines.as_slice() else {
        return;
    };
    let (spans, start) = (*spans, *start);
    if spans >= per_line || !queue.lines.is_empty() {
        return;
    }
    // The line before it is closed: its tail ends right where this line starts.
    let closed = start - before.tail.len();
    let Some((frame, _, _)) = taken.lines.pop() else {
        return;
    };
    queue.bytes.extend_from_slice(&taken.bytes[start..]);
    queue.lines.push((frame, spans, 0));
    queue.spans = spans;
    // Not later than its spans were queued: at most the delay after the first taken span.
    queue.since = taken.since;
    taken.bytes.truncate(closed);
    taken.spans -= spans;
}

/// Writes the taken lines (closing the last), each with one `write`, and empties them.
fn write_taken(file: &SpanFile, taken: &mut Pending) {
    let Some((last, _, _)) = taken.lines.last() else {
        return;
    };
    taken.bytes.extend_from_slice(&last.tail);
    let mut state = file.lock();
    for (index, (_, spans, start)) in taken.lines.iter().enumerate() {
        let end = taken
            .lines
            .get(index + 1)
            .map_or(taken.bytes.len(), |(_, _, next)| *next);
        let spans = *spans as u64;
        let result = file.write_spans(&mut state, &taken.bytes[*start..end], spans);
        file.count(result, spans);
    }
    drop(state);
    taken.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use filament_plugin_api::{
        KeyValue, Resource, Scope, SpanId, SpanKind, Status, StatusCode, TraceId, Value,
    };
    use opentelemetry_proto::tonic::trace::v1::TracesData;

    fn record<'a>(name: &'a str, resource: &'a [KeyValue<'a>]) -> SpanRecord<'a> {
        SpanRecord {
            trace_id: TraceId([1; 16]),
            span_id: SpanId([2; 8]),
            parent_span_id: SpanId([0; 8]),
            parent_is_remote: false,
            trace_flags: 1,
            trace_state: "".into(),
            name: name.into(),
            kind: SpanKind::Internal,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: resource.into(),
            dropped_attributes_count: 0,
            events: (&[][..]).into(),
            dropped_events_count: 0,
            links: (&[][..]).into(),
            dropped_links_count: 0,
            status: Status {
                code: StatusCode::Unset,
                description: "".into(),
            },
            scope: Scope {
                name: "batch-test".into(),
                version: "".into(),
                schema_url: "".into(),
                attributes: (&[][..]).into(),
            },
            resource: Resource {
                attributes: resource.into(),
                schema_url: "".into(),
                id: 7,
            },
        }
    }

    #[test]
    fn lines_fill_up_to_the_batch_size_in_order_whenever_the_writer_takes_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let file = SpanFile::create(dir.path(), 1).unwrap();
        let path = file.path().to_owned();
        let config = BatchConfig {
            schedule_delay: Duration::from_secs(3600),
            max_queue_size: 1000,
            max_export_batch_size: 3,
        };
        let batch = BatchFile::start(file, config).unwrap();
        let resource = [KeyValue::new("service.name", Value::Str("svc".into()))];
        let names: Vec<String> = (0..100).map(|i| format!("span-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            batch.on_end(&record(name, &resource));
            if i % 7 == 0 {
                // Let the writer take the queue at various points of a line.
                std::thread::yield_now();
            }
        }
        batch.force_flush(Duration::from_secs(30)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut per_line = Vec::new();
        let mut written = Vec::new();
        for line in text.lines() {
            let data: TracesData = serde_json::from_str(line).unwrap();
            let spans = &data.resource_spans[0].scope_spans[0].spans;
            per_line.push(spans.len());
            written.extend(spans.iter().map(|s| s.name.clone()));
        }
        assert_eq!(written, names, "every span once, in order");
        let mut expected = vec![3; 33];
        expected.push(1);
        assert_eq!(per_line, expected);
        batch.shutdown(Duration::from_secs(30)).unwrap();
        assert_eq!(batch.stats().exported, 100);
    }
}
