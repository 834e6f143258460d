//! Trees: the seed's run as the example printed it, and the choices of `filament spans tree`.

use crate::support::{S, fixture, spans, write_file};
use std::process::ExitCode;

#[test]
fn the_quickstart_run_reads_back_as_the_trees_the_example_printed() {
    let expected = std::fs::read_to_string(fixture("quickstart-trees.txt")).unwrap();
    let set = filament_spans::read::read(&[fixture("quickstart")], Default::default());
    let forest = filament_spans::tree::Forest::build(&set.spans);
    let traces: Vec<_> = forest.traces.iter().collect();
    let mut out = Vec::new();
    filament_spans::tree::write_trees(&mut out, &set.spans, &traces, Default::default()).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[test]
fn the_tree_command_adds_start_offsets_and_trace_headers() {
    let dir = fixture("quickstart");
    let (out, code) = spans(&[dir.to_str().unwrap()]);
    assert_eq!(code, ExitCode::SUCCESS);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert!(
        lines[0].starts_with("trace a916bd0347969bc58e4debc088a5a22c  2026-"),
        "{out}"
    );
    assert!(lines[0].ends_with(" UTC, 2 spans, 124.8 µs"), "{out}");
    assert_eq!(
        lines[1],
        "└─ quickstart::my_function filament.remote (producer, 24.5 µs, pid 7383) +0 ns"
    );
    assert_eq!(
        lines[2],
        "   └─ quickstart::my_function filament.remote_worker (consumer, 8.8 µs, pid 16424) +115.9 µs"
    );
    assert_eq!(
        lines[6],
        "      └─ foo (internal, 951 ns, pid 16424) +20.5 µs"
    );
    assert!(!out.contains('\x1b'), "no colour when not on a terminal");
}

fn three_traces() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let old = now - 3_600_000_000_000;
    write_file(
        dir.path(),
        10,
        "driver",
        "01",
        &[
            S::new(1, 0x11, 0, "a remote", 4, old, old + 100_000),
            S::new(2, 0x21, 0, "b remote", 4, now - 2_000, now),
        ],
    );
    write_file(
        dir.path(),
        20,
        "worker",
        "02",
        &[
            S::new(3, 0x31, 0, "c remote", 4, now - 1_000, now),
            S::new(
                1,
                0x12,
                0x11,
                "a remote_worker",
                5,
                old + 50_000,
                old + 90_000,
            ),
            S::new(2, 0x22, 0x21, "b remote_worker", 5, now - 1_500, now - 500).failed("boom"),
        ],
    );
    dir
}

fn trace_ids(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.strip_prefix("trace "))
        .map(|l| {
            l.split_whitespace()
                .next()
                .unwrap()
                .trim_start_matches('0')
                .to_owned()
        })
        .collect()
}

#[test]
fn traces_are_chosen_by_id_name_job_age_errors_and_recency() {
    let dir = three_traces();
    let d = dir.path().to_str().unwrap();
    let ids = |args: &[&str]| {
        let mut all = vec!["tree", d];
        all.extend(args);
        let (out, code) = spans(&all);
        assert_eq!(code, ExitCode::SUCCESS, "{args:?}");
        trace_ids(&out)
    };
    assert_eq!(ids(&[]), ["1", "2", "3"], "oldest first");
    assert_eq!(ids(&["--trace", "00000000000000000000000000000002"]), ["2"]);
    assert_eq!(ids(&["--name", "*remote_worker"]), ["1", "2"]);
    assert_eq!(ids(&["--name", "c*"]), ["3"]);
    assert_eq!(ids(&["--job", "01"]), ["1", "2"]);
    assert_eq!(ids(&["--since", "10m"]), ["2", "3"]);
    assert_eq!(ids(&["--errors"]), ["2"]);
    assert_eq!(ids(&["--last", "2"]), ["2", "3"]);
    assert_eq!(ids(&["--job", "01", "--last", "1"]), ["2"]);
}

#[test]
fn an_error_stands_out_with_its_message_and_in_red_on_a_terminal() {
    let dir = three_traces();
    let (out, _) = spans(&["tree", dir.path().to_str().unwrap(), "--errors"]);
    let failed = out.lines().find(|l| l.contains("b remote_worker")).unwrap();
    assert!(failed.ends_with(" ERROR: boom"), "{failed}");
    let (out, _) = spans(&[
        "tree",
        dir.path().to_str().unwrap(),
        "--errors",
        "--color",
        "always",
    ]);
    let failed = out.lines().find(|l| l.contains("b remote_worker")).unwrap();
    assert!(
        failed.contains("\x1b[31mb remote_worker\x1b[0m"),
        "{failed:?}"
    );
}
