"""The Lua scripts of the Redis transport: every step that must be atomic.

Each script runs whole on the server, so several processes sharing a group
never move one delayed message twice, never lose one between an ``XACK`` and
the ``XADD`` that gives it back, and never trim what a group still needs.

A message taken out of a stream (nacked with a delay) is kept in the group's
sorted set as one member: a token that makes it unique, then the entry's
fields, each written as ``<length>:<bytes>`` so any bytes survive.

Scripts are called by SHA (``EVALSHA``); :class:`Scripts` loads them again
when the server has forgotten them (after a restart).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["Scripts"]

# Helpers shared by the scripts that copy entries around.
_HELPERS = """
local function field(t, name)
  for i = 1, #t, 2 do
    if t[i] == name then return t[i + 1] end
  end
  return nil
end

local function pack(parts)
  local out = {}
  for i = 1, #parts do
    out[i] = #parts[i] .. ':' .. parts[i]
  end
  return table.concat(out)
end

local function unpack_member(member)
  local out = {}
  local pos = 1
  local size = #member
  while pos <= size do
    local colon = string.find(member, ':', pos, true)
    local len = tonumber(string.sub(member, pos, colon - 1))
    out[#out + 1] = string.sub(member, colon + 1, colon + len)
    pos = colon + len + 1
  end
  return out
end

-- The fields of an entry added again, its attempt count replaced by
-- `attempts`; its `origin` (the broker id of the message: where it was first
-- added) kept, or set to `origin` when it has none yet.
local function carried(fields, attempts, origin)
  local out = {}
  local first = origin
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'origin' then
      first = fields[i + 1]
    elseif name ~= 'attempt' then
      out[#out + 1] = name
      out[#out + 1] = fields[i + 1]
    end
  end
  out[#out + 1] = 'attempt'
  out[#out + 1] = tostring(attempts)
  out[#out + 1] = 'origin'
  out[#out + 1] = first
  return out
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end
"""

# Publish a batch: one XADD per message, each to a stream that exists
# (NOMKSTREAM: a topic no group subscribes to keeps no entry), each failing
# alone.
#
# KEYS: the stream of each message.
# ARGV: for each message, its number of field values, then fields and values.
# Returns, per message, the new entry's id, nil if the stream does not exist,
# or "!" and the error.
PUBLISH = """
local out = {}
local at = 1
for i = 1, #KEYS do
  local size = tonumber(ARGV[at])
  local ok, added = pcall(redis.call, 'XADD', KEYS[i], 'NOMKSTREAM', '*',
                          unpack(ARGV, at + 1, at + size))
  if ok then
    out[i] = added
  else
    if type(added) == 'table' then added = added.err end
    out[i] = '!' .. tostring(added)
  end
  at = at + size + 1
end
return out
"""

# Settle one delivery by giving it back: XACK it, then add a copy to the
# group's own stream (delay <= 0) or to its sorted set of delayed messages,
# scored by the server's clock. Nothing happens if the delivery was already
# settled (XACK finds nothing), so a nack racing a reclaim adds no duplicate.
#
# KEYS: the stream the entry is in, the group's stream, the group's delayed set.
# ARGV: group, entry id, deliveries so far, delay in ms, a tag for the token,
#       the delivery's broker id (kept as the copy's origin).
# Returns 1 if given back, 0 if already settled, -1 if the entry was trimmed.
REQUEUE = (
    _HELPERS
    + """
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
if #entry == 0 or redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
local fields = carried(entry[1][2], ARGV[3], ARGV[6])
local delay = tonumber(ARGV[4])
if delay <= 0 then
  redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', unpack(fields))
  return 1
end
table.insert(fields, 1, ARGV[5] .. ARGV[2])
redis.call('ZADD', KEYS[3], now_ms() + delay, pack(fields))
return 1
"""
)

# Move due delayed messages (at most ARGV[1]) back to the group's stream.
#
# KEYS: the group's delayed set, the group's stream.
# Returns {moved, ms until the next one is due, or -1 if none is left}.
MOVE_DUE = (
    _HELPERS
    + """
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local fields = unpack_member(member)
  table.remove(fields, 1)
  redis.call('XADD', KEYS[2], 'NOMKSTREAM', '*', unpack(fields))
  redis.call('ZREM', KEYS[1], member)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #first == 0 then return {#due, -1} end
local wait = tonumber(first[2]) - now
if wait < 0 then wait = 0 end
return {#due, wait}
"""
)

# Claim for this consumer the entries other consumers of the group have held
# longer than the idle time (consumers that died or hung), with the delivery
# count Redis keeps for each; and forget consumers long gone with nothing
# pending.
#
# KEYS: the topic's stream, the group's stream.
# ARGV: group, consumer, min idle ms, count, cursor in each stream, ms after
#       which an idle consumer with nothing pending is forgotten.
# Returns {{cursor, {{id, fields, deliveries}, ...}}, (the same for stream 2)}.
RECLAIM = (
    _HELPERS
    + """
local result = {}
for i = 1, 2 do
  local claimed = redis.call('XAUTOCLAIM', KEYS[i], ARGV[1], ARGV[2], ARGV[3],
                             ARGV[4 + i], 'COUNT', ARGV[4])
  local entries = {}
  for _, entry in ipairs(claimed[2]) do
    local pending = redis.call('XPENDING', KEYS[i], ARGV[1], entry[1], entry[1], 1)
    local deliveries = 1
    if pending[1] then deliveries = pending[1][4] end
    entries[#entries + 1] = {entry[1], entry[2], deliveries}
  end
  result[i] = {claimed[1], entries}
  local forget = tonumber(ARGV[7])
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[i], ARGV[1])) do
    local name = field(consumer, 'name')
    if name ~= ARGV[2] and field(consumer, 'pending') == 0
        and field(consumer, 'idle') > forget then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[i], ARGV[1], name)
    end
  end
end
return result
"""
)

# Keep the entries a live consumer holds from being reclaimed: reset their
# idle time (XCLAIM to itself, JUSTID: the delivery count stays), each only if
# this consumer still owns it.
#
# KEYS: the topic's stream, the group's stream.
# ARGV: group, consumer, how many ids are of the topic's stream, then the ids
#       (those of the topic's stream first).
# Returns how many entries were kept.
TOUCH = """
local in_topic = tonumber(ARGV[3])
local kept = 0
for i = 4, #ARGV do
  local key = KEYS[1]
  if i > 3 + in_topic then key = KEYS[2] end
  local pending = redis.call('XPENDING', key, ARGV[1], ARGV[i], ARGV[i], 1)
  if pending[1] and pending[1][2] == ARGV[2] then
    redis.call('XCLAIM', key, ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""

# A subscription leaves its group: every entry this consumer holds in either
# stream is added again to the group's stream (its attempt count carried) and
# acked, then the consumer is deleted. For the last local subscription of a
# non-durable group, when the group has no other consumer (in another
# process), the group and its keys are removed, and the topic's stream too if
# no group is left.
#
# KEYS: the topic's stream, the group's stream, the group's delayed set.
# ARGV: group, consumer, "1" to remove a non-durable group, then "<1|2>:<id>"
#       for each entry read but never handed out (its delivery is not counted).
# Returns {entries given back, 1 if the group was removed else 0}.
LEAVE = (
    _HELPERS
    + """
local undelivered = {}
for i = 4, #ARGV do undelivered[ARGV[i]] = true end
local given = 0
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    while true do
      local ok, pending = pcall(redis.call, 'XPENDING', KEYS[i], ARGV[1], '-', '+', 500, ARGV[2])
      if not ok or #pending == 0 then break end
      for _, p in ipairs(pending) do
        local id = p[1]
        local entry = redis.call('XRANGE', KEYS[i], id, id)
        if #entry > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
          local fields = entry[1][2]
          local attempts = (tonumber(field(fields, 'attempt')) or 0) + p[4]
          if undelivered[i .. ':' .. id] then attempts = attempts - 1 end
          redis.call('XADD', KEYS[2], '*', unpack(carried(fields, attempts, i .. ':' .. id)))
          given = given + 1
        end
        redis.call('XACK', KEYS[i], ARGV[1], id)
      end
    end
    pcall(redis.call, 'XGROUP', 'DELCONSUMER', KEYS[i], ARGV[1], ARGV[2])
  end
end
if ARGV[3] ~= '1' then return {given, 0} end
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[i], ARGV[1])
    if ok and #consumers > 0 then return {given, 0} end
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  pcall(redis.call, 'XGROUP', 'DESTROY', KEYS[1], ARGV[1])
  if #redis.call('XINFO', 'GROUPS', KEYS[1]) == 0 then redis.call('DEL', KEYS[1]) end
end
redis.call('DEL', KEYS[2], KEYS[3])
return {given, 1}
"""
)

# Retention: trim a stream to the oldest entry any of its groups still needs
# (its oldest pending entry, else its last delivered one); then, if it still
# holds more than max_len, to max_len, and let the groups that had not read
# as far count what is left as unread.
#
# KEYS: the stream. ARGV: max_len, or -1 for no limit.
# Returns {entries trimmed that every group had settled, entries dropped over max_len}.
TRIM = (
    _HELPERS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
local keep = nil
for _, group in ipairs(groups) do
  local need = field(group, 'last-delivered-id')
  local pending = redis.call('XPENDING', KEYS[1], field(group, 'name'))
  if pending[1] > 0 and id_less(pending[2], need) then need = pending[2] end
  if keep == nil or id_less(need, keep) then keep = need end
end
local settled
if keep == nil then
  settled = redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
else
  settled = redis.call('XTRIM', KEYS[1], 'MINID', keep)
end
local max_len = tonumber(ARGV[1])
if max_len < 0 or redis.call('XLEN', KEYS[1]) <= max_len then return {settled, 0} end
local dropped = redis.call('XTRIM', KEYS[1], 'MAXLEN', max_len)
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local first = field(info, 'first-entry')
local read = field(info, 'entries-added') - field(info, 'length')
for _, group in ipairs(groups) do
  local last = field(group, 'last-delivered-id')
  if not first or id_less(last, first[1]) then
    redis.call('XGROUP', 'SETID', KEYS[1], field(group, 'name'), last, 'ENTRIESREAD', read)
  end
end
return {settled, dropped}
"""
)

# What a group has not settled: unread (its lag) and pending in both its
# streams, and waiting in its delayed set. Where Redis cannot tell the lag
# (entries deleted past the group's position), the entries are counted.
#
# KEYS: the topic's stream, the group's stream, the group's delayed set.
# ARGV: group. Returns the count.
BACKLOG = (
    _HELPERS
    + """
local total = redis.call('ZCARD', KEYS[3])
for i = 1, 2 do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[i])) do
      if field(group, 'name') == ARGV[1] then
        total = total + field(group, 'pending')
        local lag = field(group, 'lag')
        if lag then
          total = total + lag
        else
          local start = '(' .. field(group, 'last-delivered-id')
          while true do
            local page = redis.call('XRANGE', KEYS[i], start, '+', 'COUNT', 10000)
            total = total + #page
            if #page < 10000 then break end
            start = '(' .. page[#page][1]
          end
        end
      end
    end
  end
end
return total
"""
)


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


class Scripts:
    """The SHA of each script, and a way to load them all on a server."""

    __slots__ = ()

    publish = _sha(PUBLISH)
    requeue = _sha(REQUEUE)
    move_due = _sha(MOVE_DUE)
    reclaim = _sha(RECLAIM)
    touch = _sha(TOUCH)
    leave = _sha(LEAVE)
    trim = _sha(TRIM)
    backlog = _sha(BACKLOG)

    _SOURCES = (PUBLISH, REQUEUE, MOVE_DUE, RECLAIM, TOUCH, LEAVE, TRIM, BACKLOG)

    @classmethod
    async def load(cls, client: Redis) -> None:
        """Load every script on the server ``client`` talks to (one round trip).

        Raises:
            redis.RedisError: if the server refused or could not be reached.
        """
        async with client.pipeline(transaction=False) as pipe:
            for source in cls._SOURCES:
                pipe.execute_command("SCRIPT", "LOAD", source)
            await pipe.execute()
