//! Actors: a counter that lives in a worker process of its own; calls run in submission order,
//! and its handle can be passed to tasks, whose calls continue the caller's trace.
//!
//! `cargo run --release --example actors`

#[filament::actor]
struct Counter {
    count: i64,
}

#[filament::actor]
impl Counter {
    fn new(start: i64) -> Self {
        Counter { count: start }
    }

    fn add(&mut self, n: i64) -> i64 {
        self.count += n;
        self.count
    }
}

/// A task that uses the actor through a handle it was given.
#[filament::remote]
fn add_twice(counter: CounterHandle, n: i64) -> i64 {
    let first = counter.add(n);
    let second = counter.add(n);
    filament::get(&first).expect("first call") + filament::get(&second).expect("second call")
}

fn main() -> Result<(), filament::GetError> {
    let (runtime, hook) = filament_examples::init_or_exit();
    let counter = Counter::remote(0);
    let calls: Vec<_> = (1..=4).map(|n| counter.add(n)).collect();
    println!("four calls, in order: {:?}", filament::get_all(&calls)?);
    println!(
        "a task calling the actor: {}",
        add_twice::remote(counter.clone(), 10).get()?
    );
    println!("the count now: {}", counter.add(0).get()?);
    filament_examples::finish(runtime, &hook);
    Ok(())
}
