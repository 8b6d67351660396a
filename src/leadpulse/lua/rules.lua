-- rules.lua: the code of every rule id. Lead states store a small integer per rule instead of
-- its name; a code is given once and never reused, so states keep their meaning across model
-- versions (a removed rule keeps its code, a new rule gets the next one).
-- KEYS[1] code table (hash: rule id -> code, '#<code>' -> rule id, '#' -> last code given)
-- ARGV    rule id, the code it had (0: none), ...: a process that read the table before gives
--         its codes back, so a table lost with Redis's data comes back as its states knew it
-- Returns the whole table, flat: field, value, ...
local last = tonumber(redis.call('HGET', KEYS[1], '#') or '0')
local function give(name, code)
  redis.call('HSET', KEYS[1], name, code, '#' .. code, name)
  if code > last then
    last = code
    redis.call('HSET', KEYS[1], '#', last)
  end
end
local missing = {}
for i = 1, #ARGV, 2 do
  local name, had = ARGV[i], tonumber(ARGV[i + 1])
  if not redis.call('HGET', KEYS[1], name) then
    if had > 0 and not redis.call('HGET', KEYS[1], '#' .. had) then
      give(name, had)
    else
      missing[#missing + 1] = name
    end
  end
end
for _, name in ipairs(missing) do give(name, last + 1) end
return redis.call('HGETALL', KEYS[1])
