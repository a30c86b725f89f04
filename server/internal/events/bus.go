package events

import (
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned by Sub.Next once the bus is closed or the
// subscription ended.
var ErrClosed = errors.New("event bus closed")

// Source serves history older than the bus's own ring (the Redis Stream in
// a cluster). Range returns up to n events after id, oldest first, and
// lost=true when events after id are no longer held (trimmed). It may
// block on the network; the bus never calls it with its lock held.
type Source interface {
	Range(after ID, n int) (evs []*Event, lost bool, err error)
}

// Tailer is a Source that can tell the id of its newest event: a resume
// from an id past it (another history, or garbage) gets a reset, as on a
// single node, rather than waiting for events that will never come.
type Tailer interface {
	Tail() (ID, error)
}

// Config sizes a Bus.
type Config struct {
	// History is how many events the ring keeps for resume
	// (--event-history). The default is 100000.
	History int
	// HistoryBytes bounds the ring's memory (--event-history-bytes): the
	// oldest events go once the held events' size (Event.Size) would pass
	// it. The default is 64 MiB.
	HistoryBytes int64
	// Buffer is each subscriber's live queue. A subscriber whose queue is
	// full is not blocked on: it re-reads what it missed from the ring (or
	// gets a reset). The default is 1024.
	Buffer int
	// Epoch is the Ms part of the ids Publish assigns (single node: the
	// time the history began, so ids from an earlier run are recognised).
	Epoch uint64
	// Source, when set, serves events older than the ring (cluster).
	Source Source
}

// Bus holds the event history and fans events out to subscribers, indexed
// by room. Publish and Append never block on a subscriber.
//
// Ordering: events are delivered to every subscriber in ring order, which is
// id order. A subscriber's cursor (the id it has delivered or skipped up to)
// only moves forward, so nothing is delivered twice, and a subscriber that
// fell behind its queue catches up from the ring under the bus lock before
// it takes live events again, so nothing is missed while the ring holds it.
type Bus struct {
	cfg Config
	mu  struct {
		sync.Mutex
		ring   []*Event // circular, len == cfg.History once full
		start  int      // index of the oldest event
		n      int      // events held
		bytes  int64    // their Size, summed
		floor  ID       // events at or before floor are not in the ring
		last   ID       // newest event id
		byRoom map[string]map[*Sub]struct{}
		all    map[*Sub]struct{}
		closed bool
	}
	subs      atomic.Int64
	published atomic.Uint64
	overflows atomic.Uint64 // times a subscriber's queue was full
	resets    atomic.Uint64 // reset events handed to subscribers
}

// New returns an empty bus whose ids start after {Epoch, 0}.
func New(cfg Config) *Bus {
	if cfg.History <= 0 {
		cfg.History = 100000
	}
	if cfg.HistoryBytes <= 0 {
		cfg.HistoryBytes = 64 << 20
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = 1024
	}
	b := &Bus{cfg: cfg}
	b.mu.floor = ID{cfg.Epoch, 0}
	b.mu.last = b.mu.floor
	b.mu.byRoom = map[string]map[*Sub]struct{}{}
	b.mu.all = map[*Sub]struct{}{}
	return b
}

// SetFloor declares that the history begins after id (cluster: the stream's
// last entry when the node started reading it). Only valid before the first
// Append.
//
// Subscribers that came before it start at the epoch ({Epoch, 0}, "from
// when this node started"); the events between that and id are history
// now, so they are marked behind and read them from the Source.
func (b *Bus) SetFloor(id ID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.n != 0 {
		return
	}
	b.mu.floor, b.mu.last = id, id
	b.eachSubLocked(func(s *Sub) {
		s.behind.Store(true)
		s.wakeLocked()
	})
}

// eachSubLocked calls f for every subscriber, of all rooms and of one.
func (b *Bus) eachSubLocked(f func(*Sub)) {
	for s := range b.mu.all {
		f(s)
	}
	for _, m := range b.mu.byRoom {
		for s := range m {
			f(s)
		}
	}
}

// Rebase drops the history and starts it again after id (cluster: the
// stream lost entries this node had read). Every subscriber gets a reset.
func (b *Bus) Rebase(id ID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	clear(b.mu.ring)
	b.mu.ring, b.mu.start, b.mu.n, b.mu.bytes = b.mu.ring[:0], 0, 0, 0
	b.mu.floor, b.mu.last = id, id
	b.eachSubLocked(func(s *Sub) {
		s.rebased.Store(true)
		s.wakeLocked()
	})
}

// SetSource sets where history older than the ring comes from. Only valid
// before the first Subscribe.
func (b *Bus) SetSource(src Source) { b.cfg.Source = src }

// Publish assigns ev the next id and delivers it (single node).
func (b *Bus) Publish(ev *Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ev.ID = ID{b.mu.last.Ms, b.mu.last.Seq + 1}
	b.appendLocked(ev)
}

// Append delivers ev, which carries its own id (cluster: the stream entry
// id). An id not after the newest is a duplicate and is ignored; Append
// reports whether ev was taken.
func (b *Bus) Append(ev *Event) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.mu.last.Less(ev.ID) {
		return false
	}
	b.appendLocked(ev)
	return true
}

func (b *Bus) appendLocked(ev *Event) {
	ev.data = ev.render()
	b.mu.last = ev.ID
	size := ev.Size()
	for b.mu.n > 0 && (b.mu.n >= b.cfg.History || b.mu.bytes+size > b.cfg.HistoryBytes) {
		old := b.mu.ring[b.mu.start]
		b.mu.floor = old.ID
		b.mu.bytes -= old.Size()
		b.mu.ring[b.mu.start] = nil
		b.mu.start = (b.mu.start + 1) % len(b.mu.ring)
		b.mu.n--
	}
	if b.mu.n == len(b.mu.ring) {
		// Full but below History: a bigger ring, oldest first.
		ring := make([]*Event, min(max(2*b.mu.n, 1024), b.cfg.History))
		for i := range b.mu.n {
			ring[i] = b.atLocked(i)
		}
		b.mu.ring, b.mu.start = ring, 0
	}
	b.mu.ring[(b.mu.start+b.mu.n)%len(b.mu.ring)] = ev
	b.mu.n++
	b.mu.bytes += size
	b.published.Add(1)
	if b.mu.closed {
		return
	}
	for s := range b.mu.byRoom[ev.Room] {
		s.offer(b, ev)
	}
	for s := range b.mu.all {
		s.offer(b, ev)
	}
}

// at returns the i-th oldest event in the ring.
func (b *Bus) atLocked(i int) *Event { return b.mu.ring[(b.mu.start+i)%len(b.mu.ring)] }

// searchLocked returns the index of the first ring event after id.
func (b *Bus) searchLocked(id ID) int {
	return sort.Search(b.mu.n, func(i int) bool { return id.Less(b.atLocked(i).ID) })
}

// Last returns the newest event id.
func (b *Bus) Last() ID {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.mu.last
}

// Stats are the bus's counters.
type Stats struct {
	Subscribers int64
	Held        int // events in the ring
	// HistoryBytes is the held events' memory (Event.Size, summed).
	HistoryBytes int64
	Published    uint64 // events taken
	Overflows    uint64 // times a subscriber's live queue was full (it then re-read from history)
	Resets       uint64 // resets handed to subscribers (history could not cover their gap)
}

// Stats returns the bus's counters.
func (b *Bus) Stats() Stats {
	b.mu.Lock()
	held, bytes := b.mu.n, b.mu.bytes
	b.mu.Unlock()
	return Stats{Subscribers: b.subs.Load(), Held: held, HistoryBytes: bytes, Published: b.published.Load(),
		Overflows: b.overflows.Load(), Resets: b.resets.Load()}
}

// Close ends every subscription; later Subscribe calls fail.
func (b *Bus) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.closed {
		return
	}
	b.mu.closed = true
	b.eachSubLocked(func(s *Sub) { close(s.done) })
}

// Sub is one subscription: a room (or all rooms) and a cursor. Its methods
// are for one reader goroutine, except Close.
type Sub struct {
	room string
	all  bool
	ch   chan *Event
	done chan struct{}
	// behind is set when the reader must read from history before taking
	// live events again: at a resume, and when the live queue overflowed.
	// The publisher sets it under the bus lock; the reader clears it under
	// the bus lock once it has caught up with the ring's newest event.
	behind atomic.Bool
	cursor ID // reader-owned: everything up to cursor is delivered or skipped
	reset  bool
	// ahead: the resume id was past this node's newest event (cluster);
	// the first catch-up asks the Source's Tailer whether any node has it.
	ahead  bool
	closed atomic.Bool
	// rebased is set by Rebase: the history this subscriber read from is gone.
	rebased atomic.Bool
}

func (s *Sub) offer(b *Bus, ev *Event) {
	if s.behind.Load() {
		return
	}
	select {
	case s.ch <- ev:
	default:
		s.behind.Store(true)
		b.overflows.Add(1)
	}
}

// wakeLocked makes a reader blocked in Next look at its flags.
func (s *Sub) wakeLocked() {
	select {
	case s.ch <- nil:
	default:
	}
}

func (s *Sub) matches(ev *Event) bool { return s.all || ev.Room == s.room }

// Subscribe adds a subscriber to room (all: every room). With since set,
// the subscriber first gets every event after since that the history holds,
// or a reset when it cannot cover the gap; without, it starts with the next
// event. It returns nil when the bus is closed.
func (b *Bus) Subscribe(room string, all bool, since *ID) *Sub {
	s := &Sub{room: room, all: all, ch: make(chan *Event, b.cfg.Buffer), done: make(chan struct{})}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.closed {
		return nil
	}
	s.cursor = b.mu.last
	if since != nil && *since != b.mu.last {
		switch {
		case b.mu.last.Less(*since) && b.cfg.Source == nil:
			// An id from the future: another history (a restarted node
			// whose clock went back) or garbage. (In a cluster it may be
			// an id another node has read already and this one not yet.)
			s.reset = true
		case since.Less(b.mu.floor) && b.cfg.Source == nil:
			s.reset = true
		default:
			s.cursor = *since
			s.ahead = b.mu.last.Less(*since)
			s.behind.Store(true)
		}
	}
	if all {
		b.mu.all[s] = struct{}{}
	} else {
		m := b.mu.byRoom[room]
		if m == nil {
			m = map[*Sub]struct{}{}
			b.mu.byRoom[room] = m
		}
		m[s] = struct{}{}
	}
	b.subs.Add(1)
	return s
}

// Unsubscribe removes the subscription.
func (b *Bus) Unsubscribe(s *Sub) {
	if !s.closed.CompareAndSwap(false, true) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.all {
		delete(b.mu.all, s)
	} else if m := b.mu.byRoom[s.room]; m != nil {
		delete(m, s)
		if len(m) == 0 {
			delete(b.mu.byRoom, s.room)
		}
	}
	b.subs.Add(-1)
}

// catchUpPage is how many ring slots a reader scans per lock hold.
const catchUpPage = 4096

// Next appends the next events for s to dst and returns it. It blocks until
// there is at least one, wake fires (dst returned as is: time for a
// keep-alive) or the bus closes (ErrClosed). A reset event (type Reset,
// reason history_lost) comes first when the history could not cover what
// the subscriber missed; the events after it are live ones.
func (b *Bus) Next(s *Sub, dst []*Event, max int, wake <-chan time.Time) ([]*Event, error) {
	for {
		if s.rebased.Swap(false) {
			s.reset = true
		}
		if s.reset {
			s.reset = false
			b.resets.Add(1)
			b.mu.Lock()
			s.cursor = b.mu.last
			s.behind.Store(false)
			b.mu.Unlock()
			return append(dst, &Event{ID: s.cursor, Type: Reset, Reason: ReasonHistoryLost}), nil
		}
		if s.behind.Load() {
			var err error
			dst, err = b.catchUp(s, dst, max)
			if err != nil {
				return dst, err
			}
			if len(dst) > 0 {
				return dst, nil
			}
			continue // caught up, or a reset to hand out
		}
		select {
		case ev := <-s.ch:
			if dst = s.drain(s.take(dst, ev), max); len(dst) > 0 {
				return dst, nil
			}
		case <-wake:
			return dst, nil
		case <-s.done:
			// Events published before Close still reach the subscriber
			// (the webhook queue takes the leaves released at shutdown).
			if dst = s.drain(dst, max); len(dst) > 0 {
				return dst, nil
			}
			return dst, ErrClosed
		}
	}
}

// drain appends the events already queued for s, up to max in dst, without
// waiting.
func (s *Sub) drain(dst []*Event, max int) []*Event {
	for len(dst) < max {
		select {
		case ev := <-s.ch:
			dst = s.take(dst, ev)
		default:
			return dst
		}
	}
	return dst
}

func (s *Sub) take(dst []*Event, ev *Event) []*Event {
	if ev == nil || !s.cursor.Less(ev.ID) {
		return dst // already delivered while catching up from history
	}
	s.cursor = ev.ID
	return append(dst, ev)
}

// catchUp appends the events after s's cursor that s wants, up to max,
// from the Source while the cursor is older than the ring, then from the
// ring. When it reaches the ring's newest event it clears behind, under the
// lock, so the next event published goes to the live queue.
func (b *Bus) catchUp(s *Sub, dst []*Event, max int) ([]*Event, error) {
	b.mu.Lock()
	floor, last := b.mu.floor, b.mu.last
	b.mu.Unlock()
	if s.ahead && last.Less(s.cursor) {
		// A resume id ahead of this node: another node may have read it
		// already, or no one ever will. (Without a Tailer, or when it
		// fails, the subscriber waits for the events up to it.) A
		// subscriber from before SetFloor starts at the epoch, which may
		// be ahead of an empty stream: that is not asked about.
		s.ahead = false
		if t, ok := b.cfg.Source.(Tailer); ok {
			if tail, err := t.Tail(); err == nil && tail.Less(s.cursor) {
				s.reset = true
				return dst, nil
			}
		}
	}
	if s.cursor.Less(floor) {
		if b.cfg.Source == nil {
			s.reset = true
			return dst, nil
		}
		evs, lost, err := b.cfg.Source.Range(s.cursor, max)
		if err != nil {
			return dst, err
		}
		if lost {
			s.reset = true
			return dst, nil
		}
		for _, ev := range evs {
			if !floor.Less(ev.ID) {
				if s.cursor.Less(ev.ID) && s.matches(ev) {
					dst = append(dst, ev)
				}
				s.cursor = ev.ID
			}
		}
		if len(evs) == 0 || !s.cursor.Less(floor) {
			s.cursor = floor // the ring holds the rest
		}
		return dst, nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if s.cursor.Less(b.mu.floor) { // the ring moved on while we were away
		if b.cfg.Source == nil {
			s.reset = true
		}
		return dst, nil
	}
	i := b.searchLocked(s.cursor)
	for end := min(b.mu.n, i+catchUpPage); i < end && len(dst) < max; i++ {
		ev := b.atLocked(i)
		if s.matches(ev) {
			dst = append(dst, ev)
		}
		s.cursor = ev.ID
	}
	if i == b.mu.n {
		// Caught up: live events from here on. Anything already queued is
		// at or before the cursor and is skipped by take.
		if s.cursor.Less(b.mu.last) {
			s.cursor = b.mu.last
		}
		s.behind.Store(false)
	}
	return dst, nil
}
