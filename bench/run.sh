#!/usr/bin/env bash
# waly read-path benchmark.
#
# Starts a private Postgres 15 cluster, PgBouncer (session mode) and waly in
# front of it, runs pgbench select-only (-S) against each of them, and
# measures the resident memory of waly and PgBouncer while they hold idle
# client sessions. Prints a Markdown report and saves it to
# bench/results/read-latest.md.
#
# Usage: bench/run.sh            (as root; Postgres and PgBouncer run as `postgres`)
#
# Environment knobs:
#   DURATION     seconds per pgbench run                 (default 15)
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

export PGPASSWORD=$PG_PASSWORD
export PGCONNECT_TIMEOUT=5
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS PGAPPNAME || true

log()  { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[bench %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '[bench %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- preflight
[ "$(id -u)" -eq 0 ] || die "run as root (Postgres and PgBouncer are started as the postgres user via runuser)"
id postgres >/dev/null 2>&1 || die "no 'postgres' system user"
for tool in pgbench psql runuser ss; do
    command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"
done
[ -x "$PGBOUNCER_BIN" ] || die "pgbouncer not found at $PGBOUNCER_BIN"
for port in $PG_PORT $PGB_PORT $WALY_PORT; do
    if ss -Hltn "sport = :$port" | grep -q .; then
        die "port $port is already in use"
    fi
done

# ---------------------------------------------------------------- state + cleanup
TMP=$(mktemp -d /tmp/waly-bench.XXXXXX)
chmod 755 "$TMP"
PG_DIR="$TMP/pg"              # owned by postgres
PGDATA_DIR="$PG_DIR/data"
PGB_DIR="$TMP/pgbouncer"      # owned by postgres
WALY_DATA="$TMP/waly-data"
LOG_DIR="$TMP/pgbench-logs"
IDLE_DIR="$TMP/idle"
mkdir -p "$PG_DIR" "$PGB_DIR" "$WALY_DATA" "$LOG_DIR" "$IDLE_DIR"
chown postgres: "$PG_DIR" "$PGB_DIR"

PG_STARTED=0
PG_VIA_SCRIPT=0
PGB_PID=""
WALY_PID=""
IDLE_PIDS=()
IDLE_FD_OPEN=0

stop_pid() { # stop_pid PID NAME: TERM, wait up to 10 s, then KILL
    local pid=$1 name=$2 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    warn "$name (pid $pid) did not stop after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

pg_stop() {
    if [ "$PG_VIA_SCRIPT" -eq 1 ]; then
        "$REPO_DIR/scripts/pg.sh" stop "$PGDATA_DIR" >&2 || true
    fi
    if [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    if [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        local pid
        pid=$(head -1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true)
        [ -n "$pid" ] && stop_pid "$pid" postgres
    fi
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if [ "$IDLE_FD_OPEN" -eq 1 ]; then exec 9>&-; IDLE_FD_OPEN=0; fi
    for pid in "${IDLE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${IDLE_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    [ -n "$WALY_PID" ] && stop_pid "$WALY_PID" waly
    [ -n "$PGB_PID" ] && stop_pid "$PGB_PID" pgbouncer
    [ "$PG_STARTED" -eq 1 ] && pg_stop
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers
psql_q() { # psql_q PORT SQL  -> unaligned tuples-only output
    psql -X -q -A -t -h 127.0.0.1 -p "$1" -U "$PG_USER" -d "$DB" -v ON_ERROR_STOP=1 -c "$2"
}

can_query() { # can_query PORT: an authenticated round trip succeeds
    timeout 5 psql -X -q -A -t -h 127.0.0.1 -p "$1" -U "$PG_USER" -d "$DB" -c 'SELECT 1' 2>/dev/null | grep -qx 1
}

rss_kib() { # rss_kib PID -> VmRSS in KiB
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

fmt_mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# ---------------------------------------------------------------- 1. Postgres
pg_start_inline() {
    local pwfile="$PG_DIR/pwfile"
    printf '%s\n' "$PG_PASSWORD" > "$pwfile"
    chown postgres: "$pwfile"
    chmod 600 "$pwfile"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA_DIR" -U "$PG_USER" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-instructions >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pwfile"
    cat >> "$PGDATA_DIR/postgresql.conf" <<EOF

# waly bench
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGDATA_DIR'
max_connections = 300
max_prepared_transactions = 64
password_encryption = 'scram-sha-256'
EOF
    PG_STARTED=1
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_DIR/postgres.log" -w -t 60 start >/dev/null \
        || { tail -n 30 "$PG_DIR/postgres.log" >&2; die "postgres failed to start"; }
}

log "temp dir: $TMP"
if [ -x "$REPO_DIR/scripts/pg.sh" ]; then
    log "starting Postgres on $PG_PORT via scripts/pg.sh"
    PG_STARTED=1
    PG_VIA_SCRIPT=1
    if ! "$REPO_DIR/scripts/pg.sh" start "$PGDATA_DIR" "$PG_PORT" >&2 || ! can_query "$PG_PORT"; then
        warn "scripts/pg.sh start did not give a usable cluster on $PG_PORT; starting Postgres inline instead"
        pg_stop
        PG_VIA_SCRIPT=0
        PG_STARTED=0
        rm -rf "$PGDATA_DIR"
        pg_start_inline
    fi
else
    log "starting Postgres on $PG_PORT (inline; scripts/pg.sh not found)"
    pg_start_inline
fi
can_query "$PG_PORT" || die "cannot run a query on Postgres at 127.0.0.1:$PG_PORT with password auth"
PG_VERSION=$(psql_q "$PG_PORT" 'SHOW server_version')
log "Postgres $PG_VERSION up"

# ---------------------------------------------------------------- 2. PgBouncer
SCRAM_SECRET=$(psql_q "$PG_PORT" "SELECT rolpassword FROM pg_authid WHERE rolname = '$PG_USER'")
case "$SCRAM_SECRET" in
    SCRAM-SHA-256*|md5*) ;;
    *) die "unexpected password secret format for $PG_USER" ;;
esac
printf '"%s" "%s"\n' "$PG_USER" "$SCRAM_SECRET" > "$PGB_DIR/userlist.txt"
cat > "$PGB_DIR/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$PG_PORT

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $PGB_DIR
auth_type = scram-sha-256
auth_file = $PGB_DIR/userlist.txt
admin_users = $PG_USER
pool_mode = session
max_client_conn = 400
default_pool_size = 20
logfile = $PGB_DIR/pgbouncer.log
pidfile = $PGB_DIR/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
EOF
chown postgres: "$PGB_DIR"/*
chmod 600 "$PGB_DIR/userlist.txt"
log "starting PgBouncer on $PGB_PORT (session mode)"
runuser -u postgres -- "$PGBOUNCER_BIN" -d -q "$PGB_DIR/pgbouncer.ini" \
    || { tail -n 30 "$PGB_DIR/pgbouncer.log" >&2 || true; die "pgbouncer failed to start"; }
for _ in $(seq 1 100); do
    [ -s "$PGB_DIR/pgbouncer.pid" ] && break
    sleep 0.1
done
PGB_PID=$(cat "$PGB_DIR/pgbouncer.pid" 2>/dev/null || true)
[ -n "$PGB_PID" ] || die "pgbouncer wrote no pid file"
ok=0
for _ in $(seq 1 50); do
    if can_query "$PGB_PORT"; then ok=1; break; fi
    sleep 0.2
done
[ "$ok" -eq 1 ] || { tail -n 30 "$PGB_DIR/pgbouncer.log" >&2; die "cannot query through pgbouncer on $PGB_PORT"; }
PGB_VERSION=$("$PGBOUNCER_BIN" --version 2>/dev/null | head -1)
log "$PGB_VERSION up (pid $PGB_PID)"

# ---------------------------------------------------------------- 3. waly
WALY_OK=0
WALY_NOTE=""
WALY_DEBUG_WARNING=""
WALY_EXE=${WALY_BIN:-target/release/waly}
if [ ! -x "$WALY_EXE" ]; then
    if [ -x target/debug/waly ]; then
        WALY_DEBUG_WARNING="waly binary is a DEBUG build (target/debug/waly): its numbers are NOT representative; build with 'cargo build --release'"
        warn "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        warn "$WALY_EXE not found; falling back to target/debug/waly."
        warn "DEBUG BUILD NUMBERS ARE NOT REPRESENTATIVE of waly's performance."
        warn "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
        WALY_EXE=target/debug/waly
    else
        WALY_EXE=""
        WALY_NOTE="waly skipped: no binary at ${WALY_BIN:-target/release/waly} or target/debug/waly"
        warn "$WALY_NOTE"
    fi
fi
if [ -n "$WALY_EXE" ]; then
    case "$WALY_EXE" in /*) ;; *) WALY_EXE="$REPO_DIR/$WALY_EXE" ;; esac
    cat > "$TMP/waly.yaml" <<EOF
listen: 127.0.0.1:$WALY_PORT
upstream: postgres://127.0.0.1:$PG_PORT
data_dir: $WALY_DATA
log_format: human
users:
  - name: $PG_USER
    method: scram-sha-256
    password_env: WALY_PASSWORD_POSTGRES
EOF
    log "starting waly on $WALY_PORT ($WALY_EXE)"
    WALY_PASSWORD_POSTGRES=$PG_PASSWORD RUST_LOG=warn \
        "$WALY_EXE" serve --config "$TMP/waly.yaml" >"$TMP/waly.log" 2>&1 </dev/null &
    WALY_PID=$!
    deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! kill -0 "$WALY_PID" 2>/dev/null; then break; fi
        if can_query "$WALY_PORT"; then WALY_OK=1; break; fi
        sleep 0.25
    done
    if [ "$WALY_OK" -eq 1 ]; then
        log "waly up (pid $WALY_PID)"
    else
        if kill -0 "$WALY_PID" 2>/dev/null; then
            WALY_NOTE="waly skipped: started but did not answer an authenticated query on $WALY_PORT within 10 s"
            stop_pid "$WALY_PID" waly
        else
            wait "$WALY_PID" 2>/dev/null && rc=0 || rc=$?
            WALY_NOTE="waly skipped: process exited during startup (exit status $rc)"
        fi
        WALY_PID=""
        if [ -s "$TMP/waly.log" ]; then
            warn "$WALY_NOTE; last lines of its log:"
            tail -n 15 "$TMP/waly.log" | sed 's/^/    waly| /' >&2 || true
        else
            warn "$WALY_NOTE; it wrote no output"
        fi
    fi
fi

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

declare -A TPS P50 P99 NTX
RUN_ERRORS=()
for proto in simple prepared; do
    for clients in 1 8; do
        if [ "$clients" -eq 1 ]; then jobs=1; else jobs=2; fi
        for target in "${TARGETS[@]}"; do
            key="$proto/$clients/$target"
            id="$proto-c$clients-$target"
            port=$(port_of "$target")
            log "run $id: pgbench -S -n -M $proto -c $clients -j $jobs -T $DURATION -> $target:$port"
            rc=0
            pgbench -S -n -M "$proto" -c "$clients" -j "$jobs" -T "$DURATION" \
                --log --log-prefix="$LOG_DIR/$id" \
                -h 127.0.0.1 -p "$port" -U "$PG_USER" "$DB" >"$LOG_DIR/$id.out" 2>&1 || rc=$?
            tps=$(awk '/^tps = / { print $3; exit }' "$LOG_DIR/$id.out")
            failed=$(awk -F'[: ]+' '/^number of failed transactions/ { print $5; exit }' "$LOG_DIR/$id.out")
            shopt -s nullglob
            logs=("$LOG_DIR/$id".[0-9]*)
            shopt -u nullglob
            if [ "$rc" -ne 0 ] || [ -z "$tps" ] || [ "${#logs[@]}" -eq 0 ]; then
                RUN_ERRORS+=("$id: pgbench exit status $rc: $(grep -m1 -i 'error\|fatal\|abort' "$LOG_DIR/$id.out" || tail -n1 "$LOG_DIR/$id.out")")
                warn "run $id failed (exit $rc); last lines:"
                tail -n 5 "$LOG_DIR/$id.out" | sed 's/^/    pgbench| /' >&2
                TPS[$key]=error
                continue
            fi
            read -r n p50 p99 _mean < <("$BENCH_DIR/latency.sh" "${logs[@]}")
            TPS[$key]=$tps; P50[$key]=$p50; P99[$key]=$p99; NTX[$key]=$n
            rm -f "${logs[@]}"
            if [ "${failed:-0}" != 0 ]; then RUN_ERRORS+=("$id: $failed failed transactions"); fi
            log "  tps=$tps p50=${p50}ms p99=${p99}ms (n=$n, failed=${failed:-0})"
        done
    done
done

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
git_rev() {
    local rev
    rev=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null) || { echo "none (no commits)"; return; }
    if [ -n "$(git -C "$REPO_DIR" status --porcelain 2>/dev/null)" ]; then rev="$rev (dirty)"; fi
    echo "$rev"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }

REPORT="$TMP/report.md"
{
    echo "# waly read-path benchmark"
    echo
    echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "- host: $(uname -srm), nproc $(nproc), $(awk '/^MemTotal:/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo)"
    echo "- cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "- waly git rev: $(git_rev)"
    if [ "$WALY_OK" -eq 1 ]; then
        echo "- waly binary: ${WALY_EXE#"$REPO_DIR"/}"
    else
        echo "- waly: not measured (${WALY_NOTE#waly skipped: })"
    fi
    if [ "$WALY_OK" -eq 1 ] && [ -n "$WALY_DEBUG_WARNING" ]; then echo "- **WARNING: $WALY_DEBUG_WARNING**"; fi
    echo "- Postgres $PG_VERSION (direct :$PG_PORT), $PGB_VERSION (session mode, pool 20, :$PGB_PORT), waly (:$WALY_PORT)"
    echo "- pgbench -S (select-only), scale $SCALE, ${DURATION}s per run, TCP 127.0.0.1, scram-sha-256; targets interleaved per configuration"
    echo "- latency percentiles: nearest-rank over every transaction in the pgbench per-transaction logs (all threads combined)"
    echo
    echo "| protocol | clients | target | TPS | ratio vs direct | p50 ms | p99 ms | added p50 vs direct (ms) |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|"
    for proto in simple prepared; do
        for clients in 1 8; do
            dkey="$proto/$clients/direct"
            for target in direct pgbouncer waly; do
                key="$proto/$clients/$target"
                tps=${TPS[$key]:-}
                if [ -z "$tps" ]; then
                    echo "| $proto | $clients | $target | skipped | - | - | - | - |"
                elif [ "$tps" = error ]; then
                    echo "| $proto | $clients | $target | error | - | - | - | - |"
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
                    echo "| $proto | $clients | $target | $tps_s | $r | ${P50[$key]} | ${P99[$key]} | $added |"
                fi
            done
        done
    done
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
