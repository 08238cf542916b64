#!/usr/bin/env bash
# Local RabbitMQ on loopback: AMQP 5672, STOMP 61613, web-STOMP 15674 (/ws),
# management 15672, and over TLS AMQPS 5671, STOMP 61614, web-STOMP 15673 (/ws) with the
# test CA's certificate ($USYNC_DATA/tls, written by tests/support/tls.py with the venv's
# Python: `make install` first). Usage: services/rabbitmq.sh install|start|stop|status|restart
# Environment (defaults unchanged; see common.sh): USYNC_DATA (node data under
# $USYNC_DATA/rabbitmq), RABBITMQ_NODENAME (usync@localhost), RABBITMQ_AMQP_PORT,
# RABBITMQ_STOMP_PORT, RABBITMQ_WEB_STOMP_PORT, RABBITMQ_MGMT_PORT,
# RABBITMQ_DIST_PORT (AMQP + 20000), or USYNC_PORT_OFFSET added to every port.
# A second node needs its own name, data dir and ports; both share the one epmd.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

RMQ_DIR="$USYNC_DATA/rabbitmq"
RMQ_BIN=/usr/lib/rabbitmq/bin
export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-usync@localhost}"
export RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia"
export RABBITMQ_LOG_BASE="$RMQ_DIR/log"
export RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins"
export RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq"
export RABBITMQ_PID_FILE="$RMQ_DIR/rabbitmq.pid"
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT="$RABBITMQ_AMQP_PORT"
# The distribution port defaults to 5672 + 20000 whatever the config file says: set it
# so that a second node does not collide with the first.
export RABBITMQ_DIST_PORT="${RABBITMQ_DIST_PORT:-$((RABBITMQ_AMQP_PORT + 20000))}"
export USYNC_RMQ_PORTS="$RABBITMQ_AMQP_PORT $RABBITMQ_STOMP_PORT $RABBITMQ_WEB_STOMP_PORT $RABBITMQ_MGMT_PORT"
USYNC_RMQ_PORTS+=" $RABBITMQ_AMQPS_PORT $RABBITMQ_STOMPS_PORT $RABBITMQ_WEB_STOMPS_PORT"
export ERL_EPMD_ADDRESS=127.0.0.1
export HOME="${HOME:-/root}"   # the Erlang cookie lives in $HOME

install() {
  if [ ! -x "$RMQ_BIN/rabbitmq-server" ]; then
    log "installing Debian's rabbitmq-server"
    apt_install rabbitmq-server
  fi
  mkdir -p "$RMQ_DIR/log" "$RMQ_DIR/mnesia"
  test_pki
  cat > "$RMQ_DIR/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$RABBITMQ_AMQP_PORT
stomp.listeners.tcp.1 = 127.0.0.1:$RABBITMQ_STOMP_PORT
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = $RABBITMQ_WEB_STOMP_PORT
management.tcp.ip = 127.0.0.1
management.tcp.port = $RABBITMQ_MGMT_PORT
loopback_users = none
log.console = false
log.file.level = warning
disk_free_limit.absolute = 50MB
listeners.ssl.default = 127.0.0.1:$RABBITMQ_AMQPS_PORT
stomp.listeners.ssl.1 = 127.0.0.1:$RABBITMQ_STOMPS_PORT
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/server.pem
ssl_options.keyfile = $TLS_DIR/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
web_stomp.ssl.ip = 127.0.0.1
web_stomp.ssl.port = $RABBITMQ_WEB_STOMPS_PORT
web_stomp.ssl.cacertfile = $TLS_DIR/ca.pem
web_stomp.ssl.certfile = $TLS_DIR/server.pem
web_stomp.ssl.keyfile = $TLS_DIR/server.key
CONF
  if [ ! -f "$RABBITMQ_ENABLED_PLUGINS_FILE" ]; then
    "$RMQ_BIN/rabbitmq-plugins" enable --offline rabbitmq_management rabbitmq_stomp rabbitmq_web_stomp >/dev/null
  fi
}

ctl() { "$RMQ_BIN/rabbitmqctl" -q "$@"; }

is_running() { ctl status >/dev/null 2>&1; }

# Ready means every listener answers, not just the Erlang node.
listeners_up() {
  python3 - <<'PY'
import os, socket, sys
for port in map(int, os.environ["USYNC_RMQ_PORTS"].split()):
    with socket.socket() as s:
        s.settimeout(1)
        if s.connect_ex(("127.0.0.1", port)):
            sys.exit(1)
PY
}

start() {
  install
  if is_running && listeners_up; then log "already running"; return 0; fi
  log "starting $RABBITMQ_NODENAME"
  "$RMQ_BIN/rabbitmq-server" -detached
  # await_startup right after -detached can return before the node exists: loop.
  wait_until 90 ctl await_startup --timeout 5 || { log "node did not boot; see $RMQ_DIR/log"; return 1; }
  wait_until 60 listeners_up || { log "listeners did not open"; return 1; }
  log "ready: amqp://127.0.0.1:$RABBITMQ_AMQP_PORT stomp://127.0.0.1:$RABBITMQ_STOMP_PORT" \
    "ws://127.0.0.1:$RABBITMQ_WEB_STOMP_PORT/ws http://127.0.0.1:$RABBITMQ_MGMT_PORT" \
    "amqps://127.0.0.1:$RABBITMQ_AMQPS_PORT stomp+ssl://127.0.0.1:$RABBITMQ_STOMPS_PORT" \
    "wss://127.0.0.1:$RABBITMQ_WEB_STOMPS_PORT/ws (CA $TLS_DIR/ca.pem)"
}

stop() {
  if is_running; then
    log "stopping"
    ctl shutdown || true
  fi
  # epmd refuses -kill while another node (a second instance) is registered with it.
  "$RMQ_BIN/../../../bin/epmd" -kill >/dev/null 2>&1 || epmd -kill >/dev/null 2>&1 || true
  wait_until 30 bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$RABBITMQ_AMQP_PORT) 2>/dev/null" || true
}

status() {
  if is_running && listeners_up; then echo "rabbitmq: running"; else echo "rabbitmq: stopped"; return 1; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|restart|status" >&2; exit 2 ;;
esac
