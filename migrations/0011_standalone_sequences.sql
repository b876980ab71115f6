-- waly migration 0011: the positions of sequences no table owns.
--
-- Records carry the positions of the sequences owned by the tables a transaction inserted into (0004,
-- 0005). Two kinds of sequence were left out:
--
-- - a sequence used on its own (an ORM's id generator: select nextval('hibernate_sequence'); a dump's
--   setval() calls). The commit protocol now passes the names it finds in the transaction's statements
--   (string literals in nextval/setval calls) to waly.named_sequence_positions(), in the query that reads
--   the capture, and records where those sequences stand;
-- - a sequence a column default draws from (DEFAULT nextval('s') on a sequence created on its own).
--   waly.owned_sequences now lists it with the table, so an insert into the table records it as it
--   records an owned one.

alter event trigger waly_capture_ddl disable;
alter event trigger waly_capture_drop disable;

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

-- As in migration 0006, with the sequences the table's column defaults draw from.
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
    select array_agg(distinct used.seq order by used.seq) as sequences
    from (select t.oid union select a.relid from pg_partition_ancestors(t.oid) as a) as owner(rel)
    cross join lateral (
      -- owned: serial, identity, OWNED BY
      select d.objid from pg_depend d
      where d.refclassid = 'pg_class'::regclass and d.refobjid = owner.rel
        and d.classid = 'pg_class'::regclass and d.deptype in ('a', 'i')
      union all
      -- drawn from by a column default
      select d.refobjid from pg_attrdef ad
      join pg_depend d on d.classid = 'pg_attrdef'::regclass and d.objid = ad.oid
                      and d.refclassid = 'pg_class'::regclass
      where ad.adrelid = owner.rel
    ) as used(seq)
    join pg_class c on c.oid = used.seq and c.relkind = 'S'
  ) as s
  where s.sequences is not null and waly.is_application_table(t.oid);
  perform waly.ensure_capture(t.oid) from unnest(tables) as t(oid) where waly.is_application_table(t.oid);
end
$$;

-- Tables that exist now (a partitioned table's call covers its partitions).
select waly.refresh_owned_sequences(c.oid)
from pg_class c
where waly.is_application_table(c.oid) and not c.relispartition;

alter event trigger waly_capture_ddl enable;
alter event trigger waly_capture_drop enable;
