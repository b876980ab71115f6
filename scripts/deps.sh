#!/usr/bin/env bash
# Install what waly needs, skipping whatever is already there.
#
#   scripts/deps.sh build   Debian packages for building (libclang-dev for
#                           pg_query's bindgen, gcc)
#   scripts/deps.sh test    the above, plus Postgres and pgbouncer, a Python
#                           venv with psycopg and asyncpg at .waly/venv, node-postgres
#                           in tests/clients/node/node_modules, and the tansu
#                           Kafka broker (scripts/kafka.sh install: built with
#                           cargo into ~/.cache/waly-test the first time, ~15 min)
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_PACKAGES=(libclang-dev gcc)
TEST_PACKAGES=(postgresql postgresql-contrib pgbouncer)
VENV=.waly/venv
NODE_DIR=tests/clients/node

# apt-get install the packages not installed yet; refresh the package lists
# only when one of them is unknown or the install fails.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "deps.sh: missing Debian packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "deps.sh: apt-get install ${missing[*]}"
  local apt=(apt-get -q -o DPkg::Lock::Timeout=300)
  for p in "${missing[@]}"; do
    if ! apt-cache show "$p" >/dev/null 2>&1; then "${apt[@]}" update; break; fi
  done
  "${apt[@]}" install -y --no-install-recommends "${missing[@]}" ||
    { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}"; }
}

# A venv with the pinned psycopg and asyncpg; rebuilt only when requirements.txt changes.
python_venv() {
  local req=tests/clients/requirements.txt
  [[ -x $VENV/bin/python && $VENV/.installed -nt $req ]] && return 0
  command -v python3 >/dev/null || apt_install python3
  rm -rf "$VENV"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    apt_install python3-venv # Debian's python3 has no ensurepip without it
    rm -rf "$VENV"
    /usr/bin/python3 -m venv "$VENV"
  fi
  echo "deps.sh: pip install -r $req into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$req"
  touch "$VENV/.installed"
}

# node-postgres from the committed lockfile; skipped when node_modules is current.
node_modules() {
  command -v node >/dev/null || apt_install nodejs
  command -v npm >/dev/null || apt_install npm
  [[ $NODE_DIR/node_modules/.package-lock.json -nt $NODE_DIR/package-lock.json ]] && return 0
  echo "deps.sh: npm ci in $NODE_DIR"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error)
}

case ${1:-} in
  build) apt_install "${BUILD_PACKAGES[@]}" ;;
  test)
    apt_install "${BUILD_PACKAGES[@]}" "${TEST_PACKAGES[@]}"
    python_venv
    node_modules
    scripts/kafka.sh install >/dev/null
    ;;
  *) echo "usage: $0 build|test" >&2; exit 1 ;;
esac
