-- skygate GCRA correction after the fact: mirrors skygate_core::ratelimit::adjust exactly, on Redis
-- time (TIME), like gcra.lua.
--
-- KEYS[1]   the bucket; its value is the TAT in microseconds, expiring when it passes
-- ARGV[1]   emission interval T, microseconds
-- ARGV[2]   delta in units: positive charges (past the tolerance if need be), negative refunds
--
-- Returns the new TAT, or 0 when the bucket is full again (the key is deleted).

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local delta = tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[1])
local base = now
if stored and tonumber(stored) > now then base = tonumber(stored) end
local moved = base + interval * delta
if moved <= now then
  redis.call('DEL', KEYS[1])
  return 0
end
local ttl_ms = math.ceil((moved - now) / 1000)
if ttl_ms < 1 then ttl_ms = 1 end
redis.call('SET', KEYS[1], string.format('%.0f', moved), 'PX', string.format('%.0f', ttl_ms))
return moved
