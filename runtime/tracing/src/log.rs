//! Where the host's and the hooks' messages go: the program's `tracing` subscriber if it has one,
//! else warnings and errors to standard error.

use filament_plugin_api::LogLevel;

/// Who is speaking.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HookLog<'a> {
    /// A hook, by its `library:symbol` string.
    Hook(&'a str),
    /// The host's tracing machinery itself.
    Host,
}

pub(crate) fn emit(source: HookLog<'_>, level: LogLevel, message: &str) {
    let speaker = match source {
        HookLog::Hook(hook) => format!("hook \"{hook}\""),
        HookLog::Host => "tracing".to_owned(),
    };
    // The bridges' own subscriber would turn these into span events: they go to standard error.
    if ::tracing::dispatcher::has_been_set() && !super::instrument::own_subscriber() {
        match level {
            LogLevel::Error => {
                ::tracing::error!(target: "filament::tracing", "{speaker}: {message}")
            }
            LogLevel::Warn => ::tracing::warn!(target: "filament::tracing", "{speaker}: {message}"),
            LogLevel::Info => ::tracing::info!(target: "filament::tracing", "{speaker}: {message}"),
            LogLevel::Debug => {
                ::tracing::debug!(target: "filament::tracing", "{speaker}: {message}")
            }
        }
    } else if level <= LogLevel::Warn {
        eprintln!("filament: {speaker}: {message}");
    }
}
