-- erase.lua: erase a lead (right to erasure) and leave a tombstone in its state key: apply.lua
-- refuses the lead's events while it lasts, so a replay, a rescore from the topics or a merge
-- of one of its visitors cannot bring the lead back.
-- KEYS[1] due index   KEYS[2] top index   KEYS[3] state   KEYS[4] dedup set   KEYS[5] replay log
-- KEYS[6] traits      KEYS[7] outbox       KEYS[8] activity log
-- ARGV[1] lead id     ARGV[2] tombstone ttl (ms; 0: kept forever)
-- ARGV[3] the tombstone: a state of the erased format (layout.py), which lib.lua `load` knows
-- The caller then unlinks the lead's visitors (its set `…:n`; unlink.lua, each in the visitor's
-- own slot: on a cluster they live elsewhere) and deletes the set.
-- Returns 1 if the lead had a state (not already a tombstone), else 0.
local TOMBSTONE = ARGV[3]
local raw = redis.call('GET', KEYS[3])
local existed = (raw and raw ~= TOMBSTONE) and 1 or 0
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[3], TOMBSTONE, 'PX', ARGV[2])
else
  redis.call('SET', KEYS[3], TOMBSTONE)
end
return existed
