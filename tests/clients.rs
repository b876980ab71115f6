//! Real clients through waly: psql (with \copy), pgbench, pg_dump/pg_restore, psycopg 3, asyncpg and
//! node-postgres. Each check runs against Postgres directly and through waly with the same assertions.

mod support;

use std::process::Command;

use support::*;

#[test]
fn psql_script_with_copy_gives_identical_output() {
    let t = Targets::new("psql");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    let rows: String = (1..=500)
        .map(|i| format!("{i},name {i},\"quoted, \"\"text\"\"\"\n"))
        .collect();
    std::fs::write(&csv, rows).unwrap();
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        format!(
            r#"\set ON_ERROR_STOP 1
create table people (id int primary key, name text, note text);
\copy people from '{csv}' with (format csv)
select count(*), sum(id), max(note) from people;
begin;
update people set name = upper(name) where id % 2 = 0;
savepoint s1;
delete from people;
rollback to savepoint s1;
commit;
select id, name from people order by id limit 3;
\copy (select id, name from people where id <= 5 order by id) to stdout with (format csv)
select current_setting('application_name');
do $$ begin raise notice 'hello from plpgsql'; end $$;
select 'a' || repeat('x', 100000) = 'a' || repeat('x', 100000);
"#,
            csv = csv.display()
        ),
    )
    .unwrap();

    let mut outputs = Vec::new();
    for (label, url) in t.both() {
        let out = Command::new("psql")
            .args([&url, "-X", "-f", path_str(&script)])
            .env("PGAPPNAME", "psql-check")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "{label}: psql failed:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(" 500 | 125250 |"),
            "{label}: copy in did not load 500 rows:\n{stdout}"
        );
        assert!(
            stdout.contains("2,NAME 2"),
            "{label}: copy out or update missing:\n{stdout}"
        );
        assert!(
            stdout.contains("psql-check"),
            "{label}: application_name lost:\n{stdout}"
        );
        assert!(
            stderr.contains("NOTICE:  hello from plpgsql"),
            "{label}: notice lost:\n{stderr}"
        );
        outputs.push((stdout, stderr));
    }
    assert_eq!(
        outputs[0], outputs[1],
        "psql saw different results through waly"
    );
}

#[test]
fn pgbench_initialises_and_runs_in_simple_and_prepared_modes() {
    let t = Targets::new("pgbench");
    for (label, url) in t.both() {
        run_ok(
            Command::new("pgbench").args(["-i", "-s", "1", "-q", &url]),
            &format!("{label}: pgbench -i"),
        );
        assert_eq!(
            psql(&url, "select count(*) from pgbench_accounts").trim(),
            "100000"
        );
        for mode in ["simple", "extended", "prepared"] {
            let out = run_ok(
                Command::new("pgbench")
                    .args(["-n", "-T", "3", "-c", "4", "-j", "2", "-M", mode, &url]),
                &format!("{label}: pgbench -M {mode}"),
            );
            assert!(
                out.contains("number of failed transactions: 0"),
                "{label} {mode}:\n{out}"
            );
            let processed: u64 = out
                .lines()
                .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
                .and_then(|v| v.split('/').next()?.trim().parse().ok())
                .unwrap_or_else(|| panic!("{label} {mode}: no transaction count in\n{out}"));
            assert!(processed > 0, "{label} {mode}: no transactions processed");
        }
        // tpcb-like keeps the bank balanced: the sums of the three balance columns agree.
        let sums = psql(
            &url,
            "select (select sum(abalance) from pgbench_accounts) = (select sum(bbalance) from pgbench_branches) \
             and (select sum(tbalance) from pgbench_tellers) = (select sum(delta) from pgbench_history)",
        );
        assert_eq!(sums.trim(), "t", "{label}: balances disagree");
    }
}

#[test]
fn pg_dump_and_pg_restore_round_trip_through_waly() {
    let t = Targets::new("dump");
    let source = t.waly_url();
    psql(
        &source,
        "create table items (id serial primary key, body jsonb, tags text[], at timestamptz default '2026-01-01');\
         insert into items (body, tags) select jsonb_build_object('n', g), array['a', g::text] from generate_series(1, 2000) g;\
         create index on items ((body->>'n'));\
         create view big_items as select * from items where id > 1000;",
    );
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("dump.custom");
    run_ok(
        Command::new("pg_dump").args(["-Fc", "-f", path_str(&archive), &source]),
        "pg_dump -Fc through waly",
    );

    let restored_db = postgres().create_db("restored");
    let restored = t.waly.url(&restored_db);
    // waly installs its own schema, triggers and event triggers in the target itself: restore everything
    // else (the README's recipe).
    let list = run_ok(
        Command::new("pg_restore").args(["-l", path_str(&archive)]),
        "pg_restore -l",
    );
    let list_file = dir.path().join("list");
    std::fs::write(
        &list_file,
        list.lines()
            .filter(|l| !l.contains("waly"))
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    run_ok(
        Command::new("pg_restore").args([
            "--no-owner",
            "-L",
            path_str(&list_file),
            "-d",
            &restored,
            path_str(&archive),
        ]),
        "pg_restore through waly",
    );
    let plain = |url: &str| {
        run_ok(
            Command::new("pg_dump").args(["--no-owner", "-N", "waly", url]),
            "pg_dump plain",
        )
    };
    let original = plain(&t.waly_url());
    let copy = plain(&postgres().url(&restored_db));
    assert!(
        original.contains("COPY public.items") && original.contains("2000\t{\"n\": 2000}"),
        "dump lacks data"
    );
    assert_same_dump(&original, &copy);
}

fn python() -> String {
    std::env::var("WALY_PYTHON").unwrap_or_else(|_| {
        let venv = project_root().join(".waly/venv/bin/python");
        assert!(
            venv.exists(),
            "psycopg is needed: run `make test`, which creates .waly/venv, or set WALY_PYTHON"
        );
        venv.display().to_string()
    })
}

#[test]
fn psycopg_passes_the_same_checks_directly_and_through_waly() {
    let t = Targets::new("psycopg");
    let script = project_root().join("tests/clients/psycopg_check.py");
    for (label, url) in t.both() {
        let out = run_ok(
            Command::new(python()).arg(&script).arg(&url),
            &format!("{label}: psycopg checks"),
        );
        assert!(out.contains(" passed, 0 failed"), "{label}:\n{out}");
    }
}

#[test]
fn node_postgres_passes_the_same_checks_directly_and_through_waly() {
    let t = Targets::new("nodepg");
    let dir = project_root().join("tests/clients/node");
    assert!(
        dir.join("node_modules/pg").exists(),
        "node-postgres is needed: run `make test`, which installs it"
    );
    for (label, url) in t.both() {
        let out = run_ok(
            Command::new("node").arg(dir.join("pg_check.mjs")).arg(&url),
            &format!("{label}: node-postgres checks"),
        );
        assert!(out.contains(" passed, 0 failed"), "{label}:\n{out}");
    }
}

#[tokio::test]
async fn asyncpg_passes_the_same_checks_directly_and_through_waly() {
    let t = Targets::new("asyncpg");
    let script = project_root().join("tests/clients/asyncpg_check.py");
    for (label, url) in t.both() {
        let out = run_ok(
            Command::new(python()).arg(&script).arg(&url),
            &format!("{label}: asyncpg checks"),
        );
        assert!(out.contains(" passed, 0 failed"), "{label}:\n{out}");
    }
    // The binary COPY asyncpg sends right after an unsynced prepare is in the log, row by row.
    let copied = t
        .waly
        .records()
        .await
        .iter()
        .flat_map(|r| &r.changes)
        .filter(|c| matches!(c, waly::record::Change::Insert { table, .. } if table == "copied"))
        .count();
    assert_eq!(copied, 500, "rows of asyncpg's COPY in the log");
}
