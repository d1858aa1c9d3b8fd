#!/usr/bin/env bash
# One Apache Kafka KRaft node (combined broker + controller) on loopback, for scripts.
# Source it after scripts/install-deps.sh (which sets KAFKA_LIBS), then:
#   kafka_node_start DIR [PORT]   formats DIR/logs, starts the node, waits until it accepts
#                                 connections; sets KAFKA_PORT and KAFKA_PID
# The node logs to DIR/server.log. Stop it with `kill $KAFKA_PID` (clean shutdown).

kafka_node_start() {
  local dir="$1" port="${2:-}" cport id
  # Two ports from sockets held together (separate calls can return the same port).
  local ports
  ports="$(python3 -c 'import socket
ss=[socket.socket() for _ in range(2)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
  [ -n "$port" ] || port="${ports%% *}"
  cport="${ports##* }"
  [ "$cport" != "$port" ] || cport="${ports%% *}"
  id="$(python3 -c 'import base64,uuid;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[:22])')"
  mkdir -p "$dir"
  cat >"$dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$dir/logs
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
EOF
  java -Xmx256m -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format --cluster-id="$id" \
    -c "$dir/server.properties" >"$dir/format.log" 2>&1 ||
    { cat "$dir/format.log" >&2; echo "kafka-node: storage format failed" >&2; return 1; }
  java -Xms128m -Xmx1g -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -Dorg.slf4j.simpleLogger.showDateTime=true \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" </dev/null >"$dir/server.log" 2>&1 &
  KAFKA_PID=$!
  KAFKA_PORT="$port"
  local i
  for i in $(seq 600); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    kill -0 "$KAFKA_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -20 "$dir/server.log" >&2
  echo "kafka-node: Apache Kafka did not start on 127.0.0.1:$port (log: $dir/server.log)" >&2
  return 1
}
