#!/usr/bin/env bash
# Installs what frappe-cdc's tests, demo and benchmarks need on Debian bookworm, when missing:
#   - MariaDB server and client (apt; no service is started: tests start their own servers)
#   - Prometheus (apt; the observability test starts its own on loopback)
#   - Chromium and chromedriver (apt; the conflicts page's browser test drives them headless)
#   - Apache Kafka 4.3.1, the release jars from Maven Central, sha256-pinned (install-kafka.sh;
#     OpenJDK 17 and Maven from apt when missing)
#   - rustfmt and clippy
# Source it: it exports KAFKA_LIBS and KAFKA_VERSION.
set -euo pipefail

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then echo sudo; else
      echo "install-deps: need root (or sudo) to install $1" >&2; exit 1; fi
  fi
}

if ! command -v mariadbd >/dev/null 2>&1 || ! command -v mariadb-install-db >/dev/null 2>&1; then
  echo "install-deps: installing mariadb-server (apt)" >&2
  SUDO="$(need_root mariadb-server)"
  $SUDO apt-get update -qq
  APT_UPDATED=1
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mariadb-server mariadb-client >/dev/null
fi

if ! command -v prometheus >/dev/null 2>&1 && [ -z "${PROMETHEUS_BIN:-}" ]; then
  echo "install-deps: installing prometheus (apt)" >&2
  SUDO="$(need_root prometheus)"
  [ -n "${APT_UPDATED:-}" ] || $SUDO apt-get update -qq
  # No service is started (there may be no init system); the package is only used for its binary.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "install-deps: installing chromium and chromium-driver (apt)" >&2
  SUDO="$(need_root chromium)"
  [ -n "${APT_UPDATED:-}" ] || $SUDO apt-get update -qq
  APT_UPDATED=1
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
fi

. "$(dirname "${BASH_SOURCE[0]}")/install-kafka.sh"

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 || true
  done
fi
