package cluster

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/server/internal/events"
)

// EventSink receives the cluster-wide events, read from the Redis Stream in
// stream order, from one goroutine. Its methods must not block.
// *events.Bus implements it.
type EventSink interface {
	// SetFloor says the stream held everything up to id when reading
	// began: events up to it are history (Node.Range serves them).
	SetFloor(id events.ID)
	// Append takes one event; ids only grow.
	Append(ev *events.Event) bool
	// Rebase says the stream lost entries this node had read (Redis lost
	// data): what follows starts after id, and subscribers need a reset.
	Rebase(id events.ID)
}

// streamBlock is how long one XREAD waits for new entries.
const streamBlock = time.Second

// streamLoop reads the event stream from where the node started and hands
// every entry to the sink once. It replaces pub/sub: a reconnect resumes
// from the last id read, so nothing is lost or doubled across Redis
// outages, and the timeouts another node reaped arrive like any event.
func (n *Node) streamLoop() {
	ctx := n.ctx
	var last events.ID
	for started := false; !started; {
		tail, err := n.streamTail(ctx)
		if err == nil {
			last, started = tail, true
			n.sink.SetFloor(tail)
			break
		}
		if !n.sleep(time.Second) {
			return
		}
	}
	failing := false
	for {
		res, err := n.c.XRead(ctx, &redis.XReadArgs{
			Streams: []string{n.k.stream(), last.String()}, Count: 512, Block: streamBlock,
		}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			n.subscribed.Store(true)
			// Nothing new: check the stream did not lose what we read (a
			// failover to a replica that had not received it yet).
			if tail, err := n.streamTail(ctx); err == nil && tail.Less(last) {
				n.log.Warn("event stream lost entries this node had read (Redis lost data); streams get a reset",
					"read_up_to", last.String(), "stream_now_ends_at", tail.String())
				last = tail
				n.sink.Rebase(tail)
			}
			continue
		case err != nil:
			select {
			case <-n.quit:
				return
			default:
			}
			n.subscribed.Store(false)
			if !failing {
				n.log.Warn("cannot read the event stream; streams pause until Redis answers", "err", err)
				failing = true
			}
			if !n.sleep(time.Second) {
				return
			}
			continue
		}
		if failing {
			n.log.Info("reading the event stream again", "from", last.String())
			failing = false
		}
		n.subscribed.Store(true)
		for _, st := range res {
			for _, m := range st.Messages {
				ev, ok := decodeEntry(m)
				if !ok {
					if id, ok := events.ParseID(m.ID); ok {
						last = id
					}
					continue
				}
				last = ev.ID
				n.sink.Append(ev)
			}
		}
	}
}

// sleep waits d or until the node stops; it reports false when stopping.
func (n *Node) sleep(d time.Duration) bool {
	select {
	case <-n.quit:
		return false
	case <-time.After(d):
		return true
	}
}

// streamTail returns the id of the stream's newest entry (0-0 when empty).
func (n *Node) streamTail(ctx context.Context) (events.ID, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	msgs, err := n.c.XRevRangeN(ctx, n.k.stream(), "+", "-", 1).Result()
	if err != nil {
		return events.ID{}, err
	}
	if len(msgs) == 0 {
		return events.ID{}, nil
	}
	id, _ := events.ParseID(msgs[0].ID)
	return id, nil
}

// Tail is the id of the stream's newest entry (events.Tailer): a resume
// from an id past it gets a reset.
func (n *Node) Tail() (events.ID, error) { return n.streamTail(n.ctx) }

// Range serves history older than the bus's ring from the stream
// (events.Source): up to max entries after id, and lost when the stream no
// longer holds the entries after id (trimmed past it).
func (n *Node) Range(after events.ID, max int) ([]*events.Event, bool, error) {
	ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
	defer cancel()
	info, err := n.c.XInfoStream(ctx, n.k.stream()).Result()
	if err != nil && !errors.Is(err, redis.Nil) && !isNoSuchKey(err) {
		return nil, false, err
	}
	if err == nil {
		if del, ok := events.ParseID(info.MaxDeletedEntryID); ok && after.Less(del) {
			return nil, true, nil
		}
	}
	msgs, err := n.c.XRangeN(ctx, n.k.stream(), "("+after.String(), "+", int64(max)).Result()
	if err != nil {
		return nil, false, err
	}
	evs := make([]*events.Event, 0, len(msgs))
	for _, m := range msgs {
		if ev, ok := decodeEntry(m); ok {
			evs = append(evs, ev)
		}
	}
	return evs, false, nil
}

func isNoSuchKey(err error) bool {
	return err != nil && err.Error() == "ERR no such key"
}

// eventsLoop writes held leaves that are due and retries events that could
// not be written, every 100 ms (or a quarter of the leave delay).
func (n *Node) eventsLoop() {
	iv := 100 * time.Millisecond
	if d := n.cfg.LeaveDelay / 4; d > 0 && d < iv {
		iv = d
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		if n.pendingEvents.Load() > 0 {
			_ = n.emit(ctx, nil)
		}
		_ = n.flushHeldLeaves(ctx)
		cancel()
	}
}
