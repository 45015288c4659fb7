-- Helpers shared by every lockd script. The store prepends this file to each script
-- before loading it, so each script stays a single atomic EVALSHA.
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

-- Appends an event to the capped stream and publishes it, with the stream entry id as
-- its "id", in the same script as the change it describes. Returns the event id.
local function emit(stream_key, channel, history, body)
  local id = redis.call('XADD', stream_key, 'MAXLEN', '~', history, '*', 'event', body)
  redis.call('PUBLISH', channel, '{"id":"' .. id .. '",' .. string.sub(body, 2))
  return id
end
