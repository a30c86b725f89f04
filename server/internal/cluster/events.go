package cluster

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/server/internal/events"
)

// Events in Redis. The node whose script decided an event (TOUCH, LEAVE or
// REAP answered 1) applies its room side and emits it with EMIT, a script on
// the stream's slot that either appends it to the stream (XADD, which gives
// it its cluster-wide id) or, with a leave delay, holds a leave in the
// pending hash until FLUSH appends it; a join of the same (user, room)
// while its leave is held deletes both. Every node reads the stream with
// XREAD (stream.go) and hands each entry to its event bus once, so the
// rejoin may come through another node than the leave and still cancel it.
//
//	pd:events              STREAM  type, user, room, at (unix ms), reason, state, node
//	{pd:events}:lp         HASH    user "\0" room -> at "\0" reason "\0" node (held leaves)
//	{pd:events}:ld         ZSET    user "\0" room, score = due (unix ms)
//
// The braces put the two debounce keys in the stream's own Redis Cluster
// slot (the hash tag "pd:events" is the stream key), so EMIT and FLUSH are
// atomic with the XADD.
//
// Events that cannot be written (Redis unreachable, a failed pipeline) stay
// queued in order, up to maxPendingEvents, and are written when Redis
// answers again, with their original "at". Beyond the bound the newest are
// dropped and counted, and a reset entry (reason history_lost) is appended
// after the queued ones, so every stream learns that it missed events.

// maxPendingEvents bounds the events kept while Redis cannot take them.
const maxPendingEvents = 100_000

var (
	scriptEmit = redis.NewScript(`
local member = ARGV[2] .. "\0" .. ARGV[3]
local delay = tonumber(ARGV[9])
if delay > 0 then
  if ARGV[1] == "leave" or ARGV[1] == "vacated" then
    redis.call("HSET", KEYS[2], member, ARGV[4] .. "\0" .. ARGV[5] .. "\0" .. ARGV[7] .. "\0" .. ARGV[1])
    -- a vacated room is due 1 ms after the leave that emptied it: equal
    -- scores flush in member order, and "\0room" sorts before "user\0room"
    local due = tonumber(ARGV[10]) + delay
    if ARGV[1] == "vacated" then due = due + 1 end
    redis.call("ZADD", KEYS[3], due, member)
    return 2
  elseif ARGV[1] == "join" or ARGV[1] == "occupied" then
    if redis.call("HDEL", KEYS[2], member) == 1 then
      redis.call("ZREM", KEYS[3], member)
      return 3
    end
  end
end
redis.call("XADD", KEYS[1], "MAXLEN", "~", ARGV[8], "*", "type", ARGV[1], "user", ARGV[2], "room", ARGV[3],
  "at", ARGV[4], "reason", ARGV[5], "state", ARGV[6], "node", ARGV[7])
return 1
`)
	scriptFlushLeaves = redis.NewScript(`
local due = redis.call("ZRANGEBYSCORE", KEYS[3], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[3]))
for _, m in ipairs(due) do
  local v = redis.call("HGET", KEYS[2], m)
  redis.call("ZREM", KEYS[3], m)
  if v then
    redis.call("HDEL", KEYS[2], m)
    local i = string.find(m, "\0", 1, true)
    local a = string.find(v, "\0", 1, true)
    local b = string.find(v, "\0", a + 1, true)
    local c = string.find(v, "\0", b + 1, true)
    redis.call("XADD", KEYS[1], "MAXLEN", "~", ARGV[2], "*", "type", string.sub(v, c + 1),
      "user", string.sub(m, 1, i - 1), "room", string.sub(m, i + 1),
      "at", string.sub(v, 1, a - 1), "reason", string.sub(v, a + 1, b - 1), "state", "", "node", string.sub(v, b + 1, c - 1))
  end
end
return #due
`)

	// ROOMADDC and ROOMREMC are ROOMADD and ROOMREM (keys.go) answering
	// the room's online count after the change, or -1 when the member was
	// already there (add) or not there (remove): a 1 after an add is the
	// room's first member (occupied), a 0 after a remove its last (vacated).
	scriptRoomAddC = redis.NewScript(`
if redis.call('ZADD', KEYS[1], 0, ARGV[1]) == 1 then
  return tonumber(redis.call('ZINCRBY', KEYS[2], 1, ARGV[2]))
end
return -1
`)
	scriptRoomRemC = redis.NewScript(`
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  local n = tonumber(redis.call('ZINCRBY', KEYS[2], -1, ARGV[2]))
  if n <= 0 then redis.call('ZREM', KEYS[2], ARGV[2]); n = 0 end
  return n
end
return -1
`)
)

// emitter is the queue of decided events not yet written.
type emitter struct {
	sync.Mutex
	pending []evOp
	lost    uint64 // dropped since the last reset entry
}

func (k *keys) heldLeaves() string { return "{" + k.stream() + "}:lp" }
func (k *keys) heldDue() string    { return "{" + k.stream() + "}:ld" }

func (n *Node) eventKeys() []string {
	return []string{n.k.stream(), n.k.heldLeaves(), n.k.heldDue()}
}

// emit queues decided events and writes every queued one it can: the room
// side, then EMIT. With no new events it retries the queued ones.
func (n *Node) emit(ctx context.Context, evs []evOp) error {
	n.em.Lock()
	defer n.em.Unlock()
	for _, e := range evs {
		if len(n.em.pending) >= maxPendingEvents {
			n.em.lost++
			n.eventsLost.Add(1)
			continue
		}
		n.em.pending = append(n.em.pending, e)
	}
	n.pendingEvents.Store(int64(len(n.em.pending)))
	if len(n.em.pending) == 0 && n.em.lost == 0 {
		return nil
	}
	err := n.writePendingLocked(ctx)
	n.pendingEvents.Store(int64(len(n.em.pending)))
	return err
}

func (n *Node) writePendingLocked(ctx context.Context) error {
	now := time.Now().UnixMilli()
	delay := n.cfg.LeaveDelay.Milliseconds()
	for len(n.em.pending) > 0 {
		chunk := n.em.pending[:min(len(n.em.pending), max(n.cfg.PipelineSize/2, 1))]
		roomCmds := make([]*redis.Cmd, len(chunk))
		emitCmds := make([][]*redis.Cmd, len(chunk))
		// The room side first: its answer says whether the event also
		// occupied or vacated the room, and occupied goes before the join.
		err := n.withScripts(ctx, func() error {
			p := n.c.Pipeline()
			queued := false
			for i := range chunk {
				e := &chunk[i]
				if e.ev.Room != "" && !e.roomDone {
					rb := roomBucket(e.ev.Room)
					keys := []string{n.k.members(e.ev.Room), n.k.top(rb)}
					if e.roomAdd {
						roomCmds[i] = n.evalSha(ctx, p, scriptRoomAddC, keys, e.ev.User, e.ev.Room)
					} else {
						roomCmds[i] = n.evalSha(ctx, p, scriptRoomRemC, keys, e.ev.User, e.ev.Room)
					}
					queued = true
				}
			}
			if !queued {
				return nil
			}
			return n.exec(ctx, p)
		})
		for i := range chunk {
			e := &chunk[i]
			if c := roomCmds[i]; c != nil && c.Err() == nil {
				e.roomDone = true
				v, _ := c.Int64()
				e.occupied = e.roomAdd && v == 1
				e.vacated = !e.roomAdd && v == 0
			}
		}
		if err == nil {
			err = n.withScripts(ctx, func() error {
				p := n.c.Pipeline()
				queued := false
				emitOne := func(i int, typ, user, reason string, at int64, state []byte) {
					emitCmds[i] = append(emitCmds[i], n.evalSha(ctx, p, scriptEmit, n.eventKeys(), typ, user, chunk[i].ev.Room,
						at, reason, state, n.cfg.NodeID, n.cfg.StreamMaxLen, delay, now))
					queued = true
				}
				for i := range chunk {
					e := &chunk[i]
					if e.silent || e.emitDone || !(e.roomDone || e.ev.Room == "") {
						continue
					}
					switch {
					case e.update:
						emitOne(i, events.Update.String(), e.ev.User, "", e.ev.At, e.ev.State)
					case e.ev.Join:
						if e.occupied {
							emitOne(i, events.Occupied.String(), "", "", e.ev.At, nil)
						}
						emitOne(i, "join", e.ev.User, "", e.ev.At, e.ev.State)
					default:
						emitOne(i, "leave", e.ev.User, e.ev.Reason.String(), e.ev.At, nil)
						if e.vacated {
							emitOne(i, events.Vacated.String(), "", "", e.ev.At, nil)
						}
					}
				}
				if !queued {
					return nil
				}
				return n.exec(ctx, p)
			})
		}
		for i := range chunk {
			if len(emitCmds[i]) == 0 {
				continue
			}
			ok := true
			for _, c := range emitCmds[i] {
				ok = ok && c.Err() == nil
			}
			chunk[i].emitDone = ok
		}
		done := 0
		for i := range chunk {
			e := &chunk[i]
			if (e.roomDone || e.ev.Room == "") && (e.emitDone || e.silent) && done == i {
				done++
			}
		}
		n.em.pending = n.em.pending[done:]
		if err != nil {
			return fmt.Errorf("cannot write events (%d queued): %w", len(n.em.pending), err)
		}
		if done == 0 {
			return errors.New("cannot write events: no progress")
		}
	}
	n.em.pending = nil
	if n.em.lost > 0 {
		err := n.withScripts(ctx, func() error {
			p := n.c.Pipeline()
			n.evalSha(ctx, p, scriptEmit, n.eventKeys(), events.Reset.String(), "", "", now,
				events.ReasonHistoryLost, "", n.cfg.NodeID, n.cfg.StreamMaxLen, 0, now)
			return n.exec(ctx, p)
		})
		if err != nil {
			return fmt.Errorf("cannot write reset event: %w", err)
		}
		n.log.Warn("events dropped while Redis could not take them; streams get a reset", "dropped", n.em.lost)
		n.em.lost = 0
	}
	return nil
}

// flushHeldLeaves appends the held leaves whose delay has passed to the
// stream. Every node runs it; the script makes each leave appear once.
func (n *Node) flushHeldLeaves(ctx context.Context) error {
	if n.cfg.LeaveDelay <= 0 {
		return nil
	}
	return n.withScripts(ctx, func() error {
		p := n.c.Pipeline()
		n.evalSha(ctx, p, scriptFlushLeaves, n.eventKeys(), time.Now().UnixMilli(), n.cfg.StreamMaxLen, 1000)
		return n.exec(ctx, p)
	})
}

// decodeEntry turns a stream entry into an event.
func decodeEntry(m redis.XMessage) (*events.Event, bool) {
	id, ok := events.ParseID(m.ID)
	if !ok {
		return nil, false
	}
	str := func(k string) string { s, _ := m.Values[k].(string); return s }
	ev := &events.Event{ID: id, Type: events.ParseType(str("type")), User: str("user"), Room: str("room"), Reason: str("reason")}
	if ev.Type == 0 {
		return nil, false
	}
	ev.At, _ = strconv.ParseInt(str("at"), 10, 64)
	if ev.Type == events.Occupied {
		ev.Online = 1
	}
	if s := str("state"); s != "" {
		ev.State = []byte(s)
	}
	return ev, true
}
