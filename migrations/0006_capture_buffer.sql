-- waly migration 0006: row changes are buffered in the transaction's own memory, not in a table.
--
-- Until now the capture trigger inserted one row per change into waly.capture, and the commit protocol
-- deleted and returned them (take_capture). Those inserts, their index entries, the delete and the dead
-- tuples it leaves cost Postgres more CPU than the application's own statements in a short transaction.
--
-- Now the trigger appends one line of JSON per change to a transaction-local setting, waly.capture
-- (set_config(..., true)): it vanishes with the transaction (PREPARE TRANSACTION included), and a ROLLBACK
-- TO SAVEPOINT restores the value it had at the savepoint, exactly as the rows under that savepoint are
-- undone. waly refuses SET/RESET of waly.* and RESET ALL where they could empty it (see the README).
--
-- waly.capture the table remains, for what must outlive or interleave with the buffer:
--   * kind 'lines': the buffer spilled when it grows past 8 kB (large transactions would otherwise copy it
--     at every change), with the lines in ddl_query;
--   * DDL and TRUNCATE rows (and the rows CREATE TABLE AS filled), written after spilling the buffer, so
--     the table's rows (by seq) followed by the buffer are the transaction's changes in order;
--   * the capture of statements that commit on their own (CREATE INDEX CONCURRENTLY), which the buffer
--     would lose.
-- waly.capture_spilled is 'on' once the table holds rows of the transaction; waly.capture_tables lists
-- (one oid per line) the tables that had inserts or a TRUNCATE, whose sequences' positions go into the
-- record.
-- A line is a JSON array: [kind, schema, table, primary-key columns (array or null), old image, new image],
-- images by row_to_json (columns in table order; json values kept as written). waly computes the primary
-- key from the image and the key columns.
--
-- The trigger is written for speed: assignments instead of PERFORM (which runs a query), one concat().

-- waly's own DDL below (a GRANT, the recreated triggers) is not the application's.
alter event trigger waly_capture_ddl disable;
alter event trigger waly_capture_drop disable;

-- The trigger's arguments are now the primary-key columns as one JSON array ('null' without a primary
-- key), and whether the table owns sequences ('sequences' or 'none'; waly.owned_sequences, the table's
-- partition ancestors' included): only then do its inserts note the table for the record's sequence
-- positions. waly.refresh_owned_sequences() re-ensures the triggers of the tables it changes.
create or replace function waly.capture_arguments(rel oid) returns text[]
language sql stable as $$
  select array[
    coalesce(pg_catalog.array_to_json(waly.primary_key_columns(rel))::text, 'null'),
    case when exists (select from waly.owned_sequences o where o.table_oid = rel) then 'sequences' else 'none' end]
$$;

create or replace function waly.exact_json(r anyelement) returns text
language sql stable
set extra_float_digits = 3 set intervalstyle = 'postgres' set bytea_output = 'hex'
as $$ select pg_catalog.row_to_json(r)::text $$;

-- Moves the buffer's lines into waly.capture (kind 'lines') and empties it. Run before anything else is
-- written to the table, so the table's order stays the transaction's.
create or replace function waly.spill_capture() returns void
language plpgsql as $$
declare
  buf text := pg_catalog.current_setting('waly.capture', true);
begin
  if buf <> '' then
    insert into waly.capture (kind, ddl_query) values ('lines', buf);
    buf := pg_catalog.set_config('waly.capture', '', true);
  end if;
  buf := pg_catalog.set_config('waly.capture_spilled', 'on', true);
end
$$;

-- Notes that a table had inserts (or a TRUNCATE) in this transaction.
create or replace function waly.note_sequence_table(rel oid) returns void
language plpgsql as $$
declare
  tables text := pg_catalog.current_setting('waly.capture_tables', true);
begin
  if tables is null or tables = '' then
    tables := pg_catalog.set_config('waly.capture_tables', E'\n' || rel::text || E'\n', true);
  elsif pg_catalog.strpos(tables, E'\n' || rel::text || E'\n') = 0 then
    tables := pg_catalog.set_config('waly.capture_tables', tables || rel::text || E'\n', true);
  end if;
end
$$;

create or replace function waly.capture_row() returns trigger
language plpgsql as $$
declare
  exact boolean := pg_catalog.current_setting('extra_float_digits')::int4 >= 1
    and pg_catalog.current_setting('intervalstyle') = 'postgres';
  buf text := pg_catalog.current_setting('waly.capture', true);
  tables text;
  line text;
begin
  if TG_OP = 'INSERT' then
    line := pg_catalog.concat('["insert",', pg_catalog.to_json(TG_TABLE_SCHEMA)::text, ',',
      pg_catalog.to_json(TG_TABLE_NAME)::text, ',', coalesce(TG_ARGV[0], 'null'), ',null,',
      case when exact then pg_catalog.row_to_json(NEW)::text else waly.exact_json(NEW) end, E']\n');
    if TG_ARGV[1] is distinct from 'none' then
      -- waly.note_sequence_table(TG_RELID), inline: this runs for every inserted row.
      tables := pg_catalog.current_setting('waly.capture_tables', true);
      if tables is null or tables = '' then
        tables := pg_catalog.set_config('waly.capture_tables', E'\n' || TG_RELID::text || E'\n', true);
      elsif pg_catalog.strpos(tables, E'\n' || TG_RELID::text || E'\n') = 0 then
        tables := pg_catalog.set_config('waly.capture_tables', tables || TG_RELID::text || E'\n', true);
      end if;
    end if;
  elsif TG_OP = 'UPDATE' then
    line := pg_catalog.concat('["update",', pg_catalog.to_json(TG_TABLE_SCHEMA)::text, ',',
      pg_catalog.to_json(TG_TABLE_NAME)::text, ',', coalesce(TG_ARGV[0], 'null'), ',',
      case when exact then pg_catalog.row_to_json(OLD)::text else waly.exact_json(OLD) end, ',',
      case when exact then pg_catalog.row_to_json(NEW)::text else waly.exact_json(NEW) end, E']\n');
  else
    line := pg_catalog.concat('["delete",', pg_catalog.to_json(TG_TABLE_SCHEMA)::text, ',',
      pg_catalog.to_json(TG_TABLE_NAME)::text, ',', coalesce(TG_ARGV[0], 'null'), ',',
      case when exact then pg_catalog.row_to_json(OLD)::text else waly.exact_json(OLD) end, E',null]\n');
  end if;
  buf := pg_catalog.set_config('waly.capture', pg_catalog.concat(buf, line), true);
  if pg_catalog.octet_length(buf) > 8192 then
    -- waly.spill_capture(), inline.
    insert into waly.capture (kind, ddl_query) values ('lines', buf);
    buf := pg_catalog.set_config('waly.capture', '', true);
    buf := pg_catalog.set_config('waly.capture_spilled', 'on', true);
  end if;
  return null;
end
$$;

create or replace function waly.capture_truncate() returns trigger
language plpgsql as $$
begin
  perform waly.spill_capture();
  perform waly.note_sequence_table(TG_RELID);
  insert into waly.capture (kind, schema_name, table_name, ddl_query)
  values ('truncate', TG_TABLE_SCHEMA, TG_TABLE_NAME, pg_catalog.current_query());
  return null;
end
$$;

create or replace function waly.ensure_capture(rel oid) returns void
language plpgsql security definer set search_path = pg_catalog, pg_temp as $$
declare
  relation text;
  kind "char";
  arguments text[];
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
    arguments := waly.capture_arguments(rel);
    -- pg_trigger.tgargs holds each argument NUL-terminated.
    args := convert_to(arguments[1], getdatabaseencoding()) || '\x00'::bytea
            || convert_to(arguments[2], getdatabaseencoding()) || '\x00'::bytea;
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
        'create or replace trigger %I after insert or update or delete on %s for each row execute function waly.capture_row(%L, %L)',
        '0_waly_capture', relation, arguments[1], arguments[2]);
    end if;
  end if;
end
$$;

-- As in migration 0005, and then the capture triggers of the tables whose sequences it changed, so their
-- 'sequences' argument follows.
create or replace function waly.refresh_owned_sequences(rel oid) returns void
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
  perform waly.ensure_capture(t.oid) from unnest(tables) as t(oid) where waly.is_application_table(t.oid);
end
$$;

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

  perform waly.spill_capture();
  insert into waly.capture (kind, ddl_tag, ddl_object, ddl_query)
  values ('ddl', tg_tag, coalesce(object, dropped), pg_catalog.current_query());

  foreach rel in array relations loop
    perform waly.ensure_capture(rel);
    perform waly.refresh_owned_sequences(rel);
    -- CREATE TABLE AS and SELECT INTO fill the table before it has a trigger: record its rows as inserts,
    -- after the DDL row. Replay runs the DDL, empties the table, then applies these.
    if tg_tag in ('CREATE TABLE AS', 'SELECT INTO') and waly.is_application_table(rel) then
      perform waly.note_sequence_table(rel);
      execute pg_catalog.format(
        'insert into waly.capture (kind, schema_name, table_name, new_row) '
        'select ''insert'', n.nspname, c.relname, pg_catalog.to_jsonb(t) from %s t, pg_catalog.pg_class c '
        'join pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.oid = %s',
        rel::pg_catalog.regclass, rel);
    end if;
  end loop;
end
$$;

-- Where the sequences owned by `tables` (oids, one per line, as waly.capture_tables holds them) stand: a
-- JSON array of {schema, name, last_value, is_called}, or null when they own none. The commit protocol
-- reads it with the buffer in one query.
create or replace function waly.sequence_positions(tables text) returns text
language plpgsql volatile as $$
begin
  return (
    select pg_catalog.json_agg(pg_catalog.json_build_object(
             'schema', q.nspname, 'name', q.relname,
             'last_value', (p.state ->> 'last_value')::int8, 'is_called', (p.state ->> 'is_called')::bool)
           order by q.nspname, q.relname)::text
    from (select distinct u.oid
          from pg_catalog.unnest(pg_catalog.string_to_array(pg_catalog.btrim(tables, E'\n'), E'\n')::oid[]) as t(oid)
          join waly.owned_sequences o on o.table_oid = t.oid
          cross join lateral pg_catalog.unnest(o.sequences) as u(oid)) as s
    cross join lateral (select n.nspname, c.relname
                        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                        where c.oid = s.oid offset 0) as q
    cross join lateral (select waly.sequence_state(s.oid) as state offset 0) as p);
end
$$;

grant select on waly.owned_sequences to public;

-- Everything the transaction captured, in order, as rows of waly.capture's columns in text: the table's
-- rows (when the buffer spilled or DDL ran; deleted as they are returned when consuming), then the buffer
-- as one row of kind 'lines', then one row of kind 'sequence' per position (new_row holds
-- {last_value, is_called}). The commit protocol reads the buffer and the positions directly when nothing
-- spilled, and this when something did.
create or replace function waly.read_changes(consume boolean)
returns table (seq bigint, kind text, schema_name text, table_name text, pk text, old_row text,
               new_row text, ddl_tag text, ddl_object text, ddl_query text)
language plpgsql volatile as $$
#variable_conflict use_column
declare
  buf text;
  tables text;
  last bigint := 0;
begin
  -- A transaction without an id wrote nothing (and may be read-only, where a delete would fail).
  if pg_catalog.pg_current_xact_id_if_assigned() is null then
    return;
  end if;
  if pg_catalog.current_setting('waly.capture_spilled', true) = 'on' then
    select coalesce(max(c.seq), 0) into last from waly.capture c where c.txid = pg_catalog.pg_current_xact_id();
    if consume then
      return query
        with taken as (
          delete from waly.capture c where c.txid = pg_catalog.pg_current_xact_id() returning c.*
        )
        select t.seq, t.kind, t.schema_name, t.table_name, t.pk::text, t.old_row::text, t.new_row::text,
               t.ddl_tag, t.ddl_object, t.ddl_query
        from taken t order by t.seq;
    else
      return query
        select t.seq, t.kind, t.schema_name, t.table_name, t.pk::text, t.old_row::text, t.new_row::text,
               t.ddl_tag, t.ddl_object, t.ddl_query
        from waly.capture t where t.txid = pg_catalog.pg_current_xact_id() order by t.seq;
    end if;
  end if;
  buf := pg_catalog.current_setting('waly.capture', true);
  if buf <> '' then
    last := last + 1;
    return query select last, 'lines'::text, null::text, null::text, null::text, null::text, null::text,
                        null::text, null::text, buf;
  end if;
  tables := pg_catalog.current_setting('waly.capture_tables', true);
  if consume then
    -- Taken: a second read in this transaction starts from here.
    buf := pg_catalog.set_config('waly.capture', '', true);
    buf := pg_catalog.set_config('waly.capture_spilled', '', true);
    buf := pg_catalog.set_config('waly.capture_tables', '', true);
  end if;
  if tables <> '' then
    return query
      select last + p.n, 'sequence'::text, p.e ->> 'schema', p.e ->> 'name', null::text, null::text,
             pg_catalog.json_build_object('last_value', (p.e -> 'last_value'), 'is_called', (p.e -> 'is_called'))::text,
             null::text, null::text, null::text
      from pg_catalog.json_array_elements(waly.sequence_positions(tables)::json) with ordinality as p(e, n);
  end if;
end
$$;

comment on function waly.read_changes(boolean) is
  'The calling transaction''s changes: table rows, then the buffer (kind lines), then sequence positions.';

-- Raises SQLSTATE WA001 unless the transaction can be prepared in the commit protocol's first round trip:
-- its capture is all in the buffer (nothing to read from the table first), it captured something (a
-- transaction that did not is committed plainly), and the session never used temporary objects (PREPARE
-- would refuse). The protocol runs it under a savepoint and, when it raises, rolls back to it and takes
-- the long way.
create or replace function waly.assert_preparable() returns void
language plpgsql as $$
begin
  if coalesce(pg_catalog.current_setting('waly.capture', true), '') = ''
     or pg_catalog.current_setting('waly.capture_spilled', true) = 'on'
     or pg_catalog.pg_my_temp_schema() <> 0 then
    raise exception 'waly: this transaction is not prepared in the first round trip' using errcode = 'WA001';
  end if;
end
$$;

-- The lines of a buffer as capture rows, for people and tests reading the capture in SQL.
create or replace function waly.capture_lines(lines text)
returns table (n bigint, kind text, schema_name text, table_name text, pk jsonb, old_row jsonb, new_row jsonb)
language sql immutable as $$
  select l.n, j ->> 0, j ->> 1, j ->> 2,
         case when jsonb_typeof(j -> 3) = 'array' then
           (select jsonb_object_agg(k, coalesce(nullif(j -> 5, 'null'), j -> 4) -> k)
            from jsonb_array_elements_text(j -> 3) as k)
         end,
         nullif(j -> 4, 'null'), nullif(j -> 5, 'null')
  from regexp_split_to_table(rtrim(lines, E'\n'), E'\n') with ordinality as l(line, n)
  cross join lateral (select l.line::jsonb as j) as parsed
$$;

-- read_changes() with the buffer's lines expanded into rows of waly.capture's shape, for people and tests:
-- take_capture() consumes them as the commit protocol does (the shape it always had), peek_capture() only
-- looks. The commit protocol reads read_changes(true), which leaves parsing the lines to waly.
create or replace function waly.expand_changes(consume boolean) returns setof waly.capture
language sql volatile as $$
  select pg_catalog.pg_current_xact_id(),
         pg_catalog.row_number() over (order by c.seq, e.n),
         coalesce(e.kind, c.kind), coalesce(e.schema_name, c.schema_name), coalesce(e.table_name, c.table_name),
         coalesce(e.pk, c.pk::jsonb), coalesce(e.old_row, c.old_row::jsonb), coalesce(e.new_row, c.new_row::jsonb),
         c.ddl_tag, c.ddl_object, case when c.kind = 'lines' then null else c.ddl_query end
  from waly.read_changes(consume) as c
  left join lateral waly.capture_lines(case when c.kind = 'lines' then c.ddl_query end) as e on true
  order by c.seq, e.n
$$;

create or replace function waly.take_capture() returns setof waly.capture
language sql volatile as $$ select * from waly.expand_changes(true) $$;

create or replace function waly.peek_capture() returns setof waly.capture
language sql volatile as $$ select * from waly.expand_changes(false) $$;

select waly.ensure_capture_all();

alter event trigger waly_capture_ddl enable;
alter event trigger waly_capture_drop enable;
