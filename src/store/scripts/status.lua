-- status: who holds the lock, read against Redis's clock.
--
-- KEYS[1]  lock hash of the resource
--
-- Returns {0} when free,
--         {1, agent_id, fencing_token, acquired_at_ms, expires_at_ms, remaining_ms} when held.
--
-- A script rather than HMGET so that the remaining time is measured on the same clock
-- that ends the lease.

local now_ms = clock()

local lock = redis.call('HMGET', KEYS[1], 'agent', 'fence', 'acquired', 'expires')
if not lock[1] then
  return {0}
end
local expires = tonumber(lock[4])
return {1, lock[1], tonumber(lock[2]), tonumber(lock[3]), expires, math.max(expires - now_ms, 0)}
