-- waly migration 0009: values of types that turn into JSON through a cast of their own are captured as text.
--
-- row_to_json() hands a value of a non-built-in type that has a cast to json to that cast: hstore becomes
-- a JSON object, a PostGIS geometry GeoJSON. Neither comes back: replay applies images through
-- jsonb_populate_record(), which gives such an object to the type's input function as JSON text, and
-- hstore's refuses it (GeoJSON would also lose the SRID). Columns whose type reaches such a type, through
-- domains, arrays and composite types, are now captured as their text form, a JSON string, which the
-- type's input function reads back exactly.
--
-- waly.text_image_columns(rel) lists them (a JSON array of names, or 'none'). Tables that have some get
-- it as the capture trigger's third argument, and their images are built by waly.row_image(); every
-- other table keeps its two-argument trigger and the fast path of migration 0007. CREATE TABLE AS rows
-- go through waly.row_image() too. A cast to json created later, for a type already in use, is seen by
-- the next DDL on the table (or waly.ensure_capture_all()).

alter event trigger waly_capture_ddl disable;
alter event trigger waly_capture_drop disable;

-- Whether row_to_json() would turn a value of type `t` into JSON through a cast (json_categorize_type():
-- domains by their base type, arrays by their element type, composite types by their attributes).
create or replace function waly.converts_by_cast(t oid) returns boolean
language sql stable as $$
  with recursive reach(t) as (
    select t
    union
    select n.t
    from reach r
    join pg_catalog.pg_type ty on ty.oid = r.t
    cross join lateral (
      select ty.typbasetype where ty.typtype = 'd'
      union all
      select ty.typelem where ty.typcategory = 'A' and ty.typelem <> 0
      union all
      select a.atttypid from pg_catalog.pg_attribute a
      where ty.typtype = 'c' and a.attrelid = ty.typrelid and a.attnum > 0 and not a.attisdropped
    ) as n(t)
  )
  select exists (
    select from reach r
    join pg_catalog.pg_cast c on c.castsource = r.t
    where r.t >= 16384 -- FirstNormalObjectId: built-in types are never converted by a cast
      and c.casttarget = 'pg_catalog.json'::pg_catalog.regtype and c.castmethod = 'f')
$$;

-- The columns of `rel` captured as text: a JSON array of their names in column order, or 'none'.
create or replace function waly.text_image_columns(rel oid) returns text
language sql stable as $$
  select coalesce(pg_catalog.json_agg(a.attname order by a.attnum)::text, 'none')
  from pg_catalog.pg_attribute a
  where a.attrelid = rel and a.attnum > 0 and not a.attisdropped and waly.converts_by_cast(a.atttypid)
$$;

-- The trigger's arguments: the primary-key columns, whether the table owns sequences (migration 0006),
-- and its text-image columns.
create or replace function waly.capture_arguments(rel oid) returns text[]
language sql stable as $$
  select array[
    coalesce(pg_catalog.array_to_json(waly.primary_key_columns(rel))::text, 'null'),
    case when exists (select from waly.owned_sequences o where o.table_oid = rel) then 'sequences' else 'none' end,
    waly.text_image_columns(rel)]
$$;

-- The image of a row as row_to_json() prints it with exact settings (waly.exact_json()), except that the
-- columns named in `text_columns` (a JSON array, or 'none') hold their text form as a JSON string.
create or replace function waly.row_image(r anyelement, text_columns text) returns text
language plpgsql stable
set extra_float_digits = 3 set intervalstyle = 'postgres' set bytea_output = 'hex'
as $$
declare
  columns text[];
  image text := '';
  e record;
  v text;
begin
  if text_columns is null or text_columns = 'none' then
    return pg_catalog.row_to_json(r)::text;
  end if;
  columns := array(select pg_catalog.json_array_elements_text(text_columns::pg_catalog.json));
  for e in select j.key, j.value from pg_catalog.json_each(pg_catalog.row_to_json(r)) as j loop
    if e.key = any (columns) then
      execute pg_catalog.format('select pg_catalog.to_json(($1).%I::pg_catalog.text)::pg_catalog.text', e.key)
        into v using r;
    else
      v := e.value::text;
    end if;
    image := pg_catalog.concat(image, case when image = '' then '{' else ',' end,
                               pg_catalog.to_json(e.key)::text, ':', coalesce(v, 'null'));
  end loop;
  return case when image = '' then '{}' else image || '}' end;
end
$$;

create or replace function waly.capture_row() returns trigger
language plpgsql as $$
declare
  -- [kind, schema, table, key columns, old image, new image]; the images by row_to_json when the
  -- session's settings print values exactly, else through waly.exact_json(); tables with text-image
  -- columns (a third argument) through waly.row_image().
  buf text := pg_catalog.set_config('waly.capture', pg_catalog.concat(
    pg_catalog.current_setting('waly.capture', true),
    '["', pg_catalog.lower(TG_OP), '",', pg_catalog.to_json(TG_TABLE_SCHEMA)::text, ',',
    pg_catalog.to_json(TG_TABLE_NAME)::text, ',', coalesce(TG_ARGV[0], 'null'), ',',
    case when TG_OP = 'INSERT' then 'null'
         when TG_NARGS > 2 then waly.row_image(OLD, TG_ARGV[2])
         when pg_catalog.current_setting('extra_float_digits')::int4 >= 1
              and pg_catalog.current_setting('intervalstyle') = 'postgres'
         then pg_catalog.row_to_json(OLD)::text
         else waly.exact_json(OLD) end, ',',
    case when TG_OP = 'DELETE' then 'null'
         when TG_NARGS > 2 then waly.row_image(NEW, TG_ARGV[2])
         when pg_catalog.current_setting('extra_float_digits')::int4 >= 1
              and pg_catalog.current_setting('intervalstyle') = 'postgres'
         then pg_catalog.row_to_json(NEW)::text
         else waly.exact_json(NEW) end,
    E']\n'), true);
  tables text;
begin
  if TG_ARGV[1] is distinct from 'none' and TG_OP = 'INSERT' then
    -- waly.note_sequence_table(TG_RELID), inline: this runs for every inserted row.
    tables := pg_catalog.current_setting('waly.capture_tables', true);
    if tables is null or tables = '' then
      tables := pg_catalog.set_config('waly.capture_tables', E'\n' || TG_RELID::text || E'\n', true);
    elsif pg_catalog.strpos(tables, E'\n' || TG_RELID::text || E'\n') = 0 then
      tables := pg_catalog.set_config('waly.capture_tables', tables || TG_RELID::text || E'\n', true);
    end if;
  end if;
  if pg_catalog.octet_length(buf) > 8192 then
    -- waly.spill_capture(), inline.
    insert into waly.capture (kind, ddl_query) values ('lines', buf);
    buf := pg_catalog.set_config('waly.capture', '', true);
    buf := pg_catalog.set_config('waly.capture_spilled', 'on', true);
  end if;
  return null;
end
$$;

-- As in migration 0006, with the third argument.
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
    -- pg_trigger.tgargs holds each argument NUL-terminated. The third (text-image columns) is
    -- given only to tables that have some, so the others' triggers stay as they were.
    args := convert_to(arguments[1], getdatabaseencoding()) || '\x00'::bytea
            || convert_to(arguments[2], getdatabaseencoding()) || '\x00'::bytea;
    if arguments[3] <> 'none' then
      args := args || convert_to(arguments[3], getdatabaseencoding()) || '\x00'::bytea;
    end if;
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
        case when arguments[3] <> 'none' then format('%L, %L, %L', arguments[1], arguments[2], arguments[3])
             else format('%L, %L', arguments[1], arguments[2]) end);
    end if;
  end if;
end
$$;


-- As in migration 0006, with CREATE TABLE AS rows through waly.row_image().
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
        'select ''insert'', n.nspname, c.relname, waly.row_image(t, %L)::pg_catalog.jsonb from %s t, pg_catalog.pg_class c '
        'join pg_catalog.pg_namespace n on n.oid = c.relnamespace where c.oid = %s',
        waly.text_image_columns(rel), rel::pg_catalog.regclass, rel);
    end if;
  end loop;
end
$$;

select waly.ensure_capture_all();

alter event trigger waly_capture_ddl enable;
alter event trigger waly_capture_drop enable;
