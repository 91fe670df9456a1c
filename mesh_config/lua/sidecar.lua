-- Sidecar outbound filter for apps that forward W3C baggage but not the tag header: when the
-- request carries no valid lane in the tag header, copy the lane from its baggage member into
-- the tag header so the VirtualServices route it down its lane. A valid tag header always wins
-- (the same precedence as the lane sidecar); an invalid lane anywhere is ignored. Headers only:
-- a gRPC call's metadata is its headers, and its body is never touched.
local baggage = LANE_MODULES.baggage
local text = LANE_MODULES.text
local CONFIG = LANE_CONFIG

function envoy_on_request(handle)
  local headers = handle:headers()
  local tag = headers:get(CONFIG.tag_header)
  if tag ~= nil and text.is_lane(text.trim_ows(tag)) then
    return
  end
  local lane = baggage.get_member(headers:get("baggage"), CONFIG.baggage_key)
  if lane == nil then
    return
  end
  lane = text.trim_ows(lane)
  if text.is_lane(lane) then
    headers:replace(CONFIG.tag_header, lane)
    pcall(function()
      handle:clearRouteCache()
    end)
  end
end
