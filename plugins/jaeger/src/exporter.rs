//! The OTLP exporter the plugin hands to the batch processor: `opentelemetry-otlp` over HTTP (no
//! async runtime: its blocking client) or over gRPC (tonic, on a small tokio runtime this plugin
//! owns and stops at shutdown), and the process's resource as Jaeger should show it.

use crate::config::{Compression, ExporterConfig, Protocol};
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The OTLP exporter of the configured protocol.
#[derive(Debug)]
pub enum OtlpExporter {
    /// OTLP/HTTP, protobuf or JSON, with `reqwest`'s blocking client.
    Http(opentelemetry_otlp::SpanExporter),
    /// OTLP/gRPC, with its own runtime.
    Grpc(GrpcExporter),
}

impl OtlpExporter {
    /// Builds the exporter for a checked configuration.
    pub fn new(config: &ExporterConfig) -> Result<Self, String> {
        match config.protocol {
            Protocol::HttpProtobuf | Protocol::HttpJson => {
                let protocol = if config.protocol == Protocol::HttpJson {
                    opentelemetry_otlp::Protocol::HttpJson
                } else {
                    opentelemetry_otlp::Protocol::HttpBinary
                };
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(protocol)
                    .with_endpoint(config.endpoint.clone())
                    .with_timeout(config.timeout)
                    .with_headers(config.headers.iter().cloned().collect::<HashMap<_, _>>());
                if config.compression == Compression::Gzip {
                    builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
                }
                builder
                    .build()
                    .map(OtlpExporter::Http)
                    .map_err(|e| e.to_string())
            }
            Protocol::Grpc => GrpcExporter::new(config).map(OtlpExporter::Grpc),
        }
    }
}

impl SpanExporter for OtlpExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            OtlpExporter::Http(exporter) => exporter.export(batch).await,
            OtlpExporter::Grpc(exporter) => exporter.export_blocking(batch),
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            OtlpExporter::Http(exporter) => exporter.shutdown_with_timeout(timeout),
            OtlpExporter::Grpc(exporter) => exporter.shutdown_with_timeout(timeout),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            OtlpExporter::Http(exporter) => exporter.set_resource(resource),
            OtlpExporter::Grpc(exporter) => exporter.inner.set_resource(resource),
        }
    }
}

/// The exporter of the configured transport.
#[derive(Debug)]
pub enum Exporter {
    /// OTLP, the default.
    Otlp(Box<OtlpExporter>),
    /// A legacy thrift transport.
    Legacy(crate::legacy::LegacyExporter),
}

impl SpanExporter for Exporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        match self {
            Exporter::Otlp(exporter) => exporter.export(batch).await,
            Exporter::Legacy(exporter) => exporter.export(batch).await,
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        match self {
            Exporter::Otlp(exporter) => exporter.shutdown_with_timeout(timeout),
            Exporter::Legacy(exporter) => exporter.shutdown_with_timeout(timeout),
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        match self {
            Exporter::Otlp(exporter) => exporter.set_resource(resource),
            Exporter::Legacy(exporter) => exporter.set_resource(resource),
        }
    }
}

/// An exporter whose failures name where the spans were going (`OTLP http/protobuf to
/// http://…`): a transport's own message ("network error") does not.
#[derive(Debug)]
pub struct Destined<E> {
    inner: E,
    destination: String,
}

impl<E> Destined<E> {
    /// Wraps `inner`, which sends to `destination`.
    pub fn new(inner: E, destination: String) -> Self {
        Destined { inner, destination }
    }
}

impl<E: SpanExporter> SpanExporter for Destined<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.inner.export(batch).await.map_err(|error| match error {
            OTelSdkError::InternalFailure(message) => {
                OTelSdkError::InternalFailure(format!("{}: {message}", self.destination))
            }
            other => other,
        })
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// OTLP/gRPC needs tokio: this exporter owns a one-thread runtime, runs each export on it (the
/// batch thread waits), and stops it at shutdown. Nothing of tokio reaches the host.
#[derive(Debug)]
pub struct GrpcExporter {
    inner: opentelemetry_otlp::SpanExporter,
    handle: tokio::runtime::Handle,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    timeout: Duration,
}

impl GrpcExporter {
    fn new(config: &ExporterConfig) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("filament-jaeger-grpc")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the gRPC runtime: {e}"))?;
        let mut metadata = tonic::metadata::MetadataMap::new();
        for (name, value) in &config.headers {
            let name = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
                .map_err(|e| format!("header {name:?}: {e}"))?;
            let value = value.parse().map_err(|e| format!("header {name:?}: {e}"))?;
            metadata.insert(name, value);
        }
        // tonic's channel starts its worker on the current runtime.
        let inner = {
            let _entered = runtime.enter();
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(metadata);
            if config.compression == Compression::Gzip {
                builder = builder.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            builder.build().map_err(|e| e.to_string())?
        };
        Ok(GrpcExporter {
            inner,
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            timeout: config.timeout,
        })
    }

    fn export_blocking(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let limit = self.timeout;
        self.handle.block_on(async {
            match tokio::time::timeout(limit, self.inner.export(batch)).await {
                Ok(result) => result,
                Err(_) => Err(OTelSdkError::Timeout(limit)),
            }
        })
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let started = Instant::now();
        let result = self.inner.shutdown_with_timeout(timeout);
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            runtime.shutdown_timeout(timeout.saturating_sub(started.elapsed()));
        }
        result
    }
}

/// Gives the exporter the process's resource with the `service.name` Jaeger lists services by, and
/// the host's name: every resource attribute becomes a tag of the process in Jaeger.
#[derive(Debug)]
pub struct ProcessResource<E> {
    inner: E,
    /// `OTEL_SERVICE_NAME` read through the setup handle, when given.
    configured: Option<String>,
    /// The program's name, when nothing better is known.
    program: String,
    host: Option<String>,
}

impl<E> ProcessResource<E> {
    /// Wraps an exporter.
    pub fn new(inner: E, configured: Option<String>) -> Self {
        ProcessResource {
            inner,
            configured,
            program: program_name(),
            host: host_name(),
        }
    }

    /// The resource as exported: `service.name` is the configured one, else the host's unless it is
    /// the SDK's `unknown_service` placeholder, else the program's name; `host.name` is added when
    /// missing.
    pub fn resource(&self, resource: &Resource) -> Resource {
        let service_key = Key::from_static_str("service.name");
        let current = resource.get(&service_key).map(|v| v.to_string());
        let service = match (&self.configured, current) {
            (Some(configured), _) => configured.clone(),
            (None, Some(current)) if !current.starts_with("unknown_service") => current,
            (None, _) => self.program.clone(),
        };
        let mut attributes: Vec<KeyValue> = resource
            .iter()
            .filter(|(key, _)| **key != service_key)
            .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
            .collect();
        attributes.push(KeyValue::new(service_key, Value::from(service)));
        if let Some(host) = &self.host
            && resource.get(&Key::from_static_str("host.name")).is_none()
        {
            attributes.push(KeyValue::new("host.name", host.clone()));
        }
        let builder = Resource::builder_empty();
        match resource.schema_url() {
            Some(url) => builder.with_schema_url(attributes, url.to_owned()).build(),
            None => builder.with_attributes(attributes).build(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for ProcessResource<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        self.inner.export(batch)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        let resource = self.resource(resource);
        self.inner.set_resource(&resource);
    }
}

/// The running program's file name (`quickstart`), as Jaeger's default service name.
fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
        .or_else(|| std::env::args().next())
        .unwrap_or_else(|| "filament".to_owned())
}

fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
}
