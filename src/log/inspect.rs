//! What `waly log tail` and `waly log show` print: entries rendered for a person (a block per record) or
//! for a program (one JSON object per line), and the loops that choose which entries.
//!
//! Owns the presentation of log entries and nothing more: it reads through a [`LogReader`], so it
//! never locks or writes the log, and writes only to the output it is given. It is the one part of `log`
//! that knows a payload is a [`Record`](crate::record::Record). It must never panic on what it reads: a
//! payload that is not a record is shown as such.

mod render;
#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::time::Duration;

use super::{Entry, LogError, LogReader, Position};

pub use render::{render_human, render_json, render_json_with};

use crate::record::{LogRecord, Settled, Settler};

/// How many entries `tail` prints when asked for neither a position nor a count.
pub const DEFAULT_TAIL: usize = 10;

/// Entries fetched per read while printing.
const READ_BATCH: usize = 256;

/// Output format of `tail` and `show`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    /// A readable block per entry ([`render_human`]); blocks are separated by a blank line.
    #[default]
    Human,
    /// One JSON object per line ([`render_json`]).
    Json,
}

/// Why `tail` or `show` failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Log(#[from] LogError),
    /// Writing the output failed; `ErrorKind::BrokenPipe` means the reader of the output went away
    /// (`waly log tail | head`), which a command should take as a normal end.
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
    #[error("no record at position {position}: {}", why_missing(*.position, *.end))]
    NoRecord { position: Position, end: Position },
}

fn why_missing(position: Position, end: Position) -> String {
    if position.0 == 0 {
        "positions start at 1".to_string()
    } else if end.0 == 0 {
        "the log is empty".to_string()
    } else {
        format!("the log ends at {end}")
    }
}

/// Renders one entry in `format`.
pub fn render(entry: &Entry, format: Format, out: &mut impl Write) -> io::Result<()> {
    match format {
        Format::Human => render_human(entry, out),
        Format::Json => render_json(entry, out),
    }
}

/// Prints entries of `log` to `out`:
///
/// - without `from`: the last `last_n` entries (default [`DEFAULT_TAIL`]);
/// - with `from`: the entries from that position on, at most `last_n` of them if given.
///
/// Without `follow` it stops at the end the log had when it started. With `follow` it then polls every
/// `poll` for new entries and prints them as they come, until the future is dropped (race it with
/// Ctrl-C), or, when `from` and `last_n` are both given, until it printed `last_n` entries (so
/// `--from 500 -n 1 -f` waits for position 500). `from` may lie beyond the end: it is waited for with
/// `follow`, and prints nothing without. Output is flushed after every batch of entries.
///
/// Entries up to the reader's [`end`](LogReader::end) are shown, which may run one group commit ahead
/// of what the writer acknowledged; should the writer cut such a batch off again, the positions are
/// printed again when they are filled.
///
/// With `database`, only transaction records of that database are shown (and counted), no outcome
/// records: the file log holds every database's records.
#[allow(clippy::too_many_arguments)]
pub async fn tail(
    log: &dyn LogReader,
    from: Option<Position>,
    last_n: Option<usize>,
    follow: bool,
    poll: Duration,
    out: &mut (impl Write + Send),
    format: Format,
    database: Option<&str>,
) -> Result<(), InspectError> {
    let end_at_start = log.end().await?.0;
    let keep = |entry: &Entry| match database {
        None => true,
        Some(db) => matches!(LogRecord::from_json(&entry.payload),
            Ok(LogRecord::Transaction(r)) if r.session.database == db),
    };
    let (mut next, mut remaining) = match from {
        Some(from) => (from.0.max(1), last_n),
        None => {
            let n = last_n.unwrap_or(DEFAULT_TAIL);
            match database {
                None => (end_at_start.saturating_sub(n as u64) + 1, None),
                Some(_) => (start_of_last(log, end_at_start, n, &keep).await?, None),
            }
        }
    };
    let stop_after = (!follow).then_some(end_at_start);
    let mut printed_any = false;
    let mut printed_up_to = 0;
    loop {
        if remaining == Some(0) || stop_after.is_some_and(|stop| next > stop) {
            return Ok(());
        }
        let mut want = remaining.unwrap_or(READ_BATCH).min(READ_BATCH);
        if let Some(stop) = stop_after {
            want = want.min(usize::try_from(stop + 1 - next).unwrap_or(usize::MAX));
        }
        let entries = log.read(Position(next), want).await?;
        let Some(last) = entries.last().map(|e| e.position.0) else {
            if !follow {
                return Ok(());
            }
            // The writer cut off a batch that was already printed: print its positions again once filled.
            let end = log.end().await?.0;
            if printed_up_to > end {
                next = end + 1;
                printed_up_to = end;
            }
            tokio::time::sleep(poll).await;
            continue;
        };
        let shown: Vec<&Entry> = entries.iter().filter(|e| keep(e)).collect();
        for entry in &shown {
            if printed_any && format == Format::Human {
                out.write_all(b"\n")?;
            }
            render(entry, format, out)?;
            printed_any = true;
            printed_up_to = entry.position.0;
        }
        out.flush()?;
        next = last + 1;
        if let Some(r) = remaining.as_mut() {
            *r -= shown.len().min(*r);
        }
    }
}

/// The position from which the last `n` entries that `keep` accepts (at or below `end`) begin: read
/// backwards from the end, a batch at a time. 1 when fewer than `n` are in the log.
async fn start_of_last(
    log: &dyn LogReader,
    end: u64,
    n: usize,
    keep: &impl Fn(&Entry) -> bool,
) -> Result<u64, InspectError> {
    let mut found = 0;
    let mut high = end;
    while high >= 1 && n > 0 {
        let low = high.saturating_sub(READ_BATCH as u64 - 1).max(1);
        let mut entries = Vec::new();
        let mut at = low;
        while at <= high {
            let read = log.read(Position(at), (high - at + 1) as usize).await?;
            let Some(last) = read.last().map(|e| e.position.0) else {
                break;
            };
            entries.extend(read);
            at = last + 1;
        }
        for entry in entries.iter().rev().filter(|e| e.position.0 <= high) {
            if keep(entry) {
                found += 1;
                if found == n {
                    return Ok(entry.position.0);
                }
            }
        }
        high = low - 1;
    }
    Ok(if n == 0 { end + 1 } else { 1 })
}

/// How a transaction record's commit ended, as far as the log tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Committed,
    /// A direct commit an outcome record lists as not committed.
    NotCommitted,
    /// A direct commit no record decides yet.
    Undecided,
}

impl Outcome {
    fn word(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::NotCommitted => "not committed",
            Outcome::Undecided => "undecided",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Outcome::Committed => "committed",
            Outcome::NotCommitted => {
                "NOT COMMITTED (an outcome record says so: consumers skip this record)"
            }
            Outcome::Undecided => {
                "undecided: no record says yet how its COMMIT ended (waly decides it within moments, or at its next start)"
            }
        }
    }
}

/// The outcome of the transaction record in `entry` (`None` for anything else), read from the entries
/// after it.
async fn outcome_of(log: &dyn LogReader, entry: &Entry) -> Result<Option<Outcome>, InspectError> {
    let Ok(record @ LogRecord::Transaction(_)) = LogRecord::from_json(&entry.payload) else {
        return Ok(None);
    };
    let mut settler = Settler::new();
    settler.push(entry.position.0, record);
    let mut next = entry.position.next();
    loop {
        match settler.next_settled() {
            Some(Settled::Committed(..)) => return Ok(Some(Outcome::Committed)),
            Some(Settled::Aborted(..)) => return Ok(Some(Outcome::NotCommitted)),
            None => {}
        }
        let entries = log.read(next, READ_BATCH).await?;
        let Some(last) = entries.last() else {
            return Ok(Some(Outcome::Undecided));
        };
        next = last.position.next();
        for e in entries {
            // Only what decides the record matters; anything unreadable decides nothing.
            if let Ok(r) = LogRecord::from_json(&e.payload) {
                settler.push(e.position.0, r);
            }
        }
    }
}

/// Prints the entry at `position`, or fails with [`InspectError::NoRecord`] saying where the log ends.
pub async fn show(
    log: &dyn LogReader,
    position: Position,
    out: &mut (impl Write + Send),
    format: Format,
) -> Result<(), InspectError> {
    if position.0 > 0
        && let Some(entry) = log.read(position, 1).await?.first()
        && entry.position == position
    {
        let outcome = outcome_of(log, entry).await?;
        match format {
            Format::Human => {
                render_human(entry, out)?;
                if let Some(outcome) = outcome {
                    writeln!(out, "  outcome: {}", outcome.describe())?;
                }
            }
            Format::Json => render_json_with(entry, outcome.map(Outcome::word), out)?,
        }
        out.flush()?;
        return Ok(());
    }
    Err(InspectError::NoRecord {
        position,
        end: log.end().await?,
    })
}
