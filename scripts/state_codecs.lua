-- state_codecs.lua: what a lead state's codec costs in Redis's Lua, for scripts/state_codecs.py.
-- ARGV[1]: a msgpack array of real packed states (layout.py, format 2); ARGV[2]: rounds;
-- ARGV[3]: mode. Each codec decodes to and encodes from the table `load` unpacks today (the
-- 23 fields, rules/fit/caps keyed by code), so the modes compare like with like:
--   none            the set-up alone (decode every state once, encode it in each codec)
--   msgpack-unpack  cmsgpack.unpack of the stored state (today's `load`)
--   msgpack-pack    cmsgpack.pack of the table (today's `save`)
--   flat-unpack     fields 10-12 stored flat ([code, S, t, code, ...]): unpack, rebuild the keyed tables
--   flat-pack       flatten fields 10-12, cmsgpack.pack
--   struct-unpack   a binary layout (struct): 11 header numbers, counts, rules (H d d), fit (H d),
--                   caps (H, then a total or a ledger); the lifecycle fields as a msgpack tail
--   struct-pack     the same, encoded
-- Returns {ns per state (wall clock inside the script), bytes msgpack, bytes flat, bytes struct}.
local raws = cmsgpack.unpack(ARGV[1])
local ROUNDS, MODE = tonumber(ARGV[2]), ARGV[3]

local NaN = 0 / 0
local function num(x) if x == false or x == nil then return NaN end return x end
local function opt(x) if x ~= x then return false end return x end

local function flat_enc(v)
  local w = {}
  for i = 1, #v do w[i] = v[i] end
  local r, f, k, n = {}, {}, {}, 0
  for code, rs in pairs(v[10]) do r[n + 1], r[n + 2], r[n + 3] = code, rs[1], rs[2]; n = n + 3 end
  n = 0
  for code, p in pairs(v[11]) do f[n + 1], f[n + 2] = code, p; n = n + 2 end
  n = 0
  for code, c in pairs(v[12]) do k[n + 1], k[n + 2] = code, c; n = n + 2 end
  w[10], w[11], w[12] = r, f, k
  return cmsgpack.pack(w)
end

local function flat_dec(raw)
  local v = cmsgpack.unpack(raw)
  local r, f, k, x = {}, {}, {}, v[10]
  for j = 1, #x, 3 do r[x[j]] = {x[j + 1], x[j + 2]} end
  x = v[11]
  for j = 1, #x, 2 do f[x[j]] = x[j + 1] end
  x = v[12]
  for j = 1, #x, 2 do k[x[j]] = x[j + 1] end
  v[10], v[11], v[12] = r, f, k
  return v
end

local HEAD = '<dddddddddddHHH'
local function struct_enc(v)
  local vals = {num(v[1]), num(v[2]), num(v[3]), num(v[4]), num(v[5]), num(v[6]), num(v[7]), num(v[8]),
                num(v[9]), num(v[13]), num(v[22]), 0, 0, 0}
  local fmt, n = {HEAD}, 14
  local nr, nf, nk = 0, 0, 0
  for code, rs in pairs(v[10]) do
    vals[n + 1], vals[n + 2], vals[n + 3] = code, rs[1], rs[2]; n = n + 3; nr = nr + 1; fmt[#fmt + 1] = 'Hdd'
  end
  for code, p in pairs(v[11]) do vals[n + 1], vals[n + 2] = code, p; n = n + 2; nf = nf + 1; fmt[#fmt + 1] = 'Hd' end
  for code, c in pairs(v[12]) do
    nk = nk + 1
    if type(c) == 'table' then
      vals[n + 1], vals[n + 2] = code, #c; n = n + 2
      for i = 1, #c do vals[n + i] = c[i] end
      n = n + #c
      fmt[#fmt + 1] = 'HH' .. string.rep('d', #c)
    else
      vals[n + 1], vals[n + 2], vals[n + 3] = code, 0, c; n = n + 3; fmt[#fmt + 1] = 'HHd'
    end
  end
  vals[12], vals[13], vals[14] = nr, nf, nk
  local tail = ''
  for i = 14, 23 do
    if i ~= 22 and v[i] then
      tail = cmsgpack.pack({v[14] or false, v[15] or false, v[16] or false, v[17] or false, v[18] or false,
                            v[19] or false, v[20] or false, v[21] or false, v[23] or false})
      break
    end
  end
  return struct.pack(table.concat(fmt), unpack(vals, 1, n)) .. tail
end

local function struct_dec(s)
  local h1, h2, h3, h4, h5, h6, h7, h8, h9, h13, h22, nr, nf, nk, pos = struct.unpack(HEAD, s)
  local r, f, k = {}, {}, {}
  local v = {h1, opt(h2), opt(h3), opt(h4), h5, h6, opt(h7), opt(h8), h9, r, f, k, opt(h13),
             false, false, false, false, false, false, false, false, opt(h22), false}
  local code, a, b
  for _ = 1, nr do code, a, b, pos = struct.unpack('<Hdd', s, pos); r[code] = {a, b} end
  for _ = 1, nf do code, a, pos = struct.unpack('<Hd', s, pos); f[code] = a end
  for _ = 1, nk do
    code, a, pos = struct.unpack('<HH', s, pos)
    if a == 0 then
      b, pos = struct.unpack('<d', s, pos)
      k[code] = b
    else
      local ledger = {struct.unpack('<' .. string.rep('d', a), s, pos)}
      pos = ledger[a + 1]
      ledger[a + 1] = nil
      k[code] = ledger
    end
  end
  if pos <= #s then
    local t = cmsgpack.unpack(string.sub(s, pos))
    for i = 1, 8 do v[13 + i] = t[i] end
    v[23] = t[9]
  end
  return v
end

-- false and nil are one value to a state (an absent field); everything else must match exactly
local function same(a, b)
  if a == nil then a = false end
  if b == nil then b = false end
  if type(a) ~= 'table' or type(b) ~= 'table' then return a == b end
  for key, x in pairs(a) do if not same(x, b[key]) then return false end end
  for key, x in pairs(b) do if not same(a[key], x) then return false end end
  return true
end

local decoded, flat, binary = {}, {}, {}
local bytes = {0, 0, 0}
for i, raw in ipairs(raws) do
  decoded[i] = cmsgpack.unpack(raw)
  flat[i], binary[i] = flat_enc(decoded[i]), struct_enc(decoded[i])
  bytes[1], bytes[2], bytes[3] = bytes[1] + #raw, bytes[2] + #flat[i], bytes[3] + #binary[i]
  if not same(flat_dec(flat[i]), decoded[i]) then return redis.error_reply('flat: state ' .. i .. ' differs') end
  if not same(struct_dec(binary[i]), decoded[i]) then return redis.error_reply('struct: state ' .. i .. ' differs') end
end

local run = ({
  ['none'] = function(_) end,
  ['msgpack-unpack'] = function(i) return cmsgpack.unpack(raws[i]) end,
  ['msgpack-pack'] = function(i) return cmsgpack.pack(decoded[i]) end,
  ['flat-unpack'] = function(i) return flat_dec(flat[i]) end,
  ['flat-pack'] = function(i) return flat_enc(decoded[i]) end,
  ['struct-unpack'] = function(i) return struct_dec(binary[i]) end,
  ['struct-pack'] = function(i) return struct_enc(decoded[i]) end,
})[MODE]
if not run then return redis.error_reply('unknown mode ' .. MODE) end
local t0 = redis.call('TIME')
for _ = 1, ROUNDS do
  for i = 1, #raws do run(i) end
end
local t1 = redis.call('TIME')
local us = (t1[1] - t0[1]) * 1e6 + (t1[2] - t0[2])
return {string.format('%.1f', us * 1000 / (ROUNDS * #raws)), bytes[1], bytes[2], bytes[3]}
