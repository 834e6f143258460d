//! A program of its own, outside the workspace, that depends on `filament-tracing` alone: it loads
//! the local-file hook, its spans reach the files, and none of the runtime comes with it.

use filament_tests::{plugin_path, read_spans_dir};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const MANIFEST: &str = r#"[package]
name = "tracing-alone"
version = "0.1.0"
edition = "2024"
publish = false

[workspace]

[dependencies]
filament-tracing = { path = "@TRACING@" }
opentelemetry = { version = "0.33", default-features = false, features = ["trace"] }
"#;

const MAIN: &str = r#"use opentelemetry::KeyValue;
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

/// Writes the program in a folder of its own, outside the workspace, with the workspace's lock
/// file (so it builds the versions the workspace was tested with, without a network).
fn write_program(dir: &Path) {
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let tracing = workspace.join("runtime/tracing").canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        MANIFEST.replace("@TRACING@", &tracing.display().to_string()),
    )
    .unwrap();
    std::fs::write(dir.join("src/main.rs"), MAIN).unwrap();
    std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
}

#[test]
fn a_program_with_filament_tracing_alone_writes_spans_through_the_local_file_hook() {
    let program = tempfile::tempdir().unwrap();
    write_program(program.path());

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

    // Built where the workspace's tests keep their own builds, so a second run is quick.
    let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("tracing-alone");
    let built = cargo()
        .current_dir(program.path())
        .args(["build", "--quiet", "--offline", "--target-dir"])
        .arg(&target)
        .status()
        .unwrap();
    assert!(built.success(), "the program outside the workspace builds");

    let spans = tempfile::tempdir().unwrap();
    let hook = format!(
        "{}:setup_tracing",
        plugin_path("filament_local_file").display()
    );
    let output = Command::new(target.join("debug/tracing-alone"))
        .arg(&hook)
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
