-- waly migration 0008: transactions that cannot be prepared commit directly.
--
-- With the two-phase commit protocol, waly.assert_preparable() sends a transaction the long way when
-- PREPARE TRANSACTION would fail. A failed PREPARE rolls the transaction back, so the check now also
-- covers Postgres with prepared transactions disabled (max_prepared_transactions = 0), not only
-- sessions that used temporary objects; waly commits both directly, with an outcome record where the
-- commit fails (docs/record.md).

create or replace function waly.assert_preparable() returns void
language plpgsql as $$
begin
  if coalesce(pg_catalog.current_setting('waly.capture', true), '') = ''
     or pg_catalog.current_setting('waly.capture_spilled', true) = 'on'
     or pg_catalog.pg_my_temp_schema() <> 0
     or pg_catalog.current_setting('max_prepared_transactions') = '0' then
    raise exception 'waly: this transaction is not prepared in the first round trip' using errcode = 'WA001';
  end if;
end
$$;
