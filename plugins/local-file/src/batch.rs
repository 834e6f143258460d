//! The batched mode (`FILAMENT_LOCAL_FILE_MODE=batch`): many spans per line under one resource.
//!
//! The thread that ends a span encodes it (the record is borrowed, so it cannot wait) and hands the
//! bytes to a bounded queue without blocking; a full queue drops the span and counts it. One writer
//! thread joins queued spans of the same resource and scope into one line and writes it with the
//! span file's single `write` (whole lines, a deleted file made again) when the line holds
//! `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans, when `OTEL_BSP_SCHEDULE_DELAY` has passed since its first
//! span, at `force_flush` and at `shutdown`.
//!
//! What a process that exits without shutting down loses: the spans still queued or in the line
//! being built, at most those that ended in the last `OTEL_BSP_SCHEDULE_DELAY`. What reached the
//! file is whole lines, every span at most once.

use crate::{Frame, Frames, SpanFile};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use filament_plugin_api::{ProcessorError, ProcessorStats, SpanProcessor, SpanRecord};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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

enum Message {
    Span(Arc<Frame>, Vec<u8>),
    Flush(Sender<()>),
    Shutdown(Sender<()>),
}

/// A span file written in batches by a thread of its own.
#[derive(Debug)]
pub struct BatchFile {
    file: Arc<SpanFile>,
    frames: Mutex<Frames>,
    memo: Mutex<crate::json::AttributeMemo>,
    queue: Sender<Message>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closing: AtomicBool,
    warned_full: AtomicBool,
    /// The length of the last span's JSON: the next one's buffer is made that big.
    span_size: AtomicUsize,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Span(..) => "Span",
            Message::Flush(_) => "Flush",
            Message::Shutdown(_) => "Shutdown",
        })
    }
}

impl BatchFile {
    /// Starts the writer thread of `file`.
    pub fn start(file: SpanFile, config: BatchConfig) -> std::io::Result<Self> {
        let file = Arc::new(file);
        let (queue, spans) = crossbeam_channel::bounded(config.max_queue_size);
        let writer = {
            let file = Arc::clone(&file);
            std::thread::Builder::new()
                .name("filament-local-file".into())
                .spawn(move || write_batches(&file, &spans, config))?
        };
        Ok(BatchFile {
            file,
            frames: Mutex::new(Frames::default()),
            memo: Mutex::default(),
            queue,
            writer: Mutex::new(Some(writer)),
            closing: AtomicBool::new(false),
            warned_full: AtomicBool::new(false),
            span_size: AtomicUsize::new(768),
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
        match self.queue.send_deadline(message(done), deadline) {
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

    /// Called on the thread that ended the span: encodes it and queues it, never waiting.
    fn on_end(&self, span: &SpanRecord<'_>) {
        if self.closing.load(Ordering::Relaxed) {
            self.file.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let frame = self
            .frames
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .of_record(span);
        // Room for a span like the last one, so that the encoder does not grow the buffer.
        let mut json = Vec::with_capacity(self.span_size.load(Ordering::Relaxed) + 128);
        // The memo if no other thread is encoding with it (never waits for it).
        let mut memo = match self.memo.try_lock() {
            Ok(memo) => Some(memo),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        let encoded = frame.and_then(|frame| {
            crate::json::span(&mut json, span, memo.as_deref_mut()).map(|()| frame)
        });
        drop(memo);
        self.span_size.store(json.len(), Ordering::Relaxed);
        let frame = match encoded {
            Ok(frame) => frame,
            Err(error) => return self.file.count(Err(std::io::Error::other(error)), 1),
        };
        match self.queue.try_send(Message::Span(frame, json)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.drop_span(&format!(
                "the queue of spans to write is full ({MAX_QUEUE_SIZE_KEY})"
            )),
            Err(TrySendError::Disconnected(_)) => self.drop_span("the span writer thread is gone"),
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

/// The writer thread: joins spans into lines and writes them.
fn write_batches(file: &SpanFile, spans: &Receiver<Message>, config: BatchConfig) {
    let mut line = Line::default();
    loop {
        let message = match line.due {
            Some(due) => spans.recv_deadline(due),
            None => spans.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match message {
            Ok(Message::Span(frame, json)) => {
                if line.frame.as_ref().is_some_and(|f| !Arc::ptr_eq(f, &frame)) {
                    line.write(file);
                }
                line.add(frame, &json, config.schedule_delay);
                if line.spans as usize >= config.max_export_batch_size {
                    line.write(file);
                }
            }
            Ok(Message::Flush(done)) => {
                line.write(file);
                let _ = done.send(());
            }
            Ok(Message::Shutdown(done)) => {
                line.write(file);
                // Spans that raced with the shutdown are not written: counted.
                let late = spans
                    .try_iter()
                    .filter(|m| matches!(m, Message::Span(..)))
                    .count();
                file.dropped.fetch_add(late as u64, Ordering::Relaxed);
                let _ = done.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => line.write(file),
            Err(RecvTimeoutError::Disconnected) => {
                line.write(file);
                return;
            }
        }
    }
}

/// The line being built: its frame's head, the spans so far, and when it is due.
#[derive(Default)]
struct Line {
    frame: Option<Arc<Frame>>,
    bytes: Vec<u8>,
    spans: u64,
    due: Option<Instant>,
}

impl Line {
    fn add(&mut self, frame: Arc<Frame>, json: &[u8], delay: Duration) {
        if self.spans == 0 {
            self.bytes.clear();
            self.bytes.extend_from_slice(&frame.head);
            self.frame = Some(frame);
            self.due = Some(Instant::now() + delay);
        } else {
            self.bytes.push(b',');
        }
        self.bytes.extend_from_slice(json);
        self.spans += 1;
    }

    fn write(&mut self, file: &SpanFile) {
        let Some(frame) = self.frame.take() else {
            return;
        };
        self.bytes.extend_from_slice(&frame.tail);
        let mut state = file.lock();
        let result = file.write_spans(&mut state, &self.bytes, self.spans);
        drop(state);
        file.count(result, self.spans);
        self.spans = 0;
        self.due = None;
        self.bytes.clear();
        if self.bytes.capacity() > 4 << 20 {
            self.bytes.shrink_to(1 << 20);
        }
    }
}
