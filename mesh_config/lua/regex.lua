-- Full-match regexes for Envoy's Lua, which has no regex engine.
--
-- mesh_config/regex.py parses each coloring regex (a checked subset of Python/RE2 syntax) into a
-- tree of tables; this module compiles the tree to a Thompson NFA once and simulates it over the
-- code points of a value, so a match costs O(len(value) * states) and can never blow up the way
-- a backtracking matcher can: each state enters the active set at most once per position (the
-- `mark` generation below), which is the memo a bit-state backtracker keeps. Semantics are RE2's
-- FullMatch on the value's bytes (what the Python data plane runs): an invalid UTF-8 byte (a code
-- point U+DC80..U+DCFF from text.codepoints) never matches, and $ is the end of the value. Tree nodes:
--   {"set", {lo1, hi1, lo2, hi2, ...}}   one code point within the (sorted, merged) ranges
--   {"cat", n1, n2, ...}  {"alt", n1, n2, ...}  {"rep", min, max (-1: unbounded), node}
--   {"bol"}  {"eol"}                      RE2's ^ and $ (start and end of the value)
local M = {}

local function new_state(prog, state)
  prog.n = prog.n + 1
  prog[prog.n] = state
  return state
end

-- Build the states of node, all of whose exits lead to nxt; return its entry state.
local function build(prog, node, nxt)
  local kind = node[1]
  if kind == "set" then
    return new_state(prog, { t = "set", ranges = node[2], out = nxt })
  elseif kind == "cat" then
    for i = #node, 2, -1 do
      nxt = build(prog, node[i], nxt)
    end
    return nxt
  elseif kind == "alt" then
    local outs = {}
    local split = new_state(prog, { t = "split", outs = outs })
    for i = 2, #node do
      outs[#outs + 1] = build(prog, node[i], nxt)
    end
    return split
  elseif kind == "bol" or kind == "eol" then
    return new_state(prog, { t = kind, out = nxt })
  elseif kind == "rep" then
    local min, max, body = node[2], node[3], node[4]
    local tail = nxt
    if max == -1 then
      local loop = new_state(prog, { t = "split", outs = {} })
      loop.outs[1] = build(prog, body, loop)
      loop.outs[2] = nxt
      tail = loop
    else
      for _ = 1, max - min do
        local opt = new_state(prog, { t = "split", outs = {} })
        opt.outs[1] = build(prog, body, tail)
        opt.outs[2] = tail
        tail = opt
      end
    end
    for _ = 1, min do
      tail = build(prog, body, tail)
    end
    return tail
  end
  error("lane regex: unknown node " .. tostring(kind))
end

function M.compile(tree)
  local prog = { n = 0 }
  local accept = new_state(prog, { t = "match" })
  prog.start = build(prog, tree, accept)
  return prog
end

local function in_ranges(ranges, cp)
  -- ranges are sorted; binary search over pairs
  local lo, hi = 1, #ranges / 2
  while lo <= hi do
    local mid = math.floor((lo + hi) / 2)
    local first, last = ranges[2 * mid - 1], ranges[2 * mid]
    if cp < first then
      hi = mid - 1
    elseif cp > last then
      lo = mid + 1
    else
      return true
    end
  end
  return false
end

-- Does the compiled prog match the whole of cps[1..n]?
function M.fullmatch(prog, cps, n)
  local mark = {}
  local generation = 0

  local function add(list, state, pos)
    if mark[state] == generation then
      return
    end
    mark[state] = generation
    local t = state.t
    if t == "split" then
      for _, out in ipairs(state.outs) do
        add(list, out, pos)
      end
    elseif t == "bol" then
      if pos == 0 then
        add(list, state.out, pos)
      end
    elseif t == "eol" then
      if pos == n then
        add(list, state.out, pos)
      end
    else
      list[#list + 1] = state
    end
  end

  generation = 1
  local current = {}
  add(current, prog.start, 0)
  for pos = 1, n do
    local cp = cps[pos]
    if cp >= 0xDC80 and cp <= 0xDCFF then
      return false  -- a byte of invalid UTF-8: RE2 matches no character there
    end
    local nextlist = {}
    generation = generation + 1
    for _, state in ipairs(current) do
      if state.t == "set" and in_ranges(state.ranges, cp) then
        add(nextlist, state.out, pos)
      end
    end
    current = nextlist
    if #current == 0 then
      return false
    end
  end
  for _, state in ipairs(current) do
    if state.t == "match" then
      return true
    end
  end
  return false
end

return M
