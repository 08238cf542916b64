# Shared settings for the local broker scripts. Sourced, not run.
# Everything lives under .local/ (git-ignored) unless USYNC_DATA says otherwise.
#
# A second, isolated pair of brokers (tests that stop brokers while others use the
# default ones) needs its own data dir, ports and RabbitMQ node name:
#
#   USYNC_DATA=$PWD/.local/e2e USYNC_PORT_OFFSET=100 RABBITMQ_NODENAME=usync-e2e@localhost \
#     services/rabbitmq.sh start
#
# USYNC_PORT_OFFSET (default 0) is added to every default port below; each port can
# also be set on its own (tests/support/services.py reads the same variables):
#   KAFKA_PORT 9092, KAFKA_CONTROLLER_PORT 9093,
#   RABBITMQ_AMQP_PORT 5672, RABBITMQ_STOMP_PORT 61613, RABBITMQ_WEB_STOMP_PORT 15674,
#   RABBITMQ_MGMT_PORT 15672, RABBITMQ_DIST_PORT (Erlang distribution) AMQP port + 20000,
#   TLS beside them: RABBITMQ_AMQPS_PORT 5671, RABBITMQ_STOMPS_PORT 61614, RABBITMQ_WEB_STOMPS_PORT 15673,
#   KAFKA_SASL_SSL_PORT 9094 (user KAFKA_SASL_USER, password KAFKA_SASL_PASSWORD),
#   RABBITMQ_NODENAME usync@localhost.
set -euo pipefail
USYNC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USYNC_DATA="${USYNC_DATA:-$USYNC_ROOT/.local}"
mkdir -p "$USYNC_DATA"

USYNC_PORT_OFFSET="${USYNC_PORT_OFFSET:-0}"
KAFKA_PORT="${KAFKA_PORT:-$((9092 + USYNC_PORT_OFFSET))}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((9093 + USYNC_PORT_OFFSET))}"
RABBITMQ_AMQP_PORT="${RABBITMQ_AMQP_PORT:-$((5672 + USYNC_PORT_OFFSET))}"
RABBITMQ_STOMP_PORT="${RABBITMQ_STOMP_PORT:-$((61613 + USYNC_PORT_OFFSET))}"
RABBITMQ_WEB_STOMP_PORT="${RABBITMQ_WEB_STOMP_PORT:-$((15674 + USYNC_PORT_OFFSET))}"
RABBITMQ_MGMT_PORT="${RABBITMQ_MGMT_PORT:-$((15672 + USYNC_PORT_OFFSET))}"
RABBITMQ_AMQPS_PORT="${RABBITMQ_AMQPS_PORT:-$((5671 + USYNC_PORT_OFFSET))}"
RABBITMQ_STOMPS_PORT="${RABBITMQ_STOMPS_PORT:-$((61614 + USYNC_PORT_OFFSET))}"
RABBITMQ_WEB_STOMPS_PORT="${RABBITMQ_WEB_STOMPS_PORT:-$((15673 + USYNC_PORT_OFFSET))}"

TLS_DIR="$USYNC_DATA/tls"
# Kafka's SASL_SSL listener (SCRAM-SHA-512, the test CA's certificate) beside PLAINTEXT.
KAFKA_SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-$((9094 + USYNC_PORT_OFFSET))}"
KAFKA_SASL_USER="${KAFKA_SASL_USER:-usync}"
KAFKA_SASL_PASSWORD="${KAFKA_SASL_PASSWORD:-usync-test-password}"  # a local test broker's, not a secret

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }

# wait_until SECONDS CMD...: poll CMD every 0.5 s until it succeeds or time runs out.
wait_until() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then return 1; fi
    sleep 0.5
  done
}

# The brokers' TLS certificates (the test CA of tests/support/tls.py) in $TLS_DIR: written
# once, again when the server's expires within a week; needs the venv (make install).
test_pki() {
  local python="$USYNC_ROOT/.local/venv/bin/python" result
  [ -x "$python" ] || { log "no $python: run make install first (it makes the test CA)"; return 1; }
  result=$(cd "$USYNC_ROOT" && "$python" -m tests.support.tls "$TLS_DIR")
  if [ "$result" = written ]; then log "wrote the test CA and certificates to $TLS_DIR"; fi
}

# apt-get update only once per machine boot; it is the slow part of an install.
apt_install() {
  if [ ! -f /tmp/.usync-apt-updated ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && touch /tmp/.usync-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
