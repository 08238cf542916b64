#!/usr/bin/env bash
# Local Prometheus on loopback (Debian's package: Prometheus 2.42 and promtool), for the
# alert-rule and scrape tests. Usage: services/prometheus.sh install|start|stop|status
# Environment (see common.sh): USYNC_DATA (TSDB, log and pid under $USYNC_DATA/prometheus),
# PROMETHEUS_PORT (9090 + USYNC_PORT_OFFSET), PROMETHEUS_CONFIG (the configuration to
# load; default $USYNC_DATA/prometheus/prometheus.yml, written on first start: no scrape
# target but itself, the rules of compose/prometheus/alerts.yml).
# Installing never starts Debian's own prometheus service: --no-install-recommends keeps
# out the node exporter, and apt's policy-rc.d (or the absence of an init) leaves the
# packaged service stopped; this script runs its own process, not the packaged unit.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROM_DIR="$USYNC_DATA/prometheus"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-$((9090 + USYNC_PORT_OFFSET))}"
PROMETHEUS_CONFIG="${PROMETHEUS_CONFIG:-$PROM_DIR/prometheus.yml}"
PID_FILE="$PROM_DIR/prometheus.pid"

install() {
  if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    log "installing Debian's prometheus (with promtool)"
    apt_install --no-install-recommends prometheus
  fi
  mkdir -p "$PROM_DIR/data"
}

is_running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

ready() { python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$PROMETHEUS_PORT/-/ready', timeout=2)"; }

start() {
  install
  if is_running && ready >/dev/null 2>&1; then log "already running"; return 0; fi
  if [ ! -f "$PROMETHEUS_CONFIG" ]; then
    cat > "$PROMETHEUS_CONFIG" <<CONF
global:
  scrape_interval: 15s
rule_files: ["$USYNC_ROOT/compose/prometheus/alerts.yml"]
scrape_configs:
  - job_name: prometheus
    static_configs: [{targets: ["127.0.0.1:$PROMETHEUS_PORT"]}]
CONF
  fi
  log "starting on 127.0.0.1:$PROMETHEUS_PORT with $PROMETHEUS_CONFIG"
  nohup prometheus --config.file="$PROMETHEUS_CONFIG" --storage.tsdb.path="$PROM_DIR/data" \
    --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" --web.enable-lifecycle \
    >>"$PROM_DIR/prometheus.log" 2>&1 &
  echo $! > "$PID_FILE"
  wait_until 60 ready || { log "not ready; see $PROM_DIR/prometheus.log"; return 1; }
  log "ready: http://127.0.0.1:$PROMETHEUS_PORT"
}

stop() {
  if is_running; then
    log "stopping"
    kill "$(cat "$PID_FILE")" 2>/dev/null || true
    wait_until 30 bash -c "! kill -0 $(cat "$PID_FILE") 2>/dev/null" || kill -9 "$(cat "$PID_FILE")" 2>/dev/null || true
  fi
  rm -f "$PID_FILE"
}

status() {
  if is_running && ready >/dev/null 2>&1; then echo "prometheus: running"; else echo "prometheus: stopped"; return 1; fi
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
