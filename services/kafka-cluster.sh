#!/usr/bin/env bash
# A local 3-node Apache Kafka cluster (KRaft, each node controller + broker) on loopback,
# from the same Maven-resolved jars as services/kafka.sh. For the failure tests
# (tests/cluster): kill one node, restart it, take the cluster down to one node.
#
# Usage: services/kafka-cluster.sh install|start|stop|kill|status|restart|reset [NODE]
#   NODE 1, 2 or 3: that node only (kill = SIGKILL, no controlled shutdown);
#   no NODE: every node (start waits until all three answer; stop/kill all three).
#   bootstrap prints the bootstrap list.
# Ports (offset scheme of common.sh): node N listens on 19092 + 2N (broker) and
# 19093 + 2N (controller), plus USYNC_PORT_OFFSET: 19094/19095, 19096/19097, 19098/19099
# (clear of the single node's 9092-9094: its SASL_SSL listener is 9094).
# Data under $USYNC_DATA/kafka-cluster/nodeN. Heap 512 MiB each (-Xmx512m): three nodes
# and the single node fit next to the tests on the 24 GiB box.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

KAFKA_LIB="$USYNC_DATA/kafka/lib"
CLUSTER_DIR="$USYNC_DATA/kafka-cluster"
NODES=(1 2 3)

broker_port() { echo $((19092 + 2 * $1 + USYNC_PORT_OFFSET)); }
controller_port() { echo $((19093 + 2 * $1 + USYNC_PORT_OFFSET)); }
node_dir() { echo "$CLUSTER_DIR/node$1"; }
pid_file() { echo "$(node_dir "$1")/kafka.pid"; }

java_args() {
  local dir; dir=$(node_dir "$1")
  echo -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true -Dkafka.logs.dir="$dir/logs" \
    -Dlog4j2.configurationFile="$USYNC_ROOT/services/kafka/log4j2.properties"
}

voters() {
  local out="" n
  for n in "${NODES[@]}"; do out="$out${out:+,}$n@127.0.0.1:$(controller_port "$n")"; done
  echo "$out"
}

bootstrap() {
  local out="" n
  for n in "${NODES[@]}"; do out="$out${out:+,}127.0.0.1:$(broker_port "$n")"; done
  echo "$out"
}

write_properties() {
  local n=$1 dir; dir=$(node_dir "$n")
  mkdir -p "$dir/logs" "$dir/data"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$(voters)
listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(broker_port "$n")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
num.partitions=4
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
unclean.leader.election.enable=false
log.retention.hours=-1
PROPS
}

install() {
  "$USYNC_ROOT/services/kafka.sh" install  # java, maven, the jars
  local n cluster_id=""
  [ -f "$CLUSTER_DIR/cluster.id" ] && cluster_id=$(cat "$CLUSTER_DIR/cluster.id")
  if [ -z "$cluster_id" ]; then
    mkdir -p "$CLUSTER_DIR"
    cluster_id=$(java -cp "$KAFKA_LIB/*" kafka.tools.StorageTool random-uuid)
    echo "$cluster_id" > "$CLUSTER_DIR/cluster.id"
  fi
  for n in "${NODES[@]}"; do
    write_properties "$n"
    if [ ! -f "$(node_dir "$n")/data/meta.properties" ]; then
      log "formatting KRaft storage of node $n"
      # shellcheck disable=SC2046
      java $(java_args "$n") -cp "$KAFKA_LIB/*" kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$(node_dir "$n")/server.properties" >/dev/null
    fi
  done
}

pid_alive() { local f; f=$(pid_file "$1"); [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null; }
ready() { python3 "$USYNC_ROOT/services/kafka_ready.py" "127.0.0.1:$(broker_port "$1")"; }

start_node() {
  local n=$1
  if pid_alive "$n"; then return 0; fi
  log "starting node $n on 127.0.0.1:$(broker_port "$n")"
  # shellcheck disable=SC2046
  nohup java $(java_args "$n") -cp "$KAFKA_LIB/*" kafka.Kafka "$(node_dir "$n")/server.properties" \
    >"$(node_dir "$n")/logs/stdout.log" 2>&1 &
  echo $! > "$(pid_file "$n")"
}

# A node answers metadata only once the quorum has a leader: starting one node of a
# stopped cluster alone never becomes ready, so start launches all first, then waits.
start() {
  install
  local n
  for n in "$@"; do start_node "$n"; done
  for n in "$@"; do
    if ! wait_until 120 ready "$n"; then
      log "node $n did not answer a metadata request; see $(node_dir "$n")/logs"
      return 1
    fi
  done
  log "ready: $(bootstrap)"
}

# stop_nodes SIGNAL NODE...: signal every node first, then wait for each. One by one, the
# last node's controlled shutdown waits for a quorum that has already left (60 s, then
# SIGKILL); signalled together they all stop in a few seconds.
stop_nodes() {
  local signal=$1 n pid; shift
  local -A pids=()
  for n in "$@"; do
    if pid_alive "$n"; then
      pid=$(cat "$(pid_file "$n")"); pids[$n]=$pid
      log "stopping node $n (pid $pid, SIG$signal)"
      kill -s "$signal" "$pid" 2>/dev/null || true
    fi
  done
  for n in "${!pids[@]}"; do
    pid=${pids[$n]}
    wait_until 60 bash -c "! kill -0 $pid" || { log "forcing node $n"; kill -9 "$pid" 2>/dev/null || true; }
  done
  for n in "$@"; do rm -f "$(pid_file "$n")"; done
}

status() {
  local n rc=0
  for n in "$@"; do
    if pid_alive "$n" && ready "$n"; then echo "kafka-cluster node $n: running"
    else echo "kafka-cluster node $n: stopped"; rc=1; fi
  done
  return $rc
}

reset() {
  local n
  stop_nodes TERM "${NODES[@]}"
  log "deleting the cluster's data ($CLUSTER_DIR)"
  rm -rf "$CLUSTER_DIR"
  start "${NODES[@]}"
}

command=${1:-}; shift || true
if [ $# -gt 0 ]; then
  case "$1" in 1|2|3) targets=("$1") ;; *) echo "no such node: $1 (1, 2 or 3)" >&2; exit 2 ;; esac
else
  targets=("${NODES[@]}")
fi
case "$command" in
  install) install ;;
  start) start "${targets[@]}" ;;
  stop) stop_nodes TERM "${targets[@]}" ;;
  kill) stop_nodes KILL "${targets[@]}" ;;
  restart) stop_nodes TERM "${targets[@]}"; start "${targets[@]}" ;;
  status) status "${targets[@]}" ;;
  reset) reset ;;
  bootstrap) bootstrap ;;
  *) echo "usage: $0 install|start|stop|kill|status|restart|reset|bootstrap [1|2|3]" >&2; exit 2 ;;
esac
