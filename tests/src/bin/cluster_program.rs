//! A Filament program with remote functions and actors, for the runtime's end-to-end tests. Its
//! scenario is its first argument; it prints `key=value` lines the tests read, and its spans go
//! wherever the tracing hook sends them.
//!
//! Exit codes: 0 done, 2 bad arguments, 3 `init` failed (the error on standard error).

use opentelemetry::trace::Tracer;
use serde::{Deserialize, Serialize};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[filament::remote]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[filament::remote]
fn with_custom_span() -> String {
    let tracer = opentelemetry::global::tracer("cluster-program");
    tracer.in_span("foo", |_cx| "inside foo".to_owned())
}

#[filament::remote]
fn outer(x: i64) -> i64 {
    let inner = add::remote(x, 1);
    filament::get(&inner).expect("the inner task") * 10
}

/// Prints to standard output and to standard error, and returns its process id.
#[filament::remote]
fn prints(text: String) -> u32 {
    println!("{text} on stdout");
    eprintln!("{text} on stderr");
    std::process::id()
}

#[filament::remote]
fn fails(message: String) -> i64 {
    panic!("{message}")
}

#[filament::remote]
fn dies() -> i64 {
    std::process::exit(7)
}

#[filament::remote]
fn noop() {}

#[filament::remote(max_retries = 3)]
fn square_slowly(i: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(2));
    i * i
}

#[filament::remote(max_retries = 0)]
fn dies_once_only() -> i64 {
    std::process::exit(9)
}

#[filament::remote]
fn sleeps(millis: u64) -> i64 {
    std::thread::sleep(Duration::from_millis(millis));
    0
}

/// Runs this program again from inside a task, as a program of its own (`child-program`), and
/// returns what it printed.
#[filament::remote]
fn runs_a_program() -> String {
    let output = std::process::Command::new("/proc/self/exe")
        .arg("child-program")
        .env("TEST_WORKERS", "1")
        .output()
        .expect("the program starts");
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        output.status
    )
}

/// `bytes` bytes whose every mebibyte starts with its index: a piece out of place shows.
fn big_value(bytes: u64) -> serde_bytes::ByteBuf {
    let mut value = vec![0xa5u8; bytes as usize];
    for (index, piece) in value.chunks_mut(1 << 20).enumerate() {
        let mark = (index as u32).to_le_bytes();
        let n = mark.len().min(piece.len());
        piece[..n].copy_from_slice(&mark[..n]);
    }
    serde_bytes::ByteBuf::from(value)
}

/// Whether `value` is `big_value(value.len())`.
fn is_big_value(value: &[u8]) -> bool {
    value.chunks(1 << 20).enumerate().all(|(index, piece)| {
        let mark = (index as u32).to_le_bytes();
        let n = mark.len().min(piece.len());
        piece[..n] == mark[..n] && piece[n..].iter().step_by(4093).all(|b| *b == 0xa5)
    })
}

#[filament::remote]
fn makes_a_big_value(bytes: u64) -> serde_bytes::ByteBuf {
    big_value(bytes)
}

#[filament::remote]
fn checks_a_big_value(value: serde_bytes::ByteBuf) -> (u64, bool) {
    (value.len() as u64, is_big_value(&value))
}

#[filament::remote]
fn pid() -> u32 {
    std::process::id()
}

/// Runs `n` tasks that each take `millis` and report the pid and node of their process.
#[filament::remote]
fn fan_out(n: u32, millis: u64) -> Vec<u32> {
    let refs: Vec<_> = (0..n).map(|_| sleepy_pid::remote(millis)).collect();
    filament::get_all(&refs).expect("the fanned-out tasks")
}

#[filament::remote]
fn sleepy_pid(millis: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(millis));
    std::process::id()
}

#[filament::remote(max_retries = 0)]
fn sleepy_pid_no_retry(millis: u64) -> u32 {
    std::thread::sleep(Duration::from_millis(millis));
    std::process::id()
}

/// Gets a result, then passes the ref itself (by value) to another task.
#[filament::remote]
fn moves_a_ref() -> i64 {
    let three = add::remote(1, 2);
    three.get().unwrap();
    add::remote(three, 1).get().unwrap()
}

#[filament::remote]
fn call_counter(counter: CounterHandle, by: i64) -> i64 {
    filament::get(&counter.incr(by)).expect("the actor call")
}

#[derive(Debug, Serialize, Deserialize)]
struct Triple {
    a: u64,
    b: String,
    c: Vec<u64>,
}

#[filament::actor]
struct Counter {
    n: i64,
}

#[filament::actor]
impl Counter {
    fn new(start: i64) -> Self {
        Counter { n: start }
    }

    fn incr(&mut self, by: i64) -> i64 {
        self.n += by;
        self.n
    }

    fn exit(&mut self) -> i64 {
        std::process::exit(9)
    }
}

#[filament::actor]
struct Phoenix {
    n: i64,
}

#[filament::actor(max_restarts = 1, max_task_retries = 1)]
impl Phoenix {
    fn new(n: i64) -> Self {
        Phoenix { n }
    }

    fn pid(&self) -> u32 {
        std::process::id()
    }

    fn incr(&mut self) -> i64 {
        self.n += 1;
        self.n
    }
}

/// Task 1 of 3: makes `n` results and returns the refs, not the values.
#[filament::remote]
fn make_refs(n: i64) -> Vec<filament::ObjectRef<i64>> {
    (0..n).map(|i| add::remote(i, 100)).collect()
}

/// Refs inside a struct, across processes.
#[derive(serde::Serialize, serde::Deserialize)]
struct Bundle {
    label: String,
    refs: Vec<filament::ObjectRef<i64>>,
}

/// Task 2 of 3: receives the refs and passes them on inside a struct, unread.
#[filament::remote]
fn bundle(refs: Vec<filament::ObjectRef<i64>>) -> Bundle {
    Bundle {
        label: format!("{} refs", refs.len()),
        refs,
    }
}

/// Task 3 of 3: gets every value the refs name.
#[filament::remote]
fn sum_bundle(bundle: Bundle) -> (String, i64) {
    let values = filament::get_all(&bundle.refs).expect("the bundled values");
    (bundle.label, values.iter().sum())
}

/// An actor's pid, for the lifetimes test.
#[filament::remote]
fn actor_pid_via(counter: CounterHandle) -> u32 {
    counter.incr(1).get().expect("the call");
    std::process::id()
}

fn kill_process(pid: u32) {
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success(), "kill -KILL {pid}");
}

#[filament::actor]
struct Fragile {
    value: i64,
}

#[filament::actor]
impl Fragile {
    fn new(value: i64) -> Self {
        assert!(value >= 0, "a negative value: {value}");
        Fragile { value }
    }

    fn value(&self) -> i64 {
        self.value
    }
}

/// Which case of `InitError` a failed `init` is, as a program matching on it sees it.
fn init_error_kind(error: &filament::InitError) -> &'static str {
    use filament::{InitError, WorkerStartError};
    match error {
        InitError::Hook(_) => "hook",
        InitError::WorkerStart(WorkerStartError::Hook { .. }) => "worker-hook",
        InitError::WorkerStart(WorkerStartError::Timeout { .. }) => "worker-start-timeout",
        InitError::WorkerStart(WorkerStartError::ClusterLost { .. }) => "cluster-lost",
        InitError::WorkerStart(_) => "worker-start-other",
        InitError::Attach(_) => "attach",
        InitError::HookMismatch { .. } => "hook-mismatch",
        InitError::ClusterHook { .. } => "cluster-hook",
        _ => "other",
    }
}

fn main() -> ExitCode {
    // Fault injection: the worker process with this id dies before it connects to its driver.
    if let (Ok(marker), Ok(id)) = (
        std::env::var("FILAMENT_WORKER"),
        std::env::var("TEST_CRASH_WORKER"),
    ) && marker.ends_with(&format!(":{id}"))
    {
        std::process::exit(1);
    }
    // Fault injection: the worker process with this id hangs before it connects. (The
    // FILAMENT_-named variable reaches the workers of a standing cluster, as a job's variables do.)
    if let (Ok(marker), Ok(id)) = (
        std::env::var("FILAMENT_WORKER"),
        std::env::var("TEST_STALL_WORKER").or_else(|_| std::env::var("FILAMENT_TEST_STALL_WORKER")),
    ) && marker.ends_with(&format!(":{id}"))
    {
        std::thread::sleep(Duration::from_secs(120));
        std::process::exit(1);
    }
    let mut config = filament::Config::default();
    if let Ok(workers) = std::env::var("TEST_WORKERS") {
        config = config.num_workers(workers.parse().expect("TEST_WORKERS is a number"));
    }
    if std::env::var_os("TEST_NO_FORWARD").is_some() {
        config = config.forward_worker_output(false);
    }
    if let Ok(ms) = std::env::var("TEST_WORKER_START_TIMEOUT_MS") {
        let ms = ms
            .parse()
            .expect("TEST_WORKER_START_TIMEOUT_MS is a number");
        config = config.worker_start_timeout(Duration::from_millis(ms));
    }
    let started = Instant::now();
    let runtime = match filament::init(config) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            println!("init_error={}", init_error_kind(&error));
            println!("init_failed_after_ms={}", started.elapsed().as_millis());
            return ExitCode::from(3);
        }
    };
    println!("driver_pid={}", std::process::id());
    println!("job_id={}", runtime.job_id());
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().map(String::as_str).unwrap_or("");
    match scenario {
        "one-task" => println!("result={}", add::remote(1, 2).get().unwrap()),
        "big-values" => {
            let bytes: u64 = args[1].parse().expect("a size in bytes");
            match makes_a_big_value::remote(bytes).get() {
                Ok(value) => {
                    println!("result_len={}", value.len());
                    println!("result_intact={}", is_big_value(&value));
                }
                Err(error) => println!("result_error={error}"),
            }
            match checks_a_big_value::remote(big_value(bytes)).get() {
                Ok((len, intact)) => {
                    println!("argument_len={len}");
                    println!("argument_intact={intact}");
                }
                Err(error) => println!("argument_error={error}"),
            }
        }
        "prints" => {
            println!(
                "printer_pid={}",
                prints::remote("hello from a task".to_owned())
                    .get()
                    .unwrap()
            );
            let _ = fails::remote("boom in a task".to_owned()).get();
        }
        "child-program" => println!("child_sum={}", add::remote(20, 22).get().unwrap()),
        "runs-a-program" => {
            let printed = runs_a_program::remote().get().unwrap();
            for line in printed.lines() {
                println!("child_{line}");
            }
        }
        "actor-one-call" => {
            let counter = Counter::remote(0);
            println!("result={}", counter.incr(1).get().unwrap());
            println!("actor_id={}", counter.actor().id());
            println!("actor_class={}", counter.actor().class());
        }
        "actor-four-calls" => {
            let counter = Counter::remote(10);
            let calls: Vec<_> = (1..=4).map(|i| counter.incr(i)).collect();
            println!("results={:?}", filament::get_all(&calls).unwrap());
        }
        "custom-span" => println!("result={}", with_custom_span::remote().get().unwrap()),
        "nested" => println!("result={}", outer::remote(4).get().unwrap()),
        "object-ref-argument" => {
            let three = add::remote(1, 2);
            let five = add::remote(&three, 2);
            let ten = add::remote(five, &three);
            println!("result={}", ten.get().unwrap() + three.get().unwrap());
        }
        "moved-ref" => {
            let three = add::remote(1, 2);
            three.get().unwrap();
            println!("driver={}", add::remote(three, 1).get().unwrap());
            println!("worker={}", moves_a_ref::remote().get().unwrap());
        }
        "failing-constructor" => {
            let fragile = Fragile::remote(-1);
            let calls: Vec<_> = (0..3).map(|_| fragile.value()).collect();
            for (i, call) in calls.iter().enumerate() {
                match call.get() {
                    Ok(v) => println!("unexpected{i}={v}"),
                    Err(error) => println!("error{i}={error}"),
                }
            }
        }
        "panic" => match fails::remote("it broke".to_owned()).get() {
            Ok(v) => println!("unexpected={v}"),
            Err(error) => println!("error={error}"),
        },
        "argument-failed" => {
            let broken = fails::remote("first".to_owned());
            match add::remote(&broken, 1).get() {
                Ok(v) => println!("unexpected={v}"),
                Err(error) => println!("error={error}"),
            }
        }
        "worker-dies" => {
            match dies::remote().get() {
                Ok(v) => println!("unexpected={v}"),
                Err(error) => println!("error={error}"),
            }
            // The pool replaced the worker: work goes on.
            println!("after={}", add::remote(20, 22).get().unwrap());
        }
        // A worker SIGKILLed under a batch: its tasks run again elsewhere.
        "retry-under-kill" => {
            let tasks: Vec<_> = (0..1000u64).map(square_slowly::remote).collect();
            std::thread::sleep(Duration::from_millis(300));
            let (_, pid) = runtime.worker_pids()[0];
            let killed = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .expect("kill runs");
            assert!(killed.success(), "kill -KILL {pid}");
            println!("killed={pid}");
            let values = filament::get_all(&tasks).expect("every result");
            let correct = values.iter().enumerate().all(|(i, v)| *v == (i * i) as u64);
            println!("results={} correct={correct}", values.len());
        }
        // An actor SIGKILLed with max_restarts = 1: it comes back once, not twice.
        "actor-restart" => {
            let phoenix = Phoenix::remote(10);
            println!("before={}", phoenix.incr().get().unwrap());
            let first = phoenix.pid().get().unwrap();
            kill_process(first);
            // In flight or queued when the driver learns of the death: it runs on the new process.
            println!("after_restart={}", phoenix.incr().get().unwrap());
            let second = phoenix.pid().get().unwrap();
            println!("new_process={}", second != first);
            kill_process(second);
            std::thread::sleep(Duration::from_millis(300));
            match phoenix.incr().get() {
                Ok(v) => println!("unexpected={v}"),
                Err(error) => println!("final_error={error}"),
            }
        }
        "nested-refs" => {
            let refs = make_refs::remote(4);
            let bundled = bundle::remote(&refs);
            drop(refs);
            let (label, sum) = sum_bundle::remote(&bundled).get().unwrap();
            println!("label={label} sum={sum}");
            // The driver reads the refs inside the bundle too.
            let bundle = bundled.get().unwrap();
            let values = filament::get_all(&bundle.refs).unwrap();
            println!("driver_values={values:?}");
        }
        // Actors created, called and dropped: their processes end.
        "actors-dropped" => {
            let n: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(50);
            let pool: Vec<u32> = runtime.worker_pids().iter().map(|(_, pid)| *pid).collect();
            let mut actor_pids = Vec::new();
            for i in 0..n {
                let counter = Counter::remote(0);
                assert_eq!(counter.incr(1).get().unwrap(), 1);
                if i % 10 == 0 {
                    // A handle passed to a task counts too: the call through it still works
                    // after the driver dropped its own.
                    let via = actor_pid_via::remote(counter.clone());
                    drop(counter);
                    via.get().unwrap();
                } else {
                    drop(counter);
                }
                let now: Vec<u32> = runtime.worker_pids().iter().map(|(_, pid)| *pid).collect();
                actor_pids.extend(now.into_iter().filter(|pid| !pool.contains(pid)));
            }
            actor_pids.sort_unstable();
            actor_pids.dedup();
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut left = usize::MAX;
            while Instant::now() < deadline {
                left = runtime.worker_pids().len();
                if left == pool.len() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            println!("processes_left={left} pool={}", pool.len());
            println!(
                "actor_pids={}",
                actor_pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            );
        }
        "no-retry" => {
            match dies_once_only::remote().get() {
                Ok(v) => println!("unexpected={v}"),
                Err(error) => println!("error={error}"),
            }
            println!("after={}", add::remote(20, 22).get().unwrap());
        }
        "dead-actor" => {
            let counter = Counter::remote(0);
            println!("first={}", counter.incr(1).get().unwrap());
            match counter.exit().get() {
                Ok(v) => println!("unexpected={v}"),
                Err(error) => println!("exit_error={error}"),
            }
            match counter.incr(1).get() {
                Ok(v) => println!("unexpected={v}"),
                Err(error) => println!("error={error}"),
            }
        }
        "actor-handle-in-task" => {
            let counter = Counter::remote(100);
            let first = counter.incr(1);
            println!("first={}", first.get().unwrap());
            println!(
                "result={}",
                call_counter::remote(counter.clone(), 5).get().unwrap()
            );
            println!("last={}", counter.incr(1).get().unwrap());
        }
        // Tasks, an actor, nested tasks, a panicking task and a custom span: one job, many processes.
        "mixed" => {
            println!("add={}", add::remote(1, 2).get().unwrap());
            let counter = Counter::remote(0);
            println!("counter={}", counter.incr(5).get().unwrap());
            println!("nested={}", outer::remote(4).get().unwrap());
            match fails::remote("it broke".to_owned()).get() {
                Ok(v) => println!("unexpected={v}"),
                Err(error) => println!("error={error}"),
            }
            println!("custom={}", with_custom_span::remote().get().unwrap());
        }
        "in-user-span" => {
            let tracer = opentelemetry::global::tracer("cluster-program");
            let result = tracer.in_span("driver-work", |_cx| add::remote(2, 3).get().unwrap());
            println!("result={result}");
        }
        "driver-panics" => {
            for (worker, pid) in runtime.worker_pids() {
                println!("worker={worker} pid={pid}");
            }
            noop::remote().get().unwrap();
            panic!("the driver panics");
        }
        "wrong-type" => match add::remote(1, 2).cast::<Triple>().get() {
            Ok(v) => println!("unexpected={v:?}"),
            Err(error) => println!("error={error}"),
        },
        "other-cluster" => {
            let old = add::remote(1, 1);
            old.get().unwrap();
            drop(runtime);
            let _second = filament::init(filament::Config::default()).unwrap();
            match old.get() {
                Ok(v) => println!("unexpected={v}"),
                Err(error) => println!("error={error}"),
            }
            return ExitCode::SUCCESS;
        }
        "wait" => {
            let quick = add::remote(1, 1);
            quick.get().unwrap();
            let refs = vec![sleeps::remote(1000), quick];
            // Asked for both within 100 ms: only the quick one is done.
            let (ready, pending) =
                filament::wait(refs, 2, Some(Duration::from_millis(100))).unwrap();
            println!(
                "first_ready={} first_pending={}",
                ready.len(),
                pending.len()
            );
            println!("ready_value={}", ready[0].get().unwrap());
            let all: Vec<_> = ready.into_iter().chain(pending).collect();
            let (ready, pending) = filament::wait(all, 2, None).unwrap();
            println!("then_ready={} then_pending={}", ready.len(), pending.len());
            // Three done, one asked for: one returned as done, the first; two left, in order.
            let done = vec![add::remote(1, 0), add::remote(2, 0), add::remote(3, 0)];
            filament::get_all(&done).unwrap();
            let (ready, rest) = filament::wait(done, 1, None).unwrap();
            println!(
                "capped_ready={:?} capped_rest={:?}",
                filament::get_all(&ready).unwrap(),
                filament::get_all(&rest).unwrap()
            );
        }
        "many" => {
            let n: usize = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000);
            let refs: Vec<_> = (0..n as i64).map(|i| add::remote(i, 1)).collect();
            let values = filament::get_all(&refs).unwrap();
            let expected: i64 = (0..n as i64).map(|i| i + 1).sum();
            println!("sum={} expected={expected}", values.iter().sum::<i64>());
        }
        "idle-after-calls" => {
            // Sequential calls leave every reader hot; then the cluster idles for a second.
            let counter = Counter::remote(0);
            for i in 0..1000 {
                assert_eq!(add::remote(i, 1).get().unwrap(), i + 1);
                counter.incr(1).get().unwrap();
            }
            let pids: Vec<u32> = std::iter::once(std::process::id())
                .chain(runtime.worker_pids().into_iter().map(|(_, pid)| pid))
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            let before: Vec<(u64, u64)> = pids
                .iter()
                .map(|pid| filament_tests::cpu_and_switches(*pid))
                .collect();
            std::thread::sleep(Duration::from_secs(1));
            for (pid, (cpu, switches)) in pids.iter().zip(before) {
                let (cpu_after, switches_after) = filament_tests::cpu_and_switches(*pid);
                println!(
                    "idle pid={pid} cpu_ms={} switches={}",
                    (cpu_after - cpu) / 1_000_000,
                    switches_after - switches
                );
            }
        }
        "stalled-actor" => {
            let counter = Counter::remote(0);
            match counter.incr(1).get() {
                Ok(v) => println!("unexpected={v}"),
                Err(error) => println!("error={error}"),
            }
            println!("after={}", add::remote(20, 22).get().unwrap());
        }
        "two-actors" => {
            let first = Counter::remote(0);
            let second = Counter::remote(10);
            println!("first={}", first.incr(1).get().unwrap());
            println!("second={}", second.incr(1).get().unwrap());
        }
        "fan-out" => {
            let mut pids = fan_out::remote(8, 50).get().unwrap();
            pids.sort();
            pids.dedup();
            println!("task_pids={}", pids.len());
        }
        // Tasks in flight while the test kills something (a node, the head), then more tasks.
        "under-fire" => {
            use std::io::Write;
            let millis: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(3000);
            let retry = args.get(2).map(String::as_str) != Some("no-retry");
            let slow: Vec<_> = (0..4)
                .map(|_| {
                    if retry {
                        sleepy_pid::remote(millis)
                    } else {
                        sleepy_pid_no_retry::remote(millis)
                    }
                })
                .collect();
            // Every worker has started one.
            std::thread::sleep(Duration::from_millis(300));
            println!("submitted");
            std::io::stdout().flush().unwrap();
            let started = Instant::now();
            for (i, task) in slow.iter().enumerate() {
                match task.get() {
                    Ok(pid) => println!("slow{i}=ok {pid}"),
                    Err(error) => println!("slow{i}=error {error}"),
                }
            }
            println!("slow_done_after_ms={}", started.elapsed().as_millis());
            let after: Vec<_> = (0..4).map(|i| add::remote(i, 1)).collect();
            for (i, task) in after.iter().enumerate() {
                match task.get() {
                    Ok(v) => println!("after{i}=ok {v}"),
                    Err(error) => println!("after{i}=error {error}"),
                }
            }
        }
        "workers" => {
            for (worker, pid) in runtime.worker_pids() {
                println!("worker={worker} pid={pid}");
            }
            let pids: Vec<_> = (0..8).map(|_| pid::remote()).collect();
            let mut seen = filament::get_all(&pids).unwrap();
            seen.sort();
            seen.dedup();
            println!("task_pids={}", seen.len());
            noop::remote().get().unwrap();
            if args.get(1).map(String::as_str) == Some("hang") {
                println!("hanging");
                std::thread::sleep(Duration::from_secs(600));
            }
        }
        other => {
            eprintln!("unknown scenario {other:?}");
            return ExitCode::from(2);
        }
    }
    drop(runtime);
    ExitCode::SUCCESS
}
