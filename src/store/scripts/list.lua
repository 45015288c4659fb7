-- list: a page of the locks held now, in resource-id byte order.
--
-- KEYS[1]  held index (sorted set, all scores 0, so it orders by bytes)
-- KEYS[2]  lease index (hash)
-- ARGV[1]  lower bound, as ZRANGEBYLEX takes it: "[" .. prefix, or "(" .. the resource id
--          to continue after (the caller picks the greater; Lua's string comparison
--          follows the server's locale, so it is not done here)
-- ARGV[2]  upper bound: "+", or "(" .. prefix .. "\255" (UTF-8 never holds byte 255, so
--          every id with the prefix sorts below it)
-- ARGV[3]  page size
--
-- Returns {next_cursor_or_empty, id, agent, fence, acquired_ms, expires_ms, remaining_ms, ...}.
--
-- Reads only the index, never the keyspace. Leases that ran out but are not reaped yet
-- are skipped, so a page shows exactly what status would show. A page scans a bounded
-- number of entries; the cursor then resumes where it stopped.

local now_ms = clock()
local min, max, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])

local out = {''}
local found, scanned, last = 0, 0, nil
local budget = limit * 4 + 100
while found < limit and scanned < budget do
  local ids = redis.call('ZRANGEBYLEX', KEYS[1], min, max, 'LIMIT', 0, limit - found)
  if #ids == 0 then
    break
  end
  for _, id in ipairs(ids) do
    scanned = scanned + 1
    last = id
    local fence, acquired, expires, agent = index_get(KEYS[2], id)
    if fence and expires > now_ms then
      found = found + 1
      table.insert(out, id)
      table.insert(out, agent)
      table.insert(out, fence)
      table.insert(out, acquired)
      table.insert(out, expires)
      table.insert(out, expires - now_ms)
    end
  end
  min = '(' .. last
end

if last and #redis.call('ZRANGEBYLEX', KEYS[1], '(' .. last, max, 'LIMIT', 0, 1) > 0 then
  out[1] = last
end
return out
