//! `filament plugins`: installs hook plugins where the loader finds them from any program (this
//! user's plugin home), and lists the plugins found there with their hooks.
//!
//! A library's hooks are the symbols `export_hook!` exported with a header next to them
//! (`__filament_hook_header__<symbol>`), read from the library's dynamic symbol table; each is then
//! checked by the host's loader, which calls nothing.

use crate::tracing::{self, HookInfo};
use object::{Object, ObjectSymbol};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The prefix of the header symbol `export_hook!` puts next to every hook.
const HEADER_PREFIX: &str = "__filament_hook_header__";

/// Why a plugin could not be installed or listed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PluginError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a shared object: {reason}", path.display())]
    NotElf { path: PathBuf, reason: String },
    #[error(
        "{} exports no Filament hook (a plugin exports its hooks with \
         filament_plugin_api::export_hook!)",
        path.display()
    )]
    NoHook { path: PathBuf },
    #[error("{} cannot be installed: {source}", path.display())]
    Refused {
        path: PathBuf,
        #[source]
        source: tracing::HookError,
    },
    #[error(
        "no plugin folder: neither XDG_DATA_HOME nor HOME is set; set {} to a folder of \
         plugins instead",
        tracing::PLUGIN_PATH_ENV
    )]
    NoHome,
    #[error("cannot {action} {}: {source}", path.display())]
    Write {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The hook symbols a library exports.
fn hook_symbols(path: &Path) -> Result<Vec<String>, PluginError> {
    let data = std::fs::read(path).map_err(|source| PluginError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file = object::File::parse(&*data).map_err(|error| PluginError::NotElf {
        path: path.to_owned(),
        reason: error.to_string(),
    })?;
    let mut symbols: Vec<String> = file
        .dynamic_symbols()
        .filter_map(|symbol| {
            symbol
                .name()
                .ok()?
                .strip_prefix(HEADER_PREFIX)
                .map(str::to_owned)
        })
        .collect();
    symbols.sort();
    symbols.dedup();
    Ok(symbols)
}

/// A hook symbol of a library, and what the loader says of it.
type CheckedSymbol = (String, Result<HookInfo, tracing::HookError>);

/// Every hook of the library at `path`, each checked by the loader.
fn hooks_of(path: &Path) -> Result<Vec<CheckedSymbol>, PluginError> {
    let symbols = hook_symbols(path)?;
    if symbols.is_empty() {
        return Err(PluginError::NoHook {
            path: path.to_owned(),
        });
    }
    Ok(symbols
        .into_iter()
        .map(|symbol| {
            let checked = tracing::inspect(&format!("{}:{symbol}", path.display()))
                .map(|mut hooks| hooks.remove(0));
            (symbol, checked)
        })
        .collect())
}

/// The name a program gives an installed library by: `libfoo.so` is `foo`.
fn bare_name(path: &Path) -> String {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    file.strip_prefix("lib")
        .and_then(|rest| rest.strip_suffix(".so"))
        .map_or(file.clone(), str::to_owned)
}

/// Copies the plugin at `path` into this user's plugin home, once every hook in it checks out.
pub(crate) fn install(path: &Path) -> Result<String, PluginError> {
    let mut hooks = Vec::new();
    for (symbol, checked) in hooks_of(path)? {
        let info = checked.map_err(|source| PluginError::Refused {
            path: path.to_owned(),
            source,
        })?;
        hooks.push((symbol, info));
    }
    let home = tracing::plugin_home().ok_or(PluginError::NoHome)?;
    let write = |action, path: &Path| {
        let path = path.to_owned();
        move |source| PluginError::Write {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(&home).map_err(write("create", &home))?;
    let file_name = path.file_name().ok_or_else(|| PluginError::NoHook {
        path: path.to_owned(),
    })?;
    let target = home.join(file_name);
    // Whole or not at all: a program loading it meanwhile sees the old file or the new one.
    let staging = home.join(format!(
        ".{}.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::copy(path, &staging).map_err(write("copy to", &staging))?;
    std::fs::rename(&staging, &target).map_err(|source| {
        let _ = std::fs::remove_file(&staging);
        PluginError::Write {
            action: "install",
            path: target.clone(),
            source,
        }
    })?;
    let name = bare_name(&target);
    let mut out = format!("Installed {} as {}\n", path.display(), target.display());
    for (symbol, info) in &hooks {
        let _ = writeln!(
            out,
            "  hook {name}:{symbol}  (filament-plugin-api ABI {}.{})",
            info.abi.0, info.abi.1
        );
    }
    let _ = write!(
        out,
        "Any program of this user finds it by that name: FILAMENT_TRACING_STARTUP_HOOK={name}:{}",
        hooks[0].0
    );
    Ok(out)
}

/// The plugins in the folders the loader searches by name before the program's own: the folders
/// of `FILAMENT_PLUGIN_PATH`, this user's plugin home, and the `filament` command's.
pub(crate) fn list() -> Result<String, PluginError> {
    let mut folders: Vec<PathBuf> = std::env::var_os(tracing::PLUGIN_PATH_ENV)
        .map(|value| {
            std::env::split_paths(&value)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    folders.extend(tracing::plugin_home());
    if let Ok(exe) = std::fs::read_link("/proc/self/exe")
        && let Some(dir) = exe.parent()
    {
        folders.push(dir.to_owned());
    }
    folders.dedup();
    let mut out = String::new();
    for folder in folders {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        let mut libraries: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "so") && p.is_file())
            .collect();
        libraries.sort();
        for library in libraries {
            // Libraries without hooks (other shared objects beside the command) are not plugins.
            let Ok(hooks) = hooks_of(&library) else {
                continue;
            };
            let _ = writeln!(out, "{}", library.display());
            for (symbol, checked) in hooks {
                let name = bare_name(&library);
                match checked {
                    Ok(info) => {
                        let _ = writeln!(
                            out,
                            "  {name}:{symbol}  ABI {}.{}  loads",
                            info.abi.0, info.abi.1
                        );
                    }
                    Err(error) => {
                        let _ = writeln!(out, "  {name}:{symbol}  does not load: {error}");
                    }
                }
            }
        }
    }
    if out.is_empty() {
        out = format!(
            "No plugins installed (plugin home: {}).",
            tracing::plugin_home().map_or("none".into(), |p| p.display().to_string())
        );
    }
    Ok(out.trim_end().to_owned())
}
