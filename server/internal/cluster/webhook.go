package cluster

import (
	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/server/internal/events"
)

// What the webhook deliverer (server/internal/webhook) reads the event stream with:
// its own consumer group on the same stream, through the node's client.

// Client returns the node's Redis client (nil before Start).
func (n *Node) Client() redis.UniversalClient { return n.c }

// StreamKey returns the key of the event stream (pd:events).
func (n *Node) StreamKey() string { return n.k.stream() }

// ID returns the node's id (--node-id).
func (n *Node) ID() string { return n.cfg.NodeID }

// DecodeEntry turns an event stream entry into an event; false for an
// entry that is not one (or whose fields were deleted).
func DecodeEntry(m redis.XMessage) (*events.Event, bool) { return decodeEntry(m) }
