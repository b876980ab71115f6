-- waly 0003: DDL capture, and capture triggers for tables created or changed after installation.
--
-- REQUIRES A SUPERUSER: Postgres lets only superusers create event triggers. `waly migrate` checks this
-- before applying anything and stops with SQLSTATE 42501 and a hint when the role is not one.
--
-- At the end of every DDL command (ddl_command_end) waly records one row of kind 'ddl' in waly.capture, in
-- seq order with the row changes of the same transaction: the command tag, the identity of the object it
-- created, altered or dropped, and current_query(). current_query() is the whole text the client sent: for
-- a multi-statement query string it holds every statement, and for DDL run by a function or DO block it is
-- the statement that called it, not the DDL itself. The same event gives new tables their capture triggers
-- and re-creates them when a table's primary key changes. sql_drop hands the dropped objects' identities
-- to ddl_command_end (DROP commands have none of their own there) and refuses to drop a capture trigger.
--
-- Later migrations change waly's objects with these triggers active: objects in the schema waly are
-- skipped, but a command whose target has no schema (GRANT, COMMENT ON SCHEMA waly) would be recorded, so
-- such migrations disable the two event triggers first and enable them at their end (same transaction:
-- no other session ever sees them disabled).

-- Objects that are not the application's DDL: waly's own, those an extension script creates (the
-- CREATE EXTENSION itself is recorded), temporary ones, and the capture triggers waly creates here, which
-- would otherwise make this trigger fire for its own work.
create function waly.is_application_command(cmd_schema text, in_extension boolean, object_type text,
                                            object_identity text, objid oid) returns boolean
language sql stable as $$
  select not in_extension
    and cmd_schema is distinct from 'waly'
    and coalesce(cmd_schema not like 'pg\_temp%', true)
    and not (object_type = 'schema' and object_identity = 'waly')
    and not (object_type = 'trigger'
             and exists (select from pg_catalog.pg_trigger t
                         where t.oid = objid and t.tgname in ('0_waly_capture', '0_waly_capture_truncate')))
$$;

create function waly.capture_ddl() returns event_trigger
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

create function waly.capture_drop() returns event_trigger
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

-- Created last, so none of the commands above fire them.
create event trigger waly_capture_ddl on ddl_command_end execute function waly.capture_ddl();
create event trigger waly_capture_drop on sql_drop execute function waly.capture_drop();
