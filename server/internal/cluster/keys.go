package cluster

import (
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Buckets is the number of user buckets and of room buckets. It is part of
// the Redis layout: every node of a cluster must use the same value.
const Buckets = 64

// fnv64a is the bucket hash; it must be the same on every node, so it is
// not the process-seeded maphash.
func fnv64a(b string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(b); i++ {
		h ^= uint64(b[i])
		h *= 1099511628211
	}
	return h
}

func userBucket(user string) int { return int(fnv64a(user) % Buckets) }
func roomBucket(room string) int { return int(fnv64a(room) % Buckets) }

// keys renders key names; see the layout in doc.go.
type keys struct {
	prefix string
	uTag   [Buckets]string // "pd:{u7}"
	rTag   [Buckets]string // "pd:{r7}"
}

func newKeys(prefix string) *keys {
	k := &keys{prefix: prefix}
	for i := range Buckets {
		k.uTag[i] = prefix + ":{u" + strconv.Itoa(i) + "}"
		k.rTag[i] = prefix + ":{r" + strconv.Itoa(i) + "}"
	}
	return k
}

func (k *keys) user(user string) string { return k.uTag[userBucket(user)] + ":u:" + user }
func (k *keys) seen(user string) string { return k.uTag[userBucket(user)] + ":l:" + user }
func (k *keys) expiry(b int) string     { return k.uTag[b] + ":x" }
func (k *keys) counts(b int) string     { return k.uTag[b] + ":c" }
func (k *keys) members(room string) string {
	return k.rTag[roomBucket(room)] + ":m:" + room
}
func (k *keys) top(b int) string { return k.rTag[b] + ":top" }
func (k *keys) stream() string   { return k.prefix + ":events" }

// sessionMember is a session's member in a bucket's expiry set: ids hold no
// control characters, so NUL separates them.
func sessionMember(user, room string) string { return user + "\x00" + room }

func splitMember(m string) (user, room string, ok bool) {
	return strings.Cut(m, "\x00")
}

// splitValue parses a user hash value "expiry:lastSeen", or
// "expiry:state:lastSeen" for a session with a state (a JSON object).
func splitValue(v string) (expiry, lastSeen int64, ok bool) {
	expiry, lastSeen, _, ok = splitValueState(v)
	return expiry, lastSeen, ok
}

// splitValueState is splitValue that also returns the state ("" for none).
func splitValueState(v string) (expiry, lastSeen int64, state string, ok bool) {
	i, j := strings.IndexByte(v, ':'), strings.LastIndexByte(v, ':')
	if i < 0 {
		return 0, 0, "", false
	}
	e, err1 := strconv.ParseInt(v[:i], 10, 64)
	l, err2 := strconv.ParseInt(v[j+1:], 10, 64)
	if j > i {
		state = v[i+1 : j]
	}
	return e, l, state, err1 == nil && err2 == nil
}

// The scripts. Each touches keys of one hash tag only, so it runs on one
// Redis Cluster slot; the key names a script builds itself (REAP) carry the
// same tag as its KEYS.
var (
	// TOUCH KEYS: user hash, bucket expiry set, bucket counts.
	// ARGV: room, expiry, lastSeen, expiry-set member.
	// Returns 1 when the session is new cluster-wide (a join), else 0. The
	// stored expiry never moves backwards.
	scriptTouch = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
local exp = tonumber(ARGV[2])
if v then
  local old = tonumber(string.match(v, '^(%d+)'))
  if old and old >= exp then return 0 end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
  redis.call('ZADD', KEYS[2], exp, ARGV[4])
  return 0
end
local first = redis.call('EXISTS', KEYS[1]) == 0
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
redis.call('ZADD', KEYS[2], exp, ARGV[4])
redis.call('HINCRBY', KEYS[3], 's', 1)
if first then redis.call('HINCRBY', KEYS[3], 'u', 1) end
return 1
`)
	// LEAVE KEYS: user hash, bucket expiry set, bucket counts, last-seen string.
	// ARGV: room, expiry-set member, last-seen retention ms.
	// Returns 1 when it ended a session (a leave), else 0.
	scriptLeave = redis.NewScript(`
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 's', -1)
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HINCRBY', KEYS[3], 'u', -1)
  local ls = string.match(v, ':(%d+)$')
  local old = tonumber(redis.call('GET', KEYS[4]) or '0')
  if ls and tonumber(ls) > old then redis.call('SET', KEYS[4], ls, 'PX', ARGV[3]) end
end
return 1
`)
	// REAP KEYS: bucket expiry set, bucket counts.
	// ARGV: now ms, limit, user hash prefix, last-seen prefix, retention ms.
	// Ends up to limit sessions whose expiry is <= now and returns them as
	// member, value pairs. Atomic: of several nodes reaping one bucket, one
	// wins each session.
	scriptReap = redis.NewScript(`
local now = tonumber(ARGV[1])
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, m in ipairs(items) do
  local sep = string.find(m, '\0', 1, true)
  redis.call('ZREM', KEYS[1], m)
  if sep then
    local user = string.sub(m, 1, sep - 1)
    local room = string.sub(m, sep + 1)
    local hk = ARGV[3] .. user
    local v = redis.call('HGET', hk, room)
    if v then
      local exp = tonumber(string.match(v, '^(%d+)'))
      if exp > now then
        redis.call('ZADD', KEYS[1], exp, m)
      else
        redis.call('HDEL', hk, room)
        redis.call('HINCRBY', KEYS[2], 's', -1)
        if redis.call('EXISTS', hk) == 0 then
          redis.call('HINCRBY', KEYS[2], 'u', -1)
          local ls = string.match(v, ':(%d+)$')
          local lk = ARGV[4] .. user
          local old = tonumber(redis.call('GET', lk) or '0')
          if ls and tonumber(ls) > old then redis.call('SET', lk, ls, 'PX', ARGV[5]) end
        end
        out[#out + 1] = m
        out[#out + 1] = v
      end
    end
  end
end
return out
`)
	// ROOMADD KEYS: room member set, bucket top set. ARGV: user, room.
	scriptRoomAdd = redis.NewScript(`
if redis.call('ZADD', KEYS[1], 0, ARGV[1]) == 1 then
  redis.call('ZINCRBY', KEYS[2], 1, ARGV[2])
  return 1
end
return 0
`)
	// ROOMREM KEYS: room member set, bucket top set. ARGV: user, room.
	scriptRoomRem = redis.NewScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local n = tonumber(redis.call('ZINCRBY', KEYS[2], -1, ARGV[2]))
  if n <= 0 then redis.call('ZREM', KEYS[2], ARGV[2]) end
  return 1
end
return 0
`)
	// TOUCHN is TOUCH for many sessions of one user bucket (re-assert),
	// with the expiry-set and counter updates batched at the end.
	// KEYS: bucket expiry set, bucket counts, then one user hash per session.
	// ARGV: per session room, expiry, lastSeen, member. Returns 0/1 per session.
	scriptTouchN = redis.NewScript(`
local out, z = {}, {}
local ds, du = 0, 0
for i = 3, #KEYS do
  local a = (i - 3) * 4
  local room, e, ls, m = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local exp = tonumber(e)
  local v = redis.call('HGET', KEYS[i], room)
  local r = 0
  if v then
    local old = tonumber(string.match(v, '^(%d+)'))
    if not old or old < exp then
      redis.call('HSET', KEYS[i], room, e .. ':' .. ls)
      z[#z + 1] = exp
      z[#z + 1] = m
    end
  else
    redis.call('HSET', KEYS[i], room, e .. ':' .. ls)
    if redis.call('HLEN', KEYS[i]) == 1 then du = du + 1 end
    ds = ds + 1
    z[#z + 1] = exp
    z[#z + 1] = m
    r = 1
  end
  out[#out + 1] = r
end
if #z > 0 then redis.call('ZADD', KEYS[1], unpack(z)) end
if ds > 0 then redis.call('HINCRBY', KEYS[2], 's', ds) end
if du > 0 then redis.call('HINCRBY', KEYS[2], 'u', du) end
return out
`)
	// ROOMADDN is ROOMADD for many members of rooms of one room bucket
	// (re-assert). KEYS: bucket top set, then one member set per room.
	// ARGV: per room its name, the member count n, then n "0", user pairs.
	scriptRoomAddN = redis.NewScript(`
local p = 1
for i = 2, #KEYS do
  local room, n = ARGV[p], tonumber(ARGV[p + 1])
  p = p + 2
  local added = redis.call('ZADD', KEYS[i], unpack(ARGV, p, p + 2 * n - 1))
  p = p + 2 * n
  if added > 0 then redis.call('ZINCRBY', KEYS[1], added, room) end
end
return 0
`)
	// ROOMSYNC KEYS: room member set, bucket top set. ARGV: room.
	// Sets the room's count to its member list (repair after a fault).
	scriptRoomSync = redis.NewScript(`
local n = redis.call('ZCARD', KEYS[1])
if n == 0 then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], n, ARGV[1]) end
return n
`)
	allScripts = []*redis.Script{scriptTouch, scriptLeave, scriptReap, scriptRoomAdd, scriptRoomRem, scriptTouchN, scriptRoomAddN, scriptRoomSync,
		scriptEmit, scriptFlushLeaves, scriptRoomAddC, scriptRoomRemC} // the last four: events.go
)
