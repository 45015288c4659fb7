-- Helpers shared by every lockd script. The store prepends this file to each script
-- before loading it, so each script stays a single atomic EVALSHA. Before it, the store
-- defines PUBLISH_COMMAND: 'PUBLISH', or 'SPUBLISH' (sharded Pub/Sub) in cluster mode,
-- and REPLY_TTL_MS (see remember).
--
-- Lua numbers are doubles: integers are exact up to 2^53, but Redis turns a number
-- argument into text with "%.14g", which mangles 16-digit fencing tokens. Every number
-- that goes into a Redis command or a JSON document is therefore formatted with int().

local function int(n)
  return string.format('%d', n)
end

-- Redis's clock, read once per script: milliseconds for leases and timestamps,
-- microseconds for fencing tokens.
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end

-- RFC 3339 UTC with milliseconds, from Unix milliseconds (days-to-civil algorithm
-- from Howard Hinnant's "chrono-Compatible Low-Level Date Algorithms").
local function rfc3339(ms)
  local secs = math.floor(ms / 1000)
  local milli = ms - secs * 1000
  local days = math.floor(secs / 86400)
  local sod = secs - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400
  if month <= 2 then year = year + 1 end
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', year, month, day,
    math.floor(sod / 3600), math.floor(sod % 3600 / 60), sod % 60, milli)
end

-- Builds the JSON text of an event, without its id (the stream assigns that).
-- Field order is fixed so that documents read the same everywhere.
local function event_body(kind, resource_id, agent_id, fence, at_ms, extra_key, extra_value)
  return '{"type":"' .. kind .. '","resource_id":' .. cjson.encode(resource_id)
    .. ',"agent_id":' .. cjson.encode(agent_id)
    .. ',"fencing_token":' .. int(fence)
    .. ',"at":"' .. rfc3339(at_ms) .. '"'
    .. ',"' .. extra_key .. '":"' .. extra_value .. '"}'
end

-- The lease index: what the reaper, the listing and expiry events need once the lock key
-- itself has expired. One entry per held resource in three structures:
--   expiry  sorted set, member resource id, score lease end (ms): who is due to expire
--   held    sorted set, member resource id, score 0: resource ids in byte order, for paging
--   leases  hash, field resource id: "fence<TAB>acquired_ms<TAB>expires_ms<TAB>agent"
-- Agent ids cannot hold control characters, so the tab-separated form is unambiguous.

local function index_put(expiry_key, held_key, leases_key, id, fence, acquired, expires, agent)
  redis.call('ZADD', expiry_key, int(expires), id)
  redis.call('ZADD', held_key, 0, id)
  redis.call('HSET', leases_key, id,
    int(fence) .. '\t' .. int(acquired) .. '\t' .. int(expires) .. '\t' .. agent)
end

local function index_del(expiry_key, held_key, leases_key, id)
  redis.call('ZREM', expiry_key, id)
  redis.call('ZREM', held_key, id)
  redis.call('HDEL', leases_key, id)
end

-- Returns fence, acquired_ms, expires_ms, agent of an index entry (nil when absent).
local function index_get(leases_key, id)
  local entry = redis.call('HGET', leases_key, id)
  if not entry then
    return nil
  end
  local fence, acquired, expires, agent = string.match(entry, '^(%d+)\t(%d+)\t(%d+)\t(.*)$')
  return tonumber(fence), tonumber(acquired), tonumber(expires), agent
end

-- Appends an event to the capped stream and publishes it, with the stream entry id as
-- its "id", in the same script as the change it describes. Returns the event id.
local function emit(stream_key, channel, history, body)
  local id = redis.call('XADD', stream_key, 'MAXLEN', '~', history, '*', 'event', body)
  redis.call(PUBLISH_COMMAND, channel, '{"id":"' .. id .. '",' .. string.sub(body, 2))
  return id
end

-- Announces the end of a lease that ran out, once: the index entry goes with the event.
-- The event's time is the lease's end, not the time of the announcement.
local function announce_expiry(expiry_key, held_key, leases_key, stream_key, channel, history, id)
  local fence, _, expires, agent = index_get(leases_key, id)
  index_del(expiry_key, held_key, leases_key, id)
  if fence then
    emit(stream_key, channel, history,
      event_body('resource.unlocked', id, agent, fence, expires, 'reason', 'expired'))
  end
end

-- A cluster connection resends a call whose reply it lost (the connection to the node
-- dropped after the call was sent), so a change could be made twice: a forced release
-- run again could end the lease of whoever took the lock in between. In cluster mode the
-- store therefore names a fresh key for each call (the key after the script's own), and
-- the script keeps the reply of its change there for REPLY_TTL_MS: a call run again
-- returns that reply and changes nothing. Outside cluster mode nothing resends a call
-- that reached Redis, and no key is given.
--
-- A reply is kept as one string: per item, 'i' or 's', the value, and a NUL (the items
-- are integers below 2^53 and strings without control characters).

local function recall(key)
  if not key then
    return nil
  end
  local kept = redis.call('GET', key)
  if not kept then
    return nil
  end
  -- A write, so that a WAIT after this call (redis.min_replicas_ack) waits for the
  -- replicas to reach past the change itself, which the first call made on another
  -- connection.
  redis.call('PEXPIRE', key, REPLY_TTL_MS)
  local reply = {}
  for kind, value in string.gmatch(kept, '([is])([^%z]*)%z') do
    if kind == 'i' then
      table.insert(reply, tonumber(value))
    else
      table.insert(reply, value)
    end
  end
  return reply
end

local function remember(key, reply)
  if key then
    local items = {}
    for _, item in ipairs(reply) do
      if type(item) == 'number' then
        table.insert(items, 'i' .. int(item))
      else
        table.insert(items, 's' .. item)
      end
    end
    redis.call('SET', key, table.concat(items, '\0') .. '\0', 'PX', REPLY_TTL_MS)
  end
  return reply
end
