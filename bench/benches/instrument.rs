//! What the instrument hook costs per task, measured in one run:
//!
//! 1. **end to end**, 2 workers, the local-file hook writing spans in every variant: batches of N
//!    tasks submitted then got (µs per task), and sequential round trips (µs each), for
//!    - `exporter`: the local-file hook alone (the baseline);
//!    - `all off`: the instrument hook loaded too, with `FILAMENT_INSTRUMENT=none`;
//!    - `interceptor`: the instrument hook's `resources` interceptor on;
//!    - `exporter, 10 spans` / `bridge, 10 spans`: a task that makes 10 `tracing` spans, the
//!      bridge off (the local-file hook alone) and on (`FILAMENT_INSTRUMENT=tracing`);
//! 2. **in process**, where the noise of processes and sockets does not hide nanoseconds: the
//!    switches' check on a task's path when everything is off, the interceptor's two calls (four
//!    `getrusage`), and 10 `tracing` spans inside a span with the bridge on.
//!
//! Variants alternate round by round so the noise of a shared machine lands on all alike. Medians
//! say what is typical, the best samples what the code costs. Nothing here judges a timing.
//!
//! `filament::init` re-executes this binary as the worker processes, so it is the first thing `main`
//! does. Run with `cargo bench -p filament-bench --bench instrument`; without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick smoke pass.

use filament::Config;
use filament::tracing::instrument::{self, Instrumentation};
use filament_bench::{median, min};
use filament_plugin_api::{TaskInfo, TaskKind, TaskOutcome};
use opentelemetry::trace::{Tracer as _, TracerProvider as _};
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Instant;

const LOCAL_FILE: &str = "filament_local_file:setup_tracing";
const BOTH: &str = "filament_instrument:setup_tracing,filament_local_file:setup_tracing";
const WORKERS: usize = 2;

#[filament::remote]
fn noop(i: u32) -> u32 {
    i
}

#[filament::remote]
fn ten_spans(i: u32) -> u32 {
    for n in 0..10 {
        let _span = tracing::info_span!("small", n).entered();
    }
    i
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Variant {
    Exporter,
    AllOff,
    Interceptor,
    ExporterTenSpans,
    BridgeTenSpans,
}

impl Variant {
    const ALL: [Variant; 5] = [
        Variant::Exporter,
        Variant::AllOff,
        Variant::Interceptor,
        Variant::ExporterTenSpans,
        Variant::BridgeTenSpans,
    ];

    fn name(self) -> &'static str {
        match self {
            Variant::Exporter => "exporter",
            Variant::AllOff => "all off",
            Variant::Interceptor => "interceptor",
            Variant::ExporterTenSpans => "exporter, 10 spans",
            Variant::BridgeTenSpans => "bridge, 10 spans",
        }
    }

    fn config(self, spans: &std::path::Path) -> Config {
        let (hooks, instrument) = match self {
            Variant::Exporter | Variant::ExporterTenSpans => (LOCAL_FILE, None),
            Variant::AllOff => (BOTH, Some("none")),
            Variant::Interceptor => (BOTH, Some("resources")),
            Variant::BridgeTenSpans => (BOTH, Some("tracing")),
        };
        let mut config = Config::default()
            .num_workers(WORKERS)
            .tracing_startup_hook(hooks)
            .tracing_config("FILAMENT_SPANS_DIR", spans.to_str().expect("UTF-8"));
        if let Some(instrument) = instrument {
            config = config.tracing_config("FILAMENT_INSTRUMENT", instrument);
        }
        config
    }

    fn submit(self, i: u32) -> filament::ObjectRef<u32> {
        match self {
            Variant::ExporterTenSpans | Variant::BridgeTenSpans => ten_spans::remote(i),
            _ => noop::remote(i),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    rounds: usize,
    warmup: u32,
    batch: u32,
    batches: usize,
    round_trips: u32,
    in_process: u32,
}

const BENCH: Plan = Plan {
    rounds: 3,
    warmup: 300,
    batch: 2000,
    batches: 3,
    round_trips: 300,
    in_process: 200_000,
};

const SMOKE: Plan = Plan {
    rounds: 1,
    warmup: 5,
    batch: 20,
    batches: 1,
    round_trips: 5,
    in_process: 1000,
};

#[derive(Default)]
struct Samples {
    batch_us: Vec<f64>,
    round_trip_us: Vec<f64>,
}

fn measure(plan: Plan, variant: Variant, runtime: filament::Runtime, samples: &mut Samples) {
    let warm: Vec<_> = (0..plan.warmup).map(|i| variant.submit(i)).collect();
    filament::get_all(&warm).expect("warm-up");
    for _ in 0..plan.batches {
        let started = Instant::now();
        let refs: Vec<_> = (0..plan.batch).map(|i| variant.submit(i)).collect();
        let got = filament::get_all(&refs).expect("a batch");
        let took = started.elapsed();
        assert_eq!(got.len(), plan.batch as usize);
        samples
            .batch_us
            .push(took.as_secs_f64() * 1e6 / f64::from(plan.batch));
    }
    let started = Instant::now();
    for i in 0..plan.round_trips {
        assert_eq!(variant.submit(i).get().expect("a round trip"), i);
    }
    samples
        .round_trip_us
        .push(started.elapsed().as_secs_f64() * 1e6 / f64::from(plan.round_trips));
    drop(runtime);
}

fn ns_per(iterations: u32, run: impl FnMut(u32)) -> f64 {
    let mut run = run;
    let started = Instant::now();
    for i in 0..iterations {
        run(i);
    }
    started.elapsed().as_secs_f64() * 1e9 / f64::from(iterations)
}

fn main() {
    // Not made here: the local-file hook makes it (a worker never uses this value: its driver's
    // configuration names the directory).
    let spans: PathBuf =
        std::env::temp_dir().join(format!("filament-bench-instrument-{}", std::process::id()));
    // In a worker process this call serves tasks and never returns: it must come first.
    let first = filament::init(Variant::Exporter.config(&spans))
        .unwrap_or_else(|e| panic!("exporter: init failed: {e}"));
    let plan = if std::env::args().any(|a| a == "--bench") {
        BENCH
    } else {
        SMOKE
    };
    let mut first = Some(first);
    let mut samples: Vec<Samples> = Variant::ALL.iter().map(|_| Samples::default()).collect();
    for round in 0..plan.rounds {
        let mut order = Variant::ALL;
        if round % 2 == 1 {
            order.reverse();
        }
        for variant in order {
            let runtime = match first.take() {
                Some(runtime) if variant == Variant::Exporter => runtime,
                other => {
                    first = other;
                    filament::init(variant.config(&spans))
                        .unwrap_or_else(|e| panic!("{}: init failed: {e}", variant.name()))
                }
            };
            let index = Variant::ALL.iter().position(|v| *v == variant).unwrap();
            measure(plan, variant, runtime, &mut samples[index]);
        }
    }
    drop(first);

    println!("per-task cost, {WORKERS} workers, local-file hook in every variant");
    println!(
        "{:<20} {:>16} {:>16} {:>16} {:>16}",
        "variant", "batch µs/task", "(best)", "round trip µs", "(best)"
    );
    for (variant, s) in Variant::ALL.iter().zip(&samples) {
        println!(
            "{:<20} {:>16.2} {:>16.2} {:>16.1} {:>16.1}",
            variant.name(),
            median(&s.batch_us),
            min(&s.batch_us),
            median(&s.round_trip_us),
            min(&s.round_trip_us)
        );
    }
    let delta = |a: Variant, b: Variant| {
        let (a, b) = (
            &samples[Variant::ALL.iter().position(|v| *v == a).unwrap()],
            &samples[Variant::ALL.iter().position(|v| *v == b).unwrap()],
        );
        (
            median(&a.batch_us) - median(&b.batch_us),
            min(&a.batch_us) - min(&b.batch_us),
        )
    };
    for (label, a, b) in [
        ("all off − exporter", Variant::AllOff, Variant::Exporter),
        (
            "interceptor − exporter",
            Variant::Interceptor,
            Variant::Exporter,
        ),
        (
            "bridge − no bridge (10 spans)",
            Variant::BridgeTenSpans,
            Variant::ExporterTenSpans,
        ),
    ] {
        let (typical, best) = delta(a, b);
        println!("{label:<32} {typical:>+8.2} µs/task (median), {best:>+8.2} (best)");
    }

    // In process: what each instrumentation adds on a task's path, without processes around it.
    let n = plan.in_process;
    let off = ns_per(n, |_| {
        black_box(instrument::enabled(black_box(Instrumentation::QueueWait)));
        black_box(instrument::intercepting());
        black_box(instrument::enabled(black_box(
            Instrumentation::Serialization,
        )));
    });
    let guard = filament::tracing::Tracing::new(BOTH)
        .config("FILAMENT_SPANS_DIR", spans.to_str().expect("UTF-8"))
        .config("FILAMENT_INSTRUMENT", "resources,tracing")
        .install()
        .expect("the instrument hook installs");
    let task = TaskInfo {
        id: 1,
        name: "bench::task".into(),
        kind: TaskKind::Function,
    };
    let mut attributes = Vec::with_capacity(8);
    let intercepted = ns_per(n, |_| {
        attributes.clear();
        instrument::task_started(&task, &mut attributes);
        instrument::task_ended(&task, TaskOutcome::Ok, &mut attributes);
        black_box(&attributes);
    });
    let tracer = guard.provider().expect("a provider").tracer("bench");
    let spans_n = (n / 10).max(100);
    let bridged = ns_per(spans_n, |i| {
        tracer.in_span("task", |_| {
            for n in 0..10 {
                let _span = tracing::info_span!("small", n, i).entered();
            }
        });
    });
    let parent_only = ns_per(spans_n, |_| tracer.in_span("task", |_| {}));
    drop(guard);
    println!("in process:");
    println!("  switches checked on a task's path, all off: {off:>10.2} ns/task");
    println!("  interceptor `resources`, start + end:       {intercepted:>10.0} ns/task");
    println!(
        "  10 tracing spans bridged (exported):         {:>10.0} ns/task ({:.0} ns/span)",
        bridged - parent_only,
        (bridged - parent_only) / 10.0
    );
    let _ = std::fs::remove_dir_all(&spans);
}
