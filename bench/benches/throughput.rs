//! Traced batch throughput, over rounds and over a long run, for the three ways a cluster can run:
//! untraced ("off"), the local-file hook writing a line per span as it ends ("simple", the
//! default), and the same hook with `FILAMENT_LOCAL_FILE_MODE=batch` ("batch"); and the bytes each
//! writes per span.
//!
//! 1. **Rounds**: each round starts one cluster of each variant (order rotating, so the noise of a
//!    shared machine lands on all alike), runs batches of 20,000 no-op tasks for a few seconds,
//!    checks the spans it wrote, and prints the round's median tasks/s. The summary gives each
//!    variant's median over rounds with the range (min–max of the rounds' medians), and batch's and
//!    simple's ratio to off.
//! 2. **Long run**: one cluster per variant runs batches for `FILAMENT_BENCH_LONG_SECS` seconds
//!    (60 by default), printing tasks/s per 5-second window, so a slowdown as the span files grow
//!    shows; the summary compares the whole run's median to its first 10 seconds'.
//!
//! Run with `cargo bench -p filament-bench --bench throughput` (about 5 minutes here). Without
//! `--bench` it runs a short smoke pass. It panics only if a result is wrong or a traced cluster
//! wrote fewer spans than it ran tasks; nothing here judges a timing.

use filament::{Config, Runtime};
use filament_bench::median;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const HOOK: &str = "filament_local_file:setup_tracing";
const WORKERS: usize = 2;
const BATCH: u32 = 20_000;

#[filament::remote]
fn echo(i: u32) -> u32 {
    i
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    Off,
    Simple,
    Batch,
}

const VARIANTS: [Variant; 3] = [Variant::Off, Variant::Simple, Variant::Batch];

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Off => "off",
            Variant::Simple => "simple",
            Variant::Batch => "batch",
        }
    }

    fn config(self, spans: Option<&Path>) -> Config {
        let mut config = Config::default().num_workers(WORKERS);
        if self == Variant::Off {
            config.tracing_startup_hook = None;
            return config;
        }
        let dir = spans.expect("a spans directory").to_str().expect("UTF-8");
        config = config
            .tracing_startup_hook(HOOK)
            .tracing_config(filament_local_file::SPANS_DIR_KEY, dir);
        if self == Variant::Batch {
            config = config.tracing_config(filament_local_file::MODE_KEY, "batch");
        }
        config
    }
}

struct Cluster {
    variant: Variant,
    runtime: Runtime,
    spans: Option<TempDir>,
    tasks: u64,
}

impl Cluster {
    fn start(variant: Variant, first: Option<Runtime>) -> Cluster {
        let spans = (variant != Variant::Off).then(|| {
            tempfile::Builder::new()
                .prefix("filament-bench-throughput-")
                .tempdir()
                .expect("a temporary directory")
        });
        let runtime = first.unwrap_or_else(|| {
            filament::init(variant.config(spans.as_ref().map(TempDir::path)))
                .unwrap_or_else(|e| panic!("{}: init failed: {e}", variant.name()))
        });
        assert_eq!(runtime.tracing().is_some(), variant != Variant::Off);
        Cluster {
            variant,
            runtime,
            spans,
            tasks: 0,
        }
    }

    /// One batch of `BATCH` tasks, checked; tasks per second.
    fn batch(&mut self) -> f64 {
        let started = Instant::now();
        let refs: Vec<_> = (0..BATCH).map(echo::remote).collect();
        let values = filament::get_all(&refs)
            .unwrap_or_else(|e| panic!("{}: get_all failed: {e}", self.variant.name()));
        let elapsed = started.elapsed();
        let sum: u64 = values.iter().map(|&v| u64::from(v)).sum();
        assert_eq!(
            sum,
            u64::from(BATCH) * u64::from(BATCH - 1) / 2,
            "{}",
            self.variant.name()
        );
        self.tasks += u64::from(BATCH);
        f64::from(BATCH) / elapsed.as_secs_f64()
    }

    /// Drops the cluster; for a traced one, checks every task left its two spans and returns the
    /// bytes per span and per line, and the share of spans missing. Batch mode may drop spans (a
    /// full queue drops and counts, by design): those are reported, not a failure.
    fn finish(self) -> Option<(f64, f64, f64)> {
        let Cluster {
            variant,
            runtime,
            spans,
            tasks,
        } = self;
        drop(runtime);
        let dir = spans?;
        let (spans, lines, bytes) = count_spans(dir.path());
        assert!(
            spans >= 2 * tasks || variant == Variant::Batch,
            "{}: {tasks} tasks but {spans} spans in {}",
            variant.name(),
            dir.path().display()
        );
        let missing = (2 * tasks).saturating_sub(spans) as f64 / (2 * tasks) as f64;
        Some((
            bytes as f64 / spans as f64,
            bytes as f64 / lines as f64,
            missing,
        ))
    }
}

/// Spans, lines and bytes of the span files in `dir`.
fn count_spans(dir: &Path) -> (u64, u64, u64) {
    let (mut spans, mut lines, mut bytes) = (0u64, 0u64, 0u64);
    for entry in std::fs::read_dir(dir).expect("the spans directory") {
        let path = entry.expect("an entry").path();
        let text = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        bytes += text.len() as u64;
        lines += text.iter().filter(|&&b| b == b'\n').count() as u64;
        spans += filament_bench::count_spans(&text);
    }
    (spans, lines, bytes)
}

fn range(samples: &[f64]) -> String {
    let lo = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = samples.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} ({:.0}–{:.0})", median(samples), lo, hi)
}

fn main() {
    // In a worker process this serves tasks and never returns: it must come first.
    let mut first = Some(
        filament::init(Variant::Off.config(None)).unwrap_or_else(|e| panic!("off: init: {e}")),
    );
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, round_time, long_time) = if bench {
        let long = std::env::var("FILAMENT_BENCH_LONG_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60);
        (6, Duration::from_secs(3), Duration::from_secs(long))
    } else {
        (1, Duration::ZERO, Duration::ZERO)
    };
    let started = Instant::now();
    println!(
        "throughput: {WORKERS} workers, batches of {BATCH} no-op tasks; {rounds} rounds of {} s per variant{}",
        round_time.as_secs(),
        if bench {
            ""
        } else {
            " (smoke pass without --bench: not a measurement)"
        }
    );

    // 1. Rounds.
    let mut per_round: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut sizes: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); 3];
    for round in 0..rounds {
        let mut line = format!("round {round}:");
        for k in 0..3 {
            let index = (round + k) % 3;
            let variant = VARIANTS[index];
            let mut cluster = Cluster::start(variant, first.take().filter(|_| index == 0));
            cluster.batch(); // warm-up
            let mut samples = Vec::new();
            let t = Instant::now();
            while samples.is_empty() || t.elapsed() < round_time {
                samples.push(cluster.batch());
            }
            per_round[index].push(median(&samples));
            line += &format!(" {} {:.0}/s", variant.name(), median(&samples));
            if let Some(size) = cluster.finish() {
                sizes[index].push(size);
            }
        }
        println!("{line}");
    }
    // The first cluster may not have been used if round 0 started elsewhere.
    drop(first);
    println!("tasks/s, median over rounds (min–max of the rounds' medians):");
    for (index, variant) in VARIANTS.iter().enumerate() {
        let ratio = median(&per_round[0]) / median(&per_round[index]);
        let size = if sizes[index].is_empty() {
            String::new()
        } else {
            let of = |f: fn(&(f64, f64, f64)) -> f64| {
                median(&sizes[index].iter().map(f).collect::<Vec<_>>())
            };
            format!(
                "; {:.0} bytes per span, {:.0} per line; spans missing (dropped) {:.2}%",
                of(|s| s.0),
                of(|s| s.1),
                of(|s| s.2) * 100.0
            )
        };
        println!(
            "  {:<6} {:>24}  off/this {ratio:.2}{size}",
            variant.name(),
            range(&per_round[index])
        );
    }

    // 2. Long run.
    if !long_time.is_zero() {
        println!(
            "long run: {} s per variant, tasks/s per 5 s window",
            long_time.as_secs()
        );
        for variant in VARIANTS {
            let mut cluster = Cluster::start(variant, None);
            let t = Instant::now();
            let mut samples: Vec<(f64, f64)> = Vec::new();
            while t.elapsed() < long_time {
                let rate = cluster.batch();
                samples.push((t.elapsed().as_secs_f64(), rate));
            }
            let windows: Vec<String> = (0..long_time.as_secs().div_ceil(5))
                .map(|w| {
                    let window: Vec<f64> = samples
                        .iter()
                        .filter(|(at, _)| (*at / 5.0) as u64 == w)
                        .map(|(_, r)| *r)
                        .collect();
                    format!("{:.0}", median(&window))
                })
                .collect();
            let all: Vec<f64> = samples.iter().map(|(_, r)| *r).collect();
            let first10: Vec<f64> = samples
                .iter()
                .filter(|(at, _)| *at <= 10.0)
                .map(|(_, r)| *r)
                .collect();
            let spans = cluster.spans.as_ref().map(|d| d.path().to_owned());
            let tasks = cluster.tasks;
            let mb = spans.as_deref().map_or(0.0, |d| {
                std::fs::read_dir(d)
                    .map(|e| {
                        e.filter_map(|e| e.ok()?.metadata().ok())
                            .map(|m| m.len())
                            .sum::<u64>()
                    })
                    .unwrap_or(0) as f64
                    / 1e6
            });
            let missing = cluster.finish().map_or(0.0, |s| s.2 * 100.0);
            println!(
                "  {:<6} {} | whole run {} vs first 10 s {:.0} (ratio {:.2}); {tasks} tasks, {mb:.0} MB of spans, {missing:.2}% missing",
                variant.name(),
                windows.join(" "),
                range(&all),
                median(&first10),
                median(&all) / median(&first10)
            );
        }
    }
    println!("{:.0} s in all", started.elapsed().as_secs_f64());
}
