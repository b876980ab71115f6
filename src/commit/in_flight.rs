//! The gids this process is still deciding: those of commits under way in a session, and those handed to
//! the [`super::Resolver`] after a session lost its backend.
//!
//! Recovery passes leave these alone and may decide any other gid of this process. That matters when a
//! session loses its connection while its first round trip waits on a lock: Postgres does not notice
//! the dead client mid-query, runs on to `PREPARE TRANSACTION` once the lock comes free, and leaves a
//! prepared transaction that nobody holds any more. The next pass finds it unclaimed and decides it by the
//! log like any other.
//!
//! This module owns only the registry. It never talks to Postgres or the log.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

static CLAIMED: LazyLock<Mutex<HashSet<String>>> = LazyLock::new(Default::default);

/// A claim on a gid: while any clone of it lives, recovery passes do not touch the gid.
#[derive(Clone, Debug)]
pub struct InFlight(Arc<Claim>);

#[derive(Debug)]
struct Claim(String);

impl InFlight {
    /// Claims `gid` (made by [`super::gid`], so no other claim holds it).
    pub fn claim(gid: String) -> InFlight {
        registry().insert(gid.clone());
        InFlight(Arc::new(Claim(gid)))
    }

    pub fn gid(&self) -> &str {
        &self.0.0
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        registry().remove(&self.0);
    }
}

/// True while a session or a resolver job holds `gid`.
pub fn is_claimed(gid: &str) -> bool {
    registry().contains(gid)
}

fn registry() -> std::sync::MutexGuard<'static, HashSet<String>> {
    // The set stays consistent even if a holder panicked: insert and remove are single calls.
    CLAIMED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gid_is_claimed_until_its_last_clone_is_dropped() {
        let gid = "waly_test-claim_1".to_owned();
        let claim = InFlight::claim(gid.clone());
        let handed_over = claim.clone();
        assert!(is_claimed(&gid));
        drop(claim);
        assert!(is_claimed(&gid), "the resolver's clone still holds it");
        assert_eq!(handed_over.gid(), gid);
        drop(handed_over);
        assert!(!is_claimed(&gid));
    }
}
