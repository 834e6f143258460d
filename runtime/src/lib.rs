//! Filament: a task runtime in the spirit of Ray whose tracing is a plugin.
//!
//! A *tracing startup hook* — a `library:symbol` string given at startup — names a shared object
//! built against [`filament_plugin_api`] that configures OpenTelemetry for the process: where spans
//! go (a file per process, Jaeger, your own backend), how they are sampled, which resource describes
//! the process. [`tracing`] loads and checks hooks and routes every span of the process to them.

#![warn(missing_docs)]

pub mod tracing;

pub use filament_plugin_api as plugin_api;
