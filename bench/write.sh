#!/usr/bin/env bash
# waly write-path benchmark.
#
# Starts a private Postgres 15 cluster (fsync and synchronous_commit on: this
# is a durability benchmark), PgBouncer (session mode) and waly in front of
# it, and runs pgbench's built-in tpcb-like script (5 statements per
# transaction: 3 UPDATEs, a SELECT and an INSERT) with CLIENTS clients,
# -M prepared and -M simple, against Postgres directly, PgBouncer, waly
# (commit_protocol: direct, the default) and waly-2pc (commit_protocol:
# two-phase, with a data directory of its own), interleaved. Each target has
# its own database (bench_direct, bench_pgbouncer, bench_waly,
# bench_waly2pc), initialised by `pgbench -i` through that target, so
# bench_waly is created through waly: waly installs its schema
# there on the first connection and logs the initial load like any write.
# pgbench itself (no -n) vacuums pgbench_branches/tellers and truncates
# pgbench_history through the target before each run; a CHECKPOINT is issued
# directly before each run so every run starts with a clean buffer state.
#
# waly is started afresh for each of its runs (log_format json) and stopped
# with SIGTERM afterwards; its shutdown line "log statistics" gives that
# run's appends, group-commit batches (one fsync each) and appends per
# batch. "log fsyncs/tx" is batches / transactions pgbench processed.
#
# After all runs the whole log of the waly target (direct commit) is replayed into an empty database with
# `waly replay --batch REPLAY_BATCH`, in two timed steps: the records of
# the initial load (`--to` the last position after `pgbench -i`), then the
# benchmark runs' records. Row changes are taken from replay's own output
# and cross-checked by counting the insert/update/delete changes in
# `waly log tail --json`. The workload's own rate is the row changes the
# benchmark runs logged divided by the seconds waly's pgbench runs lasted.
# The replayed database is compared with bench_waly (row counts and sums).
#
# proxy CPU µs/tx, "other load", rounds and medians are as in bench/run.sh;
# "Postgres CPU µs/tx" is the same measure for the whole cluster.
#
# Usage: bench/write.sh            (as root; Postgres and PgBouncer run as `postgres`)
#
# Environment knobs:
#   DURATION      seconds per pgbench run                 (default 15)
#   RUNS          rounds over all configurations; the report shows medians (default 1)
#   SCALE         pgbench -i scale factor                 (default 10)
#   CLIENTS       pgbench clients (-c)                    (default 8)
#   JOBS          pgbench threads (-j)                    (default 2)
#   REPLAY_BATCH  waly replay --batch                     (default 5000)
#   WALY_BIN      waly binary (default target/release/waly, falls back to
#                 target/debug/waly with a warning)
#   KEEP_TMP      set to keep the temp directory (cluster, waly's log, logs)
#   PG_BIN        Postgres server binaries                (default /usr/lib/postgresql/15/bin)
#   PGBOUNCER_BIN                                         (default /usr/sbin/pgbouncer)
set -euo pipefail

DURATION=${DURATION:-15}
RUNS=${RUNS:-1}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
REPLAY_BATCH=${REPLAY_BATCH:-5000}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}

# not run.sh's ports, so both benchmarks can be started side by side
PG_PORT=55442
PGB_PORT=55443
WALY_PORT=55444
PG_USER=postgres
PG_PASSWORD=postgres
DB=postgres

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
cd "$REPO_DIR"

RESULTS_DIR="$BENCH_DIR/results"
RESULT_FILE="$RESULTS_DIR/write-latest.md"
PROTOS=(prepared simple)

# shared setup: Postgres, PgBouncer, waly, CPU accounting (bench/lib.sh)
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

for v in SCALE CLIENTS JOBS REPLAY_BATCH; do
    case "${!v}" in ''|*[!0-9]*|0) die "$v must be a positive integer (got '${!v}')" ;; esac
done
bench_preflight jq
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

TARGETS=(direct pgbouncer waly waly-2pc)
is_waly() { [ "$1" = waly ] || [ "$1" = waly-2pc ]; }
port_of() {
    case "$1" in
        direct) echo "$PG_PORT" ;;
        pgbouncer) echo "$PGB_PORT" ;;
        waly | waly-2pc) echo "$WALY_PORT" ;;
    esac
}
db_of() { echo "bench_${1//-/}"; }
WALY_DATA_DIRECT=$WALY_DATA
waly_cli() { # waly_cli ARGS...: a waly subcommand with the benchmark's config
    WALY_PASSWORD_POSTGRES=$PG_PASSWORD "$WALY_EXE" "$@" --config "$WALY_CONFIG"
}

WALY_PROBLEMS=()

waly_up() { # waly_up TARGET NAME: start waly for one phase, logging to $WALY_LOGS/NAME.log
    if [ "$1" = waly-2pc ]; then
        WALY_DATA=$TMP/waly-data-2pc WALY_CONFIG_NAME=waly-2pc.yaml WALY_EXTRA_YAML="commit_protocol: two-phase" \
            bench_start_waly json "$WALY_LOGS/$2.log" "$(db_of "$1")"
    else
        WALY_DATA=$WALY_DATA_DIRECT bench_start_waly json "$WALY_LOGS/$2.log" "$(db_of "$1")"
    fi
    [ "$WALY_OK" -eq 1 ]
}
waly_down() { # waly_down NAME: graceful stop; sets W_APPENDS W_BATCHES W_APB W_FAILED
    local lf="$WALY_LOGS/$1.log" p
    waly_stop
    W_APPENDS=""; W_BATCHES=""; W_APB=""; W_FAILED=""
    read -r W_APPENDS W_BATCHES W_APB W_FAILED < <(waly_log_stats "$lf" appends batches appends_per_batch failed_appends; echo) || true
    if [ -z "$W_APPENDS" ]; then
        RUN_ERRORS+=("$1: waly wrote no \"log statistics\" line (exit status ${WALY_STOP_RC:-?})")
    elif [ "${WALY_STOP_RC:-0}" != 0 ]; then
        RUN_ERRORS+=("$1: waly exited with status $WALY_STOP_RC")
    fi
    while IFS= read -r p; do
        [ -n "$p" ] && WALY_PROBLEMS+=("$1: $p")
    done < <(waly_problems "$lf" | head -n 5)
    log "  waly $1: appends=${W_APPENDS:-?} batches=${W_BATCHES:-?} appends/batch=${W_APB:-?} failed=${W_FAILED:-?} exit=${WALY_STOP_RC:-?}"
}

log_last_position() { # -> the last record's position in waly's log (0 if empty)
    local p
    p=$(waly_cli log tail --json -n 1 2>/dev/null | jq -r '.position' 2>/dev/null | tail -n 1)
    echo "${p:-0}"
}

# ---------------------------------------------------------------- 4. databases, pgbench -i
RUN_ERRORS=()
declare -A INIT_S
for target in "${TARGETS[@]}"; do
    psql_q "$PG_PORT" "CREATE DATABASE $(db_of "$target")" >/dev/null
done
psql_q "$PG_PORT" "CREATE DATABASE bench_replay" >/dev/null

for target in "${TARGETS[@]}"; do
    if is_waly "$target"; then
        waly_up "$target" "init-$target" || die "waly did not start: $WALY_NOTE"
    fi
    log "pgbench -i -s $SCALE through $target (database $(db_of "$target"))"
    t0=$(date +%s.%N)
    pgbench -i -s "$SCALE" -q -h 127.0.0.1 -p "$(port_of "$target")" -U "$PG_USER" "$(db_of "$target")" \
        >"$TMP/pgbench-init-$target.log" 2>&1 \
        || { tail -n 20 "$TMP/pgbench-init-$target.log" >&2; is_waly "$target" && tail -n 20 "$WALY_LOGS/init-$target.log" >&2; die "pgbench -i through $target failed"; }
    INIT_S[$target]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    log "  done in ${INIT_S[$target]}s"
    if [ "$target" = waly ]; then
        INIT_END=$(log_last_position)
        waly_down "init-$target"
        INIT_APPENDS=$W_APPENDS; INIT_BATCHES=$W_BATCHES
        log "  waly's log holds positions up to $INIT_END after the initial load"
    elif is_waly "$target"; then
        waly_down "init-$target"
    fi
done
# same starting point for every database: statistics and visibility maps
for target in "${TARGETS[@]}"; do
    psql_q "$PG_PORT" "VACUUM ANALYZE" "$(db_of "$target")" >/dev/null
done

pid_of() {
    case "$1" in
        pgbouncer) echo "$PGB_PID" ;;
        waly | waly-2pc) echo "$WALY_PID" ;;
        *) echo "" ;;
    esac
}

# Per-round values, keyed "proto/target#round"; medians keyed "proto/target".
declare -A R_TPS R_LAT R_P50 R_P99 R_CPU R_PGCPU R_NTX R_OTHER R_APPENDS R_BATCHES R_APB R_FPT R_WFAILED
declare -A TPS LAT P50 P99 CPU PGCPU APB FPT
OTHER_ALL=()
OTHER_MAX=0
OTHER_MAX_ID=""
WALY_RUNS=0

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
        [ "$target" = waly ] && WALY_RUNS=$((WALY_RUNS + 1))
    fi
    pid=$(pid_of "$target")
    log "run $id: pgbench (tpcb-like) -M $proto -c $CLIENTS -j $JOBS -T $DURATION -> $target:$port/$db"
    # snapshot: proxy CPU; host CPU; CPU of everything this benchmark runs
    # (Postgres, both proxies, pgbench) to estimate the load others put on the host
    [ -n "$pid" ] && cpu0=$(proc_ticks "$pid")
    pg0=$(cluster_ticks)
    read -r h0 _ < <(host_ticks); t0=$(date +%s.%N)
    ours_ticks; ours0=$OURS_TICKS
    rc=0
    pgbench -M "$proto" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" \
        --log --log-prefix="$LOG_DIR/$id" \
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
        if [ "${W_FAILED:-0}" != 0 ] && [ -n "$W_FAILED" ]; then RUN_ERRORS+=("$id: waly reports $W_FAILED failed appends"); fi
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
    if is_waly "$target" && [ -n "${R_BATCHES[$rkey]:-}" ] && [ "${ntx:-0}" -gt 0 ]; then
        R_FPT[$rkey]=$(awk -v b="${R_BATCHES[$rkey]}" -v n="$ntx" 'BEGIN { printf "%.4f", b / n }')
    fi
    if [ "${failed:-0}" != 0 ]; then RUN_ERRORS+=("$id: $failed failed transactions"); fi
    log "  tps=$tps lat avg=${lat}ms p50=${p50}ms p99=${p99}ms (n=${ntx:-?}, failed=${failed:-0}) Postgres CPU=${pgcpu_us}us/tx${cpu_us:+ proxy CPU=${cpu_us}us/tx}${R_FPT[$rkey]:+ log fsyncs/tx=${R_FPT[$rkey]}} other host load=${other} cores"
}

# ---------------------------------------------------------------- 5. pgbench runs
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

# medians over the rounds that succeeded
for proto in "${PROTOS[@]}"; do
    for target in "${TARGETS[@]}"; do
        key="$proto/$target"
        v_tps=(); v_lat=(); v_p50=(); v_p99=(); v_cpu=(); v_pgcpu=(); v_apb=(); v_fpt=()
        for ((round = 1; round <= RUNS; round++)); do
            rkey="$key#$round"
            [ -n "${R_TPS[$rkey]:-}" ] && [ "${R_TPS[$rkey]}" != error ] || continue
            v_tps+=("${R_TPS[$rkey]}"); v_lat+=("${R_LAT[$rkey]}"); v_p50+=("${R_P50[$rkey]}"); v_p99+=("${R_P99[$rkey]}")
            [ -n "${R_CPU[$rkey]:-}" ] && v_cpu+=("${R_CPU[$rkey]}")
            [ -n "${R_PGCPU[$rkey]:-}" ] && v_pgcpu+=("${R_PGCPU[$rkey]}")
            [ -n "${R_APB[$rkey]:-}" ] && v_apb+=("${R_APB[$rkey]}")
            [ -n "${R_FPT[$rkey]:-}" ] && v_fpt+=("${R_FPT[$rkey]}")
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
        if [ "${#v_tps[@]}" -lt "$RUNS" ]; then
            RUN_ERRORS+=("$proto-$target: medians over ${#v_tps[@]} of $RUNS rounds (the others failed)")
        fi
    done
done
OTHER_MEDIAN=$(median "${OTHER_ALL[@]+"${OTHER_ALL[@]}"}")

# ---------------------------------------------------------------- 6. replay
# waly is stopped (each run stopped it); replay reads the log of the waly
# target (direct commit: outcome records included) on its own.
[ -z "$WALY_PID" ] || waly_stop
WALY_CONFIG=$TMP/waly.yaml
LOG_END=$(log_last_position)
LOG_BYTES=$(du -sb "$WALY_DATA" | cut -f1)
log "waly's log: positions 1..$LOG_END ($((LOG_BYTES / 1048576)) MiB in $WALY_DATA); initial load up to $INIT_END"

# counts of insert/update/delete changes in the records after the initial load
log "counting the benchmark runs' row changes in the log (waly log tail --json)"
waly_cli log tail --json --from $((INIT_END + 1)) -n 100000000 >"$TMP/tail.json" 2>"$TMP/tail.err" || true
WL_COUNTS=$(jq -r '.record.changes[]?.kind' "$TMP/tail.json" | sort | uniq -c | awk '{ printf "%s=%s ", $2, $1 }')
# transaction records (outcome records, which decide direct commits, have no txid)
WL_RECORDS=$(jq -r 'select(.record.txid != null) | .position' "$TMP/tail.json" | wc -l)
WL_OUTCOMES=$(jq -r 'select(.record.kind == "outcome") | .position' "$TMP/tail.json" | wc -l)
WL_ROWS=0
for k in insert update delete; do
    c=$(printf '%s\n' "$WL_COUNTS" | tr ' ' '\n' | awk -F= -v k="$k" '$1 == k { print $2 }')
    WL_ROWS=$((WL_ROWS + ${c:-0}))
done
WL_SECONDS=$((WALY_RUNS * DURATION))
WL_RATE=$(awk -v r="$WL_ROWS" -v s="$WL_SECONDS" 'BEGIN { if (s > 0) printf "%.0f", r / s; else print 0 }')
log "  $WL_RECORDS transaction records, $WL_OUTCOMES outcome records, changes by kind: ${WL_COUNTS:-none}; $WL_ROWS row changes in ${WL_SECONDS}s of waly runs = $WL_RATE/s"

REPLAY_URL="postgres://$PG_USER:$PG_PASSWORD@127.0.0.1:$PG_PORT/bench_replay"
declare -A RP_ROWS RP_SECS RP_OUT
replay_step() { # replay_step NAME [--to POS]: times one `waly replay`
    local name=$1 t0 rc=0
    shift
    log "waly replay ($name) --batch $REPLAY_BATCH $*"
    t0=$(date +%s.%N)
    waly_cli replay --target "$REPLAY_URL" --batch "$REPLAY_BATCH" "$@" >"$TMP/replay-$name.out" 2>&1 || rc=$?
    RP_SECS[$name]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
    RP_OUT[$name]=$(tail -n 1 "$TMP/replay-$name.out")
    if [ "$rc" -ne 0 ]; then
        RUN_ERRORS+=("replay $name: exit status $rc: $(tail -n 3 "$TMP/replay-$name.out" | tr '\n' ' ')")
        warn "replay $name failed (exit $rc):"; tail -n 10 "$TMP/replay-$name.out" | sed 's/^/    replay| /' >&2
        RP_ROWS[$name]=""
        return 0
    fi
    RP_ROWS[$name]=$(grep -o '([0-9]* row changes' "$TMP/replay-$name.out" | tail -n 1 | grep -o '[0-9]*' || true)
    log "  ${RP_OUT[$name]} (wall ${RP_SECS[$name]}s)"
}
replay_step init --to "$INIT_END"
replay_step runs
RP_TOTAL_ROWS=$(( ${RP_ROWS[init]:-0} + ${RP_ROWS[runs]:-0} ))
RP_TOTAL_SECS=$(awk -v a="${RP_SECS[init]}" -v b="${RP_SECS[runs]}" 'BEGIN { printf "%.2f", a + b }')
rate() { awk -v r="$1" -v s="$2" 'BEGIN { if (r != "" && s > 0) printf "%.0f", r / s; else print "-" }'; }
RP_RATE_INIT=$(rate "${RP_ROWS[init]}" "${RP_SECS[init]}")
RP_RATE_RUNS=$(rate "${RP_ROWS[runs]}" "${RP_SECS[runs]}")
RP_RATE_TOTAL=$(rate "$RP_TOTAL_ROWS" "$RP_TOTAL_SECS")
RP_RATIO=$(awk -v a="$RP_RATE_RUNS" -v b="$WL_RATE" 'BEGIN { if (a ~ /^[0-9]+$/ && b > 0) printf "%.2fx", a / b; else print "-" }')
RP_RATIO_TOTAL=$(awk -v a="$RP_RATE_TOTAL" -v b="$WL_RATE" 'BEGIN { if (a ~ /^[0-9]+$/ && b > 0) printf "%.2fx", a / b; else print "-" }')

# the replayed database must equal the one waly served
CHECK_SQL="SELECT (SELECT count(*) FROM pgbench_accounts) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)
    || ' ' || (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers)
    || ' ' || (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT coalesce(sum(delta), 0) FROM pgbench_history)"
SRC_CHECK=$(psql_q "$PG_PORT" "$CHECK_SQL" bench_waly 2>&1 || true)
DST_CHECK=$(psql_q "$PG_PORT" "$CHECK_SQL" bench_replay 2>&1 || true)
if [ "$SRC_CHECK" = "$DST_CHECK" ]; then
    REPLAY_MATCH="yes (accounts count and sum(abalance), sum(bbalance), sum(tbalance), history count and sum(delta): $SRC_CHECK)"
else
    REPLAY_MATCH="NO: bench_waly has \"$SRC_CHECK\", bench_replay has \"$DST_CHECK\""
    RUN_ERRORS+=("the replayed database differs from bench_waly: $SRC_CHECK vs $DST_CHECK")
fi
log "replayed database equals bench_waly: $REPLAY_MATCH"

# ---------------------------------------------------------------- 7. report
f0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
f2() { awk -v v="$1" 'BEGIN { printf "%.2f", v }'; }
f3() { awk -v v="$1" 'BEGIN { printf "%.3f", v }'; }
join() { local IFS=,; echo "$*" | sed 's/,/, /g'; }

REPORT="$TMP/report.md"
{
    echo "# waly write-path benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- host: $(uname -srm), nproc $(nproc), $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "- cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "- disk: Postgres data and waly's data_dir both in $TMP ($(df --output=source "$TMP" | tail -n 1))"
    echo "- waly git rev: $(git_rev)"
    echo "- waly binary: ${WALY_EXE#"$REPO_DIR"/}, build profile: $WALY_PROFILE, binary modified $WALY_BUILT${WALY_WORKERS:+, $WALY_WORKERS worker threads}"
    if [ -n "$WALY_DEBUG_WARNING" ]; then echo "- **WARNING: $WALY_DEBUG_WARNING**"; fi
    if [ -n "$WALY_STALE" ]; then echo "- **WARNING: $WALY_STALE**"; fi
    echo "- Postgres $PG_VERSION (direct :$PG_PORT; fsync=$PG_FSYNC, synchronous_commit=$PG_SYNC, wal_sync_method=$PG_WSM, full_page_writes=$PG_FPW, shared_buffers=$PG_SB, max_prepared_transactions=$PG_MPT), $PGB_VERSION (session mode, pool 20, :$PGB_PORT), waly (:$WALY_PORT, log_format json, restarted for each of its runs)"
    echo "- pgbench tpcb-like (built-in default script), scale $SCALE, $CLIENTS clients, -j $JOBS, ${DURATION}s per run, TCP 127.0.0.1, scram-sha-256; one database per target, each initialised by \`pgbench -i\` through its own target; CHECKPOINT before each run; pgbench vacuums branches/tellers and truncates history through the target before each run"
    if [ "$RUNS" -gt 1 ]; then
        echo "- repetitions: $RUNS rounds over all configurations (target order rotated each round); every figure in the table is the median over the $RUNS runs of that configuration and target, the ratios are computed from the medians"
    else
        echo "- repetitions: 1 (one run per configuration and target; no medians)"
    fi
    echo "- latency avg: pgbench's \"latency average\"; p50/p99: nearest-rank over every transaction in the pgbench per-transaction logs"
    echo "- proxy CPU µs/tx: user+system CPU time of the whole proxy process (all threads; /proc/PID/stat utime+stime, CLK_TCK $CLK_TCK) from just before pgbench starts to 0.2 s after it exits (including pgbench's pre-run vacuum and connection setup), divided by the transactions pgbench processed"
    echo "- Postgres CPU µs/tx: CPU time of the whole cluster (postmaster, its live children and the children it has reaped: backends, checkpointer, WAL writer, autovacuum) over the same window, divided by the transactions pgbench processed"
    echo "- log appends/fsync: \`appends_per_batch\` from waly's \"log statistics\" line at shutdown (waly is started before and stopped after each of its runs; the pre-run TRUNCATE is one more append); log fsyncs/tx: group-commit batches (one fsync each) / transactions processed"
    if [ -n "$OTHER_MEDIAN" ]; then
        echo "- other load on the host during the runs (host CPU busy incl. steal, minus this benchmark's Postgres, proxies and pgbench): median $(f2 "$OTHER_MEDIAN") cores, max $OTHER_MAX cores (run ${OTHER_MAX_ID:-?}), of $(nproc); host load average at report time $(cut -d' ' -f1-3 /proc/loadavg)"
    fi
    echo
    echo "| protocol | target | TPS | waly/direct | waly/PgBouncer | latency avg ms | p50 ms | p99 ms | proxy CPU µs/tx | Postgres CPU µs/tx | log appends/fsync | log fsyncs/tx |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for proto in "${PROTOS[@]}"; do
        for target in "${TARGETS[@]}"; do
            key="$proto/$target"
            tps=${TPS[$key]:-error}
            if [ "$tps" = error ]; then
                echo "| $proto | $target | error | - | - | - | - | - | - | - | - | - |"
                continue
            fi
            rd="-"; rb="-"; cpu_s="-"; pgcpu_s="-"; apb_s="-"; fpt_s="-"
            [ -n "${PGCPU[$key]:-}" ] && pgcpu_s=$(f1 "${PGCPU[$key]}")
            if is_waly "$target"; then
                [ "${TPS[$proto/direct]:-error}" != error ] && rd=$(ratio "$tps" "${TPS[$proto/direct]}")
                [ "${TPS[$proto/pgbouncer]:-error}" != error ] && rb=$(ratio "$tps" "${TPS[$proto/pgbouncer]}")
                [ -n "${APB[$key]:-}" ] && apb_s=$(f2 "${APB[$key]}")
                [ -n "${FPT[$key]:-}" ] && fpt_s=$(f3 "${FPT[$key]}")
            fi
            [ "$target" != direct ] && [ -n "${CPU[$key]:-}" ] && cpu_s=$(f1 "${CPU[$key]}")
            echo "| $proto | $target | $(f0 "$tps") | $rd | $rb | $(f3 "${LAT[$key]}") | $(f3 "${P50[$key]}") | $(f3 "${P99[$key]}") | $cpu_s | $pgcpu_s | $apb_s | $fpt_s |"
        done
    done
    echo
    echo "## Replay"
    echo
    echo "\`waly replay --config <waly's config> --target postgres://…/bench_replay --batch $REPLAY_BATCH\` into an empty database, waly stopped, in two steps over the whole log (positions 1..$LOG_END, $(awk -v b="$LOG_BYTES" 'BEGIN { printf "%.1f MiB", b / 1048576 }') in waly's data_dir). Row changes as replay reports them; seconds are wall time of the \`waly replay\` process (connection and log reading included)."
    echo
    echo "| part | records | row changes | seconds | row changes/s |"
    echo "|---|---:|---:|---:|---:|"
    echo "| initial load (\`pgbench -i\` through waly, positions 1..$INIT_END) | $INIT_END | ${RP_ROWS[init]:-error} | ${RP_SECS[init]} | $RP_RATE_INIT |"
    echo "| benchmark runs (positions $((INIT_END + 1))..$LOG_END; $WL_OUTCOMES of them outcome records) | $WL_RECORDS | ${RP_ROWS[runs]:-error} | ${RP_SECS[runs]} | $RP_RATE_RUNS |"
    echo "| whole log | $LOG_END | $RP_TOTAL_ROWS | $RP_TOTAL_SECS | $RP_RATE_TOTAL |"
    echo
    echo "- workload's own rate: $WL_ROWS row changes (insert/update/delete changes counted in \`waly log tail --json\` over the benchmark runs' records: ${WL_COUNTS:-none}) in $WL_SECONDS s of waly pgbench runs ($WALY_RUNS runs x ${DURATION}s) = **$WL_RATE row changes/s**"
    echo "- replay / workload: **$RP_RATIO** (benchmark runs' records), $RP_RATIO_TOTAL (whole log, dominated by the initial load's bulk inserts)"
    echo "- replayed database equals bench_waly: $REPLAY_MATCH"
    echo "- replay output: init: \`${RP_OUT[init]}\`; runs: \`${RP_OUT[runs]}\`"
    echo
    echo "## Raw figures"
    echo
    echo "Initialisation (\`pgbench -i -s $SCALE\` through each target): direct ${INIT_S[direct]}s, pgbouncer ${INIT_S[pgbouncer]}s, waly ${INIT_S[waly]}s, waly-2pc ${INIT_S[waly-2pc]}s (waly: ${INIT_APPENDS:-?} appends in ${INIT_BATCHES:-?} batches)."
    echo
    echo "Per run (each cell lists round 1, 2, ... in order; \"other load\" is the host CPU, in cores, used by processes outside this benchmark during that run):"
    echo
    echo "| protocol | target | TPS | latency avg ms | p50 ms | p99 ms | transactions | proxy CPU µs/tx | Postgres CPU µs/tx | log appends | log batches (fsyncs) | appends/batch | failed appends | other load |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for proto in "${PROTOS[@]}"; do
        for target in "${TARGETS[@]}"; do
            key="$proto/$target"
            c_tps=(); c_lat=(); c_p50=(); c_p99=(); c_ntx=(); c_cpu=(); c_pgcpu=(); c_app=(); c_bat=(); c_apb=(); c_fail=(); c_oth=()
            for ((round = 1; round <= RUNS; round++)); do
                rkey="$key#$round"
                c_oth+=("${R_OTHER[$rkey]:--}")
                c_app+=("${R_APPENDS[$rkey]:--}"); c_bat+=("${R_BATCHES[$rkey]:--}"); c_apb+=("${R_APB[$rkey]:--}"); c_fail+=("${R_WFAILED[$rkey]:--}")
                if [ "${R_TPS[$rkey]:-error}" = error ]; then
                    c_tps+=(error); c_lat+=(-); c_p50+=(-); c_p99+=(-); c_ntx+=(-); c_cpu+=(-); c_pgcpu+=(-); continue
                fi
                c_tps+=("$(f0 "${R_TPS[$rkey]}")"); c_lat+=("${R_LAT[$rkey]}")
                c_p50+=("${R_P50[$rkey]}"); c_p99+=("${R_P99[$rkey]}"); c_ntx+=("${R_NTX[$rkey]}")
                if [ -n "${R_CPU[$rkey]:-}" ]; then c_cpu+=("$(f1 "${R_CPU[$rkey]}")"); else c_cpu+=(-); fi
                if [ -n "${R_PGCPU[$rkey]:-}" ]; then c_pgcpu+=("$(f1 "${R_PGCPU[$rkey]}")"); else c_pgcpu+=(-); fi
            done
            echo "| $proto | $target | $(join "${c_tps[@]}") | $(join "${c_lat[@]}") | $(join "${c_p50[@]}") | $(join "${c_p99[@]}") | $(join "${c_ntx[@]}") | $(join "${c_cpu[@]}") | $(join "${c_pgcpu[@]}") | $(join "${c_app[@]}") | $(join "${c_bat[@]}") | $(join "${c_apb[@]}") | $(join "${c_fail[@]}") | $(join "${c_oth[@]}") |"
        done
    done
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
log "saved to ${RESULT_FILE#"$REPO_DIR"/}"
