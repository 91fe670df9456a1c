-- The parts of a request the coloring rules look at, read from Envoy's header map the way
-- lane/core/rules.py RequestView.from_parts reads them:
--   header: every value of the name joined with "," (headers:get does exactly that);
--   cookie: every Cookie header, split on ";", each part stripped (Python str.strip), split at
--           its first "=", value stripped; the first cookie of a name wins;
--   query:  the raw query of :path (a gRPC call's :path is its method: no query), split on "&",
--           each piece split at its first "=" (a piece without one is a name with an empty
--           value), "+" -> space, %XX decoded, invalid UTF-8
--           replaced by U+FFFD; the first parameter of a name wins (urllib.parse.parse_qsl with
--           keep_blank_values=True).
-- Everything is read lazily and once, before the filter changes any header.
local text = LANE_MODULES.text
local M = {}

local function parse_cookies(headers)
  local cookies = {}
  local count = headers:getNumValues("cookie") or 0
  for index = 0, count - 1 do
    local value = headers:getAtIndex("cookie", index)
    if value ~= nil then
      for _, part in ipairs(text.split(value, ";")) do
        local stripped = text.pystrip(part)
        local eq = string.find(stripped, "=", 1, true)
        if eq then
          local name = string.sub(stripped, 1, eq - 1)
          if name ~= "" and cookies[name] == nil then
            cookies[name] = text.pystrip(string.sub(stripped, eq + 1))
          end
        end
      end
    end
  end
  return cookies
end

local function form_decode(s)
  return text.sanitize(text.percent_decode((string.gsub(s, "%+", " "))))
end

local function parse_query(path)
  local query = {}
  if path == nil then
    return query
  end
  local mark = string.find(path, "?", 1, true)
  if not mark then
    return query
  end
  for _, piece in ipairs(text.split(string.sub(path, mark + 1), "&")) do
    if piece ~= "" then
      local name, value = piece, ""
      local eq = string.find(piece, "=", 1, true)
      if eq then
        name, value = string.sub(piece, 1, eq - 1), string.sub(piece, eq + 1)
      end
      name = form_decode(name)
      if query[name] == nil then
        query[name] = form_decode(value)
      end
    end
  end
  return query
end

-- A view over an Envoy header map: view:get(source, name) -> string or nil.
function M.view(headers)
  local self = { headers = headers }
  function self.get(_, source, name)
    if source == "header" then
      if name == "host" then
        -- Envoy keeps the Host header as :authority (HTTP/1 and HTTP/2 alike)
        return headers:get(":authority")
      end
      return headers:get(name)
    elseif source == "cookie" then
      if self.cookies == nil then
        self.cookies = parse_cookies(headers)
      end
      return self.cookies[name]
    else
      if self.query == nil then
        self.query = parse_query(headers:get(":path"))
      end
      return self.query[name]
    end
  end
  return self
end

return M
