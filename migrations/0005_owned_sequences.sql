-- waly 0005: the sequences each table's inserts may advance, kept up to date by the DDL event triggers, so
-- that waly.take_capture() finds them with one index look-up instead of searching the catalogs at every
-- commit.
--
-- REQUIRES A SUPERUSER: it replaces the event trigger functions of 0003 and the SECURITY DEFINER
-- take_capture() of 0004.
--
-- What 0004 did at every commit that inserted or truncated (a PL/pgSQL function with its own settings, a
-- regclass look-up per table, a pg_depend scan per table and ancestor) cost about 70 us and a dozen catalog
-- locks per transaction, most of it for tables that own no sequence at all. Now:
--
--   waly.owned_sequences   one row per application table whose inserts can advance a sequence: the
--                          sequences it owns (serial, identity, OWNED BY) and, for a partition, those its
--                          ancestors own. Tables without any have no row.
--
-- The row of a table is recomputed whenever a DDL command touches the table, a table above or below it in
-- its partition tree, or one of the sequences (waly.capture_ddl at ddl_command_end); dropped tables and
-- sequences are forgotten at sql_drop. A row can list more than the table uses (a partition detached from
-- a parent with a serial keeps the parent's sequence, which its column default still calls): that costs a
-- sequence position in the record, never a wrong one.
--
-- take_capture() returns the same rows as 0004's.

-- The event triggers must not fire for waly's own changes below (they skip schema waly anyway, but
-- COMMENT and the function replacements are safer without them). Enabled again at the end.
alter event trigger waly_capture_ddl disable;
alter event trigger waly_capture_drop disable;

create table waly.owned_sequences (
  table_oid oid primary key,
  sequences oid[] not null
);

comment on table waly.owned_sequences is
  'Per application table, the sequences its inserts may advance (its own and its partition ancestors''). Maintained by waly''s event triggers.';

-- Recomputes the rows of `rel` (a table or a sequence) and of every table whose answer it can change: for
-- a table, the table and all partitions below it; for a sequence, the tables that listed it and the tables
-- that own it now, with their partitions.
create function waly.refresh_owned_sequences(rel oid) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  kind "char";
  roots oid[];
  tables oid[];
begin
  select c.relkind into kind from pg_class c where c.oid = rel;
  if kind = 'S' then
    roots := array(
      select o.table_oid from waly.owned_sequences o where rel = any (o.sequences)
      union
      select d.refobjid from pg_depend d
      where d.classid = 'pg_class'::regclass and d.objid = rel
        and d.refclassid = 'pg_class'::regclass and d.deptype in ('a', 'i'));
  elsif kind in ('r', 'p') then
    roots := array[rel];
  else
    return;
  end if;
  -- pg_partition_tree() lists a partitioned table and everything below it; a plain table is itself.
  tables := array(
    select r.oid from unnest(roots) as r(oid)
    union
    select t.relid from unnest(roots) as r(oid) cross join lateral pg_partition_tree(r.oid) as t);
  delete from waly.owned_sequences where table_oid = any (tables);
  insert into waly.owned_sequences (table_oid, sequences)
  select t.oid, s.sequences
  from unnest(tables) as t(oid)
  cross join lateral (
    select array_agg(distinct d.objid order by d.objid) as sequences
    from (select t.oid union select a.relid from pg_partition_ancestors(t.oid) as a) as owner(rel)
    join pg_depend d on d.refclassid = 'pg_class'::regclass and d.refobjid = owner.rel
                    and d.classid = 'pg_class'::regclass and d.deptype in ('a', 'i')
    join pg_class c on c.oid = d.objid and c.relkind = 'S'
  ) as s
  where s.sequences is not null and waly.is_application_table(t.oid);
end
$$;

-- A dropped table or sequence leaves no trace behind: its row goes, and so does its oid in other rows
-- (reading the position of a sequence that no longer exists would fail the commit).
create function waly.forget_relation(rel oid) returns void
language sql security definer set search_path = pg_catalog, pg_temp as $$
  delete from waly.owned_sequences where table_oid = rel;
  update waly.owned_sequences set sequences = array_remove(sequences, rel) where rel = any (sequences);
  delete from waly.owned_sequences where sequences = '{}';
$$;

-- 0003's function, plus the refresh of every table or sequence the command touched.
create or replace function waly.capture_ddl() returns event_trigger
language plpgsql as $$
declare
  cmd record;
  recorded boolean := false;
  object text;
  relations oid[] := '{}';
  rel oid;
  dropped text := nullif(pg_catalog.current_setting('waly.dropped_objects', true), '');
begin
  if dropped is not null then
    perform pg_catalog.set_config('waly.dropped_objects', '', true);
  end if;
  for cmd in select * from pg_catalog.pg_event_trigger_ddl_commands() loop
    continue when not waly.is_application_command(cmd.schema_name, cmd.in_extension, cmd.object_type,
                                                  cmd.object_identity, cmd.objid);
    recorded := true;
    if object is null and cmd.command_tag = tg_tag then
      object := cmd.object_identity;
    end if;
    if cmd.classid = 'pg_catalog.pg_class'::pg_catalog.regclass and not cmd.objid = any (relations) then
      relations := relations || cmd.objid;
    end if;
  end loop;
  if not recorded and dropped is null then
    return;
  end if;

  insert into waly.capture (kind, ddl_tag, ddl_object, ddl_query)
  values ('ddl', tg_tag, coalesce(object, dropped), pg_catalog.current_query());

  foreach rel in array relations loop
    perform waly.ensure_capture(rel);
    perform waly.refresh_owned_sequences(rel);
    -- CREATE TABLE AS and SELECT INTO fill the table before it has a trigger: record its rows as inserts,
    -- after the DDL row. Replay runs the DDL, empties the table, then applies these.
    if tg_tag in ('CREATE TABLE AS', 'SELECT INTO') and waly.is_application_table(rel) then
      execute pg_catalog.format(
        'insert into waly.capture (kind, schema_name, table_name, new_row) '
        'select ''insert'', n.nspname, c.relname, pg_catalog.to_jsonb(t) from %s t, pg_catalog.pg_class c '
        'join pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.oid = %s',
        rel::pg_catalog.regclass, rel);
    end if;
  end loop;
end
$$;

-- 0003's function, plus forgetting every dropped table and sequence (dropped by CASCADE too).
create or replace function waly.capture_drop() returns event_trigger
language plpgsql as $$
declare
  obj record;
  names text;
begin
  for obj in select * from pg_catalog.pg_event_trigger_dropped_objects() loop
    if obj.original and obj.object_type = 'trigger'
       and obj.address_names[pg_catalog.array_upper(obj.address_names, 1)] in ('0_waly_capture', '0_waly_capture_truncate') then
      raise exception 'waly''s capture trigger % cannot be dropped', obj.object_identity
        using errcode = 'dependent_objects_still_exist',
              detail = 'Without it, changes to the table would bypass waly''s log.',
              hint = 'Capture triggers go away with their table; to stop capturing altogether, uninstall waly.';
    end if;
    if obj.object_type in ('table', 'sequence') and not obj.is_temporary then
      perform waly.forget_relation(obj.objid);
    end if;
    continue when not obj.original or obj.is_temporary or obj.schema_name = 'waly'
                  or (obj.object_type = 'schema' and obj.object_identity = 'waly');
    names := coalesce(names || ', ', '') || obj.object_identity;
  end loop;
  if names is not null then
    perform pg_catalog.set_config('waly.dropped_objects',
      coalesce(nullif(pg_catalog.current_setting('waly.dropped_objects', true), '') || ', ', '') || names, true);
  end if;
end
$$;

-- A sequence's position as a capture row's new_row. pg_sequence_last_value() is null when is_called is
-- false (never used since it was created, restarted or set with is_called false); the sequence itself
-- says where it stands then, through a statement built for it.
create function waly.sequence_state(seq oid) returns jsonb
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
declare
  v bigint := pg_sequence_last_value(seq);
  called boolean := v is not null;
begin
  if not called then
    execute format('select last_value, is_called from %s', seq::regclass) into v, called;
  end if;
  return jsonb_build_object('last_value', v, 'is_called', called);
end
$$;

-- Same rows as 0004's: the transaction's changes in seq order, then one row per sequence its inserted or
-- truncated tables may have advanced, ordered by schema and name. A table without sequences costs one
-- index probe of waly.owned_sequences.
create or replace function waly.take_capture() returns setof waly.capture
language plpgsql volatile security definer set search_path = pg_catalog, pg_temp as $$
begin
  -- A transaction without an id wrote nothing (and may be read-only, where the delete below would fail).
  if pg_current_xact_id_if_assigned() is null then
    return;
  end if;
  return query
    with taken as (
      delete from waly.capture where txid = pg_current_xact_id_if_assigned() returning *
    ),
    sequences as (
      select distinct s.oid
      from (select distinct t.schema_name, t.table_name from taken t where t.kind in ('insert', 'truncate')) as w
      join waly.owned_sequences o on o.table_oid = to_regclass(format('%I.%I', w.schema_name, w.table_name))
      cross join lateral unnest(o.sequences) as s(oid)
    ),
    named as (
      select s.oid, q.nspname, q.relname
      from sequences s
      cross join lateral (select n.nspname::text, c.relname::text
                          from pg_class c join pg_namespace n on n.oid = c.relnamespace
                          where c.oid = s.oid offset 0) as q
    )
    select * from taken
    union all
    select pg_current_xact_id(),
           coalesce((select max(t.seq) from taken t), 0) + row_number() over (order by n.nspname, n.relname),
           'sequence', n.nspname, n.relname, null, null, waly.sequence_state(n.oid), null, null, null
    from named n
    order by seq;
end
$$;

drop function waly.sequence_positions(text[], bigint);

-- Tables that exist now (a partitioned table's call covers its partitions).
select waly.refresh_owned_sequences(c.oid)
from pg_class c
where waly.is_application_table(c.oid) and not c.relispartition;

alter event trigger waly_capture_ddl enable;
alter event trigger waly_capture_drop enable;
