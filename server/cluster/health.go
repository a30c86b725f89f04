package cluster

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
)

// Ready reports whether the node is connected, has asserted its sessions
// and receives the cluster's events.
func (n *Node) Ready() bool {
	return n.up.Load() && n.subscribed.Load() && n.asserts.Load() > 0
}

// Up reports whether the last Redis round trip succeeded.
func (n *Node) Up() bool { return n.up.Load() }

// markDown records a failed round trip: the node serves partial answers and
// re-asserts its sessions once Redis answers again.
func (n *Node) markDown(err error) {
	n.errs.Add(1)
	n.needAssert.Store(true)
	if n.up.Swap(false) {
		n.log.Warn("redis unreachable: answering from this node only", "err", err)
	}
}

func (n *Node) healthLoop() {
	t := time.NewTicker(n.cfg.HealthInterval)
	defer t.Stop()
	for {
		n.checkHealth()
		select {
		case <-n.quit:
			return
		case <-t.C:
		}
	}
}

// checkHealth reads this node's marker in every bucket: an error marks
// Redis down; a missing marker (Redis restarted empty, or a master of a
// Redis Cluster lost its data) or a recovery schedules a re-assert.
func (n *Node) checkHealth() {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.HealthInterval+time.Second)
	defer cancel()
	p := n.c.Pipeline()
	cmds := make([]*redis.BoolCmd, Buckets)
	for b := range Buckets {
		cmds[b] = p.HExists(ctx, n.k.counts(b), n.markerField())
	}
	if err := n.exec(ctx, p); err != nil {
		n.markDown(err)
		return
	}
	missing := false
	for _, c := range cmds {
		if !c.Val() {
			missing = true
		}
	}
	if !n.up.Swap(true) {
		n.log.Info("redis reachable: answering for the whole cluster")
		n.needAssert.Store(true)
	}
	if missing {
		n.needAssert.Store(true)
	}
	if n.needAssert.Load() {
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}
}
