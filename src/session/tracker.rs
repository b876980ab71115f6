//! What the session knows about the protocol conversation: prepared statements and portals with their
//! classifications, requests awaiting `ReadyForQuery`, and the transaction status.
//!
//! It observes messages; it never changes or withholds them. The write path hooks in here.

use std::collections::HashMap;
use std::sync::Arc;

use crate::classify::{Classification, StatementCache};
use crate::wire::messages;

/// Frontend message types the tracker must see whole.
pub fn inspect_frontend(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P' | b'B' | b'E' | b'C' | b'S' | b'H' | b'D' | b'F' | b'X'
    )
}

/// Backend message types the tracker must see whole.
pub fn inspect_backend(tag: u8) -> bool {
    matches!(tag, b'Z' | b'E')
}

pub struct ProtocolTracker {
    cache: StatementCache,
    prepared: HashMap<String, Arc<Classification>>,
    portals: HashMap<String, Arc<Classification>>,
    /// Query, FunctionCall and Sync messages sent whose `ReadyForQuery` has not come back.
    awaiting_ready: usize,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// The last `ReadyForQuery` status: `I` idle, `T` in a transaction, `E` in a failed transaction.
    pub tx_status: u8,
    /// Postgres sent a FATAL error: it explained itself before closing.
    pub backend_fatal: bool,
    /// Statements this session executed that may write, for its closing log line.
    pub writes: u64,
    pub reads: u64,
}

impl ProtocolTracker {
    pub fn new(cache: StatementCache) -> Self {
        Self {
            cache,
            prepared: HashMap::new(),
            portals: HashMap::new(),
            awaiting_ready: 0,
            unsynced: false,
            tx_status: b'I',
            backend_fatal: false,
            writes: 0,
            reads: 0,
        }
    }

    /// True when nothing is in flight and no transaction is open: the session may be closed without
    /// losing anything.
    pub fn idle(&self) -> bool {
        self.awaiting_ready == 0 && !self.unsynced && self.tx_status == b'I'
    }

    /// True while Postgres is working on something the client sent.
    pub fn busy(&self) -> bool {
        self.awaiting_ready > 0 || self.unsynced
    }

    fn executed(&mut self, class: &Classification) {
        self.cache.stats().record_execution(class);
        if class.may_write() {
            self.writes += 1;
        } else {
            self.reads += 1;
        }
    }

    pub fn on_frontend(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Q' => {
                self.awaiting_ready += 1;
                if let Some(sql) = messages::query_text(body) {
                    let class = self.cache.classify(sql);
                    self.executed(&class);
                }
            }
            b'F' => self.awaiting_ready += 1,
            b'S' => {
                self.awaiting_ready += 1;
                self.unsynced = false;
            }
            b'P' => {
                self.unsynced = true;
                if let Some((name, sql)) = messages::parse_message(body) {
                    let class = self.cache.classify(sql);
                    self.prepared.insert(name.to_owned(), class);
                }
            }
            b'B' => {
                self.unsynced = true;
                if let Some((portal, statement)) = messages::bind_message(body) {
                    match (self.prepared.get(statement), self.portals.get_mut(portal)) {
                        (Some(class), Some(slot)) => *slot = Arc::clone(class),
                        (Some(class), None) => {
                            self.portals.insert(portal.to_owned(), Arc::clone(class));
                        }
                        (None, _) => {
                            self.portals.remove(portal);
                        }
                    }
                }
            }
            b'E' => {
                self.unsynced = true;
                if let Some(class) = messages::execute_portal(body)
                    .and_then(|p| self.portals.get(p))
                    .cloned()
                {
                    self.executed(&class);
                }
            }
            b'C' => {
                self.unsynced = true;
                if let Some((kind, name)) = messages::close_message(body) {
                    match kind {
                        b'S' => self.prepared.remove(name),
                        _ => self.portals.remove(name),
                    };
                }
            }
            b'D' | b'H' => self.unsynced = true,
            _ => {}
        }
    }

    pub fn on_backend(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => {
                self.awaiting_ready = self.awaiting_ready.saturating_sub(1);
                if let Some(status) = messages::ready_status(body) {
                    self.tx_status = status;
                }
                if self.tx_status == b'I' && !self.portals.is_empty() {
                    // Portals end with their transaction; keep the unnamed one's slot to avoid reallocating.
                    self.portals.retain(|name, _| name.is_empty());
                }
            }
            b'E' => {
                let severity =
                    messages::error_field(body, b'V').or_else(|| messages::error_field(body, b'S'));
                if matches!(severity, Some("FATAL" | "PANIC")) {
                    self.backend_fatal = true;
                }
            }
            _ => {}
        }
    }
}
