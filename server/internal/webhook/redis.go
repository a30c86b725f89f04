package webhook

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/routine"
	"github.com/presenced/presenced/server/internal/events"
)

// Cluster: the event stream (pd:events) is read through a consumer group
// (Group). One node at a time holds the delivery lease (<stream>:webhook-
// lease, renewed every ClaimAfter/3, expiring after ClaimAfter) and
// delivers, one batch in flight, so events arrive in stream order, which
// is per-room order. The leader
//
//   - first re-reads its own pending entries (a batch it held when it
//     restarted or lost the lease),
//   - claims with XAUTOCLAIM the entries another node held idle for longer
//     than ClaimAfter (it died or hung mid-batch),
//   - then reads new entries with XREADGROUP ">",
//
// and XACKs a batch once it is delivered or dead-lettered. A node that
// dies loses nothing: its lease expires, its pending entries are claimed.
//
// Trimming (XADD MAXLEN ~) may remove entries the group has not read.
// Before reading new entries (at most once a second) the leader compares
// the entries the stream removed (entries-added - length) with the group's
// entries-read, and its last-delivered-id with the first entry left; when
// entries were trimmed unread it counts them (removed - entries-read),
// logs, delivers a reset event (reason history_lost) and moves the group
// past the gap (XGROUP SETID ... ENTRIESREAD). Pending entries whose data was trimmed
// are counted the same way. (A trim in the second between the check and
// the read is not seen: keep --redis-stream-max-len well above what the
// receiver may fall behind.)

// Group is the consumer group name on the event stream.
const Group = "presenced-webhooks"

var scriptRenew = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
`)

var scriptRelease = redis.NewScript(`
if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0
`)

type redisSource struct {
	cfg    Config
	d      *Deliverer
	c      redis.UniversalClient
	stream string
	lease  string
	me     string
	decode func(redis.XMessage) (*events.Event, bool)

	leader   atomic.Bool
	fresh    atomic.Bool // became leader: re-read own pending first
	ctx      context.Context
	cancel   context.CancelFunc
	routines routine.Group

	depthN   atomic.Int64
	oldestMs atomic.Int64
	cmds     atomic.Uint64

	// next-owned.
	created   bool
	lastCheck time.Time
	lastClaim time.Time
}

// StartCluster starts webhook delivery from the cluster's event stream
// through client, as consumer (the node id). decode turns an entry into
// an event (cluster.DecodeEntry).
func StartCluster(cfg Config, client redis.UniversalClient, stream, consumer string,
	decode func(redis.XMessage) (*events.Event, bool)) (*Deliverer, error) {
	d, err := newDeliverer(cfg)
	if err != nil {
		return nil, err
	}
	s := &redisSource{cfg: cfg, d: d, c: client, stream: stream, lease: stream + ":webhook-lease", me: consumer, decode: decode}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.routines.Go("webhook lease", s.leaseLoop)
	d.start(s)
	return d, nil
}

// IsLeader reports whether this node holds the delivery lease.
func (d *Deliverer) IsLeader() bool {
	s, ok := d.src.(*redisSource)
	return ok && s.leader.Load()
}

// RedisCommands returns the Redis commands the deliverer sent (cluster).
func (d *Deliverer) RedisCommands() uint64 {
	if s, ok := d.src.(*redisSource); ok {
		return s.cmds.Load()
	}
	return 0
}

// stop releases the lease (the next node need not wait for it to expire)
// and, when this node holds no pending entry, leaves the group, so nodes
// with random ids do not pile up as consumers.
func (s *redisSource) stop() {
	s.cancel()
	s.routines.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if s.leader.Load() {
		_ = scriptRelease.Run(ctx, s.c, []string{s.lease}, s.me).Err()
	}
	p, err := s.c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: s.stream, Group: Group, Start: "-", End: "+", Count: 1, Consumer: s.me}).Result()
	if err == nil && len(p) == 0 {
		_ = s.c.XGroupDelConsumer(ctx, s.stream, Group, s.me).Err()
	}
}

func (s *redisSource) leaseLoop() {
	iv := s.cfg.ClaimAfter / 3
	for {
		ctx, cancel := context.WithTimeout(s.ctx, iv)
		s.cmds.Add(1)
		if s.leader.Load() {
			n, err := scriptRenew.Run(ctx, s.c, []string{s.lease}, s.me, s.cfg.ClaimAfter.Milliseconds()).Int()
			if err != nil || n == 0 {
				if s.ctx.Err() == nil {
					s.d.log.Warn("lost the webhook delivery lease", "err", err)
				}
				s.leader.Store(false)
			}
		} else {
			ok, err := s.c.SetNX(ctx, s.lease, s.me, s.cfg.ClaimAfter).Result()
			if err == nil && ok {
				s.fresh.Store(true)
				s.leader.Store(true)
				s.d.log.Info("took the webhook delivery lease", "node", s.me)
			}
		}
		cancel()
		if !sleepCtx(s.ctx, iv) {
			return
		}
	}
}

func isBusyGroup(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "BUSYGROUP") }

func (s *redisSource) next(ctx context.Context) (*batch, error) {
	for {
		if !s.leader.Load() {
			if !sleepCtx(ctx, min(s.cfg.ClaimAfter/3, 100*time.Millisecond)) {
				return nil, ctx.Err()
			}
			continue
		}
		if !s.created {
			s.cmds.Add(1)
			err := s.c.XGroupCreateMkStream(ctx, s.stream, Group, "$").Err()
			if err != nil && !isBusyGroup(err) {
				return nil, fmt.Errorf("cannot create webhook consumer group: %w", err)
			}
			s.created = true
		}
		if s.fresh.Swap(false) {
			// Our own pending entries first: a batch we held before.
			msgs, err := s.readGroup(ctx, "0", 0)
			if err != nil {
				return nil, err
			}
			if b := s.batch(msgs); b != nil {
				return b, nil
			}
			s.lastClaim = time.Time{}
		}
		if time.Since(s.lastCheck) >= time.Second {
			b, err := s.check(ctx)
			if err != nil {
				return nil, err
			}
			s.lastCheck = time.Now()
			if b != nil {
				return b, nil
			}
		}
		if time.Since(s.lastClaim) >= s.cfg.ClaimAfter/4 {
			s.cmds.Add(1)
			msgs, _, err := s.c.XAutoClaim(ctx, &redis.XAutoClaimArgs{Stream: s.stream, Group: Group, Consumer: s.me,
				MinIdle: s.cfg.ClaimAfter, Start: "0-0", Count: int64(s.cfg.Batch)}).Result()
			if err != nil {
				return nil, fmt.Errorf("cannot claim webhook events: %w", err)
			}
			s.lastClaim = time.Now()
			if len(msgs) > 0 {
				s.d.log.Warn("claimed webhook events another node held too long", "events", len(msgs), "first", msgs[0].ID)
				if b := s.batch(msgs); b != nil {
					return b, nil
				}
			}
		}
		msgs, err := s.readGroup(ctx, ">", time.Second)
		if err != nil {
			return nil, err
		}
		if len(msgs) > 0 {
			if b := s.batch(msgs); b != nil {
				return b, nil
			}
		}
	}
}

func (s *redisSource) readGroup(ctx context.Context, from string, block time.Duration) ([]redis.XMessage, error) {
	s.cmds.Add(1)
	args := &redis.XReadGroupArgs{Group: Group, Consumer: s.me, Streams: []string{s.stream, from}, Count: int64(s.cfg.Batch), Block: block}
	if block == 0 {
		args.Block = -1 // no BLOCK argument
	}
	res, err := s.c.XReadGroup(ctx, args).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		if strings.HasPrefix(err.Error(), "NOGROUP") {
			s.created = false
		}
		return nil, fmt.Errorf("cannot read webhook events: %w", err)
	}
	var out []redis.XMessage
	for _, st := range res {
		out = append(out, st.Messages...)
	}
	return out, nil
}

// batch turns entries into a batch acknowledged with one XACK. Entries
// whose data is gone (trimmed while pending) become one reset event.
func (s *redisSource) batch(msgs []redis.XMessage) *batch {
	if len(msgs) == 0 {
		return nil
	}
	b := &batch{}
	ids := make([]string, len(msgs))
	gone := 0
	for i, m := range msgs {
		ids[i] = m.ID
		ev, ok := s.decode(m)
		if !ok {
			if len(m.Values) == 0 {
				gone++
				id, _ := events.ParseID(m.ID)
				if gone == 1 {
					b.evs = append(b.evs, (&events.Event{ID: id, Type: events.Reset, Reason: events.ReasonHistoryLost}).JSON())
				}
			}
			continue
		}
		b.evs = append(b.evs, ev.JSON())
	}
	if gone > 0 {
		s.d.lost.Add(uint64(gone))
		s.d.log.Error("webhook events trimmed from the event stream before delivery; receivers get a reset", "lost", gone)
	}
	first, _ := events.ParseID(msgs[0].ID)
	b.oldest = time.UnixMilli(int64(first.Ms))
	b.ack = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.cmds.Add(1)
		if err := s.c.XAck(ctx, s.stream, Group, ids...).Err(); err != nil {
			return fmt.Errorf("cannot acknowledge webhook events: %w", err)
		}
		return nil
	}
	if len(b.evs) == 0 { // nothing to POST: acknowledge at once
		_ = b.ack()
		return nil
	}
	return b
}

// check refreshes the depth metrics and looks for entries trimmed before
// the group read them; it returns a reset batch when it finds some.
func (s *redisSource) check(ctx context.Context) (*batch, error) {
	s.cmds.Add(2)
	info, err := s.c.XInfoStream(ctx, s.stream).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot inspect event stream: %w", err)
	}
	groups, err := s.c.XInfoGroups(ctx, s.stream).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot inspect webhook consumer group: %w", err)
	}
	var g *redis.XInfoGroup
	for i := range groups {
		if groups[i].Name == Group {
			g = &groups[i]
		}
	}
	if g == nil {
		s.created = false
		return nil, errors.New("cannot find webhook consumer group")
	}
	// Trimming removes the oldest entries: the group missed some when
	// fewer were read than removed and its position is before the first
	// entry left.
	lastDel, _ := events.ParseID(g.LastDeliveredID)
	first, _ := events.ParseID(info.FirstEntry.ID)
	removed := info.EntriesAdded - info.Length
	if removed > g.EntriesRead && lastDel.Less(first) {
		lost := removed - g.EntriesRead
		maxDel := events.ID{Ms: first.Ms, Seq: first.Seq - 1}
		if first.Seq == 0 {
			maxDel = events.ID{Ms: first.Ms - 1, Seq: 1<<63 - 1}
		}
		s.d.lost.Add(uint64(lost))
		s.d.log.Error("event stream trimmed past undelivered webhook events (raise --redis-stream-max-len); receivers get a reset",
			"lost", lost, "delivered_up_to", g.LastDeliveredID, "stream_starts_at", info.FirstEntry.ID)
		b := &batch{evs: [][]byte{(&events.Event{ID: maxDel, Type: events.Reset, Reason: events.ReasonHistoryLost}).JSON()},
			oldest: time.Now()}
		b.ack = func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s.cmds.Add(1)
			return s.c.Do(ctx, "XGROUP", "SETID", s.stream, Group, maxDel.String(), "ENTRIESREAD", removed).Err()
		}
		return b, nil
	}
	n := g.Pending
	if g.Lag > 0 {
		n += g.Lag
	}
	s.depthN.Store(n)
	var oldest int64
	if g.Pending > 0 {
		s.cmds.Add(1)
		if p, err := s.c.XPending(ctx, s.stream, Group).Result(); err == nil {
			id, _ := events.ParseID(p.Lower)
			oldest = int64(id.Ms)
		}
	} else if g.Lag > 0 {
		s.cmds.Add(1)
		if m, err := s.c.XRangeN(ctx, s.stream, "("+g.LastDeliveredID, "+", 1).Result(); err == nil && len(m) > 0 {
			id, _ := events.ParseID(m[0].ID)
			oldest = int64(id.Ms)
		}
	}
	s.oldestMs.Store(oldest)
	return nil, nil
}

func (s *redisSource) depth() (int64, time.Duration) {
	o := s.oldestMs.Load()
	if o == 0 {
		return s.depthN.Load(), 0
	}
	return s.depthN.Load(), time.Since(time.UnixMilli(o))
}
