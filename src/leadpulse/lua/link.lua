-- link.lua: link an anonymous visitor to a lead (first link wins) and hand back its log.
-- Setting the alias first makes anon.lua redirect every later op to the lead, so the log read
-- here is complete; the caller applies it to the lead (deduplicated there), then retire.lua.
-- KEYS[1] anonymous log   KEYS[2] anonymous dedup set   KEYS[3] alias
-- ARGV[1] lead id         ARGV[2] alias ttl (ms; 0: kept forever)
-- Returns {lead the visitor belongs to, ops...}
local lead = redis.call('GET', KEYS[3])
if not lead then
  lead = ARGV[1]
  if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[3], lead, 'PX', ARGV[2])
  else
    redis.call('SET', KEYS[3], lead)
  end
end
local out = {lead}
for _, op in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do out[#out + 1] = op end
return out
