//! waly: a write-ahead log outside Postgres.
//!
//! waly speaks the Postgres wire protocol in front of an existing database. Reads pass straight through;
//! writes are recorded, durably and before they commit, in an external log. The crate is laid out by
//! concern:
//!
//! - [`config`]: `waly.yaml`, flags and environment variables.
//! - [`wire`]: framing and the few protocol messages waly decodes or raises.
//! - [`auth`]: client authentication at waly, and waly's login into Postgres.
//! - [`classify`]: read/write/DDL classification of statements with the real Postgres grammar.
//! - [`migrate`]: waly's own schema in the application's database: capture table, triggers, migrations.
//! - [`log`]: the write-ahead log trait and the embedded file log (segments, group commit, recovery).
//! - [`commit`]: the commit protocol (capture, PREPARE, durable append, COMMIT PREPARED) and recovery.
//! - [`record`]: the log record, one JSON envelope per committed write transaction.
//! - [`replay`]: exact replay of the log into a target Postgres (row images, DDL), batched and resumable.
//! - [`session`]: one client session, from handshake to relay.
//! - [`server`]: the listener, cancel routing, TLS and graceful shutdown.
//! - [`telemetry`]: structured logs.

pub mod auth;
pub mod classify;
pub mod commit;
pub mod config;
pub mod log;
pub mod migrate;
pub mod operations;
pub mod record;
pub mod replay;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod wire;
