//! `filament spans export` against an OTLP/HTTP receiver in the test, which decodes each request
//! with `opentelemetry-proto`.

use crate::support::{S, write_file};
use filament_spans::export::{ExportOptions, export};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the receiver got: span id → times received, and the requests answered with an error.
#[derive(Debug, Default)]
struct Received {
    spans: BTreeMap<u64, usize>,
    requests: usize,
    refused: usize,
    paths: Vec<String>,
    /// Span id → the pid of the resource it came with.
    pids: BTreeMap<u64, i64>,
}

/// An OTLP/HTTP receiver on a free loopback port that answers the first `fail` requests with
/// `status` and takes the others. It serves until the test ends.
fn receiver(fail: usize, status: u16) -> (String, Arc<Mutex<Received>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Received::default()));
    let state = Arc::clone(&received);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let state = Arc::clone(&state);
            std::thread::spawn(move || serve(stream, &state, fail, status));
        }
    });
    (url, received)
}

fn serve(stream: TcpStream, state: &Mutex<Received>, fail: usize, status: u16) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let mut length = 0;
        let mut content_type = String::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "content-type" => content_type = value.trim().to_owned(),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut state = state.lock().unwrap();
        state.requests += 1;
        state.paths.push(path);
        let answer = if state.requests <= fail {
            state.refused += 1;
            format!("HTTP/1.1 {status} Refused\r\ncontent-length: 7\r\n\r\nrefused")
        } else {
            assert_eq!(content_type, "application/x-protobuf");
            let request =
                ExportTraceServiceRequest::decode(body.as_slice()).expect("OTLP protobuf");
            for rs in &request.resource_spans {
                let pid = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "process.pid")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        any_value::Value::IntValue(pid) => Some(*pid),
                        _ => None,
                    })
                    .expect("every span comes with its process's resource");
                for span in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
                    let id = u64::from_be_bytes(span.span_id.as_slice().try_into().unwrap());
                    *state.spans.entry(id).or_default() += 1;
                    state.pids.insert(id, pid);
                }
            }
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
                .to_owned()
        };
        drop(state);
        writer.write_all(answer.as_bytes()).unwrap();
    }
}

/// Three processes' files, 1,000 spans in all; their ids are 1…1000.
fn thousand_spans() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spans: Vec<S> = (1..=1000u64)
        .map(|i| S::new(u128::from(i % 17), i, 0, "task", 5, i, i + 5))
        .collect();
    for (pid, chunk) in [
        (1u32, &spans[..400]),
        (2, &spans[400..700]),
        (3, &spans[700..]),
    ] {
        write_file(
            dir.path(),
            pid,
            if pid == 1 { "driver" } else { "worker" },
            "01",
            chunk,
        );
    }
    dir
}

fn options(url: &str) -> ExportOptions {
    ExportOptions {
        endpoint: url.to_owned(),
        batch_spans: 128,
        backoff: Duration::from_millis(10),
        ..ExportOptions::default()
    }
}

#[test]
fn every_span_arrives_exactly_once_in_batches() {
    let dir = thousand_spans();
    let (url, received) = receiver(0, 503);
    let report = export(&[dir.path().to_path_buf()], &options(&url)).unwrap();
    assert!(
        report.failed.is_empty() && report.problems.is_empty(),
        "{report:?}"
    );
    assert_eq!((report.spans_read, report.spans_sent), (1000, 1000));
    let received = received.lock().unwrap();
    assert_eq!(received.spans.len(), 1000);
    assert!(
        received.spans.iter().all(|(_, &n)| n == 1),
        "a span arrived twice"
    );
    assert_eq!(
        received.spans.keys().copied().collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>()
    );
    assert_eq!(received.requests, 1000usize.div_ceil(128));
    assert!(
        received.paths.iter().all(|p| p == "/v1/traces"),
        "{:?}",
        received.paths
    );
    let pid_of = |id: u64| match id {
        1..=400 => 1,
        401..=700 => 2,
        _ => 3,
    };
    assert!(
        received.pids.iter().all(|(&id, &pid)| pid == pid_of(id)),
        "a span came with another process's resource"
    );
}

#[test]
fn a_receiver_that_fails_twice_then_accepts_still_gets_every_span_once() {
    let dir = thousand_spans();
    let (url, received) = receiver(2, 503);
    let report = export(&[dir.path().to_path_buf()], &options(&url)).unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.spans_sent, 1000);
    let received = received.lock().unwrap();
    assert_eq!(received.refused, 2);
    assert_eq!(received.spans.len(), 1000);
    assert!(
        received.spans.values().all(|&n| n == 1),
        "a span arrived twice"
    );
}

#[test]
fn a_batch_the_receiver_refuses_is_reported_with_its_spans_and_not_retried_for_a_bad_request() {
    let dir = thousand_spans();
    let (url, received) = receiver(usize::MAX, 400);
    let report = export(&[dir.path().to_path_buf()], &options(&url)).unwrap();
    assert_eq!(report.spans_sent, 0);
    assert!(
        report.gave_up,
        "three failed batches in a row stop the export"
    );
    assert_eq!(report.failed.len(), 3);
    let first = &report.failed[0];
    assert_eq!((first.number, first.spans, first.attempts), (1, 128, 1));
    assert!(
        first.to_string().contains("answered HTTP 400: refused"),
        "{first}"
    );
    assert!(
        first.from.ends_with("1.json:1") && first.to.ends_with("1.json:128"),
        "{first}"
    );
    assert_eq!(report.spans_not_sent(), 384);
    assert_eq!(received.lock().unwrap().requests, 3);
}

#[test]
fn an_endpoint_that_cannot_be_reached_is_retried_then_reported() {
    let dir = thousand_spans();
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = options(&format!("http://127.0.0.1:{port}"));
    options.retries = 2;
    let report = export(&[dir.path().to_path_buf()], &options).unwrap();
    assert_eq!(report.spans_sent, 0);
    assert_eq!(report.failed[0].attempts, 3);
    assert!(
        report.failed[0]
            .cause
            .contains(&format!("127.0.0.1:{port}")),
        "{}",
        report.failed[0]
    );
}
