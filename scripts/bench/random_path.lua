-- random_path.lua - wrk script: every request GETs a random path from a key list.
--
--   wrk -t2 -c64 -d10s --latency -s random_path.lua http://127.0.0.1:PORT -- KEYS.txt
--
-- KEYS.txt holds request paths, one per line (`/<hash>.narinfo`, `/nar/<name>.nar.xz`), as
-- written by gen_cache.py. Requests are formatted once, in init(), so that the Lua side of wrk
-- costs as little as possible per request.
--
-- done() prints one machine-readable line for scripts/bench.sh:
--   BENCH requests=N duration_us=N bytes=N rps=F mib_s=F p50_us=N p90_us=N p99_us=N
--         max_us=N mean_us=F err_connect=N err_read=N err_write=N err_status=N err_timeout=N
-- err_status counts responses that are not 2xx/3xx (wrk's "Non-2xx or 3xx responses").

local requests = {}
local count = 0

function setup(thread)
  -- Runs in wrk's main Lua state, once per thread: a distinct random seed for each.
  thread_seq = (thread_seq or 0) + 1
  thread:set("seed", os.time() * 100 + thread_seq)
end

function init(args)
  local path = args[1]
  if not path then
    error("random_path.lua: pass the key list after --, e.g. -- hits.txt")
  end
  local file, why = io.open(path, "r")
  if not file then
    error("random_path.lua: " .. tostring(why))
  end
  for line in file:lines() do
    if #line > 0 then
      count = count + 1
      requests[count] = wrk.format("GET", line)
    end
  end
  file:close()
  if count == 0 then
    error("random_path.lua: " .. path .. " is empty")
  end
  math.randomseed(seed or os.time())
end

function request()
  return requests[math.random(count)]
end

function done(summary, latency, _)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d rps=%.1f mib_s=%.2f " ..
    "p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f " ..
    "err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d\n",
    summary.requests, summary.duration, summary.bytes,
    summary.requests / secs, summary.bytes / secs / 1048576,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
