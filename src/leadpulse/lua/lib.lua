-- lib.lua: shared by apply.lua, sweep.lua and ack.lua; prepended to them when they are loaded
-- (Redis has no `require`). Holds the lead state, the forward-decay arithmetic and stage decisions.
--
-- The lead state is one string (key `…:v`, keys.py): a cmsgpack array, read with one GET and
-- written with one SET, only when something changed. Parsing a hash of decimal strings cost
-- more than the scoring itself, and `%.17g` is slow in Redis's Lua; msgpack keeps every double
-- exactly (whole numbers become integers, float32 only where that is exact). Rules are kept by
-- code (a small integer, rules.lua) and times as offsets from a base B of the lead (times in ms
-- were most of the bytes). The tables unpack as the scripts use them: no conversion per rule.
-- The layout, field by field, and its format numbers belong to layout.py (PackedState): the
-- spec passes the numbers in, and tests/test_state.py checks every field `save` writes there.
-- `load` below names the fields. An erased lead's key holds the tombstone (format
-- SPEC.erased, erase.lua): `load` marks the state `erased`; the scripts refuse to score into
-- it and `save` never writes over it.
-- B moves up to the clock when offsets from it would outgrow 32 bits (every ~50 days of
-- activity). Kept apart (read rarely, and too big to unpack on every event): the traits `…:p`
-- (written by apply.lua, read by the worker), the replay log `…:x` and the sweep's outbox `…:o`.
-- The spec (ARGV[1], msgpack, state.py) is indexed by rule code. Transitions and reads name
-- rules and categories by code and index too (`explain`): explanation.py puts the names back.
--
-- Expiry (spec `ttl`, ms; 0 = keep forever): a lead in the first stage expires `ttl` after its
-- last write, since its state is then written with PX (no extra command). Its traits `…:p` must
-- not outlive that by much nor die first: they get `ttl + ttl/8` with one PEXPIRE, repeated only
-- when the state's deadline passes the traits' (`e`), i.e. at most once per ttl/8 of activity.
-- A lead above the first stage never expires (PERSIST once when it gets there). The dedup set
-- and replay log expire on their own, `dedup_window` after the last arrival (state.py requires
-- ttl >= dedup_window); the outbox is written with PX like the state.
local SPEC = cmsgpack.unpack(ARGV[1])
local LAM, CAT, CATS, CAPS, STAGES = SPEC.lam, SPEC.cat, SPEC.cats, SPEC.caps, SPEC.stages
local NSTAGE, HYST, DEDUP, GRADES = #STAGES, SPEC.hyst, SPEC.dedup, SPEC.grades
local NCAT = #CATS
-- e^709 overflows a double; move the landmark long before any exponent gets there.
local RENORM = 600
local FORMAT, ERASED = SPEC.format, SPEC.erased
local IN_DUE, IN_TOP, STALE = 1, 2, 4
local REBASE = 4294967296
local TTL = SPEC.ttl or 0
-- The model's lifecycle section (lifecycle.py `spec`): lifecycle stages, each CRM outcome's
-- action, the sales SLA (ms; 0: none) and which model stages hand off.
local LC = SPEC.lc or {n = 0, closed = {}, outcomes = {}, sla = 0, ho = {}}
-- the SQL stage, whose handoff starts the sales SLA: the top model stage
local SQL = NSTAGE - 1
-- transition kinds as the state stores the last handoff's (a code, not the name)
local KINDS = {'promoted', 'demoted', 'advanced', 'closed', 'recycled', 'sla_overdue'}
local KIND_CODE = {}
for i, kind in ipairs(KINDS) do KIND_CODE[kind] = i end
local TTL_S, SLACK_S = math.floor(TTL / 1000), math.floor(TTL / 8000)
-- the lead whose rules are in code order in R_CODES/R_SUMS and F_CODES/F_POINTS (`codes`)
local R_CODES, R_SUMS, F_CODES, F_POINTS, NR, NF, ORDERED = {}, {}, {}, {}, 0, 0, nil

-- `pkey`: the lead's traits key, whose expiry follows the state's (above); `akey`: its activity
-- log (activity.lua), whose expiry follows the traits' (`save`), where the script has it.
local function load(key, pkey, akey)
  local raw = redis.call('GET', key)
  local st
  if raw then
    local v = cmsgpack.unpack(raw)
    if v[1] == ERASED then return {key = key, erased = true, s = 0} end
    if v[1] ~= FORMAT then error('lead state ' .. key .. ': unknown format ' .. tostring(v[1])) end
    local B = v[2] or nil
    local c = v[3] and B + v[3] or nil
    st = {key = key, pkey = pkey, akey = akey, B = B, c = c, L = v[4] and B + v[4] or nil, s = v[5], q = v[6],
          u = v[7] and c + v[7] or nil, m = v[8] and v[8] * 1000 or nil, ix = v[9], r = v[10], f = v[11],
          k = v[12], e = v[13] or nil, n = v[22] or nil, i = v[23] or nil}
    -- The lifecycle (absent from states written before it, and empty fields at the end are left
    -- out; times are offsets from B, absolute here): the first event, the promotion time per
    -- model stage, the last handoff {seq, kind, at}, the lifecycle stage (0: none, the score
    -- decides), the cool-down's end, the SQL start whose SLA was reported overdue, the latest
    -- recycle, the latest advance per lifecycle stage. Then fit_known (n) and the idle clock (i)
    -- (docs/scoring.md §4-5), after them so that neither feature moves the other's fields.
    st.fs = v[14] and B + v[14] or nil
    st.pt = {}
    if v[15] then
      for i, x in pairs(v[15]) do
        if x then st.pt[i] = B + x end
      end
    end
    st.lh = v[16] and {v[16][1], KINDS[v[16][2]], B + v[16][3]} or nil
    st.lc = v[17] or 0
    st.cd = v[18] and B + v[18] or nil
    st.so = v[19] and B + v[19] or nil
    st.lr = v[20] and B + v[20] or nil
    st.la = {}
    if v[21] then
      for j, x in pairs(v[21]) do
        if x then st.la[j] = B + x end
      end
    end
  else
    st = {key = key, pkey = pkey, akey = akey, s = 0, q = 0, ix = 0, r = {}, f = {}, k = {}, lc = 0, pt = {}, la = {}, new = true}
  end
  if st.lc > LC.n then
    st.lc = LC.n
    st.dirty, st.moved = true, true
  end
  -- A model with fewer stages than the lead was in: the lead is in the top stage left.
  if st.s > NSTAGE - 1 then
    st.s = NSTAGE - 1
    st.dirty, st.moved = true, true
  end
  return st
end

-- Something the score, the stage or the due time depends on changed (the indexes follow it).
local function moved(st)
  st.dirty, st.moved, st.memo_t = true, true, nil
end

-- t as an offset from the lead's base (its first time, when it has none yet).
local function rel(st, t)
  if not st.B then st.B = t end
  return t - st.B
end

-- Idle decay (docs/scoring.md §4, Idle decay; SPEC.idle, semantics.py). The awards of idle rules
-- lose nothing while the lead is active; each `every` ms of idleness (no event matching an idle
-- rule) takes `1 - keep` of them, and losses stay lost. Ticks K(t): losses since the lead's first
-- activity. A rule's idle sum S = Σ p·keep^-K(tᵢ), so its points at t are S·keep^K(t): one power
-- per read, as the continuous decay's S·e^{-λ(t-L)}. The lead's idle clock st.i, flat, absolute
-- epoch ms: {A latest activity, K(A), F oldest activity kept, a₁, e₁, a₂, e₂, ...}: the idle gaps
-- (activity a, next activity e, at least one tick apart) that a late event can still land in.
-- Activity that arrives late does not change the clock (the losses it would have prevented
-- stay); its own award takes exactly the ticks the clock has after its time. Activity older than
-- the oldest kept extends the clock back (F and a gap), as if it had arrived first.
local IDLE = SPEC.idle
local IDLE_R = IDLE and IDLE.rules
local IDLE_N = IDLE and IDLE.every
-- keep^-K overflows past ~4000 ticks of 15 %: rescale the sums long before
local IDLE_RENORM = 256

-- The ticks between t (< A) and the lead's latest activity A.
local function idle_after(I, t)
  local n = 0
  local first = I[3]
  if t < first then n = math.floor((first - t) / IDLE_N) end
  for j = 4, #I, 2 do
    local a, e = I[j], I[j + 1]
    if e > t then
      if t <= a then n = n + math.floor((e - a) / IDLE_N) else n = n + math.floor((e - t) / IDLE_N) end
    end
  end
  return n
end

-- K(t): the ticks up to t
local function idle_ticks(st, t)
  local I = st.i
  if not I then return 0 end
  if t >= I[1] then return I[2] + math.floor((t - I[1]) / IDLE_N) end
  return I[2] - idle_after(I, t)
end

-- An event matched idle rule `id` at t: move the idle clock when t is the latest activity, and
-- return the award `a` in the rule's sum's units (keep^-K(t)). Other rules: `a` as it is. A
-- moved clock moves the lead (its due time), even when the award is 0 or t is behind its clock.
local function idle_award(st, id, a, t)
  if not (IDLE_R and IDLE_R[id]) then return a end
  local I = st.i
  if not I then
    I = {t, 0, t}
    st.i = I
    moved(st)
  elseif t > I[1] then
    local n = math.floor((t - I[1]) / IDLE_N)
    if n > 0 then
      I[#I + 1], I[#I + 2] = I[1], t
      I[2] = I[2] + n
    end
    I[1] = t
    -- Gaps no late event can reach any more (older than `horizon` behind it) are dropped; the
    -- oldest activity kept moves up to the end of the last one dropped.
    local drop = 0
    for j = 4, #I, 2 do
      if (IDLE.horizon >= 0 and I[j + 1] < t - IDLE.horizon) or (#I - 3) / 2 - drop > IDLE.gaps then
        drop = drop + 1
        I[3] = I[j + 1]
      else
        break
      end
    end
    if drop > 0 then
      for j = 4, #I do I[j] = I[j + 2 * drop] end
    end
    if I[2] >= IDLE_RENORM then
      local f = IDLE.keep ^ I[2]
      for rid, rs in pairs(st.r) do
        if IDLE_R[rid] then rs[1] = rs[1] * f end
      end
      I[2] = 0
    end
    moved(st)
  elseif t < I[3] then
    -- Older than every activity kept: the history reaches back to it (K of the later ones is
    -- unchanged: the ticks come before them all), unless that is one gap more than is kept.
    local first = I[3]
    if math.floor((first - t) / IDLE_N) == 0 then
      I[3] = t
      moved(st)
    elseif (#I - 3) / 2 < IDLE.gaps then
      table.insert(I, 4, first)
      table.insert(I, 4, t)
      I[3] = t
      moved(st)
    end
  end
  if a == 0 then return 0 end
  return a * IDLE.keep ^ -idle_ticks(st, t)
end

-- What an idle sum is worth at t (category_points): one power per read.
local function idle_factor(st, t)
  return IDLE.keep ^ idle_ticks(st, t)
end

-- `now`: the wall clock (epoch ms, the worker's), for the traits' expiry
local function save(st, now)
  if st.erased or not st.dirty then return end
  local B, c = st.B, st.c
  if c and not B then
    B = c
    st.B = B
  elseif c and c - B >= REBASE then
    local shift = c - B
    for _, rs in pairs(st.r) do rs[2] = rs[2] - shift end
    for _, ledger in pairs(st.k) do
      if type(ledger) == 'table' then
        for x = 1, #ledger, 2 do ledger[x] = ledger[x] - shift end
      end
    end
    B = c
    st.B = B
  end
  local expire = TTL > 0 and st.s == 0 and st.lc == 0
  if expire then
    local now_s = math.floor(now / 1000)
    -- `traits_set`: apply.lua wrote the traits in this call (a SET clears their expiry)
    -- The activity log (`akey`) shares the traits' deadline: one PEXPIRE each per ttl/8 of
    -- activity instead of one per write; a log this call created (`anew`) has none yet.
    if st.traits_set or not st.e or st.e < now_s + TTL_S then
      redis.call('PEXPIRE', st.pkey, TTL + SLACK_S * 1000)
      if st.akey then redis.call('PEXPIRE', st.akey, TTL + SLACK_S * 1000) end
      st.e = now_s + TTL_S + SLACK_S
    elseif st.anew then
      redis.call('PEXPIRE', st.akey, TTL + SLACK_S * 1000)
    end
  elseif st.e then
    redis.call('PERSIST', st.pkey)
    if st.akey then redis.call('PERSIST', st.akey) end
    st.e = nil
  end
  -- fields 14-21 the lifecycle's, 22-23 fit_known and the idle clock (load); empty ones at the end
  -- left out. One constructor for all 23 (the table is sized once; appending rehashed it twice).
  local fs, pt, lh, lc, cd, so, lr, la = false, false, false, false, false, false, false, false
  if B then  -- the lifecycle (load): every lead with a clock has a base
    if next(st.pt) then
      pt = {}
      for i = 1, NSTAGE do pt[i] = st.pt[i] and st.pt[i] - B or false end
    end
    lh = st.lh and {st.lh[1], KIND_CODE[st.lh[2]], st.lh[3] - B} or false
    if next(st.la) then
      la = {}
      for j = 1, LC.n do la[j] = st.la[j] and st.la[j] - B or false end
    end
    fs, lc = st.fs and st.fs - B or false, st.lc > 0 and st.lc or false
    cd, so, lr = st.cd and st.cd - B or false, st.so and st.so - B or false, st.lr and st.lr - B or false
  end
  local state = {FORMAT, B or false, c and c - B or false, st.L and st.L - B or false,
    st.s, st.q, st.u and st.u - c or false, st.m and math.floor(st.m / 1000) or false, st.ix, st.r, st.f, st.k,
    st.e or false, fs, pt, lh, lc, cd, so, lr, la, st.n or false, st.i or false}
  local n = 23
  while n > 13 and state[n] == false do
    state[n] = nil
    n = n - 1
  end
  local packed = cmsgpack.pack(state)
  if expire then
    redis.call('SET', st.key, packed, 'PX', TTL)
  else
    redis.call('SET', st.key, packed)
  end
  st.dirty = false
end

-- How long the outbox (sweep.lua) may live: as long as the state; nil when that is forever.
local function outbox_px(st)
  if TTL > 0 and st.s == 0 and st.lc == 0 then return TTL end
  return nil
end

local function renormalise(st, landmark)
  for id, rs in pairs(st.r) do
    local l = LAM[id]
    if l and l > 0 then
      rs[1] = rs[1] * math.exp(-l * (landmark - st.L))
    end
  end
  st.L = landmark
  moved(st)
end

local function add(st, id, p, t)
  local l = LAM[id] or 0
  if not st.L then
    st.L = t
  elseif SPEC.lmax * (t - st.L) > RENORM then
    renormalise(st, t)
  end
  local v = p
  if l > 0 then
    v = p * math.exp(l * (t - st.L))
  end
  local tr = rel(st, t)
  local rs = st.r[id]
  if rs then
    rs[1] = rs[1] + v
    if tr > rs[2] then rs[2] = tr end
  else
    st.r[id] = {v, tr}
    if ORDERED == st then ORDERED = nil end
  end
  moved(st)
end

-- Points a capped rule may still award at t. A window cap counts awards in (t - window, t];
-- `once` is a lifetime cap (window 0) equal to the rule's points.
local function award(st, id, p, t)
  local cap = CAPS[id]
  if not cap then return p end
  local limit, window = cap[1], cap[2]
  local ledger = st.k[id]
  if window == 0 then
    -- A ledger written under a window cap (the model changed) counts as what it awarded.
    local used = 0
    if type(ledger) == 'number' then
      used = ledger
    elseif ledger then
      for j = 2, #ledger, 2 do used = used + ledger[j] end
    end
    local a = math.min(p, limit - used)
    if a <= 0 then return 0 end
    st.k[id] = used + a
    st.dirty = true
    return a
  end
  -- Ledger times are offsets from the lead's base: the window arithmetic is the same.
  t = rel(st, t)
  local entries = type(ledger) == 'table' and ledger or {}  -- a lifetime total starts afresh
  local n, newest = #entries, t
  for j = 1, n, 2 do
    if entries[j] > newest then newest = entries[j] end
  end
  -- Awards this far behind the rule's newest one only matter to events that late; forgetting
  -- them bounds the ledger (a cap is exact for events up to `dedup_window` out of order).
  -- Only this rule's own awards move the horizon, so other sources' timing cannot change it.
  -- The ledger is compacted in place.
  local horizon, used, kept = newest - DEDUP - window, 0, 0
  for j = 1, n, 2 do
    local tt, pp = entries[j], entries[j + 1]
    if tt > horizon then
      entries[kept + 1], entries[kept + 2] = tt, pp
      kept = kept + 2
      if tt > t - window and tt <= t then used = used + pp end
    end
  end
  for j = n, kept + 1, -1 do entries[j] = nil end
  local a = math.min(p, limit - used)
  if a > 0 then
    entries[kept + 1], entries[kept + 2] = t, a
  else
    a = 0
  end
  st.k[id] = entries
  st.dirty = true
  return a
end

-- The lead's rules in code order: R_CODES[1..NR] with their sums (st.r's {S, t - B}) in
-- R_SUMS, F_CODES[1..NF] with their fit points in F_POINTS; built by the first `codes(st)` of a
-- lead (the scripts take one lead at a time) and kept until the lead gets a rule it had no points
-- of (ORDERED = nil). Sums add their terms in this order, never in `pairs` order: that depends
-- on how the table was built (unpacked, or grown by this call), and a floating-point sum on the
-- order of its terms. So the same state gives the same bits in the script that decides and in a
-- read that unpacks it later. Reused arrays: no garbage per lead.
local function in_order(tbl, codes, values)
  local n = 0
  for id, v in pairs(tbl) do
    n = n + 1
    local j = n - 1
    while j > 0 and codes[j] > id do
      codes[j + 1], values[j + 1] = codes[j], values[j]
      j = j - 1
    end
    codes[j + 1], values[j + 1] = id, v
  end
  return n
end

local function codes(st)
  if ORDERED ~= st then
    NR, NF, ORDERED = in_order(st.r, R_CODES, R_SUMS), in_order(st.f, F_CODES, F_POINTS), st
  end
end

-- Replace the lead's fit points (apply.lua: fit is recomputed from all traits).
local function set_fit(st, fit)
  st.f = fit
  if ORDERED == st then ORDERED = nil end
  moved(st)
end

-- Each category's points at t, before its weight and cap (docs/scoring.md §1): category ->
-- points. `rules`, when given (explain), receives each rule's part, flat:
-- rule, category, points at t, latest occurrence - B | false (fit), ...
-- The sums go to one table reused by every call (each caller is done with them before the next
-- call), the exponentials of the rates to two short arrays: no garbage per score.
local SUMS, DECAY_L, DECAY_E = {}, {}, {}
local function category_points(st, t, rules)
  local sums, nd, idle = SUMS, 0, nil
  for c = 1, NCAT do sums[c] = nil end
  codes(st)
  for i = 1, NR do
    local id = R_CODES[i]
    local c = CAT[id]
    if c then
      local rs = R_SUMS[i]
      local l = LAM[id]
      local v = rs[1]
      if l > 0 then
        -- rules share a few decay rates: one exponential per rate (the same number each time)
        local e
        for j = 1, nd do
          if DECAY_L[j] == l then e = DECAY_E[j] break end
        end
        if not e then
          e = math.exp(-l * (t - st.L))
          nd = nd + 1
          DECAY_L[nd], DECAY_E[nd] = l, e
        end
        v = v * e
      elseif IDLE_R and IDLE_R[id] then
        idle = idle or idle_factor(st, t)
        v = v * idle
      end
      sums[c] = (sums[c] or 0) + v
      if rules then
        local n = #rules
        rules[n + 1], rules[n + 2], rules[n + 3], rules[n + 4] = id, c, v, rs[2]
      end
    end
  end
  for i = 1, NF do
    local id = F_CODES[i]
    local c = CAT[id]
    if c then
      local p = F_POINTS[i]
      sums[c] = (sums[c] or 0) + p
      if rules then
        local n = #rules
        rules[n + 1], rules[n + 2], rules[n + 3], rules[n + 4] = id, c, p, false
      end
    end
  end
  return sums
end

-- The score from the categories' points: each weighted, then capped from above, added in the
-- order of the categories. `shares`, when given (explain), receives each category's part.
local function total(sums, shares)
  local score = 0
  for c = 1, NCAT do
    local v = sums[c]
    if v then
      local cs = CATS[c]
      v = v * cs[1]
      if cs[2] >= 0 and v > cs[2] then v = cs[2] end
      score = score + v
      if shares then shares[c] = v end
    end
  end
  return score
end

-- The score at the lead's clock is asked for by evaluate, next_due and the top index in turn:
-- kept (st.memo at st.memo_t) until the lead moves. `explain` adds up the same way: its score
-- is this one, to the last bit.
local function score_at(st, t)
  if t == st.memo_t then return st.memo end
  local score = total(category_points(st, t))
  if t == st.c then st.memo_t, st.memo = t, score end
  return score
end

-- The raw fit points (no weight, no cap), which the grade is taken from.
local function fit_points(st)
  local fit = 0
  codes(st)
  for i = 1, NF do
    if CAT[F_CODES[i]] then fit = fit + F_POINTS[i] end
  end
  return fit
end

-- The grade of `fit` fit points, as a rank: 3 = A ... 0 = D.
local function grade(fit)
  for i = 1, 3 do
    if fit >= GRADES[i] then return 4 - i end
  end
  return 0
end

-- Unknown fit, completeness and stage conditions (docs/scoring.md §5; semantics.py).
-- st.n: how many of the model's fit traits (SPEC.nfit: those any fit rule reads) the lead's
-- traits hold, counted by the worker with the fit points (engine.Scorer.known).
local NFIT, UNKNOWN_BELOW, INTENT = SPEC.nfit or 0, SPEC.unknown_below or 0, SPEC.intent or {}
local GRADE_U = -1

local function completeness(st)
  if NFIT == 0 then return 1 end
  return math.min(1, (st.n or 0) / NFIT)
end

-- The grade rank of the lead: 3 = A ... 0 = D, or GRADE_U when it would be D while less than
-- `unknown_below` of its fit traits are known and no fit rule counts against it.
local function fit_grade(st, fit)
  local g = grade(fit)
  if g > 0 or completeness(st) >= UNKNOWN_BELOW then return g end
  -- fit points from before the count was kept (st.n): too little known is not known; keep D
  if not st.n and NF > 0 then return g end
  for i = 1, NF do
    if F_POINTS[i] < 0 and CAT[F_CODES[i]] then return g end
  end
  return GRADE_U
end

-- The stage's fit conditions, which hold to enter it and to stay: min_grade (a U lead meets it:
-- unknown is not bad fit) and min_completeness.
local function fit_holds(st, sp, g)
  if g ~= GRADE_U and g < sp[2] then return false end
  return not sp[3] or completeness(st) >= sp[3]
end

-- The stage's engagement conditions, which hold to enter it (the score floor keeps the lead
-- there): min_points (the breakdown of the listed categories at t adds up to it) and min_intent
-- (rules marked intent the lead has points from).
local function enters(st, sp, t)
  local mp, mi = sp[4], sp[5]
  if mp then
    local shares = {}
    total(category_points(st, t), shares)
    local got = 0
    for j = 2, #mp do got = got + (shares[mp[j]] or 0) end
    if got < mp[1] then return false end
  end
  if mi then
    local n = 0
    codes(st)
    for i = 1, NR do
      if INTENT[R_CODES[i]] and R_SUMS[i][1] > 0 then n = n + 1 end
    end
    if n < mi then return false end
  end
  return true
end

-- Why the lead scores what it does at t (docs/scoring.md §1), for a read (read.lua) or a
-- transition: only they pay for it. Each category's points weighted and capped (the breakdown,
-- added up as score_at adds it: the same score), each rule's contribution (its points at t scaled
-- by its category's breakdown / points, 0 when those are 0) with its latest occurrence, and the
-- raw fit points with their grade. Lists are flat (fewer tables to pack):
--   {score, fit points, grade rank (-1: U), {category, breakdown, ...},
--    {rule, category, contribution, latest occurrence (epoch ms) | false (fit), ...}, completeness}
-- in the order of categories and rule codes. Replies and logs carry it packed with cmsgpack,
-- which keeps every double exactly (JSON would need `%.17g`, slow here; cjson keeps 14 digits).
local function explain(st, t)
  local rules, shares = {}, {}
  local sums = category_points(st, t, rules)
  local score = total(sums, shares)
  local breakdown, scale = {}, {}
  for c = 1, NCAT do
    local w = shares[c]
    if w then
      breakdown[#breakdown + 1] = c
      breakdown[#breakdown + 1] = w
      if sums[c] ~= 0 then scale[c] = w / sums[c] else scale[c] = 0 end
    end
  end
  for i = 1, #rules, 4 do
    rules[i + 2] = rules[i + 2] * scale[rules[i + 1]]
    if rules[i + 3] then rules[i + 3] = st.B + rules[i + 3] end
  end
  local fit = fit_points(st)
  return {score, fit, fit_grade(st, fit), breakdown, rules, completeness(st)}
end

-- A transition as an older version stored it in a replay log or an outbox, with the lead's
-- sums instead of their explanation ([seq, kind, from, to, crossed_at, event, score, threshold,
-- snapshot], times and numbers as text; snapshot: L, s, c, then `r:<rule>` "S t" and
-- `f:<rule>` points), explained from those sums at crossed_at; a current one as it is.
local function current(tr)
  local snap = tr[9]
  if type(snap) ~= 'table' then return tr end
  local old = {B = 0, r = {}, f = {}}
  for i = 1, #snap, 2 do
    local k, v = snap[i], snap[i + 1]
    local kind, code = k:sub(1, 2), tonumber(k:sub(3))
    if k == 'L' then
      old.L = tonumber(v)
    elseif kind == 'r:' then
      local s, last = v:match('^(%S+) (%S+)$')
      old.r[code] = {tonumber(s), tonumber(last)}
    elseif kind == 'f:' then
      old.f[code] = tonumber(v)
    end
  end
  local at = tonumber(tr[5])
  return {tr[1], tr[2], tr[3], tr[4], at, tr[6], tonumber(tr[8]), explain(old, at)}
end

-- Transitions as a replay log (`…:x`) or an outbox (`…:o`) stores them: packed with cmsgpack,
-- or JSON (its first byte `[`) where an older version wrote them (they last up to dedup_window).
local function stored(raw)
  if raw:byte(1) == 91 then return cjson.decode(raw) end
  return cmsgpack.unpack(raw)
end

-- The stage index reads and transitions show: a lifecycle stage counts after the model's.
local function shown(st)
  if st.lc > 0 then return NSTAGE + st.lc - 1 end
  return st.s
end

-- A transition was decided: remember the last one published on leads.handoff (outcome records
-- name it). Score moves publish when the stage entered (promoted) or left (demoted) hands off;
-- lifecycle and SLA moves always do.
local function noted(st, tr)
  local kind, ho = tr[2], true
  if kind == 'promoted' then ho = LC.ho[tr[4] + 1] elseif kind == 'demoted' then ho = LC.ho[tr[3] + 1] end
  if ho then st.lh = {tr[1], kind, tr[5]} end
end

-- Decide the stage at t. Promotion: the highest stage whose min_score, fit conditions and
-- engagement conditions hold. Demotion: leave every stage whose floor (min_score - hysteresis)
-- or fit conditions fail (engagement conditions are the way in, not a reason to leave).
-- Neither while the CRM holds the lead (a lifecycle stage) or a recycle's cool-down lasts.
local function evaluate(st, t, trigger, out)
  if st.lc > 0 or (st.cd and t < st.cd) then return end
  local score = score_at(st, t)
  local g = fit_grade(st, fit_points(st))
  local cur, best, kind = st.s, st.s, nil
  for i = NSTAGE - 1, cur + 1, -1 do
    local sp = STAGES[i + 1]
    if score >= sp[1] and fit_holds(st, sp, g) and enters(st, sp, t) then
      best = i
      break
    end
  end
  if best > cur then
    kind = 'promoted'
  else
    while best > 0 do
      local sp = STAGES[best + 1]
      if score < sp[1] - HYST or not fit_holds(st, sp, g) then best = best - 1 else break end
    end
    if best < cur then kind = 'demoted' end
  end
  if not kind then return end
  local threshold
  if kind == 'promoted' then threshold = STAGES[best + 1][1] else threshold = STAGES[cur + 1][1] - HYST end
  st.q = st.q + 1
  st.s = best
  moved(st)
  if kind == 'promoted' then
    for i = cur + 1, best do st.pt[i + 1] = t end
  end
  -- the explanation's score is `score`, computed the same way
  local tr = {st.q, kind, cur, best, t, trigger, threshold, explain(st, t)}
  out[#out + 1] = tr
  noted(st, tr)
end

-- The first t after t0 with f(t) < floor, on a doubling grid refined by bisection to the
-- millisecond; nil when none within 64 of the slowest half-lives. Also returns the last
-- probe of the grid. `monotone`: f never increases, so the crossing is unique and is found
-- by interpolation (Illinois) in a few probes, bisection finishing what that leaves.
local function first_below(f, t0, floor, monotone)
  local lo, hi, d = t0, nil, math.max(1, math.floor(SPEC.hmin / 16))
  local span = SPEC.hmax * 64
  local last = t0
  local fhi
  while d <= span do
    local t = t0 + d
    last = t
    fhi = f(t) - floor
    if fhi < 0 then
      hi = t
      break
    end
    lo = t
    d = d * 2
  end
  if not hi then return nil, last end
  if monotone then
    local flo, side = f(lo) - floor, 0
    for _ = 1, 8 do
      if hi - lo <= 1 then break end
      local m = math.floor(lo + (hi - lo) * flo / (flo - fhi))
      if m <= lo then m = lo + 1 elseif m >= hi then m = hi - 1 end
      local fm = f(m) - floor
      if fm < 0 then
        hi, fhi = m, fm
        if side < 0 then flo = flo / 2 end
        side = -1
        if m - 1 > lo then -- the root is most likely just below: try to close the bracket
          local fb = f(m - 1) - floor
          if fb >= 0 then lo, flo = m - 1, fb else hi, fhi = m - 1, fb end
        end
      else
        lo, flo = m, fm
        if side > 0 then fhi = fhi / 2 end
        side = 1
        if m + 1 < hi then
          local fa = f(m + 1) - floor
          if fa < 0 then hi, fhi = m + 1, fa else lo, flo = m + 1, fa end
        end
      end
    end
  end
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if f(mid) < floor then hi = mid else lo = mid end
  end
  return hi, last
end

-- score_at with the lead's sums folded per category and decay rate: a few exponentials per
-- probe instead of one per rule. Nil when a sum could rise with time (a negative decaying sum):
-- the fold is only used where the score never increases. Returns the folded categories too.
local function folded_score(st)
  -- per category: [weight, cap, non-decaying sum, rate 1, sum 1, rate 2, sum 2, ...]
  -- (weights are > 0: the model refuses others)
  local groups, list = {}, {}
  local function group(c)
    local g = groups[c]
    if not g then
      local cs = CATS[c]
      g = {cs[1], cs[2], 0}
      groups[c] = g
      list[#list + 1] = g
    end
    return g
  end
  codes(st)
  for i = 1, NR do
    local id = R_CODES[i]
    local c = CAT[id]
    if c then
      local g = group(c)
      local l, v = LAM[id], R_SUMS[i][1]
      if IDLE_R and IDLE_R[id] and v ~= 0 then return nil end  -- steps, not exponentials
      if l > 0 then
        if v < 0 then return nil end
        local j = 4
        while g[j] and g[j] ~= l do j = j + 2 end
        g[j] = l
        g[j + 1] = (g[j + 1] or 0) + v
      else
        g[3] = g[3] + v
      end
    end
  end
  for i = 1, NF do
    local c = CAT[F_CODES[i]]
    if c then
      local g = group(c)
      g[3] = g[3] + F_POINTS[i]
    end
  end
  local n, L, exp = #list, st.L, math.exp
  return list, function(t)
    local total = 0
    for i = 1, n do
      local g = list[i]
      local v = g[3]
      for j = 4, #g, 2 do
        v = v + g[j + 1] * exp(-g[j] * (t - L))
      end
      v = v * g[1]
      if g[2] >= 0 and v > g[2] then v = g[2] end
      total = total + v
    end
    return total
  end
end

-- Where the folded score has one decay rate (every decaying rule of the model decays alike, as in
-- the default model) it is f(x) = sum over categories of min(cap, w(a + b x)), x = e^{-rate(t - L)}:
-- piecewise linear in x, so the crossing is solved for, not searched. Returns the (real) time of
-- the crossing, false when f never gets below the floor, nil when this does not apply.
local function crossing(list, L, t0, floor)
  local rate
  for _, g in ipairs(list) do
    if #g > 5 then return nil end
    if g[4] then
      if rate and g[4] ~= rate then return nil end
      rate = g[4]
    end
  end
  if not rate then return nil end
  local function f(x)
    local total = 0
    for _, g in ipairs(list) do
      local v = g[1] * (g[3] + (g[5] or 0) * x)
      if g[2] >= 0 and v > g[2] then v = g[2] end
      total = total + v
    end
    return total
  end
  local x0 = math.exp(-rate * (t0 - L))
  local points = {0, x0}
  for _, g in ipairs(list) do
    local b = g[5] or 0
    if g[2] >= 0 and b > 0 then
      local x = (g[2] / g[1] - g[3]) / b  -- where the category reaches its cap
      if x > 0 and x < x0 then points[#points + 1] = x end
    end
  end
  table.sort(points)
  local lo, flo = 0, f(0)
  if flo >= floor then return false end
  for i = 2, #points do
    local hi = points[i]
    local fhi = f(hi)
    if fhi >= floor then
      local x = lo + (hi - lo) * (floor - flo) / (fhi - flo)
      if x <= 0 then return nil end
      return L - math.log(x) / rate
    end
    lo, flo = hi, fhi
  end
  return nil
end

-- The last point of first_below's grid: a crossing after it counts as none. Its last step
-- depends on the spec alone: worked out once per call, not once per lead.
local GRID_LAST = 0
do
  local d, span = math.max(1, math.floor(SPEC.hmin / 16)), SPEC.hmax * 64
  if d <= span then
    while d * 2 <= span do d = d * 2 end
    GRID_LAST = d
  end
end
local function grid_end(t0)
  return t0 + GRID_LAST
end

-- When decay alone takes the lead below its stage's floor: the first t after the clock with
-- score(t) < floor, found on a doubling grid and refined by bisection to the millisecond.
-- The search runs on the folded score; score_at itself then confirms the millisecond found
-- (score_at(hi) < floor <= score_at(hi - 1), or no crossing on the grid), and where it does
-- not (rounding differs at the very boundary) the search is redone with score_at.
local function search_due(st, floor, fast)
  local t0 = st.c
  local exact = function(t) return score_at(st, t) end
  if fast then
    local hi, last = first_below(fast, t0, floor, true)
    if hi then
      if exact(hi) < floor and exact(hi - 1) >= floor then return hi end
    elseif exact(last) >= floor then
      return nil
    end
  end
  return (first_below(exact, t0, floor))
end

-- Under idle decay alone (no continuously decaying sum, every idle sum positive) the score is
-- constant between ticks and falls at each: the crossing is the first tick A + mN after t0 with
-- score < floor, found by doubling and bisecting over m (a few probes, not one per millisecond
-- bit). Nil when this does not apply; false when no tick within the search's span gets there.
local function idle_due(st, t0, floor)
  local I = st.i
  if not I then return nil end
  codes(st)
  for i = 1, NR do
    local id = R_CODES[i]
    local v, l = R_SUMS[i][1], LAM[id]
    if v ~= 0 and ((l and l > 0) or (IDLE_R[id] and v < 0)) then return nil end
  end
  local A, N = I[1], IDLE_N
  local m0 = math.max(1, math.floor((t0 - A) / N) + 1)
  local last = m0 + math.ceil(SPEC.hmax * 64 / N)
  local function below(m) return score_at(st, A + m * N) < floor end
  local lo, hi, d = m0 - 1, nil, 1
  while true do
    local m = math.min(m0 - 1 + d, last)
    if below(m) then hi = m break end
    lo = m
    if m == last then return false end
    d = d * 2
  end
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if below(mid) then hi = mid else lo = mid end
  end
  return A + hi * N
end

-- next_due: the crossing solved for where it can be (`crossing`) and confirmed to the
-- millisecond with score_at exactly as the search confirms its own (the score only falls, so
-- that millisecond is the search's too); searched for otherwise.
local function next_due(st, search)
  if st.s == 0 or not st.c or st.lc > 0 then return nil end
  local floor = STAGES[st.s + 1][1] - HYST
  local t0 = st.c
  local decaying = false
  codes(st)
  for i = 1, NR do
    local id = R_CODES[i]
    local l = LAM[id]
    if ((l and l > 0) or (IDLE_R and IDLE_R[id])) and R_SUMS[i][1] ~= 0 then decaying = true end
  end
  if not decaying then return nil end
  if score_at(st, t0) < floor then return t0 end
  if IDLE_R and not search then
    local at = idle_due(st, t0, floor)
    if at ~= nil then return at or nil end
  end
  local list, fast = folded_score(st)
  if fast and not search then
    local at, last = crossing(list, st.L, t0, floor), grid_end(t0)
    if at == false then
      if score_at(st, last) >= floor then return nil end
    elseif at then
      local hi = math.max(t0 + 1, math.ceil(at))
      if hi > last then
        if score_at(st, last) >= floor then return nil end
      else
        for _ = 1, 4 do
          if hi > last then break end
          if score_at(st, hi) >= floor then
            hi = hi + 1
          elseif hi - 1 > t0 and score_at(st, hi - 1) < floor then
            hi = hi - 1
          else
            return hi
          end
        end
      end
    end
  end
  return search_due(st, floor, fast)
end

-- The sales SLA: when the lead's SQL, neither accepted nor rejected, is overdue (once per SQL:
-- a new promotion into SQL starts a new one); nil when there is none.
local function sla_due(st)
  if LC.sla <= 0 or SQL == 0 or st.lc > 0 or st.s ~= SQL then return nil end
  local since = st.pt[SQL + 1]
  if not since or st.so == since then return nil end
  return since + LC.sla
end

-- The due index holds the earlier of the decay demotion and the SLA deadline.
local function due_at(st)
  local u, d = next_due(st), sla_due(st)
  if d and (not u or d < u) then return d end
  return u
end

-- The SQL's SLA passed at u unanswered: one `sla_overdue` transition (the stage stays).
local function overdue(st, u, out)
  st.so = st.pt[SQL + 1]
  st.q = st.q + 1
  moved(st)
  local tr = {st.q, 'sla_overdue', st.s, st.s, u, false, STAGES[st.s + 1][1], explain(st, u), false, false, false}
  out[#out + 1] = tr
  noted(st, tr)
end

-- Apply every decay-driven demotion (and SLA deadline) due by `t`, each at the instant it
-- happens: the same transitions whether the sweep found them in time or a later event arrived first.
local function catch_up(st, t, out)
  local rounds = 0
  while st.s > 0 and st.u and st.u <= t and rounds <= NSTAGE do
    rounds = rounds + 1
    local u = st.u
    if not st.c or u > st.c then st.c = u end
    moved(st)
    if sla_due(st) == u then overdue(st, u, out) else evaluate(st, u, false, out) end
    st.u = due_at(st)
    -- The due index still holds the time just passed: re-index even if nothing else moves.
    st.ix = bit.bor(st.ix, STALE)
    moved(st)
  end
end

-- Keep the due index (sweep) and the top index (hottest leads) in step with the lead. Their
-- values only change when the lead moved (or the model did, which a later event catches up
-- with); `ix` says which index holds the lead, so a lead in neither costs no ZREM. `force`
-- trusts none of that (the sweep and its ack, for leads the index may hold wrongly).
local function reindex(st, due_key, top_key, lead, force)
  local stale = force or bit.band(st.ix, STALE) ~= 0
  if not (st.moved or stale) then return end
  local u = due_at(st)
  if u then
    if stale or bit.band(st.ix, IN_DUE) == 0 or u ~= st.u then
      redis.call('ZADD', due_key, string.format('%d', u), lead)
    end
  elseif stale or bit.band(st.ix, IN_DUE) ~= 0 then
    redis.call('ZREM', due_key, lead)
  end
  local score = st.c and score_at(st, st.c) or 0
  -- /leads/top: leads the score put above the first stage; not those the CRM holds
  local top = st.s > 0 and score > 0 and st.lc == 0
  if top then
    -- log2(score) plus the clock in half-lives of the slowest decay: ordering by this value
    -- ranks leads by their score at any common later instant (exact for one half-life).
    redis.call('ZADD', top_key, math.log(score) / math.log(2) + st.c / SPEC.hmax, lead)
  elseif stale or bit.band(st.ix, IN_TOP) ~= 0 then
    redis.call('ZREM', top_key, lead)
  end
  local ix = (u and IN_DUE or 0) + (top and IN_TOP or 0)
  if ix ~= st.ix or u ~= st.u then
    st.ix, st.u = ix, u
    st.dirty = true
  end
end

-- The lead's traits (`…:p`, JSON) to hand back beside its transitions, read in the call that
-- decided them: a handoff names the person as Redis knew them then (who.py), and no second read
-- follows. `written`: traits this call wrote; false when there are no transitions.
local function with_traits(out, pkey, written)
  if #out == 0 then return false end
  return written or redis.call('GET', pkey)
end

-- The lifecycle stage the outcomes so far decide, in whatever order they arrived: the furthest
-- stage advanced to at or after the latest recycle (any, when there was none). Outcomes of one
-- lead arrive from a CRM in no guaranteed order; this is the stage their time order gives.
local function lifecycle_stage(st)
  local best = 0
  for j = 1, LC.n do
    local a = st.la[j]
    if a and (not st.lr or a >= st.lr) then best = j end
  end
  return best
end

-- A CRM outcome at t (lifecycle.py, docs/scoring.md §10): an advance keeps its time per
-- lifecycle stage, a recycle is kept when it is the latest (its cool-down with it), and the
-- lead's lifecycle stage follows (`lifecycle_stage`): a lead only moves forward, a late or
-- repeated outcome moves nothing its time order would not. The latest recycle takes the lead
-- back to the first stage. Returns the outcome record's part the scripts know, the lead as it
-- stood at t before the outcome:
--   {event_id, outcome, reason, t, stage before, stage after, explanation, promotion times
--    per model stage, first event, last handoff {seq, kind, at}, cool-down end}
-- A move appends its transition to `out`: [..., outcome, reason, cool-down end].
local function outcome(st, t, name, reason, trigger, out)
  local before = shown(st)
  local snap = {trigger or false, name, reason or false, t, before, before, explain(st, t), {},
                st.fs or false, st.lh or false, false}
  for i = 1, NSTAGE do snap[8][i] = st.pt[i] or false end
  local act = LC.outcomes[name]
  if act then
    local target, cool, latest = act[2], act[3], false
    if act[1] == 'recycled' then
      if not st.lr or t > st.lr then
        st.lr, st.cd, latest = t, cool > 0 and t + cool or nil, true
      elseif t == st.lr and cool > 0 and (not st.cd or t + cool > st.cd) then
        st.cd = t + cool  -- recycles of one instant: the longest cool-down
      end
    elseif not st.la[target] or t > st.la[target] then
      st.la[target] = t
    end
    st.dirty = true
    local lc, kind = lifecycle_stage(st), nil
    if lc > st.lc then
      kind = LC.closed[lc] and 'closed' or 'advanced'
    elseif lc < st.lc or (latest and lc == 0 and st.s > 0) then
      kind = 'recycled'
    end
    if kind then
      local threshold = STAGES[st.s + 1][1]
      if lc == 0 then st.s = 0 end
      st.lc = lc
      st.q = st.q + 1
      moved(st)
      local tr = {st.q, kind, before, shown(st), t, trigger or false, threshold, explain(st, t), name,
                  reason or false, lc == 0 and st.cd or false}
      out[#out + 1] = tr
      noted(st, tr)
    end
  end
  snap[6], snap[11] = shown(st), st.lc == 0 and st.cd or false
  return snap
end
