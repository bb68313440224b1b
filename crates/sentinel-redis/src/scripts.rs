//! The Lua scripts: every change to a name is one of them, one atomic step on the server, on
//! Redis's clock (`TIME`).
//!
//! A name is held in one of two shapes, never both: an exclusive lock is the string key
//! `lock:NAME` (its lease, which Redis expires: the layout of every earlier version), and shared
//! holds or semaphore permits are the hash `holds:NAME`, one field per hold (its fencing token →
//! its lease as JSON) and, for a semaphore, the field `limit`. Redis cannot expire one field, so
//! every script that writes drops the holds whose lease has ended before it decides, and the hash
//! itself expires with its last hold. Both shapes draw their tokens from the one counter
//! `token:NAME`, so a name moving between them never reuses a token.
//!
//! `intent:NAME` is the one-slot reservation that keeps waiting claims from being starved without a
//! queue, by the lock table's rule ([`reservation_ms`]): a claim refused because its kind conflicts
//! or its permits do not fit, and that says it comes back (its attempt's `wait`), records it (its
//! worker, kind and permits), expiring once that pause and a second have passed; each later refusal
//! of the same worker renews it, and its last attempt (or a fail-fast claim), which will not come
//! back, ends it. While another worker's reservation stands, claims that would fit are refused too,
//! unless forced. It ends when its owner is granted, releases, or it runs out. An exclusive claim
//! refused by an exclusive lock records none (it only keeps or ends one it already has), so names
//! used only as locks behave as before. Its value is the same JSON as in the version that reserved
//! for the claim's TTL, and only its key's expiry differs, so a reservation either version wrote is
//! read alike.
//!
//! [`reservation_ms`]: sentinel_core::table::reservation_ms

use std::sync::LazyLock;

use redis::Script;

/// Redis's clock in milliseconds, read inside a script.
const NOW: &str = "local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
";

/// Raises the counter `c` to `token` if it fell below (evicted, or a restart without
/// persistence): the high-water mark a lease or a holder still knows. `token` may be nil.
const LIFT: &str = "local function lift(c, token)
  if token and token > (tonumber(redis.call('GET', c)) or 0) then redis.call('SET', c, token) end
end
";

/// Whether the lease `cur` is the grant ARGV[1] (worker) and ARGV[2] (token or '') name.
const IS_GRANT: &str = "local function is_grant(cur)
  return cur.worker_id == ARGV[1] and (ARGV[2] == '' or cur.fencing_token == tonumber(ARGV[2]))
end
";

/// The holds of a name's hash `k`: `load` drops those whose lease has ended (a lease lives while
/// `now` is before its end, as a key with `PX` does) and answers the others, oldest grant first,
/// and the semaphore's limit; `touch` keeps the hash until the last lease ends (or deletes it,
/// limit included, when no hold is left); `drop` removes the `i`th hold.
const HOLDS: &str = "local function load(k)
  local raw = redis.call('HGETALL', k)
  local list, limit = {}, nil
  for i = 1, #raw, 2 do
    if raw[i] == 'limit' then
      limit = tonumber(raw[i + 1])
    else
      local h = cjson.decode(raw[i + 1])
      if h.heartbeat_ms + h.ttl_ms > now then
        table.insert(list, h)
      else
        redis.call('HDEL', k, raw[i])
      end
    end
  end
  table.sort(list, function(a, b) return a.fencing_token < b.fencing_token end)
  if #list == 0 then
    if #raw > 0 then redis.call('DEL', k) end
    limit = nil
  end
  return list, limit
end
local function touch(k, list)
  if #list == 0 then
    redis.call('DEL', k)
    return
  end
  local last = 0
  for _, h in ipairs(list) do last = math.max(last, h.heartbeat_ms + h.ttl_ms) end
  redis.call('PEXPIREAT', k, last)
end
local function put(k, list, h)
  redis.call('HSET', k, tostring(h.fencing_token), cjson.encode(h))
  touch(k, list)
end
local function drop(k, list, i)
  redis.call('HDEL', k, tostring(list[i].fencing_token))
  table.remove(list, i)
end
";

/// KEYS: lock, counter, holds, intent. ARGV: worker, node, ttl ms, takeover (none|stale|any),
/// readopt (0|1), task info JSON, nonce, kind (exclusive|shared|semaphore), limit or '', permits,
/// how long a refusal reserves the name in ms (0: this attempt is the claim's last). Answers
/// {answer, value, now, previous lease or ''}: `granted` or `adopted` with the lease; `held` with the holder (or, for a reservation, a
/// lease-shaped record of it with `reserved` set); `other` with the kind the name is held as
/// and, for a semaphore, its limit as `previous`; `limit` with the semaphore's limit.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{HOLDS}
local worker, node, ttl, takeover = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local nonce, kind, limit = ARGV[7], ARGV[8], tonumber(ARGV[9])
local permits, reserve = tonumber(ARGV[10]), tonumber(ARGV[11])
local raw = redis.call('GET', KEYS[1])
local cur = raw and cjson.decode(raw)
-- A retry of this very attempt whose answer was lost: the grant is already ours.
if cur and cur.nonce == nonce then return {{'granted', raw, now, ''}} end
local list, lim = load(KEYS[3])
for _, h in ipairs(list) do
  if h.nonce == nonce then return {{'granted', cjson.encode(h), now, ''}} end
end
local ri = redis.call('GET', KEYS[4])
local intent = ri and cjson.decode(ri)
local ours = intent and intent.worker_id == worker
local reserved = intent and not ours and takeover ~= 'any'
local function held(v) return {{'held', v, now, ''}} end
local function reservation()
  return held(cjson.encode({{worker_id = intent.worker_id, node_id = intent.node_id,
    fencing_token = 0, claimed_ms = intent.since_ms, heartbeat_ms = intent.since_ms,
    ttl_ms = intent.until_ms - intent.since_ms, reserved = intent.kind,
    permits = intent.permits}}))
end
-- Refused for its kind or permits: a claim that comes back reserves the name until then if
-- nobody else has; one that does not ends its own reservation.
local function refused(v)
  if reserved then return held(v) end
  if reserve > 0 then
    local same = ours and intent.kind == kind and intent.permits == permits
    local since = same and intent.since_ms or now
    redis.call('SET', KEYS[4], cjson.encode({{worker_id = worker, node_id = node, kind = kind,
      permits = permits, since_ms = since, until_ms = now + reserve}}), 'PX', reserve)
  elseif ours then
    redis.call('DEL', KEYS[4])
  end
  return held(v)
end
local function granted(answer, v, previous)
  if ours then redis.call('DEL', KEYS[4]) end
  return {{answer, v, now, previous}}
end
-- A fresh token: never at or below floor (a lease this grant replaces) or a live hold's, even
-- if the counter was lost.
local function token(floor)
  local t = redis.call('INCR', KEYS[2])
  for _, h in ipairs(list) do floor = math.max(floor, h.fencing_token) end
  if t <= floor then
    t = floor + 1
    redis.call('SET', KEYS[2], t)
  end
  return t
end
local function grant_lock(previous, floor)
  local v = cjson.encode({{worker_id = worker, node_id = node, fencing_token = token(floor),
    claimed_ms = now, heartbeat_ms = now, ttl_ms = ttl, task_info = cjson.decode(ARGV[6]),
    nonce = nonce}})
  if previous == '' then
    redis.call('SET', KEYS[1], v, 'NX', 'PX', ttl)
  else
    redis.call('SET', KEYS[1], v, 'PX', ttl)
  end
  return granted('granted', v, previous)
end
if kind == 'exclusive' then
  if #list > 0 then
    if lim then return {{'other', 'semaphore', now, tostring(lim)}} end
    if takeover ~= 'any' then return refused(cjson.encode(list[1])) end
    local previous = cjson.encode(list[1])
    local floor = list[#list].fencing_token
    redis.call('DEL', KEYS[3])
    list = {{}}
    return grant_lock(previous, floor)
  end
  if not cur then
    if reserved then return reservation() end
    return grant_lock('', 0)
  end
  if ARGV[5] == '1' and cur.worker_id == worker then
    cur.node_id = node
    cur.heartbeat_ms = now
    cur.ttl_ms = ttl
    cur.task_info = cjson.decode(ARGV[6])
    local v = cjson.encode(cur)
    redis.call('SET', KEYS[1], v, 'PX', ttl)
    return granted('adopted', v, '')
  end
  if takeover == 'any' then return grant_lock(raw, cur.fencing_token) end
  -- A claim that already waits keeps (or, on its last attempt, ends) its reservation.
  if ours then return refused(raw) end
  return held(raw)
end
local shared = kind == 'shared'
local previous, floor = '', 0
if cur then
  if not shared then return {{'other', 'exclusive', now, ''}} end
  if takeover ~= 'any' then return refused(raw) end
  previous, floor = raw, cur.fencing_token
  redis.call('DEL', KEYS[1])
end
if #list > 0 then
  if lim and shared then return {{'other', 'semaphore', now, tostring(lim)}} end
  if not lim and not shared then return {{'other', 'shared', now, ''}} end
  if lim and lim ~= limit then return {{'limit', tostring(lim), now, ''}} end
end
if ARGV[5] == '1' then
  for _, h in ipairs(list) do
    if h.worker_id == worker and h.permits == permits and h.shared == shared then
      h.node_id = node
      h.heartbeat_ms = now
      h.ttl_ms = ttl
      h.task_info = cjson.decode(ARGV[6])
      put(KEYS[3], list, h)
      return granted('adopted', cjson.encode(h), '')
    end
  end
end
local used = 0
for _, h in ipairs(list) do used = used + h.permits end
if not shared and used + permits > limit then
  if takeover ~= 'any' then return refused(cjson.encode(list[1])) end
  -- Forced: the oldest holds make room.
  while used + permits > limit do
    if previous == '' then previous = cjson.encode(list[1]) end
    floor = math.max(floor, list[1].fencing_token)
    used = used - list[1].permits
    drop(KEYS[3], list, 1)
  end
end
if reserved then return reservation() end
local h = {{worker_id = worker, node_id = node, fencing_token = token(floor), claimed_ms = now,
  heartbeat_ms = now, ttl_ms = ttl, task_info = cjson.decode(ARGV[6]), nonce = nonce,
  permits = permits, shared = shared}}
table.insert(list, h)
if limit then redis.call('HSET', KEYS[3], 'limit', limit) end
put(KEYS[3], list, h)
return granted('granted', cjson.encode(h), previous)"
    ))
});

/// KEYS: lock, counter, holds. ARGV: worker, token or '', new TTL ms or ''. Answers
/// {renewed|gone|other|lost, lease or '', now}: `other` names the lock's holder, `lost` the
/// first hold of a name whose holds are not this worker's. Without a token, every hold of the
/// worker is renewed.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{IS_GRANT}{LIFT}{HOLDS}
lift(KEYS[2], tonumber(ARGV[2]))
local raw = redis.call('GET', KEYS[1])
if raw then
  local cur = cjson.decode(raw)
  lift(KEYS[2], cur.fencing_token)
  if not is_grant(cur) then return {{'other', raw, now}} end
  cur.heartbeat_ms = now
  if ARGV[3] ~= '' then cur.ttl_ms = tonumber(ARGV[3]) end
  local v = cjson.encode(cur)
  redis.call('SET', KEYS[1], v, 'XX', 'PX', cur.ttl_ms)
  return {{'renewed', v, now}}
end
local list = load(KEYS[3])
if #list == 0 then return {{'gone', '', now}} end
lift(KEYS[2], list[#list].fencing_token)
local first = nil
for _, h in ipairs(list) do
  if is_grant(h) then
    h.heartbeat_ms = now
    if ARGV[3] ~= '' then h.ttl_ms = tonumber(ARGV[3]) end
    local v = cjson.encode(h)
    redis.call('HSET', KEYS[3], tostring(h.fencing_token), v)
    first = first or v
  end
end
if not first then return {{'lost', cjson.encode(list[1]), now}} end
touch(KEYS[3], list)
return {{'renewed', first, now}}"
    ))
});

/// KEYS: lock, counter, this release's receipt, holds, intent. ARGV: worker, token or '', force
/// (0|1), receipt TTL ms. Answers {released|free|other, lease or '', now}. The worker's own
/// reservation ends too; a worker that only had one is not refused.
///
/// A release that finds its own receipt is the retry of one whose answer was lost: it answers
/// what the first run freed, even if the lock has been claimed again since. Without a token
/// every hold of the worker is given back (with `force`, every hold), and the receipt and the
/// answer name the first.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{IS_GRANT}{LIFT}{HOLDS}
local done = redis.call('GET', KEYS[3])
if done then return {{'released', done, now}} end
lift(KEYS[2], tonumber(ARGV[2]))
local ri = redis.call('GET', KEYS[5])
local reserved = ri and cjson.decode(ri).worker_id == ARGV[1]
if reserved then redis.call('DEL', KEYS[5]) end
local function refused(v)
  if reserved then return {{'free', '', now}} end
  return {{'other', v, now}}
end
local raw = redis.call('GET', KEYS[1])
if raw then
  local cur = cjson.decode(raw)
  if ARGV[3] ~= '1' and not is_grant(cur) then return refused(raw) end
  lift(KEYS[2], cur.fencing_token)
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[3], raw, 'PX', ARGV[4])
  return {{'released', raw, now}}
end
local list = load(KEYS[4])
if #list == 0 then return {{'free', '', now}} end
lift(KEYS[2], list[#list].fencing_token)
local first = nil
for i = #list, 1, -1 do
  if ARGV[3] == '1' or is_grant(list[i]) then
    first = cjson.encode(list[i])
    drop(KEYS[4], list, i)
  end
end
if not first then return refused(cjson.encode(list[1])) end
touch(KEYS[4], list)
redis.call('SET', KEYS[3], first, 'PX', ARGV[4])
return {{'released', first, now}}"
    ))
});

/// KEYS: lock, holds. ARGV: nonce. Ends the lease or hold only if the attempt with this nonce
/// granted it: the undo of a claim interrupted before it could report its grant.
pub(crate) static WITHDRAW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{NOW}{HOLDS}
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw).nonce == ARGV[1] then return redis.call('DEL', KEYS[1]) end
local list = load(KEYS[2])
for i, h in ipairs(list) do
  if h.nonce == ARGV[1] then
    drop(KEYS[2], list, i)
    touch(KEYS[2], list)
    return 1
  end
end
return 0"
    ))
});
