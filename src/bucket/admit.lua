-- The admission core (src/bucket/core.rs) on the Redis server, run atomically by
-- EVALSHA. Arguments and reply: see `SCRIPT` in src/bucket/redis.rs.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local key = KEYS[1]
local want = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local hold_rel = tonumber(ARGV[4])
local set_iv = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local not_before = tonumber(ARGV[7])
local nq = tonumber(ARGV[8])
local fields = {'hold', 'iv', 'rat', 'riv', 'piv', 'rs'}
for i = 1, nq do fields[i + 6] = 't' .. i end
local vals = redis.call('HMGET', key, unpack(fields))
local hold = tonumber(vals[1]) or 0
local stored_iv = tonumber(vals[2])
local rat = tonumber(vals[3]) or 0
local riv = tonumber(vals[4]) or 1
local rs = tonumber(vals[6]) or now
local iv, tol, burst, tat = {}, {}, {}, {}
for i = 1, nq do
  local interval = tonumber(ARGV[7 + 2 * i])
  burst[i] = tonumber(ARGV[8 + 2 * i])
  if i == 1 and stored_iv then interval = stored_iv end
  iv[i] = interval
  tol[i] = interval * (burst[i] - 1)
  tat[i] = tonumber(vals[6 + i]) or 0
end
local piv = tonumber(vals[5]) or iv[1]
-- A hold is a floor, not a spend: no window moves. It arms the paced release: slots from the
-- hold's end one shortest interval apart, or the burst spread over the hold if faster.
if hold_rel > 0 then
  local hold_end = now + hold_rel
  if hold_end > hold then hold = hold_end end
  local spread = math.floor(hold_rel / burst[1])
  riv = iv[1]
  if spread < riv then riv = spread end
  if riv < 1 then riv = 1 end
  if hold_end > rat then rat = hold_end end
end
-- A rate change re-slots the callers reserved ahead when it is a cut, or a raise of more than
-- an eighth over the pace they were slotted at (core.rs, reslots: the same rule). Then it
-- rebases the shortest window (core.rs, Cell::rebase): what one burst and the unit that
-- emptied it account for is kept, rescaled, and the counter moves. A smaller raise leaves TAT
-- and the waiters' slots as they are.
if set_iv > 0 and set_iv ~= iv[1] then
  if set_iv > iv[1] or set_iv * 9 < piv * 8 then
    local owed = tat[1] - now
    if owed > 0 then
      local gone = owed
      if gone > tol[1] + iv[1] then gone = tol[1] + iv[1] end
      tat[1] = now + math.ceil(gone * set_iv / iv[1])
    end
    piv = set_iv
    rs = rs + 1
  end
  iv[1] = set_iv
  tol[1] = set_iv * (burst[1] - 1)
  stored_iv = set_iv
end
local slots = {}
local refused = 0
for j = 1, want do
  local free = now
  if not_before >= 0 and now + not_before > free then free = now + not_before end
  for i = 1, nq do
    local e = tat[i] + (cost - 1) * iv[i] - tol[i]
    if e > free then free = e end
  end
  local slot = free
  if rat > slot then slot = rat end
  if hold > slot then slot = hold end
  if max_wait >= 0 and slot - now > max_wait then
    if j == 1 then refused = slot end
    break
  end
  for i = 1, nq do
    local base = tat[i]
    if slot > base then base = slot end
    tat[i] = base + cost * iv[i]
  end
  if rat == 0 or free >= rat then rat = 0 else rat = slot + riv * cost end
  slots[j] = slot
end
local last = hold
if rat > last then last = rat end
local args = {'hold', string.format('%.0f', hold), 'rat', string.format('%.0f', rat),
  'riv', string.format('%.0f', riv), 'piv', string.format('%.0f', piv),
  'rs', string.format('%.0f', rs)}
if stored_iv then
  args[#args + 1] = 'iv'
  args[#args + 1] = string.format('%.0f', stored_iv)
end
for i = 1, nq do
  args[#args + 1] = 't' .. i
  args[#args + 1] = string.format('%.0f', tat[i])
  if tat[i] > last then last = tat[i] end
end
redis.call('HSET', key, unpack(args))
local ms = math.ceil((last - now) / 1000)
if ms < 0 then ms = 0 end
redis.call('PEXPIRE', key, ms + ttl)
local out = {now, hold, iv[1], refused, rs}
for j = 1, #slots do out[5 + j] = slots[j] end
return out
