-- status: who holds the lock, read against Redis's clock.
--
-- KEYS[1]  lock hash of the resource
--
-- Returns {0} when free,
--         {1, agent_id, fencing_token, acquired_at_ms, expires_at_ms, remaining_ms} when held.
--
-- A script rather than HMGET so that "free from expires_at on" is judged on the same
-- clock that grants leases.

local now_ms = clock()

local lock = redis.call('HMGET', KEYS[1], 'agent', 'fence', 'acquired', 'expires')
if not lock[1] or tonumber(lock[4]) <= now_ms then
  return {0}
end
local expires = tonumber(lock[4])
return {1, lock[1], tonumber(lock[2]), tonumber(lock[3]), expires, expires - now_ms}
