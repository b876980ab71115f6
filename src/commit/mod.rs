//! The commit protocol: how a write transaction's record becomes durable before its commit becomes
//! visible (DESIGN.md, invariants 1 to 3).
//!
//! At the client's COMMIT (or at the end of an autocommit statement the session wrapped in a transaction),
//! the session hands its backend connection to [`commit`], which: makes deferred constraints fire, takes
//! this transaction's capture rows, builds the [`Record`](crate::record::Record), appends the record and
//! waits until the log says it is durable, then commits. By default the commit is a plain `COMMIT`
//! ([`direct`]; [`decisions`] keeps the log told how each one ended, [`direct_recovery`] decides what a
//! crash left undecided); with `commit_protocol: two-phase` the transaction is prepared before the
//! append and committed with `COMMIT PREPARED` after it ([`two_phase`]; [`recovery`] resolves what a
//! crash left prepared: committed when its record is in the log, rolled back otherwise). A failed
//! append rolls the transaction back.
//!
//! This module owns that sequence and its failure cases. It never reads or writes client messages and
//! never decides *when* a transaction ends: that is the session's job.

mod backend;
mod capture;
mod decided;
pub mod decisions;
mod direct;
pub mod direct_recovery;
mod in_flight;
mod leftovers;
mod protocol;
pub mod recovery;
mod two_phase;

pub use backend::{Backend, BackendLost, QueryResult, Reply, ServerError};
pub use decided::DecidedFile;
pub use decisions::{Decisions, LogDecisions, Ticket};
pub use in_flight::InFlight;
pub use leftovers::log_committed_leftovers;
pub use protocol::{Commit, Failure, Lost, Outcome, commit};
pub use recovery::{Resolver, recover_at_start};

/// The prefix of every global transaction identifier waly prepares; nothing else may use it.
pub const GID_PREFIX: &str = "waly_";

/// The gid of the `n`th transaction prepared by the process `owner` (see [`owner_token`]).
pub fn gid(owner: &str, n: &str) -> String {
    format!("{GID_PREFIX}{owner}_{n}")
}

/// A number no other transaction of this process is prepared under: the gid is chosen before the
/// transaction id is known (PREPARE goes in the same query that reads it).
pub fn next_gid_number() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .to_string()
}

/// The token that names who prepared a transaction: the log it is recorded in (`log_id`, fixed for a
/// data directory) and the process (`boot`, new at every start). Recovery resolves only gids of its own
/// log, and of its own process only those no session holds ([`in_flight`]), so it cannot touch the
/// in-flight commits of another waly (another log) or of its own sessions.
pub fn owner_token(log_id: &str, boot: &str) -> String {
    format!("{log_id}-{boot}")
}

/// The owner token of a gid made by [`gid`].
pub fn gid_owner(gid: &str) -> Option<&str> {
    gid.strip_prefix(GID_PREFIX)?
        .rsplit_once('_')
        .map(|(owner, _)| owner)
}

/// The log id of an owner token.
pub fn owner_log(owner: &str) -> &str {
    owner.split_once('-').map_or(owner, |(log, _)| log)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_carry_their_log_and_process() {
        let owner = owner_token("9f3c", "1a2b");
        let g = gid(&owner, "7781");
        assert_eq!(g, "waly_9f3c-1a2b_7781");
        assert_eq!(gid_owner(&g), Some("9f3c-1a2b"));
        assert_eq!(owner_log("9f3c-1a2b"), "9f3c");
        assert_eq!(gid_owner("other_1_2"), None);
    }
}
