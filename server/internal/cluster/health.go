package cluster

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// Health: when this node answers for the whole cluster.
//
// A node is whole when Redis answered its last health check and every
// fault since (a failed round trip of any kind: unreachable, timeout, hung
// master, failover in progress, OOM, NOSCRIPT, a redirect beyond
// MaxRedirects) has been repaired by a successful re-assert. While it is
// not whole, the queries fail at once with ErrPartial and the server
// answers from its own table with "partial": true. A fault:
//
//   - counts an error (in total and per master address),
//   - asks the Redis Cluster client to re-read the slot map (a failed
//     over master's slots then point at the promoted replica within a
//     round trip instead of after go-redis's own 60 s reload),
//   - stops the reaper and the writer until the next health check
//     answers (at most HealthInterval later), which schedules the
//     re-assert; the re-assert writes every live session of this node and
//     repairs the room side (re-add own members, remove members without a
//     session, counts = member lists).
//
// Log lines, one per change of state, never per failure: warn (error when
// Redis was never reached since start) when the node becomes partial, with
// the reason; warn again when the reason changes (e.g. from connection
// refused to a wrong password); info, once, when it answers for the whole
// cluster again, with how long it was partial.

// ErrPartial is returned by the queries while the node does not answer for
// the whole cluster (Redis unreachable, or a fault not yet repaired).
var ErrPartial = errors.New("cannot answer for the whole cluster: redis is unreachable or being repaired")

// errDataLost is the fault of a missing re-assert marker: Redis (or one
// master) lost this node's sessions.
var errDataLost = errors.New("redis lost this node's sessions (marker missing)")

// health is the node's whole/partial state and what it last logged.
type health struct {
	mu           sync.Mutex
	whole        atomic.Bool
	everWhole    bool
	partialSince time.Time // when the node last became partial
	partialTotal time.Duration
	reason       string // class of the fault last logged, "" while whole

	masterErrs sync.Map // address -> *atomic.Uint64
}

// Ready reports whether the node is connected, has asserted its sessions
// and receives the cluster's events.
func (n *Node) Ready() bool {
	return n.up.Load() && n.subscribed.Load() && n.asserts.Load() > 0
}

// Up reports whether the node answers for the whole cluster: Redis
// answered the last health check and every fault since was repaired.
func (n *Node) Up() bool { return n.h.whole.Load() }

// markDown records a fault: the node serves partial answers, asks for a
// fresh slot map, and re-asserts its sessions once the next health check
// answers.
func (n *Node) markDown(err error) {
	if !errors.Is(err, errDataLost) {
		n.errs.Add(1)
	}
	n.needAssert.Store(true)
	n.up.Store(false)
	if isNoScript(err) {
		n.scriptsLost.Store(true)
	}
	n.reloadSlots()
	n.partial(err)
}

// reloadSlots asks a Redis Cluster client to re-read the slot map in the
// background (go-redis itself does so only on MOVED, or every
// clusterStateReload).
func (n *Node) reloadSlots() {
	if cc, ok := n.c.(*redis.ClusterClient); ok {
		cc.ReloadState(context.Background())
	}
}

// partial marks the node partial and logs when that, or its reason, is new.
func (n *Node) partial(err error) {
	h := &n.h
	reason := faultClass(err)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.whole.Swap(false) {
		h.partialSince = time.Now()
	}
	if reason == h.reason {
		return
	}
	h.reason = reason
	msg := "redis fault: answering from this node only until a re-assert succeeds"
	if !h.everWhole {
		n.log.Error("cannot use redis: answering from this node only", "reason", reason, "err", err)
		return
	}
	n.log.Warn(msg, "reason", reason, "err", err)
}

// whole marks the node whole after a successful re-assert, logging once.
func (n *Node) whole(sessions int, took time.Duration) {
	h := &n.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.whole.Load() {
		return
	}
	// The line is written before Up reports whole, so whoever sees the
	// node whole finds it in the log.
	d := time.Since(h.partialSince)
	h.partialTotal += d
	h.reason = ""
	if !h.everWhole {
		n.log.Info("redis connected: answering for the whole cluster", "sessions_asserted", sessions, "reassert_took", took)
	} else {
		n.log.Info("redis answers again: answering for the whole cluster", "partial_for", d.Round(time.Millisecond), "sessions_reasserted", sessions, "reassert_took", took)
	}
	h.everWhole = true
	h.whole.Store(true)
}

// partialTime is the total time spent partial since Start, including now.
func (n *Node) partialTime() time.Duration {
	h := &n.h
	h.mu.Lock()
	defer h.mu.Unlock()
	d := h.partialTotal
	if !h.whole.Load() && !h.partialSince.IsZero() {
		d += time.Since(h.partialSince)
	}
	return d
}

// faultClass names the kind of a fault, for the logs: a change of class
// is logged, a repeat is not.
func faultClass(err error) string {
	var ne net.Error
	s := err.Error()
	switch {
	case errors.Is(err, errDataLost):
		return "data lost"
	case strings.Contains(s, "WRONGPASS"), strings.Contains(s, "NOAUTH"), strings.Contains(s, "invalid password"), strings.Contains(s, "invalid username-password"):
		return "authentication"
	case strings.Contains(s, "NOSCRIPT"):
		return "scripts missing"
	case strings.Contains(s, "OOM"):
		return "out of memory"
	case strings.Contains(s, "CLUSTERDOWN"):
		return "cluster down"
	case strings.Contains(s, "MOVED "), strings.Contains(s, "ASK "), strings.Contains(s, "TRYAGAIN"):
		return "resharding"
	case strings.Contains(s, "READONLY"), strings.Contains(s, "LOADING"), strings.Contains(s, "MASTERDOWN"):
		return "failover"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne), strings.Contains(s, "EOF"), strings.Contains(s, "closed"):
		// Refused, reset, timed out: one reason, or a dying master would
		// log a line per alternation.
		return "unreachable"
	default:
		return "error"
	}
}

// errHook counts failed commands per Redis address (each master of a
// Redis Cluster, the standalone server, or the Sentinel master name).
type errHook struct {
	n    *Node
	addr string
}

func (e errHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (e errHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if err != nil && !errors.Is(err, redis.Nil) {
			e.n.masterErr(e.addr)
		}
		return err
	}
}

func (e errHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		failed := err != nil && !errors.Is(err, redis.Nil)
		for _, c := range cmds {
			if ce := c.Err(); ce != nil && !errors.Is(ce, redis.Nil) {
				failed = true
				break
			}
		}
		if failed {
			e.n.masterErr(e.addr)
		}
		return err
	}
}

func (n *Node) masterErr(addr string) {
	v, ok := n.h.masterErrs.Load(addr)
	if !ok {
		v, _ = n.h.masterErrs.LoadOrStore(addr, new(atomic.Uint64))
	}
	v.(*atomic.Uint64).Add(1)
}

// hookErrors installs errHook on every Redis client the node uses.
func (n *Node) hookErrors() {
	switch c := n.c.(type) {
	case *redis.ClusterClient:
		c.OnNewNode(func(rdb *redis.Client) { rdb.AddHook(errHook{n, rdb.Options().Addr}) })
	case *redis.Client:
		addr := c.Options().Addr
		if n.cfg.MasterName != "" {
			addr = "sentinel:" + n.cfg.MasterName
		}
		c.AddHook(errHook{n, addr})
	}
}

func (n *Node) healthLoop() {
	t := time.NewTicker(n.cfg.HealthInterval)
	defer t.Stop()
	for {
		n.checkHealth()
		select {
		case <-n.quit:
			return
		case <-t.C:
		}
	}
}

// checkHealth reads this node's marker in every bucket: an error is a
// fault; a missing marker (Redis restarted empty, or a master of a Redis
// Cluster lost its data) is one too. A success after a fault lets the
// writer re-assert (it kicks it).
func (n *Node) checkHealth() {
	ctx, cancel := context.WithTimeout(n.ctx, n.cfg.HealthInterval+time.Second)
	defer cancel()
	p := n.c.Pipeline()
	cmds := make([]*redis.BoolCmd, Buckets)
	for b := range Buckets {
		cmds[b] = p.HExists(ctx, n.k.counts(b), n.markerField())
	}
	if err := n.exec(ctx, p); err != nil {
		n.markDown(err)
		n.cancelRounds()
		return
	}
	if n.scriptsLost.Load() {
		if err := n.loadScripts(ctx); err != nil {
			n.markDown(err)
			return
		}
		n.scriptsLost.Store(false)
	}
	missing := false
	for _, c := range cmds {
		if !c.Val() {
			missing = true
		}
	}
	if missing && n.asserts.Load() > 0 && !n.needAssert.Load() {
		n.markDown(errDataLost)
	}
	n.needAssert.Store(n.needAssert.Load() || missing)
	n.up.Store(true)
	if n.needAssert.Load() {
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}
}

// roundCtx bounds one round of the writer or reaper (writeTimeout). A
// failed health check cancels every round in flight, so a hung master
// holds the writer for at most one health check instead of writeTimeout.
func (n *Node) roundCtx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(n.ctx, writeTimeout)
	n.rounds.Lock()
	if n.rounds.m == nil {
		n.rounds.m = map[*context.CancelFunc]struct{}{}
	}
	key := &cancel
	n.rounds.m[key] = struct{}{}
	n.rounds.Unlock()
	return ctx, func() {
		cancel()
		n.rounds.Lock()
		delete(n.rounds.m, key)
		n.rounds.Unlock()
	}
}

// cancelRounds ends every writer and reaper round in flight.
func (n *Node) cancelRounds() {
	n.rounds.Lock()
	for c := range n.rounds.m {
		(*c)()
	}
	n.rounds.Unlock()
}
