//! Filament's Jaeger tracing hook: every process of a cluster sends its spans to Jaeger, or to any
//! receiver of the OpenTelemetry protocol (OTLP).
//!
//! Hook string: `filament_jaeger:setup_tracing` (or the library's path). The same compiled program
//! switches from the local-file plugin to Jaeger, or writes to both
//! (`filament_jaeger:setup_tracing,filament_local_file:setup_tracing`), by changing that string
//! only.
//!
//! # Transport
//!
//! OTLP, which Jaeger ingests natively since 1.35 (Jaeger v2 is built on it), through the
//! `opentelemetry-otlp` crate, configured as the OpenTelemetry specification says:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL` | `http/protobuf`, `http/json` or `grpc` | `http/protobuf` |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | the URL, used as it is | |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | the base URL (`/v1/traces` appended for HTTP) | `http://localhost:4318`, gRPC `http://localhost:4317` |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)HEADERS` | `name=value,…`, values percent-encoded | |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)TIMEOUT` | milliseconds per request | 10000 |
//! | `OTEL_EXPORTER_OTLP_(TRACES_)COMPRESSION` | `gzip` or `none` | `none` |
//! | `OTEL_BSP_*` | batching (queue, batch size, delay, export timeout) | the specification's |
//! | `OTEL_SERVICE_NAME` | the service Jaeger lists | the host's, else the program's name |
//!
//! Every value is read through the setup handle: a configuration value of the cluster
//! (`Config::tracing_config`, so a standing cluster is configured once) wins over the process's
//! environment. A malformed URL, an unknown protocol or a header string that does not parse is an
//! error at setup that names the variable and its value: `filament start --head` refuses the hook
//! and `filament::init` fails fast.
//!
//! The process's resource attributes (pid, role, job, node and worker ids, and `host.name`,
//! added here) are what Jaeger shows as the process's tags.
//!
//! # Legacy transports
//!
//! For Jaeger deployments older than OTLP ingestion, `FILAMENT_JAEGER_PROTOCOL` picks a legacy
//! transport of the `opentelemetry-jaeger` crate (its last release, 0.22):
//!
//! | `FILAMENT_JAEGER_PROTOCOL` | transport | settings |
//! |---|---|---|
//! | `otlp` (default) | OTLP, as above | `OTEL_EXPORTER_OTLP_*` |
//! | `thrift-udp` | the agent: compact thrift over UDP, batches split into packets | `OTEL_EXPORTER_JAEGER_AGENT_HOST` (`localhost`), `…_AGENT_PORT` (6831) |
//! | `thrift-http` | the collector: binary thrift over HTTP | `OTEL_EXPORTER_JAEGER_ENDPOINT` (`http://localhost:14268/api/traces`), `…_TIMEOUT`, `…_USER`, `…_PASSWORD` |
//!
//! That crate is built on `opentelemetry` 0.23, the rest of this plugin on 0.33: both copies live
//! inside this shared object and never meet each other or the host's, because nothing of
//! `opentelemetry` crosses the hook boundary — only the stable ABI record does. That is what the
//! boundary is for. (`opentelemetry-jaeger` also reads the `OTEL_EXPORTER_JAEGER_*` variables from
//! the process environment itself, and there the environment wins: a cluster configuration value
//! that disagrees with a worker's environment loses for these legacy settings only.)
//!
//! # Threads
//!
//! Spans are batched by [`filament_plugin_otel::BatchProcessor`] on a thread of its own: a task
//! never waits for Jaeger. A receiver that is down, slow or answers errors costs dropped spans,
//! counted and reported once per process (a warning at the first loss, a summary at shutdown),
//! and export resumes when the receiver is back. OTLP/HTTP needs no async runtime; OTLP/gRPC runs
//! on a one-thread tokio runtime owned by the plugin and stopped at shutdown.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod config;
pub mod exporter;
pub mod legacy;

use config::{ExporterConfig, OTEL_SERVICE_NAME, Transport};
use exporter::{Destined, Exporter, OtlpExporter, ProcessResource};
use filament_plugin_api::{LogLevel, TracingSetup, export_hook};
use filament_plugin_otel::{BatchConfig, BatchProcessor};
use legacy::{Legacy, LegacyExporter};

/// The processor's name in the host's reports and in this plugin's warnings.
pub const PROCESSOR_NAME: &str = "filament_jaeger";

export_hook!(setup_tracing);

/// The hook: reads and checks the configuration, builds the exporter and adds the batch processor.
fn setup_tracing(setup: &mut TracingSetup<'_>) -> Result<(), String> {
    let lookup = |key: &str| setup.config(key);
    let transport = config::transport(lookup).map_err(|e| e.to_string())?;
    let batch = BatchConfig::from_setup(setup).map_err(|e| e.to_string())?;
    let service_name = lookup(OTEL_SERVICE_NAME)
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    let (exporter, destination) = match transport {
        Transport::Otlp => {
            let config = ExporterConfig::from_lookup(lookup).map_err(|e| e.to_string())?;
            let destination = format!("OTLP {} to {}", config.protocol.as_str(), config.endpoint);
            let exporter = OtlpExporter::new(&config)
                .map_err(|e| format!("cannot build the {destination} exporter: {e}"))?;
            (Exporter::Otlp(Box::new(exporter)), destination)
        }
        Transport::ThriftUdp | Transport::ThriftHttp => {
            let legacy = if transport == Transport::ThriftUdp {
                Legacy::agent(lookup)
            } else {
                Legacy::collector(lookup)
            }
            .map_err(|e| e.to_string())?;
            let destination = legacy.describe();
            (Exporter::Legacy(LegacyExporter::new(legacy)), destination)
        }
    };
    let processor = BatchProcessor::new(
        PROCESSOR_NAME,
        ProcessResource::new(Destined::new(exporter, destination.clone()), service_name),
        batch,
    )
    .map_err(|e| format!("cannot start the export thread: {e}"))?;
    setup.log(
        LogLevel::Debug,
        &format!("exporting spans to {destination}"),
    );
    setup.add_span_processor(processor);
    Ok(())
}
