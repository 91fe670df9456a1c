-- UTF-8 the way the Python engine sees it.
--
-- Header values reach the Python data plane decoded as UTF-8 with "surrogateescape" (every byte
-- of an invalid sequence becomes its own code point U+DC80..U+DCFF); query values are decoded
-- with "replace" (each maximal invalid subpart becomes one U+FFFD). Both follow the Unicode
-- "maximal subpart" practice that CPython implements, mirrored here byte for byte.
local M = {}

local byte = string.byte
local REPLACEMENT = "\239\191\189"  -- U+FFFD

-- The code point starting at byte i, and how many bytes it used; or nil and the length of the
-- maximal invalid subpart.
local function decode_at(s, i)
  local b = byte(s, i)
  if b < 0x80 then
    return b, 1
  end
  local need, lo2, hi2, cp
  if b >= 0xC2 and b <= 0xDF then
    need, lo2, hi2, cp = 1, 0x80, 0xBF, b - 0xC0
  elseif b == 0xE0 then
    need, lo2, hi2, cp = 2, 0xA0, 0xBF, b - 0xE0
  elseif (b >= 0xE1 and b <= 0xEC) or b == 0xEE or b == 0xEF then
    need, lo2, hi2, cp = 2, 0x80, 0xBF, b - 0xE0
  elseif b == 0xED then
    need, lo2, hi2, cp = 2, 0x80, 0x9F, b - 0xE0
  elseif b == 0xF0 then
    need, lo2, hi2, cp = 3, 0x90, 0xBF, b - 0xF0
  elseif b >= 0xF1 and b <= 0xF3 then
    need, lo2, hi2, cp = 3, 0x80, 0xBF, b - 0xF0
  elseif b == 0xF4 then
    need, lo2, hi2, cp = 3, 0x80, 0x8F, b - 0xF0
  else
    return nil, 1
  end
  for k = 1, need do
    local c = byte(s, i + k)
    local lo, hi = 0x80, 0xBF
    if k == 1 then
      lo, hi = lo2, hi2
    end
    if c == nil or c < lo or c > hi then
      return nil, k
    end
    cp = cp * 64 + (c - 0x80)
  end
  return cp, need + 1
end

-- The code points of s as Python's surrogateescape decoding yields them.
function M.codepoints(s)
  local out, n, i, len = {}, 0, 1, #s
  while i <= len do
    local cp, used = decode_at(s, i)
    if cp then
      n = n + 1
      out[n] = cp
    else
      for k = 0, used - 1 do
        n = n + 1
        out[n] = 0xDC00 + byte(s, i + k)
      end
    end
    i = i + used
  end
  return out, n
end

-- s with every maximal invalid subpart replaced by U+FFFD (Python's errors="replace").
function M.sanitize(s)
  local parts, i, len, start = {}, 1, #s, 1
  while i <= len do
    local cp, used = decode_at(s, i)
    if cp then
      i = i + used
    else
      parts[#parts + 1] = string.sub(s, start, i - 1)
      parts[#parts + 1] = REPLACEMENT
      i = i + used
      start = i
    end
  end
  if start == 1 then
    return s
  end
  parts[#parts + 1] = string.sub(s, start)
  return table.concat(parts)
end

-- The characters Python's str.strip() removes (str.isspace), as UTF-8.
local WHITESPACE = {
  "\t", "\n", "\v", "\f", "\r", "\28", "\29", "\30", "\31", " ",
  "\194\133", "\194\160", "\225\154\128",
  "\226\128\128", "\226\128\129", "\226\128\130", "\226\128\131", "\226\128\132", "\226\128\133",
  "\226\128\134", "\226\128\135", "\226\128\136", "\226\128\137", "\226\128\138",
  "\226\128\168", "\226\128\169", "\226\128\175", "\226\129\159", "\227\128\128",
}

-- Python's str.strip() on the decoded text. A valid sequence never starts with a continuation
-- byte, so matching encoded whitespace at either end is exact.
function M.pystrip(s)
  local first, last = 1, #s
  local changed = true
  while changed and first <= last do
    changed = false
    for _, ws in ipairs(WHITESPACE) do
      local n = #ws
      if first + n - 1 <= last and string.sub(s, first, first + n - 1) == ws then
        first, changed = first + n, true
      end
      if first + n - 1 <= last and string.sub(s, last - n + 1, last) == ws then
        last, changed = last - n, true
      end
    end
  end
  return string.sub(s, first, last)
end

-- Split s on the plain separator sep (keeps empty pieces, like Python's str.split).
function M.split(s, sep)
  local out, start = {}, 1
  while true do
    local at = string.find(s, sep, start, true)
    if not at then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, at - 1)
    start = at + #sep
  end
end

-- Strip spaces and tabs (HTTP optional whitespace) from both ends.
function M.trim_ows(s)
  return (string.gsub(string.gsub(s, "^[ \t]+", ""), "[ \t]+$", ""))
end

-- %XX -> byte; anything else is kept as it is (urllib.parse.unquote_to_bytes).
function M.percent_decode(s)
  return (string.gsub(s, "%%(%x%x)", function(hex)
    return string.char(tonumber(hex, 16))
  end))
end

-- A lane value: a DNS label (lane/core/tags.py LANE_PATTERN), at most 63 bytes.
function M.is_lane(s)
  if s == nil or #s == 0 or #s > 63 then
    return false
  end
  if #s == 1 then
    return string.find(s, "^[a-z0-9]$") ~= nil
  end
  return string.find(s, "^[a-z0-9][-a-z0-9]*[a-z0-9]$") ~= nil
end

return M
