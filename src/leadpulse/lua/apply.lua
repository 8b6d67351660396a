-- apply.lua: apply scored events to one or more leads; one call per batch (or per hash slot).
-- KEYS[1]        due index   (sorted set: lead -> when decay takes it below its stage floor)
-- KEYS[2]        top index   (sorted set: lead -> rank of its score)
-- KEYS[2+2i-1]   lead i state hash      KEYS[2+2i]  lead i dedup set (event hash -> arrival ms)
-- ARGV[1]        model spec (JSON, state.py builds it)
-- ARGV[2]        wall-clock now (ms): the dedup window runs on it (duplicates are redeliveries,
--                close in arrival time however old the event); every score decision uses event time
-- ARGV[2+i]      lead i: JSON [lead_id, [[member, t, event_id, pos, evaluate, [[rule, points]...],
--                                          fit | false, traits_json | false] ...]]
-- Returns one JSON text (one bulk string is far cheaper to read than nested replies): a list
-- with, per lead, [statuses, transitions, stage]
--   statuses: one character per event: o applied, d duplicate
--   transitions: [seq, kind, from, to, crossed_at, event_id | false, score, threshold, snapshot]
--   (an empty list may be encoded as {})
local NOW = tonumber(ARGV[2])
local results = {}
for i = 1, #ARGV - 2 do
  local skey, dkey = KEYS[2 + 2 * i - 1], KEYS[2 + 2 * i]
  local lead_ops = cjson.decode(ARGV[2 + i])
  local lead, ops = lead_ops[1], lead_ops[2]
  local st = load(skey)
  local statuses, out = {}, {}
  local replays = nil
  for _, op in ipairs(ops) do
    local member, t, event_id, pos, eval = op[1], op[2], op[3], op[4], op[5]
    if redis.call('ZSCORE', dkey, member) then
      statuses[#statuses + 1] = 'd'
      -- The same message replayed (a crash before its offset was committed): hand back the
      -- transitions it caused so that they are published; a new message with a known id is
      -- a duplicate and yields nothing.
      replays = replays or (st.x and cjson.decode(st.x)) or {}
      for _, rec in ipairs(replays) do
        if rec[1] == member and rec[2] == pos then
          for _, tr in ipairs(rec[3]) do out[#out + 1] = tr end
        end
      end
    else
      local first = #out + 1
      -- Decay took the lead below its floor before this event: record that first.
      if eval == 1 then catch_up(st, t, out) end
      for _, m in ipairs(op[6]) do
        local a = award(st, m[1], m[2], t)
        if a ~= 0 then add(st, m[1], a, t) end
      end
      if type(op[7]) == 'table' then
        for id, _ in pairs(st.f) do
          if op[7][id] == nil then
            st.f[id] = nil
            st.dirty['f:' .. id] = true
          end
        end
        for id, p in pairs(op[7]) do
          st.f[id] = p
          st.dirty['f:' .. id] = true
        end
      end
      if type(op[8]) == 'string' then
        st.p = op[8]
        st.dirty.p = true
      end
      redis.call('ZADD', dkey, NOW, member)
      if not st.c or t > st.c then
        st.c = t
        st.dirty.c = true
      end
      if eval == 1 then evaluate(st, st.c, event_id, out) end
      statuses[#statuses + 1] = 'o'
      if #out >= first then
        local rec = {member, pos, {}}
        for j = first, #out do rec[3][#rec[3] + 1] = out[j] end
        replays = replays or (st.x and cjson.decode(st.x)) or {}
        replays[#replays + 1] = rec
        -- The replay window is the uncommitted tail of a partition: a few batches.
        while #replays > 8 do table.remove(replays, 1) end
        st.x = cjson.encode(replays)
        st.dirty.x = true
      end
    end
  end
  redis.call('ZREMRANGEBYSCORE', dkey, '-inf', '(' .. string.format('%d', NOW - DEDUP))
  redis.call('PEXPIRE', dkey, DEDUP)
  if st.c then reindex(st, KEYS[1], KEYS[2], lead) end
  save(st)
  results[#results + 1] = {table.concat(statuses), out, st.s}
end
return cjson.encode(results)
