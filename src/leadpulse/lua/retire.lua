-- retire.lua: the visitor's log now lives in its lead; drop it, keep the alias.
-- KEYS[1] anonymous log   KEYS[2] anonymous dedup set   KEYS[3] alias
return redis.call('DEL', KEYS[1], KEYS[2])
