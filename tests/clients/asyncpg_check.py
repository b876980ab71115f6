#!/usr/bin/env python3
"""Checks that asyncpg behaves through waly as it does against Postgres.

asyncpg speaks the extended protocol its own way: it prepares with Parse, Describe and Flush (no Sync),
caches statements by name, uses binary formats throughout, and sends COPY as a Query right after such a
prepare.

Usage: asyncpg_check.py postgres://USER:PASSWORD@HOST:PORT/DB   (or env DATABASE_URL)

Everything is created in a fresh schema with a random name, dropped at the end.
Prints one line per check, then "N passed, M failed"; exits 1 on any failure.
"""

import asyncio
import datetime as dt
import io
import json
import sys
import uuid
from decimal import Decimal

import asyncpg

from check_common import CHECKS, SCHEMA, URL, check, eq, table

TIMEOUT = 30  # seconds per check: a hang fails the check instead of the test run


@check
async def typed_rows_round_trip_in_binary(conn):
    await conn.execute(f"""
        CREATE TYPE {SCHEMA}.mood AS ENUM ('happy', 'sad');
        CREATE TABLE {table('people')} (
            id bigserial PRIMARY KEY, name text NOT NULL UNIQUE, mood {SCHEMA}.mood, tags text[],
            meta jsonb, born date, balance numeric(12,2) DEFAULT 0, uid uuid DEFAULT gen_random_uuid(),
            at timestamptz DEFAULT now())""")
    rows = [(f"p{i}", "happy" if i % 2 else "sad", ["a", str(i)], json.dumps({"i": i}),
             dt.date(2000, 1, 1 + i % 28), Decimal("1.25") * i) for i in range(100)]
    await conn.executemany(
        f"INSERT INTO {table('people')} (name, mood, tags, meta, born, balance) "
        "VALUES ($1, $2, $3, $4, $5, $6)", rows)
    r = await conn.fetchrow(f"SELECT * FROM {table('people')} WHERE name = $1", "p3")
    eq((r["mood"], r["tags"], json.loads(r["meta"]), r["born"], r["balance"]),
       ("happy", ["a", "3"], {"i": 3}, dt.date(2000, 1, 4), Decimal("3.75")), "row p3")
    assert isinstance(r["uid"], uuid.UUID) and isinstance(r["at"], dt.datetime), dict(r)
    eq(await conn.fetchval(f"SELECT count(*) FROM {table('people')} WHERE mood = $1", "sad"), 50,
       "count by enum")


@check
async def copy_records_after_a_prepare_without_sync(conn):
    await conn.execute(f"CREATE TABLE {table('copied')} (id serial PRIMARY KEY, name text, n int)")
    # asyncpg prepares "SELECT name, n FROM ... LIMIT 1" (Parse, Describe, Flush) to learn the column
    # types, then sends COPY ... FROM STDIN (FORMAT binary) as a Query, without a Sync in between.
    status = await conn.copy_records_to_table(
        "copied", schema_name=SCHEMA, columns=["name", "n"],
        records=[(f"c{i}", i) for i in range(500)])
    eq(status, "COPY 500", "copy status")
    eq(await conn.fetchval(f"SELECT sum(n) FROM {table('copied')}"), sum(range(500)), "copied sum")
    out = io.BytesIO()
    status = await conn.copy_from_query(
        f"SELECT name FROM {table('copied')} WHERE n < 3 ORDER BY n", output=out, format="csv")
    eq((status, out.getvalue()), ("COPY 3", b"c0\nc1\nc2\n"), "copy out")
    # The session goes on as usual after both.
    eq(await conn.fetchval("SELECT 41 + $1::int", 1), 42, "query after copy")


@check
async def transactions_savepoints_and_cursors(conn):
    await conn.execute(f"CREATE TABLE {table('acct')} (id int PRIMARY KEY, balance int NOT NULL)")
    await conn.executemany(f"INSERT INTO {table('acct')} VALUES ($1, $2)",
                           [(i, 100) for i in range(1, 21)])
    async with conn.transaction():
        await conn.execute(f"UPDATE {table('acct')} SET balance = balance - 10 WHERE id = $1", 1)
        async with conn.transaction():  # a savepoint
            await conn.execute(f"DELETE FROM {table('acct')} WHERE id = 2")
        try:
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {table('acct')} VALUES (1, 0)")
        except asyncpg.UniqueViolationError as e:
            eq(e.sqlstate, "23505", "duplicate inside a savepoint")
        seen = [r["id"] async for r in conn.cursor(
            f"SELECT id FROM {table('acct')} ORDER BY id", prefetch=5)]
        eq(seen, [1] + list(range(3, 21)), "cursor rows inside the transaction")
    try:
        async with conn.transaction():
            await conn.execute(f"UPDATE {table('acct')} SET balance = 0")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    eq(await conn.fetch(f"SELECT id, balance FROM {table('acct')} WHERE id <= 3 ORDER BY id"),
       [(1, 90), (3, 100)], "committed and rolled back work")


@check
async def prepared_statements_are_reused(conn):
    await conn.execute(f"CREATE TABLE {table('kv')} (k text PRIMARY KEY, v int)")
    insert = await conn.prepare(f"INSERT INTO {table('kv')} VALUES ($1, $2) RETURNING v * 2")
    doubled = [await insert.fetchval(f"k{i}", i) for i in range(20)]
    eq(doubled, [2 * i for i in range(20)], "RETURNING through a reused statement")
    lookup = await conn.prepare(f"SELECT v FROM {table('kv')} WHERE k = $1")
    eq([await lookup.fetchval(f"k{i}") for i in (0, 7, 19)], [0, 7, 19], "lookups")


@check
async def errors_carry_postgres_fields_and_the_session_survives(conn):
    await conn.execute(f"CREATE TABLE {table('u')} (id int PRIMARY KEY)")
    await conn.execute(f"INSERT INTO {table('u')} VALUES (1)")
    try:
        await conn.execute(f"INSERT INTO {table('u')} VALUES ($1)", 1)
        raise AssertionError("the duplicate was accepted")
    except asyncpg.UniqueViolationError as e:
        eq((e.sqlstate, e.detail, e.table_name), ("23505", "Key (id)=(1) already exists.", "u"),
           "error fields")
    try:
        await conn.fetchval("SELECT 1 / $1::int", 0)
        raise AssertionError("division by zero succeeded")
    except asyncpg.DivisionByZeroError as e:
        eq(e.sqlstate, "22012", "division by zero")
    try:
        await conn.execute("SELEC 1")
        raise AssertionError("a syntax error passed")
    except asyncpg.PostgresSyntaxError as e:
        eq(e.sqlstate, "42601", "syntax error")
    eq(await conn.fetchval(f"SELECT count(*) FROM {table('u')}"), 1, "after the errors")


@check
async def a_pool_serves_concurrent_writers(conn):
    await conn.execute(f"CREATE TABLE {table('hits')} (id int PRIMARY KEY, n int NOT NULL)")
    await conn.execute(f"INSERT INTO {table('hits')} SELECT g, 0 FROM generate_series(1, 4) g")
    async with asyncpg.create_pool(URL, min_size=4, max_size=4) as pool:
        async def worker(w):
            for i in range(25):
                async with pool.acquire() as c:
                    async with c.transaction():
                        await c.execute(f"UPDATE {table('hits')} SET n = n + 1 WHERE id = $1",
                                        1 + (w + i) % 4)
        await asyncio.gather(*(worker(w) for w in range(8)))
    eq(await conn.fetchval(f"SELECT sum(n) FROM {table('hits')}"), 200, "every increment")


async def main():
    passed = failed = 0
    try:
        conn = await asyncio.wait_for(asyncpg.connect(URL), TIMEOUT)
        await conn.execute(f"CREATE SCHEMA {SCHEMA}")
    except Exception as e:
        print(f"FAIL connect: {type(e).__name__}: {e}")
        print("0 passed, 1 failed")
        sys.exit(1)
    try:
        for fn in CHECKS:
            try:
                await asyncio.wait_for(fn(conn), TIMEOUT)
                print(f"ok   {fn.__name__}", flush=True)
                passed += 1
            except Exception as e:  # report, then go on with the next check
                print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}", flush=True)
                failed += 1
                conn.terminate()
                conn = await asyncio.wait_for(asyncpg.connect(URL), TIMEOUT)
    finally:
        await conn.close()
        cleanup = await asyncio.wait_for(asyncpg.connect(URL), TIMEOUT)
        await cleanup.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
        await cleanup.close()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    asyncio.run(main())
