//! `waly replay`: rebuilds a database from the log. `--mode exact` (the default) applies row images in
//! large batches; `--mode ops` re-executes the logged domain operations through the current catalog, to
//! build a database of a newer schema or a read model. Resumable either way: the target keeps a
//! checkpoint, so a replay killed and run again continues where it stopped.

use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_postgres::Client;

use waly::log::{LogReader, Position, open_reader};
use waly::operations::Catalog;
use waly::record::Record;
use waly::replay::source::Source;
use waly::replay::{self, OpsOptions, OpsStats, ReplayOptions};

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The database to rebuild, as a libpq URL or key=value string.
    #[arg(long)]
    target: String,
    /// The database whose records to replay: required with the Kafka backend (one topic per database)
    /// and with a file log that holds the records of several databases (it holds every database waly
    /// serves); the other databases' records are skipped.
    #[arg(long, short = 'd')]
    database: Option<String>,
    /// exact: apply the logged row images and DDL (triggers off); ops: re-execute the logged domain
    /// operations through the current catalog (--operations) and its upcasters, triggers on.
    #[arg(long, value_enum, default_value_t = Mode::Exact)]
    mode: Mode,
    /// Stop after this position (inclusive).
    #[arg(long, conflicts_with = "until")]
    to: Option<u64>,
    /// Start at this position: skip the records before it (those of a database dropped and created
    /// again under its name). A target's checkpoint past it wins.
    #[arg(long)]
    from: Option<u64>,
    /// Apply only records appended before this time (RFC 3339, e.g. 2026-11-23T10:00:00Z).
    #[arg(long)]
    until: Option<String>,
    /// Row changes per target transaction (and checkpoint), in exact mode. Ops mode commits each record.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Ops mode: skip (and count) calls of operations the catalog does not declare, instead of stopping.
    #[arg(long)]
    skip_unknown: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Exact,
    Ops,
}

/// Records applied per step.
const CHUNK: usize = 2000;

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let config = args.config.load()?;
    let catalog = match args.mode {
        Mode::Ops => Some(load_catalog(config.operations.as_deref())?),
        Mode::Exact if args.skip_unknown => bail!("--skip-unknown applies to --mode ops only"),
        Mode::Exact => None,
    };
    let reader = open_reader(&config, args.database.as_deref())?;
    super::runtime()?.block_on(async {
        let (target, connection) = tokio_postgres::connect(&args.target, tokio_postgres::NoTls)
            .await
            .context("cannot connect to the replay target")?;
        tokio::spawn(connection);

        let end = replay_end(reader.as_ref(), args.to, args.until.as_deref()).await?;
        let checkpoint = replay::load_checkpoint(&target).await?;
        let start = match args.from {
            Some(from) => checkpoint.max(Position(from.saturating_sub(1))),
            None => checkpoint,
        };
        if start >= end {
            println!("nothing to replay: the target is at position {start}, the log (as limited) ends at {end}");
            return Ok(());
        }
        let mut replayer = match catalog {
            None => Replayer::Exact {
                options: ReplayOptions { batch_changes: args.batch, until: Some(end) },
                rows: 0,
            },
            Some(catalog) => Replayer::Ops {
                catalog,
                options: OpsOptions { skip_unknown: args.skip_unknown, until: Some(end) },
                stats: OpsStats { resumed_from: start, checkpoint: start, ..OpsStats::default() },
            },
        };
        let progress = progress_bar(end.0 - start.0);
        let began = SystemTime::now();
        let mut source = Source::new(reader.as_ref(), start, end).only(args.database.as_deref());
        loop {
            let records = source.chunk(CHUNK).await?;
            let Some(last) = records.last().map(|(p, _)| *p) else {
                break;
            };
            replayer.apply(&target, records).await?;
            progress.set_position(last.0 - start.0);
            progress.set_message(replayer.progress());
        }
        progress.finish_and_clear();
        let secs = began.elapsed().unwrap_or_default().as_secs_f64().max(1e-9);
        let waiting = source.waiting().map(|(p, r)| (p, r.writer.clone()));
        let reached = waiting.as_ref().map_or(end, |(p, _)| Position(p.0 - 1));
        println!("{}", replayer.report(start, reached, secs));
        if source.other_databases > 0 {
            println!(
                "skipped {} records of other databases than {}",
                source.other_databases,
                args.database.as_deref().unwrap_or_default()
            );
        }
        if source.not_committed > 0 {
            println!(
                "skipped {} records of direct commits that did not commit (outcome records say so)",
                source.not_committed
            );
        }
        if let Some((position, writer)) = waiting {
            let why = format!(
                "stopped before position {position}: no record says yet how its commit ended (written by waly {writer}; \
                 a running waly decides it within moments, a stopped one when it starts again). Run the replay again to continue"
            );
            if args.to.is_some() || args.until.is_some() {
                bail!("{why}");
            }
            eprintln!("waly replay: {why}");
        }
        anyhow::Ok(())
    })
}

/// The catalog ops mode replays through; it is required.
fn load_catalog(path: Option<&Path>) -> anyhow::Result<Catalog> {
    let Some(path) = path else {
        bail!(
            "--mode ops needs the operations catalog: pass --operations FILE, set WALY_OPERATIONS, \
             or set `operations:` in the configuration file"
        );
    };
    Catalog::load(path).map_err(|e| anyhow!("the operations catalog cannot be used:\n{e}"))
}

/// The last position to replay: the log's settled end, limited by --to and --until. Only settled
/// records: a replay must never apply one the log may still take back (a file log record whose fsync
/// may still fail while `waly serve` appends).
async fn replay_end(
    reader: &dyn LogReader,
    to: Option<u64>,
    until: Option<&str>,
) -> anyhow::Result<Position> {
    let mut end = reader.settled_end().await?;
    if let Some(to) = to {
        end = end.min(Position(to));
    }
    if let Some(until) = until {
        let t = humantime::parse_rfc3339_weak(until)
            .with_context(|| format!("--until {until:?} is not an RFC 3339 time"))?;
        let micros = t
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_micros() as i64;
        if let Some(first_after) = reader.position_at(micros).await? {
            end = end.min(Position(first_after.0.saturating_sub(1)));
        }
    }
    Ok(end)
}

/// One replay mode and what it has done so far.
enum Replayer {
    Exact {
        options: ReplayOptions,
        rows: u64,
    },
    Ops {
        catalog: Catalog,
        options: OpsOptions,
        stats: OpsStats,
    },
}

impl Replayer {
    async fn apply(
        &mut self,
        target: &Client,
        records: Vec<(Position, Record)>,
    ) -> anyhow::Result<()> {
        match self {
            Replayer::Exact { options, rows } => {
                *rows += replay::apply(target, records, options).await?.row_changes;
            }
            Replayer::Ops {
                catalog,
                options,
                stats,
            } => {
                stats.merge(replay::ops::apply(target, catalog, records, options).await?);
            }
        }
        Ok(())
    }

    /// The progress bar's message.
    fn progress(&self) -> String {
        match self {
            Replayer::Exact { rows, .. } => format!("{rows} row changes"),
            Replayer::Ops { stats, .. } => format!("{} operations", stats.operations),
        }
    }

    /// The summary printed at the end.
    fn report(&self, start: Position, end: Position, secs: f64) -> String {
        let range = format!("{}..={end}", start.next());
        match self {
            Replayer::Exact { rows, .. } => format!(
                "replayed positions {range} ({rows} row changes in {secs:.1}s, {:.0} row changes/s)",
                *rows as f64 / secs
            ),
            Replayer::Ops { stats, .. } => ops_report(&range, stats, secs),
        }
    }
}

fn ops_report(range: &str, stats: &OpsStats, secs: f64) -> String {
    let mut out = format!(
        "replayed the operations of positions {range} in {secs:.1}s: {} records applied, {} operations \
         executed ({:.0}/s), {} records without operations skipped",
        stats.records,
        stats.operations,
        stats.operations as f64 / secs,
        stats.without_operations,
    );
    let width = stats
        .per_operation
        .keys()
        .chain(stats.unknown.keys())
        .map(String::len)
        .max()
        .unwrap_or(0);
    for (name, n) in &stats.per_operation {
        out.push_str(&format!("\n  {name:<width$}  {n}"));
    }
    if !stats.unknown.is_empty() {
        out.push_str(&format!(
            "\nskipped {} calls of operations not in the catalog:",
            stats.unknown_calls()
        ));
        for (name, n) in &stats.unknown {
            out.push_str(&format!("\n  {name:<width$}  {n}"));
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn ops_mode_without_a_catalog_says_how_to_give_one() {
        let e = load_catalog(None).unwrap_err().to_string();
        assert!(e.contains("--operations FILE"), "{e}");
        assert!(e.contains("WALY_OPERATIONS"), "{e}");
    }

    #[test]
    fn the_ops_report_lists_counts_per_operation() {
        let stats = OpsStats {
            records: 3,
            operations: 4,
            without_operations: 2,
            per_operation: BTreeMap::from([("DEPOSIT".into(), 3), ("CREATE_ACCOUNT".into(), 1)]),
            unknown: BTreeMap::from([("GHOST".into(), 1)]),
            ..OpsStats::default()
        };
        assert_eq!(
            ops_report("1..=5", &stats, 2.0),
            "replayed the operations of positions 1..=5 in 2.0s: 3 records applied, 4 operations \
             executed (2/s), 2 records without operations skipped\n  CREATE_ACCOUNT  1\n  DEPOSIT         3\n\
             skipped 1 calls of operations not in the catalog:\n  GHOST           1"
        );
    }
}
