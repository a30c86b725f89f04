package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/internal/routine"
)

// RangeFunc walks this node's live sessions with their state
// (shardmap.Map.RangeState).
type RangeFunc func(fn func(user, room, state []byte, lastSeen, expiry int64) bool)

// Node is this process's member of the cluster: a background writer that
// replicates the change log to Redis, a reaper that expires sessions of any
// node, an event subscriber and the cluster-wide queries.
type Node struct {
	cfg     Config
	log     *slog.Logger
	k       *keys
	c       redis.UniversalClient
	slots   *slotSource // Redis Cluster only
	noRetry bool        // mark writes not to be resent (Redis Cluster only)
	ttlMs   int64
	margin  int64
	sink    EventSink
	rangeFn RangeFunc

	// in is the intake of changes, filled by Offer (under a map shard lock)
	// and swapped out by the writer.
	in struct {
		sync.Mutex
		buf    []byte
		n      int
		oldest int64 // monoNs of the oldest queued change
		closed bool
	}
	kick      chan struct{}
	quit      chan struct{}
	flushReq  chan struct{}
	flushDone chan struct{}
	ctx       context.Context // cancelled by stop: ends in-flight round trips
	cancel    context.CancelFunc
	stopOnce  sync.Once
	routines  routine.Group

	up          atomic.Bool // the last health check answered
	subscribed  atomic.Bool
	needAssert  atomic.Bool
	scriptsLost atomic.Bool // a NOSCRIPT was seen: load on every master
	h           health
	rounds      struct {
		sync.Mutex
		m map[*context.CancelFunc]struct{}
	}
	errs    atomic.Uint64
	dropped atomic.Uint64
	queued  atomic.Int64
	lagNs   atomic.Int64
	asserts atomic.Uint64
	cmds    atomic.Uint64
	hist    latencyHist

	// testBeforeEmit, set by tests before Start, fails the room-side
	// pipeline of a write round when it returns an error.
	testBeforeEmit func() error
	// testBeforeAssert, set by tests at any time, fails a re-assert chunk
	// when it returns an error.
	testBeforeAssert atomic.Pointer[func() error]

	em            emitter      // decided events not yet written (events.go)
	pendingEvents atomic.Int64 // len(em.pending), for metrics
	eventsLost    atomic.Uint64

	// Writer-owned state (only the writer goroutine touches it).
	w writerState
}

// redisLog routes go-redis's own messages (dial failures, retries) to
// slog at debug: the node reports outages itself, once, at warn.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug("go-redis", "msg", fmt.Sprintf(format, v...))
}

var setRedisLogger sync.Once

// New validates cfg and builds a node; Start connects it.
func New(cfg Config, rangeFn RangeFunc, sink EventSink) (*Node, error) {
	cfg.derive()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	n := &Node{
		cfg:       cfg,
		log:       log,
		k:         newKeys(cfg.Prefix),
		ttlMs:     cfg.TTL.Milliseconds(),
		margin:    cfg.RefreshMargin.Milliseconds(),
		sink:      sink,
		rangeFn:   rangeFn,
		kick:      make(chan struct{}, 1),
		quit:      make(chan struct{}),
		flushReq:  make(chan struct{}, 1),
		flushDone: make(chan struct{}),
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	n.hist.init()
	n.needAssert.Store(true)
	setRedisLogger.Do(func() { redis.SetLogger(redisLog{log}) })
	return n, nil
}

// Start connects to Redis and starts the writer, reaper, health checker and
// subscriber. An unreachable Redis is not an error: the node runs partial
// and re-asserts its sessions when Redis answers.
func (n *Node) Start() error {
	c, slots, err := n.cfg.newClient()
	if err != nil {
		return err
	}
	n.c, n.slots = c, slots
	_, n.noRetry = c.(*redis.ClusterClient)
	n.hookErrors()
	n.h.mu.Lock()
	n.h.partialSince = time.Now()
	n.h.mu.Unlock()
	n.w.init(n)
	n.routines.Go("redis writer", n.writeLoop)
	n.routines.Go("redis reaper", n.reapLoop)
	n.routines.Go("redis health", n.healthLoop)
	if n.sink != nil {
		n.routines.Go("redis stream", n.streamLoop)
	}
	n.routines.Go("redis events", n.eventsLoop)
	return nil
}

// Close flushes what the writer holds (bounded by ctx), then stops the
// node. Sessions stay in Redis until their TTL: another node's heartbeats
// keep them, and without any they time out there, so a clean shutdown causes
// no false leave.
func (n *Node) Close(ctx context.Context) error {
	var err error
	n.stopOnce.Do(func() {
		if n.c == nil {
			err = n.stop()
			return
		}
		n.flushReq <- struct{}{}
		select {
		case <-n.flushDone:
		case <-ctx.Done():
			err = fmt.Errorf("cannot flush to redis: %w", ctx.Err())
		}
		err = errors.Join(err, n.stop())
	})
	return err
}

// Kill stops the node at once without writing what it holds, as a crash
// would (for tests of failover).
func (n *Node) Kill() {
	n.stopOnce.Do(func() { _ = n.stop() })
}

func (n *Node) stop() error {
	n.in.Lock()
	n.in.closed = true
	n.in.Unlock()
	close(n.quit)
	n.cancel()
	var err error
	if n.c != nil {
		err = n.c.Close()
	}
	n.routines.Wait()
	if n.slots != nil {
		n.slots.close()
	}
	return err
}
