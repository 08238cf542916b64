#!/usr/bin/env bash
# Debian's kcat (1.7, librdkafka's command-line client): a Kafka reader that is not usync,
# for the test that every permanent topic is readable by any Kafka tool
# (tests/ops/test_audit_topics.py) and for operators reading the topics by hand
# (docs/operator-guide.md, "Read the audit topics"). Usage: services/kcat.sh install|status
# Nothing runs: kcat is a client, started by whoever reads.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

install() {
  if ! command -v kcat >/dev/null; then
    log "installing Debian's kcat"
    apt_install --no-install-recommends kcat
  fi
}

status() {
  if command -v kcat >/dev/null; then echo "kcat: $(kcat -V 2>&1 | grep -m1 '^Version')"; else echo "kcat: not installed"; return 1; fi
}

case "${1:-}" in
  install) install ;;
  status) status ;;
  *) echo "usage: $0 install|status" >&2; exit 2 ;;
esac
