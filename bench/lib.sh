# Shared by bench/run.sh and bench/budgets.sh (sourced): the release build, keys and tokens,
# an nginx upstream, gateway configs, and one wrk measurement.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
RUN=$ROOT/bench/run
UP_PORT=${BENCH_UPSTREAM_PORT:-18180}
REDIS_PORT=${BENCH_REDIS_PORT:-18186}
CONNS=${BENCH_CONNS:-32}
WRK_THREADS=${BENCH_THREADS:-2}
HZ=$(getconf CLK_TCK)
ISS=https://gitlab.example.test
# cargo's own target directory (CARGO_TARGET_DIR when set, so a worktree can share one)
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/cc-gateway
mkdir -p "$RUN"
PIDS=()

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

need() {
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "bench: needs $t (apt-get install -y $t)" >&2; exit 1; }
  done
}

build_and_mint() {
  cargo build --release -q
  $BIN token keygen --force --alg RS256 --key "$RUN/key.pem" --jwks "$RUN/jwks.json" --kid bench >/dev/null
  $BIN token mint --key "$RUN/key.pem" --kid bench --iss $ISS --aud gitlab-ai-gateway --sub warm \
    --scopes code_suggestions --ttl 2h --claim gitlab_realm=saas > "$RUN/warm.txt"
  [ -s "$RUN/cold.txt" ] && [ "$RUN/cold.txt" -nt "$RUN/key.pem" ] || \
    $BIN token mint --key "$RUN/key.pem" --kid bench --iss $ISS --aud gitlab-ai-gateway --sub cold \
      --scopes code_suggestions --ttl 2h --claim gitlab_realm=saas --count 10000 > "$RUN/cold.txt"
}

# upstream: nginx, one worker, keep-alive, 200 {"ok":true}
start_upstream() {
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
  UP_PID=$!
  wait_port $UP_PORT
}

start_redis() {
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null & PIDS+=($!)
  REDIS_PID=$!
  wait_port "$REDIS_PORT"
}

# gateway_config FILE PORT CACHE_SIZE [STORE]: one route, one upstream (access log off, or to
# $BENCH_ACCESS_LOG_PATH when set); with STORE (memory,
# sqlite://…, redis://…) one GCRA rule keyed by claim:sub that never refuses in a benchmark
gateway_config() {
  local file=$1 port=$2 cache=$3 store=${4:-} extra=""
  if [ -n "$store" ]; then
    extra=$'[budgets]\nstore = "'"$store"$'"\n[[budgets.rules]]\nname = "instance-rate"\nkey = ["claim:sub"]\nrate = "100000000/1s"\nburst = 1000000'
  fi
  cat > "$file" <<CONF
[server]
listen = ["127.0.0.1:$port"]
admin_listen = "127.0.0.1:0"
threads = 2
[auth]
token_cache_size = $cache
[log]
access = "${BENCH_ACCESS_LOG_PATH:-off}"
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

# start_postgres NAME PORT [-c opt=value …]: a PostgreSQL server (Debian's) in $RUN/NAME on
# 127.0.0.1:PORT, user `bench` trusted, database `postgres`; its log in $RUN/NAME.log. As root
# it runs as nobody (PostgreSQL refuses root), in a directory nobody owns.
start_postgres() {
  local name=$1 port=$2; shift 2
  local bin; bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [ -x "$bin/initdb" ] || { echo "bench: needs PostgreSQL's server (apt-get install -y postgresql)" >&2; exit 1; }
  local data=$RUN/$name as=()
  rm -rf "$data"
  if [ "$(id -u)" = 0 ]; then
    as=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
    mkdir -p "$data" && chown nobody:nogroup "$data"
  fi
  "${as[@]}" "$bin/initdb" -D "$data" -U bench --auth=trust >/dev/null
  "${as[@]}" "$bin/postgres" -D "$data" -p "$port" -k "$data" \
    -c listen_addresses=127.0.0.1 -c max_connections=200 "$@" >"$RUN/$name.log" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
  for _ in $(seq 100); do psql -h 127.0.0.1 -p "$port" -U bench -d postgres -c 'select 1' >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "bench: PostgreSQL on $port never answered (see $RUN/$name.log)" >&2; return 1
}

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }
# cpu_ns PID…: nanoseconds on CPU so far, all threads of each process (the scheduler's own
# account, not 10 ms ticks: a 3 s round of a 7 µs/request upstream is only ~35 ticks)
cpu_ns() {
  local p
  for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done | awk '{t += $1} END {printf "%.0f", t}'
}
cpu_ticks() { local t=0; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$1/status 2>/dev/null || echo "?"; }

# wrk_result PORT TOKENS DURATION: sets requests duration_us p50_us p99_us non2xx sockerr
# (and its parts err_connect err_read err_write err_timeout)
wrk_result() {
  local out
  out=$(TOKENS_FILE=$2 wrk -t"$WRK_THREADS" -c"$CONNS" -d"$3" -s bench/tokens.lua "http://127.0.0.1:$1/ai/v2/completions" | grep '^RESULT')
  eval "$(echo "$out" | sed 's/^RESULT //; s/ /;/g')"
}

# The interleaved rounds of the side-by-side benchmarks (ab.sh, pools.sh, traces.sh). Every
# variant is a running gateway: PORT[v] and PID[v] (associative arrays the caller declares);
# UP_PID is the upstream nginx's master (its workers are measured). Each round loads every
# scenario once per variant, the variants in a new random order each time, so slow phases of a
# shared machine hit all alike.
#
# rounds OUT ROUNDS DURATION "SCENARIOS" VARIANT…: scenario = a token file ($RUN/<s>.txt);
# appends "variant scenario round req/s p50_µs p99_µs cpu_µs/req upstream_cpu_µs/req errors" to OUT
rounds() {
  local out=$1 nr=$2 dur=$3 scenarios=$4; shift 4
  local r s v c0 c1 u0 u1 up
  up=$(pgrep -P "${UP_PID:?start_upstream first}" | tr '\n' ' ')
  for r in $(seq "$nr"); do
    for s in $scenarios; do
      for v in $(printf '%s\n' "$@" | shuf); do
        c0=$(cpu_ns "${PID[$v]}"); u0=$(cpu_ns $up)
        wrk_result "${PORT[$v]}" "$RUN/$s.txt" "$dur"
        c1=$(cpu_ns "${PID[$v]}"); u1=$(cpu_ns $up)
        awk -v v="$v" -v s="$s" -v r="$r" -v n="$requests" -v d="$duration_us" -v p50="$p50_us" \
          -v p99="$p99_us" -v c=$((c1 - c0)) -v u=$((u1 - u0)) -v bad="$non2xx" -v se="$sockerr" \
          'BEGIN{printf "%s %s %d %.0f %d %d %.2f %.2f %d\n", v, s, r, n/(d/1e6), p50, p99, c/1e3/n, u/1e3/n, bad+se}' \
          >> "$out"
      done
    done
  done
}

# round_table OUT REF "SCENARIOS" VARIANT…: one row per scenario and variant — medians over the
# rounds of req/s, of the per-round throughput ratio to REF, of the per-round added p50/p99
# (over REF), of gateway and upstream CPU µs/request; errors summed.
round_table() {
  local out=$1 ref=$2 scenarios=$3; shift 3
  echo "| scenario | variant | req/s | × $ref | added p50 µs | added p99 µs | CPU µs/req | upstream CPU µs/req | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
  awk -v ref="$ref" -v scenarios="$scenarios" -v variants="$*" '
    function median(a, n,   i, j, t) {
      for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { v = $1; s = $2; r = $3; rps[v, s, r] = $4; p50[v, s, r] = $5; p99[v, s, r] = $6
      cpu[v, s, r] = $7; up[v, s, r] = $8; err[v, s] += $9; if (r > nr) nr = r }
    END {
      ns = split(scenarios, sc, " "); nv = split(variants, vs, " ")
      for (k = 1; k <= ns; k++) for (m = 1; m <= nv; m++) {
        s = sc[k]; v = vs[m]
        for (r = 1; r <= nr; r++) {
          a[r] = rps[v, s, r]; q[r] = rps[v, s, r] / rps[ref, s, r]
          b[r] = p50[v, s, r] - p50[ref, s, r]; c[r] = p99[v, s, r] - p99[ref, s, r]
          d[r] = cpu[v, s, r]; e[r] = up[v, s, r]
        }
        printf "| %s | %s | %.0f | %.3f | %+.0f | %+.0f | %.1f | %.2f | %d |\n", s, v, median(a, nr),
          median(q, nr), median(b, nr), median(c, nr), median(d, nr), median(e, nr), err[v, s]
      }
    }' "$out"
  echo "(per round: $out — variant scenario round req/s p50 p99 cpu upstream_cpu errors)"
}
