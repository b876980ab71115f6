#!/usr/bin/env bash
# waly write benchmark with the example operations catalog on.
#
# Two parts:
#
# 1. Matching cost (bench/match_cost.rs, `cargo run --release --example
#    match_cost`): what Matcher::recognize costs a committing transaction once
#    the session's cache holds its statement texts, per transaction and per
#    write statement (target: <= 5 µs per write statement), what the first
#    sight of a text costs (parse + tree match), and the no-catalog fast path.
#    Built and run first, before anything else of this benchmark is up.
#
# 2. End to end: a private Postgres 15 cluster (fsync and synchronous_commit
#    on), PgBouncer (session mode) and waly, started in two ways: without a
#    catalog ("waly") and with `operations: config/operations.yaml`
#    ("waly-ops": strict policy on accounts and transfers, so every
#    transaction must be recognised as an operation or it is refused). The
#    workload is a pgbench custom script doing TRANSFER_FUNDS as the
#    application would, its three statements in one transaction:
#        BEGIN;
#        UPDATE accounts SET balance = balance - :amount WHERE id = :from;
#        UPDATE accounts SET balance = balance + :amount WHERE id = :to;
#        INSERT INTO transfers (from_account, to_account, amount, memo) VALUES (:from, :to, :amount, 'pgbench');
#        COMMIT;
#    between two distinct random accounts of ACCOUNTS, amount 0.01..1.00,
#    with CLIENTS clients, -M prepared and -M simple, against Postgres
#    directly, PgBouncer, waly and waly-ops, interleaved, RUNS rounds (the
#    target order rotated from round to round), medians. Two transfers in
#    opposite directions between the same accounts can deadlock; pgbench
#    retries those (--max-tries MAX_TRIES) and the report counts retries and
#    failures.
#
#    Each target has its own database (bench_direct, bench_pgbouncer,
#    bench_waly, bench_waly_ops), given the example schema
#    (migrations/example/accounts.sql) and ACCOUNTS accounts with a balance
#    of 1,000,000.00 each *directly in Postgres*, before waly first connects
#    to it: the seed is not in waly's log (no benchmark figure depends on it,
#    and a balance is not a CREATE_ACCOUNT parameter, so strict mode would
#    not let it be set through waly-ops). waly installs its schema in
#    bench_waly and bench_waly_ops at its first connection (the readiness
#    check). pgbench runs with -n (no vacuum: the script's tables are not
#    pgbench's); a CHECKPOINT is issued directly before each run.
#
#    waly is started afresh for each of its runs (log_format json, one
#    data_dir, so one log, for both variants) and stopped with SIGTERM
#    afterwards; its shutdown line "log statistics" gives that run's appends,
#    group-commit batches (one fsync each) and append latency. proxy CPU
#    µs/tx, Postgres CPU µs/tx and "other load" are measured as in
#    bench/write.sh (bench/lib.sh).
#
#    Checks after the runs: waly's log is read back (`waly log tail --json`)
#    and its records counted by database and recognised operations; every
#    record of bench_waly_ops must be exactly one TRANSFER_FUNDS (with
#    transfer_id read from the row), their number must equal the rows in
#    bench_waly_ops' transfers table, bench_waly's records must carry no
#    operation, waly-ops must have refused no transaction ("transaction
#    refused by the operations catalog" in its log), and the money in each
#    database must be what the seed put there (transfers move it, never
#    make it).
#
# Prints a Markdown report and saves it to bench/results/ops-latest.md.
#
# Usage: bench/ops.sh            (as root; Postgres and PgBouncer run as `postgres`)
#
# Environment knobs:
#   DURATION      seconds per pgbench run                 (default 15)
#   RUNS          rounds over all configurations; the report shows medians (default 2)
#   CLIENTS       pgbench clients (-c)                    (default 8)
#   JOBS          pgbench threads (-j)                    (default 2)
#   ACCOUNTS      accounts seeded in each database        (default 1000)
#   MAX_TRIES     pgbench --max-tries (deadlock retries)  (default 10)
#   OPERATIONS    the catalog waly-ops loads              (default config/operations.yaml)
#   MATCH_COST    0 to skip part 1 (the match_cost example) (default 1); the
#                 example's own knobs MATCH_ITERS, MATCH_ROUNDS, MATCH_COLD_TRIALS pass through
#   WALY_BIN      waly binary (default target/release/waly, falls back to
#                 target/debug/waly with a warning)
#   KEEP_TMP      set to keep the temp directory (cluster, waly's log, logs)
#   PG_BIN        Postgres server binaries                (default /usr/lib/postgresql/15/bin)
#   PGBOUNCER_BIN                                         (default /usr/sbin/pgbouncer)
set -euo pipefail

DURATION=${DURATION:-15}
RUNS=${RUNS:-2}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
ACCOUNTS=${ACCOUNTS:-1000}
MAX_TRIES=${MAX_TRIES:-10}
MATCH_COST=${MATCH_COST:-1}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}

# not run.sh's, write.sh's or kafka.sh's ports, so they can run side by side
PG_PORT=55462
PGB_PORT=55463
WALY_PORT=55464
PG_USER=postgres
PG_PASSWORD=postgres
DB=postgres

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
cd "$REPO_DIR"

OPERATIONS=${OPERATIONS:-config/operations.yaml}
case "$OPERATIONS" in /*) ;; *) OPERATIONS="$REPO_DIR/$OPERATIONS" ;; esac
SCHEMA_SQL="$REPO_DIR/migrations/example/accounts.sql"
SEED_BALANCE=1000000.00

RESULTS_DIR="$BENCH_DIR/results"
RESULT_FILE="$RESULTS_DIR/ops-latest.md"
PROTOS=(prepared simple)

# shared setup: Postgres, PgBouncer, waly, CPU accounting (bench/lib.sh)
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

for v in CLIENTS JOBS ACCOUNTS MAX_TRIES; do
    case "${!v}" in ''|*[!0-9]*|0) die "$v must be a positive integer (got '${!v}')" ;; esac
done
[ "$ACCOUNTS" -ge 2 ] || die "ACCOUNTS must be at least 2 (a transfer needs two accounts)"
[ -f "$OPERATIONS" ] || die "no operations catalog at $OPERATIONS"
[ -f "$SCHEMA_SQL" ] || die "no example schema at $SCHEMA_SQL"
bench_preflight jq
[ "$MATCH_COST" = 0 ] || command -v cargo >/dev/null 2>&1 || die "missing tool: cargo (or set MATCH_COST=0)"
T_START=$SECONDS

# ---------------------------------------------------------------- 0. matching cost (before anything is up)
MATCH_TABLE=""
MATCH_NOTE=""
if [ "$MATCH_COST" != 0 ]; then
    log "building the match_cost example (cargo build --release --example match_cost)"
    if ! cargo build --release --example match_cost >/tmp/waly-ops-match-build.$$.log 2>&1; then
        tail -n 30 /tmp/waly-ops-match-build.$$.log >&2
        rm -f /tmp/waly-ops-match-build.$$.log
        die "cargo build --release --example match_cost failed"
    fi
    rm -f /tmp/waly-ops-match-build.$$.log
    MATCH_EXE="$REPO_DIR/target/release/examples/match_cost"
    log "running $MATCH_EXE $OPERATIONS"
    h0=""; read -r h0 _ < <(host_ticks); m0=$(date +%s.%N)
    MATCH_TABLE=$("$MATCH_EXE" "$OPERATIONS" 2> >(sed 's/^/    match_cost| /' >&2)) || die "the match_cost example failed"
    read -r h1 _ < <(host_ticks); m1=$(date +%s.%N)
    MATCH_NOTE=$(awk -v b=$((h1 - h0)) -v hz="$(getconf CLK_TCK)" -v a="$m0" -v z="$m1" \
        'BEGIN { printf "ran %.1f s; host CPU busy meanwhile %.2f cores (the example itself uses one)", z - a, b / hz / (z - a) }')
    log "  match_cost: $MATCH_NOTE"
fi

bench_setup
WALY_LOGS="$TMP/waly-logs"
mkdir -p "$WALY_LOGS"

# ---------------------------------------------------------------- 1-2. Postgres, PgBouncer
bench_start_postgres
bench_check_durable_settings
bench_start_pgbouncer

# ---------------------------------------------------------------- 3. waly
bench_find_waly
[ -n "$WALY_EXE" ] || die "${WALY_NOTE#waly skipped: }"
bench_check_waly_fresh
WALY_VERSION=$("$WALY_EXE" --version 2>/dev/null | head -n 1 || true)

TARGETS=(direct pgbouncer waly waly-ops)
port_of() {
    case "$1" in
        direct) echo "$PG_PORT" ;;
        pgbouncer) echo "$PGB_PORT" ;;
        waly|waly-ops) echo "$WALY_PORT" ;;
    esac
}
db_of() { echo "bench_${1//-/_}"; }
is_waly() { case "$1" in waly|waly-ops) return 0 ;; *) return 1 ;; esac; }
waly_cli() { # waly_cli ARGS...: a waly subcommand with the benchmark's (last) config
    WALY_PASSWORD_POSTGRES=$PG_PASSWORD "$WALY_EXE" "$@" --config "$WALY_CONFIG"
}

WALY_PROBLEMS=()
RUN_ERRORS=()
declare -A REFUSED   # waly log name -> refusals counted in it

waly_up() { # waly_up VARIANT NAME: start waly (without or with the catalog), logging to $WALY_LOGS/NAME.log
    if [ "$1" = waly-ops ]; then
        WALY_CONFIG_NAME=waly-ops.yaml WALY_EXTRA_YAML="operations: $OPERATIONS" \
            bench_start_waly json "$WALY_LOGS/$2.log" "$(db_of "$1")"
    else
        WALY_CONFIG_NAME=waly.yaml WALY_EXTRA_YAML="" bench_start_waly json "$WALY_LOGS/$2.log" "$(db_of "$1")"
    fi
    [ "$WALY_OK" -eq 1 ]
}
waly_refusals() { # waly_refusals LOGFILE -> transactions the catalog refused
    jq -R -r 'fromjson? | select(type == "object") | (.fields // .) as $f
        | select(($f.message // .message // "") == "transaction refused by the operations catalog") | 1' "$1" 2>/dev/null | wc -l
}
waly_down() { # waly_down NAME: graceful stop; sets W_APPENDS W_BATCHES W_APB W_FAILED W_P50 W_P99 W_REFUSED
    local lf="$WALY_LOGS/$1.log" p
    waly_stop
    W_APPENDS=""; W_BATCHES=""; W_APB=""; W_FAILED=""; W_P50=""; W_P99=""
    read -r W_APPENDS W_BATCHES W_APB W_FAILED W_P50 W_P99 < <(waly_log_stats "$lf" appends batches appends_per_batch failed_appends append_p50_us append_p99_us; echo) || true
    if [ -z "$W_APPENDS" ]; then
        RUN_ERRORS+=("$1: waly wrote no \"log statistics\" line (exit status ${WALY_STOP_RC:-?})")
    elif [ "${WALY_STOP_RC:-0}" != 0 ]; then
        RUN_ERRORS+=("$1: waly exited with status $WALY_STOP_RC")
    fi
    W_REFUSED=$(waly_refusals "$lf")
    REFUSED[$1]=$W_REFUSED
    while IFS= read -r p; do
        [ -n "$p" ] && WALY_PROBLEMS+=("$1: $p")
    done < <(waly_problems "$lf" | head -n 5)
    log "  waly $1: appends=${W_APPENDS:-?} batches=${W_BATCHES:-?} appends/batch=${W_APB:-?} failed=${W_FAILED:-?} append p50/p99=${W_P50:-?}/${W_P99:-?}us refused=$W_REFUSED exit=${WALY_STOP_RC:-?}"
}

# ---------------------------------------------------------------- 4. databases: schema and seed, directly
for target in "${TARGETS[@]}"; do
    db=$(db_of "$target")
    psql_q "$PG_PORT" "CREATE DATABASE $db" >/dev/null
    psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" -d "$db" -v ON_ERROR_STOP=1 -f "$SCHEMA_SQL" >/dev/null \
        || die "applying $SCHEMA_SQL to $db failed"
    psql_q "$PG_PORT" "INSERT INTO accounts (email, name, currency, balance)
        SELECT 'customer' || i || '@example.com', 'Customer ' || i, (ARRAY['EUR', 'USD', 'GBP'])[1 + i % 3], $SEED_BALANCE
        FROM generate_series(1, $ACCOUNTS) AS i" "$db" >/dev/null
    psql_q "$PG_PORT" "VACUUM ANALYZE" "$db" >/dev/null
done
MONEY_SQL="SELECT (SELECT sum(balance) FROM accounts) || ' ' || (SELECT count(*) FROM accounts WHERE balance < 0) || ' ' || (SELECT count(*) FROM transfers)"
SEED_MONEY=$(awk -v n="$ACCOUNTS" -v b="$SEED_BALANCE" 'BEGIN { printf "%.2f", n * b }')
log "seeded $ACCOUNTS accounts x $SEED_BALANCE in each of: $(for t in "${TARGETS[@]}"; do printf '%s ' "$(db_of "$t")"; done)(directly)"

# first start of each waly variant: installs waly's schema in its database, outside the timed runs
for target in waly waly-ops; do
    waly_up "$target" "install-$target" || die "waly ($target) did not start: $WALY_NOTE"
    waly_down "install-$target"
done

# ---------------------------------------------------------------- 5. the pgbench script
SCRIPT="$TMP/transfer_funds.sql"
cat > "$SCRIPT" <<'EOF'
\set from random(1, :accounts)
\set to 1 + (:from + random(0, :accounts - 2)) % :accounts
\set amount random(1, 100) / 100.0
BEGIN;
UPDATE accounts SET balance = balance - :amount WHERE id = :from;
UPDATE accounts SET balance = balance + :amount WHERE id = :to;
INSERT INTO transfers (from_account, to_account, amount, memo) VALUES (:from, :to, :amount, 'pgbench');
COMMIT;
EOF

pid_of() {
    case "$1" in
        pgbouncer) echo "$PGB_PID" ;;
        waly|waly-ops) echo "$WALY_PID" ;;
        *) echo "" ;;
    esac
}

# Per-round values, keyed "proto/target#round"; medians keyed "proto/target".
declare -A R_TPS R_LAT R_P50 R_P99 R_CPU R_PGCPU R_NTX R_OTHER R_APPENDS R_BATCHES R_APB R_FPT R_WFAILED R_AP50 R_AP99 R_RETRIED R_FAILED R_REFUSED
declare -A TPS LAT P50 P99 CPU PGCPU APB FPT AP50 AP99
OTHER_ALL=()
OTHER_MAX=0
OTHER_MAX_ID=""
OPS_NTX=0

run_one() { # run_one PROTO TARGET ROUND
    local proto=$1 target=$2 round=$3
    local key="$1/$2" id="$1-$2" rkey="$1/$2#$3"
    # shellcheck disable=SC2034  # tps ... p99 are set by bench_read_pgbench
    local port db pid rc tps lat ntx failed retried n p50 p99
    local cpu0="" cpu1="" h0 h1 t0 t1 ours0 ours1 cpu_us other pg0 pg1 pgcpu_us
    [ "$RUNS" -gt 1 ] && id="$id-r$round"
    port=$(port_of "$target")
    db=$(db_of "$target")
    psql_q "$PG_PORT" CHECKPOINT >/dev/null
    if is_waly "$target"; then
        if ! waly_up "$target" "$id"; then
            RUN_ERRORS+=("$id: $WALY_NOTE")
            R_TPS[$rkey]=error
            return 0
        fi
    fi
    pid=$(pid_of "$target")
    log "run $id: pgbench (TRANSFER_FUNDS script) -M $proto -c $CLIENTS -j $JOBS -T $DURATION -> $target:$port/$db"
    [ -n "$pid" ] && cpu0=$(proc_ticks "$pid")
    pg0=$(cluster_ticks)
    read -r h0 _ < <(host_ticks); t0=$(date +%s.%N)
    ours_ticks; ours0=$OURS_TICKS
    rc=0
    pgbench -n -f "$SCRIPT" -D accounts="$ACCOUNTS" -M "$proto" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" \
        --max-tries="$MAX_TRIES" --log --log-prefix="$LOG_DIR/$id" \
        -h 127.0.0.1 -p "$port" -U "$PG_USER" "$db" >"$LOG_DIR/$id.out" 2>&1 || rc=$?
    sleep 0.2   # let the proxy and Postgres finish tearing the sessions down
    [ -n "$pid" ] && cpu1=$(proc_ticks "$pid")
    pg1=$(cluster_ticks)
    read -r h1 _ < <(host_ticks); t1=$(date +%s.%N)
    ours_ticks; ours1=$OURS_TICKS
    other=$(awk -v b=$((h1 - h0 - (ours1 - ours0))) -v hz="$CLK_TCK" -v a="$t0" -v z="$t1" \
        'BEGIN { o = b / hz / (z - a); if (o < 0) o = 0; printf "%.2f", o }')
    R_OTHER[$rkey]=$other
    OTHER_ALL+=("$other")
    if awk -v o="$other" -v m="$OTHER_MAX" 'BEGIN { exit !(o > m) }'; then OTHER_MAX=$other; OTHER_MAX_ID=$id; fi
    if is_waly "$target"; then
        waly_down "$id"
        R_APPENDS[$rkey]=$W_APPENDS; R_BATCHES[$rkey]=$W_BATCHES; R_APB[$rkey]=$W_APB; R_WFAILED[$rkey]=$W_FAILED
        R_AP50[$rkey]=$W_P50; R_AP99[$rkey]=$W_P99; R_REFUSED[$rkey]=$W_REFUSED
        if [ "${W_FAILED:-0}" != 0 ] && [ -n "$W_FAILED" ]; then RUN_ERRORS+=("$id: waly reports $W_FAILED failed appends"); fi
        if [ "$W_REFUSED" != 0 ]; then RUN_ERRORS+=("$id: waly refused $W_REFUSED transactions (operations catalog)"); fi
    fi

    if ! bench_read_pgbench "$id" "$rc"; then
        R_TPS[$rkey]=error
        return 0
    fi
    cpu_us=""
    if [ -n "$cpu0" ] && [ -n "$cpu1" ] && [ "${ntx:-0}" -gt 0 ]; then
        cpu_us=$(awk -v d=$((cpu1 - cpu0)) -v hz="$CLK_TCK" -v n="$ntx" 'BEGIN { printf "%.3f", d / hz * 1e6 / n }')
    elif [ -n "$pid" ]; then
        RUN_ERRORS+=("$id: could not read the proxy's CPU time (pid $pid)")
    fi
    pgcpu_us=$(awk -v d=$((pg1 - pg0)) -v hz="$CLK_TCK" -v n="${ntx:-0}" 'BEGIN { if (n > 0) printf "%.3f", d / hz * 1e6 / n }')
    R_PGCPU[$rkey]=$pgcpu_us
    R_TPS[$rkey]=$tps; R_LAT[$rkey]=$lat; R_P50[$rkey]=$p50; R_P99[$rkey]=$p99; R_NTX[$rkey]=${ntx:-$n}; R_CPU[$rkey]=$cpu_us
    R_RETRIED[$rkey]=${retried:-0}; R_FAILED[$rkey]=${failed:-0}
    [ "$target" = waly-ops ] && OPS_NTX=$((OPS_NTX + ${ntx:-0}))
    if is_waly "$target" && [ -n "${R_BATCHES[$rkey]:-}" ] && [ "${ntx:-0}" -gt 0 ]; then
        R_FPT[$rkey]=$(awk -v b="${R_BATCHES[$rkey]}" -v n="$ntx" 'BEGIN { printf "%.4f", b / n }')
    fi
    if [ "${failed:-0}" != 0 ]; then RUN_ERRORS+=("$id: $failed failed transactions (after up to $MAX_TRIES tries)"); fi
    log "  tps=$tps lat avg=${lat}ms p50=${p50}ms p99=${p99}ms (n=${ntx:-?}, retried=${retried:-0}, failed=${failed:-0}) Postgres CPU=${pgcpu_us}us/tx${cpu_us:+ proxy CPU=${cpu_us}us/tx}${R_FPT[$rkey]:+ log fsyncs/tx=${R_FPT[$rkey]}} other host load=${other} cores"
}

# ---------------------------------------------------------------- 6. pgbench runs
T_RUNS=$SECONDS
for ((round = 1; round <= RUNS; round++)); do
    [ "$RUNS" -gt 1 ] && log "round $round of $RUNS"
    # rotate the target order from round to round so none always runs first
    order=()
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
        order+=("${TARGETS[$(( (i + round - 1) % ${#TARGETS[@]} ))]}")
    done
    for proto in "${PROTOS[@]}"; do
        for target in "${order[@]}"; do
            run_one "$proto" "$target" "$round"
        done
    done
done
T_RUNS=$((SECONDS - T_RUNS))

# medians over the rounds that succeeded
for proto in "${PROTOS[@]}"; do
    for target in "${TARGETS[@]}"; do
        key="$proto/$target"
        v_tps=(); v_lat=(); v_p50=(); v_p99=(); v_cpu=(); v_pgcpu=(); v_apb=(); v_fpt=(); v_ap50=(); v_ap99=()
        for ((round = 1; round <= RUNS; round++)); do
            rkey="$key#$round"
            if [ "${R_TPS[$rkey]:-error}" = error ]; then continue; fi
            v_tps+=("${R_TPS[$rkey]}"); v_lat+=("${R_LAT[$rkey]}"); v_p50+=("${R_P50[$rkey]}"); v_p99+=("${R_P99[$rkey]}")
            [ -n "${R_CPU[$rkey]:-}" ] && v_cpu+=("${R_CPU[$rkey]}")
            [ -n "${R_PGCPU[$rkey]:-}" ] && v_pgcpu+=("${R_PGCPU[$rkey]}")
            [ -n "${R_APB[$rkey]:-}" ] && v_apb+=("${R_APB[$rkey]}")
            [ -n "${R_FPT[$rkey]:-}" ] && v_fpt+=("${R_FPT[$rkey]}")
            [ -n "${R_AP50[$rkey]:-}" ] && v_ap50+=("${R_AP50[$rkey]}")
            [ -n "${R_AP99[$rkey]:-}" ] && v_ap99+=("${R_AP99[$rkey]}")
        done
        if [ "${#v_tps[@]}" -eq 0 ]; then TPS[$key]=error; continue; fi
        TPS[$key]=$(median "${v_tps[@]}")
        LAT[$key]=$(median "${v_lat[@]}")
        P50[$key]=$(median "${v_p50[@]}")
        P99[$key]=$(median "${v_p99[@]}")
        CPU[$key]=$(median "${v_cpu[@]+"${v_cpu[@]}"}")
        PGCPU[$key]=$(median "${v_pgcpu[@]+"${v_pgcpu[@]}"}")
        APB[$key]=$(median "${v_apb[@]+"${v_apb[@]}"}")
        FPT[$key]=$(median "${v_fpt[@]+"${v_fpt[@]}"}")
        AP50[$key]=$(median "${v_ap50[@]+"${v_ap50[@]}"}")
        AP99[$key]=$(median "${v_ap99[@]+"${v_ap99[@]}"}")
        if [ "${#v_tps[@]}" -lt "$RUNS" ]; then
            RUN_ERRORS+=("$proto-$target: medians over ${#v_tps[@]} of $RUNS rounds (the others failed)")
        fi
    done
done
OTHER_MEDIAN=$(median "${OTHER_ALL[@]+"${OTHER_ALL[@]}"}")

# ---------------------------------------------------------------- 7. checks: the log, refusals, money
[ -z "$WALY_PID" ] || waly_stop
log "reading waly's log back (waly log tail --json)"
LOG_COUNTS="$TMP/log-counts.tsv"
waly_cli log tail --json --from 1 -n 100000000 2>"$TMP/tail.err" \
    | jq -r '.record as $r
        | ($r.operations // []) as $ops
        | [$r.session.database,
           (if ($ops | length) == 0 then "(none)" else ($ops | map(.name) | join("+")) end),
           (if ($ops | length) == 1 and $ops[0].name == "TRANSFER_FUNDS"
               and ($ops[0].params.transfer_id | type) == "number"
               and ($ops[0].params.amount | type) == "string"
               and ($ops[0].statements | length) == 3
            then "complete" else "-" end)]
        | @tsv' \
    | sort | uniq -c | awk -v OFS='\t' '{ print $2, $3, $4, $1 }' >"$LOG_COUNTS" \
    || RUN_ERRORS+=("reading waly's log failed: $(head -c 300 "$TMP/tail.err")")
count_of() { # count_of DATABASE OPERATIONS [complete] -> records
    awk -F'\t' -v d="$1" -v o="$2" -v c="${3:-}" '$1 == d && $2 == o && (c == "" || $3 == c) { n += $4 } END { print n + 0 }' "$LOG_COUNTS"
}
OPS_DB=$(db_of waly-ops)
PLAIN_DB=$(db_of waly)
OPS_TF=$(count_of "$OPS_DB" TRANSFER_FUNDS)
OPS_TF_COMPLETE=$(count_of "$OPS_DB" TRANSFER_FUNDS complete)
OPS_ALL=$(awk -F'\t' -v d="$OPS_DB" '$1 == d { n += $4 } END { print n + 0 }' "$LOG_COUNTS")
PLAIN_ALL=$(awk -F'\t' -v d="$PLAIN_DB" '$1 == d { n += $4 } END { print n + 0 }' "$LOG_COUNTS")
PLAIN_NONE=$(count_of "$PLAIN_DB" "(none)")
OPS_TRANSFERS=$(psql_q "$PG_PORT" "SELECT count(*) FROM transfers" "$OPS_DB")
REFUSED_TOTAL=0
for k in "${!REFUSED[@]}"; do REFUSED_TOTAL=$((REFUSED_TOTAL + REFUSED[$k])); done
CHECKS=()
check() { # check OK? TEXT
    if [ "$1" = yes ]; then CHECKS+=("ok: $2"); else CHECKS+=("**FAILED**: $2"); RUN_ERRORS+=("check failed: $2"); fi
}
yes_if() { if [ "$1" -eq "$2" ]; then echo yes; else echo no; fi; }
check "$(yes_if "$OPS_TF" "$OPS_ALL")" "every record of $OPS_DB (waly-ops) is one TRANSFER_FUNDS: $OPS_TF of $OPS_ALL records"
check "$(yes_if "$OPS_TF_COMPLETE" "$OPS_TF")" "each with its 3 statements, amount (numeric, as a string) and transfer_id (from the inserted row): $OPS_TF_COMPLETE of $OPS_TF"
check "$(yes_if "$OPS_TF" "$OPS_TRANSFERS")" "TRANSFER_FUNDS records = rows in $OPS_DB.transfers: $OPS_TF vs $OPS_TRANSFERS"
check "$(yes_if "$OPS_TF" "$OPS_NTX")" "TRANSFER_FUNDS records = transactions pgbench completed through waly-ops: $OPS_TF vs $OPS_NTX"
check "$(yes_if "$PLAIN_NONE" "$PLAIN_ALL")" "no record of $PLAIN_DB (waly without catalog) carries an operation: $PLAIN_NONE of $PLAIN_ALL records without"
check "$(yes_if "$REFUSED_TOTAL" 0)" "transactions refused by the operations catalog (\"transaction refused by the operations catalog\" in waly's logs): $REFUSED_TOTAL"
for target in "${TARGETS[@]}"; do
    db=$(db_of "$target")
    read -r money negative transfers < <(psql_q "$PG_PORT" "$MONEY_SQL" "$db")
    ok=no
    if [ "$money" = "$SEED_MONEY" ] && [ "$negative" = 0 ]; then ok=yes; fi
    check "$ok" "$db: sum(balance) $money (seeded $SEED_MONEY), $negative negative balances, $transfers transfers"
done
for c in "${CHECKS[@]}"; do log "$c"; done
T_TOTAL=$((SECONDS - T_START))

# ---------------------------------------------------------------- 8. report
f0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
f2() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
f3() { awk -v v="$1" 'BEGIN { printf "%.3f", v }'; }
join() { local IFS=,; local s="$*"; echo "${s//,/, }"; }
ok_tps() { [ "${TPS[$1]:-error}" != error ]; }

REPORT="$TMP/report.md"
{
    echo "# waly write benchmark with the operations catalog"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); whole benchmark $((T_TOTAL / 60)) min $((T_TOTAL % 60)) s (pgbench runs and waly restarts: $((T_RUNS / 60)) min $((T_RUNS % 60)) s)"
    echo "- host: $(uname -srm), nproc $(nproc), $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "- cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "- disk: Postgres data and waly's data_dir both in $TMP ($(df --output=source "$TMP" | tail -n 1))"
    echo "- waly git rev: $(git_rev)"
    echo "- waly binary: ${WALY_EXE#"$REPO_DIR"/}${WALY_VERSION:+ ($WALY_VERSION)}, build profile: $WALY_PROFILE, binary modified $WALY_BUILT${WALY_WORKERS:+, $WALY_WORKERS worker threads}"
    if [ -n "$WALY_DEBUG_WARNING" ]; then echo "- **WARNING: $WALY_DEBUG_WARNING**"; fi
    if [ -n "$WALY_STALE" ]; then echo "- **WARNING: $WALY_STALE**"; fi
    echo "- catalog (waly-ops): \`${OPERATIONS#"$REPO_DIR"/}\` ($(grep -c '^  - name:' "$OPERATIONS") operations; policy reject on accounts and transfers), loaded with \`operations:\` in waly's config"
    echo "- Postgres $PG_VERSION (direct :$PG_PORT; fsync=$PG_FSYNC, synchronous_commit=$PG_SYNC, wal_sync_method=$PG_WSM, full_page_writes=$PG_FPW, shared_buffers=$PG_SB, max_prepared_transactions=$PG_MPT), $PGB_VERSION (session mode, pool 20, :$PGB_PORT), waly (:$WALY_PORT, log_format json, restarted for each of its runs; waly = no catalog, waly-ops = the catalog above)"
    echo "- workload: pgbench custom script, TRANSFER_FUNDS as three statements in BEGIN/COMMIT (below) between two distinct random accounts of $ACCOUNTS, amount random(1, 100) / 100.0; $CLIENTS clients, -j $JOBS, ${DURATION}s per run, -n, --max-tries $MAX_TRIES (deadlocks between opposite transfers are retried), TCP 127.0.0.1, scram-sha-256; one database per target, each given migrations/example/accounts.sql and $ACCOUNTS accounts of $SEED_BALANCE directly in Postgres (not through waly, so the seed is not in waly's log); CHECKPOINT before each run"
    if [ "$RUNS" -gt 1 ]; then
        echo "- repetitions: $RUNS rounds over all configurations (target order rotated each round); every figure in the table is the median over the $RUNS runs of that configuration and target, the ratios are computed from the medians"
    else
        echo "- repetitions: 1 (one run per configuration and target; no medians)"
    fi
    echo "- latency avg: pgbench's \"latency average\"; p50/p99: nearest-rank over every transaction in the pgbench per-transaction logs"
    echo "- proxy CPU µs/tx: user+system CPU time of the whole proxy process (all threads; /proc/PID/stat utime+stime, CLK_TCK $CLK_TCK) from just before pgbench starts to 0.2 s after it exits, divided by the transactions pgbench processed; Postgres CPU µs/tx: the same for the whole cluster"
    echo "- log appends/fsync and append p50/p99 µs: \`appends_per_batch\`, \`append_p50_us\`, \`append_p99_us\` from waly's \"log statistics\" line at shutdown (waly started before and stopped after each of its runs); log fsyncs/tx: group-commit batches (one fsync each) / transactions processed"
    if [ -n "$OTHER_MEDIAN" ]; then
        echo "- other load on the host during the runs (host CPU busy incl. steal, minus this benchmark's Postgres, proxies and pgbench): median $(f2 "$OTHER_MEDIAN") cores, max $OTHER_MAX cores (run ${OTHER_MAX_ID:-?}), of $(nproc); host load average at report time $(cut -d' ' -f1-3 /proc/loadavg)"
    fi
    echo
    echo "## Matching cost (bench/match_cost.rs)"
    echo
    if [ -n "$MATCH_TABLE" ]; then
        echo "\`cargo run --release --example match_cost\`, run before the cluster was started ($MATCH_NOTE). \"cached\" is the steady state: the session's Matcher already holds the analysis of the statement texts, so a commit costs hash look-ups, parameter resolution and validation, and the table-shape and strict-policy passes over the row changes; \"cold\" is a fresh Matcher (every text parsed and matched). Target: ≤ 5 µs per write statement, cached."
        echo
        printf '%s\n' "$MATCH_TABLE"
    else
        echo "skipped (MATCH_COST=0)"
    fi
    echo
    echo "## TRANSFER_FUNDS through each target"
    echo
    echo "| protocol | target | TPS | vs direct | vs PgBouncer | vs waly (no catalog) | latency avg ms | p50 ms | p99 ms | proxy CPU µs/tx | Postgres CPU µs/tx | log appends/fsync | log fsyncs/tx | append p50/p99 µs |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for proto in "${PROTOS[@]}"; do
        for target in "${TARGETS[@]}"; do
            key="$proto/$target"
            tps=${TPS[$key]:-error}
            if [ "$tps" = error ]; then
                echo "| $proto | $target | error | - | - | - | - | - | - | - | - | - | - | - |"
                continue
            fi
            rd="-"; rb="-"; rw="-"; cpu_s="-"; pgcpu_s="-"; apb_s="-"; fpt_s="-"; ap_s="-"
            [ -n "${PGCPU[$key]:-}" ] && pgcpu_s=$(f1 "${PGCPU[$key]}")
            if [ "$target" != direct ]; then
                ok_tps "$proto/direct" && rd=$(ratio "$tps" "${TPS[$proto/direct]}")
                [ -n "${CPU[$key]:-}" ] && cpu_s=$(f1 "${CPU[$key]}")
            fi
            if is_waly "$target"; then
                ok_tps "$proto/pgbouncer" && rb=$(ratio "$tps" "${TPS[$proto/pgbouncer]}")
                [ -n "${APB[$key]:-}" ] && apb_s=$(f2 "${APB[$key]}")
                [ -n "${FPT[$key]:-}" ] && fpt_s=$(f3 "${FPT[$key]}")
                [ -n "${AP50[$key]:-}" ] && ap_s="$(f0 "${AP50[$key]}") / $(f0 "${AP99[$key]}")"
            fi
            if [ "$target" = waly-ops ] && ok_tps "$proto/waly"; then rw=$(ratio "$tps" "${TPS[$proto/waly]}"); fi
            echo "| $proto | $target | $(f0 "$tps") | $rd | $rb | $rw | $(f3 "${LAT[$key]}") | $(f3 "${P50[$key]}") | $(f3 "${P99[$key]}") | $cpu_s | $pgcpu_s | $apb_s | $fpt_s | $ap_s |"
        done
    done
    echo
    for proto in "${PROTOS[@]}"; do
        if ok_tps "$proto/waly" && ok_tps "$proto/waly-ops" && [ -n "${CPU[$proto/waly]:-}" ] && [ -n "${CPU[$proto/waly-ops]:-}" ]; then
            n_min=$(for ((round = 1; round <= RUNS; round++)); do echo "${R_NTX[$proto/waly#$round]:-}"; echo "${R_NTX[$proto/waly-ops#$round]:-}"; done | awk 'NF && ($1 < m || m == "") { m = $1 } END { print m + 0 }')
            echo "- $proto: the catalog changes waly's CPU by $(delta "${CPU[$proto/waly-ops]}" "${CPU[$proto/waly]}") µs/tx (waly-ops minus waly, medians; CPU is read in ticks of $(awk -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", 1e3 / hz }') ms, $(awk -v hz="$CLK_TCK" -v n="$n_min" 'BEGIN { if (n > 0) printf "%.1f", 1e6 / hz / n; else print "?" }') µs/tx or less at these transaction counts; the run-to-run spread in the raw figures is larger) and TPS by $(ratio "${TPS[$proto/waly-ops]}" "${TPS[$proto/waly]}")"
        fi
    done
    echo
    echo "The pgbench script (\`-D accounts=$ACCOUNTS\`):"
    echo
    echo '```'
    cat "$SCRIPT"
    echo '```'
    echo
    echo "## Checks"
    echo
    for c in "${CHECKS[@]}"; do echo "- $c"; done
    echo
    echo "Records in waly's log by database and recognised operations (\`waly log tail --json\`, the whole log; \"complete\": one TRANSFER_FUNDS with its 3 statements, a string amount and a numeric transfer_id):"
    echo
    echo "| database | operations | complete | records |"
    echo "|---|---|---|---:|"
    awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$LOG_COUNTS"
    echo
    echo "## Raw figures"
    echo
    echo "Per run (each cell lists round 1, 2, ... in order; \"other load\" is the host CPU, in cores, used by processes outside this benchmark during that run):"
    echo
    echo "| protocol | target | TPS | latency avg ms | p50 ms | p99 ms | transactions | retried | failed | proxy CPU µs/tx | Postgres CPU µs/tx | log appends | log batches (fsyncs) | appends/batch | append p50 µs | append p99 µs | failed appends | refused | other load |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for proto in "${PROTOS[@]}"; do
        for target in "${TARGETS[@]}"; do
            key="$proto/$target"
            c_tps=(); c_lat=(); c_p50=(); c_p99=(); c_ntx=(); c_ret=(); c_fl=(); c_cpu=(); c_pgcpu=(); c_app=(); c_bat=(); c_apb=(); c_a50=(); c_a99=(); c_fail=(); c_ref=(); c_oth=()
            for ((round = 1; round <= RUNS; round++)); do
                rkey="$key#$round"
                c_oth+=("${R_OTHER[$rkey]:--}")
                c_app+=("${R_APPENDS[$rkey]:--}"); c_bat+=("${R_BATCHES[$rkey]:--}"); c_apb+=("${R_APB[$rkey]:--}"); c_fail+=("${R_WFAILED[$rkey]:--}")
                c_a50+=("${R_AP50[$rkey]:--}"); c_a99+=("${R_AP99[$rkey]:--}"); c_ref+=("${R_REFUSED[$rkey]:--}")
                if [ "${R_TPS[$rkey]:-error}" = error ]; then
                    c_tps+=(error); c_lat+=(-); c_p50+=(-); c_p99+=(-); c_ntx+=(-); c_ret+=(-); c_fl+=(-); c_cpu+=(-); c_pgcpu+=(-); continue
                fi
                c_tps+=("$(f0 "${R_TPS[$rkey]}")"); c_lat+=("${R_LAT[$rkey]}")
                c_p50+=("${R_P50[$rkey]}"); c_p99+=("${R_P99[$rkey]}"); c_ntx+=("${R_NTX[$rkey]}")
                c_ret+=("${R_RETRIED[$rkey]}"); c_fl+=("${R_FAILED[$rkey]}")
                if [ -n "${R_CPU[$rkey]:-}" ]; then c_cpu+=("$(f1 "${R_CPU[$rkey]}")"); else c_cpu+=(-); fi
                if [ -n "${R_PGCPU[$rkey]:-}" ]; then c_pgcpu+=("$(f1 "${R_PGCPU[$rkey]}")"); else c_pgcpu+=(-); fi
            done
            echo "| $proto | $target | $(join "${c_tps[@]}") | $(join "${c_lat[@]}") | $(join "${c_p50[@]}") | $(join "${c_p99[@]}") | $(join "${c_ntx[@]}") | $(join "${c_ret[@]}") | $(join "${c_fl[@]}") | $(join "${c_cpu[@]}") | $(join "${c_pgcpu[@]}") | $(join "${c_app[@]}") | $(join "${c_bat[@]}") | $(join "${c_apb[@]}") | $(join "${c_a50[@]}") | $(join "${c_a99[@]}") | $(join "${c_fail[@]}") | $(join "${c_ref[@]}") | $(join "${c_oth[@]}") |"
        done
    done
    PREV="$RESULTS_DIR/write-latest.md"
    if [ -f "$PREV" ]; then
        echo
        echo "## Previous figures: bench/results/write-latest.md"
        echo
        echo "The write benchmark without a catalog (pgbench's tpcb-like script, 5 statements per transaction, another workload), copied from that file for comparison:"
        echo
        grep -E '^- (date:|waly git rev:|pgbench |repetitions:|other load )' "$PREV" || true
        echo
        awk '/^\| protocol \| target \|/ { on = 1 } on && /^$/ { exit } on { print }' "$PREV"
    fi
    if [ "${#WALY_PROBLEMS[@]}" -gt 0 ]; then
        echo
        echo "## waly warnings and errors (first 5 per waly process)"
        echo
        for e in "${WALY_PROBLEMS[@]}"; do echo "- $e"; done
    fi
    if [ "${#RUN_ERRORS[@]}" -gt 0 ]; then
        echo
        echo "## Errors"
        echo
        for e in "${RUN_ERRORS[@]}"; do echo "- $e"; done
    fi
} > "$REPORT"

mkdir -p "$RESULTS_DIR"
cp "$REPORT" "$RESULT_FILE"
echo
cat "$REPORT"
log "saved to ${RESULT_FILE#"$REPO_DIR"/} (whole benchmark $((T_TOTAL / 60)) min $((T_TOTAL % 60)) s)"
