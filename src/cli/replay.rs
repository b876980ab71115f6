//! `waly replay`: rebuilds a database from the log, exactly, applying row images in large batches.
//! Resumable: the target keeps a checkpoint, so a replay killed and run again continues where it stopped.

use std::io::IsTerminal;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use waly::log::{Position, open_reader};
use waly::record::Record;
use waly::replay::{self, ReplayOptions};

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The database to rebuild, as a libpq URL or key=value string.
    #[arg(long)]
    target: String,
    /// The database whose log to replay (needed with the Kafka backend: one topic per database).
    #[arg(long, short = 'd')]
    database: Option<String>,
    /// Stop after this position (inclusive).
    #[arg(long, conflicts_with = "until")]
    to: Option<u64>,
    /// Apply only records appended before this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long)]
    until: Option<String>,
    /// Row changes per target transaction (and checkpoint).
    #[arg(long, default_value_t = 5000)]
    batch: usize,
}

/// Records read from the log per step.
const CHUNK: usize = 2000;

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let reader = open_reader(&config, args.database.as_deref())?;
    super::runtime()?.block_on(async {
        let (target, connection) = tokio_postgres::connect(&args.target, tokio_postgres::NoTls)
            .await
            .context("cannot connect to the replay target")?;
        tokio::spawn(connection);

        // Only settled records: a replay must never apply one the log may still take back (a file log
        // record whose fsync may still fail while `waly serve` appends).
        let mut end = reader.settled_end().await?;
        if let Some(to) = args.to {
            end = end.min(Position(to));
        }
        if let Some(until) = &args.until {
            let t = humantime::parse_rfc3339_weak(until).with_context(|| format!("--until {until:?} is not an RFC 3339 time"))?;
            let micros = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_micros() as i64;
            if let Some(first_after) = reader.position_at(micros).await? {
                end = end.min(Position(first_after.0.saturating_sub(1)));
            }
        }
        let start = replay::load_checkpoint(&target).await?;
        if start >= end {
            println!("nothing to replay: the target is at position {start}, the log (as limited) ends at {end}");
            return Ok(());
        }
        let progress = progress_bar(end.0 - start.0);
        let options = ReplayOptions { batch_changes: args.batch, until: Some(end) };
        let (mut from, mut rows, began) = (start.next(), 0u64, SystemTime::now());
        while from <= end {
            let entries = reader.read(from, CHUNK).await?;
            if entries.is_empty() {
                bail!("the log ended at position {} before {end}", from.0 - 1);
            }
            let mut records = Vec::with_capacity(entries.len());
            for entry in entries.into_iter().take_while(|e| e.position <= end) {
                let record = Record::from_json(&entry.payload).with_context(|| format!("record at position {}", entry.position))?;
                records.push((entry.position, record));
            }
            let last = records.last().map(|(p, _)| *p).expect("at least one entry");
            let stats = replay::apply(&target, records, &options).await?;
            rows += stats.row_changes;
            progress.set_position(last.0 - start.0);
            progress.set_message(format!("{rows} row changes"));
            from = last.next();
        }
        progress.finish_and_clear();
        let secs = began.elapsed().unwrap_or_default().as_secs_f64().max(1e-9);
        println!(
            "replayed positions {}..={end} ({rows} row changes in {secs:.1}s, {:.0} row changes/s)",
            start.next(),
            rows as f64 / secs
        );
        anyhow::Ok(())
    })
}

/// A bar with rate and ETA on a terminal; nothing otherwise.
fn progress_bar(records: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(records);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} records  {per_sec}  ETA {eta}  {msg}")
            .expect("a valid template"),
    );
    bar
}
