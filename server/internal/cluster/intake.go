package cluster

import (
	"github.com/presenced/presenced/shardmap"
)

// Offer queues one change for replication. It copies what it keeps, never
// blocks, and may run under a shardmap lock (it is the drain callback).
func (n *Node) Offer(c *shardmap.Change) {
	kind := changeUpsert
	if c.Ended {
		kind = changeLocalExpiry
		switch c.Reason {
		case shardmap.ReasonLeft:
			kind = changeLocalLeave
		case shardmap.ReasonDisconnect:
			kind = changeLocalDisconnect
		}
	}
	n.offer(kind, c)
}

// offer appends one intake record (appendChange) of the given kind.
func (n *Node) offer(kind changeKind, c *shardmap.Change) {
	n.in.Lock()
	if n.in.closed {
		n.in.Unlock()
		return
	}
	if n.in.n >= n.cfg.MaxQueue {
		n.in.Unlock()
		n.dropped.Add(1)
		n.needAssert.Store(true)
		return
	}
	if n.in.n == 0 {
		n.in.oldest = monoNs()
	}
	n.in.buf = appendChange(n.in.buf, &change{kind: kind, lastSeen: c.LastSeen, expiry: c.Expiry, at: c.At, user: c.User, room: c.Room, state: c.State})
	n.in.n++
	full := n.in.n == n.cfg.PipelineSize
	n.in.Unlock()
	n.queued.Add(1)
	if full {
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}
}

// Kick asks the writer to send what is queued now rather than at its next
// tick; the server calls it after each drain. It never blocks.
func (n *Node) Kick() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// OfferLeave queues an explicit leave of user's session in room (all
// their rooms with all) for the whole cluster, whichever nodes hold it: a
// leave request may reach a node that never saw the user's heartbeats. It
// never blocks; at is the leave time (unix ms).
func (n *Node) OfferLeave(user, room []byte, all bool, at int64) {
	c := shardmap.Change{User: user, Room: room, At: at, Ended: true, Reason: shardmap.ReasonLeft}
	kind := changeLeave
	if all {
		kind, c.Room = changeLeaveAll, nil
	}
	n.offer(kind, &c)
}

// OfferDisconnect is OfferLeave of one room for a session whose WebSocket
// closed: its leave event carries reason disconnect.
func (n *Node) OfferDisconnect(user, room []byte, at int64) {
	c := shardmap.Change{User: user, Room: room, At: at, Ended: true, Reason: shardmap.ReasonDisconnect}
	n.offer(changeDisconnect, &c)
}

// swapIntake takes the queued changes, giving back spare (emptied) as the
// new intake buffer.
func (n *Node) swapIntake(spare []byte) (buf []byte, count int, oldest int64) {
	n.in.Lock()
	buf, count, oldest = n.in.buf, n.in.n, n.in.oldest
	n.in.buf, n.in.n = spare[:0], 0
	n.in.Unlock()
	n.queued.Add(-int64(count))
	return buf, count, oldest
}
