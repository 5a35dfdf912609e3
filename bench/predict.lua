-- wrk script for bench.py: POST /predict, one JSON row per request, cycling through the rows of a
-- file (one JSON object a line; real held-out diamonds, so predictions vary), and print the
-- results as one JSON line that bench.py parses.
--
--   wrk -t2 -c16 -d15s --latency -s bench/predict.lua http://127.0.0.1:PORT -- rows.jsonl
--
-- Each wrk thread has its own Lua state: `requests`, `next_index` and `non2xx` are per thread;
-- done() runs in yet another state and sums the threads' counters through thread:get().

local threads = {}
local requests = {}
local next_index = 1
non2xx = 0  -- global so that done() can read it with thread:get("non2xx")

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s predict.lua URL -- ROWS.jsonl")
   end
   local headers = {["Content-Type"] = "application/json"}
   for line in io.lines(path) do
      if #line > 0 then
         -- wrk.format adds Host and Content-Length; requests are built once, here
         requests[#requests + 1] = wrk.format("POST", "/predict", headers, line)
      end
   end
   if #requests == 0 then
      error("no rows in " .. path)
   end
   -- threads start at different rows
   next_index = (id or 0) * 97 % #requests + 1
end

function request()
   local req = requests[next_index]
   next_index = next_index + 1
   if next_index > #requests then
      next_index = 1
   end
   return req
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   end
end

function done(summary, latency, requests)
   local n = 0
   for _, thread in ipairs(threads) do
      n = n + (thread:get("non2xx") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, ' ..
      '"p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f, ' ..
      '"non2xx": %.0f, "errors_connect": %.0f, "errors_read": %.0f, "errors_write": %.0f, ' ..
      '"errors_status": %.0f, "errors_timeout": %.0f}\n',
      summary.requests, summary.duration, summary.bytes,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      n, e.connect, e.read, e.write, e.status, e.timeout))
end
