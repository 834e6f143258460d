//! What the plugin reads, and how: the OTLP exporter variables of the OpenTelemetry specification
//! (and Filament's one legacy switch), each read through the setup handle, so a value may come from
//! the cluster's configuration (`Config::tracing_config`) or from the environment.
//!
//! Every value is checked here, at setup: a malformed URL, an unknown protocol or a header string
//! that does not parse is an error that names the variable and its value, so a bad hook is refused
//! when it is given rather than dropping every span later.

use http::{HeaderName, HeaderValue};
use std::fmt;
use std::time::Duration;

/// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (the default), `http/json` or `grpc`.
pub const OTEL_EXPORTER_OTLP_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: the protocol for traces; wins over the general one.
pub const OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
/// `OTEL_EXPORTER_OTLP_ENDPOINT`: the base URL; `v1/traces` is appended for HTTP.
pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the URL for traces, used as it is.
pub const OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
/// `OTEL_EXPORTER_OTLP_HEADERS`: `key=value` pairs separated by commas, values percent-encoded.
pub const OTEL_EXPORTER_OTLP_HEADERS: &str = "OTEL_EXPORTER_OTLP_HEADERS";
/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`: headers for traces; replace the general ones.
pub const OTEL_EXPORTER_OTLP_TRACES_HEADERS: &str = "OTEL_EXPORTER_OTLP_TRACES_HEADERS";
/// `OTEL_EXPORTER_OTLP_TIMEOUT`: milliseconds one export request may take.
pub const OTEL_EXPORTER_OTLP_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TIMEOUT";
/// `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`: the timeout for traces; wins over the general one.
pub const OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: &str = "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT";
/// `OTEL_EXPORTER_OTLP_COMPRESSION`: `gzip` or `none` (the default).
pub const OTEL_EXPORTER_OTLP_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_COMPRESSION";
/// `OTEL_EXPORTER_OTLP_TRACES_COMPRESSION`: compression for traces; wins over the general one.
pub const OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: &str = "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION";
/// `OTEL_SERVICE_NAME`: the `service.name` Jaeger shows; else the program's name.
pub const OTEL_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `FILAMENT_JAEGER_PROTOCOL`: `otlp` (the default), or a legacy Jaeger transport.
pub const FILAMENT_JAEGER_PROTOCOL: &str = "FILAMENT_JAEGER_PROTOCOL";

/// The specification's default endpoint for OTLP/HTTP traces.
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318/v1/traces";
/// The specification's default endpoint for OTLP/gRPC.
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
/// The specification's default for `OTEL_EXPORTER_OTLP_TIMEOUT`: 10 s.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(10_000);

/// The wire protocol of the OTLP exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `grpc`: OTLP over gRPC (port 4317).
    Grpc,
    /// `http/protobuf`: OTLP over HTTP, protobuf bodies (port 4318).
    HttpProtobuf,
    /// `http/json`: OTLP over HTTP, JSON bodies (port 4318).
    HttpJson,
}

impl Protocol {
    /// The protocol's name in `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
            Protocol::HttpJson => "http/json",
        }
    }
}

/// Compression of export requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `none`.
    None,
    /// `gzip`.
    Gzip,
}

/// Everything the OTLP exporter needs, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExporterConfig {
    /// The protocol.
    pub protocol: Protocol,
    /// The full URL requests go to.
    pub endpoint: String,
    /// Extra request headers (gRPC metadata).
    pub headers: Vec<(String, String)>,
    /// The longest one request may take.
    pub timeout: Duration,
    /// Request compression.
    pub compression: Compression,
}

/// A configuration value the plugin cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable.
    pub key: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub cause: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={:?}: {}", self.key, self.value, self.cause)
    }
}

impl std::error::Error for ConfigError {}

/// Reads a value: the first of `keys` that is set and not empty (the specification treats empty as
/// unset), with the key it came from.
fn first(
    lookup: &impl Fn(&str) -> Option<String>,
    keys: &[&'static str],
) -> Option<(&'static str, String)> {
    keys.iter().find_map(|key| {
        lookup(key)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(|v| (*key, v))
    })
}

/// Which transport `FILAMENT_JAEGER_PROTOCOL` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `otlp` (the default), with the `OTEL_EXPORTER_OTLP_*` settings.
    Otlp,
    /// `thrift-udp`: the legacy Jaeger agent, with `OTEL_EXPORTER_JAEGER_AGENT_*`.
    ThriftUdp,
    /// `thrift-http`: the legacy Jaeger collector, with `OTEL_EXPORTER_JAEGER_*`.
    ThriftHttp,
}

/// Reads `FILAMENT_JAEGER_PROTOCOL`.
pub fn transport(lookup: impl Fn(&str) -> Option<String>) -> Result<Transport, ConfigError> {
    match first(&lookup, &[FILAMENT_JAEGER_PROTOCOL]) {
        None => Ok(Transport::Otlp),
        Some((key, value)) => match value.as_str() {
            "otlp" => Ok(Transport::Otlp),
            "thrift-udp" => Ok(Transport::ThriftUdp),
            "thrift-http" => Ok(Transport::ThriftHttp),
            _ => Err(ConfigError {
                key,
                value,
                cause: "unknown transport; expected otlp, thrift-udp or thrift-http".into(),
            }),
        },
    }
}

impl ExporterConfig {
    /// Reads and checks the `OTEL_EXPORTER_OTLP_*` settings from a lookup (the setup handle's
    /// `config`, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let protocol = match first(
            &lookup,
            &[
                OTEL_EXPORTER_OTLP_TRACES_PROTOCOL,
                OTEL_EXPORTER_OTLP_PROTOCOL,
            ],
        ) {
            None => Protocol::HttpProtobuf,
            Some((key, value)) => match value.as_str() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                "http/json" => Protocol::HttpJson,
                _ => {
                    return Err(ConfigError {
                        key,
                        value,
                        cause: "unknown protocol; expected grpc, http/protobuf or http/json".into(),
                    });
                }
            },
        };
        let endpoint =
            if let Some((key, value)) = first(&lookup, &[OTEL_EXPORTER_OTLP_TRACES_ENDPOINT]) {
                check_url(key, &value)?;
                value
            } else if let Some((key, value)) = first(&lookup, &[OTEL_EXPORTER_OTLP_ENDPOINT]) {
                check_url(key, &value)?;
                match protocol {
                    Protocol::Grpc => value,
                    Protocol::HttpProtobuf | Protocol::HttpJson => {
                        format!("{}/v1/traces", value.trim_end_matches('/'))
                    }
                }
            } else {
                match protocol {
                    Protocol::Grpc => DEFAULT_GRPC_ENDPOINT.to_owned(),
                    Protocol::HttpProtobuf | Protocol::HttpJson => DEFAULT_HTTP_ENDPOINT.to_owned(),
                }
            };
        let headers = match first(
            &lookup,
            &[
                OTEL_EXPORTER_OTLP_TRACES_HEADERS,
                OTEL_EXPORTER_OTLP_HEADERS,
            ],
        ) {
            None => Vec::new(),
            Some((key, value)) => parse_headers(key, &value)?,
        };
        let timeout = match first(
            &lookup,
            &[
                OTEL_EXPORTER_OTLP_TRACES_TIMEOUT,
                OTEL_EXPORTER_OTLP_TIMEOUT,
            ],
        ) {
            None => DEFAULT_TIMEOUT,
            Some((key, value)) => match value.parse::<u64>() {
                Ok(millis) => Duration::from_millis(millis),
                Err(_) => {
                    return Err(ConfigError {
                        key,
                        value,
                        cause: "expected a whole number of milliseconds".into(),
                    });
                }
            },
        };
        let compression = match first(
            &lookup,
            &[
                OTEL_EXPORTER_OTLP_TRACES_COMPRESSION,
                OTEL_EXPORTER_OTLP_COMPRESSION,
            ],
        ) {
            None => Compression::None,
            Some((key, value)) => match value.as_str() {
                "none" => Compression::None,
                "gzip" => Compression::Gzip,
                _ => {
                    return Err(ConfigError {
                        key,
                        value,
                        cause: "unknown compression; expected gzip or none".into(),
                    });
                }
            },
        };
        Ok(ExporterConfig {
            protocol,
            endpoint,
            headers,
            timeout,
            compression,
        })
    }
}

/// An endpoint must be an absolute `http` or `https` URL with a host.
pub(crate) fn check_url(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let error = |cause: String| ConfigError {
        key,
        value: value.to_owned(),
        cause,
    };
    let url = url::Url::parse(value).map_err(|e| {
        error(format!(
            "not a valid URL ({e}); expected e.g. http://localhost:4318"
        ))
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(error(format!(
            "not an http or https URL (scheme `{}`); expected e.g. http://localhost:4318",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(error(
            "the URL has no host; expected e.g. http://localhost:4318".into(),
        ));
    }
    Ok(())
}

/// Parses `key1=value1,key2=value2` (the W3C baggage format the specification uses), values
/// percent-decoded; each name and value must be a valid HTTP header.
pub fn parse_headers(key: &'static str, value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let error = |cause: String| ConfigError {
        key,
        value: value.to_owned(),
        cause,
    };
    let mut headers = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let Some((name, raw)) = entry.split_once('=') else {
            return Err(error(format!(
                "the entry {entry:?} is not name=value; expected e.g. api-key=secret,team=core"
            )));
        };
        let name = name.trim();
        let decoded = percent_decode(raw.trim())
            .ok_or_else(|| error(format!("the value of {name:?} has a bad percent escape")))?;
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(error(format!("{name:?} is not a valid header name")));
        }
        if HeaderValue::from_str(&decoded).is_err() {
            return Err(error(format!(
                "the value of {name:?} is not a valid header value"
            )));
        }
        headers.push((name.to_ascii_lowercase(), decoded));
    }
    Ok(headers)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<ExporterConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ExporterConfig::from_lookup(|key| map.get(key).cloned())
    }

    #[test]
    fn nothing_set_is_otlp_http_protobuf_to_localhost_4318() {
        let config = config(&[]).unwrap();
        assert_eq!(config.protocol, Protocol::HttpProtobuf);
        assert_eq!(config.endpoint, "http://localhost:4318/v1/traces");
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert_eq!(config.compression, Compression::None);
        assert!(config.headers.is_empty());
    }

    #[test]
    fn grpc_goes_to_localhost_4317() {
        let config = config(&[(OTEL_EXPORTER_OTLP_PROTOCOL, "grpc")]).unwrap();
        assert_eq!(config.protocol, Protocol::Grpc);
        assert_eq!(config.endpoint, "http://localhost:4317");
    }

    #[test]
    fn the_traces_variables_win_over_the_general_ones() {
        let config = config(&[
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
            (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "http/json"),
            (OTEL_EXPORTER_OTLP_TIMEOUT, "1"),
            (OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "250"),
            (OTEL_EXPORTER_OTLP_HEADERS, "a=1"),
            (OTEL_EXPORTER_OTLP_TRACES_HEADERS, "b=2"),
            (OTEL_EXPORTER_OTLP_COMPRESSION, "none"),
            (OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, "gzip"),
        ])
        .unwrap();
        assert_eq!(config.protocol, Protocol::HttpJson);
        assert_eq!(config.timeout, Duration::from_millis(250));
        assert_eq!(config.headers, [("b".to_owned(), "2".to_owned())]);
        assert_eq!(config.compression, Compression::Gzip);
    }

    #[test]
    fn the_general_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_kept() {
        let general = config(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4318/")]).unwrap();
        assert_eq!(general.endpoint, "http://collector:4318/v1/traces");
        let grpc = config(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://collector:4317"),
            (OTEL_EXPORTER_OTLP_PROTOCOL, "grpc"),
        ])
        .unwrap();
        assert_eq!(grpc.endpoint, "http://collector:4317");
        let traces = config(&[
            (OTEL_EXPORTER_OTLP_ENDPOINT, "http://ignored:1"),
            (
                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
                "https://jaeger:4318/custom",
            ),
        ])
        .unwrap();
        assert_eq!(traces.endpoint, "https://jaeger:4318/custom");
    }

    #[test]
    fn headers_are_percent_decoded() {
        let config = config(&[(
            OTEL_EXPORTER_OTLP_HEADERS,
            "Api-Key=se%20cret, team = core ",
        )])
        .unwrap();
        assert_eq!(
            config.headers,
            [
                ("api-key".to_owned(), "se cret".to_owned()),
                ("team".to_owned(), "core".to_owned())
            ]
        );
    }

    #[test]
    fn bad_values_are_errors_naming_the_variable_and_the_value() {
        let message = |pairs: &[(&str, &str)]| config(pairs).unwrap_err().to_string();
        assert_eq!(
            message(&[(OTEL_EXPORTER_OTLP_PROTOCOL, "thrift")]),
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"thrift\": unknown protocol; expected grpc, http/protobuf or http/json"
        );
        assert_eq!(
            message(&[(OTEL_EXPORTER_OTLP_ENDPOINT, "localhost:4318")]),
            "OTEL_EXPORTER_OTLP_ENDPOINT=\"localhost:4318\": not an http or https URL (scheme `localhost`); expected e.g. http://localhost:4318"
        );
        assert_eq!(
            message(&[(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "http://")]),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=\"http://\": not a valid URL (empty host); expected e.g. http://localhost:4318"
        );
        assert_eq!(
            message(&[(OTEL_EXPORTER_OTLP_HEADERS, "api-key")]),
            "OTEL_EXPORTER_OTLP_HEADERS=\"api-key\": the entry \"api-key\" is not name=value; expected e.g. api-key=secret,team=core"
        );
        assert_eq!(
            message(&[(OTEL_EXPORTER_OTLP_HEADERS, "bad name=1")]),
            "OTEL_EXPORTER_OTLP_HEADERS=\"bad name=1\": \"bad name\" is not a valid header name"
        );
        assert_eq!(
            message(&[(OTEL_EXPORTER_OTLP_TIMEOUT, "10s")]),
            "OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\": expected a whole number of milliseconds"
        );
        assert_eq!(
            message(&[(OTEL_EXPORTER_OTLP_COMPRESSION, "zip")]),
            "OTEL_EXPORTER_OTLP_COMPRESSION=\"zip\": unknown compression; expected gzip or none"
        );
    }

    #[test]
    fn the_transport_is_otlp_unless_a_legacy_one_is_named() {
        let lookup = |value: &'static str| {
            move |key: &str| (key == FILAMENT_JAEGER_PROTOCOL).then(|| value.to_owned())
        };
        assert_eq!(transport(|_| None), Ok(Transport::Otlp));
        assert_eq!(transport(lookup("otlp")), Ok(Transport::Otlp));
        assert_eq!(transport(lookup("thrift-udp")), Ok(Transport::ThriftUdp));
        assert_eq!(transport(lookup("thrift-http")), Ok(Transport::ThriftHttp));
        assert_eq!(
            transport(lookup("zipkin")).unwrap_err().to_string(),
            "FILAMENT_JAEGER_PROTOCOL=\"zipkin\": unknown transport; expected otlp, thrift-udp or thrift-http"
        );
    }
}
