//! What the task runtime costs end to end, with 2 workers, tracing off (no hook) and on (the
//! local-file plugin writing OTLP/JSON lines to a temporary directory), measured in one run:
//!
//! 1. **batch throughput**: submit N no-op tasks, then `get_all`; tasks per second; for N = 20,000
//!    and N = 2,000, since the time of a batch may grow faster than its size;
//! 2. **sequential round trip**: submit one task and get it, M times; µs per round trip;
//! 3. **sequential actor call**: one actor, M calls each got before the next; µs per call;
//! 4. **init to first result**: from calling `init` to the first task's result, a fresh cluster
//!    each sample (and how long `init` itself and dropping the cluster took); ms;
//! 5. **tracing overhead per task**: on − off, per task, for batches, round trips and actor calls;
//! 6. **driver memory** over many tasks whose results are dropped (batches of 1,000, tracing on):
//!    the driver's `VmRSS` after the first 10% and at the end;
//! 7. **attached**: phases 1–4 with the driver attached to a standing cluster (a head started with
//!    the `filament` command, 2 CPUs, the same hook; workers connect over TCP), beside "on";
//! 8. **attached with TLS**: the same against a second head started with `--tls` (the driver
//!    presents that session's certificate; every connection is TLS 1.3), beside plain "attached".
//!
//! Every cluster is one variant and is dropped before the next starts; the variants alternate,
//! off/on then on/off, for a few rounds, so that the noise of a shared machine lands on both alike.
//! Medians say what is typical, the best samples what the code costs when nothing interferes. The
//! issue's targets and Ray 2.60's figures are printed beside the results for reference; nothing
//! here judges a timing.
//!
//! "off" sets no hook whatever `FILAMENT_TRACING_STARTUP_HOOK` says, and checks that the driver has
//! no tracing. "attached" clusters take their turn in every round too, after the head was started
//! (the bench builds the `filament` binary with cargo first, and stops the head at the end). "on" gives every traced cluster a spans directory of its own; after the cluster is
//! dropped the bench checks that the driver and the workers each wrote at least one span line per
//! task, and keeps the directory until the end of the run: deleting hundreds of MB between clusters
//! made the next traced `init` several times slower here (file creation stalls behind the freeing,
//! on ext4 mounted `discard`), which is not the runtime's doing. The run writes about 2 GB of spans.
//!
//! `filament::init` re-executes this binary as the worker processes, so it is the first thing `main`
//! does; a worker never gets past it. The first cluster is an "off" one so that nothing (such as a
//! spans directory) is made before it.
//!
//! Run with `cargo bench -p filament-bench --bench runtime`. Without `--bench` (as under
//! `cargo test --all-targets`) it runs a quick smoke pass. It panics only if a result is wrong, a
//! cluster fails, or a traced cluster wrote fewer spans than it ran tasks.

use filament::cluster::tls::TlsFiles;
use filament::{Config, Runtime};
use filament_bench::{median, min};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The hook of the "on" variant: the local-file plugin, found next to the bench's executable.
const HOOK: &str = "filament_local_file:setup_tracing";
const WORKERS: usize = 2;

#[filament::remote]
fn echo(i: u32) -> u32 {
    i
}

#[filament::actor]
struct Counter {
    n: u64,
}

#[filament::actor]
impl Counter {
    fn new(start: u64) -> Self {
        Counter { n: start }
    }

    fn incr(&mut self, by: u64) -> u64 {
        self.n += by;
        self.n
    }
}

/// How much to run: the real benchmark, or a smoke pass.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// Rounds of one "off" and one "on" cluster, each measuring phases 1–4.
    rounds: usize,
    warmup_tasks: u32,
    batch_tasks: u32,
    /// Batch samples per cluster.
    batches: usize,
    /// Smaller batches, and their samples per cluster: the time of a batch grows faster than its
    /// size, so one size alone would mislead.
    small_batch_tasks: u32,
    small_batches: usize,
    /// Sequential samples (round trips, actor calls) per cluster, and calls per sample.
    seq_samples: usize,
    seq_calls: u32,
    /// Extra init-to-first-result samples per variant, interleaved, after the rounds.
    extra_inits: usize,
    memory_tasks: u32,
    memory_batch: u32,
    /// A smoke pass checks that everything works; its timings mean nothing.
    smoke: bool,
}

const BENCH: Plan = Plan {
    rounds: 8,
    warmup_tasks: 2_000,
    batch_tasks: 20_000,
    batches: 2,
    small_batch_tasks: 2_000,
    small_batches: 4,
    seq_samples: 5,
    seq_calls: 400,
    extra_inits: 8,
    memory_tasks: 1_000_000,
    memory_batch: 1_000,
    smoke: false,
};

const SMOKE: Plan = Plan {
    rounds: 1,
    warmup_tasks: 50,
    batch_tasks: 500,
    batches: 1,
    small_batch_tasks: 100,
    small_batches: 1,
    seq_samples: 1,
    seq_calls: 20,
    extra_inits: 1,
    memory_tasks: 2_000,
    memory_batch: 100,
    smoke: true,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracing {
    Off,
    On,
    /// Traced, attached to the standing cluster of [`HEAD`].
    Attached,
    /// Traced, attached to the standing cluster of [`TLS_HEAD`], over TLS.
    AttachedTls,
}

impl Tracing {
    fn name(self) -> &'static str {
        match self {
            Tracing::Off => "off",
            Tracing::On => "on",
            Tracing::Attached => "attached",
            Tracing::AttachedTls => "attached-tls",
        }
    }

    fn traced(self) -> bool {
        self != Tracing::Off
    }
}

/// The head of the standing cluster the "attached" variant attaches to: its address and token.
static HEAD: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
/// The head started with `--tls` the "attached-tls" variant attaches to: its address, token and
/// the TLS files of its session.
static TLS_HEAD: std::sync::OnceLock<(String, String, TlsFiles)> = std::sync::OnceLock::new();

/// A standing cluster started with the `filament` command (built first), stopped when dropped.
struct Head {
    filament: std::path::PathBuf,
    sessions: TempDir,
    /// Where the head's own (empty) span file goes.
    _spans: TempDir,
}

impl Head {
    /// Starts a head, with `--tls` if `tls`, and records it in [`HEAD`] or [`TLS_HEAD`].
    fn start(tls: bool) -> Head {
        // The command in the bench's own profile: target/<profile>/deps/<bench> is this binary.
        let exe = std::env::current_exe().expect("the bench's path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("the bench runs from target/<profile>/deps");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = std::process::Command::new(cargo)
            .args(["build", "--quiet", "--profile", profile])
            .args(["-p", "filament", "--bin", "filament"])
            .status()
            .expect("cargo runs");
        assert!(built.success(), "building the filament command failed");
        let filament = profile_dir.join("filament");
        let sessions = tempfile::tempdir().expect("a temporary directory");
        let spans = tempfile::tempdir().expect("a temporary directory");
        let started = std::process::Command::new(&filament)
            .args(["start", "--head", "--port", "0", "--num-cpus", "2"])
            .args(["--tracing-startup-hook", HOOK])
            .args(tls.then_some("--tls"))
            .env("FILAMENT_TEMP_DIR", sessions.path())
            .env("FILAMENT_SPANS_DIR", spans.path())
            .output()
            .expect("filament start runs");
        assert!(
            started.status.success(),
            "filament start failed: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let session = sessions.path().join("session_latest");
        let read = |name: &str| {
            let path = session.join(name);
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .trim()
                .to_owned()
        };
        if tls {
            let files = TlsFiles {
                ca: session.join("tls/ca.pem"),
                cert: session.join("tls/cert.pem"),
                key: session.join("tls/key.pem"),
            };
            assert!(files.ca.exists(), "{} is missing", files.ca.display());
            let _ = TLS_HEAD.set((read("address"), read("token"), files));
        } else {
            let _ = HEAD.set((read("address"), read("token")));
        }
        Head {
            filament,
            sessions,
            _spans: spans,
        }
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.filament)
            .arg("stop")
            .env("FILAMENT_TEMP_DIR", self.sessions.path())
            .output();
    }
}

/// The configuration of a variant. "off" sets no hook whatever `FILAMENT_TRACING_STARTUP_HOOK`
/// says; "on" writes its spans to `spans_dir`.
fn config(tracing: Tracing, spans_dir: Option<&Path>) -> Config {
    let mut config = Config::default().num_workers(WORKERS);
    match tracing {
        Tracing::Off => config.tracing_startup_hook = None,
        Tracing::Attached | Tracing::AttachedTls => {
            let dir = spans_dir.expect("a spans directory for the traced variant");
            config.tracing_startup_hook = None;
            config = match tracing {
                Tracing::Attached => {
                    let (address, token) = HEAD.get().expect("the head started");
                    config.address(address).cluster_token(token)
                }
                _ => {
                    let (address, token, files) = TLS_HEAD.get().expect("the TLS head started");
                    config
                        .address(address)
                        .cluster_token(token)
                        .cluster_tls(files.clone())
                }
            };
            config = config.tracing_config(
                filament_local_file::SPANS_DIR_KEY,
                dir.to_str().expect("a UTF-8 temporary path"),
            );
        }
        Tracing::On => {
            let dir = spans_dir.expect("a spans directory for the traced variant");
            config = config.tracing_startup_hook(HOOK).tracing_config(
                filament_local_file::SPANS_DIR_KEY,
                dir.to_str().expect("a UTF-8 temporary path"),
            );
        }
    }
    config
}

/// Every figure of one variant, over all its clusters.
#[derive(Debug, Default)]
struct Samples {
    /// Batch samples: µs per task.
    batch_us: Vec<f64>,
    small_batch_us: Vec<f64>,
    round_trip_us: Vec<f64>,
    actor_call_us: Vec<f64>,
    init_ms: Vec<f64>,
    /// Of which `init` itself (until it returned).
    init_call_ms: Vec<f64>,
    drop_ms: Vec<f64>,
    /// Tasks and actor calls the traced clusters ran, and the span lines and bytes they wrote.
    tasks: u64,
    span_lines: u64,
    span_bytes: u64,
    /// The traced clusters' spans directories, deleted at the very end (see the top of the file).
    spans_dirs: Vec<TempDir>,
}

static CLUSTERS: AtomicUsize = AtomicUsize::new(0);
static TRACED_CLUSTERS: AtomicUsize = AtomicUsize::new(0);

/// A running cluster of one variant, and what it submitted.
struct Cluster {
    tracing: Tracing,
    /// Clusters, and traced clusters, this process started before this one.
    index: usize,
    traced_index: usize,
    runtime: Runtime,
    spans_dir: Option<TempDir>,
    tasks: u64,
}

impl Cluster {
    /// Starts a cluster and gets a first result; records the ms from calling `init` to its return
    /// and to that result. `first` is the cluster `main` started, with when it called and when
    /// `init` returned, if this is it.
    fn start(
        tracing: Tracing,
        first: Option<(Runtime, Instant, Instant)>,
        samples: &mut Samples,
    ) -> Cluster {
        let spans_dir = tracing.traced().then(|| {
            tempfile::Builder::new()
                .prefix("filament-bench-runtime-spans-")
                .tempdir()
                .expect("a temporary directory")
        });
        let (runtime, started, returned) = first.unwrap_or_else(|| {
            let started = Instant::now();
            let runtime = filament::init(config(tracing, spans_dir.as_ref().map(TempDir::path)))
                .unwrap_or_else(|e| panic!("{}: init failed: {e}", tracing.name()));
            (runtime, started, Instant::now())
        });
        let first = echo::remote(7).get();
        let done = Instant::now();
        assert_eq!(
            runtime.tracing().is_some(),
            tracing.traced(),
            "{}: the driver's tracing is not what the variant asked for",
            tracing.name()
        );
        assert_eq!(first.ok(), Some(7), "{}: the first task", tracing.name());
        samples.init_ms.push((done - started).as_secs_f64() * 1e3);
        samples
            .init_call_ms
            .push((returned - started).as_secs_f64() * 1e3);
        let index = CLUSTERS.fetch_add(1, Ordering::Relaxed);
        let traced_index = if tracing.traced() {
            TRACED_CLUSTERS.fetch_add(1, Ordering::Relaxed)
        } else {
            TRACED_CLUSTERS.load(Ordering::Relaxed)
        };
        Cluster {
            tracing,
            index,
            traced_index,
            runtime,
            spans_dir,
            tasks: 1,
        }
    }

    /// Submits `n` tasks, gets them all and checks them; returns µs per task.
    fn batch(&mut self, n: u32) -> f64 {
        let started = Instant::now();
        let refs: Vec<_> = (0..n).map(echo::remote).collect();
        let values = filament::get_all(&refs)
            .unwrap_or_else(|e| panic!("{}: get_all failed: {e}", self.tracing.name()));
        let elapsed = started.elapsed();
        drop(refs);
        self.tasks += u64::from(n);
        let sum: u64 = values.iter().map(|&v| u64::from(v)).sum();
        let expected = u64::from(n) * u64::from(n.saturating_sub(1)) / 2;
        assert!(
            values.len() == n as usize && sum == expected,
            "{}: a batch of {n} returned {} values summing to {sum}, expected {expected}",
            self.tracing.name(),
            values.len()
        );
        elapsed.as_secs_f64() * 1e6 / f64::from(n)
    }

    /// `n` sequential round trips; µs per round trip.
    fn round_trips(&mut self, n: u32) -> f64 {
        let started = Instant::now();
        let mut sum = 0u64;
        for i in 0..n {
            let value = echo::remote(i)
                .get()
                .unwrap_or_else(|e| panic!("{}: get failed: {e}", self.tracing.name()));
            sum += u64::from(value);
        }
        let elapsed = started.elapsed();
        self.tasks += u64::from(n);
        let expected = u64::from(n) * u64::from(n.saturating_sub(1)) / 2;
        assert_eq!(sum, expected, "{}: round trips", self.tracing.name());
        elapsed.as_secs_f64() * 1e6 / f64::from(n)
    }

    /// `n` sequential calls on `counter`, which stands at `*count`; µs per call.
    fn actor_calls(&mut self, counter: &CounterHandle, count: &mut u64, n: u32) -> f64 {
        let started = Instant::now();
        let mut last = 0;
        for _ in 0..n {
            last = counter
                .incr(1)
                .get()
                .unwrap_or_else(|e| panic!("{}: an actor call failed: {e}", self.tracing.name()));
        }
        let elapsed = started.elapsed();
        *count += u64::from(n);
        self.tasks += u64::from(n);
        assert_eq!(last, *count, "{}: the counter", self.tracing.name());
        elapsed.as_secs_f64() * 1e6 / f64::from(n)
    }

    /// Drops the cluster (which stops the workers and flushes their spans); records how long that
    /// took and, for a traced cluster, checks that every task left its spans.
    fn finish(self, samples: &mut Samples) {
        let Cluster {
            tracing,
            index,
            traced_index,
            runtime,
            spans_dir,
            tasks,
        } = self;
        let started = Instant::now();
        drop(runtime);
        samples.drop_ms.push(started.elapsed().as_secs_f64() * 1e3);
        if let Some(dir) = spans_dir {
            let (driver, workers, bytes) = count_lines_in(dir.path());
            // A PRODUCER span in the driver and a CONSUMER span in a worker per task.
            assert!(
                driver >= tasks && workers >= tasks,
                "{}: {tasks} tasks and calls, but {driver} span lines from the driver and {workers} \
                 from the workers in {} (expected at least one each per task); it was cluster \
                 #{index} of this process, traced cluster #{traced_index}",
                tracing.name(),
                dir.path().display()
            );
            let lines = driver + workers;
            samples.tasks += tasks;
            samples.span_lines += lines;
            samples.span_bytes += bytes;
            samples.spans_dirs.push(dir);
        }
    }
}

/// Newlines in the files of `dir` (`<pid>.json`): the driver's (this process's), the workers';
/// and the bytes of all.
fn count_lines_in(dir: &Path) -> (u64, u64, u64) {
    let driver_file = format!("{}.json", std::process::id());
    let (mut driver, mut workers, mut bytes) = (0u64, 0u64, 0u64);
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("a directory entry");
        let (lines, file_bytes) = filament_bench::count_lines(&entry.path());
        bytes += file_bytes;
        if entry.file_name().to_str() == Some(driver_file.as_str()) {
            driver += lines;
        } else {
            workers += lines;
        }
    }
    (driver, workers, bytes)
}

/// One cluster's share of phases 1–4.
fn measure(
    plan: Plan,
    tracing: Tracing,
    first: Option<(Runtime, Instant, Instant)>,
    samples: &mut Samples,
) {
    let mut cluster = Cluster::start(tracing, first, samples);
    cluster.batch(plan.warmup_tasks);
    for _ in 0..plan.batches {
        let us = cluster.batch(plan.batch_tasks);
        samples.batch_us.push(us);
    }
    for _ in 0..plan.small_batches {
        let us = cluster.batch(plan.small_batch_tasks);
        samples.small_batch_us.push(us);
    }
    cluster.round_trips(plan.seq_calls / 4);
    for _ in 0..plan.seq_samples {
        let us = cluster.round_trips(plan.seq_calls);
        samples.round_trip_us.push(us);
    }
    let counter = Counter::remote(0);
    let mut count = 0;
    cluster.actor_calls(&counter, &mut count, plan.seq_calls / 4);
    for _ in 0..plan.seq_samples {
        let us = cluster.actor_calls(&counter, &mut count, plan.seq_calls);
        samples.actor_call_us.push(us);
    }
    drop(counter);
    cluster.finish(samples);
}

/// Phase 6: many batches whose results are dropped; the driver's RSS after 10% and at the end.
struct Memory {
    tracing: Tracing,
    tasks: u32,
    /// (tasks done, KiB) checkpoints.
    rss: Vec<(u32, u64)>,
    seconds: f64,
}

fn memory(plan: Plan, tracing: Tracing, samples: &mut Samples) -> Memory {
    let mut cluster = Cluster::start(tracing, None, samples);
    let batches = plan.memory_tasks / plan.memory_batch;
    let checkpoints = [
        batches / 10,
        batches / 4,
        batches / 2,
        3 * batches / 4,
        batches,
    ];
    let mut rss = Vec::new();
    let started = Instant::now();
    for b in 1..=batches {
        cluster.batch(plan.memory_batch);
        if checkpoints.contains(&b) {
            rss.push((b * plan.memory_batch, filament_bench::rss_kib()));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    cluster.finish(samples);
    Memory {
        tracing,
        tasks: batches * plan.memory_batch,
        rss,
        seconds,
    }
}

fn list(samples: &[f64], scale: impl Fn(f64) -> f64, decimals: usize) -> String {
    samples
        .iter()
        .map(|&s| format!("{:.decimals$}", scale(s)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn report(plan: Plan, off: &Samples, on: &Samples, memory: &Memory, elapsed: Duration) {
    let smoke = if plan.smoke {
        " (smoke pass without --bench: not a measurement)"
    } else {
        ""
    };
    println!(
        "runtime: {WORKERS} workers; {} rounds of an off, an on, an attached and an attached-over-TLS cluster each (order alternating); \
         per cluster {}x{} + {}x{} batched tasks, {}x{} round trips, {}x{} actor calls{smoke}",
        plan.rounds,
        plan.batches,
        plan.batch_tasks,
        plan.small_batches,
        plan.small_batch_tasks,
        plan.seq_samples,
        plan.seq_calls,
        plan.seq_samples,
        plan.seq_calls
    );
    println!("off = no hook at all; on = hook {HOOK} writing to a temporary directory");
    println!(
        "{:<35} {:>18} {:>18} {:>7}  {:<14} Ray 2.60 (default hook)",
        "measure", "off median (best)", "on median (best)", "on/off", "target (issue)"
    );
    let tasks_per_s = |us: f64| 1e6 / us;
    let ident = |x: f64| x;
    let fig = |samples: &[f64], scale: &dyn Fn(f64) -> f64, decimals: usize| {
        // The best sample is the fastest: the smallest time, or the most tasks per second.
        format!(
            "{:.decimals$} ({:.decimals$})",
            scale(median(samples)),
            scale(min(samples))
        )
    };
    let row = |name: &str, off: String, on: String, ratio: f64, target: &str, ray: &str| {
        println!("{name:<35} {off:>18} {on:>18} {ratio:>7.2}  {target:<14} {ray}");
    };
    let batch = format!("1. batch of {}, tasks/s", plan.batch_tasks);
    let small_batch = format!("   batch of {}, tasks/s", plan.small_batch_tasks);
    for (name, off, on, target, ray) in [
        (
            batch.as_str(),
            &off.batch_us,
            &on.batch_us,
            "on >= 50000",
            "978",
        ),
        (
            small_batch.as_str(),
            &off.small_batch_us,
            &on.small_batch_us,
            "on >= 50000",
            "978",
        ),
    ] {
        row(
            name,
            fig(off, &tasks_per_s, 0),
            fig(on, &tasks_per_s, 0),
            median(off) / median(on),
            target,
            ray,
        );
    }
    for (name, off, on, target, ray) in [
        (
            "2. sequential round trip, us",
            &off.round_trip_us,
            &on.round_trip_us,
            "on <= 50",
            "2700 (traced)",
        ),
        (
            "3. sequential actor call, us",
            &off.actor_call_us,
            &on.actor_call_us,
            "on <= 50",
            "-",
        ),
        (
            "4. init to first result, ms",
            &off.init_ms,
            &on.init_ms,
            "on <= 100",
            "~4000",
        ),
        (
            "   of which init() itself, ms",
            &off.init_call_ms,
            &on.init_call_ms,
            "",
            "",
        ),
        (
            "   dropping the cluster, ms",
            &off.drop_ms,
            &on.drop_ms,
            "",
            "",
        ),
    ] {
        row(
            name,
            fig(off, &ident, 1),
            fig(on, &ident, 1),
            median(on) / median(off),
            target,
            ray,
        );
    }
    println!(
        "{:<35} {:>18} {:>18} {:>7}  {:<14} Ray +424",
        "5. tracing overhead per task, us", "on-off medians", "on-off bests", "", "<= 10"
    );
    let batch = format!("   batch of {}", plan.batch_tasks);
    let small_batch = format!("   batch of {}", plan.small_batch_tasks);
    for (name, off, on) in [
        (batch.as_str(), &off.batch_us, &on.batch_us),
        (
            small_batch.as_str(),
            &off.small_batch_us,
            &on.small_batch_us,
        ),
        ("   round trip", &off.round_trip_us, &on.round_trip_us),
        ("   actor call", &off.actor_call_us, &on.actor_call_us),
    ] {
        println!(
            "{name:<35} {:>+18.2} {:>+18.2}",
            median(on) - median(off),
            min(on) - min(off)
        );
    }
    let first = memory.rss.first().copied().unwrap_or_default();
    let last = memory.rss.last().copied().unwrap_or_default();
    println!(
        "6. driver VmRSS, tracing {}: {} KiB after {} tasks, {} KiB after {}; end/10% = {:.3} \
         (target: flat +-10%)",
        memory.tracing.name(),
        first.1,
        first.0,
        last.1,
        last.0,
        last.1 as f64 / first.1 as f64
    );
    println!(
        "   batches of {} whose results are dropped, {:.0} tasks/s; checkpoints (tasks: KiB): {}",
        plan.memory_batch,
        f64::from(memory.tasks) / memory.seconds,
        memory
            .rss
            .iter()
            .map(|(tasks, kib)| format!("{tasks}: {kib}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("samples, in order:");
    for (name, samples) in [("off", off), ("on", on)] {
        println!(
            "  {name:<3} batch of {} tasks/s: {} | batch of {} tasks/s: {}",
            plan.batch_tasks,
            list(&samples.batch_us, tasks_per_s, 0),
            plan.small_batch_tasks,
            list(&samples.small_batch_us, tasks_per_s, 0),
        );
        println!(
            "  {name:<3} round trip us: {}",
            list(&samples.round_trip_us, ident, 1)
        );
        println!(
            "  {name:<3} actor call us: {}",
            list(&samples.actor_call_us, ident, 1)
        );
        println!(
            "  {name:<3} init to first result ms: {} | init() ms: {} | drop ms: {}",
            list(&samples.init_ms, ident, 1),
            list(&samples.init_call_ms, ident, 1),
            list(&samples.drop_ms, ident, 1)
        );
    }
    println!(
        "checked: every result; the traced clusters ran {} tasks and calls and wrote {} span lines \
         ({:.2} per task, {:.0} bytes per line); {:.1} s",
        on.tasks,
        on.span_lines,
        on.span_lines as f64 / on.tasks.max(1) as f64,
        on.span_bytes as f64 / on.span_lines.max(1) as f64,
        elapsed.as_secs_f64()
    );
}

fn main() {
    // In a worker process this call serves tasks and never returns: it must come first.
    let started = Instant::now();
    let first = filament::init(config(Tracing::Off, None))
        .unwrap_or_else(|e| panic!("off: init failed: {e}"));
    let mut first = Some((first, started, Instant::now()));
    let plan = if std::env::args().any(|a| a == "--bench") {
        BENCH
    } else {
        SMOKE
    };

    // Started when the first "attached" cluster needs them, after the first cluster's first result.
    let mut heads = None;
    let (mut off, mut on, mut attached, mut attached_tls) = (
        Samples::default(),
        Samples::default(),
        Samples::default(),
        Samples::default(),
    );
    for round in 0..plan.rounds {
        let mut order = [
            Tracing::Off,
            Tracing::On,
            Tracing::Attached,
            Tracing::AttachedTls,
        ];
        if round % 2 == 1 {
            order.reverse();
        }
        for tracing in order {
            if matches!(tracing, Tracing::Attached | Tracing::AttachedTls) && heads.is_none() {
                heads = Some((Head::start(false), Head::start(true)));
            }
            let samples = match tracing {
                Tracing::Off => &mut off,
                Tracing::On => &mut on,
                Tracing::Attached => &mut attached,
                Tracing::AttachedTls => &mut attached_tls,
            };
            let runtime = if tracing == Tracing::Off {
                first.take()
            } else {
                None
            };
            measure(plan, tracing, runtime, samples);
        }
    }
    for _ in 0..plan.extra_inits {
        for (tracing, samples) in [
            (Tracing::On, &mut on),
            (Tracing::Off, &mut off),
            (Tracing::Attached, &mut attached),
            (Tracing::AttachedTls, &mut attached_tls),
        ] {
            let cluster = Cluster::start(tracing, None, samples);
            cluster.finish(samples);
        }
    }
    let memory = memory(plan, Tracing::On, &mut on);
    drop(heads);
    report(plan, &off, &on, &memory, started.elapsed());
    println!(
        "7. attached to a standing cluster (head with 2 CPUs, hook {HOOK}, workers over TCP), \
         beside the embedded \"on\":"
    );
    report_pair(plan, ("on", &on), ("attached", &attached));
    println!(
        "8. attached over TLS (a head started with --tls; every connection TLS 1.3, mutual \
         authentication), beside plain \"attached\":"
    );
    report_pair(plan, ("attached", &attached), ("tls", &attached_tls));
}

/// Rows of two variants side by side, with the ratio of the second to the first.
fn report_pair(plan: Plan, (a_name, a): (&str, &Samples), (b_name, b): (&str, &Samples)) {
    println!(
        "{:<35} {:>18} {:>18} {:>9}",
        "measure",
        format!("{a_name} med.(best)"),
        format!("{b_name} med.(best)"),
        format!("{b_name}/{a_name}")
    );
    let tasks_per_s = |us: f64| 1e6 / us;
    let ident = |x: f64| x;
    let batch = format!("   batch of {}, tasks/s", plan.batch_tasks);
    let small_batch = format!("   batch of {}, tasks/s", plan.small_batch_tasks);
    let rows: [(&str, &Vec<f64>, &Vec<f64>, bool); 5] = [
        (batch.as_str(), &a.batch_us, &b.batch_us, true),
        (
            small_batch.as_str(),
            &a.small_batch_us,
            &b.small_batch_us,
            true,
        ),
        (
            "   sequential round trip, us",
            &a.round_trip_us,
            &b.round_trip_us,
            false,
        ),
        (
            "   sequential actor call, us",
            &a.actor_call_us,
            &b.actor_call_us,
            false,
        ),
        ("   init to first result, ms", &a.init_ms, &b.init_ms, false),
    ];
    for (name, a, b, rate) in rows {
        let (scale, decimals): (&dyn Fn(f64) -> f64, usize) =
            if rate { (&tasks_per_s, 0) } else { (&ident, 1) };
        let fig = |s: &[f64]| {
            format!(
                "{:.decimals$} ({:.decimals$})",
                scale(median(s)),
                scale(min(s))
            )
        };
        println!(
            "{name:<35} {:>18} {:>18} {:>9.2}",
            fig(a),
            fig(b),
            scale(median(b)) / scale(median(a))
        );
    }
    println!(
        "  {b_name} round trip us: {}",
        list(&b.round_trip_us, ident, 1)
    );
    println!(
        "  {b_name} actor call us: {}",
        list(&b.actor_call_us, ident, 1)
    );
}
