"""The cluster's state in Redis: the key layout and the Lua scripts that change it atomically.

Owns every Redis key the cluster uses (all under one prefix, default "omost") and the only code
that writes them. Each state change is one Lua script, so it is atomic on the server: two
workers can never claim one job, a cancel can never race a claim, and a job ends exactly once.
Times come from the server's own clock (`TIME`), so machines with skewed clocks agree on leases.

    {p}:job:{id}           hash: spec (the job as JSON), kind, owner, tag, state
                           (queued|running|finished|failed|cancelled), attempt (claims so far),
                           starts, worker, cancel (a reason, once asked)
    {p}:q:{kind}:{owner}   list: that owner's queued job ids, oldest first
    {p}:rr:{kind}          list: owners with queued jobs, each once, in round-robin order
    {p}:lease              sorted set: running job id -> lease deadline (server ms)
    {p}:ev:{id}            stream: the job's events, in order (fields type, data, image)
    {p}:tag:{tag}          set: ids of the unfinished jobs carrying that tag
    {p}:wake:{kind}        list: a doorbell workers block on (BLPOP) while nothing is queued
    {p}:workers            set of worker ids; {p}:worker:{id} a hash that expires unless
                           heartbeated (device, kinds, models, status, rate)
    {p}:stats              hash: measured seconds per job, per kind (for ETAs)

Fairness (DESIGN "Queue", cluster-wide): a claim pops the owner at the head of `rr`, takes that
owner's oldest job and, if the owner has more, puts the owner back at the tail. So with W
workers, a user with ten queued jobs delays another user's single job by at most one job per
worker, whichever bot process submitted them. A job whose lease ran out (its worker died) goes
back to the head of its owner's queue and the owner to the head of `rr`: it was already owed
its start, so it runs next.

Fencing: every claim increments `attempt`; a worker's writes (events, renewals, the end) carry
the attempt they were claimed with and are refused once the job was taken over, so a worker
that was only slow, not dead, can never add to a stream another worker now owns.

This module must not import the bot; it knows jobs only as ids, owners, tags and opaque JSON.
"""

from __future__ import annotations

# Shared by every script: the prefix is ARGV[1]; helpers for time, requeueing and ending a job.
_PRELUDE = r"""
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function job_key(id) return P .. ':job:' .. id end
local function wake(kind)
  local k = P .. ':wake:' .. kind
  redis.call('LPUSH', k, '1')
  redis.call('LTRIM', k, 0, 63)
end
local function finalize(id, state, fields, ttl)
  local jk = job_key(id)
  redis.call('XADD', P .. ':ev:' .. id, '*', unpack(fields))
  redis.call('HSET', jk, 'state', state)
  redis.call('HDEL', jk, 'worker')
  redis.call('ZREM', P .. ':lease', id)
  local tag = redis.call('HGET', jk, 'tag')
  if tag and tag ~= '' then redis.call('SREM', P .. ':tag:' .. tag, id) end
  redis.call('EXPIRE', jk, ttl)
  redis.call('EXPIRE', P .. ':ev:' .. id, ttl)
end
local function requeue_front(id)
  local jk = job_key(id)
  local kind = redis.call('HGET', jk, 'kind')
  local owner = redis.call('HGET', jk, 'owner')
  redis.call('HSET', jk, 'state', 'queued')
  redis.call('HDEL', jk, 'worker')
  redis.call('ZREM', P .. ':lease', id)
  redis.call('LPUSH', P .. ':q:' .. kind .. ':' .. owner, id)
  local rr = P .. ':rr:' .. kind
  redis.call('LREM', rr, 0, owner)
  redis.call('LPUSH', rr, owner)
  wake(kind)
end
local function cancel_one(id, reason, ttl)
  local jk = job_key(id)
  local state = redis.call('HGET', jk, 'state')
  if state == 'queued' then
    local kind = redis.call('HGET', jk, 'kind')
    local owner = redis.call('HGET', jk, 'owner')
    local q = P .. ':q:' .. kind .. ':' .. owner
    redis.call('LREM', q, 0, id)
    if redis.call('LLEN', q) == 0 then redis.call('LREM', P .. ':rr:' .. kind, 0, owner) end
    finalize(id, 'cancelled', {'type', 'Cancelled', 'data', cjson.encode({reason = reason})}, ttl)
    return 1
  elseif state == 'running' then
    redis.call('HSET', jk, 'cancel', reason)
    return 2
  end
  return 0
end
local function fenced(id, worker, attempt)
  local h = redis.call('HMGET', job_key(id), 'state', 'worker', 'attempt')
  return h[1] == 'running' and h[2] == worker and h[3] == attempt
end
"""

# ARGV: prefix, id, kind, owner, tag, spec. 1: queued now; 0: already in the cluster (attach).
SUBMIT = (
    _PRELUDE
    + r"""
local id, kind, owner, tag = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local jk = job_key(id)
if redis.call('EXISTS', jk) == 1 then return 0 end
redis.call('HSET', jk, 'spec', ARGV[6], 'kind', kind, 'owner', owner, 'tag', tag, 'state', 'queued',
           'attempt', 0, 'starts', 0, 'created_ms', now_ms())
if redis.call('RPUSH', P .. ':q:' .. kind .. ':' .. owner, id) == 1 then
  redis.call('RPUSH', P .. ':rr:' .. kind, owner)
end
if tag ~= '' then redis.call('SADD', P .. ':tag:' .. tag, id) end
wake(kind)
return 1
"""
)

# ARGV: prefix, worker, lease_ms, kind... -> {id, spec, attempt} or nil. Round-robin (see above).
CLAIM = (
    _PRELUDE
    + r"""
local worker, lease_ms = ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
  local rr = P .. ':rr:' .. ARGV[i]
  while true do
    local owner = redis.call('LPOP', rr)
    if not owner then break end
    local q = P .. ':q:' .. ARGV[i] .. ':' .. owner
    local id = redis.call('LPOP', q)
    if redis.call('LLEN', q) > 0 then redis.call('RPUSH', rr, owner) end
    if id and redis.call('HGET', job_key(id), 'state') == 'queued' then
      local jk = job_key(id)
      local attempt = redis.call('HINCRBY', jk, 'attempt', 1)
      redis.call('HSET', jk, 'state', 'running', 'worker', worker, 'batch', 0)
      redis.call('ZADD', P .. ':lease', now_ms() + lease_ms, id)
      return {id, redis.call('HGET', jk, 'spec'), tostring(attempt)}
    end
  end
end
return false
"""
)

# ARGV: prefix, id, worker, attempt, lease_ms -> {held (0/1), cancel reason or ''}.
RENEW = (
    _PRELUDE
    + r"""
local id = ARGV[2]
if not fenced(id, ARGV[3], ARGV[4]) then return {0, ''} end
redis.call('ZADD', P .. ':lease', 'XX', now_ms() + tonumber(ARGV[5]), id)
return {1, redis.call('HGET', job_key(id), 'cancel') or ''}
"""
)

# ARGV: prefix, id, worker, attempt, lease_ms, ttl, final state or '', batch number, then per
# event: n, n field/value pairs. A batch number at or below the last applied one was applied
# already (a retry after a lost reply) and is skipped. A Started event's attempt is rewritten to
# count starts across the cluster.
PUBLISH = (
    _PRELUDE
    + r"""
local id = ARGV[2]
if not fenced(id, ARGV[3], ARGV[4]) then return 0 end
local jk = job_key(id)
local final, ttl = ARGV[7], tonumber(ARGV[6])
local seq = tonumber(ARGV[8])
if seq <= tonumber(redis.call('HGET', jk, 'batch') or '0') then return 1 end
redis.call('HSET', jk, 'batch', seq)
local i = 9
local events = {}
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local fields = {}
  for j = 1, n * 2 do fields[j] = ARGV[i + j] end
  if fields[2] == 'Started' then
    local starts = redis.call('HINCRBY', jk, 'starts', 1)
    fields[4] = cjson.encode({attempt = starts})
  end
  events[#events + 1] = fields
  i = i + n * 2 + 1
end
local last = #events
if final ~= '' then last = last - 1 end
for k = 1, last do redis.call('XADD', P .. ':ev:' .. id, '*', unpack(events[k])) end
if final ~= '' then
  finalize(id, final, events[#events], ttl)
else
  redis.call('ZADD', P .. ':lease', 'XX', now_ms() + tonumber(ARGV[5]), id)
end
return 1
"""
)

# ARGV: prefix, id, worker, attempt: hand a running job back (a worker shutting down).
RELEASE = (
    _PRELUDE
    + r"""
if not fenced(ARGV[2], ARGV[3], ARGV[4]) then return 0 end
requeue_front(ARGV[2])
return 1
"""
)

# ARGV: prefix, ttl -> how many expired leases were taken back (requeued or, if cancel was
# asked meanwhile, ended as Cancelled).
REAP = (
    _PRELUDE
    + r"""
local expired = redis.call('ZRANGEBYSCORE', P .. ':lease', '-inf', now_ms(), 'LIMIT', 0, 100)
for _, id in ipairs(expired) do
  local jk = job_key(id)
  local state = redis.call('HGET', jk, 'state')
  redis.call('ZREM', P .. ':lease', id)
  if state == 'running' then
    local reason = redis.call('HGET', jk, 'cancel')
    if reason then
      finalize(id, 'cancelled', {'type', 'Cancelled', 'data', cjson.encode({reason = reason})},
               tonumber(ARGV[2]))
    else
      requeue_front(id)
    end
  end
end
return #expired
"""
)

# ARGV: prefix, id, reason, ttl -> 1 cancelled while queued, 2 asked of its worker, 0 not in flight.
CANCEL = (
    _PRELUDE
    + r"""
return cancel_one(ARGV[2], ARGV[3], tonumber(ARGV[4]))
"""
)

# ARGV: prefix, tag, reason, ttl -> how many unfinished jobs with that tag were cancelled.
CANCEL_TAGGED = (
    _PRELUDE
    + r"""
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', P .. ':tag:' .. ARGV[2])) do
  if cancel_one(id, ARGV[3], tonumber(ARGV[4])) > 0 then n = n + 1 end
end
return n
"""
)

# ARGV: prefix, id... -> per id its 1-based place in the cluster's round-robin order (what CLAIM
# will do if nothing else arrives), 0 if not queued. A job at index i of its owner's queue starts
# after i jobs of every owner before it in `rr` (i + 1 of owners ahead of its own) and i of its own.
POSITIONS = (
    _PRELUDE
    + r"""
local out = {}
local orders = {}
for a = 2, #ARGV do
  local id = ARGV[a]
  local h = redis.call('HMGET', job_key(id), 'state', 'kind', 'owner')
  local place = 0
  if h[1] == 'queued' then
    local kind, owner = h[2], h[3]
    local order = orders[kind]
    if not order then
      order = {}
      for _, o in ipairs(redis.call('LRANGE', P .. ':rr:' .. kind, 0, -1)) do
        order[#order + 1] = {o, redis.call('LLEN', P .. ':q:' .. kind .. ':' .. o)}
      end
      orders[kind] = order
    end
    local index = redis.call('LPOS', P .. ':q:' .. kind .. ':' .. owner, id)
    if index then
      local ahead, before = 0, 1
      for _, entry in ipairs(order) do
        if entry[1] == owner then
          before = 0
          ahead = ahead + index
        else
          ahead = ahead + math.min(entry[2], index + before)
        end
      end
      place = ahead + 1
    end
  end
  out[#out + 1] = place
end
return out
"""
)

# ARGV: prefix -> {queued compose, queued render, running}.
COUNTS = (
    _PRELUDE
    + r"""
local out = {}
for _, kind in ipairs({'compose', 'render'}) do
  local n = 0
  for _, o in ipairs(redis.call('LRANGE', P .. ':rr:' .. kind, 0, -1)) do
    n = n + redis.call('LLEN', P .. ':q:' .. kind .. ':' .. o)
  end
  out[#out + 1] = n
end
out[#out + 1] = redis.call('ZCARD', P .. ':lease')
return out
"""
)


class Keys:
    """Key names under one prefix (the scripts build the same names from ARGV[1])."""

    def __init__(self, prefix: str = "omost") -> None:
        self.prefix = prefix

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}:ev:{job_id}"

    def wake(self, kind: str) -> str:
        return f"{self.prefix}:wake:{kind}"

    @property
    def workers(self) -> str:
        return f"{self.prefix}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def stats(self) -> str:
        return f"{self.prefix}:stats"
