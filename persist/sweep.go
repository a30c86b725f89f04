package persist

import (
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Sweep and compaction: the last-seen records past their retention are
// deleted a chunk at a time, and the store compacts when deletes pile up.

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
	s.routines.Go("compaction", func() {
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
