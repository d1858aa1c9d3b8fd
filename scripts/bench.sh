#!/usr/bin/env bash
# frappe-cdc benchmarks: starts its own MariaDB servers and broker on loopback (like the tests),
# measures capture's decode ceiling, end-to-end throughput and lag, apply vs MariaDB native
# replication on a 40k-document backlog and on saves of 12k existing documents, peak memory
# and snapshot speed, and Debezium and native replication side by side with frappe-cdc
# (peers), prints tables and writes JSON to target/bench/latest.json. Not a test: nothing
# fails on speed. FRAPPE_CDC_BENCH_PERF=<folder> records perf profiles (updates section, apply rounds,
# capture's null-sink run).
#   scripts/bench.sh            full run (under 20 minutes from a clean clone on 2 cores,
#                               build and Debezium download included)
#   scripts/bench.sh --quick    every size / 10, a smoke run
#   scripts/bench.sh --only ceiling,e2e,backlog,updates,peers,writes
#                               (writes runs only when named)
#   scripts/bench.sh --rounds 5  apply-vs-native pairs on fresh replicas (median reported; default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install-deps.sh
. scripts/install-debezium.sh
export FRAPPE_CDC_TEST_DIR="${FRAPPE_CDC_BENCH_DIR:-${TMPDIR:-/tmp}/frappe-cdc-bench}"
rm -rf "$FRAPPE_CDC_TEST_DIR"
exec cargo bench --quiet --bench pipeline -- "$@"
