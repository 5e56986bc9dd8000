"""Lua scripts for RedisJobStore: every state transition is one atomic script.

Scripts take the key prefix in ARGV[1] and build per-job keys from it (single Redis, not
Cluster). Time comes from the Redis server (TIME), so leases do not depend on host clocks.
Only scalar hash fields are touched here; JSON blobs (params, result, error) are written
as opaque strings from Python, never decoded in Lua (cjson would turn [] into {}).
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

# An event is the job's version plus its visible scalar state: appended to the job's capped
# stream (the sync store's waits read it) and published on one channel for the whole store,
# `<prefix>changes`, as "<id> <version> <status>": each API process has one subscriber that
# fans these out to the requests waiting on the job.
_EVENT = """
local function bump(p, id)
  local jk = p .. 'job:' .. id
  local v = redis.call('HINCRBY', jk, 'version', 1)
  local f = redis.call('HMGET', jk, 'status', 'progress', 'stage')
  redis.call('XADD', p .. 'events:' .. id, 'MAXLEN', '~', 200, '*', 'version', v, 'status', f[1],
             'progress', f[2] or '0', 'stage', f[3] or '')
  redis.call('PUBLISH', p .. 'changes', id .. ' ' .. v .. ' ' .. (f[1] or ''))
  return v
end
-- the webhook outbox: jobs that subscribed to `status` get a due delivery (member id|status) and
-- a copy of the job as of the event (the delivery's payload, whenever it is sent). Every caller
-- runs bump() right after hook(): the copy carries the version that bump gives the job.
local function hook(p, jk, id, status)
  local events = redis.call('HGET', jk, 'webhook_events')
  if events and string.find(events, ',' .. status .. ',', 1, true) then
    redis.call('ZADD', p .. 'webhooks', 'NX', now, id .. '|' .. status)
    local sk = p .. 'hooksnap:' .. id .. '|' .. status
    redis.call('COPY', jk, sk, 'REPLACE')
    redis.call('HINCRBY', sk, 'version', 1)
    redis.call('EXPIRE', sk, 86400)  -- a day: deliveries end within 8 attempts (under 90 min); no longer-lived copy
  end
end
-- retention deletes bytes too: the job's outputs (jobs/<id>/) are due for deletion with its record
local function purge(p, id, retention)
  redis.call('ZADD', p .. 'purge', now + tonumber(retention), 'jobs/' .. id .. '/')
end
local function inactive(p, jk, id)
  redis.call('SREM', p .. 'active:' .. (redis.call('HGET', jk, 'tenant') or ''), id)
end
-- a status change: the per-(kind, status) counts and the tenant's listing indexes per status and
-- per (kind, status) (sorted sets, score 0, ordered by the time-sortable id)
local function move(p, jk, id, kind, from, to)
  local t = p .. 'tenant:' .. (redis.call('HGET', jk, 'tenant') or '')
  if from then
    redis.call('HINCRBY', p .. 'counts', kind .. '|' .. from, -1)
    redis.call('ZREM', t .. ':s:' .. from, id)
    redis.call('ZREM', t .. ':ks:' .. kind .. ':' .. from, id)
  end
  if to then
    redis.call('HINCRBY', p .. 'counts', kind .. '|' .. to, 1)
    redis.call('ZADD', t .. ':s:' .. to, 0, id)
    redis.call('ZADD', t .. ':ks:' .. kind .. ':' .. to, 0, id)
  end
end
"""

# KEYS: none. ARGV: prefix, id, tenant, kind, created_ms, idem_key|'', retention, fingerprint|'', then
# field/value pairs. The key's value is "<job id>|<fingerprint>" (a bare id: made before fingerprints).
# Returns {1, id} when created, {0, existing id, its fingerprint} for a key in use.
CREATE = _EVENT + """
local p, id, tenant, kind = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local idem = ARGV[6]
if idem ~= '' then
  local existing = redis.call('GET', p .. 'idem:' .. tenant .. ':' .. idem)
  if existing then
    local sep = string.find(existing, '|', 1, true)
    local eid, efp = existing, ''
    if sep then eid, efp = string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1) end
    if redis.call('EXISTS', p .. 'job:' .. eid) == 1 then return {0, eid, efp} end
  end
  redis.call('SET', p .. 'idem:' .. tenant .. ':' .. idem, id .. '|' .. ARGV[8], 'EX', tonumber(ARGV[7]))
end
local jk = p .. 'job:' .. id
local fields = {}
for i = 9, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', jk, unpack(fields))
if idem ~= '' then redis.call('HSET', jk, 'idem_key', idem) end
redis.call('ZADD', p .. 'queue:' .. kind, tonumber(ARGV[5]), id)
redis.call('ZADD', p .. 'tenant:' .. tenant, 0, id)
redis.call('ZADD', p .. 'tenant:' .. tenant .. ':k:' .. kind, 0, id)
redis.call('SADD', p .. 'active:' .. tenant, id)
move(p, jk, id, kind, nil, 'queued')
bump(p, id)
return {1, id}
"""

# ARGV: prefix, id, worker, lease_s
CLAIM = _NOW + _EVENT + """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local f = redis.call('HMGET', jk, 'status', 'kind', 'attempt')
if not f[1] then return 'not_found' end
if f[1] == 'canceled' then return 'canceled' end
if f[1] ~= 'queued' then return 'not_queued' end
redis.call('HSET', jk, 'status', 'running', 'attempt', tonumber(f[3]) + 1, 'started_at', now,
           'worker', ARGV[3], 'stage', 'starting', 'progress', 0, 'lease_until', now + tonumber(ARGV[4]))
redis.call('ZADD', p .. 'leases', now + tonumber(ARGV[4]), id)
redis.call('ZREM', p .. 'queue:' .. f[2], id)
move(p, jk, id, f[2], 'queued', 'running')
hook(p, jk, id, 'running')
bump(p, id)
return 'claimed'
"""

# ARGV: prefix, id, attempt, lease_s, progress|'', stage|'', result_json|'', then field, value pairs
# (worker-owned fields: logs, metrics). Returns 1 = stop.
HEARTBEAT = _NOW + _EVENT + """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local f = redis.call('HMGET', jk, 'status', 'attempt', 'cancel_requested')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return 1 end
redis.call('ZADD', p .. 'leases', now + tonumber(ARGV[4]), id)
redis.call('HSET', jk, 'lease_until', now + tonumber(ARGV[4]))
if ARGV[5] ~= '' then
  redis.call('HSET', jk, 'progress', ARGV[5], 'stage', ARGV[6])
  if ARGV[7] ~= '' then redis.call('HSET', jk, 'result', ARGV[7]) end
end
for i = 8, #ARGV, 2 do redis.call('HSET', jk, ARGV[i], ARGV[i + 1]) end
if ARGV[5] ~= '' or #ARGV >= 8 then bump(p, id) end
if f[3] == '1' then return 1 end
return 0
"""

# ARGV: prefix, id, attempt, status, result_json, error_json, retention_s, model_profile|'', then field,
# value pairs (worker-owned fields: logs, metrics, weights_fingerprint). Returns 1 when done.
FINISH = _NOW + _EVENT + """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local f = redis.call('HMGET', jk, 'status', 'attempt', 'kind', 'progress')
if f[1] ~= 'running' or f[2] ~= ARGV[3] then return 0 end
local progress = f[4]
if ARGV[4] == 'succeeded' then progress = 1 end
redis.call('HSET', jk, 'status', ARGV[4], 'finished_at', now, 'error', ARGV[6], 'stage', ARGV[4], 'progress', progress)
if ARGV[5] ~= '' then redis.call('HSET', jk, 'result', ARGV[5]) end  -- none: a partial result stays
if ARGV[8] ~= '' then redis.call('HSET', jk, 'model_profile', ARGV[8]) end
for i = 9, #ARGV, 2 do redis.call('HSET', jk, ARGV[i], ARGV[i + 1]) end
redis.call('ZREM', p .. 'leases', id)
inactive(p, jk, id)
move(p, jk, id, f[3], 'running', ARGV[4])
hook(p, jk, id, ARGV[4])
bump(p, id)
redis.call('EXPIRE', jk, tonumber(ARGV[7]))
redis.call('EXPIRE', p .. 'events:' .. id, tonumber(ARGV[7]))
purge(p, id, ARGV[7])
return 1
"""

# ARGV: prefix, id, retention_s. Returns the status after the call, or false.
CANCEL = _NOW + _EVENT + """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local f = redis.call('HMGET', jk, 'status', 'kind', 'cancel_requested')
if not f[1] then return false end
if f[1] == 'queued' then
  redis.call('HSET', jk, 'status', 'canceled', 'finished_at', now, 'stage', 'canceled',
             'cancel_requested', 1, 'error', '{"code": "canceled", "message": "canceled by the client before it started"}')
  redis.call('ZREM', p .. 'queue:' .. f[2], id)
  inactive(p, jk, id)
  move(p, jk, id, f[2], 'queued', 'canceled')
  hook(p, jk, id, 'canceled')
  bump(p, id)
  redis.call('EXPIRE', jk, tonumber(ARGV[3]))
  redis.call('EXPIRE', p .. 'events:' .. id, tonumber(ARGV[3]))
  purge(p, id, ARGV[3])
  return 'canceled'
end
if f[1] == 'running' and f[3] ~= '1' then
  redis.call('HSET', jk, 'cancel_requested', 1, 'stage', 'canceling')
  bump(p, id)
end
return f[1]
"""

# ARGV: prefix, retention_s, limit, worker_lost_error_json. Returns re-queued ids.
REAP = _NOW + _EVENT + """
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local requeued = {}
for _, id in ipairs(ids) do
  redis.call('ZREM', p .. 'leases', id)
  local jk = p .. 'job:' .. id
  local f = redis.call('HMGET', jk, 'status', 'attempt', 'max_attempts', 'kind', 'cancel_requested', 'created_at')
  if f[1] == 'running' then
    local final = nil
    if f[5] == '1' then
      final = 'canceled'
      redis.call('HSET', jk, 'error', '{"code": "canceled", "message": "canceled by the client"}')
    elseif tonumber(f[2]) >= tonumber(f[3]) then
      final = 'failed'
      redis.call('HSET', jk, 'error', ARGV[4])
    end
    if final then
      redis.call('HSET', jk, 'status', final, 'finished_at', now, 'stage', final)
      inactive(p, jk, id)
      move(p, jk, id, f[4], 'running', final)
      hook(p, jk, id, final)
      redis.call('EXPIRE', jk, tonumber(ARGV[2]))
      redis.call('EXPIRE', p .. 'events:' .. id, tonumber(ARGV[2]))
      purge(p, id, ARGV[2])
    else
      redis.call('HSET', jk, 'status', 'queued', 'stage', 'requeued after lost worker', 'worker', '', 'progress', 0)
      redis.call('ZADD', p .. 'queue:' .. f[4], math.floor(tonumber(f[6]) * 1000), id)
      move(p, jk, id, f[4], 'running', 'queued')
      requeued[#requeued + 1] = id
    end
    bump(p, id)
  end
end
return requeued
"""


# ARGV: prefix, id. A queued job never claimed leaves no trace: its hash, events, queue entry,
# indexes, counts and the idempotency key that points at it. Returns 1 when removed.
DISCARD = _EVENT + """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local f = redis.call('HMGET', jk, 'status', 'kind', 'attempt', 'tenant', 'idem_key')
if f[1] ~= 'queued' or f[3] ~= '0' then return 0 end
redis.call('ZREM', p .. 'queue:' .. f[2], id)
local t = p .. 'tenant:' .. f[4]
redis.call('ZREM', t, id)
redis.call('ZREM', t .. ':k:' .. f[2], id)
inactive(p, jk, id)
move(p, jk, id, f[2], 'queued', nil)
if f[5] then
  local ik = p .. 'idem:' .. f[4] .. ':' .. f[5]
  local v = redis.call('GET', ik)
  if v == id or (v and string.sub(v, 1, #id + 1) == id .. '|') then redis.call('DEL', ik) end
end
redis.call('DEL', jk, p .. 'events:' .. id, p .. 'sent:' .. id)
redis.call('PUBLISH', p .. 'changes', id .. ' 0 ')
return 1
"""


# ARGV: prefix, id, attempt. A stopping worker hands its job back. Returns 1 when re-queued.
RELEASE = _NOW + _EVENT + """
local p, id = ARGV[1], ARGV[2]
local jk = p .. 'job:' .. id
local f = redis.call('HMGET', jk, 'status', 'attempt', 'kind', 'cancel_requested', 'created_at')
if f[1] ~= 'running' or f[2] ~= ARGV[3] or f[4] == '1' then return 0 end
redis.call('ZREM', p .. 'leases', id)
redis.call('HSET', jk, 'status', 'queued', 'stage', 'handed back by a stopping worker', 'worker', '', 'progress', 0)
redis.call('HINCRBY', jk, 'max_attempts', 1)
redis.call('ZADD', p .. 'queue:' .. f[3], math.floor(tonumber(f[5]) * 1000), id)
move(p, jk, id, f[3], 'running', 'queued')
bump(p, id)
return 1
"""


# Per-tenant byte ledgers (stored-bytes quotas). ARGV: prefix, ledger, tenant, item, bytes, ttl_s, limit
# (0 = none). Entries whose time ran out are dropped first; then the item is added unless that would
# pass the limit. Returns {1|0, bytes used (before this item), seconds until the oldest entry expires}.
CHARGE = _NOW + """
local base = ARGV[1] .. 'bytes:' .. ARGV[2] .. ':' .. ARGV[3]
local z, sizes, total = base, base .. ':sizes', base .. ':total'
local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now, 'LIMIT', 0, 1000)
for _, m in ipairs(gone) do
  redis.call('DECRBY', total, tonumber(redis.call('HGET', sizes, m) or '0'))
  redis.call('HDEL', sizes, m)
  redis.call('ZREM', z, m)
end
local used = tonumber(redis.call('GET', total) or '0')
local first = redis.call('ZRANGE', z, 0, 0, 'WITHSCORES')
local wait = 0
if first[2] then wait = math.max(0, tonumber(first[2]) - now) end
local add, limit = tonumber(ARGV[5]), tonumber(ARGV[7])
local previous = tonumber(redis.call('HGET', sizes, ARGV[4]) or '0')
if limit > 0 and used - previous + add > limit then return {0, used, tostring(wait)} end
redis.call('ZADD', z, now + tonumber(ARGV[6]), ARGV[4])
redis.call('HSET', sizes, ARGV[4], add)
redis.call('INCRBY', total, add - previous)
return {1, used, tostring(wait)}
"""

# ARGV: prefix, ledger, tenant, item
RELEASE_BYTES = """
local base = ARGV[1] .. 'bytes:' .. ARGV[2] .. ':' .. ARGV[3]
local size = redis.call('HGET', base .. ':sizes', ARGV[4])
if size then
  redis.call('DECRBY', base .. ':total', tonumber(size))
  redis.call('HDEL', base .. ':sizes', ARGV[4])
  redis.call('ZREM', base, ARGV[4])
end
return 0
"""


# name -> source: both drivers (sync and asyncio) register these same strings
SCRIPTS = {"CREATE": CREATE, "CLAIM": CLAIM, "HEARTBEAT": HEARTBEAT, "FINISH": FINISH, "CANCEL": CANCEL, "REAP": REAP,
           "RELEASE": RELEASE, "DISCARD": DISCARD, "CHARGE": CHARGE, "RELEASE_BYTES": RELEASE_BYTES}
