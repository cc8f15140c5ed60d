"""The Lua scripts of ``RedisStorage``, each one atomic call to Redis.

The scripts that need the time read the server's own clock (``TIME``), so leases, ttl and
presence intervals are judged by one clock, whatever the clocks of the app processes say.
"""

from __future__ import annotations

from typing import Final

__all__ = ["APPEND", "COALESCE", "CONNECTED", "HISTORY", "LEASE", "PRESENCE", "VIEWERS"]

# Presence helpers shared by the scripts: count the live processes' viewers, pruning dead ones.
COUNT_LUA: Final = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function count(viewers, procs, now)
  local total = 0
  local fields = redis.call('HGETALL', viewers)
  for i = 1, #fields, 2 do
    local lease = redis.call('ZSCORE', procs, fields[i])
    if lease and tonumber(lease) >= now then
      total = total + tonumber(fields[i + 1])
    else
      redis.call('HDEL', viewers, fields[i])
    end
  end
  return total
end
"""

# KEYS: stream, last, topic, closed. ARGV: keep, ttl_ms ('' for none), channel, payload...
# Appends the payloads in order and publishes them as one message, "B<id>\n<payload>" pairs
# joined by "\n" (neither ids nor encoded envelopes hold a line break). Returns the new ids, or
# nil (false) when the channel is closed: nothing is stored or sent.
APPEND: Final = """
if redis.call('SISMEMBER', KEYS[4], ARGV[3]) == 1 then return false end
local keep = tonumber(ARGV[1])
local ids, parts = {}, {}
for i = 4, #ARGV do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', keep, '*', 'p', ARGV[i])
  ids[#ids + 1] = id
  parts[#parts + 1] = id
  parts[#parts + 1] = ARGV[i]
end
redis.call('SET', KEYS[2], ids[#ids])
if ARGV[2] ~= '' then
  local ttl = tonumber(ARGV[2])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('XTRIM', KEYS[1], 'MINID', now - ttl)
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('PUBLISH', KEYS[3], 'B' .. table.concat(parts, '\\n'))
return ids
"""

# KEYS: stream, last. ARGV: after ('' for none), ttl_ms ('' for none), limit ('' for none).
# Returns {recovered ('' none, '1', '0'), id1, payload1, id2, payload2, ...}.
HISTORY: Final = """
local low = '-'
if ARGV[2] ~= '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  low = tostring(now - tonumber(ARGV[2]))
end
local function range(start)
  local out = {}
  local entries
  if ARGV[3] == '' then
    entries = redis.call('XRANGE', KEYS[1], start, '+')
  elseif tonumber(ARGV[3]) == 0 then
    entries = {}
  else
    entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', tonumber(ARGV[3]))
  end
  for _, entry in ipairs(entries) do
    table.insert(out, entry[1])
    table.insert(out, entry[2][2])
  end
  return out
end
local function prepend(flag, items)
  table.insert(items, 1, flag)
  return items
end
if ARGV[1] == '' then
  return prepend('', range(low))
end
local after = ARGV[1]
if redis.call('GET', KEYS[2]) == after then
  return {'1'}
end
local ok, found = pcall(redis.call, 'XRANGE', KEYS[1], after, after)
if ok and #found == 1 then
  local items = range('(' .. after)
  return prepend('1', items)
end
return prepend('0', range(low))
"""

# KEYS: viewers, procs, conns. ARGV: process, connection, delta (1 join, -1 leave), lease_ms.
PRESENCE: Final = (
    COUNT_LUA
    + """
local now = now_ms()
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[4]), ARGV[1])
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], tonumber(ARGV[3]))
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
if tonumber(ARGV[3]) > 0 then
  redis.call('SADD', KEYS[3], ARGV[2])
else
  redis.call('SREM', KEYS[3], ARGV[2])
end
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[4]))
return count(KEYS[1], KEYS[2], now)
"""
)

# KEYS: viewers, procs, pending, tick. ARGV: joined, left, interval_ms.
# Returns {} (nothing to announce now) or {viewer count, joined, left}.
COALESCE: Final = (
    COUNT_LUA
    + """
if tonumber(ARGV[1]) ~= 0 then redis.call('HINCRBY', KEYS[3], 'joined', ARGV[1]) end
if tonumber(ARGV[2]) ~= 0 then redis.call('HINCRBY', KEYS[3], 'left', ARGV[2]) end
if not redis.call('SET', KEYS[4], '1', 'PX', tonumber(ARGV[3]), 'NX') then return {} end
local totals = redis.call('HMGET', KEYS[3], 'joined', 'left')
local joined, left = tonumber(totals[1] or 0), tonumber(totals[2] or 0)
if joined == 0 and left == 0 then return {} end
redis.call('DEL', KEYS[3])
return {count(KEYS[1], KEYS[2], now_ms()), joined, left}
"""
)

# KEYS: viewers, procs.
VIEWERS: Final = (
    COUNT_LUA
    + """
return count(KEYS[1], KEYS[2], now_ms())
"""
)

# KEYS: procs. ARGV: conns key prefix, connection id.
CONNECTED: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, process in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], now, '+inf')) do
  if redis.call('SISMEMBER', ARGV[1] .. process, ARGV[2]) == 1 then return 1 end
end
return 0
"""

# KEYS: procs, conns. ARGV: process, lease_ms, then pairs of (viewers key, count), then
# connection ids after a '' separator. Renews the lease and re-asserts this process's presence
# (which also heals it after Redis lost its data).
LEASE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - lease)
local i = 3
while ARGV[i] ~= '' do
  redis.call('HSET', ARGV[i], ARGV[1], ARGV[i + 1])
  i = i + 2
end
i = i + 1
if i <= #ARGV then
  redis.call('SADD', KEYS[2], unpack(ARGV, i, #ARGV))
end
redis.call('PEXPIRE', KEYS[2], lease)
return 1
"""
