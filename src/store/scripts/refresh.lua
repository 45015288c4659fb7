-- refresh: move the end of the caller's lease to now + ttl.
--
-- KEYS[1]  lock hash of the resource
-- KEYS[2]  fencing counter of the resource
-- KEYS[3]  event stream
-- ARGV[1]  SHA-256 of the caller's lock token
-- ARGV[2]  new lease length in ms, or "" for the lease's original length
-- ARGV[3]  resource id
-- ARGV[4]  event channel
-- ARGV[5]  approximate stream length to keep
-- ARGV[6]  how long the fencing counter outlives the lease, in ms
--
-- Returns {1, agent_id, fencing_token, ttl_ms, acquired_at_ms, expires_at_ms, event_id},
--         {-1} when nothing holds the lock,
--         {-2, holder_agent_id, expires_at_ms} when another token holds it.
--
-- A lease that has run out is gone from Redis (its key expired), so it is never revived.

local now_ms = clock()

local lock = redis.call('HMGET', KEYS[1], 'token', 'agent', 'fence', 'ttl', 'acquired', 'expires')
if not lock[1] then
  return {-1}
end
if lock[1] ~= ARGV[1] then
  return {-2, lock[2], tonumber(lock[6])}
end

local ttl = ARGV[2]
if ttl == '' then
  ttl = lock[4]
end
local expires = now_ms + tonumber(ttl)
local fence = tonumber(lock[3])

redis.call('HSET', KEYS[1], 'expires', int(expires))
redis.call('PEXPIREAT', KEYS[1], int(expires))
redis.call('PEXPIRE', KEYS[2], int(tonumber(ttl) + tonumber(ARGV[6])))

local id = emit(KEYS[3], ARGV[4], ARGV[5],
  event_body('resource.refreshed', ARGV[3], lock[2], fence, now_ms, 'expires_at', rfc3339(expires)))

return {1, lock[2], fence, tonumber(ttl), tonumber(lock[5]), expires, id}
