//! Finding, loading and checking hook libraries. The only `unsafe` of the host lives here.
//!
//! Order of trust: the library is found and loaded (which runs its initializers, as any shared
//! object's), the named symbol must exist, then its header (`__filament_hook_header__<symbol>`) must
//! exist, carry the magic, the ABI major version and a compatible layout, and point at the named
//! symbol. Only a hook that passes all of that is ever called.
//!
//! Libraries are never unloaded: they are opened with `RTLD_NODELETE` and their handles kept in a
//! static for the life of the process (thread-locals and destructors of unloaded code crash
//! processes, and abi_stable caches layout checks by reference into the library).

use super::{HookError, HookSpec};
use filament_plugin_api::{AbiMismatch, HookEntry, HookHeader, hook, hook::HookHeaderPrefix};
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::ffi::c_void;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Extra directories to search for hook libraries given by bare name, `:`-separated; searched
/// first. Then [`plugin_home`], then the folder of the `filament` command found on `PATH`, then
/// next to the program's executable and in the cargo target directory it runs from.
pub const PLUGIN_PATH_ENV: &str = "FILAMENT_PLUGIN_PATH";

/// This user's folder of installed plugins (`filament plugins install`):
/// `$XDG_DATA_HOME/filament/plugins`, else `~/.local/share/filament/plugins`.
pub fn plugin_home() -> Option<PathBuf> {
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .map(|home| PathBuf::from(home).join(".local/share"))
        })?;
    Some(data.join("filament").join("plugins"))
}

/// The folder of the `filament` command on `PATH`, if there is one: plugins installed beside it
/// (as `cargo install` would put them) are found from any program.
fn command_dir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .find(|dir| dir.join("filament").is_file())
}

/// `dlopen` flag: never unload the library, even if its handle is closed. libloading does not
/// export it; this is its value on Linux (glibc and musl alike).
const RTLD_NODELETE: i32 = 0x1000;

/// Every library ever loaded, kept so that none is unloaded.
static LOADED: Mutex<Vec<Library>> = Mutex::new(Vec::new());

/// A hook that passed every check and may be called.
#[derive(Debug, Clone)]
pub(crate) struct CheckedHook {
    pub(crate) spec: HookSpec,
    /// The library file it was loaded from, canonical.
    pub(crate) path: PathBuf,
    pub(crate) entry: HookEntry,
    /// The ABI version the hook was built against, `(major, minor)`.
    pub(crate) abi: (u32, u32),
}

/// Finds, loads and checks one hook. Nothing in the library is called but its initializers.
pub(crate) fn load_hook(spec: &HookSpec) -> Result<CheckedHook, HookError> {
    let hook = spec.to_string();
    let (path, library) = open_library(spec)?;

    let symbol_address =
        lookup(&library, &spec.symbol).ok_or_else(|| HookError::SymbolMissing {
            hook: hook.clone(),
            symbol: spec.symbol.clone(),
            library: path.clone(),
        })?;
    let header_name = hook::header_symbol(&spec.symbol);
    let header_address = lookup(&library, &header_name).ok_or_else(|| HookError::NotAHook {
        hook: hook.clone(),
        symbol: spec.symbol.clone(),
        reason: format!(
            "the library has no `{header_name}` header; hooks are exported with filament_plugin_api::export_hook!"
        ),
    })?;
    let header_ptr = header_address.cast::<HookHeader>();

    // SAFETY: a symbol named `__filament_hook_header__<symbol>` exists. That name is reserved for
    // `export_hook!`, which makes it a `HookHeader`, starting with the never-changing prefix; a
    // library the user chose as their hook is trusted not to misuse the name (the size of a data
    // symbol is not checked). The prefix is read by value and unaligned, trusting nothing more.
    let prefix = unsafe { header_ptr.cast::<HookHeaderPrefix>().read_unaligned() };
    if prefix.magic != hook::HOOK_MAGIC {
        return Err(HookError::NotAHook {
            hook,
            symbol: spec.symbol.clone(),
            reason: format!("`{header_name}` does not carry the Filament hook magic"),
        });
    }
    if prefix.abi_major != hook::ABI_MAJOR {
        return Err(HookError::Incompatible {
            hook,
            cause: AbiMismatch::MajorVersion {
                host: hook::ABI_MAJOR,
                hook: prefix.abi_major,
            },
        });
    }
    if !header_ptr.is_aligned() {
        return Err(HookError::NotAHook {
            hook,
            symbol: spec.symbol.clone(),
            reason: format!("`{header_name}` is not aligned as a header"),
        });
    }
    // SAFETY: the magic and the major version match, so this is a whole `HookHeader` of this
    // host's ABI, made by `export_hook!`, and the pointer is aligned. The library is never
    // unloaded (opened with RTLD_NODELETE), so the reference may be `'static`.
    let header: &'static HookHeader = unsafe { &*header_ptr };
    let entry = header.check().map_err(|cause| HookError::Incompatible {
        hook: hook.clone(),
        cause,
    })?;
    if entry.setup as usize != symbol_address as usize {
        return Err(HookError::NotAHook {
            hook,
            symbol: spec.symbol.clone(),
            reason: format!(
                "`{header_name}` describes another function than `{}`",
                spec.symbol
            ),
        });
    }
    keep_loaded(library);
    Ok(CheckedHook {
        spec: spec.clone(),
        path: std::fs::canonicalize(&path).unwrap_or(path),
        entry,
        abi: (prefix.abi_major, prefix.abi_minor),
    })
}

/// The address of an exported symbol, if there is one.
fn lookup(library: &Library, name: &str) -> Option<*const c_void> {
    // SAFETY: the symbol is read as an opaque address and never called or dereferenced here; the
    // type `*const c_void` makes no claim about what it points to.
    let symbol = unsafe { library.get::<*const c_void>(name.as_bytes()) }.ok()?;
    let address = *symbol;
    (!address.is_null()).then_some(address)
}

fn keep_loaded(library: Library) {
    LOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(library);
}

fn open_library(spec: &HookSpec) -> Result<(PathBuf, Library), HookError> {
    let hook = spec.to_string();
    let load = |path: &Path, dlopen_name: &str| {
        // SAFETY: loading a library runs its initializers. The user named this library as their
        // tracing hook, so they trust its code; the checks that follow protect against calling a
        // symbol of the wrong type, not against hostile code (as with any plugin system).
        unsafe { Library::open(Some(dlopen_name), RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) }.map_err(
            |error| HookError::LoadFailed {
                hook: hook.clone(),
                path: path.to_owned(),
                cause: error_chain(&error),
            },
        )
    };

    let (explicit, beside_exe) = candidate_paths(&spec.library);
    // FILAMENT_PLUGIN_PATH is an order: its first match wins. Next to the executable and in the
    // cargo target directory, `target/<profile>/` and `deps/` may hold copies of different ages
    // (cargo refreshes only one of them per build): the newest is the one just built.
    let found = explicit
        .iter()
        .find(|path| path.exists())
        .or_else(|| {
            beside_exe
                .iter()
                .filter_map(|path| Some((std::fs::metadata(path).ok()?.modified().ok()?, path)))
                .max_by_key(|(modified, _)| *modified)
                .map(|(_, path)| path)
        })
        .or_else(|| beside_exe.iter().find(|path| path.exists()));
    if let Some(path) = found
        && let Ok(metadata) = std::fs::metadata(path)
    {
        // Before anything opens it: opening a FIFO blocks until a writer comes, forever.
        if !metadata.is_file() {
            return Err(HookError::LoadFailed {
                hook,
                path: path.clone(),
                cause: format!("it is {}, not a shared object", file_kind(&metadata)),
            });
        }
        // Non-blocking all the same: the file may have been swapped since it was looked at.
        let readable = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path);
        if let Err(error) = readable {
            return Err(HookError::LoadFailed {
                hook,
                path: path.clone(),
                cause: format!("cannot read it: {error}"),
            });
        }
        // A relative path without a slash would make dlopen search its own path: anchor it.
        let anchored = if path.is_absolute() {
            path.clone()
        } else {
            Path::new(".").join(path)
        };
        let library = load(path, &anchored.to_string_lossy())?;
        return Ok((path.clone(), library));
    }
    let searched: Vec<PathBuf> = explicit.into_iter().chain(beside_exe).collect();
    // A soname such as `libc.so.6` may live where only the system loader looks.
    let mut searched = searched;
    if is_plain_soname(&spec.library) {
        if let Ok(library) = load(Path::new(&spec.library), &spec.library) {
            return Ok((PathBuf::from(&spec.library), library));
        }
        searched.push(PathBuf::from(format!(
            "the system library path for {}",
            spec.library
        )));
    }
    Err(HookError::LibraryNotFound { hook, searched })
}

/// What a file that is not a regular file is, for messages.
fn file_kind(metadata: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let kind = metadata.file_type();
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

fn is_plain_soname(library: &str) -> bool {
    !library.contains('/') && (library.ends_with(".so") || library.contains(".so."))
}

/// Where a library given as `library` may be: the paths from `FILAMENT_PLUGIN_PATH`, in order, and
/// those next to the executable and in the cargo target directory it runs from.
///
/// A path (anything with a `/`) is taken as it is. A bare name is looked for as given when it looks
/// like a file name (`libfoo.so`, `libc.so.6`), else as `lib<name>.so` and `<name>.so`; next to the
/// executable means its directory and, for tests and examples, `target/<profile>/` and its `deps/`.
pub(crate) fn candidate_paths(library: &str) -> (Vec<PathBuf>, Vec<PathBuf>) {
    if library.contains('/') {
        return (vec![PathBuf::from(library)], Vec::new());
    }
    let file_names: Vec<String> = if is_plain_soname(library) {
        vec![library.to_owned()]
    } else {
        vec![format!("lib{library}.so"), format!("{library}.so")]
    };
    let in_dirs = |dirs: Vec<PathBuf>| -> Vec<PathBuf> {
        let mut paths = Vec::new();
        for dir in dirs {
            for name in &file_names {
                let path = dir.join(name);
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        paths
    };
    (in_dirs(plugin_path_dirs()), in_dirs(exe_dirs()))
}

fn plugin_path_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os(PLUGIN_PATH_ENV)
        .map(|value| {
            std::env::split_paths(&value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(plugin_home());
    dirs.extend(command_dir());
    dirs
}

fn exe_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
    {
        dirs.push(exe_dir.clone());
        // Cargo puts tests and benches in `target/<profile>/deps/`, examples in
        // `target/<profile>/examples/`, and built cdylibs in `target/<profile>/` and its `deps/`.
        let profile_dir = match exe_dir.file_name().and_then(|n| n.to_str()) {
            Some("deps" | "examples") => exe_dir.parent().map(Path::to_path_buf),
            _ => Some(exe_dir),
        };
        if let Some(profile_dir) = profile_dir {
            dirs.push(profile_dir.join("deps"));
            dirs.push(profile_dir);
        }
    }
    let mut unique = Vec::new();
    for dir in dirs {
        if !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// libloading keeps dlerror's text in the error's source: print the whole chain.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
