//! Errors of giving, loading, checking and running a tracing startup hook.

use crate::SETUP_TIMEOUT_ENV;
use filament_plugin_api::AbiMismatch;
use std::path::PathBuf;

/// Why a tracing startup hook was refused. Every message names the hook string and the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    /// The hook string is not a list of `library:symbol`.
    #[error("tracing startup hook {hooks:?} is malformed: {reason}")]
    Malformed {
        /// The whole hook string as given.
        hooks: String,
        /// What is wrong with it.
        reason: String,
    },

    /// No library was found under that name.
    #[error(
        "hook \"{hook}\": library not found (searched: {})",
        join_paths(searched)
    )]
    LibraryNotFound {
        /// The hook, `library:symbol`.
        hook: String,
        /// Every path tried, in order.
        searched: Vec<PathBuf>,
    },

    /// The library exists but could not be loaded: unreadable, not a shared object, missing
    /// dependencies.
    #[error("hook \"{hook}\": cannot load {}: {cause}", path.display())]
    LoadFailed {
        /// The hook, `library:symbol`.
        hook: String,
        /// The library's path.
        path: PathBuf,
        /// The loader's explanation.
        cause: String,
    },

    /// The library has no such symbol.
    #[error("hook \"{hook}\": symbol `{symbol}` not found in {}", library.display())]
    SymbolMissing {
        /// The hook, `library:symbol`.
        hook: String,
        /// The symbol.
        symbol: String,
        /// The library's path.
        library: PathBuf,
    },

    /// The symbol exists but is not a hook exported with `filament_plugin_api::export_hook!`.
    /// It was not called.
    #[error(
        "hook \"{hook}\": `{symbol}` is not a Filament tracing hook ({reason}); it was not called"
    )]
    NotAHook {
        /// The hook, `library:symbol`.
        hook: String,
        /// The symbol.
        symbol: String,
        /// What the check found.
        reason: String,
    },

    /// The hook was built against an incompatible `filament-plugin-api`. It was not called.
    #[error("hook \"{hook}\": refused, {cause}")]
    Incompatible {
        /// The hook, `library:symbol`.
        hook: String,
        /// What differs.
        cause: AbiMismatch,
    },

    /// The hook ran and returned an error, or panicked.
    #[error("hook \"{hook}\": setup failed: {message}")]
    SetupFailed {
        /// The hook, `library:symbol`.
        hook: String,
        /// The hook's own error message.
        message: String,
    },
    /// The hook's setup did not return within its deadline; it is left running on a thread of
    /// its own, and nothing it set up is used.
    #[error(
        "hook \"{hook}\": setup did not return within {timeout:?} (a hook must not block; \
         the deadline is {SETUP_TIMEOUT_ENV})"
    )]
    SetupTimeout {
        /// The hook, `library:symbol`.
        hook: String,
        /// The deadline it missed.
        timeout: std::time::Duration,
    },
    /// A setting of the host itself is malformed.
    #[error("{variable}={value:?} is not valid: {reason}")]
    BadSetting {
        /// The environment variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn join_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere".to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
