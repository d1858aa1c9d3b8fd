#!/usr/bin/env bash
# Apache Kafka (the release's own jars from Maven Central) for tests, demo and bench.
#
# Sourced by scripts/install-deps.sh; exports KAFKA_LIBS (a folder of jars: run the broker with
# `java -cp "$KAFKA_LIBS/*" kafka.Kafka server.properties`) and KAFKA_VERSION.
#
# The jars are resolved by Maven from scripts/kafka/pom.xml (kafka_2.13 + kafka-tools and their
# runtime dependencies, slf4j-simple for logging) into a cache folder that later runs reuse:
#   ${FRAPPE_CDC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/frappe-cdc}/kafka-$KAFKA_VERSION
# Every jar is checked against scripts/kafka/jars.sha256 (pinned); a mismatch, a missing or an
# extra jar fails loudly and nothing is cached. Java 17+ and Maven come from apt when missing.
set -euo pipefail

KAFKA_VERSION=4.3.1
_kafka_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
_kafka_cache="${FRAPPE_CDC_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/frappe-cdc}/kafka-$KAFKA_VERSION"

_kafka_apt() {
  local SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install-kafka: need root (or sudo) to install $*" >&2; return 1; }
    SUDO=sudo
  fi
  echo "install-kafka: installing $* (apt)" >&2
  [ -n "${APT_UPDATED:-}" ] || { $SUDO apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

_java_major() {
  java -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

if ! command -v java >/dev/null 2>&1 || [ "$(_java_major)" -lt 17 ]; then
  _kafka_apt openjdk-17-jre-headless
fi
if ! command -v mvn >/dev/null 2>&1; then
  _kafka_apt maven
fi

# Checks folder $1 against the pinned list: same file names, same hashes.
_kafka_verify() {
  local dir="$1" want got
  want="$(grep -v '^#' "$_kafka_here/kafka/jars.sha256" | sort -k2)"
  got="$(cd "$dir" && sha256sum -- *.jar | sort -k2)"
  if [ "$want" != "$got" ]; then
    echo "install-kafka: the jars in $dir differ from scripts/kafka/jars.sha256:" >&2
    diff <(echo "$want") <(echo "$got") >&2 || true
    return 1
  fi
}

if [ -f "$_kafka_cache/libs/.verified" ] && _kafka_verify "$_kafka_cache/libs" 2>/dev/null; then
  :
else
  echo "install-kafka: fetching Apache Kafka $KAFKA_VERSION jars (Maven Central) into $_kafka_cache" >&2
  _kafka_tmp="$(mktemp -d "${TMPDIR:-/tmp}/kafka-jars.XXXXXX")"
  mvn -B -q -f "$_kafka_here/kafka/pom.xml" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$_kafka_tmp/libs" >&2
  if [ "${FRAPPE_CDC_PIN_KAFKA:-}" = 1 ]; then
    # Maintainers: refresh the pin after changing scripts/kafka/pom.xml.
    (echo "# sha256 of every jar of Apache Kafka $KAFKA_VERSION's runtime classpath (scripts/kafka/pom.xml)";
     cd "$_kafka_tmp/libs" && sha256sum -- *.jar | sort -k2) > "$_kafka_here/kafka/jars.sha256"
    echo "install-kafka: wrote scripts/kafka/jars.sha256" >&2
  fi
  _kafka_verify "$_kafka_tmp/libs"
  touch "$_kafka_tmp/libs/.verified"
  mkdir -p "$(dirname "$_kafka_cache")"
  rm -rf "$_kafka_cache"
  mv "$_kafka_tmp" "$_kafka_cache"
fi
KAFKA_LIBS="$_kafka_cache/libs"
export KAFKA_LIBS KAFKA_VERSION
