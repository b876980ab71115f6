//! The `waly` binary: command-line parsing and error reporting at the edge.

mod cli;

use clap::Parser;

/// jemalloc, with its background thread purging freed pages, hands the memory a large transaction used
/// back to the system within seconds: after a 1,000,000-row UPDATE (a 200 MB record) waly went back to
/// 27 MB resident, where glibc's malloc kept 587 MB.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (tikv-jemalloc-sys prefixes its symbols with `_rjem_`).
#[unsafe(export_name = "_rjem_malloc_conf")]
static JEMALLOC_OPTIONS: &[u8; 23] = b"background_thread:true\0";

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waly: {}", report(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// The error and its causes, outermost first, joined by ": ". A cause whose text its error already
/// printed (an error that names its source in its message) is not repeated.
fn report(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::report;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the log: {0}")]
    struct Opening(#[from] std::io::Error);

    #[test]
    fn a_cause_already_in_its_error_message_is_printed_once() {
        let io = std::io::Error::other("another process has the log open");
        let error = anyhow::Error::from(Opening(io)).context("waly serve");
        assert_eq!(
            report(&error),
            "waly serve: cannot open the log: another process has the log open"
        );
    }

    #[test]
    fn causes_not_in_the_message_are_all_printed() {
        let error = anyhow::anyhow!("root cause")
            .context("middle")
            .context("top");
        assert_eq!(report(&error), "top: middle: root cause");
    }
}
