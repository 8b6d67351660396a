-- sweep.lua: demote one lead whose score has decayed below its stage's floor, at the instant
-- it crossed. The decision is kept in field `o` until ack.lua confirms it was published, so a
-- crash between deciding and publishing re-publishes the same handoff (same id) next sweep.
-- KEYS[1] due index   KEYS[2] top index   KEYS[3] lead state hash
-- ARGV[1] model spec  ARGV[2] now (ms)    ARGV[3] lead id
-- Returns {transitions} (pending or new); empty when nothing is due.
local now, lead = tonumber(ARGV[2]), ARGV[3]
local st = load(KEYS[3])
if st.o then
  return cjson.decode(st.o)
end
local out = {}
catch_up(st, now, out)
if #out > 0 then
  -- The lead stays in the due index at its old time until ack.lua re-indexes it.
  st.o = cjson.encode(out)
  st.dirty.o = true
else
  reindex(st, KEYS[1], KEYS[2], lead)
end
save(st)
return out
