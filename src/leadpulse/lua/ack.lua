-- ack.lua: the sweep's demotions for this lead were published; clear them and re-index.
-- KEYS[1] due index   KEYS[2] top index   KEYS[3] lead state hash
-- ARGV[1] model spec  ARGV[2] lead id     ARGV[3] seq of the last transition published
local st = load(KEYS[3])
if st.o then
  local pending = cjson.decode(st.o)
  if pending[#pending][1] == tonumber(ARGV[3]) then
    st.o = nil
    st.dirty.o = true
  end
end
reindex(st, KEYS[1], KEYS[2], ARGV[2])
save(st)
return st.s
