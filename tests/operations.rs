//! Domain operations through `waly serve`, as an application and an operator see them: the example
//! catalog (config/operations.yaml, tables in migrations/example/accounts.sql) recognised from literal SQL
//! and from prepared statements with binary bind parameters; invalid parameters and strict-mode refusals
//! answered with Postgres errors that name the operation and parameter, leaving log and database as they
//! were; direct invocation with `CALL waly.<operation>(...)`; an old version upcast and replayed into a
//! newer schema; and a catalog reloaded under load without losing a write.

mod support;

use std::error::Error;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};
use tokio_postgres::{Client, NoTls};

use support::*;
use waly::record::Record;

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database with the example schema, served by a waly that uses `catalog` (a file path).
struct Domain {
    waly: Waly,
    db: TestDb,
}

impl Domain {
    fn with_catalog(prefix: &str, catalog: &std::path::Path) -> Domain {
        let db = postgres().create_db(prefix);
        let schema =
            std::fs::read_to_string(project_root().join("migrations/example/accounts.sql"))
                .unwrap();
        psql(&postgres().url(&db), &schema);
        let waly = Waly::start_with(WalyOptions {
            extra_yaml: format!("operations: {}\n", catalog.display()),
            ..WalyOptions::default()
        });
        Domain { waly, db }
    }

    fn example(prefix: &str) -> Domain {
        Self::with_catalog(prefix, &project_root().join("config/operations.yaml"))
    }

    fn url(&self) -> String {
        self.waly.url(&self.db)
    }

    fn direct(&self) -> String {
        postgres().url(&self.db)
    }

    /// Records of this test's database.
    async fn records(&self) -> Vec<Record> {
        self.waly
            .records()
            .await
            .into_iter()
            .filter(|r| r.session.database == self.db)
            .collect()
    }

    /// The operations of every record, flattened, as (name, params).
    async fn operations(&self) -> Vec<(String, Value)> {
        self.records()
            .await
            .into_iter()
            .flat_map(|r| r.operations)
            .map(|o| (o.name, Value::Object(o.params)))
            .collect()
    }
}

/// A numeric bind parameter in Postgres' binary format, as a driver with a decimal type sends it.
#[derive(Debug)]
struct Numeric(&'static str);

impl ToSql for Numeric {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        let (negative, text) = match self.0.strip_prefix('-') {
            Some(t) => (true, t),
            None => (false, self.0),
        };
        let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
        // Base-10000 groups: the whole part padded on the left, the fraction on the right.
        let whole = format!("{}{whole}", "0".repeat((4 - whole.len() % 4) % 4));
        let frac_padded = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let mut groups: Vec<u16> = whole
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let weight = groups.len() as i16 - 1;
        groups.extend(
            frac_padded
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap().parse::<u16>().unwrap()),
        );
        for w in [
            groups.len() as u16,
            weight as u16,
            if negative { 0x4000 } else { 0 },
            frac.len() as u16,
        ] {
            out.extend_from_slice(&w.to_be_bytes());
        }
        for g in groups {
            out.extend_from_slice(&g.to_be_bytes());
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("not a server error: {e}"))
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default()
}

async fn balances(c: &Client) -> Vec<(i64, String)> {
    c.query("SELECT id, balance::text FROM accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test]
async fn each_example_operation_is_recorded_from_literal_sql() {
    let d = Domain::example("ops_literal");
    let url = d.url();
    psql(
        &url,
        "INSERT INTO accounts (email, name) VALUES ('ada@example.com', 'Ada')",
    );
    psql(
        &url,
        "insert into accounts (email, name, currency) values ('bob@example.com', 'Bob', 'USD')",
    );
    psql(
        &url,
        "UPDATE accounts SET balance = balance + 100.50 WHERE id = 1 AND closed_at IS NULL",
    );
    psql(
        &url,
        "BEGIN;
         UPDATE accounts SET balance = balance - 25 WHERE id = 1;
         SELECT balance FROM accounts WHERE id = 1;
         update accounts set balance = balance + 25 where id = 2;
         INSERT INTO transfers (from_account, to_account, amount, memo) VALUES (1, 2, 25, 'rent');
         COMMIT;",
    );
    psql(
        &url,
        "UPDATE accounts SET closed_at = '2026-11-23 10:00:00+00' WHERE id = 2",
    );

    let ops = d.operations().await;
    let names: Vec<&str> = ops.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "CREATE_ACCOUNT",
            "CREATE_ACCOUNT",
            "DEPOSIT",
            "TRANSFER_FUNDS",
            "CLOSE_ACCOUNT"
        ],
        "{ops:#?}"
    );
    assert_eq!(
        ops[0].1,
        json!({"id": 1, "email": "ada@example.com", "name": "Ada", "currency": "EUR"}),
        "the generated id and the default currency come from the row"
    );
    assert_eq!(ops[1].1["currency"], "USD");
    assert_eq!(ops[2].1, json!({"account": 1, "amount": "100.50"}));
    assert_eq!(
        ops[3].1,
        json!({"from_account": 1, "to_account": 2, "amount": "25", "memo": "rent", "transfer_id": 1})
    );
    assert_eq!(ops[4].1["id"], 2);
    assert!(
        ops[4].1["closed_at"]
            .as_str()
            .unwrap()
            .starts_with("2026-11-23T10:00:00"),
        "{ops:?}"
    );

    let records = d.records().await;
    let transfer = records
        .iter()
        .find(|r| r.operations.iter().any(|o| o.name == "TRANSFER_FUNDS"))
        .unwrap();
    assert_eq!(
        transfer.operations.len(),
        1,
        "one operation for the three statements"
    );
    assert_eq!(
        transfer.row_changes(),
        3,
        "the row images stay beside the operation"
    );
}

#[tokio::test]
async fn each_example_operation_is_recorded_from_prepared_statements() {
    let d = Domain::example("ops_prepared");
    let c = connect(&d.url()).await;
    let create = c
        .prepare("INSERT INTO accounts (email, name, currency) VALUES ($1, $2, $3) RETURNING id")
        .await
        .unwrap();
    let a: i64 = c
        .query_one(&create, &[&"ada@example.com", &"Ada", &"GBP"])
        .await
        .unwrap()
        .get(0);
    let b: i64 = c
        .query_one(&create, &[&"bob@example.com", &"Bob", &"GBP"])
        .await
        .unwrap()
        .get(0);
    let deposit = c
        .prepare("UPDATE accounts SET balance = balance + $2 WHERE id = $1 AND closed_at IS NULL")
        .await
        .unwrap();
    c.execute(&deposit, &[&a, &Numeric("1000.25")])
        .await
        .unwrap();
    let mut c = c;
    let tx = c.transaction().await.unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
        &[&Numeric("0.25"), &a],
    )
    .await
    .unwrap();
    tx.execute(
        "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
        &[&Numeric("0.25"), &b],
    )
    .await
    .unwrap();
    tx.execute(
        "INSERT INTO transfers (from_account, to_account, amount, memo) VALUES ($1, $2, $3, $4)",
        &[&a, &b, &Numeric("0.25"), &None::<String>],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
    c.execute(
        "UPDATE accounts SET closed_at = $1 WHERE id = $2",
        &[&when, &b],
    )
    .await
    .unwrap();

    let ops = d.operations().await;
    let names: Vec<&str> = ops.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "CREATE_ACCOUNT",
            "CREATE_ACCOUNT",
            "DEPOSIT",
            "TRANSFER_FUNDS",
            "CLOSE_ACCOUNT"
        ],
        "{ops:#?}"
    );
    assert_eq!(
        ops[2].1,
        json!({"account": a, "amount": "1000.25"}),
        "a binary numeric reads as its text"
    );
    assert_eq!(
        ops[3].1,
        json!({"from_account": a, "to_account": b, "amount": "0.25", "memo": null, "transfer_id": 1})
    );
    // The statements keep their bind parameters in text form.
    let records = d.records().await;
    let deposit = records
        .iter()
        .find(|r| r.operations.iter().any(|o| o.name == "DEPOSIT"))
        .unwrap();
    assert_eq!(
        deposit.statements[0].params,
        [Some(a.to_string()), Some("1000.25".into())]
    );
}

#[tokio::test]
async fn invalid_parameters_are_refused_and_leave_log_and_database_unchanged() {
    let d = Domain::example("ops_invalid");
    let c = connect(&d.url()).await;
    c.batch_execute("INSERT INTO accounts (email, name, balance) VALUES ('ada@example.com', 'Ada', 100), ('bob@example.com', 'Bob', 0)")
        .await
        .unwrap();
    let end = d.waly.log_end().await;
    let before = balances(&c).await;

    let e = c
        .batch_execute("INSERT INTO accounts (email, name) VALUES ('not-an-address', 'Eve')")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023", "{e:?}");
    assert!(
        message(&e).starts_with(
            "operation CREATE_ACCOUNT (v1): parameter \"email\" must match the pattern"
        ),
        "{}",
        message(&e)
    );
    let db = e.as_db_error().unwrap();
    assert_eq!(
        db.detail(),
        Some("The transaction was rolled back; nothing was logged or applied.")
    );
    assert!(
        db.hint()
            .unwrap()
            .contains("CREATE_ACCOUNT.email: text, required"),
        "{:?}",
        db.hint()
    );

    let e = c
        .execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2 AND closed_at IS NULL",
            &[&Numeric("-5"), &1i64],
        )
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22003");
    assert_eq!(
        message(&e),
        "operation DEPOSIT (v1): parameter \"amount\" must be at least 0.01, got -5"
    );

    // In a transaction block, the refusal is COMMIT's error, as a deferred constraint's would be.
    c.batch_execute(
        "BEGIN; UPDATE accounts SET balance = balance + 10 WHERE id = 1 AND closed_at IS NULL",
    )
    .await
    .unwrap();
    let memo = "x".repeat(200);
    c.batch_execute(&format!(
        "UPDATE accounts SET balance = balance - 5 WHERE id = 1;
         UPDATE accounts SET balance = balance + 5 WHERE id = 2;
         INSERT INTO transfers (from_account, to_account, amount, memo) VALUES (1, 2, 5, '{memo}')"
    ))
    .await
    .unwrap();
    let e = c.batch_execute("COMMIT").await.unwrap_err();
    assert_eq!(code(&e), "22023", "{e:?}");
    assert_eq!(
        message(&e),
        "operation TRANSFER_FUNDS (v1): parameter \"memo\" must have a length of at most 140, got 200"
    );

    assert_eq!(d.waly.log_end().await, end, "nothing was logged");
    assert_eq!(balances(&c).await, before, "nothing was applied");
    let direct = connect(&d.direct()).await;
    assert_eq!(
        direct
            .query_one("SELECT count(*) FROM accounts", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        2
    );
    assert_eq!(
        direct
            .query_one(
                "SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()",
                &[]
            )
            .await
            .unwrap()
            .get::<_, i64>(0),
        0
    );
    // The session goes on.
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

#[tokio::test]
async fn strict_mode_refuses_undeclared_writes_and_records_the_rest_as_raw_sql() {
    let d = Domain::example("ops_strict");
    let c = connect(&d.url()).await;
    c.batch_execute("INSERT INTO accounts (email, name) VALUES ('ada@example.com', 'Ada'); CREATE TABLE notes (id int PRIMARY KEY, body text)")
        .await
        .unwrap();

    for sql in [
        "UPDATE accounts SET name = 'Mallory' WHERE id = 1",
        "UPDATE accounts SET balance = 1000000 WHERE id = 1",
        "DELETE FROM accounts WHERE id = 1",
        "TRUNCATE transfers",
    ] {
        let e = c.batch_execute(sql).await.unwrap_err();
        assert_eq!(code(&e), "42501", "{sql}: {e:?}");
        assert!(
            message(&e).contains("accepts only declared operations (strict mode)"),
            "{}",
            message(&e)
        );
        let hint = e
            .as_db_error()
            .unwrap()
            .hint()
            .unwrap_or_default()
            .to_owned();
        assert!(hint.contains("CALL waly."), "{hint}");
    }
    // As with Postgres' own commit failures in autocommit, the refused statement completes with the
    // error only: psql prints no `UPDATE 1` before it.
    let out = Command::new("psql")
        .args([
            d.url().as_str(),
            "-X",
            "-c",
            "UPDATE accounts SET name = 'Mallory' WHERE id = 1",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("ERROR:  table public.accounts accepts only declared operations"),
        "{out:?}"
    );
    let out = Command::new("psql")
        .args([
            d.url().as_str(),
            "-X",
            "-c",
            "INSERT INTO notes VALUES (0, 'shown')",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "INSERT 0 1\n",
        "{out:?}"
    );
    let end = d.waly.log_end().await;
    // A write hidden in a function is caught by its row change.
    c.batch_execute(
        "CREATE FUNCTION sneak() RETURNS void LANGUAGE sql AS $$ UPDATE accounts SET name = 'x' $$",
    )
    .await
    .unwrap();
    let e = c.query("SELECT sneak()", &[]).await.unwrap_err();
    assert_eq!(code(&e), "42501", "{e:?}");
    assert_eq!(
        d.waly.log_end().await,
        end + 1,
        "only the CREATE FUNCTION was logged"
    );

    let direct = connect(&d.direct()).await;
    let name: String = direct
        .query_one("SELECT name FROM accounts WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "Ada");

    // A schema change that rewrites a strict table's rows is DDL, not an undeclared write.
    c.batch_execute("ALTER TABLE accounts ADD COLUMN token uuid DEFAULT gen_random_uuid()")
        .await
        .expect("DDL on a strict table");
    let last = d.records().await.pop().unwrap();
    assert!(
        last.operations.is_empty()
            && last
                .changes
                .iter()
                .any(|c| matches!(c, waly::record::Change::Rewrite { rows: 1, .. })),
        "{last:?}"
    );

    // A table without a policy keeps the default: recorded as raw SQL.
    c.execute("INSERT INTO notes VALUES ($1, $2)", &[&1i32, &"hello"])
        .await
        .unwrap();
    let last = d.records().await.pop().unwrap();
    assert!(last.operations.is_empty());
    assert_eq!(last.statements[0].sql, "INSERT INTO notes VALUES ($1, $2)");
    assert_eq!(
        last.statements[0].params,
        [Some("1".into()), Some("hello".into())]
    );
}

#[tokio::test]
async fn direct_invocation_works_from_psql_and_tokio_postgres() {
    let d = Domain::example("ops_invoke");
    let url = d.url();
    let id = psql(
        &url,
        "CALL waly.create_account(email => 'ada@example.com', name => 'Ada')",
    );
    assert_eq!(id.trim(), "1", "the operation's RETURNING comes back");
    psql(
        &url,
        "CALL waly.create_account(email => 'bob@example.com', name => 'Bob', currency => 'USD')",
    );
    psql(&url, "CALL waly.deposit(account => 1, amount => 50)");

    let c = connect(&url).await;
    let row = c
        .query_one(
            "CALL waly.transfer_funds(from_account => $1, to_account => $2, amount => $3, memo => $4)",
            &[&1i64, &2i64, &Numeric("20.00"), &"books"],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "the new transfer's id");
    assert_eq!(
        balances(&c).await,
        [(1, "30.00".into()), (2, "20.00".into())]
    );

    let ops = d.operations().await;
    assert_eq!(
        ops[0].1,
        json!({"id": 1, "email": "ada@example.com", "name": "Ada", "currency": "EUR"})
    );
    assert_eq!(
        ops[2],
        ("DEPOSIT".into(), json!({"account": 1, "amount": "50"}))
    );
    assert_eq!(
        ops[3],
        (
            "TRANSFER_FUNDS".into(),
            json!({"from_account": 1, "to_account": 2, "amount": "20.00", "memo": "books", "transfer_id": 1})
        )
    );
    let records = d.records().await;
    assert_eq!(
        records.last().unwrap().statements[0].sql,
        "CALL waly.transfer_funds(from_account => $1, to_account => $2, amount => $3, memo => $4)"
    );

    let end = d.waly.log_end().await;
    let out = psql_output(&url, "CALL waly.deposit(account => 1, amount => -1)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("operation DEPOSIT (v1): parameter \"amount\" must be at least 0.01, got -1"),
        "{err}"
    );
    let e = c
        .batch_execute("CALL waly.deposit(account => 1)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "23502", "{e:?}");
    let e = c
        .batch_execute("CALL waly.withdraw_everything(account => 1)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "42883");
    assert!(
        e.as_db_error()
            .unwrap()
            .hint()
            .unwrap()
            .contains("TRANSFER_FUNDS")
    );
    let e = c
        .batch_execute("CALL waly.deposit(account => 1, amount => 5, bonus => 1)")
        .await
        .unwrap_err();
    assert!(
        message(&e).contains("parameter \"bonus\" is not a parameter of this operation"),
        "{e:?}"
    );
    assert_eq!(d.waly.log_end().await, end);
}

const CARS_V1: &str = r#"
policy: {tables: {cars: reject}}
operations:
  - name: REGISTER_CAR
    version: 1
    params:
      vin: {type: text, required: true, min_length: 17, max_length: 17}
      year: {type: integer, required: true, min: 1886}
    matches:
      - table: cars
        kind: insert
        columns: {vin: vin, year: year}
    sql: INSERT INTO cars (vin, year) VALUES (:vin, :year)
"#;

const CARS_V2: &str = r#"
operations:
  - name: REGISTER_CAR
    version: 2
    description: A car may be sold as several model years.
    params:
      vin: {type: text, required: true, min_length: 17, max_length: 17}
      years: {type: array, items: {type: integer}, required: true, min_length: 1}
      registered_by: {type: text, required: true}
    matches:
      - table: cars
        kind: insert
        columns: {vin: vin, years: years, registered_by: registered_by}
    sql: INSERT INTO cars (vin, years, registered_by) VALUES (:vin, :years, :registered_by)
    upcasters:
      - from: 1
        compute: {years: "ARRAY[:year]"}
        default: {registered_by: "import"}
        drop: [year]
"#;

#[tokio::test]
async fn a_v1_record_upcast_to_v2_replays_into_the_new_schema() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("cars-v1.yaml");
    std::fs::write(&v1, CARS_V1).unwrap();
    let db = postgres().create_db("ops_cars");
    psql(
        &postgres().url(&db),
        "CREATE TABLE cars (vin text PRIMARY KEY, year int NOT NULL)",
    );
    let mut waly = Waly::start_with(WalyOptions {
        extra_yaml: format!("operations: {}\n", v1.display()),
        ..WalyOptions::default()
    });
    let url = waly.url(&db);
    psql(&url, "INSERT INTO cars VALUES ('1HGCM82633A004352', 2019)");
    let c = connect(&url).await;
    c.execute(
        "INSERT INTO cars (vin, year) VALUES ($1, $2)",
        &[&"WVWZZZ1JZXW000001", &2003i32],
    )
    .await
    .unwrap();
    let e = c
        .batch_execute("INSERT INTO cars VALUES ('SHORT', 1999)")
        .await
        .unwrap_err();
    assert_eq!(code(&e), "22023");

    let target = postgres().create_db("ops_cars_v2");
    psql(
        &postgres().url(&target),
        "CREATE TABLE cars (vin text PRIMARY KEY, years int[] NOT NULL, registered_by text NOT NULL)",
    );
    waly.stop_gracefully(Duration::from_secs(30));
    let v2 = dir.path().join("cars-v2.yaml");
    std::fs::write(&v2, CARS_V2).unwrap();
    let replay = |extra: &[&str]| {
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_waly"))
                .args([
                    "replay",
                    "--mode",
                    "ops",
                    "--config",
                    path_str(&waly.config_path()),
                ])
                .args([
                    "--operations",
                    path_str(&v2),
                    "--target",
                    &postgres().url(&target),
                ])
                .args(waly.access.replay_args(None))
                .args(extra)
                .env("WALY_TEST_PW", PG_PASSWORD),
            "waly replay --mode ops",
        )
    };
    let out = replay(&[]);
    let rows = psql(
        &postgres().url(&target),
        "SELECT vin, years, registered_by FROM cars ORDER BY vin",
    );
    assert_eq!(
        rows, "1HGCM82633A004352|{2019}|import\nWVWZZZ1JZXW000001|{2003}|import\n",
        "{out}"
    );
    // Run again: the checkpoint in the target says everything is applied; nothing doubles.
    replay(&[]);
    assert_eq!(
        psql(&postgres().url(&target), "SELECT count(*) FROM cars"),
        "2\n"
    );
}

#[tokio::test]
async fn a_reload_under_load_loses_no_write_and_a_broken_file_keeps_the_old_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("operations.yaml");
    let example = std::fs::read_to_string(project_root().join("config/operations.yaml")).unwrap();
    std::fs::write(&file, &example).unwrap();
    let d = Domain::with_catalog("ops_reload", &file);
    let setup = connect(&d.url()).await;
    setup
        .batch_execute("CALL waly.create_account(email => 'pool@example.com', name => 'Pool')")
        .await
        .unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (d.url(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = connect(&url).await;
            let deposit = c.prepare("UPDATE accounts SET balance = balance + $1 WHERE id = $2 AND closed_at IS NULL").await.unwrap();
            let mut acknowledged = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match c.execute(&deposit, &[&Numeric("1.00"), &1i64]).await {
                    Ok(1) => acknowledged += 1,
                    other => panic!("a deposit failed during the reloads: {other:?}"),
                }
            }
            acknowledged
        }));
    }
    // Valid edits, an invalid one, and a SIGHUP, while the deposits run.
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let edited = example.replace(
            "Credits money to an open account.",
            &format!("Credits money (edit {round})."),
        );
        std::fs::write(&file, edited).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(2000)).await;
    std::fs::write(&file, example.replace("type: numeric", "type: money")).unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let pid = d.waly.child.id().to_string();
    run_ok(Command::new("kill").args(["-HUP", &pid]), "kill -HUP");
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acknowledged = 0;
    for w in workers {
        acknowledged += w.await.unwrap();
    }
    assert!(acknowledged > 0);

    let logs = d.waly.logs();
    assert!(
        logs.matches("operations catalog reloaded").count() >= 3,
        "{logs}"
    );
    assert!(
        logs.contains(&format!("{}:", file.display()))
            && logs.contains("unknown type \\\"money\\\""),
        "the refusal names file and line:\n{logs}"
    );
    assert!(
        logs.contains("operations file refused; the catalog in use stays"),
        "{logs}"
    );

    // The old catalog stayed: deposits are still DEPOSIT, and strict mode still holds.
    setup
        .execute(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2 AND closed_at IS NULL",
            &[&Numeric("1.00"), &1i64],
        )
        .await
        .unwrap();
    let ops = d.operations().await;
    let deposits = ops.iter().filter(|(n, _)| n == "DEPOSIT").count() as u64;
    assert_eq!(
        deposits,
        acknowledged + 1,
        "every acknowledged deposit is in the log as DEPOSIT"
    );
    let direct = connect(&d.direct()).await;
    let balance: String = direct
        .query_one("SELECT balance::text FROM accounts WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(balance, format!("{}.00", acknowledged + 1));
}
