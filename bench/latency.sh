#!/usr/bin/env bash
# Latency summary from pgbench per-transaction logs (pgbench --log).
#
# Usage: bench/latency.sh LOGFILE...   (pass every per-thread file of one run)
# Prints one line: count p50_ms p99_ms mean_ms   ("0 - - -" if no samples)
#
# Field 3 of each log line is the transaction's elapsed time in microseconds.
# Lines where it is not a number (failed / skipped transactions) are ignored.
# Percentiles use the nearest-rank method over all transactions of all threads:
# the p-th percentile of n sorted samples is sample number ceil(p/100 * n).
set -euo pipefail

if [ "$#" -eq 0 ]; then
    echo "usage: $0 LOGFILE..." >&2
    exit 2
fi

awk '$3 ~ /^[0-9]+$/ { print $3 }' "$@" | LC_ALL=C sort -n | awk '
    { v[++n] = $1; sum += $1 }
    function rank(p,    k) {
        k = p / 100 * n
        if (k != int(k)) k = int(k) + 1
        if (k < 1) k = 1
        return v[k]
    }
    END {
        if (n == 0) { print "0 - - -"; exit 0 }
        printf "%d %.3f %.3f %.3f\n", n, rank(50) / 1000, rank(99) / 1000, sum / n / 1000
    }'
