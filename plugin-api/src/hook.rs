//! Exporting a hook, and what the host checks before calling one.
//!
//! [`export_hook!`](crate::export_hook) makes two symbols from one hook function `f` exported as
//! `setup_tracing`:
//!
//! - `setup_tracing`, an `extern "C"` entry that runs `f` behind a panic guard;
//! - `__filament_hook_header__setup_tracing`, a [`HookHeader`]: a magic value, the ABI version, and
//!   abi_stable's [`TypeLayout`] of the entry's signature (which reaches every type that crosses the
//!   boundary: the setup handle, the span record, the processor).
//!
//! The host looks the header up by name, so a symbol that was not exported by this macro —
//! `libc.so.6:printf`, or any other function of a plugin — has none and is refused without being
//! called. Then it compares the magic, the major version and the layouts, checks that the header
//! points at the named symbol, and only then calls it.

use crate::processor::panic_message;
use crate::setup::{RawTracingSetup_TO, TracingSetup};
use abi_stable::{
    StableAbi,
    abi_stability::abi_checking::{
        AbiInstability, AbiInstabilityErrors, check_layout_compatibility,
    },
    std_types::{RErr, ROk, RResult, RString},
    type_layout::{TLFieldOrFunction, TypeLayout},
};
use std::fmt::{self, Display};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// The first 16 bytes of every hook header. Never changes.
pub const HOOK_MAGIC: [u8; 16] = *b"filament-hook\0\0\x01";

/// The ABI's major version: hooks of another major version are refused. Bumped only when the
/// header or a type crossing the boundary changes incompatibly; growth by appending keeps it.
pub const ABI_MAJOR: u32 = 1;

/// The ABI's minor version: grows when methods or fields are appended.
///
/// - 1.1: `RawSpanProcessor::failed` (spans an exporter failed to deliver), appended. Hooks built
///   against 1.0 keep loading (their processors report 0), and 1.0 hosts load 1.1 hooks.
/// - 1.2: `RawTracingSetup::enable_instrumentation` and `add_task_interceptor`, appended, with the
///   interceptor types. Hooks built against 1.1 keep loading; a 1.2 hook in a 1.1 host is told
///   that the host has no instrumentations.
#[cfg(not(any(filament_abi_1_0_test, filament_abi_1_1_test)))]
pub const ABI_MINOR: u32 = 2;
/// The minor version of a build that stands for ABI 1.1, for the compatibility test.
#[cfg(all(filament_abi_1_1_test, not(filament_abi_1_0_test)))]
pub const ABI_MINOR: u32 = 1;
/// The minor version of a build that stands for ABI 1.0, for the compatibility test.
#[cfg(filament_abi_1_0_test)]
pub const ABI_MINOR: u32 = 0;

/// The prefix of a hook's header symbol: hook `setup_tracing` has header
/// `__filament_hook_header__setup_tracing`.
pub const HEADER_SYMBOL_PREFIX: &str = "__filament_hook_header__";

/// The name of the header symbol that goes with a hook symbol.
pub fn header_symbol(hook_symbol: &str) -> String {
    format!("{HEADER_SYMBOL_PREFIX}{hook_symbol}")
}

/// The hook's entry point, as its header describes it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct HookEntry {
    /// Runs the hook. Returns the hook's error message on failure (a panic included).
    pub setup: for<'a> extern "C" fn(
        RawTracingSetup_TO<'a, abi_stable::sabi_types::RMut<'a, ()>>,
    ) -> RResult<(), RString>,
}

/// The part of every [`HookHeader`] that never changes, of any ABI version: what a host reads
/// before it trusts anything else.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct HookHeaderPrefix {
    /// Always [`HOOK_MAGIC`].
    pub magic: [u8; 16],
    /// The ABI major version the hook was built against.
    pub abi_major: u32,
    /// The ABI minor version the hook was built against.
    pub abi_minor: u32,
}

/// What a hook exports next to its entry. It starts with a [`HookHeaderPrefix`], whose layout
/// never changes, so any version of the host can read it before trusting anything else.
#[repr(C)]
#[derive(Debug)]
pub struct HookHeader {
    /// Always [`HOOK_MAGIC`].
    pub magic: [u8; 16],
    /// [`ABI_MAJOR`] of the `filament-plugin-api` the hook was built against.
    pub abi_major: u32,
    /// [`ABI_MINOR`] of the `filament-plugin-api` the hook was built against.
    pub abi_minor: u32,
    /// abi_stable's layout of [`HookEntry`] as the hook was built.
    pub entry_layout: &'static TypeLayout,
    /// The entry.
    pub entry: HookEntry,
}

impl HookHeader {
    /// The header for an entry built against this version of the API. Used by [`export_hook!`].
    ///
    /// [`export_hook!`]: crate::export_hook
    pub const fn new(entry: HookEntry) -> Self {
        HookHeader {
            magic: HOOK_MAGIC,
            abi_major: ABI_MAJOR,
            abi_minor: ABI_MINOR,
            entry_layout: <HookEntry as StableAbi>::LAYOUT,
            entry,
        }
    }

    /// Checks a header whose magic matched: the major version, then the layout of everything that
    /// crosses the boundary. Returns the entry to call.
    pub fn check(&'static self) -> Result<HookEntry, AbiMismatch> {
        if self.magic != HOOK_MAGIC {
            return Err(AbiMismatch::NotAHook);
        }
        if self.abi_major != ABI_MAJOR {
            return Err(AbiMismatch::MajorVersion {
                host: ABI_MAJOR,
                hook: self.abi_major,
            });
        }
        let host = <HookEntry as StableAbi>::LAYOUT;
        // abi_stable lets the second layout's prefix types (the trait objects' vtables) have more
        // trailing fields than the first's, never fewer. A hook of a newer minor version has more
        // methods: checked as it is. A hook of an older minor version has fewer: checked the other
        // way round, which then requires everything else to match just as strictly. A hook that
        // has more in one vtable and less in another fails both.
        check_layout_compatibility(host, self.entry_layout)
            .or_else(|errors| {
                check_layout_compatibility(self.entry_layout, host).map_err(|_| errors)
            })
            .map_err(|errors| AbiMismatch::Layout(summarize_layout_errors(&errors)))?;
        Ok(self.entry)
    }
}

/// Why a hook's header was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbiMismatch {
    /// The header's magic is not [`HOOK_MAGIC`].
    NotAHook,
    /// Built against another major version of `filament-plugin-api`.
    MajorVersion {
        /// The host's [`ABI_MAJOR`].
        host: u32,
        /// The hook's.
        hook: u32,
    },
    /// The layouts differ; a short description of where and how.
    Layout(String),
}

impl Display for AbiMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbiMismatch::NotAHook => {
                f.write_str("its header does not carry the Filament hook magic")
            }
            AbiMismatch::MajorVersion { host, hook } => write!(
                f,
                "it was built against filament-plugin-api ABI version {hook}, this host speaks version {host}; rebuild the plugin"
            ),
            AbiMismatch::Layout(why) => write!(
                f,
                "it was built against an incompatible filament-plugin-api ({why}); rebuild the plugin"
            ),
        }
    }
}

impl std::error::Error for AbiMismatch {}

/// abi_stable reports a mismatch as a thousand-line dump of both layouts; the cause is a few words in
/// it. This keeps the words: the path of fields down to the mismatch, and what differs there.
fn summarize_layout_errors(errors: &AbiInstabilityErrors) -> String {
    let mut causes = Vec::new();
    for error in errors.errors.iter() {
        let path: Vec<&str> = error
            .stack_trace
            .iter()
            .map(|step| match &step.found {
                TLFieldOrFunction::Field(field) => field.name(),
                TLFieldOrFunction::Function(function) => function.name.as_str(),
            })
            .collect();
        let at = if path.is_empty() {
            String::from("at the top level")
        } else {
            format!("at `{}`", path.join("."))
        };
        for instability in error.errs.iter() {
            causes.push(format!("{at}: {}", describe(instability)));
        }
    }
    match causes.len() {
        0 => "layouts differ".to_owned(),
        n if n > 3 => format!("{}; and {} more", causes[..3].join("; "), n - 3),
        _ => causes.join("; "),
    }
}

fn describe(instability: &AbiInstability) -> String {
    fn pair<T: Display>(
        what: &str,
        v: &abi_stable::abi_stability::abi_checking::ExpectedFound<T>,
    ) -> String {
        format!("{what}: host has {}, plugin has {}", v.expected, v.found)
    }
    fn pair_dbg<T: fmt::Debug>(
        what: &str,
        v: &abi_stable::abi_stability::abi_checking::ExpectedFound<T>,
    ) -> String {
        format!(
            "{what}: host has {:?}, plugin has {:?}",
            v.expected, v.found
        )
    }
    match instability {
        AbiInstability::Name(v) => pair("different type", v),
        AbiInstability::Package(v) => pair("different package", v),
        AbiInstability::PackageVersion(v) => pair("incompatible package version", v),
        AbiInstability::Size(v) => pair("different size", v),
        AbiInstability::Alignment(v) => pair("different alignment", v),
        AbiInstability::FieldCountMismatch(v) => pair("different number of fields", v),
        AbiInstability::UnexpectedField(v) => format!(
            "different field: host has `{}: {}`, plugin has `{}: {}`",
            v.expected.name(),
            v.expected.full_type(),
            v.found.name(),
            v.found.full_type()
        ),
        AbiInstability::TooManyVariants(v) => pair("different number of enum variants", v),
        AbiInstability::UnexpectedVariant(v) => pair("different enum variant", v),
        AbiInstability::MismatchedPrimitive(v) => pair_dbg("different primitive type", v),
        AbiInstability::MismatchedPrefixSize(v) => pair("different prefix", v),
        AbiInstability::GenericParamCount(v) => pair("different generic parameters", v),
        AbiInstability::TLDataDiscriminant(v) => pair_dbg("different kind of type", v),
        AbiInstability::ReprAttr(v) => pair_dbg("different repr", v),
        AbiInstability::EnumDiscriminant(v) => pair_dbg("different enum discriminant", v),
        AbiInstability::FnLifetimeMismatch(_) => {
            "function pointers use different lifetimes".to_owned()
        }
        AbiInstability::FnQualifierMismatch(_) => {
            "function pointers differ in `unsafe`/ABI".to_owned()
        }
        AbiInstability::FieldLifetimeMismatch(v) => {
            format!("field `{}` uses different lifetimes", v.found.name())
        }
        other => {
            let mut text = format!("{other:?}");
            if text.len() > 200 {
                let cut = (0..=200)
                    .rev()
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(0);
                text.truncate(cut);
                text.push('…');
            }
            text
        }
    }
}

/// Runs a hook function behind a panic guard; the body of what [`export_hook!`] generates.
///
/// [`export_hook!`]: crate::export_hook
pub fn run_hook<E: Display>(
    raw: crate::setup::RawTracingSetupMut<'_>,
    hook: impl FnOnce(&mut TracingSetup<'_>) -> Result<(), E>,
) -> RResult<(), RString> {
    let mut setup = TracingSetup::from_raw(raw);
    match catch_unwind(AssertUnwindSafe(|| hook(&mut setup))) {
        Ok(Ok(())) => ROk(()),
        Ok(Err(error)) => RErr(error.to_string().into()),
        Err(payload) => RErr(format!("the hook panicked: {}", panic_message(&*payload)).into()),
    }
}

/// Exports a hook function under a symbol name, with the header the host checks before calling it.
///
/// The function takes `&mut TracingSetup<'_>` and returns `Result<(), E>` for any `E: Display`.
///
/// ```
/// use filament_plugin_api::{export_hook, TracingSetup};
///
/// fn setup_tracing(setup: &mut TracingSetup<'_>) -> Result<(), String> {
///     let _ = setup.process();
///     Ok(())
/// }
///
/// // Exported as `setup_tracing`: the hook string is `libmyplugin.so:setup_tracing`.
/// export_hook!(setup_tracing);
///
/// fn with_sampling(setup: &mut TracingSetup<'_>) -> Result<(), String> {
///     Ok(())
/// }
///
/// // Exported as `setup_sampled`: `libmyplugin.so:setup_sampled`.
/// export_hook!(setup_sampled = with_sampling);
/// ```
#[macro_export]
macro_rules! export_hook {
    ($function:ident) => {
        $crate::export_hook!($function = $function);
    };
    ($symbol:ident = $function:path) => {
        const _: () = {
            #[unsafe(export_name = ::core::stringify!($symbol))]
            extern "C" fn __filament_hook_entry(
                raw: $crate::RawTracingSetupMut<'_>,
            ) -> $crate::abi_stable::std_types::RResult<(), $crate::abi_stable::std_types::RString> {
                $crate::hook::run_hook(raw, $function)
            }

            #[unsafe(export_name = ::core::concat!("__filament_hook_header__", ::core::stringify!($symbol)))]
            #[used]
            static __FILAMENT_HOOK_HEADER: $crate::hook::HookHeader =
                $crate::hook::HookHeader::new($crate::hook::HookEntry {
                    setup: __filament_hook_entry,
                });
        };
    };
}
