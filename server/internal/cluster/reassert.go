package cluster

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

// reassert writes every live session of this node (after Redis lost them,
// was unreachable, or any write failed), without events for those it finds
// missing; re-adds each to its room's member set (idempotent: the room side
// of a join whose second pipeline failed is repaired here); then removes
// members without a session and sets each room's count to its member list
// (repairRooms, in the next round). Then the node answers for the whole
// cluster again.
//
// The table runs ahead of the writer: a join or state change still on its
// way (in the change log or the intake) is in the table already, and once
// the re-assert has written it the intake's record of it reads as a
// refresh. So a session the writer has not written yet, or whose state it
// has not written, goes out as an ordinary touch (events for what Redis did
// not have), not silently. Only on the first assert at start is every
// session asserted silently: there the writer knows nothing yet, and the
// sessions are the log's, announced before the restart.
func (w *writerState) reassert() error {
	n := w.n
	t0 := time.Now()
	first := n.asserts.Load() == 0
	for i := range w.ring {
		w.ring[i] = w.ring[i][:0]
	}
	// The writer's view is rebuilt in place: each session of the table is
	// marked (due = reasserted) as it is visited, and what the table no
	// longer holds is dropped at the end. A re-assert that fails half way
	// keeps the sessions it did not reach, so the next one still knows
	// they were announced.
	const reasserted = -1
	var ops, fresh []op
	var err error
	total := 0
	n.rangeFn(func(user, room, state []byte, lastSeen, expiry int64) bool {
		h := sessHash(user, room)
		_, knew := w.state[h]
		oldState := w.states[h]
		w.state[h] = sessState{W: expiry, L: expiry, due: reasserted}
		if len(state) > 0 {
			w.states[h] = string(state)
		} else if oldState != "" {
			delete(w.states, h)
		}
		o := op{kind: opAssert, user: string(user), room: string(room), lastSeen: lastSeen, expiry: expiry, state: string(state)}
		if !first {
			if !knew {
				o.kind = opTouch
			} else if oldState != o.state {
				o.kind, o.update, o.known = opTouch, true, true
			}
		}
		if o.kind == opTouch {
			fresh = append(fresh, o)
			return true
		}
		ops = append(ops, o)
		if len(ops) >= 16*n.cfg.PipelineSize {
			total += len(ops)
			if err = w.sendAssertTimed(ops); err != nil {
				return false
			}
			ops = ops[:0]
		}
		return true
	})
	complete := err == nil
	for h, st := range w.state {
		switch {
		case st.due == reasserted:
			st.due = 0
			w.state[h] = st
		case complete:
			delete(w.state, h)
			delete(w.states, h)
		}
	}
	if err == nil && len(ops) > 0 {
		total += len(ops)
		err = w.sendAssertTimed(ops)
	}
	if err == nil && len(fresh) > 0 {
		// A failed touch is kept for retry (send), and goes out before the
		// next re-assert.
		total += len(fresh)
		err = w.send(fresh)
	}
	if err != nil {
		return err
	}
	ctx, cancel := n.roundCtx()
	defer cancel()
	if err := n.setMarkers(ctx); err != nil {
		return err
	}
	// The room sweep (repairRooms) and a second look at this node's own
	// members follow in the next rounds: this node's sessions are all in
	// Redis now, and its answers whole.
	// A reaper's or leaver's ROOMREM decided before this re-assert can
	// still land after it and remove a member it just re-added: look again
	// once in-flight writes are done. Not at start: nothing failed yet.
	if n.asserts.Load() > 0 {
		w.repairDue = true
		w.roomPassAt = time.Now().Add(2 * n.cfg.HealthInterval).UnixMilli()
	}
	n.needAssert.Store(false)
	n.asserts.Add(1)
	n.whole(total, time.Since(t0))
	return nil
}

// writeTimeout bounds one writer round of pipelines (and each re-assert
// chunk of 16 pipelines' worth of sessions).
const writeTimeout = 10 * time.Second

func (w *writerState) sendAssertTimed(ops []op) error {
	if f := w.n.testBeforeAssert.Load(); f != nil {
		if err := (*f)(); err != nil {
			return err
		}
	}
	ctx, cancel := w.n.roundCtx()
	defer cancel()
	return w.sendAssert(ctx, ops)
}

// assertBatch is the most sessions one TOUCHN or ROOMADDN call carries.
const assertBatch = 256

// sendAssert writes re-asserted sessions with the batch scripts: one call
// per user bucket (and per room bucket for the member sets) per
// assertBatch sessions, so 100,000 sessions take a few hundred commands.
func (w *writerState) sendAssert(ctx context.Context, ops []op) error {
	n := w.n
	var byUser [Buckets][]int
	for i := range ops {
		b := userBucket(ops[i].user)
		byUser[b] = append(byUser[b], i)
	}
	type call struct {
		cmd *redis.Cmd
		idx []int
	}
	var calls []call
	err := n.withScripts(ctx, func() error {
		calls = calls[:0]
		p := n.c.Pipeline()
		for b, idx := range byUser {
			for len(idx) > 0 {
				k := min(len(idx), assertBatch)
				chunk := idx[:k]
				idx = idx[k:]
				keys := make([]string, 0, 2+k)
				keys = append(keys, n.k.expiry(b), n.k.counts(b))
				args := make([]any, 0, 4*k)
				for _, i := range chunk {
					o := &ops[i]
					keys = append(keys, n.k.user(o.user))
					args = append(args, o.room, o.expiry, o.seenArg(), sessionMember(o.user, o.room))
				}
				calls = append(calls, call{n.evalSha(ctx, p, scriptTouchN, keys, args...), chunk})
			}
		}
		return n.exec(ctx, p)
	})
	if err != nil {
		return err
	}
	for _, c := range calls {
		res, err := c.cmd.Int64Slice()
		if err != nil {
			return fmt.Errorf("cannot re-assert sessions: %w", err)
		}
		if len(res) != len(c.idx) {
			return fmt.Errorf("cannot re-assert sessions: %d answers for %d", len(res), len(c.idx))
		}
	}
	return w.addMembers(ctx, ops)
}

// addMembers adds every session of ops to its room's member set (ROOMADDN,
// idempotent: a member already there is not counted again).
func (w *writerState) addMembers(ctx context.Context, ops []op) error {
	n := w.n
	var byRoom [Buckets][]int
	for i := range ops {
		if o := &ops[i]; o.room != "" {
			b := roomBucket(o.room)
			byRoom[b] = append(byRoom[b], i)
		}
	}
	var adds []*redis.Cmd
	err := n.withScripts(ctx, func() error {
		p := n.c.Pipeline()
		for b, idx := range byRoom {
			if len(idx) == 0 {
				continue
			}
			sort.Slice(idx, func(x, y int) bool { return ops[idx[x]].room < ops[idx[y]].room })
			keys := []string{n.k.top(b)}
			var args []any
			flush := func() {
				if len(keys) > 1 {
					adds = append(adds, n.evalSha(ctx, p, scriptRoomAddN, keys, args...))
				}
				keys, args = []string{n.k.top(b)}, nil
			}
			for x := 0; x < len(idx); {
				room := ops[idx[x]].room
				y := x
				for y < len(idx) && ops[idx[y]].room == room && y-x < 2*assertBatch {
					y++
				}
				keys = append(keys, n.k.members(room))
				args = append(args, room, y-x)
				for _, i := range idx[x:y] {
					args = append(args, 0, ops[i].user)
				}
				if len(args) >= 4*assertBatch {
					flush()
				}
				x = y
			}
			flush()
		}
		return n.exec(ctx, p)
	})
	if err != nil {
		return err
	}
	for _, c := range adds {
		if err := c.Err(); err != nil {
			return fmt.Errorf("cannot re-assert room members: %w", err)
		}
	}
	return nil
}

// repairBatch is how many rooms, or member checks, one repair pipeline carries.
const repairBatch = 4096

// repairRooms makes the room side agree with the user side: a member whose
// session (user hash field) is gone is removed, and every room's count is
// set to its member list. A member is removed only when its session is
// missing both before and after the removal; one whose session appears in
// between (a concurrent join, whose own ROOMADD may already have found it
// a member) is put back. Cost: one HEXISTS per room member of the whole
// cluster, after a fault only.
func (w *writerState) repairRooms() error {
	n := w.n
	ctx, cancel := n.roundCtx()
	defer cancel()
	p := n.c.Pipeline()
	tops := make([]*redis.StringSliceCmd, Buckets)
	for b := range Buckets {
		tops[b] = p.ZRange(ctx, n.k.top(b), 0, -1)
	}
	if err := n.exec(ctx, p); err != nil {
		return fmt.Errorf("cannot read rooms: %w", err)
	}
	var rooms []string
	for _, c := range tops {
		rooms = append(rooms, c.Val()...)
	}
	type member struct{ user, room string }
	for len(rooms) > 0 {
		k := min(len(rooms), repairBatch)
		chunk := rooms[:k]
		rooms = rooms[k:]
		p := n.c.Pipeline()
		ms := make([]*redis.StringSliceCmd, len(chunk))
		for i, room := range chunk {
			ms[i] = p.ZRange(ctx, n.k.members(room), 0, -1)
		}
		if err := n.exec(ctx, p); err != nil {
			return fmt.Errorf("cannot read room members: %w", err)
		}
		var all []member
		for i, c := range ms {
			for _, u := range c.Val() {
				all = append(all, member{u, chunk[i]})
			}
		}
		check := func(list []member) ([]member, error) {
			var missing []member
			for len(list) > 0 {
				k := min(len(list), repairBatch)
				part := list[:k]
				list = list[k:]
				p := n.c.Pipeline()
				ex := make([]*redis.BoolCmd, len(part))
				for i, m := range part {
					ex[i] = p.HExists(ctx, n.k.user(m.user), m.room)
				}
				if err := n.exec(ctx, p); err != nil {
					return nil, fmt.Errorf("cannot check room members: %w", err)
				}
				for i, c := range ex {
					if !c.Val() {
						missing = append(missing, part[i])
					}
				}
			}
			return missing, nil
		}
		ghosts, err := check(all)
		if err != nil {
			return err
		}
		script := func(s *redis.Script, list []member) error {
			if len(list) == 0 {
				return nil
			}
			p := n.c.Pipeline()
			cmds := make([]*redis.Cmd, len(list))
			for i, m := range list {
				cmds[i] = n.evalSha(ctx, p, s, []string{n.k.members(m.room), n.k.top(roomBucket(m.room))}, m.user, m.room)
			}
			_ = n.withScripts(ctx, func() error { return n.exec(ctx, p) })
			for _, c := range cmds {
				if err := c.Err(); err != nil {
					return fmt.Errorf("cannot repair room members: %w", err)
				}
			}
			return nil
		}
		if err := script(scriptRoomRem, ghosts); err != nil {
			return err
		}
		back, err := check(ghosts)
		if err != nil {
			return err
		}
		var rejoined []member
		missing := map[member]bool{}
		for _, m := range back {
			missing[m] = true
		}
		for _, m := range ghosts {
			if !missing[m] {
				rejoined = append(rejoined, m)
			}
		}
		if err := script(scriptRoomAdd, rejoined); err != nil {
			return err
		}
		p = n.c.Pipeline()
		syncs := make([]*redis.Cmd, len(chunk))
		for i, room := range chunk {
			syncs[i] = n.evalSha(ctx, p, scriptRoomSync, []string{n.k.members(room), n.k.top(roomBucket(room))}, room)
		}
		_ = n.withScripts(ctx, func() error { return n.exec(ctx, p) })
		for _, c := range syncs {
			if err := c.Err(); err != nil {
				return fmt.Errorf("cannot repair room counts: %w", err)
			}
		}
	}
	return nil
}

func (n *Node) markerField() string { return "n:" + n.cfg.NodeID }

func (n *Node) setMarkers(ctx context.Context) error {
	p := n.c.Pipeline()
	for b := range Buckets {
		p.HSet(ctx, n.k.counts(b), n.markerField(), 1)
	}
	return n.exec(ctx, p)
}

// roomPass re-adds every live session of this node to its room's member
// set (the second look after a re-assert).
func (w *writerState) roomPass() error {
	n := w.n
	var ops []op
	var err error
	n.rangeFn(func(user, room, _ []byte, lastSeen, expiry int64) bool {
		ops = append(ops, op{kind: opAssert, user: string(user), room: string(room)})
		if len(ops) >= 16*n.cfg.PipelineSize {
			if err = w.addMembersTimed(ops); err != nil {
				return false
			}
			ops = ops[:0]
		}
		return true
	})
	if err == nil && len(ops) > 0 {
		err = w.addMembersTimed(ops)
	}
	return err
}

func (w *writerState) addMembersTimed(ops []op) error {
	ctx, cancel := w.n.roundCtx()
	defer cancel()
	return w.addMembers(ctx, ops)
}
