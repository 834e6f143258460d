//! The `filament` command: `filament start --head`, `filament status`, `filament stop`.

fn main() -> std::process::ExitCode {
    filament::cli::main()
}
