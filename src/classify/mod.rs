//! Statement classification: read, write, DDL, transaction control, session utility, or unknown.
//!
//! Uses pg_query, the real Postgres grammar, and caches results per session by statement text, so a
//! statement (or a prepared statement) is parsed once. Classification is advisory: the write path must
//! never rely on it to *miss* a write, because waly's capture triggers see every row change regardless.
//! This module must never touch the network or the log.

mod cache;
mod functions;
pub use functions::{calls_setval, is_large_object_writer_oid, named_sequences};
mod normalize;
mod stats;

pub use cache::StatementCache;
pub use normalize::{Constant, ConstantKind, constants};
pub use stats::{ClassStats, ClassStatsSnapshot};

use pg_query::NodeEnum;
use pg_query::protobuf::TransactionStmtKind;

/// What one SQL statement does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatementKind {
    /// Reads data only: SELECT, VALUES, TABLE, SHOW, COPY ... TO, EXPLAIN without ANALYZE.
    Read,
    /// Changes rows: INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY ... FROM, data-modifying WITH.
    Write,
    /// Changes the schema: CREATE, ALTER, DROP, GRANT, COMMENT, SELECT INTO, ...
    Ddl,
    /// Transaction control: BEGIN, COMMIT, ROLLBACK, SAVEPOINT, PREPARE TRANSACTION, ...
    Transaction(TransactionControl),
    /// Session state or maintenance without data changes: SET, RESET, LISTEN, NOTIFY, PREPARE, VACUUM, ...
    Session,
    /// May or may not write and cannot be known from the text: DO, CALL, EXECUTE, unparsable text.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionControl {
    Begin,
    Commit,
    Rollback,
    Savepoint,
    Release,
    RollbackTo,
    PrepareTransaction,
    CommitPrepared,
    RollbackPrepared,
}

impl StatementKind {
    /// A short, stable label for logs and counters.
    pub fn label(self) -> &'static str {
        match self {
            StatementKind::Read => "read",
            StatementKind::Write => "write",
            StatementKind::Ddl => "ddl",
            StatementKind::Transaction(_) => "transaction",
            StatementKind::Session => "session",
            StatementKind::Unknown => "unknown",
        }
    }

    /// True when the statement changes (or may change) data or schema.
    pub fn may_write(self) -> bool {
        matches!(
            self,
            StatementKind::Write | StatementKind::Ddl | StatementKind::Unknown
        )
    }
}

/// The kinds of the statements in one query string, in order, and what the write path must know about
/// them beyond their kinds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classification {
    pub statements: Vec<StatementKind>,
    /// A statement waly refuses to relay, and why (it would bypass or break the write-ahead path).
    pub refusal: Option<Refusal>,
    /// A statement that Postgres runs only outside a transaction block (CREATE DATABASE, VACUUM,
    /// CREATE INDEX CONCURRENTLY, ...): waly must not wrap it in one.
    pub autocommit_only: bool,
    /// RESET ALL: it would also discard waly's capture buffer (transaction-local settings), so waly lets
    /// it through only where no transaction is under way (see `session::flow`).
    pub resets_all: bool,
    /// Databases the statements drop or rename (both names): waly checks its schema in them again at
    /// their next session, as a database created anew under the name does not have it.
    pub databases_replaced: Vec<String>,
}

/// Why waly refuses a statement; rendered as an error in Postgres' form by the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// PREPARE TRANSACTION, COMMIT PREPARED, ROLLBACK PREPARED: waly is the transaction coordinator.
    TwoPhaseCommit,
    /// COMMIT AND CHAIN / ROLLBACK AND CHAIN.
    Chain,
    /// SET session_replication_role: would silence the capture triggers.
    ReplicationRole,
    /// SET or RESET of a `waly.*` setting: the capture buffer lives there.
    WalySetting,
    /// RESET ALL inside a transaction, or with writes in the same query string.
    ResetAllInTransaction,
    /// A call of a function that writes a large object (`lo_create`, `lowrite`, `lo_unlink`, ...), in
    /// SQL or as a FunctionCall message: large objects live in a system catalog, where no capture
    /// trigger sees them.
    LargeObject,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::TwoPhaseCommit => "waly does not relay two-phase commit statements",
            Refusal::Chain => "waly does not support COMMIT AND CHAIN or ROLLBACK AND CHAIN",
            Refusal::ReplicationRole => "waly does not allow changing session_replication_role",
            Refusal::WalySetting => "waly does not allow setting its own waly.* parameters",
            Refusal::ResetAllInTransaction => {
                "waly does not allow RESET ALL inside a transaction that may write"
            }
            Refusal::LargeObject => "waly does not log large objects",
        }
    }

    pub fn hint(self) -> &'static str {
        match self {
            Refusal::TwoPhaseCommit => {
                "waly commits every write transaction through PREPARE TRANSACTION itself; use COMMIT."
            }
            Refusal::Chain => "Use COMMIT, then BEGIN.",
            Refusal::ReplicationRole => {
                "In replica mode Postgres skips the triggers that record row changes; connect to Postgres directly for maintenance that needs it."
            }
            Refusal::WalySetting => {
                "waly keeps the transaction's row changes in these parameters until COMMIT; leave them alone."
            }
            Refusal::ResetAllInTransaction => {
                "RESET ALL would also discard waly's record of the transaction's row changes; run it outside a transaction block, in a query string of its own."
            }
            Refusal::LargeObject => {
                "Large objects live in pg_largeobject, outside the tables waly captures, so the log could not rebuild them; store the data in a bytea column. Reading existing large objects works."
            }
        }
    }
}

impl Classification {
    pub fn may_write(&self) -> bool {
        self.statements.iter().any(|k| k.may_write())
    }

    /// True when one of the statements is the given transaction control.
    pub fn has(&self, control: TransactionControl) -> bool {
        self.statements
            .contains(&StatementKind::Transaction(control))
    }

    /// True when one of the statements is COMMIT or END: the point where the commit protocol runs.
    pub fn commits(&self) -> bool {
        self.has(TransactionControl::Commit)
    }

    /// True when a ROLLBACK (or ABORT) sits among statements that may write: the statements after it run
    /// in a transaction of their own, which Postgres would commit at the end of the query string or
    /// batch, so waly must run them as a request of their own (and commit them through the log).
    pub fn rolls_back_among_writes(&self) -> bool {
        self.has(TransactionControl::Rollback) && self.may_write()
    }

    /// True when one of the statements opens a transaction block.
    pub fn begins(&self) -> bool {
        self.has(TransactionControl::Begin)
    }
}

/// Parses `sql` and classifies each statement in it. Text Postgres would reject is `Unknown`: Postgres
/// itself reports the error.
pub fn classify(sql: &str) -> Classification {
    let parsed = match pg_query::parse(sql, 0) {
        Ok(parsed) => parsed,
        Err(_) => {
            return Classification {
                statements: vec![StatementKind::Unknown],
                ..Classification::default()
            };
        }
    };
    // A SELECT that calls a function which is not a known read-only built-in may write (a volatile
    // function can do anything): it is treated as Unknown, so that in autocommit it is wrapped and logged.
    let calls = parsed.call_functions();
    let calls_unknown = calls.iter().any(|f| !functions::is_known_read_only(f));
    let mut class = Classification::default();
    if calls.iter().any(|f| functions::writes_large_object(f))
        || functions::mentions_large_object_writer(sql)
    {
        class.refusal = Some(Refusal::LargeObject);
    }
    for raw in &parsed.protobuf.stmts {
        let Some(node) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) else {
            class.statements.push(StatementKind::Session);
            continue;
        };
        let mut kind = kind_of(node);
        if kind == StatementKind::Read && calls_unknown {
            kind = StatementKind::Unknown;
        }
        class.statements.push(kind);
        class.refusal = class.refusal.or_else(|| refusal(node));
        class.autocommit_only |= autocommit_only(node);
        class.resets_all |= matches!(node, NodeEnum::VariableSetStmt(v)
            if v.kind() == pg_query::protobuf::VariableSetKind::VarResetAll);
        class.databases_replaced.extend(replaced_databases(node));
    }
    class
}

fn refusal(node: &NodeEnum) -> Option<Refusal> {
    match node {
        NodeEnum::TransactionStmt(t) => match t.kind() {
            TransactionStmtKind::TransStmtPrepare
            | TransactionStmtKind::TransStmtCommitPrepared
            | TransactionStmtKind::TransStmtRollbackPrepared => Some(Refusal::TwoPhaseCommit),
            TransactionStmtKind::TransStmtCommit | TransactionStmtKind::TransStmtRollback
                if t.chain =>
            {
                Some(Refusal::Chain)
            }
            _ => None,
        },
        NodeEnum::VariableSetStmt(v) if v.name.eq_ignore_ascii_case("session_replication_role") => {
            Some(Refusal::ReplicationRole)
        }
        NodeEnum::VariableSetStmt(v) if v.name.to_ascii_lowercase().starts_with("waly.") => {
            Some(Refusal::WalySetting)
        }
        _ => None,
    }
}

/// `sql` with CONCURRENTLY taken out of its index statements and partition detaches, for replay, which runs DDL inside its batch
/// transaction (building an index concurrently only matters while the table is in use). `None` when there
/// is nothing to take out or the text does not parse.
pub fn without_concurrently(sql: &str) -> Option<String> {
    let mut parsed = pg_query::parse(sql, 0).ok()?;
    let mut changed = false;
    for raw in &mut parsed.protobuf.stmts {
        match raw.stmt.as_mut().and_then(|n| n.node.as_mut()) {
            Some(NodeEnum::IndexStmt(i)) if i.concurrent => {
                i.concurrent = false;
                changed = true;
            }
            Some(NodeEnum::DropStmt(d)) if d.concurrent => {
                d.concurrent = false;
                changed = true;
            }
            Some(NodeEnum::AlterTableStmt(a)) => {
                for cmd in &mut a.cmds {
                    if let Some(NodeEnum::AlterTableCmd(c)) = cmd.node.as_mut()
                        && c.subtype() == pg_query::protobuf::AlterTableType::AtDetachPartition
                        && let Some(NodeEnum::PartitionCmd(p)) =
                            c.def.as_mut().and_then(|d| d.node.as_mut())
                        && p.concurrent
                    {
                        p.concurrent = false;
                        changed = true;
                    }
                }
            }
            _ => {}
        }
    }
    if !changed {
        return None;
    }
    parsed.protobuf.deparse(Default::default()).ok()
}

/// The partitions `sql` detaches with `DETACH PARTITION ... CONCURRENTLY`, as SQL names. Postgres adds
/// such a partition a CHECK constraint holding its partition constraint, which a plain DETACH (what
/// [`without_concurrently`] makes of it) does not: replay adds it itself.
pub fn concurrently_detached(sql: &str) -> Vec<String> {
    let Ok(parsed) = pg_query::parse(sql, 0) else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for raw in &parsed.protobuf.stmts {
        if let Some(NodeEnum::AlterTableStmt(a)) = raw.stmt.as_ref().and_then(|n| n.node.as_ref()) {
            for cmd in &a.cmds {
                if let Some(range) = concurrent_detach(cmd).and_then(|p| p.name.as_ref()) {
                    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
                    names.push(if range.schemaname.is_empty() {
                        quote(&range.relname)
                    } else {
                        format!("{}.{}", quote(&range.schemaname), quote(&range.relname))
                    });
                }
            }
        }
    }
    names
}

/// The databases DROP DATABASE or ALTER DATABASE ... RENAME TO replaces.
fn replaced_databases(node: &NodeEnum) -> Vec<String> {
    match node {
        NodeEnum::DropdbStmt(d) => vec![d.dbname.clone()],
        NodeEnum::RenameStmt(r)
            if r.rename_type() == pg_query::protobuf::ObjectType::ObjectDatabase =>
        {
            vec![r.subname.clone(), r.newname.clone()]
        }
        _ => Vec::new(),
    }
}

/// Statements Postgres refuses inside a transaction block.
fn autocommit_only(node: &NodeEnum) -> bool {
    match node {
        NodeEnum::CreatedbStmt(_)
        | NodeEnum::DropdbStmt(_)
        | NodeEnum::VacuumStmt(_)
        | NodeEnum::AlterSystemStmt(_)
        | NodeEnum::CreateTableSpaceStmt(_)
        | NodeEnum::DropTableSpaceStmt(_)
        | NodeEnum::CreateSubscriptionStmt(_)
        | NodeEnum::DropSubscriptionStmt(_) => true,
        NodeEnum::IndexStmt(i) => i.concurrent,
        NodeEnum::DropStmt(d) => d.concurrent,
        NodeEnum::AlterTableStmt(a) => a.cmds.iter().any(|c| concurrent_detach(c).is_some()),
        NodeEnum::ReindexStmt(r) => r.params.iter().any(|p| {
            matches!(&p.node, Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("concurrently"))
        }),
        _ => false,
    }
}

/// The partition command of an `ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY` subcommand.
fn concurrent_detach(cmd: &pg_query::protobuf::Node) -> Option<&pg_query::protobuf::PartitionCmd> {
    let Some(NodeEnum::AlterTableCmd(c)) = &cmd.node else {
        return None;
    };
    if c.subtype() != pg_query::protobuf::AlterTableType::AtDetachPartition {
        return None;
    }
    match c.def.as_ref().and_then(|d| d.node.as_ref()) {
        Some(NodeEnum::PartitionCmd(p)) if p.concurrent => Some(p),
        _ => None,
    }
}

fn kind_of(node: &NodeEnum) -> StatementKind {
    use StatementKind::*;
    match node {
        NodeEnum::SelectStmt(s) => {
            if s.into_clause.is_some() {
                Ddl
            } else if s.with_clause.as_ref().is_some_and(|w| {
                w.ctes.iter().any(|cte| match &cte.node {
                    Some(NodeEnum::CommonTableExpr(c)) => c
                        .ctequery
                        .as_ref()
                        .and_then(|q| q.node.as_ref())
                        .is_some_and(|q| kind_of(q) == Write),
                    _ => false,
                })
            }) {
                Write
            } else {
                Read
            }
        }
        NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::MergeStmt(_)
        | NodeEnum::TruncateStmt(_) => Write,
        NodeEnum::CopyStmt(c) => {
            if c.is_from {
                Write
            } else {
                Read
            }
        }
        NodeEnum::ExplainStmt(e) => {
            let analyze = e.options.iter().any(|o| match &o.node {
                Some(NodeEnum::DefElem(d)) if d.defname.eq_ignore_ascii_case("analyze") => !d
                    .arg
                    .as_ref()
                    .and_then(|a| a.node.as_ref())
                    .is_some_and(is_false),
                _ => false,
            });
            match e.query.as_ref().and_then(|q| q.node.as_ref()) {
                Some(inner) if analyze => kind_of(inner),
                _ => Read,
            }
        }
        NodeEnum::VariableShowStmt(_) => Read,
        // A cursor WITH HOLD runs its query (again) when its transaction commits: in autocommit, that is
        // the statement's own transaction. pg_query's function list does not reach a cursor's query, so
        // any function there may write.
        NodeEnum::DeclareCursorStmt(d) if d.options & CURSOR_OPT_HOLD != 0 => Unknown,
        NodeEnum::TransactionStmt(t) => Transaction(match t.kind() {
            TransactionStmtKind::TransStmtBegin | TransactionStmtKind::TransStmtStart => {
                TransactionControl::Begin
            }
            TransactionStmtKind::TransStmtCommit => TransactionControl::Commit,
            TransactionStmtKind::TransStmtRollback => TransactionControl::Rollback,
            TransactionStmtKind::TransStmtSavepoint => TransactionControl::Savepoint,
            TransactionStmtKind::TransStmtRelease => TransactionControl::Release,
            TransactionStmtKind::TransStmtRollbackTo => TransactionControl::RollbackTo,
            TransactionStmtKind::TransStmtPrepare => TransactionControl::PrepareTransaction,
            TransactionStmtKind::TransStmtCommitPrepared => TransactionControl::CommitPrepared,
            TransactionStmtKind::TransStmtRollbackPrepared => TransactionControl::RollbackPrepared,
            TransactionStmtKind::Undefined => return Unknown,
        }),
        NodeEnum::VariableSetStmt(_)
        | NodeEnum::DiscardStmt(_)
        | NodeEnum::ListenStmt(_)
        | NodeEnum::UnlistenStmt(_)
        | NodeEnum::NotifyStmt(_)
        | NodeEnum::PrepareStmt(_)
        | NodeEnum::DeallocateStmt(_)
        | NodeEnum::DeclareCursorStmt(_)
        | NodeEnum::FetchStmt(_)
        | NodeEnum::ClosePortalStmt(_)
        | NodeEnum::LockStmt(_)
        | NodeEnum::LoadStmt(_)
        | NodeEnum::CheckPointStmt(_)
        | NodeEnum::VacuumStmt(_)
        | NodeEnum::ClusterStmt(_)
        | NodeEnum::ReindexStmt(_)
        | NodeEnum::ConstraintsSetStmt(_) => Session,
        NodeEnum::DoStmt(_) | NodeEnum::CallStmt(_) | NodeEnum::ExecuteStmt(_) => Unknown,
        // Every other top-level statement in the grammar defines or alters objects.
        _ => Ddl,
    }
}

/// DeclareCursorStmt's option bit for WITH HOLD (Postgres' parsenodes.h).
const CURSOR_OPT_HOLD: i32 = 0x0020;

/// `false`, `off`, `0` or `no` as an option argument.
fn is_false(arg: &NodeEnum) -> bool {
    match arg {
        NodeEnum::String(s) => matches!(
            s.sval.to_ascii_lowercase().as_str(),
            "false" | "off" | "no" | "0"
        ),
        NodeEnum::Boolean(b) => !b.boolval,
        NodeEnum::Integer(i) => i.ival == 0,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::StatementKind::*;
    use super::*;

    fn one(sql: &str) -> StatementKind {
        let c = classify(sql);
        assert_eq!(c.statements.len(), 1, "{sql}");
        c.statements[0]
    }

    #[test]
    fn reads() {
        for sql in [
            "select 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            "values (1), (2)",
            "table t",
            "show search_path",
            "copy t to stdout",
            "copy (select 1) to stdout",
            "explain select * from t",
            "explain (analyze false) delete from t",
            "select * from t for update",
            "with x as (select 1) select * from x",
        ] {
            assert_eq!(one(sql), Read, "{sql}");
        }
    }

    #[test]
    fn writes() {
        for sql in [
            "insert into t values (1)",
            "update t set a = 1",
            "delete from t",
            "truncate t",
            "copy t from stdin",
            "merge into t using s on t.id = s.id when matched then delete",
            "with d as (delete from t returning *) select * from d",
            "explain analyze update t set a = 1",
            "insert into t select * from s on conflict do nothing",
        ] {
            assert_eq!(one(sql), Write, "{sql}");
        }
    }

    #[test]
    fn ddl_transactions_session_unknown() {
        assert_eq!(one("create table t (id int)"), Ddl);
        assert_eq!(one("alter table t add column b int"), Ddl);
        assert_eq!(one("drop index i"), Ddl);
        assert_eq!(one("select * into t2 from t"), Ddl);
        assert_eq!(one("grant select on t to public"), Ddl);
        assert_eq!(one("begin"), Transaction(TransactionControl::Begin));
        assert_eq!(
            one("start transaction isolation level serializable"),
            Transaction(TransactionControl::Begin)
        );
        assert_eq!(one("commit"), Transaction(TransactionControl::Commit));
        assert_eq!(
            one("rollback to savepoint a"),
            Transaction(TransactionControl::RollbackTo)
        );
        assert_eq!(
            one("prepare transaction 'x'"),
            Transaction(TransactionControl::PrepareTransaction)
        );
        assert_eq!(one("set search_path = a"), Session);
        assert_eq!(one("listen ch"), Session);
        assert_eq!(one("vacuum t"), Session);
        assert_eq!(one("do $$ begin perform 1; end $$"), Unknown);
        assert_eq!(one("call p()"), Unknown);
        assert_eq!(one("selec 1"), Unknown);
    }

    #[test]
    fn selects_calling_unknown_functions_may_write() {
        assert_eq!(one("select count(*), now() from t"), Read);
        assert_eq!(one("select transfer(1, 2, 10)"), Unknown);
        assert_eq!(one("select nextval('s')"), Unknown);
    }

    #[test]
    fn refusals_and_autocommit_only() {
        for sql in [
            "prepare transaction 'x'",
            "commit prepared 'x'",
            "rollback prepared 'waly_1'",
        ] {
            assert_eq!(
                classify(sql).refusal,
                Some(Refusal::TwoPhaseCommit),
                "{sql}"
            );
        }
        assert_eq!(classify("commit and chain").refusal, Some(Refusal::Chain));
        assert_eq!(classify("commit").refusal, None);
        assert_eq!(
            classify("set session_replication_role = replica").refusal,
            Some(Refusal::ReplicationRole)
        );
        for sql in [
            "set waly.capture = ''",
            "set local WALY.capture_tables to 'x'",
            "reset waly.capture",
        ] {
            assert_eq!(classify(sql).refusal, Some(Refusal::WalySetting), "{sql}");
        }
        assert_eq!(classify("set walyx.y = 1").refusal, None);
        for sql in [
            "select lo_from_bytea(0, 'x')",
            "insert into docs (body) values (lo_import('/tmp/f'))",
            "select pg_catalog.LOWRITE(fd, $1) from open_descriptors",
        ] {
            assert_eq!(classify(sql).refusal, Some(Refusal::LargeObject), "{sql}");
        }
        assert_eq!(classify("select lo_get(16400)").refusal, None);
        assert_eq!(classify("select myschema.lo_unlink(1)").refusal, None);
        assert_eq!(
            classify("insert into notes values ('call lo_create(0) to make one') -- lowrite(")
                .refusal,
            None
        );
        assert_eq!(
            classify("insert into t values (1, pg_catalog.lo_put(1, 0, 'x'))").refusal,
            Some(Refusal::LargeObject)
        );
        assert!(is_large_object_writer_oid(955) && !is_large_object_writer_oid(954));
        assert_eq!(
            named_sequences(
                "insert into t values (nextval('hib_seq'), pg_catalog.setval('public.\"Odd\"''s', 5)); \
                 select nextval('hib_seq'), other.nextval('x'), nextval($1), 'nextval(''y'')'"
            ),
            ["hib_seq", "public.\"Odd\"'s"]
        );
        assert!(named_sequences("select 1").is_empty());
        assert_eq!(
            classify("declare c cursor with hold for select put(1)").statements,
            [StatementKind::Unknown],
            "a WITH HOLD cursor's query runs at COMMIT"
        );
        assert_eq!(
            classify("declare c cursor for select put(1)").statements,
            [StatementKind::Session]
        );
        assert!(calls_setval(
            "select pg_catalog.setval(pg_get_serial_sequence('t', 'id'), 1, false)"
        ));
        assert!(calls_setval("SELECT SETVAL($1, $2)"));
        assert!(!calls_setval(
            "select nextval('setval_seq'), 'setval(x)', other.setval(1) -- setval(2)"
        ));
        assert_eq!(
            classify("drop database if exists \"Shop\"; alter database a rename to b")
                .databases_replaced,
            ["Shop", "a", "b"]
        );
        assert!(
            classify("alter database a set work_mem = '8MB'")
                .databases_replaced
                .is_empty()
        );
        assert!(classify("select 1; reset all").resets_all);
        assert!(!classify("reset search_path").resets_all);
        assert_eq!(classify("reset all").refusal, None);
        for sql in [
            "create database d",
            "vacuum t",
            "create index concurrently i on t (a)",
            "drop index concurrently i",
            "reindex (concurrently) table t",
        ] {
            assert!(classify(sql).autocommit_only, "{sql}");
        }
        assert!(!classify("create index i on t (a)").autocommit_only);
        assert!(classify("alter table p detach partition p1 concurrently").autocommit_only);
        assert!(!classify("alter table p detach partition p1").autocommit_only);
        assert!(!classify("alter table p detach partition p1 finalize").autocommit_only);
        assert!(classify("begin; insert into t values (1); commit").commits());
    }

    #[test]
    fn concurrently_is_taken_out_for_replay() {
        assert_eq!(
            without_concurrently("create index concurrently t_v on t (v)").as_deref(),
            Some("CREATE INDEX t_v ON t USING btree (v)")
        );
        assert_eq!(without_concurrently("create index t_v on t (v)"), None);
        assert_eq!(
            without_concurrently("alter table p detach partition p1 concurrently").as_deref(),
            Some("ALTER TABLE p DETACH PARTITION p1")
        );
        assert_eq!(
            concurrently_detached("alter table p detach partition s.\"P1\" concurrently"),
            ["\"s\".\"P1\""]
        );
        assert!(concurrently_detached("alter table p detach partition p1").is_empty());
    }

    #[test]
    fn multi_statement_strings_keep_order() {
        let c = classify("begin; insert into t values (1); commit");
        assert_eq!(
            c.statements,
            vec![
                Transaction(TransactionControl::Begin),
                Write,
                Transaction(TransactionControl::Commit)
            ]
        );
        assert!(c.may_write());
        assert!(!classify("select 1; select 2").may_write());
    }
}
