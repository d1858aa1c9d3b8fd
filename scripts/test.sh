#!/usr/bin/env bash
# The test command: installs MariaDB and the broker when missing, checks formatting and lints,
# then runs every test. Integration tests start their own MariaDB servers and broker on
# loopback (fresh data dirs, free ports) and stop them when they finish.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install-deps.sh
echo "test.sh: mariadbd $(mariadbd --version | awk '{print $3}'), broker $("$TANSU_BIN" --version 2>/dev/null | head -1)" >&2
export FRAPPE_CDC_TEST_DIR="${FRAPPE_CDC_TEST_DIR:-${TMPDIR:-/tmp}/frappe-cdc-tests}"
rm -rf "$FRAPPE_CDC_TEST_DIR"
cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo test "$@"
