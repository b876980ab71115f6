//! Operations replay: the domain operations of log records re-executed on a target through the CURRENT
//! catalog, to build a database of a newer schema or a read model.
//!
//! Owns reading each logged call as the catalog's current version (upcasters, with computed values
//! evaluated on the target), rendering the operation's `sql` with the call's parameters as typed
//! literals, and running a record's calls in one target transaction together with the checkpoint (the
//! same `waly_replay.checkpoint` as exact replay, see [`super::checkpoint`]), so a killed replay run
//! again applies nothing twice. Records without operations (raw SQL only) are skipped and counted.
//!
//! It must never set `session_replication_role = replica` (the target's own triggers, defaults and
//! constraints are what build the new schema), never apply row images, and never leave a record's
//! calls half applied.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Map, Value};
use tokio_postgres::{Client, SimpleQueryMessage};

use super::{ReplayError, checkpoint};
use crate::log::Position;
use crate::migrate::PgFailure;
use crate::operations::upcast::{self, UpcastError};
use crate::operations::{Catalog, Operation, ParamType, render, sql_literal};
use crate::record::{OperationCall, Record};

/// How to replay operations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpsOptions {
    /// Skip (and count) calls of operations the catalog does not declare, instead of stopping.
    pub skip_unknown: bool,
    /// Stop after this position (inclusive); `None`: every record given.
    pub until: Option<Position>,
}

/// What one [`apply`] call did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpsStats {
    /// The checkpoint found in the target when the call started.
    pub resumed_from: Position,
    /// The checkpoint when it ended.
    pub checkpoint: Position,
    /// Records whose operations ran (one target transaction each).
    pub records: u64,
    /// Records skipped because the checkpoint already covered them.
    pub skipped: u64,
    /// Records skipped because they hold no operations (raw SQL only).
    pub without_operations: u64,
    /// Operations executed.
    pub operations: u64,
    /// Operations executed, by name as the catalog spells it.
    pub per_operation: BTreeMap<String, u64>,
    /// Calls skipped because the catalog does not declare their operation, by logged name.
    pub unknown: BTreeMap<String, u64>,
}

impl OpsStats {
    /// Adds a later call's counts to these (the checkpoint becomes the later one's).
    pub fn merge(&mut self, later: OpsStats) {
        self.checkpoint = later.checkpoint;
        self.records += later.records;
        self.skipped += later.skipped;
        self.without_operations += later.without_operations;
        self.operations += later.operations;
        add_counts(&mut self.per_operation, later.per_operation);
        add_counts(&mut self.unknown, later.unknown);
    }

    /// Calls skipped as unknown, all names together.
    pub fn unknown_calls(&self) -> u64 {
        self.unknown.values().sum()
    }
}

fn add_counts(into: &mut BTreeMap<String, u64>, from: BTreeMap<String, u64>) {
    for (name, n) in from {
        *into.entry(name).or_default() += n;
    }
}

/// One call to run: its index in the record, the current definition, the logged call.
type Planned<'a> = (usize, &'a Operation, &'a OperationCall);

/// Re-executes the operations of `records` (in log order) on `target`, resuming after its checkpoint.
pub async fn apply(
    target: &Client,
    catalog: &Catalog,
    records: impl IntoIterator<Item = (Position, Record)>,
    options: &OpsOptions,
) -> Result<OpsStats, ReplayError> {
    let started = Instant::now();
    let resumed_from = checkpoint::load(target).await?;
    let mut stats = OpsStats {
        resumed_from,
        checkpoint: resumed_from,
        ..OpsStats::default()
    };
    // The last record passed over without a transaction, whose position the checkpoint does not hold yet.
    let mut passed: Option<Position> = None;
    let mut previous = Position(0);
    for (position, record) in records {
        if options.until.is_some_and(|until| position > until) {
            break;
        }
        if position <= previous {
            return Err(ReplayError::OutOfOrder { position, previous });
        }
        previous = position;
        if position <= resumed_from {
            stats.skipped += 1;
            continue;
        }
        if record.operations.is_empty() {
            stats.without_operations += 1;
            passed = Some(position);
            continue;
        }
        let calls = plan(catalog, position, &record, options.skip_unknown, &mut stats)?;
        if calls.is_empty() {
            passed = Some(position);
            continue;
        }
        run_record(target, position, &calls).await?;
        count(&mut stats, position, &calls);
        passed = None;
    }
    if let Some(position) = passed {
        store_alone(target, position).await?;
        stats.checkpoint = position;
    }
    tracing::debug!(
        records = stats.records,
        operations = stats.operations,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "operations replayed"
    );
    Ok(stats)
}

/// The record's calls with their current definitions, checked before anything runs: an unknown
/// operation stops the replay (or is skipped and counted), an operation without `sql` stops it.
fn plan<'a>(
    catalog: &'a Catalog,
    position: Position,
    record: &'a Record,
    skip_unknown: bool,
    stats: &mut OpsStats,
) -> Result<Vec<Planned<'a>>, ReplayError> {
    let mut calls = Vec::with_capacity(record.operations.len());
    for (index, call) in record.operations.iter().enumerate() {
        let Some(op) = catalog.operation(&call.name) else {
            if skip_unknown {
                tracing::debug!(%position, operation = %call.name, "unknown operation skipped");
                *stats.unknown.entry(call.name.clone()).or_default() += 1;
                continue;
            }
            return Err(ReplayError::UnknownOperation {
                position,
                index,
                operation: call.name.clone(),
                catalog: catalog.source.clone(),
            });
        };
        if op.sql.is_none() {
            return Err(ReplayError::NoSql {
                position,
                index,
                operation: op.name.clone(),
                catalog: catalog.source.clone(),
            });
        }
        calls.push((index, op, call));
    }
    Ok(calls)
}

fn count(stats: &mut OpsStats, position: Position, calls: &[Planned<'_>]) {
    stats.checkpoint = position;
    stats.records += 1;
    stats.operations += calls.len() as u64;
    for (_, op, _) in calls {
        *stats.per_operation.entry(op.name.clone()).or_default() += 1;
    }
}

/// One record: its calls and the checkpoint in one target transaction, rolled back whole on any error.
async fn run_record(
    target: &Client,
    position: Position,
    calls: &[Planned<'_>],
) -> Result<(), ReplayError> {
    // Literals are written for standard-conforming strings (backslashes are plain characters).
    target
        .batch_execute("begin; set local standard_conforming_strings = on;")
        .await
        .map_err(|e| ReplayError::target("start a transaction", &e))?;
    let mut done = run_calls(target, position, calls).await;
    if done.is_ok() {
        done = checkpoint::store(target, position).await;
    }
    if let Err(e) = done {
        let _ = target.batch_execute("rollback").await;
        return Err(e);
    }
    target.batch_execute("commit").await.map_err(|e| {
        ReplayError::target(&format!("commit the operations of record {position}"), &e)
    })
}

async fn run_calls(
    target: &Client,
    position: Position,
    calls: &[Planned<'_>],
) -> Result<(), ReplayError> {
    for &(index, op, call) in calls {
        let params = upcast_call(op, call, &mut OnTarget(target))
            .await
            .map_err(|problem| ReplayError::Upcast {
                position,
                index,
                operation: op.name.clone(),
                version: call.version,
                problem: Box::new(problem),
            })?;
        let sql = render_sql(op, &params).expect("planned operations declare sql");
        let rows = execute(target, &sql)
            .await
            .map_err(|e| ReplayError::Operation {
                position,
                index,
                operation: op.name.clone(),
                logged: call.version,
                version: op.version,
                failure: Box::new((&e).into()),
            })?;
        tracing::debug!(%position, index, operation = %op.name, rows, "operation replayed");
    }
    Ok(())
}

/// Runs one statement (simple protocol: no prepared statement left behind); the rows it affected.
async fn execute(target: &Client, sql: &str) -> Result<u64, tokio_postgres::Error> {
    let messages = target.simple_query(sql).await?;
    Ok(messages
        .iter()
        .map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => *n,
            _ => 0,
        })
        .sum())
}

/// Moves the checkpoint past records that needed no transaction of their own.
async fn store_alone(target: &Client, position: Position) -> Result<(), ReplayError> {
    target
        .batch_execute("begin")
        .await
        .map_err(|e| ReplayError::target("start a transaction", &e))?;
    if let Err(e) = checkpoint::store(target, position).await {
        let _ = target.batch_execute("rollback").await;
        return Err(e);
    }
    target
        .batch_execute("commit")
        .await
        .map_err(|e| ReplayError::target("commit the checkpoint", &e))
}

/// Answers a computed value's `SELECT` (one row, one text column): its text, or `None` for NULL.
trait Evaluate {
    async fn evaluate(&mut self, select: &str) -> Result<Option<String>, String>;
}

/// Computed values are evaluated by the target, inside the record's transaction.
struct OnTarget<'a>(&'a Client);

impl Evaluate for OnTarget<'_> {
    async fn evaluate(&mut self, select: &str) -> Result<Option<String>, String> {
        let messages = self
            .0
            .simple_query(select)
            .await
            .map_err(|e| PgFailure::from(&e).to_string())?;
        for m in &messages {
            if let SimpleQueryMessage::Row(row) = m {
                return Ok(row.get(0).map(str::to_owned));
            }
        }
        Err("the target returned no row".into())
    }
}

/// The logged call's parameters read as the operation's current version, checked and canonical.
async fn upcast_call(
    op: &Operation,
    call: &OperationCall,
    eval: &mut impl Evaluate,
) -> Result<Map<String, Value>, UpcastError> {
    let mut params = call.params.clone();
    for up in upcast::chain(op, call.version)? {
        for (name, select) in upcast::step(up, &mut params) {
            let compute_error = |reason: String| UpcastError::Compute {
                name: op.name.clone(),
                version: up.from,
                param: name.clone(),
                reason,
            };
            let text = eval.evaluate(&select).await.map_err(compute_error)?;
            let value = computed_value(op, &name, text.as_deref()).map_err(compute_error)?;
            params.insert(name, value);
        }
    }
    upcast::finish(op, &params)
}

/// The target's JSON answer as a parameter value. A numeric parameter keeps the text of a number, so no
/// digit is lost to a float.
fn computed_value(op: &Operation, param: &str, text: Option<&str>) -> Result<Value, String> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    let value: Value = serde_json::from_str(text)
        .map_err(|e| format!("the target answered {text:?}, which is not JSON: {e}"))?;
    let numeric = op
        .param(param)
        .is_some_and(|(_, p)| p.kind == ParamType::Numeric);
    Ok(match value {
        Value::Number(_) if numeric => Value::String(text.trim().to_owned()),
        other => other,
    })
}

/// The operation's `sql` with each placeholder replaced by its parameter as a typed literal, in
/// parentheses; `None` when the operation declares no `sql`.
pub fn render_sql(op: &Operation, params: &Map<String, Value>) -> Option<String> {
    let (_, pieces) = op.sql.as_ref()?;
    Some(render(pieces, |name| {
        let value = params.get(name).unwrap_or(&Value::Null);
        match op.param(name) {
            Some((_, p)) => format!("({})", sql_literal(&p.kind, value)),
            None => "(NULL)".into(),
        }
    }))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CATALOG: &str = r#"
operations:
  - name: DEPOSIT
    version: 3
    params:
      account: {type: integer, required: true, min: 1}
      amount: {type: numeric, required: true}
      memo: {type: text}
      tags: {type: array, items: {type: text}}
    sql: UPDATE accounts SET balance = balance + :amount, memo = :memo WHERE id = :account
    upcasters:
      - from: 1
        rename: {acct: account}
        default: {memo: "n/a"}
      - from: 2
        compute: {amount: ":cents / 100.0"}
        drop: [cents]
  - name: NOTE
    version: 1
    params:
      text: {type: text}
    matches:
      - statement: INSERT INTO notes (text) VALUES (:text)
"#;

    fn catalog() -> Catalog {
        Catalog::parse("ops.yaml", CATALOG).unwrap()
    }

    fn call(name: &str, version: u32, params: Value) -> OperationCall {
        OperationCall {
            name: name.into(),
            version,
            params: params.as_object().unwrap().clone(),
            statements: Vec::new(),
            changes: Vec::new(),
        }
    }

    fn record(operations: Vec<OperationCall>) -> Record {
        let json = br#"{"format":1,"txid":"1","gid":"g","committed_at":"t",
            "session":{"user":"u","database":"d","client_addr":"a"},"statements":[],"changes":[]}"#;
        let mut r = Record::from_json(json).unwrap();
        r.operations = operations;
        r
    }

    /// Answers every SELECT with `answer`, remembering what it was asked.
    struct Fake {
        answer: Result<Option<String>, String>,
        asked: Vec<String>,
    }

    impl Evaluate for Fake {
        async fn evaluate(&mut self, select: &str) -> Result<Option<String>, String> {
            self.asked.push(select.to_owned());
            self.answer.clone()
        }
    }

    fn fake(answer: Result<Option<&str>, &str>) -> Fake {
        Fake {
            answer: answer.map(|a| a.map(str::to_owned)).map_err(str::to_owned),
            asked: Vec::new(),
        }
    }

    #[tokio::test]
    async fn a_current_call_renders_with_typed_literals() {
        let c = catalog();
        let op = c.operation("deposit").unwrap();
        let logged = call(
            "DEPOSIT",
            3,
            json!({"account": 7, "amount": "12.50", "memo": "it's"}),
        );
        let mut eval = fake(Err("not asked"));
        let params = upcast_call(op, &logged, &mut eval).await.unwrap();
        assert!(eval.asked.is_empty());
        assert_eq!(
            render_sql(op, &params).unwrap(),
            "UPDATE accounts SET balance = balance + ('12.50'::numeric), memo = ('it''s'::text) \
             WHERE id = ('7'::bigint)"
        );
    }

    #[tokio::test]
    async fn an_old_call_is_upcast_with_values_computed_by_the_target() {
        let c = catalog();
        let op = c.operation("DEPOSIT").unwrap();
        let logged = call("DEPOSIT", 1, json!({"acct": 7, "cents": 1250}));
        // A numeric answer keeps every digit, not what a float would make of it.
        let mut eval = fake(Ok(Some("12.500000000000000000001")));
        let params = upcast_call(op, &logged, &mut eval).await.unwrap();
        assert_eq!(eval.asked, ["SELECT to_jsonb((1250 / 100.0))::text"]);
        assert_eq!(
            Value::Object(params.clone()),
            json!({"account": 7, "amount": "12.500000000000000000001", "memo": "n/a", "tags": null})
        );
        let sql = render_sql(op, &params).unwrap();
        assert!(
            sql.contains("('12.500000000000000000001'::numeric)"),
            "{sql}"
        );
        assert!(sql.contains("('n/a'::text)"), "{sql}");
    }

    #[tokio::test]
    async fn upcasting_fails_clearly() {
        let c = catalog();
        let op = c.operation("DEPOSIT").unwrap();
        let failed = upcast_call(
            op,
            &call("DEPOSIT", 2, json!({"account": 7, "cents": 1})),
            &mut fake(Err("division by zero (SQLSTATE 22012)")),
        )
        .await
        .unwrap_err();
        assert_eq!(
            failed.to_string(),
            "operation DEPOSIT: computing amount from v2: division by zero (SQLSTATE 22012)"
        );
        let newer = upcast_call(op, &call("DEPOSIT", 4, json!({})), &mut fake(Ok(None)))
            .await
            .unwrap_err();
        assert!(
            matches!(newer, UpcastError::Newer { version: 4, .. }),
            "{newer}"
        );
        // A NULL amount is missing, and amount is required.
        let missing = upcast_call(
            op,
            &call("DEPOSIT", 2, json!({"account": 7, "cents": null})),
            &mut fake(Ok(None)),
        )
        .await
        .unwrap_err();
        assert!(matches!(missing, UpcastError::Invalid(_)), "{missing}");
        assert!(missing.to_string().contains("amount"), "{missing}");
    }

    #[test]
    fn plan_refuses_unknown_operations_unless_told_to_skip_them() {
        let c = catalog();
        let r = record(vec![
            call("GHOST", 1, json!({})),
            call("deposit", 3, json!({"account": 1, "amount": "1"})),
        ]);
        let mut stats = OpsStats::default();
        let err = plan(&c, Position(9), &r, false, &mut stats).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 9, operation 0: GHOST is not in the catalog ops.yaml; \
             hint: add it, or pass --skip-unknown to skip its calls"
        );
        let calls = plan(&c, Position(9), &r, true, &mut stats).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].0, calls[0].1.name.as_str()), (1, "DEPOSIT"));
        assert_eq!(stats.unknown, BTreeMap::from([("GHOST".to_owned(), 1)]));
    }

    #[test]
    fn plan_refuses_operations_without_sql() {
        let c = catalog();
        let r = record(vec![call("NOTE", 1, json!({"text": "x"}))]);
        let err = plan(&c, Position(3), &r, true, &mut OpsStats::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("record 3, operation 0: NOTE cannot be replayed: it declares no sql"),
            "{err}"
        );
    }

    #[test]
    fn stats_merge_adds_counts() {
        let mut a = OpsStats {
            records: 1,
            operations: 2,
            per_operation: BTreeMap::from([("A".to_owned(), 2)]),
            ..OpsStats::default()
        };
        a.merge(OpsStats {
            checkpoint: Position(5),
            records: 1,
            operations: 1,
            without_operations: 3,
            per_operation: BTreeMap::from([("A".to_owned(), 1)]),
            unknown: BTreeMap::from([("B".to_owned(), 4)]),
            ..OpsStats::default()
        });
        assert_eq!(a.checkpoint, Position(5));
        assert_eq!((a.records, a.operations, a.without_operations), (2, 3, 3));
        assert_eq!(a.per_operation["A"], 3);
        assert_eq!(a.unknown_calls(), 4);
    }
}
