#!/usr/bin/env bash
# cc-gateway as a candidate of ../shared/bench-anchors/run.sh: writes a config from the
# harness's BENCH_* variables, then execs the release binary in the foreground.
#   CANDIDATE_NAME=cc-gateway CANDIDATE_PORT=18084 \
#   CANDIDATE_CMD="exec $PWD/bench/anchor-candidate.sh" ./run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cfg=$(mktemp /tmp/cc-gateway-anchor-XXXXXX.toml)
# BENCH_TLS=1: the harness's certificate on BENCH_LISTEN, no plaintext listener
if [ "${BENCH_TLS_CERT:-off}" != off ]; then
  listen='[]'
  tls=$'[server.tls]\nlisten = ["'"${BENCH_LISTEN}"$'"]\ncertificates = [{ cert = "'"${BENCH_TLS_CERT}"'", key = "'"${BENCH_TLS_KEY}"$'" }]'
else
  listen="[\"${BENCH_LISTEN}\"]"
  tls=""
fi
# BENCH_ACCESS_LOG=1: one JSON line per request to the harness's file
access=off
[ "${BENCH_ACCESS_LOG_FILE:-off}" != off ] && access="${BENCH_ACCESS_LOG_FILE}"
cat > "$cfg" <<CONF
[server]
listen = ${listen}
admin_listen = "127.0.0.1:0"
threads = ${CC_THREADS:-2}
[auth]
token_cache_size = ${CC_TOKEN_CACHE_SIZE:-100000}
[log]
access = "${access}"
level = "warn"
[[issuers]]
name = "bench"
issuer = "${BENCH_ISSUER}"
jwks_file = "${BENCH_JWKS_FILE}"
leeway = "0s"
[[routes]]
name = "ai"
path_prefix = "/ai/"
upstream = "ai"
audience = "${BENCH_AUDIENCE}"
[[upstreams]]
name = "ai"
endpoints = ["${BENCH_UPSTREAM}"]
${tls}
CONF
exec "$here/target/release/cc-gateway" run --config "$cfg"
