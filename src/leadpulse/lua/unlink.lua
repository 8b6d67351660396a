-- unlink.lua: remove a visitor's link to an erased lead, with anything the visitor logged, when
-- the link is to that lead (a lead's visitor set may name visitors another lead won: link.lua).
-- KEYS[1] anonymous log   KEYS[2] anonymous dedup set   KEYS[3] alias
-- ARGV[1] the erased lead id
-- Returns 1 when the link was that lead's (and is gone), else 0.
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  return 1
end
return 0
