# Shared settings for the local broker scripts. Sourced, not run.
# Everything lives under .local/ (git-ignored) unless USYNC_DATA says otherwise.
set -euo pipefail
USYNC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
USYNC_DATA="${USYNC_DATA:-$USYNC_ROOT/.local}"
mkdir -p "$USYNC_DATA"

log() { printf '[%s] %s\n' "$(basename "$0" .sh)" "$*" >&2; }

# wait_until SECONDS CMD...: poll CMD every 0.5 s until it succeeds or time runs out.
wait_until() {
  local deadline=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    if (( $(date +%s) >= deadline )); then return 1; fi
    sleep 0.5
  done
}

# apt-get update only once per machine boot; it is the slow part of an install.
apt_install() {
  if [ ! -f /tmp/.usync-apt-updated ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq && touch /tmp/.usync-apt-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
