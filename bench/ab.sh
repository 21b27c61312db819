#!/usr/bin/env bash
# A/B benchmark (not a test): two builds of cc-gateway, or one build with two configs, measured
# in one run. Both gateways run side by side in front of one nginx upstream and are loaded in
# turn, BENCH_ROUNDS rounds of BENCH_DURATION per scenario, in a new random order every round, so
# slow phases of a shared machine hit both alike (lib.sh `rounds`). Per scenario: the median over
# rounds of B's throughput ratio to A in the same round, B's added p50/p99, and each one's gateway
# and upstream CPU µs/request.
#
#   bench/ab.sh OLD_BINARY [NEW_BINARY]     # NEW defaults to this tree's release build
#   git worktree add /tmp/base main && (cd /tmp/base && cargo build --release)
#   bench/ab.sh /tmp/base/target/release/cc-gateway
#
#   # one build, two configs: BENCH_EDIT_A / BENCH_EDIT_B are sed scripts applied to that
#   # side's config (lib.sh gateway_config), e.g. the upstream's cost of the identity headers:
#   BENCH_EDIT_B='/^\[auth\]/a identity_headers = []' bench/ab.sh
#
# Scenarios: warm (one token: cache hits), cold (10,000 tokens round-robin, cache on).
# Knobs: BENCH_ROUNDS (9), BENCH_DURATION (3s), BENCH_CONNS (32), BENCH_THREADS (2),
# BENCH_ACCESS_LOG=1 (each gateway writes its access log to a file of its own),
# BENCH_SCENARIOS ("warm cold").
source "$(dirname "$0")/lib.sh"
ROUNDS=${BENCH_ROUNDS:-9}
DUR=${BENCH_DURATION:-3s}
SCENARIOS=${BENCH_SCENARIOS:-warm cold}
if [ $# = 0 ] && [ -z "${BENCH_EDIT_A:-}${BENCH_EDIT_B:-}" ]; then
  echo "usage: bench/ab.sh OLD_BINARY [NEW_BINARY], or BENCH_EDIT_A/BENCH_EDIT_B=SED bench/ab.sh" >&2
  exit 2
fi
A_BIN=${1:-$BIN}
B_BIN=${2:-$BIN}
need wrk nginx pgrep
build_and_mint
start_upstream

declare -A PORT PID BINS=([A]=$A_BIN [B]=$B_BIN) EDIT=([A]=${BENCH_EDIT_A:-} [B]=${BENCH_EDIT_B:-})
port=${BENCH_GATEWAY_PORT:-18200}
for v in A B; do
  [ "${BENCH_ACCESS_LOG:-0}" = 1 ] && BENCH_ACCESS_LOG_PATH="$RUN/access-$v.log"
  BENCH_ACCESS_LOG_PATH=${BENCH_ACCESS_LOG_PATH:-off} gateway_config "$RUN/ab-$v.toml" "$port" 100000
  [ -n "${EDIT[$v]}" ] && sed -i "${EDIT[$v]}" "$RUN/ab-$v.toml"
  "${BINS[$v]}" run --config "$RUN/ab-$v.toml" 2>"$RUN/ab-$v.log" & PID[$v]=$!; PIDS+=($!)
  wait_port "$port"
  PORT[$v]=$port
  port=$((port + 1))
done

for v in A B; do wrk_result "${PORT[$v]}" "$RUN/warm.txt" 2s; done # warm-up
: > "$RUN/ab.txt"
rounds "$RUN/ab.txt" "$ROUNDS" "$DUR" "$SCENARIOS" A B

echo
echo "A = $A_BIN${EDIT[A]:+ (config: sed '${EDIT[A]}')}"
echo "B = $B_BIN${EDIT[B]:+ (config: sed '${EDIT[B]}')}"
round_table "$RUN/ab.txt" A "$SCENARIOS" A B
