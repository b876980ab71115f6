-- waly 0001: waly's own schema and the ledger of applied migrations.
--
-- Everything waly keeps in the application's database lives in the schema `waly`; waly never creates
-- objects elsewhere except its capture triggers on application tables (0002). `waly.migrations` records
-- each migration file applied, once, with the SHA-256 of its text, so a file edited after it was applied is
-- detected and refused instead of silently diverging between databases.
--
-- Migration files are immutable once released: change the schema with a new, higher-numbered file. Each file
-- runs inside one transaction (no BEGIN/COMMIT, no CREATE INDEX CONCURRENTLY in here).

create schema if not exists waly;

comment on schema waly is
  'waly: the capture of every row change and DDL command until the commit protocol moves it to the log. Managed by `waly migrate`; do not edit.';

create table waly.migrations (
  version    int primary key,
  name       text not null,
  checksum   text not null,
  applied_at timestamptz not null default now()
);

comment on table waly.migrations is 'Migrations applied by `waly migrate`: version, file name, SHA-256 of the file text.';

-- Application roles reach waly's objects through the schema; what each may do is granted per object.
grant usage on schema waly to public;
