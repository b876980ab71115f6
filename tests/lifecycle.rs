//! waly's own behaviour around sessions: configuration errors, TLS, authentication methods, protocol
//! negotiation, statement counting, graceful shutdown and the ways of reaching Postgres.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use support::raw::{RawClient, query, shape};
use support::*;

fn waly_with(extra_yaml: &str, users_yaml: Option<&str>) -> Waly {
    let mut o = WalyOptions {
        extra_yaml: extra_yaml.to_owned(),
        ..Default::default()
    };
    if let Some(u) = users_yaml {
        o.users_yaml = u.to_owned();
    }
    Waly::start_with(o)
}

#[test]
fn sigterm_closes_idle_sessions_lets_open_transactions_finish_and_refuses_new_ones() {
    let db = postgres().create_db("sigterm");
    let mut waly = waly_with("shutdown_timeout_secs: 20\n", None);
    psql(&waly.url(&db), "create table t (n int)");
    let mut idle = RawClient::connect(waly.port, &db, PG_PASSWORD);
    let mut busy = RawClient::connect(waly.port, &db, PG_PASSWORD);
    busy.send(&query("begin; insert into t values (1)"));
    assert_eq!(shape(&busy.recv_until_ready(1)), vec!["C", "C", "Z:T"]);

    waly.terminate();
    // The idle session is closed at once, with Postgres' words for an administrator's shutdown.
    let msgs = idle.recv_until_ready(1);
    assert_eq!(shape(&msgs), vec!["E:FATAL:57P01"]);
    assert!(idle.closed());
    wait_until("waly to stop accepting", Duration::from_secs(10), || {
        TcpStream::connect(waly.addr()).is_err()
    });

    // The open transaction may finish; once idle, its session is closed too.
    busy.send(&query("insert into t values (2); commit"));
    assert_eq!(shape(&busy.recv_until_ready(1)), vec!["C", "C", "Z:I"]);
    assert_eq!(shape(&busy.recv_until_ready(1)), vec!["E:FATAL:57P01"]);
    let status = waly
        .wait_exit(Duration::from_secs(15))
        .expect("waly exits once sessions are done");
    assert!(status.success(), "waly exited with {status}");
    assert_eq!(
        psql(&postgres().url(&db), "select count(*) from t").trim(),
        "2"
    );
}

#[test]
fn shutdown_timeout_closes_sessions_that_do_not_finish() {
    let db = postgres().create_db("shuttimeout");
    let mut waly = waly_with("shutdown_timeout_secs: 1\n", None);
    psql(&waly.url(&db), "create table t (n int)");
    let mut stuck = RawClient::connect(waly.port, &db, PG_PASSWORD);
    stuck.send(&query("begin; insert into t values (1)"));
    stuck.recv_until_ready(1);
    waly.terminate();
    let msgs = stuck.recv_until_ready(1);
    assert_eq!(shape(&msgs), vec!["E:FATAL:57P01"]);
    assert!(
        waly.wait_exit(Duration::from_secs(15)).is_some(),
        "waly must exit after the timeout"
    );
    wait_until(
        "the abandoned transaction to roll back",
        Duration::from_secs(10),
        || psql(&postgres().url(&db), "select count(*) from t").trim() == "0",
    );
}

fn serve_error(config: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("waly.yaml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_waly"))
        .args(["serve", "--config", path_str(&path)])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "waly accepted a bad configuration");
    String::from_utf8_lossy(&out.stderr).replace(path_str(&path), "waly.yaml")
}

#[test]
fn a_bad_configuration_is_refused_with_file_line_and_reason() {
    let good = "listen: 127.0.0.1:0\nupstream: postgres://127.0.0.1:5432\nusers:\n  - name: app\n    method: scram-sha-256\n    password_env: APP_PW\n";
    let env = [("APP_PW", "x")];
    let cases = [
        (
            good.replace("method: scram-sha-256", "method: scram"),
            "waly.yaml:5:13: users[0].method: unknown variant `scram`",
        ),
        (
            good.replace("listen:", "lisen:"),
            "waly.yaml:1:1: unknown field `lisen`",
        ),
        (
            good.replace("127.0.0.1:0", "localhost"),
            "waly.yaml:1:9: listen: invalid socket address syntax",
        ),
        (
            good.replace("APP_PW", "MISSING_PW"),
            "waly.yaml:6:5: user \"app\": environment variable MISSING_PW is not set",
        ),
        (
            good.replace("postgres://127.0.0.1:5432", "postgres://[bad"),
            "waly.yaml:2:1: invalid upstream",
        ),
        (
            format!("{good}  - name: app\n    method: trust\n"),
            "waly.yaml:4:5: user \"app\" is listed twice",
        ),
        ("users: [\n".to_owned(), "waly.yaml:2:1:"),
    ];
    for (config, expected) in cases {
        let err = serve_error(&config, &[], &env);
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    }
    let err = serve_error(good, &["--listen", "nowhere"], &env);
    assert!(
        err.contains("--listen / WALY_LISTEN: invalid address \"nowhere\""),
        "{err}"
    );
    let err = serve_error(good, &[], &[("APP_PW", "x"), ("WALY_LOG_FORMAT", "xml")]);
    assert!(
        err.contains("--log-format / WALY_LOG_FORMAT: unknown log format \"xml\""),
        "{err}"
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_waly"))
        .args(["serve", "--config", "/nonexistent/waly.yaml"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("/nonexistent/waly.yaml: cannot read the configuration file")
    );
}

fn self_signed_cert(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    run_ok(
        Command::new("openssl").args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-keyout",
            path_str(&key),
            "-out",
            path_str(&cert),
        ]),
        "openssl req",
    );
    (path_str(&cert).to_owned(), path_str(&key).to_owned())
}

fn conninfo(url: &str) -> std::process::Output {
    Command::new("psql")
        .args([url, "-X", "-c", "\\conninfo", "-c", "select 42"])
        .output()
        .unwrap()
}

#[test]
fn tls_is_negotiated_when_configured_and_refused_cleanly_when_not() {
    let db = postgres().create_db("tls");
    let plain = Waly::start();
    let out = conninfo(&format!("{}?sslmode=require", plain.url(&db)));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("server does not support SSL, but SSL was required")
    );
    let out = conninfo(&format!("{}?sslmode=prefer", plain.url(&db)));
    assert!(
        out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("SSL connection")
    );

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed_cert(dir.path());
    let tls = waly_with(
        &format!("tls:\n  cert: {cert}\n  key: {key}\n  required: true\n"),
        None,
    );
    for params in [
        "sslmode=require",
        "sslmode=require&channel_binding=require",
        "sslmode=require&channel_binding=disable",
    ] {
        let out = conninfo(&format!("{}?{params}", tls.url(&db)));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{params}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("SSL connection (protocol: TLSv1.3") && stdout.contains("42"),
            "{params}: {stdout}"
        );
    }
    let out = conninfo(&format!("{}?sslmode=disable", tls.url(&db)));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FATAL:  waly requires TLS"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn md5_cleartext_and_trust_methods_authenticate_as_configured() {
    let db = postgres().create_db("methods");
    for method in ["md5", "password", "trust"] {
        let users =
            format!("  - name: postgres\n    method: {method}\n    password_env: WALY_TEST_PW\n");
        let waly = waly_with("", Some(&users));
        let right = psql_output(&waly.url(&db), "select current_user");
        assert!(
            right.status.success(),
            "{method}: {}",
            String::from_utf8_lossy(&right.stderr)
        );
        let wrong = psql_output(
            &format!("postgres://postgres:nope@127.0.0.1:{}/{db}", waly.port),
            "select 1",
        );
        if method == "trust" {
            assert!(wrong.status.success(), "trust must not check the password");
        } else {
            assert!(
                String::from_utf8_lossy(&wrong.stderr).contains("password authentication failed"),
                "{method}"
            );
        }
    }
}

#[test]
fn newer_protocol_versions_are_negotiated_down_and_replication_is_refused() {
    let db = postgres().create_db("negotiate");
    let waly = Waly::start();
    let mut s = TcpStream::connect(waly.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&0x0003_0002u32.to_be_bytes());
    for (k, v) in [
        ("user", "postgres"),
        ("database", db.as_str()),
        ("_pq_.something", "on"),
    ] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    s.write_all(&packet).unwrap();
    let mut c = RawClient { stream: s };
    let m = c.recv().unwrap();
    assert_eq!(m.tag, b'v', "expected NegotiateProtocolVersion");
    assert_eq!(&m.body[..8], &[0, 0, 0, 0, 0, 0, 0, 1]);
    assert_eq!(&m.body[8..], b"_pq_.something\0");
    assert_eq!(c.recv().unwrap().tag, b'R', "authentication follows");

    let out = psql_output(
        &format!("{}?replication=database", waly.url(&db)),
        "IDENTIFY_SYSTEM",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("waly does not proxy replication connections")
    );
}

#[test]
fn statements_are_classified_and_counted() {
    let db = postgres().create_db("classify");
    let mut waly = Waly::start();
    let url = waly.url(&db);
    for sql in [
        "create table t (n int)",
        "insert into t values (1)",
        "select * from t",
        "select * from t",
        "begin; update t set n = 2; commit",
        "set search_path = public",
        "do $$ begin perform 1; end $$",
    ] {
        psql(&url, sql);
    }
    waly.terminate();
    waly.wait_exit(Duration::from_secs(15)).expect("exit");
    let logs = waly.logs();
    let stopped: serde_json::Value = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "waly stopped")
        .unwrap_or_else(|| panic!("no 'waly stopped' line in:\n{logs}"));
    let count = |k: &str| {
        stopped[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k} in {stopped}"))
    };
    assert_eq!(count("ddl"), 1);
    assert_eq!(count("write"), 2);
    assert_eq!(count("read"), 2);
    assert_eq!(count("transaction"), 2);
    assert_eq!(count("session"), 1);
    assert_eq!(count("unknown"), 1);
    assert_eq!(count("cache_hits"), 0, "each psql run is its own session");
}

#[test]
fn waly_migrate_installs_the_schema_once_and_reports_status() {
    let db = postgres().create_db("migratecli");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("waly.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream: postgres://127.0.0.1:{}\nusers:\n  - name: postgres\n    method: scram-sha-256\n    password_env: WALY_TEST_PW\n",
            postgres().port
        ),
    )
    .unwrap();
    let migrate = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_waly"))
            .args(["migrate", "--config", path_str(&config), "--database", &db])
            .args(extra)
            .env("WALY_TEST_PW", PG_PASSWORD)
            .output()
            .unwrap()
    };
    let pending = migrate(&["--status"]);
    assert!(
        !pending.status.success(),
        "an unmigrated database is not current"
    );
    assert!(String::from_utf8_lossy(&pending.stdout).contains("0001_schema.sql  pending"));

    let first = migrate(&[]);
    let out = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let versions: Vec<i32> = waly::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    let n = versions.len();
    assert!(
        out.contains(&format!(
            "applied {n} migration(s) {versions:?}, 0 already present"
        )),
        "{out}"
    );
    let again = migrate(&[]);
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains(&format!("applied 0 migration(s) [], {n} already present"))
    );
    let status = migrate(&["--status"]);
    assert!(status.status.success());
    assert!(String::from_utf8_lossy(&status.stdout).contains("0003_ddl_capture.sql  applied"));
    assert_eq!(
        psql(&postgres().url(&db), "select count(*) from waly.migrations").trim(),
        n.to_string()
    );
}

#[tokio::test]
async fn waly_log_tail_and_show_read_the_log_while_it_is_open_for_writing() {
    use waly::log::{FileLog, FileLogConfig, Log};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = FileLog::open(FileLog::dir_in(&data), FileLogConfig::default()).unwrap();
    for n in 1..=3 {
        let record = format!(
            r#"{{"format":1,"txid":"{n}00","gid":"waly_{n}00","committed_at":"2026-11-23T10:00:0{n}.000000Z",
            "session":{{"user":"app","database":"shop","client_addr":"127.0.0.1:5000"}},
            "statements":[{{"sql":"insert into t values ({n})"}}],
            "changes":[{{"kind":"insert","schema":"public","table":"t","pk":{{"id":{n}}},"new":{{"id":{n},"amount":1.000000000000000000000000000001}}}}]}}"#
        );
        log.append(record.into_bytes().into()).await.unwrap();
    }
    let config = dir.path().join("waly.yaml");
    std::fs::write(&config, format!("data_dir: {}\n", data.display())).unwrap();
    let waly = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_waly"))
            .arg("log")
            .args(args)
            .args(["--config", path_str(&config)])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = waly(&["tail", "-n", "2", "--json"]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["position"], 2);
    assert_eq!(lines[1]["record"]["txid"], "300");
    assert!(
        stdout.contains("1.000000000000000000000000000001"),
        "row images keep every digit: {stdout}"
    );

    let (ok, stdout, _) = waly(&["show", "1"]);
    assert!(ok);
    assert!(
        stdout.contains("app@shop") && stdout.contains("insert public.t pk={\"id\":1}"),
        "{stdout}"
    );
    let (ok, _, stderr) = waly(&["show", "9"]);
    assert!(
        !ok && stderr.contains("no record at position 9: the log ends at 3"),
        "{stderr}"
    );
}

#[tokio::test]
async fn waly_log_show_tells_whether_a_direct_commit_committed() {
    use waly::log::{FileLog, FileLogConfig, Log};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = FileLog::open(FileLog::dir_in(&data), FileLogConfig::default()).unwrap();
    let direct = |n: u32, decided_through: u64| {
        format!(
            r#"{{"format":2,"txid":"{n}00","gid":"waly_{n}00","committed_at":"2026-12-04T10:00:0{n}.000000Z",
            "commit":"direct","writer":"log1-boot1","decided_through":{decided_through},
            "session":{{"user":"app","database":"shop","client_addr":"127.0.0.1:5000"}},
            "statements":[{{"sql":"insert into t values ({n})"}}],
            "changes":[{{"kind":"insert","schema":"public","table":"t","pk":{{"id":{n}}},"new":{{"id":{n}}}}}]}}"#
        )
    };
    let outcome = r#"{"kind":"outcome","format":2,"writer":"log1-boot1","aborted":[{"position":2,"txid":"200"}],"decided_through":2}"#;
    for payload in [direct(1, 0), direct(2, 0), outcome.to_owned(), direct(4, 2)] {
        log.append(payload.into_bytes().into()).await.unwrap();
    }
    let config = dir.path().join("waly.yaml");
    std::fs::write(&config, format!("data_dir: {}\n", data.display())).unwrap();
    let show = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_waly"))
            .args(["log", "show"])
            .args(args)
            .args(["--config", path_str(&config)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = show(&["1"]);
    assert!(
        first.contains("commit direct") && first.contains("outcome: committed"),
        "{first}"
    );
    let second = show(&["2"]);
    assert!(second.contains("outcome: NOT COMMITTED"), "{second}");
    let json: serde_json::Value = serde_json::from_str(show(&["2", "--json"]).trim()).unwrap();
    assert_eq!(json["outcome"], "not committed", "{json}");
    assert_eq!(json["record"]["txid"], "200");
    let marker = show(&["3"]);
    assert!(
        marker.contains("writer log1-boot1")
            && marker.contains("decided through 2")
            && marker.contains("not committed: position 2 (txid 200)"),
        "{marker}"
    );
    let last = show(&["4"]);
    assert!(last.contains("outcome: undecided"), "{last}");
}

#[tokio::test]
async fn postgres_is_reached_through_its_unix_domain_socket_when_the_upstream_names_a_directory() {
    let pg = postgres();
    let socket_dir = pg.socket_dir();
    assert!(
        socket_dir.join(format!(".s.PGSQL.{}", pg.port)).exists(),
        "the test cluster has no Unix socket in {} (scripts/pg.sh leaves it out when the path is over 107 bytes)",
        socket_dir.display()
    );
    let db = pg.create_db("unix_upstream");
    let waly = Waly::start_with(WalyOptions {
        upstream_host: path_str(&socket_dir).to_owned(),
        ..Default::default()
    });

    let (client, connection) = tokio_postgres::connect(&waly.url(&db), tokio_postgres::NoTls)
        .await
        .expect("connect through waly");
    tokio::spawn(connection);
    let over_unix: bool = client
        .query_one("select inet_client_addr() is null", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        over_unix,
        "waly's backend connection is not the Unix socket"
    );

    client
        .batch_execute("create table t (id int primary key, v text); insert into t values (1, 'over the socket')")
        .await
        .expect("writes commit through a Unix-socket upstream");
    let records = waly.records().await;
    assert!(
        records.iter().any(|r| r.changes.iter().any(|c| matches!(c,
            waly::record::Change::Insert { table, new, .. }
                if table == "t" && new.get().contains("over the socket")))),
        "the insert is in the log: {records:?}"
    );

    // A CancelRequest must reach the backend over the same socket.
    let token = client.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        token.cancel_query(tokio_postgres::NoTls).await
    });
    let slow = client.simple_query("select pg_sleep(30)").await;
    canceller.await.unwrap().expect("cancel request sent");
    let err = slow.expect_err("the sleep is cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_waly"))
        .args([
            "migrate",
            "--status",
            "--config",
            path_str(&waly.config_path()),
        ])
        .args(["--database", &db])
        .env("WALY_TEST_PW", PG_PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "waly migrate reaches Postgres over the socket: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
