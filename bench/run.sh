#!/usr/bin/env bash
# cc-gateway benchmark (not a test): the upstream hit directly vs through cc-gateway, in one
# run, with wrk on loopback. Scenarios:
#   (a) warm   — one token repeated (verified-token cache hits)
#   (b) cold   — 10,000 distinct tokens round-robin (cache on)
#   (c) nocache — (b) with auth.token_cache_size = 0: raw verification on every request
#   (d) budget  — (a) plus one memory-store GCRA rule keyed by claim:sub (never rejecting)
#   (e) redis   — (a) plus the same rule on a local redis-server (started and stopped here)
# Reports req/s, ratio to direct, p50/p99, the gateway's CPU µs per request (user+sys from
# /proc) and RSS. Absolute numbers on a shared 2-core VM are noisy: compare ratios in one run.
#
# Knobs: BENCH_DURATION (10s), BENCH_CONNS (32), BENCH_THREADS (2 wrk threads),
#        BENCH_RSS_SECONDS (0 = skip; else a long cold run, then the RSS).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DUR=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNS:-32}
WRK_THREADS=${BENCH_THREADS:-2}
UP_PORT=${BENCH_UPSTREAM_PORT:-18180}
GW_PORT=${BENCH_GATEWAY_PORT:-18184}
REDIS_PORT=${BENCH_REDIS_PORT:-18186}
RUN=$ROOT/bench/run
mkdir -p "$RUN"
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

for t in wrk nginx; do
  command -v $t >/dev/null || { echo "bench: needs $t (apt-get install -y $t)" >&2; exit 1; }
done
cargo build --release -q
BIN=$ROOT/target/release/cc-gateway

# keys and tokens
ISS=https://gitlab.example.test
$BIN token keygen --alg RS256 --key "$RUN/key.pem" --jwks "$RUN/jwks.json" --kid bench >/dev/null
$BIN token mint --key "$RUN/key.pem" --kid bench --iss $ISS --aud gitlab-ai-gateway --sub warm \
  --scopes code_suggestions --ttl 2h --claim gitlab_realm=saas > "$RUN/warm.txt"
[ -s "$RUN/cold.txt" ] && [ "$RUN/cold.txt" -nt "$RUN/key.pem" ] || \
  $BIN token mint --key "$RUN/key.pem" --kid bench --iss $ISS --aud gitlab-ai-gateway --sub cold \
    --scopes code_suggestions --ttl 2h --claim gitlab_realm=saas --count 10000 > "$RUN/cold.txt"

# upstream: nginx, one worker, keep-alive, 200 {"ok":true}
cat > "$RUN/upstream.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/upstream.pid;
error_log $RUN/upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $RUN; proxy_temp_path $RUN; fastcgi_temp_path $RUN; uwsgi_temp_path $RUN; scgi_temp_path $RUN;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$UP_PORT; location / { default_type application/json; return 200 '{"ok":true}'; } }
}
CONF
nginx -c "$RUN/upstream.conf" -p "$RUN" & PIDS+=($!)

gateway_config() { # $1 = token cache size, $2 = "budget" to add one memory rule
  local extra=""
  if [ -n "${2:-}" ]; then
    local store="memory"
    [ "$2" = redis ] && store="redis://127.0.0.1:$REDIS_PORT/0"
    extra=$'[budgets]\nstore = "'"$store"$'"\n[[budgets.rules]]\nname = "instance-rate"\nkey = ["claim:sub"]\nrate = "100000000/1s"\nburst = 1000000'
  fi
  cat > "$RUN/gw-$1.toml" <<CONF
[server]
listen = ["127.0.0.1:$GW_PORT"]
admin_listen = "127.0.0.1:0"
threads = 2
[auth]
token_cache_size = $1
[log]
access = "off"
level = "warn"
[[issuers]]
name = "bench"
issuer = "$ISS"
jwks_file = "$RUN/jwks.json"
[[routes]]
name = "ai"
path_prefix = "/ai/"
strip_prefix = true
upstream = "ai"
audience = "gitlab-ai-gateway"
scopes = ["code_suggestions"]
[[upstreams]]
name = "ai"
endpoints = ["127.0.0.1:$UP_PORT"]
$extra
CONF
}

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
cpu_ticks() { local t=0; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$1/status 2>/dev/null || echo "?"; }
HZ=$(getconf CLK_TCK)

declare -A RPS
ROWS=()
measure() { # name port tokens-file pid-or-empty
  local name=$1 port=$2 tokens=$3 pid=${4:-}
  TOKENS_FILE=$tokens wrk -t"$WRK_THREADS" -c"$CONNS" -d2s -s bench/tokens.lua "http://127.0.0.1:$port/ai/v2/completions" >/dev/null
  local c0; c0=$(cpu_ticks $pid)
  local out; out=$(TOKENS_FILE=$tokens wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DUR" -s bench/tokens.lua "http://127.0.0.1:$port/ai/v2/completions" | grep '^RESULT')
  local c1; c1=$(cpu_ticks $pid)
  eval "$(echo "$out" | sed 's/^RESULT //; s/ /;/g')"
  local rps; rps=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN{printf "%.0f", r/(d/1e6)}')
  RPS[$name]=$rps
  local cpu="-" rss="-"
  if [ -n "$pid" ]; then
    cpu=$(awk -v t=$((c1-c0)) -v hz="$HZ" -v r="$requests" 'BEGIN{printf "%.1f", t/hz*1e6/r}')
    rss=$(rss_mib "$pid")
  fi
  ROWS+=("$name|$rps|$(awk -v a="$p50_us" 'BEGIN{printf "%.2f", a/1000}')|$(awk -v a="$p99_us" 'BEGIN{printf "%.2f", a/1000}')|$non2xx|$sockerr|$cpu|$rss")
}

wait_port $UP_PORT
measure "direct" $UP_PORT "$RUN/warm.txt"

run_gateway() { # cache-size [budget]
  gateway_config "$1" "${2:-}"
  "$BIN" run --config "$RUN/gw-$1.toml" 2>"$RUN/gw-$1.log" & GW=$!; PIDS+=($GW)
  wait_port $GW_PORT
  IDLE_RSS=$(rss_mib $GW)
}
stop_gateway() { kill "$GW"; wait "$GW" 2>/dev/null || true; }

run_gateway 100000
echo "idle RSS: ${IDLE_RSS} MiB" > "$RUN/rss.txt"
measure "(a) cc-gateway warm" $GW_PORT "$RUN/warm.txt" $GW
measure "(b) cc-gateway cold (10k tokens)" $GW_PORT "$RUN/cold.txt" $GW
if [ "${BENCH_RSS_SECONDS:-0}" -gt 0 ]; then
  # memory under a long cold run (target: RSS after 1M requests over 10,000 tokens)
  n=$(TOKENS_FILE="$RUN/cold.txt" wrk -t2 -c32 -d"${BENCH_RSS_SECONDS}s" -s bench/tokens.lua "http://127.0.0.1:$GW_PORT/ai/v2/completions" | sed -n 's/^RESULT requests=\([0-9]*\).*/\1/p')
  echo "RSS after $n more cold requests: $(rss_mib $GW) MiB" >> "$RUN/rss.txt"
fi
echo "RSS after the runs: $(rss_mib $GW) MiB" >> "$RUN/rss.txt"
stop_gateway
run_gateway 0
measure "(c) cc-gateway cold, cache off" $GW_PORT "$RUN/cold.txt" $GW
stop_gateway
run_gateway 100000 budget
measure "(d) = (a) + one memory budget rule" $GW_PORT "$RUN/warm.txt" $GW
stop_gateway
if command -v redis-server >/dev/null; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
  wait_port "$REDIS_PORT"
  run_gateway 100000 redis
  measure "(e) = (a) + one Redis budget rule" $GW_PORT "$RUN/warm.txt" $GW
  stop_gateway
fi

direct=${RPS[direct]}
echo
echo "| system | req/s | vs direct | p50 ms | p99 ms | non-2xx | sock err | gateway CPU µs/req | RSS MiB |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in "${ROWS[@]}"; do
  IFS='|' read -r n rps p50 p99 bad serr cpu rss <<<"$r"
  echo "| $n | $rps | $(awk -v a="$rps" -v b="$direct" 'BEGIN{printf "%.0f%%", 100*a/b}') | $p50 | $p99 | $bad | $serr | $cpu | $rss |"
done
cat "$RUN/rss.txt"
