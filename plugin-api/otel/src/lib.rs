//! Any OpenTelemetry SDK span exporter as a Filament tracing plugin.
//!
//! # Why this crate exists
//!
//! A Filament hook plugin receives finished spans as borrowed [`SpanRecord`]s, the stable-ABI type
//! of [`filament_plugin_api`], while every exporter of the OpenTelemetry Rust ecosystem
//! (`opentelemetry-otlp`, `opentelemetry-stdout`, `opentelemetry-zipkin`, vendors' crates) consumes
//! the SDK's [`SpanData`](opentelemetry_sdk::trace::SpanData). This crate is the bridge, for
//! plugin authors (the ABI crate stays free of `opentelemetry`):
//!
//! - [`convert`] turns a record into `SpanData` faithfully: ids, parent, kind, name, times,
//!   attributes of every value type (arrays too), events, links, status, dropped counts, scope,
//!   and the resource, which an exporter is given with `set_resource`;
//! - [`BatchProcessor`] wraps any `SpanExporter` as a Filament [`SpanProcessor`] with the
//!   specification's batch semantics — a bounded queue, `OTEL_BSP_SCHEDULE_DELAY`,
//!   `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_EXPORT_TIMEOUT` read
//!   through the setup handle ([`BatchConfig::from_setup`]); a full queue drops and counts and never
//!   blocks the thread that ended the span; flush and shutdown wait at most their timeout;
//! - [`SimpleProcessor`] exports each span on its own, like the SDK's `SimpleSpanProcessor` (but
//!   from its own thread: Filament's telemetry never blocks a task).
//!
//! Both run one thread of their own and need no async runtime. Their counts reach the host:
//! exported and dropped through [`SpanProcessor::stats`], spans the exporter failed to deliver
//! through [`SpanProcessor::failed`] (those are lost, so they are in `dropped` too).
//!
//! Each plugin links its own copy of `opentelemetry`: the version this crate uses is the plugin's
//! business, never the host's.
//!
//! # A plugin in twenty lines
//!
//! With `opentelemetry-stdout`'s exporter, the whole plugin is:
//!
//! ```no_run
//! use filament_plugin_api::{export_hook, TracingSetup};
//! use filament_plugin_otel::{BatchConfig, BatchProcessor};
//!
//! fn setup_tracing(setup: &mut TracingSetup<'_>) -> Result<(), String> {
//!     let config = BatchConfig::from_setup(setup).map_err(|e| e.to_string())?;
//!     let exporter = opentelemetry_stdout::SpanExporter::default();
//!     let processor = BatchProcessor::new("stdout", exporter, config).map_err(|e| e.to_string())?;
//!     setup.add_span_processor(processor);
//!     Ok(())
//! }
//!
//! export_hook!(setup_tracing);
//! ```
//!
//! `examples/otel-hook-template` in Filament's repository is that plugin, ready to copy.
//!
//! # Any exporter
//!
//! The processors take anything that implements the SDK's `SpanExporter`. This one counts spans,
//! and the record made by hand stands for one the host hands over:
//!
//! ```
//! use filament_plugin_api::{SpanProcessor, SpanRecord, TraceId, SpanId, SpanKind, Status,
//!     StatusCode, Scope, Resource};
//! use filament_plugin_otel::{BatchConfig, BatchProcessor};
//! use opentelemetry_sdk::error::OTelSdkResult;
//! use opentelemetry_sdk::trace::{SpanData, SpanExporter};
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! #[derive(Debug, Default)]
//! struct Counting(Arc<AtomicUsize>);
//!
//! impl SpanExporter for Counting {
//!     async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
//!         self.0.fetch_add(batch.len(), Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! let exporter = Counting::default();
//! let seen = exporter.0.clone();
//! let processor = BatchProcessor::new("counting", exporter, BatchConfig::default()).unwrap();
//!
//! let record = SpanRecord {
//!     trace_id: TraceId([1; 16]),
//!     span_id: SpanId([2; 8]),
//!     parent_span_id: SpanId::default(),
//!     parent_is_remote: false,
//!     trace_flags: 1, // sampled
//!     trace_state: "".into(),
//!     name: "work".into(),
//!     kind: SpanKind::Internal,
//!     start_time_unix_nano: 1_700_000_000_000_000_000,
//!     end_time_unix_nano: 1_700_000_000_000_001_000,
//!     attributes: Default::default(),
//!     dropped_attributes_count: 0,
//!     events: Default::default(),
//!     dropped_events_count: 0,
//!     links: Default::default(),
//!     dropped_links_count: 0,
//!     status: Status { code: StatusCode::Unset, description: "".into() },
//!     scope: Scope { name: "doc".into(), version: "".into(), schema_url: "".into(),
//!         attributes: Default::default() },
//!     resource: Resource { attributes: Default::default(), schema_url: "".into(), id: 1 },
//! };
//! processor.on_end(&record);
//! processor.shutdown(Duration::from_secs(5)).unwrap();
//! assert_eq!(seen.load(Ordering::Relaxed), 1);
//! assert_eq!(processor.stats().exported, 1);
//! ```

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod convert;
mod processor;

pub use config::{BatchConfig, ConfigError};
pub use processor::{BatchProcessor, SimpleProcessor};

#[doc(no_inline)]
pub use filament_plugin_api::{SpanProcessor, SpanRecord};
