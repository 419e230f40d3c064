//! The `weir` command line.

fn main() -> std::process::ExitCode {
    weir::cli::main()
}
