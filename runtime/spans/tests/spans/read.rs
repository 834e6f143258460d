//! The reader against `opentelemetry-proto`'s decoder, and reading across threads.

use crate::support::{S, fixture, write_file};
use filament_spans::model::{Kind, Status};
use filament_spans::read::{ReadOptions, read};
use opentelemetry_proto::tonic::trace::v1::TracesData;

#[test]
fn the_reader_finds_what_opentelemetry_proto_decodes_in_every_line() {
    let dir = fixture("quickstart");
    let set = read(
        std::slice::from_ref(&dir),
        ReadOptions {
            details: true,
            ..ReadOptions::default()
        },
    );
    assert!(set.problems.is_empty(), "{:?}", set.problems);
    let mut expected = Vec::new();
    for file in &set.files {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let data: TracesData = serde_json::from_str(line).unwrap();
            for rs in data.resource_spans {
                for span in rs.scope_spans.into_iter().flat_map(|ss| ss.spans) {
                    expected.push(span);
                }
            }
        }
    }
    assert_eq!(set.spans.len(), expected.len());
    assert_eq!(set.spans.len(), 5, "the quickstart's run made 5 spans");
    for (got, want) in set.spans.iter().zip(&expected) {
        assert_eq!(got.trace_id.0.as_slice(), want.trace_id.as_slice());
        assert_eq!(got.span_id.0.as_slice(), want.span_id.as_slice());
        if want.parent_span_id.is_empty() {
            assert!(got.parent_id.is_none());
        } else {
            assert_eq!(got.parent_id.0.as_slice(), want.parent_span_id.as_slice());
        }
        assert_eq!(&*got.name, want.name);
        assert_eq!(got.kind, Kind::from_otlp(want.kind));
        assert_eq!(
            (got.start_ns, got.end_ns),
            (want.start_time_unix_nano, want.end_time_unix_nano)
        );
        let details = got.details.as_ref().unwrap();
        let attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue> =
            serde_json::from_str(&details.attributes_json).unwrap();
        assert_eq!(attributes, want.attributes);
    }
    let driver = set
        .spans
        .iter()
        .find(|s| s.process.role == "driver")
        .unwrap();
    assert_eq!(driver.process.pid, 7383);
    assert_eq!(driver.process.job, "00001cd7");
}

#[test]
fn many_files_read_on_several_threads_give_every_span_in_file_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    for pid in 1..=9u32 {
        let spans: Vec<S> = (0..50u64)
            .map(|i| {
                S::new(
                    u128::from(pid) << 64 | u128::from(i),
                    u64::from(pid) * 1000 + i + 1,
                    0,
                    "task",
                    5,
                    i,
                    i + 10,
                )
            })
            .collect();
        write_file(dir.path(), pid, "worker", "01", &spans);
        all.extend(spans);
    }
    for threads in [1, 2, 4] {
        let set = read(
            &[dir.path().to_path_buf()],
            ReadOptions {
                threads,
                ..ReadOptions::default()
            },
        );
        assert!(set.problems.is_empty());
        // Files by name, lines in order: 1.json … 9.json.
        let ids: Vec<u64> = set
            .spans
            .iter()
            .map(|s| u64::from_be_bytes(s.span_id.0))
            .collect();
        let expected: Vec<u64> = all.iter().map(|s| s.id).collect();
        assert_eq!(ids, expected, "{threads} threads");
        assert!(
            set.spans
                .iter()
                .all(|s| s.status == Status::Unset && s.kind == Kind::Consumer)
        );
    }
}

/// Two lines' `TracesData` as one line: the second's spans in the first's scope when `same_scope`,
/// else the second's resource as a second `resourceSpans`.
fn merged(first: &str, second: &str, same_scope: bool) -> String {
    let mut a: TracesData = serde_json::from_str(first).unwrap();
    let b: TracesData = serde_json::from_str(second).unwrap();
    if same_scope {
        let spans = b.resource_spans[0].scope_spans[0].spans.clone();
        a.resource_spans[0].scope_spans[0].spans.extend(spans);
    } else {
        a.resource_spans.extend(b.resource_spans);
    }
    serde_json::to_string(&a).unwrap()
}

#[test]
fn lines_whose_resource_or_shape_changes_keep_every_span_with_its_own_process() {
    use crate::support::line;
    let s = |id: u64| S::new(1, id, 0, "s", 1, id, id + 1);
    let text = [
        line(&s(1), 10, "driver", "01"),
        line(&s(2), 10, "driver", "01"),
        line(&s(3), 20, "worker", "01"),
        line(&s(4), 10, "driver", "01"),
        merged(
            &line(&s(5), 10, "driver", "01"),
            &line(&s(6), 10, "driver", "01"),
            true,
        ),
        line(&s(7), 10, "driver", "01"),
        merged(
            &line(&s(8), 10, "driver", "01"),
            &line(&s(9), 30, "worker", "02"),
            false,
        ),
        line(&s(10), 30, "worker", "02"),
        line(&s(11), 10, "driver", "01"),
        format!("  {}  ", line(&s(12), 10, "driver", "01")),
    ]
    .join("\n");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mixed.json"), text).unwrap();
    let set = read(&[dir.path().to_path_buf()], ReadOptions::default());
    assert!(set.problems.is_empty(), "{:?}", set.problems);
    let got: Vec<(u64, u32, &str)> = set
        .spans
        .iter()
        .map(|s| {
            (
                u64::from_be_bytes(s.span_id.0),
                s.process.pid,
                s.process.job.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (1, 10, "01"),
            (2, 10, "01"),
            (3, 20, "01"),
            (4, 10, "01"),
            (5, 10, "01"),
            (6, 10, "01"),
            (7, 10, "01"),
            (8, 10, "01"),
            (9, 30, "02"),
            (10, 30, "02"),
            (11, 10, "01"),
            (12, 10, "01"),
        ]
    );
    let lines: Vec<u64> = set.spans.iter().map(|s| s.origin.line).collect();
    assert_eq!(lines, [1, 2, 3, 4, 5, 5, 6, 7, 7, 8, 9, 10]);
}

#[test]
fn a_file_named_twice_is_read_once() {
    let dir = fixture("quickstart");
    let set = read(
        &[dir.clone(), dir.join("7383.json"), dir.join("./7383.json")],
        ReadOptions::default(),
    );
    assert_eq!(set.files.len(), 3, "{:?}", set.files);
    assert_eq!(set.spans.len(), 5);
}
