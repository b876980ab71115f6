#!/usr/bin/env bash
# Manage a private Postgres cluster for waly's development and tests.
#
#   scripts/pg.sh start  DATADIR PORT   create the cluster if needed, then start it
#   scripts/pg.sh stop   DATADIR        stop it (fine if it is not running)
#   scripts/pg.sh status DATADIR        exit 0 if running, non-zero otherwise
#
# The cluster listens on 127.0.0.1:PORT only, with its Unix socket inside
# DATADIR, so it never clashes with a system cluster. Role `postgres` has the
# password from $PGPASSWORD (default `postgres`) as it was when the cluster
# was created; TCP logins use scram-sha-256, Unix-socket logins are trusted.
# As root, the cluster runs as the `postgres` OS user (initdb refuses root).
set -euo pipefail

die() { echo "pg.sh: $*" >&2; exit 1; }
usage() { die "usage: $0 start DATADIR PORT | stop DATADIR | status DATADIR"; }

cmd=${1:-}; datadir=${2:-}
[[ -n $cmd && -n $datadir ]] || usage
datadir=$(realpath -m -- "$datadir")

# Run a command as the cluster's owner: `postgres` when we are root, else us.
# Run it from / so that an unreadable working directory causes no warnings.
as_owner() {
  if [[ $(id -u) -eq 0 ]]; then (cd / && runuser -u postgres -- "$@")
  else (cd / && "$@"); fi
}

# The bin directory of the newest installed Postgres major version.
find_bindir() {
  local d
  d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  [[ -n $d && -x $d/initdb ]] && echo "$d"
}

# Install Debian's postgresql package if no server is installed.
ensure_installed() {
  find_bindir >/dev/null && return 0
  [[ $(id -u) -eq 0 ]] || die "Postgres is not installed; run as root or: apt-get install postgresql"
  echo "pg.sh: installing postgresql with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -q -o DPkg::Lock::Timeout=300)
  if ! apt-cache show postgresql >/dev/null 2>&1; then "${apt[@]}" update >&2; fi
  "${apt[@]}" install -y postgresql >&2 || { "${apt[@]}" update >&2 && "${apt[@]}" install -y postgresql >&2; }
  find_bindir >/dev/null || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
}

# Print the end of the server logs, to explain a failure.
show_logs() {
  local f
  for f in "$datadir"/log/*; do
    [[ -f $f ]] || continue
    echo "---- tail of $f ----" >&2
    tail -n 30 "$f" >&2 || true
  done
}

is_running() { as_owner "$bindir/pg_ctl" status -D "$datadir" >/dev/null 2>&1; }

# The port a running cluster listens on (line 4 of postmaster.pid).
running_port() { sed -n 4p "$datadir/postmaster.pid" 2>/dev/null || true; }

# As root, make sure `postgres` can reach DATADIR: every ancestor directory must
# be traversable (a root-owned 0700 temp dir is not). Grant o+x (traverse only).
open_path_for_owner() {
  [[ $(id -u) -eq 0 ]] || return 0
  local d
  d=$(dirname -- "$datadir")
  while [[ $d != / ]]; do
    if ! runuser -u postgres -- test -x "$d"; then
      echo "pg.sh: granting o+x on $d so the postgres user can reach $datadir" >&2
      chmod o+x "$d"
    fi
    d=$(dirname -- "$d")
  done
}

# Create the cluster in DATADIR if it holds none yet.
init_cluster() {
  [[ -f $datadir/PG_VERSION ]] && return 0
  if [[ -d $datadir && -n $(ls -A -- "$datadir") ]]; then
    die "$datadir is not empty and holds no Postgres cluster"
  fi
  mkdir -p -- "$datadir"
  chmod 700 "$datadir"
  open_path_for_owner
  local pwfile out
  pwfile=$(mktemp -p /tmp waly-pgpw.XXXXXX)
  printf '%s\n' "${PGPASSWORD:-postgres}" >"$pwfile"
  if [[ $(id -u) -eq 0 ]]; then chown postgres: "$datadir" "$pwfile"; fi
  echo "pg.sh: initdb $datadir" >&2
  if ! out=$(as_owner "$bindir/initdb" -D "$datadir" --username=postgres --pwfile="$pwfile" \
      --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C 2>&1); then
    rm -f "$pwfile"
    echo "$out" >&2
    die "initdb failed in $datadir"
  fi
  rm -f "$pwfile"
  # Our settings live in waly.conf (rewritten at every start); include it once.
  echo "include_if_exists = 'waly.conf'" | as_owner tee -a "$datadir/postgresql.conf" >/dev/null
}

# (Re)write the settings that depend on DATADIR and PORT.
write_settings() {
  local port=$1 sockdir=$datadir
  # A Unix socket path is limited to 107 bytes; past that, use TCP only.
  if (( ${#datadir} + 16 > 107 )); then
    echo "pg.sh: $datadir is too long for a Unix socket; TCP only" >&2
    sockdir=''
  fi
  as_owner mkdir -p "$datadir/log"
  as_owner tee "$datadir/waly.conf" >/dev/null <<EOF
# Written by scripts/pg.sh at each start; edits here are overwritten.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$sockdir'
max_connections = 300
max_prepared_transactions = 64
shared_buffers = 128MB
fsync = on
logging_collector = on
log_directory = 'log'
log_filename = 'postgresql.log'
log_rotation_age = 0
log_rotation_size = 0
EOF
}

start() {
  local port=${1:-}
  [[ $port =~ ^[0-9]+$ ]] || usage
  ensure_installed
  bindir=$(find_bindir)
  if [[ -f $datadir/PG_VERSION ]]; then open_path_for_owner; fi
  if [[ -f $datadir/PG_VERSION ]] && is_running; then
    if [[ $(running_port) == "$port" ]]; then
      echo "pg.sh: already running on 127.0.0.1:$port ($datadir)"
      return 0
    fi
    echo "pg.sh: running on port $(running_port), restarting on $port" >&2
    as_owner "$bindir/pg_ctl" stop -D "$datadir" -m fast -w >/dev/null
  fi
  init_cluster
  write_settings "$port"
  # Output before the log collector takes over (e.g. a busy port) goes here.
  if ! as_owner "$bindir/pg_ctl" start -D "$datadir" -w -t 60 \
      -l "$datadir/log/startup.log" >/dev/null; then
    show_logs
    die "could not start Postgres on 127.0.0.1:$port ($datadir)"
  fi
  echo "pg.sh: started on 127.0.0.1:$port ($datadir)"
}

stop() {
  if [[ ! -f $datadir/PG_VERSION ]]; then echo "pg.sh: no cluster in $datadir"; return 0; fi
  bindir=$(find_bindir) || die "Postgres is not installed"
  if ! is_running; then echo "pg.sh: not running ($datadir)"; return 0; fi
  as_owner "$bindir/pg_ctl" stop -D "$datadir" -m fast -w -t 60 >/dev/null \
    || { show_logs; die "could not stop Postgres ($datadir)"; }
  echo "pg.sh: stopped ($datadir)"
}

status() {
  [[ -f $datadir/PG_VERSION ]] || { echo "pg.sh: no cluster in $datadir"; exit 3; }
  bindir=$(find_bindir) || die "Postgres is not installed"
  if is_running; then echo "pg.sh: running on 127.0.0.1:$(running_port) ($datadir)"
  else echo "pg.sh: not running ($datadir)"; exit 3; fi
}

bindir=
case $cmd in
  start) start "${3:-}" ;;
  stop) stop ;;
  status) status ;;
  *) usage ;;
esac
