package persist

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// The commit loop: one goroutine takes the intake each cycle and writes it
// to Pebble as one batch, syncing per the fsync mode.

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
