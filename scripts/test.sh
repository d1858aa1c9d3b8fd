#!/usr/bin/env bash
# The test command: installs MariaDB, Prometheus and Apache Kafka (release jars) when missing,
# checks formatting and lints, then runs every test. Integration tests start their own MariaDB
# servers and Kafka nodes on loopback (fresh data dirs, free ports) and stop them when they
# finish. A lint tool that is missing and cannot be installed is reported and skipped, not
# silently passed: look for "test.sh: SKIPPED" in the output.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install-deps.sh
echo "test.sh: mariadbd $(mariadbd --version | awk '{print $3}'), Apache Kafka $KAFKA_VERSION ($KAFKA_LIBS), $(java -version 2>&1 | head -1)" >&2
export FRAPPE_CDC_TEST_DIR="${FRAPPE_CDC_TEST_DIR:-${TMPDIR:-/tmp}/frappe-cdc-tests}"
rm -rf "$FRAPPE_CDC_TEST_DIR"
if cargo fmt --version >/dev/null 2>&1; then
  cargo fmt --check
else
  echo "test.sh: SKIPPED cargo fmt --check: rustfmt is not installed and 'rustup component add rustfmt' failed" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  cargo clippy --all-targets --quiet -- -D warnings
else
  echo "test.sh: SKIPPED cargo clippy: clippy is not installed and 'rustup component add clippy' failed" >&2
fi
cargo test --no-fail-fast "$@"
