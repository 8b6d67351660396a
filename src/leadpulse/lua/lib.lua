-- lib.lua: shared by apply.lua and sweep.lua; prepended to them when they are loaded (Redis
-- has no `require`). Holds the lead state, the forward-decay arithmetic and stage decisions.
--
-- Lead state hash fields (see keys.py):
--   L        landmark of the forward-decayed sums (epoch ms)
--   c        the lead's clock: latest event time applied (or demotion time swept)
--   s        stage index (0 = first stage)        q   transitions so far (for handoff ids)
--   u        when the lead falls below its stage's floor by decay alone (absent: never)
--   r:<rule> "<S> <t>": S = Σ p·e^{λ(tᵢ−L)}, t = latest occurrence
--   f:<rule> fit points (not decayed)             k:<rule>  cap ledger
--   p        the fit-relevant traits (JSON, written by the worker)
--   x        recent transitions by event, for re-emitting them when a message is replayed
--   o        demotions decided by the sweep and not yet acknowledged as published
local SPEC = cjson.decode(ARGV[1])
local LAM, CAT, CATS, CAPS, STAGES = SPEC.lam, SPEC.cat, SPEC.cats, SPEC.caps, SPEC.stages
local NSTAGE, HYST, DEDUP, GRADES = #STAGES, SPEC.hyst, SPEC.dedup, SPEC.grades
-- e^709 overflows a double; move the landmark long before any exponent gets there.
local RENORM = 600

local function fmt(x)
  return string.format('%.17g', x)
end

local function load(key)
  local raw = redis.call('HGETALL', key)
  local st = {key = key, r = {}, f = {}, k = {}, dirty = {}, gone = {}}
  for i = 1, #raw, 2 do
    local name, v = raw[i], raw[i + 1]
    local p = string.sub(name, 1, 2)
    if p == 'r:' then
      local s, t = string.match(v, '^(%S+) (%S+)$')
      st.r[string.sub(name, 3)] = {tonumber(s), tonumber(t)}
    elseif p == 'f:' then
      st.f[string.sub(name, 3)] = tonumber(v)
    elseif p == 'k:' then
      st.k[string.sub(name, 3)] = v
    else
      st[name] = v
    end
  end
  st.L = tonumber(st.L)
  st.c = tonumber(st.c)
  -- A model with fewer stages than the lead was in: the lead is in the top stage left.
  st.s = math.min(tonumber(st.s or '0'), NSTAGE - 1)
  st.q = tonumber(st.q or '0')
  st.u = tonumber(st.u)
  return st
end

local function save(st)
  -- A field both set and cleared during the call ends as its last value says.
  local args = {}
  for name, _ in pairs(st.dirty) do
    local p, id = string.sub(name, 1, 2), string.sub(name, 3)
    local v
    if p == 'r:' then
      if st.r[id] then v = fmt(st.r[id][1]) .. ' ' .. string.format('%d', st.r[id][2]) end
    elseif p == 'f:' then
      if st.f[id] then v = fmt(st.f[id]) end
    elseif p == 'k:' then
      v = st.k[id]
    elseif name == 'L' or name == 'c' or name == 'u' then
      if st[name] then v = string.format('%d', st[name]) end
    elseif st[name] ~= nil then
      v = tostring(st[name])
    end
    if v == nil then
      st.gone[name] = true
    else
      st.gone[name] = nil
      args[#args + 1] = name
      args[#args + 1] = v
    end
  end
  if #args > 0 then
    redis.call('HSET', st.key, unpack(args))
  end
  local gone = {}
  for name, _ in pairs(st.gone) do
    gone[#gone + 1] = name
  end
  if #gone > 0 then
    redis.call('HDEL', st.key, unpack(gone))
  end
end

local function renormalise(st, landmark)
  for id, rs in pairs(st.r) do
    local l = LAM[id]
    if l and l > 0 then
      rs[1] = rs[1] * math.exp(-l * (landmark - st.L))
      st.dirty['r:' .. id] = true
    end
  end
  st.L = landmark
  st.dirty.L = true
end

local function add(st, id, p, t)
  local l = LAM[id] or 0
  if not st.L then
    st.L = t
    st.dirty.L = true
  elseif SPEC.lmax * (t - st.L) > RENORM then
    renormalise(st, t)
  end
  local v = p
  if l > 0 then
    v = p * math.exp(l * (t - st.L))
  end
  local rs = st.r[id]
  if rs then
    rs[1] = rs[1] + v
    if t > rs[2] then rs[2] = t end
  else
    st.r[id] = {v, t}
  end
  st.dirty['r:' .. id] = true
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
    local used = tonumber(ledger or '0')
    if not used then
      used = 0
      for _, ps in string.gmatch(ledger, '(%S+) (%S+)') do used = used + tonumber(ps) end
    end
    local a = math.min(p, limit - used)
    if a <= 0 then return 0 end
    st.k[id] = fmt(used + a)
    st.dirty['k:' .. id] = true
    return a
  end
  local kept, used, newest = {}, 0, t
  local entries = {}
  if ledger and string.find(ledger, ' ') then  -- a lifetime total (no space) starts afresh
    for ts, ps in string.gmatch(ledger, '(%S+) (%S+)') do
      local tt = tonumber(ts)
      entries[#entries + 1] = {ts, ps, tt, tonumber(ps)}
      if tt > newest then newest = tt end
    end
  end
  -- Awards this far behind the rule's newest one only matter to events that late; forgetting
  -- them bounds the ledger (a cap is exact for events up to `dedup_window` out of order).
  -- Only this rule's own awards move the horizon, so other sources' timing cannot change it.
  local horizon = newest - DEDUP - window
  for _, e in ipairs(entries) do
    local ts, ps, tt, pp = e[1], e[2], e[3], e[4]
    if tt > horizon then
      kept[#kept + 1] = ts .. ' ' .. ps
      if tt > t - window and tt <= t then used = used + pp end
    end
  end
  local a = math.min(p, limit - used)
  if a > 0 then
    kept[#kept + 1] = string.format('%d', t) .. ' ' .. fmt(a)
  else
    a = 0
  end
  st.k[id] = table.concat(kept, ' ')
  st.dirty['k:' .. id] = true
  return a
end

local function score_at(st, t)
  local sums = {}
  for id, rs in pairs(st.r) do
    local c = CAT[id]
    if c then
      local l = LAM[id]
      local v = rs[1]
      if l > 0 then v = v * math.exp(-l * (t - st.L)) end
      sums[c] = (sums[c] or 0) + v
    end
  end
  for id, p in pairs(st.f) do
    local c = CAT[id]
    if c then sums[c] = (sums[c] or 0) + p end
  end
  local total = 0
  for c, v in pairs(sums) do
    local cs = CATS[c]
    v = v * cs[1]
    if cs[2] >= 0 and v > cs[2] then v = cs[2] end
    total = total + v
  end
  return total
end

local function grade(st)
  local fit = 0
  for id, p in pairs(st.f) do
    if CAT[id] then fit = fit + p end
  end
  for i = 1, 3 do
    if fit >= GRADES[i] then return 4 - i end
  end
  return 0
end

local function snapshot(st)
  local out = {'L', string.format('%d', st.L or 0), 's', tostring(st.s), 'c', string.format('%d', st.c or 0)}
  for id, rs in pairs(st.r) do
    out[#out + 1] = 'r:' .. id
    out[#out + 1] = fmt(rs[1]) .. ' ' .. string.format('%d', rs[2])
  end
  for id, p in pairs(st.f) do
    out[#out + 1] = 'f:' .. id
    out[#out + 1] = fmt(p)
  end
  return out
end

-- Decide the stage at t. Promotion: the highest stage whose min_score and min_grade hold.
-- Demotion: leave every stage whose floor (min_score - hysteresis) or min_grade fails.
local function evaluate(st, t, trigger, out)
  local score = score_at(st, t)
  local g = grade(st)
  local cur, best, kind = st.s, st.s, nil
  for i = NSTAGE - 1, cur + 1, -1 do
    local sp = STAGES[i + 1]
    if score >= sp[1] and g >= sp[2] then
      best = i
      break
    end
  end
  if best > cur then
    kind = 'promoted'
  else
    while best > 0 do
      local sp = STAGES[best + 1]
      if score < sp[1] - HYST or g < sp[2] then best = best - 1 else break end
    end
    if best < cur then kind = 'demoted' end
  end
  if not kind then return end
  local threshold
  if kind == 'promoted' then threshold = STAGES[best + 1][1] else threshold = STAGES[cur + 1][1] - HYST end
  st.q = st.q + 1
  st.s = best
  st.dirty.q = true
  st.dirty.s = true
  -- crossed_at as a decimal string: exact in a JSON reply or log (cjson keeps 14 digits)
  out[#out + 1] = {st.q, kind, cur, best, string.format('%d', t), trigger, fmt(score), fmt(threshold), snapshot(st)}
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
-- the fold is only used where the score never increases.
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
  for id, rs in pairs(st.r) do
    local c = CAT[id]
    if c then
      local g = group(c)
      local l, v = LAM[id], rs[1]
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
  for id, p in pairs(st.f) do
    local c = CAT[id]
    if c then
      local g = group(c)
      g[3] = g[3] + p
    end
  end
  local n, L, exp = #list, st.L, math.exp
  return function(t)
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

-- When decay alone takes the lead below its stage's floor: the first t after the clock with
-- score(t) < floor, found on a doubling grid and refined by bisection to the millisecond.
-- The search runs on the folded score; score_at itself then confirms the millisecond found
-- (score_at(hi) < floor <= score_at(hi - 1), or no crossing on the grid), and where it does
-- not (rounding differs at the very boundary) the search is redone with score_at.
local function next_due(st)
  if st.s == 0 or not st.c then return nil end
  local floor = STAGES[st.s + 1][1] - HYST
  local t0 = st.c
  local decaying = false
  for id, rs in pairs(st.r) do
    if LAM[id] and LAM[id] > 0 and rs[1] ~= 0 then decaying = true end
  end
  if not decaying then return nil end
  local exact = function(t) return score_at(st, t) end
  if exact(t0) < floor then return t0 end
  local fast = folded_score(st)
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

-- Apply every decay-driven demotion due by `t`, each at the instant it happens: the same
-- transitions whether the sweep found them in time or a later event arrived first.
local function catch_up(st, t, out)
  local rounds = 0
  while st.s > 0 and st.u and st.u <= t and rounds < NSTAGE do
    rounds = rounds + 1
    local u = st.u
    if not st.c or u > st.c then
      st.c = u
      st.dirty.c = true
    end
    evaluate(st, u, false, out)
    st.u = next_due(st)
    st.dirty.u = true
  end
end

-- Keep the due index (sweep) and the top index (hottest leads) in step with the lead.
local function reindex(st, due_key, top_key, lead)
  local u = next_due(st)
  st.u = u
  st.dirty.u = true
  if u then
    redis.call('ZADD', due_key, u, lead)
  else
    redis.call('ZREM', due_key, lead)
  end
  local score = st.c and score_at(st, st.c) or 0
  if st.s > 0 and score > 0 then
    -- log2(score) plus the clock in half-lives of the slowest decay: ordering by this value
    -- ranks leads by their score at any common later instant (exact for one half-life).
    redis.call('ZADD', top_key, math.log(score) / math.log(2) + st.c / SPEC.hmax, lead)
  else
    redis.call('ZREM', top_key, lead)
  end
end
