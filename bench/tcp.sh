#!/usr/bin/env bash
# TCP at the stream level (issue 16), not a test: `pgbench -S` against one real PostgreSQL
# reached four ways, loaded in turn, BENCH_ROUNDS rounds in a new random order every round:
#
#   direct    psql → PostgreSQL                                   (the reference of the ratios)
#   l4        psql → [[tcp_routes]] → PostgreSQL
#   connect   psql → cc-gateway connect → WebSocket route (connect = …) → PostgreSQL
#   tunnel    psql → [[tcp_routes]] target = "tunnel:…" → agent (cc-gateway tunnel) → PostgreSQL
#   nginx     psql → nginx `stream` proxy_pass → PostgreSQL           (the bar for l4; when nginx
#             and its stream module are installed: apt-get install -y nginx-light libnginx-mod-stream)
#
# `connect` and `tunnel` run only when the binary has those commands. Per way: median TPS, the
# median of its per-round ratio to direct, p50/p99 latency (from pgbench's per-transaction
# log), the gateway's (and agent's) CPU µs per transaction; then bulk throughput (MB/s): a
# 100 MB `COPY … TO STDOUT` each way. Targets (issue 16): l4 ≥ 0.9× direct, tunnel ≥ 0.7×.
#
#   bench/tcp.sh            knobs: BENCH_ROUNDS (3), BENCH_DURATION (10 s), BENCH_CLIENTS (16)
source "$(dirname "$0")/lib.sh"
ROUNDS=${BENCH_ROUNDS:-3}
DUR=${BENCH_DURATION:-10}
CLIENTS=${BENCH_CLIENTS:-16}
PG_PORT=${BENCH_PG_PORT:-18240}
GW_PORT=$((PG_PORT + 1))
L4_PORT=$((PG_PORT + 2))
CONNECT_PORT=$((PG_PORT + 3))
TUNNEL_PORT=$((PG_PORT + 4))
NGINX_PORT=$((PG_PORT + 5))
need pgbench psql
build_and_mint
start_postgres tcp-pg "$PG_PORT" -c fsync=off
pgbench -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U bench postgres >/dev/null 2>&1

has_connect=0; has_tunnel=0
$BIN connect --help >/dev/null 2>&1 && has_connect=1
$BIN tunnel --help >/dev/null 2>&1 && has_tunnel=1
$BIN token mint --key "$RUN/key.pem" --kid bench --iss $ISS --aud cc-gateway-tunnel --sub bench-agent \
  --ttl 2h > "$RUN/tunnel-token.txt"

cat > "$RUN/tcp.toml" <<CONF
[server]
listen = ["127.0.0.1:$GW_PORT"]
admin_listen = "127.0.0.1:0"
threads = 2
[log]
access = "off"
level = "warn"
[[issuers]]
name = "bench"
issuer = "$ISS"
jwks_file = "$RUN/jwks.json"
[[tcp_routes]]
name = "pg"
listen = ["127.0.0.1:$L4_PORT"]
target = "127.0.0.1:$PG_PORT"
CONF
if [ $has_connect = 1 ]; then cat >> "$RUN/tcp.toml" <<CONF
[[routes]]
name = "pg-ws"
path_prefix = "/connect/pg"
connect = "127.0.0.1:$PG_PORT"
audience = "gitlab-ai-gateway"
scopes = ["code_suggestions"]
CONF
fi
if [ $has_tunnel = 1 ]; then cat >> "$RUN/tcp.toml" <<CONF
[[tcp_routes]]
name = "pg-tunnel"
listen = ["127.0.0.1:$TUNNEL_PORT"]
target = "tunnel:onprem/pg"
[[tunnels]]
name = "onprem"
issuer = "bench"
audience = "cc-gateway-tunnel"
subjects = ["bench-agent"]
CONF
fi
$BIN check --config "$RUN/tcp.toml" >/dev/null
$BIN run --config "$RUN/tcp.toml" >"$RUN/tcp-gateway.log" 2>&1 & PIDS+=($!); GW_PID=$!
wait_port "$GW_PORT"; wait_port "$L4_PORT"

WAYS=(direct l4)
declare -A PORT=([direct]=$PG_PORT [l4]=$L4_PORT [connect]=$CONNECT_PORT [tunnel]=$TUNNEL_PORT [nginx]=$NGINX_PORT)
declare -A EXTRA_PID=([direct]="" [l4]="" [connect]="" [tunnel]="" [nginx]="")
declare -A OWN_PID=([direct]="" [l4]=$GW_PID [connect]=$GW_PID [tunnel]=$GW_PID [nginx]="")
STREAM_MOD=$(ls /usr/lib/nginx/modules/ngx_stream_module.so 2>/dev/null || true)
if command -v nginx >/dev/null && [ -n "$STREAM_MOD" ]; then
  # as many workers as the gateway has threads; tcp_nodelay as the gateway sets it
  cat > "$RUN/nginx-l4.conf" <<CONF
load_module $STREAM_MOD;
worker_processes 2;
daemon off;
pid $RUN/nginx-l4.pid;
error_log $RUN/nginx-l4-error.log warn;
events { worker_connections 4096; }
stream { server { listen 127.0.0.1:$NGINX_PORT; proxy_pass 127.0.0.1:$PG_PORT; tcp_nodelay on; } }
CONF
  nginx -c "$RUN/nginx-l4.conf" -p "$RUN" -e "$RUN/nginx-l4-error.log" & PIDS+=($!); NGINX_PID=$!
  wait_port "$NGINX_PORT"
  OWN_PID[nginx]="$NGINX_PID $(pgrep -P $NGINX_PID | tr '\n' ' ')"
  WAYS+=(nginx)
else
  echo "bench: no nginx with its stream module: the nginx reference is skipped" >&2
fi
if [ $has_connect = 1 ]; then
  $BIN connect --url "ws://127.0.0.1:$GW_PORT/connect/pg" --token-file "$RUN/warm.txt" \
    --listen "127.0.0.1:$CONNECT_PORT" >"$RUN/tcp-connect.log" 2>&1 & PIDS+=($!)
  EXTRA_PID[connect]=$!
  wait_port "$CONNECT_PORT"; WAYS+=(connect)
fi
if [ $has_tunnel = 1 ]; then
  $BIN tunnel --gateway "ws://127.0.0.1:$GW_PORT" --tunnel onprem --token-file "$RUN/tunnel-token.txt" \
    --expose "pg=127.0.0.1:$PG_PORT" >"$RUN/tcp-agent.log" 2>&1 & PIDS+=($!)
  EXTRA_PID[tunnel]=$!
  # the agent is up when a query passes through it
  for _ in $(seq 200); do
    psql -h 127.0.0.1 -p "$TUNNEL_PORT" -U bench -d postgres -Atc 'select 1' 2>/dev/null | grep -qx 1 && break
    sleep 0.1
  done
  WAYS+=(tunnel)
fi
for w in "${WAYS[@]}"; do
  psql -h 127.0.0.1 -p "${PORT[$w]}" -U bench -d postgres -Atc 'select 1' | grep -qx 1 \
    || { echo "bench: $w does not reach PostgreSQL" >&2; exit 1; }
done

# one_run WAY: pgbench -S for DUR seconds; appends "tps p50_us p99_us cpu_us_per_tx" to $RUN/tcp-WAY.tsv
one_run() {
  local w=$1 out logdir=$RUN/tcp-logs-$1 c0 c1 tps tx
  rm -rf "$logdir"; mkdir -p "$logdir"
  c0=$(cpu_ticks ${OWN_PID[$w]} ${EXTRA_PID[$w]})
  out=$(cd "$logdir" && pgbench -n -S -c "$CLIENTS" -j 2 -T "$DUR" -l -h 127.0.0.1 -p "${PORT[$w]}" -U bench postgres 2>&1)
  c1=$(cpu_ticks ${OWN_PID[$w]} ${EXTRA_PID[$w]})
  tps=$(echo "$out" | awk '/^tps = / {print $3; exit}')
  tx=$(echo "$out" | awk '/number of transactions actually processed/ {print $NF}')
  [ -n "$tps" ] || { echo "bench: pgbench via $w failed: $out" >&2; exit 1; }
  # per-transaction log: the third field is the latency in µs
  read -r p50 p99 < <(cat "$logdir"/pgbench_log.* | awk '{print $3}' | sort -n |
    awk '{a[NR]=$1} END {print a[int(NR*0.5)+1], a[int(NR*0.99)+1]}')
  local cpu=0
  [ "$w" != direct ] && cpu=$(awk -v t=$((c1 - c0)) -v hz="$HZ" -v n="$tx" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
  echo "$tps $p50 $p99 $cpu" >> "$RUN/tcp-$w.tsv"
}

for w in "${WAYS[@]}"; do rm -f "$RUN/tcp-$w.tsv"; done
for r in $(seq "$ROUNDS"); do
  for w in $(printf '%s\n' "${WAYS[@]}" | shuf); do
    one_run "$w"
    echo "round $r $w: $(tail -1 "$RUN/tcp-$w.tsv")" >&2
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "pgbench -S, $CLIENTS clients, $ROUNDS rounds of ${DUR}s (medians)"
printf '%-8s %10s %8s %9s %9s %12s %14s\n' way tps "× direct" "p50 µs" "p99 µs" "+p99 µs" "CPU µs/tx"
d_tps=$(awk '{print $1}' "$RUN/tcp-direct.tsv" | median)
d_p99=$(awk '{print $3}' "$RUN/tcp-direct.tsv" | median)
for w in "${WAYS[@]}"; do
  f=$RUN/tcp-$w.tsv
  # the ratio per round (same round, same machine state), then its median
  ratio=$(paste "$f" "$RUN/tcp-direct.tsv" | awk '{printf "%.3f\n", $1 / $5}' | median)
  p99=$(awk '{print $3}' "$f" | median)
  printf '%-8s %10.0f %8s %9s %9s %12s %14s\n' "$w" "$(awk '{print $1}' "$f" | median)" "$ratio" \
    "$(awk '{print $2}' "$f" | median)" "$p99" "$((p99 - d_p99))" "$(awk '{print $4}' "$f" | median)"
done

if [ -f "$RUN/tcp-nginx.tsv" ]; then
  # what our L4 hop costs against the bar, per round (same round, same machine state)
  echo "l4 × nginx stream: $(paste "$RUN/tcp-l4.tsv" "$RUN/tcp-nginx.tsv" | awk '{printf "%.3f\n", $1 / $5}' | median)" \
    "(CPU µs/tx $(awk '{print $4}' "$RUN/tcp-l4.tsv" | median) vs $(awk '{print $4}' "$RUN/tcp-nginx.tsv" | median))"
fi

echo
echo "bulk: 100 MB COPY each way (MB/s, one run)"
psql -h 127.0.0.1 -p "$PG_PORT" -U bench -d postgres -qc 'create unlogged table if not exists bulk (t text)'
for w in "${WAYS[@]}"; do
  p=${PORT[$w]}
  t0=$(date +%s%N)
  bytes=$(psql -h 127.0.0.1 -p "$p" -U bench -d postgres -c \
    "copy (select repeat('x', 1000) from generate_series(1, 100000)) to stdout" | wc -c)
  t1=$(date +%s%N)
  psql -h 127.0.0.1 -p "$p" -U bench -d postgres -qc 'truncate bulk'
  t2=$(date +%s%N)
  psql -h 127.0.0.1 -p "$PG_PORT" -U bench -d postgres -Atc \
    "copy (select repeat('y', 1000) from generate_series(1, 100000)) to stdout" |
    psql -h 127.0.0.1 -p "$p" -U bench -d postgres -qc 'copy bulk from stdin'
  t3=$(date +%s%N)
  printf '%-8s out %7.1f MB/s   in %7.1f MB/s\n' "$w" \
    "$(awk -v b="$bytes" -v ns=$((t1 - t0)) 'BEGIN {print b / 1e6 / (ns / 1e9)}')" \
    "$(awk -v b="$bytes" -v ns=$((t3 - t2)) 'BEGIN {print b / 1e6 / (ns / 1e9)}')"
done
