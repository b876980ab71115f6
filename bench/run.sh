#!/usr/bin/env bash
# waly read-path benchmark.
#
# Starts a private Postgres 15 cluster, PgBouncer (session mode) and waly in
# front of it, runs pgbench select-only (-S) against each of them, and
# measures the resident memory of waly and PgBouncer while they hold idle
# client sessions. Prints a Markdown report and saves it to
# bench/results/read-latest.md.
#
# For every pgbench run through a proxy, the proxy's CPU time during the run
# (utime+stime of the whole process, all threads, from /proc/PID/stat) is
# divided by the transactions pgbench processed: "proxy CPU us/tx". On a
# small shared machine this is the steadiest figure: it is the CPU the proxy
# takes away from Postgres and the application for each transaction.
#
# With RUNS > 1 the whole set of configurations is run RUNS times (rounds);
# within a round the three targets are interleaved per configuration, and
# their order is rotated from one round to the next. The table then shows,
# per configuration and target, the median of each figure over the rounds.
#
# Usage: bench/run.sh            (as root; Postgres and PgBouncer run as `postgres`)
#
# Environment knobs:
#   DURATION     seconds per pgbench run                 (default 15)
#   RUNS         repetitions of every configuration; the report shows
#                medians over them                       (default 1)
#   SCALE        pgbench -i scale factor                 (default 10)
#   WALY_BIN     waly binary (default target/release/waly, falls back to
#                target/debug/waly with a warning)
#   WARMUP       seconds of direct warm-up before measuring (default 5)
#   IDLE_CONNS   idle sessions for the memory test       (default 200)
#   IDLE_HOLD    seconds to hold them before reading RSS (default 3)
#   IDLE_BATCH   sessions opened concurrently per batch  (default 20)
#   IDLE_TIMEOUT seconds allowed to open all of them     (default 120)
#   PG_BIN       Postgres server binaries                (default /usr/lib/postgresql/15/bin)
#   PGBOUNCER_BIN                                        (default /usr/sbin/pgbouncer)
set -euo pipefail

DURATION=${DURATION:-15}
RUNS=${RUNS:-1}
SCALE=${SCALE:-10}
WARMUP=${WARMUP:-5}
IDLE_CONNS=${IDLE_CONNS:-200}
IDLE_HOLD=${IDLE_HOLD:-3}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}

PG_PORT=55432
PGB_PORT=55433
WALY_PORT=55434
PG_USER=postgres
PG_PASSWORD=postgres
DB=postgres

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
cd "$REPO_DIR"

RESULTS_DIR="$BENCH_DIR/results"
RESULT_FILE="$RESULTS_DIR/read-latest.md"

# shared setup: Postgres, PgBouncer, waly, CPU accounting (bench/lib.sh)
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"

bench_preflight
bench_setup
IDLE_DIR="$TMP/idle"
mkdir -p "$IDLE_DIR"
IDLE_PIDS=()
IDLE_FD_OPEN=0
bench_cleanup_hook() { # the idle-memory test's psql sessions
    if [ "$IDLE_FD_OPEN" -eq 1 ]; then exec 9>&-; IDLE_FD_OPEN=0; fi
    for pid in "${IDLE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${IDLE_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
}

# ---------------------------------------------------------------- 1-3. Postgres, PgBouncer, waly
bench_start_postgres
bench_start_pgbouncer
bench_find_waly
[ -n "$WALY_EXE" ] && bench_start_waly human "$TMP/waly.log"

TARGETS=(direct pgbouncer)
[ "$WALY_OK" -eq 1 ] && TARGETS+=(waly)
port_of() {
    case "$1" in
        direct) echo "$PG_PORT" ;;
        pgbouncer) echo "$PGB_PORT" ;;
        waly) echo "$WALY_PORT" ;;
    esac
}

# ---------------------------------------------------------------- 4. pgbench
log "pgbench -i -s $SCALE (direct)"
pgbench -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$DB" >"$TMP/pgbench-init.log" 2>&1 \
    || { tail -n 20 "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

if [ "$WARMUP" -gt 0 ]; then
    log "warm-up: ${WARMUP}s select-only, direct"
    pgbench -S -n -T "$WARMUP" -c 2 -j 2 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" "$DB" >/dev/null 2>&1 || true
fi

pid_of() {
    case "$1" in
        pgbouncer) echo "$PGB_PID" ;;
        waly) echo "$WALY_PID" ;;
        *) echo "" ;;
    esac
}

# Per-round values, keyed "proto/clients/target#round"; medians keyed "proto/clients/target".
declare -A R_TPS R_P50 R_P99 R_CPU R_NTX R_OTHER
declare -A TPS P50 P99 CPU NOK
RUN_ERRORS=()
OTHER_ALL=()
OTHER_MAX=0
OTHER_MAX_ID=""

run_one() { # run_one PROTO CLIENTS TARGET ROUND
    local proto=$1 clients=$2 target=$3 round=$4
    local key="$1/$2/$3" id="$1-c$2-$3" rkey="$1/$2/$3#$4"
    # shellcheck disable=SC2034  # tps ... p99 are set by bench_read_pgbench
    local jobs port pid rc tps lat ntx failed retried n p50 p99
    local cpu0="" cpu1="" h0 h1 t0 t1 ours0 ours1 cpu_us other
    [ "$RUNS" -gt 1 ] && id="$id-r$round"
    if [ "$clients" -eq 1 ]; then jobs=1; else jobs=2; fi
    port=$(port_of "$target")
    pid=$(pid_of "$target")
    log "run $id: pgbench -S -n -M $proto -c $clients -j $jobs -T $DURATION -> $target:$port"
    # snapshot: proxy CPU; host CPU; CPU of everything this benchmark runs
    # (Postgres, both proxies, pgbench) to estimate the load others put on the host
    [ -n "$pid" ] && cpu0=$(proc_ticks "$pid")
    read -r h0 _ < <(host_ticks); t0=$(date +%s.%N)
    ours_ticks; ours0=$OURS_TICKS
    rc=0
    pgbench -S -n -M "$proto" -c "$clients" -j "$jobs" -T "$DURATION" \
        --log --log-prefix="$LOG_DIR/$id" \
        -h 127.0.0.1 -p "$port" -U "$PG_USER" "$DB" >"$LOG_DIR/$id.out" 2>&1 || rc=$?
    sleep 0.2   # let the proxy and Postgres finish tearing the sessions down
    [ -n "$pid" ] && cpu1=$(proc_ticks "$pid")
    read -r h1 _ < <(host_ticks); t1=$(date +%s.%N)
    ours_ticks; ours1=$OURS_TICKS
    other=$(awk -v b=$((h1 - h0 - (ours1 - ours0))) -v hz="$CLK_TCK" -v a="$t0" -v z="$t1" \
        'BEGIN { o = b / hz / (z - a); if (o < 0) o = 0; printf "%.2f", o }')
    R_OTHER[$rkey]=$other
    OTHER_ALL+=("$other")
    if awk -v o="$other" -v m="$OTHER_MAX" 'BEGIN { exit !(o > m) }'; then OTHER_MAX=$other; OTHER_MAX_ID=$id; fi

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
    R_TPS[$rkey]=$tps; R_P50[$rkey]=$p50; R_P99[$rkey]=$p99; R_NTX[$rkey]=${ntx:-$n}; R_CPU[$rkey]=$cpu_us
    if [ "${failed:-0}" != 0 ]; then RUN_ERRORS+=("$id: $failed failed transactions"); fi
    log "  tps=$tps p50=${p50}ms p99=${p99}ms (n=${ntx:-?}, logged=$n, failed=${failed:-0})${cpu_us:+ proxy CPU=${cpu_us}us/tx} other host load=${other} cores"
}

for ((round = 1; round <= RUNS; round++)); do
    [ "$RUNS" -gt 1 ] && log "round $round of $RUNS"
    # rotate the target order from round to round so none always runs first
    order=()
    for ((i = 0; i < ${#TARGETS[@]}; i++)); do
        order+=("${TARGETS[$(( (i + round - 1) % ${#TARGETS[@]} ))]}")
    done
    for proto in simple prepared; do
        for clients in 1 8; do
            for target in "${order[@]}"; do
                run_one "$proto" "$clients" "$target" "$round"
            done
        done
    done
done

# medians over the rounds that succeeded
for proto in simple prepared; do
    for clients in 1 8; do
        for target in "${TARGETS[@]}"; do
            key="$proto/$clients/$target"
            v_tps=(); v_p50=(); v_p99=(); v_cpu=()
            for ((round = 1; round <= RUNS; round++)); do
                rkey="$key#$round"
                [ -n "${R_TPS[$rkey]:-}" ] && [ "${R_TPS[$rkey]}" != error ] || continue
                v_tps+=("${R_TPS[$rkey]}"); v_p50+=("${R_P50[$rkey]}"); v_p99+=("${R_P99[$rkey]}")
                [ -n "${R_CPU[$rkey]:-}" ] && v_cpu+=("${R_CPU[$rkey]}")
            done
            NOK[$key]=${#v_tps[@]}
            if [ "${#v_tps[@]}" -eq 0 ]; then TPS[$key]=error; continue; fi
            TPS[$key]=$(median "${v_tps[@]}")
            P50[$key]=$(median "${v_p50[@]}")
            P99[$key]=$(median "${v_p99[@]}")
            CPU[$key]=$(median "${v_cpu[@]+"${v_cpu[@]}"}")
            if [ "${#v_tps[@]}" -lt "$RUNS" ]; then
                RUN_ERRORS+=("$proto-c$clients-$target: medians over ${#v_tps[@]} of $RUNS rounds (the others failed)")
            fi
        done
    done
done
OTHER_MEDIAN=$(median "${OTHER_ALL[@]+"${OTHER_ALL[@]}"}")

# ---------------------------------------------------------------- 5. idle memory
# Each idle session is a psql process that connects (full authentication),
# prints "ready" via the client-side \echo (no query is sent) and then blocks
# reading its script from a FIFO. The script holds the FIFO's write end open
# on fd 9, so the sessions stay connected and idle until fd 9 is closed.
# Sessions are opened in batches of IDLE_BATCH, each batch fully established
# before the next, so a burst of concurrent SCRAM handshakes cannot time out.
IDLE_BATCH=${IDLE_BATCH:-20}
IDLE_TIMEOUT=${IDLE_TIMEOUT:-120}   # seconds allowed to establish all sessions
declare -A RSS_BASE RSS_HELD READY UPSTREAM ESTAB CONNECT_S
idle_ready() { # idle_ready TARGET INDEX: session printed "ready" and is alive
    grep -qx ready "$IDLE_DIR/$1.$2.out" 2>/dev/null && kill -0 "${IDLE_PIDS[$(($2 - 1))]}" 2>/dev/null
}
idle_test() { # idle_test TARGET PORT PID
    local target=$1 port=$2 pid=$3 fifo="$IDLE_DIR/$1.fifo"
    local i j first last pending deadline t0 ready=0
    RSS_BASE[$target]=$(rss_kib "$pid")
    mkfifo "$fifo"
    exec 9<>"$fifo"
    IDLE_FD_OPEN=1
    IDLE_PIDS=()
    t0=$(date +%s.%N)
    deadline=$((SECONDS + IDLE_TIMEOUT))
    for ((first = 1; first <= IDLE_CONNS; first += IDLE_BATCH)); do
        last=$((first + IDLE_BATCH - 1))
        [ "$last" -gt "$IDLE_CONNS" ] && last=$IDLE_CONNS
        for ((i = first; i <= last; i++)); do
            PGCONNECT_TIMEOUT=$IDLE_TIMEOUT \
                psql -X -q -h 127.0.0.1 -p "$port" -U "$PG_USER" -d "$DB" -c '\echo ready' -f - \
                <"$fifo" >"$IDLE_DIR/$target.$i.out" 2>&1 9>&- &
            IDLE_PIDS+=("$!")
        done
        # wait until every session of this batch is ready or has exited
        while [ "$SECONDS" -lt "$deadline" ]; do
            pending=0
            for ((j = first; j <= last; j++)); do
                if ! grep -qx ready "$IDLE_DIR/$target.$j.out" 2>/dev/null \
                    && kill -0 "${IDLE_PIDS[$((j - 1))]}" 2>/dev/null; then
                    pending=1; break
                fi
            done
            [ "$pending" -eq 0 ] && break
            sleep 0.1
        done
        [ "$SECONDS" -ge "$deadline" ] && { warn "$target: idle sessions not established within ${IDLE_TIMEOUT}s"; break; }
    done
    CONNECT_S[$target]=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    sleep "$IDLE_HOLD"
    for ((i = 1; i <= ${#IDLE_PIDS[@]}; i++)); do
        idle_ready "$target" "$i" && ready=$((ready + 1))
    done
    READY[$target]=$ready
    ESTAB[$target]=$(ss -Htn state established "dport = :$port" | wc -l)
    RSS_HELD[$target]=$(rss_kib "$pid")
    UPSTREAM[$target]=$(psql_q "$PG_PORT" "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()" 2>/dev/null || echo '?')
    if [ "$ready" -lt "$IDLE_CONNS" ]; then
        warn "$target: only $ready of $IDLE_CONNS idle sessions were established; first errors:"
        cat "$IDLE_DIR/$target".*.out 2>/dev/null | grep -v -x ready | head -n 3 | sed 's/^/    psql| /' >&2 || true
    fi
    exec 9>&-
    IDLE_FD_OPEN=0
    for i in "${IDLE_PIDS[@]}"; do kill -TERM "$i" 2>/dev/null || true; done  # any still connecting
    for i in "${IDLE_PIDS[@]}"; do wait "$i" 2>/dev/null || true; done
    IDLE_PIDS=()
    rm -f "$fifo" "$IDLE_DIR/$target".*.out
    log "  $target: ${READY[$target]}/$IDLE_CONNS sessions held (${ESTAB[$target]} established TCP, opened in ${CONNECT_S[$target]}s), RSS $(fmt_mib "${RSS_BASE[$target]}") -> $(fmt_mib "${RSS_HELD[$target]}"), Postgres client backends: ${UPSTREAM[$target]}"
}

log "idle memory: $IDLE_CONNS idle sessions each (held ${IDLE_HOLD}s)"
IDLE_TARGETS=(pgbouncer)
idle_test pgbouncer "$PGB_PORT" "$PGB_PID"
if [ "$WALY_OK" -eq 1 ]; then
    if kill -0 "$WALY_PID" 2>/dev/null; then
        IDLE_TARGETS+=(waly)
        idle_test waly "$WALY_PORT" "$WALY_PID"
    else
        WALY_NOTE="waly exited before the idle-memory test"
        warn "$WALY_NOTE"
    fi
fi

# ---------------------------------------------------------------- 6. report

REPORT="$TMP/report.md"
{
    echo "# waly read-path benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- host: $(uname -srm), nproc $(nproc), $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "- cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "- waly git rev: $(git_rev)"
    if [ "$WALY_OK" -eq 1 ]; then
        echo "- waly binary: ${WALY_EXE#"$REPO_DIR"/}, build profile: $WALY_PROFILE, binary modified $WALY_BUILT"
        if [ -n "$WALY_WORKERS" ]; then
            echo "- waly worker threads: $WALY_WORKERS (\`workers=$WALY_WORKERS\` in its startup log)"
        else
            echo "- waly worker threads: not reported in its startup log"
        fi
    else
        echo "- waly: not measured (${WALY_NOTE#waly skipped: })"
    fi
    if [ "$WALY_OK" -eq 1 ] && [ -n "$WALY_DEBUG_WARNING" ]; then echo "- **WARNING: $WALY_DEBUG_WARNING**"; fi
    echo "- Postgres $PG_VERSION (direct :$PG_PORT), $PGB_VERSION (session mode, pool 20, :$PGB_PORT), waly (:$WALY_PORT)"
    echo "- pgbench -S (select-only), scale $SCALE, ${DURATION}s per run, TCP 127.0.0.1, scram-sha-256; targets interleaved per configuration"
    if [ "$RUNS" -gt 1 ]; then
        echo "- repetitions: $RUNS rounds over all configurations (target order rotated each round); every figure in the table is the median over the $RUNS runs of that configuration and target, the ratio and added p50 are computed from the medians"
    else
        echo "- repetitions: 1 (one run per configuration and target; no medians)"
    fi
    echo "- latency percentiles: nearest-rank over every transaction in the pgbench per-transaction logs (all threads combined)"
    echo "- proxy CPU µs/tx: user+system CPU time of the whole proxy process (all threads; /proc/PID/stat utime+stime, CLK_TCK $CLK_TCK) from just before pgbench starts to 0.2 s after it exits (so including its connection setup and teardown), divided by the transactions pgbench processed"
    if [ -n "$OTHER_MEDIAN" ]; then
        echo "- other load on the host during the runs (host CPU busy incl. steal, minus this benchmark's Postgres, proxies and pgbench): median $(awk -v o="$OTHER_MEDIAN" 'BEGIN { printf "%.2f", o }') cores, max $OTHER_MAX cores (run ${OTHER_MAX_ID:-?}), of $(nproc); host load average at report time $(cut -d' ' -f1-3 /proc/loadavg)"
    fi
    echo
    echo "| protocol | clients | target | TPS | ratio vs direct | p50 ms | p99 ms | added p50 vs direct (ms) | proxy CPU µs/tx |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
    for proto in simple prepared; do
        for clients in 1 8; do
            dkey="$proto/$clients/direct"
            for target in direct pgbouncer waly; do
                key="$proto/$clients/$target"
                tps=${TPS[$key]:-}
                if [ -z "$tps" ]; then
                    echo "| $proto | $clients | $target | skipped | - | - | - | - | - |"
                elif [ "$tps" = error ]; then
                    echo "| $proto | $clients | $target | error | - | - | - | - | - |"
                else
                    tps_s=$(awk -v t="$tps" 'BEGIN { printf "%.0f", t }')
                    dtps=${TPS[$dkey]:-}
                    if [ "$target" = direct ]; then
                        r="1.00x"; added="0.000"
                    elif [ -n "$dtps" ] && [ "$dtps" != error ]; then
                        r=$(ratio "$tps" "$dtps"); added=$(delta "${P50[$key]}" "${P50[$dkey]}")
                    else
                        r="-"; added="-"
                    fi
                    p50_s=$(awk -v v="${P50[$key]}" 'BEGIN { printf "%.3f", v }')
                    p99_s=$(awk -v v="${P99[$key]}" 'BEGIN { printf "%.3f", v }')
                    if [ "$target" = direct ] || [ -z "${CPU[$key]:-}" ]; then
                        cpu_s="-"
                    else
                        cpu_s=$(awk -v v="${CPU[$key]}" 'BEGIN { printf "%.1f", v }')
                    fi
                    echo "| $proto | $clients | $target | $tps_s | $r | $p50_s | $p99_s | $added | $cpu_s |"
                fi
            done
        done
    done
    join() { local IFS=,; echo "$*" | sed 's/,/, /g'; }
    if [ "$RUNS" -gt 1 ]; then
        echo
        echo "## Per-round values ($RUNS rounds)"
        echo
        echo "Each cell lists round 1, 2, ... in order; \"other load\" is the host CPU (cores) used by processes outside this benchmark during that run."
        echo
        echo "| protocol | clients | target | TPS | p50 ms | p99 ms | proxy CPU µs/tx | other load |"
        echo "|---|---:|---|---|---|---|---|---|"
        for proto in simple prepared; do
            for clients in 1 8; do
                for target in "${TARGETS[@]}"; do
                    key="$proto/$clients/$target"
                    c_tps=(); c_p50=(); c_p99=(); c_cpu=(); c_oth=()
                    for ((round = 1; round <= RUNS; round++)); do
                        rkey="$key#$round"
                        c_oth+=("${R_OTHER[$rkey]:--}")
                        if [ "${R_TPS[$rkey]:-error}" = error ]; then
                            c_tps+=(error); c_p50+=(-); c_p99+=(-); c_cpu+=(-); continue
                        fi
                        c_tps+=("$(awk -v t="${R_TPS[$rkey]}" 'BEGIN { printf "%.0f", t }')")
                        c_p50+=("${R_P50[$rkey]}"); c_p99+=("${R_P99[$rkey]}")
                        if [ -n "${R_CPU[$rkey]:-}" ]; then
                            c_cpu+=("$(awk -v v="${R_CPU[$rkey]}" 'BEGIN { printf "%.1f", v }')")
                        else
                            c_cpu+=(-)
                        fi
                    done
                    echo "| $proto | $clients | $target | $(join "${c_tps[@]}") | $(join "${c_p50[@]}") | $(join "${c_p99[@]}") | $(join "${c_cpu[@]}") | $(join "${c_oth[@]}") |"
                done
            done
        done
    fi
    echo
    echo "## Idle memory ($IDLE_CONNS idle authenticated sessions, VmRSS)"
    echo
    for target in pgbouncer waly; do
        if [ -n "${RSS_HELD[$target]:-}" ]; then
            base=${RSS_BASE[$target]}; held=${RSS_HELD[$target]}; n=${READY[$target]}
            per=$(awk -v b="$base" -v h="$held" -v n="$n" 'BEGIN { if (n > 0) printf "%.1f KiB/session", (h - b) / n; else print "-" }')
            echo "- $target: $(fmt_mib "$base") with no clients -> $(fmt_mib "$held") with $n/$IDLE_CONNS idle sessions (+$per; opened in ${CONNECT_S[$target]}s in batches of $IDLE_BATCH; ${ESTAB[$target]} established client TCP connections and ${UPSTREAM[$target]} Postgres client backends while held)"
        else
            echo "- $target: skipped${WALY_NOTE:+ (${WALY_NOTE#waly skipped: })}"
        fi
    done
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
