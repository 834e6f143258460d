//! Hooks built against another `filament-plugin-api` are refused before anything in them is called,
//! with a cause short enough to read.

use filament::tracing::{HookError, Tracing};
use std::path::PathBuf;
use std::process::Command;

fn refused(hooks: &str) -> HookError {
    match Tracing::new(hooks).build() {
        Ok(_) => panic!("hook {hooks:?} was accepted"),
        Err(error) => error,
    }
}

#[test]
fn a_hook_of_another_major_version_is_refused() {
    let error = refused("filament_test_hooks:next_major_version");
    assert!(matches!(error, HookError::Incompatible { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        format!(
            "hook \"filament_test_hooks:next_major_version\": refused, it was built against filament-plugin-api ABI version {}, this host speaks version {}; rebuild the plugin",
            filament_plugin_api::ABI_MAJOR + 1,
            filament_plugin_api::ABI_MAJOR
        )
    );
}

#[test]
fn a_header_without_the_magic_is_refused() {
    let error = refused("filament_test_hooks:bad_magic");
    assert!(matches!(error, HookError::NotAHook { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("`__filament_hook_header__bad_magic` does not carry the Filament hook magic"),
        "{error}"
    );
}

#[test]
fn a_header_that_describes_another_function_is_refused() {
    let error = refused("filament_test_hooks:mismatched_header");
    assert!(matches!(error, HookError::NotAHook { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("describes another function than `mismatched_header`"),
        "{error}"
    );
}

/// Builds the test hooks again with `--cfg filament_abi_mismatch_test`, which changes the type of
/// one field of the span record, in a target directory of their own (the cfg must not leak into the
/// workspace's build). Returns the library's path.
fn build_mismatched_plugin() -> PathBuf {
    build_test_hooks_with_cfg("filament_abi_mismatch_test", "abi-mismatch")
}

/// Builds the test hooks with `--cfg <cfg>` in `target/tmp/<dir>`. Returns the library's path.
fn build_test_hooks_with_cfg(cfg: &str, dir: &str) -> PathBuf {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustflags = format!(
        "{} --cfg {cfg}",
        std::env::var("RUSTFLAGS").unwrap_or_default()
    );
    let status = Command::new(cargo)
        .current_dir(&workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            "filament-test-hooks",
            "--target-dir",
        ])
        .arg(&target)
        .env("RUSTFLAGS", rustflags.trim())
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo runs");
    assert!(
        status.success(),
        "building the test hooks with --cfg {cfg} failed"
    );
    target.join("debug").join("libfilament_test_hooks.so")
}

#[test]
fn a_hook_built_against_an_incompatible_plugin_api_is_refused_with_a_short_cause() {
    let library = build_mismatched_plugin();
    let hooks = format!("{}:on_end_panics", library.display());
    let error = refused(&hooks);
    assert!(matches!(error, HookError::Incompatible { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!(
            "hook \"{hooks}\": refused, it was built against an incompatible filament-plugin-api ("
        )),
        "{message}"
    );
    assert!(
        message.contains("dropped_links_count"),
        "names the field: {message}"
    );
    assert!(
        message.contains("u32") && message.contains("u64"),
        "says how it differs: {message}"
    );
    assert!(message.ends_with("; rebuild the plugin"), "{message}");
    assert!(
        message.lines().count() == 1 && message.len() < 600,
        "short: {message}"
    );
}

/// A hook built against ABI 1.0 (whose span processors have no `failed` method, appended in 1.1)
/// keeps loading in this host, and its processor is called.
#[test]
fn a_hook_built_against_an_older_minor_version_is_accepted_and_runs() {
    let library = build_test_hooks_with_cfg("filament_abi_1_0_test", "abi-1-0");
    let hooks = format!("{}:on_end_panics", library.display());
    let guard = Tracing::new(&hooks)
        .build()
        .unwrap_or_else(|e| panic!("an ABI 1.0 hook was refused: {e}"));
    let tracer = opentelemetry::trace::TracerProvider::tracer(guard.provider().unwrap(), "abi");
    opentelemetry::trace::Tracer::in_span(&tracer, "one", |_| {});
    let reports = guard.processors();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].name, "panicking-processor");
    assert_eq!(
        reports[0].failures, 1,
        "the host called the old plugin's on_end, which panicked: {reports:?}"
    );
    guard.shutdown().unwrap();
}

/// A hook built against ABI 1.1 (before `enable_instrumentation` and `add_task_interceptor` were
/// appended to the setup handle in 1.2) keeps loading in this host, next to a 1.2 hook that uses
/// them, and its processor is called.
#[test]
fn a_hook_built_before_instrumentations_were_appended_is_accepted_and_runs() {
    let library = build_test_hooks_with_cfg("filament_abi_1_1_test", "abi-1-1");
    let old = format!("{}:on_end_panics", library.display());
    let info = filament::tracing::inspect(&old).unwrap_or_else(|e| panic!("refused: {e}"));
    assert_eq!(info[0].abi, (filament_plugin_api::ABI_MAJOR, 1));
    let hooks = format!("filament_test_hooks:panicking_interceptor,{old}");
    let guard = Tracing::new(&hooks)
        .build()
        .unwrap_or_else(|e| panic!("an ABI 1.1 hook was refused: {e}"));
    let tracer = opentelemetry::trace::TracerProvider::tracer(guard.provider().unwrap(), "abi");
    opentelemetry::trace::Tracer::in_span(&tracer, "one", |_| {});
    let reports = guard.processors();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        reports[0].failures, 1,
        "the host called the old plugin's on_end, which panicked: {reports:?}"
    );
    guard.shutdown().unwrap();
}
