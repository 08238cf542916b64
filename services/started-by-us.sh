#!/usr/bin/env bash
# Without arguments: start whichever broker is down and print the names of those it
# started. With --stop NAMES: stop exactly those. Lets `make test` leave running
# brokers running and clean up only after itself.
# Which brokers: the environment of services/common.sh (USYNC_DATA, USYNC_PORT_OFFSET or
# the single *_PORT variables, RABBITMQ_NODENAME), passed through to both scripts.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
here="$USYNC_ROOT/services"
if [ "${1:-}" = "--stop" ]; then
  for name in ${2:-}; do "$here/$name.sh" stop >&2; done
  exit 0
fi
started=""
for name in rabbitmq kafka; do
  if ! "$here/$name.sh" status >/dev/null 2>&1; then
    "$here/$name.sh" start >&2
    started="$started $name"
  fi
done
echo "$started"
