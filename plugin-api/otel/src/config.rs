//! The batch processor's settings: the specification's `OTEL_BSP_*` variables and their defaults,
//! read through the setup handle (a cluster's configuration value, else the environment).

use filament_plugin_api::TracingSetup;
use std::fmt;
use std::time::Duration;

/// `OTEL_BSP_SCHEDULE_DELAY`: milliseconds between two exports of a partly filled batch.
pub const OTEL_BSP_SCHEDULE_DELAY: &str = "OTEL_BSP_SCHEDULE_DELAY";
/// The specification's default for `OTEL_BSP_SCHEDULE_DELAY`: 5000 ms.
pub const OTEL_BSP_SCHEDULE_DELAY_DEFAULT: Duration = Duration::from_millis(5000);

/// `OTEL_BSP_MAX_QUEUE_SIZE`: spans waiting for export at most; more are dropped and counted.
pub const OTEL_BSP_MAX_QUEUE_SIZE: &str = "OTEL_BSP_MAX_QUEUE_SIZE";
/// The specification's default for `OTEL_BSP_MAX_QUEUE_SIZE`: 2048.
pub const OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT: usize = 2048;

/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans in one export at most (at most the queue size).
pub const OTEL_BSP_MAX_EXPORT_BATCH_SIZE: &str = "OTEL_BSP_MAX_EXPORT_BATCH_SIZE";
/// The specification's default for `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: 512.
pub const OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT: usize = 512;

/// `OTEL_BSP_EXPORT_TIMEOUT`: milliseconds one export may take before it is abandoned.
pub const OTEL_BSP_EXPORT_TIMEOUT: &str = "OTEL_BSP_EXPORT_TIMEOUT";
/// The specification's default for `OTEL_BSP_EXPORT_TIMEOUT`: 30000 ms.
pub const OTEL_BSP_EXPORT_TIMEOUT_DEFAULT: Duration = Duration::from_millis(30_000);

/// How a [`BatchProcessor`](crate::BatchProcessor) queues and exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// The longest a span waits in a partly filled batch.
    pub schedule_delay: Duration,
    /// Spans the queue holds; a span that finds it full is dropped and counted.
    pub max_queue_size: usize,
    /// Spans in one export at most.
    pub max_export_batch_size: usize,
    /// The longest one export may take.
    pub export_timeout: Duration,
}

impl Default for BatchConfig {
    /// The specification's defaults.
    fn default() -> Self {
        BatchConfig {
            schedule_delay: OTEL_BSP_SCHEDULE_DELAY_DEFAULT,
            max_queue_size: OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT,
            max_export_batch_size: OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT,
            export_timeout: OTEL_BSP_EXPORT_TIMEOUT_DEFAULT,
        }
    }
}

/// A setting whose value does not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The variable, e.g. `OTEL_BSP_MAX_QUEUE_SIZE`.
    pub key: &'static str,
    /// Its value.
    pub value: String,
    /// What was expected instead.
    pub expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={:?}: expected {}",
            self.key, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

impl BatchConfig {
    /// Reads the `OTEL_BSP_*` settings through the setup handle: a configuration value given at
    /// startup, else the environment, else the specification's default.
    pub fn from_setup(setup: &TracingSetup<'_>) -> Result<Self, ConfigError> {
        Self::from_lookup(|key| setup.config(key))
    }

    /// Reads the `OTEL_BSP_*` settings from any lookup (`std::env::var(key).ok()`, a map).
    ///
    /// Empty values mean unset, as the specification says. A value that does not parse is an
    /// error that names it. A batch size above the queue size is lowered to the queue size.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let read = |key: &'static str| {
            lookup(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let millis = |key: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match read(key) {
                None => Ok(default),
                Some(value) => value
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| ConfigError {
                        key,
                        value,
                        expected: "a whole number of milliseconds",
                    }),
            }
        };
        let count = |key: &'static str, default: usize| -> Result<usize, ConfigError> {
            match read(key) {
                None => Ok(default),
                Some(value) => match value.parse::<usize>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(ConfigError {
                        key,
                        value,
                        expected: "a positive whole number",
                    }),
                },
            }
        };
        let max_queue_size = count(OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT)?;
        Ok(BatchConfig {
            schedule_delay: millis(OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_SCHEDULE_DELAY_DEFAULT)?,
            max_queue_size,
            max_export_batch_size: count(
                OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
                OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT,
            )?
            .min(max_queue_size),
            export_timeout: millis(OTEL_BSP_EXPORT_TIMEOUT, OTEL_BSP_EXPORT_TIMEOUT_DEFAULT)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn from(pairs: &[(&str, &str)]) -> Result<BatchConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BatchConfig::from_lookup(|key| map.get(key).cloned())
    }

    #[test]
    fn nothing_set_gives_the_specifications_defaults() {
        let config = from(&[]).unwrap();
        assert_eq!(config.schedule_delay, Duration::from_millis(5000));
        assert_eq!(config.max_queue_size, 2048);
        assert_eq!(config.max_export_batch_size, 512);
        assert_eq!(config.export_timeout, Duration::from_millis(30_000));
    }

    #[test]
    fn every_variable_is_read_and_empty_means_unset() {
        let config = from(&[
            (OTEL_BSP_SCHEDULE_DELAY, "10"),
            (OTEL_BSP_MAX_QUEUE_SIZE, " 100 "),
            (OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "7"),
            (OTEL_BSP_EXPORT_TIMEOUT, ""),
        ])
        .unwrap();
        assert_eq!(config.schedule_delay, Duration::from_millis(10));
        assert_eq!(config.max_queue_size, 100);
        assert_eq!(config.max_export_batch_size, 7);
        assert_eq!(config.export_timeout, OTEL_BSP_EXPORT_TIMEOUT_DEFAULT);
    }

    #[test]
    fn a_batch_larger_than_the_queue_is_lowered_to_the_queue_size() {
        let config = from(&[(OTEL_BSP_MAX_QUEUE_SIZE, "10")]).unwrap();
        assert_eq!(config.max_export_batch_size, 10);
    }

    #[test]
    fn a_value_that_does_not_parse_is_an_error_naming_it() {
        let error = from(&[(OTEL_BSP_MAX_QUEUE_SIZE, "lots")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "OTEL_BSP_MAX_QUEUE_SIZE=\"lots\": expected a positive whole number"
        );
        let error = from(&[(OTEL_BSP_EXPORT_TIMEOUT, "5s")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "OTEL_BSP_EXPORT_TIMEOUT=\"5s\": expected a whole number of milliseconds"
        );
        assert!(from(&[(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, "0")]).is_err());
    }
}
