-- waly migration 0007: the capture trigger builds and appends its line in one expression.
--
-- PL/pgSQL prepares each expression of a function once per transaction, and a trigger function is
-- compiled once per table it is attached to: a transaction that changes rows of four tables paid for
-- the trigger's seven expressions four times over, before any row was captured. The trigger now
-- builds the line and appends it to the buffer in its declaration, leaving two checks (sequence
-- tables, spill) and the return. Same lines, same order, same spill and same sequence notes as
-- migration 0006.
--
-- waly.exact_image(), the image function of migration 0002, has had no caller since 0006.

alter event trigger waly_capture_ddl disable;
alter event trigger waly_capture_drop disable;

create or replace function waly.capture_row() returns trigger
language plpgsql as $$
declare
  -- [kind, schema, table, key columns, old image, new image]; the images by row_to_json when the
  -- session's settings print values exactly, else through waly.exact_json().
  buf text := pg_catalog.set_config('waly.capture', pg_catalog.concat(
    pg_catalog.current_setting('waly.capture', true),
    '["', pg_catalog.lower(TG_OP), '",', pg_catalog.to_json(TG_TABLE_SCHEMA)::text, ',',
    pg_catalog.to_json(TG_TABLE_NAME)::text, ',', coalesce(TG_ARGV[0], 'null'), ',',
    case when TG_OP = 'INSERT' then 'null'
         when pg_catalog.current_setting('extra_float_digits')::int4 >= 1
              and pg_catalog.current_setting('intervalstyle') = 'postgres'
         then pg_catalog.row_to_json(OLD)::text
         else waly.exact_json(OLD) end, ',',
    case when TG_OP = 'DELETE' then 'null'
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

drop function waly.exact_image(anyelement);

alter event trigger waly_capture_ddl enable;
alter event trigger waly_capture_drop enable;
