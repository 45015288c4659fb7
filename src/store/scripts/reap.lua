-- reap: announce every lease that has run out, exactly once.
--
-- KEYS[1]  expiry index (sorted set)
-- KEYS[2]  held index (sorted set)
-- KEYS[3]  lease index (hash)
-- KEYS[4]  event stream
-- ARGV[1]  event channel
-- ARGV[2]  approximate stream length to keep
-- ARGV[3]  most leases to announce in one call
--
-- Returns {announced, ms_until_next_expiry (-1 when none is held)}.
--
-- Every lockd instance runs this on a timer. The script removes each due entry in the
-- same step that emits its resource.unlocked, so however many instances race, each
-- expiry is announced once.

local now_ms = clock()

local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now_ms), 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  announce_expiry(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], id)
end

local next_due = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next_due[2] then
  return {#due, math.max(tonumber(next_due[2]) - now_ms, 0)}
end
return {#due, -1}
