//! The crash suite of the write-ahead path (DESIGN.md invariants 1, 2 and 4): waly killed with SIGKILL
//! under a conflicting write load, a torn log tail, a full log disk, and Postgres restarted under load.
//! After each, what a user would check: no prepared `waly_` transaction is left, every transaction whose
//! COMMIT was acknowledged is in the database and in the log, the log and the database hold the same
//! transactions (logged means committed), the application's own invariant (balances equal the ledger)
//! holds, and replaying the log into an empty database gives the same `pg_dump`.
//!
//! The tests that kill waly or restart Postgres run on private clusters, so that their restarts and
//! kills never disturb the other test files' work on the shared cluster.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_postgres::{Client, NoTls};

use support::backend::{LogAccess, kafka_mode};
use support::*;
use waly::log::{FileLog, Position};
use waly::record::{Change, Record};

/// The application's schema.
const SCHEMA: [&str; 3] = [
    "CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)",
    "CREATE TABLE ledger (id bigint PRIMARY KEY, client int NOT NULL, account int NOT NULL, \
                          amount int NOT NULL, n bigserial NOT NULL)",
    "INSERT INTO accounts SELECT g, 0 FROM generate_series(1, 10) g",
];

async fn create_schema(c: &Client) {
    for sql in SCHEMA {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

const ACCOUNTS: i32 = 10;

async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Waits until a query through waly to `db` answers: the accept loop runs only after start-up recovery.
async fn wait_serving(waly: &Waly, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match connect(&waly.url(db)).await {
            Ok(c) => match c.simple_query("select 1").await {
                Ok(_) => return,
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            panic!("waly does not serve {db}: {last}\n{}", waly.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn env_of(options: &WalyOptions) -> Vec<(String, String)> {
    options.env.clone()
}

// ---------------------------------------------------------------------------------------------------
// The write load.

/// The statements one client uses, prepared on its connection.
struct Prepared {
    insert: tokio_postgres::Statement,
    update: tokio_postgres::Statement,
    both: tokio_postgres::Statement,
}

impl Prepared {
    async fn on(c: &Client) -> Result<Prepared, tokio_postgres::Error> {
        Ok(Prepared {
            insert: c
                .prepare("INSERT INTO ledger (id, client, account, amount) VALUES ($1, $2, $3, $4)")
                .await?,
            update: c
                .prepare("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
                .await?,
            both: c
                .prepare(
                    "WITH l AS (INSERT INTO ledger (id, client, account, amount) VALUES ($1, $2, $3, $4) \
                                RETURNING account, amount) \
                     UPDATE accounts a SET balance = a.balance + l.amount FROM l WHERE a.id = l.account",
                )
                .await?,
        })
    }
}

/// One transaction: inserts ledger row `id` and adds its amount to one random account, in one of four
/// ways. `Ok` means its COMMIT (or its autocommit statement) was acknowledged.
async fn one_transaction(
    c: &Client,
    p: &Prepared,
    client: i32,
    id: i64,
) -> Result<(), tokio_postgres::Error> {
    let (mode, account, amount) = {
        let mut rng = rand::rng();
        (
            rng.random_range(0..4u32),
            rng.random_range(1..=ACCOUNTS),
            rng.random_range(1..=100i32),
        )
    };
    match mode {
        // A simple query holding the whole transaction (waly splits it at its COMMIT).
        0 => {
            c.batch_execute(&format!(
                "BEGIN; \
                 INSERT INTO ledger (id, client, account, amount) VALUES ({id}, {client}, {account}, {amount}); \
                 UPDATE accounts SET balance = balance + {amount} WHERE id = {account}; \
                 COMMIT"
            ))
            .await
        }
        // An explicit transaction of prepared statements.
        1 => {
            c.batch_execute("BEGIN").await?;
            c.execute(&p.insert, &[&id, &client, &account, &amount]).await?;
            c.execute(&p.update, &[&amount, &account]).await?;
            c.batch_execute("COMMIT").await
        }
        // One autocommit prepared statement writing both tables.
        2 => c
            .execute(&p.both, &[&id, &client, &account, &amount])
            .await
            .map(drop),
        // An autocommit simple insert that moves no money.
        _ => {
            c.batch_execute(&format!(
                "INSERT INTO ledger (id, client, account, amount) VALUES ({id}, {client}, {account}, 0)"
            ))
            .await
        }
    }
}

/// What one client saw.
#[derive(Default)]
struct ClientRun {
    acked: Vec<i64>,
    attempts: u64,
    /// Errors, with whether waly or Postgres had already been disturbed when they came.
    errors: Vec<(bool, String)>,
    /// Acknowledged after Postgres was back (test 4).
    acked_after_restart: usize,
}

fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------------
// What the database and the log hold.

/// Every record in the log, in order.
async fn log_records(access: &LogAccess) -> Vec<(Position, Record)> {
    access.entries().await
}

/// The primary keys of `table` inserted by the records, asserting none is inserted twice.
fn logged_ids(records: &[(Position, Record)], table: &str) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    for (position, record) in records {
        for change in &record.changes {
            if let Change::Insert { table: t, new, .. } = change
                && t == table
            {
                let row: serde_json::Value = serde_json::from_str(new.get()).unwrap();
                let id = row["id"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("no id in {row}"));
                assert!(
                    ids.insert(id),
                    "{table} id {id} is inserted by two records (again at position {position})"
                );
            }
        }
    }
    ids
}

async fn ids_in(c: &Client, table: &str) -> BTreeSet<i64> {
    c.query(&format!("SELECT id::int8 FROM {table}"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect()
}

async fn prepared_waly_xacts(c: &Client) -> Vec<String> {
    c.query(
        "SELECT gid || ' (prepared ' || prepared::text || ')' FROM pg_prepared_xacts \
          WHERE database = current_database() AND gid LIKE 'waly\\_%'",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Balances must equal the sums of their ledger rows.
async fn assert_balances_match_ledger(c: &Client) {
    let bad: Vec<String> = c
        .query(
            "SELECT format('account %s: balance %s, ledger %s', a.id, a.balance, \
                           coalesce((SELECT sum(amount) FROM ledger l WHERE l.account = a.id), 0)) \
               FROM accounts a \
              WHERE a.balance <> coalesce((SELECT sum(amount) FROM ledger l WHERE l.account = a.id), 0)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(bad.is_empty(), "balances do not match the ledger: {bad:?}");
    let n: i64 = c
        .query_one("SELECT count(*) FROM accounts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, ACCOUNTS as i64, "accounts rows");
}

/// The user's checks once waly serves again: nothing left prepared, acknowledged means committed and
/// logged, logged means committed (and the reverse), balances equal the ledger.
async fn assert_consistent(
    what: &str,
    direct: &Client,
    access: &LogAccess,
    acked: &BTreeSet<i64>,
) -> usize {
    // Recovery may decide some only once the log has settled (Kafka: twice the append timeout).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = prepared_waly_xacts(direct).await;
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: prepared transactions left: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let records = log_records(access).await;
    let logged = logged_ids(&records, "ledger");
    let live = ids_in(direct, "ledger").await;
    let lost: Vec<_> = acked.difference(&live).collect();
    assert!(
        lost.is_empty(),
        "{what}: acknowledged ids missing from the database: {lost:?}"
    );
    let unlogged_acks: Vec<_> = acked.difference(&logged).collect();
    assert!(
        unlogged_acks.is_empty(),
        "{what}: acknowledged ids missing from the log: {unlogged_acks:?}"
    );
    let committed_unlogged: Vec<_> = live.difference(&logged).collect();
    assert!(
        committed_unlogged.is_empty(),
        "{what}: committed but not in the log: {committed_unlogged:?}"
    );
    let logged_missing: Vec<_> = logged.difference(&live).collect();
    assert!(
        logged_missing.is_empty(),
        "{what}: in the log but not committed: {logged_missing:?}"
    );
    assert_balances_match_ledger(direct).await;
    records.len()
}

// ---------------------------------------------------------------------------------------------------
// Replay and dumps.

/// `waly replay` of the whole log of `config` (data directory `data_dir` if the config's is overridden).
fn replay_cli(config: &Path, data_dir: Option<&Path>, access: &LogAccess, target: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waly"));
    cmd.args([
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--target",
        target,
    ])
    .env("WALY_TEST_PW", PG_PASSWORD);
    if let Some(d) = data_dir {
        cmd.arg("--data-dir").arg(d);
    }
    cmd.args(access.replay_args(None));
    run_ok(&mut cmd, "waly replay")
}

/// Replays the whole log into a new, empty database and asserts its dump equals the live one's.
fn assert_replay_equals_live(
    live_url: &str,
    target_url: &str,
    config: &Path,
    data_dir: Option<&Path>,
    access: &LogAccess,
    expect_tables: &[&str],
) {
    let end = std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Runtime::new().unwrap();
            // Every commit decided first: the replay must not stop short of the end.
            rt.block_on(log_records(access));
            rt.block_on(access.raw_end())
        })
        .join()
        .unwrap()
    });
    let out = replay_cli(config, data_dir, access, target_url);
    assert!(
        out.contains(&format!("replayed positions 1..={end} ")),
        "the log ends at {end}: {out}"
    );
    let (live, rebuilt) = (dump_app(live_url), dump_app(target_url));
    for t in expect_tables {
        assert!(
            live.contains(&format!("COPY public.{t} ")),
            "the live dump holds no {t} data:\n{live}"
        );
    }
    if expect_tables.contains(&"ledger") {
        assert!(
            live.contains("pg_catalog.setval"),
            "no sequence in the live dump:\n{live}"
        );
    }
    assert_same_dump(&live, &rebuilt);
}

// ---------------------------------------------------------------------------------------------------
// 1. SIGKILL under load.

/// Rounds of kill and restart; `WALY_CRASH_ROUNDS` raises it for a longer hunt.
fn kill_rounds() -> i64 {
    std::env::var("WALY_CRASH_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
}
const KILL_CLIENTS: i32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_no_acknowledged_commit_and_logs_exactly_the_committed() {
    let pg = PrivatePostgres::start("waly-crash-kill-");
    let db = pg.create_db("crash_kill");
    let options = pg.waly_options();
    let env = env_of(&options);
    let mut waly = Waly::start_with(options);
    let access = waly.access.clone();
    let direct = connect(&pg.url(&db)).await.unwrap();
    let setup = connect(&waly.url(&db)).await.unwrap();
    create_schema(&setup).await;
    drop(setup);

    let mut acked_all = BTreeSet::new();
    let mut summary = Vec::new();
    for round in 0..kill_rounds() {
        let mut clients = Vec::new();
        for client in 0..KILL_CLIENTS {
            let c = connect(&waly.url(&db)).await.expect("connect through waly");
            let p = Prepared::on(&c).await.expect("prepare");
            clients.push((client, c, p));
        }
        let killed = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|(client, c, p)| {
                let killed = Arc::clone(&killed);
                tokio::spawn(async move {
                    let mut run = ClientRun::default();
                    for seq in 0.. {
                        let id = round * 1_000_000 + client as i64 * 100_000 + seq;
                        run.attempts += 1;
                        match one_transaction(&c, &p, client, id).await {
                            Ok(()) => run.acked.push(id),
                            Err(e) => {
                                run.errors
                                    .push((killed.load(Ordering::SeqCst), describe(&e)));
                                break;
                            }
                        }
                    }
                    run
                })
            })
            .collect();
        let delay = rand::rng().random_range(100..=800u64);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        killed.store(true, Ordering::SeqCst);
        waly.kill9();
        let mut acked = 0;
        let mut attempts = 0;
        for t in tasks {
            let run = tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("a client hangs after waly was killed")
                .unwrap();
            for (after_kill, e) in &run.errors {
                assert!(
                    after_kill,
                    "round {round}: a client failed before the kill: {e}"
                );
            }
            acked += run.acked.len();
            attempts += run.attempts;
            acked_all.extend(run.acked);
        }
        let restarting = Instant::now();
        waly.respawn(&env);
        wait_serving(&waly, &db).await;
        let records =
            assert_consistent(&format!("round {round}"), &direct, &access, &acked_all).await;
        summary.push(format!(
            "round {round}: killed after {delay} ms, {acked}/{attempts} acknowledged, {records} records, restarted and checked in {:.1?}",
            restarting.elapsed()
        ));
    }
    println!("{}", summary.join("\n"));
    let logs = waly.logs();
    println!(
        "restarts whose recovery resolved prepared transactions: {}; rolled forward: {}, rolled back: {}",
        logs.matches("recovery resolved the prepared transactions")
            .count(),
        logs.matches("recovery: committed a prepared transaction")
            .count(),
        logs.matches("recovery: rolled back a prepared transaction")
            .count(),
    );

    // One last insert from a single client, so that the last logged position of the ledger's sequence is
    // the live one (docs/record.md, known limits of sequence positions), then a clean stop.
    let c = connect(&waly.url(&db)).await.unwrap();
    c.batch_execute("INSERT INTO ledger (id, client, account, amount) VALUES (-1, -1, 1, 0)")
        .await
        .unwrap();
    drop(c);
    acked_all.insert(-1);
    let status = waly.stop_gracefully(Duration::from_secs(30));
    assert!(
        status.success(),
        "waly exited with {status}:\n{}",
        waly.logs()
    );
    assert_consistent("after the last round", &direct, &access, &acked_all).await;

    let target = pg.create_db("crash_kill_replay");
    assert_replay_equals_live(
        &pg.url(&db),
        &pg.url(&target),
        &waly.config_path(),
        None,
        &access,
        &["ledger", "accounts"],
    );
}

// ---------------------------------------------------------------------------------------------------
// 2. A torn tail.

/// The last segment file of the log in `data_dir`.
fn last_segment(data_dir: &Path) -> PathBuf {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(FileLog::dir_in(data_dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    segments.pop().expect("a segment file")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_with_a_warning_and_writes_and_replay_still_work() {
    if kafka_mode() {
        eprintln!("file log only: this test damages or fills the log's files");
        return;
    }
    let pg = PrivatePostgres::start("waly-crash-torn-");
    let db = pg.create_db("crash_torn");
    let options = pg.waly_options();
    let env = env_of(&options);
    let mut waly = Waly::start_with(options);
    let data_dir = waly.data_dir();
    let access = LogAccess::File {
        data_dir: data_dir.clone(),
    };
    let c = connect(&waly.url(&db)).await.unwrap();
    create_schema(&c).await;
    let p = Prepared::on(&c).await.unwrap();
    let mut acked = BTreeSet::new();
    for id in 1..=20 {
        one_transaction(&c, &p, 1, id).await.unwrap();
        acked.insert(id);
    }
    drop((c, p));
    let status = waly.stop_gracefully(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", waly.logs());
    let before = log_records(&access).await;
    let end = access.raw_end().await;

    // What a crash in the middle of writing the next batch leaves: the start of a record frame (length,
    // checksum, position, timestamp, batch index) and the first bytes of its payload.
    let payload = br#"{"format":1,"txid":"99999","gid":"waly_"#;
    let mut torn = Vec::new();
    torn.extend_from_slice(&400u32.to_le_bytes());
    torn.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    torn.extend_from_slice(&(end.0 + 1).to_le_bytes());
    torn.extend_from_slice(&0i64.to_le_bytes());
    torn.extend_from_slice(&0u32.to_le_bytes());
    torn.extend_from_slice(payload);
    let segment = last_segment(&data_dir);
    let len_before = std::fs::metadata(&segment).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .unwrap();
        f.write_all(&torn).unwrap();
        f.sync_all().unwrap();
    }
    let logs_before = waly.logs().len();

    waly.respawn(&env);
    wait_serving(&waly, &db).await;
    let logs = waly.logs()[logs_before..].to_owned();
    let cut_line = logs
        .lines()
        .find(|l| l.contains("cut a torn or corrupt tail"))
        .unwrap_or_else(|| panic!("no warning about the torn tail:\n{logs}"));
    assert!(cut_line.contains("WARN"), "{cut_line}");
    println!("{cut_line}");
    assert!(
        cut_line.contains(&format!("\"cut_bytes\":{}", torn.len())),
        "the warning does not say {} bytes were cut: {cut_line}",
        torn.len()
    );
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        len_before,
        "the segment was not cut back"
    );
    assert_eq!(
        log_records(&access).await,
        before,
        "the cut changed the records before it"
    );

    // Writes work, and land right after the cut.
    let c = connect(&waly.url(&db)).await.unwrap();
    let p = Prepared::on(&c).await.unwrap();
    for id in 21..=40 {
        one_transaction(&c, &p, 2, id).await.unwrap();
        acked.insert(id);
    }
    drop((c, p));
    let status = waly.stop_gracefully(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", waly.logs());
    let direct = connect(&pg.url(&db)).await.unwrap();
    let records = assert_consistent("after the cut", &direct, &access, &acked).await;
    assert_eq!(records, before.len() + 20, "records after the cut");
    let first_after = log_records(&access).await[before.len()].0;
    assert_eq!(
        first_after,
        end.next(),
        "the first record after the cut takes its position"
    );

    let target = pg.create_db("crash_torn_replay");
    assert_replay_equals_live(
        &pg.url(&db),
        &pg.url(&target),
        &waly.config_path(),
        None,
        &access,
        &["ledger", "accounts"],
    );
}

// ---------------------------------------------------------------------------------------------------
// 3. A full log disk.

/// A tmpfs mounted for the test, unmounted when dropped (also when the test fails).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_fails_the_commit_with_53100_and_writes_resume_once_space_is_freed() {
    if kafka_mode() {
        eprintln!("file log only: this test damages or fills the log's files");
        return;
    }
    let pg = PrivatePostgres::start("waly-crash-full-");
    let db = pg.create_db("crash_full");
    let scratch = tempfile::tempdir().unwrap();
    let disk = scratch.path().join("disk");
    let _tmpfs = match Tmpfs::mount(&disk, "2m") {
        Ok(m) => m,
        Err(why) => {
            println!(
                "SKIPPED: cannot mount a tmpfs for the log ({why}); run as root to test a full log disk"
            );
            return;
        }
    };
    // Taken before waly starts, freed later to make room again.
    let filler = disk.join("filler");
    std::fs::write(&filler, vec![0u8; 512 << 10]).unwrap();
    let data_dir = disk.join("data");
    let mut options = pg.waly_options();
    options
        .env
        .push(("WALY_DATA_DIR".into(), data_dir.to_str().unwrap().into()));
    // Declared after the mount guard: dropped (killed) before the tmpfs is unmounted.
    let mut waly = Waly::start_with(options);

    let c = connect(&waly.url(&db)).await.unwrap();
    c.batch_execute("CREATE TABLE big (id int PRIMARY KEY, payload text NOT NULL)")
        .await
        .unwrap();
    let insert = c
        .prepare("INSERT INTO big VALUES ($1::int, repeat(md5($1::int::text), 3200))")
        .await
        .unwrap();
    let mut acked = BTreeSet::new();
    let mut failure = None;
    for id in 1..=200 {
        match c.execute(&insert, &[&id]).await {
            Ok(_) => {
                acked.insert(id as i64);
            }
            Err(e) => {
                failure = Some((id, e));
                break;
            }
        }
    }
    let (failed_id, e) = failure.expect("200 inserts of 100 kB fit in a 2 MB log disk");
    let db_error = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {e}"));
    assert_eq!(db_error.code().code(), "53100", "{db_error:?}");
    assert!(
        db_error.message().contains("log"),
        "the message does not name the log: {}",
        db_error.message()
    );
    println!("insert {failed_id} failed: {db_error:?}");

    // Not committed; the session reads on.
    let direct = connect(&pg.url(&db)).await.unwrap();
    let n: i64 = direct
        .query_one("SELECT count(*) FROM big WHERE id = $1", &[&failed_id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "the failed transaction's row is in the database");
    let n: i64 = c
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, acked.len() as i64, "reads through the same session");
    assert!(prepared_waly_xacts(&direct).await.is_empty());

    // Space freed: the same session writes again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    c.execute(&insert, &[&failed_id])
        .await
        .expect("the insert after freeing space");
    acked.insert(failed_id as i64);
    c.execute(&insert, &[&(failed_id + 1)])
        .await
        .expect("another insert");
    acked.insert(failed_id as i64 + 1);
    assert!(waly.child_alive());

    let live = ids_in(&direct, "big").await;
    let access = LogAccess::File {
        data_dir: data_dir.clone(),
    };
    let records = log_records(&access).await;
    let logged = logged_ids(&records, "big");
    assert_eq!(live, acked, "committed rows");
    assert_eq!(logged, acked, "logged rows");
    drop(c);
    let status = waly.stop_gracefully(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", waly.logs());
    let target = pg.create_db("crash_full_replay");
    assert_replay_equals_live(
        &pg.url(&db),
        &pg.url(&target),
        &waly.config_path(),
        Some(&data_dir),
        &access,
        &["big"],
    );
}

// ---------------------------------------------------------------------------------------------------
// 4. Postgres restarted under load.

const RESTART_CLIENTS: i32 = 4;

/// Waits until the clients acknowledged `n` transactions in all.
async fn wait_for_acks(acks: &AtomicUsize, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while acks.load(Ordering::SeqCst) < n {
        assert!(
            Instant::now() < deadline,
            "{what}: only {} of {n} transactions acknowledged",
            acks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_load_leaves_nothing_prepared_and_loses_no_acknowledged_commit() {
    let pg = PrivatePostgres::start("waly-crash-pgrestart-");
    let db = pg.create_db("crash_pgrestart");
    let mut waly = Waly::start_with(pg.waly_options());
    let access = waly.access.clone();
    let url = waly.url(&db);
    let setup = connect(&url).await.unwrap();
    create_schema(&setup).await;
    drop(setup);

    let disturbed = Arc::new(AtomicBool::new(false));
    let restarted = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..RESTART_CLIENTS)
        .map(|client| {
            let (url, disturbed, stop) = (url.clone(), Arc::clone(&disturbed), Arc::clone(&stop));
            let (restarted, acks) = (Arc::clone(&restarted), Arc::clone(&acks));
            tokio::spawn(async move {
                let mut run = ClientRun::default();
                let mut conn: Option<(Client, Prepared)> = None;
                let mut seq = 0i64;
                while !stop.load(Ordering::SeqCst) {
                    if conn.as_ref().is_none_or(|(c, _)| c.is_closed()) {
                        conn = None;
                        let opened = async {
                            let c = connect(&url).await?;
                            let p = Prepared::on(&c).await?;
                            Ok::<_, tokio_postgres::Error>((c, p))
                        };
                        match opened.await {
                            Ok(cp) => conn = Some(cp),
                            Err(e) => {
                                run.errors
                                    .push((disturbed.load(Ordering::SeqCst), describe(&e)));
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        }
                    }
                    let (c, p) = conn.as_ref().unwrap();
                    seq += 1;
                    let id = client as i64 * 1_000_000 + seq;
                    run.attempts += 1;
                    match one_transaction(c, p, client, id).await {
                        Ok(()) => {
                            run.acked.push(id);
                            acks.fetch_add(1, Ordering::SeqCst);
                            if restarted.load(Ordering::SeqCst) {
                                run.acked_after_restart += 1;
                            }
                        }
                        Err(e) => {
                            run.errors
                                .push((disturbed.load(Ordering::SeqCst), describe(&e)));
                            // A transaction left open by the error is rolled back; a broken connection
                            // is replaced.
                            let _ = c.batch_execute("ROLLBACK").await;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                run
            })
        })
        .collect();

    // Postgres goes down in the middle of the load: once it is well under way.
    wait_for_acks(&acks, 100, "before the restart").await;
    disturbed.store(true, Ordering::SeqCst);
    let restart = {
        let pg_data = pg.data();
        let port = pg.port;
        tokio::task::spawn_blocking(move || {
            for cmd in ["stop", "start"] {
                let mut c = Command::new(project_root().join("scripts/pg.sh"));
                c.arg(cmd).arg(&pg_data).env("PGPASSWORD", PG_PASSWORD);
                if cmd == "start" {
                    c.arg(port.to_string());
                }
                run_ok(&mut c, &format!("scripts/pg.sh {cmd}"));
            }
        })
    };
    restart.await.unwrap();
    restarted.store(true, Ordering::SeqCst);
    // The load goes on against the restarted Postgres, through the same waly.
    let back = Instant::now();
    let before = acks.load(Ordering::SeqCst);
    wait_for_acks(&acks, before + 100, "after the restart").await;
    stop.store(true, Ordering::SeqCst);
    let mut acked = BTreeSet::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut attempts = 0;
    let mut after_restart = 0;
    for t in tasks {
        let run = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("a client hangs")
            .unwrap();
        after_restart += run.acked_after_restart;
        for (after, e) in &run.errors {
            assert!(after, "a client failed before Postgres was restarted: {e}");
            *errors.entry(e.clone()).or_default() += 1;
        }
        attempts += run.attempts;
        acked.extend(run.acked);
    }
    println!(
        "{}/{attempts} acknowledged; load ran {:.1?} after Postgres was back; errors: {errors:#?}",
        acked.len(),
        back.elapsed()
    );
    assert!(
        after_restart > 0,
        "no transaction was acknowledged after Postgres came back"
    );

    let direct = connect(&pg.url(&db)).await.unwrap();
    // Prepared transactions of sessions that lost their backend are resolved by waly's resolver.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !prepared_waly_xacts(&direct).await.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_consistent("after the Postgres restart", &direct, &access, &acked).await;
    // A last single-client insert settles the ledger's sequence position in the log.
    let c = connect(&url).await.unwrap();
    c.batch_execute("INSERT INTO ledger (id, client, account, amount) VALUES (-1, -1, 1, 0)")
        .await
        .unwrap();
    acked.insert(-1);
    drop(c);
    let status = waly.stop_gracefully(Duration::from_secs(30));
    assert!(status.success(), "{status}:\n{}", waly.logs());
    assert_consistent("after waly stopped", &direct, &access, &acked).await;

    let target = pg.create_db("crash_pgrestart_replay");
    assert_replay_equals_live(
        &pg.url(&db),
        &pg.url(&target),
        &waly.config_path(),
        None,
        &access,
        &["ledger", "accounts"],
    );
}

// ---------------------------------------------------------------------------------------------------

/// Start-up recovery resolves only prepared transactions recorded for its own log: a transaction another
/// waly (its own data directory, its own log) has prepared and is about to COMMIT PREPARED must be left
/// alone, or that waly's record would be logged but never committed (invariant 2). The other waly's
/// in-flight commit is played by hand, under a gid of another log, to make the race deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_leaves_another_walys_commit_in_flight_alone() {
    let pg = PrivatePostgres::start("waly-crash-two-");
    let db_a = pg.create_db("crash_two_a");
    let a = connect(&pg.url(&db_a)).await.unwrap();
    a.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY); \
         BEGIN; INSERT INTO t VALUES (1); PREPARE TRANSACTION 'waly_0a0b0c-18f00000000a_777'",
    )
    .await
    .unwrap();
    // Another waly, with its own data directory, starts on the same cluster to serve another database.
    let db_b = pg.create_db("crash_two_b");
    let b = Waly::start_with(pg.waly_options());
    wait_serving(&b, &db_b).await;
    let left: i64 = a
        .query_one(
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'waly_0a0b0c-18f00000000a_777'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left,
        1,
        "a waly starting in front of database {db_b} resolved a transaction another process prepared in \
         database {db_a}:\n{}",
        b.logs()
            .lines()
            .filter(|l| l.contains("recovery"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    a.batch_execute("ROLLBACK PREPARED 'waly_0a0b0c-18f00000000a_777'")
        .await
        .unwrap();
}

/// A TCP path from waly to Postgres that the test can cut, as a network failure would: Postgres learns of
/// it only when it next writes to the connection.
struct Cable {
    port: u16,
    cut: tokio::sync::watch::Sender<u32>,
}

impl Cable {
    async fn to(upstream_port: u16) -> Cable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = tokio::sync::watch::channel(0u32);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut cuts = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Cable { port, cut }
    }

    /// Breaks every connection open through the cable now; new ones still get through.
    fn cut_all(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_backend_connection_breaks_while_it_waits_leaves_nothing_prepared() {
    let pg = postgres();
    let db = pg.create_db("lost_backend");
    let direct = connect(&pg.url(&db)).await.unwrap();
    // A deferred check that takes 3 s: the commit's first round trip (which fires deferred constraints,
    // then prepares) is still running in Postgres when waly's connection to it breaks.
    direct
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY); \
             CREATE FUNCTION slow_check() RETURNS trigger LANGUAGE plpgsql AS \
               $$ BEGIN PERFORM pg_sleep(3); RETURN NULL; END $$; \
             CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED \
               FOR EACH ROW EXECUTE FUNCTION slow_check()",
        )
        .await
        .unwrap();
    let cable = Cable::to(pg.port).await;
    let waly = Waly::start_with(WalyOptions {
        upstream_port: cable.port,
        ..WalyOptions::default()
    });
    wait_serving(&waly, &db).await;

    let client = connect(&waly.url(&db)).await.unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let committing = tokio::spawn(async move { client.batch_execute("COMMIT").await });
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cable.cut_all();
    let answer = tokio::time::timeout(Duration::from_secs(20), committing)
        .await
        .expect("the client got no answer to its COMMIT")
        .unwrap();
    assert!(
        answer.is_err(),
        "COMMIT was acknowledged although waly lost its backend before the record was written"
    );

    // Two-phase: the backend, unaware, ran on to PREPARE TRANSACTION once the check finished. Nothing
    // holds that gid any more: a recovery pass must roll it back (it never reached the log), freeing the
    // row. Direct: the backend finds its client gone once the check finished and rolls back by itself.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut saw_orphan = false;
    while two_phase() {
        let left = prepared_waly_xacts(&direct).await;
        saw_orphan |= !left.is_empty();
        if left.is_empty() && waly.logs().contains("rolled back a prepared transaction") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "prepared transactions left 40 s after the connection broke: {left:?} (seen prepared: \
             {saw_orphan})\n{}",
            waly.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rows: i64 = direct
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "the unacknowledged insert took effect");
    let logged = log_records(&waly.access).await;
    assert!(
        logged_ids(&logged, "t").is_empty(),
        "the unacknowledged insert is in the log"
    );
    // The row is free: the same insert through waly commits (and waits out the check).
    let again = connect(&waly.url(&db)).await.unwrap();
    again
        .batch_execute("INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    let logged = log_records(&waly.access).await;
    assert_eq!(logged_ids(&logged, "t"), BTreeSet::from([1]));
}
