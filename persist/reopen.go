package persist

import (
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// Failure and reopen: after a fatal error the committer reopens the store
// in the background and keeps the backlog until commits succeed again.

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
		// Not tracked by routines on purpose: it may not return while the disk
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
