-- waly 0002: row capture. Every INSERT, UPDATE, DELETE and TRUNCATE on an application table leaves a row
-- in waly.capture, in the same transaction, until the commit protocol reads and deletes them:
--
--   select * from waly.take_capture();   -- this transaction's rows, in order, removed from the table
--
-- The capture triggers see every change Postgres makes, however it was asked for: cascades, the
-- application's own triggers, INSERT ... SELECT, ON CONFLICT, COPY FROM, functions called from SELECT.
-- Their images are the values Postgres stored (defaults, identity and serial keys, generated columns and
-- BEFORE-trigger edits included), because an AFTER trigger sees the final tuple.
--
-- Application tables: ordinary and partitioned tables outside waly, pg_catalog, information_schema, the
-- toast and temporary schemas, that no extension owns (an extension's rows are its script's to create).

-- One row per change, per transaction. UNLOGGED: no WAL is written for rows that live only as long as their
-- transaction, and a crash empties the table, which is right because it also ends every transaction that
-- was not prepared. The commit protocol must therefore read its rows before PREPARE TRANSACTION.
create unlogged table waly.capture (
  -- The top-level transaction: a change made under a savepoint is keyed by its transaction too, and
  -- vanishes with the savepoint when that is rolled back. No role may set it (see the grants below), so
  -- nobody can write rows into another transaction's capture.
  txid        xid8   not null default pg_current_xact_id(),
  -- Order of the changes within the transaction. A backend takes cached values in increasing order, and a
  -- transaction runs in one backend, so the cache keeps the order while sparing the sequence a lock.
  seq         bigint generated always as identity (cache 100),
  -- 'insert', 'update', 'delete', 'truncate' or 'ddl'. Not a CHECK constraint: Postgres prepares CHECK
  -- expressions again for every INSERT statement, and the trigger runs one per row.
  kind        text   not null,
  schema_name text,
  table_name  text,
  -- Primary-key columns and values: the new row's for insert and update, the old row's for delete. Null
  -- when the table has no primary key (the full images identify the row then).
  pk          jsonb,
  old_row     jsonb,
  new_row     jsonb,
  -- For kind = 'ddl': the command tag, the identity of the object it created, altered or dropped, and the
  -- text the client sent (current_query()). For kind = 'truncate', ddl_query is the TRUNCATE's text too,
  -- so RESTART IDENTITY can be seen.
  ddl_tag     text,
  ddl_object  text,
  ddl_query   text
);

-- The commit protocol looks rows up by transaction and reads them in seq order: one index does both.
create index capture_txid_seq on waly.capture (txid, seq);

comment on table waly.capture is
  'Row changes and DDL of transactions in progress, until the commit protocol moves them to the log.';

-- The capture runs with the rights of whoever changes the data (a SECURITY DEFINER trigger would cost a
-- user switch and a search_path per row), so every role may add rows, but only with txid defaulted to its
-- own transaction: INSERT is granted on every column except txid. It may read and delete them; rows of
-- other transactions in progress are invisible to it. Nothing else in waly's schema is writable.
grant select, delete on waly.capture to public;
grant insert (kind, schema_name, table_name, pk, old_row, new_row, ddl_tag, ddl_object, ddl_query)
  on waly.capture to public;

-- The commit protocol's read: this transaction's changes in order, deleted in the same statement.
create function waly.take_capture() returns setof waly.capture
language sql volatile as $$
  with taken as (
    delete from waly.capture where txid = pg_catalog.pg_current_xact_id() returning *
  )
  select * from taken order by seq
$$;

comment on function waly.take_capture() is
  'Deletes and returns the calling transaction''s capture rows, ordered by seq.';

-- A row as JSON under the output settings that make it exact: every float digit, and intervals in the
-- style their input function reads back unchanged under any IntervalStyle (sql_standard's "-1 2:00:00"
-- means -1 day -2 hours there but -1 day +2 hours under the default). bytea_output needs no care (both
-- formats read back), but is pinned too so that images taken here look alike. The capture calls this only
-- when the session changed one of the first two settings: a function with SET clauses costs more.
create function waly.exact_image(r anyelement) returns jsonb
language sql stable
set extra_float_digits = 3 set intervalstyle = 'postgres' set bytea_output = 'hex'
as $$ select pg_catalog.to_jsonb(r) $$;

-- The row trigger. Its arguments are the primary-key column names, fixed when the trigger is created
-- (and re-created when the key changes), so a row costs no catalog look-up.
create function waly.capture_row() returns trigger
language plpgsql as $$
declare
  old_image jsonb;
  new_image jsonb;
  key_image jsonb;
  key jsonb;
  exact boolean := pg_catalog.current_setting('extra_float_digits')::int4 >= 1
    and pg_catalog.current_setting('intervalstyle') = 'postgres';
begin
  if TG_OP <> 'INSERT' then
    old_image := case when exact then pg_catalog.to_jsonb(OLD) else waly.exact_image(OLD) end;
  end if;
  if TG_OP <> 'DELETE' then
    new_image := case when exact then pg_catalog.to_jsonb(NEW) else waly.exact_image(NEW) end;
  end if;
  if TG_NARGS > 0 then
    key_image := coalesce(new_image, old_image);
    if TG_NARGS = 1 then
      key := pg_catalog.jsonb_build_object(TG_ARGV[0], key_image -> TG_ARGV[0]);
    else
      key := '{}';
      for i in 0 .. TG_NARGS - 1 loop
        key := key || pg_catalog.jsonb_build_object(TG_ARGV[i], key_image -> TG_ARGV[i]);
      end loop;
    end if;
  end if;
  insert into waly.capture (kind, schema_name, table_name, pk, old_row, new_row)
  values (pg_catalog.lower(TG_OP), TG_TABLE_SCHEMA, TG_TABLE_NAME, key, old_image, new_image);
  return null;
end
$$;

-- The TRUNCATE trigger: one row per table truncated (tables truncated by CASCADE and the partitions of a
-- truncated partitioned table included, each firing its own).
create function waly.capture_truncate() returns trigger
language plpgsql as $$
begin
  insert into waly.capture (kind, schema_name, table_name, ddl_query)
  values ('truncate', TG_TABLE_SCHEMA, TG_TABLE_NAME, pg_catalog.current_query());
  return null;
end
$$;

create function waly.is_application_table(rel oid) returns boolean
language sql stable as $$
  select exists (
    select
    from pg_catalog.pg_class c
    join pg_catalog.pg_namespace n on n.oid = c.relnamespace
    where c.oid = rel
      and c.relkind in ('r', 'p')
      and c.relpersistence <> 't'
      and n.nspname not in ('waly', 'pg_catalog', 'information_schema')
      and n.nspname not like 'pg\_toast%'
      and n.nspname not like 'pg\_temp%'
      and not exists (
        select
        from pg_catalog.pg_depend d
        where d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass and d.objid = c.oid and d.deptype = 'e'
      )
  )
$$;

-- The table's primary-key columns in key order (INCLUDE columns left out), or null.
create function waly.primary_key_columns(rel oid) returns text[]
language sql stable as $$
  select pg_catalog.array_agg(a.attname::text order by k.ord)
  from pg_catalog.pg_index i
  cross join lateral pg_catalog.unnest(i.indkey::int2[]) with ordinality as k(attnum, ord)
  join pg_catalog.pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
  where i.indrelid = rel and i.indisprimary and k.ord <= i.indnkeyatts
$$;

-- Gives one table its capture triggers, or brings them up to date (its primary key changed); does nothing
-- when they are already right, so it is safe to call again and again. Row triggers go on tables that hold
-- rows (a partitioned table's go on each partition, which keeps a partition attached or detached later
-- covered by its own), the TRUNCATE trigger on every application table.
--
-- Trigger names: Postgres fires the triggers of one event in name order, and "0_waly_capture" sorts before
-- names starting with a letter or underscore, so the capture fires FIRST among the AFTER ROW triggers
-- (ahead of the application's and of the foreign-key "RI_ConstraintTrigger_*" ones). That records each
-- change before any AFTER trigger reacts to it: when an application trigger, or ON UPDATE CASCADE on a
-- self-referencing table, changes the same row again, the first change comes first in waly.capture, and
-- replaying the images in seq order gives the stored row. Firing last would put the reaction before its
-- cause. The values are the same either way: BEFORE triggers all run before any AFTER trigger, and AFTER
-- triggers cannot change the row they fire for.
--
-- SECURITY DEFINER: the event trigger calls this for DDL run by any role, which may own the table without
-- being allowed to add triggers through every path (e.g. a GRANT by a non-owner); waly's owner can.
create function waly.ensure_capture(rel oid) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  relation text;
  kind "char";
  pk text[];
  args bytea;
  existing record;
begin
  if not waly.is_application_table(rel) then
    return;
  end if;
  select format('%I.%I', n.nspname, c.relname), c.relkind into relation, kind
  from pg_class c join pg_namespace n on n.oid = c.relnamespace
  where c.oid = rel;

  if kind = 'p' then
    perform waly.ensure_capture(t.relid) from pg_partition_tree(rel) t where t.parentrelid = rel;
  end if;

  if not exists (select from pg_trigger where tgrelid = rel and tgname = '0_waly_capture_truncate') then
    execute format(
      'create trigger %I after truncate on %s for each statement execute function waly.capture_truncate()',
      '0_waly_capture_truncate', relation);
  end if;

  if kind = 'r' then
    pk := waly.primary_key_columns(rel);
    -- pg_trigger.tgargs holds each argument NUL-terminated.
    args := coalesce(
      (select string_agg(convert_to(col, getdatabaseencoding()) || '\x00'::bytea, ''::bytea order by ord)
       from unnest(pk) with ordinality as u(col, ord)),
      ''::bytea);
    select tgargs, tgenabled into existing
    from pg_trigger where tgrelid = rel and tgname = '0_waly_capture';
    if found and existing.tgenabled not in ('O', 'A') then
      raise exception 'waly''s capture trigger on % must stay enabled', relation
        using errcode = 'object_not_in_prerequisite_state',
              detail = 'With it disabled, changes to the table would bypass waly''s log.',
              hint = format('Leave "0_waly_capture" enabled (ALTER TABLE %s ENABLE TRIGGER "0_waly_capture"); to stop capturing, uninstall waly.', relation);
    end if;
    if not found or existing.tgargs <> args then
      execute format(
        'create or replace trigger %I after insert or update or delete on %s for each row execute function waly.capture_row(%s)',
        '0_waly_capture', relation,
        coalesce((select string_agg(quote_literal(col), ', ' order by ord)
                  from unnest(pk) with ordinality as u(col, ord)), ''));
    end if;
  end if;
end
$$;

-- Covers every application table; the installer for the tables that exist before waly.
create function waly.ensure_capture_all() returns int
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  n int := 0;
  rel oid;
begin
  for rel in
    select c.oid from pg_class c
    where waly.is_application_table(c.oid) and not c.relispartition
    order by c.oid
  loop
    perform waly.ensure_capture(rel);
    n := n + 1;
  end loop;
  return n;
end
$$;

select waly.ensure_capture_all();
