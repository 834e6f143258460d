//! `filament spans summary` on a span set whose figures are known.

use crate::support::{S, spans, write_file};
use filament_spans::read::{ReadOptions, read};
use filament_spans::summary::{Stats, Summary};
use filament_spans::tree::Forest;
use std::process::ExitCode;

/// 100 tasks: task i (1…100) submitted at i ms for 2i µs by the driver, executed by a worker
/// i·10 µs after its submission, for i µs; tasks 7, 8 and 9 fail.
fn hundred_tasks() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut producers = Vec::new();
    let mut consumers = Vec::new();
    for i in 1..=100u64 {
        let start = 1_700_000_000_000_000_000 + i * 1_000_000;
        producers.push(S::new(
            u128::from(i),
            i,
            0,
            "t remote",
            4,
            start,
            start + 2_000 * i,
        ));
        let run = start + 10_000 * i;
        let consumer = S::new(
            u128::from(i),
            1000 + i,
            i,
            "t remote_worker",
            5,
            run,
            run + 1_000 * i,
        );
        consumers.push(if (7..=9).contains(&i) {
            consumer.failed("panicked")
        } else {
            consumer
        });
    }
    write_file(dir.path(), 1, "driver", "01", &producers);
    write_file(dir.path(), 2, "worker", "01", &consumers);
    dir
}

fn stats(p50: i64, p95: i64, p99: i64, max: i64) -> Stats {
    Stats {
        p50_ns: p50,
        p95_ns: p95,
        p99_ns: p99,
        max_ns: max,
    }
}

#[test]
fn figures_per_name_and_role_are_the_known_ones() {
    let dir = hundred_tasks();
    let set = read(&[dir.path().to_path_buf()], ReadOptions::default());
    let forest = Forest::build(&set.spans);
    let traces: Vec<_> = forest.traces.iter().collect();
    let summary = Summary::of(&set.spans, &traces);
    assert_eq!((summary.traces, summary.spans), (100, 200));
    let [producer, consumer] = summary.rows.as_slice() else {
        panic!("two rows: {:?}", summary.rows)
    };
    assert_eq!(
        (producer.name.as_str(), producer.role.as_str()),
        ("t remote", "driver")
    );
    assert_eq!((producer.count, producer.errors), (100, 0));
    assert_eq!(producer.duration, stats(100_000, 190_000, 198_000, 200_000));
    assert_eq!(producer.start_gap, None, "a PRODUCER has no submission gap");
    assert_eq!(
        (consumer.name.as_str(), consumer.role.as_str()),
        ("t remote_worker", "worker")
    );
    assert_eq!((consumer.count, consumer.errors), (100, 3));
    assert_eq!(consumer.duration, stats(50_000, 95_000, 99_000, 100_000));
    assert_eq!(
        consumer.start_gap,
        Some(stats(500_000, 950_000, 990_000, 1_000_000))
    );
}

#[test]
fn the_json_summary_parses_and_holds_the_same_figures() {
    let dir = hundred_tasks();
    let (out, code) = spans(&["summary", "--json", dir.path().to_str().unwrap()]);
    assert_eq!(code, ExitCode::SUCCESS);
    let json: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(json["traces"], 100);
    let consumer = &json["rows"][1];
    assert_eq!(consumer["name"], "t remote_worker");
    assert_eq!(consumer["errors"], 3);
    assert_eq!(consumer["duration"]["p95_ns"], 95_000);
    assert_eq!(consumer["start_gap"]["p50_ns"], 500_000);
    assert!(json["rows"][0].get("start_gap").is_none());
}

#[test]
fn the_summary_table_has_a_row_per_name_and_role() {
    let dir = hundred_tasks();
    let (out, code) = spans(&["summary", dir.path().to_str().unwrap()]);
    assert_eq!(code, ExitCode::SUCCESS);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("name "), "{out}");
    assert!(lines[1].starts_with("t remote "), "{out}");
    let consumer: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        consumer,
        [
            "t",
            "remote_worker",
            "worker",
            "100",
            "3",
            "50.0",
            "µs",
            "95.0",
            "µs",
            "99.0",
            "µs",
            "100.0",
            "µs",
            "500.0",
            "µs",
            "950.0",
            "µs",
            "1.00",
            "ms"
        ],
        "{out}"
    );
    assert_eq!(lines[3], "100 traces, 200 spans");
}
