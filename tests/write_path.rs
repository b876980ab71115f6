//! The write-ahead path through `waly serve`, as a user sees it: workloads run through waly with real
//! clients (psql, tokio-postgres, pgbench); afterwards the log alone, replayed into an empty database with
//! `waly replay`, must give the same `pg_dump` of the application's schemas (DESIGN.md invariant 4), and
//! the log must hold one record per committed write transaction and nothing for reads or failures.

mod support;

use std::process::Command;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use support::*;
use waly::record::{Change, CommitKind};

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A database served by its own waly.
struct Served {
    waly: Waly,
    db: TestDb,
}

impl Served {
    fn new(prefix: &str) -> Served {
        let db = postgres().create_db(prefix);
        Served {
            waly: Waly::start(),
            db,
        }
    }

    fn url(&self) -> String {
        self.waly.url(&self.db)
    }

    /// Stops waly, replays its whole log into a new empty database and asserts both dump the same.
    fn assert_replay_equals_live(mut self) -> String {
        self.waly.terminate();
        self.waly
            .wait_exit(Duration::from_secs(30))
            .expect("waly stops on SIGTERM");
        let target = postgres().create_db("replayed");
        let out = self.waly.replay_into(&postgres().url(&target));
        let (live, replayed) = (
            dump_app(&postgres().url(&self.db)),
            dump_app(&postgres().url(&target)),
        );
        assert!(
            live.contains("COPY "),
            "the live dump holds no data:\n{live}"
        );
        assert_same_dump(&live, &replayed);
        out
    }
}

/// The first column of `sql`'s rows, as integers.
async fn ints(c: &Client, sql: &str) -> Vec<i32> {
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn psql_script(url: &str, script: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=0", "-d", url, "-c", script])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// psql with `args` after the connection, `env` set, stopping at the first error; panics if it fails.
fn psql_with(url: &str, args: &[&str], env: &[(&str, &str)]) {
    let out = Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn inserts_into(records: &[waly::record::Record], table: &str) -> usize {
    records
        .iter()
        .flat_map(|r| &r.changes)
        .filter(|c| matches!(c, Change::Insert { table: t, .. } if t == table))
        .count()
}

#[tokio::test]
async fn a_mixed_workload_through_waly_rebuilds_exactly() {
    let s = Served::new("wp_mixed");
    let url = s.url();
    // Schema through waly: it is in the log too, so the target starts empty.
    psql(
        &url,
        "create extension if not exists pgcrypto;
         create table customers (id serial primary key, email text unique not null,
                                 uid uuid not null default gen_random_uuid(), joined timestamptz default now());
         create table orders (id bigint generated always as identity primary key,
                              customer int not null references customers on delete cascade,
                              total numeric(12,2) not null, placed timestamptz not null default clock_timestamp());
         create table audit (id bigserial primary key, what text not null, at timestamptz default now());
         create function audit_order() returns trigger language plpgsql as $$
           begin insert into audit (what) values (tg_op || ' order ' || coalesce(new.id, old.id)); return coalesce(new, old); end $$;
         create trigger orders_audit after insert or update or delete on orders for each row execute function audit_order();
         create table parent (id int primary key);
         create table child (id int primary key, parent int references parent deferrable initially deferred);
         create function place_order(c int, amount numeric) returns bigint language sql as
           $$ insert into orders (customer, total) values (c, amount) returning id $$;",
    );

    // Autocommit writes, simple protocol.
    psql(
        &url,
        "insert into customers (email) values ('a@x'), ('b@x'), ('c@x');",
    );
    // Explicit transactions, savepoints, ROLLBACK TO, a failing statement, ROLLBACK.
    let out = psql_script(
        &url,
        "begin;
         insert into orders (customer, total) values (1, 10.50), (2, 20.25);
         savepoint s1;
         insert into orders (customer, total) values (3, 99.99);
         rollback to savepoint s1;
         update orders set total = total + 1 where customer = 1;
         commit;
         begin;
         insert into orders (customer, total) values (1, 5);
         insert into customers (email) values ('a@x');
         commit;
         begin;
         insert into orders (customer, total) values (2, 7);
         rollback;",
    );
    assert!(out.contains("duplicate key"), "{out}");
    // Deferred constraints satisfied at COMMIT; a multi-statement string with COMMIT inside.
    psql(
        &url,
        "begin; insert into child values (1, 1); insert into parent values (1); commit; insert into parent values (2);",
    );
    // ON DELETE CASCADE, TRUNCATE, COPY FROM, DDL between writes.
    psql(&url, "delete from customers where email = 'b@x';");
    psql(
        &url,
        "alter table customers add column vip boolean not null default false;
         update customers set vip = true where email = 'c@x';",
    );
    let copy = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-d",
            &url,
            "-c",
            "\\copy customers (email) from stdin",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"d@x\ne@x\nf@x\n")?;
            child.wait()
        })
        .expect("psql \\copy");
    assert!(copy.success());
    psql(
        &url,
        "create table scratch (n int); insert into scratch select generate_series(1, 50); truncate scratch; insert into scratch values (7);",
    );

    // A write hidden in a function called from SELECT, in autocommit.
    psql(&url, "select place_order(3, 42);");

    // The extended protocol: prepared statements with parameters, autocommit and in a transaction.
    let mut c = connect(&url).await;
    let insert = c
        .prepare("insert into orders (customer, total) values ($1, $2::text::numeric)")
        .await
        .unwrap();
    c.execute(&insert, &[&3i32, &"1.01"]).await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute(&insert, &[&1i32, &"2.02"]).await.unwrap();
    tx.execute(
        "update customers set vip = $1 where id = $2",
        &[&true, &1i32],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let tx = c.transaction().await.unwrap();
    tx.execute(&insert, &[&1i32, &"3.03"]).await.unwrap();
    tx.rollback().await.unwrap();
    // A rolled-back insert advances sequences without a record; the next committed insert into the same
    // tables carries their positions (docs/record.md: a rollback after the last one is not visible).
    c.execute(&insert, &[&3i32, &"4.04"]).await.unwrap();

    let records = s.waly.records().await;
    // Every record's statements and session are filled in.
    assert!(
        records
            .iter()
            .all(|r| r.session.database == s.db && !r.txid.is_empty())
    );
    // tokio-postgres binds in binary: 3 as int4 and "1.01" as numeric; both are recorded as their text.
    let prepared = records.iter().flat_map(|r| &r.statements).find(|st| {
        st.sql
            .starts_with("insert into orders (customer, total) values ($1")
            && st.params == vec![Some("3".to_owned()), Some("1.01".to_owned())]
    });
    assert!(prepared.is_some(), "bind parameters are recorded");
    // Rolled-back and failed work left no trace: 2 (first transaction) + 1 (from SELECT) + 2 (prepared,
    // autocommit) + 1 (prepared, in a transaction).
    assert_eq!(inserts_into(&records, "orders"), 6, "orders logged");
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn reads_and_failures_leave_the_log_as_it_was() {
    let s = Served::new("wp_reads");
    let url = s.url();
    psql(
        &url,
        "create table t (id int primary key, v text); insert into t values (1, 'one');",
    );
    let before = s.waly.log_end().await;
    let c = connect(&url).await;
    // Reads in every form, and a read-only transaction.
    c.query("select * from t", &[]).await.unwrap();
    c.simple_query("select count(*) from t; show search_path")
        .await
        .unwrap();
    c.batch_execute("begin; select * from t for update; commit")
        .await
        .unwrap();
    c.batch_execute("begin read only; select 1; commit")
        .await
        .unwrap();
    // Failures: a duplicate key in autocommit, an error inside a transaction, a failing COMMIT.
    let dup = c
        .execute("insert into t values (1, 'again')", &[])
        .await
        .unwrap_err();
    assert_eq!(dup.code().unwrap().code(), "23505");
    c.batch_execute("begin; insert into t values (2, 'two')")
        .await
        .unwrap();
    assert!(c.batch_execute("select 1/0").await.is_err());
    c.batch_execute("commit").await.unwrap(); // Postgres answers ROLLBACK
    assert_eq!(
        s.waly.log_end().await,
        before,
        "reads and failures logged nothing"
    );
    let rows = c.query("select id from t order by id", &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn a_deferred_constraint_fails_at_commit_with_its_own_error() {
    let s = Served::new("wp_deferred");
    let url = s.url();
    psql(
        &url,
        "create table p (id int primary key);
         create table c (id int primary key, p int references p deferrable initially deferred);
         insert into p values (1);",
    );
    let before = s.waly.log_end().await;
    let c = connect(&url).await;
    c.batch_execute("begin; insert into c values (1, 99)")
        .await
        .unwrap();
    let err = c.batch_execute("commit").await.unwrap_err();
    let db = err.as_db_error().expect("a Postgres error");
    assert_eq!(db.code().code(), "23503", "{db:?}");
    assert!(db.message().contains("foreign key"), "{}", db.message());
    // The session is usable and outside a transaction; nothing was logged or committed.
    c.batch_execute("insert into c values (2, 1)")
        .await
        .unwrap();
    let ids = ints(&c, "select id from c").await;
    assert_eq!(ids, vec![2]);
    assert_eq!(s.waly.log_end().await, before + 1);
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn a_transaction_of_100000_rows_is_one_record() {
    let s = Served::new("wp_big");
    let url = s.url();
    psql(&url, "create table big (id int primary key, body text);");
    let before = s.waly.log_end().await;
    psql(
        &url,
        "begin; insert into big select g, md5(g::text) from generate_series(1, 100000) g; commit;",
    );
    let records = s.waly.records().await;
    assert_eq!(records.len() as u64, before + 1);
    assert_eq!(inserts_into(&records, "big"), 100_000);
    s.assert_replay_equals_live();
}

/// A cursor declared WITH HOLD runs its query again when its transaction commits, after waly read the
/// capture: a write it makes there fails the COMMIT (0A000) instead of being committed unlogged. A WITH
/// HOLD cursor over a query that does not write works as it does directly.
#[tokio::test]
async fn writes_a_with_hold_cursor_makes_at_commit_are_refused() {
    let s = Served::new("wp_with_hold");
    let url = s.url();
    psql(
        &url,
        "create table hold_t (id int primary key);
         create table counter (id int primary key, n int);
         insert into counter values (1, 0);
         create function put(i int) returns int language sql as
           $$ insert into hold_t values (i) returning i $$;
         create function bump() returns int language sql as
           $$ update counter set n = n + 1 returning n $$;",
    );
    let c = connect(&url).await;
    let before = s.waly.log_end().await;
    let refused = |e: tokio_postgres::Error| {
        let db = e.as_db_error().expect("a Postgres error").clone();
        assert_eq!(db.code().code(), "0A000", "{db:?}");
        assert!(
            db.message().contains("while the transaction commits"),
            "{}",
            db.message()
        );
        assert!(db.hint().is_some_and(|h| h.contains("WITH HOLD")), "{db:?}");
    };
    // In autocommit, the whole query runs at the statement's own COMMIT.
    refused(
        c.batch_execute(
            "declare c1 cursor with hold for select put(g) from generate_series(1, 3) g",
        )
        .await
        .unwrap_err(),
    );
    // In a transaction block: fetched rows are captured; the rest of the query, run at COMMIT, is
    // refused.
    c.batch_execute(
        "begin; declare c2 cursor with hold for select bump() from generate_series(1, 3);
         fetch 1 from c2",
    )
    .await
    .unwrap();
    refused(c.batch_execute("commit").await.unwrap_err());
    let counts = c
        .query_one(
            "select (select count(*) from hold_t), (select n from counter)",
            &[],
        )
        .await
        .expect("the session survives");
    assert_eq!(
        (counts.get::<_, i64>(0), counts.get::<_, i32>(1)),
        (0, 0),
        "nothing was committed"
    );
    assert_eq!(s.waly.log_end().await, before, "nothing was logged");
    // A WITH HOLD cursor that only reads outlives its transaction, as directly.
    c.batch_execute("insert into hold_t values (7)")
        .await
        .unwrap();
    c.batch_execute("declare c3 cursor with hold for select id from hold_t")
        .await
        .unwrap();
    let held = c.query_one("fetch all from c3", &[]).await.unwrap();
    assert_eq!(held.get::<_, i32>(0), 7);
    c.batch_execute("close c3").await.unwrap();
    s.assert_replay_equals_live();
}

/// A transaction whose record exceeds the file log's limit (`log.file.max_record_bytes`, lowered here)
/// is rolled back with 54000 and a hint that says what to do; the session goes on, and smaller ones are
/// logged.
#[tokio::test]
async fn a_record_over_the_logs_limit_rolls_back_with_54000() {
    let db = postgres().create_db("wp_record_limit");
    let waly = Waly::start_with(WalyOptions {
        extra_yaml: "log:\n  file:\n    max_record_bytes: 65536\n".into(),
        kafka: None,
        ..WalyOptions::default()
    });
    let c = connect(&waly.url(&db)).await;
    c.batch_execute("create table wide (id int primary key, body text)")
        .await
        .unwrap();
    let before = waly.log_end().await;
    let err = c
        .batch_execute(
            "insert into wide select g, repeat('x', 100) from generate_series(1, 2000) g",
        )
        .await
        .unwrap_err();
    let db_error = err.as_db_error().expect("a Postgres error");
    assert_eq!(db_error.code().code(), "54000", "{db_error:?}");
    assert!(
        db_error
            .message()
            .contains("exceeds the log's limit of 65536 bytes"),
        "{}",
        db_error.message()
    );
    assert!(
        db_error
            .hint()
            .is_some_and(|h| h.contains("split the transaction")),
        "{db_error:?}"
    );
    assert_eq!(waly.log_end().await, before, "nothing was logged");
    let rows: i64 = c
        .query_one("select count(*) from wide", &[])
        .await
        .expect("the session goes on")
        .get(0);
    assert_eq!(rows, 0, "nothing was committed");
    c.batch_execute("insert into wide select g, 'small' from generate_series(1, 10) g")
        .await
        .unwrap();
    assert_eq!(waly.log_end().await, before + 1);
}

/// Runs `sql` and checks that waly refused it: 0A000, waly's message, a hint.
async fn assert_refused_by_waly(c: &tokio_postgres::Client, sql: &str) {
    let err = c.batch_execute(sql).await.unwrap_err();
    let db = err.as_db_error().expect("a Postgres error");
    assert_eq!(db.code().code(), "0A000", "{sql}: {db:?}");
    assert!(
        db.message().starts_with("waly does not"),
        "{}",
        db.message()
    );
    assert!(db.hint().is_some());
}

/// Transactions left prepared in the session's database.
async fn prepared_transactions(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "select count(*) from pg_prepared_xacts where database = current_database()",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

#[tokio::test]
async fn statements_that_would_bypass_the_log_are_refused_clearly() {
    let s = Served::new("wp_refused");
    let url = s.url();
    psql(&url, "create table t (id int primary key);");
    let c = connect(&url).await;
    for sql in [
        "begin; insert into t values (1); prepare transaction 'mine'",
        "set session_replication_role = replica",
        "commit prepared 'waly_x_1'",
    ] {
        assert_refused_by_waly(&c, sql).await;
        let _ = c.batch_execute("rollback").await;
    }
    c.batch_execute("insert into t values (2)").await.unwrap();
    assert_eq!(
        c.query_one("select count(*) from t", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
    assert_eq!(prepared_transactions(&c).await, 0);
}

/// A sequence used on its own (an ORM's id generator, a restored dump's setval) moves without a row of
/// any table changing: its position is recorded from the nextval()/setval() calls the statements make.
/// One a column default draws from is recorded with the table's inserts.
#[tokio::test]
async fn sequences_named_in_nextval_and_setval_rebuild_to_their_live_positions() {
    let s = Served::new("wp_named_sequences");
    let url = s.url();
    psql(
        &url,
        "create sequence hibernate_sequence; create sequence \"Odd\"; create sequence later_seq;
         create table item (id bigint primary key, v text);",
    );
    let c = connect(&url).await;
    let before = s.waly.log_end().await;
    c.batch_execute("select nextval('hibernate_sequence'), nextval('hibernate_sequence')")
        .await
        .unwrap();
    let records = s.waly.records().await;
    assert_eq!(
        records.len() as u64,
        before + 1,
        "a nextval() alone is logged"
    );
    assert!(
        records.last().unwrap().changes.iter().any(|c| matches!(c,
            Change::Sequence { name, last_value: 2, is_called: true, .. } if name == "hibernate_sequence")),
        "{:?}",
        records.last()
    );
    // Extended protocol, inside a transaction with a row of its own.
    c.batch_execute("begin").await.unwrap();
    let id: i64 = c
        .query_one("select nextval('hibernate_sequence')", &[])
        .await
        .unwrap()
        .get(0);
    c.execute("insert into item values ($1, 'a')", &[&id])
        .await
        .unwrap();
    c.batch_execute("commit").await.unwrap();
    c.batch_execute(
        "select setval('\"Odd\"', 41); select pg_catalog.setval('later_seq', 7, false)",
    )
    .await
    .unwrap();
    // A spilled capture (DDL in the transaction) records them too.
    c.batch_execute("begin; create table other (id int); select nextval('\"Odd\"'); commit")
        .await
        .unwrap();
    // A sequence a column default draws from moves with the table's inserts, as an owned one does.
    c.batch_execute(
        "create sequence shared_seq start 100;
         create table doc (id bigint primary key default nextval('shared_seq'), v text);
         insert into doc (v) values ('a'), ('b');
         alter table item alter column id set default nextval('shared_seq');",
    )
    .await
    .unwrap();
    c.batch_execute("insert into item (v) values ('c')")
        .await
        .unwrap();
    // A setval that moves a sequence back is replayed as it was: a table emptied and its ids reset (an
    // owned sequence, named as a literal or through pg_get_serial_sequence), a standalone one reset.
    c.batch_execute(
        "create table ser (id serial primary key, v text);
         insert into ser (v) select 'x' from generate_series(1, 5);
         create table big (id bigserial primary key);
         insert into big select from generate_series(1, 9);",
    )
    .await
    .unwrap();
    c.batch_execute(
        "delete from ser; select setval('ser_id_seq', 1, false);
         select setval('hibernate_sequence', 1, false);",
    )
    .await
    .unwrap();
    c.batch_execute("insert into ser (v) values ('y')")
        .await
        .unwrap();
    c.batch_execute(
        "begin; delete from big where id > 2;
         select setval(pg_get_serial_sequence('big', 'id'), max(id)) from big;
         insert into big default values; commit;",
    )
    .await
    .unwrap();
    let live: (i64, i64, i64) = {
        let row = c
            .query_one(
                "select (select last_value from ser_id_seq), (select last_value from big_id_seq),
                        (select last_value from hibernate_sequence)",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(live, (1, 3, 1), "the sequences were moved back");
    s.assert_replay_equals_live();
}

/// Large objects live in pg_largeobject, which no capture trigger sees: writing one is refused, in SQL and
/// through libpq's large-object API (FunctionCall messages, psql's \lo_import); reading one works.
#[tokio::test]
async fn large_object_writes_are_refused_and_reads_work() {
    let s = Served::new("wp_large_objects");
    let url = s.url();
    let direct = postgres().url(&s.db);
    psql(&url, "create table t (id int primary key);");
    let c = connect(&url).await;
    let before = s.waly.log_end().await;
    for sql in [
        "select lo_from_bytea(0, 'hidden')",
        "select pg_catalog.lo_create(0)",
        "begin; insert into t values (1); select lo_import('/etc/hostname')",
    ] {
        assert_refused_by_waly(&c, sql).await;
        let _ = c.batch_execute("rollback").await;
    }
    // As any failed statement, the refusal aborts the transaction it is in.
    c.batch_execute("begin; insert into t values (2)")
        .await
        .unwrap();
    assert_refused_by_waly(&c, "select lo_unlink(1)").await;
    let err = c
        .batch_execute("insert into t values (3)")
        .await
        .unwrap_err();
    assert_eq!(err.code().unwrap().code(), "25P02", "{err:?}");
    c.batch_execute("rollback").await.unwrap();

    // psql's \lo_import goes through libpq's lo_creat/lo_open/lowrite FunctionCall messages.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"large object bytes").unwrap();
    let out = Command::new("psql")
        .args(["-X", "-d", &url, "-c"])
        .arg(format!("\\lo_import {}", path_str(file.path())))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("waly does not log large objects"),
        "{out:?}"
    );

    let d = connect(&direct).await;
    let none: i64 = d
        .query_one("select count(*) from pg_largeobject_metadata", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(none, 0, "no large object was created");
    assert_eq!(s.waly.log_end().await, before, "nothing was logged");

    // One made behind waly's back reads through it, in SQL and with \lo_export.
    let oid: u32 = d
        .query_one("select lo_from_bytea(0, 'readable')", &[])
        .await
        .unwrap()
        .get(0);
    let bytes: Vec<u8> = c
        .query_one("select lo_get($1)", &[&oid])
        .await
        .unwrap()
        .get(0);
    assert_eq!(bytes, b"readable");
    let exported = file.path().with_extension("out");
    let out = Command::new("psql")
        .args(["-X", "-d", &url, "-c"])
        .arg(format!("\\lo_export {oid} {}", path_str(&exported)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&exported).unwrap(), b"readable");
    d.batch_execute(&format!("select lo_unlink({oid})"))
        .await
        .unwrap();
    let _ = std::fs::remove_file(exported);
}

/// Temporary tables: writes to them alone commit without a record; a session that has them still gets
/// its logged writes logged, and so does a transaction that mixes both (with `commit_protocol:
/// two-phase`, Postgres cannot prepare it, so it commits directly).
#[tokio::test]
async fn sessions_with_temporary_tables_keep_working() {
    let s = Served::new("wp_temp");
    let url = s.url();
    psql(&url, "create table t (id int primary key, v text);");
    let c = connect(&url).await;
    let before = s.waly.log_end().await;
    c.batch_execute("create temp table scratch (x int); insert into scratch values (1)")
        .await
        .unwrap();
    c.batch_execute("begin; insert into scratch values (2); update scratch set x = x + 10; commit")
        .await
        .unwrap();
    assert_eq!(
        s.waly.log_end().await,
        before,
        "temporary rows are not logged"
    );
    c.batch_execute("insert into t values (1, 'a')")
        .await
        .unwrap();
    c.batch_execute("begin; update t set v = 'b' where id = 1; select * from t for update; commit")
        .await
        .unwrap();
    assert_eq!(s.waly.log_end().await, before + 2);
    c.batch_execute("begin; insert into scratch values (3); insert into t values (2, 'c'); commit")
        .await
        .unwrap();
    let records = s.waly.records().await;
    assert_eq!(
        records.len() as u64,
        before + 3,
        "the mixed transaction is logged"
    );
    let last = records.last().unwrap();
    assert_eq!(
        last.commit,
        CommitKind::Direct,
        "Postgres cannot prepare a transaction that used temporary objects: it commits directly"
    );
    assert_eq!(
        last.row_changes(),
        1,
        "only the logged table's row: {last:?}"
    );
    let rows: Vec<(i32, String)> = c
        .query("select id, v from t order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(1, "b".to_owned()), (2, "c".to_owned())]);
    let scratch: i64 = c
        .query_one("select sum(x) from scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(scratch, 11 + 12 + 3);
    assert_eq!(prepared_transactions(&c).await, 0);
    s.assert_replay_equals_live();
}

/// A transaction's row changes wait for COMMIT in transaction-local settings (`waly.*`): RESET ALL and
/// SET waly.* would discard them, so waly refuses them where a transaction is under way, and lets RESET
/// ALL through where none is (connection pools run it between transactions).
#[tokio::test]
async fn resetting_the_capture_buffer_is_refused_inside_transactions() {
    let s = Served::new("wp_reset_all");
    let url = s.url();
    psql(&url, "create table t (id int primary key, v text);");
    let c = connect(&url).await;
    let before = s.waly.log_end().await;
    let refused = async |sql: &str| assert_refused_by_waly(&c, sql).await;
    // Inside a transaction block, in the middle of its writes.
    c.batch_execute("begin; insert into t values (1, 'a')")
        .await
        .unwrap();
    refused("reset all").await;
    c.batch_execute("rollback").await.unwrap();
    // Beside a write in one query string (which waly runs as one transaction).
    refused("insert into t values (2, 'b'); reset all").await;
    // waly's own parameters, anywhere.
    refused("set waly.capture = ''").await;
    c.batch_execute("begin; insert into t values (3, 'c')")
        .await
        .unwrap();
    refused("set local waly.capture to ''").await;
    c.batch_execute("rollback").await.unwrap();
    assert_eq!(s.waly.log_end().await, before, "nothing was logged");

    // Outside a transaction, RESET ALL works as in Postgres, in its own string or with reads; writes
    // after it are logged whole.
    c.batch_execute("set application_name = 'resetting'; reset all; select 1; reset all")
        .await
        .unwrap();
    c.batch_execute(
        "begin; insert into t values (4, 'd'); update t set v = 'e' where id = 4; commit",
    )
    .await
    .unwrap();
    let records = s.waly.records().await;
    assert_eq!(records.len() as u64, before + 1);
    assert_eq!(records.last().unwrap().changes.len(), 2);
    let count: i64 = c
        .query_one("select count(*) from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn records_carry_the_application_name_the_session_has_at_commit() {
    let s = Served::new("wp_app_name");
    psql(&s.url(), "create table t (id int primary key);");
    let c = connect(&format!("{}?application_name=checkout", s.url())).await;
    let before = s.waly.log_end().await as usize;
    let steps = [
        // As given at connection.
        ("insert into t values (1)", Some("checkout")),
        // SET, in its own statement and beside the write it names.
        (
            "set application_name = 'billing'; insert into t values (2)",
            Some("billing"),
        ),
        ("insert into t values (3)", Some("billing")),
        // SET LOCAL for one transaction, undone at its end (Postgres reports the undoing after waly's
        // own COMMIT PREPARED).
        (
            "begin; set local application_name = 'nightly-batch'; insert into t values (4); commit",
            Some("nightly-batch"),
        ),
        ("insert into t values (5)", Some("billing")),
        // A SET rolled back with its transaction.
        (
            "begin; set application_name = 'rolled-back'; rollback; insert into t values (6)",
            Some("billing"),
        ),
        // Emptied, then back to the connection's.
        ("set application_name = ''; insert into t values (7)", None),
        (
            "reset application_name; insert into t values (8)",
            Some("checkout"),
        ),
    ];
    for (sql, _) in &steps {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let records = s.waly.records().await;
    let names: Vec<Option<&str>> = records[before..]
        .iter()
        .map(|r| r.session.application_name.as_deref())
        .collect();
    let expected: Vec<Option<&str>> = steps.iter().map(|(_, name)| *name).collect();
    assert_eq!(names, expected, "application_name per record, in order");
    // What Postgres itself reports to the client.
    let shown: String = c
        .query_one("select current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "checkout");
}

#[tokio::test]
async fn pgbench_tpcb_like_at_8_clients_rebuilds_exactly() {
    let s = Served::new("wp_pgbench");
    let url = s.url();
    run_ok(
        Command::new("pgbench").args(["-i", "-s", "1", "-q", &url]),
        "pgbench -i through waly",
    );
    let out = run_ok(
        Command::new("pgbench").args([
            "-c", "8", "-j", "2", "-T", "8", "-M", "prepared", "-n", &url,
        ]),
        "pgbench tpcb-like through waly",
    );
    let processed: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{out}"));
    assert!(processed > 0);
    assert!(out.contains("number of failed transactions: 0"), "{out}");
    let records = s.waly.records().await;
    assert_eq!(
        inserts_into(&records, "pgbench_history") as u64,
        processed,
        "one logged history row per acknowledged transaction"
    );
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn statements_outside_a_transaction_block_are_logged_after_the_fact() {
    let s = Served::new("wp_concurrently");
    let url = s.url();
    psql(
        &url,
        "create table t (id int primary key, v int); insert into t values (1, 10);",
    );
    let before = s.waly.log_end().await;
    // CREATE INDEX CONCURRENTLY cannot run in a transaction block, so waly cannot wrap or prepare it: its
    // DDL is logged right after it commits.
    psql(&url, "create index concurrently t_v on t (v);");
    psql(&url, "vacuum t;");
    let records = s.waly.records().await;
    assert_eq!(
        records.len() as u64,
        before + 1,
        "one record for the index, none for VACUUM"
    );
    let last = records.last().unwrap();
    assert!(
        matches!(&last.changes[..], [Change::Ddl { tag, .. }] if tag == "CREATE INDEX"),
        "{:?}",
        last.changes
    );
    // DETACH PARTITION CONCURRENTLY is another (and replay runs it as a plain DETACH).
    psql(
        &url,
        "create table p (id int, k int, primary key (id, k)) partition by list (k);
         create table p0 partition of p for values in (0);
         create table p1 partition of p for values in (1);
         insert into p values (1, 0), (2, 1);",
    );
    psql(&url, "alter table p detach partition p1 concurrently;");
    let last = s.waly.records().await.pop().unwrap();
    assert!(
        matches!(&last.changes[..], [Change::Ddl { sql, .. }, ..] if sql.contains("detach partition p1 concurrently")),
        "{:?}",
        last.changes
    );
    psql(&url, "insert into p1 values (3, 1)");
    let c = connect(&url).await;
    let left: i64 = c
        .query_one("select count(*) from waly.capture", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "nothing left behind in the capture");
    s.assert_replay_equals_live();
}

/// A transaction pipelined in one extended-protocol batch (BEGIN, INSERT, COMMIT, then an autocommit
/// INSERT, one Sync), also split across TCP writes and with a Flush before the Sync: the client sees what
/// Postgres would send, and every committed row is logged (a COMMIT is never passed to Postgres before its
/// batch is complete).
#[tokio::test]
async fn a_transaction_pipelined_in_one_batch_is_logged_and_answered_like_postgres() {
    use support::raw::{RawClient, extended, shape, sync};
    let s = Served::new("wp_pipelined");
    psql(&s.url(), "create table t (id int primary key);");
    let direct_db = postgres().create_db("wp_pipelined_direct");
    psql(
        &postgres().url(&direct_db),
        "create table t (id int primary key);",
    );
    let batch = |base: i32| {
        [
            extended("begin"),
            extended(&format!("insert into t values ({base})")),
            extended("commit"),
            extended(&format!("insert into t values ({})", base + 1)),
        ]
        .concat()
    };
    let flush = [b'H', 0, 0, 0, 4];
    let mut shapes = Vec::new();
    for (port, db) in [
        (postgres().port, direct_db.as_str()),
        (s.waly.port, s.db.as_str()),
    ] {
        let mut c = RawClient::connect(port, db, PG_PASSWORD);
        // Whole, in one write.
        c.send(&[batch(10), sync()].concat());
        let whole = shape(&c.recv_until_ready(1));
        // The same split across two writes, the Sync after a pause.
        c.send(&batch(20));
        std::thread::sleep(Duration::from_millis(200));
        c.send(&sync());
        let split = shape(&c.recv_until_ready(1));
        // With a Flush: the replies up to the last INSERT's CommandComplete arrive before the Sync.
        c.send(&[batch(30), flush.to_vec()].concat());
        let mut flushed = Vec::new();
        while flushed
            .iter()
            .filter(|m: &&support::raw::Msg| m.tag == b'C')
            .count()
            < 4
        {
            flushed.push(c.recv().expect("a reply before the Sync"));
        }
        c.send(&sync());
        flushed.extend(c.recv_until_ready(1));
        // One statement per batch, as pgbench -M prepared and JDBC send them: COMMIT alone before its
        // Sync (waly answers that Sync itself), then a COMMIT that fails (a duplicate key).
        let mut alone = Vec::new();
        for sql in [
            "begin".to_owned(),
            "insert into t values (40)".to_owned(),
            "commit".to_owned(),
            "begin".to_owned(),
            "insert into t values (40)".to_owned(),
            "commit".to_owned(),
        ] {
            c.send(&[extended(&sql), sync()].concat());
            alone.extend(c.recv_until_ready(1));
        }
        shapes.push((whole, split, shape(&flushed), shape(&alone)));
    }
    assert_eq!(shapes[0], shapes[1], "direct vs waly");
    let records = s.waly.records().await;
    assert_eq!(
        inserts_into(&records, "t"),
        7,
        "every committed row is logged"
    );
    s.assert_replay_equals_live();
}

/// The ids inserted into `table` by the records, in log order.
fn inserted_ids(records: &[waly::record::Record], table: &str) -> Vec<i64> {
    records
        .iter()
        .flat_map(|r| &r.changes)
        .filter_map(|c| match c {
            Change::Insert { table: t, new, .. } if t == table => {
                let row: serde_json::Value = serde_json::from_str(new.get()).unwrap();
                row["id"].as_i64()
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn writes_after_a_rollback_in_the_same_query_string_or_batch_are_logged() {
    use support::raw::{RawClient, extended, shape, sync};
    let s = Served::new("wp_rollback_then_write");
    psql(&s.url(), "create table t (id int primary key);");
    let direct_db = postgres().create_db("wp_rollback_then_write_direct");
    psql(
        &postgres().url(&direct_db),
        "create table t (id int primary key);",
    );
    // Postgres runs what follows a ROLLBACK in a query string (or a batch) in a transaction of its own,
    // committed at the end of the string (or at the Sync).
    let strings = [
        "begin; insert into t values (1); rollback; insert into t values (2)",
        "rollback; insert into t values (3)",
        "begin; select 1; abort; insert into t values (4); insert into t values (5)",
    ];
    let batch = [
        extended("begin"),
        extended("insert into t values (6)"),
        extended("rollback"),
        extended("insert into t values (7)"),
        sync(),
    ]
    .concat();
    let mut shapes = Vec::new();
    for (port, db) in [
        (postgres().port, direct_db.as_str()),
        (s.waly.port, s.db.as_str()),
    ] {
        let mut c = RawClient::connect(port, db, PG_PASSWORD);
        let mut replies = Vec::new();
        for sql in strings {
            c.send(&support::raw::query(sql));
            replies.push(shape(&c.recv_until_ready(1)));
        }
        // Inside a transaction: ROLLBACK ends the client's transaction, the INSERT gets its own.
        c.send(&support::raw::query("begin; insert into t values (8)"));
        replies.push(shape(&c.recv_until_ready(1)));
        c.send(&support::raw::query("rollback; insert into t values (9)"));
        replies.push(shape(&c.recv_until_ready(1)));
        c.send(&batch);
        replies.push(shape(&c.recv_until_ready(1)));
        shapes.push(replies);
    }
    assert_eq!(shapes[0], shapes[1], "direct vs waly, reply by reply");
    let live: Vec<i64> = connect(&postgres().url(&s.db))
        .await
        .query("select id::int8 from t order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(live, [2, 3, 4, 5, 7, 9], "what Postgres committed");
    let records = s.waly.records().await;
    assert_eq!(
        inserted_ids(&records, "t"),
        [2, 3, 4, 5, 9, 7],
        "every committed row is logged in commit order, nothing rolled back is"
    );
    s.assert_replay_equals_live();
}

/// SERIALIZABLE write skew: the second transaction to commit fails at COMMIT with 40001, as it would on
/// Postgres. Its record was already in the log (direct commit) or its PREPARE failed first (two-phase):
/// either way no reader acts on it, the first transaction's record stands, and replay equals live.
#[tokio::test]
async fn a_serialization_failure_at_commit_leaves_no_committed_record() {
    let s = Served::new("wp_serial");
    let url = s.url();
    psql(
        &url,
        "create table duty (doctor text primary key, on_call bool not null);
         insert into duty values ('alice', true), ('bob', true);",
    );
    let (a, b) = (connect(&url).await, connect(&url).await);
    let before = s.waly.log_end().await;
    for c in [&a, &b] {
        c.batch_execute("begin isolation level serializable")
            .await
            .unwrap();
        let on_call: i64 = c
            .query_one("select count(*) from duty where on_call", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(on_call, 2);
    }
    a.batch_execute("update duty set on_call = false where doctor = 'alice'")
        .await
        .unwrap();
    b.batch_execute("update duty set on_call = false where doctor = 'bob'")
        .await
        .unwrap();
    a.batch_execute("commit")
        .await
        .expect("the first commit wins");
    let err = b
        .batch_execute("commit")
        .await
        .expect_err("write skew under SERIALIZABLE fails the second commit");
    let db = err.as_db_error().expect("a Postgres error");
    assert_eq!(db.code().code(), "40001", "{db:?}");
    assert!(
        db.message().contains("could not serialize"),
        "Postgres' own message: {db:?}"
    );
    b.batch_execute("select 1")
        .await
        .expect("the session survives the failed commit");

    let records = s.waly.records().await;
    assert_eq!(
        records.len() as u64,
        before + 1,
        "only the winner is a committed record"
    );
    let winner = records.last().unwrap();
    assert_eq!(winner.row_changes(), 1, "{winner:?}");
    assert!(
        format!("{:?}", winner.changes).contains("alice"),
        "the winner's row change: {winner:?}"
    );
    let aborted = s.waly.aborted().await;
    if two_phase() {
        assert!(
            aborted.is_empty(),
            "a failed PREPARE appends nothing: {aborted:?}"
        );
    } else {
        assert_eq!(
            aborted.len(),
            1,
            "the loser's record is decided as not committed: {aborted:?}"
        );
    }
    let on_call: Vec<String> = a
        .query("select doctor from duty where on_call order by doctor", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(on_call, vec!["bob".to_owned()]);
    assert_eq!(prepared_transactions(&a).await, 0);
    s.assert_replay_equals_live();
}

/// A Postgres with prepared transactions disabled (`max_prepared_transactions = 0`, its default) works
/// behind waly with either commit protocol: every transaction commits directly, explicit, autocommit and
/// failing ones alike, and the log rebuilds the database.
#[tokio::test]
async fn postgres_without_prepared_transactions_commits_directly() {
    let pg = PrivatePostgres::start("waly-wp-noprepare-");
    psql(
        &pg.url("postgres"),
        "ALTER SYSTEM SET max_prepared_transactions = 0",
    );
    pg.pg_sh("stop");
    pg.pg_sh("start");
    let db = pg.create_db("wp_noprepare");
    let mut waly = Waly::start_with(pg.waly_options());
    let c = connect(&waly.url(&db)).await;
    let setting: String = c
        .query_one("show max_prepared_transactions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(setting, "0");
    c.batch_execute("create table item (id int primary key, qty int not null check (qty >= 0))")
        .await
        .unwrap();
    let before = waly.log_end().await;
    c.batch_execute("insert into item values (1, 5)")
        .await
        .unwrap();
    c.batch_execute("begin; insert into item values (2, 1); update item set qty = qty + 1; commit")
        .await
        .unwrap();
    let err = c
        .batch_execute("update item set qty = qty - 3")
        .await
        .expect_err("the check constraint fails");
    assert_eq!(err.code().map(|s| s.code()), Some("23514"), "{err:?}");
    c.batch_execute(
        "begin; savepoint s; delete from item where id = 2; rollback to s; \
                     delete from item where id = 1; commit",
    )
    .await
    .unwrap();

    let records = waly.records().await;
    let new: Vec<_> = records.iter().skip(before as usize).collect();
    assert_eq!(new.len(), 3, "three write transactions committed: {new:?}");
    assert!(
        new.iter().all(|r| r.commit == CommitKind::Direct),
        "without prepared transactions every commit is direct: {:?}",
        new.iter().map(|r| r.commit).collect::<Vec<_>>()
    );
    let rows: Vec<(i32, i32)> = c
        .query("select id, qty from item order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(2, 2)]);
    assert!(
        !waly.logs().contains("WA001"),
        "waly's internal signal never reaches its log as an error:\n{}",
        waly.logs()
    );

    waly.terminate();
    waly.wait_exit(Duration::from_secs(30))
        .expect("waly stops on SIGTERM");
    let target = pg.create_db("replayed");
    waly.replay_into(&pg.url(&target));
    assert_same_dump(&dump_app(&pg.url(&db)), &dump_app(&pg.url(&target)));
}

#[tokio::test]
async fn one_waly_serving_two_databases_replays_each_on_its_own() {
    let mut waly = Waly::start();
    let (shop, crm) = (postgres().create_db("shop"), postgres().create_db("crm"));
    // The same table name in both, with different rows, interleaved in the log.
    for (db, rows) in [(&shop, 3), (&crm, 5)] {
        psql(
            &waly.url(db),
            "create table items (id int primary key, note text)",
        );
        psql(
            &waly.url(db),
            &format!("insert into items select g, 'first ' || g from generate_series(1, {rows}) g"),
        );
    }
    psql(
        &waly.url(&shop),
        "update items set note = 'shop' where id = 1",
    );
    psql(&waly.url(&crm), "delete from items where id = 5");

    waly.terminate();
    waly.wait_exit(Duration::from_secs(30))
        .expect("waly stops on SIGTERM");
    if !backend::kafka_mode() {
        // The file log holds both databases' records: replay refuses to mix them into one target.
        let target = postgres().create_db("mixed");
        let out = waly
            .replay_command(&postgres().url(&target), None)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "replay mixed two databases: {stderr}"
        );
        assert!(
            stderr.contains("the log holds the records of several databases")
                && stderr.contains("--database"),
            "{stderr}"
        );
        assert_eq!(
            psql(
                &postgres().url(&target),
                "select count(*) from pg_tables where tablename = 'items'"
            ),
            "0\n",
            "the refused replay applied nothing (both databases' records were in its first chunk)"
        );
    }
    for db in [&shop, &crm] {
        let target = postgres().create_db("replayed");
        let out = run_ok(
            &mut waly.replay_command(&postgres().url(&target), Some(db)),
            "waly replay --database",
        );
        if !backend::kafka_mode() {
            assert!(out.contains("records of other databases"), "{out}");
        }
        assert_same_dump(
            &dump_app(&postgres().url(db)),
            &dump_app(&postgres().url(&target)),
        );
    }
}

#[tokio::test]
async fn a_portal_read_in_pieces_records_its_statement_once() {
    let s = Served::new("wp_portal");
    psql(
        &s.url(),
        "create table t (id int primary key, v text); insert into t select g, 'v' from generate_series(1, 250) g;",
    );
    let mut c = connect(&s.url()).await;
    let tx = c.transaction().await.unwrap();
    let update = tx
        .prepare("update t set v = 'w' where id <= $1 returning id")
        .await
        .unwrap();
    let portal = tx.bind(&update, &[&250i32]).await.unwrap();
    let mut returned = 0;
    loop {
        // Execute with a row limit: each call resumes the same portal.
        let rows = tx.query_portal(&portal, 100).await.unwrap();
        if rows.is_empty() {
            break;
        }
        returned += rows.len();
    }
    tx.commit().await.unwrap();
    assert_eq!(returned, 250);

    let records = s.waly.records().await;
    let record = records
        .iter()
        .find(|r| r.statements.iter().any(|st| st.sql.starts_with("update t")))
        .expect("the update's record");
    assert_eq!(
        record
            .statements
            .iter()
            .map(|st| (st.sql.as_str(), st.params.clone()))
            .collect::<Vec<_>>(),
        vec![(
            "update t set v = 'w' where id <= $1 returning id",
            vec![Some("250".to_string())]
        )],
        "one statement, as the client ran it once"
    );
    assert_eq!(record.changes.len(), 250);
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn a_database_created_anew_under_its_name_gets_waly_schema_again() {
    let waly = Waly::start();
    let db = postgres().create_db("anew");
    let logged = |records: &[waly::record::Record], id: i64| {
        records.iter().any(|r| {
            r.session.database == db
                && r.changes.iter().any(|c| {
                    matches!(c, Change::Insert { table, new, .. }
                        if table == "t" && new.get().replace(' ', "") == format!("{{\"id\":{id}}}"))
                })
        })
    };
    psql(
        &waly.url(&db),
        "create table t (id int primary key); insert into t values (1)",
    );

    // Dropped and created through waly (a test runner resetting its database): served as a new one.
    psql(&waly.url("postgres"), &format!("drop database \"{db}\""));
    psql(&waly.url("postgres"), &format!("create database \"{db}\""));
    psql(
        &waly.url(&db),
        "create table t (id int primary key); insert into t values (2)",
    );
    assert!(
        logged(&waly.records().await, 2),
        "the insert into the new database is logged"
    );

    // Dropped and created behind waly's back: the first write finds the schema missing, is rolled
    // back with a clear error, and waly installs the schema again for the retry.
    let direct = postgres().url("postgres");
    psql(&direct, &format!("drop database \"{db}\""));
    psql(&direct, &format!("create database \"{db}\""));
    psql(&postgres().url(&db), "create table t (id int primary key)");
    let c = connect(&waly.url(&db)).await;
    let error = c
        .execute("insert into t values (3)", &[])
        .await
        .expect_err("a write the schema cannot capture");
    let db_error = error.as_db_error().expect("a database error");
    assert_eq!(db_error.code().code(), "55000", "{db_error:?}");
    assert!(
        db_error.message().contains("waly's schema is missing")
            && db_error.hint().is_some_and(|h| h.contains("retry")),
        "{db_error:?}"
    );
    c.execute("insert into t values (4)", &[]).await.unwrap();
    let rows = ints(&c, "select id from t order by id").await;
    assert_eq!(rows, vec![4], "the failed insert was rolled back");
    let records = waly.records().await;
    assert!(!logged(&records, 3), "the rolled-back insert is not logged");
    assert!(logged(&records, 4), "the retried insert is logged");

    // The log holds three databases of that name, told apart by their OIDs: replay follows one.
    let mut waly = waly;
    waly.terminate();
    waly.wait_exit(Duration::from_secs(30))
        .expect("waly stops on SIGTERM");
    let replay = |args: &[&str]| {
        let target = postgres().create_db("anew_replayed");
        let out = waly
            .replay_command(&postgres().url(&target), Some(&db))
            .args(args)
            .output()
            .unwrap();
        (target, out)
    };
    let next_life = |out: &std::process::Output| -> u64 {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "replay went on into a new database");
        assert!(stderr.contains("created anew under that name"), "{stderr}");
        let from = stderr
            .split("--from ")
            .nth(1)
            .expect("the position to start from");
        from.trim_end().parse().expect("a position")
    };
    let (_, out) = replay(&[]);
    let second = next_life(&out);
    let (first_target, out) = replay(&["--to", &(second - 1).to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        psql(&postgres().url(&first_target), "select id from t"),
        "1\n"
    );
    let (_, out) = replay(&["--from", &second.to_string()]);
    let third = next_life(&out);
    assert!(third > second);
}

#[tokio::test]
async fn values_of_types_with_a_json_cast_of_their_own_rebuild_exactly() {
    // hstore (like PostGIS' geometry) has a cast to json, which row_to_json() would use: an object that
    // does not read back as hstore. Such values are captured as their text form.
    let s = Served::new("wp_hstore");
    psql(
        &s.url(),
        r#"create extension hstore;
           create domain tags as hstore;
           create type tagged as (k int, h hstore);
           create table items (id int primary key, h hstore, d tags, a hstore[], c tagged, n numeric);
           insert into items values
             (1, 'a=>1, b=>NULL', 'colour=>"dark red"', array['x=>1'::hstore, 'y=>"\"q"'], row(7, 'z=>2'), 1.50),
             (2, '', null, null, null, null);
           update items set h = h || 'c=>3', a = a || 'w=>0'::hstore where id = 1;
           delete from items where id = 2;
           create table copied as select id, h, c from items;
           create table plain (id int primary key, v text);
           insert into plain values (1, 'a');"#,
    );
    let records = s.waly.records().await;
    let image = records
        .iter()
        .flat_map(|r| &r.changes)
        .find_map(|c| match c {
            Change::Update { table, new, .. } if table == "items" => Some(new.get().to_owned()),
            _ => None,
        })
        .expect("the update's image");
    assert!(
        image.contains(r#""h":"\"a\"=>\"1\", \"b\"=>NULL, \"c\"=>\"3\"""#),
        "hstore captured as its text form: {image}"
    );
    assert!(
        image.contains(r#""n":1.50"#),
        "other columns as before: {image}"
    );
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn a_statement_that_creates_several_objects_runs_once_in_replay() {
    // A DO block and a function each create several tables: one DDL change per table, all naming the
    // one statement, which replay runs once. Called twice, the function's calls each run.
    let s = Served::new("wp_many_ddl");
    psql(
        &s.url(),
        "do $$ begin create table a1 (id int primary key); create table a2 (id int primary key); end $$",
    );
    psql(
        &s.url(),
        "insert into a1 values (1); insert into a2 values (2)",
    );
    psql(
        &s.url(),
        "create function make_parts(first int, n int) returns void language plpgsql as $$ \
         begin for i in first..first + n - 1 loop \
           execute format('create table part_%s (id int primary key)', i); end loop; end $$",
    );
    psql(&s.url(), "select make_parts(1, 3)");
    psql(
        &s.url(),
        "begin; select make_parts(4, 1); select make_parts(5, 1); insert into part_5 values (5); commit;",
    );
    let records = s.waly.records().await;
    let ddl_of = |sql: &str| {
        records
            .iter()
            .flat_map(|r| &r.changes)
            .filter(|c| matches!(c, Change::Ddl { sql: s, .. } if s == sql))
            .count()
    };
    assert_eq!(
        ddl_of("select make_parts(1, 3)"),
        3,
        "one DDL change per table"
    );
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn a_procedure_that_commits_is_refused_with_why_and_one_that_does_not_is_logged() {
    let s = Served::new("wp_procedure");
    psql(
        &s.url(),
        "create table t (id int primary key); \
         create procedure in_batches() language plpgsql as $$ \
           begin insert into t values (1); commit; insert into t values (2); end $$; \
         create procedure plain(n int) language plpgsql as $$ begin insert into t values (n); end $$",
    );
    let c = connect(&s.url()).await;
    let error = c
        .batch_execute("call in_batches()")
        .await
        .expect_err("its COMMIT cannot run inside waly's transaction");
    let db_error = error.as_db_error().expect("Postgres' error");
    assert_eq!(db_error.code().code(), "2D000", "{db_error:?}");
    assert_eq!(db_error.message(), "invalid transaction termination");
    assert!(
        db_error
            .hint()
            .is_some_and(|h| h.contains("one CALL per batch")),
        "{db_error:?}"
    );
    c.batch_execute("call plain(3)").await.unwrap();
    let ids = ints(&c, "select id from t order by id").await;
    assert_eq!(ids, vec![3], "nothing of the refused call committed");
    let inserted = inserted_ids(&s.waly.records().await, "t");
    assert_eq!(inserted, vec![3], "only the plain call is logged");
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn a_client_in_latin1_gets_its_rows_logged_exactly() {
    let s = Served::new("wp_latin1");
    psql(&s.url(), "create table t (id int primary key, v text)");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("latin1.sql");
    // "été", "à la" and "ü" in ISO 8859-1 bytes.
    std::fs::write(
        &script,
        b"insert into t values (1, '\xe9t\xe9');\n\
          begin;\ninsert into t values (2, '\xe0 la');\nupdate t set v = v || '\xfc' where id = 1;\ncommit;\n"
            .as_slice(),
    )
    .unwrap();
    psql_with(
        &s.url(),
        &["-f", path_str(&script)],
        &[("PGCLIENTENCODING", "LATIN1")],
    );
    // The same encoding set by the session itself, after a UTF-8 login.
    std::fs::write(
        &script,
        b"set client_encoding to 'LATIN1';\ninsert into t values (3, '\xe7a');\n".as_slice(),
    )
    .unwrap();
    psql_with(&s.url(), &["-f", path_str(&script)], &[]);

    let records = s.waly.records().await;
    let images: Vec<&str> = records
        .iter()
        .flat_map(|r| &r.changes)
        .filter_map(|c| match c {
            Change::Insert { table, new, .. } | Change::Update { table, new, .. }
                if table == "t" =>
            {
                Some(new.get())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        images,
        vec![
            r#"{"id":1,"v":"été"}"#,
            r#"{"id":2,"v":"à la"}"#,
            r#"{"id":1,"v":"étéü"}"#,
            r#"{"id":3,"v":"ça"}"#
        ],
        "the images as Postgres stored the rows, in UTF-8"
    );
    s.assert_replay_equals_live();
}

#[tokio::test]
async fn a_record_names_the_role_in_effect_when_it_is_not_the_login_user() {
    let s = Served::new("wp_role");
    let role = format!("clerk_{}", unique());
    psql(
        &s.url(),
        &format!(
            "create role {role} nologin; create table t (id int primary key); grant insert on t to {role}"
        ),
    );
    psql(&s.url(), "insert into t values (1)");
    psql(
        &s.url(),
        &format!("set role {role}; insert into t values (2)"),
    );
    psql(
        &s.url(),
        &format!("begin; set local role {role}; insert into t values (3); commit"),
    );
    let records = s.waly.records().await;
    let role_of = |id: i64| {
        records
            .iter()
            .find(|r| inserted_ids(std::slice::from_ref(*r), "t") == vec![id])
            .map(|r| r.session.role.clone())
            .expect("the insert's record")
    };
    assert_eq!(role_of(1), None, "the login user acting as itself");
    assert_eq!(role_of(2), Some(role.clone()));
    assert_eq!(role_of(3), Some(role.clone()));
    let shown = run_ok(
        Command::new(env!("CARGO_BIN_EXE_waly"))
            .args(["log", "tail", "-n", "50", "--config"])
            .arg(s.waly.config_path())
            .args(s.waly.access.replay_args(Some(&s.db)))
            .env("WALY_TEST_PW", PG_PASSWORD),
        "waly log tail",
    );
    assert!(shown.contains(&format!("as role {role}")), "{shown}");
}

#[tokio::test]
async fn ddl_with_unqualified_names_replays_in_the_schema_it_ran_in() {
    let s = Served::new("wp_search_path");
    psql(&s.url(), "create schema app; create schema \"Tenant A\"");
    // A search_path from the startup packet, and one set by the session.
    psql_with(
        &s.url(),
        &[
            "-c",
            "create table items (id int primary key, v text); \
             create table parted (id int, at date, primary key (id, at)) partition by range (at); \
             create table parted_2026 partition of parted for values from ('2026-01-01') to ('2027-01-01'); \
             insert into items values (1, 'a'); insert into parted values (1, '2026-05-01')",
        ],
        &[("PGOPTIONS", "-c search_path=app,public")],
    );
    psql(
        &s.url(),
        "set search_path = \"Tenant A\", public; \
         begin; create table items (id int primary key); insert into items values (7); commit",
    );
    assert_eq!(
        psql(
            &s.url(),
            "select string_agg(table_schema || '.' || table_name, ' ' order by 1) \
             from information_schema.tables where table_name in ('items', 'parted', 'parted_2026')"
        ),
        "app.items app.parted app.parted_2026 Tenant A.items\n"
    );
    s.assert_replay_equals_live();
}
