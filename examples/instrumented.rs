//! Instrumentation, as the seed's "patch the libraries that have built-in tracing support": a task
//! calls a function marked `#[tracing::instrument]`, a library that logs through `log`, and `get`s
//! the result of another task. The instrument hook switches on the host's `tracing` and `log`
//! bridges and the `get` span; the local-file hook writes the spans; the example prints the tree.
//!
//! ```text
//! cargo run --release --example instrumented
//! ```
//!
//! The hooks are `filament_instrument:setup_tracing,filament_local_file:setup_tracing` unless
//! `FILAMENT_TRACING_STARTUP_HOOK` says otherwise; what is switched on is `FILAMENT_INSTRUMENT`
//! (here `tracing,log,resources,get` unless set), filtered by `FILAMENT_INSTRUMENT_FILTER`
//! (`info` by default).

/// A library that knows nothing of Filament or OpenTelemetry: it logs through `log`.
mod inventory {
    /// Counts the items in stock, logging as it goes.
    pub(crate) fn count(items: &[&str]) -> usize {
        log::info!(target: "inventory", "counting {} items", items.len());
        if items.is_empty() {
            log::warn!(target: "inventory", "the stock is empty");
        }
        items.len()
    }
}

/// User code instrumented with `tracing`: a span with the argument as a field, and an event.
#[tracing::instrument]
fn price(items: usize) -> u64 {
    let total = items as u64 * 3;
    tracing::info!(total, "priced");
    total
}

#[filament::remote]
fn stock_size() -> usize {
    inventory::count(&["apple", "pear", "plum"])
}

#[filament::remote]
fn quote() -> u64 {
    // A `get` inside a task: its span is a child of this task's span.
    let items = filament::get(&stock_size::remote()).expect("the stock");
    price(items)
}

const HOOKS: &str = "filament_instrument:setup_tracing,filament_local_file:setup_tracing";

fn main() -> Result<(), filament::GetError> {
    let hooks = std::env::var(filament::tracing::TRACING_STARTUP_HOOK_ENV)
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| HOOKS.to_owned());
    let instrument =
        std::env::var("FILAMENT_INSTRUMENT").unwrap_or_else(|_| "tracing,log,resources,get".into());
    // Every process reads the configuration given here (the workers included).
    let config = filament::Config::default()
        .tracing_startup_hook(hooks.clone())
        .tracing_config("FILAMENT_INSTRUMENT", instrument);
    // In worker processes (this program, re-executed) `init` serves tasks and never returns.
    let runtime = match filament::init(config) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    println!("tracing startup hooks: {hooks}");
    println!("the quote is {}", quote::remote().get()?);
    filament_examples::finish(runtime, &hooks);
    Ok(())
}
