#!/usr/bin/env bash
# waly log-backend benchmark: the embedded file log vs Kafka.
#
# Starts a private Postgres 15 cluster (fsync and synchronous_commit on: this
# is a durability benchmark) and a Kafka-protocol broker (tansu, via
# scripts/kafka.sh, in `durable` mode: SQLite storage through libsql, in the
# benchmark's temp directory on the same disk and the same machine), and runs
# pgbench's built-in tpcb-like script (5 statements per transaction: 3
# UPDATEs, a SELECT and an INSERT) with CLIENTS clients, -M prepared, against
#   file    waly with the file log (the default backend)
#   kafka   waly with log.backend kafka (one topic per database, waly.{database})
#   direct  Postgres directly, for reference
# interleaved, RUNS rounds, the target order rotated from round to round.
# Each target has its own database (bench_file, bench_kafka, bench_direct),
# initialised through that target, so the initial loads are logged like any
# write: `pgbench -i`, except bench_kafka, loaded in INIT_CHUNK-row
# transactions (pgbench -i's single 1M-row transaction at scale 10 makes a
# log record over the Kafka backend's 64 MiB limit; see section 4). pgbench
# itself (no -n) vacuums pgbench_branches/tellers and truncates
# pgbench_history through the target before each run; a CHECKPOINT is issued
# directly before each run.
#
# waly is started afresh for each of its runs (log_format json, its own
# data_dir per backend) and stopped with SIGTERM afterwards; its shutdown line
# "log statistics" gives that run's appends, failed appends and the append
# latency as the commit protocol sees it (waiting for durability included:
# the group-commit fsync for the file log, the broker's acks=all
# acknowledgement for Kafka): append_p50_us, append_p99_us, append_max_us.
# Transaction latency p50/p99 comes from pgbench's per-transaction logs
# (bench/latency.sh). "waly CPU" and "broker CPU" are utime+stime of the
# whole process over the pgbench run divided by the transactions processed.
#
# Prints a Markdown report and saves it to bench/results/kafka-latest.md.
#
# Usage: bench/kafka.sh            (as root; Postgres runs as `postgres`)
#
# Needs tansu 0.6.0 (scripts/kafka.sh install builds it, about 15 minutes).
#
# Environment knobs:
#   DURATION      seconds per pgbench run                 (default 15)
#   RUNS          rounds over the three targets; the report shows medians (default 2)
#   SCALE         pgbench -i scale factor                 (default 10)
#   CLIENTS       pgbench clients (-c)                    (default 8)
#   JOBS          pgbench threads (-j)                    (default 2)
#   INIT_CHUNK    accounts per transaction when loading bench_kafka (default 4000)
#   WALY_BIN      waly binary (default target/release/waly, falls back to
#                 target/debug/waly with a warning)
#   KEEP_TMP      set to keep the temp directory (cluster, waly's logs, broker)
#   PG_BIN        Postgres server binaries                (default /usr/lib/postgresql/15/bin)
#   PGBOUNCER_BIN only checked by bench/lib.sh's preflight (default /usr/sbin/pgbouncer)
#   WALY_TANSU    tansu binary, as scripts/kafka.sh takes it
#                 (default ~/.cache/waly-test/tansu-0.6.0/bin/tansu)
set -euo pipefail

DURATION=${DURATION:-15}
RUNS=${RUNS:-2}
SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-8}
JOBS=${JOBS:-2}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}

# not run.sh's (5543x) nor write.sh's (5544x) ports; PgBouncer is not started,
# its port is only checked to be free by the shared preflight
PG_PORT=55452
PGB_PORT=55453
WALY_PORT=55454
KAFKA_PORT=55455
PG_USER=postgres
PG_PASSWORD=postgres
DB=postgres

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
cd "$REPO_DIR"

RESULTS_DIR="$BENCH_DIR/results"
RESULT_FILE="$RESULTS_DIR/kafka-latest.md"
KAFKA_SH="$REPO_DIR/scripts/kafka.sh"
TANSU=${WALY_TANSU:-${WALY_TANSU_ROOT:-${HOME:-/root}/.cache/waly-test/tansu-0.6.0}/bin/tansu}
PROTO=prepared
TARGETS=(file kafka direct)

# shared setup: Postgres, waly, CPU accounting (bench/lib.sh)
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

for v in SCALE CLIENTS JOBS; do
    case "${!v}" in ''|*[!0-9]*|0) die "$v must be a positive integer (got '${!v}')" ;; esac
done
bench_preflight jq
[ -x "$KAFKA_SH" ] || die "scripts/kafka.sh not found"
[ -x "$TANSU" ] || die "tansu not found at $TANSU; run: scripts/kafka.sh install"
if ss -Hltn "sport = :$KAFKA_PORT" | grep -q .; then die "port $KAFKA_PORT is already in use"; fi
bench_setup
WALY_LOGS="$TMP/waly-logs"
KAFKA_DIR="$TMP/kafka"
mkdir -p "$WALY_LOGS" "$TMP/waly-data-file"
KAFKA_STARTED=0
bench_cleanup_hook() {
    if [ -n "$WALY_PID" ]; then waly_stop; fi
    if [ "$KAFKA_STARTED" -eq 1 ]; then "$KAFKA_SH" stop "$KAFKA_DIR" >&2 || true; fi
}

# ---------------------------------------------------------------- 1. Postgres
bench_start_postgres
bench_check_durable_settings

# ---------------------------------------------------------------- 2. broker
log "starting tansu on $KAFKA_PORT (durable: sqlite://tansu.db in $KAFKA_DIR)"
KAFKA_STARTED=1
# WALY_KAFKA_OWNER: scripts/kafka.sh stops the broker if this shell dies without cleaning up
WALY_KAFKA_OWNER=$$ WALY_TANSU=$TANSU "$KAFKA_SH" start "$KAFKA_DIR" "$KAFKA_PORT" durable >&2 \
    || die "the broker did not start"
KAFKA_PID=$(cat "$KAFKA_DIR/tansu.pid")
TANSU_VERSION=$("$TANSU" --version 2>/dev/null | head -n 1)
log "$TANSU_VERSION up (pid $KAFKA_PID)"

# ---------------------------------------------------------------- 3. waly
bench_find_waly
[ -n "$WALY_EXE" ] || die "${WALY_NOTE#waly skipped: }"
bench_check_waly_fresh

port_of() {
    case "$1" in
        direct) echo "$PG_PORT" ;;
        file|kafka) echo "$WALY_PORT" ;;
    esac
}
db_of() { echo "bench_$1"; }
is_waly() { [ "$1" = file ] || [ "$1" = kafka ]; }

# The Kafka backend's config: what bench_start_waly writes, plus this log: section.
KAFKA_CONFIG="$TMP/waly-kafka.yaml"
KAFKA_LOG_YAML="log:
  backend: kafka
  kafka:
    brokers: 127.0.0.1:$KAFKA_PORT
    topic: \"waly.{database}\"
    append_timeout_ms: 10000"
FILE_CONFIG=""

RUN_ERRORS=()
WALY_PROBLEMS=()

waly_up() { # waly_up BACKEND NAME: start waly with that log backend, logging to $WALY_LOGS/NAME.log
    local lf="$WALY_LOGS/$2.log"
    if [ "$1" = kafka ]; then
        # 20 s: the first connection may create the topic.
        WALY_DATA="$TMP/waly-data-kafka" WALY_CONFIG_NAME=$(basename "$KAFKA_CONFIG") \
            WALY_EXTRA_YAML=$KAFKA_LOG_YAML WALY_READY_SECS=20 \
            bench_start_waly json "$lf" "$(db_of kafka)"
    else
        WALY_DATA="$TMP/waly-data-file" bench_start_waly json "$lf" "$(db_of file)"
        FILE_CONFIG=$WALY_CONFIG
    fi
    [ "$WALY_OK" -eq 1 ]
}
waly_down() { # waly_down NAME: graceful stop; sets W_APPENDS W_BATCHES W_FAILED W_P50 W_P99 W_MAX
    local lf="$WALY_LOGS/$1.log" p
    waly_stop
    W_APPENDS=""; W_BATCHES=""; W_FAILED=""; W_P50=""; W_P99=""; W_MAX=""
    read -r W_APPENDS W_BATCHES W_FAILED W_P50 W_P99 W_MAX < <(waly_log_stats "$lf" appends batches failed_appends append_p50_us append_p99_us append_max_us; echo) || true
    if [ -z "$W_APPENDS" ]; then
        RUN_ERRORS+=("$1: waly wrote no \"log statistics\" line (exit status ${WALY_STOP_RC:-?})")
    elif [ "${WALY_STOP_RC:-0}" != 0 ]; then
        RUN_ERRORS+=("$1: waly exited with status $WALY_STOP_RC")
    fi
    if [ -n "$W_FAILED" ] && [ "$W_FAILED" != 0 ]; then RUN_ERRORS+=("$1: waly reports $W_FAILED failed appends"); fi
    while IFS= read -r p; do
        [ -n "$p" ] && WALY_PROBLEMS+=("$1: $p")
    done < <(waly_problems "$lf" | head -n 5)
    log "  waly $1: appends=${W_APPENDS:-?} batches=${W_BATCHES:-?} failed=${W_FAILED:-?} append p50=${W_P50:-?}us p99=${W_P99:-?}us max=${W_MAX:-?}us exit=${WALY_STOP_RC:-?}"
}

# ---------------------------------------------------------------- 4. databases, pgbench -i
# pgbench -i loads pgbench_accounts in ONE transaction (SCALE x 100000 rows,
# about 22 MB of log record per 100000 rows). The Kafka backend refuses a
# record over its limit (64 MiB: SCALE 10 gives a 218 MB record), so
# bench_kafka is initialised in steps, all through waly on Kafka: pgbench -i
# -I dt (drop, create tables), then pgbench's own server-side generation
# (the SQL of its `G` step) in transactions of INIT_CHUNK accounts, then
# pgbench -i -I vp (vacuum, primary keys). Same rows as pgbench -i.
INIT_CHUNK=${INIT_CHUNK:-4000}
case "$INIT_CHUNK" in ''|*[!0-9]*|0) die "INIT_CHUNK must be a positive integer (got '$INIT_CHUNK')" ;; esac
init_how() {
    if [ "$1" = kafka ]; then
        echo "pgbench -i -I dt, INSERT ... SELECT generate_series in transactions of $INIT_CHUNK accounts, pgbench -i -I vp; scale $SCALE"
    else
        echo "pgbench -i -s $SCALE"
    fi
}
init_db() { # init_db TARGET: the pgbench tables at SCALE in the target's database, through the target
    local port db lo hi naccounts
    port=$(port_of "$1"); db=$(db_of "$1")
    if [ "$1" != kafka ]; then
        pgbench -i -s "$SCALE" -q -h 127.0.0.1 -p "$port" -U "$PG_USER" "$db"
        return
    fi
    pgbench -i -I dt -s "$SCALE" -h 127.0.0.1 -p "$port" -U "$PG_USER" "$db" || return 1
    naccounts=$((SCALE * 100000))
    {
        echo "INSERT INTO pgbench_branches(bid, bbalance) SELECT bid, 0 FROM generate_series(1, $SCALE) AS bid;"
        echo "INSERT INTO pgbench_tellers(tid, bid, tbalance) SELECT tid, (tid - 1) / 10 + 1, 0 FROM generate_series(1, $((SCALE * 10))) AS tid;"
        for ((lo = 1; lo <= naccounts; lo += INIT_CHUNK)); do
            hi=$((lo + INIT_CHUNK - 1)); [ "$hi" -le "$naccounts" ] || hi=$naccounts
            echo "INSERT INTO pgbench_accounts(aid, bid, abalance, filler) SELECT aid, (aid - 1) / 100000 + 1, 0, '' FROM generate_series($lo, $hi) AS aid;"
        done
    } > "$TMP/init-kafka.sql"
    psql -X -q -h 127.0.0.1 -p "$port" -U "$PG_USER" -d "$db" -v ON_ERROR_STOP=1 -f "$TMP/init-kafka.sql" || return 1
    pgbench -i -I vp -s "$SCALE" -h 127.0.0.1 -p "$port" -U "$PG_USER" "$db"
}
declare -A INIT_S INIT_APPENDS INIT_P50 INIT_P99 TOTAL_APPENDS
for target in "${TARGETS[@]}"; do
    psql_q "$PG_PORT" "CREATE DATABASE $(db_of "$target")" >/dev/null
done
for target in "${TARGETS[@]}"; do
    if is_waly "$target"; then
        waly_up "$target" "init-$target" || die "waly ($target) did not start: $WALY_NOTE"
    fi
    log "initialising $(db_of "$target") through $target ($(init_how "$target"))"
    t0=$(date +%s.%N)
    init_db "$target" >"$TMP/pgbench-init-$target.log" 2>&1 \
        || { tail -n 20 "$TMP/pgbench-init-$target.log" >&2; is_waly "$target" && tail -n 20 "$WALY_LOGS/init-$target.log" >&2; die "initialising $(db_of "$target") through $target failed"; }
    INIT_S[$target]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    log "  done in ${INIT_S[$target]}s"
    if is_waly "$target"; then
        waly_down "init-$target"
        INIT_APPENDS[$target]=$W_APPENDS; INIT_P50[$target]=$W_P50; INIT_P99[$target]=$W_P99
        TOTAL_APPENDS[$target]=${W_APPENDS:-0}
    fi
done
# same starting point for every database: statistics and visibility maps
for target in "${TARGETS[@]}"; do
    psql_q "$PG_PORT" "VACUUM ANALYZE" "$(db_of "$target")" >/dev/null
done

# Per-round values keyed "target#round"; medians keyed "target".
declare -A R_TPS R_LAT R_P50 R_P99 R_NTX R_APPENDS R_FAILED R_AP50 R_AP99 R_AMAX R_WCPU R_KCPU R_OTHER
OTHER_ALL=()
OTHER_MAX=0
OTHER_MAX_ID=""
declare -A TPS LAT P50 P99 AP50 AP99 APPENDS WCPU KCPU FAILED

us_per_tx() { # us_per_tx TICKS0 TICKS1 NTX -> CPU µs per transaction, empty if unknown
    [ -n "$1" ] && [ -n "$2" ] && [ "${3:-0}" -gt 0 ] || { echo ""; return 0; }
    awk -v d=$(($2 - $1)) -v hz="$CLK_TCK" -v n="$3" 'BEGIN { printf "%.3f", d / hz * 1e6 / n }'
}

run_one() { # run_one TARGET ROUND
    local target=$1 round=$2
    local id="$1" rkey="$1#$2"
    # shellcheck disable=SC2034  # tps ... p99 are set by bench_read_pgbench
    local port db rc tps lat ntx failed retried n p50 p99 w0="" w1="" k0="" k1=""
    local h0 h1 t0 t1 ours0 ours1 other
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
    log "run $id: pgbench (tpcb-like) -M $PROTO -c $CLIENTS -j $JOBS -T $DURATION -> $target:$port/$db"
    [ -n "$WALY_PID" ] && w0=$(proc_ticks "$WALY_PID")
    k0=$(proc_ticks "$KAFKA_PID")
    # CPU of everything this benchmark runs (Postgres, waly, pgbench, and the
    # broker, which is not this shell's child) vs the host's, for "other load"
    read -r h0 _ < <(host_ticks); t0=$(date +%s.%N)
    ours_ticks; ours0=$((OURS_TICKS + ${k0:-0}))
    rc=0
    pgbench -M "$PROTO" -c "$CLIENTS" -j "$JOBS" -T "$DURATION" \
        --log --log-prefix="$LOG_DIR/$id" \
        -h 127.0.0.1 -p "$port" -U "$PG_USER" "$db" >"$LOG_DIR/$id.out" 2>&1 || rc=$?
    sleep 0.2   # let waly and Postgres finish tearing the sessions down
    [ -n "$WALY_PID" ] && w1=$(proc_ticks "$WALY_PID")
    k1=$(proc_ticks "$KAFKA_PID")
    read -r h1 _ < <(host_ticks); t1=$(date +%s.%N)
    ours_ticks; ours1=$((OURS_TICKS + ${k1:-0}))
    other=$(awk -v b=$((h1 - h0 - (ours1 - ours0))) -v hz="$CLK_TCK" -v a="$t0" -v z="$t1" \
        'BEGIN { o = b / hz / (z - a); if (o < 0) o = 0; printf "%.2f", o }')
    R_OTHER[$rkey]=$other
    OTHER_ALL+=("$other")
    if awk -v o="$other" -v m="$OTHER_MAX" 'BEGIN { exit !(o > m) }'; then OTHER_MAX=$other; OTHER_MAX_ID=$id; fi
    if is_waly "$target"; then
        waly_down "$id"
        R_APPENDS[$rkey]=$W_APPENDS; R_FAILED[$rkey]=$W_FAILED
        R_AP50[$rkey]=$W_P50; R_AP99[$rkey]=$W_P99; R_AMAX[$rkey]=$W_MAX
        TOTAL_APPENDS[$target]=$(( ${TOTAL_APPENDS[$target]:-0} + ${W_APPENDS:-0} ))
    fi

    if ! bench_read_pgbench "$id" "$rc"; then
        R_TPS[$rkey]=error
        return 0
    fi
    R_TPS[$rkey]=$tps; R_LAT[$rkey]=$lat; R_P50[$rkey]=$p50; R_P99[$rkey]=$p99; R_NTX[$rkey]=${ntx:-$n}
    R_WCPU[$rkey]=$(us_per_tx "$w0" "$w1" "${ntx:-0}")
    R_KCPU[$rkey]=$(us_per_tx "$k0" "$k1" "${ntx:-0}")
    if [ "${failed:-0}" != 0 ]; then RUN_ERRORS+=("$id: $failed failed transactions"); fi
    log "  tps=$tps lat avg=${lat}ms p50=${p50}ms p99=${p99}ms (n=${ntx:-?}, failed=${failed:-0})${R_WCPU[$rkey]:+ waly CPU=${R_WCPU[$rkey]}us/tx} broker CPU=${R_KCPU[$rkey]:-?}us/tx other host load=${other} cores"
}

# ---------------------------------------------------------------- 5. pgbench runs
for ((round = 1; round <= RUNS; round++)); do
    [ "$RUNS" -gt 1 ] && log "round $round of $RUNS"
    # rotate the target order from round to round so none always runs first
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
        run_one "${TARGETS[$(( (i + round - 1) % ${#TARGETS[@]} ))]}" "$round"
    done
done

# medians over the rounds that succeeded; failed appends summed over all rounds
for target in "${TARGETS[@]}"; do
    v_tps=(); v_lat=(); v_p50=(); v_p99=(); v_ap50=(); v_ap99=(); v_app=(); v_wcpu=(); v_kcpu=()
    FAILED[$target]=""
    for ((round = 1; round <= RUNS; round++)); do
        rkey="$target#$round"
        [ -n "${R_FAILED[$rkey]:-}" ] && FAILED[$target]=$(( ${FAILED[$target]:-0} + ${R_FAILED[$rkey]} ))
        [ -n "${R_TPS[$rkey]:-}" ] && [ "${R_TPS[$rkey]}" != error ] || continue
        v_tps+=("${R_TPS[$rkey]}"); v_lat+=("${R_LAT[$rkey]}"); v_p50+=("${R_P50[$rkey]}"); v_p99+=("${R_P99[$rkey]}")
        [ -n "${R_AP50[$rkey]:-}" ] && v_ap50+=("${R_AP50[$rkey]}")
        [ -n "${R_AP99[$rkey]:-}" ] && v_ap99+=("${R_AP99[$rkey]}")
        [ -n "${R_APPENDS[$rkey]:-}" ] && v_app+=("${R_APPENDS[$rkey]}")
        [ -n "${R_WCPU[$rkey]:-}" ] && v_wcpu+=("${R_WCPU[$rkey]}")
        [ -n "${R_KCPU[$rkey]:-}" ] && v_kcpu+=("${R_KCPU[$rkey]}")
    done
    if [ "${#v_tps[@]}" -eq 0 ]; then TPS[$target]=error; continue; fi
    TPS[$target]=$(median "${v_tps[@]}")
    LAT[$target]=$(median "${v_lat[@]}")
    P50[$target]=$(median "${v_p50[@]}")
    P99[$target]=$(median "${v_p99[@]}")
    AP50[$target]=$(median "${v_ap50[@]+"${v_ap50[@]}"}")
    AP99[$target]=$(median "${v_ap99[@]+"${v_ap99[@]}"}")
    APPENDS[$target]=$(median "${v_app[@]+"${v_app[@]}"}")
    WCPU[$target]=$(median "${v_wcpu[@]+"${v_wcpu[@]}"}")
    KCPU[$target]=$(median "${v_kcpu[@]+"${v_kcpu[@]}"}")
    if [ "${#v_tps[@]}" -lt "$RUNS" ]; then
        RUN_ERRORS+=("$target: medians over ${#v_tps[@]} of $RUNS rounds (the others failed)")
    fi
done

OTHER_MEDIAN=$(median "${OTHER_ALL[@]+"${OTHER_ALL[@]}"}")

# ---------------------------------------------------------------- 6. what the logs hold
# waly is stopped; `waly log tail` reads each backend's log on its own (for
# Kafka, the database's topic). Its last position against the appends counted.
last_position() { # last_position CONFIG DATABASE -> last record's position, "?" if unreadable
    local p
    p=$(WALY_PASSWORD_POSTGRES=$PG_PASSWORD timeout 60 "$WALY_EXE" log tail --json -n 1 -d "$2" --config "$1" 2>"$TMP/tail-$2.err" \
        | jq -r '.position' 2>/dev/null | tail -n 1)
    echo "${p:-?}"
}
declare -A LAST_POS
LAST_POS[file]=$( [ -n "$FILE_CONFIG" ] && last_position "$FILE_CONFIG" "$(db_of file)" || echo "?")
LAST_POS[kafka]=$(last_position "$KAFKA_CONFIG" "$(db_of kafka)")
for target in file kafka; do
    log "$target log: last position ${LAST_POS[$target]}, $target waly reported ${TOTAL_APPENDS[$target]:-?} appends in all (init + runs)"
    [ "${LAST_POS[$target]}" != "?" ] || RUN_ERRORS+=("waly log tail -d $(db_of "$target") could not read the $target log: $(tail -n 2 "$TMP/tail-$(db_of "$target").err" | tr '\n' ' ')")
done
TANSU_DB_BYTES=$(du -cb "$KAFKA_DIR"/tansu.db* 2>/dev/null | tail -n 1 | cut -f1)
TANSU_DB_FILES=$(cd "$KAFKA_DIR" && ls tansu.db* 2>/dev/null | tr '\n' ' ' | sed 's/ $//')
WALY_FILE_BYTES=$(du -sb "$TMP/waly-data-file" | cut -f1)
TANSU_PROBLEMS=$(grep -c -E 'WARN|ERROR' "$KAFKA_DIR/tansu.log" 2>/dev/null || true)

# ---------------------------------------------------------------- 7. report
f0() { awk -v v="$1" 'BEGIN { printf "%.0f", v }'; }
f1() { awk -v v="$1" 'BEGIN { printf "%.1f", v }'; }
f3() { awk -v v="$1" 'BEGIN { printf "%.3f", v }'; }
or_dash() { if [ -n "$1" ]; then "$2" "$1"; else echo "-"; fi; }
join() { local IFS=,; echo "$*" | sed 's/,/, /g'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

REPORT="$TMP/report.md"
{
    echo "# waly log-backend benchmark: file log vs Kafka"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- host: $(uname -srm), nproc $(nproc), $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "- cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "- disk: Postgres data, waly's data_dirs and the broker's SQLite database all in $TMP ($(df --output=source "$TMP" | tail -n 1))"
    echo "- waly git rev: $(git_rev)"
    echo "- waly binary: ${WALY_EXE#"$REPO_DIR"/}, build profile: $WALY_PROFILE, binary modified $WALY_BUILT${WALY_WORKERS:+, $WALY_WORKERS worker threads}"
    if [ -n "$WALY_DEBUG_WARNING" ]; then echo "- **WARNING: $WALY_DEBUG_WARNING**"; fi
    if [ -n "$WALY_STALE" ]; then echo "- **WARNING: $WALY_STALE**"; fi
    echo "- Postgres $PG_VERSION (direct :$PG_PORT; fsync=$PG_FSYNC, synchronous_commit=$PG_SYNC, wal_sync_method=$PG_WSM, full_page_writes=$PG_FPW, shared_buffers=$PG_SB, max_prepared_transactions=$PG_MPT)"
    echo "- waly (:$WALY_PORT, log_format json, restarted for each of its runs, one data_dir per backend): **file** = the embedded file log (default backend); **kafka** = \`log.backend: kafka\`, brokers 127.0.0.1:$KAFKA_PORT, topic \`waly.{database}\` (so \`waly.bench_kafka\`, created by waly), append_timeout_ms 10000"
    echo "- broker: ${TANSU_VERSION:-tansu} (scripts/kafka.sh start … durable), one broker on 127.0.0.1:$KAFKA_PORT, **durable storage engine \`sqlite://tansu.db\` (libsql)**, RUST_LOG=warn, running on the **same $(nproc)-core machine** as Postgres, waly and pgbench, its database on the same disk"
    echo "- pgbench tpcb-like (built-in default script), -M $PROTO, scale $SCALE, $CLIENTS clients, -j $JOBS, ${DURATION}s per run, TCP 127.0.0.1, scram-sha-256; one database per target (bench_file, bench_kafka, bench_direct), each initialised through its own target (\`pgbench -i\`; bench_kafka in $INIT_CHUNK-row transactions, see Raw figures); CHECKPOINT before each run; pgbench vacuums branches/tellers and truncates history through the target before each run"
    if [ "$RUNS" -gt 1 ]; then
        echo "- repetitions: $RUNS rounds over the three targets (order rotated each round); every figure in the table is the median over the $RUNS runs of that target (failed appends: the sum), the ratios are computed from the medians"
    else
        echo "- repetitions: 1 (one run per target; no medians)"
    fi
    echo "- latency avg: pgbench's \"latency average\"; p50/p99: nearest-rank over every transaction in the pgbench per-transaction logs"
    echo "- append p50/p99: \`append_p50_us\`/\`append_p99_us\` from waly's \"log statistics\" line at shutdown (waly is started before and stopped after each run, so each line covers one run, pgbench's pre-run TRUNCATE included): the append as the commit protocol waits for it, durability included (file: the group-commit fsync; kafka: the broker's acks=all acknowledgement); histogram buckets 2 % wide"
    echo "- waly CPU / broker CPU µs/tx: user+system CPU time of the whole waly / tansu process (/proc/PID/stat, CLK_TCK $CLK_TCK) from just before pgbench starts to 0.2 s after it exits, divided by the transactions pgbench processed (the broker idles through the file and direct runs)"
    if [ -n "$OTHER_MEDIAN" ]; then
        echo "- other load on the host during the runs (host CPU busy incl. steal, minus this benchmark's Postgres, waly, broker and pgbench): median $(awk -v v="$OTHER_MEDIAN" 'BEGIN { printf "%.2f", v }') cores, max $OTHER_MAX cores (run ${OTHER_MAX_ID:-?}), of $(nproc); host load average at report time $(cut -d' ' -f1-3 /proc/loadavg)"
    fi
    echo
    echo "| target | TPS | vs direct | kafka/file | latency avg ms | p50 ms | p99 ms | append p50 µs | append p99 µs | appends | failed appends | waly CPU µs/tx | broker CPU µs/tx |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for target in "${TARGETS[@]}"; do
        tps=${TPS[$target]:-error}
        if [ "$tps" = error ]; then
            echo "| $target | error | - | - | - | - | - | - | - | - | ${FAILED[$target]:--} | - | - |"
            continue
        fi
        rd="-"; rk="-"
        if [ "$target" != direct ] && [ "${TPS[direct]:-error}" != error ]; then rd=$(ratio "$tps" "${TPS[direct]}"); fi
        if [ "$target" = kafka ] && [ "${TPS[file]:-error}" != error ]; then rk=$(ratio "$tps" "${TPS[file]}"); fi
        echo "| $target | $(f0 "$tps") | $rd | $rk | $(f3 "${LAT[$target]}") | $(f3 "${P50[$target]}") | $(f3 "${P99[$target]}") | $(or_dash "${AP50[$target]}" f0) | $(or_dash "${AP99[$target]}" f0) | $(or_dash "${APPENDS[$target]}" f0) | ${FAILED[$target]:--} | $(or_dash "${WCPU[$target]}" f1) | $(or_dash "${KCPU[$target]}" f1) |"
    done
    echo
    echo "## Raw figures"
    echo
    echo "Initialisation through each target (direct and file: \`pgbench -i -s $SCALE\`; kafka: $(init_how kafka), because pgbench -i loads the accounts in one transaction, a log record over the Kafka backend's 64 MiB limit): direct ${INIT_S[direct]}s, file ${INIT_S[file]}s (${INIT_APPENDS[file]:-?} appends, append p50 ${INIT_P50[file]:-?} µs, p99 ${INIT_P99[file]:-?} µs), kafka ${INIT_S[kafka]}s (${INIT_APPENDS[kafka]:-?} appends, append p50 ${INIT_P50[kafka]:-?} µs, p99 ${INIT_P99[kafka]:-?} µs)."
    echo
    echo "What the logs hold after all runs (\`waly log tail --json -n 1 -d DB\`, waly stopped): file log last position ${LAST_POS[file]} ($(mib "${WALY_FILE_BYTES:-0}") in its data_dir), file waly reported ${TOTAL_APPENDS[file]:-?} appends in all; topic waly.bench_kafka last position ${LAST_POS[kafka]}, kafka waly reported ${TOTAL_APPENDS[kafka]:-?} appends in all; broker storage ${TANSU_DB_FILES:-?} $(mib "${TANSU_DB_BYTES:-0}"); WARN/ERROR lines in the broker's log: ${TANSU_PROBLEMS:-0}."
    echo
    echo "Per run (each cell lists round 1, 2, ... in order; \"other load\" is the host CPU, in cores, used by processes outside this benchmark during that run):"
    echo
    echo "| target | TPS | latency avg ms | p50 ms | p99 ms | transactions | appends | failed appends | append p50 µs | append p99 µs | append max µs | waly CPU µs/tx | broker CPU µs/tx | other load |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    for target in "${TARGETS[@]}"; do
        c_tps=(); c_lat=(); c_p50=(); c_p99=(); c_ntx=(); c_app=(); c_fail=(); c_ap50=(); c_ap99=(); c_amax=(); c_wcpu=(); c_kcpu=(); c_oth=()
        for ((round = 1; round <= RUNS; round++)); do
            rkey="$target#$round"
            c_app+=("${R_APPENDS[$rkey]:--}"); c_fail+=("${R_FAILED[$rkey]:--}"); c_oth+=("${R_OTHER[$rkey]:--}")
            c_ap50+=("${R_AP50[$rkey]:--}"); c_ap99+=("${R_AP99[$rkey]:--}"); c_amax+=("${R_AMAX[$rkey]:--}")
            if [ "${R_TPS[$rkey]:-error}" = error ]; then
                c_tps+=(error); c_lat+=(-); c_p50+=(-); c_p99+=(-); c_ntx+=(-); c_wcpu+=(-); c_kcpu+=(-); continue
            fi
            c_tps+=("$(f0 "${R_TPS[$rkey]}")"); c_lat+=("${R_LAT[$rkey]}")
            c_p50+=("${R_P50[$rkey]}"); c_p99+=("${R_P99[$rkey]}"); c_ntx+=("${R_NTX[$rkey]}")
            c_wcpu+=("$(or_dash "${R_WCPU[$rkey]:-}" f1)"); c_kcpu+=("$(or_dash "${R_KCPU[$rkey]:-}" f1)")
        done
        echo "| $target | $(join "${c_tps[@]}") | $(join "${c_lat[@]}") | $(join "${c_p50[@]}") | $(join "${c_p99[@]}") | $(join "${c_ntx[@]}") | $(join "${c_app[@]}") | $(join "${c_fail[@]}") | $(join "${c_ap50[@]}") | $(join "${c_ap99[@]}") | $(join "${c_amax[@]}") | $(join "${c_wcpu[@]}") | $(join "${c_kcpu[@]}") | $(join "${c_oth[@]}") |"
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
