//! Span processors: what a plugin hands the host to receive finished spans.
//!
//! Plugin authors implement [`SpanProcessor`], an ordinary Rust trait whose methods all but `on_end`
//! have no-op defaults. [`TracingSetup::add_span_processor`](crate::TracingSetup::add_span_processor)
//! wraps it in a guard that catches panics and turns them into [`ProcessorError::Panicked`], and hands
//! the host a [`RawSpanProcessor`] trait object: abi_stable would abort the whole process on a panic
//! that reached the boundary.
//!
//! # Threading contract
//!
//! `on_start` and `on_end` are called on the thread that started or ended the span, possibly from
//! many threads at once, inside the user's code: they must not block. An exporter that can be slow
//! queues with a bounded queue and drops (and counts) what does not fit.

use crate::record::SpanRecord;
use abi_stable::{
    StableAbi, sabi_trait,
    std_types::{RDuration, RResult, RString},
};
use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// Why a processor call failed.
#[repr(C, u8)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub enum ProcessorError {
    /// The processor panicked; the panic's message.
    Panicked(RString),
    /// The operation did not finish within its timeout.
    Timeout(RDuration),
    /// The processor was shut down already.
    AlreadyShutdown,
    /// Anything else, with a message.
    Failed(RString),
}

impl ProcessorError {
    /// A [`ProcessorError::Failed`] from any message.
    pub fn failed(message: impl fmt::Display) -> Self {
        ProcessorError::Failed(message.to_string().into())
    }
}

impl fmt::Display for ProcessorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProcessorError::Panicked(message) => write!(f, "panicked: {message}"),
            ProcessorError::Timeout(after) => {
                write!(f, "timed out after {:.1?}", Duration::from(*after))
            }
            ProcessorError::AlreadyShutdown => f.write_str("already shut down"),
            ProcessorError::Failed(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for ProcessorError {}

/// What a processor has done so far, for the host's status reports.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessorStats {
    /// Spans written or sent.
    pub exported: u64,
    /// Spans lost: a full queue, an exporter that was down, a failed write. Spans whose export
    /// failed are counted here too; [`SpanProcessor::failed`] tells how many of these they are.
    pub dropped: u64,
}

/// A plugin's span processor. Implement `on_end`; everything else has a default.
///
/// See the [module documentation](self) for the threading contract.
pub trait SpanProcessor: Send + Sync + 'static {
    /// A short name for reports (`local-file`, `jaeger`). Defaults to the type's name.
    fn name(&self) -> String {
        std::any::type_name::<Self>().to_owned()
    }

    /// Whether `on_start` should be called at all. The host skips building a record for span
    /// starts unless some processor asks for them.
    fn wants_on_start(&self) -> bool {
        false
    }

    /// A span started (its end time is 0). Must not block.
    fn on_start(&self, _span: &SpanRecord<'_>) {}

    /// A span ended. Must not block. The record is borrowed for this call only.
    fn on_end(&self, span: &SpanRecord<'_>);

    /// Exports everything buffered, within `timeout`.
    fn force_flush(&self, _timeout: Duration) -> Result<(), ProcessorError> {
        Ok(())
    }

    /// Flushes and releases resources, within `timeout`. Called once; later spans are not delivered.
    fn shutdown(&self, _timeout: Duration) -> Result<(), ProcessorError> {
        Ok(())
    }

    /// Counts of exported and dropped spans.
    fn stats(&self) -> ProcessorStats {
        ProcessorStats::default()
    }

    /// Spans an exporter was given but failed to deliver (refused, timed out, unreachable). They
    /// are lost, so [`stats`](Self::stats) counts them in `dropped` as well: this tells the host
    /// how many of the dropped spans failed in the exporter rather than never reaching it.
    ///
    /// Added in ABI 1.1; a host asking a plugin built earlier gets 0.
    fn failed(&self) -> u64 {
        0
    }
}

/// The stable-ABI form of a span processor, as the host calls it. Plugins never implement this
/// directly: they implement [`SpanProcessor`], whose guard implements this.
///
/// New methods are appended after the last one, with a default body.
#[cfg(not(filament_abi_1_0_test))]
#[sabi_trait]
pub trait RawSpanProcessor: Send + Sync {
    /// See [`SpanProcessor::name`].
    fn name(&self) -> RString;

    /// See [`SpanProcessor::wants_on_start`].
    fn wants_on_start(&self) -> bool;

    /// See [`SpanProcessor::on_start`].
    fn on_start(&self, span: &SpanRecord<'_>) -> RResult<(), ProcessorError>;

    /// See [`SpanProcessor::on_end`].
    fn on_end(&self, span: &SpanRecord<'_>) -> RResult<(), ProcessorError>;

    /// See [`SpanProcessor::force_flush`].
    fn force_flush(&self, timeout: RDuration) -> RResult<(), ProcessorError>;

    /// See [`SpanProcessor::shutdown`].
    fn shutdown(&self, timeout: RDuration) -> RResult<(), ProcessorError>;

    /// See [`SpanProcessor::stats`].
    #[sabi(last_prefix_field)]
    fn stats(&self) -> ProcessorStats;

    /// See [`SpanProcessor::failed`]. Appended in ABI 1.1, after the prefix: a plugin built against
    /// ABI 1.0 has no such entry and the host gets this default, 0.
    fn failed(&self) -> u64 {
        0
    }
}

// ABI 1.0's processor, without `failed`: built only by the test that loads a hook built against
// 1.0 (`--cfg filament_abi_1_0_test`, in a target directory of its own). `#[sabi_trait]` does not
// see `#[cfg]` on a method, hence the whole trait.
#[cfg(filament_abi_1_0_test)]
#[allow(missing_docs)]
#[sabi_trait]
pub trait RawSpanProcessor: Send + Sync {
    fn name(&self) -> RString;
    fn wants_on_start(&self) -> bool;
    fn on_start(&self, span: &SpanRecord<'_>) -> RResult<(), ProcessorError>;
    fn on_end(&self, span: &SpanRecord<'_>) -> RResult<(), ProcessorError>;
    fn force_flush(&self, timeout: RDuration) -> RResult<(), ProcessorError>;
    fn shutdown(&self, timeout: RDuration) -> RResult<(), ProcessorError>;
    #[sabi(last_prefix_field)]
    fn stats(&self) -> ProcessorStats;
}

/// A plugin's processor behind the panic guard. Made by
/// [`TracingSetup::add_span_processor`](crate::TracingSetup::add_span_processor).
#[derive(Debug)]
pub struct Guarded<P>(pub P);

/// The message of a caught panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

fn guard<T>(f: impl FnOnce() -> Result<T, ProcessorError>) -> RResult<T, ProcessorError> {
    match quietly_after_the_first_panic(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(result) => result.into(),
        Err(payload) => RResult::RErr(ProcessorError::Panicked(panic_message(&*payload).into())),
    }
}

thread_local! {
    /// Whether this thread is inside a guarded processor call.
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a panic inside a guarded call was printed already.
static PRINTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Runs `call` with the panic hook printing only the first panic of any guarded call of this
/// library: a processor that panics on every span must not print once per span (the host reports
/// the failure once and counts the rest). Panics anywhere else print as before.
pub(crate) fn quietly_after_the_first_panic<R>(call: impl FnOnce() -> R) -> R {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let guarded = GUARDED.with(std::cell::Cell::get);
            if !guarded || !PRINTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                previous(info);
            }
        }));
    });
    let outer = GUARDED.with(|g| g.replace(true));
    let result = call();
    GUARDED.with(|g| g.set(outer));
    result
}

impl<P: SpanProcessor> RawSpanProcessor for Guarded<P> {
    fn name(&self) -> RString {
        match catch_unwind(AssertUnwindSafe(|| self.0.name())) {
            Ok(name) => name.into(),
            Err(_) => std::any::type_name::<P>().into(),
        }
    }

    fn wants_on_start(&self) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.0.wants_on_start())).unwrap_or(false)
    }

    fn on_start(&self, span: &SpanRecord<'_>) -> RResult<(), ProcessorError> {
        guard(|| {
            self.0.on_start(span);
            Ok(())
        })
    }

    fn on_end(&self, span: &SpanRecord<'_>) -> RResult<(), ProcessorError> {
        guard(|| {
            self.0.on_end(span);
            Ok(())
        })
    }

    fn force_flush(&self, timeout: RDuration) -> RResult<(), ProcessorError> {
        guard(|| self.0.force_flush(timeout.into()))
    }

    fn shutdown(&self, timeout: RDuration) -> RResult<(), ProcessorError> {
        guard(|| self.0.shutdown(timeout.into()))
    }

    fn stats(&self) -> ProcessorStats {
        catch_unwind(AssertUnwindSafe(|| self.0.stats())).unwrap_or_default()
    }

    #[cfg(not(filament_abi_1_0_test))]
    fn failed(&self) -> u64 {
        catch_unwind(AssertUnwindSafe(|| self.0.failed())).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi_stable::sabi_trait::TD_Opaque;

    struct Counted;

    impl SpanProcessor for Counted {
        fn on_end(&self, _span: &SpanRecord<'_>) {}
        fn stats(&self) -> ProcessorStats {
            ProcessorStats {
                exported: 3,
                dropped: 5,
            }
        }
        fn failed(&self) -> u64 {
            4
        }
    }

    struct Quiet;

    impl SpanProcessor for Quiet {
        fn on_end(&self, _span: &SpanRecord<'_>) {}
    }

    #[test]
    fn the_host_reads_exported_dropped_and_failed_through_the_abi() {
        let raw = RawSpanProcessor_TO::from_value(Guarded(Counted), TD_Opaque);
        assert_eq!(
            raw.stats(),
            ProcessorStats {
                exported: 3,
                dropped: 5
            }
        );
        assert_eq!(raw.failed(), 4);
    }

    #[test]
    fn a_processor_that_does_not_count_failures_reports_none() {
        let raw = RawSpanProcessor_TO::from_value(Guarded(Quiet), TD_Opaque);
        assert_eq!(raw.failed(), 0);
        assert_eq!(raw.stats(), ProcessorStats::default());
    }
}
