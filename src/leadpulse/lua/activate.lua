-- activate.lua: make a model version the active one, keeping every version ever active.
-- KEYS[1] activation log (hash: number -> JSON record, '#' -> the last number given)
-- KEYS[2] model texts (hash: version -> YAML)          KEYS[3] the active activation number
-- ARGV[1] version   ARGV[2] YAML   ARGV[3] JSON record without its number and supersession
-- ARGV[4] now (epoch ms)
-- A version names one content: the same version with another YAML is refused (change the
-- model's `version` with its content). Activating the version already active changes nothing.
-- Returns {number, 'activated' | 'unchanged'}, or an error reply.
local version, yaml, now = ARGV[1], ARGV[2], tonumber(ARGV[4])
local held = redis.call('HGET', KEYS[2], version)
if held and held ~= yaml then
  return redis.error_reply('CONFLICT version ' .. version .. ' was activated before with other content: change the model\'s version')
end
local current = redis.call('GET', KEYS[3])
if current then
  local rec = cjson.decode(redis.call('HGET', KEYS[1], current))
  if rec.version == version then return {tonumber(current), 'unchanged'} end
  rec.superseded_at = now
  redis.call('HSET', KEYS[1], current, cjson.encode(rec))
end
local n = redis.call('HINCRBY', KEYS[1], '#', 1)
local rec = cjson.decode(ARGV[3])
rec.activation = n
rec.activated_at = now
redis.call('HSET', KEYS[1], n, cjson.encode(rec))
redis.call('HSET', KEYS[2], version, yaml)
redis.call('SET', KEYS[3], n)
return {n, 'activated'}
