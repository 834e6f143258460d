//! Building the host's tracer provider from what the hooks asked for and the `OTEL_*` environment.
//!
//! Precedence, lowest first: the SDK's defaults; the environment (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`, `OTEL_SPAN_*_COUNT_LIMIT`, read by
//! `opentelemetry_sdk` as the specification says); the process's own attributes; what a hook
//! configured in code. This is the SDK's own rule: code wins over the environment.

use super::bridge::Bridge;
use super::setup::RequestedProvider;
use filament_plugin_api::{ProcessInfo, Sampler};
use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{self as sdk_trace, SdkTracerProvider};

/// `OTEL_SDK_DISABLED`: when `true`, no tracing is set up at all.
pub const OTEL_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

/// Whether `OTEL_SDK_DISABLED` says the SDK is disabled (`true`, case-insensitive, per the spec).
pub(crate) fn sdk_disabled() -> bool {
    std::env::var(OTEL_SDK_DISABLED).is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn sampler(sampler: Sampler) -> sdk_trace::Sampler {
    use sdk_trace::Sampler as S;
    match sampler {
        Sampler::AlwaysOn => S::AlwaysOn,
        Sampler::AlwaysOff => S::AlwaysOff,
        Sampler::TraceIdRatio(ratio) => S::TraceIdRatioBased(ratio),
        Sampler::ParentBasedAlwaysOn => S::ParentBased(Box::new(S::AlwaysOn)),
        Sampler::ParentBasedAlwaysOff => S::ParentBased(Box::new(S::AlwaysOff)),
        Sampler::ParentBasedTraceIdRatio(ratio) => {
            S::ParentBased(Box::new(S::TraceIdRatioBased(ratio)))
        }
    }
}

/// The resource attributes that describe a Filament process.
fn process_attributes(process: &ProcessInfo) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("process.pid", i64::from(process.pid)),
        KeyValue::new("filament.role", process.role.as_str()),
    ];
    let ids = [
        ("filament.job_id", &process.job_id),
        ("filament.node_id", &process.node_id),
        ("filament.worker_id", &process.worker_id),
    ];
    for (key, value) in ids {
        if let Some(value) = value.as_ref().into_option() {
            attributes.push(KeyValue::new(key, value.to_string()));
        }
    }
    if let Some(name) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
    {
        attributes.push(KeyValue::new("process.executable.name", name));
    }
    attributes
}

pub(crate) fn build(
    requested: Option<&RequestedProvider>,
    process: &ProcessInfo,
    bridge: Option<Bridge>,
) -> SdkTracerProvider {
    let mut resource = Resource::builder().with_attributes(process_attributes(process));
    let mut builder = SdkTracerProvider::builder();
    if let Some(requested) = requested {
        resource = resource.with_attributes(requested.resource.iter().cloned());
        if let Some(s) = requested.sampler {
            builder = builder.with_sampler(sampler(s));
        }
        if let Some(limits) = requested.span_limits {
            builder = builder
                .with_max_attributes_per_span(limits.max_attributes_per_span)
                .with_max_events_per_span(limits.max_events_per_span)
                .with_max_links_per_span(limits.max_links_per_span)
                .with_max_attributes_per_event(limits.max_attributes_per_event)
                .with_max_attributes_per_link(limits.max_attributes_per_link);
        }
    }
    builder = builder.with_resource(resource.build());
    if let Some(bridge) = bridge {
        builder = builder.with_span_processor(bridge);
    }
    builder.build()
}
