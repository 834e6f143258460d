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
