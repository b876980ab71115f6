-- waly migration 0010: DDL that gives the rows already in a table values of its own is recorded with them.
--
-- Replay runs DDL again, and a default evaluated again is not the live one: ADD COLUMN ... DEFAULT now()
-- (one value for all rows, the transaction's time), DEFAULT gen_random_uuid() or random() or a serial
-- (one per row), ALTER COLUMN ... TYPE (a conversion that can depend on TimeZone or a USING expression).
-- Two kinds of capture rows now follow such a command's 'ddl' row:
--
--   'rewrite'  The command rewrote the table's rows (the table_rewrite event, for a column's default or
--              type; not for SET LOGGED/UNLOGGED or SET ACCESS METHOD, which keep every value). new_row
--              holds {"rows": n}, and the table's n rows as they are after it follow as inserts; replay
--              empties the table first.
--   'fill'     The command added a column whose default Postgres evaluated once and keeps for the rows
--              already there (a "fast default", pg_attribute.atthasmissing), and the default is not a
--              constant. ddl_object names the column and new_row holds one such row's image; replay sets
--              the column on every row of the table to that row's value.
--
-- A 'rewrite' costs the whole table in the record (as CREATE TABLE AS does); a 'fill' one row.

alter event trigger waly_capture_ddl disable;
alter event trigger waly_capture_drop disable;

-- table_rewrite: notes the application tables the command rewrites for a column's default (reason 2) or
-- type (reason 4), for waly.capture_ddl_values() at ddl_command_end.
create or replace function waly.note_rewrite() returns event_trigger
language plpgsql as $$
declare
  rel oid := pg_catalog.pg_event_trigger_table_rewrite_oid();
begin
  if pg_catalog.pg_event_trigger_table_rewrite_reason() & 6 <> 0 and waly.is_application_table(rel) then
    perform pg_catalog.set_config('waly.rewritten',
      coalesce(pg_catalog.current_setting('waly.rewritten', true), '') || rel::text || ',', true);
  end if;
end
$$;

-- ddl_command_start of ALTER TABLE: the columns that already have a fast default, so that those the
-- command gives one are told apart at its end.
create or replace function waly.note_missing_values() returns event_trigger
language plpgsql as $$
begin
  perform pg_catalog.set_config('waly.missing_before', coalesce((
    select pg_catalog.string_agg(a.attrelid::text || '.' || a.attnum::text, ',')
    from pg_catalog.pg_attribute a where a.atthasmissing), '-'), true);
end
$$;

-- At ddl_command_end, after the 'ddl' row: the 'rewrite' and 'fill' rows (with their inserts) of the
-- tables the command gave values of its own.
create or replace function waly.capture_ddl_values() returns void
language plpgsql as $$
declare
  rewritten text := nullif(pg_catalog.current_setting('waly.rewritten', true), '');
  before text := nullif(pg_catalog.current_setting('waly.missing_before', true), '');
  rel oid;
  relation regclass;
  schema_name text;
  table_name text;
  filled record;
  image text;
  n bigint;
begin
  if rewritten is not null then
    perform pg_catalog.set_config('waly.rewritten', '', true);
    for rel in select distinct r::oid from pg_catalog.unnest(pg_catalog.string_to_array(rewritten, ',')) r
               where r <> '' loop
      select n.nspname, c.relname, c.oid::regclass into schema_name, table_name, relation
      from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      where c.oid = rel and c.relkind = 'r';
      continue when not found;
      execute pg_catalog.format('select pg_catalog.count(*) from only %s', relation) into n;
      insert into waly.capture (kind, schema_name, table_name, new_row)
      values ('rewrite', schema_name, table_name, pg_catalog.jsonb_build_object('rows', n));
      perform waly.note_sequence_table(rel);
      execute pg_catalog.format(
        'insert into waly.capture (kind, schema_name, table_name, pk, new_row) '
        'select ''insert'', %L, %L, '
        '(select pg_catalog.jsonb_object_agg(k, i.image -> k) from pg_catalog.unnest(%L::text[]) k), i.image '
        'from (select waly.row_image(t, %L)::pg_catalog.jsonb as image from only %s t) i',
        schema_name, table_name, waly.primary_key_columns(rel), waly.text_image_columns(rel), relation);
    end loop;
  end if;

  if before is not null then
    perform pg_catalog.set_config('waly.missing_before', '', true);
    for filled in
      select a.attrelid, a.attname, n.nspname, c.relname
      from pg_catalog.pg_attribute a
      join pg_catalog.pg_class c on c.oid = a.attrelid and c.relkind = 'r'
      join pg_catalog.pg_namespace n on n.oid = c.relnamespace
      join pg_catalog.pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
      where a.atthasmissing and not a.attisdropped
        and not (a.attrelid::text || '.' || a.attnum::text) = any (pg_catalog.string_to_array(before, ','))
        and d.adbin::text not like '{CONST %'
        and waly.is_application_table(a.attrelid)
    loop
      execute pg_catalog.format('select waly.row_image(t, %L) from only %s t limit 1',
                                waly.text_image_columns(filled.attrelid), filled.attrelid::regclass)
        into image;
      continue when image is null;
      insert into waly.capture (kind, schema_name, table_name, ddl_object, new_row)
      values ('fill', filled.nspname, filled.relname, filled.attname, image::pg_catalog.jsonb);
    end loop;
  end if;
end
$$;

-- As in migration 0009, with waly.capture_ddl_values() after the command's own row.
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
    perform pg_catalog.set_config('waly.rewritten', '', true);
    perform pg_catalog.set_config('waly.missing_before', '', true);
    return;
  end if;

  perform waly.spill_capture();
  insert into waly.capture (kind, ddl_tag, ddl_object, ddl_query)
  values ('ddl', tg_tag, coalesce(object, dropped), pg_catalog.current_query());
  -- Before the DDL of waly's own below (a capture trigger re-created), whose event would clear the notes.
  perform waly.capture_ddl_values();

  foreach rel in array relations loop
    perform waly.ensure_capture(rel);
    perform waly.refresh_owned_sequences(rel);
    -- CREATE TABLE AS and SELECT INTO fill the table before it has a trigger: record its rows as inserts,
    -- after the DDL row. Replay runs the DDL, empties the table, then applies these.
    if tg_tag in ('CREATE TABLE AS', 'SELECT INTO') and waly.is_application_table(rel) then
      perform waly.note_sequence_table(rel);
      execute pg_catalog.format(
        'insert into waly.capture (kind, schema_name, table_name, new_row) '
        'select ''insert'', n.nspname, c.relname, waly.row_image(t, %L)::pg_catalog.jsonb from %s t, pg_catalog.pg_class c '
        'join pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.oid = %s',
        waly.text_image_columns(rel), rel::pg_catalog.regclass, rel);
    end if;
  end loop;
end
$$;

create event trigger waly_note_rewrite on table_rewrite execute function waly.note_rewrite();
create event trigger waly_note_missing_values on ddl_command_start when tag in ('ALTER TABLE')
  execute function waly.note_missing_values();

alter event trigger waly_capture_ddl enable;
alter event trigger waly_capture_drop enable;
