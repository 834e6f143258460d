//! Head-of-line blocking: how close batches of tasks of very different lengths come to the ideal
//! makespan on 2 workers (tracing off). Each pool worker holds up to 32 tasks so that short tasks
//! travel in batches; a worker that falls idle takes back tasks queued behind a long one, so that
//! they do not wait for it.
//!
//! 1. **one long, many short**: one 1,000 ms task, then 62 tasks of 10 ms. Ideal: 1,000 ms (the
//!    long task on one worker, the 620 ms of short ones on the other); without taking tasks back,
//!    the 31 short tasks queued behind the long one would end at 1,310 ms.
//! 2. **a random mix**: 100 tasks of 1–100 ms (a fixed pseudo-random sequence). Ideal: the larger
//!    of the longest task and half the total.
//! 3. **actor lifetimes**: 10,000 actors, each created, called once and dropped: the driver's
//!    `VmRSS` after the first 10% and at the end (flat: nothing of a dropped actor stays), and the
//!    worker processes left once they are all gone (the pool's only).
//!
//! The figure of 1 and 2 is makespan ÷ ideal (the goal: ≤ 1.05), the median and range
//! over rounds. Sleeping tasks use no CPU, so it hardly depends on the machine's load. Run with
//! `cargo bench -p filament-bench --bench scheduling`; without `--bench` (as under `cargo test
//! --all-targets`) it runs a smoke pass at a tenth of the durations and with 100 actors.

use filament::Config;
use filament_bench::median;
use std::time::{Duration, Instant};

const WORKERS: usize = 2;

#[filament::actor]
struct Counter {
    n: u64,
}

#[filament::actor]
impl Counter {
    fn new(n: u64) -> Self {
        Counter { n }
    }

    fn incr(&mut self) -> u64 {
        self.n += 1;
        self.n
    }
}

#[filament::remote]
fn sleep_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Runs `durations` (ms) as one batch; returns the makespan in ms.
fn makespan(durations: &[u64]) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = durations.iter().map(|ms| sleep_ms::remote(*ms)).collect();
    let results = filament::get_all(&tasks).expect("every result");
    assert_eq!(results, durations, "every task's own result");
    started.elapsed().as_secs_f64() * 1e3
}

/// The best any schedule on `WORKERS` workers can do: the longest task, or the work shared evenly.
fn ideal(durations: &[u64]) -> f64 {
    let longest = durations.iter().copied().max().unwrap_or(0) as f64;
    let total: u64 = durations.iter().sum();
    longest.max(total as f64 / WORKERS as f64)
}

/// 100 durations of 1–100 ms from a fixed linear congruential sequence.
fn random_mix(scale: u64) -> Vec<u64> {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    (0..100)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            ((x >> 33) % 100 + 1) * scale / 10
        })
        .map(|ms| ms.max(1))
        .collect()
}

fn main() {
    let runtime = filament::init(Config::default().num_workers(WORKERS))
        .unwrap_or_else(|e| panic!("init failed: {e}"));
    let bench = std::env::args().any(|a| a == "--bench");
    let (rounds, scale) = if bench { (5, 10) } else { (1, 1) };
    let long_then_short: Vec<u64> = std::iter::once(100 * scale)
        .chain(std::iter::repeat_n(scale, 62))
        .collect();
    let mix = random_mix(scale);
    // Warm up: both workers have run a task.
    filament::get_all(&[sleep_ms::remote(1), sleep_ms::remote(1)]).expect("warm-up");
    println!(
        "scheduling: {WORKERS} workers, {rounds} rounds{}",
        if bench {
            ""
        } else {
            " (smoke pass: durations / 10)"
        }
    );
    println!(
        "{:<44} {:>10} {:>10} {:>16} {:>8}",
        "workload", "ideal ms", "median ms", "makespan/ideal", "goal"
    );
    for (name, durations) in [
        ("1. one long task, then 62 short ones", &long_then_short),
        ("2. 100 tasks of 1-100 ms", &mix),
    ] {
        let ideal = ideal(durations);
        let samples: Vec<f64> = (0..rounds).map(|_| makespan(durations)).collect();
        let ratios: Vec<f64> = samples.iter().map(|ms| ms / ideal).collect();
        let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ratios.iter().copied().fold(0.0, f64::max);
        println!(
            "{name:<44} {ideal:>10.0} {:>10.0} {:>6.3} ({lo:.3}-{hi:.3}) {:>8}",
            median(&samples),
            median(&ratios),
            "<= 1.05"
        );
    }
    let actors = if bench { 10_000 } else { 100 };
    let started = Instant::now();
    let mut rss = Vec::new();
    for i in 0..actors {
        let counter = Counter::remote(i);
        assert_eq!(counter.incr().get().expect("the call"), i + 1);
        drop(counter);
        if i + 1 == actors / 10 || i + 1 == actors {
            rss.push(filament_bench::rss_kib());
        }
    }
    let elapsed = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(30);
    while runtime.worker_pids().len() > WORKERS && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "3. {actors} actors created, called and dropped in {:.1} s ({:.2} ms each): driver VmRSS {} KiB \
         after {}, {} KiB at the end (end/10% = {:.3}; goal: flat); worker processes left: {} (the pool: {WORKERS})",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e3 / actors as f64,
        rss[0],
        actors / 10,
        rss[1],
        rss[1] as f64 / rss[0] as f64,
        runtime.worker_pids().len()
    );
    drop(runtime);
}
