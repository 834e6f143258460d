//! Bad input is reported by file and line, the rest is read, the exit code tells, nothing panics.

use crate::support::{S, line, spans, write_file};
use filament_spans::problem::ProblemKind;
use filament_spans::read::{ReadOptions, read};
use filament_spans::tree::Forest;
use std::path::Path;
use std::process::ExitCode;

fn good(n: u64) -> String {
    line(&S::new(7, n, 0, "good", 1, 10, 20), 5, "worker", "01") + "\n"
}

fn problems_of(dir: &Path) -> (usize, Vec<String>) {
    let set = read(&[dir.to_path_buf()], ReadOptions::default());
    (
        set.spans.len(),
        set.problems.iter().map(ToString::to_string).collect(),
    )
}

#[test]
fn a_truncated_last_line_is_reported_and_the_lines_before_it_read() {
    let dir = tempfile::tempdir().unwrap();
    let whole = good(3);
    let text = good(1) + &good(2) + &whole[..whole.len() / 2];
    let file = dir.path().join("5.json");
    std::fs::write(&file, text).unwrap();
    let (read, problems) = problems_of(dir.path());
    assert_eq!(read, 2);
    assert_eq!(problems.len(), 1);
    let expected = format!(
        "{}:3: truncated last line (no newline at the end; was its process killed while writing?)",
        file.display()
    );
    assert!(problems[0].starts_with(&expected), "{}", problems[0]);
    let (out, code) = spans(&[dir.path().to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(2), "something was skipped");
    assert_eq!(out.lines().filter(|l| l.contains("good")).count(), 2);
}

#[test]
fn lines_that_are_not_otlp_json_are_reported_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let bad_id = good(4).replace("\"0000000000000004\"", "\"00004\"");
    let text = good(1)
        + "{\"hello\":\"world\"}\n"
        + "not json at all\n"
        + &good(2)
        + &bad_id
        + "\n"
        + &good(3);
    let file = dir.path().join("5.json");
    std::fs::write(&file, text).unwrap();
    let (read, problems) = problems_of(dir.path());
    assert_eq!(read, 3);
    let f = file.display();
    assert_eq!(problems.len(), 3, "{problems:?}");
    assert_eq!(
        problems[0],
        format!(
            "{f}:2: not an OTLP/JSON TracesData line: no \"resourceSpans\" field; line skipped"
        )
    );
    assert!(
        problems[1].starts_with(&format!(
            "{f}:3: not an OTLP/JSON TracesData line: expected ident"
        )),
        "{}",
        problems[1]
    );
    assert_eq!(
        problems[2],
        format!(
            "{f}:5: not an OTLP/JSON TracesData line: spanId \"00004\" is not 16 hex digits; line skipped"
        )
    );
}

#[test]
fn a_binary_file_is_skipped_whole_and_the_other_files_read() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        5,
        "worker",
        "01",
        &[S::new(7, 1, 0, "good", 1, 10, 20)],
    );
    let core = dir.path().join("core");
    std::fs::write(&core, b"\x7fELF\x02\x01\x01\x00\x00\x00garbage\n").unwrap();
    let (read, problems) = problems_of(dir.path());
    assert_eq!(read, 1);
    assert_eq!(
        problems,
        [format!(
            "{}: not a text file (a NUL byte at offset 7); file skipped",
            core.display()
        )]
    );
}

#[test]
fn an_empty_or_missing_folder_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (read, problems) = problems_of(dir.path());
    assert_eq!(read, 0);
    assert_eq!(
        problems,
        [format!(
            "{}: no span files in this folder",
            dir.path().display()
        )]
    );
    assert_eq!(spans(&[dir.path().to_str().unwrap()]).1, ExitCode::FAILURE);
    // No view of nothing: an empty table would look like an answer.
    assert_eq!(
        spans(&["summary", dir.path().to_str().unwrap()]),
        (String::new(), ExitCode::FAILURE)
    );

    let missing = dir.path().join("nope");
    let (_, problems) = problems_of(&missing);
    assert_eq!(
        problems,
        [format!("{}: no such file or folder", missing.display())]
    );
    assert_eq!(
        spans(&["summary", missing.to_str().unwrap()]).1,
        ExitCode::FAILURE
    );
}

#[test]
fn a_span_whose_parent_is_in_no_file_is_a_root_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(
        dir.path(),
        5,
        "worker",
        "01",
        &[
            S::new(7, 1, 0, "root", 4, 10, 50),
            S::new(7, 2, 1, "child", 5, 20, 30),
            S::new(7, 3, 0x99, "orphan", 5, 25, 40),
            S::new(8, 4, 0, "elsewhere", 4, 60, 70),
        ],
    );
    let set = read(&[dir.path().to_path_buf()], ReadOptions::default());
    let forest = Forest::build(&set.spans);
    let [orphan] = forest.orphans.as_slice() else {
        panic!("{:?}", forest.orphans)
    };
    assert!(matches!(orphan.kind, ProblemKind::OrphanParent { .. }));
    assert_eq!(
        orphan.to_string(),
        format!(
            "{}:3: span \"orphan\" (0000000000000003) has parent 0000000000000099, which is in no file read; shown as a root",
            file.display()
        )
    );
    let (out, code) = spans(&[dir.path().to_str().unwrap()]);
    assert_eq!(code, ExitCode::from(2));
    let tree: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("└─"))
        .map(|l| l.split(" (").next().unwrap())
        .collect();
    assert_eq!(
        tree,
        ["└─ root", "   └─ child", "└─ orphan", "└─ elsewhere"]
    );
    let (_, code) = spans(&[
        dir.path().to_str().unwrap(),
        "--trace",
        "00000000000000000000000000000008",
    ]);
    assert_eq!(
        code,
        ExitCode::SUCCESS,
        "an orphan of a trace not shown is no problem"
    );
}

#[test]
fn spans_whose_parents_form_a_cycle_are_all_shown() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        5,
        "worker",
        "01",
        &[
            S::new(7, 1, 2, "a", 1, 10, 50),
            S::new(7, 2, 1, "b", 1, 20, 30),
            S::new(7, 3, 3, "self", 1, 25, 40),
        ],
    );
    let (out, code) = spans(&[dir.path().to_str().unwrap()]);
    assert_eq!(
        code,
        ExitCode::from(2),
        "a span that is its own parent is reported"
    );
    let tree: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split(" (").next().unwrap())
        .collect();
    assert_eq!(tree, ["└─ self", "└─ a", "   └─ b"]);
}

#[test]
fn arbitrary_text_never_panics_and_every_line_is_read_or_reported() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed pseudo-random mix of good lines, their prefixes and JSON-ish noise.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces = [
        "{",
        "}",
        "[",
        "]",
        "\"resourceSpans\"",
        ":",
        ",",
        "\"spans\"",
        "null",
        "1e999",
        "\"\\u",
        "é",
        "\"traceId\"",
    ];
    let mut text = String::new();
    for n in 0..400u64 {
        match next() % 3 {
            0 => text += &good(n + 1),
            1 => {
                let g = good(n + 1);
                text += &g[..(next() as usize % g.len())];
                text += "\n";
            }
            _ => {
                for _ in 0..(next() % 12) {
                    text += pieces[next() as usize % pieces.len()];
                }
                text += "\n";
            }
        }
    }
    std::fs::write(dir.path().join("5.json"), &text).unwrap();
    let set = read(&[dir.path().to_path_buf()], ReadOptions::default());
    let blank = text.lines().filter(|l| l.trim().is_empty()).count();
    assert_eq!(set.spans.len() + set.problems.len() + blank, 400);
}
