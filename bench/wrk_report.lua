-- wrk script of bench/compare.py: cycle through pre-built requests, print one JSON line at the end.
--
-- Each argument after `--` is one request's extra headers, "Name: value" lines joined by "\n";
-- the requests are sent in turn (per wrk thread), so "gray" and "plain" traffic interleave in
-- one run. They are formatted once in init(): request() only hands out a prebuilt string, which
-- keeps the generator's cost per request tiny and identical for every subject. There is no
-- response() callback (it would make wrk parse every answer into Lua): routing is checked on the
-- stub backends' own counters instead, and every non-2xx answer is counted by wrk as a status error.

local requests = {}
local next_index = 1

function init(args)
  for _, spec in ipairs(args) do
    local headers = { Host = wrk.headers["Host"] }
    for line in string.gmatch(spec, "[^\n]+") do
      local name, value = string.match(line, "^([^:]+):%s*(.*)$")
      if name then
        headers[name] = value
      end
    end
    requests[#requests + 1] = wrk.format("GET", wrk.path, headers)
  end
  if #requests == 0 then
    requests[1] = wrk.format("GET", wrk.path, { Host = wrk.headers["Host"] })
  end
end

function request()
  local req = requests[next_index]
  next_index = next_index % #requests + 1
  return req
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
