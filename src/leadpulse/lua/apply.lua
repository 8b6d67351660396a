-- apply.lua: apply scored events to one or more leads; one call per batch (or per hash slot).
-- KEYS[1]        due index   (sorted set: lead -> when decay takes it below its stage floor)
-- KEYS[2]        top index   (sorted set: lead -> rank of its score)
-- KEYS[5i-2..5i+2]  lead i: state (string), dedup set (event hash -> arrival ms),
--                replay log (string, JSON), traits (string, JSON), activity log (list, activity.lua)
-- ARGV[1]        model spec (msgpack, state.py builds it)
-- ARGV[2]        wall-clock now (ms): the dedup window runs on it (duplicates are redeliveries,
--                close in arrival time however old the event); every score decision uses event time
-- ARGV[2+i]      lead i: msgpack [lead_id, [[member, t, event_id, pos, evaluate, [rule, points, ...],
--                                             [rule, fit points, ...] | false, traits_json | false,
--                                             crm outcome | false, its reason | false,
--                                             fit traits known | false] ...]]
--                (rules by code)
-- Returns one string packed with cmsgpack (one bulk string is far cheaper to read than nested
-- replies, and it keeps every double exactly): a list with, per lead, [statuses, transitions, stage,
-- outcomes, traits]
--   traits: the lead's traits (JSON) only with transitions (lib.lua `with_traits`), else false
--   statuses: one character per event: o applied, d duplicate, e refused: the lead was erased
--   transitions: [seq, kind, from, to, crossed_at, event_id | false, threshold, explanation
--   (lib.lua `explain`, at crossed_at), and for a CRM move: outcome, reason, cool-down end]
--   outcomes: per CRM outcome applied (or replayed), the lead as it stood (lib.lua `outcome`)
local NOW = tonumber(ARGV[2])
-- Numbers handed to redis.call go through %.17g: pass integers as strings made once.
local NOW_S, DEDUP_S = ARGV[2], string.format('%d', DEDUP)
local results = {}

local function replay_log(key)
  local raw = redis.call('GET', key)
  return raw and stored(raw) or {}
end

for i = 1, #ARGV - 2 do
  local base = 5 * i - 2
  local skey, dkey, xkey, pkey = KEYS[base], KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local acts = {}
  local lead_ops = cmsgpack.unpack(ARGV[2 + i])
  local lead, ops = lead_ops[1], lead_ops[2]
  local st = load(skey, pkey, KEYS[base + 4])
  local statuses, out, outcomes = {}, {}, {}
  if st.erased then
    -- The lead's tombstone (erase.lua): refuse every event and write nothing.
    for _ = 1, #ops do statuses[#statuses + 1] = 'e' end
    ops = {}
  end
  local replays, logged, traits, added = nil, false, nil, false
  for _, op in ipairs(ops) do
    local member, t, event_id, pos, eval = op[1], op[2], op[3], op[4], op[5]
    if redis.call('ZADD', dkey, 'NX', NOW_S, member) == 0 then
      statuses[#statuses + 1] = 'd'
      -- The same message replayed (a crash before its offset was committed): hand back the
      -- transitions it caused so that they are published; a new message with a known id is
      -- a duplicate and yields nothing.
      replays = replays or replay_log(xkey)
      for _, rec in ipairs(replays) do
        if rec[1] == member and rec[2] == pos then
          for _, tr in ipairs(rec[3]) do out[#out + 1] = current(tr) end
          if rec[4] then outcomes[#outcomes + 1] = rec[4] end
        end
      end
    else
      added = true
      local first = #out + 1
      -- Decay took the lead below its floor before this event: record that first.
      if eval == 1 then catch_up(st, t, out) end
      if st.new or st.fs then
        if not st.fs or t < st.fs then st.fs = t end
      end
      -- A CRM outcome: the lead as it stood before it is taken first (its record), then it moves.
      local snap = nil
      if type(op[9]) == 'string' then snap = outcome(st, t, op[9], op[10], event_id ~= '' and event_id or false, out) end
      local matches, earned = op[6], {}
      for j = 1, #matches, 2 do
        local id = matches[j]
        local a = award(st, id, matches[j + 1], t)
        -- an idle rule's event is activity, even when capped; its sum is kept in tick units
        local v = idle_award(st, id, a, t)
        if v ~= 0 then add(st, id, v, t) end
        earned[#earned + 1], earned[#earned + 2] = id, a
      end
      if type(op[7]) == 'table' then
        -- fit is recomputed from all traits: it replaces every fit rule's points
        local fit = {}
        for j = 1, #op[7], 2 do fit[op[7][j]] = op[7][j + 1] end
        set_fit(st, fit)
      end
      if type(op[8]) == 'string' then traits = op[8] end
      if type(op[11]) == 'number' and op[11] ~= st.n then
        st.n = op[11]  -- the fit traits known (completeness), counted with the fit points
        moved(st)
      end
      if not st.c or t > st.c then
        st.c = t
        moved(st)
      end
      if eval == 1 then evaluate(st, st.c, event_id, out) end
      activity_event(acts, st, t, event_id, earned)
      activity_moves(acts, out, first)
      statuses[#statuses + 1] = 'o'
      if snap then outcomes[#outcomes + 1] = snap end
      if #out >= first or snap then
        local rec = {member, pos, {}, snap or false}
        for j = first, #out do rec[3][#rec[3] + 1] = out[j] end
        replays = replays or replay_log(xkey)
        replays[#replays + 1] = rec
        -- The replay window is the uncommitted tail of a partition: a few batches.
        while #replays > 8 do table.remove(replays, 1) end
        logged = true
      end
    end
  end
  if added then
    if not st.m or NOW < st.m then
      st.m = NOW
      st.dirty = true
    end
    redis.call('PEXPIRE', dkey, DEDUP_S)
  end
  -- The set holds what arrived within the window: trim it once its oldest entry has left.
  if st.m and st.m < NOW - DEDUP then
    redis.call('ZREMRANGEBYSCORE', dkey, '-inf', '(' .. string.format('%d', NOW - DEDUP))
    local oldest = redis.call('ZRANGE', dkey, 0, 0, 'WITHSCORES')
    st.m = oldest[2] and tonumber(oldest[2]) or nil
    st.dirty = true
  end
  if traits then
    redis.call('SET', pkey, traits)
    st.traits_set = true
  end
  -- An expiring lead is kept `ttl` after its last event: rewrite the state (with PX) on each.
  if added and TTL > 0 and st.s == 0 and st.lc == 0 then st.dirty = true end
  -- A replay comes within the dedup window, or the event counts as new anyway (with no window,
  -- nothing is ever a replay).
  if logged and DEDUP > 0 then redis.call('SET', xkey, cmsgpack.pack(replays), 'PX', DEDUP_S) end
  if st.c then reindex(st, KEYS[1], KEYS[2], lead) end
  activity_save(KEYS[base + 4], st, acts)
  save(st, NOW)
  results[#results + 1] = {table.concat(statuses), out, st.s, outcomes, with_traits(out, pkey, traits)}
end
return cmsgpack.pack(results)
