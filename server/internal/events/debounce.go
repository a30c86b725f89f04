package events

import (
	"sync"
)

// Debouncer holds leaves (and vacated room events, keyed by the room alone,
// and updates of a connection that ended, keyed by the connection too) for
// a delay (--leave-delay) and drops a leave
// together with the join that follows it within the delay for the same
// (user, room): a page reload or a quick reconnect produces no events (an
// update when the rejoin carries another state than the session had); a
// connection that ends and starts again within the delay likewise. A
// leave not followed by a join reaches Out the delay late. Other events
// pass at once. It is safe for concurrent use; Out is called with the
// debouncer's lock held, so events reach it in one order.
type Debouncer struct {
	out func(*Event)
	mu  struct {
		sync.Mutex
		delay   int64            // ms; 0 passes everything through
		pending map[string]*held // user "\x00" room -> the held leave
		queue   []*held          // in arrival order, which is due order
	}
}

type held struct {
	ev        *Event
	due       int64
	cancelled bool
}

// NewDebouncer returns a debouncer that delays leaves by delayMs and hands
// events to out.
func NewDebouncer(delayMs int64, out func(*Event)) *Debouncer {
	d := &Debouncer{out: out}
	d.mu.delay = delayMs
	d.mu.pending = map[string]*held{}
	return d
}

func debounceKey(user, room string) string { return user + "\x00" + room }

// heldKey is the key a held event waits under: its (user, room), or for an
// update of a connection that ended, its (user, room, connection).
func heldKey(ev *Event) string {
	if ev.Type == Update {
		return debounceKey(ev.User, ev.Room) + "\x00" + ev.Conn
	}
	return debounceKey(ev.User, ev.Room)
}

// Offer takes one event decided at now (unix ms).
func (d *Debouncer) Offer(ev *Event, now int64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.mu.delay <= 0 {
		d.out(ev)
		return
	}
	if ev.Type == Update && ev.ConnChange == ConnStarted {
		// A connection back within the delay (a reload) never left.
		k := heldKey(ev)
		if h := d.mu.pending[k]; h != nil && h.ev.Type == Update {
			h.cancelled = true
			delete(d.mu.pending, k)
			return
		}
	}
	switch {
	case ev.Type == Update && ev.ConnChange == ConnEnded, ev.Type == Leave, ev.Type == Vacated:
		k := heldKey(ev)
		h := &held{ev: ev, due: now + d.mu.delay}
		if old := d.mu.pending[k]; old != nil { // cannot happen: a leave needs a join first
			old.cancelled = true
			d.out(old.ev)
		}
		d.mu.pending[k] = h
		d.mu.queue = append(d.mu.queue, h)
		return
	case ev.Type == Occupied:
		// A room vacated and occupied again within the delay never emptied.
		k := debounceKey(ev.User, ev.Room)
		if h := d.mu.pending[k]; h != nil {
			h.cancelled = true
			delete(d.mu.pending, k)
			return
		}
	case ev.Type == Join:
		k := debounceKey(ev.User, ev.Room)
		if h := d.mu.pending[k]; h != nil {
			h.cancelled = true
			delete(d.mu.pending, k)
			// The leave and this join never happened, as far as streams
			// can tell; only a state that differs is news.
			if string(h.ev.State) != string(ev.State) {
				ev.Type = Update
				d.out(ev)
			}
			return
		}
	}
	d.out(ev)
}

// Flush delivers the held leaves due at now (all of them with all set, at
// shutdown) and returns how many are still held.
func (d *Debouncer) Flush(now int64, all bool) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.flushLocked(now, all)
}

func (d *Debouncer) flushLocked(now int64, all bool) int {
	i := 0
	for ; i < len(d.mu.queue); i++ {
		h := d.mu.queue[i]
		if !all && h.due > now {
			break
		}
		if !h.cancelled {
			delete(d.mu.pending, heldKey(h.ev))
			d.out(h.ev)
		}
		d.mu.queue[i] = nil
	}
	d.mu.queue = d.mu.queue[i:]
	if len(d.mu.queue) == 0 {
		d.mu.queue = nil
	}
	return len(d.mu.queue)
}

// Release delivers every held leave now and passes every later event
// through at once: at shutdown, so that no leave decided before the bus
// closes is lost with the debouncer's memory.
func (d *Debouncer) Release() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.mu.delay = 0
	d.flushLocked(0, true)
}

// Held returns how many leaves wait for their delay.
func (d *Debouncer) Held() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.mu.pending)
}
