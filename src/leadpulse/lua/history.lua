-- history.lua: a lead's activity log (activity.lua) read at an instant, for the board's lead
-- page: each event's points with what is left of them after decay (the rule's rate, LAM in
-- lib.lua: points · e^(−λ·age), before the category's weight and cap). Writes nothing.
-- An idle-decay rule's points lose the idle ticks of the lead's clock between the event and the
-- instant (lib.lua `idle_ticks`, docs/scoring.md §4), as its sum does.
-- KEYS[1] activity log   KEYS[2] the lead's state   ARGV[1] model spec   ARGV[2] the instant (epoch ms)
-- Returns, packed with cmsgpack, newest first: {entry (activity.lua), {left, ...} | false}
-- (`left` per rule of an event's {rule, points, ...}, in its order; false for a move).
local at = tonumber(ARGV[2])
local out = {}
local st = IDLE_R and load(KEYS[2])
for i, raw in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local e = cmsgpack.unpack(raw)
  local left = false
  if e[1] == 1 then
    left = {}
    local earned, age = e[5], math.max(0, at - e[2])
    for j = 1, #earned, 2 do
      local id = earned[j]
      if st and IDLE_R[id] then
        left[#left + 1] = earned[j + 1] * IDLE.keep ^ (idle_ticks(st, at) - idle_ticks(st, e[2]))
      else
        left[#left + 1] = earned[j + 1] * math.exp(-(LAM[id] or 0) * age)
      end
    end
  end
  out[i] = {e, left}
end
return cmsgpack.pack(out)
