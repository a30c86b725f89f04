package server

import (
	"sync"
	"sync/atomic"

	"github.com/presenced/presenced/shardmap"
)

// hub fans join and leave events out to event-stream subscribers. publish
// never blocks: a subscriber whose buffer is full misses the event, and the
// miss is counted on the subscriber (and in a metric), so one slow reader
// cannot stall heartbeats.
type hub struct {
	mu struct {
		sync.Mutex
		subs   map[*subscriber]struct{}
		closed bool
	}
	n atomic.Int64
}

// subscriber is one open event stream; room "" with all set receives every room.
type subscriber struct {
	room    string
	all     bool
	ch      chan shardmap.Event
	done    chan struct{}
	dropped atomic.Uint64
}

func newHub() *hub {
	h := &hub{}
	h.mu.subs = map[*subscriber]struct{}{}
	return h
}

// subscribe adds a subscriber unless max are already open or the hub is
// closed; it returns nil then.
func (h *hub) subscribe(room string, all bool, buffer, max int) *subscriber {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.closed || len(h.mu.subs) >= max {
		return nil
	}
	sub := &subscriber{room: room, all: all, ch: make(chan shardmap.Event, buffer), done: make(chan struct{})}
	h.mu.subs[sub] = struct{}{}
	h.n.Add(1)
	return sub
}

func (h *hub) unsubscribe(sub *subscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.mu.subs[sub]; ok {
		delete(h.mu.subs, sub)
		h.n.Add(-1)
	}
}

func (h *hub) count() int { return int(h.n.Load()) }

// publish delivers ev to every matching subscriber without blocking and
// returns how many missed it.
func (h *hub) publish(ev shardmap.Event) (missed int) {
	if h.n.Load() == 0 {
		return 0
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.mu.subs {
		if !sub.all && sub.room != ev.Room {
			continue
		}
		select {
		case sub.ch <- ev:
		default:
			sub.dropped.Add(1)
			missed++
		}
	}
	return missed
}

// close ends every stream; later subscribes fail.
func (h *hub) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.mu.closed {
		return
	}
	h.mu.closed = true
	for sub := range h.mu.subs {
		close(sub.done)
	}
}
