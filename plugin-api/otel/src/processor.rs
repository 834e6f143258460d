//! The processors: any [`SpanExporter`] behind a Filament [`SpanProcessor`].
//!
//! A record is converted to [`SpanData`] on the thread that ended the span (the only moment the
//! borrowed record is valid) and handed to a bounded queue with `try_send`: a full queue drops the
//! span and counts it, so `on_end` never waits. One thread of the processor's own takes spans off
//! the queue, groups them into batches and calls the exporter; it owns the exporter, so exports are
//! never concurrent, as the SDK's contract asks. No async runtime is needed: an export's future is
//! polled on that thread and abandoned when its timeout passes.
//!
//! Losses are counted and told twice per processor at most: one warning at the first loss, with
//! its cause, and a summary when the processor shuts down.

use crate::config::BatchConfig;
use crate::convert;
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select, unbounded};
use filament_plugin_api::{ProcessorError, ProcessorStats, SpanProcessor, SpanRecord};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkError;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::fmt;
use std::future::Future;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// A finished span on its way to the export thread, with the resource of its process.
struct Item {
    span: SpanData,
    resource: Arc<Resource>,
}

enum Control {
    Flush(Sender<Result<(), ProcessorError>>, Instant),
    Shutdown(Sender<Result<(), ProcessorError>>, Instant),
}

/// What became of the spans, shared by the processor and its thread.
#[derive(Debug, Default)]
struct Counters {
    /// Spans that entered the queue.
    queued: AtomicU64,
    exported: AtomicU64,
    queue_full: AtomicU64,
    failed: AtomicU64,
    after_shutdown: AtomicU64,
    /// Shutdown returned: spans still on their way then are lost with the process.
    shutdown_returned: AtomicBool,
    warned: AtomicBool,
    first_failure: Mutex<Option<String>>,
}

impl Counters {
    fn dropped(&self) -> u64 {
        self.queue_full.load(Ordering::Relaxed)
            + self.failed.load(Ordering::Relaxed)
            + self.after_shutdown.load(Ordering::Relaxed)
    }

    /// The one warning of the processor's life, at its first loss.
    fn warn_once(&self, name: &str, cause: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!(
                "{name}: dropping spans: {cause} (warned once; losses are counted and summed up at shutdown)"
            );
        }
    }

    fn failure(&self, name: &str, spans: usize, error: &str) {
        self.failed.fetch_add(spans as u64, Ordering::Relaxed);
        let mut first = self.first_failure.lock().unwrap_or_else(|p| p.into_inner());
        if first.is_none() {
            *first = Some(error.to_owned());
        }
        drop(first);
        self.warn_once(name, &format!("an export of {spans} spans failed: {error}"));
    }

    /// Queued spans neither exported nor failed: waiting, or in an export under way (after
    /// shutdown, one that outlived it).
    fn pending(&self) -> u64 {
        self.queued.load(Ordering::Relaxed).saturating_sub(
            self.exported.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed),
        )
    }

    /// What [`SpanProcessor::stats`] says: the spans lost, those shutdown stopped waiting for
    /// included.
    fn stats(&self) -> ProcessorStats {
        let abandoned = if self.shutdown_returned.load(Ordering::Relaxed) {
            self.pending()
        } else {
            0
        };
        ProcessorStats {
            exported: self.exported.load(Ordering::Relaxed),
            dropped: self.dropped() + abandoned,
        }
    }

    /// The summary line, when anything was lost or is still on its way.
    fn summary(&self, name: &str) -> Option<String> {
        let dropped = self.dropped();
        let pending = self.pending();
        if dropped == 0 && pending == 0 {
            return None;
        }
        let pending = if pending > 0 {
            format!("; {pending} still being exported when shutdown stopped waiting")
        } else {
            String::new()
        };
        let first = self
            .first_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Some(format!(
            "{name}: {} spans exported, {dropped} dropped ({} on a full queue, {} failed to export{}, {} after shutdown){pending}",
            self.exported.load(Ordering::Relaxed),
            self.queue_full.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            first
                .map(|e| format!(", first failure: {e}"))
                .unwrap_or_default(),
            self.after_shutdown.load(Ordering::Relaxed),
        ))
    }
}

/// The resource of the last record, converted once: a process's spans share one resource.
#[derive(Default)]
struct ResourceCache(Mutex<Option<(u64, Arc<Resource>)>>);

impl ResourceCache {
    fn get(&self, resource: &filament_plugin_api::Resource<'_>) -> Arc<Resource> {
        if resource.id == 0 {
            return Arc::new(convert::resource(resource));
        }
        let mut cached = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match &*cached {
            Some((id, converted)) if *id == resource.id => converted.clone(),
            _ => {
                let converted = Arc::new(convert::resource(resource));
                *cached = Some((resource.id, converted.clone()));
                converted
            }
        }
    }
}

/// Exports spans in batches with any SDK [`SpanExporter`], with the specification's batch
/// semantics (see [`BatchConfig`]): a batch leaves when it is full or when the schedule delay has
/// passed since the last export; a full queue drops and counts; flush and shutdown wait at most
/// their timeout.
///
/// # Threading contract
///
/// `on_end` is called on the thread that ended the span and never blocks: it converts the record,
/// then `try_send`s it to the queue. Exports happen on the processor's own thread, one at a time.
/// Only sampled spans are exported, as the specification says of the batch processor.
pub struct BatchProcessor {
    name: String,
    spans: Sender<Item>,
    control: Sender<Control>,
    counters: Arc<Counters>,
    resources: ResourceCache,
    shut_down: AtomicBool,
    thread: Mutex<Option<JoinHandle<()>>>,
    config: BatchConfig,
}

impl fmt::Debug for BatchProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchProcessor")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl BatchProcessor {
    /// Starts the export thread, named after the processor (`name` also heads its warnings and
    /// the host's reports), and returns the processor to add with
    /// [`TracingSetup::add_span_processor`](filament_plugin_api::TracingSetup::add_span_processor).
    pub fn new<E: SpanExporter + 'static>(
        name: impl Into<String>,
        exporter: E,
        config: BatchConfig,
    ) -> io::Result<Self> {
        let name = name.into();
        let config = BatchConfig {
            max_queue_size: config.max_queue_size.max(1),
            max_export_batch_size: config
                .max_export_batch_size
                .clamp(1, config.max_queue_size.max(1)),
            ..config
        };
        let (spans, queue) = bounded(config.max_queue_size);
        let (control, requests) = unbounded();
        let counters = Arc::new(Counters::default());
        let worker = Worker {
            name: name.clone(),
            exporter,
            config,
            counters: counters.clone(),
            batch: Vec::with_capacity(config.max_export_batch_size),
            resource: None,
        };
        let thread = thread::Builder::new()
            .name(format!("{name}-export"))
            .spawn(move || worker.run(queue, requests))?;
        Ok(BatchProcessor {
            name,
            spans,
            control,
            counters,
            resources: ResourceCache::default(),
            shut_down: AtomicBool::new(false),
            thread: Mutex::new(Some(thread)),
            config,
        })
    }

    /// The settings in use (after the batch size was bounded by the queue size).
    pub fn config(&self) -> BatchConfig {
        self.config
    }

    fn request(
        &self,
        make: impl FnOnce(Sender<Result<(), ProcessorError>>, Instant) -> Control,
        timeout: Duration,
    ) -> Result<(), ProcessorError> {
        let (reply, answer) = bounded(1);
        self.control
            .send(make(reply, Instant::now() + timeout))
            .map_err(|_| ProcessorError::AlreadyShutdown)?;
        match answer.recv_timeout(timeout) {
            Ok(result) => result,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                Err(ProcessorError::Timeout(timeout.into()))
            }
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(ProcessorError::failed(
                format!("{}: the export thread ended", self.name),
            )),
        }
    }
}

impl SpanProcessor for BatchProcessor {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn on_end(&self, span: &SpanRecord<'_>) {
        if span.trace_flags & 1 == 0 {
            return;
        }
        if self.shut_down.load(Ordering::Relaxed) {
            self.counters.after_shutdown.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let item = Item {
            span: convert::span_data(span),
            resource: self.resources.get(&span.resource),
        };
        match self.spans.try_send(item) {
            Ok(()) => {
                self.counters.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.counters.queue_full.fetch_add(1, Ordering::Relaxed);
                self.counters.warn_once(
                    &self.name,
                    &format!(
                        "the export queue is full ({} spans)",
                        self.config.max_queue_size
                    ),
                );
            }
            Err(TrySendError::Disconnected(_)) => {
                self.counters.after_shutdown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn force_flush(&self, timeout: Duration) -> Result<(), ProcessorError> {
        if self.shut_down.load(Ordering::Relaxed) {
            return Err(ProcessorError::AlreadyShutdown);
        }
        self.request(Control::Flush, timeout)
    }

    fn shutdown(&self, timeout: Duration) -> Result<(), ProcessorError> {
        if self.shut_down.swap(true, Ordering::Relaxed) {
            return Err(ProcessorError::AlreadyShutdown);
        }
        let result = self.request(Control::Shutdown, timeout);
        if result.is_ok() {
            // The thread answered as its last act: joining it is immediate.
            let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
        }
        self.counters
            .shutdown_returned
            .store(true, Ordering::Relaxed);
        if let Some(summary) = self.counters.summary(&self.name) {
            eprintln!("{summary}");
        }
        result
    }

    fn stats(&self) -> ProcessorStats {
        self.counters.stats()
    }

    fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }
}

/// Exports each span on its own, as soon as it ends: the specification's simple processor, for
/// exporters and tests that want no batching.
///
/// Unlike the SDK's `SimpleSpanProcessor`, it does not export on the thread that ended the span:
/// Filament's telemetry never blocks a task. Spans wait in a bounded queue (`max_queue_size`
/// of [`BatchConfig`]) and one thread exports them one per call; a full queue drops and counts.
#[derive(Debug)]
pub struct SimpleProcessor(BatchProcessor);

impl SimpleProcessor {
    /// Starts the export thread. Of `config`, the queue size and the export timeout are used.
    pub fn new<E: SpanExporter + 'static>(
        name: impl Into<String>,
        exporter: E,
        config: BatchConfig,
    ) -> io::Result<Self> {
        let config = BatchConfig {
            max_export_batch_size: 1,
            ..config
        };
        BatchProcessor::new(name, exporter, config).map(SimpleProcessor)
    }
}

impl SpanProcessor for SimpleProcessor {
    fn name(&self) -> String {
        self.0.name()
    }
    fn on_end(&self, span: &SpanRecord<'_>) {
        self.0.on_end(span);
    }
    fn force_flush(&self, timeout: Duration) -> Result<(), ProcessorError> {
        self.0.force_flush(timeout)
    }
    fn shutdown(&self, timeout: Duration) -> Result<(), ProcessorError> {
        self.0.shutdown(timeout)
    }
    fn stats(&self) -> ProcessorStats {
        self.0.stats()
    }
    fn failed(&self) -> u64 {
        self.0.failed()
    }
}

/// The export thread's state.
struct Worker<E> {
    name: String,
    exporter: E,
    config: BatchConfig,
    counters: Arc<Counters>,
    batch: Vec<SpanData>,
    /// The resource the exporter was last given.
    resource: Option<Arc<Resource>>,
}

impl<E: SpanExporter> Worker<E> {
    fn run(mut self, queue: Receiver<Item>, requests: Receiver<Control>) {
        let mut next_export = Instant::now() + self.config.schedule_delay;
        loop {
            let wait = next_export.saturating_duration_since(Instant::now());
            select! {
                recv(requests) -> request => match request {
                    Ok(Control::Flush(reply, deadline)) => {
                        let _ = reply.send(self.drain(&queue, deadline));
                        next_export = Instant::now() + self.config.schedule_delay;
                    }
                    Ok(Control::Shutdown(reply, deadline)) => {
                        let drained = self.drain(&queue, deadline);
                        let stopped = self
                            .exporter
                            .shutdown_with_timeout(deadline.saturating_duration_since(Instant::now()))
                            .map_err(|e| sdk_error(&self.name, "shutdown", e));
                        let _ = reply.send(drained.and(stopped));
                        return;
                    }
                    // The processor was dropped without a shutdown: export what is left.
                    Err(_) => {
                        let deadline = Instant::now() + self.config.export_timeout;
                        let _ = self.drain(&queue, deadline);
                        return;
                    }
                },
                recv(queue) -> item => match item {
                    Ok(item) => {
                        self.add(item);
                        if self.batch.len() >= self.config.max_export_batch_size {
                            let _ = self.export(Instant::now() + self.config.export_timeout);
                            next_export = Instant::now() + self.config.schedule_delay;
                        }
                    }
                    Err(_) => {
                        let deadline = Instant::now() + self.config.export_timeout;
                        let _ = self.drain(&queue, deadline);
                        return;
                    }
                },
                default(wait) => {}
            }
            // Spans that trickle in never let `default` fire: check the delay after each one.
            if Instant::now() >= next_export {
                if !self.batch.is_empty() {
                    let _ = self.export(Instant::now() + self.config.export_timeout);
                }
                next_export = Instant::now() + self.config.schedule_delay;
            }
        }
    }

    /// Adds a span to the batch; a span of another resource first sends the batch of the old one.
    fn add(&mut self, item: Item) {
        let same = self
            .resource
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, &item.resource) || **r == *item.resource);
        if !same {
            if !self.batch.is_empty() {
                let _ = self.export(Instant::now() + self.config.export_timeout);
            }
            self.exporter.set_resource(&item.resource);
            self.resource = Some(item.resource);
        }
        self.batch.push(item.span);
    }

    /// Exports the batch; counts its spans as exported or failed.
    fn export(&mut self, deadline: Instant) -> Result<(), ProcessorError> {
        let batch = std::mem::take(&mut self.batch);
        self.batch.reserve(self.config.max_export_batch_size);
        let spans = batch.len();
        let started = Instant::now();
        let deadline = deadline.min(started + self.config.export_timeout);
        // An exporter that panics fails this batch; the thread goes on with the next one.
        let exported = catch_unwind(AssertUnwindSafe(|| {
            block_on_until(self.exporter.export(batch), deadline)
        }))
        .unwrap_or_else(|payload| {
            Some(Err(OTelSdkError::InternalFailure(format!(
                "the exporter panicked: {}",
                filament_plugin_api::processor::panic_message(&*payload)
            ))))
        });
        let (error, message) = match exported {
            Some(Ok(())) => {
                self.counters
                    .exported
                    .fetch_add(spans as u64, Ordering::Relaxed);
                return Ok(());
            }
            Some(Err(error)) => {
                let error = sdk_error(&self.name, "export", error);
                let message = error.to_string();
                (error, message)
            }
            None => {
                let limit = deadline.saturating_duration_since(started);
                (
                    ProcessorError::Timeout(limit.into()),
                    format!("the export did not finish within {limit:?}"),
                )
            }
        };
        self.counters.failure(&self.name, spans, &message);
        Err(error)
    }

    /// Exports everything queued so far, batch by batch, until the deadline.
    fn drain(&mut self, queue: &Receiver<Item>, deadline: Instant) -> Result<(), ProcessorError> {
        let mut outcome = Ok(());
        loop {
            while self.batch.len() < self.config.max_export_batch_size {
                match queue.try_recv() {
                    Ok(item) => self.add(item),
                    Err(_) => break,
                }
            }
            if self.batch.is_empty() {
                return outcome;
            }
            if Instant::now() >= deadline {
                let left = self.batch.len() + queue.len();
                self.batch.clear();
                while queue.try_recv().is_ok() {}
                let why = "the flush or shutdown timeout passed before they could be exported";
                self.counters.failure(&self.name, left, why);
                return Err(ProcessorError::failed(format!(
                    "{}: {left} spans dropped: {why}",
                    self.name
                )));
            }
            if let Err(error) = self.export(deadline) {
                outcome = Err(error);
            }
        }
    }
}

fn sdk_error(name: &str, what: &str, error: OTelSdkError) -> ProcessorError {
    match error {
        OTelSdkError::AlreadyShutdown => ProcessorError::AlreadyShutdown,
        OTelSdkError::Timeout(after) => ProcessorError::Timeout(after.into()),
        OTelSdkError::InternalFailure(message) => {
            ProcessorError::failed(format!("{name}: {what} failed: {message}"))
        }
        #[allow(unreachable_patterns)]
        other => ProcessorError::failed(format!("{name}: {what} failed: {other}")),
    }
}

/// Wakes the export thread when the future it polls can make progress.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls a future on this thread until it is ready or the deadline passes (then drops it).
///
/// Exporters that do their I/O with blocking calls inside `poll` (`reqwest`'s blocking client)
/// bound it with their own timeout; the deadline bounds every other wait.
fn block_on_until<F: Future>(future: F, deadline: Instant) -> Option<F::Output> {
    let mut future = pin!(future);
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return Some(output);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::park_timeout(deadline - now);
    }
}
