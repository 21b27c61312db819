#!/usr/bin/env bash
# Binary upgrade under load (not a test): requests lost while `run --upgrade` replaces the
# running gateway BENCH_UPGRADES times (10), one after another, under constant wrk load —
# issue 13's "must be 0". One gateway (server.upgrade_socket set) in front of one nginx, warm
# token; two load shapes, each measured without upgrades first, then with them:
#
#   keep-alive   BENCH_CONNS (32) connections reused: the old process's drain closes them
#   new-conn     `Connection: close`: a new connection per request, so connects race the handoff
#
# With upgrades, wrk runs for BENCH_DURATION (30s) while the upgrades are started at even
# intervals; each waits for the new process's ready line and for the old one to exit 0 before
# the next. Per shape: requests, non-2xx, socket errors by kind (connect/read/write/timeout),
# req/s without and during upgrades, and the TCP resets sent (by anyone: wrk, gateway, nginx)
# between the first upgrade's start and the last one's end.
#
# wrk counts as a "read" error a connection the server closed before answering the request
# wrk had already written (it sends the next request right after an answer): the draining old
# process closing a keep-alive connection whose next request it never read. With no reset,
# that close is a clean FIN before any byte of an answer — the lifecycle tests' "unsent", a
# request provably not processed, which a client may retry — not a failed request. A reset,
# a non-2xx or a timeout is a lost request. Exits 1 on any of those or a failed upgrade.
#
# Run as root where `unshare -n` works, the script runs itself in a private network namespace
# (its own loopback), so that the reset counter is its own (BENCH_NETNS=0: not).
#
#   bench/upgrade.sh
if [ "${BENCH_NETNS:-1}" = 1 ] && [ -z "${BENCH_IN_NETNS:-}" ] && [ "$(id -u)" = 0 ] &&
  unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && BENCH_IN_NETNS=1 exec "$0" "$@"' "$0" "$@"
fi
source "$(dirname "$0")/lib.sh"
UPGRADES=${BENCH_UPGRADES:-10}
DUR=${BENCH_DURATION:-30s}
PORT=${BENCH_GATEWAY_PORT:-18230}
need wrk nginx
build_and_mint
start_upstream

CFG=$RUN/upgrade.toml
gateway_config "$CFG" "$PORT" 100000
rm -f "$RUN/upgrade.sock"
sed -i "s|^threads = 2$|threads = 2\nupgrade_socket = \"$RUN/upgrade.sock\"|" "$CFG"

# the serving process; each upgrade replaces it
"$BIN" run --config "$CFG" 2>"$RUN/upgrade-0.log" & GW=$!; PIDS+=($!)
wait_port "$PORT"

# TCP resets sent so far (Tcp OutRsts, of the namespace)
tcp_resets() { awk '/^Tcp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "OutRsts") c = i; h = 1 } else print $c }' /proc/net/snmp; }

# upgrade I: starts `run --upgrade`, waits for its ready line, then for the old process to
# drain and exit (status 0); the new one serves from then on
upgrade() {
  local i=$1 log=$RUN/upgrade-$1.log new old=$GW rc=0
  : > "$log" # before the new process opens it: the wait below reads it at once
  "$BIN" run --config "$CFG" --upgrade 2>"$log" & new=$!; PIDS+=($new)
  until grep -q "cc-gateway ready" "$log"; do
    kill -0 "$new" 2>/dev/null || { echo "upgrade $i: the new process exited before it was ready (see $log)" >&2; return 1; }
    sleep 0.05
  done
  wait "$old" || rc=$?
  [ "$rc" = 0 ] || { echo "upgrade $i: the old process exited $rc" >&2; return 1; }
  GW=$new
}

secs=${DUR%s}
: > "$RUN/upgrade.txt"
n=0
failed=0
for shape in keep-alive new-conn; do
  close=0; [ "$shape" = new-conn ] && close=1
  export WRK_CONNECTION_CLOSE=$close
  wrk_result "$PORT" "$RUN/warm.txt" 2s # warm-up
  wrk_result "$PORT" "$RUN/warm.txt" "$DUR"
  echo "$shape without $requests $duration_us $non2xx $err_connect $err_read $err_write $err_timeout -" >> "$RUN/upgrade.txt"
  # the load in the background (its RESULT line to a file), the upgrades spread over it
  out=$RUN/upgrade-wrk-$shape.txt
  TOKENS_FILE=$RUN/warm.txt wrk -t"$WRK_THREADS" -c"$CONNS" -d"$DUR" -s bench/tokens.lua \
    "http://127.0.0.1:$PORT/ai/v2/completions" > "$out" & load=$!
  start=$(date +%s.%N)
  rst0=
  for k in $(seq "$UPGRADES"); do
    # the k-th upgrade starts at k/(UPGRADES+1) of the run: pacing, not synchronisation
    at=$(awk -v s="$start" -v d="$secs" -v k="$k" -v n="$UPGRADES" 'BEGIN{printf "%.3f", s + d * k / (n + 1)}')
    wait_s=$(awk -v at="$at" -v now="$(date +%s.%N)" 'BEGIN{w = at - now; printf "%.3f", (w > 0 ? w : 0)}')
    sleep "$wait_s"
    [ -n "$rst0" ] || rst0=$(tcp_resets)
    n=$((n + 1))
    upgrade "$n" || failed=$((failed + 1))
  done
  resets=$(($(tcp_resets) - rst0))
  kill -0 "$load" 2>/dev/null || echo "$shape: the load ended before the last upgrade did (raise BENCH_DURATION)" >&2
  wait "$load"
  eval "$(grep '^RESULT' "$out" | sed 's/^RESULT //; s/ /;/g')"
  echo "$shape with $requests $duration_us $non2xx $err_connect $err_read $err_write $err_timeout $resets" >> "$RUN/upgrade.txt"
done

echo
echo "$UPGRADES upgrades per shape during $DUR of load, $CONNS connections, warm token"
echo
echo "| shape | upgrades | requests | non-2xx | connect | read | write | timeout | resets | req/s | vs without |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk -v u="$UPGRADES" '
  { k = $1 " " $2; req[k] = $3; rps[k] = $3 / ($4 / 1e6); bad[k] = $5; c[k] = $6; r[k] = $7; w[k] = $8; t[k] = $9; rst[k] = $10 }
  END {
    split("keep-alive new-conn", shapes, " ")
    for (i = 1; i <= 2; i++) for (j = 0; j <= 1; j++) {
      s = shapes[i]; m = j ? "with" : "without"; k = s " " m
      printf "| %s | %s | %d | %d | %d | %d | %d | %d | %s | %.0f | %s |\n", s, j ? u : 0, req[k], bad[k],
        c[k], r[k], w[k], t[k], rst[k], rps[k], j ? sprintf("%.3f", rps[k] / rps[s " without"]) : "1"
    }
  }' "$RUN/upgrade.txt"
# lost: non-2xx, connect/write errors, timeouts, resets; read errors only when resets could
# explain them (without a reset, a read error is a clean close before an answer: unsent)
lost=$(awk '$2 == "with" { s += $5 + $6 + $8 + $9 + $10 + ($10 > 0 ? $7 : 0) } END { print s + 0 }' "$RUN/upgrade.txt")
unsent=$(awk '$2 == "with" && $10 == 0 { s += $7 } END { print s + 0 }' "$RUN/upgrade.txt")
warns=$(cat "$RUN"/upgrade-*.log | grep -c -E " (WARN|ERROR) " || true)
echo
echo "requests lost during upgrades: $lost; closed unanswered and unread (unsent): $unsent;"
echo "failed upgrades: $failed; WARN/ERROR lines in the gateways' logs: $warns (logs: $RUN/upgrade-*.log)"
[ "$lost" = 0 ] && [ "$failed" = 0 ]
