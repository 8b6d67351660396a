-- read.lua: leads as they stand at an instant, for reads (GET /leads/{id}, /leads/top, the CLI,
-- the bench, calibration): the same explanation a transition carries (lib.lua `explain`).
-- Writes nothing.
-- KEYS[i]     lead i's state (on a cluster, the leads of one call share a slot)
-- ARGV[1]     model spec    ARGV[1+i]  the instant lead i is read at (epoch ms)
-- Returns, packed with cmsgpack, per lead: false (no state, or erased) or
--   [stage (a lifecycle stage after the model's), clock (epoch ms), explanation at its instant,
--    cool-down end (epoch ms) while it lasts at the instant | false]
local out = {}
for i, key in ipairs(KEYS) do
  local st = load(key)
  -- every stored state has a clock: an applied event sets it
  if st.erased or not st.c then
    out[i] = false
  else
    local at = tonumber(ARGV[1 + i])
    -- a cool-down is shown while it lasts at the instant read
    out[i] = {shown(st), st.c, explain(st, at), st.lc == 0 and st.cd and st.cd > at and st.cd or false}
  end
end
return cmsgpack.pack(out)
