package cluster

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

// reassert writes every live session of this node (after Redis lost them or
// was unreachable), without events for those it finds missing.
func (w *writerState) reassert() error {
	n := w.n
	t0 := time.Now()
	clear(w.state)
	for i := range w.ring {
		w.ring[i] = w.ring[i][:0]
	}
	var ops []op
	var err error
	total := 0
	n.rangeFn(func(user, room []byte, lastSeen, expiry int64) bool {
		w.state[sessHash(user, room)] = sessState{W: expiry, L: expiry}
		ops = append(ops, op{kind: opAssert, user: string(user), room: string(room), lastSeen: lastSeen, expiry: expiry})
		if len(ops) >= 16*n.cfg.PipelineSize {
			total += len(ops)
			if err = w.sendAssertTimed(ops); err != nil {
				return false
			}
			ops = ops[:0]
		}
		return true
	})
	if err == nil && len(ops) > 0 {
		total += len(ops)
		err = w.sendAssertTimed(ops)
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(n.ctx, writeTimeout)
	defer cancel()
	if err := n.setMarkers(ctx); err != nil {
		return err
	}
	n.needAssert.Store(false)
	n.asserts.Add(1)
	n.log.Info("sessions re-asserted in redis", "sessions", total, "took", time.Since(t0))
	return nil
}

// writeTimeout bounds one writer round of pipelines (and each re-assert
// chunk of 16 pipelines' worth of sessions).
const writeTimeout = 10 * time.Second

func (w *writerState) sendAssertTimed(ops []op) error {
	ctx, cancel := context.WithTimeout(w.n.ctx, writeTimeout)
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
	var byUser, byRoom [Buckets][]int
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
					args = append(args, o.room, o.expiry, o.lastSeen, sessionMember(o.user, o.room))
				}
				calls = append(calls, call{scriptTouchN.EvalSha(ctx, p, keys, args...), chunk})
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
		for j, v := range res {
			if o := &ops[c.idx[j]]; v == 1 && o.room != "" {
				b := roomBucket(o.room)
				byRoom[b] = append(byRoom[b], c.idx[j])
			}
		}
	}
	return n.withScripts(ctx, func() error {
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
					scriptRoomAddN.EvalSha(ctx, p, keys, args...)
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
}

func (n *Node) markerField() string { return "n:" + n.cfg.NodeID }

func (n *Node) setMarkers(ctx context.Context) error {
	p := n.c.Pipeline()
	for b := range Buckets {
		p.HSet(ctx, n.k.counts(b), n.markerField(), 1)
	}
	return n.exec(ctx, p)
}
