#!/usr/bin/env bash
# Fuzz waly's wire decoders (target `frames`, fuzz/fuzz_targets/frames.rs) for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]   run for SECONDS (default 60); exit non-zero if the target fails
#
# Installs cargo-fuzz when it is missing. cargo-fuzz passes nightly-only flags to rustc (the
# sanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. The build lives in
# fuzz/target and is reused by later runs; the corpus grows in fuzz/corpus/frames.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${1:-60}
if [[ ! $duration =~ ^[0-9]+$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS]" >&2
  exit 2
fi

# cargo and cargo-fuzz live in ~/.cargo/bin when they came from rustup / cargo install.
if [[ -d ${HOME:-/root}/.cargo/bin ]]; then PATH=${HOME:-/root}/.cargo/bin:$PATH; fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo install cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Seed inputs: [n] [n control bytes] [stream] (see the target). Control 0xff delivers the stream at
# once and inspects every message; other control bytes cut it into pieces and pass some through.
corpus=fuzz/corpus/frames
mkdir -p "$corpus"
seed() { printf '%b' "$2" >"$corpus/seed-$1"; }
frontend='Q\x00\x00\x00\x0dselect 1\x00'
# shellcheck disable=SC2016 # a literal $1 in the SQL
frontend+='P\x00\x00\x00\x11\x00select $1\x00\x00\x00'
frontend+='B\x00\x00\x00\x0c\x00\x00\x00\x00\x00\x00\x00\x00'
frontend+='E\x00\x00\x00\x09\x00\x00\x00\x00\x00'
frontend+='C\x00\x00\x00\x08Ss1\x00'
frontend+='S\x00\x00\x00\x04X\x00\x00\x00\x04'
backend='Z\x00\x00\x00\x05I'
backend+='D\x00\x00\x00\x0b\x00\x01\x00\x00\x00\x011'
backend+='C\x00\x00\x00\x0dSELECT 1\x00'
backend+='E\x00\x00\x00\x1dSERROR\x00C42P01\x00Mno table\x00\x00'
seed frontend "\x01\xff$frontend"
seed frontend-pieces "\x04\x01\x06\x42\x83$frontend"
seed backend "\x01\xff$backend"
seed backend-pieces "\x03\x00\x40\x02$backend"
# Whole inputs that are startup packet bodies: StartupMessage 3.0, CancelRequest, SSLRequest.
seed startup '\x00\x03\x00\x00user\x00alice\x00database\x00app\x00\x00'
seed cancel '\x04\xd2\x16\x2e\x00\x00\x00\x09\x01\x02\x03\x04'
seed ssl '\x04\xd2\x16\x2f'

# -timeout turns a hang into a failure instead of waiting out libFuzzer's 20-minute default.
started=$(mktemp)
trap 'rm -f "$started"' EXIT
status=0
# libFuzzer reports every new input it keeps; that goes to a file, and only the summary (or, on a
# failure, the end of the report) is printed.
report=fuzz/frames.log
echo "fuzz.sh: fuzzing the frames target for ${duration}s (report: $report)"
RUSTC_BOOTSTRAP=1 cargo fuzz run frames -- \
  -max_total_time="$duration" -rss_limit_mb=1024 -timeout=10 -print_final_stats=1 >"$report" 2>&1 || status=$?
grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|Done)' "$report" || true

if ((status != 0)); then
  tail -n 60 "$report" >&2
  echo >&2
  echo "fuzz.sh: the frames target failed (exit $status). Inputs saved:" >&2
  find fuzz/artifacts/frames -type f -newer "$started" -printf '  %p\n' >&2 2>/dev/null || true
  echo "fuzz.sh: replay one with: RUSTC_BOOTSTRAP=1 cargo fuzz run frames <input>" >&2
  exit "$status"
fi
