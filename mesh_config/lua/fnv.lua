-- The sticky-percentage hash, bit for bit the same as lane/core/hashing.py:
-- FNV-1a, 32 bits, over the bytes of salt .. key; bucket = hash % 100.
--
-- Written with plain arithmetic so it runs unchanged on LuaJIT (Envoy) and PUC Lua 5.1-5.4:
-- every intermediate value stays below 2^53, so doubles are exact and nothing overflows.
--   h * 0x01000193 mod 2^32 == (h * 0x193 + (h mod 2^8) * 2^24) mod 2^32
local M = {}

local OFFSET_BASIS = 2166136261  -- 0x811C9DC5
local TWO32 = 4294967296

-- a xor b for 0 <= a, b < 256
local function xor8(a, b)
  local result, place = 0, 1
  for _ = 1, 8 do
    local abit, bbit = a % 2, b % 2
    if abit ~= bbit then
      result = result + place
    end
    a = (a - abit) / 2
    b = (b - bbit) / 2
    place = place * 2
  end
  return result
end

function M.fnv1a32(data)
  local h = OFFSET_BASIS
  for i = 1, #data do
    local low = h % 256
    h = h - low + xor8(low, string.byte(data, i))
    h = (h * 403 + (h % 256) * 16777216) % TWO32
  end
  return h
end

function M.bucket(key, salt)
  return M.fnv1a32((salt or "") .. key) % 100
end

function M.in_percentage(key, percent, salt)
  return M.bucket(key, salt) < percent
end

return M
