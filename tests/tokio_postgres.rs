//! tokio-postgres through waly: prepared statements, binary types, transactions, COPY, LISTEN/NOTIFY and
//! cancellation, each asserted the same way against Postgres directly and through waly.

mod support;

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::{AsyncMessage, Client, NoTls};

use support::*;

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

async fn on_both(prefix: &str, check: impl AsyncFn(&str, &str)) {
    let t = Targets::new(prefix);
    for (label, url) in t.both() {
        check(label, &url).await;
    }
}

#[tokio::test]
async fn prepared_statements_and_binary_types() {
    on_both("tp_types", async |label, url| {
        let c = connect(url).await;
        c.batch_execute(
            "create table vals (i2 int2, i4 int4, i8 int8, f8 float8, b bool, t text, by bytea, arr int4[], j jsonb, ts timestamptz)",
        )
        .await
        .unwrap();
        let insert = c.prepare("insert into vals values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)").await.unwrap();
        let ts = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let json = serde_json::json!({"k": [1, 2, {"z": null}]});
        for n in 0..50i32 {
            let by: Vec<u8> = (0..=255u8).collect();
            let text = format!("row {n} ünïcode");
            let arr = vec![n, -n, i32::MAX];
            c.execute(&insert, &[&(n as i16), &n, &(n as i64 * 1_000_000_000), &(n as f64 / 3.0), &(n % 2 == 0), &text, &by, &arr, &json, &ts])
                .await
                .unwrap();
        }
        let select = c.prepare("select i2, i4, i8, f8, b, t, by, arr, j, ts from vals where i4 = $1").await.unwrap();
        for n in [0i32, 7, 49] {
            let row = c.query_one(&select, &[&n]).await.unwrap();
            assert_eq!(row.get::<_, i16>(0), n as i16, "{label}");
            assert_eq!(row.get::<_, i64>(2), n as i64 * 1_000_000_000, "{label}");
            assert_eq!(row.get::<_, f64>(3), n as f64 / 3.0, "{label}");
            assert_eq!(row.get::<_, String>(5), format!("row {n} ünïcode"), "{label}");
            assert_eq!(row.get::<_, Vec<u8>>(6), (0..=255u8).collect::<Vec<_>>(), "{label}");
            assert_eq!(row.get::<_, Vec<i32>>(7), vec![n, -n, i32::MAX], "{label}");
            assert_eq!(row.get::<_, serde_json::Value>(8), json, "{label}");
            assert_eq!(row.get::<_, SystemTime>(9), ts, "{label}");
        }
        let nulls = c.query_one("select $1::int4, $2::text", &[&None::<i32>, &None::<String>]).await.unwrap();
        assert_eq!(nulls.get::<_, Option<i32>>(0), None, "{label}");
        // Many statements in flight at once: tokio-postgres pipelines them.
        let keys: Vec<i32> = (0..100).map(|n| n % 50).collect();
        let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> = keys.iter().map(|n| [n as _]).collect();
        let futures: Vec<_> = params.iter().map(|p| c.query_one(&select, p)).collect();
        let rows = futures_util::future::try_join_all(futures).await.unwrap();
        assert_eq!(rows.len(), 100, "{label}");
    })
    .await;
}

#[tokio::test]
async fn transactions_commit_roll_back_and_recover_from_errors() {
    on_both("tp_tx", async |label, url| {
        let mut c = connect(url).await;
        c.batch_execute(
            "create table acct (id int primary key, balance int not null check (balance >= 0))",
        )
        .await
        .unwrap();
        let tx = c.transaction().await.unwrap();
        tx.execute("insert into acct values (1, 100), (2, 0)", &[])
            .await
            .unwrap();
        tx.commit().await.unwrap();

        let tx = c.transaction().await.unwrap();
        tx.execute("update acct set balance = balance - 50 where id = 1", &[])
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let b: i32 = c
            .query_one("select balance from acct where id = 1", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(b, 100, "{label}: rolled-back update is visible");

        let tx = c.transaction().await.unwrap();
        let err = tx
            .execute("update acct set balance = -1 where id = 2", &[])
            .await
            .unwrap_err();
        assert_eq!(err.code().unwrap().code(), "23514", "{label}");
        let err = tx.execute("select 1", &[]).await.unwrap_err();
        assert_eq!(
            err.code().unwrap().code(),
            "25P02",
            "{label}: failed transaction must refuse statements"
        );
        tx.rollback().await.unwrap();
        let n: i64 = c
            .query_one("select count(*) from acct", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2, "{label}");

        // Savepoints.
        let mut tx = c.transaction().await.unwrap();
        tx.execute("insert into acct values (3, 1)", &[])
            .await
            .unwrap();
        let sp = tx.savepoint("sp").await.unwrap();
        sp.execute("insert into acct values (4, 1)", &[])
            .await
            .unwrap();
        sp.rollback().await.unwrap();
        tx.commit().await.unwrap();
        let ids: Vec<i32> = c
            .query("select id from acct order by id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(ids, vec![1, 2, 3], "{label}");
    })
    .await;
}

#[tokio::test]
async fn copy_in_and_out_round_trip() {
    on_both("tp_copy", async |label, url| {
        let c = connect(url).await;
        c.batch_execute("create table lines (n int, s text)")
            .await
            .unwrap();
        let sink = c.copy_in("copy lines from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        let mut expected = String::new();
        for chunk in 0..20 {
            let mut data = String::new();
            for i in 0..5_000 {
                let n = chunk * 5_000 + i;
                data.push_str(&format!("{n}\tline {n} \\t tab\n"));
            }
            expected.push_str(&data);
            sink.send(Bytes::from(data)).await.unwrap();
        }
        let copied = sink.finish().await.unwrap();
        assert_eq!(copied, 100_000, "{label}");

        let stream = c
            .copy_out("copy (select * from lines order by n) to stdout")
            .await
            .unwrap();
        let chunks: Vec<Bytes> = stream.try_collect().await.unwrap();
        let out: Vec<u8> = chunks.concat();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            expected,
            "{label}: COPY TO differs from what went in"
        );

        // A COPY that fails midway leaves the session usable.
        let sink = c.copy_in("copy lines from stdin").await.unwrap();
        futures_util::pin_mut!(sink);
        sink.send(Bytes::from_static(b"not-a-number\tx\n"))
            .await
            .unwrap();
        let err = sink.finish().await.unwrap_err();
        assert_eq!(err.code().unwrap().code(), "22P02", "{label}");
        let n: i64 = c
            .query_one("select count(*) from lines", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 100_000, "{label}");
    })
    .await;
}

#[tokio::test]
async fn notifications_reach_an_idle_listener() {
    on_both("tp_notify", async |label, url| {
        let (listener, mut connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(Ok(m)) = messages.next().await {
                let _ = tx.send(m);
            }
        });
        listener.batch_execute("listen jobs").await.unwrap();

        let sender = connect(url).await;
        sender
            .batch_execute("notify jobs, 'first'; select pg_notify('jobs', 'second')")
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("{label}: notification did not reach the idle listener"))
                .unwrap();
            if let AsyncMessage::Notification(n) = m {
                assert_eq!(n.channel(), "jobs", "{label}");
                got.push(n.payload().to_owned());
            }
        }
        assert_eq!(got, vec!["first", "second"], "{label}");

        // Notices also reach the client.
        listener
            .batch_execute("do $$ begin raise notice 'careful'; end $$")
            .await
            .unwrap();
        let notice = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        match notice {
            AsyncMessage::Notice(n) => assert_eq!(n.message(), "careful", "{label}"),
            other => panic!("{label}: expected a notice, got {other:?}"),
        }
    })
    .await;
}

#[tokio::test]
async fn cancel_reaches_the_right_backend() {
    on_both("tp_cancel", async |label, url| {
        let c = connect(url).await;
        let bystander = connect(url).await;
        let token = c.cancel_token();
        let started = Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            token.cancel_query(NoTls).await
        });
        let (slow, other) = tokio::join!(
            c.simple_query("select pg_sleep(30)"),
            bystander.simple_query("select pg_sleep(2)")
        );
        canceller.await.unwrap().expect("cancel request sent");
        let err = slow.unwrap_err();
        assert_eq!(
            err.code().unwrap().code(),
            "57014",
            "{label}: expected query_canceled, got {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{label}: cancel took too long"
        );
        other.expect("the cancel must not hit another session");
        let v: i32 = c.query_one("select 41 + 1", &[]).await.unwrap().get(0);
        assert_eq!(v, 42, "{label}: session unusable after cancel");
    })
    .await;
}
