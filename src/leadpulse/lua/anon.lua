-- anon.lua: log scored events of an anonymous visitor until identify/alias links it to a lead.
-- KEYS[1] anonymous log (list of op JSON)   KEYS[2] anonymous dedup set   KEYS[3] alias
-- ARGV[1] ttl (ms) of an unlinked visitor   ARGV[2] most ops kept   ARGV[3] now (ms)
-- ARGV[4] dedup window (ms)                  ARGV[5..] op JSON
-- Returns the lead id when the visitor is already linked (nothing logged: the caller applies
-- the ops to the lead), else the number of ops logged.
local lead = redis.call('GET', KEYS[3])
if lead then return {'lead', lead} end
local logged = 0
for i = 5, #ARGV do
  local op = cjson.decode(ARGV[i])
  if redis.call('ZADD', KEYS[2], 'NX', ARGV[3], op[1]) == 1 then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    logged = logged + 1
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (tonumber(ARGV[3]) - tonumber(ARGV[4])))
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {'logged', logged}
