//! A writer's bookkeeping of its direct commits: which are appended but not decided yet, how far
//! everything is decided (the `decided_through` its records carry), and the outcome records that say so
//! in the log (`src/record/outcome.rs`).
//!
//! A direct commit takes a [`Ticket`] before its append and gives it back once Postgres answered its
//! COMMIT: [`Ticket::committed`], or [`Ticket::aborted`], which first appends an outcome record listing
//! the commit as aborted. The watermark, [`Decisions::through`], never passes an open ticket, so a reader
//! never takes an undecided record for a committed one. When the log falls quiet with decisions that no
//! record carries yet, a short outcome record carries them, so readers need not wait for the next write.
//!
//! A ticket dropped undecided (a session ended mid-commit) goes to the [`super::Resolver`], which asks
//! Postgres how the transaction ended. This module never talks to Postgres itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;

use super::Resolver;
use super::decided::DecidedFile;
use crate::log::{Log, LogRouter, Position};
use crate::record::{Aborted, LogRecord, OutcomeRecord};

/// How long the log must be quiet before an outcome record carries decisions no record carried.
const QUIET: Duration = Duration::from_millis(20);

/// One log's direct commits by this process.
pub struct Decisions {
    log: Arc<dyn Log>,
    /// This process's writer name (its owner token: log id and start).
    writer: String,
    state: Mutex<State>,
    /// Woken at each decision, for the quiet-time outcome record.
    decided: Notify,
    resolver: Resolver,
}

#[derive(Default)]
struct State {
    /// Open tickets by their key: the log end + 1 when taken, then the record's position once known.
    open: BTreeMap<u64, usize>,
    /// The highest `decided_through` an appended record carries.
    carried: u64,
    /// The position of this writer's last direct commit in the log.
    last_direct: u64,
    last_append: Option<Instant>,
}

impl State {
    fn insert(&mut self, key: u64) {
        *self.open.entry(key).or_default() += 1;
    }

    fn remove(&mut self, key: u64) {
        if let Some(n) = self.open.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&key);
            }
        }
    }
}

impl Decisions {
    /// The bookkeeping of `writer`'s direct commits in `log`; starts the task that appends quiet-time
    /// outcome records on the current runtime.
    pub fn start(log: Arc<dyn Log>, writer: &str, resolver: Resolver) -> Arc<Decisions> {
        let decisions = Arc::new(Decisions {
            log,
            writer: writer.to_owned(),
            state: Mutex::default(),
            decided: Notify::new(),
            resolver,
        });
        tokio::spawn(Arc::clone(&decisions).carry_when_quiet());
        decisions
    }

    pub fn writer(&self) -> &str {
        &self.writer
    }

    pub fn log(&self) -> &Arc<dyn Log> {
        &self.log
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every direct commit of this writer at or below this position is decided. Read under the same
    /// lock tickets are taken under, so a commit whose ticket is taken later appends after it.
    pub fn through(&self) -> u64 {
        let state = self.state();
        match state.open.first_key_value() {
            Some((first, _)) => first - 1,
            None => self.log.end().0,
        }
    }

    /// A ticket for a direct commit of transaction `txid` in `database`, taken before its append.
    pub fn open(self: &Arc<Self>, database: &str, txid: &str) -> Ticket {
        let key = {
            let mut state = self.state();
            let key = self.log.end().0 + 1;
            state.insert(key);
            key
        };
        Ticket {
            decisions: Some(Arc::clone(self)),
            key,
            position: None,
            in_doubt: None,
            database: database.to_owned(),
            txid: txid.to_owned(),
        }
    }

    /// A record that carries `decided_through` was appended.
    pub fn carried(&self, decided_through: u64) {
        let mut state = self.state();
        state.carried = state.carried.max(decided_through);
        state.last_append = Some(Instant::now());
    }

    /// Appends an outcome record now if decisions wait for a carrier; true when none waits any more.
    async fn carry_now(&self) -> bool {
        let through = self.through();
        let (carried, last_direct) = {
            let state = self.state();
            (state.carried, state.last_direct)
        };
        // Decided direct commits no record carries yet (a larger watermark says no more).
        if through.min(last_direct) <= carried {
            return true;
        }
        let outcome = OutcomeRecord::new(&self.writer, Vec::new(), through);
        match self.log.append(Bytes::from(outcome.to_json())).await {
            Ok(_) => {
                self.carried(through);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot append an outcome record yet; retrying");
                false
            }
        }
    }

    /// Appends outcome records whenever decisions wait for a carrier and the log has been quiet for
    /// [`QUIET`].
    async fn carry_when_quiet(self: Arc<Self>) {
        loop {
            self.decided.notified().await;
            loop {
                tokio::time::sleep(QUIET).await;
                let quiet = self
                    .state()
                    .last_append
                    .is_none_or(|t| t.elapsed() >= QUIET);
                if !quiet {
                    continue;
                }
                if self.carry_now().await {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    fn close(&self, key: u64) {
        self.state().remove(key);
        self.decided.notify_one();
    }

    fn moved(&self, from: u64, to: u64) {
        let mut state = self.state();
        state.remove(from);
        state.insert(to);
        state.last_direct = state.last_direct.max(to);
    }
}

/// An appended (or appending) direct commit whose outcome is not decided yet.
#[must_use = "a ticket must be decided: committed(), aborted(), or handed to the resolver"]
pub struct Ticket {
    /// `None` once decided.
    decisions: Option<Arc<Decisions>>,
    key: u64,
    position: Option<Position>,
    /// The append is in doubt: the record, if the log took it, is after this position, and reading the
    /// log tells after this long.
    in_doubt: Option<(Position, Duration)>,
    database: String,
    txid: String,
}

impl Ticket {
    /// The record is in the log at `position`.
    pub fn appended(&mut self, position: Position) {
        if let Some(d) = &self.decisions {
            d.moved(self.key, position.0);
            self.key = position.0;
        }
        self.position = Some(position);
    }

    /// The append failed in doubt: the record may yet appear after `after`, within `settles_after`.
    pub fn in_doubt(&mut self, after: Position, settles_after: Duration) {
        self.in_doubt = Some((after, settles_after));
    }

    pub fn position(&self) -> Option<Position> {
        self.position
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    pub fn txid(&self) -> &str {
        &self.txid
    }

    /// Postgres committed the transaction.
    pub fn committed(mut self) {
        if let Some(d) = self.decisions.take() {
            d.close(self.key);
        }
    }

    /// The transaction did not commit: if its record is in the log, an outcome record saying so is
    /// appended first (retried in the background until the log takes it).
    pub async fn aborted(mut self) {
        let Some(d) = self.decisions.take() else {
            return;
        };
        let (key, txid) = (self.key, std::mem::take(&mut self.txid));
        let position = match (self.position, self.in_doubt) {
            (Some(position), _) => position,
            (None, None) => return d.close(key),
            (None, Some((after, settles_after))) => {
                // The record may still land: look for it once the log has settled.
                tokio::spawn(async move {
                    tokio::time::sleep(settles_after).await;
                    if let Some(position) = find_late_record(&d, after, &txid).await {
                        abort_until_logged(&d, position, &txid).await;
                    }
                    d.close(key);
                });
                return;
            }
        };
        if append_abort(&d, position, &txid).await {
            return d.close(key);
        }
        tokio::spawn(async move {
            abort_until_logged(&d, position, &txid).await;
            d.close(key);
        });
    }

    /// Gives up deciding: the ticket stays open for as long as this process runs, holding the writer's
    /// watermark back, and the next start decides the commit from the log and Postgres.
    pub fn leave_open(mut self) {
        self.decisions = None;
    }

    /// The ticket's fields for a resolver job, leaving it decided (the job decides it).
    fn hand_over(&mut self) -> Option<Ticket> {
        let decisions = self.decisions.take()?;
        Some(Ticket {
            decisions: Some(decisions),
            key: self.key,
            position: self.position,
            in_doubt: self.in_doubt,
            database: std::mem::take(&mut self.database),
            txid: std::mem::take(&mut self.txid),
        })
    }
}

async fn abort_until_logged(d: &Decisions, position: Position, txid: &str) {
    while !append_abort(d, position, txid).await {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The position of this writer's record of `txid` after `after`, reading the log to its end (retried
/// until the log answers).
async fn find_late_record(d: &Decisions, after: Position, txid: &str) -> Option<Position> {
    let mut from = after.next();
    loop {
        let entries = match d.log.read(from, 1024).await {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the log for an in-doubt append yet; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
        };
        let last = entries.last()?.position;
        for entry in &entries {
            if let Ok(LogRecord::Transaction(r)) = LogRecord::from_json(&entry.payload)
                && r.writer == d.writer
                && r.txid == txid
            {
                tracing::warn!(position = %entry.position, txid, "an in-doubt append reached the log after its transaction was rolled back");
                return Some(entry.position);
            }
        }
        from = last.next();
    }
}

async fn append_abort(d: &Decisions, position: Position, txid: &str) -> bool {
    let outcome = OutcomeRecord::new(
        &d.writer,
        vec![Aborted {
            position: position.0,
            txid: txid.to_owned(),
        }],
        d.through(),
    );
    match d.log.append(Bytes::from(outcome.to_json())).await {
        Ok(entry) => {
            tracing::info!(%position, txid, outcome = %entry.position, "logged that a direct commit did not commit");
            true
        }
        Err(e) => {
            tracing::warn!(%position, txid, error = %e, "cannot log yet that a direct commit did not commit; retrying");
            false
        }
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("txid", &self.txid)
            .field("position", &self.position)
            .finish()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // Undecided: only Postgres can tell how the transaction ended.
        if let Some(ticket) = self.hand_over() {
            let resolver = ticket
                .decisions
                .as_ref()
                .map(|d| d.resolver.clone())
                .expect("an undecided ticket has its decisions");
            resolver.decide_direct(ticket);
        }
    }
}

/// Every log's [`Decisions`] in this process, created at a log's first direct commit.
pub struct LogDecisions {
    logs: Arc<dyn LogRouter>,
    writer: String,
    resolver: Resolver,
    decided: Arc<DecidedFile>,
    by_key: Mutex<HashMap<String, Arc<Decisions>>>,
}

impl LogDecisions {
    pub fn new(
        logs: Arc<dyn LogRouter>,
        writer: &str,
        resolver: Resolver,
        decided: Arc<DecidedFile>,
    ) -> LogDecisions {
        LogDecisions {
            logs,
            writer: writer.to_owned(),
            resolver,
            decided,
            by_key: Mutex::default(),
        }
    }

    /// The decisions of the log `database`'s records go to. Before a log's first use, its entry in
    /// `decided.json` is made durable, so that recovery after a crash knows to read it; if that write
    /// fails, it is retried at the next call (until then, a crash leaves that log's undecided records
    /// for the next start that knows of it).
    pub fn for_database(&self, database: &str) -> Arc<Decisions> {
        let key = self.logs.log_key(database);
        let mut by_key = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        let d = match by_key.get(&key) {
            Some(d) => Arc::clone(d),
            None => {
                let d = Decisions::start(
                    self.logs.log_for(database),
                    &self.writer,
                    self.resolver.clone(),
                );
                by_key.insert(key.clone(), Arc::clone(&d));
                d
            }
        };
        if self.decided.get(&key).is_none()
            && let Err(e) = self.decided.ensure(&key, d.log.end().0)
        {
            tracing::error!(log = %key, error = %e, "cannot record in decided.json that this log is used");
        }
        d
    }

    /// At shutdown: makes the log carry every decision taken, so a reader of the stopped log needs no
    /// recovery for the commits that ended.
    pub async fn flush(&self) {
        let all: Vec<Arc<Decisions>> = {
            let by_key = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
            by_key.values().cloned().collect()
        };
        for d in all {
            if !d.carry_now().await {
                tracing::warn!(writer = %d.writer, "the last decisions could not be logged at shutdown; the next start decides them");
            }
        }
    }

    /// The decisions of the log `key`, if this process used it.
    pub fn get(&self, key: &str) -> Option<Arc<Decisions>> {
        let by_key = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        by_key.get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{FileLog, FileLogConfig};

    #[tokio::test]
    async fn the_watermark_never_passes_an_open_ticket() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> =
            Arc::new(FileLog::open(FileLog::dir_in(dir.path()), FileLogConfig::default()).unwrap());
        let d = Decisions::start(Arc::clone(&log), "w", Resolver::detached());
        assert_eq!(d.through(), 0);
        let mut a = d.open("db", "10");
        let entry = log.append(Bytes::from_static(b"{}")).await.unwrap();
        a.appended(entry.position);
        let mut b = d.open("db", "11");
        let entry = log.append(Bytes::from_static(b"{}")).await.unwrap();
        b.appended(entry.position);
        assert_eq!(d.through(), 0, "the first open ticket holds it back");
        b.committed();
        assert_eq!(d.through(), 0);
        a.aborted().await;
        // The outcome record naming position 1 is at 3, and everything is decided.
        assert_eq!(d.through(), 3);
        let entries = log.read(Position(3), 1).await.unwrap();
        let outcome: serde_json::Value = serde_json::from_slice(&entries[0].payload).unwrap();
        assert_eq!(outcome["aborted"][0]["position"], 1);
        assert_eq!(outcome["aborted"][0]["txid"], "10");
    }

    #[tokio::test]
    async fn a_quiet_log_gets_an_outcome_record_carrying_the_last_decisions() {
        let dir = tempfile::tempdir().unwrap();
        let log: Arc<dyn Log> =
            Arc::new(FileLog::open(FileLog::dir_in(dir.path()), FileLogConfig::default()).unwrap());
        let d = Decisions::start(Arc::clone(&log), "w", Resolver::detached());
        let mut t = d.open("db", "10");
        let entry = log.append(Bytes::from_static(b"{}")).await.unwrap();
        d.carried(0);
        t.appended(entry.position);
        t.committed();
        for _ in 0..200 {
            if log.end() == Position(2) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let entries = log.read(Position(2), 1).await.unwrap();
        let outcome: serde_json::Value = serde_json::from_slice(&entries[0].payload).unwrap();
        assert_eq!(outcome["kind"], "outcome");
        assert_eq!(outcome["decided_through"], 1);
        tokio::time::sleep(QUIET * 3).await;
        assert_eq!(
            log.end(),
            Position(2),
            "one outcome record, not one per quiet period"
        );
    }
}
