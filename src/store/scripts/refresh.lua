-- refresh: move the end of the caller's lease to now + ttl.
--
-- KEYS[1]  lock hash of the resource
-- KEYS[2]  fencing counter of the resource
-- KEYS[3]  event stream
-- KEYS[4]  expiry index (sorted set)
-- KEYS[5]  held index (sorted set)
-- KEYS[6]  lease index (hash)
-- KEYS[7]  cluster mode: where this call's reply is kept (see remember)
-- ARGV[1]  SHA-256 of the caller's lock token
-- ARGV[2]  new lease length in ms, or "" for the lease's original length
-- ARGV[3]  resource id
-- ARGV[4]  event channel
-- ARGV[5]  approximate stream length to keep
-- ARGV[6]  how long the fencing counter outlives the lease, in ms
-- ARGV[7]  Lua pattern the holder's agent id must match (the caller's API key), or ""
--
-- Returns {1, agent_id, fencing_token, ttl_ms, acquired_at_ms, expires_at_ms, event_id},
--         {-1} when nothing holds the lock,
--         {-2, holder_agent_id, expires_at_ms} when another token holds it,
--         {-3, holder_agent_id} when the caller's key may not act for the holder.
--
-- A lease that has run out is over, even if its key lingers for its last millisecond:
-- it is never revived.

local reply_key = KEYS[7]
local earlier = recall(reply_key)
if earlier then
  return earlier
end

local now_ms = clock()

local lock = redis.call('HMGET', KEYS[1], 'token', 'agent', 'fence', 'ttl', 'acquired', 'expires')
if not lock[1] or tonumber(lock[6]) <= now_ms then
  return {-1}
end
if lock[1] ~= ARGV[1] then
  return {-2, lock[2], tonumber(lock[6])}
end
if ARGV[7] ~= '' and not string.match(lock[2], ARGV[7]) then
  return {-3, lock[2]}
end

local ttl = ARGV[2]
if ttl == '' then
  ttl = lock[4]
end
local expires = now_ms + tonumber(ttl)
local fence = tonumber(lock[3])
local acquired = tonumber(lock[5])

redis.call('HSET', KEYS[1], 'expires', int(expires))
redis.call('PEXPIREAT', KEYS[1], int(expires - 1))
redis.call('PEXPIRE', KEYS[2], int(tonumber(ttl) + tonumber(ARGV[6])))
index_put(KEYS[4], KEYS[5], KEYS[6], ARGV[3], fence, acquired, expires, lock[2])

local id = emit(KEYS[3], ARGV[4], ARGV[5],
  event_body('resource.refreshed', ARGV[3], lock[2], fence, now_ms, 'expires_at', rfc3339(expires)))

return remember(reply_key, {1, lock[2], fence, tonumber(ttl), acquired, expires, id})
