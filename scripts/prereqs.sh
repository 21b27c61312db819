#!/usr/bin/env bash
# Installs (as root, via apt-get) or names (otherwise) what building and testing cc-gateway
# needs on a fresh Debian machine. Idempotent and quiet when everything is there.
set -euo pipefail

need_pkgs=()
have() { command -v "$1" >/dev/null 2>&1; }

# a C compiler and make: aws-lc-sys (the crypto backend) compiles C
have cc || need_pkgs+=(gcc)
have make || need_pkgs+=(make)
# https key sources (OIDC discovery against real issuers) read the system CA store
[ -e /etc/ssl/certs/ca-certificates.crt ] || need_pkgs+=(ca-certificates)
# tests signal the gateway with kill(1) (SIGHUP reload, SIGTERM shutdown); slim images lack procps
[ -x /bin/kill ] || [ -x /usr/bin/kill ] || need_pkgs+=(procps)
# the budget tests run a real Redis (spawned on an ephemeral port, stopped by PID)
have redis-server || need_pkgs+=(redis-server)
# the request log and L4 route tests run a real PostgreSQL: initdb + pg_ctl in a temp dir on an ephemeral
# loopback port (as `nobody` when root: initdb refuses root); the package's own cluster is not used
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_pkgs+=(postgresql)
# the unit file test runs `systemd-analyze verify` on deploy/systemd/cc-gateway.service
have systemd-analyze || need_pkgs+=(systemd)
# extra tools for a target, e.g. PREREQS_EXTRA="wrk h2load:nghttp2-client" (command[:package])
for p in ${PREREQS_EXTRA:-}; do have "${p%%:*}" || need_pkgs+=("${p#*:}"); done

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && have apt-get; then
    echo "prereqs: installing ${need_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # do not let the packages start their system services (redis-server, nginx): tests and
    # benchmarks start their own on loopback
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
      printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created_policy=1
    fi
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
    [ "$created_policy" = 1 ] && rm -f "$policy"
  else
    echo "prereqs: missing: ${need_pkgs[*]}" >&2
    echo "prereqs: install them with: sudo apt-get install -y ${need_pkgs[*]}" >&2
    exit 1
  fi
fi

# promtool checks and unit-tests deploy/prometheus/alerts.yml (tests/integration/deploy.rs).
# Debian ships it only inside the `prometheus` package, whose install would also set up and
# start a Prometheus server: extract the one binary from the downloaded package into a cache
# directory instead (the test looks there; PROMTOOL=path overrides it).
promtool_dir="${XDG_CACHE_HOME:-$HOME/.cache}/cc-gateway/promtool"
if ! have promtool && [ ! -x "$promtool_dir/promtool" ]; then
  if have apt-get && have dpkg; then
    echo "prereqs: extracting promtool from Debian's prometheus package into $promtool_dir" >&2
    tmp=$(mktemp -d)
    # apt's download sandbox user (_apt) may not write a temp dir made by root: allow it
    chmod 755 "$tmp"
    if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
      # a fresh machine has no package lists yet (only root can fetch them)
      [ "$(id -u)" = 0 ] && apt-get update -qq >/dev/null
      (cd "$tmp" && apt-get download -qq prometheus >/dev/null) || {
        rm -rf "$tmp"
        echo "prereqs: could not download Debian's prometheus package (for promtool)" >&2
        exit 1
      }
    fi
    dpkg -x "$tmp"/prometheus_*.deb "$tmp/x"
    mkdir -p "$promtool_dir"
    install -m 755 "$tmp/x/usr/bin/promtool" "$promtool_dir/promtool"
    rm -rf "$tmp"
  else
    echo "prereqs: missing: promtool (from Prometheus; put it on PATH or set PROMTOOL)" >&2
    exit 1
  fi
fi

if ! have cargo; then
  [ -x "$HOME/.cargo/bin/cargo" ] && exit 0
  echo "prereqs: no Rust toolchain (cargo). Install it with rustup: https://rustup.rs" >&2
  exit 1
fi
