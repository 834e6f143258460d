//! The legacy Jaeger transports, for deployments older than OTLP ingestion (Jaeger < 1.35): the
//! agent (`thrift-udp`, compact thrift over UDP, split into packets by the crate) and the collector
//! (`thrift-http`, binary thrift over HTTP to `/api/traces`), through `opentelemetry-jaeger` 0.22,
//! the crate's last release.
//!
//! That crate is built on opentelemetry 0.23, while the rest of this plugin uses 0.33. Both live in
//! this shared object, renamed, and never meet the host's copy: the ABI record is all that crosses
//! the hook boundary. Spans take the same road as with OTLP — record → 0.33 `SpanData` in the batch
//! processor — and are converted to 0.23's `SpanData` here, one batch at a time.

// The whole crate is deprecated in favour of OTLP, which is this plugin's default; this module is
// the reason to use it at all.
#![allow(deprecated)]

use crate::config::{ConfigError, check_url};
use opentelemetry::trace as ot;
use opentelemetry::{Array, KeyValue, Value};
use opentelemetry_0_23 as ot23;
use opentelemetry_jaeger as jaeger;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk_0_23 as sdk23;
use opentelemetry_sdk_0_23::export::trace::SpanExporter as _;
use std::borrow::Cow;
use std::net::ToSocketAddrs;
use std::sync::Mutex;
use std::time::Duration;

/// `OTEL_EXPORTER_JAEGER_AGENT_HOST`: the agent's host (`thrift-udp`).
pub const OTEL_EXPORTER_JAEGER_AGENT_HOST: &str = "OTEL_EXPORTER_JAEGER_AGENT_HOST";
/// `OTEL_EXPORTER_JAEGER_AGENT_PORT`: the agent's UDP port (`thrift-udp`).
pub const OTEL_EXPORTER_JAEGER_AGENT_PORT: &str = "OTEL_EXPORTER_JAEGER_AGENT_PORT";
/// `OTEL_EXPORTER_JAEGER_ENDPOINT`: the collector's URL (`thrift-http`).
pub const OTEL_EXPORTER_JAEGER_ENDPOINT: &str = "OTEL_EXPORTER_JAEGER_ENDPOINT";
/// `OTEL_EXPORTER_JAEGER_TIMEOUT`: milliseconds per collector request.
pub const OTEL_EXPORTER_JAEGER_TIMEOUT: &str = "OTEL_EXPORTER_JAEGER_TIMEOUT";
/// `OTEL_EXPORTER_JAEGER_USER`: basic authentication with the collector.
pub const OTEL_EXPORTER_JAEGER_USER: &str = "OTEL_EXPORTER_JAEGER_USER";
/// `OTEL_EXPORTER_JAEGER_PASSWORD`: basic authentication with the collector.
pub const OTEL_EXPORTER_JAEGER_PASSWORD: &str = "OTEL_EXPORTER_JAEGER_PASSWORD";

/// The agent's default host.
pub const DEFAULT_AGENT_HOST: &str = "localhost";
/// The agent's default port (compact thrift).
pub const DEFAULT_AGENT_PORT: u16 = 6831;
/// The collector's default URL.
pub const DEFAULT_COLLECTOR_ENDPOINT: &str = "http://localhost:14268/api/traces";
/// The default collector timeout, as the specification says: 10 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(10_000);

/// A legacy transport and its settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Legacy {
    /// `thrift-udp`: the agent at `host:port`.
    Agent {
        /// `host:port`.
        endpoint: String,
    },
    /// `thrift-http`: the collector.
    Collector {
        /// The URL.
        endpoint: String,
        /// The request timeout.
        timeout: Duration,
        /// Basic authentication.
        user: Option<String>,
        /// Basic authentication.
        password: Option<String>,
    },
}

fn read(lookup: &impl Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    lookup(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl Legacy {
    /// The agent's settings, its address resolved now so that a bad one fails at setup.
    pub fn agent(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let host = read(&lookup, OTEL_EXPORTER_JAEGER_AGENT_HOST)
            .unwrap_or_else(|| DEFAULT_AGENT_HOST.to_owned());
        let port = match read(&lookup, OTEL_EXPORTER_JAEGER_AGENT_PORT) {
            None => DEFAULT_AGENT_PORT,
            Some(value) => value.parse::<u16>().map_err(|_| ConfigError {
                key: OTEL_EXPORTER_JAEGER_AGENT_PORT,
                value,
                cause: "expected a port number".into(),
            })?,
        };
        let endpoint = format!("{host}:{port}");
        endpoint.to_socket_addrs().map_err(|e| ConfigError {
            key: OTEL_EXPORTER_JAEGER_AGENT_HOST,
            value: host.clone(),
            cause: format!("cannot resolve {endpoint}: {e}"),
        })?;
        Ok(Legacy::Agent { endpoint })
    }

    /// The collector's settings.
    pub fn collector(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let endpoint = match read(&lookup, OTEL_EXPORTER_JAEGER_ENDPOINT) {
            None => DEFAULT_COLLECTOR_ENDPOINT.to_owned(),
            Some(value) => {
                check_url(OTEL_EXPORTER_JAEGER_ENDPOINT, &value)?;
                value
            }
        };
        let timeout = match read(&lookup, OTEL_EXPORTER_JAEGER_TIMEOUT) {
            None => DEFAULT_TIMEOUT,
            Some(value) => Duration::from_millis(value.parse().map_err(|_| ConfigError {
                key: OTEL_EXPORTER_JAEGER_TIMEOUT,
                value,
                cause: "expected a whole number of milliseconds".into(),
            })?),
        };
        Ok(Legacy::Collector {
            endpoint,
            timeout,
            user: read(&lookup, OTEL_EXPORTER_JAEGER_USER),
            password: read(&lookup, OTEL_EXPORTER_JAEGER_PASSWORD),
        })
    }

    /// Where spans go, for the log.
    pub fn describe(&self) -> String {
        match self {
            Legacy::Agent { endpoint } => format!("the Jaeger agent at {endpoint} (thrift-udp)"),
            Legacy::Collector { endpoint, .. } => {
                format!("the Jaeger collector at {endpoint} (thrift-http)")
            }
        }
    }

    /// The `opentelemetry-jaeger` exporter for a process's resource: its attributes are the
    /// process tags, its `service.name` the service.
    fn build(&self, resource: &Resource) -> Result<jaeger::Exporter, String> {
        let resource = sdk23::Resource::new(
            resource
                .iter()
                .map(|(key, value)| key_value(&KeyValue::new(key.clone(), value.clone()))),
        );
        let config = sdk23::trace::Config::default().with_resource(resource);
        let built = match self {
            Legacy::Agent { endpoint } => jaeger::new_agent_pipeline()
                .with_endpoint(endpoint.clone())
                .with_auto_split_batch(true)
                .with_trace_config(config)
                .build_sync_agent_exporter(),
            Legacy::Collector {
                endpoint,
                timeout,
                user,
                password,
            } => {
                let mut pipeline = jaeger::new_collector_pipeline()
                    .with_endpoint(endpoint.clone())
                    .with_timeout(*timeout)
                    .with_reqwest_blocking()
                    .with_trace_config(config);
                if let Some(user) = user {
                    pipeline = pipeline.with_username(user.clone());
                }
                if let Some(password) = password {
                    pipeline = pipeline.with_password(password.clone());
                }
                pipeline.build_collector_exporter::<sdk23::runtime::Tokio>()
            }
        };
        built.map_err(|e| e.to_string())
    }
}

/// A legacy transport as an SDK 0.33 exporter: built when the process's resource is known.
#[derive(Debug)]
pub struct LegacyExporter {
    legacy: Legacy,
    inner: Mutex<Result<jaeger::Exporter, String>>,
}

impl LegacyExporter {
    /// An exporter that sends nothing until it is given the process's resource.
    pub fn new(legacy: Legacy) -> Self {
        LegacyExporter {
            legacy,
            inner: Mutex::new(Err("no resource was set".into())),
        }
    }
}

impl SpanExporter for LegacyExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let upload = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            match inner.as_mut() {
                Ok(exporter) => exporter.export(batch.iter().map(span_data).collect()),
                Err(error) => {
                    return Err(OTelSdkError::InternalFailure(format!(
                        "{}: {error}",
                        self.legacy.describe()
                    )));
                }
            }
        };
        upload
            .await
            .map_err(|e| OTelSdkError::InternalFailure(format!("{}: {e}", self.legacy.describe())))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if let Ok(exporter) = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            exporter.shutdown();
        }
        Ok(())
    }

    fn set_resource(&mut self, resource: &Resource) {
        let built = self.legacy.build(resource);
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = built;
    }
}

/// SDK 0.33's span as SDK 0.23's. The resource goes to the exporter's process instead.
fn span_data(span: &SpanData) -> sdk23::export::trace::SpanData {
    let mut events = sdk23::trace::SpanEvents::default();
    events.events = span
        .events
        .iter()
        .map(|e| {
            ot23::trace::Event::new(
                e.name.to_string(),
                e.timestamp,
                key_values(&e.attributes),
                e.dropped_attributes_count,
            )
        })
        .collect();
    events.dropped_count = span.events.dropped_count;
    let mut links = sdk23::trace::SpanLinks::default();
    links.links = span
        .links
        .iter()
        .map(|l| {
            ot23::trace::Link::new(
                span_context(&l.span_context),
                key_values(&l.attributes),
                l.dropped_attributes_count,
            )
        })
        .collect();
    links.dropped_count = span.links.dropped_count;
    let scope = &span.instrumentation_scope;
    let mut library = ot23::InstrumentationLibrary::builder(scope.name().to_owned())
        .with_attributes(scope.attributes().map(key_value).collect::<Vec<_>>());
    if let Some(version) = scope.version() {
        library = library.with_version(version.to_owned());
    }
    if let Some(url) = scope.schema_url() {
        library = library.with_schema_url(url.to_owned());
    }
    sdk23::export::trace::SpanData {
        span_context: span_context(&span.span_context),
        parent_span_id: ot23::trace::SpanId::from_bytes(span.parent_span_id.to_bytes()),
        span_kind: match span.span_kind {
            ot::SpanKind::Client => ot23::trace::SpanKind::Client,
            ot::SpanKind::Server => ot23::trace::SpanKind::Server,
            ot::SpanKind::Producer => ot23::trace::SpanKind::Producer,
            ot::SpanKind::Consumer => ot23::trace::SpanKind::Consumer,
            ot::SpanKind::Internal => ot23::trace::SpanKind::Internal,
        },
        name: Cow::Owned(span.name.to_string()),
        start_time: span.start_time,
        end_time: span.end_time,
        attributes: key_values(&span.attributes),
        dropped_attributes_count: span.dropped_attributes_count,
        events,
        links,
        status: match &span.status {
            ot::Status::Unset => ot23::trace::Status::Unset,
            ot::Status::Ok => ot23::trace::Status::Ok,
            ot::Status::Error { description } => {
                ot23::trace::Status::error(description.to_string())
            }
        },
        resource: Cow::Owned(sdk23::Resource::empty()),
        instrumentation_lib: library.build(),
    }
}

fn span_context(context: &ot::SpanContext) -> ot23::trace::SpanContext {
    ot23::trace::SpanContext::new(
        ot23::trace::TraceId::from_bytes(context.trace_id().to_bytes()),
        ot23::trace::SpanId::from_bytes(context.span_id().to_bytes()),
        ot23::trace::TraceFlags::new(context.trace_flags().to_u8()),
        context.is_remote(),
        context.trace_state().header().parse().unwrap_or_default(),
    )
}

fn key_values(attributes: &[KeyValue]) -> Vec<ot23::KeyValue> {
    attributes.iter().map(key_value).collect()
}

fn key_value(attribute: &KeyValue) -> ot23::KeyValue {
    let value = match &attribute.value {
        Value::Bool(b) => ot23::Value::Bool(*b),
        Value::I64(i) => ot23::Value::I64(*i),
        Value::F64(f) => ot23::Value::F64(*f),
        Value::String(s) => ot23::Value::String(s.to_string().into()),
        Value::Array(Array::Bool(a)) => ot23::Value::Array(ot23::Array::Bool(a.clone())),
        Value::Array(Array::I64(a)) => ot23::Value::Array(ot23::Array::I64(a.clone())),
        Value::Array(Array::F64(a)) => ot23::Value::Array(ot23::Array::F64(a.clone())),
        Value::Array(Array::String(a)) => ot23::Value::Array(ot23::Array::String(
            a.iter().map(|s| s.to_string().into()).collect(),
        )),
        other => ot23::Value::String(other.to_string().into()),
    };
    ot23::KeyValue::new(attribute.key.to_string(), value)
}
