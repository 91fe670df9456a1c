-- wrk script of bench/compare.py: cycle through pre-built requests, print one JSON line at the end.
--
-- Each argument after `--` is one request's extra headers, "Name: value" lines joined by "\n";
-- the requests are sent in turn (per wrk thread), so "gray" and "plain" traffic interleave in
-- one run. They are formatted once in init(): request() only hands out a prebuilt string, which
-- keeps the generator's cost per request tiny and identical for every subject. There is no
-- response() callback (it would make wrk parse every answer into Lua): routing is checked on the
-- stub backends' own counters instead, and every non-2xx answer is counted by wrk as a status error.
--
-- An argument "@trace=traceparent,x-request-id,b3" (first, before the request specs) makes every
-- request carry those trace headers with fresh random ids, as all traffic behind a gateway does:
-- the prebuilt request then ends before its blank line, and request() appends the trace lines.
-- Each wrk thread seeds its own generator (setup() numbers the threads), so ids do not repeat
-- across threads.

local requests = {}
local next_index = 1
local trace = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_number", thread_count)
end

local function hex(groups)
  local out = {}
  for i = 1, groups do
    out[i] = string.format("%04x", math.random(0, 65535))
  end
  return table.concat(out)
end

local function trace_lines()
  local trace_id, span_id = hex(8), hex(4)
  local lines = {}
  if trace.traceparent then
    lines[#lines + 1] = "traceparent: 00-" .. trace_id .. "-" .. span_id .. "-01\r\n"
  end
  if trace["x-request-id"] then
    local u = hex(8)
    lines[#lines + 1] = "x-request-id: " .. u:sub(1, 8) .. "-" .. u:sub(9, 12) .. "-4" .. u:sub(14, 16) .. "-"
      .. "a" .. u:sub(18, 20) .. "-" .. u:sub(21, 32) .. "\r\n"
  end
  if trace.b3 then
    lines[#lines + 1] = "x-b3-traceid: " .. trace_id .. "\r\nx-b3-spanid: " .. span_id .. "\r\nx-b3-sampled: 1\r\n"
  end
  return table.concat(lines)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_number or 0) * 7919)
  for _, spec in ipairs(args) do
    local kinds = string.match(spec, "^@trace=(.*)$")
    if kinds then
      for kind in string.gmatch(kinds, "[^,]+") do
        trace[kind] = true
      end
      goto continue
    end
    local headers = { Host = wrk.headers["Host"] }
    for line in string.gmatch(spec, "[^\n]+") do
      local name, value = string.match(line, "^([^:]+):%s*(.*)$")
      if name then
        headers[name] = value
      end
    end
    requests[#requests + 1] = wrk.format("GET", wrk.path, headers)
    ::continue::
  end
  if #requests == 0 then
    requests[1] = wrk.format("GET", wrk.path, { Host = wrk.headers["Host"] })
  end
  if next(trace) then
    for i, req in ipairs(requests) do
      requests[i] = req:sub(1, -3) -- without the blank line: request() adds the trace lines, then it
    end
  end
end

function request()
  local req = requests[next_index]
  next_index = next_index % #requests + 1
  if next(trace) then
    return req .. trace_lines() .. "\r\n"
  end
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
