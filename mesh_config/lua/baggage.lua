-- The W3C baggage header, mirrored from lane/core/baggage.py (the data plane's robust reader):
-- members split on ",", trimmed of spaces and tabs, empty ones skipped; a member's key is what
-- precedes its first "=" (compared raw or percent-decoded); its value stops at the first ";"
-- (properties) and is percent-decoded only ("+" stays "+"). Reading is bounded like the Python
-- side: MAX_CHARS characters (a member cut by the bound is dropped) and MAX_MEMBERS members.
-- Envoy's headers:get("baggage") joins repeated headers with ",", which is one list again.
local text = LANE_MODULES.text
local M = {}

local MAX_CHARS = 65536
local MAX_MEMBERS = 1024

function M.members(value)
  local out = {}
  if value == nil then
    return out
  end
  local cut = #value > MAX_CHARS
  if cut then
    value = string.sub(value, 1, MAX_CHARS)
  end
  local pieces = text.split(value, ",")
  if cut then
    pieces[#pieces] = nil
  end
  for _, piece in ipairs(pieces) do
    local member = text.trim_ows(piece)
    if member ~= "" then
      if #out >= MAX_MEMBERS then
        break
      end
      out[#out + 1] = member
    end
  end
  return out
end

local function names(member, key)
  local eq = string.find(member, "=", 1, true)
  if not eq then
    return false
  end
  local raw = text.trim_ows(string.sub(member, 1, eq - 1))
  return raw == key or (string.find(raw, "%", 1, true) ~= nil and text.sanitize(text.percent_decode(raw)) == key)
end

function M.get_member(value, key)
  for _, member in ipairs(M.members(value)) do
    if names(member, key) then
      local eq = string.find(member, "=", 1, true)
      local raw = string.sub(member, eq + 1)
      local semi = string.find(raw, ";", 1, true)
      if semi then
        raw = string.sub(raw, 1, semi - 1)
      end
      return text.sanitize(text.percent_decode(text.trim_ows(raw)))
    end
  end
  return nil
end

function M.remove_member(value, key)
  local kept = {}
  for _, member in ipairs(M.members(value)) do
    if not names(member, key) then
      kept[#kept + 1] = member
    end
  end
  if #kept == 0 then
    return nil
  end
  return table.concat(kept, ",")
end

-- key and lane are tokens/DNS labels already (the config checks both), so need no escaping.
function M.set_member(value, key, lane)
  local rest = M.remove_member(value, key)
  if rest == nil then
    return key .. "=" .. lane
  end
  return key .. "=" .. lane .. "," .. rest
end

return M
