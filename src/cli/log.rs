//! `waly log tail [-f]` and `waly log show POS`: read the log (the file log, or a database's Kafka topic),
//! also while `waly serve` appends.

use std::io::ErrorKind;
use std::time::Duration;

use clap::{Args, Subcommand};

use waly::config::LogBackend;
use waly::log::inspect::{self, Format, InspectError};
use waly::log::{Position, open_reader};

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The database whose records to read: required with the Kafka backend (one topic per database).
    /// The file log holds every database's records: `tail` then shows only this one's transaction
    /// records (no outcome records), and all of them without it.
    #[arg(long, short = 'd', global = true)]
    database: Option<String>,
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(Debug, Subcommand)]
enum LogCommand {
    /// Print the last records (or those from a position), and with -f keep printing new ones.
    Tail {
        /// Keep waiting for new records.
        #[arg(long, short)]
        follow: bool,
        /// Start at this position instead of the last records.
        #[arg(long)]
        from: Option<u64>,
        /// How many records (default 10; with --from, at most this many).
        #[arg(long, short = 'n')]
        lines: Option<usize>,
        /// One JSON object per line instead of readable blocks.
        #[arg(long)]
        json: bool,
    },
    /// Print the record at a position.
    Show {
        position: u64,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: LogArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let reader = open_reader(&config, args.database.as_deref())?;
    let reader = reader.as_ref();
    let format = |json: bool| if json { Format::Json } else { Format::Human };
    let mut out = std::io::stdout();
    let result = super::runtime()?.block_on(async {
        match args.command {
            LogCommand::Tail {
                follow,
                from,
                lines,
                json,
            } => {
                let tail = inspect::tail(
                    reader,
                    from.map(Position),
                    lines,
                    follow,
                    Duration::from_millis(250),
                    &mut out,
                    format(json),
                    // A Kafka topic holds one database's records (and its outcome records) already.
                    args.database
                        .as_deref()
                        .filter(|_| matches!(config.log, LogBackend::File(_))),
                );
                tokio::select! {
                    r = tail => r,
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            }
            LogCommand::Show { position, json } => {
                inspect::show(reader, Position(position), &mut out, format(json)).await
            }
        }
    });
    match result {
        Err(InspectError::Output(e)) if e.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
