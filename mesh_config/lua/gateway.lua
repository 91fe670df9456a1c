-- The lane gateway filter (ingress gateway, before the router): colors the request by the
-- config's rules exactly as lane/core/rules.py does, drops any lane the client tried to set itself
-- (tag header and the lane's baggage member), then sets the tag header and puts the lane first
-- in baggage. The VirtualServices then route on the tag header, so the route is recomputed.
-- gRPC calls are colored alike (HTTP/2, metadata is headers): the filter reads and writes headers
-- only, never the body (nothing is buffered), and answers nothing itself.
local coloring = LANE_MODULES.coloring
local request = LANE_MODULES.request
local baggage = LANE_MODULES.baggage
local CONFIG = coloring.prepare(LANE_CONFIG)

pcall(function()
  math.randomseed(os.time())
end)

local function draw()
  return math.random(0, 99)
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local lane = coloring.color(CONFIG, request.view(headers), draw)
  local members = baggage.set_member(headers:get("baggage"), CONFIG.baggage_key, lane)
  headers:remove(CONFIG.tag_header)
  headers:remove("baggage")
  headers:add(CONFIG.tag_header, lane)
  headers:add("baggage", members)
  pcall(function()
    handle:clearRouteCache()
  end)
end
