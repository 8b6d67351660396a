-- activity.lua: the lead's activity log (key `…:h`, keys.py), for the board's lead page
-- (board.py). Prepended after lib.lua to apply.lua and sweep.lua, which write it in the same
-- call that changes the lead, so the log and the state never disagree.
-- A list, newest first (in the order the lead was changed), capped at SPEC.activity entries
-- (0: no log), each packed with cmsgpack:
--   {1, t, event_id, score, {rule, points, ...}, clock}   an applied event: when it happened, the
--       points each rule awarded (after caps, before decay and category weights; by code), and the
--       lead's score at its clock (its latest event time) after it (lib.lua `score_at`)
--   {2, t, kind, from, to, score, threshold, event_id | false, ...}   each transition the event
--       caused (decay demotions due before it first), after it, as the script
--       reports it (apply.lua's header), its explanation replaced by its score; fields a newer
--       transition carries after the explanation (a lifecycle move's outcome, reason) follow as they are
-- It lives like the lead's traits: expiring `ttl` (+ up to ttl/8) after the last write while the
-- lead is in the first stage, kept otherwise (lib.lua `save` sets and clears its expiry with the
-- traits'; every script that saves a lead passes its key); erase.lua deletes it.
local ACTIVITY = SPEC.activity or 0
local ACTIVITY_S = string.format('%d', (SPEC.activity or 0) - 1)

-- Entries for one lead, oldest first: `activity_event` and `activity_moves` add to it.
local function activity_event(acts, st, t, event_id, earned)
  if ACTIVITY == 0 then return end
  acts[#acts + 1] = cmsgpack.pack({1, t, event_id, st.c and score_at(st, st.c) or 0, earned, st.c or t})
end

local function activity_moves(acts, out, first)
  if ACTIVITY == 0 then return end
  for j = first, #out do
    local tr = out[j]
    local e = {2, tr[5], tr[2], tr[3], tr[4], tr[8][1], tr[7], tr[6]}
    for x = 9, #tr do e[#e + 1] = tr[x] end
    acts[#acts + 1] = cmsgpack.pack(e)
  end
end

-- One LPUSH per lead and call (in chunks: unpack's arguments live on Lua's C stack), of the
-- newest entries the cap keeps; the trim only once the list is over its cap.
local function activity_save(key, st, acts)
  if ACTIVITY == 0 or #acts == 0 then return end
  local len, from = 0, math.max(1, #acts - ACTIVITY + 1)
  for i = from, #acts, 200 do
    len = redis.call('LPUSH', key, unpack(acts, i, math.min(i + 199, #acts)))
  end
  if len > ACTIVITY then redis.call('LTRIM', key, 0, ACTIVITY_S) end
  -- Its expiry is set by lib.lua's `save` with the traits' (a list this call created has none).
  if len <= #acts - from + 1 then st.anew = true end
end
