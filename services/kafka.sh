#!/usr/bin/env bash
# Local Apache Kafka (KRaft, single node) on 127.0.0.1:9092, from the jars on Maven
# Central, and a SASL_SSL listener on 9094 (SCRAM-SHA-512 user usync, the test CA's
# certificate from $USYNC_DATA/tls). Usage: services/kafka.sh install|start|stop|status|restart|reset,
# or add-scram-user USER PASSWORD (a SCRAM-SHA-512 user on the running broker)
# Environment (defaults unchanged; see common.sh): USYNC_DATA (data under
# $USYNC_DATA/kafka), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), or
# USYNC_PORT_OFFSET added to both.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KAFKA_DIR="$USYNC_DATA/kafka"
KAFKA_LIB="$KAFKA_DIR/lib"
CONTROLLER_PORT="$KAFKA_CONTROLLER_PORT"
POM="$USYNC_ROOT/services/kafka/pom.xml"
PID_FILE="$KAFKA_DIR/kafka.pid"

JAVA_ARGS=(-Xms512m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
  -Dkafka.logs.dir="$KAFKA_DIR/logs"
  -Dlog4j2.configurationFile="$USYNC_ROOT/services/kafka/log4j2.properties"
  -cp "$KAFKA_LIB/*")
java_cmd() { java "${JAVA_ARGS[@]}" "$@"; }

install() {
  command -v java >/dev/null || apt_install openjdk-17-jre-headless
  command -v mvn >/dev/null || apt_install maven
  # Re-resolve when the pom changes (a version bump), not on every start.
  if [ ! -f "$KAFKA_LIB/.pom" ] || ! cmp -s "$POM" "$KAFKA_LIB/.pom"; then
    log "resolving Kafka jars with Maven"
    rm -rf "$KAFKA_LIB"
    mvn -q -B -f "$POM" dependency:copy-dependencies \
      -DoutputDirectory="$KAFKA_LIB" -DincludeScope=runtime
    cp "$POM" "$KAFKA_LIB/.pom"
  fi
  mkdir -p "$KAFKA_DIR/logs" "$KAFKA_DIR/data"
  test_pki
  cat "$TLS_DIR/server.key" "$TLS_DIR/server.pem" > "$KAFKA_DIR/keystore.pem"  # Kafka's PEM keystore: key + chain
  chmod 600 "$KAFKA_DIR/keystore.pem"
  cat > "$KAFKA_DIR/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$KAFKA_DIR/keystore.pem
log.dirs=$KAFKA_DIR/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=-1
PROPS
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    log "formatting KRaft storage"
    local cluster_id
    cluster_id=$(java_cmd kafka.tools.StorageTool random-uuid)
    java_cmd kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DIR/server.properties" >/dev/null
  fi
}

pid_alive() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }
ready() { python3 "$USYNC_ROOT/services/kafka_ready.py" "127.0.0.1:$KAFKA_PORT"; }

start() {
  install
  if pid_alive && ready; then log "already running"; return 0; fi
  if ! pid_alive; then
    log "starting Kafka on 127.0.0.1:$KAFKA_PORT"
    # java directly (not via a function) so that $! is the broker's own pid.
    nohup java "${JAVA_ARGS[@]}" kafka.Kafka "$KAFKA_DIR/server.properties" \
      >"$KAFKA_DIR/logs/stdout.log" 2>&1 &
    echo $! > "$PID_FILE"
  fi
  if ! wait_until 90 ready; then
    log "Kafka did not answer a metadata request; see $KAFKA_DIR/logs"
    return 1
  fi
  scram_user || { log "could not create the SCRAM user $KAFKA_SASL_USER"; return 1; }
  log "ready: 127.0.0.1:$KAFKA_PORT, SASL_SSL 127.0.0.1:$KAFKA_SASL_SSL_PORT (SCRAM-SHA-512 $KAFKA_SASL_USER)"
}

# The SASL_SSL listener's SCRAM user, made once per data dir (through the PLAINTEXT listener).
scram_user() {
  local marker="$KAFKA_DIR/data/.scram-$KAFKA_SASL_USER"
  [ -f "$marker" ] && return 0
  add_scram_user "$KAFKA_SASL_USER" "$KAFKA_SASL_PASSWORD" && touch "$marker"
}

# add_scram_user USER PASSWORD: a SCRAM-SHA-512 user on the running broker, with Kafka's
# own kafka-configs (ConfigCommand) through the PLAINTEXT listener; also `kafka.sh add-scram-user`.
add_scram_user() {
  java_cmd kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --alter \
    --add-config "SCRAM-SHA-512=[iterations=4096,password=$2]" \
    --entity-type users --entity-name "$1" >/dev/null
}

stop() {
  if pid_alive; then
    local pid; pid=$(cat "$PID_FILE")
    log "stopping (pid $pid)"
    kill "$pid" 2>/dev/null || true
    # A controlled shutdown takes a few seconds; give up on it after 60.
    wait_until 60 bash -c "! kill -0 $pid" || { log "forcing"; kill -9 "$pid" 2>/dev/null || true; }
  fi
  rm -f "$PID_FILE"
}

# Tests leave their topics behind; tens of thousands of partitions slow the broker
# (start-up over a minute, every benchmark lower). reset starts over with no topics.
reset() {
  stop
  log "deleting every topic (data in $KAFKA_DIR/data)"
  rm -rf "$KAFKA_DIR/data"
  start
}

status() {
  if pid_alive && ready; then echo "kafka: running"; else echo "kafka: stopped"; return 1; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  reset) reset ;;
  status) status ;;
  add-scram-user) add_scram_user "${2:?user}" "${3:?password}" ;;
  *) echo "usage: $0 install|start|stop|restart|reset|status|add-scram-user USER PASSWORD" >&2; exit 2 ;;
esac
