-- waly migration 0011: the positions of sequences a transaction names in nextval() or setval().
--
-- Records carry the positions of the sequences owned by the tables a transaction inserted into (0004,
-- 0005). A sequence used on its own (an ORM's id generator: select nextval('hibernate_sequence'); a
-- dump's setval() calls) was left out. The commit protocol now passes the names it finds in the
-- transaction's statements (string literals in nextval/setval calls) to this function, in the query that
-- reads the capture, and records where those sequences stand.

-- Where the sequences `names` (as written in the calls, resolved with the session's search_path) stand:
-- a JSON array of {schema, name, last_value, is_called}, as waly.sequence_positions() gives it, or null
-- when none of the names is a sequence (any more).
create or replace function waly.named_sequence_positions(names text[]) returns text
language plpgsql volatile as $$
declare
  n text;
  seqs oid[] := '{}';
  rel oid;
begin
  foreach n in array names loop
    begin
      rel := pg_catalog.to_regclass(n);
    exception when others then
      rel := null;  -- not a name at all (a call that never ran): nothing to record
    end;
    if rel is not null and not rel = any (seqs) then
      seqs := seqs || rel;
    end if;
  end loop;
  return (
    select pg_catalog.json_agg(pg_catalog.json_build_object(
             'schema', q.nspname, 'name', q.relname,
             'last_value', (p.state ->> 'last_value')::int8, 'is_called', (p.state ->> 'is_called')::bool)
           order by q.nspname, q.relname)::text
    from pg_catalog.unnest(seqs) as s(oid)
    cross join lateral (select ns.nspname, c.relname
                        from pg_catalog.pg_class c join pg_catalog.pg_namespace ns on ns.oid = c.relnamespace
                        where c.oid = s.oid and c.relkind = 'S' offset 0) as q
    cross join lateral (select waly.sequence_state(s.oid) as state offset 0) as p);
end
$$;
