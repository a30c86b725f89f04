package cluster

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/shardmap"
)

// emit applies the room side of decided events and publishes them: to the
// capped stream (for backends, at least once) and on the channel (every
// node's event stream).
func (n *Node) emit(ctx context.Context, evs []evOp) error {
	if len(evs) == 0 {
		return nil
	}
	for len(evs) > 0 {
		k := min(len(evs), n.cfg.PipelineSize/3)
		chunk := evs[:k]
		evs = evs[k:]
		err := n.withScripts(ctx, func() error {
			p := n.c.Pipeline()
			for i := range chunk {
				e := &chunk[i]
				if e.ev.Room != "" {
					rb := roomBucket(e.ev.Room)
					keys := []string{n.k.members(e.ev.Room), n.k.top(rb)}
					if e.roomAdd {
						n.evalSha(ctx, p, scriptRoomAdd, keys, e.ev.User, e.ev.Room)
					} else {
						n.evalSha(ctx, p, scriptRoomRem, keys, e.ev.User, e.ev.Room)
					}
				}
				if e.silent {
					continue
				}
				typ, reason := "join", ""
				if !e.ev.Join {
					typ, reason = "leave", e.ev.Reason.String()
				}
				p.XAdd(ctx, &redis.XAddArgs{
					Stream: n.k.stream(), MaxLen: n.cfg.StreamMaxLen, Approx: true,
					Values: []any{"type", typ, "user", e.ev.User, "room", e.ev.Room,
						"at", time.UnixMilli(e.ev.At).UTC().Format("2006-01-02T15:04:05.000Z07:00"),
						"reason", reason, "node", n.cfg.NodeID},
				})
				p.Publish(ctx, n.k.channel(), encodeEvent(&e.ev))
			}
			return n.exec(ctx, p)
		})
		if err != nil {
			return fmt.Errorf("cannot publish events: %w", err)
		}
	}
	return nil
}

// encodeEvent renders the pub/sub payload: kind ('j', 'l' or 't'), the time
// in unix ms, then NUL, user, NUL, room.
func encodeEvent(ev *shardmap.Event) string {
	k := byte('j')
	if !ev.Join {
		k = 'l'
		if ev.Reason == shardmap.ReasonTimeout {
			k = 't'
		}
	}
	b := make([]byte, 0, 24+len(ev.User)+len(ev.Room))
	b = append(b, k)
	b = strconv.AppendInt(b, ev.At, 10)
	b = append(b, 0)
	b = append(b, ev.User...)
	b = append(b, 0)
	b = append(b, ev.Room...)
	return string(b)
}

func decodeEvent(s string) (shardmap.Event, bool) {
	if len(s) < 2 {
		return shardmap.Event{}, false
	}
	var ev shardmap.Event
	switch s[0] {
	case 'j':
		ev.Join = true
	case 'l':
		ev.Reason = shardmap.ReasonLeft
	case 't':
		ev.Reason = shardmap.ReasonTimeout
	default:
		return ev, false
	}
	parts := strings.SplitN(s[1:], "\x00", 3)
	if len(parts) != 3 {
		return ev, false
	}
	at, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return ev, false
	}
	ev.At, ev.User, ev.Room = at, parts[1], parts[2]
	return ev, true
}
