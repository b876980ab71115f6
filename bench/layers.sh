#!/usr/bin/env bash
# Where a write transaction's time goes through waly, layer by layer.
#
# Runs one tpcb-like transaction (pgbench's: BEGIN, three UPDATEs, a SELECT, an INSERT, END; simple
# protocol, CLIENTS clients, scale SCALE) in seven ways, interleaved, on one private Postgres 15 (fsync
# and synchronous_commit on), and reports TPS and CPU per transaction for each:
#
#   direct          Postgres, no waly schema                          (database bench_direct)
#   pgbouncer       the same through PgBouncer (session mode): what a proxy hop costs
#   triggers        straight to Postgres, on a database with waly's schema: the capture triggers
#                   fill the buffer, the plain COMMIT throws it away    (database bench_layers)
#   + capture read  ... and, before COMMIT, the query waly's commit reads the capture with: every
#                   statement waly sends to Postgres with direct commit (the default), without waly
#   + 2PC           ... with the check and PREPARE TRANSACTION in that query, then COMMIT PREPARED:
#                   every statement waly sends with commit_protocol: two-phase, without waly
#   waly            the plain transaction through waly (direct commit): the capture read, plus the
#                   proxy and the log
#   waly 2PC        the same through a second waly with commit_protocol: two-phase (its own port and
#                   data directory)
#
# bench_layers is initialised through waly (so it has waly's schema and triggers); the runs that go
# straight to Postgres write to it behind waly's back, which is fine for a benchmark whose log is not
# replayed. The capture query below is a copy of the one in src/commit/capture.rs: keep them in step.
#
# Usage: bench/layers.sh   (as root). Knobs: DURATION (s per run, default 15), RUNS (rounds, default 2),
# SCALE (10), CLIENTS (8), JOBS (2), WALY_BIN, KEEP_TMP, PG_BIN, PGBOUNCER_BIN (as in bench/write.sh).
set -euo pipefail

DURATION=${DURATION:-15}
RUNS=${RUNS:-2}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}

# not run.sh's or write.sh's ports
PG_PORT=55452
PGB_PORT=55453
WALY_PORT=55454
PG_USER=postgres
# shellcheck disable=SC2034  # PG_PASSWORD and DB are read by bench/lib.sh
PG_PASSWORD=postgres
# shellcheck disable=SC2034
DB=postgres

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
cd "$REPO_DIR"
RESULT_FILE="$BENCH_DIR/results/layers-latest.md"

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

for v in SCALE CLIENTS JOBS; do
    case "${!v}" in ''|*[!0-9]*|0) die "$v must be a positive integer (got '${!v}')" ;; esac
done
bench_preflight
bench_setup
bench_start_postgres
bench_check_durable_settings
bench_start_pgbouncer
bench_find_waly
[ -n "$WALY_EXE" ] || die "${WALY_NOTE#waly skipped: }"
bench_check_waly_fresh

# ---------------------------------------------------------------- the scripts
TX_HEAD='\set aid random(1, 100000 * :scale)
\set bid random(1, 1 * :scale)
\set tid random(1, 10 * :scale)
\set delta random(-5000, 5000)
\set n random(1, 2000000000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);'
# src/commit/capture.rs, CAPTURE_QUERY (pgbench joins commands with \;)
CAPTURE='SET CONSTRAINTS ALL IMMEDIATE \; SELECT pg_current_xact_id_if_assigned()::text, to_char(clock_timestamp() AT TIME ZONE '"'UTC'"', '"'"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"'"'), current_setting('"'waly.capture'"', true), current_setting('"'waly.capture_spilled'"', true), CASE WHEN current_setting('"'waly.capture_tables'"', true) <> '"''"' THEN waly.sequence_positions(current_setting('"'waly.capture_tables'"', true)) END, pg_my_temp_schema() <> 0 OR current_setting('"'max_prepared_transactions'"') = '"'0'"' OR EXISTS (SELECT FROM pg_cursors WHERE is_holdable), concat(set_config('"'waly.captured'"', '"'on'"', true), CASE WHEN current_setting('"'synchronous_commit'"') = '"'off'"' THEN set_config('"'synchronous_commit'"', '"'local'"', true) END), current_user::text, CASE WHEN current_setting('"'waly.capture_spilled'"', true) = '"'on'"' THEN current_setting('"'search_path'"') END'
# src/commit/capture.rs, first_round_trip(); gids unique per client and transaction
PREPARE=' \; SAVEPOINT waly_prepare \; SELECT waly.assert_preparable() \; RELEASE SAVEPOINT waly_prepare \; PREPARE TRANSACTION '"'bench_:n-:client_id'"

printf '%s\nEND;\n' "$TX_HEAD" >"$TMP/plain.sql"
printf '%s\n%s;\nCOMMIT;\n' "$TX_HEAD" "$CAPTURE" >"$TMP/capture.sql"
printf '%s\n%s%s;\nCOMMIT PREPARED '"'bench_:n-:client_id'"';\n' "$TX_HEAD" "$CAPTURE" "$PREPARE" >"$TMP/prepare.sql"

# layer -> "port database script"
LAYERS=(direct pgbouncer triggers capture 2pc waly waly2pc)
WALY2_PORT=55455
declare -A WHERE=(
    [direct]="$PG_PORT bench_direct plain"
    [pgbouncer]="$PGB_PORT bench_direct plain"
    [triggers]="$PG_PORT bench_layers plain"
    [capture]="$PG_PORT bench_layers capture"
    [2pc]="$PG_PORT bench_layers prepare"
    [waly]="$WALY_PORT bench_layers plain"
    [waly2pc]="$WALY2_PORT bench_layers plain"
)
declare -A LABEL=(
    [direct]="direct" [pgbouncer]="PgBouncer" [triggers]="capture triggers"
    [capture]="+ capture read (direct commit's statements)" [2pc]="+ check and 2PC (two-phase's statements)"
    [waly]="waly, direct commit (capture read, proxy, log)" [waly2pc]="waly, two-phase commit (2PC, proxy, log)"
)

# ---------------------------------------------------------------- databases
psql_q "$PG_PORT" "CREATE DATABASE bench_direct" >/dev/null
psql_q "$PG_PORT" "CREATE DATABASE bench_layers" >/dev/null
bench_start_waly json "$TMP/waly.log" bench_layers
[ "$WALY_OK" -eq 1 ] || die "waly did not start: $WALY_NOTE"
WALY_DIRECT_PID=$WALY_PID
WALY_PORT=$WALY2_PORT WALY_DATA=$TMP/waly-data-2pc WALY_CONFIG_NAME=waly-2pc.yaml \
    WALY_EXTRA_YAML="commit_protocol: two-phase" bench_start_waly json "$TMP/waly-2pc.log" bench_layers
[ "$WALY_OK" -eq 1 ] || die "the two-phase waly did not start: $WALY_NOTE"
WALY2_PID=$WALY_PID
WALY_PID=$WALY_DIRECT_PID
bench_cleanup_hook() { [ -n "${WALY2_PID:-}" ] && stop_pid "$WALY2_PID" waly-2pc; }
log "pgbench -i -s $SCALE: bench_direct directly, bench_layers through waly"
pgbench -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" bench_direct >"$TMP/init-direct.log" 2>&1 \
    || { tail -n 20 "$TMP/init-direct.log" >&2; die "pgbench -i failed"; }
pgbench -i -s "$SCALE" -q -h 127.0.0.1 -p "$WALY_PORT" -U "$PG_USER" bench_layers >"$TMP/init-waly.log" 2>&1 \
    || { tail -n 20 "$TMP/init-waly.log" >&2; tail -n 20 "$TMP/waly.log" >&2; die "pgbench -i through waly failed"; }
for d in bench_direct bench_layers; do psql_q "$PG_PORT" "VACUUM ANALYZE" "$d" >/dev/null; done

# ---------------------------------------------------------------- runs
# shellcheck disable=SC2034  # read through a name reference in values()
declare -A R_TPS R_PG R_PROXY
RUN_ERRORS=()
run_layer() { # run_layer LAYER ROUND
    local layer=$1 round=$2 port db script id pid pg0 pg1 p0="" p1="" rc=0
    # shellcheck disable=SC2034  # set by bench_read_pgbench
    local tps lat ntx failed retried n p50 p99
    read -r port db script <<<"${WHERE[$layer]}"
    id="$layer-r$round"
    pid=""
    [ "$layer" = pgbouncer ] && pid=$PGB_PID
    [ "$layer" = waly ] && pid=$WALY_PID
    [ "$layer" = waly2pc ] && pid=$WALY2_PID
    psql_q "$PG_PORT" CHECKPOINT >/dev/null
    log "run $id: $script.sql -c $CLIENTS -j $JOBS -T $DURATION -> $port/$db"
    [ -n "$pid" ] && p0=$(proc_ticks "$pid")
    pg0=$(cluster_ticks)
    pgbench -n -M simple -s "$SCALE" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" -f "$TMP/$script.sql" \
        --log --log-prefix="$LOG_DIR/$id" \
        -h 127.0.0.1 -p "$port" -U "$PG_USER" "$db" >"$LOG_DIR/$id.out" 2>&1 || rc=$?
    sleep 0.2
    pg1=$(cluster_ticks)
    [ -n "$pid" ] && p1=$(proc_ticks "$pid")
    bench_read_pgbench "$id" "$rc" || return 0
    ntx=${ntx:-$n}
    [ "${failed:-0}" = 0 ] || RUN_ERRORS+=("$id: $failed failed transactions")
    R_TPS[$layer#$round]=$tps
    R_PG[$layer#$round]=$(awk -v d=$((pg1 - pg0)) -v hz="$CLK_TCK" -v n="$ntx" 'BEGIN { printf "%.0f", d / hz * 1e6 / n }')
    [ -n "$p0" ] && [ -n "$p1" ] && R_PROXY[$layer#$round]=$(awk -v d=$((p1 - p0)) -v hz="$CLK_TCK" -v n="$ntx" 'BEGIN { printf "%.0f", d / hz * 1e6 / n }')
    log "  tps=$tps Postgres CPU=${R_PG[$layer#$round]}us/tx${R_PROXY[$layer#$round]:+ proxy CPU=${R_PROXY[$layer#$round]}us/tx}"
}
for ((round = 1; round <= RUNS; round++)); do
    for layer in "${LAYERS[@]}"; do run_layer "$layer" "$round"; done
done
waly_stop
WALY_PID=$WALY2_PID waly_stop
WALY2_PID=""
[ "$(psql_q "$PG_PORT" "SELECT count(*) FROM pg_prepared_xacts" bench_layers)" = 0 ] \
    || RUN_ERRORS+=("prepared transactions were left in bench_layers")

# ---------------------------------------------------------------- report
values() { # values MAP LAYER -> the rounds' values
    local -n map=$1
    local r
    for ((r = 1; r <= RUNS; r++)); do [ -n "${map[$2#$r]:-}" ] && echo "${map[$2#$r]}"; done
}
# shellcheck disable=SC2046  # one value per word
direct_tps=$(median $(values R_TPS direct))
{
    echo "# Write transaction cost by layer (bench/layers.sh)"
    echo
    echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ); commit: $(git_rev); waly: $WALY_EXE ($WALY_PROFILE)"
    echo "- Postgres $PG_VERSION (fsync=$PG_FSYNC, synchronous_commit=$PG_SYNC); $(nproc) CPUs"
    echo "- tpcb-like, simple protocol, $CLIENTS clients, -j $JOBS, scale $SCALE, $DURATION s per run, median of $RUNS interleaved rounds"
    echo
    echo "| layer | TPS | vs direct | Postgres CPU µs/tx | proxy CPU µs/tx | TPS per round |"
    echo "|---|---:|---:|---:|---:|---|"
    for layer in "${LAYERS[@]}"; do
        # shellcheck disable=SC2046
        tps=$(median $(values R_TPS "$layer"))
        # shellcheck disable=SC2046
        pg=$(median $(values R_PG "$layer"))
        # shellcheck disable=SC2046
        px=$(median $(values R_PROXY "$layer"))
        printf '| %s | %.0f | %s | %.0f | %s | %s |\n' "${LABEL[$layer]}" "${tps:-0}" "$(ratio "${tps:-0}" "${direct_tps:-0}")" \
            "${pg:-0}" "${px:+$(printf '%.0f' "$px")}" "$(values R_TPS "$layer" | awk '{ printf "%s%.0f", (NR > 1 ? ", " : ""), $1 }')"
    done
    if [ "${#RUN_ERRORS[@]}" -gt 0 ]; then
        echo
        echo "Problems:"
        printf -- '- %s\n' "${RUN_ERRORS[@]}"
    fi
} >"$RESULT_FILE"
cat "$RESULT_FILE"
log "report written to $RESULT_FILE"
