-- carry.lua: copy one lead or visitor as it is from the old key space to the new one (rescore:
-- none of its events is retained, so the rebuild cannot derive it; spaces.carry_over). COPY
-- keeps each key's expiry. One call per lead or visitor: its keys share one hash tag, and a
-- lead's index shards hash to its slot, so this works on Redis Cluster.
-- KEYS[1..n]      its keys in the old space      KEYS[n+1..2n]  the same keys in the new space
-- KEYS[2n+1..2n+4]  a lead's old due and top index, then the new ones (a visitor has none)
-- ARGV[1] n       ARGV[2] the lead id ('' for a visitor)
-- Returns {keys copied, the lead a visitor is linked to | false}.
local n = tonumber(ARGV[1])
local copied = 0
for i = 1, n do
  copied = copied + redis.call('COPY', KEYS[i], KEYS[n + i], 'REPLACE')
end
if ARGV[2] ~= '' then
  for j = 1, 2 do
    local score = redis.call('ZSCORE', KEYS[2 * n + j], ARGV[2])
    if score then redis.call('ZADD', KEYS[2 * n + 2 + j], score, ARGV[2]) end
  end
  return {copied, false}
end
return {copied, redis.call('GET', KEYS[n + 3])}
