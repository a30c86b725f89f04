package cluster

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/presenced/presenced/shardmap"
)

// RangeFunc walks this node's live sessions (shardmap.Map.Range).
type RangeFunc func(fn func(user, room []byte, lastSeen, expiry int64) bool)

// EventFunc receives each cluster-wide join and leave once, from the
// subscriber goroutine. It must not block.
type EventFunc func(ev shardmap.Event)

// Node is this process's member of the cluster: a background writer that
// replicates the change log to Redis, a reaper that expires sessions of any
// node, an event subscriber and the cluster-wide queries.
type Node struct {
	cfg     Config
	log     *slog.Logger
	k       *keys
	c       redis.UniversalClient
	ttlMs   int64
	margin  int64
	onEvent EventFunc
	rangeFn RangeFunc

	// in is the intake of changes, filled by Offer (under a map shard lock)
	// and swapped out by the writer.
	in struct {
		sync.Mutex
		buf    []byte
		n      int
		oldest int64 // unix ns of the oldest queued change
		closed bool
	}
	kick      chan struct{}
	quit      chan struct{}
	flushReq  chan struct{}
	flushDone chan struct{}
	ctx       context.Context // cancelled by stop: ends in-flight round trips
	cancel    context.CancelFunc
	stopOnce  sync.Once
	wg        sync.WaitGroup

	up         atomic.Bool
	subscribed atomic.Bool
	needAssert atomic.Bool
	errs       atomic.Uint64
	dropped    atomic.Uint64
	queued     atomic.Int64
	lagNs      atomic.Int64
	asserts    atomic.Uint64
	cmds       atomic.Uint64
	hist       latencyHist

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
func New(cfg Config, rangeFn RangeFunc, onEvent EventFunc) (*Node, error) {
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
		onEvent:   onEvent,
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
	c, err := n.cfg.newClient()
	if err != nil {
		return err
	}
	n.c = c
	n.w.init(n)
	n.goroutine(n.writeLoop)
	n.goroutine(n.reapLoop)
	n.goroutine(n.healthLoop)
	n.goroutine(n.subscribeLoop)
	return nil
}

func (n *Node) goroutine(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// Offer queues one change for replication. It copies what it keeps, never
// blocks, and may run under a shardmap lock (it is the drain callback).
func (n *Node) Offer(c *shardmap.Change) {
	kind := byte('u')
	if c.Ended {
		kind = 't'
		if c.Reason == shardmap.ReasonLeft {
			kind = 'l'
		}
	}
	n.offer(kind, c)
}

// offer appends one intake record: kind ('u' upsert, 'l' local leave, 't'
// local expiry, 'L' cluster leave of one room, 'A' of all rooms), times,
// user and room.
func (n *Node) offer(kind byte, c *shardmap.Change) {
	n.in.Lock()
	if n.in.closed {
		n.in.Unlock()
		return
	}
	if n.in.n >= n.cfg.MaxQueue {
		n.in.Unlock()
		n.dropped.Add(1)
		n.needAssert.Store(true)
		return
	}
	if n.in.n == 0 {
		n.in.oldest = time.Now().UnixNano()
	}
	b := n.in.buf
	b = append(b, kind)
	b = binary.LittleEndian.AppendUint64(b, uint64(c.LastSeen))
	b = binary.LittleEndian.AppendUint64(b, uint64(c.Expiry))
	b = binary.LittleEndian.AppendUint64(b, uint64(c.At))
	b = append(b, byte(len(c.User)), byte(len(c.Room)))
	b = append(b, c.User...)
	b = append(b, c.Room...)
	n.in.buf = b
	n.in.n++
	full := n.in.n == n.cfg.PipelineSize
	n.in.Unlock()
	n.queued.Add(1)
	if full {
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}
}

// Kick asks the writer to send what is queued now rather than at its next
// tick; the server calls it after each drain. It never blocks.
func (n *Node) Kick() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

// OfferLeave queues an explicit leave of user's session in room (all
// their rooms with all) for the whole cluster, whichever nodes hold it: a
// leave request may reach a node that never saw the user's heartbeats. It
// never blocks; at is the leave time (unix ms).
func (n *Node) OfferLeave(user, room []byte, all bool, at int64) {
	c := shardmap.Change{User: user, Room: room, At: at, Ended: true, Reason: shardmap.ReasonLeft}
	kind := byte('L')
	if all {
		kind, c.Room = 'A', nil
	}
	n.offer(kind, &c)
}

// swapIntake takes the queued changes, giving back spare (emptied) as the
// new intake buffer.
func (n *Node) swapIntake(spare []byte) (buf []byte, count int, oldest int64) {
	n.in.Lock()
	buf, count, oldest = n.in.buf, n.in.n, n.in.oldest
	n.in.buf, n.in.n = spare[:0], 0
	n.in.Unlock()
	n.queued.Add(-int64(count))
	return buf, count, oldest
}

// Ready reports whether the node is connected, has asserted its sessions
// and receives the cluster's events.
func (n *Node) Ready() bool {
	return n.up.Load() && n.subscribed.Load() && n.asserts.Load() > 0
}

// Up reports whether the last Redis round trip succeeded.
func (n *Node) Up() bool { return n.up.Load() }

// markDown records a failed round trip: the node serves partial answers and
// re-asserts its sessions once Redis answers again.
func (n *Node) markDown(err error) {
	n.errs.Add(1)
	n.needAssert.Store(true)
	if n.up.Swap(false) {
		n.log.Warn("redis unreachable: answering from this node only", "err", err)
	}
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
	n.wg.Wait()
	return err
}

// ---- writer ----

// sessState is the writer's view of one of this node's sessions: the expiry
// it last wrote to Redis (W), the latest local expiry (L) and when a
// deferred refresh is due (0: none). Keyed by a 64-bit hash of user and
// room, so the map holds no pointers.
type sessState struct {
	W, L, due int64
}

// op is one write to Redis.
type op struct {
	kind             byte // 't' touch, 'a' re-assert, 'l' leave
	user, room       string
	lastSeen, expiry int64
	at               int64
}

type writerState struct {
	n     *Node
	state map[uint64]sessState
	// ring holds deferred refreshes by due slot (slotMs wide): records of
	// hash(8) due(8) ulen(1) rlen(1) user room.
	ring     [][]byte
	slotMs   int64
	ringNext int64 // next slot to process
	spare    []byte
	ops      []op
	evs      []evOp
}

// evOp is an event this node decided, with its room-side update.
type evOp struct {
	ev      shardmap.Event
	silent  bool // re-assert: room update only, no event
	roomAdd bool
}

func (w *writerState) init(n *Node) {
	w.n = n
	w.state = map[uint64]sessState{}
	// A slot is a quarter of the refresh margin, 10ms to 1s: a deferred
	// refresh is written up to one slot before it is due.
	w.slotMs = min(max(n.margin/4, 10), 1000)
	w.ring = make([][]byte, int(n.ttlMs/w.slotMs)+3)
}

func sessHash(user, room []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range user {
		h ^= uint64(c)
		h *= 1099511628211
	}
	h ^= 0
	h *= 1099511628211
	for _, c := range room {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}

func (n *Node) writeLoop() {
	t := time.NewTicker(n.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-n.flushReq:
			n.w.cycle(true)
			close(n.flushDone)
			return
		case <-t.C:
		case <-n.kick:
		}
		n.w.cycle(false)
	}
}

// cycle re-asserts when needed, turns queued changes and due refreshes into
// writes, and sends them. With final, every deferred refresh is written.
func (w *writerState) cycle(final bool) {
	n := w.n
	ctx, cancel := context.WithTimeout(n.ctx, writeTimeout)
	defer cancel()
	now := time.Now().UnixMilli()
	if n.needAssert.Load() {
		if !n.up.Load() {
			buf, _, _ := n.swapIntake(w.spare)
			w.spare = buf
			return
		}
		if err := w.reassert(); err != nil {
			n.markDown(err)
			return
		}
	}
	buf, count, oldest := n.swapIntake(w.spare)
	w.ops = w.ops[:0]
	var leaveAll []op
	for p := 0; p < len(buf); {
		kind := buf[p]
		ls := int64(binary.LittleEndian.Uint64(buf[p+1:]))
		exp := int64(binary.LittleEndian.Uint64(buf[p+9:]))
		at := int64(binary.LittleEndian.Uint64(buf[p+17:]))
		ul, rl := int(buf[p+25]), int(buf[p+26])
		user := buf[p+27 : p+27+ul]
		room := buf[p+27+ul : p+27+ul+rl]
		p += 27 + ul + rl
		h := sessHash(user, room)
		switch kind {
		case 'u':
			w.upsert(h, user, room, ls, exp, now)
		case 'l', 'L':
			delete(w.state, h)
			w.ops = append(w.ops, op{kind: 'l', user: string(user), room: string(room), lastSeen: ls, expiry: exp, at: at})
		case 'A':
			leaveAll = append(leaveAll, op{kind: 'l', user: string(user), at: at})
		case 't':
			// A local expiry writes nothing: Redis expires the session
			// itself unless another node keeps it alive.
			delete(w.state, h)
		}
	}
	w.spare = buf[:0]
	if len(leaveAll) > 0 {
		if err := w.expandLeaveAll(ctx, leaveAll); err != nil {
			n.markDown(err)
			return
		}
	}
	w.due(now, final)
	if len(w.ops) == 0 {
		if count > 0 {
			n.lagNs.Store(time.Now().UnixNano() - oldest)
		}
		return
	}
	if err := w.send(ctx, w.ops); err != nil {
		n.markDown(err)
		return
	}
	if count > 0 {
		n.lagNs.Store(time.Now().UnixNano() - oldest)
	}
}

func (w *writerState) upsert(h uint64, user, room []byte, ls, exp, now int64) {
	st, ok := w.state[h]
	if !ok {
		w.state[h] = sessState{W: exp, L: exp}
		w.ops = append(w.ops, op{kind: 't', user: string(user), room: string(room), lastSeen: ls, expiry: exp})
		return
	}
	if exp > st.L {
		st.L = exp
	}
	if st.L > st.W {
		due := st.W - w.n.margin
		switch {
		case due <= now:
			w.ops = append(w.ops, op{kind: 't', user: string(user), room: string(room), lastSeen: st.L - w.n.ttlMs, expiry: st.L})
			st.W, st.due = st.L, 0
		case st.due == 0:
			st.due = due
			w.schedule(h, due, user, room)
		}
	}
	w.state[h] = st
}

// expandLeaveAll turns leaves of all a user's rooms into one leave per
// room Redis holds for them.
func (w *writerState) expandLeaveAll(ctx context.Context, all []op) error {
	n := w.n
	p := n.c.Pipeline()
	cmds := make([]*redis.StringSliceCmd, len(all))
	for i := range all {
		cmds[i] = p.HKeys(ctx, n.k.user(all[i].user))
	}
	if err := n.exec(ctx, p); err != nil {
		return err
	}
	for i, c := range cmds {
		for _, room := range c.Val() {
			o := all[i]
			o.room = room
			w.ops = append(w.ops, o)
		}
	}
	return nil
}

// schedule files a deferred refresh in the ring slot before the one due is in.
func (w *writerState) schedule(h uint64, due int64, user, room []byte) {
	sec := due/w.slotMs - 1
	if w.ringNext == 0 {
		w.ringNext = time.Now().UnixMilli() / w.slotMs
	}
	if sec < w.ringNext {
		sec = w.ringNext
	}
	i := int(sec % int64(len(w.ring)))
	b := w.ring[i]
	b = binary.LittleEndian.AppendUint64(b, h)
	b = binary.LittleEndian.AppendUint64(b, uint64(due))
	b = append(b, byte(len(user)), byte(len(room)))
	b = append(b, user...)
	b = append(b, room...)
	w.ring[i] = b
}

// due writes the deferred refreshes whose slot has come (all with final).
func (w *writerState) due(now int64, final bool) {
	nowSec := now / w.slotMs
	if w.ringNext == 0 {
		w.ringNext = nowSec
	}
	end := nowSec
	if final {
		end = w.ringNext + int64(len(w.ring)) - 1
	}
	for ; w.ringNext < end || (final && w.ringNext <= end); w.ringNext++ {
		i := int(w.ringNext % int64(len(w.ring)))
		b := w.ring[i]
		for p := 0; p < len(b); {
			h := binary.LittleEndian.Uint64(b[p:])
			due := int64(binary.LittleEndian.Uint64(b[p+8:]))
			ul, rl := int(b[p+16]), int(b[p+17])
			user := b[p+18 : p+18+ul]
			room := b[p+18+ul : p+18+ul+rl]
			p += 18 + ul + rl
			st, ok := w.state[h]
			if !ok || st.due != due {
				continue
			}
			if st.L > st.W {
				w.ops = append(w.ops, op{kind: 't', user: string(user), room: string(room), lastSeen: st.L - w.n.ttlMs, expiry: st.L})
				st.W = st.L
			}
			st.due = 0
			w.state[h] = st
		}
		w.ring[i] = b[:0]
	}
	if final {
		w.ringNext = nowSec
	}
}

// reassert writes every live session of this node (after Redis lost them or
// was unreachable), without events for those it finds missing.
func (w *writerState) reassert() error {
	n := w.n
	t0 := time.Now()
	clear(w.state)
	for i := range w.ring {
		w.ring[i] = w.ring[i][:0]
	}
	var ops []op
	var err error
	total := 0
	n.rangeFn(func(user, room []byte, lastSeen, expiry int64) bool {
		w.state[sessHash(user, room)] = sessState{W: expiry, L: expiry}
		ops = append(ops, op{kind: 'a', user: string(user), room: string(room), lastSeen: lastSeen, expiry: expiry})
		if len(ops) >= 16*n.cfg.PipelineSize {
			total += len(ops)
			if err = w.sendAssertTimed(ops); err != nil {
				return false
			}
			ops = ops[:0]
		}
		return true
	})
	if err == nil && len(ops) > 0 {
		total += len(ops)
		err = w.sendAssertTimed(ops)
	}
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(n.ctx, writeTimeout)
	defer cancel()
	if err := n.setMarkers(ctx); err != nil {
		return err
	}
	n.needAssert.Store(false)
	n.asserts.Add(1)
	n.log.Info("sessions re-asserted in redis", "sessions", total, "took", time.Since(t0))
	return nil
}

// writeTimeout bounds one writer round of pipelines (and each re-assert
// chunk of 16 pipelines' worth of sessions).
const writeTimeout = 10 * time.Second

func (w *writerState) sendAssertTimed(ops []op) error {
	ctx, cancel := context.WithTimeout(w.n.ctx, writeTimeout)
	defer cancel()
	return w.sendAssert(ctx, ops)
}

// assertBatch is the most sessions one TOUCHN or ROOMADDN call carries.
const assertBatch = 256

// sendAssert writes re-asserted sessions with the batch scripts: one call
// per user bucket (and per room bucket for the member sets) per
// assertBatch sessions, so 100,000 sessions take a few hundred commands.
func (w *writerState) sendAssert(ctx context.Context, ops []op) error {
	n := w.n
	var byUser, byRoom [Buckets][]int
	for i := range ops {
		b := userBucket(ops[i].user)
		byUser[b] = append(byUser[b], i)
	}
	type call struct {
		cmd *redis.Cmd
		idx []int
	}
	var calls []call
	err := n.withScripts(ctx, func() error {
		calls = calls[:0]
		p := n.c.Pipeline()
		for b, idx := range byUser {
			for len(idx) > 0 {
				k := min(len(idx), assertBatch)
				chunk := idx[:k]
				idx = idx[k:]
				keys := make([]string, 0, 2+k)
				keys = append(keys, n.k.expiry(b), n.k.counts(b))
				args := make([]any, 0, 4*k)
				for _, i := range chunk {
					o := &ops[i]
					keys = append(keys, n.k.user(o.user))
					args = append(args, o.room, o.expiry, o.lastSeen, sessionMember(o.user, o.room))
				}
				calls = append(calls, call{scriptTouchN.EvalSha(ctx, p, keys, args...), chunk})
			}
		}
		return n.exec(ctx, p)
	})
	if err != nil {
		return err
	}
	for _, c := range calls {
		res, err := c.cmd.Int64Slice()
		if err != nil {
			return fmt.Errorf("cannot re-assert sessions: %w", err)
		}
		for j, v := range res {
			if o := &ops[c.idx[j]]; v == 1 && o.room != "" {
				b := roomBucket(o.room)
				byRoom[b] = append(byRoom[b], c.idx[j])
			}
		}
	}
	return n.withScripts(ctx, func() error {
		p := n.c.Pipeline()
		for b, idx := range byRoom {
			if len(idx) == 0 {
				continue
			}
			sort.Slice(idx, func(x, y int) bool { return ops[idx[x]].room < ops[idx[y]].room })
			keys := []string{n.k.top(b)}
			var args []any
			flush := func() {
				if len(keys) > 1 {
					scriptRoomAddN.EvalSha(ctx, p, keys, args...)
				}
				keys, args = []string{n.k.top(b)}, nil
			}
			for x := 0; x < len(idx); {
				room := ops[idx[x]].room
				y := x
				for y < len(idx) && ops[idx[y]].room == room && y-x < 2*assertBatch {
					y++
				}
				keys = append(keys, n.k.members(room))
				args = append(args, room, y-x)
				for _, i := range idx[x:y] {
					args = append(args, 0, ops[i].user)
				}
				if len(args) >= 4*assertBatch {
					flush()
				}
				x = y
			}
			flush()
		}
		return n.exec(ctx, p)
	})
}

func (n *Node) markerField() string { return "n:" + n.cfg.NodeID }

func (n *Node) setMarkers(ctx context.Context) error {
	p := n.c.Pipeline()
	for b := range Buckets {
		p.HSet(ctx, n.k.counts(b), n.markerField(), 1)
	}
	return n.exec(ctx, p)
}

// exec sends a pipeline, timing it and counting its commands.
func (n *Node) exec(ctx context.Context, p redis.Pipeliner) error {
	l := p.Len()
	t0 := time.Now()
	_, err := p.Exec(ctx)
	n.hist.observe(time.Since(t0))
	n.cmds.Add(uint64(l))
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	return err
}

// send runs ops in pipelines: first the user-side scripts, then for every
// join and leave they decided the room-side script, the stream entry and
// the pub/sub message.
func (w *writerState) send(ctx context.Context, ops []op) error {
	n := w.n
	for len(ops) > 0 {
		k := min(len(ops), n.cfg.PipelineSize)
		chunk := ops[:k]
		ops = ops[k:]
		var cmds []*redis.Cmd
		err := n.withScripts(ctx, func() error {
			p := n.c.Pipeline()
			cmds = cmds[:0]
			for i := range chunk {
				o := &chunk[i]
				ub := userBucket(o.user)
				member := sessionMember(o.user, o.room)
				switch o.kind {
				case 't', 'a':
					cmds = append(cmds, scriptTouch.EvalSha(ctx, p,
						[]string{n.k.user(o.user), n.k.expiry(ub), n.k.counts(ub)},
						o.room, o.expiry, o.lastSeen, member))
				case 'l':
					cmds = append(cmds, scriptLeave.EvalSha(ctx, p,
						[]string{n.k.user(o.user), n.k.expiry(ub), n.k.counts(ub), n.k.seen(o.user)},
						o.room, member, n.cfg.LastSeenRetention.Milliseconds()))
				}
			}
			return n.exec(ctx, p)
		})
		if err != nil {
			return err
		}
		w.evs = w.evs[:0]
		for i, c := range cmds {
			v, err := c.Int64()
			if err != nil {
				return fmt.Errorf("cannot write session: %w", err)
			}
			if v != 1 {
				continue
			}
			o := &chunk[i]
			switch o.kind {
			case 't':
				w.evs = append(w.evs, evOp{ev: shardmap.Event{User: o.user, Room: o.room, At: o.lastSeen, Join: true}, roomAdd: true})
			case 'a':
				w.evs = append(w.evs, evOp{ev: shardmap.Event{User: o.user, Room: o.room}, silent: true, roomAdd: true})
			case 'l':
				w.evs = append(w.evs, evOp{ev: shardmap.Event{User: o.user, Room: o.room, At: o.at, Reason: shardmap.ReasonLeft}})
			}
		}
		if err := n.emit(ctx, w.evs); err != nil {
			return err
		}
	}
	return nil
}

// withScripts runs f, loading the scripts and retrying once when Redis
// does not know them (first use, or after a restart).
func (n *Node) withScripts(ctx context.Context, f func() error) error {
	err := f()
	if err == nil || !isNoScript(err) {
		return err
	}
	if err := n.loadScripts(ctx); err != nil {
		return err
	}
	return f()
}

func isNoScript(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT")
}

func (n *Node) loadScripts(ctx context.Context) error {
	load := func(ctx context.Context, c redis.Cmdable) error {
		for _, s := range allScripts {
			if err := s.Load(ctx, c).Err(); err != nil {
				return fmt.Errorf("cannot load script: %w", err)
			}
		}
		return nil
	}
	if cc, ok := n.c.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error { return load(ctx, c) })
	}
	return load(ctx, n.c)
}

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
						scriptRoomAdd.EvalSha(ctx, p, keys, e.ev.User, e.ev.Room)
					} else {
						scriptRoomRem.EvalSha(ctx, p, keys, e.ev.User, e.ev.Room)
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

// ---- reaper, health, subscriber ----

const reapLimit = 1000

func (n *Node) reapLoop() {
	t := time.NewTicker(n.cfg.ReapInterval)
	defer t.Stop()
	for {
		select {
		case <-n.quit:
			return
		case <-t.C:
		}
		if !n.up.Load() {
			continue
		}
		for range 10 {
			more, err := n.reapOnce()
			if err != nil {
				n.markDown(err)
				break
			}
			if !more {
				break
			}
		}
	}
}

// reapOnce runs the reap script on every bucket and publishes the timeouts
// it won. It reports whether a bucket had more expired sessions.
func (n *Node) reapOnce() (more bool, err error) {
	ctx, cancel := context.WithTimeout(n.ctx, 10*time.Second)
	defer cancel()
	now := time.Now().UnixMilli()
	var cmds []*redis.Cmd
	err = n.withScripts(ctx, func() error {
		p := n.c.Pipeline()
		cmds = cmds[:0]
		for b := range Buckets {
			cmds = append(cmds, scriptReap.EvalSha(ctx, p, []string{n.k.expiry(b), n.k.counts(b)},
				now, reapLimit, n.k.uTag[b]+":u:", n.k.uTag[b]+":l:", n.cfg.LastSeenRetention.Milliseconds()))
		}
		return n.exec(ctx, p)
	})
	if err != nil {
		return false, err
	}
	var evs []evOp
	for _, c := range cmds {
		vals, err := c.StringSlice()
		if err != nil {
			return false, fmt.Errorf("cannot reap: %w", err)
		}
		if len(vals) >= 2*reapLimit {
			more = true
		}
		for i := 0; i+1 < len(vals); i += 2 {
			user, room, ok := splitMember(vals[i])
			exp, _, ok2 := splitValue(vals[i+1])
			if !ok || !ok2 {
				continue
			}
			evs = append(evs, evOp{ev: shardmap.Event{User: user, Room: room, At: exp, Reason: shardmap.ReasonTimeout}})
		}
	}
	return more, n.emit(ctx, evs)
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

// checkHealth reads this node's marker in every bucket: an error marks
// Redis down; a missing marker (Redis restarted empty, or a master of a
// Redis Cluster lost its data) or a recovery schedules a re-assert.
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
		return
	}
	missing := false
	for _, c := range cmds {
		if !c.Val() {
			missing = true
		}
	}
	if !n.up.Swap(true) {
		n.log.Info("redis reachable: answering for the whole cluster")
		n.needAssert.Store(true)
	}
	if missing {
		n.needAssert.Store(true)
	}
	if n.needAssert.Load() {
		select {
		case n.kick <- struct{}{}:
		default:
		}
	}
}

func (n *Node) subscribeLoop() {
	ctx := n.ctx
	for {
		sub := n.c.Subscribe(ctx, n.k.channel())
		if _, err := sub.Receive(ctx); err != nil {
			_ = sub.Close()
			select {
			case <-n.quit:
				return
			case <-time.After(time.Second):
			}
			continue
		}
		n.subscribed.Store(true)
		ch := sub.Channel(redis.WithChannelSize(4096))
	recv:
		for {
			select {
			case <-n.quit:
				_ = sub.Close()
				return
			case msg, ok := <-ch:
				if !ok {
					n.subscribed.Store(false)
					break recv
				}
				if ev, ok := decodeEvent(msg.Payload); ok && n.onEvent != nil {
					n.onEvent(ev)
				}
			}
		}
		_ = sub.Close()
		select {
		case <-n.quit:
			return
		case <-time.After(time.Second):
		}
	}
}

// ---- metrics ----

// PipelineBounds are the upper bounds, in seconds, of the pipeline duration histogram.
var PipelineBounds = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}

type latencyHist struct {
	counts []atomic.Uint64
	sumNs  atomic.Uint64
}

func (h *latencyHist) init() { h.counts = make([]atomic.Uint64, len(PipelineBounds)+1) }

func (h *latencyHist) observe(d time.Duration) {
	i := sort.SearchFloat64s(PipelineBounds, d.Seconds())
	h.counts[i].Add(1)
	h.sumNs.Add(uint64(max(d, 0)))
}

// Stats is a snapshot of the node's replication metrics.
type Stats struct {
	Up          bool
	Errors      uint64 // failed round trips
	Dropped     uint64 // changes dropped because the queue was full
	Commands    uint64 // commands sent in pipelines
	Reasserts   uint64
	QueueDepth  int64
	Lag         time.Duration
	PipelineSum float64  // seconds
	Pipelines   []uint64 // per bucket of PipelineBounds, plus +Inf
}

// Stats returns the node's metrics. Lag is the time from a change entering
// the queue to its batch being written, for the last batch, or the age of
// the oldest queued change if that is larger.
func (n *Node) Stats() Stats {
	st := Stats{
		Up: n.up.Load(), Errors: n.errs.Load(), Dropped: n.dropped.Load(), Commands: n.cmds.Load(),
		Reasserts: n.asserts.Load(), QueueDepth: n.queued.Load(),
		PipelineSum: float64(n.hist.sumNs.Load()) / 1e9,
	}
	lag := time.Duration(n.lagNs.Load())
	n.in.Lock()
	if n.in.n > 0 {
		lag = max(lag, time.Duration(time.Now().UnixNano()-n.in.oldest))
	}
	n.in.Unlock()
	st.Lag = lag
	for i := range n.hist.counts {
		st.Pipelines = append(st.Pipelines, n.hist.counts[i].Load())
	}
	return st
}
