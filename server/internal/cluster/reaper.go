package cluster

import (
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/shardmap"
)

const reapLimit = 1000

func (n *Node) reapLoop() {
	t := time.NewTicker(n.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-t.C:
		}
		if !n.up.Load() {
			continue
		}
		for range 10 {
			more, err := n.reapOnce()
			if err != nil {
				n.markDown(err)
				break
			}
			if !more {
				break
			}
		}
	}
}

// reapOnce runs the reap script on every bucket and publishes the timeouts
// it won. It reports whether a bucket had more expired sessions.
func (n *Node) reapOnce() (more bool, err error) {
	ctx, cancel := n.roundCtx()
	defer cancel()
	now := time.Now().UnixMilli()
	var cmds []*redis.Cmd
	err = n.withScripts(ctx, func() error {
		p := n.c.Pipeline()
		cmds = cmds[:0]
		for b := range Buckets {
			cmds = append(cmds, n.evalSha(ctx, p, scriptReap, []string{n.k.expiry(b), n.k.counts(b)},
				now, reapLimit, n.k.uTag[b]+":u:", n.k.uTag[b]+":l:", n.cfg.LastSeenRetention.Milliseconds()))
		}
		return n.exec(ctx, p)
	})
	if err != nil {
		return false, err
	}
	var evs []evOp
	for _, c := range cmds {
		vals, err := c.StringSlice()
		if err != nil {
			return false, fmt.Errorf("cannot reap: %w", err)
		}
		if len(vals) >= 2*reapLimit {
			more = true
		}
		for i := 0; i+1 < len(vals); i += 2 {
			user, room, ok := splitMember(vals[i])
			exp, _, ok2 := splitValue(vals[i+1])
			if !ok || !ok2 {
				continue
			}
			evs = append(evs, evOp{ev: shardmap.Event{User: user, Room: room, At: exp, Reason: shardmap.ReasonTimeout}})
		}
	}
	return more, n.emit(ctx, evs)
}
