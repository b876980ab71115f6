-- waly 0004: sequence positions in the capture, so that replay leaves every serial and identity sequence
-- where the live one is (the `SELECT pg_catalog.setval(...)` lines of pg_dump included).
--
-- REQUIRES A SUPERUSER: waly.take_capture() becomes SECURITY DEFINER so that it can read the position of
-- every application sequence, also those the writing role may not read (rows inserted by a SECURITY
-- DEFINER trigger, explicit keys written without USAGE on the sequence).
--
-- waly.take_capture() keeps its signature and columns. After the transaction's own rows it now returns
-- one row per sequence OWNED BY a table the transaction inserted into or truncated (pg_depend deptype 'a'
-- for serial and OWNED BY, 'i' for identity; for a partition, the sequences of its ancestors too):
--
--   kind = 'sequence', schema_name, table_name = the sequence's schema and name,
--   new_row = {"last_value": <int8>, "is_called": <bool>}, seq greater than every change's seq.
--
-- The position is read when the commit protocol takes the capture, before COMMIT: it counts the values
-- the transaction took, values taken by transactions that rolled back before it, and values concurrent
-- transactions took until then. Sequences are not transactional, so a position can be neither earlier nor
-- later than that read. What no record can hold: values taken after the last logged transaction that
-- used the sequence (a rolled-back insert after the last committed one), and sequences no table owns.
--
-- Cost: a few index look-ups in the catalogs per table inserted into or truncated, and
-- pg_sequence_last_value() per owned sequence; nothing for a transaction without inserts or truncates.
--
-- Exposure: the rows come from the caller's own capture rows, which only its own transaction can write;
-- a role that writes capture rows by hand can learn the position of a sequence owned by a table it names,
-- nothing more.

-- The positions of the sequences owned by `tables` (qualified, quoted names) or by their partitioned
-- ancestors, as capture rows numbered after `after`. Runs with the rights of take_capture(): its owner's.
-- Each catalog look-up is a LATERAL subquery kept apart by OFFSET 0, so it is an index look-up by the oid
-- at hand: left to itself, the planner may start from a scan of every sequence in pg_class.
create function waly.sequence_positions(tables text[], after bigint) returns setof waly.capture
language plpgsql volatile set plan_cache_mode = force_generic_plan as $$
declare
  owners oid[] := '{}';
  name text;
  rel oid;
  root oid;
  s record;
  r waly.capture;
  v bigint;
  called boolean;
begin
  foreach name in array tables loop
    rel := pg_catalog.to_regclass(name);
    continue when rel is null;  -- dropped later in the transaction
    owners := owners || rel;
    -- A partition's rows take their serial and identity values from its ancestors' sequences.
    root := pg_catalog.pg_partition_root(rel);
    if root is not null and root <> rel then
      owners := owners || array(select a.relid from pg_catalog.pg_partition_ancestors(rel) as a);
    end if;
  end loop;
  r.txid := pg_catalog.pg_current_xact_id();
  r.seq := coalesce(after, 0);
  r.kind := 'sequence';
  for s in
    select distinct q.oid, q.nspname, q.relname
    from pg_catalog.unnest(owners) as o(rel)
    cross join lateral (select d.objid from pg_catalog.pg_depend d
                        where d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass and d.refobjid = o.rel
                          and d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass and d.deptype in ('a', 'i')
                        offset 0) as d
    cross join lateral (select c.oid, n.nspname::text, c.relname::text
                        from pg_catalog.pg_class c join pg_catalog.pg_namespace n on n.oid = c.relnamespace
                        where c.oid = d.objid and c.relkind = 'S'
                        offset 0) as q
    order by 2, 3
  loop
    -- Null when is_called is false: the sequence itself says where it stands then (a sequence not used
    -- since it was created, restarted or set with is_called false), through a statement built for it.
    v := pg_catalog.pg_sequence_last_value(s.oid);
    called := v is not null;
    if not called then
      execute pg_catalog.format('select last_value, is_called from %s', s.oid::pg_catalog.regclass)
        into v, called;
    end if;
    r.seq := r.seq + 1;
    r.schema_name := s.nspname;
    r.table_name := s.relname;
    r.new_row := pg_catalog.jsonb_build_object('last_value', v, 'is_called', called);
    return next r;
  end loop;
end
$$;

-- PL/pgSQL rather than SQL: the statement is planned once per session, where an SQL function's body is
-- planned again at every call. The sequences are looked for only when the transaction inserted or
-- truncated: every other commit pays nothing for them.
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
    )
    select * from taken
    union all
    select p.*
    from (select array_agg(format('%I.%I', w.schema_name, w.table_name)) as tables
          from (select distinct schema_name, table_name from taken where kind in ('insert', 'truncate')) as w
         ) as written
    cross join lateral waly.sequence_positions(written.tables, (select max(seq) from taken)) as p
    where written.tables is not null
    order by seq;
end
$$;

comment on function waly.take_capture() is
  'Deletes and returns the calling transaction''s capture rows, ordered by seq, followed by the positions of the sequences owned by the tables it inserted into or truncated.';
