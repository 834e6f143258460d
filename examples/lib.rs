//! What the examples share: starting a cluster with a tracing hook, and printing the span trees
//! its processes wrote, read and drawn by `filament spans`' own code (`filament-spans`).

#![warn(missing_docs)]

use filament_spans::read::{ReadOptions, read_files, span_files};
use filament_spans::tree::{Forest, TreeStyle, write_trees};
use std::io::Write;
use std::path::PathBuf;

/// The hook the examples use when `FILAMENT_TRACING_STARTUP_HOOK` is unset.
pub const DEFAULT_HOOK: &str = "filament_local_file:setup_tracing";

/// The hook named by `FILAMENT_TRACING_STARTUP_HOOK`, or the local-file hook.
pub fn hook_from_env() -> String {
    std::env::var(filament::tracing::TRACING_STARTUP_HOOK_ENV)
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_HOOK.to_owned())
}

/// The directory the local-file hook writes to: `FILAMENT_SPANS_DIR`, else `/tmp/spans`.
pub fn spans_dir() -> PathBuf {
    filament_spans::cli::default_spans_dir()
}

/// Starts a cluster with the hook from the environment (the local-file hook by default), or
/// attaches to the standing cluster `FILAMENT_ADDRESS` names (whose hook it then uses); prints the
/// error and exits if that fails. Returns the runtime and the hooks it runs.
pub fn init_or_exit() -> (filament::Runtime, String) {
    let config = filament::Config::default();
    let config = if config.address.is_some() {
        config
    } else {
        config.tracing_startup_hook(hook_from_env())
    };
    match filament::init(config) {
        Ok(runtime) => {
            let hooks: Vec<String> = runtime
                .tracing()
                .map(|t| t.hooks().iter().map(ToString::to_string).collect())
                .unwrap_or_default();
            let hook = if hooks.is_empty() {
                "none".to_owned()
            } else {
                hooks.join(",")
            };
            (runtime, hook)
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    }
}

/// Stops the cluster (which flushes every process's spans) and, with the local-file hook, prints
/// the span files of this job and its span trees.
pub fn finish(runtime: filament::Runtime, hook: &str) {
    let job = runtime.job_id().to_owned();
    drop(runtime);
    if !hook.contains("filament_local_file") {
        return;
    }
    let dir = spans_dir();
    let (files, _) = span_files(std::slice::from_ref(&dir));
    let set = read_files(&files, ReadOptions::default());
    let ours: Vec<_> = set
        .spans
        .into_iter()
        .filter(|s| s.process.job == job)
        .collect();
    let mut ours_files: Vec<&PathBuf> = ours.iter().map(|s| s.origin.file.as_ref()).collect();
    ours_files.sort();
    ours_files.dedup();
    println!("span files of this run in {}:", dir.display());
    for file in ours_files {
        println!("  {}", file.display());
    }
    let forest = Forest::build(&ours);
    let traces: Vec<_> = forest.traces.iter().collect();
    let mut out = std::io::stdout().lock();
    let _ = write_trees(&mut out, &ours, &traces, TreeStyle::default()).and_then(|()| out.flush());
    if !forest.orphans.is_empty() {
        eprintln!(
            "{} spans of this run have a parent in no span file; `filament spans {}` lists them",
            forest.orphans.len(),
            dir.display()
        );
    }
}
