-- acquire: grant the lock when nobody holds it.
--
-- KEYS[1]  lock hash of the resource (its lease is the key's expiry)
-- KEYS[2]  fencing counter of the resource
-- KEYS[3]  event stream
-- KEYS[4]  expiry index (sorted set)
-- KEYS[5]  held index (sorted set)
-- KEYS[6]  lease index (hash)
-- KEYS[7]  cluster mode: where this call's reply is kept (see remember)
-- ARGV[1]  SHA-256 of the lock token (the raw token never reaches Redis)
-- ARGV[2]  agent id
-- ARGV[3]  lease length in ms
-- ARGV[4]  resource id
-- ARGV[5]  event channel
-- ARGV[6]  approximate stream length to keep
-- ARGV[7]  how long the fencing counter outlives the lease, in ms
-- ARGV[8]  digest of the request's Idempotency-Key and agent, or ""
-- ARGV[9]  the token sealed with the Idempotency-Key (hex), or ""
--
-- Returns {1, fencing_token, acquired_at_ms, expires_at_ms, event_id} when granted,
--         {2, fencing_token, acquired_at_ms, expires_at_ms, sealed_token, ttl_ms} when the
--            lock is held under the same Idempotency-Key by the same agent (a retry),
--         {0, holder_agent_id, expires_at_ms, remaining_ms} when the lock is held.
--
-- Atomic because the check, the grant, the fence and the event are one script: no other
-- command runs in between, so two callers can never both see the lock free.
-- The fence is max(previous + 1, Redis time in microseconds): it keeps increasing when
-- Redis loses its last writes or the counter key, as long as Redis's clock moves on.
-- A lease is over from its expires_at on; the key's own expiry (set a millisecond early,
-- since Redis keeps a key through its expiry millisecond) only collects the garbage.

local reply_key = KEYS[7]
local earlier = recall(reply_key)
if earlier then
  return earlier
end

local now_ms, now_us = clock()

local held = redis.call('HMGET', KEYS[1], 'agent', 'expires', 'idempotency', 'fence', 'acquired',
  'sealed', 'ttl')
if held[1] and tonumber(held[2]) > now_ms then
  local expires = tonumber(held[2])
  -- The idempotency digest covers the agent, so only the same agent's retry matches.
  if ARGV[8] ~= '' and held[3] == ARGV[8] then
    return {2, tonumber(held[4]), tonumber(held[5]), expires, held[6], tonumber(held[7])}
  end
  return {0, held[1], expires, expires - now_ms}
end

-- The previous lease ran out but the reaper has not announced it yet: announce it now,
-- so that its resource.unlocked comes before this resource.locked.
if redis.call('HEXISTS', KEYS[6], ARGV[4]) == 1 then
  announce_expiry(KEYS[4], KEYS[5], KEYS[6], KEYS[3], ARGV[5], ARGV[6], ARGV[4])
end

local previous = tonumber(redis.call('GET', KEYS[2]) or '0')
local fence = math.max(previous + 1, now_us)
local expires = now_ms + tonumber(ARGV[3])

redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1],
  'token', ARGV[1], 'agent', ARGV[2], 'fence', int(fence), 'ttl', ARGV[3],
  'acquired', int(now_ms), 'expires', int(expires))
if ARGV[8] ~= '' then
  redis.call('HSET', KEYS[1], 'idempotency', ARGV[8], 'sealed', ARGV[9])
end
redis.call('PEXPIREAT', KEYS[1], int(expires - 1))
redis.call('SET', KEYS[2], int(fence), 'PX', int(tonumber(ARGV[3]) + tonumber(ARGV[7])))
index_put(KEYS[4], KEYS[5], KEYS[6], ARGV[4], fence, now_ms, expires, ARGV[2])

local id = emit(KEYS[3], ARGV[5], ARGV[6],
  event_body('resource.locked', ARGV[4], ARGV[2], fence, now_ms, 'expires_at', rfc3339(expires)))

return remember(reply_key, {1, fence, now_ms, expires, id})
