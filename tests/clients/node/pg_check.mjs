#!/usr/bin/env node
// Checks that node-postgres (`pg`) behaves through waly as it does against Postgres.
//
// Usage: node pg_check.mjs postgres://USER:PASSWORD@HOST:PORT/DB   (or env DATABASE_URL)
//
// Everything is created in a fresh schema with a random name, dropped at the end.
// Prints one line per check, then "N passed, M failed"; exits 1 on any failure.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import pg from 'pg';

const url = process.argv[2] || process.env.DATABASE_URL;
if (!url) {
  console.error('usage: node pg_check.mjs URL  (or set DATABASE_URL)');
  process.exit(2);
}
const schema = `waly_check_${randomBytes(4).toString('hex')}`;
const t = (name) => `${schema}.${name}`;

// Never hang a test run.
setTimeout(() => {
  console.log('FAIL timeout: checks did not finish in 180 s');
  process.exit(1);
}, 180_000).unref();

async function connect() {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  await client.connect();
  return client;
}

const checks = [];
const check = (name, fn) => checks.push({ name, fn });

check('parameterised queries', async (c) => {
  const when = new Date('2024-02-29T23:59:58.123Z');
  const bytes = Buffer.from([0, 1, 2, 254, 255]);
  const { rows } = await c.query(
    `SELECT $1::int AS i, $2::text AS s, $3::text AS n, $4::bytea AS b, $5::timestamptz AS ts,
            $6::jsonb AS j, $7::int[] AS a, $8::numeric AS num, $9::bigint AS big, $10::bool AS ok`,
    [42, "héllo O'Reilly ✓", null, bytes, when, { a: [1, { b: null }] }, [1, 2, 3], '12345678901234567890.5', '9007199254740993', true],
  );
  assert.deepEqual(rows[0], {
    i: 42, s: "héllo O'Reilly ✓", n: null, b: bytes, ts: when, j: { a: [1, { b: null }] },
    a: [1, 2, 3], num: '12345678901234567890.5', big: '9007199254740993', ok: true,
  });
  await c.query(`CREATE TABLE ${t('items')} (id int PRIMARY KEY, name text, qty int)`);
  for (let i = 1; i <= 20; i++) {
    await c.query(`INSERT INTO ${t('items')} (id, name, qty) VALUES ($1, $2, $3)`, [i, `item ${i}`, i * 10]);
  }
  const res = await c.query(`SELECT name, qty FROM ${t('items')} WHERE id = ANY($1) ORDER BY id`, [[3, 7]]);
  assert.deepEqual(res.rows, [{ name: 'item 3', qty: 30 }, { name: 'item 7', qty: 70 }]);
  assert.equal(res.rowCount, 2);
  const upd = await c.query(`UPDATE ${t('items')} SET qty = qty + 1 WHERE id <= $1`, [5]);
  assert.equal(upd.command, 'UPDATE');
  assert.equal(upd.rowCount, 5);
});

check('named prepared statement reused', async (c) => {
  for (let i = 1; i <= 200; i++) {
    const res = await c.query({
      name: 'waly-check-lookup',
      text: `SELECT id, name, $2::int * 2 AS doubled FROM ${t('items')} WHERE id = $1`,
      values: [(i % 20) + 1, i],
    });
    assert.deepEqual(res.rows, [{ id: (i % 20) + 1, name: `item ${(i % 20) + 1}`, doubled: i * 2 }]);
  }
  const res = await c.query({ name: 'waly-check-count', text: `SELECT count(*)::int AS n FROM ${t('items')}` });
  assert.equal(res.rows[0].n, 20);
});

check('transaction with rollback', async (c) => {
  await c.query(`CREATE TABLE ${t('tx')} (v text PRIMARY KEY)`);
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${t('tx')} VALUES ($1)`, ['committed']);
  await c.query('COMMIT');
  await c.query('BEGIN');
  await c.query(`INSERT INTO ${t('tx')} VALUES ($1)`, ['rolled back']);
  const inside = await c.query(`SELECT count(*)::int AS n FROM ${t('tx')}`);
  assert.equal(inside.rows[0].n, 2, 'row visible inside its transaction');
  await c.query('ROLLBACK');
  const { rows } = await c.query(`SELECT v FROM ${t('tx')} ORDER BY v`);
  assert.deepEqual(rows, [{ v: 'committed' }]);
});

check('error 22012 and client usable after', async (c) => {
  await assert.rejects(c.query('SELECT 1/0'), (err) => {
    assert.equal(err.code, '22012');
    assert.equal(err.severity, 'ERROR');
    assert.equal(err.message, 'division by zero');
    return true;
  });
  // Also from a parameterised (extended protocol) query.
  await assert.rejects(c.query('SELECT $1::int / 0', [1]), { code: '22012' });
  await assert.rejects(c.query('SELECT * FROM WHERE x = 1'), (err) => {
    assert.equal(err.code, '42601');
    assert.equal(err.position, '15');
    return true;
  });
  const { rows } = await c.query('SELECT $1::text AS ok', ['still usable']);
  assert.equal(rows[0].ok, 'still usable');
  // An error inside a transaction aborts it until ROLLBACK.
  await c.query('BEGIN');
  await assert.rejects(c.query('SELECT 1/0'), { code: '22012' });
  await assert.rejects(c.query('SELECT 1'), { code: '25P02' });
  await c.query('ROLLBACK');
  assert.equal((await c.query('SELECT 2 AS n')).rows[0].n, 2);
});

check('LISTEN/NOTIFY with a second client', async (c) => {
  const channel = `${schema}_chan`;
  const listener = await connect();
  try {
    const got = [];
    const twoArrived = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`only ${got.length} notifications in 10 s`)), 10_000);
      listener.on('notification', (msg) => {
        got.push([msg.channel, msg.payload]);
        if (got.length === 2) { clearTimeout(timer); resolve(); }
      });
    });
    await listener.query(`LISTEN ${channel}`);
    await c.query(`NOTIFY ${channel}, 'first'`);
    await c.query('SELECT pg_notify($1, $2)', [channel, 'second ✓']);
    await twoArrived;
    assert.deepEqual(got, [[channel, 'first'], [channel, 'second ✓']]);
  } finally {
    await listener.end();
  }
});

check('query returning 10,000 rows', async (c) => {
  const { rows, rowCount } = await c.query(
    "SELECT g AS n, repeat('x', g % 100) AS pad, md5(g::text) AS h FROM generate_series(1, 10000) g",
  );
  assert.equal(rowCount, 10000);
  assert.equal(rows.length, 10000);
  rows.forEach((r, i) => {
    assert.equal(r.n, i + 1);
    assert.equal(r.pad.length, (i + 1) % 100);
  });
  const sum = await c.query('SELECT sum(g)::text AS s FROM generate_series(1, 10000) g');
  assert.equal(sum.rows[0].s, String(rows.reduce((acc, r) => acc + r.n, 0)));
});

check('concurrent queries on a Pool of 8', async () => {
  const pool = new pg.Pool({ connectionString: url, max: 8, connectionTimeoutMillis: 10_000 });
  try {
    await pool.query(`CREATE TABLE ${t('pooled')} (id int PRIMARY KEY, by_pid int)`);
    const results = await Promise.all(Array.from({ length: 64 }, async (_, i) => {
      const res = await pool.query(
        `INSERT INTO ${t('pooled')} SELECT $1, pg_backend_pid() FROM pg_sleep(0.02) RETURNING id`, [i]);
      return res.rows[0].id;
    }));
    assert.deepEqual(results, Array.from({ length: 64 }, (_, i) => i));
    assert.equal(pool.totalCount, 8, 'pool opened 8 connections');
    const { rows } = await pool.query(
      `SELECT count(*)::int AS n, count(DISTINCT by_pid)::int AS sessions FROM ${t('pooled')}`);
    assert.equal(rows[0].n, 64);
    assert.ok(rows[0].sessions >= 1 && rows[0].sessions <= 8, `${rows[0].sessions} server sessions`);
    // A transaction on one pooled client is isolated from the others.
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`DELETE FROM ${t('pooled')}`);
      const others = await pool.query(`SELECT count(*)::int AS n FROM ${t('pooled')}`);
      assert.equal(others.rows[0].n, 64, 'uncommitted delete invisible to other clients');
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }
  } finally {
    await pool.end();
  }
});

async function main() {
  let passed = 0;
  let failed = 0;
  let c;
  try {
    c = await connect();
    await c.query(`CREATE SCHEMA ${schema}`);
  } catch (err) {
    console.log(`FAIL connect: ${err.message}`);
    console.log('0 passed, 1 failed');
    process.exit(1);
  }
  c.on('error', () => {}); // a dropped connection shows up as a failed check
  try {
    for (const { name, fn } of checks) {
      try {
        await fn(c);
        console.log(`ok   ${name}`);
        passed++;
      } catch (err) {
        console.log(`FAIL ${name}: ${err.message}`);
        failed++;
        await c.query('ROLLBACK').catch(() => {}); // leave no transaction open
      }
    }
  } finally {
    await c.end().catch(() => {});
    const cleanup = await connect();
    await cleanup.query(`DROP SCHEMA ${schema} CASCADE`);
    await cleanup.end();
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

main();
