-- skygate GCRA, several limits at once, all or nothing. Mirrors skygate_core::ratelimit::check and
-- check_all exactly; the time is Redis's own (TIME), so every node shares one clock.
--
-- KEYS[i]       the bucket of limit i; its value is the TAT in microseconds, expiring when it passes
-- ARGV[1]       cost
-- ARGV[3i-1]    emission interval T of limit i, microseconds (Quota::interval_us)
-- ARGV[3i]      tolerance of limit i, limit * T microseconds
-- ARGV[3i+1]    weight of limit i: what one unit of cost counts on it (Limit::weight)
--
-- Returns {allowed, then per limit: allowed, new_tat, remaining, reset_us, retry_after_us}.
-- Lua numbers are doubles: every value here stays far below 2^53, so the arithmetic is exact.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local u32_max = 4294967295

-- floor(a / b) for non-negative integers, corrected for the rounding of the float division.
local function idiv(a, b)
  local q = math.floor(a / b)
  if q * b > a then
    q = q - 1
  elseif (q + 1) * b <= a then
    q = q + 1
  end
  return q
end

local function clamp(x)
  if x < 0 then return 0 end
  if x > u32_max then return u32_max end
  return x
end

local out = {1}
local new_tats = {}
for i = 1, #KEYS do
  local interval = tonumber(ARGV[3 * i - 1])
  local tolerance = tonumber(ARGV[3 * i])
  local weight = tonumber(ARGV[3 * i + 1])
  local stored = redis.call('GET', KEYS[i])
  local tat = stored and tonumber(stored)
  local base = now
  if tat and tat > now then base = tat end
  local new_tat = base + interval * cost * weight
  local ahead = new_tat - now
  if ahead <= tolerance then
    new_tats[i] = new_tat
    out[#out + 1] = 1
    out[#out + 1] = new_tat
    out[#out + 1] = clamp(idiv(tolerance - ahead, interval))
    out[#out + 1] = ahead
    out[#out + 1] = 0
  else
    out[1] = 0
    local current = base - now
    local headroom = tolerance - current
    if headroom < 0 then headroom = 0 end
    local retry = ahead - tolerance
    if retry < 1 then retry = 1 end
    out[#out + 1] = 0
    out[#out + 1] = tat or now
    out[#out + 1] = clamp(idiv(headroom, interval))
    out[#out + 1] = current
    out[#out + 1] = retry
  end
end

if out[1] == 1 then
  for i = 1, #KEYS do
    -- The key vanishes when its TAT passes: by then it is the same as a bucket never used.
    local ttl_ms = math.ceil((new_tats[i] - now) / 1000)
    if ttl_ms < 1 then ttl_ms = 1 end
    redis.call('SET', KEYS[i], string.format('%.0f', new_tats[i]), 'PX', string.format('%.0f', ttl_ms))
  end
end
return out
