#!/usr/bin/env bash
# Upstream pools benchmark (not a test): what shared health state and the balancers cost on the
# request path. Gateways side by side in front of one nginx listening on 8 ports, loaded in turn
# (warm token: the cheapest request, so the pool's cost shows most), BENCH_ROUNDS rounds of
# BENCH_DURATION in a new random order every round (bench/ab.sh's interleaving):
#
#   rr1    1 endpoint,  balance = "round_robin"   (the reference of the ratios)
#   rr8    8 endpoints, balance = "round_robin"
#   ewma1  1 endpoint,  balance = "peak_ewma"
#   ewma8  8 endpoints, balance = "peak_ewma"
#   old1   OLD_BINARY (a build before pools), 1 endpoint — only when OLD_BINARY is given
#
#   bench/pools.sh [OLD_BINARY]
#
# Per variant: median req/s, the median of its per-round throughput ratio to rr1, p50/p99,
# gateway and upstream CPU µs/request. Knobs: BENCH_ROUNDS (7), BENCH_DURATION (3s), BENCH_CONNS (32).
source "$(dirname "$0")/lib.sh"
ROUNDS=${BENCH_ROUNDS:-7}
DUR=${BENCH_DURATION:-3s}
OLD_BIN=${1:-}
need wrk nginx pgrep
build_and_mint

# nginx: one worker, 8 ports, keep-alive, 200 {"ok":true}
listens=""
for i in $(seq 0 7); do listens+="listen 127.0.0.1:$((UP_PORT + i)); "; done
cat > "$RUN/pools-upstream.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/pools-upstream.pid;
error_log $RUN/pools-upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $RUN; proxy_temp_path $RUN; fastcgi_temp_path $RUN; uwsgi_temp_path $RUN; scgi_temp_path $RUN;
  keepalive_requests 1000000;
  server { $listens location / { default_type application/json; return 200 '{"ok":true}'; } }
}
CONF
nginx -c "$RUN/pools-upstream.conf" -p "$RUN" & PIDS+=($!)
UP_PID=$!
wait_port "$UP_PORT"

eight=""
for i in $(seq 0 7); do eight+="${eight:+, }\"127.0.0.1:$((UP_PORT + i))\""; done
# pool_config FILE PORT N BALANCE
pool_config() {
  local file=$1 port=$2 n=$3 balance=$4 eps="\"127.0.0.1:$UP_PORT\""
  [ "$n" = 8 ] && eps=$eight
  gateway_config "$file" "$port" 100000
  sed -i "s|^endpoints = .*|endpoints = [$eps]\nbalance = \"$balance\"|" "$file"
}

VARIANTS=(rr1 rr8 ewma1 ewma8)
[ -n "$OLD_BIN" ] && VARIANTS+=(old1)
declare -A PORT PID
port=${BENCH_GATEWAY_PORT:-18220}
for v in "${VARIANTS[@]}"; do
  bin=$BIN
  case $v in
    rr1) pool_config "$RUN/pools-$v.toml" "$port" 1 round_robin ;;
    rr8) pool_config "$RUN/pools-$v.toml" "$port" 8 round_robin ;;
    ewma1) pool_config "$RUN/pools-$v.toml" "$port" 1 peak_ewma ;;
    ewma8) pool_config "$RUN/pools-$v.toml" "$port" 8 peak_ewma ;;
    old1) gateway_config "$RUN/pools-$v.toml" "$port" 100000; bin=$OLD_BIN ;;
  esac
  "$bin" run --config "$RUN/pools-$v.toml" 2>"$RUN/pools-$v.log" & PID[$v]=$!; PIDS+=($!)
  wait_port "$port"
  PORT[$v]=$port
  port=$((port + 1))
done

for v in "${VARIANTS[@]}"; do wrk_result "${PORT[$v]}" "$RUN/warm.txt" 2s; done # warm-up
: > "$RUN/pools.txt"
rounds "$RUN/pools.txt" "$ROUNDS" "$DUR" warm "${VARIANTS[@]}"
echo
round_table "$RUN/pools.txt" rr1 warm "${VARIANTS[@]}"
