"""The Lua scripts of ``RedisStorage``, each one atomic call to Redis.

The scripts that need the time read the server's own clock (``TIME``), so leases, ttl,
presence intervals and token buckets are judged by one clock, whatever the clocks of the app
processes say. Bans are the exception the protocol makes: their ends are judged by the clock of
the process that asks (``base.Moderation``), which the ban scripts get as an argument to tidy up.

A number a script returns or writes goes through ``string.format``: Lua numbers reach Redis as
integers, and ``tostring`` keeps only 14 digits.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "APPEND",
    "ARCHIVE_RANGE",
    "BAN",
    "BANNED",
    "COALESCE",
    "CONNECTED",
    "DELETE",
    "HISTORY",
    "LEASE",
    "PRESENCE",
    "PRESENT",
    "TAKE_TOKEN",
    "UNBAN",
    "VIEWERS",
]

# An event id's place in order, as its member in the archive's sorted set: "<ms>-<seq>" with
# each part 20 digits wide, so that places compare as strings in id order (and members of
# equal score, which Redis sorts as strings, sort by publication). nil for a malformed id.
PLACE_LUA: Final = """
local function place(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms or #ms > 20 or #seq > 20 then return nil end
  return string.rep('0', 20 - #ms) .. ms .. '-' .. string.rep('0', 20 - #seq) .. seq
end
"""

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

# KEYS: stream, last, topic, closed, archive, archived payloads, the channel's bans, the bans on
# every channel. ARGV: keep, ttl_ms ('' for none), channel, archive size (0 for none), then for
# each broadcast its author ('' for none: not checked), the author's clock (Unix seconds, which
# bans' ends are judged by, see base.Moderation), with an archive its timestamp ('' for not
# archived), and its payload.
# Appends the payloads of authors not banned, in order, and publishes them as one message,
# "B<id>\n<payload>" pairs joined by "\n" (neither ids nor encoded envelopes hold a line
# break); archives those with a timestamp, then evicts the lowest scores (the oldest media time)
# beyond the archive's size. Returns one id per broadcast ('' for a banned author's: not stored
# or sent), or nil (false) when the channel is closed: nothing is stored or sent.
APPEND: Final = (
    PLACE_LUA
    + """
if redis.call('SISMEMBER', KEYS[4], ARGV[3]) == 1 then return false end
local keep, size = tonumber(ARGV[1]), tonumber(ARGV[4])
local step = size > 0 and 4 or 3
local ids, parts, last = {}, {}, nil
local function banned(author, now)
  if author == '' then return false end
  for k = 7, 8 do
    local ends = redis.call('HGET', KEYS[k], author)
    if ends and (ends == '' or tonumber(ends) > now) then return true end
  end
  return false
end
for i = 5, #ARGV, step do
  if banned(ARGV[i], tonumber(ARGV[i + 1])) then
    ids[#ids + 1] = ''
  else
    local payload = ARGV[i + step - 1]
    local id = redis.call('XADD', KEYS[1], 'MAXLEN', keep, '*', 'p', payload)
    ids[#ids + 1] = id
    last = id
    parts[#parts + 1] = id
    parts[#parts + 1] = payload
    if step == 4 and ARGV[i + 2] ~= '' then
      local member = place(id)
      redis.call('ZADD', KEYS[5], ARGV[i + 2], member)
      redis.call('HSET', KEYS[6], member, payload)
    end
  end
end
if not last then return ids end
if size > 0 then
  local over = redis.call('ZCARD', KEYS[5]) - size
  if over > 0 then
    local evicted = redis.call('ZPOPMIN', KEYS[5], over)
    for j = 1, #evicted, 2 do redis.call('HDEL', KEYS[6], evicted[j]) end
  end
end
redis.call('SET', KEYS[2], last)
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
)

# KEYS: stream, last. ARGV: after ('' for none), ttl_ms ('' for none), limit ('' for none).
# Returns {recovered ('' none, '1', '0'), id1, payload1, id2, payload2, ...}.
# A resume recovers when nothing after `after` was evicted: it is older than the newest id and
# not older than the oldest retained entry (eviction and trimming take the oldest first), be it
# retained or deleted since (XDEL).
HISTORY: Final = (
    PLACE_LUA
    + """
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
local last = redis.call('GET', KEYS[2])
if last == after then
  return {'1'}
end
local at = place(after)
if at and last and at < place(last) then
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
  if oldest[1] and place(oldest[1][1]) <= at then
    return prepend('1', range('(' .. after))
  end
end
return prepend('0', range(low))
"""
)

# KEYS: archive, archived payloads. ARGV: start ('' for none), end ('' for none), limit, the
# place of `after` ('' for none). Ranks from two ZCOUNTs (and a ZRANK), then the page by rank:
# O(log n + k), and the deleted members (no payload) the page steps over.
# Returns nil (false) when `after` is not archived, else {more (0 or 1), place1, payload1, ...}.
ARCHIVE_RANGE: Final = """
local low = 0
if ARGV[1] ~= '' then low = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[1]) end
if ARGV[4] ~= '' then
  local rank = redis.call('ZRANK', KEYS[1], ARGV[4])
  if not rank then return false end
  if rank + 1 > low then low = rank + 1 end
end
local high
if ARGV[2] ~= '' then
  high = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[2])
else
  high = redis.call('ZCARD', KEYS[1])
end
local limit = tonumber(ARGV[3])
local out, found = {0}, 0
while low < high do
  local stop = math.min(high, low + math.min(limit - found + 1, 1000)) - 1
  local members = redis.call('ZRANGE', KEYS[1], low, stop)
  local payloads = redis.call('HMGET', KEYS[2], unpack(members))
  for j = 1, #members do
    if payloads[j] then
      if found == limit then
        out[1] = 1
        return out
      end
      out[#out + 1] = members[j]
      out[#out + 1] = payloads[j]
      found = found + 1
    end
  end
  low = stop + 1
end
return out
"""

# KEYS: stream, archived payloads. ARGV: event id, its place. The archive keeps the member (its
# place, for paging; see base.Archive) and loses the payload. Returns how many held it (0-2).
DELETE: Final = """
return redis.call('XDEL', KEYS[1], ARGV[1]) + redis.call('HDEL', KEYS[2], ARGV[2])
"""

# Drop a channel's ended bans and let its key expire a grace after the last one ends (a host
# whose clock trails still sees a ban until it ends by that clock), or never while one is for
# ever. The expiry is capped near the year 33658, which Redis can hold.
TIDY_BANS_LUA: Final = """
local function tidy(bans, now, grace_ms)
  local latest, forever = nil, false
  local fields = redis.call('HGETALL', bans)
  for i = 1, #fields, 2 do
    local ends = fields[i + 1]
    if ends == '' then
      forever = true
    elseif tonumber(ends) <= now then
      redis.call('HDEL', bans, fields[i])
    elseif not latest or tonumber(ends) > latest then
      latest = tonumber(ends)
    end
  end
  if forever then
    redis.call('PERSIST', bans)
  elseif latest then
    local at = math.min(math.ceil(latest * 1000) + grace_ms, 1e15)
    redis.call('PEXPIREAT', bans, string.format('%.0f', at))
  end
end
"""

# KEYS: the channel's bans. ARGV: user id, end (Unix seconds, '' for none), now, grace_ms.
BAN: Final = (
    TIDY_BANS_LUA
    + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
tidy(KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
"""
)

# KEYS: the channel's bans. ARGV: user id, now, grace_ms.
UNBAN: Final = (
    TIDY_BANS_LUA
    + """
redis.call('HDEL', KEYS[1], ARGV[1])
tidy(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
return 1
"""
)

# KEYS: the channel's bans, the bans on every channel. ARGV: user id. Returns both ends.
BANNED: Final = """
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HGET', KEYS[2], ARGV[1])}
"""

# KEYS: bucket. ARGV: rate (tokens a second), burst. Returns '0' when a token was spent, else
# the seconds until the bucket holds one (nothing spent). The key expires once the bucket would
# be full again, which a missing bucket is (capped near the year 33658, as bans).
TAKE_TOKEN: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens = burst
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
if held[1] then
  tokens = math.min(burst, tonumber(held[1]) + math.max(0, now - tonumber(held[2])) * rate)
end
if tokens < 1 then return string.format('%.17g', (1 - tokens) / rate) end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
  'at', string.format('%.17g', now))
local full_ms = math.min(math.ceil((burst - tokens) / rate * 1000), 1e15)
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', full_ms))
return '0'
"""

# KEYS: viewers, procs, conns, users. ARGV: process, connection, delta (1 join, -1 leave),
# lease_ms, and the connection's user id when it has one. The users hash is this process's on
# the channel, and expires with its lease like the connections.
PRESENCE: Final = (
    COUNT_LUA
    + """
local now = now_ms()
local delta, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZADD', KEYS[2], now + lease, ARGV[1])
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], delta)
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
if delta > 0 then
  redis.call('SADD', KEYS[3], ARGV[2])
else
  redis.call('SREM', KEYS[3], ARGV[2])
end
redis.call('PEXPIRE', KEYS[3], lease)
if ARGV[5] then
  if redis.call('HINCRBY', KEYS[4], ARGV[5], delta) <= 0 then
    redis.call('HDEL', KEYS[4], ARGV[5])
  end
  redis.call('PEXPIRE', KEYS[4], lease)
end
return count(KEYS[1], KEYS[2], now)
"""
)

# KEYS: viewers, procs. ARGV: the prefix of the channel's users hashes (one per process).
# Adds up the users of the processes whose lease is current, pruning the others as count does.
# Returns {user1, connections1, user2, connections2, ...}.
PRESENT: Final = (
    COUNT_LUA
    + """
local now = now_ms()
local order, totals = {}, {}
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local lease = redis.call('ZSCORE', KEYS[2], fields[i])
  if lease and tonumber(lease) >= now then
    local held = redis.call('HGETALL', ARGV[1] .. fields[i])
    for j = 1, #held, 2 do
      local user = held[j]
      if not totals[user] then
        order[#order + 1] = user
        totals[user] = 0
      end
      totals[user] = totals[user] + tonumber(held[j + 1])
    end
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
local out = {}
for _, user in ipairs(order) do
  if totals[user] > 0 then
    out[#out + 1] = user
    out[#out + 1] = totals[user]
  end
end
return out
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

# KEYS: procs, conns. ARGV: process, lease_ms, then for each channel (viewers key, count,
# users key, n, then n pairs of user id and count), then connection ids after a '' separator.
# Renews the lease and re-asserts this process's presence, its users hashes replaced whole
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
  local users, n = ARGV[i + 2], tonumber(ARGV[i + 3])
  redis.call('DEL', users)
  for j = i + 4, i + 2 + 2 * n, 2 do
    redis.call('HSET', users, ARGV[j], ARGV[j + 1])
  end
  if n > 0 then redis.call('PEXPIRE', users, lease) end
  i = i + 4 + 2 * n
end
i = i + 1
if i <= #ARGV then
  redis.call('SADD', KEYS[2], unpack(ARGV, i, #ARGV))
end
redis.call('PEXPIRE', KEYS[2], lease)
return 1
"""
