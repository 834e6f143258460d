//! Programs of their own, outside the workspace, built by path against its crates as a user builds
//! them: one that depends on `filament-tracing` alone, and one with another `opentelemetry` in its
//! own manifest.

use filament_tests::{plugin_path, read_spans_dir};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const TRACING_ALONE_MANIFEST: &str = r#"[package]
name = "tracing-alone"
version = "0.1.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
filament-tracing = { path = "@TRACING@" }
opentelemetry = { version = "0.33", default-features = false, features = ["trace"] }
"#;

const TRACING_ALONE_MAIN: &str = r#"use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, Tracer as _};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hook = std::env::args().nth(1).expect("the hook string");
    let guard = filament_tracing::install(&hook)?;
    let tracer = opentelemetry::global::tracer("tracing-alone");
    tracer.in_span("outer", |_cx| {
        let mut inner = tracer.start("inner");
        inner.set_attribute(KeyValue::new("answer", 42));
        inner.end();
    });
    guard.shutdown()?;
    Ok(())
}
"#;

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // The outer cargo's settings are for the workspace, not for this program.
    command
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("RUSTFLAGS");
    command
}

/// A program with another `opentelemetry` than the runtime's in its manifest, whose task makes its
/// span through `filament::tracer`.
const OTHER_OTEL_MANIFEST: &str = r#"[package]
name = "other-otel"
version = "0.1.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
filament = { path = "@WORKSPACE@/runtime" }
opentelemetry = { version = "0.31", default-features = false, features = ["trace"] }
"#;

const OTHER_OTEL_MAIN: &str = r#"use filament::opentelemetry::trace::Tracer as _;

#[filament::remote]
fn my_func() -> String {
    // This program's own opentelemetry, another version, is in the build too.
    let _theirs = opentelemetry::KeyValue::new("opentelemetry", "0.31");
    filament::tracer("other-otel").in_span("foo", |_cx| "hello".to_owned())
}

fn main() {
    let runtime = filament::init(filament::Config::default().num_workers(1)).expect("init");
    println!("said={}", my_func::remote().get().expect("my_func"));
    drop(runtime);
}
"#;

/// Writes a program in a folder of its own, outside the workspace, with the workspace's lock file
/// (so it builds the versions the workspace was tested with).
fn write_program(dir: &Path, manifest: &str, main: &str) {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let manifest = manifest
        .replace("@WORKSPACE@", &workspace.display().to_string())
        .replace(
            "@TRACING@",
            &workspace.join("runtime/tracing").display().to_string(),
        );
    std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
    std::fs::write(dir.join("src/main.rs"), main).unwrap();
    std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
}

/// Builds the program in `dir` (`--offline` when the lock file has all it needs) where the
/// workspace's tests keep their own builds, so a second run is quick; returns the target folder.
fn build(dir: &Path, offline: bool) -> PathBuf {
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("outside");
    let mut command = cargo();
    command
        .current_dir(dir)
        .args(["build", "--quiet", "--target-dir"])
        .arg(&target);
    if offline {
        command.arg("--offline");
    }
    let built = command.status().unwrap();
    assert!(built.success(), "the program outside the workspace builds");
    target
}

fn local_file_hook() -> String {
    format!(
        "{}:setup_tracing",
        plugin_path("filament_local_file").display()
    )
}

#[test]
fn a_program_with_filament_tracing_alone_writes_spans_through_the_local_file_hook() {
    let program = tempfile::tempdir().unwrap();
    write_program(program.path(), TRACING_ALONE_MANIFEST, TRACING_ALONE_MAIN);

    // Its dependency tree has the host, and nothing of the runtime.
    let tree = cargo()
        .current_dir(program.path())
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
        .output()
        .unwrap();
    assert!(
        tree.status.success(),
        "{}",
        String::from_utf8_lossy(&tree.stderr)
    );
    let tree = String::from_utf8_lossy(&tree.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"filament-tracing"), "{tree}");
    assert!(crates.contains(&"filament-plugin-api"), "{tree}");
    for runtime_only in [
        "filament",
        "clap",
        "postcard",
        "inventory",
        "filament-macros",
    ] {
        assert!(
            !crates.contains(&runtime_only),
            "{runtime_only} is in the tree of a program that depends on filament-tracing alone:\n{tree}"
        );
    }

    let target = build(program.path(), true);

    let spans = tempfile::tempdir().unwrap();
    let output = Command::new(target.join("debug/tracing-alone"))
        .arg(local_file_hook())
        .env("FILAMENT_SPANS_DIR", spans.path())
        .env_remove("OTEL_SDK_DISABLED")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let files = read_spans_dir(spans.path());
    let spans: Vec<_> = files.values().flatten().collect();
    assert_eq!(spans.len(), 2, "{spans:?}");
    let outer = spans.iter().find(|s| s.name() == "outer").expect("outer");
    let inner = spans.iter().find(|s| s.name() == "inner").expect("inner");
    assert_eq!(inner.trace_id(), outer.trace_id());
    assert_eq!(inner.parent_span_id(), outer.span_id());
    assert_eq!(inner.attribute("answer"), Some(&Value::IntValue(42)));
}

#[test]
fn a_program_with_another_opentelemetry_gets_its_task_span_through_filament_tracer() {
    let program = tempfile::tempdir().unwrap();
    write_program(program.path(), OTHER_OTEL_MANIFEST, OTHER_OTEL_MAIN);
    // opentelemetry 0.31 is not in the workspace's lock file: this build resolves it.
    let target = build(program.path(), false);

    let spans = tempfile::tempdir().unwrap();
    let output = Command::new(target.join("debug/other-otel"))
        .env("FILAMENT_TRACING_STARTUP_HOOK", local_file_hook())
        .env("FILAMENT_SPANS_DIR", spans.path())
        .env_remove("FILAMENT_ADDRESS")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("said=hello"));

    let files = read_spans_dir(spans.path());
    let spans: Vec<_> = files.values().flatten().collect();
    let names: Vec<&str> = spans.iter().map(|s| s.name()).collect();
    let foo = spans
        .iter()
        .find(|s| s.name() == "foo")
        .unwrap_or_else(|| panic!("no span foo in {names:?}"));
    let consumer = spans
        .iter()
        .find(|s| s.name() == "other_otel::my_func filament.remote_worker")
        .unwrap_or_else(|| panic!("no CONSUMER span in {names:?}"));
    assert_eq!(foo.parent_span_id(), consumer.span_id());
    assert_eq!(foo.trace_id(), consumer.trace_id());
}

/// A remote function of a crate `dup` whose two versions the program below holds at once.
fn write_dup_crate(dir: &Path, version: &str) {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"dup\"\nversion = \"{version}\"\nedition = \"2024\"\n\n\
             [dependencies]\nfilament = {{ path = \"{}/runtime\" }}\n",
            workspace.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("src/lib.rs"),
        "#[filament::remote]\npub fn work() -> u32 { 1 }\n",
    )
    .unwrap();
}

#[test]
fn a_program_holding_two_versions_of_a_crate_with_the_same_remote_function_is_refused() {
    // Beside the program, not in it: path dependencies in its folder would be workspace members.
    let folder = tempfile::tempdir().unwrap();
    write_dup_crate(&folder.path().join("dup-1"), "0.1.0");
    write_dup_crate(&folder.path().join("dup-2"), "0.2.0");
    let program = folder.path().join("program");
    let manifest = OTHER_OTEL_MANIFEST
        .replace("other-otel", "two-dups")
        .replace(
            "opentelemetry = { version = \"0.31\", default-features = false, features = [\"trace\"] }",
            "dup1 = { path = \"../dup-1\", package = \"dup\" }\ndup2 = { path = \"../dup-2\", package = \"dup\" }",
        );
    let main = r#"fn main() {
    let _ = (dup1::work::remote, dup2::work::remote);
    match filament::init(filament::Config::default().num_workers(1)) {
        Ok(_) => println!("started"),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(3);
        }
    }
}
"#;
    write_program(&program, &manifest, main);
    let target = build(&program, true);
    let output = Command::new(target.join("debug/two-dups"))
        .env_remove("FILAMENT_ADDRESS")
        .env_remove("FILAMENT_TRACING_STARTUP_HOOK")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: dup::work is registered twice"),
        "{stderr}"
    );
}
