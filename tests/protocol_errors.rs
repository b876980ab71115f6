//! Errors and bad input through waly: each case is compared with what Postgres itself does, and other
//! sessions must carry on.

mod support;

use std::process::Command;
use std::time::Duration;

use support::raw::{RawClient, extended, query, shape, sync};
use support::*;

#[test]
fn wrong_password_unknown_database_and_unknown_user_fail_like_postgres() {
    let t = Targets::new("autherr");
    let port = t.waly.port;
    let cases = [
        (
            format!("postgres://postgres:wrong@127.0.0.1:{port}/{}", t.waly_db),
            "FATAL:  password authentication failed for user \"postgres\"",
        ),
        (
            format!("postgres://postgres:{PG_PASSWORD}@127.0.0.1:{port}/no_such_db"),
            "FATAL:  database \"no_such_db\" does not exist",
        ),
        (
            format!("postgres://intruder:x@127.0.0.1:{port}/{}", t.waly_db),
            "FATAL:  password authentication failed for user \"intruder\"",
        ),
    ];
    for (url, expected) in &cases {
        let out = psql_output(url, "select 1");
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(*expected),
            "expected {expected:?}, got {stderr}"
        );
    }
    // The same failures directly, for the record: Postgres words them identically.
    let direct = psql_output(
        &format!(
            "postgres://postgres:wrong@127.0.0.1:{}/{}",
            postgres().port,
            t.direct_db
        ),
        "select 1",
    );
    assert!(String::from_utf8_lossy(&direct.stderr).contains(cases[0].1));
    assert_eq!(
        psql(&t.waly_url(), "select 1").trim(),
        "1",
        "waly keeps serving good logins"
    );
}

#[test]
fn syntax_error_in_a_pipeline_recovers_at_sync_exactly_like_postgres() {
    let t = Targets::new("pipeline");
    let mut shapes = Vec::new();
    for port in [postgres().port, t.waly.port] {
        let db = if port == t.waly.port {
            &t.waly_db
        } else {
            &t.direct_db
        };
        let mut c = RawClient::connect(port, db, PG_PASSWORD);
        let mut pipeline = Vec::new();
        pipeline.extend(extended("select 1"));
        pipeline.extend(extended("selec oops"));
        pipeline.extend(extended("select 2"));
        pipeline.extend(sync());
        pipeline.extend(extended("select 3"));
        pipeline.extend(sync());
        pipeline.extend(query("select 4; select 5"));
        c.send(&pipeline);
        let msgs = c.recv_until_ready(3);
        let s = shape(&msgs);
        let error = msgs
            .iter()
            .find(|m| m.tag == b'E')
            .expect("an error for the bad statement");
        assert_eq!(error.code().as_deref(), Some("42601"));
        assert!(
            error.field(b'P').is_some(),
            "the error keeps its position field"
        );
        let rows: Vec<String> = msgs
            .iter()
            .filter(|m| m.tag == b'D')
            .map(|m| String::from_utf8_lossy(&m.body[6..]).into_owned())
            .collect();
        assert_eq!(
            rows,
            vec!["1", "3", "4", "5"],
            "statements after the error up to Sync are skipped, then all run"
        );
        shapes.push(s);
    }
    assert_eq!(
        shapes[0], shapes[1],
        "waly's pipeline differs from Postgres'"
    );
}

/// Sends `bytes` after login and returns what came back before the server closed the connection.
fn send_bad(port: u16, db: &str, bytes: &[u8]) -> (Vec<String>, Option<String>, bool) {
    let mut c = RawClient::connect(port, db, PG_PASSWORD);
    c.send(bytes);
    let msgs = c.recv_until_ready(1);
    let message = msgs
        .iter()
        .find(|m| m.tag == b'E')
        .and_then(|m| m.field(b'M'));
    (shape(&msgs), message, c.closed())
}

#[test]
fn malformed_and_oversized_frames_get_a_fatal_error_and_nothing_else_breaks() {
    let t = Targets::new("frames");
    let mut bystander = RawClient::connect(t.waly.port, &t.waly_db, PG_PASSWORD);
    bystander.send(&query(
        "begin; create table survivors (n int); insert into survivors values (1)",
    ));
    bystander.recv_until_ready(1);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unknown message type", vec![b'z', 0, 0, 0, 4]),
        ("length below four", vec![b'Q', 0, 0, 0, 2, 0]),
        ("negative length", vec![b'Q', 0x80, 0, 0, 0]),
        (
            "over the 1 GB limit",
            vec![b'Q', 0x7f, 0xff, 0xff, 0xff, b's'],
        ),
        ("oversized Sync", vec![b'S', 0, 1, 0, 0]),
    ];
    for (what, bytes) in cases {
        let direct = send_bad(postgres().port, &t.direct_db, &bytes);
        let waly = send_bad(t.waly.port, &t.waly_db, &bytes);
        // Postgres closes the connection in every case; for bad lengths it tells only its own log, waly
        // also tells the client why.
        assert!(direct.2 && waly.2, "{what}: the connection must be closed");
        assert_eq!(
            waly.0,
            vec!["E:FATAL:08P01".to_owned()],
            "{what}: waly answered {waly:?}"
        );
        if !direct.0.is_empty() {
            assert_eq!(
                (&waly.0, &waly.1),
                (&direct.0, &direct.1),
                "{what}: Postgres answered {direct:?}, waly {waly:?}"
            );
        }
    }

    // Garbage instead of a startup packet.
    for garbage in [
        &[0u8, 0, 0, 2][..],
        &[0, 0, 0x7f, 0xff, 1, 2, 3][..],
        &[0, 0, 0, 8, 0, 9, 0, 0][..],
    ] {
        let mut s = std::net::TcpStream::connect(t.waly.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::io::Write::write_all(&mut s, garbage).unwrap();
        let mut c = RawClient { stream: s };
        if let Some(m) = c.recv() {
            assert_eq!(
                m.tag, b'E',
                "a bad startup packet gets an error or a close, got {m:?}"
            );
            assert_eq!(m.field(b'V').as_deref(), Some("FATAL"));
        }
        assert!(c.closed());
    }

    bystander.send(&query(
        "insert into survivors values (2); commit; select count(*) from survivors",
    ));
    let msgs = bystander.recv_until_ready(1);
    assert_eq!(
        shape(&msgs),
        vec!["C", "C", "T", "D", "C", "Z:I"],
        "bystander session disturbed"
    );
    assert!(t.waly.child_alive(), "waly died");
    assert!(
        !t.waly.logs().contains("panicked"),
        "waly panicked:\n{}",
        t.waly.logs()
    );
}

#[test]
fn terminated_backend_gives_its_client_the_postgres_fatal_and_others_carry_on() {
    let t = Targets::new("terminate");
    let mut victim = RawClient::connect(t.waly.port, &t.waly_db, PG_PASSWORD);
    let mut other = RawClient::connect(t.waly.port, &t.waly_db, PG_PASSWORD);
    victim.send(&query("select pg_backend_pid()"));
    let msgs = victim.recv_until_ready(1);
    let pid = String::from_utf8_lossy(&msgs.iter().find(|m| m.tag == b'D').unwrap().body[6..])
        .into_owned();
    assert_eq!(
        psql(
            &t.direct_url(),
            &format!("select pg_terminate_backend({pid})")
        )
        .trim(),
        "t"
    );

    let msgs = victim.recv_until_ready(1);
    assert_eq!(shape(&msgs), vec!["E:FATAL:57P01"]);
    assert_eq!(
        msgs[0].field(b'M').as_deref(),
        Some("terminating connection due to administrator command")
    );
    assert!(victim.closed());

    other.send(&query("select 1"));
    assert_eq!(
        shape(&other.recv_until_ready(1)),
        vec!["T", "D", "C", "Z:I"]
    );
}

#[test]
fn client_that_disconnects_mid_query_does_not_leave_the_query_running() {
    let t = Targets::new("hangup");
    let mut c = RawClient::connect(t.waly.port, &t.waly_db, PG_PASSWORD);
    c.send(&query("select pg_sleep(120) /* abandoned */"));
    let direct = t.direct_url().replace(&*t.direct_db, &t.waly_db);
    wait_until("the query to start", Duration::from_secs(10), || {
        psql(&direct, "select count(*) from pg_stat_activity where query like '%abandoned%' and pid <> pg_backend_pid()").trim() == "1"
    });
    drop(c);
    wait_until(
        "the abandoned query to stop",
        Duration::from_secs(10),
        || {
            psql(&direct, "select count(*) from pg_stat_activity where query like '%abandoned%' and state = 'active' and pid <> pg_backend_pid()").trim() == "0"
        },
    );
    assert!(t.waly.child_alive());
}

#[test]
fn psql_reports_server_errors_with_all_their_fields() {
    let t = Targets::new("fields");
    for (label, url) in t.both() {
        let out = Command::new("psql")
            .args([
                &url,
                "-X",
                "-v",
                "VERBOSITY=verbose",
                "-c",
                "create table u (id int primary key)",
                "-c",
                "insert into u values (1), (1)",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "ERROR:  23505: duplicate key value violates unique constraint \"u_pkey\""
            ),
            "{label}: {stderr}"
        );
        assert!(
            stderr.contains("DETAIL:  Key (id)=(1) already exists."),
            "{label}: {stderr}"
        );
        assert!(
            stderr.contains("SCHEMA NAME:  public") && stderr.contains("CONSTRAINT NAME:  u_pkey"),
            "{label}: {stderr}"
        );
        assert!(
            stderr.contains("LOCATION:  _bt_check_unique"),
            "{label}: {stderr}"
        );
    }
}
