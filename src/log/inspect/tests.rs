//! `tail`, `show` and both renderings, on temporary logs holding real records.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

fn raw(value: Value) -> Box<serde_json::value::RawValue> {
    serde_json::value::to_raw_value(&value).unwrap()
}

use super::render::rfc3339_micros;
use super::{Format, InspectError, render_human, render_json, show, tail};
use crate::log::{Entry, FileLog, FileLogConfig, FileLogReader, Log, Position};
use crate::record::{Change, FORMAT_VERSION, Record, SessionInfo, Statement};

fn record(i: u64) -> Record {
    Record {
        format: FORMAT_VERSION,
        txid: format!("{}", 1_234_560 + i),
        gid: format!("waly_1_{i}"),
        commit: crate::record::CommitKind::Prepared,
        writer: String::new(),
        decided_through: None,
        committed_at: "2026-11-23T10:00:00.123456Z".into(),
        session: SessionInfo {
            role: None,
            database_oid: None,
            user: "app".into(),
            database: "shop".into(),
            application_name: Some("checkout".into()),
            client_addr: "10.0.0.7:51234".into(),
        },
        statements: vec![Statement {
            sql: "insert into orders (customer, total)\nvalues ($1, $2)".into(),
            params: vec![Some("42".into()), None],
        }],
        operations: Vec::new(),
        changes: vec![
            Change::Insert {
                schema: "public".into(),
                table: "orders".into(),
                pk: Some(raw(json!({"id": i}))),
                new: raw(json!({"id": i, "customer": 42, "total": 19.9})),
            },
            Change::Update {
                schema: "public".into(),
                table: "customers".into(),
                pk: Some(raw(json!({"id": 42}))),
                old: raw(json!({"id": 42, "orders": 3})),
                new: raw(json!({"id": 42, "orders": 4})),
            },
            Change::Delete {
                schema: "public".into(),
                table: "carts".into(),
                pk: None,
                old: raw(json!({"customer": 42})),
            },
            Change::Truncate {
                schema: "public".into(),
                table: "scratch".into(),
            },
            Change::Ddl {
                tag: "CREATE TABLE".into(),
                object: Some("public.t".into()),
                sql: "create table t (\n  id int primary key\n)".into(),
                search_path: None,
            },
        ],
    }
}

/// A log holding `n` records, with a reader on it.
async fn log_with(n: u64) -> (tempfile::TempDir, FileLog, FileLogReader) {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    for i in 1..=n {
        log.append(Bytes::from(record(i).to_json())).await.unwrap();
    }
    let reader = FileLog::open_read_only(dir.path()).unwrap();
    (dir, log, reader)
}

fn human(entry: &Entry) -> String {
    let mut out = Vec::new();
    render_human(entry, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn json_line(entry: &Entry) -> String {
    let mut out = Vec::new();
    render_json(entry, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn entry(position: u64, payload: &[u8]) -> Entry {
    Entry {
        position: Position(position),
        timestamp_micros: 1_700_000_000_123_456,
        payload: Bytes::copy_from_slice(payload),
    }
}

/// The positions in JSON-lines output.
fn printed_positions(output: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(output)
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["position"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

#[test]
fn log_inspect_rfc3339_times() {
    assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
    assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    assert_eq!(
        rfc3339_micros(1_700_000_000_123_456),
        "2023-11-14T22:13:20.123456Z"
    );
    assert_eq!(
        rfc3339_micros(951_782_400_000_000),
        "2000-02-29T00:00:00.000000Z"
    );
    assert_eq!(
        rfc3339_micros(4_107_542_400_000_000),
        "2100-03-01T00:00:00.000000Z"
    );
    // Nonsense does not panic.
    rfc3339_micros(i64::MIN);
    rfc3339_micros(i64::MAX);
}

#[tokio::test]
async fn log_inspect_human_shows_what_a_user_checks() {
    let (_dir, _log, reader) = log_with(7).await;
    let e = reader.read(Position(7), 1).await.unwrap().remove(0);
    let text = human(&e);
    let want = [
        format!(
            "position 7  appended {}",
            rfc3339_micros(e.timestamp_micros)
        ),
        "txid 1234567  committed 2026-11-23T10:00:00.123456Z  gid waly_1_7".to_string(),
        "session app@shop  application checkout  client 10.0.0.7:51234".to_string(),
        "    1. insert into orders (customer, total)\n       values ($1, $2)\n".to_string(),
        "       params $1='42' $2=NULL\n".to_string(),
        "changes (5, 3 rows):".to_string(),
        "    insert public.orders pk={\"id\":7} new={\"customer\":42,\"id\":7,\"total\":19.9}\n".to_string(),
        "    update public.customers pk={\"id\":42} old={\"id\":42,\"orders\":3} new={\"id\":42,\"orders\":4}\n"
            .to_string(),
        "    delete public.carts old={\"customer\":42}\n".to_string(),
        "    truncate public.scratch\n".to_string(),
        "    ddl CREATE TABLE public.t: create table t ( id int primary key )\n".to_string(),
    ];
    for w in want {
        assert!(text.contains(&w), "missing {w:?} in\n{text}");
    }
    assert!(text.starts_with("position 7 "), "{text}");
}

#[test]
fn log_inspect_human_cuts_long_values_and_escapes_control_characters() {
    let mut r = record(1);
    r.statements[0].sql = format!("select '\x1b[31mred' {}", "x".repeat(5000));
    r.statements[0].params = (0..500).map(|i| Some(format!("p{i}"))).collect();
    r.changes[0] = Change::Insert {
        schema: "public".into(),
        table: "docs".into(),
        pk: Some(raw(json!({"id": 1}))),
        new: raw(json!({"id": 1, "body": "é".repeat(10_000)})),
    };
    let text = human(&entry(1, &r.to_json()));
    assert!(!text.contains('\x1b'), "a raw escape reached the output");
    assert!(text.contains("\\u{1b}[31mred"), "{text}");
    let insert = text
        .lines()
        .find(|l| l.contains("insert public.docs"))
        .unwrap();
    assert!(insert.chars().count() < 200, "{insert}");
    assert!(insert.ends_with('…'), "{insert}");
    let params = text.lines().find(|l| l.contains("params ")).unwrap();
    assert!(params.chars().count() < 500, "{params}");
    assert!(params.contains("more)"), "{params}");
    let statement = text.lines().find(|l| l.contains("1. select")).unwrap();
    assert!(statement.chars().count() < 1100 && statement.ends_with('…'));
}

#[test]
fn log_inspect_garbage_payloads_are_shown_as_such() {
    for payload in [
        &b"\xff\x00 not json"[..],
        b"{\"format\": 1",
        b"",
        b"[1, 2, 3]",
    ] {
        let text = human(&entry(3, payload));
        let want = format!("  <{} bytes, not a waly record: ", payload.len());
        assert!(text.contains(&want), "{text}");
        assert!(text.starts_with("position 3  appended 2023-11-14T22:13:20.123456Z\n"));
    }
    // JSON: a payload that is not JSON becomes null with the reason; JSON that is no record passes as is.
    let line = json_line(&entry(3, b"\xff\x00 not json"));
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["record"], Value::Null);
    assert!(v["error"].as_str().unwrap().contains("not UTF-8"), "{line}");
    let v: Value = serde_json::from_str(&json_line(&entry(3, b"{\"format\": 1"))).unwrap();
    assert_eq!(v["record"], Value::Null);
    assert!(
        v["error"].as_str().unwrap().contains("not valid JSON"),
        "{v}"
    );
    let v: Value = serde_json::from_str(&json_line(&entry(3, b"[1, 2, 3]"))).unwrap();
    assert_eq!(v["record"], json!([1, 2, 3]));
    assert!(v.get("error").is_none());
}

#[tokio::test]
async fn log_inspect_json_is_one_line_with_the_record_as_is() {
    let (_dir, _log, reader) = log_with(2).await;
    let e = reader.read(Position(2), 1).await.unwrap().remove(0);
    let line = json_line(&e);
    assert_eq!(line.matches('\n').count(), 1);
    assert!(line.ends_with("}\n"));
    let payload = std::str::from_utf8(&e.payload).unwrap();
    assert!(line.contains(&format!("\"record\":{payload}}}")), "{line}");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["position"], 2);
    assert_eq!(v["appended_at"], rfc3339_micros(e.timestamp_micros));
    assert_eq!(v["record"]["txid"], "1234562");
    assert_eq!(v["record"]["changes"][0]["kind"], "insert");
    assert_eq!(
        Record::from_json(v["record"].to_string().as_bytes()).unwrap(),
        record(2)
    );

    // A record stored pretty-printed still comes out on one line, with the same content.
    let pretty = serde_json::to_vec_pretty(&record(9)).unwrap();
    let line = json_line(&entry(9, &pretty));
    assert_eq!(line.matches('\n').count(), 1);
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        Record::from_json(v["record"].to_string().as_bytes()).unwrap(),
        record(9)
    );
}

/// The positions `tail` prints without following, as JSON lines.
async fn tail_positions(
    reader: &FileLogReader,
    from: Option<u64>,
    n: Option<usize>,
    database: Option<&str>,
) -> Vec<u64> {
    let mut out = Vec::new();
    tail(
        reader,
        from.map(Position),
        n,
        false,
        Duration::from_millis(10),
        &mut out,
        Format::Json,
        database,
    )
    .await
    .unwrap();
    printed_positions(&out)
}

#[tokio::test]
async fn log_inspect_tail_of_one_database_skips_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let log = FileLog::open(dir.path(), FileLogConfig::default()).unwrap();
    // Positions 1..=12; every third record is of database "crm".
    for i in 1..=12 {
        let mut r = record(i);
        if i % 3 == 0 {
            r.session.database = "crm".into();
        }
        log.append(Bytes::from(r.to_json())).await.unwrap();
    }
    let reader = FileLog::open_read_only(dir.path()).unwrap();
    let run = |from, n| tail_positions(&reader, from, n, Some("crm"));
    assert_eq!(run(None, Some(2)).await, vec![9, 12]);
    assert_eq!(run(None, None).await, vec![3, 6, 9, 12]);
    assert_eq!(run(Some(4), Some(1)).await, vec![6]);
}

#[tokio::test]
async fn log_inspect_tail_prints_the_last_n_or_from_a_position() {
    let (_dir, _log, reader) = log_with(15).await;
    let run = |from, n| tail_positions(&reader, from, n, None);
    assert_eq!(run(None, Some(2)).await, vec![14, 15]);
    assert_eq!(run(None, None).await, (6..=15).collect::<Vec<_>>());
    assert_eq!(run(None, Some(100)).await, (1..=15).collect::<Vec<_>>());
    assert_eq!(run(None, Some(0)).await, Vec::<u64>::new());
    assert_eq!(run(Some(13), None).await, vec![13, 14, 15]);
    assert_eq!(run(Some(3), Some(2)).await, vec![3, 4]);
    assert_eq!(run(Some(0), Some(1)).await, vec![1]);
    assert_eq!(run(Some(16), None).await, Vec::<u64>::new());

    // Human blocks are separated by one blank line.
    let mut out = Vec::new();
    tail(
        &reader,
        None,
        Some(2),
        false,
        Duration::ZERO,
        &mut out,
        Format::Human,
        None,
    )
    .await
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("position ").count(), 2);
    assert_eq!(
        text.matches("\n\nposition 15  appended").count(),
        1,
        "{text}"
    );
    assert!(text.starts_with("position 14 "));
}

/// Output shared with the test while `tail` runs.
#[derive(Clone, Default)]
struct SharedOut(Arc<Mutex<Vec<u8>>>);

impl Write for SharedOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl SharedOut {
    fn positions(&self) -> Vec<u64> {
        printed_positions(&self.0.lock().unwrap())
    }

    async fn wait_for(&self, lines: usize) {
        while self.positions().len() < lines {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn log_inspect_tail_follow_prints_entries_appended_after_it_started() {
    let (_dir, log, reader) = log_with(3).await;
    let shared = SharedOut::default();
    let mut out = shared.clone();
    let following = tail(
        &reader,
        None,
        Some(2),
        true,
        Duration::from_millis(10),
        &mut out,
        Format::Json,
        None,
    );
    let appending = async {
        shared.wait_for(2).await;
        for i in 4..=5 {
            log.append(Bytes::from(record(i).to_json())).await.unwrap();
        }
        shared.wait_for(4).await;
    };
    tokio::select! {
        done = following => panic!("tail -f returned on its own: {done:?}"),
        waited = tokio::time::timeout(Duration::from_secs(10), appending) => {
            waited.expect("tail -f printed the entries appended after it started");
        }
    }
    assert_eq!(shared.positions(), vec![2, 3, 4, 5]);

    // With a position and a count, following ends once that many were printed: here it waits for 6.
    let shared = SharedOut::default();
    let mut out = shared.clone();
    let following = tail(
        &reader,
        Some(Position(6)),
        Some(1),
        true,
        Duration::from_millis(10),
        &mut out,
        Format::Json,
        None,
    );
    let appending = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        log.append(Bytes::from(record(6).to_json())).await.unwrap();
    };
    let (done, ()) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(following, appending)
    })
    .await
    .expect("tail --from 6 -n 1 -f ends after printing 6");
    done.unwrap();
    assert_eq!(shared.positions(), vec![6]);
}

#[tokio::test]
async fn log_inspect_show_prints_one_entry_or_says_where_the_log_ends() {
    let (_dir, _log, reader) = log_with(17).await;
    let mut out = Vec::new();
    show(&reader, Position(5), &mut out, Format::Human)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("position 5  appended "), "{text}");
    assert!(text.contains("txid 1234565"), "{text}");
    let mut out = Vec::new();
    show(&reader, Position(17), &mut out, Format::Json)
        .await
        .unwrap();
    assert_eq!(printed_positions(&out), vec![17]);

    let mut out = Vec::new();
    let err = show(&reader, Position(42), &mut out, Format::Human)
        .await
        .unwrap_err();
    assert!(matches!(err, InspectError::NoRecord { .. }));
    assert_eq!(
        err.to_string(),
        "no record at position 42: the log ends at 17"
    );
    assert!(out.is_empty());
    let err = show(&reader, Position(0), &mut out, Format::Human)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no record at position 0: positions start at 1"
    );

    let (_dir, _log, empty) = log_with(0).await;
    let err = show(&empty, Position(1), &mut out, Format::Json)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "no record at position 1: the log is empty");
}

#[test]
fn operations_are_shown_before_the_statements() {
    let mut r = record(1);
    let mut params = serde_json::Map::new();
    params.insert("customer".into(), json!(42));
    params.insert("total".into(), json!("19.90"));
    r.operations = vec![crate::record::OperationCall {
        name: "PLACE_ORDER".into(),
        version: 2,
        params,
        statements: vec![0],
        changes: Vec::new(),
    }];
    let text = human(&entry(1, &r.to_json()));
    let ops =
        text.find("  operations (1):\n    PLACE_ORDER v2 {\"customer\":42,\"total\":\"19.90\"}\n");
    let statements = text.find("  statements (1):");
    assert!(ops.is_some() && ops < statements, "{text}");
    assert!(!human(&entry(1, &record(1).to_json())).contains("operations"));
}
