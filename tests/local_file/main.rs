//! The local-file plugin: one file per process, one OTLP/JSON `TracesData` per line, every line read
//! back with the `opentelemetry-proto` crate's decoder.

use filament::tracing::Tracing;
use filament_tests::{hex, read_span_file, read_spans_dir};
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Array, KeyValue, StringValue, Value as Value_};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind as ProtoKind, status::StatusCode};
use std::path::Path;
use std::process::Command;

const LOCAL_FILE: &str = "filament_local_file:setup_tracing";

fn local_file(dir: &Path) -> Tracing {
    Tracing::new(LOCAL_FILE).config("FILAMENT_SPANS_DIR", dir.to_str().unwrap())
}

fn own_file(dir: &Path) -> std::path::PathBuf {
    dir.join(format!("{}.json", std::process::id()))
}

#[test]
fn every_field_of_a_span_survives_the_trip_to_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let guard = local_file(dir.path()).build().unwrap();
    let tracer = guard.provider().unwrap().tracer("roundtrip");

    let linked = SpanContext::new(
        opentelemetry::trace::TraceId::from_bytes([7; 16]),
        opentelemetry::trace::SpanId::from_bytes([9; 8]),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "value")]).unwrap(),
    );
    let (parent_trace, parent_span) = tracer.in_span("parent", |cx| {
        let mut child = tracer
            .span_builder("child")
            .with_kind(SpanKind::Consumer)
            .with_links(vec![Link::with_context(linked.clone())])
            .start_with_context(&tracer, &cx);
        child.set_attributes([
            KeyValue::new("s", "text"),
            KeyValue::new("b", true),
            KeyValue::new("i", i64::MAX),
            KeyValue::new("f", 2.5),
            KeyValue::new(
                "sa",
                Value_::Array(Array::String(vec![
                    StringValue::from("x"),
                    StringValue::from("y"),
                ])),
            ),
            KeyValue::new("ia", Value_::Array(Array::I64(vec![1, -2]))),
            KeyValue::new("ba", Value_::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("fa", Value_::Array(Array::F64(vec![0.5]))),
        ]);
        child.add_event(
            "exception",
            vec![KeyValue::new("exception.message", "boom")],
        );
        child.set_status(Status::error("it failed"));
        child.end();
        let sc = cx.span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    });

    // On disk as soon as each span ended, before any flush or shutdown.
    let spans = read_span_file(&own_file(dir.path()));
    assert_eq!(spans.len(), 2);
    let (child, parent) = (&spans[0], &spans[1]);
    assert_eq!(parent.name(), "parent");
    assert_eq!(parent.parent_span_id(), "", "a root has no parent");
    assert_eq!(parent.trace_id(), format!("{parent_trace}"));
    assert_eq!(parent.span_id(), format!("{parent_span}"));
    assert_eq!(child.trace_id(), parent.trace_id());
    assert_eq!(child.parent_span_id(), parent.span_id());
    assert_eq!(child.scope_name, "roundtrip");
    assert_eq!(child.span.kind, ProtoKind::Consumer as i32);
    assert!(child.span.end_time_unix_nano >= child.span.start_time_unix_nano);
    assert!(child.span.start_time_unix_nano > 1_600_000_000_000_000_000);
    assert_eq!(child.span.flags & 0xff, 1, "sampled");

    assert_eq!(
        child.attribute("s"),
        Some(&Value::StringValue("text".into()))
    );
    assert_eq!(child.attribute("b"), Some(&Value::BoolValue(true)));
    assert_eq!(child.attribute("i"), Some(&Value::IntValue(i64::MAX)));
    assert_eq!(child.attribute("f"), Some(&Value::DoubleValue(2.5)));
    let Some(Value::ArrayValue(strings)) = child.attribute("sa") else {
        panic!("sa: {:?}", child.attribute("sa"))
    };
    let strings: Vec<_> = strings
        .values
        .iter()
        .map(|v| v.value.clone().unwrap())
        .collect();
    assert_eq!(
        strings,
        [
            Value::StringValue("x".into()),
            Value::StringValue("y".into())
        ]
    );
    let Some(Value::ArrayValue(ints)) = child.attribute("ia") else {
        panic!("ia")
    };
    assert_eq!(ints.values[1].value, Some(Value::IntValue(-2)));

    assert_eq!(child.span.events.len(), 1);
    assert_eq!(child.span.events[0].name, "exception");
    assert_eq!(
        filament_tests::find(&child.span.events[0].attributes, "exception.message"),
        Some(&Value::StringValue("boom".into()))
    );
    let status = child.span.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "it failed");

    assert_eq!(child.span.links.len(), 1);
    let link = &child.span.links[0];
    assert_eq!(hex(&link.trace_id), "07".repeat(16));
    assert_eq!(hex(&link.span_id), "09".repeat(8));
    assert_eq!(link.trace_state, "vendor=value");

    assert_eq!(
        child.resource_attribute("process.pid"),
        Some(&Value::IntValue(i64::from(std::process::id())))
    );
    guard.shutdown().unwrap();
}

#[test]
fn lines_follow_the_otlp_json_encoding_of_the_file_exporter_spec() {
    let dir = tempfile::tempdir().unwrap();
    let guard = local_file(dir.path()).build().unwrap();
    let tracer = guard.provider().unwrap().tracer("encoding");
    let mut span = tracer.start("encoded");
    span.set_attribute(KeyValue::new("count", 42));
    span.end();
    guard.shutdown().unwrap();

    let text = std::fs::read_to_string(own_file(dir.path())).unwrap();
    assert_eq!(text.lines().count(), 1);
    let line: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
    let span = &line["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    let trace_id = span["traceId"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32);
    assert!(
        trace_id
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    assert_eq!(span["spanId"].as_str().unwrap().len(), 16);
    assert!(
        span["startTimeUnixNano"].is_string(),
        "64-bit integers as strings"
    );
    assert!(span["kind"].is_number(), "enums as integers");
    assert_eq!(span["attributes"][0]["value"]["intValue"], "42");
}

#[test]
fn the_spans_directory_is_created_when_missing() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a").join("b");
    let guard = local_file(&nested).build().unwrap();
    let tracer = guard.provider().unwrap().tracer("mkdir");
    tracer.in_span("x", |_| {});
    guard.shutdown().unwrap();
    assert_eq!(read_span_file(&own_file(&nested)).len(), 1);
}

#[test]
fn a_spans_directory_that_cannot_be_created_is_an_error_at_setup() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "").unwrap();
    let below_a_file = file.join("spans");
    let error = local_file(&below_a_file).build().unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "hook \"{LOCAL_FILE}\": setup failed: cannot create the spans directory {} (FILAMENT_SPANS_DIR): Not a directory (os error 20)",
            below_a_file.display()
        )
    );
}

#[test]
fn a_span_file_that_cannot_be_written_is_an_error_at_setup() {
    let dir = tempfile::tempdir().unwrap();
    // Where this process's file should go, a directory: not writable, even for root.
    std::fs::create_dir(own_file(dir.path())).unwrap();
    let error = local_file(dir.path()).build().unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "hook \"{LOCAL_FILE}\": setup failed: cannot open the span file {} for writing (FILAMENT_SPANS_DIR): Is a directory (os error 21)",
            own_file(dir.path()).display()
        )
    );
}

#[test]
fn nothing_is_lost_when_a_process_exits_without_shutting_down() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_traced-program"))
        .args([
            "--hooks",
            LOCAL_FILE,
            "--spans",
            "2000",
            "--exit-without-shutdown",
        ])
        .env("FILAMENT_SPANS_DIR", dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let files = read_spans_dir(dir.path());
    assert_eq!(files.len(), 1);
    let spans = files.values().next().unwrap();
    assert_eq!(spans.len(), 2000);
    let mut names: Vec<_> = spans.iter().map(|s| s.name().to_owned()).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 2000, "no span lost or duplicated");
}

#[test]
fn each_process_writes_its_own_file_named_by_its_pid() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let output = Command::new(env!("CARGO_BIN_EXE_traced-program"))
            .args(["--hooks", LOCAL_FILE, "--spans", "3"])
            .env("FILAMENT_SPANS_DIR", dir.path())
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("pid="))
            .unwrap()
            .parse::<u32>()
            .unwrap()
    };
    let (first, second) = (run(), run());
    let files = read_spans_dir(dir.path());
    assert_eq!(files.keys().copied().collect::<Vec<_>>(), {
        let mut pids = vec![first, second];
        pids.sort();
        pids
    });
    for (pid, spans) in files {
        assert_eq!(spans.len(), 3);
        assert!(
            spans
                .iter()
                .all(|s| s.resource_attribute("process.pid")
                    == Some(&Value::IntValue(i64::from(pid))))
        );
    }
}

#[test]
fn spans_go_to_tmp_spans_by_default() {
    let output = Command::new(env!("CARGO_BIN_EXE_traced-program"))
        .args(["--hooks", LOCAL_FILE, "--spans", "1"])
        .env_remove("FILAMENT_SPANS_DIR")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let pid = stdout.lines().find_map(|l| l.strip_prefix("pid=")).unwrap();
    let file = Path::new("/tmp/spans").join(format!("{pid}.json"));
    let spans = read_span_file(&file);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name(), "span-0");
}

/// The `key=value` counts of the local-file processor's report line of `traced-program`.
fn local_file_report(stdout: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("processor \"local-file"))
        .unwrap_or_else(|| panic!("no report in {stdout}"));
    let value = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|word| word.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    (value("exported="), value("dropped="))
}

#[test]
fn a_full_disk_never_leaves_half_a_line_and_counts_what_it_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // A file size limit stands in for a full disk: the write that crosses it is short, the next
    // ones fail. (SIGXFSZ is ignored so that the process sees the errors instead of dying.)
    let output = Command::new("sh")
        .args(["-c", "ulimit -f 64; trap '' XFSZ; exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_traced-program"))
        .args(["--hooks", LOCAL_FILE, "--spans", "200"])
        .env("FILAMENT_SPANS_DIR", dir.path())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (exported, dropped) = local_file_report(&stdout);
    assert_eq!(exported + dropped, 200, "{stdout}");
    assert!(exported > 0 && dropped > 0, "{stdout}");
    // Every line whole (read_span_file panics on any that is not), one per exported span.
    let files = read_spans_dir(dir.path());
    let lines: usize = files.values().map(Vec::len).sum();
    assert_eq!(lines as u64, exported);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches("filament_local_file: cannot write spans")
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
fn a_span_file_deleted_mid_run_is_made_again_and_what_went_to_it_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spans_dir = dir.path().join("spans");
    let mut child = Command::new(env!("CARGO_BIN_EXE_traced-program"))
        .args([
            "--hooks",
            LOCAL_FILE,
            "--spans",
            "40",
            "--interval-ms",
            "100",
        ])
        .env("FILAMENT_SPANS_DIR", &spans_dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut printed = String::new();
    loop {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stdout, &mut line).unwrap() > 0);
        printed.push_str(&line);
        if line.trim() == "ended=9" {
            break;
        }
    }
    // Ten spans are in the file: the whole folder goes.
    std::fs::remove_dir_all(&spans_dir).unwrap();
    std::io::Read::read_to_string(&mut stdout, &mut printed).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let (exported, dropped) = local_file_report(&printed);
    assert_eq!(exported + dropped, 40, "{printed}");

    let files = read_spans_dir(&spans_dir);
    let spans: Vec<_> = files.values().flatten().collect();
    let made_again = spans.len() as u64;
    assert!(made_again > 0, "the file was made again: {printed}");
    // The new file holds the last spans, in order, with no gap.
    let names: Vec<String> = spans.iter().map(|s| s.name().to_owned()).collect();
    let expected: Vec<String> = (40 - made_again..40).map(|i| format!("span-{i}")).collect();
    assert_eq!(names, expected);
    // What went to the deleted file after it was deleted is counted as dropped (and possibly a
    // few lines from just before, in the same second): never counted as exported.
    assert!(dropped >= 40 - 10 - made_again, "{printed}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.matches("was deleted").count(), 1, "{stderr}");
}

/// The error `local_file(dir)` fails with.
fn refused_in(dir: &Path) -> String {
    match local_file(dir).build() {
        Ok(_) => panic!("spans were let into {}", dir.display()),
        Err(error) => error.to_string(),
    }
}

/// The uid of `nobody`, for files and folders another user planted (these tests run as root in CI;
/// as another user, `chown` fails and they say so).
const NOBODY: u32 = 65534;

fn plant_as_nobody(path: &Path) -> bool {
    match std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)) {
        Ok(()) => true,
        Err(error) => {
            eprintln!("skipped: cannot give {} to nobody: {error}", path.display());
            false
        }
    }
}

#[test]
fn a_link_planted_at_the_span_files_name_is_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, own_file(dir.path())).unwrap();
    let error = refused_in(dir.path());
    assert!(
        error.contains("it is a symbolic link: refusing to follow it"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn a_fifo_planted_at_the_span_files_name_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new("mkfifo")
        .arg(own_file(dir.path()))
        .status()
        .unwrap();
    assert!(made.success());
    let (done, answer) = std::sync::mpsc::channel();
    let path = dir.path().to_owned();
    std::thread::spawn(move || {
        let _ = done.send(refused_in(&path));
    });
    let error = answer
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("setup returned instead of waiting for a reader");
    assert!(
        error.contains("not a regular file") || error.contains("No such device"),
        "{error}"
    );
}

#[test]
fn a_spans_folder_others_may_write_without_the_sticky_bit_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let error = refused_in(dir.path());
    assert!(
        error.contains(
            "others may write it (mode 777) and it is not sticky; `chmod go-w` or `chmod +t` it"
        ),
        "{error}"
    );
    // Sticky, as /tmp is: fine.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    local_file(dir.path()).build().unwrap().shutdown().unwrap();
}

#[test]
fn a_spans_folder_or_file_of_another_user_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    if !plant_as_nobody(&theirs) {
        return;
    }
    let error = refused_in(&theirs);
    assert!(
        error.contains(&format!("it belongs to user {NOBODY}")),
        "{error}"
    );

    let file = own_file(dir.path());
    std::fs::write(&file, "").unwrap();
    assert!(plant_as_nobody(&file));
    let error = refused_in(dir.path());
    assert!(
        error.contains(&format!("it belongs to user {NOBODY}, not to this user")),
        "{error}"
    );
}

#[test]
fn a_process_that_recorded_no_span_leaves_no_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let guard = local_file(dir.path()).build().unwrap();
    assert!(
        own_file(dir.path()).exists(),
        "opened at setup, to fail early"
    );
    guard.shutdown().unwrap();
    assert!(!own_file(dir.path()).exists());
    // A file that was there before (a reused pid) is never removed, even empty.
    std::fs::write(own_file(dir.path()), "").unwrap();
    local_file(dir.path()).build().unwrap().shutdown().unwrap();
    assert!(own_file(dir.path()).exists());
}

/// Runs `traced-program` with the local-file hook in batch mode and `env`; its output.
fn run_batch(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_traced-program"))
        .args(["--hooks", LOCAL_FILE])
        .args(args)
        .env("FILAMENT_SPANS_DIR", dir)
        .env("FILAMENT_LOCAL_FILE_MODE", "batch")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    output
}

/// The lines of every span file in `dir`, with how many spans each holds.
fn spans_per_line(dir: &Path) -> Vec<usize> {
    let mut counts = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            counts.push(
                value["resourceSpans"][0]["scopeSpans"][0]["spans"]
                    .as_array()
                    .map_or(0, Vec::len),
            );
        }
    }
    counts
}

#[test]
fn in_batch_mode_every_span_arrives_once_many_to_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_batch(dir.path(), &["--spans", "2000", "--flush-first"], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(local_file_report(&stdout), (2000, 0), "{stdout}");
    let files = read_spans_dir(dir.path());
    assert_eq!(files.len(), 1);
    let spans = files.values().next().unwrap();
    let mut names: Vec<_> = spans.iter().map(|s| s.name().to_owned()).collect();
    assert_eq!(names.len(), 2000);
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 2000, "no span lost or duplicated");
    // Every line carries the resource, and at most a batch (512) of spans.
    assert!(
        spans
            .iter()
            .all(|s| s.resource_attribute("process.pid").is_some())
    );
    let per_line = spans_per_line(dir.path());
    assert!(
        per_line.len() <= 20,
        "2000 spans in {} lines",
        per_line.len()
    );
    assert!(
        per_line.iter().all(|&n| (1..=512).contains(&n)),
        "{per_line:?}"
    );
}

#[test]
fn in_batch_mode_a_line_is_written_once_the_schedule_delay_passed_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let guard = local_file(dir.path())
        .config("FILAMENT_LOCAL_FILE_MODE", "batch")
        .config("OTEL_BSP_SCHEDULE_DELAY", "20")
        .build()
        .unwrap();
    let tracer = guard.provider().unwrap().tracer("timer");
    tracer.in_span("waits-for-the-timer", |_| {});
    // Neither a flush nor a shutdown: only the timer writes it. (Polled, not timed.)
    let file = own_file(dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(&file).map_or(0, |m| m.len()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never written without a flush"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let spans = read_span_file(&file);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].name(), "waits-for-the-timer");
    guard.shutdown().unwrap();
}

#[test]
fn in_batch_mode_force_flush_writes_what_is_queued() {
    let dir = tempfile::tempdir().unwrap();
    // A delay no test waits out: only the flush writes the spans.
    let guard = local_file(dir.path())
        .config("FILAMENT_LOCAL_FILE_MODE", "batch")
        .config("OTEL_BSP_SCHEDULE_DELAY", "3600000")
        .build()
        .unwrap();
    let tracer = guard.provider().unwrap().tracer("flush");
    for i in 0..10 {
        tracer.in_span(format!("span-{i}"), |_| {});
    }
    guard.force_flush().unwrap();
    let spans = read_span_file(&own_file(dir.path()));
    assert_eq!(spans.len(), 10);
    assert_eq!(spans_per_line(dir.path()), [10], "one line");
    guard.shutdown().unwrap();
}

#[test]
fn in_batch_mode_a_full_queue_drops_and_counts_instead_of_blocking() {
    let dir = tempfile::tempdir().unwrap();
    // A queue of one, written only at shutdown: all but the spans the writer took are dropped.
    let output = run_batch(
        dir.path(),
        &["--spans", "500", "--flush-first"],
        &[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "1"),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
        ],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (exported, dropped) = local_file_report(&stdout);
    assert_eq!(exported + dropped, 500, "{stdout}");
    assert!(dropped > 0, "{stdout}");
    let written: usize = read_spans_dir(dir.path()).values().map(Vec::len).sum();
    assert_eq!(written as u64, exported);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches("the queue of spans to write is full (OTEL_BSP_MAX_QUEUE_SIZE)")
            .count(),
        1,
        "warned once: {stderr}"
    );
}

#[test]
fn in_batch_mode_a_process_that_exits_without_shutdown_leaves_whole_lines_of_its_first_spans() {
    // The promise: what reached the file are whole lines, each span at most once, in the order
    // they ended; what was lost is the spans queued or in the line being built at the exit.
    let dir = tempfile::tempdir().unwrap();
    run_batch(
        dir.path(),
        &[
            "--spans",
            "30",
            "--interval-ms",
            "20",
            "--exit-without-shutdown",
        ],
        &[("OTEL_BSP_SCHEDULE_DELAY", "10")],
    );
    let files = read_spans_dir(dir.path());
    let spans: Vec<_> = files.values().flatten().collect();
    let names: Vec<String> = spans.iter().map(|s| s.name().to_owned()).collect();
    let expected: Vec<String> = (0..names.len()).map(|i| format!("span-{i}")).collect();
    assert_eq!(names, expected, "a prefix of the spans, each once");
    // With a 10 ms delay and 20 ms between spans, lines were written during the run.
    assert!(!names.is_empty(), "nothing was written before the exit");
}

#[test]
fn an_unknown_mode_is_an_error_at_setup_naming_the_variable_and_value() {
    let dir = tempfile::tempdir().unwrap();
    let error = local_file(dir.path())
        .config("FILAMENT_LOCAL_FILE_MODE", "batched")
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(r#"FILAMENT_LOCAL_FILE_MODE="batched": unknown mode; use "simple""#),
        "{error}"
    );
    let error = local_file(dir.path())
        .config("FILAMENT_LOCAL_FILE_MODE", "batch")
        .config("OTEL_BSP_SCHEDULE_DELAY", "5s")
        .build()
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(r#"OTEL_BSP_SCHEDULE_DELAY="5s": not a whole number above zero"#),
        "{error}"
    );
}

#[test]
fn a_task_span_line_holds_no_default_valued_fields() {
    let dir = tempfile::tempdir().unwrap();
    let guard = local_file(dir.path()).build().unwrap();
    let tracer = guard.provider().unwrap().tracer("compact");
    let mut span = tracer.start("plain");
    span.set_attribute(KeyValue::new("count", 42));
    span.end();
    guard.shutdown().unwrap();
    let text = std::fs::read_to_string(own_file(dir.path())).unwrap();
    for default in [
        r#""droppedAttributesCount":0"#,
        r#""events":[]"#,
        r#""links":[]"#,
        r#""schemaUrl":"""#,
        r#""traceState":"""#,
        r#""parentSpanId":"""#,
        r#""entityRefs":[]"#,
        r#""status""#,
    ] {
        assert!(!text.contains(default), "{default} in {text}");
    }
    // And the reader restores them.
    let spans = read_span_file(&own_file(dir.path()));
    assert_eq!(spans[0].span.dropped_attributes_count, 0);
    assert!(spans[0].span.events.is_empty());
}
