package cluster

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/shardmap"
)

// sessState is the writer's view of one of this node's sessions: the expiry
// it last wrote to Redis (W), the latest local expiry (L) and when a
// deferred refresh is due (0: none). Keyed by a 64-bit hash of user and
// room, so the map holds no pointers.
type sessState struct {
	W, L, due int64
}

// op is one write to Redis.
type op struct {
	kind             opKind
	user, room       string
	lastSeen, expiry int64
	at               int64
	all              bool // opLeave of every room of the user (before expandLeaveAll)
	// state is the session's state (opTouch, opAssert), stored in Redis
	// with the session (keys.go: "expiry:state:lastSeen"); update says the
	// state changed on this node: a write that does not start the session
	// emits an update event.
	state  string
	update bool
	// known: an opTouch of the re-assert for a session already announced
	// (its state changed on the way): when Redis lacks it (lost with a
	// restart), it is written back with an update event, not a join.
	known  bool
	reason shardmap.Reason // opLeave: left or disconnect
}

type writerState struct {
	n     *Node
	state map[uint64]sessState
	// states holds the state last written for the sessions that have one
	// (a side map, so sessState stays pointer-free).
	states map[uint64]string
	// ring holds deferred refreshes by due slot (slotMs wide), as
	// appendDeferred records.
	ring   [][]byte
	slotMs int64
	// now is the writer's wall clock in unix ms (time.Now by default;
	// tests inject one). Expiries are wall-clock times shared with Redis.
	now      func() int64
	ringNext int64 // next slot to process
	spare    []byte
	ops      []op
	// retry holds explicit leaves (appendChange records) that failed or
	// came while Redis was partial, to send after the re-assert. LEAVE is
	// idempotent, so a leave that did run and is sent again ends nothing.
	retry []byte
	// roomPassAt is when to re-add this node's sessions to their rooms
	// once more after a re-assert (unix ms, 0: none).
	roomPassAt int64
	// repairDue asks for repairRooms in the next round (after a re-assert).
	repairDue bool
	evs       []evOp
}

// seenArg is the lastSeen argument of TOUCH and TOUCHN: the state, if
// any, travels in front of it, so the scripts store "expiry:state:lastSeen"
// unchanged (they read the expiry as the leading number and the last seen
// as the trailing one).
func (o *op) seenArg() string {
	ls := strconv.FormatInt(o.lastSeen, 10)
	if o.state == "" {
		return ls
	}
	return o.state + ":" + ls
}

func stateBytes(s string) []byte {
	if s == "" {
		return nil
	}
	return []byte(s)
}

// evOp is an event this node decided, with its room-side update.
type evOp struct {
	ev      shardmap.Event
	silent  bool // re-assert: room update only, no event
	roomAdd bool
	// roomDone and emitDone record what was written, so a retry of a
	// partly failed round (events.go) repeats neither half.
	roomDone, emitDone bool
	// update: a state change of a live session (no room side).
	update bool
	// occupied and vacated: the room side found the room empty before this
	// join, or left it empty after this leave (events.go).
	occupied, vacated bool
}

func (w *writerState) init(n *Node) {
	w.n = n
	if w.now == nil {
		w.now = func() int64 { return time.Now().UnixMilli() }
	}
	w.state = map[uint64]sessState{}
	w.states = map[uint64]string{}
	// A slot is a quarter of the refresh margin, 10ms to 1s: a deferred
	// refresh is written up to one slot before it is due.
	w.slotMs = min(max(n.margin/4, 10), 1000)
	w.ring = make([][]byte, int(n.ttlMs/w.slotMs)+3)
}

// sessSeed seeds the writer's session hash per process: the ids are chosen
// by clients, and a fixed hash would let them craft collisions (a join of
// one session taken for a refresh of another, and deferred).
var sessSeed = maphash.MakeSeed()

func sessHash(user, room []byte) uint64 {
	var h maphash.Hash
	h.SetSeed(sessSeed)
	_, _ = h.Write(user)
	_ = h.WriteByte(0) // ids hold no control characters
	_, _ = h.Write(room)
	return h.Sum64()
}

// decode turns intake records into ops (in w.ops) and leaves of all rooms
// (appended to leaveAll, returned).
func (w *writerState) decode(b []byte, now int64, leaveAll []op) []op {
	for rest := b; len(rest) > 0; {
		var c change
		c, rest = readChange(rest)
		h := sessHash(c.user, c.room)
		switch c.kind {
		case changeUpsert:
			w.upsert(h, c.user, c.room, c.state, c.lastSeen, c.expiry, now)
		case changeRetryTouch, changeRetryUpdate:
			w.ops = append(w.ops, op{kind: opTouch, user: string(c.user), room: string(c.room), lastSeen: c.lastSeen, expiry: c.expiry, state: string(c.state),
				update: c.kind == changeRetryUpdate})
		case changeLocalLeave, changeLeave, changeLocalDisconnect, changeDisconnect:
			delete(w.state, h)
			delete(w.states, h)
			w.ops = append(w.ops, op{kind: opLeave, user: string(c.user), room: string(c.room), lastSeen: c.lastSeen, expiry: c.expiry, at: c.at, reason: c.kind.leaveReason()})
		case changeLeaveAll:
			leaveAll = append(leaveAll, op{kind: opLeave, user: string(c.user), at: c.at, all: true})
		case changeLocalExpiry:
			// A local expiry writes nothing: Redis expires the session
			// itself unless another node keeps it alive.
			delete(w.state, h)
			delete(w.states, h)
		}
	}
	return leaveAll
}

// sendAll expands leaveAll into w.ops and sends w.ops. When the expansion
// fails, nothing is sent and every touch and leave is kept for retry.
func (w *writerState) sendAll(ctx context.Context, leaveAll []op) error {
	if len(leaveAll) > 0 {
		if err := w.expandLeaveAll(ctx, leaveAll); err != nil {
			for i := range leaveAll {
				w.retryOp(&leaveAll[i])
			}
			for i := range w.ops {
				w.retryOp(&w.ops[i])
			}
			return err
		}
	}
	if len(w.ops) == 0 {
		return nil
	}
	return w.send(w.ops)
}

// keepLeaves keeps, from intake buffer b while partial, what the re-assert
// would not replay as an event: explicit leaves (no longer in the table),
// failed touches, and joins (sessions the writer does not know yet), so
// their events still come once Redis answers. Refreshes are dropped: the
// re-assert writes every live session.
func (w *writerState) keepLeaves(b []byte) {
	for rest := b; len(rest) > 0; {
		var c change
		c, rest = readChange(rest)
		switch c.kind {
		case changeLocalLeave, changeLeave, changeLeaveAll, changeRetryTouch, changeRetryUpdate, changeLocalDisconnect, changeDisconnect:
			w.retryChange(&c)
		case changeUpsert:
			h := sessHash(c.user, c.room)
			if _, ok := w.state[h]; !ok {
				w.state[h] = sessState{W: c.expiry, L: c.expiry}
				if len(c.state) > 0 {
					w.states[h] = string(c.state)
				}
				c.kind = changeRetryTouch
				w.retryChange(&c)
			}
		case changeLocalExpiry:
		}
	}
}

// retryOp keeps a touch or leave op that failed for the next round.
func (w *writerState) retryOp(o *op) {
	var k changeKind
	switch {
	case o.kind == opTouch && o.update:
		k = changeRetryUpdate
	case o.kind == opTouch:
		k = changeRetryTouch
	case o.kind == opLeave && o.all:
		k = changeLeaveAll
	case o.kind == opLeave && o.reason == shardmap.ReasonDisconnect:
		k = changeDisconnect
	case o.kind == opLeave:
		k = changeLeave
	default:
		return // a re-assert write: the next re-assert does it again
	}
	w.retryChange(&change{kind: k, lastSeen: o.lastSeen, expiry: o.expiry, at: o.at, user: []byte(o.user), room: []byte(o.room), state: []byte(o.state)})
}

// retryChange keeps c, up to Config.MaxQueue bytes' worth of records
// per 64 bytes (beyond: dropped and counted; the leave then ends in Redis
// as a timeout).
func (w *writerState) retryChange(c *change) {
	if len(w.retry) >= w.n.cfg.MaxQueue*64 {
		w.n.dropped.Add(1)
		return
	}
	w.retry = appendChange(w.retry, c)
}

func (n *Node) writeLoop() {
	t := time.NewTicker(n.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-n.flushReq:
			n.w.cycle(true)
			close(n.flushDone)
			return
		case <-t.C:
		case <-n.kick:
		}
		n.w.cycle(false)
	}
}

// cycle re-asserts when needed, turns queued changes and due refreshes into
// writes, and sends them. With final, every deferred refresh is written.
func (w *writerState) cycle(final bool) {
	n := w.n
	ctx, cancel := n.roundCtx()
	defer cancel()
	now := w.now()
	if n.needAssert.Load() {
		if !n.up.Load() {
			// Partial: refreshes are dropped (the re-assert writes every
			// live session); joins and explicit leaves are kept.
			buf, _, _ := n.swapIntake(w.spare)
			w.keepLeaves(buf)
			w.spare = buf[:0]
			return
		}
		// What failed goes first, so a join whose TOUCH failed still
		// gets its event (the re-assert would write it silently).
		if len(w.retry) > 0 {
			retry := w.retry
			w.retry = nil
			w.ops = w.ops[:0]
			leaveAll := w.decode(retry, now, nil)
			if err := w.sendAll(ctx, leaveAll); err != nil {
				n.markDown(err)
				return
			}
		}
		if err := w.reassert(); err != nil {
			n.markDown(err)
			return
		}
	}
	if w.repairDue {
		w.repairDue = false
		if err := w.repairRooms(); err != nil {
			n.markDown(err)
			return
		}
	}
	if w.roomPassAt != 0 && now >= w.roomPassAt {
		w.roomPassAt = 0
		if err := w.roomPass(); err != nil {
			n.markDown(err)
			return
		}
	}
	buf, count, oldest := n.swapIntake(w.spare)
	w.ops = w.ops[:0]
	// Leaves that failed or waited out a fault go first.
	retry := w.retry
	w.retry = nil
	leaveAll := w.decode(retry, now, nil)
	leaveAll = w.decode(buf, now, leaveAll)
	w.spare = buf[:0]
	w.due(now, final)
	if err := w.sendAll(ctx, leaveAll); err != nil {
		n.markDown(err)
		return
	}
	if count > 0 {
		n.lagNs.Store(monoNs() - oldest)
	}
}

func (w *writerState) upsert(h uint64, user, room, state []byte, ls, exp, now int64) {
	st, ok := w.state[h]
	if !ok {
		w.state[h] = sessState{W: exp, L: exp}
		if len(state) > 0 {
			w.states[h] = string(state)
		}
		w.ops = append(w.ops, op{kind: opTouch, user: string(user), room: string(room), lastSeen: ls, expiry: exp, state: string(state)})
		return
	}
	if exp > st.L {
		st.L = exp
	}
	if old := w.states[h]; old != string(state) {
		// A state change is written at once, with the latest expiry.
		if len(state) > 0 {
			w.states[h] = string(state)
		} else {
			delete(w.states, h)
		}
		w.ops = append(w.ops, op{kind: opTouch, user: string(user), room: string(room), lastSeen: st.L - w.n.ttlMs, expiry: st.L, state: string(state), update: true})
		st.W, st.due = st.L, 0
		w.state[h] = st
		return
	}
	if st.L > st.W {
		due := st.W - w.n.margin
		switch {
		case due <= now:
			w.ops = append(w.ops, op{kind: opTouch, user: string(user), room: string(room), lastSeen: st.L - w.n.ttlMs, expiry: st.L, state: w.states[h]})
			st.W, st.due = st.L, 0
		case st.due == 0:
			st.due = due
			w.schedule(h, due, user, room)
		}
	}
	w.state[h] = st
}

// expandLeaveAll turns leaves of all a user's rooms into one leave per
// room Redis holds for them.
func (w *writerState) expandLeaveAll(ctx context.Context, all []op) error {
	n := w.n
	p := n.c.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(all))
	for i := range all {
		cmds[i] = p.HKeys(ctx, n.k.user(all[i].user))
	}
	if err := n.exec(ctx, p); err != nil {
		return err
	}
	for i, c := range cmds {
		for _, room := range c.Val() {
			o := all[i]
			o.room, o.all = room, false
			w.ops = append(w.ops, o)
		}
	}
	return nil
}

// schedule files a deferred refresh in the ring slot before the one due is in.
func (w *writerState) schedule(h uint64, due int64, user, room []byte) {
	sec := due/w.slotMs - 1
	if w.ringNext == 0 {
		w.ringNext = w.now() / w.slotMs
	}
	if sec < w.ringNext {
		sec = w.ringNext
	}
	i := int(sec % int64(len(w.ring)))
	w.ring[i] = appendDeferred(w.ring[i], &deferred{hash: h, due: due, user: user, room: room})
}

// due writes the deferred refreshes whose slot has come (all with final).
func (w *writerState) due(now int64, final bool) {
	nowSec := now / w.slotMs
	if w.ringNext == 0 {
		w.ringNext = nowSec
	}
	end := nowSec
	if final {
		end = w.ringNext + int64(len(w.ring)) - 1
	}
	for ; w.ringNext < end || (final && w.ringNext <= end); w.ringNext++ {
		i := int(w.ringNext % int64(len(w.ring)))
		b := w.ring[i]
		for rest := b; len(rest) > 0; {
			var d deferred
			d, rest = readDeferred(rest)
			h, user, room := d.hash, d.user, d.room
			st, ok := w.state[h]
			if !ok || st.due != d.due {
				continue
			}
			if st.L > st.W {
				w.ops = append(w.ops, op{kind: opTouch, user: string(user), room: string(room), lastSeen: st.L - w.n.ttlMs, expiry: st.L, state: w.states[h]})
				st.W = st.L
			}
			st.due = 0
			w.state[h] = st
		}
		w.ring[i] = b[:0]
	}
	if final {
		w.ringNext = nowSec
	}
}

// exec sends a pipeline, timing it and counting its commands.
func (n *Node) exec(ctx context.Context, p redis.Pipeliner) error {
	l := p.Len()
	t0 := time.Now()
	_, err := p.Exec(ctx)
	n.hist.observe(time.Since(t0))
	n.cmds.Add(uint64(l))
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	if err != nil {
		n.reloadSlots()
	}
	return err
}

// send runs ops in pipelines: first the user-side scripts, then for every
// join and leave they decided the room-side script and the stream entry
// (EMIT). A failed command does not stop the others: what
// succeeded goes on to its room side and event, a failed leave is kept
// for retry, and the first error is returned (a fault: the re-assert then
// writes what the failed touches did not and repairs the room side).
func (w *writerState) send(ops []op) error {
	n := w.n
	var first error
	for len(ops) > 0 {
		k := min(len(ops), n.cfg.PipelineSize)
		chunk := ops[:k]
		ops = ops[k:]
		if err := w.sendChunk(chunk); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// sendChunk sends one pipeline of ops and its room side and events, within
// its own writeTimeout: a round of many pipelines (100,000 joins at once)
// must not share one deadline.
func (w *writerState) sendChunk(chunk []op) error {
	n := w.n
	ctx, cancel := n.roundCtx()
	defer cancel()
	var first error
	cmds := make([]*redis.Cmd, 0, len(chunk))
	p := n.c.Pipeline()
	for i := range chunk {
		o := &chunk[i]
		ub := userBucket(o.user)
		member := sessionMember(o.user, o.room)
		switch o.kind {
		case opTouch, opAssert:
			cmds = append(cmds, n.evalSha(ctx, p, scriptTouch,
				[]string{n.k.user(o.user), n.k.expiry(ub), n.k.counts(ub)},
				o.room, o.expiry, o.seenArg(), member))
		case opLeave:
			cmds = append(cmds, n.evalSha(ctx, p, scriptLeave,
				[]string{n.k.user(o.user), n.k.expiry(ub), n.k.counts(ub), n.k.seen(o.user)},
				o.room, member, n.cfg.LastSeenRetention.Milliseconds()))
		}
	}
	_ = n.withScripts(ctx, func() error { return n.exec(ctx, p) })
	w.evs = w.evs[:0]
	for i, c := range cmds {
		o := &chunk[i]
		v, err := c.Int64()
		if err != nil {
			if first == nil {
				first = fmt.Errorf("cannot write session: %w", err)
			}
			w.retryOp(o)
			continue
		}
		if v != 1 {
			if o.kind == opTouch && o.update {
				w.evs = append(w.evs, evOp{ev: shardmap.Event{User: o.user, Room: o.room, At: o.lastSeen, State: stateBytes(o.state)},
					update: true, roomDone: true})
			}
			continue
		}
		switch {
		case o.kind == opTouch && o.known:
			w.evs = append(w.evs, evOp{ev: shardmap.Event{User: o.user, Room: o.room, At: o.lastSeen, State: stateBytes(o.state)}, update: true, roomAdd: true})
		case o.kind == opTouch:
			w.evs = append(w.evs, evOp{ev: shardmap.Event{User: o.user, Room: o.room, At: o.lastSeen, Join: true, State: stateBytes(o.state)}, roomAdd: true})
		case o.kind == opAssert:
			w.evs = append(w.evs, evOp{ev: shardmap.Event{User: o.user, Room: o.room}, silent: true, roomAdd: true})
		case o.kind == opLeave:
			reason := o.reason
			if reason == 0 {
				reason = shardmap.ReasonLeft
			}
			w.evs = append(w.evs, evOp{ev: shardmap.Event{User: o.user, Room: o.room, At: o.at, Reason: reason}})
		}
	}
	if err := w.emitHook(ctx); err != nil && first == nil {
		first = err
	}
	return first
}

// emitHook runs emit for w.evs, unless a test injects a fault between the
// user-side and the room-side pipelines.
func (w *writerState) emitHook(ctx context.Context) error {
	if f := w.n.testBeforeEmit; f != nil {
		if err := f(); err != nil {
			return err
		}
	}
	return w.n.emit(ctx, w.evs)
}
