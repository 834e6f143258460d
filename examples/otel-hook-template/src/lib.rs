//! A Filament tracing hook that exports with an OpenTelemetry SDK exporter: here
//! `opentelemetry-stdout`'s, which prints every span to standard output. Swap the exporter for any
//! other (`opentelemetry-otlp`, `opentelemetry-zipkin`, a vendor's) and keep the rest.
//!
//! Hook string: `filament_otel_hook_template:setup_tracing`.

#![forbid(unsafe_code)]

use filament_plugin_api::{TracingSetup, export_hook};
use filament_plugin_otel::{BatchConfig, BatchProcessor};

export_hook!(setup_tracing);

/// Batches spans (`OTEL_BSP_*`, read through the handle) on a thread of the processor's own, and
/// hands each batch to the exporter.
fn setup_tracing(setup: &mut TracingSetup<'_>) -> Result<(), String> {
    let config = BatchConfig::from_setup(setup).map_err(|e| e.to_string())?;
    let exporter = opentelemetry_stdout::SpanExporter::default();
    let processor = BatchProcessor::new("stdout", exporter, config)
        .map_err(|e| format!("cannot start the export thread: {e}"))?;
    setup.add_span_processor(processor);
    Ok(())
}
