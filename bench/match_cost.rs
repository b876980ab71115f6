//! Matching cost of the operations catalog on the write path.
//!
//! What `Matcher::recognize` costs a committing transaction once the session's cache holds the analysis of
//! its statement texts (the steady state: an application sends the same texts again and again), and what
//! the first sight of a text costs (parse with the Postgres grammar + tree match against every template).
//!
//! Inputs are built as the session records them: statements with bind parameters as text, and row changes
//! parsed from the JSON text of a record's `changes` (full row images, the sequence positions included):
//!
//! - TRANSFER_FUNDS: 3 statements (2 UPDATEs of accounts, 1 INSERT into transfers), 2 updates + 1 insert
//!   + 1 sequence position; recognised from its statement shape, `transfer_id` read from the row.
//! - DEPOSIT: 1 statement, 1 update; statement shape.
//! - CREATE_ACCOUNT: an ORM-style INSERT that matches no statement shape, recognised from the row image
//!   (table shape), 1 insert + 1 sequence position.
//! - raw: an INSERT into a table no operation and no policy names (recorded as raw SQL).
//! - the same TRANSFER_FUNDS transaction with no catalog (`Operations::none()`), the fast path.
//! - TRANSFER_FUNDS as the simple protocol sends it (pgbench -M simple): values as literals in the text,
//!   so each transaction's texts are new (MATCH_LITERAL_TX distinct transactions, one Matcher, as one
//!   session would see them); the Matcher lifts the constants out and the texts share one analysis per
//!   shape, so this costs a scan of each text besides the cached path.
//!
//! Method: one Matcher per case, warmed by one `recognize`; then ROUNDS rounds of ITERS calls, timed with
//! `Instant`; the figure is the median round's ns per call. Cold figures: a fresh Matcher per trial, one
//! `Matcher::analysis` (cache miss) of the text, median of COLD_TRIALS trials.
//!
//! Run: `cargo run --release --example match_cost [-- path/to/operations.yaml]`
//! Knobs (environment): MATCH_ITERS (default 200000), MATCH_ROUNDS (default 5), MATCH_COLD_TRIALS (2000),
//! MATCH_LITERAL_TX (10000).

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use waly::operations::{Matcher, Operations};
use waly::record::{Change, OperationCall, Statement};

fn knob(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .unwrap_or_else(|| panic!("{name} must be a positive integer, got {v:?}")),
        Err(_) => default,
    }
}

fn statement(sql: &str, params: &[&str]) -> Statement {
    Statement {
        sql: sql.to_owned(),
        params: params.iter().map(|p| Some((*p).to_owned())).collect(),
    }
}

/// Row changes from a record's `changes` array, as JSON text (jsonb's key order and spacing).
fn changes(json: &str) -> Vec<Change> {
    serde_json::from_str(json).expect("the changes parse")
}

struct Case {
    name: &'static str,
    expect: &'static [&'static str],
    statements: Vec<Statement>,
    changes: Vec<Change>,
}

fn cases() -> Vec<Case> {
    let transfer = Case {
        name: "TRANSFER_FUNDS (3 statements, statement shape)",
        expect: &["TRANSFER_FUNDS"],
        statements: vec![
            statement(
                "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
                &["25.00", "1"],
            ),
            statement(
                "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                &["25.00", "2"],
            ),
            statement(
                "INSERT INTO transfers (from_account, to_account, amount, memo) VALUES ($1, $2, $3, $4)",
                &["1", "2", "25.00", "rent"],
            ),
        ],
        changes: changes(
            r#"[
            {"kind": "update", "schema": "public", "table": "accounts", "pk": {"id": 1},
             "old": {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "balance": 1000000.00, "currency": "EUR", "closed_at": null, "opened_at": "2026-11-23T18:00:00.123456+00:00"},
             "new": {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "balance": 999975.00, "currency": "EUR", "closed_at": null, "opened_at": "2026-11-23T18:00:00.123456+00:00"}},
            {"kind": "update", "schema": "public", "table": "accounts", "pk": {"id": 2},
             "old": {"id": 2, "name": "Alan Turing", "email": "alan@example.com", "balance": 1000000.00, "currency": "GBP", "closed_at": null, "opened_at": "2026-11-23T18:00:01.654321+00:00"},
             "new": {"id": 2, "name": "Alan Turing", "email": "alan@example.com", "balance": 1000025.00, "currency": "GBP", "closed_at": null, "opened_at": "2026-11-23T18:00:01.654321+00:00"}},
            {"kind": "insert", "schema": "public", "table": "transfers", "pk": {"id": 4711},
             "new": {"id": 4711, "memo": "rent", "amount": 25.00, "made_at": "2026-11-23T18:05:00.000001+00:00", "to_account": 2, "from_account": 1}},
            {"kind": "sequence", "schema": "public", "name": "transfers_id_seq", "last_value": 4711, "is_called": true}
        ]"#,
        ),
    };
    let deposit = Case {
        name: "DEPOSIT (1 statement, statement shape)",
        expect: &["DEPOSIT"],
        statements: vec![statement(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2 AND closed_at IS NULL",
            &["100.00", "7"],
        )],
        changes: changes(
            r#"[
            {"kind": "update", "schema": "public", "table": "accounts", "pk": {"id": 7},
             "old": {"id": 7, "name": "Grace Hopper", "email": "grace@example.com", "balance": 10.00, "currency": "USD", "closed_at": null, "opened_at": "2026-11-23T18:00:02.000000+00:00"},
             "new": {"id": 7, "name": "Grace Hopper", "email": "grace@example.com", "balance": 110.00, "currency": "USD", "closed_at": null, "opened_at": "2026-11-23T18:00:02.000000+00:00"}}
        ]"#,
        ),
    };
    let create = Case {
        name: "CREATE_ACCOUNT (1 statement, table shape)",
        expect: &["CREATE_ACCOUNT"],
        statements: vec![statement(
            "INSERT INTO \"accounts\" (\"email\", \"name\", \"currency\") VALUES ($1, $2, $3) RETURNING \"id\", \"opened_at\"",
            &["edsger@example.com", "Edsger Dijkstra", "EUR"],
        )],
        changes: changes(
            r#"[
            {"kind": "insert", "schema": "public", "table": "accounts", "pk": {"id": 1001},
             "new": {"id": 1001, "name": "Edsger Dijkstra", "email": "edsger@example.com", "balance": 0, "currency": "EUR", "closed_at": null, "opened_at": "2026-11-23T18:10:00.000000+00:00"}},
            {"kind": "sequence", "schema": "public", "name": "accounts_id_seq", "last_value": 1001, "is_called": true}
        ]"#,
        ),
    };
    let raw = Case {
        name: "raw write, table without policy (1 statement)",
        expect: &[],
        statements: vec![statement(
            "INSERT INTO audit_log (actor, action, detail) VALUES ($1, $2, $3)",
            &["42", "login", "{\"ip\": \"10.0.0.7\"}"],
        )],
        changes: changes(
            r#"[
            {"kind": "insert", "schema": "public", "table": "audit_log", "pk": {"id": 99},
             "new": {"id": 99, "actor": 42, "action": "login", "detail": {"ip": "10.0.0.7"}, "logged_at": "2026-11-23T18:11:00.000000+00:00"}},
            {"kind": "sequence", "schema": "public", "name": "audit_log_id_seq", "last_value": 99, "is_called": true}
        ]"#,
        ),
    };
    vec![transfer, deposit, create, raw]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// ns per `recognize` call in the median of `rounds` rounds of `iters` calls, after one warming call.
fn steady(ops: &Arc<Operations>, case: &Case, iters: usize, rounds: usize) -> f64 {
    let mut matcher = Matcher::new(Arc::clone(ops));
    let warm = matcher
        .recognize(&case.statements, &case.changes)
        .unwrap_or_else(|e| panic!("{}: refused: {e:?}", case.name));
    black_box(warm);
    let per_round: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..iters {
                let calls =
                    matcher.recognize(black_box(&case.statements), black_box(&case.changes));
                black_box(calls.ok());
            }
            start.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    median(per_round)
}

/// TRANSFER_FUNDS as the simple protocol sends it: values as literals in the text, so every transaction's
/// three texts are new (distinct accounts and amounts). The row changes are those of `template`.
fn literal_transfers(template: &Case, count: usize) -> Vec<Vec<Statement>> {
    (0..count)
        .map(|i| {
            let (from, to) = (i + 1, i + 2);
            let amount = format!("{}.{:02}", i % 7, 1 + i % 99);
            vec![
                statement(
                    &format!(
                        "UPDATE accounts SET balance = balance - {amount} WHERE id = {from}"
                    ),
                    &[],
                ),
                statement(
                    &format!("UPDATE accounts SET balance = balance + {amount} WHERE id = {to}"),
                    &[],
                ),
                statement(
                    &format!(
                        "INSERT INTO transfers (from_account, to_account, amount, memo) VALUES ({from}, {to}, {amount}, 'pgbench')"
                    ),
                    &[],
                ),
            ]
        })
        .inspect(|t| assert_eq!(t.len(), template.statements.len()))
        .collect()
}

/// ns per `recognize` of a session that sees a new text for every statement (only the lifted key repeats):
/// median of `rounds` rounds over `transactions`, one Matcher throughout as in a session.
fn uncached(
    ops: &Arc<Operations>,
    transactions: &[Vec<Statement>],
    changes: &[Change],
    rounds: usize,
) -> f64 {
    let mut matcher = Matcher::new(Arc::clone(ops));
    let per_round: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for statements in transactions {
                let calls = matcher.recognize(black_box(statements), black_box(changes));
                black_box(calls.ok());
            }
            start.elapsed().as_nanos() as f64 / transactions.len() as f64
        })
        .collect();
    median(per_round)
}

/// ns of the first sight of `sql` (a fresh Matcher, a cache miss): median over `trials`.
fn cold_text(ops: &Arc<Operations>, sql: &str, trials: usize) -> f64 {
    let samples: Vec<f64> = (0..trials)
        .map(|_| {
            let mut matcher = Matcher::new(Arc::clone(ops));
            let start = Instant::now();
            black_box(matcher.analysis(black_box(sql)));
            start.elapsed().as_nanos() as f64
        })
        .collect();
    median(samples)
}

/// ns of a whole transaction recognised by a fresh Matcher (every text a cache miss): median over `trials`.
fn cold_transaction(ops: &Arc<Operations>, case: &Case, trials: usize) -> f64 {
    let samples: Vec<f64> = (0..trials)
        .map(|_| {
            let mut matcher = Matcher::new(Arc::clone(ops));
            let start = Instant::now();
            black_box(matcher.recognize(&case.statements, &case.changes).ok());
            start.elapsed().as_nanos() as f64
        })
        .collect();
    median(samples)
}

fn describe(calls: &[OperationCall]) -> String {
    if calls.is_empty() {
        return "none (raw)".into();
    }
    calls
        .iter()
        .map(|c| {
            format!(
                "{} v{} {}",
                c.name,
                c.version,
                serde_json::Value::Object(c.params.clone())
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn us(ns: f64) -> String {
    format!("{:.2}", ns / 1000.0)
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/operations.yaml")
        });
    let iters = knob("MATCH_ITERS", 200_000);
    let rounds = knob("MATCH_ROUNDS", 5);
    let trials = knob("MATCH_COLD_TRIALS", 2_000);
    if cfg!(debug_assertions) {
        eprintln!(
            "WARNING: a debug build; run with `cargo run --release --example match_cost` for real figures"
        );
    }
    let ops = Operations::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let none = Operations::none();
    let cases = cases();

    // Every case must be recognised as expected before anything is timed.
    for case in &cases {
        let calls = Matcher::new(Arc::clone(&ops))
            .recognize(&case.statements, &case.changes)
            .unwrap_or_else(|e| panic!("{}: refused: {e:?}", case.name));
        let names: Vec<&str> = calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, case.expect, "{}: {}", case.name, describe(&calls));
        eprintln!("{}: {}", case.name, describe(&calls));
    }

    println!(
        "Catalog `{}` ({} operations); release build: {}; {} rounds of {} calls per case, median round; cold: median of {} fresh Matchers.",
        path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&path)
            .display(),
        ops.current().operations.len(),
        !cfg!(debug_assertions),
        rounds,
        iters,
        trials
    );
    println!();
    println!(
        "| transaction | write statements | row changes | recognised as | cached: ns/tx | cached: ns/write statement | cold (empty cache): µs/tx |"
    );
    println!("|---|---:|---:|---|---:|---:|---:|");
    for case in &cases {
        let calls = Matcher::new(Arc::clone(&ops))
            .recognize(&case.statements, &case.changes)
            .expect("recognised above");
        let ns = steady(&ops, case, iters, rounds);
        let cold = cold_transaction(&ops, case, trials);
        let n = case.statements.len();
        let rows = case
            .changes
            .iter()
            .filter(|c| !matches!(c, Change::Sequence { .. } | Change::Ddl { .. }))
            .count();
        println!(
            "| {} | {n} | {rows} | {} | {:.0} | {:.0} | {} |",
            case.name,
            describe(&calls).replace('|', "\\|"),
            ns,
            ns / n as f64,
            us(cold)
        );
    }
    let transfer = &cases[0];
    let ns = steady(&none, transfer, iters, rounds);
    let cold = cold_transaction(&none, transfer, trials);
    println!(
        "| TRANSFER_FUNDS, no catalog (`Operations::none()`, fast path) | {} | 3 | none | {:.0} | {:.0} | {} |",
        transfer.statements.len(),
        ns,
        ns / transfer.statements.len() as f64,
        us(cold)
    );
    let literal = literal_transfers(transfer, knob("MATCH_LITERAL_TX", 10_000));
    let names: Vec<String> = Matcher::new(Arc::clone(&ops))
        .recognize(&literal[0], &transfer.changes)
        .expect("the literal transfer is recognised")
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["TRANSFER_FUNDS"], "literal transfer");
    let ns = uncached(&ops, &literal, &transfer.changes, rounds);
    println!(
        "| TRANSFER_FUNDS, simple protocol: values as literals, every text new ({} distinct transactions, one Matcher; constants lifted) | 3 | 3 | TRANSFER_FUNDS | {ns:.0} | {:.0} | {} |",
        literal.len(),
        ns / 3.0,
        us(ns)
    );

    println!();
    println!(
        "First sight of a statement text (a cache miss: Postgres-grammar parse + tree match against every template), per distinct text:"
    );
    println!();
    println!("| statement text | cold: µs |");
    println!("|---|---:|");
    let mut seen: Vec<&str> = Vec::new();
    for case in &cases {
        for s in &case.statements {
            if seen.contains(&s.sql.as_str()) {
                continue;
            }
            seen.push(&s.sql);
            println!(
                "| `{}` | {} |",
                s.sql.replace('|', "\\|"),
                us(cold_text(&ops, &s.sql, trials))
            );
        }
    }
}
