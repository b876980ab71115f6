//! Cancel keys: the key waly gives each client, and where a CancelRequest carrying it must go.
//!
//! A client's `BackendKeyData` carries its backend's real process id (so it matches `pg_backend_pid()`
//! and `pg_stat_activity`) and a secret issued by waly; the backend's own secret never leaves waly.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

/// The backend a cancel must reach.
#[derive(Debug, Clone)]
pub struct CancelTarget {
    /// Postgres' host (or socket directory) and port.
    pub host: String,
    pub port: u16,
    pub backend_pid: i32,
    pub backend_secret: i32,
}

impl CancelTarget {
    /// Sends Postgres a CancelRequest for this backend, on a connection of its own.
    pub async fn cancel(&self) -> std::io::Result<()> {
        let mut stream = crate::wire::socket::PgStream::connect(&self.host, self.port).await?;
        let mut out = BytesMut::new();
        postgres_protocol::message::frontend::cancel_request(
            self.backend_pid,
            self.backend_secret,
            &mut out,
        );
        stream.write_all(&out).await?;
        stream.shutdown().await
    }
}

#[derive(Debug, Default)]
pub struct CancelRegistry {
    targets: Mutex<HashMap<(i32, i32), CancelTarget>>,
}

/// Removes its key from the registry when the session ends.
pub struct CancelKey {
    pub pid: i32,
    pub secret: i32,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry.lock().remove(&(self.pid, self.secret));
    }
}

impl CancelRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(i32, i32), CancelTarget>> {
        self.targets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Issues a key for `target`.
    pub fn register(self: &Arc<Self>, target: CancelTarget) -> CancelKey {
        let pid = target.backend_pid;
        let mut targets = self.lock();
        let secret = loop {
            let s: i32 = rand::random();
            if !targets.contains_key(&(pid, s)) {
                break s;
            }
        };
        targets.insert((pid, secret), target);
        CancelKey {
            pid,
            secret,
            registry: Arc::clone(self),
        }
    }

    /// The target for a CancelRequest's key, if it is one waly issued and its session is still open.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let secret = i32::from_be_bytes(secret.try_into().ok()?);
        self.lock().get(&(pid, secret)).cloned()
    }
}
