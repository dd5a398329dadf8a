# Sourced by scripts: makes sure Prometheus and promtool are available (the observability
# tests scrape services with a real Prometheus and check the alert rules with promtool) and
# exports PROMETHEUS_BIN and PROMTOOL_BIN. Order: those variables, then PATH, then Debian's
# `prometheus` package (it ships both), installed with apt-get as root or through sudo.

a4co_ensure_prometheus() {
  local prometheus promtool sudo=""
  prometheus=${PROMETHEUS_BIN:-$(command -v prometheus 2>/dev/null || true)}
  promtool=${PROMTOOL_BIN:-$(command -v promtool 2>/dev/null || true)}
  if [ -z "$prometheus" ] || [ -z "$promtool" ]; then
    echo "prometheus/promtool not found: installing Debian's prometheus package" >&2
    if [ "$(id -u)" -ne 0 ]; then
      if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
        echo "not root and no sudo: install it by hand (apt-get install prometheus) or set PROMETHEUS_BIN and PROMTOOL_BIN; the tests that need it will fail and say so." >&2
        return 1
      fi
    fi
    # The package's service is not wanted here (no init system in CI containers, and the
    # tests start their own on loopback ports).
    if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus >&2; then
      $sudo apt-get update >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus >&2 || {
        echo "could not install Debian's prometheus package: the tests that need it will fail and say so." >&2
        return 1
      }
    fi
    prometheus=$(command -v prometheus)
    promtool=$(command -v promtool)
  fi
  export PROMETHEUS_BIN="$prometheus" PROMTOOL_BIN="$promtool"
}
