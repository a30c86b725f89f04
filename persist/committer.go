package persist

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/presenced/presenced/shardmap"
)

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

// committer is the state of the committer goroutine: the pending backlog
// (the changes taken from the intake but not yet committed) and the sweep
// cursor.
type committer struct {
	// flush hands every change made so far to Add (the server's drain);
	// a cycle with waiters calls it before it takes the intake.
	flush func()

	p     *pending // the backlog
	spare *pending // an empty pending, swapped into the intake

	batch  *pebble.Batch // reused after a successful commit
	broken bool          // the DB hit a fatal error and must be reopened

	commitSeq uint64    // number of the last committed batch (commitKey)
	wmSeq     uint64    // last number written to the watermark
	wmAt      time.Time // when
	wmFile    vfs.File

	opening     chan openResult // non-nil while a reopen attempt runs
	nextOpen    time.Time       // no new attempt before
	openBackoff time.Duration
	unsynced    bool // something was committed without fsync since the last sync

	failingSince time.Time
	lastErrLog   time.Time

	sweeping    bool
	sweepCursor []byte
	sweepCutoff int64

	deletesSinceCompact int
	lastCompact         time.Time
	compacting          bool
	compactDone         chan struct{}
}

func (s *Store) run() {
	// Half the interval: a change waits at most FsyncInterval/2 for its
	// cycle, leaving the other half for the commit and its fsync, so the
	// loss window stays within FsyncInterval (doc.go).
	ticker := time.NewTicker(s.cfg.FsyncInterval / 2)
	defer ticker.Stop()
	sweep := time.NewTimer(s.firstSweepDelay)
	defer sweep.Stop()
	s.c.lastCompact = time.Now()
	// Every cycle commits with pebble.Sync (cycle(true)): in off mode the FS
	// turns the WAL fsync into a no-op (walnosync.go), so the commit still
	// reaches the OS, which pebble.NoSync does not promise.
	for {
		if s.c.sweeping {
			select {
			case <-s.quit:
				return
			case <-s.kick:
				s.cycle(true)
			case <-ticker.C:
				s.cycle(true)
			default:
				s.sweepStep()
			}
			continue
		}
		select {
		case <-s.quit:
			return
		case <-s.kick:
			s.cycle(true)
		case <-ticker.C:
			s.cycle(true)
		case <-sweep.C:
			sweep.Reset(s.cfg.SweepInterval)
			s.c.sweeping = true
			s.c.sweepCursor = append(s.c.sweepCursor[:0], lastSeenLower...)
			s.c.sweepCutoff = s.now() - s.cfg.LastSeenRetention.Milliseconds()
		}
		s.maybeCompact()
	}
}

// cycle serves the waiters queued so far: with waiters it first has the
// flush hook hand over every change made before they called; then it takes
// the intake behind the backlog and commits the backlog (with fsync if sync
// or if anyone waits).
func (s *Store) cycle(sync bool) error {
	s.mu.Lock()
	waiters := s.mu.waiters
	s.mu.waiters = nil
	s.mu.Unlock()
	if len(waiters) > 0 {
		sync = true
		if s.c.flush != nil {
			s.c.flush()
		}
	}
	s.takeIntake()
	err := s.commitPending(sync)
	for _, w := range waiters {
		w <- err
	}
	return err
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

// commitPending writes the backlog as one batch. On failure the backlog is
// kept for the next cycle.
func (s *Store) commitPending(sync bool) error {
	c := &s.c
	if c.broken {
		if err := s.reopen(); err != nil {
			s.failed(err, sync)
			return s.Healthy()
		}
	}
	p := c.p
	if len(p.ops) == 0 {
		if !c.unsynced {
			s.maybeWatermark() // the last commit was synced: vouch for it once it is a second old
		}
		if !sync || !c.unsynced {
			return nil
		}
		// Off mode: earlier cycles were not synced; a waiter needs them.
		start := time.Now()
		err := s.apply(func(db *pebble.DB) error { return db.LogData(nil, pebble.Sync) })
		if err != nil {
			s.failed(err, true)
			return s.Healthy()
		}
		s.ctr.observeSync(time.Since(start))
		c.unsynced = false
		s.recovered()
		return nil
	}
	if s.db == nil {
		// A failed reopen; the next cycle tries again.
		c.broken = true
		err := fmt.Errorf("cannot commit: %w", ErrUnavailable)
		s.failed(err, sync)
		return s.Healthy()
	}
	if c.batch == nil {
		c.batch = s.db.NewBatch()
	}
	b := c.batch
	for _, o := range p.ops {
		k, v := p.arena[o.k0:o.k1], p.arena[o.k1:o.v1]
		switch o.kind {
		case opSet:
			_ = b.Set(k, v, nil)
		case opDelete:
			_ = b.Delete(k, nil)
		case opMerge:
			_ = b.Merge(k, v, nil)
		}
	}
	var seq [8]byte
	_ = b.Set(commitKey, binary.BigEndian.AppendUint64(seq[:0], c.commitSeq+1), nil)
	opts := pebble.NoSync
	if sync {
		opts = pebble.Sync
	}
	start := time.Now()
	err := s.apply(func(*pebble.DB) error { return b.Commit(opts) })
	d := time.Since(start)
	if err != nil {
		// A batch that failed to commit cannot be reused.
		c.batch = nil
		s.failed(err, sync)
		return s.Healthy()
	}
	b.Reset()
	s.ctr.sessionSets.Add(p.sessionSets)
	s.ctr.sessionDeletes.Add(p.sessionDels)
	s.ctr.lastSeenWrites.Add(p.lastSeenOps)
	s.ctr.batches.Add(1)
	s.ctr.lastCommitNanos.Store(int64(d))
	c.commitSeq++
	if sync {
		s.ctr.observeSync(d)
		c.unsynced = false
		s.maybeWatermark()
	} else {
		c.unsynced = true
	}
	c.deletesSinceCompact += int(p.sessionDels)
	p.reset()
	s.in.mu.Lock()
	s.in.held = 0
	s.ctr.pendingBytes.Store(s.in.p.pendingBytes)
	s.in.mu.Unlock()
	s.recovered()
	return nil
}

// apply runs a write on the current DB, turning a panic (Pebble's Fatalf via
// pebbleLogger, or its panic on a WAL writer that already failed) into an
// error and marking the DB for reopening.
func (s *Store) apply(f func(db *pebble.DB) error) (err error) {
	s.dbMu.RLock()
	defer s.dbMu.RUnlock()
	defer func() {
		if r := recover(); r != nil {
			s.c.broken = true
			err = fmt.Errorf("cannot commit batch: pebble failed: %v", r)
		}
	}()
	if s.db == nil {
		return fmt.Errorf("cannot commit batch: %w", ErrUnavailable)
	}
	if err := f(s.db); err != nil {
		return fmt.Errorf("cannot commit batch: %w", err)
	}
	return nil
}

// openResult is what an asynchronous reopen brings back.
type openResult struct {
	db  *pebble.DB
	err error
}

// reopen closes the broken DB and opens it again from its files, without
// ever making the committer (or a reader) wait for Pebble: the close and the
// open run on their own goroutine, one attempt at a time, and each cycle
// only looks whether the attempt is done. While it runs, db is nil: readers
// get ErrUnavailable at once. A failed attempt is retried after a backoff
// (reopenBackoffMin doubling to reopenBackoffMax). pebble.Open itself may
// take as long as the disk stays full (it must flush the log it replays).
func (s *Store) reopen() error {
	c := &s.c
	if c.opening == nil {
		if now := time.Now(); now.Before(c.nextOpen) {
			return fmt.Errorf("cannot commit: %w: next reopen attempt in %v",
				ErrUnavailable, c.nextOpen.Sub(now).Round(time.Millisecond))
		}
		s.dbMu.Lock()
		old := s.db
		s.db = nil
		s.dbMu.Unlock()
		s.dbDown.Store(true)
		c.batch = nil
		ch := make(chan openResult, 1)
		c.opening = ch
		// Not tracked by wg on purpose: it may not return while the disk
		// is full, and must not hold up Close (see closeAbandoned).
		go func() {
			if old != nil {
				if err := closeDB(old, closeOldDBTimeout); err != nil {
					s.log.Warn("closing the database after a fatal error", "err", errLine(err))
				}
			}
			db, err := s.openDB()
			ch <- openResult{db, err}
		}()
	}
	select {
	case r := <-c.opening:
		c.opening = nil
		if r.err != nil {
			c.openBackoff = min(max(2*c.openBackoff, reopenBackoffMin), reopenBackoffMax)
			c.nextOpen = time.Now().Add(c.openBackoff)
			return fmt.Errorf("cannot reopen after fatal error: %w", r.err)
		}
		s.dbMu.Lock()
		s.db = r.db
		s.dbMu.Unlock()
		s.dbDown.Store(false)
		c.broken = false
		c.openBackoff = 0
		s.ctr.reopens.Add(1)
		s.log.Info("database reopened after a fatal error")
		return nil
	default:
		return fmt.Errorf("cannot commit: %w: reopening the database after a fatal error", ErrUnavailable)
	}
}

// closeAbandoned leaves a reopen that is still running to finish on its
// own, closing the database it opens; Close uses it when time is up.
func closeAbandoned(ch <-chan openResult) {
	go func() {
		if r := <-ch; r.db != nil {
			_ = closeDB(r.db, closeOldDBTimeout)
		}
	}()
}

func (s *Store) failed(err error, sync bool) {
	if sync {
		s.ctr.syncErrors.Add(1)
	} else {
		s.ctr.commitErrors.Add(1)
	}
	now := time.Now()
	c := &s.c
	if c.failingSince.IsZero() {
		c.failingSince = now
	}
	if now.Sub(c.lastErrLog) >= errorLogMinInterval {
		c.lastErrLog = now
		s.log.Error("cannot commit changes; retrying next cycle",
			"err", errLine(err), "failing_for", now.Sub(c.failingSince),
			"pending_bytes", c.p.pendingBytes, "dropped_changes", s.ctr.dropped.Load())
	}
	s.mu.Lock()
	s.mu.health = fmt.Errorf("%w: %w", ErrUnhealthy, err)
	s.mu.Unlock()
}

func (s *Store) recovered() {
	c := &s.c
	if c.failingSince.IsZero() {
		return
	}
	s.log.Info("commits succeed again", "failed_for", time.Since(c.failingSince))
	c.failingSince, c.lastErrLog = time.Time{}, time.Time{}
	s.mu.Lock()
	s.mu.health = nil
	s.mu.Unlock()
}

// sweepStep examines up to sweepChunk last-seen records from the cursor and
// deletes those older than the cutoff.
func (s *Store) sweepStep() {
	c := &s.c
	if c.broken {
		c.sweeping = false
		return
	}
	n, deleted := 0, 0
	var next []byte
	err := s.apply(func(db *pebble.DB) error {
		it, err := db.NewIter(&pebble.IterOptions{LowerBound: c.sweepCursor, UpperBound: lastSeenUpper})
		if err != nil {
			return err
		}
		b := db.NewBatch()
		defer b.Close()
		valid := it.First()
		for ; valid && n < sweepChunk; valid = it.Next() {
			n++
			v, err := it.ValueAndErr()
			if err != nil {
				it.Close()
				return err
			}
			if ms, ok := decodeMillis(v); !ok || ms < c.sweepCutoff {
				_ = b.Delete(it.Key(), nil)
				deleted++
			}
		}
		if valid {
			next = append(next, it.Key()...)
		}
		if err := it.Close(); err != nil {
			return err
		}
		if b.Empty() {
			return nil
		}
		return b.Commit(pebble.NoSync)
	})
	if err != nil {
		s.log.Warn("last-seen sweep failed; retrying at the next sweep", "err", err)
		c.sweeping = false
		return
	}
	s.ctr.sweepDeletes.Add(uint64(deleted))
	c.deletesSinceCompact += deleted
	if deleted > 0 {
		c.unsynced = true
	}
	if next == nil {
		c.sweeping = false
		s.maybeCompact()
		return
	}
	c.sweepCursor = append(c.sweepCursor[:0], next...)
}

// maybeCompact starts a manual compaction of the session and last-seen
// ranges, at most one at a time and one per compactMinInterval, once
// compactMinDeletes deletes have accumulated, so tombstones of ended
// sessions and swept users are dropped and the store tracks the live set.
func (s *Store) maybeCompact() {
	c := &s.c
	if c.compacting {
		select {
		case <-c.compactDone:
			c.compacting = false
		default:
			return
		}
	}
	if c.deletesSinceCompact < s.compactMinDeletes || time.Since(c.lastCompact) < s.compactMinInterval {
		return
	}
	c.deletesSinceCompact = 0
	c.lastCompact = time.Now()
	c.compacting = true
	done := make(chan struct{})
	c.compactDone = done
	s.startGoroutine(func() {
		defer close(done)
		if err := s.compact(); err != nil {
			s.log.Warn("manual compaction failed", "err", err)
		}
	})
}

// compact compacts the session and last-seen ranges.
//
// It does not hold dbMu while compacting (that can take seconds, and a
// reopen waiting for dbMu would make readers wait behind it); a reopen that
// closes this DB meanwhile makes Compact fail, which is harmless.
func (s *Store) compact() (err error) {
	s.dbMu.RLock()
	db := s.db
	s.dbMu.RUnlock()
	if db == nil {
		return ErrUnavailable
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("pebble panic: %v", r)
		}
	}()
	start := time.Now()
	// Twice: when nothing overlaps below, the first Compact may just move a
	// freshly flushed table to the bottom level with its tombstones; the
	// second rewrites the bottom level in place, which drops them.
	for range 2 {
		if err := db.Compact(s.compactCtx, sessionLower, lastSeenUpper, false); err != nil {
			return fmt.Errorf("cannot compact: %w", err)
		}
	}
	s.ctr.compactions.Add(1)
	s.log.Debug("compacted session and last-seen ranges", "duration", time.Since(start))
	return nil
}
