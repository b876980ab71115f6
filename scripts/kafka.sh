#!/usr/bin/env bash
# Install and manage a private Kafka-protocol broker (tansu) for waly's tests.
#
#   scripts/kafka.sh install                       build tansu into the cache unless it is
#                                                  there already; print the binary's path
#   scripts/kafka.sh start DIR PORT [memory|durable]
#                                                  start a broker on 127.0.0.1:PORT (if it is
#                                                  not running already), wait until it answers
#   scripts/kafka.sh stop   DIR                    stop it: SIGTERM, SIGKILL after 10 s (fine if
#                                                  it is not running)
#   scripts/kafka.sh kill   DIR                    SIGKILL it at once (crash tests)
#   scripts/kafka.sh status DIR                    exit 0 if running, non-zero otherwise
#
# DIR holds everything of one broker: tansu.pid, tansu.log (its output, appended
# across restarts), tansu.port and tansu.mode (how it was started), and in
# durable mode its SQLite database tansu.db. A `memory` broker forgets every
# topic and record when it stops; a `durable` one (libsql storage) keeps them
# across stop/kill and start on the same DIR.
#
# The binary is $WALY_TANSU if set, else
# ${WALY_TANSU_ROOT:-$HOME/.cache/waly-test/tansu-0.6.0}/bin/tansu. Building it
# (cargo install, features dynostore for memory:// and libsql for sqlite://)
# takes about 15 minutes, once per machine. $WALY_TANSU_LOG is the broker's
# RUST_LOG (default `warn`).
#
# If $WALY_KAFKA_OWNER is a pid, `start` also leaves a small watchdog that stops
# the broker once that process is gone (the Rust test harness passes its own pid,
# so a test binary that exits never leaves a broker behind).
set -euo pipefail

TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql
TANSU_ROOT=${WALY_TANSU_ROOT:-${HOME:-/root}/.cache/waly-test/tansu-$TANSU_VERSION}
TANSU=${WALY_TANSU:-$TANSU_ROOT/bin/tansu}
START_TIMEOUT=30 # seconds until a starting broker must answer a metadata request
STOP_TIMEOUT=10  # seconds between SIGTERM and SIGKILL

die() { echo "kafka.sh: $*" >&2; exit 1; }
usage() {
  die "usage: $0 install | start DIR PORT [memory|durable] | stop DIR | kill DIR | status DIR"
}

# ---- install ----

# True if $TANSU runs and is the version we want.
tansu_ok() {
  [[ -x $TANSU ]] && "$TANSU" --version 2>/dev/null | grep -qw "$TANSU_VERSION"
}

install() {
  if tansu_ok; then echo "$TANSU"; return 0; fi
  [[ -z ${WALY_TANSU:-} ]] || die "WALY_TANSU=$WALY_TANSU is not an executable tansu $TANSU_VERSION"
  # cargo lives in ~/.cargo/bin when Rust came from rustup.
  if [[ -d ${HOME:-/root}/.cargo/bin ]]; then PATH=${HOME:-/root}/.cargo/bin:$PATH; fi
  command -v cargo >/dev/null || die "cargo not found; install Rust (rustup) first"
  mkdir -p -- "$TANSU_ROOT"
  # One build at a time: a second caller waits, then finds the binary.
  exec 9>"$TANSU_ROOT/.install.lock"
  flock 9
  if tansu_ok; then echo "$TANSU"; return 0; fi
  echo "kafka.sh: building tansu $TANSU_VERSION into $TANSU_ROOT (about 15 minutes, once)" >&2
  local log=$TANSU_ROOT/install.log
  # --locked: tansu's own Cargo.lock, so the build does not drift with new releases.
  # cargo's progress goes to stderr as it comes (a long silence would look like a
  # hang to CI), and to install.log.
  if ! cargo install tansu --version "$TANSU_VERSION" --locked \
      --features "$TANSU_FEATURES" --root "$TANSU_ROOT" 2>&1 | tee "$log" >&2; then
    die "cargo install tansu failed (full output in $log)"
  fi
  tansu_ok || die "cargo install finished but $TANSU does not run"
  echo "$TANSU"
}

# ---- broker processes ----

# The broker's pid if it is running (and really is tansu), else nothing.
running_pid() {
  local pid
  pid=$(cat "$dir/tansu.pid" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # A zombie, or a pid reused by an unrelated process, is not our broker.
  grep -q ') Z ' "/proc/$pid/stat" 2>/dev/null && return 1
  [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == *tansu* ]] || return 1
  echo "$pid"
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# True if the broker on port $1 answers a metadata request (tansu's own client).
answers_metadata() {
  timeout 5 "$TANSU" topic list --broker "tcp://127.0.0.1:$1" >/dev/null 2>&1
}

# Print the end of the broker's output, to explain a failure.
show_log() {
  [[ -f $dir/tansu.log ]] || return 0
  echo "---- tail of $dir/tansu.log ----" >&2
  tail -n 30 "$dir/tansu.log" >&2 || true
}

start() {
  local port=${1:-} mode=${2:-memory} storage pid
  [[ $port =~ ^[0-9]+$ ]] || usage
  case $mode in
    memory) storage=memory://tansu/ ;;
    # tansu opens an sqlite:// URL relative to its working directory, which is DIR.
    durable) storage=sqlite://tansu.db ;;
    *) usage ;;
  esac
  tansu_ok || die "tansu $TANSU_VERSION not found at $TANSU; run: scripts/kafka.sh install"
  mkdir -p -- "$dir"

  if pid=$(running_pid); then
    if [[ $(cat "$dir/tansu.port" 2>/dev/null) == "$port" && $(cat "$dir/tansu.mode" 2>/dev/null) == "$mode" ]]; then
      echo "kafka.sh: already running on 127.0.0.1:$port ($mode, $dir)"
      return 0
    fi
    echo "kafka.sh: running with other settings, restarting on $port ($mode)" >&2
    stop >/dev/null
  fi
  # Something else on the port would answer our readiness checks; refuse.
  port_open "$port" && die "127.0.0.1:$port is already in use"

  echo "$port" >"$dir/tansu.port"
  echo "$mode" >"$dir/tansu.mode"
  echo "---- $(date -Is) start on 127.0.0.1:$port, $storage ----" >>"$dir/tansu.log"
  # No inherited stdio: a caller reading our output (e.g. Rust's Command::output)
  # must not wait for the broker to exit. Settings tansu would read from the
  # environment are cleared so that only the flags below count.
  (
    cd -- "$dir"
    exec env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT -u CLUSTER_ID \
      -u LISTENER_URL -u ADVERTISED_LISTENER_URL -u STORAGE_ENGINE \
      RUST_LOG="${WALY_TANSU_LOG:-warn}" NO_COLOR=1 \
      "$TANSU" broker \
        --cluster-id waly-test \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$storage"
  ) </dev/null >>"$dir/tansu.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/tansu.pid"

  # Wait for the port, then for a metadata answer; give up early if it died.
  local deadline=$((SECONDS + START_TIMEOUT))
  until port_open "$port" && answers_metadata "$port"; do
    if ! alive "$pid"; then
      show_log
      die "tansu exited during start-up ($dir)"
    fi
    if ((SECONDS >= deadline)); then
      kill -KILL "$pid" 2>/dev/null || true
      show_log
      die "tansu did not answer on 127.0.0.1:$port within ${START_TIMEOUT}s ($dir)"
    fi
    sleep 0.2
  done

  if [[ ${WALY_KAFKA_OWNER:-} =~ ^[0-9]+$ ]]; then watchdog "$WALY_KAFKA_OWNER" "$pid"; fi
  echo "kafka.sh: started on 127.0.0.1:$port ($mode, $dir)"
}

# Leave a background loop that kills broker $2 once process $1 is gone. It ends
# by itself when the broker stops first (stop, kill, or a restart: new pid).
watchdog() {
  local owner=$1 broker=$2
  (
    trap '' HUP
    while alive "$owner"; do
      alive "$broker" || exit 0
      sleep 1
    done
    kill -TERM "$broker" 2>/dev/null || exit 0
    wait_gone "$broker" "$STOP_TIMEOUT" || kill -KILL "$broker" 2>/dev/null || true
  ) </dev/null >/dev/null 2>&1 &
}

# True if process $1 exists and is not a zombie (an exited process its parent
# has not reaped yet: the broker's parent is gone, and not every init reaps).
alive() { kill -0 "$1" 2>/dev/null && ! grep -q ') Z ' "/proc/$1/stat" 2>/dev/null; }

# Wait up to $2 seconds for pid $1 to exit.
wait_gone() {
  local pid=$1 deadline=$((SECONDS + $2))
  while alive "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

stop() {
  local pid
  if ! pid=$(running_pid); then echo "kafka.sh: not running ($dir)"; return 0; fi
  kill -TERM "$pid" 2>/dev/null || true
  if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
    echo "kafka.sh: no exit ${STOP_TIMEOUT}s after SIGTERM, sending SIGKILL ($dir)" >&2
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$pid" 5 || die "could not kill tansu pid $pid ($dir)"
  fi
  rm -f -- "$dir/tansu.pid"
  echo "kafka.sh: stopped ($dir)"
}

kill9() {
  local pid
  if ! pid=$(running_pid); then echo "kafka.sh: not running ($dir)"; return 0; fi
  kill -KILL "$pid" 2>/dev/null || true
  wait_gone "$pid" 5 || die "could not kill tansu pid $pid ($dir)"
  rm -f -- "$dir/tansu.pid"
  echo "kafka.sh: killed ($dir)"
}

status() {
  if running_pid >/dev/null; then
    echo "kafka.sh: running on 127.0.0.1:$(cat "$dir/tansu.port") ($(cat "$dir/tansu.mode"), $dir)"
  else
    echo "kafka.sh: not running ($dir)"
    exit 3
  fi
}

cmd=${1:-}
case $cmd in
  install) install; exit 0 ;;
  start | stop | kill | status) ;;
  *) usage ;;
esac
[[ -n ${2:-} ]] || usage
dir=$(realpath -m -- "$2")
case $cmd in
  start) start "${3:-}" "${4:-memory}" ;;
  stop) stop ;;
  kill) kill9 ;;
  status) status ;;
esac
