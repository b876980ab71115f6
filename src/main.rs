//! The `waly` binary: command-line parsing and error reporting at the edge.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waly: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
