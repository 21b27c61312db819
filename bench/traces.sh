#!/usr/bin/env bash
# The cost of tracing and of the request log (not a test; issue 14's targets: request log
# ≤ 5 %, tracing at 0.01 ≤ 3 %, at 1.0 ≤ 15 % throughput). One build, gateways side by side
# in front of one nginx upstream, one nginx standing in for the OTLP collector (answers 200 to
# every export) and a PostgreSQL for the shared request log:
#   off    — no [telemetry], no [request_log]
#   r001   — sample_ratio = 0.01, keep_errors = true (the default: every request keeps its record)
#   r001n  — sample_ratio = 0.01, keep_errors = false (unsampled requests cost nothing)
#   r1     — sample_ratio = 1.0 (every request exported)
#   sqlite — [request_log] on SQLite (a row per request)
#   pg     — [request_log] on PostgreSQL (skipped without Debian's postgresql; BENCH_PG=0 skips)
# Loaded in turn, BENCH_ROUNDS rounds of BENCH_DURATION, a new random order every round (as
# bench/ab.sh), warm tokens (cache hits: the cheapest request, so the largest relative cost).
# Per variant: median req/s, its ratio to `off` in the same round, added p50/p99, CPU µs/req.
#
#   bench/traces.sh        # knobs: BENCH_ROUNDS (5), BENCH_DURATION (3s), BENCH_CONNS (32),
#                          # BENCH_VARIANTS (all of the above, e.g. "off r1")
source "$(dirname "$0")/lib.sh"
ROUNDS=${BENCH_ROUNDS:-5}
DUR=${BENCH_DURATION:-3s}
COLLECTOR_PORT=${BENCH_COLLECTOR_PORT:-18190}
need wrk nginx pgrep
build_and_mint
start_upstream

cat > "$RUN/collector.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN/collector.pid;
error_log $RUN/collector-error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $RUN; proxy_temp_path $RUN; fastcgi_temp_path $RUN; uwsgi_temp_path $RUN; scgi_temp_path $RUN;
  client_max_body_size 64m;
  server { listen 127.0.0.1:$COLLECTOR_PORT; location /v1/traces { return 200; } }
}
CONF
nginx -c "$RUN/collector.conf" -p "$RUN" & PIDS+=($!)
wait_port "$COLLECTOR_PORT"

PG_PORT=${BENCH_PG_PORT:-18250}
read -r -a VARIANTS <<< "${BENCH_VARIANTS:-off r001 r001n r1 sqlite pg}"
if [[ " ${VARIANTS[*]} " == *" pg "* ]]; then
  if [ "${BENCH_PG:-1}" = 0 ] || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || ! command -v psql >/dev/null; then
    echo "bench: no PostgreSQL server here (or BENCH_PG=0): the pg variant is skipped" >&2
    read -r -a VARIANTS <<< "$(printf '%s ' "${VARIANTS[@]}" | sed 's/\bpg\b//')"
  else
    start_postgres traces-pg "$PG_PORT"
  fi
fi
rm -f "$RUN"/tr-sqlite.db*
declare -A REQLOG=(
  [sqlite]="sqlite://$RUN/tr-sqlite.db"
  [pg]="postgres://bench@127.0.0.1:$PG_PORT/postgres"
)
declare -A PORT PID TEL=(
  [off]=""
  [r001]=$'sample_ratio = 0.01\nkeep_errors = true'
  [r001n]=$'sample_ratio = 0.01\nkeep_errors = false'
  [r1]=$'sample_ratio = 1.0'
)
port=${BENCH_GATEWAY_PORT:-18210}
for v in "${VARIANTS[@]}"; do
  gateway_config "$RUN/tr-$v.toml" "$port" 100000
  sed -i "s/^admin_listen = .*/admin_listen = \"127.0.0.1:$((port + 100))\"/" "$RUN/tr-$v.toml"
  if [ -n "${REQLOG[$v]:-}" ]; then
    printf '[request_log]\nstore = "%s"\n' "${REQLOG[$v]}" >> "$RUN/tr-$v.toml"
  fi
  if [ -n "${TEL[$v]:-}" ]; then
    printf '[telemetry]\notlp_endpoint = "http://127.0.0.1:%s"\n%s\n' "$COLLECTOR_PORT" "${TEL[$v]}" >> "$RUN/tr-$v.toml"
  fi
  "$BIN" run --config "$RUN/tr-$v.toml" 2>"$RUN/tr-$v.log" & PID[$v]=$!; PIDS+=($!)
  wait_port "$port"
  PORT[$v]=$port
  port=$((port + 1))
done

for v in "${VARIANTS[@]}"; do wrk_result "${PORT[$v]}" "$RUN/warm.txt" 2s; done # warm-up
: > "$RUN/traces.txt"
rounds "$RUN/traces.txt" "$ROUNDS" "$DUR" warm "${VARIANTS[@]}"

spans() { curl -s "http://127.0.0.1:$((${PORT[$1]} + 100))/metrics" | awk -v m="$2" 'index($1, m) == 1 {s += $2} END {print s + 0}'; }
echo
round_table "$RUN/traces.txt" off warm "${VARIANTS[@]}"
for v in "${VARIANTS[@]}"; do
  case $v in
    r*) echo "$v: spans exported $(spans "$v" cc_gateway_spans_exported_total), dropped $(spans "$v" cc_gateway_spans_dropped_total)" ;;
    sqlite|pg) echo "$v: rows written $(spans "$v" cc_gateway_request_log_rows_written_total), dropped $(spans "$v" cc_gateway_request_log_dropped_total)" ;;
  esac
done
