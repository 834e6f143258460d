//! A Filament program whose tasks use `tracing`, `log`, a library instrumented with both, `get`
//! and `wait`, and an actor, for the tests of the instrument hook. Its scenario is its first
//! argument; it prints `key=value` lines, and its spans go wherever the tracing hooks send them.
//!
//! With `TEST_OWN_SUBSCRIBER` set it installs a `tracing` subscriber of its own before `init`.
//! Exit codes: 0 done, 2 bad arguments, 3 `init` failed (the error on standard error).

use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A step of a task, instrumented as user code is: its argument becomes a field.
#[tracing::instrument]
fn step(n: u64) -> u64 {
    tracing::info!(half = n / 2, "stepping");
    log::info!("a log record inside step {n}");
    filament_traced_lib::checksum(&[n, 1, 2])
}

#[filament::remote]
fn traced(n: u64) -> u64 {
    log::info!(target: "instrumented_program::task", "a log record in the task itself");
    tracing::warn!(n, "a tracing event outside any tracing span");
    step(n)
}

#[filament::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

/// Gets a result inside a task.
#[filament::remote]
fn gets_inside(x: u64) -> u64 {
    let inner = add::remote(x, 1);
    filament::get(&inner).expect("the inner task") * 10
}

/// Keeps its thread busy until it has had `millis` of CPU time, by the scheduler's own count
/// (`/proc/thread-self/schedstat`, not `getrusage`, which the interceptor under test uses); at
/// most 10 s of wall time. Returns the CPU milliseconds the scheduler counted.
#[filament::remote]
fn spins(millis: u64) -> u64 {
    fn cpu_nanos() -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .expect("/proc/thread-self/schedstat")
    }
    let start = cpu_nanos();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut turns = 0u64;
    while cpu_nanos() - start < millis * 1_000_000 && Instant::now() < deadline {
        for _ in 0..10_000 {
            turns = std::hint::black_box(turns.wrapping_add(1));
        }
    }
    (cpu_nanos() - start) / 1_000_000
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

/// The program's own `tracing` subscriber: prints what it is told, prefixed `own subscriber: `.
struct OwnSubscriber;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OwnSubscriber {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        eprintln!("own subscriber: {}", message.0);
    }
}

fn main() -> ExitCode {
    if std::env::var_os("TEST_OWN_SUBSCRIBER").is_some() {
        use tracing_subscriber::layer::SubscriberExt as _;
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(OwnSubscriber))
            .expect("no subscriber yet");
    }
    let mut config = filament::Config::default().num_workers(2);
    if let Ok(workers) = std::env::var("TEST_WORKERS") {
        config = config.num_workers(workers.parse().expect("TEST_WORKERS is a number"));
    }
    let runtime = match filament::init(config) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(3);
        }
    };
    println!("driver_pid={}", std::process::id());
    println!("job_id={}", runtime.job_id());
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str).unwrap_or("") {
        "tracing" => println!("result={}", traced::remote(8).get().unwrap()),
        "get" => {
            let inside = gets_inside::remote(4);
            let (done, _) = filament::wait(vec![inside.clone()], 1, None).unwrap();
            println!("waited={}", done.len());
            println!("result={}", inside.get().unwrap());
        }
        "tasks" => {
            println!("spun_ms={}", spins::remote(50).get().unwrap());
            println!("sum={}", add::remote(1, 2).get().unwrap());
            let counter = Counter::remote(1);
            let calls: Vec<_> = (0..2).map(|_| counter.incr(1)).collect();
            println!("calls={:?}", filament::get_all(&calls).unwrap());
        }
        "many" => {
            let results: Vec<_> = (0..5).map(|i| add::remote(i, 1)).collect();
            println!("results={:?}", filament::get_all(&results).unwrap());
        }
        other => {
            eprintln!("unknown scenario {other:?}");
            return ExitCode::from(2);
        }
    }
    drop(runtime);
    ExitCode::SUCCESS
}
