-- history.lua: a lead's activity log (activity.lua) read at an instant, for the board's lead
-- page: each event's points with what is left of them after decay (the rule's rate, LAM in
-- lib.lua: points · e^(−λ·age), before the category's weight and cap). Writes nothing.
-- KEYS[1] activity log   ARGV[1] model spec   ARGV[2] the instant (epoch ms)
-- Returns, packed with cmsgpack, newest first: {entry (activity.lua), {left, ...} | false}
-- (`left` per rule of an event's {rule, points, ...}, in its order; false for a move).
local at = tonumber(ARGV[2])
local out = {}
for i, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local e = cmsgpack.unpack(raw)
  local left = false
  if e[1] == 1 then
    left = {}
    local earned, age = e[5], math.max(0, at - e[2])
    for j = 1, #earned, 2 do
      local l = LAM[earned[j]] or 0
      left[#left + 1] = earned[j + 1] * math.exp(-l * age)
    end
  end
  out[i] = {e, left}
end
return cmsgpack.pack(out)
