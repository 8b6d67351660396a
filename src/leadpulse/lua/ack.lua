-- ack.lua: the sweep's demotions for this lead were published; clear them and re-index.
-- KEYS[1] due index   KEYS[2] top index   KEYS[3] lead state   KEYS[4] lead outbox (lib.lua `stored`)
-- KEYS[5] lead traits (its expiry follows the state's, lib.lua)   KEYS[6] activity log (lib.lua `save`)
-- ARGV[1] model spec  ARGV[2] lead id     ARGV[3] seq of the last transition published
-- ARGV[4] wall-clock now (ms)
local pending = redis.call('GET', KEYS[4])
if pending then
  pending = stored(pending)
  if pending[#pending][1] == tonumber(ARGV[3]) then
    redis.call('DEL', KEYS[4])
  end
end
local st = load(KEYS[3], KEYS[5], KEYS[6])
if st.erased then return 0 end
reindex(st, KEYS[1], KEYS[2], ARGV[2], true)
save(st, tonumber(ARGV[4]))
return st.s
