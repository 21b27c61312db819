-- wrk script: GET /ai/v2/completions with X-Gitlab-Token taken round-robin from TOKENS_FILE
-- (one token per line). Requests are built once up front so a warm and a cold run cost wrk
-- the same. WRK_CONNECTION_CLOSE=1 sends `Connection: close` (a new connection per request).
-- Prints one machine-readable line at the end.
local tokens = {}
local reqs = {}
local i = 0

function init(args)
  local path = os.getenv("TOKENS_FILE")
  for line in io.lines(path) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  local close = os.getenv("WRK_CONNECTION_CLOSE") == "1"
  for k, t in ipairs(tokens) do
    local h = { ["X-Gitlab-Token"] = t, ["Host"] = "bench" }
    if close then h["Connection"] = "close" end
    reqs[k] = wrk.format("GET", "/ai/v2/completions", h)
  end
  -- spread threads over the token list
  i = math.random(#reqs) - 1
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local non2xx = summary.errors.status
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d sockerr=%d err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), non2xx,
    e.connect + e.read + e.write + e.timeout, e.connect, e.read, e.write, e.timeout))
end
