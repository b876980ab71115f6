#!/usr/bin/env python3
"""Checks that psycopg 3 behaves through waly as it does against Postgres.

Usage: psycopg_check.py postgres://USER:PASSWORD@HOST:PORT/DB   (or env DATABASE_URL)

Everything is created in a fresh schema with a random name, dropped at the end.
Prints one line per check, then "N passed, M failed"; exits 1 on any failure.
"""

import datetime as dt
import signal
import sys
import uuid
from decimal import Decimal

import psycopg
from psycopg import errors
from psycopg.pq import Format, TransactionStatus
from psycopg.types.json import Jsonb

from check_common import CHECKS, SCHEMA, URL, check, eq, table


def connect(**kw):
    return psycopg.connect(URL, autocommit=True, connect_timeout=10, **kw)


@check
def connect_and_parameter_status(conn):
    eq(conn.execute("SELECT 1").fetchone()[0], 1, "SELECT 1")
    eq(conn.info.parameter_status("client_encoding"), "UTF8", "client_encoding")
    version = conn.info.parameter_status("server_version")
    assert version, "no server_version parameter status"
    eq(conn.execute("SHOW server_version").fetchone()[0], version, "SHOW server_version")
    num = int(conn.execute("SELECT current_setting('server_version_num')").fetchone()[0])
    eq(conn.info.server_version, num, "server_version_num")
    # A SET of a reported setting sends a new ParameterStatus to the client.
    conn.execute("SET application_name = 'waly-psycopg-check'")
    eq(conn.info.parameter_status("application_name"), "waly-psycopg-check", "application_name")
    conn.execute("SET TimeZone = 'Europe/Paris'")
    eq(conn.info.parameter_status("TimeZone"), "Europe/Paris", "TimeZone")
    conn.execute("RESET TimeZone")


TYPED_VALUES = [
    ("int", 42),
    ("negative int", -7),
    ("bigint", 2**40 + 3),
    ("text", "héllo, wörld ✓ O'Reilly \"quoted\" \\ back"),
    ("bytea", bytes(range(256))),
    ("numeric", Decimal("12345678901234567890.123456789")),
    ("timestamptz", dt.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=dt.timezone.utc)),
    ("jsonb", {"a": [1, 2, {"b": None}], "c": "d", "e": 1.5}),
    ("int array", [1, 2, 3, -4]),
    ("text array", ["a", "b c", None, "é"]),
    ("uuid", uuid.UUID("6f1d1a6e-3c0e-4f7a-9d42-0b3a51c2e9ab")),
]


def adapt(value):
    return Jsonb(value) if isinstance(value, dict) else value


@check
def bind_parameters(conn):
    # Each value goes to the server as a parameter and comes back unchanged.
    for what, value in TYPED_VALUES:
        # Python strings go as untyped parameters: a list of them needs a cast.
        query = "SELECT %s::text[]" if what == "text array" else "SELECT %s"
        eq(conn.execute(query, (adapt(value),)).fetchone()[0], value, what)
    eq(conn.execute("SELECT %s::int IS NULL, %s::text", (None, None)).fetchone(), (True, None), "NULL")
    eq(conn.execute("SELECT %s + %s", (40, 2)).fetchone()[0], 42, "int arithmetic")
    # The same values stored in typed columns and read back.
    conn.execute(f"""CREATE TABLE {table('typed')} (
        id int PRIMARY KEY, i bigint, t text, b bytea, n numeric, ts timestamptz,
        j jsonb, ia int[], ta text[], u uuid, nothing text)""")
    row = (1, 2**40 + 3, TYPED_VALUES[3][1], bytes(range(256)), TYPED_VALUES[5][1],
           TYPED_VALUES[6][1], TYPED_VALUES[7][1], [1, 2, 3, -4], ["a", "b c", None, "é"],
           TYPED_VALUES[10][1], None)
    conn.execute(f"INSERT INTO {table('typed')} VALUES ({', '.join(['%s'] * len(row))})",
                 tuple(adapt(v) for v in row))
    got = conn.execute(f"SELECT * FROM {table('typed')} WHERE id = %s", (1,)).fetchone()
    eq(got, row, "typed row")


@check
def binary_format(conn):
    cur = conn.cursor(binary=True)
    cur.execute("SELECT %s::bytea, %s::int4, %s::int8, %s::text",
                (b"\x00\x01\xfe\xff", 123456, -(2**50), "bin"))
    eq(cur.fetchone(), (b"\x00\x01\xfe\xff", 123456, -(2**50), "bin"), "binary row")
    formats = [cur.pgresult.fformat(i) for i in range(4)]
    eq(formats, [Format.BINARY] * 4, "result column formats")
    conn.execute(f"CREATE TABLE {table('bin')} (id int PRIMARY KEY, b bytea, i bigint)")
    cur.execute(f"INSERT INTO {table('bin')} VALUES (%s, %s, %s)", (1, bytes(range(256)), 2**40))
    cur.execute(f"SELECT b, i FROM {table('bin')} WHERE id = %s", (1,))
    eq(cur.fetchone(), (bytes(range(256)), 2**40), "binary bytea/bigint from a table")


@check
def prepared_statement_reuse(conn):
    conn.execute(f"CREATE TABLE {table('prep')} (id int PRIMARY KEY, sq int)")
    cur = conn.cursor()
    for i in range(200):
        cur.execute(f"INSERT INTO {table('prep')} VALUES (%s, %s)", (i, i * i), prepare=True)
    for i in range(0, 200, 7):
        cur.execute(f"SELECT sq FROM {table('prep')} WHERE id = %s", (i,), prepare=True)
        eq(cur.fetchone()[0], i * i, f"prepared select {i}")
    eq(conn.execute(f"SELECT count(*), sum(sq) FROM {table('prep')}").fetchone(),
       (200, sum(i * i for i in range(200))), "rows inserted by the prepared statement")


@check
def transactions(conn):
    conn.execute(f"CREATE TABLE {table('tx')} (v text PRIMARY KEY)")
    with connect() as other:
        with conn.transaction():
            conn.execute(f"INSERT INTO {table('tx')} VALUES ('committed')")
            # Not visible to another session before commit.
            eq(other.execute(f"SELECT count(*) FROM {table('tx')}").fetchone()[0], 0, "before commit")
        eq(other.execute(f"SELECT count(*) FROM {table('tx')}").fetchone()[0], 1, "after commit")
    try:
        with conn.transaction():
            conn.execute(f"INSERT INTO {table('tx')} VALUES ('rolled back')")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    # Explicit BEGIN/ROLLBACK on a non-autocommit connection, with a savepoint.
    with psycopg.connect(URL, connect_timeout=10) as manual:
        manual.execute(f"INSERT INTO {table('tx')} VALUES ('manual rolled back')")
        eq(manual.info.transaction_status, TransactionStatus.INTRANS, "in transaction")
        manual.rollback()
        manual.execute(f"INSERT INTO {table('tx')} VALUES ('manual committed')")
        with manual.transaction():  # a savepoint inside the open transaction
            manual.execute(f"INSERT INTO {table('tx')} VALUES ('savepoint kept')")
        try:
            with manual.transaction():
                manual.execute(f"INSERT INTO {table('tx')} VALUES ('savepoint rolled back')")
                raise RuntimeError("roll back to savepoint")
        except RuntimeError:
            pass
        manual.commit()
    rows = [r[0] for r in conn.execute(f"SELECT v FROM {table('tx')} ORDER BY v")]
    eq(rows, ["committed", "manual committed", "savepoint kept"], "rows after commits and rollbacks")
    # After an error inside a transaction, everything fails until ROLLBACK.
    with psycopg.connect(URL, connect_timeout=10) as failed:
        try:
            failed.execute("SELECT 1/0")
        except errors.DivisionByZero:
            pass
        try:
            failed.execute("SELECT 1")
            raise AssertionError("statement ran in an aborted transaction")
        except errors.InFailedSqlTransaction as e:
            eq(e.sqlstate, "25P02", "sqlstate in aborted transaction")
        failed.rollback()
        eq(failed.execute("SELECT 2").fetchone()[0], 2, "after rollback")


@check
def pipeline(conn):
    conn.execute(f"CREATE TABLE {table('pipe')} (id int PRIMARY KEY, v text)")
    with conn.pipeline():
        for i in range(1, 6):
            conn.execute(f"INSERT INTO {table('pipe')} VALUES (%s, %s)", (i, f"v{i}"))
        count = conn.execute(f"SELECT count(*) FROM {table('pipe')}")
        third = conn.execute(f"SELECT v FROM {table('pipe')} WHERE id = %s", (3,))
        cur = conn.cursor()
        cur.executemany(f"INSERT INTO {table('pipe')} VALUES (%s, %s)",
                        [(i, f"m{i}") for i in range(6, 11)])
        total = conn.execute(f"SELECT count(*), max(id) FROM {table('pipe')}")
    eq(count.fetchone()[0], 5, "count inside pipeline")
    eq(third.fetchone()[0], "v3", "select inside pipeline")
    eq(total.fetchone(), (10, 10), "after executemany in pipeline")


@check
def pipeline_with_error(conn):
    try:
        with conn.pipeline():
            conn.execute(f"INSERT INTO {table('pipe')} VALUES (100, 'new')")
            conn.execute(f"INSERT INTO {table('pipe')} VALUES (1, 'duplicate')")
            conn.execute("SELECT 1")
        raise AssertionError("no error from a duplicate key")
    except errors.UniqueViolation as e:
        eq(e.sqlstate, "23505", "sqlstate")
        eq(e.diag.constraint_name, "pipe_pkey", "constraint name")
    # The connection is usable afterwards and idle.
    eq(conn.info.transaction_status, TransactionStatus.IDLE, "transaction status")
    eq(conn.execute("SELECT 'still usable'").fetchone()[0], "still usable", "after error")
    # The statements up to the error ran in one implicit transaction: rolled back.
    eq(conn.execute(f"SELECT count(*) FROM {table('pipe')} WHERE id = 100").fetchone()[0], 0,
       "insert before the error")
    with conn.pipeline():
        conn.execute(f"INSERT INTO {table('pipe')} VALUES (101, 'after')")
    eq(conn.execute(f"SELECT v FROM {table('pipe')} WHERE id = 101").fetchone()[0], "after",
       "pipeline after error")


def copy_rows():
    rows = []
    for i in range(1000):
        text = None if i % 97 == 0 else f"row {i}\ttab\nnewline \\back ✓ {'x' * (i % 50)}"
        rows.append((i, text, bytes([i % 256, (i * 7) % 256]) * (i % 5)))
    return rows


@check
def copy_text_round_trip(conn):
    conn.execute(f"CREATE TABLE {table('copied')} (id int PRIMARY KEY, t text, b bytea)")
    rows = copy_rows()
    cur = conn.cursor()
    with cur.copy(f"COPY {table('copied')} (id, t, b) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    eq(cur.rowcount, 1000, "rows copied in")
    got = []
    with cur.copy(f"COPY (SELECT id, t, b FROM {table('copied')} ORDER BY id) TO STDOUT") as copy:
        copy.set_types(["int4", "text", "bytea"])
        got.extend(copy.rows())
    eq(len(got), 1000, "rows copied out")
    assert got == rows, "COPY TO STDOUT differs from what COPY FROM STDIN wrote"
    eq(conn.execute(f"SELECT count(*) FROM {table('copied')} WHERE t IS NULL").fetchone()[0],
       11, "NULLs stored")


@check
def copy_binary_round_trip(conn):
    conn.execute(f"CREATE TABLE {table('copied_bin')} (id int PRIMARY KEY, t text, b bytea)")
    rows = copy_rows()
    cur = conn.cursor()
    with cur.copy(f"COPY {table('copied_bin')} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "text", "bytea"])
        for row in rows:
            copy.write_row(row)
    with cur.copy(f"COPY (SELECT * FROM {table('copied_bin')} ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
        copy.set_types(["int4", "text", "bytea"])
        got = list(copy.rows())
    assert got == rows, "binary COPY round trip differs"


@check
def listen_notify(conn):
    channel = f"{SCHEMA}_chan"
    with connect() as listener:
        listener.execute(f"LISTEN {channel}")
        conn.execute(f"NOTIFY {channel}, 'first'")
        conn.execute("SELECT pg_notify(%s, %s)", (channel, "second ✓"))
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=10, stop_after=2)]
        eq(got, [(channel, "first"), (channel, "second ✓")], "notifications")
        # Notifications sent inside a transaction arrive only on commit.
        with conn.transaction():
            conn.execute(f"NOTIFY {channel}, 'rolled back'")
            raise psycopg.Rollback()
        conn.execute(f"NOTIFY {channel}, 'third'")
        got = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
        eq(got, ["third"], "notification after a rolled back one")


@check
def error_fields(conn):
    try:
        conn.execute("SELECT 1/0")
        raise AssertionError("no error from 1/0")
    except errors.DivisionByZero as e:
        eq(e.sqlstate, "22012", "sqlstate")
        eq(e.diag.severity, "ERROR", "severity")
        eq(e.diag.message_primary, "division by zero", "message")
    eq(conn.execute("SELECT 1").fetchone()[0], 1, "usable after division by zero")
    try:
        conn.execute("SELECT * FROM WHERE x = 1")
        raise AssertionError("no syntax error")
    except errors.SyntaxError as e:
        eq(e.sqlstate, "42601", "sqlstate")
        eq(e.diag.statement_position, "15", "statement position")
        assert "syntax error" in e.diag.message_primary, e.diag.message_primary
    try:
        conn.execute(f"SELECT * FROM {table('no_such_table')}")
        raise AssertionError("no error for a missing table")
    except errors.UndefinedTable as e:
        eq(e.sqlstate, "42P01", "sqlstate")
    eq(conn.execute("SELECT 1").fetchone()[0], 1, "usable after errors")


@check
def notices(conn):
    got = []

    def handler(diag):  # a Diagnostic is only valid inside the handler
        got.append((diag.severity, diag.sqlstate, diag.message_primary))

    conn.add_notice_handler(handler)
    try:
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
    finally:
        conn.remove_notice_handler(handler)
    eq(got, [("NOTICE", "00000", "hello 42")], "notices")


def main():
    signal.alarm(180)  # never hang a test run
    passed = failed = 0
    try:
        conn = connect()
        conn.execute(f"CREATE SCHEMA {SCHEMA}")
    except Exception as e:
        print(f"FAIL connect: {type(e).__name__}: {e}")
        print("0 passed, 1 failed")
        sys.exit(1)
    try:
        for fn in CHECKS:
            try:
                fn(conn)
                print(f"ok   {fn.__name__}", flush=True)
                passed += 1
            except Exception as e:  # report, then go on with the next check
                print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}", flush=True)
                failed += 1
                if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
                    conn.close()
                    conn = connect()
    finally:
        conn.close()
        with connect() as cleanup:
            cleanup.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
