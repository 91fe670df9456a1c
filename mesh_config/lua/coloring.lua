-- The ordered coloring rules of lane/core/rules.py, evaluated over a request view:
-- the first rule whose conditions all hold (and whose percentage, if any, admits the request)
-- gives the lane; no match gives the default lane.
--   exact/prefix compare bytes (UTF-8 text compares the same as Python str);
--   regex must match the whole value, as code points (see text.codepoints, regex.lua);
--   a keyed percentage hashes salt .. key (fnv.lua); a missing key never matches;
--   a percentage without a key is a fresh random draw per request.
local fnv = LANE_MODULES.fnv
local regex = LANE_MODULES.regex
local text = LANE_MODULES.text
local M = {}

-- Compile every regex once, when the script loads (per Envoy worker).
function M.prepare(config)
  for _, rule in ipairs(config.rules) do
    for _, condition in ipairs(rule.conditions) do
      if condition.kind == "regex" then
        condition.program = regex.compile(condition.tree)
      end
    end
  end
  return config
end

local function holds(condition, view)
  local actual = view:get(condition.source, condition.name)
  local kind = condition.kind
  if kind == "absent" then
    return actual == nil
  end
  if actual == nil then
    return false
  end
  if kind == "present" then
    return true
  elseif kind == "exact" then
    return actual == condition.value
  elseif kind == "prefix" then
    return string.sub(actual, 1, #condition.value) == condition.value
  end
  local cps, n = text.codepoints(actual)
  return regex.fullmatch(condition.program, cps, n)
end

local function admits(percentage, view, draw)
  if percentage.key == nil then
    return draw() < percentage.percent
  end
  local key = view:get(percentage.key.source, percentage.key.name)
  if key == nil then
    return false
  end
  return fnv.in_percentage(key, percentage.percent, percentage.salt)
end

-- The lane of the request behind view, and the name of the rule that chose it (nil: none).
-- draw() returns a uniform integer 0..99 for percentages without a key.
function M.color(config, view, draw)
  for _, rule in ipairs(config.rules) do
    local ok = true
    for _, condition in ipairs(rule.conditions) do
      if not holds(condition, view) then
        ok = false
        break
      end
    end
    if ok and (rule.percentage == nil or admits(rule.percentage, view, draw)) then
      return rule.lane, rule.name
    end
  end
  return config.default_lane, nil
end

return M
