//! The `filament` command's `spans` subcommand, run as a user runs it.

use crate::support::fixture;
use std::path::PathBuf;
use std::process::Command;

/// The `filament` binary of this build profile, built fresh (a test of this crate alone would
/// find an old one, or none).
fn filament() -> PathBuf {
    let profile = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test runs from target/<profile>/deps")
        .to_owned();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .args(["build", "--quiet", "-p", "filament", "--bin", "filament"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile.file_name().is_some_and(|n| n == "release") {
        cargo.arg("--release");
    }
    assert!(
        cargo.status().expect("cargo runs").success(),
        "building filament failed"
    );
    profile.join("filament")
}

#[test]
fn filament_spans_reads_the_default_folder_and_names_what_is_wrong() {
    let filament = filament();
    let out = Command::new(&filament)
        .args(["spans", "summary", "--json"])
        .env("FILAMENT_SPANS_DIR", fixture("quickstart"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (json["traces"].as_u64(), json["spans"].as_u64()),
        (Some(2), Some(5))
    );

    let out = Command::new(&filament)
        .args(["spans", "--last", "1"])
        .env("FILAMENT_SPANS_DIR", fixture("quickstart"))
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("trace e7f45031239a2168bee42d9d9a18e3fb "),
        "{stdout}"
    );
    assert!(!stdout.contains('\x1b'), "piped: no colour");

    let missing = fixture("no-such-folder");
    let out = Command::new(&filament)
        .args(["spans", "tree"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!(
            "filament spans: {}: no such file or folder",
            missing.display()
        )),
        "{stderr}"
    );

    // Options before the command: the command's name lands among the folders.
    let out = Command::new(&filament)
        .args(["spans", "--last", "1", "summary"])
        .env("FILAMENT_SPANS_DIR", fixture("quickstart"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(
            "\"summary\" is taken as a span folder, which does not exist: options go after the command (`filament spans summary --last 1`, say)"
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing shown");
}
