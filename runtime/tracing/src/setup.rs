//! The host's side of the handle a hook receives: it records what the hooks ask for.

use super::instrument;
use super::log::{self, HookLog};
use filament_plugin_api::{
    ConfigureError, LogLevel, ProcessInfo, ProviderConfig, RawSpanProcessor_TO,
    RawTaskInterceptor_TO, RawTracingSetup, Sampler, SpanLimits, Value,
    abi_stable::std_types::{RBox, RErr, ROk, ROption, RResult, RStr, RString},
};
use std::collections::BTreeMap;

/// The provider configuration a hook asked for, copied out of the call.
#[derive(Debug, Clone)]
pub(crate) struct RequestedProvider {
    pub(crate) by_hook: String,
    pub(crate) sampler: Option<Sampler>,
    pub(crate) resource: Vec<opentelemetry::KeyValue>,
    pub(crate) span_limits: Option<SpanLimits>,
}

/// A processor a hook added, with the hook that added it.
pub(crate) struct AddedProcessor {
    pub(crate) hook: String,
    pub(crate) raw: RawSpanProcessor_TO<'static, RBox<()>>,
}

/// What all hooks of a process asked for.
pub(crate) struct HostSetup {
    /// The hook being run now, for messages.
    pub(crate) current_hook: String,
    pub(crate) process: ProcessInfo,
    pub(crate) config: BTreeMap<String, String>,
    /// Where `config` reads what the configuration values lack: this process's environment
    /// (`None`), or another's.
    pub(crate) environment: Option<BTreeMap<String, String>>,
    pub(crate) provider: Option<RequestedProvider>,
    pub(crate) processors: Vec<AddedProcessor>,
    /// The instrumentations and task interceptors the hooks asked for.
    pub(crate) instrumentations: instrument::Requested,
}

impl RawTracingSetup for HostSetup {
    fn configure_provider(&mut self, config: &ProviderConfig<'_>) -> RResult<(), ConfigureError> {
        if let Some(first) = &self.provider {
            log::emit(
                HookLog::Hook(&self.current_hook),
                LogLevel::Warn,
                &format!(
                    "the tracer provider was already configured by hook \"{}\"; this configuration is ignored",
                    first.by_hook
                ),
            );
            return RErr(ConfigureError::AlreadyConfigured);
        }
        if let ROption::RSome(sampler) = config.sampler
            && let Err(why) = validate_sampler(sampler)
        {
            return RErr(ConfigureError::Invalid(why.into()));
        }
        self.provider = Some(RequestedProvider {
            by_hook: self.current_hook.clone(),
            sampler: config.sampler.into_option(),
            resource: config
                .resource
                .iter()
                .map(|kv| opentelemetry::KeyValue::new(kv.key.to_string(), to_otel_value(kv.value)))
                .collect(),
            span_limits: config.span_limits.into_option(),
        });
        ROk(())
    }

    fn add_span_processor(&mut self, processor: RawSpanProcessor_TO<'static, RBox<()>>) {
        self.processors.push(AddedProcessor {
            hook: self.current_hook.clone(),
            raw: processor,
        });
    }

    fn process_info(&self) -> ProcessInfo {
        self.process.clone()
    }

    fn config(&self, key: RStr<'_>) -> ROption<RString> {
        let key = key.as_str();
        self.config
            .get(key)
            .cloned()
            .or_else(|| match &self.environment {
                Some(environment) => environment.get(key).cloned(),
                None => std::env::var(key).ok(),
            })
            .map(RString::from)
            .into()
    }

    fn log(&self, level: LogLevel, message: RStr<'_>) {
        log::emit(HookLog::Hook(&self.current_hook), level, message.as_str());
    }

    fn enable_instrumentation(
        &mut self,
        name: RStr<'_>,
        options: RStr<'_>,
    ) -> RResult<(), ConfigureError> {
        match self
            .instrumentations
            .enable(&self.current_hook, name.as_str(), options.as_str())
        {
            Ok(()) => ROk(()),
            Err(why) => RErr(ConfigureError::Invalid(why.into())),
        }
    }

    fn add_task_interceptor(
        &mut self,
        interceptor: RawTaskInterceptor_TO<'static, RBox<()>>,
    ) -> RResult<(), ConfigureError> {
        self.instrumentations
            .add_interceptor(&self.current_hook, interceptor);
        ROk(())
    }
}

fn validate_sampler(sampler: Sampler) -> Result<(), String> {
    match sampler {
        Sampler::TraceIdRatio(ratio) | Sampler::ParentBasedTraceIdRatio(ratio)
            if !(0.0..=1.0).contains(&ratio) =>
        {
            Err(format!("sampling ratio {ratio} is not between 0 and 1"))
        }
        _ => Ok(()),
    }
}

/// Copies an ABI attribute value into an OpenTelemetry one.
pub(crate) fn to_otel_value(value: Value<'_>) -> opentelemetry::Value {
    use opentelemetry::{Array, StringValue};
    match value {
        Value::Bool(b) => b.into(),
        Value::I64(i) => i.into(),
        Value::F64(f) => f.into(),
        Value::Str(s) => s.to_string().into(),
        Value::BoolArray(a) => opentelemetry::Value::Array(Array::Bool(a.to_vec())),
        Value::I64Array(a) => opentelemetry::Value::Array(Array::I64(a.to_vec())),
        Value::F64Array(a) => opentelemetry::Value::Array(Array::F64(a.to_vec())),
        Value::StrArray(a) => opentelemetry::Value::Array(Array::String(
            a.iter().map(|s| StringValue::from(s.to_string())).collect(),
        )),
    }
}
