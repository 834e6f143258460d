//! The `filament` command line refuses bad arguments with a clear message and a non-zero exit,
//! before starting anything. (What it starts is tested end to end in the `filament-tests` crate.)

use std::process::{Command, Output};

fn filament(args: &[&str], temp: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_filament"))
        .args(args)
        .env("FILAMENT_TEMP_DIR", temp)
        .env_remove("FILAMENT_CLUSTER_TOKEN")
        .output()
        .expect("the filament binary runs")
}

fn refused(args: &[&str], expected: &str) {
    let temp = std::env::temp_dir().join(format!("filament-cli-test-{}", std::process::id()));
    let output = filament(args, &temp);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{args:?} succeeded:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "{args:?}: expected {expected:?} in:\n{stderr}"
    );
    // Nothing was started: no session folder holds a running daemon.
    let sessions = std::fs::read_dir(&temp)
        .map(|entries| entries.flatten().count())
        .unwrap_or(0);
    assert_eq!(sessions, 0, "{args:?} left a session in {}", temp.display());
}

#[test]
fn start_needs_head_or_address() {
    refused(&["start"], "--head");
}

#[test]
fn start_takes_head_or_address_not_both() {
    refused(
        &["start", "--head", "--address", "127.0.0.1:1"],
        "cannot be used with",
    );
}

#[test]
fn a_node_takes_no_hook() {
    refused(
        &[
            "start",
            "--address",
            "127.0.0.1:1",
            "--tracing-startup-hook",
            "x:y",
        ],
        "cannot be used with",
    );
}

#[test]
fn zero_cpus_is_refused() {
    refused(&["start", "--head", "--num-cpus", "0"], "--num-cpus");
}

#[test]
fn an_empty_hook_is_refused() {
    refused(
        &["start", "--head", "--tracing-startup-hook", " "],
        "--tracing-startup-hook is empty",
    );
}

#[test]
fn a_bad_port_is_refused() {
    refused(&["start", "--head", "--port", "70000"], "--port");
}

#[test]
fn status_of_an_address_that_is_not_one() {
    refused(&["status", "--address", "not-an-address"], "not-an-address");
}

#[test]
fn unknown_commands_are_refused() {
    refused(&["launch"], "unrecognized subcommand");
}
