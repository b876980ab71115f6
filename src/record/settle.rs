//! Reading records as a consumer must act on them: in log order, final ones only, without the direct
//! commits that did not commit.
//!
//! [`Settler`] takes a log's entries in order, from any position on, and hands back each transaction
//! record once its outcome is known ([`outcome`](super::outcome)): records of prepared and
//! logged-after-commit transactions at once, direct commits once their writer's `decided_through`
//! reaches them or an outcome record aborts them. It holds back everything behind the first record
//! still waiting, so what it hands out keeps the log's order (invariant 3).
//!
//! This module owns that bookkeeping only. It never reads a log and never applies a record.

use std::collections::{HashMap, HashSet, VecDeque};

use super::Record;
use super::outcome::{CommitKind, LogRecord};

/// A transaction record whose outcome is known.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Committed(u64, Box<Record>),
    /// A direct commit that did not commit: consumers skip it.
    Aborted(u64, Box<Record>),
}

/// Transaction records in log order, released once final.
#[derive(Debug, Default)]
pub struct Settler {
    held: VecDeque<(u64, Box<Record>)>,
    /// Per writer: every direct commit of it at or below this position is decided.
    decided_through: HashMap<String, u64>,
    /// Positions of direct commits outcome records aborted, not yet released.
    aborted: HashSet<u64>,
}

impl Settler {
    pub fn new() -> Settler {
        Settler::default()
    }

    /// Takes the entry at `position`, the next in log order.
    pub fn push(&mut self, position: u64, record: LogRecord) {
        match record {
            LogRecord::Transaction(record) => {
                if let Some(through) = record.decided_through {
                    self.decide_through(&record.writer, through);
                }
                self.held.push_back((position, record));
            }
            LogRecord::Outcome(outcome) => {
                self.aborted
                    .extend(outcome.aborted.iter().map(|a| a.position));
                self.decide_through(&outcome.writer, outcome.decided_through);
            }
        }
    }

    fn decide_through(&mut self, writer: &str, through: u64) {
        let known = self.decided_through.entry(writer.to_owned()).or_default();
        *known = (*known).max(through);
    }

    /// The next record whose outcome is known, in log order; `None` while the next one still waits
    /// (or none is held).
    pub fn next_settled(&mut self) -> Option<Settled> {
        let (position, record) = self.held.front()?;
        let position = *position;
        let settled = match record.commit {
            CommitKind::Prepared | CommitKind::After => true,
            CommitKind::Direct => {
                self.aborted.contains(&position)
                    || self
                        .decided_through
                        .get(&record.writer)
                        .is_some_and(|&through| through >= position)
            }
        };
        if !settled {
            return None;
        }
        let (position, record) = self.held.pop_front().expect("a front");
        Some(if self.aborted.remove(&position) {
            Settled::Aborted(position, record)
        } else {
            Settled::Committed(position, record)
        })
    }

    /// The first record still waiting for its outcome, if any.
    pub fn waiting(&self) -> Option<(u64, &Record)> {
        self.held.front().map(|(p, r)| (*p, r.as_ref()))
    }

    /// How many records are held back.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::outcome::{Aborted, OutcomeRecord};
    use crate::record::{FORMAT_VERSION, SessionInfo};

    fn record(commit: CommitKind, writer: &str, decided_through: Option<u64>) -> LogRecord {
        LogRecord::Transaction(Box::new(Record {
            format: FORMAT_VERSION,
            txid: "1".into(),
            gid: String::new(),
            commit,
            writer: writer.into(),
            decided_through,
            committed_at: String::new(),
            session: SessionInfo {
                role: None,
                database_oid: None,
                user: "u".into(),
                database: "d".into(),
                application_name: None,
                client_addr: "a".into(),
            },
            statements: Vec::new(),
            operations: Vec::new(),
            changes: Vec::new(),
        }))
    }

    fn drain(s: &mut Settler) -> Vec<String> {
        std::iter::from_fn(|| s.next_settled())
            .map(|x| match x {
                Settled::Committed(p, _) => format!("+{p}"),
                Settled::Aborted(p, _) => format!("-{p}"),
            })
            .collect()
    }

    #[test]
    fn prepared_records_are_final_at_once() {
        let mut s = Settler::new();
        s.push(1, record(CommitKind::Prepared, "", None));
        s.push(2, record(CommitKind::After, "", None));
        assert_eq!(drain(&mut s), ["+1", "+2"]);
        assert!(s.waiting().is_none());
    }

    #[test]
    fn a_direct_commit_waits_for_its_writer_and_holds_back_what_follows() {
        let mut s = Settler::new();
        s.push(1, record(CommitKind::Direct, "a", Some(0)));
        s.push(2, record(CommitKind::Prepared, "b", None));
        // Another writer's decisions do not decide it.
        s.push(3, record(CommitKind::After, "b", Some(2)));
        assert_eq!(drain(&mut s), Vec::<String>::new());
        assert_eq!(s.waiting().map(|(p, _)| p), Some(1));
        s.push(4, record(CommitKind::Direct, "a", Some(1)));
        assert_eq!(drain(&mut s), ["+1", "+2", "+3"]);
        assert_eq!(s.waiting().map(|(p, _)| p), Some(4));
        s.push(
            5,
            LogRecord::Outcome(OutcomeRecord::new("a", Vec::new(), 4)),
        );
        assert_eq!(drain(&mut s), ["+4"]);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn aborted_direct_commits_are_released_as_aborted() {
        let mut s = Settler::new();
        s.push(1, record(CommitKind::Direct, "a", None));
        s.push(2, record(CommitKind::Direct, "a", None));
        s.push(
            3,
            LogRecord::Outcome(OutcomeRecord::new(
                "a",
                vec![Aborted {
                    position: 1,
                    txid: "1".into(),
                }],
                0,
            )),
        );
        assert_eq!(drain(&mut s), ["-1"]);
        s.push(4, record(CommitKind::Direct, "a", Some(2)));
        assert_eq!(drain(&mut s), ["+2"]);
    }
}
