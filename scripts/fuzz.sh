#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer via cargo-fuzz) of apply's admission gate: message key
# and envelope decode and validation (fuzz/fuzz_targets/admit.rs), for a bounded time.
#
#   scripts/fuzz.sh [seconds]      default 300
#
# Not part of scripts/test.sh. The committed seed corpus (fuzz/corpus/admit) stays small;
# inputs the fuzzer finds go to target/fuzz/corpus, crashes to target/fuzz/artifacts (a
# crash fails the script and prints how to replay it).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-300}"
CARGO_FUZZ_VERSION=0.13.1
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION (crates.io)" >&2
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
# The stable toolchain ships the sanitizer runtimes; RUSTC_BOOTSTRAP lets stable rustc take
# the -Z flags cargo-fuzz passes (no nightly toolchain can be downloaded here).
export RUSTC_BOOTSTRAP=1
mkdir -p target/fuzz/corpus/admit target/fuzz/artifacts/admit
cargo fuzz run admit --fuzz-dir fuzz --target-dir target/fuzz/build \
  target/fuzz/corpus/admit fuzz/corpus/admit -- \
  -max_total_time="$SECS" -max_len=1048576 -timeout=5 -rss_limit_mb=2048 \
  -artifact_prefix=target/fuzz/artifacts/admit/ -print_final_stats=1
