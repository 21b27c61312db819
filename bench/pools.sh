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
# gateway CPU µs/request. Knobs: BENCH_ROUNDS (7), BENCH_DURATION (3s), BENCH_CONNS (32).
source "$(dirname "$0")/lib.sh"
ROUNDS=${BENCH_ROUNDS:-7}
DUR=${BENCH_DURATION:-3s}
OLD_BIN=${1:-}
need wrk nginx
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
for r in $(seq "$ROUNDS"); do
  for v in $(printf '%s\n' "${VARIANTS[@]}" | shuf); do
    c0=$(cpu_ticks "${PID[$v]}")
    wrk_result "${PORT[$v]}" "$RUN/warm.txt" "$DUR"
    c1=$(cpu_ticks "${PID[$v]}")
    awk -v v="$v" -v r="$r" -v n="$requests" -v d="$duration_us" -v p50="$p50_us" \
      -v p99="$p99_us" -v c=$((c1 - c0)) -v hz="$HZ" -v bad="$non2xx" -v se="$sockerr" \
      'BEGIN{printf "%s %d %.0f %d %d %.1f %d\n", v, r, n/(d/1e6), p50, p99, c/hz*1e6/n, bad+se}' \
      >> "$RUN/pools.txt"
  done
done

echo
echo "| variant | req/s | vs rr1 | p50 µs | p99 µs | CPU µs/req | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|"
awk -v list="${VARIANTS[*]}" '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { v = $1; r = $2; rps[v, r] = $3; p50[v, r] = $4; p99[v, r] = $5; cpu[v, r] = $6; err[v] += $7
    if (r > nr) nr = r }
  END {
    nv = split(list, vs, " ")
    for (k = 1; k <= nv; k++) {
      v = vs[k]
      for (r = 1; r <= nr; r++) {
        a[r] = rps[v, r]; q[r] = rps[v, r] / rps["rr1", r]; b[r] = p50[v, r]; c[r] = p99[v, r]; d[r] = cpu[v, r]
      }
      printf "| %s | %.0f | %.3f | %.0f | %.0f | %.1f | %d |\n", v, median(a, nr), median(q, nr),
        median(b, nr), median(c, nr), median(d, nr), err[v]
    }
  }' "$RUN/pools.txt"
echo "(per round: $RUN/pools.txt — variant round req/s p50 p99 cpu errors)"
