#!/usr/bin/env bash
# Instructions and simulated cache misses per request, under callgrind (not a test). Wall-clock
# A/B rounds on this VM drift ±15 % per round, which hides a change worth 1–3 %; the user-space
# instruction count of a fixed load is exact to ~0.5 %, so it decides micro-optimisations
# (kernel time — ~55 % of the gateway's CPU — is not counted: syscalls and wake-ups still need
# bench/ab.sh).
#
#   bench/instructions.sh [BINARY…]      # default: this tree's release build
#   bench/instructions.sh /tmp/base/target/release/cc-gateway target/release/cc-gateway
#   bench/instructions.sh target/release/cc-gateway ../shared/bench-anchors/hyper-hop/target/release/hyper-hop
#
# A binary named hyper-hop* is the anchors' bare hyper hop, run as `hyper-jwt-cache` (--cache:
# the same tokens verified once, then a cache hit per request) against the same upstream: the
# Ir/request it spends is the floor of hyper + tokio + the token cache, and the difference to
# cc-gateway is what the gateway's own work costs in instructions.
#
# Per binary and scenario (warm: one token; cold: 10,000 tokens, each verified in the
# warm-up so the measured requests are cache hits): requests measured, Ir/request, Ir/request
# without SHA-256 (under valgrind aws-lc cannot use the SHA extensions and takes its AVX path,
# ~25k instructions per token digest instead of ~1.5k natively), D1 and LL read misses per
# request (LL simulated as 2 MiB, 16-way), and the functions that cost the most per request.
# Knobs: BENCH_SCENARIOS ("warm cold"), BENCH_WARMUP (40s, the cold warm-up verifies 10k
# tokens at valgrind speed), BENCH_DURATION (20s), BENCH_CONNS (4: wrk connections), BENCH_TOP (15), BENCH_CACHE (cc-gateway's
# token_cache_size, 100000; 0: every request verifies RS256 — the cache-off path).
source "$(dirname "$0")/lib.sh"
need wrk nginx valgrind callgrind_control callgrind_annotate
build_and_mint
start_upstream
[ $# -gt 0 ] || set -- "$BIN"
SCENARIOS=${BENCH_SCENARIOS:-warm cold}
TOP=${BENCH_TOP:-15}
port=${BENCH_GATEWAY_PORT:-18240}
url=http://127.0.0.1:$port/ai/v2/completions
gateway_config "$RUN/instructions.toml" "$port" "${BENCH_CACHE:-100000}"

summary=()
for bin in "$@"; do
  for s in $SCENARIOS; do
    out=$RUN/callgrind-$(basename "$bin")-$s
    rm -f "$out".*
    case $(basename "$bin") in
      hyper-hop*) args=(--cache --listen "127.0.0.1:$port" --upstream "127.0.0.1:$UP_PORT" --jwks "$RUN/jwks.json"
        --issuer "$ISS" --audience gitlab-ai-gateway) ;;
      *) args=(run --config "$RUN/instructions.toml") ;;
    esac
    valgrind --tool=callgrind --instr-atstart=no --cache-sim=yes --LL=2097152,16,64 \
      --callgrind-out-file="$out.out" "$bin" "${args[@]}" 2>"$out.log" &
    g=$!
    # valgrind starts slowly: wait for the port without lib.sh's 10 s limit
    for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    TOKENS_FILE=$RUN/$s.txt wrk -t1 -c"${BENCH_CONNS:-4}" -d"${BENCH_WARMUP:-40s}" --timeout 20s -s bench/tokens.lua "$url" >/dev/null
    callgrind_control -i on "$g" >/dev/null 2>&1
    res=$(TOKENS_FILE=$RUN/$s.txt wrk -t1 -c"${BENCH_CONNS:-4}" -d"${BENCH_DURATION:-20s}" --timeout 20s -s bench/tokens.lua "$url" | grep '^RESULT')
    callgrind_control -i off "$g" >/dev/null 2>&1
    callgrind_control -d "$g" >/dev/null 2>&1 # → $out.out.1: the measured requests only
    kill -TERM "$g"; wait "$g" 2>/dev/null || true # hyper-hop ends on TERM, not INT
    eval "$(sed 's/^RESULT //; s/ /;/g' <<<"$res")"
    [ "${non2xx:-1}" = 0 ] && [ "${sockerr:-1}" = 0 ] || { echo "bench: errors under valgrind: $res" >&2; exit 1; }
    ann=$(callgrind_annotate --inclusive=no "$out.out.1" 2>/dev/null)
    # columns: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw, each followed by its (share)
    totals=$(grep -m1 'PROGRAM TOTALS' <<<"$ann" | sed -E 's/\( *[0-9.]+%\)//g; s/,//g')
    # (hyper-hop hashes tokens with foldhash: no SHA-256 line, and grep's miss is no error)
    sha=$({ grep -i 'sha256_block_data_order' <<<"$ann" || true; } | sed -E 's/\( *[0-9.]+%\)//g; s/,//g' | awk '{t += $1} END {print t + 0}')
    line=$(awk -v n="$requests" -v sha="$sha" -v b="$(basename "$bin")" -v s="$s" \
      '{printf "| %s | %s | %d | %.0f | %.0f | %.0f | %.1f |", b, s, n, $1/n, ($1-sha)/n, $5/n, $8/n}' <<<"$totals")
    summary+=("$line")
    echo "== $bin, $s: $requests requests; top functions, instructions per request"
    sed -n '/file:function/,$p' <<<"$ann" | grep -E '^ *[0-9,]+ ' | sed -n "1,${TOP}p" | \
      sed -E 's/\( *[0-9.]+%\)//g; :a; s/([0-9]),([0-9]{3})/\1\2/; ta' | \
      awk -v n="$requests" '{ir = $1; sub(/^ *([0-9.]+ +){9}/, ""); sub(/ \[[^]]*\]$/, ""); sub(/^[^:]*:/, ""); printf "  %8.0f  %s\n", ir/n, substr($0, 1, 120)}'
  done
done
echo
echo "| binary | scenario | requests | Ir/req | Ir/req without SHA-256 | D1 read misses/req | LL read misses/req |"
echo "|---|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${summary[@]}"
