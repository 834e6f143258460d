//! Nested tasks: a task that submits tasks. The whole call tree is one trace across processes:
//! driver PRODUCER → worker CONSUMER → worker PRODUCER → other worker CONSUMER.
//!
//! `cargo run --release --example nested`

#[filament::remote]
fn square(x: u64) -> u64 {
    x * x
}

#[filament::remote]
fn sum_of_squares(n: u64) -> u64 {
    let squares: Vec<_> = (1..=n).map(square::remote).collect();
    filament::get_all(&squares)
        .expect("the squares")
        .into_iter()
        .sum()
}

fn main() -> Result<(), filament::GetError> {
    let (runtime, hook) = filament_examples::init_or_exit();
    println!("sum of squares 1..=3: {}", sum_of_squares::remote(3).get()?);
    filament_examples::finish(runtime, &hook);
    Ok(())
}
