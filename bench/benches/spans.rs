//! What `filament spans` costs: spans per second read into trees and a summary (the goal:
//! 1,000,000 spans/s over two cores), on one thread and on one per core; and the time to write the
//! HTML page for 100,000 spans (goal: under 2 s).
//!
//! The span files are made from the quickstart's real lines (`runtime/spans/tests/fixtures`: a
//! driver's PRODUCER span and a worker's CONSUMER span as the local-file plugin writes them, about
//! 1.5 kB each, resource included), with new ids and times: one driver file and three worker
//! files, one trace per task. Samples are interleaved (one thread, all threads, one thread, …) so
//! that the noise of a shared machine lands on both alike; medians and bests are printed.
//!
//! Run with `cargo bench -p filament-bench --bench spans`. Without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick smoke pass. It prints figures and never judges
//! timings; it panics only if spans were lost.

use filament_bench::{median, min};
use filament_spans::html::write_html;
use filament_spans::read::{ReadOptions, read_files};
use filament_spans::summary::Summary;
use filament_spans::tree::Forest;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Plan {
    tasks: u64,
    samples: usize,
    smoke: bool,
}

const BENCH: Plan = Plan {
    tasks: 150_000,
    samples: 5,
    smoke: false,
};

const SMOKE: Plan = Plan {
    tasks: 500,
    samples: 1,
    smoke: true,
};

/// The first line of a fixture file, and its ids and times to replace.
struct Template {
    line: String,
    trace: String,
    span: String,
    parent: String,
    start: String,
    end: String,
}

fn template(file: &str) -> Template {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtime/spans/tests/fixtures/quickstart")
        .join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let line = text.lines().next().expect("a span line").to_owned();
    let value: serde_json::Value = serde_json::from_str(&line).expect("OTLP/JSON");
    let span = &value["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    let field = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
    Template {
        trace: field("traceId"),
        span: field("spanId"),
        parent: field("parentSpanId"),
        start: field("startTimeUnixNano"),
        end: field("endTimeUnixNano"),
        line,
    }
}

impl Template {
    fn make(&self, trace: u64, span: u64, parent: Option<u64>, start: u64, end: u64) -> String {
        let mut line = self
            .line
            .replace(&self.trace, &format!("{trace:032x}"))
            .replace(&format!("\"{}\"", self.span), &format!("\"{span:016x}\""))
            .replace(&self.start, &start.to_string())
            .replace(&self.end, &end.to_string());
        if let Some(parent) = parent {
            line = line.replace(&self.parent, &format!("{parent:016x}"));
        }
        line.push('\n');
        line
    }
}

/// Writes `tasks` traces (a PRODUCER in the driver, a CONSUMER in one of three workers) into
/// `dir`; returns the files.
fn make_files(dir: &Path, tasks: u64) -> Vec<PathBuf> {
    let producer = template("7383.json");
    let consumer = template("16424.json");
    let paths: Vec<PathBuf> = (0..4)
        .map(|i| dir.join(format!("{}.json", 100 + i)))
        .collect();
    let mut files: Vec<BufWriter<std::fs::File>> = paths
        .iter()
        .map(|p| BufWriter::new(std::fs::File::create(p).expect("the bench can write")))
        .collect();
    let base = 1_796_000_000_000_000_000u64;
    for task in 0..tasks {
        let start = base + task * 1_000;
        let produced = producer.make(task + 1, 2 * task + 1, None, start, start + 20_000);
        let consumed = consumer.make(
            task + 1,
            2 * task + 2,
            Some(2 * task + 1),
            start + 50_000,
            start + 60_000,
        );
        files[0].write_all(produced.as_bytes()).unwrap();
        files[1 + (task % 3) as usize]
            .write_all(consumed.as_bytes())
            .unwrap();
    }
    for file in &mut files {
        file.flush().unwrap();
    }
    paths
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() {
    let plan = if std::env::args().any(|a| a == "--bench") {
        BENCH
    } else {
        SMOKE
    };
    let dir = tempfile::tempdir().expect("a temporary folder");
    let files = make_files(dir.path(), plan.tasks);
    let spans = 2 * plan.tasks as usize;
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).unwrap().len())
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "filament spans: {spans} spans in {} files, {:.0} MB; {cores} cores{}",
        files.len(),
        bytes as f64 / 1e6,
        if plan.smoke {
            " (smoke pass without --bench: not a measurement)"
        } else {
            ""
        }
    );

    // Read into trees and a summary: one thread, then one per core, interleaved.
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut read_only: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..plan.samples {
        for (v, threads) in [1, 0].into_iter().enumerate() {
            let started = Instant::now();
            let set = read_files(
                &files,
                ReadOptions {
                    threads,
                    ..ReadOptions::default()
                },
            );
            let read_s = started.elapsed().as_secs_f64();
            let forest = Forest::build(&set.spans);
            let traces: Vec<_> = forest.traces.iter().collect();
            let summary = Summary::of(&set.spans, &traces);
            let total_s = started.elapsed().as_secs_f64();
            assert_eq!(
                set.spans.len(),
                spans,
                "spans lost: {:?}",
                set.problems.first()
            );
            assert_eq!(summary.spans, spans);
            assert!(forest.orphans.is_empty());
            rates[v].push(spans as f64 / total_s);
            read_only[v].push(spans as f64 / read_s);
        }
    }
    for (v, label) in ["1 thread", "1 thread per core"].iter().enumerate() {
        println!(
            "  read + tree + summary, {label:<17}: median {:>9.0} spans/s ({:.0} MB/s), best {:>9.0}; reading alone: median {:>9.0} spans/s",
            median(&rates[v]),
            median(&rates[v]) * bytes as f64 / spans as f64 / 1e6,
            -min(&rates[v].iter().map(|r| -r).collect::<Vec<_>>()),
            median(&read_only[v]),
        );
    }
    println!(
        "  peak memory so far: {:.0} MiB for {:.0} MB of files",
        peak_rss_mib(),
        bytes as f64 / 1e6
    );

    // The HTML page of the first 100,000 spans.
    let html_spans = spans.min(100_000);
    let set = read_files(
        &files,
        ReadOptions {
            details: true,
            ..ReadOptions::default()
        },
    );
    let forest = Forest::build(&set.spans);
    let mut traces = Vec::new();
    let mut count = 0;
    for trace in &forest.traces {
        if count >= html_spans {
            break;
        }
        count += trace.nodes.len();
        traces.push(trace);
    }
    let page = dir.path().join("spans.html");
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..plan.samples {
        let started = Instant::now();
        let mut out = BufWriter::new(std::fs::File::create(&page).unwrap());
        write_html(&mut out, &set.spans, &traces).unwrap();
        out.flush().unwrap();
        drop(out);
        times.push(started.elapsed().as_secs_f64());
        size = std::fs::metadata(&page).unwrap().len();
    }
    println!(
        "  html for {count} spans ({} traces): median {:.3} s, best {:.3} s; the page is {:.1} MB",
        traces.len(),
        median(&times),
        min(&times),
        size as f64 / 1e6
    );
}
