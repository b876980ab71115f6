# shellcheck shell=bash
# Shared parts of waly's benchmarks (bench/run.sh, bench/write.sh). Source it, do not run it.
#
# The sourcing script sets, before calling anything here:
#   DURATION RUNS PG_BIN PGBOUNCER_BIN PG_PORT PGB_PORT WALY_PORT PG_USER PG_PASSWORD DB
#   BENCH_DIR REPO_DIR
# and may define `bench_cleanup_hook` (run first on exit) and set PG_EXTRA_CONF (lines appended to
# postgresql.conf when the cluster is created inline).
#
# Call order: bench_preflight, bench_setup (temp dir + exit trap), bench_start_postgres,
# bench_start_pgbouncer, bench_find_waly, bench_start_waly.

export PGPASSWORD=$PG_PASSWORD
export PGCONNECT_TIMEOUT=5
unset PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS PGAPPNAME || true

log()  { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[bench %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die()  { printf '[bench %s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# ---------------------------------------------------------------- preflight
bench_preflight() { # bench_preflight [EXTRA_TOOL...]
    local tool port
    case "$RUNS" in ''|*[!0-9]*|0) die "RUNS must be a positive integer (got '$RUNS')" ;; esac
    case "$DURATION" in ''|*[!0-9]*|0) die "DURATION must be a positive integer of seconds (got '$DURATION')" ;; esac
    CLK_TCK=$(getconf CLK_TCK)
    [ "$(id -u)" -eq 0 ] || die "run as root (Postgres and PgBouncer are started as the postgres user via runuser)"
    id postgres >/dev/null 2>&1 || die "no 'postgres' system user"
    for tool in pgbench psql runuser ss "$@"; do
        command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"
    done
    [ -x "$PGBOUNCER_BIN" ] || die "pgbouncer not found at $PGBOUNCER_BIN"
    for port in $PG_PORT $PGB_PORT $WALY_PORT; do
        if ss -Hltn "sport = :$port" | grep -q .; then
            die "port $port is already in use"
        fi
    done
}

# ---------------------------------------------------------------- state + cleanup
bench_setup() {
    TMP=$(mktemp -d /tmp/waly-bench.XXXXXX)
    chmod 755 "$TMP"
    PG_DIR="$TMP/pg"              # owned by postgres
    PGDATA_DIR="$PG_DIR/data"
    PGB_DIR="$TMP/pgbouncer"      # owned by postgres
    WALY_DATA="$TMP/waly-data"
    LOG_DIR="$TMP/pgbench-logs"
    mkdir -p "$PG_DIR" "$PGB_DIR" "$WALY_DATA" "$LOG_DIR"
    chown postgres: "$PG_DIR" "$PGB_DIR"
    PG_STARTED=0
    PG_VIA_SCRIPT=0
    PGB_PID=""
    WALY_PID=""
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

alive() { # alive PID: the process exists and is not a zombie
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}

stop_pid() { # stop_pid PID NAME: TERM, wait up to 10 s, then KILL
    local pid=$1 name=$2 i
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do
        alive "$pid" || return 0
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

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook; fi
    [ -n "$WALY_PID" ] && stop_pid "$WALY_PID" waly
    [ -n "$PGB_PID" ] && stop_pid "$PGB_PID" pgbouncer
    [ "$PG_STARTED" -eq 1 ] && pg_stop
    if [ -n "${KEEP_TMP:-}" ]; then log "kept $TMP (KEEP_TMP set)"; else rm -rf "$TMP"; fi
    exit "$rc"
}

# ---------------------------------------------------------------- helpers
psql_q() { # psql_q PORT SQL [DATABASE] -> unaligned tuples-only output
    psql -X -q -A -t -h 127.0.0.1 -p "$1" -U "$PG_USER" -d "${3:-$DB}" -v ON_ERROR_STOP=1 -c "$2"
}

can_query() { # can_query PORT [DATABASE]: an authenticated round trip succeeds
    timeout 5 psql -X -q -A -t -h 127.0.0.1 -p "$1" -U "$PG_USER" -d "${2:-$DB}" -c 'SELECT 1' 2>/dev/null | grep -qx 1
}

rss_kib() { # rss_kib PID -> VmRSS in KiB
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

fmt_mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# CPU accounting, all in clock ticks (CLK_TCK per second).
proc_ticks() { # proc_ticks PID [with_children] -> utime+stime (fields 14, 15) [+cutime+cstime (16, 17)]
    local stat f
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || { echo ""; return 0; }
    # field 2 (comm) may contain spaces; fields 3.. follow its closing parenthesis
    read -r -a f <<<"${stat##*) }"
    if [ "${2:-}" = with_children ]; then
        echo $((f[11] + f[12] + f[13] + f[14]))
    else
        echo $((f[11] + f[12]))
    fi
}
cluster_ticks() { # CPU of our Postgres: postmaster + reaped children + live children
    local pm t c ct
    pm=$(head -1 "$PGDATA_DIR/postmaster.pid" 2>/dev/null) || { echo 0; return 0; }
    t=$(proc_ticks "$pm" with_children); t=${t:-0}
    for c in $(cat "/proc/$pm/task/$pm/children" 2>/dev/null); do
        ct=$(proc_ticks "$c"); t=$((t + ${ct:-0}))
    done
    echo "$t"
}
host_ticks() { # -> "busy total" summed over all CPUs (busy includes steal)
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
}
OURS_TICKS=0
ours_ticks() { # sets OURS_TICKS: CPU of everything this benchmark runs: our Postgres,
    # both proxies and the children this shell has reaped (pgbench). Call it
    # directly, not in $(...): `times` must run in this shell, not in a fork.
    # (A waly restarted per run counts only while it is alive: the benchmark
    # reaps it, so its CPU then lands in the children's times.)
    local t p v c
    t=$(cluster_ticks)
    for p in "$PGB_PID" "$WALY_PID"; do
        [ -n "$p" ] || continue
        v=$(proc_ticks "$p"); t=$((t + ${v:-0}))
    done
    times >"$TMP/times.out"
    c=$(awk -v hz="$CLK_TCK" 'NR == 2 {
        t = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%.0f\n", t * hz
    }' "$TMP/times.out")
    OURS_TICKS=$((t + ${c:-0}))
}
median() { # median VALUE... -> median (mean of the middle two for an even count), empty if none
    [ "$#" -gt 0 ] || { echo ""; return 0; }
    printf '%s\n' "$@" | LC_ALL=C sort -g | awk '{ v[++n] = $1 }
        END { if (n % 2) printf "%.6f\n", v[(n + 1) / 2]; else printf "%.6f\n", (v[n / 2] + v[n / 2 + 1]) / 2 }'
}

git_rev() {
    local rev
    rev=$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null) || { echo "none (no commits)"; return; }
    if [ -n "$(git -C "$REPO_DIR" status --porcelain 2>/dev/null)" ]; then rev="$rev (dirty)"; fi
    echo "$rev"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }
delta() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }

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
${PG_EXTRA_CONF:-}
EOF
    PG_STARTED=1
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_DIR/postgres.log" -w -t 60 start >/dev/null \
        || { tail -n 30 "$PG_DIR/postgres.log" >&2; die "postgres failed to start"; }
}

bench_start_postgres() { # sets PG_VERSION
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
}

# bench_read_pgbench ID RC: reads pgbench's summary ($LOG_DIR/ID.out, RC its exit status) and its
# per-transaction logs (then removed) into the caller's variables tps lat ntx failed retried n p50 p99
# (declare them local). A run that failed is added to RUN_ERRORS in pgbench's own words, its output kept
# as $TMP/failed-ID.out, and the function returns 1.
# shellcheck disable=SC2034  # the values are the caller's
bench_read_pgbench() {
    local id=$1 rc=$2 out="$LOG_DIR/$1.out" logs _mean
    tps=$(awk '/^tps = / { print $3; exit }' "$out")
    lat=$(awk '/^latency average = / { print $4; exit }' "$out")
    ntx=$(awk -F': *' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$out")
    failed=$(awk -F'[: ]+' '/^number of failed transactions/ { print $5; exit }' "$out")
    retried=$(awk -F'[: ]+' '/^number of transactions retried/ { print $5; exit }' "$out")
    shopt -s nullglob
    logs=("$LOG_DIR/$id".[0-9]*)
    shopt -u nullglob
    if [ "$rc" -ne 0 ] || [ -z "$tps" ] || [ "${#logs[@]}" -eq 0 ]; then
        RUN_ERRORS+=("$id: pgbench exit status $rc: $(grep -m1 -i 'error\|fatal\|abort' "$out" || tail -n1 "$out")")
        warn "run $id failed (exit $rc); last lines:"
        tail -n 8 "$out" | sed 's/^/    pgbench| /' >&2
        cp "$out" "$TMP/failed-$id.out" 2>/dev/null || true
        rm -f "${logs[@]}"
        return 1
    fi
    read -r n p50 p99 _mean < <("$BENCH_DIR/latency.sh" "${logs[@]}")
    rm -f "${logs[@]}"
}

# bench_check_durable_settings: reads the running cluster's durability settings into PG_MPT, PG_FSYNC,
# PG_SYNC, PG_WSM, PG_FPW, PG_SB and stops unless the write benchmarks' preconditions hold (fsync and
# synchronous_commit on, max_prepared_transactions of at least 2 x CLIENTS).
# shellcheck disable=SC2034  # the settings are read by the calling benchmark's report
bench_check_durable_settings() {
    PG_MPT=$(psql_q "$PG_PORT" 'SHOW max_prepared_transactions')
    PG_FSYNC=$(psql_q "$PG_PORT" 'SHOW fsync')
    PG_SYNC=$(psql_q "$PG_PORT" 'SHOW synchronous_commit')
    PG_WSM=$(psql_q "$PG_PORT" 'SHOW wal_sync_method')
    PG_FPW=$(psql_q "$PG_PORT" 'SHOW full_page_writes')
    PG_SB=$(psql_q "$PG_PORT" 'SHOW shared_buffers')
    [ "$PG_MPT" -ge $((2 * CLIENTS)) ] || die "max_prepared_transactions is $PG_MPT; waly needs at least 2 x $CLIENTS clients"
    [ "$PG_FSYNC" = on ] || die "fsync is $PG_FSYNC; this benchmark needs fsync = on"
    [ "$PG_SYNC" = on ] || die "synchronous_commit is $PG_SYNC; this benchmark needs synchronous_commit = on"
    log "Postgres settings: fsync=$PG_FSYNC synchronous_commit=$PG_SYNC wal_sync_method=$PG_WSM max_prepared_transactions=$PG_MPT shared_buffers=$PG_SB"
}

# bench_check_waly_fresh (after bench_find_waly): WALY_STALE says (and a warning shows) when the waly
# binary is older than the sources it is built from.
bench_check_waly_fresh() {
    local newest_src
    WALY_STALE=""
    newest_src=$(find src migrations Cargo.toml Cargo.lock build.rs -type f -newer "$WALY_EXE" 2>/dev/null | head -n 3 | tr "\n" " " | sed "s/ $//" || true)
    if [ -n "$newest_src" ]; then
        WALY_STALE="the waly binary is older than some sources (e.g. $newest_src); rebuild with 'cargo build --release'"
        warn "$WALY_STALE"
    fi
}

# ---------------------------------------------------------------- 2. PgBouncer
bench_start_pgbouncer() { # sets PGB_PID, PGB_VERSION
    local scram ok
    scram=$(psql_q "$PG_PORT" "SELECT rolpassword FROM pg_authid WHERE rolname = '$PG_USER'")
    case "$scram" in
        SCRAM-SHA-256*|md5*) ;;
        *) die "unexpected password secret format for $PG_USER" ;;
    esac
    printf '"%s" "%s"\n' "$PG_USER" "$scram" > "$PGB_DIR/userlist.txt"
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
}

# ---------------------------------------------------------------- 3. waly
# bench_find_waly: picks the binary (WALY_BIN, else target/release/waly, else
# target/debug/waly with a loud warning). Sets WALY_EXE (absolute, empty if
# none), WALY_PROFILE, WALY_BUILT, WALY_DEBUG_WARNING, WALY_NOTE.
bench_find_waly() {
    local profile_dir
    WALY_OK=0
    WALY_NOTE=""
    WALY_DEBUG_WARNING=""
    WALY_WORKERS=""
    WALY_PROFILE=""
    WALY_BUILT=""
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
            return 0
        fi
    fi
    case "$WALY_EXE" in /*) ;; *) WALY_EXE="$REPO_DIR/$WALY_EXE" ;; esac
    # cargo puts a profile's binaries in target/<dir>/ (or target/<triple>/<dir>/):
    # dev -> debug, release and bench -> release, a custom profile -> its name
    profile_dir=$(basename "$(dirname "$WALY_EXE")")
    case "/$(dirname "$(dirname "$WALY_EXE")")/" in
        */target/*)
            case "$profile_dir" in
                debug) WALY_PROFILE="dev (unoptimized, target/debug)" ;;
                *) WALY_PROFILE="$profile_dir (target/$profile_dir)" ;;
            esac ;;
        *) WALY_PROFILE="unknown (binary not under a cargo target/ directory)" ;;
    esac
    if [ "$profile_dir" = debug ] && [ -z "$WALY_DEBUG_WARNING" ]; then
        WALY_DEBUG_WARNING="waly binary is a DEBUG build ($WALY_EXE): its numbers are NOT representative; build with 'cargo build --release'"
        warn "$WALY_DEBUG_WARNING"
    fi
    WALY_BUILT=$(date -u -r "$WALY_EXE" '+%Y-%m-%d %H:%M UTC' 2>/dev/null || echo unknown)
}

# bench_start_waly [LOG_FORMAT [LOG_FILE [READY_DB]]]: writes $TMP/waly.yaml and
# starts `waly serve`, waiting until an authenticated query on READY_DB
# (default $DB) answers. On success WALY_OK=1 and WALY_PID, WALY_WORKERS are
# set; otherwise WALY_OK=0, WALY_PID is empty and WALY_NOTE says why.
#
# Optional, set for the call (`VAR=... bench_start_waly ...`): WALY_CONFIG_NAME (the
# config's file name in $TMP, default waly.yaml), WALY_EXTRA_YAML (appended to the
# config, e.g. a `log:` section), WALY_READY_SECS (how long to wait, default 10).
bench_start_waly() {
    local format=${1:-human} logfile=${2:-$TMP/waly.log} ready_db=${3:-$DB} deadline rc
    local ready_secs=${WALY_READY_SECS:-10}
    WALY_OK=0
    WALY_CONFIG="$TMP/${WALY_CONFIG_NAME:-waly.yaml}"
    cat > "$WALY_CONFIG" <<EOF
listen: 127.0.0.1:$WALY_PORT
upstream: postgres://127.0.0.1:$PG_PORT
data_dir: $WALY_DATA
log_format: $format
users:
  - name: $PG_USER
    method: scram-sha-256
    password_env: WALY_PASSWORD_POSTGRES
${WALY_EXTRA_YAML:-}
EOF
    log "starting waly on $WALY_PORT ($WALY_EXE)"
    # info: waly logs its configuration (e.g. `workers=N`) once at start; it
    # logs nothing per query at this level
    WALY_PASSWORD_POSTGRES=$PG_PASSWORD RUST_LOG=info \
        "$WALY_EXE" serve --config "$WALY_CONFIG" >"$logfile" 2>&1 </dev/null &
    WALY_PID=$!
    deadline=$((SECONDS + ready_secs))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! alive "$WALY_PID"; then break; fi
        if can_query "$WALY_PORT" "$ready_db"; then WALY_OK=1; break; fi
        sleep 0.25
    done
    if [ "$WALY_OK" -eq 1 ]; then
        WALY_WORKERS=$(sed 's/\x1b\[[0-9;]*m//g' "$logfile" | grep -o -m1 -E 'workers(=|":)[0-9]+' | head -1 | grep -o '[0-9]*$' || true)
        log "waly up (pid $WALY_PID, ${WALY_WORKERS:-unknown} worker threads, build profile $WALY_PROFILE)"
    else
        if alive "$WALY_PID"; then
            WALY_NOTE="waly skipped: started but did not answer an authenticated query on $WALY_PORT within $ready_secs s"
            stop_pid "$WALY_PID" waly
        else
            wait "$WALY_PID" 2>/dev/null && rc=0 || rc=$?
            WALY_NOTE="waly skipped: process exited during startup (exit status $rc)"
        fi
        WALY_PID=""
        if [ -s "$logfile" ]; then
            warn "$WALY_NOTE; last lines of its log:"
            tail -n 15 "$logfile" | sed 's/^/    waly| /' >&2 || true
        else
            warn "$WALY_NOTE; it wrote no output"
        fi
    fi
}

# ---------------------------------------------------------------- stopping waly, reading its log
# waly_stop: SIGTERM, wait for a graceful exit (its shutdown timeout is 30 s),
# reap it. Sets WALY_STOP_RC.
waly_stop() {
    local pid=$WALY_PID i
    WALY_STOP_RC=""
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 400; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        warn "waly (pid $pid) did not stop within 40 s of SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null && WALY_STOP_RC=0 || WALY_STOP_RC=$?
    WALY_PID=""
}

# waly_log_stats LOGFILE FIELD... -> the FIELDs of the "log statistics" line waly
# (log_format json) writes when it stops, space-separated; empty if absent
waly_log_stats() {
    local file=$1 fields
    shift
    fields=$(printf '\\($f.%s) ' "$@")
    jq -R -r "fromjson? | select(type == \"object\")
        | (.fields // .) as \$f
        | select((\$f.message // .message // \"\") == \"log statistics\")
        | \"${fields% }\"" "$file" | tail -n 1
}

# waly_problems LOGFILE -> waly's WARN and ERROR lines (message and fields)
waly_problems() {
    jq -R -r 'fromjson? | select(type == "object")
        | select((.level // "") | test("WARN|ERROR"))
        | (.fields // .) as $f
        | "\(.level) \($f.message // .message // ""): \($f | del(.message, .timestamp, .level) | tostring)\(if .spans then " spans=" + (.spans | tostring) else "" end)"' "$1" 2>/dev/null || true
}
