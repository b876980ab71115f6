//! The exact-rebuild proof (DESIGN.md invariant 4), without the proxy: workloads run on a migrated source
//! database, each write transaction ending the way the commit protocol will end it (capture taken before
//! COMMIT, record built, COMMIT, record appended to a file log); the log is then replayed into an empty
//! database holding only the initial schema, and the two `pg_dump`s of the application's schemas must be
//! equal.
//!
//! Sequence positions (pg_dump's `setval` lines) are compared: records carry the position of every
//! sequence owned by a table the transaction inserted into. Not compared: the physical order of rows,
//! because pg_dump writes rows in heap order and an updated row's new version lands wherever free space
//! is, so rows are compared as sorted sets per table.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, NoTls};

use support::*;
use waly::log::{FileLog, FileLogConfig, Log, Position};
use waly::record::{
    CAPTURE_COLUMNS, Change, CommitKind, FORMAT_VERSION, Record, SessionInfo, changes_from_capture,
};
use waly::replay::{self, ReplayOptions, ReplayStats};

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A migrated database, a client on it and the log its transactions go to.
struct Source {
    db: TestDb,
    /// The schema created before waly was installed: the target starts from it.
    setup: String,
    c: Client,
    log: FileLog,
    _dir: tempfile::TempDir,
}

impl Source {
    async fn new(prefix: &str, setup: &str) -> Source {
        let pg = postgres();
        let db = pg.create_db(prefix);
        let c = connect(&pg.url(&db)).await;
        c.batch_execute(setup).await.expect("setup");
        waly::migrate::migrate(&c).await.expect("migrate");
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path().join("log"), FileLogConfig::default()).unwrap();
        Source {
            db,
            setup: setup.to_owned(),
            c,
            log,
            _dir: dir,
        }
    }

    async fn run(&self, sql: &str) {
        self.c
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }

    async fn fail(&self, sql: &str) {
        assert!(
            self.c.batch_execute(sql).await.is_err(),
            "{sql} should fail"
        );
    }

    /// One transaction of statements, each sent as its own query (a DDL's recorded text is the whole
    /// query string it came in), committed through [`commit_logged`].
    async fn tx(&self, statements: &[&str]) -> Option<Position> {
        self.run("begin").await;
        for s in statements {
            self.run(s).await;
        }
        commit_logged(&self.c, &self.log).await
    }

    async fn records(&self) -> Vec<(Position, Record)> {
        self.log
            .read(Position(0), usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.position, Record::from_json(&e.payload).unwrap()))
            .collect()
    }

    /// A new database with the initial schema only.
    async fn empty_target(&self) -> (TestDb, Client) {
        let pg = postgres();
        let db = pg.create_db("replay_target");
        let c = connect(&pg.url(&db)).await;
        c.batch_execute(&self.setup).await.expect("target setup");
        (db, c)
    }

    /// Replays the whole log (through [`replay::apply_log`]) into a new target and asserts it equals the
    /// source.
    async fn assert_rebuilds(&self) -> ReplayStats {
        let (db, t) = self.empty_target().await;
        self.assert_rebuilds_into(&db, &t).await
    }

    async fn assert_rebuilds_into(&self, db: &str, t: &Client) -> ReplayStats {
        let stats = replay::apply_log(t, &self.log, &ReplayOptions::default())
            .await
            .unwrap_or_else(|e| panic!("replay: {e}"));
        assert_eq!(stats.checkpoint, self.log.end());
        assert_eq!(stats.records, self.log.end().0);
        assert_same_database(&self.db, db);
        stats
    }
}

/// What the commit protocol will do at COMMIT: take this transaction's capture, build the record, commit,
/// append. A transaction that wrote nothing is committed and not logged.
async fn commit_logged(c: &Client, log: &FileLog) -> Option<Position> {
    let rows = c
        .query(
            &format!("select {CAPTURE_COLUMNS} from waly.read_changes(true)"),
            &[],
        )
        .await
        .expect("take_capture");
    if rows.is_empty() {
        c.batch_execute("commit").await.unwrap();
        return None;
    }
    let changes = changes_from_capture(&rows).expect("changes from capture");
    let who = c
        .query_one(
            "select pg_current_xact_id()::text, current_user::text, current_database()::text,
                    to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[],
        )
        .await
        .unwrap();
    let record = Record {
        format: FORMAT_VERSION,
        txid: who.get(0),
        gid: String::new(),
        commit: CommitKind::Prepared,
        writer: String::new(),
        decided_through: None,
        committed_at: who.get(3),
        session: SessionInfo {
            role: None,
            database_oid: None,
            user: who.get(1),
            database: who.get(2),
            application_name: None,
            client_addr: "test".into(),
        },
        statements: Vec::new(),
        operations: Vec::new(),
        changes,
    };
    c.batch_execute("commit").await.unwrap();
    Some(
        log.append(Bytes::from(record.to_json()))
            .await
            .unwrap()
            .position,
    )
}

/// A plain dump of the application's schemas, normalised for comparison (see the module header): waly's
/// own objects (its schema, the capture triggers, the event triggers) left out, COPY rows sorted.
fn dump(db: &str) -> String {
    dump_app(&postgres().url(db))
}

fn assert_same_database(source: &str, target: &str) {
    let (s, t) = (dump(source), dump(target));
    assert!(s.contains("COPY "), "the source dump holds no data:\n{s}");
    assert_same_dump(&s, &t);
}

async fn count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn keys_volatile_defaults_and_exact_numbers_rebuild() {
    let s = Source::new(
        "replay_keys",
        "create table serial_t (id serial primary key, note text);
         create table ident_a (id int generated always as identity primary key, v text);
         create table ident_d (id bigint generated by default as identity primary key, v text);
         create table uuid_t (id uuid primary key default gen_random_uuid(),
                              at timestamptz not null default now(),
                              local timestamp default localtimestamp, d date default current_date);
         create table nums (id int primary key, n numeric, n2 numeric(60,30), f float8, r real,
                            fa float8[], i interval, b bytea, j jsonb, t text, g int generated always as (id * 2) stored);
         create type mood as enum ('sad', 'happy');
         create type pair as (a int, b text);
         create domain short as varchar(3) check (value <> '');
         create table kinds (id int primary key, m mood, p pair, ta text[], net inet, r int4range,
                             pt point, ts tsvector, money money, bits bit(3), x xml, pa pair[], d short);",
    )
    .await;
    s.tx(&["insert into serial_t (note) select 'n' || g from generate_series(1, 20) g"])
        .await
        .unwrap();
    s.tx(&[
        "insert into ident_a (v) values ('a'), ('b')",
        "insert into ident_d (v) values ('c')",
        "insert into ident_d (id, v) values (100, 'explicit')",
    ])
    .await
    .unwrap();
    s.tx(&[
        "update serial_t set note = note || '!' where id % 3 = 0",
        "delete from serial_t where id % 5 = 0",
    ])
    .await
    .unwrap();
    s.tx(&[
        "insert into uuid_t default values",
        "insert into uuid_t default values",
    ])
    .await
    .unwrap();
    s.run("set timezone = 'Asia/Kolkata'").await;
    s.tx(&[
        "insert into uuid_t default values",
        "update uuid_t set at = at + interval '1 microsecond'",
    ])
    .await
    .unwrap();
    s.run("reset timezone").await;
    s.tx(&[
        "insert into nums (id, n, n2, f, r, fa, i, b, j, t) values
          (1, 123456789012345678901234567890.123456789012345678901234567890, 1e-30, 1e-30, 1.4e-45,
           '{1e-300,5e-324,1.7976931348623157e308}', '-1 day +2 hours 3.000001 seconds', '\\x00ff10',
           '{\"x\": 1.10, \"y\": [1e400]}', e'tab\\tnewline\\nquote\"'),
          (2, 'NaN', 0.000000000000000000000000000001, 'NaN', 'Infinity', '{-Infinity,NaN}', '1 mon -1 day',
           '', '[null]', ''),
          (3, 1.500, 1.5, 0.1, 0.1, null, '178000000 years', null, '\"\"', null),
          (4, -0.0, -0.0, 1.0000000000000002, 3.4028235e38, '{}', '-00:00:00.000001', null, '{}', 'x')",
    ])
    .await
    .unwrap();
    // A float8 negative zero and json text as written (key order, spacing, duplicate keys) come back.
    s.tx(&[
        "create table texts (id int primary key, z float8, za float8[], j json)",
        "insert into texts values (1, '-0', '{-0,0}', '{\"b\":1,  \"a\" : [1, 2.50] , \"b\": 2}')",
    ])
    .await
    .unwrap();
    s.run("set extra_float_digits = 0; set intervalstyle = 'sql_standard'")
        .await;
    s.tx(&["update nums set f = f / 3, r = r / 3, i = i - interval '1 day 1 microsecond' where id in (3, 4)"]).await.unwrap();
    s.run("reset extra_float_digits; reset intervalstyle").await;
    s.tx(&[
        "insert into kinds values
          (1, 'happy', row(1, 'a\"b'), '{\"a,b\",NULL,null,\"\"}', '10.0.0.1/8', '[1,5)', '(1.5,-2)',
           'a fat cat', 12.34, b'101', '<a x=\"1\">t</a>', '{\"(2,x)\"}', 'x'),
          (2, null, null, null, null, 'empty', null, null, null, null, null, '{}', null)",
        "update kinds set m = 'sad', p = row(null, null) where id = 1",
    ])
    .await
    .unwrap();
    s.assert_rebuilds().await;
}

#[tokio::test]
async fn triggers_cascades_and_failed_work_rebuild() {
    let s = Source::new(
        "replay_triggers",
        "create table customers (id serial primary key, name text not null unique);
         create table orders (id serial primary key,
                              customer int not null references customers on delete cascade,
                              total numeric(12, 2));
         create table lines (id serial primary key, order_id int references orders on delete cascade, item text);
         create table audit (id bigserial primary key, tbl text, op text, row_data jsonb,
                             at timestamptz default clock_timestamp());
         create function audit_fn() returns trigger language plpgsql as $$
         begin
           insert into audit (tbl, op, row_data) values (tg_table_name, tg_op, to_jsonb(coalesce(new, old)));
           return null;
         end $$;
         create trigger orders_audit after insert or update or delete on orders
           for each row execute function audit_fn();
         create function stamp() returns trigger language plpgsql as $$
         begin new.item := upper(new.item) || ' @' || txid_current(); return new; end $$;
         create trigger lines_stamp before insert on lines for each row execute function stamp();",
    )
    .await;
    s.tx(&["insert into customers (name) values ('ann'), ('bob'), ('cy')",
           "insert into orders (customer, total) select c.id, 10.05 * g from customers c, generate_series(1, 3) g",
           "insert into lines (order_id, item) select id, 'item' || id from orders"])
        .await
        .unwrap();
    // A failing statement under a savepoint: its effects vanish, the rest of the transaction commits.
    s.run("begin").await;
    s.run("insert into customers (name) values ('dee')").await;
    s.run("savepoint a").await;
    s.run("update orders set total = total + 1 where customer = 1")
        .await;
    s.fail("insert into customers (name) values ('ann')").await;
    s.run("rollback to savepoint a").await;
    s.run("update orders set total = total * 2 where customer = 2")
        .await;
    assert!(commit_logged(&s.c, &s.log).await.is_some());
    // A rolled-back transaction: nothing logged.
    let before = s.log.end();
    s.run("begin; insert into customers (name) values ('ghost'); update orders set total = 0; rollback").await;
    // A transaction that only read: nothing logged.
    assert_eq!(s.tx(&["select * from orders"]).await, None);
    assert_eq!(s.log.end(), before);
    // ON DELETE CASCADE through two levels, each cascaded delete audited by the trigger.
    s.tx(&["delete from customers where name = 'bob'"])
        .await
        .unwrap();
    s.tx(&["update customers set name = 'cy2' where name = 'cy'"])
        .await
        .unwrap();
    // The values 'ghost' took from customers_id_seq show in the next committed insert's record (a
    // sequence moved by a rolled-back insert after the last committed one is not in the log).
    s.tx(&["insert into customers (name) values ('eve')"])
        .await
        .unwrap();
    s.assert_rebuilds().await;
    assert_eq!(
        count(&s.c, "select count(*) from audit where op = 'DELETE'").await,
        3
    );
}

#[tokio::test]
async fn truncate_copy_ddl_and_keyless_tables_rebuild() {
    let s = Source::new(
        "replay_ddl",
        "create table parent (id int primary key, v text);
         create table child (id int primary key, parent_id int references parent, v text);
         create table scratch (id serial primary key, v text);
         create table dup (a int, b text, c float8);
         create table part (id int, k int, v text, primary key (id, k)) partition by list (k);
         create table part_0 partition of part for values in (0);
         create table part_1 partition of part for values in (1);
         create table part_2 partition of part for values in (2);",
    )
    .await;
    s.tx(&[
        "insert into parent select g, 'p' || g from generate_series(1, 5) g",
        "insert into child select g, g, 'c' from generate_series(1, 5) g",
        "insert into scratch (v) select 's' from generate_series(1, 5)",
    ])
    .await
    .unwrap();
    s.tx(&[
        "truncate scratch",
        "insert into scratch (v) values ('after truncate')",
    ])
    .await
    .unwrap();
    s.tx(&[
        "truncate parent cascade",
        "insert into parent values (9, 'again')",
    ])
    .await
    .unwrap();

    // COPY FROM, inside a transaction.
    s.run("begin").await;
    let sink = s.c.copy_in("copy scratch (v) from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    let data: String = (0..500).map(|i| format!("copied {i}\n")).collect();
    sink.send(Bytes::from(data)).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 500);
    commit_logged(&s.c, &s.log).await.unwrap();
    // One record larger than a batch and than one INSERT's share of images.
    s.tx(&["insert into scratch (v) select 'big ' || g from generate_series(1, 12000) g"])
        .await
        .unwrap();

    // DDL between writes: the target starts without these.
    s.tx(&[
        "create table later (id bigint generated always as identity primary key, v text not null)",
        "insert into later (v) select 'l' || g from generate_series(1, 10) g",
    ])
    .await
    .unwrap();
    s.tx(&[
        "alter table later add column w int default 7",
        "update later set w = id * 10 where id <= 3",
        "create index later_w on later (w)",
    ])
    .await
    .unwrap();
    s.tx(&["alter table later drop column v"]).await.unwrap();
    s.tx(&["insert into later (w) values (99)"]).await.unwrap();
    s.tx(&["create table summary as select w, count(*) as n from later group by w"])
        .await
        .unwrap();
    s.tx(&["update summary set n = n + 100"]).await.unwrap();

    // A table without a primary key, duplicate rows: one of them changed, one deleted, by ctid.
    s.tx(&[
        "insert into dup select 1, 'same', 0.1 from generate_series(1, 4)",
        "insert into dup values (2, null, 'NaN'), (2, null, 'NaN')",
    ])
    .await
    .unwrap();
    s.tx(&["update dup set b = 'changed' where ctid = (select ctid from dup where a = 1 limit 1)"])
        .await
        .unwrap();
    s.tx(&[
        "delete from dup where ctid = (select ctid from dup where a = 1 and b = 'same' limit 1)",
        "update dup set c = 1e-30 where a = 2",
    ])
    .await
    .unwrap();
    s.tx(&["delete from dup where ctid = (select ctid from dup where a = 2 limit 1)"])
        .await
        .unwrap();
    s.assert_rebuilds().await;
}

/// DDL whose defaults or conversions Postgres evaluates for the rows already there: run again in replay,
/// they would give other values (a later now(), other uuids, another physical order for a serial).
#[tokio::test]
async fn ddl_that_gives_existing_rows_values_of_its_own_rebuilds() {
    let s = Source::new(
        "replay_ddl_values",
        "create table parent (id int primary key, v text);
         create table child (id int primary key, parent_id int references parent on delete cascade);
         create table keyless (a int, b text);
         create table part (id int, k int, primary key (id, k)) partition by list (k);
         create table part_0 partition of part for values in (0);
         create table part_1 partition of part for values in (1);",
    )
    .await;
    s.tx(&[
        "insert into parent select g, 'p' || g from generate_series(1, 20) g",
        "insert into child select g, g from generate_series(1, 20) g",
        "insert into keyless select g % 3, 'k' from generate_series(1, 9) g",
        "insert into part select g, g % 2 from generate_series(1, 10) g",
    ])
    .await
    .unwrap();
    // Volatile defaults rewrite the table, a referenced one included.
    s.tx(&["alter table parent add column token uuid default gen_random_uuid()"])
        .await
        .unwrap();
    // A default evaluated once: every existing row gets this transaction's now().
    s.tx(&["alter table parent add column created_at timestamptz not null default now()"])
        .await
        .unwrap();
    // A rewrite between writes of the same transaction: the rows before it and after it stay exact.
    s.tx(&[
        "insert into parent values (21, 'before')",
        "alter table parent add column r float8 default random()",
        "insert into parent (id, v) values (22, 'after')",
        "update parent set v = 'changed after' where id = 1",
    ])
    .await
    .unwrap();
    s.tx(&["alter table parent add column n serial"])
        .await
        .unwrap();
    s.tx(&["alter table keyless add column u uuid default gen_random_uuid()"])
        .await
        .unwrap();
    s.tx(&[
        "alter table part add column at timestamptz default clock_timestamp()",
        "alter table part add column day timestamptz default now()",
    ])
    .await
    .unwrap();
    // A conversion with a volatile USING expression.
    s.tx(
        &["alter table parent alter column created_at type timestamp \
            using created_at + random() * interval '1 day'"],
    )
    .await
    .unwrap();
    // Rows with values of their own, then DDL that changes no row's values: nothing may be filled.
    s.tx(&[
        "insert into parent (id, v, created_at) values (30, 'explicit', '2001-02-03 04:05:06')",
    ])
    .await
    .unwrap();
    s.tx(&[
        "alter table parent alter column token set default gen_random_uuid()",
        "alter table parent alter column created_at drop default",
        "alter table parent add column status text default 'new'",
        "alter table parent alter column v type varchar",
    ])
    .await
    .unwrap();
    s.tx(&["delete from parent where id = 2"]).await.unwrap();

    let records = s.records().await;
    let kinds: Vec<Vec<&str>> = records
        .iter()
        .map(|(_, r)| {
            r.changes
                .iter()
                .filter_map(|c| match c {
                    Change::Rewrite { .. } => Some("rewrite"),
                    Change::Fill { .. } => Some("fill"),
                    _ => None,
                })
                .collect()
        })
        .collect();
    assert_eq!(
        kinds[1],
        ["rewrite"],
        "a volatile default rewrites the table"
    );
    assert_eq!(
        kinds[2],
        ["fill"],
        "a now() default is one value for every row"
    );
    assert_eq!(
        kinds[6],
        ["rewrite", "rewrite", "fill", "fill"],
        "each partition"
    );
    assert!(
        kinds[9].is_empty(),
        "SET/DROP DEFAULT and a constant default keep the rows: {kinds:?}"
    );
    let Change::Rewrite { rows, .. } = records[3]
        .1
        .changes
        .iter()
        .find(|c| matches!(c, Change::Rewrite { .. }))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(*rows, 21, "the rewrite holds every row of the table then");
    s.assert_rebuilds().await;
}

/// A workload of `n` transactions of 100 row changes each (60 inserts, 30 updates, 10 deletes).
async fn bulk(s: &Source, n: usize) {
    for i in 0..n {
        let base = i * 60;
        s.tx(&[
            &format!(
                "insert into bulk (id, v, n, at) select g, md5(g::text), g * 1.01, now()
                 from generate_series({}, {}) g",
                base + 1,
                base + 60
            ),
            &format!(
                "update bulk set v = v || 'u', n = n / 7 where id between {} and {}",
                base + 1,
                base + 30
            ),
            &format!(
                "delete from bulk where id between {} and {}",
                base + 51,
                base + 60
            ),
        ])
        .await
        .unwrap();
    }
}

const BULK: &str = "create table bulk (id int primary key, v text, n numeric, at timestamptz, x float8 default random())";

#[tokio::test]
async fn a_killed_replay_resumes_from_its_checkpoint() {
    let s = Source::new("replay_resume", BULK).await;
    bulk(&s, 40).await;
    let records = s.records().await;
    let (db, t) = s.empty_target().await;
    let small = ReplayOptions {
        batch_changes: 150,
        until: None,
    };

    // Half, cleanly.
    let half = ReplayOptions {
        until: Some(Position(20)),
        ..small.clone()
    };
    let first = replay::apply(&t, records.clone(), &half).await.unwrap();
    assert_eq!((first.records, first.checkpoint), (20, Position(20)));
    assert_ne!(dump(&s.db), dump(&db), "half a log must not compare equal");

    // Then killed mid-batch: the connection is dropped while a batch is in flight.
    let url = postgres().url(&db);
    let killed = connect(&url).await;
    let r = tokio::time::timeout(
        Duration::from_millis(15),
        replay::apply(&killed, records.clone(), &small),
    )
    .await;
    assert!(r.is_err(), "the replay finished before it could be killed");
    drop(killed);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t2 = connect(&url).await;
    let resumed = replay::load_checkpoint(&t2).await.unwrap();
    assert!(resumed >= Position(20), "{resumed}");
    let rest = replay::apply(&t2, records.clone(), &small).await.unwrap();
    assert_eq!(rest.resumed_from, resumed);
    assert_eq!(rest.skipped, resumed.0);
    assert_eq!(rest.checkpoint, Position(40));
    assert_same_database(&s.db, &db);

    // And again: everything is at or below the checkpoint, nothing is applied twice.
    let again = replay::apply(&t2, records, &small).await.unwrap();
    assert_eq!((again.records, again.skipped), (0, 40));
    assert_same_database(&s.db, &db);
    drop(t);
}

#[tokio::test]
async fn replay_rate_for_50000_row_changes() {
    let s = Source::new("replay_rate", BULK).await;
    let started = Instant::now();
    bulk(&s, 500).await;
    let source_time = started.elapsed();
    let stats = s.assert_rebuilds().await;
    assert_eq!(stats.row_changes, 50_000);
    eprintln!(
        "replay rate: {} row changes in {} records, {} batches, {:.2?} -> {:.0} row changes/s \
         (source workload with logging took {source_time:.2?})",
        stats.row_changes,
        stats.records,
        stats.batches,
        stats.elapsed,
        stats.rows_per_second()
    );
}

#[tokio::test]
async fn an_identity_value_changed_by_update_stops_replay_loudly() {
    let s = Source::new(
        "replay_identity_default",
        "create table t (id int generated always as identity primary key, v text)",
    )
    .await;
    s.tx(&["insert into t (v) values ('a')"]).await.unwrap();
    s.tx(&["update t set id = default"]).await.unwrap();
    let (_target_db, t) = s.empty_target().await;
    let e = replay::apply_log(&t, &s.log, &ReplayOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(e, replay::ReplayError::Diverged { rows: 0, .. }),
        "{e}"
    );
    // Both records were in the failed batch, which was rolled back whole.
    assert_eq!(replay::load_checkpoint(&t).await.unwrap(), Position(0));
    assert_eq!(count(&t, "select count(*) from t").await, 0);
}

#[tokio::test]
async fn waly_replay_rebuilds_from_the_log_and_a_second_run_has_nothing_to_do() {
    let s = Source::new("replay_cli", BULK).await;
    bulk(&s, 20).await;
    let (db, _t) = s.empty_target().await;
    let config = s._dir.path().join("waly.yaml");
    std::fs::write(&config, format!("data_dir: {}\n", s._dir.path().display())).unwrap();
    let replay = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_waly"))
            .args([
                "replay",
                "--config",
                config.to_str().unwrap(),
                "--target",
                &postgres().url(&db),
                "--batch",
                "500",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    // The source's FileLog is still open for writing: the replay reads only what is proven durable,
    // which here is every record but the last batch's.
    let first = replay();
    assert!(first.contains("replayed positions 1..=19 "), "{first}");
    // With the writer gone every complete record is final.
    drop(s.log);
    let rest = replay();
    assert!(rest.contains("replayed positions 20..=20 "), "{rest}");
    assert_same_database(&s.db, &db);
    let again = replay();
    assert!(
        again.contains("nothing to replay: the target is at position 20"),
        "{again}"
    );
}

/// The position of one sequence in a database, as pg_dump's setval line has it.
async fn position(c: &Client, sequence: &str) -> (i64, bool) {
    let row = c
        .query_one(
            &format!("select last_value, is_called from {sequence}"),
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn sequences_rebuild_to_their_live_positions() {
    let s = Source::new(
        "replay_sequences",
        "create table ser (id serial primary key, v text);
         create table idn (id bigint generated always as identity (start with 10 increment by 5) primary key,
                           v text);
         create table parted (id bigserial, k int, v text, primary key (id, k)) partition by list (k);
         create table parted_0 partition of parted for values in (0);
         create table parted_1 partition of parted for values in (1);
         create table unused (id serial primary key);
         create table restarted (id int generated by default as identity primary key);
         create sequence standalone start 50;
         create table drawn (id int primary key default nextval('standalone'), v text);",
    )
    .await;
    s.tx(&[
        "insert into drawn (v) values ('a'), ('b')",
        "insert into ser (v) values ('a'), ('b')",
        "insert into idn (v) values ('a'), ('b')",
        "insert into parted (k, v) values (0, 'a'), (1, 'b')",
        "insert into restarted default values",
    ])
    .await
    .unwrap();
    // Rolled back, and failed under a savepoint: the values they took are gone, the sequences moved on.
    s.run("begin; insert into ser (v) select 'x' from generate_series(1, 5); insert into idn (v) values ('x'); rollback")
        .await;
    s.run("begin").await;
    s.run("insert into parted (k, v) values (1, 'c')").await;
    s.run("savepoint a").await;
    s.fail("insert into parted (k, v) values (7, 'no partition')")
        .await;
    s.run("rollback to savepoint a").await;
    assert!(commit_logged(&s.c, &s.log).await.is_some());
    // Committed inserts after the rolled-back ones: the live sequences are ahead of max(id).
    s.tx(&[
        "insert into ser (v) values ('c')",
        "insert into idn (v) values ('c')",
    ])
    .await
    .unwrap();
    assert_eq!(
        count(
            &s.c,
            "select (string_agg(id::text, ',' order by id) = '1,2,8')::int::int8 from ser"
        )
        .await,
        1
    );
    // A sequence reset by TRUNCATE ... RESTART IDENTITY, and one set with is_called false by the
    // application in a transaction that inserted (the position is read when the transaction ends).
    s.tx(&["truncate restarted restart identity"])
        .await
        .unwrap();
    s.tx(&[
        "insert into ser (id, v) values (1000, 'explicit')",
        "select setval('ser_id_seq', 500, false)",
    ])
    .await
    .unwrap();
    assert_eq!(position(&s.c, "ser_id_seq").await, (500, false));
    assert_eq!(position(&s.c, "idn_id_seq").await, (25, true));
    assert_eq!(position(&s.c, "restarted_id_seq").await, (1, false));

    let (db, t) = s.empty_target().await;
    let stats = s.assert_rebuilds_into(&db, &t).await;
    assert!(stats.sequences >= 6, "{stats:?}");
    assert_eq!(position(&t, "ser_id_seq").await, (500, false));
    assert_eq!(position(&t, "idn_id_seq").await, (25, true));
    assert_eq!(position(&t, "parted_id_seq").await, (4, true));
    assert_eq!(position(&t, "restarted_id_seq").await, (1, false));
    assert_eq!(position(&t, "unused_id_seq").await, (1, false));
    let dump = dump(&db);
    assert!(
        dump.contains("SELECT pg_catalog.setval('public.ser_id_seq', 500, false);"),
        "{dump}"
    );
}

#[tokio::test]
async fn set_based_updates_and_deletes_keep_every_row_exact() {
    let s = Source::new(
        "replay_sets",
        "create table t (id int primary key, u int unique, v text);
         create table two (a int, b text, v int, primary key (a, b));
         create table bag (a int, v text);",
    )
    .await;
    s.tx(&[
        "insert into t select g, g, 'v' || g from generate_series(1, 50) g",
        "insert into two select g % 5, 'k' || (g / 5), g from generate_series(0, 49) g",
        "insert into bag select g % 3, 'b' from generate_series(1, 12) g",
    ])
    .await
    .unwrap();
    // One record: a row changed twice, a key changed and the freed key taken by another row, a unique value
    // handed from one row to another, deletes of changed rows, keyless rows changed and deleted, and a
    // composite key changed, all among plain updates of many rows.
    s.tx(&[
        "update t set v = v || '!' where id between 10 and 40",
        "update t set v = v || '?' where id = 10",
        "update t set id = 1000 where id = 5",
        "update t set id = 5 where id = 6",
        "update t set u = 1000 where id = 7",
        "update t set u = 7 where id = 8",
        "delete from t where id in (11, 1000)",
        "update bag set v = 'c' where ctid = (select ctid from bag where a = 1 limit 1)",
        "delete from bag where ctid = (select ctid from bag where a = 2 limit 1)",
        "update two set b = b || 'x', v = -v where a = 1",
        "update two set a = 9 where a = 2 and b = 'k3'",
        "delete from two where a = 3",
    ])
    .await
    .unwrap();
    s.tx(&[
        "update t set u = -u",
        "update t set u = -u where id % 2 = 0",
    ])
    .await
    .unwrap();
    s.assert_rebuilds().await;
}

/// Many small transactions over a few hot rows and several tables, as tpcb-like makes them: replay groups
/// the batch by table and folds successive updates of one row (also through key changes) into one.
#[tokio::test]
async fn hot_rows_updated_in_many_transactions_rebuild_exactly() {
    let s = Source::new(
        "replay_hot",
        "create table branch (id int primary key, balance int);
         create table account (id int primary key, balance int);
         create table history (n int, account int, delta int);",
    )
    .await;
    s.tx(&[
        "insert into branch select g, 0 from generate_series(1, 2) g",
        "insert into account select g, 0 from generate_series(1, 20) g",
    ])
    .await
    .unwrap();
    for n in 0..120 {
        let (account, delta) = (n % 20 + 1, n * 7 % 13 - 6);
        let branch = n % 2 + 1;
        s.tx(&[
            &format!("update account set balance = balance + {delta} where id = {account}"),
            &format!("update branch set balance = balance + {delta} where id = {branch}"),
            &format!("insert into history values ({n}, {account}, {delta})"),
        ])
        .await
        .unwrap();
        if n % 40 == 39 {
            // A key moved away and back, and a row deleted after updates, among the hot updates.
            s.tx(&[
                "update account set id = id + 100 where id = 3",
                "update account set balance = balance + 1 where id = 103",
                "update account set id = 3 where id = 103",
            ])
            .await
            .unwrap();
        }
    }
    s.tx(&["delete from account where id = 20"]).await.unwrap();
    s.assert_rebuilds().await;
}

#[tokio::test]
async fn a_missing_row_stops_set_based_replay_at_its_change() {
    let s = Source::new(
        "replay_sets_diverge",
        "create table t (id int primary key, v text)",
    )
    .await;
    s.tx(&["insert into t select g, 'a' from generate_series(1, 10) g"])
        .await
        .unwrap();
    s.tx(&["update t set v = 'b'"]).await.unwrap();
    let records = s.records().await;
    let (_target_db, t) = s.empty_target().await;
    let first = ReplayOptions {
        until: Some(Position(1)),
        ..ReplayOptions::default()
    };
    replay::apply(&t, records.clone(), &first).await.unwrap();
    t.batch_execute("delete from t where id = 7").await.unwrap();
    let e = replay::apply(&t, records.clone(), &ReplayOptions::default())
        .await
        .unwrap_err();
    let replay::ReplayError::Diverged {
        position,
        index,
        rows,
        ref change,
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!((position, rows), (Position(2), 0), "{e}");
    let Change::Update { pk, .. } = &records[1].1.changes[index] else {
        panic!("{e}")
    };
    assert_eq!(pk.as_ref().unwrap().get(), r#"{"id": 7}"#, "{change}");
    assert_eq!(replay::load_checkpoint(&t).await.unwrap(), Position(1));
}
