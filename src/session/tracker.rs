//! What the session knows about the protocol conversation: prepared statements and portals with their
//! classifications, requests awaiting `ReadyForQuery`, and the transaction status.
//!
//! It observes messages; it never changes or withholds them. It sees the conversation as the client sees
//! it: every client message, and the backend messages the client receives (waly's own exchanges with the
//! backend are not shown to it). The write path ([`super::flow`]) asks it what each request is.

use std::collections::HashMap;
use std::sync::Arc;

use crate::classify::{Classification, StatementCache};
use crate::record::Statement;
use crate::wire::messages;

/// Frontend message types the tracker must see whole.
pub fn inspect_frontend(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P' | b'B' | b'E' | b'C' | b'S' | b'H' | b'D' | b'F' | b'X'
    )
}

/// A prepared statement or portal: its classification, and for statements that may write, its text (and a
/// portal's bind parameters) for the record.
#[derive(Clone)]
struct Known {
    class: Arc<Classification>,
    sql: Option<Arc<str>>,
    params: Vec<Option<String>>,
    /// Parameter type OIDs: declared in Parse, completed by Postgres' ParameterDescription. They let
    /// binary bind parameters be recorded in text form.
    types: Arc<[u32]>,
    /// A portal that ran already: a further Execute resumes it (a cursor read in pieces, Execute with a
    /// row limit), it does not run its statement again.
    executed: bool,
}

/// What a Query or an Execute runs.
pub struct Seen {
    pub class: Arc<Classification>,
    /// The statement as it goes into the record, when it may write.
    pub statement: Option<Statement>,
}

pub struct ProtocolTracker {
    cache: StatementCache,
    prepared: HashMap<String, Known>,
    portals: HashMap<String, Known>,
    /// Query, FunctionCall and Sync messages sent whose `ReadyForQuery` has not come back.
    awaiting_ready: usize,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// Statements described (Describe 'S') whose ParameterDescription has not come back, in order, each
    /// with the number of the request (Query, FunctionCall or Sync) whose ReadyForQuery ends it.
    describing: std::collections::VecDeque<(u64, String)>,
    /// Requests sent and answered (ReadyForQuery), counted alike, to drop descriptions that an error
    /// skipped.
    requests_sent: u64,
    requests_answered: u64,
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
            describing: std::collections::VecDeque::new(),
            requests_sent: 0,
            requests_answered: 0,
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

    /// The classification of the prepared statement `name`, as its Parse was seen.
    pub fn prepared(&self, name: &str) -> Option<&Arc<Classification>> {
        self.prepared.get(name).map(|k| &k.class)
    }

    /// The classification of a statement text (cached).
    pub fn classify(&mut self, sql: &str) -> Arc<Classification> {
        self.cache.classify(sql)
    }

    /// Takes note of one client message. For a Query or an Execute, says what it runs.
    pub fn on_frontend(&mut self, tag: u8, body: &[u8]) -> Option<Seen> {
        match tag {
            b'Q' => {
                self.awaiting_ready += 1;
                self.requests_sent += 1;
                if let Some(sql) = messages::query_text(body) {
                    let class = self.cache.classify(sql);
                    self.executed(&class);
                    let statement = class.may_write().then(|| Statement {
                        sql: sql.to_owned(),
                        params: Vec::new(),
                    });
                    return Some(Seen { class, statement });
                }
            }
            b'F' => {
                self.awaiting_ready += 1;
                self.requests_sent += 1;
            }
            b'S' => {
                self.awaiting_ready += 1;
                self.requests_sent += 1;
                self.unsynced = false;
            }
            b'P' => {
                self.unsynced = true;
                if let Some((name, sql)) = messages::parse_message(body) {
                    let class = self.cache.classify(sql);
                    let sql = class.may_write().then(|| Arc::from(sql));
                    let types = if sql.is_some() {
                        messages::parse_param_types(body).into()
                    } else {
                        Arc::from([])
                    };
                    self.prepared.insert(
                        name.to_owned(),
                        Known {
                            class,
                            sql,
                            params: Vec::new(),
                            types,
                            executed: false,
                        },
                    );
                }
            }
            b'B' => {
                self.unsynced = true;
                if let Some((portal, statement)) = messages::bind_message(body) {
                    match self.prepared.get(statement) {
                        Some(known) => {
                            let mut known = known.clone();
                            if known.sql.is_some() {
                                known.params =
                                    messages::bind_params(body, &known.types).unwrap_or_default();
                            }
                            self.portals.insert(portal.to_owned(), known);
                        }
                        None => {
                            self.portals.remove(portal);
                        }
                    }
                }
            }
            b'E' => {
                self.unsynced = true;
                if let Some(known) =
                    messages::execute_portal(body).and_then(|p| self.portals.get_mut(p))
                {
                    let resumed = std::mem::replace(&mut known.executed, true);
                    let class = Arc::clone(&known.class);
                    let statement = match (&known.sql, resumed) {
                        (Some(sql), false) => Some(Statement {
                            sql: sql.to_string(),
                            params: known.params.clone(),
                        }),
                        _ => None,
                    };
                    if !resumed {
                        self.executed(&class);
                    }
                    return Some(Seen { class, statement });
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
            b'D' => {
                self.unsynced = true;
                if let Some((b'S', name)) = messages::describe_message(body) {
                    self.describing
                        .push_back((self.requests_sent, name.to_owned()));
                }
            }
            b'H' => self.unsynced = true,
            _ => {}
        }
        None
    }

    pub fn on_backend(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b't' => {
                if let Some((_, name)) = self.describing.pop_front()
                    && let Some(known) = self.prepared.get_mut(&name)
                    && known.sql.is_some()
                {
                    let described = messages::parameter_description(body);
                    let mut types = described;
                    for (t, declared) in types.iter_mut().zip(known.types.iter()) {
                        if *declared != 0 {
                            *t = *declared;
                        }
                    }
                    known.types = types.into();
                }
            }
            b'Z' => {
                self.requests_answered += 1;
                let answered = self.requests_answered;
                self.describing.retain(|(request, _)| *request >= answered);
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
