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
cpu_ticks() { local t=0; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
rss_mib() { awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$1/status 2>/dev/null || echo "?"; }

# wrk_result PORT TOKENS DURATION: sets requests duration_us p50_us p99_us non2xx sockerr
# (and its parts err_connect err_read err_write err_timeout)
wrk_result() {
  local out
  out=$(TOKENS_FILE=$2 wrk -t"$WRK_THREADS" -c"$CONNS" -d"$3" -s bench/tokens.lua "http://127.0.0.1:$1/ai/v2/completions" | grep '^RESULT')
  eval "$(echo "$out" | sed 's/^RESULT //; s/ /;/g')"
}
