#!/usr/bin/env bash
# TLS benchmark (not a test), measured in one run with interleaved, shuffled rounds:
#   h2   — HTTP/2 over TLS with h2load (32 connections × 10 streams): nginx terminating TLS
#          (no auth) vs cc-gateway terminating TLS and verifying the token (cache on);
#   up   — cc-gateway's upstream over TLS vs plaintext (wrk, HTTP/1.1 keep-alive to the gateway):
#          what re-encrypting to a backend costs. The upstream is one nginx with both listeners.
# Keep-alive TLS and full handshakes against nginx and HAProxy are measured by the anchors
# harness (`BENCH_TLS=1`, see bench/README.md).
#
# Knobs: BENCH_ROUNDS (5), BENCH_DURATION (4s), BENCH_CONNS (32), BENCH_STREAMS (10).
source "$(dirname "$0")/lib.sh"
ROUNDS=${BENCH_ROUNDS:-5}
DUR=${BENCH_DURATION:-4s}
STREAMS=${BENCH_STREAMS:-10}
UP_TLS_PORT=${BENCH_UPSTREAM_TLS_PORT:-18181}
need wrk nginx h2load openssl
build_and_mint

# a CA and a server certificate for 127.0.0.1, used by the gateway, nginx and the TLS upstream
TLS=$RUN/tls
mkdir -p "$TLS"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$TLS/ca.key" -out "$TLS/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=127.0.0.1 \
  -keyout "$TLS/server.key" -out "$TLS/server.csr" 2>/dev/null
openssl x509 -req -in "$TLS/server.csr" -CA "$TLS/ca.pem" -CAkey "$TLS/ca.key" -CAcreateserial -days 2 \
  -extfile <(printf 'subjectAltName=IP:127.0.0.1\n') -out "$TLS/server.pem" 2>/dev/null

# the upstream: lib.sh's nginx plus a TLS listener
start_upstream
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
sed -i "s|listen 127.0.0.1:$UP_PORT;|listen 127.0.0.1:$UP_PORT; listen 127.0.0.1:$UP_TLS_PORT ssl; ssl_certificate $TLS/server.pem; ssl_certificate_key $TLS/server.key;|" \
  "$RUN/upstream.conf"
nginx -c "$RUN/upstream.conf" -p "$RUN" & PIDS+=($!)
wait_port "$UP_PORT"; wait_port "$UP_TLS_PORT"

port=${BENCH_GATEWAY_PORT:-18210}
declare -A PORT PID
# nginx terminating TLS + HTTP/2, proxying to the plaintext upstream (no auth: the bar)
cat > "$RUN/nginx-h2.conf" <<CONF
worker_processes 2;
daemon off;
pid $RUN/nginx-h2.pid;
error_log $RUN/nginx-h2-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $RUN; proxy_temp_path $RUN; fastcgi_temp_path $RUN; uwsgi_temp_path $RUN; scgi_temp_path $RUN;
  upstream up { server 127.0.0.1:$UP_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$port ssl http2;
    ssl_certificate $TLS/server.pem; ssl_certificate_key $TLS/server.key;
    http2_max_concurrent_streams 128;
    keepalive_requests 1000000;  # nginx closes an HTTP/2 connection after 1000 requests by default
    location /ai/ { proxy_pass http://up/; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
nginx -c "$RUN/nginx-h2.conf" -p "$RUN" & PID[nginx]=$!; PIDS+=($!)
wait_port "$port"; PORT[nginx]=$port; port=$((port + 1))

# gateways: TLS listener (h2 test), and plaintext listeners with a plaintext / TLS upstream
start_gw() { # name config
  "$BIN" run --config "$2" 2>"$RUN/tls-$1.log" & PID[$1]=$!; PIDS+=($!)
  wait_port "${PORT[$1]}"
}
gateway_config "$RUN/tls-gw.toml" "$port" 100000
sed -i "s|^listen = \[\"127.0.0.1:$port\"\]|listen = []|" "$RUN/tls-gw.toml"
printf '[server.tls]\nlisten = ["127.0.0.1:%s"]\ncertificates = [{ cert = "%s", key = "%s" }]\n' \
  "$port" "$TLS/server.pem" "$TLS/server.key" >> "$RUN/tls-gw.toml"
PORT[gateway]=$port; start_gw gateway "$RUN/tls-gw.toml"; port=$((port + 1))
gateway_config "$RUN/tls-plain-up.toml" "$port" 100000
PORT[plain_up]=$port; start_gw plain_up "$RUN/tls-plain-up.toml"; port=$((port + 1))
gateway_config "$RUN/tls-tls-up.toml" "$port" 100000
sed -i "s|^endpoints = \[\"127.0.0.1:$UP_PORT\"\]|endpoints = [\"127.0.0.1:$UP_TLS_PORT\"]\ntls = { ca = \"$TLS/ca.pem\" }|" \
  "$RUN/tls-tls-up.toml"
PORT[tls_up]=$port; start_gw tls_up "$RUN/tls-tls-up.toml"

TOKEN=$(head -1 "$RUN/warm.txt")
# h2load_result PORT: sets rps (req/s) and ok (2xx count) and bad (the rest)
h2load_result() {
  local out
  out=$(h2load -c "$CONNS" -m "$STREAMS" -t "$WRK_THREADS" -D "${DUR%s}" --warm-up-time=1 \
    -H "X-Gitlab-Token: $TOKEN" "https://127.0.0.1:$1/ai/v2/completions" 2>&1)
  rps=$(echo "$out" | awk '/^finished in/ {for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) {gsub(",", "", $(i-1)); print $(i-1)}}')
  ok=$(echo "$out" | awk '/^status codes:/ {gsub(",", "", $3); print $3}')
  bad=$(echo "$out" | awk '/^requests:/ {gsub(",", ""); print $2 - $8}')
}
for v in nginx gateway; do h2load_result "${PORT[$v]}"; done # warm-up (and a first check)
[ "${ok:-0}" -gt 0 ] || { echo "h2load got no 2xx from the gateway" >&2; exit 1; }
for v in plain_up tls_up; do wrk_result "${PORT[$v]}" "$RUN/warm.txt" 2s; done
: > "$RUN/tls.txt"
for r in $(seq "$ROUNDS"); do
  for v in $(printf '%s\n' nginx gateway plain_up tls_up | shuf); do
    # nginx's workers are the master's children
    pids="${PID[$v]} $(pgrep -P "${PID[$v]}" | tr '\n' ' ' || true)"
    c0=$(cpu_ticks $pids)
    if [ "$v" = nginx ] || [ "$v" = gateway ]; then
      h2load_result "${PORT[$v]}"
      n=$ok p50="-" p99="-" err=$bad
    else
      wrk_result "${PORT[$v]}" "$RUN/warm.txt" "$DUR"
      rps=$(awk -v n="$requests" -v d="$duration_us" 'BEGIN{printf "%.0f", n/(d/1e6)}')
      n=$requests p50=$p50_us p99=$p99_us err=$((non2xx + sockerr))
    fi
    c1=$(cpu_ticks $pids)
    awk -v v="$v" -v r="$r" -v rps="$rps" -v n="$n" -v c=$((c1 - c0)) -v hz="$HZ" -v e="$err" \
      -v p50="$p50" -v p99="$p99" 'BEGIN{printf "%s %d %.0f %.1f %s %s %d\n", v, r, rps, (n ? c/hz*1e6/n : 0), p50, p99, e}' \
      >> "$RUN/tls.txt"
  done
done

echo
echo "| variant | req/s (median) | ratio | CPU µs/req | errors |"
echo "|---|---:|---:|---:|---:|"
awk '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { v = $1; r = $2; rps[v, r] = $3; cpu[v, r] = $4; err[v] += $7; if (r > nr) nr = r }
  END {
    split("nginx gateway plain_up tls_up", order, " ")
    split("nginx nginx plain_up plain_up", base, " ")
    split("h2 · nginx TLS (no auth)|h2 · cc-gateway TLS (JWT)|h1 · cc-gateway, plaintext upstream|h1 · cc-gateway, TLS upstream", label, "|")
    for (k = 1; k <= 4; k++) {
      v = order[k]; b = base[k]
      for (r = 1; r <= nr; r++) { a[r] = rps[v, r]; q[r] = rps[v, r] / rps[b, r]; c[r] = cpu[v, r] }
      printf "| %s | %.0f | %.3f × %s | %.1f | %d |\n", label[k], median(a, nr), median(q, nr), b, median(c, nr), err[v]
    }
  }' "$RUN/tls.txt"
echo "(per round: $RUN/tls.txt — variant round req/s cpu p50 p99 errors)"
