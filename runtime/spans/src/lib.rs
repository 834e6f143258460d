//! Reading and showing the span files that Filament's local-file plugin writes — one file per
//! process, one OTLP/JSON `TracesData` per line — and those of any OpenTelemetry file exporter,
//! with no tracing backend: the `filament spans` command.
//!
//! The pieces follow the data: [`read`] reads folders of span files into a [`read::SpanSet`]
//! (one reader per file, across the cores; bad input becomes a [`problem::Problem`] naming the
//! file and line, never a panic); [`tree::Forest`] groups the spans into one tree per trace,
//! across processes; [`select::Selection`] chooses traces; the views print trees
//! ([`tree::write_trees`]), figures ([`summary::Summary`]) or write an HTML page
//! ([`html::write_html`]); [`export`] replays the files to an OTLP/HTTP endpoint. [`cli`] is the
//! command line that `filament spans` embeds.
//!
//! ```
//! use filament_spans::read::{ReadOptions, read};
//! use filament_spans::tree::{Forest, TreeStyle, write_trees};
//!
//! let dir = tempfile::tempdir()?;
//! std::fs::write(
//!     dir.path().join("42.json"),
//!     r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"filament.role","value":{"stringValue":"driver"}}]},"scopeSpans":[{"spans":[{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331","name":"hello","kind":1,"startTimeUnixNano":"1000","endTimeUnixNano":"251000"}]}]}]}
//! "#,
//! )?;
//! let set = read(&[dir.path().to_path_buf()], ReadOptions::default());
//! assert!(set.problems.is_empty());
//! let forest = Forest::build(&set.spans);
//! let traces: Vec<_> = forest.traces.iter().collect();
//! let mut out = Vec::new();
//! write_trees(&mut out, &set.spans, &traces, TreeStyle::default())?;
//! assert_eq!(
//!     String::from_utf8(out)?,
//!     "trace 0af7651916cd43dd8448eb211c80319c\n└─ hello (internal, 250.0 µs, pid 42)\n"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod cli;
pub mod export;
pub mod html;
mod lines;
pub mod model;
pub mod problem;
pub mod read;
pub mod select;
pub mod summary;
pub mod time;
pub mod tree;

pub use lines::MAX_LINE;
