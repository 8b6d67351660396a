-- sweep.lua: demote one lead whose score has decayed below its stage's floor, at the instant
-- it crossed. The decision is kept in the outbox until ack.lua confirms it was published, so a
-- crash between deciding and publishing re-publishes the same handoff (same id) next sweep.
-- KEYS[1] due index   KEYS[2] top index   KEYS[3] lead state   KEYS[4] lead outbox (lib.lua `stored`)
-- KEYS[5] lead traits (its expiry follows the state's, lib.lua)   KEYS[6] activity log (activity.lua)
-- ARGV[1] model spec  ARGV[2] now (ms)    ARGV[3] lead id
-- Returns [transitions (pending or new, as apply.lua reports them), the lead's traits or false]
-- packed with cmsgpack;
-- none when nothing is due.
local now, lead = tonumber(ARGV[2]), ARGV[3]
local pending = redis.call('GET', KEYS[4])
if pending then
  local out = stored(pending)
  for i, tr in ipairs(out) do out[i] = current(tr) end
  return cmsgpack.pack({out, with_traits(out, KEYS[5])})
end
local st = load(KEYS[3], KEYS[5], KEYS[6])
if st.erased then  -- erased meanwhile: nothing to demote, nothing to index
  redis.call('ZREM', KEYS[1], lead)
  redis.call('ZREM', KEYS[2], lead)
  return cmsgpack.pack({{}, false})
end
local out = {}
catch_up(st, now, out)
if #out > 0 then
  local acts = {}
  activity_moves(acts, out, 1)
  activity_save(KEYS[6], st, acts)
  -- The lead stays in the due index at its old time until ack.lua re-indexes it.
  local px = outbox_px(st)
  if px then
    redis.call('SET', KEYS[4], cmsgpack.pack(out), 'PX', px)
  else
    redis.call('SET', KEYS[4], cmsgpack.pack(out))
  end
else
  reindex(st, KEYS[1], KEYS[2], lead, true)
end
save(st, now)
return cmsgpack.pack({out, with_traits(out, KEYS[5])})
