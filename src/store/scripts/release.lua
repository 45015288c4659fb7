-- release: end the caller's lease now.
--
-- KEYS[1]  lock hash of the resource
-- KEYS[2]  event stream
-- KEYS[3]  expiry index (sorted set)
-- KEYS[4]  held index (sorted set)
-- KEYS[5]  lease index (hash)
-- ARGV[1]  SHA-256 of the caller's lock token
-- ARGV[2]  resource id
-- ARGV[3]  event channel
-- ARGV[4]  approximate stream length to keep
--
-- Returns {1, event_id} when released,
--         {-1} when nothing holds the lock,
--         {-2, holder_agent_id, expires_at_ms} when another token holds it.
--
-- A lease that has run out cannot be released (404); the reaper announces its expiry.
-- The fencing counter stays: the next holder's fence must still be greater.

local now_ms = clock()

local lock = redis.call('HMGET', KEYS[1], 'token', 'agent', 'fence', 'expires')
if not lock[1] or tonumber(lock[4]) <= now_ms then
  return {-1}
end
if lock[1] ~= ARGV[1] then
  return {-2, lock[2], tonumber(lock[4])}
end

redis.call('DEL', KEYS[1])
index_del(KEYS[3], KEYS[4], KEYS[5], ARGV[2])

local id = emit(KEYS[2], ARGV[3], ARGV[4],
  event_body('resource.unlocked', ARGV[2], lock[2], tonumber(lock[3]), now_ms, 'reason', 'released'))

return {1, id}
