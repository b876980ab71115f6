-- waly migration 0012: a row change made after the commit protocol read the capture is refused.
--
-- The commit protocol reads a transaction's captured changes, then commits it. One kind of write can
-- still happen in between, inside COMMIT itself: a cursor declared WITH HOLD is run again from its start
-- when its transaction commits, so that its rows outlive the transaction, and a function it calls may
-- write. Those rows would be committed and missing from the log. The capture query now sets
-- waly.captured (for the rest of the transaction), and the capture trigger refuses a row change made
-- after it: the COMMIT fails with 0A000 and the transaction rolls back, in the log and in the database.

alter event trigger waly_capture_ddl disable;
alter event trigger waly_capture_drop disable;

-- As in migration 0009, with the check first.
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
  if pg_catalog.current_setting('waly.captured', true) = 'on' then
    raise exception 'waly cannot log a row change made while the transaction commits'
      using errcode = '0A000',
            detail = pg_catalog.format('A %s on %I.%I ran after waly had read the transaction''s changes: '
                     'a cursor declared WITH HOLD runs its query again at COMMIT, and what it writes there '
                     'would be missing from the log. The transaction was rolled back.',
                     TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME),
            hint = 'Declare the cursor without WITH HOLD, or over a query that does not write.';
  end if;
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

-- As in migration 0008, and PREPARE TRANSACTION refuses a transaction that created a cursor WITH HOLD:
-- such a transaction (any holdable cursor open, to keep the check cheap) commits directly.
create or replace function waly.assert_preparable() returns void
language plpgsql as $$
begin
  if coalesce(pg_catalog.current_setting('waly.capture', true), '') = ''
     or pg_catalog.current_setting('waly.capture_spilled', true) = 'on'
     or pg_catalog.pg_my_temp_schema() <> 0
     or pg_catalog.current_setting('max_prepared_transactions') = '0'
     or exists (select from pg_catalog.pg_cursors where is_holdable) then
    raise exception 'waly: this transaction is not prepared in the first round trip' using errcode = 'WA001';
  end if;
end
$$;

alter event trigger waly_capture_ddl enable;
alter event trigger waly_capture_drop enable;
