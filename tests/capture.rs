//! waly's schema in a real Postgres: migrations (versioned, once, refused when changed or unprivileged)
//! and the capture (row images and DDL, per transaction, in order: the transaction-local buffer and the
//! `waly.capture` table behind it), read the way the commit protocol will read it: inside the transaction,
//! before COMMIT (`waly.peek_capture()` expands the same rows `waly.read_changes()` gives the protocol).
//! No proxy is involved.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_postgres::{Client, NoTls};

use support::*;
use waly::migrate::{self, MigrateError, Migration, MigrationState};

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh database with `setup` run in it before waly is installed.
async fn installed(prefix: &str, setup: &str) -> (TestDb, Client) {
    let pg = postgres();
    let db = pg.create_db(prefix);
    let c = connect(&pg.url(&db)).await;
    c.batch_execute(setup).await.expect("setup");
    let report = migrate::migrate(&c).await.expect("migrate");
    assert_eq!(report.applied, versions());
    (db, c)
}

/// The versions of the embedded migrations, in order.
fn versions() -> Vec<i32> {
    migrate::MIGRATIONS.iter().map(|m| m.version).collect()
}

/// One capture row, as a user reads it.
#[derive(Debug, Clone, PartialEq)]
struct Change {
    kind: String,
    /// `schema.table`, for row changes and TRUNCATE.
    table: Option<String>,
    pk: Option<Value>,
    old: Option<Value>,
    new: Option<Value>,
    ddl_tag: Option<String>,
    ddl_object: Option<String>,
    ddl_query: Option<String>,
}

/// The current transaction's capture rows, in order.
async fn captured(c: &Client) -> Vec<Change> {
    c.query(
        "select kind, schema_name || '.' || table_name, pk, old_row, new_row, ddl_tag, ddl_object, ddl_query
         from waly.peek_capture() where kind <> 'sequence' order by seq",
        &[],
    )
    .await
    .expect("read the capture")
    .iter()
    .map(|r| Change {
        kind: r.get(0),
        table: r.get(1),
        pk: r.get(2),
        old: r.get(3),
        new: r.get(4),
        ddl_tag: r.get(5),
        ddl_object: r.get(6),
        ddl_query: r.get(7),
    })
    .collect()
}

/// (kind, table, pk) of each change: the shape of a transaction.
fn shape(changes: &[Change]) -> Vec<(String, String, Value)> {
    changes
        .iter()
        .map(|c| {
            (
                c.kind.clone(),
                c.table.clone().or(c.ddl_tag.clone()).unwrap_or_default(),
                c.pk.clone().unwrap_or(Value::Null),
            )
        })
        .collect()
}

fn row(kind: &str, table: &str, pk: Value) -> (String, String, Value) {
    (kind.into(), table.into(), pk)
}

/// The row as Postgres stored it, as JSON.
async fn stored(c: &Client, table: &str, id: i32) -> Value {
    c.query_one(
        &format!("select to_jsonb(t) from {table} t where id = $1"),
        &[&id],
    )
    .await
    .expect("read stored row")
    .get(0)
}

async fn capture_triggers(c: &Client) -> Vec<(String, String, String)> {
    c.query(
        "select tgrelid::regclass::text, tgname::text, encode(tgargs, 'escape')
         from pg_trigger where tgname like '0\\_waly%' order by 1, 2",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_default()
}

/// A login role for one test, with CREATE on `db` and its public schema; dropped with `drop_role`.
async fn create_role(admin: &Client, db: &str) -> String {
    let role = format!("waly_app_{}", unique());
    admin
        .batch_execute(&format!(
            "create role {role} login password 'app';
             grant create on database {db} to {role};
             grant create on schema public to {role};"
        ))
        .await
        .unwrap();
    role
}

async fn drop_role(admin: &Client, role: &str) {
    admin
        .batch_execute(&format!("drop owned by {role}; drop role {role}"))
        .await
        .unwrap();
}

fn role_url(role: &str, db: &str) -> String {
    format!("postgres://{role}:app@127.0.0.1:{}/{db}", postgres().port)
}

#[tokio::test]
async fn embedded_migrations_are_the_files() {
    let dir = project_root().join("migrations");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".sql"))
        .collect();
    files.sort();
    let embedded: Vec<String> = migrate::MIGRATIONS.iter().map(|m| m.file_name()).collect();
    assert_eq!(
        files, embedded,
        "every file in migrations/ is embedded, in order"
    );
    for m in migrate::MIGRATIONS {
        assert_eq!(
            std::fs::read_to_string(dir.join(m.file_name())).unwrap(),
            m.sql
        );
    }
}

#[tokio::test]
async fn insert_update_delete_images_and_primary_keys() {
    // Created before waly: the migration gives it its triggers. Serial, identity, generated and default
    // columns: the images carry the values Postgres stored.
    let (_db, c) = installed(
        "cap_rows",
        "create table item (
           id serial primary key,
           code bigint generated always as identity (start 1000),
           name text not null,
           qty int not null default 1,
           total int generated always as (qty * 10) stored,
           created timestamptz not null default now(),
           tag uuid default gen_random_uuid());
         insert into item (name) values ('before waly');",
    )
    .await;
    c.batch_execute("begin").await.unwrap();
    let id: i32 = c
        .query_one(
            "insert into item (name, qty) values ('new', 3) returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let inserted = stored(&c, "item", id).await;
    let before = stored(&c, "item", 1).await;
    c.batch_execute("update item set qty = 5, name = 'renamed' where id = 1")
        .await
        .unwrap();
    let after = stored(&c, "item", 1).await;
    c.batch_execute(&format!("delete from item where id = {id}"))
        .await
        .unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();

    assert_eq!(
        shape(&changes),
        vec![
            row("insert", "public.item", json!({"id": id})),
            row("update", "public.item", json!({"id": 1})),
            row("delete", "public.item", json!({"id": id})),
        ]
    );
    assert_eq!(changes[0].old, None);
    assert_eq!(changes[0].new.as_ref(), Some(&inserted));
    assert_eq!(inserted["code"], json!(1001));
    assert_eq!(inserted["total"], json!(30));
    assert!(inserted["tag"].is_string() && inserted["created"].is_string());
    assert_eq!(changes[1].old.as_ref(), Some(&before));
    assert_eq!(changes[1].new.as_ref(), Some(&after));
    assert_eq!(after["total"], json!(50));
    assert_eq!(changes[2].old.as_ref(), Some(&inserted));
    assert_eq!(changes[2].new, None);
    // The buffer is the transaction's own: nobody took it here, and nothing outlived the commit.
    let left: i64 = c
        .query_one("select count(*) from waly.capture", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn tables_created_after_migrate_get_triggers_once() {
    let (_db, c) = installed("cap_new", "create table old (id int primary key)").await;
    c.batch_execute(
        "create table fresh (a int, b text, c int, primary key (b, a));
         create schema other;
         create table other.t (id bigint generated always as identity primary key, v int);",
    )
    .await
    .unwrap();
    c.batch_execute("begin").await.unwrap();
    c.batch_execute(
        "insert into fresh values (1, 'x', 2);
         insert into other.t (v) values (7);",
    )
    .await
    .unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    assert_eq!(
        shape(&changes),
        vec![
            row("insert", "public.fresh", json!({"a": 1, "b": "x"})),
            row("insert", "other.t", json!({"id": 1})),
        ]
    );
    // Re-running the installer (and waly migrate) adds nothing.
    let before = capture_triggers(&c).await;
    assert_eq!(
        before,
        vec![
            (
                "fresh".into(),
                "0_waly_capture".into(),
                "[\"b\",\"a\"]\\000none\\000".into()
            ),
            ("fresh".into(), "0_waly_capture_truncate".into(), "".into()),
            (
                "old".into(),
                "0_waly_capture".into(),
                "[\"id\"]\\000none\\000".into()
            ),
            ("old".into(), "0_waly_capture_truncate".into(), "".into()),
            (
                "other.t".into(),
                "0_waly_capture".into(),
                "[\"id\"]\\000sequences\\000".into()
            ),
            (
                "other.t".into(),
                "0_waly_capture_truncate".into(),
                "".into()
            ),
        ]
    );
    c.batch_execute("select waly.ensure_capture_all(); select waly.ensure_capture_all();")
        .await
        .unwrap();
    migrate::migrate(&c).await.unwrap();
    assert_eq!(capture_triggers(&c).await, before);
    // Temporary tables are not the application's: no trigger, no DDL row.
    c.batch_execute("begin; create temp table scratch (x int); insert into scratch values (1);")
        .await
        .unwrap();
    assert_eq!(captured(&c).await, vec![]);
    c.batch_execute("commit").await.unwrap();
}

#[tokio::test]
async fn on_delete_cascade_children_are_captured() {
    let (_db, c) = installed(
        "cap_cascade",
        "create table parent (id int primary key);
         create table child (id int primary key, parent_id int not null references parent on delete cascade);
         create table grandchild (id int primary key, child_id int references child on delete cascade);
         create table nullable (id int primary key, parent_id int references parent on delete set null);
         insert into parent values (1), (2);
         insert into child values (10, 1), (11, 1), (20, 2);
         insert into grandchild values (100, 10), (101, 11);
         insert into nullable values (500, 1);",
    )
    .await;
    c.batch_execute("begin; delete from parent where id = 1")
        .await
        .unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    // The capture fires before the foreign keys' cascades, so the cause comes first.
    assert_eq!(changes[0].kind, "delete");
    assert_eq!(changes[0].table.as_deref(), Some("public.parent"));
    let mut rest = shape(&changes[1..]);
    rest.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.to_string().cmp(&b.2.to_string())));
    assert_eq!(
        rest,
        vec![
            row("delete", "public.child", json!({"id": 10})),
            row("delete", "public.child", json!({"id": 11})),
            row("delete", "public.grandchild", json!({"id": 100})),
            row("delete", "public.grandchild", json!({"id": 101})),
            row("update", "public.nullable", json!({"id": 500})),
        ]
    );
    let set_null = changes.iter().find(|c| c.kind == "update").unwrap();
    assert_eq!(set_null.old, Some(json!({"id": 500, "parent_id": 1})));
    assert_eq!(set_null.new, Some(json!({"id": 500, "parent_id": null})));
    // Each grandchild comes after its child: the cascade's order.
    let pos = |table: &str, id: i64| {
        changes
            .iter()
            .position(|c| c.table.as_deref() == Some(table) && c.pk == Some(json!({"id": id})))
            .unwrap()
    };
    assert!(pos("public.child", 10) < pos("public.grandchild", 100));
    assert!(pos("public.child", 11) < pos("public.grandchild", 101));
}

#[tokio::test]
async fn application_triggers_writing_other_tables_and_the_same_row() {
    let (_db, c) = installed(
        "cap_apptrig",
        "create table account (id int primary key, balance int not null, touched int not null default 0);
         create table audit (id bigint generated always as identity primary key, account_id int, delta int,
                             at timestamptz default clock_timestamp());
         create function audit_it() returns trigger language plpgsql as $$
         begin
           insert into audit (account_id, delta) values (new.id, new.balance - coalesce(old.balance, 0));
           return null;
         end $$;
         create trigger a_audit after insert or update on account for each row execute function audit_it();
         -- An AFTER trigger changing the row it fired for: a second update of the same row.
         create function touch_it() returns trigger language plpgsql as $$
         begin
           if new.touched = 0 then update account set touched = 1 where id = new.id; end if;
           return null;
         end $$;
         create trigger b_touch after insert on account for each row execute function touch_it();
         -- A BEFORE trigger edits the row: the image carries the edit.
         create function cap_it() returns trigger language plpgsql as $$
         begin new.balance := least(new.balance, 1000); return new; end $$;
         create trigger cap before insert or update on account for each row execute function cap_it();",
    )
    .await;
    c.batch_execute("begin; insert into account (id, balance) values (1, 5000)")
        .await
        .unwrap();
    let audit_rows: Vec<Value> = c
        .query("select to_jsonb(a) from audit a order by id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    assert_eq!(
        shape(&changes),
        vec![
            row("insert", "public.account", json!({"id": 1})),
            row("insert", "public.audit", json!({"id": 1})),
            row("update", "public.account", json!({"id": 1})),
            row("insert", "public.audit", json!({"id": 2})),
        ]
    );
    assert_eq!(
        changes[0].new,
        Some(json!({"id": 1, "balance": 1000, "touched": 0}))
    );
    assert_eq!(changes[2].old, changes[0].new);
    assert_eq!(
        changes[2].new,
        Some(json!({"id": 1, "balance": 1000, "touched": 1}))
    );
    // The audit rows' identity keys and clock_timestamp() defaults, exactly as stored.
    assert_eq!(changes[1].new.as_ref(), Some(&audit_rows[0]));
    assert_eq!(changes[3].new.as_ref(), Some(&audit_rows[1]));
}

#[tokio::test]
async fn writes_hidden_in_functions_are_captured() {
    let (_db, c) = installed(
        "cap_func",
        "create table counter (name text primary key, n int not null);
         create function bump(k text) returns int language sql as $$
           insert into counter values (k, 1) on conflict (name) do update set n = counter.n + 1 returning n
         $$;",
    )
    .await;
    c.batch_execute("begin").await.unwrap();
    let n: i32 = c.query_one("select bump('a')", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    c.batch_execute(
        "select bump('a');
         do $$ begin perform bump('b'); end $$;
         with w as (update counter set n = n * 10 where name = 'b' returning *) select count(*) from w;",
    )
    .await
    .unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    assert_eq!(
        shape(&changes),
        vec![
            row("insert", "public.counter", json!({"name": "a"})),
            row("update", "public.counter", json!({"name": "a"})),
            row("insert", "public.counter", json!({"name": "b"})),
            row("update", "public.counter", json!({"name": "b"})),
        ]
    );
    assert_eq!(changes[3].new, Some(json!({"name": "b", "n": 10})));
}

#[tokio::test]
async fn insert_select_and_on_conflict() {
    let (_db, c) = installed(
        "cap_upsert",
        "create table stock (sku text primary key, qty int not null);
         insert into stock values ('a', 1);",
    )
    .await;
    c.batch_execute(
        "begin;
         insert into stock select 'g' || g, g from generate_series(1, 5) g;
         insert into stock values ('a', 10), ('z', 3) on conflict (sku) do update set qty = stock.qty + excluded.qty;
         insert into stock values ('a', 99) on conflict do nothing;",
    )
    .await
    .unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    let mut expected: Vec<_> = (1..=5)
        .map(|g| row("insert", "public.stock", json!({"sku": format!("g{g}")})))
        .collect();
    expected.push(row("update", "public.stock", json!({"sku": "a"})));
    expected.push(row("insert", "public.stock", json!({"sku": "z"})));
    assert_eq!(shape(&changes), expected);
    assert_eq!(changes[5].old, Some(json!({"sku": "a", "qty": 1})));
    assert_eq!(changes[5].new, Some(json!({"sku": "a", "qty": 11})));
    assert_eq!(changes[4].new, Some(json!({"sku": "g5", "qty": 5})));
}

#[tokio::test]
async fn copy_from_stdin_is_captured_row_by_row() {
    let (_db, c) = installed(
        "cap_copy",
        "create table line (id bigserial primary key, body text not null, n int)",
    )
    .await;
    c.batch_execute("begin").await.unwrap();
    let sink = c.copy_in("copy line (body, n) from stdin").await.unwrap();
    let data: String = (0..1000).map(|i| format!("row {i}\t{i}\n")).collect();
    futures_util::pin_mut!(sink);
    sink.send(Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 1000);
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    assert_eq!(changes.len(), 1000);
    for (i, ch) in changes.iter().enumerate() {
        assert_eq!(ch.kind, "insert");
        assert_eq!(ch.pk, Some(json!({"id": i + 1})));
        assert_eq!(
            ch.new,
            Some(json!({"id": i + 1, "body": format!("row {i}"), "n": i}))
        );
    }
}

#[tokio::test]
async fn truncate_is_captured_per_table() {
    let (_db, c) = installed(
        "cap_trunc",
        "create table a (id serial primary key);
         create table b (id int primary key, a_id int references a);
         insert into a default values; insert into b values (1, 1);",
    )
    .await;
    c.batch_execute("begin").await.unwrap();
    let batch = "insert into a default values; truncate a restart identity cascade; insert into a default values";
    c.batch_execute(batch).await.unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    assert_eq!(changes[0].kind, "insert");
    let mut truncated: Vec<String> = changes[1..3]
        .iter()
        .map(|c| {
            assert_eq!(c.kind, "truncate");
            // The whole text the client sent, RESTART IDENTITY included.
            assert_eq!(c.ddl_query.as_deref(), Some(batch));
            c.table.clone().unwrap()
        })
        .collect();
    truncated.sort();
    assert_eq!(truncated, vec!["public.a", "public.b"]);
    // RESTART IDENTITY: the next key is 1 again, and the image says so.
    assert_eq!(
        shape(&changes[3..]),
        vec![row("insert", "public.a", json!({"id": 1}))]
    );
}

#[tokio::test]
async fn ddl_rows_sit_in_order_between_row_changes() {
    let (_db, c) = installed("cap_ddl", "create table a (id int primary key)").await;
    // Extended protocol, one statement per message: current_query() is that statement.
    c.batch_execute("begin").await.unwrap();
    for sql in [
        "insert into a values (1)",
        "create table b (id int primary key, v text)",
        "insert into b values (1, 'x')",
        "alter table b add column w int default 7",
        "insert into b values (2, 'y')",
        "create index b_v on b (v)",
        "drop table b",
        "insert into a values (2)",
    ] {
        c.execute(sql, &[]).await.unwrap();
    }
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    assert_eq!(
        shape(&changes),
        vec![
            row("insert", "public.a", json!({"id": 1})),
            row("ddl", "CREATE TABLE", Value::Null),
            row("insert", "public.b", json!({"id": 1})),
            row("ddl", "ALTER TABLE", Value::Null),
            row("insert", "public.b", json!({"id": 2})),
            row("ddl", "CREATE INDEX", Value::Null),
            row("ddl", "DROP TABLE", Value::Null),
            row("insert", "public.a", json!({"id": 2})),
        ]
    );
    let ddl: Vec<(Option<&str>, Option<&str>)> = changes
        .iter()
        .filter(|c| c.kind == "ddl")
        .map(|c| (c.ddl_object.as_deref(), c.ddl_query.as_deref()))
        .collect();
    assert_eq!(
        ddl,
        vec![
            (
                Some("public.b"),
                Some("create table b (id int primary key, v text)")
            ),
            (
                Some("public.b"),
                Some("alter table b add column w int default 7")
            ),
            (Some("public.b_v"), Some("create index b_v on b (v)")),
            (Some("public.b"), Some("drop table b")),
        ]
    );
    assert_eq!(changes[4].new, Some(json!({"id": 2, "v": "y", "w": 7})));
}

#[tokio::test]
async fn what_current_query_gives_for_ddl() {
    let (_db, c) = installed(
        "cap_ddlq",
        "create function make_table(name text) returns void language plpgsql as $$
         begin execute format('create table %I (id int primary key)', name); end $$;",
    )
    .await;
    // A multi-statement simple query: every DDL row carries the whole text.
    let multi = "begin; create table m1 (id int primary key); insert into m1 values (1); create table m2 (id int)";
    c.batch_execute(multi).await.unwrap();
    // DDL run by a function: the event trigger fires, current_query() is the calling statement.
    c.execute("select make_table('from_fn')", &[])
        .await
        .unwrap();
    c.execute("insert into from_fn values (5)", &[])
        .await
        .unwrap();
    // CREATE TABLE AS fills the table before it has a trigger: its rows follow the DDL row as inserts.
    c.execute(
        "create table copied as select id, id * 2 as twice from m1",
        &[],
    )
    .await
    .unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    let summary: Vec<(String, Option<String>, Option<String>)> = changes
        .iter()
        .map(|c| {
            (
                c.kind.clone(),
                c.ddl_object.clone().or(c.table.clone()),
                c.ddl_query.clone(),
            )
        })
        .collect();
    let s = |x: &str| Some(x.to_owned());
    assert_eq!(
        summary,
        vec![
            ("ddl".into(), s("public.m1"), s(multi)),
            ("insert".into(), s("public.m1"), None),
            ("ddl".into(), s("public.m2"), s(multi)),
            (
                "ddl".into(),
                s("public.from_fn"),
                s("select make_table('from_fn')")
            ),
            ("insert".into(), s("public.from_fn"), None),
            (
                "ddl".into(),
                s("public.copied"),
                s("create table copied as select id, id * 2 as twice from m1")
            ),
            ("insert".into(), s("public.copied"), None),
        ]
    );
    assert_eq!(changes[5].ddl_tag.as_deref(), Some("CREATE TABLE AS"));
    assert_eq!(changes[6].new, Some(json!({"id": 1, "twice": 2})));
}

#[tokio::test]
async fn rollback_to_savepoint_removes_the_rolled_back_rows() {
    let (_db, c) = installed("cap_sp", "create table t (id int primary key)").await;
    c.batch_execute(
        "begin;
         insert into t values (1);
         savepoint s1;
         insert into t values (2);
         create table gone (id int);
         insert into gone values (1);
         savepoint s2;
         insert into t values (3);
         rollback to savepoint s1;
         insert into t values (4);
         savepoint s3;
         insert into t values (5);
         release savepoint s3;",
    )
    .await
    .unwrap();
    // A failed statement inside a savepoint leaves nothing either.
    c.batch_execute("savepoint s4").await.unwrap();
    let err = c
        .batch_execute("insert into t values (6), (1)")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "23505");
    c.batch_execute("rollback to savepoint s4").await.unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    assert_eq!(
        shape(&changes),
        vec![
            row("insert", "public.t", json!({"id": 1})),
            row("insert", "public.t", json!({"id": 4})),
            row("insert", "public.t", json!({"id": 5})),
        ]
    );
    // And a rolled-back transaction leaves no rows at all.
    c.batch_execute("begin; insert into t values (7); rollback;")
        .await
        .unwrap();
    let left: i64 = c
        .query_one(
            "select count(*) from waly.capture where kind <> 'ddl' and pk = '{\"id\": 7}'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn tables_without_a_primary_key_have_full_images_and_no_pk() {
    let (_db, c) = installed(
        "cap_nopk",
        "create table event (at text, what text, n int); insert into event values ('t0', 'boot', 1);",
    )
    .await;
    c.batch_execute(
        "begin;
         insert into event values ('t1', 'x', 2);
         update event set n = n + 1 where what = 'boot';
         delete from event where at = 't1';",
    )
    .await
    .unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    assert!(changes.iter().all(|c| c.pk.is_none()));
    let images: Vec<(&str, Option<Value>, Option<Value>)> = changes
        .iter()
        .map(|c| (c.kind.as_str(), c.old.clone(), c.new.clone()))
        .collect();
    assert_eq!(
        images,
        vec![
            (
                "insert",
                None,
                Some(json!({"at": "t1", "what": "x", "n": 2}))
            ),
            (
                "update",
                Some(json!({"at": "t0", "what": "boot", "n": 1})),
                Some(json!({"at": "t0", "what": "boot", "n": 2}))
            ),
            (
                "delete",
                Some(json!({"at": "t1", "what": "x", "n": 2})),
                None
            ),
        ]
    );
}

#[tokio::test]
async fn adding_or_dropping_the_primary_key_switches_pk() {
    let (_db, c) = installed(
        "cap_addpk",
        "create table kv (k text not null, ns int not null, v text)",
    )
    .await;
    c.batch_execute(
        "begin;
         insert into kv values ('a', 1, 'x');
         alter table kv add primary key (ns, k);
         insert into kv values ('b', 2, 'y');
         alter table kv drop constraint kv_pkey;
         insert into kv values ('c', 3, 'z');
         alter table kv add constraint kv_pkey primary key (k) include (v);
         update kv set v = 'w' where k = 'a';",
    )
    .await
    .unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    let pks: Vec<(String, Value)> = changes
        .iter()
        .map(|c| (c.kind.clone(), c.pk.clone().unwrap_or(Value::Null)))
        .collect();
    assert_eq!(
        pks,
        vec![
            ("insert".into(), Value::Null),
            ("ddl".into(), Value::Null),
            ("insert".into(), json!({"ns": 2, "k": "b"})),
            ("ddl".into(), Value::Null),
            ("insert".into(), Value::Null),
            ("ddl".into(), Value::Null),
            // INCLUDE columns are not part of the key.
            ("update".into(), json!({"k": "a"})),
        ]
    );
    assert_eq!(
        capture_triggers(&c).await[0],
        (
            "kv".into(),
            "0_waly_capture".into(),
            "[\"k\"]\\000none\\000".into()
        )
    );
}

#[tokio::test]
async fn partitioned_tables_are_captured_on_their_partitions() {
    let (_db, c) = installed(
        "cap_part",
        "create table m (id int, region text, v int, primary key (id, region)) partition by list (region);
         create table m_eu partition of m for values in ('eu');",
    )
    .await;
    c.batch_execute(
        "create table m_us partition of m for values in ('us');
         create table m_asia (id int not null, region text not null, v int);
         alter table m attach partition m_asia for values in ('asia');",
    )
    .await
    .unwrap();
    c.batch_execute(
        "begin;
         insert into m values (1, 'eu', 1), (2, 'us', 2), (3, 'asia', 3);
         update m set region = 'us' where id = 1;
         truncate m_eu;",
    )
    .await
    .unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    // A row moving between partitions is a delete from one and an insert into the other.
    assert_eq!(
        shape(&changes),
        vec![
            row("insert", "public.m_eu", json!({"id": 1, "region": "eu"})),
            row("insert", "public.m_us", json!({"id": 2, "region": "us"})),
            row(
                "insert",
                "public.m_asia",
                json!({"id": 3, "region": "asia"})
            ),
            row("delete", "public.m_eu", json!({"id": 1, "region": "eu"})),
            row("insert", "public.m_us", json!({"id": 1, "region": "us"})),
            row("truncate", "public.m_eu", Value::Null),
        ]
    );
}

#[tokio::test]
async fn capture_triggers_cannot_be_dropped_or_disabled() {
    let (_db, c) = installed("cap_guard", "create table t (id int primary key)").await;
    let err = c
        .batch_execute("drop trigger \"0_waly_capture\" on t")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "2BP01", "{err:?}");
    let err = c
        .batch_execute("alter table t disable trigger all")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "55000", "{err:?}");
    assert!(
        err.as_db_error()
            .unwrap()
            .hint()
            .unwrap()
            .contains("0_waly_capture")
    );
    // Dropping the table takes its triggers along; that is recorded as DDL.
    c.batch_execute("begin; drop table t").await.unwrap();
    let changes = captured(&c).await;
    c.batch_execute("commit").await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].ddl_tag.as_deref(), Some("DROP TABLE"));
    assert_eq!(changes[0].ddl_object.as_deref(), Some("public.t"));
}

#[tokio::test]
async fn images_are_exact_whatever_the_session_settings() {
    let (_db, c) = installed(
        "cap_exact",
        "create table m (id int primary key, f float8, r real, i interval, b bytea, n numeric)",
    )
    .await;
    c.batch_execute(
        "begin;
         set local extra_float_digits = -10;
         set local intervalstyle = sql_standard;
         set local bytea_output = escape;
         insert into m values (1, 0.1::float8 + 0.2::float8, 1.1::real / 3, '-1 day +02:03:04.5', '\\x00ff', 1e-30);
         reset extra_float_digits; reset intervalstyle; reset bytea_output;",
    )
    .await
    .unwrap();
    // Read back through the table's own types, in SQL (serde_json's f64 would round the numeric): the
    // same values.
    let row = c
        .query_one(
            "select jsonb_populate_record(null::m, new_row) is not distinct from (select m from m where id = 1),
                    new_row::text
             from waly.peek_capture() where kind = 'insert'",
            &[],
        )
        .await
        .unwrap();
    c.batch_execute("commit").await.unwrap();
    let (same, text): (bool, String) = (row.get(0), row.get(1));
    assert!(same, "{text}");
    assert!(
        text.contains("\"f\": 0.30000000000000004")
            && text.contains("\"n\": 0.000000000000000000000000000001"),
        "{text}"
    );
}

#[tokio::test]
async fn prepare_transaction_with_capture_rows() {
    let (db, c) = installed("cap_2pc", "create table t (id int primary key, v text)").await;
    let gid = |n: u32| format!("waly_test_{db}_{n}");
    // The commit protocol's way: read and delete the rows, then PREPARE and COMMIT PREPARED.
    c.batch_execute("begin; insert into t values (1, 'a'); update t set v = 'b' where id = 1;")
        .await
        .unwrap();
    let txid: String = c
        .query_one("select pg_current_xact_id()::text", &[])
        .await
        .unwrap()
        .get(0);
    let taken: Vec<String> = c
        .query("select kind from waly.take_capture()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(taken, vec!["insert", "update"]);
    assert_eq!(captured(&c).await, vec![]);
    c.batch_execute(&format!("prepare transaction '{}'", gid(1)))
        .await
        .unwrap();
    // Another session commits it, as recovery would.
    let other = connect(&postgres().url(&db)).await;
    other
        .batch_execute(&format!("commit prepared '{}'", gid(1)))
        .await
        .unwrap();
    assert_eq!(stored(&c, "t", 1).await, json!({"id": 1, "v": "b"}));
    let left: i64 = c
        .query_one(
            "select count(*) from waly.capture where txid = $1::text::xid8",
            &[&txid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    // An untaken buffer does not stop PREPARE either (temporary tables would): it is the transaction's
    // own memory and ends with it.
    c.batch_execute("begin; insert into t values (2, 'c');")
        .await
        .unwrap();
    assert_eq!(captured(&c).await.len(), 1);
    c.batch_execute(&format!("prepare transaction '{}'", gid(2)))
        .await
        .unwrap();
    c.batch_execute(&format!("commit prepared '{}'", gid(2)))
        .await
        .unwrap();
    let left: i64 = c
        .query_one(
            "select count(*) from waly.capture where pk = '{\"id\": 2}'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    assert_eq!(stored(&c, "t", 2).await, json!({"id": 2, "v": "c"}));

    // ROLLBACK PREPARED takes the rows and the change away.
    c.batch_execute("begin; insert into t values (3, 'd');")
        .await
        .unwrap();
    c.batch_execute(&format!("prepare transaction '{}'", gid(3)))
        .await
        .unwrap();
    c.batch_execute(&format!("rollback prepared '{}'", gid(3)))
        .await
        .unwrap();
    let gone: i64 = c
        .query_one(
            "select (select count(*) from t where id = 3) + (select count(*) from waly.capture where pk = '{\"id\": 3}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(gone, 0);

    // A transaction that touched a temporary table cannot be prepared: the protocol's fallback case.
    c.batch_execute("begin; create temp table tmp (x int); insert into t values (4, 'e');")
        .await
        .unwrap();
    let err = c
        .batch_execute(&format!("prepare transaction '{}'", gid(4)))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "0A000", "{err:?}");
    c.batch_execute("rollback").await.unwrap();
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let pg = postgres();
    let db = pg.create_db("cap_twice");
    let c = connect(&pg.url(&db)).await;
    let before = migrate::status(&c).await.unwrap();
    assert!(!before.is_current());
    assert!(
        before
            .migrations
            .iter()
            .all(|m| m.state == MigrationState::Pending)
    );
    let first = migrate::migrate(&c).await.unwrap();
    assert_eq!(first.applied, versions());
    assert!(first.already_present.is_empty());
    let rows_before = ledger_rows(&c).await;
    let second = migrate::migrate(&c).await.unwrap();
    assert!(second.applied.is_empty());
    assert_eq!(second.already_present, versions());
    assert_eq!(ledger_rows(&c).await, rows_before);
    assert_eq!(
        rows_before.iter().map(|r| r.1.as_str()).collect::<Vec<_>>(),
        migrate::MIGRATIONS
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
    );
    // The checksum is the file's SHA-256, as sha256sum prints it.
    assert!(rows_before.iter().all(|r| r.2.len() == 64));
    let status = migrate::status(&c).await.unwrap();
    assert!(status.is_current(), "{status:?}");
    assert_eq!(status.migrations[2].file, "0003_ddl_capture.sql");
}

async fn ledger_rows(c: &Client) -> Vec<(i32, String, String, String)> {
    c.query(
        "select version, name, checksum, applied_at::text from waly.migrations order by version",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test]
async fn concurrent_migrators_apply_each_migration_once() {
    let pg = postgres();
    let db = pg.create_db("cap_conc");
    let mut runs = Vec::new();
    for _ in 0..4 {
        let url = pg.url(&db);
        runs.push(tokio::spawn(async move {
            let c = connect(&url).await;
            migrate::migrate(&c).await
        }));
    }
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap().expect("every migrator succeeds").applied);
    }
    applied.sort();
    assert_eq!(applied, versions());
    let c = connect(&pg.url(&db)).await;
    assert_eq!(ledger_rows(&c).await.len(), migrate::MIGRATIONS.len());
}

#[tokio::test]
async fn a_changed_or_unknown_migration_is_refused() {
    let (_db, c) = installed("cap_changed", "create table t (id int primary key)").await;
    let mut changed: Vec<Migration> = migrate::MIGRATIONS.to_vec();
    changed[1].sql =
        Box::leak(format!("{}\n-- edited after release\n", changed[1].sql).into_boxed_str());
    let err = migrate::migrate_with(&c, &changed).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::Changed { ref file, .. } if file == "0002_capture.sql"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("0002_capture.sql") && msg.contains("changed after it was applied"),
        "{msg}"
    );
    let status = migrate::status(&c).await.unwrap();
    assert!(matches!(
        status.migrations[1].state,
        MigrationState::Applied { .. }
    ));

    // A new migration is applied after the others, once.
    let last = *versions().last().unwrap();
    let file = |v: i32, name: &str| format!("{v:04}_{name}.sql");
    let mut more: Vec<Migration> = migrate::MIGRATIONS.to_vec();
    more.push(Migration {
        version: last + 1,
        name: "probe",
        sql: "create table waly.probe (x int);",
        requires_superuser: false,
    });
    let report = migrate::migrate_with(&c, &more).await.unwrap();
    assert_eq!(
        (report.applied, report.already_present),
        (vec![last + 1], versions())
    );
    // ... and this waly, which does not know it, refuses to go on.
    let err = migrate::migrate(&c).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::UnknownApplied { file: ref f } if *f == file(last + 1, "probe")),
        "{err}"
    );
    assert_eq!(
        migrate::status(&c).await.unwrap().unknown,
        vec![file(last + 1, "probe")]
    );

    // A failing migration names its file, carries Postgres' SQLSTATE, and leaves nothing behind.
    let probe = more.len() - 1;
    more[probe] = Migration {
        version: last + 2,
        name: "broken",
        sql: "create table waly.half (x int); select 1/0;",
        requires_superuser: false,
    };
    more.push(Migration {
        version: last + 3,
        name: "after",
        sql: "select 1",
        requires_superuser: false,
    });
    c.execute(
        "delete from waly.migrations where version = $1",
        &[&(last + 1)],
    )
    .await
    .unwrap();
    let err = migrate::migrate_with(&c, &more).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("22012"));
    assert!(err.to_string().contains(&file(last + 2, "broken")), "{err}");
    let half: bool = c
        .query_one("select to_regclass('waly.half') is null", &[])
        .await
        .unwrap()
        .get(0);
    assert!(half);
}

#[tokio::test]
async fn a_role_without_superuser_is_refused_before_anything_changes() {
    let pg = postgres();
    let db = pg.create_db("cap_priv");
    let admin = connect(&pg.url(&db)).await;
    let role = create_role(&admin, &db).await;
    let app = connect(&role_url(&role, &db)).await;
    let err = migrate::migrate(&app).await.unwrap_err();
    assert_eq!(err.sqlstate(), Some("42501"));
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("role \"{role}\""))
            && msg.contains("0003_ddl_capture.sql")
            && msg.contains("superuser")
            && msg.contains("hint:"),
        "{msg}"
    );
    let untouched: bool = admin
        .query_one("select to_regnamespace('waly') is null", &[])
        .await
        .unwrap()
        .get(0);
    assert!(untouched);
    drop(app);
    drop_role(&admin, &role).await;
}

#[tokio::test]
async fn unprivileged_application_roles_are_captured_and_cannot_forge_rows() {
    let (db, admin) = installed("cap_app", "").await;
    let role = create_role(&admin, &db).await;
    let app = connect(&role_url(&role, &db)).await;
    app.batch_execute(
        "begin;
         create table mine (id bigint generated always as identity primary key, v text);
         insert into mine (v) values ('a');",
    )
    .await
    .unwrap();
    let changes = captured(&app).await;
    assert_eq!(
        shape(&changes),
        vec![
            row("ddl", "CREATE TABLE", Value::Null),
            row("insert", "public.mine", json!({"id": 1})),
        ]
    );
    // Then the position of the identity sequence, which take_capture() reads with its owner's rights.
    let taken: Vec<(String, Option<String>)> = app
        .query("select kind, new_row::text from waly.take_capture()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(taken.len(), 3, "{taken:?}");
    assert_eq!(
        taken[2],
        (
            "sequence".to_string(),
            Some(r#"{"is_called": true, "last_value": 1}"#.to_string())
        )
    );
    app.batch_execute("commit").await.unwrap();
    // Rows for another transaction: refused.
    let err = app
        .batch_execute("insert into waly.capture (txid, kind) values ('3'::xid8, 'insert')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    let err = app
        .batch_execute("delete from waly.migrations")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "42501");
    drop(app);
    drop_role(&admin, &role).await;
}

/// The sequences take_capture() reports after a transaction's inserts, as `(name, last_value)`.
async fn sequences_after(c: &Client, inserts: &str) -> Vec<(String, i64)> {
    c.batch_execute(&format!("begin; {inserts}"))
        .await
        .expect(inserts);
    let rows = c
        .query(
            "select schema_name || '.' || table_name, (new_row ->> 'last_value')::int8
             from waly.take_capture() where kind = 'sequence' order by seq",
            &[],
        )
        .await
        .expect("take_capture");
    c.batch_execute("commit").await.unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

fn seqs(list: &[(&str, i64)]) -> Vec<(String, i64)> {
    list.iter().map(|(n, v)| (n.to_string(), *v)).collect()
}

#[tokio::test]
async fn sequence_positions_follow_ownership_changes() {
    let (_db, c) = installed(
        "cap_seqown",
        "create table before (id serial primary key, v int);
         create table plain (v int);",
    )
    .await;
    // Created before waly: found by the installer. A table without sequences reports none.
    assert_eq!(
        sequences_after(&c, "insert into before (v) values (1)").await,
        seqs(&[("public.before_id_seq", 1)])
    );
    assert_eq!(
        sequences_after(&c, "insert into plain values (1)").await,
        seqs(&[])
    );

    // A serial column added later (the existing row takes 1), and a sequence attached with OWNED BY, then detached again.
    c.batch_execute(
        "alter table plain add column id bigserial;
         create sequence loose start 50;
         alter sequence loose owned by plain.v;",
    )
    .await
    .unwrap();
    assert_eq!(
        sequences_after(&c, "insert into plain (v) values (nextval('loose'))").await,
        seqs(&[("public.loose", 50), ("public.plain_id_seq", 2)])
    );
    c.batch_execute("alter sequence loose owned by none")
        .await
        .unwrap();
    assert_eq!(
        sequences_after(&c, "insert into plain (v) values (nextval('loose'))").await,
        seqs(&[("public.plain_id_seq", 3)])
    );

    // Partitions take their values from their ancestors' sequences, also when attached after creation.
    c.batch_execute(
        "create table p (id bigint generated always as identity, k int, primary key (id, k)) partition by list (k);
         create table p0 partition of p for values in (0);
         create table p1 (id bigint not null, k int not null, primary key (id, k));
         alter table p attach partition p1 for values in (1);",
    )
    .await
    .unwrap();
    assert_eq!(
        sequences_after(&c, "insert into p (k) values (0), (1)").await,
        seqs(&[("public.p_id_seq", 2)])
    );
    assert_eq!(
        sequences_after(&c, "insert into p1 values (10, 1)").await,
        seqs(&[("public.p_id_seq", 2)])
    );

    // Renamed and moved: still found. Dropped: forgotten, and the commit still works.
    c.batch_execute(
        "create schema other;
         alter table before rename to after;
         alter table after set schema other;",
    )
    .await
    .unwrap();
    assert_eq!(
        sequences_after(&c, "insert into other.after (v) values (2)").await,
        seqs(&[("other.before_id_seq", 2)])
    );
    c.batch_execute("alter table plain drop column id")
        .await
        .unwrap();
    assert_eq!(
        sequences_after(&c, "insert into plain (v) values (0)").await,
        seqs(&[])
    );
    c.batch_execute("drop table other.after").await.unwrap();
    let left: i64 = c
        .query_one(
            "select count(*) from waly.owned_sequences where table_oid not in (select oid from pg_class)
                or exists (select from unnest(sequences) s where s not in (select oid from pg_class))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "dropped tables and sequences are forgotten");
}

/// Not a pass/fail check: prints what the capture costs per single-row INSERT.
#[tokio::test]
async fn capture_cost() {
    const ROWS: i32 = 10_000;
    let pg = postgres();
    let db = pg.create_db("cap_cost");
    let c = connect(&pg.url(&db)).await;
    c.batch_execute(
        "create table bench (id int primary key, v text, at timestamptz default now())",
    )
    .await
    .unwrap();
    // In the server: a loop of single-row INSERT statements (trigger cost alone).
    let server_loop = async |c: &Client| -> Duration {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            c.batch_execute("begin").await.unwrap();
            let t = Instant::now();
            c.batch_execute(&format!(
                "do $$ begin for i in 1..{ROWS} loop insert into bench (id, v) values (i, 'row ' || i); end loop; end $$"
            ))
            .await
            .unwrap();
            best = best.min(t.elapsed());
            c.batch_execute("rollback").await.unwrap();
        }
        best
    };
    // From the client: one prepared INSERT per round trip, in one transaction (no fsync per row).
    let client_loop = async |c: &Client| -> Duration {
        let insert = c
            .prepare("insert into bench (id, v) values ($1, $2)")
            .await
            .unwrap();
        let mut best = Duration::MAX;
        for _ in 0..2 {
            c.batch_execute("begin").await.unwrap();
            let t = Instant::now();
            for i in 0..ROWS {
                c.execute(&insert, &[&i, &format!("row {i}")])
                    .await
                    .unwrap();
            }
            best = best.min(t.elapsed());
            c.batch_execute("rollback").await.unwrap();
        }
        best
    };
    let plain_server = server_loop(&c).await;
    let plain_client = client_loop(&c).await;
    migrate::migrate(&c).await.unwrap();
    let captured_server = server_loop(&c).await;
    let captured_client = client_loop(&c).await;
    let per_row = |d: Duration| d.as_secs_f64() * 1e6 / ROWS as f64;
    eprintln!(
        "capture cost, {ROWS} single-row inserts: in-server loop {:.1} ms -> {:.1} ms ({:.2}x, +{:.1} us/row); \
         client round trips {:.1} ms -> {:.1} ms ({:.2}x, +{:.1} us/row)",
        plain_server.as_secs_f64() * 1e3,
        captured_server.as_secs_f64() * 1e3,
        captured_server.as_secs_f64() / plain_server.as_secs_f64(),
        per_row(captured_server) - per_row(plain_server),
        plain_client.as_secs_f64() * 1e3,
        captured_client.as_secs_f64() * 1e3,
        captured_client.as_secs_f64() / plain_client.as_secs_f64(),
        per_row(captured_client) - per_row(plain_client),
    );
}
