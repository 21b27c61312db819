#!/usr/bin/env bash
# cc-gateway as a candidate of ../shared/bench-anchors/run.sh: writes a config from the
# harness's BENCH_* variables, then execs the release binary in the foreground.
#   CANDIDATE_NAME=cc-gateway CANDIDATE_PORT=18084 \
#   CANDIDATE_CMD="exec $PWD/bench/anchor-candidate.sh" ./run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cfg=$(mktemp /tmp/cc-gateway-anchor-XXXXXX.toml)
cat > "$cfg" <<CONF
[server]
listen = ["${BENCH_LISTEN}"]
admin_listen = "127.0.0.1:0"
threads = ${CC_THREADS:-2}
[auth]
token_cache_size = ${CC_TOKEN_CACHE_SIZE:-100000}
[log]
access = "off"
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
CONF
exec "$here/target/release/cc-gateway" run --config "$cfg"
