package webhook

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/presenced/presenced/internal/routine"
	"github.com/presenced/presenced/persist"
	"github.com/presenced/presenced/server/internal/events"
)

// Single node: a pump subscribed to every room of the event bus (after the
// leave debounce) appends each event's JSON to the delivery queue; the
// deliverer reads batches from its head and deletes them once delivered.
// With a data directory the queue is persist.Queue (synced appends: a
// restart delivers what was queued and not yet delivered); without, it is
// in memory and lost on restart.

// queue is the single-node delivery queue. Methods are safe for
// concurrent use (the pump appends while the deliverer reads and deletes).
type queue interface {
	Append(now int64, recs [][]byte) error
	Read(n int) ([]persist.QueueItem, error)
	Delete(through uint64) error
	Len() (n int, oldest int64)
}

// memQueue is the queue without a data directory.
type memQueue struct {
	mu    sync.Mutex
	items []persist.QueueItem
	next  uint64
	bytes int64 // recSize of the items, summed
}

// memItemOverhead is a queued record's memory besides its data: the
// QueueItem and the slice's spare capacity.
const memItemOverhead = 64

// recSize is what one record costs in the in-memory queue.
func recSize(rec []byte) int64 { return int64(cap(rec)) + memItemOverhead }

func (q *memQueue) Append(now int64, recs [][]byte) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, r := range recs {
		q.next++
		q.items = append(q.items, persist.QueueItem{Seq: q.next, Enqueued: now, Data: r})
		q.bytes += recSize(r)
	}
	return nil
}

// Bytes is the queue's memory (queueBytes).
func (q *memQueue) Bytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// queueBytes is a queue that knows its memory: the in-memory one, bounded
// by Config.MaxQueueBytes (the one on disk is bounded by MaxQueue alone).
type queueBytes interface{ Bytes() int64 }

func (q *memQueue) Read(n int) ([]persist.QueueItem, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]persist.QueueItem(nil), q.items[:min(n, len(q.items))]...), nil
}

func (q *memQueue) Delete(through uint64) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := 0
	for i < len(q.items) && q.items[i].Seq <= through {
		q.bytes -= recSize(q.items[i].Data)
		i++
	}
	clear(q.items[:i])
	q.items = q.items[i:]
	if len(q.items) == 0 {
		q.items = nil // let the backing array go
	}
	return nil
}

func (q *memQueue) Len() (int, int64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) == 0 {
		return 0, 0
	}
	return len(q.items), q.items[0].Enqueued
}

// localSource feeds a deliverer from the bus through the queue.
type localSource struct {
	cfg      Config
	d        *Deliverer
	bus      *events.Bus
	sub      *events.Sub
	q        queue
	kick     chan struct{} // cap 1: the pump appended
	quit     chan struct{}
	routines routine.Group

	// Pump-owned.
	dropped events.ID // newest event dropped because the queue was full
}

// StartLocal starts webhook delivery on a single node: every event the bus
// publishes after since (nil: from now on) is queued in q (nil: in memory)
// and delivered. It subscribes before it returns, so no event published
// after it is missed.
func StartLocal(cfg Config, bus *events.Bus, q *persist.Queue, since *events.ID) (*Deliverer, error) {
	d, err := newDeliverer(cfg)
	if err != nil {
		return nil, err
	}
	src := &localSource{cfg: cfg, d: d, bus: bus, kick: make(chan struct{}, 1), quit: make(chan struct{})}
	if q != nil {
		src.q = q
	} else {
		src.q = &memQueue{}
	}
	src.sub = bus.Subscribe("", true, since)
	if src.sub == nil {
		return nil, errors.New("cannot start webhooks: event bus closed")
	}
	src.routines.Go("webhook pump", src.pump)
	d.start(src)
	return d, nil
}

func (s *localSource) stop() {
	close(s.quit)
	s.routines.Wait()
	s.bus.Unsubscribe(s.sub)
}

// pump moves events from the bus to the queue. A queue that will not take
// them (disk failing) holds the pump; the bus then keeps the events in its
// history for it (or hands it a reset, delivered like any event).
func (s *localSource) pump() {
	var (
		evs  []*events.Event
		recs [][]byte
	)
	// The tick wakes Next to see quit, and to queue the reset owed for
	// dropped events once the queue has room again.
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var err error
		evs, err = s.bus.Next(s.sub, evs[:0], 512, tick.C)
		stopping := false
		select {
		case <-s.quit:
			// What Next returned is queued still: at shutdown it holds
			// the leaves released from --leave-delay.
			stopping = true
		default:
		}
		recs = recs[:0]
		n, _ := s.q.Len()
		var size int64 // of the in-memory queue; 0 on disk
		qb, inMemory := s.q.(queueBytes)
		if inMemory {
			size = qb.Bytes()
		}
		fits := func(rec []byte) bool {
			return n < s.cfg.MaxQueue && (!inMemory || size+recSize(rec) <= s.cfg.MaxQueueBytes)
		}
		if !s.dropped.IsZero() {
			if reset := (&events.Event{ID: s.dropped, Type: events.Reset, Reason: events.ReasonHistoryLost}).JSON(); fits(reset) {
				recs = append(recs, reset)
				s.dropped = events.ID{}
				n, size = n+1, size+recSize(reset)
			}
		}
		for _, ev := range evs {
			if rec := ev.JSON(); s.dropped.IsZero() && fits(rec) {
				recs = append(recs, rec)
				n, size = n+1, size+recSize(rec)
				continue
			}
			if s.dropped.IsZero() {
				s.d.log.Error("webhook queue full (--webhook-max-queue or --webhook-max-queue-bytes); dropping events, receivers get a reset",
					"max", s.cfg.MaxQueue, "max_bytes", s.cfg.MaxQueueBytes)
			}
			s.dropped = ev.ID
			s.d.lost.Add(1)
		}
		clear(evs)
		for try := 1; len(recs) > 0; try++ {
			err := s.q.Append(time.Now().UnixMilli(), recs)
			if err == nil {
				break
			}
			if try == 1 {
				s.d.log.Error("cannot queue webhook events; retrying", "err", err)
			}
			select {
			case <-s.quit:
				return
			case <-time.After(min(time.Duration(try)*100*time.Millisecond, 5*time.Second)):
			}
		}
		if len(recs) > 0 {
			select {
			case s.kick <- struct{}{}:
			default:
			}
		}
		if err != nil || stopping {
			return // bus closed, or stopped
		}
	}
}

func (s *localSource) next(ctx context.Context) (*batch, error) {
	var linger <-chan time.Time
	for {
		items, err := s.q.Read(s.cfg.Batch)
		if err != nil {
			return nil, err
		}
		if len(items) > 0 {
			due := time.UnixMilli(items[0].Enqueued).Add(s.cfg.Linger)
			if len(items) >= s.cfg.Batch || !time.Now().Before(due) {
				return s.batch(items), nil
			}
			if linger == nil {
				t := time.NewTimer(time.Until(due))
				defer t.Stop()
				linger = t.C
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.kick:
		case <-linger:
			items, err := s.q.Read(s.cfg.Batch)
			if err != nil {
				return nil, err
			}
			return s.batch(items), nil
		}
	}
}

func (s *localSource) batch(items []persist.QueueItem) *batch {
	b := &batch{evs: make([][]byte, len(items)), oldest: time.UnixMilli(items[0].Enqueued)}
	for i := range items {
		// A record queued by an earlier release may hold a state that is
		// not UTF-8: delivered with U+FFFD in its place, as streams do.
		b.evs[i] = events.ValidUTF8(items[i].Data)
	}
	last := items[len(items)-1].Seq
	b.ack = func() error { return s.q.Delete(last) }
	return b
}

func (s *localSource) depth() (int64, time.Duration) {
	n, oldest := s.q.Len()
	if n == 0 {
		return 0, 0
	}
	return int64(n), time.Since(time.UnixMilli(oldest))
}
