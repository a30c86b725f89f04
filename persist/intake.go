package persist

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"sync"

	"github.com/presenced/presenced/shardmap"
)

// The intake: changes from the server's drain are encoded into a pending
// batch under a short lock, and handed to the committer at each cycle.

type opKind uint8

const (
	opSet opKind = iota
	opDelete
	opMerge
)

// op is one pending write; key and value are offsets into committer.arena.
type op struct {
	kind       opKind
	k0, k1, v1 uint32 // key is arena[k0:k1], value arena[k1:v1]
}

// opOverhead approximates the memory of one op beyond its bytes, for the
// MaxPendingBytes accounting.
const opOverhead = 16

// pending is a batch of changes not yet committed, encoded as Pebble
// writes: the intake's (changes added since the last cycle) and the
// committer's backlog (taken from the intake, not yet committed).
type pending struct {
	arena        []byte
	ops          []op
	idx          map[uint64]int32 // hash of user -> its opMerge in ops
	pendingBytes int64
	sessionSets  uint64 // per kind, in ops, for the counters on success
	sessionDels  uint64
	lastSeenOps  uint64
}

func newPending() *pending { return &pending{idx: make(map[uint64]int32)} }

func (p *pending) reset() {
	p.arena, p.ops = p.arena[:0], p.ops[:0]
	clear(p.idx)
	p.pendingBytes, p.sessionSets, p.sessionDels, p.lastSeenOps = 0, 0, 0, 0
}

// absorb appends q's writes (newer) after p's, merging each user's
// last-seen into p's as addChange does within one batch, and empties q.
func (p *pending) absorb(q *pending, seed maphash.Seed) {
	base := uint32(len(p.arena))
	p.arena = append(p.arena, q.arena...)
	for _, o := range q.ops {
		o.k0, o.k1, o.v1 = o.k0+base, o.k1+base, o.v1+base
		if o.kind == opMerge {
			h := maphash.Bytes(seed, p.arena[o.k0+1:o.k1])
			if p.mergeLastSeen(h, p.arena[o.k0+1:o.k1], binary.BigEndian.Uint64(p.arena[o.k1:o.v1])) {
				q.lastSeenOps--
				continue
			}
			p.indexLastSeen(h, len(p.ops))
		}
		p.ops = append(p.ops, o)
	}
	p.pendingBytes += q.pendingBytes
	p.sessionSets += q.sessionSets
	p.sessionDels += q.sessionDels
	p.lastSeenOps += q.lastSeenOps
	q.reset()
}

// mergeLastSeen raises the user's last-seen merge already in p (h is the
// user's hash) to ms and reports whether p had one: a batch writes one
// last-seen per user, the latest.
func (p *pending) mergeLastSeen(h uint64, user []byte, ms uint64) bool {
	i, ok := p.idx[h]
	if !ok {
		return false
	}
	o := p.ops[i]
	if !bytes.Equal(p.arena[o.k0+1:o.k1], user) {
		return false // another user with the same hash: it gets an op of its own
	}
	if v := p.arena[o.k1:o.v1]; ms > binary.BigEndian.Uint64(v) {
		binary.BigEndian.PutUint64(v, ms)
	}
	return true
}

// indexLastSeen notes ops[i] as the last-seen merge of the user hashing to
// h, unless another user took that hash first.
func (p *pending) indexLastSeen(h uint64, i int) {
	if _, taken := p.idx[h]; !taken {
		p.idx[h] = int32(i)
	}
}

// intake is where changes wait for the committer: Add encodes each into
// p under mu (on the server's drain, under a shardmap lock), and the
// committer swaps p out at the start of each cycle, so neither ever waits
// for the other longer than one append or one swap.
type intake struct {
	mu sync.Mutex
	p  *pending
	// held is the size of the committer's backlog when p was last swapped
	// or committed: p may grow only to MaxPendingBytes minus held.
	held   int64
	closed bool // Close took the last intake: Add drops
}

// takeIntake moves the changes added since the last cycle behind the
// backlog: a swap when the backlog is empty (every cycle whose commit
// succeeded), else an append after the older changes of failed cycles.
func (s *Store) takeIntake() {
	c := &s.c
	if c.spare == nil {
		c.spare = newPending()
	}
	s.in.mu.Lock()
	in := s.in.p
	if len(c.p.ops) == 0 {
		s.in.p, c.p = c.p, in
		in = nil
	} else {
		s.in.p, c.spare = c.spare, nil
	}
	s.in.held = c.p.pendingBytes
	if in != nil {
		s.in.held += in.pendingBytes
	}
	s.in.mu.Unlock()
	if in != nil {
		c.p.absorb(in, s.seed)
		c.spare = in
	}
}

// Add hands one change to the store; the committer's next cycle writes it.
// It copies what it keeps and never blocks beyond a short mutex (it runs
// on the server's drain, under a shardmap lock). A change over the
// MaxPendingBytes bound, with an unencodable user, or added after Close is
// dropped and counted in Stats.DroppedChanges. Add is safe for concurrent
// use; changes of one session must be added in the order they happened.
func (s *Store) Add(ch *shardmap.Change) {
	s.in.mu.Lock()
	if s.in.closed {
		s.in.mu.Unlock()
		s.ctr.dropped.Add(1)
		return
	}
	s.addChange(ch)
	s.in.mu.Unlock()
}

// addChange appends one change to the intake: the session record (Set or
// Delete) and the user's last-seen (one Merge per user per batch). The
// caller (Add) holds s.in.mu; it must not block.
//
// A refresh whose logged expiry (ch.Logged) is still at least
// Config.RefreshMargin after the heartbeat is skipped; a change taken into
// the intake sets ch.Logged, which the map keeps for the next one.
func (s *Store) addChange(ch *shardmap.Change) {
	c := s.in.p
	if m := s.cfg.RefreshMargin.Milliseconds(); m > 0 && !ch.Ended && ch.Logged-ch.LastSeen >= m {
		s.ctr.skippedRefresh.Add(1)
		return
	}
	if len(ch.User) == 0 || len(ch.User) > maxUserLen {
		s.ctr.dropped.Add(1)
		return
	}
	state := ch.State
	if ch.Conns != nil {
		state = ch.Conns // a session with named connections keeps them all
	}
	need := int64(2+len(ch.User)+len(ch.Room)+16+len(state)+1+len(ch.User)+8) + 2*opOverhead
	if s.in.held+c.pendingBytes+need > s.cfg.MaxPendingBytes {
		s.ctr.dropped.Add(1)
		return
	}
	before := len(c.arena)
	k0 := uint32(len(c.arena))
	c.arena = appendSessionKey(c.arena, ch.User, ch.Room)
	k1 := uint32(len(c.arena))
	if ch.Ended {
		c.ops = append(c.ops, op{kind: opDelete, k0: k0, k1: k1, v1: k1})
		c.sessionDels++
	} else {
		c.arena = appendSessionValue(c.arena, ch.LastSeen, ch.Expiry, state)
		c.ops = append(c.ops, op{kind: opSet, k0: k0, k1: k1, v1: uint32(len(c.arena))})
		c.sessionSets++
		ch.Logged = ch.Expiry
		// A live session's record holds its last-seen; the user's own
		// last-seen record is only needed once a session ends, so a refresh
		// costs one record, not two.
		c.pendingBytes += int64(len(c.arena)-before) + opOverhead
		s.ctr.pendingBytes.Store(s.in.held + c.pendingBytes)
		return
	}

	h := maphash.Bytes(s.seed, ch.User)
	if c.mergeLastSeen(h, ch.User, uint64(ch.LastSeen)) {
		c.pendingBytes += int64(len(c.arena)-before) + opOverhead
		s.ctr.pendingBytes.Store(s.in.held + c.pendingBytes)
		return
	}
	k0 = uint32(len(c.arena))
	c.arena = appendLastSeenKey(c.arena, ch.User)
	k1 = uint32(len(c.arena))
	c.arena = appendMillis(c.arena, ch.LastSeen)
	c.indexLastSeen(h, len(c.ops))
	c.ops = append(c.ops, op{kind: opMerge, k0: k0, k1: k1, v1: uint32(len(c.arena))})
	c.lastSeenOps++
	c.pendingBytes += int64(len(c.arena)-before) + 2*opOverhead
	s.ctr.pendingBytes.Store(s.in.held + c.pendingBytes)
}
