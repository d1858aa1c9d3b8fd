#!/usr/bin/env bash
# frappe-cdc quick start, on this machine, no Docker:
#   installs MariaDB and Apache Kafka if missing, builds frappe-cdc, starts a MariaDB primary
#   (binlog on, ROW/FULL/FULL), a MariaDB replica and an Apache Kafka node (KRaft) on
#   loopback, loads the demo Frappe schema into both, runs capture and apply, drives a
#   Frappe-shaped workload while printing a live summary, then runs `verify` until the replica
#   is in sync. On a terminal it keeps the pipeline and a slower workload running until Ctrl-C;
#   otherwise it stops everything and exits (0 = in sync).
#
# Settings (env): DEMO_SECONDS (workload length, 20), DEMO_RATE (invoices/s, 20),
#   DEMO_DIR (working directory; default a fresh temp dir, removed at exit unless DEMO_KEEP=1),
#   CAPTURE_METRICS_PORT (9464), APPLY_METRICS_PORT (9465).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

DEMO_SECONDS="${DEMO_SECONDS:-20}"
DEMO_RATE="${DEMO_RATE:-20}"
say() { printf '\033[1mdemo:\033[0m %s\n' "$*" >&2; }

. scripts/install-deps.sh

DIR="${DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/frappe-cdc-demo.XXXXXX")}"
mkdir -p "$DIR"
PIDS=()
cleanup() {
  trap - EXIT INT TERM
  # Newest first: workload, apply, capture, then Kafka and the servers they use.
  local i
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill "${PIDS[i]}" 2>/dev/null || true
    wait "${PIDS[i]}" 2>/dev/null || true
  done
  if [ -z "${DEMO_KEEP:-}" ]; then rm -rf "$DIR"; else say "kept $DIR"; fi
  say "stopped"
}
trap cleanup EXIT
trap 'echo; exit 130' INT TERM

free_port() {
  python3 - "$1" <<'PY'
import socket, sys
want = int(sys.argv[1])
for p in ([want] if want else []) + [0]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); print(s.getsockname()[1]); break
    except OSError:
        pass
    finally:
        s.close()
PY
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }
metric_sum() { # metric_sum PORT REGEX: sum of matching samples
  curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null |
    awk -v re="$2" '$0 !~ /^#/ && $0 ~ re { s += $NF } END { printf "%d", s + 0 }'
}

say "building frappe-cdc (release)"
cargo build --release --quiet --bin frappe-cdc
BIN="$ROOT/target/release/frappe-cdc"

start_mariadb() { # start_mariadb NAME SERVER_ID [extra mariadbd args...] → sets PORT_<NAME>
  local name="$1" sid="$2"; shift 2
  local d="$DIR/$name" port
  mkdir -p "$d"
  mariadb-install-db --no-defaults --user="$(id -un)" --auth-root-authentication-method=normal \
    --skip-test-db --datadir="$d/data" >"$d/install.log" 2>&1
  port="$(free_port 0)"
  mariadbd --no-defaults --datadir="$d/data" --socket="$d/mysqld.sock" --port="$port" \
    --bind-address=127.0.0.1 --server-id="$sid" --user="$(id -un)" --pid-file="$d/mysqld.pid" \
    --log-error="$d/error.log" --skip-name-resolve --innodb-buffer-pool-size=128M \
    --character-set-server=utf8mb4 --collation-server=utf8mb4_unicode_ci "$@" \
    </dev/null >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 600); do
    mariadb --no-defaults -uroot --socket="$d/mysqld.sock" -e 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  mariadb --no-defaults -uroot --socket="$d/mysqld.sock" -e 'select 1' >/dev/null ||
    { cat "$d/error.log" >&2; exit 1; }
  mariadb --no-defaults -uroot --socket="$d/mysqld.sock" \
    -e "CREATE DATABASE site CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
  mariadb --no-defaults -uroot --socket="$d/mysqld.sock" --default-character-set=utf8mb4 site \
    <"$ROOT/tests/fixtures/frappe_schema.sql"
  printf -v "PORT_$name" '%s' "$port"
}

CDC_PASS="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
APPLY_PASS="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"

say "starting the primary (binlog ROW, FULL image, FULL metadata)"
start_mariadb primary 1 --log-bin=mysql-bin --binlog-format=ROW --binlog-row-image=FULL \
  --binlog-row-metadata=FULL --binlog-expire-logs-seconds=604800
mariadb --no-defaults -uroot --socket="$DIR/primary/mysqld.sock" -e "
  CREATE USER 'cdc'@'127.0.0.1' IDENTIFIED BY '$CDC_PASS';
  GRANT SELECT, REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc'@'127.0.0.1';"
say "starting the replica"
start_mariadb replica 2
mariadb --no-defaults -uroot --socket="$DIR/replica/mysqld.sock" -e "
  CREATE USER 'apply'@'127.0.0.1' IDENTIFIED BY '$APPLY_PASS';
  GRANT SELECT, INSERT, UPDATE, DELETE, CREATE ON site.* TO 'apply'@'127.0.0.1';"

say "starting Apache Kafka $KAFKA_VERSION (one KRaft node, log $DIR/kafka/server.log)"
. scripts/kafka-node.sh
kafka_node_start "$DIR/kafka"
PIDS+=("$KAFKA_PID")
BPORT="$KAFKA_PORT"

CPORT="$(free_port "${CAPTURE_METRICS_PORT:-9464}")"
APORT="$(free_port "${APPLY_METRICS_PORT:-9465}")"
SOURCE="mysql://cdc@127.0.0.1:$PORT_primary/site"
REPLICA="mysql://apply@127.0.0.1:$PORT_replica/site"

say "starting capture (metrics http://127.0.0.1:$CPORT/metrics, log $DIR/capture.log)"
FRAPPE_CDC_SOURCE_PASSWORD="$CDC_PASS" RUST_LOG=info "$BIN" capture --source "$SOURCE" \
  --brokers "127.0.0.1:$BPORT" --topic frappe-cdc --server-id 4101 --state-dir "$DIR/state" \
  --metrics-addr "127.0.0.1:$CPORT" </dev/null >"$DIR/capture.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 600); do http_ok "http://127.0.0.1:$CPORT/readyz" && break; sleep 0.1; done
http_ok "http://127.0.0.1:$CPORT/readyz" || { tail -20 "$DIR/capture.log" >&2; exit 1; }

say "starting apply (metrics http://127.0.0.1:$APORT/metrics, log $DIR/apply.log)"
FRAPPE_CDC_REPLICA_PASSWORD="$APPLY_PASS" RUST_LOG=info "$BIN" apply --replica "$REPLICA" \
  --brokers "127.0.0.1:$BPORT" --topic frappe-cdc --group demo-replica \
  --metrics-addr "127.0.0.1:$APORT" </dev/null >"$DIR/apply.log" 2>&1 &
PIDS+=($!)

summary() {
  local lag
  lag="$(curl -fsS --max-time 2 "http://127.0.0.1:$CPORT/metrics" 2>/dev/null |
    awk '$1 == "frappe_cdc_capture_source_lag_seconds" { print $2 }')"
  printf '  %4ss  captured %6s docs  applied %6s  conflicts %s  dead letters %s  source lag %ss  consumer lag (Kafka) %s msgs\n' \
    "$1" "$(metric_sum "$CPORT" '^frappe_cdc_capture_documents_total')" \
    "$(metric_sum "$APORT" '^frappe_cdc_apply_documents_total.*outcome="applied"')" \
    "$(metric_sum "$APORT" '^frappe_cdc_apply_open_conflicts')" \
    "$(metric_sum "$APORT" '^frappe_cdc_apply_dead_letters_total')" \
    "${lag:-?}" "$(metric_sum "$APORT" '^frappe_cdc_apply_consumer_lag_messages')" >&2
}

workload() { # workload RATE SECONDS
  WORKLOAD_SOCKET="$DIR/primary/mysqld.sock" WORKLOAD_USER=root WORKLOAD_DB=site \
    WORKLOAD_RATE="$1" WORKLOAD_SECONDS="$2" "$ROOT/scripts/workload.sh"
}

say "workload: $DEMO_RATE invoices/s for ${DEMO_SECONDS}s (insert, save, submit, db_set, delete)"
workload "$DEMO_RATE" "$DEMO_SECONDS" &
WL=$!
PIDS+=("$WL")
t=0
while kill -0 "$WL" 2>/dev/null; do summary "$t"; sleep 2; t=$((t + 2)); done
wait "$WL" || { say "workload failed"; exit 1; }

say "workload done; running verify until the replica matches the primary"
verify() {
  FRAPPE_CDC_SOURCE_PASSWORD="$CDC_PASS" FRAPPE_CDC_REPLICA_PASSWORD="$APPLY_PASS" RUST_LOG=warn \
    "$BIN" verify --source "$SOURCE" --replica "$REPLICA"
}
ok=""
for _ in $(seq 60); do
  summary "$t"
  if out="$(verify 2>&1)"; then ok=1; break; fi
  sleep 2; t=$((t + 2))
done
printf '%s\n' "$out"
[ -n "$ok" ] || { say "replica NOT in sync after 120 s; logs in $DIR (DEMO_KEEP=1 keeps them)"; exit 1; }
say "replica in sync"
say "Kafka's own view of the consumer group (kafka-consumer-groups --describe):"
java -Xmx256m -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.consumer.group.ConsumerGroupCommand \
  --bootstrap-server "127.0.0.1:$BPORT" --describe --group demo-replica >&2 2>/dev/null ||
  say "(kafka-consumer-groups failed; the consumer lag above is the same figure: high watermark minus the group's committed offset)"
say "metrics: curl http://127.0.0.1:$CPORT/metrics (capture), http://127.0.0.1:$APORT/metrics (apply)"

if [ -t 0 ] && [ -z "${DEMO_EXIT:-}" ]; then
  say "pipeline keeps running with 2 invoices/s; Ctrl-C stops everything"
  workload 2 0 &
  PIDS+=($!)
  while :; do sleep 5; t=$((t + 5)); summary "$t"; done
fi
