#!/usr/bin/env bash
# Debezium 3.5.0.Final on Kafka Connect 4.1.1 (standalone worker), for the peers bench only
# (scripts/bench.sh --only peers); the tests never use it.
#
# Sourced by scripts/bench.sh after scripts/install-deps.sh (Java and Maven come from there).
# Exports DEBEZIUM_CONNECT_LIBS (the worker's classpath: run
# `java -cp "$DEBEZIUM_CONNECT_LIBS/*" org.apache.kafka.connect.cli.ConnectStandalone ...`),
# DEBEZIUM_PLUGINS (plugin.path: one folder per connector) and DEBEZIUM_VERSION.
#
# Why these versions: the project's Maven mirror serves the MariaDB source connector and the
# JDBC sink connector as plugin archives (classifier `plugin`, tar.gz) at 3.5.0.Final and not at
# 3.5.2/3.6.x (checked 2026-12-07); 3.5.0.Final is built against Kafka 4.1.1, so the worker is
# Connect 4.1.1 (it talks to the bench's 4.3.1 broker). Everything is pinned by sha256 in
# scripts/debezium/sha256 (the two archives and every worker jar); a mismatch fails loudly and
# nothing is cached. Cache: ${FRAPPE_CDC_CACHE:-$HOME/.cache/frappe-cdc}/debezium-$DEBEZIUM_VERSION
set -euo pipefail

DEBEZIUM_VERSION=3.5.0.Final
_dbz_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_dbz_cache="${FRAPPE_CDC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/frappe-cdc}/debezium-$DEBEZIUM_VERSION"
_dbz_dep=org.apache.maven.plugins:maven-dependency-plugin:3.8.1

# sha256 of the worker jars and the downloaded archives, one list, sorted by file name.
_dbz_hashes() {
  { (cd "$1/connect" && sha256sum -- *.jar); (cd "$1/archives" && sha256sum -- *.tar.gz); } | sort -k2
}

_dbz_verify() {
  local want got
  want="$(grep -v '^#' "$_dbz_here/debezium/sha256" | sort -k2)"
  got="$(_dbz_hashes "$1")"
  if [ "$want" != "$got" ]; then
    echo "install-debezium: the files in $1 differ from scripts/debezium/sha256:" >&2
    diff <(echo "$want") <(echo "$got") >&2 || true
    return 1
  fi
}

if [ -f "$_dbz_cache/.verified" ] && _dbz_verify "$_dbz_cache" 2>/dev/null; then
  :
else
  echo "install-debezium: fetching Kafka Connect and Debezium $DEBEZIUM_VERSION (Maven Central) into $_dbz_cache" >&2
  _dbz_tmp="$(mktemp -d "${TMPDIR:-/tmp}/debezium.XXXXXX")"
  mvn -B -q -f "$_dbz_here/debezium/pom.xml" "$_dbz_dep:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$_dbz_tmp/connect" >&2
  for a in debezium-connector-mariadb debezium-connector-jdbc; do
    mvn -B -q -f "$_dbz_here/debezium/pom.xml" "$_dbz_dep:copy" \
      -Dartifact="io.debezium:$a:$DEBEZIUM_VERSION:tar.gz:plugin" -DoutputDirectory="$_dbz_tmp/archives" >&2
  done
  if [ "${FRAPPE_CDC_PIN_DEBEZIUM:-}" = 1 ]; then
    # Maintainers: refresh the pin after changing a version.
    (echo "# sha256 of Kafka Connect's worker jars (scripts/debezium/pom.xml) and the Debezium $DEBEZIUM_VERSION plugin archives";
     _dbz_hashes "$_dbz_tmp") > "$_dbz_here/debezium/sha256"
    echo "install-debezium: wrote scripts/debezium/sha256" >&2
  fi
  _dbz_verify "$_dbz_tmp"
  mkdir -p "$_dbz_tmp/plugins"
  for f in "$_dbz_tmp"/archives/*.tar.gz; do tar -xzf "$f" -C "$_dbz_tmp/plugins"; done
  touch "$_dbz_tmp/.verified"
  mkdir -p "$(dirname "$_dbz_cache")"
  rm -rf "$_dbz_cache"
  mv "$_dbz_tmp" "$_dbz_cache"
fi
DEBEZIUM_CONNECT_LIBS="$_dbz_cache/connect"
DEBEZIUM_PLUGINS="$_dbz_cache/plugins"
export DEBEZIUM_CONNECT_LIBS DEBEZIUM_PLUGINS DEBEZIUM_VERSION
