//! Reloading the operations catalog on SIGHUP and when its file changes (checked every second by its
//! modification time, size and content hash). A valid file replaces the catalog at once; an invalid one
//! is refused with its `file:line` errors and the catalog in use stays.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::operations::Operations;

/// How often the file is looked at.
const POLL: Duration = Duration::from_secs(1);
/// A changed file is read only once it has stayed the same this long: an editor or `>` may be halfway
/// through writing it.
const SETTLE: Duration = Duration::from_millis(300);

/// What identifies one version of the file.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    crc: u32,
}

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let bytes = std::fs::read(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        crc: crc32c::crc32c(&bytes),
    })
}

/// True when the file still has `seen` after [`SETTLE`].
async fn settled(path: &std::path::Path, seen: Option<Stamp>) -> bool {
    tokio::time::sleep(SETTLE).await;
    stamp(path) == seen
}

/// Watches until `stop` is cancelled.
pub async fn watch(operations: Arc<Operations>, stop: CancellationToken) {
    let Some(path) = operations.path().map(ToOwned::to_owned) else {
        return;
    };
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the operations file is still watched");
            None
        }
    };
    let mut last = stamp(&path);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let hangup = async {
            match hangups.as_mut() {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            }
        };
        let why = tokio::select! {
            () = stop.cancelled() => return,
            _ = hangup => "SIGHUP",
            _ = tick.tick() => {
                let now = stamp(&path);
                if now == last || now.is_none() || !settled(&path, now).await {
                    continue;
                }
                "file changed"
            }
        };
        last = stamp(&path);
        match operations.reload() {
            Ok(catalog) => tracing::info!(
                trigger = why,
                file = %path.display(),
                operations = catalog.operations.len(),
                "operations catalog reloaded"
            ),
            Err(errors) => {
                for e in &errors.0 {
                    tracing::error!(trigger = why, "{e}");
                }
                tracing::error!(
                    trigger = why,
                    file = %path.display(),
                    errors = errors.0.len(),
                    "operations file refused; the catalog in use stays"
                );
            }
        }
    }
}
