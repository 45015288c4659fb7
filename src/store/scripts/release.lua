-- release: end the caller's lease now, or any lease when forced by an administrator.
--
-- KEYS[1]  lock hash of the resource
-- KEYS[2]  event stream
-- KEYS[3]  expiry index (sorted set)
-- KEYS[4]  held index (sorted set)
-- KEYS[5]  lease index (hash)
-- KEYS[6]  cluster mode: where this call's reply is kept (see remember)
-- ARGV[1]  SHA-256 of the caller's lock token, or "" to force the release
-- ARGV[2]  resource id
-- ARGV[3]  event channel
-- ARGV[4]  approximate stream length to keep
-- ARGV[5]  Lua pattern the holder's agent id must match (the caller's API key), or ""
--
-- Returns {1, event_id} when released,
--         {-1} when nothing holds the lock,
--         {-2, holder_agent_id, expires_at_ms} when another token holds it,
--         {-3, holder_agent_id} when the caller's key may not act for the holder.
--
-- A lease that has run out cannot be released (404); the reaper announces its expiry.
-- The fencing counter stays: the next holder's fence must still be greater.

local reply_key = KEYS[6]
local earlier = recall(reply_key)
if earlier then
  return earlier
end

local now_ms = clock()

local lock = redis.call('HMGET', KEYS[1], 'token', 'agent', 'fence', 'expires')
if not lock[1] or tonumber(lock[4]) <= now_ms then
  return {-1}
end
local forced = ARGV[1] == ''
if not forced and lock[1] ~= ARGV[1] then
  return {-2, lock[2], tonumber(lock[4])}
end
if ARGV[5] ~= '' and not string.match(lock[2], ARGV[5]) then
  return {-3, lock[2]}
end

redis.call('DEL', KEYS[1])
index_del(KEYS[3], KEYS[4], KEYS[5], ARGV[2])

local reason = 'released'
if forced then
  reason = 'forced'
end
local id = emit(KEYS[2], ARGV[3], ARGV[4],
  event_body('resource.unlocked', ARGV[2], lock[2], tonumber(lock[3]), now_ms, 'reason', reason))

return remember(reply_key, {1, id})
