-- reeval.lua: decide one lead's stage again at the instant a new model became active (its
-- thresholds, grades, weights), without waiting for its next event (models.py, reeval.py).
-- Like sweep.lua, a decision waits in the outbox until ack.lua confirms it was published; the
-- lead is put in the due index at that instant meanwhile, so the sweep hands the same decision
-- back if the publish failed. Either way the lead is re-indexed under the new model: its due
-- time (when decay takes it below its stage's floor) depends on the floor.
-- KEYS[1] due index   KEYS[2] top index   KEYS[3] lead state   KEYS[4] lead outbox
-- KEYS[5] lead traits (its expiry follows the state's, lib.lua)   KEYS[6] activity log (its expiry follows the
-- traits', lib.lua `save`)
-- ARGV[1] model spec  ARGV[2] the instant the model became active (ms)   ARGV[3] lead id
-- ARGV[4] wall-clock now (ms)
-- Returns [transitions (pending or new, as apply.lua reports them), the lead's traits or false]
-- packed with cmsgpack.
-- A lead whose clock is past the instant was evaluated by an event under the new model: it is
-- only re-indexed. Evaluating again at the same instant decides nothing new (idempotent).
local at, lead = tonumber(ARGV[2]), ARGV[3]
local pending = redis.call('GET', KEYS[4])
if pending then
  local out = stored(pending)
  for i, tr in ipairs(out) do out[i] = current(tr) end
  return cmsgpack.pack({out, with_traits(out, KEYS[5])})
end
local st = load(KEYS[3], KEYS[5], KEYS[6])
if st.erased or not st.c then return cmsgpack.pack({{}, false}) end
local out = {}
if st.c <= at then evaluate(st, at, false, out) end
if #out > 0 then
  st.c = at
  moved(st)
  local px = outbox_px(st)
  if px then
    redis.call('SET', KEYS[4], cmsgpack.pack(out), 'PX', px)
  else
    redis.call('SET', KEYS[4], cmsgpack.pack(out))
  end
  redis.call('ZADD', KEYS[1], string.format('%d', at), lead)
  st.ix = bit.bor(st.ix, 1, 4)  -- in the due index, and stale: ack.lua re-indexes it
  st.u = at
  st.dirty = true
else
  reindex(st, KEYS[1], KEYS[2], lead, true)
end
save(st, tonumber(ARGV[4]))
return cmsgpack.pack({out, with_traits(out, KEYS[5])})
